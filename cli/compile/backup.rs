//! `<c>-backup-<kind>`: periodic pgBackRest backups. The job reaches the members' data
//! through pgBackRest's TLS server (a sidecar of each member) and takes the backup from a
//! standby when there is one, so the primary only streams WAL.

use std::collections::BTreeMap;

use crate::config::runtime::names;
use crate::config::{ConfigError, Runtime};
use crate::nomad::job::*;
use crate::stack::{Repo, Schedule};

use super::common::*;

pub fn job(cx: &Context<'_>, schedule: &Schedule) -> Result<Job, ConfigError> {
    let stack = cx.stack;
    let kind = schedule.kind.name();
    let mut job = pgbackrest_job(cx, kind, vec![kind.into()], restart_policy(2))?;
    job.periodic = Some(PeriodicConfig {
        enabled: Some(true),
        specs: Some(vec![schedule.cron.value.clone()]),
        spec_type: some("cron"),
        // A backup that outlasts its interval must not start a second one on the same stanza.
        prohibit_overlap: Some(true),
        time_zone: Some(stack.backup.time_zone.clone()),
    });
    Ok(job)
}

/// The meta key a dispatch of `<c>-backup-ctl` names its command with.
pub const COMMAND_META: &str = "command";

/// `<c>-backup-ctl`: the repository answering on demand. Each dispatch runs `backup.sh info`
/// (pgBackRest's JSON `info` on the task's stdout) or `backup.sh check` (a WAL switch, then a
/// wait for the archive), with the backup jobs' own config and certificates:
/// `nomad job dispatch -meta command=info main-backup-ctl`. It never restarts: whoever
/// dispatched it reads the one outcome.
pub fn ctl_job(cx: &Context<'_>) -> Result<Job, ConfigError> {
    let mut job = pgbackrest_job(cx, names::BACKUP_CTL, vec![format!("${{NOMAD_META_{COMMAND_META}}}")], restart_policy(0))?;
    job.parameterized_job =
        Some(ParameterizedJobConfig { payload: some("forbidden"), meta_required: Some(vec![COMMAND_META.into()]), meta_optional: None });
    Ok(job)
}

fn restart_policy(attempts: i64) -> RestartPolicy {
    RestartPolicy { attempts: Some(attempts), interval: Some(Nanos::secs(3600)), delay: Some(Nanos::secs(60)), mode: some("fail") }
}

/// A batch job `<c>-backup-<kind>` whose one task runs backup.sh with `args`.
fn pgbackrest_job(cx: &Context<'_>, kind: &str, args: Vec<String>, restart: RestartPolicy) -> Result<Job, ConfigError> {
    let stack = cx.stack;
    let job_id = names::backup_job(cx.cluster(), kind);
    let mut job = cx.job(job_id.clone(), "batch");
    let holes = cx.runtime.backup(cx.facts, kind);

    let mut command = vec!["/secrets/backup.sh".to_owned()];
    command.extend(args);
    let mut task = cx.program_task("backup", "bash", command, &[]);
    task.resources = Some(resources(500, 512));
    let mut templates = vec![
        cx.pack_template("backup/pgbackrest.conf", None, &holes, "secrets/pgbackrest.conf", Change::Noop)?,
        cx.pack_template("backup/backup.sh", None, &holes, "secrets/backup.sh", Change::Noop)?,
    ];
    templates.extend(cx.tls_templates(&job_id, "tls_client"));
    task.templates = Some(templates);
    finish_task(&mut task, cx.postgres_owner());

    let mut volumes = None;
    if let Repo::Volume { source, kind, .. } = &stack.backup.repo {
        volumes = Some(BTreeMap::from([("repo".to_owned(), super::postgres::repo_volume(source, *kind))]));
        task.volume_mounts = Some(vec![volume_mount("repo", names::REPO_MOUNT)]);
    }

    job.task_groups = Some(vec![TaskGroup {
        name: some("backup"),
        count: Some(1),
        volumes,
        restart_policy: Some(restart),
        reschedule_policy: Some(ReschedulePolicy { attempts: Some(0), unlimited: Some(false), ..ReschedulePolicy::default() }),
        tasks: Some(vec![task]),
        // A backup on a node that stops heartbeating keeps running: a second one started
        // meanwhile would only wait on pgBackRest's stanza lock.
        disconnect: Some(DisconnectStrategy {
            lost_after: Some(Nanos::secs(3600)),
            replace: Some(false),
            reconcile: some("keep_original"),
        }),
        ..TaskGroup::default()
    }]);
    Ok(job)
}
