//! What the double's endpoints do to its state: register (with check-and-set and server-side
//! validation), plan with a diff, placement with CSI claims, deregister, dispatch.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::reconcile::Reconciled;
use super::state::{list, new_id, now_ns, str_of, Deployment, GroupProgress, State, Table};
use super::DoubleConfig;
use crate::support::job_rules::{job_errors, multierror};

/// An error as Nomad's HTTP layer sends it: a status and a plain-text body.
pub type Failure = (u16, String);

/// Fields the server owns; left out when comparing two job specs.
const SERVER_FIELDS: &[&str] =
    &["Status", "StatusDescription", "Stable", "Version", "SubmitTime", "CreateIndex", "ModifyIndex", "JobModifyIndex"];

fn spec_of(job: &Value) -> Value {
    let mut spec = job.clone();
    if let Some(object) = spec.as_object_mut() {
        for field in SERVER_FIELDS {
            object.remove(*field);
        }
    }
    spec
}

/// Fills what Nomad's Canonicalize fills, so comparisons and validation see the same job.
pub fn with_defaults(mut job: Value, namespace: &str) -> Value {
    let object = job.as_object_mut().expect("a job is an object");
    let id = object.get("ID").and_then(Value::as_str).unwrap_or_default().to_string();
    object.entry("Name").or_insert(json!(id));
    object.insert("Namespace".into(), json!(namespace));
    object.entry("Region").or_insert(json!("global"));
    object.entry("Type").or_insert(json!("service"));
    object.entry("Priority").or_insert(json!(50));
    object.entry("NodePool").or_insert(json!("default"));
    object.entry("Stop").or_insert(json!(false));
    let batch = matches!(object.get("Type").and_then(Value::as_str), Some("batch" | "sysbatch"));
    if let Some(groups) = object.get_mut("TaskGroups").and_then(Value::as_array_mut) {
        for group in groups {
            if let Some(group) = group.as_object_mut() {
                group.entry("Count").or_insert(json!(1));
                restart_defaults(group, batch);
                let tasks = group.get_mut("Tasks").and_then(Value::as_array_mut).into_iter().flatten();
                for template in tasks.filter_map(|t| t.get_mut("Templates")).filter_map(Value::as_array_mut).flatten() {
                    template_defaults(template);
                }
            }
        }
    }
    job
}

/// api/tasks.go, Template.Canonicalize: what a template the job left unset gets. `Splay`
/// matters most: 5 s of random delay before a re-rendered template's change_mode.
fn template_defaults(template: &mut Value) {
    let Some(object) = template.as_object_mut() else { return };
    let mode = object.entry("ChangeMode").or_insert(json!("restart")).as_str().unwrap_or_default().to_string();
    object.entry("ChangeSignal").or_insert(json!(if mode == "signal" { "SIGHUP" } else { "" }));
    object.entry("Splay").or_insert(json!(5_000_000_000u64));
    object.entry("Perms").or_insert(json!("0644"));
}

/// api/tasks.go, TaskGroup.Canonicalize and Task.Canonicalize: the group's restart policy
/// is the job type's default with what the group set over it (service and system: 2
/// attempts in 30 min; batch and sysbatch: 3 in 24 h; 15 s delay, mode fail), and each task's
/// is the group's with what the task set over it.
fn restart_defaults(group: &mut serde_json::Map<String, Value>, batch: bool) {
    const SECOND: u64 = 1_000_000_000;
    let (attempts, interval) = if batch { (3, 24 * 3600 * SECOND) } else { (2, 1800 * SECOND) };
    let mut policy = json!({"Attempts": attempts, "Interval": interval, "Delay": 15 * SECOND, "Mode": "fail", "RenderTemplates": false});
    merge_set(&mut policy, group.get("RestartPolicy"));
    group.insert("RestartPolicy".into(), policy.clone());
    for task in group.get_mut("Tasks").and_then(Value::as_array_mut).into_iter().flatten() {
        let mut own = policy.clone();
        merge_set(&mut own, task.get("RestartPolicy"));
        task["RestartPolicy"] = own;
    }
}

/// RestartPolicy.Merge: every field `over` sets replaces the one in `into`.
fn merge_set(into: &mut Value, over: Option<&Value>) {
    for (key, value) in over.and_then(Value::as_object).into_iter().flatten() {
        if !value.is_null() {
            into[key.as_str()] = value.clone();
        }
    }
}

fn group_named<'a>(job: &'a Value, name: &str) -> Option<&'a Value> {
    list(job, "TaskGroups").iter().find(|g| str_of(g, "Name") == name)
}

