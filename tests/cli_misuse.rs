//! Bad uses of the command line, end to end through the real binary: wrong flags, unreadable
//! files, directories where files belong, bad environment, conflicting options. Each case
//! asserts its exit code and the key text of its message (which must say what to do next
//! where there is something to do).

use std::path::Path;
use std::process::Command;

/// No Nomad listens here: commands that get that far fail to connect, fast.
const REFUSED: &str = "http://127.0.0.1:1";

struct Case {
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    /// A subdirectory of the work directory to run in (one without a stack file: `empty`).
    cwd: &'static str,
    code: i32,
    /// Each must appear in stderr.
    stderr: &'static [&'static str],
}

const fn case(args: &'static [&'static str], code: i32, stderr: &'static [&'static str]) -> Case {
    Case { args, env: &[], cwd: "", code, stderr }
}

const fn with_env(
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    code: i32,
    stderr: &'static [&'static str],
) -> Case {
    Case { args, env, cwd: "", code, stderr }
}

const CASES: &[Case] = &[
    // The command line itself (clap: exit 2, the usage and a pointer to --help).
    case(&[], 2, &["Usage: pgnomad <COMMAND>", "Check a stack file and report every problem"]),
    case(&["frobnicate"], 2, &["error: unrecognized subcommand 'frobnicate'", "For more information, try '--help'."]),
    case(&["validate", "--frobnicate"], 2, &["error: unexpected argument '--frobnicate' found", "Usage: pgnomad validate [OPTIONS]"]),
    case(&["validate", "-f"], 2, &["error: a value is required for '--file <FILE>' but none was supplied"]),
    case(&["validate", "extra"], 2, &["error: unexpected argument 'extra' found"]),
    case(&["init", "--force", "--force"], 2, &["error: the argument '--force' cannot be used multiple times"]),
    case(
        &["render", "--format", "yaml"],
        2,
        &["error: invalid value 'yaml' for '--format <FORMAT>'", "[possible values: hcl, json, both]"],
    ),
    case(&["render", "--format"], 2, &["error: a value is required for '--format <FORMAT>' but none was supplied"]),
    case(&["plan", "--verbose=yes"], 2, &["error: unexpected value 'yes' for '--verbose' found; no more were expected"]),
    case(&["status", "--json", "--json"], 2, &["error: the argument '--json' cannot be used multiple times"]),
    case(&["run", "--check-index", "3"], 2, &["error: the following required arguments were not provided:", "--job <JOB_ID>"]),
    case(&["run", "--timeout", "5y"], 2, &["error: invalid value '5y' for '--timeout <TIMEOUT>': \"5y\": the unit must be ms, s, m or h"]),
    case(
        &["run", "--timeout", "soon"],
        2,
        &["error: invalid value 'soon' for '--timeout <TIMEOUT>': \"soon\" is not a duration such as 90s or 15m"],
    ),
    case(&["run", "--timeout", "5", "parsecs"], 2, &["error: unexpected argument 'parsecs' found"]),
    case(&["dev"], 2, &["Usage: pgnomad dev <COMMAND>"]),
    case(&["dev", "frob"], 2, &["error: unrecognized subcommand 'frob'"]),
    case(&["dev", "status", "--state-dir"], 2, &["error: a value is required for '--state-dir <DIR>' but none was supplied"]),
    case(&["dev", "up", "--timeout", "soon"], 2, &["error: invalid value 'soon' for '--timeout <SECONDS>'"]),
    // The stack file: missing, a directory, not text, empty, wrong.
    case(
        &["validate", "-f", "missing.hcl"],
        1,
        &[
            "error: cannot read stack file missing.hcl: No such file or directory (os error 2)",
            "= help: create one with `pgnomad init`, or name it with -f FILE",
        ],
    ),
    Case {
        args: &["validate"],
        env: &[],
        cwd: "empty",
        code: 1,
        stderr: &["error: cannot read stack file pgnomad.hcl: No such file or directory", "= help: create one with `pgnomad init`"],
    },
    case(
        &["validate", "-f", "adir"],
        1,
        &[
            "error: cannot read stack file adir: Is a directory (os error 21)",
            "= help: -f names the stack file itself, as in -f DIR/pgnomad.hcl",
        ],
    ),
    case(
        &["validate", "-f", "latin1.hcl"],
        1,
        &["error: cannot read stack file latin1.hcl: stream did not contain valid UTF-8", "= help: a stack file is UTF-8 text; convert it"],
    ),
    case(&["validate", "-f", "dangling.hcl"], 1, &["error: cannot read stack file dangling.hcl: No such file or directory"]),
    case(
        &["validate", "-f", "empty.hcl"],
        1,
        &[
            "error: the stack file has no `cluster` block",
            "= help: start the file with `cluster \"main\" {}`",
            "empty.hcl: 1 error in the stack file",
        ],
    ),
    case(
        &["validate", "-f", "bad.hcl"],
        1,
        &[
            "error: unknown key `memebers` in `postgres`",
            " --> bad.hcl:3:3",
            "= help: did you mean `members`?",
            "bad.hcl: 1 error in the stack file",
        ],
    ),
    case(&["render", "-f", "bad.hcl"], 1, &["error: unknown key `memebers` in `postgres`"]),
    // Every failure of plan is 255, as `nomad job plan`.
    case(&["plan", "-f", "missing.hcl"], 255, &["error: cannot read stack file missing.hcl"]),
    case(&["plan", "-f", "adir"], 255, &["error: cannot read stack file adir: Is a directory"]),
    case(&["status", "-f", "bad.hcl"], 1, &["error: unknown key `memebers` in `postgres`"]),
    // Files that `init` and `render` write.
    case(&["init"], 1, &["error: pgnomad.hcl already exists", "= help: pass --force to overwrite it"]),
    case(&["init", "-f", "adir"], 1, &["error: adir is a directory", "= help: name the file to write, as in -f adir/pgnomad.hcl"]),
    case(&["init", "--force", "-f", "adir"], 1, &["error: adir is a directory"]),
    case(
        &["init", "-f", "nodir/pgnomad.hcl"],
        2,
        &["error: cannot write nodir/pgnomad.hcl: No such file or directory (os error 2)", "= help: create its directory first"],
    ),
    case(&["render", "--out", "pgnomad.hcl"], 1, &["error: --out pgnomad.hcl is a file, not a directory", "= help: name a directory"]),
    case(&["render", "--packs", "missing"], 1, &["error: --packs missing: not a directory"]),
    case(&["render", "--packs", "pgnomad.hcl"], 1, &["error: --packs pgnomad.hcl: not a directory"]),
    // Where Nomad and Consul are, and how to talk to them.
    with_env(
        &["plan"],
        &[("NOMAD_ADDR", "ftp://nomad:4646")],
        255,
        &["error: NOMAD_ADDR is not a usable address: \"ftp://nomad:4646\" (only http:// and https:// are supported)"],
    ),
    case(&["status", "--address", " "], 1, &["error: --address is not a usable address: \" \" (empty)"]),
    case(&["plan", "--address", "http://"], 255, &["error: --address is not a usable address: \"http://\" (no host)"]),
    with_env(
        &["status", "--address", "ftp://x"],
        &[("NOMAD_ADDR", REFUSED)],
        1,
        &["error: --address is not a usable address: \"ftp://x\""],
    ),
    with_env(
        &["status", "--consul-address", "gopher://c"],
        &[("NOMAD_ADDR", REFUSED)],
        1,
        &["error: --consul-address is not a usable address"],
    ),
    with_env(
        &["status"],
        &[("NOMAD_ADDR", REFUSED)],
        2,
        &[
            "error: listing the cluster's jobs: cannot connect to http://127.0.0.1:1",
            "hint: check NOMAD_ADDR (or --address) and that a Nomad agent listens there",
        ],
    ),
    with_env(&["destroy"], &[("NOMAD_ADDR", REFUSED)], 2, &["error: listing the cluster's jobs: cannot connect to http://127.0.0.1:1"]),
    with_env(
        &["plan"],
        &[("NOMAD_ADDR", REFUSED), ("NOMAD_SKIP_VERIFY", "maybe")],
        255,
        &["error: NOMAD_SKIP_VERIFY must be true or false, got \"maybe\""],
    ),
    with_env(
        &["status"],
        &[("NOMAD_ADDR", REFUSED), ("CONSUL_HTTP_SSL", "yes")],
        1,
        &["error: CONSUL_HTTP_SSL must be true or false, got \"yes\""],
    ),
    with_env(
        &["run", "--client-cert", "cert.pem"],
        &[("NOMAD_ADDR", REFUSED)],
        1,
        &["error: a client certificate needs its key and a key needs its certificate"],
    ),
    with_env(&["run", "--client-key", "cert.pem"], &[("NOMAD_ADDR", REFUSED)], 1, &["error: a client certificate needs its key"]),
    with_env(
        &["status"],
        &[("NOMAD_ADDR", REFUSED), ("NOMAD_CLIENT_CERT", "cert.pem")],
        1,
        &["(--client-cert/--client-key, NOMAD_CLIENT_CERT/NOMAD_CLIENT_KEY)"],
    ),
    with_env(
        &["plan", "--ca-cert", "missing.pem"],
        &[("NOMAD_ADDR", REFUSED)],
        255,
        &["error: cannot set up the HTTP client: reading missing.pem: No such file or directory"],
    ),
    with_env(
        &["plan", "--ca-path", "missing"],
        &[("NOMAD_ADDR", REFUSED)],
        255,
        &["error: cannot set up the HTTP client: reading missing: No such file or directory"],
    ),
    with_env(
        &["plan", "--ca-cert", "pgnomad.hcl"],
        &[("NOMAD_ADDR", REFUSED)],
        255,
        &["error: cannot set up the HTTP client: pgnomad.hcl: no PEM certificate in it"],
    ),
    with_env(
        &["status"],
        &[("NOMAD_ADDR", REFUSED), ("NOMAD_CACERT", "cert.pem")],
        2,
        &["error: cannot set up the HTTP client: cert.pem: no PEM certificate in it"],
    ),
    // What `run` needs beyond the cluster.
    with_env(
        &["run", "--patroni-consul-token-file", "missing"],
        &[("NOMAD_ADDR", REFUSED)],
        1,
        &["error: --patroni-consul-token-file: cannot read missing: No such file or directory"],
    ),
    with_env(
        &["run", "--patroni-consul-token-file", "adir"],
        &[("NOMAD_ADDR", REFUSED)],
        1,
        &["error: --patroni-consul-token-file: cannot read adir: Is a directory"],
    ),
    with_env(
        &["run", "--job", "nosuch"],
        &[("NOMAD_ADDR", REFUSED)],
        1,
        &["error: the stack has no job nosuch; its jobs are main-repo, main-postgres, main-pgbouncer"],
    ),
];

