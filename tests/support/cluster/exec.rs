//! Nomad's `exec` and `raw_exec` drivers as the cluster double's client runs them: processes,
//! not containers (drivers/exec, drivers/shared/executor, client/allocdir; docs
//! drivers/exec.mdx, runtime/environment.mdx).
//!
//! - `exec`: the command runs chrooted in its task directory, which holds the node's
//!   `chroot_env` (`/bin /etc /lib /lib32 /lib64 /run/resolvconf /sbin /usr`), the shared
//!   allocation directory at `/alloc`, the task's `local/`, `secrets/` and `tmp/` (1777),
//!   volume mounts at their destinations, `/proc`, a small `/dev`; in its own PID and mount
//!   namespaces (the command is PID 1: when it dies, everything it started dies with it), in
//!   the allocation's network namespace (bridge mode: the pause container's, with the port
//!   mappings), as `user` (default `nobody`; `root` is on the client's default
//!   `user.denylist`).
//! - `raw_exec`: the command runs on the node's own filesystem with the host paths of the
//!   allocation directory, as the agent's user unless `user` is set, in the allocation's
//!   network namespace; no PID namespace.
//!
//! The node's filesystem is pgnomad's image, exported once to a directory: a node with the
//! packages installed, the same programs the docker tasks run. Output goes where Nomad's
//! logmon puts it, `alloc/logs/<task>.stdout.0` and `.stderr.0`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::docker;

/// The client's default `chroot_env` (client/config: DefaultChrootEnv).
const CHROOT_ENV: &[&str] = &["bin", "etc", "lib", "lib32", "lib64", "run/resolvconf", "sbin", "usr"];

/// The executor's PATH when the task's environment has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

static ROOTFS: Mutex<()> = Mutex::new(());

/// The node's root filesystem: `image` exported to a directory, once per image id.
pub fn node_rootfs(image: &str) -> PathBuf {
    let _once = ROOTFS.lock().unwrap_or_else(|p| p.into_inner());
    let id = docker::run(&["image", "inspect", "--format", "{{.Id}}", image]).expect("inspecting the node image");
    let short = id.trim_start_matches("sha256:").chars().take(16).collect::<String>();
    let base = PathBuf::from("/var/tmp/pgnomad-tests/rootfs");
    let dir = base.join(&short);
    if dir.join(".complete").exists() {
        return dir;
    }
    std::fs::create_dir_all(&base).unwrap();
    let staging = base.join(format!("{short}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).unwrap();
    let container = format!("pgnomad-rootfs-{}", std::process::id());
    docker::remove(&container);
    docker::run(&["create", "--name", &container, image, "true"]).expect("creating a container to export the node filesystem");
    let export = docker::docker().args(["export", &container]).stdout(Stdio::piped()).spawn().expect("docker export");
    let tar =
        Command::new("tar").args(["-x", "--numeric-owner", "-p", "-C"]).arg(&staging).stdin(export.stdout.unwrap()).status().expect("tar");
    docker::remove(&container);
    assert!(tar.success(), "extracting {image} into {}", staging.display());
    std::fs::write(staging.join(".complete"), &id).unwrap();
    match std::fs::rename(&staging, &dir) {
        Ok(()) => {}
        // Another process finished first: keep its copy.
        Err(_) if dir.join(".complete").exists() => {
            let _ = std::fs::remove_dir_all(&staging);
        }
        Err(e) => panic!("moving the node filesystem into place: {e}"),
    }
    dir
}

/// A user of the node (its `/etc/passwd` and `/etc/group`): uid, gid, supplementary groups.
pub fn lookup_user(root: &Path, name: &str) -> Option<(u32, u32, Vec<u32>)> {
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).ok()?;
    let (uid, gid) = passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() > 3 && (fields[0] == name || fields[2] == name)).then(|| (fields[2].parse().ok(), fields[3].parse().ok()))
    })?;
    let (uid, gid): (u32, u32) = (uid?, gid?);
    let user_name = passwd.lines().find(|l| l.split(':').nth(2) == Some(&uid.to_string()[..])).and_then(|l| l.split(':').next())?;
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap_or_default();
    let mut groups: Vec<u32> = group
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() > 3 && fields[3].split(',').any(|m| m == user_name)).then(|| fields[2].parse().ok()).flatten()
        })
        .collect();
    groups.push(gid);
    groups.sort_unstable();
    groups.dedup();
    Some((uid, gid, groups))
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Isolation {
    /// `exec`: chroot, PID and mount namespaces.
    Chroot,
    /// `raw_exec`: none.
    None,
}

/// Everything a process task needs to start.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub task: String,
    pub isolation: Isolation,
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// (uid, gid, groups); None runs as the agent (root).
    pub user: Option<(u32, u32, Vec<u32>)>,
    /// The node's root filesystem (chroot_env comes from it).
    pub node_root: PathBuf,
    pub task_dir: PathBuf,
    pub alloc_dir: PathBuf,
    /// (host path, destination inside the task, read only).
    pub mounts: Vec<(PathBuf, String, bool)>,
    /// The allocation's network namespace (`/proc/<pid>/ns/net`); None is the host's.
    pub netns: Option<PathBuf>,
    /// The node's resolver, as `/etc/resolv.conf` inside the chroot.
    pub resolv_conf: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

