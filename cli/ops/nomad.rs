//! The operations' target on a Nomad + Consul cluster. Members are found through Consul's
//! `<c>-patroni` service (and each other's `api_url` in Patroni's `/cluster`), PgBouncer
//! instances through `<c>-pgbouncer`; the REST API's password and the PgBouncer auth user's
//! come from the jobs' Nomad variables. A member is updated by registering the postgres job
//! with only that member's group changed — every other group exactly as Nomad has it now —
//! with the check index from Nomad's plan of it, then following its deployment.
//!
//! The operations are synchronous; this target owns a small runtime for the async clients.
//! Patroni's REST API is plain HTTP from the jobs, spoken with the same blocking client `dev`
//! uses (it has every method Patroni needs, PATCH included).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::resume_guard::ConsoleCommand;
use super::{MemberView, OpsError, Reporter, Target};
use crate::compile::{self, JobRole};
use crate::config::runtime::names;
use crate::config::{Facts, Packs};
use crate::deploy::Cluster;
use crate::nomad::api::{self, deployment_status, RegisterOptions};
use crate::patroni::{RestAuth, REST_PASSWORD_KEY};
use crate::stack::Stack;
use crate::transport::Transport;

pub struct NomadTarget<N: Transport, C: Transport> {
    runtime: tokio::runtime::Runtime,
    cluster: Cluster<N, C>,
    stack: Stack,
    packs: Packs,
    facts: Facts,
    job: String,
    auth: Option<RestAuth>,
    pooler_password: Option<String>,
    /// While `restore --in-place` runs: the phase every member group runs first.
    restore_phase: Option<compile::RestorePhase>,
}

fn api_error(what: &str) -> impl FnOnce(crate::transport::TransportError) -> OpsError + '_ {
    move |e| OpsError::Unreachable(format!("{what}: {e}"))
}

