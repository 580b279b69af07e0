use std::path::PathBuf;

use crate::deploy::{self, PlanScope};
use crate::settings::{ConnectionArgs, Environment, OperatorSecrets};

use super::{block_on, connect, exit, load_stack, Failure, StackFile};

#[derive(Debug, clap::Args)]
#[command(after_help = "Exit codes: 0 no changes, 1 changes, 255 error (as `nomad job plan`).")]
pub struct Args {
    #[command(flatten)]
    stack: StackFile,
    #[command(flatten)]
    connection: ConnectionArgs,
    /// A directory whose files replace the built-in pack templates of the same path.
    #[arg(long, value_name = "DIR")]
    packs: Option<PathBuf>,
    /// Also show the field and object diff of each changed job.
    #[arg(short, long)]
    verbose: bool,
    /// Print the plan as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// A file holding Patroni's Consul token (instead of PGNOMAD_PATRONI_CONSUL_TOKEN).
    #[arg(long, value_name = "FILE")]
    patroni_consul_token_file: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<(), Failure> {
    // Every failure of a plan is 255, bad input included, as Nomad's plan does.
    plan(args).map_err(|failure| match failure {
        Failure::BadInput(m) | Failure::Internal(m) | Failure::NotConverged(m) => Failure::Exit(exit::PLAN_ERROR, m),
        other => other,
    })
}

fn plan(args: Args) -> Result<(), Failure> {
    let checked = load_stack(&args.stack.path)?;
    let packs = super::render::load_packs(args.packs.as_deref())?;
    let env = Environment::from_process();
    let operator = OperatorSecrets::from_env(&env, args.patroni_consul_token_file.as_deref()).map_err(|e| Failure::BadInput(format!("error: {e}")))?;
    let cluster = connect(&args.connection, &env)?;
    let plan = block_on(deploy::plan(&cluster, &checked.stack, &packs, &operator, &PlanScope::default()))?.map_err(super::deploy_failure)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan).expect("plans serialize"));
    } else {
        print!("{}", crate::ui::plan_text(&plan, args.verbose));
    }
    if !plan.problems.is_empty() {
        Err(Failure::Exit(exit::PLAN_ERROR, String::new()))
    } else if plan.has_changes() {
        Err(Failure::Exit(exit::PLAN_CHANGES, String::new()))
    } else {
        Ok(())
    }
}
