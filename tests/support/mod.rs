//! Test support: stand-ins for Nomad and Consul.

#![allow(dead_code, unused_imports)]

pub mod consul_double;
pub mod job_rules;
pub mod jobs;
pub mod nomad_double;
pub mod schema;

pub use consul_double::ConsulDouble;
pub use nomad_double::{CheckProbe, DoubleConfig, Fault, FaultKind, NomadDouble};
