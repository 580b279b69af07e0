use std::time::Duration;

use crate::deploy::{self, PlanScope, Quiet, Reporter, RunOptions};
use crate::ui::TerminalReporter;

use super::{block_on, deploy_failure, DeployArgs, DeployInputs, Failure};

#[derive(Debug, clap::Args)]
#[command(after_help = "Secrets are read from the environment, never from flags: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
for an S3 backup repository, PGNOMAD_PATRONI_CONSUL_TOKEN for Patroni on a Consul with ACLs.

Exit codes: 0 done, 1 bad input or refused (nothing was overwritten), 2 internal or connection error, \
3 the cluster did not converge (failed deployment, timeout).")]
pub struct Args {
    #[command(flatten)]
    inputs: DeployArgs,
    /// Register and return without following deployments.
    #[arg(long)]
    detach: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
    /// Only this job of the stack (secrets and volumes are still brought up to date).
    #[arg(long, value_name = "JOB_ID")]
    job: Option<String>,
    /// Register `--job` only if its JobModifyIndex is still N (from `pgnomad plan`); 0 means
    /// it must not exist yet.
    #[arg(long, value_name = "N", requires = "job")]
    check_index: Option<u64>,
    /// How long to wait for each job to converge, e.g. 900s, 15m.
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    timeout: Duration,
}

pub(super) fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration such as 90s or 15m"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{text:?}: the unit must be ms, s, m or h")),
    }
}

/// patroni.yml bootstraps only the parameters Postgres reads at start (a change of any
/// other would change every member's template, which Nomad answers by replacing every
/// member group); the rest go through Patroni's dynamic configuration, on a fresh cluster as
/// on a running one: a reload, never a restart. Where Patroni cannot be reached from here,
/// `run` still succeeded and says what is left to `upgrade`.
pub(super) fn apply_parameters<N: crate::transport::Transport, C: crate::transport::Transport>(
    cluster: crate::deploy::Cluster<N, C>,
    stack: crate::stack::Stack,
    packs: crate::config::Packs,
    json: bool,
) {
    let list = |changes: &[crate::ops::Change]| changes.iter().map(|c| format!("{}={}", c.parameter, c.to)).collect::<Vec<_>>().join(" ");
    let applied = crate::ops::nomad::NomadTarget::connect(cluster, stack, packs)
        .and_then(|target| crate::ops::apply_reload_parameters(&target, Duration::from_secs(60), &crate::ops::Quiet));
    match applied {
        Ok((done, left)) => {
            if !done.is_empty() && !json {
                eprintln!("· through Patroni's dynamic configuration (a reload): {}", list(&done));
            }
            if !left.is_empty() {
                eprintln!("· {} need a restart of every member, which `run` does not do: run `pgnomad upgrade`", list(&left));
            }
        }
        Err(error) => eprintln!(
            "warning: the stack's parameters were not brought to Patroni's dynamic configuration ({error}); `pgnomad upgrade` does it"
        ),
    }
}

pub fn run(args: Args) -> Result<(), Failure> {
    let DeployInputs { checked, packs, operator, cluster, .. } = args.inputs.load()?;
    let options = RunOptions {
        detach: args.detach,
        scope: PlanScope { job: args.job.clone(), check_index: args.check_index, ..PlanScope::default() },
        timeout: args.timeout,
        operator,
    };
    let terminal = TerminalReporter::new();
    let reporter: &dyn Reporter = if args.json { &Quiet } else { &terminal };
    let result = block_on(deploy::run(&cluster, &checked.stack, &packs, &options, reporter))?;
    match result {
        Ok(summary) => {
            // patroni.yml bootstraps only the parameters Postgres reads at start; the others
            // go through Patroni's dynamic configuration, here on a fresh cluster as on a
            // running one (a reload, never a restart).
            if args.job.is_none() && !args.detach {
                apply_parameters(cluster, checked.stack, packs, args.json);
            }
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({"ok": true, "summary": summary})).expect("summaries serialize")
                );
            } else {
                print!("{}", crate::ui::run_text(&summary));
            }
            Ok(())
        }
        Err(error) => {
            let failure = deploy_failure(error);
            if args.json {
                let (code, message) = match &failure {
                    Failure::BadInput(m) | Failure::Internal(m) | Failure::NotConverged(m) | Failure::Exit(_, m) => {
                        (failure.code(), m.clone())
                    }
                };
                println!("{}", serde_json::json!({"ok": false, "exit_code": code, "error": message}));
            }
            Err(failure)
        }
    }
}
