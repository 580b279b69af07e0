//! What the double enforces that a real cluster enforces: the schema, server-side validation,
//! health checks with on_update, template variables and their permissions, Consul's view.

use std::time::Duration;

use pgnomad::consul::ConsulClient;
use pgnomad::nomad::api::{self, AclPolicy, JobAcl, Method, RegisterOptions, Request};
use pgnomad::transport::{HttpTransport, Transport};
use serde_json::{json, Value};

use crate::nomad_client::await_deployment;
use crate::support::jobs::{http_check, member_group, members_job, simple_job, template};
use crate::support::NomadDouble;

fn register_error(nomad: &NomadDouble, job: &Value) -> (u16, String) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let error = runtime.block_on(nomad.client().register_job(job, RegisterOptions::default())).unwrap_err();
    let api = error.api().expect("an API error").clone();
    (api.status, api.body)
}

#[test]
fn the_register_sample_from_the_docs_is_accepted() {
    let path = crate::support::schema::schema_path().with_file_name("samples").join("jobs_register_request.json");
    let sample: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let nomad = NomadDouble::start();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let response = runtime.block_on(nomad.client().register_job(&sample["Job"], RegisterOptions::default())).unwrap();
    assert!(response.job_modify_index > 0);
}

#[test]
fn a_wrong_case_field_is_flagged_as_a_schema_violation() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut job = simple_job("pg");
    job["TaskGroups"][0]["Services"][0]["Checks"][0]["Onupdate"] = json!("ignore");
    let response = runtime.block_on(client.transport().send(&api::register_job(&job, RegisterOptions::default()), None)).unwrap();
    assert_eq!(response.status, 400);
    let violations = nomad.take_schema_violations();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0].contains("Onupdate") && violations[0].contains("JobRegisterRequest"), "{}", violations[0]);
    assert!(runtime.block_on(client.read_job("pg")).unwrap().is_none());
}

#[test]
fn a_forgotten_schema_violation_fails_the_test_on_drop() {
    let outcome = std::panic::catch_unwind(|| {
        let nomad = NomadDouble::start();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let bad = Request::new(Method::Put, "/v1/var/nomad/jobs/pg").with_body(json!({"path": "nomad/jobs/pg", "Items": {"a": "b"}}));
        runtime.block_on(nomad.client().transport().send(&bad, None)).unwrap();
    });
    let message = *outcome.expect_err("dropping the double must panic").downcast::<String>().unwrap();
    assert!(message.contains("server.VariableDecrypted") && message.contains("path"), "{message}");
}

#[test]
fn server_side_validation_answers_like_nomad() {
    let nomad = NomadDouble::start();
    let long = "x".repeat(60);
    let cases: Vec<(&str, Value, &str)> = vec![
        ("space in ID", { let mut j = simple_job("pg main"); j["Name"] = json!("pg"); j }, "1 error occurred:\n\t* Job ID contains a space\n\n"),
        ("service name too long after interpolation", {
            let mut j = simple_job(&long);
            j["TaskGroups"][0]["Services"][0]["Name"] = json!("${NOMAD_JOB_NAME}-${NOMAD_GROUP_NAME}");
            j
        }, "Service name must be valid per RFC 1123"),
        ("undeclared check port", {
            let mut j = simple_job("pg");
            j["TaskGroups"][0]["Services"][0]["Checks"][0]["PortLabel"] = json!("patroni");
            j
        }, "Check alive invalid: port label \"patroni\" is not declared by the group's network"),
        ("http check without path", {
            let mut j = simple_job("pg");
            j["TaskGroups"][0]["Services"][0]["Checks"][0]["Path"] = json!("");
            j
        }, "Check alive invalid: http type must have http path"),
        ("on_update ignore with check_restart", {
            let mut j = simple_job("pg");
            j["TaskGroups"][0]["Services"][0]["Checks"][0]["OnUpdate"] = json!("ignore");
            j["TaskGroups"][0]["Services"][0]["Checks"][0]["CheckRestart"] = json!({"Limit": 3, "Grace": 10_000_000_000u64});
            j
        }, "on_update value \"ignore\" is not compatible with check_restart"),
        ("signal without a signal", {
            let mut j = simple_job("pg");
            // An empty one: left out, Nomad's Canonicalize makes it SIGHUP.
            j["TaskGroups"][0]["Tasks"][0]["Templates"] =
                json!([{"EmbeddedTmpl": "x", "DestPath": "local/x", "ChangeMode": "signal", "ChangeSignal": ""}]);
            j
        }, "Task patroni validation failed: 1 error occurred:\n\t* Template 1 validation failed: 1 error occurred:\n\t* Must specify signal value when change mode is \"signal\""),
        ("periodic service", {
            let mut j = simple_job("pg");
            j["Periodic"] = json!({"Enabled": true, "Spec": "@daily", "SpecType": "cron"});
            j
        }, "* Periodic can only be used with \"batch\" or \"sysbatch\" scheduler"),
        ("single writer volume shared by two", {
            let mut j = simple_job("pg");
            j["TaskGroups"][0]["Count"] = json!(2);
            j["TaskGroups"][0]["Volumes"] = json!({"data": {"Name": "data", "Type": "csi", "Source": "pg-data", "AccessMode": "single-node-writer", "AttachmentMode": "file-system"}});
            j
        }, "volume with single-node-writer access mode allows only one writer"),
    ];
    for (name, job, expected) in cases {
        let (status, body) = register_error(&nomad, &job);
        assert_eq!(status, 500, "{name}");
        assert!(body.starts_with("1 error occurred:\n\t* "), "{name}: {body:?}");
        assert!(body.contains(expected), "{name}: {body:?}");
    }
    let mut mismatched = simple_job("pg");
    mismatched["ID"] = json!("pg");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let request = Request::new(Method::Put, "/v1/job/other").with_body(json!({"Job": mismatched}));
    let response = runtime.block_on(nomad.client().transport().send(&request, None)).unwrap();
    assert_eq!((response.status, String::from_utf8_lossy(&response.body).as_ref()), (400, "Job ID does not match name"));
}

