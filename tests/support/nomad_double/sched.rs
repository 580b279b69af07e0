//! Placement as Nomad's scheduler does it (scheduler/feasible: feasible.go, rank.go,
//! spread.go, propertyset.go), written from reading it: ready nodes of the job's datacenters
//! and node pool; then job constraints, drivers, group and task constraints, host volumes,
//! CSI volumes, distinct_hosts, distinct_property; then ports and resources (binpack), job
//! anti-affinity and spread; the best score wins. Every filtered or exhausted node is counted
//! in an AllocMetric with Nomad's reasons. And `tasks_updated` (scheduler/util.go): what makes
//! an update destructive.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::nodes::NodeSpec;
use super::state::{list, str_of, State};

pub const MIN_DYNAMIC_PORT: u16 = 20000;
pub const MAX_DYNAMIC_PORT: u16 = 32000;
/// Nomad's default task resources (structs.DefaultResources).
const DEFAULT_CPU: u64 = 100;
const DEFAULT_MEMORY_MB: u64 = 300;

/// A port the scheduler assigned to an allocation.
#[derive(Debug, Clone, PartialEq)]
pub struct AssignedPort {
    pub label: String,
    /// The host port (`NOMAD_HOST_PORT_<label>`).
    pub value: u16,
    /// The port inside the task's network namespace (`to`; 0 when not mapped).
    pub to: i64,
    /// The node's address (`NOMAD_HOST_IP_<label>`).
    pub host_ip: String,
    /// A static (`static = …`) port rather than a dynamic one.
    pub reserved: bool,
}

/// `structs.AllocMetric`, as the eval's FailedTGAllocs carries it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metric {
    pub nodes_evaluated: u64,
    pub nodes_filtered: u64,
    pub nodes_in_pool: u64,
    pub node_pool: String,
    pub nodes_available: BTreeMap<String, u64>,
    pub class_filtered: BTreeMap<String, u64>,
    pub constraint_filtered: BTreeMap<String, u64>,
    pub nodes_exhausted: u64,
    pub class_exhausted: BTreeMap<String, u64>,
    pub dimension_exhausted: BTreeMap<String, u64>,
    pub coalesced_failures: u64,
}

fn map_or_null(map: &BTreeMap<String, u64>) -> Value {
    if map.is_empty() {
        Value::Null
    } else {
        json!(map)
    }
}

impl Metric {
    fn filter(&mut self, node: &NodeSpec, reason: &str) {
        self.nodes_filtered += 1;
        if !node.node_class.is_empty() {
            *self.class_filtered.entry(node.node_class.clone()).or_default() += 1;
        }
        *self.constraint_filtered.entry(reason.to_string()).or_default() += 1;
    }

    fn exhaust(&mut self, node: &NodeSpec, dimension: &str) {
        self.nodes_exhausted += 1;
        if !node.node_class.is_empty() {
            *self.class_exhausted.entry(node.node_class.clone()).or_default() += 1;
        }
        *self.dimension_exhausted.entry(dimension.to_string()).or_default() += 1;
    }

    pub fn to_json(&self) -> Value {
        json!({
            "NodesEvaluated": self.nodes_evaluated, "NodesFiltered": self.nodes_filtered, "NodesInPool": self.nodes_in_pool,
            "NodePool": self.node_pool, "NodesAvailable": map_or_null(&self.nodes_available),
            "ClassFiltered": map_or_null(&self.class_filtered), "ConstraintFiltered": map_or_null(&self.constraint_filtered),
            "NodesExhausted": self.nodes_exhausted, "ClassExhausted": map_or_null(&self.class_exhausted),
            "DimensionExhausted": map_or_null(&self.dimension_exhausted), "QuotaExhausted": null, "ResourcesExhausted": null,
            "Scores": null, "ScoreMetaData": null, "AllocationTime": 41_000, "CoalescedFailures": self.coalesced_failures,
        })
    }
}

/// Where one allocation goes.
#[derive(Debug, Clone)]
pub struct Placed {
    pub node: usize,
    pub ports: Vec<AssignedPort>,
    pub cpu: u64,
    pub memory_mb: u64,
}

