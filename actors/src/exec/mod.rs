//! The executor: the one place a package runs on this node, whoever asked for it. Local builds
//! and peers' task requests both come here; the executor takes the leases from the resource
//! actors (refusing stale coordinator epochs through them), places the sandbox on the requested
//! volume, records `ResourceAllocated`/`ResourceReleased` in the ledger (queued in chain order,
//! their syncs overlapping the run rather than delaying it), runs the process group off the async
//! threads ([`sandbox`]; contained packages are forked by the node's [`forkserver`] and contained
//! by [`contain`]), kills it on cancel and always releases the leases. It answers before the
//! package's sandbox is emptied for the next one ([`sandbox::Used`]).

pub mod contain;
pub mod forkserver;
pub mod layout;
pub mod sandbox;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::cas::Cas;
use crate::ledger::{Commit, LedgerHandle};
use crate::node::{NodeError, NodeHandle};
pub use crate::wire::{Invocation, RemoteError, Task, TaskResult};
use crate::wire::{LeaseRequest, LedgerEntryType, NodeId, SandboxLevel};
pub use sandbox::Launch;

/// A lease lives this long unless the package finishes first (it always releases).
pub const LEASE_TTL_MS: u64 = 3_600_000;
/// A cancelled build's late requests are refused for this long.
const CANCEL_MEMORY: Duration = Duration::from_secs(600);
/// Sandboxes on a configuration's storage volume go into this folder of the volume.
pub const VOLUME_SANDBOX_DIR: &str = "buildnet-sandboxes";

/// Where a running package's output goes as it is printed (pieces of at most
/// [`crate::wire::OUTPUT_CHUNK`] bytes, at most every 200 ms per stream).
pub type OutputSink = std::sync::Arc<dyn Fn(String) + Send + Sync>;

/// One package to run here, with what it needs.
#[derive(Clone)]
pub struct RunRequest {
    pub task: Task,
    pub cores: u64,
    pub memory_bytes: Option<u64>,
    /// The requester's coordinator epoch; the lease books refuse an older one.
    pub epoch: u64,
    /// A storage volume of this node for the sandbox (the configuration's selection).
    pub volume: Option<String>,
    /// The node that asked (this node for local builds).
    pub requester: NodeId,
    /// Where its output goes while it runs (the requester's build), if anywhere.
    pub output: Option<OutputSink>,
}

/// What the executor needs from its node.
pub struct ExecutorOptions {
    pub node: NodeHandle,
    pub ledger: LedgerHandle,
    pub cas: Cas,
    /// Where sandboxes go when no volume was asked for (`<data-dir>/sandboxes`).
    pub sandboxes: PathBuf,
    /// This node's storage volumes: a requested volume is used only when it is one of them.
    pub volumes: Vec<PathBuf>,
    /// How packages start here (launcher, containment level, user); `read_only` is filled per
    /// package from `tools`.
    pub launch: Launch,
    /// Where each tool and runtime of this node lives: what a package that declares it may read.
    pub tools: BTreeMap<String, PathBuf>,
    /// Peers' packages are refused unless `launch.level` is at least this (`sandbox.require`).
    pub required: SandboxLevel,
    /// This node, to tell its own packages from peers'.
    pub me: NodeId,
}

impl ExecutorOptions {
    /// The launch of one package: the node's containment plus the tools it declared.
    fn launch_for(&self, task: &Task) -> Launch {
        let read_only = task.tools.iter().filter_map(|t| self.tools.get(t).cloned()).collect();
        Launch { read_only, ..self.launch.clone() }
    }
}

/// What a package that declares a tool may read: the tool's file, or for a runtime found in a
/// `bin` directory, its whole installation (its libraries live beside it).
pub fn tool_locations(resources: &crate::wire::NodeResources, protected: &[PathBuf]) -> BTreeMap<String, PathBuf> {
    locations(&resources.tools, &resources.runtimes, protected)
}

fn locations(
    tools: &[crate::wire::ToolInfo],
    runtimes: &[crate::wire::ToolInfo],
    protected: &[PathBuf],
) -> BTreeMap<String, PathBuf> {
    let usable = |t: &&crate::wire::ToolInfo| t.error.is_none();
    // A prefix that is the root, or holds the data dir or a volume (keys, the store, other
    // builds' sandboxes), would expose those to every package: then only the executable is.
    let protected: Vec<PathBuf> = protected.iter().map(|p| p.canonicalize().unwrap_or_else(|_| p.clone())).collect();
    let too_wide = |dir: &Path| dir.parent().is_none() || protected.iter().any(|p| p.starts_with(dir));
    let mut out = BTreeMap::new();
    for t in tools.iter().filter(usable) {
        let path = PathBuf::from(&t.path);
        out.insert(t.name.clone(), path.canonicalize().unwrap_or(path));
    }
    for r in runtimes.iter().filter(usable) {
        let path = PathBuf::from(&r.path);
        let exe = path.canonicalize().unwrap_or(path);
        let prefix = exe.parent().filter(|d| d.ends_with("bin")).and_then(Path::parent).filter(|p| !too_wide(p));
        out.insert(r.name.clone(), prefix.map(Path::to_path_buf).unwrap_or(exe));
    }
    out
}

