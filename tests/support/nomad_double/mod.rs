//! A stateful stand-in for a Nomad cluster, served over HTTP on 127.0.0.1 from its own thread
//! and tokio runtime (so async tests, blocking tests and the real `pgnomad` binary can all talk
//! to it). It validates every request body against the API schema, answers errors as Nomad
//! does (plain text, Nomad's codes and wording), and moves allocations and deployments along
//! in simulated time.
//!
//! ```ignore
//! let nomad = NomadDouble::start();
//! let client = nomad.client();
//! nomad.inject(Fault::status("GET", "/v1/job/", 503).times(2));
//! // … drop checks that no request broke the schema.
//! ```
//!
//! ## The cluster
//! `DoubleConfig.nodes` (default `NodeSpec::defaults()`: `double-client-1..3` at 127.0.0.11..13,
//! dc1, pool default, 4000 MHz / 8192 MB, docker/exec/raw_exec, host volume `pgbackrest`, CSI
//! node plugin `hostpath`, meta `rack = r1..r3`). Placement follows Nomad's scheduler
//! (`sched.rs`), updates its reconciler (`reconcile.rs`). `set_node_status(name, "down")` loses
//! the node's allocations; `"ready"` brings it back and blocked evals are retried.
//!
//! ## The client seam (`seam.rs`)
//! With `DoubleConfig { client: ClientMode::External, .. }` the double never starts, stops or
//! checks anything itself. A runner (e.g. `client.rs`, declared here as `pub mod client;` by
//! its author) loops:
//! ```ignore
//! let mut index = 0;
//! loop {
//!     index = nomad.wait_allocations(index, Duration::from_secs(5)).await;
//!     for alloc in nomad.node_allocations("double-client-1") {        // Vec<AllocView>
//!         // alloc.desired_status "run": start unless alloc.waiting_for_volumes is non-empty;
//!         //   alloc.group_spec / alloc.job (Meta, Env, Templates), alloc.ports (host value, to,
//!         //   host_ip), alloc.node_address, alloc.host_volumes (name → path)
//!         nomad.update_task_state(&alloc.id, "patroni", "running", false, ("Started", "Task started by client"))?;
//!         nomad.set_check_status(&alloc.id, "main-postgres", "patroni", true, "HTTP 200")?;
//!         // alloc.desired_status "stop": kill, then
//!         nomad.update_task_state(&alloc.id, "patroni", "dead", false, ("Killed", "Task successfully killed"))?;
//!         // or nomad.set_alloc_client_status(&alloc.id, "complete")  — claims are released now
//!     }
//! }
//! ```
//! Deployment health, in both modes, comes from check results (Simulated: the oracle's) with the
//! job's min_healthy_time / healthy_deadline / progress_deadline scaled by `time_scale`.
//! Consul's health view lists each instance at its node's address and its mapped host port.

pub mod client;
pub mod nodes;
mod ops;
pub mod periodic;
mod reconcile;
mod routes;
pub mod sched;
mod seam;
pub mod state;

pub use nodes::{DriverSpec, HostVolumeSpec, NodeSpec};
pub use sched::AssignedPort;
pub use seam::AllocView;

/// Helpers the Consul double shares with the Nomad one.
pub mod routes_support {
    pub use super::routes::{parse_go_duration, parse_query, percent_decode, text};
}

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{watch, Notify};

use pgnomad::settings::{NomadSettings, TlsSettings};
use pgnomad::transport::{HttpTransport, NomadClient, RetryPolicy};

use state::State;

/// What the health oracle is asked about one check of one allocation.
#[derive(Debug, Clone)]
pub struct CheckProbe {
    pub job_id: String,
    pub group: String,
    /// Position of the group in the job (member-0 is 0).
    pub group_index: usize,
    /// Index of the allocation within its group (`job.group[i]`).
    pub alloc_index: u64,
    pub service: String,
    pub check_name: String,
    pub check_type: String,
    pub path: String,
}

pub type HealthOracle = Arc<dyn Fn(&CheckProbe) -> bool + Send + Sync>;