/// CPU (MHz) and memory (MB) a group asks for: the sum of its tasks'.
pub fn group_resources(group: &Value) -> (u64, u64) {
    list(group, "Tasks").iter().fold((0, 0), |(cpu, memory), task| {
        let resources = task.get("Resources");
        let get =
            |key: &str, default: u64| resources.and_then(|r| r.get(key)).and_then(Value::as_u64).filter(|v| *v > 0).unwrap_or(default);
        (cpu + get("CPU", DEFAULT_CPU), memory + get("MemoryMB", DEFAULT_MEMORY_MB))
    })
}

/// The CSI volume IDs allocation `index` of `group` claims (`per_alloc` adds `[index]`).
pub fn csi_sources(group: &Value, index: u64) -> Vec<(String, Value)> {
    let Some(volumes) = group.get("Volumes").and_then(Value::as_object) else { return vec![] };
    volumes
        .values()
        .filter(|v| str_of(v, "Type") == "csi")
        .map(|v| {
            let source = str_of(v, "Source");
            let id =
                if v.get("PerAlloc").and_then(Value::as_bool).unwrap_or(false) { format!("{source}[{index}]") } else { source.to_string() };
            (id, v.clone())
        })
        .collect()
}

fn constraints_of(value: &Value) -> Vec<&Value> {
    list(value, "Constraints").iter().collect()
}

fn operand(constraint: &Value) -> &str {
    match str_of(constraint, "Operand") {
        "" => "=",
        other => other,
    }
}

/// `Constraint.String()`: "LTarget Operand RTarget".
fn constraint_text(constraint: &Value) -> String {
    format!("{} {} {}", str_of(constraint, "LTarget"), operand(constraint), str_of(constraint, "RTarget"))
}

fn enabled(constraint: &Value) -> bool {
    !matches!(str_of(constraint, "RTarget"), "false" | "0")
}

/// One constraint against one node (checkConstraint), distinct_* excluded.
pub fn constraint_holds(node: &NodeSpec, constraint: &Value) -> bool {
    let left = node.resolve(str_of(constraint, "LTarget"));
    let right = node.resolve(str_of(constraint, "RTarget"));
    let both = || left.as_deref().zip(right.as_deref());
    match operand(constraint) {
        "distinct_hosts" | "distinct_property" => true,
        "=" | "==" | "is" => both().is_some_and(|(l, r)| l == r),
        "!=" | "not" => left != right,
        op @ ("<" | "<=" | ">" | ">=") => both().is_some_and(|(l, r)| ordered(op, l, r)),
        "is_set" => left.is_some(),
        "is_not_set" => left.is_none(),
        "regexp" => both().is_some_and(|(l, r)| regex_find(r, l)),
        "set_contains" | "set_contains_all" => both().is_some_and(|(l, r)| {
            let have: Vec<&str> = l.split(',').map(str::trim).collect();
            r.split(',').map(str::trim).all(|want| have.contains(&want))
        }),
        "set_contains_any" => both().is_some_and(|(l, r)| {
            let have: Vec<&str> = l.split(',').map(str::trim).collect();
            r.split(',').map(str::trim).any(|want| have.contains(&want))
        }),
        "version" | "semver" => both().is_some_and(|(l, r)| version_matches(l, r)),
        _ => false,
    }
}

fn ordered(op: &str, left: &str, right: &str) -> bool {
    let cmp = match (left.parse::<i64>(), right.parse::<i64>()) {
        (Ok(l), Ok(r)) => l.cmp(&r),
        _ => match (left.parse::<f64>(), right.parse::<f64>()) {
            (Ok(l), Ok(r)) => l.partial_cmp(&r).unwrap_or(std::cmp::Ordering::Equal),
            _ => left.cmp(right),
        },
    };
    match op {
        "<" => cmp.is_lt(),
        "<=" => cmp.is_le(),
        ">" => cmp.is_gt(),
        _ => cmp.is_ge(),
    }
}

