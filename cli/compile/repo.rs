//! `<c>-repo`: the pgBackRest repository host, as Crunchy PGO has it. One allocation holds
//! the repository volume and runs pgBackRest's TLS server: every member archives WAL to it
//! (and creates the stanza through it on promotion) over mutual TLS, so the repository is
//! the same whichever host a member runs on. The periodic backup jobs mount the same host
//! volume beside it, on the one node that has it, and share its lock directory.

use std::collections::BTreeMap;

use crate::config::runtime::names;
use crate::config::ConfigError;
use crate::nomad::job::*;
use crate::stack::Repo;

use super::common::*;

pub fn job(cx: &Context<'_>) -> Result<Job, ConfigError> {
    let stack = cx.stack;
    let c = cx.cluster();
    let job_id = names::repo_job(c);
    let Repo::Volume { source, kind, .. } = &stack.backup.repo else {
        unreachable!("a repository host is only compiled for a volume repo")
    };
    let mut job = cx.job(job_id.clone(), "service");
    job.update = Some(UpdateStrategy {
        max_parallel: Some(1),
        health_check: some("checks"),
        min_healthy_time: Some(Nanos::secs(5)),
        healthy_deadline: Some(Nanos::secs(300)),
        progress_deadline: Some(Nanos::secs(600)),
        auto_revert: Some(false),
        canary: Some(0),
    });
    let holes = cx.runtime.repo(cx.facts);
    let mounts = vec![volume_mount("repo", names::REPO_MOUNT)];

    // The allocation ID goes into the lock directory on the volume and into the service's
    // meta: a backup job finds the same ID in both only beside this allocation. One file per
    // cluster: a restored clone's repository host may serve its own stanza from the same
    // host volume as its source's.
    let start = format!(
        "mkdir -p {lock} && printf '%s' \"$NOMAD_ALLOC_ID\" > {lock}/repo-host-{c} && exec pgbackrest --config=/secrets/pgbackrest.conf server",
        lock = names::REPO_LOCK_DIR,
        c = cx.cluster()
    );
    let mut server = cx.program_task("pgbackrest", "sh", vec!["-c".into(), start], &["pgbackrest"]);
    server.resources = Some(resources(200, 256));
    server.volume_mounts = Some(mounts.clone());
    let mut templates = vec![cx.pack_template("backup/repo.conf", None, &holes, "secrets/pgbackrest.conf", Change::Restart)?];
    templates.extend(cx.tls_templates(&job_id, "tls_server"));
    server.templates = Some(templates);

    let mut tasks = vec![server];
    if let Some(prepare) = super::postgres::prepare_volumes_task(cx, &mounts) {
        tasks.insert(0, prepare);
    }
    for task in &mut tasks {
        finish_task(task, cx.postgres_owner());
    }

    job.task_groups = Some(vec![TaskGroup {
        name: some("repo"),
        count: Some(1),
        tasks: Some(tasks),
        volumes: Some(BTreeMap::from([("repo".to_owned(), super::postgres::repo_volume(source, *kind))])),
        networks: Some(vec![bridge(vec![port("pgbackrest", stack.backup.tls_port.value)])]),
        services: Some(vec![Service {
            meta: Some(BTreeMap::from([("alloc".to_owned(), "${NOMAD_ALLOC_ID}".to_owned())])),
            ..service(names::repo_service(c), "pgbackrest", vec![tcp_check("pgbackrest repository", "pgbackrest")])
        }]),
        // Leaves Consul before the server stops, so members stop archiving to it first.
        shutdown_delay: Some(Nanos::secs(5)),
        // The repository is on this node's volume and nowhere else: a node that stops
        // heartbeating keeps the allocation (members keep WAL in pg_wal meanwhile).
        disconnect: Some(node_bound_disconnect()),
        restart_policy: Some(restart_in_place()),
        ..TaskGroup::default()
    }]);
    Ok(job)
}
