//! A `pgnomad dev` cluster for tests and the failover benchmark: started with the real
//! binary in its own state directory with its own ports, stopped on drop; a writer that
//! inserts a row every 100 ms through PgBouncer with psql and records what was
//! acknowledged; a sampler that asks every member whether it accepts writes.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support_procs::*;

/// A stack for one machine: etcd, the given members, 10 s ttl, synchronous mode, backups.
pub fn stack_text(cluster: &str, members: u32) -> String {
    format!(
        r#"
cluster "{cluster}" {{}}
postgres {{
  members = {members}
}}
patroni {{
  dcs           = "etcd3"
  etcd_hosts    = ["127.0.0.1:2379"]
  ttl           = 10
  loop_wait     = 2
  retry_timeout = 4
}}
pgadmin {{
  enabled = false
}}
backup {{
  schedule {{
    full = "0 1 * * 1"
  }}
}}
"#
    )
}

/// Every program a dev cluster runs: a missing one fails the test, naming its package.
pub fn require_dev_programs() {
    for (program, package) in [
        ("etcd", "etcd-server"),
        ("patroni", "patroni"),
        ("pgbouncer", "pgbouncer"),
        ("pgbackrest", "pgbackrest"),
        ("psql", "postgresql-client-15"),
        ("setpriv", "util-linux"),
    ] {
        require(program, package);
    }
    pg_bin("postgres");
    assert!(
        Path::new("/usr/lib/python3/dist-packages/etcd").exists(),
        "Patroni's etcd3 DCS needs python3-etcd (apt-get install python3-etcd)"
    );
}

pub fn pgnomad() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pgnomad"))
}

pub struct DevCluster {
    pub dir: tempfile::TempDir,
    pub stack_file: PathBuf,
    pub state_dir: PathBuf,
    pub cluster: String,
    pub members: usize,
    /// How long `dev up` took.
    pub up_took: Duration,
    /// Last, so it is let go once the cluster's processes have stopped.
    _slot: crate::cluster_slot::ClusterSlot,
}

impl DevCluster {
    pub fn up(cluster: &str, members: u32) -> DevCluster {
        require_dev_programs();
        // postgres must reach the state directory: a temp dir it owns.
        let dir = postgres_tempdir();
        let stack_file = dir.path().join("pgnomad.hcl");
        std::fs::write(&stack_file, stack_text(cluster, members)).unwrap();
        let mut dev = DevCluster::at(dir, stack_file, cluster, members as usize);
        dev.start();
        dev
    }

    /// The cluster of `stack_file` (in `dir`, state beside it), not started yet; it holds the
    /// cluster slot from now on.
    pub fn at(dir: tempfile::TempDir, stack_file: PathBuf, cluster: &str, members: usize) -> DevCluster {
        let slot = crate::cluster_slot::one_cluster_at_a_time();
        let state_dir = stack_file.with_file_name("state");
        DevCluster { dir, stack_file, state_dir, cluster: cluster.to_owned(), members, up_took: Duration::ZERO, _slot: slot }
    }

    /// `dev up` (again); panics with the logs if it fails.
    pub fn start(&mut self) {
        let started = Instant::now();
        let out = self.dev(&["up", "--timeout", "150"]).output().unwrap();
        self.up_took = started.elapsed();
        assert!(
            out.status.success(),
            "pgnomad dev up failed:\n{}{}\nsupervisor log:\n{}",
            text(&out.stdout),
            text(&out.stderr),
            self.logs()
        );
    }

    pub fn dev(&self, args: &[&str]) -> Command {
        let mut cmd = pgnomad();
        cmd.arg("dev")
            .arg(args[0])
            .arg("-f")
            .arg(&self.stack_file)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(&args[1..])
            .stdin(Stdio::null());
        cmd
    }

    pub fn logs(&self) -> String {
        let mut all = std::fs::read_to_string(self.state_dir.join("supervisor.log")).unwrap_or_default();
        for i in 0..self.members {
            let log = self.state_dir.join(format!("member-{i}/log/patroni.log"));
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            all.push_str(&format!("\n--- {} (end)\n{}", log.display(), tail.into_iter().rev().collect::<Vec<_>>().join("\n")));
        }
        all
    }

