//! `<c>-postgres`: one task group per Patroni member.
//!
//! One group per member (not one group with count N) because Nomad's `update` block cannot
//! order groups: pgnomad rolls replicas first and the primary last, after a switchover.

use std::collections::BTreeMap;

use crate::config::runtime::names;
use crate::config::{ConfigError, MemberFacts, Runtime};
use crate::nomad::job::*;
use crate::stack::{Repo, Storage, VolumeKind};

use super::common::*;

pub fn job(cx: &Context<'_>) -> Result<Job, ConfigError> {
    let stack = cx.stack;
    let mut job = cx.job(names::postgres_job(cx.cluster()), "service");
    let mut constraints = job.constraints.take().unwrap_or_default();
    if stack.postgres.distinct_hosts {
        // Job-wide, so it holds across the member groups: two members on one host would
        // make one host failure cost two copies of the data.
        constraints.push(Constraint::distinct_hosts());
    }
    job.constraints = non_empty(constraints);
    if let Some(attribute) = &stack.postgres.spread_attribute {
        job.spreads = Some(vec![Spread { attribute: Some(attribute.clone()), weight: Some(100) }]);
    }
    // A restored cluster's first member is healthy only once its bootstrap has restored the
    // source's backups and replayed WAL to the target, and its replicas once they have copied
    // that data: as long as the restore, which ten minutes do not bound. `run --timeout` still
    // bounds what pgnomad waits for.
    let (healthy_deadline, progress_deadline) = if stack.restore.is_some() { (12 * 3600, 12 * 3600 + 300) } else { (600, 900) };
    job.update = Some(UpdateStrategy {
        max_parallel: Some(1),
        health_check: some("checks"),
        min_healthy_time: Some(Nanos::secs(10)),
        healthy_deadline: Some(Nanos::secs(healthy_deadline)),
        progress_deadline: Some(Nanos::secs(progress_deadline)),
        // Reverting a database server under load is a decision for a person.
        auto_revert: Some(false),
        canary: Some(0),
    });
    job.task_groups = Some(cx.facts.members.iter().map(|m| member_group(cx, m)).collect::<Result<_, _>>()?);
    Ok(job)
}

