//! Test support: stand-ins for Nomad and Consul.
//!
//! ```ignore
//! let nomad = NomadDouble::start();               // or start_with(DoubleConfig { acl_token, time_scale, start_delay })
//! let client = nomad.client();                     // NomadClient over reqwest, short backoff
//! nomad.inject(Fault::status("GET", "/v1/job/", 503).times(2));
//! nomad.inject(Fault::drop_connection("PUT", "/v1/jobs"));
//! nomad.set_leader(false);                         // 500 "No cluster leader"
//! nomad.force_index_conflict("default", "pg");     // someone else changed the job
//! nomad.fail_group("pg", "member-1");              // Driver Failure task events
//! nomad.set_health_oracle(|probe| probe.path != "/primary" || probe.group == "member-1");
//! let consul = nomad.start_consul();               // health/catalog/leader from the running allocations
//! nomad.writes();                                  // recorded requests, in order
//! // Dropping the double panics if any request body broke the schema.
//! ```

#![allow(dead_code, unused_imports)]

pub mod cluster;
pub mod consul_double;
pub mod go_program;
pub mod gotemplate;
pub mod hostile;
pub mod image;
pub mod job_rules;
pub mod jobs;
pub mod nomad_double;
pub mod schema;

pub use consul_double::ConsulDouble;
pub use nomad_double::{CheckProbe, DoubleConfig, Fault, FaultKind, NomadDouble};

/// A count from pgbench's summary: the number after `label` ("number of failed transactions:
/// 0 (0.000%)" → 0; "… processed: 812/1000" → 812).
pub fn pgbench_number(summary: &str, label: &str) -> Option<u64> {
    summary
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.split('/').next())
        .and_then(|n| n.parse::<u64>().ok())
}
