//! Patroni's REST API, spoken over a plain TCP socket: the few calls `dev` needs do not
//! justify an async client, and the supervisor polls it every 100 ms.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One HTTP/1.0 request; the status code and the body.
pub fn request(address: &str, method: &str, path: &str, body: Option<&str>, timeout: Duration) -> std::io::Result<(u16, String)> {
    let socket: SocketAddr = address
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{address} resolves to nothing")))?;
    let mut stream = TcpStream::connect_timeout(&socket, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response");
    let status = response.split_whitespace().nth(1).and_then(|code| code.parse().ok()).ok_or_else(bad)?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// `GET /primary` answers 200 only on the leader while its Postgres runs as primary.
pub fn is_primary(rest_address: &str) -> bool {
    matches!(request(rest_address, "GET", "/primary", None, Duration::from_millis(500)), Ok((200, _)))
}

/// `GET /cluster`: every member as the DCS and their REST APIs see it.
pub fn cluster(rest_address: &str) -> Option<Cluster> {
    match request(rest_address, "GET", "/cluster", None, Duration::from_secs(2)) {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Cluster {
    #[serde(default)]
    pub members: Vec<ClusterMember>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ClusterMember {
    pub name: String,
    /// "leader", "sync_standby" or "replica" (Patroni 3.0 spelling).
    pub role: String,
    /// "running", "streaming", "starting", "stopped", …
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub timeline: Option<u64>,
    /// Bytes behind the leader, or "unknown".
    #[serde(default)]
    pub lag: Option<serde_json::Value>,
}

impl Cluster {
    pub fn leader(&self) -> Option<&ClusterMember> {
        self.members.iter().find(|m| m.role == "leader" || m.role == "standby_leader")
    }
}
