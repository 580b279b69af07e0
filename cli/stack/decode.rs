//! From the syntax tree to the typed stack, filling in defaults.

use super::defaults;
use super::diagnostic::Diagnostic;
use super::model::*;
use super::reader::Reader;
use super::syntax::{ByteSpan, Spanned};
use super::validate;

pub fn decode(root: &Reader<'_>) -> Option<Stack> {
    let clusters = root.labelled_blocks("cluster");
    let postgres_reader = root.block("postgres");
    let patroni_reader = root.block("patroni");
    let storage_reader = root.block("storage");
    let pgbouncer_reader = root.block("pgbouncer");
    let pgadmin_reader = root.block("pgadmin");
    let backup_reader = root.block("backup");
    let monitoring_reader = root.block("monitoring");
    let secrets_reader = root.block("secrets");
    let restore_reader = root.block("restore");

    let cluster = match clusters.len() {
        0 => {
            // A `cluster` block without its one label was reported already.
            if !root.has_block("cluster") {
                root.error(
                    Diagnostic::error(None, "the stack file has no `cluster` block")
                        .with_help("start the file with `cluster \"main\" {}`; the name prefixes every job"),
                );
            }
            // Still report misspelt blocks: `clustre "main" {}` is the likely cause.
            root.finish();
            return None;
        }
        _ => {
            for (label, _) in clusters.iter().skip(1) {
                root.error(
                    Diagnostic::error(label.span.clone(), "a stack file describes one cluster")
                        .with_help("put each cluster in its own stack file"),
                );
            }
            let (name, reader) = &clusters[0];
            cluster(name.clone(), reader)
        }
    };
    let postgres = self::postgres(postgres_reader.as_ref(), &cluster);
    let patroni = self::patroni(patroni_reader.as_ref(), &postgres);
    let storage = self::storage(storage_reader.as_ref(), &cluster);
    let pgbouncer = self::pgbouncer(pgbouncer_reader.as_ref());
    let pgadmin = self::pgadmin(pgadmin_reader.as_ref());
    let backup = self::backup(backup_reader.as_ref());
    let monitoring = self::monitoring(monitoring_reader.as_ref());
    let secrets = self::secrets(secrets_reader.as_ref());
    let restore = restore_reader.as_ref().and_then(self::restore);
    for (_, reader) in &clusters {
        reader.finish();
    }
    for reader in [
        &postgres_reader,
        &patroni_reader,
        &pgbouncer_reader,
        &pgadmin_reader,
        &backup_reader,
        &monitoring_reader,
        &secrets_reader,
        &restore_reader,
    ]
    .into_iter()
    .flatten()
    {
        reader.finish();
    }
    root.finish();
    Some(Stack { cluster, postgres, patroni, storage, pgbouncer, pgadmin, backup, monitoring, secrets, restore })
}

/// A Nomad node attribute as Nomad's constraints take it, `${node.datacenter}`. Written in
/// the stack file without `${…}` (which HCL would try to interpolate), or with `$${…}`.
fn node_attribute(text: &str) -> String {
    let bare = text.trim().trim_start_matches("${").trim_end_matches('}');
    format!("${{{bare}}}")
}

/// The span a left-out value is reported at: its block's, or the start of the file.
fn at(reader: Option<&Reader<'_>>) -> ByteSpan {
    reader.map_or(0..0, |r| r.span.clone())
}

fn u32_or(reader: Option<&Reader<'_>>, name: &'static str, min: i64, max: i64, default: u32) -> Spanned<u32> {
    reader
        .and_then(|r| r.integer(name, min, max))
        .map(|v| Spanned::new(v.value as u32, v.span))
        .unwrap_or_else(|| Spanned::new(default, at(reader)))
}

fn port_or(reader: Option<&Reader<'_>>, name: &'static str, default: u16) -> Spanned<u16> {
    reader
        .and_then(|r| r.integer(name, 1, 65535))
        .map(|v| Spanned::new(v.value as u16, v.span))
        .unwrap_or_else(|| Spanned::new(default, at(reader)))
}

fn string_or(reader: Option<&Reader<'_>>, name: &'static str, default: &str) -> Spanned<String> {
    reader.and_then(|r| r.string(name)).unwrap_or_else(|| Spanned::new(default.to_owned(), at(reader)))
}

fn bool_or(reader: Option<&Reader<'_>>, name: &'static str, default: bool) -> bool {
    reader.and_then(|r| r.boolean(name)).map_or(default, |b| b.value)
}