fn version_parts(text: &str) -> Vec<u64> {
    let core = text.trim().trim_start_matches('v').split(['-', '+']).next().unwrap_or_default();
    let mut parts: Vec<u64> = core.split('.').map(|p| p.parse().unwrap_or(0)).collect();
    parts.resize(3, 0);
    parts
}

/// go-version constraints: comma-separated `op version` terms, all of which must hold.
fn version_matches(version: &str, constraints: &str) -> bool {
    let have = version_parts(version);
    constraints.split(',').all(|term| {
        let term = term.trim();
        let (op, want) = ["~>", ">=", "<=", "!=", ">", "<", "="]
            .iter()
            .find_map(|op| term.strip_prefix(op).map(|rest| (*op, rest.trim())))
            .unwrap_or(("=", term));
        let want_parts = version_parts(want);
        let cmp = have.cmp(&want_parts);
        match op {
            ">=" => cmp.is_ge(),
            "<=" => cmp.is_le(),
            ">" => cmp.is_gt(),
            "<" => cmp.is_lt(),
            "!=" => cmp.is_ne(),
            "~>" => {
                let segments = want.split('.').count().max(2);
                cmp.is_ge() && have[..segments - 1] == want_parts[..segments - 1]
            }
            _ => cmp.is_eq(),
        }
    })
}

/// A small regular-expression matcher (Go RE2 syntax subset: `^ $ . * + ? | [...] [^...] \d \w \s \.`),
/// enough for constraint values; finds a match anywhere unless anchored.
pub fn regex_find(pattern: &str, text: &str) -> bool {
    pattern.split('|').any(|alternative| {
        let atoms = parse_regex(alternative);
        let chars: Vec<char> = text.chars().collect();
        (0..=chars.len()).any(|start| match_here(&atoms, &chars, start))
    })
}

#[derive(Debug, Clone)]
enum Atom {
    Start,
    End,
    Class(Vec<(char, char)>, bool),
    Any,
    Repeat(Box<Atom>, usize, usize),
}

fn parse_regex(pattern: &str) -> Vec<Atom> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut atoms: Vec<Atom> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let atom = match chars[i] {
            '^' => Atom::Start,
            '$' => Atom::End,
            '.' => Atom::Any,
            '*' | '+' | '?' => {
                let (min, max) = match chars[i] {
                    '*' => (0, usize::MAX),
                    '+' => (1, usize::MAX),
                    _ => (0, 1),
                };
                if let Some(last) = atoms.pop() {
                    atoms.push(Atom::Repeat(Box::new(last), min, max));
                }
                i += 1;
                continue;
            }
            '\\' if i + 1 < chars.len() => {
                i += 1;
                match chars[i] {
                    'd' => Atom::Class(vec![('0', '9')], false),
                    'w' => Atom::Class(vec![('a', 'z'), ('A', 'Z'), ('0', '9'), ('_', '_')], false),
                    's' => Atom::Class(vec![(' ', ' '), ('\t', '\t'), ('\n', '\n')], false),
                    other => Atom::Class(vec![(other, other)], false),
                }
            }
            '[' => {
                let mut j = i + 1;
                let negated = chars.get(j) == Some(&'^');
                if negated {
                    j += 1;
                }
                let mut ranges = Vec::new();
                while j < chars.len() && chars[j] != ']' {
                    if j + 2 < chars.len() && chars[j + 1] == '-' && chars[j + 2] != ']' {
                        ranges.push((chars[j], chars[j + 2]));
                        j += 3;
                    } else {
                        ranges.push((chars[j], chars[j]));
                        j += 1;
                    }
                }
                i = j;
                Atom::Class(ranges, negated)
            }
            other => Atom::Class(vec![(other, other)], false),
        };
        atoms.push(atom);
        i += 1;
    }
    atoms
}

fn match_one(atom: &Atom, c: char) -> bool {
    match atom {
        Atom::Any => true,
        Atom::Class(ranges, negated) => ranges.iter().any(|(a, b)| *a <= c && c <= *b) != *negated,
        _ => false,
    }
}

