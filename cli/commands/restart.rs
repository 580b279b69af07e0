//! `pgnomad restart [--member M] [--pending]`: Postgres restarted through Patroni, replicas
//! one at a time, the leader last after a switchover (PgBouncer paused).

use std::time::Duration;

use crate::ops::{self, SwitchoverOptions, Target};
use crate::ui::ops::OpsReporter;

use super::run::parse_duration;
use super::upgrade::ops_failure;
use super::{DeployArgs, DeployInputs, Failure};

#[derive(Debug, clap::Args)]
#[command(after_help = "Exit codes: 0 done, 1 refused (no such member), 2 internal or connection error, 3 a member did \
not come back in time.")]
pub struct Args {
    #[command(flatten)]
    inputs: DeployArgs,
    #[command(flatten)]
    restart: RestartFlags,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RestartFlags {
    /// Only this member (a leader is switched away from first).
    #[arg(long, value_name = "MEMBER")]
    pub member: Option<String>,
    /// Only members Patroni shows with `pending_restart`.
    #[arg(long)]
    pub pending: bool,
    /// The most a replica may lag, in bytes, after its restart.
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_lag: u64,
    /// How long the whole restart may take.
    #[arg(long, value_name = "D", default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
}

pub fn restart_on(target: &dyn Target, flags: &RestartFlags) -> Result<(), Failure> {
    let pause_timeout = ops::pause_timeout(None, target.max_pause()).map_err(|e| ops_failure(&e))?;
    let options = SwitchoverOptions { max_lag: flags.max_lag, pause_timeout, ..SwitchoverOptions::default() };
    let reporter = OpsReporter::new(false);
    let result = ops::restart(target, flags.member.as_deref(), flags.pending, &options, flags.timeout, &reporter);
    reporter.finish();
    let done = result.map_err(|e| ops_failure(&e))?;
    if done.members.is_empty() {
        println!("nothing to restart{}", if flags.pending { ": no member has a restart pending" } else { "" });
    } else {
        println!("restarted {}", done.members.join(", "));
    }
    if let Some(s) = &done.switchover {
        println!("switched over from {} to {}; clients held for {:.2} s", s.from, s.to, s.took.as_secs_f64());
    }
    Ok(())
}

pub fn run(args: Args) -> Result<(), Failure> {
    let DeployInputs { checked, packs, cluster, .. } = args.inputs.load()?;
    let target = ops::nomad::NomadTarget::connect(cluster, checked.stack, packs).map_err(|e| ops_failure(&e))?;
    restart_on(&target, &args.restart)
}
