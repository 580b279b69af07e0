//! Every `template` block of every job, for the default stack and each variant, executed by
//! Go's own text/template (tests/gotemplate, consul-template's functions) in the context
//! Nomad gives the task: its environment, the secrets `pgnomad run` stores, the variable
//! paths its workload identity may read, and Consul's catalog. Then the rendered files go to
//! the real programs: Patroni's validator, PgBouncer, pgBackRest against Postgres 15, bash
//! and shellcheck.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::stack_fixtures::{compile, load, DEFAULT, VARIANTS};
use crate::support::gotemplate::{self, Rendered, ServiceInstance, TemplateContext};
use crate::support_procs::*;

/// One template block of one task, with the context Nomad renders it in.
struct Block {
    variant: &'static str,
    job: String,
    group: String,
    task: String,
    template: Value,
    /// After `pgnomad run` stored the secrets.
    stored: TemplateContext,
}

impl Block {
    fn dest(&self) -> &str {
        self.template["DestPath"].as_str().unwrap_or_default()
    }
    fn text(&self) -> &str {
        self.template["EmbeddedTmpl"].as_str().unwrap_or_default()
    }
    fn name(&self) -> String {
        format!("variant {}, job {}, group {}, task {}, {}", self.variant, self.job, self.group, self.task, self.dest())
    }
    /// The same task before any secret is stored.
    fn unstored(&self) -> TemplateContext {
        TemplateContext { variables: BTreeMap::new(), vault: BTreeMap::new(), ..self.stored.clone() }
    }
    fn render(&self) -> String {
        match gotemplate::execute(&self.template, &self.stored) {
            Ok(Rendered::Text(text)) => text,
            other => panic!("{}: {other:?}", self.name()),
        }
    }
}

/// The host address of group number `n` of a job (each allocation on its own node).
fn host_ip(job_index: usize, group_index: usize) -> String {
    format!("10.0.{job_index}.{}", 11 + group_index)
}

/// The host port Nomad maps label number `label_index` of group `group_index` to.
fn host_port(job_index: usize, group_index: usize, label_index: usize) -> u16 {
    (21000 + job_index * 1000 + group_index * 10 + label_index) as u16
}

/// The secret values `pgnomad run` stores: one pool (a password shared by two jobs is the
/// same value), certificates from one TLS set, and values for what only an operator gives.
fn stored_secrets(text: &str, specs: &[pgnomad::compile::SecretSpec]) -> BTreeMap<String, BTreeMap<String, String>> {
    let stack = load(text);
    let cluster = stack.cluster.name.value.clone();
    let mut names = pgnomad::config::runtime::names::pgbackrest_server_names(&cluster, stack.postgres.members.value);
    // The repository host is reached at 127.0.0.1 by the pgBackRest check below.
    names.push("127.0.0.1".into());
    let tls = pgnomad::secrets::tls_set(&cluster, &names, &pgnomad::secrets::sql_server_names(&cluster)).expect("TLS set");
    let mut keys: Vec<_> = specs.iter().flat_map(|s| s.keys.clone()).collect();
    keys.sort_by(|a, b| a.key.cmp(&b.key));
    keys.dedup_by(|a, b| a.key == b.key);
    let operator = BTreeMap::from([
        ("consul_token".to_owned(), "3f1c9a2e-7b4d-4e8f-9a61-2c5d8e0b7f43".to_owned()),
        ("s3_key".to_owned(), "AKIAPGNOMADTEST0001".to_owned()),
        ("s3_key_secret".to_owned(), "pgnomadTestSecretKey0123456789abcdefABCD".to_owned()),
    ]);
    let (pool, missing) = pgnomad::secrets::fill(&keys, &operator, &tls);
    assert!(missing.is_empty(), "no value for {missing:?}");
    specs.iter().map(|s| (s.path.clone(), s.keys.iter().map(|k| (k.key.clone(), pool[&k.key].clone())).collect())).collect()
}

