//! The command line: clap types and one thin file per command. Commands read files and
//! print; the work is done by the pipeline (`stack` → `compile` → `render`) and `deploy`.

mod backup;
mod destroy;
mod dev;
mod failover;
mod init;
pub use init::INIT_TEMPLATE;
mod plan;
mod render;
mod restart;
mod run;
mod status;
mod switchover;
mod upgrade;
mod validate;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::transport::HttpTransport;

use crate::stack::{self, Checked, Source};

/// Exit codes scripts can rely on.
pub mod exit {
    pub const OK: u8 = 0;
    /// The stack file (or another input) is wrong; the message says where.
    pub const BAD_INPUT: u8 = 1;
    /// A bug or an environment problem pgnomad could not handle (Nomad unreachable, …).
    pub const INTERNAL: u8 = 2;
    /// The cluster did not converge: a failed deployment, or a timeout.
    pub const NOT_CONVERGED: u8 = 3;
    /// `plan` only, as `nomad job plan`: 0 no changes, 1 changes, 255 error.
    pub const PLAN_CHANGES: u8 = 1;
    pub const PLAN_ERROR: u8 = 255;
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
    /// Show what `run` would change: secrets, volumes and each job's diff (Nomad's plan).
    ///
    /// Exit codes: 0 no changes, 1 changes, 255 error (as `nomad job plan`).
    Plan(plan::Args),
    /// Put the stack on the cluster: secrets, CSI volumes, postgres (until a primary is
    /// elected), pgbouncer, pgadmin, backup jobs.
    ///
    /// Exit codes: 0 done, 1 bad input or refused (nothing overwritten), 2 internal or
    /// connection error, 3 the cluster did not converge (failed deployment, timeout).
    Run(run::Args),
    /// Jobs, deployments, members (role, state, timeline, lag), PgBouncer, last backups.
    ///
    /// Exit codes: 0 shown, 1 bad input, 2 Nomad could not be read.
    Status(status::Args),
    /// Deregister the cluster's jobs (only those pgnomad created for this cluster).
    ///
    /// Exit codes: 0 done, 1 bad input or not confirmed, 2 internal or connection error.
    Destroy(destroy::Args),
    /// Apply a changed stack to the running cluster member by member: replicas first, a
    /// switchover with PgBouncer paused, the former primary last; reload-only parameters
    /// without a restart.
    Upgrade(upgrade::Args),
    /// Planned switchover: every PgBouncer paused, Patroni's switchover, RESUME once they
    /// route to the new primary.
    Switchover(switchover::Args),
    /// Promote a member when there is no healthy primary (asks first, or --yes).
    Failover(failover::Args),
    /// Restart Postgres through Patroni: replicas one at a time, the leader last after a
    /// switchover.
    Restart(restart::Args),
    /// Take one backup now: forces the periodic job `<cluster>-backup-<type>`, follows its run
    /// and says which member it read from.
    Backup(backup::BackupArgs),
    /// The repository's backups and the recoverable window, from pgBackRest's JSON `info`
    /// (a dispatch of `<cluster>-backup-ctl`).
    Backups(backup::BackupsArgs),
    /// Point-in-time restore into a new cluster NAME: archives the WAL up to now, checks the
    /// target against the window, writes NAME.hcl (this stack renamed, with a `restore` block)
    /// and brings the clone up.
    Restore(backup::RestoreArgs),
    /// Run the stack on this machine with real processes, from the same config files.
    Dev(dev::Args),
    /// Started by pgnomad itself while PgBouncer's clients are paused: RESUMEs them should
    /// pgnomad die before it does (see `ops::resume_guard`).
    #[command(name = crate::ops::resume_guard::SUBCOMMAND, hide = true)]
    ResumeGuard,
}

/// What went wrong, and so which exit code to use.
#[derive(Debug)]
pub enum Failure {
    /// Already explained to the user (diagnostics printed).
    BadInput(String),
    Internal(String),
    NotConverged(String),
    /// A command-specific code (plan's 1 and 255).
    Exit(u8, String),
}

impl Failure {
    /// The same failure, its message followed by a `= note:` line.
    pub fn with_note(self, note: &str) -> Failure {
        let add = |message: String| format!("{message}\n  = note: {note}");
        match self {
            Failure::BadInput(m) => Failure::BadInput(add(m)),
            Failure::Internal(m) => Failure::Internal(add(m)),
            Failure::NotConverged(m) => Failure::NotConverged(add(m)),
            Failure::Exit(code, m) => Failure::Exit(code, add(m)),
        }
    }

