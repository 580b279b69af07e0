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
            j["TaskGroups"][0]["Tasks"][0]["Templates"] = json!([{"EmbeddedTmpl": "x", "DestPath": "local/x", "ChangeMode": "signal"}]);
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