fn match_here(atoms: &[Atom], text: &[char], at: usize) -> bool {
    let Some((first, rest)) = atoms.split_first() else { return true };
    match first {
        Atom::Start => at == 0 && match_here(rest, text, at),
        Atom::End => at == text.len() && match_here(rest, text, at),
        Atom::Repeat(inner, min, max) => {
            let mut count = 0;
            while count < *max && at + count < text.len() && match_one(inner, text[at + count]) {
                count += 1;
            }
            (*min..=count).rev().any(|n| match_here(rest, text, at + n))
        }
        atom => at < text.len() && match_one(atom, text[at]) && match_here(rest, text, at + 1),
    }
}

fn datacenter_matches(patterns: &[Value], datacenter: &str) -> bool {
    if patterns.is_empty() {
        return true;
    }
    patterns.iter().filter_map(Value::as_str).any(|p| match p.strip_suffix('*') {
        Some(prefix) => datacenter.starts_with(prefix),
        None => p == datacenter,
    })
}

/// What one placement asks for.
pub struct Ask<'a> {
    pub namespace: &'a str,
    pub job: &'a Value,
    pub group: &'a Value,
    pub alloc_index: u64,
}

impl State {
    /// Allocations that count on a node for scheduling: desired to run and not terminal on
    /// the client (Nomad's ProposedAllocs; an allocation being stopped frees its resources).
    fn proposed_on(&self, node: usize) -> impl Iterator<Item = &super::state::Alloc> {
        self.allocs.iter().filter(move |a| a.node == node && a.desired_status == "run" && !a.client_terminal())
    }

    fn node_ports_in_use(&self, node: usize) -> Vec<u16> {
        self.proposed_on(node).flat_map(|a| a.ports.iter().map(|p| p.value)).collect()
    }

