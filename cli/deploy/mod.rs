//! Operations on a cluster: plan, run, status, destroy. They talk to Nomad, Consul and
//! Patroni through `transport` (generic over [`Transport`] so tests can swap it), report
//! through a [`Reporter`] and never print. Every wait is a blocking query or a condition over
//! one (see `wait`).

mod destroy;
mod plan;
mod run;
mod secrets;
mod status;
mod wait;

use std::collections::BTreeMap;

use serde::Serialize;

pub use destroy::{destroy, destroy_targets, DestroyOptions, DestroySummary, DestroyTargets};
pub use plan::{
    plan, state_path, GroupPlan, JobChange, JobPlan, Plan, PlanScope, Problem, SecretAction, SecretPlan, VolumeAction, VolumePlan,
    STATE_VERSION_KEY,
};
pub use run::{run, JobAction, JobOutcome, RunOptions, RunSummary};
pub use status::{status, BackupStatus, Known, MemberStatus, Status};

use crate::compile::META_CLUSTER;
use crate::config::ConfigError;
use crate::consul::ConsulClient;
use crate::nomad::api::{self, Deployment};
use crate::secrets::TlsError;
use crate::transport::{NomadClient, Transport, TransportError};

/// The APIs an operation talks to.
pub struct Cluster<N: Transport, C: Transport> {
    pub nomad: NomadClient<N>,
    pub consul: ConsulClient<C>,
}

/// What an operation tells its user while it works. Every method has a quiet default, so a
/// reporter implements only what it shows.
pub trait Reporter: Send + Sync {
    /// A step starts or finishes ("creating 6 secret variables").
    fn step(&self, _message: &str) {}
    fn warn(&self, _message: &str) {}
    /// `run` has its plan and is about to write.
    fn planned(&self, _plan: &Plan) {}
    /// A deployment changed (placed/healthy/unhealthy counts or status).
    fn deployment(&self, _job: &str, _deployment: &Deployment) {}
    /// Consul's view of the members while `run` waits for a primary.
    fn primary_wait(&self, _passing_primaries: usize, _passing_members: usize, _members: usize) {}
}

/// A reporter that shows nothing.
pub struct Quiet;
impl Reporter for Quiet {}

/// Who a job on the server belongs to, from its `pgnomad_cluster` meta.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "cluster")]
pub enum Owner {
    /// No job with that ID.
    Absent,
    /// Carries `pgnomad_cluster` = this cluster.
    Ours,
    /// Exists without the meta, or with another cluster's name.
    Other(Option<String>),
}

impl Owner {
    pub fn of(meta: &BTreeMap<String, String>, cluster: &str) -> Owner {
        match meta.get(META_CLUSTER) {
            Some(owner) if owner == cluster => Owner::Ours,
            other => Owner::Other(other.cloned()),
        }
    }
}

/// One failed allocation with what its tasks went through.
#[derive(Debug, Clone, Serialize)]
pub struct FailedAllocation {
    pub name: String,
    pub client_status: String,
    /// (task, event type, message), oldest first per task.
    pub events: Vec<(String, String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("error: {0}")]
    Compile(#[from] ConfigError),
    #[error("error: {0}")]
    Tls(#[from] TlsError),
    /// pgnomad will not do it: a job it does not own, a job changed since the plan, a
    /// missing operator secret. Nothing was written for the refused part.
    #[error("error: {0}")]
    Refused(String),
    /// Nomad, Consul or the network failed under us.
    #[error("error: {what}: {source}")]
    Api { what: String, source: TransportError },
    #[error("error: deployment {deployment} of {job} {status}: {description}{}", failed_text(.allocations))]
    DeploymentFailed { job: String, deployment: String, status: String, description: String, allocations: Vec<FailedAllocation> },
    /// Gave up waiting; the cluster may still converge.
    #[error("error: timed out after {after:?} waiting for {what}")]
    TimedOut { what: String, after: std::time::Duration },
}

fn failed_text(allocations: &[FailedAllocation]) -> String {
    let mut text = String::new();
    for alloc in allocations {
        text.push_str(&format!("\n  allocation {} ({}):", alloc.name, alloc.client_status));
        for (task, kind, message) in &alloc.events {
            text.push_str(&format!("\n    {task}: {kind}: {message}"));
        }
    }
    text
}

impl DeployError {
    pub fn api(what: impl Into<String>) -> impl FnOnce(TransportError) -> DeployError {
        let what = what.into();
        move |source| DeployError::Api { what, source }
    }

    /// The cluster did not reach the wanted state (as opposed to a refusal or a failure to talk).
    pub fn is_not_converged(&self) -> bool {
        matches!(self, DeployError::DeploymentFailed { .. } | DeployError::TimedOut { .. })
    }

    pub fn is_refusal(&self) -> bool {
        matches!(self, DeployError::Refused(_) | DeployError::Compile(_))
    }
}

/// Failed or unhealthy allocations of a deployment, with their task events.
async fn failed_allocations<N: Transport>(nomad: &NomadClient<N>, job: &str, deployment_id: &str) -> Vec<FailedAllocation> {
    let Ok(allocations) = nomad.job_allocations(job).await else { return Vec::new() };
    allocations
        .iter()
        .filter(|a| {
            let in_deployment = a.deployment_status.is_some();
            let unhealthy = a.deployment_status.as_ref().is_some_and(|d| d.healthy == Some(false));
            (a.client_status == "failed" || unhealthy) && (in_deployment || deployment_id.is_empty())
        })
        .map(|a| FailedAllocation {
            name: a.name.clone(),
            client_status: a.client_status.clone(),
            events: a
                .task_events()
                .map(|(task, e)| {
                    let message = if e.display_message.is_empty() { &e.message } else { &e.display_message };
                    (task.to_string(), e.event_type.clone(), message.clone())
                })
                .collect(),
        })
        .collect()
}

/// Jobs whose ID starts with `<cluster>-`, by ID, with their meta. One request for every job
/// of the stack; ownership is then checked per exact ID, never by the prefix.
async fn existing_jobs<N: Transport>(nomad: &NomadClient<N>, cluster: &str) -> Result<BTreeMap<String, api::JobListStub>, DeployError> {
    let prefix = format!("{cluster}-");
    let jobs = nomad.list_jobs(Some(&prefix)).await.map_err(DeployError::api("listing the cluster's jobs"))?;
    Ok(jobs.into_iter().filter(|j| j.id.starts_with(&prefix)).map(|j| (j.id.clone(), j)).collect())
}