    pub fn status(&self) -> serde_json::Value {
        let out = run_ok("pgnomad dev status --json", &mut self.dev(&["status", "--json"]));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    pub fn secrets(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.state_dir.join("secrets.json")).unwrap()).unwrap()
    }

    pub fn pgpass(&self) -> PathBuf {
        self.state_dir.join("client/pgpass")
    }

    pub fn pgbouncer_port(&self) -> String {
        let status = self.status();
        status["pgbouncer"]["address"].as_str().unwrap().rsplit_once(':').unwrap().1.to_owned()
    }

    /// psql through PgBouncer as `user`, the password from PGPASSFILE (or `password`).
    pub fn through_pgbouncer(&self, port: &str, user: &str, password: Option<&str>, database: &str, sql: &str) -> Output {
        let mut cmd = Command::new("psql");
        cmd.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", port, "-U", user, "-d", database, "-c", sql])
            .stdin(Stdio::null());
        match password {
            Some(p) => cmd.env("PGPASSWORD", p).env_remove("PGPASSFILE"),
            None => cmd.env("PGPASSFILE", self.pgpass()).env_remove("PGPASSWORD"),
        };
        cmd.output().unwrap()
    }

    pub fn app_sql(&self, sql: &str) -> String {
        let port = self.pgbouncer_port();
        let out = self.through_pgbouncer(&port, "app", None, "app", sql);
        assert!(out.status.success(), "{sql}: {}", text(&out.stderr));
        text(&out.stdout).trim().to_owned()
    }

    pub fn run_dir(&self, index: usize) -> PathBuf {
        self.state_dir.join(format!("member-{index}/run"))
    }

    pub fn pg_port(&self, index: usize) -> u16 {
        let ports: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(self.state_dir.join("state.json")).unwrap()).unwrap();
        ports["ports"]["members"][index][0].as_u64().unwrap() as u16
    }

    /// One query as the superuser over member `index`'s socket; None if it does not answer.
    pub fn member_sql(&self, index: usize, database: &str, sql: &str) -> Option<String> {
        member_sql(&self.run_dir(index), self.pg_port(index), database, sql)
    }

    /// The member that is leader and runs as primary, by Patroni's REST API.
    pub fn primary(&self) -> Option<usize> {
        let status = self.status();
        let members = status["members"].as_array().unwrap();
        let leader = members.iter().position(|m| m["role"] == "leader")?;
        (self.member_sql(leader, "postgres", "SELECT pg_is_in_recovery()").as_deref() == Some("f")).then_some(leader)
    }

    /// Waits for a leader other than `not` that takes writes, with PgBouncer pointing at it.
    pub fn wait_new_primary(&self, not: Option<usize>, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status();
            if let Some(p) = self.primary().filter(|p| Some(*p) != not) {
                if status["pgbouncer"]["points_at"] == format!("member-{p}") {
                    return p;
                }
            }
            assert!(Instant::now() < deadline, "no new primary that PgBouncer points at after {timeout:?}: {status:#}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every other member streams from `primary` and Patroni has named one of
    /// them synchronous standby (until then, in synchronous mode, no replica may take over).
    pub fn wait_streaming(&self, primary: usize, timeout: Duration) {
        let names: Vec<String> = (0..self.members).filter(|&i| i != primary).map(|i| format!("'member-{i}'")).collect();
        let sql = format!(
            "SELECT count(DISTINCT application_name) || '/' || count(*) FILTER (WHERE sync_state = 'sync') FROM pg_stat_replication WHERE state = 'streaming' AND application_name IN ({})",
            names.join(",")
        );
        let deadline = Instant::now() + timeout;
        loop {
            if self.member_sql(primary, "postgres", &sql).as_deref() == Some(&format!("{}/1", self.members - 1))
                && self.status()["members"].as_array().unwrap().iter().any(|m| m["role"] == "sync standby")
            {
                return;
            }
            assert!(Instant::now() < deadline, "not every replica streams from member-{primary} after {timeout:?}:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn pid(&self, index: usize, which: &str) -> u32 {
        let status = self.status();
        status["members"][index][which].as_u64().unwrap_or_else(|| panic!("no {which} for member-{index}: {status}")) as u32
    }

    /// pgbackrest with member `index`'s rendered config, as postgres.
    pub fn pgbackrest(&self, index: usize, args: &[&str]) -> Output {
        let conf = self.state_dir.join(format!("member-{index}/config/pgbackrest.conf"));
        run(as_postgres(require("pgbackrest", "pgbackrest"))
            .arg(format!("--config={}", conf.display()))
            .arg(format!("--stanza={}", self.cluster))
            .args(args))
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        let _ = self.dev(&["down"]).output();
    }
}

pub fn member_sql(run_dir: &Path, port: u16, database: &str, sql: &str) -> Option<String> {
    let out = as_postgres("psql")
        .args(["-X", "-At", "-h"])
        .arg(run_dir)
        .args(["-p", &port.to_string(), "-U", "postgres", "-d", database, "-c", sql])
        .env("PGCONNECT_TIMEOUT", "2")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status.success().then(|| text(&out.stdout).trim().to_owned())
}

pub fn kill9(pid: u32) {
    run_ok(&format!("kill -9 {pid}"), Command::new("kill").args(["-9", &pid.to_string()]));
}

/// A process held with SIGSTOP until this is dropped (SIGCONT), even when a test panics.
pub struct StoppedProcess(u32);

impl StoppedProcess {
    pub fn new(pid: u32) -> StoppedProcess {
        run_ok(&format!("kill -STOP {pid}"), Command::new("kill").args(["-STOP", &pid.to_string()]));
        StoppedProcess(pid)
    }
}

impl Drop for StoppedProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0.to_string()]).status();
    }
}

/// One insert's fate.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub id: u64,
    pub acknowledged: bool,
    pub started: Instant,
    pub ended: Instant,
    pub error: String,
}

