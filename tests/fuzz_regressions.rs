//! Every input a fuzz target crashed on, replayed through the same code (`fuzz/checks.rs`),
//! and the seeds the targets start from. A crash found by `fuzz/run` is kept as a file in
//! `tests/fuzz-regressions/<target>/`, named after the bug.

use std::fs;
use std::path::{Path, PathBuf};

#[path = "../fuzz/checks.rs"]
mod checks;

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())).map(|entry| entry.unwrap().path()).collect();
    files.sort();
    files
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs `check` on every file of `dir` (with `extension`, if given), and says which one
/// panicked. Returns how many ran.
fn replay(dir: &str, extension: Option<&str>, check: fn(&[u8])) -> usize {
    let dir = repo(dir);
    if !dir.exists() {
        return 0;
    }
    let files: Vec<PathBuf> =
        files(&dir).into_iter().filter(|f| f.is_file() && extension.is_none_or(|e| f.extension().is_some_and(|x| x == e))).collect();
    for file in &files {
        let data = fs::read(file).unwrap();
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            panic!("{} panics (see the message above)", file.display());
        }
    }
    files.len()
}

#[test]
fn kept_crashes_stay_fixed() {
    let kept = replay("tests/fuzz-regressions/stack_file", None, checks::stack_file)
        + replay("tests/fuzz-regressions/responses", None, checks::response);
    assert!(kept >= KEPT_CRASHES, "{kept} kept crashes found, {KEPT_CRASHES} expected: were some deleted?");
}

/// How many crashing inputs `tests/fuzz-regressions/` holds.
const KEPT_CRASHES: usize = 2;

#[test]
fn stack_file_seeds_run_clean() {
    let seeds = replay("tests/stack_errors", Some("hcl"), checks::stack_file)
        + replay("tests/stack_errors/warned", Some("hcl"), checks::stack_file)
        + replay("tests/stack_errors/ok", Some("hcl"), checks::stack_file);
    assert!(seeds > 80, "{seeds}");
}

#[test]
fn every_answer_seed_names_a_decoder() {
    // fuzz/run prefixes each seed of fuzz/seeds/responses/ with its decoder's byte, by the
    // name before `--`; a seed for a decoder that does not exist would fuzz the wrong one.
    for file in files(&repo("fuzz/seeds/responses")) {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let decoder = name.split("--").next().unwrap();
        let selector = checks::selector(decoder);
        let mut data = vec![selector];
        data.extend(fs::read(&file).unwrap());
        checks::response(&data);
    }
}

#[test]
fn real_answers_decode() {
    // The seeds are real answers: each decodes without error, so the fuzzer starts from
    // inputs that reach past the first field.
    let request = pgnomad::nomad::api::Request::get("/v1/seed");
    let answer = |file: &str| pgnomad::nomad::api::Response {
        status: 200,
        body: fs::read(repo("fuzz/seeds/responses").join(file)).unwrap(),
        meta: Default::default(),
    };
    let entries: Vec<pgnomad::consul::ServiceEntry> =
        pgnomad::transport::decode(&request, &answer("consul-health-service--primary.json")).unwrap();
    assert_eq!((entries[0].is_passing(), entries[0].address().as_str()), (true, "10.0.0.11:25432"));
    let entries: Vec<pgnomad::consul::ServiceEntry> =
        pgnomad::transport::decode(&request, &answer("consul-health-service--critical-and-empty-address.json")).unwrap();
    assert_eq!((entries[0].is_passing(), entries[0].address().as_str()), (false, "10.0.0.12:25433"));
    let cluster: pgnomad::patroni::PatroniCluster =
        pgnomad::transport::decode(&request, &answer("patroni-cluster--streaming-pending-restart.json")).unwrap();
    assert_eq!(cluster.members[1].lag_bytes(), Some(1048576));
    let info = pgnomad::pgbackrest::parse_info(&answer("pgbackrest-info--full-diff.json").body).unwrap();
    assert_eq!(info[0].backup.len(), 2);
}

#[test]
fn a_bom_prefixed_stack_file_reads_as_the_editor_shows_it() {
    // Some editors save UTF-8 with a byte-order mark; `validate` panicked on its first byte.
    let source = pgnomad::stack::Source::new("pgnomad.hcl", "\u{feff}cluster \"main\" {}\npostgres {\n  memebers = 3\n}\n");
    let diagnostics = pgnomad::stack::load(&source).unwrap_err();
    // The mark takes no column: the key is at 3:3, as the editor shows it.
    assert_eq!(
        source.render(&diagnostics[0]),
        "error: unknown key `memebers` in `postgres`\n --> pgnomad.hcl:3:3\n  |\n3 |   memebers = 3\n  |   ^^^^^^^^\n  = help: did you mean `members`?\n"
    );
    let fine = pgnomad::stack::Source::new("pgnomad.hcl", "\u{feff}cluster \"main\" {}\n");
    assert_eq!(pgnomad::stack::load(&fine).unwrap().stack.cluster.name.value, "main");
}

#[test]
fn a_span_inside_a_multi_byte_character_renders() {
    // The renderer sliced the source at the span's ends, which need not be char boundaries
    // ("end byte index 2 is not a char boundary"). Every split of "é€𝄞" is tried.
    let text = "a = \"é€𝄞\"\n";
    let source = pgnomad::stack::Source::new("f.hcl", text);
    for start in 0..=text.len() + 1 {
        for end in 0..=text.len() + 1 {
            let rendered = source.render(&pgnomad::stack::Diagnostic::error(start..end, "x"));
            assert!(rendered.contains(" --> f.hcl:") && rendered.contains(" | "), "{start}..{end}: {rendered}");
        }
    }
}
