//! pgnomad: a compiler from one stack file to the Nomad jobs of a highly available
//! PostgreSQL stack, and the operations that put it on a cluster.

pub mod commands;
pub mod compile;
pub mod config;
pub mod nomad;
pub mod render;
pub mod stack;
