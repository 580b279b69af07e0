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
    if args.path.is_dir() {
        return Err(Failure::BadInput(format!(
            "error: {} is a directory\n  = help: name the file to write, as in -f {0}/pgnomad.hcl",
            args.path.display()
        )));
    }
    if args.path.exists() && !args.force {
        return Err(Failure::BadInput(format!("error: {} already exists\n  = help: pass --force to overwrite it", args.path.display())));
    }
    std::fs::write(&args.path, INIT_TEMPLATE).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound { "\n  = help: create its directory first" } else { "" };
        Failure::Internal(format!("error: cannot write {}: {e}{hint}", args.path.display()))
    })?;
    eprintln!("wrote {}; next: pgnomad validate -f {0}", args.path.display());
    Ok(())
}
