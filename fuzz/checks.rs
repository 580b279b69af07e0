// What each fuzz target does with one input. Shared, through `#[path]`, by the fuzz targets
// (`fuzz/fuzz_targets/*.rs`) and by the regression tests of the normal test binary
// (`tests/fuzz_regressions.rs`), so that a crash kept as a file replays the very same code.
// Both functions must never panic, whatever the bytes.

use pgnomad::nomad::api::{self, Request, Response};
use pgnomad::stack::{self, Source};
use pgnomad::transport::decode;

/// A stack file through parse → decode → validate → diagnostic rendering, as `pgnomad
/// validate` reads it (`std::fs::read_to_string`: text that is not UTF-8 is refused before).
pub fn stack_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let source = Source::new("pgnomad.hcl", text);
    let diagnostics = match stack::load(&source) {
        Ok(checked) => checked.warnings,
        Err(diagnostics) => diagnostics,
    };
    for diagnostic in &diagnostics {
        let rendered = source.render(diagnostic);
        assert!(rendered.starts_with("error: ") || rendered.starts_with("warning: "), "{rendered}");
    }
}

/// The decoders that read what servers and pgBackRest answer. The first byte picks the
/// decoder (the seeds carry it), the rest is the body; a status line decides how an
/// answer that is not 2xx is read.
pub const DECODERS: &[&str] = &[
    "nomad-job-register",
    "nomad-job-plan",
    "nomad-job",
    "nomad-job-versions",
    "nomad-allocations",
    "nomad-evaluations",
    "nomad-deployment",
    "nomad-deployment-update",
    "nomad-job-deregister",
    "nomad-periodic-force",
    "nomad-job-dispatch",
    "nomad-jobs",
    "nomad-csi-volume",
    "nomad-csi-volumes",
    "nomad-csi-volume-create",
    "nomad-variable",
    "nomad-variables",
    "nomad-status-leader",
    "nomad-agent-self",
    "nomad-nodes",
    "nomad-error",
    "consul-health-service",
    "consul-catalog-services",
    "consul-status-leader",
    "patroni-cluster",
    "dev-patroni-cluster",
    "pgbackrest-info",
];

/// The selector byte a seed for `decoder` starts with.
pub fn selector(decoder: &str) -> u8 {
    DECODERS.iter().position(|d| *d == decoder).expect("a known decoder") as u8
}

pub fn response(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else { return };
    let name = DECODERS[selector as usize % DECODERS.len()];
    let request = Request::get("/v1/fuzz");
    let answer = Response { status: 200, body: body.to_vec(), meta: Default::default() };
    // Every error must say what it could not decode, and where.
    fn check<T>(result: Result<T, pgnomad::transport::TransportError>, use_it: impl FnOnce(&T)) {
        match result {
            Ok(value) => use_it(&value),
            Err(error) => {
                let message = error.to_string();
                assert!(message.contains("/v1/fuzz"), "{message}");
            }
        }
    }
    macro_rules! plain {
        ($ty:ty) => {
            check(decode::<$ty>(&request, &answer), |_| ())
        };
    }
    match name {
        "nomad-job-register" => plain!(api::JobRegisterResponse),
        "nomad-job-plan" => check(decode::<api::JobPlanResponse>(&request, &answer), |plan| {
            let _ = plan.has_changes();
        }),
        "nomad-job" => plain!(api::Job),
        "nomad-job-versions" => plain!(api::JobVersionsResponse),
        "nomad-allocations" => check(decode::<Vec<api::AllocListStub>>(&request, &answer), |allocations| {
            for allocation in allocations {
                let _ = allocation.task_events().count();
            }
        }),
        "nomad-evaluations" => plain!(Vec<api::Evaluation>),
        "nomad-deployment" => check(decode::<api::Deployment>(&request, &answer), |deployment| {
            let _ = deployment.is_terminal();
        }),
        "nomad-deployment-update" => plain!(api::DeploymentUpdateResponse),
        "nomad-job-deregister" => plain!(api::JobDeregisterResponse),
        "nomad-periodic-force" => plain!(api::PeriodicForceResponse),
        "nomad-job-dispatch" => plain!(api::JobDispatchResponse),
        "nomad-jobs" => plain!(Vec<api::JobListStub>),
        "nomad-csi-volume" => plain!(api::CsiVolume),
        "nomad-csi-volumes" => plain!(Vec<api::CsiVolumeListStub>),
        "nomad-csi-volume-create" => plain!(api::CsiVolumeCreateResponse),
        "nomad-variable" => plain!(api::Variable),
        "nomad-variables" => plain!(Vec<api::VariableMetadata>),
        "nomad-status-leader" => plain!(String),
        "nomad-agent-self" => check(decode::<api::AgentSelf>(&request, &answer), |agent| {
            let _ = agent.config.acl_enabled();
        }),
        "nomad-nodes" => plain!(Vec<api::NodeListStub>),
        "nomad-error" => {
            // A non-2xx answer: its text becomes the error, and a 409's body the variable
            // that won the check-and-set. The status is the body's first two bytes.
            let status = body.get(..2).map_or(500, |b| 100 + u16::from_be_bytes([b[0], b[1]]) % 500);
            let text = String::from_utf8_lossy(body.get(2..).unwrap_or_default()).into_owned();
            for path in ["/v1/jobs", "/v1/job/main-postgres", "/v1/var/nomad/jobs/main-postgres"] {
                let request = Request::new(api::Method::Put, path).with_query("cas", "0");
                let error =
                    pgnomad::transport::TransportError::from(api::NomadError::new(status, text.clone(), api::RequestKind::of(&request)));
                let _ = error.to_string();
                let _ = pgnomad::transport::conflicting_variable(&error);
            }
        }
        "consul-health-service" => check(decode::<Vec<pgnomad::consul::ServiceEntry>>(&request, &answer), |entries| {
            for entry in entries {
                let _ = (entry.is_passing(), entry.address());
            }
        }),
        "consul-catalog-services" => plain!(std::collections::BTreeMap<String, Vec<String>>),
        "consul-status-leader" => plain!(String),
        "patroni-cluster" => check(decode::<pgnomad::patroni::PatroniCluster>(&request, &answer), |cluster| {
            for member in &cluster.members {
                let _ = member.lag_bytes();
            }
        }),
        "dev-patroni-cluster" => {
            // The dev supervisor reads the body as text (a lossy read never fails).
            let text = String::from_utf8_lossy(body);
            if let Ok(cluster) = serde_json::from_str::<pgnomad::dev::patroni::Cluster>(&text) {
                let _ = cluster.leader();
            }
        }
        "pgbackrest-info" => match pgnomad::pgbackrest::parse_info(body) {
            Ok(info) => {
                for stanza in &info {
                    let _ = (stanza.is_ok(), stanza.latest_backup());
                }
            }
            Err(error) => assert!(error.to_string().contains("pgbackrest info"), "{error}"),
        },
        other => unreachable!("decoder {other} has no case"),
    }
}