/// Inserts `id` = 1, 2, … into `acks` through PgBouncer every 100 ms, one psql each.
pub struct Writer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    pub attempts: Arc<Mutex<Vec<Attempt>>>,
}

impl Writer {
    pub fn start(dev: &DevCluster) -> Writer {
        dev.app_sql("CREATE TABLE IF NOT EXISTS acks (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())");
        let first = dev.app_sql("SELECT coalesce(max(id), 0) FROM acks").parse::<u64>().unwrap() + 1;
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let (port, pgpass) = (dev.pgbouncer_port(), dev.pgpass());
        let handle = {
            let (stop, attempts) = (stop.clone(), attempts.clone());
            std::thread::spawn(move || {
                let mut id = first;
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let out = Command::new("psql")
                        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &port, "-U", "app", "-d", "app"])
                        .args(["-c", &format!("INSERT INTO acks (id) VALUES ({id})")])
                        .env("PGPASSFILE", &pgpass)
                        .env("PGCONNECT_TIMEOUT", "10")
                        .stdin(Stdio::null())
                        .output()
                        .unwrap();
                    let attempt = Attempt {
                        id,
                        acknowledged: out.status.success(),
                        started,
                        ended: Instant::now(),
                        error: text(&out.stderr).trim().to_owned(),
                    };
                    attempts.lock().unwrap().push(attempt);
                    id += 1;
                    next += Duration::from_millis(100);
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else {
                        next = now;
                    }
                }
            })
        };
        Writer { stop, handle: Some(handle), attempts }
    }

    pub fn snapshot(&self) -> Vec<Attempt> {
        self.attempts.lock().unwrap().clone()
    }

    /// Waits until a write started after `since` is acknowledged.
    pub fn wait_ack_after(&self, since: Instant, timeout: Duration) {
        wait_until("a write acknowledged after the event", timeout, || self.snapshot().iter().any(|a| a.acknowledged && a.started > since));
    }

    pub fn stop(mut self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        self.snapshot()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The longest time without an acknowledged write around `event`: from the last ack before
/// it to the first ack after it.
pub fn write_gap(attempts: &[Attempt], event: Instant) -> Duration {
    let before = attempts.iter().filter(|a| a.acknowledged && a.ended <= event).map(|a| a.ended).max().unwrap_or(event);
    let after =
        attempts.iter().filter(|a| a.acknowledged && a.ended > event).map(|a| a.ended).min().expect("a write acknowledged after the event");
    after - before
}

/// The longest time between two consecutive acknowledged writes among those around
/// `[from, to]` (an event and the moment it was over).
pub fn longest_gap(attempts: &[Attempt], from: Instant, to: Instant) -> Duration {
    let mut ends: Vec<Instant> = attempts.iter().filter(|a| a.acknowledged).map(|a| a.ended).collect();
    ends.sort();
    ends.windows(2).filter(|w| w[1] > from && w[0] < to).map(|w| w[1] - w[0]).max().unwrap_or_default()
}

/// Failed writes that started in `[from, to)`.
pub fn errors_between(attempts: &[Attempt], from: Instant, to: Instant) -> Vec<Attempt> {
    attempts.iter().filter(|a| !a.acknowledged && a.started >= from && a.started < to).cloned().collect()
}

/// Acknowledged ids missing from member `index`'s `acks`.
pub fn lost_on(dev: &DevCluster, index: usize, attempts: &[Attempt]) -> Vec<u64> {
    let present: std::collections::HashSet<u64> =
        dev.member_sql(index, "app", "SELECT id FROM acks").expect("the primary answers").lines().map(|l| l.parse().unwrap()).collect();
    attempts.iter().filter(|a| a.acknowledged && !present.contains(&a.id)).map(|a| a.id).collect()
}

/// Asks every member `pg_is_in_recovery()` every 200 ms; remembers each moment when more
/// than one accepted writes.
pub struct SplitBrainSampler {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<(usize, Vec<String>)>>,
}

impl SplitBrainSampler {
    pub fn start(dev: &DevCluster) -> SplitBrainSampler {
        let members: Vec<(PathBuf, u16)> = (0..dev.members).map(|i| (dev.run_dir(i), dev.pg_port(i))).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut samples, mut violations) = (0, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let writable: Vec<usize> = members
                        .iter()
                        .enumerate()
                        .filter(|(_, (dir, port))| member_sql(dir, *port, "postgres", "SELECT pg_is_in_recovery()").as_deref() == Some("f"))
                        .map(|(i, _)| i)
                        .collect();
                    samples += 1;
                    if writable.len() > 1 {
                        violations.push(format!("sample {samples}: members {writable:?} accept writes"));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                (samples, violations)
            })
        };
        SplitBrainSampler { stop, handle: Some(handle) }
    }

    /// (samples taken, moments with two writable members).
    pub fn stop(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

/// Held for a whole test that brings up more than one cluster or acts between them (the
/// backup and upgrade tests): the same slot every cluster takes (cluster_slot).
pub fn one_dev_cluster() -> crate::cluster_slot::ClusterSlot {
    crate::cluster_slot::one_cluster_at_a_time()
}
