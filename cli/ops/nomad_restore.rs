//! `restore --in-place` on Nomad: the steps of `restore::restore_in_place` as phases of the
//! postgres job. The cluster goes back to a point in its own repository, keeping its data
//! until the restore has succeeded.
//!
//! 1. The WAL up to now is archived (a dispatch of `<c>-backup-ctl`) and the target checked
//!    against the window, before anything stops.
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

use super::backup::Backups;
use super::nomad::NomadTarget;
use super::nomad_backup::NomadBackups;
use super::restore::{in_place_block, InPlaceSite, Interrupted, RestoredLeader, Target};
use super::upgrade::{upgrade, UpgradeOptions};
use super::view::{observe, ClusterView};
use super::OpsError;
use crate::compile::{RestoreMode, RestorePhase};
use crate::dev::Reporter;
use crate::stack::Stack;
use crate::transport::Transport;
use serde_json::Value;

/// Nomad: the phases of the postgres job.
pub struct NomadInPlace<'a, N: Transport, C: Transport> {
    target: NomadTarget<N, C>,
    backups: &'a NomadBackups<N>,
    /// The stack the cluster runs from, without a restore block.
    plain: Stack,
    members: Vec<String>,
    /// Names the data moved aside on each member's volume (`pgdata.pre-restore-<attempt>`).
    attempt: String,
    /// The member that led when the restore began (or the first): it empties the DCS, and
    /// on a revert comes back first.
    led: String,
    old_timeline: Option<u64>,
    /// The restore's target, as `Target::describe` says it (kept in the job, for a resume).
    target_text: String,
}

impl<'a, N: Transport, C: Transport> NomadInPlace<'a, N, C> {
    /// `attempt` names this try: distinct per try, readable by a person.
    pub fn new(target: NomadTarget<N, C>, backups: &'a NomadBackups<N>, attempt: &str) -> Self {
        let plain = target.stack().clone();
        let members: Vec<String> = crate::config::Facts::new(&plain).members.iter().map(|m| m.name.clone()).collect();
        let led = members[0].clone();
        NomadInPlace { target, backups, plain, members, attempt: attempt.to_owned(), led, old_timeline: None, target_text: String::new() }
    }

    fn phase(&self, mode: RestoreMode) -> Option<RestorePhase> {
        Some(RestorePhase {
            attempt: self.attempt.clone(),
            mode,
            wipe_member: self.led.clone(),
            target: self.target_text.clone(),
            led_timeline: self.old_timeline,
        })
    }

    /// The schedules `stop` paused, on again: the last step of `finish` and of `revert`.
    fn resume_schedules(&self, reporter: &dyn Reporter) -> Result<(), OpsError> {
        let resumed = self.backups.set_schedules(true)?;
        if !resumed.is_empty() {
            reporter.step(&format!("turning the backup schedules on again ({})", resumed.join(", ")));
        }
        Ok(())
    }
}

/// A revert registered with every member group placed: it does that only once the member
/// that led runs on its own data again (before, the others are at count 0), so the data is
/// back everywhere, whatever part of the roll to the plain job followed.
fn reverted_everywhere(job: &Value) -> bool {
    let groups = job["TaskGroups"].as_array().map(Vec::as_slice).unwrap_or_default();
    job["Stop"] != true
        && !groups.is_empty()
        && groups.iter().all(|g| g["Count"].as_u64().unwrap_or(1) >= 1)
        && restore_envs(job).any(|(_, env)| env["PGNOMAD_RESTORE_MODE"] == "revert")
}

/// Each member group's name and its `restore-in-place` task's environment, where it has one.
fn restore_envs(job: &Value) -> impl Iterator<Item = (&str, &Value)> {
    job["TaskGroups"].as_array().into_iter().flatten().filter_map(|group| {
        let task = group["Tasks"].as_array().into_iter().flatten().find(|t| t["Name"] == "restore-in-place")?;
        Some((group["Name"].as_str().unwrap_or_default(), &task["Env"]))
    })
}

/// The restore an earlier run left in the registered job: its `restore-in-place` tasks, one
/// per member group, the furthest phase any group reached (a roll changes one group at a time).
fn interrupted_in(job: &Value) -> Option<(Interrupted, Option<String>, Option<u64>)> {
    let mut found: Option<(Interrupted, Option<String>, Option<u64>)> = None;
    for (group, env) in restore_envs(job) {
        let text = |key: &str| env[key].as_str().map(str::to_owned);
        let (Some(attempt), Some(mode)) =
            (text("PGNOMAD_RESTORE_ATTEMPT"), text("PGNOMAD_RESTORE_MODE").as_deref().and_then(RestoreMode::parse))
        else {
            continue;
        };
        let wipe = (env["PGNOMAD_RESTORE_WIPE"] == "1").then(|| group.to_owned());
        let timeline = text("PGNOMAD_RESTORE_LED_TIMELINE").and_then(|t| t.parse().ok());
        let here = Interrupted { attempt, mode, target: text("PGNOMAD_RESTORE_TARGET").unwrap_or_default() };
        found = Some(match found {
            None => (here, wipe, timeline),
            Some((seen, seen_wipe, seen_timeline)) => {
                let furthest = if here.mode > seen.mode { here } else { seen };
                (furthest, seen_wipe.or(wipe), seen_timeline.or(timeline))
            }
        });
    }
    found
}

