//! `pgnomad dev` with real processes: each test starts its own cluster (etcd, Patroni,
//! Postgres 15, PgBouncer, pgBackRest) in its own state directory on its own ports, and
//! stops it. A missing program fails the test.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support_dev::*;
use crate::support_procs::*;

#[test]
fn dev_up_names_the_debian_packages_of_missing_programs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgnomad.hcl");
    std::fs::write(&file, stack_text("missing", 1)).unwrap();
    let out = pgnomad()
        .args(["dev", "up", "-f"])
        .arg(&file)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let error = text(&out.stderr);
    assert!(error.contains("pgnomad dev needs `etcd`, `patroni`"), "{error}");
    assert!(
        error.contains("= help: apt-get install --no-install-recommends etcd-server patroni pgbackrest postgresql-client-15 util-linux"),
        "{error}"
    );
    assert!(error.contains("(or pass --install)"), "{error}");
    assert!(!dir.path().join("state").exists(), "nothing is created before the programs are there");
}

#[test]
fn dev_status_without_a_state_dir_says_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = pgnomad().args(["dev", "status", "--state-dir"]).arg(dir.path().join("none")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no dev stack in") && text(&out.stderr).contains("start one with `pgnomad dev up`"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn dev_bootstrap_streams_logs_in_through_pgbouncer_and_backs_up_and_restores() {
    let dev = DevCluster::up("boot", 3);

    // 3 members, every replica streaming, one of them synchronous.
    let leader = dev.primary().expect("a primary after `dev up`");
    dev.wait_streaming(leader, Duration::from_secs(30));
    wait_until("a synchronous standby", Duration::from_secs(30), || {
        dev.member_sql(leader, "postgres", "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'").as_deref() == Some("1")
    });
    wait_until("Patroni to show a sync standby", Duration::from_secs(30), || {
        let status = dev.status();
        let roles: Vec<&str> = status["members"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
        roles.iter().filter(|r| **r == "leader").count() == 1
            && roles.iter().filter(|r| **r == "sync standby").count() == 1
            && roles.iter().filter(|r| **r == "replica").count() == 1
    });

    // The application user logs in through PgBouncer: SCRAM, its secret from auth_query.
    let port = dev.pgbouncer_port();
    assert_eq!(dev.app_sql("SELECT current_user"), "app");
    let ini = std::fs::read_to_string(dev.state_dir.join("pgbouncer/config/pgbouncer.ini")).unwrap();
    assert!(
        ini.contains("auth_type = scram-sha-256") && ini.contains("auth_query = SELECT usename, passwd FROM pgbouncer.get_auth($1)"),
        "{ini}"
    );
    let userlist = std::fs::read_to_string(dev.state_dir.join("pgbouncer/config/userlist.txt")).unwrap();
    assert!(!userlist.contains("\"app\""), "app must come from auth_query, not userlist.txt");
    let wrong = dev.through_pgbouncer(&port, "app", Some("wrong-password"), "app", "SELECT 1");
    assert!(!wrong.status.success(), "a wrong password got in");
    // Neither the superuser nor the replication role gets in through PgBouncer.
    let secrets = dev.secrets();
    for (user, key) in [("postgres", "superuser_password"), ("replicator", "replication_password")] {
        let out = dev.through_pgbouncer(&port, user, Some(secrets[key].as_str().unwrap()), "app", "SELECT 1");
        assert!(!out.status.success(), "{user} logged in through PgBouncer");
    }
    // Secrets are kept private.
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dev.state_dir.join("secrets.json")).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    // The replication role, the auth function and the stanza exist with no manual step.
    assert_eq!(
        dev.member_sql(leader, "postgres", "SELECT rolreplication FROM pg_roles WHERE rolname = 'replicator'").as_deref(),
        Some("t")
    );
    for database in ["postgres", "template1", "app"] {
        let found = dev.member_sql(leader, database, "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'pgbouncer' AND p.proname = 'get_auth' AND p.prosecdef");
        assert_eq!(found.as_deref(), Some("1"), "pgbouncer.get_auth in {database}");
    }
    wait_until("the pgBackRest stanza", Duration::from_secs(60), || {
        let out = dev.pgbackrest(leader, &["info"]);
        out.status.success() && text(&out.stdout).contains("wal archive min/max")
    });

    // Full, diff and incr through the rendered backup.sh and the members' TLS servers.
    dev.app_sql("CREATE TABLE acks (id bigint PRIMARY KEY)");
    dev.app_sql("INSERT INTO acks SELECT generate_series(1, 1000)");
    for (n, kind) in ["full", "diff", "incr"].into_iter().enumerate() {
        let out = dev.dev(&["backup", kind]).output().unwrap();
        assert!(out.status.success(), "dev backup {kind}: {}{}", text(&out.stdout), text(&out.stderr));
        assert!(text(&out.stderr).contains(&format!("{kind} backup of boot done")), "{}", text(&out.stderr));
        dev.app_sql(&format!("INSERT INTO acks VALUES ({})", 2000 + n));
    }
    let info = text(&dev.pgbackrest(leader, &["info"]).stdout);
    assert!(info.contains("full backup:") && info.contains("diff backup:") && info.contains("incr backup:"), "{info}");

    // The last acknowledged row, archived, comes back in a restore into a fresh data dir.
    dev.app_sql("INSERT INTO acks VALUES (999999)");
    let segment = dev.member_sql(leader, "postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())").unwrap();
    dev.member_sql(leader, "postgres", "SELECT pg_switch_wal()").unwrap();
    wait_until("the last segment in the archive", Duration::from_secs(30), || {
        dev.member_sql(leader, "postgres", "SELECT last_archived_wal FROM pg_stat_archiver").is_some_and(|w| w.as_str() >= segment.as_str())
    });
    let restored = dev.dir.path().join("restored");
    let out = dev.pgbackrest(leader, &[&format!("--pg1-path={}", restored.display()), "--archive-mode=off", "restore"]);
    assert!(out.status.success(), "restore: {}{}", text(&out.stdout), text(&out.stderr));
    let socket = dev.dir.path().join("restored-run");
    std::fs::create_dir_all(&socket).unwrap();
    chown_postgres(&socket);
    let port = free_port("127.0.0.1");
    let mut cmd = as_postgres(pg_bin("postgres"));
    cmd.arg("-D").arg(&restored);
    // Patroni's postgresql.conf came along: another port and socket, no standby to wait for,
    // no primary to follow.
    for setting in [
        format!("port={port}"),
        "listen_addresses=127.0.0.1".into(),
        format!("unix_socket_directories={}", socket.display()),
        "synchronous_standby_names=".into(),
        "primary_conninfo=".into(),
        "primary_slot_name=".into(),
        format!("hba_file={}", restored.join("pg_hba.conf").display()),
        format!("ident_file={}", restored.join("pg_ident.conf").display()),
    ] {
        cmd.arg("-c").arg(setting);
    }
    let mut restored_pg = Guard::spawn("restored postgres", cmd, dev.dir.path().join("restored.log"));
    let mut rows = None;
    wait_until("the restored copy to finish recovery", Duration::from_secs(60), || {
        restored_pg.assert_running();
        rows = member_sql(&socket, port, "app", "SELECT NOT pg_is_in_recovery() AND EXISTS (SELECT FROM acks WHERE id = 999999)");
        rows.as_deref() == Some("t")
    });
    drop(restored_pg);

    // down leaves nothing running; up brings the same data back.
    let pids: Vec<u32> = (0..3).flat_map(|i| [dev.pid(i, "patroni_pid"), dev.pid(i, "postmaster_pid")]).collect();
    let down = dev.dev(&["down"]).output().unwrap();
    assert!(down.status.success(), "{}", text(&down.stderr));
    for pid in pids {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "pid {pid} still runs after `dev down`");
    }
    let mut dev = dev;
    dev.start();
    assert_eq!(dev.app_sql("SELECT count(*) FROM acks WHERE id = 999999"), "1");
}

