//! Operations on a running cluster — switchover, failover, restart, upgrade — written once
//! and run against a [`Target`]: the `pgnomad dev` supervisor ([`dev::DevTarget`]) or Nomad
//! and Consul ([`nomad::NomadTarget`]). They speak to Patroni's REST API and PgBouncer's
//! admin console through the target, report through a [`Reporter`] and never print.
//!
//! Every wait polls a condition with a deadline; PgBouncer is never left paused: a PAUSE is
//! always followed by a RESUME, whatever failed in between.

pub mod backup;
pub mod dev;
pub mod nomad;
pub mod nomad_backup;
pub mod nomad_restore;
pub mod restore;
pub mod resume_guard;
pub mod running;
mod upgrade;
mod view;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

pub use upgrade::{
    apply_reload_parameters, parameter_changes, plan_steps, restart_required, upgrade, Change, Step, StepOutcome, StepReport, StepStatus,
    UpgradeOptions, UpgradePlan, UpgradeReport,
};
pub use view::{observe, ClusterView, MemberView};

/// Where the operations run: how to reach the members' REST APIs and PgBouncer's admin
/// consoles, what the stack wants, and how one member is brought to it.
pub trait Target: Sync {
    /// `host:port` of REST APIs to ask for `GET /cluster` first (the rest are found there).
    fn seeds(&self) -> Result<Vec<String>, OpsError>;
    /// The REST address of a member Patroni lists without an `api_url`.
    fn rest_address_of(&self, _member: &str) -> Option<String> {
        None
    }
    /// One request to a Patroni REST API, with the credentials its unsafe endpoints need:
    /// the status code and the body. `Err` only when no answer came.
    fn rest(&self, address: &str, method: &str, path: &str, body: Option<&Value>, timeout: Duration) -> Result<(u16, String), String>;
    /// Every PgBouncer instance, by the address clients use.
    fn poolers(&self) -> Result<Vec<String>, OpsError>;
    /// One command on a PgBouncer's admin console; its rows, `|`-separated. Gives up after
    /// `timeout` (a PAUSE waits for every server connection to be released).
    fn pooler_admin(&self, pooler: &str, command: &str, timeout: Duration) -> Result<String, OpsError>;
    /// How [`Target::pooler_admin`] runs `command` on `pooler`, for the guard that RESUMEs
    /// PgBouncer should pgnomad die while its clients are paused ([`resume_guard`]).
    fn pooler_console(&self, _pooler: &str, _command: &str) -> Result<resume_guard::ConsoleCommand, OpsError> {
        Err(OpsError::Setup(format!("{} runs no admin console command of its own", self.describe())))
    }
    /// How long PgBouncer's own pause watchdog lets clients wait on a PAUSE (the stack's
    /// `max_pause`); `None` without one.
    fn max_pause(&self) -> Option<Duration> {
        None
    }
    /// The age of the oldest open transaction on the primary; `None` when the target cannot
    /// tell (the reason is reported).
    fn oldest_transaction(&self, primary: &MemberView) -> Result<Option<Duration>, String>;
    /// The member's Postgres' own `pg_settings` rows for `names`, and every row with a
    /// restart pending (see [`running`]); `None` when the target cannot ask Postgres.
    fn postgres_settings(&self, _member: &MemberView, _names: &[&str]) -> Option<Vec<running::RunningSetting>> {
        None
    }
    /// postgresql.conf parameters the stack wants (pgnomad's defaults and the stack's own).
    fn desired_parameters(&self) -> BTreeMap<String, String>;
    /// Members whose own deployment (Nomad: their task group; dev: their config files)
    /// differs from the stack in a way that needs their processes replaced.
    fn members_to_update(&self) -> Result<Vec<String>, OpsError>;
    /// Brings one member to the stack and restarts its processes (Nomad: registers the job
    /// with only that member's group changed and follows the deployment). Returns once the
    /// new processes run; the caller then waits for Patroni.
    fn update_member(&self, member: &str, deadline: Instant, reporter: &dyn Reporter) -> Result<(), OpsError>;
    /// After every member was updated: whatever the target records of a finished rollout.
    fn finish_update(&self) -> Result<(), OpsError> {
        Ok(())
    }
    /// Before a health gate: waits until a change already under way (an earlier run stopped
    /// mid-update, a task Nomad is restarting) is in place, and returns the members it
    /// touched, whose health the caller then waits for. The gate judges the cluster, not a
    /// member caught half-way through its replacement.
    fn settle(&self, _deadline: Instant, _reporter: &dyn Reporter) -> Result<Vec<String>, OpsError> {
        Ok(Vec::new())
    }
    /// A sentence naming the target ("the dev stack in …", "job main-postgres on Nomad").
    fn describe(&self) -> String;
}

/// How an operation shows its progress. Every method has a quiet default.
pub trait Reporter {
    /// The steps an upgrade will take, before the first.
    fn planned(&self, _plan: &UpgradePlan) {}
    /// Step `index` (from 0) of `total` starts.
    fn step_started(&self, _index: usize, _total: usize, _step: &Step) {}
    /// Where the current step's wait stands (replaces the previous progress message).
    fn progress(&self, _message: &str) {}
    /// A step ended.
    fn step_finished(&self, _index: usize, _step: &Step, _outcome: &StepOutcome) {}
    /// Something worth a line of its own ("PAUSE on 127.0.0.1:6432").
    fn note(&self, _message: &str) {}
}