    /// Picks a node for `ask`, or says why none fits.
    pub fn select_node(&self, ask: &Ask) -> Result<Placed, Metric> {
        let job = ask.job;
        let group = ask.group;
        let job_id = str_of(job, "ID");
        let group_name = str_of(group, "Name");
        let pool = match str_of(job, "NodePool") {
            "" => "default",
            p => p,
        };
        let mut metric = Metric { node_pool: pool.to_string(), ..Metric::default() };
        let datacenters = list(job, "Datacenters");
        let in_pool = |n: &NodeSpec| pool == "all" || n.node_pool == pool;
        metric.nodes_in_pool = self.nodes.iter().filter(|n| in_pool(n)).count() as u64;
        let candidates: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                let n = &self.nodes[i];
                n.status == "ready" && n.eligibility == "eligible" && in_pool(n) && datacenter_matches(datacenters, &n.datacenter)
            })
            .collect();
        for &i in &candidates {
            *metric.nodes_available.entry(self.nodes[i].datacenter.clone()).or_default() += 1;
        }

        let job_constraints = constraints_of(job);
        let mut group_constraints = constraints_of(group);
        for task in list(group, "Tasks") {
            group_constraints.extend(constraints_of(task));
        }
        let distinct_hosts_job = job_constraints.iter().any(|c| operand(c) == "distinct_hosts" && enabled(c));
        let distinct_hosts_group = group_constraints.iter().any(|c| operand(c) == "distinct_hosts" && enabled(c));
        let distinct_properties: Vec<(&Value, bool)> = job_constraints
            .iter()
            .map(|c| (*c, true))
            .chain(group_constraints.iter().map(|c| (*c, false)))
            .filter(|(c, _)| operand(c) == "distinct_property")
            .collect();
        let drivers: Vec<&str> = list(group, "Tasks").iter().map(|t| str_of(t, "Driver")).collect();
        let host_volumes: Vec<&Value> = group
            .get("Volumes")
            .and_then(Value::as_object)
            .map(|v| v.values().filter(|v| str_of(v, "Type") == "host").collect())
            .unwrap_or_default();
        let csi = csi_sources(group, ask.alloc_index);
        let missing_csi: Vec<String> = csi
            .iter()
            .filter(|(id, _)| !self.volumes.contains_key(&(ask.namespace.to_string(), id.clone())))
            .map(|(id, _)| id.clone())
            .collect();
        let (cpu, memory_mb) = group_resources(group);
        let count = group["Count"].as_u64().unwrap_or(1).max(1);

        let mut best: Option<(f64, Placed)> = None;
        for &i in &candidates {
            let node = &self.nodes[i];
            metric.nodes_evaluated += 1;
            // Feasibility, in the order of Nomad's GenericStack.
            if let Some(c) = job_constraints.iter().find(|c| !constraint_holds(node, c)) {
                metric.filter(node, &constraint_text(c));
                continue;
            }
            if !drivers.iter().all(|d| node.drivers.get(*d).is_some_and(|s| s.detected && s.healthy)) {
                metric.filter(node, "missing drivers");
                continue;
            }
            if let Some(c) = group_constraints.iter().find(|c| !constraint_holds(node, c)) {
                metric.filter(node, &constraint_text(c));
                continue;
            }
            let host_ok = host_volumes.iter().all(|request| {
                let read_only = request.get("ReadOnly").and_then(Value::as_bool).unwrap_or(false);
                node.host_volumes.get(str_of(request, "Source")).is_some_and(|v| read_only || !v.read_only)
            });
            if !host_ok {
                metric.filter(node, "missing compatible host volumes");
                continue;
            }
            if !missing_csi.is_empty() {
                metric.filter(node, &format!("missing CSI volume(s) {}", missing_csi.join(", ")));
                continue;
            }
            if let Some(reason) = self.csi_infeasible(ask, node, i, &csi) {
                metric.filter(node, &reason);
                continue;
            }
            if distinct_hosts_job || distinct_hosts_group {
                let collision = self
                    .proposed_on(i)
                    .any(|a| a.namespace == ask.namespace && a.job_id == job_id && (distinct_hosts_job || a.group == group_name));
                if collision {
                    metric.filter(node, "distinct_hosts");
                    continue;
                }
            }
            if let Some(reason) =
                distinct_properties.iter().find_map(|(c, job_level)| self.distinct_property_violation(ask, node, c, *job_level))
            {
                metric.filter(node, &reason);
                continue;
            }
            // Binpack: ports first, then cpu and memory (AllocsFit).
            let ports = match self.assign_ports(group, node, i) {
                Ok(ports) => ports,
                Err(dimension) => {
                    metric.exhaust(node, &dimension);
                    continue;
                }
            };
            let (used_cpu, used_memory) = self.proposed_on(i).fold((0, 0), |(c, m), a| (c + a.cpu, m + a.memory_mb));
            if used_cpu + cpu > node.cpu_mhz {
                metric.exhaust(node, "cpu");
                continue;
            }
            if used_memory + memory_mb > node.memory_mb {
                metric.exhaust(node, "memory");
                continue;
            }
            // Ranking: binpack fit, job anti-affinity, spread; the normalised score is their mean.
            let free_cpu = 1.0 - (used_cpu + cpu) as f64 / node.cpu_mhz as f64;
            let free_memory = 1.0 - (used_memory + memory_mb) as f64 / node.memory_mb as f64;
            let mut scores = vec![(20.0 - (10f64.powf(free_cpu) + 10f64.powf(free_memory))) / 18.0];
            let collisions =
                self.proposed_on(i).filter(|a| a.namespace == ask.namespace && a.job_id == job_id && a.group == group_name).count();
            if collisions > 0 {
                scores.push(-((collisions + 1) as f64) / count as f64);
            }
            let spread = self.spread_score(ask, node, &candidates);
            if spread != 0.0 {
                scores.push(spread);
            }
            let score = scores.iter().sum::<f64>() / scores.len() as f64;
            if best.as_ref().is_none_or(|(s, _)| score > *s + 1e-12) {
                best = Some((score, Placed { node: i, ports, cpu, memory_mb }));
            }
        }
        best.map(|(_, placed)| placed).ok_or(metric)
    }

    /// The CSI volume checker for one node: plugin, topology (a node-local volume stays on
    /// the node it was first attached to), writer claims held by other jobs.
    fn csi_infeasible(&self, ask: &Ask, node: &NodeSpec, index: usize, csi: &[(String, Value)]) -> Option<String> {
        for (id, request) in csi {
            let key = (ask.namespace.to_string(), id.clone());
            let volume = &self.volumes[&key];
            let plugin = str_of(&volume.spec, "PluginID");
            if !node.csi_plugins.iter().any(|p| p == plugin) {
                return Some(format!("CSI plugin {plugin} is missing from client {}", node.id));
            }
            if self.volume_nodes.get(&key).is_some_and(|n| *n != index) {
                return Some("did not meet topology requirement".into());
            }
            let read_only = request.get("ReadOnly").and_then(Value::as_bool).unwrap_or(false);
            let access_mode = match str_of(request, "AccessMode") {
                "" => super::ops::volume_access_mode(&volume.spec),
                mode => mode.to_string(),
            };
            let single_writer = matches!(access_mode.as_str(), "single-node-writer" | "single-node-single-writer");
            if !read_only && single_writer {
                let other_job_holds = self
                    .allocs
                    .iter()
                    .filter(|a| a.holds_claims() && a.volumes.contains(id))
                    .any(|a| a.namespace != ask.namespace || a.job_id != str_of(ask.job, "ID"));
                if other_job_holds {
                    return Some(format!("CSI volume {id} has exhausted its available writer claims"));
                }
            }
        }
        None
    }

    fn property_counts(&self, ask: &Ask, target: &str, job_level: bool) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for a in self.allocs.iter().filter(|a| a.desired_status == "run" && !a.client_terminal()) {
            if a.namespace != ask.namespace || a.job_id != str_of(ask.job, "ID") || (!job_level && a.group != str_of(ask.group, "Name")) {
                continue;
            }
            if let Some(value) = self.nodes.get(a.node).and_then(|n| n.resolve(target)) {
                *counts.entry(value).or_default() += 1;
            }
        }
        counts
    }

    fn distinct_property_violation(&self, ask: &Ask, node: &NodeSpec, constraint: &Value, job_level: bool) -> Option<String> {
        let target = str_of(constraint, "LTarget");
        let limit: u64 = str_of(constraint, "RTarget").parse().unwrap_or(1).max(1);
        let Some(value) = node.resolve(target) else { return Some(format!("missing property {target:?}")) };
        let used = self.property_counts(ask, target, job_level).get(&value).copied().unwrap_or(0);
        (used >= limit).then(|| format!("distinct_property: {target}={value} used by {used} allocs"))
    }

    /// The spread iterator's boost for `node` (job spreads then group spreads, per group).
    fn spread_score(&self, ask: &Ask, node: &NodeSpec, _candidates: &[usize]) -> f64 {
        let spreads: Vec<&Value> = list(ask.job, "Spreads").iter().chain(list(ask.group, "Spreads")).collect();
        if spreads.is_empty() {
            return 0.0;
        }
        let weight_of = |s: &Value| s.get("Weight").and_then(Value::as_i64).filter(|w| *w > 0).unwrap_or(50) as f64;
        let sum_weights: f64 = spreads.iter().map(|s| weight_of(s)).sum();
        let count = ask.group["Count"].as_u64().unwrap_or(1) as f64;
        let mut total = 0.0;
        for spread in spreads {
            let target = str_of(spread, "Attribute");
            let used_map = self.property_counts(ask, target, false);
            let Some(value) = node.resolve(target) else {
                total -= 1.0;
                continue;
            };
            let targets = list(spread, "SpreadTarget");
            if targets.is_empty() {
                total += even_spread_boost(&used_map, &value);
                continue;
            }
            let mut desired: BTreeMap<String, f64> = BTreeMap::new();
            let mut sum_percent = 0.0;
            for t in targets {
                let percent = t.get("Percent").and_then(Value::as_f64).unwrap_or(0.0);
                sum_percent += percent;
                desired.insert(str_of(t, "Value").to_string(), percent / 100.0 * count);
            }
            if sum_percent < 100.0 {
                desired.insert("*".into(), (100.0 - sum_percent) / 100.0 * count);
            }
            let Some(want) = desired.get(&value).or_else(|| desired.get("*")).copied() else {
                total -= 1.0;
                continue;
            };
            if want == 0.0 {
                total -= 1.0;
                continue;
            }
            let used = used_map.get(&value).copied().unwrap_or(0) as f64 + 1.0;
            total += (want - used) / want * (weight_of(spread) / sum_weights);
        }
        total
    }

    /// Static ports must be free on the node; each dynamic port gets a free host port.
    fn assign_ports(&self, group: &Value, node: &NodeSpec, index: usize) -> Result<Vec<AssignedPort>, String> {
        let mut used = self.node_ports_in_use(index);
        let mut ports = Vec::new();
        let networks: Vec<&Value> = list(group, "Networks").iter().collect();
        for network in &networks {
            for port in list(network, "ReservedPorts") {
                let value = port.get("Value").and_then(Value::as_u64).unwrap_or(0) as u16;
                if used.contains(&value) {
                    return Err(format!("network: reserved port collision {}={value}", str_of(port, "Label")));
                }
                used.push(value);
                let to = port.get("To").and_then(Value::as_i64).unwrap_or(0);
                ports.push(AssignedPort { label: str_of(port, "Label").into(), value, to, host_ip: node.address.clone(), reserved: true });
            }
        }
        use rand::Rng;
        let mut rng = rand::rng();
        for network in &networks {
            for port in list(network, "DynamicPorts") {
                let free = (MAX_DYNAMIC_PORT - MIN_DYNAMIC_PORT + 1) as usize
                    - used.iter().filter(|p| (MIN_DYNAMIC_PORT..=MAX_DYNAMIC_PORT).contains(p)).count();
                if free == 0 {
                    return Err("network: dynamic port selection failed".into());
                }
                let value = loop {
                    let candidate = rng.random_range(MIN_DYNAMIC_PORT..=MAX_DYNAMIC_PORT);
                    if !used.contains(&candidate) {
                        break candidate;
                    }
                };
                used.push(value);
                let to = match port.get("To").and_then(Value::as_i64).unwrap_or(0) {
                    -1 => i64::from(value),
                    to => to,
                };
                ports.push(AssignedPort { label: str_of(port, "Label").into(), value, to, host_ip: node.address.clone(), reserved: false });
            }
        }
        Ok(ports)
    }
}

