//! `plan`, `run`, `status`, `destroy` end to end: the real binary against the Nomad and Consul
//! doubles, with the real rendered jobs.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};

use crate::stack_fixtures::DEFAULT;
use crate::support::consul_double::ConsulDouble;
use crate::support::jobs::simple_job;
use crate::support::nomad_double::RecordedRequest;
use crate::support::{Fault, NomadDouble};

/// A fresh double, its Consul, and a directory holding the default stack file.
struct Lab {
    nomad: NomadDouble,
    consul: ConsulDouble,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Self {
        Self::with_stack(DEFAULT)
    }

    fn with_stack(stack: &str) -> Self {
        let nomad = NomadDouble::start();
        let consul = nomad.start_consul();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pgnomad.hcl"), stack).unwrap();
        Lab { nomad, consul, dir }
    }

    fn pgnomad(&self, args: &[&str]) -> Output {
        pgnomad_at(self.dir.path(), &self.nomad.address(), &self.consul.address(), args)
    }

    /// Writes of the cluster's kinds, in order: `var <path>`, `volume <id>`, `job <id>`.
    fn write_log(&self) -> Vec<String> {
        self.nomad.writes().iter().filter_map(describe_write).collect()
    }

    fn variable(&self, path: &str) -> Value {
        let client = self.nomad.client();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let variable = runtime.block_on(client.read_variable(path)).unwrap().expect("the variable exists");
        serde_json::to_value(variable.items).unwrap()
    }
}

pub fn pgnomad_at(dir: &Path, nomad: &str, consul: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgnomad"))
        .args(args)
        .current_dir(dir)
        .env("NOMAD_ADDR", nomad)
        .env("CONSUL_HTTP_ADDR", consul)
        .env_remove("NOMAD_TOKEN")
        .env_remove("NOMAD_NAMESPACE")
        .env_remove("NOMAD_REGION")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("PGNOMAD_PATRONI_CONSUL_TOKEN")
        .output()
        .expect("pgnomad runs")
}

