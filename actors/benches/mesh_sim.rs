//! A simulated mesh in one process: N real engines (the same actors a node runs, each with its
//! own SQLite store and ledger) joined over in-memory links (`mesh::memory::MemoryNet`), then the
//! faults whose cost grows with N, measured:
//!
//! - `offline_detect_ms`: a worker goes silent (its links stay open but carry nothing, as a hung
//!   or unplugged machine) until every other node sees it offline;
//! - `coordinator_failover_ms`: the coordinator goes silent until every live node agrees on one
//!   new coordinator;
//! - `bytes_per_node_per_s`: frame bytes an idle mesh moves, per node per second.
//!
//! `partition_heal_ms` and `lost_entries` are not measured yet (reported as null): links here
//! have no latency, loss or partitions. Run: `cargo bench -p buildnet-actors --bench mesh_sim --
//! --nodes 10,25 [--json]`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use buildnet_actors::config::NodeConfig;
use buildnet_actors::mesh::memory::{join_in_memory, MemoryNet};
use buildnet_actors::node::NodeOptions;
use buildnet_actors::start::{start, Node};
use buildnet_actors::wire::{NodeId, NodeState, Role};

struct Report {
    nodes: usize,
    start_ms: u128,
    all_online_ms: u128,
    offline_detect_ms: u128,
    coordinator_failover_ms: u128,
    bytes_per_node_per_s: f64,
}

async fn node(net: &MemoryNet, dir: &std::path::Path, i: usize) -> Node {
    let mut config = NodeConfig::default();
    config.benchmark.on_start = false;
    config.benchmark.interval_hours = 0.0;
    let name = format!("n{i:03}");
    let opts = NodeOptions {
        data_dir: dir.join(&name),
        config,
        config_file: "simulation".into(),
        name: Some(name.clone()),
        address: format!("mem://{name}"),
        create_mesh: i == 0,
        launcher: None,
    };
    let node = match start(opts).await {
        Ok(s) => s.node,
        Err(e) => panic!("node {name} did not start: {e}"),
    };
    net.register(&node.address, node.mesh.clone());
    node.mesh.set_dialer(net.dialer());
    node
}

/// Polls until `ok` holds on every node in `nodes`; how long it took.
async fn until(what: &str, nodes: &[&Node], timeout: Duration, ok: impl AsyncCheck) -> Duration {
    let started = Instant::now();
    loop {
        let mut all = true;
        for n in nodes {
            if !ok.check(n).await {
                all = false;
                break;
            }
        }
        if all {
            return started.elapsed();
        }
        assert!(started.elapsed() < timeout, "{what}: not within {timeout:?}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

trait AsyncCheck {
    async fn check(&self, node: &Node) -> bool;
}

/// Every node in `online` is seen online, every node in `offline` offline.
struct Sees<'a> {
    online: &'a BTreeSet<NodeId>,
    offline: &'a BTreeSet<NodeId>,
}

impl AsyncCheck for Sees<'_> {
    async fn check(&self, node: &Node) -> bool {
        let peers = node.pool.peers().await;
        let state = |id: &NodeId| peers.iter().find(|p| p.node_id == *id).map(|p| p.status);
        self.online.iter().filter(|id| **id != node.identity.node_id).all(|id| state(id) == Some(NodeState::Online))
            && self.offline.iter().all(|id| state(id) == Some(NodeState::Offline))
    }
}

/// Every node names the same coordinator, and it is not `old`.
struct NewCoordinator<'a> {
    old: &'a NodeId,
    agreed: &'a std::cell::RefCell<Option<NodeId>>,
}

impl AsyncCheck for NewCoordinator<'_> {
    async fn check(&self, node: &Node) -> bool {
        let Some(view) = node.mesh.view().await else { return false };
        if view.coordinator == *self.old {
            return false;
        }
        let mut agreed = self.agreed.borrow_mut();
        match agreed.as_ref() {
            None => {
                *agreed = Some(view.coordinator);
                true
            }
            Some(c) => *c == view.coordinator,
        }
    }
}