/// The work directory every case runs in: a good stack file, and the bad things.
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    std::fs::write(at("pgnomad.hcl"), crate::stack_fixtures::DEFAULT).unwrap();
    std::fs::write(at("bad.hcl"), "cluster \"main\" {}\npostgres {\n  memebers = 3\n}\n").unwrap();
    std::fs::write(at("empty.hcl"), "").unwrap();
    // "café" in Latin-1, as an old editor would save it.
    std::fs::write(at("latin1.hcl"), b"# caf\xe9\ncluster \"main\" {}\n").unwrap();
    std::fs::write(at("cert.pem"), "not a certificate\n").unwrap();
    std::fs::create_dir(at("adir")).unwrap();
    std::fs::create_dir(at("empty")).unwrap();
    std::os::unix::fs::symlink(at("gone.hcl"), at("dangling.hcl")).unwrap();
    dir
}

fn run(dir: &Path, case: &Case) -> (Option<i32>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pgnomad"));
    command.args(case.args).current_dir(dir.join(case.cwd)).stdin(std::process::Stdio::null());
    for var in [
        "NOMAD_ADDR",
        "NOMAD_TOKEN",
        "NOMAD_CACERT",
        "NOMAD_CAPATH",
        "NOMAD_CLIENT_CERT",
        "NOMAD_CLIENT_KEY",
        "NOMAD_SKIP_VERIFY",
        "CONSUL_HTTP_ADDR",
        "CONSUL_HTTP_SSL",
        "PGNOMAD_PATRONI_CONSUL_TOKEN",
    ] {
        command.env_remove(var);
    }
    command.env("CONSUL_HTTP_ADDR", REFUSED);
    command.envs(case.env.iter().copied());
    let output = command.output().expect("pgnomad runs");
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn every_misuse_exits_with_its_code_and_says_what_is_wrong() {
    assert!(CASES.len() >= 40, "{} cases", CASES.len());
    let dir = workdir();
    let mut failures = Vec::new();
    for case in CASES {
        let (code, stderr) = run(dir.path(), case);
        let missing: Vec<&&str> = case.stderr.iter().filter(|text| !stderr.contains(**text)).collect();
        // Never a panic or a Rust debug dump, whatever the input.
        let dump = stderr.contains("panicked") || stderr.contains("RUST_BACKTRACE") || stderr.contains(" { ");
        if code != Some(case.code) || !missing.is_empty() || dump {
            failures.push(format!(
                "pgnomad {:?} (env {:?}): exit {code:?}, expected {}; missing {missing:?}\n{stderr}",
                case.args, case.env, case.code
            ));
        }
    }
    // Nothing was written by the failed `init`s and `render`s.
    assert!(!dir.path().join("rendered").exists() && !dir.path().join("nodir").exists());
    assert_eq!(std::fs::read_to_string(dir.path().join("pgnomad.hcl")).unwrap(), crate::stack_fixtures::DEFAULT);
    assert!(failures.is_empty(), "{} of {} cases failed:\n\n{}", failures.len(), CASES.len(), failures.join("\n"));
}
