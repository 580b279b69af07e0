//! Config files of the stack's programs (patroni.yml, pgbouncer.ini, pgbackrest.conf, …)
//! rendered from pack templates.
//!
//! A pack template holds *holes* for what is only known at run time: addresses, ports,
//! paths, secrets, the DCS section, the current primary. A `Runtime` fills them: for Nomad
//! with template expressions that Nomad's `template` block resolves on the client, for
//! `pgnomad dev` with concrete values. Everything else in the file is the same bytes for
//! both, so the real-process tests of `dev` exercise what goes into the Nomad jobs.
//!
//! Pack templates use minijinja with `[[ … ]]` for values, `[% … %]` for statements and
//! `[# … #]` for comments, so that `{{ … }}` stays free for Nomad's own templates.

pub mod facts;
pub mod local;
pub mod runtime;

use std::collections::BTreeMap;

use minijinja::{Environment, Value};

pub use facts::{Facts, MemberFacts};
pub use local::{LocalDcs, LocalRuntime, MemberPorts};
pub use runtime::{Holes, MemberAddress, NomadRuntime, Runtime};

/// Every pack file, by its path under `packs/`, with the built-in content.
pub const BUILTIN: &[(&str, &str)] = &[
    ("postgres/patroni.yml", include_str!("../../packs/postgres/patroni.yml")),
    ("postgres/bootstrap.sql", include_str!("../../packs/postgres/bootstrap.sql")),
    ("postgres/on-role-change.sh", include_str!("../../packs/postgres/on-role-change.sh")),
    ("postgres/pgbackrest.conf", include_str!("../../packs/postgres/pgbackrest.conf")),
    ("postgres/restore-in-place.sh", include_str!("../../packs/postgres/restore-in-place.sh")),
    ("pgbouncer/pgbouncer.ini", include_str!("../../packs/pgbouncer/pgbouncer.ini")),
    ("pgbouncer/userlist.txt", include_str!("../../packs/pgbouncer/userlist.txt")),
    ("pgbouncer/pause-watchdog.sh", include_str!("../../packs/pgbouncer/pause-watchdog.sh")),
    ("pgadmin/servers.json", include_str!("../../packs/pgadmin/servers.json")),
    ("backup/pgbackrest.conf", include_str!("../../packs/backup/pgbackrest.conf")),
    ("backup/backup.sh", include_str!("../../packs/backup/backup.sh")),
    ("backup/repo.conf", include_str!("../../packs/backup/repo.conf")),
    ("backup/restore.conf", include_str!("../../packs/backup/restore.conf")),
    ("image/Dockerfile", include_str!("../../packs/image/Dockerfile")),
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: not a pack file pgnomad knows (known: {known})")]
    UnknownPackFile { path: String, known: String },
    #[error("pack file {path}: {message}")]
    Template { path: String, message: String },
    /// The stack asks for something only `pgnomad dev` does so far.
    #[error("{0}")]
    DevOnly(String),
}

/// The pack templates in use: the built-in ones, some perhaps replaced with `--packs DIR`.
#[derive(Debug, Clone)]
pub struct Packs {
    files: BTreeMap<&'static str, String>,
}

impl Default for Packs {
    fn default() -> Self {
        Packs { files: BUILTIN.iter().map(|(path, text)| (*path, (*text).to_owned())).collect() }
    }
}

impl Packs {
    /// Replaces built-in files with the user's. `files` maps paths relative to the packs
    /// directory to their text; the command layer reads them (this module does no I/O).
    pub fn with_overrides(mut self, files: BTreeMap<String, String>) -> Result<Self, ConfigError> {
        for (path, text) in files {
            let Some((known, _)) = BUILTIN.iter().find(|(p, _)| *p == path) else {
                let known = BUILTIN.iter().map(|(p, _)| *p).collect::<Vec<_>>().join(", ");
                return Err(ConfigError::UnknownPackFile { path, known });
            };
            self.files.insert(known, text);
        }
        Ok(self)
    }

    pub fn source(&self, path: &str) -> Option<&str> {
        self.files.get(path).map(String::as_str)
    }

