//! `pgnomad dev`: the stack on one machine with real processes, from the same stack file
//! and the same pack templates as the Nomad jobs; only the holes differ (`LocalRuntime`).
//!
//! `up` renders every config file into a state directory and starts a detached supervisor
//! (`pgnomad dev supervise`) that runs etcd, one Patroni (and pgBackRest TLS server) per
//! member and PgBouncer, restarts what crashes, and does what Nomad's `template` block does
//! for PgBouncer: when the primary changes it re-renders pgbouncer.ini and sends SIGHUP.
//! Nothing here prints: progress goes through a [`Reporter`].

pub mod patroni;
pub mod process;
pub mod state;
pub mod supervise;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::compile::secrets as secret_keys;
use crate::config::{Facts, LocalDcs, LocalRuntime, MemberPorts, Packs, Runtime};
use crate::stack::{Source, Stack};
use process::OsUser;
use state::{Ports, Recorded, StateDir};

/// How an operation tells the user what it is doing. The CLI implements it with a spinner;
/// the supervisor writes to its log.
pub trait Reporter {
    /// A new phase begins.
    fn step(&self, message: &str);
    /// Where the current wait stands (replaces the previous progress line).
    fn progress(&self, message: &str);
}

/// A reporter that says nothing (tests, `--json`).
pub struct Quiet;
impl Reporter for Quiet {
    fn step(&self, _: &str) {}
    fn progress(&self, _: &str) {}
}

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("{}", missing_message(.0))]
    MissingPrograms(Vec<(String, String)>),
    #[error("there is no `postgres` OS user to run Postgres as (Postgres refuses root): apt-get install postgresql-15 creates it")]
    NoPostgresUser,
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{}: {message}; remove the state directory with `pgnomad dev destroy` if it is beyond repair", .path.display())]
    Corrupt { path: PathBuf, message: String },
    #[error("{0}")]
    Stack(String),
    #[error("no dev stack in {}: start one with `pgnomad dev up`", .0.display())]
    NotCreated(PathBuf),
    #[error("the stack has {stack} members, but the state in {} was made for {state}: `pgnomad dev destroy` first", .dir.display())]
    MembersChanged { stack: usize, state: usize, dir: PathBuf },
    #[error("the postgres user cannot enter {}: a parent directory is not searchable (/root is 0700); pass --state-dir under /srv or /var/tmp", .0.display())]
    Unreachable(PathBuf),
    #[error("secret {0} must be provided by the operator, and pgnomad dev cannot make it up (an S3 repository's keys: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for the first `pgnomad dev up`)")]
    OperatorSecret(String),
    #[error("rendering the config files: {0}")]
    Render(#[from] crate::config::ConfigError),
    #[error("generating secrets: {0}")]
    Tls(#[from] crate::secrets::TlsError),
    #[error("the supervisor exited; the end of {}:\n{tail}", .log.display())]
    SupervisorGone { log: PathBuf, tail: String },
    #[error("timed out after {seconds} s waiting for {what}; logs are under {}", .state.display())]
    Timeout { what: String, seconds: u64, state: PathBuf },
    #[error("{0}")]
    Failed(String),
}

fn missing_message(missing: &[(String, String)]) -> String {
    let packages: Vec<&str> = missing.iter().map(|(_, p)| p.as_str()).collect();
    let what: Vec<&str> = missing.iter().map(|(w, _)| w.as_str()).collect();
    format!(
        "pgnomad dev needs {} which {} not installed\n  = help: apt-get install --no-install-recommends {}  (or pass --install)",
        what.join(", "),
        if missing.len() == 1 { "is" } else { "are" },
        packages.join(" ")
    )
}

impl DevError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> DevError {
        DevError::Io { what: what.into(), source }
    }
}

