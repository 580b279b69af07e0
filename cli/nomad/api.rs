//! The Nomad HTTP API without I/O: request builders that return a [`Request`], the response
//! models they decode into, and [`NomadError`]. `transport` sends them; tests read them.
//!
//! Jobs are passed as the `Job` object (`api.Job` JSON) that the compiler produces; the builders
//! wrap it into the endpoint's request type (`JobRegisterRequest`, `JobPlanRequest`).

pub mod error;
pub mod models;
pub mod request;

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

pub use error::{NomadError, RequestKind, ENFORCE_INDEX_ERR_PREFIX};
pub use models::*;
pub use request::{encode_path, encode_segment, Method, QueryMeta, Request, Response};

/// How a job register treats what is already on the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegisterOptions {
    /// Check-and-set: `Some(0)` registers only if the job does not exist yet, `Some(n)` only if
    /// its `JobModifyIndex` is still `n` (take it from the plan).
    pub enforce_index: Option<u64>,
    /// Keep the running counts of existing groups (what `nomad job run -preserve-counts` does).
    pub preserve_counts: bool,
    pub policy_override: bool,
}

fn job_id_of(job: &Value) -> &str {
    job.get("ID").and_then(Value::as_str).unwrap_or_default()
}

fn job_path(job_id: &str) -> String {
    format!("/v1/job/{}", encode_segment(job_id))
}

/// `PUT /v1/jobs` with a `JobRegisterRequest`. Optional fields are left out when unset, as the
/// Go client does (`omitempty`).
pub fn register_job(job: &Value, options: RegisterOptions) -> Request {
    let mut body = Map::new();
    body.insert("Job".into(), job.clone());
    if let Some(index) = options.enforce_index {
        body.insert("EnforceIndex".into(), Value::Bool(true));
        body.insert("JobModifyIndex".into(), json!(index));
    }
    if options.preserve_counts {
        body.insert("PreserveCounts".into(), Value::Bool(true));
    }
    if options.policy_override {
        body.insert("PolicyOverride".into(), Value::Bool(true));
    }
    Request::new(Method::Put, "/v1/jobs").with_body(Value::Object(body))
}

/// `PUT /v1/job/:id/plan` asking for the diff.
pub fn plan_job(job: &Value) -> Request {
    Request::new(Method::Put, format!("{}/plan", job_path(job_id_of(job)))).with_body(json!({ "Job": job, "Diff": true }))
}

pub fn read_job(job_id: &str) -> Request {
    Request::get(job_path(job_id))
}

pub fn job_versions(job_id: &str, with_diffs: bool) -> Request {
    let request = Request::get(format!("{}/versions", job_path(job_id)));
    if with_diffs {
        request.with_query("diffs", "true")
    } else {
        request
    }
}

/// Allocations of the job; `all` includes those of earlier job versions with the same ID.
pub fn job_allocations(job_id: &str, all: bool) -> Request {
    let request = Request::get(format!("{}/allocations", job_path(job_id)));
    if all {
        request.with_query("all", "true")
    } else {
        request
    }
}

pub fn job_evaluations(job_id: &str) -> Request {
    Request::get(format!("{}/evaluations", job_path(job_id)))
}

/// The most recent deployment of the job (`null` when there is none).
pub fn job_latest_deployment(job_id: &str) -> Request {
    Request::get(format!("{}/deployment", job_path(job_id)))
}

/// `DELETE /v1/job/:id`; `purge` removes it at once instead of leaving a dead job to be GC'd.
pub fn deregister_job(job_id: &str, purge: bool) -> Request {
    let request = Request::new(Method::Delete, job_path(job_id));
    if purge {
        request.with_query("purge", "true")
    } else {
        request
    }
}

pub fn force_periodic(job_id: &str) -> Request {
    Request::new(Method::Put, format!("{}/periodic/force", job_path(job_id)))
}

pub fn read_evaluation(eval_id: &str) -> Request {
    Request::get(format!("/v1/evaluation/{}", encode_segment(eval_id)))
}

/// `GET /v1/client/fs/logs/:alloc_id`: the whole of one task's stdout or stderr, as plain bytes
/// (`plain=true`, not framed) and without following it.
pub fn alloc_logs(alloc_id: &str, task: &str, stderr: bool) -> Request {
    Request::get(format!("/v1/client/fs/logs/{}", encode_segment(alloc_id)))
        .with_query("task", task)
        .with_query("type", if stderr { "stderr" } else { "stdout" })
        .with_query("origin", "start")
        .with_query("offset", "0")
        .with_query("plain", "true")
}

/// `POST /v1/job/:id/dispatch`; the payload travels base64-encoded (Go's []byte in JSON).
pub fn dispatch_job(job_id: &str, payload: Option<&[u8]>, meta: &BTreeMap<String, String>) -> Request {
    let mut body = Map::new();
    body.insert("JobID".into(), json!(job_id));
    if let Some(payload) = payload {
        body.insert("Payload".into(), json!(base64_encode(payload)));
    }
    if !meta.is_empty() {
        body.insert("Meta".into(), json!(meta));
    }
    Request::new(Method::Put, format!("{}/dispatch", job_path(job_id))).with_body(Value::Object(body))
}

/// `GET /v1/jobs?prefix=…&meta=true`: `prefix` narrows by ID on the server, `meta` returns each
/// job's `Meta` so callers can keep exactly the jobs they own (a prefix alone also matches
/// `pg-main-other` when asking for `pg-main`).
pub fn list_jobs(prefix: Option<&str>, with_meta: bool) -> Request {
    let mut request = Request::get("/v1/jobs");
    if let Some(prefix) = prefix {
        request = request.with_query("prefix", prefix);
    }
    if with_meta {
        request = request.with_query("meta", "true");
    }
    request
}

