//! Rendered output: every JSON body validates against Nomad's API schema, the HCL jobspec
//! reads back as the same job, output is deterministic, and snapshots catch any change.

use serde_json::{json, Map, Value};

use pgnomad::compile::{Artifacts, JobRole};
use pgnomad::nomad::job::Job;
use pgnomad::render;

use crate::stack_fixtures::{compile, DEFAULT, VARIANTS};
use crate::support::schema;

fn postgres_of(artifacts: &Artifacts) -> &Job {
    &artifacts.jobs.iter().find(|j| j.role == JobRole::Postgres).expect("a postgres job").job
}

#[test]
fn every_job_and_volume_body_validates_against_the_nomad_api_schema() {
    let mut checked = 0;
    for (name, text) in VARIANTS {
        let artifacts = compile(text);
        for compiled in &artifacts.jobs {
            let body: Value = serde_json::from_str(&render::job_register_json(&compiled.job)).unwrap();
            let violations = schema::violations("JobRegisterRequest", &body);
            assert!(violations.is_empty(), "variant {name}, job {}: {violations:#?}", compiled.id());
            checked += 1;
        }
        for volume in &artifacts.volumes {
            let body: Value = serde_json::from_str(&render::volume_create_json(volume)).unwrap();
            let violations = schema::violations("CSIVolumeCreateRequest", &body);
            assert!(violations.is_empty(), "variant {name}, volume {:?}: {violations:#?}", volume.id);
            checked += 1;
        }
    }
    assert!(checked >= 60, "only {checked} bodies were checked");
}

#[test]
fn the_schema_check_catches_a_misspelt_field() {
    // Guards the guard: a body that only a lenient Nomad would take must fail here.
    let artifacts = compile(DEFAULT);
    let mut body = json!({ "Job": artifacts.jobs.iter().find(|j| j.role == JobRole::Postgres).unwrap().job });
    body["Job"]["TaskGroups"][0]["count"] = json!(1);
    assert!(!schema::violations("JobRegisterRequest", &body).is_empty());
}

#[test]
fn variants_compile_to_what_they_ask_for() {
    let five = compile(VARIANTS.iter().find(|(n, _)| *n == "five-members").unwrap().1);
    let groups: Vec<_> = postgres_of(&five).task_groups.as_ref().unwrap().iter().map(|g| g.name.clone().unwrap()).collect();
    assert_eq!(groups, ["member-0", "member-1", "member-2", "member-3", "member-4"]);
    assert_eq!(five.volumes.len(), 5);

    let host = compile(VARIANTS.iter().find(|(n, _)| *n == "host-volumes").unwrap().1);
    assert!(host.volumes.is_empty(), "host volumes are the operator's, not created by pgnomad");
    let data = &postgres_of(&host).task_groups.as_ref().unwrap()[1].volumes.as_ref().unwrap()["data"];
    assert_eq!((data.volume_type.as_deref(), data.source.as_deref()), (Some("host"), Some("main-member-1")));

    let off = compile(VARIANTS.iter().find(|(n, _)| *n == "pgadmin-off").unwrap().1);
    assert!(off.jobs.iter().all(|j| j.id() != "main-pgadmin"));

    let ids: Vec<_> = compile(DEFAULT).jobs.iter().map(|j| j.id().to_owned()).collect();
    assert_eq!(
        ids,
        [
            "main-repo",
            "main-postgres",
            "main-pgbouncer",
            "main-pgadmin",
            "main-backup-full",
            "main-backup-diff",
            "main-backup-incr",
            "main-backup-ctl"
        ]
    );
}

#[test]
fn rendering_is_deterministic() {
    for (name, text) in VARIANTS {
        let first = render::files(&compile(text), render::Format::Both);
        let second = render::files(&compile(text), render::Format::Both);
        assert_eq!(first, second, "variant {name} renders differently twice");
    }
}

