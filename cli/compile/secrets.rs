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
pub fn repo_keys(facts: &Facts) -> Vec<String> {
    names(repo_secrets(facts))
}
pub fn backup_keys(facts: &Facts) -> Vec<String> {
    names(backup_secrets(facts))
}
