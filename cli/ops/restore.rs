//! Point-in-time restore into a new cluster, declared: `restore --into NAME` writes
//! `NAME.hcl` beside the source's stack file — the source's stack under the new name, with a
//! `restore { from, to_time | to_lsn | to_xid | backup }` block — and brings it up. Patroni's
//! custom bootstrap restores the source's backups into the first member and recovers to the
//! target; the clone then archives into its own stanza and repository, never the source's.
//!
//! Before anything is written the source's WAL up to now is archived (a WAL switch, then a
//! wait for the archiver) and the target is checked against the recoverable window.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::backup::{self, Window};
use super::OpsError;
use crate::compile::RestoreMode;
use crate::config::local::LocalRestoreSource;
use crate::dev::{self, Dev, DevError, Reporter};
use crate::stack::decode::{format_timestamp, parse_timestamp};

/// Where recovery stops, as the operator gave it on the command line.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Unix microseconds, and the text as given.
    Time {
        micros: i64,
        text: String,
    },
    Lsn(String),
    Xid(String),
    /// A backup's own consistent point.
    Backup(String),
}

impl Target {
    /// `--to-time T`: RFC 3339 or PostgreSQL's text, with a zone.
    pub fn time(text: &str) -> Result<Target, OpsError> {
        parse_timestamp(text).map(|micros| Target::Time { micros, text: text.to_owned() }).map_err(|problem| {
            OpsError::Refused(format!(
                "--to-time {problem}\n  = help: write RFC 3339 with a zone, e.g. 2026-12-01T10:42:07.250000Z, or PostgreSQL's text, e.g. '2026-12-01 10:42:07.25+00'"
            ))
        })
    }

    /// The `restore` block's attribute for this target, and its value.
    fn attribute(&self) -> (&'static str, String) {
        match self {
            // Normalized to UTC with microseconds: what PostgreSQL reads back exactly.
            Target::Time { micros, .. } => ("to_time", format_timestamp(*micros)),
            Target::Lsn(lsn) => ("to_lsn", lsn.clone()),
            Target::Xid(xid) => ("to_xid", xid.clone()),
            Target::Backup(label) => ("backup", label.clone()),
        }
    }

    /// The target in one line, the same however it was written (`to_time 2026-12-01
    /// 10:42:07.250000+00`): how a resumed restore knows it is asked for the same one.
    pub fn describe(&self) -> String {
        let (name, value) = self.attribute();
        format!("{name} {value}")
    }

    /// The `restore { … }` block's lines for this target.
    fn hcl(&self, from: &str) -> String {
        let (name, value) = self.attribute();
        format!("restore {{\n  from    = \"{from}\"\n  {name:<7} = \"{value}\"\n}}\n")
    }
}

/// Refuses a time outside what the repository can reach, naming the window.
pub fn check_target(target: &Target, window: Option<&Window>, backups: &[backup::BackupRow]) -> Result<(), OpsError> {
    let Some(window) = window else {
        return Err(OpsError::Refused(
            "the source's repository holds no backup, so nothing can be restored\n  = help: take one first: `pgnomad dev backup full`"
                .into(),
        ));
    };
    match target {
        Target::Time { micros, text } => {
            let seconds = micros.div_euclid(1_000_000);
            let reach = if window.newest_from_archive { "the newest archived WAL" } else { "the end of the newest backup" };
            if seconds < window.oldest || (window.newest_from_archive && seconds > window.newest) {
                return Err(OpsError::Refused(format!(
                    "--to-time {text} is outside the recoverable window {} … {} (the end of the oldest backup … {reach})\n  = help: pick a time inside it; `pgnomad dev backups` shows the window",
                    window.oldest_time, window.newest_time
                )));
            }
            // pgBackRest keeps a backup's stop time in whole seconds and wants one that
            // stopped before the target: a target in the very second the oldest backup
            // ended finds none (its restore fails after the members have stopped).
            if seconds == window.oldest {
                return Err(OpsError::Refused(format!(
                    "--to-time {text} falls in the second the oldest backup ended ({}), and pgBackRest restores only from a backup that ended before the target's second\n  = help: pick a time at least one second later",
                    window.oldest_time
                )));
            }
            Ok(())
        }
        Target::Backup(label) if !backups.iter().any(|b| b.label == *label) => Err(OpsError::Refused(format!(
            "the source's repository has no backup {label}; it has {}\n  = help: `pgnomad dev backups` lists them",
            backups.iter().map(|b| b.label.as_str()).collect::<Vec<_>>().join(", ")
        ))),
        _ => Ok(()),
    }
}

/// The clone's stack file: the source's text with the cluster renamed, and the restore block.
pub fn clone_stack_text(source_text: &str, source_cluster: &str, into: &str, target: &Target) -> Result<String, OpsError> {
    let label = format!("cluster \"{source_cluster}\"");
    let at = source_text.find(&label).ok_or_else(|| {
        OpsError::Setup(format!(
            "cannot find `{label}` in the source's stack file to rename it; write {into}.hcl by hand with a restore block"
        ))
    })?;
    if source_text.contains("\nrestore") || source_text.starts_with("restore") {
        return Err(OpsError::Refused(
            "the source is itself a restored cluster with a `restore` block: remove the block from its stack file once it runs, then restore from it".into(),
        ));
    }
    let mut text = String::with_capacity(source_text.len() + 200);
    text.push_str(&source_text[..at]);
    text.push_str(&format!("cluster \"{into}\""));
    text.push_str(&source_text[at + label.len()..]);
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!("\n# Restored from {source_cluster} by `pgnomad restore`: it archives into its own stanza {into}.\n"));
    text.push_str(&target.hcl(source_cluster));
    Ok(text)
}

/// A clone's name: a valid cluster name, not its source's.
pub fn check_clone_name(source: &str, into: &str) -> Result<(), OpsError> {
    if into == source {
        return Err(OpsError::Refused(format!(
            "--into {into} is the source's own name: a clone needs its own, so that it archives into its own stanza\n  = help: pick another name (restoring a cluster in place, into itself, is not supported yet)"
        )));
    }
    if let Err(problem) = crate::stack::validate::dns_label(into, crate::stack::validate::MAX_CLUSTER_NAME) {
        return Err(OpsError::Refused(format!("--into {into}: a cluster name {problem}")));
    }
    Ok(())
}

