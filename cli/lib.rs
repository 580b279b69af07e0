//! pgnomad: a compiler from one stack file to the Nomad jobs of a highly available
//! PostgreSQL stack, and the operations that put it on a cluster.

pub mod commands;
pub mod compile;
pub mod config;
pub mod consul;
pub mod deploy;
pub mod dev;
pub mod interrupts;
pub mod nomad;
pub mod ops;
pub mod patroni;
pub mod pgbackrest;
pub mod render;
pub mod secrets;
pub mod settings;
pub mod stack;
pub mod transport;
pub mod ui;
