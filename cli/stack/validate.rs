//! Semantic checks of a decoded stack: the rules that a stack file can break while still
//! being well-formed, each with the reason a person needs to fix it.

use std::collections::BTreeMap;

use super::diagnostic::Diagnostic;
use super::model::*;
use super::syntax::ByteSpan;

/// The longest suffix pgnomad appends to the cluster name (`<c>-pgbackrest` service; the
/// repository host's `<c>-repo` is shorter);
/// Consul service names and DNS labels stop at 63 characters.
const LONGEST_SUFFIX: &str = "-pgbackrest";
pub const MAX_CLUSTER_NAME: usize = 63 - LONGEST_SUFFIX.len();

/// Roles pgnomad creates itself; an application user may not take their names.
pub const RESERVED_ROLES: [&str; 3] = ["postgres", "replicator", "pgbouncer_auth"];

/// postgresql.conf settings that pgnomad owns: setting them would break replication,
/// archiving or the addresses Patroni manages.
pub const MANAGED_PARAMETERS: [&str; 10] = [
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
    restore(stack, &mut out);
    out
}

fn cluster(stack: &Stack, out: &mut Vec<Diagnostic>) {
    let name = &stack.cluster.name;
    if let Err(problem) = dns_label(&name.value, MAX_CLUSTER_NAME) {
        out.push(Diagnostic::error(name.span.clone(), format!("cluster name \"{}\" {problem}", name.value)).with_help(format!(
            "the name prefixes every Nomad job ID and Consul service name: use lowercase letters, digits and dashes, \
                 start with a letter, at most {MAX_CLUSTER_NAME} characters"
        )));
    }
    if stack.cluster.datacenters.is_empty() {
        out.push(
            Diagnostic::error(name.span.clone(), "`datacenters` in `cluster` is empty").with_help("list at least one, e.g. [\"dc1\"]"),
        );
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

const SQL_NAME_HELP: &str = "use lowercase letters, digits and '_', starting with a letter or '_', at most 63 characters";

/// The rules S3 puts on bucket names (those that matter to a valid name, not to its region).
fn s3_bucket(name: &str) -> Result<(), String> {
    if !(3..=63).contains(&name.len()) {
        return Err(format!("has {} characters", name.len()));
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '.')) {
        return Err(format!("contains '{bad}'"));
    }
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !name.starts_with(alphanumeric) || !name.ends_with(alphanumeric) {
        return Err("does not start and end with a letter or digit".into());
    }
    if name.contains("..") {
        return Err("has two dots in a row".into());
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
        2 if pg.synchronous_mode != SynchronousMode::Off => out.push(
            Diagnostic::warning(
                pg.members.span.clone(),
                "2 members with synchronous mode: when the standby is lost, writes go on without a synchronous copy (\"on\") or stop (\"strict\")",
            )
            .with_help("use 3 members so that another standby can become synchronous, or set synchronous_mode = \"off\" to accept asynchronous replication"),
        ),
        _ => {}
    }
    let mut users: BTreeMap<&str, &ByteSpan> = BTreeMap::new();
    for user in &pg.users {
        if let Err(problem) = sql_name(&user.value) {
            out.push(Diagnostic::error(user.span.clone(), format!("user name \"{}\" {problem}", user.value)).with_help(SQL_NAME_HELP));
        } else if RESERVED_ROLES.contains(&user.value.as_str()) {
            out.push(
                Diagnostic::error(user.span.clone(), format!("user name \"{}\" is reserved for pgnomad's own role", user.value))
                    .with_help("choose another name for the application user"),
            );
        }
        if users.insert(&user.value, &user.span).is_some() {
            out.push(
                Diagnostic::error(user.span.clone(), format!("user \"{}\" is listed twice", user.value))
                    .with_help("remove the repeated name"),
            );
        }
    }
    let mut databases: BTreeMap<&str, ()> = BTreeMap::new();
    for database in &pg.databases {
        let name = &database.name;
        if let Err(problem) = sql_name(&name.value) {
            out.push(Diagnostic::error(name.span.clone(), format!("database name \"{}\" {problem}", name.value)).with_help(SQL_NAME_HELP));
        } else if ["postgres", "template0", "template1", "pgbouncer"].contains(&name.value.as_str()) {
            out.push(
                Diagnostic::error(name.span.clone(), format!("database name \"{}\" is reserved", name.value))
                    .with_help("PostgreSQL or PgBouncer has a database of that name already; choose another"),
            );
        }
        if databases.insert(&name.value, ()).is_some() {
            out.push(
                Diagnostic::error(name.span.clone(), format!("database \"{}\" is declared twice", name.value))
                    .with_help("merge the two `database` blocks into one"),
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
                format!(
                    "Patroni needs loop_wait + 2 × retry_timeout ≤ ttl, but {loop_wait} + 2 × {retry} = {} > {ttl}",
                    loop_wait + 2 * retry
                ),
            )
            .with_help(format!("raise `ttl` to at least {} or lower `loop_wait` / `retry_timeout`", loop_wait + 2 * retry)),
        );
    }
    let cap = stack.cluster.max_kill_timeout.value;
    if p.kill_timeout.value > cap {
        out.push(
            Diagnostic::error(
                p.kill_timeout.span.clone(),
                format!("kill_timeout {}s is longer than the Nomad clients' max_kill_timeout of {cap}s", p.kill_timeout.value),
            )
            .with_help(format!(
                "Nomad would kill Patroni after {cap}s anyway: lower `kill_timeout` to at most {cap}, or, if your clients set a higher `max_kill_timeout`, say so in the cluster block: max_kill_timeout = {}",
                p.kill_timeout.value
            )),
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
                "set ttl to at least {} or, if your Consul servers have a lower `session_ttl_min`, say so: consul_session_ttl_min = \"5s\"",
                2 * p.consul_session_ttl_min.value
            )),
        );
    }
}

