//! The double's HTTP face: recording, ACL, faults, leader loss, schema validation, blocking
//! queries, then one function per endpoint.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::state::{list, now_ns, str_of, Alloc, State, Table};
use super::{FaultKind, RecordedRequest, Shared};
use crate::support::schema;

pub fn router(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(shared)
}

pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (other, _) => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_query(uri: &Uri) -> Vec<(String, String)> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

/// Go's time.ParseDuration, as Nomad's parseWait uses it.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if number_end == 0 {
            return None;
        }
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let nanos = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += number * nanos;
        rest = &rest[unit_end..];
    }
    Some(Duration::from_nanos(total as u64))
}

pub fn text(status: u16, message: impl Into<String>) -> Response {
    let mut response = (StatusCode::from_u16(status).unwrap(), message.into()).into_response();
    response.headers_mut().insert("content-type", HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

fn json_reply(status: u16, body: &Value, index: u64, known_leader: bool) -> Response {
    let mut response = (StatusCode::from_u16(status).unwrap(), serde_json::to_vec(body).unwrap()).into_response();
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("x-nomad-index", HeaderValue::from_str(&index.to_string()).unwrap());
    headers.insert("x-nomad-knownleader", HeaderValue::from_static(if known_leader { "true" } else { "false" }));
    headers.insert("x-nomad-lastcontact", HeaderValue::from_static("0"));
    response
}

/// The endpoint pattern as x-endpoints spells it, for schema lookup.
fn route_pattern(segments: &[String]) -> String {
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    match s.as_slice() {
        ["v1", "job", _] => "/v1/job/:job_id".into(),
        ["v1", "job", _, rest @ ..] => format!("/v1/job/:job_id/{}", rest.join("/")),
        ["v1", "deployment", action, _] => format!("/v1/deployment/{action}/:deployment_id"),
        ["v1", "volume", "csi", _] => "/v1/volume/csi/:volume_id".into(),
        ["v1", "volume", "csi", _, action] => format!("/v1/volume/csi/:volume_id/{action}"),
        ["v1", "var", ..] => "/v1/var/:path".into(),
        _ => format!("/{}", s.join("/")),
    }
}

fn request_type(method: &str, pattern: &str) -> Option<String> {
    match pattern {
        // x-endpoints names the server struct; pgnomad sends what api.CSIVolumes().Create sends.
        "/v1/volume/csi/:volume_id/create" => Some("CSIVolumeCreateRequest".into()),
        "/v1/acl/policy/:name" => Some("ACLPolicy".into()),
        _ => schema::request_type(method, pattern),
    }
}

async fn handle(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = parse_query(&uri);
    let segments: Vec<String> = uri.path().trim_matches('/').split('/').map(percent_decode).collect();
    let parsed_body: Option<Result<Value, String>> = (!body.is_empty()).then(|| serde_json::from_slice(&body).map_err(|e| e.to_string()));
    shared.requests.lock().unwrap().push(RecordedRequest {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: query.clone(),
        body: parsed_body.as_ref().and_then(|b| b.as_ref().ok().cloned()),
    });

    // Faults first: they stand for the network and the servers misbehaving.
    let fault = {
        let mut faults = shared.faults.lock().unwrap();
        let found = faults
            .iter_mut()
            .find(|f| (f.method == "*" || f.method == method.as_str()) && uri.path().starts_with(&f.path_prefix) && f.times > 0);
        found.map(|f| {
            f.times -= 1;
            f.kind.clone()
        })
    };
    match fault {
        Some(FaultKind::Status(status, message)) => return text(status, message),
        // Unwinding without a panic message ends the connection task: the client sees the
        // connection closed before any answer.
        Some(FaultKind::DropConnection) => std::panic::resume_unwind(Box::new("nomad double: dropped connection")),
        Some(FaultKind::Delay(delay)) => tokio::time::sleep(delay).await,
        None => {}
    }

    let path_head: Vec<&str> = segments.iter().map(String::as_str).take(3).collect();
    let is_status = matches!(path_head.as_slice(), ["v1", "status", ..] | ["v1", "agent", ..]);
    if let Some(required) = &shared.config.acl_token {
        let sent = headers.get("x-nomad-token").and_then(|v| v.to_str().ok()).map(str::to_string).or_else(|| {
            headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::to_string)
        });
        match sent {
            _ if is_status && path_head.get(1) == Some(&"status") => {}
            None => return text(403, "Permission denied"),
            Some(token) if &token != required => return text(403, "ACL token not found"),
            Some(_) => {}
        }
    }
    let has_leader = shared.has_leader.load(Ordering::SeqCst);
    if !has_leader && !is_status {
        let mut response = text(500, "No cluster leader");
        response.headers_mut().insert("x-nomad-knownleader", HeaderValue::from_static("false"));
        return response;
    }

    let body = match parsed_body {
        Some(Err(message)) => return text(400, message),
        Some(Ok(value)) => Some(value),
        None => None,
    };
    let pattern = route_pattern(&segments);
    if let (Some(body), Some(type_name)) = (&body, request_type(method.as_str(), &pattern)) {
        let violations = schema::violations(&type_name, body);
        if !violations.is_empty() {
            let message = violations.join("\n");
            shared.violations.lock().unwrap().push(format!("{method} {}: {message}", uri.path()));
            return text(400, format!("request body does not match {type_name}: {message}"));
        }
    }

    let namespace = query.iter().find(|(k, _)| k == "namespace").map(|(_, v)| v.clone());
    let request = Incoming { method: method.as_str().to_string(), segments, query, body, namespace };
    if request.method == "GET" {
        if let Some(table) = table_for(&request.segments) {
            if let Err(response) = block(&shared, &request, table).await {
                return response;
            }
            let index = shared.state.lock().unwrap().table_index(table);
            return match read(&shared, &request) {
                Ok(body) => json_reply(200, &body, index, has_leader),
                Err((status, message)) => text(status, message),
            };
        }
    }
    let result = {
        let mut state = shared.state.lock().unwrap();
        respond(&mut state, &shared, &request, has_leader)
    };
    shared.changed();
    result
}

pub struct Incoming {
    pub method: String,
    pub segments: Vec<String>,
    pub query: Vec<(String, String)>,
    pub body: Option<Value>,
    pub namespace: Option<String>,
}

impl Incoming {
    fn query(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.query(key), Some("" | "true" | "1"))
    }

    fn namespace(&self) -> String {
        self.namespace.clone().unwrap_or_else(|| "default".into())
    }

    fn seg(&self) -> Vec<&str> {
        self.segments.iter().map(String::as_str).collect()
    }
}

