//! No open doors (issue 9, item 5): Patroni's REST API asks for credentials on its unsafe
//! endpoints, pg_hba lets the superuser in only over the socket and replication only as the
//! replication role, postgres_exporter logs in as a `pg_monitor` role, no secret is handed to
//! a task in an environment variable, and clients may use TLS with pgnomad's CA. Compiled
//! jobs are checked here; what only real processes can show runs on a `pgnomad dev` cluster.

use std::time::Duration;

use pgnomad::compile::{Artifacts, JobRole};
use pgnomad::nomad::job::{Job, Task};
use pgnomad::transport::Transport;

use crate::stack_fixtures::{compile, DEFAULT, VARIANTS};
use crate::support_dev::DevCluster;

fn job<'a>(artifacts: &'a Artifacts, role: JobRole) -> &'a Job {
    &artifacts.jobs.iter().find(|j| j.role == role).expect("the job is compiled").job
}

fn tasks(job: &Job) -> impl Iterator<Item = &Task> {
    job.task_groups.iter().flatten().flat_map(|g| g.tasks.iter().flatten())
}

fn template_text<'a>(task: &'a Task, dest: &str) -> &'a str {
    task.templates
        .iter()
        .flatten()
        .find(|t| t.dest_path.as_deref() == Some(dest))
        .and_then(|t| t.embedded_tmpl.as_deref())
        .unwrap_or_else(|| panic!("task {:?} has no template {dest}", task.name))
}

#[test]
fn patroni_asks_for_pgnomads_credentials_from_the_jobs_variable_and_the_checks_use_open_endpoints() {
    let artifacts = compile(DEFAULT);
    let postgres = job(&artifacts, JobRole::Postgres);
    let expected = format!(
        "restapi:\n  listen: \"0.0.0.0:{{{{ env \"NOMAD_PORT_patroni\" }}}}\"\n  connect_address: \"{{{{ env \"NOMAD_HOST_ADDR_patroni\" }}}}\"\n  authentication:\n    username: {}\n    password: \"{{{{ with nomadVar \"nomad/jobs/main-postgres\" }}}}{{{{ .{} }}}}{{{{ end }}}}\"\n",
        pgnomad::patroni::REST_USERNAME,
        pgnomad::patroni::REST_PASSWORD_KEY
    );
    let mut members = 0;
    for task in tasks(postgres).filter(|t| t.name.as_deref() == Some("patroni")) {
        let yml = template_text(task, "secrets/patroni.yml");
        assert!(yml.contains(&expected), "patroni.yml without REST authentication:\n{yml}");
        members += 1;
    }
    assert_eq!(members, 3);
    let spec = artifacts.secrets.iter().find(|s| s.job == "main-postgres").unwrap();
    assert!(spec.keys.iter().any(|k| k.key == pgnomad::patroni::REST_PASSWORD_KEY), "run generates the REST password");
    // Patroni's GET handlers have no check_access (patroni/api.py): the checks need no
    // credentials, and none of them is a write.
    for group in postgres.task_groups.iter().flatten() {
        for check in group.services.iter().flatten().flat_map(|s| s.checks.iter().flatten()) {
            if check.port_label.as_deref() == Some("patroni") {
                assert!(matches!(check.method.as_deref(), None | Some("GET")), "{check:?}");
                assert!(["/health", "/primary", "/replica", "/liveness"].contains(&check.path.as_deref().unwrap()), "{check:?}");
            }
        }
    }
}

/// A dev cluster of `members` from the tests' usual stack file; `postgres_extra` goes into
/// its `postgres` block, `extra` after it.
fn dev_cluster(cluster: &str, members: u32, postgres_extra: &str, extra: &str) -> DevCluster {
    crate::support_dev::require_dev_programs();
    let dir = crate::support_procs::postgres_tempdir();
    let stack_file = dir.path().join("pgnomad.hcl");
    let members_line = format!("  members = {members}\n");
    let text = crate::support_dev::stack_text(cluster, members).replacen(&members_line, &format!("{members_line}{postgres_extra}"), 1);
    std::fs::write(&stack_file, format!("{text}{extra}")).unwrap();
    let mut dev = DevCluster::at(dir, stack_file, cluster, members as usize);
    dev.start();
    dev
}

