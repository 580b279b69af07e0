//! The typed client against the Nomad double: check-and-set, plans, blocking queries,
//! deployments, variables, CSI volumes, faults.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pgnomad::nomad::api::{self, DiffType, Method, RegisterOptions, Request};
use pgnomad::transport::{conflicting_variable, HttpTransport, NomadClient, RetryPolicy, Transport, TransportError};
use serde_json::json;

use crate::support::jobs::{csi_volume, http_check, members_job, simple_job, SECOND};
use crate::support::{DoubleConfig, Fault, NomadDouble};

/// Follows the job's latest deployment with blocking queries until it ends.
pub async fn await_deployment(client: &NomadClient<HttpTransport>, job_id: &str) -> api::Deployment {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut index = 0;
    loop {
        assert!(Instant::now() < deadline, "deployment of {job_id} did not end in time");
        let (deployment, next): (Option<api::Deployment>, u64) =
            client.get_blocking(api::job_latest_deployment(job_id), index, Duration::from_secs(5)).await.unwrap();
        if let Some(deployment) = deployment.filter(api::Deployment::is_terminal) {
            return deployment;
        }
        index = next;
    }
}

fn items(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test]
async fn check_index_zero_creates_and_then_refuses_to_overwrite() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    let job = simple_job("pg");
    let created = client.register_job(&job, RegisterOptions { enforce_index: Some(0), ..Default::default() }).await.unwrap();
    assert!(created.job_modify_index > 0);
    assert!(!created.eval_id.is_empty());

    let error = client.register_job(&job, RegisterOptions { enforce_index: Some(0), ..Default::default() }).await.unwrap_err();
    let api = error.api().expect("an API error");
    assert_eq!((api.status, api.body.as_str()), (500, "Enforcing job modify index 0: job already exists"));
    assert!(api.is_enforce_index_conflict());
    assert!(api.hint.as_deref().unwrap().contains("re-run `pgnomad plan`"));
}

#[tokio::test]
async fn a_change_made_after_the_plan_is_caught_by_the_plans_index() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    let mut job = simple_job("pg");
    client.register_job(&job, RegisterOptions::default()).await.unwrap();
    job["Meta"]["owner"] = json!("dba");
    let plan = client.plan_job(&job).await.unwrap();
    let planned_index = plan.job_modify_index;
    assert!(planned_index > 0);

    nomad.force_index_conflict("default", "pg");
    let current = client.read_job("pg").await.unwrap().unwrap().job_modify_index;
    assert_ne!(current, planned_index);

    let error = client.register_job(&job, RegisterOptions { enforce_index: Some(planned_index), ..Default::default() }).await.unwrap_err();
    let api = error.api().unwrap();
    assert_eq!(api.body, format!("Enforcing job modify index {planned_index}: job exists with conflicting job modify index: {current}"));
    assert!(api.hint.as_deref().unwrap().contains("changed the job since the plan"));

    // With the current index the same register goes through.
    let registered = client.register_job(&job, RegisterOptions { enforce_index: Some(current), ..Default::default() }).await.unwrap();
    assert!(registered.job_modify_index > current);
    let versions = client.job_versions("pg").await.unwrap();
    assert_eq!(versions.versions.len(), 3);
    assert_eq!(versions.versions[0].version, 2, "newest version first");
}

#[tokio::test]
async fn check_index_on_a_missing_job_says_so() {
    let nomad = NomadDouble::start();
    let error =
        nomad.client().register_job(&simple_job("pg"), RegisterOptions { enforce_index: Some(7), ..Default::default() }).await.unwrap_err();
    assert_eq!(error.api().unwrap().body, "Enforcing job modify index 7: job does not exist");
}

