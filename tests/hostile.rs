//! Hostile answers: truncated, oversized, wrongly typed, slow and missing bodies from what
//! pgnomad takes for Nomad, Consul and Patroni. Each gives a clear error that names the
//! endpoint, within the request's timeout; never a panic, never a hang.

use std::process::Output;
use std::time::{Duration, Instant};

use pgnomad::settings::{ConsulSettings, NomadSettings, TlsSettings};
use pgnomad::transport::{HttpTransport, NomadClient, RetryPolicy, TransportError};

use crate::stack_fixtures::DEFAULT;
use crate::support::hostile::{Answer, Hostile};

const TIMEOUT: Duration = Duration::from_secs(2);

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
}

fn nomad_client(server: &Hostile) -> NomadClient<HttpTransport> {
    let settings = NomadSettings { address: server.address(), token: None, namespace: None, region: None, tls: TlsSettings::default() };
    NomadClient::new(HttpTransport::nomad(&settings).unwrap().with_retry(RetryPolicy::none()).with_request_timeout(TIMEOUT))
}

fn consul_client(server: &Hostile) -> pgnomad::consul::ConsulClient<HttpTransport> {
    let settings = ConsulSettings { address: server.address(), token: None, tls: TlsSettings::default() };
    pgnomad::consul::ConsulClient::new(
        HttpTransport::consul(&settings).unwrap().with_retry(RetryPolicy::none()).with_request_timeout(TIMEOUT),
    )
}

/// Runs `call` against a server answering `answer`; returns its error text, checking that it
/// came in time.
fn failure<T: std::fmt::Debug>(answer: Answer, call: impl FnOnce(&Hostile) -> Result<T, TransportError>) -> (TransportError, String) {
    let server = Hostile::start(answer.clone());
    let started = Instant::now();
    let error = call(&server).expect_err(&format!("{answer:?} must fail"));
    // The timeout plus a margin for a loaded machine.
    assert!(started.elapsed() < TIMEOUT + Duration::from_secs(8), "{answer:?} took {:?}", started.elapsed());
    let text = error.to_string();
    (error, text)
}

const BAD_BODIES: [Answer; 5] = [Answer::Truncated, Answer::Oversized, Answer::WronglyTyped, Answer::Slow, Answer::Silent];

#[test]
fn the_nomad_client_names_the_endpoint_of_every_bad_answer() {
    for answer in BAD_BODIES {
        let (error, text) = failure(answer.clone(), |server| block_on(nomad_client(server).list_jobs(Some("main-"))));
        assert!(text.contains("GET /v1/jobs"), "{answer:?}: {text}");
        match answer {
            Answer::Truncated => assert!(matches!(error, TransportError::Connection { .. }), "{answer:?}: {text}"),
            Answer::Oversized => assert!(text.contains("the answer is larger than 64 MiB"), "{answer:?}: {text}"),
            Answer::WronglyTyped => {
                assert!(text.starts_with("cannot decode the answer to GET /v1/jobs: invalid type: integer `12345`"), "{text}")
            }
            Answer::Slow | Answer::Silent => assert_eq!(text, "GET /v1/jobs got no answer within 2s"),
            Answer::Body(_) => unreachable!(),
        }
    }
    // The same for an answer read as an object, and for a write.
    let (_, text) = failure(Answer::WronglyTyped, |server| block_on(nomad_client(server).read_job("main-postgres")));
    assert!(text.starts_with("cannot decode the answer to GET /v1/job/main-postgres: invalid type"), "{text}");
    let (_, text) =
        failure(Answer::Slow, |server| block_on(nomad_client(server).register_job(&serde_json::json!({"ID": "x"}), Default::default())));
    assert!(text.contains("/v1/jobs got no answer within 2s"), "{text}");
}

#[test]
fn the_consul_client_names_the_endpoint_of_every_bad_answer() {
    for answer in BAD_BODIES {
        let (_, text) = failure(answer.clone(), |server| block_on(consul_client(server).health_service("main-primary", true)));
        assert!(text.contains("GET /v1/health/service/main-primary"), "{answer:?}: {text}");
    }
    let (_, text) =
        failure(Answer::Body("{\"main-primary\": \"member-0\"}".into()), |server| block_on(consul_client(server).catalog_services()));
    assert!(
        text.starts_with("cannot decode the answer to GET /v1/catalog/services: invalid type: string \"member-0\", expected a sequence"),
        "{text}"
    );
}

