//! What the operations read from Patroni's REST API, as one view of the cluster: `GET
//! /cluster` from any member, `GET /patroni` from each (its `pending_restart`, and on the
//! leader `replication`, the rows of `pg_stat_replication`), and `GET /config`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{OpsError, Target};

const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// One member as Patroni shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MemberView {
    pub name: String,
    /// `leader`, `sync_standby`, `replica`, `standby_leader`; `unknown` when the DCS does
    /// not list it.
    pub role: String,
    /// Patroni's state: `running`, `starting`, `stopped`, …
    pub state: String,
    pub timeline: Option<u64>,
    /// Bytes behind the leader, received or replayed, whichever is further behind (`None`:
    /// the leader, or Patroni does not know).
    pub lag: Option<u64>,
    /// `host:port` of its REST API.
    pub rest: String,
    /// Postgres' `host` and `port` as members and PgBouncer reach it.
    pub host: String,
    pub port: u16,
    /// Whether its REST API answered `GET /patroni`.
    pub reachable: bool,
    pub pending_restart: bool,
    /// `pg_stat_replication.state` of its walsender on the leader (`streaming`, `catchup`).
    pub replication: Option<String>,
    /// `pg_stat_replication.sync_state` (`sync`, `quorum`, `async`).
    pub sync_state: Option<String>,
}

impl MemberView {
    pub fn is_leader(&self) -> bool {
        self.role == "leader" || self.role == "standby_leader"
    }

    pub fn is_sync_standby(&self) -> bool {
        // The DCS's choice (Patroni's /sync key), which is what Patroni's switchover checks.
        self.role == "sync_standby"
    }

    pub fn is_streaming(&self) -> bool {
        self.replication.as_deref() == Some("streaming")
    }

    pub fn pg_address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The cluster as the operations see it at one moment.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct ClusterView {
    pub members: Vec<MemberView>,
    /// Patroni's dynamic configuration, `postgresql.parameters` (values as strings).
    pub parameters: BTreeMap<String, String>,
    pub synchronous_mode: bool,
}

impl ClusterView {
    pub fn leader(&self) -> Option<&MemberView> {
        self.members.iter().find(|m| m.is_leader())
    }

    pub fn member(&self, name: &str) -> Option<&MemberView> {
        self.members.iter().find(|m| m.name == name)
    }

    pub fn replicas(&self) -> impl Iterator<Item = &MemberView> {
        self.members.iter().filter(|m| !m.is_leader())
    }
}

#[derive(Debug, Deserialize)]
struct ClusterAnswer {
    #[serde(default)]
    members: Vec<ClusterMember>,
}

#[derive(Debug, Deserialize)]
struct ClusterMember {
    name: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    api_url: Option<String>,
    #[serde(default)]
    host: String,
    #[serde(default)]
    port: u16,
    #[serde(default)]
    timeline: Option<u64>,
    #[serde(default)]
    lag: Option<Value>,
}

#[derive(Debug, Deserialize, Default)]
struct PatroniAnswer {
    /// `master` (`primary` from Patroni 3.0.3 on) once Postgres is out of recovery: Patroni
    /// reads it from `pg_is_in_recovery()` on each request.
    #[serde(default)]
    role: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    pending_restart: bool,
    #[serde(default)]
    xlog: Xlog,
    #[serde(default)]
    replication: Vec<ReplicationRow>,
}

/// WAL positions: `location` on the leader, `received_location` / `replayed_location` on a
/// replica.
#[derive(Debug, Deserialize, Default)]
struct Xlog {
    location: Option<u64>,
    replayed_location: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct ReplicationRow {
    #[serde(default)]
    application_name: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    sync_state: String,
}

/// `http://10.0.0.1:8008/patroni` → `10.0.0.1:8008`.
fn rest_address(api_url: &str) -> Option<String> {
    let rest = api_url.split_once("://").map_or(api_url, |(_, r)| r);
    rest.split('/').next().filter(|a| !a.is_empty()).map(str::to_owned)
}

/// A JSON value of `/config` as postgresql.conf writes it.
fn parameter_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "on".into(),
        Value::Bool(false) => "off".into(),
        other => other.to_string(),
    }
}

/// `GET path` on the first seed that answers 200.
fn first_answer(target: &dyn Target, seeds: &[String], path: &str) -> Result<(String, String), OpsError> {
    let mut last = String::from("no member's REST API is known");
    for seed in seeds {
        match target.rest(seed, "GET", path, None, READ_TIMEOUT) {
            Ok((200, body)) => return Ok((seed.clone(), body)),
            Ok((code, body)) => last = format!("{seed} answered {code}: {}", body.trim()),
            Err(error) => last = format!("{seed}: {error}"),
        }
    }
    Err(OpsError::Unreachable(format!("no Patroni REST API answers GET {path} ({last}); is the cluster up?")))
}

