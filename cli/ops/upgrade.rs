//! `upgrade`: a changed stack onto a running cluster, one member at a time — replicas first,
//! a switchover to the most caught-up synchronous standby (PgBouncer paused around it), the
//! former primary last (a lowered `max_connections` and its kind: the leader first, in
//! place, PgBouncer paused). Parameters go through Patroni's dynamic configuration; those that
//! need a restart ride the rolling restart. The step plan is a pure function of what the
//! cluster shows, so a re-run after a failure plans only what is left.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{
    health_problems, observe, pause_clients, resume_all, seconds, switchover, view, wait_for, wait_member_healthy, with_postgres_pending,
    with_resume_failures, ClusterView, Gate, MemberView, OpsError, Reporter, Switched, SwitchoverOptions, Target,
};

pub use crate::config::facts::restart_required;

/// One parameter the stack changes.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Change {
    pub parameter: String,
    /// In Patroni's dynamic configuration now (`None`: not set).
    pub from: Option<String>,
    pub to: String,
    pub restart: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case", tag = "step")]
pub enum Step {
    /// Every member running, replicas streaming within the lag bound, a synchronous standby,
    /// no old transaction.
    Gate,
    /// `PATCH /config` with the changed parameters.
    PatchConfig { parameters: BTreeMap<String, String> },
    /// The member's deployment replaced (its processes restart with the new stack).
    Update { member: String },
    /// `POST /restart` of the member's Postgres; `if_pending`: only while Patroni still shows
    /// `pending_restart` (a demoted leader restarted already).
    Restart { member: String, if_pending: bool },
    /// `POST /restart` of the leader where it runs, every PgBouncer paused meanwhile: a
    /// lowered parameter that a standby must have at least at the primary's value
    /// ([`STANDBY_AT_LEAST_PRIMARY`]) reaches the replicas only after the primary runs it.
    RestartLeader { member: String },
    /// Away from `from`, to the most caught-up synchronous standby, PgBouncer paused.
    Switchover { from: String },
    /// Every member healthy, none with a restart pending, the configuration as wanted.
    Verify,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Gate => write!(f, "health gate"),
            Step::PatchConfig { parameters } => {
                let list: Vec<String> = parameters.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(f, "PATCH /config {}", list.join(" "))
            }
            Step::Update { member } => write!(f, "update {member}"),
            Step::Restart { member, if_pending: false } => write!(f, "restart {member}"),
            Step::Restart { member, if_pending: true } => write!(f, "restart {member} if still pending"),
            Step::RestartLeader { member } => write!(f, "restart {member}, the leader, in place (PgBouncer paused)"),
            Step::Switchover { from } => write!(f, "switchover away from {from} (PgBouncer paused)"),
            Step::Verify => write!(f, "verify every member"),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct UpgradePlan {
    pub target: String,
    pub changes: Vec<Change>,
    /// Members whose deployment changes.
    pub update: Vec<String>,
    pub steps: Vec<Step>,
    /// Checks that could not be made, and other things worth knowing.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct UpgradeOptions {
    pub gate: Gate,
    /// The whole upgrade's deadline.
    pub timeout: Duration,
    pub switchover: SwitchoverOptions,
    pub dry_run: bool,
}

impl Default for UpgradeOptions {
    fn default() -> Self {
        UpgradeOptions {
            gate: Gate::default(),
            timeout: Duration::from_secs(900),
            switchover: SwitchoverOptions::default(),
            dry_run: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub enum StepStatus {
    Done,
    Skipped,
    Failed,
    NotDone,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepOutcome {
    pub status: StepStatus,
    #[serde(serialize_with = "seconds")]
    pub took: Duration,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    #[serde(flatten)]
    pub step: Step,
    pub description: String,
    #[serde(flatten)]
    pub outcome: StepOutcome,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpgradeReport {
    pub plan: UpgradePlan,
    pub steps: Vec<StepReport>,
    pub switchover: Option<Switched>,
    #[serde(serialize_with = "seconds")]
    pub took: Duration,
    /// Why it stopped; `None` when it finished (or `--dry-run`).
    pub error: Option<String>,
    pub dry_run: bool,
}

impl UpgradeReport {
    pub fn finished(&self) -> bool {
        self.error.is_none()
    }
}

/// Parameters a hot standby must run at no less than the primary's value (Postgres checks
/// them against pg_control). Patroni starts a replica with the primary's value when it is
/// higher and leaves its restart pending, so a lowered one can reach the replicas only after
/// the primary runs it: a switchover first would only hand the old value on.
pub const STANDBY_AT_LEAST_PRIMARY: [&str; 5] =
    ["max_connections", "max_prepared_transactions", "max_locks_per_transaction", "max_wal_senders", "max_worker_processes"];

/// Whether the stack lowers one of [`STANDBY_AT_LEAST_PRIMARY`] below what the leader runs
/// (its `pg_settings`, or else the change to Patroni's configuration).
fn lowers_below_the_leader(target: &dyn Target, view: &ClusterView, changes: &[Change]) -> bool {
    let desired = target.desired_parameters();
    let wanted = |name: &str| desired.get(name).and_then(|v| v.trim().trim_matches('\'').parse::<u64>().ok());
    if let Some(settings) = view.leader().and_then(|l| target.postgres_settings(l, &STANDBY_AT_LEAST_PRIMARY)) {
        return settings.iter().any(|s| {
            STANDBY_AT_LEAST_PRIMARY.contains(&s.name.as_str())
                && wanted(&s.name).is_some_and(|w| s.setting.parse::<u64>().is_ok_and(|r| w < r))
        });
    }
    changes.iter().any(|c| {
        STANDBY_AT_LEAST_PRIMARY.contains(&c.parameter.as_str())
            && matches!((c.from.as_deref().and_then(|f| f.parse::<u64>().ok()), c.to.parse::<u64>()), (Some(from), Ok(to)) if to < from)
    })
}

/// Whether replicas restarted just now (`restarted`) are every one still pending: Patroni
/// starts a replica with the primary's value of a [`STANDBY_AT_LEAST_PRIMARY`] parameter when
/// it is higher than the configuration's (pg_controldata) and flags the restart pending, so
/// nothing but a leader running a higher value keeps a freshly restarted replica pending.
/// This is how a target that cannot read the leader's settings (Nomad: no SQL login) tells a
/// lowering that an interrupted earlier run left, whose plan now shows no change.
fn held_back_by_the_leader(restarted: &[MemberView], view: &ClusterView) -> bool {
    !restarted.is_empty() && restarted.iter().all(|r| view.member(&r.name).is_some_and(|m| !m.is_leader() && m.pending_restart))
}

/// The parameters whose wanted value differs from Patroni's dynamic configuration.
pub fn parameter_changes(desired: &BTreeMap<String, String>, current: &BTreeMap<String, String>) -> Vec<Change> {
    desired
        .iter()
        .filter(|(k, v)| current.get(*k) != Some(*v))
        .map(|(k, v)| Change { parameter: k.clone(), from: current.get(k).cloned(), to: v.clone(), restart: restart_required(k) })
        .collect()
}

/// The steps, in order: the gate; the configuration; each replica updated or restarted,
/// asynchronous ones first (then by name); then, if the leader needs either, a switchover
/// and the former leader; a final check. Empty when there is nothing to do. `leader_first`: a lowered
/// [`STANDBY_AT_LEAST_PRIMARY`] parameter, so the leader restarts first, in place.
pub fn plan_steps(view: &ClusterView, changes: &[Change], update: &[String], leader_first: bool) -> Result<Vec<Step>, OpsError> {
    let restart = changes.iter().any(|c| c.restart);
    let action = |name: &str, pending: bool, after_switchover: bool| {
        if update.iter().any(|u| u == name) {
            Some(Step::Update { member: name.to_owned() })
        } else if restart || pending {
            Some(Step::Restart { member: name.to_owned(), if_pending: after_switchover })
        } else {
            None
        }
    };
    let mut member_steps = Vec::new();
    let leader_first = leader_first && view.members.len() > 1 && (restart || view.leader().is_some_and(|l| l.pending_restart));
    if let Some(leader) = view.leader().filter(|_| leader_first) {
        member_steps.push(Step::RestartLeader { member: leader.name.clone() });
    }
    // A synchronous standby's restart waits for the primary's next HA loop to release it
    // (Patroni hands the role to another replica then). Taken last, it is released once;
    // taken first, the replica that took its role must be released again in its turn.
    let mut replicas: Vec<_> = view.replicas().collect();
    replicas.sort_by_key(|r| (r.is_sync_standby(), r.name.clone()));
    for r in replicas {
        member_steps.extend(action(&r.name, r.pending_restart, false));
    }
    if let Some(leader) = view.leader() {
        // Restarted first already; only a new deployment still needs the switchover.
        let leader_step = if leader_first {
            update.iter().any(|u| u == &leader.name).then(|| Step::Update { member: leader.name.clone() })
        } else {
            action(&leader.name, leader.pending_restart, true)
        };
        if let Some(step) = leader_step {
            if view.members.len() > 1 {
                member_steps.push(Step::Switchover { from: leader.name.clone() });
            }
            member_steps.push(step);
        }
    } else if !member_steps.is_empty() || !changes.is_empty() {
        return Err(OpsError::Refused("the cluster has no leader: bring one back (`failover --to MEMBER`) before upgrading".into()));
    }
    if changes.is_empty() && member_steps.is_empty() {
        return Ok(Vec::new());
    }
    let mut steps = vec![Step::Gate];
    if !changes.is_empty() {
        steps.push(Step::PatchConfig { parameters: changes.iter().map(|c| (c.parameter.clone(), c.to.clone())).collect() });
    }
    steps.extend(member_steps);
    steps.push(Step::Verify);
    Ok(steps)
}

fn make_plan(target: &dyn Target, view: &ClusterView, gate: &Gate) -> Result<UpgradePlan, OpsError> {
    let changes = parameter_changes(&target.desired_parameters(), &view.parameters);
    let update = target.members_to_update()?;
    let steps = plan_steps(view, &changes, &update, lowers_below_the_leader(target, view, &changes))?;
    let mut notes = Vec::new();
    if !steps.is_empty() {
        let problems = health_problems(target, view, gate, &mut notes);
        notes.extend(problems.into_iter().map(|p| format!("the health gate would refuse now: {p}")));
    }
    Ok(UpgradePlan { target: target.describe(), changes, update, steps, notes })
}

/// Plans, and unless `dry_run` runs the plan. A failed step stops it: the report says what was
/// done and what was not, and comes back with the error.
pub fn upgrade(
    target: &dyn Target,
    options: &UpgradeOptions,
    reporter: &dyn Reporter,
) -> Result<UpgradeReport, (Box<UpgradeReport>, OpsError)> {
    let started = Instant::now();
    let deadline = started + options.timeout;
    let view = observe(target).map(|v| with_postgres_pending(target, v)).map_err(|e| (Box::new(empty_report(target, started, &e)), e))?;
    let plan = make_plan(target, &view, &options.gate).map_err(|e| (Box::new(empty_report(target, started, &e)), e))?;
    if !options.dry_run {
        reporter.planned(&plan);
    }
    let mut report = UpgradeReport {
        plan: plan.clone(),
        steps: Vec::new(),
        switchover: None,
        took: Duration::ZERO,
        error: None,
        dry_run: options.dry_run,
    };
    let total = plan.steps.len();
    let mut failure = None;
    for (index, step) in plan.steps.iter().enumerate() {
        if options.dry_run || failure.is_some() {
            let outcome = StepOutcome { status: StepStatus::NotDone, took: Duration::ZERO, detail: String::new() };
            report.steps.push(StepReport { step: step.clone(), description: step.to_string(), outcome });
            continue;
        }
        reporter.step_started(index, total, step);
        let step_started = Instant::now();
        let result = run_step(target, step, &plan, options, deadline, reporter, &mut report.switchover);
        let (status, detail) = match &result {
            Ok(Some(detail)) => (StepStatus::Done, detail.clone()),
            Ok(None) => (StepStatus::Skipped, String::new()),
            Err(e) => (StepStatus::Failed, e.to_string()),
        };
        let outcome = StepOutcome { status, took: step_started.elapsed(), detail };
        reporter.step_finished(index, step, &outcome);
        report.steps.push(StepReport { step: step.clone(), description: step.to_string(), outcome });
        if let Err(e) = result {
            failure = Some(e);
        }
    }
    report.took = started.elapsed();
    match failure {
        None => Ok(report),
        Some(e) => {
            report.error = Some(e.to_string());
            Err((Box::new(report), e))
        }
    }
}

fn empty_report(target: &dyn Target, started: Instant, error: &OpsError) -> UpgradeReport {
    UpgradeReport {
        plan: UpgradePlan { target: target.describe(), changes: Vec::new(), update: Vec::new(), steps: Vec::new(), notes: Vec::new() },
        steps: Vec::new(),
        switchover: None,
        took: started.elapsed(),
        error: Some(error.to_string()),
        dry_run: false,
    }
}

/// One step; `Ok(None)` when it found nothing left to do.
fn run_step(
    target: &dyn Target,
    step: &Step,
    plan: &UpgradePlan,
    options: &UpgradeOptions,
    deadline: Instant,
    reporter: &dyn Reporter,
    switched: &mut Option<Switched>,
) -> Result<Option<String>, OpsError> {
    let max_lag = options.gate.max_lag;
    match step {
        Step::Gate => {
            for member in target.settle(deadline, reporter)? {
                wait_member_healthy(target, &member, max_lag, deadline, reporter)?;
            }
            let view = observe(target)?;
            let mut notes = Vec::new();
            let problems = health_problems(target, &view, &options.gate, &mut notes);
            for note in &notes {
                reporter.note(note);
            }
            if !problems.is_empty() {
                return Err(OpsError::Refused(format!(
                    "the cluster is not healthy enough to upgrade; nothing was changed:\n{}",
                    problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
                )));
            }
            Ok(Some("healthy".into()))
        }
        Step::PatchConfig { parameters } => {
            patch_config(target, parameters, plan.changes.iter().any(|c| c.restart), deadline, reporter)?;
            Ok(Some(format!("{} parameter(s) in Patroni's dynamic configuration", parameters.len())))
        }
        Step::Update { member } => {
            let view = observe(target)?;
            if view.member(member).is_some_and(|m| m.is_leader()) && view.members.len() > 1 {
                return Err(OpsError::Failed(format!("{member} is the leader; it is updated only after a switchover")));
            }
            target.update_member(member, deadline, reporter)?;
            wait_member_healthy(target, member, max_lag, deadline, reporter)?;
            Ok(Some(format!("{member} runs the new deployment and streams")))
        }
        Step::Restart { member, if_pending } => {
            let view = observe(target)?;
            let m = view.member(member).ok_or_else(|| OpsError::Failed(format!("{member} is not in Patroni's member list")))?;
            if m.is_leader() && view.members.len() > 1 {
                return Err(OpsError::Failed(format!("{member} is the leader; it is restarted only after a switchover")));
            }
            let mut m = m.clone();
            if *if_pending {
                // A demoted leader restarts as a replica: wait for that to finish, then see
                // whether it still needs one.
                let view = with_postgres_pending(target, wait_member_healthy(target, member, max_lag, deadline, reporter)?);
                m = view.member(member).cloned().unwrap_or(m);
                if !m.pending_restart {
                    return Ok(None);
                }
            }
            restart_member_watched(target, &m, max_lag, deadline, reporter)?;
            Ok(Some(format!("{member} restarted")))
        }
        Step::RestartLeader { member } => {
            let view = with_postgres_pending(target, observe(target)?);
            let m = view.member(member).ok_or_else(|| OpsError::Failed(format!("{member} is not in Patroni's member list")))?;
            if !m.is_leader() {
                return Err(OpsError::Failed(format!("{member} is no longer the leader; run the upgrade again to plan from here")));
            }
            if !m.pending_restart {
                return Ok(None);
            }
            let held = restart_leader_paused(target, m, options, deadline, reporter)?;
            Ok(Some(format!("{member} restarted as the leader, clients held {:.2} s", held.as_secs_f64())))
        }
        Step::Switchover { from } => {
            let view = observe(target)?;
            if view.leader().is_some_and(|l| &l.name != from) {
                return Ok(None);
            }
            let done = switchover(target, None, &options.switchover, reporter)?;
            let detail = format!("{} → {}, clients held {:.2} s", done.from, done.to, done.took.as_secs_f64());
            *switched = Some(done);
            Ok(Some(detail))
        }
        Step::Verify => {
            // A lowered parameter such as max_connections: a replica restarted while the
            // primary still ran the higher value had to keep it (Patroni takes the primary's
            // from pg_controldata); now that the primary runs the new one, restart it again.
            let view = with_postgres_pending(target, observe(target)?);
            let again: Vec<MemberView> = view.replicas().filter(|m| m.pending_restart).cloned().collect();
            for m in &again {
                reporter.note(&format!("{} still has a restart pending (a lowered setting follows the primary's): restarting it", m.name));
                restart_member_watched(target, m, max_lag, deadline, reporter)?;
            }
            // A leader whose restart is still pending never clears by waiting: a Patroni that
            // was killed during a restart adopts the Postgres it finds running, and an earlier
            // run's plan could not tell (a CI run waited out its whole timeout here). It gets
            // what the former primary gets: a switchover, then a restart if still pending;
            // unless it runs a higher standby-minimum value than wanted, which a switchover
            // would only hand on: then it restarts in place.
            let view = if again.is_empty() { view } else { with_postgres_pending(target, observe(target)?) };
            // The view just read serves the first check below when nothing moves in between.
            let mut unchanged = None;
            if let Some(leader) = view.leader().filter(|l| l.pending_restart && view.members.len() > 1).cloned() {
                if held_back_by_the_leader(&again, &view) || lowers_below_the_leader(target, &view, &plan.changes) {
                    reporter.note(&format!("{}, the leader, still runs a higher value than wanted: restarting it in place", leader.name));
                    restart_leader_paused(target, &leader, options, deadline, reporter)?;
                    let view = with_postgres_pending(target, observe(target)?);
                    for m in view.replicas().filter(|m| m.pending_restart) {
                        restart_member_watched(target, m, max_lag, deadline, reporter)?;
                    }
                } else {
                    reporter.note(&format!("{}, the leader, has a restart pending: switching over, then restarting it", leader.name));
                    let done = switchover(target, None, &options.switchover, reporter)?;
                    let view = with_postgres_pending(target, wait_member_healthy(target, &leader.name, max_lag, deadline, reporter)?);
                    if let Some(m) = view.member(&leader.name).filter(|m| m.pending_restart).cloned() {
                        restart_member_watched(target, &m, max_lag, deadline, reporter)?;
                    }
                    switched.get_or_insert(done);
                }
            } else {
                unchanged = Some(view);
            }
            let desired: BTreeMap<String, String> = plan.changes.iter().map(|c| (c.parameter.clone(), c.to.clone())).collect();
            wait_for("every member healthy with no restart pending", deadline, Duration::from_millis(250), reporter, || {
                let view = match unchanged.take() {
                    Some(view) => view,
                    None => with_postgres_pending(target, observe(target).map_err(|e| e.to_string())?),
                };
                let mut notes = Vec::new();
                let mut problems = health_problems(target, &view, &options.gate, &mut notes);
                problems.extend(view.members.iter().filter(|m| m.pending_restart).map(|m| format!("{} has a restart pending", m.name)));
                problems.extend(
                    desired
                        .iter()
                        .filter(|(k, v)| view.parameters.get(*k) != Some(*v))
                        .map(|(k, _)| format!("{k} is not in the configuration")),
                );
                if problems.is_empty() {
                    Ok(Some(()))
                } else {
                    Err(problems.join("; "))
                }
            })?;
            target.finish_update()?;
            Ok(Some("every member healthy, nothing pending".into()))
        }
    }
}

/// Restarts the leader where it runs with every PgBouncer paused, so clients wait for it
/// instead of failing; PgBouncer is RESUMEd once it runs again, or after the pause timeout
/// whatever happened. Then waits until every replica streams from it again. How long the
/// clients were held comes back.
fn restart_leader_paused(
    target: &dyn Target,
    leader: &MemberView,
    options: &UpgradeOptions,
    deadline: Instant,
    reporter: &dyn Reporter,
) -> Result<Duration, OpsError> {
    let max_lag = options.gate.max_lag;
    let poolers = if options.switchover.pause { target.poolers()? } else { Vec::new() };
    let started = Instant::now();
    let window = pause_clients(target, &poolers, reporter)?;
    let result = restart_and_watch(target, leader, max_lag, deadline.min(started + options.switchover.pause_timeout), reporter);
    let held = started.elapsed();
    let not_resumed = resume_all(target, &poolers, reporter);
    window.close();
    with_resume_failures(result, &not_resumed)?;
    // Only now: the replicas reconnect at their next WAL retrieval retry (up to
    // wal_retrieve_retry_interval later) and Patroni names a synchronous standby again a loop
    // after that. Clients need not be held for it: a commit meanwhile waits for the standby
    // Patroni had named (it keeps synchronous_standby_names across the restart) or until its
    // next loop drops it, as without pgnomad. Holding clients for that too held them 8-9 s.
    wait_member_healthy(target, &leader.name, max_lag, deadline, reporter)?;
    let view = observe(target)?;
    for r in view.replicas() {
        wait_member_healthy(target, &r.name, max_lag, deadline, reporter)?;
    }
    Ok(held)
}

/// `PATCH /config` on the leader with `parameters`, then a wait until every member loaded
/// them (and, when `restart` says one needs it, shows `pending_restart`).
fn patch_config(
    target: &dyn Target,
    parameters: &BTreeMap<String, String>,
    restart: bool,
    deadline: Instant,
    reporter: &dyn Reporter,
) -> Result<(), OpsError> {
    let view = observe(target)?;
    let leader = view.leader().ok_or_else(|| OpsError::Failed("the cluster lost its leader".into()))?;
    let body = serde_json::json!({ "postgresql": { "parameters": parameters } });
    let (code, text) = target
        .rest(&leader.rest, "PATCH", "/config", Some(&body), Duration::from_secs(10))
        .map_err(|e| OpsError::Failed(format!("PATCH /config on {}: {e}", leader.name)))?;
    if code != 200 {
        return Err(OpsError::Failed(format!("Patroni refused PATCH /config ({code}): {}", text.trim())));
    }
    // Each member's Patroni applies it on its next loop (a reload); a parameter that needs a
    // restart then shows as pending_restart.
    wait_for(
        "every member to load the new configuration",
        deadline.min(Instant::now() + Duration::from_secs(30)),
        Duration::from_millis(250),
        reporter,
        || {
            let view = observe(target).map_err(|e| e.to_string())?;
            let applied = parameters.iter().all(|(k, v)| view.parameters.get(k) == Some(v));
            let pending: Vec<&str> = view.members.iter().filter(|m| m.pending_restart).map(|m| m.name.as_str()).collect();
            let settled = !restart || pending.len() == view.members.len();
            if applied && settled {
                Ok(Some(()))
            } else {
                Err(format!("pending_restart on {}", if pending.is_empty() { "none".into() } else { pending.join(", ") }))
            }
        },
    )
    .or_else(|e| if restart { Ok(reporter.note(&format!("{e}; restarting every member anyway"))) } else { Err(e) })
}

/// Brings Patroni's dynamic configuration to the stack's parameters that need no restart
/// (`run` after a bootstrap, whose patroni.yml carries only those Postgres reads at start).
/// Returns the changes it made, and those it left to `upgrade` because they need a restart.
pub fn apply_reload_parameters(
    target: &dyn Target,
    timeout: Duration,
    reporter: &dyn Reporter,
) -> Result<(Vec<Change>, Vec<Change>), OpsError> {
    let view = observe(target)?;
    let (restart, reload): (Vec<Change>, Vec<Change>) =
        parameter_changes(&target.desired_parameters(), &view.parameters).into_iter().partition(|c| c.restart);
    if !reload.is_empty() {
        let parameters = reload.iter().map(|c| (c.parameter.clone(), c.to.clone())).collect();
        patch_config(target, &parameters, false, Instant::now() + timeout, reporter)?;
    }
    Ok((reload, restart))
}

/// `POST /restart`, then a wait until the member is healthy again (for a leader: a
/// synchronous standby too, in synchronous mode). Fails as soon as the member's Patroni stops
/// answering: it keeps its REST API up while it restarts Postgres, so silence means the
/// member itself went down.
pub(super) fn restart_member_watched(
    target: &dyn Target,
    m: &MemberView,
    max_lag: u64,
    deadline: Instant,
    reporter: &dyn Reporter,
) -> Result<(), OpsError> {
    restart_and_watch(target, m, max_lag, deadline, reporter)?;
    wait_member_healthy(target, &m.name, max_lag, deadline, reporter).map(|_| ())
}

/// [`restart_member_watched`] up to the point where the member works again: a leader takes
/// writes (its own `/patroni`, which is current, where `/cluster` is a loop behind); a
/// replica streams within `max_lag`.
fn restart_and_watch(
    target: &dyn Target,
    m: &MemberView,
    max_lag: u64,
    deadline: Instant,
    reporter: &dyn Reporter,
) -> Result<(), OpsError> {
    let went_down = |why: String| {
        OpsError::Failed(format!(
            "{} went down during its restart ({why}); see its logs, and run the upgrade again once it is back",
            m.name
        ))
    };
    reporter.note(&format!("POST /restart on {}", m.name));
    let timeout = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
    let (code, text) = target.rest(&m.rest, "POST", "/restart", Some(&serde_json::json!({})), timeout).map_err(went_down)?;
    if code != 200 {
        return Err(OpsError::Failed(format!("Patroni refused to restart {} ({code}): {}", m.name, text.trim())));
    }
    let mut silent_since: Option<Instant> = None;
    let what = if m.is_leader() { "to take writes" } else { "to run and stream" };
    let outcome = wait_for(&format!("{} {what}", m.name), deadline, Duration::from_millis(250), reporter, || {
        match target.rest(&m.rest, "GET", "/patroni", None, Duration::from_secs(2)) {
            Err(e) => {
                let since = *silent_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(1500) {
                    return Ok(Some(Err(e)));
                }
                return Err("not answering".into());
            }
            Ok((code, body)) => {
                silent_since = None;
                if m.is_leader() {
                    return Ok(view::answer_takes_writes(code, &body).then_some(Ok(())));
                }
            }
        }
        let view = observe(target).map_err(|e| e.to_string())?;
        let Some(now) = view.member(&m.name) else { return Err("not in the member list".into()) };
        let healthy = now.state == "running" && (now.is_leader() || (now.is_streaming() && now.lag.is_some_and(|l| l <= max_lag)));
        Ok(healthy.then_some(Ok(())))
    })?;
    outcome.map_err(went_down)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, role: &str, pending: bool) -> MemberView {
        MemberView {
            name: name.into(),
            role: role.into(),
            state: "running".into(),
            timeline: Some(1),
            lag: if role == "leader" { None } else { Some(0) },
            rest: format!("{name}:8008"),
            host: name.into(),
            port: 5432,
            reachable: true,
            pending_restart: pending,
            replication: (role != "leader").then(|| "streaming".into()),
            sync_state: Some(if role == "sync_standby" { "sync" } else { "async" }.into()),
        }
    }

    fn view(pending: bool) -> ClusterView {
        ClusterView {
            members: vec![
                member("member-0", "replica", pending),
                member("member-1", "leader", pending),
                member("member-2", "sync_standby", pending),
            ],
            parameters: [("max_connections".to_owned(), "200".to_owned()), ("work_mem".to_owned(), "4MB".to_owned())].into(),
            synchronous_mode: true,
        }
    }

    fn desired(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_restart_parameter_rolls_replicas_then_switches_over_then_the_former_leader() {
        let v = view(false);
        let changes = parameter_changes(&desired(&[("max_connections", "250"), ("work_mem", "4MB")]), &v.parameters);
        assert_eq!(changes, [Change { parameter: "max_connections".into(), from: Some("200".into()), to: "250".into(), restart: true }]);
        let steps = plan_steps(&v, &changes, &[], false).unwrap();
        let restart = |m: &str, if_pending| Step::Restart { member: m.into(), if_pending };
        assert_eq!(
            steps,
            [
                Step::Gate,
                Step::PatchConfig { parameters: desired(&[("max_connections", "250")]) },
                restart("member-0", false),
                restart("member-2", false),
                Step::Switchover { from: "member-1".into() },
                restart("member-1", true),
                Step::Verify,
            ]
        );
    }

    #[test]
    fn a_lowered_max_connections_restarts_the_leader_first_in_place_and_needs_no_switchover() {
        let v = view(false);
        let changes = parameter_changes(&desired(&[("max_connections", "150")]), &v.parameters);
        let restart = |m: &str| Step::Restart { member: m.into(), if_pending: false };
        let leader_first = Step::RestartLeader { member: "member-1".into() };
        let patch = Step::PatchConfig { parameters: desired(&[("max_connections", "150")]) };
        assert_eq!(
            plan_steps(&v, &changes, &[], true).unwrap(),
            [Step::Gate, patch.clone(), leader_first.clone(), restart("member-0"), restart("member-2"), Step::Verify]
        );
        // With new deployments too, the leader's still comes after a switchover.
        let all: Vec<String> = ["member-0", "member-1", "member-2"].map(String::from).to_vec();
        let update = |m: &str| Step::Update { member: m.into() };
        assert_eq!(
            plan_steps(&v, &changes, &all, true).unwrap(),
            [
                Step::Gate,
                patch,
                leader_first,
                update("member-0"),
                update("member-2"),
                Step::Switchover { from: "member-1".into() },
                update("member-1"),
                Step::Verify,
            ]
        );
        // A one-member cluster just restarts.
        let one = ClusterView { members: vec![member("member-1", "leader", true)], ..v.clone() };
        assert_eq!(plan_steps(&one, &changes, &[], true).unwrap()[2], Step::Restart { member: "member-1".into(), if_pending: true });
    }

    #[test]
    fn replicas_still_pending_after_their_own_restart_are_held_back_by_the_leader() {
        let restarted = [member("member-0", "replica", true), member("member-2", "sync_standby", true)];
        // Both restarted and both still pending: they took the leader's higher value.
        assert!(held_back_by_the_leader(&restarted, &view(true)));
        // One of them cleared: whatever keeps the other pending, it is not the leader's value.
        let mut one_cleared = view(true);
        one_cleared.members[0].pending_restart = false;
        assert!(!held_back_by_the_leader(&restarted, &one_cleared));
        // Nothing restarted in this pass: no evidence either way.
        assert!(!held_back_by_the_leader(&[], &view(true)));
        // A restarted replica that has since become the leader says nothing about the leader.
        let mut promoted = view(true);
        promoted.members[0].role = "leader".into();
        promoted.members[1].role = "replica".into();
        assert!(!held_back_by_the_leader(&restarted, &promoted));
    }

    #[test]
    fn a_reload_parameter_is_only_patched() {
        let v = view(false);
        let changes = parameter_changes(&desired(&[("work_mem", "8MB")]), &v.parameters);
        assert!(!changes[0].restart);
        let steps = plan_steps(&v, &changes, &[], false).unwrap();
        assert_eq!(steps, [Step::Gate, Step::PatchConfig { parameters: desired(&[("work_mem", "8MB")]) }, Step::Verify]);
    }

    #[test]
    fn changed_member_groups_are_updated_replicas_first_and_the_leader_after_a_switchover() {
        let v = view(false);
        let all = ["member-0".to_owned(), "member-1".to_owned(), "member-2".to_owned()];
        let steps = plan_steps(&v, &[], &all, false).unwrap();
        let update = |m: &str| Step::Update { member: m.into() };
        assert_eq!(
            steps,
            [
                Step::Gate,
                update("member-0"),
                update("member-2"),
                Step::Switchover { from: "member-1".into() },
                update("member-1"),
                Step::Verify
            ]
        );
        // Only a replica changed: no switchover.
        let steps = plan_steps(&v, &[], &["member-2".to_owned()], false).unwrap();
        assert_eq!(steps, [Step::Gate, update("member-2"), Step::Verify]);
    }

    #[test]
    fn the_synchronous_standby_is_the_last_replica_whatever_its_name() {
        // member-0 is the synchronous standby here: it goes after member-2, so that Patroni
        // releases one replica from the role, not each in turn.
        let mut v = view(false);
        v.members[0] = member("member-0", "sync_standby", false);
        v.members[2] = member("member-2", "replica", false);
        let all = ["member-0".to_owned(), "member-1".to_owned(), "member-2".to_owned()];
        let update = |m: &str| Step::Update { member: m.into() };
        assert_eq!(
            plan_steps(&v, &[], &all, false).unwrap(),
            [
                Step::Gate,
                update("member-2"),
                update("member-0"),
                Step::Switchover { from: "member-1".into() },
                update("member-1"),
                Step::Verify
            ]
        );
        let changes = parameter_changes(&desired(&[("max_connections", "250")]), &v.parameters);
        let restarts: Vec<Step> =
            plan_steps(&v, &changes, &[], false).unwrap().into_iter().filter(|s| matches!(s, Step::Restart { .. })).collect();
        let restart = |m: &str, if_pending| Step::Restart { member: m.into(), if_pending };
        assert_eq!(restarts, [restart("member-2", false), restart("member-0", false), restart("member-1", true)]);
    }

    #[test]
    fn a_rerun_plans_only_what_is_left() {
        // The configuration is patched and the replicas restarted; the leader still pending.
        let mut v = view(false);
        v.parameters.insert("max_connections".into(), "250".into());
        v.members[1].pending_restart = true;
        let changes = parameter_changes(&desired(&[("max_connections", "250")]), &v.parameters);
        assert!(changes.is_empty());
        let steps = plan_steps(&v, &changes, &[], false).unwrap();
        assert_eq!(
            steps,
            [
                Step::Gate,
                Step::Switchover { from: "member-1".into() },
                Step::Restart { member: "member-1".into(), if_pending: true },
                Step::Verify
            ]
        );
        // Nothing left: nothing to do.
        assert_eq!(plan_steps(&view(false), &[], &[], false).unwrap(), []);
    }

    #[test]
    fn the_candidate_is_the_synchronous_standby_and_a_wrong_or_lagging_one_is_refused() {
        let mut v = view(false);
        assert_eq!(super::super::choose_candidate(&v, None, 1024).unwrap().name, "member-2");
        let refused = |v: &ClusterView, to: &str| super::super::choose_candidate(v, Some(to), 1024).unwrap_err().to_string();
        assert!(refused(&v, "member-0").contains("member-0 is not a synchronous standby"), "{}", refused(&v, "member-0"));
        assert!(refused(&v, "member-1").contains("already the leader"));
        assert!(refused(&v, "member-7").contains("member-7 is not a member (members: member-0, member-1, member-2)"));
        v.members[2].lag = Some(1 << 20);
        assert!(refused(&v, "member-2").contains("member-2 lags 1048576 bytes"), "{}", refused(&v, "member-2"));
        assert!(super::super::choose_candidate(&v, None, 1024).is_err(), "a lagging sync standby was chosen");
    }
}
