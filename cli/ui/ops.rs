//! What the user sees of upgrade, switchover, failover and restart: one line per step as it
//! starts and ends, a spinner with the current wait on a terminal, the plan and the final
//! report as text (or JSON on stdout with `--json`).

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::ops::{Reporter, Step, StepOutcome, UpgradePlan, UpgradeReport};

/// Reports on stderr; silent with `quiet` (for `--json`, where stdout carries the report).
pub struct OpsReporter {
    bar: Option<ProgressBar>,
    quiet: bool,
    current: Mutex<Option<(usize, usize)>>,
}

impl OpsReporter {
    pub fn new(quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(ProgressStyle::with_template("{spinner} {prefix}{msg} [{elapsed}]").expect("valid template"));
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        OpsReporter { bar, quiet, current: Mutex::new(None) }
    }

    fn line(&self, text: &str) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Reporter for OpsReporter {
    fn planned(&self, plan: &UpgradePlan) {
        if !plan.steps.is_empty() {
            self.line(&format!("· {} step(s) on {}", plan.steps.len(), plan.target));
        }
    }

    fn step_started(&self, index: usize, total: usize, step: &Step) {
        *self.current.lock().unwrap() = Some((index, total));
        self.line(&format!("[{}/{total}] {step}", index + 1));
        if let Some(bar) = &self.bar {
            bar.set_prefix(format!("[{}/{total}] ", index + 1));
            bar.reset_elapsed();
            bar.set_message(step.to_string());
        }
    }

    fn progress(&self, message: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(message.to_owned());
        }
    }

    fn step_finished(&self, index: usize, _step: &Step, outcome: &StepOutcome) {
        let total = self.current.lock().unwrap().map_or(0, |(_, t)| t);
        let status = serde_json::to_value(&outcome.status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        let detail =
            if outcome.detail.is_empty() { String::new() } else { format!(": {}", outcome.detail.lines().next().unwrap_or_default()) };
        self.line(&format!("[{}/{total}] {status} in {:.1} s{detail}", index + 1, outcome.took.as_secs_f64()));
    }

    fn note(&self, message: &str) {
        self.line(&format!("  · {message}"));
    }
}

/// The step plan, as `--dry-run` prints it.
pub fn upgrade_plan_text(plan: &UpgradePlan) -> String {
    let mut text = String::new();
    if plan.steps.is_empty() {
        text.push_str(&format!("{}: nothing to upgrade; the cluster runs the stack\n", plan.target));
        return text;
    }
    text.push_str(&format!("upgrade of {}:\n", plan.target));
    for c in &plan.changes {
        let from = c.from.as_deref().unwrap_or("(unset)");
        let how = if c.restart { "restart" } else { "reload" };
        text.push_str(&format!("  parameter {} {from} → {} ({how})\n", c.parameter, c.to));
    }
    if !plan.update.is_empty() {
        text.push_str(&format!("  members whose deployment changes: {}\n", plan.update.join(", ")));
    }
    for (i, step) in plan.steps.iter().enumerate() {
        text.push_str(&format!("  {}. {step}\n", i + 1));
    }
    for note in &plan.notes {
        text.push_str(&format!("  note: {note}\n"));
    }
    text
}

/// What was done and what was not.
pub fn upgrade_report_text(report: &UpgradeReport) -> String {
    if report.dry_run || report.steps.is_empty() {
        return upgrade_plan_text(&report.plan);
    }
    let mut text = String::new();
    let verdict = if report.finished() { "upgraded" } else { "upgrade stopped" };
    text.push_str(&format!("{verdict}: {} in {:.1} s\n", report.plan.target, report.took.as_secs_f64()));
    for (i, s) in report.steps.iter().enumerate() {
        let status = serde_json::to_value(&s.outcome.status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        let detail = if s.outcome.detail.is_empty() || s.outcome.status == crate::ops::StepStatus::Failed {
            String::new()
        } else {
            format!(" — {}", s.outcome.detail)
        };
        text.push_str(&format!("  {:>2}. {:<9} {}{detail}\n", i + 1, status, s.description));
    }
    if let Some(s) = &report.switchover {
        text.push_str(&format!("switched over from {} to {}; clients held for {:.2} s\n", s.from, s.to, s.took.as_secs_f64()));
    }
    if !report.finished() {
        text.push_str("PgBouncer is not paused. Fix what failed, then run the same command again: it resumes with what is not done.\n");
    }
    text
}
