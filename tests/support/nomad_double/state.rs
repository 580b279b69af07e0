//! The double's cluster: jobs with versions, evaluations, deployments, allocations, variables,
//! CSI volumes and ACL policies behind one raft-like index, and the simulated passage of time
//! that moves allocations and deployments along.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::{CheckProbe, DoubleConfig, HealthOracle};
use crate::support::job_rules::{check_on_update, interpolate_service_name, template_variable_reads};

use super::nodes::NodeSpec;
use super::sched::AssignedPort;
use super::ClientMode;

pub fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64
}

pub fn new_id() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        rng.random::<u32>(),
        rng.random::<u16>(),
        rng.random::<u16>(),
        rng.random::<u16>(),
        rng.random::<u64>() & 0xffff_ffff_ffff
    )
}

pub fn str_of<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or_default()
}

pub fn list<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    value.get(key).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

/// Which index a blocking query on an endpoint waits on (Nomad keeps one per table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Jobs,
    Evals,
    Allocs,
    Deployments,
    Variables,
    Volumes,
    Nodes,
    Acl,
}

#[derive(Clone)]
pub struct JobRecord {
    /// server.Job values, oldest first; the last one is current.
    pub versions: Vec<Value>,
}

impl JobRecord {
    pub fn current(&self) -> &Value {
        self.versions.last().expect("a job record has a version")
    }
}

