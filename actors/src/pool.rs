//! `PoolActor`: the pooled view — this node's status and every peer's advert and liveness. The
//! mesh hands it the peer table whenever that changes ([`PeersChanged`]); everything else (builds,
//! benchmarks, pages, the API) asks the pool, and "which peers can take work" is one query,
//! [`PoolHandle::usable_peers`]. It aggregates totals and lists pooled resources.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::builds::uptodate::PoolTools;
use crate::mesh::{MeshView, PeerView, PeersChanged};
use crate::node::{NodeError, NodeHandle, NodeStatus};
use crate::resource::{ResourceInfo, ResourceStatus};
use crate::wire::{NodeId, NodeRole, NodeState, ResourceKind, Role};

/// One node as the pool sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PoolNode {
    pub id: NodeId,
    pub name: String,
    pub address: String,
    pub status: NodeState,
    pub role: NodeRole,
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
    /// The node's latest benchmark figures, as it advertised them.
    #[serde(default)]
    pub benchmarks: crate::bench::BenchmarkScores,
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
    pub mesh_id: Option<String>,
    /// The node that coordinates the pool.
    pub coordinator: NodeId,
    /// Grows each time the coordinator changes.
    pub epoch: u64,
    pub nodes: Vec<PoolNode>,
    pub aggregate: Aggregate,
    /// Storage volume paths per node id.
    pub volumes: BTreeMap<String, Vec<String>>,
}

pub struct PoolActor {
    local: NodeHandle,
    /// This node's place in the mesh and the peer table, as the mesh last sent them.
    view: Option<MeshView>,
    /// Shared with whoever asks: the table is replaced whole, never edited.
    peers: Arc<[PeerView]>,
    /// The data dir's line of the pool's tool versions; the peers' part is set on each change.
    tools: Arc<PoolTools>,
}

impl PoolActor {
    pub fn new(local: NodeHandle, tools: Arc<PoolTools>) -> Self {
        PoolActor { local, view: None, peers: Arc::from([]), tools }
    }
}

/// Whether a peer can take work now: live (online or busy) and not an observer.
pub fn is_usable(peer: &PeerView) -> bool {
    peer.status != NodeState::Offline && peer.role != Role::Observer
}

impl PoolNode {
    /// The same rule for a node of the pool view (this node included).
    pub fn usable(&self) -> bool {
        self.status != NodeState::Offline && self.role != NodeRole::Observer
    }
}

impl Handler<PeersChanged> for PoolActor {
    type Result = ();

    fn handle(&mut self, msg: PeersChanged, _: &mut Context<Self>) {
        self.view = Some(msg.view);
        self.tools.set_peers(&msg.peers);
        self.peers = msg.peers;
    }
}

/// The peer table itself (see [`PoolHandle::peer_table`]).
#[derive(Message)]
#[rtype(result = "Arc<[PeerView]>")]
struct GetPeerTable;

impl Handler<GetPeerTable> for PoolActor {
    type Result = MessageResult<GetPeerTable>;

    fn handle(&mut self, _: GetPeerTable, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.peers.clone())
    }
}

/// Every node of the pool, this one first.
fn nodes_of(status: &NodeStatus, view: &MeshView, peers: &[PeerView]) -> Vec<PoolNode> {
    let mut me = pool_node(status, 0.0);
    me.role = NodeRole::of(&status.node_id, view.role, &view.coordinator);
    let mut nodes = vec![me];
    for p in peers {
        let mut n = match &p.advert {
            Some(a) => pool_node(a, p.latency_ms.unwrap_or(0.0)),
            None => PoolNode {
                id: p.node_id.clone(),
                name: p.name.to_string(),
                address: p.address.to_string(),
                status: p.status,
                role: NodeRole::Worker,
                latency_ms: p.latency_ms.unwrap_or(0.0),
                last_seen_ms: p.last_seen_ms,
                cores: 0,
                cores_available: 0,
                memory_bytes: 0,
                memory_available_bytes: 0,
                storage_bytes: 0,
                storage_available_bytes: 0,
                tools: vec![],
                runtimes: vec![],
                benchmarks: Default::default(),
            },
        };
        n.status = p.status;
        n.address = p.address.to_string();
        n.last_seen_ms = p.last_seen_ms;
        n.role = NodeRole::of(&p.node_id, p.role, &view.coordinator);
        nodes.push(n);
    }
    nodes
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
        status: status.status,
        role: status.role,
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
        benchmarks: status.benchmarks.clone(),
    }
}

