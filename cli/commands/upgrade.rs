//! `pgnomad upgrade`: a changed stack onto the running cluster, member by member. The work is
//! `ops::upgrade`; this file parses flags, connects and prints. The helpers below are shared
//! by `switchover`, `failover`, `restart` and their `dev` twins.

use std::time::Duration;

use crate::ops::{self, Gate, OpsError, SwitchoverOptions, Target, UpgradeOptions};
use crate::ui::ops::{upgrade_report_text, OpsReporter};

use super::run::parse_duration;
use super::{DeployArgs, DeployInputs, Failure};

#[derive(Debug, clap::Args)]
#[command(after_help = "Replicas are updated one at a time, each followed until it streams again; then a switchover to the \
most caught-up synchronous standby, every PgBouncer paused around it; then the former primary. Parameters that only need a \
reload go through Patroni's dynamic configuration with no restart.

Exit codes: 0 done (or nothing to do), 1 refused (the health gate, a bad target: nothing was changed), 2 internal or \
connection error, 3 stopped part-way (the report says what was done; run it again to resume).")]
pub struct Args {
    #[command(flatten)]
    inputs: DeployArgs,
    #[command(flatten)]
    upgrade: UpgradeFlags,
}

/// The flags `upgrade` and `dev upgrade` share.
#[derive(Debug, Clone, clap::Args)]
pub struct UpgradeFlags {
    /// Print the step plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The most a replica may lag, in bytes, before and after each step.
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_lag: u64,
    /// The longest transaction the primary may have open when the upgrade starts, e.g. 5m.
    #[arg(long, value_name = "D", default_value = "5m", value_parser = parse_duration)]
    pub max_transaction_age: Duration,
    /// How long the whole upgrade may take, e.g. 15m.
    #[arg(long, value_name = "D", default_value = "15m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// The longest PgBouncer holds clients during the switchover; then it is resumed anyway.
    /// [default: 60s, or less to stay under the stack's `max_pause` − 10s]
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub pause_timeout: Option<Duration>,
    /// Print the report as JSON on stdout (no progress on stderr).
    #[arg(long)]
    pub json: bool,
}

impl UpgradeFlags {
    /// The options, the pause timeout kept under `max_pause` (see [`ops::pause_timeout`]).
    pub fn options(&self, max_pause: Option<Duration>) -> Result<UpgradeOptions, OpsError> {
        let pause_timeout = ops::pause_timeout(self.pause_timeout, max_pause)?;
        Ok(UpgradeOptions {
            gate: Gate { max_lag: self.max_lag, max_transaction_age: self.max_transaction_age },
            timeout: self.timeout,
            switchover: SwitchoverOptions { pause: true, max_lag: self.max_lag, pause_timeout },
            dry_run: self.dry_run,
        })
    }
}

/// The exit code an operation's error calls for, with its message.
pub fn ops_failure(error: &OpsError) -> Failure {
    let message = format!("error: {error}");
    if error.is_refusal() {
        Failure::BadInput(message)
    } else if error.is_not_converged() {
        Failure::NotConverged(message)
    } else {
        Failure::Internal(message)
    }
}

/// Runs the upgrade on `target` and prints its report.
pub fn upgrade_on(target: &dyn Target, flags: &UpgradeFlags) -> Result<(), Failure> {
    // Progress goes to stderr either way; with --json stdout carries only the report.
    let reporter = OpsReporter::new(false);
    let options = flags.options(target.max_pause()).map_err(|e| ops_failure(&e))?;
    let result = ops::upgrade(target, &options, &reporter);
    reporter.finish();
    let (report, error) = match result {
        Ok(report) => (report, None),
        Err((report, error)) => (*report, Some(error)),
    };
    if flags.json {
        println!("{}", serde_json::to_string_pretty(&report).expect("serializes"));
    } else if !report.steps.is_empty() || error.is_none() {
        print!("{}", upgrade_report_text(&report));
    }
    match error {
        None => Ok(()),
        // The report on stdout already lists the steps; the error says why it stopped.
        Some(error) => Err(ops_failure(&error)),
    }
}

pub fn run(args: Args) -> Result<(), Failure> {
    let DeployInputs { checked, packs, cluster, .. } = args.inputs.load()?;
    let target = ops::nomad::NomadTarget::connect(cluster, checked.stack, packs).map_err(|e| ops_failure(&e))?;
    upgrade_on(&target, &args.upgrade)
}
