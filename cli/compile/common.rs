//! Pieces every job shares: the job's frame, task drivers, templates.

use std::collections::BTreeMap;

use serde_json::json;

use crate::config::{ConfigError, Facts, Holes, MemberFacts, NomadRuntime, Renderer};
use crate::nomad::job::*;
use crate::stack::{Driver, Secrets, Stack};

pub struct Context<'a> {
    pub stack: &'a Stack,
    pub facts: &'a Facts,
    pub renderer: &'a Renderer,
    pub runtime: &'a NomadRuntime,
    pub restore_phase: Option<&'a super::RestorePhase>,
}

impl Context<'_> {
    pub fn cluster(&self) -> &str {
        &self.stack.cluster.name.value
    }

    /// A pack file rendered for Nomad, as a `template` block that writes it to `dest`.
    pub fn pack_template(
        &self,
        pack_path: &str,
        member: Option<&MemberFacts>,
        holes: &Holes,
        dest: &str,
        change: Change,
    ) -> Result<Template, ConfigError> {
        let text = self.renderer.render(pack_path, member, holes)?;
        Ok(template(text, dest, change))
    }

    /// Templates that write pgBackRest's TLS files from the secrets (`side` is
    /// `tls_server` or `tls_client`).
    pub fn tls_templates(&self, job: &str, side: &str) -> Vec<Template> {
        [
            ("tls_ca_crt", "secrets/tls/ca.crt"),
            (&format!("{side}_crt")[..], "secrets/tls/tls.crt"),
            (&format!("{side}_key")[..], "secrets/tls/tls.key"),
        ]
        .into_iter()
        .map(|(key, dest)| template(self.runtime.secret_expr(job, key), dest, Change::Restart))
        .collect()
    }

    /// The client certificate a member presents to the repository host, beside its own.
    pub fn tls_client_templates(&self, job: &str) -> Vec<Template> {
        [("tls_client_crt", "secrets/tls/client.crt"), ("tls_client_key", "secrets/tls/client.key")]
            .into_iter()
            .map(|(key, dest)| template(self.runtime.secret_expr(job, key), dest, Change::Restart))
            .collect()
    }

    /// The `postgres` user every task of the stack's own image (or, with exec drivers, of the
    /// hosts) runs as.
    pub fn postgres_owner(&self) -> Owner {
        Owner { uid: self.stack.postgres.uid, gid: self.stack.postgres.gid }
    }

    /// The job's frame: identity, placement, ownership meta comes later.
    pub fn job(&self, id: String, job_type: &str) -> Job {
        let cluster = &self.stack.cluster;
        Job {
            id: Some(id.clone()),
            name: Some(id),
            namespace: Some(cluster.namespace.clone()),
            region: Some(cluster.region.clone()),
            job_type: some(job_type),
            datacenters: Some(cluster.datacenters.clone()),
            node_pool: Some(cluster.node_pool.clone()),
            constraints: non_empty(cluster.constraints.iter().map(|c| Constraint::new(&c.attribute, &c.operator, &c.value)).collect()),
            ..Job::default()
        }
    }

    /// A task running one of the stack's own programs: in the pgnomad image with the docker
    /// driver, or from the host's packages with exec drivers.
    pub fn program_task(&self, name: &str, command: &str, args: Vec<String>, ports: &[&str]) -> Task {
        let (driver, config, user) = match &self.stack.postgres.driver {
            Driver::Docker { image } => {
                let mut config = BTreeMap::from([
                    ("image".to_owned(), json!(image)),
                    ("command".to_owned(), json!(command)),
                    ("args".to_owned(), json!(args)),
                ]);
                if !ports.is_empty() {
                    config.insert("ports".into(), json!(ports));
                }
                ("docker", config, None)
            }
            driver @ Driver::Exec { .. } => (
                driver.nomad_name(),
                BTreeMap::from([("command".to_owned(), json!(command)), ("args".to_owned(), json!(args))]),
                // Postgres refuses to run as root; the image already runs as postgres.
                some("postgres"),
            ),
        };
        let mut task = Task { name: some(name), driver: some(driver), config: Some(config), user, ..Task::default() };
        if let Secrets::Vault { role, .. } = &self.stack.secrets {
            task.vault = Some(Vault { role: role.clone(), change_mode: some("restart") });
        }
        task
    }
}

/// Who owns the files a task's templates write. Nomad's client writes them as root unless
/// the template names a numeric `uid`/`gid` (names are not taken), so a task running as
/// another user could not read a `0600` file without them.
#[derive(Debug, Clone, Copy)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// pgAdmin's image runs as `pgadmin`, uid 5050 in group root (dpage/pgadmin4's Dockerfile).
pub const PGADMIN_OWNER: Owner = Owner { uid: 5050, gid: 0 };

/// Makes a task ready to submit: every file its templates write belongs to `owner` and only
/// it may read it (scripts may also be executed), and a task whose templates query Consul
/// gets a `consul` block — Nomad's implicit-identity hook gives a Consul token only to tasks
/// (or groups) with one, so without it their `service` lookups would run without a token.
pub fn finish_task(task: &mut Task, owner: Owner) {
    let Some(templates) = task.templates.as_mut() else { return };
    for t in templates.iter_mut() {
        t.uid = Some(i64::from(owner.uid));
        t.gid = Some(i64::from(owner.gid));
        let executable = t.perms.as_deref().is_some_and(|p| u32::from_str_radix(p, 8).is_ok_and(|mode| mode & 0o100 != 0));
        t.perms = some(if executable { "0700" } else { "0600" });
    }
    if templates.iter().any(|t| t.embedded_tmpl.as_deref().is_some_and(queries_consul)) {
        task.consul = Some(Consul::default());
    }
}