#[test]
fn dev_failover_after_postmaster_and_member_kills_loses_no_acknowledged_row_and_never_splits_brain() {
    let dev = DevCluster::up("failover", 3);
    let first = dev.primary().expect("a primary");
    dev.wait_streaming(first, Duration::from_secs(30));
    let sampler = SplitBrainSampler::start(&dev);
    let writer = Writer::start(&dev);
    std::thread::sleep(Duration::from_secs(2));

    // 1. kill -9 the primary's postmaster: Patroni (primary_start_timeout 0) fails over.
    let killed_at = Instant::now();
    kill9(dev.pid(first, "postmaster_pid"));
    let second = dev.wait_new_primary(Some(first), Duration::from_secs(30));
    writer.wait_ack_after(killed_at, Duration::from_secs(30));
    let attempts = writer.snapshot();
    assert_eq!(lost_on(&dev, second, &attempts), Vec::<u64>::new(), "acknowledged rows lost after the postmaster kill");
    // The old primary comes back as a replica (pg_rewind), streaming from the new one.
    dev.wait_streaming(second, Duration::from_secs(90));
    archived_on_current_timeline(&dev, second);

    // 2. kill the whole member: Patroni and Postgres.
    std::thread::sleep(Duration::from_secs(2));
    let killed_at = Instant::now();
    kill9(dev.pid(second, "patroni_pid"));
    kill9(dev.pid(second, "postmaster_pid"));
    let third = dev.wait_new_primary(Some(second), Duration::from_secs(60));
    writer.wait_ack_after(killed_at, Duration::from_secs(30));
    let attempts = writer.snapshot();
    assert_eq!(lost_on(&dev, third, &attempts), Vec::<u64>::new(), "acknowledged rows lost after the member kill");
    // The supervisor restarts its Patroni after ttl; it rejoins as a replica.
    dev.wait_streaming(third, Duration::from_secs(120));
    archived_on_current_timeline(&dev, third);

    let attempts = writer.stop();
    let (samples, violations) = sampler.stop();
    assert_eq!(lost_on(&dev, third, &attempts), Vec::<u64>::new(), "acknowledged rows lost by the end");
    assert!(samples > 20, "the split-brain sampler took only {samples} samples");
    assert!(violations.is_empty(), "two members accepted writes at once: {violations:#?}");
    let acked = attempts.iter().filter(|a| a.acknowledged).count();
    assert!(acked > 50, "only {acked} writes acknowledged");
}