fn without_count(group: &Value) -> Value {
    let mut group = group.clone();
    if let Some(object) = group.as_object_mut() {
        object.remove("Count");
    }
    group
}

/// What the scheduler does with one group (the plan's DesiredUpdates).
#[derive(Debug, Default, Clone)]
pub struct GroupUpdate {
    pub place: u64,
    pub stop: u64,
    pub ignore: u64,
    pub destructive: u64,
    pub in_place: u64,
    pub migrate: u64,
}

impl GroupUpdate {
    fn annotations(&self) -> Value {
        json!({
            "Ignore": self.ignore, "Place": self.place, "Migrate": self.migrate, "Stop": self.stop,
            "InPlaceUpdate": self.in_place, "DestructiveUpdate": self.destructive, "Canary": 0, "Preemptions": 0,
        })
    }
}

impl State {
    /// `PUT /v1/jobs`: validation, check-and-set, a new version, an evaluation, a deployment
    /// and the allocations it places.
    pub fn register(&mut self, request: &Value, namespace: &str, config: &DoubleConfig, now: Instant) -> Result<Value, Failure> {
        let job = with_defaults(request["Job"].clone(), namespace);
        let errors = job_errors(&job);
        if !errors.is_empty() {
            return Err((500, multierror(&errors)));
        }
        let id = str_of(&job, "ID").to_string();
        let key = (namespace.to_string(), id.clone());
        let existing = self.jobs.get(&key).map(|r| r.current().clone());
        if request.get("EnforceIndex").and_then(Value::as_bool).unwrap_or(false) {
            let wanted = request.get("JobModifyIndex").and_then(Value::as_u64).unwrap_or(0);
            let prefix = format!("Enforcing job modify index {wanted}");
            match (&existing, wanted) {
                (Some(_), 0) => return Err((500, format!("{prefix}: job already exists"))),
                (None, w) if w > 0 => return Err((500, format!("{prefix}: job does not exist"))),
                (Some(current), w) if current["JobModifyIndex"].as_u64() != Some(w) => {
                    let actual = current["JobModifyIndex"].as_u64().unwrap_or(0);
                    return Err((500, format!("{prefix}: job exists with conflicting job modify index: {actual}")));
                }
                _ => {}
            }
        }
        Ok(self.store_job(job, existing, config, now, "job-register"))
    }

    pub fn store_job(&mut self, job: Value, existing: Option<Value>, config: &DoubleConfig, now: Instant, triggered_by: &str) -> Value {
        self.store_job_reconciled(job, existing, config, now, triggered_by).0
    }

