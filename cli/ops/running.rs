//! What a member's Postgres runs, from `pg_settings`, compared with what the stack wants.
//!
//! Patroni's `pending_restart` flag misses a member whose Patroni was restarted while its
//! Postgres kept running: the new Patroni adopts the old postmaster and never compares. The
//! running values are the truth, so the operations compare them (pure, no I/O here).

/// One row of `pg_settings`: `setting` is in the units of `unit` (`8kB`, `MB`, `ms`, …).
#[derive(Debug, Clone, PartialEq)]
pub struct RunningSetting {
    pub name: String,
    pub setting: String,
    pub unit: String,
    pub pending_restart: bool,
}

impl RunningSetting {
    /// Whether Postgres runs `wanted` (as a stack or postgresql.conf spells it: `128MB`, `1GB`,
    /// `30s`, `200`, `on`, `'a, b'`). Postgres rounds a value to its unit, so this does too.
    pub fn runs(&self, wanted: &str) -> bool {
        let wanted = unquote(wanted.trim());
        if let Some(unit) = Unit::parse(&self.unit) {
            let (Ok(setting), Some(quantity)) = (self.setting.parse::<f64>(), parse_quantity(wanted, unit)) else {
                return self.setting == wanted;
            };
            return quantity_in(quantity, unit) == setting;
        }
        if let (Some(a), Some(b)) = (boolean(&self.setting), boolean(wanted)) {
            return a == b;
        }
        if let (Ok(a), Ok(b)) = (self.setting.parse::<f64>(), wanted.parse::<f64>()) {
            return a == b;
        }
        list_text(&self.setting) == list_text(wanted)
    }
}

/// The names that may go into a `pg_settings` query: Postgres parameter names only.
pub fn is_parameter_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// The SQL giving `parse_rows` its rows: every setting named, and any with a restart pending.
pub fn settings_query(names: &[&str]) -> String {
    let list: Vec<&str> = names.iter().copied().filter(|n| is_parameter_name(n)).collect();
    format!(
        "SELECT name, setting, coalesce(unit, ''), pending_restart FROM pg_settings WHERE pending_restart OR name = ANY ('{{{}}}')",
        list.join(",")
    )
}

/// `psql -A -t` rows of [`settings_query`]; `None` when a row is not four fields.
pub fn parse_rows(text: &str) -> Option<Vec<RunningSetting>> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            // A setting's text may hold `|` (log_line_prefix); names, units and flags never do.
            let (name, rest) = line.split_once('|')?;
            let (rest, pending) = rest.rsplit_once('|')?;
            let (setting, unit) = rest.rsplit_once('|')?;
            Some(RunningSetting { name: name.into(), setting: setting.into(), unit: unit.into(), pending_restart: pending == "t" })
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Dimension {
    Bytes,
    Milliseconds,
}

/// A `pg_settings.unit`: so many bytes or milliseconds per unit (`8kB` is 8192 bytes).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Unit {
    dimension: Dimension,
    base: f64,
}

impl Unit {
    fn parse(text: &str) -> Option<Unit> {
        let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let count: f64 = if digits == 0 { 1.0 } else { text[..digits].parse().ok()? };
        let (dimension, base) = unit_named(&text[digits..])?;
        Some(Unit { dimension, base: count * base })
    }
}

/// Postgres' unit names, case-sensitive as in its GUC code.
fn unit_named(name: &str) -> Option<(Dimension, f64)> {
    Some(match name {
        "B" => (Dimension::Bytes, 1.0),
        "kB" => (Dimension::Bytes, 1024.0),
        "MB" => (Dimension::Bytes, 1024.0 * 1024.0),
        "GB" => (Dimension::Bytes, 1024.0 * 1024.0 * 1024.0),
        "TB" => (Dimension::Bytes, 1024.0 * 1024.0 * 1024.0 * 1024.0),
        "us" => (Dimension::Milliseconds, 0.001),
        "ms" => (Dimension::Milliseconds, 1.0),
        "s" => (Dimension::Milliseconds, 1000.0),
        "min" => (Dimension::Milliseconds, 60_000.0),
        "h" => (Dimension::Milliseconds, 3_600_000.0),
        "d" => (Dimension::Milliseconds, 86_400_000.0),
        _ => return None,
    })
}

