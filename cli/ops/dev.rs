//! The operations' target for `pgnomad dev`: the members' REST APIs and PgBouncer on this
//! machine; a member is updated by rewriting its config files and having the supervisor
//! restart its processes, as Nomad replaces a member group's allocation.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::resume_guard::ConsoleCommand;
use super::{running, wait_for, MemberView, OpsError, Reporter, Target};
use crate::config::{Packs, Runtime};
use crate::dev::{patroni, process, state, supervise, Dev};

/// The member files the pack renders, as the supervisor's processes read them.
const MEMBER_FILES: [&str; 4] = ["patroni.yml", "bootstrap.sql", "on-role-change.sh", "pgbackrest.conf"];

pub struct DevTarget<'a> {
    pub dev: &'a Dev,
}

impl<'a> DevTarget<'a> {
    pub fn new(dev: &'a Dev) -> Self {
        DevTarget { dev }
    }

    /// Each member file as the stack renders it now: (path, text).
    fn rendered(&self, member: &str) -> Result<Vec<(PathBuf, String)>, OpsError> {
        let dev = self.dev;
        let facts = dev
            .facts
            .members
            .iter()
            .find(|m| m.name == member)
            .ok_or_else(|| OpsError::Setup(format!("{member} is not a member of the stack")))?;
        let runtime = dev.runtime(dev.state.pgbouncer_primary().unwrap_or(0));
        let renderer = Packs::default().renderer(&dev.facts, &runtime);
        let holes = runtime.member(&dev.facts, facts);
        MEMBER_FILES
            .iter()
            .map(|file| {
                let text = renderer
                    .render(&format!("postgres/{file}"), Some(facts), &holes)
                    .map_err(|e| OpsError::Setup(format!("rendering {file} of {member}: {e}")))?;
                Ok((PathBuf::from(&holes.config_dir).join(file), text))
            })
            .collect()
    }

    fn patroni_pid(&self, member: &str) -> Option<u32> {
        self.dev.state.read_pids().processes.get(member).copied().filter(|&pid| process::alive(pid))
    }
}

