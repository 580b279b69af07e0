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
use super::nomad_double::state::{list, str_of, Table};
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
pub(crate) fn service_entries(shared: &Shared) -> Vec<(String, Vec<Value>, Value)> {
    let oracle = shared.oracle();
    let state = shared.state.lock().unwrap();
    let mut entries = Vec::new();
    // Services are registered while the allocation runs (and until it stopped).
    for alloc in state.allocs.iter().filter(|a| a.client_status == "running") {
        let node = state.nodes.get(alloc.node);
        let node_name = node.map(|n| n.name.clone()).unwrap_or_default();
        let node_id = node.map(|n| n.id.clone()).unwrap_or_default();
        let node_address = node.map(|n| n.address.clone()).unwrap_or_default();
        let datacenter = node.map(|n| n.datacenter.clone()).unwrap_or_default();
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
            let label = str_of(&service, "PortLabel");
            let _ = &ports;
            let mapped =
                state.host_ports.iter().find(|((group, l), _)| *group == alloc.group && l == label).map(|(_, port)| u64::from(*port));
            // The node's address and the port the scheduler mapped for the label; a test's
            // map_host_port points at a real program on 127.0.0.1 instead.
            let (address, port) = match mapped {
                Some(port) => ("127.0.0.1".to_string(), port),
                None => {
                    let assigned = alloc.ports.iter().find(|p| p.label == label).map(|p| u64::from(p.value));
                    (node_address.clone(), assigned.or_else(|| label.parse().ok()).unwrap_or(0))
                }
            };
            let mut checks = vec![
                json!({"Node": node_name, "CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing", "Output": "", "ServiceID": "", "ServiceName": ""}),
            ];
            for check in list(&service, "Checks") {
                let (passing, output) = state.check_passing(alloc, job, &service, check, &task, &oracle);
                checks.push(json!({
                    "Node": node_name, "CheckID": format!("_nomad-check-{}-{}", alloc.id, str_of(check, "Name")),
                    "Name": str_of(check, "Name"), "Status": if passing { "passing" } else { "critical" },
                    "Output": output,
                    "ServiceID": format!("_nomad-task-{}-{}", alloc.id, name), "ServiceName": name,
                }));
            }
            // Nomad interpolates a service's tags and meta with the allocation's runtime
            // variables before registering it.
            let runtime = |text: &str| {
                text.replace("${NOMAD_ALLOC_ID}", &alloc.id)
                    .replace("${NOMAD_ALLOC_NAME}", &format!("{}.{}[{}]", alloc.job_id, alloc.group, alloc.alloc_index))
                    .replace("${NOMAD_ALLOC_INDEX}", &alloc.alloc_index.to_string())
                    .replace("${NOMAD_JOB_NAME}", str_of(job, "Name"))
                    .replace("${NOMAD_JOB_ID}", &alloc.job_id)
                    .replace("${NOMAD_GROUP_NAME}", &alloc.group)
                    .replace("${NOMAD_TASK_NAME}", &task)
                    .replace("${node.unique.name}", &node_name)
                    .replace("${node.unique.id}", &node_id)
            };
            let tags: Vec<Value> = list(&service, "Tags").iter().map(|t| json!(runtime(t.as_str().unwrap_or_default()))).collect();
            let meta: serde_json::Map<String, Value> = service
                .get("Meta")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), json!(runtime(v.as_str().unwrap_or_default()))))
                .collect();
            let entry = json!({
                "Node": {"ID": node_id, "Node": node_name, "Address": node_address, "Datacenter": datacenter},
                "Service": {"ID": format!("_nomad-task-{}-{}", alloc.id, name), "Service": name, "Tags": tags, "Meta": meta, "Address": address, "Port": port},
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