#[test]
fn hcl_jobspecs_read_back_as_the_same_jobs() {
    for (name, text) in VARIANTS {
        for compiled in &compile(text).jobs {
            let hcl_text = render::hcl::job(&compiled.job);
            let body: hcl::Body =
                hcl::from_str(&hcl_text).unwrap_or_else(|e| panic!("variant {name}: {} does not parse: {e}\n{hcl_text}", compiled.id()));
            let from_hcl = jobspec_to_api_json(&body);
            let from_model = sort(serde_json::to_value(&compiled.job).unwrap());
            if from_hcl != from_model {
                panic!(
                    "variant {name}, job {}: HCL and JSON differ\nfrom HCL:   {}\nfrom model: {}",
                    compiled.id(),
                    serde_json::to_string(&from_hcl).unwrap(),
                    serde_json::to_string(&from_model).unwrap()
                );
            }
        }
    }
}

/// PgBouncer takes fractional seconds; the stack file takes a duration or whole seconds.
#[test]
fn server_login_retry_reaches_pgbouncer_in_its_seconds() {
    for (setting, expected) in [
        ("", "server_login_retry = 0.25\n"),
        ("server_login_retry = \"1500ms\"", "server_login_retry = 1.5\n"),
        ("server_login_retry = 3", "server_login_retry = 3\n"),
    ] {
        let artifacts = compile(&format!("{DEFAULT}\npgbouncer {{\n  {setting}\n}}\n"));
        let pgbouncer = artifacts.jobs.iter().find(|j| j.role == JobRole::PgBouncer).expect("a pgbouncer job");
        let ini = serde_json::to_value(&pgbouncer.job).unwrap()["TaskGroups"][0]["Tasks"][0]["Templates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["DestPath"].as_str().unwrap().ends_with("pgbouncer.ini"))
            .map(|t| t["EmbeddedTmpl"].as_str().unwrap().to_string())
            .expect("pgbouncer.ini");
        assert!(ini.contains(expected), "{setting:?}: no {expected:?} in\n{ini}");
    }
}

#[test]
fn default_stack_snapshots() {
    let artifacts = compile(DEFAULT);
    for file in render::files(&artifacts, render::Format::Both) {
        let name = file.path.replace('/', "__");
        insta::assert_snapshot!(name, file.text);
    }
}

// --- A jobspec reader driven by the schema's `x-hcl` names (taken from Nomad's own struct
// tags), independent of the renderer's name table, so the two check each other.

fn defs() -> &'static Value {
    schema::document().get("$defs").expect("the schema has $defs")
}

/// The `$defs` type a property refers to, looking through arrays, maps and nullables.
fn referenced_type(property: &Value) -> Option<String> {
    if let Some(reference) = property.get("$ref").and_then(Value::as_str) {
        return Some(reference.trim_start_matches("#/$defs/").to_owned());
    }
    for key in ["items", "additionalProperties"] {
        if let Some(found) = property.get(key).and_then(referenced_type) {
            return Some(found);
        }
    }
    property.get("anyOf")?.as_array()?.iter().find_map(referenced_type)
}

fn is_duration(property: &Value) -> bool {
    property.get("x-go-type").and_then(Value::as_str).is_some_and(|t| t.ends_with("time.Duration"))
}

/// A property's jobspec name and kind: "block", "label", or "attribute" (gohcl's
/// "optional" or a bare name for a required one).
fn hcl_name(property: &Value) -> Option<(&str, &str)> {
    let tag = property.get("x-hcl")?.as_str()?;
    Some(match tag.split_once(',') {
        Some((name, "optional")) => (name, "attribute"),
        Some(pair) => pair,
        None => (tag, "attribute"),
    })
}

fn go_duration_nanos(text: &str) -> u64 {
    let mut total = 0_f64;
    let mut number = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while chars.peek().is_some_and(|n| n.is_ascii_alphabetic()) {
            unit.push(chars.next().unwrap());
        }
        let factor = match unit.as_str() {
            "ns" => 1.0,
            "us" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            other => panic!("unknown duration unit {other} in {text}"),
        };
        total += number.parse::<f64>().unwrap() * factor;
        number.clear();
    }
    total as u64
}