/// evenSpreadScoreBoost: values below the least-used one gain, the others lose.
fn even_spread_boost(used: &BTreeMap<String, u64>, value: &str) -> f64 {
    if used.is_empty() {
        return 0.0;
    }
    let current = used.get(value).copied().unwrap_or(0);
    let min = used.values().copied().min().unwrap_or(0);
    let max = used.values().copied().max().unwrap_or(0);
    if current != min {
        if min == 0 {
            return -1.0;
        }
        return (min as f64 - current as f64) / min as f64;
    }
    if min == max {
        return -1.0;
    }
    (max - min) as f64 / min as f64
}

fn task_named<'a>(group: &'a Value, name: &str) -> Option<&'a Value> {
    list(group, "Tasks").iter().find(|t| str_of(t, "Name") == name)
}

fn field<'a>(value: &'a Value, key: &str) -> &'a Value {
    static NULL: Value = Value::Null;
    match value.get(key) {
        Some(v) => v,
        None => &NULL,
    }
}

/// Null, missing, `{}` and `[]` are the same (Go's nil and empty maps and slices).
fn same(a: &Value, b: &Value) -> bool {
    let empty = |v: &Value| v.is_null() || v.as_object().is_some_and(|o| o.is_empty()) || v.as_array().is_some_and(|a| a.is_empty());
    (empty(a) && empty(b)) || a == b
}

