//! Real processes for tests: programs that must be installed, free ports, the `postgres`
//! OS user, a throwaway Postgres, and guards that stop what a test started even when it
//! panics.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The path of `program`, or a failure naming the Debian package that provides it: a test
/// whose program is missing fails, it never skips.
pub fn require(program: &str, package: &str) -> PathBuf {
    let candidates = [PathBuf::from(program)]
        .into_iter()
        .chain(["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/lib/postgresql/15/bin"].iter().map(|dir| Path::new(dir).join(program)));
    for path in candidates {
        if path.is_absolute() && path.is_file() {
            return path;
        }
    }
    panic!("`{program}` is not installed: this test runs the real program (apt-get install {package})");
}

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

pub fn pg_bin(program: &str) -> PathBuf {
    require(&format!("{PG_BIN}/{program}"), "postgresql-15")
}

/// A port nobody listens on right now on `host`.
pub fn free_port(host: &str) -> u16 {
    TcpListener::bind((host, 0)).expect("bind a free port").local_addr().unwrap().port()
}

fn id(flag: &str) -> u32 {
    let out = Command::new("id").args([flag, "postgres"]).output().expect("run id");
    assert!(out.status.success(), "there is no `postgres` OS user (apt-get install postgresql-15 creates it)");
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("numeric id")
}

/// Gives `path` and everything under it to the postgres user.
pub fn chown_postgres(path: &Path) {
    let (uid, gid) = (id("-u"), id("-g"));
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        std::os::unix::fs::lchown(&p, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
        if p.is_dir() && !p.is_symlink() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
}

/// A command run as the postgres user (Postgres, PgBouncer and Patroni refuse root). The
/// wrapper execs, so the child's pid is the program's own.
pub fn as_postgres(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(require("setpriv", "util-linux"));
    cmd.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"]).arg(program);
    cmd
}

/// A temporary directory the postgres user owns.
pub fn postgres_tempdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("pgnomad-test-").tempdir().expect("temp dir");
    chown_postgres(dir.path());
    dir
}

/// Kills its process (SIGINT, then SIGKILL) when dropped, panic or not.
pub struct Guard {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Guard {
    /// Starts `cmd` with stdout and stderr to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Guard {
        let file = std::fs::File::create(&log).expect("log file");
        let child =
            cmd.stdin(Stdio::null()).stdout(file.try_clone().unwrap()).stderr(file).spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        Guard { name: name.to_owned(), child: Some(child), log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test with the log if the process is gone.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            panic!("{} exited ({status}):\n{}", self.name, self.log_text());
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Polls `ready` every 100 ms until it holds or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Output of a command that must succeed, as text; the failure shows both streams.
pub fn run_ok(what: &str, cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}", out.status, text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run command")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A throwaway Postgres 15 cluster run as the postgres user, laid out as a pgnomad member
/// is: data in `data_dir`, socket in `run_dir`, listening on 127.0.0.1:`port`, with the
/// superuser's password set and SCRAM everywhere (as Patroni's initdb and pg_hba do).
pub struct Postgres {
    pub port: u16,
    pub guard: Guard,
}

impl Postgres {
    /// `files` (pg_hba.conf, …) replace initdb's in the data directory before the start.
    pub fn start(
        data_dir: &Path,
        run_dir: &Path,
        port: u16,
        superuser_password: &str,
        settings: &[(&str, String)],
        files: &[(&str, String)],
    ) -> Postgres {
        let initdb = pg_bin("initdb");
        let postgres = pg_bin("postgres");
        let parent = data_dir.parent().expect("data dir has a parent");
        let pwfile = parent.join("initdb.pw");
        std::fs::write(&pwfile, superuser_password).unwrap();
        std::fs::create_dir_all(run_dir).unwrap();
        chown_postgres(parent);
        chown_postgres(run_dir);
        run_ok(
            "initdb",
            as_postgres(&initdb)
                .arg("--pgdata")
                .arg(data_dir)
                .args(["--username=postgres", "--auth=scram-sha-256", "--encoding=UTF8", "--data-checksums", "--no-sync"])
                .arg(format!("--pwfile={}", pwfile.display())),
        );
        std::fs::remove_file(&pwfile).unwrap();
        for (name, text) in files {
            std::fs::write(data_dir.join(name), text).unwrap();
        }
        chown_postgres(data_dir);
        let mut cmd = as_postgres(&postgres);
        cmd.arg("-D").arg(data_dir);
        let base = [
            ("port", port.to_string()),
            ("listen_addresses", "127.0.0.1".to_owned()),
            ("unix_socket_directories", run_dir.display().to_string()),
            ("fsync", "off".to_owned()),
            ("password_encryption", "scram-sha-256".to_owned()),
        ];
        for (name, value) in base.iter().chain(settings) {
            cmd.arg("-c").arg(format!("{name}={value}"));
        }
        let log = parent.join("postgres.log");
        let mut guard = Guard::spawn("postgres", cmd, log);
        let pg_isready = pg_bin("pg_isready");
        wait_until("Postgres to accept connections", Duration::from_secs(30), || {
            guard.assert_running();
            Command::new(&pg_isready).args(["-q", "-h"]).arg(run_dir).args(["-p", &port.to_string()]).status().is_ok_and(|s| s.success())
        });
        Postgres { port, guard }
    }

    /// psql over TCP as `user` with `password`, in `database` (the socket is for the
    /// member's own OS user).
    pub fn psql(&self, user: &str, password: &str, database: &str) -> Command {
        let mut cmd = Command::new(require("psql", "postgresql-client-15"));
        cmd.args(["-X", "-v", "ON_ERROR_STOP=1", "-At", "-h", "127.0.0.1"])
            .args(["-p", &self.port.to_string(), "-U", user, "-d", database])
            .env("PGPASSWORD", password)
            .env_remove("PGPASSFILE");
        cmd
    }

    /// One query's output, as the superuser or another role; panics on failure.
    pub fn query(&self, user: &str, password: &str, database: &str, sql: &str) -> String {
        run_ok(&format!("psql as {user} in {database}: {sql}"), self.psql(user, password, database).args(["-c", sql])).trim().to_owned()
    }
}

/// Runs `cmd` with its stderr piped until a line of it contains `at`, then sends `signal` to
/// that process alone (not its group: a guard it started must live on), and reads its stderr
/// to the end, which comes when every process holding it (a guard too) has ended. How the
/// process ended and everything said.
pub fn signal_at(mut cmd: Command, at: &str, signal: i32) -> (std::process::ExitStatus, String) {
    use std::io::{BufRead, Read};
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("the command starts");
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "{cmd:?} ended before it said {at:?}: {said}");
        said.push_str(&line);
        if line.contains(at) {
            // SAFETY: a signal to the child this test started.
            assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
            break;
        }
    }
    let status = child.wait().unwrap();
    stderr.read_to_string(&mut said).unwrap();
    (status, said)
}
