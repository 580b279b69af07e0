//! Secret values: generated with the operating system's CSPRNG, never rendered, printed or
//! put on a command line. `compile::secrets` says which keys each job reads; this module
//! makes the values for the keys pgnomad can make.

use std::collections::BTreeMap;

use rand::distr::{Alphanumeric, SampleString};
use rand::TryRngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

use crate::compile::{Origin, SecretKey};

/// The client certificate's CN, which each member's pgBackRest TLS server admits
/// (`tls-server-auth=pgbackrest-client=<stanza>` in packs/postgres/pgbackrest.conf).
pub const BACKUP_CLIENT_CN: &str = "pgbackrest-client";

/// A random password: 32 alphanumeric characters (about 190 bits), safe unquoted in YAML,
/// ini files, SQL literals and URLs.
pub fn password() -> String {
    Alphanumeric.sample_string(&mut rand::rngs::OsRng.unwrap_err(), 32)
}

/// pgnomad's TLS material, all PEM, from one CA: pgBackRest's server certificate for the
/// members and client certificate for the backup jobs, and the certificate Postgres and
/// PgBouncer present to SQL clients (with `tls = true`).
#[derive(Clone)]
pub struct TlsSet {
    pub ca_crt: String,
    pub server_crt: String,
    pub server_key: String,
    pub client_crt: String,
    pub client_key: String,
    pub sql_crt: String,
    pub sql_key: String,
}

impl std::fmt::Debug for TlsSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsSet { .. }")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("generating pgBackRest's TLS certificates failed: {0}")]
pub struct TlsError(#[from] rcgen::Error);

/// Generates a CA and the certificates it signs. `server_names` are the DNS names the
/// backup jobs use to reach the members (the server certificate's SANs); `sql_names` the
/// names (or addresses) SQL clients reach Postgres and PgBouncer at.
pub fn tls_set(cluster: &str, server_names: &[String], sql_names: &[String]) -> Result<TlsSet, TlsError> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(DnType::CommonName, format!("pgnomad {cluster} pgBackRest CA"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut server_params = CertificateParams::new(server_names.to_vec())?;
    // pgBackRest 2.45 matches the host only against DNS names, so an address (pgnomad dev
    // reaches members at 127.0.0.1) is also put in as a DNS name.
    for name in server_names.iter().filter(|n| n.parse::<std::net::IpAddr>().is_ok()) {
        server_params.subject_alt_names.push(SanType::DnsName(name.as_str().try_into()?));
    }
    server_params.distinguished_name.push(DnType::CommonName, format!("{cluster}-pgbackrest"));
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate()?;
    let server = server_params.signed_by(&server_key, &ca)?;

    let mut client_params = CertificateParams::new(Vec::<String>::new())?;
    client_params.distinguished_name.push(DnType::CommonName, BACKUP_CLIENT_CN);
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate()?;
    let client = client_params.signed_by(&client_key, &ca)?;

    // Addresses become IP SANs, which libpq's verify-full matches (PostgreSQL 14+).
    let mut sql_params = CertificateParams::new(sql_names.to_vec())?;
    sql_params.distinguished_name.push(DnType::CommonName, format!("{cluster}-postgres"));
    sql_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let sql_key = KeyPair::generate()?;
    let sql = sql_params.signed_by(&sql_key, &ca)?;

    Ok(TlsSet {
        ca_crt: ca.pem(),
        server_crt: server.pem(),
        server_key: server_key.serialize_pem(),
        client_crt: client.pem(),
        client_key: client_key.serialize_pem(),
        sql_crt: sql.pem(),
        sql_key: sql_key.serialize_pem(),
    })
}

/// The names SQL clients reach Postgres and PgBouncer at on Nomad: their Consul services'
/// DNS names.
pub fn sql_server_names(cluster: &str) -> Vec<String> {
    use crate::config::runtime::names;
    [names::primary_service(cluster), names::replica_service(cluster), names::postgres_service(cluster), names::pgbouncer_service(cluster)]
        .into_iter()
        .map(|service| format!("{service}.service.consul"))
        .collect()
}

/// Values for `keys`: what `existing` already holds is kept as it is; missing passwords and
/// certificates are generated (certificates from `tls`, so that every job gets the same
/// set); missing operator-provided keys are returned by name, for the caller to report.
pub fn fill(keys: &[SecretKey], existing: &BTreeMap<String, String>, tls: &TlsSet) -> (BTreeMap<String, String>, Vec<String>) {
    let mut values = BTreeMap::new();
    let mut missing = Vec::new();
    for key in keys {
        if let Some(value) = existing.get(&key.key) {
            values.insert(key.key.clone(), value.clone());
            continue;
        }
        let value = match key.origin {
            Origin::Password => password(),
            Origin::Certificate => match key.key.as_str() {
                "tls_ca_crt" => tls.ca_crt.clone(),
                "tls_server_crt" => tls.server_crt.clone(),
                "tls_server_key" => tls.server_key.clone(),
                "tls_client_crt" => tls.client_crt.clone(),
                "tls_client_key" => tls.client_key.clone(),
                "tls_sql_crt" => tls.sql_crt.clone(),
                "tls_sql_key" => tls.sql_key.clone(),
                other => unreachable!("no certificate is called {other}"),
            },
            Origin::Operator | Origin::Source => {
                missing.push(key.key.clone());
                continue;
            }
        };
        values.insert(key.key.clone(), value);
    }
    (values, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_long_alphanumeric_and_differ() {
        let (a, b) = (password(), password());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn fill_keeps_existing_values_and_reports_operator_keys() {
        let keys = vec![
            SecretKey { key: "superuser_password".into(), origin: Origin::Password, description: String::new() },
            SecretKey { key: "replication_password".into(), origin: Origin::Password, description: String::new() },
            SecretKey { key: "s3_key".into(), origin: Origin::Operator, description: String::new() },
            SecretKey { key: "tls_ca_crt".into(), origin: Origin::Certificate, description: String::new() },
        ];
        let existing = BTreeMap::from([("superuser_password".to_owned(), "kept".to_owned())]);
        let tls = tls_set("main", &["member-0.main-pgbackrest.service.consul".into()], &sql_server_names("main")).unwrap();
        let (values, missing) = fill(&keys, &existing, &tls);
        assert_eq!(values["superuser_password"], "kept");
        assert_eq!(values["replication_password"].len(), 32);
        assert!(values["tls_ca_crt"].starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(missing, ["s3_key"]);
    }
}
