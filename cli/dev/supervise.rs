//! The supervisor `dev up` leaves running: it starts etcd, each member's Patroni and
//! pgBackRest TLS server, and PgBouncer; restarts what exits; keeps PgBouncer on the
//! primary; and stops everything in order when `dev down` leaves a stop file.
//!
//! What Nomad does, done locally: a `restart` policy (Patroni comes back after Nomad's
//! restart delay, by when a crashed member's leader key has expired), and
//! the PgBouncer `template` whose Consul service lookup re-renders pgbouncer.ini and sends
//! SIGHUP. Here the lookup is Patroni's `GET /primary` on every member, every 100 ms.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::state::Pids;
use super::{patroni, process, Dev, DevError, Reporter, PAUSE_WATCHDOG};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// etcd, or `consul agent -dev`.
    Dcs,
    Patroni(usize),
    PgBackRestServer(usize),
    PgBouncer,
    /// packs/pgbouncer/pause-watchdog.sh: RESUMEs a PAUSE no one lifted.
    PauseWatchdog,
}

struct Supervised {
    name: String,
    kind: Kind,
    child: Option<Child>,
    restart_at: Option<Instant>,
}

const POLL: Duration = Duration::from_millis(100);

pub fn run(state_dir: &Path, reporter: &dyn Reporter) -> Result<(), DevError> {
    let dev = Dev::open(state_dir)?;
    std::fs::write(dev.state.supervisor_pid_file(), std::process::id().to_string()).map_err(|e| DevError::io("write supervisor.pid", e))?;
    let mut supervised = vec![Supervised { name: dev.dcs().0.into(), kind: Kind::Dcs, child: None, restart_at: None }];
    for (i, member) in dev.facts.members.iter().enumerate() {
        supervised.push(Supervised { name: member.name.clone(), kind: Kind::Patroni(i), child: None, restart_at: None });
        if dev.facts.backup.enabled {
            supervised.push(Supervised {
                name: format!("{}-pgbackrest", member.name),
                kind: Kind::PgBackRestServer(i),
                child: None,
                restart_at: None,
            });
        }
    }
    if dev.facts.pgbouncer.enabled {
        supervised.push(Supervised { name: "pgbouncer".into(), kind: Kind::PgBouncer, child: None, restart_at: None });
        if dev.facts.pgbouncer.max_pause_secs > 0 {
            supervised.push(Supervised { name: "pause-watchdog".into(), kind: Kind::PauseWatchdog, child: None, restart_at: None });
        }
    }

    // The DCS first: Patroni exits when it does not answer.
    let mut primary = dev.state.pgbouncer_primary().unwrap_or(0);
    start(&dev, &mut supervised[0], primary, reporter);
    let (_, dcs) = dev.dcs();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&dcs).is_err() && Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
    for entry in supervised.iter_mut().skip(1) {
        start(&dev, entry, primary, reporter);
    }
    write_primary(&dev, primary);

    let mut recorded = Pids::default();
    // Nomad's restart delay for the member group (15 s), and never before the crashed
    // member's leader key has expired and a replica had a loop to take over.
    let patroni_delay = Duration::from_secs(u64::from((dev.facts.patroni.ttl + 2 * dev.facts.patroni.loop_wait).max(15)));
    while !dev.state.stop_file().exists() {
        serve_restart_requests(&dev, &mut supervised, primary, reporter);
        for entry in supervised.iter_mut() {
            if let Some(child) = entry.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let delay = if matches!(entry.kind, Kind::Patroni(_)) { patroni_delay } else { Duration::from_secs(1) };
                    reporter.step(&format!("{} exited ({status}); restarting it in {} s", entry.name, delay.as_secs()));
                    entry.child = None;
                    entry.restart_at = Some(Instant::now() + delay);
                }
            } else if entry.restart_at.is_some_and(|at| Instant::now() >= at) {
                entry.restart_at = None;
                start(&dev, entry, primary, reporter);
            }
        }
        if dev.facts.pgbouncer.enabled {
            follow_primary(&dev, &supervised, &mut primary, reporter);
        }
        let pids = Pids {
            supervisor: std::process::id(),
            processes: supervised.iter().filter_map(|e| e.child.as_ref().map(|c| (e.name.clone(), c.id()))).collect(),
        };
        if pids.processes != recorded.processes {
            let _ = std::fs::write(dev.state.pids_file(), serde_json::to_string_pretty(&pids).expect("serializes"));
            recorded = pids;
        }
        std::thread::sleep(POLL);
    }
    stop_all(&dev, &mut supervised, reporter);
    let _ = std::fs::remove_file(dev.state.pids_file());
    let _ = std::fs::remove_file(dev.state.supervisor_pid_file());
    reporter.step("stopped");
    Ok(())
}

