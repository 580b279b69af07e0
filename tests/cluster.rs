//! What pgnomad sends to Nomad, run for real: the real binary deploys the default stack
//! (Patroni on etcd3) to the cluster double, whose clients run every task on three nodes with
//! their own addresses — as containers of pgnomad's own image with the docker driver, as
//! chrooted processes with `driver = "exec"`.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::cluster::e2e::{assert_ok, lost_rows, psql, text, wait_until, Deployed, Fault, StackDriver, Writer};

/// `pgbackrest info` from inside the leader's patroni task.
fn pgbackrest_info(deployed: &Deployed) -> Value {
    let leader = deployed.leader().expect("a leader");
    let task = deployed.patroni_task(&leader).unwrap();
    let info = task.exec(&["pgbackrest", "--config=/secrets/pgbackrest.conf", "--stanza=main", "--output=json", "info"]).unwrap();
    assert_ok("pgbackrest info", &info);
    serde_json::from_slice(&info.stdout).unwrap()
}

/// Forces `main-backup-full` and waits for its child to finish; its final status.
fn forced_full_backup(deployed: &Deployed) -> String {
    let client = deployed.cluster.nomad.client();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let before = deployed.cluster.nomad.all_allocations().iter().filter(|a| a.job_id.starts_with("main-backup-full/periodic-")).count();
    runtime.block_on(client.force_periodic("main-backup-full")).expect("forcing main-backup-full");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let children: Vec<_> =
            deployed.cluster.nomad.all_allocations().into_iter().filter(|a| a.job_id.starts_with("main-backup-full/periodic-")).collect();
        let outcome = format!("{:#?}", children.iter().map(|a| (&a.node_name, &a.client_status, &a.task_states)).collect::<Vec<_>>());
        if children.len() > before && matches!(children.last().unwrap().client_status.as_str(), "complete" | "failed") {
            let status = children.last().unwrap().client_status.clone();
            assert_eq!(status, "complete", "the backup job: {outcome}");
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the forced backup did not finish in 300 s: {outcome}\nevaluations: {:#?}",
            deployed.cluster.nomad.evaluations_of("main-backup-full")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn json_of(what: &str, out: &std::process::Output) -> Value {
    assert_ok(what, out);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", text(&out.stdout)))
}

/// `pgnomad backup --type full`, then `--type incr` while a `diff` is asked and refused,
/// `pgnomad backups --json` listing both with the window, and `pgnomad restore`: a target
/// before the window refused naming it, a time between two sets of rows accepted and written
/// into `clone.hcl`.
fn backups_through_pgnomad(deployed: &Deployed) {
    let leader = deployed.leader().unwrap();
    let full = json_of("pgnomad backup --type full", &deployed.pgnomad(&["backup", "--type", "full", "--json"]));
    assert_eq!((full["type"].as_str(), full["primary"].as_str()), (Some("full"), Some(leader.as_str())), "{full}");
    let from = full["copied_from"].as_str().unwrap();
    assert!(from.starts_with("member-") && from != leader, "the files come from a standby, not {leader}: {full}");

    // An incremental backup runs; a differential one asked meanwhile is refused, saying why.
    let incr = deployed.pgnomad_command(&["backup", "--type", "incr", "--json"]).spawn().unwrap();
    wait_until("the forced incr backup's allocation", Duration::from_secs(120), || {
        deployed
            .cluster
            .nomad
            .all_allocations()
            .iter()
            .any(|a| a.job_id.starts_with("main-backup-incr/periodic-") && matches!(a.client_status.as_str(), "pending" | "running"))
    });
    let diff = deployed.pgnomad(&["backup", "--type", "diff"]);
    assert_eq!(diff.status.code(), Some(1), "a backup asked while another runs: {}", text(&diff.stderr));
    assert!(text(&diff.stderr).contains("another backup of main is running (main-backup-incr/periodic-"), "{}", text(&diff.stderr));
    let incr = json_of("pgnomad backup --type incr", &incr.wait_with_output().unwrap());
    assert_eq!(incr["type"], "incr", "{incr}");

    let list = json_of("pgnomad backups --json", &deployed.pgnomad(&["backups", "--json"]));
    let rows = list["backups"].as_array().unwrap();
    let labels: Vec<(&str, &str)> = rows.iter().map(|b| (b["label"].as_str().unwrap(), b["type"].as_str().unwrap())).collect();
    assert!(labels.contains(&(full["label"].as_str().unwrap(), "full")), "{list}");
    assert!(labels.contains(&(incr["label"].as_str().unwrap(), "incr")), "{list}");
    assert_eq!(rows.iter().find(|b| b["type"] == "incr").unwrap()["prior"], full["label"], "{list}");
    let window = &list["window"];
    assert_eq!(window["oldest"], rows[0]["stop"], "the window starts at the oldest backup's end: {list}");
    assert!(window["newest"].as_i64() >= rows.last().unwrap()["stop"].as_i64(), "{list}");

    // Rows A, a time T, rows B.
    let t = deployed.rows_a_time_rows_b();

    let before = deployed.pgnomad(&["restore", "--to-time", "2020-01-01T00:00:00Z", "--into", "early"]);
    assert_eq!(before.status.code(), Some(1), "a target before the window: {}", text(&before.stderr));
    let message = text(&before.stderr);
    assert!(message.contains("--to-time 2020-01-01T00:00:00Z is outside the recoverable window"), "{message}");
    assert!(message.contains(window["oldest_time"].as_str().unwrap()), "the message names the window: {message}");
    assert!(!deployed.dir.path().join("early.hcl").exists());

    let restore = deployed.pgnomad(&["restore", "--to-time", &t, "--into", "clone", "--json"]);
    if !restore.status.success() {
        eprintln!("the clone's members after a failed restore:\n{}", deployed.member_logs_of("clone"));
    }
    let restored = json_of("pgnomad restore --into clone", &restore);
    assert!(restored["window"]["newest_from_archive"].as_bool().unwrap(), "WAL archived up to now first: {restored}");
    let clone = std::fs::read_to_string(deployed.dir.path().join("clone.hcl")).unwrap();
    assert!(clone.starts_with("cluster \"clone\""), "{clone}");
    assert!(clone.contains("restore {\n  from    = \"main\"\n  to_time = \""), "{clone}");
    let postgres = restored["run"]["jobs"].as_array().unwrap().iter().find(|j| j["id"] == "clone-postgres").cloned().unwrap_or_default();
    assert_eq!(postgres["deployment"]["status"], "successful", "restore brought the clone up as run does: {restored}");
    the_clone_runs_beside_its_source(deployed);
    let again = deployed.pgnomad(&["restore", "--to-time", &t, "--into", "clone"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("the restore target cluster clone already exists"), "{}", text(&again.stderr));
    assert_ok("pgnomad destroy -f clone.hcl", &deployed.pgnomad(&["destroy", "-f", "clone.hcl", "--yes"]));
}

/// The schedule, not pgnomad, starts backups: with `incr` due every second, the double's
/// periodic dispatcher (Nomad's) launches `main-backup-incr/periodic-<t>` by itself, never a
/// second while one runs (`prohibit_overlap`), and each run lands an incremental backup.
fn scheduled_backups(deployed: &Deployed) {
    let incr_backups = || {
        let info = pgbackrest_info(deployed);
        info[0]["backup"].as_array().map_or(0, |b| b.iter().filter(|b| b["type"] == "incr").count())
    };
    let before = incr_backups();
    let children = |status: &[&str]| -> Vec<String> {
        let allocations = deployed.cluster.nomad.all_allocations();
        let mut ids: Vec<String> = allocations
            .iter()
            .filter(|a| a.job_id.starts_with("main-backup-incr/periodic-") && status.contains(&a.client_status.as_str()))
            .map(|a| a.job_id.clone())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    };
    let earlier = children(&["complete"]).len();
    deployed.set_backup_schedules("  schedule {\n    full = \"0 0 1 1 * 2099\"\n    diff = \"off\"\n    incr = \"* * * * * * *\"\n  }\n");
    assert_ok("pgnomad run with incr every second", &deployed.pgnomad(&["run", "--timeout", "5m"]));
    let started = Instant::now();
    let mut most_at_once = 0;
    while children(&["complete"]).len() < earlier + 2 {
        let live = children(&["pending", "running"]);
        most_at_once = most_at_once.max(live.len());
        assert!(live.len() <= 1, "scheduled backups overlap: {live:?}");
        let failed = children(&["failed"]);
        assert!(failed.is_empty(), "a scheduled backup failed: {failed:?}\n{}", deployed.member_logs());
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "two scheduled backups did not finish in 240 s: {:?}",
            children(&["complete"])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(most_at_once, 1, "no scheduled run was ever seen running");
    deployed.set_backup_schedules(crate::support::cluster::e2e::QUIET_SCHEDULES);
    assert_ok("pgnomad run with the quiet schedules", &deployed.pgnomad(&["run", "--timeout", "5m"]));
    wait_until("the last scheduled backup to end", Duration::from_secs(120), || children(&["pending", "running"]).is_empty());
    let landed = incr_backups() - before;
    assert!(landed >= 2, "{landed} incremental backups landed");
    eprintln!("scheduled backups: {landed} incremental, one at a time, in {:?}", started.elapsed());
}

/// The clone `restore --into` brought up: Patroni's custom bootstrap restored main's backups
/// from main's repository host (with main's client certificate and cipher pass) to T. It holds
/// exactly rows A, its replicas stream, it takes writes through its own PgBouncer and archives
/// into its own stanza, while main keeps its rows and its archive.
fn the_clone_runs_beside_its_source(deployed: &Deployed) {
    let mut seen = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    let leader = loop {
        seen = deployed.patroni_cluster_of("clone").or(seen);
        let running =
            seen.as_ref().and_then(|c| c["members"].as_array()?.iter().find(|m| m["role"] == "leader" && m["state"] == "running").cloned());
        if let Some(found) = running {
            let leader = found["name"].as_str().unwrap().to_owned();
            let streaming = deployed.member_sql_of("clone", &leader, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'");
            if streaming.as_deref() == Some("2") {
                break leader;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the clone: no leader with two streaming replicas in 300 s: {seen:?}\n{}",
            deployed.member_logs_of("clone")
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let pgbouncer = deployed.cluster.address_of("clone-pgbouncer", "pgbouncer", "pgbouncer").expect("the clone's PgBouncer");
    let password = deployed.secret("clone-postgres", "password_app");
    let rows = psql(&pgbouncer, &password, "SELECT phase, count(*) FROM pitr GROUP BY phase ORDER BY phase");
    assert_ok("rows through the clone's PgBouncer", &rows);
    assert_eq!(text(&rows.stdout).trim(), "A|50", "the clone holds exactly rows A");
    assert_ok("a write through the clone's PgBouncer", &psql(&pgbouncer, &password, "INSERT INTO pitr VALUES (1000, 'clone')"));

    let task = deployed.cluster.task("clone-postgres", &leader, "patroni").unwrap();
    let segment = deployed.member_sql_of("clone", &leader, "SELECT pg_walfile_name(pg_switch_wal())").expect("pg_switch_wal on the clone");
    let mut info = Value::Null;
    wait_until(&format!("the clone's {segment} archived into its own stanza"), Duration::from_secs(120), || {
        let out = task.exec(&["pgbackrest", "--config=/secrets/pgbackrest.conf", "--stanza=clone", "--output=json", "info"]).unwrap();
        info = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        info[0]["archive"][0]["max"].as_str().is_some_and(|max| max >= segment.as_str())
    });
    let rows = deployed.app_sql("SELECT phase, count(*) FROM pitr GROUP BY phase ORDER BY phase");
    assert_eq!(text(&rows.stdout).trim(), "A|50\nB|30", "the source is untouched");
    // Still one database in the source's stanza, and its WAL still archives there.
    let info = pgbackrest_info(deployed);
    assert_eq!(info[0]["db"].as_array().map(Vec::len), Some(1), "{info}");
    deployed.archive_current_wal(Duration::from_secs(120));
    eprintln!("clone: {leader} leads, two replicas stream, rows A only, archiving into stanza clone");
}

/// The whole life of the stack on three nodes with `driver`.
/// A PAUSE no one lifts (pgnomad and its guard lost with the operator's machine): the pause
/// watchdog beside the PgBouncer task RESUMEs it once a client has waited `max_pause` (15 s
/// here), and not before. It runs as its own task in PgBouncer's allocation and reaches the
/// admin console on localhost with the password from the job's variable.
fn pause_watchdog(deployed: &Deployed) {
    let address = deployed.pgbouncer_address();
    let (host, port) = address.rsplit_once(':').unwrap();
    // psql as `user` on `database` through that PgBouncer, waiting up to `connect` to log in.
    let psql_as = |user: &str, password: String, database: &str, sql: &str, connect: &str| {
        std::process::Command::new("psql")
            .args(["-X", "-At", "-h", host, "-p", port, "-U", user, "-d", database, "-c", sql])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", connect)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let admin = psql_as("pgbouncer_auth", deployed.secret("main-pgbouncer", "pgbouncer_auth_password"), "pgbouncer", "PAUSE", "10");
    assert_ok("PAUSE on PgBouncer's admin console", &admin);
    let paused_at = Instant::now();
    let out = psql_as("app", deployed.secret("main-postgres", "password_app"), "app", "SELECT 1", "60");
    let held = paused_at.elapsed();
    assert_ok("a query through the paused PgBouncer", &out);
    assert!(held >= Duration::from_secs(13), "through after {held:?}: something else RESUMEd PgBouncer");
    assert!(held <= Duration::from_secs(25), "held {held:?}, past max_pause (15 s) and the watchdog's polling");
    eprintln!("{}: the pause watchdog RESUMEd PgBouncer after {held:?}", deployed.driver.name());
}

fn scenario(driver: StackDriver) {
    let deployed = Deployed::new(driver, 0.2);
    // A short max_pause for pause_watchdog (pgnomad then keeps its own pauses under 5 s).
    deployed.set_stack("pgbouncer {\n  max_pause = \"15s\"\n}");
    let took = deployed.run_until_healthy();
    eprintln!("{}: pgnomad run healthy after {took:?}", driver.name());

    // Three members on three distinct nodes.
    let members = deployed.cluster.allocations("main-postgres");
    let mut nodes: Vec<&str> = members.iter().map(|a| a.facts.node_name.as_str()).collect();
    nodes.sort_unstable();
    nodes.dedup();
    assert_eq!((members.len(), nodes.len()), (3, 3), "members and their nodes: {members:?}");
    if driver == StackDriver::Exec {
        // Every task of every job is a process, none a container but the allocations'
        // network namespaces (the pause containers).
        let containers = deployed.cluster.running_containers();
        assert!(containers.iter().all(|c| c.starts_with("nomad_init-")), "exec tasks ran as containers: {containers:?}");
        let leader = deployed.leader().unwrap();
        let whoami = deployed.patroni_task(&leader).unwrap().exec(&["sh", "-c", "id -un; echo $NOMAD_TASK_DIR; ls /"]).unwrap();
        eprintln!("inside the exec task: {}", text(&whoami.stdout));
    }

    // app through a PgBouncer that found the primary through its template.
    let out = deployed.app_sql("SELECT current_user, pg_is_in_recovery()");
    assert_ok("app through PgBouncer", &out);
    assert_eq!(text(&out.stdout).trim(), "app|f");
    pause_watchdog(&deployed);

    // The stanza exists (created by the rendered callback on promotion) and WAL is archived.
    let info = pgbackrest_info(&deployed);
    assert_eq!(info[0]["name"], "main", "{info}");
    assert!(info[0]["db"][0]["system-id"].as_u64().is_some(), "the stanza knows the cluster: {info}");
    assert!(info[0]["archive"][0]["max"].as_str().is_some(), "WAL is archived: {info}");

    if driver == StackDriver::Docker {
        // Issue 11 on Nomad: backup, backups and restore --into through the binary.
        backups_through_pgnomad(&deployed);
        scheduled_backups(&deployed);
    } else {
        // A forced full backup runs as a child of the periodic job and lands in the repository.
        forced_full_backup(&deployed);
    }
    let info = pgbackrest_info(&deployed);
    let backups = info[0]["backup"].as_array().cloned().unwrap_or_default();
    assert!(backups.iter().any(|b| b["type"] == "full"), "pgbackrest info lists the full backup: {info}");

    let status = deployed.pgnomad(&["status", "--json"]);
    assert_ok("pgnomad status", &status);

    // Failover after a postmaster kill, then after the primary's whole task dies.
    let writer = Writer::start(&deployed);
    std::thread::sleep(Duration::from_secs(2));
    let before_faults = writer.acknowledged();
    for fault in [Fault::Postmaster, Fault::Task] {
        let at = Instant::now();
        let leader = deployed.kill_primary(fault);
        deployed.wait_new_leader(&leader, Duration::from_secs(120));
        let recovered = Instant::now();
        deployed.wait_write_after(&writer, recovered, Duration::from_secs(120));
        eprintln!("{}: {} of {leader}: write gap {:?}", driver.name(), fault.name(), writer.gap_around(at, recovered));
        wait_until("all three members healthy again", Duration::from_secs(240), || deployed.healthy_topology().is_ok());
    }
    std::thread::sleep(Duration::from_secs(1));
    let attempts = writer.stop();
    let lost = lost_rows(&deployed, &attempts);
    assert!(lost.is_empty(), "acknowledged rows lost: {lost:?}");
    let acknowledged: Vec<u64> = attempts.iter().filter(|a| a.ok).map(|a| a.id).collect();
    assert!(acknowledged.len() > 20, "only {} writes were acknowledged", acknowledged.len());

    if driver == StackDriver::Docker {
        // Issue 9 item 3: WAL from before and after both failovers is in the one repository,
        // and the backup taken before them restores, through that WAL, to the last row.
        deployed.archive_current_wal(Duration::from_secs(120));
        let timelines = deployed.archived_timelines();
        assert!(timelines.len() >= 3, "WAL of the first timeline and of both promotions in one repository: {timelines:?}");
        let after_faults: Vec<u64> = acknowledged.iter().copied().filter(|id| !before_faults.contains(id)).collect();
        let wanted: Vec<u64> = [before_faults.first(), before_faults.last(), after_faults.first(), after_faults.last()]
            .into_iter()
            .flatten()
            .copied()
            .collect();
        let leader = deployed.leader().unwrap();
        let restored = deployed.restore_and_read(&leader, &acknowledged);
        let missing: Vec<&u64> = acknowledged.iter().filter(|id| !restored.contains(id)).collect();
        assert!(
            missing.is_empty(),
            "rows missing from the restored copy: {missing:?} (checked {wanted:?} among them; timelines {timelines:?})"
        );
        eprintln!("restore: {} acknowledged rows back, timelines {timelines:?} in the repository", restored.len());
    }

    // A node goes away with everything on it: the cluster keeps serving.
    let leader = deployed.leader().unwrap();
    let leader_node =
        deployed.cluster.allocations("main-postgres").into_iter().find(|a| a.facts.group_name() == leader).unwrap().facts.node_name;
    deployed.cluster.lose_node(&leader_node);
    wait_until("writes through PgBouncer after losing a node", Duration::from_secs(180), || {
        deployed.cluster.address_of("main-pgbouncer", "pgbouncer", "pgbouncer").is_some()
            && deployed.app_sql("INSERT INTO acks (id) VALUES (-1) ON CONFLICT DO NOTHING").status.success()
    });

    let destroy = deployed.pgnomad(&["destroy", "--yes"]);
    assert_ok("pgnomad destroy", &destroy);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let containers = deployed.cluster.running_containers();
        let processes = deployed.cluster.processes_in_task_dirs();
        if containers.is_empty() && processes.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still running 120 s after destroy: containers {containers:?}, processes {processes:?}\nallocations not stopped: {:?}",
            deployed
                .cluster
                .nomad
                .all_allocations()
                .iter()
                .filter(|a| !matches!(a.client_status.as_str(), "complete" | "failed" | "lost"))
                .map(|a| (&a.name, &a.node_name, &a.desired_status, &a.client_status))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The volumes stay: member-0's data directory is still on its node.
    let kept = deployed
        .cluster
        .nodes()
        .iter()
        .filter(|n| match driver {
            StackDriver::Docker => n.csi_volume_path("main-member-0").join("pgdata").exists(),
            StackDriver::Exec => n.host_volumes.get("main-member-0").is_some_and(|v| v.join("pgdata").exists()),
        })
        .count();
    assert_eq!(kept, 1, "member-0's volume is kept on exactly one node");
}

#[test]
fn the_default_stack_runs_on_three_nodes_fails_over_restores_and_is_destroyed() {
    scenario(StackDriver::Docker);
}

#[test]
fn the_default_stack_with_the_exec_driver_runs_as_processes_and_fails_over() {
    scenario(StackDriver::Exec);
}