    /// Renders one pack file with the stack's facts and the runtime's holes. To render many
    /// files of one stack, make a `renderer` once: it compiles each template only once.
    pub fn render(
        &self,
        path: &str,
        facts: &Facts,
        member: Option<&MemberFacts>,
        holes: &Holes,
        runtime: &dyn Runtime,
    ) -> Result<String, ConfigError> {
        self.renderer(facts, runtime).render(path, member, holes)
    }

    /// A renderer for one stack and runtime.
    pub fn renderer(&self, facts: &Facts, runtime: &dyn Runtime) -> Renderer {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .block_delimiters("[%", "%]")
                .variable_delimiters("[[", "]]")
                .comment_delimiters("[#", "#]")
                .build()
                .expect("pack delimiters are valid"),
        );
        env.set_keep_trailing_newline(true);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.add_filter("yaml", yaml_string);
        env.add_filter("sql", sql_literal);
        // Literal values from the stack are escaped for the target's template engine, so a
        // `{{` in a parameter reaches Postgres as text; holes are marked safe and pass as is.
        let escape = runtime.literal_escaper();
        env.set_formatter(move |out, _state, value| {
            if value.is_safe() || value.is_undefined() {
                write!(out, "{}", value.as_str().map_or_else(|| value.to_string(), str::to_owned)).map_err(minijinja::Error::from)
            } else {
                let text = value.as_str().map_or_else(|| value.to_string(), str::to_owned);
                write!(out, "{}", escape(&text)).map_err(minijinja::Error::from)
            }
        });
        // Templates are compiled on first use and kept.
        let files: BTreeMap<String, String> = self.files.iter().map(|(path, text)| ((*path).to_owned(), text.clone())).collect();
        env.set_loader(move |name| Ok(files.get(name).cloned()));
        Renderer { env, stack: Value::from_serialize(facts) }
    }
}

/// Renders the pack files of one stack for one runtime.
pub struct Renderer {
    env: Environment<'static>,
    stack: Value,
}

impl Renderer {
    pub fn render(&self, path: &str, member: Option<&MemberFacts>, holes: &Holes) -> Result<String, ConfigError> {
        // Not `{error:#}`: minijinja's debug info lists the referenced variables with their
        // values, and the holes hold secrets (`pgnomad dev`). The message and the template's
        // own line say what is wrong without them.
        let template_error = |error: minijinja::Error| {
            let mut message = error.to_string();
            let line = error
                .line()
                .and_then(|line| Some((line, self.env.get_template(path).ok()?.source().lines().nth(line.checked_sub(1)?)?.to_owned())));
            if let Some((number, text)) = line {
                message.push_str(&format!("\n  {number} | {}", text.trim_end()));
            }
            ConfigError::Template { path: path.to_owned(), message }
        };
        let template = self.env.get_template(path).map_err(|error| match error.kind() {
            minijinja::ErrorKind::TemplateNotFound => ConfigError::UnknownPackFile {
                path: path.to_owned(),
                known: BUILTIN.iter().map(|(p, _)| *p).collect::<Vec<_>>().join(", "),
            },
            _ => template_error(error),
        })?;
        let context = minijinja::context! {
            stack => self.stack.clone(),
            member => member.map(Value::from_serialize),
            rt => holes.to_value(),
        };
        template.render(context).map_err(template_error)
    }
}

/// A YAML double-quoted scalar (JSON strings are valid YAML). Not for holes: quoting a
/// Nomad template expression would break it, so the template must quote those itself.
fn yaml_string(value: Value) -> Result<Value, minijinja::Error> {
    if value.is_safe() {
        return Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            "`yaml` quotes stack values, not runtime holes: write \"[[ rt.… ]]\" instead",
        ));
    }
    let text = value.as_str().map_or_else(|| value.to_string(), str::to_owned);
    Ok(Value::from(serde_json::to_string(&text).expect("strings serialize")))
}

/// A single-quoted SQL literal. A hole stays a hole: its value (a generated password) has
/// no quote to double, and its expression must reach the target unescaped.
fn sql_literal(value: Value) -> Value {
    let text = value.as_str().map_or_else(|| value.to_string(), str::to_owned);
    let literal = format!("'{}'", text.replace('\'', "''"));
    if value.is_safe() {
        Value::from_safe_string(literal)
    } else {
        Value::from(literal)
    }
}
