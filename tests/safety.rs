//! `run` never takes the cluster down (issue 9): the real binary against the Nomad and Consul
//! doubles. Nomad rolls task groups in parallel, so a registration that replaces more than one
//! member group restarts those members together; `run` refuses it before writing anything, and
//! `plan` shows the same refusal.

use std::process::Output;

use serde_json::Value;

use crate::deploy::pgnomad_at;
use crate::stack_fixtures::DEFAULT;
use crate::support::consul_double::ConsulDouble;
use crate::support::NomadDouble;

struct Lab {
    nomad: NomadDouble,
    consul: ConsulDouble,
    dir: tempfile::TempDir,
}

impl Lab {
    /// A cluster on which `run` has deployed `stack`.
    fn deployed(stack: &str) -> Self {
        let nomad = NomadDouble::start();
        let consul = nomad.start_consul();
        let dir = tempfile::tempdir().unwrap();
        let lab = Lab { nomad, consul, dir };
        lab.edit(stack);
        let run = lab.pgnomad(&["run"]);
        assert_eq!(run.status.code(), Some(0), "{}", show(&run));
        lab
    }

    fn edit(&self, stack: &str) {
        std::fs::write(self.dir.path().join("pgnomad.hcl"), stack).unwrap();
    }

    fn pgnomad(&self, args: &[&str]) -> Output {
        pgnomad_at(self.dir.path(), &self.nomad.address(), &self.consul.address(), args)
    }

    fn write_count(&self) -> usize {
        self.writes().len()
    }

