//! Rolling-upgrade benchmark of `pgnomad dev`: `cargo bench --bench dev_upgrade`
//! (upgrades: `DEV_UPGRADE_RUNS`, default 3).
//!
//! One 3-member dev cluster; each run flips `max_connections` (250 ↔ 300, a parameter that
//! needs a restart) and runs `pgnomad dev upgrade` with a writer inserting a row every
//! 100 ms through PgBouncer and pgbench (4 clients) through PgBouncer. Medians of: the
//! upgrade's total time, the longest time without an acknowledged write, one replica's
//! restart and catch-up, and the switchover's client hold; pgbench's failed transactions and
//! the writer's errors and lost rows, per run.
//!
//! Needs root (or the postgres user) and the programs of `pgnomad dev`, plus pgbench.

#[path = "../tests/cluster_slot.rs"]
mod cluster_slot;
#[path = "../tests/support_dev.rs"]
mod support_dev;
#[path = "../tests/support_procs.rs"]
#[allow(dead_code)]
mod support_procs;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support_dev::*;
use support_procs::text;

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    sorted[sorted.len() / 2]
}

fn pgbench(dev: &DevCluster, args: &[&str]) -> Command {
    let mut cmd = Command::new("pgbench");
    cmd.args(["-h", "127.0.0.1", "-p", &dev.pgbouncer_port(), "-U", "app", "-d", "app"])
        .args(args)
        .env("PGPASSFILE", dev.pgpass())
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null());
    cmd
}

fn main() {
    let runs: usize = std::env::var("DEV_UPGRADE_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let dev = DevCluster::up("bench-upgrade", 3);
    let primary = dev.primary().expect("a primary");
    dev.wait_streaming(primary, Duration::from_secs(60));
    let out = pgbench(&dev, &["-i", "-s", "1", "-q"]).output().unwrap();
    assert!(out.status.success(), "pgbench -i: {}", text(&out.stderr));

    let (mut totals, mut pauses, mut holds, mut restarts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut failed, mut errors, mut lost, mut timelines) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let value = if run % 2 == 0 { "250" } else { "300" };
        let stack = stack_text(&dev.cluster, 3)
            .replace("  members = 3\n", &format!("  members = 3\n  parameters = {{ max_connections = \"{value}\" }}\n"));
        std::fs::write(&dev.stack_file, stack).unwrap();
        let writer = Writer::start(&dev);
        std::thread::sleep(Duration::from_secs(1));
        // Into a file: a pipe read only at the end would stall pgbench once full.
        let bench_out = dev.dir.path().join("pgbench.out");
        let mut bench = pgbench(&dev, &["-n", "-c", "4", "-j", "2", "-T", "45"])
            .stdout(std::fs::File::create(&bench_out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(2));
        let started = Instant::now();
        let out = dev.dev(&["upgrade", "--json"]).output().unwrap();
        let took = started.elapsed();
        let report: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}{}", text(&out.stdout), text(&out.stderr)));
        assert!(out.status.success(), "upgrade failed: {}{}", text(&out.stdout), text(&out.stderr));
        writer.wait_ack_after(Instant::now(), Duration::from_secs(10));
        let bench_status = bench.wait().unwrap();
        let attempts = writer.stop();
        let summary = std::fs::read_to_string(&bench_out).unwrap();
        let failed_now = summary
            .lines()
            .find_map(|l| l.trim().strip_prefix("number of failed transactions:"))
            .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            + u64::from(!bench_status.success());
        let new_primary = dev.primary().expect("a primary");
        totals.push(took.as_secs_f64());
        pauses.push(longest_gap(&attempts, started, started + took).as_secs_f64());
        failed.push(failed_now);
        errors.push(attempts.iter().filter(|a| !a.acknowledged).count());
        lost.push(lost_on(&dev, new_primary, &attempts).len());
        timelines.push(report["steps"].as_array().unwrap().iter().filter(|s| s["step"] == "switchover" && s["status"] == "done").count());
        if let Some(s) = report["switchover"].as_object() {
            holds.push(s["took"].as_f64().unwrap_or_default());
        }
        for s in report["steps"].as_array().unwrap() {
            if s["step"] == "restart" && s["if_pending"] == false && s["status"] == "done" {
                restarts.push(s["took"].as_f64().unwrap_or_default());
            }
            // A lowered value: the leader restarted in place, PgBouncer paused meanwhile.
            if s["step"] == "restart-leader" && s["status"] == "done" {
                eprintln!(
                    "run {}: {} ({:.1} s in all)",
                    run + 1,
                    s["detail"].as_str().unwrap_or_default(),
                    s["took"].as_f64().unwrap_or_default()
                );
            }
        }
        eprintln!(
            "run {}: max_connections → {value}: {:.1} s, longest write pause {:.2} s, pgbench failed {failed_now}, writer errors {}",
            run + 1,
            took.as_secs_f64(),
            pauses.last().unwrap(),
            errors.last().unwrap()
        );
        dev.wait_streaming(new_primary, Duration::from_secs(60));
    }
    let list = |v: &[usize]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(" ");
    println!("| figure ({runs} upgrades, 3 members) | median | per run |");
    println!("|---|---|---|");
    let per = |v: &[f64]| v.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>().join(" ");
    println!("| total upgrade time | {:.1} s | {} |", median(&totals), per(&totals));
    println!("| longest write pause | {:.2} s | {} |", median(&pauses), per(&pauses));
    println!("| switchover: clients held | {:.2} s | {} |", median(&holds), per(&holds));
    println!("| one replica's restart + catch-up | {:.1} s | {} |", median(&restarts), per(&restarts));
    println!("| pgbench failed transactions | | {} |", failed.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(" "));
    println!("| writer errors / acknowledged rows lost | | {} / {} |", list(&errors), list(&lost));
    println!("| switchovers per upgrade | | {} |", list(&timelines));
    let budget = 3.0 * median(&restarts) + median(&holds);
    println!("\ntarget: total ≤ 3 × (restart + catch-up) + switchover = {budget:.1} s; median pause ≤ 2.5 s");
}