fn member_group(cx: &Context<'_>, member: &MemberFacts) -> Result<TaskGroup, ConfigError> {
    let stack = cx.stack;
    let c = cx.cluster();
    let job_id = names::postgres_job(c);
    let holes = cx.runtime.member(cx.facts, member);
    let backup = stack.backup.enabled;

    let mut ports = vec![port("pg", stack.postgres.port.value), port("patroni", stack.patroni.port.value)];
    if backup {
        ports.push(port("pgbackrest", stack.backup.tls_port.value));
    }
    if stack.monitoring.postgres_exporter {
        ports.push(port("exporter", stack.monitoring.port.value));
    }

    let mut volumes = BTreeMap::from([("data".to_owned(), data_volume(cx, member))]);
    let mut mounts = vec![volume_mount("data", names::DATA_MOUNT)];
    // A member mounts the repository only when it is declared as shared storage; otherwise
    // it archives to the repository host over TLS.
    if let (true, Repo::Volume { source, kind, shared: true, .. }) = (backup, &stack.backup.repo) {
        volumes.insert("repo".into(), repo_volume(source, *kind));
        mounts.push(volume_mount("repo", names::REPO_MOUNT));
    }

    let member_meta = BTreeMap::from([("member".to_owned(), member.name.clone())]);
    let with_meta = |mut s: Service| {
        s.meta = Some(member_meta.clone());
        s
    };
    // Only `/health` (Postgres up, whatever its role) counts for deployment health; the
    // role checks pass on one member or on the others, so they are readiness only.
    let mut services = vec![
        with_meta(service(names::postgres_service(c), "pg", vec![http_check("postgres running", "/health", "patroni")])),
        with_meta(Service {
            tags: Some(vec!["primary".into()]),
            on_update: some("ignore"),
            ..service(names::primary_service(c), "pg", vec![http_check("patroni primary", "/primary", "patroni")])
        }),
        with_meta(Service {
            tags: Some(vec!["replica".into()]),
            on_update: some("ignore"),
            ..service(names::replica_service(c), "pg", vec![http_check("patroni replica", "/replica", "patroni")])
        }),
        with_meta(service(names::patroni_service(c), "patroni", vec![http_check("patroni alive", "/liveness", "patroni")])),
    ];
    if backup {
        // Tagged with the member so that `member-N.<c>-pgbackrest.service.consul` names it:
        // the name on the TLS server's certificate.
        services.push(with_meta(Service {
            tags: Some(vec![member.name.clone()]),
            ..service(names::pgbackrest_service(c), "pgbackrest", vec![tcp_check("pgbackrest server", "pgbackrest")])
        }));
    }
    if stack.monitoring.postgres_exporter {
        services.push(with_meta(service(
            names::exporter_service(c),
            "exporter",
            vec![http_check("exporter metrics", "/metrics", "exporter")],
        )));
    }

    let secrets_file = |name: &str| format!("secrets/{name}");
    let mut patroni = cx.program_task("patroni", "patroni", vec!["/secrets/patroni.yml".into()], &["pg", "patroni"]);
    patroni.resources = Some(resources(stack.postgres.cpu, stack.postgres.memory_mb));
    // Patroni stops Postgres and hands over the leader key on SIGTERM; give it time to do
    // both before Nomad kills it (no more than the clients' max_kill_timeout, checked).
    patroni.kill_timeout = Some(Nanos::secs(u64::from(stack.patroni.kill_timeout.value)));
    patroni.kill_signal = some("SIGTERM");
    patroni.volume_mounts = Some(mounts.clone());
    let mut templates = vec![
        cx.pack_template("postgres/patroni.yml", Some(member), &holes, &secrets_file("patroni.yml"), Change::Reload)?,
        cx.pack_template("postgres/bootstrap.sql", Some(member), &holes, &secrets_file("bootstrap.sql"), Change::Noop)?,
        exec_template(cx.pack_template(
            "postgres/on-role-change.sh",
            Some(member),
            &holes,
            &secrets_file("on-role-change.sh"),
            Change::Noop,
        )?),
    ];
    if backup {
        templates.push(cx.pack_template(
            "postgres/pgbackrest.conf",
            Some(member),
            &holes,
            &secrets_file("pgbackrest.conf"),
            Change::Noop,
        )?);
        templates.extend(cx.tls_templates(&job_id, "tls_server"));
        if cx.facts.backup.repo_host {
            templates.extend(cx.tls_client_templates(&job_id));
        }
        if cx.facts.restore.is_some() {
            // Patroni's bootstrap restores the source's backups with this file; the clone's
            // own pgbackrest.conf archives into its own stanza.
            templates.push(cx.pack_template("backup/restore.conf", Some(member), &holes, &secrets_file("restore.conf"), Change::Noop)?);
            if cx.facts.backup.repo_host {
                templates.extend(
                    [
                        ("restore_tls_ca_crt", "secrets/tls/restore-ca.crt"),
                        ("restore_tls_client_crt", "secrets/tls/restore-client.crt"),
                        ("restore_tls_client_key", "secrets/tls/restore-client.key"),
                    ]
                    .into_iter()
                    .map(|(key, dest)| template(cx.runtime.secret_expr(&job_id, key), dest, Change::Noop)),
                );
            }
        }
    }
    if cx.facts.client_tls.postgres {
        templates.extend(sql_tls_templates(cx, &job_id));
    }
    patroni.templates = Some(templates);

    let mut tasks = vec![patroni];
    if let Some(prepare) = prepare_volumes_task(cx, &mounts) {
        tasks.insert(0, prepare);
    }
    if backup {
        // pgBackRest's TLS server lets the periodic backup jobs reach this member's data
        // without SSH; it runs beside Patroni for the life of the member.
        let mut server =
            cx.program_task("pgbackrest", "pgbackrest", vec!["--config=/secrets/pgbackrest.conf".into(), "server".into()], &["pgbackrest"]);
        server.lifecycle = Some(TaskLifecycle { hook: some("poststart"), sidecar: Some(true) });
        server.resources = Some(resources(100, 128));
        server.volume_mounts = Some(mounts.clone());
        // The server reads only its tls-server settings, which change with the job, never
        // at run time: a repository host moving (its port re-rendered into this file) must
        // not restart every member's server, and a backup running through it.
        let server_change = if cx.facts.backup.repo_host { Change::Noop } else { Change::Restart };
        let mut templates =
            vec![cx.pack_template("postgres/pgbackrest.conf", Some(member), &holes, &secrets_file("pgbackrest.conf"), server_change)?];
        templates.extend(cx.tls_templates(&job_id, "tls_server"));
        server.templates = Some(templates);
        tasks.push(server);
    }
    if stack.monitoring.postgres_exporter {
        tasks.push(exporter_task(cx, &job_id));
    }
    for task in &mut tasks {
        finish_task(task, cx.postgres_owner());
    }

    Ok(TaskGroup {
        name: Some(member.name.clone()),
        count: Some(1),
        tasks: Some(tasks),
        volumes: Some(volumes),
        networks: Some(vec![bridge(ports)]),
        services: Some(services),
        meta: Some(member_meta),
        // Services are deregistered this long before Patroni gets SIGTERM: a primary that is
        // stopped leaves Consul first, and PgBouncer (template wait ≤ 2 s) and the backup jobs
        // stop sending to it before Postgres goes down.
        shutdown_delay: Some(Nanos::secs(5)),
        // A member whose node stops heartbeating is not replaced elsewhere: its data is on
        // that node's volume, and Patroni already fails over to a member that has its own.
        // Only after an hour is the allocation lost and rescheduled.
        disconnect: Some(node_bound_disconnect()),
        // Restart in place first: the member's data is on this node.
        restart_policy: Some(restart_in_place()),
        reschedule_policy: Some(ReschedulePolicy {
            unlimited: Some(true),
            delay_function: some("exponential"),
            delay: Some(Nanos::secs(30)),
            max_delay: Some(Nanos::secs(600)),
            attempts: None,
            interval: None,
        }),
        ..TaskGroup::default()
    })
}

