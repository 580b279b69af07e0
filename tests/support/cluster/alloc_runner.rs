//! Runs one allocation as Nomad's client does (client/allocrunner, taskrunner): the allocation
//! directory, the group's network namespace (a pause container holding the port mappings, as
//! the docker driver's `nomad_init` container does), templates rendered by Go's text/template
//! before a task starts and again when their data change (change_mode), prestart tasks to
//! completion, main tasks, poststart sidecars, the restart policy, service checks against the
//! mapped ports, and on stop the kill signal with a kill timeout capped at the client's
//! max_kill_timeout.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::docker;
use super::exec::{self, ExecSpec, ExecTask, Isolation};
use super::taskenv::{interpolate, parse_env_file, task_env, AllocDir, AllocFacts};
use super::{ControlPlane, NodeInfo};
use crate::support::gotemplate::{self, Rendered, TemplateContext};
use crate::support::job_rules::interpolate_service_name;

/// The client's `max_kill_timeout` default (client/config): a longer `kill_timeout` is cut.
pub const MAX_KILL_TIMEOUT: Duration = Duration::from_secs(30);

const SECOND_NS: f64 = 1e9;

fn duration(value: &Value, default: Duration) -> Duration {
    value.as_i64().map(|ns| Duration::from_secs_f64(ns.max(0) as f64 / SECOND_NS)).unwrap_or(default)
}

fn str_of<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn list<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    value.get(key).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

/// What the runner was asked to do with its allocation.
pub struct Control {
    pub stop: AtomicBool,
    /// The node was lost: kill at once, report nothing (a lost node's client says nothing).
    pub lost: AtomicBool,
}

pub struct AllocRunner {
    pub facts: AllocFacts,
    pub node: NodeInfo,
    pub plane: Arc<dyn ControlPlane>,
    pub control: Arc<Control>,
    pub dirs: AllocDir,
    /// Rendered template contents per (task, destination), to see changes.
    rendered: Mutex<BTreeMap<(String, String), String>>,
    /// A changed rendering not written yet, held by the template's `wait`: (text, first seen,
    /// last changed).
    held: Mutex<BTreeMap<(String, String), (String, Instant, Instant)>>,
    /// What each task's templates last read (serialised), to re-render only on a change.
    template_inputs: Mutex<BTreeMap<String, String>>,
}

/// A template's `wait { min, max }`; without one, the client's default (5 s, 4 m).
fn template_wait(template: &Value) -> (Duration, Duration) {
    let wait = &template["Wait"];
    (duration(&wait["Min"], Duration::from_secs(5)), duration(&wait["Max"], Duration::from_secs(240)))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Prestart,
    Main,
    Poststart,
}

fn phase(task: &Value) -> Phase {
    match (str_of(&task["Lifecycle"], "Hook"), task["Lifecycle"]["Sidecar"].as_bool().unwrap_or(false)) {
        ("prestart", _) => Phase::Prestart,
        ("poststart", _) => Phase::Poststart,
        _ => Phase::Main,
    }
}

/// How a task runs: a container (docker) or a process (exec, raw_exec).
#[derive(Clone)]
pub enum Handle {
    Container(String),
    Process(Arc<ExecTask>),
}

impl Handle {
    /// None while it runs, else its exit code.
    fn exit_code(&self) -> Option<i64> {
        match self {
            Handle::Container(name) => docker::exit_code(name),
            Handle::Process(process) => process.exit_code(),
        }
    }

    fn logs_tail(&self, lines: usize) -> String {
        match self {
            Handle::Container(name) => docker::logs_tail(name, lines),
            Handle::Process(process) => process.logs_tail(lines),
        }
    }

    /// Starts it again after it exited (the same container, a new process).
    fn restart(&self) -> Result<(), String> {
        match self {
            Handle::Container(name) => {
                let started = docker::run(&["start", name]).map(|_| ());
                docker::forget_states();
                started
            }
            Handle::Process(process) => process.start(),
        }
    }

    fn signal(&self, signal: &str) -> Result<(), String> {
        match self {
            Handle::Container(name) => docker::signal(name, signal),
            Handle::Process(process) => process.signal(signal),
        }
    }

    /// The kill signal, then SIGKILL after `timeout`.
    fn stop(&self, kill_signal: &str, timeout: Duration) {
        match self {
            // The container's stop signal is the task's kill signal.
            Handle::Container(name) => {
                let _ = docker::run(&["stop", "--time", &timeout.as_secs().to_string(), name]);
            }
            Handle::Process(process) => process.stop(kill_signal, timeout),
        }
    }
}

/// A task that runs: its container (docker) or its process (exec, raw_exec).
struct Running {
    name: String,
    task: Value,
    container: Handle,
    started: Instant,
    restarts: u32,
    restart_window_start: Instant,
}

