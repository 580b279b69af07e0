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
use crate::ops::dev::DevTarget;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: DevCommand,
}

#[derive(Debug, clap::Args)]
struct Where {
    #[command(flatten)]
    stack: StackFile,
    /// Where data, configs, secrets and logs live [default: .pgnomad/dev/<cluster> next to the stack file].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

impl Where {
    /// `--state-dir`, or the stack's own default: `.pgnomad/dev/<cluster>` beside the stack
    /// file, which names the cluster.
    fn state_dir(&self) -> Result<PathBuf, Failure> {
        match &self.state_dir {
            Some(dir) => Ok(dir.clone()),
            None => Ok(dev::default_state_dir(&self.stack.path, &cluster_name(&self.stack.path)?)),
        }
    }
}

/// The cluster a stack file declares, read without printing its warnings.
fn cluster_name(path: &Path) -> Result<String, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::BadInput(format!(
            "error: cannot read stack file {}: {e}\n  = help: the dev state directory is named after the stack file's cluster; name the file with -f FILE or the directory with --state-dir DIR",
            path.display()
        ))
    })?;
    let source = crate::stack::Source::new(path.display().to_string(), text);
    match crate::stack::load(&source) {
        Ok(checked) => Ok(checked.stack.cluster.name.value),
        Err(_) => load_stack(path).map(|checked| checked.stack.cluster.name.value),
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
        #[command(flatten)]
        flags: super::switchover::SwitchoverFlags,
    },
    /// Apply the edited stack file to the running dev stack, member by member (as `pgnomad
    /// upgrade` does on Nomad).
    Upgrade {
        #[command(flatten)]
        at: Where,
        #[command(flatten)]
        flags: super::upgrade::UpgradeFlags,
    },
    /// Promote a member when there is no healthy primary (asks first, or --yes).
    Failover {
        #[command(flatten)]
        at: Where,
        #[command(flatten)]
        flags: super::failover::FailoverFlags,
    },
    /// Restart Postgres through Patroni: replicas one at a time, the leader last after a switchover.
    Restart {
        #[command(flatten)]
        at: Where,
        #[command(flatten)]
        flags: super::restart::RestartFlags,
    },
    /// Take one backup now with the rendered backup.sh (full, diff or incr) through the
    /// members' pgBackRest servers; says which member it read from.
    ///
    /// Exit codes: 0 taken, 1 refused (another backup runs, no standby), 2 unreachable, 3 failed.
    Backup {
        #[command(flatten)]
        at: Where,
        #[arg(value_parser = ["full", "diff", "incr"], default_value = "full")]
        kind: String,
        /// The same as the positional type.
        #[arg(long = "type", value_parser = ["full", "diff", "incr"], value_name = "TYPE", conflicts_with = "kind")]
        kind_flag: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The repository's backups (label, type, start/stop, sizes, WAL range) and the
    /// recoverable window, from `pgbackrest info --output=json`.
    Backups {
        #[command(flatten)]
        at: Where,
        #[arg(long)]
        json: bool,
    },
    /// Restore into a new cluster NAME beside the source: writes NAME.hcl (this stack renamed,
    /// with a `restore` block) and brings it up from this cluster's repository. Or, with
    /// --in-place --yes, restore this cluster itself: its members stop, it is bootstrapped
    /// again from its repository to the target, its replicas are cloned anew; its data
    /// before the restore is kept until the restore has succeeded, and back if it fails.
    ///
    /// Exit codes: 0 up, 1 refused (target outside the window, NAME exists, --yes missing), 2 unreachable, 3 did not come up.
    Restore {
        #[command(flatten)]
        at: Where,
        #[command(flatten)]
        destination: super::backup::RestoreDestination,
        #[command(flatten)]
        target: super::backup::RestoreTargetArgs,
        /// Give up waiting for the clone after this many seconds.
        #[arg(long, default_value_t = 300, value_name = "SECONDS")]
        timeout: u64,
        #[arg(long)]
        json: bool,
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
pub(super) struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    pub(super) fn new() -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress { bar }
    }
    pub(super) fn finish(&self) {
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
        DevCommand::Switchover { at, flags } => {
            let dev = dev::Dev::open(&at.state_dir()?).map_err(failed)?;
            super::switchover::switchover_on(&DevTarget::new(&dev), &flags)
        }
        DevCommand::Upgrade { at, flags } => {
            let dev = dev::Dev::open(&at.state_dir()?).map_err(failed)?;
            super::upgrade::upgrade_on(&DevTarget::new(&dev), &flags)
        }
        DevCommand::Failover { at, flags } => {
            let dev = dev::Dev::open(&at.state_dir()?).map_err(failed)?;
            super::failover::failover_on(&DevTarget::new(&dev), &flags)
        }
        DevCommand::Restart { at, flags } => {
            let dev = dev::Dev::open(&at.state_dir()?).map_err(failed)?;
            super::restart::restart_on(&DevTarget::new(&dev), &flags)
        }
        DevCommand::Backup { at, kind, kind_flag, json } => {
            let dev = dev::Dev::open(&at.state_dir()?).map_err(failed)?;
            let progress = Progress::new();
            let result = crate::ops::backup::dev_backup(&dev, kind_flag.as_deref().unwrap_or(&kind), &progress);
            progress.finish();
            print_backup_done(&result.map_err(ops_failed)?, json);
            Ok(())
        }
        DevCommand::Backups { at, json } => {
            let dev = dev::Dev::open(&at.state_dir()?).map_err(failed)?;
            let list = crate::ops::backup::dev_backups(&dev).map_err(ops_failed)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list).expect("serializes"));
            } else {
                print_backups(&list);
            }
            Ok(())
        }
        DevCommand::Restore { at, destination: super::backup::RestoreDestination { into, yes, .. }, target, timeout, json } => {
            let target = target.target()?;
            let dev = dev::Dev::open(&at.state_dir()?).map_err(failed)?;
            let Some(into) = into else {
                let question =
                    format!("restore {} in place? Its members stop, and everything written after the target is lost", dev.facts.cluster);
                if !yes && !confirm(&question) {
                    return Err(Failure::BadInput(format!(
                        "error: not confirmed: an in-place restore stops {} and loses everything written after the target\n  = help: pass --yes to restore in place without asking",
                        dev.facts.cluster
                    )));
                }
                let progress = Progress::new();
                let mut site = crate::ops::restore::DevInPlace::new(&dev);
                let result = crate::ops::restore::restore_in_place(&mut site, &target, Duration::from_secs(timeout), &progress);
                progress.finish();
                let restored = result.map_err(ops_failed)?;
                let status = dev::status(&dev::Dev::open(&dev.state.root).map_err(failed)?);
                if json {
                    let mut value = serde_json::to_value(&restored).expect("serializes");
                    value["status"] = serde_json::to_value(&status).expect("serializes");
                    println!("{}", serde_json::to_string_pretty(&value).expect("serializes"));
                } else {
                    print_status(&status);
                    println!(
                        "\nrestored {} in place in {:.1} s: {} leads on timeline {}",
                        restored.cluster,
                        restored.took.as_secs_f64(),
                        restored.leader,
                        restored.timeline.map(|t| t.to_string()).unwrap_or_else(|| "?".into())
                    );
                }
                return Ok(());
            };
            let progress = Progress::new();
            let result = crate::ops::restore::dev_restore(&dev, &into, &target, Duration::from_secs(timeout), &progress);
            progress.finish();
            let restored = result.map_err(ops_failed)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&restored).expect("serializes"));
            } else {
                print_status(&restored.status);
                println!(
                    "\nrestored {} into {} in {:.1} s; use it with -f {}",
                    dev.facts.cluster,
                    restored.cluster,
                    restored.took.as_secs_f64(),
                    restored.stack_file.display()
                );
            }
            Ok(())
        }
        DevCommand::Down { at } => {
            let progress = Progress::new();
            let dir = at.state_dir()?;
            let result = dev::down(&dir, &progress);
            progress.finish();
            result.map_err(failed)?;
            eprintln!("stopped; data stays in {} for the next `pgnomad dev up`", dir.display());
            Ok(())
        }
        DevCommand::Destroy { at, yes } => {
            let dir = at.state_dir()?;
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

/// The exit code an operation's error calls for.
fn ops_failed(error: crate::ops::OpsError) -> Failure {
    use crate::ops::OpsError;
    let message = format!("error: {error}");
    match error {
        OpsError::Refused(_) | OpsError::Setup(_) => Failure::BadInput(message),
        OpsError::Unreachable(_) => Failure::Internal(message),
        OpsError::Failed(_) | OpsError::TimedOut { .. } => Failure::NotConverged(message),
    }
}

pub(super) fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / f64::from(1u32 << 30)),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// A finished backup: pgBackRest's log to stderr, then the summary or its JSON.
pub(super) fn print_backup_done(done: &crate::ops::backup::BackupDone, json: bool) {
    eprint!("{}", done.log);
    if json {
        println!("{}", serde_json::to_string_pretty(done).expect("serializes"));
    } else {
        println!(
            "{} backup {} done in {:.1} s: files from {}, primary {}; database {}, in the repository {}",
            done.kind,
            done.label,
            done.took.as_secs_f64(),
            done.copied_from,
            done.primary,
            bytes(done.database_size),
            bytes(done.repository_size)
        );
    }
}

