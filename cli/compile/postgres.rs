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
        if let Some(restore) = &cx.facts.restore {
            // Patroni's bootstrap restores the source's backups with this file; the clone's
            // own pgbackrest.conf archives into its own stanza.
            templates.push(cx.pack_template("backup/restore.conf", Some(member), &holes, &secrets_file("restore.conf"), Change::Noop)?);
            // In place, the members' own certificates reach their own repository host.
            if cx.facts.backup.repo_host && !restore.in_place {
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
    if let Some(phase) = cx.restore_phase {
        tasks.insert(0, restore_in_place_task(cx, member, phase, &holes, &mounts)?);
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
        // stopped leaves Consul first, and PgBouncer (rendered and reloaded at once) and the backup jobs
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

/// `restore --in-place`: one phase of it on the member's data volume, before Patroni starts
/// (packs/postgres/restore-in-place.sh). The member that empties the DCS gets Patroni's own
/// configuration, for `patronictl remove`.
fn restore_in_place_task(
    cx: &Context<'_>,
    member: &MemberFacts,
    phase: &super::RestorePhase,
    holes: &crate::config::Holes,
    mounts: &[VolumeMount],
) -> Result<Task, ConfigError> {
    let mut task = cx.program_task("restore-in-place", "bash", vec!["/local/restore-in-place.sh".into()], &[]);
    task.lifecycle = Some(TaskLifecycle { hook: some("prestart"), sidecar: Some(false) });
    task.resources = Some(resources(100, 128));
    task.volume_mounts = Some(mounts.to_vec());
    let wipe = phase.mode != super::RestoreMode::Finish && phase.wipe_member == member.name;
    let mut env = BTreeMap::from([
        ("PGNOMAD_RESTORE_ATTEMPT".to_owned(), phase.attempt.clone()),
        ("PGNOMAD_RESTORE_MODE".to_owned(), phase.mode.as_str().to_owned()),
        // Not read by the script: what a later run reads back to resume the restore.
        ("PGNOMAD_RESTORE_TARGET".to_owned(), phase.target.clone()),
    ]);
    if let Some(timeline) = phase.led_timeline {
        env.insert("PGNOMAD_RESTORE_LED_TIMELINE".into(), timeline.to_string());
    }
    let mut templates = vec![exec_template(cx.pack_template(
        "postgres/restore-in-place.sh",
        Some(member),
        holes,
        "local/restore-in-place.sh",
        Change::Noop,
    )?)];
    if wipe {
        env.insert("PGNOMAD_RESTORE_WIPE".into(), "1".into());
        templates.push(cx.pack_template("postgres/patroni.yml", Some(member), holes, "secrets/patroni.yml", Change::Noop)?);
    }
    task.env = Some(env);
    task.templates = Some(templates);
    Ok(task)
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

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use crate::compile::{compile_with_restore_phase, JobRole, RestoreMode, RestorePhase};
    use crate::config::Packs;

    /// The default stack's postgres job; `in_place` adds the restore block `restore --in-place`
    /// builds (a stack file cannot name its own cluster as the source).
    fn postgres_job(in_place: bool, phase: Option<&RestorePhase>) -> Value {
        let checked = crate::stack::load(&crate::stack::Source::new("pgnomad.hcl", "cluster \"main\" {}\n".to_owned())).unwrap();
        let mut stack = checked.stack;
        if in_place {
            let to = crate::ops::restore::Target::time("2026-12-01T10:42:07Z").unwrap();
            stack.restore = Some(crate::ops::restore::in_place_block("main", &to));
        }
        let artifacts = compile_with_restore_phase(&stack, &Packs::default(), phase).unwrap();
        serde_json::to_value(&artifacts.jobs.into_iter().find(|j| j.role == JobRole::Postgres).unwrap().job).unwrap()
    }

    fn task<'a>(group: &'a Value, name: &str) -> Option<&'a Value> {
        group["Tasks"].as_array().unwrap().iter().find(|t| t["Name"] == name)
    }

    fn templates_of(task: &Value) -> Vec<(String, String)> {
        task["Templates"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| (t["DestPath"].as_str().unwrap().to_owned(), t["EmbeddedTmpl"].as_str().unwrap().to_owned()))
            .collect()
    }

    #[test]
    fn each_restore_phase_runs_first_in_every_member_group_and_one_member_empties_the_dcs() {
        let plain = postgres_job(false, None);
        assert!(plain["TaskGroups"].as_array().unwrap().iter().all(|g| task(g, "restore-in-place").is_none()));

        let prepare = RestorePhase {
            attempt: "1765000000".into(),
            mode: RestoreMode::Prepare,
            wipe_member: "member-1".into(),
            target: "to_xid 7420".into(),
            led_timeline: Some(3),
        };
        let job = postgres_job(true, Some(&prepare));
        for group in job["TaskGroups"].as_array().unwrap() {
            let name = group["Name"].as_str().unwrap();
            let restore = task(group, "restore-in-place").unwrap_or_else(|| panic!("{name} has no restore-in-place task"));
            assert_eq!(restore["Lifecycle"]["Hook"], "prestart");
            assert_eq!(restore["Lifecycle"]["Sidecar"], false);
            assert_eq!(restore["Env"]["PGNOMAD_RESTORE_ATTEMPT"], "1765000000");
            assert_eq!(restore["Env"]["PGNOMAD_RESTORE_MODE"], "prepare");
            // What a later run reads back to resume it.
            assert_eq!(restore["Env"]["PGNOMAD_RESTORE_TARGET"], "to_xid 7420");
            assert_eq!(restore["Env"]["PGNOMAD_RESTORE_LED_TIMELINE"], "3");
            assert_eq!(restore["VolumeMounts"], task(group, "patroni").unwrap()["VolumeMounts"], "{name}: the same data volume");
            let templates = templates_of(restore);
            let script = &templates.iter().find(|(dest, _)| dest == "local/restore-in-place.sh").unwrap().1;
            assert!(script.contains("data='/var/lib/postgresql/data/pgdata'") && script.contains("scope='main'"), "{script}");
            let wipes = name == "member-1";
            assert_eq!(restore["Env"].get("PGNOMAD_RESTORE_WIPE").is_some(), wipes, "{name}");
            assert_eq!(
                templates.iter().any(|(dest, _)| dest == "secrets/patroni.yml"),
                wipes,
                "{name}: Patroni's config, for patronictl remove"
            );

            // In place, the cluster's own repository host with the members' own certificate
            // and cipher pass, not a source's copies.
            let patroni = templates_of(task(group, "patroni").unwrap());
            let restore_conf = &patroni.iter().find(|(dest, _)| dest == "secrets/restore.conf").unwrap().1;
            let repo_host = format!("repo1-host={}\n", crate::config::runtime::names::repo_host_name("main"));
            assert!(restore_conf.contains(&repo_host), "{restore_conf}");
            assert!(restore_conf.contains("repo1-host-ca-file=/secrets/tls/ca.crt"), "{restore_conf}");
            assert!(restore_conf.contains("repo1-host-cert-file=/secrets/tls/client.crt"), "{restore_conf}");
            assert!(restore_conf.contains("nomadVar \"nomad/jobs/main-postgres\" }}{{ .repo_cipher_pass }}"), "{restore_conf}");
            assert!(restore_conf.contains("\n[main]\n"), "the cluster's own stanza: {restore_conf}");
            assert!(!patroni.iter().any(|(dest, _)| dest.contains("restore-ca")), "no copy of a source's keys: {patroni:?}");
        }

        // Finish and revert run on the stack's own job; nobody empties the DCS to finish.
        for mode in [RestoreMode::Finish, RestoreMode::Revert] {
            let phase = RestorePhase { mode, ..prepare.clone() };
            let job = postgres_job(false, Some(&phase));
            let wiping: Vec<&str> = job["TaskGroups"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|g| task(g, "restore-in-place").unwrap()["Env"].get("PGNOMAD_RESTORE_WIPE").is_some())
                .map(|g| g["Name"].as_str().unwrap())
                .collect();
            assert_eq!(wiping, if mode == RestoreMode::Revert { vec!["member-1"] } else { vec![] }, "{mode:?}");
            assert!(job["TaskGroups"].to_string().contains(&format!("\"PGNOMAD_RESTORE_MODE\":\"{}\"", mode.as_str())));
        }
    }
}