/// `wanted` in base units (bytes or ms); a bare number is in the setting's own unit.
fn parse_quantity(wanted: &str, unit: Unit) -> Option<f64> {
    let split = wanted.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-')).unwrap_or(wanted.len());
    let number: f64 = wanted[..split].parse().ok()?;
    let suffix = wanted[split..].trim();
    if suffix.is_empty() {
        return Some(number * unit.base);
    }
    let (dimension, base) = unit_named(suffix)?;
    (dimension == unit.dimension).then_some(number * base)
}

/// A base quantity as Postgres stores it in `unit`: rounded to the nearest whole unit; -1
/// (Postgres' "no limit") stays -1.
fn quantity_in(quantity: f64, unit: Unit) -> f64 {
    if quantity < 0.0 {
        return quantity / unit.base;
    }
    (quantity / unit.base).round()
}

fn boolean(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Some(true),
        "off" | "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

fn unquote(text: &str) -> &str {
    text.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')).unwrap_or(text)
}

/// A list setting (`shared_preload_libraries`) compared as Postgres reads it: items trimmed,
/// names case-insensitive.
fn list_text(text: &str) -> Vec<String> {
    text.split(',').map(|item| item.trim().trim_matches('"').to_ascii_lowercase()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, setting: &str, unit: &str) -> RunningSetting {
        RunningSetting { name: name.into(), setting: setting.into(), unit: unit.into(), pending_restart: false }
    }

    #[test]
    fn memory_and_time_settings_compare_in_postgres_units() {
        // pg_settings of a PostgreSQL 15 running pgnomad's defaults.
        let shared_buffers = row("shared_buffers", "16384", "8kB");
        assert!(shared_buffers.runs("128MB"));
        assert!(shared_buffers.runs("131072kB"));
        assert!(shared_buffers.runs("16384"), "a bare number is in the setting's unit");
        assert!(!shared_buffers.runs("256MB"));
        assert!(!shared_buffers.runs("128ms"), "another dimension is not the same value");
        let max_wal_size = row("max_wal_size", "1024", "MB");
        assert!(max_wal_size.runs("1GB") && max_wal_size.runs(" '1GB' ") && !max_wal_size.runs("2GB"));
        let timeout = row("wal_sender_timeout", "60000", "ms");
        assert!(timeout.runs("60s") && timeout.runs("1min") && !timeout.runs("30s"));
        assert!(row("autovacuum_work_mem", "-1", "kB").runs("-1"));
        // Postgres rounds to the unit: 100kB of 8kB blocks is 12.5, stored as 13.
        assert!(row("wal_buffers", "13", "8kB").runs("100kB"));
    }

    #[test]
    fn numbers_booleans_and_lists_compare_as_postgres_reads_them() {
        assert!(row("max_connections", "200", "").runs("200"));
        assert!(!row("max_connections", "200", "").runs("250"));
        assert!(row("hot_standby", "on", "").runs("true") && !row("hot_standby", "on", "").runs("off"));
        assert!(row("wal_level", "replica", "").runs("Replica") && !row("wal_level", "replica", "").runs("logical"));
        let libraries = row("shared_preload_libraries", "pg_stat_statements,auto_explain", "");
        assert!(libraries.runs("'pg_stat_statements, auto_explain'"));
        assert!(!libraries.runs("pg_stat_statements"));
    }

    #[test]
    fn the_query_names_only_parameter_names_and_its_rows_parse() {
        let sql = settings_query(&["max_connections", "x'); DROP TABLE t; --", "pg_stat_statements.max"]);
        assert!(sql.ends_with("name = ANY ('{max_connections,pg_stat_statements.max}')"), "{sql}");
        let rows = parse_rows("max_connections|200||f\nshared_buffers|16384|8kB|t\n").unwrap();
        assert_eq!(
            rows,
            [row("max_connections", "200", ""), RunningSetting { pending_restart: true, ..row("shared_buffers", "16384", "8kB") }]
        );
        assert_eq!(parse_rows("max_connections|200"), None);
        assert_eq!(parse_rows("log_line_prefix|%m|%p||t").unwrap()[0].setting, "%m|%p");
        assert_eq!(parse_rows(""), Some(Vec::new()));
    }
}
