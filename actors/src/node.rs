//! `NodeActor`: the node itself. It holds the identity and config, owns the latest scan, and
//! supervises one [`ResourceActor`] per resource.
//!
//! ## Supervision
//!
//! ```text
//! NodeActor                      (one per process; started by `start`)
//! ├── ResourceActor "cpu"        Supervisor::start — restarted with its leases if it stops
//! ├── ResourceActor "memory"
//! ├── ResourceActor "storage:…"  one per volume
//! ├── ResourceActor "tool:…"     one per tool and runtime
//! PoolActor                      asks NodeActor (and later peers) for the pooled view
//! LedgerActor, StoreActor        SyncArbiter threads, each with its own SQLite connection
//! ```
//!
//! A rescan updates children in place (capacity changes, leases stay), starts actors for new
//! resources and stops those whose resource disappeared.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix::prelude::*;
use rusqlite::params;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::config::{ConfigError, NodeConfig};
use crate::discovery::{self, ScanInput};
use crate::events::{Event, EventBus};
use crate::identity::{Identity, IdentityError};
use crate::keys::KeyError;
use crate::lease::LeaseError;
use crate::ledger::LedgerHandle;
use crate::mesh::roster::RosterError;
use crate::resource::{self, ResourceActor, ResourceInfo};
use crate::store::{StoreError, StoreHandle};
pub use crate::wire::NodeStatus;
use crate::wire::{self, Lease, LeaseRequest, LedgerEntryType, NodeResources};

/// File in the data dir holding the URL the node serves.
pub const ADDRESS_FILE: &str = "address";
/// File in the data dir holding the admin key created on first start.
pub const ADMIN_KEY_FILE: &str = "admin.key";
/// File read as the node config when `--config` is not given.
pub const CONFIG_FILE: &str = "node-config.json";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("data dir {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error(
        "data dir {} is in use by another node{}: stop that one first (one that is stopping lets go within \
         seconds), or give this one a data dir of its own with --data-dir",
        path.display(),
        holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    DataDirInUse { path: PathBuf, holder: Option<u32> },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "the node's name (--name, or node_name in the node config): must be 1 to {} printable characters, with no blank at either end",
        wire::MAX_NAME
    )]
    BadName,
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("no resource '{0}' on this node")]
    UnknownResource(String),
    #[error("the scan could not run: {0}")]
    Scan(String),
    #[error("the node actor is not running")]
    Unavailable,
    #[error("mesh: {0}")]
    Mesh(#[from] RosterError),
    #[error("this node's own ledger was altered: {0}; restore the data dir from a backup — the node will not serve or extend altered entries")]
    LedgerAltered(String),
}

/// How to start a node.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub data_dir: PathBuf,
    pub config: NodeConfig,
    /// Where the config came from, for messages.
    pub config_file: String,
    pub name: Option<String>,
    /// The URL this node serves (after binding).
    pub address: String,
    /// Make this node a mesh of its own when it belongs to none (false while joining one).
    pub create_mesh: bool,
    /// The `buildnet` binary, re-executed as `sandbox-exec` to contain packages (`None`: no
    /// containment — the engine's own tests, which have no such binary).
    pub launcher: Option<PathBuf>,
    /// The data dir, taken for this node ([`lock_data_dir`]) before anything in it is touched;
    /// let go by the node's shutdown.
    pub lock: Arc<DataDirLock>,
}

/// Result of a rescan.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScanOutcome {
    pub success: bool,
    /// Whether what the node has changed (and so went into the ledger).
    pub changed: bool,
    pub resources: NodeResources,
}

pub struct NodeActor {
    pub(crate) identity: Identity,
    pub(crate) name: String,
    pub(crate) address: String,
    pub(crate) config: NodeConfig,
    pub(crate) data_dir: PathBuf,
    pub(crate) started_at_ms: u64,
    pub(crate) resources: NodeResources,
    pub(crate) children: BTreeMap<String, Addr<ResourceActor>>,
    pub(crate) store: StoreHandle,
    pub(crate) ledger: LedgerHandle,
    pub(crate) events: EventBus,
    pub(crate) benchmarks: crate::bench::BenchmarkScores,
    pub(crate) sandbox: wire::SandboxLevel,
    /// The data dir's line of the pool's tool versions; this node's part is set on each scan.
    pub(crate) pool_tools: Arc<crate::builds::uptodate::PoolTools>,
}

