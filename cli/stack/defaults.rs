//! Defaults of the stack file, stated once.
//!
//! `vagrant/` and `terraform/` must agree with these (CSI plugin IDs, datacenter, node pool,
//! ports, image names); `tests/infra_defaults.rs` reads all of them and fails on any drift.

/// Nomad datacenter the jobs are placed in.
pub const DATACENTER: &str = "dc1";
/// Nomad region.
pub const REGION: &str = "global";
/// Nomad namespace.
pub const NAMESPACE: &str = "default";
/// Nomad node pool.
pub const NODE_POOL: &str = "default";

/// CSI plugin that provides one volume per Postgres member (the lab runs the hostpath driver
/// under this ID; the Terraform AWS example sets `plugin_id = "aws-ebs0"` in its stack file).
pub const CSI_PLUGIN_ID: &str = "hostpath";
/// CSI plugin ID of the AWS EBS driver job in `terraform/`.
pub const AWS_EBS_CSI_PLUGIN_ID: &str = "aws-ebs0";

/// Ports (the same inside the task and, with static mapping disabled, as Nomad's `to`).
pub const POSTGRES_PORT: u16 = 5432;
pub const PATRONI_PORT: u16 = 8008;
pub const PGBOUNCER_PORT: u16 = 6432;
/// PgBouncer's wait after a failed server login. During a failover its logins fail (the old
/// primary refuses, the fallback name does not resolve) until the new primary's address is
/// rendered; the reload that brings it does not cut the wait short, so the wait adds to every
/// write gap. Four attempts a second cost nothing on a server that is down.
pub const PGBOUNCER_SERVER_LOGIN_RETRY_MS: u64 = 250;
/// How long a client may wait on a PAUSE before PgBouncer's own watchdog RESUMEs it: past
/// pgnomad's longest pause (`--pause-timeout` 60 s, plus up to 10 s for a PAUSE to take), and
/// under `query_wait_timeout` (120 s), after which clients get errors anyway.
pub const PGBOUNCER_MAX_PAUSE_MS: u64 = 90_000;
/// The shortest watchdog limit: pgnomad's own PAUSE may wait 10 s for transactions to end
/// before its switchover starts.
pub const PGBOUNCER_MIN_MAX_PAUSE_MS: u64 = 15_000;
pub const PGADMIN_PORT: u16 = 5050;
pub const EXPORTER_PORT: u16 = 9187;
pub const PGBACKREST_TLS_PORT: u16 = 8432;
/// Consul HTTP API port on every client node (Patroni's DCS endpoint).
pub const CONSUL_HTTP_PORT: u16 = 8500;

/// The Postgres + Patroni + pgBackRest + PgBouncer image built from `packs/image/Dockerfile`;
/// the tag is the Postgres major version.
pub const POSTGRES_IMAGE_REPO: &str = "pgnomad/postgres";
pub const PGADMIN_IMAGE: &str = "dpage/pgadmin4:8";

/// Default Postgres major version.
pub const POSTGRES_VERSION: u32 = 15;

/// Consul's default `session_ttl_min`; Patroni asks for sessions of ttl/2 seconds.
pub const CONSUL_SESSION_TTL_MIN_SECS: u32 = 10;
/// The lowered `session_ttl_min` the Vagrant lab and Terraform servers configure.
pub const LAB_CONSUL_SESSION_TTL_MIN_SECS: u32 = 5;

/// Nomad clients' default `max_kill_timeout`: a longer `kill_timeout` is silently cut to it.
pub const NOMAD_MAX_KILL_TIMEOUT_SECS: u32 = 30;

/// The `postgres` user of pgnomad's image (packs/image creates it with this uid and gid).
pub const POSTGRES_UID: u32 = 999;
pub const POSTGRES_GID: u32 = 999;

/// The host volume the repository host and the backup jobs mount by default. The operator
/// creates it on exactly one node (the lab and Terraform do); the backup jobs check that
/// they run beside the repository host (packs/backup/backup.sh).
pub const REPO_VOLUME: &str = "pgbackrest";