fn table_for(segments: &[String]) -> Option<Table> {
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    Some(match s.as_slice() {
        ["v1", "jobs"] | ["v1", "job", _] | ["v1", "job", _, "versions" | "summary"] => Table::Jobs,
        ["v1", "job", _, "allocations"] | ["v1", "allocations"] | ["v1", "allocation", _] => Table::Allocs,
        ["v1", "job", _, "evaluations"] | ["v1", "evaluation", _] | ["v1", "evaluations"] => Table::Evals,
        ["v1", "job", _, "deployment" | "deployments"] | ["v1", "deployment", _] | ["v1", "deployments"] => Table::Deployments,
        ["v1", "var", ..] | ["v1", "vars"] => Table::Variables,
        ["v1", "volumes"] | ["v1", "volume", "csi", _] => Table::Volumes,
        ["v1", "nodes"] | ["v1", "node", _] => Table::Nodes,
        _ => return None,
    })
}

/// Holds a GET with `?index=N` until the table's index passes N or the wait runs out.
async fn block(shared: &Shared, request: &Incoming, table: Table) -> Result<(), Response> {
    let Some(index) = request.query("index") else { return Ok(()) };
    let index: u64 = index.parse().map_err(|_| text(400, "Invalid index"))?;
    let wait = match request.query("wait") {
        None => Duration::from_secs(300),
        Some(text_wait) => parse_go_duration(text_wait).ok_or_else(|| text(400, "Invalid wait time"))?.min(Duration::from_secs(600)),
    };
    let jitter = {
        use rand::Rng;
        let sixteenth = (wait / 16).as_nanos() as u64;
        Duration::from_nanos(if sixteenth == 0 { 0 } else { rand::rng().random_range(0..sixteenth) })
    };
    let deadline = tokio::time::Instant::now() + wait + jitter;
    let mut changes = shared.index_changed.subscribe();
    loop {
        if shared.state.lock().unwrap().table_index(table) > index {
            return Ok(());
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => continue,
            _ => return Ok(()),
        }
    }
}

