//! `BuildActor`: one per running build. It walks the DAG in dependency order, serves unchanged
//! packages from the action cache, leases cores (and memory) from the node's resource actors for
//! the rest, runs them in sandboxes off the async threads, and records every step in the
//! history tables, the ledger and the live events. Leases are always released.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::frontier::Frontier;
use super::history::{save, save_packages, Rows};
pub use super::placement::Limits;
use super::placement::{place_and_run, PlaceError, Ran};
use super::project::{Project, Requirement};
use crate::cas::{Cas, FileRef};
use crate::events::{Event, EventBus};
use crate::exec::{Invocation, Task};
use crate::ledger::{Commit, LedgerHandle};
use crate::mesh::Workers;
use crate::node::NodeHandle;
use crate::pool::PoolHandle;
use crate::store::StoreHandle;
use crate::wire::{self, LedgerEntryType, NodeId};

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
    /// A configuration given inline instead of a saved one (checked like one); it wins over
    /// `config` and `template`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_config: Option<super::config::BuildConfiguration>,
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
    /// The name of `node` (set as soon as the package is sent there; absent in old history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
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

/// Where a build is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BuildState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl BuildState {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildState::Running => "running",
            BuildState::Succeeded => "succeeded",
            BuildState::Failed => "failed",
            BuildState::Cancelled => "cancelled",
        }
    }

    /// Reads a state back from history; anything unknown is a failure rather than an error.
    pub fn parse(text: &str) -> BuildState {
        match text {
            "running" => BuildState::Running,
            "succeeded" => BuildState::Succeeded,
            "cancelled" => BuildState::Cancelled,
            _ => BuildState::Failed,
        }
    }
}

impl std::fmt::Display for BuildState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A build as `GET /api/build/:id` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BuildStatus {
    pub id: String,
    pub status: BuildState,
    pub started_at_ms: u64,
    pub completed_at_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    pub error: Option<String>,
    pub triggered_by: String,
    pub packages: Vec<PackageStatus>,
}

impl BuildStatus {
    /// The status without what packages printed, for a caller who may not read build output.
    pub fn without_output(mut self) -> BuildStatus {
        for p in &mut self.packages {
            p.output_tail.clear();
        }
        self
    }

