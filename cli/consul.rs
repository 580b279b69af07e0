//! What pgnomad reads from Consul: service health, the catalog, the leader. Request builders
//! and models without I/O, plus a client over `transport::Transport`.
//!
//! A thin module instead of the rs-consul crate: pgnomad needs three read endpoints, and
//! going through `transport` keeps one TLS setup, one retry policy, one request counter and the
//! same blocking-query code for Nomad and Consul.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::nomad::api::{encode_segment, NomadError, Request};
use crate::transport::{decode, get_blocking, Transport, TransportError};

/// `GET /v1/health/service/:service`, only instances whose checks all pass when `passing_only`.
pub fn health_service(service: &str, passing_only: bool) -> Request {
    let request = Request::get(format!("/v1/health/service/{}", encode_segment(service)));
    if passing_only {
        request.with_query("passing", "true")
    } else {
        request
    }
}

pub fn catalog_services() -> Request {
    Request::get("/v1/catalog/services")
}

pub fn status_leader() -> Request {
    Request::get("/v1/status/leader")
}

pub mod check_status {
    pub const PASSING: &str = "passing";
    pub const WARNING: &str = "warning";
    pub const CRITICAL: &str = "critical";
}

/// One instance of a service with its node and checks (`structs.CheckServiceNode`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceEntry {
    pub node: ConsulNode,
    pub service: AgentService,
    #[serde(deserialize_with = "null_as_default")]
    pub checks: Vec<HealthCheck>,
}

/// Consul (Go) writes an empty list or map as `null` (a service registered without tags).
fn null_as_default<'de, D: serde::Deserializer<'de>, T: Default + Deserialize<'de>>(deserializer: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

impl ServiceEntry {
    pub fn is_passing(&self) -> bool {
        self.checks.iter().all(|check| check.status == check_status::PASSING)
    }

    /// Where clients reach the instance: the service address, or the node's when empty.
    pub fn address(&self) -> String {
        let host = if self.service.address.is_empty() { &self.node.address } else { &self.service.address };
        format!("{host}:{}", self.service.port)
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ConsulNode {
    #[serde(rename = "ID")]
    pub id: String,
    pub node: String,
    pub address: String,
    pub datacenter: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentService {
    #[serde(rename = "ID")]
    pub id: String,
    pub service: String,
    #[serde(deserialize_with = "null_as_default")]
    pub tags: Vec<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub meta: BTreeMap<String, String>,
    pub address: String,
    pub port: u16,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct HealthCheck {
    pub node: String,
    #[serde(rename = "CheckID")]
    pub check_id: String,
    pub name: String,
    pub status: String,
    pub output: String,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    pub service_name: String,
}

/// Consul's API over a [`Transport`] (build it with `HttpTransport::consul`).
pub struct ConsulClient<T> {
    transport: T,
}

impl<T: Transport> ConsulClient<T> {
    pub fn new(transport: T) -> Self {
        ConsulClient { transport }
    }

    pub fn transport(&self) -> &T {
        &self.transport
    }

    async fn call<R: serde::de::DeserializeOwned>(&self, request: Request) -> Result<R, TransportError> {
        let response = self.transport.send(&request, None).await?;
        if !(200..300).contains(&response.status) {
            return Err(consul_error(response.status, &response.body).into());
        }
        decode(&request, &response)
    }

    pub async fn health_service(&self, service: &str, passing_only: bool) -> Result<Vec<ServiceEntry>, TransportError> {
        self.call(health_service(service, passing_only)).await
    }

    /// Blocking form: returns when the service's health changes past `index` or after `wait`.
    pub async fn health_service_blocking(
        &self,
        service: &str,
        passing_only: bool,
        index: u64,
        wait: Duration,
    ) -> Result<(Vec<ServiceEntry>, u64), TransportError> {
        get_blocking(&self.transport, health_service(service, passing_only), index, wait).await.map_err(|error| match error {
            TransportError::Api(api) => consul_error(api.status, api.body.as_bytes()).into(),
            other => other,
        })
    }

    /// Service name → tags.
    pub async fn catalog_services(&self) -> Result<BTreeMap<String, Vec<String>>, TransportError> {
        self.call(catalog_services()).await
    }

    /// The Consul leader's address; empty when there is none.
    pub async fn status_leader(&self) -> Result<String, TransportError> {
        self.call(status_leader()).await
    }
}

/// Consul's errors are plain text too; the hints point at Consul's settings, not Nomad's.
fn consul_error(status: u16, body: &[u8]) -> NomadError {
    let hint = match status {
        403 => Some("check CONSUL_HTTP_TOKEN (or --consul-token): the token needs service:read and node:read".to_string()),
        500 if String::from_utf8_lossy(body).contains("No cluster leader") => {
            Some("the Consul servers have no leader; wait, then check `consul operator raft list-peers`".to_string())
        }
        _ => None,
    };
    NomadError { status, body: String::from_utf8_lossy(body).into_owned(), hint }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_entries_decode_and_report_passing() {
        let body = serde_json::json!([{
            "Node": {"ID": "n1", "Node": "node-1", "Address": "10.0.0.5", "Datacenter": "dc1"},
            "Service": {"ID": "_nomad-task-1", "Service": "pg", "Tags": ["primary"], "Address": "", "Port": 25432, "Meta": null},
            "Checks": [{"CheckID": "c1", "Name": "patroni", "Status": "passing", "ServiceName": "pg"}]
        }]);
        let mut body = body;
        body[0]["Service"]["Meta"] = serde_json::json!({});
        let entries: Vec<ServiceEntry> = serde_json::from_value(body).unwrap();
        assert!(entries[0].is_passing());
        assert_eq!(entries[0].address(), "10.0.0.5:25432");
        assert_eq!(health_service("pg", true).query, vec![("passing".to_string(), "true".to_string())]);
    }
}
