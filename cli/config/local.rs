//! Holes filled with concrete values for one machine: what `pgnomad dev` runs, and what
//! the real-process tests start.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::facts::{Facts, MemberFacts};
use super::runtime::{Holes, MemberAddress, Runtime};
use crate::compile::secrets;

/// The DCS the local members share.
#[derive(Debug, Clone)]
pub enum LocalDcs {
    /// etcd v3 endpoints, `host:port`.
    Etcd3 { hosts: Vec<String> },
    /// A Consul agent's HTTP address, `host:port`; the token is the `consul_token` secret.
    Consul { address: String },
}

/// Ports of one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberPorts {
    pub pg: u16,
    pub rest: u16,
    pub tls: u16,
}

/// Every process on `host`, each member on its own ports, every file under `state_dir`:
/// `<state_dir>/<member-N>/{config,data,run,log}`, `<state_dir>/pgbouncer/…`,
/// `<state_dir>/backup-<kind>/…`, `<state_dir>/repo`, `<state_dir>/tls`.
#[derive(Debug, Clone)]
pub struct LocalRuntime {
    /// The address everything listens on and is reached at. Patroni's `--validate-config`
    /// refuses 127.0.0.1 and localhost as connect addresses (fine at run time); another
    /// loopback address such as 127.0.0.2 satisfies it on Linux.
    pub host: String,
    pub state_dir: PathBuf,
    /// Directory holding postgres, pg_ctl, … (e.g. /usr/lib/postgresql/15/bin).
    pub bin_dir: String,
    /// The OS user the members run as (the developer's own, or `postgres` under root).
    pub os_user: String,
    pub dcs: LocalDcs,
    /// Ports of each member, by member index.
    pub members: Vec<MemberPorts>,
    pub pgbouncer_port: u16,
    /// Index of the member PgBouncer sends clients to.
    pub primary: u32,
    /// Secret values by key, for every job; each job sees only its own keys.
    pub secrets: BTreeMap<String, String>,
    /// With `restore { … }`: where the source's backups are.
    pub restore: Option<LocalRestoreSource>,
}

/// The repository a restored cluster bootstraps from: the source's stanza, its repository
/// path (in the source's state directory) and cipher pass.
#[derive(Debug, Clone)]
pub struct LocalRestoreSource {
    pub stanza: String,
    pub repo_path: String,
    pub cipher_pass: Option<String>,
}

impl LocalRuntime {
    fn dir(&self, part: &str, sub: &str) -> String {
        self.state_dir.join(part).join(sub).to_string_lossy().into_owned()
    }

    fn ports(&self, index: u32) -> MemberPorts {
        *self.members.get(index as usize).unwrap_or_else(|| panic!("LocalRuntime has no ports for member {index}"))
    }

    /// Holes every job has: its config, run and log directories and the TLS files.
    fn base(&self, part: &str, tls_side: &str) -> Holes {
        let tls = |file: &str| self.state_dir.join("tls").join(file).to_string_lossy().into_owned();
        Holes {
            config_dir: self.dir(part, "config"),
            run_dir: self.dir(part, "run"),
            log_dir: self.dir(part, "log"),
            bin_dir: self.bin_dir.clone(),
            os_user: self.os_user.clone(),
            tls_ca_file: tls("ca.crt"),
            tls_cert_file: tls(&format!("{tls_side}.crt")),
            tls_key_file: tls(&format!("{tls_side}.key")),
            sql_tls_cert_file: tls("sql.crt"),
            sql_tls_key_file: tls("sql.key"),
            lock_dir: self.dir(part, "run") + "/pgbackrest",
            ..Holes::default()
        }
    }

    fn secrets_of(&self, keys: &[String]) -> BTreeMap<String, String> {
        // A key without a value stays out, so rendering fails naming it.
        keys.iter().filter_map(|key| self.secrets.get(key).map(|value| (key.clone(), value.clone()))).collect()
    }

    fn repo_path(&self, facts: &Facts) -> String {
        if facts.backup.repo_type == "s3" {
            facts.backup.repo_path.clone()
        } else {
            self.state_dir.join("repo").to_string_lossy().into_owned()
        }
    }

