//! How the holes of a pack template are filled: by Nomad on the client (template
//! expressions) or by `pgnomad dev` (concrete values).

use std::collections::BTreeMap;

use minijinja::Value;
use serde::Serialize;

use super::facts::{Facts, MemberFacts};
use crate::stack::{Dcs, Secrets};

/// The values only a runtime knows. Which ones a pack file uses depends on the file; the
/// rest stay empty.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Holes {
    /// `host:port` Postgres listens on, and the one others reach it at.
    pub pg_listen: String,
    pub pg_connect: String,
    /// The port of `pg_listen`: it names the unix socket, and pgBackRest connects with it.
    pub pg_port: String,
    /// The same for Patroni's REST API.
    pub rest_listen: String,
    pub rest_connect: String,
    /// Port pgBackRest's TLS server listens on inside the member.
    pub tls_listen_port: String,
    /// Postgres' data directory (on the member's volume).
    pub data_dir: String,
    /// Where the rendered config files are (scripts, patroni.yml, pgbackrest.conf).
    pub config_dir: String,
    /// Unix sockets, pid and lock files.
    pub run_dir: String,
    pub log_dir: String,
    /// Directory holding postgres, pg_ctl, pg_rewind, …
    pub bin_dir: String,
    /// The OS user Postgres and pgBackRest run as; it may log in as `postgres` over the
    /// unix socket without a password (peer).
    pub os_user: String,
    /// The pgBackRest repository path (the repo volume's mount point, or the S3 prefix).
    pub repo_path: String,
    /// The DCS section of patroni.yml, as YAML lines at the top level.
    pub dcs: String,
    /// Secret values (or the expressions that read them), by key.
    pub secrets: BTreeMap<String, String>,
    /// `host=… port=…` of the current primary, for pgbouncer.ini.
    pub primary: String,
    /// Address and port PgBouncer listens on (pgbouncer.ini takes them apart), and how
    /// pgAdmin reaches it.
    pub pgbouncer_listen_addr: String,
    pub pgbouncer_listen_port: String,
    pub pgbouncer_connect_host: String,
    pub pgbouncer_connect_port: String,
    /// Where PgBouncer's pause watchdog reaches its admin console: localhost in the
    /// allocation's network namespace on Nomad, PgBouncer's address with `dev`.
    pub pgbouncer_admin_host: String,
    /// pgBackRest's TLS certificates: the CA, the task's own certificate (the server's in a
    /// member or the repository host, the client's in a backup job), and on a member the
    /// client certificate it reaches the repository host with.
    pub tls_ca_file: String,
    pub tls_cert_file: String,
    pub tls_key_file: String,
    pub tls_client_cert_file: String,
    pub tls_client_key_file: String,
    /// The certificate and key Postgres and PgBouncer present to SQL clients (`tls = true`).
    pub sql_tls_cert_file: String,
    pub sql_tls_key_file: String,
    /// pgBackRest's lock directory: one that every process working on the repository shares
    /// (on the repository volume with a repository host), or the task's own.
    pub lock_dir: String,
    /// The repository host members archive WAL to (its DNS name, the one on its certificate)
    /// and its port; empty when the repository is reached directly (S3, a shared volume, dev).
    pub repo_host: String,
    pub repo_host_port: String,
    /// In a backup job beside the repository host: the allocation ID the passing repository
    /// host registered (its service meta `alloc`), which it also writes into
    /// `<lock_dir>/repo-host` on the volume; empty where there is no such check (dev).
    pub repo_host_alloc: String,
    /// Members as a repeated section: the text before and after it, and its entries
    /// (one entry with loop expressions for Nomad, one per member for `dev`).
    pub members_begin: String,
    pub members_end: String,
    pub members: Vec<MemberAddress>,
    /// A cluster bootstrapped by `restore { … }`: the source's stanza and repository path,
    /// read by packs/backup/restore.conf (the source's cipher pass is the secret
    /// `restore_cipher_pass`); empty otherwise.
    pub restore_stanza: String,
    pub restore_repo_path: String,
    /// On Nomad, with a source that has a repository host: its DNS name and the port of its
    /// passing instance, and the source's CA and client certificate the clone's members
    /// present to it (copied from the source by `run`); empty otherwise.
    pub restore_repo_host: String,
    pub restore_repo_host_port: String,
    pub restore_tls_ca_file: String,
    pub restore_tls_cert_file: String,
    pub restore_tls_key_file: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct MemberAddress {
    /// 1-based position, as pgBackRest numbers its `pgN-` options.
    pub number: String,
    pub name: String,
    pub host: String,
    pub pg_port: String,
    pub tls_port: String,
    /// The member's data directory and unix socket directory as its own task sees them
    /// (pgBackRest's `pgN-path`, `pgN-socket-path`).
    pub data_dir: String,
    pub socket_dir: String,
    /// "," before every entry but the first, for JSON lists.
    pub separator: String,
}

