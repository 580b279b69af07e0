//! Nomad jobspec (HCL2) text from the job model.
//!
//! The job is serialized with serde to the API's JSON shape first, then walked: the API's
//! field names map onto jobspec names (mostly snake_case, with the exceptions below), list
//! fields of objects become repeated blocks, and durations in nanoseconds become "30s".
//! One model, two outputs: a field added to the model shows up in both.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::nomad::job::Job;

/// Fields whose values are blocks, with the labelling field if the block takes a label.
fn block_name(field: &str) -> Option<(&'static str, Option<&'static str>)> {
    Some(match field {
        "TaskGroups" => ("group", Some("Name")),
        "Tasks" => ("task", Some("Name")),
        "DynamicPorts" => ("port", Some("Label")),
        "Constraints" => ("constraint", None),
        "Spreads" => ("spread", None),
        "Networks" => ("network", None),
        "Services" => ("service", None),
        "Checks" => ("check", None),
        "Templates" => ("template", None),
        "VolumeMounts" => ("volume_mount", None),
        "Update" => ("update", None),
        "Periodic" => ("periodic", None),
        "ParameterizedJob" => ("parameterized", None),
        "RestartPolicy" => ("restart", None),
        "ReschedulePolicy" => ("reschedule", None),
        "Resources" => ("resources", None),
        "Lifecycle" => ("lifecycle", None),
        "CheckRestart" => ("check_restart", None),
        "MountOptions" => ("mount_options", None),
        "Wait" => ("wait", None),
        "Vault" => ("vault", None),
        "Consul" => ("consul", None),
        "Disconnect" => ("disconnect", None),
        _ => return None,
    })
}

/// Attribute names that are not the snake_case of the API name.
fn attribute_name(field: &str) -> String {
    match field {
        "LTarget" => "attribute".into(),
        "RTarget" => "value".into(),
        "Operand" => "operator".into(),
        "PortLabel" => "port".into(),
        "EmbeddedTmpl" => "data".into(),
        "DestPath" => "destination".into(),
        "Envvars" => "env".into(),
        "LeftDelim" => "left_delimiter".into(),
        "RightDelim" => "right_delimiter".into(),
        "ErrMissingKey" => "error_on_missing_key".into(),
        "CPU" => "cpu".into(),
        "MemoryMB" => "memory".into(),
        "MemoryMaxMB" => "memory_max".into(),
        "Specs" => "crons".into(),
        "TaskName" => "task".into(),
        "FSType" => "fs_type".into(),
        "TLSSkipVerify" => "tls_skip_verify".into(),
        other => snake_case(other),
    }
}

/// Fields the jobspec does not write: the block label carries them, or HCL has no syntax
/// for them (`spec_type` is implied by `crons`).
fn skipped(field: &str) -> bool {
    matches!(field, "SpecType")
}

const DURATIONS: &[&str] = &[
    "Interval",
    "Timeout",
    "Delay",
    "MaxDelay",
    "KillTimeout",
    "MinHealthyTime",
    "HealthyDeadline",
    "ProgressDeadline",
    "ShutdownDelay",
    "LostAfter",
    "Splay",
    "Grace",
    "Min",
    "Max",
];

/// Map-valued fields written as a block of attributes (`meta { … }`, `env { … }`) or, for
/// task config, as a block whose values may be lists and objects.
const MAP_BLOCKS: &[(&str, &str)] = &[("Meta", "meta"), ("Env", "env"), ("Config", "config")];

pub fn snake_case(name: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = name.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() {
            let previous_lower = i > 0 && chars[i - 1].is_ascii_lowercase();
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            let previous_upper = i > 0 && chars[i - 1].is_ascii_uppercase();
            if i > 0 && (previous_lower || (previous_upper && next_lower)) {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(*c);
        }
    }
    out
}

/// Renders a job as a jobspec that `nomad job run` takes.
pub fn job(job: &Job) -> String {
    let value = serde_json::to_value(job).expect("jobs serialize");
    let Value::Object(fields) = value else { unreachable!("a job is an object") };
    let mut out = String::new();
    let id = fields.get("ID").and_then(Value::as_str).unwrap_or_default();
    let _ = writeln!(out, "job {} {{", quote(id));
    // The label carries the ID, and the name when it is the same.
    let skip: &[&str] = if fields.get("Name").and_then(Value::as_str) == Some(id) { &["ID", "Name"] } else { &["ID"] };
    write_body(&mut out, &fields, skip, 1);
    out.push_str("}\n");
    out
}

fn indent(level: usize) -> String {
    "  ".repeat(level)
}

