//! Backups an operator can trust: one taken now (it says which member it read from), and
//! the repository's list from pgBackRest's own `info --output=json` with the window a
//! restore can reach — from the end of the oldest backup to the newest archived WAL.
//!
//! The list and the window are pure functions of pgBackRest's answer; the dev target runs
//! pgBackRest with the rendered configs (the same bytes the Nomad backup jobs run).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::OpsError;
use crate::dev::{patroni, Dev, Reporter};
use crate::pgbackrest::{self, Stanza};
use crate::stack::decode::format_timestamp;

/// One backup as `backups` shows it. Times are Unix seconds, with their UTC text beside.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BackupRow {
    pub label: String,
    /// `full`, `diff` or `incr`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The backup it depends on (none for a full backup).
    pub prior: Option<String>,
    pub start: i64,
    pub stop: i64,
    pub start_time: String,
    pub stop_time: String,
    /// The database's size at backup time, what this backup copied, and both in the
    /// repository (compressed).
    pub database_size: u64,
    pub delta: u64,
    pub repository_size: u64,
    pub repository_delta: u64,
    /// The WAL segments the backup needs to be consistent.
    pub wal_start: Option<String>,
    pub wal_stop: Option<String>,
}

/// What a restore can reach.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Window {
    /// The end of the oldest backup: no restore reaches earlier.
    pub oldest: i64,
    pub oldest_time: String,
    /// When the newest archived WAL segment was archived (its WAL is older; never before the
    /// newest backup's end), if the running primary could tell; otherwise the end of the
    /// newest backup, as a floor.
    pub newest: i64,
    pub newest_time: String,
    /// Whether `newest` is the archive's (true) or only the newest backup's end (false).
    pub newest_from_archive: bool,
    /// The oldest and newest WAL segment in the archive.
    pub wal_min: Option<String>,
    pub wal_max: Option<String>,
}

/// The repository's backups of one stanza.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Backups {
    pub stanza: String,
    /// pgBackRest's stanza status (`ok`, `no valid backups`, …).
    pub status: String,
    pub cipher: String,
    /// Oldest first.
    pub backups: Vec<BackupRow>,
    /// None while there is no backup.
    pub window: Option<Window>,
}

/// The list and the window of `stanza`; `archived_at` is when the newest WAL segment was
/// archived, from the running primary's `pg_stat_archiver` (Unix seconds).
pub fn backups(stanza: &Stanza, archived_at: Option<i64>) -> Backups {
    let rows: Vec<BackupRow> = stanza
        .backup
        .iter()
        .map(|b| BackupRow {
            label: b.label.clone(),
            kind: b.kind.clone(),
            prior: b.prior.clone(),
            start: b.timestamp.start,
            stop: b.timestamp.stop,
            start_time: seconds_text(b.timestamp.start),
            stop_time: seconds_text(b.timestamp.stop),
            database_size: b.info.size,
            delta: b.info.delta,
            repository_size: b.info.repository.size,
            repository_delta: b.info.repository.delta,
            wal_start: b.archive.start.clone(),
            wal_stop: b.archive.stop.clone(),
        })
        .collect();
    // The archive of the stanza's current database (the last entry), as restores read it.
    let archive = stanza.archive.last();
    let window = rows.iter().map(|r| r.stop).min().map(|oldest| {
        let newest_backup = rows.iter().map(|r| r.stop).max().unwrap_or(oldest);
        // A backup ends once its last WAL segment is archived: the archive reaches at least
        // the newest backup's end.
        let (newest, from_archive) = match archived_at {
            Some(at) => (at.max(newest_backup), true),
            None => (newest_backup, false),
        };
        Window {
            oldest,
            oldest_time: seconds_text(oldest),
            newest,
            newest_time: seconds_text(newest),
            newest_from_archive: from_archive,
            wal_min: archive.and_then(|a| a.min.clone()),
            wal_max: archive.and_then(|a| a.max.clone()),
        }
    });
    Backups { stanza: stanza.name.clone(), status: stanza.status.message.clone(), cipher: stanza.cipher.clone(), backups: rows, window }
}

fn seconds_text(seconds: i64) -> String {
    let text = format_timestamp(seconds * 1_000_000);
    // Whole seconds: pgBackRest's timestamps have no fraction.
    text.replace(".000000+00", "+00")
}