impl Holes {
    /// Every hole as a safe string: runtime values are never escaped.
    pub fn to_value(&self) -> Value {
        safe(serde_json::to_value(self).expect("holes serialize"))
    }
}

fn safe(value: serde_json::Value) -> Value {
    match value {
        serde_json::Value::String(s) => Value::from_safe_string(s),
        serde_json::Value::Array(items) => Value::from(items.into_iter().map(safe).collect::<Vec<_>>()),
        serde_json::Value::Object(map) => Value::from(map.into_iter().map(|(k, v)| (k, safe(v))).collect::<BTreeMap<_, _>>()),
        other => Value::from_serialize(other),
    }
}

/// Fills holes for one target. The pack templates are the same for every runtime.
pub trait Runtime {
    /// Escapes literal text so that the target's own template engine leaves it alone.
    fn literal_escaper(&self) -> fn(&str) -> String;
    fn member(&self, facts: &Facts, member: &MemberFacts) -> Holes;
    fn pgbouncer(&self, facts: &Facts) -> Holes;
    fn pgadmin(&self, facts: &Facts) -> Holes;
    fn backup(&self, facts: &Facts, kind: &str) -> Holes;
}

/// Job IDs, service names and paths inside Nomad tasks.
pub mod names {
    pub fn postgres_job(cluster: &str) -> String {
        format!("{cluster}-postgres")
    }
    pub fn pgbouncer_job(cluster: &str) -> String {
        format!("{cluster}-pgbouncer")
    }
    pub fn pgadmin_job(cluster: &str) -> String {
        format!("{cluster}-pgadmin")
    }
    pub fn backup_job(cluster: &str, kind: &str) -> String {
        format!("{cluster}-backup-{kind}")
    }
    /// The parameterized job that runs `info` and `check` on demand: `<c>-backup-ctl`.
    pub const BACKUP_CTL: &str = "ctl";
    pub fn backup_ctl_job(cluster: &str) -> String {
        backup_job(cluster, BACKUP_CTL)
    }
    /// Consul services.
    pub fn primary_service(cluster: &str) -> String {
        format!("{cluster}-primary")
    }
    pub fn replica_service(cluster: &str) -> String {
        format!("{cluster}-replica")
    }
    pub fn postgres_service(cluster: &str) -> String {
        format!("{cluster}-postgres")
    }
    pub fn patroni_service(cluster: &str) -> String {
        format!("{cluster}-patroni")
    }
    pub fn pgbackrest_service(cluster: &str) -> String {
        format!("{cluster}-pgbackrest")
    }
    /// The pgBackRest repository host: its job and its Consul service (short, so that
    /// `<c>-pgbackrest` stays the longest service name).
    pub fn repo_job(cluster: &str) -> String {
        format!("{cluster}-repo")
    }
    pub fn repo_service(cluster: &str) -> String {
        repo_job(cluster)
    }
    /// The DNS name members reach the repository host at; its certificate names it.
    pub fn repo_host_name(cluster: &str) -> String {
        format!("{}.service.consul", repo_service(cluster))
    }
    pub fn exporter_service(cluster: &str) -> String {
        format!("{cluster}-exporter")
    }
    pub fn pgbouncer_service(cluster: &str) -> String {
        format!("{cluster}-pgbouncer")
    }
    pub fn pgadmin_service(cluster: &str) -> String {
        format!("{cluster}-pgadmin")
    }
    /// The DNS names of pgBackRest's TLS servers: the members' as the backup jobs reach them
    /// (Consul's `<tag>.<service>.service.consul`) and the repository host's as the members
    /// reach it; the server certificate holds them all.
    pub fn pgbackrest_server_names(cluster: &str, members: u32) -> Vec<String> {
        let mut names: Vec<String> = (0..members).map(|i| format!("member-{i}.{}.service.consul", pgbackrest_service(cluster))).collect();
        names.push(repo_host_name(cluster));
        names
    }
    /// Where each member's volume is mounted in its task.
    pub const DATA_MOUNT: &str = "/var/lib/postgresql/data";
    /// The repo volume's mount point when the repo is a volume.
    pub const REPO_MOUNT: &str = "/var/lib/pgbackrest";
    /// pgBackRest's lock directory on the repository volume, shared by the repository host
    /// and the backup jobs beside it on its node.
    pub const REPO_LOCK_DIR: &str = "/var/lib/pgbackrest/lock";
}

