//! The double's client nodes: what `GET /v1/nodes` and `GET /v1/node/:id` answer and what the
//! scheduler places allocations on (attributes, meta, resources, drivers, host volumes, CSI
//! node plugins), as a Nomad client fingerprints and registers them.

use std::collections::BTreeMap;

use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq)]
pub struct DriverSpec {
    pub detected: bool,
    pub healthy: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostVolumeSpec {
    pub path: String,
    pub read_only: bool,
}

/// One client node. `NodeSpec::new(name, address)` gives a linux/amd64 node in dc1, pool
/// default, 4000 MHz / 8192 MB, docker + exec + raw_exec healthy, the host volume
/// `pgbackrest` and the CSI node plugin `hostpath`.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    pub name: String,
    pub id: String,
    /// The node's address: `attr.unique.network.ip-address`, the address Consul's catalog
    /// gives its services and where a real client runner's tasks are reached.
    pub address: String,
    pub datacenter: String,
    pub node_pool: String,
    pub node_class: String,
    /// Fingerprinted attributes without the `attr.` prefix (`kernel.name`, `unique.hostname`, …).
    pub attributes: BTreeMap<String, String>,
    /// Client `meta` (`${meta.rack}`).
    pub meta: BTreeMap<String, String>,
    pub cpu_mhz: u64,
    pub memory_mb: u64,
    pub drivers: BTreeMap<String, DriverSpec>,
    pub host_volumes: BTreeMap<String, HostVolumeSpec>,
    /// CSI node plugins running on this node (all healthy).
    pub csi_plugins: Vec<String>,
    /// "ready", "down", "disconnected", "initializing".
    pub status: String,
    /// "eligible" or "ineligible".
    pub eligibility: String,
}

