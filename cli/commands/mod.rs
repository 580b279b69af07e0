//! The command line: clap types and one thin file per command. Commands read files and
//! print; the work is done by the pipeline (`stack` → `compile` → `render`) and `deploy`.

mod dev;
mod init;
pub use init::INIT_TEMPLATE;
mod render;
mod validate;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::stack::{self, Checked, Source};

/// Exit codes scripts can rely on.
pub mod exit {
    pub const OK: u8 = 0;
    /// The stack file (or another input) is wrong; the message says where.
    pub const BAD_INPUT: u8 = 1;
    /// A bug or an environment problem pgnomad could not handle.
    pub const INTERNAL: u8 = 2;
}

#[derive(Debug, Parser)]
#[command(name = "pgnomad", version, about = "Highly available PostgreSQL on Nomad + Consul, from one stack file")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a commented stack file with every default.
    Init(init::Args),
    /// Check a stack file and report every problem with its place.
    Validate(validate::Args),
    /// Compile the stack into Nomad jobs (HCL and JSON), volume specs, ACL policies and the
    /// list of secrets.
    Render(render::Args),
    /// Run the stack on this machine with real processes, from the same config files.
    Dev(dev::Args),
}

/// What went wrong, and so which exit code to use.
#[derive(Debug)]
pub enum Failure {
    /// Already explained to the user (diagnostics printed).
    BadInput(String),
    Internal(String),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Failure::BadInput(_) => exit::BAD_INPUT,
            Failure::Internal(_) => exit::INTERNAL,
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init(args) => init::run(args),
        Command::Validate(args) => validate::run(args),
        Command::Render(args) => render::run(args),
        Command::Dev(args) => dev::run(args),
    };
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(failure) => {
            let message = match &failure {
                Failure::BadInput(m) | Failure::Internal(m) => m,
            };
            if !message.is_empty() {
                eprintln!("{}", message.trim_end());
            }
            ExitCode::from(failure.code())
        }
    }
}

/// The `-f FILE` flag every stack command takes.
#[derive(Debug, clap::Args)]
pub struct StackFile {
    /// The stack file.
    #[arg(short = 'f', long = "file", default_value = "pgnomad.hcl", value_name = "FILE")]
    pub path: PathBuf,
}

/// Reads and checks a stack file, printing warnings; errors come back rendered.
pub fn load_stack(path: &Path) -> Result<Checked, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound { "\n  = help: create one with `pgnomad init`, or name it with -f FILE" } else { "" };
        Failure::BadInput(format!("error: cannot read stack file {}: {e}{hint}", path.display()))
    })?;
    let source = Source::new(path.display().to_string(), text);
    match stack::load(&source) {
        Ok(checked) => {
            for warning in &checked.warnings {
                eprint!("{}", source.render(warning));
            }
            Ok(checked)
        }
        Err(diagnostics) => {
            let errors = diagnostics.iter().filter(|d| d.is_error()).count();
            let mut text: String = diagnostics.iter().map(|d| source.render(d)).collect::<Vec<_>>().join("\n");
            text.push_str(&format!("\n{}: {errors} error{} in the stack file\n", source.name, if errors == 1 { "" } else { "s" }));
            Err(Failure::BadInput(text))
        }
    }
}