/// Holes as Nomad fills them on the client: `{{ env … }}`, `{{ with nomadVar … }}`,
/// `{{ range service … }}` — resolved by Nomad's `template` block when the task starts,
/// and re-resolved (with a reload signal) when a service or secret changes.
#[derive(Debug, Clone)]
pub struct NomadRuntime {
    pub cluster: String,
    pub secrets: Secrets,
    pub dcs: Dcs,
    pub consul_port: u16,
    pub pg_port: u16,
    pub pgbouncer_port: u16,
    pub bin_dir: String,
    /// With `restore { from = … }`: the source cluster, whose repository the members' Patroni
    /// bootstrap restores from (the cluster itself for `restore --in-place`).
    pub restore_source: Option<String>,
}

impl NomadRuntime {
    /// The runtime for a stack's jobs.
    pub fn for_stack(stack: &crate::stack::Stack) -> Self {
        use crate::stack::Driver;
        NomadRuntime {
            cluster: stack.cluster.name.value.clone(),
            secrets: stack.secrets.clone(),
            dcs: stack.patroni.dcs.clone(),
            consul_port: crate::stack::defaults::CONSUL_HTTP_PORT,
            pg_port: stack.postgres.port.value,
            pgbouncer_port: stack.pgbouncer.port.value,
            bin_dir: match &stack.postgres.driver {
                // Where the pgnomad image (packs/image/Dockerfile) installs PostgreSQL.
                Driver::Docker { .. } => format!("/usr/lib/postgresql/{}/bin", stack.postgres.version.value),
                Driver::Exec { bin_dir } => bin_dir.clone(),
            },
            restore_source: stack.restore.as_ref().map(|r| r.from.value.clone()),
        }
    }

    /// Where the clone's Patroni bootstrap finds the source's backups: the source's stanza,
    /// and its repository host (as a member of the source reaches it) when it has one.
    fn restore_holes(&self, facts: &Facts, holes: &mut Holes) {
        let Some(source) = &self.restore_source else { return };
        holes.restore_stanza = source.clone();
        holes.restore_repo_path = self.repo_path(facts);
        if *source == self.cluster {
            // In place (`restore --in-place`): the cluster's own repository host, reached
            // with the members' own CA, client certificate and cipher pass.
            if facts.backup.repo_host {
                holes.restore_repo_host = holes.repo_host.clone();
                holes.restore_repo_host_port = holes.repo_host_port.clone();
                holes.restore_tls_ca_file = holes.tls_ca_file.clone();
                holes.restore_tls_cert_file = holes.tls_client_cert_file.clone();
                holes.restore_tls_key_file = holes.tls_client_key_file.clone();
            }
            let own =
                if facts.backup.cipher { self.secret_expr(&names::postgres_job(&self.cluster), "repo_cipher_pass") } else { String::new() };
            holes.secrets.insert("restore_cipher_pass".into(), own);
            return;
        }
        if facts.backup.repo_host {
            holes.restore_repo_host = names::repo_host_name(source);
            holes.restore_repo_host_port = format!(
                "{{{{ with service \"{}\" }}}}{{{{ with index . 0 }}}}{{{{ .Port }}}}{{{{ end }}}}{{{{ end }}}}",
                names::repo_service(source)
            );
            holes.restore_tls_ca_file = "/secrets/tls/restore-ca.crt".into();
            holes.restore_tls_cert_file = "/secrets/tls/restore-client.crt".into();
            holes.restore_tls_key_file = "/secrets/tls/restore-client.key".into();
        }
    }

    /// An expression that reads secret `key` of job `job` when the template renders.
    pub fn secret_expr(&self, job: &str, key: &str) -> String {
        match &self.secrets {
            Secrets::NomadVariables => format!("{{{{ with nomadVar \"nomad/jobs/{job}\" }}}}{{{{ .{key} }}}}{{{{ end }}}}"),
            Secrets::Vault { mount, path_prefix, .. } => {
                format!("{{{{ with secret \"{mount}/data/{path_prefix}/{job}\" }}}}{{{{ .Data.data.{key} }}}}{{{{ end }}}}")
            }
        }
    }

    fn secrets_of(&self, job: &str, keys: &[String]) -> BTreeMap<String, String> {
        keys.iter().map(|key| (key.clone(), self.secret_expr(job, key))).collect()
    }

