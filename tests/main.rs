//! The one integration-test binary (keeps link times down).

mod cluster_slot;
mod support;
mod support_dev;
mod support_procs;

mod backups;
mod cli;
mod cli_misuse;
mod cluster;
mod deploy;
mod dev;
mod doors;
mod fuzz_regressions;
mod hostile;
mod image;
mod infra_defaults;
mod interrupted_run;
mod nomad_client;
mod nomad_double;
mod packs;
mod partitions;
mod render;
mod restore_nomad;
mod safety;
mod soak;
mod stack_errors;
mod stack_fixtures;
mod templates;
mod upgrade;
mod upgrade_nomad;
