//! Backups of a cluster on Nomad, as a Nomad user runs them by hand:
//! - `backup --type T` forces the periodic job `<c>-backup-T` (`nomad job periodic force`),
//!   follows the child job it launched to its end and reads the child's log;
//! - `backups` dispatches `<c>-backup-ctl` with `command=info` (`nomad job dispatch`) and reads
//!   pgBackRest's `info --output=json` from the child's stdout (`nomad alloc logs`);
//! - `restore --into` first dispatches `command=check` — a WAL switch on the primary that
//!   returns once that WAL is archived — so a target a moment ago is inside the window.
//!
//! The list, the window, the target check and the clone's stack file are the dev
//! operations' own (`backup::backups`, `restore::check_target`, `restore::clone_stack_text`);
//! only how pgBackRest is reached differs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::backup::{self, BackupDone, Backups, Window};
use super::restore::{self, Target};
use super::{ClusterView, OpsError};
use crate::compile::BACKUP_COMMAND_META;
use crate::config::runtime::names;
use crate::dev::Reporter;
use crate::nomad::api::{self, AllocListStub};
use crate::pgbackrest::{self, Stanza};
use crate::stack::Stack;
use crate::transport::{NomadClient, Transport, TransportError};

/// The task of every backup job (compile::backup).
const TASK: &str = "backup";
const KINDS: [&str; 3] = ["full", "diff", "incr"];

pub struct NomadBackups<N: Transport> {
    runtime: tokio::runtime::Runtime,
    nomad: NomadClient<N>,
    stack: Stack,
}

fn unreachable(what: &str) -> impl FnOnce(TransportError) -> OpsError + '_ {
    move |e| OpsError::Unreachable(format!("{what}: {e}"))
}

/// One run of a backup job: its child job, the allocation and what the task wrote.
struct ChildRun {
    job: String,
    alloc: AllocListStub,
    stdout: String,
    stderr: String,
}

impl ChildRun {
    fn succeeded(&self) -> bool {
        self.alloc.client_status == "complete"
    }

    fn log(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl<N: Transport> NomadBackups<N> {
    pub fn new(nomad: NomadClient<N>, stack: Stack) -> Result<Self, OpsError> {
        if !stack.backup.enabled {
            return Err(OpsError::Refused(format!(
                "backups are disabled in the stack of {} (backup.enabled = false)",
                stack.cluster.name.value
            )));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| OpsError::Setup(format!("cannot start the async runtime: {e}")))?;
        Ok(NomadBackups { runtime, nomad, stack })
    }

    fn cluster(&self) -> &str {
        &self.stack.cluster.name.value
    }

    fn scope(&self) -> String {
        crate::config::Facts::new(&self.stack).scope
    }

    /// The periodic backup jobs the stack schedules (`<c>-backup-<kind>`).
    fn scheduled_jobs(&self) -> Vec<String> {
        self.stack.backup.schedules.iter().map(|s| names::backup_job(self.cluster(), s.kind.name())).collect()
    }

    /// Turns the schedules of the cluster's backup jobs off or on (`periodic.enabled`), as an
    /// operator would: each job registered again, as Nomad has it, with only that changed
    /// (check-and-set on its modify index). A job that is not on Nomad, is stopped or already
    /// so is left alone. Returns the jobs changed.
    pub fn set_schedules(&self, enabled: bool) -> Result<Vec<String>, OpsError> {
        let mut changed = Vec::new();
        for id in self.scheduled_jobs() {
            let read = self.runtime.block_on(self.nomad.read_job_json(&id)).map_err(unreachable(&format!("reading job {id}")))?;
            let Some(mut job) = read else { continue };
            if job["Stop"] == true || !job["Periodic"].is_object() || job["Periodic"]["Enabled"] == enabled {
                continue;
            }
            job["Periodic"]["Enabled"] = enabled.into();
            let options = api::RegisterOptions { enforce_index: job["JobModifyIndex"].as_u64(), ..Default::default() };
            let what = format!("{} the schedule of {id}", if enabled { "turning on" } else { "pausing" });
            self.runtime.block_on(self.nomad.register_job(&job, options)).map_err(unreachable(&what))?;
            changed.push(id);
        }
        Ok(changed)
    }

    /// Children of the cluster's backup jobs that have not ended: a forced run ignores the
    /// periodic job's `prohibit_overlap` (that guards only its own schedule), so pgnomad checks.
    pub fn running_backups(&self) -> Result<Vec<String>, OpsError> {
        let prefix = format!("{}-backup-", self.cluster());
        let parents: Vec<String> = KINDS.iter().map(|k| names::backup_job(self.cluster(), k)).collect();
        let jobs = self.runtime.block_on(self.nomad.list_jobs(Some(&prefix))).map_err(unreachable("listing the backup jobs"))?;
        Ok(jobs.into_iter().filter(|j| parents.contains(&j.parent_id) && j.status != "dead").map(|j| j.id).collect())
    }

    /// Follows the child job `job` until its allocation has ended, then reads its log.
    fn follow(&self, job: &str, deadline: Instant, reporter: &dyn Reporter) -> Result<ChildRun, OpsError> {
        let started = Instant::now();
        let mut index = 0;
        let mut last = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(OpsError::TimedOut {
                    what: format!("{job} to end (last seen: {last}); see `nomad job status {job}`"),
                    after: started.elapsed(),
                });
            }
            let wait = left.min(Duration::from_secs(30)).max(Duration::from_millis(1));
            let (allocs, next): (Vec<AllocListStub>, u64) = self
                .runtime
                .block_on(self.nomad.get_blocking(api::job_allocations(job, false), index, wait))
                .map_err(unreachable(&format!("watching {job}")))?;
            index = next;
            let Some(alloc) = allocs.into_iter().max_by_key(|a| a.create_index) else {
                last = "no allocation placed yet".into();
                reporter.progress(&format!("{job}: {last} ({:.0} s)", started.elapsed().as_secs_f64()));
                continue;
            };
            let event = alloc
                .task_events()
                .filter(|(task, _)| *task == TASK)
                .map(|(_, e)| if e.display_message.is_empty() { e.event_type.clone() } else { e.display_message.clone() })
                .last()
                .unwrap_or_default();
            last = format!(
                "{} on {}{}",
                alloc.client_status,
                alloc.node_name,
                if event.is_empty() { String::new() } else { format!(": {event}") }
            );
            reporter.progress(&format!("{job}: {last} ({:.0} s)", started.elapsed().as_secs_f64()));
            if matches!(alloc.client_status.as_str(), "complete" | "failed" | "lost") {
                let read = |stderr| {
                    self.runtime
                        .block_on(self.nomad.alloc_logs(&alloc.id, TASK, stderr))
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .map_err(unreachable(&format!("reading the log of {job} (allocation {})", alloc.id)))
                };
                let (stdout, stderr) = (read(false)?, read(true)?);
                return Ok(ChildRun { job: job.to_owned(), alloc, stdout, stderr });
            }
        }
    }