/// The state directory `dev` uses when none is given: `.pgnomad/dev/<cluster>` next to the
/// stack file, so that two stack files in one directory (a source and its restored clone)
/// never share data, ports or secrets. Run as root from a directory the postgres user
/// cannot enter (anything under /root), it is `/var/lib/pgnomad/dev/<the stack file's
/// directory, / as _>/<cluster>` instead. A state directory made before it was per cluster
/// (`.pgnomad/dev` itself, recorded for this very stack file) is kept.
pub fn default_state_dir(stack_file: &Path, cluster: &str) -> PathBuf {
    let parent = stack_file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let beside = parent.join(".pgnomad").join("dev");
    // The stack file's directory may not exist yet when the path is only being resolved.
    let existing = parent.ancestors().find(|dir| dir.is_dir()).unwrap_or(Path::new("/"));
    let base = match OsUser::for_caller() {
        Ok(user) if !user.can_enter(existing) => {
            let absolute = parent.canonicalize().unwrap_or_else(|_| parent.to_owned());
            Path::new("/var/lib/pgnomad/dev").join(absolute.to_string_lossy().trim_start_matches('/').replace('/', "_"))
        }
        _ => beside,
    };
    let legacy = StateDir::new(base.clone());
    let ours = |recorded: Recorded| stack_file.canonicalize().is_ok_and(|file| recorded.stack_file == file);
    if legacy.exists() && legacy.read_recorded().is_ok_and(ours) {
        return base;
    }
    base.join(cluster)
}

/// The Debian packages `--install` installs, for the programs that are missing.
pub fn missing_packages(pg_version: u32) -> Vec<(String, String)> {
    process::missing_packages(&bin_dir(pg_version), pg_version)
}

fn bin_dir(pg_version: u32) -> String {
    format!("/usr/lib/postgresql/{pg_version}/bin")
}

/// PgBouncer's pause watchdog, in PgBouncer's config directory (run by `sh`).
pub const PAUSE_WATCHDOG: &str = "pause-watchdog.sh";

/// A dev stack: the stack file and what the state directory holds.
pub struct Dev {
    pub state: StateDir,
    pub stack: Stack,
    pub facts: Facts,
    pub recorded: Recorded,
    secrets: BTreeMap<String, String>,
    pub user: OsUser,
}

impl std::fmt::Debug for Dev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dev").field("state", &self.state).field("recorded", &self.recorded).finish_non_exhaustive()
    }
}

fn load_stack_file(path: &Path) -> Result<Stack, DevError> {
    let text = std::fs::read_to_string(path).map_err(|e| DevError::io(format!("read stack file {}", path.display()), e))?;
    let source = Source::new(path.display().to_string(), text);
    crate::stack::load(&source)
        .map(|checked| checked.stack)
        .map_err(|diagnostics| DevError::Stack(diagnostics.iter().map(|d| source.render(d)).collect::<Vec<_>>().join("\n")))
}

/// `count` different ports nobody listens on now; the kernel picks them (all are held
/// until every one is chosen, so none comes twice).
fn free_ports(host: &str, count: usize) -> Result<std::vec::IntoIter<u16>, DevError> {
    let io = |e| DevError::io(format!("find a free port on {host}"), e);
    let held = (0..count).map(|_| std::net::TcpListener::bind((host, 0)).map_err(io)).collect::<Result<Vec<_>, _>>()?;
    let ports = held.iter().map(|l| l.local_addr().map(|a| a.port()).map_err(io)).collect::<Result<Vec<_>, _>>()?;
    Ok(ports.into_iter())
}

impl Dev {
    /// Creates the state directory on first use (ports, secrets), or checks the existing
    /// one against the stack; then renders every config file.
    pub fn prepare(stack: Stack, stack_file: &Path, state_dir: &Path) -> Result<Dev, DevError> {
        let user = OsUser::for_caller()?;
        std::fs::create_dir_all(state_dir).map_err(|e| DevError::io(format!("create {}", state_dir.display()), e))?;
        let root = state_dir.canonicalize().map_err(|e| DevError::io(format!("resolve {}", state_dir.display()), e))?;
        let state = StateDir::new(root.clone());
        let facts = Facts::new(&stack);
        let stack_file = stack_file.canonicalize().map_err(|e| DevError::io(format!("resolve {}", stack_file.display()), e))?;
        let recorded = if state.exists() {
            let mut recorded = state.read_recorded()?;
            if recorded.ports.members.len() != facts.members.len() {
                return Err(DevError::MembersChanged { stack: facts.members.len(), state: recorded.ports.members.len(), dir: root });
            }
            recorded.stack_file = stack_file;
            recorded
        } else {
            let host = "127.0.0.1".to_owned();
            let consul = matches!(stack.patroni.dcs, crate::stack::Dcs::Consul) && process::find_program("consul").is_some();
            let mut free = free_ports(&host, 3 + 4 + 3 * facts.members.len())?;
            let mut port = || free.next().expect("enough ports were chosen");
            let ports = Ports {
                etcd_client: port(),
                etcd_peer: port(),
                consul: consul.then(|| state::ConsulPorts { http: port(), serf_lan: port(), serf_wan: port(), server: port() }),
                members: facts.members.iter().map(|_| [port(), port(), port()]).collect(),
                pgbouncer: port(),
            };
            Recorded { stack_file, host, ports }
        };
        state.write_recorded(&recorded)?;
        let secrets = Self::secrets(&state, &facts, &recorded.host)?;
        let dev = Dev { state, stack, facts, recorded, secrets, user };
        if !dev.user.can_enter(&dev.state.root) {
            return Err(DevError::Unreachable(dev.state.root.clone()));
        }
        dev.write_files()?;
        Ok(dev)
    }

