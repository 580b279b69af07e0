//! The stack file: parsing with spans, the typed stack with defaults, validation.
//!
//! `load` is the front of the pipeline: text in, a checked `Stack` (or every problem
//! found, each with its place) out. It does no I/O.

pub mod decode;
pub mod defaults;
pub mod diagnostic;
pub mod model;
pub mod reader;
pub mod syntax;
pub mod validate;

use std::cell::RefCell;

pub use diagnostic::{Diagnostic, Severity, Source};
pub use model::*;

/// A stack that passed every check, and the warnings found on the way.
#[derive(Debug)]
pub struct Checked {
    pub stack: Stack,
    pub warnings: Vec<Diagnostic>,
}

/// Parses, decodes and validates a stack file. On failure every diagnostic is returned,
/// errors and warnings, in the order of the file.
pub fn load(source: &Source) -> Result<Checked, Vec<Diagnostic>> {
    let body = syntax::parse(&source.text)?;
    let diagnostics = RefCell::new(Vec::new());
    let stack = {
        let root = reader::Reader::root(&body, &diagnostics);
        decode::decode(&root)
    };
    let mut diagnostics = diagnostics.into_inner();
    if let Some(stack) = &stack {
        if !diagnostics.iter().any(Diagnostic::is_error) {
            diagnostics.extend(validate::validate(stack));
        }
    }
    diagnostics.sort_by_key(|d| d.span.as_ref().map_or(0, |s| s.start));
    match stack {
        Some(stack) if !diagnostics.iter().any(Diagnostic::is_error) => Ok(Checked { stack, warnings: diagnostics }),
        _ => Err(diagnostics),
    }
}