/// A pgBackRest failure as the operator should read it: what it means and what to do.
pub fn explain_failure(what: &str, output: &str) -> OpsError {
    let output = output.trim();
    let has = |needle: &str| output.contains(needle);
    if has("LockAcquireError") || has("unable to acquire lock") || has("[050]") {
        OpsError::Refused(format!(
            "{what}: another backup of this stanza is running (pgBackRest holds its lock)\n  = help: wait for it to end (`pgnomad dev backups` lists it once done), then run this one again\n{output}"
        ))
    } else if has("ArchiveMismatchError")
        || has("BackupMismatchError")
        || has("[028]")
        || has("[051]")
        || has("do not match the database")
        // Info files that do not decrypt with this cluster's cipher pass: another cluster's.
        || (has("unable to load info file") && (has("CryptoError") || has("FormatError")))
    {
        OpsError::Refused(format!(
            "{what}: the stanza in the repository belongs to another database or cipher pass (a cluster made afresh under the name of an old one, or a clone pointed at its source)\n  = help: give the cluster its own stanza or repository path; never point a new cluster at another's stanza\n{output}"
        ))
    } else if has("HostConnectError") || has("unable to connect") || has("[039]") || has("PathOpenError") || has("FileOpenError") {
        OpsError::Unreachable(format!(
            "{what}: the repository is unreachable\n  = help: check the repository (its path, host or bucket, its credentials), then retry\n{output}"
        ))
    } else {
        OpsError::Failed(format!("{what} failed:\n{output}"))
    }
}

/// Where the dev stack's backups are: the backup job's rendered pgbackrest.conf.
fn dev_backup_config(dev: &Dev) -> PathBuf {
    dev.state.config_dir("backup-full").join("pgbackrest.conf")
}

/// `pgbackrest info --output=json` of the dev stack's stanza, decoded.
pub fn dev_info(dev: &Dev) -> Result<Stanza, OpsError> {
    let out = dev
        .user
        .command("pgbackrest")
        .arg(format!("--config={}", dev_backup_config(dev).display()))
        .arg(format!("--stanza={}", dev.facts.scope))
        .args(["--output=json", "info"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| OpsError::Setup(format!("cannot run pgbackrest: {e} (apt-get install pgbackrest)")))?;
    if !out.status.success() {
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        return Err(explain_failure("pgbackrest info", &text));
    }
    let info = pgbackrest::parse_info(&out.stdout).map_err(|e| OpsError::Failed(e.to_string()))?;
    let stanza = info
        .into_iter()
        .find(|s| s.name == dev.facts.scope)
        .ok_or_else(|| OpsError::Failed(format!("pgbackrest info lists no stanza {}", dev.facts.scope)))?;
    match stanza.status.code {
        // 0 ok, 2 no valid backups: the stanza is there.
        0 | 2 => Ok(stanza),
        1 | 3 => Err(OpsError::Unreachable(format!(
            "the repository {} has no stanza {} ({}): the repository is unreachable or not this cluster's\n  = help: start the stack (`pgnomad dev up` creates the stanza) or check the repository path",
            dev_repo_path(dev).display(),
            dev.facts.scope,
            stanza.status.message
        ))),
        4 | 5 => Err(OpsError::Refused(format!(
            "the stanza {} in {} does not match this cluster ({}): the stanza in the repository belongs to another database or cipher\n  = help: a cluster made afresh under an old name must not reuse the old stanza: remove the old repository or restore into a new name",
            dev.facts.scope,
            dev_repo_path(dev).display(),
            stanza.status.message
        ))),
        _ => Err(OpsError::Unreachable(format!(
            "the repository {} is unreachable: {}\n  = help: check that the repository's directory exists and the members' user can read it, then retry",
            dev_repo_path(dev).display(),
            repo_messages(&stanza)
        ))),
    }
}

/// pgBackRest's own words for each repository of a stanza it could not read.
fn repo_messages(stanza: &Stanza) -> String {
    let messages: Vec<&str> = stanza.repo.iter().map(|r| r.status.message.as_str()).filter(|m| !m.is_empty()).collect();
    if messages.is_empty() {
        stanza.status.message.clone()
    } else {
        messages.join("; ")
    }
}

fn dev_repo_path(dev: &Dev) -> PathBuf {
    dev.state.root.join("repo")
}

/// The leader's index and, when it answers, when its newest WAL segment was archived.
pub fn dev_archived_at(dev: &Dev) -> (Option<usize>, Option<i64>) {
    let leader = (0..dev.member_count())
        .find_map(|i| patroni::cluster(&dev.rest_address(i)))
        .and_then(|c| c.leader().map(|l| l.name.clone()))
        .and_then(|name| dev.member_index(&name));
    let at = leader
        .and_then(|i| dev.member_query(i, "SELECT coalesce(extract(epoch FROM last_archived_time)::bigint, 0) FROM pg_stat_archiver"))
        .and_then(|t| t.parse::<i64>().ok())
        .filter(|&t| t > 0);
    (leader, at)
}

/// `backups` of the dev stack.
pub fn dev_backups(dev: &Dev) -> Result<Backups, OpsError> {
    let stanza = dev_info(dev)?;
    Ok(backups(&stanza, dev_archived_at(dev).1))
}

impl BackupDone {
    /// `backup` as pgBackRest's info lists it, with what the run itself knows.
    pub fn of(backup: &crate::pgbackrest::Backup, copied_from: String, primary: String, took: Duration, log: String) -> BackupDone {
        BackupDone {
            label: backup.label.clone(),
            kind: backup.kind.clone(),
            copied_from,
            primary,
            took,
            database_size: backup.info.size,
            repository_size: backup.info.repository.size,
            log,
        }
    }
}

/// A backup that was taken.
#[derive(Debug, Clone, Serialize)]
pub struct BackupDone {
    pub label: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The member whose files were copied (a standby with `from_standby`), and the primary
    /// the backup started and stopped on.
    pub copied_from: String,
    pub primary: String,
    #[serde(serialize_with = "super::seconds")]
    pub took: Duration,
    pub database_size: u64,
    pub repository_size: u64,
    /// What backup.sh and pgBackRest wrote.
    #[serde(skip)]
    pub log: String,
}

/// An exclusive hold on the dev stack's backups, released on drop: pgBackRest's own lock is
/// per lock directory, and the dev backup kinds have one each.
struct BackupLock {
    _file: std::fs::File,
}

impl BackupLock {
    fn take(path: &Path) -> Result<BackupLock, OpsError> {
        use std::io::{Read, Seek, Write};
        use std::os::fd::AsRawFd;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| OpsError::Setup(format!("open {}: {e}", path.display())))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(OpsError::Refused(format!(
                "another backup of this stack is running ({})\n  = help: wait for it to end, then run this one again",
                holder.trim()
            )));
        }
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "pid {}", std::process::id());
        Ok(BackupLock { _file: file })
    }
}