#[tokio::test]
async fn plan_reports_the_diff_and_the_desired_updates() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    let job = members_job("pg", 2, |_| vec![http_check("alive", "/liveness", None)]);

    let plan = client.plan_job(&job).await.unwrap();
    let diff = plan.diff.as_ref().unwrap();
    assert_eq!(diff.diff_type, DiffType::Added);
    assert_eq!(diff.task_groups.len(), 2);
    assert_eq!(plan.annotations.as_ref().unwrap().desired_tg_updates["member-1"].place, 1);
    assert_eq!(plan.job_modify_index, 0);
    assert!(plan.has_changes());
    assert!(nomad.client().read_job("pg").await.unwrap().is_none(), "a plan changes nothing");

    client.register_job(&job, RegisterOptions::default()).await.unwrap();
    let unchanged = client.plan_job(&job).await.unwrap();
    assert_eq!(unchanged.diff.as_ref().unwrap().diff_type, DiffType::None);
    assert_eq!(unchanged.annotations.as_ref().unwrap().desired_tg_updates["member-0"].ignore, 1);
    assert!(!unchanged.has_changes());

    let mut edited = job.clone();
    edited["TaskGroups"][1]["Tasks"][0]["Config"]["image"] = json!("ghcr.io/pgnomad/patroni:3.4");
    let plan = client.plan_job(&edited).await.unwrap();
    let diff = plan.diff.unwrap();
    assert_eq!(diff.diff_type, DiffType::Edited);
    let member_1 = diff.task_groups.iter().find(|g| g.name == "member-1").unwrap();
    assert_eq!(member_1.diff_type, DiffType::Edited);
    let config = member_1.tasks[0].objects.iter().find(|o| o.name == "Config").unwrap();
    let image = config.fields.iter().find(|f| f.name == "image").unwrap();
    assert_eq!((image.old.as_str(), image.new.as_str()), ("ghcr.io/pgnomad/patroni:3.3", "ghcr.io/pgnomad/patroni:3.4"));
    let updates = &plan.annotations.unwrap().desired_tg_updates;
    assert_eq!(updates["member-1"].destructive_update, 1);
    // The job's modify index moved: member-0's allocation is updated in place (tasksUpdated
    // finds nothing destructive), not ignored.
    assert_eq!((updates["member-0"].in_place_update, updates["member-0"].ignore), (1, 0));
    assert_eq!(diff.task_groups.iter().find(|g| g.name == "member-0").unwrap().diff_type, DiffType::None);
}

#[tokio::test]
async fn a_blocking_query_returns_when_the_index_moves_and_not_before() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    client.register_job(&simple_job("pg"), RegisterOptions::default()).await.unwrap();
    let (job, index): (api::Job, u64) = client.get_blocking(api::read_job("pg"), 0, Duration::from_secs(1)).await.unwrap();
    assert_eq!(job.version, 0);

    let address = nomad.settings();
    let blocked = tokio::spawn(async move {
        let client = NomadClient::new(HttpTransport::nomad(&address).unwrap());
        let started = Instant::now();
        let (job, new_index): (api::Job, u64) = client.get_blocking(api::read_job("pg"), index, Duration::from_secs(10)).await.unwrap();
        (job, new_index, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!blocked.is_finished(), "the query returned before anything changed");

    let mut changed = simple_job("pg");
    changed["Meta"]["owner"] = json!("dba");
    client.register_job(&changed, RegisterOptions::default()).await.unwrap();
    let (job, new_index, elapsed) = tokio::time::timeout(Duration::from_secs(3), blocked).await.expect("woken by the change").unwrap();
    assert!(new_index > index);
    assert_eq!(job.version, 1);
    assert!(elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(3), "{elapsed:?}");
}

#[tokio::test]
async fn a_blocking_query_gives_up_after_its_wait() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    client.register_job(&simple_job("pg"), RegisterOptions::default()).await.unwrap();
    let (_, index): (api::Job, u64) = client.get_blocking(api::read_job("pg"), 0, Duration::from_secs(1)).await.unwrap();
    let started = Instant::now();
    let (_, same): (api::Job, u64) = client.get_blocking(api::read_job("pg"), index, Duration::from_millis(300)).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(same, index);
    assert!(elapsed >= Duration::from_millis(300) && elapsed < Duration::from_millis(300 + 300 / 16 + 500), "{elapsed:?}");
}

#[tokio::test]
async fn bad_blocking_parameters_get_nomads_answers() {
    let nomad = NomadDouble::start();
    let transport = nomad.client();
    let transport = transport.transport();
    let bad_wait = transport.send(&api::list_jobs(None, false).with_query("index", "1").with_query("wait", "10"), None).await.unwrap();
    assert_eq!((bad_wait.status, String::from_utf8_lossy(&bad_wait.body).as_ref()), (400, "Invalid wait time"));
    let bad_index = transport.send(&api::list_jobs(None, false).with_query("index", "x"), None).await.unwrap();
    assert_eq!((bad_index.status, String::from_utf8_lossy(&bad_index.body).as_ref()), (400, "Invalid index"));
    let fine = transport.send(&api::list_jobs(None, false), None).await.unwrap();
    assert!(fine.meta.index.is_some() && fine.meta.known_leader == Some(true) && fine.meta.last_contact_ms == Some(0));
}