/// Recorded in a restored cluster's state directory: where its source's state directory is
/// (the source may have been given with --state-dir).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SourceRecord {
    state_dir: PathBuf,
}

fn source_record_file(state_root: &Path) -> PathBuf {
    state_root.join("restore-source.json")
}

/// For a dev stack with `restore { … }`: the source's stanza, repository and cipher pass.
pub fn local_source(stack: &crate::stack::Stack, stack_file: &Path, state_root: &Path) -> Result<Option<LocalRestoreSource>, DevError> {
    let Some(restore) = &stack.restore else { return Ok(None) };
    let from = &restore.from.value;
    let recorded: Option<SourceRecord> =
        std::fs::read_to_string(source_record_file(state_root)).ok().and_then(|text| serde_json::from_str(&text).ok());
    let state_dir = match recorded {
        // In place (`restore --in-place`): the cluster's own repository.
        _ if *from == stack.cluster.name.value => state_root.to_owned(),
        Some(record) => record.state_dir,
        None if from.ends_with(".hcl") => {
            let file = stack_file.parent().unwrap_or(Path::new(".")).join(from);
            let text =
                std::fs::read_to_string(&file).map_err(|e| DevError::io(format!("read the restore source {}", file.display()), e))?;
            let source = crate::stack::Source::new(file.display().to_string(), text);
            let cluster = crate::stack::load(&source)
                .map_err(|d| DevError::Stack(d.iter().map(|d| source.render(d)).collect::<Vec<_>>().join("\n")))?
                .stack
                .cluster
                .name
                .value;
            dev::default_state_dir(&file, &cluster)
        }
        None => dev::default_state_dir(stack_file, from),
    };
    let source = Dev::open(&state_dir).map_err(|e| match e {
        DevError::NotCreated(dir) => DevError::Failed(format!(
            "the restore source {from} has no dev state in {}: restore from a cluster that `pgnomad dev up` made",
            dir.display()
        )),
        other => other,
    })?;
    Ok(Some(LocalRestoreSource {
        stanza: source.facts.scope.clone(),
        // An S3 repository's path is the stack's (the bucket and endpoint come with the
        // clone's copy of the source's `backup` block); a volume repository is in the state dir.
        repo_path: if source.facts.backup.repo_type == "s3" {
            source.facts.backup.repo_path.clone()
        } else {
            source.state.root.join("repo").to_string_lossy().into_owned()
        },
        cipher_pass: if source.stack.backup.cipher { source.state.read_secrets()?.get("repo_cipher_pass").cloned() } else { None },
    }))
}

/// What `restore --into` did.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub cluster: String,
    pub stack_file: PathBuf,
    pub state_dir: PathBuf,
    /// The source's repository window the target was checked against.
    pub window: Window,
    /// The clone's members, as `dev status` shows them.
    pub status: dev::Status,
    #[serde(serialize_with = "super::seconds")]
    pub took: Duration,
}

/// Archives the source primary's WAL up to now: a WAL switch, then a wait until the archiver
/// has the segment that held it.
fn archive_now(source: &Dev, leader: usize, reporter: &dyn Reporter) -> Result<(), OpsError> {
    reporter.step("archiving the source's WAL up to now (pg_switch_wal, then the archiver)");
    let segment = source
        .member_query(leader, "SELECT pg_walfile_name(pg_current_wal_lsn())")
        .ok_or_else(|| OpsError::Unreachable("the source's primary does not answer".into()))?;
    source
        .member_query(leader, "SELECT pg_switch_wal()")
        .ok_or_else(|| OpsError::Unreachable("the source's primary does not answer".into()))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (archived, failed) = source
            .member_query(leader, "SELECT coalesce(last_archived_wal, '') || '|' || coalesce(last_failed_wal, '') FROM pg_stat_archiver")
            .and_then(|row| row.split_once('|').map(|(a, f)| (a.to_owned(), f.to_owned())))
            .unwrap_or_default();
        // Names of one timeline sort by position; a later timeline sorts after.
        if archived.as_str() >= segment.as_str() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(OpsError::TimedOut {
                what: format!("the source to archive WAL segment {segment} (last archived {archived:?}, last failed {failed:?}): is its repository reachable?"),
                after: Duration::from_secs(60),
            });
        }
        reporter.progress(&format!("waiting for {segment} in the archive"));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `dev restore --into NAME`: the source's WAL archived up to now, the target checked, then
/// `NAME.hcl` written beside the source's stack file and the clone brought up in its own
/// state directory (`.pgnomad/dev/NAME`), the source untouched.
pub fn dev_restore(source: &Dev, into: &str, target: &Target, timeout: Duration, reporter: &dyn Reporter) -> Result<Restored, OpsError> {
    let started = Instant::now();
    let source_file = source.recorded.stack_file.clone();
    let dir = source_file.parent().unwrap_or(Path::new(".")).to_owned();
    let stack_file = dir.join(format!("{into}.hcl"));
    let state_dir = dev::default_state_dir(&stack_file, into);
    check_clone_name(&source.facts.cluster, into)?;
    for existing in [&stack_file, &state_dir] {
        if existing.exists() {
            return Err(OpsError::Refused(format!(
                "the restore target cluster {into} already exists ({}): a restore never overwrites a cluster\n  = help: pick another name, or remove it first: `pgnomad dev destroy -f {}`, then delete the stack file",
                existing.display(),
                stack_file.display()
            )));
        }
    }
    let (leader, _) = backup::dev_archived_at(source);
    match leader {
        Some(leader) => archive_now(source, leader, reporter)?,
        None => reporter.step("the source has no running primary: restoring from what its repository holds"),
    }
    let list = backup::dev_backups(source)?;
    check_target(target, list.window.as_ref(), &list.backups)?;
    let window = list.window.clone().expect("check_target refuses a repository without backups");

    let source_text = std::fs::read_to_string(&source_file)
        .map_err(|e| OpsError::Setup(format!("read the source's stack file {}: {e}", source_file.display())))?;
    let text = clone_stack_text(&source_text, &source.facts.cluster, into, target)?;
    let source_name = crate::stack::Source::new(stack_file.display().to_string(), text.clone());
    let checked = crate::stack::load(&source_name)
        .map_err(|d| OpsError::Setup(d.iter().map(|d| source_name.render(d)).collect::<Vec<_>>().join("\n")))?;
    reporter.step(&format!("writing {}", stack_file.display()));
    std::fs::write(&stack_file, &text).map_err(|e| OpsError::Setup(format!("write {}: {e}", stack_file.display())))?;

    // The clone starts with the source's secrets: the restored data holds the source's roles
    // and passwords (the replication role's among them), and its repository's cipher pass.
    std::fs::create_dir_all(&state_dir).map_err(|e| OpsError::Setup(format!("create {}: {e}", state_dir.display())))?;
    let clone_state = dev::state::StateDir::new(state_dir.clone());
    let secrets = source.state.read_secrets().map_err(dev_error)?;
    clone_state.write_secrets(&secrets).map_err(dev_error)?;
    let record = SourceRecord { state_dir: source.state.root.clone() };
    dev::state::write_private(&source_record_file(&state_dir), &serde_json::to_string_pretty(&record).expect("serializes"))
        .map_err(dev_error)?;

    reporter.step(&format!(
        "bringing up {into}: Patroni's custom bootstrap restores {}'s backups and recovers to the target",
        source.facts.cluster
    ));
    let clone = dev::up(checked.stack, &stack_file, &state_dir, timeout, reporter).map_err(|e| match e {
        DevError::Timeout { what, seconds, state } => OpsError::TimedOut {
            what: format!("{what} in the restored cluster (Patroni's log: {}/member-0/log/patroni.log)", state.display()),
            after: Duration::from_secs(seconds),
        },
        other => dev_error(other),
    })?;
    Ok(Restored { cluster: into.to_owned(), stack_file, state_dir, window, status: dev::status(&clone), took: started.elapsed() })
}