/// The member a backup copies its files from: with `from_standby`, pgBackRest's
/// backup-standby takes the first standby in its pg1…pgN `order`; otherwise the primary.
pub fn copied_from(order: &[String], primary: &str, standbys: &[String], from_standby: bool) -> Result<String, OpsError> {
    if !from_standby {
        return Ok(primary.to_owned());
    }
    order.iter().find(|m| *m != primary && standbys.contains(m)).cloned().ok_or_else(|| {
        OpsError::Refused(format!(
            "backups are taken from a standby (backup.from_standby), and no standby runs now (primary {primary})\n  = help: wait for a replica to stream (`pgnomad status`, `pgnomad dev status`), or set from_standby = false"
        ))
    })
}

/// Takes one backup of the dev stack now with the rendered backup.sh, whichever member is
/// primary, and says which member it read from.
pub fn dev_backup(dev: &Dev, kind: &str, reporter: &dyn Reporter) -> Result<BackupDone, OpsError> {
    if !["full", "diff", "incr"].contains(&kind) {
        return Err(OpsError::Refused(format!("no backup type `{kind}`: full, diff or incr")));
    }
    let _lock = BackupLock::take(&dev.state.root.join("backup.lock"))?;
    let cluster = (0..dev.member_count())
        .find_map(|i| patroni::cluster(&dev.rest_address(i)))
        .ok_or_else(|| OpsError::Unreachable("no member's REST API answers: is the stack up? (`pgnomad dev up`)".into()))?;
    let primary = cluster.leader().map(|l| l.name.clone()).ok_or_else(|| OpsError::Refused("the cluster has no leader now".into()))?;
    let order: Vec<String> = dev.facts.members.iter().map(|m| m.name.clone()).collect();
    let standbys: Vec<String> =
        cluster.members.iter().filter(|m| m.state == "running" && m.role != "leader").map(|m| m.name.clone()).collect();
    let copied_from = copied_from(&order, &primary, &standbys, dev.stack.backup.from_standby && dev.member_count() > 1)?;
    reporter.step(&format!("{kind} backup of {}: files from {copied_from}, started and stopped on primary {primary}", dev.facts.scope));
    let before: Vec<String> = dev_info(dev).map(|s| s.backup.into_iter().map(|b| b.label).collect()).unwrap_or_default();
    let started = Instant::now();
    let script = dev.state.config_dir(&format!("backup-{kind}")).join("backup.sh");
    let out = dev
        .user
        .command("bash")
        .arg(&script)
        .arg(kind)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| OpsError::Setup(format!("cannot run {}: {e}", script.display())))?;
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        let what = format!("{kind} backup of {}", dev.facts.scope);
        // pgBackRest's words for a primary that went away mid-backup are its protocol's
        // ("NULL result required to complete request"): say what happened instead.
        let leader_now =
            (0..dev.member_count()).find_map(|i| patroni::cluster(&dev.rest_address(i))).and_then(|c| c.leader().map(|l| l.name.clone()));
        let still_primary =
            dev.member_index(&primary).and_then(|i| dev.member_query(i, "SELECT pg_is_in_recovery()")).as_deref() == Some("f");
        if leader_now.as_deref() != Some(primary.as_str()) || !still_primary {
            return Err(OpsError::Failed(format!(
                "{what}: the primary was lost during the backup ({primary} was primary when it started; {}): the backup did not complete and is not listed\n  = help: run the backup again once a primary runs (`pgnomad dev status`); pgBackRest resumes or discards the incomplete one\n{}",
                match (&leader_now, still_primary) {
                    (Some(now), _) if *now != primary => format!("{now} is leader now"),
                    _ => format!("{primary} does not answer as primary now"),
                },
                log.trim()
            )));
        }
        return Err(explain_failure(&what, &log));
    }
    let took = started.elapsed();
    let stanza = dev_info(dev)?;
    let new =
        stanza.backup.iter().filter(|b| !before.contains(&b.label)).max_by_key(|b| b.timestamp.stop).ok_or_else(|| {
            OpsError::Failed(format!("backup.sh {kind} exited 0 but the repository lists no new backup:\n{}", log.trim()))
        })?;
    Ok(BackupDone::of(new, copied_from, primary, took, log))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_runs_from_the_oldest_backup_to_the_newest_archived_wal() {
        let info = pgbackrest::parse_info(include_bytes!("../../tests/pgbackrest-info/info-full-diff.json")).unwrap();
        let stanza = &info[0];
        let list = backups(stanza, None);
        assert_eq!(list.backups.iter().map(|b| b.kind.as_str()).collect::<Vec<_>>(), ["full", "diff"]);
        assert_eq!(list.backups[1].prior.as_deref(), Some(list.backups[0].label.as_str()));
        let window = list.window.clone().unwrap();
        assert_eq!(window.oldest, stanza.backup[0].timestamp.stop);
        // Without the primary's archiver, the newest point is the newest backup's end.
        assert_eq!((window.newest, window.newest_from_archive), (stanza.backup[1].timestamp.stop, false));
        assert_eq!(window.wal_max, stanza.archive[0].max);
        assert_eq!(window.oldest_time, seconds_text(window.oldest));
        let later = stanza.backup[1].timestamp.stop + 600;
        let window = backups(stanza, Some(later)).window.unwrap();
        assert_eq!((window.newest, window.newest_from_archive), (later, true));
    }

    #[test]
    fn a_stanza_without_backups_has_no_window() {
        let info = pgbackrest::parse_info(include_bytes!("../../tests/pgbackrest-info/info-missing-stanza.json")).unwrap();
        let list = backups(&info[0], Some(1_800_000_000));
        assert!(list.backups.is_empty() && list.window.is_none());
    }

    #[test]
    fn pgbackrest_failures_are_explained() {
        let lock = explain_failure("full backup of main", "ERROR: [050]: unable to acquire lock on file '/x/main-backup.lock'");
        assert!(lock.is_refusal() && lock.to_string().contains("another backup of this stanza is running"), "{lock}");
        let mismatch = explain_failure("stanza-create", "ERROR: [028]: backup and archive info files exist but do not match the database");
        assert!(mismatch.to_string().contains("belongs to another database"), "{mismatch}");
        let foreign = explain_failure("backup", "ERROR: [095]: unable to load info file 'archive.info':\n  CryptoError: unable to flush");
        assert!(foreign.is_refusal() && foreign.to_string().contains("another database or cipher pass"), "{foreign}");
        let unreachable = explain_failure("info", "ERROR: [039]: HostConnectError: unable to connect to 'repo:8432'");
        assert!(matches!(unreachable, OpsError::Unreachable(_)) && unreachable.to_string().contains("repository is unreachable"));
        assert_eq!(seconds_text(0), "1970-01-01 00:00:00+00");
    }
}
