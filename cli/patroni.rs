//! What pgnomad asks Patroni's REST API: `GET /cluster`, the members as the DCS sees them,
//! and the unsafe endpoints (`POST /switchover`, …), which Patroni answers only with the
//! credentials of `restapi.authentication`. Builders and models without I/O, plus calls over
//! `transport::Transport`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::nomad::api::{Method, Request};
use crate::transport::{decode, execute, Transport, TransportError};

/// The user name of Patroni's REST API (`restapi.authentication.username`); its password is
/// the generated secret [`REST_PASSWORD_KEY`] of the postgres job.
pub const REST_USERNAME: &str = "pgnomad";
/// The secret key, in the postgres job's variable, of the REST API's password.
pub const REST_PASSWORD_KEY: &str = "patroni_rest_password";

/// Credentials for Patroni's unsafe endpoints (POST, PUT, PATCH, DELETE). Patroni checks
/// them with HTTP basic authentication (`check_auth_header` in `patroni/api.py`); its GET
/// endpoints (`/health`, `/primary`, `/cluster`, …) need none.
#[derive(Clone, PartialEq, Eq)]
pub struct RestAuth {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RestAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestAuth").field("username", &self.username).finish_non_exhaustive()
    }
}

impl RestAuth {
    /// pgnomad's user with the password from the job's secrets.
    pub fn new(password: impl Into<String>) -> RestAuth {
        RestAuth { username: REST_USERNAME.to_owned(), password: password.into() }
    }

    /// The value of the `Authorization` header.
    pub fn header_value(&self) -> String {
        format!("Basic {}", base64(format!("{}:{}", self.username, self.password).as_bytes()))
    }
}

/// Standard base64 with padding (RFC 4648), for the basic-auth header.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn cluster() -> Request {
    Request::get("/cluster")
}

/// `POST /switchover` away from `leader` (to `candidate`, or Patroni's choice). Unsafe:
/// send it over a transport with [`RestAuth`] (`HttpTransport::patroni_with_auth`).
pub fn switchover(leader: &str, candidate: Option<&str>) -> Request {
    let mut body = serde_json::json!({ "leader": leader });
    if let Some(candidate) = candidate {
        body["candidate"] = Value::from(candidate);
    }
    Request::new(Method::Post, "/switchover").with_body(body)
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
    fn basic_auth_header_is_rfc_7617() {
        // RFC 7617 section 2's example, and every padding length.
        let auth = RestAuth { username: "Aladdin".into(), password: "open sesame".into() };
        assert_eq!(auth.header_value(), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert_eq!([base64(b"f"), base64(b"fo"), base64(b"foo"), base64(b"foob")], ["Zg==", "Zm8=", "Zm9v", "Zm9vYg=="]);
        assert!(!format!("{auth:?}").contains("sesame"), "Debug shows no password");
    }

    #[test]
    fn switchover_posts_the_leader_and_candidate() {
        let request = switchover("member-0", Some("member-2"));
        assert_eq!((request.method, request.path.as_str()), (Method::Post, "/switchover"));
        assert_eq!(request.body, Some(serde_json::json!({"leader": "member-0", "candidate": "member-2"})));
        assert_eq!(switchover("member-1", None).body, Some(serde_json::json!({"leader": "member-1"})));
    }

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
