//! The environment and directories Nomad's client gives a task (client/taskenv/env.go and
//! client/allocdir: docs/runtime/environment.mdx), for the view of drivers with filesystem
//! isolation (docker, exec: /alloc, /local, /secrets) and raw_exec's (the host paths).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// One mapped port of an allocation: `to` inside the network namespace, `value` on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    pub label: String,
    pub value: u16,
    pub to: u16,
    pub host_ip: String,
}

/// The facts about an allocation that its environment is made from.
#[derive(Debug, Clone)]
pub struct AllocFacts {
    pub alloc_id: String,
    pub alloc_index: u64,
    pub job: Value,
    pub group: Value,
    pub node_name: String,
    pub ports: Vec<Port>,
}

impl AllocFacts {
    pub fn job_id(&self) -> &str {
        self.job["ID"].as_str().unwrap_or_default()
    }

    pub fn group_name(&self) -> &str {
        self.group["Name"].as_str().unwrap_or_default()
    }

    pub fn namespace(&self) -> &str {
        self.job["Namespace"].as_str().filter(|n| !n.is_empty()).unwrap_or("default")
    }

    /// Bridge mode: tasks listen on `to` in their own namespace and are reached at the host's.
    pub fn bridge(&self) -> bool {
        self.group["Networks"].as_array().and_then(|n| n.first()).and_then(|n| n["Mode"].as_str()) == Some("bridge")
    }
}

/// Where an allocation's directories are on the host: `<root>/<alloc id>/{alloc,<task>}`.
#[derive(Debug, Clone)]
pub struct AllocDir {
    pub root: PathBuf,
}

impl AllocDir {
    pub fn shared(&self) -> PathBuf {
        self.root.join("alloc")
    }

    pub fn task(&self, task: &str) -> PathBuf {
        self.root.join(task)
    }

    pub fn local(&self, task: &str) -> PathBuf {
        self.task(task).join("local")
    }

    pub fn secrets(&self, task: &str) -> PathBuf {
        self.task(task).join("secrets")
    }