    /// Dispatches `<c>-backup-ctl` with `command` and follows the run to its end.
    fn dispatch(&self, command: &str, deadline: Instant, reporter: &dyn Reporter) -> Result<ChildRun, OpsError> {
        let job = names::backup_ctl_job(self.cluster());
        let meta = BTreeMap::from([(BACKUP_COMMAND_META.to_owned(), command.to_owned())]);
        let dispatched = self.runtime.block_on(self.nomad.dispatch_job(&job, None, &meta)).map_err(|e| {
            if e.is_not_found() {
                OpsError::Refused(format!("{job} is not on Nomad: has `pgnomad run` put this stack (with backups) on the cluster?"))
            } else {
                OpsError::Unreachable(format!("dispatching {job} (command={command}): {e}"))
            }
        })?;
        reporter.progress(&format!("dispatched {}", dispatched.dispatched_job_id));
        self.follow(&dispatched.dispatched_job_id, deadline, reporter)
    }

    /// pgBackRest's `info` of the cluster's stanza, read through a dispatch of `<c>-backup-ctl`.
    pub fn info(&self, timeout: Duration, reporter: &dyn Reporter) -> Result<Stanza, OpsError> {
        let run = self.dispatch("info", Instant::now() + timeout, reporter)?;
        if !run.succeeded() {
            return Err(backup::explain_failure(&format!("pgbackrest info ({})", run.job), &run.log()));
        }
        let scope = self.scope();
        let info = pgbackrest::parse_info(run.stdout.as_bytes())
            .map_err(|e| OpsError::Failed(format!("{}: pgbackrest info printed no info JSON ({e}):\n{}", run.job, run.log().trim())))?;
        let stanza = info
            .into_iter()
            .find(|s| s.name == scope)
            .ok_or_else(|| OpsError::Failed(format!("pgbackrest info lists no stanza {scope} ({})", run.job)))?;
        match stanza.status.code {
            0 | 2 => Ok(stanza),
            1 | 3 => Err(OpsError::Unreachable(format!(
                "the repository has no stanza {scope} ({}): it is unreachable or not this cluster's\n  = help: the stanza is created when a primary is elected; check `nomad job status {}`",
                stanza.status.message,
                names::repo_job(self.cluster())
            ))),
            4 | 5 => Err(OpsError::Refused(format!(
                "the stanza {scope} in the repository does not match this cluster ({}): it belongs to another database or cipher\n  = help: a cluster made afresh under an old name must not reuse the old stanza",
                stanza.status.message
            ))),
            _ => Err(OpsError::Unreachable(format!("the repository is unreachable: {}", stanza.status.message))),
        }
    }