fn job_stub(job: &Value, with_meta: bool) -> Value {
    let mut summary = serde_json::Map::new();
    for group in list(job, "TaskGroups") {
        summary.insert(
            str_of(group, "Name").into(),
            json!({"Queued": 0, "Complete": 0, "Failed": 0, "Running": 0, "Starting": 0, "Lost": 0, "Unknown": 0}),
        );
    }
    json!({
        "ID": job["ID"], "ParentID": job.get("ParentID").cloned().unwrap_or(json!("")), "Name": job["Name"], "Namespace": job["Namespace"],
        "Datacenters": job.get("Datacenters").cloned().unwrap_or(Value::Null), "NodePool": job["NodePool"], "Multiregion": null,
        "Type": job["Type"], "Priority": job["Priority"], "Periodic": job.get("Periodic").is_some_and(|p| !p.is_null()),
        "ParameterizedJob": job.get("ParameterizedJob").is_some_and(|p| !p.is_null()), "Stop": job["Stop"],
        "Status": job["Status"], "StatusDescription": job["StatusDescription"],
        "JobSummary": {"JobID": job["ID"], "Namespace": job["Namespace"], "Summary": summary, "Children": null, "CreateIndex": job["CreateIndex"], "ModifyIndex": job["ModifyIndex"]},
        "CreateIndex": job["CreateIndex"], "ModifyIndex": job["ModifyIndex"], "JobModifyIndex": job["JobModifyIndex"], "SubmitTime": job["SubmitTime"],
        "Meta": if with_meta { job.get("Meta").cloned().unwrap_or(Value::Null) } else { Value::Null },
    })
}

fn variable_json(namespace: &str, path: &str, variable: &super::state::Variable) -> Value {
    json!({
        "Namespace": namespace, "Path": path, "Items": variable.items,
        "CreateIndex": variable.create_index, "ModifyIndex": variable.modify_index,
        "CreateTime": variable.create_time, "ModifyTime": variable.modify_time,
    })
}

fn volume_json(namespace: &str, state: &State, volume: &super::state::Volume) -> Value {
    let id = str_of(&volume.spec, "ID");
    let claims: serde_json::Map<String, Value> = state
        .allocs
        .iter()
        .filter(|a| a.holds_claims() && a.namespace == namespace && a.volumes.iter().any(|v| v == id))
        .map(|a| (a.id.clone(), Value::Null))
        .collect();
    let capabilities = list(&volume.spec, "RequestedCapabilities");
    let access_mode = capabilities.first().map(|c| str_of(c, "AccessMode")).unwrap_or_default();
    let attachment_mode = capabilities.first().map(|c| str_of(c, "AttachmentMode")).unwrap_or_default();
    json!({
        "ID": id, "Name": volume.spec.get("Name").cloned().unwrap_or(json!(id)), "ExternalID": format!("ext-{id}"),
        "Namespace": namespace, "PluginID": volume.spec["PluginID"], "Provider": "double.csi", "ProviderVersion": "1.0",
        "AccessMode": access_mode, "AttachmentMode": attachment_mode,
        "RequestedCapabilities": capabilities, "Capacity": volume.spec.get("RequestedCapacityMin").cloned().unwrap_or(json!(0)),
        "Schedulable": true, "ControllerRequired": false, "ControllersHealthy": 1, "ControllersExpected": 1,
        "NodesHealthy": 1, "NodesExpected": 1, "ResourceExhausted": "0001-01-01T00:00:00Z",
        "ReadAllocs": {}, "WriteAllocs": claims, "CurrentWriters": claims.len(), "CurrentReaders": 0,
        "CreateIndex": volume.create_index, "ModifyIndex": volume.modify_index, "CreateTime": 0, "ModifyTime": 0,
    })
}

