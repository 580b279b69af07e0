//! Semantic checks of a decoded stack: the rules that a stack file can break while still
//! being well-formed, each with the reason a person needs to fix it.

use std::collections::BTreeMap;

use super::diagnostic::Diagnostic;
use super::model::*;
use super::syntax::ByteSpan;

/// The longest suffix pgnomad appends to the cluster name (`<c>-pgbackrest` service);
/// Consul service names and DNS labels stop at 63 characters.
const LONGEST_SUFFIX: &str = "-pgbackrest";
pub const MAX_CLUSTER_NAME: usize = 63 - LONGEST_SUFFIX.len();

/// Roles pgnomad creates itself; an application user may not take their names.
pub const RESERVED_ROLES: [&str; 3] = ["postgres", "replicator", "pgbouncer_auth"];

/// postgresql.conf settings that pgnomad owns: setting them would break replication,
/// archiving or the addresses Patroni manages.
const MANAGED_PARAMETERS: [&str; 10] = [
    "listen_addresses",
    "port",
    "hba_file",
    "archive_command",
    "archive_mode",
    "restore_command",
    "synchronous_standby_names",
    "unix_socket_directories",
    "data_directory",
    "primary_conninfo",
];

pub fn validate(stack: &Stack) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    cluster(stack, &mut out);
    postgres(stack, &mut out);
    patroni(stack, &mut out);
    storage(stack, &mut out);
    ports(stack, &mut out);
    pgbouncer(stack, &mut out);
    pgadmin(stack, &mut out);
    backup(stack, &mut out);
    out
}

fn cluster(stack: &Stack, out: &mut Vec<Diagnostic>) {
    let name = &stack.cluster.name;
    if let Err(problem) = dns_label(&name.value, MAX_CLUSTER_NAME) {
        out.push(
            Diagnostic::error(name.span.clone(), format!("cluster name \"{}\" {problem}", name.value)).with_help(format!(
                "the name prefixes every Nomad job ID and Consul service name: use lowercase letters, digits and dashes, \
                 start with a letter, at most {MAX_CLUSTER_NAME} characters"
            )),
        );
    }
    if stack.cluster.datacenters.is_empty() {
        out.push(Diagnostic::error(name.span.clone(), "`datacenters` in `cluster` is empty").with_help("list at least one, e.g. [\"dc1\"]"));
    }
}

/// A DNS label (RFC 1123) of at most `max` characters, starting with a letter.
pub fn dns_label(name: &str, max: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > max {
        return Err(format!("is {} characters long, longer than {max}", name.len()));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err("must start with a lowercase letter".into());
    }
    if name.ends_with('-') {
        return Err("must not end with a dash".into());
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
        return Err(format!("contains '{bad}'"));
    }
    Ok(())
}

/// A name that is safe as an unquoted SQL identifier and as a PgBouncer database name.
fn sql_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err("must have 1 to 63 characters".into());
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
        return Err("must start with a lowercase letter or '_'".into());
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')) {
        return Err(format!("contains '{bad}'"));
    }
    if name.starts_with("pg_") {
        return Err("starts with pg_, which PostgreSQL reserves".into());
    }
    Ok(())
}

fn postgres(stack: &Stack, out: &mut Vec<Diagnostic>) {
    let pg = &stack.postgres;
    match pg.members.value {
        0 => out.push(
            Diagnostic::error(pg.members.span.clone(), "`members` in `postgres` must be at least 1")
                .with_help("3 members survive the loss of one host without losing a write"),
        ),
        2 if pg.synchronous_mode != SynchronousMode::Off => out.push(
            Diagnostic::warning(pg.members.span.clone(), "2 members with synchronous mode: losing the standby stalls or unprotects writes")
                .with_help("use 3 members so that another standby can become synchronous"),
        ),
        _ => {}
    }
    let mut users: BTreeMap<&str, &ByteSpan> = BTreeMap::new();
    for user in &pg.users {
        if let Err(problem) = sql_name(&user.value) {
            out.push(Diagnostic::error(user.span.clone(), format!("user name \"{}\" {problem}", user.value)));
        } else if RESERVED_ROLES.contains(&user.value.as_str()) {
            out.push(
                Diagnostic::error(user.span.clone(), format!("user name \"{}\" is reserved for pgnomad's own role", user.value))
                    .with_help("choose another name for the application user"),
            );
        }
        if users.insert(&user.value, &user.span).is_some() {
            out.push(Diagnostic::error(user.span.clone(), format!("user \"{}\" is listed twice", user.value)));
        }
    }
    let mut databases: BTreeMap<&str, ()> = BTreeMap::new();
    for database in &pg.databases {
        let name = &database.name;
        if let Err(problem) = sql_name(&name.value) {
            out.push(Diagnostic::error(name.span.clone(), format!("database name \"{}\" {problem}", name.value)));
        } else if ["postgres", "template0", "template1", "pgbouncer"].contains(&name.value.as_str()) {
            out.push(Diagnostic::error(name.span.clone(), format!("database name \"{}\" is reserved", name.value)));
        }
        if databases.insert(&name.value, ()).is_some() {
            out.push(Diagnostic::error(name.span.clone(), format!("database \"{}\" is declared twice", name.value)));
        }
    }
    for name in pg.parameters.keys() {
        if MANAGED_PARAMETERS.contains(&name.as_str()) {
            out.push(
                Diagnostic::error(pg.members.span.clone(), format!("postgresql.conf parameter `{name}` is managed by pgnomad"))
                    .with_help("remove it from `parameters`; pgnomad sets it from the stack"),
            );
        }
    }
}

