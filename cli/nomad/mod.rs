//! Nomad: the typed job model and (in `api`) the HTTP API's requests and responses.

pub mod job;