impl AllocRunner {
    pub fn new(facts: AllocFacts, node: NodeInfo, plane: Arc<dyn ControlPlane>, control: Arc<Control>) -> Self {
        let dirs = AllocDir { root: node.root.join("allocs").join(&facts.alloc_id) };
        AllocRunner {
            facts,
            node,
            plane,
            control,
            dirs,
            rendered: Mutex::new(BTreeMap::new()),
            held: Mutex::new(BTreeMap::new()),
            template_inputs: Mutex::new(BTreeMap::new()),
        }
    }

    fn tasks(&self) -> Vec<Value> {
        list(&self.facts.group, "Tasks").to_vec()
    }

    fn container_name(&self, task: &str) -> String {
        format!("{}-{}-{}", task, self.facts.group_name(), &self.facts.alloc_id[..8])
    }

    fn pause_name(&self) -> String {
        format!("nomad_init-{}", &self.facts.alloc_id[..8])
    }

    fn event(&self, task: &str, state: &str, failed: bool, kind: &str, message: &str) {
        self.plane.task_state(&self.facts.alloc_id, task, state, failed, kind, message);
    }

    fn stopping(&self) -> bool {
        self.control.stop.load(Ordering::SeqCst) || self.control.lost.load(Ordering::SeqCst)
    }

    /// The whole life of the allocation; returns when it has stopped.
    pub fn run(self: Arc<Self>) {
        let outcome = self.clone().run_inner();
        let lost = self.control.lost.load(Ordering::SeqCst);
        self.cleanup();
        if lost {
            return;
        }
        match outcome {
            Ok(()) => self.plane.alloc_status(&self.facts.alloc_id, "complete", "All tasks have completed"),
            Err(why) => self.plane.alloc_status(&self.facts.alloc_id, "failed", &why),
        }
    }

    fn run_inner(self: Arc<Self>) -> Result<(), String> {
        let tasks = self.tasks();
        let names: Vec<&str> = tasks.iter().map(|t| str_of(t, "Name")).collect();
        self.dirs.build(&names).map_err(|e| format!("building the allocation directory: {e}"))?;
        for task in &names {
            self.event(task, "pending", false, "Received", "Task received by client");
            self.event(task, "pending", false, "Task Setup", "Building Task Directory");
        }
        if self.facts.bridge() {
            // Nomad fails every task of an allocation whose network it cannot set up, each
            // with the reason as a "Setup Failure" event.
            self.start_pause().inspect_err(|why| {
                for task in &names {
                    self.event(task, "dead", true, "Setup Failure", why);
                }
            })?;
        }
        // Prestart tasks, then main tasks, then poststart ones (lifecycle.mdx).
        let mut running: Vec<Running> = Vec::new();
        for wanted in [Phase::Prestart, Phase::Main, Phase::Poststart] {
            for task in tasks.iter().filter(|t| phase(t) == wanted) {
                let name = str_of(task, "Name").to_string();
                if !self.wait_for_templates(&name, task) {
                    return self.stop_all(running);
                }
                // A task its driver cannot start fails with the driver's error as its event.
                let container = self.start_task(task).inspect_err(|why| self.event(&name, "dead", true, "Driver Failure", why))?;
                self.event(&name, "running", false, "Started", "Task started by client");
                let ephemeral = wanted == Phase::Prestart && !task["Lifecycle"]["Sidecar"].as_bool().unwrap_or(false);
                if ephemeral {
                    self.wait_for_exit(&name, task, &container)?;
                    if let Handle::Process(_) = &container {
                        self.node.processes.lock().unwrap().remove(&(self.facts.alloc_id.clone(), name.clone()));
                    }
                } else {
                    running.push(Running {
                        name,
                        task: task.clone(),
                        container,
                        started: Instant::now(),
                        restarts: 0,
                        restart_window_start: Instant::now(),
                    });
                }
            }
            if wanted == Phase::Main {
                self.plane.alloc_status(&self.facts.alloc_id, "running", "Tasks are running");
            }
        }
        let checks = self.clone().start_checks();
        let result = self.supervise(&mut running);
        checks.store(true, Ordering::SeqCst);
        match result {
            Ok(()) => self.stop_all(running),
            Err(why) => {
                let _ = self.stop_all(running);
                Err(why)
            }
        }
    }

    fn start_pause(&self) -> Result<(), String> {
        let label = format!("{}={}", docker::LABEL, self.node.cluster_id);
        let args = [
            "run",
            "--detach",
            "--name",
            &self.pause_name(),
            "--label",
            &label,
            "--network",
            &self.node.docker_network,
            "--dns",
            &self.node.dns,
            &self.node.pause_image,
            "sleep",
            "infinity",
        ];
        docker::run(&args).map_err(|e| format!("failed to set up the allocation network: {e}"))?;
        // The ports are mapped by the kernel alone, as CNI's portmap does: no host port is
        // bound (docker's `--publish` binds one, and refused a port the scheduler had freed
        // from an allocation still stopping: "port is already allocated", which Nomad never
        // says).
        let fail = |e: String| format!("failed to set up the allocation network: {e}");
        let format = format!("{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}", self.node.docker_network);
        let ip = docker::run(&["inspect", "--format", &format, &self.pause_name()]).map_err(fail)?;
        let network_id = docker::run(&["network", "inspect", "--format", "{{.Id}}", &self.node.docker_network]).map_err(fail)?;
        let bridge = format!("br-{}", &network_id.trim()[..12]);
        let ports: Vec<(u16, u16)> = self.facts.ports.iter().map(|p| (p.value, if p.to > 0 { p.to } else { p.value })).collect();
        docker::map_ports(&self.port_map_tag(), &bridge, &self.node.address, ip.trim(), &ports).map_err(fail)
    }

