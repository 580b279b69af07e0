//! What the user sees of deploy operations: progress bars (the only indicatif code), plan
//! diffs, status tables. Bars are drawn only when stderr is a terminal; otherwise each change
//! is one plain line, so logs and CI output stay readable.

pub mod ops;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::deploy::{
    DestroySummary, DestroyTargets, JobAction, JobChange, Known, Plan, Reporter, RunSummary, SecretAction, Status, VolumeAction,
};
use crate::nomad::api::{Deployment, DiffType, FieldDiff, JobDiff, ObjectDiff};

/// Reports to stderr: bars on a terminal, plain lines elsewhere.
pub struct TerminalReporter {
    bars: Option<MultiProgress>,
    /// (job, group) → its bar.
    group_bars: Mutex<BTreeMap<(String, String), ProgressBar>>,
    /// Last plain line per subject, so unchanged progress is not repeated.
    last_lines: Mutex<BTreeMap<String, String>>,
}

impl TerminalReporter {
    pub fn new() -> Self {
        Self::with_bars(std::io::stderr().is_terminal())
    }

    pub fn with_bars(bars: bool) -> Self {
        let bars = bars.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        TerminalReporter { bars, group_bars: Mutex::new(BTreeMap::new()), last_lines: Mutex::new(BTreeMap::new()) }
    }