/// Whether the member at `rest` runs Postgres out of recovery, so it takes writes. Patroni's
/// `GET /primary` cannot tell: it answers 200 as soon as the member holds the leader key,
/// before its promotion has ended.
pub fn takes_writes(target: &dyn Target, rest: &str, timeout: Duration) -> bool {
    target.rest(rest, "GET", "/patroni", None, timeout).is_ok_and(|(code, body)| answer_takes_writes(code, &body))
}

/// [`takes_writes`] of an answer to `GET /patroni` already in hand.
pub fn answer_takes_writes(code: u16, body: &str) -> bool {
    code == 200
        && serde_json::from_str::<PatroniAnswer>(body)
            .is_ok_and(|p| matches!(p.role.as_str(), "master" | "primary") && p.state == "running")
}

/// Reads the whole view: `/cluster` once, `/patroni` on every member, `/config` once.
pub fn observe(target: &dyn Target) -> Result<ClusterView, OpsError> {
    let seeds = target.seeds()?;
    let (seed, body) = first_answer(target, &seeds, "/cluster")?;
    let answer: ClusterAnswer =
        serde_json::from_str(&body).map_err(|e| OpsError::Unreachable(format!("{seed}: GET /cluster is not Patroni's answer: {e}")))?;
    let mut members = Vec::new();
    let mut positions: Vec<(Option<u64>, Option<u64>)> = Vec::new();
    for m in answer.members {
        let rest = m.api_url.as_deref().and_then(rest_address).or_else(|| target.rest_address_of(&m.name)).unwrap_or_default();
        let patroni: Option<PatroniAnswer> = match target.rest(&rest, "GET", "/patroni", None, READ_TIMEOUT) {
            // 503 is a member whose Postgres is not running: its body is still the status.
            Ok((200 | 503, body)) => serde_json::from_str(&body).ok(),
            _ => None,
        };
        positions.push(patroni.as_ref().map(|p| (p.xlog.location, p.xlog.replayed_location)).unwrap_or_default());
        members.push(MemberView {
            name: m.name,
            role: m.role,
            state: m.state,
            timeline: m.timeline,
            lag: m.lag.as_ref().and_then(Value::as_u64),
            rest,
            host: m.host,
            port: m.port,
            reachable: patroni.is_some(),
            pending_restart: patroni.as_ref().is_some_and(|p| p.pending_restart),
            replication: None,
            sync_state: None,
        });
    }
    // Patroni's lag counts WAL received; a replica that has not replayed it is behind too (it
    // would replay it all before it could take over).
    let leader_at = members.iter().zip(&positions).find(|(m, _)| m.is_leader()).and_then(|(_, (at, _))| *at);
    for (m, (_, replayed)) in members.iter_mut().zip(&positions) {
        if let (false, Some(at), Some(replayed), Some(lag)) = (m.is_leader(), leader_at, replayed, m.lag) {
            m.lag = Some(lag.max(at.saturating_sub(*replayed)));
        } else if !m.is_leader() && replayed.is_none() {
            // No /patroni answer: what it has replayed is unknown, and so is how far behind it is.
            m.lag = None;
        }
    }
    // pg_stat_replication on the leader: which replicas stream, which are synchronous.
    if let Some(leader) = members.iter().find(|m| m.is_leader()).map(|m| m.rest.clone()) {
        if let Ok((200, body)) = target.rest(&leader, "GET", "/patroni", None, READ_TIMEOUT) {
            if let Ok(p) = serde_json::from_str::<PatroniAnswer>(&body) {
                for row in p.replication {
                    if let Some(replica) = members.iter_mut().find(|r| r.name == row.application_name) {
                        replica.replication = Some(row.state);
                        replica.sync_state = Some(row.sync_state);
                    }
                }
            }
        }
    }
    let (_, config) = first_answer(target, &seeds, "/config")?;
    let config: Value = serde_json::from_str(&config).unwrap_or_default();
    let parameters = config["postgresql"]["parameters"]
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), parameter_text(v))).collect())
        .unwrap_or_default();
    let synchronous_mode = config["synchronous_mode"].as_bool().unwrap_or(false);
    Ok(ClusterView { members, parameters, synchronous_mode })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_addresses_come_from_api_urls() {
        assert_eq!(rest_address("http://10.0.0.1:8008/patroni").as_deref(), Some("10.0.0.1:8008"));
        assert_eq!(rest_address("https://m0.example:8443/patroni").as_deref(), Some("m0.example:8443"));
        assert_eq!(rest_address("").as_deref(), None);
    }

    #[test]
    fn config_values_read_as_postgresql_conf_writes_them() {
        assert_eq!(parameter_text(&serde_json::json!("250")), "250");
        assert_eq!(parameter_text(&serde_json::json!(250)), "250");
        assert_eq!(parameter_text(&serde_json::json!(true)), "on");
    }
}
