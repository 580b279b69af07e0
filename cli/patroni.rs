//! What pgnomad reads from Patroni's REST API: `GET /cluster`, the members as the DCS sees
//! them. A builder and a model without I/O, plus one call over `transport::Transport`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::nomad::api::Request;
use crate::transport::{decode, execute, Transport, TransportError};

pub fn cluster() -> Request {
    Request::get("/cluster")
}

/// Patroni's `/cluster` answer.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct PatroniCluster {
    pub scope: String,
    pub members: Vec<PatroniMember>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct PatroniMember {
    pub name: String,
    /// `leader`, `replica`, `sync_standby`, `standby_leader`.
    pub role: String,
    /// `running`, `streaming`, `starting`, `stopped`, …
    pub state: String,
    pub host: String,
    pub port: u16,
    pub timeline: Option<u64>,
    /// Bytes behind the leader; Patroni writes `"unknown"` when it cannot tell.
    lag: Option<Value>,
}

impl PatroniMember {
    /// Replication lag in bytes; `None` for the leader or when Patroni does not know.
    pub fn lag_bytes(&self) -> Option<u64> {
        self.lag.as_ref().and_then(Value::as_u64)
    }
}

pub async fn read_cluster<T: Transport>(transport: &T) -> Result<PatroniCluster, TransportError> {
    let request = cluster();
    let response = execute(transport, &request, None).await?;
    decode(&request, &response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_answer_decodes_with_unknown_lag() {
        let body = serde_json::json!({
            "members": [
                {"name": "member-0", "role": "leader", "state": "running", "api_url": "http://10.0.0.1:8008/patroni", "host": "10.0.0.1", "port": 5432, "timeline": 3},
                {"name": "member-1", "role": "sync_standby", "state": "streaming", "host": "10.0.0.2", "port": 5432, "timeline": 3, "lag": 0},
                {"name": "member-2", "role": "replica", "state": "starting", "host": "10.0.0.3", "port": 5432, "lag": "unknown"}
            ],
            "scope": "main"
        });
        let cluster: PatroniCluster = serde_json::from_value(body).unwrap();
        assert_eq!(cluster.members[0].lag_bytes(), None);
        assert_eq!(cluster.members[1].lag_bytes(), Some(0));
        assert_eq!(cluster.members[2].lag_bytes(), None);
        assert_eq!(cluster.members[2].timeline, None);
    }
}
