//! `vagrant/` and `terraform/` must agree with `cli/stack/defaults.rs`: CSI plugin IDs,
//! datacenter, region, node pool, ports, image names, Consul `session_ttl_min`, pinned releases;
//! and the Terraform examples must only pass declared variables to their modules and only read
//! declared outputs. `.tf`, `.hcl` and Nomad jobspec files are parsed with hcl-rs; the agent
//! configurations, which the provisioning scripts write from bash heredocs, are read as text.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use hcl::expr::{Expression, TraversalOperator};
use hcl::template::{Directive, Element};
use hcl::{Block, BlockLabel, Body, Template};
use pgnomad::stack::defaults::*;

// ---------------------------------------------------------------------------------------------
// helpers

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn parse_hcl(rel: &str) -> Body {
    hcl::parse(&read(rel)).unwrap_or_else(|e| panic!("parsing {rel}: {e}"))
}

fn label(b: &Block, i: usize) -> &str {
    match b.labels.get(i) {
        Some(BlockLabel::String(s)) => s.as_str(),
        Some(BlockLabel::Identifier(id)) => id.as_str(),
        None => "",
    }
}

fn blocks<'a>(body: &'a Body, ident: &str) -> impl Iterator<Item = &'a Block> + 'a {
    let ident = ident.to_string();
    body.blocks().filter(move |b| b.identifier.as_str() == ident)
}

/// The one block `ident` (optionally with first label `l0`) in `body`.
fn block<'a>(body: &'a Body, ident: &str, l0: Option<&str>) -> &'a Block {
    let found: Vec<&Block> = blocks(body, ident).filter(|b| l0.is_none_or(|l| label(b, 0) == l)).collect();
    assert_eq!(found.len(), 1, "expected one block {ident} {l0:?}, found {}", found.len());
    found[0]
}

/// Follows a path of block identifiers (each the only one of its name) from `body`.
fn path<'a>(body: &'a Body, idents: &[&str]) -> &'a Body {
    idents.iter().fold(body, |b, ident| &block(b, ident, None).body)
}

fn attr<'a>(body: &'a Body, key: &str) -> &'a Expression {
    body.attributes().find(|a| a.key.as_str() == key).map(|a| &a.expr).unwrap_or_else(|| panic!("attribute {key} not found"))
}

fn string(e: &Expression) -> String {
    match e {
        Expression::String(s) => s.clone(),
        other => panic!("expected a string literal, got {other:?}"),
    }
}

fn number(e: &Expression) -> u64 {
    match e {
        Expression::Number(n) => n.as_u64().expect("a whole number"),
        other => panic!("expected a number literal, got {other:?}"),
    }
}

fn strings(e: &Expression) -> Vec<String> {
    match e {
        Expression::Array(items) => items.iter().map(string).collect(),
        other => panic!("expected an array, got {other:?}"),
    }
}

fn str_attr(body: &Body, key: &str) -> String {
    string(attr(body, key))
}

/// `KEY="value"` or `KEY=value` (first occurrence at the start of a line) in a shell file.
fn shell_var(rel: &str, key: &str) -> String {
    let text = read(rel);
    let prefix = format!("{key}=");
    let line = text.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("{key}= not found in {rel}"));
    let value = line[prefix.len()..].split(" #").next().unwrap().trim();
    value.trim_matches('"').to_string()
}

/// All `.tf` files of one directory (one Terraform module), parsed.
fn tf_module(dir: &Path) -> Vec<(PathBuf, Body)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "tf"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .tf files in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let body = hcl::parse(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", p.display()));
            (p, body)
        })
        .collect()
}

fn tf_blocks<'a>(module: &'a [(PathBuf, Body)], ident: &str) -> Vec<&'a Block> {
    module.iter().flat_map(|(_, b)| blocks(b, ident)).collect()
}

/// Declared variables of a module: name -> default (if any).
fn tf_variables(module: &[(PathBuf, Body)]) -> BTreeMap<String, Option<Expression>> {
    tf_blocks(module, "variable")
        .into_iter()
        .map(|b| {
            let default = b.body.attributes().find(|a| a.key.as_str() == "default").map(|a| a.expr.clone());
            (label(b, 0).to_string(), default)
        })
        .collect()
}

fn tf_outputs(module: &[(PathBuf, Body)]) -> BTreeSet<String> {
    tf_blocks(module, "output").into_iter().map(|b| label(b, 0).to_string()).collect()
}

fn tf_locals(module: &[(PathBuf, Body)]) -> BTreeMap<String, Expression> {
    tf_blocks(module, "locals").into_iter().flat_map(|b| b.body.attributes().map(|a| (a.key.to_string(), a.expr.clone()))).collect()
}

fn variable_default(module: &[(PathBuf, Body)], name: &str) -> Expression {
    tf_variables(module)
        .remove(name)
        .unwrap_or_else(|| panic!("variable {name} not declared"))
        .unwrap_or_else(|| panic!("variable {name} has no default"))
}