/// Consul's catalog while the stack runs: every group's services at its host address and
/// mapped port, member-0 the primary (its `-primary` check passes, `-replica` fails; the
/// other members the other way round).
fn catalog(jobs: &[Value]) -> BTreeMap<String, Vec<ServiceInstance>> {
    let mut catalog: BTreeMap<String, Vec<ServiceInstance>> = BTreeMap::new();
    for (j, job) in jobs.iter().enumerate() {
        for (g, group) in job["TaskGroups"].as_array().unwrap().iter().enumerate() {
            let labels = port_labels(group);
            let services = group["Services"].as_array().cloned().unwrap_or_default();
            let task_services =
                group["Tasks"].as_array().unwrap().iter().flat_map(|t| t["Services"].as_array().cloned().unwrap_or_default());
            for service in services.into_iter().chain(task_services) {
                let name = service["Name"].as_str().unwrap().to_owned();
                let label = service["PortLabel"].as_str().unwrap_or_default();
                let port = labels.iter().position(|(l, _)| l == label).map(|i| host_port(j, g, i)).unwrap_or(0);
                let primary = g == 0;
                let status = match (name.ends_with("-primary"), name.ends_with("-replica")) {
                    (true, _) if !primary => "critical",
                    (_, true) if primary => "critical",
                    _ => "passing",
                };
                // Nomad interpolates service meta: the repository host's `alloc`.
                let meta = service["Meta"].as_object().map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().replace("${NOMAD_ALLOC_ID}", &format!("alloc-{j}-{g}"))))
                        .collect()
                });
                catalog.entry(name.clone()).or_default().push(ServiceInstance {
                    node: format!("node-{j}-{g}"),
                    node_address: host_ip(j, g),
                    address: host_ip(j, g),
                    port,
                    id: format!("_nomad-task-{j}-{g}-{name}"),
                    name,
                    tags: service["Tags"]
                        .as_array()
                        .map(|t| t.iter().map(|t| t.as_str().unwrap().to_owned()).collect())
                        .unwrap_or_default(),
                    service_meta: meta.unwrap_or_default(),
                    status: status.into(),
                });
            }
        }
    }
    catalog
}

/// `(label, port in the task)` of a group's network, in order.
fn port_labels(group: &Value) -> Vec<(String, u16)> {
    let Some(network) = group["Networks"].as_array().and_then(|n| n.first()) else { return Vec::new() };
    ["ReservedPorts", "DynamicPorts"]
        .iter()
        .flat_map(|kind| network[*kind].as_array().cloned().unwrap_or_default())
        .map(|p| {
            (p["Label"].as_str().unwrap().to_owned(), p["To"].as_u64().filter(|to| *to > 0).or(p["Value"].as_u64()).unwrap_or(0) as u16)
        })
        .collect()
}

fn meta_env(cx: &mut TemplateContext, levels: &[&Value]) {
    for meta in levels {
        for (k, v) in meta.as_object().into_iter().flatten() {
            cx.env.insert(format!("NOMAD_META_{k}"), v.as_str().unwrap().to_owned());
        }
    }
}

/// Every template block of every job of one stack.
fn blocks(variant: &'static str, text: &str) -> Vec<Block> {
    let artifacts = compile(text);
    let jobs: Vec<Value> = artifacts.jobs.iter().map(|c| serde_json::to_value(&c.job).unwrap()).collect();
    let secrets = stored_secrets(text, &artifacts.secrets);
    let catalog = catalog(&jobs);
    let mut out = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        let job_id = job["ID"].as_str().unwrap().to_owned();
        for (g, group) in job["TaskGroups"].as_array().unwrap().iter().enumerate() {
            let group_name = group["Name"].as_str().unwrap().to_owned();
            for task in group["Tasks"].as_array().unwrap() {
                let task_name = task["Name"].as_str().unwrap().to_owned();
                let mut cx = TemplateContext::for_task(&job_id, &group_name, &task_name, 0);
                cx.set_placement(job["Namespace"].as_str().unwrap_or("default"), job["Datacenters"][0].as_str().unwrap_or("dc1"));
                let ports: Vec<_> =
                    port_labels(group).into_iter().enumerate().map(|(i, (l, to))| (l, to, host_ip(j, g), host_port(j, g, i))).collect();
                cx.set_ports(&ports.iter().map(|(l, to, ip, hp)| (l.as_str(), *to, ip.as_str(), *hp)).collect::<Vec<_>>());
                meta_env(&mut cx, &[&job["Meta"], &group["Meta"], &task["Meta"]]);
                cx.services = catalog.clone();
                // A task gets a Vault token only from its own `vault` block.
                cx.vault_token = !task["Vault"].is_null();
                for spec in &artifacts.secrets {
                    let values = secrets[&spec.path].clone();
                    if spec.provider == "vault" {
                        cx.vault.insert(spec.path.clone(), json!({ "data": values, "metadata": { "version": 1 } }));
                    } else {
                        cx.variables.insert(spec.path.clone(), values);
                    }
                }
                for template in task["Templates"].as_array().cloned().unwrap_or_default() {
                    out.push(Block {
                        variant,
                        job: job_id.clone(),
                        group: group_name.clone(),
                        task: task_name.clone(),
                        template,
                        stored: cx.clone(),
                    });
                }
            }
        }
    }
    out
}