#[test]
fn the_patroni_clients_name_the_endpoint_of_every_bad_answer() {
    for answer in BAD_BODIES {
        // Through Consul's address for a member (the deploy side, a 2 s timeout of its own).
        let (_, text) =
            failure(answer.clone(), |server| block_on(pgnomad::patroni::read_cluster(&HttpTransport::patroni(&server.address()).unwrap())));
        assert!(text.contains("GET /cluster"), "{answer:?}: {text}");
        // The dev supervisor's plain socket client: a deadline for the whole answer.
        let server = Hostile::start(answer.clone());
        let started = Instant::now();
        let result = pgnomad::dev::patroni::request(&server.socket(), "GET", "/cluster", None, None, TIMEOUT);
        assert!(started.elapsed() < TIMEOUT + Duration::from_secs(8), "{answer:?} took {:?}", started.elapsed());
        match answer {
            // A body cut short or of the wrong type is the caller's to read: `cluster` then
            // says there is no cluster to be seen.
            Answer::Truncated | Answer::WronglyTyped => {
                assert_eq!(result.as_ref().map(|(status, _)| *status).ok(), Some(200), "{answer:?}: {result:?}");
                assert!(pgnomad::dev::patroni::cluster(&server.socket()).is_none());
            }
            Answer::Oversized => assert_eq!(result.unwrap_err().to_string(), "GET /cluster: the answer is larger than 16 MiB"),
            Answer::Slow | Answer::Silent => assert_eq!(result.unwrap_err().to_string(), "GET /cluster: no whole answer within 2s"),
            Answer::Body(_) => unreachable!(),
        }
    }
}

fn pgnomad(nomad: &str, consul: &str, args: &[&str]) -> (Output, Duration) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pgnomad.hcl"), DEFAULT).unwrap();
    let started = Instant::now();
    let output = crate::deploy::pgnomad_at(dir.path(), nomad, consul, args);
    (output, started.elapsed())
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn status_plan_and_run_name_the_endpoint_of_a_bad_nomad_answer() {
    for answer in [Answer::Truncated, Answer::Oversized, Answer::WronglyTyped] {
        let server = Hostile::start(answer.clone());
        for (args, code) in [(&["status"][..], 2), (&["plan"], 255), (&["run"], 2)] {
            let (output, took) = pgnomad(&server.address(), &server.address(), args);
            let text = stderr(&output);
            assert_eq!(output.status.code(), Some(code), "{answer:?} {args:?}: {text}");
            assert!(!text.contains("panicked"), "{answer:?} {args:?}: {text}");
            // The last request sent is the one the error names.
            let last = server.requests().last().cloned().expect("a request was sent");
            assert!(text.contains(&last), "{answer:?} {args:?}: `{last}` not named in: {text}");
            let what = match answer {
                Answer::Truncated => "failed: ",
                Answer::Oversized => ": the answer is larger than 64 MiB; check NOMAD_ADDR",
                _ => ": invalid type: integer `12345`",
            };
            assert!(text.contains(what), "{answer:?} {args:?}: {text}");
            assert!(took < Duration::from_secs(60), "{answer:?} {args:?} took {took:?}");
        }
    }
}

#[test]
fn status_gives_up_on_a_nomad_that_never_finishes_its_answer() {
    // Reads are tried four times, each with the 30 s request timeout: bounded, not short.
    let server = Hostile::start(Answer::Slow);
    let (output, took) = pgnomad(&server.address(), &server.address(), &["status"]);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("GET /v1/jobs got no answer within 30s"), "{text}");
    assert_eq!(server.requests().len(), 4, "{:?}", server.requests());
    assert!(took < Duration::from_secs(150), "took {took:?}");
}

#[test]
fn status_shows_a_bad_consul_answer_as_unknown_with_its_endpoint() {
    let nomad = crate::support::NomadDouble::start();
    let consul = Hostile::start(Answer::WronglyTyped);
    let (output, _) = pgnomad(&nomad.address(), &consul.address(), &["status"]);
    let out = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{out}{}", stderr(&output));
    assert!(out.contains("cannot decode the answer to GET /v1/health/service/"), "{out}");
}