impl<N: Transport, C: Transport> InPlaceSite for NomadInPlace<'_, N, C> {
    fn cluster(&self) -> &str {
        &self.plain.cluster.name.value
    }

    fn stack(&self) -> &Stack {
        &self.plain
    }

    fn interrupted(&mut self) -> Result<Option<Interrupted>, OpsError> {
        let Some(job) = self.target.registered_job()? else { return Ok(None) };
        let Some((earlier, wipe, timeline)) = interrupted_in(&job) else { return Ok(None) };
        self.attempt = earlier.attempt.clone();
        self.target_text = earlier.target.clone();
        self.old_timeline = timeline;
        if let Some(led) = wipe {
            self.led = led;
        }
        Ok(Some(earlier))
    }

    fn archive_and_list(&self, timeout: Duration, reporter: &dyn Reporter) -> Result<Backups, OpsError> {
        // Stopped (by hand, or by a run killed before it registered the restore): no primary
        // to archive from, as on `dev`.
        if self.target.registered_job()?.is_some_and(|job| job["Stop"] == true) {
            reporter.step(&format!(
                "{} is stopped: restoring from what the repository holds",
                crate::config::runtime::names::postgres_job(self.cluster())
            ));
            return self.backups.backups(None, timeout, reporter);
        }
        let archived_at = self.backups.archive_now(timeout, reporter)?;
        self.backups.backups(Some(archived_at), timeout, reporter)
    }

    fn stop(&mut self, deadline: Instant, reporter: &dyn Reporter) -> Result<(), OpsError> {
        if let Some(leader) = observe(&self.target).ok().as_ref().and_then(|v| v.leader().cloned()) {
            self.led = leader.name;
            self.old_timeline = leader.timeline;
        }
        // A backup fired by its schedule while the members are down, or reading them while
        // they restore, only fails: the schedules are off until the restore has ended.
        let paused = self.backups.set_schedules(false)?;
        if !paused.is_empty() {
            reporter.step(&format!("pausing the backup schedules until the restore has ended ({})", paused.join(", ")));
        }
        let running = self.backups.running_backups()?;
        if let Some(backup) = running.first() {
            self.backups.set_schedules(true)?;
            return Err(OpsError::Refused(format!(
                "a backup of {} is running ({backup}): the restore would stop the members it reads\n  = help: wait for it to end (`nomad job status {backup}`), then run this again",
                self.cluster()
            )));
        }
        reporter.step(&format!("stopping {}'s members", self.cluster()));
        self.target.stop_job(deadline, &Steps(reporter))
    }

    fn restore(&mut self, to: &Target, deadline: Instant, reporter: &dyn Reporter) -> Result<RestoredLeader, OpsError> {
        self.target_text = to.describe();
        let mut restoring = self.plain.clone();
        restoring.restore = Some(in_place_block(self.cluster(), to));
        let preparing = self.phase(RestoreMode::Prepare);
        self.target.set_desired(restoring, preparing);
        reporter.step(&format!(
            "restoring {} in place: each member's data moves aside, {} empties the DCS, Patroni's custom bootstrap restores the repository to the target",
            self.cluster(),
            self.led
        ));
        let registered = self.target.register_desired(None)?;
        let view = wait_restored(&self.target, &self.members, registered, self.old_timeline, deadline, reporter)?;
        let leader = view.leader().expect("a restored view has a leader");
        Ok(RestoredLeader { leader: leader.name.clone(), timeline: leader.timeline })
    }

    fn finish(&mut self, deadline: Instant, reporter: &dyn Reporter) -> Result<(), OpsError> {
        // A resumed finish may find a member group half-way through its replacement (the run
        // before was killed mid-roll): the roll's health gate would refuse it, so its
        // deployment and every member are waited for first (at once after a restore).
        let job = self.target.registered_job()?;
        if let Some(job) = &job {
            self.target.wait_deployed(job, deadline, &Steps(reporter))?;
        }
        let registered = job.as_ref().and_then(|j| j["JobModifyIndex"].as_u64()).unwrap_or(0);
        wait_restored(&self.target, &self.members, registered, None, deadline, reporter)?;
        // A resumed finish whose first roll had ended: no group is preparing any more.
        let preparing = job.is_some_and(|job| restore_envs(&job).any(|(_, env)| env["PGNOMAD_RESTORE_MODE"] == "prepare"));
        if preparing {
            reporter.step(&format!("the restore succeeded: removing pgdata.pre-restore-{}, one member at a time", self.attempt));
            let finishing = self.phase(RestoreMode::Finish);
            roll(&mut self.target, self.plain.clone(), finishing, deadline, reporter)?;
        }
        reporter.step("back to the stack's own job, one member at a time");
        roll(&mut self.target, self.plain.clone(), None, deadline, reporter)?;
        self.resume_schedules(reporter)
    }

    fn revert(&mut self, deadline: Instant, reporter: &dyn Reporter) -> Result<(), OpsError> {
        let back = self.target.registered_job()?.filter(reverted_everywhere);
        let registered = match back {
            // A resumed revert that had brought every member back: stopping them again would
            // only be a second outage. What is left is the wait and the roll.
            Some(job) => {
                reporter.step(
                    "the pre-restore data is back on every member (an earlier run put it back): the roll to the stack's own job is left",
                );
                // That run may have been killed with a member group half-replaced by the roll.
                self.target.wait_deployed(&job, deadline, &Steps(reporter))?;
                job["JobModifyIndex"].as_u64().unwrap_or(0)
            }
            None => {
                self.target.stop_job(deadline, &Steps(reporter))?;
                // The member that led first, alone: no member behind it may take the leader key.
                let reverting = self.phase(RestoreMode::Revert);
                self.target.set_desired(self.plain.clone(), reverting);
                let registered = self.target.register_desired(Some(std::slice::from_ref(&self.led)))?;
                let led = self.led.clone();
                wait_for(&self.target, &format!("{led} to lead again on its pre-restore data"), registered, deadline, reporter, |view| {
                    Ok(view.leader().filter(|l| l.name == led && l.state == "running").map(|_| ()))
                })?;
                self.target.register_desired(None)?
            }
        };
        wait_restored(&self.target, &self.members, registered, None, deadline, reporter)?;
        roll(&mut self.target, self.plain.clone(), None, deadline, reporter)?;
        self.resume_schedules(reporter)
    }

    fn leader(&self) -> Result<RestoredLeader, OpsError> {
        let view = observe(&self.target)?;
        let leader = view.leader().ok_or_else(|| OpsError::Failed(format!("{} has no leader", self.cluster())))?;
        Ok(RestoredLeader { leader: leader.name.clone(), timeline: leader.timeline })
    }

    fn kept(&self) -> String {
        format!("pgdata.pre-restore-{} on each member's volume", self.attempt)
    }

    fn unfinished_help(&self) -> String {
        format!(
            "`pgnomad upgrade` takes the postgres job back to the stack's own, one member at a time; then remove `pgdata.pre-restore-{a}` and `.restore-{a}-prepared` where they remain on a member's volume, and `pgnomad run` turns the backup schedules on again",
            a = self.attempt
        )
    }

    fn put_back_help(&self) -> String {
        format!(
            "to put it back by hand (README, \"Putting the pre-restore data back by hand\"): with the {job} job stopped, on each member's volume where `pgdata.pre-restore-{a}` is, remove `pgdata` and `pgdata.failed` and rename it to `pgdata`; empty the DCS (`patronictl remove {scope}`); then start {led} alone before the others; `pgnomad run` turns the backup schedules on again",
            job = crate::config::runtime::names::postgres_job(self.cluster()),
            a = self.attempt,
            scope = crate::config::Facts::new(&self.plain).scope,
            led = self.led
        )
    }

    fn logs(&self) -> String {
        format!(
            "`nomad alloc logs -stderr <allocation> patroni` of the {} job's allocations",
            crate::config::runtime::names::postgres_job(self.cluster())
        )
    }
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
/// (on a timeline after `old_timeline`), every member in it, and healthy as the roll that
/// follows gates on (upgrade's health gate: every REST API answering, every replica streaming
/// within the lag bound, a synchronous standby in synchronous mode). The DCS alone is not
/// enough: a member whose allocation is being replaced keeps its `streaming` there for a ttl.
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
        let healthy = super::health_problems(target, view, &super::Gate::default(), &mut Vec::new()).is_empty();
        Ok((all && healthy).then(|| view.clone()))
    })
}

