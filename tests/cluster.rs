//! What pgnomad sends to Nomad, run for real: the real binary deploys the default stack
//! (Patroni on etcd3) to the cluster double, whose clients run every task on three nodes with
//! their own addresses — as containers of pgnomad's own image with the docker driver, as
//! chrooted processes with `driver = "exec"`.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::cluster::e2e::{assert_ok, lost_rows, text, wait_until, Deployed, Fault, StackDriver, Writer};

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

/// The whole life of the stack on three nodes with `driver`.
fn scenario(driver: StackDriver) {
    let deployed = Deployed::new(driver, 0.2);
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

    // The stanza exists (created by the rendered callback on promotion) and WAL is archived.
    let info = pgbackrest_info(&deployed);
    assert_eq!(info[0]["name"], "main", "{info}");
    assert!(info[0]["db"][0]["system-id"].as_u64().is_some(), "the stanza knows the cluster: {info}");
    assert!(info[0]["archive"][0]["max"].as_str().is_some(), "WAL is archived: {info}");

    // A forced full backup runs as a child of the periodic job and lands in the repository.
    forced_full_backup(&deployed);
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
        writer.wait_ack_after(recovered, Duration::from_secs(120));
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
