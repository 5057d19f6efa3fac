//! Placement: which nodes may run a package (tools at the required versions, role, the
//! configuration's caps), the action cache asked with each node's tool versions, then the
//! fastest node with room — run through [`crate::mesh::Workers`], which does not care whether that node is
//! this one. Lost or refusing nodes are excluded and the package placed again (3 retries).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::params;

use super::project::Requirement;
use super::runner::BuildContext;
use crate::cas::{Cas, FileRef};
use crate::exec::{Task, TaskResult};
use crate::mesh::Job;
use crate::store::StoreHandle;
use crate::wire::{self, NodeId, RemoteError};

/// What a configuration allows a build, and what the build holds right now.
#[derive(Debug, Default)]
pub struct Limits {
    /// Nodes the build may use, with the cores it may hold on each (None: any node).
    pub caps: Option<BTreeMap<NodeId, u64>>,
    /// Cores the build may hold in all (None: no limit).
    pub total: Option<u64>,
    /// Storage volume per node where sandboxes go (the configuration's selection).
    pub volumes: BTreeMap<NodeId, String>,
    held: Mutex<BTreeMap<NodeId, u64>>,
    /// Wakes packages waiting for a core when one of this build's packages ends, so the next
    /// starts at once rather than at its next poll.
    freed: tokio::sync::Notify,
}

impl Limits {
    pub fn new(caps: Option<BTreeMap<NodeId, u64>>, total: Option<u64>, volumes: BTreeMap<NodeId, String>) -> Limits {
        Limits { caps, total, volumes, held: Mutex::new(BTreeMap::new()), freed: tokio::sync::Notify::new() }
    }

    fn allows(&self, node: &NodeId) -> bool {
        self.caps.as_ref().is_none_or(|c| c.contains_key(node))
    }

    /// Takes `cores` against the caps; false when the configuration has no room now.
    fn reserve(&self, node: &NodeId, cores: u64) -> bool {
        let Ok(mut held) = self.held.lock() else { return false };
        let on_node = held.get(node).copied().unwrap_or(0);
        let all: u64 = held.values().sum();
        let node_cap = self.caps.as_ref().and_then(|c| c.get(node).copied()).unwrap_or(u64::MAX);
        if on_node + cores > node_cap || all + cores > self.total.unwrap_or(u64::MAX) {
            return false;
        }
        held.insert(node.clone(), on_node + cores);
        true
    }