/// Polls Patroni's view until `check` gives a value or fails; `what` names the wait. Before
/// each view, the allocations placed since `registered` are read for a failed restore: while
/// every Patroni restarts after a failed bootstrap no member answers, and only their logs say why.
fn wait_for<N: Transport, C: Transport, T>(
    target: &NomadTarget<N, C>,
    what: &str,
    registered: u64,
    deadline: Instant,
    reporter: &dyn Reporter,
    mut check: impl FnMut(&ClusterView) -> Result<Option<T>, OpsError>,
) -> Result<T, OpsError> {
    // `ops::wait_for` ends on `Some`: a failure comes back as `Some(Err(…))`.
    super::wait_for(what, deadline, Duration::from_secs(1), &Steps(reporter), || {
        match target.restore_failure(registered) {
            Ok(None) => {}
            Ok(Some(why)) => return Ok(Some(Err(OpsError::Failed(why)))),
            Err(e) => return Ok(Some(Err(e))),
        }
        let view = observe(target).map_err(|e| e.to_string())?;
        match check(&view) {
            Ok(Some(done)) => Ok(Some(Ok(done))),
            Ok(None) => Err(view.members.iter().map(|m| format!("{} {} {}", m.name, m.role, m.state)).collect::<Vec<_>>().join(", ")),
            Err(e) => Ok(Some(Err(e))),
        }
    })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn group(name: &str, env: Option<Value>) -> Value {
        let mut tasks = vec![json!({"Name": "patroni"})];
        if let Some(env) = env {
            tasks.insert(0, json!({"Name": "restore-in-place", "Env": env}));
        }
        json!({"Name": name, "Tasks": tasks})
    }

    fn env(mode: &str, wipe: bool) -> Value {
        let mut env = json!({
            "PGNOMAD_RESTORE_ATTEMPT": "1765000000",
            "PGNOMAD_RESTORE_MODE": mode,
            "PGNOMAD_RESTORE_TARGET": "to_xid 7420",
            "PGNOMAD_RESTORE_LED_TIMELINE": "3",
        });
        if wipe {
            env["PGNOMAD_RESTORE_WIPE"] = "1".into();
        }
        env
    }

    #[test]
    fn the_registered_job_says_how_far_an_earlier_restore_got() {
        // The stack's own job: nothing to resume.
        let plain = json!({"TaskGroups": [group("member-0", None), group("member-1", None)]});
        assert!(interrupted_in(&plain).is_none());
        // Every group preparing, member-1 emptying the DCS.
        let preparing =
            json!({"TaskGroups": [group("member-0", Some(env("prepare", false))), group("member-1", Some(env("prepare", true)))]});
        let (earlier, wipe, timeline) = interrupted_in(&preparing).unwrap();
        assert_eq!(earlier, Interrupted { attempt: "1765000000".into(), mode: RestoreMode::Prepare, target: "to_xid 7420".into() });
        assert_eq!((wipe.as_deref(), timeline), (Some("member-1"), Some(3)));
        // Part-way through the roll to `finish` (one group at a time), or past it to the plain
        // job: the furthest phase any group reached.
        let finishing = json!({"TaskGroups": [group("member-0", Some(env("finish", false))), group("member-1", Some(env("prepare", true))), group("member-2", None)]});
        assert_eq!(interrupted_in(&finishing).unwrap().0.mode, RestoreMode::Finish);
        let reverting =
            json!({"TaskGroups": [group("member-0", Some(env("prepare", false))), group("member-1", Some(env("revert", true)))]});
        assert_eq!(interrupted_in(&reverting).unwrap().0.mode, RestoreMode::Revert);
    }

    #[test]
    fn a_revert_is_back_everywhere_once_every_member_group_was_placed() {
        let with = |groups: Vec<(Value, u64)>, stop: bool| {
            let groups: Vec<Value> = groups
                .into_iter()
                .map(|(mut g, count)| {
                    g["Count"] = count.into();
                    g
                })
                .collect();
            json!({"Stop": stop, "TaskGroups": groups})
        };
        let reverting = |name: &str| group(name, Some(env("revert", name == "member-1")));
        // The member that led, alone: the others not back yet.
        assert!(!reverted_everywhere(&with(vec![(reverting("member-0"), 0), (reverting("member-1"), 1)], false)));
        // Every member placed: back everywhere; part-way through the roll to the plain job too.
        assert!(reverted_everywhere(&with(vec![(reverting("member-0"), 1), (reverting("member-1"), 1)], false)));
        assert!(reverted_everywhere(&with(vec![(group("member-0", None), 1), (reverting("member-1"), 1)], false)));
        // Stopped, or a restore (not a revert) placed everywhere: not a revert that is back.
        assert!(!reverted_everywhere(&with(vec![(reverting("member-0"), 1), (reverting("member-1"), 1)], true)));
        let preparing = group("member-0", Some(env("prepare", false)));
        assert!(!reverted_everywhere(&with(vec![(preparing, 1), (group("member-1", None), 1)], false)));
    }
}