/// Writes `fields` as a block body, leaving out `skip` (fields a block label carries).
fn write_body(out: &mut String, fields: &Map<String, Value>, skip: &[&str], level: usize) {
    let pad = indent(level);
    let fields = || fields.iter().filter(|(field, _)| !skip.contains(&field.as_str()));
    // Attributes first, then blocks, as people write jobspecs.
    for (field, value) in fields() {
        if skipped(field) || block_name(field).is_some() || MAP_BLOCKS.iter().any(|(f, _)| f == field) || field == "Volumes" {
            continue;
        }
        let name = attribute_name(field);
        let rendered = if DURATIONS.contains(&field.as_str()) {
            quote(&go_duration(value.as_u64().unwrap_or_default()))
        } else if field == "EmbeddedTmpl" {
            heredoc(value.as_str().unwrap_or_default())
        } else {
            expression(value, level)
        };
        let _ = writeln!(out, "{pad}{name} = {rendered}");
    }
    for (field, value) in fields() {
        if let Some((_, block)) = MAP_BLOCKS.iter().find(|(f, _)| f == field) {
            let Value::Object(map) = value else { continue };
            let _ = writeln!(out, "\n{pad}{block} {{");
            for (key, item) in map {
                let _ = writeln!(out, "{}{} = {}", indent(level + 1), key, expression(item, level + 1));
            }
            let _ = writeln!(out, "{pad}}}");
        } else if field == "Volumes" {
            let Value::Object(map) = value else { continue };
            for (name, volume) in map {
                let Value::Object(volume) = volume else { continue };
                let _ = writeln!(out, "\n{pad}volume {} {{", quote(name));
                write_body(out, volume, &["Name"], level + 1);
                let _ = writeln!(out, "{pad}}}");
            }
        } else if let Some((block, label_field)) = block_name(field) {
            let items = match value {
                Value::Array(items) => items.as_slice(),
                other => std::slice::from_ref(other),
            };
            for item in items {
                let Value::Object(body) = item else { continue };
                let label = label_field.and_then(|l| body.get(l)).and_then(Value::as_str).map(quote);
                let head = match label {
                    Some(label) => format!("{block} {label}"),
                    None => block.to_owned(),
                };
                let _ = writeln!(out, "\n{pad}{head} {{");
                write_body(out, body, label_field.as_slice(), level + 1);
                let _ = writeln!(out, "{pad}}}");
            }
        }
    }
}

fn expression(value: &Value, level: usize) -> String {
    match value {
        Value::String(s) => quote(s),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        Value::Array(items) => format!("[{}]", items.iter().map(|i| expression(i, level)).collect::<Vec<_>>().join(", ")),
        Value::Object(map) => {
            let mut out = String::from("{\n");
            for (key, item) in map {
                let _ = writeln!(out, "{}{} = {}", indent(level + 1), quote(key), expression(item, level + 1));
            }
            let _ = write!(out, "{}}}", indent(level));
            out
        }
    }
}

/// An HCL string literal. `${` and `%{` are doubled so HCL does not interpolate them;
/// Nomad's own `${NOMAD_…}` interpolation happens after HCL parsing, on the unescaped text.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' | '%' if chars.peek() == Some(&'{') => {
                out.push(c);
                out.push(c);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Multi-line text as a heredoc, which keeps config files readable in the jobspec.
fn heredoc(text: &str) -> String {
    if !text.ends_with('\n') || text.contains('\r') {
        return quote(text);
    }
    let mut delimiter = "EOT".to_owned();
    while text.lines().any(|line| line.trim() == delimiter) {
        delimiter.push('_');
    }
    let escaped = text.replace("${", "$${").replace("%{", "%%{");
    format!("<<{delimiter}\n{escaped}{delimiter}")
}

/// A Go-style duration string, as the jobspec writes durations: "30s", "5m", "1h30m".
pub fn go_duration(nanos: u64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    if !nanos.is_multiple_of(1_000_000_000) {
        return format!("{}ms", nanos / 1_000_000);
    }
    let mut seconds = nanos / 1_000_000_000;
    let mut out = String::new();
    for (unit, size) in [("h", 3600), ("m", 60)] {
        if seconds >= size {
            let _ = write!(out, "{}{unit}", seconds / size);
            seconds %= size;
        }
    }
    if seconds > 0 {
        let _ = write!(out, "{seconds}s");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_cases_api_names() {
        assert_eq!(snake_case("MinHealthyTime"), "min_healthy_time");
        assert_eq!(snake_case("NodePool"), "node_pool");
        assert_eq!(snake_case("TLSServerName"), "tls_server_name");
        assert_eq!(snake_case("Count"), "count");
    }

    #[test]
    fn durations_read_as_go_writes_them() {
        assert_eq!(go_duration(30_000_000_000), "30s");
        assert_eq!(go_duration(5_400_000_000_000), "1h30m");
        assert_eq!(go_duration(500_000_000), "500ms");
    }

    #[test]
    fn quoting_escapes_hcl_interpolation_only() {
        assert_eq!(quote("${node.unique.id}"), "\"$${node.unique.id}\"");
        assert_eq!(quote("a \"b\"\n"), "\"a \\\"b\\\"\\n\"");
        assert_eq!(quote("{{ env \"X\" }}"), "\"{{ env \\\"X\\\" }}\"");
    }
}
