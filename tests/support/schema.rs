//! Request bodies checked against tests/nomad-api/nomad-api-schema.json (the project's copy of
//! the schema generated from Nomad's Go structs; see tests/nomad-api/README.md). The schema is 550 KB:
//! parsed once per process, and one validator compiled per type, on first use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{json, Value};

pub fn schema_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nomad-api/nomad-api-schema.json")
}

/// The whole schema document.
pub fn document() -> &'static Value {
    schema()
}

fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let path = schema_path();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        serde_json::from_str(&text).expect("the Nomad API schema is JSON")
    })
}

fn validator(type_name: &str) -> Arc<jsonschema::Validator> {
    static VALIDATORS: OnceLock<Mutex<HashMap<String, Arc<jsonschema::Validator>>>> = OnceLock::new();
    let cache = VALIDATORS.get_or_init(Default::default);
    if let Some(found) = cache.lock().unwrap().get(type_name) {
        return found.clone();
    }
    assert!(schema()["$defs"].get(type_name).is_some(), "no $defs/{type_name} in the Nomad API schema");
    // The whole document with a root $ref, so that the type's own "#/$defs/…" refs resolve.
    let mut root = schema().clone();
    root["$ref"] = json!(format!("#/$defs/{type_name}"));
    let compiled = Arc::new(jsonschema::draft202012::new(&root).unwrap_or_else(|e| panic!("compiling {type_name}: {e}")));
    cache.lock().unwrap().entry(type_name.to_string()).or_insert(compiled).clone()
}

/// Schema errors of `body` as `$defs/<type_name>`, at most a few, each with its JSON pointer.
pub fn violations(type_name: &str, body: &Value) -> Vec<String> {
    validator(type_name).iter_errors(body).take(5).map(|error| format!("{type_name} at '{}': {error}", error.instance_path)).collect()
}

/// The request type of an endpoint from `x-endpoints` ("PUT|POST /v1/job/:job_id/plan").
pub fn request_type(method: &str, route: &str) -> Option<String> {
    let endpoints = schema()["x-endpoints"].as_object()?;
    endpoints.iter().find_map(|(key, spec)| {
        let (methods, path) = key.split_once(' ')?;
        let path = path.split('?').next()?;
        (path == route && methods.split('|').any(|m| m == method)).then(|| spec.get("request")?.as_str().map(str::to_string)).flatten()
    })
}