/// The variants, and TLS for clients on (its templates exist only then).
fn all_blocks() -> Vec<Block> {
    const TLS: (&str, &str) = ("client-tls", "cluster \"main\" {}\npostgres {\n  tls = true\n}\npgbouncer {\n  tls = true\n}\n");
    VARIANTS.iter().chain([&TLS]).flat_map(|(name, text)| blocks(name, text)).collect()
}

fn reads_secrets(block: &Block) -> bool {
    block.text().contains("nomadVar") || block.text().contains("secret \"")
}

// ---------------------------------------------------------------------------------------
// Every template, as Nomad executes it

#[test]
fn every_template_renders_once_its_secrets_are_stored_and_waits_for_them_before() {
    let blocks = all_blocks();
    let mut problems = Vec::new();
    let mut rendered = 0;
    for block in &blocks {
        match gotemplate::execute(&block.template, &block.stored) {
            Ok(Rendered::Text(text)) => {
                rendered += 1;
                if text.contains("<no value>") {
                    problems.push(format!("{}: renders `<no value>`:\n{text}", block.name()));
                }
            }
            Ok(Rendered::Blocked(deps)) => problems.push(format!(
                "{}: never renders with every secret stored; waits on {deps:?}{}",
                block.name(),
                if deps.iter().any(|d| d.starts_with("vault.read(")) && !block.stored.vault_token {
                    " (the task has no `vault` block, so Nomad gives it no Vault token and Vault refuses the read)"
                } else {
                    ""
                }
            )),
            Err(e) => problems.push(format!("{}: template error: {e}", block.name())),
        }
        let before = gotemplate::execute(&block.template, &block.unstored());
        match (reads_secrets(block), before) {
            (true, Ok(Rendered::Blocked(deps))) => {
                if !deps.iter().all(|d| d.starts_with("nomad.var.block(nomad/jobs/") || d.starts_with("vault.read(")) {
                    problems.push(format!("{}: before the secrets are stored it waits on {deps:?}", block.name()));
                }
            }
            (false, Ok(Rendered::Text(_))) => {}
            (_, other) => problems.push(format!("{}: before the secrets are stored: {other:?}", block.name())),
        }
    }
    assert!(problems.is_empty(), "{} of {} template blocks have problems:\n\n{}", problems.len(), blocks.len(), problems.join("\n\n"));
    assert!(rendered > 200, "only {rendered} template blocks were rendered");
}

#[test]
fn templates_read_only_variables_their_workload_identity_may_read() {
    // The same templates with the identity's paths only (no ACL policy bound to the job):
    // a secret kept under another job's path would keep the task waiting forever.
    for block in all_blocks().iter().filter(|b| reads_secrets(b) && b.text().contains("nomadVar")) {
        let mut cx = block.stored.clone();
        cx.readable_variable_paths = gotemplate::workload_identity_paths(&block.job, &block.group, &block.task);
        assert!(matches!(gotemplate::execute(&block.template, &cx), Ok(Rendered::Text(_))), "{}", block.name());
    }
    // The guard: a path outside them blocks.
    let block = blocks("default", DEFAULT).into_iter().find(|b| b.text().contains("nomadVar")).unwrap();
    let mut cx = block.stored.clone();
    cx.readable_variable_paths = gotemplate::workload_identity_paths("other-job", &block.group, &block.task);
    assert!(matches!(gotemplate::execute(&block.template, &cx), Ok(Rendered::Blocked(_))));
}

