//! `pgnomad backup`, `backups` and `restore` for a cluster on Nomad: the periodic backup job
//! forced, `<c>-backup-ctl` dispatched for pgBackRest's `info` and `check`, and the clone's
//! stack file written (`ops::nomad_backup`). The views are `pgnomad dev`'s.

use std::time::Duration;

use crate::ops::nomad_backup::NomadBackups;
use crate::ops::restore::Target;

use super::dev::{print_backup_done, print_backups, Progress};
use super::run::parse_duration;
use super::upgrade::ops_failure;
use super::{block_on, deploy_failure, DeployArgs, DeployInputs, Failure};
use crate::deploy::{self, PlanScope, Quiet, Reporter, RunOptions};
use crate::ui::TerminalReporter;

#[derive(Debug, clap::Args)]
#[command(after_help = "Exit codes: 0 taken, 1 refused (another backup runs, no standby, no such schedule), \
2 Nomad or the repository unreachable, 3 the backup failed or timed out.")]
pub struct BackupArgs {
    #[command(flatten)]
    inputs: DeployArgs,
    /// The backup type: forces the periodic job `<cluster>-backup-<type>`.
    #[arg(long = "type", value_parser = ["full", "diff", "incr"], value_name = "TYPE", default_value = "full")]
    kind: String,
    /// How long to follow the backup.
    #[arg(long, value_name = "D", default_value = "30m", value_parser = parse_duration)]
    timeout: Duration,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Exit codes: 0 listed, 1 refused (stanza mismatch), 2 Nomad or the repository unreachable, \
3 pgBackRest failed or timed out.")]
pub struct BackupsArgs {
    #[command(flatten)]
    inputs: DeployArgs,
    #[arg(long, value_name = "D", default_value = "5m", value_parser = parse_duration)]
    timeout: Duration,
    #[arg(long)]
    json: bool,
}

/// Where a restore goes, for `restore` and `dev restore`: a new cluster, or this one in place.
#[derive(Debug, clap::Args)]
pub struct RestoreDestination {
    /// The new cluster's name; its stack file is NAME.hcl beside this one.
    #[arg(long, value_name = "NAME", required_unless_present = "in_place", conflicts_with = "in_place")]
    pub into: Option<String>,
    /// Restore this cluster itself (it stops; everything written after the target is lost).
    #[arg(long)]
    pub in_place: bool,
    /// With --in-place: do not ask.
    #[arg(long, requires = "in_place")]
    pub yes: bool,
}

/// Where a restore's recovery stops: one of the four, for `restore` and `dev restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreTargetArgs {
    /// Recover to this time: RFC 3339 (2026-12-01T10:42:07.25Z) or PostgreSQL's text, with a zone.
    #[arg(long, value_name = "T", group = "target")]
    pub to_time: Option<String>,
    /// Recover to this WAL location (0/3000060).
    #[arg(long, value_name = "LSN", group = "target")]
    pub to_lsn: Option<String>,
    /// Recover to this transaction id.
    #[arg(long, value_name = "XID", group = "target")]
    pub to_xid: Option<String>,
    /// Restore this backup to its consistent point.
    #[arg(long, value_name = "LABEL", group = "target")]
    pub backup: Option<String>,
}

impl RestoreTargetArgs {
    pub fn target(&self) -> Result<Target, Failure> {
        Ok(match (&self.to_time, &self.to_lsn, &self.to_xid, &self.backup) {
            (Some(t), ..) => Target::time(t).map_err(|e| ops_failure(&e))?,
            (_, Some(lsn), ..) => Target::Lsn(lsn.clone()),
            (_, _, Some(xid), _) => Target::Xid(xid.clone()),
            (_, _, _, Some(label)) => Target::Backup(label.clone()),
            _ => {
                return Err(Failure::BadInput(
                    "error: say where recovery stops: --to-time T, --to-lsn LSN, --to-xid XID or --backup LABEL".into(),
                ))
            }
        })
    }
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Writes NAME.hcl beside the stack file (this stack renamed, with a `restore` block) and brings \
the clone up as `pgnomad run -f NAME.hcl` does; if that stops, `pgnomad run -f NAME.hcl` resumes it.

With --in-place --yes the cluster itself goes back to the target: its members stop, each member's data \
moves aside on its volume, Patroni's custom bootstrap restores the cluster's own repository, the replicas \
are cloned anew; then the groups roll, one at a time, to remove the data moved aside. If the restore \
fails the data is put back and the cluster runs on it again.

Exit codes: 0 restored, 1 refused (target outside the window, NAME exists, --yes missing), \
2 Nomad or the repository unreachable, 3 the WAL could not be archived in time, the clone did not converge, \
or the in-place restore failed (the cluster then runs on its pre-restore data).")]
pub struct RestoreArgs {
    #[command(flatten)]
    inputs: DeployArgs,
    #[command(flatten)]
    destination: RestoreDestination,
    #[command(flatten)]
    target: RestoreTargetArgs,
    /// How long to wait for each step: the WAL archived, each of the clone's jobs converged.
    #[arg(long, value_name = "D", default_value = "15m", value_parser = parse_duration)]
    timeout: Duration,
    #[arg(long)]
    json: bool,
}

fn open(inputs: &DeployArgs) -> Result<(NomadBackups<crate::transport::HttpTransport>, DeployInputs), Failure> {
    let loaded = inputs.load()?;
    let second = super::connect(&inputs.connection, &loaded.env)?;
    let backups = NomadBackups::new(second.nomad, loaded.checked.stack.clone()).map_err(|e| ops_failure(&e))?;
    Ok((backups, loaded))
}

pub fn backup(args: BackupArgs) -> Result<(), Failure> {
    let (backups, DeployInputs { checked, packs, cluster, .. }) = open(&args.inputs)?;
    // Patroni's view, to say which member the files come from.
    let target = crate::ops::nomad::NomadTarget::connect(cluster, checked.stack, packs).map_err(|e| ops_failure(&e))?;
    let progress = Progress::new();
    let result = backups.backup(&args.kind, || crate::ops::observe(&target), args.timeout, &progress);
    progress.finish();
    print_backup_done(&result.map_err(|e| ops_failure(&e))?, args.json);
    Ok(())
}

pub fn backups(args: BackupsArgs) -> Result<(), Failure> {
    let (backups, _) = open(&args.inputs)?;
    let progress = Progress::new();
    let result = backups.backups(None, args.timeout, &progress);
    progress.finish();
    let list = result.map_err(|e| ops_failure(&e))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list).expect("serializes"));
    } else {
        print_backups(&list);
    }
    Ok(())
}