struct InFlight {
    build_id: String,
    requester: NodeId,
    cancel: Arc<AtomicBool>,
}

pub struct ExecutorActor {
    opts: Arc<ExecutorOptions>,
    running: HashMap<u64, InFlight>,
    next_id: u64,
    /// Builds cancelled recently, by (requester, build id).
    cancelled: HashMap<(NodeId, String), Instant>,
}

impl ExecutorActor {
    pub fn new(opts: ExecutorOptions) -> ExecutorActor {
        ExecutorActor { opts: Arc::new(opts), running: HashMap::new(), next_id: 1, cancelled: HashMap::new() }
    }
}

impl Actor for ExecutorActor {
    type Context = Context<Self>;

    fn stopping(&mut self, _: &mut Context<Self>) -> Running {
        for r in self.running.values() {
            r.cancel.store(true, Ordering::SeqCst);
        }
        actix::Running::Stop
    }
}

/// This node's sandboxes on a storage volume: a directory of its own under
/// [`VOLUME_SANDBOX_DIR`], since nodes on one machine may share a volume, and each clears its
/// own at start.
pub fn volume_sandboxes(volume: &Path, node: &NodeId) -> PathBuf {
    volume.join(VOLUME_SANDBOX_DIR).join(node.as_str())
}

/// Where the sandbox of a run goes: the requested volume when it is one of this node's, else the
/// data dir's sandboxes.
pub fn sandbox_root(opts: &ExecutorOptions, volume: Option<&str>) -> PathBuf {
    match volume.map(Path::new) {
        Some(v) if opts.volumes.iter().any(|own| own == v) => volume_sandboxes(v, &opts.me),
        Some(v) => {
            log::warn!("volume {} is not one of this node's; using the data dir", v.display());
            opts.sandboxes.clone()
        }
        None => opts.sandboxes.clone(),
    }
}

/// Leases, ledger entries, the run and the release, in that order; the release happens whatever
/// the run did.
async fn execute(
    opts: Arc<ExecutorOptions>,
    req: RunRequest,
    cancel: Arc<AtomicBool>,
) -> Result<TaskResult, RemoteError> {
    let lease =
        |amount| LeaseRequest { amount, holder: req.task.build_id.clone(), ttl_ms: LEASE_TTL_MS, epoch: req.epoch };
    let busy = |e: NodeError| match e {
        NodeError::Lease(l) => RemoteError::Busy(l.to_string()),
        NodeError::Unavailable => RemoteError::Stopped,
        other => RemoteError::Failed(other.to_string()),
    };
    let cpu = opts.node.lease("cpu", lease(req.cores)).await.map_err(busy)?;
    let memory = match req.memory_bytes {
        Some(bytes) => match opts.node.lease("memory", lease(bytes)).await {
            Ok(l) => Some(l),
            Err(e) => {
                let _ = opts.node.release("cpu", &cpu.id).await;
                return Err(busy(e));
            }
        },
        None => None,
    };
    let allocated = serde_json::json!({
        "allocation_id": cpu.id,
        "build_id": req.task.build_id,
        "package": req.task.package,
        "for_node": req.requester,
        "cores": req.cores,
        "memory_bytes": req.memory_bytes,
    });
    // Queued now, so it precedes the release in the chain; its sync (4 ms on this machine's
    // disk) overlaps the package instead of delaying it, and is shared with the other packages'
    // entries queued within `ledger::SOON`.
    let recorded = opts.ledger.submit(LedgerEntryType::ResourceAllocated, allocated, Commit::Soon);
    let root = sandbox_root(&opts, req.volume.as_deref());
    let (cas, task, launch, output) =
        (opts.cas.clone(), req.task.clone(), opts.launch_for(&req.task), req.output.clone());
    let ran = actix_rt::task::spawn_blocking(move || {
        let (result, used) = sandbox::run(&cas, &root, &task, &launch, &cancel, output);
        // The result goes back at once; the sandbox is emptied for the next package meanwhile.
        actix_rt::task::spawn_blocking(move || used.release());
        result
    })
    .await;
    let _ = opts.node.release("cpu", &cpu.id).await;
    if let Some(m) = memory {
        let _ = opts.node.release("memory", &m.id).await;
    }
    let released = serde_json::json!({ "allocation_id": cpu.id, "build_id": req.task.build_id });
    let release_recorded = opts.ledger.submit(LedgerEntryType::ResourceReleased, released, Commit::Soon);
    // The result does not wait for either sync: groups commit in chain order, so both entries
    // are durable before anything appended after them is acknowledged — a local build's own
    // `BuildCompleted`, which the build waits for before it reports the end, included.
    actix_rt::spawn(async move {
        if let Err(e) = recorded.await {
            log::warn!("recording an allocation: {e}");
        }
        if let Err(e) = release_recorded.await {
            log::warn!("recording a release: {e}");
        }
    });
    match ran {
        Ok(Ok(result)) => Ok(result),
        Ok(Err(sandbox::Cancelled)) => Err(RemoteError::Cancelled),
        Err(e) => Err(RemoteError::Failed(format!("the task panicked: {e}"))),
    }
}