/// Every `<root>.<a>.<b>` traversal (e.g. `module.network.vpc_id`; `b` is empty for
/// `var.name`) inside `expr`, including inside string templates and heredocs.
fn collect_refs(expr: &Expression, root: &str, out: &mut Vec<(String, String)>) {
    match expr {
        Expression::Traversal(t) => {
            if let Expression::Variable(v) = &t.expr {
                if v.as_str() == root {
                    let mut attrs = t.operators.iter().map(|op| match op {
                        TraversalOperator::GetAttr(id) => Some(id.to_string()),
                        _ => None,
                    });
                    match (attrs.next(), attrs.next()) {
                        (Some(Some(a)), Some(Some(b))) => out.push((a, b)),
                        (Some(Some(_)), _) if root == "module" => {
                            panic!("module reference without an output name: {expr:?}")
                        }
                        (Some(Some(a)), _) => out.push((a, String::new())),
                        _ => {}
                    }
                }
            }
            collect_refs(&t.expr, root, out);
            for op in &t.operators {
                if let TraversalOperator::Index(i) = op {
                    collect_refs(i, root, out);
                }
            }
        }
        Expression::Array(items) => items.iter().for_each(|e| collect_refs(e, root, out)),
        Expression::Object(obj) => {
            for (k, v) in obj {
                if let hcl::ObjectKey::Expression(k) = k {
                    collect_refs(k, root, out);
                }
                collect_refs(v, root, out);
            }
        }
        Expression::TemplateExpr(t) => {
            let template = Template::from_expr(t).unwrap_or_else(|e| panic!("template {t:?}: {e}"));
            collect_template_refs(&template, root, out);
        }
        Expression::FuncCall(f) => f.args.iter().for_each(|e| collect_refs(e, root, out)),
        Expression::Parenthesis(e) => collect_refs(e, root, out),
        Expression::Conditional(c) => {
            collect_refs(&c.cond_expr, root, out);
            collect_refs(&c.true_expr, root, out);
            collect_refs(&c.false_expr, root, out);
        }
        Expression::Operation(op) => match op.as_ref() {
            hcl::expr::Operation::Unary(u) => collect_refs(&u.expr, root, out),
            hcl::expr::Operation::Binary(b) => {
                collect_refs(&b.lhs_expr, root, out);
                collect_refs(&b.rhs_expr, root, out);
            }
        },
        Expression::ForExpr(f) => {
            collect_refs(&f.collection_expr, root, out);
            if let Some(k) = &f.key_expr {
                collect_refs(k, root, out);
            }
            collect_refs(&f.value_expr, root, out);
            if let Some(c) = &f.cond_expr {
                collect_refs(c, root, out);
            }
        }
        _ => {}
    }
}

fn collect_template_refs(t: &Template, root: &str, out: &mut Vec<(String, String)>) {
    for el in t.elements() {
        match el {
            Element::Literal(_) => {}
            Element::Interpolation(i) => collect_refs(&i.expr, root, out),
            Element::Directive(d) => match d.as_ref() {
                Directive::If(i) => {
                    collect_refs(&i.cond_expr, root, out);
                    collect_template_refs(&i.true_template, root, out);
                    if let Some(f) = &i.false_template {
                        collect_template_refs(f, root, out);
                    }
                }
                Directive::For(f) => {
                    collect_refs(&f.collection_expr, root, out);
                    collect_template_refs(&f.template, root, out);
                }
            },
        }
    }
}

fn body_refs(body: &Body, root: &str, out: &mut Vec<(String, String)>) {
    for a in body.attributes() {
        collect_refs(&a.expr, root, out);
    }
    for b in body.blocks() {
        body_refs(&b.body, root, out);
    }
}

/// Every directory under terraform/ that holds `.tf` files.
fn tf_dirs() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut has_tf = false;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != ".terraform") {
                    walk(&p, out);
                }
            } else if p.extension().is_some_and(|x| x == "tf") {
                has_tf = true;
            }
        }
        if has_tf {
            out.push(dir.to_path_buf());
        }
    }
    let mut out = Vec::new();
    walk(&repo().join("terraform"), &mut out);
    out.sort();
    out
}

/// `module "x"` blocks of a module directory: name -> (resolved source dir, block).
fn module_calls(dir: &Path, module: &[(PathBuf, Body)]) -> BTreeMap<String, (PathBuf, Block)> {
    tf_blocks(module, "module")
        .into_iter()
        .map(|b| {
            let source = str_attr(&b.body, "source");
            assert!(source.starts_with("./") || source.starts_with("../"), "module {} must use a local source, got {source}", label(b, 0));
            let resolved =
                dir.join(&source).canonicalize().unwrap_or_else(|e| panic!("module source {source} from {}: {e}", dir.display()));
            (label(b, 0).to_string(), (resolved, b.clone()))
        })
        .collect()
}

const MODULE_META_ARGS: &[&str] = &["source", "version", "providers", "count", "for_each", "depends_on"];

fn lab_stack() -> Body {
    parse_hcl("vagrant/pgnomad.hcl")
}

fn aws_stack() -> Body {
    parse_hcl("terraform/examples/aws-cluster/pgnomad.hcl")
}

fn defaults_module() -> Vec<(PathBuf, Body)> {
    tf_module(&repo().join("terraform/modules/pgnomad-defaults"))
}

fn cluster_module() -> Vec<(PathBuf, Body)> {
    tf_module(&repo().join("terraform/modules/nomad-cluster"))
}

