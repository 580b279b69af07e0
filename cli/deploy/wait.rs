//! Waits as conditions over blocking queries (kube-rs `await_condition` style): each loop
//! asks with the last index seen and returns as soon as the server's state moves, so a change
//! is seen within one round trip and nothing sleeps.

use std::time::{Duration, Instant};

use crate::config::runtime::names;
use crate::consul::ConsulClient;
use crate::nomad::api::{self, Deployment};
use crate::transport::{NomadClient, Transport};

use super::{DeployError, Reporter};

/// Longest single blocking query; the overall deadline is the caller's.
const MAX_WAIT: Duration = Duration::from_secs(300);

fn remaining(deadline: Instant, what: &str, timeout_from: Instant) -> Result<Duration, DeployError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(DeployError::TimedOut { what: what.to_string(), after: deadline.duration_since(timeout_from) });
    }
    // Whole milliseconds, at least one: `?wait=` is a Go duration.
    Ok(left.min(MAX_WAIT).max(Duration::from_millis(1)))
}

/// Follows the job's deployment until it ends. With `spec_index`, waits for the deployment of
/// that job version (the register's JobModifyIndex) to appear; without, follows the latest
/// deployment if it is still running, and returns `None` when the job never had one.
pub async fn deployment<N: Transport>(
    nomad: &NomadClient<N>,
    job: &str,
    spec_index: Option<u64>,
    deadline: Instant,
    reporter: &dyn Reporter,
) -> Result<Option<Deployment>, DeployError> {
    let started = Instant::now();
    let what = format!("the deployment of {job}");
    let mut index = 0;
    let mut last_seen: Option<(String, u64)> = None;
    loop {
        let wait = remaining(deadline, &what, started)?;
        let (latest, next): (Option<Deployment>, u64) =
            nomad.get_blocking(api::job_latest_deployment(job), index, wait).await.map_err(DeployError::api(format!("watching {what}")))?;
        index = next;
        let current = match (latest, spec_index) {
            (Some(d), Some(spec)) if d.job_spec_modify_index >= spec => Some(d),
            // The new version's deployment is not there yet.
            (_, Some(_)) => None,
            (None, None) => return Ok(None),
            (Some(d), None) => Some(d),
        };
        let Some(deployment) = current else { continue };
        if last_seen.as_ref() != Some(&(deployment.id.clone(), deployment.modify_index)) {
            reporter.deployment(job, &deployment);
            last_seen = Some((deployment.id.clone(), deployment.modify_index));
        }
        if deployment.is_terminal() {
            return Ok(Some(deployment));
        }
    }
}

/// Consul shows exactly one passing `<c>-primary` and `members` passing `<c>-postgres`. Each
/// condition is awaited with blocking queries on its own service; once the second holds, the
/// first is read again, since a failover may have happened in between.
pub async fn primary_elected<C: Transport>(
    consul: &ConsulClient<C>,
    cluster: &str,
    members: usize,
    deadline: Instant,
    reporter: &dyn Reporter,
) -> Result<(), DeployError> {
    let started = Instant::now();
    let what = format!("Consul to show one primary of {cluster} and {members} passing members");
    let primary = names::primary_service(cluster);
    let postgres = names::postgres_service(cluster);
    let mut primary_index = 0;
    loop {
        // One passing primary.
        loop {
            let wait = remaining(deadline, &what, started)?;
            let (primaries, next) = consul
                .health_service_blocking(&primary, true, primary_index, wait)
                .await
                .map_err(DeployError::api(format!("reading Consul service {primary}")))?;
            primary_index = next;
            if primaries.len() == 1 {
                break;
            }
            reporter.primary_wait(primaries.len(), 0, members);
        }
        // Every member passing.
        let mut postgres_index = 0;
        loop {
            let wait = remaining(deadline, &what, started)?;
            let (instances, next) = consul
                .health_service_blocking(&postgres, false, postgres_index, wait)
                .await
                .map_err(DeployError::api(format!("reading Consul service {postgres}")))?;
            postgres_index = next;
            let passing = instances.iter().filter(|i| i.is_passing()).count();
            reporter.primary_wait(1, passing, members);
            if passing == members && instances.len() == members {
                break;
            }
        }
        let primaries =
            consul.health_service(&primary, true).await.map_err(DeployError::api(format!("reading Consul service {primary}")))?;
        if primaries.len() == 1 {
            return Ok(());
        }
    }
}