fn choice_or(reader: Option<&Reader<'_>>, name: &'static str, choices: &[&'static str], default: &'static str) -> Spanned<&'static str> {
    reader.and_then(|r| r.choice(name, choices)).unwrap_or_else(|| Spanned::new(default, at(reader)))
}

fn strings(list: Option<Vec<Spanned<String>>>) -> Option<Vec<String>> {
    list.map(|items| items.into_iter().map(|s| s.value).collect())
}

fn cluster(name: Spanned<String>, reader: &Reader<'_>) -> Cluster {
    let datacenters = strings(reader.string_list("datacenters")).unwrap_or_else(|| vec![defaults::DATACENTER.to_owned()]);
    let namespace = string_or(Some(reader), "namespace", defaults::NAMESPACE).value;
    let region = string_or(Some(reader), "region", defaults::REGION).value;
    let node_pool = string_or(Some(reader), "node_pool", defaults::NODE_POOL).value;
    let constraints = reader
        .labelled_blocks("constraint")
        .into_iter()
        .map(|(attribute, block)| {
            let constraint = Constraint {
                attribute: node_attribute(&attribute.value),
                operator: string_or(Some(&block), "operator", "=").value,
                value: string_or(Some(&block), "value", "").value,
            };
            block.finish();
            constraint
        })
        .collect();
    let max_kill_timeout = u32_or(Some(reader), "max_kill_timeout", 1, 86400, defaults::NOMAD_MAX_KILL_TIMEOUT_SECS);
    Cluster { name, datacenters, namespace, region, node_pool, constraints, max_kill_timeout }
}

fn postgres(reader: Option<&Reader<'_>>, cluster: &Cluster) -> Postgres {
    let version = u32_or(reader, "version", 13, 17, defaults::POSTGRES_VERSION);
    let members = u32_or(reader, "members", 1, 99, 3);
    // raw_exec is Nomad's, but its jobs would be placed and then fail at every start.
    let raw_exec = reader.and_then(|r| r.string("driver")).filter(|d| d.value == "raw_exec");
    let driver_name = match &raw_exec {
        Some(raw_exec) => {
            reader.unwrap().error(
                Diagnostic::error(raw_exec.span.clone(), "the raw_exec driver cannot run pgnomad's jobs: Nomad's raw_exec mounts no volumes, and every member needs its data volume")
                    .with_help("use driver = \"exec\": the same packages on the hosts, each task chrooted in its own directory"),
            );
            Spanned::new("exec", raw_exec.span.clone())
        }
        None => choice_or(reader, "driver", &["docker", "exec"], "docker"),
    };
    let image = reader.and_then(|r| r.string("image"));
    let bin_dir = reader.and_then(|r| r.string("bin_dir"));
    let default_bin_dir = format!("/usr/lib/postgresql/{}/bin", version.value);
    let driver = match driver_name.value {
        "docker" => {
            if let Some(bin_dir) = &bin_dir {
                reader.unwrap().error(
                    Diagnostic::error(bin_dir.span.clone(), "`bin_dir` only applies to the exec driver")
                        .with_help("remove it (the docker driver runs the binaries inside `image`), or set driver = \"exec\""),
                );
            }
            Driver::Docker { image: image.map_or_else(|| format!("{}:{}", defaults::POSTGRES_IMAGE_REPO, version.value), |i| i.value) }
        }
        exec => {
            if let Some(image) = &image {
                reader.unwrap().error(
                    Diagnostic::error(image.span.clone(), format!("`image` only applies to the docker driver, not {exec}"))
                        .with_help("remove it: with exec drivers Postgres is installed on the hosts; set `bin_dir` if its binaries are not in the default place"),
                );
            }
            Driver::Exec { bin_dir: bin_dir.map_or(default_bin_dir, |b| b.value) }
        }
    };
    let parameters = reader.and_then(|r| r.scalar_map("parameters")).unwrap_or_default();
    for (name, (key_span, _)) in &parameters {
        // postgresql.conf names are case-insensitive: `Port` is `port`.
        if validate::MANAGED_PARAMETERS.contains(&name.to_ascii_lowercase().as_str()) {
            reader.unwrap().error(
                Diagnostic::error(key_span.clone(), format!("postgresql.conf parameter `{name}` is managed by pgnomad"))
                    .with_help("remove it from `parameters`; pgnomad sets it from the rest of the stack file"),
            );
        }
    }
    let parameters = parameters.into_iter().map(|(k, (_, v))| (k, v.value)).collect();
    let pg_hba = strings(reader.and_then(|r| r.string_list("pg_hba"))).unwrap_or_default();
    let users = reader.and_then(|r| r.string_list("users"));
    let mut databases: Vec<Database> = reader
        .map(|r| r.labelled_blocks("database"))
        .unwrap_or_default()
        .into_iter()
        .map(|(name, block)| {
            let owner = block.string("owner").map_or_else(|| name.value.clone(), |o| o.value);
            block.finish();
            Database { name, owner }
        })
        .collect();
    let mut users = users.unwrap_or_default();
    if databases.is_empty() && users.is_empty() {
        // A working cluster out of the box: one application database and its owner, named
        // after nothing in particular so that it is obviously the app's.
        let span = at(reader);
        databases.push(Database { name: Spanned::new("app".into(), span.clone()), owner: "app".into() });
        users.push(Spanned::new("app".into(), span));
    }
    for database in &databases {
        if !users.iter().any(|u| u.value == database.owner) {
            users.push(Spanned::new(database.owner.clone(), database.name.span.clone()));
        }
    }
    let synchronous_mode = match choice_or(reader, "synchronous_mode", &["off", "on", "strict"], "on").value {
        "off" => SynchronousMode::Off,
        "strict" => SynchronousMode::Strict,
        _ => SynchronousMode::On,
    };
    let placement = reader.and_then(|r| r.block("placement"));
    let distinct_hosts = bool_or(placement.as_ref(), "distinct_hosts", true);
    let spread_attribute = placement.as_ref().and_then(|p| p.string("spread")).map(|s| node_attribute(&s.value));
    if let Some(placement) = placement {
        placement.finish();
    }
    let _ = cluster;
    Postgres {
        version,
        members,
        driver,
        uid: u32_or(reader, "uid", 1, i64::from(i32::MAX), defaults::POSTGRES_UID).value,
        gid: u32_or(reader, "gid", 1, i64::from(i32::MAX), defaults::POSTGRES_GID).value,
        cpu: u32_or(reader, "cpu", 100, 1_000_000, 1000).value,
        memory_mb: u32_or(reader, "memory", 128, 10_000_000, 1024).value,
        port: port_or(reader, "port", defaults::POSTGRES_PORT),
        parameters,
        pg_hba,
        databases,
        users,
        synchronous_mode,
        tls: bool_or(reader, "tls", false),
        distinct_hosts,
        spread_attribute,
    }
}