fn local_u64(locals: &BTreeMap<String, Expression>, name: &str) -> u64 {
    number(locals.get(name).unwrap_or_else(|| panic!("local {name} missing")))
}

fn local_str(locals: &BTreeMap<String, Expression>, name: &str) -> String {
    string(locals.get(name).unwrap_or_else(|| panic!("local {name} missing")))
}

// ---------------------------------------------------------------------------------------------
// CSI plugin IDs

#[test]
fn lab_csi_plugin_job_and_stack_use_the_default_plugin_id() {
    let job = parse_hcl("vagrant/jobs/csi-hostpath.nomad.hcl");
    let job_block = block(&job, "job", None);
    let plugin = path(&job_block.body, &["group", "task", "csi_plugin"]);
    assert_eq!(str_attr(plugin, "id"), CSI_PLUGIN_ID, "csi_plugin.id of the hostpath job");
    assert_eq!(str_attr(&job_block.body, "type"), "system", "the hostpath plugin runs on every node");
    assert_eq!(strings(attr(&job_block.body, "datacenters")), vec![DATACENTER.to_string()]);
    assert_eq!(str_attr(&job_block.body, "node_pool"), NODE_POOL);

    let stack = lab_stack();
    let storage = &block(&stack, "storage", None).body;
    assert_eq!(str_attr(storage, "plugin_id"), CSI_PLUGIN_ID, "vagrant/pgnomad.hcl storage.plugin_id");
    assert_eq!(shell_var("vagrant/scripts/lib.sh", "CSI_PLUGIN_ID"), CSI_PLUGIN_ID);
}

#[test]
fn lab_csi_image_is_the_pinned_one() {
    let job = parse_hcl("vagrant/jobs/csi-hostpath.nomad.hcl");
    let config = path(&block(&job, "job", None).body, &["group", "task", "config"]);
    assert_eq!(str_attr(config, "image"), shell_var("vagrant/scripts/versions.env", "HOSTPATH_CSI_IMAGE"));
}

#[test]
fn aws_csi_plugin_id_is_the_default_everywhere() {
    let cluster = cluster_module();
    assert_eq!(string(&variable_default(&cluster, "ebs_csi_plugin_id")), AWS_EBS_CSI_PLUGIN_ID);
    let stack = aws_stack();
    let storage = &block(&stack, "storage", None).body;
    assert_eq!(str_attr(storage, "plugin_id"), AWS_EBS_CSI_PLUGIN_ID, "aws-cluster pgnomad.hcl");
    assert_eq!(local_str(&tf_locals(&defaults_module()), "aws_ebs_csi_plugin_id"), AWS_EBS_CSI_PLUGIN_ID);
    assert_eq!(local_str(&tf_locals(&defaults_module()), "csi_plugin_id"), CSI_PLUGIN_ID);
    // The EBS jobspec template takes its plugin ID from the variable.
    let tpl = read("terraform/modules/nomad-cluster/templates/aws-ebs-csi.nomad.hcl.tftpl");
    assert!(tpl.contains("id        = \"${plugin_id}\""), "EBS CSI jobspec must use the plugin_id variable");
    let mut refs = Vec::new();
    cluster.iter().for_each(|(_, b)| body_refs(b, "var", &mut refs));
    assert!(refs.iter().any(|(v, _)| v == "ebs_csi_plugin_id"), "nomad-cluster must render the jobs with var.ebs_csi_plugin_id");
}

// ---------------------------------------------------------------------------------------------
// datacenter, region, node pool

#[test]
fn lab_agents_use_the_default_datacenter_region_and_node_pool() {
    let lib = "vagrant/scripts/lib.sh";
    assert_eq!(shell_var(lib, "DATACENTER"), DATACENTER);
    assert_eq!(shell_var(lib, "REGION"), REGION);
    assert_eq!(shell_var(lib, "NODE_POOL"), NODE_POOL);
    let consul = read("vagrant/scripts/consul.sh");
    assert!(consul.contains("datacenter       = \"${DATACENTER}\""), "consul.hcl datacenter");
    let nomad = read("vagrant/scripts/nomad.sh");
    assert!(nomad.contains("datacenter = \"${DATACENTER}\""), "nomad.hcl datacenter");
    assert!(nomad.contains("region     = \"${REGION}\""), "nomad.hcl region");
    assert!(nomad.contains("node_pool = \"${NODE_POOL}\""), "nomad.hcl client node_pool");

    let stack = lab_stack();
    let cluster = block(&stack, "cluster", None);
    assert_eq!(strings(attr(&cluster.body, "datacenters")), vec![DATACENTER.to_string()]);
}

#[test]
fn terraform_uses_the_default_datacenter_region_and_node_pool() {
    let cluster = cluster_module();
    assert_eq!(string(&variable_default(&cluster, "datacenter")), DATACENTER);
    assert_eq!(string(&variable_default(&cluster, "nomad_region")), REGION);
    assert_eq!(string(&variable_default(&cluster, "node_pool")), NODE_POOL);
    let locals = tf_locals(&defaults_module());
    assert_eq!(local_str(&locals, "datacenter"), DATACENTER);
    assert_eq!(local_str(&locals, "region"), REGION);
    assert_eq!(local_str(&locals, "namespace"), NAMESPACE);
    assert_eq!(local_str(&locals, "node_pool"), NODE_POOL);
    let user_data = read("terraform/modules/nomad-cluster/templates/user-data.sh.tftpl");
    for needle in ["datacenter     = \"${datacenter}\"", "region     = \"${nomad_region}\"", "node_pool = \"${node_pool}\""] {
        assert!(user_data.contains(needle), "user-data must contain {needle}");
    }
    let stack = aws_stack();
    let stack = block(&stack, "cluster", None);
    assert_eq!(strings(attr(&stack.body, "datacenters")), vec![DATACENTER.to_string()]);
}

