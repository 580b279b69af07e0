//! Small jobs for tests, in the `Job` JSON the compiler produces.

use serde_json::{json, Value};

pub const SECOND: u64 = 1_000_000_000;

/// A check as a Patroni member would carry it.
pub fn http_check(name: &str, path: &str, on_update: Option<&str>) -> Value {
    let mut check = json!({"Name": name, "Type": "http", "Path": path, "PortLabel": "api", "Interval": 5 * SECOND, "Timeout": 2 * SECOND});
    if let Some(on_update) = on_update {
        check["OnUpdate"] = json!(on_update);
    }
    check
}

pub fn member_group(name: &str, checks: Vec<Value>, templates: Vec<Value>) -> Value {
    json!({
        "Name": name,
        "Count": 1,
        "Networks": [{"Mode": "bridge", "DynamicPorts": [{"Label": "pg", "To": 5432}, {"Label": "api", "To": 8008}]}],
        "Services": [{"Name": "${NOMAD_JOB_NAME}-${NOMAD_GROUP_NAME}", "PortLabel": "pg", "Provider": "consul", "Checks": checks}],
        "Tasks": [{
            "Name": "patroni",
            "Driver": "docker",
            "Config": {"image": "ghcr.io/pgnomad/patroni:3.3", "ports": ["pg", "api"]},
            "Resources": {"CPU": 500, "MemoryMB": 512},
            "Templates": templates,
        }],
    })
}

/// A job with one group per member, each with the given checks.
pub fn members_job(id: &str, members: usize, checks: impl Fn(usize) -> Vec<Value>) -> Value {
    let groups: Vec<Value> = (0..members).map(|i| member_group(&format!("member-{i}"), checks(i), vec![])).collect();
    json!({
        "ID": id,
        "Name": id,
        "Type": "service",
        "Datacenters": ["dc1"],
        "Meta": {"pgnomad.stack": id},
        "Update": {"MaxParallel": 1, "MinHealthyTime": 10 * SECOND, "HealthyDeadline": 300 * SECOND, "ProgressDeadline": 600 * SECOND},
        "TaskGroups": groups,
    })
}

pub fn simple_job(id: &str) -> Value {
    members_job(id, 1, |_| vec![http_check("alive", "/liveness", None)])
}

pub fn template(body: &str) -> Value {
    json!({"EmbeddedTmpl": body, "DestPath": "secrets/env", "ChangeMode": "restart", "Envvars": true})
}

pub fn csi_volume(id: &str) -> Value {
    json!({
        "ID": id, "Name": id, "Namespace": "default", "PluginID": "hostpath",
        "RequestedCapacityMin": 1_073_741_824u64,
        "RequestedCapabilities": [{"AccessMode": "single-node-writer", "AttachmentMode": "file-system"}],
    })
}
