//! Deploy benchmark: `cargo bench --bench deploy`.
//!
//! Against the Nomad and Consul doubles (tests/support), with medians over repeated runs:
//! - requests per `run` of the default stack on a fresh cluster: one-shot requests (plans,
//!   reads, writes) per job, and the blocking queries of the watches apart;
//! - the delay from the double marking the postgres deployment healthy to pgnomad's reporter
//!   hearing of it (the double's checks are held failing, then turned passing at a known time).

#[path = "../tests/cluster_slot.rs"]
mod cluster_slot;
#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgnomad::config::Packs;
use pgnomad::consul::ConsulClient;
use pgnomad::deploy::{self, Cluster, PlanScope, Reporter, RunOptions};
use pgnomad::nomad::api::{self, Deployment};
use pgnomad::settings::{ConsulSettings, OperatorSecrets, TlsSettings};
use pgnomad::stack::{self, Source};
use pgnomad::transport::{HttpTransport, NomadClient, RetryPolicy};

use support::{DoubleConfig, NomadDouble};

const RUNS: usize = 7;

fn cluster_for(nomad: &NomadDouble, consul: &support::ConsulDouble) -> Cluster<HttpTransport, HttpTransport> {
    let consul_settings = ConsulSettings { address: consul.address(), token: None, tls: TlsSettings::default() };
    Cluster {
        nomad: NomadClient::new(HttpTransport::nomad(&nomad.settings()).unwrap().with_retry(RetryPolicy::none())),
        consul: ConsulClient::new(HttpTransport::consul(&consul_settings).unwrap()),
    }
}

fn default_stack() -> pgnomad::stack::Stack {
    stack::load(&Source::new("bench.hcl", "cluster \"main\" {}\n")).expect("the default stack loads").stack
}

fn options() -> RunOptions {
    RunOptions { detach: false, scope: PlanScope::default(), timeout: Duration::from_secs(60), operator: OperatorSecrets::default() }
}

/// Remembers when each job's deployment was first reported terminal.
#[derive(Default)]
struct Clock {
    finished: Mutex<Vec<(String, Instant)>>,
}

impl Reporter for Clock {
    fn deployment(&self, job: &str, deployment: &Deployment) {
        if deployment.is_terminal() {
            self.finished.lock().unwrap().push((job.to_string(), Instant::now()));
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

struct Counts {
    nomad_one_shot: usize,
    nomad_blocking: usize,
    consul: usize,
    jobs: usize,
}

fn count_requests(runtime: &tokio::runtime::Runtime) -> Counts {
    let nomad = NomadDouble::start();
    let consul = nomad.start_consul();
    let cluster = cluster_for(&nomad, &consul);
    let stack = default_stack();
    let summary =
        runtime.block_on(deploy::run(&cluster, &stack, &Packs::default(), &options(), &deploy::Quiet)).expect("the default stack runs");
    let requests = nomad.requests();
    let is_consul = |r: &&support::nomad_double::RecordedRequest| r.method.starts_with("CONSUL");
    let blocking = |r: &&support::nomad_double::RecordedRequest| r.query.iter().any(|(k, _)| k == "index");
    Counts {
        nomad_one_shot: requests.iter().filter(|r| !is_consul(r) && !blocking(r)).count(),
        nomad_blocking: requests.iter().filter(|r| !is_consul(r) && blocking(r)).count(),
        consul: requests.iter().filter(is_consul).count(),
        jobs: summary.jobs.len(),
    }
}

/// Holds every check failing until the postgres deployment has placed its allocations and
/// they have run past min_healthy_time, then lets them pass and times the report.
fn healthy_to_reported(runtime: &tokio::runtime::Runtime) -> Duration {
    // 0.01: min_healthy_time 10 s → 100 ms, healthy_deadline 600 s → 6 s.
    let nomad = NomadDouble::start_with(DoubleConfig { time_scale: 0.01, ..DoubleConfig::default() });
    nomad.set_health_oracle(|_| false);
    let consul = nomad.start_consul();
    let cluster = Arc::new(cluster_for(&nomad, &consul));
    let clock = Arc::new(Clock::default());
    let run = {
        let (cluster, clock) = (cluster.clone(), clock.clone());
        runtime.spawn(async move {
            let stack = default_stack();
            deploy::run(&cluster, &stack, &Packs::default(), &options(), &*clock).await.map(|_| ())
        })
    };
    // Wait (with blocking queries) until every member runs, then past min_healthy_time.
    let watcher = nomad.client();
    runtime.block_on(async {
        let mut index = 0;
        loop {
            let (allocs, next): (Vec<api::AllocListStub>, u64) = watcher
                .get_blocking(api::job_allocations("main-postgres", false), index, Duration::from_secs(5))
                .await
                .unwrap_or((Vec::new(), index));
            index = next;
            if allocs.iter().filter(|a| a.client_status == "running").count() == 3 {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let healthy_at = Instant::now();
    nomad.set_health_oracle(|probe| {
        let first = probe.group_index == 0 && probe.alloc_index == 0;
        match probe.path.as_str() {
            "/primary" => first,
            "/replica" => !first,
            _ => true,
        }
    });
    runtime.block_on(run).unwrap().expect("the run converges once checks pass");
    let finished = clock.finished.lock().unwrap();
    let (_, reported_at) = finished.iter().find(|(job, _)| job == "main-postgres").expect("the postgres deployment was reported");
    reported_at.duration_since(healthy_at)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    let counts: Vec<Counts> = (0..RUNS).map(|_| count_requests(&runtime)).collect();
    let jobs = counts[0].jobs;
    let one_shot = median(counts.iter().map(|c| c.nomad_one_shot as f64).collect());
    let blocking = median(counts.iter().map(|c| c.nomad_blocking as f64).collect());
    let consul = median(counts.iter().map(|c| c.consul as f64).collect());
    println!("requests per `run` of the default stack ({jobs} jobs, 3 members, fresh cluster), median of {RUNS}:");
    println!("  Nomad one-shot (plans, reads, writes): {one_shot:.0} = {:.2} per job", one_shot / jobs as f64);
    println!("  Nomad blocking queries (deployment watches): {blocking:.0}");
    println!("  Consul blocking/list queries (primary watch): {consul:.0}");

    let delays: Vec<f64> = (0..RUNS).map(|_| healthy_to_reported(&runtime).as_secs_f64() * 1000.0).collect();
    let mut sorted = delays.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "deployment marked healthy → reported, median of {RUNS}: {:.1} ms (min {:.1}, max {:.1})",
        median(delays),
        sorted[0],
        sorted[RUNS - 1]
    );
}