    /// The comment on this allocation's DNAT rules: the cluster's, then the allocation's.
    fn port_map_tag(&self) -> String {
        format!("pgnomad-double-{}-{}", self.node.cluster_id, &self.facts.alloc_id[..8])
    }

    /// Renders every template of `task` until none is blocked (Nomad's template hook holds the
    /// task until then, reporting what is missing); false when stopped while waiting.
    fn wait_for_templates(&self, name: &str, task: &Value) -> bool {
        let mut reported = String::new();
        loop {
            match self.render_templates(name, task, &self.task_template_context(name, task), true) {
                Ok(_) => return true,
                Err(missing) => {
                    if missing != reported {
                        self.event(name, "pending", false, "Template", &format!("Missing: {missing}"));
                        reported = missing;
                    }
                }
            }
            if self.stopping() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// What `task`'s templates see now: its environment and the data they read.
    fn task_template_context(&self, name: &str, task: &Value) -> TemplateContext {
        self.template_context(name, task, &task_env(&self.facts, task, &self.dirs, isolated(task)))
    }

    fn template_context(&self, name: &str, task: &Value, env: &BTreeMap<String, String>) -> TemplateContext {
        // Children of periodic and parameterized jobs carry their parent's workload identity.
        let job = self.facts.job["ParentID"].as_str().filter(|p| !p.is_empty()).unwrap_or(self.facts.job_id());
        let group = self.facts.group_name();
        let mut context = TemplateContext::for_task(job, group, name, self.facts.alloc_index as u32);
        context.env = env.clone();
        context.namespace = self.facts.namespace().to_string();
        let (variables, readable) = self.plane.variables_for(self.facts.namespace(), job, group, name);
        context.variables = variables;
        context.readable_variable_paths = readable;
        // Nomad gives a task a Consul token only when it or its group has a `consul` block.
        context.consul_token = !task["Consul"].is_null() || !self.facts.group["Consul"].is_null() || !self.plane.consul_acls();
        // Every instance of every service, whatever its health: the engine filters as
        // consul-template's `service` does (passing only, unless asked).
        if list(task, "Templates").iter().any(|t| str_of(t, "EmbeddedTmpl").contains("service")) {
            context.services = self.plane.service_instances();
        }
        context
    }

    /// Whether the data `name`'s templates read (its variables, Consul's services, its
    /// environment) differ from the last time this was asked.
    fn template_inputs_changed(&self, name: &str, context: &TemplateContext) -> bool {
        let inputs = serde_json::to_string(context).unwrap_or_default();
        let mut seen = self.template_inputs.lock().unwrap();
        if seen.get(name) == Some(&inputs) {
            return false;
        }
        seen.insert(name.to_string(), inputs);
        true
    }

    /// A changed rendering of `name`'s waits for its template's quiescence.
    fn holds_changes(&self, name: &str) -> bool {
        self.held.lock().unwrap().keys().any(|(task, _)| task == name)
    }

    /// Renders the task's templates; writes the ones whose content changed. Ok(the change
    /// modes of the templates that changed), or Err(what blocks them).
    fn render_templates(&self, name: &str, task: &Value, context: &TemplateContext, first: bool) -> Result<Vec<Change>, String> {
        let mut blocked = Vec::new();
        let mut outputs = Vec::new();
        for template in list(task, "Templates") {
            match gotemplate::execute(template, context) {
                Ok(Rendered::Text(text)) => outputs.push((template.clone(), text)),
                Ok(Rendered::Blocked(missing)) => blocked.extend(missing),
                Err(error) => {
                    // A template error fails the task (Nomad: "Template failed: …").
                    self.event(name, "dead", true, "Killing", &format!("Template failed: {error}"));
                    blocked.push(format!("template error: {error}"));
                }
            }
        }
        if !blocked.is_empty() {
            return Err(blocked.join(", "));
        }
        let mut changed = Vec::new();
        let mut rendered = self.rendered.lock().unwrap();
        let mut held = self.held.lock().unwrap();
        for (template, text) in outputs {
            let dest = str_of(&template, "DestPath").to_string();
            let key = (name.to_string(), dest.clone());
            if rendered.get(&key) == Some(&text) {
                held.remove(&key);
                continue;
            }
            // consul-template's quiescence: write once the data stayed the same for `min`, or
            // `max` after the first change at the latest.
            if !first {
                let now = Instant::now();
                let (min, max) = template_wait(&template);
                let entry = held.entry(key.clone()).or_insert_with(|| (text.clone(), now, now));
                if entry.0 != text {
                    entry.0 = text.clone();
                    entry.2 = now;
                }
                if now.duration_since(entry.2) < min && now.duration_since(entry.1) < max {
                    continue;
                }
                held.remove(&key);
            }
            let path = self.dirs.destination(name, &dest);
            write_template(&path, &text, &template).map_err(|e| format!("writing {dest}: {e}"))?;
            rendered.insert(key, text);
            if !first {
                changed.push(Change {
                    mode: str_of(&template, "ChangeMode").to_string(),
                    signal: str_of(&template, "ChangeSignal").to_string(),
                    splay: duration(&template["Splay"], Duration::ZERO),
                });
            }
        }
        Ok(changed)
    }

    /// The environment a task starts with: its own plus the `env = true` templates' files.
    fn full_env(&self, task: &Value) -> BTreeMap<String, String> {
        let name = str_of(task, "Name");
        let mut env = task_env(&self.facts, task, &self.dirs, isolated(task));
        for template in list(task, "Templates").iter().filter(|t| t["Envvars"].as_bool().unwrap_or(false)) {
            let path = self.dirs.destination(name, str_of(template, "DestPath"));
            if let Ok(text) = std::fs::read_to_string(path) {
                env.extend(parse_env_file(&text));
            }
        }
        env
    }

    fn volume_mounts(&self, task: &Value) -> Result<Vec<String>, String> {
        let mut mounts = Vec::new();
        for mount in list(task, "VolumeMounts") {
            let volume_name = str_of(mount, "Volume");
            let request = &self.facts.group["Volumes"][volume_name];
            let source = str_of(request, "Source");
            let host_path = match str_of(request, "Type") {
                "host" => self
                    .node
                    .host_volumes
                    .get(source)
                    .cloned()
                    .ok_or_else(|| format!("host volume {source} is not on node {}", self.node.name))?,
                "csi" => {
                    let id = if request["PerAlloc"].as_bool().unwrap_or(false) {
                        format!("{source}[{}]", self.facts.alloc_index)
                    } else {
                        source.to_string()
                    };
                    let path = self.node.csi_volume_path(&id);
                    std::fs::create_dir_all(&path).map_err(|e| format!("staging CSI volume {id}: {e}"))?;
                    path
                }
                other => return Err(format!("volume type {other} is not supported by this client")),
            };
            let read_only = mount["ReadOnly"].as_bool().unwrap_or(false) || request["ReadOnly"].as_bool().unwrap_or(false);
            mounts.push(format!("{}:{}{}", host_path.display(), str_of(mount, "Destination"), if read_only { ":ro" } else { "" }));
        }
        Ok(mounts)
    }

    fn start_task(&self, task: &Value) -> Result<Handle, String> {
        let name = str_of(task, "Name");
        match str_of(task, "Driver") {
            "docker" => self.start_container(task).map(Handle::Container),
            "exec" => self.start_process(task, Isolation::Chroot).map(Handle::Process),
            "raw_exec" => self.start_process(task, Isolation::None).map(Handle::Process),
            other => {
                let message = format!("driver {other} is not run by this client yet");
                self.event(name, "dead", true, "Driver Failure", &message);
                Err(message)
            }
        }
    }

    /// An exec or raw_exec task: a process in the allocation's network namespace (see exec.rs).
    fn start_process(&self, task: &Value, isolation: Isolation) -> Result<Arc<ExecTask>, String> {
        let name = str_of(task, "Name");
        let fail = |message: String| {
            self.event(name, "dead", true, "Driver Failure", &message);
            message
        };
        let env = self.full_env(task);
        let config = &task["Config"];
        let command = config["command"].as_str().map(|c| interpolate(c, &env)).ok_or_else(|| fail("task config has no command".into()))?;
        let args: Vec<String> =
            config["args"].as_array().into_iter().flatten().map(|a| interpolate(a.as_str().unwrap_or_default(), &env)).collect();
        // exec runs as `nobody` unless told otherwise, and the client's default
        // `user.denylist` refuses root for it; raw_exec runs as the agent's user.
        let user_name = match (str_of(task, "User"), isolation) {
            ("", Isolation::Chroot) => "nobody",
            ("", Isolation::None) => "",
            (user, _) => user,
        };
        if isolation == Isolation::Chroot && matches!(user_name, "root" | "0") {
            return Err(fail(format!("running as user {user_name:?} is disallowed for exec drivers")));
        }
        let node_root = self.node.rootfs.clone();
        let user = match user_name {
            "" => None,
            user => {
                Some(exec::lookup_user(&node_root, user).ok_or_else(|| fail(format!("failed to identify user {user:?}: unknown user")))?)
            }
        };
        let netns = if self.facts.bridge() {
            let pid = docker::run(&["inspect", "--format", "{{.State.Pid}}", &self.pause_name()]).map_err(fail)?;
            Some(PathBuf::from(format!("/proc/{pid}/ns/net")))
        } else {
            None
        };
        // raw_exec has no mount support (MountConfigSupportNone): Nomad's volume hook fails a
        // task of it that mounts a host volume, and its CSI hook a group where no task can.
        if isolation == Isolation::None {
            for mount in list(task, "VolumeMounts") {
                let request = &self.facts.group["Volumes"][str_of(mount, "Volume")];
                return Err(fail(match str_of(request, "Type") {
                    "csi" => "no task supports CSI".to_string(),
                    _ => format!("task driver \"raw_exec\" for {name:?} does not support host volumes"),
                }));
            }
        }
        let mounts = self.volume_mounts(task)?.into_iter().map(|m| {
            let read_only = m.ends_with(":ro");
            let m = m.trim_end_matches(":ro");
            let (source, destination) = m.split_once(':').unwrap_or((m, m));
            (PathBuf::from(source), destination.to_string(), read_only)
        });
        let logs = self.dirs.shared().join("logs");
        let spec = ExecSpec {
            task: name.to_string(),
            isolation,
            command,
            args,
            env,
            user,
            node_root,
            task_dir: self.dirs.task(name),
            alloc_dir: self.dirs.shared(),
            mounts: mounts.collect(),
            netns,
            resolv_conf: self.node.root.join("resolv.conf"),
            stdout: logs.join(format!("{name}.stdout.0")),
            stderr: logs.join(format!("{name}.stderr.0")),
        };
        let process = Arc::new(ExecTask::new(spec));
        process.start().map_err(fail)?;
        self.node.processes.lock().unwrap().insert((self.facts.alloc_id.clone(), name.to_string()), process.clone());
        Ok(process)
    }

    fn start_container(&self, task: &Value) -> Result<String, String> {
        let name = str_of(task, "Name");
        let container = self.container_name(name);
        docker::remove(&container);
        let env = self.full_env(task);
        let config = &task["Config"];
        let mut args: Vec<String> = vec![
            "run".into(),
            "--detach".into(),
            "--name".into(),
            container.clone(),
            "--label".into(),
            format!("{}={}", docker::LABEL, self.node.cluster_id),
            "--label".into(),
            format!("pgnomad.double.alloc={}", self.facts.alloc_id),
            "--label".into(),
            format!("pgnomad.double.node={}", self.node.name),
            "--stop-signal".into(),
            task["KillSignal"].as_str().filter(|s| !s.is_empty()).unwrap_or("SIGTERM").into(),
            "--memory".into(),
            format!("{}m", task["Resources"]["MemoryMB"].as_u64().unwrap_or(300).max(16)),
        ];
        if self.facts.bridge() {
            args.push("--network".into());
            args.push(format!("container:{}", self.pause_name()));
        } else {
            args.push("--network".into());
            args.push(self.node.docker_network.clone());
            args.push("--dns".into());
            args.push(self.node.dns.clone());
        }
        if !str_of(task, "User").is_empty() {
            args.push("--user".into());
            args.push(str_of(task, "User").into());
        }
        args.push("--volume".into());
        args.push(format!("{}:/alloc", self.dirs.shared().display()));
        args.push("--volume".into());
        args.push(format!("{}:/local", self.dirs.local(name).display()));
        args.push("--volume".into());
        args.push(format!("{}:/secrets", self.dirs.secrets(name).display()));
        for mount in self.volume_mounts(task)? {
            args.push("--volume".into());
            args.push(mount);
        }
        for (key, value) in &env {
            args.push("--env".into());
            args.push(format!("{key}={value}"));
        }
        let command = config["command"].as_str().map(|c| interpolate(c, &env));
        if let Some(command) = &command {
            args.push("--entrypoint".into());
            args.push(command.clone());
        }
        let image = config["image"].as_str().ok_or("task config has no image")?;
        args.push(image.to_string());
        for arg in config["args"].as_array().into_iter().flatten() {
            args.push(interpolate(arg.as_str().unwrap_or_default(), &env));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker::run(&args).map_err(|e| {
            let message = format!("failed to create container: {e}");
            self.event(name, "dead", true, "Driver Failure", &message);
            message
        })?;
        Ok(container)
    }

    /// A prestart task that must finish: exit 0 moves on, anything else follows the restart
    /// policy and in the end fails the allocation.
    fn wait_for_exit(&self, name: &str, task: &Value, container: &Handle) -> Result<(), String> {
        let policy = self.restart_policy(task);
        let mut attempts = 0;
        loop {
            let Some(exit_code) = wait_until_exited(container, &self.control) else { return Err("stopped".into()) };
            if exit_code == 0 {
                self.event(name, "dead", false, "Terminated", "Exit Code: 0");
                return Ok(());
            }
            let logs = container.logs_tail(20);
            self.event(name, "dead", false, "Terminated", &format!("Exit Code: {exit_code}, output: {}", logs.trim()));
            attempts += 1;
            if attempts > policy.attempts {
                self.event(name, "dead", true, "Not Restarting", "Exceeded allowed attempts");
                return Err(format!("prestart task {name} failed"));
            }
            self.event(name, "pending", false, "Restarting", &format!("Task restarting in {:?}", policy.delay));
            std::thread::sleep(policy.delay);
            container.restart().map_err(|e| format!("restarting {name}: {e}"))?;
        }
    }

    fn restart_policy(&self, task: &Value) -> RestartPolicy {
        let policy = if task["RestartPolicy"].is_object() { &task["RestartPolicy"] } else { &self.facts.group["RestartPolicy"] };
        // Registration gave every task its policy (nomad_double::ops::with_defaults, as api
        // TaskGroup.Canonicalize); the same defaults here serve a job put in some other way.
        let batch = matches!(self.facts.job["Type"].as_str(), Some("batch" | "sysbatch"));
        let (attempts, interval) = if batch { (3, Duration::from_secs(24 * 3600)) } else { (2, Duration::from_secs(1800)) };
        RestartPolicy {
            attempts: policy["Attempts"].as_u64().unwrap_or(attempts) as u32,
            interval: duration(&policy["Interval"], interval),
            // Real time, not the double's deployment scale: a restart faster than Patroni's
            // ttl would keep the old leader where Nomad would have let a replica take over.
            delay: duration(&policy["Delay"], Duration::from_secs(15)),
            mode_fail: matches!(str_of(policy, "Mode"), "fail" | ""),
        }
    }

    /// Watches the tasks and the templates until the allocation is told to stop.
    fn supervise(&self, running: &mut Vec<Running>) -> Result<(), String> {
        // Batch tasks that finish with exit 0 are done (a service task that exits restarts).
        let batch = matches!(self.facts.job["Type"].as_str(), Some("batch" | "sysbatch"));
        let mut seen = 0;
        while !self.stopping() {
            let mut finished = Vec::new();
            for (i, task) in running.iter_mut().enumerate() {
                let Some(exit) = task.container.exit_code() else { continue };
                let logs = task.container.logs_tail(15);
                let message = format!("Exit Code: {exit}, output: {}", logs.trim());
                if batch && exit == 0 {
                    self.event(&task.name, "dead", false, "Terminated", &message);
                    finished.push(i);
                    continue;
                }
                let policy = self.restart_policy(&task.task);
                if task.restart_window_start.elapsed() > policy.interval {
                    task.restart_window_start = Instant::now();
                    task.restarts = 0;
                }
                task.restarts += 1;
                if task.restarts > policy.attempts && policy.mode_fail {
                    self.event(&task.name, "running", false, "Terminated", &message);
                    self.event(&task.name, "dead", true, "Not Restarting", "Exceeded allowed attempts, applying a delay");
                    return Err(format!("task {} failed: {message}", task.name));
                }
                // The task runner records the exit, then restarts: the task is not dead between.
                self.event(&task.name, "running", false, "Terminated", &message);
                // mode = "delay": past the attempts, wait for the interval to end, then start over.
                let delay = if task.restarts > policy.attempts {
                    task.restarts = 0;
                    let left = policy.interval.saturating_sub(task.restart_window_start.elapsed());
                    task.restart_window_start = Instant::now() + left;
                    left.max(policy.delay)
                } else {
                    policy.delay
                };
                self.event(&task.name, "pending", false, "Restarting", &format!("Task restarting in {delay:?}"));
                if !sleep_unless_stopped(delay, &self.control) {
                    return Ok(());
                }
                task.container.restart().map_err(|e| format!("restarting {}: {e}", task.name))?;
                task.started = Instant::now();
                self.event(&task.name, "running", false, "Started", "Task started by client");
            }
            for i in finished.into_iter().rev() {
                running.remove(i);
            }
            // Every main task of a batch allocation is done: the sidecars are stopped with it.
            if batch && !running.iter().any(|t| phase(&t.task) == Phase::Main) {
                return Ok(());
            }
            // Task exits every 100 ms; templates also as soon as the servers' data change.
            self.rerender_templates(running);
            let round_ends = Instant::now() + Duration::from_millis(100);
            while let Some(left) = round_ends.checked_duration_since(Instant::now()).filter(|l| !l.is_zero()) {
                let index = self.plane.wait_for_change(seen, left);
                if index != seen {
                    seen = index;
                    self.rerender_templates(running);
                }
            }
        }
        Ok(())
    }

    /// consul-template's blocking queries return as soon as the data change: re-renders a
    /// task's templates when what they read changed, or when a held change is due.
    fn rerender_templates(&self, running: &[Running]) {
        for task in running.iter().filter(|t| !list(&t.task, "Templates").is_empty()) {
            let context = self.task_template_context(&task.name, &task.task);
            if !self.template_inputs_changed(&task.name, &context) && !self.holds_changes(&task.name) {
                continue;
            }
            match self.render_templates(&task.name, &task.task, &context, false) {
                Ok(changes) => self.apply_changes(task, &changes),
                Err(_) => {} // a dependency went away: Nomad keeps the last rendering
            }
        }
    }

    /// change_mode of re-rendered templates: signal, restart or nothing, after a random
    /// delay up to the longest splay among them, as Nomad's template manager does
    /// (onTemplateRendered; its loop waits too, and so does this one).
    fn apply_changes(&self, task: &Running, changes: &[Change]) {
        if !changes.iter().any(|c| matches!(c.mode.as_str(), "restart" | "signal")) {
            return;
        }
        let splay = changes.iter().map(|c| c.splay).max().unwrap_or_default();
        if !splay.is_zero() {
            use rand::Rng;
            let delay = Duration::from_nanos(rand::rng().random_range(0..splay.as_nanos() as u64));
            if !sleep_unless_stopped(delay, &self.control) {
                return;
            }
        }
        if changes.iter().any(|c| c.mode == "restart") {
            self.event(&task.name, "running", false, "Restart Signaled", "Template with change_mode restart re-rendered");
            task.container.stop(kill_signal(&task.task), Duration::from_secs(5));
            let _ = task.container.restart();
            return;
        }
        for change in changes.iter().filter(|c| c.mode == "signal") {
            self.event(&task.name, "running", false, "Signaling", &format!("Template re-rendered: {}", change.signal));
            let _ = task.container.signal(&change.signal);
        }
    }

    /// Kills every running task with its kill signal, waits up to its kill timeout (capped at
    /// max_kill_timeout), then removes it.
    fn stop_all(&self, running: Vec<Running>) -> Result<(), String> {
        let lost = self.control.lost.load(Ordering::SeqCst);
        // Poststart and sidecars go last in Nomad's order: main tasks first, then the rest.
        for task in running.iter().rev() {
            if !lost {
                self.event(&task.name, "running", false, "Killing", "Sent interrupt");
            }
            let timeout = duration(&task.task["KillTimeout"], Duration::from_secs(5)).min(MAX_KILL_TIMEOUT);
            let seconds = if lost { 0 } else { timeout.as_secs().max(1) };
            task.container.stop(kill_signal(&task.task), Duration::from_secs(seconds));
            if !lost {
                self.event(&task.name, "dead", false, "Killed", "Task successfully killed");
            }
        }
        Ok(())
    }

    fn cleanup(&self) {
        self.node.processes.lock().unwrap().retain(|(alloc, _), process| {
            if alloc == &self.facts.alloc_id {
                process.kill();
            }
            alloc != &self.facts.alloc_id
        });
        for task in self.tasks() {
            let name = str_of(&task, "Name");
            let container = self.container_name(name);
            // The alloc dir keeps a task's logs after it is gone, as Nomad's docker logger
            // writes them there (`nomad alloc logs` of a finished batch job reads them).
            let logs = self.dirs.shared().join("logs");
            if let (Some(out), Some(err)) = (docker::logs(&container, "stdout"), docker::logs(&container, "stderr")) {
                let _ = std::fs::create_dir_all(&logs);
                let _ = std::fs::write(logs.join(format!("{name}.stdout.0")), out);
                let _ = std::fs::write(logs.join(format!("{name}.stderr.0")), err);
            }
            docker::remove(&container);
        }
        docker::unmap_ports(&self.port_map_tag());
        docker::remove(&self.pause_name());
    }

    /// One thread per service check, probing the mapped port from the host, as the Consul agent
    /// does; results go to the control plane. Returns the flag that stops them.
    fn start_checks(self: Arc<Self>) -> Arc<AtomicBool> {
        let done = Arc::new(AtomicBool::new(false));
        let mut services: Vec<(Value, String)> = list(&self.facts.group, "Services").iter().map(|s| (s.clone(), String::new())).collect();
        for task in self.tasks() {
            for service in list(&task, "Services") {
                services.push((service.clone(), str_of(&task, "Name").to_string()));
            }
        }
        for (service, task) in services {
            // The name the double keys check results by, interpolated as Nomad registers it.
            let job_name = self.facts.job["Name"].as_str().unwrap_or(self.facts.job_id());
            let service_name = interpolate_service_name(str_of(&service, "Name"), job_name, self.facts.group_name(), &task);
            for check in list(&service, "Checks").iter().cloned() {
                let runner = self.clone();
                let done = done.clone();
                let service_name = service_name.clone();
                let service = service.clone();
                std::thread::spawn(move || runner.run_check(&service, &service_name, &check, &done));
            }
        }
        done
    }

    fn run_check(&self, service: &Value, service_name: &str, check: &Value, done: &AtomicBool) {
        let label = match str_of(check, "PortLabel") {
            "" => str_of(service, "PortLabel"),
            label => label,
        };
        let Some(port) = self.facts.ports.iter().find(|p| p.label == label) else { return };
        let interval = duration(&check["Interval"], Duration::from_secs(10)).max(Duration::from_millis(200));
        let timeout = duration(&check["Timeout"], Duration::from_secs(2));
        let address = format!("{}:{}", port.host_ip, port.value);
        let check_name = str_of(check, "Name").to_string();
        while !done.load(Ordering::SeqCst) && !self.stopping() {
            let (passing, output) = match str_of(check, "Type") {
                "http" => http_check(&address, str_of(check, "Path"), timeout),
                "tcp" => match std::net::TcpStream::connect_timeout(&address.parse().unwrap(), timeout) {
                    Ok(_) => (true, format!("TCP connect {address}: Success")),
                    Err(e) => (false, format!("dial tcp {address}: {e}")),
                },
                other => (false, format!("check type {other} is not run by this client")),
            };
            self.plane.check_status(&self.facts.alloc_id, service_name, &check_name, passing, &output);
            let until = Instant::now() + interval;
            while Instant::now() < until && !done.load(Ordering::SeqCst) && !self.stopping() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// A re-rendered template's change_mode, change_signal and splay.
struct Change {
    mode: String,
    signal: String,
    splay: Duration,
}

struct RestartPolicy {
    attempts: u32,
    interval: Duration,
    delay: Duration,
    mode_fail: bool,
}

fn wait_until_exited(handle: &Handle, control: &Control) -> Option<i64> {
    loop {
        if control.stop.load(Ordering::SeqCst) || control.lost.load(Ordering::SeqCst) {
            return None;
        }
        match handle.exit_code() {
            Some(code) => return Some(code),
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Drivers with filesystem isolation (docker, exec) show the task the allocation directory at
/// /alloc, /local, /secrets; raw_exec shows the host paths (task_dir_hook.go).
fn isolated(task: &Value) -> bool {
    str_of(task, "Driver") != "raw_exec"
}

fn kill_signal(task: &Value) -> &str {
    task["KillSignal"].as_str().filter(|s| !s.is_empty()).unwrap_or("SIGTERM")
}

fn sleep_unless_stopped(delay: Duration, control: &Control) -> bool {
    let until = Instant::now() + delay;
    while Instant::now() < until {
        if control.stop.load(Ordering::SeqCst) || control.lost.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// A template's file, with its perms and owner (Nomad's defaults: 0644, the agent's user).
fn write_template(path: &std::path::Path, text: &str, template: &Value) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let temp = path.with_extension("pgnomad-tmp");
    std::fs::write(&temp, text)?;
    let perms = u32::from_str_radix(template["Perms"].as_str().filter(|p| !p.is_empty()).unwrap_or("0644"), 8).unwrap_or(0o644);
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(perms))?;
    let uid = template["Uid"].as_i64().filter(|u| *u >= 0).map(|u| u as u32);
    let gid = template["Gid"].as_i64().filter(|g| *g >= 0).map(|g| g as u32);
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::chown(&temp, uid, gid)?;
    }
    std::fs::rename(&temp, path)
}

/// Consul's HTTP check: 2xx passing, 429 warning (counted as not passing here), else critical.
fn http_check(address: &str, path: &str, timeout: Duration) -> (bool, String) {
    use std::io::{Read, Write};
    let socket: std::net::SocketAddr = match address.parse() {
        Ok(s) => s,
        Err(e) => return (false, format!("bad address {address}: {e}")),
    };
    let attempt = || -> std::io::Result<u16> {
        let mut stream = std::net::TcpStream::connect_timeout(&socket, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        write!(
            stream,
            "GET {} HTTP/1.0\r\nHost: {address}\r\nUser-Agent: Consul Health Check\r\n\r\n",
            if path.is_empty() { "/" } else { path }
        )?;
        let mut head = [0u8; 64];
        let n = stream.read(&mut head)?;
        let line = String::from_utf8_lossy(&head[..n]);
        line.split_whitespace().nth(1).and_then(|code| code.parse().ok()).ok_or_else(|| std::io::Error::other("no HTTP status line"))
    };
    match attempt() {
        Ok(code) if (200..300).contains(&code) => (true, format!("HTTP GET http://{address}{path}: {code} OK")),
        Ok(code) => (false, format!("HTTP GET http://{address}{path}: {code}")),
        Err(e) => (false, format!("Get \"http://{address}{path}\": {e}")),
    }
}

pub fn alloc_root(node_root: &std::path::Path, alloc_id: &str) -> PathBuf {
    node_root.join("allocs").join(alloc_id)
}

/// A task's stdout or stderr as its node keeps it: the live container's while it exists,
/// else the alloc dir's `alloc/logs/<task>.<kind>.0` (exec tasks write there directly).
pub fn task_log(node_root: &std::path::Path, alloc_id: &str, group: &str, task: &str, kind: &str) -> Option<Vec<u8>> {
    let file = alloc_root(node_root, alloc_id).join("alloc/logs").join(format!("{task}.{kind}.0"));
    if let Ok(bytes) = std::fs::read(&file) {
        return Some(bytes);
    }
    let container = format!("{task}-{group}-{}", &alloc_id[..alloc_id.len().min(8)]);
    docker::logs(&container, kind).or_else(|| std::fs::read(&file).ok())
}
