//! What pgnomad sends to Nomad, run for real: the real binary deploys the default stack (docker
//! driver, Patroni on etcd3) to the cluster double, whose clients run every task as a container
//! of pgnomad's own image on three nodes with their own addresses.

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::cluster::{docker, Cluster, ClusterConfig};
use crate::support_procs::{text, wait_until};

/// The default stack with what this machine forces: Patroni's DCS is the test's etcd (the
/// Consul double has no KV or sessions), and pgAdmin is off (its image cannot be built here).
fn stack(cluster: &Cluster) -> String {
    format!(
        "cluster \"main\" {{}}\n\npatroni {{\n  dcs        = \"etcd3\"\n  etcd_hosts = [\"{}\"]\n}}\n\npgadmin {{\n  enabled = false\n}}\n",
        cluster.etcd.endpoint
    )
}

struct Deployed {
    cluster: Cluster,
    dir: tempfile::TempDir,
}

impl Deployed {
    fn pgnomad(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_pgnomad"))
            .args(args)
            .current_dir(self.dir.path())
            .env("NOMAD_ADDR", self.cluster.nomad.address())
            .env("CONSUL_HTTP_ADDR", self.cluster.consul.address())
            .env_remove("NOMAD_TOKEN")
            .env_remove("NOMAD_NAMESPACE")
            .env_remove("NOMAD_REGION")
            .stdin(Stdio::null())
            .output()
            .expect("pgnomad runs")
    }

    fn secret(&self, job: &str, key: &str) -> String {
        let client = self.cluster.nomad.client();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let variable = runtime.block_on(client.read_variable(&format!("nomad/jobs/{job}"))).unwrap().expect("the job's variable exists");
        variable.items.get(key).unwrap_or_else(|| panic!("no {key} in nomad/jobs/{job}")).clone()
    }

    /// Patroni's /cluster, read from whichever member answers.
    fn patroni_cluster(&self) -> Option<Value> {
        for i in 0..3 {
            let Some(address) = self.cluster.address_of("main-postgres", &format!("member-{i}"), "patroni") else { continue };
            if let Some(body) = http_get(&address, "/cluster") {
                if let Ok(value) = serde_json::from_str::<Value>(&body) {
                    return Some(value);
                }
            }
        }
        None
    }

    fn leader(&self) -> Option<String> {
        let cluster = self.patroni_cluster()?;
        cluster["members"]
            .as_array()?
            .iter()
            .find(|m| m["role"] == "leader" && m["state"] == "running")
            .and_then(|m| m["name"].as_str())
            .map(str::to_string)
    }

    /// One leader, every other member streaming from it, one of them the synchronous standby.
    fn healthy_topology(&self) -> Result<(String, Vec<String>), String> {
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
        let streaming = self.leader_sql(&leader, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'").unwrap_or_default();
        if streaming.trim() != "2" {
            return Err(format!("{} replicas stream from {leader}", streaming.trim()));
        }
        Ok((leader, replicas))
    }

    /// SQL on a member, as postgres over its local socket inside the patroni container.
    fn leader_sql(&self, member: &str, sql: &str) -> Option<String> {
        let container = self.cluster.container("main-postgres", member, "patroni")?;
        let out = docker::docker()
            .args(["exec", &container, "psql", "-X", "-At", "-h", "/alloc/tmp", "-d", "postgres", "-c", sql])
            .output()
            .ok()?;
        out.status.success().then(|| text(&out.stdout).trim().to_string())
    }

    fn pgbouncer_address(&self) -> String {
        self.cluster.address_of("main-pgbouncer", "pgbouncer", "pgbouncer").expect("a running PgBouncer")
    }

    fn app_sql(&self, sql: &str) -> Output {
        let address = self.pgbouncer_address();
        psql(&address, &self.secret("main-postgres", "password_app"), sql)
    }
}

fn psql(address: &str, password: &str, sql: &str) -> Output {
    let (host, port) = address.rsplit_once(':').unwrap();
    Command::new("psql")
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", port, "-U", "app", "-d", "app", "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "5")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn http_get(address: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let socket: std::net::SocketAddr = address.parse().ok()?;
    let mut stream = std::net::TcpStream::connect_timeout(&socket, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    body.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// Inserts id = 1, 2, … through PgBouncer every 100 ms; an insert that returned success is
/// acknowledged and must survive everything that follows.
struct Writer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    attempts: Arc<Mutex<Vec<(u64, bool, Instant)>>>,
}

impl Writer {
    fn start(deployed: &Deployed) -> Writer {
        let out = deployed.app_sql("CREATE TABLE IF NOT EXISTS acks (id bigint PRIMARY KEY)");
        assert!(out.status.success(), "creating the table through PgBouncer: {}", text(&out.stderr));
        let first = text(&deployed.app_sql("SELECT coalesce(max(id), 0) FROM acks").stdout).trim().parse::<u64>().unwrap() + 1;
        let password = deployed.secret("main-postgres", "password_app");
        let address = deployed.pgbouncer_address();
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let handle = {
            let (stop, attempts) = (stop.clone(), attempts.clone());
            std::thread::spawn(move || {
                let mut id = first;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let ok = psql(&address, &password, &format!("INSERT INTO acks (id) VALUES ({id})")).status.success();
                    attempts.lock().unwrap().push((id, ok, started));
                    id += 1;
                    std::thread::sleep(Duration::from_millis(100).saturating_sub(started.elapsed()));
                }
            })
        };
        Writer { stop, handle: Some(handle), attempts }
    }

    fn wait_ack_after(&self, since: Instant, timeout: Duration) {
        wait_until("a write through PgBouncer acknowledged after the fault", timeout, || {
            self.attempts.lock().unwrap().iter().any(|(_, ok, started)| *ok && *started > since)
        });
    }

    fn stop(mut self) -> Vec<(u64, bool, Instant)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            handle.join().unwrap();
        }
        self.attempts.lock().unwrap().clone()
    }
}