    fn dcs_section(&self, job: &str) -> String {
        match &self.dcs {
            // The Consul agent of the node the task runs on; the token comes with the secrets.
            Dcs::Consul => format!(
                "consul:\n  host: {{{{ env \"NOMAD_HOST_IP_pg\" }}}}:{port}\n  token: {token}\n  register_service: false\n",
                port = self.consul_port,
                token = self.secret_expr(job, "consul_token"),
            ),
            Dcs::Etcd3 { hosts } => format!("etcd3:\n  hosts: {}\n", hosts.join(",")),
        }
    }

    fn base(&self) -> Holes {
        Holes {
            // compile writes every rendered file under /secrets: most hold a secret.
            config_dir: "/secrets".into(),
            // Exists in every allocation and is shared by the group's tasks, so the
            // pgBackRest server and the exporter reach Postgres' socket.
            run_dir: "/alloc/tmp".into(),
            log_dir: "/alloc/logs".into(),
            bin_dir: self.bin_dir.clone(),
            os_user: "postgres".into(),
            tls_ca_file: "/secrets/tls/ca.crt".into(),
            tls_cert_file: "/secrets/tls/tls.crt".into(),
            tls_key_file: "/secrets/tls/tls.key".into(),
            sql_tls_cert_file: "/secrets/tls/sql.crt".into(),
            sql_tls_key_file: "/secrets/tls/sql.key".into(),
            lock_dir: "/alloc/tmp/pgbackrest".into(),
            ..Holes::default()
        }
    }

    /// The repository host's job: pgBackRest's TLS server on the repository volume.
    pub fn repo(&self, facts: &Facts) -> Holes {
        let job = names::repo_job(&self.cluster);
        Holes {
            tls_listen_port: "{{ env \"NOMAD_PORT_pgbackrest\" }}".into(),
            repo_path: self.repo_path(facts),
            lock_dir: names::REPO_LOCK_DIR.into(),
            secrets: self.secrets_of(&job, &crate::compile::secrets::repo_keys(facts)),
            ..self.base()
        }
    }

    fn repo_path(&self, facts: &Facts) -> String {
        if facts.backup.repo_type == "s3" {
            facts.backup.repo_path.clone()
        } else {
            names::REPO_MOUNT.to_owned()
        }
    }
}

impl Runtime for NomadRuntime {
    fn literal_escaper(&self) -> fn(&str) -> String {
        escape_go_template
    }

    fn member(&self, facts: &Facts, _member: &MemberFacts) -> Holes {
        let job = names::postgres_job(&self.cluster);
        let mut keys = crate::compile::secrets::postgres_keys(facts);
        keys.extend(crate::compile::secrets::restore_source_keys(facts));
        let mut holes = Holes {
            // Bridge networking: the task listens on the port inside its namespace and is
            // reached at the host's address and mapped port.
            pg_listen: "0.0.0.0:{{ env \"NOMAD_PORT_pg\" }}".into(),
            pg_connect: "{{ env \"NOMAD_HOST_ADDR_pg\" }}".into(),
            pg_port: "{{ env \"NOMAD_PORT_pg\" }}".into(),
            rest_listen: "0.0.0.0:{{ env \"NOMAD_PORT_patroni\" }}".into(),
            rest_connect: "{{ env \"NOMAD_HOST_ADDR_patroni\" }}".into(),
            tls_listen_port: "{{ env \"NOMAD_PORT_pgbackrest\" }}".into(),
            data_dir: format!("{}/pgdata", names::DATA_MOUNT),
            repo_path: self.repo_path(facts),
            repo_host: if facts.backup.repo_host { names::repo_host_name(&self.cluster) } else { String::new() },
            // The port of a passing repository host from the catalog (bridge ports are
            // mapped); empty while there is none, and pgBackRest's archive-push fails with
            // "must have a value" until it passes — WAL waits in pg_wal meanwhile.
            repo_host_port: if facts.backup.repo_host {
                format!(
                    "{{{{ with service \"{}\" }}}}{{{{ with index . 0 }}}}{{{{ .Port }}}}{{{{ end }}}}{{{{ end }}}}",
                    names::repo_service(&self.cluster)
                )
            } else {
                String::new()
            },
            tls_client_cert_file: "/secrets/tls/client.crt".into(),
            tls_client_key_file: "/secrets/tls/client.key".into(),
            dcs: self.dcs_section(&job),
            secrets: self.secrets_of(&job, &keys),
            ..self.base()
        };
        self.restore_holes(facts, &mut holes);
        holes
    }

