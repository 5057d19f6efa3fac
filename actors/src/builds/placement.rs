//! Placement: which nodes may run a package (tools at the required versions, role, the
//! configuration's caps), the action cache asked with each node's tool versions, then the
//! fastest node with room — run through [`crate::mesh::Workers`], which does not care whether that node is
//! this one. Lost or refusing nodes are excluded and the package placed again (3 retries).
//!
//! At scale (thousands of packages, a hundred nodes) a build reads the pool once per
//! [`POOL_SNAPSHOT_TTL`] into a [`PoolIndex`] ranked once and indexed by tool, and its waiting
//! packages stand in one line per kind (tools, cores) whose first member alone looks for room.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::project::Requirement;
use super::runner::BuildContext;
use crate::exec::{Task, TaskResult};
use crate::mesh::{Job, PeerView};
use crate::wire::{self, NodeId, NodeStatus, RemoteError};

/// What a configuration allows a build, and what the build holds right now.
#[derive(Debug, Default)]
pub struct Limits {
    /// Nodes the build may use, with the cores it may hold on each (None: any node).
    pub caps: Option<BTreeMap<NodeId, u64>>,
    /// Cores the build may hold in all (None: no limit).
    pub total: Option<u64>,
    /// Storage volume per node where sandboxes go (the configuration's selection).
    pub volumes: BTreeMap<NodeId, String>,
    held: Mutex<Held>,
    /// Wakes packages waiting for a core when one of this build's packages ends, so the next
    /// starts at once rather than at its next poll.
    freed: tokio::sync::Notify,
    /// One line per kind of package (tools, cores): only the first in each looks for room.
    lines: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// The latest snapshot of the pool, and when it was taken.
    pool: tokio::sync::Mutex<Option<(Instant, Arc<PoolIndex>)>>,
}

/// Cores this build holds per node, and in all (kept, not summed, for every reservation).
#[derive(Debug, Default)]
struct Held {
    per_node: HashMap<NodeId, u64>,
    all: u64,
}

impl Limits {
    pub fn new(caps: Option<BTreeMap<NodeId, u64>>, total: Option<u64>, volumes: BTreeMap<NodeId, String>) -> Limits {
        Limits { caps, total, volumes, ..Limits::default() }
    }

    pub fn allows(&self, node: &NodeId) -> bool {
        self.caps.as_ref().is_none_or(|c| c.contains_key(node))
    }

    /// The line packages needing `requirements` and `cores` wait in for room.
    fn line(&self, requirements: &[Requirement], cores: u64) -> Arc<Semaphore> {
        let key = format!("{cores} {requirements:?}");
        let Ok(mut lines) = self.lines.lock() else { return Arc::new(Semaphore::new(1)) };
        lines.entry(key).or_insert_with(|| Arc::new(Semaphore::new(1))).clone()
    }

    /// Takes `cores` on a node of `capacity` cores against the caps; false when the
    /// configuration, or the node as far as this build holds it, has no room now.
    pub fn reserve(&self, node: &NodeId, cores: u64, capacity: u64) -> bool {
        let Ok(mut held) = self.held.lock() else { return false };
        let on_node = held.per_node.get(node).copied().unwrap_or(0);
        let node_cap = self.caps.as_ref().and_then(|c| c.get(node).copied()).unwrap_or(u64::MAX).min(capacity);
        if on_node + cores > node_cap || held.all + cores > self.total.unwrap_or(u64::MAX) {
            return false;
        }
        held.per_node.insert(node.clone(), on_node + cores);
        held.all += cores;
        true
    }

    pub fn release(&self, node: &NodeId, cores: u64) {
        if let Ok(mut held) = self.held.lock() {
            if let Some(n) = held.per_node.get_mut(node) {
                let freed = cores.min(*n);
                *n -= freed;
                held.all -= freed;
            }
        }
        self.freed.notify_waiters();
    }
}

/// The versions a node would use for `requirements` (public for estimates).
pub fn tool_versions(
    requirements: &[Requirement],
    tools: &BTreeMap<String, Option<String>>,
) -> Option<Vec<(String, String)>> {
    versions_for(requirements, tools)
}

/// How much faster a peer must be before work leaves this node: sending inputs and outputs
/// across the mesh costs time this node does not pay.
pub const LOCAL_PREFERENCE: f64 = 1.5;

/// Placement order: faster first, with this node's advantage. An unmeasured node ranks as one of
/// score 1, so without benchmarks this node comes first and peers tie.
pub fn placement_rank(cpu_score: f64, local: bool) -> f64 {
    let score = if cpu_score > 0.0 { cpu_score } else { 1.0 };
    if local {
        score * LOCAL_PREFERENCE
    } else {
        score
    }
}