/// Shows nothing.
pub struct Quiet;
impl Reporter for Quiet {}

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The cluster is not in a state the operation may start from; nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// No Patroni or PgBouncer answered; nothing was changed.
    #[error("{0}")]
    Unreachable(String),
    /// Started, and a step failed.
    #[error("{0}")]
    Failed(String),
    /// A wait ran out of time.
    #[error("timed out after {} s waiting for {what}", .after.as_secs())]
    TimedOut { what: String, after: Duration },
    /// The stack, a config or a local file.
    #[error("{0}")]
    Setup(String),
}

impl OpsError {
    /// The exit code class: refusals are bad input (1), waits that ran out did not converge (3).
    pub fn is_refusal(&self) -> bool {
        matches!(self, OpsError::Refused(_))
    }

    pub fn is_not_converged(&self) -> bool {
        matches!(self, OpsError::TimedOut { .. } | OpsError::Failed(_))
    }
}

/// Polls `check` every `every` until it gives a value or `deadline` passes; each miss tells
/// the reporter what is awaited.
pub fn wait_for<T>(
    what: &str,
    deadline: Instant,
    every: Duration,
    reporter: &dyn Reporter,
    mut check: impl FnMut() -> Result<Option<T>, String>,
) -> Result<T, OpsError> {
    let started = Instant::now();
    loop {
        let status = match check() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => String::new(),
            Err(why) => why,
        };
        if Instant::now() >= deadline {
            let what = if status.is_empty() { what.to_owned() } else { format!("{what} ({status})") };
            return Err(OpsError::TimedOut { what, after: started.elapsed() });
        }
        let elapsed = started.elapsed().as_secs_f64();
        reporter.progress(&if status.is_empty() {
            format!("{what} ({elapsed:.0} s)")
        } else {
            format!("{what}: {status} ({elapsed:.0} s)")
        });
        std::thread::sleep(every);
    }
}

/// Adds to Patroni's `pending_restart` flags what Postgres itself shows, where the target can
/// ask it: a setting waiting for a restart, or a restart-only parameter the stack wants that
/// the postmaster does not run (a Patroni restarted beside a running Postgres adopts it and
/// flags nothing).
pub fn with_postgres_pending(target: &dyn Target, mut view: ClusterView) -> ClusterView {
    let wanted: BTreeMap<String, String> = target.desired_parameters().into_iter().filter(|(k, _)| restart_required(k)).collect();
    let names: Vec<&str> = wanted.keys().map(String::as_str).collect();
    for m in view.members.iter_mut().filter(|m| m.reachable && !m.pending_restart) {
        let Some(settings) = target.postgres_settings(m, &names) else { continue };
        m.pending_restart = settings.iter().any(|s| s.pending_restart || wanted.get(&s.name).is_some_and(|w| !s.runs(w)));
    }
    view
}

/// What the health gate checks.
#[derive(Debug, Clone)]
pub struct Gate {
    /// Bytes a replica may be behind.
    pub max_lag: u64,
    /// The oldest transaction the primary may have open.
    pub max_transaction_age: Duration,
}

impl Default for Gate {
    fn default() -> Self {
        Gate { max_lag: 16 * 1024 * 1024, max_transaction_age: Duration::from_secs(300) }
    }
}

/// Why the cluster is not healthy enough to start; empty when it is. `notes` are checks the
/// target could not make.
pub fn health_problems(target: &dyn Target, view: &ClusterView, gate: &Gate, notes: &mut Vec<String>) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(leader) = view.leader() else {
        return vec!["the cluster has no leader".into()];
    };
    for m in &view.members {
        if !m.reachable {
            problems.push(format!("{}'s REST API does not answer", m.name));
        } else if m.state != "running" && m.state != "streaming" {
            problems.push(format!("{} is {}, not running", m.name, m.state));
        }
    }
    for r in view.replicas() {
        if !r.is_streaming() {
            let how = r.replication.as_deref().unwrap_or("not connected");
            problems.push(format!("{} does not stream from {} ({how})", r.name, leader.name));
        } else if r.lag.is_none_or(|lag| lag > gate.max_lag) {
            let lag = r.lag.map_or("unknown".into(), |l| format!("{l} bytes"));
            problems.push(format!("{} lags {lag}, more than --max-lag {}", r.name, gate.max_lag));
        }
    }
    if view.synchronous_mode && view.members.len() > 1 && !view.replicas().any(MemberView::is_sync_standby) {
        problems.push("synchronous mode is on and no synchronous standby is chosen".into());
    }
    match target.oldest_transaction(leader) {
        Ok(Some(age)) if age > gate.max_transaction_age => problems.push(format!(
            "a transaction on {} is open for {} s (more than {} s): it would hold the switchover; end it or wait",
            leader.name,
            age.as_secs(),
            gate.max_transaction_age.as_secs()
        )),
        Ok(_) => {}
        Err(why) => notes.push(format!("the oldest transaction was not checked: {why}")),
    }
    problems
}

