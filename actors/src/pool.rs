//! `PoolActor`: the pooled view of every node's resources — today this node alone; peers join
//! it with the mesh. It aggregates totals, lists pooled resources and finds candidates.

use std::collections::BTreeMap;

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::node::{NodeError, NodeHandle, NodeStatus};
use crate::resource::{ResourceInfo, ResourceStatus};
use crate::wire::{NodeId, ResourceKind};

/// One node as the pool sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PoolNode {
    pub id: NodeId,
    pub name: String,
    pub address: String,
    /// `online`, `busy` or `offline`.
    pub status: String,
    /// `coordinator`, `worker` or `observer`.
    pub role: String,
    pub latency_ms: f64,
    pub last_seen_ms: u64,
    pub cores: u64,
    pub cores_available: u64,
    pub memory_bytes: u64,
    pub memory_available_bytes: u64,
    pub storage_bytes: u64,
    pub storage_available_bytes: u64,
    pub tools: Vec<String>,
    pub runtimes: Vec<String>,
}

/// Totals over online nodes (plan §4.1 `AggregateResources`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Aggregate {
    pub total_cpu_cores: u64,
    pub available_cpu_cores: u64,
    pub total_memory_bytes: u64,
    pub available_memory_bytes: u64,
    pub total_storage_bytes: u64,
    pub available_storage_bytes: u64,
    pub storage_volumes: usize,
    /// Tool name → nodes that have it.
    pub tools: BTreeMap<String, Vec<NodeId>>,
    /// Runtime name → nodes that have it.
    pub runtimes: BTreeMap<String, Vec<NodeId>>,
    pub last_updated_ms: u64,
}

/// Plan §4.1 `PooledResource`: a resource and where it lives.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PooledResource {
    pub key: String,
    #[serde(flatten)]
    pub resource: ResourceInfo,
    pub node_id: NodeId,
    pub node_name: String,
    pub latency_ms: f64,
    pub capacity: u64,
    pub available: u64,
    pub unit: String,
    /// Fraction of the capacity not leased, 0.0–1.0.
    pub availability: f64,
    /// Normalised 0.0–1.0 once benchmarks have run; absent until then.
    pub performance_score: Option<f64>,
}

/// The whole pool.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PoolView {
    /// The node that coordinates the pool.
    pub coordinator: NodeId,
    /// Grows each time the coordinator changes.
    pub epoch: u64,
    pub nodes: Vec<PoolNode>,
    pub aggregate: Aggregate,
}

pub struct PoolActor {
    local: NodeHandle,
}

impl PoolActor {
    pub fn new(local: NodeHandle) -> Self {
        PoolActor { local }
    }
}

impl Actor for PoolActor {
    type Context = Context<Self>;
}

fn sum(statuses: &[ResourceStatus], kind: ResourceKind, f: impl Fn(&ResourceStatus) -> u64) -> u64 {
    statuses.iter().filter(|r| r.kind == kind).map(f).sum()
}

fn usable(statuses: &[ResourceStatus], kind: ResourceKind) -> Vec<String> {
    statuses
        .iter()
        .filter(|r| r.kind == kind && r.capacity > 0)
        .filter_map(|r| match &r.resource {
            ResourceInfo::Tool(t) | ResourceInfo::Runtime(t) => Some(t.name.clone()),
            _ => None,
        })
        .collect()
}

/// A node's line in the pool, from its status.
pub fn pool_node(status: &NodeStatus, latency_ms: f64) -> PoolNode {
    let rs = &status.resource_status;
    PoolNode {
        id: status.node_id.clone(),
        name: status.name.clone(),
        address: status.address.clone(),
        status: status.status.clone(),
        role: status.role.clone(),
        latency_ms,
        last_seen_ms: crate::wire::now_ms(),
        cores: sum(rs, ResourceKind::Cpu, |r| r.capacity),
        cores_available: sum(rs, ResourceKind::Cpu, |r| r.available),
        memory_bytes: sum(rs, ResourceKind::Memory, |r| r.capacity),
        memory_available_bytes: sum(rs, ResourceKind::Memory, |r| r.available),
        storage_bytes: sum(rs, ResourceKind::Storage, |r| r.capacity),
        storage_available_bytes: sum(rs, ResourceKind::Storage, |r| r.available),
        tools: usable(rs, ResourceKind::Tool),
        runtimes: usable(rs, ResourceKind::Runtime),
    }
}