#[tokio::test]
async fn a_deployment_is_followed_to_success() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    let job = members_job("pg", 3, |_| vec![http_check("alive", "/liveness", None)]);
    client.register_job(&job, RegisterOptions::default()).await.unwrap();
    let deployment = await_deployment(&client, "pg").await;
    assert_eq!(deployment.status, api::deployment_status::SUCCESSFUL, "{}", deployment.status_description);
    assert_eq!(deployment.status_description, "Deployment completed successfully");
    assert!(deployment.task_groups.values().all(|g| g.healthy_allocs == 1 && g.desired_total == 1));
    let allocations = client.job_allocations("pg").await.unwrap();
    assert_eq!(allocations.len(), 3);
    assert!(allocations.iter().all(|a| a.client_status == "running" && a.deployment_status.as_ref().unwrap().healthy == Some(true)));
    assert!(client.read_job("pg").await.unwrap().unwrap().stable);
    assert_eq!(client.read_job("pg").await.unwrap().unwrap().status, "running");
}

#[tokio::test]
async fn a_failing_deployment_shows_the_failed_task_events() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    nomad.fail_group("pg", "member-1");
    client.register_job(&members_job("pg", 2, |_| vec![]), RegisterOptions::default()).await.unwrap();
    let deployment = await_deployment(&client, "pg").await;
    assert_eq!(deployment.status, api::deployment_status::FAILED);
    assert_eq!(deployment.status_description, "Failed due to unhealthy allocations");
    let allocations = client.job_allocations("pg").await.unwrap();
    let failed = allocations.iter().find(|a| a.task_group == "member-1").unwrap();
    assert_eq!(failed.client_status, "failed");
    let events: Vec<&str> = failed.task_events().map(|(_, e)| e.event_type.as_str()).collect();
    assert!(events.contains(&"Driver Failure"), "{events:?}");
    assert!(failed.task_events().any(|(_, e)| e.driver_error.contains("failed to create container")));
}

#[tokio::test]
async fn variables_are_written_with_check_and_set_and_never_overwritten() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    let path = "nomad/jobs/pg";
    let written = client.put_variable(path, &items(&[("password", "first")]), Some(0)).await.unwrap();
    assert_eq!(written.items["password"], "first");
    assert!(written.modify_index > 0);

    let error = client.put_variable(path, &items(&[("password", "second")]), Some(0)).await.unwrap_err();
    let api = error.api().unwrap();
    assert_eq!(api.status, 409);
    assert!(api.hint.as_deref().unwrap().contains("already exists"));
    let current = conflicting_variable(&error).expect("the 409 body is the current variable");
    assert_eq!(current.items["password"], "first");
    assert_eq!(client.read_variable(path).await.unwrap().unwrap().items["password"], "first");

    let replaced = client.put_variable(path, &items(&[("password", "second")]), Some(written.modify_index)).await.unwrap();
    assert_eq!(replaced.items["password"], "second");
    assert!(client.delete_variable(path, Some(written.modify_index)).await.unwrap_err().api().unwrap().is_cas_conflict());
    client.delete_variable(path, Some(replaced.modify_index)).await.unwrap();
    assert!(client.read_variable(path).await.unwrap().is_none());
}

#[tokio::test]
async fn csi_volumes_are_created_read_listed_and_deleted() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    let created = client.create_csi_volume(&csi_volume("pg-data[0]")).await.unwrap();
    assert_eq!(created.volumes[0].id, "pg-data[0]");
    client.create_csi_volume(&csi_volume("pg-data[1]")).await.unwrap();
    client.create_csi_volume(&csi_volume("other")).await.unwrap();

    let volume = client.read_csi_volume("pg-data[0]").await.unwrap().unwrap();
    assert_eq!((volume.plugin_id.as_str(), volume.access_mode.as_str()), ("hostpath", "single-node-writer"));
    let listed: Vec<String> = client.list_csi_volumes(Some("pg-data")).await.unwrap().into_iter().map(|v| v.id).collect();
    assert_eq!(listed, vec!["pg-data[0]", "pg-data[1]"]);

    client.delete_csi_volume("pg-data[1]").await.unwrap();
    assert!(client.read_csi_volume("pg-data[1]").await.unwrap().is_none());
    assert!(client.delete_csi_volume("pg-data[1]").await.unwrap_err().is_not_found());
}

