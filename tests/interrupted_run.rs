//! `run` killed (SIGKILL) at successive steps, then run again: the re-run converges (exit 0,
//! then a plan with no changes) and overwrites nothing the killed run left — no secret value
//! changes, no volume is created twice.

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Fault, NomadDouble};

/// The writes of a run on a fresh cluster, in order (as `deploy` asserts them):
/// 0 the TLS set, 1–7 each job's variable, 8–10 the volumes, 11–17 the jobs, 18 pgnomad's state.
const KILL_AFTER: [usize; 10] = [0, 1, 7, 8, 10, 11, 12, 13, 17, 18];

fn spawn_run(dir: &std::path::Path, nomad: &str, consul: &str) -> Child {
    crate::deploy::pgnomad_command(dir, nomad, consul, &["run"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("pgnomad runs")
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
}

/// Every variable's items, by path.
fn variables(nomad: &NomadDouble) -> BTreeMap<String, Value> {
    let client = nomad.client();
    block_on(async {
        let mut out = BTreeMap::new();
        for meta in client.list_variables("").await.unwrap() {
            let variable = client.read_variable(&meta.path).await.unwrap().expect("a listed variable exists");
            out.insert(meta.path.clone(), serde_json::to_value(variable.items).unwrap());
        }
        out
    })
}

/// The create requests for CSI volumes, as the volume IDs they name.
fn volume_creates(nomad: &NomadDouble) -> Vec<String> {
    nomad.writes().iter().filter_map(|w| w.path.strip_prefix("/v1/volume/csi/")?.strip_suffix("/create").map(str::to_string)).collect()
}

/// The volumes that exist.
fn volumes(nomad: &NomadDouble) -> Vec<String> {
    block_on(nomad.client().list_csi_volumes(None)).unwrap().into_iter().map(|v| v.id).collect()
}

#[test]
fn run_killed_at_each_step_then_rerun_converges_and_overwrites_nothing() {
    let mut failures = Vec::new();
    for kill_after in KILL_AFTER {
        let nomad = NomadDouble::start();
        let consul = nomad.start_consul();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pgnomad.hcl"), crate::stack_fixtures::DEFAULT).unwrap();
        // A secret or volume write is held for a while, so the kill lands while it is in
        // flight; a job's register is followed by its deployment, during which it lands.
        let held = match kill_after {
            0 => Some("/v1/var/pgnomad/main/tls".to_string()),
            1..=7 => Some(format!("/v1/var/nomad/jobs/{}", JOBS[kill_after - 1])),
            8..=10 => Some(format!("/v1/volume/csi/main-member-{}", kill_after - 8)),
            _ => None,
        };
        if let Some(path) = &held {
            nomad.inject(Fault::delay("PUT", path, Duration::from_secs(2)));
        }
        let mut run = spawn_run(dir.path(), &nomad.address(), &consul.address());
        let started = Instant::now();
        while nomad.writes().len() <= kill_after && started.elapsed() < Duration::from_secs(120) {
            if run.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        // The kill must interrupt the run, not follow its end.
        let exited_before_the_kill = run.try_wait().unwrap();
        let _ = run.kill();
        let _ = run.wait();
        let writes_at_kill = nomad.writes().len();
        // Let a held write finish on the server side (it may apply or not; both must converge).
        std::thread::sleep(Duration::from_millis(2500));
        let before = variables(&nomad);
        let existing_volumes = volumes(&nomad);
        let creates_before = volume_creates(&nomad).len();

        let rerun = crate::deploy::pgnomad_at(dir.path(), &nomad.address(), &consul.address(), &["run"]);
        let plan = crate::deploy::pgnomad_at(dir.path(), &nomad.address(), &consul.address(), &["plan"]);
        let after = variables(&nomad);
        let mut problems = Vec::new();
        if let Some(status) = exited_before_the_kill {
            problems.push(format!("the run ended ({status}) before the kill"));
        }
        if rerun.status.code() != Some(0) {
            problems.push(format!("re-run exit {:?}: {}", rerun.status.code(), String::from_utf8_lossy(&rerun.stderr)));
        }
        if plan.status.code() != Some(0) {
            problems.push(format!("plan after the re-run exit {:?}: {}", plan.status.code(), String::from_utf8_lossy(&plan.stdout)));
        }
        for (path, items) in &before {
            // pgnomad's own record of what it registered is rewritten by design.
            if path == "pgnomad/main/state" {
                continue;
            }
            let Some(now) = after.get(path) else {
                problems.push(format!("variable {path} disappeared"));
                continue;
            };
            for (key, value) in items.as_object().unwrap() {
                if now.get(key) != Some(value) {
                    problems.push(format!("{path}.{key} was overwritten"));
                }
            }
        }
        // A create killed in flight may not have applied: only volumes that exist count.
        for id in &volume_creates(&nomad)[creates_before..] {
            if existing_volumes.contains(id) {
                problems.push(format!("volume {id} created again"));
            }
        }
        if volumes(&nomad).len() != 3 {
            problems.push(format!("volumes after the re-run: {:?}", volumes(&nomad)));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "killed after write {kill_after} ({writes_at_kill} writes seen, held {held:?}):\n  {}",
                problems.join("\n  ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

const JOBS: [&str; 8] = [
    "main-repo",
    "main-postgres",
    "main-pgbouncer",
    "main-pgadmin",
    "main-backup-full",
    "main-backup-diff",
    "main-backup-incr",
    "main-backup-ctl",
];
