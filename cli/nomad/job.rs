//! A typed model of the Nomad job API (`api.Job` and what it holds), with the exact field
//! names of Nomad's HTTP API. Only the fields pgnomad sets are modelled; everything is
//! optional so that what is not set is not sent and Nomad's defaults apply.
//!
//! JSON comes from serde (durations as integer nanoseconds, as the API takes them); the
//! HCL jobspec comes from the same value through `render::hcl`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

/// A duration that Nomad's API takes as integer nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nanos(pub Duration);

impl Nanos {
    pub const fn secs(s: u64) -> Self {
        Nanos(Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Self {
        Nanos(Duration::from_millis(ms))
    }
}

impl Serialize for Nanos {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0.as_nanos() as u64)
    }
}

impl<'de> Deserialize<'de> for Nanos {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Nanos(Duration::from_nanos(u64::deserialize(deserializer)?)))
    }
}

macro_rules! api_struct {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident : $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "PascalCase")]
        pub struct $name {
            $(
                $(#[$fmeta])*
                #[serde(skip_serializing_if = "Option::is_none", default)]
                pub $field: Option<$ty>,
            )*
        }
    };
}

api_struct! {
    pub struct Job {
        #[serde(rename = "ID")]
        pub id: String,
        pub name: String,
        pub namespace: String,
        pub region: String,
        #[serde(rename = "Type")]
        pub job_type: String,
        pub priority: i64,
        pub datacenters: Vec<String>,
        pub node_pool: String,
        pub constraints: Vec<Constraint>,
        pub spreads: Vec<Spread>,
        pub update: UpdateStrategy,
        pub periodic: PeriodicConfig,
        pub parameterized_job: ParameterizedJobConfig,
        pub meta: BTreeMap<String, String>,
        pub task_groups: Vec<TaskGroup>,
    }
}

api_struct! {
    pub struct Constraint {
        #[serde(rename = "LTarget")]
        pub l_target: String,
        pub operand: String,
        #[serde(rename = "RTarget")]
        pub r_target: String,
    }
}

impl Constraint {
    pub fn new(attribute: &str, operand: &str, value: &str) -> Self {
        Constraint { l_target: some(attribute), operand: some(operand), r_target: some(value) }
    }

    pub fn distinct_hosts() -> Self {
        Constraint { l_target: None, operand: some("distinct_hosts"), r_target: some("true") }
    }
}

api_struct! {
    pub struct Spread {
        pub attribute: String,
        pub weight: i64,
    }
}

api_struct! {
    pub struct TaskGroup {
        pub name: String,
        pub count: i64,
        pub constraints: Vec<Constraint>,
        pub spreads: Vec<Spread>,
        pub restart_policy: RestartPolicy,
        pub reschedule_policy: ReschedulePolicy,
        pub update: UpdateStrategy,
        pub shutdown_delay: Nanos,
        pub disconnect: DisconnectStrategy,
        pub consul: Consul,
        pub meta: BTreeMap<String, String>,
        pub networks: Vec<NetworkResource>,
        pub volumes: BTreeMap<String, VolumeRequest>,
        pub services: Vec<Service>,
        pub tasks: Vec<Task>,
    }
}

api_struct! {
    pub struct Task {
        pub name: String,
        pub driver: String,
        pub user: String,
        pub lifecycle: TaskLifecycle,
        pub config: BTreeMap<String, serde_json::Value>,
        pub env: BTreeMap<String, String>,
        pub services: Vec<Service>,
        pub resources: Resources,
        pub restart_policy: RestartPolicy,
        pub meta: BTreeMap<String, String>,
        pub kill_timeout: Nanos,
        pub kill_signal: String,
        pub templates: Vec<Template>,
        pub volume_mounts: Vec<VolumeMount>,
        pub vault: Vault,
        pub consul: Consul,
    }
}

api_struct! {
    pub struct TaskLifecycle {
        pub hook: String,
        pub sidecar: bool,
    }
}

api_struct! {
    pub struct Resources {
        #[serde(rename = "CPU")]
        pub cpu: i64,
        #[serde(rename = "MemoryMB")]
        pub memory_mb: i64,
        #[serde(rename = "MemoryMaxMB")]
        pub memory_max_mb: i64,
    }
}

api_struct! {
    pub struct RestartPolicy {
        pub interval: Nanos,
        pub attempts: i64,
        pub delay: Nanos,
        pub mode: String,
    }
}

api_struct! {
    pub struct ReschedulePolicy {
        pub attempts: i64,
        pub interval: Nanos,
        pub delay: Nanos,
        pub delay_function: String,
        pub max_delay: Nanos,
        pub unlimited: bool,
    }
}

