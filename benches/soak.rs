//! The long soak and the partition target: `cargo bench --bench soak`
//! (`PGNOMAD_SOAK_CYCLES=N` faults, default 20; `PGNOMAD_SOAK_SEED` replays an order;
//! `PGNOMAD_PARTITION_RUNS=N` primary partitions first, default 5).
//!
//! The default stack (docker, Patroni on etcd3, ttl 10 s) on the cluster double, time scale 0.2
//! (update durations and restart delays; Patroni's timings are real). First N partitions of
//! the primary (tests/support/cluster/faults.rs): when the sampler first saw the old primary
//! not writable, when it first saw another member writable, the write gap through PgBouncer;
//! target: demoted within ttl, write gap ≤ ttl + 2 s (medians). Then the soak: faults in a
//! seeded random order (every kind once per round of five) under a continuous writer, each
//! cycle waiting for full health; a line per cycle and totals, write gaps median and worst
//! per fault kind. Exits non-zero if an acknowledged row was lost, two members were writable
//! at once, or a member acknowledged without the leader lock.

#[path = "../tests/cluster_slot.rs"]
mod cluster_slot;
#[path = "../tests/support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::time::Duration;

use support::cluster::e2e::{lost_rows, median, Deployed, StackDriver, Writer};
use support::cluster::faults::{partition_primary, schedule, seed, soak, Sampler};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|r| r.parse().ok()).unwrap_or(default)
}

fn main() {
    let partitions = env("PGNOMAD_PARTITION_RUNS", 5);
    let cycles = env("PGNOMAD_SOAK_CYCLES", 20);
    let seed = seed();
    let faults = schedule(seed, cycles);
    println!("soak seed {seed}: {faults:?}");
    let deployed = Deployed::new(StackDriver::Docker, 0.2);
    deployed.run_until_healthy();
    let mut failed = Vec::new();

    if partitions > 0 {
        let members: Vec<String> = (0..3).map(|i| format!("member-{i}")).collect();
        let sampler = Sampler::start(&deployed.cluster.id, &deployed.cluster.etcd.endpoint, "main", &members, Duration::from_millis(200));
        let writer = Writer::start(&deployed);
        std::thread::sleep(Duration::from_secs(2));
        let (mut demoted, mut promoted, mut gaps) = (Vec::new(), Vec::new(), Vec::new());
        for run in 1..=partitions {
            let p = partition_primary(&deployed, &writer, &sampler);
            println!(
                "partition {run}: {} demoted after {:.2} s, leader key free after {}, taken after {}, {} writable after {:.2} s, first write through PgBouncer after {}, write gap {:.2} s, {} client errors, pg_rewind: {}, streaming again after {:.1} s, all healthy: {:?}",
                p.old,
                p.demoted_after.as_secs_f64(),
                seconds(p.lock_free_after),
                seconds(p.lock_taken_after),
                p.new,
                p.promoted_after.as_secs_f64(),
                seconds(p.routed_after),
                p.gap.as_secs_f64(),
                p.errors,
                p.rewound,
                p.rejoined_after.as_secs_f64(),
                p.whole
            );
            let broken = p.whole.is_err();
            demoted.push(p.demoted_after);
            promoted.push(p.promoted_after);
            gaps.push(p.gap);
            if broken {
                println!("partition {run} left the cluster unhealthy: no further runs");
                failed.push(format!("partition {run}: {:?}", p.whole));
                break;
            }
        }
        std::thread::sleep(Duration::from_secs(1));
        let attempts = writer.stop();
        let observations = sampler.stop();
        let lost = lost_rows(&deployed, &attempts);
        let (worst_demote, worst_gap) = (*demoted.iter().max().unwrap(), *gaps.iter().max().unwrap());
        println!(
            "partitions (n={}): demoted after median {:.2} s (worst {:.2} s), new primary writable after median {:.2} s, write gap median {:.2} s (worst {:.2} s); target: demoted ≤ ttl 10 s, gap ≤ 12 s; {} lost, {} times two writable, {} acks without the lock",
            gaps.len(),
            median(demoted.clone()).as_secs_f64(),
            worst_demote.as_secs_f64(),
            median(promoted).as_secs_f64(),
            median(gaps.clone()).as_secs_f64(),
            worst_gap.as_secs_f64(),
            lost.len(),
            observations.two_writable().len(),
            observations.acks_without_lock(&attempts, Duration::from_secs(1)).len()
        );
        if !lost.is_empty()
            || !observations.two_writable().is_empty()
            || !observations.acks_without_lock(&attempts, Duration::from_secs(1)).is_empty()
        {
            failed.push("partitions broke safety".to_string());
        }
    }

    if cycles > 0 {
        let outcome = soak(&deployed, &faults);
        println!("{}", outcome.report());
        if !outcome.lost.is_empty() || !outcome.two_writable.is_empty() || !outcome.acks_without_lock.is_empty() {
            failed.push(format!("soak broke safety: {:?} {:?} {:?}", outcome.lost, outcome.two_writable, outcome.acks_without_lock));
        }
    }
    if !failed.is_empty() {
        eprintln!("{failed:?}");
        std::process::exit(1);
    }
}

fn seconds(at: Option<Duration>) -> String {
    at.map_or_else(|| "-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()))
}
