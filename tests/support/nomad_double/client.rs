//! The double as the servers of a cluster whose clients run allocations for real
//! (`tests/support/cluster`): it starts in `ClientMode::External` with the clients' nodes, and
//! answers the `ControlPlane` a node's client reads and reports through.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::nodes::{HostVolumeSpec, NodeSpec};
use super::{ClientMode, DoubleConfig, NomadDouble};
use crate::support::cluster::taskenv::{AllocFacts, Port};
use crate::support::cluster::{Assignment, ControlPlane, NodeInfo};
use crate::support::consul_double::service_entries;
use crate::support::gotemplate::ServiceInstance;

/// A Nomad double whose nodes are the clients' nodes: their addresses and host volumes.
pub fn start_external(nodes: &[NodeInfo], time_scale: f64, _consul_acls: bool) -> NomadDouble {
    let specs = nodes
        .iter()
        .map(|node| {
            let mut spec = NodeSpec::new(&node.name, &node.address);
            spec.host_volumes = node
                .host_volumes
                .iter()
                .map(|(name, path)| (name.clone(), HostVolumeSpec { path: path.display().to_string(), read_only: false }))
                .collect();
            spec
        })
        .collect();
    NomadDouble::start_with(DoubleConfig { time_scale, nodes: specs, client: ClientMode::External, ..DoubleConfig::default() })
}

pub fn set_node_down(nomad: &NomadDouble, node: &str, down: bool) {
    nomad.set_node_status(node, if down { "down" } else { "ready" });
}

pub struct Plane {
    nomad: Arc<NomadDouble>,
    consul_acls: bool,
}

impl Plane {
    pub fn new(nomad: Arc<NomadDouble>, consul_acls: bool) -> Self {
        Plane { nomad, consul_acls }
    }
}

impl ControlPlane for Plane {
    fn allocations(&self, node: &str) -> Vec<Assignment> {
        self.nomad
            .node_allocations(node)
            .into_iter()
            .map(|view| Assignment {
                facts: AllocFacts {
                    alloc_id: view.id.clone(),
                    alloc_index: view.alloc_index,
                    job: view.job.clone(),
                    group: view.group_spec.clone(),
                    node_name: view.node_name.clone(),
                    ports: view
                        .ports
                        .iter()
                        .map(|p| Port { label: p.label.clone(), value: p.value, to: p.to.max(0) as u16, host_ip: p.host_ip.clone() })
                        .collect(),
                },
                desired_run: view.desired_status == "run",
                client_status: view.client_status.clone(),
                waiting_for_volumes: view.waiting_for_volumes.clone(),
                waiting_for_previous: view.waiting_for_previous.clone(),
            })
            .collect()
    }

    fn task_state(&self, alloc_id: &str, task: &str, state: &str, failed: bool, kind: &str, message: &str) {
        let _ = self.nomad.update_task_state(alloc_id, task, state, failed, (kind, message));
    }

    fn alloc_status(&self, alloc_id: &str, status: &str, _description: &str) {
        let _ = self.nomad.set_alloc_client_status(alloc_id, status);
    }

    fn check_status(&self, alloc_id: &str, service: &str, check: &str, passing: bool, output: &str) {
        let _ = self.nomad.set_check_status(alloc_id, service, check, passing, output);
    }

    fn variables_for(
        &self,
        namespace: &str,
        job: &str,
        group: &str,
        task: &str,
    ) -> (BTreeMap<String, BTreeMap<String, String>>, Vec<String>) {
        let state = self.nomad.shared.state.lock().unwrap();
        let mut variables = BTreeMap::new();
        let mut readable = Vec::new();
        for ((ns, path), variable) in &state.variables {
            if ns != namespace {
                continue;
            }
            let items: BTreeMap<String, String> = variable
                .items
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect();
            variables.insert(path.clone(), items);
            if state.variable_readable(namespace, job, group, task, path) {
                readable.push(path.clone());
            }
        }
        // The identity's own paths are readable whether or not they exist yet.
        for own in crate::support::gotemplate::workload_identity_paths(job, group, task) {
            if !readable.contains(&own) {
                readable.push(own);
            }
        }
        (variables, readable)
    }

    fn service_instances(&self) -> BTreeMap<String, Vec<ServiceInstance>> {
        let mut services: BTreeMap<String, Vec<ServiceInstance>> = BTreeMap::new();
        for (name, tags, entry) in service_entries(&self.nomad.shared) {
            let checks = entry["Checks"].as_array().cloned().unwrap_or_default();
            let status = if checks.iter().all(|c| c["Status"] == "passing") { "passing" } else { "critical" };
            let service = &entry["Service"];
            services.entry(name.clone()).or_default().push(ServiceInstance {
                node: entry["Node"]["Node"].as_str().unwrap_or_default().to_string(),
                node_address: entry["Node"]["Address"].as_str().unwrap_or_default().to_string(),
                address: service["Address"].as_str().unwrap_or_default().to_string(),
                port: service["Port"].as_u64().unwrap_or(0) as u16,
                id: service["ID"].as_str().unwrap_or_default().to_string(),
                name,
                tags: tags.iter().filter_map(|t| t.as_str().map(str::to_string)).collect(),
                service_meta: service["Meta"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect(),
                status: status.to_string(),
            });
        }
        services
    }

    fn wait_for_change(&self, seen: u64, timeout: Duration) -> u64 {
        self.nomad.shared.wait_for_index(seen, timeout)
    }

    fn consul_acls(&self) -> bool {
        self.consul_acls
    }
}

impl NomadDouble {
    /// Evaluations of jobs whose ID starts with `prefix` (children of a periodic job included),
    /// for a test's failure message.
    pub fn evaluations_of(&self, prefix: &str) -> Vec<serde_json::Value> {
        let state = self.shared.state.lock().unwrap();
        state.evals.iter().filter(|e| e["JobID"].as_str().is_some_and(|j| j.starts_with(prefix))).cloned().collect()
    }
}

impl NomadDouble {
    /// Every version of a job the servers kept, oldest first: what each registration that
    /// changed the job made of it (server.Job, with `SubmitTime` in nanoseconds since the
    /// epoch, as Nomad records it). A registration that changed nothing adds no version.
    pub fn job_versions(&self, job_id: &str) -> Vec<serde_json::Value> {
        let state = self.shared.state.lock().unwrap();
        state.jobs.get(&("default".to_string(), job_id.to_string())).map(|r| r.versions.clone()).unwrap_or_default()
    }
}