/// How the servers reach a client's task logs (`/v1/client/fs/logs` is forwarded to the node
/// that runs the allocation): (node, allocation ID, group, task, "stdout" | "stderr") → the
/// log's bytes, `None` when that node keeps no such log.
pub type LogReader = Arc<dyn Fn(&str, &str, &str, &str, &str) -> Option<Vec<u8>> + Send + Sync>;

/// As on a Patroni cluster: `/primary` passes on exactly one member (the first allocation of
/// the first group), `/replica` on all the others, every other check passes.
pub fn patroni_like_oracle() -> HealthOracle {
    Arc::new(|probe: &CheckProbe| {
        let is_first_member = probe.group_index == 0 && probe.alloc_index == 0;
        match probe.path.as_str() {
            "/primary" => is_first_member,
            "/replica" => !is_first_member,
            _ => true,
        }
    })
}

/// Who runs the allocations the double places.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClientMode {
    /// The double's own pretend client: pending → running after `start_delay`, check results
    /// from the health oracle, stopped `stop_delay` after a stop is asked for.
    #[default]
    Simulated,
    /// Nothing moves on its own: an external runner reads `node_allocations` and reports
    /// task states, client status and check results (see "The client seam" below).
    External,
}

#[derive(Clone)]
pub struct DoubleConfig {
    /// When set, every request needs this token (`X-Nomad-Token` or `Authorization: Bearer`).
    pub acl_token: Option<String>,
    /// Factor applied to the job's own durations (MinHealthyTime, HealthyDeadline,
    /// ProgressDeadline): 0.001 turns a 10 minute progress deadline into 600 ms.
    pub time_scale: f64,
    /// Real time from placement to running (Simulated mode).
    pub start_delay: Duration,
    /// Real time from "stop" to the client reporting the allocation complete (Simulated mode);
    /// volume claims are held until then.
    pub stop_delay: Duration,
    /// The client nodes (default: `NodeSpec::defaults()`, three nodes at 127.0.0.11..13).
    pub nodes: Vec<NodeSpec>,
    pub client: ClientMode,
}

impl Default for DoubleConfig {
    fn default() -> Self {
        DoubleConfig {
            acl_token: None,
            time_scale: 0.001,
            start_delay: Duration::from_millis(20),
            stop_delay: Duration::from_millis(5),
            nodes: NodeSpec::defaults(),
            client: ClientMode::Simulated,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// Answer with this status and plain-text body.
    Status(u16, String),
    /// Close the connection without answering.
    DropConnection,
    /// Wait this long, then answer normally.
    Delay(Duration),
}

/// Applies to the next `times` requests whose method matches (`"*"` for any) and whose path
/// starts with `path_prefix`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub method: String,
    pub path_prefix: String,
    pub times: u32,
    pub kind: FaultKind,
}

impl Fault {
    pub fn status(method: &str, path_prefix: &str, status: u16) -> Self {
        let body = if status >= 500 { "simulated server error" } else { "simulated error" };
        Fault { method: method.into(), path_prefix: path_prefix.into(), times: 1, kind: FaultKind::Status(status, body.into()) }
    }

    pub fn drop_connection(method: &str, path_prefix: &str) -> Self {
        Fault { method: method.into(), path_prefix: path_prefix.into(), times: 1, kind: FaultKind::DropConnection }
    }

    pub fn delay(method: &str, path_prefix: &str, delay: Duration) -> Self {
        Fault { method: method.into(), path_prefix: path_prefix.into(), times: 1, kind: FaultKind::Delay(delay) }
    }

    pub fn times(mut self, times: u32) -> Self {
        self.times = times;
        self
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub body: Option<Value>,
}

pub(crate) struct Shared {
    pub state: Mutex<State>,
    pub config: DoubleConfig,
    pub oracle: RwLock<HealthOracle>,
    pub index_changed: watch::Sender<u64>,
    /// The same index for threads outside any runtime (the clients' allocation runners).
    pub index_seen: (Mutex<u64>, std::sync::Condvar),
    pub wake_simulation: Notify,
    pub faults: Mutex<Vec<Fault>>,
    pub requests: Mutex<Vec<RecordedRequest>>,
    pub violations: Mutex<Vec<String>>,
    pub has_leader: std::sync::atomic::AtomicBool,
    pub logs: RwLock<Option<LogReader>>,
}

impl Shared {
    /// After any change: wake blocking queries and the simulation.
    pub fn changed(&self) {
        let index = self.state.lock().unwrap().index;
        self.announce(index);
        self.wake_simulation.notify_one();
    }