fn rest_address(dev: &DevCluster, index: usize) -> String {
    format!("127.0.0.1:{}", dev.status()["members"][index]["rest_port"].as_u64().unwrap())
}

#[test]
fn dev_patroni_refuses_an_unauthenticated_switchover_and_pgnomads_clients_are_let_in() {
    use pgnomad::dev::patroni::{request, RestAuth};

    let dev = dev_cluster("doors-rest", 2, "", "");
    let leader = dev.primary().expect("a primary");
    dev.wait_streaming(leader, Duration::from_secs(60));
    let address = rest_address(&dev, leader);
    let body = format!("{{\"leader\": \"member-{leader}\"}}");
    let password = dev.secrets()[pgnomad::patroni::REST_PASSWORD_KEY].as_str().expect("the REST password is generated").to_owned();
    assert_eq!(password.len(), 32);

    let (code, text) = request(&address, "POST", "/switchover", Some(&body), None, Duration::from_secs(10)).unwrap();
    assert_eq!((code, text.trim()), (401, "no auth header received"));
    let wrong = RestAuth::new("not-the-password");
    let (code, text) = request(&address, "POST", "/switchover", Some(&body), Some(&wrong), Duration::from_secs(10)).unwrap();
    assert_eq!((code, text.trim()), (401, "not authenticated"));
    let (code, _) = request(&address, "POST", "/restart", Some("{}"), None, Duration::from_secs(10)).unwrap();
    assert_eq!(code, 401, "POST /restart is refused too");
    // The checks' endpoints stay open.
    for path in ["/health", "/primary", "/liveness", "/cluster"] {
        let (code, _) = request(&address, "GET", path, None, None, Duration::from_secs(10)).unwrap();
        assert_eq!(code, 200, "GET {path}");
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(dev.primary(), Some(leader), "a refused switchover moved the leader");

    // `pgnomad dev switchover` authenticates.
    let old_log = dev.state_dir.join(format!("member-{leader}/log/patroni.log"));
    let before = std::fs::read_to_string(&old_log).unwrap_or_default().len();
    let out = dev.dev(&["switchover"]).output().unwrap();
    assert!(
        out.status.success(),
        "dev switchover: {}{}\n{}",
        crate::support_procs::text(&out.stdout),
        crate::support_procs::text(&out.stderr),
        dev.logs()
    );
    let second = dev.wait_new_primary(Some(leader), Duration::from_secs(30));
    dev.wait_streaming(second, Duration::from_secs(90));
    // The demoted leader checked whether it needs pg_rewind: Patroni logs the new primary's
    // timeline only after it logged in to it over TCP as the rewind role (pg_hba keeps the
    // superuser out there).
    let rejoined = || std::fs::read_to_string(&old_log).unwrap_or_default()[before..].to_owned();
    crate::support_procs::wait_until("the former leader's rewind check", Duration::from_secs(30), || {
        rejoined().contains("primary_timeline=")
    });
    assert!(!rejoined().contains("Exception when working with leader"), "{}", rejoined());

    // And so does the Nomad side's client (HttpTransport), with the same request builder.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let url = format!("http://{}", rest_address(&dev, second));
    let switchover = pgnomad::patroni::switchover(&format!("member-{second}"), Some(&format!("member-{leader}")));
    let anonymous = pgnomad::transport::HttpTransport::patroni(&url).unwrap();
    let answer = runtime.block_on(anonymous.send(&switchover, Some(Duration::from_secs(30))));
    assert_eq!(answer.as_ref().map(|r| r.status).ok(), Some(401), "{answer:?}");
    let authenticated = pgnomad::transport::HttpTransport::patroni_with_auth(&url, &RestAuth::new(password)).unwrap();
    let answer = runtime.block_on(authenticated.send(&switchover, Some(Duration::from_secs(60))));
    assert_eq!(answer.as_ref().map(|r| r.status).ok(), Some(200), "{answer:?}\n{}", dev.logs());
    assert_eq!(dev.wait_new_primary(Some(second), Duration::from_secs(30)), leader);
}

#[test]
fn pg_hba_admits_the_superuser_by_socket_only_and_replication_as_the_replication_role_only() {
    let artifacts = compile(DEFAULT);
    let postgres = job(&artifacts, JobRole::Postgres);
    let patroni = tasks(postgres).find(|t| t.name.as_deref() == Some("patroni")).unwrap();
    let yml = template_text(patroni, "secrets/patroni.yml");
    let rules = |net: &str, local: &str| {
        format!(
            "    - host all postgres {net} reject\n    - host replication replicator {net} scram-sha-256\n    - host replication all {net} reject\n    - host all replicator {net} reject\n    - host postgres pgnomad_rewind {net} scram-sha-256\n    - host all pgnomad_rewind {net} reject\n    - host postgres pgnomad_monitor {local} scram-sha-256\n    - host all pgnomad_monitor {net} reject\n    - host all all {net} scram-sha-256\n"
        )
    };
    let hba = format!(
        "  pg_hba:\n    - local all postgres peer map=pgnomad\n    - local replication replicator scram-sha-256\n    - local all all scram-sha-256\n{}{}  pg_ident:",
        rules("0.0.0.0/0", "127.0.0.1/32"),
        rules("::/0", "::1/128")
    );
    assert!(yml.contains(&hba), "postgresql.pg_hba is not pgnomad's:\n{yml}");
    // pg_rewind reaches the primary over TCP, so it is not the superuser.
    assert!(yml.contains("    rewind:\n      username: pgnomad_rewind\n      password: \"{{ with nomadVar \"nomad/jobs/main-postgres\" }}{{ .rewind_password }}{{ end }}\"\n"), "{yml}");
    let spec = artifacts.secrets.iter().find(|s| s.job == "main-postgres").unwrap();
    for key in ["rewind_password", "monitor_password"] {
        assert!(spec.keys.iter().any(|k| k.key == key), "{key} is not generated");
    }
    // Without the exporter there is no monitor role, rule or secret.
    let bare = compile(VARIANTS.iter().find(|(n, _)| *n == "no-backup-no-monitoring").unwrap().1);
    let bare_patroni = tasks(job(&bare, JobRole::Postgres)).find(|t| t.name.as_deref() == Some("patroni")).unwrap();
    assert!(!template_text(bare_patroni, "secrets/patroni.yml").contains("pgnomad_monitor"));
    assert!(!bare.secrets.iter().flat_map(|s| &s.keys).any(|k| k.key == "monitor_password"));
}

#[test]
fn no_secret_is_handed_to_a_task_in_its_environment() {
    for (name, text) in VARIANTS {
        for compiled in &compile(text).jobs {
            for task in tasks(&compiled.job) {
                for t in task.templates.iter().flatten() {
                    assert_ne!(t.envvars, Some(true), "variant {name}: {} task {:?} has an env = true template", compiled.id(), task.name);
                }
                for (key, value) in task.env.iter().flatten() {
                    assert!(!value.contains("nomadVar") && !value.contains("secret \""), "variant {name}: {key}={value}");
                }
            }
        }
    }
    let artifacts = compile(DEFAULT);
    let postgres = job(&artifacts, JobRole::Postgres);
    let exporter = tasks(postgres).find(|t| t.name.as_deref() == Some("exporter")).unwrap();
    let env = exporter.env.as_ref().unwrap();
    assert_eq!(env["DATA_SOURCE_USER"], "pgnomad_monitor", "the exporter is not the superuser");
    assert_eq!(env["DATA_SOURCE_PASS_FILE"], "/secrets/monitor_password");
    assert!(!env.contains_key("DATA_SOURCE_PASS"));
    let password = exporter.templates.iter().flatten().find(|t| t.dest_path.as_deref() == Some("secrets/monitor_password")).unwrap();
    assert_eq!(password.embedded_tmpl.as_deref(), Some("{{ with nomadVar \"nomad/jobs/main-postgres\" }}{{ .monitor_password }}{{ end }}"));
    assert_eq!((password.perms.as_deref(), password.uid, password.gid), (Some("0600"), Some(999), Some(999)));

    let pgadmin = tasks(job(&artifacts, JobRole::PgAdmin)).next().unwrap();
    assert_eq!(pgadmin.env.as_ref().unwrap()["PGADMIN_DEFAULT_PASSWORD_FILE"], "/secrets/pgadmin_password");
    let password = pgadmin.templates.iter().flatten().find(|t| t.dest_path.as_deref() == Some("secrets/pgadmin_password")).unwrap();
    assert_eq!(password.embedded_tmpl.as_deref(), Some("{{ with nomadVar \"nomad/jobs/main-pgadmin\" }}{{ .pgadmin_password }}{{ end }}"));
    assert_eq!((password.perms.as_deref(), password.uid, password.gid), (Some("0600"), Some(5050), Some(0)));
    let entrypoint = &pgadmin.config.as_ref().unwrap()["entrypoint"];
    assert_eq!(entrypoint[2].as_str().unwrap().split(" && ").last(), Some("exec /entrypoint.sh"), "{entrypoint}");
}

/// psql over TCP to 127.0.0.1:`port` with `conninfo` added; the password from PGPASSWORD.
fn tcp_login(port: u16, user: &str, password: &str, conninfo: &str, sql: &str) -> std::process::Output {
    std::process::Command::new("psql")
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql, "-d"])
        .arg(format!("host=127.0.0.1 port={port} user={user} connect_timeout=5 {conninfo}"))
        .env("PGPASSWORD", password)
        .env_remove("PGPASSFILE")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn refused(out: &std::process::Output, why: &str) {
    let stderr = crate::support_procs::text(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(why),
        "expected a refusal ({why}), got: {}{stderr}",
        crate::support_procs::text(&out.stdout)
    );
}