impl Actor for NodeActor {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        let resources = self.resources.clone();
        self.apply(resources);
    }

    fn stopping(&mut self, _: &mut Context<Self>) -> Running {
        // Dropping the last address ends a supervised actor for good (a stop would restart it).
        self.children.clear();
        Running::Stop
    }
}

impl NodeActor {
    fn infos(resources: &NodeResources) -> Vec<ResourceInfo> {
        let mut infos = vec![ResourceInfo::Cpu(resources.cpu.clone()), ResourceInfo::Memory(resources.memory.clone())];
        infos.extend(resources.storage.iter().cloned().map(ResourceInfo::Storage));
        infos.extend(resources.tools.iter().cloned().map(ResourceInfo::Tool));
        infos.extend(resources.runtimes.iter().cloned().map(ResourceInfo::Runtime));
        infos
    }

    /// Brings the children in line with a scan.
    fn apply(&mut self, resources: NodeResources) {
        let offered_cores = resources.cpu.offered;
        let mut seen = Vec::new();
        for info in Self::infos(&resources) {
            let key = info.key();
            seen.push(key.clone());
            match self.children.get(&key) {
                Some(addr) => addr.do_send(resource::UpdateInfo { info, offered_cores }),
                None => {
                    let addr = Supervisor::start(move |_| ResourceActor::new(info, offered_cores));
                    self.children.insert(key, addr);
                }
            }
        }
        self.children.retain(|key, _| seen.contains(key));
        self.pool_tools.set_local(&self.identity.node_id, resources.tool_versions());
        self.resources = resources;
    }

    fn scan_input(&self) -> (NodeConfig, PathBuf) {
        (self.config.clone(), self.data_dir.clone())
    }
}

/// Runs discovery on a blocking thread.
pub async fn run_scan(config: NodeConfig, data_dir: PathBuf) -> Result<NodeResources, NodeError> {
    actix_rt::task::spawn_blocking(move || {
        discovery::scan(&ScanInput { config: &config, data_dir: &data_dir, search_path: std::env::var_os("PATH") })
    })
    .await
    .map_err(|e| NodeError::Scan(e.to_string()))
}

