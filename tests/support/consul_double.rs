//! A small Consul stand-in built on the Nomad double's state: the services of running
//! allocations, passing or critical per the same health oracle, with blocking queries.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::job_rules::{group_port_labels, interpolate_service_name};
use super::nomad_double::routes_support::{parse_go_duration, parse_query, percent_decode, text};
use super::nomad_double::state::{list, probe_for, str_of, Table, NODE_ID, NODE_NAME};
use super::nomad_double::{RecordedRequest, ServerThread, Shared};

pub struct ConsulDouble {
    server: ServerThread,
}

impl ConsulDouble {
    pub(crate) fn start(shared: Arc<Shared>) -> Self {
        let router = axum::Router::new().fallback(handle).with_state(shared);
        ConsulDouble { server: ServerThread::spawn(router, None) }
    }

    pub fn address(&self) -> String {
        format!("http://{}", self.server.address)
    }
}

fn reply(body: &Value, index: u64) -> Response {
    let mut response = (StatusCode::OK, serde_json::to_vec(body).unwrap()).into_response();
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("x-consul-index", HeaderValue::from_str(&index.to_string()).unwrap());
    headers.insert("x-consul-knownleader", HeaderValue::from_static("true"));
    headers.insert("x-consul-lastcontact", HeaderValue::from_static("0"));
    response
}

/// Every registered service instance: (service name, tags, entry) from running allocations.
fn service_entries(shared: &Shared) -> Vec<(String, Vec<Value>, Value)> {
    let oracle = shared.oracle();
    let state = shared.state.lock().unwrap();
    let mut entries = Vec::new();
    for alloc in state.allocs.iter().filter(|a| a.is_live() && a.client_status == "running") {
        let Some(record) = state.job(&alloc.namespace, &alloc.job_id) else { continue };
        let Some(job) = record.versions.iter().find(|v| v["Version"].as_u64() == Some(alloc.job_version)) else { continue };
        let Some(group) = list(job, "TaskGroups").iter().find(|g| str_of(g, "Name") == alloc.group) else { continue };
        let ports = group_port_labels(group);
        let mut services: Vec<(Value, String)> = list(group, "Services").iter().map(|s| (s.clone(), String::new())).collect();
        for task in list(group, "Tasks") {
            services.extend(list(task, "Services").iter().map(|s| (s.clone(), str_of(task, "Name").to_string())));
        }
        for (service, task) in services {
            if !matches!(str_of(&service, "Provider"), "" | "consul") {
                continue;
            }
            let name = interpolate_service_name(str_of(&service, "Name"), str_of(job, "Name"), &alloc.group, &task);
            let port_position = ports.iter().position(|p| p == str_of(&service, "PortLabel")).unwrap_or(0) as u64;
            let label = str_of(&service, "PortLabel");
            let mapped =
                state.host_ports.iter().find(|((group, l), _)| *group == alloc.group && l == label).map(|(_, port)| u64::from(*port));
            let port = mapped.unwrap_or(20000 + alloc.group_index as u64 * 100 + alloc.alloc_index * 10 + port_position);
            let mut checks = vec![
                json!({"Node": NODE_NAME, "CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing", "Output": "", "ServiceID": "", "ServiceName": ""}),
            ];
            for check in list(&service, "Checks") {
                let passing = oracle(&probe_for(alloc, job, &service, check, &task));
                checks.push(json!({
                    "Node": NODE_NAME, "CheckID": format!("_nomad-check-{}-{}", alloc.id, str_of(check, "Name")),
                    "Name": str_of(check, "Name"), "Status": if passing { "passing" } else { "critical" },
                    "Output": if passing { "HTTP 200 OK" } else { "HTTP 503 Service Unavailable" },
                    "ServiceID": format!("_nomad-task-{}-{}", alloc.id, name), "ServiceName": name,
                }));
            }
            let tags = list(&service, "Tags").to_vec();
            let entry = json!({
                "Node": {"ID": NODE_ID, "Node": NODE_NAME, "Address": "127.0.0.1", "Datacenter": "dc1"},
                "Service": {"ID": format!("_nomad-task-{}-{}", alloc.id, name), "Service": name, "Tags": tags, "Meta": service.get("Meta").cloned().unwrap_or(json!({})), "Address": "127.0.0.1", "Port": port},
                "Checks": checks,
            });
            entries.push((name, tags, entry));
        }
    }
    entries
}

async fn handle(axum::extract::State(shared): axum::extract::State<Arc<Shared>>, method: Method, uri: Uri, _body: Bytes) -> Response {
    let query = parse_query(&uri);
    shared.requests.lock().unwrap().push(RecordedRequest {
        method: format!("CONSUL {method}"),
        path: uri.path().to_string(),
        query: query.clone(),
        body: None,
    });
    let get = |key: &str| query.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    if let Some(index) = get("index") {
        let Ok(index) = index.parse::<u64>() else { return text(400, "Invalid index") };
        let wait = match get("wait") {
            None => Duration::from_secs(300),
            Some(w) => match parse_go_duration(&w) {
                Some(w) => w.min(Duration::from_secs(600)),
                None => return text(400, "Invalid wait time"),
            },
        };
        let deadline = tokio::time::Instant::now() + wait;
        let mut changes = shared.index_changed.subscribe();
        while shared.state.lock().unwrap().table_index(Table::Allocs) <= index {
            if !matches!(tokio::time::timeout_at(deadline, changes.changed()).await, Ok(Ok(()))) {
                break;
            }
        }
    }
    let index = shared.state.lock().unwrap().table_index(Table::Allocs);
    let segments: Vec<String> = uri.path().trim_matches('/').split('/').map(percent_decode).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match segments.as_slice() {
        ["v1", "status", "leader"] => reply(&json!("127.0.0.1:8300"), index),
        ["v1", "catalog", "services"] => {
            let mut services = serde_json::Map::new();
            services.insert("consul".into(), json!([]));
            for (name, tags, _) in service_entries(&shared) {
                let known = services.entry(name).or_insert(json!([])).as_array_mut().unwrap();
                for tag in tags {
                    if !known.contains(&tag) {
                        known.push(tag);
                    }
                }
            }
            reply(&Value::Object(services), index)
        }
        ["v1", "health", "service", service] => {
            let passing_only = get("passing").is_some_and(|v| v != "false");
            let entries: Vec<Value> = service_entries(&shared)
                .into_iter()
                .filter(|(name, _, _)| name == service)
                .map(|(_, _, entry)| entry)
                .filter(|entry| !passing_only || list(entry, "Checks").iter().all(|c| c["Status"] == "passing"))
                .collect();
            reply(&Value::Array(entries), index)
        }
        _ => text(404, "404 page not found"),
    }
}