#[tokio::test]
async fn a_primary_only_check_without_ignore_never_gets_healthy() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    let job = members_job("pg", 3, |_| vec![http_check("primary", "/primary", None)]);
    client.register_job(&job, RegisterOptions::default()).await.unwrap();
    let deployment = await_deployment(&client, "pg").await;
    assert_eq!(deployment.status, "failed");
    assert_eq!(deployment.task_groups["member-0"].healthy_allocs, 1, "the primary itself passes");
    assert_eq!(deployment.task_groups["member-1"].healthy_allocs, 0);
}

#[tokio::test]
async fn a_primary_only_check_marked_ignore_lets_the_deployment_succeed() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    let job = members_job("pg", 3, |_| vec![http_check("alive", "/liveness", None), http_check("primary", "/primary", Some("ignore"))]);
    client.register_job(&job, RegisterOptions::default()).await.unwrap();
    let deployment = await_deployment(&client, "pg").await;
    assert_eq!(deployment.status, "successful", "{}", deployment.status_description);

    // Consul still sees which member is primary.
    let consul = nomad.start_consul();
    let settings = pgnomad::settings::ConnectionArgs { consul_address: Some(consul.address()), ..Default::default() }
        .consul(&pgnomad::settings::Environment::default())
        .unwrap();
    let consul_client = ConsulClient::new(HttpTransport::consul(&settings).unwrap());
    let passing = consul_client.health_service("pg-member-0", true).await.unwrap();
    assert_eq!(passing.len(), 1);
    assert!(consul_client.health_service("pg-member-1", true).await.unwrap().is_empty());
    assert_eq!(consul_client.health_service("pg-member-1", false).await.unwrap().len(), 1);
    let services = consul_client.catalog_services().await.unwrap();
    assert!(services.contains_key("pg-member-2"));
    assert_eq!(consul_client.status_leader().await.unwrap(), "127.0.0.1:8300");

    // A blocking health query wakes when the checks' results change (a switchover).
    let (_, index) = consul_client.health_service_blocking("pg-member-1", true, 0, Duration::from_secs(1)).await.unwrap();
    let waiting =
        tokio::spawn(
            async move { consul_client.health_service_blocking("pg-member-1", true, index, Duration::from_secs(10)).await.unwrap() },
        );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished());
    nomad.set_health_oracle(|probe| match probe.path.as_str() {
        "/primary" => probe.group == "member-1",
        _ => true,
    });
    let (entries, new_index) = tokio::time::timeout(Duration::from_secs(3), waiting).await.unwrap().unwrap();
    assert!(new_index > index);
    assert_eq!(entries.len(), 1, "member-1 is primary now");
}

fn job_reading(path: &str) -> Value {
    let mut job = members_job("pg", 1, |_| vec![]);
    job["TaskGroups"][0] = member_group(
        "member-0",
        vec![],
        vec![template(&format!("{{{{ with nomadVar \"{path}\" }}}}PGPASSWORD={{{{ .password }}}}{{{{ end }}}}"))],
    );
    job
}

async fn pending_messages(client: &pgnomad::transport::NomadClient<HttpTransport>) -> Vec<String> {
    let allocations = client.job_allocations("pg").await.unwrap();
    allocations.iter().flat_map(|a| a.task_events().map(|(_, e)| e.display_message.clone())).collect()
}

#[tokio::test]
async fn a_template_waits_for_its_variable() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    client.register_job(&job_reading("nomad/jobs/pg"), RegisterOptions::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let allocations = client.job_allocations("pg").await.unwrap();
    assert_eq!(allocations[0].client_status, "pending");
    assert!(pending_messages(&client).await.contains(&"Missing: nomadVar.block(nomad/jobs/pg@default.global)".to_string()));

    let items = std::collections::BTreeMap::from([("password".to_string(), "x".to_string())]);
    client.put_variable("nomad/jobs/pg", &items, Some(0)).await.unwrap();
    assert_eq!(await_deployment(&client, "pg").await.status, "successful");
}

#[tokio::test]
async fn a_variable_outside_the_jobs_paths_needs_a_job_acl_policy() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    let items = std::collections::BTreeMap::from([("password".to_string(), "x".to_string())]);
    client.put_variable("secrets/pg/superuser", &items, Some(0)).await.unwrap();
    client.register_job(&job_reading("secrets/pg/superuser"), RegisterOptions::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(client.job_allocations("pg").await.unwrap()[0].client_status, "pending", "the variable exists but the task may not read it");
    assert!(pending_messages(&client).await.iter().any(|m| m.starts_with("Missing: nomadVar.block(secrets/pg/superuser")));

    // A policy for another job does not help.
    let mut policy = AclPolicy {
        name: "other-secrets".into(),
        description: String::new(),
        rules: "namespace \"default\" {\n  variables {\n    path \"secrets/pg/*\" { capabilities = [\"read\"] }\n  }\n}".into(),
        job_acl: Some(JobAcl { namespace: "default".into(), job_id: "other".into(), group: String::new(), task: String::new() }),
    };
    client.put_acl_policy(&policy).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(client.job_allocations("pg").await.unwrap()[0].client_status, "pending");

    policy.name = "pg-secrets".into();
    policy.job_acl.as_mut().unwrap().job_id = "pg".into();
    client.put_acl_policy(&policy).await.unwrap();
    assert_eq!(await_deployment(&client, "pg").await.status, "successful");
}

