use crate::deploy::{self, PlanScope};

use super::{block_on, exit, DeployArgs, DeployInputs, Failure};

#[derive(Debug, clap::Args)]
#[command(after_help = "Exit codes: 0 no changes, 1 changes, 255 error (as `nomad job plan`).")]
pub struct Args {
    #[command(flatten)]
    inputs: DeployArgs,
    /// Also show the field and object diff of each changed job.
    #[arg(short, long)]
    verbose: bool,
    /// Print the plan as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<(), Failure> {
    // Every failure of a plan is 255, bad input included, as Nomad's plan does.
    plan(args).map_err(|failure| match failure {
        Failure::BadInput(m) | Failure::Internal(m) | Failure::NotConverged(m) => Failure::Exit(exit::PLAN_ERROR, m),
        other => other,
    })
}

fn plan(args: Args) -> Result<(), Failure> {
    let DeployInputs { checked, packs, operator, cluster, env } = args.inputs.load()?;
    let plan =
        block_on(deploy::plan(&cluster, &checked.stack, &packs, &operator, &PlanScope::default()))?.map_err(super::deploy_failure)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan).expect("plans serialize"));
    } else {
        let text = crate::ui::plan_text(&plan, args.verbose);
        let colour = std::io::IsTerminal::is_terminal(&std::io::stdout()) && !env.no_color();
        print!("{}", if colour { crate::ui::colored_plan(&text) } else { text });
    }
    if !plan.problems.is_empty() {
        Err(Failure::Exit(exit::PLAN_ERROR, String::new()))
    } else if plan.has_changes() {
        Err(Failure::Exit(exit::PLAN_CHANGES, String::new()))
    } else {
        Ok(())
    }
}