    pub fn store_job_reconciled(
        &mut self,
        mut job: Value,
        existing: Option<Value>,
        config: &DoubleConfig,
        now: Instant,
        triggered_by: &str,
    ) -> (Value, Reconciled) {
        let namespace = str_of(&job, "Namespace").to_string();
        let id = str_of(&job, "ID").to_string();
        let key = (namespace.clone(), id.clone());
        let index = self.bump(Table::Jobs);
        let unchanged = existing.as_ref().is_some_and(|e| spec_of(e) == spec_of(&job));
        let job_modify_index = if unchanged { existing.as_ref().unwrap()["JobModifyIndex"].as_u64().unwrap_or(index) } else { index };
        let version = match &existing {
            Some(e) if unchanged => e["Version"].as_u64().unwrap_or(0),
            Some(e) => e["Version"].as_u64().unwrap_or(0) + 1,
            None => 0,
        };
        let create_index = existing.as_ref().and_then(|e| e["CreateIndex"].as_u64()).unwrap_or(index);
        let object = job.as_object_mut().unwrap();
        object.insert("Version".into(), json!(version));
        object.insert("CreateIndex".into(), json!(create_index));
        object.insert("ModifyIndex".into(), json!(index));
        object.insert("JobModifyIndex".into(), json!(job_modify_index));
        object.insert("SubmitTime".into(), json!(now_ns()));
        object.insert("Status".into(), json!("pending"));
        object.insert("StatusDescription".into(), json!(""));
        object.insert("Stable".into(), json!(false));
        let record = self.jobs.entry(key).or_insert_with(|| super::state::JobRecord { versions: vec![] });
        if unchanged {
            *record.versions.last_mut().unwrap() = job.clone();
        } else {
            record.versions.push(job.clone());
        }

        let schedules_allocs = job.get("Periodic").is_none_or(Value::is_null) && job.get("ParameterizedJob").is_none_or(Value::is_null);
        let is_service = str_of(&job, "Type") == "service";
        let deployment_id = (!unchanged && is_service && schedules_allocs && !list(&job, "TaskGroups").is_empty()).then(new_id);
        if let Some(deployment_id) = &deployment_id {
            let deployment_index = self.bump(Table::Deployments);
            // A new deployment cancels the running one of the same job.
            for d in self.deployments.iter_mut().filter(|d| d.namespace == namespace && d.job_id == id && d.status == "running") {
                d.status = "cancelled";
                d.description = "Cancelled due to newer version of job".into();
                d.modify_index = deployment_index;
            }
            let mut progress = BTreeMap::new();
            for group in list(&job, "TaskGroups") {
                let nanos = |key: &str, default: i64| {
                    group
                        .get("Update")
                        .and_then(|u| u.get(key))
                        .or_else(|| job.get("Update").and_then(|u| u.get(key)))
                        .and_then(Value::as_i64)
                        .unwrap_or(default)
                };
                let deadline_ns = nanos("ProgressDeadline", 600_000_000_000);
                progress.insert(
                    str_of(group, "Name").to_string(),
                    GroupProgress {
                        desired_total: group["Count"].as_u64().unwrap_or(1),
                        placed: 0,
                        healthy: 0,
                        unhealthy: 0,
                        progress_deadline_ns: deadline_ns,
                        require_progress_by: now + std::time::Duration::from_nanos((deadline_ns as f64 * config.time_scale) as u64),
                        min_healthy: std::time::Duration::ZERO,
                        healthy_deadline: std::time::Duration::ZERO,
                    },
                );
            }
            self.deployments.push(Deployment {
                id: deployment_id.clone(),
                namespace: namespace.clone(),
                job_id: id.clone(),
                job_version: version,
                job_modify_index,
                job_create_index: create_index,
                groups: progress,
                status: "running",
                description: "Deployment is running".into(),
                create_index: deployment_index,
                modify_index: deployment_index,
            });
        }
        let eval_id = new_id();
        let result = self.reconcile_job(&namespace, &id, now, &eval_id);
        let eval_index = self.index + 1;
        self.record_eval(&eval_id, &job, triggered_by, deployment_id.as_deref().unwrap_or_default(), &result);
        self.refresh_job_status();
        let response = json!({
            "EvalID": eval_id, "EvalCreateIndex": eval_index, "JobModifyIndex": job_modify_index,
            "Warnings": "", "Index": self.index, "LastContact": 0, "KnownLeader": true, "NextToken": "",
        });
        (response, result)
    }

    /// `PUT /v1/job/:id/plan`: what register would do, without doing it (the scheduler runs
    /// on a copy of the cluster).
    pub fn plan(&self, request: &Value, namespace: &str, config: &DoubleConfig, now: Instant) -> Result<Value, Failure> {
        let job = with_defaults(request["Job"].clone(), namespace);
        let errors = job_errors(&job);
        if !errors.is_empty() {
            return Err((500, multierror(&errors)));
        }
        let existing = self.job(namespace, str_of(&job, "ID")).map(|r| r.current().clone());
        let previous = existing.as_ref().filter(|e| !e["Stop"].as_bool().unwrap_or(false));
        let mut scratch = self.clone();
        let (_, result) = scratch.store_job_reconciled(job.clone(), existing.clone(), config, now, "job-register");
        let desired: Map<String, Value> = result.updates.iter().map(|(g, u)| (g.clone(), u.annotations())).collect();
        let diff = if request.get("Diff").and_then(Value::as_bool).unwrap_or(false) {
            job_diff(previous, &job, &result.updates)
        } else {
            Value::Null
        };
        Ok(json!({
            "Annotations": {"DesiredTGUpdates": desired, "PreemptedAllocs": null},
            "FailedTGAllocs": if result.failed.is_empty() { Value::Null } else { Value::Object(result.failed) },
            "JobModifyIndex": existing.as_ref().and_then(|e| e["JobModifyIndex"].as_u64()).unwrap_or(0),
            "CreatedEvals": null, "Diff": diff, "NextPeriodicLaunch": "0001-01-01T00:00:00Z", "Warnings": "", "Index": self.index,
        }))
    }

