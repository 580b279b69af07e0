//! ACL policies: what Patroni needs in Consul, and what pgnomad's token needs in Nomad.

use std::fmt::Write as _;

use serde::Serialize;

use super::CompiledJob;
use crate::stack::{Dcs, Stack};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AclSystem {
    Consul,
    Nomad,
}

#[derive(Debug, Clone, Serialize)]
pub struct AclPolicy {
    pub system: AclSystem,
    pub name: String,
    pub description: String,
    /// The policy in the system's own HCL rules language.
    pub rules: String,
}

pub fn policies(stack: &Stack, jobs: &[CompiledJob]) -> Vec<AclPolicy> {
    let c = &stack.cluster.name.value;
    let mut out = Vec::new();
    if stack.patroni.dcs == Dcs::Consul {
        // Exactly what Patroni's Consul DCS touches: its keys under service/<scope>/, the
        // sessions that hold the leader lock, (if ever enabled) its own service entry, and
        // the agent's configuration, which it reads when Consul refuses its session TTL
        // (`adjust_ttl` reads /v1/agent/self for SessionTTLMin).
        out.push(AclPolicy {
            system: AclSystem::Consul,
            name: format!("{c}-patroni"),
            description: format!("Patroni of cluster {c}: DCS keys, leader sessions"),
            rules: format!(
                "key_prefix \"service/{c}/\" {{\n  policy = \"write\"\n}}\n\nsession_prefix \"\" {{\n  policy = \"write\"\n}}\n\nservice_prefix \"{c}\" {{\n  policy = \"write\"\n}}\n\nagent_prefix \"\" {{\n  policy = \"read\"\n}}\n"
            ),
        });
    }
    let ns = &stack.cluster.namespace;
    let mut rules = String::new();
    let _ = writeln!(rules, "namespace \"{ns}\" {{");
    let _ = writeln!(
        rules,
        "  capabilities = [\"list-jobs\", \"read-job\", \"submit-job\", \"dispatch-job\", \"read-logs\", \"csi-list-volume\", \"csi-read-volume\", \"csi-write-volume\"]"
    );
    let _ = writeln!(rules, "\n  variables {{");
    // `list`: run and destroy find the cluster's variables with one `GET /v1/vars?prefix=`.
    for job in jobs {
        let _ = writeln!(
            rules,
            "    path \"nomad/jobs/{}\" {{\n      capabilities = [\"write\", \"read\", \"destroy\", \"list\"]\n    }}",
            job.id()
        );
    }
    // pgnomad's own copy of the TLS set, which no workload reads (see deploy::secrets).
    let _ = writeln!(rules, "    path \"pgnomad/{c}/*\" {{\n      capabilities = [\"write\", \"read\", \"destroy\", \"list\"]\n    }}");
    // A clone copies its restore source's role passwords, cipher pass and client certificate
    // (deploy::secrets::read_source): read only, and only those two.
    if let Some(source) = stack.restore_source() {
        for path in [format!("nomad/jobs/{}", crate::config::runtime::names::postgres_job(source)), format!("pgnomad/{source}/tls")] {
            let _ = writeln!(rules, "    path \"{path}\" {{\n      capabilities = [\"read\"]\n    }}");
        }
    }
    let _ = writeln!(rules, "  }}\n}}\n\nnode {{\n  policy = \"read\"\n}}\n\nplugin {{\n  policy = \"read\"\n}}");
    out.push(AclPolicy {
        system: AclSystem::Nomad,
        name: format!("{c}-pgnomad"),
        description: format!("what pgnomad needs to plan, run, inspect and destroy cluster {c}"),
        rules,
    });
    out
}