fn storage(stack: &Stack, out: &mut Vec<Diagnostic>) {
    if let Storage::Csi(csi) = &stack.storage {
        if csi.capacity_min.value == 0 {
            out.push(
                Diagnostic::error(csi.capacity_min.span.clone(), "`capacity_min` in `storage` must be more than 0")
                    .with_help("give the smallest volume size Postgres may get, e.g. \"10GiB\""),
            );
        }
        if csi.capacity_min.value > csi.capacity_max.value {
            out.push(
                Diagnostic::error(csi.capacity_max.span.clone(), "`capacity_max` in `storage` is smaller than `capacity_min`")
                    .with_help("raise `capacity_max` (20GiB when left out) to at least `capacity_min`, or lower `capacity_min`"),
            );
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
        if let Some((other, other_port)) = member_ports[..i].iter().find(|(_, p)| p.value == port.value) {
            // Point at the one set later in the file: a port that was left out is placed at
            // its block's name or at the start of the file, before any port that was set.
            let ((name, port), other) =
                if other_port.span.start > port.span.start { ((other, other_port), name) } else { ((name, port), other) };
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
            .with_help(format!("clients waiting through a failover would get errors: set `query_wait_timeout` in `pgbouncer` to more than {failover} (seconds), or to 0 to wait without limit")),
        );
    }
    let max_pause = &b.max_pause_ms;
    if b.enabled && max_pause.value != 0 && max_pause.value < super::defaults::PGBOUNCER_MIN_MAX_PAUSE_MS {
        out.push(
            Diagnostic::error(max_pause.span.clone(), format!("`max_pause` {} is shorter than a switchover's own PAUSE may take", millis_text(max_pause.value)))
                .with_help("pgnomad's PAUSE may wait 10 s for transactions to end: set `max_pause` in `pgbouncer` to \"15s\" or more, or to 0 to turn PgBouncer's pause watchdog off"),
        );
    }
}

/// A duration as a stack file writes it: "5s", "1500ms".
fn millis_text(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}

fn pgadmin(stack: &Stack, out: &mut Vec<Diagnostic>) {
    let a = &stack.pgadmin;
    if a.enabled && !a.email.value.contains('@') {
        out.push(
            Diagnostic::error(a.email.span.clone(), format!("pgAdmin's `email` \"{}\" is not an email address", a.email.value))
                .with_help("pgAdmin's first login is an email address, e.g. \"dba@example.com\""),
        );
    }
}

fn backup(stack: &Stack, out: &mut Vec<Diagnostic>) {
    let b = &stack.backup;
    if !b.enabled {
        return;
    }
    if let Repo::S3 { bucket, .. } = &b.repo {
        if !bucket.value.is_empty() {
            if let Err(problem) = s3_bucket(&bucket.value) {
                out.push(
                    Diagnostic::error(
                        bucket.span.clone(),
                        format!("bucket name \"{}\" is not a valid S3 bucket name: it {problem}", bucket.value),
                    )
                    .with_help(
                        "S3 bucket names have 3 to 63 lowercase letters, digits, dots and dashes, and start and end with a letter or digit",
                    ),
                );
            }
        }
    }
    for schedule in &b.schedules {
        if let Err(problem) = check_cron(&schedule.cron.value) {
            out.push(
                Diagnostic::error(
                    schedule.cron.span.clone(),
                    format!("`{}` schedule \"{}\" is not a valid cron expression: {problem}", schedule.kind.name(), schedule.cron.value),
                )
                .with_help("five fields: minute hour day-of-month month day-of-week, e.g. \"0 1 * * 0\"; or \"off\""),
            );
        }
    }
}

/// `restore { … }`: a source other than this cluster (a clone archiving into its source's
/// stanza would break the source's archive), and targets PostgreSQL will take.
fn restore(stack: &Stack, out: &mut Vec<Diagnostic>) {
    let Some(restore) = &stack.restore else { return };
    let from = &restore.from;
    if from.value == stack.cluster.name.value {
        out.push(
            Diagnostic::error(from.span.clone(), format!("`restore` names this very cluster \"{}\" as its source", from.value)).with_help(
                "a restored cluster gets a name of its own, so that it archives into its own stanza and never into its source's (restoring a cluster in place, into itself, is not supported yet)",
            ),
        );
    } else if !from.value.ends_with(".hcl") {
        if let Err(problem) = dns_label(&from.value, MAX_CLUSTER_NAME) {
            out.push(
                Diagnostic::error(
                    from.span.clone(),
                    format!("`from` \"{}\" is neither a stack file (*.hcl) nor a cluster name: it {problem}", from.value),
                )
                .with_help("name the source's stack file, e.g. from = \"pgnomad.hcl\", or its cluster, e.g. from = \"main\""),
            );
        }
    }
    let hex = |s: &str| !s.is_empty() && s.len() <= 8 && s.bytes().all(|b| b.is_ascii_hexdigit());
    match &restore.target {
        RestoreTarget::Lsn(lsn) if !lsn.value.split_once('/').is_some_and(|(a, b)| hex(a) && hex(b)) => out.push(
            Diagnostic::error(lsn.span.clone(), format!("`to_lsn` \"{}\" is not a WAL location", lsn.value))
                .with_help("write it as PostgreSQL shows it, e.g. \"0/3000060\" (SELECT pg_current_wal_lsn())"),
        ),
        RestoreTarget::Xid(xid) if xid.value.is_empty() || !xid.value.bytes().all(|b| b.is_ascii_digit()) => out.push(
            Diagnostic::error(xid.span.clone(), format!("`to_xid` \"{}\" is not a transaction id", xid.value))
                .with_help("write the number, e.g. \"7420\" (SELECT pg_current_xact_id())"),
        ),
        _ => {}
    }
    if !stack.backup.enabled {
        out.push(
            Diagnostic::error(from.span.clone(), "`restore` needs pgBackRest, but `backup { enabled = false }`")
                .with_help("the restore runs `pgbackrest restore`, and the restored cluster archives into its own stanza: enable backups"),
        );
    }
}

/// Checks a cron expression the way Nomad reads it (hashicorp/cronexpr): 5 fields
/// (minute hour day-of-month month day-of-week), 6 (a year appended), 7 (seconds first,
/// year last), or a macro such as `@daily`. Days of the week count from 0 = Sunday, and 7 is
/// Sunday too, as in crontab; months and days may be written as names (`JAN`, `SUN`).
pub fn check_cron(spec: &str) -> Result<(), String> {
    const MACROS: [&str; 7] = ["@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"];
    let spec = spec.trim();
    if spec.starts_with('@') {
        return if MACROS.contains(&spec) { Ok(()) } else { Err(format!("`{spec}` is not one of {}", MACROS.join(", "))) };
    }
    let fields: Vec<&str> = spec.split_whitespace().collect();
    let layout: &[&CronField] = match fields.len() {
        5 => &[&MINUTE, &HOUR, &DAY_OF_MONTH, &MONTH, &DAY_OF_WEEK],
        6 => &[&MINUTE, &HOUR, &DAY_OF_MONTH, &MONTH, &DAY_OF_WEEK, &YEAR],
        7 => &[&SECOND, &MINUTE, &HOUR, &DAY_OF_MONTH, &MONTH, &DAY_OF_WEEK, &YEAR],
        n => return Err(format!("it has {n} field{}, expected 5", if n == 1 { "" } else { "s" })),
    };
    layout.iter().zip(&fields).try_for_each(|(field, text)| field.check(text))
}

struct CronField {
    name: &'static str,
    min: u32,
    max: u32,
    /// Names for `min`, `min + 1`, …, matched case-insensitively by their first three letters.
    names: &'static [&'static str],
}

