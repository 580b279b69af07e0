//! The decoders of Nomad, Consul and Patroni answers and of `pgbackrest info --output=json`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::response(data));