#[derive(Clone)]
pub struct Alloc {
    pub id: String,
    /// Index into `State::nodes`.
    pub node: usize,
    pub node_id: String,
    pub node_name: String,
    pub ports: Vec<AssignedPort>,
    pub cpu: u64,
    pub memory_mb: u64,
    pub previous_allocation: String,
    pub next_allocation: String,
    pub desired_description: String,
    /// When the stop was asked for (desired status became stop).
    pub stop_requested_at: Option<Instant>,
    /// Since when every check that counts has passed without interruption.
    pub healthy_since: Option<Instant>,
    /// (service name, check name) → (passing, output), as the client reports them.
    pub checks: BTreeMap<(String, String), (bool, String)>,
    pub eval_id: String,
    pub namespace: String,
    pub job_id: String,
    pub job_version: u64,
    pub group: String,
    pub group_index: usize,
    pub alloc_index: u64,
    pub deployment_id: Option<String>,
    pub desired_status: &'static str,
    pub client_status: &'static str,
    pub client_description: String,
    pub task_states: BTreeMap<String, Value>,
    pub healthy: Option<bool>,
    pub created_at: Instant,
    pub running_since: Option<Instant>,
    pub volumes: Vec<String>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Alloc {
    pub fn name(&self) -> String {
        format!("{}.{}[{}]", self.job_id, self.group, self.alloc_index)
    }

    /// Desired to run and not terminal on the client.
    pub fn is_live(&self) -> bool {
        self.desired_status == "run" && !self.client_terminal()
    }

    pub fn client_terminal(&self) -> bool {
        matches!(self.client_status, "complete" | "failed" | "lost")
    }

    /// Volume claims are held until the client says the allocation stopped.
    pub fn holds_claims(&self) -> bool {
        !self.client_terminal()
    }

    pub fn deployment_status(&self) -> Value {
        match &self.deployment_id {
            Some(_) => json!({"Healthy": self.healthy, "Canary": false, "ModifyIndex": self.modify_index}),
            None => Value::Null,
        }
    }

    pub fn stub(&self) -> Value {
        json!({
            "ID": self.id, "EvalID": self.eval_id, "Name": self.name(), "Namespace": self.namespace,
            "NodeID": self.node_id, "NodeName": self.node_name, "JobID": self.job_id, "JobType": "service",
            "JobVersion": self.job_version, "TaskGroup": self.group,
            "DesiredStatus": self.desired_status, "DesiredDescription": self.desired_description,
            "ClientStatus": self.client_status, "ClientDescription": self.client_description,
            "TaskStates": self.task_states,
            "DeploymentStatus": self.deployment_status(),
            "FollowupEvalID": "", "CreateIndex": self.create_index, "ModifyIndex": self.modify_index,
            "CreateTime": 0, "ModifyTime": 0,
        })
    }
}

#[derive(Clone)]
pub struct GroupProgress {
    pub desired_total: u64,
    pub placed: u64,
    pub healthy: u64,
    pub unhealthy: u64,
    pub progress_deadline_ns: i64,
    pub require_progress_by: Instant,
    pub min_healthy: Duration,
    pub healthy_deadline: Duration,
}

#[derive(Clone)]
pub struct Deployment {
    pub id: String,
    pub namespace: String,
    pub job_id: String,
    pub job_version: u64,
    pub job_modify_index: u64,
    pub job_create_index: u64,
    pub groups: BTreeMap<String, GroupProgress>,
    pub status: &'static str,
    pub description: String,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Deployment {
    pub fn to_json(&self) -> Value {
        let groups: Map<String, Value> = self
            .groups
            .iter()
            .map(|(name, g)| {
                (
                    name.clone(),
                    json!({
                        "AutoRevert": false, "AutoPromote": false, "ProgressDeadline": g.progress_deadline_ns,
                        "RequireProgressBy": "0001-01-01T00:00:00Z", "Promoted": false, "PlacedCanaries": null,
                        "DesiredCanaries": 0, "DesiredTotal": g.desired_total, "PlacedAllocs": g.placed,
                        "HealthyAllocs": g.healthy, "UnhealthyAllocs": g.unhealthy,
                    }),
                )
            })
            .collect();
        json!({
            "ID": self.id, "Namespace": self.namespace, "JobID": self.job_id, "JobVersion": self.job_version,
            "JobModifyIndex": self.job_modify_index, "JobSpecModifyIndex": self.job_modify_index,
            "JobCreateIndex": self.job_create_index, "IsMultiregion": false, "TaskGroups": groups,
            "Status": self.status, "StatusDescription": self.description, "EvalPriority": 50,
            "CreateIndex": self.create_index, "ModifyIndex": self.modify_index,
        })
    }
}

#[derive(Clone)]
pub struct Variable {
    pub items: Value,
    pub create_index: u64,
    pub modify_index: u64,
    pub create_time: i64,
    pub modify_time: i64,
}

#[derive(Clone)]
pub struct Volume {
    pub spec: Value,
    pub create_index: u64,
    pub modify_index: u64,
}

#[derive(Default, Clone)]
pub struct State {
    pub nodes: Vec<NodeSpec>,
    /// Node-local (hostpath) CSI volumes stay on the node of their first claim.
    pub volume_nodes: BTreeMap<(String, String), usize>,
    pub client_mode: ClientMode,
    /// (volume, allocation) claims as last published: a change moves the volumes' index.
    pub claims_seen: Vec<(String, String)>,
    pub index: u64,
    pub tables: HashMap<Table, u64>,
    pub jobs: BTreeMap<(String, String), JobRecord>,
    pub evals: Vec<Value>,
    pub deployments: Vec<Deployment>,
    pub allocs: Vec<Alloc>,
    pub variables: BTreeMap<(String, String), Variable>,
    pub volumes: BTreeMap<(String, String), Volume>,
    pub policies: BTreeMap<String, Value>,
    /// Groups (job, group) whose next placements fail with a driver failure.
    pub failing_groups: Vec<(String, String)>,
    /// Host ports Nomad "mapped" for (group, port label), where a test needs a real program
    /// behind a service (a real Patroni for `status`); others get made-up ports.
    pub host_ports: Vec<((String, String), u16)>,
    /// The periodic dispatcher's tracked jobs (see `periodic.rs`).
    pub periodic: BTreeMap<(String, String), super::periodic::Tracked>,
}

fn scaled(config: &DoubleConfig, nanos: i64) -> Duration {
    Duration::from_nanos((nanos.max(0) as f64 * config.time_scale) as u64)
}

fn update_setting(job: &Value, group: &Value, key: &str, default_ns: i64) -> i64 {
    group
        .get("Update")
        .and_then(|u| u.get(key))
        .or_else(|| job.get("Update").and_then(|u| u.get(key)))
        .and_then(Value::as_i64)
        .unwrap_or(default_ns)
}

const SECOND: i64 = 1_000_000_000;

impl State {
    pub fn bump(&mut self, table: Table) -> u64 {
        self.index += 1;
        self.tables.insert(table, self.index);
        self.index
    }

