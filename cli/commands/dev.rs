//! `pgnomad dev …`: the stack on this machine. The work is in `crate::dev`; this file
//! parses flags, installs packages when asked, and prints.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

use super::{load_stack, Failure, StackFile};
use crate::dev::{self, DevError, Reporter};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: DevCommand,
}

#[derive(Debug, clap::Args)]
struct Where {
    #[command(flatten)]
    stack: StackFile,
    /// Where data, configs, secrets and logs live [default: .pgnomad/dev next to the stack file].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

impl Where {
    fn state_dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(|| dev::default_state_dir(&self.stack.path))
    }
}

#[derive(Debug, Subcommand)]
enum DevCommand {
    /// Start the stack locally (etcd, Patroni members, PgBouncer, pgBackRest) and wait until
    /// every replica streams. Writes a default stack file if there is none.
    Up {
        #[command(flatten)]
        at: Where,
        /// Install missing Debian packages with apt-get first.
        #[arg(long)]
        install: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 180, value_name = "SECONDS")]
        timeout: u64,
    },
    /// Members with role, state, timeline, lag, ports, data dir and pids; PgBouncer's address.
    Status {
        #[command(flatten)]
        at: Where,
        #[arg(long)]
        json: bool,
    },
    /// psql through PgBouncer as the application user (extra arguments go to psql).
    Psql {
        #[command(flatten)]
        at: Where,
        #[arg(last = true, value_name = "PSQL ARGS")]
        args: Vec<String>,
    },
    /// Planned switchover: PgBouncer PAUSE, Patroni switchover, wait for the new primary, RESUME.
    Switchover {
        #[command(flatten)]
        at: Where,
        /// Do not PAUSE PgBouncer (clients may see errors).
        #[arg(long)]
        no_pause: bool,
        /// The member to promote (Patroni picks when left out).
        #[arg(long, value_name = "MEMBER")]
        candidate: Option<String>,
    },
    /// Run the rendered backup.sh (full, diff or incr) through the members' pgBackRest servers.
    Backup {
        #[command(flatten)]
        at: Where,
        #[arg(value_parser = ["full", "diff", "incr"])]
        kind: String,
    },
    /// Stop everything; data and secrets stay for the next `up`.
    Down {
        #[command(flatten)]
        at: Where,
    },
    /// Stop everything and remove the state directory (data, backups, secrets).
    Destroy {
        #[command(flatten)]
        at: Where,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
    /// The supervisor `up` starts in the background.
    #[command(hide = true)]
    Supervise {
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
    },
}

/// Progress on stderr: a spinner on a terminal, plain lines otherwise.
struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    fn new() -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress { bar }
    }
    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Reporter for Progress {
    fn step(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("· {message}")),
            None => eprintln!("· {message}"),
        }
    }
    fn progress(&self, message: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(message.to_owned());
        }
    }
}

/// The supervisor's log lines, with a time.
struct LogLines;
impl Reporter for LogLines {
    fn step(&self, message: &str) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        eprintln!("{}.{:03} {message}", now.as_secs(), now.subsec_millis());
    }
    fn progress(&self, _: &str) {}
}

fn failed(error: DevError) -> Failure {
    match error {
        DevError::Stack(text) => Failure::BadInput(text),
        other => Failure::Internal(format!("error: {other}")),
    }
}

pub fn run(args: Args) -> Result<(), Failure> {
    match args.command {
        DevCommand::Up { at, install, timeout } => up(&at, install, timeout),
        DevCommand::Status { at, json } => status(&at, json),
        DevCommand::Psql { at, args } => psql(&at, &args),
        DevCommand::Switchover { at, no_pause, candidate } => {
            let dev = dev::Dev::open(&at.state_dir()).map_err(failed)?;
            let progress = Progress::new();
            let result = dev::switchover(&dev, !no_pause, candidate.as_deref(), &progress);
            progress.finish();
            let done = result.map_err(failed)?;
            let held = if no_pause { "took" } else { "clients held for" };
            println!("switched over from {} to {}; {held} {:.2} s", done.from, done.to, done.took.as_secs_f64());
            Ok(())
        }
        DevCommand::Backup { at, kind } => {
            let dev = dev::Dev::open(&at.state_dir()).map_err(failed)?;
            let log = dev::backup(&dev, &kind).map_err(failed)?;
            eprint!("{log}");
            Ok(())
        }
        DevCommand::Down { at } => {
            let progress = Progress::new();
            let result = dev::down(&at.state_dir(), &progress);
            progress.finish();
            result.map_err(failed)?;
            eprintln!("stopped; data stays in {} for the next `pgnomad dev up`", at.state_dir().display());
            Ok(())
        }
        DevCommand::Destroy { at, yes } => {
            let dir = at.state_dir();
            if !yes && !confirm(&format!("remove {} with all data, backups and secrets?", dir.display())) {
                return Err(Failure::BadInput("error: not confirmed; pass --yes to destroy without asking".into()));
            }
            let progress = Progress::new();
            let result = dev::destroy(&dir, &progress);
            progress.finish();
            result.map_err(failed)
        }
        DevCommand::Supervise { state_dir } => dev::supervise::run(&state_dir, &LogLines).map_err(failed),
    }
}

