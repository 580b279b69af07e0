//! Nomad `template` blocks executed by Go's own `text/template` — the engine consul-template,
//! and so Nomad, renders them with — through the small Go program in `tests/gotemplate/`
//! (stdlib only; its header lists the functions it implements and their semantics).
//!
//! ```ignore
//! let mut cx = TemplateContext::for_task("main-postgres", "member-0", "patroni", 0);
//! cx.set_ports(&[("pg", 5432, "10.0.0.1", 23456)]);     // NOMAD_PORT_pg, NOMAD_HOST_ADDR_pg, …
//! cx.variables.insert("nomad/jobs/main-postgres".into(), secrets);
//! match gotemplate::execute(&template_json, &cx)? {      // a Nomad API `Template` object
//!     Rendered::Text(text) => …,                          // what Nomad writes to DestPath
//!     Rendered::Blocked(deps) => …,                       // Nomad waits: e.g. a variable not stored yet
//! }
//! ```
//!
//! The program is built once per test process (and cached across processes by a hash of its
//! source) under `$CARGO_TARGET_DIR/go/`. Without `go` the first call panics naming
//! the Debian package (`golang-go`): tests that use this never skip.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::go_program;

/// What one template block sees when it renders: the task's environment and the data
/// consul-template would fetch for it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TemplateContext {
    /// The task's environment (`env "NAME"`); nothing else leaks in.
    pub env: BTreeMap<String, String>,
    /// The task's namespace and region: the default of `nomadVar "path"`.
    pub namespace: String,
    pub region: String,
    /// Nomad Variables that exist, by path (in `namespace`): their items.
    pub variables: BTreeMap<String, BTreeMap<String, String>>,
    /// The paths the task's identity may read (see [`workload_identity_paths`]); a variable
    /// elsewhere blocks the template as a missing one does.
    pub readable_variable_paths: Vec<String>,
    /// Consul's catalog, by service name: every registered instance with its health.
    pub services: BTreeMap<String, Vec<ServiceInstance>>,
    /// Whether the task has a Consul token. Without one (ACLs with `default_policy = "deny"`)
    /// Consul filters what it may not show: `service` returns no instance; `key` blocks.
    pub consul_token: bool,
    /// Consul KV (`key`, `keyOrDefault`, `keyExists`).
    pub consul_kv: BTreeMap<String, String>,
    /// Whether the task has a Vault token (a `vault` block); without one `secret` blocks.
    pub vault_token: bool,
    /// Vault responses' `Data` by path; for KV v2 at `<mount>/data/<path>`:
    /// `{"data": {…}, "metadata": {…}}`.
    pub vault: BTreeMap<String, Value>,
}

/// One instance of a Consul service as consul-template's `service` returns it.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceInstance {
    pub node: String,
    pub node_address: String,
    pub address: String,
    pub port: u16,
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub service_meta: BTreeMap<String, String>,
    /// `passing`, `warning` or `critical` (the worst of its checks).
    pub status: String,
}

impl TemplateContext {
    /// The context of task `task` of group `group` (allocation `index`) of job `job`, in
    /// namespace `default`, region `global`, datacenter `dc1`: Nomad's task environment
    /// (client/taskenv/env.go) without ports, and the variable paths its identity may read.
    /// Consul answers with a token; there are no variables or services yet.
    pub fn for_task(job: &str, group: &str, task: &str, index: u32) -> TemplateContext {
        let alloc_id = format!("{:08x}-0000-4000-8000-{:012x}", 0x5eed_0000u32 + index, index);
        let env = [
            ("NOMAD_ALLOC_DIR", "/alloc".to_owned()),
            ("NOMAD_TASK_DIR", "/local".to_owned()),
            ("NOMAD_SECRETS_DIR", "/secrets".to_owned()),
            ("NOMAD_ALLOC_ID", alloc_id.clone()),
            ("NOMAD_SHORT_ALLOC_ID", alloc_id[..8].to_owned()),
            ("NOMAD_ALLOC_NAME", format!("{job}.{group}[{index}]")),
            ("NOMAD_ALLOC_INDEX", index.to_string()),
            ("NOMAD_TASK_NAME", task.to_owned()),
            ("NOMAD_GROUP_NAME", group.to_owned()),
            ("NOMAD_JOB_NAME", job.to_owned()),
            ("NOMAD_JOB_ID", job.to_owned()),
            ("NOMAD_DC", "dc1".to_owned()),
            ("NOMAD_REGION", "global".to_owned()),
            ("NOMAD_NAMESPACE", "default".to_owned()),
            ("NOMAD_MEMORY_LIMIT", "256".to_owned()),
            ("NOMAD_CPU_LIMIT", "500".to_owned()),
        ];
        TemplateContext {
            env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            namespace: "default".into(),
            region: "global".into(),
            readable_variable_paths: workload_identity_paths(job, group, task),
            consul_token: true,
            ..TemplateContext::default()
        }
    }