#[test]
fn pgbouncer_follows_the_passing_primary_and_falls_back_to_dns_without_one() {
    let block = blocks("default", DEFAULT).into_iter().find(|b| b.dest().ends_with("pgbouncer.ini")).unwrap();
    let primary = &block.stored.services["main-primary"];
    let passing: Vec<_> = primary.iter().filter(|s| s.status == "passing").collect();
    assert_eq!(passing.len(), 1);
    let ini = block.render();
    let line = ini.lines().find(|l| l.starts_with("app = ")).unwrap();
    assert_eq!(line, format!("app = host={} port={} dbname=app", passing[0].address, passing[0].port));

    // Mid-failover nobody passes: the DNS name.
    let mut cx = block.stored.clone();
    for s in cx.services.get_mut("main-primary").unwrap() {
        s.status = "critical".into();
    }
    let Ok(Rendered::Text(ini)) = gotemplate::execute(&block.template, &cx) else { panic!() };
    assert!(ini.contains("app = host=main-primary.service.consul port=5432 dbname=app"), "{ini}");
    // Without a Consul token (ACLs default-deny) Consul filters the service out: the same.
    let mut cx = block.stored.clone();
    cx.consul_token = false;
    let Ok(Rendered::Text(ini)) = gotemplate::execute(&block.template, &cx) else { panic!() };
    assert!(ini.contains("app = host=main-primary.service.consul port=5432 dbname=app"), "{ini}");
}

#[test]
fn servers_json_and_backup_config_list_every_member() {
    for (variant, text) in VARIANTS {
        let stack = load(text);
        let members = stack.postgres.members.value as usize;
        for block in blocks(variant, text) {
            if block.dest().ends_with("servers.json") {
                let servers: Value = serde_json::from_str(&block.render()).unwrap_or_else(|e| panic!("{}: not JSON: {e}", block.name()));
                let pgbouncer = usize::from(stack.pgbouncer.enabled);
                assert_eq!(servers["Servers"].as_object().unwrap().len(), members + pgbouncer, "{}:\n{servers:#}", block.name());
            }
            if block.job.contains("-backup-") && block.dest().ends_with("pgbackrest.conf") {
                let conf = block.render();
                for i in 0..members {
                    let line = format!("pg{}-host=member-{i}.{}-pgbackrest.service.consul", i + 1, stack.cluster.name.value);
                    assert!(conf.contains(&line), "{}: no `{line}`:\n{conf}", block.name());
                }
            }
        }
    }
}

