//! Patroni's REST API, spoken over a plain TCP socket: the few calls `dev` needs do not
//! justify an async client, and the supervisor polls it every 100 ms.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::patroni::RestAuth;

/// One HTTP/1.0 request; the status code and the body. `auth` is what Patroni's unsafe
/// endpoints (POST, PATCH, …) ask for: without it they answer 401.
pub fn request(
    address: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    auth: Option<&RestAuth>,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let socket: SocketAddr = address
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{address} resolves to nothing")))?;
    let mut stream = TcpStream::connect_timeout(&socket, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let body = body.unwrap_or("");
    let authorization = auth.map(|a| format!("Authorization: {}\r\n", a.header_value())).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {address}\r\n{authorization}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    // The timeout bounds the whole answer, not each read: a body that trickles in a byte at a
    // time, or never ends, gives up at the deadline (and past 16 MiB).
    let deadline = std::time::Instant::now() + timeout;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let timed_out =
            || std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{method} {path}: no whole answer within {timeout:?}"));
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        stream.set_read_timeout(Some(left))?;
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return Err(timed_out()),
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        if bytes.len() + n > 16 << 20 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{method} {path}: the answer is larger than 16 MiB")));
        }
        bytes.extend_from_slice(&chunk[..n]);
    }
    let response = String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{method} {path}: the answer is not UTF-8")))?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response");
    let status = response.split_whitespace().nth(1).and_then(|code| code.parse().ok()).ok_or_else(bad)?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// `GET /primary` answers 200 only on the leader while its Postgres runs as primary.
pub fn is_primary(rest_address: &str) -> bool {
    matches!(request(rest_address, "GET", "/primary", None, None, Duration::from_millis(500)), Ok((200, _)))
}

/// `GET /cluster`: every member as the DCS and their REST APIs see it.
pub fn cluster(rest_address: &str) -> Option<Cluster> {
    match request(rest_address, "GET", "/cluster", None, None, Duration::from_secs(2)) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_returns_the_status_and_body_of_a_plain_http_answer() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            // The whole request, however many reads it takes: answering and closing with bytes
            // unread resets the connection (the client then saw ECONNRESET, not the answer).
            let mut request = Vec::new();
            let mut chunk = [0u8; 1024];
            while !String::from_utf8_lossy(&request).ends_with("{\"leader\":\"member-0\"}") {
                let n = stream.read(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&chunk[..n]);
            }
            stream.write_all(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n\r\n{\"role\": \"replica\"}").unwrap();
            String::from_utf8_lossy(&request).into_owned()
        });
        let auth = RestAuth { username: "pgnomad".into(), password: "secret".into() };
        let (status, body) =
            request(&address, "POST", "/switchover", Some("{\"leader\":\"member-0\"}"), Some(&auth), Duration::from_secs(5)).unwrap();
        assert_eq!((status, body.as_str()), (503, "{\"role\": \"replica\"}"));
        let sent = server.join().unwrap();
        assert!(sent.starts_with("POST /switchover HTTP/1.0\r\n") && sent.ends_with("\r\n\r\n{\"leader\":\"member-0\"}"), "{sent}");
        // base64("pgnomad:secret")
        assert!(sent.contains("\r\nAuthorization: Basic cGdub21hZDpzZWNyZXQ=\r\n"), "{sent}");
    }

    #[test]
    fn cluster_reads_patroni_3_0_members_and_finds_the_leader() {
        // As Patroni 3.0.2 answers GET /cluster.
        let body = r#"{"members": [
            {"name": "member-0", "role": "sync_standby", "state": "running", "api_url": "http://127.0.0.1:44001/patroni", "host": "127.0.0.1", "port": 37855, "timeline": 2, "lag": 0},
            {"name": "member-1", "role": "leader", "state": "running", "api_url": "http://127.0.0.1:36931/patroni", "host": "127.0.0.1", "port": 33525, "timeline": 2},
            {"name": "member-2", "role": "replica", "state": "stopped", "api_url": "http://127.0.0.1:45647/patroni", "host": "127.0.0.1", "port": 39545, "lag": "unknown"}
        ], "scope": "main"}"#;
        let cluster: Cluster = serde_json::from_str(body).unwrap();
        assert_eq!(cluster.leader().map(|m| m.name.as_str()), Some("member-1"));
        assert_eq!(cluster.members[2].lag, Some(serde_json::json!("unknown")));
        assert_eq!(cluster.members[2].timeline, None);
    }
}
