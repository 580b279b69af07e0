//! The Docker Engine through its CLI: what the cluster double's client needs to run a docker
//! task as Nomad's docker driver does (a pause container holding the allocation's network
//! namespace and port mappings, task containers joining it, signals, exit codes).

use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Every container and network the double creates carries this label (value: the cluster's
/// id), so that a cluster's drop, or a later run after a crash, removes exactly its own.
pub const LABEL: &str = "pgnomad.double";

pub fn docker() -> Command {
    let mut cmd = Command::new("docker");
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs docker with `args`; stdout on success, the command and stderr on failure.
pub fn run(args: &[&str]) -> Result<String, String> {
    let out = docker().args(args).output().map_err(|e| format!("docker {}: {e} (is the Docker CLI installed?)", args.join(" ")))?;
    result(args, out)
}

fn result(args: &[&str], out: Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "docker {}: {}",
            args.iter().take(3).copied().collect::<Vec<_>>().join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Fails the test at once, with the fix, when the engine is not reachable: nothing skips.
pub fn require_engine() {
    if let Err(error) = run(&["info", "--format", "{{.ServerVersion}}"]) {
        panic!("the cluster double runs docker tasks as containers, but the Docker Engine is not reachable: {error}\n(start dockerd)");
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerState {
    pub running: bool,
    pub exit_code: i64,
    pub oom_killed: bool,
    pub error: String,
}

/// The state of a container; None when it does not exist.
pub fn state(name: &str) -> Option<ContainerState> {
    let text = run(&["inspect", "--format", "{{.State.Running}}|{{.State.ExitCode}}|{{.State.OOMKilled}}|{{.State.Error}}", name]).ok()?;
    let mut parts = text.splitn(4, '|');
    Some(ContainerState {
        running: parts.next()? == "true",
        exit_code: parts.next()?.parse().ok()?,
        oom_killed: parts.next()? == "true",
        error: parts.next().unwrap_or_default().to_string(),
    })
}

type States = std::collections::BTreeMap<String, Option<i64>>;
static SNAPSHOT: Mutex<Option<(Instant, States)>> = Mutex::new(None);

/// Whether a container of a double runs, from one `docker ps` shared by every task of every
/// cluster in this process and at most 150 ms old: the supervisors ask for each task ten times
/// a second, and a `docker inspect` each time cost the two cores more than the tasks did.
/// None: still running (or starting); Some(code): exited. A container the snapshot does not
/// know (created after it) is inspected.
pub fn exit_code(name: &str) -> Option<i64> {
    let known = {
        let mut snapshot = SNAPSHOT.lock().unwrap_or_else(|p| p.into_inner());
        if snapshot.as_ref().is_none_or(|(at, _)| at.elapsed() > Duration::from_millis(150)) {
            let listed =
                run(&["ps", "--all", "--no-trunc", "--filter", &format!("label={LABEL}"), "--format", "{{.Names}}|{{.State}}|{{.Status}}"]);
            *snapshot = listed.ok().map(|text| (Instant::now(), text.lines().filter_map(parse_ps_line).collect()));
        }
        snapshot.as_ref().and_then(|(_, states)| states.get(name).copied())
    };
    match known {
        Some(state) => state,
        None => match state(name) {
            Some(state) if state.running => None,
            Some(state) => Some(state.exit_code),
            None => Some(-1),
        },
    }
}

/// `name|exited|Exited (137) 2 seconds ago` → (name, Some(137)); `name|running|Up 3 seconds` →
/// (name, None); any other state is not taken from the list.
fn parse_ps_line(line: &str) -> Option<(String, Option<i64>)> {
    let mut parts = line.splitn(3, '|');
    let (name, state, status) = (parts.next()?, parts.next()?, parts.next()?);
    let exited = match state {
        "exited" | "dead" => {
            let code = status.split_once('(').and_then(|(_, rest)| rest.split_once(')')).and_then(|(code, _)| code.parse().ok());
            Some(code.unwrap_or(-1))
        }
        "running" | "paused" => None,
        // created, restarting, removing: left to `docker inspect`.
        _ => return None,
    };
    Some((name.to_string(), exited))
}

/// Forgets the shared snapshot: a container was just started again, and an older snapshot
/// would still show its previous exit.
pub fn forget_states() {
    *SNAPSHOT.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

pub fn signal(name: &str, signal: &str) -> Result<(), String> {
    run(&["kill", "--signal", signal, name]).map(|_| ())
}

pub fn remove(name: &str) {
    let _ = run(&["rm", "--force", "--volumes", name]);
}

/// The last lines of a container's output, for task events and test failures.
pub fn logs_tail(name: &str, lines: usize) -> String {
    let out = docker().args(["logs", "--tail", &lines.to_string(), name]).output();
    match out {
        Ok(out) => format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        Err(e) => format!("(no logs: {e})"),
    }
}

/// One stream of a container's whole output ("stdout" or "stderr"); `None` when there is no
/// such container.
pub fn logs(name: &str, kind: &str) -> Option<Vec<u8>> {
    let out = docker().args(["logs", name]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(if kind == "stdout" { out.stdout } else { out.stderr })
}

/// Removes every container and network labelled with `cluster_id`.
pub fn remove_labelled(cluster_id: &str) {
    unmap_ports(&format!("pgnomad-double-{cluster_id}"));
    let filter = format!("label={LABEL}={cluster_id}");
    if let Ok(ids) = run(&["ps", "--all", "--quiet", "--filter", &filter]) {
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "--force", "--volumes"];
            args.extend(ids);
            let _ = run(&args);
        }
    }
    if let Ok(ids) = run(&["network", "ls", "--quiet", "--filter", &filter]) {
        for id in ids.split_whitespace() {
            let _ = run(&["network", "rm", id]);
        }
    }
}

/// Clusters of test processes that died without cleaning up (the label's value starts with
/// the owner's pid): their containers and networks are removed.
pub fn remove_orphans() {
    let Ok(text) = run(&["ps", "--all", "--format", &format!("{{{{.Label \"{LABEL}\"}}}}"), "--filter", &format!("label={LABEL}")]) else {
        return;
    };
    let networks = run(&["network", "ls", "--format", &format!("{{{{.Label \"{LABEL}\"}}}}"), "--filter", &format!("label={LABEL}")])
        .unwrap_or_default();
    let mut owners: Vec<&str> = text.lines().chain(networks.lines()).map(str::trim).filter(|l| !l.is_empty()).collect();
    owners.sort_unstable();
    owners.dedup();
    for owner in owners {
        let pid = owner.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
            remove_labelled(owner);
        }
    }
}

/// The kernel's port mapping for containers of the node network, as Nomad's bridge networking
/// (CNI portmap, hairpin on) does it: DNAT rules and no port bound on the host. Traffic from
/// the node network (other allocations) meets them in PREROUTING, traffic from the host itself
/// (the tests, the checks) in OUTPUT. Docker's `--publish` is not used: it binds the host port
/// (refusing one the scheduler has freed from an allocation still stopping), and leaves traffic
/// from its own bridge to its userland proxy, a second TCP connection that stays up whatever
/// happens to the task behind it, so a client of a cut-off task (PgBouncer's server connection
/// to a partitioned primary) never sees its connection die. Each rule carries the comment
/// `tag`, by which [`unmap_ports`] removes them.
pub fn map_ports(tag: &str, bridge: &str, node_address: &str, container_ip: &str, ports: &[(u16, u16)]) -> Result<(), String> {
    for (host_port, inside) in ports {
        let host_port = host_port.to_string();
        let to = format!("{container_ip}:{inside}");
        for chain in PORT_MAP_CHAINS {
            let mut args = vec!["-w", "-t", "nat", "-I", chain];
            if chain == "PREROUTING" {
                args.extend(["-i", bridge]);
            }
            args.extend(["-d", node_address, "-p", "tcp", "--dport", &host_port]);
            args.extend(["-m", "comment", "--comment", tag, "-j", "DNAT", "--to-destination", &to]);
            let out = std::process::Command::new("iptables").args(&args).output().map_err(|e| format!("running iptables: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "iptables DNAT ({chain}) {node_address}:{host_port} → {to}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
    }
    Ok(())
}

const PORT_MAP_CHAINS: [&str; 2] = ["PREROUTING", "OUTPUT"];

/// Removes the DNAT rules whose comment is `tag` or starts with `tag-` (a cluster's tag
/// covers its allocations').
pub fn unmap_ports(tag: &str) {
    let ours = |rule: &&str| {
        let comment = rule.split_whitespace().skip_while(|w| *w != "--comment").nth(1).unwrap_or_default();
        comment == tag || comment.strip_prefix(tag).is_some_and(|rest| rest.starts_with('-'))
    };
    for chain in PORT_MAP_CHAINS {
        let Ok(out) = std::process::Command::new("iptables").args(["-w", "-t", "nat", "-S", chain]).output() else { return };
        for rule in String::from_utf8_lossy(&out.stdout).lines().filter(ours) {
            let Some(spec) = rule.strip_prefix("-A ") else { continue };
            let mut args = vec!["-w", "-t", "nat", "-D"];
            args.extend(spec.split_whitespace());
            let _ = std::process::Command::new("iptables").args(&args).output();
        }
    }
}