impl NodeSpec {
    pub fn new(name: &str, address: &str) -> Self {
        let ordinal: u64 = name.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0);
        let id = format!("f7476465-4d6e-c0de-0000-{:012x}", ordinal.max(1) + u64::from(crc(name)) * 0x1000);
        let mut attributes = BTreeMap::new();
        for (key, value) in [
            ("kernel.name", "linux"),
            ("kernel.version", "6.1.0"),
            ("os.name", "debian"),
            ("os.version", "12"),
            ("cpu.arch", "amd64"),
            ("cpu.numcores", "4"),
            ("cpu.totalcompute", "4000"),
            ("memory.totalbytes", "8589934592"),
            ("nomad.version", "2.0.6"),
            ("driver.docker", "1"),
            ("driver.docker.version", "27.5.1"),
            ("driver.exec", "1"),
            ("driver.raw_exec", "1"),
            ("consul.version", "1.20.2"),
        ] {
            attributes.insert(key.to_string(), value.to_string());
        }
        attributes.insert("unique.hostname".into(), name.to_string());
        attributes.insert("unique.network.ip-address".into(), address.to_string());
        let healthy = DriverSpec { detected: true, healthy: true };
        NodeSpec {
            name: name.to_string(),
            id,
            address: address.to_string(),
            datacenter: "dc1".into(),
            node_pool: "default".into(),
            node_class: String::new(),
            attributes,
            meta: BTreeMap::new(),
            cpu_mhz: 4000,
            memory_mb: 8192,
            drivers: ["docker", "exec", "raw_exec"].iter().map(|d| (d.to_string(), healthy.clone())).collect(),
            host_volumes: BTreeMap::from([(
                "pgbackrest".to_string(),
                HostVolumeSpec { path: "/srv/nomad/pgbackrest".into(), read_only: false },
            )]),
            csi_plugins: vec!["hostpath".into()],
            status: "ready".into(),
            eligibility: "eligible".into(),
        }
    }

    pub fn with_meta(mut self, key: &str, value: &str) -> Self {
        self.meta.insert(key.into(), value.into());
        self
    }

    /// Changes the address everywhere it shows (the attribute too).
    pub fn with_address(mut self, address: &str) -> Self {
        self.address = address.into();
        self.attributes.insert("unique.network.ip-address".into(), address.into());
        self
    }

    /// The three default clients `double-client-1..3` at 127.0.0.11..13, racks r1..r3.
    pub fn defaults() -> Vec<NodeSpec> {
        (1..=3)
            .map(|i| NodeSpec::new(&format!("double-client-{i}"), &format!("127.0.0.1{i}")).with_meta("rack", &format!("r{i}")))
            .collect()
    }

    /// What a constraint's `${…}` target resolves to on this node (scheduler/feasible
    /// resolveTarget); `None` when it is not set.
    pub fn resolve(&self, target: &str) -> Option<String> {
        let Some(inner) = target.strip_prefix("${").and_then(|t| t.strip_suffix('}')) else { return Some(target.to_string()) };
        match inner {
            "node.unique.id" => Some(self.id.clone()),
            "node.datacenter" => Some(self.datacenter.clone()),
            "node.unique.name" => Some(self.name.clone()),
            "node.class" => Some(self.node_class.clone()),
            "node.pool" => Some(self.node_pool.clone()),
            _ => {
                if let Some(attr) = inner.strip_prefix("attr.") {
                    self.attributes.get(attr).cloned()
                } else if let Some(meta) = inner.strip_prefix("meta.") {
                    self.meta.get(meta).cloned()
                } else {
                    None
                }
            }
        }
    }

    fn drivers_json(&self) -> Value {
        Value::Object(
            self.drivers
                .iter()
                .map(|(name, d)| {
                    let description = if d.healthy { "Healthy" } else if d.detected { "Unhealthy" } else { "Driver not detected" };
                    (
                        name.clone(),
                        json!({"Detected": d.detected, "Healthy": d.healthy, "HealthDescription": description, "Attributes": null, "UpdateTime": "0001-01-01T00:00:00Z"}),
                    )
                })
                .collect(),
        )
    }

    fn host_volumes_json(&self) -> Value {
        Value::Object(
            self.host_volumes
                .iter()
                .map(|(name, v)| (name.clone(), json!({"Name": name, "Path": v.path, "ReadOnly": v.read_only, "ID": ""})))
                .collect(),
        )
    }

    fn resources_json(&self) -> Value {
        json!({
            "Cpu": {"CpuShares": self.cpu_mhz, "TotalCpuCores": 4, "ReservableCpuCores": [0, 1, 2, 3]},
            "Memory": {"MemoryMB": self.memory_mb},
            "Disk": {"DiskMB": 100_000},
            "Networks": [{"Mode": "host", "Device": "eth0", "CIDR": format!("{}/32", self.address), "IP": self.address, "MBits": 1000}],
            "MinDynamicPort": super::sched::MIN_DYNAMIC_PORT, "MaxDynamicPort": super::sched::MAX_DYNAMIC_PORT,
        })
    }

    /// `server.NodeListStub`.
    pub fn stub(&self, index: u64) -> Value {
        json!({
            "Address": self.address, "ID": self.id, "Attributes": self.attributes, "Datacenter": self.datacenter,
            "Name": self.name, "NodePool": self.node_pool, "NodeClass": self.node_class, "Version": "2.0.6",
            "Drain": false, "SchedulingEligibility": self.eligibility, "Status": self.status, "StatusDescription": "",
            "Drivers": self.drivers_json(), "HostVolumes": self.host_volumes_json(),
            "CreateIndex": 1, "ModifyIndex": index,
        })
    }

    /// `server.Node`.
    pub fn full(&self, index: u64) -> Value {
        let plugins: serde_json::Map<String, Value> = self
            .csi_plugins
            .iter()
            .map(|p| {
                (
                    p.clone(),
                    json!({"PluginID": p, "AllocID": "", "Healthy": true, "HealthDescription": "healthy", "UpdateTime": "0001-01-01T00:00:00Z",
                           "Provider": format!("{p}.csi.k8s.io"), "ProviderVersion": "1.15.0", "RequiresControllerPlugin": false,
                           "RequiresTopologies": true}),
                )
            })
            .collect();
        json!({
            "ID": self.id, "SecretID": "", "Datacenter": self.datacenter, "Name": self.name,
            "HTTPAddr": format!("{}:4646", self.address), "TLSEnabled": false, "Attributes": self.attributes,
            "NodeResources": self.resources_json(), "Meta": self.meta, "NodeClass": self.node_class, "NodePool": self.node_pool,
            "ComputedClass": format!("v1:{}", crc(&self.node_class)), "SchedulingEligibility": self.eligibility,
            "Status": self.status, "StatusDescription": "", "StatusUpdatedAt": 0, "Events": null,
            "Drivers": self.drivers_json(), "CSIControllerPlugins": null, "CSINodePlugins": plugins,
            "HostVolumes": self.host_volumes_json(), "HostNetworks": null, "CreateIndex": 1, "ModifyIndex": index, "Drain": false,
        })
    }
}

fn crc(text: &str) -> u32 {
    text.bytes().fold(2166136261u32, |h, b| (h ^ u32::from(b)).wrapping_mul(16777619)) & 0xffff
}