fn assert_ok(what: &str, out: &Output) {
    assert!(out.status.success(), "{what} exited {:?}\nstdout:\n{}\nstderr:\n{}", out.status.code(), text(&out.stdout), text(&out.stderr));
}

#[test]
fn the_default_stack_runs_on_three_nodes_fails_over_and_is_destroyed() {
    let cluster = Cluster::start(ClusterConfig::default());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pgnomad.hcl"), stack(&cluster)).unwrap();
    let deployed = Deployed { cluster, dir };

    let started = Instant::now();
    let run = deployed.pgnomad(&["run", "--timeout", "10m"]);
    assert_ok("pgnomad run", &run);
    eprintln!("pgnomad run: healthy after {:?}", started.elapsed());

    // Three members on three distinct nodes.
    let members = deployed.cluster.allocations("main-postgres");
    let mut nodes: Vec<&str> = members.iter().map(|a| a.facts.node_name.as_str()).collect();
    nodes.sort_unstable();
    nodes.dedup();
    assert_eq!((members.len(), nodes.len()), (3, 3), "members and their nodes: {members:?}");

    let mut topology = Err(String::new());
    wait_until("one leader, two streaming replicas, a synchronous standby", Duration::from_secs(120), || {
        topology = deployed.healthy_topology();
        topology.is_ok()
    });
    let (leader, _) = topology.unwrap();

    // app through a PgBouncer container that found the primary through its template.
    let out = deployed.app_sql("SELECT current_user, pg_is_in_recovery()");
    assert_ok("app through PgBouncer", &out);
    assert_eq!(text(&out.stdout).trim(), "app|f");

    // The stanza exists (created by the rendered callback on promotion).
    let container = deployed.cluster.container("main-postgres", &leader, "patroni").unwrap();
    let info = docker::docker()
        .args(["exec", &container, "pgbackrest", "--config=/secrets/pgbackrest.conf", "--stanza=main", "--output=json", "info"])
        .output()
        .unwrap();
    assert_ok("pgbackrest info", &info);
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    // Before any backup pgBackRest says "no valid backups" (code 2); the stanza and its WAL
    // archive are there.
    assert_eq!(info[0]["name"], "main", "{info}");
    assert!(info[0]["db"][0]["system-id"].as_u64().is_some(), "the stanza knows the cluster: {info}");
    assert!(info[0]["archive"][0]["max"].as_str().is_some(), "WAL is archived: {info}");

    // A forced full backup runs as a child of the periodic job and lands in the repository.
    let client = deployed.cluster.nomad.client();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let forced = runtime.block_on(client.force_periodic("main-backup-full")).expect("forcing main-backup-full");
    let _ = forced;
    let deadline = Instant::now() + Duration::from_secs(300);
    let outcome = loop {
        let children: Vec<_> =
            deployed.cluster.nomad.all_allocations().into_iter().filter(|a| a.job_id.starts_with("main-backup-full/periodic-")).collect();
        let outcome = format!("{:#?}", children.iter().map(|a| (&a.node_name, &a.client_status, &a.task_states)).collect::<Vec<_>>());
        if children.iter().any(|a| matches!(a.client_status.as_str(), "complete" | "failed")) {
            break outcome;
        }
        assert!(
            Instant::now() < deadline,
            "the forced backup did not finish in 300 s: {outcome}\nevaluations: {:#?}",
            deployed.cluster.nomad.evaluations_of("main-backup-full")
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let child = deployed.cluster.nomad.all_allocations().into_iter().find(|a| a.job_id.starts_with("main-backup-full/periodic-")).unwrap();
    assert_eq!(child.client_status, "complete", "the backup job: {outcome}");
    let info = docker::docker()
        .args(["exec", &container, "pgbackrest", "--config=/secrets/pgbackrest.conf", "--stanza=main", "--output=json", "info"])
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    let backups = info[0]["backup"].as_array().cloned().unwrap_or_default();
    assert!(backups.iter().any(|b| b["type"] == "full"), "pgbackrest info lists the full backup: {info}");

    let status = deployed.pgnomad(&["status", "--json"]);
    assert_ok("pgnomad status", &status);

    // Failover after a postmaster kill, then after the primary's whole container dies.
    let writer = Writer::start(&deployed);
    for fault in ["postmaster", "container"] {
        let leader = deployed.leader().expect("a leader before the fault");
        let container = deployed.cluster.container("main-postgres", &leader, "patroni").unwrap();
        let at = Instant::now();
        match fault {
            "postmaster" => assert_ok(
                "kill postmaster",
                &docker::docker().args(["exec", &container, "pkill", "-9", "-o", "-x", "postgres"]).output().unwrap(),
            ),
            _ => {
                assert_ok("kill container", &docker::docker().args(["kill", &container]).output().unwrap());
                eprintln!("killed {container} at {:?}: {:?}", std::time::SystemTime::now(), docker::state(&container));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while !deployed.leader().is_some_and(|l| l != leader) {
            assert!(
                Instant::now() < deadline,
                "no new leader 120 s after the {fault} kill: {:?}\nevents of {leader}'s patroni task: {}\n{}",
                deployed.patroni_cluster(),
                deployed
                    .cluster
                    .nomad
                    .all_allocations()
                    .iter()
                    .filter(|a| a.job_id == "main-postgres" && a.group == leader)
                    .flat_map(|a| a.task_states.get("patroni").and_then(|t| t["Events"].as_array().cloned()).unwrap_or_default())
                    .map(|e| format!("{} {}", e["Type"], e["Message"].as_str().unwrap_or_default().chars().take(80).collect::<String>()))
                    .collect::<Vec<_>>()
                    .join(" | "),
                (0..3)
                    .filter_map(|i| deployed.cluster.container("main-postgres", &format!("member-{i}"), "patroni"))
                    .map(|c| {
                        let logs = docker::logs_tail(&c, 400);
                        let path = std::env::temp_dir().join(format!("{c}.log"));
                        let _ = std::fs::write(&path, &logs);
                        format!(
                            "--- {c} {:?} (whole log: {})\n{}",
                            docker::state(&c),
                            path.display(),
                            logs.lines().rev().take(12).collect::<Vec<_>>().join("\n")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        writer.wait_ack_after(at, Duration::from_secs(120));
        eprintln!("{fault} kill: writes resumed after {:?}", at.elapsed());
        wait_until("all three members healthy again", Duration::from_secs(240), || deployed.healthy_topology().is_ok());
    }
    let attempts = writer.stop();
    let acknowledged: Vec<u64> = attempts.iter().filter(|(_, ok, _)| *ok).map(|(id, _, _)| *id).collect();
    let present: Vec<u64> =
        text(&deployed.app_sql("SELECT id FROM acks ORDER BY id").stdout).lines().filter_map(|l| l.parse().ok()).collect();
    let lost: Vec<&u64> = acknowledged.iter().filter(|id| !present.contains(id)).collect();
    assert!(lost.is_empty(), "acknowledged rows lost: {lost:?}");
    assert!(acknowledged.len() > 20, "only {} writes were acknowledged", acknowledged.len());

    // A node goes away with everything on it: the cluster keeps serving.
    let leader = deployed.leader().unwrap();
    let leader_node =
        deployed.cluster.allocations("main-postgres").into_iter().find(|a| a.facts.group_name() == leader).unwrap().facts.node_name;
    deployed.cluster.lose_node(&leader_node);
    wait_until("writes through PgBouncer after losing a node", Duration::from_secs(180), || {
        deployed.cluster.address_of("main-pgbouncer", "pgbouncer", "pgbouncer").is_some()
            && deployed.app_sql("INSERT INTO acks (id) VALUES (-1) ON CONFLICT DO NOTHING").status.success()
    });

    let destroy = deployed.pgnomad(&["destroy", "--yes"]);
    assert_ok("pgnomad destroy", &destroy);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !deployed.cluster.running_containers().is_empty() {
        assert!(
            Instant::now() < deadline,
            "containers still run 120 s after destroy: {:?}\nallocations not stopped: {:?}",
            deployed.cluster.running_containers(),
            deployed
                .cluster
                .nomad
                .all_allocations()
                .iter()
                .filter(|a| !matches!(a.client_status.as_str(), "complete" | "failed" | "lost"))
                .map(|a| (&a.name, &a.node_name, &a.desired_status, &a.client_status))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The volumes stay: each member's data directory is still on its node.
    let kept = deployed.cluster.nodes().iter().filter(|n| n.csi_volume_path("main-member-0").join("pgdata").exists()).count();
    assert_eq!(kept, 1, "member-0's volume is kept on exactly one node");
}