fn patroni(reader: Option<&Reader<'_>>, _postgres: &Postgres) -> Patroni {
    let dcs_choice = choice_or(reader, "dcs", &["consul", "etcd3"], "consul");
    let hosts = reader.and_then(|r| r.string_list("etcd_hosts"));
    let dcs = match dcs_choice.value {
        "etcd3" => match hosts {
            Some(hosts) if !hosts.is_empty() => {
                for host in &hosts {
                    let valid =
                        host.value.rsplit_once(':').is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
                    if !valid {
                        reader.unwrap().error(
                            Diagnostic::error(host.span.clone(), format!("etcd host \"{}\" is not host:port", host.value))
                                .with_help("write each etcd endpoint with its client port, e.g. \"10.0.0.1:2379\""),
                        );
                    }
                }
                Dcs::Etcd3 { hosts: hosts.into_iter().map(|h| h.value).collect() }
            }
            _ => {
                if let Some(r) = reader {
                    r.error(
                        Diagnostic::error(dcs_choice.span.clone(), "the etcd3 DCS needs `etcd_hosts`")
                            .with_help("list the etcd endpoints, e.g. etcd_hosts = [\"10.0.0.1:2379\", \"10.0.0.2:2379\"]"),
                    );
                }
                Dcs::Etcd3 { hosts: Vec::new() }
            }
        },
        _ => {
            if let Some(hosts) = hosts.filter(|h| !h.is_empty()) {
                reader.unwrap().error(
                    Diagnostic::error(hosts[0].span.clone(), "`etcd_hosts` is only used with dcs = \"etcd3\"")
                        .with_help("remove it, or set dcs = \"etcd3\""),
                );
            }
            Dcs::Consul
        }
    };
    // Consul hands out sessions no shorter than its `session_ttl_min`; Patroni asks for
    // ttl/2, so the default ttl is the smallest that a default Consul accepts.
    let default_ttl = match dcs {
        Dcs::Consul => 2 * defaults::CONSUL_SESSION_TTL_MIN_SECS,
        Dcs::Etcd3 { .. } => 10,
    };
    let session_ttl_min = reader
        .and_then(|r| r.string("consul_session_ttl_min"))
        .and_then(|text| match parse_seconds(&text.value) {
            Some(seconds) => Some(Spanned::new(seconds, text.span)),
            None => {
                reader.unwrap().error(
                    Diagnostic::error(
                        text.span,
                        format!("`consul_session_ttl_min` must be a duration such as \"10s\", found \"{}\"", text.value),
                    )
                    .with_help("write whole seconds, minutes or hours with no space: \"5s\", \"1m\", \"1h\""),
                );
                None
            }
        })
        .unwrap_or_else(|| Spanned::new(defaults::CONSUL_SESSION_TTL_MIN_SECS, at(reader)));
    let tags = reader.and_then(|r| r.scalar_map("tags")).unwrap_or_default().into_iter().map(|(k, (_, v))| (k, v.value)).collect();
    Patroni {
        dcs,
        dcs_span: dcs_choice.span,
        ttl: u32_or(reader, "ttl", 1, 3600, default_ttl),
        // A primary whose Postgres crashed is noticed at its next loop: up to loop_wait later.
        loop_wait: u32_or(reader, "loop_wait", 1, 3600, 1),
        retry_timeout: u32_or(reader, "retry_timeout", 1, 3600, 4),
        // 0 makes Patroni fail over when Postgres crashes instead of restarting it in place
        // for up to 5 minutes; with synchronous mode no acknowledged commit is lost.
        primary_start_timeout: u32_or(reader, "primary_start_timeout", 0, 86400, 0).value,
        maximum_lag_on_failover: reader
            .and_then(|r| r.integer("maximum_lag_on_failover", 0, i64::MAX))
            .map_or(1_048_576, |v| v.value as u64),
        consul_session_ttl_min: session_ttl_min,
        port: port_or(reader, "port", defaults::PATRONI_PORT),
        tags,
        kill_timeout: u32_or(reader, "kill_timeout", 1, 86400, defaults::NOMAD_MAX_KILL_TIMEOUT_SECS),
    }
}

