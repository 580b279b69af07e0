//! What the pack templates know about the stack: a flat, serializable view of it, the same
//! for every runtime.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::stack::{Backup, BackupKind, Dcs, Repo, Stack, SynchronousMode};

#[derive(Debug, Clone, Serialize)]
pub struct Facts {
    pub cluster: String,
    /// Patroni's `scope` and pgBackRest's stanza.
    pub scope: String,
    pub pg_version: u32,
    pub members: Vec<MemberFacts>,
    /// postgresql.conf parameters: pgnomad's defaults overlaid with the stack's.
    pub parameters: BTreeMap<String, String>,
    /// Those of `parameters` that Postgres reads only at start: the ones patroni.yml
    /// bootstraps the cluster with. The rest reach a running cluster through Patroni's
    /// `PATCH /config` (`run`, `upgrade`) and so never change a member's config file — on
    /// Nomad a changed template would replace every member group.
    pub bootstrap_parameters: BTreeMap<String, String>,
    /// Extra pg_hba lines from the stack, before pgnomad's own.
    pub pg_hba: Vec<String>,
    pub users: Vec<String>,
    pub databases: Vec<DatabaseFacts>,
    /// "off", "on" or "strict".
    pub synchronous_mode: &'static str,
    pub patroni: PatroniFacts,
    pub pgbouncer: PgBouncerFacts,
    pub pgadmin_email: String,
    pub backup: BackupFacts,
    pub dcs: &'static str,
    /// `restore { … }`: how Patroni's custom bootstrap restores the source's backups.
    pub restore: Option<RestoreFacts>,
    /// TLS for SQL clients (`postgres { tls = true }`, `pgbouncer { tls = true }`).
    pub client_tls: ClientTlsFacts,
    /// Whether postgres_exporter runs beside each member (as the `pg_monitor` role
    /// [`MONITOR_ROLE`]).
    pub exporter: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClientTlsFacts {
    /// Postgres offers TLS with pgnomad's certificate, and PgBouncer verifies it (verify-ca).
    pub postgres: bool,
    /// PgBouncer offers TLS to its clients with pgnomad's certificate.
    pub pgbouncer: bool,
}

impl ClientTlsFacts {
    pub fn any(&self) -> bool {
        self.postgres || self.pgbouncer
    }
}

/// The role pg_rewind connects to the primary as (over TCP: the superuser may not).
pub const REWIND_ROLE: &str = "pgnomad_rewind";
/// The `pg_monitor` role postgres_exporter logs in as.
pub const MONITOR_ROLE: &str = "pgnomad_monitor";

#[derive(Debug, Clone, Serialize)]
pub struct MemberFacts {
    pub name: String,
    pub index: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatabaseFacts {
    pub name: String,
    pub owner: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PatroniFacts {
    pub ttl: u32,
    pub loop_wait: u32,
    pub retry_timeout: u32,
    pub primary_start_timeout: u32,
    pub maximum_lag_on_failover: u64,
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PgBouncerFacts {
    pub enabled: bool,
    pub pool_mode: String,
    pub default_pool_size: u32,
    pub max_client_conn: u32,
    pub reserve_pool_size: u32,
    pub query_wait_timeout: u32,
    /// Seconds, as PgBouncer reads them ("0.25").
    pub server_login_retry: String,
    /// Whole seconds a client may wait on a PAUSE before the pause watchdog beside PgBouncer
    /// RESUMEs it; 0 when there is no watchdog.
    pub max_pause_secs: u64,
}

impl PgBouncerFacts {
    /// How long the pause watchdog lets clients wait on a PAUSE; `None` without one.
    pub fn max_pause(&self) -> Option<std::time::Duration> {
        (self.enabled && self.max_pause_secs > 0).then(|| std::time::Duration::from_secs(self.max_pause_secs))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupFacts {
    pub enabled: bool,
    /// "s3" or "volume".
    pub repo_type: &'static str,
    pub s3_endpoint: String,
    /// Empty for HTTPS's 443.
    pub s3_port: String,
    pub s3_bucket: String,
    pub s3_region: String,
    pub s3_uri_style: String,
    pub s3_verify_tls: bool,
    /// The repo's path: the S3 prefix, or the mount point of the repo volume.
    pub repo_path: String,
    /// Whether a repository host (`<c>-repo`) holds the repository: members reach it over
    /// TLS instead of mounting the volume (a volume repo not declared `shared`).
    pub repo_host: bool,
    pub cipher: bool,
    pub retention_full: u32,
    pub retention_diff: u32,
    pub wal_archiving: bool,
    pub from_standby: bool,
    pub kinds: Vec<&'static str>,
}

/// PostgreSQL 13–17 parameters of context `postmaster`: a change takes effect only when the
/// server restarts. Patroni's `pending_restart` tells the truth at run time; this list is for
/// the plan (and `--dry-run`) beforehand.
pub const POSTMASTER_PARAMETERS: &[&str] = &[
    "archive_mode",
    "autovacuum_freeze_max_age",
    "autovacuum_max_workers",
    "autovacuum_multixact_freeze_max_age",
    "bonjour",
    "bonjour_name",
    "cluster_name",
    "data_sync_retry",
    "dynamic_shared_memory_type",
    "event_source",
    "external_pid_file",
    "hot_standby",
    "huge_page_size",
    "huge_pages",
    "ignore_invalid_pages",
    "jit_provider",
    "listen_addresses",
    "logging_collector",
    "max_connections",
    "max_files_per_process",
    "max_locks_per_transaction",
    "max_logical_replication_workers",
    "max_pred_locks_per_transaction",
    "max_prepared_transactions",
    "max_replication_slots",
    "max_wal_senders",
    "max_worker_processes",
    "min_dynamic_shared_memory",
    "old_snapshot_threshold",
    "port",
    "recovery_target",
    "recovery_target_action",
    "recovery_target_inclusive",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_timeline",
    "recovery_target_xid",
    "shared_buffers",
    "shared_memory_type",
    "shared_preload_libraries",
    "superuser_reserved_connections",
    "track_activity_query_size",
    "track_commit_timestamp",
    "unix_socket_directories",
    "unix_socket_group",
    "unix_socket_permissions",
    "wal_buffers",
    "wal_decode_buffer_size",
    "wal_level",
    "wal_log_hints",
];

/// Reload-only parameters the bootstrap itself needs: the roles Patroni and bootstrap.sql
/// create get their password hashes from `password_encryption` (md5 by default before
/// PostgreSQL 14, which pgnomad's scram-sha-256 pg_hba would refuse).
const BOOTSTRAP_TOO: &[&str] = &["password_encryption"];

/// Whether a change of `parameter` needs a restart of Postgres.
pub fn restart_required(parameter: &str) -> bool {
    POSTMASTER_PARAMETERS.contains(&parameter)
}

/// postgresql.conf defaults pgnomad sets for a replicated cluster; the stack's `parameters`
/// win over them.
fn default_parameters(stack: &Stack) -> BTreeMap<String, String> {
    let members = stack.postgres.members.value;
    let mut parameters: BTreeMap<String, String> = [
        ("password_encryption", "scram-sha-256"),
        ("wal_level", "replica"),
        ("hot_standby", "on"),
        ("wal_log_hints", "on"),
        ("max_wal_size", "1GB"),
        ("wal_keep_size", "128MB"),
        ("max_connections", "200"),
        ("shared_buffers", "128MB"),
        ("log_line_prefix", "%m [%p] %q%u@%d "),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    // Room for every member plus a base backup and pg_rewind at the same time.
    parameters.insert("max_wal_senders".into(), (members + 5).max(10).to_string());
    parameters.insert("max_replication_slots".into(), (members + 5).max(10).to_string());
    parameters
}

impl Facts {
    pub fn new(stack: &Stack) -> Self {
        let mut parameters = default_parameters(stack);
        parameters.extend(stack.postgres.parameters.clone());
        let members = (0..stack.postgres.members.value).map(|index| MemberFacts { name: member_name(index), index }).collect();
        Facts {
            cluster: stack.cluster.name.value.clone(),
            scope: stack.cluster.name.value.clone(),
            pg_version: stack.postgres.version.value,
            members,
            bootstrap_parameters: parameters
                .iter()
                .filter(|(k, _)| restart_required(k) || BOOTSTRAP_TOO.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            parameters,
            pg_hba: stack.postgres.pg_hba.clone(),
            users: stack.postgres.users.iter().map(|u| u.value.clone()).collect(),
            databases: stack
                .postgres
                .databases
                .iter()
                .map(|d| DatabaseFacts { name: d.name.value.clone(), owner: d.owner.clone() })
                .collect(),
            synchronous_mode: match stack.postgres.synchronous_mode {
                SynchronousMode::Off => "off",
                SynchronousMode::On => "on",
                SynchronousMode::Strict => "strict",
            },
            patroni: PatroniFacts {
                ttl: stack.patroni.ttl.value,
                loop_wait: stack.patroni.loop_wait.value,
                retry_timeout: stack.patroni.retry_timeout.value,
                primary_start_timeout: stack.patroni.primary_start_timeout,
                maximum_lag_on_failover: stack.patroni.maximum_lag_on_failover,
                tags: stack.patroni.tags.clone(),
            },
            pgbouncer: PgBouncerFacts {
                enabled: stack.pgbouncer.enabled,
                pool_mode: stack.pgbouncer.pool_mode.clone(),
                default_pool_size: stack.pgbouncer.default_pool_size,
                max_client_conn: stack.pgbouncer.max_client_conn,
                reserve_pool_size: stack.pgbouncer.reserve_pool_size,
                query_wait_timeout: stack.pgbouncer.query_wait_timeout.value,
                server_login_retry: seconds_text(stack.pgbouncer.server_login_retry_ms),
                max_pause_secs: stack.pgbouncer.max_pause_ms.value.div_ceil(1000),
            },
            pgadmin_email: stack.pgadmin.email.value.clone(),
            backup: backup_facts(&stack.backup),
            dcs: match stack.patroni.dcs {
                Dcs::Consul => "consul",
                Dcs::Etcd3 { .. } => "etcd3",
            },
            client_tls: ClientTlsFacts { postgres: stack.postgres.tls, pgbouncer: stack.pgbouncer.enabled && stack.pgbouncer.tls },
            exporter: stack.monitoring.postgres_exporter,
            restore: stack.restore.as_ref().map(|r| restore_facts(r, &stack.cluster.name.value)),
        }
    }
}

/// What the restore templates need: pgBackRest's `--type`/`--target`/`--set` (they pick the
/// backup set, the newest that ends before the target) and PostgreSQL's recovery target.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreFacts {
    /// `time`, `lsn`, `xid`, `immediate` (a backup's consistent point) or `default` (the
    /// end of the archive).
    pub target_type: &'static str,
    /// The target as pgBackRest and PostgreSQL read it (a time in UTC); empty for
    /// `immediate` and `default`.
    pub target: String,
    /// `recovery_target_time`, `…_lsn`, `…_xid`, `recovery_target`; empty for `default`.
    pub recovery_parameter: &'static str,
    /// The backup set label, or empty.
    pub set: String,
    /// The cluster restores from its own repository: `restore --in-place`, which builds
    /// this in memory (a stack file naming itself is refused). Its replicas then come from
    /// the restored primary only: the repository's backups are of the timeline it left.
    pub in_place: bool,
}

fn restore_facts(restore: &crate::stack::Restore, cluster: &str) -> RestoreFacts {
    use crate::stack::RestoreTarget;
    let set = restore.backup.as_ref().map(|b| b.value.clone()).unwrap_or_default();
    let (target_type, target, recovery_parameter) = match &restore.target {
        RestoreTarget::Time { micros, .. } => ("time", crate::stack::decode::format_timestamp(*micros), "recovery_target_time"),
        RestoreTarget::Lsn(lsn) => ("lsn", lsn.value.clone(), "recovery_target_lsn"),
        RestoreTarget::Xid(xid) => ("xid", xid.value.clone(), "recovery_target_xid"),
        RestoreTarget::Latest if !set.is_empty() => ("immediate", "immediate".to_owned(), "recovery_target"),
        RestoreTarget::Latest => ("default", String::new(), ""),
    };
    RestoreFacts { target_type, target, recovery_parameter, set, in_place: restore.from.value == cluster }
}

fn backup_facts(backup: &Backup) -> BackupFacts {
    let kinds = BackupKind::ALL.iter().filter(|k| backup.schedules.iter().any(|s| s.kind == **k)).map(|k| k.name()).collect();
    let mut facts = BackupFacts {
        enabled: backup.enabled,
        repo_type: "volume",
        s3_endpoint: String::new(),
        s3_port: String::new(),
        s3_bucket: String::new(),
        s3_region: String::new(),
        s3_uri_style: String::new(),
        s3_verify_tls: true,
        repo_path: String::new(),
        repo_host: backup.enabled && backup.repo.has_repo_host(),
        cipher: backup.cipher,
        retention_full: backup.retention_full,
        retention_diff: backup.retention_diff,
        wal_archiving: backup.enabled && backup.wal_archiving,
        from_standby: backup.from_standby,
        kinds,
    };
    match &backup.repo {
        Repo::S3 { endpoint, port, bucket, region, path, uri_style, verify_tls } => {
            facts.repo_type = "s3";
            facts.s3_endpoint = endpoint.clone();
            facts.s3_port = port.map(|p| p.to_string()).unwrap_or_default();
            facts.s3_bucket = bucket.value.clone();
            facts.s3_region = region.clone();
            facts.s3_uri_style = uri_style.clone();
            facts.s3_verify_tls = *verify_tls;
            facts.repo_path = path.clone();
        }
        Repo::Volume { path, .. } => facts.repo_path = path.clone(),
    }
    facts
}

/// A member's name: its Nomad task group and its Patroni name, stable across reschedules.
pub fn member_name(index: u32) -> String {
    format!("member-{index}")
}

/// Milliseconds as the decimal seconds PgBouncer's time settings take: 250 → "0.25".
fn seconds_text(millis: u64) -> String {
    let text = format!("{}.{:03}", millis / 1000, millis % 1000);
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod seconds_text_tests {
    #[test]
    fn milliseconds_become_pgbouncer_seconds() {
        assert_eq!(super::seconds_text(250), "0.25");
        assert_eq!(super::seconds_text(1000), "1");
        assert_eq!(super::seconds_text(1500), "1.5");
        assert_eq!(super::seconds_text(0), "0");
        assert_eq!(super::seconds_text(15_001), "15.001");
    }
}