#[test]
fn a_missing_key_with_err_missing_key_is_a_template_error() {
    let mut cx = TemplateContext::for_task("j", "g", "t", 0);
    cx.variables.insert("nomad/jobs/j".into(), BTreeMap::from([("present".to_owned(), "yes".to_owned())]));
    let t = |text: &str, strict: bool| json!({ "EmbeddedTmpl": text, "ErrMissingKey": strict, "LeftDelim": "{{", "RightDelim": "}}" });
    let missing = r#"{{ with nomadVar "nomad/jobs/j" }}{{ .absent }}{{ end }}"#;
    let err = gotemplate::execute(&t(missing, true), &cx).unwrap_err();
    assert!(err.0.contains("map has no entry for key \"absent\""), "{err}");
    assert_eq!(gotemplate::execute(&t(missing, false), &cx).unwrap(), Rendered::Text("<no value>".into()));
    assert_eq!(
        gotemplate::execute(&t(r#"{{ with nomadVar "nomad/jobs/j" }}{{ .present }}{{ end }}"#, true), &cx).unwrap(),
        Rendered::Text("yes".into())
    );
    assert!(gotemplate::execute(&t("{{ nosuchfunction }}", true), &cx).unwrap_err().0.contains("function \"nosuchfunction\" not defined"));

    // nomadVarExists does not wait; nomadVar of a variable that does not exist does.
    let exists = r#"{{ nomadVarExists "nomad/jobs/j" }} {{ nomadVarExists "nomad/jobs/j/g" }}"#;
    assert_eq!(gotemplate::execute(&t(exists, true), &cx).unwrap(), Rendered::Text("true false".into()));
    assert_eq!(
        gotemplate::execute(&t(r#"{{ with nomadVar "nomad/jobs/j/g" }}x{{ end }}"#, true), &cx).unwrap(),
        Rendered::Blocked(vec!["nomad.var.block(nomad/jobs/j/g@default.global)".into()])
    );
}

#[test]
fn service_returns_only_passing_instances_unless_asked_otherwise() {
    let mut cx = TemplateContext::for_task("j", "g", "t", 0);
    let t = |text: &str, strict: bool| json!({ "EmbeddedTmpl": text, "ErrMissingKey": strict, "LeftDelim": "{{", "RightDelim": "}}" });
    let instance = |node: &str, port: u16, status: &str, tags: &[&str]| ServiceInstance {
        node: node.into(),
        address: format!("10.9.9.{port}"),
        port,
        id: format!("{node}-web"),
        name: "web".into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        status: status.into(),
        ..ServiceInstance::default()
    };
    cx.services.insert(
        "web".into(),
        vec![
            instance("n3", 3, "critical", &["a"]),
            instance("n2", 2, "warning", &["a"]),
            instance("n1", 1, "passing", &["b"]),
            instance("n0", 4, "passing", &["a"]),
        ],
    );
    let ports = |text: &str, cx: &TemplateContext| match gotemplate::execute(&t(text, true), cx).unwrap() {
        Rendered::Text(s) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!(ports(r#"{{ range service "web" }}{{ .Port }} {{ end }}"#, &cx), "4 1 ");
    assert_eq!(ports(r#"{{ range service "a.web" }}{{ .Port }} {{ end }}"#, &cx), "4 ");
    assert_eq!(ports(r#"{{ range service "web|any" }}{{ .Port }} {{ end }}"#, &cx), "4 1 2 3 ");
    assert_eq!(ports(r#"{{ range service "web" "passing,warning" }}{{ .Port }} {{ end }}"#, &cx), "4 1 2 ");
    assert_eq!(ports(r#"{{ range services }}{{ .Name }}{{ .Tags }} {{ end }}"#, &cx), "web[a b] ");
    cx.consul_token = false;
    assert_eq!(ports(r#"{{ range service "web|any" }}{{ .Port }}{{ else }}none{{ end }}"#, &cx), "none");
}

// ---------------------------------------------------------------------------------------
// The rendered files, fed to the real programs

/// Every distinct rendered file whose destination ends with `suffix`: `(where, text)`.
fn rendered(suffix: &str, filter: impl Fn(&Block) -> bool) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for block in all_blocks().iter().filter(|b| b.dest().ends_with(suffix) && filter(b)) {
        let text = block.render();
        if !out.iter().any(|(_, t)| *t == text) {
            out.push((block.name(), text));
        }
    }
    assert!(!out.is_empty(), "no template renders a *{suffix}");
    out
}

#[test]
fn rendered_shell_scripts_pass_bash_n_and_shellcheck() {
    let bash = require("bash", "bash");
    let shellcheck = require("shellcheck", "shellcheck");
    let dir = tempfile::tempdir().unwrap();
    let scripts = rendered(".sh", |_| true);
    for (i, (name, text)) in scripts.iter().enumerate() {
        let file = dir.path().join(format!("{i}.sh"));
        std::fs::write(&file, text).unwrap();
        run_ok(&format!("bash -n {name}"), Command::new(&bash).arg("-n").arg(&file));
        run_ok(&format!("shellcheck {name}"), Command::new(&shellcheck).arg(&file));
    }
    // The check checks: shellcheck flags an unquoted expansion.
    let bad = dir.path().join("bad.sh");
    std::fs::write(&bad, "#!/usr/bin/env bash\nrm $1\n").unwrap();
    assert!(!run(Command::new(&shellcheck).arg(&bad)).status.success());
}

#[test]
fn rendered_patroni_yml_passes_patroni_validate_config() {
    let patroni = require("patroni", "patroni");
    let dir = tempfile::tempdir().unwrap();
    let validate = |text: &str, file: &Path| {
        std::fs::write(file, text).unwrap();
        let out = run(Command::new(&patroni).arg("--validate-config").arg(file));
        (out.status.success(), format!("{}{}", text_of(&out.stdout), text_of(&out.stderr)))
    };
    let mut checked = 0;
    for block in all_blocks().iter().filter(|b| b.dest().ends_with("patroni.yml")) {
        // The validator checks that the DCS answers and that the listen ports are free, on
        // this machine: the member's node is a loopback address here, its Consul agent a
        // listener on <node>:8500 (etcd hosts, 10.0.0.x, are only parsed), and the ports
        // inside the task free ones. Paths stay as rendered: data_dir need not exist and
        // bin_dir is where Debian's postgresql-15 puts the binaries too.
        let node = format!("127.0.{}.{}", 100 + checked / 200, 2 + checked % 200);
        let consul = TcpListener::bind((node.as_str(), 8500));
        // The validator wants the listen ports free on every address (the template listens on
        // 0.0.0.0); another test's process can take one in between, so a clash is tried again
        // with new ports.
        let (mut ok, mut output, mut text) = (false, String::new(), String::new());
        for _ in 0..3 {
            let mut cx = block.stored.clone();
            let ports: Vec<(String, u16)> =
                ["pg", "patroni", "pgbackrest", "exporter"].iter().map(|l| (l.to_string(), free_port("0.0.0.0"))).collect();
            cx.set_ports(&ports.iter().map(|(l, p)| (l.as_str(), *p, node.as_str(), *p)).collect::<Vec<_>>());
            let Ok(Rendered::Text(rendered)) = gotemplate::execute(&block.template, &cx) else { panic!("{}", block.name()) };
            text = rendered;
            let file = dir.path().join(format!("{checked}.yml"));
            (ok, output) = validate(&text, &file);
            if ok || !output.contains("is already in use") {
                break;
            }
        }
        assert!(ok, "patroni --validate-config rejects {}:\n{output}\n{text}", block.name());
        drop(consul);
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} patroni.yml checked");
    // The validator does check what the template filled in: no port at all is refused.
    let block = blocks("default", DEFAULT).into_iter().find(|b| b.dest().ends_with("patroni.yml")).unwrap();
    let mut cx = block.stored.clone();
    cx.env.remove("NOMAD_PORT_pg");
    let Ok(Rendered::Text(text)) = gotemplate::execute(&block.template, &cx) else { panic!() };
    let (ok, output) = validate(&text, &dir.path().join("broken.yml"));
    assert!(!ok, "an empty postgresql.listen port passed validation:\n{output}");
}

fn text_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Rewrites the container paths of a rendered file to directories under `root` (only
/// paths: addresses, ports and the rest stay as rendered).
fn relocate(text: &str, root: &Path) -> String {
    let mut out = text.to_owned();
    for (from, to) in
        [("/var/lib/postgresql/data", "data"), ("/var/lib/pgbackrest", "repo"), ("/alloc/", "alloc/"), ("/secrets/", "secrets/")]
    {
        out = out.replace(from, &format!("{}/{to}", root.display()));
    }
    out
}

#[test]
fn pgbouncer_starts_with_each_rendered_pgbouncer_ini_and_routes_to_the_primary() {
    let pgbouncer = require("pgbouncer", "pgbouncer");
    let psql = require("psql", "postgresql-client-15");
    let mut checked = 0;
    for (variant, text) in VARIANTS {
        let blocks = blocks(variant, text);
        let Some(ini) = blocks.iter().find(|b| b.dest().ends_with("pgbouncer.ini")) else { continue };
        let userlist = blocks.iter().find(|b| b.dest().ends_with("userlist.txt") && b.job == ini.job).expect("userlist.txt");
        let dir = postgres_tempdir();
        let root = dir.path();
        for sub in ["alloc/tmp", "alloc/logs", "secrets"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        // The port inside the task is a free one here; nothing else changes.
        let port = free_port("127.0.0.1");
        let mut cx = ini.stored.clone();
        cx.set_ports(&[("pgbouncer", port, "10.0.1.11", 21100)]);
        let Ok(Rendered::Text(rendered_ini)) = gotemplate::execute(&ini.template, &cx) else { panic!("{}", ini.name()) };
        std::fs::write(root.join("secrets/pgbouncer.ini"), relocate(&rendered_ini, root)).unwrap();
        std::fs::write(root.join("secrets/userlist.txt"), relocate(&userlist.render(), root)).unwrap();
        chown_postgres(root);
        let mut bouncer = Guard::spawn(
            "pgbouncer",
            {
                let mut c = as_postgres(&pgbouncer);
                c.arg(root.join("secrets/pgbouncer.ini"));
                c
            },
            root.join("pgbouncer.log"),
        );
        let password =
            ini.stored.variables.get(&format!("nomad/jobs/{}", ini.job)).map(|v| v["pgbouncer_auth_password"].clone()).unwrap_or_else(
                || {
                    ini.stored.vault.iter().find(|(p, _)| p.ends_with(&ini.job)).unwrap().1["data"]["pgbouncer_auth_password"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                },
            );
        let admin = |sql: &str| {
            run(Command::new(&psql)
                .args(["-X", "-At", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", "pgbouncer_auth", "-d", "pgbouncer", "-c", sql])
                .env("PGPASSWORD", &password))
        };
        wait_until("PgBouncer's admin console", Duration::from_secs(20), || {
            bouncer.assert_running();
            admin("SHOW VERSION").status.success()
        });
        let databases = text_of(&admin("SHOW DATABASES").stdout);
        let primary = ini.stored.services.values().flatten().find(|s| s.name.ends_with("-primary") && s.status == "passing").unwrap();
        let app =
            databases.lines().find(|l| l.starts_with("app|")).unwrap_or_else(|| panic!("variant {variant}: no app database:\n{databases}"));
        assert!(
            app.starts_with(&format!("app|{}|{}|app|", primary.address, primary.port)),
            "variant {variant}: {app}\n{}",
            bouncer.log_text()
        );
        bouncer.assert_running();
        checked += 1;
    }
    assert!(checked >= 9, "only {checked} pgbouncer.ini started");
}

#[test]
fn pgbackrest_check_passes_with_each_rendered_member_pgbackrest_conf() {
    let pgbackrest = require("pgbackrest", "pgbackrest");
    // Only volume repos: an S3 repo would need S3. The backup jobs' configs reach members
    // by Consul DNS names (tests/packs.rs runs backup.sh through a member's TLS server).
    // With a repository host the member's config reaches it over TLS: its rendered config,
    // the command its task runs and the TLS files the member presents come along.
    struct RepoHost {
        cluster: String,
        conf: String,
        command: String,
        tls: Vec<(String, String)>,
    }
    let mut confs: Vec<(String, String, String, Option<RepoHost>)> = Vec::new();
    for (variant, text) in VARIANTS.iter().filter(|(v, _)| *v != "s3-repo") {
        let blocks = blocks(variant, text);
        let Some(conf) = blocks.iter().find(|b| b.group == "member-0" && b.task == "patroni" && b.dest().ends_with("pgbackrest.conf"))
        else {
            continue;
        };
        let patroni = blocks.iter().find(|b| b.group == "member-0" && b.dest().ends_with("patroni.yml")).unwrap();
        // The same file in the pgbackrest task.
        let server =
            blocks.iter().find(|b| b.group == "member-0" && b.task == "pgbackrest" && b.dest().ends_with("pgbackrest.conf")).unwrap();
        assert_eq!(conf.render(), server.render(), "variant {variant}: the two tasks render different pgbackrest.conf");
        let repo_host = conf.render().contains("repo1-host=").then(|| {
            let repo = blocks
                .iter()
                .find(|b| b.job.ends_with("-repo") && b.dest().ends_with("pgbackrest.conf"))
                .expect("the repository host's config");
            let job = compile(text).jobs.into_iter().find(|j| j.id() == repo.job).unwrap();
            let task = &job.job.task_groups.as_ref().unwrap()[0]
                .tasks
                .as_ref()
                .unwrap()
                .iter()
                .find(|t| t.name.as_deref() == Some("pgbackrest"))
                .unwrap()
                .clone();
            let args = task.config.as_ref().unwrap()["args"].as_array().unwrap().clone();
            assert_eq!(args[0], "-c", "{args:?}");
            let tls = blocks
                .iter()
                .filter(|b| b.group == "member-0" && b.task == "patroni" && b.dest().starts_with("secrets/tls/"))
                .map(|b| (b.dest().to_owned(), b.render()))
                .collect();
            RepoHost {
                cluster: repo.job.trim_end_matches("-repo").to_owned(),
                conf: repo.render(),
                command: args[1].as_str().unwrap().to_owned(),
                tls,
            }
        });
        if !confs.iter().any(|(_, c, _, _)| *c == conf.render()) {
            confs.push((conf.name(), conf.render(), patroni.render(), repo_host));
        }
    }
    assert!(confs.len() >= 2, "{:?}", confs.iter().map(|c| &c.1).collect::<Vec<_>>());
    assert!(confs.iter().any(|c| c.3.is_some()) && confs.iter().any(|c| c.3.is_none()), "both a repository host and a shared volume");
    for (name, conf, patroni, repo_host) in &confs {
        let dir = postgres_tempdir();
        let root = dir.path();
        for sub in ["alloc/tmp", "alloc/logs", "secrets", "repo", "data"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        // The rendered port (the task's) may be taken on this machine: a free one instead.
        let port = free_port("127.0.0.1");
        let pg_port_line = conf.lines().find(|l| l.starts_with("pg1-port=")).unwrap().to_owned();
        let mut conf = relocate(conf, root).replace(&pg_port_line, &format!("pg1-port={port}"));
        // The repository host: its rendered config and its task's command, on a free port.
        let mut _server = None;
        if let Some(repo) = repo_host {
            let repo_port = free_port("127.0.0.1");
            std::fs::create_dir_all(root.join("secrets/tls")).unwrap();
            std::fs::create_dir_all(root.join("repo-host")).unwrap();
            for (dest, text) in &repo.tls {
                std::fs::write(root.join(dest), text).unwrap();
                std::fs::set_permissions(root.join(dest), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
            }
            // Its own config apart from the member's (both are /secrets/pgbackrest.conf in
            // their tasks); the server certificate is the same set's.
            let repo_conf_file = root.join("repo-host/pgbackrest.conf");
            let tls_port_line = repo.conf.lines().find(|l| l.starts_with("tls-server-port=")).unwrap().to_owned();
            let repo_conf = relocate(&repo.conf, root).replace(&tls_port_line, &format!("tls-server-port={repo_port}"));
            std::fs::write(&repo_conf_file, repo_conf).unwrap();
            std::fs::set_permissions(&repo_conf_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
            let command = relocate(&repo.command, root)
                .replace(&format!("{}/secrets/pgbackrest.conf", root.display()), &repo_conf_file.display().to_string());
            chown_postgres(root);
            _server = Some(Guard::spawn(
                "pgbackrest server",
                {
                    let mut c = as_postgres("sh");
                    c.args(["-c", &command]).env("NOMAD_ALLOC_ID", "alloc-repo-test");
                    c
                },
                root.join("repo-host.log"),
            ));
            let server = _server.as_mut().unwrap();
            wait_until("the repository host's TLS server", Duration::from_secs(20), || {
                server.assert_running();
                std::net::TcpStream::connect(("127.0.0.1", repo_port)).is_ok()
            });
            assert_eq!(
                std::fs::read_to_string(root.join(format!("repo/lock/repo-host-{}", repo.cluster))).unwrap(),
                "alloc-repo-test",
                "{name}: the marker backup.sh checks"
            );
            // The member reaches it at this address (on the test certificate) and port.
            let host_line = conf.lines().find(|l| l.starts_with("repo1-host=")).unwrap().to_owned();
            let port_line = conf.lines().find(|l| l.starts_with("repo1-host-port=")).unwrap().to_owned();
            assert_ne!(port_line, "repo1-host-port=", "{name}: the catalog has a passing repository host");
            conf = conf.replace(&host_line, "repo1-host=127.0.0.1").replace(&port_line, &format!("repo1-host-port={repo_port}"));
        }
        let conf_file = root.join("secrets/pgbackrest.conf");
        std::fs::write(&conf_file, &conf).unwrap();
        std::fs::set_permissions(&conf_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        // archive_command as Patroni sets it from the rendered patroni.yml.
        let archive = patroni.lines().find_map(|l| l.trim().strip_prefix("archive_command: ")).expect("archive_command");
        let archive = relocate(archive.trim_matches('\''), root);
        chown_postgres(root);
        let stanza = conf.lines().find(|l| l.starts_with('[') && !l.starts_with("[global")).unwrap().trim_matches(['[', ']']).to_owned();
        let pg = Postgres::start(
            &root.join("data/pgdata"),
            &root.join("alloc/tmp"),
            port,
            "superuser-password",
            &[("archive_mode", "on".to_owned()), ("archive_command", archive)],
            &[("pg_hba.conf", "local all postgres peer\nhost all all 127.0.0.1/32 scram-sha-256\n".to_owned())],
        );
        let run_pgbackrest = |command: &str| {
            run_ok(
                &format!("pgbackrest {command} with {name}"),
                as_postgres(&pgbackrest).arg(format!("--config={}", conf_file.display())).arg(format!("--stanza={stanza}")).arg(command),
            )
        };
        run_pgbackrest("stanza-create");
        run_pgbackrest("check");
        let info = run_pgbackrest("info");
        assert!(info.contains(&format!("stanza: {stanza}")) && info.contains("cipher: aes-256-cbc"), "{name}:\n{info}");
        // WAL and the stanza are in the one repository (the repository host's, through TLS).
        assert!(root.join(format!("repo/archive/{stanza}/archive.info")).exists(), "{name}: no archive.info in the repository");
        drop(pg);
    }
}
