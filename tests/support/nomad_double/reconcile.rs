//! The reconciler (scheduler/reconciler, generic_sched.go), written from reading it: for each
//! group of the current job version, what to ignore, update in place, replace (destructive,
//! at most `update.max_parallel` at a time per group while earlier replacements are not yet
//! healthy), place and stop; placements go through the scheduler (`sched.rs`); what cannot be
//! placed is reported with its AllocMetric and retried when the cluster changes (blocked evals).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::ops::GroupUpdate;
use super::sched::{csi_sources, tasks_updated, Ask, Metric};
use super::state::{list, new_id, str_of, Alloc, State, Table};
use super::DoubleConfig;

#[derive(Debug, Default, Clone)]
pub struct Reconciled {
    pub updates: BTreeMap<String, GroupUpdate>,
    /// Group → AllocMetric (JSON) of its first failed placement.
    pub failed: Map<String, Value>,
    /// Group → placements that failed.
    pub queued: BTreeMap<String, u64>,
    pub changed: bool,
}

fn group_update_setting(job: &Value, group: &Value, key: &str) -> Option<i64> {
    group.get("Update").and_then(|u| u.get(key)).or_else(|| job.get("Update").and_then(|u| u.get(key))).and_then(Value::as_i64)
}

impl State {
    /// Asks the allocation to stop; it keeps running (and holding its claims) until the
    /// client reports it stopped.
    pub fn stop_alloc(&mut self, i: usize, now: Instant, description: &str, index: u64) {
        let alloc = &mut self.allocs[i];
        alloc.desired_status = "stop";
        alloc.desired_description = description.to_string();
        alloc.stop_requested_at = Some(now);
        alloc.modify_index = index;
        if alloc.client_status == "pending" && alloc.task_states.is_empty() {
            // Nothing started yet: the client just drops it.
            alloc.client_status = "complete";
        }
    }