pub fn restore(args: RestoreArgs) -> Result<(), Failure> {
    let target = args.target.target()?;
    let Some(into) = &args.destination.into else { return restore_in_place(&args, &target) };
    let (backups, DeployInputs { packs, operator, cluster, .. }) = open(&args.inputs)?;
    let progress = Progress::new();
    let result = backups.restore_into(&args.inputs.stack.path, into, &target, args.timeout, &progress);
    progress.finish();
    let restored = result.map_err(|e| ops_failure(&e))?;

    // The clone comes up as `run -f NAME.hcl` brings it up: Patroni's custom bootstrap on
    // its first member restores the source's backups to the target.
    let clone = super::load_stack(&restored.stack_file)?;
    let resume = format!(
        "{} is written; `pgnomad run -f {}` resumes bringing {} up",
        restored.stack_file.display(),
        restored.stack_file.display(),
        restored.cluster
    );
    let options = RunOptions { detach: false, scope: PlanScope::default(), timeout: args.timeout, operator };
    let terminal = TerminalReporter::new();
    let reporter: &dyn Reporter = if args.json { &Quiet } else { &terminal };
    let summary = block_on(deploy::run(&cluster, &clone.stack, &packs, &options, reporter))?
        .map_err(|error| deploy_failure(error).with_note(&resume))?;
    super::run::apply_parameters(cluster, clone.stack, packs, args.json);
    if args.json {
        let mut value = serde_json::to_value(&restored).expect("serializes");
        value["run"] = serde_json::to_value(&summary).expect("summaries serialize");
        println!("{}", serde_json::to_string_pretty(&value).expect("serializes"));
    } else {
        print!("{}", crate::ui::run_text(&summary));
        println!(
            "restored {} from the source's backups (recoverable {} … {}); every command takes -f {} for it",
            restored.cluster,
            restored.window.oldest_time,
            restored.window.newest_time,
            restored.stack_file.display()
        );
    }
    Ok(())
}

/// `restore --in-place`: confirmed first, then the operation on Nomad's site.
fn restore_in_place(args: &RestoreArgs, to: &Target) -> Result<(), Failure> {
    let (backups, DeployInputs { checked, packs, cluster, .. }) = open(&args.inputs)?;
    let name = checked.stack.cluster.name.value.clone();
    let question = format!("restore {name} in place? Its members stop, and everything written after the target is lost");
    if !args.destination.yes && !super::dev::confirm(&question) {
        return Err(Failure::BadInput(format!(
            "error: not confirmed: an in-place restore stops {name} and loses everything written after the target\n  = help: pass --yes to restore in place without asking"
        )));
    }
    let target = crate::ops::nomad::NomadTarget::connect(cluster, checked.stack, packs).map_err(|e| ops_failure(&e))?;
    // Names the data moved aside on each volume: distinct per try, readable by a person.
    let attempt = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default().to_string();
    let mut site = crate::ops::nomad_restore::NomadInPlace::new(target, &backups, &attempt);
    let progress = Progress::new();
    let result = crate::ops::restore::restore_in_place(&mut site, to, args.timeout, &progress);
    progress.finish();
    let restored = result.map_err(|e| ops_failure(&e))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&restored).expect("serializes"));
    } else {
        println!(
            "restored {} in place in {:.1} s{}: {} leads on timeline {}{}",
            restored.cluster,
            restored.took.as_secs_f64(),
            restored.resumed.as_ref().map(|a| format!(" (resumed attempt {a})")).unwrap_or_default(),
            restored.leader,
            restored.timeline.map(|t| t.to_string()).unwrap_or_else(|| "?".into()),
            restored.window.as_ref().map(|w| format!(" (recoverable {} … {})", w.oldest_time, w.newest_time)).unwrap_or_default()
        );
    }
    Ok(())
}
