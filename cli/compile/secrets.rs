//! Which secrets each job reads. Values are never known here: `run` generates them (or
//! the operator provides them) and stores them where the jobs read them.

use serde::Serialize;

use crate::config::Facts;

/// How a secret comes to exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// A random password pgnomad generates (CSPRNG, 32 alphanumeric characters).
    Password,
    /// Part of the pgBackRest TLS certificate set pgnomad generates.
    Certificate,
    /// Only the operator can provide it (cloud credentials, a Consul token).
    Operator,
    /// A restored cluster's copy of a secret of its restore source (`restore { from }`),
    /// which `run` reads from the source's variables.
    Source,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretKey {
    pub key: String,
    pub origin: Origin,
    pub description: String,
}

fn key(key: &str, origin: Origin, description: &str) -> SecretKey {
    SecretKey { key: key.to_owned(), origin, description: description.to_owned() }
}

pub fn user_password_key(user: &str) -> String {
    format!("password_{user}")
}

/// Every secret of the postgres job, with what it is for.
pub fn postgres_secrets(facts: &Facts) -> Vec<SecretKey> {
    let mut keys = vec![
        key("superuser_password", Origin::Password, "password of the `postgres` superuser (Patroni's own connections)"),
        key("replication_password", Origin::Password, "password of the `replicator` role that replicas stream with"),
        key("pgbouncer_auth_password", Origin::Password, "password of `pgbouncer_auth`, the role PgBouncer runs auth_query as"),
        key("rewind_password", Origin::Password, "password of `pgnomad_rewind`, the role pg_rewind reads the primary as"),
        key(
            crate::patroni::REST_PASSWORD_KEY,
            Origin::Password,
            "password of `pgnomad` on Patroni's REST API (its unsafe endpoints: switchover, restart, config)",
        ),
    ];
    if facts.exporter {
        keys.push(key(
            "monitor_password",
            Origin::Password,
            "password of `pgnomad_monitor`, the pg_monitor role postgres_exporter logs in as",
        ));
    }
    for user in &facts.users {
        keys.push(key(&user_password_key(user), Origin::Password, &format!("password of application user `{user}`")));
    }
    if facts.dcs == "consul" {
        keys.push(key("consul_token", Origin::Operator, "Consul ACL token for Patroni (empty when Consul runs without ACLs)"));
    }
    keys.extend(backup_common(facts, "tls_server"));
    if facts.client_tls.postgres {
        keys.extend(sql_tls_keys());
    }
    if facts.backup.repo_host {
        // What a member reaches the repository host with (the CN its TLS server admits).
        keys.push(key("tls_client_crt", Origin::Certificate, "pgBackRest TLS client certificate (to the repository host)"));
        keys.push(key("tls_client_key", Origin::Certificate, "pgBackRest TLS client private key (to the repository host)"));
    }
    keys
}

/// The keys a clone (`restore { from = "<cluster>" }` on Nomad) reads its source's
/// repository with: the source's cipher pass, and the source's CA and client certificate,
/// which the source's repository host admits. `run` copies them from the source's
/// variables; none for a cluster restored in place or not restored.
pub fn restore_source_secrets(facts: &Facts) -> Vec<SecretKey> {
    let mut keys = Vec::new();
    if !facts.backup.enabled || facts.restore.as_ref().is_none_or(|r| r.in_place) {
        return keys;
    }
    if facts.backup.cipher {
        keys.push(key("restore_cipher_pass", Origin::Source, "the restore source's repo_cipher_pass, to read its repository"));
    }
    if facts.backup.repo_host {
        keys.push(key("restore_tls_ca_crt", Origin::Source, "the restore source's pgBackRest CA certificate"));
        keys.push(key(
            "restore_tls_client_crt",
            Origin::Source,
            "the restore source's pgBackRest client certificate (to its repository host)",
        ));
        keys.push(key("restore_tls_client_key", Origin::Source, "the restore source's pgBackRest client private key"));
    }
    keys
}

