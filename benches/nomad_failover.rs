//! Failover benchmark on the Nomad path: `cargo bench --bench nomad_failover`
//! (`NOMAD_BENCH_RUNS=N` faults of each kind, default 5).
//!
//! The real `pgnomad` binary runs the default stack (docker driver, Patroni on etcd3, pgAdmin
//! off) on the cluster double (tests/support/cluster) in real time (`time_scale` 1.0: update
//! durations, restart delays and check intervals as the jobs say). Measures:
//! - `pgnomad run` from a fresh cluster until it exits 0 (the postgres deployment healthy,
//!   Consul shows one primary, PgBouncer's deployment healthy), and until Patroni also reports
//!   two streaming replicas and a synchronous standby;
//! - the write gap through PgBouncer (a writer inserts a row every 100 ms, one psql per
//!   insert): from the end of the last acknowledged insert that started before the fault to the
//!   end of the first acknowledged one after it, after kill -9 of the primary's postmaster and
//!   after `docker kill` of the primary's patroni container; medians of N;
//! - client errors during each gap and acknowledged rows lost (must be 0).
//!
//! The path measured is Patroni's failover, then the Consul check of `<c>-primary` passing on
//! the new leader (its interval), then PgBouncer's template `wait`, then SIGHUP.

#[path = "../tests/cluster_slot.rs"]
mod cluster_slot;
#[path = "../tests/support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::cluster::e2e::{http_get, lost_rows, median, wait_until, Deployed, Fault, StackDriver, Writer};

