//! The image `pgnomad/postgres:15`, built for real (tests/support/image.rs: debootstrap,
//! `docker import`, then packs/image/Dockerfile with Debian's packages) and run: every test
//! starts its own `docker run --rm` containers, so nothing is left running.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use pgnomad::stack::defaults::POSTGRES_VERSION;

use crate::support::image::{current_recipe, image_id, label, postgres_image, RECIPE_LABEL};
use crate::support_procs::require;

const MAJOR: u32 = 15;

fn context(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packs/image").join(name)
}

/// Runs `script` with `sh -c` in a fresh container of the image, as the image's user, with
/// no network.
fn in_image(script: &str) -> Output {
    let image = postgres_image(MAJOR);
    Command::new("docker")
        .args(["run", "--rm", "--network", "none", &image, "sh", "-c", script])
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker: {e}"))
}

/// Like `in_image`, and the script must succeed; its stdout, trimmed.
fn stdout_of(script: &str) -> String {
    let out = in_image(script);
    assert!(
        out.status.success(),
        "`{script}` failed in the image ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn runs_as_postgres_by_default() {
    assert_eq!(stdout_of("id -un"), "postgres");
    // The ids the rendered templates write secret files with (postgres.uid/gid, 999:999).
    assert_eq!(stdout_of("echo $(id -u):$(id -g)"), "999:999");
    assert_eq!(stdout_of("pwd"), "/var/lib/postgresql");
    let out = Command::new("docker").args(["image", "inspect", "-f", "{{.Config.User}}", &postgres_image(MAJOR)]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "postgres", "the image's USER");
}

#[test]
fn postgres_of_the_major_is_on_path() {
    assert_eq!(stdout_of("command -v postgres"), format!("/usr/lib/postgresql/{MAJOR}/bin/postgres"));
    let version = stdout_of("postgres --version");
    assert!(version.starts_with(&format!("postgres (PostgreSQL) {MAJOR}.")), "postgres --version: {version}");
    for program in ["initdb", "pg_ctl", "pg_rewind", "pg_basebackup", "psql"] {
        stdout_of(&format!("command -v {program}"));
    }
}

#[test]
fn patroni_pgbackrest_pgbouncer_and_exporter_run() {
    let patroni = stdout_of("patroni --version");
    assert!(patroni.starts_with("patroni 3."), "patroni --version: {patroni}");
    let pgbackrest = stdout_of("pgbackrest version");
    assert!(pgbackrest.starts_with("pgBackRest 2."), "pgbackrest version: {pgbackrest}");
    let pgbouncer = stdout_of("pgbouncer --version");
    assert!(pgbouncer.starts_with("PgBouncer 1."), "pgbouncer --version: {pgbouncer}");
    let exporter = stdout_of("prometheus-postgres-exporter --version 2>&1");
    assert!(exporter.contains("postgres_exporter, version"), "prometheus-postgres-exporter --version: {exporter}");
    // Patroni's DCS clients (Consul, etcd) and its Postgres driver.
    stdout_of("python3 -c 'import consul, etcd, psycopg2'");
    // What the tasks use beside them.
    for program in ["bash", "setpriv", "pgrep", "ip"] {
        stdout_of(&format!("command -v {program}"));
    }
}

#[test]
fn volume_mount_points_belong_to_postgres() {
    assert_eq!(stdout_of("stat -c '%U:%G %a' /var/lib/postgresql/data"), "postgres:postgres 700");
    assert_eq!(stdout_of("stat -c '%U:%G %a' /var/lib/pgbackrest"), "postgres:postgres 750");
    assert_eq!(stdout_of("ls -A /var/lib/postgresql/data | wc -l"), "0", "the data directory is empty: Patroni runs initdb");
}

#[test]
fn debian_creates_no_cluster() {
    assert_eq!(stdout_of(&format!("test -e /etc/postgresql/{MAJOR}/main && echo present || echo absent")), "absent");
    assert_eq!(stdout_of(&format!("test -e /var/lib/postgresql/{MAJOR} && echo present || echo absent")), "absent");
    assert_eq!(stdout_of("pg_lsclusters --no-header"), "", "pg_lsclusters lists no cluster");
    assert_eq!(stdout_of("grep -x 'create_main_cluster = false' /etc/postgresql-common/createcluster.conf"), "create_main_cluster = false");
}

#[test]
fn install_cleans_up() {
    assert_eq!(stdout_of("find /var/lib/apt/lists -type f ! -name lock | wc -l"), "0", "apt lists are removed");
    assert_eq!(stdout_of("test -e /usr/sbin/policy-rc.d && echo present || echo absent"), "absent", "policy-rc.d is removed");
}

#[test]
fn initdb_and_a_server_work_as_postgres() {
    let script = r#"set -eu
d="$(mktemp -d)"
initdb -D "$d/data" -A trust -U postgres > "$d/initdb.log"
pg_ctl -D "$d/data" -l "$d/server.log" -o "-k $d -c listen_addresses=''" -w start > /dev/null
psql -h "$d" -U postgres -d postgres -Atc 'select current_user, version()'
pg_ctl -D "$d/data" -m fast -w stop > /dev/null"#;
    let out = stdout_of(script);
    assert!(out.starts_with(&format!("postgres|PostgreSQL {MAJOR}.")), "psql: {out}");
}

#[test]
fn a_second_call_does_not_rebuild() {
    let tag = postgres_image(MAJOR);
    let id = image_id(&tag).expect("the image exists after postgres_image");
    let started = Instant::now();
    assert_eq!(postgres_image(MAJOR), tag);
    let elapsed = started.elapsed();
    eprintln!("a cached postgres_image({MAJOR}) took {elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "a cached postgres_image({MAJOR}) took {elapsed:?}: it rebuilt?");
    assert_eq!(image_id(&tag).as_deref(), Some(id.as_str()), "the image ID changed: it was rebuilt");
    assert_eq!(label(&tag, RECIPE_LABEL), Some(current_recipe(MAJOR)), "the image carries its recipe hash");
}

/// The Dockerfile is built as it is in the repository (docker build packs/image/), so it
/// holds no pack holes, and its default major is the stack's default.
#[test]
fn dockerfile_is_plain_and_defaults_to_the_default_major() {
    let text = std::fs::read_to_string(context("Dockerfile")).unwrap();
    for hole in ["[[", "[%", "[#"] {
        assert!(!text.contains(hole), "packs/image/Dockerfile contains `{hole}`: docker build would see it as is");
    }
    assert!(text.contains(&format!("ARG PG_MAJOR={POSTGRES_VERSION}\n")), "the Dockerfile's default PG_MAJOR is {POSTGRES_VERSION}");
    assert!(text.contains("RUN sh /usr/local/lib/pgnomad/install.sh --source \"${PG_SOURCE}\" --major \"${PG_MAJOR}\""));
    assert_eq!(pgnomad::config::Packs::default().source("image/Dockerfile"), Some(text.as_str()), "the built-in pack file is this file");
}

#[test]
fn install_script_is_shellcheck_clean_and_checks_its_arguments() {
    let script = context("install.sh");
    let out = Command::new(require("shellcheck", "shellcheck")).arg(&script).output().unwrap();
    assert!(out.status.success(), "shellcheck packs/image/install.sh:\n{}", String::from_utf8_lossy(&out.stdout));
    for (args, message) in [
        (&["--source", "ubuntu", "--major", "15"][..], "--source must be pgdg or debian"),
        (&["--source", "debian", "--major", "fifteen"][..], "--major must be a Postgres major version"),
        (&["--major", "15"][..], "--source must be pgdg or debian"),
    ] {
        // Argument errors exit before anything is installed, so this runs on the host.
        let out = Command::new("sh").arg(&script).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "install.sh {args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(message), "install.sh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}
