use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::compile;
use crate::config::{Packs, BUILTIN};
use crate::render::{self, Format};

use super::{load_stack, Failure, StackFile};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    stack: StackFile,
    /// Jobspec HCL, API JSON, or both.
    #[arg(long, value_enum, default_value = "both")]
    format: FormatArg,
    /// The output directory (jobs/, volumes/, acl/, secrets.json).
    #[arg(long, default_value = "rendered", value_name = "DIR")]
    out: PathBuf,
    /// A directory whose files replace the built-in pack templates of the same path
    /// (e.g. DIR/pgbouncer/pgbouncer.ini).
    #[arg(long, value_name = "DIR")]
    packs: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    Hcl,
    Json,
    Both,
}

pub fn run(args: Args) -> Result<(), Failure> {
    let checked = load_stack(&args.stack.path)?;
    let packs = load_packs(args.packs.as_deref())?;
    let artifacts = compile::compile(&checked.stack, &packs).map_err(|e| Failure::BadInput(format!("error: {e}")))?;
    let format = match args.format {
        FormatArg::Hcl => Format::Hcl,
        FormatArg::Json => Format::Json,
        FormatArg::Both => Format::Both,
    };
    let files = render::files(&artifacts, format);
    if args.out.exists() && !args.out.is_dir() {
        return Err(Failure::BadInput(format!(
            "error: --out {} is a file, not a directory\n  = help: name a directory (it is created if missing), e.g. --out rendered",
            args.out.display()
        )));
    }
    for file in &files {
        let path = args.out.join(&file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Failure::Internal(format!("error: cannot create {}: {e}", parent.display())))?;
        }
        std::fs::write(&path, &file.text).map_err(|e| Failure::Internal(format!("error: cannot write {}: {e}", path.display())))?;
    }
    println!("rendered {} files into {}", files.len(), args.out.display());
    for compiled in &artifacts.jobs {
        println!("  job    {}", compiled.id());
    }
    for volume in &artifacts.volumes {
        println!("  volume {}", volume.id.as_deref().unwrap_or_default());
    }
    Ok(())
}

/// The built-in packs with the files found under `dir` laid over them.
pub fn load_packs(dir: Option<&Path>) -> Result<Packs, Failure> {
    let Some(dir) = dir else { return Ok(Packs::default()) };
    if !dir.is_dir() {
        return Err(Failure::BadInput(format!("error: --packs {}: not a directory", dir.display())));
    }
    let mut overrides = BTreeMap::new();
    for (path, _) in BUILTIN {
        let candidate = dir.join(path);
        if candidate.is_file() {
            let text = std::fs::read_to_string(&candidate)
                .map_err(|e| Failure::BadInput(format!("error: cannot read {}: {e}", candidate.display())))?;
            overrides.insert((*path).to_owned(), text);
        }
    }
    Packs::default().with_overrides(overrides).map_err(|e| Failure::BadInput(format!("error: {e}")))
}