/// `server.Allocation`: the stub's fields and the placement's resources and ports.
fn full_allocation(state: &State, alloc: &Alloc) -> Value {
    let view = state.view(alloc);
    let ports: Vec<Value> = alloc
        .ports
        .iter()
        .map(|p| json!({"Label": p.label, "Value": p.value, "To": p.to, "HostIP": p.host_ip, "IgnoreCollision": false}))
        .collect();
    let port_json = |reserved: bool| -> Vec<Value> {
        alloc
            .ports
            .iter()
            .filter(|p| p.reserved == reserved)
            .map(|p| json!({"Label": p.label, "Value": p.value, "To": p.to, "HostNetwork": "default"}))
            .collect()
    };
    let address = view.node_address.clone();
    let mode = list(&view.group_spec, "Networks").first().map(|n| str_of(n, "Mode").to_string()).unwrap_or_else(|| "host".into());
    let networks = if list(&view.group_spec, "Networks").is_empty() {
        Value::Null
    } else {
        json!([{"Mode": if mode.is_empty() { "host" } else { mode.as_str() }, "Device": "", "CIDR": "", "IP": address, "Hostname": "",
                 "MBits": 0, "ReservedPorts": port_json(true), "DynamicPorts": port_json(false)}])
    };
    let tasks: serde_json::Map<String, Value> = list(&view.group_spec, "Tasks")
        .iter()
        .map(|t| {
            let (cpu, memory) = super::sched::group_resources(&json!({"Tasks": [t]}));
            (
                str_of(t, "Name").to_string(),
                json!({"Cpu": {"CpuShares": cpu}, "Memory": {"MemoryMB": memory}, "Networks": null, "Devices": null}),
            )
        })
        .collect();
    let mut full = alloc.stub();
    let object = full.as_object_mut().unwrap();
    object.remove("JobType");
    object.remove("JobVersion");
    object.insert("Resources".into(), json!({"CPU": alloc.cpu, "MemoryMB": alloc.memory_mb, "DiskMB": 300, "Networks": networks}));
    object.insert(
        "AllocatedResources".into(),
        json!({"Tasks": tasks, "TaskLifecycles": null, "Shared": {"Networks": networks, "DiskMB": 300, "Ports": ports}}),
    );
    object.insert("PreviousAllocation".into(), json!(alloc.previous_allocation));
    object.insert("NextAllocation".into(), json!(alloc.next_allocation));
    object.insert("DeploymentID".into(), json!(alloc.deployment_id.clone().unwrap_or_default()));
    object.insert("AllocModifyIndex".into(), json!(alloc.modify_index));
    full
}

/// GET endpoints (after any blocking wait).
fn read(shared: &Shared, request: &Incoming) -> Result<Value, (u16, String)> {
    let state = shared.state.lock().unwrap();
    let ns = request.namespace();
    let job = |id: &str| state.job(&ns, id).ok_or((404u16, "job not found".to_string()));
    Ok(match request.seg().as_slice() {
        ["v1", "jobs"] => {
            let prefix = request.query("prefix").unwrap_or_default();
            let with_meta = request.flag("meta");
            let all_namespaces = ns == "*";
            Value::Array(
                state
                    .jobs
                    .iter()
                    .filter(|((job_ns, id), _)| (all_namespaces || *job_ns == ns) && id.starts_with(prefix))
                    .map(|(_, record)| job_stub(record.current(), with_meta))
                    .collect(),
            )
        }
        ["v1", "job", id] => job(id)?.current().clone(),
        ["v1", "job", id, "versions"] => {
            let versions: Vec<Value> = job(id)?.versions.iter().rev().cloned().collect();
            json!({"Versions": versions, "Diffs": null, "Index": state.table_index(Table::Jobs), "LastContact": 0, "KnownLeader": true, "NextToken": ""})
        }
        ["v1", "job", id, "allocations"] => {
            job(id)?;
            Value::Array(state.allocs.iter().filter(|a| a.namespace == ns && a.job_id == *id).map(|a| a.stub()).collect())
        }
        ["v1", "job", id, "evaluations"] => {
            job(id)?;
            Value::Array(state.evals.iter().filter(|e| e["Namespace"] == json!(ns) && e["JobID"] == json!(id)).cloned().collect())
        }
        ["v1", "job", id, "deployment"] => {
            job(id)?;
            state.deployments.iter().rev().find(|d| d.namespace == ns && d.job_id == *id).map(|d| d.to_json()).unwrap_or(Value::Null)
        }
        ["v1", "job", id, "deployments"] => {
            job(id)?;
            Value::Array(state.deployments.iter().rev().filter(|d| d.namespace == ns && d.job_id == *id).map(|d| d.to_json()).collect())
        }
        ["v1", "deployment", id] => {
            state.deployments.iter().find(|d| d.id == *id).map(|d| d.to_json()).ok_or((404, "deployment not found".to_string()))?
        }
        ["v1", "deployments"] => Value::Array(state.deployments.iter().map(|d| d.to_json()).collect()),
        ["v1", "evaluation", id] => {
            state.evals.iter().find(|e| e["ID"] == json!(id)).cloned().ok_or((404, "eval not found".to_string()))?
        }
        ["v1", "allocations"] => Value::Array(state.allocs.iter().map(|a| a.stub()).collect()),
        ["v1", "vars"] => {
            let prefix = request.query("prefix").unwrap_or_default();
            Value::Array(
                state
                    .variables
                    .iter()
                    .filter(|((var_ns, path), _)| *var_ns == ns && path.starts_with(prefix))
                    .map(|((var_ns, path), v)| {
                        let mut meta = variable_json(var_ns, path, v);
                        meta.as_object_mut().unwrap().remove("Items");
                        meta
                    })
                    .collect(),
            )
        }
        ["v1", "var", rest @ ..] => {
            let path = rest.join("/");
            let variable = state.variables.get(&(ns.clone(), path.clone())).ok_or((404, "variable not found".to_string()))?;
            variable_json(&ns, &path, variable)
        }
        ["v1", "volumes"] => {
            if request.query("type") != Some("csi") {
                return Err((400, "unsupported volume type".into()));
            }
            let prefix = request.query("prefix").unwrap_or_default();
            Value::Array(
                state
                    .volumes
                    .iter()
                    .filter(|((vol_ns, id), _)| *vol_ns == ns && id.starts_with(prefix))
                    .map(|(_, volume)| {
                        let mut full = volume_json(&ns, &state, volume);
                        let object = full.as_object_mut().unwrap();
                        for key in ["ReadAllocs", "WriteAllocs", "RequestedCapabilities", "Capacity", "ProviderVersion"] {
                            object.remove(key);
                        }
                        full
                    })
                    .collect(),
            )
        }
        ["v1", "volume", "csi", id] => {
            let volume = state.volumes.get(&(ns.clone(), id.to_string())).ok_or((404, "volume not found".to_string()))?;
            volume_json(&ns, &state, volume)
        }
        ["v1", "nodes"] => Value::Array(state.nodes.iter().map(|n| n.stub(state.table_index(Table::Nodes))).collect()),
        ["v1", "node", id] => state
            .nodes
            .iter()
            .find(|n| n.id == *id || n.name == *id)
            .map(|n| n.full(state.table_index(Table::Nodes)))
            .ok_or((404, "node not found".to_string()))?,
        ["v1", "allocation", id] => {
            let alloc = state.allocs.iter().find(|a| a.id == *id).ok_or((404, "alloc not found".to_string()))?;
            full_allocation(&state, alloc)
        }
        _ => return Err((404, "404 page not found".into())),
    })
}