    pub fn table_index(&self, table: Table) -> u64 {
        self.tables.get(&table).copied().unwrap_or(1).max(1)
    }

    pub fn job(&self, namespace: &str, id: &str) -> Option<&JobRecord> {
        self.jobs.get(&(namespace.to_string(), id.to_string()))
    }

    /// Can the workload identity of job/group/task read `path`? Its own paths always; others
    /// only through a policy bound to the job (JobACL).
    pub fn variable_readable(&self, namespace: &str, job: &str, group: &str, task: &str, path: &str) -> bool {
        let own = [
            "nomad/jobs".to_string(),
            format!("nomad/jobs/{job}"),
            format!("nomad/jobs/{job}/{group}"),
            format!("nomad/jobs/{job}/{group}/{task}"),
        ];
        if own.iter().any(|p| p == path) {
            return true;
        }
        self.policies.values().any(|policy| {
            let Some(binding) = policy.get("JobACL").filter(|b| !b.is_null()) else { return false };
            let matches = |key: &str, want: &str| matches!(str_of(binding, key), "") || str_of(binding, key) == want;
            let bound = (str_of(binding, "Namespace").is_empty() || str_of(binding, "Namespace") == namespace)
                && str_of(binding, "JobID") == job
                && matches("Group", group)
                && matches("Task", task);
            bound && policy_paths(str_of(policy, "Rules")).iter().any(|pattern| glob_matches(pattern, path))
        })
    }

    /// Why a task's templates cannot render yet, as Nomad's template hook reports it.
    fn missing_template_reads(&self, alloc: &Alloc, task: &Value) -> Vec<String> {
        let task_name = str_of(task, "Name");
        let mut missing = Vec::new();
        for template in list(task, "Templates") {
            for (function, path) in template_variable_reads(str_of(template, "EmbeddedTmpl")) {
                let readable = self.variable_readable(&alloc.namespace, &alloc.job_id, &alloc.group, task_name, &path);
                let exists = self.variables.contains_key(&(alloc.namespace.clone(), path.clone()));
                let blocked = match function.as_str() {
                    "nomadVar" => !readable || !exists,
                    _ => !readable,
                };
                if blocked {
                    let kind = if function == "nomadVarList" { "nomadVarList" } else { "nomadVar" };
                    missing.push(format!("{kind}.block({path}@{}.global)", alloc.namespace));
                }
            }
        }
        missing
    }

    fn group_spec(&self, alloc: &Alloc) -> Option<(Value, Value)> {
        let record = self.job(&alloc.namespace, &alloc.job_id)?;
        let job = record.versions.iter().find(|v| v["Version"].as_u64() == Some(alloc.job_version))?;
        let group = list(job, "TaskGroups").iter().find(|g| str_of(g, "Name") == alloc.group)?.clone();
        Some((job.clone(), group))
    }

    /// Is this check passing now? Simulated: the oracle says. External: what the runner
    /// reported (critical until it reports a pass).
    pub fn check_passing(
        &self,
        alloc: &Alloc,
        job: &Value,
        service: &Value,
        check: &Value,
        task: &str,
        oracle: &HealthOracle,
    ) -> (bool, String) {
        match self.client_mode {
            ClientMode::Simulated => {
                let passing = oracle(&probe_for(alloc, job, service, check, task));
                (passing, if passing { "HTTP 200 OK".into() } else { "HTTP 503 Service Unavailable".into() })
            }
            ClientMode::External => {
                let name = interpolate_service_name(str_of(service, "Name"), str_of(job, "Name"), &alloc.group, task);
                alloc.checks.get(&(name, str_of(check, "Name").to_string())).cloned().unwrap_or((false, String::new()))
            }
        }
    }