    /// The dev stack in `state_dir` as `up` left it (the supervisor, status, down).
    pub fn open(state_dir: &Path) -> Result<Dev, DevError> {
        let state = StateDir::new(state_dir.canonicalize().map_err(|_| DevError::NotCreated(state_dir.to_owned()))?);
        if !state.exists() {
            return Err(DevError::NotCreated(state_dir.to_owned()));
        }
        let recorded = state.read_recorded()?;
        let stack = load_stack_file(&recorded.stack_file)?;
        let facts = Facts::new(&stack);
        let secrets = state.read_secrets()?;
        Ok(Dev { state, stack, facts, recorded, secrets, user: OsUser::for_caller()? })
    }

    /// Secrets kept in the state directory; missing ones are generated once.
    fn secrets(state: &StateDir, facts: &Facts, host: &str) -> Result<BTreeMap<String, String>, DevError> {
        let existing = state.read_secrets()?;
        let mut keys = [
            secret_keys::postgres_secrets(facts),
            secret_keys::pgbouncer_secrets(facts),
            secret_keys::pgadmin_secrets(facts),
            secret_keys::backup_secrets(facts),
        ]
        .concat();
        keys.sort_by(|a, b| a.key.cmp(&b.key));
        keys.dedup_by(|a, b| a.key == b.key);
        // The dev DCS is a local etcd without ACLs: a stack on Consul needs no token here.
        keys.retain(|k| k.key != "consul_token");
        let names: Vec<String> = vec![host.to_owned(), "localhost".to_owned()];
        let tls = crate::secrets::tls_set(&facts.cluster, &names, &names)?;
        // An S3 repository's keys come from the operator, as for `run`: AWS_ACCESS_KEY_ID and
        // AWS_SECRET_ACCESS_KEY the first time, then kept with the other secrets.
        let mut existing = existing;
        for (key, variable) in [("s3_key", "AWS_ACCESS_KEY_ID"), ("s3_key_secret", "AWS_SECRET_ACCESS_KEY")] {
            if keys.iter().any(|k| k.key == key) && !existing.contains_key(key) {
                if let Some(value) = std::env::var(variable).ok().filter(|v| !v.is_empty()) {
                    existing.insert(key.to_owned(), value);
                }
            }
        }
        let (mut values, missing) = crate::secrets::fill(&keys, &existing, &tls);
        if let Some(key) = missing.into_iter().next() {
            return Err(DevError::OperatorSecret(key));
        }
        values.insert("consul_token".into(), String::new());
        if values != existing {
            state.write_secrets(&values)?;
        }
        Ok(values)
    }

    pub fn host(&self) -> &str {
        &self.recorded.host
    }

    pub fn member_count(&self) -> usize {
        self.facts.members.len()
    }

    pub fn member_ports(&self, index: usize) -> MemberPorts {
        self.recorded.ports.member(index)
    }

    /// The credentials of the members' REST APIs (`restapi.authentication`).
    pub fn rest_auth(&self) -> patroni::RestAuth {
        patroni::RestAuth::new(self.secrets.get(crate::patroni::REST_PASSWORD_KEY).cloned().unwrap_or_default())
    }

    pub fn rest_address(&self, index: usize) -> String {
        format!("{}:{}", self.host(), self.member_ports(index).rest)
    }

    pub fn member_index(&self, name: &str) -> Option<usize> {
        self.facts.members.iter().position(|m| m.name == name)
    }

    pub fn pgbouncer_address(&self) -> String {
        format!("{}:{}", self.host(), self.recorded.ports.pgbouncer)
    }

    /// The DCS Patroni uses: `(name, host:port)`.
    pub fn dcs(&self) -> (&'static str, String) {
        match &self.recorded.ports.consul {
            Some(consul) => ("consul", format!("{}:{}", self.host(), consul.http)),
            None => ("etcd", format!("{}:{}", self.host(), self.recorded.ports.etcd_client)),
        }
    }