    /// `backups`: the list and the window. `archived_at` is when WAL up to then was known to
    /// be archived (a `check` run), if one was made.
    pub fn backups(&self, archived_at: Option<i64>, timeout: Duration, reporter: &dyn Reporter) -> Result<Backups, OpsError> {
        Ok(backup::backups(&self.info(timeout, reporter)?, archived_at))
    }

    /// Archives the primary's WAL up to now (`pgbackrest check`); when it was done, in Unix seconds.
    pub fn archive_now(&self, timeout: Duration, reporter: &dyn Reporter) -> Result<i64, OpsError> {
        reporter.step("archiving the WAL up to now (pgbackrest check: a WAL switch on the primary, then a wait for the archive)");
        let run = self.dispatch("check", Instant::now() + timeout, reporter)?;
        if !run.succeeded() {
            return Err(backup::explain_failure(&format!("pgbackrest check ({})", run.job), &run.log()));
        }
        Ok(unix_now())
    }

    /// `backup --type kind`: forces `<c>-backup-<kind>` and follows its child to the end.
    /// `view` gives Patroni's view, to say which member the files come from; it is asked for
    /// once the refusals that need none have passed (a cluster part-way through
    /// `restore --in-place` has no member answering).
    pub fn backup(
        &self,
        kind: &str,
        view: impl FnOnce() -> Result<ClusterView, OpsError>,
        timeout: Duration,
        reporter: &dyn Reporter,
    ) -> Result<BackupDone, OpsError> {
        if !KINDS.contains(&kind) {
            return Err(OpsError::Refused(format!("no backup type `{kind}`: full, diff or incr")));
        }
        let job = names::backup_job(self.cluster(), kind);
        if !self.stack.backup.schedules.iter().any(|s| s.kind.name() == kind) {
            return Err(OpsError::Refused(format!(
                "the stack has no {kind} schedule (backup.schedule.{kind} = \"off\"), so there is no job {job} to force\n  = help: give it a schedule and `pgnomad run`, or take another type"
            )));
        }
        // Nomad forces only a periodic job whose schedule is on; `restore --in-place` turns
        // them off while it runs.
        let registered = self.runtime.block_on(self.nomad.read_job_json(&job)).map_err(unreachable(&format!("reading job {job}")))?;
        if registered.is_some_and(|j| j["Periodic"]["Enabled"] == false) {
            return Err(OpsError::Refused(format!(
                "the schedule of {job} is paused (periodic enabled = false), as `restore --in-place` leaves it while it runs\n  = help: let the restore end (running it again with the same target resumes it); `pgnomad run` turns the stack's schedules on again"
            )));
        }
        let running = self.running_backups()?;
        if let Some(other) = running.first() {
            return Err(OpsError::Refused(format!(
                "another backup of {} is running ({other}): pgBackRest takes one backup of a stanza at a time\n  = help: wait for it to end (`nomad job status {other}`), then run this one again",
                self.cluster()
            )));
        }
        let view = view()?;
        let primary = view.leader().map(|l| l.name.clone()).ok_or_else(|| OpsError::Refused("the cluster has no leader now".into()))?;
        let member_order: Vec<String> = crate::config::Facts::new(&self.stack).members.iter().map(|m| m.name.clone()).collect();
        let standbys: Vec<String> = view.replicas().filter(|m| m.reachable && m.is_streaming()).map(|m| m.name.clone()).collect();
        let from_standby = self.stack.backup.from_standby && member_order.len() > 1;
        // Refused before anything starts when no standby streams; the member itself is named
        // after the run, from the pg1…pgN order the child's config had (Consul's order).
        backup::copied_from(&member_order, &primary, &standbys, from_standby)?;
        reporter.step(&format!(
            "{kind} backup of {}: forcing {job} (files from {}, started and stopped on primary {primary})",
            self.cluster(),
            if from_standby { "a standby" } else { "the primary" }
        ));
        let deadline = Instant::now() + timeout;
        let before: Vec<String> = self.info(timeout, reporter)?.backup.into_iter().map(|b| b.label).collect();
        let started = Instant::now();
        let forced = self.runtime.block_on(self.nomad.force_periodic(&job)).map_err(|e| {
            if e.is_not_found() {
                OpsError::Refused(format!("{job} is not on Nomad: has `pgnomad run` put this stack on the cluster?"))
            } else {
                OpsError::Unreachable(format!("forcing {job}: {e}"))
            }
        })?;
        let eval =
            self.runtime.block_on(self.nomad.read_evaluation(&forced.eval_id)).map_err(unreachable("reading the forced evaluation"))?;
        reporter.step(&format!("{} launched", eval.job_id));
        let run = self.follow(&eval.job_id, deadline, reporter)?;
        let took = started.elapsed();
        let order = pg_order(&run.log());
        let copied_from = backup::copied_from(if order.is_empty() { &member_order } else { &order }, &primary, &standbys, from_standby)?;
        if !run.succeeded() {
            return Err(backup::explain_failure(&format!("{kind} backup of {} ({})", self.cluster(), run.job), &run.log()));
        }
        let stanza = self.info(deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(30)), reporter)?;
        let new = stanza.backup.iter().filter(|b| !before.contains(&b.label)).max_by_key(|b| b.timestamp.stop).ok_or_else(|| {
            OpsError::Failed(format!("{} completed but the repository lists no new backup:\n{}", run.job, run.log().trim()))
        })?;
        Ok(BackupDone::of(new, copied_from, primary, took, run.log()))
    }

    /// `restore --into NAME` on Nomad: the WAL archived up to now, the target checked against
    /// the window, then `NAME.hcl` written beside `stack_file`.
    pub fn restore_into(
        &self,
        stack_file: &Path,
        into: &str,
        target: &Target,
        timeout: Duration,
        reporter: &dyn Reporter,
    ) -> Result<NomadRestore, OpsError> {
        let source = self.cluster().to_owned();
        let file = stack_file.parent().unwrap_or(Path::new(".")).join(format!("{into}.hcl"));
        restore::check_clone_name(&source, into)?;
        if file.exists() {
            return Err(OpsError::Refused(format!(
                "the restore target cluster {into} already exists ({}): a restore never overwrites a cluster\n  = help: pick another name, or remove it first",
                file.display()
            )));
        }
        let existing = self.runtime.block_on(self.nomad.list_jobs(Some(&format!("{into}-")))).map_err(unreachable("listing jobs"))?;
        if let Some(job) = existing.iter().find(|j| j.meta.get(crate::compile::META_CLUSTER).map(String::as_str) == Some(into)) {
            return Err(OpsError::Refused(format!(
                "the restore target cluster {into} already exists on Nomad (job {}): a restore never overwrites a cluster\n  = help: pick another name, or `pgnomad destroy -f {}` first",
                job.id,
                file.display()
            )));
        }
        let archived_at = self.archive_now(timeout, reporter)?;
        let list = self.backups(Some(archived_at), timeout, reporter)?;
        restore::check_target(target, list.window.as_ref(), &list.backups)?;
        let window = list.window.clone().expect("check_target refuses a repository without backups");
        let source_text = std::fs::read_to_string(stack_file)
            .map_err(|e| OpsError::Setup(format!("read the source's stack file {}: {e}", stack_file.display())))?;
        let text = restore::clone_stack_text(&source_text, &source, into, target)?;
        let named = crate::stack::Source::new(file.display().to_string(), text.clone());
        crate::stack::load(&named).map_err(|d| OpsError::Setup(d.iter().map(|d| named.render(d)).collect::<Vec<_>>().join("\n")))?;
        reporter.step(&format!("writing {}", file.display()));
        std::fs::write(&file, &text).map_err(|e| OpsError::Setup(format!("write {}: {e}", file.display())))?;
        Ok(NomadRestore { cluster: into.to_owned(), stack_file: file, window })
    }
}

/// What `restore --into` did on Nomad.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NomadRestore {
    pub cluster: String,
    pub stack_file: PathBuf,
    /// The source's window the target was checked against.
    pub window: Window,
}

/// The members in the order backup.sh printed its config's `pgN-host=<member>.<service>` lines.
fn pg_order(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|line| line.strip_prefix("backup.sh: pg")?.split_once("-host=").map(|(_, host)| host))
        .filter_map(|host| host.split('.').next().map(str::to_owned))
        .collect()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_member_order_comes_from_the_childs_config_lines() {
        let log = "backup.sh: pg1-host=member-2.main-pgbackrest.service.consul\nINFO: x\nbackup.sh: pg2-host=member-0.main-pgbackrest.service.consul\n";
        assert_eq!(pg_order(log), ["member-2", "member-0"]);
        let order = pg_order(log);
        let standbys = vec!["member-0".to_owned(), "member-2".to_owned()];
        assert_eq!(backup::copied_from(&order, "member-1", &standbys, true).unwrap(), "member-2");
        assert_eq!(backup::copied_from(&order, "member-1", &standbys, false).unwrap(), "member-1");
        assert!(backup::copied_from(&order, "member-1", &[], true).unwrap_err().is_refusal());
    }
}