    /// Every check that counts for deployment health passes right now (checks with
    /// on_update = "ignore" do not count, as in Nomad).
    fn health_checks_pass(&self, alloc: &Alloc, job: &Value, group: &Value, oracle: &HealthOracle) -> bool {
        service_checks(job, group).into_iter().all(|(service, check, task)| {
            check_on_update(&service, &check) == "ignore" || self.check_passing(alloc, job, &service, &check, &task, oracle).0
        })
    }

    /// Writer claims of `alloc` that another allocation still holds (the client's CSI hook
    /// waits for them).
    pub fn waiting_for_volumes(&self, alloc: &Alloc) -> Vec<String> {
        alloc
            .volumes
            .iter()
            .filter(|v| {
                self.allocs.iter().any(|other| {
                    other.id != alloc.id && other.holds_claims() && other.create_index < alloc.create_index && other.volumes.contains(v)
                })
            })
            .cloned()
            .collect()
    }

    /// The allocation `alloc` replaces, while it has not stopped on its client: Nomad's client
    /// holds a replacement until its previous allocation is terminal, on this node or another
    /// (client/allocwatcher: localPrevAlloc and remotePrevAlloc wait whether or not the
    /// ephemeral disk migrates; a previous allocation gone or unknown does not hold it).
    pub fn waiting_for_previous(&self, alloc: &Alloc) -> Option<String> {
        if alloc.previous_allocation.is_empty() {
            return None;
        }
        let previous = self.allocs.iter().find(|a| a.id == alloc.previous_allocation)?;
        (!previous.client_terminal() && previous.client_status != "unknown").then(|| previous.id.clone())
    }

    /// Claims taken or released change the volumes (blocking queries on a volume wake).
    pub fn sync_claims(&mut self) {
        let mut claims: Vec<(String, String)> =
            self.allocs.iter().filter(|a| a.holds_claims()).flat_map(|a| a.volumes.iter().map(|v| (v.clone(), a.id.clone()))).collect();
        claims.sort();
        if claims != self.claims_seen {
            self.claims_seen = claims;
            let index = self.bump(Table::Volumes);
            for volume in self.volumes.values_mut() {
                volume.modify_index = index;
            }
        }
    }