fn job_with_volume(id: &str, count: u64) -> serde_json::Value {
    let mut job = simple_job(id);
    job["TaskGroups"][0]["Count"] = json!(count);
    job["TaskGroups"][0]["Volumes"] = json!({"data": {"Name": "data", "Type": "csi", "Source": "pg-data", "AccessMode": "single-node-writer", "AttachmentMode": "file-system", "PerAlloc": true}});
    job
}

#[tokio::test]
async fn a_group_is_not_placed_before_its_csi_volumes_exist() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    let job = job_with_volume("pg", 2);
    let plan = client.plan_job(&job).await.unwrap();
    let failure = &plan.failed_tg_allocs["member-0"];
    // Nomad 2.0's wording (scheduler/feasible FilterConstraintCSIVolumeNotFoundTemplate), on every node.
    assert_eq!(failure.constraint_filtered.get("missing CSI volume(s) pg-data[0]"), Some(&3), "{failure:?}");

    client.register_job(&job, RegisterOptions::default()).await.unwrap();
    let evaluations = client.job_evaluations("pg").await.unwrap();
    assert!(evaluations.iter().any(|e| e.status == "blocked"));
    assert!(client.job_allocations("pg").await.unwrap().is_empty());

    client.create_csi_volume(&csi_volume("pg-data[0]")).await.unwrap();
    client.create_csi_volume(&csi_volume("pg-data[1]")).await.unwrap();
    // The blocked evaluation is retried once the volumes exist: the group is placed and its
    // allocations claim the volumes.
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.job_allocations("pg").await.unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "the blocked evaluation was never retried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(client.job_evaluations("pg").await.unwrap().iter().all(|e| e.status != "blocked"));
    // Another job cannot take volumes a live allocation holds.
    let plan = client.plan_job(&job_with_volume("pg-2", 2)).await.unwrap();
    assert!(plan.failed_tg_allocs["member-0"]
        .constraint_filtered
        .contains_key("CSI volume pg-data[0] has exhausted its available writer claims"));
    assert!(client.delete_csi_volume("pg-data[0]").await.unwrap_err().api().unwrap().body.contains("volume in use"));
}

#[tokio::test]
async fn reads_are_retried_after_5xx_with_backoff_and_then_succeed() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    client.register_job(&simple_job("pg"), RegisterOptions::default()).await.unwrap();
    nomad.inject(Fault::status("GET", "/v1/job/pg", 503).times(2));
    let before = client.transport().requests_sent();
    let started = Instant::now();
    let job = client.read_job("pg").await.unwrap().unwrap();
    assert_eq!(job.id, "pg");
    assert_eq!(client.transport().requests_sent() - before, 3);
    // Backoff of the double's client: 20 ms then 40 ms caps, at least half of each.
    assert!(started.elapsed() >= Duration::from_millis(30), "{:?}", started.elapsed());
    assert_eq!(nomad.requests().iter().filter(|r| r.method == "GET" && r.path == "/v1/job/pg").count(), 3);
}

#[tokio::test]
async fn retries_are_bounded() {
    let nomad = NomadDouble::start();
    nomad.inject(Fault::status("GET", "/v1/jobs", 502).times(10));
    let error = nomad.client().list_jobs(None).await.unwrap_err();
    assert_eq!(error.api().unwrap().status, 502);
    assert_eq!(nomad.requests().len(), 4, "max_attempts of the double's client");
}

#[tokio::test]
async fn a_write_is_not_retried_blindly() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    nomad.inject(Fault::status("PUT", "/v1/jobs", 503));
    let error = client.register_job(&simple_job("pg"), RegisterOptions::default()).await.unwrap_err();
    assert_eq!(error.api().unwrap().status, 503);
    nomad.inject(Fault::drop_connection("PUT", "/v1/jobs"));
    let error = client.register_job(&simple_job("pg"), RegisterOptions::default()).await.unwrap_err();
    assert!(matches!(error, TransportError::Connection { .. }), "{error:?}");
    assert_eq!(nomad.writes().len(), 2, "one attempt per register");
    assert!(client.read_job("pg").await.unwrap().is_none());
}

