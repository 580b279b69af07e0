//! `restore --in-place` on Nomad: the cluster itself goes back to a point in its own
//! repository, keeping its data until the restore has succeeded.
//!
//! 1. The WAL up to now is archived and the target checked against the window (as for a
//!    clone), before anything stops.
//! 2. The postgres job stops; every member's volume is free.
//! 3. The job comes back with the stack's own `restore` block (Patroni's custom bootstrap
//!    restores the cluster's own stanza to the target and promotes) and a prestart task per
//!    member (packs/postgres/restore-in-place.sh) that moves the member's data aside and, on
//!    the member that led, empties the cluster's keys in the DCS: Patroni bootstraps only a
//!    cluster the DCS does not know, and would not promote a member behind the old leader.
//!    The replicas are cloned from the restored primary.
//! 4. Once the restored leader runs on a new timeline and every replica streams, the groups
//!    roll, one at a time (the upgrade's own steps, the leader last after a switchover), to
//!    the job with the task removing the data moved aside, then to the stack's plain job.
//! 5. If the restore fails (the task or Patroni's bootstrap fails, or it times out) the job
//!    stops again and comes back with the data put back: the member that led first, alone,
//!    so that no member behind it takes the leader key; then the others; then the plain job.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::backup::Window;
use super::nomad::NomadTarget;
use super::nomad_backup::NomadBackups;
use super::restore::{check_target, in_place_block, Target};
use super::upgrade::{upgrade, UpgradeOptions};
use super::view::{observe, ClusterView};
use super::OpsError;
use crate::compile::{RestoreMode, RestorePhase};
use crate::dev::Reporter;
use crate::transport::Transport;

/// What `restore --in-place` did on Nomad.
#[derive(Debug, Clone, Serialize)]
pub struct NomadRestoredInPlace {
    pub cluster: String,
    /// Names the data moved aside on each member's volume while it ran.
    pub attempt: String,
    /// The repository window the target was checked against.
    pub window: Window,
    pub leader: String,
    pub timeline: Option<u64>,
    #[serde(serialize_with = "super::seconds")]
    pub took: Duration,
}

/// Restores the cluster `target` runs in place to `to`; `attempt` names this try (the data
/// moved aside is `pgdata.pre-restore-<attempt>` on each volume).
pub fn restore_in_place<N: Transport, C: Transport>(
    target: &mut NomadTarget<N, C>,
    backups: &NomadBackups<N>,
    to: &Target,
    attempt: &str,
    timeout: Duration,
    reporter: &dyn Reporter,
) -> Result<NomadRestoredInPlace, OpsError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let plain = target.stack().clone();
    let cluster = plain.cluster.name.value.clone();
    if plain.restore.is_some() {
        return Err(OpsError::Refused(format!(
            "{cluster}'s stack file still has the `restore {{ … }}` block it was bootstrapped with\n  = help: remove the block from the stack file, then restore in place"
        )));
    }
    if !plain.backup.enabled {
        return Err(OpsError::Refused(format!("{cluster} has no `backup` block: there is no repository to restore from")));
    }
    let before = observe(target).ok();
    let archived_at = backups.archive_now(timeout, reporter)?;
    let list = backups.backups(Some(archived_at), timeout, reporter)?;
    check_target(to, list.window.as_ref(), &list.backups)?;
    let window = list.window.clone().expect("check_target refuses a repository without backups");
    let members: Vec<String> = crate::config::Facts::new(&plain).members.iter().map(|m| m.name.clone()).collect();
    // The member that led, or the first: it empties the DCS, and on a revert comes back first.
    let led = before.as_ref().and_then(|v| v.leader()).map(|l| l.name.clone()).unwrap_or_else(|| members[0].clone());
    let old_timeline = before.as_ref().and_then(|v| v.leader()).and_then(|l| l.timeline);
    let phase = |mode| Some(RestorePhase { attempt: attempt.to_owned(), mode, wipe_member: led.clone() });

    reporter.step(&format!("stopping {cluster}'s members"));
    target.stop_job(deadline, &Steps(reporter))?;
    let mut restoring = plain.clone();
    restoring.restore = Some(in_place_block(&cluster, to));
    target.set_desired(restoring, phase(RestoreMode::Prepare));
    reporter.step(&format!(
        "restoring {cluster} in place: each member's data moves aside to pgdata.pre-restore-{attempt}, {led} empties the DCS, Patroni's custom bootstrap restores the repository to the target"
    ));
    let registered = target.register_desired(None)?;
    let restored = wait_restored(target, &members, registered, old_timeline, deadline, reporter);
    match restored {
        Ok(view) => {
            let leader = view.leader().expect("a restored view has a leader");
            let (leader, timeline) = (leader.name.clone(), leader.timeline);
            reporter.step(&format!(
                "restored: {leader} leads on timeline {}; removing the pre-restore data, one member at a time",
                timeline.unwrap_or(0)
            ));
            roll(target, plain.clone(), phase(RestoreMode::Finish), deadline, reporter)?;
            reporter.step("back to the stack's own job, one member at a time");
            roll(target, plain, None, deadline, reporter)?;
            Ok(NomadRestoredInPlace { cluster, attempt: attempt.to_owned(), window, leader, timeline, took: started.elapsed() })
        }
        Err(error) => {
            let why = error.to_string();
            reporter.step(&format!("the restore failed ({why}): putting the pre-restore data back"));
            let mut revert = || -> Result<(), OpsError> {
                target.stop_job(deadline_after(timeout), &Steps(reporter))?;
                target.set_desired(plain.clone(), phase(RestoreMode::Revert));
                let registered = target.register_desired(Some(std::slice::from_ref(&led)))?;
                wait_for(
                    target,
                    &format!("{led} to lead again on its pre-restore data"),
                    registered,
                    deadline_after(timeout),
                    reporter,
                    |view| Ok(view.leader().filter(|l| l.name == led && l.state == "running").map(|_| ())),
                )?;
                let registered = target.register_desired(None)?;
                wait_restored(target, &members, registered, None, deadline_after(timeout), reporter)?;
                roll(target, plain.clone(), None, deadline_after(timeout), reporter)
            };
            match revert() {
                Ok(()) => Err(OpsError::Failed(format!(
                    "the in-place restore failed: {why}\n  = {cluster} runs again on its pre-restore data, unchanged\n  = help: the members' patroni logs say why (`nomad alloc logs -stderr <allocation> patroni`)"
                ))),
                Err(e) => Err(OpsError::Failed(format!(
                    "the in-place restore failed ({why}), and putting the pre-restore data back did not finish: {e}\n  = the data moved aside is pgdata.pre-restore-{attempt} on each member's volume\n  = help: once the cause is fixed, `pgnomad restore --in-place` can be run again; or move the data back by hand"
                ))),
            }
        }
    }
}