/// The member that became primary archives WAL: its timeline's segments reach the repo.
fn archived_on_current_timeline(dev: &DevCluster, primary: usize) {
    let timeline = dev.member_sql(primary, "postgres", "SELECT lpad(to_hex(timeline_id), 8, '0') FROM pg_control_checkpoint()").unwrap();
    wait_until(&format!("WAL of timeline {timeline} archived from member-{primary}"), Duration::from_secs(60), || {
        dev.member_sql(primary, "postgres", "SELECT pg_switch_wal()");
        dev.member_sql(primary, "postgres", "SELECT last_archived_wal FROM pg_stat_archiver").is_some_and(|w| w.starts_with(&timeline))
    });
    let info = text(&dev.pgbackrest(primary, &["info", "--output=json"]).stdout);
    assert!(info.contains(&format!("\"max\":\"{timeline}")), "pgbackrest info shows no WAL of timeline {timeline}: {info}");
}

#[test]
fn dev_switchover_with_pgbouncer_pause_has_no_client_errors() {
    let dev = DevCluster::up("switch", 3);
    let mut primary = dev.primary().expect("a primary");
    dev.wait_streaming(primary, Duration::from_secs(30));
    let writer = Writer::start(&dev);
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..2 {
        let started = Instant::now();
        let out = dev.dev(&["switchover"]).output().unwrap();
        assert!(out.status.success(), "dev switchover: {}{}\n{}", text(&out.stdout), text(&out.stderr), dev.logs());
        let new = dev.wait_new_primary(Some(primary), Duration::from_secs(10));
        writer.wait_ack_after(Instant::now(), Duration::from_secs(10));
        let errors = errors_between(&writer.snapshot(), started, Instant::now());
        assert!(errors.is_empty(), "client errors during a paused switchover: {errors:#?}");
        primary = new;
        dev.wait_streaming(primary, Duration::from_secs(90));
    }

    // Ctrl-C while the clients are paused: PgBouncer is RESUMEd first, then pgnomad ends on
    // the signal; the writer goes on through PgBouncer, with no error.
    let started = Instant::now();
    let (status, said) = signal_at(dev.dev(&["switchover"]), "PAUSE on PgBouncer", libc::SIGINT);
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGINT), "{status:?}: {said}");
    let paused = said.find("PAUSE on PgBouncer").unwrap();
    assert!(said[paused..].contains("RESUME on PgBouncer"), "ended on Ctrl-C without a RESUME: {said}");
    writer.wait_ack_after(Instant::now(), Duration::from_secs(10));
    let errors = errors_between(&writer.snapshot(), started, Instant::now());
    assert!(errors.is_empty(), "client errors around an interrupted switchover: {errors:#?}");
    primary = dev.primary().expect("a primary");
    dev.wait_streaming(primary, Duration::from_secs(90));

    // `kill -9` once every PgBouncer is paused (the switchover is asked for next): nothing in
    // pgnomad runs again, and its guard process RESUMEs PgBouncer. Writes go on; a client error
    // is allowed only if the switchover went ahead while its clients were resumed early.
    let killed_at = Instant::now();
    let (status, said) = signal_at(dev.dev(&["switchover"]), "switchover from", libc::SIGKILL);
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL), "{said}");
    writer.wait_ack_after(Instant::now(), Duration::from_secs(10));
    assert!(said.contains("its guard RESUMEd PgBouncer"), "no guard RESUMEd PgBouncer after pgnomad was killed: {said}");
    let new_primary = dev.wait_new_primary(None, Duration::from_secs(60));
    let killed_switchover_went_ahead = new_primary != primary;
    let errors = errors_between(&writer.snapshot(), killed_at, Instant::now());
    if killed_switchover_went_ahead {
        eprintln!("the killed switchover went ahead ({primary} -> {new_primary}); client errors meanwhile: {}", errors.len());
    } else {
        assert!(errors.is_empty(), "client errors after a killed switchover that never happened: {errors:#?}");
    }
    primary = new_primary;
    dev.wait_streaming(primary, Duration::from_secs(90));

    let attempts = writer.stop();
    assert_eq!(lost_on(&dev, primary, &attempts), Vec::<u64>::new());
    let errors: Vec<_> = attempts.iter().filter(|a| !a.acknowledged && !(killed_switchover_went_ahead && a.started >= killed_at)).collect();
    assert!(errors.is_empty(), "client errors: {errors:#?}");

    // destroy stops everything and removes the state directory.
    let pids: Vec<u32> = (0..3).flat_map(|i| [dev.pid(i, "patroni_pid"), dev.pid(i, "postmaster_pid")]).collect();
    let out = dev.dev(&["destroy", "--yes"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!dev.state_dir.exists(), "the state directory is still there");
    for pid in pids {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "pid {pid} still runs after `dev destroy`");
    }
}

