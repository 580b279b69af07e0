//! Rolling upgrades on the Nomad path (issue 10), end to end on the cluster double with real
//! containers: the real binary runs the default stack (docker, Patroni on etcd3), then
//! `pgnomad upgrade`, `switchover`, `failover`, `restart` against it, with pgbench and a writer going
//! through the PgBouncer container the whole time. One cluster for every step.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::cluster::e2e::{assert_ok, lost_rows, text, wait_until, Deployed, Pgbench, Registration, StackDriver, Writer};

fn show(out: &Output) -> String {
    format!("exit {:?}\n--- stdout\n{}--- stderr\n{}", out.status.code(), text(&out.stdout), text(&out.stderr))
}

fn upgrade(deployed: &Deployed, extra: &[&str]) -> (Output, Value) {
    let mut args = vec!["upgrade", "--json"];
    if !extra.contains(&"--timeout") {
        args.extend(["--timeout", "10m"]);
    }
    args.extend_from_slice(extra);
    let out = deployed.pgnomad(&args);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", show(&out), deployed.member_logs()));
    (out, report)
}

fn done(report: &Value, kind: &str) -> Vec<Value> {
    report["steps"].as_array().unwrap().iter().filter(|s| s["step"] == kind && s["status"] == "done").cloned().collect()
}

/// Every registration of the postgres job after the first `since`, each of which must have
/// changed exactly one member group.
fn member_registrations(deployed: &Deployed, since: usize) -> Vec<Registration> {
    let all = deployed.registrations("main-postgres");
    let new = all[since..].to_vec();
    for r in &new {
        assert_eq!(r.changed.len(), 1, "registration of version {} changed {:?}, not one member group: {all:#?}", r.version, r.changed);
    }
    new
}

/// When the member that ended timeline `timeline` was promoted (Patroni's /history).
fn promoted_at(deployed: &Deployed, timeline: u64) -> std::time::SystemTime {
    let history = deployed.patroni_history();
    history.iter().find(|(tl, _)| *tl == timeline).map(|(_, at)| *at).unwrap_or_else(|| panic!("no timeline {timeline} in {history:?}"))
}

/// The write pauses the writer saw during `window`: the longest time between two
/// acknowledgements.
fn longest_pause(writer: &Writer, from: Instant, to: Instant) -> Duration {
    let mut acks: Vec<Instant> =
        writer.snapshot().iter().filter(|a| a.ok).map(|a| a.started + a.took).filter(|t| *t >= from && *t <= to).collect();
    acks.sort();
    acks.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
}