/// What `restore --in-place` did, wherever it ran.
#[derive(Debug, Clone, Serialize)]
pub struct RestoredInPlace {
    pub cluster: String,
    /// The repository window the target was checked against (`None`: a resumed restore,
    /// whose window the run that started it checked).
    pub window: Option<Window>,
    /// The leader of the restored cluster, and its timeline (a new one).
    pub leader: String,
    pub timeline: Option<u64>,
    /// Where the pre-restore data was kept while the restore ran (removed since).
    pub kept: String,
    /// The attempt an earlier run left part-way that this run resumed.
    pub resumed: Option<String>,
    #[serde(serialize_with = "super::seconds")]
    pub took: Duration,
}

/// The restored cluster as its site first saw it whole.
pub struct RestoredLeader {
    pub leader: String,
    pub timeline: Option<u64>,
}

/// An in-place restore an earlier run left part-way (pgnomad was stopped while it ran).
#[derive(Debug, Clone, PartialEq)]
pub struct Interrupted {
    pub attempt: String,
    /// The phase it had reached.
    pub mode: RestoreMode,
    /// Its target, as [`Target::describe`] says it.
    pub target: String,
}

/// Where `restore --in-place` runs: the steps that differ between `pgnomad dev` (its state
/// directories, its supervisor) and Nomad (phases of the postgres job). `restore_in_place`
/// drives either through the same steps, checks and messages.
pub trait InPlaceSite {
    fn cluster(&self) -> &str;
    /// The stack the cluster runs from now.
    fn stack(&self) -> &crate::stack::Stack;
    /// Refuses when an earlier restore left data aside where this site can see it and cannot
    /// resume it.
    fn leftovers(&self) -> Result<(), OpsError> {
        Ok(())
    }
    /// An earlier run's restore left part-way, when the site can tell which and where it
    /// stopped; the site takes up its attempt, so that the steps below continue it.
    fn interrupted(&mut self) -> Result<Option<Interrupted>, OpsError> {
        Ok(None)
    }
    /// The WAL up to now archived (when a primary runs), then the repository's backups.
    fn archive_and_list(&self, timeout: Duration, reporter: &dyn Reporter) -> Result<backup::Backups, OpsError>;
    /// Stops every member.
    fn stop(&mut self, deadline: Instant, reporter: &dyn Reporter) -> Result<(), OpsError>;
    /// Sets each member's data aside and bootstraps the cluster again from its own repository
    /// to `to` (Patroni's custom bootstrap, the replicas cloned from the restored primary),
    /// until its leader runs on the restored data and every replica streams.
    fn restore(&mut self, to: &Target, deadline: Instant, reporter: &dyn Reporter) -> Result<RestoredLeader, OpsError>;
    /// The restore succeeded: removes the data set aside; the stack's own configuration again.
    fn finish(&mut self, deadline: Instant, reporter: &dyn Reporter) -> Result<(), OpsError>;
    /// The restore failed: puts the data set aside back and runs the cluster on it.
    fn revert(&mut self, deadline: Instant, reporter: &dyn Reporter) -> Result<(), OpsError>;
    /// The leader once the cluster runs whole again (a resumed finish did not see the restore).
    fn leader(&self) -> Result<RestoredLeader, OpsError>;
    /// Where the data set aside is kept while the restore runs, for the messages.
    fn kept(&self) -> String;
    /// Where to read why a restore failed.
    fn logs(&self) -> String;
    /// What to do when the restore succeeded but `finish` did not.
    fn unfinished_help(&self) -> String;
    /// How to put the data set aside back by hand when `revert` did not finish.
    fn put_back_help(&self) -> String;
}

/// `restore --in-place`: the cluster's own WAL archived up to now and the target checked
/// before anything stops; then every member stopped, its data set aside, and the cluster
/// bootstrapped again from its own repository to the target. The data set aside comes back
/// if the restore fails, and is removed once it has succeeded. A restore an earlier run left
/// part-way is resumed from the phase it reached, when asked for the same target.
pub fn restore_in_place(
    site: &mut dyn InPlaceSite,
    to: &Target,
    timeout: Duration,
    reporter: &dyn Reporter,
) -> Result<RestoredInPlace, OpsError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let cluster = site.cluster().to_owned();
    if site.stack().restore.is_some() {
        return Err(OpsError::Refused(format!(
            "{cluster}'s stack file still has the `restore {{ … }}` block it was bootstrapped with\n  = help: remove the block from the stack file, then restore in place"
        )));
    }
    if !site.stack().backup.enabled {
        return Err(OpsError::Refused(format!("{cluster} has no `backup` block: there is no repository to restore from")));
    }
    site.leftovers()?;
    if let Some(earlier) = site.interrupted()? {
        return resume(site, earlier, to, timeout, started, reporter);
    }
    let list = site.archive_and_list(timeout, reporter)?;
    check_target(to, list.window.as_ref(), &list.backups)?;
    let window = list.window.clone().expect("check_target refuses a repository without backups");

    site.stop(deadline, reporter)?;
    reporter.step(&format!("the pre-restore data is kept until the restore succeeds: {}", site.kept()));
    let restored = restore_then_finish(site, to, timeout, deadline, reporter)?;
    Ok(RestoredInPlace {
        cluster,
        window: Some(window),
        leader: restored.leader,
        timeline: restored.timeline,
        kept: site.kept(),
        resumed: None,
        took: started.elapsed(),
    })
}