    /// alloc/{data,logs,tmp} and each task's local/, secrets/ (0700 as Nomad makes it), tmp/.
    pub fn build(&self, tasks: &[&str]) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for dir in ["data", "logs", "tmp"] {
            std::fs::create_dir_all(self.shared().join(dir))?;
        }
        // Every task user may write the shared alloc/tmp (sockets live there).
        std::fs::set_permissions(self.shared().join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
        std::fs::set_permissions(self.shared(), std::fs::Permissions::from_mode(0o755))?;
        for task in tasks {
            for dir in ["local", "secrets", "tmp"] {
                std::fs::create_dir_all(self.task(task).join(dir))?;
            }
            std::fs::set_permissions(self.secrets(task), std::fs::Permissions::from_mode(0o777))?;
            // TaskDirs: tmp/ is 1777 in every task directory (the chroot's /tmp with exec).
            std::fs::set_permissions(self.task(task).join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
            std::fs::set_permissions(self.local(task), std::fs::Permissions::from_mode(0o777))?;
        }
        Ok(())
    }

    /// A template's destination on the host: relative to the task directory (Nomad's rule),
    /// and never outside the allocation directory.
    pub fn destination(&self, task: &str, dest: &str) -> PathBuf {
        let path = self.task(task).join(dest.trim_start_matches('/'));
        let mut clean = PathBuf::new();
        for part in path.components() {
            match part {
                std::path::Component::ParentDir => {
                    clean.pop();
                }
                other => clean.push(other),
            }
        }
        assert!(clean.starts_with(&self.root), "template destination {dest} escapes the allocation directory");
        clean
    }
}

fn meta_key(key: &str) -> String {
    key.replace(['.', '-'], "_")
}

/// The task's environment, as Nomad builds it (env.go): runtime variables, ports, combined
/// meta (job, then group, then task), then the task's own `env` block, whose values may
/// interpolate the others.
pub fn task_env(facts: &AllocFacts, task: &Value, dirs: &AllocDir, isolated: bool) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let task_name = task["Name"].as_str().unwrap_or_default();
    let (alloc_dir, task_dir, secrets_dir) = if isolated {
        ("/alloc".to_string(), "/local".to_string(), "/secrets".to_string())
    } else {
        (dirs.shared().display().to_string(), dirs.local(task_name).display().to_string(), dirs.secrets(task_name).display().to_string())
    };
    let job_name = facts.job["Name"].as_str().unwrap_or(facts.job_id()).to_string();
    let resources = &task["Resources"];
    let pairs = [
        ("NOMAD_ALLOC_DIR", alloc_dir),
        ("NOMAD_TASK_DIR", task_dir),
        ("NOMAD_SECRETS_DIR", secrets_dir),
        ("NOMAD_ALLOC_ID", facts.alloc_id.clone()),
        ("NOMAD_SHORT_ALLOC_ID", facts.alloc_id.chars().take(8).collect()),
        ("NOMAD_ALLOC_NAME", format!("{}.{}[{}]", facts.job_id(), facts.group_name(), facts.alloc_index)),
        ("NOMAD_ALLOC_INDEX", facts.alloc_index.to_string()),
        ("NOMAD_TASK_NAME", task_name.to_string()),
        ("NOMAD_GROUP_NAME", facts.group_name().to_string()),
        ("NOMAD_JOB_NAME", job_name),
        ("NOMAD_JOB_ID", facts.job_id().to_string()),
        ("NOMAD_JOB_PARENT_ID", facts.job["ParentID"].as_str().unwrap_or_default().to_string()),
        ("NOMAD_DC", facts.job["Datacenters"][0].as_str().unwrap_or("dc1").to_string()),
        ("NOMAD_REGION", facts.job["Region"].as_str().unwrap_or("global").to_string()),
        ("NOMAD_NAMESPACE", facts.namespace().to_string()),
        ("NOMAD_CPU_LIMIT", resources["CPU"].as_u64().unwrap_or(100).to_string()),
        ("NOMAD_MEMORY_LIMIT", resources["MemoryMB"].as_u64().unwrap_or(300).to_string()),
    ];
    for (key, value) in pairs {
        env.insert(key.to_string(), value);
    }
    for port in &facts.ports {
        let inside = if facts.bridge() && port.to > 0 { port.to } else { port.value };
        let label = port.label.replace('-', "_");
        env.insert(format!("NOMAD_IP_{label}"), port.host_ip.clone());
        env.insert(format!("NOMAD_PORT_{label}"), inside.to_string());
        env.insert(format!("NOMAD_ADDR_{label}"), format!("{}:{inside}", port.host_ip));
        env.insert(format!("NOMAD_ALLOC_PORT_{label}"), inside.to_string());
        env.insert(format!("NOMAD_HOST_IP_{label}"), port.host_ip.clone());
        env.insert(format!("NOMAD_HOST_PORT_{label}"), port.value.to_string());
        env.insert(format!("NOMAD_HOST_ADDR_{label}"), format!("{}:{}", port.host_ip, port.value));
    }
    for meta in [&facts.job["Meta"], &facts.group["Meta"], &task["Meta"]] {
        for (key, value) in meta.as_object().into_iter().flatten() {
            let value = value.as_str().unwrap_or_default().to_string();
            env.insert(format!("NOMAD_META_{}", meta_key(key)), value.clone());
            env.insert(format!("NOMAD_META_{key}"), value);
        }
    }
    let own: Vec<(String, String)> = task["Env"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), interpolate(v.as_str().unwrap_or_default(), &env)))
        .collect();
    env.extend(own);
    env
}

/// `${NOMAD_…}` / `${meta.…}` / `${env["…"]}` in task config and env values.
pub fn interpolate(text: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let key = &rest[start + 2..start + end];
        let value = if let Some(meta) = key.strip_prefix("meta.") {
            env.get(&format!("NOMAD_META_{meta}")).cloned()
        } else if let Some(quoted) = key.strip_prefix("env[\"").and_then(|k| k.strip_suffix("\"]")) {
            env.get(quoted).cloned()
        } else {
            env.get(key).cloned()
        };
        match value {
            Some(v) => out.push_str(&v),
            None => out.push_str(&rest[start..start + end + 1]),
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

/// An env file as Nomad's template `env = true` reads it (KEY=value lines, # comments).
pub fn parse_env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().trim_start_matches("export ").to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

pub fn is_within(path: &Path, root: &Path) -> bool {
    path.starts_with(root)
}
