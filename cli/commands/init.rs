use std::path::PathBuf;

use super::Failure;

/// The commented default stack file `init` writes.
pub const INIT_TEMPLATE: &str = include_str!("../stack/init.hcl");

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the stack file.
    #[arg(short = 'f', long = "file", default_value = "pgnomad.hcl", value_name = "FILE")]
    path: PathBuf,
    /// Overwrite an existing file.
    #[arg(long)]
    force: bool,
}

pub fn run(args: Args) -> Result<(), Failure> {
    if args.path.exists() && !args.force {
        return Err(Failure::BadInput(format!("error: {} already exists\n  = help: pass --force to overwrite it", args.path.display())));
    }
    std::fs::write(&args.path, INIT_TEMPLATE)
        .map_err(|e| Failure::Internal(format!("error: cannot write {}: {e}", args.path.display())))?;
    eprintln!("wrote {}; next: pgnomad validate -f {0}", args.path.display());
    Ok(())
}
