//! Rolling-upgrade benchmark on the Nomad path: `cargo bench --bench nomad_upgrade`
//! (`NOMAD_BENCH_RUNS=N` upgrades, default 3).
//!
//! The real `pgnomad` binary runs the default stack (3 members, docker driver, Patroni on
//! etcd3, pgAdmin off) on the cluster double (tests/support/cluster) in real time
//! (`time_scale` 1.0: the jobs' own update durations, restart delays and check intervals).
//! Each run changes every member's memory (1100 MB, 1200 MB, …) and runs `pgnomad upgrade`
//! with pgbench (4 clients) and a writer (one insert every 100 ms, one psql each) going
//! through the PgBouncer container. Measures, per run:
//! - the upgrade's total time (the command, start to exit 0);
//! - each member's update (registration, deployment, until it streams again) and the
//!   switchover, from the upgrade's own report;
//! - the longest write pause: the longest time between two acknowledged inserts;
//! - pgbench's failed transactions and the writer's errors (must be 0);
//!
//! and checks the target: total ≤ 3 × (one member's update) + the switchover.

#[path = "../tests/cluster_slot.rs"]
mod cluster_slot;
#[path = "../tests/support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use support::cluster::e2e::{assert_ok, lost_rows, median, wait_until, Deployed, Pgbench, StackDriver, Writer};

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn main() {
    let runs: usize = std::env::var("NOMAD_BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let deployed = Deployed::new(StackDriver::Docker, 1.0);
    let run = deployed.pgnomad(&["run", "--timeout", "15m"]);
    assert_ok("pgnomad run", &run);
    wait_until("one leader, two streaming replicas, a synchronous standby", Duration::from_secs(300), || {
        deployed.healthy_topology().is_ok()
    });
    Pgbench::init(&deployed);

    let (mut totals, mut pauses, mut members, mut switchovers, mut failed_all) = (vec![], vec![], vec![], vec![], vec![]);
    for run in 0..runs {
        wait_until("all three members healthy", Duration::from_secs(300), || deployed.healthy_topology().is_ok());
        let writer = Writer::start(&deployed);
        let pgbench = Pgbench::start(&deployed);
        std::thread::sleep(Duration::from_secs(3));
        deployed.set_stack(&format!("postgres {{\n  memory = {}\n}}", 1100 + 100 * run));
        let started = Instant::now();
        let out = deployed.pgnomad(&["upgrade", "--json", "--timeout", "20m"]);
        let total = started.elapsed();
        assert_ok("pgnomad upgrade", &out);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        deployed.wait_write_after(&writer, Instant::now(), Duration::from_secs(30));
        let (processed, failed, aborted) = pgbench.finish();
        let acks: Vec<Instant> = {
            let mut acks: Vec<Instant> = writer.snapshot().iter().filter(|a| a.ok).map(|a| a.started + a.took).collect();
            acks.sort();
            acks
        };
        let pause = acks.windows(2).filter(|w| w[1] >= started && w[0] <= started + total).map(|w| w[1] - w[0]).max().unwrap();
        let attempts = writer.stop();
        let errors = attempts.iter().filter(|a| !a.ok).count();
        let lost = lost_rows(&deployed, &attempts);
        let took = |kind: &str| -> Vec<Duration> {
            report["steps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| s["step"] == kind && s["status"] == "done")
                .map(|s| Duration::from_secs_f64(s["took"].as_f64().unwrap()))
                .collect()
        };
        let updates = took("update");
        let switchover = took("switchover").first().copied().unwrap_or_default();
        let held = report["switchover"]["took"].as_f64().unwrap_or(0.0);
        println!(
            "run {}: upgrade {}; member updates {}; switchover step {} (clients held {held:.2} s); longest write pause {}; pgbench {processed} transactions, {failed} failed, {} runs aborted; writer {errors} errors, {} acknowledged rows lost",
            run + 1,
            secs(total),
            updates.iter().map(|d| secs(*d)).collect::<Vec<_>>().join(", "),
            secs(switchover),
            secs(pause),
            aborted.len(),
            lost.len()
        );
        assert!(lost.is_empty() && errors == 0 && aborted.is_empty(), "client errors or lost rows: {aborted:?} {lost:?}");
        totals.push(total);
        pauses.push(pause);
        members.extend(updates);
        switchovers.push(switchover);
        failed_all.push(failed);
    }
    let member = median(members.clone());
    let switchover = median(switchovers.clone());
    let total = median(totals.clone());
    let bound = member * 3 + switchover;
    let pause = median(pauses.clone());
    println!(
        "median of {runs}: upgrade {} (range {}–{}), one member's update {}, switchover step {}, longest write pause {} (range {}–{}); pgbench failed per run {failed_all:?}",
        secs(total),
        secs(*totals.iter().min().unwrap()),
        secs(*totals.iter().max().unwrap()),
        secs(member),
        secs(switchover),
        secs(pause),
        secs(*pauses.iter().min().unwrap()),
        secs(*pauses.iter().max().unwrap()),
    );
    println!(
        "targets: median pause {} ≤ 2.5 s: {}; 0 failed: {}; total {} ≤ 3 × {} + {} = {}: {}",
        secs(pause),
        pause <= Duration::from_millis(2500),
        failed_all.iter().all(|f| *f == 0),
        secs(total),
        secs(member),
        secs(switchover),
        secs(bound),
        total <= bound
    );
    let destroy = deployed.pgnomad(&["destroy", "--yes"]);
    assert_ok("pgnomad destroy", &destroy);
}