/// When, after a fault, each stage of the path first showed the new primary: Patroni's
/// `/cluster`, Consul's passing `main-primary` instance, and the address in the writer's
/// PgBouncer's rendered `pgbouncer.ini`. Polled every 50 ms from the bench's side.
struct Trace {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(&'static str, Duration, String)>>>,
    handle: std::thread::JoinHandle<()>,
}

impl Trace {
    fn start(deployed: &Deployed, at: Instant) -> Trace {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let consul = deployed.cluster.consul.address().trim_start_matches("http://").to_string();
        let pgbouncer = deployed.pgbouncer_address();
        let ini = deployed
            .cluster
            .allocations("main-pgbouncer")
            .into_iter()
            .find(|a| a.facts.ports.iter().any(|p| format!("{}:{}", p.host_ip, p.value) == pgbouncer))
            .map(|a| {
                deployed
                    .cluster
                    .node(&a.facts.node_name)
                    .root
                    .join("allocs")
                    .join(&a.facts.alloc_id)
                    .join("pgbouncer/secrets/pgbouncer.ini")
            })
            .expect("the writer's PgBouncer allocation");
        // Patroni's view is read on its own thread: a dead member's REST API can take seconds.
        let members: Vec<String> =
            (0..3).filter_map(|i| deployed.cluster.address_of("main-postgres", &format!("member-{i}"), "patroni")).collect();
        let handle = {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut last: [Option<String>; 3] = [None, None, None];
                while !stop.load(Ordering::Relaxed) {
                    let leader = members.iter().find_map(|address| {
                        let body = http_get(address, "/cluster")?;
                        let cluster: serde_json::Value = serde_json::from_str(&body).ok()?;
                        cluster["members"]
                            .as_array()?
                            .iter()
                            .find(|m| m["role"] == "leader" && m["state"] == "running")
                            .map(|m| m["host"].as_str().unwrap_or("?").to_string())
                    });
                    let primary = http_get(&consul, "/v1/health/service/main-primary?passing")
                        .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
                        .and_then(|v| {
                            v.as_array().and_then(|a| a.first()).map(|e| e["Service"]["Address"].as_str().unwrap_or("?").to_string())
                        });
                    let rendered = std::fs::read_to_string(&ini).ok().and_then(|t| {
                        t.lines()
                            .find(|l| l.starts_with("app ="))
                            .and_then(|l| l.split_whitespace().find(|w| w.starts_with("host=")))
                            .map(str::to_string)
                    });
                    for (i, (stage, value)) in
                        [("patroni leader", leader), ("consul primary", primary), ("pgbouncer.ini", rendered)].into_iter().enumerate()
                    {
                        if value != last[i] {
                            seen.lock().unwrap().push((stage, at.elapsed(), value.clone().unwrap_or_else(|| "none".into())));
                            last[i] = value;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        Trace { stop, seen, handle }
    }

    fn finish(self) -> String {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap();
        let seen = self.seen.lock().unwrap();
        seen.iter().map(|(stage, t, value)| format!("{stage} {value} at {:+.2}s", t.as_secs_f64())).collect::<Vec<_>>().join("; ")
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn main() {
    // `cargo bench` passes --bench; nothing else is taken.
    let runs: usize = std::env::var("NOMAD_BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    let deployed = Deployed::new(StackDriver::Docker, 1.0);
    let started = Instant::now();
    let run = deployed.pgnomad(&["run", "--timeout", "15m"]);
    support::cluster::e2e::assert_ok("pgnomad run", &run);
    let run_took = started.elapsed();
    wait_until("one leader, two streaming replicas, a synchronous standby", Duration::from_secs(300), || {
        deployed.healthy_topology().is_ok()
    });
    let healthy_took = started.elapsed();
    println!("pgnomad run → exit 0: {}; → every replica streaming and a sync standby: {}", secs(run_took), secs(healthy_took));

    let writer = Writer::start(&deployed);
    for fault in [Fault::Postmaster, Fault::Task] {
        let mut gaps = Vec::new();
        let mut errors = Vec::new();
        for run in 0..runs {
            wait_until("all three members healthy", Duration::from_secs(300), || deployed.healthy_topology().is_ok());
            // Writes have gone through PgBouncer for 3 s: it points at the current primary.
            std::thread::sleep(Duration::from_secs(3));
            let at = Instant::now();
            let trace = Trace::start(&deployed, at);
            let leader = deployed.kill_primary(fault);
            deployed.wait_new_leader(&leader, Duration::from_secs(180));
            let elected = at.elapsed();
            let recovered = Instant::now();
            writer.wait_ack_after(recovered, Duration::from_secs(180));
            let gap = writer.gap_around(at, recovered).expect("acknowledged writes on both sides of the fault");
            std::thread::sleep(Duration::from_millis(300));
            println!("  trace: {}", trace.finish());
            // What the writer saw from the fault to the first acknowledged insert after it:
            // acknowledgements by start time, failures by message.
            let seen = writer.snapshot();
            let window: Vec<_> =
                seen.iter().filter(|a| a.started + a.took > at && a.started <= recovered + Duration::from_millis(300)).collect();
            let oks: Vec<String> =
                window.iter().filter(|a| a.ok).map(|a| format!("{:+.1}s", a.started.saturating_duration_since(at).as_secs_f64())).collect();
            let mut failures = std::collections::BTreeMap::<String, usize>::new();
            for a in window.iter().filter(|a| !a.ok) {
                *failures.entry(a.error.rsplit("failed: ").next().unwrap_or_default().chars().take(90).collect()).or_default() += 1;
            }
            println!("  new leader after {}; acknowledged inserts started at {}; failures {failures:?}", secs(elected), oks.join(" "));
            let failed = {
                let attempts = writer.snapshot();
                attempts.iter().filter(|a| !a.ok && a.started + a.took > at && a.started <= recovered + Duration::from_secs(1)).count()
            };
            println!("{} {}: {leader} → gap {}, {failed} client errors", fault.name(), run + 1, secs(gap));
            gaps.push(gap);
            errors.push(failed);
        }
        let min = gaps.iter().min().copied().unwrap();
        let max = gaps.iter().max().copied().unwrap();
        println!(
            "write gap after {}: median {} ({}–{}) of {runs}; client errors per run {:?}",
            fault.name(),
            secs(median(gaps.clone())),
            secs(min),
            secs(max),
            errors
        );
    }
    wait_until("all three members healthy", Duration::from_secs(300), || deployed.healthy_topology().is_ok());
    let attempts = writer.stop();
    let lost = lost_rows(&deployed, &attempts);
    println!("acknowledged rows: {}, lost: {}", attempts.iter().filter(|a| a.ok).count(), lost.len());
    assert!(lost.is_empty(), "acknowledged rows lost: {lost:?}");
    let destroy = deployed.pgnomad(&["destroy", "--yes"]);
    support::cluster::e2e::assert_ok("pgnomad destroy", &destroy);
}