    fn line(&self, text: &str) {
        match &self.bars {
            Some(bars) => {
                let _ = bars.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    /// A plain progress line, printed only when it differs from the last one for `subject`.
    fn progress_line(&self, subject: &str, text: String) {
        let mut last = self.last_lines.lock().unwrap();
        if last.get(subject) != Some(&text) {
            self.line(&text);
            last.insert(subject.to_string(), text);
        }
    }
}

impl Default for TerminalReporter {
    fn default() -> Self {
        Self::new()
    }
}

fn group_message(group: &str, placed: u64, desired: u64, healthy: u64, unhealthy: u64) -> String {
    format!("{group}: placed {placed}/{desired}, healthy {healthy}, unhealthy {unhealthy}")
}

impl Reporter for TerminalReporter {
    fn step(&self, message: &str) {
        self.line(&format!("==> {message}"));
    }

    fn warn(&self, message: &str) {
        self.line(&format!("warning: {message}"));
    }

    fn deployment(&self, job: &str, deployment: &Deployment) {
        let short: String = deployment.id.chars().take(8).collect();
        match &self.bars {
            Some(bars) => {
                let mut group_bars = self.group_bars.lock().unwrap();
                for (group, state) in &deployment.task_groups {
                    let bar = group_bars.entry((job.to_string(), group.clone())).or_insert_with(|| {
                        let bar = bars.add(ProgressBar::new(state.desired_total.max(1)));
                        bar.set_style(
                            ProgressStyle::with_template("  {prefix:>24} [{bar:20}] {msg}")
                                .expect("a valid template")
                                .progress_chars("=> "),
                        );
                        bar.set_prefix(format!("{job}/{group}"));
                        bar.enable_steady_tick(Duration::from_millis(200));
                        bar
                    });
                    bar.set_length(state.desired_total.max(1));
                    bar.set_position(state.healthy_allocs);
                    bar.set_message(group_message(
                        group,
                        state.placed_allocs,
                        state.desired_total,
                        state.healthy_allocs,
                        state.unhealthy_allocs,
                    ));
                    if deployment.is_terminal() {
                        bar.finish_with_message(format!(
                            "{} — deployment {}",
                            group_message(group, state.placed_allocs, state.desired_total, state.healthy_allocs, state.unhealthy_allocs),
                            deployment.status
                        ));
                    }
                }
            }
            None => {
                for (group, state) in &deployment.task_groups {
                    self.progress_line(
                        &format!("{job}/{group}"),
                        format!(
                            "    {job} {} (deployment {short})",
                            group_message(group, state.placed_allocs, state.desired_total, state.healthy_allocs, state.unhealthy_allocs)
                        ),
                    );
                }
                if deployment.is_terminal() {
                    self.line(&format!("    {job}: deployment {short} {}: {}", deployment.status, deployment.status_description));
                }
            }
        }
    }

    fn primary_wait(&self, passing_primaries: usize, passing_members: usize, members: usize) {
        self.progress_line(
            "consul",
            format!("    Consul: {passing_primaries} passing primary, {passing_members}/{members} members passing"),
        );
    }
}

fn sign(diff_type: DiffType) -> &'static str {
    match diff_type {
        DiffType::Added => "+",
        DiffType::Deleted => "-",
        DiffType::Edited => "+/-",
        DiffType::None => " ",
    }
}

/// Fields a plan must never show the value of: templates carry secret *expressions* only,
/// but a stack may put anything into an environment map, so values are elided by name.
fn shown_value(name: &str, value: &str) -> String {
    let lower = name.to_ascii_lowercase();
    if ["password", "secret", "token", "key"].iter().any(|w| lower.contains(w)) {
        "(hidden)".into()
    } else if value.len() > 60 || value.contains('\n') {
        let first: String = value.lines().next().unwrap_or_default().chars().take(40).collect();
        format!("{first:?}… ({} bytes)", value.len())
    } else {
        format!("{value:?}")
    }
}

fn field_line(out: &mut String, indent: usize, field: &FieldDiff) {
    let pad = " ".repeat(indent);
    let value = match field.diff_type {
        DiffType::Added => shown_value(&field.name, &field.new),
        DiffType::Deleted => shown_value(&field.name, &field.old),
        _ => format!("{} => {}", shown_value(&field.name, &field.old), shown_value(&field.name, &field.new)),
    };
    let _ = writeln!(out, "{pad}{} {}: {value}", sign(field.diff_type), field.name);
}

fn object_lines(out: &mut String, indent: usize, object: &ObjectDiff) {
    let pad = " ".repeat(indent);
    let _ = writeln!(out, "{pad}{} {} {{", sign(object.diff_type), object.name);
    for field in &object.fields {
        field_line(out, indent + 2, field);
    }
    for nested in &object.objects {
        object_lines(out, indent + 2, nested);
    }
    let _ = writeln!(out, "{pad}  }}");
}

/// The diff of one job, Nomad-style: job, task groups with their update counts, tasks.
/// `verbose` adds the field and object diffs (only for jobs that change: an added job's
/// fields would be the whole job).
fn diff_text(out: &mut String, diff: &JobDiff, verbose: bool) {
    let _ = writeln!(out, "{} Job: \"{}\"", sign(diff.diff_type), diff.id);
    if verbose {
        details(out, 2, &diff.fields, &diff.objects);
    }
    for group in &diff.task_groups {
        let counts: Vec<String> = group.updates.iter().map(|(kind, n)| format!("{n} {kind}")).collect();
        let counts = if counts.is_empty() { String::new() } else { format!(" ({})", counts.join(", ")) };
        let _ = writeln!(out, "{} Task Group: \"{}\"{counts}", sign(group.diff_type), group.name);
        if verbose {
            details(out, 2, &group.fields, &group.objects);
        }
        for task in &group.tasks {
            let notes = if task.annotations.is_empty() { String::new() } else { format!(" ({})", task.annotations.join(", ")) };
            let _ = writeln!(out, "  {} Task: \"{}\"{notes}", sign(task.diff_type), task.name);
            if verbose {
                details(out, 4, &task.fields, &task.objects);
            }
        }
    }
}

/// The field and object diffs under a job, group or task line.
fn details(out: &mut String, indent: usize, fields: &[FieldDiff], objects: &[ObjectDiff]) {
    for field in fields {
        field_line(out, indent, field);
    }
    for object in objects {
        object_lines(out, indent, object);
    }
}

/// Colours a plan's lines as `nomad job plan` does: additions green, edits yellow, removals
/// red, by the sign that starts the line (after its indentation or a `path:` label).
pub fn colored_plan(text: &str) -> String {
    const GREEN: &str = "\x1b[32m";
    const YELLOW: &str = "\x1b[33m";
    const RED: &str = "\x1b[31m";
    const RESET: &str = "\x1b[0m";
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for line in text.lines() {
        let body = line.trim_start();
        let body = body.split_once(": ").filter(|(label, _)| !label.contains(' ')).map_or(body, |(_, rest)| rest);
        let color = if body.starts_with("+/-") {
            Some(YELLOW)
        } else if body.starts_with('+') {
            Some(GREEN)
        } else if body.starts_with('-') {
            Some(RED)
        } else {
            None
        };
        match color {
            Some(color) => {
                let _ = writeln!(out, "{color}{line}{RESET}");
            }
            None => {
                let _ = writeln!(out, "{line}");
            }
        }
    }
    out
}

pub fn plan_text(plan: &Plan, verbose: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Cluster \"{}\"\n", plan.cluster);
    let _ = writeln!(out, "Secrets (key names only; values are never shown):");
    for secret in &plan.secrets {
        let what = match secret.action {
            SecretAction::Create => format!("+ create with {}", secret.keys_to_add.join(", ")),
            SecretAction::Extend => format!("+/- add {}", secret.keys_to_add.join(", ")),
            SecretAction::UpToDate => "  up to date".into(),
            SecretAction::External => format!("  in Vault (not written by pgnomad): {}", secret.keys_to_add.join(", ")),
        };
        let _ = writeln!(out, "  {}: {what}", secret.path);
    }
    if !plan.volumes.is_empty() {
        let _ = writeln!(out, "\nCSI volumes:");
        for volume in &plan.volumes {
            let what = match volume.action {
                VolumeAction::Create => "+ create",
                VolumeAction::Exists => "  exists (left as it is)",
            };
            let _ = writeln!(out, "  {}: {what}", volume.id);
        }
    }
    for job in &plan.jobs {
        out.push('\n');
        match &job.diff {
            Some(diff) => diff_text(&mut out, diff, verbose && job.change == JobChange::Changed),
            None => {
                let _ = writeln!(out, "  Job: \"{}\"", job.id);
            }
        }
        let change = match job.change {
            JobChange::Added => "new job",
            JobChange::Changed => "changes",
            JobChange::Unchanged => "no changes",
        };
        let _ = writeln!(out, "  => {change}; check index {}", job.check_index);
        for (group, reason) in &job.placement_failures {
            // Nomad 2.0 says "missing CSI volume(s) X", 1.x "missing CSI Volume X".
            let pending_volume = reason.to_ascii_lowercase().starts_with("missing csi volume")
                && plan.volumes.iter().any(|v| v.action == VolumeAction::Create && reason.contains(&v.id));
            let note = if pending_volume { " (run creates the volume first)" } else { "" };
            let _ = writeln!(out, "  ! group {group} cannot be placed now: {reason}{note}");
        }
        if !job.warnings.is_empty() {
            let _ = writeln!(out, "  warning: {}", job.warnings.trim());
        }
    }
    if !plan.problems.is_empty() {
        let _ = writeln!(out, "\nProblems (`pgnomad run` will refuse until they are solved):");
        for problem in &plan.problems {
            let _ = writeln!(out, "  - {problem}");
        }
    }
    let _ = writeln!(out, "\n{}", if plan.has_changes() { "Run `pgnomad run` to apply these changes." } else { "No changes." });
    out
}

pub fn run_text(summary: &RunSummary) -> String {
    let mut out = String::new();
    let registered: Vec<&str> = summary.jobs.iter().filter(|j| j.action == JobAction::Registered).map(|j| j.id.as_str()).collect();
    let written = summary.secrets.iter().filter(|s| matches!(s.action, SecretAction::Create | SecretAction::Extend)).count();
    let created = summary.volumes.iter().filter(|v| v.action == VolumeAction::Create).count();
    if registered.is_empty() && written == 0 && created == 0 {
        let _ = writeln!(out, "cluster \"{}\" is up to date; nothing was registered", summary.cluster);
    } else {
        let _ = writeln!(
            out,
            "cluster \"{}\": {written} secret variable(s) written, {created} volume(s) created, {} job(s) registered{}",
            summary.cluster,
            registered.len(),
            if registered.is_empty() { String::new() } else { format!(" ({})", registered.join(", ")) }
        );
    }
    for job in &summary.jobs {
        if let Some(deployment) = &job.deployment {
            let short: String = deployment.id.chars().take(8).collect();
            let _ = writeln!(out, "  {}: deployment {short} {}", job.id, deployment.status);
        }
    }
    out
}

fn known<T: std::fmt::Display>(value: &Known<T>) -> String {
    match value {
        Known::Known(v) => v.to_string(),
        Known::Unknown(why) => format!("unknown ({why})"),
    }
}

pub fn status_text(status: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Cluster \"{}\"\n\nJobs", status.cluster);
    for job in &status.jobs {
        let state = match &job.owner {
            crate::deploy::Owner::Absent => "not registered".to_string(),
            crate::deploy::Owner::Other(owner) => {
                format!("exists but is not this cluster's ({})", owner.as_deref().unwrap_or("no pgnomad meta"))
            }
            crate::deploy::Owner::Ours => job.status.clone(),
        };
        let deployment = job
            .deployment
            .as_ref()
            .map(|d| format!(", deployment {} {}", d.id.chars().take(8).collect::<String>(), d.status))
            .unwrap_or_default();
        let _ = writeln!(out, "  {:<28} {state}{deployment}", job.id);
        for alloc in &job.allocations {
            let health = match alloc.healthy {
                Some(true) => "healthy",
                Some(false) => "unhealthy",
                None => "-",
            };
            let _ = writeln!(out, "    {:<36} {} {:<9} {health} (v{})", alloc.name, alloc.id, alloc.client_status, alloc.job_version);
        }
    }
    let _ = writeln!(out, "\nMembers");
    for member in &status.members {
        let lag = match &member.lag_bytes {
            Known::Known(Some(bytes)) => format!("{bytes} bytes"),
            Known::Known(None) => "-".into(),
            Known::Unknown(why) => format!("unknown ({why})"),
        };
        let timeline = match &member.timeline {
            Known::Known(Some(t)) => t.to_string(),
            Known::Known(None) => "-".into(),
            Known::Unknown(why) => format!("unknown ({why})"),
        };
        let _ = writeln!(
            out,
            "  {}: allocation {}, Consul {}, role {}, state {}, timeline {}, lag {}",
            member.name,
            member.allocation,
            match &member.consul_passing {
                Known::Known(true) => "passing".to_string(),
                Known::Known(false) => "not passing".to_string(),
                Known::Unknown(why) => format!("unknown ({why})"),
            },
            known(&member.role),
            known(&member.state),
            timeline,
            lag
        );
    }
    let _ = writeln!(out, "\nPgBouncer");
    match &status.pgbouncer {
        Known::Known(instances) if instances.is_empty() => {
            let _ = writeln!(out, "  no instance registered in Consul");
        }
        Known::Known(instances) => {
            for instance in instances {
                let _ = writeln!(out, "  {} {}", instance.address, if instance.passing { "passing" } else { "not passing" });
            }
        }
        Known::Unknown(why) => {
            let _ = writeln!(out, "  unknown ({why})");
        }
    }
    if !status.backups.is_empty() {
        let _ = writeln!(out, "\nBackups");
        for backup in &status.backups {
            match (&backup.last_run, &backup.last_status) {
                (Some(run), Some(state)) => {
                    let _ = writeln!(out, "  {:<28} last run {run}: {state}", backup.job);
                }
                _ => {
                    let _ = writeln!(out, "  {:<28} never ran", backup.job);
                }
            }
        }
    }
    out
}

