//! The Go programs the doubles run so that they behave as Nomad's own libraries do (Go's
//! `text/template` for templates, cronexpr for periodic launches): each is built once per
//! hash of its source under `$CARGO_TARGET_DIR/go/`, one build at a time across test
//! processes. Nothing is downloaded: a program is stdlib-only (module mode, `GOPROXY=off`)
//! or reads Debian's Go packages (GOPATH mode, `/usr/share/gocode`). A missing `go` or
//! package panics naming what to install: the tests that need it never skip.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use serde_json::Value;

pub struct GoProgram {
    /// The binary's name, and its source directory under `tests/`.
    pub name: &'static str,
    /// The source files hashed into the binary's name.
    pub files: &'static [&'static str],
    /// Debian packages the program imports from `/usr/share/gocode` (GOPATH mode), each with a
    /// directory it installs; empty for a stdlib-only module.
    pub debian_packages: &'static [(&'static str, &'static str)],
    /// What the program stands for, for the panic when `go` is missing.
    pub purpose: &'static str,
}

const GOCODE: &str = "/usr/share/gocode";

/// What a program answered to one request.
pub struct Reply {
    /// The one JSON value it printed on stdout.
    pub json: Value,
    /// Whether it exited 0.
    pub succeeded: bool,
    pub stderr: String,
}

/// Runs `program` (built at its first use in this process) on one JSON `request`, its stdin,
/// and reads its one JSON reply; a reply that is no JSON panics with what it printed.
pub fn exchange(program: &GoProgram, request: &Value) -> Reply {
    let mut child = Command::new(built(program))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", program.name));
    child.stdin.take().unwrap().write_all(request.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{} answered no JSON ({e}):\n{}\n{stderr}", program.name, String::from_utf8_lossy(&out.stdout)));
    Reply { json, succeeded: out.status.success(), stderr }
}

/// The path of `program`'s binary, built once per test process.
fn built(program: &GoProgram) -> PathBuf {
    static BUILT: Mutex<BTreeMap<&'static str, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    built.entry(program.name).or_insert_with(|| build(program)).clone()
}

/// The path of `program`'s binary, built if this source has not been built yet.
fn build(program: &GoProgram) -> PathBuf {
    use sha2::Digest;
    let go = ["/usr/bin/go", "/usr/lib/go/bin/go", "/usr/local/go/bin/go"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`go` is not installed: {} (apt-get install golang-go)", program.purpose));
    for (package, dir) in program.debian_packages {
        assert!(Path::new(GOCODE).join("src").join(dir).is_dir(), "{} needs Go package {dir}: apt-get install {package}", program.name);
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join(program.name);
    let mut hash = sha2::Sha256::new();
    for file in program.files {
        hash.update(std::fs::read(src.join(file)).unwrap_or_else(|e| panic!("read {}: {e}", src.join(file).display())));
    }
    let digest: String = hash.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("go");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let binary = dir.join(format!("{}-{digest}", program.name));
    if binary.is_file() {
        return binary;
    }
    // Another test process may be building the same source: one at a time.
    let lock = std::fs::File::create(dir.join("build.lock")).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&lock);
    assert_eq!(unsafe { libc::flock(fd, libc::LOCK_EX) }, 0, "lock {}", dir.display());
    if !binary.is_file() {
        let partial = dir.join(format!("{}-{digest}.{}", program.name, std::process::id()));
        let mut command = Command::new(&go);
        command.current_dir(&src).args(["build", "-trimpath", "-o"]).arg(&partial).arg(".").env("GOCACHE", dir.join("gocache"));
        if program.debian_packages.is_empty() {
            command.env("GOFLAGS", "-mod=mod").env("GOPROXY", "off").env("GO111MODULE", "on").env("GOPATH", dir.join("gopath"));
        } else {
            command.env_remove("GOFLAGS").env("GO111MODULE", "off").env("GOPATH", GOCODE);
        }
        let out = command.output().unwrap_or_else(|e| panic!("run {}: {e}", go.display()));
        assert!(
            out.status.success(),
            "go build of {} failed:\n{}{}",
            src.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(&partial, &binary).unwrap();
    }
    unsafe { libc::flock(fd, libc::LOCK_UN) };
    binary
}
