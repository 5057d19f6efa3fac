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

use actix::prelude::*;
use rusqlite::params;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::build::cas::Cas;
use crate::build::Builds;
use crate::config::{ConfigError, NodeConfig};
use crate::discovery::{self, ScanInput};
use crate::events::{Event, EventBus};
use crate::identity::{self, Identity, IdentityError};
use crate::keys::{KeyError, Keys};
use crate::lease::LeaseError;
use crate::ledger::LedgerHandle;
use crate::mesh::roster::RosterError;
use crate::mesh::{MeshActor, MeshHandle, MeshOptions};
use crate::pool::{PoolActor, PoolHandle};
use crate::resource::{self, ResourceActor, ResourceInfo, ResourceStatus};
use crate::store::{self, Durability, StoreError, StoreHandle};
use crate::wire::{self, Lease, LeaseRequest, LedgerEntryType, NodeId, NodeResources, Role};

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
    #[error(transparent)]
    Config(#[from] ConfigError),
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
}

/// A node's state as `/api/node` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeStatus {
    pub node_id: NodeId,
    pub name: String,
    pub address: String,
    pub version: String,
    /// Role in the mesh (plan §1.2); a lone node coordinates itself.
    pub role: String,
    /// `online` or `busy` (some resource fully leased).
    pub status: String,
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
    pub benchmarks: crate::bench::BenchmarkScores,
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
    identity: Identity,
    name: String,
    address: String,
    config: NodeConfig,
    data_dir: PathBuf,
    started_at_ms: u64,
    resources: NodeResources,
    children: BTreeMap<String, Addr<ResourceActor>>,
    store: StoreHandle,
    ledger: LedgerHandle,
    events: EventBus,
    benchmarks: crate::bench::BenchmarkScores,
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
async fn persist(
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
            role: "coordinator".into(),
            status: "online".into(),
            tags: self.config.node_tags.clone(),
            started_at_ms: self.started_at_ms,
            uptime_ms: now.saturating_sub(self.started_at_ms),
            accept_remote_builds: self.config.scheduling.accept_remote_builds,
            priority_weight: self.config.scheduling.priority_weight,
            resources: self.resources.clone(),
            resource_status: Vec::new(),
            benchmarks: self.benchmarks.clone(),
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
                status.status = "busy".into();
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
            if r.cpu.is_some() {
                self.benchmarks.next_due_ms = next_benchmark_due(&self.config, wire::now_ms(), r.timestamp_ms);
            }
        }
    }
}