pub(super) fn print_backups(list: &crate::ops::backup::Backups) {
    println!("stanza {} ({}; cipher {})", list.stanza, list.status, list.cipher);
    println!("{:<36} {:<5} {:<22} {:<22} {:>10} {:>10}  WAL", "LABEL", "TYPE", "START", "STOP", "DATABASE", "REPO");
    for b in &list.backups {
        println!(
            "{:<36} {:<5} {:<22} {:<22} {:>10} {:>10}  {} … {}",
            b.label,
            b.kind,
            b.start_time,
            b.stop_time,
            bytes(b.database_size),
            bytes(b.repository_size),
            b.wal_start.as_deref().unwrap_or("-"),
            b.wal_stop.as_deref().unwrap_or("-")
        );
    }
    match &list.window {
        Some(w) => println!(
            "recoverable: {} … {} ({}); WAL {} … {}",
            w.oldest_time,
            w.newest_time,
            if w.newest_from_archive { "to the newest archived WAL" } else { "to the end of the newest backup at least" },
            w.wal_min.as_deref().unwrap_or("-"),
            w.wal_max.as_deref().unwrap_or("-")
        ),
        None => println!("recoverable: nothing yet (no backup)"),
    }
}

pub(super) fn confirm(question: &str) -> bool {
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
    let result = dev::up(checked.stack, path, &at.state_dir()?, Duration::from_secs(timeout), &progress);
    progress.finish();
    let dev = result.map_err(failed)?;
    // patroni.yml bootstraps only what Postgres reads at start; the rest of the stack's
    // parameters through Patroni's dynamic configuration, as `run` does on Nomad.
    crate::ops::apply_reload_parameters(&DevTarget::new(&dev), Duration::from_secs(60), &crate::ops::Quiet)
        .map_err(|e| super::upgrade::ops_failure(&e))?;
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
    let dev = dev::Dev::open(&at.state_dir()?).map_err(failed)?;
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
    let dev = dev::Dev::open(&at.state_dir()?).map_err(failed)?;
    let (user, database) =
        dev.application_login().ok_or_else(|| Failure::BadInput("error: the stack has no users (postgres.users)".into()))?;
    let mut cmd = dev.pgbouncer_psql(&user, &database);
    cmd.args(args);
    // The terminal goes to psql; exec returns only on failure.
    let error = std::os::unix::process::CommandExt::exec(&mut cmd);
    Err(Failure::Internal(format!("error: cannot run psql: {error} (apt-get install postgresql-client-15)")))
}