#[tokio::test]
async fn a_missing_variable_fails_the_deployment_at_its_progress_deadline() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    let mut job = job_reading("nomad/jobs/pg/member-0/patroni");
    job["Update"]["ProgressDeadline"] = json!(300_000_000_000u64);
    client.register_job(&job, RegisterOptions::default()).await.unwrap();
    let deployment = await_deployment(&client, "pg").await;
    assert_eq!((deployment.status.as_str(), deployment.status_description.as_str()), ("failed", "Failed due to progress deadline"));
}

// ---- The cluster: placement, updates, claims, node loss, the client seam -----------------

use crate::support::jobs::csi_volume;
use crate::support::nomad_double::{AllocView, ClientMode, DoubleConfig};

fn distinct_members(id: &str, members: usize) -> Value {
    let mut job = members_job(id, members, |_| vec![http_check("alive", "/liveness", None)]);
    job["Constraints"] = json!([{"Operand": "distinct_hosts", "RTarget": "true"}]);
    job
}

fn live(nomad: &NomadDouble, job: &str) -> Vec<AllocView> {
    nomad.all_allocations().into_iter().filter(|a| a.job_id == job && a.desired_status == "run" && a.client_status != "lost").collect()
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn get(nomad: &NomadDouble, path: &str, server_type: &str) -> Value {
    let response = nomad.client().transport().send(&Request::new(Method::Get, path), None).await.unwrap();
    assert_eq!(response.status, 200, "{path}");
    let body: Value = serde_json::from_slice(&response.body).unwrap();
    let items = match &body {
        Value::Array(items) => items.clone(),
        other => vec![other.clone()],
    };
    for item in &items {
        let violations = crate::support::schema::violations(server_type, item);
        assert!(violations.is_empty(), "{path} does not match {server_type}: {violations:?}");
    }
    body
}

#[tokio::test]
async fn distinct_hosts_puts_three_members_on_three_nodes_and_a_fourth_nowhere() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    let plan = client.plan_job(&distinct_members("pg", 4)).await.unwrap();
    let failure = &plan.failed_tg_allocs["member-3"];
    assert_eq!(failure.constraint_filtered.get("distinct_hosts"), Some(&3), "{failure:?}");
    assert_eq!((failure.nodes_evaluated, failure.nodes_filtered, failure.nodes_in_pool), (3, 3, 3));
    assert_eq!(failure.nodes_available.get("dc1"), Some(&3));
    assert_eq!(plan.failed_tg_allocs.len(), 1, "members 0-2 fit");

    client.register_job(&distinct_members("pg", 4), RegisterOptions::default()).await.unwrap();
    let mut nodes: Vec<String> = live(&nomad, "pg").iter().map(|a| a.node_name.clone()).collect();
    nodes.sort();
    assert_eq!(nodes, ["double-client-1", "double-client-2", "double-client-3"]);
    let evaluations = client.job_evaluations("pg").await.unwrap();
    let blocked = evaluations.iter().find(|e| e.status == "blocked").expect("a blocked eval");
    assert_eq!(blocked.failed_tg_allocs["member-3"].constraint_filtered["distinct_hosts"], 3);
    for e in &evaluations {
        get(&nomad, &format!("/v1/evaluation/{}", e.id), "server.Evaluation").await;
    }
    // Without distinct_hosts binpacking puts every member on one node.
    client.register_job(&members_job("packed", 3, |_| vec![]), RegisterOptions::default()).await.unwrap();
    let packed: Vec<String> = live(&nomad, "packed").iter().map(|a| a.node_name.clone()).collect();
    assert_eq!(packed.len(), 3);
    assert!(packed.iter().all(|n| *n == packed[0]), "{packed:?}");
}

#[tokio::test]
async fn constraints_pin_and_spread_spreads() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    let mut pinned = members_job("pinned", 2, |_| vec![]);
    pinned["Constraints"] = json!([
        {"LTarget": "${attr.unique.hostname}", "RTarget": "double-client-2", "Operand": "="},
        {"LTarget": "${attr.kernel.name}", "RTarget": "^lin.x$", "Operand": "regexp"},
        {"LTarget": "${attr.nomad.version}", "RTarget": ">= 1.10, < 3", "Operand": "version"},
    ]);
    client.register_job(&pinned, RegisterOptions::default()).await.unwrap();
    assert!(live(&nomad, "pinned").iter().all(|a| a.node_name == "double-client-2"));
    let mut impossible = members_job("impossible", 1, |_| vec![]);
    impossible["TaskGroups"][0]["Constraints"] = json!([{"LTarget": "${meta.rack}", "RTarget": "r9", "Operand": "="}]);
    let plan = client.plan_job(&impossible).await.unwrap();
    assert_eq!(plan.failed_tg_allocs["member-0"].constraint_filtered.get("${meta.rack} = r9"), Some(&3));

    let mut spread = members_job("spread", 1, |_| vec![]);
    spread["TaskGroups"][0]["Count"] = json!(3);
    spread["TaskGroups"][0]["Spreads"] = json!([{"Attribute": "${meta.rack}", "Weight": 100}]);
    client.register_job(&spread, RegisterOptions::default()).await.unwrap();
    let mut nodes: Vec<String> = live(&nomad, "spread").iter().map(|a| a.node_name.clone()).collect();
    nodes.sort();
    assert_eq!(nodes, ["double-client-1", "double-client-2", "double-client-3"]);
}