    pub fn bin_dir(&self) -> String {
        bin_dir(self.facts.pg_version)
    }

    /// The holes of every config file, for PgBouncer pointing at member `primary`.
    pub fn runtime(&self, primary: u32) -> LocalRuntime {
        LocalRuntime {
            host: self.host().to_owned(),
            state_dir: self.state.root.clone(),
            bin_dir: self.bin_dir(),
            os_user: self.user.name.clone(),
            dcs: match self.dcs() {
                ("consul", address) => LocalDcs::Consul { address },
                (_, address) => LocalDcs::Etcd3 { hosts: vec![address] },
            },
            members: (0..self.member_count()).map(|i| self.member_ports(i)).collect(),
            pgbouncer_port: self.recorded.ports.pgbouncer,
            primary,
            secrets: self.secrets.clone(),
            restore: None,
        }
    }

    /// A directory the member processes own.
    fn owned_dir(&self, dir: &Path, mode: u32) -> Result<(), DevError> {
        std::fs::create_dir_all(dir).map_err(|e| DevError::io(format!("create {}", dir.display()), e))?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .map_err(|e| DevError::io(format!("chmod {}", dir.display()), e))?;
        self.user.own(dir)
    }

    /// Writes a rendered file the member processes read (0600, scripts 0700).
    fn owned_file(&self, path: &Path, text: &str) -> Result<(), DevError> {
        let mode = if path.extension().is_some_and(|e| e == "sh") { 0o700 } else { 0o600 };
        state::write_with_mode(path, text, mode)?;
        self.user.own(path)
    }