/// "10s", "1m", "30" → seconds.
pub fn parse_seconds(text: &str) -> Option<u32> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let number: u32 = number.parse().ok()?;
    match unit {
        "" | "s" => Some(number),
        "m" => number.checked_mul(60),
        "h" => number.checked_mul(3600),
        _ => None,
    }
}

/// "10GiB", "500MB", "1T" → bytes. Binary and decimal units as Nomad takes them.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1000_u64.pow(2),
        "mib" => 1 << 20,
        "g" | "gb" => 1000_u64.pow(3),
        "gib" => 1 << 30,
        "t" | "tb" => 1000_u64.pow(4),
        "tib" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(factor)
}

fn size_or(reader: Option<&Reader<'_>>, name: &'static str, default: u64) -> Spanned<u64> {
    let Some(text) = reader.and_then(|r| r.string(name)) else {
        return Spanned::new(default, at(reader));
    };
    match parse_size(&text.value) {
        Some(bytes) => Spanned::new(bytes, text.span),
        None => {
            reader.unwrap().error(
                Diagnostic::error(text.span.clone(), format!("`{name}` must be a size such as \"10GiB\", found \"{}\"", text.value))
                    .with_help("units: B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)"),
            );
            Spanned::new(default, text.span)
        }
    }
}

fn storage(reader: Option<&Reader<'_>>, cluster: &Cluster) -> Storage {
    let kind = choice_or(reader, "type", &["csi", "host"], "csi");
    let storage = match kind.value {
        "host" => Storage::Host { volume_prefix: string_or(reader, "volume_prefix", &format!("{}-member-", cluster.name.value)).value },
        _ => Storage::Csi(CsiStorage {
            plugin_id: string_or(reader, "plugin_id", defaults::CSI_PLUGIN_ID).value,
            capacity_min: size_or(reader, "capacity_min", 10 << 30),
            capacity_max: size_or(reader, "capacity_max", 20 << 30),
            access_mode: choice_or(
                reader,
                "access_mode",
                &["single-node-writer", "single-node-single-writer", "single-node-multi-writer"],
                "single-node-writer",
            )
            .value
            .to_owned(),
            attachment_mode: choice_or(reader, "attachment_mode", &["file-system", "block-device"], "file-system").value.to_owned(),
            fs_type: string_or(reader, "fs_type", "ext4").value,
            mount_flags: strings(reader.and_then(|r| r.string_list("mount_flags"))).unwrap_or_else(|| vec!["noatime".into()]),
        }),
    };
    if let Some(reader) = reader {
        // Keys of the other storage type are unknown here on purpose, so a mix is reported.
        reader.finish_for(match kind.value {
            "host" => &["plugin_id", "capacity_min", "capacity_max", "access_mode", "attachment_mode", "fs_type", "mount_flags"],
            _ => &["volume_prefix"],
        });
    }
    storage
}