/// Totals over the nodes that are not offline.
pub fn aggregate(nodes: &[PoolNode], storage_volumes: usize) -> Aggregate {
    let mut agg = Aggregate {
        last_updated_ms: crate::wire::now_ms(),
        storage_volumes,
        ..Default::default()
    };
    for n in nodes.iter().filter(|n| n.status != "offline") {
        agg.total_cpu_cores += n.cores;
        agg.available_cpu_cores += n.cores_available;
        agg.total_memory_bytes += n.memory_bytes;
        agg.available_memory_bytes += n.memory_available_bytes;
        agg.total_storage_bytes += n.storage_bytes;
        agg.available_storage_bytes += n.storage_available_bytes;
        for t in &n.tools {
            agg.tools.entry(t.clone()).or_default().push(n.id.clone());
        }
        for r in &n.runtimes {
            agg.runtimes
                .entry(r.clone())
                .or_default()
                .push(n.id.clone());
        }
    }
    agg
}

/// The pool's nodes and totals.
#[derive(Message)]
#[rtype(result = "Result<PoolView, NodeError>")]
pub struct GetPool;

impl Handler<GetPool> for PoolActor {
    type Result = ResponseFuture<Result<PoolView, NodeError>>;

    fn handle(&mut self, _: GetPool, _: &mut Context<Self>) -> Self::Result {
        let local = self.local.clone();
        Box::pin(async move {
            let status = local.status().await?;
            let volumes = status.resources.storage.len();
            let nodes = vec![pool_node(&status, 0.0)];
            Ok(PoolView {
                coordinator: status.node_id.clone(),
                epoch: 1,
                aggregate: aggregate(&nodes, volumes),
                nodes,
            })
        })
    }
}

/// Pooled resources, optionally of one type and/or on one node.
#[derive(Message)]
#[rtype(result = "Result<Vec<PooledResource>, NodeError>")]
pub struct ListResources {
    pub kind: Option<ResourceKind>,
    pub node: Option<NodeId>,
}

impl Handler<ListResources> for PoolActor {
    type Result = ResponseFuture<Result<Vec<PooledResource>, NodeError>>;

    fn handle(&mut self, msg: ListResources, _: &mut Context<Self>) -> Self::Result {
        let local = self.local.clone();
        Box::pin(async move {
            let status = local.status().await?;
            if msg.node.as_ref().is_some_and(|n| *n != status.node_id) {
                return Ok(Vec::new());
            }
            Ok(status
                .resource_status
                .iter()
                .filter(|r| msg.kind.is_none_or(|k| k == r.kind))
                .map(|r| PooledResource {
                    key: r.key.clone(),
                    resource: r.resource.clone(),
                    node_id: status.node_id.clone(),
                    node_name: status.name.clone(),
                    latency_ms: 0.0,
                    capacity: r.capacity,
                    available: r.available,
                    unit: r.unit.clone(),
                    availability: if r.capacity == 0 {
                        0.0
                    } else {
                        r.available as f64 / r.capacity as f64
                    },
                    performance_score: None,
                })
                .collect())
        })
    }
}

/// Typed front of the pool actor.
#[derive(Clone)]
pub struct PoolHandle {
    pub(crate) addr: Addr<PoolActor>,
}

impl PoolHandle {
    pub async fn view(&self) -> Result<PoolView, NodeError> {
        self.addr
            .send(GetPool)
            .await
            .map_err(|_| NodeError::Unavailable)?
    }

    pub async fn resources(
        &self,
        kind: Option<ResourceKind>,
        node: Option<NodeId>,
    ) -> Result<Vec<PooledResource>, NodeError> {
        self.addr
            .send(ListResources { kind, node })
            .await
            .map_err(|_| NodeError::Unavailable)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, status: &str, cores: u64, tools: &[&str]) -> PoolNode {
        PoolNode {
            id: NodeId::parse(id).expect("valid id"),
            name: id.into(),
            address: String::new(),
            status: status.into(),
            role: "worker".into(),
            latency_ms: 0.0,
            last_seen_ms: 0,
            cores,
            cores_available: cores,
            memory_bytes: 10,
            memory_available_bytes: 5,
            storage_bytes: 100,
            storage_available_bytes: 50,
            tools: tools.iter().map(|t| t.to_string()).collect(),
            runtimes: vec![],
        }
    }

    #[test]
    fn aggregate_sums_online_nodes_only() {
        let nodes = [
            node("000000000000000a", "online", 4, &["gcc"]),
            node("000000000000000b", "busy", 2, &["gcc", "ffmpeg"]),
            node("000000000000000c", "offline", 16, &["docker"]),
        ];
        let agg = aggregate(&nodes, 3);
        assert_eq!(agg.total_cpu_cores, 6);
        assert_eq!(agg.total_memory_bytes, 20);
        assert_eq!(agg.available_storage_bytes, 100);
        assert_eq!(agg.tools["gcc"].len(), 2);
        assert!(!agg.tools.contains_key("docker"));
    }
}
