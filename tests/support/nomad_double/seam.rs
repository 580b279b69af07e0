//! The client seam: what a runner that executes allocations for real (`ClientMode::External`)
//! reads from the double and reports back, as a Nomad client reads its allocations from the
//! servers and updates their task states, client status and check results.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use super::nodes::NodeSpec;
use super::sched::AssignedPort;
use super::state::{list, str_of, task_event, task_state, Alloc, State, Table};
use super::NomadDouble;

/// One allocation as its node's client sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct AllocView {
    pub id: String,
    pub namespace: String,
    pub job_id: String,
    pub job_version: u64,
    pub group: String,
    /// `job.group[index]`.
    pub alloc_index: u64,
    /// `<job>.<group>[<index>]`.
    pub name: String,
    /// "run" or "stop".
    pub desired_status: String,
    /// "pending", "running", "complete", "failed", "lost".
    pub client_status: String,
    pub node_name: String,
    pub node_id: String,
    pub node_address: String,
    /// The task group of the allocation's job version (`Tasks`, `Networks`, `Services`, …).
    pub group_spec: Value,
    /// The whole job of that version (`Meta`, `Datacenters`, …).
    pub job: Value,
    pub ports: Vec<AssignedPort>,
    /// Task name → `TaskState` JSON as reported so far.
    pub task_states: BTreeMap<String, Value>,
    /// CSI volumes the allocation claims (`per_alloc` resolved).
    pub csi_volumes: Vec<String>,
    /// CSI volumes whose claim another allocation still holds: do not start the tasks yet
    /// (Nomad's client CSI hook retries its claim until the previous holder stopped).
    pub waiting_for_volumes: Vec<String>,
    /// The allocation this one replaces, while it still runs or stops on its client: do not
    /// start the tasks yet (Nomad's previous-allocation watcher).
    pub waiting_for_previous: Option<String>,
    /// Host volume name → path on this node, for the group's `host` volumes.
    pub host_volumes: BTreeMap<String, String>,
    /// The allocation's raft index: changes whenever anything about it changes.
    pub modify_index: u64,
}

impl State {
    pub fn view(&self, alloc: &Alloc) -> AllocView {
        let job = self
            .job(&alloc.namespace, &alloc.job_id)
            .and_then(|r| r.versions.iter().find(|v| v["Version"].as_u64() == Some(alloc.job_version)).cloned())
            .unwrap_or(Value::Null);
        let group_spec = list(&job, "TaskGroups").iter().find(|g| str_of(g, "Name") == alloc.group).cloned().unwrap_or(Value::Null);
        let node: Option<&NodeSpec> = self.nodes.get(alloc.node);
        let host_volumes = group_spec
            .get("Volumes")
            .and_then(Value::as_object)
            .map(|volumes| {
                volumes
                    .iter()
                    .filter(|(_, v)| str_of(v, "Type") == "host")
                    .filter_map(|(name, v)| node?.host_volumes.get(str_of(v, "Source")).map(|h| (name.clone(), h.path.clone())))
                    .collect()
            })
            .unwrap_or_default();
        AllocView {
            id: alloc.id.clone(),
            namespace: alloc.namespace.clone(),
            job_id: alloc.job_id.clone(),
            job_version: alloc.job_version,
            group: alloc.group.clone(),
            alloc_index: alloc.alloc_index,
            name: alloc.name(),
            desired_status: alloc.desired_status.to_string(),
            client_status: alloc.client_status.to_string(),
            node_name: alloc.node_name.clone(),
            node_id: alloc.node_id.clone(),
            node_address: node.map(|n| n.address.clone()).unwrap_or_default(),
            group_spec,
            job,
            ports: alloc.ports.clone(),
            task_states: alloc.task_states.clone(),
            csi_volumes: alloc.volumes.clone(),
            waiting_for_volumes: self.waiting_for_volumes(alloc),
            waiting_for_previous: self.waiting_for_previous(alloc),
            host_volumes,
            modify_index: alloc.modify_index,
        }
    }
}