    /// Sets namespace and datacenter (`NOMAD_NAMESPACE`, `NOMAD_DC`) together.
    pub fn set_placement(&mut self, namespace: &str, datacenter: &str) {
        self.namespace = namespace.to_owned();
        self.env.insert("NOMAD_NAMESPACE".into(), namespace.to_owned());
        self.env.insert("NOMAD_DC".into(), datacenter.to_owned());
    }

    /// The port variables of a bridge-mode group: `(label, port in the task, host IP, host
    /// port)` gives `NOMAD_PORT_`, `NOMAD_IP_`, `NOMAD_ADDR_`, `NOMAD_ALLOC_PORT_`, and the
    /// host side `NOMAD_HOST_PORT_`, `NOMAD_HOST_IP_`, `NOMAD_HOST_ADDR_`.
    pub fn set_ports(&mut self, ports: &[(&str, u16, &str, u16)]) {
        for (label, to, host_ip, host_port) in ports {
            let mut set = |k: &str, v: String| {
                self.env.insert(format!("NOMAD_{k}_{label}"), v);
            };
            set("PORT", to.to_string());
            set("ALLOC_PORT", to.to_string());
            set("IP", host_ip.to_string());
            set("ADDR", format!("{host_ip}:{to}"));
            set("HOST_PORT", host_port.to_string());
            set("HOST_IP", host_ip.to_string());
            set("HOST_ADDR", format!("{host_ip}:{host_port}"));
        }
    }
}

/// The variable paths a task's workload identity may read without any ACL policy.
pub fn workload_identity_paths(job: &str, group: &str, task: &str) -> Vec<String> {
    vec!["nomad/jobs".into(), format!("nomad/jobs/{job}"), format!("nomad/jobs/{job}/{group}"), format!("nomad/jobs/{job}/{group}/{task}")]
}

/// A template's outcome when every function returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendered {
    /// The file Nomad writes.
    Text(String),
    /// Nomad would keep waiting (the task does not start) on these dependencies, e.g.
    /// `nomad.var.block(nomad/jobs/main-postgres@default.global)`.
    Blocked(Vec<String>),
}

/// A template that fails: a parse error, a missing key under `ErrMissingKey`, a bad argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError(pub String);

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Executes one Nomad API `Template` object (`EmbeddedTmpl`, `LeftDelim`, `RightDelim`,
/// `ErrMissingKey`) as Nomad would in `context`.
pub fn execute(template: &Value, context: &TemplateContext) -> Result<Rendered, TemplateError> {
    let text = template.get("EmbeddedTmpl").and_then(Value::as_str).unwrap_or_else(|| panic!("no EmbeddedTmpl in {template}"));
    let delim =
        |key: &str, default: &str| template.get(key).and_then(Value::as_str).filter(|d| !d.is_empty()).unwrap_or(default).to_owned();
    let mut input = serde_json::to_value(context).unwrap();
    input["template"] = Value::from(text);
    input["left_delimiter"] = Value::from(delim("LeftDelim", "{{"));
    input["right_delimiter"] = Value::from(delim("RightDelim", "}}"));
    input["error_on_missing_key"] = Value::from(template.get("ErrMissingKey").and_then(Value::as_bool).unwrap_or(false));

    let reply = go_program::exchange(&ENGINE, &input);
    let (succeeded, reply) = (reply.succeeded, reply.json);
    if let Some(error) = reply.get("error").and_then(Value::as_str) {
        assert!(!succeeded, "an error reply must come with a failing exit status");
        return Err(TemplateError(error.to_owned()));
    }
    assert!(succeeded, "the Go template engine failed: {reply}");
    if let Some(blocked) = reply.get("blocked").and_then(Value::as_array) {
        return Ok(Rendered::Blocked(blocked.iter().map(|d| d.as_str().unwrap().to_owned()).collect()));
    }
    Ok(Rendered::Text(reply["rendered"].as_str().expect("rendered text").to_owned()))
}

/// The engine: `tests/gotemplate/`, stdlib only.
const ENGINE: go_program::GoProgram = go_program::GoProgram {
    name: "gotemplate",
    files: &["go.mod", "main.go"],
    debian_packages: &[],
    purpose: "Nomad templates are executed by Go's own text/template",
};
