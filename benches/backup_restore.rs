//! Backup and restore benchmark: `cargo bench --bench backup_restore`
//! (rounds: `BACKUP_BENCH_RUNS`, default 3; pgbench scale: `BACKUP_BENCH_SCALE`, default 35,
//! about 550 MB).
//!
//! On a one-member `pgnomad dev` cluster with the shipped defaults (an encrypted repository,
//! the shipped process-max and compression), back to back in each round, on one machine:
//! - a pgBackRest full backup (`pgnomad dev backup full`, the rendered backup.sh) against
//!   `pg_basebackup` of the same data (plain format, WAL streamed, fast checkpoint — what
//!   `start-fast=y` does), as a ratio; target ≤ 1.0; and pgBackRest with its own defaults
//!   (gzip level 6, one process), the reason for the shipped ones;
//! - a pgBackRest restore of that backup into an empty directory against copying the base
//!   backup back (`cp -a`, then `sync -f`), as a ratio.
//!
//! `BACKUP_BENCH_VARIANTS` adds, per round, a bare `pgbackrest backup` (no stanza-create,
//! expire or info around it) for each `;`-separated set of pgBackRest options on top of the
//! backup job's config, e.g. `"";--process-max=4;--compress-type=none` (`""`: as shipped):
//! how the shipped settings were chosen.
//!
//! Needs root (or the postgres user) and the programs of `pgnomad dev`.

#[path = "../tests/cluster_slot.rs"]
mod cluster_slot;
#[path = "../tests/support_dev.rs"]
mod support_dev;
#[path = "../tests/support_procs.rs"]
#[allow(dead_code)]
mod support_procs;

use std::process::Command;
use std::time::{Duration, Instant};

use support_dev::*;
use support_procs::*;

fn median(values: &[Duration]) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn timed(what: &str, cmd: &mut Command) -> Duration {
    let started = Instant::now();
    run_ok(what, cmd);
    started.elapsed()
}