    /// Runs the scheduler for one job: stops, in-place updates, replacements and placements.
    pub fn reconcile_job(&mut self, namespace: &str, job_id: &str, now: Instant, eval_id: &str) -> Reconciled {
        let mut result = Reconciled::default();
        let key = (namespace.to_string(), job_id.to_string());
        let Some(record) = self.jobs.get(&key) else { return result };
        let job = record.current().clone();
        let versions = record.versions.clone();
        let stopped = job["Stop"].as_bool().unwrap_or(false);
        let schedules = job.get("Periodic").is_none_or(Value::is_null) && job.get("ParameterizedJob").is_none_or(Value::is_null);
        let job_modify_index = job["JobModifyIndex"].as_u64().unwrap_or(0);
        let version = job["Version"].as_u64().unwrap_or(0);
        let latest_deployment =
            self.deployments.iter().rev().find(|d| d.namespace == namespace && d.job_id == job_id && d.job_version == version);
        let deployment_id = latest_deployment.filter(|d| d.status == "running").map(|d| d.id.clone());
        let deployment_failed = latest_deployment.is_some_and(|d| d.status == "failed");
        let index = self.index + 1;
        let group_names: Vec<String> =
            if stopped || !schedules { vec![] } else { list(&job, "TaskGroups").iter().map(|g| str_of(g, "Name").to_string()).collect() };

        // Groups that went away, or a stopped job.
        for i in 0..self.allocs.len() {
            let a = &self.allocs[i];
            if a.namespace == namespace && a.job_id == job_id && a.is_live() && !group_names.contains(&a.group) {
                let group = a.group.clone();
                let why = if stopped { "alloc not needed since job was stopped" } else { "alloc not needed due to job update" };
                self.stop_alloc(i, now, why, index);
                result.updates.entry(group).or_default().stop += 1;
                result.changed = true;
            }
        }
        for (group_index, group_name) in group_names.iter().enumerate() {
            let group = list(&job, "TaskGroups").iter().find(|g| str_of(g, "Name") == group_name).unwrap().clone();
            let count = group["Count"].as_u64().unwrap_or(1);
            let mut update = GroupUpdate::default();
            // A batch allocation that completed has done its work: Nomad's reconciler never
            // replaces it (only failed or lost ones are).
            let batch = matches!(str_of(&job, "Type"), "batch" | "sysbatch");
            let mut live: Vec<usize> = (0..self.allocs.len())
                .filter(|&i| {
                    let a = &self.allocs[i];
                    let done = batch && a.desired_status == "run" && a.client_status == "complete";
                    a.namespace == namespace && a.job_id == job_id && a.group == *group_name && (a.is_live() || done)
                })
                .collect();
            live.sort_by_key(|&i| (self.allocs[i].alloc_index, self.allocs[i].create_index));
            let mut by_index: BTreeMap<u64, usize> = BTreeMap::new();
            for i in live {
                let alloc_index = self.allocs[i].alloc_index;
                if alloc_index >= count || by_index.contains_key(&alloc_index) {
                    self.stop_alloc(i, now, "alloc not needed due to job update", index);
                    update.stop += 1;
                    result.changed = true;
                } else {
                    by_index.insert(alloc_index, i);
                }
            }
            // computeLimit: max_parallel minus this deployment's allocations not yet healthy.
            let max_parallel = group_update_setting(&job, &group, "MaxParallel").unwrap_or(0).max(0) as usize;
            let limit = if max_parallel == 0 {
                usize::MAX
            } else if deployment_failed {
                0
            } else {
                let part_of: Vec<&Alloc> = self
                    .allocs
                    .iter()
                    .filter(|a| a.is_live() && a.group == *group_name && a.deployment_id.is_some() && a.deployment_id == deployment_id)
                    .collect();
                if part_of.iter().any(|a| a.healthy == Some(false)) {
                    0
                } else {
                    max_parallel.saturating_sub(part_of.iter().filter(|a| a.healthy != Some(true)).count())
                }
            };
            let (mut destructive, mut in_place, mut place) = (Vec::new(), Vec::new(), Vec::new());
            for alloc_index in 0..count {
                match by_index.get(&alloc_index) {
                    Some(&i) => {
                        let a = &self.allocs[i];
                        let alloc_job = versions.iter().find(|v| v["Version"].as_u64() == Some(a.job_version)).unwrap_or(&job);
                        if alloc_job["JobModifyIndex"].as_u64() == Some(job_modify_index) {
                            update.ignore += 1;
                        } else if tasks_updated(alloc_job, &job, group_name).is_some() {
                            destructive.push(i);
                        } else {
                            in_place.push(i);
                        }
                    }
                    None => {
                        let previous = self.allocs.iter().rev().find(|a| {
                            a.namespace == namespace
                                && a.job_id == job_id
                                && a.group == *group_name
                                && a.alloc_index == alloc_index
                                && a.next_allocation.is_empty()
                        });
                        // A failed allocation is not rescheduled by the double.
                        if previous.is_some_and(|a| a.desired_status == "run" && a.client_status == "failed") {
                            update.ignore += 1;
                            continue;
                        }
                        let lost = previous.filter(|a| a.client_status == "lost").map(|a| a.id.clone());
                        place.push((alloc_index, lost));
                    }
                }
            }
            for i in in_place {
                let a = &mut self.allocs[i];
                a.job_version = version;
                a.deployment_id = deployment_id.clone();
                a.healthy = None;
                a.healthy_since = None;
                if a.client_status == "running" {
                    a.running_since = Some(now);
                }
                a.modify_index = index;
                update.in_place += 1;
                result.changed = true;
            }
            let take = destructive.len().min(limit);
            update.ignore += (destructive.len() - take) as u64;
            let mut failures: Vec<Metric> = Vec::new();
            for &old in &destructive[..take] {
                update.destructive += 1;
                let saved = self.allocs[old].clone();
                self.stop_alloc(old, now, "alloc is being updated due to job update", index);
                let alloc_index = saved.alloc_index;
                match self.place(
                    namespace,
                    &job,
                    &group,
                    group_index,
                    alloc_index,
                    eval_id,
                    deployment_id.clone(),
                    Some(saved.id.clone()),
                    now,
                    index,
                ) {
                    Ok(new) => {
                        self.allocs[old].next_allocation = new;
                        result.changed = true;
                    }
                    Err(metric) => {
                        // Nomad backs out the stop when the replacement cannot be placed.
                        self.allocs[old] = saved;
                        failures.push(metric);
                    }
                }
            }
            for (alloc_index, previous) in place {
                update.place += 1;
                match self.place(
                    namespace,
                    &job,
                    &group,
                    group_index,
                    alloc_index,
                    eval_id,
                    deployment_id.clone(),
                    previous.clone(),
                    now,
                    index,
                ) {
                    Ok(new) => {
                        if let Some(previous) = previous {
                            if let Some(p) = self.allocs.iter_mut().find(|a| a.id == previous) {
                                p.next_allocation = new;
                            }
                        }
                        result.changed = true;
                    }
                    Err(metric) => failures.push(metric),
                }
            }
            if let Some(first) = failures.first() {
                let mut metric = first.clone();
                metric.coalesced_failures = failures.len() as u64 - 1;
                result.failed.insert(group_name.clone(), metric.to_json());
                result.queued.insert(group_name.clone(), failures.len() as u64);
            }
            result.updates.insert(group_name.clone(), update);
        }
        if result.changed {
            self.bump(Table::Allocs);
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn place(
        &mut self,
        namespace: &str,
        job: &Value,
        group: &Value,
        group_index: usize,
        alloc_index: u64,
        eval_id: &str,
        deployment_id: Option<String>,
        previous: Option<String>,
        now: Instant,
        index: u64,
    ) -> Result<String, Metric> {
        let placed = self.select_node(&Ask { namespace, job, group, alloc_index })?;
        let id = new_id();
        let volumes: Vec<String> = csi_sources(group, alloc_index).into_iter().map(|(v, _)| v).collect();
        for volume in &volumes {
            self.volume_nodes.entry((namespace.to_string(), volume.clone())).or_insert(placed.node);
        }
        let node = &self.nodes[placed.node];
        self.allocs.push(Alloc {
            id: id.clone(),
            node: placed.node,
            node_id: node.id.clone(),
            node_name: node.name.clone(),
            ports: placed.ports,
            cpu: placed.cpu,
            memory_mb: placed.memory_mb,
            previous_allocation: previous.unwrap_or_default(),
            next_allocation: String::new(),
            desired_description: String::new(),
            stop_requested_at: None,
            healthy_since: None,
            checks: BTreeMap::new(),
            eval_id: eval_id.to_string(),
            namespace: namespace.to_string(),
            job_id: str_of(job, "ID").to_string(),
            job_version: job["Version"].as_u64().unwrap_or(0),
            group: str_of(group, "Name").to_string(),
            group_index,
            alloc_index,
            deployment_id,
            desired_status: "run",
            client_status: "pending",
            client_description: "No tasks have started".into(),
            task_states: BTreeMap::new(),
            healthy: None,
            created_at: now,
            running_since: None,
            volumes,
            create_index: index,
            modify_index: index,
        });
        Ok(id)
    }

    /// The eval a reconcile produced, and a blocked eval for what it could not place.
    pub fn record_eval(&mut self, eval_id: &str, job: &Value, triggered_by: &str, deployment_id: &str, result: &Reconciled) -> String {
        let namespace = str_of(job, "Namespace").to_string();
        let job_id = str_of(job, "ID").to_string();
        let eval_index = self.bump(Table::Evals);
        // One blocked eval per job: a newer one replaces it.
        for e in
            self.evals.iter_mut().filter(|e| e["Namespace"] == json!(namespace) && e["JobID"] == json!(job_id) && e["Status"] == "blocked")
        {
            e["Status"] = json!("canceled");
            e["StatusDescription"] = json!("evaluation superseded by a newer one");
            e["ModifyIndex"] = json!(eval_index);
        }
        let blocked_eval = if result.failed.is_empty() { String::new() } else { new_id() };
        let job_modify_index = job["JobModifyIndex"].as_u64().unwrap_or(0);
        self.evals.push(json!({
            "ID": eval_id, "Namespace": namespace, "Priority": job["Priority"].as_i64().unwrap_or(50), "Type": str_of(job, "Type"),
            "TriggeredBy": triggered_by, "JobID": job_id, "JobModifyIndex": job_modify_index,
            "DeploymentID": deployment_id, "Status": "complete", "StatusDescription": "",
            "BlockedEval": blocked_eval, "FailedTGAllocs": if result.failed.is_empty() { Value::Null } else { Value::Object(result.failed.clone()) },
            "QueuedAllocations": result.queued, "CreateIndex": eval_index, "ModifyIndex": eval_index,
        }));
        if !blocked_eval.is_empty() {
            self.evals.push(json!({
                "ID": blocked_eval, "Namespace": namespace, "Priority": job["Priority"].as_i64().unwrap_or(50), "Type": str_of(job, "Type"),
                "TriggeredBy": "queued-allocs", "JobID": job_id, "JobModifyIndex": job_modify_index, "DeploymentID": "",
                "Status": "blocked", "StatusDescription": "created to place remaining allocations", "BlockedEval": "",
                "FailedTGAllocs": Value::Object(result.failed.clone()), "QueuedAllocations": {}, "PreviousEval": eval_id,
                "CreateIndex": eval_index, "ModifyIndex": eval_index,
            }));
        }
        blocked_eval
    }

    /// What the servers do on their own after a change: blocked evals retried, lost
    /// allocations replaced, the next batch of a rolling update once the previous one is
    /// healthy. True when anything changed.
    pub fn reconcile_pending(&mut self, _config: &DoubleConfig, now: Instant) -> bool {
        let keys: Vec<(String, String)> = self.jobs.keys().cloned().collect();
        let mut any = false;
        for (namespace, job_id) in keys {
            let blocked = self
                .evals
                .iter()
                .position(|e| e["Namespace"] == json!(namespace) && e["JobID"] == json!(job_id) && e["Status"] == "blocked");
            let eval_id = match blocked {
                Some(i) => str_of(&self.evals[i], "ID").to_string(),
                None => new_id(),
            };
            let has_lost = self
                .allocs
                .iter()
                .any(|a| a.namespace == namespace && a.job_id == job_id && a.client_status == "lost" && a.next_allocation.is_empty());
            let result = self.reconcile_job(&namespace, &job_id, now, &eval_id);
            let job = self.jobs[&(namespace.clone(), job_id.clone())].current().clone();
            let deployment_id = self
                .deployments
                .iter()
                .rev()
                .find(|d| d.namespace == namespace && d.job_id == job_id && d.status == "running")
                .map(|d| d.id.clone())
                .unwrap_or_default();
            match blocked {
                Some(i) if result.changed || self.evals[i]["FailedTGAllocs"] != Value::Object(result.failed.clone()) => {
                    let eval_index = self.bump(Table::Evals);
                    let eval = &mut self.evals[i];
                    if result.failed.is_empty() {
                        eval["Status"] = json!("complete");
                        eval["StatusDescription"] = json!("");
                    }
                    eval["FailedTGAllocs"] = if result.failed.is_empty() { Value::Null } else { Value::Object(result.failed.clone()) };
                    eval["QueuedAllocations"] = json!(result.queued);
                    eval["ModifyIndex"] = json!(eval_index);
                    any = true;
                }
                Some(_) => {}
                None if result.changed || !result.failed.is_empty() => {
                    let trigger = if has_lost {
                        "node-update"
                    } else if deployment_id.is_empty() {
                        "alloc-stop"
                    } else {
                        "deployment-watcher"
                    };
                    self.record_eval(&eval_id, &job, trigger, &deployment_id, &result);
                    any = true;
                }
                None => {}
            }
        }
        any
    }

    /// A node changes status; allocations on a node that went down are lost (their claims
    /// released), and the scheduler replaces them elsewhere.
    pub fn set_node_status(&mut self, name: &str, status: &str, now: Instant) -> bool {
        let Some(node) = self.nodes.iter().position(|n| n.name == name) else { return false };
        self.nodes[node].status = status.to_string();
        self.bump(Table::Nodes);
        if status == "down" {
            let index = self.bump(Table::Allocs);
            for a in self.allocs.iter_mut().filter(|a| a.node == node && !a.client_terminal()) {
                a.desired_status = "stop";
                a.desired_description = "alloc is lost since its node is down".into();
                a.client_status = "lost";
                a.client_description = "alloc is lost since its node is down".into();
                a.stop_requested_at = Some(now);
                a.modify_index = index;
            }
        }
        true
    }
}