#[test]
fn upgrade_on_nomad_rolls_one_member_group_at_a_time_resumes_after_a_failure_and_reloads_work_mem_in_place() {
    let deployed = Deployed::new(StackDriver::Docker, 1.0);
    let took = deployed.run_until_healthy();
    eprintln!("pgnomad run healthy after {took:?}");
    let (leader, replicas) = deployed.healthy_topology().unwrap();
    let tl = deployed.timeline().expect("a timeline");
    // patroni.yml bootstrapped only what Postgres reads at start; `run` brought the rest
    // (pgnomad's wal_keep_size, the log prefix) through Patroni's dynamic configuration.
    assert_eq!(deployed.setting_everywhere("max_connections"), vec![Some("200".to_owned()); 3]);
    wait_until("every member to show wal_keep_size 128MB", Duration::from_secs(20), || {
        deployed.setting_everywhere("wal_keep_size") == vec![Some("128MB".to_owned()); 3]
    });

    // Nothing changed: nothing to do, nothing registered.
    let versions = deployed.registrations("main-postgres").len();
    let (out, report) = upgrade(&deployed, &[]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(report["steps"], serde_json::json!([]), "{report:#}");
    assert_eq!(deployed.registrations("main-postgres").len(), versions);

    // A memory change to every member, under load: pgbench and a writer through PgBouncer.
    Pgbench::init(&deployed);
    let writer = Writer::start(&deployed);
    let pgbench = Pgbench::start(&deployed);
    std::thread::sleep(Duration::from_secs(2));
    deployed.set_stack("postgres {\n  memory = 1100\n}");
    let (out, report) = upgrade(&deployed, &["--dry-run"]);
    assert!(out.status.success(), "{}", show(&out));
    let planned: Vec<String> = report["steps"].as_array().unwrap().iter().map(|s| s["description"].as_str().unwrap().to_owned()).collect();
    assert_eq!(planned.len(), 6, "gate, 2 replicas, switchover, the former primary, verify: {planned:?}");
    assert_eq!(deployed.registrations("main-postgres").len(), versions, "--dry-run registered the job");
    let started = Instant::now();
    let (out, report) = upgrade(&deployed, &[]);
    let upgrade_took = started.elapsed();
    assert!(out.status.success(), "{}\n{}", show(&out), deployed.member_logs());
    deployed.wait_write_after(&writer, Instant::now(), Duration::from_secs(20));
    let (processed, failed, aborted) = pgbench.finish();
    let pause = longest_pause(&writer, started, started + upgrade_took);
    let attempts = writer.stop();

    // One member group per registration, the replicas first, the former primary last.
    let rolled = member_registrations(&deployed, versions);
    let order: Vec<&str> = rolled.iter().map(|r| r.changed[0].as_str()).collect();
    assert_eq!(order.len(), 3, "{rolled:#?}");
    assert_eq!(order[2], leader, "the former primary's group changed last: {order:?}");
    let mut first_two = order[..2].to_vec();
    first_two.sort_unstable();
    let mut expected = replicas.clone();
    expected.sort();
    assert_eq!(first_two, expected, "the replicas' groups first");
    // The switchover (timeline + 1) came after the replicas and before the former primary.
    assert_eq!(deployed.timeline(), Some(tl + 1), "exactly one switchover");
    let promoted = promoted_at(&deployed, tl);
    assert!(rolled[1].submitted < promoted, "the second replica was registered after the switchover: {rolled:#?} vs {promoted:?}");
    // Patroni's history stamps a promotion with the mtime of the new timeline's history file;
    // in a run on a machine with a load of 50–90 that came 5.4 s after the former primary's
    // registration, so the order is taken from the upgrade's own report as well: the
    // switchover step done (Patroni's candidate answered /primary and every PgBouncer routed
    // to it) before the former primary's update step, and no client error, which a failover
    // caused by stopping the primary would have shown.
    eprintln!("promotion stamped {promoted:?}; the former primary registered {:?}", rolled[2].submitted);
    let steps: Vec<(String, String)> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["step"].as_str().unwrap().to_owned(), s["status"].as_str().unwrap().to_owned()))
        .collect();
    let at = |kind: &str, status: &str| steps.iter().position(|(k, s)| k == kind && s == status);
    let switched = at("switchover", "done").unwrap_or_else(|| panic!("no switchover done: {report:#}"));
    let last_update = steps.iter().rposition(|(k, _)| k == "update").unwrap();
    assert!(switched < last_update && steps[last_update].1 == "done", "the former primary was updated before the switchover: {report:#}");
    assert_eq!(done(&report, "switchover").len(), 1, "{report:#}");
    assert_ne!(deployed.leader().as_deref(), Some(leader.as_str()));
    let memory: Vec<u64> = deployed.cluster.nomad.job_versions("main-postgres").last().unwrap()["TaskGroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["Tasks"].as_array().unwrap().iter().find(|t| t["Name"] == "patroni").unwrap()["Resources"]["MemoryMB"].as_u64().unwrap())
        .collect();
    assert_eq!(memory, [1100, 1100, 1100]);

    // No client saw an error and every acknowledged row is there.
    assert_eq!((failed, aborted.len()), (0, 0), "pgbench failed transactions or aborted runs: {aborted:#?}");
    assert!(processed > 100, "pgbench processed only {processed} transactions");
    let errors: Vec<_> = attempts.iter().filter(|a| !a.ok).collect();
    assert!(errors.is_empty(), "writer errors during the upgrade: {errors:#?}");
    assert_eq!(lost_rows(&deployed, &attempts), Vec::<u64>::new(), "acknowledged rows lost");
    eprintln!(
        "upgrade took {:.1} s; longest write pause {:.2} s; pgbench {processed} transactions, {failed} failed; switchover {}",
        upgrade_took.as_secs_f64(),
        pause.as_secs_f64(),
        report["switchover"]
    );

    // A failure mid-way: the first replica's new container is killed during its update.
    let versions = deployed.registrations("main-postgres").len();
    let (leader, _) = deployed.healthy_topology().unwrap();
    let before = deployed.member_allocations();
    let writer = Writer::start(&deployed);
    deployed.set_stack("postgres {\n  memory = 1200\n}");
    let mut child = spawn_upgrade(&deployed);
    let mut progress = String::new();
    let mut killed = None;
    for line in lines(&mut child) {
        progress.push_str(&line);
        progress.push('\n');
        let Some(member) = line.trim().strip_prefix("· registering main-postgres with only ").and_then(|l| l.split(' ').next()) else {
            continue;
        };
        if killed.is_some() {
            continue;
        }
        assert_ne!(member, leader, "the primary was updated first: {progress}");
        let member = member.to_owned();
        // Its new allocation's patroni container, as soon as it runs.
        wait_until(&format!("{member}'s new container"), Duration::from_secs(120), || {
            deployed.member_allocations().get(&member).is_some_and(|id| before.get(&member) != Some(id))
                && deployed.patroni_task(&member).is_some_and(|t| t.exec(&["true"]).is_ok_and(|o| o.status.success()))
        });
        deployed.patroni_task(&member).unwrap().kill().expect("killing the replica's container");
        killed = Some(member);
    }
    let out = child.wait_with_output().unwrap();
    let killed = killed.unwrap_or_else(|| panic!("the upgrade never registered a member:\n{progress}"));
    assert_eq!(out.status.code(), Some(3), "the upgrade did not stop: {}{progress}", text(&out.stdout));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let error = report["error"].as_str().unwrap_or_default();
    assert!(error.contains(&format!("{killed}'s patroni task died and was restarted during its update")), "{report:#}");
    let statuses: Vec<(&str, &str)> =
        report["steps"].as_array().unwrap().iter().map(|s| (s["step"].as_str().unwrap(), s["status"].as_str().unwrap())).collect();
    assert_eq!(&statuses[..2], [("gate", "done"), ("update", "failed")], "{report:#}");
    assert!(statuses[2..].iter().all(|(_, s)| *s == "not-done"), "{report:#}");
    assert_eq!(member_registrations(&deployed, versions).len(), 1, "only the killed member's group was registered");
    // PgBouncer is not paused (its `paused` column) and writes go through it.
    let databases = deployed.pgbouncer_admin("SHOW DATABASES");
    assert_ok("SHOW DATABASES", &databases);
    let app = text(&databases.stdout).lines().find(|l| l.starts_with("app|")).map(str::to_owned).expect("the app database");
    assert_eq!(app.split('|').nth(11), Some("0"), "PgBouncer is paused: {app}");
    writer.wait_ack_after(Instant::now(), Duration::from_secs(20));
    assert_eq!(deployed.leader().as_deref(), Some(leader.as_str()), "the primary moved");

    // The same command, run again at once while Nomad restarts the killed task, finishes: it
    // waits for that member's group to be in place and the member to stream before its
    // health gate, then rolls the two groups left, replica first, then the former primary.
    let (out, report) = upgrade(&deployed, &[]);
    assert!(out.status.success(), "{}\n{}", show(&out), deployed.member_logs());
    let rolled = member_registrations(&deployed, versions);
    let order: Vec<&str> = rolled.iter().map(|r| r.changed[0].as_str()).collect();
    assert_eq!(order.len(), 3, "{rolled:#?}");
    assert_eq!(order[0], killed.as_str(), "the killed member first");
    assert_eq!(order[2], leader, "the former primary last: {order:?}");
    assert_eq!(done(&report, "switchover").len(), 1, "{report:#}");
    assert_eq!(deployed.timeline(), Some(tl + 2));
    let attempts = writer.stop();
    assert_eq!(lost_rows(&deployed, &attempts), Vec::<u64>::new(), "acknowledged rows lost");

    // A reload-only parameter changes no member's job: Patroni's PATCH /config alone, no
    // allocation replaced, no switchover, and every member runs it.
    let allocations = deployed.member_allocations();
    let versions = deployed.registrations("main-postgres").len();
    deployed.set_stack("postgres {\n  memory = 1200\n  parameters = { work_mem = \"8MB\" }\n}");
    let (out, report) = upgrade(&deployed, &[]);
    assert!(out.status.success(), "{}", show(&out));
    let kinds: Vec<&str> = report["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["gate", "patch-config", "verify"], "{report:#}");
    assert_eq!(report["plan"]["changes"][0]["restart"], false, "{report:#}");
    wait_until("every member to show work_mem 8MB", Duration::from_secs(20), || {
        deployed.setting_everywhere("work_mem") == vec![Some("8MB".to_owned()); 3]
    });
    assert_eq!(deployed.member_allocations(), allocations, "an allocation was replaced for a reload-only parameter");
    assert_eq!(deployed.registrations("main-postgres").len(), versions, "the postgres job changed");
    assert_eq!(deployed.timeline(), Some(tl + 2), "a reload-only parameter switched over");

    lowerings(&deployed);
    refusals(&deployed);
    killed_switchover(&deployed);
    restarts(&deployed);
}

/// `kill -9` of `pgnomad switchover` once every PgBouncer container is paused (the line that
/// comes right before the switchover is asked for): the guard process pgnomad started before
/// the PAUSE RESUMEs every one of them, with the password and addresses pgnomad found through
/// Consul and the job's variable, and clients get through PgBouncer again.
fn killed_switchover(deployed: &Deployed) {
    // Its stderr ends once the guard, which holds it too, has done its work.
    let (_, said) = crate::support_procs::signal_at(deployed.pgnomad_command(&["switchover"]), "switchover from", libc::SIGKILL);
    let paused = said.matches("PAUSE on PgBouncer").count();
    assert_eq!(paused, 2, "two PgBouncer containers paused: {said}");
    let resumed = said.split("its guard RESUMEd PgBouncer ").nth(1).unwrap_or_else(|| panic!("no guard RESUMEd PgBouncer: {said}"));
    assert_eq!(resumed.lines().next().unwrap().split(", ").count(), paused, "not every PgBouncer was resumed: {said}");
    // Through PgBouncer again, bounded: a paused PgBouncer holds a query forever.
    let (host, port) = deployed.pgbouncer_address().rsplit_once(':').map(|(h, p)| (h.to_owned(), p.to_owned())).unwrap();
    wait_until("a query through PgBouncer after the guard's RESUME", Duration::from_secs(60), || {
        Command::new("timeout")
            .args(["10", "psql", "-X", "-At", "-h", &host, "-p", &port, "-U", "app", "-d", "app", "-c", "SELECT 1"])
            .env("PGPASSWORD", deployed.secret("main-postgres", "password_app"))
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|out| out.status.success())
    });
    wait_until("a healthy topology after the killed switchover", Duration::from_secs(120), || deployed.healthy_topology().is_ok());
}

/// A lowered max_connections, which a hot standby cannot run below its primary's value.
/// Nomad's target has no SQL login, so the plan's change (200 → 150) is what says the leader
/// restarts first, in place, with PgBouncer paused. Then the same lowering as an interrupted
/// run leaves it: Patroni's configuration already lowered (as the first run's PATCH /config
/// did), no member restarted, so the re-run's plan shows no change and goes the usual way
/// (replicas, switchover, former leader); the replicas stay pending on the leader's higher
/// value, and the verify step, seeing that, restarts the leader in place instead of
/// switching over again (which only handed the value on: a run waited out its whole
/// timeout). Every member ends running the lower value, with no writer error.
fn lowerings(deployed: &Deployed) {
    let tl = deployed.timeline().expect("a timeline");
    let writer = Writer::start(deployed);
    std::thread::sleep(Duration::from_secs(1));
    deployed.set_stack("postgres {\n  memory = 1200\n  parameters = { work_mem = \"8MB\", max_connections = \"150\" }\n}");
    let started = Instant::now();
    let (out, report) = upgrade(deployed, &[]);
    let took = started.elapsed();
    assert!(out.status.success(), "{}\n{}", show(&out), deployed.member_logs());
    let kinds: Vec<&str> = report["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
    // max_connections is in patroni.yml too (Postgres reads it at start), so every member's
    // group changes: the leader lowers first, in place, then the replicas' groups roll, then
    // the switchover that lets the former leader's group roll; nobody ever runs below the
    // primary.
    assert_eq!(kinds, ["gate", "patch-config", "restart-leader", "update", "update", "switchover", "update", "verify"], "{report:#}");
    assert_eq!(done(&report, "restart-leader").len(), 1, "{report:#}");
    assert_eq!(deployed.timeline(), Some(tl + 1), "one switchover, for the former leader's group");
    assert_eq!(deployed.setting_everywhere("max_connections"), vec![Some("150".to_owned()); 3]);
    deployed.wait_write_after(&writer, Instant::now(), Duration::from_secs(20));
    eprintln!(
        "lowering on Nomad: {:.1} s; {}; longest write pause {:.2} s",
        took.as_secs_f64(),
        done(&report, "restart-leader")[0]["detail"],
        longest_pause(&writer, started, started + took).as_secs_f64()
    );

    let (leader, _) = deployed.healthy_topology().unwrap();
    let edit = deployed
        .patroni_task(&leader)
        .unwrap()
        .exec(&["patronictl", "-c", "/secrets/patroni.yml", "edit-config", "--force", "--set", "postgresql.parameters.max_connections=120"])
        .unwrap();
    assert_ok("patronictl edit-config", &edit);
    deployed.set_stack("postgres {\n  memory = 1200\n  parameters = { work_mem = \"8MB\", max_connections = \"120\" }\n}");
    let (out, report) = upgrade(deployed, &["--timeout", "5m"]);
    assert!(out.status.success(), "the re-run did not converge: {}\n{}", show(&out), deployed.member_logs());
    assert!(report["plan"]["changes"].as_array().unwrap().is_empty(), "{report:#}");
    assert_eq!(deployed.setting_everywhere("max_connections"), vec![Some("120".to_owned()); 3]);
    assert_eq!(done(&report, "switchover").len(), 1, "{report:#}");
    assert_eq!(deployed.timeline(), Some(tl + 2), "one switchover (the plan's), not a second in verify: {report:#}");
    let attempts = writer.stop();
    let errors: Vec<_> = attempts.iter().filter(|a| !a.ok).collect();
    assert!(errors.is_empty(), "writer errors during the lowerings: {errors:#?}");
    assert_eq!(lost_rows(deployed, &attempts), Vec::<u64>::new(), "acknowledged rows lost");
}

/// `restart` on Nomad: through Patroni's REST API, not Nomad. Nothing with `--pending` when
/// nothing is pending, and one replica alone: its Postgres starts again in the same
/// allocation, with no switchover.
fn restarts(deployed: &Deployed) {
    let (leader, replicas) = deployed.healthy_topology().unwrap();
    let tl = deployed.timeline().expect("a timeline");
    let allocations = deployed.member_allocations();
    let started_at =
        |member: &str| deployed.member_sql(member, "SELECT pg_postmaster_start_time()").unwrap_or_else(|| panic!("{member}'s start time"));
    let before: Vec<String> = replicas.iter().map(|r| started_at(r)).collect();
    let leader_before = started_at(&leader);

    let out = deployed.pgnomad(&["restart", "--pending"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(text(&out.stdout).contains("nothing to restart: no member has a restart pending"), "{}", show(&out));

    let replica = &replicas[0];
    let out = deployed.pgnomad(&["restart", "--member", replica]);
    assert!(out.status.success(), "{}\n{}", show(&out), deployed.member_logs());
    assert!(text(&out.stdout).contains(&format!("restarted {replica}\n")), "{}", show(&out));
    assert_ne!(started_at(replica), before[0], "{replica}'s Postgres did not restart");
    assert_eq!(started_at(&replicas[1]), before[1], "{} restarted too", replicas[1]);
    assert_eq!(started_at(&leader), leader_before, "the leader restarted too");
    assert_eq!(deployed.member_allocations(), allocations, "an allocation was replaced for a restart");
    assert_eq!(deployed.leader().as_deref(), Some(leader.as_str()), "restarting a replica moved the leader");
    assert_eq!(deployed.timeline(), Some(tl), "restarting a replica switched over");
    wait_until("the restarted replica streaming again", Duration::from_secs(60), || deployed.healthy_topology().is_ok());
}

/// `switchover` to a wrong or lagging target is refused with the reason; `failover` without
/// confirmation changes nothing.
fn refusals(deployed: &Deployed) {
    let (leader, replicas) = deployed.healthy_topology().unwrap();
    let tl = deployed.timeline().expect("a timeline");
    let cluster = deployed.patroni_cluster().unwrap();
    let role = |name: &str| cluster["members"].as_array().unwrap().iter().find(|m| m["name"] == name).unwrap()["role"].clone();
    let sync = replicas.iter().find(|r| role(r) == "sync_standby").expect("a sync standby").clone();
    let asynchronous = replicas.iter().find(|r| **r != sync).unwrap().clone();
    let refused = |args: &[&str], why: &str| {
        let out = deployed.pgnomad(args);
        assert_eq!(out.status.code(), Some(1), "{args:?} was not refused: {}", show(&out));
        assert!(text(&out.stderr).contains(why), "{args:?}: the reason is not {why:?}: {}", show(&out));
    };
    refused(&["switchover", "--to", "member-9"], "member-9 is not a member (members: member-0, member-1, member-2)");
    refused(&["switchover", "--to", &leader], &format!("{leader} is already the leader"));
    refused(&["switchover", "--to", &asynchronous], &format!("{asynchronous} is not a synchronous standby"));
    let out = deployed.pgnomad(&["failover", "--to", &sync]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(text(&out.stderr).contains("not confirmed; nothing was changed"), "{}", show(&out));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(deployed.leader().as_deref(), Some(leader.as_str()), "failover without confirmation moved the leader");
    assert_eq!(deployed.timeline(), Some(tl));
    // A standby that has stopped replaying lags by what it has not replayed. Its startup
    // process (the replay) is stopped with SIGSTOP: a pg_wal_replay_pause() is undone by
    // Patroni 3.0.2 in its next loop, so a switchover slipped through between two pauses (a
    // CI run). The walreceiver still flushes, so commits still complete.
    let startup = deployed
        .member_sql(&sync, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'startup'")
        .expect("the standby's startup process");
    let task = deployed.patroni_task(&sync).expect("the standby's patroni task");
    let signal = |name: &str| task.exec(&["kill", name, &startup]).map(|out| out.status.success()) == Ok(true);
    assert!(signal("-STOP"), "could not stop {sync}'s startup process {startup}");
    let check = || {
        assert_ok("filler", &deployed.app_sql("CREATE TABLE filler (id int, pad text)"));
        // 4 MB of WAL the standby receives and does not replay, so it lags past the 1 MiB bound.
        let filler = "INSERT INTO filler SELECT g, repeat('x', 200) FROM generate_series(1, 20000) AS g";
        assert_ok("filler", &deployed.app_sql(filler));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = deployed.pgnomad(&["switchover", "--to", &sync, "--max-lag", "1048576"]);
            assert_eq!(out.status.code(), Some(1), "switched over to a standby that does not replay: {}", show(&out));
            if text(&out.stderr).contains(&format!("{sync} lags")) {
                return;
            }
            // Another refusal (a REST call that timed out under load) is tried again.
            assert!(Instant::now() < deadline, "a standby that does not replay was not refused for its lag: {}", show(&out));
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check));
    let resumed = signal("-CONT");
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    assert!(resumed, "could not resume {sync}'s startup process {startup}");
    wait_until("every replica caught up again", Duration::from_secs(60), || deployed.healthy_topology().is_ok());
}

fn spawn_upgrade(deployed: &Deployed) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_pgnomad"))
        .args(["upgrade", "--json", "--timeout", "10m"])
        .current_dir(deployed.dir.path())
        .env("NOMAD_ADDR", deployed.cluster.nomad.address())
        .env("CONSUL_HTTP_ADDR", deployed.cluster.consul.address())
        .env_remove("NOMAD_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn lines(child: &mut std::process::Child) -> impl Iterator<Item = String> {
    BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok)
}