/// The file by which `request_restart` asks for `member`'s restart.
fn restart_request_file(dev: &Dev, member: &str) -> PathBuf {
    dev.state.path(&format!("restart-{member}"))
}

/// Asks the running supervisor to restart `member`'s processes (Patroni and its pgBackRest
/// server) with their current config files, at once rather than after the crash delay —
/// what a new allocation of the member's group is on Nomad.
pub fn request_restart(dev: &Dev, member: &str) -> Result<(), DevError> {
    std::fs::write(restart_request_file(dev, member), "").map_err(|e| DevError::io(format!("ask the supervisor to restart {member}"), e))
}

/// Stops and starts again the processes of each member with a restart request.
fn serve_restart_requests(dev: &Dev, supervised: &mut [Supervised], primary: u32, reporter: &dyn Reporter) {
    for (i, member) in dev.facts.members.iter().enumerate() {
        let request = restart_request_file(dev, &member.name);
        if std::fs::remove_file(&request).is_err() {
            continue;
        }
        reporter.step(&format!("restarting {} as asked", member.name));
        let mut entries: Vec<&mut Supervised> =
            supervised.iter_mut().filter(|e| matches!(e.kind, Kind::Patroni(m) | Kind::PgBackRestServer(m) if m == i)).collect();
        stop(&mut entries, Duration::from_secs(60), reporter);
        for entry in entries {
            entry.restart_at = None;
            start(dev, entry, primary, reporter);
        }
    }
}

/// Points PgBouncer at the member that is primary now, when exactly one is.
fn follow_primary(dev: &Dev, supervised: &[Supervised], primary: &mut u32, reporter: &dyn Reporter) {
    let primaries: Vec<usize> = (0..dev.member_count()).filter(|&i| patroni::is_primary(&dev.rest_address(i))).collect();
    let [now] = primaries[..] else { return };
    if now as u32 == *primary {
        return;
    }
    if let Err(error) = dev.write_pgbouncer(now as u32) {
        reporter.step(&format!("re-rendering pgbouncer.ini failed: {error}"));
        return;
    }
    if let Some(child) = supervised.iter().find(|e| e.kind == Kind::PgBouncer).and_then(|e| e.child.as_ref()) {
        process::signal(child.id(), libc::SIGHUP);
    }
    reporter.step(&format!("primary is now {}: pgbouncer.ini re-rendered, SIGHUP sent", dev.facts.members[now].name));
    *primary = now as u32;
    write_primary(dev, *primary);
}

fn write_primary(dev: &Dev, primary: u32) {
    let _ = std::fs::write(dev.state.primary_file(), primary.to_string());
}

fn log_file(path: PathBuf) -> (Stdio, Stdio) {
    match OpenOptions::new().create(true).append(true).open(&path) {
        Ok(file) => match file.try_clone() {
            Ok(clone) => (Stdio::from(file), Stdio::from(clone)),
            Err(_) => (Stdio::null(), Stdio::null()),
        },
        Err(_) => (Stdio::null(), Stdio::null()),
    }
}