/// The versions a node would use for `requirements`, or None when it lacks one.
fn versions_for(
    requirements: &[Requirement],
    tools: &BTreeMap<String, Option<String>>,
) -> Option<Vec<(String, String)>> {
    requirements
        .iter()
        .map(|r| match tools.get(r.name()) {
            Some(v) if r.accepts(v.as_deref()) => Some((r.name().to_string(), v.clone().unwrap_or_default())),
            _ => None,
        })
        .collect()
}

/// One node as placement sees it: what it has, how fast it is and how much room it said it had.
#[derive(Debug, Clone)]
pub struct NodeOffer {
    pub node: NodeId,
    /// The node's name, for progress lines and pages.
    pub name: String,
    pub local: bool,
    /// Tool and runtime name → version.
    pub tools: BTreeMap<String, Option<String>>,
    /// Cores free as the node last advertised (this node: unbounded, its executor answers Busy).
    pub free_cores: u64,
    /// Cores the node offers in all.
    pub capacity: u64,
    /// Memory the node offers in all, in bytes.
    pub memory_bytes: u64,
    /// Single-core benchmark score; 0 when the node has not been measured.
    pub cpu_score: f64,
}

impl NodeOffer {
    /// This node with the tools the build started with; `status` gives cores, score and name.
    pub fn local(node: NodeId, tools: BTreeMap<String, Option<String>>, status: Option<&NodeStatus>) -> NodeOffer {
        NodeOffer {
            node,
            name: status.map(|s| s.name.clone()).unwrap_or_default(),
            local: true,
            tools,
            free_cores: u64::MAX,
            capacity: status.map_or(0, |s| s.resources.cpu.offered as u64),
            memory_bytes: status.map_or(0, |s| s.resources.memory.offered_bytes),
            cpu_score: status.and_then(|s| s.benchmarks.cpu_single()).unwrap_or(0.0),
        }
    }

    /// A live peer from its advert; None when it has not advertised or takes no remote builds.
    pub fn peer(peer: &PeerView) -> Option<NodeOffer> {
        let advert = peer.advert.as_ref().filter(|a| a.accept_remote_builds)?;
        let cpu = advert.resource_status.iter().filter(|r| r.kind == wire::ResourceKind::Cpu);
        let (free_cores, capacity) = cpu.fold((0, 0), |(f, c), r| (f + r.available, c + r.capacity));
        Some(NodeOffer {
            node: peer.node_id.clone(),
            name: advert.name.clone(),
            local: false,
            tools: advert.resources.tool_versions(),
            free_cores,
            capacity,
            memory_bytes: advert.resources.memory.offered_bytes,
            cpu_score: advert.benchmarks.cpu_single().unwrap_or(0.0),
        })
    }
}

/// The nodes a build may place on, ranked once (faster first, this node with its advantage,
/// then the most room) and indexed by tool, so a package's candidates come from the shortest
/// list of nodes having one of its tools rather than from reading every node's tools.
#[derive(Debug, Default)]
pub struct PoolIndex {
    nodes: Vec<NodeOffer>,
    by_tool: HashMap<String, Vec<usize>>,
    /// Candidates by requirements: every package of a kind asks the same question of a snapshot.
    answers: Mutex<HashMap<String, Arc<[Candidate]>>>,
}

/// A node that could run a package (by its place in the [`PoolIndex`]), with the versions of
/// the tools it would use there.
#[derive(Debug)]
pub struct Candidate {
    at: usize,
    pub versions: Vec<(String, String)>,
}

impl PoolIndex {
    pub fn new(mut nodes: Vec<NodeOffer>) -> PoolIndex {
        nodes.sort_by(|a, b| {
            placement_rank(b.cpu_score, b.local)
                .total_cmp(&placement_rank(a.cpu_score, a.local))
                .then(b.free_cores.cmp(&a.free_cores))
        });
        let mut by_tool: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            for tool in n.tools.keys() {
                by_tool.entry(tool.clone()).or_default().push(i);
            }
        }
        PoolIndex { nodes, by_tool, answers: Mutex::default() }
    }

    /// The node a candidate stands for.
    pub fn offer(&self, candidate: &Candidate) -> &NodeOffer {
        &self.nodes[candidate.at]
    }

    /// Every node that has each required tool at an accepted version, best-ranked first; worked
    /// out once per snapshot for each set of requirements.
    pub fn candidates(&self, requirements: &[Requirement], local_only: bool) -> Arc<[Candidate]> {
        let key = format!("{local_only} {requirements:?}");
        if let Some(known) = self.answers.lock().ok().and_then(|a| a.get(&key).cloned()) {
            return known;
        }
        let found: Arc<[Candidate]> = self.find(requirements, local_only).into();
        if let Ok(mut answers) = self.answers.lock() {
            answers.insert(key, found.clone());
        }
        found
    }

    fn find(&self, requirements: &[Requirement], local_only: bool) -> Vec<Candidate> {
        let all: Vec<usize>;
        let shortest =
            match requirements.iter().map(|r| self.by_tool.get(r.name())).min_by_key(|l| l.map_or(0, Vec::len)) {
                // A tool no node has: nobody can run it.
                Some(None) => return Vec::new(),
                Some(Some(list)) => list,
                None => {
                    all = (0..self.nodes.len()).collect();
                    &all
                }
            };
        shortest
            .iter()
            .filter(|i| self.nodes[**i].local || !local_only)
            .filter_map(|&at| {
                versions_for(requirements, &self.nodes[at].tools).map(|versions| Candidate { at, versions })
            })
            .collect()
    }
}