    /// Every config file, rendered with the pack templates and `LocalRuntime`.
    fn write_files(&self) -> Result<(), DevError> {
        let root = &self.state.root;
        // The members' user must traverse the state directory; its secrets stay 0600.
        self.owned_dir(root, 0o711)?;
        let primary = self.state.pgbouncer_primary().unwrap_or(0);
        let mut runtime = self.runtime(primary);
        runtime.restore = crate::ops::restore::local_source(&self.stack, &self.recorded.stack_file, root)?;
        let packs = Packs::default();
        let renderer = packs.renderer(&self.facts, &runtime);
        for member in &self.facts.members {
            let holes = runtime.member(&self.facts, member);
            self.owned_dir(&root.join(&member.name), 0o700)?;
            for dir in [&holes.config_dir, &holes.run_dir, &holes.log_dir] {
                self.owned_dir(Path::new(dir), 0o700)?;
            }
            for file in ["patroni.yml", "bootstrap.sql", "on-role-change.sh", "pgbackrest.conf"] {
                let text = renderer.render(&format!("postgres/{file}"), Some(member), &holes)?;
                self.owned_file(&Path::new(&holes.config_dir).join(file), &text)?;
            }
            if self.facts.restore.is_some() {
                let text = renderer.render("backup/restore.conf", Some(member), &holes)?;
                self.owned_file(&Path::new(&holes.config_dir).join("restore.conf"), &text)?;
            }
        }
        self.owned_dir(&root.join("pgbouncer"), 0o700)?;
        self.write_pgbouncer(primary)?;
        for kind in ["full", "diff", "incr"] {
            let holes = runtime.backup(&self.facts, kind);
            self.owned_dir(&root.join(format!("backup-{kind}")), 0o700)?;
            for dir in [&holes.config_dir, &holes.run_dir, &holes.log_dir] {
                self.owned_dir(Path::new(dir), 0o700)?;
            }
            for file in ["pgbackrest.conf", "backup.sh"] {
                let text = renderer.render(&format!("backup/{file}"), None, &holes)?;
                self.owned_file(&Path::new(&holes.config_dir).join(file), &text)?;
            }
        }
        self.owned_dir(&root.join("repo"), 0o750)?;
        self.owned_dir(&root.join("tls"), 0o700)?;
        let tls = [
            ("ca.crt", "tls_ca_crt"),
            ("server.crt", "tls_server_crt"),
            ("server.key", "tls_server_key"),
            ("client.crt", "tls_client_crt"),
            ("client.key", "tls_client_key"),
            ("sql.crt", "tls_sql_crt"),
            ("sql.key", "tls_sql_key"),
        ];
        for (file, key) in tls {
            if let Some(value) = self.secrets.get(key) {
                self.owned_file(&root.join("tls").join(file), value)?;
            }
        }
        // The caller's own logins through PgBouncer (`dev psql`, the admin console).
        let client = root.join("client");
        std::fs::create_dir_all(&client).map_err(|e| DevError::io(format!("create {}", client.display()), e))?;
        std::fs::set_permissions(&client, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(|e| DevError::io(format!("chmod {}", client.display()), e))?;
        let (host, port) = (self.host(), self.recorded.ports.pgbouncer);
        let mut pgpass = String::new();
        for user in &self.facts.users {
            if let Some(password) = self.secrets.get(&secret_keys::user_password_key(user)) {
                pgpass.push_str(&format!("{host}:{port}:*:{user}:{password}\n"));
            }
        }
        pgpass.push_str(&format!("{host}:{port}:pgbouncer:pgbouncer_auth:{}\n", self.secrets["pgbouncer_auth_password"]));
        state::write_private(&self.state.pgpass_file(), &pgpass)
    }

    /// pgbouncer.ini and userlist.txt with PgBouncer pointing at member `primary`, and the
    /// pause watchdog's script.
    pub fn write_pgbouncer(&self, primary: u32) -> Result<(), DevError> {
        let runtime = self.runtime(primary);
        let holes = runtime.pgbouncer(&self.facts);
        for dir in [&holes.config_dir, &holes.run_dir, &holes.log_dir] {
            self.owned_dir(Path::new(dir), 0o700)?;
        }
        let renderer = Packs::default().renderer(&self.facts, &runtime);
        let watchdog = (self.facts.pgbouncer.max_pause_secs > 0).then_some(PAUSE_WATCHDOG);
        for file in ["pgbouncer.ini", "userlist.txt"].into_iter().chain(watchdog) {
            let text = renderer.render(&format!("pgbouncer/{file}"), None, &holes)?;
            self.owned_file(&Path::new(&holes.config_dir).join(file), &text)?;
        }
        Ok(())
    }

    /// psql on member `index` over its unix socket as `postgres` (peer login of the
    /// members' OS user); the output of one query, or None when it does not answer.
    pub fn member_query(&self, index: usize, sql: &str) -> Option<String> {
        let run_dir = self.state.root.join(&self.facts.members[index].name).join("run");
        let out = self
            .user
            .command(process::program("psql"))
            .args(["-X", "-A", "-t", "-h"])
            .arg(&run_dir)
            .args(["-p", &self.member_ports(index).pg.to_string(), "-U", "postgres", "-d", "postgres", "-c", sql])
            .env("PGCONNECT_TIMEOUT", "2")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// psql through PgBouncer as `user`, the password from the state directory's pgpass.
    pub fn pgbouncer_psql(&self, user: &str, database: &str) -> Command {
        let mut cmd = Command::new(process::program("psql"));
        cmd.args(["-h", self.host(), "-p", &self.recorded.ports.pgbouncer.to_string(), "-U", user, "-d", database])
            .env("PGPASSFILE", self.state.pgpass_file())
            .env_remove("PGPASSWORD");
        cmd
    }

    /// The application user and database `dev psql` logs in as: the stack's first user,
    /// in its first database it owns (or the first database).
    pub fn application_login(&self) -> Option<(String, String)> {
        let user = self.facts.users.first()?.clone();
        let database = self
            .facts
            .databases
            .iter()
            .find(|d| d.owner == user)
            .or(self.facts.databases.first())
            .map_or_else(|| "postgres".to_owned(), |d| d.name.clone());
        Some((user, database))
    }
}

/// Starts the stack (or finds it running) and returns when there is a leader, every
/// replica streams and PgBouncer lets the application user in.
pub fn up(stack: Stack, stack_file: &Path, state_dir: &Path, timeout: Duration, reporter: &dyn Reporter) -> Result<Dev, DevError> {
    up_unless(stack, stack_file, state_dir, timeout, reporter, &|_| None)
}

/// `up`, giving up early with `DevError::Failed` once `failed` names a reason (an in-place
/// restore's bootstrap that Patroni gave up on).
pub fn up_unless(
    stack: Stack,
    stack_file: &Path,
    state_dir: &Path,
    timeout: Duration,
    reporter: &dyn Reporter,
    failed: &dyn Fn(&Dev) -> Option<String>,
) -> Result<Dev, DevError> {
    let mut missing = missing_packages(stack.postgres.version.value);
    if matches!(stack.patroni.dcs, crate::stack::Dcs::Consul)
        && process::find_program("consul").is_some()
        && !Path::new(process::PYTHON_CONSUL.0).exists()
    {
        missing.push(("Patroni's Consul support (python3 module consul)".into(), process::PYTHON_CONSUL.1.into()));
    }
    if !missing.is_empty() {
        return Err(DevError::MissingPrograms(missing));
    }
    reporter.step(&format!("rendering config files into {}", state_dir.display()));
    let dev = Dev::prepare(stack, stack_file, state_dir)?;
    if dev.state.supervisor_pid().is_some() {
        reporter.step("already running; checking it");
    } else {
        reporter.step(&format!("starting {}, Patroni members, pgBackRest servers and PgBouncer", dev.dcs().0));
        start_supervisor(&dev)?;
    }
    wait_ready(&dev, timeout, reporter, failed)?;
    Ok(dev)
}

fn start_supervisor(dev: &Dev) -> Result<(), DevError> {
    let _ = std::fs::remove_file(dev.state.stop_file());
    let exe = std::env::current_exe().map_err(|e| DevError::io("find the pgnomad executable", e))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dev.state.supervisor_log())
        .map_err(|e| DevError::io(format!("open {}", dev.state.supervisor_log().display()), e))?;
    // setsid: its own session, so a closed terminal or Ctrl-C in it leaves the stack running.
    let child = Command::new(process::program("setsid"))
        .arg(exe)
        .args(["dev", "supervise", "--state-dir"])
        .arg(&dev.state.root)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| DevError::io("log", e))?)
        .stderr(log)
        .spawn()
        .map_err(|e| DevError::io("start the supervisor", e))?;
    // Reaped by init after we exit; until then nobody waits for it.
    std::mem::forget(child);
    Ok(())
}