fn pgbouncer(reader: Option<&Reader<'_>>) -> PgBouncer {
    PgBouncer {
        enabled: bool_or(reader, "enabled", true),
        count: u32_or(reader, "count", 1, 100, 2).value,
        port: port_or(reader, "port", defaults::PGBOUNCER_PORT),
        pool_mode: choice_or(reader, "pool_mode", &["session", "transaction", "statement"], "transaction").value.to_owned(),
        default_pool_size: u32_or(reader, "default_pool_size", 1, 10_000, 20).value,
        max_client_conn: u32_or(reader, "max_client_conn", 1, 1_000_000, 1000).value,
        reserve_pool_size: u32_or(reader, "reserve_pool_size", 0, 10_000, 5).value,
        // Must outlast a failover, or clients see errors while the new primary is elected.
        query_wait_timeout: u32_or(reader, "query_wait_timeout", 0, 86400, 120),
        // After a failed server login PgBouncer waits this long before the next, even when a
        // reload has just pointed it at the new primary (measured with 1.18): its default of
        // 15 s would add up to 15 s to every failover, and 1 s added up to 1 s.
        server_login_retry_ms: reader
            .and_then(|r| r.duration_millis("server_login_retry", 0, 3_600_000))
            .map_or(defaults::PGBOUNCER_SERVER_LOGIN_RETRY_MS, |v| v.value),
        max_pause_ms: reader
            .and_then(|r| r.duration_millis("max_pause", 0, 86_400_000))
            .unwrap_or_else(|| Spanned::new(defaults::PGBOUNCER_MAX_PAUSE_MS, at(reader))),
        tls: bool_or(reader, "tls", false),
        cpu: u32_or(reader, "cpu", 20, 1_000_000, 200).value,
        memory_mb: u32_or(reader, "memory", 16, 10_000_000, 128).value,
    }
}

fn pgadmin(reader: Option<&Reader<'_>>) -> PgAdmin {
    PgAdmin {
        enabled: bool_or(reader, "enabled", true),
        port: port_or(reader, "port", defaults::PGADMIN_PORT),
        email: string_or(reader, "email", "admin@example.com"),
        image: string_or(reader, "image", defaults::PGADMIN_IMAGE).value,
        cpu: u32_or(reader, "cpu", 50, 1_000_000, 200).value,
        memory_mb: u32_or(reader, "memory", 128, 10_000_000, 512).value,
    }
}