/// The switchover candidate: `to` when it is fit, else the most caught-up synchronous
/// standby (any streaming replica when synchronous mode is off).
pub fn choose_candidate<'a>(view: &'a ClusterView, to: Option<&str>, max_lag: u64) -> Result<&'a MemberView, OpsError> {
    let leader = view.leader().ok_or_else(|| OpsError::Refused("the cluster has no leader: use `failover --to MEMBER`".into()))?;
    let refuse = |why: String| Err(OpsError::Refused(format!("refusing to switch over: {why}")));
    if let Some(name) = to {
        let Some(m) = view.member(name) else {
            let names: Vec<&str> = view.members.iter().map(|m| m.name.as_str()).collect();
            return refuse(format!("{name} is not a member (members: {})", names.join(", ")));
        };
        if m.is_leader() {
            return refuse(format!("{name} is already the leader"));
        }
        if !m.reachable {
            return refuse(format!("{name}'s REST API does not answer, so how far it has replayed is unknown"));
        }
        if !m.is_streaming() {
            return refuse(format!(
                "{name} does not stream from {} ({})",
                leader.name,
                m.replication.as_deref().unwrap_or("not connected")
            ));
        }
        match m.lag {
            Some(lag) if lag <= max_lag => {}
            lag => {
                return refuse(format!(
                    "{name} lags {} (at most {max_lag} bytes allowed)",
                    lag.map_or("unknown".into(), |l| format!("{l} bytes"))
                ))
            }
        }
        // Patroni takes the synchronous standby from the DCS, not from pg_stat_replication.
        if view.synchronous_mode && m.role != "sync_standby" {
            let sync: Vec<&str> = view.replicas().filter(|r| r.role == "sync_standby").map(|r| r.name.as_str()).collect();
            return refuse(format!(
                "{name} is not a synchronous standby, so it may miss acknowledged commits (synchronous standby: {})",
                if sync.is_empty() { "none".into() } else { sync.join(", ") }
            ));
        }
        return Ok(m);
    }
    let mut fit: Vec<&MemberView> = view
        .replicas()
        .filter(|m| m.reachable && m.is_streaming() && m.lag.is_some_and(|l| l <= max_lag))
        .filter(|m| !view.synchronous_mode || m.role == "sync_standby")
        .collect();
    fit.sort_by_key(|m| (m.lag, m.name.clone()));
    match fit.first() {
        Some(m) => Ok(m),
        None => refuse(if view.synchronous_mode {
            "no synchronous standby streams within the lag bound".into()
        } else {
            "no replica streams within the lag bound".into()
        }),
    }
}

#[derive(Debug, Clone)]
pub struct SwitchoverOptions {
    /// PAUSE every PgBouncer around it.
    pub pause: bool,
    pub max_lag: u64,
    /// The longest clients are held: past it PgBouncer is RESUMEd and the switchover fails.
    pub pause_timeout: Duration,
}

impl Default for SwitchoverOptions {
    fn default() -> Self {
        SwitchoverOptions { pause: true, max_lag: Gate::default().max_lag, pause_timeout: DEFAULT_PAUSE_TIMEOUT }
    }
}

/// pgnomad's own bound on a pause when none is asked for.
pub const DEFAULT_PAUSE_TIMEOUT: Duration = Duration::from_secs(60);