/// Job meta, then group meta, then task meta (Job.CombinedTaskMeta).
fn combined_task_meta(job: &Value, group: &Value, task: &Value) -> BTreeMap<String, Value> {
    let mut meta = BTreeMap::new();
    for source in [job, group, task] {
        if let Some(object) = source.get("Meta").and_then(Value::as_object) {
            for (k, v) in object {
                meta.insert(k.clone(), v.clone());
            }
        }
    }
    meta
}

fn resources_differ(a: &Value, b: &Value) -> Option<&'static str> {
    for (key, label) in [
        ("CPU", "task cpu"),
        ("Cores", "task cores"),
        ("MemoryMB", "task memory"),
        ("MemoryMaxMB", "task memory max"),
        ("SecretsMB", "task secrets"),
    ] {
        if !same(field(a, key), field(b, key)) {
            return Some(label);
        }
    }
    if !same(field(a, "Devices"), field(b, "Devices")) {
        return Some("task devices");
    }
    if !same(field(a, "Networks"), field(b, "Networks")) {
        return Some("network");
    }
    None
}

/// scheduler/util.go tasksUpdated: `Some(what changed)` when allocations of `group_name`
/// running `old` must be replaced to run `new`; `None` when an in-place update will do.
/// Services (without Connect), update, restart, reschedule, count, constraints and the
/// like are not in it.
pub fn tasks_updated(old: &Value, new: &Value, group_name: &str) -> Option<String> {
    let find = |job: &Value| list(job, "TaskGroups").iter().find(|g| str_of(g, "Name") == group_name).cloned();
    let (Some(a), Some(b)) = (find(old), find(new)) else { return Some("task group".into()) };
    let tasks_a = list(&a, "Tasks");
    let tasks_b = list(&b, "Tasks");
    if tasks_a.len() != tasks_b.len() {
        return Some("number of tasks".into());
    }
    for (key, label) in [("EphemeralDisk", "ephemeral disk"), ("Networks", "network"), ("Volumes", "volume request")] {
        if !same(field(&a, key), field(&b, key)) {
            return Some(label.into());
        }
    }
    let consul_key = |g: &Value| (str_of(field(g, "Consul"), "Namespace").to_string(), str_of(field(g, "Consul"), "Cluster").to_string());
    if consul_key(&a) != consul_key(&b) {
        return Some("consul namespace".into());
    }
    // Services with Connect: connect block and port label.
    for service_a in list(&a, "Services").iter().filter(|s| !field(s, "Connect").is_null()) {
        if let Some(service_b) = list(&b, "Services").iter().find(|s| str_of(s, "Name") == str_of(service_a, "Name")) {
            if !same(field(service_a, "Connect"), field(service_b, "Connect"))
                || str_of(service_a, "PortLabel") != str_of(service_b, "PortLabel")
            {
                return Some("connect service".into());
            }
        }
    }
    let render = |g: &Value| field(field(g, "RestartPolicy"), "RenderTemplates").clone();
    if !same(&render(&a), &render(&b)) {
        return Some("group restart render_templates".into());
    }
    for at in tasks_a {
        let Some(bt) = task_named(&b, str_of(at, "Name")) else { return Some("task deleted".into()) };
        for (key, label) in [
            ("Driver", "task driver"),
            ("User", "task user"),
            ("Config", "task config"),
            ("Env", "task env"),
            ("Artifacts", "task artifacts"),
            ("Vault", "task vault"),
            ("Secrets", "task secrets"),
            ("Templates", "task templates"),
            ("CSIPluginConfig", "task csi config"),
            ("VolumeMounts", "task volume mount"),
            ("Identity", "task identity"),
            ("Identities", "task identity"),
        ] {
            if !same(field(at, key), field(bt, key)) {
                return Some(label.into());
            }
        }
        if consul_key(at) != consul_key(bt) {
            return Some("consul namespace".into());
        }
        if combined_task_meta(old, &a, at) != combined_task_meta(new, &b, bt) {
            return Some("task meta".into());
        }
        if let Some(label) = resources_differ(field(at, "Resources"), field(bt, "Resources")) {
            return Some(label.into());
        }
        let disabled = |t: &Value| field(field(t, "LogConfig"), "Disabled").as_bool().unwrap_or(false);
        if disabled(at) != disabled(bt) {
            return Some("task log disabled".into());
        }
        if !same(&render(at), &render(bt)) {
            return Some("task restart render_templates".into());
        }
    }
    None
}