fn command(dev: &Dev, kind: Kind, primary: u32) -> (Command, PathBuf) {
    let root = &dev.state.root;
    let host = dev.host();
    match kind {
        Kind::Dcs if dev.recorded.ports.consul.is_some() => {
            let consul = dev.recorded.ports.consul.as_ref().expect("checked");
            // In memory: Patroni finds its data directories again after a restart.
            let mut cmd = Command::new(process::program("consul"));
            cmd.args(["agent", "-dev", "-node", "pgnomad-dev", "-bind", host, "-client", host])
                .args(["-http-port", &consul.http.to_string(), "-serf-lan-port", &consul.serf_lan.to_string()])
                .args(["-serf-wan-port", &consul.serf_wan.to_string(), "-server-port", &consul.server.to_string()])
                .args(["-dns-port", "-1", "-grpc-port", "-1"]);
            let _ = std::fs::create_dir_all(root.join("consul"));
            (cmd, root.join("consul").join("consul.log"))
        }
        Kind::Dcs => {
            let ports = &dev.recorded.ports;
            let peer = format!("http://{host}:{}", ports.etcd_peer);
            let client = format!("http://{host}:{}", ports.etcd_client);
            let mut cmd = Command::new(process::program("etcd"));
            cmd.args(["--name", "pgnomad-dev", "--data-dir"])
                .arg(root.join("etcd").join("data"))
                .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &format!("pgnomad-dev={peer}"), "--initial-cluster-state", "new"]);
            let _ = std::fs::create_dir_all(root.join("etcd"));
            (cmd, root.join("etcd").join("etcd.log"))
        }
        Kind::Patroni(i) => {
            let name = &dev.facts.members[i].name;
            let mut cmd = dev.user.command(process::program("patroni"));
            cmd.arg(dev.state.config_dir(name).join("patroni.yml")).env("HOME", root.join(name));
            (cmd, dev.state.log_dir(name).join("patroni.log"))
        }
        Kind::PgBackRestServer(i) => {
            let name = &dev.facts.members[i].name;
            let mut cmd = dev.user.command(process::program("pgbackrest"));
            cmd.arg(format!("--config={}", dev.state.config_dir(name).join("pgbackrest.conf").display()))
                .arg("server")
                .env("HOME", root.join(name));
            (cmd, dev.state.log_dir(name).join("pgbackrest-server.log"))
        }
        Kind::PgBouncer => {
            // Rendered again so that a restart starts on the current primary.
            let _ = dev.write_pgbouncer(primary);
            let mut cmd = dev.user.command(process::program("pgbouncer"));
            cmd.arg(dev.state.config_dir("pgbouncer").join("pgbouncer.ini")).env("HOME", root.join("pgbouncer"));
            (cmd, dev.state.log_dir("pgbouncer").join("pgbouncer.log"))
        }
        Kind::PauseWatchdog => {
            let mut cmd = dev.user.command("/bin/sh");
            cmd.arg(dev.state.config_dir("pgbouncer").join(PAUSE_WATCHDOG)).env("HOME", root.join("pgbouncer"));
            (cmd, dev.state.log_dir("pgbouncer").join("pause-watchdog.log"))
        }
    }
}

fn start(dev: &Dev, entry: &mut Supervised, primary: u32, reporter: &dyn Reporter) {
    let (mut cmd, log) = command(dev, entry.kind, primary);
    let (stdout, stderr) = log_file(log.clone());
    // Its own process group: a Ctrl-C meant for something else does not reach it.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    match cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr).spawn() {
        Ok(child) => {
            reporter.step(&format!("started {} (pid {}, log {})", entry.name, child.id(), log.display()));
            entry.child = Some(child);
        }
        Err(error) => {
            reporter.step(&format!("cannot start {}: {error}; trying again in 5 s", entry.name));
            entry.restart_at = Some(Instant::now() + Duration::from_secs(5));
        }
    }
}

/// SIGTERM to each entry and a wait for it; SIGKILL after `grace`. Patroni stops Postgres
/// on SIGTERM (fast shutdown).
fn stop(entries: &mut [&mut Supervised], grace: Duration, reporter: &dyn Reporter) {
    for entry in entries.iter() {
        if let Some(child) = entry.child.as_ref() {
            process::signal(child.id(), libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    for entry in entries.iter_mut() {
        let Some(child) = entry.child.as_mut() else { continue };
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if Instant::now() > deadline {
                reporter.step(&format!("{} did not stop within {} s: SIGKILL", entry.name, grace.as_secs()));
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        entry.child = None;
    }
}

fn stop_all(dev: &Dev, supervised: &mut [Supervised], reporter: &dyn Reporter) {
    reporter.step("stopping");
    let leader = (0..dev.member_count()).find(|&i| patroni::is_primary(&dev.rest_address(i)));
    let order = |kind: Kind| match kind {
        Kind::PgBouncer | Kind::PauseWatchdog => 0,
        Kind::PgBackRestServer(_) => 1,
        Kind::Patroni(i) if Some(i) != leader => 2,
        Kind::Patroni(_) => 3,
        Kind::Dcs => 4,
    };
    for phase in 0..=4 {
        let mut entries: Vec<&mut Supervised> = supervised.iter_mut().filter(|e| order(e.kind) == phase).collect();
        stop(&mut entries, Duration::from_secs(if phase >= 2 { 60 } else { 10 }), reporter);
    }
    // A Postgres whose Patroni was killed keeps running: stop it too.
    for member in &dev.facts.members {
        if let Some(pid) = process::postmaster_pid(&dev.state.data_dir(&member.name)) {
            reporter.step(&format!("stopping the postmaster of {} (pid {pid}) left without Patroni", member.name));
            process::signal(pid, libc::SIGINT);
            process::wait_gone(&[pid], Duration::from_secs(30));
        }
    }
}
