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
    let job_id = names::backup_job(cx.cluster(), kind);
    let mut job = cx.job(job_id.clone(), "batch");
    job.periodic = Some(PeriodicConfig {
        enabled: Some(true),
        specs: Some(vec![schedule.cron.value.clone()]),
        spec_type: some("cron"),
        // A backup that outlasts its interval must not start a second one on the same stanza.
        prohibit_overlap: Some(true),
        time_zone: Some(stack.backup.time_zone.clone()),
    });
    let holes = cx.runtime.backup(cx.facts, kind);

    let mut task = cx.program_task("backup", "bash", vec!["/secrets/backup.sh".into(), kind.into()], &[]);
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
        restart_policy: Some(RestartPolicy {
            attempts: Some(2),
            interval: Some(Nanos::secs(3600)),
            delay: Some(Nanos::secs(60)),
            mode: some("fail"),
        }),
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
