//! Failover benchmark of `pgnomad dev`: `cargo bench --bench dev_failover`
//! (runs per figure: `DEV_BENCH_RUNS`, default 5).
//!
//! With a writer inserting a row every 100 ms through PgBouncer (one psql per insert),
//! measures medians of:
//! - bootstrap: `pgnomad dev up` from an empty state directory until every replica streams,
//! - the write gap (last acknowledged insert before the event to the first after it) after
//!   kill -9 of the primary's postmaster, and after kill -9 of the whole member (Patroni and
//!   Postgres),
//! - the write gap of `pgnomad dev switchover` with and without PgBouncer's PAUSE,
//! - client errors in each, and acknowledged rows missing on the new primary.
//!
//! Needs root (or the postgres user) and the programs of `pgnomad dev`.

#[path = "../tests/cluster_slot.rs"]
mod cluster_slot;
#[path = "../tests/support_dev.rs"]
mod support_dev;
#[path = "../tests/support_procs.rs"]
#[allow(dead_code)]
mod support_procs;

use std::time::{Duration, Instant};

use support_dev::*;

#[derive(Default)]
struct Figure {
    gaps: Vec<Duration>,
    /// Client error messages (first line) and how often each came.
    messages: std::collections::BTreeMap<String, usize>,
    errors: Vec<usize>,
    lost: Vec<usize>,
}

fn median(values: &[Duration]) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn row(what: &str, figure: &Figure, target: &str) -> String {
    if figure.gaps.is_empty() {
        return format!("| {what} | not measured | | | {target} |");
    }
    let (min, max) = (figure.gaps.iter().min().unwrap(), figure.gaps.iter().max().unwrap());
    format!(
        "| {what} | {} ({}–{}) | {} | {} | {target} |",
        secs(median(&figure.gaps)),
        secs(*min),
        secs(*max),
        figure.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(" "),
        figure.lost.iter().sum::<usize>()
    )
}

