//! The typed stack: what a stack file says, with every default filled in.
//!
//! Values that later checks point at keep their span (`Spanned`); a value that was left out
//! carries the span of its block, so a message about it still lands somewhere sensible.

use std::collections::BTreeMap;

use super::syntax::{ByteSpan, Spanned};

#[derive(Debug, Clone, PartialEq)]
pub struct Stack {
    pub cluster: Cluster,
    pub postgres: Postgres,
    pub patroni: Patroni,
    pub storage: Storage,
    pub pgbouncer: PgBouncer,
    pub pgadmin: PgAdmin,
    pub backup: Backup,
    pub monitoring: Monitoring,
    pub secrets: Secrets,
    /// `restore { … }`: bootstrap this cluster from another cluster's repository.
    pub restore: Option<Restore>,
}

impl Stack {
    /// The cluster this one restores from, when it is another cluster (a clone); `None` for
    /// a cluster that is not restored or is restored in place.
    pub fn restore_source(&self) -> Option<&str> {
        self.restore.as_ref().map(|r| r.from.value.as_str()).filter(|from| *from != self.cluster.name.value)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub name: Spanned<String>,
    pub datacenters: Vec<String>,
    pub namespace: String,
    pub region: String,
    pub node_pool: String,
    pub constraints: Vec<Constraint>,
    /// The Nomad clients' `max_kill_timeout` in seconds: no task's `kill_timeout` may exceed it.
    pub max_kill_timeout: Spanned<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Constraint {
    pub attribute: String,
    pub operator: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Driver {
    /// The pgnomad image (Postgres, Patroni, pgBackRest, PgBouncer, postgres_exporter).
    Docker { image: String },
    /// Packages installed on the hosts; `bin_dir` holds postgres, pg_ctl, …
    Exec { bin_dir: String },
}

impl Driver {
    pub fn nomad_name(&self) -> &'static str {
        match self {
            Driver::Docker { .. } => "docker",
            Driver::Exec { .. } => "exec",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynchronousMode {
    Off,
    On,
    Strict,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Database {
    pub name: Spanned<String>,
    pub owner: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Postgres {
    pub version: Spanned<u32>,
    pub members: Spanned<u32>,
    pub driver: Driver,
    /// Numeric uid and gid of the `postgres` user the tasks run as (in the image, or on the
    /// hosts with exec drivers): Nomad writes template files with these as owner.
    pub uid: u32,
    pub gid: u32,
    pub cpu: u32,
    pub memory_mb: u32,
    pub port: Spanned<u16>,
    pub parameters: BTreeMap<String, String>,
    pub pg_hba: Vec<String>,
    pub databases: Vec<Database>,
    /// Application users (login roles); their passwords are generated secrets.
    pub users: Vec<Spanned<String>>,
    pub synchronous_mode: SynchronousMode,
    /// Postgres offers TLS to clients with a certificate from pgnomad's CA.
    pub tls: bool,
    pub distinct_hosts: bool,
    pub spread_attribute: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Dcs {
    /// Consul's agent on the node the member runs on.
    Consul,
    Etcd3 {
        hosts: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Patroni {
    pub dcs: Dcs,
    pub dcs_span: ByteSpan,
    pub ttl: Spanned<u32>,
    pub loop_wait: Spanned<u32>,
    pub retry_timeout: Spanned<u32>,
    pub primary_start_timeout: u32,
    pub maximum_lag_on_failover: u64,
    /// Consul's `session_ttl_min` on the servers, in seconds (Consul's default is 10).
    pub consul_session_ttl_min: Spanned<u32>,
    pub port: Spanned<u16>,
    pub tags: BTreeMap<String, String>,
    /// Seconds Nomad waits after SIGTERM before it kills Patroni.
    pub kill_timeout: Spanned<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Storage {
    Csi(CsiStorage),
    /// Nomad host volumes named `<prefix><index>`, one per member, created by the operator.
    Host {
        volume_prefix: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct CsiStorage {
    pub plugin_id: String,
    pub capacity_min: Spanned<u64>,
    pub capacity_max: Spanned<u64>,
    pub access_mode: String,
    pub attachment_mode: String,
    pub fs_type: String,
    pub mount_flags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PgBouncer {
    pub enabled: bool,
    pub count: u32,
    pub port: Spanned<u16>,
    pub pool_mode: String,
    pub default_pool_size: u32,
    pub max_client_conn: u32,
    pub reserve_pool_size: u32,
    pub query_wait_timeout: Spanned<u32>,
    /// Milliseconds PgBouncer waits after a failed server login before the next.
    pub server_login_retry_ms: u64,
    /// Milliseconds a client may wait on a PAUSE before PgBouncer's watchdog RESUMEs it;
    /// 0 turns the watchdog off.
    pub max_pause_ms: Spanned<u64>,
    /// PgBouncer offers TLS to clients with a certificate from pgnomad's CA.
    pub tls: bool,
    pub cpu: u32,
    pub memory_mb: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PgAdmin {
    pub enabled: bool,
    pub port: Spanned<u16>,
    pub email: Spanned<String>,
    pub image: String,
    pub cpu: u32,
    pub memory_mb: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Repo {
    S3 {
        /// Host name only; pgBackRest always uses HTTPS.
        endpoint: String,
        port: Option<u16>,
        bucket: Spanned<String>,
        region: String,
        path: String,
        uri_style: String,
        verify_tls: bool,
    },
    /// A volume holding the repository. Without `shared`, a host volume on one node that the
    /// repository host job (`<c>-repo`, pgBackRest's TLS server, to which members push WAL)
    /// and the backup jobs mount; no member mounts it. With `shared` (storage that is the same
    /// on every node: an NFS-backed host volume or a multi-writer CSI volume) every member and
    /// backup job mounts it, and there is no repository host.
    Volume { source: String, kind: VolumeKind, path: String, shared: bool },
}

impl Repo {
    /// Whether the stack runs a pgBackRest repository host (`<c>-repo`): a volume repo that
    /// is not declared as shared storage.
    pub fn has_repo_host(&self) -> bool {
        matches!(self, Repo::Volume { shared: false, .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeKind {
    Csi,
    Host,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub kind: BackupKind,
    pub cron: Spanned<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BackupKind {
    Full,
    Diff,
    Incr,
}

impl BackupKind {
    pub const ALL: [BackupKind; 3] = [BackupKind::Full, BackupKind::Diff, BackupKind::Incr];

    pub fn name(self) -> &'static str {
        match self {
            BackupKind::Full => "full",
            BackupKind::Diff => "diff",
            BackupKind::Incr => "incr",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Backup {
    pub enabled: bool,
    pub repo: Repo,
    pub cipher: bool,
    pub retention_full: u32,
    pub retention_diff: u32,
    pub schedules: Vec<Schedule>,
    pub time_zone: String,
    pub wal_archiving: bool,
    /// Take backups from a standby to spare the primary.
    pub from_standby: bool,
    pub tls_port: Spanned<u16>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Monitoring {
    pub postgres_exporter: bool,
    pub port: Spanned<u16>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Secrets {
    /// Nomad Variables at `nomad/jobs/<job>`: each job's workload identity reads its own.
    NomadVariables,
    /// Vault KV v2, one secret per job under `path_prefix`.
    Vault { mount: String, path_prefix: String, role: Option<String> },
}

/// A cluster bootstrapped from another cluster's backups (Patroni's custom bootstrap running
/// `pgbackrest restore`), which then archives into a stanza of its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Restore {
    /// The source: a stack file (relative to this one) or a cluster name.
    pub from: Spanned<String>,
    pub target: RestoreTarget,
    /// The backup set to start from (pgBackRest's `--set`); the newest that fits when left out.
    pub backup: Option<Spanned<String>>,
}

/// Where recovery stops; the restored cluster is then promoted.
#[derive(Debug, Clone, PartialEq)]
pub enum RestoreTarget {
    /// The end of the archived WAL (or, with `backup`, that backup's consistent point).
    Latest,
    /// `to_time`, as written (RFC 3339 or PostgreSQL's text), and as Unix microseconds.
    Time { text: Spanned<String>, micros: i64 },
    /// `to_lsn`, as `0/3000060`.
    Lsn(Spanned<String>),
    /// `to_xid`, a transaction id.
    Xid(Spanned<String>),
}
