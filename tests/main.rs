
mod infra_defaults;
