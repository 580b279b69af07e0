//! The one integration-test binary (keeps link times down).

mod support;

mod nomad_client;
mod nomad_double;

mod cli;
mod render;
mod stack_fixtures;