#[tokio::test]
async fn missing_volumes_drivers_and_memory_are_reported_as_nomad_does() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    let mut host = members_job("host", 1, |_| vec![]);
    host["TaskGroups"][0]["Volumes"] = json!({"repo": {"Name": "repo", "Type": "host", "Source": "no-such-volume"}});
    let failure = client.plan_job(&host).await.unwrap().failed_tg_allocs["member-0"].clone();
    assert_eq!(failure.constraint_filtered.get("missing compatible host volumes"), Some(&3), "{failure:?}");

    let mut driver = members_job("driver", 1, |_| vec![]);
    driver["TaskGroups"][0]["Tasks"][0]["Driver"] = json!("podman");
    let failure = client.plan_job(&driver).await.unwrap().failed_tg_allocs["member-0"].clone();
    assert_eq!(failure.constraint_filtered.get("missing drivers"), Some(&3), "{failure:?}");

    let mut big = members_job("big", 1, |_| vec![]);
    big["TaskGroups"][0]["Tasks"][0]["Resources"]["MemoryMB"] = json!(10_000);
    let failure = client.plan_job(&big).await.unwrap().failed_tg_allocs["member-0"].clone();
    assert_eq!((failure.nodes_exhausted, failure.dimension_exhausted.get("memory")), (3, Some(&3)), "{failure:?}");
    assert!(failure.constraint_filtered.is_empty());

    let mut static_port = members_job("static", 2, |_| vec![]);
    for g in 0..2 {
        static_port["TaskGroups"][g]["Networks"][0]["ReservedPorts"] = json!([{"Label": "admin", "Value": 5000}]);
        static_port["TaskGroups"][g]["Constraints"] = json!([{"LTarget": "${node.unique.name}", "RTarget": "double-client-1"}]);
    }
    let failure = client.plan_job(&static_port).await.unwrap().failed_tg_allocs["member-1"].clone();
    assert_eq!(failure.dimension_exhausted.get("network: reserved port collision admin=5000"), Some(&1), "{failure:?}");
}

#[tokio::test]
async fn dynamic_ports_are_unique_per_node_and_shown_in_the_allocation() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    client.register_job(&members_job("pg", 3, |_| vec![]), RegisterOptions::default()).await.unwrap();
    let allocs = live(&nomad, "pg");
    let mut ports: Vec<u16> = allocs.iter().flat_map(|a| a.ports.iter().map(|p| p.value)).collect();
    assert_eq!(ports.len(), 6);
    assert!(ports.iter().all(|p| (20000..=32000).contains(p)));
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 6, "two ports each for three allocations on one node");
    let pg = allocs[0].ports.iter().find(|p| p.label == "pg").unwrap();
    assert_eq!((pg.to, pg.host_ip.as_str()), (5432, "127.0.0.11"));
    let full = get(&nomad, &format!("/v1/allocation/{}", allocs[0].id), "server.Allocation").await;
    assert_eq!(full["NodeName"], json!(allocs[0].node_name));
    assert!(full["AllocatedResources"]["Shared"]["Ports"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["Label"] == "pg" && p["Value"] == json!(pg.value)));
    let nodes = get(&nomad, "/v1/nodes", "server.NodeListStub").await;
    let _ = nodes;
    let node = get(&nomad, &format!("/v1/node/{}", full["NodeID"].as_str().unwrap()), "server.Node").await;
    assert_eq!(node["Attributes"]["unique.network.ip-address"], json!("127.0.0.11"));
}

fn desired(plan: &api::JobPlanResponse, group: &str) -> api::DesiredUpdates {
    plan.annotations.as_ref().unwrap().desired_tg_updates[group]
}

#[tokio::test]
async fn job_meta_is_a_destructive_update_of_every_group_and_groups_roll_in_parallel() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    let job = distinct_members("pg", 3);
    client.register_job(&job, RegisterOptions::default()).await.unwrap();
    assert_eq!(await_deployment(&client, "pg").await.status, "successful");
    let before: Vec<String> = live(&nomad, "pg").iter().map(|a| a.id.clone()).collect();

    let mut changed = job.clone();
    changed["Meta"]["pgnomad.version"] = json!("0.2.0");
    let plan = client.plan_job(&changed).await.unwrap();
    for g in ["member-0", "member-1", "member-2"] {
        assert_eq!((desired(&plan, g).destructive_update, desired(&plan, g).in_place_update), (1, 0), "{g}: CombinedTaskMeta changed");
    }
    client.register_job(&changed, RegisterOptions::default()).await.unwrap();
    // max_parallel = 1 counts within a group: all three members are replaced at once.
    let replaced: Vec<AllocView> = live(&nomad, "pg").into_iter().filter(|a| !before.contains(&a.id)).collect();
    assert_eq!(replaced.len(), 3, "{replaced:?}");
    assert_eq!(await_deployment(&client, "pg").await.status, "successful");
}

