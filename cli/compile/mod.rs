//! Stack → artifacts: Nomad jobs, CSI volume specs, ACL policies and secret specs.
//! Pure: no I/O, no clock, no randomness — the same stack always compiles to the same bytes.

mod acl;
mod backup;
mod common;
mod pgadmin;
mod pgbouncer;
mod postgres;
mod repo;
pub mod secrets;
mod volumes;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::runtime::names;
use crate::config::{ConfigError, Facts, NomadRuntime, Packs};
use crate::nomad::job::{CsiVolume, Job};
use crate::stack::{Secrets, Stack};

pub use acl::{AclPolicy, AclSystem};
pub use backup::COMMAND_META as BACKUP_COMMAND_META;
pub use secrets::{Origin, SecretKey};
pub use volumes::member_volume_id;

/// The one meta key on every job pgnomad submits: which cluster owns it. Underscores, not
/// dots: a jobspec `meta` block only takes identifiers, and keys become `NOMAD_META_*`.
///
/// Job meta enters every task's combined meta (Nomad's scheduler/util.go), and a change there
/// replaces every task of the job at once. So job meta holds only what never changes for a
/// deployed cluster; what pgnomad last registered (a content hash, its version) is kept in
/// its own variable (`deploy`), never in a job.
pub const META_CLUSTER: &str = "pgnomad_cluster";

/// Everything a stack compiles to.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// In the order `run` submits them: the repository host (members archive to it from
    /// their first WAL switch), postgres, pgbouncer, pgadmin, backups.
    pub jobs: Vec<CompiledJob>,
    pub volumes: Vec<CsiVolume>,
    pub acl_policies: Vec<AclPolicy>,
    pub secrets: Vec<SecretSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobRole {
    /// The pgBackRest repository host.
    Repo,
    Postgres,
    PgBouncer,
    PgAdmin,
    Backup,
}

#[derive(Debug, Clone)]
pub struct CompiledJob {
    pub role: JobRole,
    pub job: Job,
}

impl CompiledJob {
    pub fn id(&self) -> &str {
        self.job.id.as_deref().unwrap_or_default()
    }
}

/// Where one job's secrets live and which keys it reads (never their values).
#[derive(Debug, Clone, Serialize)]
pub struct SecretSpec {
    pub job: String,
    /// `nomad/jobs/<job>` for Nomad Variables, or the Vault KV path.
    pub path: String,
    pub provider: &'static str,
    pub keys: Vec<SecretKey>,
}

/// One phase of `restore --in-place` on Nomad (cli/ops/nomad_restore.rs): every member group
/// gets a prestart task that runs it on the member's data volume before Patroni starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePhase {
    /// Names the pre-restore data (`pgdata.pre-restore-<attempt>`) and the task's markers.
    pub attempt: String,
    pub mode: RestoreMode,
    /// The member whose task empties the cluster's keys in the DCS (prepare and revert).
    pub wipe_member: String,
    /// The restore's target as pgnomad names it (`to_time 2026-12-01 10:42:07.250000+00`),
    /// and the timeline the cluster led on before: kept in the task's environment so that a
    /// later run can resume the restore from the job alone.
    pub target: String,
    pub led_timeline: Option<u64>,
}

impl RestoreMode {
    pub fn parse(text: &str) -> Option<RestoreMode> {
        [RestoreMode::Prepare, RestoreMode::Finish, RestoreMode::Revert].into_iter().find(|m| m.as_str() == text)
    }
}

/// Ordered as the phases follow one another: a later phase is further along.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RestoreMode {
    /// Moves the data directory aside, so that Patroni's custom bootstrap runs.
    Prepare,
    /// The restore succeeded: removes the data moved aside.
    Finish,
    /// The restore failed: puts the data moved aside back.
    Revert,
}

impl RestoreMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RestoreMode::Prepare => "prepare",
            RestoreMode::Finish => "finish",
            RestoreMode::Revert => "revert",
        }
    }
}

/// Compiles a checked stack with the given pack templates.
pub fn compile(stack: &Stack, packs: &Packs) -> Result<Artifacts, ConfigError> {
    compile_with_restore_phase(stack, packs, None)
}