async fn run(n: usize) -> Report {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = MemoryNet::new();
    let t0 = Instant::now();
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        nodes.push(node(&net, dir.path(), i).await);
    }
    for joiner in &nodes[1..] {
        let (token, _) = nodes[0].mesh.create_token(Role::Builder, 600_000, "simulation").await.expect("token");
        join_in_memory(&nodes[0].mesh, &joiner.mesh, &token).await.expect("joined");
    }
    let start_ms = t0.elapsed().as_millis();
    let ids: BTreeSet<NodeId> = nodes.iter().map(|n| n.identity.node_id.clone()).collect();
    let everyone: Vec<&Node> = nodes.iter().collect();
    let none = BTreeSet::new();
    let all_online =
        until("all online", &everyone, Duration::from_secs(300), Sees { online: &ids, offline: &none }).await;

    // Idle background traffic.
    actix_rt::time::sleep(Duration::from_secs(2)).await;
    let (bytes0, idle0) = (net.bytes(), Instant::now());
    actix_rt::time::sleep(Duration::from_secs(5)).await;
    let bytes_per_node_per_s = (net.bytes() - bytes0) as f64 / idle0.elapsed().as_secs_f64() / n as f64;

    // A worker goes silent.
    let coordinator = nodes[0].mesh.view().await.expect("view").coordinator;
    let victim = nodes.iter().rposition(|x| x.identity.node_id != coordinator).expect("a worker");
    net.silence(&nodes[victim].address);
    let gone: BTreeSet<NodeId> = [nodes[victim].identity.node_id.clone()].into();
    let live: BTreeSet<NodeId> = ids.difference(&gone).cloned().collect();
    let others: Vec<&Node> = nodes.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, x)| x).collect();
    let offline_detect =
        until("worker offline everywhere", &others, Duration::from_secs(60), Sees { online: &live, offline: &gone })
            .await;

    // The coordinator goes silent.
    let c = nodes.iter().position(|x| x.identity.node_id == coordinator).expect("coordinator");
    net.silence(&nodes[c].address);
    let remaining: Vec<&Node> =
        nodes.iter().enumerate().filter(|(i, _)| *i != victim && *i != c).map(|(_, x)| x).collect();
    let agreed = std::cell::RefCell::new(None);
    let failover = until(
        "a new coordinator everywhere",
        &remaining,
        Duration::from_secs(60),
        NewCoordinator { old: &coordinator, agreed: &agreed },
    )
    .await;
    for node in &nodes {
        node.shutdown("simulation over").await;
    }
    Report {
        nodes: n,
        start_ms,
        all_online_ms: all_online.as_millis(),
        offline_detect_ms: offline_detect.as_millis(),
        coordinator_failover_ms: failover.as_millis(),
        bytes_per_node_per_s,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let json = args.iter().any(|a| a == "--json");
    let sizes: Vec<usize> = args
        .iter()
        .position(|a| a == "--nodes")
        .and_then(|i| args.get(i + 1))
        .map(|list| list.split(',').filter_map(|n| n.trim().parse().ok()).filter(|n| *n >= 3).collect())
        .unwrap_or_else(|| vec![10, 25]);
    if !json {
        println!(
            "{:>5} {:>10} {:>13} {:>17} {:>23} {:>20}",
            "nodes", "start ms", "all online ms", "offline detect ms", "coordinator failover ms", "bytes/node/s idle"
        );
    }
    for n in sizes {
        let r = actix_rt::System::new().block_on(run(n));
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "nodes": r.nodes, "start_ms": r.start_ms, "all_online_ms": r.all_online_ms,
                    "offline_detect_ms": r.offline_detect_ms, "coordinator_failover_ms": r.coordinator_failover_ms,
                    "partition_heal_ms": null, "lost_entries": null,
                    "bytes_per_node_per_s": r.bytes_per_node_per_s.round(),
                })
            );
        } else {
            println!(
                "{:>5} {:>10} {:>13} {:>17} {:>23} {:>20.0}",
                r.nodes,
                r.start_ms,
                r.all_online_ms,
                r.offline_detect_ms,
                r.coordinator_failover_ms,
                r.bytes_per_node_per_s
            );
        }
    }
}
