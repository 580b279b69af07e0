//! `<c>-pgbouncer`: the stack's front door. It always routes to the current primary, found
//! through Consul: when the primary changes, Nomad re-renders pgbouncer.ini and sends
//! SIGHUP, and PgBouncer moves to the new server without dropping its clients.

use crate::config::runtime::names;
use crate::config::{ConfigError, Runtime};
use crate::nomad::job::*;

use super::common::*;

pub fn job(cx: &Context<'_>) -> Result<Job, ConfigError> {
    let stack = cx.stack;
    let c = cx.cluster();
    let mut job = cx.job(names::pgbouncer_job(c), "service");
    let holes = cx.runtime.pgbouncer(cx.facts);

    let mut task = cx.program_task("pgbouncer", "pgbouncer", vec!["/secrets/pgbouncer.ini".into()], &["pgbouncer"]);
    task.resources = Some(resources(stack.pgbouncer.cpu, stack.pgbouncer.memory_mb));
    task.kill_timeout = Some(Nanos::secs(u64::from(stack.cluster.max_kill_timeout.value.min(30))));
    // SIGINT is PgBouncer's safe shutdown: it waits for clients to finish.
    task.kill_signal = some("SIGINT");
    let mut ini = cx.pack_template("pgbouncer/pgbouncer.ini", None, &holes, "secrets/pgbouncer.ini", Change::Reload)?;
    // Rendered as soon as Consul's answer changes: any wait is part of every write gap (see
    // common::check_interval). Without a `wait` Nomad uses its client's (5 s to 4 min). A
    // failover's two changes (the old primary's check fails, the new one's passes up to a
    // check interval later) then cost two reloads instead of one, which PgBouncer takes in
    // its stride; a wait long enough to merge them would hold clients up to that interval.
    ini.wait = Some(WaitConfig { min: Some(Nanos::millis(0)), max: Some(Nanos::secs(1)) });
    // And SIGHUP at once once written: left unset, Nomad waits a random 0–5 s (`splay`) before
    // a template's change_mode, and PgBouncer would send clients to the old primary meanwhile.
    ini.splay = Some(Nanos::millis(0));
    let mut templates = vec![ini, cx.pack_template("pgbouncer/userlist.txt", None, &holes, "secrets/userlist.txt", Change::Reload)?];
    let job_id = names::pgbouncer_job(c);
    if cx.facts.client_tls.pgbouncer {
        templates.extend(super::postgres::sql_tls_templates(cx, &job_id));
    }
    if cx.facts.client_tls.postgres {
        // PgBouncer checks Postgres' certificate against pgnomad's CA.
        templates.push(template(cx.runtime.secret_expr(&job_id, "tls_ca_crt"), "secrets/tls/ca.crt", Change::Restart));
    }
    task.templates = Some(templates);
    // PgBouncer runs from the stack's image (or the hosts' packages) as postgres.
    finish_task(&mut task, cx.postgres_owner());

    let mut tasks = vec![task];
    if cx.facts.pgbouncer.max_pause_secs > 0 {
        tasks.push(pause_watchdog_task(cx, &holes)?);
    }

    job.update = Some(UpdateStrategy {
        max_parallel: Some(1),
        health_check: some("checks"),
        min_healthy_time: Some(Nanos::secs(10)),
        healthy_deadline: Some(Nanos::secs(300)),
        progress_deadline: Some(Nanos::secs(600)),
        auto_revert: Some(true),
        canary: Some(0),
    });
    job.task_groups = Some(vec![TaskGroup {
        name: some("pgbouncer"),
        count: Some(i64::from(stack.pgbouncer.count)),
        spreads: Some(vec![Spread { attribute: some("${node.unique.id}"), weight: Some(100) }]),
        networks: Some(vec![bridge(vec![port("pgbouncer", stack.pgbouncer.port.value)])]),
        services: Some(vec![service(names::pgbouncer_service(c), "pgbouncer", vec![tcp_check("pgbouncer accepts", "pgbouncer")])]),
        tasks: Some(tasks),
        // Out of Consul (DNS, pgAdmin) before SIGINT, so new clients go to the other instance.
        shutdown_delay: Some(Nanos::secs(5)),
        // Stateless: start a replacement at once, keep the better placed one when the node is back.
        disconnect: Some(DisconnectStrategy { lost_after: Some(Nanos::secs(300)), replace: Some(true), reconcile: some("best_score") }),
        ..TaskGroup::default()
    }]);
    Ok(job)
}