/// Writes this node's row and one row per resource.
pub(crate) async fn persist(
    store: &StoreHandle,
    identity: &Identity,
    name: &str,
    address: &str,
    resources: &NodeResources,
) -> Result<(), StoreError> {
    let (id, key, name, address) =
        (identity.node_id.to_string(), identity.public_key().to_vec(), name.to_string(), address.to_string());
    let resources = resources.clone();
    store
        .run(move |c| {
            let now = wire::now_ms() as i64;
            let tx = c.transaction()?;
            let capabilities = serde_json::json!({
                "tools": resources.tools.iter().filter(|t| t.error.is_none()).map(|t| &t.name).collect::<Vec<_>>(),
                "runtimes": resources.runtimes.iter().filter(|t| t.error.is_none()).map(|t| &t.name).collect::<Vec<_>>(),
                "cores": resources.cpu.offered,
                "memory_bytes": resources.memory.offered_bytes,
            });
            tx.execute(
                "INSERT INTO nodes (id, name, address, public_key, role, status, capabilities, last_seen_at, joined_at)
                 VALUES (?1, ?2, ?3, ?4, 'coordinator', 'online', ?5, ?6, ?6)
                 ON CONFLICT(id) DO UPDATE SET name = ?2, address = ?3, public_key = ?4, status = 'online', capabilities = ?5, last_seen_at = ?6",
                params![id, name, address, key, capabilities.to_string(), now],
            )?;
            let infos = NodeActor::infos(&resources);
            let keys: Vec<String> = infos.iter().map(|i| i.key()).collect();
            for info in &infos {
                tx.execute(
                    "INSERT INTO node_resources (id, node_id, resource_type, resource_key, resource_data, last_updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT(node_id, resource_key) DO UPDATE SET resource_data = ?5, last_updated_at = ?6",
                    params![format!("{id}/{}", info.key()), id, info.kind().as_str(), info.key(), serde_json::to_string(info).map_err(|e| StoreError::Corrupt(e.to_string()))?, now],
                )?;
            }
            tx.execute(
                "INSERT INTO node_resources (id, node_id, resource_type, resource_key, resource_data, last_updated_at)
                 VALUES (?1, ?2, 'network', 'network', ?3, ?4)
                 ON CONFLICT(node_id, resource_key) DO UPDATE SET resource_data = ?3, last_updated_at = ?4",
                params![format!("{id}/network"), id, serde_json::to_string(&resources.network).map_err(|e| StoreError::Corrupt(e.to_string()))?, now],
            )?;
            let mut stale = Vec::new();
            {
                let mut stmt = tx.prepare("SELECT resource_key FROM node_resources WHERE node_id = ?1 AND resource_key != 'network'")?;
                for k in stmt.query_map([&id], |r| r.get::<_, String>(0))? {
                    let k = k?;
                    if !keys.contains(&k) {
                        stale.push(k);
                    }
                }
            }
            for k in stale {
                tx.execute("DELETE FROM node_resources WHERE node_id = ?1 AND resource_key = ?2", params![id, k])?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
}

/// The node's status with every resource's leases.
#[derive(Message)]
#[rtype(result = "Result<NodeStatus, NodeError>")]
pub struct GetNodeStatus;

impl Handler<GetNodeStatus> for NodeActor {
    type Result = ResponseFuture<Result<NodeStatus, NodeError>>;

    fn handle(&mut self, _: GetNodeStatus, _: &mut Context<Self>) -> Self::Result {
        let children: Vec<_> = self.children.values().cloned().collect();
        let now = wire::now_ms();
        let mut status = NodeStatus {
            node_id: self.identity.node_id.clone(),
            name: self.name.clone(),
            address: self.address.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            // What the node alone knows; the mesh and `Node::status` put in the coordinator.
            role: wire::NodeRole::Worker,
            status: wire::NodeState::Online,
            tags: self.config.node_tags.clone(),
            started_at_ms: self.started_at_ms,
            uptime_ms: now.saturating_sub(self.started_at_ms),
            accept_remote_builds: self.config.scheduling.accept_remote_builds,
            priority_weight: self.config.scheduling.priority_weight,
            resources: self.resources.clone(),
            resource_status: Vec::new(),
            benchmarks: self.benchmarks.clone(),
            sandbox: self.sandbox,
        };
        Box::pin(async move {
            for child in children {
                status.resource_status.push(child.send(resource::GetStatus).await.map_err(|_| NodeError::Unavailable)?);
            }
            let saturated = status
                .resource_status
                .iter()
                .any(|r| matches!(r.kind, wire::ResourceKind::Cpu) && r.capacity > 0 && r.available == 0);
            if saturated {
                status.status = wire::NodeState::Busy;
            }
            // A benchmarking node takes no new packages (see `LeaseResource`): it offers no core.
            if status.benchmarks.running {
                status.status = wire::NodeState::Busy;
                for r in status.resource_status.iter_mut().filter(|r| matches!(r.kind, wire::ResourceKind::Cpu)) {
                    r.available = 0;
                }
            }
            Ok(status)
        })
    }
}

/// A benchmark started (`results: None`) or ended; results fold into what the node advertises.
#[derive(Message)]
#[rtype(result = "()")]
pub struct BenchmarkUpdate {
    pub running: bool,
    pub results: Option<crate::bench::BenchmarkResults>,
}

impl Handler<BenchmarkUpdate> for NodeActor {
    type Result = ();

    fn handle(&mut self, msg: BenchmarkUpdate, _: &mut Context<Self>) {
        self.benchmarks.running = msg.running;
        if let Some(r) = msg.results {
            self.benchmarks.merge(&r);
            if let Some(cpu) = &r.cpu {
                // A disturbed run is tried again sooner than the interval, not at once: a busy
                // machine would disturb it again.
                let last = if cpu.disturbed.is_some() {
                    let interval = (self.config.benchmark.interval_hours * 3_600_000.0) as u64;
                    r.timestamp_ms.saturating_sub(interval.saturating_sub(DISTURBED_RETRY_MS))
                } else {
                    r.timestamp_ms
                };
                self.benchmarks.next_due_ms = next_benchmark_due(&self.config, wire::now_ms(), last);
            }
        }
    }
}

/// How soon a scheduled benchmark that other work disturbed is tried again (at most the interval).
pub const DISTURBED_RETRY_MS: u64 = 10 * 60_000;

/// When a node next wants a scheduled benchmark, given the time of its last one (0: never).
pub fn next_benchmark_due(config: &NodeConfig, now_ms: u64, last_ms: u64) -> Option<u64> {
    let hours = config.benchmark.interval_hours;
    (hours > 0.0).then(|| if last_ms == 0 { now_ms } else { last_ms + (hours * 3_600_000.0) as u64 })
}

/// When a node that starts now, last measured at `measured_ms` (0: never), runs its first
/// benchmark: at once with `benchmark.on_start`; otherwise one interval after its last run, and
/// a node never measured one interval from now. (It was due at once, so `on_start: false` still
/// benchmarked every new node at start, and a node under benchmark takes no packages.)
pub fn first_benchmark_due(config: &NodeConfig, now_ms: u64, measured_ms: u64) -> Option<u64> {
    if config.benchmark.on_start {
        return Some(now_ms);
    }
    next_benchmark_due(config, now_ms, if measured_ms == 0 { now_ms } else { measured_ms })
}

/// Rescans the machine; live leases are kept.
#[derive(Message)]
#[rtype(result = "Result<ScanOutcome, NodeError>")]
pub struct Rescan;

impl Handler<Rescan> for NodeActor {
    type Result = ResponseActFuture<Self, Result<ScanOutcome, NodeError>>;

    fn handle(&mut self, _: Rescan, _: &mut Context<Self>) -> Self::Result {
        let (config, data_dir) = self.scan_input();
        Box::pin(
            run_scan(config, data_dir)
                .into_actor(self)
                .map(|scanned, act, _| {
                    let resources = scanned?;
                    let changed = resources.fingerprint() != act.resources.fingerprint();
                    let before = act.resources.clone();
                    act.apply(resources.clone());
                    act.events.publish(Event::ResourceUpdate {
                        node_id: act.identity.node_id.clone(),
                        resources: Box::new(resources.clone()),
                    });
                    Ok((
                        resources,
                        before,
                        changed,
                        act.store.clone(),
                        act.ledger.clone(),
                        act.identity.clone(),
                        act.name.clone(),
                        act.address.clone(),
                    ))
                })
                .then(|prepared: Result<_, NodeError>, _, _| {
                    fut::wrap_future(async move {
                        let (resources, before, changed, store, ledger, identity, name, address) = prepared?;
                        persist(&store, &identity, &name, &address, &resources).await?;
                        if changed {
                            ledger
                                .append(LedgerEntryType::ResourcesChanged, describe_change(&before, &resources))
                                .await?;
                        }
                        Ok(ScanOutcome { success: true, changed, resources })
                    })
                }),
        )
    }
}

/// What a rescan changed, for the ledger.
fn describe_change(before: &NodeResources, after: &NodeResources) -> serde_json::Value {
    let names = |r: &NodeResources| -> Vec<String> {
        r.tools
            .iter()
            .chain(&r.runtimes)
            .filter(|t| t.error.is_none())
            .map(|t| format!("{}@{}", t.name, t.version.clone().unwrap_or_default()))
            .collect()
    };
    let (old, new) = (names(before), names(after));
    serde_json::json!({
        "cores": [before.cpu.offered, after.cpu.offered],
        "memory_offered_bytes": [before.memory.offered_bytes, after.memory.offered_bytes],
        "storage_volumes": [before.storage.len(), after.storage.len()],
        "added": new.iter().filter(|n| !old.contains(n)).collect::<Vec<_>>(),
        "removed": old.iter().filter(|n| !new.contains(n)).collect::<Vec<_>>(),
    })
}

/// Asks the owner of a resource for a lease.
#[derive(Message)]
#[rtype(result = "Result<Lease, NodeError>")]
pub struct LeaseResource {
    pub resource_key: String,
    pub request: LeaseRequest,
}

impl Handler<LeaseResource> for NodeActor {
    type Result = ResponseFuture<Result<Lease, NodeError>>;

    fn handle(&mut self, msg: LeaseResource, _: &mut Context<Self>) -> Self::Result {
        let child = self.children.get(&msg.resource_key).cloned();
        let benchmarking = self.benchmarks.running && msg.resource_key == "cpu";
        Box::pin(async move {
            if benchmarking {
                return Err(NodeError::Lease(LeaseError::Benchmarking { resource: msg.resource_key }));
            }
            let child = child.ok_or(NodeError::UnknownResource(msg.resource_key))?;
            Ok(child
                .send(resource::RequestLease { request: msg.request })
                .await
                .map_err(|_| NodeError::Unavailable)??)
        })
    }
}

/// Gives a lease back to its owner.
#[derive(Message)]
#[rtype(result = "Result<Lease, NodeError>")]
pub struct ReleaseResource {
    pub resource_key: String,
    pub lease_id: String,
}

impl Handler<ReleaseResource> for NodeActor {
    type Result = ResponseFuture<Result<Lease, NodeError>>;

    fn handle(&mut self, msg: ReleaseResource, _: &mut Context<Self>) -> Self::Result {
        let child = self.children.get(&msg.resource_key).cloned();
        Box::pin(async move {
            let child = child.ok_or(NodeError::UnknownResource(msg.resource_key))?;
            Ok(child
                .send(resource::ReleaseLease { lease_id: msg.lease_id })
                .await
                .map_err(|_| NodeError::Unavailable)??)
        })
    }
}

/// Typed front of the node actor.
#[derive(Clone)]
pub struct NodeHandle {
    pub(crate) addr: Addr<NodeActor>,
}

impl NodeHandle {
    pub fn addr(&self) -> &Addr<NodeActor> {
        &self.addr
    }

    pub async fn status(&self) -> Result<NodeStatus, NodeError> {
        self.addr.send(GetNodeStatus).await.map_err(|_| NodeError::Unavailable)?
    }

    pub async fn rescan(&self) -> Result<ScanOutcome, NodeError> {
        self.addr.send(Rescan).await.map_err(|_| NodeError::Unavailable)?
    }

    pub async fn lease(&self, resource_key: &str, request: LeaseRequest) -> Result<Lease, NodeError> {
        self.addr
            .send(LeaseResource { resource_key: resource_key.to_string(), request })
            .await
            .map_err(|_| NodeError::Unavailable)?
    }

    pub async fn release(&self, resource_key: &str, lease_id: &str) -> Result<Lease, NodeError> {
        self.addr
            .send(ReleaseResource { resource_key: resource_key.to_string(), lease_id: lease_id.to_string() })
            .await
            .map_err(|_| NodeError::Unavailable)?
    }

    pub async fn benchmark_update(&self, running: bool, results: Option<crate::bench::BenchmarkResults>) {
        let _ = self.addr.send(BenchmarkUpdate { running, results }).await;
    }
}

/// Stops the node actor and with it every resource actor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

impl Handler<Stop> for NodeActor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// The process id of the node holding the data dir. The data dir itself is held locked by a
/// running node for its whole life ([`lock_data_dir`]): a second node on it is refused — two
/// would share one identity, database and ledger chain, and each would remove the other's
/// `address` file when it stopped — and the CLI trusts what the node keeps for it (the pool's
/// tools line) only while it is held ([`data_dir_in_use`]).
pub const LOCK_FILE: &str = "node.lock";

/// A node's hold on its data dir: let go by [`DataDirLock::release`] (the node's shutdown) or when
/// the process ends, however it ends (the kernel drops a `flock` with its last descriptor, so a
/// node killed with -9 leaves nothing to clean up).
#[derive(Debug)]
pub struct DataDirLock {
    file: std::sync::Mutex<Option<std::fs::File>>,
}

impl DataDirLock {
    pub fn release(&self) {
        self.file.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// Makes the data dir if it is missing ([`prepare_data_dir`]) and takes it for one node, writing
/// this process's id into [`LOCK_FILE`] for the message another one gets. Refused while another
/// node — in this process or another — holds it.
pub fn lock_data_dir(path: &Path) -> Result<Arc<DataDirLock>, NodeError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    prepare_data_dir(path)?;
    let lock_path = path.join(LOCK_FILE);
    let fail = |source| NodeError::DataDir { path: lock_path.clone(), source };
    // The lock is on the directory itself: a lock file can be deleted under a running node (by
    // hand, or a tmp cleaner), and a new one would let a second node lock it (found by a
    // tester). `node.lock` only says which process holds the directory.
    let dir = std::fs::File::open(path).map_err(|source| NodeError::DataDir { path: path.to_path_buf(), source })?;
    // A CLI asking whether the node runs ([`data_dir_in_use`]) holds a shared lock for a moment;
    // a node only ever holds it for its life.
    let mut tries = 0;
    loop {
        match dir.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if tries < 10 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                // The id written by the holder, if that process is alive (a CLI's probe that
                // outlasted the tries above leaves the id of the node that last held it).
                let holder = std::fs::read_to_string(&lock_path)
                    .ok()
                    .and_then(|t| t.trim().parse::<u32>().ok())
                    .filter(|pid| Path::new("/proc").join(pid.to_string()).exists());
                return Err(NodeError::DataDirInUse { path: path.to_path_buf(), holder });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                // A file system without locks (some FUSE, 9p or CIFS mounts): the node still
                // runs, without the guard.
                log::warn!(
                    "{}: cannot be locked ({e}); a second node on this data dir would not be refused, and \
                     builds ask the node even when nothing changed",
                    lock_path.display()
                );
                return Ok(Arc::new(DataDirLock { file: std::sync::Mutex::new(None) }));
            }
        }
    }
    // Readable by all: the process id is for the refusal another start prints.
    let mut file =
        std::fs::File::options().create(true).truncate(true).write(true).mode(0o644).open(&lock_path).map_err(fail)?;
    writeln!(file, "{}", std::process::id()).map_err(fail)?;
    // The last run's tools line is no one's now: gone before anything else, so no CLI trusts it
    // while this node starts (its scan can take seconds), even if the tools changed meanwhile.
    let _ = std::fs::remove_file(path.join(crate::builds::uptodate::TOOLS_FILE));
    Ok(Arc::new(DataDirLock { file: std::sync::Mutex::new(Some(dir)) }))
}

/// Whether a running node holds `data_dir` ([`lock_data_dir`]).
pub fn data_dir_in_use(data_dir: &Path) -> bool {
    let Ok(dir) = std::fs::File::open(data_dir) else { return false };
    matches!(dir.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock))
}

/// Creates the data dir if needed.
pub fn prepare_data_dir(path: &Path) -> Result<(), NodeError> {
    // A new data dir is this user's alone, as ~/.ssh is: it holds the admin key, the ledger and
    // every input and output built. One that exists keeps the mode its owner gave it.
    if path.is_dir() {
        return Ok(());
    }
    let fail = |source| NodeError::DataDir { path: path.to_path_buf(), source };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(fail)?;
    }
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        other => other.map_err(fail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_data_dir_is_this_users_alone_and_an_existing_one_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        let new = tmp.path().join("home/.buildnet");
        prepare_data_dir(&new).expect("made");
        assert_eq!(mode(&new), 0o700);
        prepare_data_dir(&new).expect("there already");
        let existing = tmp.path().join("shared");
        std::fs::create_dir(&existing).expect("mkdir");
        std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o750)).expect("chmod");
        prepare_data_dir(&existing).expect("there already");
        assert_eq!(mode(&existing), 0o750, "the owner's choice stands");
        std::fs::write(tmp.path().join("file"), "x").expect("write");
        assert!(prepare_data_dir(&tmp.path().join("file")).is_err(), "a file is not a data dir");
    }

    #[test]
    fn a_node_benchmarks_at_start_only_when_asked_to() {
        let hour = 3_600_000;
        let mut config = NodeConfig::default();
        config.benchmark.interval_hours = 24.0;
        config.benchmark.on_start = true;
        assert_eq!(first_benchmark_due(&config, 1_000, 0), Some(1_000));
        assert_eq!(first_benchmark_due(&config, 1_000, 500), Some(1_000));
        config.benchmark.on_start = false;
        assert_eq!(first_benchmark_due(&config, 1_000, 0), Some(1_000 + 24 * hour), "never measured: one interval on");
        assert_eq!(
            first_benchmark_due(&config, 30 * hour, 10 * hour),
            Some(34 * hour),
            "the last run plus an interval"
        );
        assert_eq!(first_benchmark_due(&config, 60 * hour, 10 * hour), Some(34 * hour), "overdue: at once");
        config.benchmark.interval_hours = 0.0;
        assert_eq!(first_benchmark_due(&config, 1_000, 0), None, "no schedule");
    }
}