fn patroni(stack: &Stack, out: &mut Vec<Diagnostic>) {
    let p = &stack.patroni;
    let (ttl, loop_wait, retry) = (p.ttl.value, p.loop_wait.value, p.retry_timeout.value);
    // Patroni documents this rule but 3.0 does not enforce it; breaking it lets the leader
    // key expire while the leader is still retrying, which means spurious failovers.
    if loop_wait + 2 * retry > ttl {
        out.push(
            Diagnostic::error(
                p.ttl.span.clone(),
                format!("Patroni needs loop_wait + 2 × retry_timeout ≤ ttl, but {loop_wait} + 2 × {retry} = {} > {ttl}", loop_wait + 2 * retry),
            )
            .with_help(format!("raise `ttl` to at least {} or lower `loop_wait` / `retry_timeout`", loop_wait + 2 * retry)),
        );
    }
    if p.dcs == Dcs::Consul && ttl / 2 < p.consul_session_ttl_min.value {
        out.push(
            Diagnostic::error(
                p.ttl.span.clone(),
                format!(
                    "with Consul, Patroni asks for sessions of ttl/2 = {}s, below Consul's session_ttl_min of {}s",
                    ttl / 2,
                    p.consul_session_ttl_min.value
                ),
            )
            .with_help(format!(
                "set ttl to at least {} or, if your Consul servers lower `session_ttl_min`, say so with consul_session_ttl_min",
                2 * p.consul_session_ttl_min.value
            )),
        );
    }
    if let Dcs::Etcd3 { hosts } = &p.dcs {
        for host in hosts {
            let valid = host.rsplit_once(':').is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
            if !valid {
                out.push(
                    Diagnostic::error(p.dcs_span.clone(), format!("etcd host \"{host}\" is not host:port"))
                        .with_help("e.g. \"10.0.0.1:2379\""),
                );
            }
        }
    }
}

fn storage(stack: &Stack, out: &mut Vec<Diagnostic>) {
    if let Storage::Csi(csi) = &stack.storage {
        if csi.capacity_min.value == 0 {
            out.push(Diagnostic::error(csi.capacity_min.span.clone(), "`capacity_min` in `storage` must be more than 0"));
        }
        if csi.capacity_min.value > csi.capacity_max.value {
            out.push(Diagnostic::error(csi.capacity_max.span.clone(), "`capacity_max` in `storage` is smaller than `capacity_min`"));
        }
    }
}

fn ports(stack: &Stack, out: &mut Vec<Diagnostic>) {
    // These share one network namespace: the member's task group.
    let mut member_ports = vec![("postgres.port", &stack.postgres.port), ("patroni.port", &stack.patroni.port)];
    if stack.backup.enabled {
        member_ports.push(("backup.tls_port", &stack.backup.tls_port));
    }
    if stack.monitoring.postgres_exporter {
        member_ports.push(("monitoring.port", &stack.monitoring.port));
    }
    for (i, (name, port)) in member_ports.iter().enumerate() {
        if let Some((other, _)) = member_ports[..i].iter().find(|(_, p)| p.value == port.value) {
            out.push(
                Diagnostic::error(port.span.clone(), format!("port {} of `{name}` is already used by `{other}`", port.value))
                    .with_help("every member listens on these ports side by side: give each its own"),
            );
        }
    }
}

fn pgbouncer(stack: &Stack, out: &mut Vec<Diagnostic>) {
    let b = &stack.pgbouncer;
    let failover = stack.patroni.ttl.value + stack.patroni.loop_wait.value;
    if b.enabled && b.query_wait_timeout.value != 0 && b.query_wait_timeout.value <= failover {
        out.push(
            Diagnostic::warning(
                b.query_wait_timeout.span.clone(),
                format!("query_wait_timeout {}s is not longer than a failover (up to ttl + loop_wait = {failover}s)", b.query_wait_timeout.value),
            )
            .with_help("clients waiting through a failover would get errors; raise it"),
        );
    }
}

