//! Build configurations (plan §5.1; the JSON of plan Appendix B parses as it is) and templates
//! (plan §5.2): which cores, memory, storage, tools and runtimes of the pool a build may use.
//! Validation names the field; a configuration asking for more than the pool has is refused
//! with what is short, where.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::project::Requirement;
use crate::pool::PoolView;
use crate::wire::NodeId;

/// `node_id` that means "the node that runs the build".
pub const LOCAL: &str = "local";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
// Every level refuses a field it does not know: a misspelt `cpuu` would otherwise be dropped and
// the configuration allow every core, saying nothing.
#[serde(deny_unknown_fields)]
pub struct BuildConfiguration {
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub created_by: Option<String>,
    /// The plan's shape (§5.1) carries it; the node keeps its own times, so it is read and
    /// dropped rather than refused.
    #[serde(default, skip_serializing)]
    #[schema(ignore)]
    pub created_at: Option<serde_json::Value>,
    #[serde(default)]
    pub resources: ResourceSelection,
    /// Build settings (free-form, kept as given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub build: Option<serde_json::Value>,
    /// Execution preferences (free-form, kept as given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub execution: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceSelection {
    #[serde(default)]
    pub cpu: CpuSelection,
    #[serde(default)]
    pub memory: MemorySelection,
    #[serde(default)]
    pub storage: StorageSelection,
    #[serde(default)]
    pub tools: Vec<Requirement>,
    #[serde(default)]
    pub runtimes: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CpuSelection {
    /// Cores in all; 0 = all the pool (or the allocated nodes) offers.
    #[serde(default)]
    pub cores: u32,
    #[serde(default)]
    pub node_allocations: Option<Vec<NodeCpuAllocation>>,
    #[serde(default = "normal")]
    pub priority: String,
}

impl Default for CpuSelection {
    fn default() -> Self {
        CpuSelection { cores: 0, node_allocations: None, priority: normal() }
    }
}

impl CpuSelection {
    /// The cores a build under this selection may use at most, as far as the selection alone
    /// says: `cores`, else the sum of its node allocations when each names a number; 0 when it
    /// is "all a node (or the pool) offers".
    pub fn cores_at_most(&self) -> u32 {
        match &self.node_allocations {
            _ if self.cores > 0 => self.cores,
            Some(a) if !a.is_empty() && a.iter().all(|a| a.cores > 0) => a.iter().map(|a| a.cores).sum(),
            _ => 0,
        }
    }
}

fn normal() -> String {
    "normal".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeCpuAllocation {
    /// A node id, or `local`.
    pub node_id: String,
    /// 0 = all the node offers.
    pub cores: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub specific_cores: Option<Vec<u32>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemorySelection {
    /// GB in all; 0 = what is available.
    #[serde(default)]
    pub gb: f64,
    #[serde(default)]
    pub node_allocations: Option<Vec<NodeMemoryAllocation>>,
    #[serde(default = "normal")]
    pub priority: String,
}

impl Default for MemorySelection {
    fn default() -> Self {
        MemorySelection { gb: 0.0, node_allocations: None, priority: normal() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeMemoryAllocation {
    pub node_id: String,
    pub gb: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StorageSelection {
    #[serde(default)]
    pub volumes: Vec<StorageVolumeSelection>,
    /// any, hdd, ssd, nvme or network.
    #[serde(default = "any")]
    pub min_class: String,
}

impl Default for StorageSelection {
    fn default() -> Self {
        StorageSelection { volumes: vec![], min_class: any() }
    }
}

fn any() -> String {
    "any".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StorageVolumeSelection {
    pub node_id: String,
    pub path: String,
    #[serde(default = "build_purpose")]
    pub purpose: String,
    #[serde(default)]
    pub size_gb: f64,
}

fn build_purpose() -> String {
    "build".into()
}

/// One problem with a configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

fn problem(field: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem { field: field.into(), message: message.into() }
}

const PRIORITIES: [&str; 3] = ["low", "normal", "high"];
const CLASSES: [&str; 5] = ["any", "hdd", "ssd", "nvme", "network"];
const PURPOSES: [&str; 5] = ["cache", "build", "builds", "output", "scratch"];

impl BuildConfiguration {
    /// Checks the configuration on its own.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.name.trim().is_empty() || self.name.len() > 64 {
            out.push(problem("name", "must be 1 to 64 characters"));
        }
        let r = &self.resources;
        if !PRIORITIES.contains(&r.cpu.priority.to_lowercase().as_str()) {
            out.push(problem(
                "resources.cpu.priority",
                format!("must be low, normal or high, got '{}'", r.cpu.priority),
            ));
        }
        if !PRIORITIES.contains(&r.memory.priority.to_lowercase().as_str()) {
            out.push(problem(
                "resources.memory.priority",
                format!("must be low, normal or high, got '{}'", r.memory.priority),
            ));
        }
        let node_ok = |id: &str| id == LOCAL || NodeId::parse(id).is_ok();
        if let Some(allocs) = &r.cpu.node_allocations {
            for (i, a) in allocs.iter().enumerate() {
                if !node_ok(&a.node_id) {
                    out.push(problem(
                        format!("resources.cpu.node_allocations[{i}].node_id"),
                        format!("'{}' is neither `local` nor a node id (16 hex digits)", a.node_id),
                    ));
                }
            }
            // Per-node caps and a smaller total are both kept (at most 2 in all, up to 2 on
            // each); a total the caps cannot reach is refused.
            let sum: u32 = allocs.iter().map(|a| a.cores).sum();
            if r.cpu.cores > 0 && allocs.iter().all(|a| a.cores > 0) && sum < r.cpu.cores {
                out.push(problem(
                    "resources.cpu.node_allocations",
                    format!("allocate {sum} cores in all, fewer than resources.cpu.cores ({})", r.cpu.cores),
                ));
            }
        }
        if !r.memory.gb.is_finite() || r.memory.gb < 0.0 {
            out.push(problem("resources.memory.gb", "must be 0 (what is available) or a positive number"));
        }
        for (i, a) in r.memory.node_allocations.iter().flatten().enumerate() {
            if !node_ok(&a.node_id) {
                out.push(problem(
                    format!("resources.memory.node_allocations[{i}].node_id"),
                    format!("'{}' is neither `local` nor a node id", a.node_id),
                ));
            }
            if !a.gb.is_finite() || a.gb <= 0.0 {
                out.push(problem(format!("resources.memory.node_allocations[{i}].gb"), "must be a positive number"));
            }
        }
        if !CLASSES.contains(&r.storage.min_class.to_lowercase().as_str()) {
            out.push(problem(
                "resources.storage.min_class",
                format!("must be one of {}, got '{}'", CLASSES.join(", "), r.storage.min_class),
            ));
        }
        for (i, v) in r.storage.volumes.iter().enumerate() {
            if !node_ok(&v.node_id) {
                out.push(problem(
                    format!("resources.storage.volumes[{i}].node_id"),
                    format!("'{}' is neither `local` nor a node id", v.node_id),
                ));
            }
            if !v.path.starts_with('/') {
                out.push(problem(format!("resources.storage.volumes[{i}].path"), "must be an absolute path"));
            }
            if !PURPOSES.contains(&v.purpose.as_str()) {
                out.push(problem(
                    format!("resources.storage.volumes[{i}].purpose"),
                    format!("must be one of {}", PURPOSES.join(", ")),
                ));
            }
            if !v.size_gb.is_finite() || v.size_gb < 0.0 {
                out.push(problem(format!("resources.storage.volumes[{i}].size_gb"), "must be a positive number"));
            }
        }
        out
    }

    /// Replaces node names with ids wherever the configuration names a node (CPU and memory
    /// allocations, storage volumes), with [`crate::pool::resolve_node`]: stored configurations
    /// hold ids. `local` and ids of nodes the pool does not know are left for the checks to judge;
    /// an unknown or ambiguous name is a problem naming the field.
    pub fn resolve_node_names(&mut self, nodes: &[crate::pool::PoolNode]) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut fix = |field: String, id: &mut String| {
            if id == LOCAL || NodeId::parse(id).is_ok() && !nodes.iter().any(|n| n.id.as_str() == id) {
                return;
            }
            match crate::pool::resolve_node(nodes, id) {
                Ok(resolved) => *id = resolved.to_string(),
                Err(e) => out.push(problem(field, e.to_string())),
            }
        };
        let r = &mut self.resources;
        for (i, a) in r.cpu.node_allocations.iter_mut().flatten().enumerate() {
            fix(format!("resources.cpu.node_allocations[{i}].node_id"), &mut a.node_id);
        }
        for (i, a) in r.memory.node_allocations.iter_mut().flatten().enumerate() {
            fix(format!("resources.memory.node_allocations[{i}].node_id"), &mut a.node_id);
        }
        for (i, v) in r.storage.volumes.iter_mut().enumerate() {
            fix(format!("resources.storage.volumes[{i}].node_id"), &mut v.node_id);
        }
        out
    }

    /// Checks what the configuration asks for against the pool; `local` is `me`.
    pub fn check_against(&self, pool: &PoolView, me: &NodeId) -> Vec<Problem> {
        let mut out = Vec::new();
        let r = &self.resources;
        let resolve = |id: &str| if id == LOCAL { me.to_string() } else { id.to_string() };
        let node = |id: &str| pool.nodes.iter().find(|n| n.id.as_str() == resolve(id) && n.usable());
        let name_of = |id: &str| node(id).map(|n| n.name.clone()).unwrap_or_else(|| resolve(id));
        let a = &pool.aggregate;
        if u64::from(r.cpu.cores) > a.total_cpu_cores {
            out.push(problem(
                "resources.cpu.cores",
                format!("asks {} cores; the pool offers {}", r.cpu.cores, a.total_cpu_cores),
            ));
        }
        for (i, alloc) in r.cpu.node_allocations.iter().flatten().enumerate() {
            match node(&alloc.node_id) {
                None => out.push(problem(
                    format!("resources.cpu.node_allocations[{i}].node_id"),
                    format!("no online node {} in the pool", resolve(&alloc.node_id)),
                )),
                Some(n) if u64::from(alloc.cores) > n.cores => out.push(problem(
                    format!("resources.cpu.node_allocations[{i}].cores"),
                    format!("asks {} cores on {}; it offers {}", alloc.cores, n.name, n.cores),
                )),
                Some(_) => {}
            }
        }
        let gib = (1u64 << 30) as f64;
        if r.memory.gb * gib > a.total_memory_bytes as f64 {
            out.push(problem(
                "resources.memory.gb",
                format!("asks {} GB; the pool offers {:.1} GB", r.memory.gb, a.total_memory_bytes as f64 / gib),
            ));
        }
        for (i, alloc) in r.memory.node_allocations.iter().flatten().enumerate() {
            match node(&alloc.node_id) {
                None => out.push(problem(
                    format!("resources.memory.node_allocations[{i}].node_id"),
                    format!("no online node {} in the pool", resolve(&alloc.node_id)),
                )),
                Some(n) if alloc.gb * gib > n.memory_bytes as f64 => out.push(problem(
                    format!("resources.memory.node_allocations[{i}].gb"),
                    format!("asks {} GB on {}; it offers {:.1} GB", alloc.gb, n.name, n.memory_bytes as f64 / gib),
                )),
                Some(_) => {}
            }
        }
        for (i, v) in r.storage.volumes.iter().enumerate() {
            match node(&v.node_id) {
                None => out.push(problem(
                    format!("resources.storage.volumes[{i}].node_id"),
                    format!("no online node {} in the pool", name_of(&v.node_id)),
                )),
                Some(n) if !pool.volumes.get(n.id.as_str()).is_some_and(|vols| vols.iter().any(|p| p == &v.path)) => {
                    out.push(problem(
                        format!("resources.storage.volumes[{i}].path"),
                        format!(
                            "{} offers no volume at {} (configure it under resource_limits.storage)",
                            n.name, v.path
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        for (kind, list, have) in [("tools", &r.tools, &a.tools), ("runtimes", &r.runtimes, &a.runtimes)] {
            for (i, req) in list.iter().enumerate() {
                if !have.contains_key(req.name()) {
                    out.push(problem(
                        format!("resources.{kind}[{i}]"),
                        format!("no node in the pool has {}", req.name()),
                    ));
                }
            }
        }
        out
    }

    /// The nodes this configuration confines a build to, with a core cap per node (None = no
    /// confinement). `local` is resolved to `me`.
    pub fn node_caps(&self, me: &NodeId) -> Option<BTreeMap<NodeId, u64>> {
        let allocs = self.resources.cpu.node_allocations.as_ref()?;
        let mut caps = BTreeMap::new();
        for a in allocs {
            let id = if a.node_id == LOCAL { me.clone() } else { NodeId::parse(&a.node_id).ok()? };
            caps.insert(id, if a.cores == 0 { u64::MAX } else { u64::from(a.cores) });
        }
        Some(caps)
    }
}

impl BuildConfiguration {
    /// The storage volume selected per node (the first with purpose build/builds, else the
    /// first), where that node's sandboxes go.
    pub fn volumes(&self, me: &NodeId) -> BTreeMap<NodeId, String> {
        let mut out = BTreeMap::new();
        let mut volumes: Vec<&StorageVolumeSelection> = self.resources.storage.volumes.iter().collect();
        volumes.sort_by_key(|v| !matches!(v.purpose.as_str(), "build" | "builds"));
        for v in volumes {
            let id = if v.node_id == LOCAL { Some(me.clone()) } else { NodeId::parse(&v.node_id).ok() };
            if let Some(id) = id {
                out.entry(id).or_insert_with(|| v.path.clone());
            }
        }
        out
    }
}

/// A variable a template takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TemplateVariable {
    pub name: String,
    pub description: String,
    /// `integer` or `number`.
    pub var_type: String,
    pub default: Option<String>,
}

/// Plan §5.2's template: a configuration with variables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConfigTemplate {
    pub id: String,
    pub name: String,
    pub description: String,
    pub icon: String,
    /// local_only, quick_build, full_build, ci_cd or custom.
    pub category: String,
    pub config: BuildConfiguration,
    pub variables: Vec<TemplateVariable>,
    pub use_cases: Vec<String>,
    pub system: bool,
}

fn var(name: &str, description: &str, default: &str) -> TemplateVariable {
    TemplateVariable {
        name: name.into(),
        description: description.into(),
        var_type: "integer".into(),
        default: Some(default.into()),
    }
}

fn base(name: &str) -> BuildConfiguration {
    BuildConfiguration {
        id: None,
        name: name.into(),
        description: None,
        created_by: Some("system".into()),
        created_at: None,
        resources: ResourceSelection::default(),
        build: None,
        execution: None,
    }
}

/// The four system templates of plan §5.2.
pub fn system_templates() -> Vec<ConfigTemplate> {
    let mut local = base("Local Only");
    local.resources.cpu.node_allocations =
        Some(vec![NodeCpuAllocation { node_id: LOCAL.into(), cores: 0, specific_cores: None }]);
    let mut quick = base("Quick Build");
    quick.resources.cpu.cores = 2;
    let mut full = base("Full Distributed");
    full.resources.cpu.priority = "high".into();
    full.resources.memory.priority = "high".into();
    let mut ci = base("CI/CD");
    ci.resources.cpu.cores = 4;
    ci.execution = Some(serde_json::json!({ "force": false, "fail_fast": true }));
    let t = |id: &str,
             cfg: BuildConfiguration,
             desc: &str,
             icon: &str,
             category: &str,
             variables: Vec<TemplateVariable>,
             uses: &[&str]| ConfigTemplate {
        id: id.into(),
        name: cfg.name.clone(),
        description: desc.into(),
        icon: icon.into(),
        category: category.into(),
        config: cfg,
        variables,
        use_cases: uses.iter().map(|u| u.to_string()).collect(),
        system: true,
    };
    vec![
        t(
            "local-only",
            local,
            "Build using only the machine that runs the build",
            "laptop",
            "local_only",
            vec![var("cores", "Cores on this machine (0 = all)", "0")],
            &["Quick local development builds", "Offline development"],
        ),
        t(
            "quick-build",
            quick,
            "A few cores wherever they are free",
            "bolt",
            "quick_build",
            vec![var("cores", "Cores in all", "2")],
            &["Small changes", "Fast feedback"],
        ),
        t(
            "distributed-full",
            full,
            "Use all available pool resources for maximum speed",
            "cloud",
            "full_build",
            vec![],
            &["Full production builds", "Release builds"],
        ),
        t(
            "ci-cd",
            ci,
            "Repeatable builds for pipelines",
            "pipeline",
            "ci_cd",
            vec![var("cores", "Cores in all", "4")],
            &["Continuous integration", "Release pipelines"],
        ),
    ]
}

impl ConfigTemplate {
    /// A configuration from this template with variables set (`cores` is the one they use).
    pub fn instantiate(&self, name: &str, values: &BTreeMap<String, String>) -> Result<BuildConfiguration, Problem> {
        let mut cfg = self.config.clone();
        cfg.name = name.to_string();
        cfg.id = None;
        for v in &self.variables {
            let Some(text) = values.get(&v.name).or(v.default.as_ref()) else { continue };
            let n: u32 = text
                .parse()
                .map_err(|_| problem(format!("variables.{}", v.name), format!("expected an integer, got '{text}'")))?;
            if v.name == "cores" {
                match cfg.resources.cpu.node_allocations.as_mut() {
                    Some(allocs) if allocs.len() == 1 => allocs[0].cores = n,
                    _ => cfg.resources.cpu.cores = n,
                }
            }
        }
        if let Some(unknown) = values.keys().find(|k| !self.variables.iter().any(|v| &v.name == *k)) {
            return Err(problem(
                format!("variables.{unknown}"),
                format!("template '{}' has no such variable", self.id),
            ));
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APPENDIX_B_1: &str = r#"{
      "id": "local-dev", "name": "Local Development",
      "resources": {
        "cpu": { "cores": 4, "node_allocations": [ { "node_id": "local", "cores": 4 } ], "priority": "normal" },
        "memory": { "gb": 8.0, "priority": "normal" },
        "storage": { "volumes": [ { "node_id": "local", "path": "/Users/dev/.buildnet/cache", "purpose": "cache", "size_gb": 50 } ], "min_class": "ssd" },
        "tools": [],
        "runtimes": [ { "name": "node", "version": ">=20" } ]
      }
    }"#;

    #[test]
    fn appendix_b_parses_as_it_is() {
        let c: BuildConfiguration = serde_json::from_str(APPENDIX_B_1).expect("Appendix B example 1");
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert_eq!(c.resources.runtimes[0].version(), Some(">=20"));
        let two = r#"{"id": "dist-full", "name": "Distributed Full Build", "resources": {"cpu": {"cores": 12, "node_allocations": [{"node_id": "node-a", "cores": 4}, {"node_id": "node-b", "cores": 2}, {"node_id": "node-c", "cores": 6}], "priority": "high"}, "memory": {"gb": 32.0, "node_allocations": [{"node_id": "node-a", "gb": 16}, {"node_id": "node-c", "gb": 16}], "priority": "high"}, "storage": {"volumes": [{"node_id": "node-c", "path": "/data/builds", "purpose": "build", "size_gb": 100}], "min_class": "nvme"}, "tools": [{"name": "imagemagick"}, {"name": "ffmpeg"}], "runtimes": [{"name": "node", "version": ">=20"}, {"name": "bun", "version": ">=1.0"}]}}"#;
        let c: BuildConfiguration = serde_json::from_str(two).expect("Appendix B example 2 parses");
        let problems = c.validate();
        assert!(
            problems.iter().any(|p| p.field == "resources.cpu.node_allocations[0].node_id"),
            "placeholder ids are named: {problems:?}"
        );
    }

    #[test]
    fn validation_names_fields() {
        let mut c: BuildConfiguration = serde_json::from_str(APPENDIX_B_1).expect("parses");
        c.resources.cpu.cores = 5;
        c.resources.cpu.priority = "urgent".into();
        c.resources.storage.min_class = "tape".into();
        let fields: Vec<String> = c.validate().into_iter().map(|p| p.field).collect();
        assert!(fields.contains(&"resources.cpu.node_allocations".to_string()));
        assert!(fields.contains(&"resources.cpu.priority".to_string()));
        assert!(fields.contains(&"resources.storage.min_class".to_string()));
    }

    #[test]
    fn templates_instantiate_with_variables() {
        let templates = system_templates();
        assert_eq!(
            templates.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["Local Only", "Quick Build", "Full Distributed", "CI/CD"]
        );
        let local = &templates[0];
        let cfg = local.instantiate("mine", &BTreeMap::from([("cores".to_string(), "3".to_string())])).expect("valid");
        assert_eq!(cfg.resources.cpu.node_allocations.as_ref().expect("allocations")[0].cores, 3);
        assert!(local.instantiate("x", &BTreeMap::from([("cores".into(), "lots".into())])).is_err());
        assert!(local.instantiate("x", &BTreeMap::from([("speed".into(), "1".into())])).is_err());
        let me = NodeId::parse("00000000000000aa").expect("id");
        let caps = cfg.node_caps(&me).expect("confined");
        assert_eq!(caps.get(&me), Some(&3));
        assert!(templates[2].config.node_caps(&me).is_none(), "full distributed is not confined");
    }
}
