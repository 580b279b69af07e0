//! A plain HTTP request description shared by the Nomad and Consul builders. No I/O here:
//! `transport` turns it into bytes on the wire, the tests' doubles read it back.

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Put,
    Post,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: Method,
    /// Already percent-encoded path, e.g. `/v1/job/pg%20x/plan`.
    pub path: String,
    pub query: Vec<(String, String)>,
    pub body: Option<Value>,
}

impl Request {
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        Request { method, path: path.into(), query: Vec::new(), body: None }
    }

    pub fn get(path: impl Into<String>) -> Self {
        Self::new(Method::Get, path)
    }

    pub fn with_query(mut self, key: &str, value: impl Into<String>) -> Self {
        self.query.push((key.to_string(), value.into()));
        self
    }

    pub fn with_body(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }

    pub fn has_query(&self, key: &str) -> bool {
        self.query.iter().any(|(k, _)| k == key)
    }

    /// Reads that can be repeated without changing anything on the server; only these are
    /// retried after the request may have reached the server.
    pub fn is_idempotent(&self) -> bool {
        self.method == Method::Get
    }
}

/// What came back, before decoding: the transport fills it, the typed client decodes it.
#[derive(Debug, Clone, Default)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    pub meta: QueryMeta,
}

/// The blocking-query headers (`X-Nomad-Index`, `X-Nomad-KnownLeader`, `X-Nomad-LastContact`;
/// Consul sends the same under `X-Consul-*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryMeta {
    pub index: Option<u64>,
    pub known_leader: Option<bool>,
    pub last_contact_ms: Option<u64>,
}

/// Percent-encodes one path segment (RFC 3986 unreserved characters stay as they are).
pub fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Encodes a slash-separated path such as a variable path, keeping the slashes.
pub fn encode_path(path: &str) -> String {
    path.split('/').map(encode_segment).collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded_and_slashes_kept_in_paths() {
        assert_eq!(encode_segment("pg main/x"), "pg%20main%2Fx");
        assert_eq!(encode_path("nomad/jobs/pg main"), "nomad/jobs/pg%20main");
    }
}
