use crate::deploy;
use crate::settings::{ConnectionArgs, Environment};
use crate::transport::HttpTransport;

use super::{block_on, connect, deploy_failure, load_stack, Failure, StackFile};

#[derive(Debug, clap::Args)]
#[command(after_help = "Consul and Patroni are optional: what they would tell is shown as \"unknown (why)\".

Exit codes: 0 shown, 1 bad input, 2 Nomad could not be read.")]
pub struct Args {
    #[command(flatten)]
    stack: StackFile,
    #[command(flatten)]
    connection: ConnectionArgs,
    /// Print the status as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<(), Failure> {
    let checked = load_stack(&args.stack.path)?;
    let env = Environment::from_process();
    let cluster = connect(&args.connection, &env)?;
    let status = block_on(deploy::status(&cluster, &checked.stack, HttpTransport::patroni))?.map_err(deploy_failure)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status).expect("status serializes"));
    } else {
        print!("{}", crate::ui::status_text(&status));
    }
    Ok(())
}
