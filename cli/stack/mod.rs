//! The stack file: parsing with spans, the typed stack with defaults, validation.

pub mod defaults;