impl<N: Transport, C: Transport> NomadTarget<N, C> {
    /// Reads the secrets the operations need from the jobs' variables.
    pub fn connect(cluster: Cluster<N, C>, stack: Stack, packs: Packs) -> Result<Self, OpsError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| OpsError::Setup(format!("cannot start the async runtime: {e}")))?;
        let facts = Facts::new(&stack);
        let job = names::postgres_job(&facts.cluster);
        let mut target = NomadTarget { runtime, cluster, stack, packs, facts, job, auth: None, pooler_password: None, restore_phase: None };
        let postgres = target.variable(&format!("nomad/jobs/{}", target.job))?;
        target.auth = postgres.get(REST_PASSWORD_KEY).map(RestAuth::new);
        let pgbouncer = target.variable(&format!("nomad/jobs/{}", names::pgbouncer_job(&target.facts.cluster)))?;
        target.pooler_password = pgbouncer.get("pgbouncer_auth_password").or(postgres.get("pgbouncer_auth_password")).cloned();
        Ok(target)
    }

    fn variable(&self, path: &str) -> Result<BTreeMap<String, String>, OpsError> {
        let read = self.runtime.block_on(self.cluster.nomad.read_variable(path)).map_err(api_error(&format!("reading variable {path}")))?;
        Ok(read.map(|v| v.items).unwrap_or_default())
    }

    pub fn stack(&self) -> &Stack {
        &self.stack
    }

    /// What the job should be from now on: `stack` compiled, its member groups running
    /// `phase` of an in-place restore first.
    pub fn set_desired(&mut self, stack: Stack, phase: Option<compile::RestorePhase>) {
        self.facts = Facts::new(&stack);
        self.stack = stack;
        self.restore_phase = phase;
    }

    /// The postgres job as the stack compiles it, as the register body's `Job`.
    fn desired_job(&self) -> Result<(Value, compile::CompiledJob), OpsError> {
        let artifacts = compile::compile_with_restore_phase(&self.stack, &self.packs, self.restore_phase.as_ref())
            .map_err(|e| OpsError::Setup(format!("compiling the stack: {e}")))?;
        let compiled = artifacts
            .jobs
            .into_iter()
            .find(|j| j.role == JobRole::Postgres)
            .ok_or_else(|| OpsError::Setup("the stack has no postgres job".into()))?;
        Ok((serde_json::to_value(&compiled.job).expect("jobs serialize"), compiled))
    }

    /// The postgres job as Nomad has it (stopped or not); `None` when it has none.
    pub fn registered_job(&self) -> Result<Option<Value>, OpsError> {
        self.runtime.block_on(self.cluster.nomad.read_job_json(&self.job)).map_err(api_error(&format!("reading job {}", self.job)))
    }

    /// Nomad's desired updates per group of registering `job`, and the check index.
    fn plan(&self, job: &Value) -> Result<(BTreeMap<String, api::DesiredUpdates>, u64), OpsError> {
        let plan = self.runtime.block_on(self.cluster.nomad.plan_job(job)).map_err(api_error(&format!("planning {}", self.job)))?;
        Ok((plan.annotations.map(|a| a.desired_tg_updates).unwrap_or_default(), plan.job_modify_index))
    }

    /// The job to register for `member`: the stack's job with every other group as Nomad
    /// runs it now.
    pub fn job_for_member(&self, member: &str) -> Result<Value, OpsError> {
        let (mut desired, _) = self.desired_job()?;
        let server =
            self.registered_job()?.ok_or_else(|| OpsError::Unreachable(format!("reading job {}: Nomad has no such job", self.job)))?;
        let running: BTreeMap<&str, &Value> =
            server["TaskGroups"].as_array().into_iter().flatten().filter_map(|g| Some((g["Name"].as_str()?, g))).collect();
        if let Some(groups) = desired["TaskGroups"].as_array_mut() {
            for group in groups.iter_mut() {
                let name = group["Name"].as_str().unwrap_or_default().to_owned();
                if name != member {
                    if let Some(now) = running.get(name.as_str()) {
                        *group = (*now).clone();
                    }
                }
            }
        }
        Ok(desired)
    }

    /// Stops the postgres job (deregistered, not purged: its versions and volumes stay) and
    /// waits until none of its allocations runs, so that their volume claims are free.
    pub fn stop_job(&self, deadline: Instant, reporter: &dyn Reporter) -> Result<(), OpsError> {
        let started = Instant::now();
        self.runtime.block_on(self.cluster.nomad.deregister_job(&self.job, false)).map_err(api_error(&format!("stopping {}", self.job)))?;
        loop {
            let allocations = self.allocations()?;
            let running: Vec<String> = allocations
                .iter()
                .filter(|a| !matches!(a.client_status.as_str(), "complete" | "failed" | "lost"))
                .map(|a| format!("{} ({})", a.task_group, a.client_status))
                .collect();
            if running.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(OpsError::TimedOut {
                    what: format!("{} to stop: still {}", self.job, running.join(", ")),
                    after: started.elapsed(),
                });
            }
            reporter.progress(&format!("waiting for {} to stop: {}", self.job, running.join(", ")));
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn allocations(&self) -> Result<Vec<api::AllocListStub>, OpsError> {
        self.runtime
            .block_on(self.cluster.nomad.job_allocations(&self.job))
            .map_err(api_error(&format!("reading the allocations of {}", self.job)))
    }

    /// Registers the desired job whole, every member group at once, with only the members in
    /// `running` (all of them with None) placed: the others at count 0. The job's modify index.
    pub fn register_desired(&self, running: Option<&[String]>) -> Result<u64, OpsError> {
        let (mut job, _) = self.desired_job()?;
        if let (Some(running), Some(groups)) = (running, job["TaskGroups"].as_array_mut()) {
            for group in groups.iter_mut() {
                if !running.iter().any(|m| group["Name"] == m.as_str()) {
                    group["Count"] = 0.into();
                }
            }
        }
        let registered = self
            .runtime
            .block_on(self.cluster.nomad.register_job(&job, RegisterOptions::default()))
            .map_err(|e| OpsError::Failed(format!("registering {}: {e}", self.job)))?;
        Ok(registered.job_modify_index)
    }

    /// Why the allocations placed since `spec_index` show the restore failing: its task on a
    /// member failed, or Patroni gave up on the bootstrap from the repository.
    pub fn restore_failure(&self, spec_index: u64) -> Result<Option<String>, OpsError> {
        for a in self.allocations()?.iter().filter(|a| a.create_index > spec_index) {
            if let Some(state) = a.task_states.get("restore-in-place").filter(|s| s.failed || s.restarts > 0) {
                let log = self.runtime.block_on(self.cluster.nomad.alloc_logs(&a.id, "restore-in-place", true)).unwrap_or_default();
                return Ok(Some(format!(
                    "{}'s restore-in-place task {} (allocation {}): {}",
                    a.task_group,
                    if state.failed { "failed" } else { "failed and was restarted" },
                    &a.id[..a.id.len().min(8)],
                    last_lines(&log, 5)
                )));
            }
            // Patroni exits after a failed bootstrap: only a restarted task's log is read (a
            // restore of a large database runs for hours, its log growing meanwhile).
            if a.task_states.get("patroni").is_some_and(|s| s.restarts > 0 || s.failed || s.state == "dead") {
                let log = self.runtime.block_on(self.cluster.nomad.alloc_logs(&a.id, "patroni", true)).unwrap_or_default();
                if let Some(why) = super::restore::failed_bootstrap(&String::from_utf8_lossy(&log)) {
                    return Ok(Some(format!(
                        "Patroni on {} gave up on the bootstrap from the repository (allocation {}):{why}",
                        a.task_group,
                        &a.id[..a.id.len().min(8)]
                    )));
                }
            }
        }
        Ok(None)
    }

    /// Why `member`'s allocation placed by the registration at `spec_index` is not fit, when
    /// one of its tasks died since it started (Nomad restarts it, and its deployment may still
    /// turn healthy, but the upgrade does not go on past a member that fell over).
    fn died_during_update(&self, member: &str, spec_index: u64) -> Result<Option<String>, OpsError> {
        for a in self.allocations()?.iter().filter(|a| a.task_group == member && a.create_index > spec_index) {
            for (task, state) in &a.task_states {
                if state.restarts == 0 && !state.failed {
                    continue;
                }
                let last = state.events.iter().rev().find(|e| e.event_type == "Terminated" || e.fails_task);
                let why = last.map(|e| format!("{}: {}", e.event_type, if e.message.is_empty() { &e.display_message } else { &e.message }));
                return Ok(Some(format!(
                    "{member}'s {task} task {} during its update (allocation {}{}); the upgrade stopped here — see `nomad alloc status {}`, and run it again once {member} is healthy",
                    if state.failed { "failed" } else { "died and was restarted" },
                    &a.id[..a.id.len().min(8)],
                    why.map(|w| format!(", {w}")).unwrap_or_default(),
                    &a.id[..a.id.len().min(8)],
                )));
            }
        }
        Ok(None)
    }

    /// Waits until `job`, the postgres job's registered version, is in place: its deployment
    /// ended, or, before Nomad has made one, every placed group running an allocation of that
    /// version and no replaced allocation still stopping. A run killed during a roll leaves a
    /// member group half-replaced.
    pub fn wait_deployed(&self, job: &Value, deadline: Instant, reporter: &dyn Reporter) -> Result<(), OpsError> {
        let spec_index = job["JobModifyIndex"].as_u64().unwrap_or(0);
        let what = format!("the version of {} an earlier run registered to be in place", self.job);
        // `wait_for` retries on `Err`: an API failure comes back as `Some(Err(…))`.
        super::wait_for(&what, deadline, Duration::from_millis(500), reporter, || {
            let latest = match self.latest_deployment() {
                Ok(latest) => latest,
                Err(e) => return Ok(Some(Err(e))),
            };
            // An ended deployment of that version says it all (a failed one is the roll's to
            // report); before Nomad has evaluated the registration there is none yet.
            match latest.filter(|d| d.job_spec_modify_index >= spec_index) {
                Some(d) if d.is_terminal() => Ok(Some(Ok(()))),
                Some(d) => Err(format!("deployment {} is {}", &d.id[..d.id.len().min(8)], d.status)),
                None => match self.allocations() {
                    Err(e) => Ok(Some(Err(e))),
                    Ok(allocations) => match unsettled_groups(job, &allocations)[..] {
                        [] => Ok(Some(Ok(()))),
                        ref unsettled => Err(format!("{} not yet in place", unsettled.join(", "))),
                    },
                },
            }
        })?
    }

    fn latest_deployment(&self) -> Result<Option<api::Deployment>, OpsError> {
        let latest: (Option<api::Deployment>, u64) = self
            .runtime
            .block_on(self.cluster.nomad.get_blocking(api::job_latest_deployment(&self.job), 0, Duration::from_millis(1)))
            .map_err(api_error(&format!("reading the deployment of {}", self.job)))?;
        Ok(latest.0)
    }

    /// Follows the deployment of the job version registered at `spec_index` to its end;
    /// fails as soon as `member`'s new allocation has a task die.
    fn follow_deployment(
        &self,
        member: &str,
        spec_index: u64,
        deadline: Instant,
        reporter: &dyn Reporter,
    ) -> Result<api::Deployment, OpsError> {
        let mut index = 0;
        loop {
            if let Some(why) = self.died_during_update(member, spec_index)? {
                return Err(OpsError::Failed(why));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(OpsError::TimedOut { what: format!("the deployment of {}", self.job), after: Duration::ZERO });
            }
            // Short blocking queries: the allocation's tasks are checked between them.
            let wait = left.min(Duration::from_secs(1)).max(Duration::from_millis(1));
            let (latest, next): (Option<api::Deployment>, u64) = self
                .runtime
                .block_on(self.cluster.nomad.get_blocking(api::job_latest_deployment(&self.job), index, wait))
                .map_err(api_error(&format!("watching the deployment of {}", self.job)))?;
            index = next;
            if let Some(d) = latest.filter(|d| d.job_spec_modify_index >= spec_index) {
                let healthy: u64 = d.task_groups.values().map(|g| g.healthy_allocs).sum();
                reporter.progress(&format!("deployment {} {} ({healthy} healthy)", &d.id[..d.id.len().min(8)], d.status));
                if d.is_terminal() {
                    return Ok(d);
                }
            }
        }
    }

    fn consul_addresses(&self, service: &str, passing: bool) -> Result<Vec<String>, OpsError> {
        let entries = self
            .runtime
            .block_on(self.cluster.consul.health_service(service, passing))
            .map_err(api_error(&format!("reading Consul service {service}")))?;
        Ok(entries.iter().map(|e| e.address()).collect())
    }
}

