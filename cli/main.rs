use std::process::ExitCode;

fn main() -> ExitCode {
    pgnomad::commands::main()
}
