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
        .map(|(key, dest)| {
            let mut t = template(self.runtime.secret_expr(job, key), dest, Change::Restart);
            t.perms = some("0600");
            t
        })
        .collect()
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
            driver @ (Driver::Exec { .. } | Driver::RawExec { .. }) => (
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

pub fn http_check(name: &str, path: &str, port_label: &str) -> ServiceCheck {
    ServiceCheck {
        name: some(name),
        check_type: some("http"),
        path: some(path),
        port_label: some(port_label),
        interval: Some(Nanos::secs(5)),
        timeout: Some(Nanos::secs(2)),
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