    /// A member's secrets, and the source's cipher pass when it restores from one.
    fn member_secrets(&self, facts: &Facts) -> BTreeMap<String, String> {
        let mut values = self.secrets_of(&secrets::postgres_keys(facts));
        if let Some(pass) = self.restore.as_ref().and_then(|r| r.cipher_pass.clone()) {
            values.insert("restore_cipher_pass".into(), pass);
        }
        values
    }

    fn dcs_section(&self) -> String {
        match &self.dcs {
            LocalDcs::Etcd3 { hosts } => format!("etcd3:\n  hosts: {}\n", hosts.join(",")),
            LocalDcs::Consul { address } => {
                let token = self.secrets.get("consul_token").filter(|t| !t.is_empty());
                let token = token.map_or_else(String::new, |t| format!("  token: {t}\n"));
                format!("consul:\n  host: {address}\n{token}  register_service: false\n")
            }
        }
    }

    /// One entry per member, numbered from `first`.
    fn member_addresses(&self, facts: &Facts, first: u32) -> Vec<MemberAddress> {
        facts
            .members
            .iter()
            .map(|member| {
                let ports = self.ports(member.index);
                MemberAddress {
                    number: (member.index + first).to_string(),
                    name: member.name.clone(),
                    host: self.host.clone(),
                    pg_port: ports.pg.to_string(),
                    tls_port: ports.tls.to_string(),
                    data_dir: self.dir(&member.name, "data"),
                    socket_dir: self.dir(&member.name, "run"),
                    separator: if member.index == 0 { String::new() } else { ",".into() },
                }
            })
            .collect()
    }
}

impl Runtime for LocalRuntime {
    fn literal_escaper(&self) -> fn(&str) -> String {
        str::to_owned
    }

    fn member(&self, facts: &Facts, member: &MemberFacts) -> Holes {
        let ports = self.ports(member.index);
        let host = &self.host;
        Holes {
            pg_listen: format!("{host}:{}", ports.pg),
            pg_connect: format!("{host}:{}", ports.pg),
            pg_port: ports.pg.to_string(),
            rest_listen: format!("{host}:{}", ports.rest),
            rest_connect: format!("{host}:{}", ports.rest),
            tls_listen_port: ports.tls.to_string(),
            data_dir: self.dir(&member.name, "data"),
            repo_path: self.repo_path(facts),
            dcs: self.dcs_section(),
            secrets: self.member_secrets(facts),
            restore_stanza: self.restore.as_ref().map(|r| r.stanza.clone()).unwrap_or_default(),
            restore_repo_path: self.restore.as_ref().map(|r| r.repo_path.clone()).unwrap_or_default(),
            ..self.base(&member.name, "server")
        }
    }

    fn pgbouncer(&self, facts: &Facts) -> Holes {
        let primary = self.ports(self.primary);
        Holes {
            pgbouncer_listen_addr: self.host.clone(),
            pgbouncer_listen_port: self.pgbouncer_port.to_string(),
            pgbouncer_admin_host: self.host.clone(),
            primary: format!("host={} port={}", self.host, primary.pg),
            secrets: self.secrets_of(&secrets::pgbouncer_keys(facts)),
            ..self.base("pgbouncer", "client")
        }
    }

    fn pgadmin(&self, facts: &Facts) -> Holes {
        Holes {
            pgbouncer_connect_host: self.host.clone(),
            pgbouncer_connect_port: self.pgbouncer_port.to_string(),
            // Entry 1 is PgBouncer, as with Nomad.
            members: self.member_addresses(facts, 2),
            secrets: self.secrets_of(&secrets::pgadmin_keys(facts)),
            ..self.base("pgadmin", "client")
        }
    }

    fn backup(&self, facts: &Facts, kind: &str) -> Holes {
        let part = format!("backup-{kind}");
        Holes {
            repo_path: self.repo_path(facts),
            members: self.member_addresses(facts, 1),
            secrets: self.secrets_of(&secrets::backup_keys(facts)),
            ..self.base(&part, "client")
        }
    }
}
