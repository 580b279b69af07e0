//! A Nomad cluster that runs what it is sent: the Nomad double (placement, updates,
//! deployments) with `ClientMode::External`, and one client per node that runs the node's
//! allocations for real — docker tasks as containers of pgnomad's own image, on a docker bridge
//! network where each node has its own address; templates executed by Go's text/template;
//! checks probing the mapped ports and feeding the Consul double. Patroni's DCS is a real etcd
//! on the network's gateway address.
//!
//! ```ignore
//! let cluster = Cluster::start(ClusterConfig::default());   // 3 nodes, etcd, Nomad + Consul doubles
//! // pgnomad run against cluster.nomad_address() / cluster.consul_address() …
//! cluster.lose_node("double-client-2");                      // all its allocations stop
//! // Dropping the cluster stops every container and removes the network.
//! ```

pub mod alloc_runner;
pub mod dns;
pub mod docker;
pub mod e2e;
pub mod exec;
pub mod faults;
pub mod taskenv;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use alloc_runner::{AllocRunner, Control};
use taskenv::AllocFacts;

use crate::support::gotemplate::ServiceInstance;

/// What a node's client reads from and reports to the servers (the Nomad double). The double
/// implements it in `nomad_double/client.rs`; nothing else here knows the double's insides.
pub trait ControlPlane: Send + Sync {
    /// The allocations placed on `node`, with what the servers want of each.
    fn allocations(&self, node: &str) -> Vec<Assignment>;
    fn task_state(&self, alloc_id: &str, task: &str, state: &str, failed: bool, kind: &str, message: &str);
    fn alloc_status(&self, alloc_id: &str, status: &str, description: &str);
    fn check_status(&self, alloc_id: &str, service: &str, check: &str, passing: bool, output: &str);
    /// Every variable of the namespace, and the paths this task's workload identity may read.
    fn variables_for(
        &self,
        namespace: &str,
        job: &str,
        group: &str,
        task: &str,
    ) -> (BTreeMap<String, BTreeMap<String, String>>, Vec<String>);
    /// Consul's view of every service instance, any health.
    fn service_instances(&self) -> BTreeMap<String, Vec<ServiceInstance>>;
    /// Consul has ACLs on: a task without a Consul token reads nothing from it.
    fn consul_acls(&self) -> bool;
    /// Blocks until anything the servers hold changed since `seen` (a check's status, a
    /// variable, …) or `timeout` passes; the new mark. What consul-template's blocking
    /// queries give a real client: it hears of a change as it happens, not at its next poll.
    fn wait_for_change(&self, seen: u64, timeout: Duration) -> u64;
}

#[derive(Debug, Clone)]
pub struct Assignment {
    pub facts: AllocFacts,
    /// The servers' desired status is "run".
    pub desired_run: bool,
    pub client_status: String,
    /// CSI volumes whose claim an older allocation still holds: wait before starting.
    pub waiting_for_volumes: Vec<String>,
    /// The allocation this one replaces, until it has stopped: wait before starting.
    pub waiting_for_previous: Option<String>,
}

/// A node as its client sees it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub address: String,
    /// The node's own disk: allocation dirs, host volumes, the hostpath CSI plugin's volumes.
    pub root: PathBuf,
    pub host_volumes: BTreeMap<String, PathBuf>,
    pub docker_network: String,
    pub cluster_id: String,
    pub pause_image: String,
    /// The resolver tasks use: Consul's DNS interface (`*.service.consul`).
    pub dns: String,
    /// The factor the double applies to job durations, applied to restart delays too.
    pub time_scale: f64,
    /// The node's own filesystem, where exec tasks find their programs (pgnomad's image,
    /// exported: a node with the packages installed).
    pub rootfs: PathBuf,
    /// The exec and raw_exec tasks running on the node, by (allocation, task).
    pub processes: ProcessTable,
}

pub type ProcessTable = Arc<Mutex<BTreeMap<(String, String), Arc<exec::ExecTask>>>>;

impl NodeInfo {
    pub fn csi_volume_path(&self, id: &str) -> PathBuf {
        self.root.join("csi").join(id.replace(['[', ']', '/'], "_"))
    }