fn confirm(question: &str) -> bool {
    if !std::io::stdin().is_terminal() {
        return false;
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).is_ok() && matches!(answer.trim(), "y" | "Y" | "yes")
}

fn up(at: &Where, install: bool, timeout: u64) -> Result<(), Failure> {
    let path = &at.stack.path;
    if !path.exists() {
        std::fs::write(path, super::INIT_TEMPLATE)
            .map_err(|e| Failure::Internal(format!("error: cannot write {}: {e}", path.display())))?;
        eprintln!("· wrote {} with pgnomad init's defaults", path.display());
    }
    let checked = load_stack(path)?;
    let version = checked.stack.postgres.version.value;
    if install {
        let missing = dev::missing_packages(version);
        if !missing.is_empty() {
            install_packages(&missing.iter().map(|(_, p)| p.as_str()).collect::<Vec<_>>())?;
        }
    }
    let progress = Progress::new();
    let result = dev::up(checked.stack, path, &at.state_dir(), Duration::from_secs(timeout), &progress);
    progress.finish();
    let dev = result.map_err(failed)?;
    print_status(&dev::status(&dev));
    if let Some((user, database)) = dev.application_login() {
        let file = if path == Path::new("pgnomad.hcl") { String::new() } else { format!(" -f {}", path.display()) };
        println!("\nconnect:  pgnomad dev psql{file}     (as {user} to {database} through PgBouncer at {})", dev.pgbouncer_address());
        println!("password: in {} (PGPASSFILE)", dev.state.pgpass_file().display());
    }
    Ok(())
}

/// apt-get install, after telling Debian's postgresql-common not to create and start its
/// own `main` cluster on 5432.
fn install_packages(packages: &[&str]) -> Result<(), Failure> {
    eprintln!("· installing {}", packages.join(" "));
    let conf = Path::new("/etc/postgresql-common/createcluster.conf");
    if !conf.exists() && packages.iter().any(|p| p.starts_with("postgresql-")) {
        let _ = std::fs::create_dir_all("/etc/postgresql-common");
        let _ = std::fs::write(conf, "create_main_cluster = false\n");
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| Failure::Internal(format!("error: cannot run apt-get: {e}")))
    };
    if !apt(&["update", "-q"])?.success() {
        return Err(Failure::Internal("error: apt-get update failed (are you root?)".into()));
    }
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend_from_slice(packages);
    if !apt(&args)?.success() {
        return Err(Failure::Internal(format!("error: apt-get install {} failed", packages.join(" "))));
    }
    Ok(())
}

fn status(at: &Where, json: bool) -> Result<(), Failure> {
    let dev = dev::Dev::open(&at.state_dir()).map_err(failed)?;
    let status = dev::status(&dev);
    if json {
        println!("{}", serde_json::to_string_pretty(&status).expect("serializes"));
    } else {
        print_status(&status);
    }
    Ok(())
}

fn print_status(status: &dev::Status) {
    let running = status.supervisor_pid.map_or_else(|| "not running".to_owned(), |pid| format!("supervisor pid {pid}"));
    println!("cluster {} ({running}; {}; state {})", status.cluster, status.dcs, status.state_dir.display());
    println!(
        "{:<10} {:<13} {:<12} {:>3} {:>10} {:>6} {:>6} {:>8} {:>8}  DATA",
        "MEMBER", "ROLE", "STATE", "TL", "LAG", "PG", "REST", "PATRONI", "POSTGRES"
    );
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    for m in &status.members {
        println!(
            "{:<10} {:<13} {:<12} {:>3} {:>10} {:>6} {:>6} {:>8} {:>8}  {}",
            m.name,
            m.role,
            m.state,
            or_dash(m.timeline.map(|t| t.to_string())),
            or_dash(m.lag.as_ref().map(|l| l.to_string())),
            m.pg_port,
            m.rest_port,
            or_dash(m.patroni_pid.map(|p| p.to_string())),
            or_dash(m.postmaster_pid.map(|p| p.to_string())),
            m.data_dir.display()
        );
    }
    if let Some(b) = &status.pgbouncer {
        println!("pgbouncer  {} (pid {}) → {}", b.address, or_dash(b.pid.map(|p| p.to_string())), or_dash(b.points_at.clone()));
    }
}

fn psql(at: &Where, args: &[String]) -> Result<(), Failure> {
    let dev = dev::Dev::open(&at.state_dir()).map_err(failed)?;
    let (user, database) =
        dev.application_login().ok_or_else(|| Failure::BadInput("error: the stack has no users (postgres.users)".into()))?;
    let mut cmd = dev.pgbouncer_psql(&user, &database);
    cmd.args(args);
    // The terminal goes to psql; exec returns only on failure.
    let error = std::os::unix::process::CommandExt::exec(&mut cmd);
    Err(Failure::Internal(format!("error: cannot run psql: {error} (apt-get install postgresql-client-15)")))
}