fn evaluate(expression: &hcl::Expression) -> Value {
    use hcl::eval::Evaluate;
    let value = expression.evaluate(&hcl::eval::Context::new()).expect("literal expressions evaluate");
    serde_json::to_value(value).unwrap()
}

fn body_as_map(body: &hcl::Body) -> Value {
    let mut map = Map::new();
    for attribute in body.attributes() {
        map.insert(attribute.key.to_string(), evaluate(&attribute.expr));
    }
    Value::Object(map)
}

fn decode(body: &hcl::Body, type_name: &str, label: Option<&str>) -> Value {
    let properties = defs()[type_name]["properties"].as_object().unwrap_or_else(|| panic!("no properties for {type_name}"));
    let find = |name: &str, kind: &str| {
        properties
            .iter()
            .find(|(_, p)| hcl_name(p).is_some_and(|(n, k)| n == name && k == kind))
            .unwrap_or_else(|| panic!("{type_name} has no HCL {kind} `{name}`"))
    };
    let mut out = Map::new();
    if let Some(label) = label {
        let (field, _) = properties
            .iter()
            .find(|(_, p)| hcl_name(p).is_some_and(|(_, k)| k == "label"))
            .unwrap_or_else(|| panic!("{type_name} takes no label"));
        out.insert(field.clone(), json!(label));
    }
    for attribute in body.attributes() {
        let (field, property) = find(attribute.key.as_str(), "attribute");
        let mut value = evaluate(&attribute.expr);
        if is_duration(property) {
            value = json!(go_duration_nanos(value.as_str().expect("durations are strings")));
        }
        out.insert(field.clone(), value);
    }
    for block in body.blocks() {
        let (field, property) = find(block.identifier.as_str(), "block");
        let label = block.labels.first().map(|l| l.as_str().to_owned());
        let item_type = referenced_type(property);
        let is_list = property.get("items").is_some();
        let is_map = property.get("additionalProperties").is_some();
        match (item_type, is_list, is_map) {
            (None, _, true) => {
                out.insert(field.clone(), body_as_map(&block.body));
            }
            (Some(item), _, true) => {
                let label = label.expect("map blocks are labelled");
                let entry = out.entry(field.clone()).or_insert_with(|| json!({}));
                entry[&label] = decode(&block.body, &item, Some(&label));
            }
            (Some(item), true, _) => {
                let entry = out.entry(field.clone()).or_insert_with(|| json!([]));
                entry.as_array_mut().unwrap().push(decode(&block.body, &item, label.as_deref()));
            }
            (Some(item), false, false) => {
                out.insert(field.clone(), decode(&block.body, &item, label.as_deref()));
            }
            other => panic!("{type_name}.{field}: cannot decode block of shape {other:?}"),
        }
    }
    Value::Object(out)
}

/// The API JSON a jobspec stands for, with the two defaults Nomad's jobspec parser fills in:
/// the name is the ID, and `crons` are of spec type "cron".
fn jobspec_to_api_json(body: &hcl::Body) -> Value {
    let block = body.blocks().next().expect("a jobspec has a job block");
    assert_eq!(block.identifier.as_str(), "job");
    let id = block.labels[0].as_str();
    let mut job = decode(&block.body, "Job", None);
    job["ID"] = json!(id);
    if job.get("Name").is_none() {
        job["Name"] = json!(id);
    }
    if let Some(periodic) = job.get_mut("Periodic") {
        if periodic.get("Specs").is_some() && periodic.get("SpecType").is_none() {
            periodic["SpecType"] = json!("cron");
        }
    }
    // Field order is not meaningful; compare as sorted maps.
    sort(job)
}

fn sort(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let sorted: std::collections::BTreeMap<_, _> = map.into_iter().map(|(k, v)| (k, sort(v))).collect();
            Value::Object(sorted.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sort).collect()),
        other => other,
    }
}

// --- What a real Nomad 1.10+ client does with the jobs (issue 9), asserted on the model.