/// Whether a Nomad template reads Consul: one of consul-template's Consul functions inside
/// an action (`{{ service "x" }}`, `{{ range services }}`, `{{ key "k" }}`, …).
pub fn queries_consul(text: &str) -> bool {
    const FUNCTIONS: &[&str] = &[
        "service",
        "services",
        "key",
        "keyExists",
        "keyOrDefault",
        "ls",
        "safeLs",
        "tree",
        "safeTree",
        "connect",
        "caRoots",
        "caLeaf",
        "node",
        "nodes",
        "checks",
    ];
    text.split("{{").skip(1).any(|action| {
        let action = action.split("}}").next().unwrap_or_default();
        // Words outside string literals: a service or variable name is not a function.
        let mut code = String::with_capacity(action.len());
        let mut quote = None;
        let mut escaped = false;
        for c in action.chars() {
            match quote {
                Some(_) if escaped => escaped = false,
                Some('"') if c == '\\' => escaped = true,
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '"' || c == '`' => {
                    quote = Some(c);
                    code.push(' ');
                }
                None => code.push(c),
            }
        }
        code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '$')).any(|word| FUNCTIONS.contains(&word))
    })
}

/// What Nomad does when a rendered file changes.
#[derive(Debug, Clone, Copy)]
pub enum Change {
    /// Send SIGHUP: the program reloads its config (Patroni, PgBouncer).
    Reload,
    Restart,
    /// Leave the task alone (a script read afresh on each run).
    Noop,
}

pub fn template(data: String, dest: &str, change: Change) -> Template {
    let (mode, signal) = match change {
        Change::Reload => ("signal", some("SIGHUP")),
        Change::Restart => ("restart", None),
        Change::Noop => ("noop", None),
    };
    Template {
        embedded_tmpl: Some(data),
        dest_path: some(dest),
        change_mode: some(mode),
        change_signal: signal,
        // A missing secret key must stop the task, not render "<no value>" into a config.
        err_missing_key: Some(true),
        ..Template::default()
    }
}

pub fn non_empty<T>(items: Vec<T>) -> Option<Vec<T>> {
    (!items.is_empty()).then_some(items)
}

pub fn port(label: &str, to: u16) -> Port {
    Port { label: some(label), to: Some(i64::from(to)) }
}

pub fn bridge(ports: Vec<Port>) -> NetworkResource {
    NetworkResource { mode: some("bridge"), dynamic_ports: non_empty(ports) }
}

pub fn resources(cpu: u32, memory_mb: u32) -> Resources {
    Resources { cpu: Some(i64::from(cpu)), memory_mb: Some(i64::from(memory_mb)), memory_max_mb: None }
}

/// How often Consul runs a check of Patroni's REST API at `path`. The role endpoints
/// (`/primary`, `/replica`) decide where PgBouncer routes: after a failover the new leader's
/// `/primary` passes only at its next run, so the interval is added to every write gap
/// (on average half of it). 1 s is Nomad's floor for a check interval; with PgBouncer's template
/// then rendered at once (it was 0.25–1 s later when these figures were taken) a postmaster kill costs Patroni's noticing and promotion (1.8–2.6 s with
/// loop_wait 1), up to 1 s of check and the wait: 3.9 s median on the cluster double, from 7.7 s
/// with 5 s checks and loop_wait 2 (BENCHMARKS.md). The
/// other checks only feed deployments and DNS; 5 s keeps the exporter from being scraped each second.
fn check_interval(path: &str) -> (Nanos, Nanos) {
    match path {
        "/primary" | "/replica" => (Nanos::secs(1), Nanos::secs(1)),
        _ => (Nanos::secs(5), Nanos::secs(2)),
    }
}

pub fn http_check(name: &str, path: &str, port_label: &str) -> ServiceCheck {
    let (interval, timeout) = check_interval(path);
    ServiceCheck {
        name: some(name),
        check_type: some("http"),
        path: some(path),
        port_label: some(port_label),
        interval: Some(interval),
        timeout: Some(timeout),
        ..ServiceCheck::default()
    }
}

pub fn tcp_check(name: &str, port_label: &str) -> ServiceCheck {
    ServiceCheck {
        name: some(name),
        check_type: some("tcp"),
        port_label: some(port_label),
        interval: Some(Nanos::secs(5)),
        timeout: Some(Nanos::secs(2)),
        ..ServiceCheck::default()
    }
}

pub fn service(name: String, port_label: &str, checks: Vec<ServiceCheck>) -> Service {
    Service { name: Some(name), port_label: some(port_label), provider: some("consul"), checks: non_empty(checks), ..Service::default() }
}

pub fn volume_mount(volume: &str, destination: &str) -> VolumeMount {
    VolumeMount { volume: some(volume), destination: some(destination), read_only: Some(false) }
}

/// For a group whose data lives on its node's volume: a node that stops heartbeating keeps the
/// allocation for an hour instead of replacing it elsewhere, where the data is not.
pub fn node_bound_disconnect() -> DisconnectStrategy {
    DisconnectStrategy { lost_after: Some(Nanos::secs(3600)), replace: Some(false), reconcile: some("keep_original") }
}

/// Restart in place first (3 times in 10 minutes, 15 s apart): the group's data is on this node.
pub fn restart_in_place() -> RestartPolicy {
    RestartPolicy { attempts: Some(3), interval: Some(Nanos::secs(600)), delay: Some(Nanos::secs(15)), mode: some("delay") }
}