fn deadline_after(timeout: Duration) -> Instant {
    Instant::now() + timeout
}

/// Rolls the member groups to `stack` with `phase`, one at a time, as `upgrade` does.
fn roll<N: Transport, C: Transport>(
    target: &mut NomadTarget<N, C>,
    stack: crate::stack::Stack,
    phase: Option<RestorePhase>,
    deadline: Instant,
    reporter: &dyn Reporter,
) -> Result<(), OpsError> {
    target.set_desired(stack, phase);
    let options = UpgradeOptions { timeout: deadline.saturating_duration_since(Instant::now()), ..UpgradeOptions::default() };
    upgrade(&*target, &options, &Steps(reporter)).map(|_| ()).map_err(|(_, e)| e)
}

/// The rolls' steps as the restore's own progress.
struct Steps<'a>(&'a dyn Reporter);

impl super::Reporter for Steps<'_> {
    fn step_started(&self, index: usize, total: usize, step: &super::upgrade::Step) {
        self.0.step(&format!("  [{}/{total}] {step}", index + 1));
    }
    fn progress(&self, message: &str) {
        self.0.progress(message);
    }
    fn note(&self, message: &str) {
        self.0.progress(message);
    }
}

/// Waits for the cluster restored from the registration at `registered`: a running leader
/// (on a timeline after `old_timeline`), every member in it, every replica streaming, and a
/// synchronous standby when synchronous mode is on.
fn wait_restored<N: Transport, C: Transport>(
    target: &NomadTarget<N, C>,
    members: &[String],
    registered: u64,
    old_timeline: Option<u64>,
    deadline: Instant,
    reporter: &dyn Reporter,
) -> Result<ClusterView, OpsError> {
    wait_for(target, "the restored cluster: a leader on a new timeline, every replica streaming", registered, deadline, reporter, |view| {
        let Some(leader) = view.leader().filter(|l| l.state == "running") else { return Ok(None) };
        if old_timeline.is_some_and(|old| leader.timeline.is_none_or(|t| t <= old)) {
            return Ok(None);
        }
        let all = members.iter().all(|m| view.member(m).is_some());
        let streaming = view.replicas().all(|r| r.state == "streaming" || r.replication.as_deref() == Some("streaming"));
        let synchronous = !view.synchronous_mode || view.members.iter().any(|m| m.is_sync_standby());
        Ok((all && streaming && synchronous).then(|| view.clone()))
    })
}

/// Polls Patroni's view until `check` gives a value or fails; `what` names the wait. Between
/// views, the allocations placed since `registered` are read for a failed restore: while every
/// Patroni restarts after a failed bootstrap no member answers, and only their logs say why.
fn wait_for<N: Transport, C: Transport, T>(
    target: &NomadTarget<N, C>,
    what: &str,
    registered: u64,
    deadline: Instant,
    reporter: &dyn Reporter,
    mut check: impl FnMut(&ClusterView) -> Result<Option<T>, OpsError>,
) -> Result<T, OpsError> {
    let started = Instant::now();
    loop {
        if let Some(why) = target.restore_failure(registered)? {
            return Err(OpsError::Failed(why));
        }
        match observe(target) {
            Ok(view) => {
                if let Some(done) = check(&view)? {
                    return Ok(done);
                }
                let members: Vec<String> = view.members.iter().map(|m| format!("{} {} {}", m.name, m.role, m.state)).collect();
                reporter.progress(&format!("waiting for {what}: {}", members.join(", ")));
            }
            Err(e) => reporter.progress(&format!("waiting for {what}: {e}")),
        }
        if Instant::now() > deadline {
            return Err(OpsError::TimedOut { what: what.to_owned(), after: started.elapsed() });
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
