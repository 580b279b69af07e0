//! `run`: secrets → CSI volumes → postgres (until its deployment succeeds and Consul shows one
//! primary and every member passing) → pgbouncer → pgadmin → backup jobs. Every job is
//! registered with the check-and-set index from the plan, and only when the plan changes it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::compile::{self, JobRole};
use crate::config::runtime::names;
use crate::config::Packs;
use crate::nomad::api::{deployment_status, RegisterOptions};
use crate::secrets::{self, TlsSet};
use crate::settings::OperatorSecrets;
use crate::stack::Stack;
use crate::transport::{conflicting_variable, Transport};

use super::plan::{state_path, JobChange, Plan, PlanScope, SecretAction, VolumeAction, STATE_VERSION_KEY};
use super::{failed_allocations, plan, wait, Cluster, DeployError, Reporter};

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Register and return without waiting for deployments or Consul.
    pub detach: bool,
    pub scope: PlanScope,
    /// How long to wait for each job to converge.
    pub timeout: Duration,
    pub operator: OperatorSecrets,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub cluster: String,
    pub secrets: Vec<SecretOutcome>,
    pub volumes: Vec<VolumeOutcome>,
    pub jobs: Vec<JobOutcome>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SecretOutcome {
    pub path: String,
    pub action: SecretAction,
    /// Key names only.
    pub keys_added: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VolumeOutcome {
    pub id: String,
    pub action: VolumeAction,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobOutcome {
    pub id: String,
    pub action: JobAction,
    pub job_modify_index: Option<u64>,
    /// The deployment `run` followed (none for periodic jobs, `--detach`, or nothing to roll).
    pub deployment: Option<DeploymentOutcome>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobAction {
    Registered,
    Unchanged,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeploymentOutcome {
    pub id: String,
    pub status: String,
    pub description: String,
}

pub async fn run<N: Transport, C: Transport>(
    cluster: &Cluster<N, C>,
    stack: &Stack,
    packs: &Packs,
    options: &RunOptions,
    reporter: &dyn Reporter,
) -> Result<RunSummary, DeployError> {
    reporter.step("planning");
    let scope = PlanScope { skip_plan_of_new_jobs: true, ..options.scope.clone() };
    let plan = plan::plan(cluster, stack, packs, &options.operator, &scope).await?;
    reporter.planned(&plan);
    if !plan.problems.is_empty() {
        let list: Vec<String> = plan.problems.iter().map(|p| format!("  - {p}")).collect();
        return Err(DeployError::Refused(format!("nothing was written, because:\n{}", list.join("\n"))));
    }
    let mut summary =
        RunSummary { cluster: plan.cluster.clone(), secrets: Vec::new(), volumes: Vec::new(), jobs: Vec::new(), warnings: Vec::new() };

    write_secrets(cluster, stack, &plan, &options.operator, reporter, &mut summary).await?;
    create_volumes(cluster, &plan, reporter, &mut summary).await?;

    // What was registered is recorded even when a later step fails, so that the next plan
    // still tells pgnomad's own registrations from edits made behind its back.
    let mut registered = Vec::new();
    let result = register_jobs(cluster, stack, &plan, options, reporter, &mut summary, &mut registered).await;
    let recorded = record_state(cluster, &plan, &registered).await;
    result?;
    if let Err(error) = recorded {
        let message = format!("{error}; the next plan cannot tell these registrations from edits outside pgnomad");
        reporter.warn(message.trim_start_matches("error: "));
        summary.warnings.push(message);
    }
    Ok(summary)
}

/// Registers the jobs that changed, in order, following each one's deployment; `recorded`
/// gets each job registered with its content hash.
async fn register_jobs<N: Transport, C: Transport>(
    cluster: &Cluster<N, C>,
    stack: &Stack,
    plan: &Plan,
    options: &RunOptions,
    reporter: &dyn Reporter,
    summary: &mut RunSummary,
    recorded: &mut Vec<(String, String)>,
) -> Result<(), DeployError> {
    for job_plan in &plan.jobs {
        let compiled = plan.artifacts.jobs.iter().find(|j| j.id() == job_plan.id).expect("planned jobs are compiled");
        let mut outcome = JobOutcome { id: job_plan.id.clone(), action: JobAction::Unchanged, job_modify_index: None, deployment: None };
        let mut spec_index = None;
        if job_plan.change != JobChange::Unchanged {
            reporter.step(&format!("registering {} (check index {})", job_plan.id, job_plan.check_index));
            let body = serde_json::to_value(&compiled.job).expect("jobs serialize");
            let options = RegisterOptions { enforce_index: Some(job_plan.check_index), ..RegisterOptions::default() };
            let registered = cluster.nomad.register_job(&body, options).await.map_err(|error| match error.api() {
                Some(api) if api.is_enforce_index_conflict() => DeployError::Refused(format!(
                    "{} changed on the server since the plan ({}); it was not overwritten — run `pgnomad plan` and review the new diff",
                    job_plan.id,
                    api.body.trim()
                )),
                _ => DeployError::Api { what: format!("registering {}", job_plan.id), source: error },
            })?;
            recorded.push((job_plan.id.clone(), compile::content_hash(&compiled.job)));
            outcome.action = JobAction::Registered;
            outcome.job_modify_index = Some(registered.job_modify_index);
            spec_index = Some(registered.job_modify_index);
        }
        if !options.detach && job_plan.role != JobRole::Backup {
            let deadline = Instant::now() + options.timeout;
            let expect_new = spec_index.is_some() && job_plan.expects_deployment();
            let followed = wait::deployment(&cluster.nomad, &job_plan.id, spec_index.filter(|_| expect_new), deadline, reporter).await?;
            if let Some(deployment) = &followed {
                if deployment.status != deployment_status::SUCCESSFUL {
                    let allocations = failed_allocations(&cluster.nomad, &job_plan.id, &deployment.id).await;
                    return Err(DeployError::DeploymentFailed {
                        job: job_plan.id.clone(),
                        deployment: deployment.id.clone(),
                        status: deployment.status.clone(),
                        description: deployment.status_description.clone(),
                        allocations,
                    });
                }
                outcome.deployment = Some(DeploymentOutcome {
                    id: deployment.id.clone(),
                    status: deployment.status.clone(),
                    description: deployment.status_description.clone(),
                });
            }
            if job_plan.role == JobRole::Postgres {
                reporter.step("waiting for Consul to show one primary and every member passing");
                let members = stack.postgres.members.value as usize;
                wait::primary_elected(&cluster.consul, &plan.cluster, members, deadline, reporter).await?;
            }
        }
        summary.jobs.push(outcome);
    }
    Ok(())
}

/// Writes the hashes of the jobs just registered into pgnomad's state variable (one write per
/// run, check-and-set on the index `plan` read).
async fn record_state<N: Transport, C: Transport>(
    cluster: &Cluster<N, C>,
    plan: &Plan,
    registered: &[(String, String)],
) -> Result<(), DeployError> {
    if registered.is_empty() {
        return Ok(());
    }
    let path = state_path(&plan.cluster);
    let mut items = plan.state.items.clone();
    items.extend(registered.iter().cloned());
    items.insert(STATE_VERSION_KEY.into(), env!("CARGO_PKG_VERSION").into());
    cluster
        .nomad
        .put_variable(&path, &items, Some(plan.state.modify_index))
        .await
        .map_err(DeployError::api(format!("writing variable {path}")))?;
    Ok(())
}

async fn write_secrets<N: Transport, C: Transport>(
    cluster: &Cluster<N, C>,
    stack: &Stack,
    plan: &Plan,
    operator: &OperatorSecrets,
    reporter: &dyn Reporter,
    summary: &mut RunSummary,
) -> Result<(), DeployError> {
    let to_write: Vec<_> = plan.secrets.iter().filter(|s| matches!(s.action, SecretAction::Create | SecretAction::Extend)).collect();
    for external in plan.secrets.iter().filter(|s| s.action == SecretAction::External) {
        let message = format!(
            "secrets of {} live in Vault at {}; pgnomad does not write Vault — store keys {} there yourself",
            external.job,
            external.path,
            external.keys_to_add.join(", ")
        );
        reporter.warn(&message);
        summary.warnings.push(message);
    }
    if to_write.is_empty() {
        summary.secrets =
            plan.secrets.iter().map(|s| SecretOutcome { path: s.path.clone(), action: s.action, keys_added: Vec::new() }).collect();
        return Ok(());
    }
    let (mut pool, _) = plan.existing_secrets.pool(&plan.artifacts.secrets);
    // Operator keys: an existing value wins, then what the operator gave; Patroni's Consul
    // token may be empty (Consul without ACLs).
    let needs_consul_token =
        to_write.iter().any(|s| s.keys_to_add.iter().any(|k| k == "consul_token")) && !pool.contains_key("consul_token");
    for key in ["s3_key", "s3_key_secret", "consul_token"] {
        if !pool.contains_key(key) {
            if let Some(value) = operator.value(key) {
                pool.insert(key.to_string(), value.to_string());
            }
        }
    }
    if needs_consul_token && !pool.contains_key("consul_token") {
        pool.insert("consul_token".into(), String::new());
        let message = format!(
            "Patroni's consul_token is empty: a Consul with ACLs enabled needs one (a token of the {}-patroni policy, given with PGNOMAD_PATRONI_CONSUL_TOKEN before the first run, or added to the postgres variable by hand)",
            plan.cluster
        );
        reporter.warn(&message);
        summary.warnings.push(message);
    }
    // One TLS set and one value per shared key for every job.
    let needs_tls = to_write.iter().any(|s| s.keys_to_add.iter().any(|k| k.starts_with("tls_")));
    let tls = if needs_tls {
        secrets::tls_set(
            &plan.cluster,
            &names::pgbackrest_server_names(&plan.cluster, stack.postgres.members.value),
            &secrets::sql_server_names(&plan.cluster),
        )?
    } else {
        empty_tls()
    };
    let all_keys: Vec<_> = plan.artifacts.secrets.iter().flat_map(|s| s.keys.iter().cloned()).collect();
    let (values, missing) = secrets::fill(&dedup(all_keys), &pool, &tls);
    if let Some(key) = missing.first() {
        // The plan checked this; reaching here means the operator's value vanished meanwhile.
        return Err(DeployError::Refused(format!("secret {key} is missing: {}", OperatorSecrets::how_to_provide(key))));
    }

    reporter.step(&format!("writing {} secret variable{}", to_write.len(), if to_write.len() == 1 { "" } else { "s" }));
    for secret in &plan.secrets {
        if !matches!(secret.action, SecretAction::Create | SecretAction::Extend) {
            summary.secrets.push(SecretOutcome { path: secret.path.clone(), action: secret.action, keys_added: Vec::new() });
            continue;
        }
        let (existing, keys): (_, Vec<&String>) = match plan.artifacts.secrets.iter().find(|s| s.path == secret.path) {
            Some(spec) => (plan.existing_secrets.by_path.get(&secret.path), spec.keys.iter().map(|k| &k.key).collect()),
            // pgnomad's copy of the TLS set (first in the plan, so it is written first).
            None => (plan.existing_secrets.tls_store.as_ref(), secret.keys_to_add.iter().collect()),
        };
        let mut items: BTreeMap<String, String> = existing.map(|v| v.items.clone()).unwrap_or_default();
        for key in keys {
            // Existing values stay exactly as they are.
            items.entry(key.clone()).or_insert_with(|| values[key].clone());
        }
        cluster.nomad.put_variable(&secret.path, &items, Some(secret.modify_index)).await.map_err(|error| {
            if conflicting_variable(&error).is_some() {
                DeployError::Refused(format!(
                    "variable {} changed while pgnomad was writing it; it was not overwritten — run again to add the missing keys",
                    secret.path
                ))
            } else {
                DeployError::Api { what: format!("writing variable {}", secret.path), source: error }
            }
        })?;
        summary.secrets.push(SecretOutcome { path: secret.path.clone(), action: secret.action, keys_added: secret.keys_to_add.clone() });
    }
    Ok(())
}

fn dedup(keys: Vec<crate::compile::SecretKey>) -> Vec<crate::compile::SecretKey> {
    let mut seen = std::collections::BTreeSet::new();
    keys.into_iter().filter(|k| seen.insert(k.key.clone())).collect()
}

fn empty_tls() -> TlsSet {
    TlsSet {
        ca_crt: String::new(),
        server_crt: String::new(),
        server_key: String::new(),
        client_crt: String::new(),
        client_key: String::new(),
        sql_crt: String::new(),
        sql_key: String::new(),
    }
}

async fn create_volumes<N: Transport, C: Transport>(
    cluster: &Cluster<N, C>,
    plan: &Plan,
    reporter: &dyn Reporter,
    summary: &mut RunSummary,
) -> Result<(), DeployError> {
    for volume_plan in &plan.volumes {
        if volume_plan.action == VolumeAction::Create {
            reporter.step(&format!("creating CSI volume {}", volume_plan.id));
            let volume =
                plan.artifacts.volumes.iter().find(|v| v.id.as_deref() == Some(&volume_plan.id)).expect("planned volumes are compiled");
            let body = serde_json::to_value(volume).expect("volumes serialize");
            cluster.nomad.create_csi_volume(&body).await.map_err(DeployError::api(format!("creating CSI volume {}", volume_plan.id)))?;
        }
        summary.volumes.push(VolumeOutcome { id: volume_plan.id.clone(), action: volume_plan.action });
    }
    Ok(())
}
