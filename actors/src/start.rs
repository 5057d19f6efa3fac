//! The start-up composition: brings up a whole node (identity, database, ledger, scan, resource
//! actors, executor, mesh, pool, builds, keys) and wires their handles together. [`Node`] is what
//! the web layer and the CLI's daemon hold; it also runs benchmarks, which touch several actors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix::prelude::*;

use crate::builds::Builds;
use crate::cas::Cas;
use crate::events::EventBus;
use crate::exec::{ExecutorHandle, ExecutorOptions, Launch};
use crate::identity::{self, Identity};
use crate::keys::Keys;
use crate::ledger::LedgerHandle;
use crate::mesh::{MeshActor, MeshHandle, MeshOptions, Workers};
use crate::node::{
    first_benchmark_due, persist, run_scan, DataDirLock, NodeActor, NodeError, NodeHandle, NodeOptions, NodeStatus,
    Stop, ADMIN_KEY_FILE,
};
use crate::pool::{PoolActor, PoolHandle};
use crate::store::{self, Durability, StoreHandle};
use crate::wire::{self, LedgerEntryType, NodeId, NodeRole, Role, SandboxLevel};

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

/// How long a benchmark waits for the packages already running on its node to end.
pub const DRAIN: std::time::Duration = std::time::Duration::from_secs(30);

/// Everything a running node consists of; the web layer holds one.
#[derive(Clone)]
pub struct Node {
    pub bench: crate::bench::BenchHandle,
    pub builds: Builds,
    /// Runs a package on any node of the mesh (this one included).
    pub workers: Workers,
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
    lock: Arc<DataDirLock>,
}

impl Node {
    /// This node's status as `/api/node` shows it, with its role in the mesh: the node actor
    /// knows its resources, the mesh knows who coordinates.
    pub async fn status(&self) -> Result<NodeStatus, NodeError> {
        let mut status = self.node.status().await?;
        let view = self.mesh.view().await.ok_or(NodeError::Unavailable)?;
        status.role = NodeRole::of(&status.node_id, view.role, &view.coordinator);
        Ok(status)
    }

    /// Runs a benchmark: local figures on the benchmark thread, then each peer's link. One at a
    /// time per node: a run asked for while another goes on waits for it (`waited_ms` says how
    /// long). While it runs the node advertises `running` and takes no new packages, so the
    /// coordinator grants no other node a turn and placement looks elsewhere; packages already
    /// running get [`DRAIN`] to end, else the run is marked disturbed. Results are recorded
    /// (`benchmarks`, ledger) and advertised, disturbed parts only recorded. A peer that cannot
    /// be measured is left out of a run with several parts and fails a run of that peer alone.
    pub async fn benchmark(&self, want: BenchmarkSelection) -> Result<crate::bench::BenchmarkResults, String> {
        let asked = std::time::Instant::now();
        let _turn = self.bench.turn().await;
        let waited_ms = asked.elapsed().as_millis() as u64;
        self.node.benchmark_update(true, None).await;
        let started_ms = wire::now_ms();
        let local = want.cpu || want.memory || !want.storage.is_empty();
        let busy = if local { self.drain_packages().await } else { None };
        let outcome = self.measure(want).await.map(|mut r| {
            r.timestamp_ms = wire::now_ms();
            r.duration_ms = r.timestamp_ms.saturating_sub(started_ms);
            r.waited_ms = waited_ms;
            if let Some(why) = &busy {
                r.mark_disturbed(why);
            }
            r
        });
        if let Ok(r) = &outcome {
            self.bench.record(r).await;
        }
        self.node.benchmark_update(false, outcome.as_ref().ok().cloned()).await;
        outcome
    }