    fn code(&self) -> u8 {
        match self {
            Failure::BadInput(_) => exit::BAD_INPUT,
            Failure::Internal(_) => exit::INTERNAL,
            Failure::NotConverged(_) => exit::NOT_CONVERGED,
            Failure::Exit(code, _) => *code,
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init(args) => init::run(args),
        Command::Validate(args) => validate::run(args),
        Command::Render(args) => render::run(args),
        Command::Plan(args) => plan::run(args),
        Command::Run(args) => run::run(args),
        Command::Status(args) => status::run(args),
        Command::Destroy(args) => destroy::run(args),
        Command::Upgrade(args) => upgrade::run(args),
        Command::Switchover(args) => switchover::run(args),
        Command::Failover(args) => failover::run(args),
        Command::Restart(args) => restart::run(args),
        Command::Backup(args) => backup::backup(args),
        Command::Backups(args) => backup::backups(args),
        Command::Restore(args) => backup::restore(args),
        Command::Dev(args) => dev::run(args),
        Command::ResumeGuard => {
            crate::ops::resume_guard::ignore_hangups();
            // Its exit code is read by no one; its stderr says what it did.
            if crate::ops::resume_guard::guard_main(std::io::stdin().lock()) {
                Ok(())
            } else {
                Err(Failure::NotConverged(String::new()))
            }
        }
    };
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(failure) => {
            let message = match &failure {
                Failure::BadInput(m) | Failure::Internal(m) | Failure::NotConverged(m) | Failure::Exit(_, m) => m,
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
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound => "\n  = help: create one with `pgnomad init`, or name it with -f FILE",
            std::io::ErrorKind::IsADirectory => "\n  = help: -f names the stack file itself, as in -f DIR/pgnomad.hcl",
            std::io::ErrorKind::InvalidData => "\n  = help: a stack file is UTF-8 text; convert it, e.g. `iconv -f LATIN1 -t UTF-8`",
            std::io::ErrorKind::PermissionDenied => "\n  = help: make the file readable by this user",
            _ => "",
        };
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

/// Clients for the cluster's Nomad and Consul, from flags and the environment.
pub fn connect(
    args: &crate::settings::ConnectionArgs,
    env: &crate::settings::Environment,
) -> Result<crate::deploy::Cluster<HttpTransport, HttpTransport>, Failure> {
    let bad = |e: crate::settings::SettingsError| Failure::BadInput(format!("error: {e}"));
    let nomad = args.nomad(env).map_err(bad)?;
    let consul = args.consul(env).map_err(bad)?;
    let setup = |e: crate::transport::TransportError| Failure::Internal(format!("error: {e}"));
    Ok(crate::deploy::Cluster {
        nomad: crate::transport::NomadClient::new(HttpTransport::nomad(&nomad).map_err(setup)?),
        consul: crate::consul::ConsulClient::new(HttpTransport::consul(&consul).map_err(setup)?),
    })
}

/// What `plan` and `run` both take: the stack, the cluster to talk to, pack overrides and
/// where the operator's own secrets come from.
#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub stack: StackFile,
    #[command(flatten)]
    pub connection: crate::settings::ConnectionArgs,
    /// A directory whose files replace the built-in pack templates of the same path.
    #[arg(long, value_name = "DIR")]
    pub packs: Option<PathBuf>,
    /// A file holding Patroni's Consul token (instead of PGNOMAD_PATRONI_CONSUL_TOKEN).
    #[arg(long, value_name = "FILE")]
    pub patroni_consul_token_file: Option<PathBuf>,
}

/// Everything a deploy operation needs, loaded from `DeployArgs`.
pub struct DeployInputs {
    pub checked: Checked,
    pub packs: crate::config::Packs,
    pub operator: crate::settings::OperatorSecrets,
    pub cluster: crate::deploy::Cluster<HttpTransport, HttpTransport>,
    pub env: crate::settings::Environment,
}

impl DeployArgs {
    pub fn load(&self) -> Result<DeployInputs, Failure> {
        let checked = load_stack(&self.stack.path)?;
        let packs = render::load_packs(self.packs.as_deref())?;
        let env = crate::settings::Environment::from_process();
        let operator = crate::settings::OperatorSecrets::from_env(&env, self.patroni_consul_token_file.as_deref())
            .map_err(|e| Failure::BadInput(format!("error: --patroni-consul-token-file: {e}")))?;
        let cluster = connect(&self.connection, &env)?;
        Ok(DeployInputs { checked, packs, operator, cluster, env })
    }
}

/// Runs one async operation to completion (commands stay synchronous).
pub fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Internal(format!("error: cannot start the async runtime: {e}")))?;
    Ok(runtime.block_on(future))
}

/// The exit code a deploy error calls for.
pub fn deploy_failure(error: crate::deploy::DeployError) -> Failure {
    let message = error.to_string();
    if error.is_not_converged() {
        Failure::NotConverged(message)
    } else if error.is_refusal() {
        Failure::BadInput(message)
    } else {
        Failure::Internal(message)
    }
}