/// The processes whose parent is `parent` and whose command line holds `needle`.
fn children_of(parent: u32, needle: &str) -> Vec<u32> {
    let pids = std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok());
    pids.filter(|pid| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The fields after the command name in parentheses: state, then the parent's pid.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        ppid == Some(parent) && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
    })
    .collect()
}

/// The operator's machine lost mid-switchover: pgnomad and the guard that would RESUME
/// PgBouncer are both killed while it is paused. PgBouncer's own pause watchdog RESUMEs it
/// once clients have waited `max_pause`, and not before; writes go on, none acknowledged is
/// lost. A `--pause-timeout` the watchdog would cut short is refused with the bound.
#[test]
fn dev_pgbouncer_lifts_a_pause_whose_pgnomad_and_guard_were_killed_after_max_pause() {
    let dir = postgres_tempdir();
    let stack_file = dir.path().join("pgnomad.hcl");
    std::fs::write(&stack_file, format!("{}\npgbouncer {{\n  max_pause = \"15s\"\n}}\n", stack_text("watchdog", 2))).unwrap();
    let mut dev = DevCluster::at(dir, stack_file, "watchdog", 2);
    dev.start();
    let primary = dev.primary().expect("a primary");
    dev.wait_streaming(primary, Duration::from_secs(30));
    let writer = Writer::start(&dev);
    writer.wait_ack_after(Instant::now(), Duration::from_secs(10));

    let out = dev.dev(&["switchover", "--pause-timeout", "30s"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("pass at most 5 s, or raise `max_pause`"), "{}", text(&out.stderr));

    // Once every PgBouncer is paused (the switchover is asked for next): the guard, then pgnomad.
    let mut child = dev.dev(&["switchover"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    while !said.contains("switchover from") {
        assert!(std::io::BufRead::read_line(&mut stderr, &mut said).unwrap() > 0, "dev switchover ended first: {said}");
    }
    let guards = children_of(child.id(), "__resume-guard");
    assert_eq!(guards.len(), 1, "pgnomad's guard process: {guards:?}\n{said}");
    kill9(guards[0]);
    kill9(child.id());
    let killed_at = Instant::now();
    child.wait().unwrap();

    writer.wait_ack_after(killed_at, Duration::from_secs(40));
    let attempts = writer.snapshot();
    let resumed = attempts.iter().filter(|a| a.acknowledged && a.ended > killed_at).map(|a| a.ended).min().unwrap();
    let held = resumed - killed_at;
    assert!(held >= Duration::from_secs(12), "clients went through {held:?} after the kill: something else RESUMEd PgBouncer");
    assert!(held <= Duration::from_secs(25), "clients held {held:?}, past max_pause (15 s) and the watchdog's polling");
    let log = std::fs::read_to_string(dev.state_dir.join("pgbouncer/log/pause-watchdog.log")).unwrap();
    assert!(log.contains("on a PAUSE no one lifted: RESUMEd PgBouncer"), "{log}");
    eprintln!("clients held {held:?} after pgnomad and its guard were killed");

    let primary = dev.wait_new_primary(None, Duration::from_secs(60));
    dev.wait_streaming(primary, Duration::from_secs(90));
    writer.wait_ack_after(Instant::now(), Duration::from_secs(10));
    let attempts = writer.stop();
    assert_eq!(lost_on(&dev, primary, &attempts), Vec::<u64>::new(), "acknowledged rows lost");
}