fn pgadmin(stack: &Stack, out: &mut Vec<Diagnostic>) {
    let a = &stack.pgadmin;
    if a.enabled && !a.email.value.contains('@') {
        out.push(Diagnostic::error(a.email.span.clone(), format!("pgAdmin's `email` \"{}\" is not an email address", a.email.value)));
    }
}

fn backup(stack: &Stack, out: &mut Vec<Diagnostic>) {
    let b = &stack.backup;
    if !b.enabled {
        return;
    }
    if let Repo::S3 { bucket, .. } = &b.repo {
        if !bucket.value.is_empty() && !bucket.value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.') {
            out.push(Diagnostic::error(bucket.span.clone(), format!("bucket name \"{}\" is not a valid S3 bucket name", bucket.value)));
        }
    }
    for schedule in &b.schedules {
        if let Err(problem) = check_cron(&schedule.cron.value) {
            out.push(
                Diagnostic::error(schedule.cron.span.clone(), format!("`{}` schedule \"{}\" is not a valid cron expression: {problem}", schedule.kind.name(), schedule.cron.value))
                    .with_help("five fields: minute hour day-of-month month day-of-week, e.g. \"0 1 * * 0\"; or \"off\""),
            );
        }
    }
}

/// Checks a cron expression the way Nomad's cronexpr reads it: 5 fields (minute first),
/// 6 (seconds first) or 7 (and a year), or a macro such as `@daily`.
pub fn check_cron(spec: &str) -> Result<(), String> {
    const MACROS: [&str; 7] = ["@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"];
    let spec = spec.trim();
    if spec.starts_with('@') {
        return if MACROS.contains(&spec) { Ok(()) } else { Err(format!("unknown macro {spec}; known: {}", MACROS.join(", "))) };
    }
    const SECOND: CronField = CronField { name: "second", min: 0, max: 59, names: &[] };
    const MINUTE: CronField = CronField { name: "minute", min: 0, max: 59, names: &[] };
    const HOUR: CronField = CronField { name: "hour", min: 0, max: 23, names: &[] };
    const DAY: CronField = CronField { name: "day-of-month", min: 1, max: 31, names: &[] };
    const MONTH: CronField = CronField {
        name: "month",
        min: 1,
        max: 12,
        names: &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
    };
    const WEEKDAY: CronField = CronField { name: "day-of-week", min: 0, max: 7, names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"] };
    const YEAR: CronField = CronField { name: "year", min: 1970, max: 2099, names: &[] };
    let fields: Vec<&str> = spec.split_whitespace().collect();
    let layout: &[CronField] = match fields.len() {
        5 => &[MINUTE, HOUR, DAY, MONTH, WEEKDAY],
        6 => &[SECOND, MINUTE, HOUR, DAY, MONTH, WEEKDAY],
        7 => &[SECOND, MINUTE, HOUR, DAY, MONTH, WEEKDAY, YEAR],
        n => return Err(format!("it has {n} fields, expected 5")),
    };
    for (text, field) in fields.iter().zip(layout) {
        field.check(text)?;
    }
    Ok(())
}

struct CronField {
    name: &'static str,
    min: u32,
    max: u32,
    /// Names for 0-based (weekdays) or 1-based (months) values.
    names: &'static [&'static str],
}

impl CronField {
    fn value(&self, text: &str) -> Result<u32, String> {
        let lower = text.to_ascii_lowercase();
        if let Some(i) = self.names.iter().position(|n| *n == lower) {
            // Month names count from 1, weekday names from 0 (Sunday).
            return Ok(i as u32 + self.min.min(1));
        }
        let value: u32 = text.parse().map_err(|_| format!("{} field: \"{text}\" is not a number", self.name))?;
        if value < self.min || value > self.max {
            return Err(format!("{} field: {value} is out of range {}-{}", self.name, self.min, self.max));
        }
        Ok(value)
    }

    fn check(&self, text: &str) -> Result<(), String> {
        for part in text.split(',') {
            let (range, step) = match part.split_once('/') {
                Some((range, step)) => (range, Some(step)),
                None => (part, None),
            };
            if let Some(step) = step {
                match step.parse::<u32>() {
                    Ok(n) if n > 0 => {}
                    _ => return Err(format!("{} field: step \"{step}\" is not a positive number", self.name)),
                }
            }
            // Day fields also take cronexpr's `?`, `L`, `W` and `#` forms.
            let special = matches!(self.name, "day-of-month" | "day-of-week") && (range == "?" || range.contains(['L', 'W', '#']));
            if range == "*" || special {
                continue;
            }
            match range.split_once('-') {
                Some((low, high)) => {
                    let (low, high) = (self.value(low)?, self.value(high)?);
                    if low > high {
                        return Err(format!("{} field: range {low}-{high} runs backwards", self.name));
                    }
                }
                None => {
                    self.value(range)?;
                }
            }
        }
        Ok(())
    }
}