fn admitted(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{}", crate::support_procs::text(&out.stderr));
    crate::support_procs::text(&out.stdout).trim().to_owned()
}

#[test]
fn dev_logins_follow_pg_hba_superuser_by_socket_replication_as_replicator_apps_with_scram() {
    let dev = dev_cluster("doors-hba", 2, "", "");
    let primary = dev.primary().expect("a primary");
    dev.wait_streaming(primary, Duration::from_secs(60));
    let port = dev.pg_port(primary);
    let secrets = dev.secrets();
    let secret = |key: &str| secrets[key].as_str().unwrap_or_else(|| panic!("no secret {key}")).to_owned();
    let hba = "pg_hba.conf rejects connection";

    // The superuser: over the socket (peer) yes, over TCP never, even with its password.
    assert_eq!(dev.member_sql(primary, "postgres", "SELECT current_user").as_deref(), Some("postgres"));
    refused(&tcp_login(port, "postgres", &secret("superuser_password"), "dbname=postgres", "SELECT 1"), hba);

    // Replication: as the replication role yes, as an application user no; and the
    // replication role logs in to no database.
    let identify = "IDENTIFY_SYSTEM";
    assert!(!admitted(&tcp_login(port, "replicator", &secret("replication_password"), "dbname=replication replication=true", identify))
        .is_empty());
    refused(
        &tcp_login(port, "app", &secret("password_app"), "dbname=replication replication=true", identify),
        "pg_hba.conf rejects replication connection",
    );
    refused(&tcp_login(port, "replicator", &secret("replication_password"), "dbname=postgres", "SELECT 1"), hba);

    // Applications over TCP with scram-sha-256: their passwords are SCRAM verifiers and the
    // rule that admits them says so; a wrong password is refused.
    assert_eq!(admitted(&tcp_login(port, "app", &secret("password_app"), "dbname=app", "SELECT current_user")), "app");
    refused(&tcp_login(port, "app", "wrong", "dbname=app", "SELECT 1"), "password authentication failed");
    assert_eq!(
        dev.member_sql(primary, "postgres", "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'app'").as_deref(),
        Some("t")
    );
    let rules = dev
        .member_sql(primary, "postgres", "SELECT string_agg(type || ' ' || array_to_string(database, ',') || ' ' || array_to_string(user_name, ',') || ' ' || coalesce(address, '') || ' ' || auth_method, E'\\n' ORDER BY line_number) FROM pg_hba_file_rules WHERE error IS NULL")
        .unwrap();
    let mut expected = vec![
        "local all postgres  peer".to_owned(),
        // Patroni's own replication connection (use_unix_socket_repl).
        "local replication replicator  scram-sha-256".to_owned(),
        "local all all  scram-sha-256".to_owned(),
    ];
    for (net, local) in [("0.0.0.0", "127.0.0.1"), ("::", "::1")] {
        expected.extend([
            format!("host all postgres {net} reject"),
            format!("host replication replicator {net} scram-sha-256"),
            format!("host replication all {net} reject"),
            format!("host all replicator {net} reject"),
            format!("host postgres pgnomad_rewind {net} scram-sha-256"),
            format!("host all pgnomad_rewind {net} reject"),
            format!("host postgres pgnomad_monitor {local} scram-sha-256"),
            format!("host all pgnomad_monitor {net} reject"),
            format!("host all all {net} scram-sha-256"),
        ]);
    }
    assert_eq!(rules, expected.join("\n"), "the pg_hba.conf Postgres runs with");
    assert!(!rules.contains("trust") && !rules.contains(" md5") && !rules.contains("password"), "{rules}");

    // postgres_exporter's role: pg_monitor, not a superuser, from localhost to `postgres` only.
    let monitor = secret("monitor_password");
    assert_eq!(
        admitted(&tcp_login(
            port,
            "pgnomad_monitor",
            &monitor,
            "dbname=postgres",
            "SELECT pg_has_role('pg_monitor', 'member'), usesuper FROM pg_user WHERE usename = current_user"
        )),
        "t|f"
    );
    refused(&tcp_login(port, "pgnomad_monitor", &monitor, "dbname=app", "SELECT 1"), hba);

    // pg_rewind's role reads what pg_rewind reads, from the primary over TCP, and nothing else.
    let rewind = secret("rewind_password");
    assert_eq!(
        admitted(&tcp_login(port, "pgnomad_rewind", &rewind, "dbname=postgres", "SELECT length(pg_read_binary_file('global/pg_control')) > 0, (SELECT count(*) > 0 FROM pg_ls_dir('.', false, false)), usesuper FROM pg_user WHERE usename = current_user")),
        "t|t|f"
    );
    refused(&tcp_login(port, "pgnomad_rewind", &rewind, "dbname=app", "SELECT 1"), hba);

    // Neither of pgnomad's own roles gets in through PgBouncer (auth_query hides them).
    let pgbouncer = dev.pgbouncer_port();
    for (user, password) in [("pgnomad_monitor", &monitor), ("pgnomad_rewind", &rewind)] {
        let out = dev.through_pgbouncer(&pgbouncer, user, Some(password), "postgres", "SELECT 1");
        assert!(!out.status.success(), "{user} logged in through PgBouncer");
    }
    assert_eq!(dev.app_sql("SELECT current_user"), "app");
}