/// Continues `earlier` from the phase it reached: a restore still running or never seen
/// through (`prepare`) is waited for and then finished or reverted as a new one would be; a
/// finish or a revert is carried to its end.
fn resume(
    site: &mut dyn InPlaceSite,
    earlier: Interrupted,
    to: &Target,
    timeout: Duration,
    started: Instant,
    reporter: &dyn Reporter,
) -> Result<RestoredInPlace, OpsError> {
    let cluster = site.cluster().to_owned();
    let Interrupted { attempt, mode, target } = earlier;
    if target != to.describe() {
        return Err(OpsError::Refused(format!(
            "an earlier in-place restore of {cluster} ({target}, attempt {attempt}) stopped part-way, in its {} phase, and this one asks for {}\n  = help: run `restore --in-place --yes` with the earlier target to see it through first; then restore to the new one",
            mode.as_str(),
            to.describe()
        )));
    }
    reporter
        .step(&format!("resuming the in-place restore ({target}, attempt {attempt}) an earlier run left in its {} phase", mode.as_str()));
    let deadline = started + timeout;
    let restored = match mode {
        RestoreMode::Prepare => restore_then_finish(site, to, timeout, deadline, reporter)?,
        RestoreMode::Finish => {
            let before = site.leader()?;
            finish_or_say(site, &before, deadline, reporter)?;
            // The finish ends with a switchover, as an upgrade does.
            site.leader()?
        }
        RestoreMode::Revert => {
            revert_or_say(site, "in an earlier run".into(), timeout, reporter)?;
            return Err(OpsError::Failed(format!(
                "the in-place restore failed in an earlier run, which stopped while putting the pre-restore data back\n  = {cluster} runs again on its pre-restore data, unchanged\n  = help: Patroni's logs say why the restore failed: {}",
                site.logs()
            )));
        }
    };
    Ok(RestoredInPlace {
        cluster,
        window: None,
        leader: restored.leader,
        timeline: restored.timeline,
        kept: site.kept(),
        resumed: Some(attempt),
        took: started.elapsed(),
    })
}

/// The restore itself, then the data set aside removed; or, if it fails, put back.
fn restore_then_finish(
    site: &mut dyn InPlaceSite,
    to: &Target,
    timeout: Duration,
    deadline: Instant,
    reporter: &dyn Reporter,
) -> Result<RestoredLeader, OpsError> {
    match site.restore(to, deadline, reporter) {
        Ok(restored) => {
            finish_or_say(site, &restored, deadline, reporter)?;
            Ok(restored)
        }
        Err(error) => {
            let why = match &error {
                OpsError::TimedOut { what, after } => format!("timed out after {} s waiting for {what}", after.as_secs()),
                other => other.to_string(),
            };
            reporter.step(&format!("the restore failed ({why}): putting the pre-restore data back"));
            let kept = site.kept();
            revert_or_say(site, why.clone(), timeout, reporter)?;
            Err(OpsError::Failed(format!(
                "the in-place restore failed: {why}\n  = {} runs again on its pre-restore data, unchanged (kept in {kept} while it ran)\n  = help: Patroni's logs say why: {}",
                site.cluster(),
                site.logs()
            )))
        }
    }
}

/// `finish`, its failure said as what it is: the restore itself stands.
fn finish_or_say(
    site: &mut dyn InPlaceSite,
    restored: &RestoredLeader,
    deadline: Instant,
    reporter: &dyn Reporter,
) -> Result<(), OpsError> {
    site.finish(deadline, reporter).map_err(|e| {
        let timeline = restored.timeline.map(|t| format!(" on timeline {t}")).unwrap_or_default();
        OpsError::Failed(format!(
            "the restore succeeded ({} leads{timeline}), but removing the pre-restore data did not finish: {e}\n  = {} runs on the restored data; the pre-restore data not yet removed is in {}\n  = help: {}",
            restored.leader,
            site.cluster(),
            site.kept(),
            site.unfinished_help()
        ))
    })
}

/// `revert`, with a deadline of its own: putting the data back must not be cut short by the
/// restore's. Its failure says where the data is and how to put it back by hand.
fn revert_or_say(site: &mut dyn InPlaceSite, why: String, timeout: Duration, reporter: &dyn Reporter) -> Result<(), OpsError> {
    let kept = site.kept();
    site.revert(Instant::now() + timeout, reporter).map_err(|e| {
        // Not "run the restore again": a new attempt would set aside what is there now, a
        // failed restore's data, and leave the real data where it is.
        OpsError::Failed(format!(
            "the in-place restore failed ({why}), and putting the pre-restore data back did not finish: {e}\n  = the pre-restore data is in {kept}, or back in place where the revert got that far; do not run `restore --in-place` again before it is back\n  = help: {}\n  = help: Patroni's logs say why the restore failed: {}",
            site.put_back_help(),
            site.logs()
        ))
    })
}

fn dev_leader(dev: &Dev) -> RestoredLeader {
    let status = dev::status(dev);
    let leader = status.members.iter().find(|m| m.role == "leader");
    RestoredLeader { leader: leader.map(|m| m.name.clone()).unwrap_or_default(), timeline: leader.and_then(|m| m.timeline) }
}

/// Beside each data directory while an in-place restore runs on `dev`: the data it replaces.
const PRE_RESTORE: &str = "data.pre-restore";

fn aside(dir: &Path) -> PathBuf {
    dir.with_file_name(PRE_RESTORE)
}