fn backup(reader: Option<&Reader<'_>>) -> Backup {
    let repo_reader = reader.and_then(|r| r.block("repo"));
    let repo_kind = choice_or(repo_reader.as_ref(), "type", &["s3", "volume"], "volume");
    let repo = match repo_kind.value {
        "s3" => {
            let r = repo_reader.as_ref();
            let bucket = r.and_then(|r| r.string("bucket"));
            let bucket = match bucket {
                Some(bucket) => bucket,
                None => {
                    if let Some(r) = r {
                        r.error(
                            Diagnostic::error(repo_kind.span.clone(), "an s3 repo needs a `bucket`")
                                .with_help("add the bucket's name to `repo`, e.g. bucket = \"my-pg-backups\""),
                        );
                    }
                    Spanned::new(String::new(), repo_kind.span.clone())
                }
            };
            let (endpoint, port) = s3_endpoint(r, string_or(r, "endpoint", "s3.amazonaws.com"));
            Repo::S3 {
                endpoint,
                port,
                bucket,
                region: string_or(r, "region", "us-east-1").value,
                path: string_or(r, "path", "/pgbackrest").value,
                uri_style: choice_or(r, "uri_style", &["host", "path"], "host").value.to_owned(),
                verify_tls: bool_or(r, "verify_tls", true),
            }
        }
        _ => {
            let r = repo_reader.as_ref();
            let volume_type = choice_or(r, "volume_type", &["csi", "host"], "host");
            let kind = match volume_type.value {
                "csi" => VolumeKind::Csi,
                _ => VolumeKind::Host,
            };
            let shared_value = r.and_then(|r| r.boolean("shared"));
            let shared = shared_value.as_ref().is_some_and(|s| s.value);
            if let (VolumeKind::Host, Some(s), Some(r)) = (kind, shared_value.as_ref().filter(|s| s.value), r) {
                r.error(
                    Diagnostic::warning(
                        s.span.clone(),
                        "every member and backup job mounts this host volume: each node's copy of it must be the same storage",
                    )
                    .with_help(
                        "mount one shared filesystem (NFS, …) at the host volume's path on every node; a local directory per node splits the repository. Without shared = true, the volume is needed on one node only",
                    ),
                );
            }
            if let (VolumeKind::Csi, false, Some(r)) = (kind, shared, r) {
                // The repository host holds the volume and the backup jobs must mount the same
                // directory: only a host volume (one node, several allocations) gives that.
                r.error(
                    Diagnostic::error(
                        volume_type.span.clone(),
                        "a CSI volume cannot be the repository of the pgBackRest repository host: the backup jobs must mount the same volume beside it",
                    )
                    .with_help(
                        "use a host volume on one node (volume_type = \"host\"), an s3 repo, or, if the CSI volume is multi-writer storage every member may mount, declare it with shared = true",
                    ),
                );
            }
            Repo::Volume {
                source: string_or(r, "source", defaults::REPO_VOLUME).value,
                kind,
                path: string_or(r, "path", "/var/lib/pgbackrest").value,
                shared,
            }
        }
    };
    if let Some(r) = repo_reader {
        r.finish_for(match repo_kind.value {
            "s3" => &["source", "volume_type", "shared"],
            _ => &["endpoint", "bucket", "region", "uri_style", "verify_tls"],
        });
    }
    let schedule_reader = reader.and_then(|r| r.block("schedule"));
    let defaults_cron = [(BackupKind::Full, "0 1 * * 0"), (BackupKind::Diff, "0 1 * * 1-6"), (BackupKind::Incr, "0 */4 * * *")];
    let schedules = defaults_cron
        .iter()
        .filter_map(|(kind, default)| {
            let name = kind.name();
            let cron = match schedule_reader.as_ref().and_then(|s| s.string(name)) {
                Some(text) if text.value == "off" => return None,
                Some(text) => text,
                None => Spanned::new((*default).to_owned(), at(schedule_reader.as_ref())),
            };
            Some(Schedule { kind: *kind, cron })
        })
        .collect();
    if let Some(s) = schedule_reader {
        s.finish();
    }
    Backup {
        enabled: bool_or(reader, "enabled", true),
        repo,
        cipher: bool_or(reader, "cipher", true),
        retention_full: u32_or(reader, "retention_full", 1, 9_999_999, 2).value,
        retention_diff: u32_or(reader, "retention_diff", 1, 9_999_999, 7).value,
        schedules,
        time_zone: string_or(reader, "time_zone", "UTC").value,
        wal_archiving: bool_or(reader, "wal_archiving", true),
        from_standby: bool_or(reader, "from_standby", true),
        tls_port: port_or(reader, "tls_port", defaults::PGBACKREST_TLS_PORT),
    }
}

/// Splits an S3 endpoint into host and port. pgBackRest speaks HTTPS only to S3, so an
/// `http://` endpoint is refused here rather than failing at the first WAL push.
fn s3_endpoint(reader: Option<&Reader<'_>>, text: Spanned<String>) -> (String, Option<u16>) {
    let value = text.value.trim().trim_end_matches('/');
    if value.starts_with("http://") {
        if let Some(r) = reader {
            r.error(
                Diagnostic::error(
                    text.span.clone(),
                    format!("S3 endpoint \"{value}\" uses http, but pgBackRest reaches S3 over HTTPS only"),
                )
                .with_help("serve the store over TLS and write host[:port]; for a self-signed certificate also set verify_tls = false"),
            );
        }
    }
    let bare = value.trim_start_matches("https://").trim_start_matches("http://");
    match bare.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => match port.parse::<u16>() {
            Ok(port) if port > 0 => (host.to_owned(), Some(port)),
            _ => {
                if let Some(r) = reader {
                    r.error(
                        Diagnostic::error(text.span.clone(), format!("S3 endpoint \"{value}\" has no valid port after ':'"))
                            .with_help("write host or host:port, e.g. \"minio.service.consul:9000\""),
                    );
                }
                (host.to_owned(), None)
            }
        },
        _ => (bare.to_owned(), None),
    }
}