    pub fn deregister(&mut self, namespace: &str, id: &str, purge: bool, now: Instant) -> Result<Value, Failure> {
        let key = (namespace.to_string(), id.to_string());
        if !self.jobs.contains_key(&key) {
            return Err((404, "job not found".into()));
        }
        let index = self.bump(Table::Jobs);
        // The FSM upserts a stopped copy: `Stop` is part of the spec (Job.SpecChanged), so a
        // running job's stop is a new version with a new JobModifyIndex; stopping it again is not.
        let versions = &mut self.jobs.get_mut(&key).unwrap().versions;
        let mut stopped = versions.last().unwrap().clone();
        let was_stopped = stopped["Stop"] == json!(true);
        stopped["Stop"] = json!(true);
        stopped["Status"] = json!("dead");
        stopped["ModifyIndex"] = json!(index);
        if was_stopped {
            *versions.last_mut().unwrap() = stopped;
        } else {
            stopped["Version"] = json!(stopped["Version"].as_u64().unwrap_or(0) + 1);
            stopped["JobModifyIndex"] = json!(index);
            stopped["Stable"] = json!(false);
            versions.push(stopped);
        }
        let deployment_index = self.bump(Table::Deployments);
        for d in self.deployments.iter_mut().filter(|d| d.namespace == namespace && d.job_id == id && d.status == "running") {
            d.status = "cancelled";
            d.description = "Cancelled because job is stopped".into();
            d.modify_index = deployment_index;
        }
        let alloc_index = self.bump(Table::Allocs);
        for i in 0..self.allocs.len() {
            let a = &self.allocs[i];
            if a.namespace == namespace && a.job_id == id && a.is_live() {
                self.stop_alloc(i, now, "alloc not needed since job was stopped", alloc_index);
            }
        }
        for e in self.evals.iter_mut().filter(|e| e["Namespace"] == json!(namespace) && e["JobID"] == json!(id) && e["Status"] == "blocked")
        {
            e["Status"] = json!("canceled");
        }
        if purge {
            self.jobs.remove(&key);
        }
        let eval_id = new_id();
        let eval_index = self.bump(Table::Evals);
        self.evals.push(json!({
            "ID": eval_id, "Namespace": namespace, "Priority": 50, "Type": "service", "TriggeredBy": "job-deregister",
            "JobID": id, "JobModifyIndex": index, "Status": "complete", "CreateIndex": eval_index, "ModifyIndex": eval_index,
        }));
        self.refresh_job_status();
        Ok(
            json!({ "EvalID": eval_id, "EvalCreateIndex": eval_index, "JobModifyIndex": index, "VolumeEvalID": "", "VolumeEvalIndex": 0, "Index": self.index }),
        )
    }

    /// A child job of a periodic or parameterized job (`<id>/periodic-<t>`, `<id>/dispatch-<t>-<r>`).
    pub fn launch_child(
        &mut self,
        namespace: &str,
        id: &str,
        suffix: String,
        config: &DoubleConfig,
        now: Instant,
        meta: Option<&Value>,
    ) -> Result<(String, Value), Failure> {
        let parent = self.job(namespace, id).ok_or((404, "job not found".to_string()))?.current().clone();
        let mut child = parent.clone();
        let child_id = format!("{id}/{suffix}");
        let object = child.as_object_mut().unwrap();
        object.insert("ID".into(), json!(child_id));
        object.insert("Name".into(), json!(child_id));
        object.insert("ParentID".into(), json!(id));
        object.remove("Periodic");
        object.remove("ParameterizedJob");
        if let Some(meta) = meta.filter(|m| m.is_object()) {
            let merged = object.entry("Meta").or_insert(json!({}));
            if merged.is_null() {
                *merged = json!({});
            }
            for (k, v) in meta.as_object().unwrap() {
                merged[k] = v.clone();
            }
        }
        let response = self.store_job(child, None, config, now, "periodic-job");
        Ok((child_id, response))
    }
}

pub fn volume_access_mode(spec: &Value) -> String {
    match str_of(spec, "AccessMode") {
        "" => list(spec, "RequestedCapabilities").first().map(|c| str_of(c, "AccessMode").to_string()).unwrap_or_default(),
        mode => mode.to_string(),
    }
}

fn field_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn diff_type(old: Option<&Value>, new: Option<&Value>, edited: bool) -> &'static str {
    match (old, new) {
        (None, Some(_)) => "Added",
        (Some(_), None) => "Deleted",
        _ if edited => "Edited",
        _ => "None",
    }
}

/// Field and object diffs of two JSON objects, in Nomad's FieldDiff/ObjectDiff shape.
fn object_members_diff(old: &Value, new: &Value, skip: &[&str]) -> (Vec<Value>, Vec<Value>) {
    let empty = Map::new();
    let old_map = old.as_object().unwrap_or(&empty);
    let new_map = new.as_object().unwrap_or(&empty);
    let mut keys: Vec<&String> = old_map.keys().chain(new_map.keys()).filter(|k| !skip.contains(&k.as_str())).collect();
    keys.sort();
    keys.dedup();
    let (mut fields, mut objects) = (Vec::new(), Vec::new());
    for key in keys {
        let (o, n) = (old_map.get(key).filter(|v| !v.is_null()), new_map.get(key).filter(|v| !v.is_null()));
        let nested = o.or(n).is_some_and(|v| v.is_object() || v.is_array());
        if nested {
            if let Some(object) = object_diff(key, o, n) {
                objects.push(object);
            }
        } else if o != n {
            fields.push(json!({"Type": diff_type(o, n, true), "Name": key, "Old": o.map(field_text).unwrap_or_default(), "New": n.map(field_text).unwrap_or_default(), "Annotations": null}));
        }
    }
    (fields, objects)
}

