//! Driving a stack deployed on the cluster double through the real `pgnomad` binary: the
//! stack file, `pgnomad` with the doubles' addresses, Patroni's view, SQL through PgBouncer
//! and on a member, a writer whose acknowledged rows must survive. Shared by the end-to-end
//! test (`tests/cluster.rs`) and the failover benchmark (`benches/nomad_failover.rs`).

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Cluster, ClusterConfig, TaskRef};

/// The task driver the stack runs its programs with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StackDriver {
    Docker,
    /// `driver = "exec"`, with host volumes owned by the nodes' `postgres` (exec tasks may not
    /// run as root, so no prestart task can hand fresh volumes over, and the hostpath CSI
    /// plugin makes root-owned directories).
    Exec,
}

impl StackDriver {
    pub fn name(self) -> &'static str {
        match self {
            StackDriver::Docker => "docker",
            StackDriver::Exec => "exec",
        }
    }

    /// The cluster this driver needs: with exec, every node has a host volume for every
    /// member, owned by the nodes' postgres user (the image's, 999:999).
    pub fn cluster_config(self, time_scale: f64) -> ClusterConfig {
        let mut config = ClusterConfig { time_scale, ..ClusterConfig::default() };
        if self == StackDriver::Exec {
            for member in 0..3 {
                config.host_volumes.push((format!("main-member-{member}"), vec![0, 1, 2]));
            }
            config.host_volume_owner = Some((999, 999));
        }
        config
    }
}

/// Backup schedules no test run reaches: the double launches periodic jobs on their cron as
/// Nomad does, and a backup the schedule started mid-test would hold a forced one back.
pub const QUIET_SCHEDULES: &str =
    "  schedule {\n    full = \"0 0 1 1 * 2099\"\n    diff = \"0 0 1 1 * 2099\"\n    incr = \"0 0 1 1 * 2099\"\n  }\n";

/// The default stack with what this machine forces: Patroni's DCS is the test's etcd (the
/// Consul double has no KV or sessions), and pgAdmin is off (its image cannot be built here);
/// and [`QUIET_SCHEDULES`].
pub fn stack(cluster: &Cluster, driver: StackDriver) -> String {
    let mut text = format!(
        "cluster \"main\" {{}}\n\npatroni {{\n  dcs        = \"etcd3\"\n  etcd_hosts = [\"{}\"]\n}}\n\npgadmin {{\n  enabled = false\n}}\n\nbackup {{\n{QUIET_SCHEDULES}}}\n",
        cluster.etcd.endpoint
    );
    if driver == StackDriver::Exec {
        text.push_str("\npostgres {\n  driver = \"exec\"\n}\n\nstorage {\n  type = \"host\"\n}\n");
    }
    text
}

pub struct Deployed {
    pub cluster: Cluster,
    pub dir: tempfile::TempDir,
    pub driver: StackDriver,
    /// Last, so it is let go once the cluster above has stopped.
    _slot: crate::cluster_slot::ClusterSlot,
}

impl Deployed {
    /// A cluster for `driver` and a directory with the stack file; nothing registered yet.
    pub fn new(driver: StackDriver, time_scale: f64) -> Deployed {
        let slot = crate::cluster_slot::one_cluster_at_a_time();
        let cluster = Cluster::start(driver.cluster_config(time_scale));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pgnomad.hcl"), stack(&cluster, driver)).unwrap();
        Deployed { cluster, dir, driver, _slot: slot }
    }

    pub fn pgnomad(&self, args: &[&str]) -> Output {
        self.pgnomad_command(args).output().expect("pgnomad runs")
    }

    /// The binary pointed at the doubles, to spawn (its output piped).
    pub fn pgnomad_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pgnomad"));
        command
            .args(args)
            .current_dir(self.dir.path())
            .env("NOMAD_ADDR", self.cluster.nomad.address())
            .env("CONSUL_HTTP_ADDR", self.cluster.consul.address())
            .env_remove("NOMAD_TOKEN")
            .env_remove("NOMAD_NAMESPACE")
            .env_remove("NOMAD_REGION")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    pub fn secret(&self, job: &str, key: &str) -> String {
        let client = self.cluster.nomad.client();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let variable = runtime.block_on(client.read_variable(&format!("nomad/jobs/{job}"))).unwrap().expect("the job's variable exists");
        variable.items.get(key).unwrap_or_else(|| panic!("no {key} in nomad/jobs/{job}")).clone()
    }