/// `pgnomad dev`: the members' data directories and the DCS's (a fresh DCS: Patroni would
/// not promote a member whose WAL is behind the old leader's last position, and the
/// restored one always is) are moved aside and back.
pub struct DevInPlace<'a> {
    dev: &'a Dev,
    /// The directories moved aside, once they are.
    moved: Vec<PathBuf>,
    /// Each member's Patroni log and its length when the restore began.
    logs: Vec<(PathBuf, u64)>,
    /// What [`InProgress`] records, once the data is aside.
    progress: Option<InProgress>,
}

/// `restore-in-place.json` in the state directory while data is set aside: the phase the
/// restore reached, so that a run stopped part-way can be resumed (the supervisor, in its own
/// session, goes on meanwhile).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct InProgress {
    attempt: String,
    mode: String,
    target: String,
    /// Each Patroni log and its length when the restore began: a failed bootstrap is looked
    /// for after that point only.
    logs: Vec<(PathBuf, u64)>,
}

impl<'a> DevInPlace<'a> {
    pub fn new(dev: &'a Dev) -> Self {
        DevInPlace { dev, moved: Vec::new(), logs: Vec::new(), progress: None }
    }

    fn progress_file(&self) -> PathBuf {
        self.dev.state.root.join("restore-in-place.json")
    }

    fn read_progress(&self) -> Result<Option<InProgress>, OpsError> {
        let path = self.progress_file();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| OpsError::Setup(format!("{} is not what pgnomad wrote ({e}); remove it to start afresh", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(OpsError::Setup(format!("read {}: {e}", path.display()))),
        }
    }

    /// Records `mode` as the phase reached (written whole, then renamed into place).
    fn record(&mut self, mode: RestoreMode) -> Result<(), OpsError> {
        let path = self.progress_file();
        let Some(progress) = self.progress.as_mut() else { return Ok(()) };
        progress.mode = mode.as_str().to_owned();
        let partial = path.with_extension("json.partial");
        std::fs::write(&partial, serde_json::to_vec_pretty(progress).expect("serializes"))
            .and_then(|()| std::fs::rename(&partial, &path))
            .map_err(|e| OpsError::Failed(format!("write {}: {e}", path.display())))
    }

    fn forget_progress(&mut self) {
        self.progress = None;
        let _ = std::fs::remove_file(self.progress_file());
    }

    fn replaced_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self.dev.facts.members.iter().map(|m| self.dev.state.data_dir(&m.name)).collect();
        dirs.push(self.dev.state.root.join("etcd").join("data"));
        dirs
    }

    fn remove_restore_confs(&self) {
        for member in &self.dev.facts.members {
            let _ = std::fs::remove_file(self.dev.state.config_dir(&member.name).join("restore.conf"));
        }
    }

    fn timeout(deadline: Instant) -> Duration {
        deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1))
    }
}