    pub fn scaled(&self, duration: Duration) -> Duration {
        duration.mul_f64(self.time_scale)
    }
}

/// One node's client: starts a runner for each allocation placed on the node, tells runners
/// to stop when the servers want it, and goes silent when the node is lost.
pub struct NodeClient {
    pub info: NodeInfo,
    plane: Arc<dyn ControlPlane>,
    runners: Mutex<BTreeMap<String, (Arc<Control>, JoinHandle<()>)>>,
    up: AtomicBool,
    stop: AtomicBool,
}

impl NodeClient {
    fn poll(&self) {
        let mut runners = self.runners.lock().unwrap();
        runners.retain(|_, (_, handle)| !handle.is_finished());
        if !self.up.load(Ordering::SeqCst) {
            return;
        }
        let assignments = self.plane.allocations(&self.info.name);
        for assignment in &assignments {
            let id = &assignment.facts.alloc_id;
            let ready = assignment.waiting_for_volumes.is_empty() && assignment.waiting_for_previous.is_none();
            if assignment.desired_run && ready && assignment.client_status == "pending" && !runners.contains_key(id) {
                let control = Arc::new(Control { stop: AtomicBool::new(false), lost: AtomicBool::new(false) });
                let runner = Arc::new(AllocRunner::new(assignment.facts.clone(), self.info.clone(), self.plane.clone(), control.clone()));
                let handle = std::thread::Builder::new().name(format!("alloc-{}", &id[..8])).spawn(move || runner.run()).unwrap();
                runners.insert(id.clone(), (control, handle));
            }
        }
        for (id, (control, _)) in runners.iter() {
            let wanted = assignments.iter().any(|a| &a.facts.alloc_id == id && a.desired_run);
            if !wanted {
                control.stop.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Every allocation's containers die at once and nothing is reported, as when a machine
    /// loses power.
    fn lose(&self) {
        self.up.store(false, Ordering::SeqCst);
        let runners: Vec<JoinHandle<()>> = {
            let mut runners = self.runners.lock().unwrap();
            for (control, _) in runners.values() {
                control.lost.store(true, Ordering::SeqCst);
            }
            std::mem::take(&mut *runners).into_values().map(|(_, h)| h).collect()
        };
        for handle in runners {
            let _ = handle.join();
        }
    }

    fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.lose();
    }
}

#[derive(Clone)]
pub struct ClusterConfig {
    pub nodes: usize,
    /// Applied by the double to update durations and by the clients to restart delays.
    pub time_scale: f64,
    pub consul_acls: bool,
    /// Host volumes (name → the indexes of the nodes that have one, created empty under each
    /// node's root). pgBackRest's repository volume exists on one node, as pgnomad asks.
    pub host_volumes: Vec<(String, Vec<usize>)>,
    /// Who owns the host volumes' directories: root as created, or, as the README asks of
    /// operators running exec drivers, the nodes' `postgres` (uid, gid).
    pub host_volume_owner: Option<(u32, u32)>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nodes: 3,
            time_scale: 0.2,
            consul_acls: true,
            host_volumes: vec![("pgbackrest".into(), vec![0])],
            host_volume_owner: None,
        }
    }
}

/// The node network: a docker bridge network whose bridge on the host carries each node's
/// address, so that containers reach each other at node address + mapped port, as across hosts.
pub struct NodeNetwork {
    pub name: String,
    pub gateway: String,
    pub addresses: Vec<String>,
}

static NEXT_CLUSTER: AtomicU32 = AtomicU32::new(0);

