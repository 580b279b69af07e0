//! The secret variables of a cluster: what exists, what is missing, and the writes that add
//! the missing keys without changing a single existing value.
//!
//! Some keys are shared between jobs (`pgbouncer_auth_password` in the postgres and pgbouncer
//! variables, the pgBackRest TLS set, `repo_cipher_pass`, the S3 keys): values are pooled by
//! key across every existing variable of the cluster, so a key added to one job gets the value
//! another job already has.

use std::collections::BTreeMap;

use crate::compile::{Origin, SecretSpec};
use crate::nomad::api::Variable;
use crate::settings::OperatorSecrets;
use crate::transport::{NomadClient, Transport};

use super::{DeployError, Problem, SecretAction, SecretPlan};

/// Keys of the pgBackRest TLS set: all generated together from one CA, so either all the keys
/// a stack needs exist or none does.
const TLS_KEYS: &[&str] =
    &["tls_ca_crt", "tls_server_crt", "tls_server_key", "tls_client_crt", "tls_client_key", "tls_sql_crt", "tls_sql_key"];

/// Where pgnomad keeps its own copy of the TLS set. Written before any job's variable, so a
/// run interrupted between two variables can finish the set on the next run (the CA's key is
/// not kept, so a lost certificate could not be signed again). Outside `nomad/jobs/`, so no
/// workload identity can read it.
pub fn tls_store_path(cluster: &str) -> String {
    format!("pgnomad/{cluster}/tls")
}

/// The TLS keys the stack's variables need, in a stable order.
fn needed_tls_keys(specs: &[SecretSpec]) -> Vec<&'static str> {
    TLS_KEYS
        .iter()
        .copied()
        .filter(|k| specs.iter().any(|s| s.provider == "nomad-variables" && s.keys.iter().any(|x| x.key == *k)))
        .collect()
}

/// The cluster's variables as they are on the server, by path.
#[derive(Debug, Clone, Default)]
pub struct ExistingSecrets {
    pub by_path: BTreeMap<String, Variable>,
    /// The variable at [`tls_store_path`], if the stack uses TLS and it exists.
    pub tls_store: Option<Variable>,
    /// A restored cluster's: its source's values of the keys it copies
    /// ([`compile::secrets::source_key_of`]), under the clone's key names.
    pub from_source: BTreeMap<String, String>,
    /// The restore source's name, when the stack restores from another cluster.
    pub source: Option<String>,
}

impl ExistingSecrets {
    /// Lists `nomad/jobs/<cluster>-…` once, then reads the variables the stack uses, and
    /// with a restore `source` the source's postgres variable and TLS set.
    pub async fn read<N: Transport>(
        nomad: &NomadClient<N>,
        cluster: &str,
        specs: &[SecretSpec],
        source: Option<&str>,
    ) -> Result<Self, DeployError> {
        let mut by_path = BTreeMap::new();
        let nomad_specs: Vec<&SecretSpec> = specs.iter().filter(|s| s.provider == "nomad-variables").collect();
        if nomad_specs.is_empty() {
            return Ok(ExistingSecrets { by_path, tls_store: None, from_source: BTreeMap::new(), source: source.map(str::to_owned) });
        }
        let from_source = match source {
            Some(source) => read_source(nomad, source, specs).await?,
            None => BTreeMap::new(),
        };
        let store_path = tls_store_path(cluster);
        let tls_store = if needed_tls_keys(specs).is_empty() {
            None
        } else {
            nomad.read_variable(&store_path).await.map_err(DeployError::api(format!("reading variable {store_path}")))?
        };
        let listed = nomad
            .list_variables(&format!("nomad/jobs/{cluster}-"))
            .await
            .map_err(DeployError::api("listing the cluster's secret variables"))?;
        for spec in nomad_specs {
            if !listed.iter().any(|v| v.path == spec.path) {
                continue;
            }
            let variable = nomad.read_variable(&spec.path).await.map_err(DeployError::api(format!("reading variable {}", spec.path)))?;
            if let Some(variable) = variable {
                by_path.insert(spec.path.clone(), variable);
            }
        }
        Ok(ExistingSecrets { by_path, tls_store, from_source, source: source.map(str::to_owned) })
    }

    /// Values by key across every variable; the first path (in stack order) wins when two
    /// disagree, and the disagreement is returned as a problem.
    pub fn pool(&self, specs: &[SecretSpec]) -> (BTreeMap<String, String>, Vec<Problem>) {
        let mut pool: BTreeMap<String, (String, String)> = BTreeMap::new();
        let mut problems = Vec::new();
        for spec in specs {
            let Some(variable) = self.by_path.get(&spec.path) else { continue };
            for (key, value) in &variable.items {
                match pool.get(key) {
                    None => {
                        pool.insert(key.clone(), (value.clone(), spec.path.clone()));
                    }
                    Some((kept, first_path)) if kept != value && spec.keys.iter().any(|k| &k.key == key) => {
                        problems.push(Problem::InconsistentSecret { key: key.clone(), paths: vec![first_path.clone(), spec.path.clone()] });
                    }
                    Some(_) => {}
                }
            }
        }
        let mut pool: BTreeMap<String, String> = pool.into_iter().map(|(k, (v, _))| (k, v)).collect();
        // A clone's own value, once written, wins over its source's.
        for (key, value) in &self.from_source {
            pool.entry(key.clone()).or_insert_with(|| value.clone());
        }
        if let Some(store) = &self.tls_store {
            for (key, value) in store.items.iter().filter(|(k, _)| TLS_KEYS.contains(&k.as_str())) {
                pool.entry(key.clone()).or_insert_with(|| value.clone());
            }
        }
        (pool, problems)
    }
}

