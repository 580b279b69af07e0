//! Connection settings for Nomad and Consul, taken the way the `nomad` and `consul` CLIs take
//! them: a flag wins over its environment variable, which wins over the default. This is the
//! only module that reads the process environment.

use std::collections::HashMap;
use std::path::PathBuf;

pub const DEFAULT_NOMAD_ADDR: &str = "http://127.0.0.1:4646";
pub const DEFAULT_CONSUL_ADDR: &str = "http://127.0.0.1:8500";

/// Flags shared by every command that talks to the cluster.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConnectionArgs {
    /// Nomad HTTP API address [env: NOMAD_ADDR] [default: http://127.0.0.1:4646]
    #[arg(long = "address", value_name = "URL")]
    pub address: Option<String>,
    /// Nomad ACL token [env: NOMAD_TOKEN]
    #[arg(long = "token", value_name = "SECRET_ID")]
    pub token: Option<String>,
    /// Nomad namespace [env: NOMAD_NAMESPACE]
    #[arg(long = "namespace")]
    pub namespace: Option<String>,
    /// Nomad region [env: NOMAD_REGION]
    #[arg(long = "region")]
    pub region: Option<String>,
    /// PEM file of the CA that signed Nomad's certificate [env: NOMAD_CACERT]
    #[arg(long = "ca-cert", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Directory of PEM CA certificates [env: NOMAD_CAPATH]
    #[arg(long = "ca-path", value_name = "DIR")]
    pub ca_path: Option<PathBuf>,
    /// Client certificate for mutual TLS [env: NOMAD_CLIENT_CERT]
    #[arg(long = "client-cert", value_name = "FILE")]
    pub client_cert: Option<PathBuf>,
    /// Client key for mutual TLS [env: NOMAD_CLIENT_KEY]
    #[arg(long = "client-key", value_name = "FILE")]
    pub client_key: Option<PathBuf>,
    /// Server name to verify Nomad's certificate against [env: NOMAD_TLS_SERVER_NAME]
    #[arg(long = "tls-server-name")]
    pub tls_server_name: Option<String>,
    /// Do not verify Nomad's certificate (insecure) [env: NOMAD_SKIP_VERIFY]
    #[arg(long = "tls-skip-verify")]
    pub tls_skip_verify: bool,
    /// Consul HTTP API address [env: CONSUL_HTTP_ADDR] [default: http://127.0.0.1:8500]
    #[arg(long = "consul-address", value_name = "URL")]
    pub consul_address: Option<String>,
    /// Consul ACL token [env: CONSUL_HTTP_TOKEN]
    #[arg(long = "consul-token")]
    pub consul_token: Option<String>,
    /// PEM file of the CA that signed Consul's certificate [env: CONSUL_CACERT]
    #[arg(long = "consul-ca-cert", value_name = "FILE")]
    pub consul_ca_cert: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub ca_cert: Option<PathBuf>,
    pub ca_path: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub server_name: Option<String>,
    pub skip_verify: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NomadSettings {
    /// Normalised base URL without a trailing slash, e.g. `https://nomad.example:4646`.
    pub address: String,
    pub token: Option<String>,
    pub namespace: Option<String>,
    pub region: Option<String>,
    pub tls: TlsSettings,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsulSettings {
    pub address: String,
    pub token: Option<String>,
    pub tls: TlsSettings,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("{source_name} is not a usable address: {value:?} ({reason})")]
    BadAddress { source_name: String, value: String, reason: &'static str },
    #[error("{name} must be true or false, got {value:?}")]
    BadBool { name: &'static str, value: String },
    #[error("cannot read {path}: {message}")]
    Unreadable { path: String, message: String },
    #[error("a client certificate needs its key and a key needs its certificate (--client-cert/--client-key, NOMAD_CLIENT_CERT/NOMAD_CLIENT_KEY)")]
    HalfClientCertificate,
}

/// A snapshot of the environment variables this module cares about. Tests build it from a map.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    vars: HashMap<String, String>,
}

impl Environment {
    /// Reads the process environment: the one place in pgnomad that does.
    pub fn from_process() -> Self {
        Environment { vars: std::env::vars().collect() }
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Environment { vars: pairs.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
    }

    /// Whether the user asked for no colour (https://no-color.org: any non-empty NO_COLOR).
    pub fn no_color(&self) -> bool {
        self.get("NO_COLOR").is_some()
    }

    /// Empty values count as unset, as in the nomad CLI.
    fn get(&self, name: &str) -> Option<String> {
        self.vars.get(name).filter(|v| !v.is_empty()).cloned()
    }
}

impl ConnectionArgs {
    pub fn nomad(&self, env: &Environment) -> Result<NomadSettings, SettingsError> {
        let (address, source_name) = pick(&self.address, env, "NOMAD_ADDR", "--address");
        let address = address.unwrap_or_else(|| DEFAULT_NOMAD_ADDR.to_string());
        let skip_verify = self.tls_skip_verify || env_bool(env, "NOMAD_SKIP_VERIFY")?;
        let tls = TlsSettings {
            ca_cert: self.ca_cert.clone().or_else(|| env.get("NOMAD_CACERT").map(PathBuf::from)),
            ca_path: self.ca_path.clone().or_else(|| env.get("NOMAD_CAPATH").map(PathBuf::from)),
            client_cert: self.client_cert.clone().or_else(|| env.get("NOMAD_CLIENT_CERT").map(PathBuf::from)),
            client_key: self.client_key.clone().or_else(|| env.get("NOMAD_CLIENT_KEY").map(PathBuf::from)),
            server_name: self.tls_server_name.clone().or_else(|| env.get("NOMAD_TLS_SERVER_NAME")),
            skip_verify,
        };
        if tls.client_cert.is_some() != tls.client_key.is_some() {
            return Err(SettingsError::HalfClientCertificate);
        }
        Ok(NomadSettings {
            address: normalize_address(&address, &source_name)?,
            token: pick(&self.token, env, "NOMAD_TOKEN", "").0,
            namespace: pick(&self.namespace, env, "NOMAD_NAMESPACE", "").0,
            region: pick(&self.region, env, "NOMAD_REGION", "").0,
            tls,
        })
    }

    pub fn consul(&self, env: &Environment) -> Result<ConsulSettings, SettingsError> {
        let (address, source_name) = pick(&self.consul_address, env, "CONSUL_HTTP_ADDR", "--consul-address");
        let address = address.unwrap_or_else(|| DEFAULT_CONSUL_ADDR.to_string());
        // CONSUL_HTTP_SSL=true turns a bare host:port into https, as in the consul CLI.
        let https = env_bool(env, "CONSUL_HTTP_SSL")?;
        let address = if https && !address.contains("://") { format!("https://{address}") } else { address };
        Ok(ConsulSettings {
            address: normalize_address(&address, &source_name)?,
            token: pick(&self.consul_token, env, "CONSUL_HTTP_TOKEN", "").0,
            tls: TlsSettings {
                ca_cert: self.consul_ca_cert.clone().or_else(|| env.get("CONSUL_CACERT").map(PathBuf::from)),
                ..TlsSettings::default()
            },
        })
    }
}

/// Secrets only the operator can give, for `run` to store in Nomad Variables. Read from the
/// environment (or a file), never from a flag: a flag's value shows in `ps` and shell history.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct OperatorSecrets {
    /// `AWS_ACCESS_KEY_ID`: the S3 backup repository's access key.
    pub s3_key: Option<String>,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub s3_key_secret: Option<String>,
    /// `PGNOMAD_PATRONI_CONSUL_TOKEN` (or `--patroni-consul-token-file`): Patroni's Consul token.
    pub patroni_consul_token: Option<String>,
}

impl std::fmt::Debug for OperatorSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |v: &Option<String>| if v.is_some() { "set" } else { "unset" };
        write!(
            f,
            "OperatorSecrets {{ s3_key: {}, s3_key_secret: {}, patroni_consul_token: {} }}",
            set(&self.s3_key),
            set(&self.s3_key_secret),
            set(&self.patroni_consul_token)
        )
    }
}