/// Everything that is not a blocking-capable GET.
fn respond(state: &mut State, shared: &Shared, request: &Incoming, has_leader: bool) -> Response {
    let ns = request.namespace();
    let config = &shared.config;
    let now = tokio::time::Instant::now();
    let ok = |body: Value, index: u64| json_reply(200, &body, index, has_leader);
    let body = request.body.clone().unwrap_or(Value::Null);
    let method = request.method.as_str();
    let write = matches!(method, "PUT" | "POST");
    match (method, request.seg().as_slice()) {
        ("GET", ["v1", "status", "leader"]) => ok(json!(if has_leader { "127.0.0.1:4647" } else { "" }), state.index),
        ("GET", ["v1", "status", "peers"]) => ok(json!(["127.0.0.1:4647"]), state.index),
        ("GET", ["v1", "agent", "self"]) => ok(
            json!({
                "config": {"Region": "global", "Datacenter": "dc1", "Version": {"Version": "1.11.2"}, "ACL": {"Enabled": config.acl_token.is_some()}},
                "member": {"Name": "double.global", "Addr": "127.0.0.1", "Port": 4648, "Status": "alive", "Tags": {"region": "global", "dc": "dc1", "role": "nomad"}},
                "stats": {},
            }),
            state.index,
        ),
        (_, ["v1", "jobs"]) if write => register(state, request, &body, &ns, config, now, None, has_leader),
        (_, ["v1", "job", id]) if write => register(state, request, &body, &ns, config, now, Some(id), has_leader),
        ("DELETE", ["v1", "job", id]) => reply(state.deregister(&ns, id, request.flag("purge"), now), state.index, has_leader),
        (_, ["v1", "job", id, "plan"]) if write => {
            if str_of(&body["Job"], "ID") != *id {
                return text(400, "Job ID does not match");
            }
            let namespace = job_namespace(request, &body);
            reply(state.plan(&body, &namespace, config, now), state.index, has_leader)
        }
        (_, ["v1", "job", id, "periodic", "force"]) if write => {
            let Some(record) = state.job(&ns, id) else { return text(404, "job not found") };
            let job = record.current();
            if job.get("Periodic").is_none_or(Value::is_null) {
                return text(500, "can't force launch non-periodic job");
            }
            // The periodic dispatcher tracks only active periodic jobs (IsPeriodicActive:
            // enabled, not stopped, not parameterized).
            if job["Periodic"]["Enabled"] != json!(true) || job["Stop"] == json!(true) {
                return text(500, format!("force launch for job {id:?} failed: can't force run non-tracked job {id:?} ({ns})"));
            }
            let result = state.launch_child(&ns, id, format!("periodic-{}", now_ns() / 1_000_000_000), config, now, None);
            let index = state.index;
            reply(
                result.map(|(_, r)| json!({"EvalID": r["EvalID"], "EvalCreateIndex": r["EvalCreateIndex"], "Index": index})),
                index,
                has_leader,
            )
        }
        (_, ["v1", "job", id, "dispatch"]) if write => {
            let Some(record) = state.job(&ns, id) else { return text(404, "job not found") };
            if record.current().get("ParameterizedJob").is_none_or(Value::is_null) {
                return text(500, format!("Specified job \"{id}\" is not a parameterized job"));
            }
            if let Err(message) = validate_dispatch(&record.current()["ParameterizedJob"], &body) {
                return text(500, message);
            }
            let suffix = format!("dispatch-{}-{}", now_ns() / 1_000_000_000, &super::state::new_id()[..8]);
            let result = state.launch_child(&ns, id, suffix, config, now, body.get("Meta"));
            let index = state.index;
            reply(
                result.map(|(child, r)| json!({"DispatchedJobID": child, "EvalID": r["EvalID"], "EvalCreateIndex": r["EvalCreateIndex"], "JobCreateIndex": index, "Index": index})),
                index,
                has_leader,
            )
        }
        ("GET", ["v1", "client", "fs", "logs", alloc_id]) => client_logs(state, shared, request, alloc_id),
        (_, ["v1", "deployment", action @ ("fail" | "promote"), id]) if write => {
            let index = state.bump(Table::Deployments);
            let Some(deployment) = state.deployments.iter_mut().find(|d| d.id == *id) else { return text(404, "deployment not found") };
            if deployment.status != "running" {
                return text(500, format!("can't {action} terminal deployment"));
            }
            if *action == "fail" {
                deployment.status = "failed";
                deployment.description = "Deployment marked as failed".into();
                deployment.modify_index = index;
            } else {
                deployment.modify_index = index;
            }
            ok(json!({"EvalID": super::state::new_id(), "EvalCreateIndex": index, "DeploymentModifyIndex": index, "Index": index}), index)
        }
        (_, ["v1", "volume", "csi", id, "create"]) if write => {
            let volumes = list(&body, "Volumes");
            if volumes.is_empty() {
                return text(400, "must specify at least one volume");
            }
            let mut created = Vec::new();
            for volume in volumes {
                if str_of(volume, "ID") != *id || volumes.len() > 1 {
                    return text(400, "volume ID does not match request path");
                }
                if str_of(volume, "PluginID").is_empty() {
                    return text(400, "1 error occurred:\n\t* missing plugin ID\n\n");
                }
                let namespace = match str_of(volume, "Namespace") {
                    "" => ns.clone(),
                    other => other.to_string(),
                };
                let key = (namespace.clone(), id.to_string());
                let index = state.bump(Table::Volumes);
                let create_index = state.volumes.get(&key).map(|v| v.create_index).unwrap_or(index);
                state.volumes.insert(key.clone(), super::state::Volume { spec: volume.clone(), create_index, modify_index: index });
                if create_index == index {
                    state.volume_nodes.remove(&key);
                }
                created.push(volume_json(&namespace, state, &state.volumes[&key]));
            }
            ok(
                json!({"Volumes": created, "Warnings": "", "Index": state.index, "LastContact": 0, "KnownLeader": true, "NextToken": ""}),
                state.index,
            )
        }
        ("DELETE", ["v1", "volume", "csi", id, ..]) => {
            let key = (ns.clone(), id.to_string());
            if !state.volumes.contains_key(&key) {
                return text(404, "volume not found");
            }
            let claimed: Vec<String> =
                state.allocs.iter().filter(|a| a.holds_claims() && a.volumes.iter().any(|v| v == id)).map(|a| a.id.clone()).collect();
            if !claimed.is_empty() {
                return text(500, format!("volume in use: {id}"));
            }
            state.volumes.remove(&key);
            state.volume_nodes.remove(&key);
            let index = state.bump(Table::Volumes);
            json_reply(200, &Value::Null, index, has_leader)
        }
        (_, ["v1", "var", rest @ ..]) if method == "PUT" || method == "DELETE" => {
            variable_write(state, request, &body, &rest.join("/"), has_leader)
        }
        (_, ["v1", "acl", "policy", name]) if write => {
            let index = state.bump(Table::Acl);
            let mut policy = body.clone();
            policy["Name"] = json!(name);
            state.policies.insert(name.to_string(), policy);
            json_reply(200, &Value::Null, index, has_leader)
        }
        (_, ["v1", family, ..]) if KNOWN_FAMILIES.contains(family) => text(405, "Invalid method"),
        _ => text(404, "404 page not found"),
    }
}