fn main() {
    let runs: usize = std::env::var("BACKUP_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let scale: u32 = std::env::var("BACKUP_BENCH_SCALE").ok().and_then(|v| v.parse().ok()).unwrap_or(35);
    let dev = DevCluster::up("bench", 1);
    let (run_dir, port) = (dev.run_dir(0), dev.pg_port(0).to_string());
    let pgbench = pg_bin("pgbench");
    eprintln!("pgbench -i -s {scale}");
    run_ok(
        "pgbench -i",
        as_postgres(&pgbench).arg("-h").arg(&run_dir).args(["-p", &port, "-i", "-s", &scale.to_string(), "-q", "postgres"]),
    );
    let size = dev.member_sql(0, "postgres", "CHECKPOINT; SELECT sum(pg_database_size(oid)) FROM pg_database").unwrap();
    let size_mb = size.lines().last().unwrap().parse::<u64>().unwrap() / 1_000_000;
    eprintln!("databases: {size_mb} MB");
    let password = dev.secrets()["replication_password"].as_str().unwrap().to_owned();
    let scratch = dev.dir.path().join("scratch");
    let conf = dev.state_dir.join("member-0/config/pgbackrest.conf");

    let backup_conf = dev.state_dir.join("backup-full/config/pgbackrest.conf");
    let variants: Vec<String> = std::env::var("BACKUP_BENCH_VARIANTS")
        .map(|v| v.split(';').map(|set| set.trim().trim_matches('"').to_owned()).collect())
        .unwrap_or_default();
    let mut variant_times: Vec<Vec<Duration>> = vec![vec![]; variants.len()];
    let (mut backups, mut upstream, mut basebackups, mut restores, mut copies) = (vec![], vec![], vec![], vec![], vec![]);
    for round in 0..runs {
        let _ = std::fs::remove_dir_all(&scratch);
        run_ok("mkdir scratch", as_postgres("mkdir").arg(&scratch));
        let (base, restored, copied) = (scratch.join("base"), scratch.join("restored"), scratch.join("copied"));

        // pgBackRest's own defaults (gzip level 6, one process), for the shipped ones' why;
        // first, so that the restore below restores the backup of the shipped defaults.
        upstream.push(timed(
            "pgbackrest backup with pgBackRest's defaults",
            as_postgres(require("pgbackrest", "pgbackrest")).arg(format!("--config={}", backup_conf.display())).args([
                "--stanza=bench",
                "--type=full",
                "--compress-type=gz",
                "--compress-level=6",
                "--process-max=1",
                "backup",
            ]),
        ));
        for (options, times) in variants.iter().zip(&mut variant_times) {
            times.push(timed(
                "pgbackrest backup (variant)",
                as_postgres(require("pgbackrest", "pgbackrest"))
                    .arg(format!("--config={}", backup_conf.display()))
                    .args(["--stanza=bench", "--type=full"])
                    .args(options.split_whitespace())
                    .arg("backup"),
            ));
            eprintln!("round {round}: bare backup [{options}] {:.1} s", times[round].as_secs_f64());
        }
        backups.push(timed("pgnomad dev backup full", &mut dev.dev(&["backup", "full"])));
        basebackups.push(timed(
            "pg_basebackup",
            as_postgres(pg_bin("pg_basebackup"))
                .args(["-h", "127.0.0.1", "-p", &port, "-U", "replicator", "-D"])
                .arg(&base)
                .args(["-Fp", "-X", "stream", "-c", "fast"])
                .env("PGPASSWORD", &password),
        ));
        // Both sides of each pair write durably: pgBackRest and pg_basebackup fsync what they
        // write, and the copy is followed by `sync -f` of its file system.
        restores.push(timed(
            "pgbackrest restore",
            as_postgres(require("pgbackrest", "pgbackrest"))
                .arg(format!("--config={}", conf.display()))
                .args(["--stanza=bench", "--type=immediate", "--target-action=promote"])
                .arg(format!("--pg1-path={}", restored.display()))
                .arg("restore"),
        ));
        let started = Instant::now();
        run_ok("cp -a", as_postgres("cp").arg("-a").arg(&base).arg(&copied));
        run_ok("sync -f", Command::new("sync").arg("-f").arg(&copied));
        copies.push(started.elapsed());
        eprintln!(
            "round {round}: backup {:.1} s (pgBackRest's defaults {:.1} s), pg_basebackup {:.1} s, restore {:.1} s, cp {:.1} s",
            backups[round].as_secs_f64(),
            upstream[round].as_secs_f64(),
            basebackups[round].as_secs_f64(),
            restores[round].as_secs_f64(),
            copies[round].as_secs_f64()
        );
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let (b, bb, r, c) = (median(&backups), median(&basebackups), median(&restores), median(&copies));
    println!("| what ({size_mb} MB, {runs} rounds) | pgBackRest | baseline | ratio | target |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| full backup vs pg_basebackup | {:.1} s | {:.1} s | {:.2} | ≤ 1.0 |",
        b.as_secs_f64(),
        bb.as_secs_f64(),
        b.as_secs_f64() / bb.as_secs_f64()
    );
    let u = median(&upstream);
    println!(
        "| full backup, pgBackRest's defaults (gzip-6, 1 process), vs pg_basebackup | {:.1} s | {:.1} s | {:.2} | |",
        u.as_secs_f64(),
        bb.as_secs_f64(),
        u.as_secs_f64() / bb.as_secs_f64()
    );
    for (options, times) in variants.iter().zip(&variant_times) {
        let v = median(times);
        let shown = if options.is_empty() { "as shipped" } else { options.as_str() };
        println!(
            "| bare `pgbackrest backup`, {shown}, vs pg_basebackup | {:.1} s | {:.1} s | {:.2} | |",
            v.as_secs_f64(),
            bb.as_secs_f64(),
            v.as_secs_f64() / bb.as_secs_f64()
        );
    }
    println!(
        "| restore vs cp -a of the base backup | {:.1} s | {:.1} s | {:.2} | |",
        r.as_secs_f64(),
        c.as_secs_f64(),
        r.as_secs_f64() / c.as_secs_f64()
    );
}