fn client_status_of(states: &BTreeMap<String, Value>, tasks: usize) -> Option<&'static str> {
    // client/allocrunner getClientStatus: any failed → failed; any running/pending → …
    let values: Vec<&Value> = states.values().collect();
    if values.iter().any(|s| s["State"] == "dead" && s["Failed"] == true) {
        return Some("failed");
    }
    if values.len() == tasks && values.iter().all(|s| s["State"] == "dead") {
        return Some("complete");
    }
    if values.len() == tasks && values.iter().all(|s| s["State"] == "running") {
        return Some("running");
    }
    None
}

impl NomadDouble {
    fn mutate<T>(&self, change: impl FnOnce(&mut State) -> Result<T, String>) -> Result<T, String> {
        let result = {
            let mut state = self.shared.state.lock().unwrap();
            change(&mut state)
        };
        self.shared.changed();
        result
    }

    /// The nodes as the double has them now.
    pub fn nodes(&self) -> Vec<NodeSpec> {
        self.shared.state.lock().unwrap().nodes.clone()
    }

    /// Every allocation placed on `node_name` that the client still has to care about
    /// (not terminal on the client), oldest first. Includes allocations whose desired status
    /// is "stop": the runner stops them and reports `complete`.
    pub fn node_allocations(&self, node_name: &str) -> Vec<AllocView> {
        let state = self.shared.state.lock().unwrap();
        state.allocs.iter().filter(|a| a.node_name == node_name && !a.client_terminal()).map(|a| state.view(a)).collect()
    }

    /// Every allocation ever placed, terminal ones included.
    pub fn all_allocations(&self) -> Vec<AllocView> {
        let state = self.shared.state.lock().unwrap();
        state.allocs.iter().map(|a| state.view(a)).collect()
    }

    pub fn allocation(&self, alloc_id: &str) -> Option<AllocView> {
        let state = self.shared.state.lock().unwrap();
        state.allocs.iter().find(|a| a.id == alloc_id).map(|a| state.view(a))
    }

    /// The ports the scheduler assigned to an allocation.
    pub fn alloc_ports(&self, alloc_id: &str) -> Vec<AssignedPort> {
        self.allocation(alloc_id).map(|a| a.ports).unwrap_or_default()
    }

    /// The allocations table's index; pass it to `wait_allocations`.
    pub fn allocations_index(&self) -> u64 {
        self.shared.state.lock().unwrap().table_index(Table::Allocs)
    }

    /// Waits (async, any runtime) until the allocations table moves past `index` or `timeout`
    /// passes; returns the table's index then. The runner's equivalent of a client's
    /// blocking query on its allocations.
    pub async fn wait_allocations(&self, index: u64, timeout: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.shared.index_changed.subscribe();
        loop {
            let now = self.allocations_index();
            if now > index {
                return now;
            }
            if !matches!(tokio::time::timeout_at(deadline, changes.changed()).await, Ok(Ok(()))) {
                return self.allocations_index();
            }
        }
    }

    /// A task's state changes, with the event the task runner records (`Received`,
    /// `Task Setup`, `Started`, `Terminated`, `Restarting`, `Killing`, `Killed`, `Template`,
    /// `Driver Failure`, …). When every task is running the allocation becomes running; when
    /// one failed it becomes failed; when all are dead it is complete (getClientStatus).
    pub fn update_task_state(&self, alloc_id: &str, task: &str, state: &str, failed: bool, event: (&str, &str)) -> Result<(), String> {
        if !matches!(state, "pending" | "running" | "dead") {
            return Err(format!("unknown task state {state:?}"));
        }
        self.mutate(|s| {
            let tasks = {
                let alloc = s.allocs.iter().find(|a| a.id == alloc_id).ok_or(format!("no allocation {alloc_id}"))?;
                s.view(alloc).group_spec.get("Tasks").and_then(Value::as_array).map(Vec::len).unwrap_or(1)
            };
            let index = s.bump(Table::Allocs);
            let now = tokio::time::Instant::now();
            let alloc = s.allocs.iter_mut().find(|a| a.id == alloc_id).unwrap();
            let entry = alloc.task_states.entry(task.to_string()).or_insert_with(|| task_state("pending", false, vec![]));
            entry["State"] = json!(state);
            entry["Failed"] = json!(failed);
            if event.0 == "Restarting" {
                entry["Restarts"] = json!(entry["Restarts"].as_u64().unwrap_or(0) + 1);
            }
            if !event.0.is_empty() {
                let fails =
                    failed && matches!(event.0, "Driver Failure" | "Not Restarting" | "Terminated" | "Failed Validation" | "Setup Failure");
                entry["Events"].as_array_mut().unwrap().push(task_event(event.0, event.1, fails));
            }
            if let Some(status) = client_status_of(&alloc.task_states, tasks) {
                set_status(alloc, status, now);
            }
            alloc.modify_index = index;
            Ok(())
        })
    }