impl<N: Transport, C: Transport> Target for NomadTarget<N, C> {
    fn max_pause(&self) -> Option<Duration> {
        self.facts.pgbouncer.max_pause()
    }

    fn seeds(&self) -> Result<Vec<String>, OpsError> {
        self.consul_addresses(&names::patroni_service(&self.facts.cluster), false)
    }

    fn rest(&self, address: &str, method: &str, path: &str, body: Option<&Value>, timeout: Duration) -> Result<(u16, String), String> {
        let body = body.map(Value::to_string);
        crate::dev::patroni::request(address, method, path, body.as_deref(), self.auth.as_ref(), timeout).map_err(|e| e.to_string())
    }

    fn poolers(&self) -> Result<Vec<String>, OpsError> {
        if !self.facts.pgbouncer.enabled {
            return Ok(Vec::new());
        }
        self.consul_addresses(&names::pgbouncer_service(&self.facts.cluster), true)
    }

    fn pooler_admin(&self, pooler: &str, command: &str, timeout: Duration) -> Result<String, OpsError> {
        super::run_console(&self.pooler_console(pooler, command)?, command, timeout)
    }

    fn pooler_console(&self, pooler: &str, command: &str) -> Result<ConsoleCommand, OpsError> {
        let password = self.pooler_password.as_deref().ok_or_else(|| {
            OpsError::Setup(format!(
                "no pgbouncer_auth_password in nomad/jobs/{}: has `pgnomad run` written the secrets?",
                names::pgbouncer_job(&self.facts.cluster)
            ))
        })?;
        let (host, port) = pooler.rsplit_once(':').ok_or_else(|| OpsError::Setup(format!("PgBouncer address {pooler} has no port")))?;
        // The password through the environment, never on a command line.
        let args = ["-X", "-A", "-t", "-h", host, "-p", port, "-U", "pgbouncer_auth", "-d", "pgbouncer", "-c", command];
        Ok(ConsoleCommand {
            pooler: pooler.to_owned(),
            program: "psql".into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: vec![("PGPASSWORD".into(), password.to_owned()), ("PGCONNECT_TIMEOUT".into(), "5".into())],
            env_remove: vec!["PGPASSFILE".into()],
        })
    }

