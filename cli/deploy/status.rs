//! `status`: the cluster as Nomad, Consul and Patroni see it. Consul is read through its list
//! endpoints (one call per service, not per member) and Patroni through `GET /cluster` on one
//! member that answers. A missing Consul or Patroni makes those parts "unknown (why)"; only
//! Nomad is required.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::compile::{self, META_CLUSTER};
use crate::config::runtime::names;
use crate::consul::ServiceEntry;
use crate::nomad::api::{AllocListStub, Deployment, DeploymentState};
use crate::patroni::{self, PatroniCluster};
use crate::stack::Stack;
use crate::transport::{Transport, TransportError};

use super::{existing_jobs, Cluster, DeployError, Owner};

/// A value, or why it is not known.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Known<T> {
    Known(T),
    Unknown(String),
}

impl<T> Known<T> {
    pub fn as_ref(&self) -> Known<&T> {
        match self {
            Known::Known(v) => Known::Known(v),
            Known::Unknown(why) => Known::Unknown(why.clone()),
        }
    }
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Known<U> {
        match self {
            Known::Known(v) => Known::Known(f(v)),
            Known::Unknown(why) => Known::Unknown(why),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub cluster: String,
    pub jobs: Vec<JobStatus>,
    pub members: Vec<MemberStatus>,
    /// Patroni's own view; unknown when no member's REST API answered.
    pub patroni: Known<PatroniCluster>,
    pub pgbouncer: Known<Vec<Instance>>,
    pub backups: Vec<BackupStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    pub id: String,
    pub owner: Owner,
    /// Nomad's job status (`running`, `pending`, `dead`); empty when absent.
    pub status: String,
    pub deployment: Option<DeploymentSummary>,
    pub allocations: Vec<AllocationStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeploymentSummary {
    pub id: String,
    pub status: String,
    pub description: String,
    pub groups: BTreeMap<String, DeploymentState>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AllocationStatus {
    pub id: String,
    pub name: String,
    pub group: String,
    pub client_status: String,
    pub healthy: Option<bool>,
    pub job_version: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    pub name: String,
    /// The running allocation's client status, or `none`.
    pub allocation: String,
    /// Whether the member's `<c>-postgres` checks pass in Consul.
    pub consul_passing: Known<bool>,
    pub role: Known<String>,
    pub state: Known<String>,
    pub timeline: Known<Option<u64>>,
    /// Bytes behind the leader (none for the leader itself).
    pub lag_bytes: Known<Option<u64>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Instance {
    pub address: String,
    pub passing: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupStatus {
    pub job: String,
    /// The latest run (a child job `<job>/periodic-<time>`), if any.
    pub last_run: Option<String>,
    pub last_status: Option<String>,
}

pub async fn status<N: Transport, C: Transport, P: Transport>(
    cluster: &Cluster<N, C>,
    stack: &Stack,
    patroni_at: impl Fn(&str) -> Result<P, TransportError>,
) -> Result<Status, DeployError> {
    let name = stack.cluster.name.value.clone();
    let nomad = &cluster.nomad;
    let existing = existing_jobs(nomad, &name).await?;

    let mut jobs = Vec::new();
    for id in compile::job_ids(stack) {
        let Some(stub) = existing.get(&id) else {
            jobs.push(JobStatus { id, owner: Owner::Absent, status: String::new(), deployment: None, allocations: Vec::new() });
            continue;
        };
        let owner = Owner::of(&stub.meta, &name);
        let mut job =
            JobStatus { id: id.clone(), owner: owner.clone(), status: stub.status.clone(), deployment: None, allocations: Vec::new() };
        // Someone else's job: its name is all pgnomad shows.
        if owner == Owner::Ours && stub.job_type != "batch" {
            let deployment: Option<Deployment> =
                nomad.job_latest_deployment(&id).await.map_err(DeployError::api(format!("reading the deployment of {id}")))?;
            job.deployment = deployment.map(|d| DeploymentSummary {
                id: d.id,
                status: d.status,
                description: d.status_description,
                groups: d.task_groups,
            });
            let allocations = nomad.job_allocations(&id).await.map_err(DeployError::api(format!("reading the allocations of {id}")))?;
            job.allocations = allocations.iter().filter(|a| a.desired_status == "run").map(allocation_status).collect();
        }
        jobs.push(job);
    }

    let consul = &cluster.consul;
    let read_service = |service: String| async move {
        consul.health_service(&service, false).await.map_err(|e| format!("Consul: {}", first_line(&e.to_string())))
    };
    let postgres_entries = read_service(names::postgres_service(&name)).await;
    // When Consul does not answer the first read, it will not answer the others either:
    // say so once instead of waiting out every retry again.
    let consul_down = postgres_entries.as_ref().err().cloned();
    let read_next = |service: String| {
        let consul_down = consul_down.clone();
        async move {
            match consul_down {
                Some(why) => Err(why),
                None => read_service(service).await,
            }
        }
    };
    let primary_entries = read_next(names::primary_service(&name)).await;
    let patroni_entries = read_next(names::patroni_service(&name)).await;

    let patroni = match &patroni_entries {
        Err(why) => Known::Unknown(why.clone()),
        Ok(entries) => read_patroni(entries, &patroni_at).await,
    };

    let postgres_job = jobs.iter().find(|j| j.id == names::postgres_job(&name));
    let members = (0..stack.postgres.members.value)
        .map(|i| {
            let member = format!("member-{i}");
            let allocation = postgres_job
                .and_then(|j| j.allocations.iter().find(|a| a.group == member))
                .map(|a| a.client_status.clone())
                .unwrap_or_else(|| "none".into());
            let of_member = |e: &&ServiceEntry| e.service.meta.get("member") == Some(&member);
            let consul_passing = match &postgres_entries {
                Ok(entries) => Known::Known(entries.iter().filter(of_member).any(|e| e.is_passing())),
                Err(why) => Known::Unknown(why.clone()),
            };
            let patroni_member = patroni.as_ref().map(|c| c.members.iter().find(|m| m.name == member).cloned());
            let from_patroni = |f: &dyn Fn(&patroni::PatroniMember) -> String| match &patroni_member {
                Known::Known(Some(m)) => Known::Known(f(m)),
                Known::Known(None) => Known::Unknown("not in Patroni's member list".into()),
                Known::Unknown(why) => Known::Unknown(why.clone()),
            };
            // Without Patroni, Consul's primary check still tells the role.
            let role = match (from_patroni(&|m| m.role.clone()), &primary_entries) {
                (Known::Unknown(why), Ok(primaries)) => {
                    let is_primary = primaries.iter().filter(of_member).any(|e| e.is_passing());
                    if is_primary {
                        Known::Known("leader (from Consul)".to_string())
                    } else {
                        Known::Unknown(why)
                    }
                }
                (role, _) => role,
            };
            MemberStatus {
                name: member.clone(),
                allocation,
                consul_passing,
                role,
                state: from_patroni(&|m| m.state.clone()),
                timeline: match &patroni_member {
                    Known::Known(Some(m)) => Known::Known(m.timeline),
                    Known::Known(None) => Known::Unknown("not in Patroni's member list".into()),
                    Known::Unknown(why) => Known::Unknown(why.clone()),
                },
                lag_bytes: match &patroni_member {
                    Known::Known(Some(m)) => Known::Known(m.lag_bytes()),
                    Known::Known(None) => Known::Unknown("not in Patroni's member list".into()),
                    Known::Unknown(why) => Known::Unknown(why.clone()),
                },
            }
        })
        .collect();

    let pgbouncer = if stack.pgbouncer.enabled {
        match read_next(names::pgbouncer_service(&name)).await {
            Ok(entries) => Known::Known(entries.iter().map(|e| Instance { address: e.address(), passing: e.is_passing() }).collect()),
            Err(why) => Known::Unknown(why),
        }
    } else {
        Known::Unknown("PgBouncer is disabled in the stack".into())
    };

    let mut backups = Vec::new();
    if stack.backup.enabled {
        for schedule in &stack.backup.schedules {
            let job = names::backup_job(&name, schedule.kind.name());
            let owned = existing.get(&job).is_some_and(|s| s.meta.get(META_CLUSTER) == Some(&name));
            let mut status = BackupStatus { job: job.clone(), last_run: None, last_status: None };
            if owned {
                let children = nomad
                    .list_jobs(Some(&format!("{job}/periodic-")))
                    .await
                    .map_err(DeployError::api(format!("listing the runs of {job}")))?;
                if let Some(last) = children.iter().filter(|c| c.id.starts_with(&format!("{job}/"))).max_by_key(|c| c.create_index) {
                    status.last_run = Some(last.id.clone());
                    status.last_status = Some(child_status(last));
                }
            }
            backups.push(status);
        }
    }
    Ok(Status { cluster: name, jobs, members, patroni, pgbouncer, backups })
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_string()
}

fn allocation_status(a: &AllocListStub) -> AllocationStatus {
    AllocationStatus {
        id: a.id.chars().take(8).collect(),
        name: a.name.clone(),
        group: a.task_group.clone(),
        client_status: a.client_status.clone(),
        healthy: a.deployment_status.as_ref().and_then(|d| d.healthy),
        job_version: a.job_version,
    }
}

/// A periodic run's outcome from its summary: failed, complete, running or the job status.
fn child_status(child: &crate::nomad::api::JobListStub) -> String {
    let summary = child.job_summary.as_ref().map(|s| s.summary.values().copied().collect::<Vec<_>>()).unwrap_or_default();
    let total = |f: fn(&crate::nomad::api::TaskGroupSummary) -> u64| summary.iter().map(f).sum::<u64>();
    if total(|s| s.failed + s.lost) > 0 {
        "failed".into()
    } else if total(|s| s.running + s.starting) > 0 {
        "running".into()
    } else if total(|s| s.complete) > 0 {
        "complete".into()
    } else {
        child.status.clone()
    }
}

/// Asks each `<c>-patroni` instance in turn (passing ones first) until one answers.
async fn read_patroni<P: Transport>(
    entries: &[ServiceEntry],
    patroni_at: &impl Fn(&str) -> Result<P, TransportError>,
) -> Known<PatroniCluster> {
    if entries.is_empty() {
        return Known::Unknown("no instance of the Patroni service is registered in Consul".into());
    }
    let mut ordered: Vec<&ServiceEntry> = entries.iter().collect();
    ordered.sort_by_key(|e| !e.is_passing());
    let mut why = Vec::new();
    for entry in ordered {
        let address = format!("http://{}", entry.address());
        let answer = match patroni_at(&address) {
            Ok(transport) => patroni::read_cluster(&transport).await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(cluster) => return Known::Known(cluster),
            Err(e) => why.push(format!("{address}: {}", first_line(&e.to_string()))),
        }
    }
    Known::Unknown(format!("no Patroni REST API answered ({})", why.join("; ")))
}
