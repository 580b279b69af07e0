//! Artifacts → text: JSON bodies exactly as Nomad's HTTP API takes them, HCL jobspecs and
//! volume specs as the nomad CLI takes them, ACL policies, and the list of secrets.
//! Pure: the command layer writes the files.

pub mod hcl;

use std::fmt::Write as _;

use serde_json::json;

use crate::compile::{AclSystem, Artifacts};
use crate::nomad::job::{CsiVolume, Job};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Hcl,
    Json,
    Both,
}

impl Format {
    fn hcl(self) -> bool {
        matches!(self, Format::Hcl | Format::Both)
    }
    fn json(self) -> bool {
        matches!(self, Format::Json | Format::Both)
    }
}

/// One output file: a path relative to the output directory, and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFile {
    pub path: String,
    pub text: String,
}

/// `{"Job": {…}}` as `POST /v1/jobs` takes it.
pub fn job_register_json(job: &Job) -> String {
    #[derive(serde::Serialize)]
    struct Register<'a> {
        #[serde(rename = "Job")]
        job: &'a Job,
    }
    let mut text = serde_json::to_string_pretty(&Register { job }).expect("jobs serialize");
    text.push('\n');
    text
}

/// `{"Volumes": [{…}]}` as `PUT /v1/volume/csi/:id/create` takes it.
pub fn volume_create_json(volume: &CsiVolume) -> String {
    pretty(&json!({ "Volumes": [volume] }))
}

fn pretty(value: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("values serialize");
    text.push('\n');
    text
}

/// Every file of a render, in a stable order.
pub fn files(artifacts: &Artifacts, format: Format) -> Vec<OutputFile> {
    let mut out = Vec::new();
    for compiled in &artifacts.jobs {
        let id = compiled.id();
        if format.hcl() {
            out.push(OutputFile { path: format!("jobs/{id}.nomad.hcl"), text: hcl::job(&compiled.job) });
        }
        if format.json() {
            out.push(OutputFile { path: format!("jobs/{id}.json"), text: job_register_json(&compiled.job) });
        }
    }
    for volume in &artifacts.volumes {
        let id = volume.id.as_deref().unwrap_or_default();
        if format.hcl() {
            out.push(OutputFile { path: format!("volumes/{id}.volume.hcl"), text: volume_hcl(volume) });
        }
        if format.json() {
            out.push(OutputFile { path: format!("volumes/{id}.json"), text: volume_create_json(volume) });
        }
    }
    for policy in &artifacts.acl_policies {
        let system = match policy.system {
            AclSystem::Consul => "consul",
            AclSystem::Nomad => "nomad",
        };
        let text = format!(
            "# {}\n# Apply with: {system} acl policy create -name {} -rules @{}.{system}.hcl\n\n{}",
            policy.description, policy.name, policy.name, policy.rules
        );
        out.push(OutputFile { path: format!("acl/{}.{system}.hcl", policy.name), text });
    }
    out.push(OutputFile { path: "secrets.json".into(), text: pretty(&json!({ "secrets": artifacts.secrets })) });
    out
}

/// A volume spec for `nomad volume create`.
pub fn volume_hcl(volume: &CsiVolume) -> String {
    let q = |s: &Option<String>| hcl::quote(s.as_deref().unwrap_or_default());
    let mut out = String::new();
    let _ = writeln!(out, "id        = {}", q(&volume.id));
    let _ = writeln!(out, "name      = {}", q(&volume.name));
    let _ = writeln!(out, "namespace = {}", q(&volume.namespace));
    let _ = writeln!(out, "type      = \"csi\"");
    let _ = writeln!(out, "plugin_id = {}", q(&volume.plugin_id));
    let _ = writeln!(out, "capacity_min = {}", hcl::quote(&human_size(volume.requested_capacity_min.unwrap_or_default())));
    let _ = writeln!(out, "capacity_max = {}", hcl::quote(&human_size(volume.requested_capacity_max.unwrap_or_default())));
    for capability in volume.requested_capabilities.iter().flatten() {
        let _ = writeln!(
            out,
            "\ncapability {{\n  access_mode     = {}\n  attachment_mode = {}\n}}",
            q(&capability.access_mode),
            q(&capability.attachment_mode)
        );
    }
    if let Some(options) = &volume.mount_options {
        let flags = options.mount_flags.iter().flatten().map(|f| hcl::quote(f)).collect::<Vec<_>>().join(", ");
        let _ = writeln!(out, "\nmount_options {{\n  fs_type     = {}\n  mount_flags = [{flags}]\n}}", q(&options.fs_type));
    }
    out
}

/// Bytes in the largest binary unit that divides them, as Nomad reads sizes.
pub fn human_size(bytes: i64) -> String {
    for (unit, size) in [("TiB", 1_i64 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= size && bytes % size == 0 {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}B")
}