#[tokio::test]
async fn a_dropped_connection_on_a_read_is_retried() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    nomad.inject(Fault::drop_connection("GET", "/v1/status/leader"));
    assert_eq!(client.status_leader().await.unwrap(), "127.0.0.1:4647");
    assert_eq!(nomad.requests().len(), 2);
}

#[tokio::test]
async fn a_slow_answer_hits_the_request_timeout() {
    let nomad = NomadDouble::start();
    let transport =
        HttpTransport::nomad(&nomad.settings()).unwrap().with_retry(RetryPolicy::none()).with_request_timeout(Duration::from_millis(200));
    let client = NomadClient::new(transport);
    nomad.inject(Fault::delay("GET", "/v1/nodes", Duration::from_secs(2)));
    let error = client.list_nodes().await.unwrap_err();
    assert!(matches!(error, TransportError::Timeout { .. }), "{error:?}");
    assert_eq!(client.list_nodes().await.unwrap()[0].status, "ready");
}

#[tokio::test]
async fn a_cluster_without_leader_gives_a_clear_error() {
    let nomad = NomadDouble::start();
    let transport = HttpTransport::nomad(&nomad.settings()).unwrap().with_retry(RetryPolicy::none());
    let client = NomadClient::new(transport);
    nomad.set_leader(false);
    assert_eq!(client.status_leader().await.unwrap(), "");
    let error = client.read_job("pg").await.unwrap_err();
    let api = error.api().unwrap();
    assert_eq!((api.status, api.body.as_str()), (500, "No cluster leader"));
    assert!(api.is_no_leader() && api.hint.as_deref().unwrap().contains("no leader"));
    let raw = client.transport().send(&api::read_job("pg"), None).await.unwrap();
    assert_eq!(raw.meta.known_leader, Some(false), "X-Nomad-KnownLeader: false");
    nomad.set_leader(true);
    assert!(client.read_job("pg").await.unwrap().is_none());
}

#[tokio::test]
async fn connection_refused_points_at_nomad_addr() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", unused.local_addr().unwrap());
    drop(unused);
    let settings = pgnomad::settings::NomadSettings { address, token: None, namespace: None, region: None, tls: Default::default() };
    let transport = HttpTransport::nomad(&settings).unwrap().with_retry(RetryPolicy {
        max_attempts: 2,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(2),
    });
    let client = NomadClient::new(transport);
    let error = client.register_job(&simple_job("pg"), RegisterOptions::default()).await.unwrap_err();
    assert!(matches!(error, TransportError::Connect { .. }), "{error:?}");
    assert!(error.to_string().contains("check NOMAD_ADDR"), "{error}");
    assert_eq!(client.transport().requests_sent(), 2, "nothing was sent, so even a write may try again");
}

#[tokio::test]
async fn the_acl_token_is_sent_and_required() {
    let nomad = NomadDouble::start_with(crate::support::DoubleConfig { acl_token: Some("s3cr3t".into()), ..Default::default() });
    let anonymous = nomad.client_with(pgnomad::settings::NomadSettings { token: None, ..nomad.settings() });
    let error = anonymous.list_jobs(None).await.unwrap_err();
    let api = error.api().unwrap();
    assert_eq!((api.status, api.body.as_str()), (403, "Permission denied"));
    assert!(api.hint.as_deref().unwrap().contains("NOMAD_TOKEN"));
    let wrong = nomad.client_with(pgnomad::settings::NomadSettings { token: Some("nope".into()), ..nomad.settings() });
    assert_eq!(wrong.list_jobs(None).await.unwrap_err().api().unwrap().body, "ACL token not found");
    assert!(nomad.client().list_jobs(None).await.unwrap().is_empty());
    assert!(nomad.client().agent_self().await.unwrap().config.acl_enabled());
}

#[tokio::test]
async fn namespace_and_region_from_settings_reach_every_request() {
    let nomad = NomadDouble::start();
    let client =
        nomad.client_with(pgnomad::settings::NomadSettings { namespace: Some("db".into()), region: Some("eu".into()), ..nomad.settings() });
    client.register_job(&simple_job("pg"), RegisterOptions::default()).await.unwrap();
    let jobs = client.list_jobs(Some("pg")).await.unwrap();
    assert_eq!(jobs[0].namespace, "db");
    assert!(nomad.client().read_job("pg").await.unwrap().is_none(), "not in the default namespace");
    let request = &nomad.requests()[0];
    assert!(request.query.contains(&("namespace".into(), "db".into())) && request.query.contains(&("region".into(), "eu".into())));
}