#[tokio::test]
async fn a_task_change_in_one_group_replaces_only_that_group_and_the_rest_update_in_place() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    let job = distinct_members("pg", 3);
    client.register_job(&job, RegisterOptions::default()).await.unwrap();
    assert_eq!(await_deployment(&client, "pg").await.status, "successful");
    let before = live(&nomad, "pg");

    let mut image = job.clone();
    image["TaskGroups"][1]["Tasks"][0]["Config"]["image"] = json!("ghcr.io/pgnomad/patroni:3.4");
    let plan = client.plan_job(&image).await.unwrap();
    assert_eq!(desired(&plan, "member-1").destructive_update, 1);
    assert_eq!((desired(&plan, "member-0").in_place_update, desired(&plan, "member-0").destructive_update), (1, 0));
    client.register_job(&image, RegisterOptions::default()).await.unwrap();
    let after = live(&nomad, "pg");
    let same = |g: &str| {
        let old = before.iter().find(|a| a.group == g).unwrap();
        let new = after.iter().find(|a| a.group == g).unwrap();
        (old.id == new.id, old.node_name == new.node_name, new.job_version)
    };
    assert_eq!(same("member-0"), (true, true, 1), "in place: same allocation, same node, new version");
    assert_eq!(same("member-1").0, false);
    assert_eq!(await_deployment(&client, "pg").await.status, "successful");

    // A service-only change (tags) is in place for every group; so are the others on a count change.
    let mut tags = image.clone();
    tags["TaskGroups"][0]["Services"][0]["Tags"] = json!(["primary-candidate"]);
    let plan = client.plan_job(&tags).await.unwrap();
    for g in ["member-0", "member-1", "member-2"] {
        assert_eq!((desired(&plan, g).in_place_update, desired(&plan, g).destructive_update), (1, 0), "{g}");
    }
    let mut scaled = members_job("one", 1, |_| vec![]);
    client.register_job(&scaled, RegisterOptions::default()).await.unwrap();
    scaled["TaskGroups"][0]["Count"] = json!(3);
    let plan = client.plan_job(&scaled).await.unwrap();
    let update = desired(&plan, "member-0");
    assert_eq!((update.place, update.in_place_update, update.destructive_update, update.stop), (2, 1, 0, 0));
    // An identical re-register changes nothing.
    let plan = client.plan_job(&image).await.unwrap();
    assert_eq!(desired(&plan, "member-2").ignore, 1);
}

#[tokio::test]
async fn max_parallel_replaces_one_allocation_of_a_group_at_a_time() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    let mut job = members_job("web", 1, |_| vec![http_check("alive", "/liveness", None)]);
    job["TaskGroups"][0]["Count"] = json!(3);
    job["Update"]["MinHealthyTime"] = json!(50_000_000_000u64); // 50 ms at the default scale
    client.register_job(&job, RegisterOptions::default()).await.unwrap();
    assert_eq!(await_deployment(&client, "web").await.status, "successful");
    let original: Vec<String> = live(&nomad, "web").iter().map(|a| a.id.clone()).collect();

    let mut changed = job.clone();
    changed["TaskGroups"][0]["Tasks"][0]["Env"] = json!({"PGTZ": "UTC"});
    let plan = client.plan_job(&changed).await.unwrap();
    let update = desired(&plan, "member-0");
    assert_eq!((update.destructive_update, update.ignore), (1, 2), "max_parallel 1: one now, two later");
    client.register_job(&changed, RegisterOptions::default()).await.unwrap();
    let mut most_in_flight = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let allocs = live(&nomad, "web");
        let new: Vec<&AllocView> = allocs.iter().filter(|a| !original.contains(&a.id)).collect();
        let deployment = client.read_job("web").await.unwrap().unwrap();
        let unhealthy = new.len() - count_healthy(&client, "web", &original).await;
        most_in_flight = most_in_flight.max(unhealthy);
        if new.len() == 3 && deployment.stable {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the rolling update did not finish");
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    assert_eq!(most_in_flight, 1, "never more than max_parallel replacements waiting for health");
}

async fn count_healthy(client: &pgnomad::transport::NomadClient<HttpTransport>, job: &str, except: &[String]) -> usize {
    let allocs = client.job_allocations(job).await.unwrap();
    allocs
        .iter()
        .filter(|a| {
            !except.contains(&a.id) && a.desired_status == "run" && a.deployment_status.as_ref().is_some_and(|d| d.healthy == Some(true))
        })
        .count()
}

fn job_with_data(id: &str) -> Value {
    let mut job = members_job(id, 1, |_| vec![http_check("alive", "/liveness", None)]);
    job["TaskGroups"][0]["Volumes"] = json!({"data": {"Name": "data", "Type": "csi", "Source": "pg-data", "AccessMode": "single-node-writer", "AttachmentMode": "file-system", "PerAlloc": true}});
    job
}