const TLS_STACK: &str = "cluster \"main\" {}\npostgres {\n  tls = true\n}\npgbouncer {\n  tls = true\n}\n";

#[test]
fn tls_is_off_by_default_and_on_gives_postgres_and_pgbouncer_pgnomads_certificate() {
    let plain = compile(DEFAULT);
    for compiled in &plain.jobs {
        for task in tasks(&compiled.job) {
            for t in task.templates.iter().flatten() {
                let text = t.embedded_tmpl.as_deref().unwrap_or_default();
                assert!(
                    !text.contains("tls_sql") && !text.contains("ssl: \"on\"") && !text.contains("client_tls"),
                    "{}: {text}",
                    compiled.id()
                );
            }
        }
    }
    assert!(!plain.secrets.iter().flat_map(|s| &s.keys).any(|k| k.key.starts_with("tls_sql")));

    let artifacts = compile(TLS_STACK);
    for compiled in &artifacts.jobs {
        let body: serde_json::Value = serde_json::from_str(&pgnomad::render::job_register_json(&compiled.job)).unwrap();
        let violations = crate::support::schema::violations("JobRegisterRequest", &body);
        assert!(violations.is_empty(), "{}: {violations:#?}", compiled.id());
    }
    let postgres = job(&artifacts, JobRole::Postgres);
    let patroni = tasks(postgres).find(|t| t.name.as_deref() == Some("patroni")).unwrap();
    assert!(template_text(patroni, "secrets/patroni.yml")
        .contains("    ssl: \"on\"\n    ssl_cert_file: \"/secrets/tls/sql.crt\"\n    ssl_key_file: \"/secrets/tls/sql.key\"\n"));
    assert_eq!(
        template_text(patroni, "secrets/tls/sql.key"),
        "{{ with nomadVar \"nomad/jobs/main-postgres\" }}{{ .tls_sql_key }}{{ end }}"
    );
    let pgbouncer = tasks(job(&artifacts, JobRole::PgBouncer)).next().unwrap();
    let ini = template_text(pgbouncer, "secrets/pgbouncer.ini");
    assert!(
        ini.contains(
            "client_tls_sslmode = prefer\nclient_tls_cert_file = /secrets/tls/sql.crt\nclient_tls_key_file = /secrets/tls/sql.key\n"
        ),
        "{ini}"
    );
    assert!(ini.contains("server_tls_sslmode = verify-ca\nserver_tls_ca_file = /secrets/tls/ca.crt\n"), "{ini}");
    for (dest, key) in
        [("secrets/tls/sql.crt", "tls_sql_crt"), ("secrets/tls/sql.key", "tls_sql_key"), ("secrets/tls/ca.crt", "tls_ca_crt")]
    {
        assert_eq!(
            template_text(pgbouncer, dest),
            format!("{{{{ with nomadVar \"nomad/jobs/main-pgbouncer\" }}}}{{{{ .{key} }}}}{{{{ end }}}}")
        );
        let t = pgbouncer.templates.iter().flatten().find(|t| t.dest_path.as_deref() == Some(dest)).unwrap();
        assert_eq!((t.perms.as_deref(), t.uid), (Some("0600"), Some(999)));
    }
    let keys = |job: &str| -> Vec<String> {
        artifacts.secrets.iter().find(|s| s.job == job).unwrap().keys.iter().map(|k| k.key.clone()).collect()
    };
    assert!(keys("main-postgres").contains(&"tls_sql_key".to_owned()));
    assert!(keys("main-pgbouncer").contains(&"tls_sql_key".to_owned()) && keys("main-pgbouncer").contains(&"tls_ca_crt".to_owned()));

    // On Nomad the certificate names the Consul services clients reach.
    let tls = pgnomad::secrets::tls_set("main", &[], &pgnomad::secrets::sql_server_names("main")).unwrap();
    let names = pgnomad::secrets::sql_server_names("main");
    assert_eq!(
        names,
        ["main-primary.service.consul", "main-replica.service.consul", "main-postgres.service.consul", "main-pgbouncer.service.consul"]
    );
    assert!(tls.sql_crt.starts_with("-----BEGIN CERTIFICATE-----") && tls.sql_key.contains("PRIVATE KEY"));
}