/// What `up` waits for, as a sentence for the progress line; None when all is ready.
fn not_ready(dev: &Dev) -> Result<Option<String>, DevError> {
    if dev.state.supervisor_pid().is_none() {
        // The supervisor writes its pid first thing; give it a moment before giving up.
        return Ok(Some("the supervisor to start".into()));
    }
    let Some(cluster) = (0..dev.member_count()).find_map(|i| patroni::cluster(&dev.rest_address(i))) else {
        return Ok(Some("Patroni's REST API".into()));
    };
    let Some(leader) = cluster.leader() else {
        return Ok(Some("a leader (initdb, bootstrap)".into()));
    };
    let Some(index) = dev.member_index(&leader.name) else {
        return Ok(Some(format!("leader {} to be a member of this stack", leader.name)));
    };
    if !patroni::is_primary(&dev.rest_address(index)) {
        return Ok(Some(format!("{} to run as primary", leader.name)));
    }
    let replicas = dev.member_count() - 1;
    // By name: a replica still cloning shows up as pg_basebackup's walsender, streaming too.
    let names = dev.facts.members.iter().map(|m| format!("'{}'", m.name)).collect::<Vec<_>>().join(", ");
    let streaming: usize = dev
        .member_query(index, &format!("SELECT count(DISTINCT application_name) FROM pg_stat_replication WHERE state = 'streaming' AND application_name IN ({names})"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if streaming < replicas {
        return Ok(Some(format!("replicas to stream ({streaming}/{replicas}; cloning with a fast checkpoint)")));
    }
    if needs_sync_standby(dev) && !cluster.members.iter().any(|m| m.role == "sync_standby") {
        return Ok(Some("Patroni to choose a synchronous standby".into()));
    }
    if dev.facts.pgbouncer.enabled {
        if dev.state.pgbouncer_primary() != Some(index as u32) {
            return Ok(Some(format!("PgBouncer to point at {}", leader.name)));
        }
        if let Some((user, database)) = dev.application_login() {
            let ok = dev
                .pgbouncer_psql(&user, &database)
                .args(["-X", "-A", "-t", "-c", "SELECT 1"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Ok(Some(format!("{user} to log in through PgBouncer (bootstrap.sql)")));
            }
        }
    }
    Ok(None)
}

fn needs_sync_standby(dev: &Dev) -> bool {
    dev.facts.synchronous_mode != "off" && dev.member_count() > 1
}

fn wait_ready(dev: &Dev, timeout: Duration, reporter: &dyn Reporter, failed: &dyn Fn(&Dev) -> Option<String>) -> Result<(), DevError> {
    let started = Instant::now();
    reporter.step("waiting for the cluster");
    loop {
        match not_ready(dev)? {
            None => return Ok(()),
            Some(what) => {
                if let Some(why) = failed(dev) {
                    return Err(DevError::Failed(why));
                }
                if started.elapsed() > Duration::from_secs(3) && dev.state.supervisor_pid().is_none() {
                    return Err(DevError::SupervisorGone {
                        log: dev.state.supervisor_log(),
                        tail: log_tail(&dev.state.supervisor_log(), 20),
                    });
                }
                if started.elapsed() > timeout {
                    return Err(DevError::Timeout { what, seconds: timeout.as_secs(), state: dev.state.root.clone() });
                }
                reporter.progress(&format!("waiting for {what} ({:.0} s)", started.elapsed().as_secs_f64()));
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Stops everything `up` started and waits until nothing of it runs.
pub fn down(state_dir: &Path, reporter: &dyn Reporter) -> Result<(), DevError> {
    let state = StateDir::new(state_dir.to_owned());
    if !state.exists() {
        return Err(DevError::NotCreated(state_dir.to_owned()));
    }
    if let Some(pid) = state.supervisor_pid() {
        reporter.step("stopping PgBouncer, Patroni members (replicas first) and the DCS");
        std::fs::write(state.stop_file(), "").map_err(|e| DevError::io("write the stop file", e))?;
        process::wait_gone(&[pid], Duration::from_secs(90));
    }
    // Whatever is left (a supervisor killed with -9, a stuck process): signal it directly.
    let recorded = state.read_recorded()?;
    let pids = state.read_pids();
    let mut left: Vec<u32> = pids.processes.values().copied().filter(|&p| process::alive(p)).collect();
    if process::alive(pids.supervisor) && process::command_line(pids.supervisor).contains("supervise") {
        left.push(pids.supervisor);
    }
    for i in 0..recorded.ports.members.len() {
        if let Some(pid) = process::postmaster_pid(&state.data_dir(&crate::config::facts::member_name(i as u32))) {
            left.push(pid);
        }
    }
    if !left.is_empty() {
        reporter.step(&format!("stopping {} leftover process(es)", left.len()));
        for &pid in &left {
            process::signal(pid, libc::SIGTERM);
        }
        if !process::wait_gone(&left, Duration::from_secs(20)) {
            for &pid in &left {
                process::signal(pid, libc::SIGKILL);
            }
            process::wait_gone(&left, Duration::from_secs(5));
        }
    }
    let _ = std::fs::remove_file(state.stop_file());
    let still: Vec<u32> = left.into_iter().filter(|&p| process::alive(p)).collect();
    if still.is_empty() {
        Ok(())
    } else {
        Err(DevError::Failed(format!("processes {still:?} did not stop")))
    }
}

/// `down`, then the state directory goes: data, backups, secrets.
pub fn destroy(state_dir: &Path, reporter: &dyn Reporter) -> Result<(), DevError> {
    if StateDir::new(state_dir.to_owned()).exists() {
        down(state_dir, reporter)?;
    }
    reporter.step(&format!("removing {}", state_dir.display()));
    match std::fs::remove_dir_all(state_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DevError::io(format!("remove {}", state_dir.display()), e)),
        _ => Ok(()),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub cluster: String,
    pub state_dir: PathBuf,
    pub supervisor_pid: Option<u32>,
    /// "etcd 127.0.0.1:…" or "consul 127.0.0.1:…".
    pub dcs: String,
    pub members: Vec<MemberStatus>,
    /// `host:port`, and the member it points at.
    pub pgbouncer: Option<PgBouncerStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    pub name: String,
    /// "leader", "sync standby", "replica", or "down" when Patroni does not answer.
    pub role: String,
    pub state: String,
    pub timeline: Option<u64>,
    /// Bytes behind the leader.
    pub lag: Option<serde_json::Value>,
    pub host: String,
    pub pg_port: u16,
    pub rest_port: u16,
    pub data_dir: PathBuf,
    pub patroni_pid: Option<u32>,
    pub postmaster_pid: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PgBouncerStatus {
    pub address: String,
    pub pid: Option<u32>,
    pub points_at: Option<String>,
}

pub fn status(dev: &Dev) -> Status {
    let cluster = (0..dev.member_count()).find_map(|i| patroni::cluster(&dev.rest_address(i)));
    let pids = dev.state.read_pids();
    let supervisor = dev.state.supervisor_pid();
    let running = |name: &str| supervisor.and(pids.processes.get(name).copied()).filter(|&p| process::alive(p));
    let members = dev
        .facts
        .members
        .iter()
        .enumerate()
        .map(|(i, member)| {
            let seen = cluster.as_ref().and_then(|c| c.members.iter().find(|m| m.name == member.name));
            let ports = dev.member_ports(i);
            let data_dir = dev.state.data_dir(&member.name);
            MemberStatus {
                name: member.name.clone(),
                role: seen.map_or("down".into(), |m| m.role.replace('_', " ")),
                state: seen.map_or("not running".into(), |m| m.state.clone()),
                timeline: seen.and_then(|m| m.timeline),
                lag: seen.and_then(|m| m.lag.clone()),
                host: dev.host().to_owned(),
                pg_port: ports.pg,
                rest_port: ports.rest,
                postmaster_pid: process::postmaster_pid(&data_dir),
                data_dir,
                patroni_pid: running(&member.name),
            }
        })
        .collect();
    let pgbouncer = dev.facts.pgbouncer.enabled.then(|| PgBouncerStatus {
        address: dev.pgbouncer_address(),
        pid: running("pgbouncer"),
        points_at: dev.state.pgbouncer_primary().and_then(|i| dev.facts.members.get(i as usize)).map(|m| m.name.clone()),
    });
    Status {
        cluster: dev.facts.cluster.clone(),
        state_dir: dev.state.root.clone(),
        supervisor_pid: supervisor,
        dcs: format!("{} {}", dev.dcs().0, dev.dcs().1),
        members,
        pgbouncer,
    }
}

// A planned switchover is `ops::switchover` on `ops::dev::DevTarget`: one implementation
// for dev and Nomad.

/// Runs the rendered backup.sh of `kind` as the backup job would: through the members'
/// pgBackRest TLS servers.
pub fn backup(dev: &Dev, kind: &str) -> Result<String, DevError> {
    if !["full", "diff", "incr"].contains(&kind) {
        return Err(DevError::Failed(format!("no backup kind `{kind}`: full, diff or incr")));
    }
    let script = dev.state.config_dir(&format!("backup-{kind}")).join("backup.sh");
    let out =
        dev.user.command("bash").arg(&script).arg(kind).stdin(Stdio::null()).output().map_err(|e| DevError::io("run backup.sh", e))?;
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(log)
    } else {
        Err(DevError::Failed(format!("backup.sh {kind} failed:\n{}", log.trim_end())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_programs_are_named_with_their_packages() {
        let message = missing_message(&[("`etcd`".into(), "etcd-server".into()), ("`pgbouncer`".into(), "pgbouncer".into())]);
        assert_eq!(
            message,
            "pgnomad dev needs `etcd`, `pgbouncer` which are not installed\n  = help: apt-get install --no-install-recommends etcd-server pgbouncer  (or pass --install)"
        );
    }

    #[test]
    fn the_state_dir_is_beside_the_stack_file_when_the_members_user_can_reach_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let stack_file = dir.path().join("pgnomad.hcl");
        assert_eq!(default_state_dir(&stack_file, "main"), dir.path().join(".pgnomad/dev/main"));
        // A directory not made yet counts as its nearest existing parent.
        let later = dir.path().join("later/pgnomad.hcl");
        assert_eq!(default_state_dir(&later, "main"), dir.path().join("later/.pgnomad/dev/main"));
    }

    #[test]
    fn two_stack_files_in_one_directory_get_their_own_state_dirs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let (source, clone) = (dir.path().join("pgnomad.hcl"), dir.path().join("clone.hcl"));
        assert_eq!(default_state_dir(&source, "main"), dir.path().join(".pgnomad/dev/main"));
        assert_eq!(default_state_dir(&clone, "clone"), dir.path().join(".pgnomad/dev/clone"));
    }

    #[test]
    fn a_state_dir_made_before_it_was_per_cluster_is_kept_for_its_own_stack_file_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let (source, clone) = (dir.path().join("pgnomad.hcl"), dir.path().join("clone.hcl"));
        std::fs::write(&source, "cluster \"main\" {}\n").unwrap();
        std::fs::write(&clone, "cluster \"clone\" {}\n").unwrap();
        let legacy = StateDir::new(dir.path().join(".pgnomad/dev"));
        std::fs::create_dir_all(&legacy.root).unwrap();
        let ports = Ports { etcd_client: 1, etcd_peer: 2, consul: None, members: vec![[3, 4, 5]], pgbouncer: 6 };
        legacy.write_recorded(&Recorded { stack_file: source.canonicalize().unwrap(), host: "127.0.0.1".into(), ports }).unwrap();
        assert_eq!(default_state_dir(&source, "main"), legacy.root);
        assert_eq!(default_state_dir(&clone, "clone"), dir.path().join(".pgnomad/dev/clone"));
    }
}
