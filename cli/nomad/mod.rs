//! Nomad: API models and request builders (no I/O).

pub mod api;