/// Which of the source's secrets a clone's key is a copy of: the restore keys above, and
/// the passwords of the roles the restored data holds (the source's, so that replication,
/// pg_rewind, PgBouncer's auth_query and the applications log in as before). `None` for
/// keys a clone has of its own (Patroni's REST password, the TLS set, the repository's
/// cipher pass).
pub fn source_key_of(key: &str) -> Option<&str> {
    match key {
        "restore_cipher_pass" => Some("repo_cipher_pass"),
        "restore_tls_ca_crt" => Some("tls_ca_crt"),
        "restore_tls_client_crt" => Some("tls_client_crt"),
        "restore_tls_client_key" => Some("tls_client_key"),
        "superuser_password" | "replication_password" | "pgbouncer_auth_password" | "rewind_password" | "monitor_password" => Some(key),
        _ if key.starts_with("password_") => Some(key),
        _ => None,
    }
}

/// The repository host's: the repository's passphrase and its TLS server certificate.
pub fn repo_secrets(facts: &Facts) -> Vec<SecretKey> {
    backup_common(facts, "tls_server")
}

fn backup_common(facts: &Facts, side: &str) -> Vec<SecretKey> {
    let mut keys = Vec::new();
    if !facts.backup.enabled {
        return keys;
    }
    if facts.backup.cipher {
        keys.push(key("repo_cipher_pass", Origin::Password, "passphrase that encrypts the pgBackRest repository"));
    }
    if facts.backup.repo_type == "s3" {
        keys.push(key("s3_key", Origin::Operator, "S3 access key ID of the backup bucket"));
        keys.push(key("s3_key_secret", Origin::Operator, "S3 secret access key of the backup bucket"));
    }
    keys.push(key("tls_ca_crt", Origin::Certificate, "CA certificate of pgBackRest's TLS connections"));
    keys.push(key(&format!("{side}_crt"), Origin::Certificate, "pgBackRest TLS certificate"));
    keys.push(key(&format!("{side}_key"), Origin::Certificate, "pgBackRest TLS private key"));
    keys
}

/// The certificate Postgres and PgBouncer present to SQL clients.
fn sql_tls_keys() -> Vec<SecretKey> {
    vec![
        key("tls_sql_crt", Origin::Certificate, "TLS certificate Postgres and PgBouncer present to SQL clients"),
        key("tls_sql_key", Origin::Certificate, "TLS private key of Postgres and PgBouncer for SQL clients"),
    ]
}

pub fn pgbouncer_secrets(facts: &Facts) -> Vec<SecretKey> {
    let mut keys =
        vec![key("pgbouncer_auth_password", Origin::Password, "password of `pgbouncer_auth`, the role PgBouncer runs auth_query as")];
    if facts.client_tls.pgbouncer {
        keys.extend(sql_tls_keys());
    }
    if facts.client_tls.postgres {
        keys.push(key("tls_ca_crt", Origin::Certificate, "pgnomad's CA certificate, which PgBouncer checks Postgres' certificate with"));
    }
    keys
}

pub fn pgadmin_secrets(_facts: &Facts) -> Vec<SecretKey> {
    vec![key("pgadmin_password", Origin::Password, "password of pgAdmin's admin login")]
}

pub fn backup_secrets(facts: &Facts) -> Vec<SecretKey> {
    backup_common(facts, "tls_client")
}

fn names(keys: Vec<SecretKey>) -> Vec<String> {
    keys.into_iter().map(|k| k.key).collect()
}

pub fn postgres_keys(facts: &Facts) -> Vec<String> {
    names(postgres_secrets(facts))
}
pub fn pgbouncer_keys(facts: &Facts) -> Vec<String> {
    names(pgbouncer_secrets(facts))
}
pub fn pgadmin_keys(facts: &Facts) -> Vec<String> {
    names(pgadmin_secrets(facts))
}
pub fn restore_source_keys(facts: &Facts) -> Vec<String> {
    names(restore_source_secrets(facts))
}
pub fn repo_keys(facts: &Facts) -> Vec<String> {
    names(repo_secrets(facts))
}
pub fn backup_keys(facts: &Facts) -> Vec<String> {
    names(backup_secrets(facts))
}