fn tasks(job: &pgnomad::nomad::job::Job) -> impl Iterator<Item = (&pgnomad::nomad::job::TaskGroup, &pgnomad::nomad::job::Task)> {
    job.task_groups.iter().flatten().flat_map(|g| g.tasks.iter().flatten().map(move |t| (g, t)))
}

#[test]
fn every_template_file_belongs_to_the_user_its_task_runs_as_and_only_it_reads_it() {
    let mut checked = 0;
    for (name, text) in VARIANTS {
        for compiled in &compile(text).jobs {
            for (group, task) in tasks(&compiled.job) {
                // pgAdmin's image runs as pgadmin (5050) in group root; every other task is
                // the stack's postgres user (999:999 in pgnomad's image, the default).
                let expected = if compiled.id().ends_with("-pgadmin") { (5050, 0) } else { (999, 999) };
                for template in task.templates.iter().flatten() {
                    let at = format!("variant {name}, {}/{:?}/{:?}: {:?}", compiled.id(), group.name, task.name, template.dest_path);
                    assert_eq!((template.uid, template.gid), (Some(expected.0), Some(expected.1)), "{at}");
                    let executable = template.dest_path.as_deref().is_some_and(|d| d.ends_with(".sh") && !d.contains("backup"));
                    assert_eq!(template.perms.as_deref(), Some(if executable { "0700" } else { "0600" }), "{at}");
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 200, "only {checked} templates were checked");

    // With exec drivers the hosts' postgres user is whatever their package made it: the
    // stack says which numbers, and every template follows.
    let exec = compile("cluster \"main\" {}\npostgres {\n  driver = \"exec\"\n  uid = 114\n  gid = 121\n}\n");
    let tls_key = tasks(&postgres_of(&exec))
        .find(|(_, t)| t.name.as_deref() == Some("pgbackrest"))
        .and_then(|(_, t)| t.templates.iter().flatten().find(|x| x.dest_path.as_deref() == Some("secrets/tls/tls.key")))
        .expect("the pgBackRest TLS server has its key");
    assert_eq!((tls_key.uid, tls_key.gid, tls_key.perms.as_deref()), (Some(114), Some(121), Some("0600")));
}

#[test]
fn every_task_whose_templates_query_consul_has_a_consul_block_and_no_other_does() {
    for (name, text) in VARIANTS {
        for compiled in &compile(text).jobs {
            for (_, task) in tasks(&compiled.job) {
                let queries = task
                    .templates
                    .iter()
                    .flatten()
                    .filter_map(|t| t.embedded_tmpl.as_deref())
                    .any(|t| ["service \"", "services", "key \""].iter().any(|f| t.contains(&format!("{{{{ {f}")) || t.contains(f)));
                assert_eq!(task.consul.is_some(), queries, "variant {name}, {} task {:?}", compiled.id(), task.name);
            }
        }
    }
    let default = compile(DEFAULT);
    let with_consul: Vec<String> = default
        .jobs
        .iter()
        .flat_map(|j| {
            tasks(&j.job)
                .filter(|(_, t)| t.consul.is_some())
                .map(|(g, t)| format!("{}/{}/{}", j.id(), g.name.as_deref().unwrap(), t.name.as_deref().unwrap()))
        })
        .collect();
    assert_eq!(
        with_consul,
        [
            // Members read the repository host's port from the catalog.
            "main-postgres/member-0/patroni",
            "main-postgres/member-0/pgbackrest",
            "main-postgres/member-1/patroni",
            "main-postgres/member-1/pgbackrest",
            "main-postgres/member-2/patroni",
            "main-postgres/member-2/pgbackrest",
            "main-pgbouncer/pgbouncer/pgbouncer",
            "main-pgadmin/pgadmin/pgadmin",
            "main-backup-full/backup/backup",
            "main-backup-diff/backup/backup",
            "main-backup-incr/backup/backup",
            "main-backup-ctl/backup/backup"
        ]
    );
    let body = serde_json::to_value(&default.jobs.iter().find(|j| j.role == JobRole::PgBouncer).unwrap().job).unwrap();
    assert_eq!(body["TaskGroups"][0]["Tasks"][0]["Consul"], json!({}), "an empty block: the default Consul cluster");
}

#[test]
fn groups_use_disconnect_blocks_kill_timeouts_fit_the_clients_cap_and_services_leave_consul_first() {
    for (name, text) in VARIANTS {
        for compiled in &compile(text).jobs {
            let body = serde_json::to_value(&compiled.job).unwrap();
            let text = body.to_string();
            for ignored in ["MaxClientDisconnect", "StopAfterClientDisconnect", "PreventRescheduleOnLost"] {
                assert!(!text.contains(ignored), "variant {name}, {}: {ignored} is ignored since Nomad 1.10", compiled.id());
            }
            for group in compiled.job.task_groups.iter().flatten() {
                let at = format!("variant {name}, {} group {:?}", compiled.id(), group.name);
                let disconnect = group.disconnect.as_ref().unwrap_or_else(|| panic!("{at}: no disconnect block"));
                assert!(disconnect.lost_after.is_some() && disconnect.replace.is_some() && disconnect.reconcile.is_some(), "{at}");
                if group.services.as_ref().is_some_and(|s| !s.is_empty()) {
                    assert!(group.shutdown_delay.is_some_and(|d| d.0.as_secs() >= 2), "{at}: services need a shutdown_delay");
                }
                for task in group.tasks.iter().flatten() {
                    assert!(task.kill_timeout.is_none_or(|t| t.0.as_secs() <= 30), "{at} task {:?}: above max_kill_timeout", task.name);
                }
            }
        }
    }
    let members = postgres_of(&compile(DEFAULT)).task_groups.clone().unwrap();
    let disconnect = members[0].disconnect.as_ref().unwrap();
    assert_eq!(disconnect.replace, Some(false), "a member's data is on its node: never start a second copy elsewhere");
    assert_eq!(members[0].shutdown_delay.map(|d| d.0.as_secs()), Some(5));

    // A client that allows longer kills may be told so, and Patroni gets the time.
    let longer = compile("cluster \"main\" {\n  max_kill_timeout = 120\n}\npatroni {\n  kill_timeout = 90\n}\n");
    let patroni = tasks(&postgres_of(&longer)).find(|(_, t)| t.name.as_deref() == Some("patroni")).unwrap().1;
    assert_eq!(patroni.kill_timeout.map(|t| t.0.as_secs()), Some(90));
}

/// Job meta enters every task's combined meta (Nomad's scheduler/util.go), so anything there
/// that changes restarts every member at once.
#[test]
fn nothing_in_a_job_changes_with_the_pgnomad_version_or_with_other_jobs_or_members() {
    for (name, text) in VARIANTS {
        for compiled in &compile(text).jobs {
            let meta: Vec<&String> = compiled.job.meta.iter().flat_map(|m| m.keys()).collect();
            assert_eq!(meta, ["pgnomad_cluster"], "variant {name}, {}: job meta must never change for a deployed cluster", compiled.id());
            let body = serde_json::to_string(&compiled.job).unwrap();
            for changing in ["pgnomad_stack_hash", "pgnomad_version", env!("CARGO_PKG_VERSION")] {
                assert!(!body.contains(changing), "variant {name}, {}: {changing} is in the job", compiled.id());
            }
        }
    }
    let postgres = |text: &str| serde_json::to_value(postgres_of(&compile(text))).unwrap();
    // A PgBouncer-only change leaves the postgres job exactly as it was.
    assert_eq!(postgres(DEFAULT), postgres("cluster \"main\" {}\npgbouncer {\n  default_pool_size = 40\n  count = 3\n}\n"));
    // Adding members leaves the existing member groups exactly as they were.
    let three = postgres(DEFAULT);
    let five = postgres("cluster \"main\" {}\npostgres {\n  members = 5\n}\n");
    for i in 0..3 {
        assert_eq!(three["TaskGroups"][i], five["TaskGroups"][i], "member-{i} changes when members are added");
    }
}