#[test]
fn dev_clients_verify_postgres_and_pgbouncer_with_pgnomads_ca() {
    let dev = dev_cluster("doors-tls", 1, "  tls = true\n", "pgbouncer {\n  tls = true\n}\n");
    let primary = dev.primary().expect("a primary");
    let ca = dev.state_dir.join("tls/ca.crt");
    let secrets = dev.secrets();
    let app = secrets["password_app"].as_str().unwrap().to_owned();
    let ssl = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    let verify = |root: &std::path::Path| format!("dbname=app sslmode=verify-full sslrootcert={}", root.display());

    // Straight to Postgres: verify-full with pgnomad's CA, and the session is encrypted.
    let port = dev.pg_port(primary);
    assert_eq!(admitted(&tcp_login(port, "app", &app, &verify(&ca), ssl)), "t");
    // Through PgBouncer: verify-full with pgnomad's CA.
    let pgbouncer: u16 = dev.pgbouncer_port().parse().unwrap();
    assert_eq!(admitted(&tcp_login(pgbouncer, "app", &app, &verify(&ca), "SELECT current_user")), "app");
    // and PgBouncer's own connection to Postgres is TLS, checked against the same CA.
    let encrypted = dev
        .member_sql(primary, "postgres", "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.usename = 'app' AND a.pid <> pg_backend_pid() AND a.backend_type = 'client backend'")
        .unwrap();
    assert_eq!(encrypted, "t", "PgBouncer's server connections are not encrypted");

    // A CA that is not pgnomad's does not verify either of them.
    let other = dev.dir.path().join("other-ca.crt");
    let stranger = pgnomad::secrets::tls_set("stranger", &[], &["127.0.0.1".into()]).unwrap();
    std::fs::write(&other, stranger.ca_crt).unwrap();
    for port in [port, pgbouncer] {
        refused(&tcp_login(port, "app", &app, &verify(&other), "SELECT 1"), "certificate verify failed");
    }
}