/// The same, with the member groups running `phase` of an in-place restore first.
pub fn compile_with_restore_phase(stack: &Stack, packs: &Packs, phase: Option<&RestorePhase>) -> Result<Artifacts, ConfigError> {
    if let Some(restore) = &stack.restore {
        // The jobs would bootstrap from a repository they cannot reach: refuse, not render.
        if restore.from.value.ends_with(".hcl") {
            return Err(ConfigError::DevOnly(format!(
                "on Nomad `restore {{ from }}` names the source cluster, not its stack file ({}): the clone reads the source's secrets from its variables and its backups from its repository\n  = help: write `from = \"<the source's cluster name>\"`",
                restore.from.value
            )));
        }
    }
    let facts = Facts::new(stack);
    let runtime = NomadRuntime::for_stack(stack);
    let renderer = packs.renderer(&facts, &runtime);
    let context = common::Context { stack, facts: &facts, renderer: &renderer, runtime: &runtime, restore_phase: phase };

    let mut jobs = Vec::new();
    if facts.backup.repo_host {
        jobs.push(CompiledJob { role: JobRole::Repo, job: repo::job(&context)? });
    }
    jobs.push(CompiledJob { role: JobRole::Postgres, job: postgres::job(&context)? });
    if stack.pgbouncer.enabled {
        jobs.push(CompiledJob { role: JobRole::PgBouncer, job: pgbouncer::job(&context)? });
    }
    if stack.pgadmin.enabled {
        jobs.push(CompiledJob { role: JobRole::PgAdmin, job: pgadmin::job(&context)? });
    }
    if stack.backup.enabled {
        for schedule in &stack.backup.schedules {
            jobs.push(CompiledJob { role: JobRole::Backup, job: backup::job(&context, schedule)? });
        }
        jobs.push(CompiledJob { role: JobRole::Backup, job: backup::ctl_job(&context)? });
    }
    for compiled in &mut jobs {
        stamp(&mut compiled.job, &stack.cluster.name.value);
    }

    let secrets = secret_specs(stack, &facts, &jobs);
    Ok(Artifacts { volumes: volumes::volumes(stack), acl_policies: acl::policies(stack, &jobs), secrets, jobs })
}

/// Ownership meta: which cluster a job belongs to.
fn stamp(job: &mut Job, cluster: &str) {
    job.meta.get_or_insert_with(Default::default).insert(META_CLUSTER.into(), cluster.into());
}

/// A short hash of a job's content, so that `plan` can tell a job pgnomad wrote from one
/// edited behind its back (pgnomad records it when it registers the job).
pub fn content_hash(job: &Job) -> String {
    let content = serde_json::to_vec(job).expect("jobs serialize");
    Sha256::digest(&content).iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn secret_specs(stack: &Stack, facts: &Facts, jobs: &[CompiledJob]) -> Vec<SecretSpec> {
    jobs.iter()
        .map(|compiled| {
            let job = compiled.id().to_owned();
            let keys = match compiled.role {
                JobRole::Repo => secrets::repo_secrets(facts),
                JobRole::Postgres => {
                    let mut keys = secrets::postgres_secrets(facts);
                    keys.extend(secrets::restore_source_secrets(facts));
                    keys
                }
                JobRole::PgBouncer => secrets::pgbouncer_secrets(facts),
                JobRole::PgAdmin => secrets::pgadmin_secrets(facts),
                JobRole::Backup => secrets::backup_secrets(facts),
            };
            let (provider, path) = match &stack.secrets {
                Secrets::NomadVariables => ("nomad-variables", format!("nomad/jobs/{job}")),
                Secrets::Vault { mount, path_prefix, .. } => ("vault", format!("{mount}/data/{path_prefix}/{job}")),
            };
            SecretSpec { job, path, provider, keys }
        })
        .filter(|spec| !spec.keys.is_empty())
        .collect()
}

/// The IDs of a stack's jobs without compiling them (for destroy and status).
pub fn job_ids(stack: &Stack) -> Vec<String> {
    let c = &stack.cluster.name.value;
    let mut ids = Vec::new();
    if stack.backup.enabled && stack.backup.repo.has_repo_host() {
        ids.push(names::repo_job(c));
    }
    ids.push(names::postgres_job(c));
    if stack.pgbouncer.enabled {
        ids.push(names::pgbouncer_job(c));
    }
    if stack.pgadmin.enabled {
        ids.push(names::pgadmin_job(c));
    }
    if stack.backup.enabled {
        ids.extend(stack.backup.schedules.iter().map(|s| names::backup_job(c, s.kind.name())));
        ids.push(names::backup_ctl_job(c));
    }
    ids
}