/// When a node next wants a scheduled benchmark, given the time of its last one (0: never).
pub fn next_benchmark_due(config: &NodeConfig, now_ms: u64, last_ms: u64) -> Option<u64> {
    let hours = config.benchmark.interval_hours;
    (hours > 0.0).then(|| if last_ms == 0 { now_ms } else { last_ms + (hours * 3_600_000.0) as u64 })
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
        Box::pin(async move {
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
    addr: Addr<NodeActor>,
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

/// What one benchmark run measures.
#[derive(Debug, Clone, Default)]
pub struct BenchmarkSelection {
    pub cpu: bool,
    pub memory: bool,
    /// Directories whose volumes are tested.
    pub storage: Vec<PathBuf>,
    /// Peers whose links are tested.
    pub network: Vec<NodeId>,
    pub options: crate::bench::BenchOptions,
    pub network_options: crate::mesh::netbench::NetworkOptions,
}

/// Everything a running node consists of; the web layer holds one.
#[derive(Clone)]
pub struct Node {
    pub bench: crate::bench::BenchHandle,
    pub builds: Builds,
    pub identity: Identity,
    pub node: NodeHandle,
    pub pool: PoolHandle,
    pub mesh: MeshHandle,
    pub events: EventBus,
    pub keys: Keys,
    pub ledger: LedgerHandle,
    pub store: StoreHandle,
    pub data_dir: PathBuf,
    pub address: String,
}

impl Node {
    /// Runs a benchmark: local figures on the benchmark thread, then each peer's link. While it
    /// runs the node advertises `running`, so the coordinator grants no other node a turn; the
    /// results are recorded (`benchmarks`, ledger) and advertised. A peer that cannot be
    /// measured is left out of a run with several parts and fails a run of that peer alone.
    pub async fn benchmark(&self, want: BenchmarkSelection) -> Result<crate::bench::BenchmarkResults, String> {
        self.node.benchmark_update(true, None).await;
        let started_ms = wire::now_ms();
        let outcome = self.measure(want).await.map(|mut r| {
            r.timestamp_ms = wire::now_ms();
            r.duration_ms = r.timestamp_ms.saturating_sub(started_ms);
            r
        });
        if let Ok(r) = &outcome {
            self.bench.record(r).await;
        }
        self.node.benchmark_update(false, outcome.as_ref().ok().cloned()).await;
        outcome
    }

    async fn measure(&self, want: BenchmarkSelection) -> Result<crate::bench::BenchmarkResults, String> {
        let status = self.node.status().await.map_err(|e| e.to_string())?;
        let only_network = !want.cpu && !want.memory && want.storage.is_empty();
        let mut results = if only_network {
            crate::bench::BenchmarkResults {
                node_id: status.node_id.to_string(),
                timestamp_ms: wire::now_ms(),
                duration_ms: 0,
                cpu: None,
                memory: None,
                storage: vec![],
                network: vec![],
            }
        } else {
            self.bench
                .measure(crate::bench::Run {
                    node_id: status.node_id.to_string(),
                    cpu_threads: want.cpu.then_some(status.resources.cpu.count),
                    memory: want.memory,
                    storage: want.storage.clone(),
                    options: want.options.clone(),
                })
                .await?
        };
        for peer in &want.network {
            match self.mesh.network_test(peer.clone(), want.network_options.clone()).await {
                Ok(r) => results.network.push(r),
                Err(e) if only_network && want.network.len() == 1 => return Err(e),
                Err(e) => log::warn!("network benchmark to {peer}: {e}"),
            }
        }
        Ok(results)
    }

    /// Everything, on every volume and to every online peer: `buildnet test all`, the schedule.
    pub async fn full_selection(&self, quick: bool) -> BenchmarkSelection {
        let storage = match self.node.status().await {
            Ok(s) => s.resources.storage.iter().map(|v| PathBuf::from(&v.path)).collect(),
            Err(_) => vec![self.data_dir.clone()],
        };
        let network = match self.mesh.peers().await {
            Some((_, peers)) => peers
                .into_iter()
                .filter(|p| p.status != "offline" && p.role != Role::Observer)
                .map(|p| p.node_id)
                .collect(),
            None => vec![],
        };
        let (options, network_options) = if quick {
            (
                crate::bench::BenchOptions { cpu_secs: 0.5, file_mb: 32, random_secs: 0.5, memory_mb: 64 },
                crate::mesh::netbench::NetworkOptions { samples: 20, interval_ms: 5, size_mb: 4 },
            )
        } else {
            Default::default()
        };
        BenchmarkSelection { cpu: true, memory: true, storage, network, options, network_options }
    }

    /// Runs this node's turns of the benchmark schedule: the first one quick (start-up), later
    /// ones full.
    fn serve_benchmark_turns(&self) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        self.mesh.set_benchmark_sink(tx);
        let node = self.clone();
        actix::spawn(async move {
            let mut quick = true;
            while rx.recv().await.is_some() {
                let selection = node.full_selection(quick).await;
                quick = false;
                if let Err(e) = node.benchmark(selection).await {
                    log::warn!("scheduled benchmark: {e}");
                    // Tell the schedule this turn is over, so it does not wait for it.
                    node.node.benchmark_update(false, None).await;
                }
            }
        });
    }

    /// Stops the node on purpose: records the stop, stops the actors, closes the database.
    pub async fn shutdown(&self, reason: &str) {
        if let Err(e) = self
            .ledger
            .append(
                LedgerEntryType::NodeStopped,
                serde_json::json!({ "node_id": self.identity.node_id, "reason": reason }),
            )
            .await
        {
            log::warn!("recording the stop: {e}");
        }
        let _ = self.node.addr.send(Stop).await;
        self.ledger.close().await;
        self.store.close().await;
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

/// What `start` did that the user must be told.
pub struct Started {
    pub node: Node,
    /// The admin key created on this start (first start, or none left), shown once.
    pub new_admin_key: Option<String>,
    pub first_start: bool,
}

/// The name this node had before, so a restart without `--name` keeps it.
async fn stored_name(store: &StoreHandle, id: &NodeId) -> Option<String> {
    store.optional_text("SELECT name FROM nodes WHERE id = ?1", id.to_string()).await.ok().flatten()
}

/// Creates the data dir if needed.
pub fn prepare_data_dir(path: &Path) -> Result<(), NodeError> {
    std::fs::create_dir_all(path).map_err(|source| NodeError::DataDir { path: path.to_path_buf(), source })
}

/// Starts a node: identity, database, ledger, first scan, actors, keys.
pub async fn start(opts: NodeOptions) -> Result<Started, NodeError> {
    prepare_data_dir(&opts.data_dir)?;
    for s in &opts.config.resource_limits.storage {
        std::fs::create_dir_all(&s.path).map_err(|source| NodeError::DataDir { path: s.path.clone(), source })?;
    }
    let (identity, first_start) = Identity::load_or_create(&opts.data_dir)?;
    let db_path = opts.data_dir.join(store::DB_FILE);
    let store = StoreHandle::start(store::open(&db_path, Durability::Normal)?);
    let events = EventBus::default();
    let ledger = LedgerHandle::start(&db_path, identity.clone(), Some(events.clone()))?;
    let bench = crate::bench::BenchHandle::start(store.clone(), ledger.clone());
    let mut benchmarks = bench.latest().await;
    benchmarks.next_due_ms = if opts.config.benchmark.on_start {
        Some(wire::now_ms())
    } else {
        next_benchmark_due(&opts.config, wire::now_ms(), benchmarks.measured_at_ms)
    };

    let resources = run_scan(opts.config.clone(), opts.data_dir.clone()).await?;
    opts.config.validate_for_machine(&opts.config_file, resources.cpu.count)?;
    let name = opts
        .name
        .clone()
        .or_else(|| opts.config.node_name.clone())
        .or(stored_name(&store, &identity.node_id).await)
        .or_else(|| sysinfo::System::host_name().ok())
        .unwrap_or_else(|| identity.node_id.to_string());
    persist(&store, &identity, &name, &opts.address, &resources).await?;

    let node_actor = NodeActor {
        identity: identity.clone(),
        name: name.clone(),
        address: opts.address.clone(),
        config: opts.config.clone(),
        data_dir: opts.data_dir.clone(),
        started_at_ms: wire::now_ms(),
        resources: resources.clone(),
        children: BTreeMap::new(),
        store: store.clone(),
        ledger: ledger.clone(),
        events: events.clone(),
        benchmarks,
    }
    .start();
    let node = NodeHandle { addr: node_actor };
    let cas = Cas::open(opts.data_dir.join("cas")).map_err(|e| NodeError::Scan(e.to_string()))?;
    let sandboxes = opts.data_dir.join("sandboxes");
    let _ = std::fs::remove_dir_all(&sandboxes);
    let mesh = MeshHandle::start(
        MeshActor::load(MeshOptions {
            identity: identity.clone(),
            name: name.clone(),
            address: opts.config.network.advertise_address.clone().unwrap_or_else(|| opts.address.clone()),
            data_dir: opts.data_dir.clone(),
            priority_weight: opts.config.scheduling.priority_weight,
            bootstrap: opts.config.network.peers.clone(),
            create_if_missing: opts.create_mesh,
            store: store.clone(),
            ledger: ledger.clone(),
            node: node.clone(),
            events: events.clone(),
            cas: cas.clone(),
            sandboxes: sandboxes.join("remote"),
            accept_remote_builds: opts.config.scheduling.accept_remote_builds,
            local_only_hours: opts.config.local_only_windows(),
        })
        .await?,
    );
    let pool = PoolHandle { addr: PoolActor::new(node.clone(), mesh.clone()).start() };
    let builds = Builds::new(
        identity.node_id.clone(),
        node.clone(),
        mesh.clone(),
        pool.clone(),
        ledger.clone(),
        store.clone(),
        events.clone(),
        cas,
        sandboxes,
    );

    let entry_type = if first_start { LedgerEntryType::NodeJoined } else { LedgerEntryType::NodeStarted };
    ledger
        .append(
            entry_type,
            serde_json::json!({
                "node_id": identity.node_id,
                "node_name": name,
                "address": opts.address,
                "public_key": wire::hex(&identity.public_key()),
                "capabilities": {
                    "cores": resources.cpu.offered,
                    "memory_bytes": resources.memory.offered_bytes,
                    "tools": resources.tools.iter().filter(|t| t.error.is_none()).map(|t| &t.name).collect::<Vec<_>>(),
                    "runtimes": resources.runtimes.iter().filter(|t| t.error.is_none()).map(|t| &t.name).collect::<Vec<_>>(),
                },
            }),
        )
        .await?;

    let keys = Keys::load(store.clone(), ledger.clone()).await?;
    let mut new_admin_key = None;
    if !keys.has_admin() {
        let (secret, _) = keys.create("admin", Role::Admin, None, "buildnet up").await?;
        identity::write_secret(&opts.data_dir.join(ADMIN_KEY_FILE), format!("{secret}\n").as_bytes())
            .map_err(|source| NodeError::DataDir { path: opts.data_dir.join(ADMIN_KEY_FILE), source })?;
        new_admin_key = Some(secret);
    }

    let node = Node {
        bench,
        builds,
        identity,
        node,
        pool,
        mesh,
        events,
        keys,
        ledger,
        store,
        data_dir: opts.data_dir,
        address: opts.address,
    };
    node.serve_benchmark_turns();
    Ok(Started { node, new_admin_key, first_start })
}

/// Options for a node in the engine's own tests.
#[cfg(test)]
pub(crate) fn test_options(data_dir: &Path) -> NodeOptions {
    NodeOptions {
        data_dir: data_dir.to_path_buf(),
        config: NodeConfig::default(),
        config_file: "test".into(),
        name: Some("t".into()),
        address: "http://127.0.0.1:1".into(),
        create_mesh: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn started(dir: &Path) -> Started {
        start(test_options(dir)).await.expect("node starts")
    }

    #[actix::test]
    async fn a_node_supervises_one_actor_per_resource() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = started(dir.path()).await;
        assert!(s.first_start);
        assert!(s.new_admin_key.is_some());
        let status = s.node.node.status().await.expect("status");
        let keys: Vec<&str> = status.resource_status.iter().map(|r| r.key.as_str()).collect();
        assert!(keys.contains(&"cpu") && keys.contains(&"memory"));
        assert!(keys.iter().any(|k| k.starts_with("storage:")));
        let expected =
            2 + status.resources.storage.len() + status.resources.tools.len() + status.resources.runtimes.len();
        assert_eq!(status.resource_status.len(), expected);
    }

    #[actix::test]
    async fn rescan_keeps_leases_and_second_start_reuses_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = started(dir.path()).await;
        let lease = s
            .node
            .node
            .lease("cpu", LeaseRequest { amount: 1, holder: "test".into(), ttl_ms: 60_000, epoch: 0 })
            .await
            .expect("lease");
        let outcome = s.node.node.rescan().await.expect("rescan");
        assert!(outcome.success);
        let status = s.node.node.status().await.expect("status");
        let cpu = status.resource_status.iter().find(|r| r.key == "cpu").expect("cpu");
        assert_eq!(cpu.leases.len(), 1);
        assert_eq!(cpu.leases[0].id, lease.id);
        assert!(matches!(
            s.node.node.lease("gpu", LeaseRequest { amount: 1, holder: "t".into(), ttl_ms: 1, epoch: 0 }).await,
            Err(NodeError::UnknownResource(_))
        ));
        let id = s.node.identity.node_id.clone();
        drop(s);
        let again = started(dir.path()).await;
        assert!(!again.first_start);
        assert!(again.new_admin_key.is_none(), "the admin key exists already");
        assert_eq!(again.node.identity.node_id, id);
    }
}