api_struct! {
    pub struct UpdateStrategy {
        pub max_parallel: i64,
        pub health_check: String,
        pub min_healthy_time: Nanos,
        pub healthy_deadline: Nanos,
        pub progress_deadline: Nanos,
        pub auto_revert: bool,
        pub canary: i64,
    }
}

api_struct! {
    /// A job that runs only when dispatched (`nomad job dispatch`), each run a child job.
    pub struct ParameterizedJobConfig {
        /// "optional", "required" or "forbidden".
        pub payload: String,
        pub meta_required: Vec<String>,
        pub meta_optional: Vec<String>,
    }
}

api_struct! {
    pub struct PeriodicConfig {
        pub enabled: bool,
        pub specs: Vec<String>,
        pub spec_type: String,
        pub prohibit_overlap: bool,
        pub time_zone: String,
    }
}

api_struct! {
    pub struct NetworkResource {
        pub mode: String,
        pub dynamic_ports: Vec<Port>,
    }
}

api_struct! {
    pub struct Port {
        pub label: String,
        pub to: i64,
    }
}

api_struct! {
    pub struct VolumeRequest {
        pub name: String,
        #[serde(rename = "Type")]
        pub volume_type: String,
        pub source: String,
        pub read_only: bool,
        pub access_mode: String,
        pub attachment_mode: String,
        pub per_alloc: bool,
        pub mount_options: CsiMountOptions,
    }
}

api_struct! {
    pub struct CsiMountOptions {
        #[serde(rename = "FSType")]
        pub fs_type: String,
        pub mount_flags: Vec<String>,
    }
}

api_struct! {
    pub struct VolumeMount {
        pub volume: String,
        pub destination: String,
        pub read_only: bool,
    }
}

api_struct! {
    pub struct Service {
        pub name: String,
        pub tags: Vec<String>,
        pub port_label: String,
        pub address_mode: String,
        pub provider: String,
        pub checks: Vec<ServiceCheck>,
        pub check_restart: CheckRestart,
        pub meta: BTreeMap<String, String>,
        pub on_update: String,
        pub task_name: String,
    }
}

api_struct! {
    pub struct ServiceCheck {
        pub name: String,
        #[serde(rename = "Type")]
        pub check_type: String,
        pub command: String,
        pub args: Vec<String>,
        pub path: String,
        pub protocol: String,
        pub port_label: String,
        pub interval: Nanos,
        pub timeout: Nanos,
        pub method: String,
        pub task_name: String,
        pub on_update: String,
        pub success_before_passing: i64,
        pub failures_before_critical: i64,
        #[serde(rename = "TLSSkipVerify")]
        pub tls_skip_verify: bool,
        pub check_restart: CheckRestart,
    }
}

api_struct! {
    pub struct CheckRestart {
        pub limit: i64,
        pub grace: Nanos,
        pub ignore_warnings: bool,
    }
}

api_struct! {
    pub struct Template {
        pub embedded_tmpl: String,
        pub dest_path: String,
        pub change_mode: String,
        pub change_signal: String,
        pub perms: String,
        pub uid: i64,
        pub gid: i64,
        pub envvars: bool,
        pub splay: Nanos,
        pub left_delim: String,
        pub right_delim: String,
        pub wait: WaitConfig,
        pub err_missing_key: bool,
    }
}

api_struct! {
    pub struct WaitConfig {
        pub min: Nanos,
        pub max: Nanos,
    }
}

api_struct! {
    /// `disconnect`: what Nomad does with an allocation whose client stops heartbeating
    /// (Nomad 1.10+; the group fields `max_client_disconnect` and friends are ignored since).
    pub struct DisconnectStrategy {
        pub lost_after: Nanos,
        pub replace: bool,
        pub reconcile: String,
    }
}

api_struct! {
    /// `consul {}`: the task (or group) gets a Consul token from Nomad's workload identity.
    /// Empty means the default Consul cluster.
    pub struct Consul {
        pub cluster: String,
        pub namespace: String,
    }
}

api_struct! {
    pub struct Vault {
        pub role: String,
        pub change_mode: String,
    }
}

api_struct! {
    /// A CSI volume as `PUT /v1/volume/csi/:id/create` takes it (and `nomad volume create`).
    pub struct CsiVolume {
        #[serde(rename = "ID")]
        pub id: String,
        pub name: String,
        pub namespace: String,
        #[serde(rename = "PluginID")]
        pub plugin_id: String,
        pub requested_capacity_min: i64,
        pub requested_capacity_max: i64,
        pub requested_capabilities: Vec<CsiVolumeCapability>,
        pub mount_options: CsiMountOptions,
        pub parameters: BTreeMap<String, String>,
    }
}

api_struct! {
    pub struct CsiVolumeCapability {
        pub access_mode: String,
        pub attachment_mode: String,
    }
}

/// `Some(s.to_owned())`, for building the model tersely.
pub fn some(s: &str) -> Option<String> {
    Some(s.to_owned())
}