/// Runs `event`, waits for a new primary and a write after it, and records the gap, the
/// client errors and the acknowledged rows missing on the new primary; then waits until the
/// old primary streams again.
fn measure(dev: &DevCluster, writer: &Writer, figure: &mut Figure, event: impl FnOnce(usize)) {
    let old = dev.primary().expect("a primary");
    dev.wait_streaming(old, Duration::from_secs(180));
    std::thread::sleep(Duration::from_secs(2));
    let at = Instant::now();
    event(old);
    let new = dev.wait_new_primary(Some(old), Duration::from_secs(90));
    let over = Instant::now();
    writer.wait_ack_after(over, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    let attempts = writer.snapshot();
    figure.gaps.push(longest_gap(&attempts, at, over));
    let errors = errors_between(&attempts, at - Duration::from_secs(1), Instant::now());
    for error in &errors {
        let first = error.error.lines().next().unwrap_or("").to_owned();
        *figure.messages.entry(first).or_default() += 1;
    }
    figure.errors.push(errors.len());
    figure.lost.push(lost_on(dev, new, &attempts).len());
    eprintln!("  gap {} errors {} lost {}", secs(*figure.gaps.last().unwrap()), figure.errors.last().unwrap(), figure.lost.last().unwrap());
}

fn main() {
    let runs: usize = std::env::var("DEV_BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    // DEV_BENCH_PARTS=postmaster,switchover measures only those (bootstrap, postmaster,
    // member, switchover; default all).
    let parts = std::env::var("DEV_BENCH_PARTS").unwrap_or_else(|_| "bootstrap,postmaster,member,switchover".into());
    let part = |name: &str| parts.split(',').any(|p| p.trim() == name);
    let started = Instant::now();

    let bootstrap_runs = if part("bootstrap") { runs } else { 1 };
    eprintln!("bootstrap ×{bootstrap_runs}");
    let mut bootstraps = Vec::new();
    let mut dev = None;
    for run in 0..bootstrap_runs {
        let cluster = DevCluster::up("bench", 3);
        eprintln!("  {}", secs(cluster.up_took));
        bootstraps.push(cluster.up_took);
        if run + 1 == bootstrap_runs {
            dev = Some(cluster);
        }
    }
    let dev = dev.unwrap();
    let sampler = SplitBrainSampler::start(&dev);
    let writer = Writer::start(&dev);

    let (mut postmaster, mut member, mut plain, mut paused) = (Figure::default(), Figure::default(), Figure::default(), Figure::default());
    let mut held = Vec::new();
    for _ in 0..if part("postmaster") { runs } else { 0 } {
        eprintln!("postmaster kill");
        measure(&dev, &writer, &mut postmaster, |old| kill9(dev.pid(old, "postmaster_pid")));
    }
    for _ in 0..if part("member") { runs } else { 0 } {
        eprintln!("member kill");
        measure(&dev, &writer, &mut member, |old| {
            kill9(dev.pid(old, "patroni_pid"));
            kill9(dev.pid(old, "postmaster_pid"));
        });
    }
    for _ in 0..if part("switchover") { runs } else { 0 } {
        eprintln!("switchover without pause");
        measure(&dev, &writer, &mut plain, |_| {
            let out = dev.dev(&["switchover", "--no-pause"]).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        });
    }
    for _ in 0..if part("switchover") { runs } else { 0 } {
        eprintln!("switchover with PgBouncer pause");
        measure(&dev, &writer, &mut paused, |_| {
            let out = dev.dev(&["switchover"]).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            // "…; clients held for 1.23 s"
            let said = String::from_utf8_lossy(&out.stdout).to_string();
            let seconds: f64 =
                said.rsplit("held for ").next().and_then(|s| s.trim().trim_end_matches(" s").parse().ok()).unwrap_or(f64::NAN);
            held.push(Duration::from_secs_f64(seconds));
        });
    }
    let attempts = writer.stop();
    let (samples, violations) = sampler.stop();
    let ttl = 10;

    println!("Runs per figure: {runs}; stack: 3 members, etcd, ttl {ttl}, loop_wait 2, retry_timeout 4, synchronous_mode on, primary_start_timeout 0.");
    println!(
        "Writer: one psql per insert through PgBouncer every 100 ms; {} inserts, {} acknowledged.",
        attempts.len(),
        attempts.iter().filter(|a| a.acknowledged).count()
    );
    println!();
    println!("| what | median (min–max) | client errors per run | acked rows lost | target |");
    println!("|---|---|---|---|---|");
    println!("| bootstrap: `dev up`, empty state dir → all replicas streaming, sync standby, app login through PgBouncer | {} ({}–{}) | — | — | — |", secs(median(&bootstraps)), secs(*bootstraps.iter().min().unwrap()), secs(*bootstraps.iter().max().unwrap()));
    println!("{}", row("write gap, kill -9 of the primary's postmaster", &postmaster, "≤ 4 s, 0 lost"));
    println!(
        "{}",
        row("write gap, kill -9 of the whole member (Patroni + Postgres)", &member, &format!("≤ ttl + 2 s = {} s, 0 lost", ttl + 2))
    );
    println!("{}", row("write gap, `dev switchover --no-pause`", &plain, "—"));
    println!("{}", row("write gap, `dev switchover` (PgBouncer PAUSE/RESUME)", &paused, "0 errors, ≤ 2.5 s"));
    if !held.is_empty() {
        println!(
            "| PAUSE → RESUME as `dev switchover` reports it | {} ({}–{}) | — | — | ≤ 2.5 s |",
            secs(median(&held)),
            secs(*held.iter().min().unwrap()),
            secs(*held.iter().max().unwrap())
        );
    }
    println!();
    for (what, figure) in [
        ("postmaster kill", &postmaster),
        ("member kill", &member),
        ("switchover without pause", &plain),
        ("switchover with pause", &paused),
    ] {
        for (message, count) in &figure.messages {
            println!("- {what}: {count} × `{message}`");
        }
    }
    println!();
    println!(
        "Split brain: {samples} samples of every member's pg_is_in_recovery() every 200 ms, {} with two writable members.",
        violations.len()
    );
    println!("Whole benchmark: {:.0} s.", started.elapsed().as_secs_f64());
}