    fn release(&self, node: &NodeId, cores: u64) {
        if let Ok(mut held) = self.held.lock() {
            if let Some(n) = held.get_mut(node) {
                *n = n.saturating_sub(cores);
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

/// Whether a result is cached under `key`, with its outputs (public for estimates).
pub async fn cached_outputs(store: &StoreHandle, cas: &Cas, key: &str) -> Option<Vec<FileRef>> {
    let outputs =
        store.optional_text("SELECT outputs FROM action_cache WHERE action_key = ?1", key.to_string()).await.ok()??;
    let outputs: Vec<FileRef> = serde_json::from_str(&outputs).ok()?;
    // A cache entry is only good while its blobs are still here.
    outputs.iter().all(|f| cas.has(&f.digest)).then_some(outputs)
}

/// A node that could run a package, with the versions of the tools it would use.
struct Candidate {
    node: NodeId,
    /// The node's name, for progress lines and pages.
    name: String,
    local: bool,
    versions: Vec<(String, String)>,
    free_cores: u64,
    capacity: u64,
    /// Single-core benchmark score; 0 when the node has not been measured.
    cpu_score: f64,
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

/// This node and every live peer that may run the package (tools, role, `accept_remote_builds`).
async fn candidates(c: &BuildContext, requirements: &[Requirement], local_only: bool) -> Vec<Candidate> {
    let mut list = Vec::new();
    if let Some(versions) = versions_for(requirements, &c.tools) {
        let (capacity, cpu_score, name) = c
            .node
            .status()
            .await
            .map(|s| (s.resources.cpu.offered as u64, s.benchmarks.cpu_single().unwrap_or(0.0), s.name))
            .unwrap_or((0, 0.0, String::new()));
        list.push(Candidate {
            node: c.node_id.clone(),
            name,
            local: true,
            versions,
            free_cores: u64::MAX,
            capacity,
            cpu_score,
        });
    }
    if local_only {
        return list;
    }
    for p in c.pool.usable_peers().await {
        let Some(advert) = p.advert.filter(|a| a.accept_remote_builds) else { continue };
        let tools = advert.resources.tool_versions();
        if let Some(versions) = versions_for(requirements, &tools) {
            let cpu = advert.resource_status.iter().filter(|r| r.kind == wire::ResourceKind::Cpu);
            let (free_cores, capacity) = cpu.fold((0, 0), |(f, c), r| (f + r.available, c + r.capacity));
            let cpu_score = advert.benchmarks.cpu_single().unwrap_or(0.0);
            let name = advert.name.clone();
            list.push(Candidate { node: p.node_id, name, local: false, versions, free_cores, capacity, cpu_score });
        }
    }
    list
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
    let mut retries = 0;
    loop {
        if cancel.load(Ordering::SeqCst) {
            return Err(PlaceError::Cancelled);
        }
        // Registered before looking for room, so a core freed meanwhile still wakes us.
        let freed = c.limits.freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        let list: Vec<Candidate> = candidates(c, requirements, local_only)
            .await
            .into_iter()
            .filter(|x| !excluded.contains_key(&x.node) && c.limits.allows(&x.node))
            .collect();
        if list.is_empty() {
            let names: Vec<String> = requirements
                .iter()
                .map(|r| format!("{}{}", r.name(), r.version().map(|v| format!(" {v}")).unwrap_or_default()))
                .collect();
            return Err(PlaceError::Unplaceable(if excluded.is_empty() {
                format!("needs {}, which no node of this build has", names.join(", "))
            } else {
                format!(
                    "no node left to run it ({})",
                    excluded.iter().map(|(n, e)| format!("{n}: {e}")).collect::<Vec<_>>().join(", ")
                )
            }));
        }
        if !force {
            for cand in &list {
                if let Some(outputs) = cached(c, &task.action_key(&cand.versions)).await {
                    let hit = TaskResult {
                        exit_code: Some(0),
                        outputs,
                        output_tail: String::new(),
                        duration_ms: 0,
                        cpu_ms: 0,
                        error: None,
                    };
                    return Ok(Ran { result: hit, hit: true, node: cand.node.clone(), node_name: cand.name.clone() });
                }
            }
        }
        // Faster first (this node with its advantage), then the one with the most room.
        let mut order: Vec<&Candidate> = list.iter().filter(|x| x.local || x.free_cores >= cores).collect();
        order.sort_by(|a, b| {
            placement_rank(b.cpu_score, b.local)
                .total_cmp(&placement_rank(a.cpu_score, a.local))
                .then(b.free_cores.cmp(&a.free_cores))
        });
        for cand in order {
            if !c.limits.reserve(&cand.node, cores) {
                continue;
            }
            // A package's time is what the build waits for once a node is chosen: leases, inputs
            // and outputs over the mesh, the sandbox and the process. The estimator learns this.
            placed(&cand.node, &cand.name);
            let since = std::time::Instant::now();
            let job = Job {
                task: task.clone(),
                cores,
                memory_bytes: memory,
                volume: c.limits.volumes.get(&cand.node).cloned(),
            };
            let ran = c.workers.run_on(&cand.node, job).await;
            c.limits.release(&cand.node, cores);
            match ran {
                Ok(mut result) => {
                    result.duration_ms = since.elapsed().as_millis() as u64;
                    if result.success() {
                        remember(c, &task.action_key(&cand.versions), &result).await;
                    }
                    return Ok(Ran { result, hit: false, node: cand.node.clone(), node_name: cand.name.clone() });
                }
                Err(RemoteError::Busy(_)) => {}
                Err(RemoteError::Cancelled) => return Err(PlaceError::Cancelled),
                Err(e) => {
                    log::warn!("package {} on {}: {e}; trying elsewhere", task.package, cand.node);
                    excluded.insert(cand.node.clone(), e.clone());
                    retries += 1;
                    if retries > 3 {
                        return Err(PlaceError::GaveUp(e));
                    }
                    break;
                }
            }
        }
        if list.iter().all(|x| x.capacity < cores) {
            return Err(PlaceError::Unplaceable(format!(
                "asks for {cores} cores, more than any node of this build offers"
            )));
        }
        // Room elsewhere (a peer's core, another build's lease) shows up at the next poll.
        let _ = tokio::time::timeout(std::time::Duration::from_millis(20), freed).await;
    }
}

async fn cached(c: &BuildContext, key: &str) -> Option<Vec<FileRef>> {
    cached_outputs(&c.store, &c.cas, key).await
}

async fn remember(c: &BuildContext, key: &str, result: &TaskResult) {
    let (key, outputs, node, ms) = (
        key.to_string(),
        serde_json::to_string(&result.outputs).unwrap_or_default(),
        c.node_id.to_string(),
        result.duration_ms as i64,
    );
    let saved = c
        .store
        .run(move |conn| {
            conn.execute(
                "INSERT OR REPLACE INTO action_cache (action_key, package_name, outputs, node_id, duration_ms, created_at) VALUES (?1, '', ?2, ?3, ?4, ?5)",
                params![key, outputs, node, ms, wire::now_ms() as i64],
            )?;
            Ok(())
        })
        .await;
    if let Err(e) = saved {
        log::warn!("caching a result: {e}");
    }
}
