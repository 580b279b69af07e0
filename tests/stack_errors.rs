//! Table-driven corpus of stack files and the exact messages `pgnomad` prints for them.
//!
//! Every case is a pair of files side by side:
//!
//! - `tests/stack_errors/<name>.hcl` + `<name>.stderr`: a bad stack file and every
//!   diagnostic `load` returns for it, rendered with `Source::render` and joined by a
//!   blank line;
//! - `tests/stack_errors/warned/<name>.hcl` + `<name>.stderr`: a stack file that loads,
//!   and the warnings found on the way;
//! - `tests/stack_errors/ok/<name>.hcl`: a stack file that loads without any diagnostic.
//!
//! `PGNOMAD_BLESS=1 cargo test --test main stack_errors` rewrites the `.stderr` files from
//! the current output. Read every rewritten message: it must say where, what, and how to fix.

use std::fs;
use std::path::{Path, PathBuf};

use pgnomad::stack::{load, Diagnostic, Source};

fn corpus(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/stack_errors").join(sub)
}

/// The `.hcl` files of a directory, sorted by name.
fn cases(dir: &Path) -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "hcl"))
        .collect();
    cases.sort();
    cases
}

fn render_all(source: &Source, diagnostics: &[Diagnostic]) -> String {
    diagnostics.iter().map(|d| source.render(d)).collect::<Vec<_>>().join("\n")
}

fn source_of(path: &Path) -> Source {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    Source::new(name, fs::read_to_string(path).unwrap())
}

/// A line diff (longest common subsequence), `-` expected, `+` actual.
fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out += &format!("  {}\n", a[i]);
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out += &format!("+ {}\n", b[j]);
            j += 1;
        } else {
            out += &format!("- {}\n", a[i]);
            i += 1;
        }
    }
    out
}

/// Compares `actual` with the `.stderr` beside `case`, or rewrites it when blessing.
fn check_expected(case: &Path, actual: &str, failures: &mut Vec<String>) {
    let expected_path = case.with_extension("stderr");
    if std::env::var_os("PGNOMAD_BLESS").is_some_and(|v| v == "1") {
        fs::write(&expected_path, actual).unwrap();
        return;
    }
    let expected = fs::read_to_string(&expected_path).unwrap_or_default();
    if expected != actual {
        failures.push(format!(
            "{}: output differs from {} (- expected, + actual; PGNOMAD_BLESS=1 rewrites it)\n{}",
            case.display(),
            expected_path.display(),
            diff(&expected, actual)
        ));
    }
}

fn report(failures: Vec<String>) {
    if !failures.is_empty() {
        panic!("{} case(s) failed:\n\n{}", failures.len(), failures.join("\n"));
    }
}

#[test]
fn bad_stack_files_give_exact_errors() {
    let cases = cases(&corpus(""));
    assert!(cases.len() >= 40, "the corpus has only {} bad stack files", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let source = source_of(case);
        let actual = match load(&source) {
            Err(diagnostics) => {
                if !diagnostics.iter().any(Diagnostic::is_error) {
                    failures.push(format!("{}: load failed without any error", case.display()));
                }
                render_all(&source, &diagnostics)
            }
            Ok(checked) => {
                failures.push(format!(
                    "{}: loaded, but it is a bad stack file; its warnings:\n{}",
                    case.display(),
                    render_all(&source, &checked.warnings)
                ));
                continue;
            }
        };
        check_expected(case, &actual, &mut failures);
    }
    report(failures);
}

#[test]
fn warned_stack_files_load_with_exact_warnings() {
    let mut failures = Vec::new();
    for case in cases(&corpus("warned")) {
        let source = source_of(&case);
        match load(&source) {
            Ok(checked) => {
                if checked.warnings.is_empty() {
                    failures.push(format!("{}: loaded without the expected warning", case.display()));
                }
                check_expected(&case, &render_all(&source, &checked.warnings), &mut failures);
            }
            Err(diagnostics) => {
                failures.push(format!("{}: should load with warnings, but failed:\n{}", case.display(), render_all(&source, &diagnostics)))
            }
        }
    }
    report(failures);
}

#[test]
fn good_stack_files_load_without_diagnostics() {
    let mut failures = Vec::new();
    for case in cases(&corpus("ok")) {
        let source = source_of(&case);
        let diagnostics = match load(&source) {
            Ok(checked) => checked.warnings,
            Err(diagnostics) => diagnostics,
        };
        if !diagnostics.is_empty() {
            failures.push(format!("{}: expected no diagnostics, got:\n{}", case.display(), render_all(&source, &diagnostics)));
        }
    }
    report(failures);
}

#[test]
fn minimal_stack_file_gets_the_documented_defaults() {
    use pgnomad::stack::*;

    let source = Source::new("pgnomad.hcl", "cluster \"main\" {}\n");
    let checked = load(&source).unwrap_or_else(|d| panic!("minimal file failed:\n{}", render_all(&source, &d)));
    assert!(checked.warnings.is_empty(), "warnings:\n{}", render_all(&source, &checked.warnings));
    let stack = checked.stack;

    assert_eq!(stack.cluster.name.value, "main");
    assert_eq!(stack.postgres.members.value, 3);
    assert_eq!(stack.postgres.version.value, 15);
    assert_eq!(stack.postgres.synchronous_mode, SynchronousMode::On);
    assert_eq!(stack.postgres.port.value, 5432);
    assert_eq!(stack.postgres.driver, Driver::Docker { image: "pgnomad/postgres:15".into() });
    let databases: Vec<(&str, &str)> = stack.postgres.databases.iter().map(|d| (d.name.value.as_str(), d.owner.as_str())).collect();
    assert_eq!(databases, [("app", "app")]);
    let users: Vec<&str> = stack.postgres.users.iter().map(|u| u.value.as_str()).collect();
    assert_eq!(users, ["app"]);

    assert_eq!(stack.patroni.dcs, Dcs::Consul);
    assert_eq!(stack.patroni.ttl.value, 20);
    assert_eq!(stack.patroni.loop_wait.value, 1);
    assert_eq!(stack.patroni.retry_timeout.value, 4);
    assert_eq!(stack.patroni.primary_start_timeout, 0);
    assert_eq!(stack.patroni.consul_session_ttl_min.value, 10);

    let Storage::Csi(csi) = &stack.storage else { panic!("default storage is not CSI: {:?}", stack.storage) };
    assert_eq!(csi.plugin_id, "hostpath");
    assert_eq!(csi.capacity_min.value, 10 << 30);
    assert_eq!(csi.capacity_max.value, 20 << 30);

    assert!(stack.pgbouncer.enabled);
    assert_eq!(stack.pgbouncer.count, 2);
    assert_eq!(stack.pgbouncer.port.value, 6432);
    assert_eq!(stack.pgbouncer.pool_mode, "transaction");
    assert_eq!(stack.pgbouncer.server_login_retry_ms, 250);

    assert!(stack.backup.enabled);
    assert!(matches!(stack.backup.repo, Repo::Volume { kind: VolumeKind::Host, .. }), "{:?}", stack.backup.repo);
    let schedules: Vec<(&str, &str)> = stack.backup.schedules.iter().map(|s| (s.kind.name(), s.cron.value.as_str())).collect();
    assert_eq!(schedules, [("full", "0 1 * * 0"), ("diff", "0 1 * * 1-6"), ("incr", "0 */4 * * *")]);

    assert!(stack.pgadmin.enabled);
    assert_eq!(stack.secrets, Secrets::NomadVariables);
}