// ---------------------------------------------------------------------------------------------
// ports

#[test]
fn ports_agree_with_the_defaults_module_and_the_agent_configs() {
    let locals = tf_locals(&defaults_module());
    let ports = match locals.get("ports").expect("local ports") {
        Expression::Object(o) => o
            .iter()
            .map(|(k, v)| {
                let key = match k {
                    hcl::ObjectKey::Identifier(id) => id.to_string(),
                    other => panic!("unexpected key {other:?}"),
                };
                (key, number(v))
            })
            .collect::<BTreeMap<_, _>>(),
        other => panic!("ports must be an object, got {other:?}"),
    };
    let expected = BTreeMap::from([
        ("postgres".to_string(), u64::from(POSTGRES_PORT)),
        ("patroni".to_string(), u64::from(PATRONI_PORT)),
        ("pgbouncer".to_string(), u64::from(PGBOUNCER_PORT)),
        ("pgadmin".to_string(), u64::from(PGADMIN_PORT)),
        ("exporter".to_string(), u64::from(EXPORTER_PORT)),
        ("pgbackrest_tls".to_string(), u64::from(PGBACKREST_TLS_PORT)),
        ("consul_http".to_string(), u64::from(CONSUL_HTTP_PORT)),
    ]);
    assert_eq!(ports, expected, "terraform/modules/pgnomad-defaults ports");

    // The lab's Consul agents serve HTTP on the port Patroni is given.
    assert_eq!(shell_var("vagrant/scripts/lib.sh", "CONSUL_HTTP_PORT"), CONSUL_HTTP_PORT.to_string());
    assert!(read("vagrant/scripts/consul.sh").contains("http = ${CONSUL_HTTP_PORT}"));
    assert!(read("vagrant/scripts/nomad.sh").contains("address = \"127.0.0.1:${CONSUL_HTTP_PORT}\""));
    let user_data = read("terraform/modules/nomad-cluster/templates/user-data.sh.tftpl");
    assert!(user_data.contains(&format!("http  = {CONSUL_HTTP_PORT}")), "user-data Consul http port");
}

// ---------------------------------------------------------------------------------------------
// images

#[test]
fn image_names_and_build_context_agree() {
    let lib = "vagrant/scripts/lib.sh";
    assert_eq!(shell_var(lib, "PG_MAJOR"), POSTGRES_VERSION.to_string());
    assert_eq!(shell_var(lib, "POSTGRES_IMAGE"), format!("{POSTGRES_IMAGE_REPO}:${{PG_MAJOR}}"));
    let image_sh = read("vagrant/scripts/image.sh");
    assert!(image_sh.contains("context=\"${REPO_DIR}/packs/image\""), "image.sh builds from packs/image/");
    assert!(image_sh.contains("-t \"${POSTGRES_IMAGE}\" -f \"${context}/Dockerfile\""), "image.sh tags POSTGRES_IMAGE from the Dockerfile");
    assert!(read("vagrant/Vagrantfile").contains("steps = %w[install consul nomad dns image]"), "every node builds the image");

    let locals = tf_locals(&defaults_module());
    assert_eq!(local_str(&locals, "postgres_image_repo"), POSTGRES_IMAGE_REPO);
    assert_eq!(local_str(&locals, "pgadmin_image"), PGADMIN_IMAGE);
    assert_eq!(number(&variable_default(&defaults_module(), "postgres_version")), u64::from(POSTGRES_VERSION));

    for stack in [lab_stack(), aws_stack()] {
        let pg = &block(&stack, "postgres", None).body;
        assert_eq!(number(attr(pg, "version")), u64::from(POSTGRES_VERSION));
    }
}

// ---------------------------------------------------------------------------------------------
// Consul session_ttl_min and Patroni's ttl

#[test]
fn consul_session_ttl_min_is_lowered_everywhere() {
    let lab = format!("{LAB_CONSUL_SESSION_TTL_MIN_SECS}s");
    let consul = read("vagrant/scripts/consul.sh");
    assert!(consul.contains(&format!("session_ttl_min = \"{lab}\"")), "vagrant Consul servers: session_ttl_min = {lab}");
    assert!(consul.contains("ttl/2"), "the lab's consul.hcl explains why (Patroni's ttl/2)");

    assert_eq!(string(&variable_default(&cluster_module(), "consul_session_ttl_min")), lab);
    let user_data = read("terraform/modules/nomad-cluster/templates/user-data.sh.tftpl");
    assert!(user_data.contains("session_ttl_min = \"${consul_session_ttl_min}\""), "user-data writes session_ttl_min");

    let locals = tf_locals(&defaults_module());
    assert_eq!(local_u64(&locals, "consul_session_ttl_min_lab_secs"), u64::from(LAB_CONSUL_SESSION_TTL_MIN_SECS));
    assert_eq!(local_u64(&locals, "consul_session_ttl_min_default_secs"), u64::from(CONSUL_SESSION_TTL_MIN_SECS));
}

