//! Rolling upgrades, switchover, failover and restart (issue 10) on real processes: `pgnomad
//! dev upgrade|switchover|failover|restart` against a 3-member dev cluster, with a writer inserting
//! through PgBouncer every 100 ms and pgbench running. The operations are the same code
//! (`ops`) that runs against Nomad; only the target differs.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support_dev::*;
use crate::support_procs::*;

fn show(out: &Output) -> String {
    format!("exit {:?}\n--- stdout\n{}--- stderr\n{}", out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// The stack file with these postgres parameters.
fn set_parameters(dev: &DevCluster, parameters: &[(&str, &str)]) {
    let list: Vec<String> = parameters.iter().map(|(k, v)| format!("{k} = \"{v}\"")).collect();
    let text = stack_text(&dev.cluster, dev.members as u32)
        .replace("  members = 3\n", &format!("  members = 3\n  parameters = {{ {} }}\n", list.join(", ")));
    std::fs::write(&dev.stack_file, text).unwrap();
}

fn setting_everywhere(dev: &DevCluster, name: &str) -> Vec<Option<String>> {
    (0..dev.members).map(|i| dev.member_sql(i, "postgres", &format!("SHOW {name}"))).collect()
}

fn postmasters(dev: &DevCluster) -> Vec<u32> {
    (0..dev.members).map(|i| dev.pid(i, "postmaster_pid")).collect()
}

fn timeline(dev: &DevCluster) -> u64 {
    let status = dev.status();
    status["members"].as_array().unwrap().iter().find(|m| m["role"] == "leader").and_then(|m| m["timeline"].as_u64()).expect("a leader")
}

fn upgrade(dev: &DevCluster, extra: &[&str]) -> (Output, Value) {
    let mut args = vec!["upgrade", "--json"];
    args.extend_from_slice(extra);
    let out = dev.dev(&args).output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", show(&out), dev.logs()));
    (out, report)
}

fn steps_of(report: &Value, kind: &str) -> Vec<Value> {
    report["steps"].as_array().unwrap().iter().filter(|s| s["step"] == kind).cloned().collect()
}

fn done_steps_of(report: &Value, kind: &str) -> usize {
    steps_of(report, kind).iter().filter(|s| s["status"] == "done").count()
}

/// pgbench through PgBouncer as the application user, for `seconds`.
struct Pgbench {
    child: Child,
    out: std::path::PathBuf,
}

impl Pgbench {
    fn init(dev: &DevCluster) {
        let port = dev.pgbouncer_port();
        run_ok("pgbench -i", Self::command(dev, &port).args(["-i", "-s", "1", "-q"]));
    }

    fn command(dev: &DevCluster, port: &str) -> Command {
        let mut cmd = Command::new(require("pgbench", "postgresql-15"));
        cmd.args(["-h", "127.0.0.1", "-p", port, "-U", "app", "-d", "app"]).env("PGPASSFILE", dev.pgpass()).env_remove("PGPASSWORD");
        cmd
    }

    fn start(dev: &DevCluster, seconds: u32) -> Pgbench {
        let port = dev.pgbouncer_port();
        // Into files, not pipes: a pipe nobody reads until the end would stall pgbench
        // mid-transaction once it filled, holding its server connection and PAUSE with it.
        let out = dev.dir.path().join("pgbench.out");
        let child = Self::command(dev, &port)
            .args(["-n", "-c", "4", "-j", "2", "-T", &seconds.to_string()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(dev.dir.path().join("pgbench.err")).unwrap())
            .spawn()
            .unwrap();
        Pgbench { child, out }
    }

    /// Its summary; panics unless it ran to the end with no failed transaction.
    fn finish(self) -> (u64, u64) {
        let mut child = self.child;
        let status = child.wait().unwrap();
        let summary = std::fs::read_to_string(&self.out).unwrap();
        let errors = std::fs::read_to_string(self.out.with_extension("err")).unwrap_or_default();
        let number = |label: &str| crate::support::pgbench_number(&summary, label);
        assert!(status.success(), "pgbench failed (clients aborted on an error):\n{summary}{errors}");
        let processed = number("number of transactions actually processed:").unwrap_or_else(|| panic!("no summary:\n{summary}"));
        let failed = number("number of failed transactions:").unwrap_or(0);
        (processed, failed)
    }
}

#[test]
fn upgrade_rolls_max_connections_with_no_client_error_and_one_switchover_and_reloads_work_mem_without_restart() {
    let _one = one_dev_cluster();
    let dev = DevCluster::up("roll", 3);
    let primary = dev.primary().expect("a primary");
    dev.wait_streaming(primary, Duration::from_secs(60));
    assert_eq!(setting_everywhere(&dev, "max_connections"), vec![Some("200".to_owned()); 3]);

    // Nothing changed: nothing to do, nothing touched.
    let (out, report) = upgrade(&dev, &[]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(report["steps"], serde_json::json!([]), "{report:#}");

    // A reload-only parameter: every member has it, none restarted, no switchover.
    let before = postmasters(&dev);
    let tl = timeline(&dev);
    set_parameters(&dev, &[("work_mem", "8MB")]);
    let (out, report) = upgrade(&dev, &["--dry-run"]);
    assert!(out.status.success(), "{}", show(&out));
    let planned: Vec<&str> = report["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(planned, ["gate", "patch-config", "verify"], "{report:#}");
    assert!(report["steps"].as_array().unwrap().iter().all(|s| s["status"] == "not-done"), "--dry-run did something: {report:#}");
    assert_eq!(setting_everywhere(&dev, "work_mem"), vec![Some("4MB".to_owned()); 3], "--dry-run changed work_mem");
    let (out, report) = upgrade(&dev, &[]);
    assert!(out.status.success(), "{}\n{}", show(&out), dev.logs());
    assert_eq!(report["plan"]["changes"][0]["restart"], false, "{report:#}");
    wait_until("every member to report work_mem 8MB", Duration::from_secs(10), || {
        setting_everywhere(&dev, "work_mem") == vec![Some("8MB".to_owned()); 3]
    });
    assert_eq!(postmasters(&dev), before, "a member restarted for a reload-only parameter");
    assert_eq!(timeline(&dev), tl, "a reload-only parameter switched over");
    assert_eq!(done_steps_of(&report, "switchover") + done_steps_of(&report, "restart"), 0, "{report:#}");

    // A parameter that needs a restart, under load: a writer every 100 ms and pgbench.
    Pgbench::init(&dev);
    let writer = Writer::start(&dev);
    std::thread::sleep(Duration::from_secs(1));
    let pgbench = Pgbench::start(&dev, 40);
    std::thread::sleep(Duration::from_secs(2));
    set_parameters(&dev, &[("work_mem", "8MB"), ("max_connections", "250")]);
    let started = Instant::now();
    let (out, report) = upgrade(&dev, &[]);
    let took = started.elapsed();
    let sessions = || {
        let sql = "SELECT string_agg(concat_ws(' ', pid, state, wait_event_type, wait_event, now() - xact_start, left(query, 50)), E'\\n') FROM pg_stat_activity WHERE usename = 'app'";
        (0..3).filter_map(|i| dev.member_sql(i, "postgres", sql)).collect::<Vec<_>>().join("\n")
    };
    assert!(out.status.success(), "{}\napp sessions:\n{}\n{}", show(&out), sessions(), dev.logs());
    writer.wait_ack_after(Instant::now(), Duration::from_secs(10));
    let (processed, failed) = pgbench.finish();
    let attempts = writer.stop();

    assert_eq!(failed, 0, "pgbench saw failed transactions");
    assert!(processed > 100, "pgbench processed only {processed} transactions");
    let errors: Vec<_> = attempts.iter().filter(|a| !a.acknowledged).collect();
    assert!(errors.is_empty(), "client errors during the upgrade: {errors:#?}");
    let new_primary = dev.primary().expect("a primary after the upgrade");
    assert_ne!(new_primary, primary, "the primary did not move");
    assert_eq!(lost_on(&dev, new_primary, &attempts), Vec::<u64>::new(), "acknowledged rows lost");
    assert_eq!(done_steps_of(&report, "switchover"), 1, "{report:#}");
    assert_eq!(timeline(&dev), tl + 1, "exactly one switchover moves the timeline by one");
    assert_eq!(setting_everywhere(&dev, "max_connections"), vec![Some("250".to_owned()); 3]);
    let pending: Vec<String> = (0..3)
        .filter_map(|i| dev.member_sql(i, "postgres", "SELECT string_agg(name, ',') FROM pg_settings WHERE pending_restart"))
        .filter(|s| !s.is_empty())
        .collect();
    assert!(pending.is_empty(), "settings still pending a restart: {pending:?}");
    // The replicas first, then the switchover, then the former primary.
    let order: Vec<String> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["step"] == "restart" || s["step"] == "switchover")
        .map(|s| s["member"].as_str().or(s["from"].as_str()).unwrap().to_owned())
        .collect();
    let former = format!("member-{primary}");
    assert_eq!(order.len(), 4, "{report:#}");
    assert_eq!(order[2], former, "the switchover is away from the former primary: {report:#}");
    assert_eq!(order[3], former, "the former primary comes last: {report:#}");
    let longest = longest_gap(&attempts, started, started + took);
    eprintln!(
        "upgrade took {:.1} s; longest write pause {:.2} s; pgbench {processed} transactions, {failed} failed",
        took.as_secs_f64(),
        longest.as_secs_f64()
    );

    // Lowered again: a replica may not run less than the primary (Patroni starts it with the
    // primary's value and leaves its restart pending), so the leader restarts first, where it
    // runs, with PgBouncer paused; then the replicas. No switchover, no client error.
    let writer = Writer::start(&dev);
    std::thread::sleep(Duration::from_secs(1));
    let tl = timeline(&dev);
    set_parameters(&dev, &[("work_mem", "8MB"), ("max_connections", "200")]);
    let started = Instant::now();
    let (out, report) = upgrade(&dev, &[]);
    let took = started.elapsed();
    assert!(out.status.success(), "{}\n{}", show(&out), dev.logs());
    writer.wait_ack_after(Instant::now(), Duration::from_secs(10));
    let attempts = writer.stop();
    let errors: Vec<_> = attempts.iter().filter(|a| !a.acknowledged).collect();
    assert!(errors.is_empty(), "client errors while lowering max_connections: {errors:#?}");
    assert_eq!(dev.primary(), Some(new_primary), "the leader moved: {report:#}");
    assert_eq!(lost_on(&dev, new_primary, &attempts), Vec::<u64>::new(), "acknowledged rows lost");
    assert_eq!(timeline(&dev), tl, "lowering switched over");
    assert_eq!(done_steps_of(&report, "switchover"), 0, "{report:#}");
    let first = steps_of(&report, "restart-leader");
    assert_eq!(first.len(), 1, "{report:#}");
    assert_eq!(first[0]["member"], format!("member-{new_primary}"), "{report:#}");
    assert_eq!(first[0]["status"], "done", "{report:#}");
    assert_eq!(setting_everywhere(&dev, "max_connections"), vec![Some("200".to_owned()); 3], "{report:#}");
    let longest = longest_gap(&attempts, started, started + took);
    eprintln!("lowering took {:.1} s; longest write pause {:.2} s", took.as_secs_f64(), longest.as_secs_f64());
}

#[test]
fn switchover_refuses_a_wrong_or_lagging_target_and_failover_does_nothing_unconfirmed() {
    let _one = one_dev_cluster();
    let dev = DevCluster::up("refuse", 3);
    let primary = dev.primary().expect("a primary");
    dev.wait_streaming(primary, Duration::from_secs(60));
    let status = dev.status();
    let role = |i: usize| status["members"][i]["role"].as_str().unwrap().to_owned();
    let sync = (0..3).find(|&i| role(i) == "sync standby").expect("a sync standby");
    let asynchronous = (0..3).find(|&i| i != primary && i != sync).unwrap();
    let tl = timeline(&dev);

    let refused = |args: &[&str], why: &str| {
        let out = dev.dev(args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?} was not refused: {}", show(&out));
        assert!(text(&out.stderr).contains(why), "{args:?}: the reason is not {why:?}: {}", show(&out));
    };
    refused(&["switchover", "--to", "member-9"], "member-9 is not a member (members: member-0, member-1, member-2)");
    refused(&["switchover", "--to", &format!("member-{primary}")], "is already the leader");
    refused(&["switchover", "--to", &format!("member-{asynchronous}")], "is not a synchronous standby");

    // A standby that has not replayed what it received lags by what is left to replay. Its
    // startup process (the replay) is stopped with SIGSTOP: a pg_wal_replay_pause() is undone
    // by Patroni 3.0.2 in its next loop, so the lag came and went and a switchover could slip
    // through between two pauses. The walreceiver still flushes, so commits still complete.
    let startup = dev
        .member_sql(sync, "postgres", "SELECT pid FROM pg_stat_activity WHERE backend_type = 'startup'")
        .expect("the standby's startup process");
    let stopped = StoppedProcess::new(startup.parse().expect("a pid"));
    dev.app_sql("CREATE TABLE filler AS SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 20000) AS g");
    // 4 MB of WAL the standby receives and does not replay, so it lags past the 1 MiB bound.
    dev.app_sql("INSERT INTO filler SELECT g, repeat('x', 200) FROM generate_series(1, 20000) AS g");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = dev.dev(&["switchover", "--to", &format!("member-{sync}"), "--max-lag", "1048576"]).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "switched over to a standby that does not replay: {}", show(&out));
        if text(&out.stderr).contains(&format!("member-{sync} lags")) {
            break;
        }
        // Another refusal (a REST call that timed out under load) is tried again.
        assert!(Instant::now() < deadline, "a standby that does not replay was not refused for its lag: {}", show(&out));
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(stopped);

    // Without --yes and without a terminal to ask on, failover changes nothing.
    let out = dev.dev(&["failover", "--to", &format!("member-{sync}")]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(text(&out.stderr).contains("not confirmed; nothing was changed"), "{}", show(&out));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(dev.primary(), Some(primary), "failover without confirmation moved the primary");
    assert_eq!(timeline(&dev), tl);

    // Confirmed, it promotes the member asked for.
    let out = dev.dev(&["failover", "--to", &format!("member-{sync}"), "--yes"]).output().unwrap();
    assert!(out.status.success(), "{}\n{}", show(&out), dev.logs());
    assert_eq!(dev.wait_new_primary(Some(primary), Duration::from_secs(30)), sync);
}

/// `dev restart`: nothing with `--pending` when nothing is pending, an unknown member refused,
/// one replica alone (no switchover), then every member: replicas one at a time, the leader
/// last after a switchover, with a writer going through PgBouncer all along.
#[test]
fn restart_restarts_one_member_or_all_with_the_leader_last_and_no_client_error() {
    let _one = one_dev_cluster();
    let dev = DevCluster::up("restart", 3);
    let primary = dev.primary().expect("a primary");
    dev.wait_streaming(primary, Duration::from_secs(60));
    let tl = timeline(&dev);
    let before = postmasters(&dev);

    let out = dev.dev(&["restart", "--pending"]).output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(text(&out.stdout).contains("nothing to restart: no member has a restart pending"), "{}", show(&out));
    assert_eq!(postmasters(&dev), before, "--pending restarted a member with nothing pending");

    let out = dev.dev(&["restart", "--member", "member-9"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(text(&out.stderr).contains("member-9 is not a member (members: member-0, member-1, member-2)"), "{}", show(&out));

    let writer = Writer::start(&dev);
    std::thread::sleep(Duration::from_secs(1));
    let replica = (0..3).find(|&i| i != primary).unwrap();
    let out = dev.dev(&["restart", "--member", &format!("member-{replica}")]).output().unwrap();
    assert!(out.status.success(), "{}\n{}", show(&out), dev.logs());
    assert!(text(&out.stdout).contains(&format!("restarted member-{replica}\n")), "{}", show(&out));
    let after = postmasters(&dev);
    for i in 0..3 {
        assert_eq!(after[i] != before[i], i == replica, "member-{i}'s postmaster: {before:?} → {after:?}");
    }
    assert_eq!(dev.primary(), Some(primary), "restarting a replica moved the primary");
    assert_eq!(timeline(&dev), tl, "restarting a replica switched over");

    let before = after;
    let out = dev.dev(&["restart"]).output().unwrap();
    assert!(out.status.success(), "{}\n{}", show(&out), dev.logs());
    let stdout = text(&out.stdout);
    let order: Vec<&str> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("restarted "))
        .unwrap_or_else(|| panic!("no restarted line: {}", show(&out)))
        .split(", ")
        .collect();
    assert_eq!(order.len(), 3, "{}", show(&out));
    assert_eq!(order[2], format!("member-{primary}"), "the leader was not last: {}", show(&out));
    assert!(stdout.contains(&format!("switched over from member-{primary} to ")), "{}", show(&out));
    let after = postmasters(&dev);
    assert!((0..3).all(|i| after[i] != before[i]), "not every postmaster restarted: {before:?} → {after:?}");
    let new_primary = dev.primary().expect("a primary after the restart");
    assert_ne!(new_primary, primary, "the leader was restarted without a switchover");
    assert_eq!(timeline(&dev), tl + 1, "one switchover moves the timeline by one");
    writer.wait_ack_after(Instant::now(), Duration::from_secs(10));
    let attempts = writer.stop();
    let errors: Vec<_> = attempts.iter().filter(|a| !a.acknowledged).collect();
    assert!(errors.is_empty(), "client errors during the restarts: {errors:#?}");
    assert_eq!(lost_on(&dev, new_primary, &attempts), Vec::<u64>::new(), "acknowledged rows lost");
}

/// pgbouncer's `paused` column of `SHOW DATABASES` for the application database.
fn pgbouncer_paused(dev: &DevCluster) -> String {
    let port = dev.pgbouncer_port();
    let out = dev.through_pgbouncer(&port, "pgbouncer_auth", None, "pgbouncer", "SHOW DATABASES");
    assert!(out.status.success(), "{}", show(&out));
    let rows = text(&out.stdout);
    let app = rows.lines().find(|l| l.starts_with("app|")).unwrap_or_else(|| panic!("no app database in {rows}"));
    app.split('|').nth(11).unwrap().to_owned()
}

#[test]
fn upgrade_stops_with_a_report_when_a_replica_dies_during_its_restart_and_a_rerun_finishes() {
    let _one = one_dev_cluster();
    let dev = DevCluster::up("halt", 3);
    let primary = dev.primary().expect("a primary");
    dev.wait_streaming(primary, Duration::from_secs(60));
    let writer = Writer::start(&dev);
    set_parameters(&dev, &[("max_connections", "250")]);

    // Kill the first replica's Patroni as soon as the upgrade asks it to restart.
    let mut child = dev.dev(&["upgrade", "--json"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut killed = None;
    let mut progress = String::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        progress.push_str(&line);
        progress.push('\n');
        if killed.is_none() {
            if let Some(member) = line.trim().strip_prefix("· POST /restart on ") {
                let index: usize = member.trim_start_matches("member-").parse().unwrap();
                assert_ne!(index, primary, "the primary was restarted before the replicas: {progress}");
                kill9(dev.pid(index, "patroni_pid"));
                killed = Some(index);
            }
        }
    }
    let out = child.wait_with_output().unwrap();
    let killed = killed.unwrap_or_else(|| panic!("the upgrade never restarted a replica:\n{progress}"));
    assert_eq!(out.status.code(), Some(3), "the upgrade did not stop: {}{progress}", text(&out.stdout));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let error = report["error"].as_str().unwrap_or_default();
    assert!(error.contains(&format!("member-{killed} went down during its restart")), "{report:#}");
    let statuses: Vec<(&str, &str)> =
        report["steps"].as_array().unwrap().iter().map(|s| (s["step"].as_str().unwrap(), s["status"].as_str().unwrap())).collect();
    assert_eq!(&statuses[..3], [("gate", "done"), ("patch-config", "done"), ("restart", "failed")], "{report:#}");
    assert!(statuses[3..].iter().all(|(_, s)| *s == "not-done"), "{report:#}");
    assert_eq!(done_steps_of(&report, "switchover"), 0);

    // PgBouncer is not paused and the primary never moved: clients go on.
    assert_eq!(pgbouncer_paused(&dev), "0");
    writer.wait_ack_after(Instant::now(), Duration::from_secs(10));
    assert_eq!(dev.primary(), Some(primary));

    // Once the supervisor has brought the member back, the same command finishes.
    // The supervisor restarts a crashed Patroni after Nomad's restart delay; until then the
    // health gate refuses (its --dry-run says so in the plan's notes).
    wait_until("the health gate to pass again", Duration::from_secs(90), || {
        let (out, plan) = upgrade(&dev, &["--dry-run"]);
        out.status.success()
            && plan["plan"]["notes"].as_array().is_some_and(|n| n.iter().all(|n| !n.as_str().unwrap_or("").contains("health gate")))
    });
    dev.wait_streaming(primary, Duration::from_secs(90));
    let (out, report) = upgrade(&dev, &[]);
    assert!(out.status.success(), "{}\n{}", show(&out), dev.logs());
    assert!(steps_of(&report, "patch-config").is_empty(), "the re-run patched the configuration again: {report:#}");
    assert_eq!(done_steps_of(&report, "switchover"), 1, "{report:#}");
    assert_eq!(setting_everywhere(&dev, "max_connections"), vec![Some("250".to_owned()); 3]);
    let attempts = writer.stop();
    let new_primary = dev.primary().expect("a primary");
    assert_eq!(lost_on(&dev, new_primary, &attempts), Vec::<u64>::new());
    let errors: Vec<_> = attempts.iter().filter(|a| !a.acknowledged).collect();
    assert!(errors.is_empty(), "client errors: {errors:#?}");
}