/// RESUMEs PgBouncer once its clients have waited `max_pause` on a PAUSE no one lifted
/// (packs/pgbouncer/pause-watchdog.sh): pgnomad and its guard run on the operator's machine,
/// which may sleep or lose its network while PgBouncer is paused. A sidecar in PgBouncer's
/// group, so on localhost in its network namespace.
fn pause_watchdog_task(cx: &Context<'_>, holes: &crate::config::Holes) -> Result<Task, ConfigError> {
    let script = "secrets/pause-watchdog.sh";
    let mut task = cx.program_task("pause-watchdog", "/bin/sh", vec![format!("/{script}")], &[]);
    task.lifecycle = Some(TaskLifecycle { hook: some("poststart"), sidecar: Some(true) });
    task.resources = Some(resources(20, 32));
    // The script holds the admin password: a file only postgres reads, never the environment.
    let mut watchdog = cx.pack_template("pgbouncer/pause-watchdog.sh", None, holes, script, Change::Restart)?;
    watchdog.perms = some("0700");
    task.templates = Some(vec![watchdog]);
    finish_task(&mut task, cx.postgres_owner());
    Ok(task)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use crate::compile::{compile_with_restore_phase, JobRole};
    use crate::config::Packs;

    /// Nomad gives a template without `Splay` 5 s (api/tasks.go, Template.Canonicalize) and
    /// waits a random part of it after every re-rendering before the SIGHUP, and one without
    /// `wait` its client's quiescence (5 s): PgBouncer would keep clients on the old primary
    /// that long after a failover or switchover.
    #[test]
    fn pgbouncer_reloads_its_routing_as_soon_as_nomad_renders_it() {
        let checked = crate::stack::load(&crate::stack::Source::new("pgnomad.hcl", "cluster \"main\" {}\n".to_owned())).unwrap();
        let artifacts = compile_with_restore_phase(&checked.stack, &Packs::default(), None).unwrap();
        let job = artifacts.jobs.into_iter().find(|j| j.role == JobRole::PgBouncer).unwrap().job;
        let job = serde_json::to_value(&job).unwrap();
        let templates: Vec<&Value> = job["TaskGroups"][0]["Tasks"][0]["Templates"].as_array().unwrap().iter().collect();
        let ini = templates.iter().find(|t| t["DestPath"] == "secrets/pgbouncer.ini").expect("the routing template");
        assert!(ini["EmbeddedTmpl"].as_str().unwrap().contains("service \"main-primary\""), "it routes by the primary service");
        assert_eq!(ini["ChangeMode"], "signal");
        assert_eq!(ini["Splay"], 0, "sent as 0, not left to Nomad's 5 s default: {ini:#}");
        // Written as soon as Consul's answer changes; without a `wait` the client's 5 s apply.
        assert_eq!(ini["Wait"]["Min"], 0, "{ini:#}");
    }

    /// PgBouncer's pause watchdog runs beside it (a sidecar sharing its network namespace)
    /// with the stack's `max_pause`, its script readable by postgres alone; `max_pause = 0`
    /// leaves it out.
    #[test]
    fn a_pause_watchdog_runs_beside_pgbouncer_unless_max_pause_is_0() {
        let job = |extra: &str| {
            let text = format!("cluster \"main\" {{}}\n{extra}");
            let checked = crate::stack::load(&crate::stack::Source::new("pgnomad.hcl", text)).unwrap();
            let artifacts = compile_with_restore_phase(&checked.stack, &Packs::default(), None).unwrap();
            serde_json::to_value(artifacts.jobs.into_iter().find(|j| j.role == JobRole::PgBouncer).unwrap().job).unwrap()
        };
        let with = job("pgbouncer {\n  max_pause = \"45s\"\n}\n");
        let tasks = with["TaskGroups"][0]["Tasks"].as_array().unwrap();
        let watchdog = tasks.iter().find(|t| t["Name"] == "pause-watchdog").expect("a pause-watchdog task");
        assert_eq!(watchdog["Lifecycle"]["Hook"], "poststart");
        assert_eq!(watchdog["Lifecycle"]["Sidecar"], true);
        assert_eq!(watchdog["Config"]["command"], "/bin/sh");
        let script = &watchdog["Templates"][0];
        assert_eq!(watchdog["Config"]["args"][0], format!("/{}", script["DestPath"].as_str().unwrap()));
        assert_eq!(script["Perms"], "0700", "{script:#}");
        let text = script["EmbeddedTmpl"].as_str().unwrap();
        assert!(text.contains("limit=45\n"), "{text}");
        assert!(text.contains(r#"-h '127.0.0.1' -p "{{ env "NOMAD_PORT_pgbouncer" }}""#), "the admin console on localhost: {text}");
        assert!(text.contains("nomadVar \"nomad/jobs/main-pgbouncer\""), "the password from the job's variable: {text}");

        let default = job("");
        assert!(default["TaskGroups"][0]["Tasks"].as_array().unwrap().iter().any(|t| t["Name"] == "pause-watchdog"), "on by default");
        let without = job("pgbouncer {\n  max_pause = 0\n}\n");
        let names: Vec<&Value> = without["TaskGroups"][0]["Tasks"].as_array().unwrap().iter().map(|t| &t["Name"]).collect();
        assert_eq!(names, ["pgbouncer"]);
    }
}