    /// Wakes blocking queries and whatever waits in [`Shared::wait_for_index`].
    pub fn announce(&self, index: u64) {
        self.index_changed.send_replace(index);
        let (seen, wake) = &self.index_seen;
        *seen.lock().unwrap() = index;
        wake.notify_all();
    }

    /// Blocks the calling thread until the state's index is past `index` or `timeout` passes;
    /// the index then.
    pub fn wait_for_index(&self, index: u64, timeout: Duration) -> u64 {
        let (seen, wake) = &self.index_seen;
        let guard = seen.lock().unwrap();
        let (guard, _) = wake.wait_timeout_while(guard, timeout, |now| *now <= index).unwrap();
        *guard
    }

    pub fn oracle(&self) -> HealthOracle {
        self.oracle.read().unwrap().clone()
    }
}

/// An HTTP server on its own thread and runtime; stopped on drop.
pub(crate) struct ServerThread {
    pub address: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    pub fn spawn(router: axum::Router, background: Option<Arc<Shared>>) -> Self {
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a tokio runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding 127.0.0.1:0");
                address_tx.send(listener.local_addr().unwrap()).unwrap();
                tokio::spawn(async move { axum::serve(listener, router).await });
                if let Some(shared) = background {
                    tokio::spawn(simulate(shared));
                }
                let _ = stopped.await;
            });
            // Blocking queries may still be parked: do not wait for them.
            runtime.shutdown_background();
        });
        let address = address_rx.recv().expect("the double's server thread started");
        ServerThread { address, stop: Some(stop), thread: Some(thread) }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Simulated time: the only waiting the double does on its own. It sleeps until the next thing
/// is due, or until a request changes something.
async fn simulate(shared: Arc<Shared>) {
    loop {
        let oracle = shared.oracle();
        let (next, before, after) = {
            let mut state = shared.state.lock().unwrap();
            let before = state.index;
            let next = state.advance(tokio::time::Instant::now(), &shared.config, &oracle);
            (next, before, state.index)
        };
        if after != before {
            shared.announce(after);
        }
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            _ = tokio::time::sleep_until(next.unwrap_or(far)) => {}
            _ = shared.wake_simulation.notified() => {}
        }
    }
}

pub struct NomadDouble {
    shared: Arc<Shared>,
    server: ServerThread,
}

impl NomadDouble {
    pub fn start() -> Self {
        Self::start_with(DoubleConfig::default())
    }