#[test]
fn stack_files_patroni_timing_is_accepted_by_the_lowered_consul() {
    for (name, stack) in [("vagrant/pgnomad.hcl", lab_stack()), ("aws-cluster/pgnomad.hcl", aws_stack())] {
        let p = &block(&stack, "patroni", None).body;
        assert_eq!(str_attr(p, "dcs"), "consul", "{name}");
        assert_eq!(str_attr(p, "consul_session_ttl_min"), format!("{LAB_CONSUL_SESSION_TTL_MIN_SECS}s"), "{name}");
        let (ttl, loop_wait, retry) = (number(attr(p, "ttl")), number(attr(p, "loop_wait")), number(attr(p, "retry_timeout")));
        // Patroni sends ttl/2 as the session TTL: it must reach the lowered minimum ...
        assert!(ttl / 2 >= u64::from(LAB_CONSUL_SESSION_TTL_MIN_SECS), "{name}: ttl {ttl} too small for session_ttl_min");
        // ... and the lab only needs the lowered minimum because ttl is below Consul's default.
        assert!(ttl / 2 < u64::from(CONSUL_SESSION_TTL_MIN_SECS), "{name}: ttl {ttl} would not need session_ttl_min");
        assert!(loop_wait + 2 * retry <= ttl, "{name}: Patroni's loop_wait + 2*retry_timeout <= ttl");
    }
}

// ---------------------------------------------------------------------------------------------
// pinned releases