    fn oldest_transaction(&self, _primary: &MemberView) -> Result<Option<Duration>, String> {
        Err("pgnomad has no SQL login on Nomad members (Patroni's REST API does not show transactions)".into())
    }

    fn desired_parameters(&self) -> BTreeMap<String, String> {
        self.facts.parameters.clone()
    }

    fn members_to_update(&self) -> Result<Vec<String>, OpsError> {
        let (job, _) = self.desired_job()?;
        let (updates, _) = self.plan(&job)?;
        let members: Vec<String> = self.facts.members.iter().map(|m| m.name.clone()).collect();
        // Only replacements need ordering: Nomad counts every group of an older job version as
        // an in-place update when the job changes (the scheduler's alloc update function),
        // and an in-place update restarts nothing.
        Ok(members.into_iter().filter(|m| updates.get(m).is_some_and(|u| u.destructive_update + u.place > 0)).collect())
    }

    fn update_member(&self, member: &str, deadline: Instant, reporter: &dyn Reporter) -> Result<(), OpsError> {
        let job = self.job_for_member(member)?;
        let (updates, check_index) = self.plan(&job)?;
        let others: Vec<&String> =
            updates.iter().filter(|(g, u)| *g != member && u.destructive_update + u.place + u.stop > 0).map(|(g, _)| g).collect();
        if !others.is_empty() {
            return Err(OpsError::Failed(format!(
                "registering {} for {member} would also change {} (a job-level change): not registered",
                self.job,
                others.iter().map(|g| g.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        reporter.note(&format!("registering {} with only {member} changed (check index {check_index})", self.job));
        let options = RegisterOptions { enforce_index: Some(check_index), ..RegisterOptions::default() };
        let registered = self.runtime.block_on(self.cluster.nomad.register_job(&job, options)).map_err(|error| match error.api() {
            Some(e) if e.is_enforce_index_conflict() => OpsError::Refused(format!(
                "{} changed on the server since the plan; nothing was registered — run the upgrade again",
                self.job
            )),
            _ => OpsError::Failed(format!("registering {}: {error}", self.job)),
        })?;
        let deployment = self.follow_deployment(member, registered.job_modify_index, deadline, reporter)?;
        if let Some(why) = self.died_during_update(member, registered.job_modify_index)? {
            return Err(OpsError::Failed(why));
        }
        if deployment.status != deployment_status::SUCCESSFUL {
            return Err(OpsError::Failed(format!(
                "the deployment of {member} ({}) {}: {}; see `nomad alloc status` of its allocation",
                deployment.id, deployment.status, deployment.status_description
            )));
        }
        Ok(())
    }

    /// Records the job's hash in pgnomad's state variable, as `run` does, so that `plan` and
    /// `run` see the upgraded job as pgnomad's own.
    fn finish_update(&self) -> Result<(), OpsError> {
        let (_, compiled) = self.desired_job()?;
        let path = crate::deploy::state_path(&self.facts.cluster);
        let current =
            self.runtime.block_on(self.cluster.nomad.read_variable(&path)).map_err(api_error(&format!("reading variable {path}")))?;
        let (mut items, index) = current.map(|v| (v.items, v.modify_index)).unwrap_or_default();
        let hash = compile::content_hash(&compiled.job);
        if items.get(&self.job) == Some(&hash) {
            return Ok(());
        }
        items.insert(self.job.clone(), hash);
        items.insert(crate::deploy::STATE_VERSION_KEY.into(), env!("CARGO_PKG_VERSION").into());
        self.runtime
            .block_on(self.cluster.nomad.put_variable(&path, &items, Some(index)))
            .map_err(|e| OpsError::Failed(format!("writing variable {path}: {e}")))?;
        Ok(())
    }

    fn settle(&self, deadline: Instant, reporter: &dyn Reporter) -> Result<Vec<String>, OpsError> {
        let Some(job) = self.registered_job()? else { return Ok(Vec::new()) };
        let in_flight = groups_in_flight(&job, &self.allocations()?, self.latest_deployment()?.as_ref());
        if !in_flight.is_empty() {
            reporter.note(&format!(
                "{} of {} not yet in place (an earlier run stopped mid-update, or Nomad is restarting a task): waiting for {} first",
                in_flight.join(", "),
                self.job,
                if in_flight.len() == 1 { "it" } else { "them" }
            ));
            self.wait_deployed(&job, deadline, reporter)?;
        }
        Ok(in_flight)
    }

    fn describe(&self) -> String {
        format!("job {} on Nomad", self.job)
    }
}

/// The groups of `job` (its registered version) not yet in place: a placed group without a
/// running allocation of that version, or with an allocation it replaces still stopping.
fn unsettled_groups(job: &Value, allocations: &[api::AllocListStub]) -> Vec<String> {
    let version = job["Version"].as_u64().unwrap_or(0);
    let mut unsettled = Vec::new();
    for group in job["TaskGroups"].as_array().into_iter().flatten() {
        let name = group["Name"].as_str().unwrap_or_default();
        let of_group = || allocations.iter().filter(move |a| a.task_group == name);
        let stopping = of_group().any(|a| a.desired_status != "run" && matches!(a.client_status.as_str(), "running" | "pending"));
        let placed = group["Count"].as_u64().unwrap_or(1) > 0;
        let running = of_group().any(|a| a.desired_status == "run" && a.client_status == "running" && a.job_version == version);
        if stopping || (placed && !running) {
            unsettled.push(name.to_owned());
        }
    }
    unsettled
}

/// The placed groups of `job` whose change is still under way: not yet in place (see
/// [`unsettled_groups`]), or in place but in a deployment of that version still judging
/// their health.
fn groups_in_flight(job: &Value, allocations: &[api::AllocListStub], latest: Option<&api::Deployment>) -> Vec<String> {
    let spec_index = job["JobModifyIndex"].as_u64().unwrap_or(0);
    let mut groups = unsettled_groups(job, allocations);
    if let Some(d) = latest.filter(|d| d.job_spec_modify_index >= spec_index && !d.is_terminal()) {
        groups.extend(d.task_groups.iter().filter(|(_, g)| g.healthy_allocs < g.desired_total).map(|(name, _)| name.clone()));
    }
    let placed = |name: &String| {
        job["TaskGroups"].as_array().into_iter().flatten().any(|g| g["Name"] == name.as_str() && g["Count"].as_u64().unwrap_or(1) > 0)
    };
    groups.retain(placed);
    groups.sort();
    groups.dedup();
    groups
}

/// The last `n` lines of a task's log, on one line.
fn last_lines(log: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(log);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(group: &str, version: u64, desired: &str, client: &str) -> api::AllocListStub {
        serde_json::from_value(serde_json::json!({
            "ID": format!("{group}-{version}-{desired}"), "EvalID": "e", "Name": group, "Namespace": "default",
            "NodeID": "n", "NodeName": "n", "JobID": "main-postgres", "JobVersion": version, "TaskGroup": group,
            "DesiredStatus": desired, "DesiredDescription": "", "ClientStatus": client, "ClientDescription": "",
            "TaskStates": null, "DeploymentStatus": null, "FollowupEvalID": "", "CreateIndex": 1, "ModifyIndex": 1
        }))
        .unwrap()
    }

    #[test]
    fn a_group_is_in_place_once_it_runs_the_registered_version_and_nothing_it_replaces_still_stops() {
        let job = serde_json::json!({ "Version": 7, "TaskGroups": [
            { "Name": "member-0", "Count": 1 }, { "Name": "member-1", "Count": 1 }, { "Name": "member-2", "Count": 0 }
        ]});
        let settled =
            [alloc("member-0", 7, "run", "running"), alloc("member-1", 7, "run", "running"), alloc("member-2", 6, "stop", "complete")];
        assert!(unsettled_groups(&job, &settled).is_empty());
        // member-1's replacement not yet placed (Nomad has not evaluated the registration).
        let evaluating = [alloc("member-0", 7, "run", "running"), alloc("member-1", 6, "run", "running")];
        assert_eq!(unsettled_groups(&job, &evaluating), ["member-1"]);
        // Placed, while the allocation it replaces still stops.
        let replacing =
            [alloc("member-0", 7, "run", "running"), alloc("member-1", 6, "stop", "running"), alloc("member-1", 7, "run", "pending")];
        assert_eq!(unsettled_groups(&job, &replacing), ["member-1"]);
        // A group at count 0 whose allocation still stops.
        let stopping =
            [alloc("member-0", 7, "run", "running"), alloc("member-1", 7, "run", "running"), alloc("member-2", 6, "stop", "running")];
        assert_eq!(unsettled_groups(&job, &stopping), ["member-2"]);
    }

    #[test]
    fn a_group_in_place_is_still_in_flight_while_its_deployment_judges_its_health() {
        let job = serde_json::json!({ "JobModifyIndex": 40, "Version": 7, "TaskGroups": [
            { "Name": "member-0", "Count": 1 }, { "Name": "member-1", "Count": 1 }, { "Name": "member-2", "Count": 0 }
        ]});
        let allocations =
            [alloc("member-0", 7, "run", "running"), alloc("member-1", 7, "run", "running"), alloc("member-2", 6, "stop", "running")];
        let deployment = |spec: u64, status: &str, healthy: u64| -> api::Deployment {
            serde_json::from_value(serde_json::json!({
                "ID": "d", "JobSpecModifyIndex": spec, "Status": status,
                "TaskGroups": { "member-1": { "DesiredTotal": 1, "HealthyAllocs": healthy } }
            }))
            .unwrap()
        };
        // member-2 at count 0 is no member to wait for, though its allocation still stops.
        assert!(groups_in_flight(&job, &allocations, None).is_empty());
        assert_eq!(groups_in_flight(&job, &allocations, Some(&deployment(40, "running", 0))), ["member-1"]);
        assert!(groups_in_flight(&job, &allocations, Some(&deployment(40, "running", 1))).is_empty());
        assert!(groups_in_flight(&job, &allocations, Some(&deployment(40, "failed", 0))).is_empty());
        // A deployment of an older version says nothing of this one.
        assert!(groups_in_flight(&job, &allocations, Some(&deployment(39, "running", 0))).is_empty());
    }
}