/// First path segments the double serves; anything else is an unknown URL (404), while a
/// known path with the wrong method is 405, as in Nomad.
const KNOWN_FAMILIES: &[&str] = &[
    "jobs",
    "job",
    "deployment",
    "deployments",
    "volume",
    "volumes",
    "var",
    "vars",
    "acl",
    "status",
    "agent",
    "nodes",
    "evaluation",
    "evaluations",
    "allocations",
];

/// Nomad's checks of a dispatch against the job's `parameterized` block
/// (nomad/job_endpoint.go `validateDispatchRequest`): the payload rule, then meta keys the job
/// does not name, then required keys left out.
fn validate_dispatch(parameterized: &Value, body: &Value) -> Result<(), String> {
    let payload = body["Payload"].as_str().unwrap_or_default();
    match (parameterized["Payload"].as_str().unwrap_or("optional"), payload.is_empty()) {
        ("forbidden", false) => return Err("Payload provided but forbidden".into()),
        ("required", true) => return Err("Payload not provided but required".into()),
        _ => {}
    }
    let names = |field: &str| -> Vec<String> {
        parameterized[field].as_array().into_iter().flatten().filter_map(|k| k.as_str().map(str::to_owned)).collect()
    };
    let (required, optional) = (names("MetaRequired"), names("MetaOptional"));
    let meta: Vec<String> = body["Meta"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
    let unpermitted: Vec<&String> = meta.iter().filter(|k| !required.contains(k) && !optional.contains(k)).collect();
    if !unpermitted.is_empty() {
        return Err(format!("Dispatch request included unpermitted metadata keys: {}", go_list(&unpermitted)));
    }
    let missing: Vec<&String> = required.iter().filter(|k| !meta.contains(k)).collect();
    if !missing.is_empty() {
        return Err(format!("Dispatch did not provide required meta keys: {}", go_list(&missing)));
    }
    Ok(())
}

/// A Go `%v` of a string slice: `[a b]`.
fn go_list(items: &[&String]) -> String {
    format!("[{}]", items.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" "))
}