    /// Patroni's /cluster, read from whichever member answers.
    pub fn patroni_cluster(&self) -> Option<Value> {
        self.patroni_cluster_of("main")
    }

    /// The same for the cluster `name` on this double (a restored clone beside `main`).
    pub fn patroni_cluster_of(&self, name: &str) -> Option<Value> {
        for i in 0..3 {
            let Some(address) = self.cluster.address_of(&format!("{name}-postgres"), &format!("member-{i}"), "patroni") else { continue };
            if let Some(body) = http_get(&address, "/cluster") {
                if let Ok(value) = serde_json::from_str::<Value>(&body) {
                    return Some(value);
                }
            }
        }
        None
    }

    pub fn leader(&self) -> Option<String> {
        let cluster = self.patroni_cluster()?;
        cluster["members"]
            .as_array()?
            .iter()
            .find(|m| m["role"] == "leader" && m["state"] == "running")
            .and_then(|m| m["name"].as_str())
            .map(str::to_string)
    }

    /// One leader, every other member streaming from it, one of them the synchronous standby.
    pub fn healthy_topology(&self) -> Result<(String, Vec<String>), String> {
        let cluster = self.patroni_cluster().ok_or("no member answers /cluster")?;
        let members = cluster["members"].as_array().ok_or("no members")?;
        let leaders: Vec<&Value> = members.iter().filter(|m| m["role"] == "leader").collect();
        if leaders.len() != 1 || members.len() != 3 {
            return Err(format!("{} members, {} leaders: {cluster}", members.len(), leaders.len()));
        }
        let replicas: Vec<String> =
            members.iter().filter(|m| m["role"] != "leader").map(|m| m["name"].as_str().unwrap_or("?").to_string()).collect();
        if !members.iter().any(|m| m["role"] == "sync_standby") {
            return Err(format!("no synchronous standby: {cluster}"));
        }
        let leader = leaders[0]["name"].as_str().unwrap_or("?").to_string();
        let streaming = self.member_sql(&leader, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'").unwrap_or_default();
        if streaming.trim() != "2" {
            return Err(format!("{} replicas stream from {leader}", streaming.trim()));
        }
        Ok((leader, replicas))
    }

    /// The patroni task of `member` (its container, or its process with exec).
    pub fn patroni_task(&self, member: &str) -> Option<TaskRef> {
        self.cluster.task("main-postgres", member, "patroni")
    }

    /// SQL on a member, as postgres over its local socket inside the patroni task.
    pub fn member_sql(&self, member: &str, sql: &str) -> Option<String> {
        self.member_sql_of("main", member, sql)
    }

    /// The same on a member of the cluster `name`.
    pub fn member_sql_of(&self, name: &str, member: &str, sql: &str) -> Option<String> {
        let out = self
            .cluster
            .task(&format!("{name}-postgres"), member, "patroni")?
            .exec(&["psql", "-X", "-At", "-h", "/alloc/tmp", "-d", "postgres", "-c", sql])
            .ok()?;
        out.status.success().then(|| text(&out.stdout).trim().to_string())
    }

    /// Each PgBouncer's `[databases]` as rendered now and its last log lines: where it
    /// sends clients, for a failure's message.
    pub fn pgbouncer_state(&self) -> String {
        self.cluster
            .allocations("main-pgbouncer")
            .iter()
            .filter_map(|a| {
                let id = &a.facts.alloc_id;
                let task = super::TaskRef::Container(format!("pgbouncer-{}-{}", a.facts.group_name(), &id[..id.len().min(8)]));
                let databases = task
                    .exec(&["sh", "-c", "grep -A2 '^\\[databases\\]' /secrets/pgbouncer.ini | sed 's/password=[^ ]*/password=…/'"])
                    .ok()?;
                // Its own view of pools, servers and clients, from the admin console.
                let password = format!("PGPASSWORD={}", self.secret("main-pgbouncer", "pgbouncer_auth_password"));
                let admin = ["SHOW POOLS", "SHOW SERVERS", "SHOW CLIENTS"].map(|show| {
                    task.exec(&[
                        "env",
                        &password,
                        "psql",
                        "-X",
                        "-A",
                        "-h",
                        "/alloc/tmp",
                        "-p",
                        "6432",
                        "-U",
                        "pgbouncer_auth",
                        "-d",
                        "pgbouncer",
                        "-c",
                        show,
                    ])
                    .map(|out| format!("{show}:\n{}{}", text(&out.stdout), text(&out.stderr)))
                    .unwrap_or_default()
                });
                Some(format!(
                    "--- {} ({})\n{}{}\n{}",
                    task.name(),
                    a.client_status,
                    text(&databases.stdout),
                    admin.join(""),
                    task.logs_tail(60)
                ))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits for a write through PgBouncer acknowledged after `since`; the failure shows
    /// what each PgBouncer holds.
    pub fn wait_write_after(&self, writer: &Writer, since: Instant, timeout: Duration) {
        if let Err(why) = writer.acked_after(since, timeout) {
            panic!("{why}\nPgBouncer:\n{}", self.pgbouncer_state());
        }
    }

    pub fn pgbouncer_address(&self) -> String {
        self.cluster.address_of("main-pgbouncer", "pgbouncer", "pgbouncer").expect("a running PgBouncer")
    }

    pub fn app_sql(&self, sql: &str) -> Output {
        let address = self.pgbouncer_address();
        psql(&address, &self.secret("main-postgres", "password_app"), sql)
    }

    /// `pgnomad run` until healthy, then the topology: returns the time `run` took.
    pub fn run_until_healthy(&self) -> Duration {
        let started = Instant::now();
        let run = self.pgnomad(&["run", "--timeout", "10m"]);
        if !run.status.success() {
            eprintln!("members' logs after a failed run:\n{}", self.member_logs());
        }
        assert_ok("pgnomad run", &run);
        let took = started.elapsed();
        let mut topology = Err(String::new());
        wait_until("one leader, two streaming replicas, a synchronous standby", Duration::from_secs(180), || {
            topology = self.healthy_topology();
            topology.is_ok()
        });
        took
    }

    /// The primary's postmaster (`postmaster`) or its whole patroni task (`task`: the
    /// container, or with exec every process of the task) is killed.
    pub fn kill_primary(&self, fault: Fault) -> String {
        let leader = self.leader().expect("a leader before the fault");
        let task = self.patroni_task(&leader).expect("the leader's patroni task");
        match fault {
            Fault::Postmaster => assert_ok("kill postmaster", &task.exec(&["pkill", "-9", "-o", "-x", "postgres"]).unwrap()),
            Fault::Task => task.kill().expect("killing the primary's task"),
        }
        leader
    }

    /// Waits until a member other than `old` leads; the failure shows every member's log.
    pub fn wait_new_leader(&self, old: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.leader().is_some_and(|l| l != old) {
            assert!(
                Instant::now() < deadline,
                "no new leader {timeout:?} after the fault: {:?}\n{}",
                self.patroni_cluster(),
                self.member_logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn member_logs(&self) -> String {
        self.member_logs_of("main")
    }

    /// Each member's last log lines of the cluster `name`, the whole logs written to files.
    pub fn member_logs_of(&self, name: &str) -> String {
        (0..3)
            .filter_map(|i| self.cluster.task(&format!("{name}-postgres"), &format!("member-{i}"), "patroni"))
            .map(|t| {
                let logs = t.logs_tail(400);
                let path = std::env::temp_dir().join(format!("pgnomad-{}.log", t.name().replace([' ', '(', ')', ':'], "_")));
                let _ = std::fs::write(&path, &logs);
                format!("--- {} (whole log: {})\n{}", t.name(), path.display(), {
                    let lines: Vec<&str> = logs.lines().collect();
                    lines[lines.len().saturating_sub(30)..].join("\n")
                })
            })
            .chain(self.failed_allocations_of(&format!("{name}-postgres")))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The task events of `job`'s allocations that failed: a task that never started has no
    /// log, and its events say why (a driver failure, a template that did not render).
    fn failed_allocations_of(&self, job: &str) -> Vec<String> {
        let client = self.cluster.nomad.client();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let allocations = runtime.block_on(client.job_allocations(job)).unwrap_or_default();
        allocations
            .iter()
            .filter(|a| a.client_status == "failed" || a.task_states.values().any(|t| t.failed || t.restarts > 0))
            .map(|a| {
                let events: Vec<String> = a
                    .task_events()
                    .map(|(task, e)| format!("  {task}: {}: {} {}", e.event_type, e.display_message, e.driver_error))
                    .collect();
                format!(
                    "--- allocation {} of {} ({}, {})\n{}",
                    a.id,
                    a.task_group,
                    a.client_status,
                    a.client_description,
                    events.join("\n")
                )
            })
            .collect()
    }
}

impl Deployed {
    /// Table `pitr` with 50 rows `A`, then a time T (RFC 3339, UTC, microseconds) a second
    /// after them, then 30 rows `B` a second later: the restore tests' point in time. T.
    pub fn rows_a_time_rows_b(&self) -> String {
        assert_ok("create table", &self.app_sql("CREATE TABLE pitr (id int PRIMARY KEY, phase text)"));
        assert_ok("rows A", &self.app_sql("INSERT INTO pitr SELECT g, 'A' FROM generate_series(1, 50) g"));
        std::thread::sleep(Duration::from_millis(1100));
        let at = self.app_sql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')");
        let t = text(&at.stdout).trim().to_owned();
        std::thread::sleep(Duration::from_millis(1100));
        assert_ok("rows B", &self.app_sql("INSERT INTO pitr SELECT g, 'B' FROM generate_series(51, 80) g"));
        t
    }

    /// Forces a WAL switch on the leader and waits until pgBackRest archived that segment.
    pub fn archive_current_wal(&self, timeout: Duration) -> String {
        let leader = self.leader().expect("a leader");
        let segment = self.member_sql(&leader, "SELECT pg_walfile_name(pg_switch_wal())").expect("pg_switch_wal on the leader");
        wait_until(&format!("{segment} archived by {leader}"), timeout, || {
            self.member_sql(&leader, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver").is_some_and(|last| last >= segment)
        });
        segment
    }

    /// The repository host's volume on the node that has it (the one repository).
    pub fn repository(&self) -> std::path::PathBuf {
        let mut found = self.cluster.nodes().into_iter().filter_map(|n| n.host_volumes.get("pgbackrest").cloned()).collect::<Vec<_>>();
        assert_eq!(found.len(), 1, "the pgbackrest host volume is on exactly one node");
        found.remove(0)
    }

    /// The timelines whose WAL is in the repository (`archive/<stanza>/<pg>-<id>/<tl><log>/`).
    pub fn archived_timelines(&self) -> Vec<u32> {
        let archive = self.repository().join("archive/main");
        let mut timelines: Vec<u32> = std::fs::read_dir(&archive)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|db| std::fs::read_dir(db.path()).into_iter().flatten().flatten())
            .filter_map(|dir| {
                let name = dir.file_name().to_string_lossy().to_string();
                (name.len() == 16).then(|| u32::from_str_radix(&name[..8], 16).ok()).flatten()
            })
            .collect();
        timelines.sort_unstable();
        timelines.dedup();
        timelines
    }

    /// Restores the repository's latest backup and the WAL after it into a scratch directory,
    /// in a container of the image on the node network, talking to the repository host over
    /// TLS with `member`'s pgBackRest config and client certificate (as a member would); starts
    /// PostgreSQL on it until recovery ends, and returns which of `ids` are in `acks`.
    pub fn restore_and_read(&self, member: &str, ids: &[u64]) -> Vec<u64> {
        let allocation = self
            .cluster
            .allocations("main-postgres")
            .into_iter()
            .find(|a| a.facts.group_name() == member && a.client_status == "running")
            .expect("the member's allocation");
        let node = self.cluster.node(&allocation.facts.node_name).clone();
        let secrets = super::alloc_runner::alloc_root(&node.root, &allocation.facts.alloc_id).join("patroni/secrets");
        let scratch = tempfile::Builder::new().prefix("restore-").tempdir_in(self.cluster.root()).unwrap();
        for dir in ["alloc/tmp", "alloc/logs", "data"] {
            std::fs::create_dir_all(scratch.path().join(dir)).unwrap();
        }
        for dir in ["alloc", "alloc/tmp", "alloc/logs", "data"] {
            std::os::unix::fs::chown(scratch.path().join(dir), Some(999), Some(999)).unwrap();
        }
        let name = format!("restore-{}", self.cluster.id);
        let list: Vec<String> = ids.iter().map(u64::to_string).collect();
        let script = format!(
            r#"set -e
pgbackrest --config=/secrets/pgbackrest.conf --stanza=main --log-level-console=warn --archive-mode=off restore
pg_ctl=/usr/lib/postgresql/15/bin/pg_ctl
data=/var/lib/postgresql/data/pgdata
$pg_ctl -D $data -w -t 300 -l /alloc/logs/restored.log -o "-c port=5999 -c listen_addresses='' -c unix_socket_directories=/alloc/tmp -c synchronous_standby_names='' -c archive_mode=off" start
for i in $(seq 1 600); do
  [ "$(psql -X -At -h /alloc/tmp -p 5999 -d postgres -c 'SELECT pg_is_in_recovery()')" = f ] && break
  sleep 0.5
done
psql -X -At -h /alloc/tmp -p 5999 -d app -c 'SELECT id FROM acks WHERE id IN ({}) ORDER BY id'
$pg_ctl -D $data -m fast stop >/dev/null
"#,
            list.join(",")
        );
        let out = super::docker::docker()
            .args(["run", "--rm", "--name", &name, "--label", &format!("{}={}", super::docker::LABEL, self.cluster.id)])
            .args(["--network", &node.docker_network, "--dns", &node.dns, "--user", "999:999"])
            .args(["--volume", &format!("{}:/secrets:ro", secrets.display())])
            .args(["--volume", &format!("{}:/alloc", scratch.path().join("alloc").display())])
            .args(["--volume", &format!("{}:/var/lib/postgresql/data", scratch.path().join("data").display())])
            .args([&self.cluster.image, "bash", "-c", &script])
            .output()
            .unwrap();
        let log = std::fs::read_to_string(scratch.path().join("alloc/logs/restored.log")).unwrap_or_default();
        assert_ok(&format!("pgbackrest restore and PostgreSQL on the restored copy (its log:\n{log})"), &out);
        text(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    Postmaster,
    Task,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Postmaster => "postmaster kill",
            Fault::Task => "task kill",
        }
    }
}

/// One psql as `app`. The connect timeout (10 s, as `pgnomad dev`'s benchmark writer) outlasts
/// a failover: PgBouncer holds a login whose auth_query has no server yet until it has one,
/// so a client that gave up sooner would add its own timeout to the write gap.
pub fn psql(address: &str, password: &str, sql: &str) -> Output {
    let (host, port) = address.rsplit_once(':').unwrap();
    Command::new("psql")
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", port, "-U", "app", "-d", "app", "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

pub fn http_get(address: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let socket: std::net::SocketAddr = address.parse().ok()?;
    let mut stream = std::net::TcpStream::connect_timeout(&socket, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    body.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// One insert: its id, whether it was acknowledged, when it started and how long it took.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub id: u64,
    pub ok: bool,
    pub started: Instant,
    pub took: Duration,
    /// psql's first line of stderr when it failed.
    pub error: String,
    /// The address of the member that acknowledged it (`inet_server_addr()`), empty if none.
    pub server: String,
    /// The PgBouncer it went through.
    pub via: String,
}

/// Inserts id = 1, 2, … through PgBouncer every 100 ms; an insert that returned success is
/// acknowledged and must survive everything that follows.
pub struct Writer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
}

impl Writer {
    pub fn start(deployed: &Deployed) -> Writer {
        let out = deployed.app_sql("CREATE TABLE IF NOT EXISTS acks (id bigint PRIMARY KEY)");
        assert!(out.status.success(), "creating the table through PgBouncer: {}", text(&out.stderr));
        let first = text(&deployed.app_sql("SELECT coalesce(max(id), 0) FROM acks").stdout).trim().parse::<u64>().unwrap() + 1;
        let password = deployed.secret("main-postgres", "password_app");
        let mut address = deployed.pgbouncer_address();
        // After a failed insert the writer asks again where PgBouncer runs, as a client that
        // finds it through Consul (`main-pgbouncer.service.consul`) would: it keeps its
        // PgBouncer while that one passes its checks, else takes one that does (a lost
        // node's PgBouncer comes back elsewhere; a cut-off one fails its check).
        let locate = deployed.cluster.locator();
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let handle = {
            let (stop, attempts) = (stop.clone(), attempts.clone());
            std::thread::spawn(move || {
                let mut id = first;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    if attempts.lock().unwrap().last().is_some_and(|a: &Attempt| !a.ok) {
                        let passing = locate.passing("main-pgbouncer");
                        if !passing.contains(&address) {
                            if let Some(found) =
                                passing.first().cloned().or_else(|| locate.address_of("main-pgbouncer", "pgbouncer", "pgbouncer"))
                            {
                                address = found;
                            }
                        }
                    }
                    let insert = format!("INSERT INTO acks (id) VALUES ({id}) RETURNING host(inet_server_addr())");
                    let out = psql(&address, &password, &insert);
                    let ok = out.status.success();
                    let error = if ok { String::new() } else { text(&out.stderr).lines().next().unwrap_or_default().to_string() };
                    let server = if ok { text(&out.stdout).lines().next().unwrap_or_default().trim().to_string() } else { String::new() };
                    attempts.lock().unwrap().push(Attempt {
                        id,
                        ok,
                        started,
                        took: started.elapsed(),
                        error,
                        server,
                        via: address.clone(),
                    });
                    id += 1;
                    std::thread::sleep(Duration::from_millis(100).saturating_sub(started.elapsed()));
                }
            })
        };
        Writer { stop, handle: Some(handle), attempts }
    }

    /// Panics with the writer's last attempts (how long each took, what psql said) when no
    /// insert that started after `since` was acknowledged within `timeout`.
    pub fn wait_ack_after(&self, since: Instant, timeout: Duration) {
        if let Err(why) = self.acked_after(since, timeout) {
            panic!("{why}");
        }
    }

    /// Waits for a write acknowledged after `since`; what the writer last saw if none came.
    pub fn acked_after(&self, since: Instant, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while !self.attempts.lock().unwrap().iter().any(|a| a.ok && a.started > since) {
            if Instant::now() > deadline {
                let attempts = self.attempts.lock().unwrap();
                let last: Vec<String> = attempts
                    .iter()
                    .rev()
                    .take(8)
                    .map(|a| {
                        format!("  id {} via {} took {:.1} s: {}", a.id, a.via, a.took.as_secs_f64(), if a.ok { "ok" } else { &a.error })
                    })
                    .collect();
                return Err(format!(
                    "timed out after {timeout:?} waiting for a write through PgBouncer acknowledged after the fault; the writer's last attempts, newest first (one may still be running):\n{}",
                    last.join("\n")
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The write gap of a fault at `at` that was over by `recovered` (a new leader seen): the
    /// longest time between two consecutive acknowledgements, from the last one before `at` to
    /// the first one of an insert that started after `recovered`. (Inserts that start between
    /// `at` and the fault itself still succeed; the gap is wherever writes stopped.)
    pub fn gap_around(&self, at: Instant, recovered: Instant) -> Option<Duration> {
        let attempts = self.attempts.lock().unwrap();
        let first = attempts.iter().filter(|a| a.ok && a.started <= at).map(|a| a.started + a.took).max()?;
        let last = attempts.iter().filter(|a| a.ok && a.started > recovered).map(|a| a.started + a.took).min()?;
        let mut acks: Vec<Instant> =
            attempts.iter().filter(|a| a.ok).map(|a| a.started + a.took).filter(|t| *t >= first && *t <= last).collect();
        acks.sort();
        acks.windows(2).map(|w| w[1] - w[0]).max()
    }

    /// Every attempt so far, while the writer goes on.
    pub fn snapshot(&self) -> Vec<Attempt> {
        self.attempts.lock().unwrap().clone()
    }

    pub fn acknowledged(&self) -> Vec<u64> {
        self.attempts.lock().unwrap().iter().filter(|a| a.ok).map(|a| a.id).collect()
    }

    pub fn stop(mut self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            handle.join().unwrap();
        }
        self.attempts.lock().unwrap().clone()
    }
}

/// Every acknowledged id that is not in `acks` any more.
pub fn lost_rows(deployed: &Deployed, attempts: &[Attempt]) -> Vec<u64> {
    let present: Vec<u64> =
        text(&deployed.app_sql("SELECT id FROM acks ORDER BY id").stdout).lines().filter_map(|l| l.parse().ok()).collect();
    attempts.iter().filter(|a| a.ok && !present.contains(&a.id)).map(|a| a.id).collect()
}

pub fn assert_ok(what: &str, out: &Output) {
    assert!(out.status.success(), "{what} exited {:?}\nstdout:\n{}\nstderr:\n{}", out.status.code(), text(&out.stdout), text(&out.stderr));
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Polls `ready` every 100 ms until it holds or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

// ---- Rolling upgrades on the double (issue 10): the tests/upgrade_nomad.rs and
// benches/nomad_upgrade.rs helpers.

/// One registration that changed a job: its version, when Nomad took it, and which task
/// groups differ from the version before.
#[derive(Debug, Clone)]
pub struct Registration {
    pub version: u64,
    pub submitted: std::time::SystemTime,
    pub changed: Vec<String>,
}

impl Deployed {
    /// The stack file with `extra` appended (a block that overrides the defaults).
    pub fn set_stack(&self, extra: &str) {
        let text = format!("{}\n{extra}\n", stack(&self.cluster, self.driver));
        std::fs::write(self.dir.path().join("pgnomad.hcl"), text).unwrap();
    }

    /// The stack file with `schedules` (a `schedule { … }` block) in place of the quiet ones.
    pub fn set_backup_schedules(&self, schedules: &str) {
        let text = stack(&self.cluster, self.driver).replace(QUIET_SCHEDULES, schedules);
        std::fs::write(self.dir.path().join("pgnomad.hcl"), text).unwrap();
    }

    /// The registrations of `job` that changed it, from the double's job versions; the first
    /// (the job's creation) lists every group.
    pub fn registrations(&self, job: &str) -> Vec<Registration> {
        let versions = self.cluster.nomad.job_versions(job);
        let groups = |v: &Value| -> std::collections::BTreeMap<String, Value> {
            v["TaskGroups"].as_array().into_iter().flatten().map(|g| (g["Name"].as_str().unwrap_or("").to_string(), g.clone())).collect()
        };
        let mut previous = std::collections::BTreeMap::new();
        versions
            .iter()
            .map(|v| {
                let now = groups(v);
                let changed = now.iter().filter(|(name, g)| previous.get(*name) != Some(*g)).map(|(name, _)| name.clone()).collect();
                previous = now;
                let nanos = v["SubmitTime"].as_u64().unwrap_or(0);
                Registration {
                    version: v["Version"].as_u64().unwrap_or(0),
                    submitted: std::time::UNIX_EPOCH + Duration::from_nanos(nanos),
                    changed,
                }
            })
            .collect()
    }

    /// Patroni's timeline history (`GET /history`): each past timeline and when the member
    /// that ended it was promoted.
    pub fn patroni_history(&self) -> Vec<(u64, std::time::SystemTime)> {
        for i in 0..3 {
            let Some(address) = self.cluster.address_of("main-postgres", &format!("member-{i}"), "patroni") else { continue };
            let Some(body) = http_get(&address, "/history") else { continue };
            let Ok(Value::Array(rows)) = serde_json::from_str::<Value>(&body) else { continue };
            return rows.iter().filter_map(|r| Some((r[0].as_u64()?, parse_rfc3339(r[3].as_str()?)?))).collect();
        }
        Vec::new()
    }

    /// The leader's timeline, as Patroni's /cluster shows it.
    pub fn timeline(&self) -> Option<u64> {
        let cluster = self.patroni_cluster()?;
        cluster["members"].as_array()?.iter().find(|m| m["role"] == "leader").and_then(|m| m["timeline"].as_u64())
    }

    /// Each running member allocation's ID, by member name.
    pub fn member_allocations(&self) -> std::collections::BTreeMap<String, String> {
        self.cluster
            .allocations("main-postgres")
            .into_iter()
            .filter(|a| a.client_status == "running")
            .map(|a| (a.facts.group_name().to_string(), a.facts.alloc_id.clone()))
            .collect()
    }

    /// `SHOW <name>` on every member, by its local socket.
    pub fn setting_everywhere(&self, name: &str) -> Vec<Option<String>> {
        (0..3).map(|i| self.member_sql(&format!("member-{i}"), &format!("SHOW {name}"))).collect()
    }

    /// One command on the PgBouncer container's admin console as the auth user.
    pub fn pgbouncer_admin(&self, command: &str) -> Output {
        let address = self.pgbouncer_address();
        let (host, port) = address.rsplit_once(':').unwrap();
        Command::new("psql")
            .args(["-X", "-At", "-h", host, "-p", port, "-U", "pgbouncer_auth", "-d", "pgbouncer", "-c", command])
            .env("PGPASSWORD", self.secret("main-pgbouncer", "pgbouncer_auth_password"))
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

/// RFC 3339 (`2026-12-02T05:30:00.123456+00:00`, as Patroni writes history) as a time.
pub fn parse_rfc3339(s: &str) -> Option<std::time::SystemTime> {
    let (date, rest) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let offset_at = rest.find(['+', 'Z']).or_else(|| rest.rfind('-'))?;
    let (clock, zone) = rest.split_at(offset_at);
    let mut c = clock.split(':');
    let (h, min, sec) = (c.next()?.parse::<i64>().ok()?, c.next()?.parse::<i64>().ok()?, c.next()?.parse::<f64>().ok()?);
    let offset = match zone {
        "Z" | "" => 0,
        z => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let (oh, om) = z[1..].split_once(':')?;
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60)
        }
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let days = era * 146097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719468;
    let seconds = (days * 86400 + h * 3600 + min * 60 - offset) as f64 + sec;
    Some(std::time::UNIX_EPOCH + Duration::from_secs_f64(seconds))
}

/// pgbench through the PgBouncer container as `app`, in 10 s runs until stopped, so that it
/// covers an operation of unknown length: what every run processed and failed, and the
/// errors of any run that aborted.
pub struct Pgbench {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<(u64, u64, Vec<String>)>>,
}

impl Pgbench {
    fn program() -> &'static str {
        "/usr/lib/postgresql/15/bin/pgbench"
    }

    fn command(deployed: &Deployed) -> Command {
        let address = deployed.pgbouncer_address();
        let (host, port) = address.rsplit_once(':').unwrap();
        let mut cmd = Command::new(Self::program());
        cmd.args(["-h", host, "-p", port, "-U", "app", "-d", "app"])
            .env("PGPASSWORD", deployed.secret("main-postgres", "password_app"))
            .stdin(Stdio::null());
        cmd
    }

    pub fn init(deployed: &Deployed) {
        let out = Self::command(deployed).args(["-i", "-s", "1", "-q"]).output().expect("pgbench (postgresql-15) runs");
        assert_ok("pgbench -i through PgBouncer", &out);
    }

    pub fn start(deployed: &Deployed) -> Pgbench {
        let stop = Arc::new(AtomicBool::new(false));
        let mut cmd = Self::command(deployed);
        cmd.args(["-n", "-c", "4", "-j", "2", "-T", "10"]);
        let handle = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut processed, mut failed, mut aborted) = (0, 0, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let out = cmd.output().unwrap();
                    let summary = text(&out.stdout);
                    let number = |label: &str| crate::support::pgbench_number(&summary, label);
                    processed += number("number of transactions actually processed:").unwrap_or(0);
                    failed += number("number of failed transactions:").unwrap_or(0);
                    if !out.status.success() {
                        aborted.push(format!("{}{}", summary, text(&out.stderr)));
                    }
                }
                (processed, failed, aborted)
            })
        };
        Pgbench { stop, handle: Some(handle) }
    }

    /// Stops after the current run: (transactions processed, failed, runs that aborted).
    pub fn finish(mut self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}