    /// Waits up to [`DRAIN`] for the packages running here to end (new ones are refused while
    /// the node benchmarks); says how many still run when they do not.
    async fn drain_packages(&self) -> Option<String> {
        let deadline = std::time::Instant::now() + DRAIN;
        loop {
            let leased: u64 = match self.node.status().await {
                Ok(s) => s.resource_status.iter().filter(|r| r.kind == wire::ResourceKind::Cpu).map(|r| r.leased).sum(),
                Err(_) => 0,
            };
            if leased == 0 {
                return None;
            }
            if std::time::Instant::now() >= deadline {
                return Some(format!("packages held {leased} cores of this node when it started"));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
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
                waited_ms: 0,
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
        let network = self.pool.usable_peers().await.into_iter().map(|p| p.node_id).collect();
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
        self.mesh.stop().await;
        let _ = self.node.addr.send(Stop).await;
        self.ledger.close().await;
        self.store.close().await;
        // Last: a node started on this data dir from now on finds everything closed.
        self.lock.release();
    }
}

/// How this node will start packages: through the launcher at the level the kernel allows
/// (found by running `sandbox-exec --probe`), as `nobody` when the node runs as root.
fn containment(launcher: Option<&std::path::Path>, config: &crate::config::SandboxConfig) -> Launch {
    let Some(launcher) = launcher else { return Launch::default() };
    let probed = std::process::Command::new(launcher).args(["sandbox-exec", "--probe"]).output();
    let level = probed
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<SandboxLevel>().ok())
        .unwrap_or_default()
        .min(config.level.unwrap_or(SandboxLevel::Full));
    let root = nix::unistd::Uid::effective().is_root();
    let user = (root && level.has_namespaces()).then_some(crate::exec::contain::NOBODY);
    match level {
        SandboxLevel::None => {
            log::warn!("this kernel offers no sandbox: packages run with this node's own rights (sandbox: none)")
        }
        level => {
            log::info!("packages are contained with {level}{}", if user.is_some() { ", as user nobody" } else { "" })
        }
    }
    if level < config.require {
        log::warn!(
            "sandbox.require is {} but packages here get {level}: peers' packages will be refused",
            config.require
        );
    }
    let server = crate::exec::forkserver::ForkServer::new(launcher.to_path_buf());
    Launch { launcher: Some(std::sync::Arc::new(server)), level, user, read_only: vec![] }
}

/// Refuses to start on an altered own chain: serving it would pass the alteration on to peers,
/// and extending it would sign on top of it.
async fn verify_own_chain(ledger: &LedgerHandle, me: &NodeId) -> Result<(), NodeError> {
    let report = ledger.verify().await?;
    let mine = me.to_string();
    if report.chains.iter().all(|c| c.origin != mine || c.ok) {
        return Ok(());
    }
    Err(NodeError::LedgerAltered(match report.first_bad.filter(|b| b.origin == mine) {
        Some(bad) => format!("entry #{} {}", bad.seq, bad.reason),
        None => format!("chain {mine} does not verify"),
    }))
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

/// Starts a node: identity, database, ledger, first scan, actors, keys.
pub async fn start(opts: NodeOptions) -> Result<Started, NodeError> {
    for s in &opts.config.resource_limits.storage {
        std::fs::create_dir_all(&s.path).map_err(|source| NodeError::DataDir { path: s.path.clone(), source })?;
    }
    let (identity, first_start) = Identity::load_or_create(&opts.data_dir)?;
    let db_path = opts.data_dir.join(store::DB_FILE);
    let store = StoreHandle::start(store::open(&db_path, Durability::Normal)?);
    let events = EventBus::default();
    let ledger = LedgerHandle::start(&db_path, identity.clone(), Some(events.clone()))?;
    verify_own_chain(&ledger, &identity.node_id).await?;
    let bench = crate::bench::BenchHandle::start(store.clone(), ledger.clone());
    let mut benchmarks = bench.latest().await;
    benchmarks.next_due_ms = first_benchmark_due(&opts.config, wire::now_ms(), benchmarks.measured_at_ms);

    let resources = run_scan(opts.config.clone(), opts.data_dir.clone()).await?;
    opts.config.validate_for_machine(&opts.config_file, resources.cpu.count)?;
    // A name given (--name, or node_name in the config) must be one every member will show; one
    // found (the last start's, the host's) that is not falls back to the next, then to the id.
    let given = opts.name.clone().or_else(|| opts.config.node_name.clone());
    if given.as_deref().is_some_and(|n| !wire::is_display_name(n)) {
        return Err(NodeError::BadName);
    }
    let name = match given {
        Some(name) => name,
        None => stored_name(&store, &identity.node_id)
            .await
            .filter(|n| wire::is_display_name(n))
            .or_else(|| sysinfo::System::host_name().ok().filter(|n| wire::is_display_name(n)))
            .unwrap_or_else(|| identity.node_id.to_string()),
    };
    persist(&store, &identity, &name, &opts.address, &resources).await?;

    let launch = containment(opts.launcher.as_deref(), &opts.config.sandbox);
    let pool_tools = crate::builds::uptodate::PoolTools::new(&opts.data_dir);
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
        sandbox: launch.level,
        pool_tools: pool_tools.clone(),
    }
    .start();
    let node = NodeHandle { addr: node_actor };
    let cas = Cas::open(opts.data_dir.join("cas")).map_err(|e| NodeError::Scan(e.to_string()))?;
    // What a node killed mid-package left in its sandboxes, in the data dir and on each volume.
    let sandboxes = opts.data_dir.join("sandboxes");
    let _ = std::fs::remove_dir_all(&sandboxes);
    for volume in &resources.storage {
        clear_own(&crate::exec::volume_sandboxes(Path::new(&volume.path), &identity.node_id));
    }
    let executor = ExecutorHandle::start(ExecutorOptions {
        node: node.clone(),
        ledger: ledger.clone(),
        cas: cas.clone(),
        sandboxes,
        volumes: resources.storage.iter().map(|v| PathBuf::from(&v.path)).collect(),
        launch,
        tools: crate::exec::tool_locations(
            &resources,
            &std::iter::once(opts.data_dir.clone())
                .chain(resources.storage.iter().map(|v| PathBuf::from(&v.path)))
                .collect::<Vec<_>>(),
        ),
        required: opts.config.sandbox.require,
        me: identity.node_id.clone(),
    });
    // Before any build can start, and before the mesh brings in peers' entries from the time
    // this node was down: what was running when it last stopped has ended.
    for id in crate::builds::history::end_interrupted(&store, &ledger, &identity.node_id).await? {
        log::warn!("build {id} was running when this node stopped; it is recorded as failed (interrupted)");
    }
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
            executor: executor.clone(),
            accept_remote_builds: opts.config.scheduling.accept_remote_builds,
            local_only_hours: opts.config.local_only_windows(),
        })
        .await?,
    );
    let pool = PoolHandle::start(PoolActor::new(node.clone(), pool_tools));
    mesh.set_pool(pool.peers_sink());
    let workers = Workers::new(identity.node_id.clone(), executor, mesh.clone());
    let builds = Builds::new(
        identity.node_id.clone(),
        node.clone(),
        workers.clone(),
        pool.clone(),
        ledger.clone(),
        store.clone(),
        events.clone(),
        cas,
        opts.data_dir.clone(),
    );

    // The chain's first entry says the node joined: a first start stopped before it wrote any
    // (its key made, a signal within the first moments) is still the first.
    let joined = first_start || ledger.entries_after(identity.node_id.clone(), 0, 1).await?.is_empty();
    let entry_type = if joined { LedgerEntryType::NodeJoined } else { LedgerEntryType::NodeStarted };
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
        workers,
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
        lock: opts.lock,
    };
    node.serve_benchmark_turns();
    Ok(Started { node, new_admin_key, first_start })
}