fn monitoring(reader: Option<&Reader<'_>>) -> Monitoring {
    Monitoring { postgres_exporter: bool_or(reader, "postgres_exporter", true), port: port_or(reader, "port", defaults::EXPORTER_PORT) }
}

fn secrets(reader: Option<&Reader<'_>>) -> Secrets {
    match choice_or(reader, "provider", &["nomad-variables", "vault"], "nomad-variables").value {
        "vault" => Secrets::Vault {
            mount: string_or(reader, "vault_mount", "secret").value,
            path_prefix: string_or(reader, "vault_path_prefix", "pgnomad").value,
            role: reader.and_then(|r| r.string("vault_role")).map(|r| r.value),
        },
        _ => Secrets::NomadVariables,
    }
}

fn restore(reader: &Reader<'_>) -> Option<Restore> {
    let Some(from) = reader.string("from") else {
        reader.error(
            Diagnostic::error(reader.span.clone(), "`restore` needs `from`: the cluster whose backups to restore")
                .with_help("name its stack file or its cluster, e.g. from = \"pgnomad.hcl\" or from = \"main\""),
        );
        return None;
    };
    let targets: Vec<(&str, Spanned<String>)> =
        ["to_time", "to_lsn", "to_xid"].into_iter().filter_map(|name| reader.string(name).map(|value| (name, value))).collect();
    if let [_, (second, value), ..] = targets.as_slice() {
        reader.error(
            Diagnostic::error(
                value.span.clone(),
                format!("`restore` takes one target, but `{}` and `{second}` are both set", targets[0].0),
            )
            .with_help("keep one of to_time, to_lsn and to_xid"),
        );
        return None;
    }
    let target = match targets.into_iter().next() {
        None => RestoreTarget::Latest,
        Some(("to_time", text)) => match parse_timestamp(&text.value) {
            Ok(micros) => RestoreTarget::Time { text, micros },
            Err(problem) => {
                reader.error(Diagnostic::error(text.span.clone(), format!("`to_time` {problem}")).with_help(
                    "write RFC 3339 with a zone, e.g. \"2026-12-01T10:42:07.250000Z\", or PostgreSQL's text, e.g. \"2026-12-01 10:42:07.25+00\"",
                ));
                return None;
            }
        },
        Some(("to_lsn", text)) => RestoreTarget::Lsn(text),
        Some((_, text)) => RestoreTarget::Xid(text),
    };
    Some(Restore { from, target, backup: reader.string("backup") })
}