/// The best-ranked candidate with room for `cores` now, its cores reserved against the build's
/// limits; `skip` leaves out nodes this package may not use (lost, refused, found busy).
pub fn reserve_best<'a>(
    pool: &PoolIndex,
    candidates: impl IntoIterator<Item = &'a Candidate>,
    cores: u64,
    limits: &Limits,
    skip: impl Fn(&NodeId) -> bool,
) -> Option<&'a Candidate> {
    candidates.into_iter().find(|c| {
        let offer = pool.offer(c);
        (offer.local || offer.free_cores >= cores)
            && !skip(&offer.node)
            && limits.reserve(&offer.node, cores, offer.capacity)
    })
}

/// How long a snapshot of the pool serves placements before it is read again: adverts (free
/// cores, tools, scores) change once a [`crate::mesh::TICK`] at most, and a node lost meanwhile
/// is found by the run failing and is excluded.
pub const POOL_SNAPSHOT_TTL: Duration = crate::mesh::TICK;

/// This node and every live peer, ranked and indexed; read again once [`POOL_SNAPSHOT_TTL`] has
/// passed, so a build of thousands of packages does not copy every peer's advert per package.
async fn pool_index(c: &BuildContext) -> Arc<PoolIndex> {
    let mut slot = c.limits.pool.lock().await;
    if let Some((at, index)) = slot.as_ref() {
        if at.elapsed() < POOL_SNAPSHOT_TTL {
            return index.clone();
        }
    }
    let status = c.node.status().await.ok();
    let mut nodes = vec![NodeOffer::local(c.node_id.clone(), c.tools.clone(), status.as_ref())];
    nodes.extend(c.pool.usable_peers().await.iter().filter_map(NodeOffer::peer));
    let index = Arc::new(PoolIndex::new(nodes));
    *slot = Some((Instant::now(), index.clone()));
    index
}

/// Why a package could not be placed (its own failures are a [`TaskResult`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlaceError {
    #[error("cancelled")]
    Cancelled,
    /// No node of this build can run it; the text says what is missing.
    #[error("{0}")]
    Unplaceable(String),
    /// Nodes were lost or refused it more often than retries allow.
    #[error("gave up after 3 retries: {0}")]
    GaveUp(RemoteError),
}

/// Where a package ran (or was found in the cache): the result, whether it was a cache hit, and
/// the node by id and name.
pub(super) struct Ran {
    pub result: TaskResult,
    pub hit: bool,
    pub node: NodeId,
    pub node_name: String,
}