/// Runs one package here.
#[derive(Message)]
#[rtype(result = "Result<TaskResult, RemoteError>")]
struct Run(RunRequest);

impl Handler<Run> for ExecutorActor {
    type Result = ResponseActFuture<Self, Result<TaskResult, RemoteError>>;

    fn handle(&mut self, Run(req): Run, _: &mut Context<Self>) -> Self::Result {
        // Paths are data: whoever asked, a task naming a place outside its sandbox (through its
        // build id, package, files or outputs) is refused before a lease is taken.
        if let Err(bad) = req.task.check_paths() {
            return Box::pin(fut::ready(Err(RemoteError::Refused(bad.to_string()))));
        }
        if req.requester != self.opts.me && self.opts.launch.level < self.opts.required {
            let why = format!(
                "this node contains packages with {} but its configuration requires {} (sandbox.require)",
                self.opts.launch.level, self.opts.required
            );
            return Box::pin(fut::ready(Err(RemoteError::Refused(why))));
        }
        self.cancelled.retain(|_, at| at.elapsed() < CANCEL_MEMORY);
        if self.cancelled.contains_key(&(req.requester.clone(), req.task.build_id.clone())) {
            return Box::pin(fut::ready(Err(RemoteError::Cancelled)));
        }
        let id = self.next_id;
        self.next_id += 1;
        let cancel = Arc::new(AtomicBool::new(false));
        let running =
            InFlight { build_id: req.task.build_id.clone(), requester: req.requester.clone(), cancel: cancel.clone() };
        self.running.insert(id, running);
        Box::pin(execute(self.opts.clone(), req, cancel).into_actor(self).map(move |result, act, _| {
            act.running.remove(&id);
            result
        }))
    }
}

/// Kills every package of a build that `requester` asked for (any requester when `None`).
#[derive(Message)]
#[rtype(result = "usize")]
struct Cancel {
    build_id: Option<String>,
    requester: Option<NodeId>,
}

impl Handler<Cancel> for ExecutorActor {
    type Result = usize;

    fn handle(&mut self, msg: Cancel, _: &mut Context<Self>) -> usize {
        let matches = |r: &InFlight| {
            msg.build_id.as_ref().is_none_or(|b| *b == r.build_id)
                && msg.requester.as_ref().is_none_or(|n| *n == r.requester)
        };
        let mut killed = 0;
        for r in self.running.values().filter(|r| matches(r)) {
            r.cancel.store(true, Ordering::SeqCst);
            killed += 1;
        }
        if let (Some(build), Some(requester)) = (msg.build_id, msg.requester) {
            self.cancelled.insert((requester, build), Instant::now());
        }
        killed
    }
}

/// Typed front of the executor.
#[derive(Clone)]
pub struct ExecutorHandle {
    addr: Addr<ExecutorActor>,
}

impl ExecutorHandle {
    pub fn start(opts: ExecutorOptions) -> ExecutorHandle {
        ExecutorHandle { addr: ExecutorActor::new(opts).start() }
    }

    /// Runs a package on this node: leases, sandbox, process group, ledger, release.
    pub async fn run(&self, req: RunRequest) -> Result<TaskResult, RemoteError> {
        self.addr.send(Run(req)).await.unwrap_or(Err(RemoteError::Stopped))
    }

    /// Kills the running packages of `build_id` that `requester` asked for, and refuses that
    /// build's later requests; returns how many were killed.
    pub async fn cancel_build(&self, requester: &NodeId, build_id: &str) -> usize {
        let msg = Cancel { build_id: Some(build_id.to_string()), requester: Some(requester.clone()) };
        self.addr.send(msg).await.unwrap_or(0)
    }

    /// Kills everything a node asked for: it is gone, and nobody is waiting for the results.
    pub fn cancel_requester(&self, requester: &NodeId) {
        self.addr.do_send(Cancel { build_id: None, requester: Some(requester.clone()) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(path: &Path) -> crate::wire::ToolInfo {
        crate::wire::ToolInfo {
            name: "python".into(),
            path: path.display().to_string(),
            version: Some("3.11.7".into()),
            version_output: None,
            capabilities: vec![],
            error: None,
        }
    }

    #[test]
    fn a_runtime_is_exposed_by_its_prefix_unless_that_would_expose_the_data_dir() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().canonicalize().expect("canonical");
        for bin in ["opt/py/bin", "home/bin"] {
            std::fs::create_dir_all(base.join(bin)).expect("bin");
            std::fs::write(base.join(bin).join("python3"), "").expect("interpreter");
        }
        let data = base.join("home/.buildnet");
        std::fs::create_dir_all(&data).expect("data dir");
        let at = |bin: &str| {
            locations(&[], &[runtime(&base.join(bin).join("python3"))], std::slice::from_ref(&data))["python"].clone()
        };
        assert_eq!(at("opt/py/bin"), base.join("opt/py"), "its installation, libraries and all");
        assert_eq!(at("home/bin"), base.join("home/bin/python3"), "not the home holding the data dir: the file alone");
    }
}