/// `GET /v1/client/fs/logs/:alloc_id?task=&type=stdout|stderr&origin=start|end&offset=&plain=`
/// (command/agent/fs_endpoint.go): the task's log as its node keeps it, with `plain=true` as
/// the bytes themselves. The double neither streams (`follow=true`) nor frames (Nomad's
/// `StreamFrame` objects without `plain`): both are refused rather than answered otherwise.
fn client_logs(state: &State, shared: &Shared, request: &Incoming, alloc_id: &str) -> Response {
    let Some(task) = request.query("task").filter(|t| !t.is_empty()) else { return text(400, "must provide task name") };
    let kind = match request.query("type") {
        Some(kind @ ("stdout" | "stderr")) => kind,
        Some(_) => return text(400, "log type must be \"stdout\" or \"stderr\""),
        None => return text(400, "must provide log type (stdout/stderr)"),
    };
    let origin = request.query("origin").unwrap_or("start");
    if origin != "start" && origin != "end" {
        return text(400, "origin must be start or end");
    }
    let offset: usize = match request.query("offset").map(str::parse) {
        None => 0,
        Some(Ok(offset)) => offset,
        Some(Err(_)) => return text(400, "failed to parse offset"),
    };
    if request.flag("follow") || !request.flag("plain") {
        return text(501, "the Nomad double answers logs only with plain=true and follow=false");
    }
    let Some(alloc) = state.allocs.iter().find(|a| a.id == alloc_id || (alloc_id.len() >= 8 && a.id.starts_with(alloc_id))) else {
        return text(404, format!("unknown allocation \"{alloc_id}\""));
    };
    let view = state.view(alloc);
    let known = list(&view.group_spec, "Tasks").iter().any(|t| str_of(t, "Name") == task);
    if !known {
        return text(400, format!("unknown task name \"{task}\""));
    }
    let reader = shared.logs.read().unwrap().clone();
    let bytes = reader.and_then(|read| read(&alloc.node_name, &alloc.id, alloc.group.as_str(), task, kind)).unwrap_or_default();
    let start = match origin {
        "start" => offset.min(bytes.len()),
        _ => bytes.len().saturating_sub(offset),
    };
    let data = &bytes[start..];
    Response::builder().status(200).header("content-type", "text/plain").body(axum::body::Body::from(data.to_vec())).unwrap()
}