#[tokio::test]
async fn jobs_are_listed_by_prefix_with_their_meta() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    for id in ["pg", "pg-backup", "other"] {
        client.register_job(&simple_job(id), RegisterOptions::default()).await.unwrap();
    }
    let jobs = client.list_jobs(Some("pg")).await.unwrap();
    let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, vec!["pg", "pg-backup"]);
    // The prefix alone matches too much; Meta tells exactly which stack owns a job.
    let owned: Vec<&str> =
        jobs.iter().filter(|j| j.meta.get("pgnomad.stack").map(String::as_str) == Some("pg")).map(|j| j.id.as_str()).collect();
    assert_eq!(owned, vec!["pg"]);
}

#[tokio::test]
async fn deregister_purge_dispatch_and_periodic_force() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    let mut batch = simple_job("backup");
    batch["Type"] = json!("batch");
    batch["TaskGroups"][0]["Services"] = json!([]);
    batch["Periodic"] = json!({"Enabled": true, "Spec": "0 3 * * *", "SpecType": "cron", "ProhibitOverlap": true});
    client.register_job(&batch, RegisterOptions::default()).await.unwrap();
    assert!(client.job_allocations("backup").await.unwrap().is_empty(), "a periodic parent runs nothing itself");
    let forced = client.force_periodic("backup").await.unwrap();
    assert!(!forced.eval_id.is_empty());
    assert!(client.list_jobs(Some("backup/periodic-")).await.unwrap().len() == 1);

    let mut restore = simple_job("restore");
    restore["Type"] = json!("batch");
    restore["TaskGroups"][0]["Services"] = json!([]);
    restore["ParameterizedJob"] = json!({"Payload": "forbidden", "MetaRequired": ["target_time"]});
    client.register_job(&restore, RegisterOptions::default()).await.unwrap();
    let meta = BTreeMap::from([("target_time".to_string(), "2026-11-25 10:00".to_string())]);
    let dispatched = client.dispatch_job("restore", None, &meta).await.unwrap();
    assert!(dispatched.dispatched_job_id.starts_with("restore/dispatch-"));
    let child = client.read_job(&dispatched.dispatched_job_id).await.unwrap().unwrap();
    assert_eq!(child.meta["target_time"], "2026-11-25 10:00");

    client.register_job(&simple_job("pg"), RegisterOptions::default()).await.unwrap();
    client.deregister_job("pg", false).await.unwrap();
    let stopped = client.read_job("pg").await.unwrap().unwrap();
    assert!(stopped.stop);
    client.deregister_job("pg", true).await.unwrap();
    assert!(client.read_job("pg").await.unwrap().is_none());
    assert!(client.deregister_job("pg", true).await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn a_running_deployment_can_be_failed_and_promoted() {
    // Real time (no scaling): the allocation's healthy deadline is 5 minutes away, so the
    // deployment cannot fail on its own while the test promotes and fails it. (Scaled to 0.3 s
    // it sometimes failed first on a loaded machine: "can't promote terminal deployment".)
    let nomad = NomadDouble::start_with(DoubleConfig { time_scale: 1.0, ..DoubleConfig::default() });
    let client = nomad.client();
    // A check that never passes keeps the deployment running; the oracle says so before the
    // allocation exists, so the check never passes even once.
    nomad.set_health_oracle(|probe| probe.path != "/never");
    client.register_job(&members_job("pg", 1, |_| vec![http_check("never", "/never", None)]), RegisterOptions::default()).await.unwrap();
    let deployment = client.job_latest_deployment("pg").await.unwrap().unwrap();
    assert_eq!(deployment.status, "running");
    client.promote_deployment(&deployment.id, &[]).await.unwrap();
    client.fail_deployment(&deployment.id).await.unwrap();
    let failed = client.read_deployment(&deployment.id).await.unwrap();
    assert_eq!((failed.status.as_str(), failed.status_description.as_str()), ("failed", "Deployment marked as failed"));
    assert_eq!(client.fail_deployment(&deployment.id).await.unwrap_err().api().unwrap().status, 500);
}

#[tokio::test]
async fn the_order_of_writes_is_recorded() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    client.put_variable("nomad/jobs/pg", &items(&[("password", "x")]), Some(0)).await.unwrap();
    client.create_csi_volume(&csi_volume("pg-data")).await.unwrap();
    client.register_job(&simple_job("pg"), RegisterOptions::default()).await.unwrap();
    let writes: Vec<String> = nomad.writes().iter().map(|r| format!("{} {}", r.method, r.path)).collect();
    assert_eq!(writes, vec!["PUT /v1/var/nomad/jobs/pg", "PUT /v1/volume/csi/pg-data/create", "PUT /v1/jobs"]);
    assert_eq!(nomad.writes()[0].query, vec![("cas".to_string(), "0".to_string())]);
}