/// A running (or exited) process task.
pub struct ExecTask {
    pub spec: ExecSpec,
    child: Mutex<Option<Child>>,
    exited: Mutex<Option<i64>>,
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

impl ExecTask {
    pub fn new(spec: ExecSpec) -> ExecTask {
        ExecTask { spec, child: Mutex::new(None), exited: Mutex::new(None) }
    }

    /// The shell run inside the new mount and PID namespaces: builds the chroot, then becomes
    /// the command (PID 1 of the task).
    fn chroot_script(&self) -> Result<String, String> {
        let s = &self.spec;
        let t = &s.task_dir;
        let mut script = vec!["set -e".to_string()];
        let mount = |script: &mut Vec<String>, source: &Path, dest: &Path, read_only: bool| {
            script.push(format!("mount --bind {} {}", quote(&source.display().to_string()), quote(&dest.display().to_string())));
            if read_only {
                script.push(format!("mount -o remount,bind,ro {}", quote(&dest.display().to_string())));
            }
        };
        for entry in CHROOT_ENV {
            let source = s.node_root.join(entry);
            let dest = t.join(entry);
            let Ok(meta) = std::fs::symlink_metadata(&source) else { continue };
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&source).map_err(|e| e.to_string())?;
                if std::fs::symlink_metadata(&dest).is_err() {
                    std::os::unix::fs::symlink(&target, &dest).map_err(|e| format!("linking {entry} into the task directory: {e}"))?;
                }
            } else if meta.is_dir() {
                std::fs::create_dir_all(&dest).map_err(|e| e.to_string())?;
                mount(&mut script, &source, &dest, true);
            }
        }
        // The node's resolver (a host that forwards `.consul` to Consul).
        if s.node_root.join("etc/resolv.conf").is_file() {
            mount(&mut script, &s.resolv_conf, &t.join("etc/resolv.conf"), true);
        }
        std::fs::create_dir_all(t.join("alloc")).map_err(|e| e.to_string())?;
        mount(&mut script, &s.alloc_dir, &t.join("alloc"), false);
        for (source, destination, read_only) in &s.mounts {
            let dest = t.join(destination.trim_start_matches('/'));
            std::fs::create_dir_all(&dest).map_err(|e| format!("mount point {destination}: {e}"))?;
            mount(&mut script, source, &dest, *read_only);
        }
        for dir in ["proc", "dev", "sys"] {
            std::fs::create_dir_all(t.join(dir)).map_err(|e| e.to_string())?;
        }
        let td = |p: &str| quote(&t.join(p).display().to_string());
        script.push(format!("mount -t proc proc {}", td("proc")));
        script.push(format!("mount --rbind /sys {}", td("sys")));
        script.push(format!("mount -t tmpfs -o mode=0755,size=64k tmpfs {}", td("dev")));
        for device in ["null", "zero", "full", "random", "urandom", "tty"] {
            script.push(format!("touch {0} && mount --bind /dev/{device} {0}", td(&format!("dev/{device}"))));
        }
        script.push(format!("mkdir -p {0} && mount -t tmpfs -o mode=1777 tmpfs {0}", td("dev/shm")));
        script.push(format!(
            "ln -s /proc/self/fd {} && ln -s /proc/self/fd/0 {} && ln -s /proc/self/fd/1 {} && ln -s /proc/self/fd/2 {}",
            td("dev/fd"),
            td("dev/stdin"),
            td("dev/stdout"),
            td("dev/stderr")
        ));
        let mut chroot = String::from("exec chroot");
        if let Some((uid, gid, groups)) = &s.user {
            let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
            chroot.push_str(&format!(" --userspec={uid}:{gid} --groups={}", groups.join(",")));
        }
        chroot.push_str(&format!(" {} {}", quote(&t.display().to_string()), quote(&s.command)));
        for arg in &s.args {
            chroot.push(' ');
            chroot.push_str(&quote(arg));
        }
        script.push(chroot);
        Ok(script.join("\n"))
    }

    pub fn start(&self) -> Result<(), String> {
        let s = &self.spec;
        let mut cmd = match &s.netns {
            Some(netns) => {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net={}", netns.display())).arg("--");
                cmd
            }
            None => Command::new("env"),
        };
        match s.isolation {
            Isolation::Chroot => {
                // --kill-child: if the supervising unshare dies, so does the task.
                cmd.args(["unshare", "--mount", "--pid", "--fork", "--kill-child", "--", "/bin/sh", "-c"]);
                cmd.arg(self.chroot_script()?);
            }
            Isolation::None => {
                if let Some((uid, gid, groups)) = &s.user {
                    let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
                    cmd.args(["setpriv", &format!("--reuid={uid}"), &format!("--regid={gid}"), &format!("--groups={}", groups.join(","))]);
                }
                cmd.arg(&s.command).args(&s.args).current_dir(&s.task_dir);
            }
        }
        let mut env = s.env.clone();
        env.entry("PATH".into()).or_insert_with(|| DEFAULT_PATH.into());
        let open =
            |path: &Path| std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| format!("{}: {e}", path.display()));
        cmd.env_clear().envs(&env).stdin(Stdio::null()).stdout(open(&s.stdout)?).stderr(open(&s.stderr)?);
        // The task dies with the client thread that started it, even if the test is killed.
        // SAFETY: prctl is async-signal-safe; it runs in the child before exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| format!("failed to launch command with executor: {e}"))?;
        *self.exited.lock().unwrap() = None;
        *self.child.lock().unwrap() = Some(child);
        Ok(())
    }

    /// None while running; the exit code once it exited (128 + signal when killed).
    pub fn exit_code(&self) -> Option<i64> {
        if let Some(code) = *self.exited.lock().unwrap() {
            return Some(code);
        }
        let mut child = self.child.lock().unwrap();
        let status = match child.as_mut()?.try_wait() {
            Ok(Some(status)) => status,
            Ok(None) => return None,
            Err(_) => return Some(-1),
        };
        use std::os::unix::process::ExitStatusExt;
        let code = status.code().map(i64::from).unwrap_or_else(|| 128 + i64::from(status.signal().unwrap_or(0)));
        *self.exited.lock().unwrap() = Some(code);
        Some(code)
    }

    pub fn running(&self) -> bool {
        self.child.lock().unwrap().is_some() && self.exit_code().is_none()
    }

    /// The task's own process: PID 1 of its namespace for `exec` (the child of the supervising
    /// `unshare`), the command itself for `raw_exec`.
    pub fn pid(&self) -> Option<u32> {
        let supervisor = self.child.lock().unwrap().as_ref()?.id();
        if self.spec.isolation == Isolation::None {
            return Some(supervisor);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let children = std::fs::read_to_string(format!("/proc/{supervisor}/task/{supervisor}/children")).unwrap_or_default();
            if let Some(pid) = children.split_whitespace().next().and_then(|p| p.parse().ok()) {
                return Some(pid);
            }
            if Instant::now() > deadline || self.exit_code().is_some() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (a name such as "SIGHUP") to the task's process.
    pub fn signal(&self, signal: &str) -> Result<(), String> {
        let number = signal_number(signal).ok_or_else(|| format!("unknown signal {signal}"))?;
        let pid = self.pid().ok_or("the task is not running")?;
        // SAFETY: kill(2) with a pid this client started and a valid signal number.
        if unsafe { libc::kill(pid as i32, number) } == 0 {
            Ok(())
        } else {
            Err(format!("signalling {pid}: {}", std::io::Error::last_os_error()))
        }
    }

    /// The kill signal, up to `timeout` for the task to exit, then SIGKILL.
    pub fn stop(&self, signal: &str, timeout: Duration) {
        if self.running() {
            let _ = self.signal(signal);
            let deadline = Instant::now() + timeout;
            while self.running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill();
    }

    /// SIGKILL: with `exec` the task's PID namespace dies with its first process.
    pub fn kill(&self) {
        if self.running() {
            let _ = self.signal("SIGKILL");
        }
        let mut child = self.child.lock().unwrap();
        if let Some(child) = child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        drop(child);
        let _ = self.exit_code();
    }

    pub fn logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for path in [&self.spec.stdout, &self.spec.stderr] {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&all[all.len().saturating_sub(lines)..].join("\n"));
            out.push('\n');
        }
        out
    }

    /// Runs `argv` inside the task, as `nomad alloc exec` does: its namespaces, its root, its
    /// user (`user` overrides).
    pub fn enter(&self, argv: &[&str], user: Option<(u32, u32)>) -> Result<std::process::Output, String> {
        let pid = self.pid().ok_or("the task is not running")?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={pid}"));
        if self.spec.isolation == Isolation::Chroot {
            cmd.args(["--mount", "--pid", "--root", "--wd"]);
        }
        cmd.arg("--net");
        let user = user.or(self.spec.user.as_ref().map(|(u, g, _)| (*u, *g)));
        if let Some((uid, gid)) = user {
            cmd.args([format!("--setuid={uid}"), format!("--setgid={gid}")]);
        }
        // The task's environment, as `nomad alloc exec` gives it.
        let mut env = self.spec.env.clone();
        env.entry("PATH".into()).or_insert_with(|| DEFAULT_PATH.into());
        cmd.arg("--").args(argv).env_clear().envs(&env).stdin(Stdio::null());
        cmd.output().map_err(|e| format!("nsenter: {e}"))
    }
}

impl std::fmt::Debug for ExecTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecTask").field("task", &self.spec.task).field("exited", &*self.exited.lock().unwrap()).finish()
    }
}

impl Drop for ExecTask {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn signal_number(name: &str) -> Option<i32> {
    let name = name.trim().to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    Some(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        _ => return None,
    })
}