impl OperatorSecrets {
    /// `token_file` wins over `PGNOMAD_PATRONI_CONSUL_TOKEN`.
    pub fn from_env(env: &Environment, token_file: Option<&std::path::Path>) -> Result<Self, SettingsError> {
        let patroni_consul_token = match token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| SettingsError::Unreadable { path: path.display().to_string(), message: e.to_string() })?
                    .trim()
                    .to_string(),
            ),
            None => env.get("PGNOMAD_PATRONI_CONSUL_TOKEN"),
        };
        Ok(OperatorSecrets { s3_key: env.get("AWS_ACCESS_KEY_ID"), s3_key_secret: env.get("AWS_SECRET_ACCESS_KEY"), patroni_consul_token })
    }

    /// The value of an operator-provided secret key, if the operator gave it.
    pub fn value(&self, key: &str) -> Option<&str> {
        match key {
            "s3_key" => self.s3_key.as_deref(),
            "s3_key_secret" => self.s3_key_secret.as_deref(),
            "consul_token" => self.patroni_consul_token.as_deref(),
            _ => None,
        }
    }

    /// How to give `key`, for messages.
    pub fn how_to_provide(key: &str) -> &'static str {
        match key {
            "s3_key" => "export AWS_ACCESS_KEY_ID",
            "s3_key_secret" => "export AWS_SECRET_ACCESS_KEY",
            "consul_token" => "export PGNOMAD_PATRONI_CONSUL_TOKEN or pass --patroni-consul-token-file FILE",
            _ => "store it in the job's Nomad Variable yourself",
        }
    }
}

