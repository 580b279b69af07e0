//! Stack → artifacts: Nomad jobs, CSI volume specs, ACL policies and secret specs.
//! Pure: no I/O, no clock, no randomness.

pub mod secrets;