const SECOND: CronField = CronField { name: "second", min: 0, max: 59, names: &[] };
const MINUTE: CronField = CronField { name: "minute", min: 0, max: 59, names: &[] };
const HOUR: CronField = CronField { name: "hour", min: 0, max: 23, names: &[] };
const DAY_OF_MONTH: CronField = CronField { name: "day-of-month", min: 1, max: 31, names: &[] };
const MONTH: CronField = CronField {
    name: "month",
    min: 1,
    max: 12,
    names: &["january", "february", "march", "april", "may", "june", "july", "august", "september", "october", "november", "december"],
};
const DAY_OF_WEEK: CronField = CronField {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"],
};
const YEAR: CronField = CronField { name: "year", min: 1970, max: 2099, names: &[] };

impl CronField {
    fn check(&self, text: &str) -> Result<(), String> {
        text.split(',').try_for_each(|item| self.check_item(item))
    }

    fn check_item(&self, item: &str) -> Result<(), String> {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (item, None),
        };
        if let Some(step) = step {
            // cronexpr reads a step as one of its numbers 0-59 (two digits at most) and refuses
            // one past the field's largest value (6 for days of the week, where it reads 7 as
            // Sunday only as a value).
            let largest = if self.name == "day-of-week" { 6 } else { self.max.min(59) };
            if step.len() > 2 || !step.parse::<u32>().is_ok_and(|s| (1..=largest).contains(&s)) {
                return Err(format!("{} step `{step}` in `{item}` must be a whole number from 1 to {largest}", self.name));
            }
        }
        let is_days = self.name.starts_with("day");
        match range {
            "*" => return Ok(()),
            "?" if is_days && step.is_none() => return Ok(()),
            // cronexpr's last day of the month, last weekday of the month, nearest weekday.
            "L" | "LW" if self.name == "day-of-month" && step.is_none() => return Ok(()),
            _ => {}
        }
        if step.is_none() {
            if let Some(day) = range.strip_suffix('W').filter(|_| self.name == "day-of-month") {
                return self.value(day).map(|_| ());
            }
            if self.name == "day-of-week" {
                if let Some(day) = range.strip_suffix('L') {
                    return self.value(day).map(|_| ());
                }
                if let Some((day, nth)) = range.split_once('#') {
                    self.value(day)?;
                    return match nth.parse::<u32>() {
                        Ok(1..=5) => Ok(()),
                        _ => Err(format!("`{range}` must name the 1st to 5th weekday of the month, e.g. `FRI#2`")),
                    };
                }
            }
        }
        match range.split_once('-') {
            Some((from, to)) => {
                let (from_value, to_value) = (self.value(from)?, self.value(to)?);
                if from_value > to_value {
                    return Err(format!("{} range `{range}` runs backwards", self.name));
                }
                Ok(())
            }
            None => self.value(range).map(|_| ()),
        }
    }

    fn value(&self, text: &str) -> Result<u32, String> {
        let range = format!("{}-{}", self.min, self.max);
        if let Ok(value) = text.parse::<u32>() {
            return if (self.min..=self.max).contains(&value) {
                Ok(value)
            } else {
                Err(format!("{} {value} is out of range {range}", self.name))
            };
        }
        let lower = text.to_ascii_lowercase();
        if lower.len() >= 3 {
            if let Some(index) = self.names.iter().position(|name| name.starts_with(&lower) && (lower.len() == 3 || lower == *name)) {
                return Ok(self.min + index as u32);
            }
        }
        let names = match self.names.first() {
            Some(_) => {
                format!(" or {}-{}", self.names[0][..3].to_ascii_uppercase(), self.names[self.names.len() - 1][..3].to_ascii_uppercase())
            }
            None => String::new(),
        };
        Err(format!("`{text}` is not a {} ({range}{names})", self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_accepts_what_nomad_accepts() {
        for spec in [
            "0 1 * * 0",
            "0 1 * * 7",
            "0 1 * * 1-6",
            "0 */4 * * *",
            "30 2 1,15 JAN-jun sun",
            "0 1 * * Monday",
            "0 0 L * ?",
            "0 0 15W * *",
            "0 0 ? * FRI#2",
            "0 0 ? * 5L",
            "0 1 * * 0 2030",
            "15 0 1 * * 0 *",
            "@daily",
            " @hourly ",
        ] {
            assert_eq!(check_cron(spec), Ok(()), "{spec}");
        }
    }

    #[test]
    fn cron_rejects_with_a_reason() {
        for (spec, reason) in [
            ("", "it has 0 fields, expected 5"),
            ("0", "it has 1 field, expected 5"),
            ("0 1 * *", "it has 4 fields, expected 5"),
            ("0 1 * * * * * *", "it has 8 fields, expected 5"),
            ("61 * * * *", "minute 61 is out of range 0-59"),
            ("0 24 * * *", "hour 24 is out of range 0-23"),
            ("0 0 0 * *", "day-of-month 0 is out of range 1-31"),
            ("0 0 * 13 *", "month 13 is out of range 1-12"),
            ("0 0 * * 8", "day-of-week 8 is out of range 0-7"),
            ("0 0 * * 5-1", "day-of-week range `5-1` runs backwards"),
            ("*/0 * * * *", "minute step `0` in `*/0` must be a whole number from 1 to 59"),
            ("*/60 * * * *", "minute step `60` in `*/60` must be a whole number from 1 to 59"),
            ("0 0 * * 1-5/7", "day-of-week step `7` in `1-5/7` must be a whole number from 1 to 6"),
            ("0 0 * * * */60", "year step `60` in `*/60` must be a whole number from 1 to 59"),
            ("0 0 * FOO *", "`FOO` is not a month (1-12 or JAN-DEC)"),
            ("0 0 * * su", "`su` is not a day-of-week (0-7 or SUN-SAT)"),
            ("every day at one o'clock", "`every` is not a minute (0-59)"),
            ("0 0 ? * FRI#6", "`FRI#6` must name the 1st to 5th weekday of the month, e.g. `FRI#2`"),
            ("? 0 * * *", "`?` is not a minute (0-59)"),
            ("@weekdays", "`@weekdays` is not one of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly"),
        ] {
            assert_eq!(check_cron(spec), Err(reason.to_owned()), "{spec}");
        }
    }

    #[test]
    fn dns_label_edges() {
        assert_eq!(dns_label("a", 52), Ok(()));
        assert_eq!(dns_label("pg-1", 52), Ok(()));
        assert_eq!(dns_label(&"a".repeat(52), 52), Ok(()));
        assert_eq!(dns_label(&"a".repeat(53), 52), Err("is 53 characters long, longer than 52".into()));
        assert_eq!(dns_label("", 52), Err("is empty".into()));
        assert_eq!(dns_label("-a", 52), Err("must start with a lowercase letter".into()));
        assert_eq!(dns_label("1a", 52), Err("must start with a lowercase letter".into()));
        assert_eq!(dns_label("Main", 52), Err("must start with a lowercase letter".into()));
        assert_eq!(dns_label("a-", 52), Err("must not end with a dash".into()));
        assert_eq!(dns_label("a_b", 52), Err("contains '_'".into()));
        assert_eq!(dns_label("aB", 52), Err("contains 'B'".into()));
        assert_eq!(dns_label("a.b", 52), Err("contains '.'".into()));
        assert_eq!(dns_label("é", 52), Err("must start with a lowercase letter".into()));
    }
}