#[tokio::test]
async fn nodes_agent_and_leader_decode() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    let nodes = client.list_nodes().await.unwrap();
    assert!(nodes[0].drivers["docker"].healthy);
    let agent = client.agent_self().await.unwrap();
    assert_eq!((agent.config.region.as_str(), agent.member.name.as_str()), ("global", "double.global"));
    assert!(!agent.config.acl_enabled());
    assert_eq!(client.status_leader().await.unwrap(), "127.0.0.1:4647");
    let raw = client.transport().send(&Request::new(Method::Get, "/v1/nope"), None).await.unwrap();
    assert_eq!(raw.status, 404);
    let _ = SECOND;
}

/// pgnomad's own check of a backup schedule (`validate`) against the cron library Nomad
/// parses it with: what pgnomad lets through, Nomad registers, and what Nomad would refuse,
/// pgnomad refuses first with its own message. (This found pgnomad letting `*/60` through.)
#[test]
fn pgnomad_reads_cron_specs_as_nomads_cron_library_does() {
    use crate::support::nomad_double::periodic;
    let accepted = [
        "0 1 * * 0",
        "0 1 * * 7",
        "0 1 * * 1-6",
        "0 */4 * * *",
        "30 2 1,15 JAN-jun sun",
        "0 1 * * Monday",
        "0 0 L * ?",
        "0 0 15W * *",
        "0 0 ? * FRI#2",
        "0 0 ? * 5L",
        "0 1 * * 0 2030",
        "15 0 1 * * 0 *",
        "*/10 * * * * * *",
        "0 0 1 1 * 2099",
        "@daily",
        "@weekly",
    ];
    let refused = [
        "",
        "0",
        "0 1 * *",
        "61 * * * *",
        "0 24 * * *",
        "0 0 0 * *",
        "0 0 * 13 *",
        "0 0 * * 8",
        "*/0 * * * *",
        "*/60 * * * *",
        "0 0 * * */7",
        "0 0 * FOO *",
        "every day at one o'clock",
        "? 0 * * *",
        "@weekdays",
    ];
    let nomad_errors = |spec: &str| periodic::ask(&json!({"Specs": [spec], "TimeZone": "UTC"}), std::time::SystemTime::now()).errors;
    let mut disagreements = Vec::new();
    // pgnomad is stricter on purpose where cronexpr reads a likely slip as something: `?` as
    // `*` outside the day fields, a backwards range as no value, an empty list item as none.
    let stricter = |error: &str| ["`?` is not", "runs backwards", "`` is not"].iter().any(|slip| error.contains(slip));
    let mut compare = |spec: &str| {
        let (ours, theirs) = (pgnomad::stack::validate::check_cron(spec), nomad_errors(spec));
        let agree = match &ours {
            Ok(()) => theirs.is_empty(),
            Err(error) => !theirs.is_empty() || stricter(error),
        };
        if !agree {
            disagreements.push(format!("{spec:?}: pgnomad {ours:?}, Nomad {theirs:?}"));
        }
        ours.is_ok()
    };
    for spec in accepted {
        assert!(compare(spec), "pgnomad refuses {spec:?}");
    }
    for spec in refused {
        assert!(!compare(spec), "pgnomad accepts {spec:?}");
    }
    // Every field in turn (the others `*`, and `?` for the other day field where that one
    // takes `?`), in the 5-field, 6-field (year) and 7-field (seconds) forms, with values at and
    // past each edge, names, steps, lists and cronexpr's special characters.
    let tokens = [
        "*", "?", "0", "1", "5", "6", "7", "12", "13", "23", "24", "31", "32", "59", "60", "1969", "1970", "2099", "2100", "*/1", "*/0",
        "*/05", "*/005", "*/6", "*/7", "*/12", "*/13", "*/23", "*/24", "*/31", "*/32", "*/59", "*/60", "*/61", "5/10", "1-5", "5-1",
        "1-5/2", "0-6", "1-7", "L", "LW", "W", "15W", "32W", "5L", "7L", "L5", "FRI#2", "FRI#5", "FRI#6", "5#2", "#2", "jan", "JAN-MAR",
        "dec", "janu", "january", "sun", "SUN-SAT", "mon-fri", "sunday", "1,2", "1,,2", "x", "-1", "1-", "/5", "*/", "**",
    ];
    for fields in [5, 6, 7] {
        for position in 0..fields {
            for token in tokens {
                let mut spec = vec!["*"; fields];
                spec[position] = token;
                let spec = spec.join(" ");
                compare(&spec);
            }
        }
    }
    assert!(disagreements.is_empty(), "{} disagreements:\n{}", disagreements.len(), disagreements.join("\n"));
    // Stricter on purpose: cronexpr drops fields past the seventh without a word.
    assert!(pgnomad::stack::validate::check_cron("0 1 * * * * * *").is_err());
    assert_eq!(nomad_errors("0 1 * * * * * *"), Vec::<String>::new());
}

