//! The one module that owns reqwest: TLS, tokens, namespace/region, timeouts, retries, and
//! blocking queries. Business logic talks to [`NomadClient`] (and `consul::ConsulClient`), which
//! are generic over the small [`Transport`] trait so tests can put anything behind them.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::nomad::api::{self, Method, NomadError, QueryMeta, RegisterOptions, Request, RequestKind, Response};
use crate::settings::{ConsulSettings, NomadSettings, TlsSettings};

/// Sends one request and returns whatever status came back; only failures to get an answer at
/// all are errors here. Non-2xx statuses become [`NomadError`]s in the typed clients.
pub trait Transport: Send + Sync {
    fn send(&self, request: &Request, timeout: Option<Duration>) -> impl Future<Output = Result<Response, TransportError>> + Send;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Nomad,
    Consul,
    /// A Patroni member's REST API (found through Consul; no token).
    Patroni,
}

impl Service {
    fn address_hint(self) -> &'static str {
        match self {
            Service::Nomad => "check NOMAD_ADDR (or --address) and that a Nomad agent listens there",
            Service::Consul => "check CONSUL_HTTP_ADDR (or --consul-address) and that a Consul agent listens there",
            Service::Patroni => "the address comes from Consul's <cluster>-patroni service; check that the member runs and its REST API is reachable from here",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot connect to {address}: {message}\nhint: {hint}")]
    Connect { address: String, message: String, hint: &'static str },
    #[error("{method} {path} got no answer within {after:?}")]
    Timeout { method: &'static str, path: String, after: Duration },
    #[error("{method} {path} failed: {message}")]
    Connection { method: &'static str, path: String, message: String },
    #[error(transparent)]
    Api(#[from] NomadError),
    #[error("cannot decode the answer to {method} {path}: {message}")]
    Decode { method: &'static str, path: String, message: String },
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
}

impl TransportError {
    /// The server's error, when the failure is one.
    pub fn api(&self) -> Option<&NomadError> {
        match self {
            TransportError::Api(error) => Some(error),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.api().is_some_and(NomadError::is_not_found)
    }
}

/// Bounded exponential backoff with full jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 4, base_delay: Duration::from_millis(200), max_delay: Duration::from_secs(5) }
    }
}

impl RetryPolicy {
    pub fn none() -> Self {
        RetryPolicy { max_attempts: 1, ..Self::default() }
    }

    /// Delay before attempt `attempt + 1`: uniform in [cap/2, cap], cap = base·2^(attempt-1).
    pub fn delay(&self, attempt: u32) -> Duration {
        use rand::Rng;
        let cap = self.base_delay.saturating_mul(1 << attempt.saturating_sub(1).min(16)).min(self.max_delay);
        let half = cap / 2;
        half + Duration::from_nanos(rand::rng().random_range(0..=half.as_nanos().min(u64::MAX as u128) as u64))
    }
}

/// The largest answer read; Nomad's biggest (a job list with meta, a plan diff) are far smaller.
pub const MAX_BODY_BYTES: usize = 64 << 20;

/// reqwest behind [`Transport`]: one per service (Nomad or Consul).
pub struct HttpTransport {
    client: reqwest::Client,
    base_url: String,
    service: Service,
    token: Option<String>,
    /// Patroni's REST API credentials (`restapi.authentication`), sent as basic auth.
    patroni_auth: Option<crate::patroni::RestAuth>,
    /// `namespace`/`region` added to every request that does not set them itself.
    default_query: Vec<(String, String)>,
    retry: RetryPolicy,
    request_timeout: Duration,
    requests_sent: AtomicU64,
}

impl HttpTransport {
    pub fn nomad(settings: &NomadSettings) -> Result<Self, TransportError> {
        let (client, base_url) = build_client(&settings.address, &settings.tls)?;
        let mut default_query = Vec::new();
        if let Some(namespace) = &settings.namespace {
            default_query.push(("namespace".to_string(), namespace.clone()));
        }
        if let Some(region) = &settings.region {
            default_query.push(("region".to_string(), region.clone()));
        }
        Ok(Self::with_parts(client, base_url, Service::Nomad, settings.token.clone(), default_query))
    }

    pub fn consul(settings: &ConsulSettings) -> Result<Self, TransportError> {
        let (client, base_url) = build_client(&settings.address, &settings.tls)?;
        Ok(Self::with_parts(client, base_url, Service::Consul, settings.token.clone(), Vec::new()))
    }

    /// A Patroni member's REST API: short timeouts and no retries, since the caller moves on
    /// to the next member instead.
    pub fn patroni(address: &str) -> Result<Self, TransportError> {
        let (client, base_url) = build_client(address, &TlsSettings::default())?;
        Ok(Self::with_parts(client, base_url, Service::Patroni, None, Vec::new())
            .with_retry(RetryPolicy::none())
            .with_request_timeout(Duration::from_secs(2)))
    }

    /// A Patroni member's REST API with the credentials its unsafe endpoints (POST
    /// /switchover, /restart, PATCH /config, …) ask for.
    pub fn patroni_with_auth(address: &str, auth: &crate::patroni::RestAuth) -> Result<Self, TransportError> {
        let mut transport = Self::patroni(address)?;
        transport.patroni_auth = Some(auth.clone());
        Ok(transport)
    }

    fn with_parts(
        client: reqwest::Client,
        base_url: String,
        service: Service,
        token: Option<String>,
        default_query: Vec<(String, String)>,
    ) -> Self {
        HttpTransport {
            client,
            base_url,
            service,
            token,
            patroni_auth: None,
            default_query,
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(30),
            requests_sent: AtomicU64::new(0),
        }
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Timeout of a request that is not a blocking query.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// HTTP requests actually sent, retries included (for benchmarks: requests per `run`).
    pub fn requests_sent(&self) -> u64 {
        self.requests_sent.load(Ordering::Relaxed)
    }

    async fn send_once(&self, request: &Request, timeout: Duration) -> Result<Response, TransportError> {
        let method = match request.method {
            Method::Get => reqwest::Method::GET,
            Method::Put => reqwest::Method::PUT,
            Method::Post => reqwest::Method::POST,
            Method::Delete => reqwest::Method::DELETE,
        };
        let mut query = request.query.clone();
        for (key, value) in &self.default_query {
            if !request.has_query(key) {
                query.push((key.clone(), value.clone()));
            }
        }
        let mut builder = self.client.request(method, format!("{}{}", self.base_url, request.path)).timeout(timeout);
        if !query.is_empty() {
            builder = builder.query(&query);
        }
        if let Some(token) = &self.token {
            let header = match self.service {
                Service::Nomad => "X-Nomad-Token",
                Service::Consul | Service::Patroni => "X-Consul-Token",
            };
            builder = builder.header(header, token);
        }
        if let Some(auth) = &self.patroni_auth {
            builder = builder.header(reqwest::header::AUTHORIZATION, auth.header_value());
        }
        if let Some(body) = &request.body {
            builder = builder.json(body);
        }
        let response = builder.send().await.map_err(|e| self.classify(request, timeout, e))?;
        let status = response.status().as_u16();
        let meta = read_meta(response.headers(), self.service);
        // The whole body is held in memory: an answer without end (a wrong address, a broken
        // proxy) is cut off rather than read until memory runs out.
        let mut response = response;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.classify(request, timeout, e))? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(TransportError::Decode {
                    method: request.method.as_str(),
                    path: request.path.clone(),
                    message: format!("the answer is larger than {} MiB; {}", MAX_BODY_BYTES >> 20, self.service.address_hint()),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Response { status, body, meta })
    }

    fn classify(&self, request: &Request, timeout: Duration, error: reqwest::Error) -> TransportError {
        let method = request.method.as_str();
        if error.is_connect() {
            TransportError::Connect { address: self.base_url.clone(), message: error_chain(&error), hint: self.service.address_hint() }
        } else if error.is_timeout() {
            TransportError::Timeout { method, path: request.path.clone(), after: timeout }
        } else {
            TransportError::Connection { method, path: request.path.clone(), message: error_chain(&error) }
        }
    }
}

impl Transport for HttpTransport {
    async fn send(&self, request: &Request, timeout: Option<Duration>) -> Result<Response, TransportError> {
        let timeout = timeout.unwrap_or(self.request_timeout);
        let mut attempt = 1;
        loop {
            self.requests_sent.fetch_add(1, Ordering::Relaxed);
            let result = self.send_once(request, timeout).await;
            let worth_retrying = match &result {
                // A connect error means nothing was sent: safe for writes too.
                Err(TransportError::Connect { .. }) => true,
                // After the request may have reached the server only reads are repeated;
                // a write could apply twice (a second job version, a second dispatch).
                Err(TransportError::Timeout { .. } | TransportError::Connection { .. }) => request.is_idempotent(),
                Ok(response) => response.status >= 500 && request.is_idempotent(),
                Err(_) => false,
            };
            if !worth_retrying || attempt >= self.retry.max_attempts {
                return result;
            }
            tokio::time::sleep(self.retry.delay(attempt)).await;
            attempt += 1;
        }
    }
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn read_meta(headers: &reqwest::header::HeaderMap, service: Service) -> QueryMeta {
    let prefix = match service {
        Service::Nomad => "x-nomad-",
        Service::Consul | Service::Patroni => "x-consul-",
    };
    let header = |name: &str| headers.get(format!("{prefix}{name}")).and_then(|v| v.to_str().ok()).map(str::to_string);
    QueryMeta {
        index: header("index").and_then(|v| v.parse().ok()),
        known_leader: header("knownleader").and_then(|v| v.parse().ok()),
        last_contact_ms: header("lastcontact").and_then(|v| v.parse().ok()),
    }
}

fn build_client(address: &str, tls: &TlsSettings) -> Result<(reqwest::Client, String), TransportError> {
    let setup = |what: &str, e: &dyn std::fmt::Display| TransportError::Setup(format!("{what}: {e}"));
    let mut builder = reqwest::Client::builder().use_rustls_tls().connect_timeout(Duration::from_secs(5));
    let mut ca_files = Vec::new();
    if let Some(ca_cert) = &tls.ca_cert {
        ca_files.push(ca_cert.clone());
    }
    if let Some(ca_path) = &tls.ca_path {
        let entries = std::fs::read_dir(ca_path).map_err(|e| setup(&format!("reading {}", ca_path.display()), &e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|ext| ext == "pem" || ext == "crt") {
                ca_files.push(path);
            }
        }
    }
    for file in &ca_files {
        for certificate in read_certificates(file)? {
            builder = builder.add_root_certificate(certificate);
        }
    }
    if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
        let mut pem = std::fs::read(cert).map_err(|e| setup(&format!("reading {}", cert.display()), &e))?;
        pem.push(b'\n');
        pem.extend(std::fs::read(key).map_err(|e| setup(&format!("reading {}", key.display()), &e))?);
        let identity = reqwest::Identity::from_pem(&pem).map_err(|e| setup("client certificate and key", &e))?;
        builder = builder.identity(identity);
    }
    if tls.skip_verify {
        builder = builder.danger_accept_invalid_certs(true);
    }
    let mut base_url = address.trim_end_matches('/').to_string();
    if let Some(server_name) = &tls.server_name {
        // Verify the certificate against server_name while still connecting to `address`:
        // talk to https://server_name:port and pin that name to address's socket addresses.
        let (scheme, authority) = base_url.split_once("://").unwrap_or(("https", &base_url));
        let port = authority.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).unwrap_or(4646);
        let addrs: Vec<std::net::SocketAddr> =
            std::net::ToSocketAddrs::to_socket_addrs(authority).map_err(|e| setup(&format!("resolving {authority}"), &e))?.collect();
        builder = builder.resolve_to_addrs(server_name, &addrs);
        base_url = format!("{scheme}://{server_name}:{port}");
    }
    let client = builder.build().map_err(|e| setup("building the client", &e))?;
    Ok((client, base_url))
}

fn read_certificates(file: &Path) -> Result<Vec<reqwest::Certificate>, TransportError> {
    let pem = std::fs::read(file).map_err(|e| TransportError::Setup(format!("reading {}: {e}", file.display())))?;
    let certificates =
        reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| TransportError::Setup(format!("{}: {e}", file.display())))?;
    if certificates.is_empty() {
        return Err(TransportError::Setup(format!(
            "{}: no PEM certificate in it (a CA file holds -----BEGIN CERTIFICATE----- blocks)",
            file.display()
        )));
    }
    Ok(certificates)
}

/// Sends `request` and turns a non-2xx answer into a [`NomadError`].
pub async fn execute<T: Transport>(transport: &T, request: &Request, timeout: Option<Duration>) -> Result<Response, TransportError> {
    let response = transport.send(request, timeout).await?;
    if (200..300).contains(&response.status) {
        Ok(response)
    } else {
        let body = String::from_utf8_lossy(&response.body).into_owned();
        Err(NomadError::new(response.status, body, RequestKind::of(request)).into())
    }
}

pub fn decode<R: DeserializeOwned>(request: &Request, response: &Response) -> Result<R, TransportError> {
    serde_json::from_slice(&response.body).map_err(|e| TransportError::Decode {
        method: request.method.as_str(),
        path: request.path.clone(),
        message: e.to_string(),
    })
}

/// Go duration text for `?wait=`.
fn go_duration(wait: Duration) -> String {
    if wait.subsec_millis() == 0 {
        format!("{}s", wait.as_secs())
    } else {
        format!("{}ms", wait.as_millis())
    }
}

/// A blocking query: returns when the server's index for the answer passes `index` or after
/// about `wait`. The HTTP timeout is longer than the wait (the server adds up to wait/16 jitter).
/// Returns the decoded body and the index to pass next time.
pub async fn get_blocking<T: Transport, R: DeserializeOwned>(
    transport: &T,
    request: Request,
    index: u64,
    wait: Duration,
) -> Result<(R, u64), TransportError> {
    let request = request.with_query("index", index.to_string()).with_query("wait", go_duration(wait));
    let timeout = wait + wait / 16 + Duration::from_secs(5);
    let response = execute(transport, &request, Some(timeout)).await?;
    let value = decode(&request, &response)?;
    Ok((value, response.meta.index.unwrap_or(index)))
}

/// Nomad's API, one method per endpoint pgnomad uses, each built on `nomad::api`'s builders.
pub struct NomadClient<T = HttpTransport> {
    transport: T,
}

impl NomadClient<HttpTransport> {
    pub fn from_settings(settings: &NomadSettings) -> Result<Self, TransportError> {
        Ok(NomadClient::new(HttpTransport::nomad(settings)?))
    }
}

impl<T: Transport> NomadClient<T> {
    pub fn new(transport: T) -> Self {
        NomadClient { transport }
    }

    pub fn transport(&self) -> &T {
        &self.transport
    }

    async fn call<R: DeserializeOwned>(&self, request: Request) -> Result<R, TransportError> {
        let response = execute(&self.transport, &request, None).await?;
        decode(&request, &response)
    }

    /// Like `call`, but a 404 is `None` rather than an error.
    async fn call_optional<R: DeserializeOwned>(&self, request: Request) -> Result<Option<R>, TransportError> {
        match self.call(request).await {
            Ok(value) => Ok(Some(value)),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }

    pub async fn get_blocking<R: DeserializeOwned>(
        &self,
        request: Request,
        index: u64,
        wait: Duration,
    ) -> Result<(R, u64), TransportError> {
        get_blocking(&self.transport, request, index, wait).await
    }

    pub async fn register_job(&self, job: &Value, options: RegisterOptions) -> Result<api::JobRegisterResponse, TransportError> {
        self.call(api::register_job(job, options)).await
    }

    pub async fn plan_job(&self, job: &Value) -> Result<api::JobPlanResponse, TransportError> {
        self.call(api::plan_job(job)).await
    }

    pub async fn read_job(&self, job_id: &str) -> Result<Option<api::Job>, TransportError> {
        self.call_optional(api::read_job(job_id)).await
    }

    /// The job as Nomad has it, every field kept: what to register again with one change.
    pub async fn read_job_json(&self, job_id: &str) -> Result<Option<Value>, TransportError> {
        self.call_optional(api::read_job(job_id)).await
    }

    pub async fn job_versions(&self, job_id: &str) -> Result<api::JobVersionsResponse, TransportError> {
        self.call(api::job_versions(job_id, false)).await
    }

    pub async fn job_allocations(&self, job_id: &str) -> Result<Vec<api::AllocListStub>, TransportError> {
        self.call(api::job_allocations(job_id, false)).await
    }

    pub async fn job_evaluations(&self, job_id: &str) -> Result<Vec<api::Evaluation>, TransportError> {
        self.call(api::job_evaluations(job_id)).await
    }

    /// The job's latest deployment; `None` when it has none (Nomad answers `null`).
    pub async fn job_latest_deployment(&self, job_id: &str) -> Result<Option<api::Deployment>, TransportError> {
        Ok(self.call_optional::<Option<api::Deployment>>(api::job_latest_deployment(job_id)).await?.flatten())
    }

    pub async fn read_deployment(&self, deployment_id: &str) -> Result<api::Deployment, TransportError> {
        self.call(api::read_deployment(deployment_id)).await
    }

    pub async fn fail_deployment(&self, deployment_id: &str) -> Result<api::DeploymentUpdateResponse, TransportError> {
        self.call(api::fail_deployment(deployment_id)).await
    }

    pub async fn promote_deployment(
        &self,
        deployment_id: &str,
        groups: &[String],
    ) -> Result<api::DeploymentUpdateResponse, TransportError> {
        self.call(api::promote_deployment(deployment_id, groups)).await
    }

    pub async fn force_periodic(&self, job_id: &str) -> Result<api::PeriodicForceResponse, TransportError> {
        self.call(api::force_periodic(job_id)).await
    }

    pub async fn dispatch_job(
        &self,
        job_id: &str,
        payload: Option<&[u8]>,
        meta: &std::collections::BTreeMap<String, String>,
    ) -> Result<api::JobDispatchResponse, TransportError> {
        self.call(api::dispatch_job(job_id, payload, meta)).await
    }

    pub async fn read_evaluation(&self, eval_id: &str) -> Result<api::Evaluation, TransportError> {
        self.call(api::read_evaluation(eval_id)).await
    }

    /// One task's stdout (or stderr) as the node keeps it.
    pub async fn alloc_logs(&self, alloc_id: &str, task: &str, stderr: bool) -> Result<Vec<u8>, TransportError> {
        Ok(execute(&self.transport, &api::alloc_logs(alloc_id, task, stderr), None).await?.body)
    }

    pub async fn deregister_job(&self, job_id: &str, purge: bool) -> Result<api::JobDeregisterResponse, TransportError> {
        self.call(api::deregister_job(job_id, purge)).await
    }

    /// Jobs whose ID starts with `prefix`, with their `Meta`.
    pub async fn list_jobs(&self, prefix: Option<&str>) -> Result<Vec<api::JobListStub>, TransportError> {
        self.call(api::list_jobs(prefix, true)).await
    }

    pub async fn create_csi_volume(&self, volume: &Value) -> Result<api::CsiVolumeCreateResponse, TransportError> {
        self.call(api::create_csi_volume(volume)).await
    }

    pub async fn read_csi_volume(&self, volume_id: &str) -> Result<Option<api::CsiVolume>, TransportError> {
        self.call_optional(api::read_csi_volume(volume_id)).await
    }

    pub async fn list_csi_volumes(&self, prefix: Option<&str>) -> Result<Vec<api::CsiVolumeListStub>, TransportError> {
        self.call(api::list_csi_volumes(prefix)).await
    }

    pub async fn delete_csi_volume(&self, volume_id: &str) -> Result<(), TransportError> {
        execute(&self.transport, &api::delete_csi_volume(volume_id), None).await.map(drop)
    }

    pub async fn list_variables(&self, prefix: &str) -> Result<Vec<api::VariableMetadata>, TransportError> {
        self.call(api::list_variables(prefix)).await
    }

    pub async fn read_variable(&self, path: &str) -> Result<Option<api::Variable>, TransportError> {
        self.call_optional(api::read_variable(path)).await
    }

    /// Writes a variable with check-and-set; on conflict the error is a 409 whose body is the
    /// current variable (see [`conflicting_variable`]).
    pub async fn put_variable(
        &self,
        path: &str,
        items: &std::collections::BTreeMap<String, String>,
        cas: Option<u64>,
    ) -> Result<api::Variable, TransportError> {
        self.call(api::put_variable(path, items, cas)).await
    }

    pub async fn delete_variable(&self, path: &str, cas: Option<u64>) -> Result<(), TransportError> {
        execute(&self.transport, &api::delete_variable(path, cas), None).await.map(drop)
    }

    pub async fn put_acl_policy(&self, policy: &api::AclPolicy) -> Result<(), TransportError> {
        execute(&self.transport, &api::put_acl_policy(policy), None).await.map(drop)
    }

    /// The leader's RPC address; empty when the cluster has no leader.
    pub async fn status_leader(&self) -> Result<String, TransportError> {
        self.call(api::status_leader()).await
    }

    pub async fn agent_self(&self) -> Result<api::AgentSelf, TransportError> {
        self.call(api::agent_self()).await
    }

    pub async fn list_nodes(&self) -> Result<Vec<api::NodeListStub>, TransportError> {
        self.call(api::list_nodes()).await
    }
}

/// The variable a failed check-and-set ran into (Nomad sends it as the 409 body).
pub fn conflicting_variable(error: &TransportError) -> Option<api::Variable> {
    let error = error.api().filter(|e| e.is_cas_conflict())?;
    serde_json::from_str(&error.body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_bounded() {
        let policy = RetryPolicy { max_attempts: 10, base_delay: Duration::from_millis(100), max_delay: Duration::from_secs(1) };
        for attempt in 1..10 {
            let delay = policy.delay(attempt);
            let cap = (Duration::from_millis(100) * (1 << (attempt - 1))).min(Duration::from_secs(1));
            assert!(delay >= cap / 2 && delay <= cap, "attempt {attempt}: {delay:?}");
        }
    }

    #[test]
    fn wait_is_written_as_a_go_duration() {
        assert_eq!(go_duration(Duration::from_secs(300)), "300s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1500ms");
    }
}
