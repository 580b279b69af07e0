//! `plan`: what `run` would do, from Nomad's own plan of each job (`PUT /v1/job/:id/plan`
//! with the diff), the cluster's CSI volumes and its secret variables. Nothing is written.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::compile::{self, Artifacts, JobRole};
use crate::config::Packs;
use crate::nomad::api::{DesiredUpdates, DiffType, JobDiff, JobPlanResponse};
use crate::settings::OperatorSecrets;
use crate::stack::Stack;
use crate::transport::Transport;

use super::secrets::{secret_plans, ExistingSecrets};
use super::{existing_jobs, Cluster, DeployError, Owner};

/// Which jobs a plan covers: all of the stack's, or one (`run --job ID`).
#[derive(Debug, Clone, Default)]
pub struct PlanScope {
    pub job: Option<String>,
    /// The operator's own check index for that one job: the job is taken as it is now at
    /// that index, so a change outside pgnomad is not a problem any more.
    pub check_index: Option<u64>,
    /// Take a job that does not exist yet as "to be added" without asking Nomad. `run` does:
    /// it registers such jobs with check index 0 (so a job created meanwhile is still caught),
    /// and Nomad's plan of them, made before the volumes exist, would only report the
    /// volumes as missing.
    pub skip_plan_of_new_jobs: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub cluster: String,
    /// In the order `run` writes them.
    pub secrets: Vec<SecretPlan>,
    pub volumes: Vec<VolumePlan>,
    pub jobs: Vec<JobPlan>,
    /// Reasons `run` would refuse; an empty list means it can go ahead.
    pub problems: Vec<Problem>,
    #[serde(skip)]
    pub(crate) artifacts: Artifacts,
    #[serde(skip)]
    pub(crate) existing_secrets: ExistingSecrets,
    #[serde(skip)]
    pub(crate) state: DeployState,
}

/// Where pgnomad records what it last registered: `pgnomad/<cluster>/state`, one item per job
/// (the [`compile::content_hash`] of the job as pgnomad registered it) and `pgnomad_version`.
/// Kept out of the jobs on purpose: job meta enters every task's combined meta, so a hash or a
/// version there would restart every member whenever it changes. Outside `nomad/jobs/`, so no
/// workload reads it.
pub fn state_path(cluster: &str) -> String {
    format!("pgnomad/{cluster}/state")
}

/// The item of the state variable that names the pgnomad version that last wrote it.
pub const STATE_VERSION_KEY: &str = "pgnomad_version";

/// The state variable as `plan` read it.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeployState {
    pub items: BTreeMap<String, String>,
    /// Its ModifyIndex, the check-and-set index of the next write (0: create).
    pub modify_index: u64,
}

