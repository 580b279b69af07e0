//! The stack file through parse → decode → validate → diagnostic rendering.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::stack_file(data));
