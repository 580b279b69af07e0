//! The state directory: ports chosen once, secrets generated once, rendered config files,
//! data directories, logs and pids. Everything survives `down`/`up`; `destroy` removes it.
//!
//! ```text
//! <state>/state.json           stack file, host, ports
//! <state>/secrets.json         generated secrets (0600, never printed)
//! <state>/client/pgpass        the application user's and the admin console's logins (0600)
//! <state>/etcd/                etcd's data
//! <state>/member-N/{config,data,run,log}
//! <state>/pgbouncer/{config,run,log}
//! <state>/backup-<kind>/{config,run,log}
//! <state>/repo/                pgBackRest repository
//! <state>/tls/                 pgBackRest's TLS certificates
//! <state>/supervisor.{pid,log} pids.json primary stop
//! ```

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::DevError;
use crate::config::MemberPorts;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ports {
    pub etcd_client: u16,
    pub etcd_peer: u16,
    /// A `consul agent -dev` instead of etcd: the stack's DCS is Consul and a `consul`
    /// binary is on PATH (it is not a Debian package).
    #[serde(default)]
    pub consul: Option<ConsulPorts>,
    /// `[pg, rest, tls]` of each member.
    pub members: Vec<[u16; 3]>,
    pub pgbouncer: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsulPorts {
    pub http: u16,
    pub serf_lan: u16,
    pub serf_wan: u16,
    pub server: u16,
}

impl Ports {
    pub fn member(&self, index: usize) -> MemberPorts {
        let [pg, rest, tls] = self.members[index];
        MemberPorts { pg, rest, tls }
    }
}

/// What `dev up` decided the first time; later runs reuse it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recorded {
    pub stack_file: PathBuf,
    pub host: String,
    pub ports: Ports,
}

/// Pids the supervisor runs, by process name (`etcd`, `member-0`, `pgbouncer`, …).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Pids {
    pub supervisor: u32,
    pub processes: BTreeMap<String, u32>,
}

#[derive(Debug, Clone)]
pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    pub fn new(root: PathBuf) -> StateDir {
        StateDir { root }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
    pub fn recorded_file(&self) -> PathBuf {
        self.path("state.json")
    }
    pub fn secrets_file(&self) -> PathBuf {
        self.path("secrets.json")
    }
    pub fn pgpass_file(&self) -> PathBuf {
        self.path("client/pgpass")
    }
    pub fn supervisor_pid_file(&self) -> PathBuf {
        self.path("supervisor.pid")
    }
    pub fn supervisor_log(&self) -> PathBuf {
        self.path("supervisor.log")
    }
    pub fn pids_file(&self) -> PathBuf {
        self.path("pids.json")
    }
    /// The member index PgBouncer currently points at, written after each reload.
    pub fn primary_file(&self) -> PathBuf {
        self.path("primary")
    }
    /// Its presence asks the supervisor to stop everything and exit.
    pub fn stop_file(&self) -> PathBuf {
        self.path("stop")
    }
    pub fn config_dir(&self, part: &str) -> PathBuf {
        self.root.join(part).join("config")
    }
    pub fn data_dir(&self, member: &str) -> PathBuf {
        self.root.join(member).join("data")
    }
    pub fn log_dir(&self, part: &str) -> PathBuf {
        self.root.join(part).join("log")
    }

    pub fn exists(&self) -> bool {
        self.recorded_file().is_file()
    }

    pub fn read_recorded(&self) -> Result<Recorded, DevError> {
        read_json(&self.recorded_file())
    }

    pub fn write_recorded(&self, recorded: &Recorded) -> Result<(), DevError> {
        write_private(&self.recorded_file(), &serde_json::to_string_pretty(recorded).expect("serializes"))
    }

    pub fn read_secrets(&self) -> Result<BTreeMap<String, String>, DevError> {
        if self.secrets_file().is_file() {
            read_json(&self.secrets_file())
        } else {
            Ok(BTreeMap::new())
        }
    }

    pub fn write_secrets(&self, secrets: &BTreeMap<String, String>) -> Result<(), DevError> {
        write_private(&self.secrets_file(), &serde_json::to_string_pretty(secrets).expect("serializes"))
    }

    pub fn read_pids(&self) -> Pids {
        read_json(&self.pids_file()).unwrap_or_default()
    }

    pub fn supervisor_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.supervisor_pid_file()).ok()?.trim().parse().ok()?;
        (super::process::alive(pid) && super::process::command_line(pid).contains("supervise")).then_some(pid)
    }

    pub fn pgbouncer_primary(&self) -> Option<u32> {
        std::fs::read_to_string(self.primary_file()).ok()?.trim().parse().ok()
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, DevError> {
    let text = std::fs::read_to_string(path).map_err(|e| DevError::io(format!("read {}", path.display()), e))?;
    serde_json::from_str(&text).map_err(|e| DevError::Corrupt { path: path.to_owned(), message: e.to_string() })
}

/// Writes `text` to `path` readable by its owner only; the file never exists with wider
/// permissions (written to a temporary name first, then renamed).
pub fn write_private(path: &Path, text: &str) -> Result<(), DevError> {
    write_with_mode(path, text, 0o600)
}

pub fn write_with_mode(path: &Path, text: &str, mode: u32) -> Result<(), DevError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e| DevError::io(format!("write {}", path.display()), e);
    let temporary = path.with_extension("tmp-pgnomad");
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&temporary).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(io)?;
    std::fs::rename(&temporary, path).map_err(io)
}