fn describe_write(request: &RecordedRequest) -> Option<String> {
    let path = request.path.as_str();
    if let Some(var) = path.strip_prefix("/v1/var/") {
        Some(format!("{} var {var}", request.method))
    } else if let Some(rest) = path.strip_prefix("/v1/volume/csi/") {
        Some(format!("{} volume {}", request.method, rest.trim_end_matches("/create")))
    } else if path == "/v1/jobs" {
        Some(format!("register {}", request.body.as_ref()?["Job"]["ID"].as_str()?))
    } else if request.method == "DELETE" && path.starts_with("/v1/job/") {
        Some(format!("deregister {}", &path["/v1/job/".len()..]))
    } else {
        None
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn code(output: &Output) -> Option<i32> {
    output.status.code()
}

fn show(output: &Output) -> String {
    format!("exit {:?}\n--- stdout\n{}--- stderr\n{}", output.status.code(), text(&output.stdout), text(&output.stderr))
}

const JOBS_IN_ORDER: [&str; 6] = ["main-postgres", "main-pgbouncer", "main-pgadmin", "main-backup-full", "main-backup-diff", "main-backup-incr"];

#[test]
fn plan_run_status_plan_destroy_on_a_fresh_cluster() {
    let lab = Lab::new();
    let plan = lab.pgnomad(&["plan"]);
    assert_eq!(code(&plan), Some(1), "a fresh cluster has changes\n{}", show(&plan));
    let plan_text = text(&plan.stdout);
    assert!(plan_text.contains("+ Job: \"main-postgres\""), "{plan_text}");
    assert!(plan_text.contains("main-member-0: + create"), "{plan_text}");
    assert!(lab.nomad.writes().iter().all(|w| w.path.ends_with("/plan")), "plan writes nothing: {:?}", lab.write_log());

    let run = lab.pgnomad(&["run"]);
    assert_eq!(code(&run), Some(0), "{}", show(&run));
    let log = lab.write_log();
    let mut expected: Vec<String> = JOBS_IN_ORDER.iter().map(|j| format!("PUT var nomad/jobs/{j}")).collect();
    expected.extend((0..3).map(|i| format!("PUT volume main-member-{i}")));
    expected.extend(JOBS_IN_ORDER.iter().map(|j| format!("register {j}")));
    assert_eq!(log, expected, "secrets, volumes, postgres, pgbouncer, pgadmin, backups");
    let register_bodies: Vec<&RecordedRequest> = lab.nomad.writes().iter().filter(|w| w.path == "/v1/jobs").cloned().collect::<Vec<_>>().leak().iter().collect();
    for body in register_bodies {
        let body = body.body.as_ref().unwrap();
        assert_eq!(body["EnforceIndex"], json!(true));
        assert_eq!(body["JobModifyIndex"], json!(0), "new jobs must not exist yet");
        assert_eq!(body["Job"]["Meta"]["pgnomad_cluster"], json!("main"));
    }
    // Shared secrets are the same in every job that reads them.
    let postgres = lab.variable("nomad/jobs/main-postgres");
    let pgbouncer = lab.variable("nomad/jobs/main-pgbouncer");
    let backup = lab.variable("nomad/jobs/main-backup-full");
    assert_eq!(postgres["pgbouncer_auth_password"], pgbouncer["pgbouncer_auth_password"]);
    assert_eq!(postgres["tls_ca_crt"], backup["tls_ca_crt"]);
    assert_eq!(postgres["repo_cipher_pass"], backup["repo_cipher_pass"]);
    assert_eq!(postgres["consul_token"], json!(""));
    assert!(text(&run.stderr).contains("consul_token is empty"), "{}", show(&run));
    let stdout = text(&run.stdout) + &text(&run.stderr);
    for secret in [postgres["superuser_password"].as_str().unwrap(), pgbouncer["pgbouncer_auth_password"].as_str().unwrap()] {
        assert!(!stdout.contains(secret), "a secret value was printed");
    }

    let status = lab.pgnomad(&["status", "--json"]);
    assert_eq!(code(&status), Some(0), "{}", show(&status));
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["jobs"][0]["status"], json!("running"));
    assert_eq!(status["jobs"][0]["deployment"]["status"], json!("successful"));
    assert_eq!(status["members"][0]["consul_passing"], json!({"known": true}));
    assert_eq!(status["members"][0]["role"], json!({"known": "leader (from Consul)"}));
    assert!(status["patroni"]["unknown"].as_str().unwrap().contains("no Patroni REST API answered"), "{status}");
    assert_eq!(status["pgbouncer"]["known"].as_array().unwrap().len(), 2);
    let human = lab.pgnomad(&["status"]);
    assert!(text(&human.stdout).contains("member-1: allocation running, Consul passing, role unknown ("), "{}", show(&human));

    let again = lab.pgnomad(&["plan"]);
    assert_eq!(code(&again), Some(0), "an unchanged stack plans no changes\n{}", show(&again));

    let writes_before = lab.nomad.writes().len();
    let rerun = lab.pgnomad(&["run"]);
    assert_eq!(code(&rerun), Some(0), "{}", show(&rerun));
    let new_writes: Vec<String> = lab.nomad.writes()[writes_before..].iter().filter_map(describe_write).collect();
    assert!(new_writes.is_empty(), "a re-run writes nothing: {new_writes:?}");
    assert!(text(&rerun.stdout).contains("up to date"), "{}", show(&rerun));

    let refused = lab.pgnomad(&["destroy"]);
    assert_eq!(code(&refused), Some(1), "no terminal and no --yes: refuse\n{}", show(&refused));
    let destroy = lab.pgnomad(&["destroy", "--yes", "--purge"]);
    assert_eq!(code(&destroy), Some(0), "{}", show(&destroy));
    let deregistered: Vec<String> = lab.write_log().into_iter().filter(|w| w.starts_with("deregister")).collect();
    assert_eq!(deregistered.len(), 6, "{deregistered:?}");
    assert_eq!(deregistered.last().unwrap(), "deregister main-postgres", "postgres goes last");
    // Volumes and secrets are kept.
    assert!(!lab.write_log().iter().any(|w| w.starts_with("DELETE")), "{:?}", lab.write_log());
}