/// Removes this node's sandboxes on a volume, `<volume>/buildnet-sandboxes/<node id>`, only when
/// both directories are real directories (not links) owned by this user: on a volume others can
/// write to, a link planted on the way would make the removal reach somewhere else.
fn clear_own(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    let owned_dir = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir() && m.uid() == me);
    match dir.parent() {
        Some(parent) if owned_dir(parent) && owned_dir(dir) => {
            let _ = std::fs::remove_dir_all(dir);
        }
        _ if dir.exists() => {
            log::warn!("{} is not a directory of this node's; its sandboxes there are not cleared", dir.display())
        }
        _ => {}
    }
}

/// Options for a node in the engine's own tests.
#[cfg(test)]
pub(crate) fn test_options(data_dir: &std::path::Path) -> NodeOptions {
    NodeOptions {
        lock: crate::node::lock_data_dir(data_dir).expect("the data dir is free"),
        data_dir: data_dir.to_path_buf(),
        config: crate::config::NodeConfig::default(),
        config_file: "test".into(),
        name: Some("t".into()),
        address: "http://127.0.0.1:1".into(),
        create_mesh: true,
        launcher: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::LeaseRequest;
    use std::path::Path;

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

    /// A build's row as its start writes it: running since `started_at`.
    async fn running_build(store: &crate::store::StoreHandle, id: &str, started_at: i64) {
        let id = id.to_string();
        store
            .run(move |c| {
                c.execute(
                    "INSERT INTO builds (id, status, started_at, triggered_by) VALUES (?1, 'running', ?2, 'test')",
                    rusqlite::params![id, started_at],
                )?;
                Ok(())
            })
            .await
            .expect("row");
    }

    /// A build's `completed_at` and `duration_ms` as its row says.
    async fn build_end(store: &crate::store::StoreHandle, id: &str) -> (i64, i64) {
        let id = id.to_string();
        store
            .run(move |c| {
                Ok(c.query_row("SELECT completed_at, duration_ms FROM builds WHERE id = ?1", [id], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?)
            })
            .await
            .expect("row")
    }

    #[actix::test]
    async fn builds_left_running_end_as_their_ledger_says_or_as_interrupted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = started(dir.path()).await;
        let (store, ledger, me) = (s.node.store.clone(), s.node.ledger.clone(), s.node.identity.node_id.clone());
        for id in ["b_done", "b_lost", "b_over"] {
            running_build(&store, id, 1).await;
        }
        // b_done's end reached the ledger but not its row (the save was lost).
        ledger
            .append(LedgerEntryType::BuildCompleted, serde_json::json!({ "build_id": "b_done" }))
            .await
            .expect("entry");
        store
            .run(|c| {
                c.execute("UPDATE builds SET status = 'succeeded' WHERE id = 'b_over'", [])?;
                Ok(())
            })
            .await
            .expect("ended");
        let ended = crate::builds::history::end_interrupted(&store, &ledger, &me).await.expect("ended");
        assert_eq!(ended, vec!["b_lost".to_string()], "only the build with no recorded end is interrupted");
        let rows: Vec<(String, String)> = store
            .run(|c| {
                let mut q = c.prepare("SELECT id, status FROM builds ORDER BY id")?;
                let rows = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
                Ok(rows)
            })
            .await
            .expect("rows");
        let want = [("b_done", "succeeded"), ("b_lost", "failed"), ("b_over", "succeeded")];
        assert_eq!(rows, want.map(|(a, b)| (a.to_string(), b.to_string())).to_vec());
        let again = crate::builds::history::end_interrupted(&store, &ledger, &me).await.expect("again");
        assert!(again.is_empty(), "nothing is ended twice");
    }

    /// A ledger row for [`end_of_interrupted`]: origin (`None`: the node itself), seq, its stamp
    /// and its arrival in ms after the build's start, its type.
    type Row = (Option<&'static str>, i64, i64, i64, &'static str);

    /// Starts a node whose store holds `id` running since a minute ago and `rows` in its ledger,
    /// each naming the build but a stop; ends interrupted builds as a start does, and returns when the
    /// build ended (ms after its start) and its duration.
    async fn end_of_interrupted(id: &str, rows: &'static [Row]) -> (i64, i64) {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = started(dir.path()).await;
        let (store, ledger, me) = (s.node.store.clone(), s.node.ledger.clone(), s.node.identity.node_id.clone());
        let start = crate::wire::now_ms() as i64 - 60_000;
        running_build(&store, id, start).await;
        let (build, own) = (id.to_string(), me.to_string());
        store
            .run(move |c| {
                let mut insert = c.prepare(
                    "INSERT INTO ledger (origin, seq, prev_hash, hlc_wall, hlc_logical, entry_type, entry_data, hash, signature, received_at)
                     VALUES (?1, ?2, '', ?3, 0, ?4,
                             CASE ?4 WHEN 'NodeStopped' THEN '{}' ELSE json_object('build_id', ?5) END, 'h', 's', ?6)",
                )?;
                for (origin, seq, stamped, received, kind) in rows {
                    let origin = origin.map_or(own.clone(), str::to_string);
                    insert.execute(rusqlite::params![origin, seq, start + stamped, kind, build, start + received])?;
                }
                Ok(())
            })
            .await
            .expect("rows");
        let ended = crate::builds::history::end_interrupted(&store, &ledger, &me).await.expect("ended");
        assert_eq!(ended, vec![id.to_string()]);
        let (completed, duration) = build_end(&store, id).await;
        (completed - start, duration)
    }

    /// An interrupted build ends at the last entry for it this node received — by this node's
    /// clock, whatever the origin stamped (a peer's clock ahead) — not at the restart.
    #[actix::test]
    async fn an_interrupted_build_ends_when_this_node_last_heard_of_it() {
        // A peer's allocation, stamped five minutes ahead by its clock, received 2 s in.
        let rows = &[(Some("peer"), 1, 360_000, 2_000, "ResourceAllocated")];
        assert_eq!(end_of_interrupted("b_peer", rows).await, (2_000, 2_000));
    }

    /// A clock set back between two runs: an earlier run's `NodeStopped`, stamped after the
    /// build's start by the clock of then, is not this build's end — what counts is the first
    /// stop after the build's start in this node's own chain. The build, killed, ends when this
    /// node last heard of it.
    #[actix::test]
    async fn an_earlier_runs_stop_stamped_later_is_not_an_interrupted_builds_end() {
        let rows = &[
            // The earlier run stopped with its clock ten minutes ahead of this run's.
            (None, 1000, 600_000, 600_000, "NodeStopped"),
            (None, 1001, 0, 0, "BuildStarted"),
            // The last this node heard of the build before it was killed: 3 s in.
            (None, 1002, 3_000, 3_000, "ResourceReleased"),
        ];
        assert_eq!(end_of_interrupted("b_back", rows).await, (3_000, 3_000));
        // Stopped on purpose after it, the build ends at this run's stop, stamped by this clock.
        let rows = &[
            (None, 1000, 600_000, 600_000, "NodeStopped"),
            (None, 1001, 0, 0, "BuildStarted"),
            (None, 1002, 3_000, 3_000, "ResourceReleased"),
            (None, 1003, 4_000, 4_000, "NodeStopped"),
        ];
        assert_eq!(end_of_interrupted("b_stopped", rows).await, (4_000, 4_000));
    }

    #[actix::test]
    async fn a_first_start_cut_short_before_its_first_entry_still_records_the_join() {
        let dir = tempfile::tempdir().expect("tempdir");
        // What a start killed right after making its key leaves: the key, nothing else.
        crate::identity::Identity::load_or_create(dir.path()).expect("key");
        let s = started(dir.path()).await;
        assert!(!s.first_start);
        let filter = crate::ledger::LedgerFilter { limit: 10, ..Default::default() };
        let mut entries = s.node.ledger.query(filter).await.expect("entries");
        entries.sort_by_key(|e| e.seq);
        assert_eq!(entries.first().map(|e| e.entry_type), Some(LedgerEntryType::NodeJoined), "{entries:?}");
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
        // Not a second node on the same data dir while this one runs: refused before it touches it.
        match crate::node::lock_data_dir(dir.path()) {
            Err(NodeError::DataDirInUse { holder, .. }) => assert_eq!(holder, Some(std::process::id())),
            other => panic!("a second node on a data dir in use: {other:?}"),
        }
        s.node.shutdown("test").await;
        drop(s);
        let again = started(dir.path()).await;
        assert!(!again.first_start);
        assert!(again.new_admin_key.is_none(), "the admin key exists already");
        assert_eq!(again.node.identity.node_id, id);
    }
}