    fn pgbouncer(&self, facts: &Facts) -> Holes {
        let job = names::pgbouncer_job(&self.cluster);
        let primary = names::primary_service(&self.cluster);
        Holes {
            pgbouncer_listen_addr: "0.0.0.0".into(),
            pgbouncer_listen_port: "{{ env \"NOMAD_PORT_pgbouncer\" }}".into(),
            pgbouncer_admin_host: "127.0.0.1".into(),
            // While no member passes the primary check (mid-failover) PgBouncer keeps a DNS
            // name that resolves once a new primary registers; clients wait meanwhile.
            primary: format!(
                "{{{{ with service \"{primary}\" }}}}{{{{ with index . 0 }}}}host={{{{ .Address }}}} port={{{{ .Port }}}}{{{{ end }}}}{{{{ else }}}}host={primary}.service.consul port={port}{{{{ end }}}}",
                port = self.pg_port,
            ),
            secrets: self.secrets_of(&job, &crate::compile::secrets::pgbouncer_keys(facts)),
            ..self.base()
        }
    }

    fn pgadmin(&self, facts: &Facts) -> Holes {
        let job = names::pgadmin_job(&self.cluster);
        let postgres = names::postgres_service(&self.cluster);
        let pgbouncer = names::pgbouncer_service(&self.cluster);
        Holes {
            pgbouncer_connect_host: format!("{pgbouncer}.service.consul"),
            // Falls back to PgBouncer's own port so servers.json stays valid JSON even if no
            // PgBouncer passes its check when pgAdmin starts.
            pgbouncer_connect_port: format!(
                "{{{{ with service \"{pgbouncer}\" }}}}{{{{ with index . 0 }}}}{{{{ .Port }}}}{{{{ end }}}}{{{{ else }}}}{}{{{{ end }}}}",
                self.pgbouncer_port
            ),
            members_begin: format!("{{{{ range $i, $s := service \"{postgres}\" }}}}"),
            members_end: "{{ end }}".into(),
            members: vec![MemberAddress {
                number: "{{ add $i 2 }}".into(),
                name: "{{ index $s.ServiceMeta \"member\" }}".into(),
                host: "{{ $s.Address }}".into(),
                pg_port: "{{ $s.Port }}".into(),
                tls_port: String::new(),
                data_dir: String::new(),
                socket_dir: String::new(),
                separator: "{{ if $i }},{{ end }}".into(),
            }],
            secrets: self.secrets_of(&job, &crate::compile::secrets::pgadmin_keys(facts)),
            ..self.base()
        }
    }

    fn backup(&self, facts: &Facts, kind: &str) -> Holes {
        let job = names::backup_job(&self.cluster, kind);
        let pgbackrest = names::pgbackrest_service(&self.cluster);
        Holes {
            repo_path: self.repo_path(facts),
            members_begin: format!("{{{{ range $i, $s := service \"{pgbackrest}\" }}}}"),
            members_end: "{{ end }}".into(),
            members: vec![MemberAddress {
                number: "{{ add $i 1 }}".into(),
                name: "{{ index $s.ServiceMeta \"member\" }}".into(),
                // The name the member's TLS certificate is issued for (a Consul DNS name by
                // service tag); the port comes from the catalog, as bridge ports are mapped.
                host: format!("{{{{ index $s.ServiceMeta \"member\" }}}}.{pgbackrest}.service.consul"),
                pg_port: self.pg_port.to_string(),
                tls_port: "{{ $s.Port }}".into(),
                data_dir: format!("{}/pgdata", names::DATA_MOUNT),
                socket_dir: "/alloc/tmp".into(),
                separator: "{{ if $i }},{{ end }}".into(),
            }],
            data_dir: format!("{}/pgdata", names::DATA_MOUNT),
            // Beside the repository host on its node: one lock directory for both.
            lock_dir: if facts.backup.repo_host { names::REPO_LOCK_DIR.into() } else { "/alloc/tmp/pgbackrest".into() },
            repo_host_alloc: if facts.backup.repo_host {
                format!(
                    "{{{{ with service \"{}\" }}}}{{{{ with index . 0 }}}}{{{{ index .ServiceMeta \"alloc\" }}}}{{{{ end }}}}{{{{ end }}}}",
                    names::repo_service(&self.cluster)
                )
            } else {
                String::new()
            },
            secrets: self.secrets_of(&job, &crate::compile::secrets::backup_keys(facts)),
            ..self.base()
        }
    }
}

/// Escapes `{{` so that Nomad's Go templates print it instead of evaluating it.
pub fn escape_go_template(text: &str) -> String {
    if text.contains("{{") {
        text.replace("{{", "{{ \"{{\" }}")
    } else {
        text.to_owned()
    }
}