    pub fn done(&self) -> bool {
        self.status != BuildState::Running
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
    pub cache: super::cache::ActionCache,
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
    /// Which packages may start now; a package ending touches only its dependents.
    frontier: Frontier,
    cancel: Arc<AtomicBool>,
    registry: Registry,
    /// Callers waiting for the build's end ([`WhenDone`]): sent its final status once its
    /// history and ledger entry are written, or dropped if it stops otherwise.
    waiting: Vec<tokio::sync::oneshot::Sender<BuildStatus>>,
    /// Packages (by position) that ended since their rows were last written, the timer that
    /// writes them ([`ENDED_SAVE`]), and those written so (the build's end leaves them be).
    unsaved: BTreeSet<usize>,
    ended_save: Option<SpawnHandle>,
    written: BTreeSet<usize>,
    /// Where the build is with its last packages (see [`BuildActor::schedule`]).
    last_wave: LastWave,
}

/// Whether a build's last packages are out, and whether the rows of what ended are written as
/// it ends from then on.
enum LastWave {
    /// Packages are still to be handed out.
    NotYet,
    /// The last are out; once they had time to start ([`LAST_WAVE_SETTLED`]) the rows of what
    /// ended are written.
    Starting(SpawnHandle),
    /// Each package that ends from now on has its row written at once (unless it was the last).
    Running,
}

/// How soon the rows of packages that ended are written while their build runs: a node killed
/// mid-build keeps what ended until then in its history. A build that ends sooner writes them
/// with its own rows instead, so a short build costs no more store work than before.
const ENDED_SAVE: std::time::Duration = std::time::Duration::from_millis(500);
/// How long after the last package of a build was handed out the rows of what ended are
/// written: long enough for it to have started (1–4 ms on a loaded 2-core machine: placement, a
/// sandbox, the fork server), short beside most packages it waits out.
const LAST_WAVE_SETTLED: std::time::Duration = std::time::Duration::from_millis(10);

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
                node_name: None,
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
            status: BuildState::Running,
            started_at_ms: wire::now_ms(),
            completed_at_ms: None,
            duration_ms: None,
            error: None,
            triggered_by,
            packages,
        };
        let packages = &req.project.manifest.packages;
        let frontier =
            Frontier::new(&req.project.order, |n| packages.get(n).map(|p| p.deps.as_slice()).unwrap_or_default());
        BuildActor {
            ctx,
            req,
            status,
            frontier,
            cancel: Arc::new(AtomicBool::new(false)),
            registry,
            waiting: Vec::new(),
            unsaved: BTreeSet::new(),
            ended_save: None,
            written: BTreeSet::new(),
            last_wave: LastWave::NotYet,
        }
    }

    /// Marks the package at `i` ended, and has its row written within [`ENDED_SAVE`].
    fn ended(&mut self, i: usize, ctx: &mut Context<Self>) {
        self.unsaved.insert(i);
        if self.ended_save.is_none() {
            self.ended_save = Some(ctx.run_later(ENDED_SAVE, |act, ctx| {
                act.ended_save = None;
                act.save_ended(ctx);
            }));
        }
    }

    /// Writes the rows of the packages that ended since the last save.
    fn save_ended(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.ended_save.take() {
            ctx.cancel_future(timer);
        }
        let which = std::mem::take(&mut self.unsaved);
        if which.is_empty() {
            return;
        }
        let packages: Vec<PackageStatus> = which.iter().filter_map(|&i| self.status.packages.get(i).cloned()).collect();
        let (store, id) = (self.ctx.store.clone(), self.status.id.clone());
        ctx.spawn(
            async move { save_packages(&store, id.clone(), packages).await.map_err(|e| (id, e)) }.into_actor(self).map(
                // Counted written only once they are: a save still on its way when the build
                // ends is dropped, and the end writes those rows itself.
                move |saved, act, _| match saved {
                    Ok(()) => act.written.extend(which),
                    Err((id, e)) => log::warn!("saving the packages of build {id} that ended: {e}"),
                },
            ),
        );
    }

    fn pkg(&self, name: &str) -> Option<&PackageStatus> {
        self.frontier.position(name).and_then(|i| self.status.packages.get(i))
    }

    fn pkg_mut(&mut self, name: &str) -> Option<&mut PackageStatus> {
        self.frontier.position(name).and_then(|i| self.status.packages.get_mut(i))
    }

    /// A package ended: its dependents may start, or, if it did not succeed, are skipped. Both
    /// have their rows written soon ([`BuildActor::ended`]).
    fn settle(&mut self, name: &str, ok: bool, ctx: &mut Context<Self>) {
        let Some(i) = self.frontier.position(name) else { return };
        self.ended(i, ctx);
        for skipped in self.frontier.finish(i, ok) {
            let Some(p) = self.status.packages.get_mut(skipped) else { continue };
            p.state = PackageState::Skipped;
            p.error = Some("a dependency failed".into());
            let name = p.name.clone();
            self.publish(&name);
            self.ended(skipped, ctx);
        }
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
        self.frontier.progress()
    }

    fn publish(&self, package: &str) {
        if let Some(p) = self.pkg(package) {
            self.ctx.events.publish_with(|| Event::BuildProgress {
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
            for i in self.frontier.settle_pending() {
                if let Some(p) = self.status.packages.get_mut(i) {
                    p.state = PackageState::Cancelled;
                }
            }
        }
        for i in self.frontier.take_ready() {
            let Some(name) = self.status.packages.get(i).map(|p| p.name.clone()) else { continue };
            match self.task(&name) {
                Err(e) => {
                    if let Some(p) = self.pkg_mut(&name) {
                        p.state = PackageState::Failed;
                        p.error = Some(e);
                    }
                    self.publish(&name);
                    self.settle(&name, false, ctx);
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
        if self.frontier.done() {
            self.finish(ctx);
        } else if self.frontier.all_handed_out() {
            // The last packages are out: the rows of those that ended are written while the
            // rest run, so that the end has only the last one's left to write before its ledger
            // entry (issue 14: writing the rows of 29 compiles there was ~1 ms of a C build's
            // ~6 ms tail). Not at once: written while the last packages were being started, they
            // slowed that start by as much as they saved at the end.
            match self.last_wave {
                LastWave::NotYet => {
                    let timer = ctx.run_later(LAST_WAVE_SETTLED, |act, ctx| {
                        act.last_wave = LastWave::Running;
                        act.save_ended(ctx);
                    });
                    self.last_wave = LastWave::Starting(timer);
                }
                LastWave::Starting(_) => {}
                LastWave::Running => self.save_ended(ctx),
            }
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
        // The node is named on the package (and a progress event sent) as soon as it is chosen.
        let (addr, package) = (ctx.address(), name.clone());
        let placed = move |node: &NodeId, node_name: &str| {
            addr.do_send(Placed { package: package.clone(), node: node.clone(), node_name: node_name.to_string() })
        };
        // What it prints, wherever it runs, lands on the package while it runs.
        let (addr, package, build_id, watched) = (ctx.address(), name.clone(), self.status.id.clone(), name.clone());
        let output: crate::exec::OutputSink =
            Arc::new(move |chunk| addr.do_send(PackageOutput { package: package.clone(), chunk }));
        c.workers.watch(&build_id, &name, output);
        let fut = async move {
            let ran = place_and_run(&c, task, &requirements, cores, memory, force, local_only, &cancel, placed).await;
            c.workers.unwatch(&build_id, &watched);
            ran
        };
        ctx.spawn(fut.into_actor(self).map(move |outcome, act, ctx| {
            if let Some(p) = act.pkg_mut(&name) {
                match outcome {
                    Ok(Ran { result: r, hit, node, node_name }) => {
                        p.node = Some(node);
                        p.node_name = Some(node_name);
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
            let ok = act.pkg(&name).is_some_and(|p| p.state.ok());
            act.settle(&name, ok, ctx);
            act.schedule(ctx);
        }));
    }

    fn finish(&mut self, ctx: &mut Context<Self>) {
        if self.status.done() {
            return;
        }
        // Every row is written below.
        if let LastWave::Starting(timer) = std::mem::replace(&mut self.last_wave, LastWave::Running) {
            ctx.cancel_future(timer);
        }
        if let Some(timer) = self.ended_save.take() {
            ctx.cancel_future(timer);
        }
        self.unsaved.clear();
        let written = std::mem::take(&mut self.written);
        let now = wire::now_ms();
        let cancelled = self.cancel.load(Ordering::SeqCst);
        let failed: Vec<&PackageStatus> =
            self.status.packages.iter().filter(|p| p.state == PackageState::Failed).collect();
        self.status.status = if cancelled {
            BuildState::Cancelled
        } else if failed.is_empty() {
            BuildState::Succeeded
        } else {
            BuildState::Failed
        };
        self.status.error =
            failed.first().map(|p| format!("package {} failed: {}", p.name, p.error.clone().unwrap_or_default()));
        if cancelled {
            self.status.error = Some("cancelled".into());
        }
        self.status.completed_at_ms = Some(now);
        self.status.duration_ms = Some(now.saturating_sub(self.status.started_at_ms));
        let (mut status, c) = (self.status.clone(), self.ctx.clone());
        // The packages whose rows were not written as they ended (taken again from the status
        // only if their save fails, rather than copied ahead for that case).
        let unwritten = move |status: &BuildStatus| -> Vec<PackageStatus> {
            let rows = status.packages.iter().enumerate().filter(|(i, _)| !written.contains(i));
            rows.map(|(_, p)| p.clone()).collect()
        };
        ctx.wait(
            async move {
                // In this order: the packages' rows, the ledger's entry, the build's own row. A
                // node killed in between keeps every row of a build its ledger says ended (side
                // by side, the entry could commit first and the rows be lost: a kill in that
                // window left a build succeeded with no packages), and never a build row that
                // says ended without the entry (the next start ends it, as interrupted, by the
                // ledger). The end waits for the sum: one store commit more than before. Rows
                // that could not be written go with the build's own (as before, one transaction:
                // the build's row may be missing, if its start's save failed).
                let unsaved = match save_packages(&c.store, status.id.clone(), unwritten(&status)).await {
                    Ok(()) => Vec::new(),
                    Err(e) => {
                        log::error!("saving the packages of build {}: {e}", status.id);
                        unwritten(&status)
                    }
                };
                let executed = status.packages.iter().filter(|p| p.state == PackageState::Succeeded).count();
                let cached = status.packages.iter().filter(|p| p.cache_hit).count();
                let (kind, data) = if status.status == BuildState::Succeeded {
                    (LedgerEntryType::BuildCompleted, serde_json::json!({ "build_id": status.id, "duration_ms": status.duration_ms, "executed": executed, "cached": cached, "artifacts": status.outputs().iter().map(|f| &f.digest).collect::<Vec<_>>() }))
                } else {
                    (LedgerEntryType::BuildFailed, serde_json::json!({ "build_id": status.id, "error": status.error, "status": status.status }))
                };
                // A build that ran nothing (every package from the cache) is recorded like any
                // other, but its end does not wait for the sync: it allocated nothing and made no
                // artifact, so a crash that loses its entries (within `ledger::SOON`) loses the
                // record of a no-op — its row may then say it ended without an entry — and the
                // next entry anyone waits for commits them first. A build that ran something
                // reports its end only once its entry — and with it every entry its packages
                // caused — is on disk; if the entry cannot be appended (the ledger closing with
                // the node), its row is left saying running, and the next start ends it as
                // interrupted; its callers are not told it succeeded.
                let recorded = if executed == 0 && status.status == BuildState::Succeeded {
                    let queued = c.ledger.submit(kind, data, Commit::Soon);
                    actix::spawn(async move {
                        if let Err(e) = queued.await {
                            log::warn!("recording the end of a build that ran nothing: {e}");
                        }
                    });
                    Ok(())
                } else {
                    c.ledger.append(kind, data).await.map(|_| ()).map_err(|e| {
                        log::error!("recording the end of build {}: {e}", status.id);
                        e
                    })
                };
                match recorded {
                    Ok(()) => {
                        if let Err(e) = save(&c.store, &status, Rows::End { packages: unsaved }).await {
                            log::error!("saving build {}: {e}", status.id);
                        }
                    }
                    // Not told as succeeded: the history will say it failed (the next start
                    // ends it as interrupted), and nothing the ledger vouches for says it ran
                    // (its outputs were made). A build that failed or was cancelled keeps its
                    // own reason, which says more.
                    Err(e) if status.status == BuildState::Succeeded => {
                        status.status = BuildState::Failed;
                        status.error = Some(format!(
                            "its end could not be recorded in the ledger ({e}); the node records it as interrupted when it starts again"
                        ));
                    }
                    Err(_) => {}
                }
                c.events.publish(Event::BuildProgress { build_id: status.id.clone(), package: String::new(), status: status.status.to_string(), progress: 1.0, output: status.error.clone() });
                status
            }
            .into_actor(self)
            // Only once the history and the ledger have the result: the callers waiting for it
            // get it, and the actor stops.
            .map(|status, act, ctx| {
                act.status = status;
                for waiting in act.waiting.drain(..) {
                    let _ = waiting.send(act.status.clone());
                }
                ctx.stop()
            }),
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
        tools: spec.tools.iter().chain(&spec.runtimes).map(|r| r.name().to_string()).collect(),
    })
}

impl Actor for BuildActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let (status, c) = (self.status.clone(), self.ctx.clone());
        // Kept so the build can be run again from the pages or the API.
        let request = serde_json::to_string(&self.req)
            .map_err(|e| log::error!("build {}: its request cannot be kept: {e}", status.id))
            .ok();
        // Queued before any package can queue its entries, so it comes first in the chain; its
        // sync is not waited for (the build's last entry, which is, commits it with the rest).
        let recorded = c.ledger.submit(
            LedgerEntryType::BuildStarted,
            serde_json::json!({ "build_id": status.id, "config_id": null, "packages": self.req.project.order, "local_only": self.req.local_only, "triggered_by": status.triggered_by }),
            Commit::Soon,
        );
        actix::spawn(async move {
            if let Err(e) = recorded.await {
                log::warn!("recording the start of a build: {e}");
            }
        });
        // Not waited for: the packages start while the row is written. Spawned first, it is
        // queued at the store thread before anything a package or the build's end writes there
        // (the store takes its jobs in order), so the final rows cannot be overtaken by it.
        ctx.spawn(
            async move {
                if let Err(e) = save(&c.store, &status, Rows::Start { request }).await {
                    log::error!("saving build {}: {e}", status.id);
                }
            }
            .into_actor(self),
        );
        self.schedule(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Ok(mut r) = self.registry.lock() {
            r.remove(&self.status.id);
        }
        // Out of the registry first: a caller whose wait closes without the status (the build
        // stopped without finishing) reads the build back from history.
        self.waiting.clear();
    }
}

/// Answers with the build's final status when it has ended (its history and ledger entry
/// written); the receiver closes without one if the build stops otherwise. A client following
/// the build waits on this rather than on every event of the node, which would wake it several
/// times per package — and gets the status from here, not read back from the history tables.
#[derive(Message)]
#[rtype(result = "tokio::sync::oneshot::Receiver<BuildStatus>")]
pub struct WhenDone;

impl Handler<WhenDone> for BuildActor {
    type Result = MessageResult<WhenDone>;

    fn handle(&mut self, _: WhenDone, _: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Callers that gave up (a poll that timed out) leave nothing behind.
        self.waiting.retain(|w| !w.is_closed());
        self.waiting.push(tx);
        MessageResult(rx)
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

/// The request a live build was started with (kept in history too, from its start, in the
/// same transaction as its row — which a rerun asked at once could overtake).
#[derive(Message)]
#[rtype(result = "BuildRequest")]
pub struct GetRequest;

impl Handler<GetRequest> for BuildActor {
    type Result = MessageResult<GetRequest>;

    fn handle(&mut self, _: GetRequest, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.req.clone())
    }
}

/// A running package was sent to a node: name it on the status and tell `/ws`.
#[derive(Message)]
#[rtype(result = "()")]
struct Placed {
    package: String,
    node: NodeId,
    node_name: String,
}

impl Handler<Placed> for BuildActor {
    type Result = ();

    fn handle(&mut self, msg: Placed, _: &mut Context<Self>) {
        let Some(p) = self.pkg_mut(&msg.package) else { return };
        if p.state != PackageState::Running {
            return;
        }
        p.node = Some(msg.node);
        p.node_name = Some(msg.node_name);
        // It starts now (its duration is counted from here), not when it became ready: it may
        // have waited for a core.
        p.started_at_ms = Some(wire::now_ms());
        self.publish(&msg.package);
    }
}

/// Output a running package printed: kept on the package (its last [`wire::TAIL_BYTES`]) and
/// sent to the build's watchers, so the build page and the CLI show it as it comes.
#[derive(Message)]
#[rtype(result = "()")]
struct PackageOutput {
    package: String,
    chunk: String,
}

impl Handler<PackageOutput> for BuildActor {
    type Result = ();

    fn handle(&mut self, msg: PackageOutput, _: &mut Context<Self>) {
        let Some(p) = self.pkg_mut(&msg.package) else { return };
        if p.state != PackageState::Running {
            return;
        }
        p.output_tail.push_str(&msg.chunk);
        wire::keep_tail(&mut p.output_tail, wire::TAIL_BYTES);
        let progress = self.progress();
        self.ctx.events.publish(Event::BuildProgress {
            build_id: self.status.id.clone(),
            package: msg.package,
            status: PackageState::Running.as_str().into(),
            progress,
            output: Some(msg.chunk),
        });
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