/// Totals over the nodes that are online and not observers (observers offer nothing).
pub fn aggregate(nodes: &[PoolNode], storage_volumes: usize) -> Aggregate {
    let mut agg = Aggregate { last_updated_ms: crate::wire::now_ms(), storage_volumes, ..Default::default() };
    for n in nodes.iter().filter(|n| n.usable()) {
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
            agg.runtimes.entry(r.clone()).or_default().push(n.id.clone());
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
        let (local, view, peers) = (self.local.clone(), self.view.clone(), self.peers.clone());
        Box::pin(async move {
            let status = local.status().await?;
            let view = view.ok_or(NodeError::Unavailable)?;
            let volumes = status.resources.storage.len()
                + peers
                    .iter()
                    .filter(|p| is_usable(p))
                    .filter_map(|p| p.advert.as_ref())
                    .map(|a| a.resources.storage.len())
                    .sum::<usize>();
            let nodes = nodes_of(&status, &view, &peers);
            let mut paths = BTreeMap::new();
            paths.insert(status.node_id.to_string(), status.resources.storage.iter().map(|v| v.path.clone()).collect());
            for p in peers.iter() {
                if let Some(a) = &p.advert {
                    paths.insert(p.node_id.to_string(), a.resources.storage.iter().map(|v| v.path.clone()).collect());
                }
            }
            Ok(PoolView {
                volumes: paths,
                mesh_id: view.mesh_id.clone(),
                coordinator: view.coordinator.clone(),
                epoch: view.epoch,
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
        let (local, peers) = (self.local.clone(), self.peers.clone());
        Box::pin(async move {
            let status = local.status().await?;
            let mut sources: Vec<(NodeStatus, f64)> = vec![(status, 0.0)];
            sources.extend(
                peers
                    .iter()
                    .filter(|p| is_usable(p))
                    .filter_map(|p| p.advert.as_ref().map(|a| (NodeStatus::clone(a), p.latency_ms.unwrap_or(0.0)))),
            );
            Ok(sources
                .iter()
                .filter(|(s, _)| msg.node.as_ref().is_none_or(|n| *n == s.node_id))
                .flat_map(|(s, latency)| s.resource_status.iter().map(move |r| (s, *latency, r)))
                .filter(|(_, _, r)| msg.kind.is_none_or(|k| k == r.kind))
                .map(|(status, latency, r)| PooledResource {
                    key: r.key.clone(),
                    resource: r.resource.clone(),
                    node_id: status.node_id.clone(),
                    node_name: status.name.clone(),
                    latency_ms: latency,
                    capacity: r.capacity,
                    available: r.available,
                    unit: r.unit.clone(),
                    availability: if r.capacity == 0 { 0.0 } else { r.available as f64 / r.capacity as f64 },
                    performance_score: None,
                })
                .collect())
        })
    }
}

/// Why a node name or id names no single node of the pool.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NodeLookupError {
    #[error("no node named or with id '{0}' in the pool")]
    Unknown(String),
    /// More than one node carries the name; the ids say which to use instead.
    #[error("'{name}' names {} nodes ({}); use the node id", ids.len(), ids.iter().map(|i| i.as_str()).collect::<Vec<_>>().join(", "))]
    Ambiguous { name: String, ids: Vec<NodeId> },
}

/// The one node-name resolver: `key` is a node id (16 hex digits) of a pool node, or the name of
/// exactly one node. An id wins over a name; a name two nodes share is refused, listing their ids.
/// Callers decide what `local` means before asking.
pub fn resolve_node(nodes: &[PoolNode], key: &str) -> Result<NodeId, NodeLookupError> {
    let key = key.trim();
    if let Some(n) = nodes.iter().find(|n| n.id.as_str() == key) {
        return Ok(n.id.clone());
    }
    let named: Vec<NodeId> = nodes.iter().filter(|n| n.name == key).map(|n| n.id.clone()).collect();
    match named.len() {
        0 => Err(NodeLookupError::Unknown(key.to_string())),
        1 => Ok(named[0].clone()),
        _ => Err(NodeLookupError::Ambiguous { name: key.to_string(), ids: named }),
    }
}

/// Typed front of the pool actor.
#[derive(Clone)]
pub struct PoolHandle {
    pub(crate) addr: Addr<PoolActor>,
}

impl PoolHandle {
    pub fn start(actor: PoolActor) -> PoolHandle {
        PoolHandle { addr: actor.start() }
    }

    /// Where the mesh sends its peer table.
    pub fn peers_sink(&self) -> Recipient<PeersChanged> {
        self.addr.clone().recipient()
    }

    /// Every peer the mesh knows, with liveness and advert.
    pub async fn peers(&self) -> Vec<PeerView> {
        self.peer_table().await.to_vec()
    }

    /// The peer table as the mesh last sent it, shared rather than copied: the one way to read
    /// it (the copies above are made from it, on the caller's side).
    pub async fn peer_table(&self) -> Arc<[PeerView]> {
        self.addr.send(GetPeerTable).await.unwrap_or_else(|_| Arc::from([]))
    }

    /// The peers that can take work now (live, not observers): the one filter every caller uses.
    pub async fn usable_peers(&self) -> Vec<PeerView> {
        self.peer_table().await.iter().filter(|p| is_usable(p)).cloned().collect()
    }

    pub async fn view(&self) -> Result<PoolView, NodeError> {
        self.addr.send(GetPool).await.map_err(|_| NodeError::Unavailable)?
    }

    /// [`resolve_node`] against the current pool (this node and every known peer).
    pub async fn resolve(&self, key: &str) -> Result<NodeId, NodeLookupError> {
        let nodes = self.view().await.map(|v| v.nodes).unwrap_or_default();
        resolve_node(&nodes, key)
    }

    pub async fn resources(
        &self,
        kind: Option<ResourceKind>,
        node: Option<NodeId>,
    ) -> Result<Vec<PooledResource>, NodeError> {
        self.addr.send(ListResources { kind, node }).await.map_err(|_| NodeError::Unavailable)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, status: NodeState, cores: u64, tools: &[&str]) -> PoolNode {
        PoolNode {
            id: NodeId::parse(id).expect("valid id"),
            name: id.into(),
            address: String::new(),
            status,
            role: NodeRole::Worker,
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
            benchmarks: Default::default(),
        }
    }

    #[test]
    fn nodes_resolve_by_id_or_unique_name() {
        let mut nodes = vec![
            node("000000000000000a", NodeState::Online, 4, &[]),
            node("000000000000000b", NodeState::Online, 2, &[]),
            node("000000000000000c", NodeState::Online, 2, &[]),
        ];
        nodes[0].name = "alpha".into();
        nodes[1].name = "beta".into();
        nodes[2].name = "beta".into();
        assert_eq!(resolve_node(&nodes, "alpha").map(|i| i.to_string()), Ok("000000000000000a".into()));
        assert_eq!(resolve_node(&nodes, "000000000000000c").map(|i| i.to_string()), Ok("000000000000000c".into()));
        let err = resolve_node(&nodes, "beta").expect_err("ambiguous");
        assert_eq!(err.to_string(), "'beta' names 2 nodes (000000000000000b, 000000000000000c); use the node id");
        assert_eq!(resolve_node(&nodes, "gamma"), Err(NodeLookupError::Unknown("gamma".into())));
    }

    #[test]
    fn aggregate_sums_online_nodes_only() {
        let nodes = [
            node("000000000000000a", NodeState::Online, 4, &["gcc"]),
            node("000000000000000b", NodeState::Busy, 2, &["gcc", "ffmpeg"]),
            node("000000000000000c", NodeState::Offline, 16, &["docker"]),
        ];
        let agg = aggregate(&nodes, 3);
        assert_eq!(agg.total_cpu_cores, 6);
        assert_eq!(agg.total_memory_bytes, 20);
        assert_eq!(agg.available_storage_bytes, 100);
        assert_eq!(agg.tools["gcc"].len(), 2);
        assert!(!agg.tools.contains_key("docker"));
    }
}