#[tokio::test]
async fn an_external_runner_drives_allocations_and_a_claim_is_held_until_the_old_allocation_stopped() {
    let nomad = NomadDouble::start_with(DoubleConfig { client: ClientMode::External, time_scale: 0.001, ..DoubleConfig::default() });
    let client = nomad.client();
    client.create_csi_volume(&csi_volume("pg-data[0]")).await.unwrap();
    client.register_job(&job_with_data("pg"), RegisterOptions::default()).await.unwrap();
    let first = live(&nomad, "pg").remove(0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(nomad.allocation(&first.id).unwrap().client_status, "pending", "nothing moves without the runner");
    let on_node = nomad.node_allocations(&first.node_name);
    assert_eq!(on_node.len(), 1);
    assert_eq!(on_node[0].group_spec["Name"], json!("member-0"));
    assert_eq!(on_node[0].csi_volumes, ["pg-data[0]"]);
    nomad.update_task_state(&first.id, "patroni", "pending", false, ("Received", "Task received by client")).unwrap();
    nomad.update_task_state(&first.id, "patroni", "running", false, ("Started", "Task started by client")).unwrap();
    assert_eq!(nomad.allocation(&first.id).unwrap().client_status, "running");

    // Health comes from the checks the runner reports: critical until it passes.
    let consul = nomad.start_consul();
    let settings = pgnomad::settings::ConnectionArgs { consul_address: Some(consul.address()), ..Default::default() }
        .consul(&pgnomad::settings::Environment::default())
        .unwrap();
    let consul_client = ConsulClient::new(HttpTransport::consul(&settings).unwrap());
    assert!(consul_client.health_service("pg-member-0", true).await.unwrap().is_empty());
    nomad.set_check_status(&first.id, "pg-member-0", "alive", true, "HTTP GET: 200 OK").unwrap();
    let passing = consul_client.health_service("pg-member-0", true).await.unwrap();
    assert_eq!(passing.len(), 1);
    let pg_port = first.ports.iter().find(|p| p.label == "pg").unwrap().value;
    let entry = serde_json::to_value(&passing[0]).unwrap();
    assert!(entry.to_string().contains(&first.node_address) && entry.to_string().contains(&pg_port.to_string()), "{entry}");
    assert_eq!(await_deployment(&client, "pg").await.status, "successful");

    // A destructive update: the replacement waits for the claim until the old one stopped.
    let mut changed = job_with_data("pg");
    changed["TaskGroups"][0]["Tasks"][0]["Config"]["image"] = json!("ghcr.io/pgnomad/patroni:3.4");
    client.register_job(&changed, RegisterOptions::default()).await.unwrap();
    let old = nomad.allocation(&first.id).unwrap();
    assert_eq!((old.desired_status.as_str(), old.client_status.as_str()), ("stop", "running"), "stopping, still holding its claim");
    let replacement = live(&nomad, "pg").into_iter().find(|a| a.id != first.id).expect("placed");
    assert_eq!(replacement.node_name, first.node_name, "a hostpath volume stays on its node");
    assert_eq!(replacement.waiting_for_volumes, ["pg-data[0]"]);
    // Another job cannot even be placed while the claim is held.
    let mut other = job_with_data("other");
    other["TaskGroups"][0]["Volumes"]["data"]["Source"] = json!("pg-data");
    let plan = client.plan_job(&other).await.unwrap();
    assert!(plan.failed_tg_allocs["member-0"]
        .constraint_filtered
        .contains_key("CSI volume pg-data[0] has exhausted its available writer claims"));
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(nomad.allocation(&replacement.id).unwrap().waiting_for_volumes, ["pg-data[0]"]);
    nomad.update_task_state(&first.id, "patroni", "dead", false, ("Killed", "Task successfully killed")).unwrap();
    assert_eq!(nomad.allocation(&first.id).unwrap().client_status, "complete");
    assert!(nomad.allocation(&replacement.id).unwrap().waiting_for_volumes.is_empty(), "the claim is free once the old one stopped");
}

/// Nomad's client holds a replacement until the allocation it replaces has stopped, with no
/// volume between them (client/allocwatcher): a destructive update never runs the old and the
/// new tasks of one group side by side.
#[tokio::test]
async fn a_replacement_waits_for_the_allocation_it_replaces_to_stop() {
    let nomad = NomadDouble::start_with(DoubleConfig { client: ClientMode::External, time_scale: 0.001, ..DoubleConfig::default() });
    let client = nomad.client();
    client.register_job(&members_job("pg", 1, |_| vec![]), RegisterOptions::default()).await.unwrap();
    let first = live(&nomad, "pg").remove(0);
    assert_eq!(first.waiting_for_previous, None, "a first placement replaces nothing");
    nomad.update_task_state(&first.id, "patroni", "running", false, ("Started", "Task started by client")).unwrap();

    let mut changed = members_job("pg", 1, |_| vec![]);
    changed["TaskGroups"][0]["Tasks"][0]["Config"]["image"] = json!("ghcr.io/pgnomad/patroni:3.4");
    client.register_job(&changed, RegisterOptions::default()).await.unwrap();
    let replacement = live(&nomad, "pg").into_iter().find(|a| a.id != first.id).expect("placed");
    assert!(replacement.waiting_for_volumes.is_empty());
    assert_eq!(replacement.waiting_for_previous.as_deref(), Some(first.id.as_str()), "held while the old one still runs");
    let on_node = nomad.node_allocations(&replacement.node_name);
    let assigned = on_node.iter().find(|a| a.id == replacement.id).unwrap();
    assert_eq!(assigned.waiting_for_previous.as_deref(), Some(first.id.as_str()), "the node's client is told to wait");
    nomad.update_task_state(&first.id, "patroni", "dead", false, ("Killed", "Task successfully killed")).unwrap();
    assert_eq!(nomad.allocation(&first.id).unwrap().client_status, "complete");
    assert_eq!(nomad.allocation(&replacement.id).unwrap().waiting_for_previous, None, "free once the old one stopped");
}

#[tokio::test]
async fn a_hostpath_volume_on_a_down_node_blocks_its_group_until_the_node_is_back() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    client.create_csi_volume(&csi_volume("pg-data[0]")).await.unwrap();
    client.register_job(&distinct_members("web", 2), RegisterOptions::default()).await.unwrap();
    client.register_job(&job_with_data("pg"), RegisterOptions::default()).await.unwrap();
    assert_eq!(await_deployment(&client, "pg").await.status, "successful");
    let first = live(&nomad, "pg").remove(0);
    let web_before = live(&nomad, "web");

    nomad.set_node_status(&first.node_name, "down");
    assert_eq!(nomad.allocation(&first.id).unwrap().client_status, "lost");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let blocked = loop {
        if let Some(e) = client.job_evaluations("pg").await.unwrap().into_iter().find(|e| e.status == "blocked") {
            break e;
        }
        assert!(std::time::Instant::now() < deadline, "no blocked eval for pg");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(!live(&nomad, "pg").iter().any(|a| a.id != first.id), "pg cannot be placed elsewhere");
    let metric = &blocked.failed_tg_allocs["member-0"];
    assert_eq!(metric.constraint_filtered.get("did not meet topology requirement"), Some(&2), "{metric:?}");
    assert_eq!(metric.nodes_available.get("dc1"), Some(&2));
    // The web member that was on the down node moves to the one node left free.
    let web_lost: Vec<&AllocView> = web_before.iter().filter(|a| a.node_name == first.node_name).collect();
    for lost in web_lost {
        eventually("the lost web member is replaced", || {
            live(&nomad, "web").iter().any(|a| a.group == lost.group && a.id != lost.id && a.node_name != first.node_name)
        })
        .await;
    }

    nomad.set_node_status(&first.node_name, "ready");
    eventually("pg is placed on its volume's node again", || {
        live(&nomad, "pg").iter().any(|a| a.node_name == first.node_name && a.id != first.id)
    })
    .await;
    assert!(client.job_evaluations("pg").await.unwrap().iter().all(|e| e.status != "blocked"));
}

#[tokio::test]
async fn a_completed_batch_allocation_is_not_replaced_when_the_cluster_changes() {
    let nomad = NomadDouble::start_with(DoubleConfig { client: ClientMode::External, time_scale: 0.001, ..DoubleConfig::default() });
    let client = nomad.client();
    let mut job = simple_job("once");
    job["Type"] = json!("batch");
    job.as_object_mut().unwrap().remove("Update");
    job["TaskGroups"][0]["Services"] = json!(null);
    client.register_job(&job, RegisterOptions::default()).await.unwrap();
    let allocs: Vec<_> = nomad.all_allocations().into_iter().filter(|a| a.job_id == "once").collect();
    assert_eq!(allocs.len(), 1);
    let task = allocs[0].group_spec["Tasks"][0]["Name"].as_str().unwrap().to_string();
    nomad.update_task_state(&allocs[0].id, &task, "running", false, ("Started", "Task started by client")).unwrap();
    nomad.update_task_state(&allocs[0].id, &task, "dead", false, ("Terminated", "Exit Code: 0")).unwrap();
    assert_eq!(nomad.allocation(&allocs[0].id).unwrap().client_status, "complete");
    // Another node goes down and comes back: every job is evaluated again.
    let other = nomad.nodes().into_iter().map(|n| n.name).find(|n| *n != allocs[0].node_name).unwrap();
    nomad.set_node_status(&other, "down");
    nomad.set_node_status(&other, "ready");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after: Vec<_> = nomad.all_allocations().into_iter().filter(|a| a.job_id == "once").collect();
    assert_eq!(after.len(), 1, "a batch allocation that completed has done its work: {after:?}");
}

/// Nomad's periodic dispatcher forces only the periodic jobs it tracks: enabled, not stopped
/// (`IsPeriodicActive`); `restore --in-place` relies on a paused schedule launching nothing.
#[tokio::test]
async fn only_an_active_periodic_job_is_forced() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    let error = |e: pgnomad::transport::TransportError| e.api().map(|a| (a.status, a.body.clone())).unwrap();
    let mut job = simple_job("nightly");
    job["Type"] = json!("batch");
    job.as_object_mut().unwrap().remove("Update");
    job["TaskGroups"][0]["Services"] = json!(null);
    client.register_job(&job, RegisterOptions::default()).await.unwrap();
    let plain = client.force_periodic("nightly").await.unwrap_err();
    assert_eq!(error(plain), (500, "can't force launch non-periodic job".to_owned()));

    job["Periodic"] = json!({"Enabled": false, "Specs": ["0 3 * * *"], "SpecType": "cron", "ProhibitOverlap": true});
    client.register_job(&job, RegisterOptions::default()).await.unwrap();
    let paused = client.force_periodic("nightly").await.unwrap_err();
    assert_eq!(
        error(paused),
        (500, "force launch for job \"nightly\" failed: can't force run non-tracked job \"nightly\" (default)".to_owned())
    );
    assert!(client.list_jobs(Some("nightly/")).await.unwrap().is_empty(), "nothing launched");

    job["Periodic"]["Enabled"] = json!(true);
    client.register_job(&job, RegisterOptions::default()).await.unwrap();
    let forced = client.force_periodic("nightly").await.unwrap();
    assert_eq!(client.read_evaluation(&forced.eval_id).await.unwrap().job_id.split('/').next(), Some("nightly"));
}

