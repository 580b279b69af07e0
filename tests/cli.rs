//! The real binary, as a user runs it: exit codes, files written, messages.

use std::path::Path;
use std::process::{Command, Output};

pub fn pgnomad(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgnomad")).args(args).current_dir(dir).output().expect("pgnomad runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn init_validate_render_on_a_fresh_directory() {
    let dir = tempfile::tempdir().unwrap();
    let init = pgnomad(dir.path(), &["init"]);
    assert_eq!(init.status.code(), Some(0), "{}", text(&init.stderr));
    let validate = pgnomad(dir.path(), &["validate"]);
    assert_eq!(validate.status.code(), Some(0), "{}", text(&validate.stderr));
    assert!(text(&validate.stdout).contains("cluster \"main\", 3 members, PostgreSQL 15"));
    let render = pgnomad(dir.path(), &["render", "--out", "out"]);
    assert_eq!(render.status.code(), Some(0), "{}", text(&render.stderr));
    for file in [
        "jobs/main-postgres.nomad.hcl",
        "jobs/main-postgres.json",
        "volumes/main-member-2.volume.hcl",
        "acl/main-patroni.consul.hcl",
        "secrets.json",
    ] {
        assert!(dir.path().join("out").join(file).is_file(), "{file} was not written");
    }
}

#[test]
fn init_file_spells_out_the_defaults() {
    // What `init` writes must be exactly what a three-line file means.
    let written =
        pgnomad::stack::load(&pgnomad::stack::Source::new("init.hcl", pgnomad::commands::INIT_TEMPLATE)).expect("init's file loads").stack;
    let minimal = crate::stack_fixtures::load(crate::stack_fixtures::DEFAULT);
    assert_eq!(without_spans(&format!("{written:?}")), without_spans(&format!("{minimal:?}")));
}

#[test]
fn init_does_not_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pgnomad.hcl"), "cluster \"mine\" {}\n").unwrap();
    let init = pgnomad(dir.path(), &["init"]);
    assert_eq!(init.status.code(), Some(1));
    assert!(text(&init.stderr).contains("already exists"));
    assert_eq!(std::fs::read_to_string(dir.path().join("pgnomad.hcl")).unwrap(), "cluster \"mine\" {}\n");
}

#[test]
fn a_bad_stack_file_exits_1_with_the_place_of_each_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pgnomad.hcl"), "cluster \"main\" {}\npostgres {\n  memebers = 3\n}\n").unwrap();
    let out = pgnomad(dir.path(), &["render"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: unknown key `memebers` in `postgres`\n --> pgnomad.hcl:3:3\n  |\n3 |   memebers = 3\n  |   ^^^^^^^^\n  = help: did you mean `members`?\n\npgnomad.hcl: 1 error in the stack file\n"
    );
    assert!(!dir.path().join("rendered").exists(), "nothing is written for a bad stack");
}

#[test]
fn a_missing_stack_file_says_how_to_make_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = pgnomad(dir.path(), &["validate"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("pgnomad init"), "{}", text(&out.stderr));
}

#[test]
fn packs_override_replaces_a_template() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pgnomad.hcl"), "cluster \"main\" {}\n").unwrap();
    std::fs::create_dir_all(dir.path().join("mypacks/pgbouncer")).unwrap();
    std::fs::write(dir.path().join("mypacks/pgbouncer/userlist.txt"), "# custom [[ stack.cluster ]]\n").unwrap();
    let out = pgnomad(dir.path(), &["render", "--format", "json", "--packs", "mypacks"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let job = std::fs::read_to_string(dir.path().join("rendered/jobs/main-pgbouncer.json")).unwrap();
    assert!(job.contains("# custom main\\n"), "the override was not used");

    std::fs::write(dir.path().join("mypacks/pgbouncer/userlist.txt"), "[[ stack.no_such_fact ]]\n").unwrap();
    let out = pgnomad(dir.path(), &["render", "--packs", "mypacks"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("pgbouncer/userlist.txt"), "{}", text(&out.stderr));
}

/// Debug text with every `span: N..M` left out: where a value was written differs, the
/// value must not.
fn without_spans(debug: &str) -> String {
    let mut out = String::new();
    let mut rest = debug;
    while let Some(at) = rest.find("span: ") {
        out.push_str(&rest[..at]);
        rest = rest[at + 6..].trim_start_matches(|c: char| c.is_ascii_digit() || c == '.');
    }
    out.push_str(rest);
    out
}
