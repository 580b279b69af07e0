//! Response bodies pgnomad reads, named as Nomad names them (`server.*` types of
//! nomad-api-schema.json). Only the fields pgnomad needs; everything defaults so that a field
//! Nomad leaves out, or sends as `null`, never breaks decoding.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// Nomad sends `null` for empty slices and maps; treat it as empty.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobRegisterResponse {
    #[serde(rename = "EvalID")]
    pub eval_id: String,
    pub eval_create_index: u64,
    pub job_modify_index: u64,
    pub warnings: String,
    pub index: u64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobPlanResponse {
    pub annotations: Option<PlanAnnotations>,
    #[serde(rename = "FailedTGAllocs", deserialize_with = "null_as_default")]
    pub failed_tg_allocs: BTreeMap<String, AllocMetric>,
    /// Pass this as the register's `JobModifyIndex` to refuse changes made since the plan.
    pub job_modify_index: u64,
    pub diff: Option<JobDiff>,
    pub warnings: String,
    pub index: u64,
}

impl JobPlanResponse {
    /// True when applying the plan would change the job or its allocations.
    pub fn has_changes(&self) -> bool {
        let diff_changes = self.diff.as_ref().is_some_and(|d| d.diff_type != DiffType::None);
        let update_changes = self.annotations.as_ref().is_some_and(|a| a.desired_tg_updates.values().any(DesiredUpdates::changes_anything));
        diff_changes || update_changes
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct PlanAnnotations {
    #[serde(rename = "DesiredTGUpdates", deserialize_with = "null_as_default")]
    pub desired_tg_updates: BTreeMap<String, DesiredUpdates>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct DesiredUpdates {
    pub ignore: u64,
    pub place: u64,
    pub migrate: u64,
    pub stop: u64,
    pub in_place_update: u64,
    pub destructive_update: u64,
    pub canary: u64,
    pub preemptions: u64,
    pub disconnect: u64,
    pub reconnect: u64,
    pub reschedule_now: u64,
    pub reschedule_later: u64,
}

impl DesiredUpdates {
    pub fn changes_anything(&self) -> bool {
        self.place + self.migrate + self.stop + self.in_place_update + self.destructive_update + self.canary > 0
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum DiffType {
    Added,
    Deleted,
    Edited,
    #[default]
    None,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobDiff {
    #[serde(rename = "Type")]
    pub diff_type: DiffType,
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(deserialize_with = "null_as_default")]
    pub fields: Vec<FieldDiff>,
    #[serde(deserialize_with = "null_as_default")]
    pub objects: Vec<ObjectDiff>,
    #[serde(deserialize_with = "null_as_default")]
    pub task_groups: Vec<TaskGroupDiff>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskGroupDiff {
    #[serde(rename = "Type")]
    pub diff_type: DiffType,
    pub name: String,
    #[serde(deserialize_with = "null_as_default")]
    pub fields: Vec<FieldDiff>,
    #[serde(deserialize_with = "null_as_default")]
    pub objects: Vec<ObjectDiff>,
    #[serde(deserialize_with = "null_as_default")]
    pub tasks: Vec<TaskDiff>,
    /// Counts per update kind, e.g. {"create": 1, "destructive": 2}.
    #[serde(deserialize_with = "null_as_default")]
    pub updates: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskDiff {
    #[serde(rename = "Type")]
    pub diff_type: DiffType,
    pub name: String,
    #[serde(deserialize_with = "null_as_default")]
    pub fields: Vec<FieldDiff>,
    #[serde(deserialize_with = "null_as_default")]
    pub objects: Vec<ObjectDiff>,
    #[serde(deserialize_with = "null_as_default")]
    pub annotations: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct FieldDiff {
    #[serde(rename = "Type")]
    pub diff_type: DiffType,
    pub name: String,
    pub old: String,
    pub new: String,
    #[serde(deserialize_with = "null_as_default")]
    pub annotations: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ObjectDiff {
    #[serde(rename = "Type")]
    pub diff_type: DiffType,
    pub name: String,
    #[serde(deserialize_with = "null_as_default")]
    pub fields: Vec<FieldDiff>,
    #[serde(deserialize_with = "null_as_default")]
    pub objects: Vec<ObjectDiff>,
}

/// Why the scheduler could not place a group's allocations.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct AllocMetric {
    pub nodes_evaluated: u64,
    pub nodes_filtered: u64,
    pub nodes_in_pool: u64,
    #[serde(deserialize_with = "null_as_default")]
    pub nodes_available: BTreeMap<String, u64>,
    #[serde(deserialize_with = "null_as_default")]
    pub constraint_filtered: BTreeMap<String, u64>,
    pub nodes_exhausted: u64,
    #[serde(deserialize_with = "null_as_default")]
    pub dimension_exhausted: BTreeMap<String, u64>,
    #[serde(deserialize_with = "null_as_default")]
    pub resources_exhausted: BTreeMap<String, Value>,
    pub coalesced_failures: u64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Job {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub region: String,
    #[serde(rename = "Type")]
    pub job_type: String,
    pub status: String,
    pub status_description: String,
    pub stop: bool,
    pub stable: bool,
    pub version: u64,
    pub submit_time: i64,
    #[serde(deserialize_with = "null_as_default")]
    pub meta: BTreeMap<String, String>,
    #[serde(deserialize_with = "null_as_default")]
    pub task_groups: Vec<JobTaskGroup>,
    pub create_index: u64,
    pub modify_index: u64,
    pub job_modify_index: u64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobTaskGroup {
    pub name: String,
    pub count: u64,
    #[serde(deserialize_with = "null_as_default")]
    pub meta: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobVersionsResponse {
    #[serde(deserialize_with = "null_as_default")]
    pub versions: Vec<Job>,
    #[serde(deserialize_with = "null_as_default")]
    pub diffs: Vec<JobDiff>,
    pub index: u64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobListStub {
    #[serde(rename = "ID")]
    pub id: String,
    /// The periodic or parameterized job this one was launched from (empty otherwise).
    #[serde(rename = "ParentID")]
    pub parent_id: String,
    pub name: String,
    pub namespace: String,
    #[serde(rename = "Type")]
    pub job_type: String,
    pub status: String,
    pub status_description: String,
    pub stop: bool,
    /// Present only when listed with `meta=true`.
    #[serde(deserialize_with = "null_as_default")]
    pub meta: BTreeMap<String, String>,
    pub job_summary: Option<JobSummary>,
    pub create_index: u64,
    pub modify_index: u64,
    pub job_modify_index: u64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobSummary {
    #[serde(rename = "JobID")]
    pub job_id: String,
    #[serde(deserialize_with = "null_as_default")]
    pub summary: BTreeMap<String, TaskGroupSummary>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskGroupSummary {
    pub queued: u64,
    pub complete: u64,
    pub failed: u64,
    pub running: u64,
    pub starting: u64,
    pub lost: u64,
    pub unknown: u64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct AllocListStub {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "EvalID")]
    pub eval_id: String,
    pub name: String,
    pub namespace: String,
    #[serde(rename = "NodeID")]
    pub node_id: String,
    pub node_name: String,
    #[serde(rename = "JobID")]
    pub job_id: String,
    pub job_version: u64,
    pub task_group: String,
    pub desired_status: String,
    pub desired_description: String,
    pub client_status: String,
    pub client_description: String,
    #[serde(deserialize_with = "null_as_default")]
    pub task_states: BTreeMap<String, TaskState>,
    pub deployment_status: Option<AllocDeploymentStatus>,
    #[serde(rename = "FollowupEvalID")]
    pub followup_eval_id: String,
    pub create_index: u64,
    pub modify_index: u64,
}

impl AllocListStub {
    /// Every task event of the allocation, oldest first per task: what a user needs to see
    /// when a deployment fails (e.g. `Driver Failure`, `Missing: nomadVar...`).
    pub fn task_events(&self) -> impl Iterator<Item = (&str, &TaskEvent)> {
        self.task_states.iter().flat_map(|(task, state)| state.events.iter().map(move |event| (task.as_str(), event)))
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct AllocDeploymentStatus {
    pub healthy: Option<bool>,
    pub canary: bool,
    pub modify_index: u64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskState {
    pub state: String,
    pub failed: bool,
    pub restarts: u64,
    #[serde(deserialize_with = "null_as_default")]
    pub events: Vec<TaskEvent>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskEvent {
    #[serde(rename = "Type")]
    pub event_type: String,
    /// Unix nanoseconds.
    pub time: i64,
    pub message: String,
    pub display_message: String,
    #[serde(deserialize_with = "null_as_default")]
    pub details: BTreeMap<String, String>,
    pub fails_task: bool,
    pub driver_error: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Evaluation {
    #[serde(rename = "ID")]
    pub id: String,
    pub namespace: String,
    #[serde(rename = "Type")]
    pub eval_type: String,
    pub triggered_by: String,
    #[serde(rename = "JobID")]
    pub job_id: String,
    pub job_modify_index: u64,
    #[serde(rename = "DeploymentID")]
    pub deployment_id: String,
    pub status: String,
    pub status_description: String,
    pub blocked_eval: String,
    #[serde(rename = "FailedTGAllocs", deserialize_with = "null_as_default")]
    pub failed_tg_allocs: BTreeMap<String, AllocMetric>,
    #[serde(deserialize_with = "null_as_default")]
    pub queued_allocations: BTreeMap<String, u64>,
    pub create_index: u64,
    pub modify_index: u64,
}

pub mod deployment_status {
    pub const RUNNING: &str = "running";
    pub const PAUSED: &str = "paused";
    pub const FAILED: &str = "failed";
    pub const SUCCESSFUL: &str = "successful";
    pub const CANCELLED: &str = "cancelled";
    pub const BLOCKED: &str = "blocked";
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Deployment {
    #[serde(rename = "ID")]
    pub id: String,
    pub namespace: String,
    #[serde(rename = "JobID")]
    pub job_id: String,
    pub job_version: u64,
    pub job_modify_index: u64,
    pub job_spec_modify_index: u64,
    pub job_create_index: u64,
    #[serde(deserialize_with = "null_as_default")]
    pub task_groups: BTreeMap<String, DeploymentState>,
    pub status: String,
    pub status_description: String,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Deployment {
    /// Successful, failed or cancelled: the deployment will not change any more.
    pub fn is_terminal(&self) -> bool {
        matches!(self.status.as_str(), deployment_status::SUCCESSFUL | deployment_status::FAILED | deployment_status::CANCELLED)
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct DeploymentState {
    pub auto_revert: bool,
    pub auto_promote: bool,
    /// Nanoseconds.
    pub progress_deadline: i64,
    pub require_progress_by: Option<String>,
    pub promoted: bool,
    #[serde(deserialize_with = "null_as_default")]
    pub placed_canaries: Vec<String>,
    pub desired_canaries: u64,
    pub desired_total: u64,
    pub placed_allocs: u64,
    pub healthy_allocs: u64,
    pub unhealthy_allocs: u64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct DeploymentUpdateResponse {
    #[serde(rename = "EvalID")]
    pub eval_id: String,
    pub eval_create_index: u64,
    pub deployment_modify_index: u64,
    pub reverted_job_version: Option<u64>,
    pub index: u64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobDeregisterResponse {
    #[serde(rename = "EvalID")]
    pub eval_id: String,
    pub eval_create_index: u64,
    pub job_modify_index: u64,
    pub index: u64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct PeriodicForceResponse {
    #[serde(rename = "EvalID")]
    pub eval_id: String,
    pub eval_create_index: u64,
    pub index: u64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobDispatchResponse {
    #[serde(rename = "DispatchedJobID")]
    pub dispatched_job_id: String,
    #[serde(rename = "EvalID")]
    pub eval_id: String,
    pub eval_create_index: u64,
    pub job_create_index: u64,
    pub index: u64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct CsiVolume {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    #[serde(rename = "ExternalID")]
    pub external_id: String,
    pub namespace: String,
    #[serde(rename = "PluginID")]
    pub plugin_id: String,
    pub provider: String,
    pub access_mode: String,
    pub attachment_mode: String,
    pub capacity: i64,
    pub schedulable: bool,
    /// Allocation ID → allocation stub (Nomad sends null values here).
    #[serde(deserialize_with = "null_as_default")]
    pub read_allocs: BTreeMap<String, Value>,
    #[serde(deserialize_with = "null_as_default")]
    pub write_allocs: BTreeMap<String, Value>,
    pub create_index: u64,
    pub modify_index: u64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct CsiVolumeListStub {
    #[serde(rename = "ID")]
    pub id: String,
    pub namespace: String,
    pub name: String,
    #[serde(rename = "ExternalID")]
    pub external_id: String,
    pub access_mode: String,
    pub attachment_mode: String,
    pub current_readers: u64,
    pub current_writers: u64,
    pub schedulable: bool,
    #[serde(rename = "PluginID")]
    pub plugin_id: String,
    pub provider: String,
    pub create_index: u64,
    pub modify_index: u64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct CsiVolumeCreateResponse {
    #[serde(deserialize_with = "null_as_default")]
    pub volumes: Vec<CsiVolume>,
    pub warnings: String,
    pub index: u64,
}

/// `server.VariableDecrypted`: a Nomad Variable with its items in clear.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Variable {
    pub namespace: String,
    pub path: String,
    #[serde(deserialize_with = "null_as_default")]
    pub items: BTreeMap<String, String>,
    pub create_index: u64,
    pub modify_index: u64,
    pub create_time: i64,
    pub modify_time: i64,
}

/// `server.VariableMetadata`: a variable as `GET /v1/vars` lists it, without its items.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct VariableMetadata {
    pub namespace: String,
    pub path: String,
    pub create_index: u64,
    pub modify_index: u64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeListStub {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub address: String,
    pub datacenter: String,
    pub node_pool: String,
    pub status: String,
    pub scheduling_eligibility: String,
    pub drain: bool,
    pub version: String,
    #[serde(deserialize_with = "null_as_default")]
    pub drivers: BTreeMap<String, DriverInfo>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct DriverInfo {
    pub detected: bool,
    pub healthy: bool,
}

/// `GET /v1/agent/self`: lower-case top-level keys (command/agent.Self).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct AgentSelf {
    pub config: AgentConfig,
    pub member: AgentMember,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentConfig {
    pub region: String,
    pub datacenter: String,
    pub version: Option<Value>,
    #[serde(rename = "ACL")]
    pub acl: Option<Value>,
}

impl AgentConfig {
    /// Whether the agent enforces ACLs (then every request needs a token).
    pub fn acl_enabled(&self) -> bool {
        self.acl.as_ref().and_then(|acl| acl.get("Enabled")).and_then(Value::as_bool).unwrap_or(false)
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentMember {
    pub name: String,
    pub addr: String,
    pub port: u64,
    pub status: String,
    #[serde(deserialize_with = "null_as_default")]
    pub tags: BTreeMap<String, String>,
}

/// `ACLPolicy` as sent to `PUT /v1/acl/policy/:name`. With `JobACL` the policy applies to the
/// workload identity of that job (and optionally one group/task) — how a task gets to read
/// variables outside `nomad/jobs/<job>`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct AclPolicy {
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub description: String,
    pub rules: String,
    #[serde(rename = "JobACL", skip_serializing_if = "Option::is_none", default)]
    pub job_acl: Option<JobAcl>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct JobAcl {
    pub namespace: String,
    #[serde(rename = "JobID")]
    pub job_id: String,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub group: String,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub task: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_sample_from_the_docs_decodes() {
        // Shape of samples/job_plan_response.json (nulls and missing fields included).
        let body = serde_json::json!({
            "Index": 0, "Warnings": "", "JobModifyIndex": 0,
            "Diff": {"Type": "Added", "ID": "example", "Fields": null, "Objects": null,
                     "TaskGroups": [{"Type": "Added", "Name": "cache", "Updates": {"create": 1},
                                     "Tasks": [{"Type": "Added", "Name": "redis", "Annotations": ["forces create"],
                                                "Fields": [{"Type": "Added", "Name": "Driver", "Old": "", "New": "docker", "Annotations": null}]}]}]},
            "FailedTGAllocs": {"cache": {"CoalescedFailures": 3, "NodesEvaluated": 1, "NodesAvailable": {"dc1": 1}, "DimensionExhausted": {"cpu": 1}, "ClassFiltered": null}},
            "Annotations": {"DesiredTGUpdates": {"cache": {"Place": 11, "Ignore": 0}}}
        });
        let plan: JobPlanResponse = serde_json::from_value(body).unwrap();
        assert_eq!(plan.diff.as_ref().unwrap().diff_type, DiffType::Added);
        assert_eq!(plan.diff.as_ref().unwrap().task_groups[0].tasks[0].fields[0].new, "docker");
        assert_eq!(plan.annotations.as_ref().unwrap().desired_tg_updates["cache"].place, 11);
        assert_eq!(plan.failed_tg_allocs["cache"].dimension_exhausted["cpu"], 1);
        assert!(plan.has_changes());
    }
}