pub fn destroy_targets_text(targets: &DestroyTargets) -> String {
    let mut out = String::new();
    for job in &targets.jobs {
        let _ = writeln!(out, "  job      {job}");
    }
    for (job, why) in &targets.skipped {
        let _ = writeln!(out, "  (left alone: {job} — {why})");
    }
    out
}

pub fn destroy_text(summary: &DestroySummary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "deregistered {} job(s){}",
        summary.deregistered.len(),
        if summary.deregistered.is_empty() { String::new() } else { format!(": {}", summary.deregistered.join(", ")) }
    );
    if !summary.volumes_deleted.is_empty() {
        let _ = writeln!(out, "deleted volumes: {}", summary.volumes_deleted.join(", "));
    }
    if !summary.secrets_deleted.is_empty() {
        let _ = writeln!(out, "deleted variables: {}", summary.secrets_deleted.join(", "));
    }
    out
}

#[cfg(test)]
mod color_tests {
    use super::colored_plan;

    #[test]
    fn plan_lines_are_coloured_by_their_sign() {
        let text = "Cluster \"main\"\n+ Job: \"a\"\n  +/- Task Group: \"g\"\n    - Task: \"t\"\n  nomad/jobs/x: + create with k\n";
        let colored = colored_plan(text);
        assert!(colored.contains("\x1b[32m+ Job: \"a\"\x1b[0m"));
        assert!(colored.contains("\x1b[33m  +/- Task Group"));
        assert!(colored.contains("\x1b[31m    - Task"));
        assert!(colored.contains("\x1b[32m  nomad/jobs/x: + create"));
        assert!(colored.starts_with("Cluster \"main\"\n"), "unsigned lines stay plain");
    }
}
