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

/// The binary in `dir`, pointed at these Nomad and Consul addresses, with none of the
/// caller's own Nomad, AWS or Patroni settings leaking in.
pub fn pgnomad_command(dir: &Path, nomad: &str, consul: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pgnomad"));
    command.args(args).current_dir(dir).env("NOMAD_ADDR", nomad).env("CONSUL_HTTP_ADDR", consul);
    for name in
        ["NOMAD_TOKEN", "NOMAD_NAMESPACE", "NOMAD_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "PGNOMAD_PATRONI_CONSUL_TOKEN"]
    {
        command.env_remove(name);
    }
    command
}

pub fn pgnomad_at(dir: &Path, nomad: &str, consul: &str, args: &[&str]) -> Output {
    pgnomad_command(dir, nomad, consul, args).output().expect("pgnomad runs")
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

const JOBS_IN_ORDER: [&str; 8] = [
    "main-repo",
    "main-postgres",
    "main-pgbouncer",
    "main-pgadmin",
    "main-backup-full",
    "main-backup-diff",
    "main-backup-incr",
    "main-backup-ctl",
];

#[test]
fn plan_run_status_plan_destroy_on_a_fresh_cluster() {
    let lab = Lab::new();
    let plan = lab.pgnomad(&["plan"]);
    assert_eq!(code(&plan), Some(1), "a fresh cluster has changes\n{}", show(&plan));
    let plan_text = text(&plan.stdout);
    assert!(plan_text.contains("+ Job: \"main-postgres\""), "{plan_text}");
    assert!(plan_text.contains("main-member-0: + create"), "{plan_text}");
    // Nomad cannot place a member before its volume exists; the plan says run makes it first.
    assert!(
        plan_text.contains("cannot be placed now: missing CSI volume(s) main-member-0")
            && plan_text.contains("(run creates the volume first)"),
        "{plan_text}"
    );
    assert!(lab.nomad.writes().iter().all(|w| w.path.ends_with("/plan")), "plan writes nothing: {:?}", lab.write_log());

    let run = lab.pgnomad(&["run"]);
    assert_eq!(code(&run), Some(0), "{}", show(&run));
    let log = lab.write_log();
    // pgnomad's copy of the TLS set first, so an interrupted run can complete the set.
    let mut expected = vec!["PUT var pgnomad/main/tls".to_string()];
    expected.extend(JOBS_IN_ORDER.iter().map(|j| format!("PUT var nomad/jobs/{j}")));
    expected.extend((0..3).map(|i| format!("PUT volume main-member-{i}")));
    expected.extend(JOBS_IN_ORDER.iter().map(|j| format!("register {j}")));
    // What pgnomad registered (each job's content hash, its version), for the next plan.
    expected.push("PUT var pgnomad/main/state".to_string());
    assert_eq!(log, expected, "secrets, volumes, repository host, postgres, pgbouncer, pgadmin, backups, pgnomad's state");
    let register_bodies: Vec<&RecordedRequest> =
        lab.nomad.writes().iter().filter(|w| w.path == "/v1/jobs").cloned().collect::<Vec<_>>().leak().iter().collect();
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

    block_on(lab.nomad.client().force_periodic("main-backup-full")).unwrap();
    let status = lab.pgnomad(&["status", "--json"]);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(status["backups"][0]["last_run"].as_str().unwrap().starts_with("main-backup-full/periodic-"), "{status}");
    assert_eq!(status["backups"][1]["last_run"], Value::Null, "{status}");

    let again = lab.pgnomad(&["plan"]);
    assert_eq!(code(&again), Some(0), "an unchanged stack plans no changes\n{}", show(&again));

    let writes_before = lab.nomad.writes().len();
    let rerun = lab.pgnomad(&["run"]);
    assert_eq!(code(&rerun), Some(0), "{}", show(&rerun));
    assert!(text(&rerun.stdout).contains("up to date"), "{}", show(&rerun));
    let json_rerun = lab.pgnomad(&["run", "--json"]);
    let summary: Value = serde_json::from_slice(&json_rerun.stdout).expect("--json prints JSON");
    assert_eq!(summary["ok"], json!(true));
    assert!(summary["summary"]["jobs"].as_array().unwrap().iter().all(|j| j["action"] == "unchanged"), "{summary}");
    let new_writes: Vec<String> = lab.nomad.writes()[writes_before..].iter().filter_map(describe_write).collect();
    assert!(new_writes.is_empty(), "a re-run writes nothing: {new_writes:?}");

    let refused = lab.pgnomad(&["destroy"]);
    assert_eq!(code(&refused), Some(1), "no terminal and no --yes: refuse\n{}", show(&refused));
    let destroy = lab.pgnomad(&["destroy", "--yes", "--purge"]);
    assert_eq!(code(&destroy), Some(0), "{}", show(&destroy));
    let deregistered: Vec<String> = lab.write_log().into_iter().filter(|w| w.starts_with("deregister")).collect();
    // The forced backup's launch, then the eight jobs.
    assert_eq!(deregistered.len(), 9, "{deregistered:?}");
    assert!(deregistered[0].starts_with("deregister main-backup-full%2Fperiodic-"), "{deregistered:?}");
    assert_eq!(
        deregistered[7..],
        ["deregister main-postgres", "deregister main-repo"],
        "postgres, then the repository it archives to, go last"
    );
    // Volumes and secrets are kept.
    assert!(!lab.write_log().iter().any(|w| w.starts_with("DELETE")), "{:?}", lab.write_log());
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
}

#[test]
fn an_existing_secret_is_never_overwritten_and_its_missing_keys_are_added() {
    let lab = Lab::new();
    let client = lab.nomad.client();
    let kept = std::collections::BTreeMap::from([("superuser_password".to_string(), "kept-by-the-dba".to_string())]);
    block_on(client.put_variable("nomad/jobs/main-postgres", &kept, Some(0))).unwrap();
    let shared = std::collections::BTreeMap::from([("pgbouncer_auth_password".to_string(), "shared-auth".to_string())]);
    block_on(client.put_variable("nomad/jobs/main-pgbouncer", &shared, Some(0))).unwrap();

    let plan = lab.pgnomad(&["plan"]);
    let plan_text = text(&plan.stdout);
    assert!(plan_text.contains("nomad/jobs/main-postgres: +/- add replication_password"), "{plan_text}");
    assert!(plan_text.contains("nomad/jobs/main-pgbouncer:   up to date"), "{plan_text}");
    assert!(!plan_text.contains("kept-by-the-dba"));

    let run = lab.pgnomad(&["run"]);
    assert_eq!(code(&run), Some(0), "{}", show(&run));
    let postgres = lab.variable("nomad/jobs/main-postgres");
    assert_eq!(postgres["superuser_password"], json!("kept-by-the-dba"));
    assert_eq!(postgres["pgbouncer_auth_password"], json!("shared-auth"), "pooled from the pgbouncer variable");
    assert_eq!(postgres["replication_password"].as_str().unwrap().len(), 32);
    assert_eq!(lab.variable("nomad/jobs/main-pgbouncer"), json!({"pgbouncer_auth_password": "shared-auth"}));
    // The extension was a check-and-set on the variable's index; the pgbouncer variable was not written.
    let var_writes: Vec<RecordedRequest> = lab.nomad.writes().into_iter().filter(|w| w.path.starts_with("/v1/var/")).collect();
    let extension = var_writes.iter().find(|w| w.path.ends_with("main-postgres") && w.query.iter().any(|(k, v)| k == "cas" && v != "0"));
    assert!(extension.is_some(), "{var_writes:?}");
    assert!(!var_writes[2..].iter().any(|w| w.path.ends_with("main-pgbouncer")), "{var_writes:?}");
}

#[test]
fn a_clone_takes_its_sources_role_passwords_and_repository_keys_and_is_refused_without_them() {
    let lab = Lab::new();
    let clone = "cluster \"clone\" {}\nrestore {\n  from    = \"main\"\n  to_time = \"2026-12-01T10:42:07Z\"\n}\n";
    std::fs::write(lab.dir.path().join("clone.hcl"), clone).unwrap();

    // No source on this Nomad: refused before anything is written, naming what is missing.
    let refused = lab.pgnomad(&["run", "-f", "clone.hcl"]);
    assert_eq!(code(&refused), Some(1), "{}", show(&refused));
    let message = text(&refused.stderr);
    assert!(
        message.contains(
            "secret superuser_password is a copy of the restore source's superuser_password, and nomad/jobs/main-postgres has none"
        ),
        "{message}"
    );
    assert!(
        message.contains("secret restore_tls_client_key is a copy of the restore source's tls_client_key, and pgnomad/main/tls has none"),
        "{message}"
    );
    assert_eq!(message.matches("secret pgbouncer_auth_password is a copy").count(), 1, "named once, though two jobs read it: {message}");
    assert!(lab.write_log().is_empty(), "{:?}", lab.write_log());

    let run = lab.pgnomad(&["run"]);
    assert_eq!(code(&run), Some(0), "{}", show(&run));
    let run = lab.pgnomad(&["run", "-f", "clone.hcl"]);
    assert_eq!(code(&run), Some(0), "{}", show(&run));
    let (source, source_tls) = (lab.variable("nomad/jobs/main-postgres"), lab.variable("pgnomad/main/tls"));
    let (clone, clone_tls) = (lab.variable("nomad/jobs/clone-postgres"), lab.variable("pgnomad/clone/tls"));
    // The restored data holds the source's roles: their passwords are the source's.
    for key in ["superuser_password", "replication_password", "pgbouncer_auth_password", "rewind_password", "password_app"] {
        assert_eq!(clone[key], source[key], "{key}");
    }
    assert_eq!(lab.variable("nomad/jobs/clone-pgbouncer")["pgbouncer_auth_password"], source["pgbouncer_auth_password"]);
    // The source's repository is read with the source's keys; the clone's own are its own.
    assert_eq!(clone["restore_cipher_pass"], source["repo_cipher_pass"]);
    assert_eq!(clone["restore_tls_ca_crt"], source_tls["tls_ca_crt"]);
    assert_eq!(clone["restore_tls_client_crt"], source_tls["tls_client_crt"]);
    assert_eq!(clone["restore_tls_client_key"], source_tls["tls_client_key"]);
    assert_ne!(clone["repo_cipher_pass"], source["repo_cipher_pass"]);
    assert_ne!(clone_tls["tls_ca_crt"], source_tls["tls_ca_crt"]);
    assert_ne!(clone["patroni_rest_password"], Value::Null);
    assert_ne!(clone["patroni_rest_password"], source["patroni_rest_password"]);
}

#[test]
fn an_existing_volume_is_never_recreated() {
    let lab = Lab::new();
    let volume = crate::stack_fixtures::compile(DEFAULT).volumes[1].clone();
    block_on(lab.nomad.client().create_csi_volume(&serde_json::to_value(&volume).unwrap())).unwrap();
    let run = lab.pgnomad(&["run"]);
    assert_eq!(code(&run), Some(0), "{}", show(&run));
    let volume_writes: Vec<String> = lab.write_log().into_iter().filter(|w| w.contains("volume")).collect();
    assert_eq!(volume_writes, ["PUT volume main-member-1", "PUT volume main-member-0", "PUT volume main-member-2"]);
}

#[test]
fn a_job_changed_behind_pgnomads_back_is_detected_and_not_overwritten() {
    let lab = Lab::new();
    assert_eq!(code(&lab.pgnomad(&["run", "--detach"])), Some(0));

    // Changed by hand after pgnomad wrote it: a plain run refuses.
    lab.nomad.force_index_conflict("default", "main-pgbouncer");
    let registers = |lab: &Lab| lab.write_log().iter().filter(|w| w.starts_with("register")).count();
    let before = registers(&lab);
    let run = lab.pgnomad(&["run"]);
    assert_eq!(code(&run), Some(1), "{}", show(&run));
    assert!(text(&run.stderr).contains("main-pgbouncer was changed outside pgnomad"), "{}", show(&run));
    assert_eq!(registers(&lab), before, "nothing was registered");

    // Changed between `plan` and `run --check-index`: Nomad refuses the stale index.
    let plan = lab.pgnomad(&["plan", "--json"]);
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    let index = plan["jobs"].as_array().unwrap().iter().find(|j| j["id"] == "main-pgbouncer").unwrap()["check_index"].as_u64().unwrap();
    lab.nomad.force_index_conflict("default", "main-pgbouncer");
    let index_arg = index.to_string();
    let run = lab.pgnomad(&["run", "--job", "main-pgbouncer", "--check-index", &index_arg]);
    assert_eq!(code(&run), Some(1), "{}", show(&run));
    assert!(text(&run.stderr).contains("main-pgbouncer changed on the server since the plan"), "{}", show(&run));
    assert!(text(&run.stderr).contains("it was not overwritten"), "{}", show(&run));
    let meta = &lab.nomad.requests().iter().rev().find(|r| r.path == "/v1/jobs").unwrap().body.clone().unwrap();
    assert_eq!(meta["JobModifyIndex"], json!(index), "the plan's index was enforced");
}

#[test]
fn a_failed_deployment_exits_3_and_shows_the_task_events() {
    let lab = Lab::new();
    lab.nomad.fail_group("main-postgres", "member-1");
    let run = lab.pgnomad(&["run"]);
    assert_eq!(code(&run), Some(3), "{}", show(&run));
    let stderr = text(&run.stderr);
    assert!(stderr.contains("deployment") && stderr.contains("of main-postgres failed"), "{stderr}");
    assert!(stderr.contains("main-postgres.member-1[0] (failed)"), "{stderr}");
    assert!(stderr.contains("Driver Failure: failed to create container: simulated driver failure"), "{stderr}");
    assert!(!lab.write_log().iter().any(|w| w == "register main-pgbouncer"), "nothing after a failed postgres");
}

/// One fault at one step: the run stops with a clear report; the next run converges.
fn fault_then_rerun(fault: Fault, expect_in_stderr: &str, expect_code: i32) {
    let lab = Lab::new();
    lab.nomad.inject(fault.clone());
    let run = lab.pgnomad(&["run"]);
    assert_eq!(code(&run), Some(expect_code), "fault {fault:?}\n{}", show(&run));
    assert!(text(&run.stderr).contains(expect_in_stderr), "fault {fault:?}\n{}", show(&run));
    let rerun = lab.pgnomad(&["run"]);
    assert_eq!(code(&rerun), Some(0), "re-run after {fault:?}\n{}", show(&rerun));
    let plan = lab.pgnomad(&["plan"]);
    assert_eq!(code(&plan), Some(0), "converged after {fault:?}\n{}", show(&plan));
}

#[test]
fn a_server_error_on_each_write_stops_the_run_and_a_rerun_converges() {
    fault_then_rerun(
        Fault::status("PUT", "/v1/var/nomad/jobs/main-pgadmin", 503),
        "writing variable nomad/jobs/main-pgadmin: Nomad answered 503",
        2,
    );
    fault_then_rerun(Fault::status("PUT", "/v1/volume/csi/main-member-2", 500), "creating CSI volume main-member-2: Nomad answered 500", 2);
    fault_then_rerun(Fault::status("PUT", "/v1/jobs", 503), "registering main-repo: Nomad answered 503", 2);
}

#[test]
fn a_dropped_connection_stops_the_run_and_a_rerun_converges() {
    fault_then_rerun(Fault::drop_connection("PUT", "/v1/jobs"), "registering main-repo", 2);
    // Reads are retried: a dropped watch is invisible, four in a row are reported.
    fault_then_rerun(
        Fault::drop_connection("GET", "/v1/job/main-postgres/deployment").times(4),
        "watching the deployment of main-postgres",
        2,
    );
}

#[test]
fn no_leader_is_reported_with_a_hint_and_a_rerun_converges() {
    let lab = Lab::new();
    lab.nomad.set_leader(false);
    let run = lab.pgnomad(&["run"]);
    assert_eq!(code(&run), Some(2), "{}", show(&run));
    assert!(text(&run.stderr).contains("No cluster leader"), "{}", show(&run));
    assert!(text(&run.stderr).contains("hint: the Nomad servers have no leader"), "{}", show(&run));
    assert!(lab.write_log().is_empty());
    lab.nomad.set_leader(true);
    let rerun = lab.pgnomad(&["run"]);
    assert_eq!(code(&rerun), Some(0), "{}", show(&rerun));
}

#[test]
fn destroy_never_touches_a_job_pgnomad_does_not_own() {
    let lab = Lab::with_stack("cluster \"main\" {}\npgadmin {\n  enabled = false\n}\n");
    let client = lab.nomad.client();
    let options = pgnomad::nomad::api::RegisterOptions::default();
    block_on(client.register_job(&simple_job("main-postgres-old"), options)).unwrap();
    block_on(client.register_job(&simple_job("main-pgadmin"), options)).unwrap();
    assert_eq!(code(&lab.pgnomad(&["run", "--detach"])), Some(0));

    // With pgAdmin in the stack, its ID is taken by a job pgnomad did not make.
    std::fs::write(lab.dir.path().join("pgnomad.hcl"), DEFAULT).unwrap();
    let plan = lab.pgnomad(&["plan"]);
    assert_eq!(code(&plan), Some(255), "{}", show(&plan));
    assert!(text(&plan.stdout).contains("job main-pgadmin exists but was not created by pgnomad"), "{}", show(&plan));
    let run = lab.pgnomad(&["run"]);
    assert_eq!(code(&run), Some(1), "{}", show(&run));

    let destroy = lab.pgnomad(&["destroy", "--yes", "--delete-secrets", "--delete-volumes"]);
    assert_eq!(code(&destroy), Some(0), "{}", show(&destroy));
    assert!(text(&destroy.stderr).contains("main-pgadmin — it has no pgnomad_cluster meta"), "{}", show(&destroy));
    let log = lab.write_log();
    let deregistered: Vec<&String> = log.iter().filter(|w| w.starts_with("deregister")).collect();
    assert_eq!(deregistered.len(), 7, "{log:?}");
    assert!(!deregistered.iter().any(|w| w.contains("main-postgres-old") || *w == "deregister main-pgadmin"), "{log:?}");
    let deleted: Vec<&String> = log.iter().filter(|w| w.starts_with("DELETE")).collect();
    assert_eq!(deleted.len(), 7 + 1 + 1 + 3, "seven job variables, the TLS store, pgnomad's state and three volumes: {deleted:?}");
    assert!(deleted.iter().any(|w| w.contains("pgnomad/main/state")), "{deleted:?}");
    let jobs = block_on(client.list_jobs(Some("main-"))).unwrap();
    let alive: Vec<&str> = jobs.iter().filter(|j| !j.stop).map(|j| j.id.as_str()).collect();
    assert_eq!(alive, ["main-pgadmin", "main-postgres-old"]);
}

#[test]
fn status_without_consul_says_what_is_unknown_and_why() {
    let lab = Lab::new();
    assert_eq!(code(&lab.pgnomad(&["run", "--detach"])), Some(0));
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let out = pgnomad_at(lab.dir.path(), &lab.nomad.address(), &format!("http://{closed}"), &["status"]);
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("main-postgres                running"), "{stdout}");
    assert!(stdout.contains("Consul unknown (Consul: cannot connect to"), "{stdout}");
    assert!(stdout.contains("PgBouncer\n  unknown (Consul: cannot connect to"), "{stdout}");
}

/// On a terminal `run` draws one progress bar per task group and `plan` colours its diff.
/// `script` gives the binary a pseudo-terminal, as a person's shell would.
#[test]
fn on_a_terminal_run_draws_progress_bars_and_plan_colours_its_diff() {
    let lab = Lab::new();
    let in_terminal = |args: &str| {
        let command = format!("{} {args}", env!("CARGO_BIN_EXE_pgnomad"));
        let output = Command::new("script")
            .args(["-qefc", &command, "/dev/null"])
            .current_dir(lab.dir.path())
            .env("NOMAD_ADDR", lab.nomad.address())
            .env("CONSUL_HTTP_ADDR", lab.consul.address())
            .env("TERM", "xterm")
            .env_remove("NO_COLOR")
            .output()
            .expect("script (util-linux) runs");
        (output.status.code(), text(&output.stdout))
    };
    let (code, screen) = in_terminal("plan");
    assert_eq!(code, Some(1), "{screen}");
    assert!(screen.contains("\x1b[32m+ Job: \"main-postgres\""), "the added job is green:\n{screen}");

    let (code, screen) = in_terminal("run");
    assert_eq!(code, Some(0), "{screen}");
    for group in ["member-0", "member-1", "member-2"] {
        let bar = format!("main-postgres/{group} [====================] {group}: placed 1/1, healthy 1, unhealthy 0");
        assert!(screen.contains(&bar), "no finished bar for {group}:\n{screen}");
    }
    assert!(screen.contains("deployment successful"), "{screen}");
}

/// `status` reads each member's role, state, timeline and lag from Patroni's REST API, found
/// through Consul. Nomad and Consul are doubles; Patroni is real: a `pgnomad dev` cluster of
/// the same stack, whose REST ports the Nomad double maps the members' `patroni` ports to.
#[test]
fn status_reads_roles_timelines_and_lag_from_a_real_patroni() {
    let dev = crate::support_dev::DevCluster::up("main", 3);
    let lab = Lab::with_stack(&crate::support_dev::stack_text("main", 3));
    let recorded: Value = serde_json::from_str(&std::fs::read_to_string(dev.state_dir.join("state.json")).unwrap()).unwrap();
    for member in 0..3 {
        let rest_port = recorded["ports"]["members"][member][1].as_u64().expect("each member's REST port") as u16;
        lab.nomad.map_host_port(&format!("member-{member}"), "patroni", rest_port);
    }
    let run = lab.pgnomad(&["run"]);
    assert_eq!(code(&run), Some(0), "{}", show(&run));

    let status = lab.pgnomad(&["status", "--json"]);
    assert_eq!(code(&status), Some(0), "{}", show(&status));
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let members = status["members"].as_array().unwrap();
    let roles: Vec<&str> = members.iter().map(|m| m["role"]["known"].as_str().unwrap_or_else(|| panic!("role unknown: {m}"))).collect();
    let leader = dev.primary().expect("the dev cluster has a primary");
    assert_eq!(roles[leader], "leader", "{roles:?}");
    assert_eq!(roles.iter().filter(|r| **r == "leader").count(), 1, "{roles:?}");
    assert_eq!(roles.iter().filter(|r| **r == "sync_standby").count(), 1, "synchronous mode names one standby: {roles:?}");
    for (i, member) in members.iter().enumerate() {
        assert_eq!(member["timeline"]["known"], json!(1), "{member}");
        assert!(member["state"]["known"].is_string(), "{member}");
        if i != leader {
            assert!(member["lag_bytes"]["known"].is_u64(), "a replica's lag is known: {member}");
        }
    }
}

#[test]
fn destroy_deregisters_the_launches_of_the_periodic_backup_jobs_first() {
    // Nomad keeps a periodic job's launches (`<id>/periodic-<time>`) when the parent goes: a
    // backup running then would outlive the cluster.
    let lab = Lab::new();
    assert_eq!(code(&lab.pgnomad(&["run", "--detach"])), Some(0));
    let client = lab.nomad.client();
    let forced = block_on(client.force_periodic("main-backup-full")).unwrap();
    let _ = forced;
    let destroy = lab.pgnomad(&["destroy", "--yes"]);
    assert_eq!(code(&destroy), Some(0), "{}", show(&destroy));
    let log = lab.write_log();
    let child = log
        .iter()
        .position(|w| w.starts_with("deregister main-backup-full/periodic-") || w.starts_with("deregister main-backup-full%2Fperiodic-"));
    let parent = log.iter().position(|w| w == "deregister main-backup-full");
    assert!(matches!((child, parent), (Some(c), Some(p)) if c < p), "the launch goes before its parent: {log:?}");
    let jobs = block_on(client.list_jobs(Some("main-backup-full"))).unwrap();
    assert!(jobs.iter().all(|j| j.stop), "{:?}", jobs.iter().map(|j| (&j.id, j.stop)).collect::<Vec<_>>());
}
