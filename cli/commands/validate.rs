use super::{load_stack, Failure, StackFile};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    stack: StackFile,
}

pub fn run(args: Args) -> Result<(), Failure> {
    let checked = load_stack(&args.stack.path)?;
    let stack = &checked.stack;
    println!(
        "{}: ok — cluster \"{}\", {} members, PostgreSQL {}",
        args.stack.path.display(),
        stack.cluster.name.value,
        stack.postgres.members.value,
        stack.postgres.version.value
    );
    Ok(())
}