/// Serves a package from the cache, or runs it on the best-ranked node with a free core (see
/// [`placement_rank`]); a lost or refusing node means trying again elsewhere (3 times at most),
/// a busy one waiting for room. Local and remote runs go through the same [`crate::mesh::Workers`] call.
/// `placed` is told each node (id, name) the package is sent to, before it runs there.
///
/// Packages with the same needs (tools, cores) wait for room in line, first come first served:
/// only the first of each line looks for room and wakes when a core is freed or at the next
/// poll, so ten thousand waiting packages cost what one does.
#[allow(clippy::too_many_arguments)]
pub(super) async fn place_and_run(
    c: &BuildContext,
    task: Task,
    requirements: &[Requirement],
    cores: u64,
    memory: Option<u64>,
    force: bool,
    local_only: bool,
    cancel: &Arc<AtomicBool>,
    placed: impl Fn(&NodeId, &str),
) -> Result<Ran, PlaceError> {
    let mut excluded: BTreeMap<NodeId, RemoteError> = BTreeMap::new();
    // Nodes that answered Busy since this package last waited for room.
    let mut busy: BTreeSet<NodeId> = BTreeSet::new();
    let mut retries = 0;
    let mut cache_asked = force;
    let line = c.limits.line(requirements, cores);
    loop {
        let turn = line.clone().acquire_owned().await.map_err(|_| PlaceError::Cancelled)?;
        let (node, name, versions) = loop {
            if cancel.load(Ordering::SeqCst) {
                return Err(PlaceError::Cancelled);
            }
            // Registered before looking for room, so a core freed meanwhile still wakes us.
            let freed = c.limits.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let pool = pool_index(c).await;
            let candidates = pool.candidates(requirements, local_only);
            let list: Vec<&Candidate> = candidates
                .iter()
                .filter(|x| {
                    let node = &pool.offer(x).node;
                    !excluded.contains_key(node) && c.limits.allows(node)
                })
                .collect();
            if list.is_empty() {
                return Err(unplaceable(requirements, &excluded));
            }
            if !cache_asked {
                cache_asked = true;
                if let Some(hit) = cache_hit(c, &task, &pool, &list).await {
                    return Ok(hit);
                }
            }
            // A memory lease larger than a node offers is never granted: asked of such a node,
            // the package would be answered Busy for ever.
            if let Some(bytes) = memory.filter(|m| list.iter().all(|x| pool.offer(x).memory_bytes < *m)) {
                return Err(PlaceError::Unplaceable(format!(
                    "asks for {:.1} GB of memory, more than any node of this build offers (at most {:.1} GB)",
                    bytes as f64 / (1u64 << 30) as f64,
                    list.iter().map(|x| pool.offer(x).memory_bytes).max().unwrap_or(0) as f64 / (1u64 << 30) as f64
                )));
            }
            let roomy = list.iter().copied().filter(|x| memory.is_none_or(|m| pool.offer(x).memory_bytes >= m));
            if let Some(x) = reserve_best(&pool, roomy, cores, &c.limits, |n| busy.contains(n)) {
                let offer = pool.offer(x);
                break (offer.node.clone(), offer.name.clone(), x.versions.clone());
            }
            if list.iter().all(|x| pool.offer(x).capacity < cores) {
                return Err(PlaceError::Unplaceable(format!(
                    "asks for {cores} cores, more than any node of this build offers"
                )));
            }
            // Room elsewhere (a peer's core, another build's lease) shows up at the next poll.
            let _ = tokio::time::timeout(Duration::from_millis(20), freed).await;
            busy.clear();
        };
        // The next package in line looks for room while this one runs.
        drop(turn);
        // A package's time is what the build waits for once a node is chosen: leases, inputs
        // and outputs over the mesh, the sandbox and the process. The estimator learns this.
        placed(&node, &name);
        let since = Instant::now();
        let job = Job { task: task.clone(), cores, memory_bytes: memory, volume: c.limits.volumes.get(&node).cloned() };
        let ran = c.workers.run_on(&node, job).await;
        c.limits.release(&node, cores);
        match ran {
            Ok(mut result) => {
                result.duration_ms = since.elapsed().as_millis() as u64;
                if result.success() {
                    c.cache.remember(&task.action_key(&versions), &result.outputs, &c.node_id, result.duration_ms);
                }
                return Ok(Ran { result, hit: false, node, node_name: name });
            }
            Err(RemoteError::Busy(_)) => {
                busy.insert(node);
            }
            Err(RemoteError::Cancelled) => return Err(PlaceError::Cancelled),
            Err(e) => {
                log::warn!("package {} on {node}: {e}; trying elsewhere", task.package);
                excluded.insert(node, e.clone());
                retries += 1;
                if retries > 3 {
                    return Err(PlaceError::GaveUp(e));
                }
            }
        }
    }
}

/// Why no node can take a package: a tool nobody has, or every node that had it lost.
fn unplaceable(requirements: &[Requirement], excluded: &BTreeMap<NodeId, RemoteError>) -> PlaceError {
    let names: Vec<String> = requirements
        .iter()
        .map(|r| format!("{}{}", r.name(), r.version().map(|v| format!(" {v}")).unwrap_or_default()))
        .collect();
    PlaceError::Unplaceable(if excluded.is_empty() {
        format!("needs {}, which no node of this build has", names.join(", "))
    } else {
        format!(
            "no node left to run it ({})",
            excluded.iter().map(|(n, e)| format!("{n}: {e}")).collect::<Vec<_>>().join(", ")
        )
    })
}

/// A cached result under the key of any candidate's tool versions; each distinct set of versions
/// (usually a handful across a pool) is asked once, however many nodes share it.
async fn cache_hit(c: &BuildContext, task: &Task, pool: &PoolIndex, list: &[&Candidate]) -> Option<Ran> {
    let mut asked: BTreeSet<&[(String, String)]> = BTreeSet::new();
    for cand in list {
        if !asked.insert(&cand.versions) {
            continue;
        }
        if let Some(outputs) = c.cache.outputs(&task.action_key(&cand.versions)).await {
            let hit = TaskResult {
                exit_code: Some(0),
                outputs,
                output_tail: String::new(),
                duration_ms: 0,
                cpu_ms: 0,
                error: None,
            };
            return Some(Ran {
                result: hit,
                hit: true,
                node: pool.offer(cand).node.clone(),
                node_name: pool.offer(cand).name.clone(),
            });
        }
    }
    None
}