/// Flag first, then the environment variable; also says where the value came from.
fn pick(flag: &Option<String>, env: &Environment, var: &str, flag_name: &str) -> (Option<String>, String) {
    match flag.as_ref().filter(|v| !v.is_empty()) {
        Some(value) => (Some(value.clone()), flag_name.to_string()),
        None => (env.get(var), var.to_string()),
    }
}

/// Go's strconv.ParseBool, which the nomad CLI uses for NOMAD_SKIP_VERIFY.
fn env_bool(env: &Environment, name: &'static str) -> Result<bool, SettingsError> {
    match env.get(name).as_deref() {
        None => Ok(false),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(other) => Err(SettingsError::BadBool { name, value: other.to_string() }),
    }
}

/// Accepts `http(s)://host:port[/]` and a bare `host:port` (taken as http), as both CLIs do.
fn normalize_address(address: &str, source_name: &str) -> Result<String, SettingsError> {
    let bad = |reason| SettingsError::BadAddress {
        source_name: if source_name.is_empty() { "address".into() } else { source_name.to_string() },
        value: address.to_string(),
        reason,
    };
    let address = address.trim();
    let with_scheme = match address.split_once("://") {
        Some(("http" | "https", rest)) if !rest.is_empty() => address.to_string(),
        Some(("http" | "https", _)) => return Err(bad("no host")),
        Some((_, _)) => return Err(bad("only http:// and https:// are supported")),
        None if address.is_empty() => return Err(bad("empty")),
        None => format!("http://{address}"),
    };
    let host = with_scheme.split_once("://").map(|(_, rest)| rest).unwrap_or_default();
    if host.starts_with('/') || host.starts_with(':') {
        return Err(bad("no host"));
    }
    Ok(with_scheme.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ConnectionArgs {
        ConnectionArgs::default()
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let nomad = args().nomad(&Environment::default()).unwrap();
        assert_eq!(nomad.address, DEFAULT_NOMAD_ADDR);
        assert_eq!((nomad.token, nomad.namespace, nomad.region), (None, None, None));
        assert_eq!(args().consul(&Environment::default()).unwrap().address, DEFAULT_CONSUL_ADDR);
    }

    #[test]
    fn environment_fills_what_flags_leave_out() {
        let env = Environment::from_pairs([
            ("NOMAD_ADDR", "https://nomad.example:4646/"),
            ("NOMAD_TOKEN", "env-token"),
            ("NOMAD_NAMESPACE", "db"),
            ("NOMAD_REGION", "eu"),
            ("NOMAD_CACERT", "/etc/ca.pem"),
            ("NOMAD_SKIP_VERIFY", "true"),
            ("CONSUL_HTTP_ADDR", "10.0.0.1:8500"),
            ("CONSUL_HTTP_TOKEN", "consul-env"),
        ]);
        let nomad = args().nomad(&env).unwrap();
        assert_eq!(nomad.address, "https://nomad.example:4646");
        assert_eq!(nomad.token.as_deref(), Some("env-token"));
        assert_eq!(nomad.namespace.as_deref(), Some("db"));
        assert_eq!(nomad.region.as_deref(), Some("eu"));
        assert_eq!(nomad.tls.ca_cert, Some(PathBuf::from("/etc/ca.pem")));
        assert!(nomad.tls.skip_verify);
        let consul = args().consul(&env).unwrap();
        assert_eq!(consul.address, "http://10.0.0.1:8500");
        assert_eq!(consul.token.as_deref(), Some("consul-env"));
    }

    #[test]
    fn a_flag_wins_over_its_environment_variable() {
        let env = Environment::from_pairs([
            ("NOMAD_ADDR", "http://env:4646"),
            ("NOMAD_TOKEN", "env-token"),
            ("NOMAD_NAMESPACE", "env-ns"),
            ("CONSUL_HTTP_ADDR", "env:8500"),
            ("CONSUL_HTTP_TOKEN", "env-consul"),
        ]);
        let flags = ConnectionArgs {
            address: Some("flag:4646".into()),
            token: Some("flag-token".into()),
            namespace: Some("flag-ns".into()),
            consul_address: Some("https://flag:8501".into()),
            consul_token: Some("flag-consul".into()),
            ..args()
        };
        let nomad = flags.nomad(&env).unwrap();
        assert_eq!(nomad.address, "http://flag:4646");
        assert_eq!(nomad.token.as_deref(), Some("flag-token"));
        assert_eq!(nomad.namespace.as_deref(), Some("flag-ns"));
        let consul = flags.consul(&env).unwrap();
        assert_eq!(consul.address, "https://flag:8501");
        assert_eq!(consul.token.as_deref(), Some("flag-consul"));
    }

    #[test]
    fn consul_http_ssl_makes_a_bare_address_https() {
        let env = Environment::from_pairs([("CONSUL_HTTP_ADDR", "consul:8501"), ("CONSUL_HTTP_SSL", "1")]);
        assert_eq!(args().consul(&env).unwrap().address, "https://consul:8501");
    }

    #[test]
    fn bad_values_are_reported_with_their_source() {
        let env = Environment::from_pairs([("NOMAD_ADDR", "unix:///tmp/nomad.sock")]);
        let err = args().nomad(&env).unwrap_err();
        assert!(err.to_string().contains("NOMAD_ADDR"), "{err}");
        let env = Environment::from_pairs([("NOMAD_SKIP_VERIFY", "yes")]);
        assert!(matches!(args().nomad(&env), Err(SettingsError::BadBool { .. })));
        let env = Environment::from_pairs([("NOMAD_CLIENT_CERT", "/c.pem")]);
        assert_eq!(args().nomad(&env), Err(SettingsError::HalfClientCertificate));
    }

    #[test]
    fn the_flags_parse_with_clap() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            connection: ConnectionArgs,
        }
        let cli = Cli::parse_from(["pgnomad", "--address", "127.0.0.1:4646", "--tls-skip-verify", "--consul-token", "t"]);
        let nomad = cli.connection.nomad(&Environment::default()).unwrap();
        assert_eq!(nomad.address, "http://127.0.0.1:4646");
        assert!(nomad.tls.skip_verify);
        assert_eq!(cli.connection.consul(&Environment::default()).unwrap().token.as_deref(), Some("t"));
    }
}
