//! `pgnomad failover --to MEMBER`: promote a member when there is no healthy primary. It can
//! lose acknowledged commits, so it asks first (or takes `--yes`); without either it does
//! nothing.

use std::io::IsTerminal;
use std::time::Duration;

use crate::ops::{self, Target};
use crate::ui::ops::OpsReporter;

use super::run::parse_duration;
use super::upgrade::ops_failure;
use super::{DeployArgs, DeployInputs, Failure};

#[derive(Debug, clap::Args)]
#[command(after_help = "Exit codes: 0 done, 1 not confirmed or refused (nothing was changed), 2 internal or connection \
error, 3 the member did not become primary in time.")]
pub struct Args {
    #[command(flatten)]
    inputs: DeployArgs,
    #[command(flatten)]
    failover: FailoverFlags,
}

#[derive(Debug, Clone, clap::Args)]
pub struct FailoverFlags {
    /// The member to promote.
    #[arg(long, value_name = "MEMBER")]
    pub to: String,
    /// Do not ask.
    #[arg(long)]
    pub yes: bool,
    /// How long to wait for it to run as primary.
    #[arg(long, value_name = "D", default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

fn confirmed(question: &str) -> bool {
    if !std::io::stdin().is_terminal() {
        return false;
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).is_ok() && matches!(answer.trim(), "y" | "Y" | "yes")
}

pub fn failover_on(target: &dyn Target, flags: &FailoverFlags) -> Result<(), Failure> {
    let question = format!(
        "fail over to {} on {}? Commits the old primary acknowledged but {} had not received are lost",
        flags.to,
        target.describe(),
        flags.to
    );
    if !flags.yes && !confirmed(&question) {
        return Err(Failure::BadInput("error: not confirmed; nothing was changed — pass --yes to fail over without asking".into()));
    }
    let reporter = OpsReporter::new(false);
    let result = ops::failover(target, &flags.to, flags.timeout, &reporter);
    reporter.finish();
    let done = result.map_err(|e| ops_failure(&e))?;
    println!("failed over from {} to {} in {:.2} s", done.from, done.to, done.took.as_secs_f64());
    Ok(())
}

pub fn run(args: Args) -> Result<(), Failure> {
    let DeployInputs { checked, packs, cluster, .. } = args.inputs.load()?;
    let target = ops::nomad::NomadTarget::connect(cluster, checked.stack, packs).map_err(|e| ops_failure(&e))?;
    failover_on(&target, &args.failover)
}