    /// Every write of the cluster's state (jobs, variables, volumes), as `METHOD path`.
    fn writes(&self) -> Vec<String> {
        self.nomad
            .writes()
            .iter()
            .filter(|w| matches!(w.method.as_str(), "PUT" | "POST" | "DELETE") && !w.path.ends_with("/plan"))
            .map(|w| match w.body.as_ref().and_then(|b| b["Job"]["ID"].as_str()) {
                Some(job) if w.path == "/v1/jobs" => format!("register {job}"),
                _ => format!("{} {}", w.method, w.path),
            })
            .collect()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn show(output: &Output) -> String {
    format!("exit {:?}\n--- stdout\n{}--- stderr\n{}", output.status.code(), text(&output.stdout), text(&output.stderr))
}

const MORE_MEMORY: &str = "cluster \"main\" {}\npostgres {\n  memory = 2048\n}\n";

#[test]
fn run_refuses_a_change_that_would_restart_every_member_at_once_and_writes_nothing() {
    let lab = Lab::deployed(DEFAULT);
    lab.edit(MORE_MEMORY);

    // What Nomad says about the change: every member group destructively replaced.
    let plan = lab.pgnomad(&["plan", "--json"]);
    let json: Value = serde_json::from_slice(&plan.stdout).unwrap_or_else(|e| panic!("{e}\n{}", show(&plan)));
    let postgres = json["jobs"].as_array().unwrap().iter().find(|j| j["id"] == "main-postgres").unwrap();
    let destructive: Vec<(&str, u64)> =
        postgres["groups"].as_array().unwrap().iter().map(|g| (g["name"].as_str().unwrap(), g["destructive"].as_u64().unwrap())).collect();
    assert_eq!(destructive, [("member-0", 1), ("member-1", 1), ("member-2", 1)], "the double's plan annotations");
    let problem = json["problems"].as_array().unwrap().iter().find(|p| p["kind"] == "members-restart-together").expect("a refusal");
    assert_eq!(problem["members"], serde_json::json!(["member-0", "member-1", "member-2"]));

    let plan = lab.pgnomad(&["plan"]);
    assert_eq!(plan.status.code(), Some(255), "a problem `run` would refuse\n{}", show(&plan));
    let stdout = text(&plan.stdout);
    assert!(stdout.contains("would replace member-0, member-1, member-2 at once"), "{stdout}");
    assert!(stdout.contains("`pgnomad upgrade` (not built yet)"), "{stdout}");

    let before = lab.write_count();
    let run = lab.pgnomad(&["run"]);
    assert_eq!(run.status.code(), Some(1), "refused\n{}", show(&run));
    let stderr = text(&run.stderr);
    assert!(stderr.contains("nothing was written"), "{stderr}");
    assert!(stderr.contains("would replace member-0, member-1, member-2 at once"), "{stderr}");
    assert!(stderr.contains("pgnomad upgrade"), "{stderr}");
    assert_eq!(lab.writes()[before..], [] as [String; 0], "no job, variable or volume was written");

    // Nor by naming the job and its index: the refusal is about the members, not the owner.
    let index = postgres["check_index"].as_u64().unwrap().to_string();
    let run = lab.pgnomad(&["run", "--job", "main-postgres", "--check-index", &index]);
    assert_eq!(run.status.code(), Some(1), "{}", show(&run));
    assert_eq!(lab.writes()[before..], [] as [String; 0]);
}

#[test]
fn a_pgbouncer_only_change_registers_pgbouncer_and_leaves_the_postgres_job_alone() {
    let lab = Lab::deployed(DEFAULT);
    lab.edit("cluster \"main\" {}\npgbouncer {\n  default_pool_size = 40\n}\n");
    let plan = lab.pgnomad(&["plan", "--json"]);
    let json: Value = serde_json::from_slice(&plan.stdout).unwrap();
    let changes: Vec<(&str, &str)> =
        json["jobs"].as_array().unwrap().iter().map(|j| (j["id"].as_str().unwrap(), j["change"].as_str().unwrap())).collect();
    assert!(changes.iter().all(|(id, change)| (*id == "main-pgbouncer") == (*change == "changed")), "{changes:?}");

    let before = lab.write_count();
    let run = lab.pgnomad(&["run"]);
    assert_eq!(run.status.code(), Some(0), "{}", show(&run));
    assert_eq!(lab.writes()[before..], ["register main-pgbouncer", "PUT /v1/var/pgnomad/main/state"]);
    let plan = lab.pgnomad(&["plan"]);
    assert_eq!(plan.status.code(), Some(0), "converged\n{}", show(&plan));
}

#[test]
fn adding_a_member_leaves_the_running_members_alone() {
    let lab = Lab::deployed(DEFAULT);
    lab.edit("cluster \"main\" {}\npostgres {\n  members = 4\n}\n");
    let plan = lab.pgnomad(&["plan", "--json"]);
    let json: Value = serde_json::from_slice(&plan.stdout).unwrap();
    let postgres = json["jobs"].as_array().unwrap().iter().find(|j| j["id"] == "main-postgres").unwrap();
    let groups: Vec<(&str, u64, u64)> = postgres["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["name"].as_str().unwrap(), g["destructive"].as_u64().unwrap(), g["place"].as_u64().unwrap()))
        .collect();
    // member-3 may not fit on the double's three nodes (distinct hosts); what matters is
    // that the running members are left alone and `run` is not refused.
    assert_eq!(groups[..3], [("member-0", 0, 0), ("member-1", 0, 0), ("member-2", 0, 0)]);
    assert_eq!(groups[3].0, "member-3");
    assert!(json["problems"].as_array().unwrap().is_empty(), "{json}");
}

#[test]
fn what_pgnomad_registered_is_recorded_outside_the_jobs_and_an_edit_behind_its_back_is_still_caught() {
    let lab = Lab::deployed(DEFAULT);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let state = runtime.block_on(lab.nomad.client().read_variable("pgnomad/main/state")).unwrap().expect("run records its state");
    let jobs: Vec<&str> = state.items.keys().map(String::as_str).collect();
    assert_eq!(
        jobs,
        [
            "main-backup-ctl",
            "main-backup-diff",
            "main-backup-full",
            "main-backup-incr",
            "main-pgadmin",
            "main-pgbouncer",
            "main-postgres",
            "main-repo",
            "pgnomad_version"
        ]
    );
    assert_eq!(state.items["pgnomad_version"], env!("CARGO_PKG_VERSION"));

    lab.nomad.force_index_conflict("default", "main-pgadmin");
    let run = lab.pgnomad(&["run"]);
    assert_eq!(run.status.code(), Some(1), "{}", show(&run));
    assert!(text(&run.stderr).contains("main-pgadmin was changed outside pgnomad"), "{}", show(&run));
}