pub fn read_deployment(deployment_id: &str) -> Request {
    Request::get(format!("/v1/deployment/{}", encode_segment(deployment_id)))
}

pub fn fail_deployment(deployment_id: &str) -> Request {
    Request::new(Method::Put, format!("/v1/deployment/fail/{}", encode_segment(deployment_id)))
}

/// Promotes the canaries of all groups (`groups` empty) or of the named groups.
pub fn promote_deployment(deployment_id: &str, groups: &[String]) -> Request {
    let body = if groups.is_empty() {
        json!({ "DeploymentID": deployment_id, "All": true })
    } else {
        json!({ "DeploymentID": deployment_id, "Groups": groups })
    };
    Request::new(Method::Put, format!("/v1/deployment/promote/{}", encode_segment(deployment_id))).with_body(body)
}

/// `PUT /v1/volume/csi/:id/create`: the CSI plugin creates the volume and Nomad registers it.
/// `volume` is a `CSIVolume` object with at least `ID`, `Name`, `PluginID` and capabilities.
pub fn create_csi_volume(volume: &Value) -> Request {
    let id = volume.get("ID").and_then(Value::as_str).unwrap_or_default();
    Request::new(Method::Put, format!("/v1/volume/csi/{}/create", encode_segment(id))).with_body(json!({ "Volumes": [volume] }))
}

pub fn read_csi_volume(volume_id: &str) -> Request {
    Request::get(format!("/v1/volume/csi/{}", encode_segment(volume_id)))
}

pub fn list_csi_volumes(prefix: Option<&str>) -> Request {
    let request = Request::get("/v1/volumes").with_query("type", "csi");
    match prefix {
        Some(prefix) => request.with_query("prefix", prefix),
        None => request,
    }
}

/// Deletes the volume in storage through the plugin and deregisters it (`nomad volume delete`).
pub fn delete_csi_volume(volume_id: &str) -> Request {
    Request::new(Method::Delete, format!("/v1/volume/csi/{}/delete", encode_segment(volume_id)))
}

/// `GET /v1/vars?prefix=…`: paths and indexes of the variables under `prefix` (no items).
pub fn list_variables(prefix: &str) -> Request {
    Request::get("/v1/vars").with_query("prefix", prefix)
}

pub fn read_variable(path: &str) -> Request {
    Request::get(format!("/v1/var/{}", encode_path(path)))
}

/// `PUT /v1/var/:path`; with `cas = Some(0)` only creates, with `Some(n)` only replaces
/// modify index `n`. A conflict is a 409 carrying the current variable.
pub fn put_variable(path: &str, items: &BTreeMap<String, String>, cas: Option<u64>) -> Request {
    let request = Request::new(Method::Put, format!("/v1/var/{}", encode_path(path))).with_body(json!({ "Path": path, "Items": items }));
    match cas {
        Some(index) => request.with_query("cas", index.to_string()),
        None => request,
    }
}

pub fn delete_variable(path: &str, cas: Option<u64>) -> Request {
    let request = Request::new(Method::Delete, format!("/v1/var/{}", encode_path(path)));
    match cas {
        Some(index) => request.with_query("cas", index.to_string()),
        None => request,
    }
}

pub fn put_acl_policy(policy: &AclPolicy) -> Request {
    Request::new(Method::Put, format!("/v1/acl/policy/{}", encode_segment(&policy.name)))
        .with_body(serde_json::to_value(policy).expect("an ACL policy is plain data"))
}

pub fn status_leader() -> Request {
    Request::get("/v1/status/leader")
}

pub fn agent_self() -> Request {
    Request::get("/v1/agent/self")
}

pub fn list_nodes() -> Request {
    Request::get("/v1/nodes")
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (chunk[0] as u32) << 16 | (*chunk.get(1).unwrap_or(&0) as u32) << 8 | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_wraps_the_job_and_sets_check_and_set_only_when_asked() {
        let job = json!({"ID": "pg", "Name": "pg"});
        let plain = register_job(&job, RegisterOptions::default());
        assert_eq!(plain.body, Some(json!({"Job": job})));
        let cas = register_job(&job, RegisterOptions { enforce_index: Some(0), ..Default::default() });
        assert_eq!(cas.body.unwrap()["EnforceIndex"], json!(true));
        assert_eq!((cas.method, cas.path.as_str()), (Method::Put, "/v1/jobs"));
    }

    #[test]
    fn plan_asks_for_the_diff() {
        let request = plan_job(&json!({"ID": "pg main"}));
        assert_eq!(request.path, "/v1/job/pg%20main/plan");
        assert_eq!(request.body.unwrap()["Diff"], json!(true));
    }

    #[test]
    fn variables_keep_their_path_and_cas() {
        let items = BTreeMap::from([("password".to_string(), "x".to_string())]);
        let request = put_variable("nomad/jobs/pg", &items, Some(0));
        assert_eq!(request.path, "/v1/var/nomad/jobs/pg");
        assert_eq!(request.query, vec![("cas".to_string(), "0".to_string())]);
    }

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64_encode(b"hello"), "aGVsbG8=");
        assert_eq!(base64_encode(b"hi!"), "aGkh");
        assert_eq!(base64_encode(b""), "");
    }
}
