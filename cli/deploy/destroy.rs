//! `destroy`: deregisters exactly the stack's jobs — by ID, and only those whose meta says
//! they belong to this cluster. A job that merely shares the prefix, or has no pgnomad meta,
//! is never touched. Volumes and secrets stay unless asked for.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::compile;
use crate::nomad::api;
use crate::stack::{Stack, Storage};
use crate::transport::Transport;

use super::{existing_jobs, Cluster, DeployError, Owner, Reporter};

#[derive(Debug, Clone, Copy, Default)]
pub struct DestroyOptions {
    pub purge: bool,
    pub delete_volumes: bool,
    pub delete_secrets: bool,
}

/// What a destroy would remove, for the user to confirm first.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DestroyTargets {
    pub jobs: Vec<String>,
    /// Jobs with the stack's IDs that pgnomad will not touch, and why.
    pub skipped: Vec<(String, String)>,
    pub volumes: Vec<String>,
    /// Variable paths (with their ModifyIndex for check-and-set deletes).
    pub secrets: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DestroySummary {
    pub deregistered: Vec<String>,
    pub skipped: Vec<(String, String)>,
    pub volumes_deleted: Vec<String>,
    pub secrets_deleted: Vec<String>,
}

pub async fn destroy_targets<N: Transport, C: Transport>(cluster: &Cluster<N, C>, stack: &Stack) -> Result<DestroyTargets, DeployError> {
    let name = &stack.cluster.name.value;
    let nomad = &cluster.nomad;
    let existing = existing_jobs(nomad, name).await?;
    let mut targets = DestroyTargets::default();
    for id in compile::job_ids(stack) {
        let Some(stub) = existing.get(&id) else { continue };
        match Owner::of(&stub.meta, name) {
            Owner::Ours => targets.jobs.push(id),
            Owner::Other(None) => targets.skipped.push((id, "it has no pgnomad_cluster meta: not created by pgnomad".into())),
            Owner::Other(Some(other)) => targets.skipped.push((id, format!("it belongs to cluster \"{other}\""))),
            Owner::Absent => {}
        }
    }
    // A periodic job's launches are jobs of their own (`<id>/periodic-<time>`): deregistering
    // the parent leaves a running backup running, so they go too, first.
    let parents: Vec<String> = targets.jobs.clone();
    for (id, stub) in &existing {
        let child_of_ours = parents.iter().any(|p| id.starts_with(&format!("{p}/periodic-")) || id.starts_with(&format!("{p}/dispatch-")));
        if child_of_ours && !stub.stop {
            targets.jobs.push(id.clone());
        }
    }
    if let Storage::Csi(_) = &stack.storage {
        let listed = nomad.list_csi_volumes(Some(&format!("{name}-member-"))).await.map_err(DeployError::api("listing CSI volumes"))?;
        for index in 0..stack.postgres.members.value {
            let id = compile::member_volume_id(name, index);
            if listed.iter().any(|v| v.id == id) {
                targets.volumes.push(id);
            }
        }
    }
    if matches!(stack.secrets, crate::stack::Secrets::NomadVariables) {
        let listed = nomad
            .list_variables(&format!("nomad/jobs/{name}-"))
            .await
            .map_err(DeployError::api("listing the cluster's secret variables"))?;
        for id in compile::job_ids(stack) {
            let path = format!("nomad/jobs/{id}");
            if let Some(variable) = listed.iter().find(|v| v.path == path) {
                targets.secrets.push((path, variable.modify_index));
            }
        }
        let store = super::secrets::tls_store_path(name);
        if let Some(variable) = nomad.read_variable(&store).await.map_err(DeployError::api(format!("reading variable {store}")))? {
            targets.secrets.push((store, variable.modify_index));
        }
    }
    // What run recorded of the jobs it registered goes with the secrets: without them the
    // cluster is gone for good, and a stale record would confuse the next plan.
    let state = super::plan::state_path(name);
    if let Some(variable) = nomad.read_variable(&state).await.map_err(DeployError::api(format!("reading variable {state}")))? {
        targets.secrets.push((state, variable.modify_index));
    }
    Ok(targets)
}

pub async fn destroy<N: Transport, C: Transport>(
    cluster: &Cluster<N, C>,
    targets: &DestroyTargets,
    options: DestroyOptions,
    reporter: &dyn Reporter,
) -> Result<DestroySummary, DeployError> {
    let nomad = &cluster.nomad;
    let mut summary = DestroySummary { skipped: targets.skipped.clone(), ..DestroySummary::default() };
    for (id, why) in &targets.skipped {
        reporter.warn(&format!("left {id} alone: {why}"));
    }
    // Dependents first, postgres last, so nothing is left pointing at a missing primary.
    for id in targets.jobs.iter().rev() {
        reporter.step(&format!("deregistering {id}{}", if options.purge { " (purge)" } else { "" }));
        nomad.deregister_job(id, options.purge).await.map_err(DeployError::api(format!("deregistering {id}")))?;
        summary.deregistered.push(id.clone());
    }
    if options.delete_volumes {
        for id in &targets.volumes {
            reporter.step(&format!("deleting CSI volume {id} once its claims are released"));
            await_unclaimed(nomad, id, Instant::now() + Duration::from_secs(300)).await?;
            nomad.delete_csi_volume(id).await.map_err(DeployError::api(format!("deleting CSI volume {id}")))?;
            summary.volumes_deleted.push(id.clone());
        }
    }
    if options.delete_secrets {
        for (path, modify_index) in &targets.secrets {
            reporter.step(&format!("deleting variable {path}"));
            nomad.delete_variable(path, Some(*modify_index)).await.map_err(|error| match error.api() {
                Some(api) if api.is_cas_conflict() => {
                    DeployError::Refused(format!("variable {path} changed since it was listed; it was not deleted"))
                }
                _ => DeployError::Api { what: format!("deleting variable {path}"), source: error },
            })?;
            summary.secrets_deleted.push(path.clone());
        }
    }
    Ok(summary)
}

/// A volume's claims go when its allocations are gone: wait for that on a blocking query.
async fn await_unclaimed<N: Transport>(nomad: &crate::transport::NomadClient<N>, id: &str, deadline: Instant) -> Result<(), DeployError> {
    let mut index = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(DeployError::TimedOut {
                what: format!("the claims on CSI volume {id} to be released"),
                after: Duration::from_secs(300),
            });
        }
        let (volume, next): (api::CsiVolume, u64) = nomad
            .get_blocking(api::read_csi_volume(id), index, left.min(Duration::from_secs(60)))
            .await
            .map_err(DeployError::api(format!("reading CSI volume {id}")))?;
        index = next;
        if volume.write_allocs.is_empty() && volume.read_allocs.is_empty() {
            return Ok(());
        }
    }
}