/// patroni.yml without its `bootstrap:` section: Patroni reads that section only when it
/// initializes a new cluster, so a change there (the stack's parameters, which go through
/// `PATCH /config` instead) needs no restart.
pub fn running_part(patroni_yml: &str) -> String {
    let mut out = String::new();
    let mut in_bootstrap = false;
    for line in patroni_yml.lines() {
        let top_level = !line.starts_with([' ', '\t', '#']) && !line.is_empty();
        if top_level {
            in_bootstrap = line.starts_with("bootstrap:");
        }
        if !in_bootstrap {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn differs(path: &std::path::Path, wanted: &str) -> bool {
    let now = std::fs::read_to_string(path).unwrap_or_default();
    if path.file_name().is_some_and(|f| f == "patroni.yml") {
        running_part(&now) != running_part(wanted)
    } else {
        now != wanted
    }
}

impl Target for DevTarget<'_> {
    fn max_pause(&self) -> Option<Duration> {
        self.dev.facts.pgbouncer.max_pause()
    }

    fn seeds(&self) -> Result<Vec<String>, OpsError> {
        Ok((0..self.dev.member_count()).map(|i| self.dev.rest_address(i)).collect())
    }

    fn rest_address_of(&self, member: &str) -> Option<String> {
        self.dev.member_index(member).map(|i| self.dev.rest_address(i))
    }

    fn rest(&self, address: &str, method: &str, path: &str, body: Option<&Value>, timeout: Duration) -> Result<(u16, String), String> {
        let body = body.map(Value::to_string);
        patroni::request(address, method, path, body.as_deref(), Some(&self.dev.rest_auth()), timeout).map_err(|e| e.to_string())
    }

    fn poolers(&self) -> Result<Vec<String>, OpsError> {
        Ok(if self.dev.facts.pgbouncer.enabled { vec![self.dev.pgbouncer_address()] } else { Vec::new() })
    }

    fn pooler_admin(&self, pooler: &str, command: &str, timeout: Duration) -> Result<String, OpsError> {
        super::run_console(&self.pooler_console(pooler, command)?, command, timeout)
    }

    fn pooler_console(&self, pooler: &str, command: &str) -> Result<ConsoleCommand, OpsError> {
        let cmd = self.dev.pgbouncer_psql("pgbouncer_auth", "pgbouncer");
        let text = |s: &std::ffi::OsStr| s.to_string_lossy().into_owned();
        let mut args: Vec<String> = cmd.get_args().map(text).collect();
        args.extend(["-X", "-A", "-t", "-c", command].map(String::from));
        let mut env = vec![("PGCONNECT_TIMEOUT".to_owned(), "5".to_owned())];
        let mut env_remove = Vec::new();
        for (key, value) in cmd.get_envs() {
            match value {
                Some(value) => env.push((text(key), text(value))),
                None => env_remove.push(text(key)),
            }
        }
        Ok(ConsoleCommand { pooler: pooler.to_owned(), program: text(cmd.get_program()), args, env, env_remove })
    }

    fn oldest_transaction(&self, primary: &MemberView) -> Result<Option<Duration>, String> {
        let index = self.dev.member_index(&primary.name).ok_or_else(|| format!("{} is not a member of the stack", primary.name))?;
        let sql = "SELECT coalesce(extract(epoch FROM max(clock_timestamp() - xact_start)), 0) FROM pg_stat_activity \
                   WHERE xact_start IS NOT NULL AND backend_type = 'client backend' AND pid <> pg_backend_pid()";
        let seconds = self.dev.member_query(index, sql).ok_or_else(|| format!("{} does not answer psql", primary.name))?;
        let seconds: f64 = seconds.parse().map_err(|_| format!("pg_stat_activity answered {seconds:?}"))?;
        Ok(Some(Duration::from_secs_f64(seconds.max(0.0))))
    }

    fn postgres_settings(&self, member: &MemberView, names: &[&str]) -> Option<Vec<running::RunningSetting>> {
        let index = self.dev.member_index(&member.name)?;
        running::parse_rows(&self.dev.member_query(index, &running::settings_query(names))?)
    }

    fn desired_parameters(&self) -> BTreeMap<String, String> {
        self.dev.facts.parameters.clone()
    }

    fn members_to_update(&self) -> Result<Vec<String>, OpsError> {
        let mut changed = Vec::new();
        for member in &self.dev.facts.members {
            if self.rendered(&member.name)?.iter().any(|(path, text)| differs(path, text)) {
                changed.push(member.name.clone());
            }
        }
        Ok(changed)
    }

    fn update_member(&self, member: &str, deadline: Instant, reporter: &dyn Reporter) -> Result<(), OpsError> {
        let dev = self.dev;
        let old = self.patroni_pid(member);
        for (path, text) in self.rendered(member)? {
            let mode = if path.extension().is_some_and(|e| e == "sh") { 0o700 } else { 0o600 };
            state::write_with_mode(&path, &text, mode).map_err(|e| OpsError::Setup(e.to_string()))?;
            dev.user.own(&path).map_err(|e| OpsError::Setup(e.to_string()))?;
        }
        reporter.note(&format!("{member}: config files rewritten; the supervisor restarts its processes"));
        supervise::request_restart(dev, member).map_err(|e| OpsError::Setup(e.to_string()))?;
        let pid = wait_for(
            &format!("the supervisor to restart {member}"),
            deadline.min(Instant::now() + Duration::from_secs(90)),
            Duration::from_millis(100),
            reporter,
            || {
                if dev.state.supervisor_pid().is_none() {
                    return Err("the supervisor is not running (`pgnomad dev up`)".into());
                }
                Ok(self.patroni_pid(member).filter(|&p| Some(p) != old))
            },
        )?;
        // Patroni up again: its REST API answers. A process that exits meanwhile failed.
        let rest = self.rest_address_of(member).unwrap_or_default();
        let outcome =
            wait_for(&format!("{member}'s new Patroni (pid {pid}) to answer"), deadline, Duration::from_millis(200), reporter, || {
                if !process::alive(pid) {
                    return Ok(Some(Err(())));
                }
                Ok(matches!(self.rest(&rest, "GET", "/patroni", None, Duration::from_secs(2)), Ok((200 | 503, _))).then_some(Ok(())))
            })?;
        outcome.map_err(|()| {
            OpsError::Failed(format!(
                "{member}'s new Patroni (pid {pid}) exited during its update; see {} — run the upgrade again once it is back",
                dev.state.log_dir(member).join("patroni.log").display()
            ))
        })
    }

    fn describe(&self) -> String {
        format!("the dev stack in {}", self.dev.state.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bootstrap_section_of_patroni_yml_does_not_count_as_a_change() {
        let before = "scope: main\nbootstrap:\n  dcs:\n    postgresql:\n      parameters:\n        work_mem: 4MB\n\npostgresql:\n  listen: a\ntags:\n  nofailover: false\n";
        let params = before.replace("work_mem: 4MB", "work_mem: 8MB");
        let tags = before.replace("nofailover: false", "nofailover: true");
        assert_eq!(running_part(before), running_part(&params));
        assert_ne!(running_part(before), running_part(&tags));
        assert!(running_part(before).contains("postgresql:\n  listen: a\n"));
    }
}
