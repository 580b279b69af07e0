//! Programs `dev` runs, the OS user they run as, and signals to pids.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::DevError;

/// A program `dev` needs, and the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
pub struct Program {
    pub name: &'static str,
    pub package: &'static str,
}

/// Everything `dev up` runs or calls. Postgres' own programs are checked in `bin_dir`.
pub const PROGRAMS: &[Program] = &[
    Program { name: "etcd", package: "etcd-server" },
    Program { name: "patroni", package: "patroni" },
    Program { name: "pgbouncer", package: "pgbouncer" },
    Program { name: "pgbackrest", package: "pgbackrest" },
    Program { name: "psql", package: "postgresql-client-15" },
    Program { name: "setpriv", package: "util-linux" },
    Program { name: "flock", package: "util-linux" },
    Program { name: "setsid", package: "util-linux" },
    Program { name: "bash", package: "bash" },
];

/// Patroni's etcd3 DCS needs this Python module, which the patroni package only suggests.
pub const PYTHON_ETCD: (&str, &str) = ("/usr/lib/python3/dist-packages/etcd", "python3-etcd");
pub const PYTHON_CONSUL: (&str, &str) = ("/usr/lib/python3/dist-packages/consul", "python3-consul");

/// The full path of `program` on PATH, or in the sbin directories a user's PATH often
/// lacks (pgbouncer is in /usr/sbin).
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// `program` by its full path when it is installed (so that a process started as another
/// user does not depend on PATH), else by name (the error then names it).
pub fn program(name: &str) -> PathBuf {
    find_program(name).unwrap_or_else(|| PathBuf::from(name))
}

/// The Debian packages of whatever is missing, each named once with what needs it.
pub fn missing_packages(bin_dir: &str, pg_version: u32) -> Vec<(String, String)> {
    let mut missing: Vec<(String, String)> = Vec::new();
    let mut add = |what: String, package: &str| {
        if !missing.iter().any(|(_, p)| p == package) {
            missing.push((what, package.to_owned()));
        }
    };
    for program in PROGRAMS {
        if find_program(program.name).is_none() {
            add(format!("`{}`", program.name), program.package);
        }
    }
    if !Path::new(bin_dir).join("postgres").is_file() {
        add(format!("PostgreSQL {pg_version} ({bin_dir}/postgres)"), &format!("postgresql-{pg_version}"));
    }
    if !Path::new(PYTHON_ETCD.0).exists() {
        add("Patroni's etcd3 support (python3 module etcd)".into(), PYTHON_ETCD.1);
    }
    missing
}

/// Who runs Postgres and its tools: the caller, or `postgres` when the caller is root
/// (Postgres refuses to run as root).
#[derive(Debug, Clone)]
pub struct OsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Commands are wrapped in setpriv to drop from root to this user.
    pub switch: bool,
}

impl OsUser {
    pub fn for_caller() -> Result<OsUser, DevError> {
        // SAFETY: geteuid cannot fail.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            let name = passwd_entry(|_, uid, _| uid == euid).map(|(n, _, _)| n).unwrap_or_else(|| euid.to_string());
            // SAFETY: getegid cannot fail.
            let gid = unsafe { libc::getegid() };
            return Ok(OsUser { name, uid: euid, gid, switch: false });
        }
        let (name, uid, gid) = passwd_entry(|name, _, _| name == "postgres").ok_or(DevError::NoPostgresUser)?;
        Ok(OsUser { name, uid, gid, switch: true })
    }

    /// A command that runs `program` as this user. setpriv execs, so the child's pid is
    /// the program's own.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        if self.switch {
            let mut cmd = Command::new(self::program("setpriv"));
            cmd.args(["--reuid", &self.uid.to_string(), "--regid", &self.gid.to_string(), "--init-groups", "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        }
    }

    /// Gives `path` (not what is under it) to this user.
    pub fn own(&self, path: &Path) -> Result<(), DevError> {
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid)).map_err(|e| DevError::io(format!("chown {}", path.display()), e))
    }

    /// Whether this user can enter `dir` (every parent must be searchable).
    pub fn can_enter(&self, dir: &Path) -> bool {
        !self.switch || self.command("test").arg("-x").arg(dir).status().is_ok_and(|s| s.success())
    }
}

fn passwd_entry(matches: impl Fn(&str, u32, u32) -> bool) -> Option<(String, u32, u32)> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        let (uid, gid) = (fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?);
        matches(fields[0], uid, gid).then(|| (fields[0].to_owned(), uid, gid))
    })
}

pub fn alive(pid: u32) -> bool {
    // A zombie still answers kill(0); /proc says whether it really runs.
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = state.rsplit_once(')').map(|(_, rest)| rest.trim_start().chars().next());
    matches!(state, Some(Some(s)) if s != 'Z' && s != 'X')
}

pub fn signal(pid: u32, signal: i32) {
    // SAFETY: kill has no memory effects; a stale pid is checked by the caller.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// The program name of a running pid (to not signal a pid the kernel gave to another).
pub fn command_line(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline")).map(|b| String::from_utf8_lossy(&b).replace('\0', " ")).unwrap_or_default()
}

/// Waits until every pid is gone or `timeout` passes; true when all are gone.
pub fn wait_gone(pids: &[u32], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pids.iter().all(|&pid| !alive(pid)) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The postmaster's pid from `postmaster.pid` in a data directory, if it runs.
pub fn postmaster_pid(data_dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    alive(pid).then_some(pid)
}