impl InPlaceSite for DevInPlace<'_> {
    fn cluster(&self) -> &str {
        &self.dev.facts.cluster
    }

    fn stack(&self) -> &crate::stack::Stack {
        &self.dev.stack
    }

    fn leftovers(&self) -> Result<(), OpsError> {
        if self.progress_file().exists() {
            // Resumable: `interrupted` takes it up.
            return Ok(());
        }
        match self.replaced_dirs().iter().map(|d| aside(d)).find(|d| d.exists()) {
            Some(left) => Err(OpsError::Refused(format!(
                "an earlier in-place restore left pre-restore data in {}\n  = help: if the cluster runs on the restored data, remove it; if not, move it back to {}",
                left.display(),
                left.with_file_name("data").display()
            ))),
            None => Ok(()),
        }
    }

    fn interrupted(&mut self) -> Result<Option<Interrupted>, OpsError> {
        let Some(progress) = self.read_progress()? else { return Ok(None) };
        let Some(mode) = RestoreMode::parse(&progress.mode) else {
            return Err(OpsError::Setup(format!("{} names no phase pgnomad knows: {}", self.progress_file().display(), progress.mode)));
        };
        self.moved = self.replaced_dirs().into_iter().filter(|d| aside(d).exists()).collect();
        self.logs = progress.logs.clone();
        let earlier = Interrupted { attempt: progress.attempt.clone(), mode, target: progress.target.clone() };
        self.progress = Some(progress);
        Ok(Some(earlier))
    }

    fn archive_and_list(&self, _timeout: Duration, reporter: &dyn Reporter) -> Result<backup::Backups, OpsError> {
        match backup::dev_archived_at(self.dev).0 {
            Some(leader) => archive_now(self.dev, leader, reporter)?,
            None => reporter.step("no primary runs: restoring from what the repository holds"),
        }
        backup::dev_backups(self.dev)
    }

    fn stop(&mut self, _deadline: Instant, reporter: &dyn Reporter) -> Result<(), OpsError> {
        reporter.step("stopping every member, PgBouncer and the DCS");
        dev::down(&self.dev.state.root, reporter).map_err(dev_error)?;
        self.moved = self.replaced_dirs().into_iter().filter(|d| d.exists()).collect();
        Ok(())
    }

    fn restore(&mut self, to: &Target, deadline: Instant, reporter: &dyn Reporter) -> Result<RestoredLeader, OpsError> {
        if self.progress.is_none() {
            self.logs = self
                .dev
                .facts
                .members
                .iter()
                .map(|m| {
                    let log = self.dev.state.log_dir(&m.name).join("patroni.log");
                    let len = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
                    (log, len)
                })
                .collect();
            for dir in &self.moved {
                std::fs::rename(dir, aside(dir)).map_err(|e| OpsError::Failed(format!("move {} aside: {e}", dir.display())))?;
            }
            let attempt = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
            self.progress =
                Some(InProgress { attempt: attempt.to_string(), mode: String::new(), target: to.describe(), logs: self.logs.clone() });
            self.record(RestoreMode::Prepare)?;
        }
        // The stack as it is, restoring from itself: Patroni's custom bootstrap runs
        // `pgbackrest restore` from the cluster's own stanza (restore.conf) with the target.
        let mut stack = self.dev.stack.clone();
        stack.restore = Some(in_place_block(&self.dev.facts.cluster, to));
        reporter.step(&format!(
            "restoring {} in place: Patroni's custom bootstrap restores its backups and recovers to the target",
            self.dev.facts.cluster
        ));
        let logs = self.logs.clone();
        let restored =
            dev::up_unless(stack, &self.dev.recorded.stack_file, &self.dev.state.root, Self::timeout(deadline), reporter, &|_| {
                bootstrap_failed(&logs)
            })
            .map_err(|error| match error {
                DevError::Timeout { what, seconds, .. } => OpsError::TimedOut { what, after: Duration::from_secs(seconds) },
                other => OpsError::Failed(other.to_string()),
            })?;
        Ok(dev_leader(&restored))
    }

    fn leader(&self) -> Result<RestoredLeader, OpsError> {
        Ok(dev_leader(&Dev::open(&self.dev.state.root).map_err(dev_error)?))
    }

    fn finish(&mut self, _deadline: Instant, reporter: &dyn Reporter) -> Result<(), OpsError> {
        self.record(RestoreMode::Finish)?;
        // The stack's own files again: no bootstrap from the repository the next time.
        Dev::prepare(self.dev.stack.clone(), &self.dev.recorded.stack_file, &self.dev.state.root).map_err(dev_error)?;
        self.remove_restore_confs();
        for dir in &self.moved {
            let old = aside(dir);
            if !old.exists() {
                continue;
            }
            reporter.step(&format!("the restore succeeded: removing {}", old.display()));
            std::fs::remove_dir_all(&old).map_err(|e| OpsError::Failed(format!("remove {}: {e}", old.display())))?;
        }
        self.forget_progress();
        Ok(())
    }

    fn revert(&mut self, deadline: Instant, reporter: &dyn Reporter) -> Result<(), OpsError> {
        self.record(RestoreMode::Revert)?;
        let root = &self.dev.state.root;
        dev::down(root, reporter).map_err(dev_error)?;
        for dir in &self.moved {
            if !aside(dir).exists() {
                continue;
            }
            // What the failed bootstrap left: Patroni moves a failed data directory to data.failed.
            for leftover in [dir.clone(), dir.with_file_name("data.failed")] {
                if leftover.exists() {
                    std::fs::remove_dir_all(&leftover).map_err(|e| OpsError::Failed(format!("remove {}: {e}", leftover.display())))?;
                }
            }
            std::fs::rename(aside(dir), dir).map_err(|e| OpsError::Failed(format!("move {} back: {e}", aside(dir).display())))?;
        }
        self.remove_restore_confs();
        dev::up(self.dev.stack.clone(), &self.dev.recorded.stack_file, root, Self::timeout(deadline), reporter).map_err(|e| {
            OpsError::Failed(format!("the cluster did not come back up on its pre-restore data, which is back in place: {e}"))
        })?;
        self.forget_progress();
        Ok(())
    }

    fn kept(&self) -> String {
        self.moved.iter().map(|d| aside(d).display().to_string()).collect::<Vec<_>>().join(", ")
    }

    fn unfinished_help(&self) -> String {
        "remove the directories named above once you no longer need them; `pgnomad dev restore --in-place` refuses to run while they exist"
            .into()
    }

    fn put_back_help(&self) -> String {
        "to put it back by hand: `pgnomad dev down`; for each directory above, remove the `data` (and `data.failed`) beside it and rename it to `data`; then `pgnomad dev up`".into()
    }

    fn logs(&self) -> String {
        self.dev
            .facts
            .members
            .iter()
            .map(|m| self.dev.state.log_dir(&m.name).join("patroni.log").display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A `restore` block naming the cluster itself, for `target`.
pub(crate) fn in_place_block(cluster: &str, target: &Target) -> crate::stack::Restore {
    use crate::stack::syntax::Spanned;
    use crate::stack::RestoreTarget;
    let spanned = |text: &str| Spanned::new(text.to_owned(), 0..0);
    let (target, backup) = match target {
        Target::Time { micros, text } => (RestoreTarget::Time { text: spanned(text), micros: *micros }, None),
        Target::Lsn(lsn) => (RestoreTarget::Lsn(spanned(lsn)), None),
        Target::Xid(xid) => (RestoreTarget::Xid(spanned(xid)), None),
        Target::Backup(label) => (RestoreTarget::Latest, Some(spanned(label))),
    };
    crate::stack::Restore { from: spanned(cluster), target, backup }
}

/// Patroni's words when a bootstrap failed, in a member's log since `logs`' offsets: it then
/// moves the data directory to data.failed and exits (a target recovery never reaches).
fn bootstrap_failed(logs: &[(PathBuf, u64)]) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    for (log, from) in logs {
        let Ok(mut file) = std::fs::File::open(log) else { continue };
        let mut text = String::new();
        if file.seek(SeekFrom::Start(*from)).is_err() || file.read_to_string(&mut text).is_err() {
            continue;
        }
        if let Some(why) = failed_bootstrap(&text) {
            return Some(format!("Patroni's bootstrap from the repository failed ({}){why}", log.display()));
        }
    }
    None
}

/// When a Patroni log shows a bootstrap it gave up on: its last error lines, each on a line of
/// its own. Clients refused while Postgres recovered are noise beside why recovery ended.
pub(super) fn failed_bootstrap(log: &str) -> Option<String> {
    if !log.contains("failed attempt to bootstrap the cluster") {
        return None;
    }
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("FATAL"))
        .filter(|l| !l.contains("not accepting connections") && !l.contains("is starting up"))
        .collect();
    Some(errors[errors.len().saturating_sub(5)..].iter().map(|l| format!("\n    {l}")).collect())
}

