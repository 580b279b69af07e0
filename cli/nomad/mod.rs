//! Nomad: the typed job model, and the HTTP API's requests and responses (no I/O).

pub mod api;
pub mod job;