fn reply(result: Result<Value, (u16, String)>, index: u64, has_leader: bool) -> Response {
    match result {
        Ok(body) => json_reply(200, &body, index, has_leader),
        Err((status, message)) => text(status, message),
    }
}

/// Namespace precedence for register/plan: query, then the request body, then the job.
fn job_namespace(request: &Incoming, body: &Value) -> String {
    request
        .namespace
        .clone()
        .or_else(|| Some(str_of(body, "Namespace").to_string()).filter(|s| !s.is_empty()))
        .or_else(|| Some(str_of(&body["Job"], "Namespace").to_string()).filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "default".into())
}

#[allow(clippy::too_many_arguments)]
fn register(
    state: &mut State,
    request: &Incoming,
    body: &Value,
    _ns: &str,
    config: &super::DoubleConfig,
    now: tokio::time::Instant,
    path_id: Option<&str>,
    has_leader: bool,
) -> Response {
    if body.get("Job").is_none_or(Value::is_null) {
        return text(400, "Job must be specified");
    }
    if let Some(id) = path_id {
        if str_of(&body["Job"], "ID") != id {
            return text(400, "Job ID does not match name");
        }
    }
    let namespace = job_namespace(request, body);
    reply(state.register(body, &namespace, config, now), state.index, has_leader)
}

fn variable_write(state: &mut State, request: &Incoming, body: &Value, path: &str, has_leader: bool) -> Response {
    let ns = request
        .namespace
        .clone()
        .or_else(|| Some(str_of(body, "Namespace").to_string()).filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "default".into());
    let key = (ns.clone(), path.to_string());
    let cas: Option<u64> = match request.query("cas") {
        None => None,
        Some(text_cas) => match text_cas.parse() {
            Ok(value) => Some(value),
            Err(_) => return text(400, "failed to parse cas value"),
        },
    };
    let current_index = state.variables.get(&key).map(|v| v.modify_index).unwrap_or(0);
    if let Some(expected) = cas {
        if expected != current_index {
            // Nomad answers a conflict with the variable as it is now (an empty one if absent).
            let current = match state.variables.get(&key) {
                Some(v) => variable_json(&ns, path, v),
                None => json!({"Namespace": ns, "Path": path, "CreateIndex": 0, "ModifyIndex": 0, "CreateTime": 0, "ModifyTime": 0}),
            };
            return json_reply(409, &current, state.index, has_leader);
        }
    }
    if request.method == "DELETE" {
        state.variables.remove(&key);
        let index = state.bump(Table::Variables);
        return json_reply(200, &Value::Null, index, has_leader);
    }
    if str_of(body, "Path") != path && !str_of(body, "Path").is_empty() {
        return text(400, "variable path in body does not match path in URL");
    }
    if body.get("Items").and_then(Value::as_object).is_none_or(|items| items.is_empty()) {
        return text(400, "1 error occurred:\n\t* variable missing Items\n\n");
    }
    let index = state.bump(Table::Variables);
    let now = now_ns();
    let entry = state.variables.entry(key).or_insert(super::state::Variable {
        items: json!({}),
        create_index: index,
        modify_index: index,
        create_time: now,
        modify_time: now,
    });
    entry.items = body["Items"].clone();
    entry.modify_index = index;
    entry.modify_time = now;
    let reply_body = variable_json(&ns, path, &state.variables[&(ns.clone(), path.to_string())]);
    json_reply(200, &reply_body, index, has_leader)
}

#[cfg(test)]
mod tests {}