fn dev_error(error: DevError) -> OpsError {
    match error {
        DevError::Stack(text) => OpsError::Setup(text),
        other => OpsError::Failed(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(newest_from_archive: bool) -> Window {
        let (oldest, newest) =
            (parse_timestamp("2026-12-01T10:00:00Z").unwrap() / 1_000_000, parse_timestamp("2026-12-01T11:00:00Z").unwrap() / 1_000_000);
        Window {
            oldest,
            oldest_time: "2026-12-01 10:00:00+00".into(),
            newest,
            newest_time: "2026-12-01 11:00:00+00".into(),
            newest_from_archive,
            wal_min: None,
            wal_max: None,
        }
    }

    #[test]
    fn a_time_outside_the_window_is_refused_naming_the_window() {
        let before = Target::time("2026-12-01T09:59:59Z").unwrap();
        let error = check_target(&before, Some(&window(true)), &[]).unwrap_err();
        assert!(error.is_refusal());
        assert_eq!(
            error.to_string().lines().next().unwrap(),
            "--to-time 2026-12-01T09:59:59Z is outside the recoverable window 2026-12-01 10:00:00+00 … 2026-12-01 11:00:00+00 (the end of the oldest backup … the newest archived WAL)"
        );
        let after = Target::time("2026-12-01 11:00:01+00").unwrap();
        assert!(check_target(&after, Some(&window(true)), &[]).is_err());
        // Only the newest backup's end is known: later times may be in the archive.
        assert!(check_target(&after, Some(&window(false)), &[]).is_ok());
        assert!(check_target(&Target::time("2026-12-01T10:30:00.5+00:00").unwrap(), Some(&window(true)), &[]).is_ok());
        assert!(check_target(&after, None, &[]).unwrap_err().to_string().contains("holds no backup"));
        // pgBackRest's stop times are whole seconds: the oldest backup's last second is out.
        let same_second = check_target(&Target::time("2026-12-01T10:00:00.5Z").unwrap(), Some(&window(true)), &[]).unwrap_err();
        assert!(
            same_second.is_refusal() && same_second.to_string().contains("falls in the second the oldest backup ended"),
            "{same_second}"
        );
        assert!(check_target(&Target::time("2026-12-01T10:00:01Z").unwrap(), Some(&window(true)), &[]).is_ok());
        assert!(Target::time("2026-12-01 10:30").unwrap_err().to_string().contains("has no zone"));
    }

    /// A site that records the steps the driver takes, and fails where told.
    struct Recorded {
        stack: crate::stack::Stack,
        steps: std::cell::RefCell<Vec<&'static str>>,
        restore_fails: bool,
        revert_fails: bool,
        finish_fails: bool,
        left_over: bool,
        earlier: Option<Interrupted>,
    }

    impl Recorded {
        fn new() -> Self {
            let stack = crate::stack::load(&crate::stack::Source::new("pgnomad.hcl", "cluster \"main\" {}\n")).unwrap().stack;
            Recorded {
                stack,
                steps: Default::default(),
                restore_fails: false,
                revert_fails: false,
                finish_fails: false,
                left_over: false,
                earlier: None,
            }
        }
        fn steps(&self) -> Vec<&'static str> {
            self.steps.borrow().clone()
        }
    }

    impl InPlaceSite for Recorded {
        fn cluster(&self) -> &str {
            "main"
        }
        fn stack(&self) -> &crate::stack::Stack {
            &self.stack
        }
        fn leftovers(&self) -> Result<(), OpsError> {
            if self.left_over {
                return Err(OpsError::Refused("an earlier in-place restore left pre-restore data".into()));
            }
            Ok(())
        }
        fn archive_and_list(&self, _: Duration, _: &dyn Reporter) -> Result<backup::Backups, OpsError> {
            self.steps.borrow_mut().push("archive");
            Ok(backup::Backups {
                stanza: "main".into(),
                status: "ok".into(),
                cipher: "none".into(),
                backups: Vec::new(),
                window: Some(window(true)),
            })
        }
        fn stop(&mut self, _: Instant, _: &dyn Reporter) -> Result<(), OpsError> {
            self.steps.borrow_mut().push("stop");
            Ok(())
        }
        fn restore(&mut self, _: &Target, _: Instant, _: &dyn Reporter) -> Result<RestoredLeader, OpsError> {
            self.steps.borrow_mut().push("restore");
            if self.restore_fails {
                return Err(OpsError::TimedOut { what: "the restored cluster".into(), after: Duration::from_secs(7) });
            }
            Ok(RestoredLeader { leader: "member-1".into(), timeline: Some(4) })
        }
        fn finish(&mut self, _: Instant, _: &dyn Reporter) -> Result<(), OpsError> {
            self.steps.borrow_mut().push("finish");
            if self.finish_fails {
                return Err(OpsError::Failed("disk gone".into()));
            }
            Ok(())
        }
        fn revert(&mut self, _: Instant, _: &dyn Reporter) -> Result<(), OpsError> {
            self.steps.borrow_mut().push("revert");
            if self.revert_fails {
                return Err(OpsError::Failed("member-0 did not come back".into()));
            }
            Ok(())
        }
        fn interrupted(&mut self) -> Result<Option<Interrupted>, OpsError> {
            Ok(self.earlier.clone())
        }
        fn leader(&self) -> Result<RestoredLeader, OpsError> {
            self.steps.borrow_mut().push("leader");
            Ok(RestoredLeader { leader: "member-2".into(), timeline: Some(4) })
        }
        fn kept(&self) -> String {
            "the aside place".into()
        }
        fn logs(&self) -> String {
            "the logs".into()
        }
        fn unfinished_help(&self) -> String {
            "remove it by hand".into()
        }
        fn put_back_help(&self) -> String {
            "move it back by hand".into()
        }
    }

    #[test]
    fn an_in_place_restore_finishes_when_it_succeeds_reverts_when_it_fails_and_stops_nothing_when_refused() {
        let quiet = crate::dev::Quiet;
        let inside = Target::time("2026-12-01T10:30:00Z").unwrap();
        let mut site = Recorded::new();
        let done = restore_in_place(&mut site, &inside, Duration::from_secs(60), &quiet).unwrap();
        assert_eq!(site.steps(), ["archive", "stop", "restore", "finish"]);
        assert_eq!((done.leader.as_str(), done.timeline), ("member-1", Some(4)));

        let mut site = Recorded { restore_fails: true, ..Recorded::new() };
        let error = restore_in_place(&mut site, &inside, Duration::from_secs(60), &quiet).unwrap_err();
        assert_eq!(site.steps(), ["archive", "stop", "restore", "revert"]);
        assert!(error.is_not_converged(), "exit 3: {error}");
        let text = error.to_string();
        assert!(text.starts_with("the in-place restore failed: timed out after 7 s waiting for the restored cluster"), "{text}");
        assert!(text.contains("main runs again on its pre-restore data, unchanged (kept in the aside place while it ran)"), "{text}");
        assert!(text.contains("help: Patroni's logs say why: the logs"), "{text}");

        let mut site = Recorded { restore_fails: true, revert_fails: true, ..Recorded::new() };
        let error = restore_in_place(&mut site, &inside, Duration::from_secs(60), &quiet).unwrap_err().to_string();
        assert!(error.contains("and putting the pre-restore data back did not finish: member-0 did not come back"), "{error}");
        assert!(!error.contains("runs again"), "{error}");
        assert!(error.contains("the pre-restore data is in the aside place, or back in place where the revert got that far"), "{error}");
        assert!(error.contains("do not run `restore --in-place` again before it is back\n  = help: move it back by hand"), "{error}");

        // The restore succeeded and only the removal failed: it says so, and where the data is.
        let mut site = Recorded { finish_fails: true, ..Recorded::new() };
        let error = restore_in_place(&mut site, &inside, Duration::from_secs(60), &quiet).unwrap_err();
        assert_eq!(site.steps(), ["archive", "stop", "restore", "finish"]);
        let text = error.to_string();
        assert!(
            text.starts_with(
                "the restore succeeded (member-1 leads on timeline 4), but removing the pre-restore data did not finish: disk gone"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "main runs on the restored data; the pre-restore data not yet removed is in the aside place\n  = help: remove it by hand"
            ),
            "{text}"
        );

        // Refused before anything stops: outside the window, data left by an earlier
        // restore, a stack still bootstrapping from a repository, no repository at all.
        let outside = Target::time("2026-12-01T09:00:00Z").unwrap();
        let mut site = Recorded::new();
        assert!(restore_in_place(&mut site, &outside, Duration::from_secs(60), &quiet).unwrap_err().is_refusal());
        assert_eq!(site.steps(), ["archive"]);
        let mut site = Recorded { left_over: true, ..Recorded::new() };
        assert!(restore_in_place(&mut site, &inside, Duration::from_secs(60), &quiet).unwrap_err().is_refusal());
        assert!(site.steps().is_empty());
        let mut site = Recorded::new();
        site.stack.restore = Some(in_place_block("main", &inside));
        let error = restore_in_place(&mut site, &inside, Duration::from_secs(60), &quiet).unwrap_err();
        assert!(error.is_refusal() && error.to_string().contains("still has the `restore { … }` block"), "{error}");
        let mut site = Recorded::new();
        site.stack.backup.enabled = false;
        assert!(restore_in_place(&mut site, &inside, Duration::from_secs(60), &quiet).unwrap_err().is_refusal());
        assert!(site.steps().is_empty());
    }

    #[test]
    fn an_interrupted_in_place_restore_resumes_from_its_phase_for_the_same_target_only() {
        let quiet = crate::dev::Quiet;
        let to = Target::time("2026-12-01T10:30:00.5+01:00").unwrap();
        let earlier = |mode| Interrupted { attempt: "1765000000".into(), mode, target: "to_time 2026-12-01 09:30:00.500000+00".into() };
        assert_eq!(to.describe(), earlier(RestoreMode::Prepare).target, "the same instant, however written");

        // Prepare: the restore waited for again, then finished; nothing archived or stopped
        // (the cluster is down, the window was checked when it began).
        let mut site = Recorded { earlier: Some(earlier(RestoreMode::Prepare)), ..Recorded::new() };
        let done = restore_in_place(&mut site, &to, Duration::from_secs(60), &quiet).unwrap();
        assert_eq!(site.steps(), ["restore", "finish"]);
        assert_eq!((done.resumed.as_deref(), done.window.is_none()), (Some("1765000000"), true));
        // ...or reverted if it fails.
        let mut site = Recorded { earlier: Some(earlier(RestoreMode::Prepare)), restore_fails: true, ..Recorded::new() };
        assert!(restore_in_place(&mut site, &to, Duration::from_secs(60), &quiet).unwrap_err().is_not_converged());
        assert_eq!(site.steps(), ["restore", "revert"]);

        // Finish: carried to its end; the leader read before and after (its switchover).
        let mut site = Recorded { earlier: Some(earlier(RestoreMode::Finish)), ..Recorded::new() };
        let done = restore_in_place(&mut site, &to, Duration::from_secs(60), &quiet).unwrap();
        assert_eq!(site.steps(), ["leader", "finish", "leader"]);
        assert_eq!(done.leader, "member-2");

        // Revert: carried to its end, and still a failed restore (exit 3).
        let mut site = Recorded { earlier: Some(earlier(RestoreMode::Revert)), ..Recorded::new() };
        let error = restore_in_place(&mut site, &to, Duration::from_secs(60), &quiet).unwrap_err();
        assert_eq!(site.steps(), ["revert"]);
        assert!(error.is_not_converged() && error.to_string().contains("main runs again on its pre-restore data"), "{error}");

        // Another target: refused, nothing done; the earlier one is named.
        let other = Target::Xid("7420".into());
        let mut site = Recorded { earlier: Some(earlier(RestoreMode::Prepare)), ..Recorded::new() };
        let error = restore_in_place(&mut site, &other, Duration::from_secs(60), &quiet).unwrap_err();
        assert!(error.is_refusal(), "{error}");
        let text = error.to_string();
        assert!(text.contains("(to_time 2026-12-01 09:30:00.500000+00, attempt 1765000000) stopped part-way, in its prepare phase, and this one asks for to_xid 7420"), "{text}");
        assert!(site.steps().is_empty());
    }

    #[test]
    fn the_clone_stack_is_the_source_renamed_with_a_restore_block() {
        let source = "# mine\ncluster \"main\" {\n  datacenters = [\"dc1\"]\n}\npostgres {\n  members = 3\n}\n";
        let target = Target::time("2026-12-01T10:42:07.25Z").unwrap();
        let text = clone_stack_text(source, "main", "clone", &target).unwrap();
        assert!(text.starts_with("# mine\ncluster \"clone\" {\n  datacenters"), "{text}");
        assert!(text.ends_with("restore {\n  from    = \"main\"\n  to_time = \"2026-12-01 10:42:07.250000+00\"\n}\n"), "{text}");
        let checked = crate::stack::load(&crate::stack::Source::new("clone.hcl", text)).unwrap();
        let restore = checked.stack.restore.unwrap();
        assert_eq!(restore.from.value, "main");
        assert!(
            matches!(restore.target, crate::stack::RestoreTarget::Time { micros, .. } if micros == parse_timestamp("2026-12-01T10:42:07.25Z").unwrap())
        );
        assert!(clone_stack_text("cluster \"other\" {}\n", "main", "clone", &target).is_err());
    }
}