impl Plan {
    pub fn has_changes(&self) -> bool {
        self.jobs.iter().any(|j| j.change != JobChange::Unchanged)
            || self.volumes.iter().any(|v| v.action == VolumeAction::Create)
            || self.secrets.iter().any(|s| matches!(s.action, SecretAction::Create | SecretAction::Extend))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SecretPlan {
    pub job: String,
    pub path: String,
    pub action: SecretAction,
    /// Key names only: values are never part of a plan.
    pub keys_to_add: Vec<String>,
    pub missing_operator_keys: Vec<String>,
    /// The variable's ModifyIndex, the check-and-set index of an extension (0: create).
    #[serde(skip)]
    pub(crate) modify_index: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecretAction {
    Create,
    /// Add the missing keys; existing values stay as they are.
    Extend,
    UpToDate,
    /// Kept in Vault, which pgnomad does not write.
    External,
}

#[derive(Debug, Clone, Serialize)]
pub struct VolumePlan {
    pub id: String,
    pub action: VolumeAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeAction {
    Create,
    /// Already there; never touched.
    Exists,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobChange {
    Added,
    Changed,
    Unchanged,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobPlan {
    pub id: String,
    pub role: JobRole,
    pub change: JobChange,
    /// The job's JobModifyIndex when planned (0: must not exist): `run` registers with it as
    /// the check-and-set index, so a change made since the plan is refused by Nomad.
    pub check_index: u64,
    pub owner: Owner,
    pub groups: Vec<GroupPlan>,
    /// Nomad's field/object diff.
    pub diff: Option<JobDiff>,
    /// Group → why the scheduler could not place it.
    pub placement_failures: BTreeMap<String, String>,
    pub warnings: String,
}

impl JobPlan {
    /// Whether registering this job starts a deployment to wait for.
    pub fn expects_deployment(&self) -> bool {
        self.role != JobRole::Backup && self.groups.iter().any(|g| g.place + g.destructive + g.in_place + g.stop > 0)
    }
}

/// Nomad's desired updates of one group.
#[derive(Debug, Clone, Serialize)]
pub struct GroupPlan {
    pub name: String,
    pub place: u64,
    pub stop: u64,
    pub in_place: u64,
    pub destructive: u64,
    pub ignore: u64,
    pub canary: u64,
}

impl GroupPlan {
    fn from_updates(name: &str, updates: &DesiredUpdates) -> Self {
        GroupPlan {
            name: name.to_string(),
            place: updates.place,
            stop: updates.stop,
            in_place: updates.in_place_update,
            destructive: updates.destructive_update,
            ignore: updates.ignore,
            canary: updates.canary,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Problem {
    /// A job with the stack's ID exists but is not this cluster's.
    ForeignJob {
        job: String,
        owner: Option<String>,
    },
    /// pgnomad's own job was edited outside pgnomad (its content no longer matches the hash
    /// pgnomad stamped on it).
    ChangedOutside {
        job: String,
        check_index: u64,
    },
    MissingOperatorKey {
        job: String,
        key: String,
        how: String,
    },
    /// Registering the postgres job would replace several member groups at once: Nomad rolls
    /// task groups in parallel, so every one of those members would restart together.
    MembersRestartTogether {
        job: String,
        members: Vec<String>,
    },
    /// A restored cluster's key whose value must come from its restore source, which does
    /// not have it.
    MissingSourceKey {
        key: String,
        source: String,
        path: String,
        source_key: String,
    },
    /// Some keys of the TLS set exist and others do not; the CA that could sign the rest is gone.
    IncompleteTlsSet {
        present: Vec<String>,
        missing: Vec<String>,
    },
    /// Two variables hold different values for a key that must be the same in both.
    InconsistentSecret {
        key: String,
        paths: Vec<String>,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::ForeignJob { job, owner: None } => write!(f, "job {job} exists but was not created by pgnomad (no pgnomad_cluster meta); pgnomad will not modify it — rename the cluster or remove that job yourself"),
            Problem::ForeignJob { job, owner: Some(owner) } => write!(f, "job {job} belongs to cluster \"{owner}\"; pgnomad will not modify it"),
            Problem::ChangedOutside { job, check_index } => write!(f, "job {job} was changed outside pgnomad since pgnomad last wrote it; to overwrite that change run `pgnomad run --job {job} --check-index {check_index}`"),
            Problem::MembersRestartTogether { job, members } => write!(f, "this change to {job} would replace {} at once (Nomad updates task groups in parallel), so those members would all restart together; `run` never restarts more than one member per registration — rolling such a change member by member, replicas first and the primary last after a switchover, is `pgnomad upgrade` (not built yet)", members.join(", ")),
            Problem::MissingOperatorKey { job, key, how } => write!(f, "secret {key} of {job} is missing and only you can provide it: {how}"),
            Problem::MissingSourceKey { key, source, path, source_key } => write!(f, "secret {key} is a copy of the restore source's {source_key}, and {path} has none: is {source} a cluster pgnomad runs on this Nomad (its variables kept)? `restore {{ from }}` must name it"),
            Problem::IncompleteTlsSet { present, missing } => write!(f, "the pgBackRest TLS set is incomplete ({} exist, {} missing) and cannot be completed without its CA; delete the tls_* keys from the cluster's variables to have pgnomad generate a new set", present.join(", "), missing.join(", ")),
            Problem::InconsistentSecret { key, paths } => write!(f, "secret {key} differs between {}; the jobs need the same value — pgnomad never changes an existing value, so make them equal by hand", paths.join(" and ")),
        }
    }
}

/// Plans the stack against the cluster.
pub async fn plan<N: Transport, C: Transport>(
    cluster: &Cluster<N, C>,
    stack: &Stack,
    packs: &Packs,
    operator: &OperatorSecrets,
    scope: &PlanScope,
) -> Result<Plan, DeployError> {
    let artifacts = compile::compile(stack, packs)?;
    let name = stack.cluster.name.value.clone();
    if let Some(only) = &scope.job {
        if !artifacts.jobs.iter().any(|j| j.id() == only) {
            let ids: Vec<&str> = artifacts.jobs.iter().map(|j| j.id()).collect();
            return Err(DeployError::Refused(format!("the stack has no job {only}; its jobs are {}", ids.join(", "))));
        }
    }
    let nomad = &cluster.nomad;

    let existing_secrets = ExistingSecrets::read(nomad, &name, &artifacts.secrets, stack.restore_source()).await?;
    let (secrets, mut problems) = secret_plans(&name, &artifacts.secrets, &existing_secrets, operator);

    let mut volumes = Vec::new();
    if !artifacts.volumes.is_empty() {
        let listed = nomad.list_csi_volumes(Some(&format!("{name}-"))).await.map_err(DeployError::api("listing CSI volumes"))?;
        for volume in &artifacts.volumes {
            let id = volume.id.clone().unwrap_or_default();
            let action = if listed.iter().any(|v| v.id == id) { VolumeAction::Exists } else { VolumeAction::Create };
            volumes.push(VolumePlan { id, action });
        }
    }

    let existing = existing_jobs(nomad, &name).await?;
    let state_at = state_path(&name);
    let state = match nomad.read_variable(&state_at).await.map_err(DeployError::api(format!("reading variable {state_at}")))? {
        Some(variable) => DeployState { items: variable.items, modify_index: variable.modify_index },
        None => DeployState::default(),
    };
    let mut jobs = Vec::new();
    for compiled in artifacts.jobs.iter().filter(|j| scope.job.as_ref().is_none_or(|only| only == j.id())) {
        let id = compiled.id().to_string();
        let owner = match existing.get(&id) {
            None => Owner::Absent,
            Some(stub) => Owner::of(&stub.meta, &name),
        };
        if let Owner::Other(other) = &owner {
            problems.push(Problem::ForeignJob { job: id.clone(), owner: other.clone() });
        }
        if scope.skip_plan_of_new_jobs && owner == Owner::Absent {
            jobs.push(JobPlan {
                id,
                role: compiled.role,
                change: JobChange::Added,
                check_index: 0,
                owner,
                groups: Vec::new(),
                diff: None,
                placement_failures: Default::default(),
                warnings: String::new(),
            });
            continue;
        }
        let body = serde_json::to_value(&compiled.job).expect("jobs serialize");
        let response: JobPlanResponse = nomad.plan_job(&body).await.map_err(DeployError::api(format!("planning {id}")))?;
        let change = match response.diff.as_ref().map(|d| d.diff_type) {
            Some(DiffType::Added) => JobChange::Added,
            _ if response.has_changes() => JobChange::Changed,
            _ => JobChange::Unchanged,
        };
        // pgnomad last registered exactly this content, yet Nomad sees a change: someone
        // edited pgnomad's job by hand.
        let registered_by_us = state.items.get(&id).is_some_and(|hash| *hash == compile::content_hash(&compiled.job));
        let alive = existing.get(&id).is_some_and(|stub| !stub.stop);
        if owner == Owner::Ours && alive && change == JobChange::Changed && registered_by_us && scope.check_index.is_none() {
            problems.push(Problem::ChangedOutside { job: id.clone(), check_index: response.job_modify_index });
        }
        let groups: Vec<GroupPlan> = response
            .annotations
            .as_ref()
            .map(|a| a.desired_tg_updates.iter().map(|(group, updates)| GroupPlan::from_updates(group, updates)).collect())
            .unwrap_or_default();
        if compiled.role == JobRole::Postgres {
            let replaced: Vec<String> = groups.iter().filter(|g| g.destructive > 0).map(|g| g.name.clone()).collect();
            if replaced.len() > 1 {
                problems.push(Problem::MembersRestartTogether { job: id.clone(), members: replaced });
            }
        }
        let placement_failures = response
            .failed_tg_allocs
            .iter()
            .map(|(group, metric)| {
                let reasons: Vec<String> = metric.constraint_filtered.keys().chain(metric.dimension_exhausted.keys()).cloned().collect();
                (group.clone(), if reasons.is_empty() { "no node can run it".to_string() } else { reasons.join("; ") })
            })
            .collect();
        jobs.push(JobPlan {
            id,
            role: compiled.role,
            change,
            check_index: scope.check_index.unwrap_or(response.job_modify_index),
            owner,
            groups,
            diff: response.diff,
            placement_failures,
            warnings: response.warnings,
        });
    }
    Ok(Plan { cluster: name, secrets, volumes, jobs, problems, artifacts, existing_secrets, state })
}