impl NodeNetwork {
    fn create(cluster_id: &str, nodes: usize) -> NodeNetwork {
        let name = format!("pgnomad-double-{cluster_id}");
        // A free /24 of 10.213.0.0/16 (docker refuses overlapping subnets).
        for attempt in 0..200u32 {
            let third = (std::process::id() + attempt * 7 + NEXT_CLUSTER.load(Ordering::SeqCst)) % 250 + 1;
            let subnet = format!("10.213.{third}.0/24");
            let gateway = format!("10.213.{third}.1");
            // Containers get addresses from the upper half only: docker hands out .2, .3, …
            // in order, and the eleventh container would otherwise take a node's address
            // (.11 …), which the host answers for itself — that container then reaches
            // nothing on the host (etcd, Consul's DNS): seen with a clone beside its source.
            let container_range = format!("10.213.{third}.128/25");
            let label = format!("{}={cluster_id}", docker::LABEL);
            if docker::run(&[
                "network",
                "create",
                "--driver",
                "bridge",
                "--subnet",
                &subnet,
                "--ip-range",
                &container_range,
                "--gateway",
                &gateway,
                "--label",
                &label,
                &name,
            ])
            .is_err()
            {
                continue;
            }
            let id = docker::run(&["network", "inspect", "--format", "{{.Id}}", &name]).expect("inspecting the node network");
            let bridge = format!("br-{}", &id[..12]);
            let addresses: Vec<String> = (0..nodes).map(|i| format!("10.213.{third}.{}", 11 + i)).collect();
            for address in &addresses {
                let out = std::process::Command::new("ip")
                    .args(["addr", "add", &format!("{address}/24"), "dev", &bridge])
                    .output()
                    .expect("running ip");
                assert!(out.status.success(), "adding node address {address} to {bridge}: {}", String::from_utf8_lossy(&out.stderr));
            }
            return NodeNetwork { name, gateway, addresses };
        }
        panic!("no free 10.213.x.0/24 subnet for the node network (docker network ls)");
    }
}

