//! The double's cluster: jobs with versions, evaluations, deployments, allocations, variables,
//! CSI volumes and ACL policies behind one raft-like index, and the simulated passage of time
//! that moves allocations and deployments along.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::{CheckProbe, DoubleConfig, HealthOracle};
use crate::support::job_rules::{check_on_update, interpolate_service_name, template_variable_reads};

pub const NODE_ID: &str = "f7476465-4d6e-c0de-0000-000000000001";
pub const NODE_NAME: &str = "double-client-1";

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

pub struct JobRecord {
    /// server.Job values, oldest first; the last one is current.
    pub versions: Vec<Value>,
}

impl JobRecord {
    pub fn current(&self) -> &Value {
        self.versions.last().expect("a job record has a version")
    }
}

pub struct Alloc {
    pub id: String,
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

    pub fn is_live(&self) -> bool {
        self.desired_status == "run" && matches!(self.client_status, "pending" | "running")
    }

    pub fn stub(&self) -> Value {
        json!({
            "ID": self.id, "EvalID": self.eval_id, "Name": self.name(), "Namespace": self.namespace,
            "NodeID": NODE_ID, "NodeName": NODE_NAME, "JobID": self.job_id, "JobType": "service",
            "JobVersion": self.job_version, "TaskGroup": self.group,
            "DesiredStatus": self.desired_status, "DesiredDescription": "",
            "ClientStatus": self.client_status, "ClientDescription": self.client_description,
            "TaskStates": self.task_states,
            "DeploymentStatus": self.deployment_id.as_ref().map(|_| json!({"Healthy": self.healthy, "Canary": false, "ModifyIndex": self.modify_index})),
            "FollowupEvalID": "", "CreateIndex": self.create_index, "ModifyIndex": self.modify_index,
            "CreateTime": 0, "ModifyTime": 0,
        })
    }
}

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

pub struct Variable {
    pub items: Value,
    pub create_index: u64,
    pub modify_index: u64,
    pub create_time: i64,
    pub modify_time: i64,
}

pub struct Volume {
    pub spec: Value,
    pub create_index: u64,
    pub modify_index: u64,
}

#[derive(Default)]
pub struct State {
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

    /// Every check that counts for deployment health passes right now (checks with
    /// on_update = "ignore" do not count, as in Nomad).
    fn health_checks_pass(&self, alloc: &Alloc, job: &Value, group: &Value, oracle: &HealthOracle) -> bool {
        service_checks(job, group).into_iter().all(|(service, check, task)| {
            check_on_update(&service, &check) == "ignore" || oracle(&probe_for(alloc, job, &service, &check, &task))
        })
    }

    /// Moves simulated time to `now`; returns the next instant something is due.
    pub fn advance(&mut self, now: Instant, config: &DoubleConfig, oracle: &HealthOracle) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut due = |at: Instant| next = Some(next.map_or(at, |n: Instant| n.min(at)));
        let mut changed_allocs: Vec<usize> = Vec::new();
        let mut deployment_updates: Vec<(String, String, &'static str)> = Vec::new(); // (deployment, group, healthy|unhealthy|placed)
        for i in 0..self.allocs.len() {
            let alloc = &self.allocs[i];
            if !alloc.is_live() {
                continue;
            }
            let Some((job, group)) = self.group_spec(alloc) else { continue };
            match alloc.client_status {
                "pending" => {
                    let blocked: Vec<(String, Vec<String>)> = list(&group, "Tasks")
                        .iter()
                        .map(|task| (str_of(task, "Name").to_string(), self.missing_template_reads(alloc, task)))
                        .filter(|(_, missing)| !missing.is_empty())
                        .collect();
                    let failing = self.failing_groups.iter().any(|(j, g)| *j == alloc.job_id && *g == alloc.group);
                    let start_at = alloc.created_at + config.start_delay;
                    let alloc = &mut self.allocs[i];
                    if !blocked.is_empty() {
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
                        alloc.healthy = Some(false);
                        changed_allocs.push(i);
                        if let Some(d) = &alloc.deployment_id {
                            deployment_updates.push((d.clone(), alloc.group.clone(), "unhealthy"));
                        }
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
                        let min_healthy = scaled(config, update_setting(&job, &group, "MinHealthyTime", 10 * SECOND));
                        due(now + min_healthy);
                    }
                }
                "running" if alloc.healthy.is_none() && alloc.deployment_id.is_some() => {
                    let since = alloc.running_since.unwrap_or(now);
                    let min_healthy = scaled(config, update_setting(&job, &group, "MinHealthyTime", 10 * SECOND));
                    let healthy_deadline = scaled(config, update_setting(&job, &group, "HealthyDeadline", 300 * SECOND));
                    let checks_pass = self.health_checks_pass(alloc, &job, &group, oracle);
                    let verdict = if checks_pass && now >= since + min_healthy {
                        Some(true)
                    } else if now >= since + healthy_deadline {
                        Some(false)
                    } else {
                        due(if checks_pass { since + min_healthy } else { since + healthy_deadline });
                        None
                    };
                    if let Some(healthy) = verdict {
                        let alloc = &mut self.allocs[i];
                        alloc.healthy = Some(healthy);
                        changed_allocs.push(i);
                        let kind = if healthy { "healthy" } else { "unhealthy" };
                        deployment_updates.push((alloc.deployment_id.clone().unwrap(), alloc.group.clone(), kind));
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
            self.refresh_job_status();
        }
        let mut changed_deployments: Vec<String> = Vec::new();
        for (deployment_id, group, kind) in deployment_updates {
            if let Some(d) = self.deployments.iter_mut().find(|d| d.id == deployment_id) {
                if let Some(progress) = d.groups.get_mut(&group) {
                    match kind {
                        "healthy" => {
                            progress.healthy += 1;
                            progress.require_progress_by = now + scaled(config, progress.progress_deadline_ns);
                        }
                        _ => progress.unhealthy += 1,
                    }
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
        }
        next
    }

    pub fn refresh_job_status(&mut self) {
        let keys: Vec<(String, String)> = self.jobs.keys().cloned().collect();
        for key in keys {
            let running = self.allocs.iter().any(|a| a.namespace == key.0 && a.job_id == key.1 && a.is_live());
            let record = self.jobs.get_mut(&key).unwrap();
            let current = record.versions.last_mut().unwrap();
            let stopped = current["Stop"].as_bool().unwrap_or(false);
            let status = if stopped {
                "dead"
            } else if running {
                "running"
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