#[test]
fn pinned_nomad_and_consul_releases_agree() {
    let env = "vagrant/scripts/versions.env";
    let cluster = cluster_module();
    let locals = tf_locals(&defaults_module());
    for (tool, version_key, sha_key) in [("nomad", "NOMAD_VERSION", "NOMAD_SHA256"), ("consul", "CONSUL_VERSION", "CONSUL_SHA256")] {
        let version = shell_var(env, version_key);
        let sha = shell_var(env, sha_key);
        assert!(sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{sha_key} must be a SHA256");
        assert_eq!(string(&variable_default(&cluster, &format!("{tool}_version"))), version, "nomad-cluster {tool}_version");
        assert_eq!(string(&variable_default(&cluster, &format!("{tool}_sha256"))), sha, "nomad-cluster {tool}_sha256");
        assert_eq!(local_str(&locals, &format!("{tool}_version")), version, "pgnomad-defaults {tool}_version");
        assert_eq!(local_str(&locals, &format!("{tool}_sha256")), sha, "pgnomad-defaults {tool}_sha256");
    }
    let minio_sha = shell_var(env, "MINIO_SHA256");
    assert_eq!(minio_sha.len(), 64, "MINIO_SHA256");
    // The installers verify what they download.
    assert!(read("vagrant/scripts/install.sh").contains("sha256sum --check --strict"));
    assert!(read("vagrant/scripts/minio.sh").contains("sha256sum --check --strict"));
    assert!(read("terraform/modules/nomad-cluster/templates/user-data.sh.tftpl").contains("sha256sum --check --strict"));
}

// ---------------------------------------------------------------------------------------------
// module wiring

#[test]
fn module_arguments_are_declared_variables_and_required_ones_are_given() {
    let mut calls = 0;
    for dir in tf_dirs() {
        let module = tf_module(&dir);
        for (name, (source, call)) in module_calls(&dir, &module) {
            calls += 1;
            let vars = tf_variables(&tf_module(&source));
            let given: BTreeSet<String> = call.body.attributes().map(|a| a.key.to_string()).collect();
            for arg in &given {
                if MODULE_META_ARGS.contains(&arg.as_str()) {
                    continue;
                }
                assert!(
                    vars.contains_key(arg),
                    "{}: module \"{name}\" passes {arg}, which {} does not declare",
                    dir.display(),
                    source.display()
                );
            }
            for (var, default) in &vars {
                if default.is_none() {
                    assert!(given.contains(var), "{}: module \"{name}\" must set required variable {var}", dir.display());
                }
            }
        }
    }
    assert!(calls >= 3, "expected the examples to call the modules, found {calls} module blocks");
}

#[test]
fn module_output_references_are_declared_outputs() {
    let mut refs_checked = 0;
    for dir in tf_dirs() {
        let module = tf_module(&dir);
        let calls = module_calls(&dir, &module);
        let mut refs = Vec::new();
        module.iter().for_each(|(_, b)| body_refs(b, "module", &mut refs));
        for (name, output) in refs {
            let (source, _) = calls.get(&name).unwrap_or_else(|| panic!("{}: module.{name} is referenced but not declared", dir.display()));
            let outputs = tf_outputs(&tf_module(source));
            assert!(outputs.contains(&output), "{}: module.{name}.{output} is not an output of {}", dir.display(), source.display());
            refs_checked += 1;
        }
    }
    assert!(refs_checked >= 10, "expected module output references in the examples, found {refs_checked}");
}

#[test]
fn variable_references_are_declared_in_every_terraform_module() {
    for dir in tf_dirs() {
        let module = tf_module(&dir);
        let vars = tf_variables(&module);
        let mut refs = Vec::new();
        module.iter().for_each(|(_, b)| body_refs(b, "var", &mut refs));
        for (name, _) in refs {
            assert!(vars.contains_key(&name), "{}: var.{name} is not declared", dir.display());
        }
    }
}

#[test]
fn aws_example_writes_the_environment_pgnomad_reads() {
    let dir = repo().join("terraform/examples/aws-cluster");
    let module = tf_module(&dir);
    let env_file = tf_blocks(&module, "resource")
        .into_iter()
        .find(|b| label(b, 0) == "local_file" && label(b, 1) == "pgnomad_env")
        .expect("resource local_file.pgnomad_env");
    let content = match attr(&env_file.body, "content") {
        Expression::TemplateExpr(t) => t.to_string(),
        other => panic!("content must be a template, got {other:?}"),
    };
    for key in ["NOMAD_ADDR=${module.cluster.nomad_addr}", "NOMAD_CACERT=", "CONSUL_HTTP_ADDR=${module.cluster.consul_http_addr}"] {
        assert!(content.contains(key), "pgnomad.env must set {key}");
    }
    let outputs = tf_outputs(&module);
    for o in ["nomad_addr", "ca_cert_file", "nomad_token_ssm_parameter", "consul_http_addr"] {
        assert!(outputs.contains(o), "aws-cluster must output {o}");
    }
}

#[test]
fn nomad_provider_example_unwraps_pgnomads_job_json() {
    let module = tf_module(&repo().join("terraform/examples/nomad-provider"));
    let job = tf_blocks(&module, "resource").into_iter().find(|b| label(b, 0) == "nomad_job").expect("a nomad_job resource");
    assert!(matches!(attr(&job.body, "json"), Expression::Bool(true)), "nomad_job json = true");
    // jobspec = jsonencode(jsondecode(file(...)).Job)
    let Expression::FuncCall(encode) = attr(&job.body, "jobspec") else { panic!("jobspec must call jsonencode") };
    assert_eq!(encode.name.name.as_str(), "jsonencode");
    let Expression::Traversal(t) = &encode.args[0] else { panic!("jsonencode(<jsondecode(...)>.Job)") };
    assert!(
        matches!(&t.operators[..], [TraversalOperator::GetAttr(id)] if id.as_str() == "Job"),
        "must take .Job of pgnomad's {{\"Job\": ...}}"
    );
    let Expression::FuncCall(decode) = &t.expr else { panic!("jsondecode(file(...))") };
    assert_eq!(decode.name.name.as_str(), "jsondecode");
    let Expression::FuncCall(file) = &decode.args[0] else { panic!("file(...)") };
    assert_eq!(file.name.name.as_str(), "file");
    let Expression::TemplateExpr(p) = &file.args[0] else { panic!("a file path template") };
    assert!(p.to_string().ends_with("/${var.cluster_name}-${each.key}.json"), "reads rendered/jobs/<cluster>-<component>.json, got {p}");
}

#[test]
fn lab_stack_backup_repo_points_at_the_lab_minio() {
    let stack = lab_stack();
    let repo_block = path(&stack, &["backup", "repo"]);
    assert_eq!(str_attr(repo_block, "type"), "s3");
    assert_eq!(str_attr(repo_block, "uri_style"), "path");
    let bucket = shell_var("vagrant/scripts/lib.sh", "MINIO_BUCKET");
    assert_eq!(str_attr(repo_block, "bucket"), bucket);
    let port = shell_var("vagrant/scripts/lib.sh", "MINIO_PORT");
    let vagrantfile = read("vagrant/Vagrantfile");
    // MINIO_NODE's address from the NODES table.
    let minio_node = vagrantfile
        .lines()
        .find_map(|l| l.strip_prefix("MINIO_NODE = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("MINIO_NODE in the Vagrantfile");
    let ip = vagrantfile
        .lines()
        .find(|l| l.contains(&format!("name: \"{minio_node}\"")))
        .and_then(|l| l.split("ip: \"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .expect("the MinIO node's ip in NODES");
    // pgBackRest reaches S3 over HTTPS only: host:port, no scheme.
    assert_eq!(str_attr(repo_block, "endpoint"), format!("{ip}:{port}"));
    assert!(read("vagrant/scripts/minio.sh").contains("--certs-dir"), "MinIO must serve TLS");
}

#[test]
fn lab_and_terraform_stack_files_pass_pgnomads_own_checks() {
    for path in ["vagrant/pgnomad.hcl", "terraform/examples/aws-cluster/pgnomad.hcl"] {
        let source = pgnomad::stack::Source::new(path, read(path));
        match pgnomad::stack::load(&source) {
            Ok(checked) => assert!(checked.warnings.is_empty(), "{path}: {:?}", checked.warnings),
            Err(diagnostics) => panic!("{}", diagnostics.iter().map(|d| source.render(d)).collect::<String>()),
        }
    }
}

#[test]
fn secrets_and_state_are_gitignored() {
    let ignore = read(".gitignore");
    for entry in ["vagrant/.vagrant/", "vagrant/.secrets/", ".terraform/", "*.tfstate"] {
        assert!(ignore.lines().any(|l| l.trim() == entry), ".gitignore must list {entry}");
    }
}

// ---------------------------------------------------------------------------------------------
// Consul ACLs: what the lab and Terraform grant, against what the rendered jobs need

/// `resource "segment" { policy = "…" }` rules of Consul's ACL language (bare `acl = "write"`
/// style rules are not segment rules and are left out).
fn consul_rules(text: &str) -> Vec<(String, String, String)> {
    let mut rules = Vec::new();
    let mut rest = text;
    // Each rule: an identifier, a quoted segment, then `{ policy = "…" }`.
    while let Some(open) = rest.find('{') {
        let close = open + rest[open..].find('}').expect("a rule's block closes");
        let head: Vec<&str> = rest[..open].trim().rsplitn(2, char::is_whitespace).collect();
        let inner = &rest[open + 1..close];
        if let ([segment, resource], Some(policy)) = (head.as_slice(), inner.split('"').nth(1)) {
            if segment.starts_with('"') && inner.trim_start().starts_with("policy") {
                let resource = resource.rsplit(char::is_whitespace).next().unwrap_or(resource);
                rules.push((resource.to_owned(), segment.trim_matches('"').to_owned(), policy.to_owned()));
            }
        }
        rest = &rest[close + 1..];
    }
    rules
}

/// The policy a set of rules gives `resource` `segment`, as Consul decides it: an exact rule
/// first, else the longest matching prefix rule.
fn consul_grant(rules: &[(String, String, String)], resource: &str, segment: &str) -> Option<String> {
    let base = resource.trim_end_matches("_prefix");
    if let Some((_, _, policy)) = rules.iter().find(|(r, s, _)| r == base && s == segment) {
        return Some(policy.clone());
    }
    let prefix = format!("{base}_prefix");
    rules
        .iter()
        .filter(|(r, s, _)| *r == prefix && segment.starts_with(s.as_str()))
        .max_by_key(|(_, s, _)| s.len())
        .map(|(_, _, p)| p.clone())
}

fn policy_rank(policy: &str) -> u8 {
    match policy {
        "read" => 1,
        "write" => 2,
        _ => 0, // deny, or anything unknown
    }
}

/// The rules a provisioning script gives the Consul policy `name` (`policy NAME '…'` or the
/// lab's `consul_policy NAME '…'`).
fn provisioned_policy(rel: &str, name: &str) -> String {
    let text = read(rel);
    let start = [format!("consul_policy {name} '"), format!("policy {name} '")]
        .iter()
        .find_map(|head| text.find(head.as_str()).map(|at| at + head.len()))
        .unwrap_or_else(|| panic!("{rel} creates no Consul policy {name}"));
    text[start..start + text[start..].find('\'').expect("the rules' quote closes")].to_owned()
}

fn compiled(path: &str) -> pgnomad::compile::Artifacts {
    let source = pgnomad::stack::Source::new(path, read(path));
    let checked =
        pgnomad::stack::load(&source).unwrap_or_else(|d| panic!("{path}: {}", d.iter().map(|d| source.render(d)).collect::<String>()));
    pgnomad::compile::compile(&checked.stack, &pgnomad::config::Packs::default()).expect("compiles")
}

const LAB_BOOTSTRAP: &str = "vagrant/scripts/bootstrap.sh";
const TERRAFORM_BOOTSTRAP: &str = "terraform/modules/nomad-cluster/templates/user-data.sh.tftpl";

#[test]
fn the_patroni_token_the_lab_and_terraform_create_grants_what_patroni_needs() {
    for (bootstrap, stack) in [(LAB_BOOTSTRAP, "vagrant/pgnomad.hcl"), (TERRAFORM_BOOTSTRAP, "terraform/examples/aws-cluster/pgnomad.hcl")]
    {
        let artifacts = compiled(stack);
        let needed = artifacts
            .acl_policies
            .iter()
            .find(|p| p.system == pgnomad::compile::AclSystem::Consul && p.name.ends_with("-patroni"))
            .unwrap_or_else(|| panic!("{stack} uses Consul as the DCS, so pgnomad renders a Patroni policy"));
        let granted = consul_rules(&provisioned_policy(bootstrap, "pgnomad-patroni"));
        let needed_rules = consul_rules(&needed.rules);
        // What Patroni's consul.py does: KV under service/<scope>/, sessions for the leader
        // lock, and GET /v1/agent/self when Consul refuses its session TTL (adjust_ttl).
        let scope = needed.name.trim_end_matches("-patroni");
        for rule in [
            ("key_prefix", format!("service/{scope}/"), "write"),
            ("session_prefix", String::new(), "write"),
            ("agent_prefix", String::new(), "read"),
        ] {
            assert!(
                needed_rules.iter().any(|(r, s, p)| r == rule.0 && *s == rule.1 && p == rule.2),
                "the compiled Patroni policy lacks {rule:?}: {}",
                needed.rules
            );
        }
        for (resource, segment, policy) in needed_rules {
            let grant = consul_grant(&granted, &resource, &segment);
            assert!(
                grant.as_deref().map(policy_rank).unwrap_or(0) >= policy_rank(&policy),
                "{bootstrap}: pgnomad-patroni gives {resource} \"{segment}\" {grant:?}, Patroni needs {policy}"
            );
        }
        // And a token of that policy exists for `PGNOMAD_PATRONI_CONSUL_TOKEN`.
        let text = read(bootstrap);
        assert!(
            text.lines().any(|l| l.trim_start().starts_with("token ") || l.trim_start().starts_with("consul_token "))
                && text.contains("pgnomad Patroni"),
            "{bootstrap} creates a Patroni token"
        );
    }
    let module = cluster_module();
    assert!(
        tf_outputs(&module).contains("patroni_consul_token_ssm_parameter"),
        "the Terraform module outputs the Patroni token's parameter"
    );
    assert!(
        read("terraform/examples/aws-cluster/README.md").contains("PGNOMAD_PATRONI_CONSUL_TOKEN"),
        "the AWS example says how Patroni's token reaches pgnomad run"
    );
}

#[test]
fn consul_rule_matching_is_consuls_longest_prefix() {
    let rules =
        consul_rules(r#"key_prefix "" { policy = "read" } key_prefix "service/" { policy = "write" } key "service/x" { policy = "deny" }"#);
    assert_eq!(consul_grant(&rules, "key_prefix", "service/lab/").as_deref(), Some("write"));
    assert_eq!(consul_grant(&rules, "key_prefix", "other/").as_deref(), Some("read"));
    assert_eq!(consul_grant(&rules, "key", "service/x").as_deref(), Some("deny"));
    assert_eq!(consul_grant(&rules, "session_prefix", ""), None);
}

/// Whether a template's actions call one of consul-template's Consul functions.
fn template_queries_consul(text: &str) -> bool {
    const CONSUL_FUNCTIONS: [&str; 9] = ["service", "services", "key", "keyExists", "keyOrDefault", "ls", "tree", "node", "nodes"];
    text.split("{{").skip(1).filter_map(|a| a.split("}}").next()).any(|action| {
        action
            .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == '-' || c == '|')
            .any(|word| CONSUL_FUNCTIONS.contains(&word))
    })
}

/// Nomad 1.10 gives tasks and services Consul tokens only through workload identities: the
/// servers sign them for Consul's audience, and `nomad setup consul` creates the
/// `nomad-workloads` auth method that accepts that audience, with binding rules for services
/// and a read-only role for tasks (services and keys), which is what the templates use.
#[test]
fn workload_identities_for_consul_are_configured_as_the_rendered_jobs_expect() {
    let agent_configs = [read("vagrant/scripts/nomad.sh"), read(TERRAFORM_BOOTSTRAP)];
    for (i, config) in agent_configs.iter().enumerate() {
        for block in ["service_identity", "task_identity"] {
            let at = config.find(&format!("{block} {{")).unwrap_or_else(|| panic!("agent config {i} has no consul.{block}"));
            let body = &config[at..at + config[at..].find('}').unwrap()];
            assert!(
                body.contains(r#"aud = ["consul.io"]"#),
                "agent config {i}: {block} must be signed for consul.io (what nomad setup consul binds)"
            );
        }
    }
    for bootstrap in [LAB_BOOTSTRAP, TERRAFORM_BOOTSTRAP] {
        let text = read(bootstrap);
        assert!(
            text.contains("auth-method read -name nomad-workloads") && text.contains("nomad setup consul -y"),
            "{bootstrap} sets up Consul's JWT auth method"
        );
    }
    for stack in ["vagrant/pgnomad.hcl", "terraform/examples/aws-cluster/pgnomad.hcl"] {
        let artifacts = compiled(stack);
        let mut querying_tasks = 0;
        for job in &artifacts.jobs {
            let body: serde_json::Value = serde_json::from_str(&pgnomad::render::job_register_json(&job.job)).unwrap();
            for group in body["Job"]["TaskGroups"].as_array().unwrap() {
                for task in group["Tasks"].as_array().unwrap() {
                    let templates = task["Templates"].as_array().map(|t| t.as_slice()).unwrap_or_default();
                    let queries_consul = templates.iter().any(|t| template_queries_consul(t["EmbeddedTmpl"].as_str().unwrap_or("")));
                    let consul_block = task.get("Consul").filter(|c| !c.is_null()).or(group.get("Consul").filter(|c| !c.is_null()));
                    if queries_consul {
                        querying_tasks += 1;
                        let block = consul_block
                            .unwrap_or_else(|| panic!("{stack}: {} task {} queries Consul without a consul block", job.id(), task["Name"]));
                        // The default cluster is the one the agents configure; another would need its own identities.
                        let cluster = block.get("Cluster").and_then(|c| c.as_str()).unwrap_or("default");
                        assert!(cluster == "default" || cluster.is_empty(), "{}: consul cluster {cluster} is not configured", job.id());
                    }
                    for identity in task["Identities"].as_array().map(|i| i.as_slice()).unwrap_or_default() {
                        if identity["Name"].as_str().is_some_and(|n| n.starts_with("consul_")) {
                            assert_eq!(
                                identity["Audience"],
                                serde_json::json!(["consul.io"]),
                                "{}: a Consul identity must be for consul.io",
                                job.id()
                            );
                        }
                    }
                }
            }
        }
        // PgBouncer finds the primary through Consul: the check above has something to check.
        assert!(querying_tasks > 0, "{stack}: no template queries Consul");
    }
}