/// A real etcd for Patroni, on the node network's gateway (reachable from every container).
pub struct Etcd {
    pub endpoint: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Etcd {
    fn start(address: &str) -> Etcd {
        let etcd = std::path::Path::new("/usr/bin/etcd");
        assert!(etcd.is_file(), "`etcd` is not installed: the cluster double runs a real etcd for Patroni (apt-get install etcd-server)");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port(address);
        let peer = free_port("127.0.0.1");
        let client_url = format!("http://{address}:{port}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
        let child = std::process::Command::new(etcd)
            .args(["--name", "double", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args(["--initial-cluster", &format!("double=http://127.0.0.1:{peer}")])
            .env("ETCD_UNSUPPORTED_ARCH", "")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting etcd");
        let endpoint = format!("{address}:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&endpoint).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "etcd did not answer on {endpoint} within 20 s (log: {})",
                dir.path().join("etcd.log").display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Etcd { endpoint, child, _dir: dir }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Cluster {
    pub id: String,
    pub nomad: Arc<crate::support::NomadDouble>,
    pub consul: crate::support::ConsulDouble,
    pub network: NodeNetwork,
    pub etcd: Etcd,
    pub dns: dns::ConsulDns,
    pub image: String,
    plane: Arc<dyn ControlPlane>,
    clients: Vec<Arc<NodeClient>>,
    poller: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    root: tempfile::TempDir,
}

impl Cluster {
    pub fn start(config: ClusterConfig) -> Cluster {
        docker::require_engine();
        docker::remove_orphans();
        let id = format!("{}-{}", std::process::id(), NEXT_CLUSTER.fetch_add(1, Ordering::SeqCst));
        let image = crate::support::image::postgres_image(15);
        let network = NodeNetwork::create(&id, config.nodes);
        let etcd = Etcd::start(&network.gateway);
        let root = tempfile::Builder::new().prefix("pgnomad-cluster-").tempdir_in(cluster_tmp()).unwrap();
        let rootfs = exec::node_rootfs(&image);
        let mut nodes = Vec::new();
        for (i, address) in network.addresses.iter().enumerate() {
            let name = format!("double-client-{}", i + 1);
            let node_root = root.path().join(&name);
            let host_volumes: BTreeMap<String, PathBuf> = config
                .host_volumes
                .iter()
                .filter(|(_, on)| on.contains(&i))
                .map(|(volume, _)| {
                    let path = node_root.join("host-volumes").join(volume);
                    std::fs::create_dir_all(&path).unwrap();
                    if let Some((uid, gid)) = config.host_volume_owner {
                        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
                    }
                    (volume.clone(), path)
                })
                .collect();
            // The node's resolver forwards `.consul` to Consul (exec tasks read it in their chroot).
            std::fs::create_dir_all(&node_root).unwrap();
            std::fs::write(node_root.join("resolv.conf"), format!("nameserver {}\n", network.gateway)).unwrap();
            nodes.push(NodeInfo {
                name,
                address: address.clone(),
                root: node_root,
                host_volumes,
                docker_network: network.name.clone(),
                cluster_id: id.clone(),
                pause_image: image.clone(),
                dns: network.gateway.clone(),
                time_scale: config.time_scale,
                rootfs: rootfs.clone(),
                processes: ProcessTable::default(),
            });
        }
        let nomad = Arc::new(crate::support::nomad_double::client::start_external(&nodes, config.time_scale, config.consul_acls));
        let roots: BTreeMap<String, PathBuf> = nodes.iter().map(|n| (n.name.clone(), n.root.clone())).collect();
        nomad.set_log_reader(Arc::new(move |node, alloc, group, task, kind| {
            alloc_runner::task_log(roots.get(node)?, alloc, group, task, kind)
        }));
        let consul = nomad.start_consul();
        let plane: Arc<dyn ControlPlane> = Arc::new(crate::support::nomad_double::client::Plane::new(nomad.clone(), config.consul_acls));
        let dns = dns::ConsulDns::start(&network.gateway, plane.clone());
        let clients: Vec<Arc<NodeClient>> = nodes
            .into_iter()
            .map(|info| {
                Arc::new(NodeClient {
                    info,
                    plane: plane.clone(),
                    runners: Mutex::new(BTreeMap::new()),
                    up: AtomicBool::new(true),
                    stop: AtomicBool::new(false),
                })
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let clients = clients.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("node-clients".into())
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        for client in &clients {
                            client.poll();
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                })
                .unwrap()
        };
        Cluster { id, nomad, consul, network, etcd, dns, image, plane, clients, poller: Some(poller), stop, root }
    }

    pub fn node(&self, name: &str) -> &NodeInfo {
        &self.clients.iter().find(|c| c.info.name == name).unwrap_or_else(|| panic!("no node {name}")).info
    }

    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.clients.iter().map(|c| c.info.clone()).collect()
    }

    /// The node's machine goes away: every container of its allocations dies at once, its
    /// client says nothing more, and the servers mark the node down.
    pub fn lose_node(&self, name: &str) {
        let client = self.clients.iter().find(|c| c.info.name == name).expect("a node of this cluster");
        client.lose();
        crate::support::nomad_double::client::set_node_down(&self.nomad, name, true);
    }

    pub fn restore_node(&self, name: &str) {
        let client = self.clients.iter().find(|c| c.info.name == name).expect("a node of this cluster");
        client.up.store(true, Ordering::SeqCst);
        crate::support::nomad_double::client::set_node_down(&self.nomad, name, false);
    }

    /// The container of `task` in the running allocation of `group` of `job`.
    pub fn container(&self, job: &str, group: &str, task: &str) -> Option<String> {
        let filter = format!("label={}={}", docker::LABEL, self.id);
        let names = docker::run(&["ps", "--filter", &filter, "--format", "{{.Names}}"]).ok()?;
        // Named after the allocation (alloc_runner), so that two jobs with the same group
        // names (a clone beside its source) are told apart.
        let allocation = self.allocations(job).into_iter().find(|a| a.facts.group_name() == group && a.client_status == "running")?;
        let id = &allocation.facts.alloc_id;
        let name = format!("{task}-{group}-{}", &id[..id.len().min(8)]);
        names.lines().find(|n| *n == name).map(str::to_string)
    }

    /// The running task `task` of the running allocation of `group` of `job`: its container
    /// (docker) or its process (exec, raw_exec).
    pub fn task(&self, job: &str, group: &str, task: &str) -> Option<TaskRef> {
        let allocation = self.allocations(job).into_iter().find(|a| a.facts.group_name() == group && a.client_status == "running")?;
        let client = self.clients.iter().find(|c| c.info.name == allocation.facts.node_name)?;
        let process = client.info.processes.lock().unwrap().get(&(allocation.facts.alloc_id.clone(), task.to_string())).cloned();
        match process {
            Some(process) => Some(TaskRef::Process(process)),
            None => self.container(job, group, task).map(TaskRef::Container),
        }
    }

    /// The exec and raw_exec tasks of this cluster whose process still runs.
    pub fn running_processes(&self) -> Vec<String> {
        self.clients
            .iter()
            .flat_map(|c| {
                c.info
                    .processes
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(_, p)| p.running())
                    .map(|((a, t), _)| format!("{t} of {}", &a[..8]))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Every process on the machine whose root directory is inside this cluster's nodes (an
    /// exec task, or anything it left behind), by pid and command.
    pub fn processes_in_task_dirs(&self) -> Vec<String> {
        let root = self.root.path();
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let pid = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
                let process_root = std::fs::read_link(entry.path().join("root")).ok()?;
                process_root.starts_with(root).then(|| {
                    let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                    format!("{pid} {}", String::from_utf8_lossy(&cmdline).replace('\0', " ").trim())
                })
            })
            .collect()
    }

    /// Names of the containers of this cluster that are running.
    pub fn running_containers(&self) -> Vec<String> {
        let filter = format!("label={}={}", docker::LABEL, self.id);
        docker::run(&["ps", "--filter", &filter, "--format", "{{.Names}}"])
            .map(|t| t.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// The allocations of `job` that the servers want running, on every node that is up.
    pub fn allocations(&self, job: &str) -> Vec<Assignment> {
        let mut found: Vec<Assignment> = self
            .clients
            .iter()
            .filter(|c| c.up.load(Ordering::SeqCst))
            .flat_map(|c| self.plane.allocations(&c.info.name))
            .filter(|a| a.facts.job_id() == job && a.desired_run)
            .collect();
        found.sort_by(|a, b| (a.facts.group_name(), a.facts.alloc_index).cmp(&(b.facts.group_name(), b.facts.alloc_index)));
        found
    }

    /// `host:port` of port `label` of the running allocation of `group` of `job`.
    pub fn address_of(&self, job: &str, group: &str, label: &str) -> Option<String> {
        self.allocations(job)
            .into_iter()
            .filter(|a| a.facts.group_name() == group && a.client_status == "running")
            .find_map(|a| a.facts.ports.iter().find(|p| p.label == label).map(|p| format!("{}:{}", p.host_ip, p.value)))
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }
}

/// A running task, whatever its driver.
#[derive(Clone)]
pub enum TaskRef {
    Container(String),
    Process(Arc<exec::ExecTask>),
}

impl TaskRef {
    /// Runs `argv` inside the task as its user, as `nomad alloc exec` does.
    pub fn exec(&self, argv: &[&str]) -> Result<std::process::Output, String> {
        match self {
            TaskRef::Container(name) => {
                let mut args = vec!["exec", name.as_str()];
                args.extend(argv);
                docker::docker().args(&args).output().map_err(|e| format!("docker exec: {e}"))
            }
            TaskRef::Process(process) => process.enter(argv, None),
        }
    }

    /// The task dies at once with everything it started: `docker kill` of its container, or
    /// SIGKILL to the first process of an exec task's PID namespace.
    pub fn kill(&self) -> Result<(), String> {
        match self {
            TaskRef::Container(name) => docker::run(&["kill", name]).map(|_| ()),
            TaskRef::Process(process) => process.signal("SIGKILL"),
        }
    }

    pub fn logs_tail(&self, lines: usize) -> String {
        match self {
            TaskRef::Container(name) => docker::logs_tail(name, lines),
            TaskRef::Process(process) => process.logs_tail(lines),
        }
    }

    pub fn name(&self) -> String {
        match self {
            TaskRef::Container(name) => name.clone(),
            TaskRef::Process(process) => format!("{} (pid {:?})", process.spec.task, process.pid()),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(poller) = self.poller.take() {
            let _ = poller.join();
        }
        for client in &self.clients {
            client.shutdown();
        }
        docker::remove_labelled(&self.id);
    }
}

fn free_port(host: &str) -> u16 {
    std::net::TcpListener::bind((host, 0)).expect("bind a free port").local_addr().unwrap().port()
}

/// Allocation dirs are bind-mounted into containers: they must be on a real filesystem the
/// engine can reach (not a tmpfs private to this process).
fn cluster_tmp() -> PathBuf {
    let dir = PathBuf::from("/var/tmp/pgnomad-tests");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