/// A parameterized batch job: dispatches are checked against its block as Nomad checks them,
/// each accepted one is a child job (`<id>/dispatch-…`) that runs to the end and is then dead.
#[tokio::test]
async fn dispatch_checks_the_meta_keys_and_its_child_ends_dead() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    let mut job = simple_job("ctl");
    job["Type"] = json!("batch");
    job.as_object_mut().unwrap().remove("Update");
    job["ParameterizedJob"] = json!({"Payload": "forbidden", "MetaRequired": ["command"]});
    client.register_job(&job, RegisterOptions::default()).await.unwrap();
    assert!(client.job_allocations("ctl").await.unwrap().is_empty(), "a parameterized job runs only when dispatched");

    let error = |e: pgnomad::transport::TransportError| e.api().map(|a| (a.status, a.body.clone())).unwrap();
    let missing = client.dispatch_job("ctl", None, &Default::default()).await.unwrap_err();
    assert_eq!(error(missing), (500, "Dispatch did not provide required meta keys: [command]".to_owned()));
    let extra: std::collections::BTreeMap<String, String> = [("command", "info"), ("other", "x")].map(|(k, v)| (k.into(), v.into())).into();
    let unpermitted = client.dispatch_job("ctl", None, &extra).await.unwrap_err();
    assert_eq!(error(unpermitted), (500, "Dispatch request included unpermitted metadata keys: [other]".to_owned()));
    let payload = client.dispatch_job("ctl", Some(b"x"), &[("command".to_owned(), "info".to_owned())].into()).await.unwrap_err();
    assert_eq!(error(payload), (500, "Payload provided but forbidden".to_owned()));

    let dispatched = client.dispatch_job("ctl", None, &[("command".to_owned(), "info".to_owned())].into()).await.unwrap();
    assert!(dispatched.dispatched_job_id.starts_with("ctl/dispatch-"), "{dispatched:?}");
    let eval = client.read_evaluation(&dispatched.eval_id).await.unwrap();
    assert_eq!(eval.job_id, dispatched.dispatched_job_id);
    let child = |jobs: Vec<api::JobListStub>| jobs.into_iter().find(|j| j.id == dispatched.dispatched_job_id).unwrap();
    let listed = child(client.list_jobs(Some("ctl/")).await.unwrap());
    assert_eq!(listed.parent_id, "ctl");
    assert_eq!(child(client.list_jobs(Some("ctl")).await.unwrap()).status, listed.status);
    let parent = client.list_jobs(Some("ctl")).await.unwrap().into_iter().find(|j| j.id == "ctl").unwrap();
    assert_eq!(parent.status, "running", "a parameterized job is running until stopped (Nomad's getJobStatus)");

    // Logs: the task and the type are required; an unknown allocation is a 404.
    let logs = |path: String| Request::get(path);
    let transport = HttpTransport::nomad(&nomad.settings()).unwrap();
    let no_task = transport.send(&logs("/v1/client/fs/logs/0000".into()).with_query("type", "stdout"), None).await.unwrap();
    assert_eq!((no_task.status, String::from_utf8_lossy(&no_task.body).into_owned()), (400, "must provide task name".to_owned()));
    let unknown = client.alloc_logs("00000000-0000-0000-0000-000000000000", "backup", false).await.unwrap_err();
    assert_eq!(unknown.api().unwrap().status, 404);
}