/// The periodic dispatcher: a job launches `<id>/periodic-<t>` on its cron by itself; with
/// `ProhibitOverlap` no launch while a child still runs; a stopped job launches nothing; a
/// spec or time zone Nomad cannot read is refused at registration with Nomad's message.
#[tokio::test]
async fn periodic_jobs_launch_on_their_cron_and_never_overlap_when_told_not_to() {
    let nomad = NomadDouble::start();
    let client = nomad.client();
    let periodic_job = |id: &str, prohibit_overlap: bool| {
        let mut job = simple_job(id);
        job["Type"] = json!("batch");
        job["TaskGroups"][0]["Services"] = json!([]);
        job["Periodic"] = json!({"Enabled": true, "Specs": ["* * * * * * *"], "SpecType": "cron", "ProhibitOverlap": prohibit_overlap, "TimeZone": "UTC"});
        job
    };
    let mut bad = periodic_job("bad", true);
    bad["Periodic"]["Specs"] = json!(["0 1 * * 0", "61 * * * *"]);
    bad["Periodic"]["TimeZone"] = json!("Mars/Olympus");
    let refused = client.register_job(&bad, RegisterOptions::default()).await.unwrap_err().to_string();
    assert!(refused.contains("Invalid time zone \"Mars/Olympus\""), "{refused}");
    assert!(refused.contains("Invalid cron spec \"61 * * * *\""), "{refused}");
    assert!(!refused.contains("\"0 1 * * 0\""), "{refused}");

    let registered = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    client.register_job(&periodic_job("single", true), RegisterOptions::default()).await.unwrap();
    client.register_job(&periodic_job("many", false), RegisterOptions::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    // Every second, on the second, after the registration.
    let many = launches(&nomad, "many").await;
    assert!(many.len() >= 3, "{many:?}");
    assert!(many.iter().all(|t| *t >= registered), "{many:?} before {registered}");
    assert!(many.windows(2).all(|w| w[1] == w[0] + 1), "one launch a second: {many:?}");
    // The first child of `single` still runs (the simulated client never ends a batch task by
    // itself): no second launch.
    let single = launches(&nomad, "single").await;
    assert_eq!(single.len(), 1, "{single:?}");
    let first = format!("single/periodic-{}", single[0]);
    for alloc in client.job_allocations(&first).await.unwrap() {
        nomad.set_alloc_client_status(&alloc.id, "complete").unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while launches(&nomad, "single").await.len() < 2 {
        assert!(Instant::now() < deadline, "no launch once the child had finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A stopped periodic job is no longer tracked.
    client.deregister_job("many", false).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped_at = launches(&nomad, "many").await.len();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(launches(&nomad, "many").await.len(), stopped_at, "a stopped job launched");
}

/// The launch times of `id`'s periodic children, in order.
async fn launches(nomad: &NomadDouble, id: &str) -> Vec<u64> {
    let jobs = nomad.client().list_jobs(Some(&format!("{id}/periodic-"))).await.unwrap();
    let mut launched: Vec<u64> =
        jobs.iter().map(|j| j.id.rsplit_once("periodic-").and_then(|(_, t)| t.parse().ok()).expect("a launch time")).collect();
    launched.sort_unstable();
    launched
}