    /// Moves simulated time to `now`; returns the next instant something is due.
    pub fn advance(&mut self, now: Instant, config: &DoubleConfig, oracle: &HealthOracle) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut due = |at: Instant| next = Some(next.map_or(at, |n: Instant| n.min(at)));
        let mut changed_allocs: Vec<usize> = Vec::new();
        let simulated = self.client_mode == ClientMode::Simulated;
        for i in 0..self.allocs.len() {
            let alloc = &self.allocs[i];
            if alloc.client_terminal() {
                continue;
            }
            if alloc.desired_status != "run" {
                // Stopping: the simulated client kills the tasks after stop_delay.
                let asked = alloc.stop_requested_at.unwrap_or(now);
                if !simulated {
                    continue;
                }
                if now < asked + config.stop_delay {
                    due(asked + config.stop_delay);
                    continue;
                }
                let alloc = &mut self.allocs[i];
                for state in alloc.task_states.values_mut() {
                    state["State"] = json!("dead");
                    if let Some(events) = state["Events"].as_array_mut() {
                        events.push(task_event("Killing", "Sent interrupt. Waiting 5s before force killing", false));
                        events.push(task_event("Killed", "Task successfully killed", false));
                    }
                }
                alloc.client_status = "complete";
                alloc.client_description = "All tasks have completed".into();
                changed_allocs.push(i);
                continue;
            }
            let Some((job, group)) = self.group_spec(alloc) else { continue };
            match alloc.client_status {
                "pending" if simulated => {
                    let blocked: Vec<(String, Vec<String>)> = list(&group, "Tasks")
                        .iter()
                        .map(|task| (str_of(task, "Name").to_string(), self.missing_template_reads(alloc, task)))
                        .filter(|(_, missing)| !missing.is_empty())
                        .collect();
                    let waiting = self.waiting_for_volumes(alloc);
                    let replacing = self.waiting_for_previous(alloc);
                    let failing = self.failing_groups.iter().any(|(j, g)| *j == alloc.job_id && *g == alloc.group);
                    let start_at = alloc.created_at + config.start_delay;
                    let alloc = &mut self.allocs[i];
                    if !waiting.is_empty() || replacing.is_some() {
                        // The CSI hook retries its claim until the previous holder stopped;
                        // the previous-allocation watcher waits for it to stop.
                    } else if !blocked.is_empty() {
                        for (task, missing) in blocked {
                            let message = format!("Missing: {}", missing.join(", "));
                            let state = alloc.task_states.entry(task).or_insert_with(|| task_state("pending", false, vec![]));
                            let events = state["Events"].as_array_mut().unwrap();
                            if !events.iter().any(|e| e["DisplayMessage"] == json!(message)) {
                                events.push(task_event("Template", &message, false));
                                changed_allocs.push(i);
                            }
                        }
                    } else if now < start_at {
                        due(start_at);
                    } else if failing {
                        for task in list(&group, "Tasks") {
                            let events = vec![
                                task_event("Received", "Task received by client", false),
                                task_event("Task Setup", "Building Task Directory", false),
                                task_event("Driver Failure", "failed to create container: simulated driver failure", true),
                                task_event("Not Restarting", "Error was unrecoverable", true),
                            ];
                            alloc.task_states.insert(str_of(task, "Name").to_string(), task_state("dead", true, events));
                        }
                        alloc.client_status = "failed";
                        alloc.client_description = "Failed tasks".into();
                        if alloc.deployment_id.is_some() {
                            alloc.healthy = Some(false);
                        }
                        changed_allocs.push(i);
                    } else {
                        for task in list(&group, "Tasks") {
                            let events = vec![
                                task_event("Received", "Task received by client", false),
                                task_event("Task Setup", "Building Task Directory", false),
                                task_event("Started", "Task started by client", false),
                            ];
                            alloc.task_states.insert(str_of(task, "Name").to_string(), task_state("running", false, events));
                        }
                        alloc.client_status = "running";
                        alloc.client_description = "Tasks are running".into();
                        alloc.running_since = Some(now);
                        changed_allocs.push(i);
                        due(now);
                    }
                }
                "running" if alloc.healthy.is_none() && alloc.deployment_id.is_some() => {
                    let since = alloc.running_since.unwrap_or(now);
                    let min_healthy = scaled(config, update_setting(&job, &group, "MinHealthyTime", 10 * SECOND));
                    let healthy_deadline = scaled(config, update_setting(&job, &group, "HealthyDeadline", 300 * SECOND));
                    let mode = group
                        .get("Update")
                        .and_then(|u| u.get("HealthCheck"))
                        .or_else(|| job.get("Update").and_then(|u| u.get("HealthCheck")));
                    let checks_pass = match mode.and_then(Value::as_str).unwrap_or("checks") {
                        "manual" => false,
                        "task_states" => true,
                        _ => self.health_checks_pass(alloc, &job, &group, oracle),
                    };
                    let healthy_since = if checks_pass { Some(alloc.healthy_since.unwrap_or(now)) } else { None };
                    let verdict = match healthy_since {
                        Some(at) if now >= at + min_healthy => Some(true),
                        _ if now >= since + healthy_deadline => Some(false),
                        Some(at) => {
                            due((at + min_healthy).min(since + healthy_deadline));
                            None
                        }
                        None => {
                            due(since + healthy_deadline);
                            None
                        }
                    };
                    let alloc = &mut self.allocs[i];
                    alloc.healthy_since = healthy_since;
                    if let Some(healthy) = verdict {
                        alloc.healthy = Some(healthy);
                        changed_allocs.push(i);
                    }
                }
                _ => {}
            }
        }
        if !changed_allocs.is_empty() {
            let index = self.bump(Table::Allocs);
            for i in changed_allocs {
                self.allocs[i].modify_index = index;
            }
        }
        // The leader's periodic dispatcher launches what is due.
        if let Some(at) = self.dispatch_periodic(config, now) {
            due(at);
        }
        // The servers react: deployments follow their allocations, the scheduler places
        // what is missing (blocked evaluations retried), rolls the next batch.
        if self.reconcile_pending(config, now) {
            due(now + Duration::from_millis(1));
        }
        self.sync_claims();
        self.refresh_job_status();
        let mut changed_deployments: Vec<String> = Vec::new();
        let alloc_counts: Vec<(String, String, Option<bool>)> =
            self.allocs.iter().filter_map(|a| a.deployment_id.clone().map(|d| (d, a.group.clone(), a.healthy))).collect();
        for d in self.deployments.iter_mut().filter(|d| d.status == "running") {
            for (name, progress) in d.groups.iter_mut() {
                let mine: Vec<&Option<bool>> =
                    alloc_counts.iter().filter(|(id, g, _)| *id == d.id && g == name).map(|(_, _, h)| h).collect();
                let (placed, healthy, unhealthy) = (
                    mine.len() as u64,
                    mine.iter().filter(|h| ***h == Some(true)).count() as u64,
                    mine.iter().filter(|h| ***h == Some(false)).count() as u64,
                );
                if healthy > progress.healthy {
                    progress.require_progress_by = now + scaled(config, progress.progress_deadline_ns);
                }
                if (placed, healthy, unhealthy) != (progress.placed, progress.healthy, progress.unhealthy) {
                    (progress.placed, progress.healthy, progress.unhealthy) = (placed, healthy, unhealthy);
                    changed_deployments.push(d.id.clone());
                }
            }
        }
        for d in self.deployments.iter_mut().filter(|d| d.status == "running") {
            if d.groups.values().any(|g| g.unhealthy > 0) {
                d.status = "failed";
                d.description = "Failed due to unhealthy allocations".into();
                changed_deployments.push(d.id.clone());
            } else if d.groups.values().all(|g| g.healthy >= g.desired_total) {
                d.status = "successful";
                d.description = "Deployment completed successfully".into();
                changed_deployments.push(d.id.clone());
            } else if d.groups.values().any(|g| g.healthy < g.desired_total && now >= g.require_progress_by) {
                d.status = "failed";
                d.description = "Failed due to progress deadline".into();
                changed_deployments.push(d.id.clone());
            } else {
                for g in d.groups.values().filter(|g| g.healthy < g.desired_total) {
                    due(g.require_progress_by);
                }
            }
        }
        if !changed_deployments.is_empty() {
            let index = self.bump(Table::Deployments);
            for d in self.deployments.iter_mut().filter(|d| changed_deployments.contains(&d.id)) {
                d.modify_index = index;
            }
            // Mark the job stable when its deployment succeeded.
            let successful: Vec<(String, String, u64)> = self
                .deployments
                .iter()
                .filter(|d| d.status == "successful")
                .map(|d| (d.namespace.clone(), d.job_id.clone(), d.job_version))
                .collect();
            for (ns, job, version) in successful {
                if let Some(record) = self.jobs.get_mut(&(ns, job)) {
                    for v in record.versions.iter_mut().filter(|v| v["Version"].as_u64() == Some(version)) {
                        v["Stable"] = json!(true);
                    }
                }
            }
            // A healthy allocation lets the next batch of a rolling update go.
            due(now + Duration::from_millis(1));
        }
        next
    }