/// RFC 3339 (`2026-12-01T10:42:07.250000Z`, `…+02:00`) or PostgreSQL's timestamptz text
/// (`2026-12-01 10:42:07.25+00`) → Unix microseconds. A zone is required: without one,
/// PostgreSQL would read the time in the server's time zone.
pub fn parse_timestamp(text: &str) -> Result<i64, String> {
    let bad = || format!("\"{text}\" is not a timestamp with a zone");
    let t = text.trim();
    let (date, rest) = t.split_at(t.find(['T', 't', ' ']).ok_or_else(bad)?);
    let rest = rest[1..].trim_start();
    let fields: Vec<&str> = date.split('-').collect();
    let [year, month, day] = fields.as_slice() else { return Err(bad()) };
    let number = |s: &str, len: usize| (s.len() == len && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse::<i64>().ok()).flatten();
    let (year, month, day) = (number(year, 4).ok_or_else(bad)?, number(month, 2).ok_or_else(bad)?, number(day, 2).ok_or_else(bad)?);
    let zone_at = rest.find(['Z', 'z', '+', '-']).ok_or_else(|| format!("\"{text}\" has no zone (Z, +00, +02:00, …)"))?;
    let (clock, zone) = rest.split_at(zone_at);
    let (clock, fraction) = clock.trim_end().split_once('.').unwrap_or((clock.trim_end(), ""));
    let parts: Vec<&str> = clock.split(':').collect();
    let [hour, minute, second] = parts.as_slice() else { return Err(bad()) };
    let (hour, minute, second) = (number(hour, 2).ok_or_else(bad)?, number(minute, 2).ok_or_else(bad)?, number(second, 2).ok_or_else(bad)?);
    if !fraction.bytes().all(|b| b.is_ascii_digit()) || fraction.len() > 9 {
        return Err(bad());
    }
    let micros_part: i64 = format!("{fraction:0<6}")[..6].parse().map_err(|_| bad())?;
    let offset_minutes = match zone {
        "Z" | "z" => 0,
        _ => {
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let digits = zone[1..].replace(':', "");
            let (h, m) = match digits.len() {
                2 => (number(&digits, 2).ok_or_else(bad)?, 0),
                4 => (number(&digits[..2], 2).ok_or_else(bad)?, number(&digits[2..], 2).ok_or_else(bad)?),
                _ => return Err(bad()),
            };
            sign * (h * 60 + m)
        }
    };
    let days_in_month =
        [31, if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month[month as usize - 1] || hour > 23 || minute > 59 || second > 60 {
        return Err(format!("\"{text}\" is not a valid date and time"));
    }
    // Days from 1970-01-01 to the civil date (Howard Hinnant's days_from_civil).
    let (y, m) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Ok(seconds * 1_000_000 + micros_part)
}

/// Unix microseconds → `2026-12-01 10:42:07.250000+00`, the text PostgreSQL and pgBackRest
/// read back exactly.
pub fn format_timestamp(micros: i64) -> String {
    let (seconds, fraction) = (micros.div_euclid(1_000_000), micros.rem_euclid(1_000_000));
    let (days, secs) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{fraction:06}+00", secs / 3600, secs % 3600 / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_in_rfc_3339_and_postgres_text_agree() {
        let utc = parse_timestamp("2026-12-01T10:42:07.250000Z").unwrap();
        assert_eq!(parse_timestamp("2026-12-01 10:42:07.25+00").unwrap(), utc);
        assert_eq!(parse_timestamp("2026-12-01T12:42:07.25+02:00").unwrap(), utc);
        assert_eq!(parse_timestamp("2026-12-01 05:12:07.25-0530").unwrap(), utc);
        assert_eq!(format_timestamp(utc), "2026-12-01 10:42:07.250000+00");
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(format_timestamp(parse_timestamp("2024-02-29T23:59:59.999999Z").unwrap()), "2024-02-29 23:59:59.999999+00");
        assert!(parse_timestamp("2026-12-01 10:42:07").unwrap_err().contains("has no zone"));
        assert!(parse_timestamp("2026-02-30T10:00:00Z").unwrap_err().contains("not a valid date"));
        assert!(parse_timestamp("yesterday").is_err());
    }

    #[test]
    fn parse_seconds_edges() {
        assert_eq!(parse_seconds("10s"), Some(10));
        assert_eq!(parse_seconds("30"), Some(30));
        assert_eq!(parse_seconds(" 5s "), Some(5));
        assert_eq!(parse_seconds("0s"), Some(0));
        assert_eq!(parse_seconds("1m"), Some(60));
        assert_eq!(parse_seconds("2h"), Some(7200));
        assert_eq!(parse_seconds(""), None);
        assert_eq!(parse_seconds("s"), None);
        assert_eq!(parse_seconds("5 s"), None);
        assert_eq!(parse_seconds("5 seconds"), None);
        assert_eq!(parse_seconds("5S"), None);
        assert_eq!(parse_seconds("5ms"), None);
        assert_eq!(parse_seconds("1.5s"), None);
        assert_eq!(parse_seconds("-5s"), None);
        assert_eq!(parse_seconds("1m30s"), None);
        assert_eq!(parse_seconds("4294967295"), Some(u32::MAX));
        assert_eq!(parse_seconds("4294967296"), None);
        assert_eq!(parse_seconds("2000000h"), None);
    }

    #[test]
    fn parse_size_edges() {
        assert_eq!(parse_size("10GiB"), Some(10 << 30));
        assert_eq!(parse_size("10GB"), Some(10_000_000_000));
        assert_eq!(parse_size("10gb"), Some(10_000_000_000));
        assert_eq!(parse_size("10 GB"), Some(10_000_000_000));
        assert_eq!(parse_size("500MB"), Some(500_000_000));
        assert_eq!(parse_size("500MiB"), Some(500 << 20));
        assert_eq!(parse_size("1T"), Some(1_000_000_000_000));
        assert_eq!(parse_size("1TiB"), Some(1 << 40));
        assert_eq!(parse_size("4k"), Some(4000));
        assert_eq!(parse_size("4KiB"), Some(4096));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("512B"), Some(512));
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("GiB"), None);
        assert_eq!(parse_size("10 gigs"), None);
        assert_eq!(parse_size("1.5GiB"), None);
        assert_eq!(parse_size("-1GiB"), None);
        assert_eq!(parse_size("10PB"), None);
        assert_eq!(parse_size("20000000TiB"), None);
    }
}