/// The pause timeout to use: the one asked for, or [`DEFAULT_PAUSE_TIMEOUT`]; either way
/// short enough that PgBouncer's pause watchdog (`max_pause`) does not RESUME clients while
/// pgnomad still holds them on purpose (a PAUSE may itself take [`PAUSE_WAIT`] to settle).
/// Without a default that follows it, every switchover of a stack with a short `max_pause`
/// would need the flag.
pub fn pause_timeout(asked: Option<Duration>, max_pause: Option<Duration>) -> Result<Duration, OpsError> {
    let Some(max_pause) = max_pause else { return Ok(asked.unwrap_or(DEFAULT_PAUSE_TIMEOUT)) };
    let bound = max_pause.saturating_sub(PAUSE_WAIT);
    match asked {
        None => Ok(DEFAULT_PAUSE_TIMEOUT.min(bound)),
        Some(asked) if asked <= bound => Ok(asked),
        Some(asked) => Err(OpsError::Refused(format!(
            "--pause-timeout {} s would outlast PgBouncer's pause watchdog: it RESUMEs clients that waited `max_pause` = {} s \
             (the stack's `pgbouncer` block), and a PAUSE may take {} s to settle; pass at most {} s, or raise `max_pause`",
            asked.as_secs(),
            max_pause.as_secs(),
            PAUSE_WAIT.as_secs(),
            bound.as_secs()
        ))),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Switched {
    pub from: String,
    pub to: String,
    /// How long clients were held (PAUSE to RESUME), or the switchover's own time.
    #[serde(serialize_with = "seconds")]
    pub took: Duration,
    pub paused: bool,
}

pub fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

/// Which member PgBouncer's databases point at, by `SHOW DATABASES` (host and port of every
/// database but the admin console); `None` while they disagree.
fn pooler_routes_to(target: &dyn Target, pooler: &str, view: &ClusterView) -> Result<Option<String>, OpsError> {
    let rows = target.pooler_admin(pooler, "SHOW DATABASES", ADMIN_TIMEOUT)?;
    let addresses: std::collections::BTreeSet<String> = rows
        .lines()
        .map(|row| row.split('|').collect::<Vec<_>>())
        .filter(|cols| cols.len() > 2 && cols[0] != "pgbouncer" && !cols[1].is_empty())
        .map(|cols| format!("{}:{}", cols[1], cols[2]))
        .collect();
    let [address] = addresses.iter().collect::<Vec<_>>()[..] else { return Ok(None) };
    Ok(view.members.iter().find(|m| &m.pg_address() == address).map(|m| m.name.clone()))
}

/// How long a PAUSE may wait for server connections to be released (a transaction that
/// does not end holds it): past it the switchover is called off and PgBouncer resumed.
const PAUSE_WAIT: Duration = Duration::from_secs(10);
/// Any other admin console command.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
const PAUSE_ATTEMPTS: u32 = 3;

/// Runs a client program to its end or until `timeout`, when it is killed.
pub fn run_bounded(cmd: &mut std::process::Command, timeout: Duration) -> Result<std::process::Output, String> {
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return child.wait_with_output().map_err(|e| e.to_string()),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {} s", timeout.as_secs()));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Runs one admin console command (see [`Target::pooler_console`]); its rows, or psql's error.
fn run_console(console: &resume_guard::ConsoleCommand, sql: &str, timeout: Duration) -> Result<String, OpsError> {
    let pooler = &console.pooler;
    let out = run_bounded(&mut console.command(), timeout)
        .map_err(|e| OpsError::Failed(format!("PgBouncer {pooler} {sql}: {e} (psql comes with postgresql-client)")))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    match (out.status.success(), stderr.trim()) {
        (true, _) => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        (false, "") => Err(OpsError::Failed(format!("PgBouncer {pooler} {sql}: psql {}", out.status))),
        (false, said) => Err(OpsError::Failed(format!("PgBouncer {pooler} {sql}: {said}"))),
    }
}

/// What holds while PgBouncer's clients are paused: Ctrl-C, SIGTERM and SIGHUP wait for the
/// RESUME, and a guard process RESUMEs every PgBouncer should pgnomad die meanwhile, or
/// should the window be dropped without [`PauseWindow::close`] (a panic).
struct PauseWindow {
    guard: resume_guard::ResumeGuard,
    _signals: crate::interrupts::Hold,
}

impl PauseWindow {
    /// Every PgBouncer was RESUMEd (or none stayed paused): the guard ends, then a signal
    /// that came meanwhile takes effect.
    fn close(self) {
        let PauseWindow { guard, _signals } = self;
        guard.finish();
    }
}

/// Opens the window, then PAUSEs every pooler. When that fails pause_all has RESUMEd them
/// all, so the window is closed before the error comes back.
fn pause_clients(target: &dyn Target, poolers: &[String], reporter: &dyn Reporter) -> Result<PauseWindow, OpsError> {
    let window = pause_window(target, poolers, reporter);
    match pause_all(target, poolers, reporter) {
        Ok(()) => Ok(window),
        Err(e) => {
            window.close();
            Err(e)
        }
    }
}

/// Opens the window before the first PAUSE. A guard that cannot start is said, not fatal:
/// the signals are still held.
fn pause_window(target: &dyn Target, poolers: &[String], reporter: &dyn Reporter) -> PauseWindow {
    let resumes: Result<Vec<_>, _> = poolers.iter().map(|p| target.pooler_console(p, "RESUME")).collect();
    let guard = match resumes.map_err(|e| e.to_string()).and_then(|r| resume_guard::ResumeGuard::start(&r)) {
        Ok(guard) => guard,
        Err(why) => {
            reporter.note(&format!("no guard will RESUME PgBouncer if pgnomad is killed while it is paused: {why}"));
            resume_guard::ResumeGuard::none()
        }
    };
    PauseWindow { guard, _signals: crate::interrupts::hold() }
}

/// `work` on every pooler at once, each on its own thread; the results in `poolers`' order.
fn on_each_pooler<T: Send>(poolers: &[String], work: impl Fn(&str) -> T + Sync) -> Vec<T> {
    std::thread::scope(|scope| {
        let work = &work;
        let running: Vec<_> = poolers.iter().map(|pooler| scope.spawn(move || work(pooler))).collect();
        running.into_iter().map(|thread| thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    })
}

/// PAUSEs every pooler, all at once (a client of one waits for no other's PAUSE); on a
/// failure RESUMEs every one of them. A PAUSE that does not complete in time (a transaction
/// holds its server connection) is resumed and tried again, a few times, before the
/// switchover is called off.
fn pause_all(target: &dyn Target, poolers: &[String], reporter: &dyn Reporter) -> Result<(), OpsError> {
    for pooler in poolers {
        reporter.note(&format!("PAUSE on PgBouncer {pooler}: clients wait, server connections are released"));
    }
    let mut attempt = 1;
    loop {
        let outcomes = on_each_pooler(poolers, |pooler| target.pooler_admin(pooler, "PAUSE", PAUSE_WAIT));
        let Some((pooler, error)) = poolers.iter().zip(outcomes).find_map(|(pooler, outcome)| outcome.err().map(|e| (pooler, e))) else {
            return Ok(());
        };
        // What still holds a server connection, for the report.
        let busy = target.pooler_admin(pooler, "SHOW SERVERS", ADMIN_TIMEOUT).unwrap_or_default();
        let busy: Vec<String> = busy
            .lines()
            .map(|row| row.split('|').collect::<Vec<_>>())
            .filter(|c| c.len() > 3)
            .map(|c| format!("{}/{} {}", c[2], c[1], c[3]))
            .collect();
        // A PAUSE that did not complete has still put its pooler in pause mode.
        let not_resumed = resume_all(target, poolers, reporter);
        if attempt == PAUSE_ATTEMPTS || !not_resumed.is_empty() {
            return with_resume_failures(
                Err(OpsError::Failed(format!(
                    "PAUSE on PgBouncer {pooler} failed {attempt} times ({error}; server connections still in use: {}); every PgBouncer was resumed and no switchover was asked for",
                    if busy.is_empty() { "none".into() } else { busy.join(", ") }
                ))),
                &not_resumed,
            );
        }
        reporter.note(&format!("PAUSE on {pooler} did not complete ({error}); every PgBouncer resumed, trying again"));
        attempt += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// RESUMEs every pooler, all at once, trying each even when one fails; what failed comes back.
fn resume_all(target: &dyn Target, poolers: &[String], reporter: &dyn Reporter) -> Vec<String> {
    for pooler in poolers {
        reporter.note(&format!("RESUME on PgBouncer {pooler}"));
    }
    on_each_pooler(poolers, |pooler| resume(target, pooler).err()).into_iter().flatten().collect()
}

/// RESUME on one pooler, retried a few times; Err names it and says why.
fn resume(target: &dyn Target, pooler: &str) -> Result<(), String> {
    // A RESUME of a pooler that is not paused is refused ("pooler is not paused"): fine.
    let mut result = target.pooler_admin(pooler, "RESUME", ADMIN_TIMEOUT);
    for _ in 0..3 {
        match &result {
            Err(e) if !e.to_string().contains("not paused") => {
                std::thread::sleep(Duration::from_millis(300));
                result = target.pooler_admin(pooler, "RESUME", ADMIN_TIMEOUT);
            }
            _ => break,
        }
    }
    match result {
        Err(e) if !e.to_string().contains("not paused") => Err(format!("{pooler}: {e}")),
        _ => Ok(()),
    }
}

/// Once the candidate takes writes: each PgBouncer, on its own thread, is RESUMEd as soon as
/// it points at the candidate, so its clients wait for no other PgBouncer's reload; past
/// `deadline` it is RESUMEd anyway. Gives which PgBouncers did not point at it in time (and
/// why) and which could not be RESUMEd.
fn resume_as_routed(
    target: &dyn Target,
    poolers: &[String],
    candidate: &MemberView,
    deadline: Instant,
    reporter: &dyn Reporter,
) -> (Vec<String>, Vec<String>) {
    let only_candidate = ClusterView { members: vec![candidate.clone()], ..ClusterView::default() };
    let (routed, routed_news) = std::sync::mpsc::channel::<String>();
    let outcomes = std::thread::scope(|scope| {
        let running: Vec<_> = poolers
            .iter()
            .map(|pooler| {
                let (routed, only_candidate) = (routed.clone(), &only_candidate);
                scope.spawn(move || {
                    let late = loop {
                        let status = match pooler_routes_to(target, pooler, only_candidate) {
                            Ok(Some(member)) if member == candidate.name => break None,
                            Ok(_) => "does not point at it yet".to_owned(),
                            Err(e) => e.to_string(),
                        };
                        if Instant::now() >= deadline {
                            break Some(format!("{pooler} {status}"));
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    };
                    let _ = routed.send(pooler.clone());
                    (late, resume(target, pooler).err())
                })
            })
            .collect();
        drop(routed);
        // The reporter stays on this thread: it says each RESUME as it happens.
        let started = Instant::now();
        loop {
            match routed_news.recv_timeout(Duration::from_millis(250)) {
                Ok(pooler) => reporter.note(&format!("RESUME on PgBouncer {pooler}")),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => reporter.progress(&format!(
                    "{} runs as primary; waiting for every PgBouncer to point at it ({:.0} s)",
                    candidate.name,
                    started.elapsed().as_secs_f64()
                )),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        running.into_iter().map(|thread| thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect::<Vec<_>>()
    });
    let (late, not_resumed): (Vec<_>, Vec<_>) = outcomes.into_iter().unzip();
    (late.into_iter().flatten().collect(), not_resumed.into_iter().flatten().collect())
}

/// `result`, unless a RESUME failed (`not_resumed`): then an error naming those PgBouncers,
/// whose clients stay paused, after whatever `result` said.
fn with_resume_failures(result: Result<(), OpsError>, not_resumed: &[String]) -> Result<(), OpsError> {
    if not_resumed.is_empty() {
        return result;
    }
    let message =
        format!("RESUME failed on PgBouncer {}: clients stay paused there — run RESUME on its admin console", not_resumed.join(", "));
    Err(OpsError::Failed(match result {
        Err(e) => format!("{e}; {message}"),
        Ok(()) => message,
    }))
}

/// Waits until Patroni has named a synchronous standby (a loop after a switchover), when
/// synchronous mode asks for one.
fn wait_sync_standby(target: &dyn Target, deadline: Instant, reporter: &dyn Reporter) -> Result<ClusterView, OpsError> {
    wait_for("a synchronous standby", deadline, Duration::from_millis(200), reporter, || {
        let view = observe(target).map_err(|e| e.to_string())?;
        let ready = !view.synchronous_mode || view.members.len() < 2 || view.replicas().any(MemberView::is_sync_standby);
        Ok(ready.then_some(view))
    })
}

/// A planned switchover: every PgBouncer PAUSEd, Patroni's `POST /switchover` to the
/// candidate, a wait until it runs as primary, then a RESUME of each PgBouncer once it points at it.
/// Clients wait instead of failing; past `pause_timeout` PgBouncer is RESUMEd anyway.
pub fn switchover(
    target: &dyn Target,
    to: Option<&str>,
    options: &SwitchoverOptions,
    reporter: &dyn Reporter,
) -> Result<Switched, OpsError> {
    let view = wait_sync_standby(target, Instant::now() + Duration::from_secs(30), reporter).or_else(|_| observe(target))?;
    let leader = view.leader().ok_or_else(|| OpsError::Refused("the cluster has no leader: use `failover --to MEMBER`".into()))?.clone();
    let candidate = choose_candidate(&view, to, options.max_lag)?.clone();
    let poolers = if options.pause { target.poolers()? } else { Vec::new() };
    let started = Instant::now();
    // Held until every PgBouncer is RESUMEd, when the window is closed.
    let window = pause_clients(target, &poolers, reporter)?;
    // Patroni answers POST /switchover only after polling the DCS once a second (api.py,
    // poll_failover_result): up to a second after the new primary runs, with every client
    // paused. So the answer is awaited beside the wait for the new primary, and only a
    // refusal ends that wait; each PgBouncer is RESUMEd as soon as it routes to it.
    let (result, took, not_resumed) = std::thread::scope(|scope| {
        reporter.note(&format!("switchover from {} to {}", leader.name, candidate.name));
        let body = serde_json::json!({ "leader": leader.name, "candidate": candidate.name });
        let (answered, answer) = std::sync::mpsc::channel();
        let leader_rest = leader.rest.clone();
        scope.spawn(move || {
            let _ = answered.send(target.rest(&leader_rest, "POST", "/switchover", Some(&body), options.pause_timeout));
        });
        let mut accepted = false;
        let deadline = started + options.pause_timeout;
        let promoted = wait_for(&format!("{} to run as primary", candidate.name), deadline, Duration::from_millis(50), reporter, || {
            match answer.try_recv() {
                Ok(Ok((200, _))) => accepted = true,
                Ok(Ok((code, text))) => {
                    return Ok(Some(Err(OpsError::Failed(format!("Patroni refused the switchover ({code}): {}", text.trim())))))
                }
                Ok(Err(e)) => return Ok(Some(Err(OpsError::Failed(format!("POST /switchover to {}: {e}", leader.name))))),
                Err(_) => {}
            }
            // Not `/primary`: it passes while the candidate still promotes, and clients
            // resumed then meet "cannot execute INSERT in a read-only transaction".
            Ok(view::takes_writes(target, &candidate.rest, Duration::from_millis(500)).then_some(Ok(())))
        })
        .and_then(|outcome| outcome)
        .map_err(|e| match e {
            OpsError::TimedOut { what, after } if !accepted => {
                OpsError::TimedOut { what: format!("{what}; Patroni had not answered POST /switchover"), after }
            }
            other => other,
        });
        // Before the scope ends: it waits for Patroni's answer.
        match promoted {
            Ok(()) => {
                let (late, not_resumed) = resume_as_routed(target, &poolers, &candidate, deadline, reporter);
                let result = match late.is_empty() {
                    true => Ok(()),
                    false => Err(OpsError::TimedOut {
                        what: format!("every PgBouncer to point at {} (PgBouncer {}); resumed anyway", candidate.name, late.join(", ")),
                        after: started.elapsed(),
                    }),
                };
                (result, started.elapsed(), not_resumed)
            }
            Err(e) => (Err(e), started.elapsed(), resume_all(target, &poolers, reporter)),
        }
    });
    window.close();
    with_resume_failures(result, &not_resumed)?;
    Ok(Switched { from: leader.name, to: candidate.name, took, paused: !poolers.is_empty() })
}

/// `POST /failover` to `to`: for a cluster without a healthy leader. The caller has the
/// operator's confirmation.
pub fn failover(target: &dyn Target, to: &str, timeout: Duration, reporter: &dyn Reporter) -> Result<Switched, OpsError> {
    let view = observe(target)?;
    let Some(candidate) = view.member(to) else {
        let names: Vec<&str> = view.members.iter().map(|m| m.name.as_str()).collect();
        return Err(OpsError::Refused(format!("refusing to fail over: {to} is not a member (members: {})", names.join(", "))));
    };
    if candidate.is_leader() {
        return Err(OpsError::Refused(format!("refusing to fail over: {to} is already the leader")));
    }
    if !candidate.reachable {
        return Err(OpsError::Refused(format!("refusing to fail over: {to}'s REST API does not answer")));
    }
    let from = view.leader().map(|l| l.name.clone()).unwrap_or_else(|| "(no leader)".into());
    let started = Instant::now();
    reporter.note(&format!("failover to {to}"));
    let body = serde_json::json!({ "candidate": to });
    let (code, text) = target
        .rest(&candidate.rest, "POST", "/failover", Some(&body), timeout)
        .map_err(|e| OpsError::Failed(format!("POST /failover: {e}")))?;
    if code != 200 {
        return Err(OpsError::Failed(format!("Patroni refused the failover ({code}): {}", text.trim())));
    }
    let rest = candidate.rest.clone();
    wait_for(&format!("{to} to run as primary"), started + timeout, Duration::from_millis(100), reporter, || {
        Ok(view::takes_writes(target, &rest, Duration::from_millis(500)).then_some(()))
    })?;
    Ok(Switched { from, to: to.to_owned(), took: started.elapsed(), paused: false })
}

/// Waits until `member` runs and, as a replica, streams with lag under `max_lag` and (in
/// synchronous mode) a synchronous standby exists again.
pub fn wait_member_healthy(
    target: &dyn Target,
    member: &str,
    max_lag: u64,
    deadline: Instant,
    reporter: &dyn Reporter,
) -> Result<ClusterView, OpsError> {
    wait_for(&format!("{member} to run and stream"), deadline, Duration::from_millis(250), reporter, || {
        let view = observe(target).map_err(|e| e.to_string())?;
        let Some(m) = view.member(member) else { return Err(format!("{member} is not in Patroni's member list")) };
        if !m.reachable || m.state != "running" {
            return Err(format!("{member} is {}", if m.reachable { m.state.as_str() } else { "not answering" }));
        }
        if !m.is_leader() {
            if !m.is_streaming() {
                return Err(format!("{member} does not stream yet"));
            }
            if m.lag.is_none_or(|l| l > max_lag) {
                return Err(format!("{member} lags {}", m.lag.map_or("unknown".into(), |l| format!("{l} bytes"))));
            }
        }
        if view.synchronous_mode && view.members.len() > 1 && !view.replicas().any(MemberView::is_sync_standby) {
            return Err("no synchronous standby yet".into());
        }
        Ok(Some(view))
    })
}

/// Restarts one member's Postgres through Patroni (`POST /restart`) and waits until it is
/// healthy again; fails as soon as the member itself goes down. A leader is restarted in
/// place (clients see errors), so the rolling restart moves the leader away first.
pub fn restart_member(
    target: &dyn Target,
    member: &MemberView,
    max_lag: u64,
    deadline: Instant,
    reporter: &dyn Reporter,
) -> Result<(), OpsError> {
    upgrade::restart_member_watched(target, member, max_lag, deadline, reporter)
}

#[derive(Debug, Clone, Serialize)]
pub struct Restarted {
    pub members: Vec<String>,
    pub switchover: Option<Switched>,
}

/// Rolling restart: `member` alone, or every member (with `pending`, those Patroni marks
/// `pending_restart`), replicas one at a time, then a switchover and the former leader.
pub fn restart(
    target: &dyn Target,
    member: Option<&str>,
    pending: bool,
    options: &SwitchoverOptions,
    timeout: Duration,
    reporter: &dyn Reporter,
) -> Result<Restarted, OpsError> {
    let deadline = Instant::now() + timeout;
    let view = observe(target)?;
    let mut chosen: Vec<MemberView> =
        view.members.iter().filter(|m| member.is_none_or(|n| n == m.name)).filter(|m| !pending || m.pending_restart).cloned().collect();
    if let Some(name) = member {
        if view.member(name).is_none() {
            let names: Vec<&str> = view.members.iter().map(|m| m.name.as_str()).collect();
            return Err(OpsError::Refused(format!("{name} is not a member (members: {})", names.join(", "))));
        }
    }
    chosen.sort_by_key(|m| m.is_leader());
    let mut done = Restarted { members: Vec::new(), switchover: None };
    for m in chosen {
        let current = observe(target)?;
        let m = current.member(&m.name).cloned().unwrap_or(m);
        if m.is_leader() && current.members.len() > 1 {
            reporter.note(&format!("{} is the leader: switching over first", m.name));
            done.switchover = Some(switchover(target, None, options, reporter)?);
            let after = wait_member_healthy(target, &m.name, options.max_lag, deadline, reporter)?;
            let demoted = after.member(&m.name).cloned().unwrap_or_else(|| m.clone());
            // Demotion stopped its Postgres and started it again as a replica: that was the
            // restart, unless Patroni still shows one pending.
            if demoted.pending_restart {
                restart_member(target, &demoted, options.max_lag, deadline, reporter)?;
            }
        } else {
            restart_member(target, &m, options.max_lag, deadline, reporter)?;
        }
        done.members.push(m.name.clone());
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::running::RunningSetting;
    use super::*;

    /// A target whose every member's Postgres shows `settings`, with two PgBouncers: `a`
    /// routes to member-1 at once, `b` only once `a` has been RESUMEd. No REST API.
    #[derive(Default)]
    struct Shows {
        settings: Vec<RunningSetting>,
        /// The admin console commands, as "<command> <pooler>".
        said: std::sync::Mutex<Vec<String>>,
    }

    impl Target for Shows {
        fn seeds(&self) -> Result<Vec<String>, OpsError> {
            Ok(Vec::new())
        }
        fn rest(&self, _: &str, _: &str, _: &str, _: Option<&Value>, _: Duration) -> Result<(u16, String), String> {
            Err("no REST API here".into())
        }
        fn poolers(&self) -> Result<Vec<String>, OpsError> {
            Ok(vec!["a".into(), "b".into()])
        }
        fn pooler_admin(&self, pooler: &str, command: &str, _: Duration) -> Result<String, OpsError> {
            let mut said = self.said.lock().unwrap();
            said.push(format!("{command} {pooler}"));
            let routed = pooler == "a" || said.iter().any(|s| s == "RESUME a");
            Ok(match command {
                "SHOW DATABASES" if routed => "app|member-1|5432|app".into(),
                "SHOW DATABASES" => "app|member-0|5432|app".into(),
                _ => String::new(),
            })
        }
        fn oldest_transaction(&self, _: &MemberView) -> Result<Option<Duration>, String> {
            Ok(None)
        }
        fn postgres_settings(&self, _: &MemberView, names: &[&str]) -> Option<Vec<RunningSetting>> {
            Some(self.settings.iter().filter(|s| s.pending_restart || names.contains(&s.name.as_str())).cloned().collect())
        }
        fn desired_parameters(&self) -> BTreeMap<String, String> {
            [("max_connections", "250"), ("work_mem", "8MB")].into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
        }
        fn members_to_update(&self) -> Result<Vec<String>, OpsError> {
            Ok(Vec::new())
        }
        fn update_member(&self, _: &str, _: Instant, _: &dyn Reporter) -> Result<(), OpsError> {
            Ok(())
        }
        fn describe(&self) -> String {
            "a target in a test".into()
        }
    }

    /// The pause timeout stays under PgBouncer's watchdog: the default shrinks to fit it, a
    /// longer one asked for is refused with the bound, and without a watchdog nothing changes.
    #[test]
    fn the_pause_timeout_stays_under_the_pause_watchdog() {
        let s = Duration::from_secs;
        assert_eq!(pause_timeout(None, None).unwrap(), s(60));
        assert_eq!(pause_timeout(Some(s(300)), None).unwrap(), s(300));
        assert_eq!(pause_timeout(None, Some(s(90))).unwrap(), s(60));
        assert_eq!(pause_timeout(None, Some(s(30))).unwrap(), s(20));
        assert_eq!(pause_timeout(Some(s(20)), Some(s(30))).unwrap(), s(20));
        let refused = pause_timeout(Some(s(21)), Some(s(30))).unwrap_err();
        assert!(refused.is_refusal(), "{refused:?}");
        assert!(refused.to_string().contains("pass at most 20 s"), "{refused}");
    }

    #[test]
    fn each_pgbouncer_is_resumed_as_soon_as_it_routes_to_the_new_primary_not_when_the_last_one_does() {
        let target = Shows::default();
        let candidate = MemberView { name: "member-1".into(), host: "member-1".into(), ..one_member().members[0].clone() };
        let poolers = target.poolers().unwrap();
        // Were `a` held until `b` routes, `b` would never route: both late at the deadline.
        let (late, not_resumed) = resume_as_routed(&target, &poolers, &candidate, Instant::now() + Duration::from_secs(10), &Quiet);
        assert!(late.is_empty(), "{late:?}: {:?}", target.said.lock().unwrap());
        assert!(not_resumed.is_empty(), "{not_resumed:?}");
        let said = target.said.lock().unwrap();
        assert_eq!(said.iter().filter(|s| s.starts_with("RESUME")).count(), 2, "{said:?}");
    }

    #[test]
    fn a_pgbouncer_that_never_routes_to_the_new_primary_is_resumed_at_the_deadline_and_named() {
        let target = Shows::default();
        // member-2 is where no PgBouncer ever routes.
        let candidate = MemberView { name: "member-2".into(), host: "member-2".into(), ..one_member().members[0].clone() };
        let (late, not_resumed) =
            resume_as_routed(&target, &target.poolers().unwrap(), &candidate, Instant::now() + Duration::from_millis(300), &Quiet);
        assert_eq!(late, vec!["a does not point at it yet".to_owned(), "b does not point at it yet".to_owned()]);
        assert!(not_resumed.is_empty());
        let said = target.said.lock().unwrap();
        assert!(said.contains(&"RESUME a".to_owned()) && said.contains(&"RESUME b".to_owned()), "{said:?}");
    }

    fn one_member() -> ClusterView {
        let member = MemberView {
            name: "member-0".into(),
            role: "leader".into(),
            state: "running".into(),
            timeline: Some(1),
            lag: None,
            rest: "member-0:8008".into(),
            host: "member-0".into(),
            port: 5432,
            reachable: true,
            pending_restart: false,
            replication: None,
            sync_state: None,
        };
        ClusterView { members: vec![member], parameters: BTreeMap::new(), synchronous_mode: false }
    }

    fn setting(name: &str, value: &str, pending_restart: bool) -> RunningSetting {
        RunningSetting { name: name.into(), setting: value.into(), unit: String::new(), pending_restart }
    }

    #[test]
    fn a_postmaster_running_an_old_restart_setting_counts_as_pending_though_patroni_flags_nothing() {
        let pending = |settings| with_postgres_pending(&Shows { settings, ..Shows::default() }, one_member()).members[0].pending_restart;
        // Patroni adopted a Postgres still running max_connections 200 and has not reloaded it.
        assert!(pending(vec![setting("max_connections", "200", false)]));
        assert!(!pending(vec![setting("max_connections", "250", false)]));
        // A reload-only parameter never needs a restart, whatever it runs.
        assert!(!pending(vec![setting("max_connections", "250", false), setting("work_mem", "4096", false)]));
        // Postgres' own flag, on a setting the stack does not name.
        assert!(pending(vec![setting("max_connections", "250", false), setting("shared_buffers", "16384", true)]));
    }
}
