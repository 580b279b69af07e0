//! `pgnomad switchover [--to MEMBER]`: a planned switchover with every PgBouncer paused.

use std::time::Duration;

use crate::ops::{self, SwitchoverOptions, Target};
use crate::ui::ops::OpsReporter;

use super::run::parse_duration;
use super::upgrade::ops_failure;
use super::{DeployArgs, DeployInputs, Failure};

#[derive(Debug, clap::Args)]
#[command(after_help = "Exit codes: 0 done, 1 refused (a wrong or lagging target, no leader: nothing was changed), \
2 internal or connection error, 3 the switchover did not complete (PgBouncer was resumed).")]
pub struct Args {
    #[command(flatten)]
    inputs: DeployArgs,
    #[command(flatten)]
    switchover: SwitchoverFlags,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SwitchoverFlags {
    /// The member to promote [default: the most caught-up synchronous standby].
    #[arg(long, visible_alias = "candidate", value_name = "MEMBER")]
    pub to: Option<String>,
    /// Do not PAUSE PgBouncer (clients may see errors).
    #[arg(long)]
    pub no_pause: bool,
    /// The most the new primary may lag, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_lag: u64,
    /// The longest PgBouncer holds clients; then it is resumed anyway.
    /// [default: 60s, or less to stay under the stack's `max_pause` − 10s]
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub pause_timeout: Option<Duration>,
    /// Print the outcome as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn switchover_on(target: &dyn Target, flags: &SwitchoverFlags) -> Result<(), Failure> {
    let pause_timeout = ops::pause_timeout(flags.pause_timeout, target.max_pause()).map_err(|e| ops_failure(&e))?;
    let options = SwitchoverOptions { pause: !flags.no_pause, max_lag: flags.max_lag, pause_timeout };
    let reporter = OpsReporter::new(false);
    let result = ops::switchover(target, flags.to.as_deref(), &options, &reporter);
    reporter.finish();
    let done = result.map_err(|e| ops_failure(&e))?;
    if flags.json {
        println!("{}", serde_json::to_string_pretty(&done).expect("serializes"));
    } else {
        let held = if done.paused { "clients held for" } else { "took" };
        println!("switched over from {} to {}; {held} {:.2} s", done.from, done.to, done.took.as_secs_f64());
    }
    Ok(())
}

pub fn run(args: Args) -> Result<(), Failure> {
    let DeployInputs { checked, packs, cluster, .. } = args.inputs.load()?;
    let target = ops::nomad::NomadTarget::connect(cluster, checked.stack, packs).map_err(|e| ops_failure(&e))?;
    switchover_on(&target, &args.switchover)
}