/// The HTTP API canonicalizes a registered job (api TaskGroup.Canonicalize): a group's restart
/// policy is the job type's default with what the group set over it, and each task's the
/// group's with what the task set over it. Reading the job back shows them.
#[test]
fn a_registered_job_gets_nomads_restart_policy_defaults_for_its_type() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let read = |id: &str| -> Value {
        let response = runtime.block_on(client.transport().send(&api::read_job(id), None)).unwrap();
        serde_json::from_slice(&response.body).unwrap()
    };
    const SECOND: u64 = 1_000_000_000;

    let mut service = members_job("svc", 2, |_| vec![]);
    service["TaskGroups"][1]["RestartPolicy"] = json!({"Attempts": 5});
    service["TaskGroups"][1]["Tasks"][0]["RestartPolicy"] = json!({"Mode": "delay"});
    runtime.block_on(client.register_job(&service, RegisterOptions::default())).unwrap();
    let job = read("svc");
    let defaults = json!({"Attempts": 2, "Interval": 1800 * SECOND, "Delay": 15 * SECOND, "Mode": "fail", "RenderTemplates": false});
    assert_eq!(job["TaskGroups"][0]["RestartPolicy"], defaults);
    assert_eq!(job["TaskGroups"][0]["Tasks"][0]["RestartPolicy"], defaults, "a task inherits its group's");
    let mut group = defaults.clone();
    group["Attempts"] = json!(5);
    assert_eq!(job["TaskGroups"][1]["RestartPolicy"], group, "what the group set, over the defaults");
    let mut task = group.clone();
    task["Mode"] = json!("delay");
    assert_eq!(job["TaskGroups"][1]["Tasks"][0]["RestartPolicy"], task, "what the task set, over its group's");

    let mut batch = simple_job("once");
    batch["Type"] = json!("batch");
    batch.as_object_mut().unwrap().remove("Update");
    runtime.block_on(client.register_job(&batch, RegisterOptions::default())).unwrap();
    let job = read("once");
    assert_eq!(job["TaskGroups"][0]["RestartPolicy"]["Attempts"], 3);
    assert_eq!(job["TaskGroups"][0]["RestartPolicy"]["Interval"], 24 * 3600 * SECOND);
}

/// A client waiting for the servers' data hears of a change when it happens, as a blocking
/// query does, instead of at the end of its wait.
#[test]
fn a_client_waiting_for_a_change_is_woken_by_it() {
    use crate::support::cluster::ControlPlane;
    let nomad = std::sync::Arc::new(NomadDouble::start());
    let plane = crate::support::nomad_double::client::Plane::new(nomad.clone(), false);
    let seen = plane.wait_for_change(0, Duration::ZERO);
    let waiter = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        (plane.wait_for_change(seen, Duration::from_secs(60)), started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(nomad.client().register_job(&simple_job("pg"), RegisterOptions::default())).unwrap();
    let (index, waited) = waiter.join().unwrap();
    assert!(index > seen, "woken with index {index}, had seen {seen}");
    assert!(waited < Duration::from_secs(30), "woken only after {waited:?}: the change did not wake it");
}