fn object_diff(name: &str, old: Option<&Value>, new: Option<&Value>) -> Option<Value> {
    if old == new {
        return None;
    }
    let as_object = |v: Option<&Value>| -> Value {
        match v {
            Some(Value::Array(items)) => {
                Value::Object(items.iter().enumerate().map(|(i, item)| (format!("{name}[{i}]"), item.clone())).collect())
            }
            Some(other) => other.clone(),
            None => json!({}),
        }
    };
    let (fields, objects) = object_members_diff(&as_object(old), &as_object(new), &[]);
    Some(json!({"Type": diff_type(old, new, true), "Name": name, "Fields": fields, "Objects": objects}))
}

pub fn job_diff(old: Option<&Value>, new: &Value, updates: &BTreeMap<String, GroupUpdate>) -> Value {
    let old_spec = old.map(spec_of);
    let new_spec = spec_of(new);
    let (fields, objects) = object_members_diff(old_spec.as_ref().unwrap_or(&json!({})), &new_spec, &["TaskGroups"]);
    let mut names: Vec<String> = list(new, "TaskGroups").iter().map(|g| str_of(g, "Name").to_string()).collect();
    if let Some(old) = old {
        for g in list(old, "TaskGroups") {
            if !names.contains(&str_of(g, "Name").to_string()) {
                names.push(str_of(g, "Name").to_string());
            }
        }
    }
    let task_groups: Vec<Value> = names
        .iter()
        .map(|name| {
            let o = old.and_then(|j| group_named(j, name));
            let n = group_named(new, name);
            let (fields, objects) = object_members_diff(o.unwrap_or(&json!({})), n.unwrap_or(&json!({})), &["Tasks", "Name"]);
            let mut task_names: Vec<String> =
                n.map(|g| list(g, "Tasks")).unwrap_or_default().iter().map(|t| str_of(t, "Name").to_string()).collect();
            for t in o.map(|g| list(g, "Tasks")).unwrap_or_default() {
                if !task_names.contains(&str_of(t, "Name").to_string()) {
                    task_names.push(str_of(t, "Name").to_string());
                }
            }
            let task_of = |g: Option<&Value>, t: &str| g.and_then(|g| list(g, "Tasks").iter().find(|x| str_of(x, "Name") == t).cloned());
            let tasks: Vec<Value> = task_names
                .iter()
                .map(|t| {
                    let (to, tn) = (task_of(o, t), task_of(n, t));
                    let (fields, objects) =
                        object_members_diff(to.as_ref().unwrap_or(&json!({})), tn.as_ref().unwrap_or(&json!({})), &["Name"]);
                    let kind = diff_type(to.as_ref(), tn.as_ref(), !fields.is_empty() || !objects.is_empty());
                    let annotations: Vec<&str> = match kind {
                        "Added" => vec!["forces create"],
                        "Deleted" => vec!["forces destroy"],
                        "Edited" => vec!["forces create/destroy update"],
                        _ => vec![],
                    };
                    json!({"Type": kind, "Name": t, "Fields": fields, "Objects": objects, "Annotations": annotations})
                })
                .collect();
            let edited = !fields.is_empty() || !objects.is_empty() || tasks.iter().any(|t| t["Type"] != "None");
            let update = updates.get(name).cloned().unwrap_or_default();
            let mut counts = Map::new();
            for (key, value) in [
                ("create", update.place),
                ("destroy", update.stop),
                ("create/destroy update", update.destructive),
                ("in-place update", update.in_place),
                ("ignore", update.ignore),
            ] {
                if value > 0 {
                    counts.insert(key.into(), json!(value));
                }
            }
            json!({"Type": diff_type(o, n, edited), "Name": name, "Fields": fields, "Objects": objects, "Tasks": tasks, "Updates": counts})
        })
        .collect();
    let edited = !fields.is_empty() || !objects.is_empty() || task_groups.iter().any(|g| g["Type"] != "None");
    json!({"Type": diff_type(old, Some(new), edited), "ID": str_of(new, "ID"), "Fields": fields, "Objects": objects, "TaskGroups": task_groups})
}
