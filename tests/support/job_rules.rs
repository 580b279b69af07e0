//! What a Nomad server checks on register after filling defaults (nomad/structs Validate
//! functions), as far as pgnomad's jobs can trip it. Messages follow Nomad's wording and its
//! go-multierror layout ("1 error occurred:\n\t* …\n\n").

use serde_json::Value;

pub fn multierror(errors: &[String]) -> String {
    let points: Vec<String> = errors.iter().map(|e| format!("* {e}")).collect();
    if errors.len() == 1 {
        format!("1 error occurred:\n\t{}\n\n", points[0])
    } else {
        format!("{} errors occurred:\n\t{}\n\n", errors.len(), points.join("\n\t"))
    }
}

fn str_of<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn list<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    value.get(key).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

/// `${NOMAD_JOB_NAME}`-style interpolation of a service name, as the client does before
/// registering it. Unknown variables are dropped.
pub fn interpolate_service_name(name: &str, job: &str, group: &str, task: &str) -> String {
    let mut out = String::new();
    let mut rest = name;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let variable = &rest[start + 2..start + end];
        out.push_str(match variable {
            "NOMAD_JOB_NAME" | "NOMAD_JOB_ID" | "JOB" => job,
            "NOMAD_GROUP_NAME" | "TASKGROUP" => group,
            "NOMAD_TASK_NAME" | "TASK" => task,
            "BASE" => return format!("{out}{job}-{group}-{task}{}", &rest[start + end + 1..]),
            _ => "",
        });
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

fn valid_rfc1123_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

pub fn group_port_labels(group: &Value) -> Vec<String> {
    list(group, "Networks")
        .iter()
        .flat_map(|network| list(network, "DynamicPorts").iter().chain(list(network, "ReservedPorts")))
        .map(|port| str_of(port, "Label").to_string())
        .collect()
}

/// A check's effective on_update: its own, else its service's, else "require_healthy".
pub fn check_on_update<'a>(service: &'a Value, check: &'a Value) -> &'a str {
    match str_of(check, "OnUpdate") {
        "" => match str_of(service, "OnUpdate") {
            "" => "require_healthy",
            other => other,
        },
        own => own,
    }
}

fn service_errors(service: &Value, job: &str, group: &str, task: &str, ports: &[String]) -> Vec<String> {
    let mut errors = Vec::new();
    let raw_name = str_of(service, "Name");
    let name = interpolate_service_name(raw_name, job, group, task);
    if !valid_rfc1123_label(&name) {
        errors.push(format!(
            "Service name must be valid per RFC 1123 and can contain only alphanumeric characters or dashes and must be no longer than 63 characters: {raw_name:?}"
        ));
    }
    let port = str_of(service, "PortLabel");
    if !port.is_empty() && port.parse::<u16>().is_err() && !ports.iter().any(|p| p == port) {
        errors.push(format!("Service {name} invalid: port label {port:?} is not declared by the group's network"));
    }
    for check in list(service, "Checks") {
        let check_name = str_of(check, "Name");
        let mut invalid = |reason: String| errors.push(format!("Check {check_name} invalid: {reason}"));
        let check_type = str_of(check, "Type");
        if check_type == "http" && str_of(check, "Path").is_empty() {
            invalid("http type must have http path".into());
        }
        let check_port = str_of(check, "PortLabel");
        if !check_port.is_empty() && check_port.parse::<u16>().is_err() && !ports.iter().any(|p| p == check_port) {
            invalid(format!("port label {check_port:?} is not declared by the group's network"));
        }
        let restarts = check.get("CheckRestart").is_some_and(|v| !v.is_null()) || service.get("CheckRestart").is_some_and(|v| !v.is_null());
        if check_on_update(service, check) == "ignore" && restarts {
            invalid("on_update value \"ignore\" is not compatible with check_restart".into());
        }
    }
    errors
}

/// Errors of a job, empty when Nomad would accept it.
pub fn job_errors(job: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let id = str_of(job, "ID");
    let job_type = str_of(job, "Type");
    if id.is_empty() {
        errors.push("Missing job ID".to_string());
    } else if id.contains(' ') {
        errors.push("Job ID contains a space".to_string());
    }
    if !matches!(job_type, "service" | "batch" | "system" | "sysbatch") {
        errors.push(format!("Invalid job type: {job_type:?}"));
    }
    let batchy = matches!(job_type, "batch" | "sysbatch");
    if let Some(periodic) = job.get("Periodic").filter(|p| !p.is_null() && p.get("Enabled").and_then(Value::as_bool).unwrap_or(true)) {
        if !batchy {
            errors.push("Periodic can only be used with \"batch\" or \"sysbatch\" scheduler".to_string());
        }
        // PeriodicConfig.Validate's own multierror, nested as Nomad nests it.
        let periodic_errors = match str_of(periodic, "SpecType") {
            "" | "cron" => super::nomad_double::periodic::ask(periodic, std::time::SystemTime::now()).errors,
            other => vec![format!("Unknown periodic specification type {other:?}")],
        };
        if !periodic_errors.is_empty() {
            errors.push(multierror(&periodic_errors));
        }
    }
    if job.get("ParameterizedJob").is_some_and(|p| !p.is_null()) && !batchy {
        errors.push("Parameterized job can only be used with \"batch\" or \"sysbatch\" scheduler".to_string());
    }
    let groups = list(job, "TaskGroups");
    if groups.is_empty() {
        errors.push("Missing job task groups".to_string());
    }
    let job_name = str_of(job, "Name");
    for group in groups {
        let group_name = str_of(group, "Name");
        let group_errors = group_errors(group, job_name, group_name);
        if !group_errors.is_empty() {
            errors.push(format!("Task group {group_name} validation failed: {}", multierror(&group_errors)));
        }
    }
    errors
}

fn group_errors(group: &Value, job_name: &str, group_name: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let ports = group_port_labels(group);
    let count = group.get("Count").and_then(Value::as_u64).unwrap_or(1);
    for service in list(group, "Services") {
        errors.extend(service_errors(service, job_name, group_name, "", &ports));
    }
    if let Some(volumes) = group.get("Volumes").and_then(Value::as_object) {
        for (name, volume) in volumes {
            let mode = str_of(volume, "AccessMode");
            let single = matches!(mode, "single-node-writer" | "single-node-single-writer" | "single-node-reader-only");
            if str_of(volume, "Type") == "csi" && single && count > 1 && !volume.get("PerAlloc").and_then(Value::as_bool).unwrap_or(false) {
                let what = if mode.ends_with("reader-only") { "reader" } else { "writer" };
                errors.push(format!(
                    "Task group volume validation for {name} failed: 1 error occurred:\n\t* volume with {mode} access mode allows only one {what}\n\n"
                ));
            }
        }
    }
    let tasks = list(group, "Tasks");
    if tasks.is_empty() {
        errors.push("Missing tasks for task group".to_string());
    }
    for task in tasks {
        let task_name = str_of(task, "Name");
        let mut task_errors = Vec::new();
        for service in list(task, "Services") {
            task_errors.extend(service_errors(service, job_name, group_name, task_name, &ports));
        }
        for (index, template) in list(task, "Templates").iter().enumerate() {
            if str_of(template, "ChangeMode") == "signal" && str_of(template, "ChangeSignal").is_empty() {
                task_errors.push(format!(
                    "Template {} validation failed: 1 error occurred:\n\t* Must specify signal value when change mode is \"signal\"\n\n",
                    index + 1
                ));
            }
        }
        if !task_errors.is_empty() {
            errors.push(format!("Task {task_name} validation failed: {}", multierror(&task_errors)));
        }
    }
    errors
}

/// Variable paths a template reads: (function, path) for nomadVar / nomadVarList / nomadVarExists.
pub fn template_variable_reads(template: &str) -> Vec<(String, String)> {
    let mut reads = Vec::new();
    for function in ["nomadVarExists", "nomadVarList", "nomadVar"] {
        let mut rest = template;
        while let Some(at) = rest.find(function) {
            let after = &rest[at + function.len()..];
            rest = after;
            // "nomadVar" also matches the start of the longer names; skip those.
            if after.starts_with("Exists") || after.starts_with("List") {
                continue;
            }
            let after = after.trim_start();
            if let Some(quoted) = after.strip_prefix('"') {
                if let Some(end) = quoted.find('"') {
                    let path = quoted[..end].split('@').next().unwrap_or_default().to_string();
                    reads.push((function.to_string(), path));
                }
            }
        }
    }
    reads
}