    pub fn start_with(config: DoubleConfig) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State { index: 1, nodes: config.nodes.clone(), client_mode: config.client, ..State::default() }),
            config,
            oracle: RwLock::new(patroni_like_oracle()),
            index_changed: watch::channel(1).0,
            index_seen: (Mutex::new(1), std::sync::Condvar::new()),
            wake_simulation: Notify::new(),
            faults: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            violations: Mutex::new(Vec::new()),
            has_leader: std::sync::atomic::AtomicBool::new(true),
            logs: RwLock::new(None),
        });
        let router = routes::router(shared.clone());
        let server = ServerThread::spawn(router, Some(shared.clone()));
        NomadDouble { shared, server }
    }

    pub fn address(&self) -> String {
        format!("http://{}", self.server.address)
    }

    /// Where `/v1/client/fs/logs` reads task logs: the clients that run the allocations.
    pub fn set_log_reader(&self, reader: LogReader) {
        *self.shared.logs.write().unwrap() = Some(reader);
    }

    /// Settings pointing at the double, with its ACL token when it enforces one.
    pub fn settings(&self) -> NomadSettings {
        NomadSettings {
            address: self.address(),
            token: self.shared.config.acl_token.clone(),
            namespace: None,
            region: None,
            tls: TlsSettings::default(),
        }
    }

    /// A client with short backoff so retry tests stay fast.
    pub fn client(&self) -> NomadClient<HttpTransport> {
        self.client_with(self.settings())
    }

    pub fn client_with(&self, settings: NomadSettings) -> NomadClient<HttpTransport> {
        let transport = HttpTransport::nomad(&settings)
            .expect("a client for the double")
            .with_retry(RetryPolicy { max_attempts: 4, base_delay: Duration::from_millis(20), max_delay: Duration::from_millis(200) })
            .with_request_timeout(Duration::from_secs(10));
        NomadClient::new(transport)
    }

    pub fn inject(&self, fault: Fault) {
        self.shared.faults.lock().unwrap().push(fault);
    }

    /// Without a leader every API call answers `500 No cluster leader` and
    /// `/v1/status/leader` answers `""`.
    pub fn set_leader(&self, has_leader: bool) {
        self.shared.has_leader.store(has_leader, std::sync::atomic::Ordering::SeqCst);
    }

    /// Someone else registers a changed copy of the job: its JobModifyIndex moves on, so a
    /// register that enforces the old index fails.
    pub fn force_index_conflict(&self, namespace: &str, job_id: &str) {
        {
            let mut state = self.shared.state.lock().unwrap();
            let current = state.job(namespace, job_id).expect("the job to change exists").current().clone();
            let mut changed = current.clone();
            let meta = changed.as_object_mut().unwrap().entry("Meta").or_insert(serde_json::json!({}));
            if meta.is_null() {
                *meta = serde_json::json!({});
            }
            meta["changed-by"] = serde_json::json!(format!("someone-else-{}", state.index));
            state.store_job(changed, Some(current), &self.shared.config, tokio::time::Instant::now(), "job-register");
        }
        self.shared.changed();
    }

    /// Allocations of this group placed from now on fail with a `Driver Failure` task event.
    pub fn fail_group(&self, job_id: &str, group: &str) {
        self.shared.state.lock().unwrap().failing_groups.push((job_id.to_string(), group.to_string()));
        self.shared.changed();
    }

    /// Maps port `label` of `group`'s allocations to `port` on 127.0.0.1, so Consul sends
    /// clients of that service to a real program listening there.
    pub fn map_host_port(&self, group: &str, label: &str, port: u16) {
        self.shared.state.lock().unwrap().host_ports.push(((group.to_string(), label.to_string()), port));
        self.shared.changed();
    }

    pub fn set_health_oracle(&self, oracle: impl Fn(&CheckProbe) -> bool + Send + Sync + 'static) {
        *self.shared.oracle.write().unwrap() = Arc::new(oracle);
        // Check results changed: Consul's health view moves with the allocations table.
        self.shared.state.lock().unwrap().bump(state::Table::Allocs);
        self.shared.changed();
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Requests that may change state (everything but GET), in the order they arrived.
    pub fn writes(&self) -> Vec<RecordedRequest> {
        self.requests().into_iter().filter(|r| r.method != "GET").collect()
    }

    pub fn request_count(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }

    /// Takes the recorded schema violations (so a test that provokes one can assert on it).
    pub fn take_schema_violations(&self) -> Vec<String> {
        std::mem::take(&mut *self.shared.violations.lock().unwrap())
    }

    pub fn assert_no_schema_violations(&self) {
        let violations = self.shared.violations.lock().unwrap().clone();
        assert!(violations.is_empty(), "requests broke the Nomad API schema:\n{}", violations.join("\n"));
    }

    pub fn index(&self) -> u64 {
        self.shared.state.lock().unwrap().index
    }

    /// A Consul double whose health view is this cluster's running allocations.
    pub fn start_consul(&self) -> super::consul_double::ConsulDouble {
        super::consul_double::ConsulDouble::start(self.shared.clone())
    }
}

impl Drop for NomadDouble {
    fn drop(&mut self) {
        // The check a test cannot forget: any schema violation fails the test that made it.
        if !std::thread::panicking() {
            self.assert_no_schema_violations();
        }
    }
}
