//! Nomad's periodic dispatcher (nomad/periodic.go): every enabled periodic job that is neither
//! stopped nor parameterized is tracked; on each registration its next launch is worked out
//! afresh from now, in the job's time zone; when it comes, the following launch is worked out
//! from that launch time and a child `<id>/periodic-<launch unix seconds>` is registered, unless
//! the job prohibits overlap and a child still has a live evaluation or allocation. Launch
//! times and the `Validate` errors come from the cron library Nomad calls, run by the Go program
//! in `tests/cronexpr/`: the double agrees with Nomad on what a spec means, not with pgnomad.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::time::Instant;

use super::state::{str_of, State};
use super::DoubleConfig;
use crate::support::go_program;

/// A tracked periodic job: the registration it was tracked at, and its next launch (`None`:
/// no time matches its specs any more).
#[derive(Debug, Clone)]
pub struct Tracked {
    job_modify_index: u64,
    next: Option<SystemTime>,
}

/// What nomad/structs' `PeriodicConfig.Validate` and `Next` say of a job's `Periodic`.
pub struct CronAnswer {
    /// Validate's errors, in its order (empty: valid).
    pub errors: Vec<String>,
    /// The earliest launch strictly after the instant asked about.
    pub next: Option<SystemTime>,
}

pub fn ask(periodic: &Value, after: SystemTime) -> CronAnswer {
    let nanos = after.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
    let request = json!({
        "spec": str_of(periodic, "Spec"),
        "specs": periodic.get("Specs").filter(|s| s.is_array()).cloned().unwrap_or(json!([])),
        "time_zone": str_of(periodic, "TimeZone"),
        "after_unix_nanos": nanos,
    });
    let reply = go_program::exchange(&CRONEXPR, &request);
    assert!(reply.succeeded, "the cronexpr helper failed on {request}: {}", reply.stderr);
    let reply = reply.json;
    let errors = reply["errors"].as_array().into_iter().flatten().map(|e| e.as_str().unwrap_or_default().to_owned()).collect();
    let next = reply["next_unix_nanos"].as_u64().filter(|n| *n > 0).map(|n| UNIX_EPOCH + Duration::from_nanos(n));
    CronAnswer { errors, next }
}

/// The helper: `tests/cronexpr/`, on Debian's packaged cronexpr.
const CRONEXPR: go_program::GoProgram = go_program::GoProgram {
    name: "cronexpr",
    files: &["main.go"],
    debian_packages: &[("golang-github-gorhill-cronexpr-dev", "github.com/gorhill/cronexpr")],
    purpose: "the Nomad double launches periodic jobs with the cron library Nomad uses",
};

impl State {
    /// Tracks the periodic jobs as registered now and launches those due; the next instant a
    /// launch is due.
    pub fn dispatch_periodic(&mut self, config: &DoubleConfig, now: Instant) -> Option<Instant> {
        let wall = SystemTime::now();
        let active: Vec<((String, String), u64, Value)> = self
            .jobs
            .iter()
            .filter_map(|(key, record)| {
                let job = record.current();
                let periodic = job.get("Periodic").filter(|p| !p.is_null())?;
                let tracked = periodic["Enabled"] == json!(true)
                    && job["Stop"] != json!(true)
                    && job.get("ParameterizedJob").is_none_or(Value::is_null);
                tracked.then(|| (key.clone(), job["JobModifyIndex"].as_u64().unwrap_or(0), periodic.clone()))
            })
            .collect();
        self.periodic.retain(|key, _| active.iter().any(|(k, _, _)| k == key));
        let mut earliest: Option<Instant> = None;
        for (key, job_modify_index, periodic) in active {
            let mut next = match self.periodic.get(&key).filter(|t| t.job_modify_index == job_modify_index) {
                Some(tracked) => tracked.next,
                None => ask(&periodic, wall).next,
            };
            if let Some(launch) = next.filter(|at| *at <= wall) {
                next = ask(&periodic, launch).next;
                let overlapping = periodic["ProhibitOverlap"] == json!(true) && self.has_live_children(&key.0, &key.1);
                if !overlapping {
                    let seconds = launch.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                    // A launch that cannot register (its parent changed under it) is skipped,
                    // as Nomad logs and skips it.
                    let _ = self.launch_child(&key.0, &key.1, format!("periodic-{seconds}"), config, now, None);
                }
            }
            self.periodic.insert(key, Tracked { job_modify_index, next });
            if let Some(at) = next {
                let due = now + at.duration_since(wall).unwrap_or_default();
                earliest = Some(earliest.map_or(due, |e| e.min(due)));
            }
        }
        earliest
    }

    /// Nomad's RunningChildren: a child job of `id` with an evaluation not yet terminal or an
    /// allocation not terminal.
    fn has_live_children(&self, namespace: &str, id: &str) -> bool {
        let children: Vec<&str> = self
            .jobs
            .iter()
            .filter(|((ns, _), record)| ns == namespace && record.current()["ParentID"] == json!(id))
            .map(|((_, child), _)| child.as_str())
            .collect();
        let live_eval = self.evals.iter().any(|e| {
            e["Namespace"] == json!(namespace)
                && children.contains(&str_of(e, "JobID"))
                && !matches!(str_of(e, "Status"), "complete" | "failed" | "canceled")
        });
        live_eval || self.allocs.iter().any(|a| a.namespace == namespace && children.contains(&a.job_id.as_str()) && a.is_live())
    }
}