/// The source's values of the keys a clone copies, under the clone's key names: role
/// passwords and the cipher pass from `nomad/jobs/<source>-postgres`, the CA and client
/// certificate from the source's TLS store.
async fn read_source<N: Transport>(
    nomad: &NomadClient<N>,
    source: &str,
    specs: &[SecretSpec],
) -> Result<BTreeMap<String, String>, DeployError> {
    let postgres_path = format!("nomad/jobs/{}", crate::config::runtime::names::postgres_job(source));
    let store_path = tls_store_path(source);
    let mut values = BTreeMap::new();
    let postgres = nomad
        .read_variable(&postgres_path)
        .await
        .map_err(DeployError::api(format!("reading the restore source's variable {postgres_path}")))?;
    let store =
        nomad.read_variable(&store_path).await.map_err(DeployError::api(format!("reading the restore source's variable {store_path}")))?;
    for key in specs.iter().flat_map(|s| &s.keys) {
        let Some(source_key) = crate::compile::secrets::source_key_of(&key.key) else { continue };
        let variable = if source_path_of(source, &key.key) == store_path { store.as_ref() } else { postgres.as_ref() };
        if let Some(value) = variable.and_then(|v| v.items.get(source_key)) {
            values.insert(key.key.clone(), value.clone());
        }
    }
    Ok(values)
}

/// Which of its source's variables a clone's key is read from.
fn source_path_of(source: &str, key: &str) -> String {
    if key.starts_with("restore_tls_") {
        tls_store_path(source)
    } else {
        format!("nomad/jobs/{}", crate::config::runtime::names::postgres_job(source))
    }
}

/// What each variable needs, from what exists and what the operator gave.
pub fn secret_plans(
    cluster: &str,
    specs: &[SecretSpec],
    existing: &ExistingSecrets,
    operator: &OperatorSecrets,
) -> (Vec<SecretPlan>, Vec<Problem>) {
    let (pool, mut problems) = existing.pool(specs);
    let mut plans = Vec::new();
    let needed = needed_tls_keys(specs);
    if !needed.is_empty() {
        let store = existing.tls_store.as_ref();
        let keys_to_add: Vec<String> =
            needed.iter().filter(|k| store.is_none_or(|v| !v.items.contains_key(**k))).map(|k| k.to_string()).collect();
        let action = match (store, keys_to_add.is_empty()) {
            (None, _) => SecretAction::Create,
            (Some(_), true) => SecretAction::UpToDate,
            (Some(_), false) => SecretAction::Extend,
        };
        plans.push(SecretPlan {
            job: "pgnomad".into(),
            path: tls_store_path(cluster),
            action,
            keys_to_add,
            missing_operator_keys: Vec::new(),
            modify_index: store.map(|v| v.modify_index).unwrap_or(0),
        });
    }
    for spec in specs {
        if spec.provider != "nomad-variables" {
            plans.push(SecretPlan {
                job: spec.job.clone(),
                path: spec.path.clone(),
                action: SecretAction::External,
                keys_to_add: spec.keys.iter().map(|k| k.key.clone()).collect(),
                missing_operator_keys: Vec::new(),
                modify_index: 0,
            });
            continue;
        }
        let variable = existing.by_path.get(&spec.path);
        let keys_to_add: Vec<String> =
            spec.keys.iter().filter(|k| variable.is_none_or(|v| !v.items.contains_key(&k.key))).map(|k| k.key.clone()).collect();
        let missing_operator_keys: Vec<String> = spec
            .keys
            .iter()
            .filter(|k| k.origin == Origin::Operator && keys_to_add.contains(&k.key))
            .filter(|k| !pool.contains_key(&k.key) && operator.value(&k.key).is_none() && k.key != "consul_token")
            .map(|k| k.key.clone())
            .collect();
        // A clone that would generate a password its restored data does not have, or lacks
        // what reads its source's repository, would never come up: refuse before writing.
        if let Some(source) = &existing.source {
            for key in spec.keys.iter().filter(|k| keys_to_add.contains(&k.key) && !pool.contains_key(&k.key)) {
                let named = problems.iter().any(|p| matches!(p, Problem::MissingSourceKey { key: k, .. } if *k == key.key));
                if let (Some(source_key), false) = (crate::compile::secrets::source_key_of(&key.key), named) {
                    problems.push(Problem::MissingSourceKey {
                        key: key.key.clone(),
                        source: source.clone(),
                        path: source_path_of(source, &key.key),
                        source_key: source_key.to_owned(),
                    });
                }
            }
        }
        for key in &missing_operator_keys {
            problems.push(Problem::MissingOperatorKey {
                job: spec.job.clone(),
                key: key.clone(),
                how: OperatorSecrets::how_to_provide(key).to_string(),
            });
        }
        let action = match (variable, keys_to_add.is_empty()) {
            (None, _) => SecretAction::Create,
            (Some(_), true) => SecretAction::UpToDate,
            (Some(_), false) => SecretAction::Extend,
        };
        plans.push(SecretPlan {
            job: spec.job.clone(),
            path: spec.path.clone(),
            action,
            keys_to_add,
            missing_operator_keys,
            modify_index: variable.map(|v| v.modify_index).unwrap_or(0),
        });
    }
    // A TLS set can only be completed by the CA that made it, and its key is not kept.
    let present: Vec<String> = needed.iter().filter(|k| pool.contains_key(**k)).map(|k| k.to_string()).collect();
    if !present.is_empty() && present.len() < needed.len() {
        let missing = needed.iter().filter(|k| !pool.contains_key(**k)).map(|k| k.to_string()).collect();
        problems.push(Problem::IncompleteTlsSet { present, missing });
    }
    (plans, problems)
}
