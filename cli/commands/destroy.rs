use std::io::{BufRead, IsTerminal, Write};

use crate::deploy::{self, DestroyOptions};
use crate::settings::{ConnectionArgs, Environment};
use crate::ui::TerminalReporter;

use super::{block_on, connect, deploy_failure, load_stack, Failure, StackFile};

#[derive(Debug, clap::Args)]
#[command(after_help = "Only the stack's job IDs are considered, and only jobs whose pgnomad_cluster meta names this \
cluster are deregistered: a job that shares the prefix or was not made by pgnomad is never touched.

Exit codes: 0 done, 1 bad input or not confirmed, 2 internal or connection error.")]
pub struct Args {
    #[command(flatten)]
    stack: StackFile,
    #[command(flatten)]
    connection: ConnectionArgs,
    /// Do not ask: confirm everything asked for (needed without a terminal).
    #[arg(short, long)]
    yes: bool,
    /// Remove the jobs at once instead of leaving them stopped until garbage collection.
    #[arg(long)]
    purge: bool,
    /// Also delete the members' CSI volumes — and the databases on them (asked separately).
    #[arg(long)]
    delete_volumes: bool,
    /// Also delete the secret variables (asked separately).
    #[arg(long)]
    delete_secrets: bool,
}

/// Asks on the terminal; without one, only `--yes` confirms.
fn confirm(question: &str, yes: bool) -> Result<bool, Failure> {
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::BadInput(
            "error: refusing to destroy without confirmation: stdin is not a terminal\n  = help: pass --yes to confirm".into(),
        ));
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).map_err(|e| Failure::Internal(format!("error: reading the answer: {e}")))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

pub fn run(args: Args) -> Result<(), Failure> {
    let checked = load_stack(&args.stack.path)?;
    let env = Environment::from_process();
    let cluster = connect(&args.connection, &env)?;
    let name = checked.stack.cluster.name.value.clone();
    let targets = block_on(deploy::destroy_targets(&cluster, &checked.stack))?.map_err(deploy_failure)?;
    eprint!("{}", crate::ui::destroy_targets_text(&targets));
    if targets.jobs.is_empty() {
        eprintln!("no job of cluster \"{name}\" to deregister");
    } else if !confirm(&format!("Deregister {} job(s) of cluster \"{name}\"?", targets.jobs.len()), args.yes)? {
        return Err(Failure::BadInput("not confirmed; nothing was changed".into()));
    }
    let mut options = DestroyOptions { purge: args.purge, delete_volumes: false, delete_secrets: false };
    if args.delete_volumes && !targets.volumes.is_empty() {
        options.delete_volumes =
            confirm(&format!("Delete the CSI volumes {} and the data on them?", targets.volumes.join(", ")), args.yes)?;
    }
    if args.delete_secrets && !targets.secrets.is_empty() {
        let paths: Vec<&str> = targets.secrets.iter().map(|(p, _)| p.as_str()).collect();
        options.delete_secrets = confirm(&format!("Delete the secret variables {}?", paths.join(", ")), args.yes)?;
    }
    let reporter = TerminalReporter::new();
    let summary = block_on(deploy::destroy(&cluster, &targets, options, &reporter))?.map_err(deploy_failure)?;
    print!("{}", crate::ui::destroy_text(&summary));
    Ok(())
}
