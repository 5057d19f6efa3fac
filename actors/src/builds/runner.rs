//! `BuildActor`: one per running build. It walks the DAG in dependency order, serves unchanged
//! packages from the action cache, leases cores (and memory) from the node's resource actors for
//! the rest, runs them in sandboxes off the async threads, and records every step in the
//! history tables, the ledger and the live events. Leases are always released.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::project::{Project, Requirement};
use crate::cas::{Cas, FileRef};
use crate::events::{Event, EventBus};
use crate::exec::{Invocation, Task, TaskResult};
use crate::ledger::LedgerHandle;
use crate::mesh::{Job, Workers};
use crate::node::NodeHandle;
use crate::pool::PoolHandle;
use crate::store::{StoreError, StoreHandle};
use crate::wire::{self, LedgerEntryType, NodeId, RemoteError};

/// What a client asks to build.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BuildRequest {
    pub project: Project,
    /// Every input file by project path.
    pub files: BTreeMap<String, FileRef>,
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub local_only: bool,
    /// A saved configuration (name or id) whose resources the build may use.
    #[serde(default)]
    pub config: Option<String>,
    /// A template to take the configuration from instead.
    #[serde(default)]
    pub template: Option<String>,
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PackageState {
    Pending,
    Running,
    Cached,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl PackageState {
    fn finished(self) -> bool {
        !matches!(self, PackageState::Pending | PackageState::Running)
    }

    fn ok(self) -> bool {
        matches!(self, PackageState::Cached | PackageState::Succeeded)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PackageState::Pending => "pending",
            PackageState::Running => "running",
            PackageState::Cached => "cached",
            PackageState::Succeeded => "succeeded",
            PackageState::Failed => "failed",
            PackageState::Skipped => "skipped",
            PackageState::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PackageStatus {
    pub name: String,
    pub state: PackageState,
    pub node: Option<NodeId>,
    pub cache_hit: bool,
    pub started_at_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    pub exit_code: Option<i32>,
    pub output_tail: String,
    pub error: Option<String>,
    pub outputs: Vec<FileRef>,
    /// CPU time the package's process used (user + system).
    #[serde(default)]
    pub cpu_ms: Option<u64>,
}

/// A build as `GET /api/build/:id` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BuildStatus {
    pub id: String,
    /// `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    pub started_at_ms: u64,
    pub completed_at_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    pub error: Option<String>,
    pub triggered_by: String,
    pub packages: Vec<PackageStatus>,
}

impl BuildStatus {
    pub fn done(&self) -> bool {
        self.status != "running"
    }

    /// Every package's outputs, for writing back into the project.
    pub fn outputs(&self) -> Vec<FileRef> {
        self.packages.iter().flat_map(|p| p.outputs.iter().cloned()).collect()
    }
}

/// Everything a build needs from its node.
#[derive(Clone)]
pub struct BuildContext {
    pub node_id: NodeId,
    pub node: NodeHandle,
    pub ledger: LedgerHandle,
    pub store: StoreHandle,
    pub events: EventBus,
    pub cas: Cas,
    /// Tool and runtime name → version on this node.
    pub tools: BTreeMap<String, Option<String>>,
    /// Runs a package on any node (this one included).
    pub workers: Workers,
    /// Which peers can take work, and what they offer.
    pub pool: PoolHandle,
    pub limits: Arc<Limits>,
}

pub struct BuildActor {
    ctx: BuildContext,
    req: BuildRequest,
    status: BuildStatus,
    cancel: Arc<AtomicBool>,
    registry: Registry,
}

/// Live builds by id, shared with the web layer.
pub type Registry = Arc<Mutex<HashMap<String, Addr<BuildActor>>>>;

impl BuildActor {
    pub fn new(ctx: BuildContext, req: BuildRequest, id: String, triggered_by: String, registry: Registry) -> Self {
        let packages = req
            .project
            .order
            .iter()
            .map(|name| PackageStatus {
                name: name.clone(),
                state: PackageState::Pending,
                node: None,
                cache_hit: false,
                started_at_ms: None,
                duration_ms: None,
                exit_code: None,
                output_tail: String::new(),
                error: None,
                outputs: vec![],
                cpu_ms: None,
            })
            .collect();
        let status = BuildStatus {
            id,
            status: "running".into(),
            started_at_ms: wire::now_ms(),
            completed_at_ms: None,
            duration_ms: None,
            error: None,
            triggered_by,
            packages,
        };
        BuildActor { ctx, req, status, cancel: Arc::new(AtomicBool::new(false)), registry }
    }

    fn pkg(&self, name: &str) -> Option<&PackageStatus> {
        self.status.packages.iter().find(|p| p.name == name)
    }

    fn pkg_mut(&mut self, name: &str) -> Option<&mut PackageStatus> {
        self.status.packages.iter_mut().find(|p| p.name == name)
    }

    /// A package and everything it depends on, transitively.
    fn transitive_deps(&self, name: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![name.to_string()];
        while let Some(n) = stack.pop() {
            for d in self.req.project.manifest.packages.get(&n).map(|p| p.deps.clone()).unwrap_or_default() {
                if seen.insert(d.clone()) {
                    stack.push(d);
                }
            }
        }
        seen
    }

    fn progress(&self) -> f64 {
        let total = self.status.packages.len().max(1);
        self.status.packages.iter().filter(|p| p.state.finished()).count() as f64 / total as f64
    }

    fn publish(&self, package: &str) {
        if let Some(p) = self.pkg(package) {
            self.ctx.events.publish(Event::BuildProgress {
                build_id: self.status.id.clone(),
                package: package.to_string(),
                status: p.state.as_str().into(),
                progress: self.progress(),
                output: p.error.clone(),
            });
        }
    }

    /// The task for a package whose dependencies are done.
    fn task(&self, name: &str) -> Result<Task, String> {
        let spec = self.req.project.manifest.packages.get(name).ok_or("unknown package")?;
        let mut files: BTreeMap<String, FileRef> = BTreeMap::new();
        for path in self.req.project.inputs.get(name).map(Vec::as_slice).unwrap_or_default() {
            let f = self.req.files.get(path).ok_or_else(|| format!("input {path} was not sent"))?;
            files.insert(path.clone(), f.clone());
        }
        for dep in self.transitive_deps(name) {
            for f in self.pkg(&dep).map(|p| p.outputs.clone()).unwrap_or_default() {
                files.insert(f.path.clone(), f);
            }
        }
        make_task(&self.status.id, name, spec, files)
    }

    fn schedule(&mut self, ctx: &mut Context<Self>) {
        if self.cancel.load(Ordering::SeqCst) {
            for p in self.status.packages.iter_mut().filter(|p| p.state == PackageState::Pending) {
                p.state = PackageState::Cancelled;
            }
        }
        let order = self.req.project.order.clone();
        for name in order {
            if self.pkg(&name).map(|p| p.state) != Some(PackageState::Pending) {
                continue;
            }
            let deps = self.req.project.manifest.packages.get(&name).map(|p| p.deps.clone()).unwrap_or_default();
            let states: Vec<PackageState> = deps.iter().filter_map(|d| self.pkg(d).map(|p| p.state)).collect();
            if states.iter().any(|s| s.finished() && !s.ok()) {
                if let Some(p) = self.pkg_mut(&name) {
                    p.state = PackageState::Skipped;
                    p.error = Some("a dependency failed".into());
                }
                self.publish(&name);
                continue;
            }
            if !states.iter().all(|s| s.ok()) {
                continue;
            }
            match self.task(&name) {
                Err(e) => {
                    if let Some(p) = self.pkg_mut(&name) {
                        p.state = PackageState::Failed;
                        p.error = Some(e);
                    }
                    self.publish(&name);
                }
                Ok(task) => {
                    if let Some(p) = self.pkg_mut(&name) {
                        p.state = PackageState::Running;
                        p.started_at_ms = Some(wire::now_ms());
                    }
                    self.start_package(ctx, name.clone(), task);
                }
            }
        }
        if self.status.packages.iter().all(|p| p.state.finished()) {
            self.finish(ctx);
        }
    }

    fn start_package(&mut self, ctx: &mut Context<Self>, name: String, task: Task) {
        let spec = self.req.project.manifest.packages.get(&name).cloned();
        let requirements: Vec<Requirement> =
            spec.as_ref().map(|s| s.tools.iter().chain(&s.runtimes).cloned().collect()).unwrap_or_default();
        let cores = spec.as_ref().and_then(|s| s.cores).unwrap_or(1) as u64;
        let memory = spec.as_ref().and_then(|s| s.memory_gb).map(|gb| (gb * (1u64 << 30) as f64) as u64);
        let (c, force, local_only, cancel) =
            (self.ctx.clone(), self.req.force, self.req.local_only, self.cancel.clone());
        let fut =
            async move { place_and_run(&c, task, &requirements, cores, memory, force, local_only, &cancel).await };
        ctx.spawn(fut.into_actor(self).map(move |outcome, act, ctx| {
            if let Some(p) = act.pkg_mut(&name) {
                match outcome {
                    Ok((r, hit, node)) => {
                        p.node = Some(node);
                        p.cache_hit = hit;
                        p.exit_code = r.exit_code;
                        p.duration_ms = Some(r.duration_ms);
                        p.cpu_ms = (!hit).then_some(r.cpu_ms);
                        p.output_tail = r.output_tail.clone();
                        p.outputs = r.outputs.clone();
                        p.state = match (r.success(), hit) {
                            (true, true) => PackageState::Cached,
                            (true, false) => PackageState::Succeeded,
                            (false, _) => PackageState::Failed,
                        };
                        p.error = r.error;
                    }
                    Err(PlaceError::Cancelled) => {
                        p.state = PackageState::Cancelled;
                        p.error = Some(PlaceError::Cancelled.to_string());
                    }
                    Err(e) => {
                        p.state = PackageState::Failed;
                        p.error = Some(e.to_string());
                    }
                }
            }
            act.publish(&name);
            act.schedule(ctx);
        }));
    }

    fn finish(&mut self, ctx: &mut Context<Self>) {
        if self.status.done() {
            return;
        }
        let now = wire::now_ms();
        let cancelled = self.cancel.load(Ordering::SeqCst);
        let failed: Vec<&PackageStatus> =
            self.status.packages.iter().filter(|p| p.state == PackageState::Failed).collect();
        self.status.status = if cancelled {
            "cancelled"
        } else if failed.is_empty() {
            "succeeded"
        } else {
            "failed"
        }
        .into();
        self.status.error =
            failed.first().map(|p| format!("package {} failed: {}", p.name, p.error.clone().unwrap_or_default()));
        if cancelled {
            self.status.error = Some("cancelled".into());
        }
        self.status.completed_at_ms = Some(now);
        self.status.duration_ms = Some(now.saturating_sub(self.status.started_at_ms));
        let (status, c) = (self.status.clone(), self.ctx.clone());
        ctx.wait(
            async move {
                if let Err(e) = save(&c.store, &status).await {
                    log::error!("saving build {}: {e}", status.id);
                }
                let executed = status.packages.iter().filter(|p| p.state == PackageState::Succeeded).count();
                let cached = status.packages.iter().filter(|p| p.cache_hit).count();
                let (kind, data) = if status.status == "succeeded" {
                    (LedgerEntryType::BuildCompleted, serde_json::json!({ "build_id": status.id, "duration_ms": status.duration_ms, "executed": executed, "cached": cached, "artifacts": status.outputs().iter().map(|f| &f.digest).collect::<Vec<_>>() }))
                } else {
                    (LedgerEntryType::BuildFailed, serde_json::json!({ "build_id": status.id, "error": status.error, "status": status.status }))
                };
                let _ = c.ledger.append(kind, data).await;
                c.events.publish(Event::BuildProgress { build_id: status.id.clone(), package: String::new(), status: status.status.clone(), progress: 1.0, output: status.error.clone() });
            }
            .into_actor(self)
            // Stop only once the history and the ledger have the result.
            .map(|_, _, ctx| ctx.stop()),
        );
    }
}

/// The self-contained task for a package given its files (inputs and dependency outputs).
pub fn make_task(
    build_id: &str,
    name: &str,
    spec: &super::project::Package,
    files: BTreeMap<String, FileRef>,
) -> Result<Task, String> {
    let invocation = match (&spec.command, &spec.shell) {
        (Some(argv), _) => Invocation::Argv(argv.clone()),
        (None, Some(sh)) => Invocation::Shell(sh.clone()),
        (None, None) => return Err("no command".into()),
    };
    Ok(Task {
        build_id: build_id.to_string(),
        package: name.to_string(),
        invocation,
        env: spec.env.clone(),
        files: files.into_values().collect(),
        outputs: spec.outputs.clone(),
    })
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
        let (capacity, cpu_score) = c
            .node
            .status()
            .await
            .map(|s| (s.resources.cpu.offered as u64, s.benchmarks.cpu_single().unwrap_or(0.0)))
            .unwrap_or((0, 0.0));
        list.push(Candidate {
            node: c.node_id.clone(),
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
            list.push(Candidate { node: p.node_id, local: false, versions, free_cores, capacity, cpu_score });
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

/// Serves a package from the cache, or runs it on the best-ranked node with a free core (see
/// [`placement_rank`]); a lost or refusing node means trying again elsewhere (3 times at most),
/// a busy one waiting for room. Local and remote runs go through the same [`Workers`] call.
#[allow(clippy::too_many_arguments)]
async fn place_and_run(
    c: &BuildContext,
    task: Task,
    requirements: &[Requirement],
    cores: u64,
    memory: Option<u64>,
    force: bool,
    local_only: bool,
    cancel: &Arc<AtomicBool>,
) -> Result<(TaskResult, bool, NodeId), PlaceError> {
    let mut excluded: BTreeSet<NodeId> = BTreeSet::new();
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
            .filter(|x| !excluded.contains(&x.node) && c.limits.allows(&x.node))
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
                    "no node left to run it ({} failed)",
                    excluded.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")
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
                    return Ok((hit, true, cand.node.clone()));
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
            let placed = std::time::Instant::now();
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
                    result.duration_ms = placed.elapsed().as_millis() as u64;
                    if result.success() {
                        remember(c, &task.action_key(&cand.versions), &result).await;
                    }
                    return Ok((result, false, cand.node.clone()));
                }
                Err(RemoteError::Busy(_)) => {}
                Err(RemoteError::Cancelled) => return Err(PlaceError::Cancelled),
                Err(e) => {
                    log::warn!("package {} on {}: {e}; trying elsewhere", task.package, cand.node);
                    excluded.insert(cand.node.clone());
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

/// Writes a build and its packages to the history tables.
pub async fn save(store: &StoreHandle, status: &BuildStatus) -> Result<(), StoreError> {
    let s = status.clone();
    store
        .run(move |conn| {
            let tx = conn.transaction()?;
            let metrics = serde_json::json!({
                "packages": s.packages.len(),
                "cached": s.packages.iter().filter(|p| p.cache_hit).count(),
                "executed": s.packages.iter().filter(|p| p.state == PackageState::Succeeded).count(),
            });
            tx.execute(
                "INSERT INTO builds (id, config_id, status, started_at, completed_at, duration_ms, error, metrics, artifacts, triggered_by)
                 VALUES (?1, NULL, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT(id) DO UPDATE SET status = ?2, completed_at = ?4, duration_ms = ?5, error = ?6, metrics = ?7, artifacts = ?8",
                params![
                    s.id,
                    s.status,
                    s.started_at_ms as i64,
                    s.completed_at_ms.map(|t| t as i64),
                    s.duration_ms.map(|t| t as i64),
                    s.error,
                    metrics.to_string(),
                    serde_json::to_string(&s.outputs()).unwrap_or_default(),
                    s.triggered_by
                ],
            )?;
            for p in &s.packages {
                let row_id = format!("{}/{}", s.id, p.name);
                tx.execute(
                    "INSERT INTO build_packages (id, build_id, package_name, status, started_at, completed_at, duration_ms, assigned_node, output, error)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, ?8, ?9)
                     ON CONFLICT(id) DO UPDATE SET status = ?4, started_at = ?5, completed_at = ?6, duration_ms = ?7, output = ?8, error = ?9",
                    params![
                        row_id,
                        s.id,
                        p.name,
                        p.state.as_str(),
                        p.started_at_ms.map(|t| t as i64),
                        p.started_at_ms.zip(p.duration_ms).map(|(a, d)| (a + d) as i64),
                        p.duration_ms.map(|t| t as i64),
                        p.output_tail,
                        p.error
                    ],
                )?;
                tx.execute("UPDATE build_packages SET assigned_node = (SELECT id FROM nodes WHERE id = ?1) WHERE id = ?2", params![p.node.as_ref().map(|n| n.to_string()), row_id])?;
                tx.execute(
                    "INSERT OR REPLACE INTO build_package_results (build_id, package_name, cache_hit, exit_code, action_key, outputs, cpu_ms) VALUES (?1, ?2, ?3, ?4, NULL, ?5, ?6)",
                    params![s.id, p.name, p.cache_hit, p.exit_code, serde_json::to_string(&p.outputs).unwrap_or_default(), p.cpu_ms.map(|c| c as i64)],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
}

/// Reads a finished build back from history.
pub async fn load(store: &StoreHandle, id: &str) -> Result<Option<BuildStatus>, StoreError> {
    let id = id.to_string();
    store
        .run(move |conn| {
            let head = conn
                .query_row("SELECT id, status, started_at, completed_at, duration_ms, error, triggered_by FROM builds WHERE id = ?1", [&id], |r| {
                    Ok(BuildStatus {
                        id: r.get(0)?,
                        status: r.get(1)?,
                        started_at_ms: r.get::<_, i64>(2)? as u64,
                        completed_at_ms: r.get::<_, Option<i64>>(3)?.map(|t| t as u64),
                        duration_ms: r.get::<_, Option<i64>>(4)?.map(|t| t as u64),
                        error: r.get(5)?,
                        triggered_by: r.get(6)?,
                        packages: vec![],
                    })
                })
                .optional()?;
            let Some(mut status) = head else { return Ok(None) };
            let mut stmt = conn.prepare(
                "SELECT p.package_name, p.status, p.assigned_node, p.started_at, p.duration_ms, p.output, p.error, r.cache_hit, r.exit_code, r.outputs, r.cpu_ms
                 FROM build_packages p LEFT JOIN build_package_results r ON r.build_id = p.build_id AND r.package_name = p.package_name
                 WHERE p.build_id = ?1 ORDER BY p.started_at IS NULL, p.started_at, p.package_name",
            )?;
            let rows = stmt.query_map([&id], |r| {
                let state: String = r.get(1)?;
                Ok(PackageStatus {
                    name: r.get(0)?,
                    state: serde_json::from_value(serde_json::Value::String(state)).unwrap_or(PackageState::Failed),
                    node: r.get::<_, Option<String>>(2)?.and_then(|n| NodeId::parse(&n).ok()),
                    started_at_ms: r.get::<_, Option<i64>>(3)?.map(|t| t as u64),
                    duration_ms: r.get::<_, Option<i64>>(4)?.map(|t| t as u64),
                    output_tail: r.get::<_, Option<String>>(5)?.unwrap_or_default(),
                    error: r.get(6)?,
                    cache_hit: r.get::<_, Option<bool>>(7)?.unwrap_or(false),
                    exit_code: r.get(8)?,
                    outputs: r.get::<_, Option<String>>(9)?.and_then(|o| serde_json::from_str(&o).ok()).unwrap_or_default(),
                    cpu_ms: r.get::<_, Option<i64>>(10)?.map(|c| c.max(0) as u64),
                })
            })?;
            status.packages = rows.collect::<Result<_, _>>()?;
            Ok(Some(status))
        })
        .await
}

/// One line of the build history.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BuildSummary {
    pub id: String,
    pub status: String,
    pub started_at_ms: u64,
    pub duration_ms: Option<u64>,
    pub packages: u64,
    pub cached: u64,
    pub executed: u64,
    pub error: Option<String>,
    pub triggered_by: String,
}

/// Recent builds, newest first.
pub async fn history(
    store: &StoreHandle,
    limit: usize,
    status: Option<String>,
) -> Result<Vec<BuildSummary>, StoreError> {
    store
        .run(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT id, status, started_at, duration_ms, metrics, error, triggered_by FROM builds WHERE (?1 IS NULL OR status = ?1) ORDER BY started_at DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![status, limit as i64], |r| {
                let metrics: serde_json::Value = r.get::<_, Option<String>>(4)?.and_then(|m| serde_json::from_str(&m).ok()).unwrap_or_default();
                Ok(BuildSummary {
                    id: r.get(0)?,
                    status: r.get(1)?,
                    started_at_ms: r.get::<_, i64>(2)? as u64,
                    duration_ms: r.get::<_, Option<i64>>(3)?.map(|d| d as u64),
                    packages: metrics["packages"].as_u64().unwrap_or(0),
                    cached: metrics["cached"].as_u64().unwrap_or(0),
                    executed: metrics["executed"].as_u64().unwrap_or(0),
                    error: r.get(5)?,
                    triggered_by: r.get(6)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
}

impl Actor for BuildActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let (status, c, packages) = (self.status.clone(), self.ctx.clone(), self.req.project.order.clone());
        let local_only = self.req.local_only;
        ctx.wait(
            async move {
                if let Err(e) = save(&c.store, &status).await {
                    log::error!("saving build {}: {e}", status.id);
                }
                let _ = c.ledger.append(LedgerEntryType::BuildStarted, serde_json::json!({ "build_id": status.id, "config_id": null, "packages": packages, "local_only": local_only, "triggered_by": status.triggered_by })).await;
            }
            .into_actor(self),
        );
        self.schedule(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Ok(mut r) = self.registry.lock() {
            r.remove(&self.status.id);
        }
    }
}

/// The build's live status.
#[derive(Message)]
#[rtype(result = "BuildStatus")]
pub struct GetStatus;

impl Handler<GetStatus> for BuildActor {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.status.clone())
    }
}

/// Stops the build: running commands are killed, pending packages are not started.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Cancel;

impl Handler<Cancel> for BuildActor {
    type Result = ();

    fn handle(&mut self, _: Cancel, ctx: &mut Context<Self>) {
        self.cancel.store(true, Ordering::SeqCst);
        // Kills what runs, here and on every peer this build sent work to; each package then
        // ends as cancelled and the build finishes.
        let (workers, id) = (self.ctx.workers.clone(), self.status.id.clone());
        actix::spawn(async move { workers.cancel_build(&id).await });
        self.schedule(ctx);
    }
}
