//! A node's state as it advertises it to the pool and `/api/node` shows it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    BenchmarkScores, CpuInfo, Lease, MemoryInfo, NodeId, NodeResources, ResourceKind, StorageVolume, ToolInfo,
};

/// What a resource actor owns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", content = "info", rename_all = "lowercase")]
pub enum ResourceInfo {
    Cpu(CpuInfo),
    Memory(MemoryInfo),
    Storage(StorageVolume),
    Tool(ToolInfo),
    Runtime(ToolInfo),
}

impl ResourceInfo {
    pub fn kind(&self) -> ResourceKind {
        match self {
            ResourceInfo::Cpu(_) => ResourceKind::Cpu,
            ResourceInfo::Memory(_) => ResourceKind::Memory,
            ResourceInfo::Storage(_) => ResourceKind::Storage,
            ResourceInfo::Tool(_) => ResourceKind::Tool,
            ResourceInfo::Runtime(_) => ResourceKind::Runtime,
        }
    }

    /// The stable key of this resource on its node: `cpu`, `memory`, `storage:/path`,
    /// `tool:gcc`, `runtime:node`.
    pub fn key(&self) -> String {
        match self {
            ResourceInfo::Cpu(_) => "cpu".into(),
            ResourceInfo::Memory(_) => "memory".into(),
            ResourceInfo::Storage(v) => format!("storage:{}", v.path),
            ResourceInfo::Tool(t) => format!("tool:{}", t.name),
            ResourceInfo::Runtime(t) => format!("runtime:{}", t.name),
        }
    }

    /// How much can be leased, in the kind's unit. A tool has one slot per offered core, and
    /// none when its probe failed.
    pub fn capacity(&self, offered_cores: usize) -> u64 {
        match self {
            ResourceInfo::Cpu(c) => c.offered as u64,
            ResourceInfo::Memory(m) => m.offered_bytes,
            ResourceInfo::Storage(s) => s.offered_bytes,
            ResourceInfo::Tool(t) | ResourceInfo::Runtime(t) => {
                if t.error.is_some() {
                    0
                } else {
                    offered_cores as u64
                }
            }
        }
    }
}

/// A resource's state as its owner sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResourceStatus {
    pub key: String,
    pub kind: ResourceKind,
    pub unit: String,
    pub capacity: u64,
    pub leased: u64,
    pub available: u64,
    pub leases: Vec<Lease>,
    /// Times the supervisor restarted this actor.
    pub restarts: u32,
    #[serde(flatten)]
    pub resource: ResourceInfo,
}

/// A node's state as `/api/node` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeStatus {
    pub node_id: NodeId,
    pub name: String,
    pub address: String,
    pub version: String,
    /// Role in the mesh (plan §1.2); a lone node coordinates itself.
    pub role: NodeRole,
    /// `online` or `busy` (some resource fully leased).
    pub status: NodeState,
    pub tags: Vec<String>,
    pub started_at_ms: u64,
    pub uptime_ms: u64,
    pub accept_remote_builds: bool,
    pub priority_weight: f64,
    pub resources: NodeResources,
    /// Capacity, leases and availability per resource.
    pub resource_status: Vec<ResourceStatus>,
    /// The latest benchmark figures and the node's place in the benchmark schedule.
    #[serde(default)]
    pub benchmarks: BenchmarkScores,
    /// How this node contains the packages it runs (`none` when its kernel offers nothing).
    #[serde(default)]
    pub sandbox: SandboxLevel,
}

/// A node's place in the mesh as pages, the CLI and `/api/node` show it (plan §1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// Chosen by every node of its side of the mesh to order the queue and benchmark turns.
    Coordinator,
    /// Runs builds; may become coordinator.
    Worker,
    /// Shares its view; never coordinates.
    Observer,
}

impl NodeRole {
    /// The role shown for `id`: the coordinator, else worker or observer by roster role.
    pub fn of(id: &NodeId, roster_role: super::Role, coordinator: &NodeId) -> NodeRole {
        if id == coordinator {
            NodeRole::Coordinator
        } else if roster_role == super::Role::Observer {
            NodeRole::Observer
        } else {
            NodeRole::Worker
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Coordinator => "coordinator",
            NodeRole::Worker => "worker",
            NodeRole::Observer => "observer",
        }
    }
}

/// Whether a node can take work now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Online,
    /// Online, with every core leased.
    Busy,
    Offline,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Online => "online",
            NodeState::Busy => "busy",
            NodeState::Offline => "offline",
        }
    }
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for NodeRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How well this node contains the packages it runs (see `exec::contain`), weakest first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub enum SandboxLevel {
    /// Packages run in a working directory with the node's own rights.
    #[default]
    #[serde(rename = "none")]
    None,
    /// Landlock limits what packages may read and write.
    #[serde(rename = "landlock")]
    Landlock,
    /// Landlock, plus PID and mount namespaces (and an unprivileged user when the node is root).
    #[serde(rename = "landlock+namespaces")]
    Full,
}

impl SandboxLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxLevel::None => "none",
            SandboxLevel::Landlock => "landlock",
            SandboxLevel::Full => "landlock+namespaces",
        }
    }

    pub fn has_landlock(self) -> bool {
        self >= SandboxLevel::Landlock
    }

    pub fn has_namespaces(self) -> bool {
        self == SandboxLevel::Full
    }
}

impl std::fmt::Display for SandboxLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SandboxLevel {
    type Err = super::InvalidId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(SandboxLevel::None),
            "landlock" => Ok(SandboxLevel::Landlock),
            "landlock+namespaces" => Ok(SandboxLevel::Full),
            other => Err(super::InvalidId {
                what: "sandbox level",
                value: other.to_string(),
                expected: "none, landlock or landlock+namespaces",
            }),
        }
    }
}