    /// The client's status for the allocation: "running", "complete" or "failed". A stopped
    /// allocation releases its volume claims when it is complete or failed.
    pub fn set_alloc_client_status(&self, alloc_id: &str, status: &str) -> Result<(), String> {
        let status: &'static str = match status {
            "pending" => "pending",
            "running" => "running",
            "complete" => "complete",
            "failed" => "failed",
            other => return Err(format!("unknown client status {other:?}")),
        };
        self.mutate(|s| {
            let index = s.bump(Table::Allocs);
            let alloc = s.allocs.iter_mut().find(|a| a.id == alloc_id).ok_or(format!("no allocation {alloc_id}"))?;
            set_status(alloc, status, tokio::time::Instant::now());
            alloc.modify_index = index;
            Ok(())
        })
    }

    /// A check's result as the client's check watcher or Consul sees it. `service` is the
    /// registered (interpolated) service name, `check` the check's name in the job.
    pub fn set_check_status(&self, alloc_id: &str, service: &str, check: &str, passing: bool, output: &str) -> Result<(), String> {
        self.mutate(|s| {
            let index = s.bump(Table::Allocs);
            let alloc = s.allocs.iter_mut().find(|a| a.id == alloc_id).ok_or(format!("no allocation {alloc_id}"))?;
            alloc.checks.insert((service.to_string(), check.to_string()), (passing, output.to_string()));
            alloc.modify_index = index;
            Ok(())
        })
    }

    /// Marks a node "down" (its allocations are lost and rescheduled elsewhere when they can
    /// be), "ready" (blocked evaluations are retried), "disconnected" or "initializing".
    pub fn set_node_status(&self, node_name: &str, status: &str) {
        let found = {
            let mut state = self.shared.state.lock().unwrap();
            state.set_node_status(node_name, status, tokio::time::Instant::now())
        };
        assert!(found, "no node {node_name}");
        self.shared.changed();
    }

    /// Marks a node ineligible (or eligible again) for new placements.
    pub fn set_node_eligibility(&self, node_name: &str, eligible: bool) {
        {
            let mut state = self.shared.state.lock().unwrap();
            let node = state.nodes.iter_mut().find(|n| n.name == node_name).expect("a known node");
            node.eligibility = if eligible { "eligible" } else { "ineligible" }.into();
            state.bump(Table::Nodes);
        }
        self.shared.changed();
    }
}

fn set_status(alloc: &mut Alloc, status: &'static str, now: tokio::time::Instant) {
    if alloc.client_status == status {
        return;
    }
    alloc.client_status = status;
    alloc.client_description = match status {
        "running" => "Tasks are running",
        "complete" => "All tasks have completed",
        "failed" => "Failed tasks",
        _ => "No tasks have started",
    }
    .into();
    if status == "running" {
        alloc.running_since = Some(now);
        alloc.healthy_since = None;
    }
    if status == "failed" && alloc.deployment_id.is_some() && alloc.healthy.is_none() && alloc.desired_status == "run" {
        alloc.healthy = Some(false);
    }
}