    pub fn refresh_job_status(&mut self) {
        let keys: Vec<(String, String)> = self.jobs.keys().cloned().collect();
        for key in keys {
            // Nomad's getJobStatus (nomad/state/state_store.go): system, periodic and
            // parameterized jobs run until stopped; others run while an allocation is not
            // terminal, are pending while an evaluation is, and are dead once all have ended.
            let of_job = |a: &&Alloc| a.namespace == key.0 && a.job_id == key.1;
            let has_alloc = self.allocs.iter().filter(of_job).count() > 0;
            let running = self.allocs.iter().filter(of_job).any(|a| a.is_live());
            let evals: Vec<&Value> = self.evals.iter().filter(|e| str_of(e, "Namespace") == key.0 && str_of(e, "JobID") == key.1).collect();
            let eval_pending = evals.iter().any(|e| !matches!(str_of(e, "Status"), "complete" | "failed" | "canceled"));
            let record = self.jobs.get_mut(&key).unwrap();
            let current = record.versions.last_mut().unwrap();
            let stopped = current["Stop"].as_bool().unwrap_or(false);
            let always_running = matches!(str_of(current, "Type"), "system" | "sysbatch")
                || !current["Periodic"].is_null() && current.get("Periodic").is_some()
                || !current["ParameterizedJob"].is_null() && current.get("ParameterizedJob").is_some();
            let status = if stopped {
                "dead"
            } else if always_running || running {
                "running"
            } else if eval_pending {
                "pending"
            } else if has_alloc || !evals.is_empty() {
                "dead"
            } else {
                "pending"
            };
            current["Status"] = json!(status);
        }
    }
}

/// Every (service, check, task name) of a group, task services included.
pub fn service_checks(_job: &Value, group: &Value) -> Vec<(Value, Value, String)> {
    let mut out = Vec::new();
    for service in list(group, "Services") {
        for check in list(service, "Checks") {
            out.push((service.clone(), check.clone(), String::new()));
        }
    }
    for task in list(group, "Tasks") {
        for service in list(task, "Services") {
            for check in list(service, "Checks") {
                out.push((service.clone(), check.clone(), str_of(task, "Name").to_string()));
            }
        }
    }
    out
}

pub fn probe_for(alloc: &Alloc, job: &Value, service: &Value, check: &Value, task: &str) -> CheckProbe {
    CheckProbe {
        job_id: alloc.job_id.clone(),
        group: alloc.group.clone(),
        group_index: alloc.group_index,
        alloc_index: alloc.alloc_index,
        service: interpolate_service_name(str_of(service, "Name"), str_of(job, "Name"), &alloc.group, task),
        check_name: str_of(check, "Name").to_string(),
        check_type: str_of(check, "Type").to_string(),
        path: str_of(check, "Path").to_string(),
    }
}

pub fn task_event(event_type: &str, message: &str, fails_task: bool) -> Value {
    json!({
        "Type": event_type, "Time": now_ns(), "Message": message, "DisplayMessage": message,
        "Details": {}, "FailsTask": fails_task, "DriverError": if event_type == "Driver Failure" { message } else { "" },
    })
}

pub fn task_state(state: &str, failed: bool, events: Vec<Value>) -> Value {
    json!({ "State": state, "Failed": failed, "Restarts": 0, "Events": events })
}

/// `path "…"` patterns of an ACL policy's rules (HCL), enough for variable paths.
fn policy_paths(rules: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = rules;
    while let Some(at) = rest.find("path") {
        rest = &rest[at + 4..];
        let trimmed = rest.trim_start();
        if let Some(quoted) = trimmed.strip_prefix('"') {
            if let Some(end) = quoted.find('"') {
                paths.push(quoted[..end].to_string());
            }
        }
    }
    paths
}

fn glob_matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => pattern == path,
    }
}