/// A fresh CSI or host volume is owned by root, and Postgres runs as `postgres` and refuses
/// a data directory it does not own: a short prestart task hands the mounts over. With the
/// exec drivers Nomad refuses root tasks by default, so there the volumes must be prepared
/// with the right owner (see the README).
pub fn prepare_volumes_task(cx: &Context<'_>, mounts: &[VolumeMount]) -> Option<Task> {
    if !matches!(cx.stack.postgres.driver, crate::stack::Driver::Docker { .. }) {
        return None;
    }
    let paths: Vec<&str> = mounts.iter().filter_map(|m| m.destination.as_deref()).collect();
    let script = format!("chown postgres:postgres {0} && chmod 0700 {0}", paths.join(" "));
    let mut task = cx.program_task("prepare-volumes", "sh", vec!["-c".into(), script], &[]);
    task.user = some("root");
    task.lifecycle = Some(TaskLifecycle { hook: some("prestart"), sidecar: Some(false) });
    task.resources = Some(resources(50, 32));
    task.volume_mounts = Some(mounts.to_vec());
    Some(task)
}

/// The certificate and key Postgres (and PgBouncer) present to SQL clients with `tls = true`.
pub fn sql_tls_templates(cx: &Context<'_>, job: &str) -> Vec<Template> {
    [("tls_sql_crt", "secrets/tls/sql.crt"), ("tls_sql_key", "secrets/tls/sql.key")]
        .into_iter()
        .map(|(key, dest)| template(cx.runtime.secret_expr(job, key), dest, Change::Restart))
        .collect()
}

fn exec_template(mut template: Template) -> Template {
    template.perms = some("0755");
    template
}

fn data_volume(cx: &Context<'_>, member: &MemberFacts) -> VolumeRequest {
    match &cx.stack.storage {
        Storage::Csi(csi) => VolumeRequest {
            name: some("data"),
            volume_type: some("csi"),
            source: Some(super::volumes::member_volume_id(cx.cluster(), member.index)),
            read_only: Some(false),
            access_mode: Some(csi.access_mode.clone()),
            attachment_mode: Some(csi.attachment_mode.clone()),
            per_alloc: Some(false),
            mount_options: None,
        },
        Storage::Host { volume_prefix } => VolumeRequest {
            name: some("data"),
            volume_type: some("host"),
            source: Some(format!("{volume_prefix}{}", member.index)),
            read_only: Some(false),
            ..VolumeRequest::default()
        },
    }
}

/// The pgBackRest repository volume: the repository host's and the backup jobs' (on its one
/// node), or with `shared = true` every member's too.
pub fn repo_volume(source: &str, kind: VolumeKind) -> VolumeRequest {
    match kind {
        VolumeKind::Csi => VolumeRequest {
            name: some("repo"),
            volume_type: some("csi"),
            source: some(source),
            read_only: Some(false),
            access_mode: some("multi-node-multi-writer"),
            attachment_mode: some("file-system"),
            ..VolumeRequest::default()
        },
        VolumeKind::Host => VolumeRequest {
            name: some("repo"),
            volume_type: some("host"),
            source: some(source),
            read_only: Some(false),
            ..VolumeRequest::default()
        },
    }
}

fn exporter_task(cx: &Context<'_>, job_id: &str) -> Task {
    let stack = cx.stack;
    let mut task = cx.program_task(
        "exporter",
        "prometheus-postgres-exporter",
        vec![format!("--web.listen-address=:{}", stack.monitoring.port.value)],
        &["exporter"],
    );
    task.lifecycle = Some(TaskLifecycle { hook: some("poststart"), sidecar: Some(true) });
    task.resources = Some(resources(50, 64));
    // Members share one network namespace per group, so Postgres is on localhost (pg_hba
    // admits the monitor role from there only). The password is a file, never an
    // environment variable: those show in `docker inspect` and Nomad's task environment.
    let password_file = "secrets/monitor_password";
    task.env = Some(BTreeMap::from([
        ("DATA_SOURCE_URI".to_owned(), format!("127.0.0.1:{}/postgres?sslmode=disable", stack.postgres.port.value)),
        ("DATA_SOURCE_USER".to_owned(), crate::config::facts::MONITOR_ROLE.to_owned()),
        ("DATA_SOURCE_PASS_FILE".to_owned(), format!("/{password_file}")),
    ]));
    task.templates = Some(vec![template(cx.runtime.secret_expr(job_id, "monitor_password"), password_file, Change::Restart)]);
    task
}
