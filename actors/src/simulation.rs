//! A simulated mesh in one process: N real engines (the same actors a node runs, each with its
//! own SQLite store, ledger and identity) joined over in-memory links
//! ([`MemoryNet`](crate::mesh::memory::MemoryNet), with latency, jitter and loss), then the
//! faults whose cost grows with N, scripted and measured:
//!
//! - `bytes_per_node_per_s`, `cpu_ms_per_node_per_s`: what an idle mesh costs each node;
//! - `offline_detect_ms`: a worker goes silent (links open, nothing flows: a hung or unplugged
//!   machine) until every other node sees it offline;
//! - `coordinator_failover_ms`: the coordinator goes silent until every live node agrees on one
//!   new coordinator;
//! - `partition_heal_ms`, `lost_entries`: the live nodes split (e.g. 40 | 60 %), each side writes
//!   ledger entries while split, the split heals; the time until every live node holds identical
//!   ledger heads (and until every live node sees every other online again), and how many
//!   acknowledged entries are missing anywhere after that (must be 0).
//!
//! The benchmark `actors/benches/mesh_sim.rs` (and `bench/scale.py`) runs it at 10..200 nodes;
//! a test runs it at 10. Everything is measured; nothing here decides what is fast enough.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use actix::{Arbiter, ArbiterHandle};
use futures_util::future::join_all;
use serde::Serialize;

use crate::config::NodeConfig;
use crate::mesh::memory::{join_in_memory, LinkConditions, MemoryNet};
use crate::mesh::netbench::NetworkOptions;
use crate::node::NodeOptions;
use crate::start::{start, Node};
use crate::wire::{LedgerEntry, LedgerEntryType, NodeId, NodeState, Role};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub nodes: usize,
    pub conditions: LinkConditions,
    /// The share of live nodes on the first side of the split.
    pub split: f64,
    /// Ledger entries each side writes while split.
    pub entries_per_side: usize,
    /// Longest wait for any one step.
    pub timeout: Duration,
    /// Threads the engines are spread over (each an actix `Arbiter`), round robin: a real node
    /// has a machine to itself, and one thread for 200 engines measures the thread, not the mesh.
    pub threads: usize,
}

impl Scenario {
    pub fn new(nodes: usize) -> Scenario {
        Scenario {
            nodes,
            conditions: LinkConditions::default(),
            split: 0.4,
            entries_per_side: 20,
            timeout: Duration::from_secs(120),
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// One run's figures (the JSON of `mesh_sim --json`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub nodes: usize,
    /// Threads the engines ran on.
    pub threads: usize,
    pub latency_ms: f64,
    pub jitter_ms: f64,
    pub loss: f64,
    pub start_ms: u128,
    pub all_online_ms: u128,
    pub bytes_per_node_per_s: f64,
    pub cpu_ms_per_node_per_s: f64,
    /// Links each node holds once all are online (the topology's degree; N - 1 in a full mesh).
    pub links_per_node: f64,
    /// A network test (5 round trips, 1 MB each way) between two members the topology does not
    /// link, the link opened on demand included.
    pub on_demand_test_ms: u128,
    /// Links the first of them opened for it (1 past a full mesh, else 0).
    pub on_demand_links: usize,
    pub offline_detect_ms: u128,
    pub coordinator_failover_ms: u128,
    /// Until each side of the split sees the other offline.
    pub partition_detect_ms: u128,
    pub partition_heal_ms: u128,
    /// From the heal until every live node sees every other online again.
    pub partition_rejoin_ms: u128,
    pub lost_entries: usize,
    /// Entries written (and acknowledged) while split.
    pub acknowledged_entries: usize,
}

async fn start_node(net: &MemoryNet, dir: &Path, i: usize) -> Result<Node, String> {
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
        lock: crate::node::lock_data_dir(&dir.join(&name)).map_err(|e| format!("node {name}: {e}"))?,
    };
    let node = start(opts).await.map_err(|e| format!("node {name} did not start: {e}"))?.node;
    net.register(&node.address, node.mesh.clone());
    node.mesh.set_dialer(net.dialer());
    Ok(node)
}

/// Starts node `i` on `arbiter`: its actors run on that thread from then on.
async fn start_node_on(arbiter: &ArbiterHandle, net: &MemoryNet, dir: &Path, i: usize) -> Result<Node, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (net, dir) = (net.clone(), dir.to_path_buf());
    let spawned = arbiter.spawn_fn(move || {
        actix::spawn(async move {
            let _ = tx.send(start_node(&net, &dir, i).await);
        });
    });
    if !spawned {
        return Err("an engine thread stopped".into());
    }
    rx.await.map_err(|_| format!("node {i} did not start: its thread stopped"))?
}

/// Polls until `ok` holds on every node in `nodes`; how long it took. Every round asks all
/// the nodes at once: asked one after another, a round over 200 loaded engines took minutes
/// (each answer waits its turn on an engine thread), which both timed the polling rather than
/// the mesh and let a step time out while it had long been done.
async fn until<'a, F, Fut>(what: &str, nodes: &[&'a Node], timeout: Duration, ok: F) -> Result<Duration, String>
where
    F: Fn(&'a Node) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    until_round(what, nodes.len(), timeout, || async {
        join_all(nodes.iter().map(|n| ok(n))).await.into_iter().filter(|done| *done).count()
    })
    .await
}

/// Runs `round` (which says how many of `of` nodes are done) until all are; how long it took.
async fn until_round<F, Fut>(what: &str, of: usize, timeout: Duration, round: F) -> Result<Duration, String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let started = Instant::now();
    let mut reported = Instant::now();
    loop {
        let done = round().await;
        if done == of {
            return Ok(started.elapsed());
        }
        if reported.elapsed() > Duration::from_secs(10) {
            reported = Instant::now();
            eprintln!("{what}: {done} of {of} nodes after {:.0?}", started.elapsed());
        }
        if started.elapsed() > timeout {
            return Err(format!("{what}: not within {timeout:?} ({done} of {of} nodes)"));
        }
        // A round over 200 nodes is itself work on the engines' threads: poll big meshes less.
        actix_rt::time::sleep(Duration::from_millis(if of > 50 { 100 } else { 20 })).await;
    }
}

/// Whether `node` sees every node of `online` online and every node of `offline` offline.
async fn sees(node: &Node, online: &BTreeSet<NodeId>, offline: &BTreeSet<NodeId>) -> bool {
    // One pass over the shared table, not a search per node: each round asks every node, and
    // at 150 nodes copying and searching every table was a tenth of the engines' threads.
    let peers = node.pool.peer_table().await;
    let me = &node.identity.node_id;
    let (mut seen_online, mut seen_offline) = (0, 0);
    for p in peers.iter() {
        if p.status == NodeState::Online && online.contains(&p.node_id) {
            seen_online += 1;
        } else if p.status == NodeState::Offline && offline.contains(&p.node_id) {
            seen_offline += 1;
        }
    }
    seen_online == online.len() - usize::from(online.contains(me)) && seen_offline == offline.len()
}

/// What the first few nodes that do not see every node of `online` online see instead: a
/// timed-out step says who is lagging and about whom.
async fn lagging(nodes: &[&Node], online: &BTreeSet<NodeId>) -> String {
    let mut out = Vec::new();
    let mut viewer = None;
    for node in nodes {
        let peers = node.pool.peers().await;
        let wrong: Vec<_> =
            peers.iter().filter(|p| online.contains(&p.node_id) && p.status != NodeState::Online).collect();
        let Some(first) = wrong.first() else { continue };
        if out.is_empty() {
            // The first such node's own account of the first peer it gets wrong.
            viewer = Some(node.identity.node_id.clone());
            out.push(format!(
                "{} {}, {}",
                node.identity.node_id,
                links_line(node).await,
                node.mesh.explain_peer(first.node_id.clone()).await
            ));
        }
        let examples: Vec<String> = wrong.iter().take(3).map(|p| format!("{} {}", p.node_id, p.status)).collect();
        out.push(format!(
            "{} sees {} of them not online (e.g. {})",
            node.identity.node_id,
            wrong.len(),
            examples.join(", ")
        ));
        if out.len() == 4 {
            break;
        }
    }
    // And how the first node named there sees the mesh itself: one cut off (few links, few
    // peers online) differs from one that is fine but slow to be believed.
    let lagging_peer = out.iter().find_map(|line| line.split("e.g. ").nth(1)).and_then(|s| s.get(..16));
    if let Some(node) = lagging_peer.and_then(|id| nodes.iter().find(|n| n.identity.node_id.as_str() == id)) {
        let peers = node.pool.peer_table().await;
        let seen = peers.iter().filter(|p| p.status == NodeState::Online).count();
        let about_viewer = match viewer {
            Some(v) => node.mesh.explain_peer(v).await,
            None => String::new(),
        };
        out.push(format!(
            "{} itself sees {seen} of {} online and {}, {about_viewer}",
            node.identity.node_id,
            peers.len(),
            links_line(node).await
        ));
    }
    out.join("; ")
}

/// A node's links against the links its topology wants, and its dials in flight.
async fn links_line(node: &Node) -> String {
    let view = node.mesh.view().await;
    let (links, wanted, dialing) = view.map_or((0, 0, 0), |v| (v.links, v.links_wanted, v.dialing));
    format!("has {links} links of the {wanted} its topology wants ({dialing} dials on their way)")
}

/// CPU time this process has used (user + system).
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Waits until every node holds the same ledger heads; how long it took. Every 2 s it says how
/// far it got: how many nodes hold the commonest heads, how far the entries `written` while
/// split have spread, how many links are open and how busy the process is; at the end, how long
/// the entries took to reach a tenth, half and all of the nodes (a slow start points at the
/// links across the cut, a long tail at the spreading).
async fn identical_heads(
    net: &MemoryNet,
    nodes: &[&Node],
    written: &[LedgerEntry],
    timeout: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    let mut reported = Instant::now();
    let mut cpu_at_report = cpu_time();
    // For each entry written while split: when it was first on a tenth, on half, and on every node.
    let shares = [0.1, 0.5, 1.0];
    let mut reached: Vec<[Option<Duration>; 3]> = vec![[None; 3]; written.len()];
    let mut by_origin: HashMap<&NodeId, Vec<usize>> = HashMap::new();
    for (i, entry) in written.iter().enumerate() {
        by_origin.entry(&entry.origin).or_default().push(i);
    }
    loop {
        // Grouped by digest: comparing 200 nodes' heads with each other, 200 heads each, every
        // 50 ms was most of the CPU while they still differed.
        let mut groups: HashMap<String, usize> = HashMap::new();
        let all_heads = join_all(nodes.iter().map(|node| node.ledger.heads())).await;
        for heads in &all_heads {
            *groups.entry(crate::mesh::heads_digest(heads.as_ref().map_err(|e| e.to_string())?)).or_default() += 1;
        }
        // How many nodes hold each entry: one pass over every node's heads.
        let mut holders = vec![0usize; written.len()];
        for heads in all_heads.iter().flatten() {
            for head in heads.iter() {
                for i in by_origin.get(&head.origin).into_iter().flatten() {
                    holders[*i] += usize::from(head.seq >= written[*i].seq);
                }
            }
        }
        for (times, held) in reached.iter_mut().zip(&holders) {
            let held = *held as f64 / nodes.len() as f64;
            for (share, time) in shares.iter().zip(times.iter_mut()) {
                if time.is_none() && held >= *share {
                    *time = Some(started.elapsed());
                }
            }
        }
        if groups.len() == 1 {
            let took = started.elapsed();
            for (i, share) in shares.iter().enumerate() {
                let mut times: Vec<Duration> = reached.iter().map(|t| t[i].unwrap_or(took)).collect();
                times.sort();
                if let (Some(first), Some(last)) = (times.first(), times.last()) {
                    eprintln!(
                        "entries written while split on {:.0}% of the nodes: first {first:.1?}, median {:.1?}, last {last:.1?} after the heal",
                        share * 100.0,
                        times[times.len() / 2]
                    );
                }
            }
            return Ok(took);
        }
        if reported.elapsed() > Duration::from_secs(2) {
            let cores = (cpu_time() - cpu_at_report).as_secs_f64() / reported.elapsed().as_secs_f64();
            (reported, cpu_at_report) = (Instant::now(), cpu_time());
            let commonest = groups.values().copied().max().unwrap_or(0);
            // How far the entries written while split have spread: a node holds an entry when
            // its head of that origin's chain has reached the entry's sequence number.
            let fewest = holders.iter().copied().min().unwrap_or(0);
            let everywhere = holders.iter().filter(|held| **held == nodes.len()).count();
            eprintln!(
                "heads after the heal: {commonest} of {} nodes agree ({} different); {everywhere} of {} entries everywhere, \
                 the rarest on {fewest}; {} links open; {cores:.2} cores busy; after {:.0?}",
                nodes.len(),
                groups.len(),
                written.len(),
                net.open_links(),
                started.elapsed()
            );
        }
        if started.elapsed() > timeout {
            return Err(format!("identical ledger heads after the heal: not within {timeout:?}"));
        }
        actix_rt::time::sleep(Duration::from_millis(if nodes.len() > 50 { 100 } else { 50 })).await;
    }
}

/// Runs the scenario with data dirs under `dir`; an error names the step that did not finish.
pub async fn run(dir: &Path, scenario: &Scenario) -> Result<Report, String> {
    let n = scenario.nodes;
    if n < 5 {
        return Err("a simulation needs at least 5 nodes (two fail, three split)".into());
    }
    let timeout = scenario.timeout;
    let net = MemoryNet::new();
    net.set_conditions(scenario.conditions);
    let t0 = Instant::now();
    let arbiters: Vec<Arbiter> = (0..scenario.threads.max(1)).map(|_| Arbiter::new()).collect();
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        nodes.push(start_node_on(&arbiters[i % arbiters.len()].handle(), &net, dir, i).await?);
    }
    for (i, joiner) in nodes.iter().enumerate().skip(1) {
        if i % 25 == 0 {
            eprintln!("joined {i} of {n} after {:.0?}", t0.elapsed());
        }
        let (token, _) =
            nodes[0].mesh.create_token(Role::Builder, 600_000, "simulation").await.map_err(|e| e.to_string())?;
        join_in_memory(&nodes[0].mesh, &joiner.mesh, &token).await?;
    }
    let start_ms = t0.elapsed().as_millis();
    let ids: BTreeSet<NodeId> = nodes.iter().map(|n| n.identity.node_id.clone()).collect();
    let everyone: Vec<&Node> = nodes.iter().collect();
    let none = BTreeSet::new();
    // Waited for in rounds of 20 s, each one that ends short saying who lags: a straggler at
    // 200 nodes is otherwise only a count.
    let (online_since, online_limit) = (Instant::now(), timeout.max(Duration::from_secs(300)));
    let all_online = loop {
        match until("all online", &everyone, Duration::from_secs(20), |node| sees(node, &ids, &none)).await {
            Ok(_) => break online_since.elapsed(),
            Err(e) if online_since.elapsed() > online_limit => {
                return Err(format!("{e}; {}", lagging(&everyone, &ids).await))
            }
            Err(_) => eprintln!("all online, still waiting: {}", lagging(&everyone, &ids).await),
        }
    };

    // Idle background traffic and CPU.
    actix_rt::time::sleep(Duration::from_secs(3)).await;
    let links_per_node = 2.0 * net.open_links() as f64 / n as f64;
    let (bytes0, cpu0, idle0) = (net.bytes(), cpu_time(), Instant::now());
    actix_rt::time::sleep(Duration::from_secs(5)).await;
    let idle = idle0.elapsed().as_secs_f64();
    let bytes_per_node_per_s = (net.bytes() - bytes0) as f64 / idle / n as f64;
    let cpu_ms_per_node_per_s = (cpu_time() - cpu0).as_secs_f64() * 1000.0 / idle / n as f64;
    eprintln!(
        "{n} nodes: idle {bytes_per_node_per_s:.0} bytes and {cpu_ms_per_node_per_s:.2} ms of CPU per node per second"
    );

    // Work between two members the grid does not link: in admission order the second and third
    // node sit at cells (0,1) and (1,0). A network test opens a link on demand.
    let links_of = |node: &Node| {
        let mesh = node.mesh.clone();
        async move { mesh.view().await.map_or(0, |v| v.links) }
    };
    let links_before = links_of(&nodes[1]).await;
    let started = Instant::now();
    let options = NetworkOptions { samples: 5, interval_ms: 1, size_mb: 1 };
    nodes[1]
        .mesh
        .network_test(nodes[2].identity.node_id.clone(), options)
        .await
        .map_err(|e| format!("a network test between members without a link: {e}"))?;
    let on_demand_test = started.elapsed();
    let on_demand_links = links_of(&nodes[1]).await.saturating_sub(links_before);

    // A worker goes silent.
    let coordinator = nodes[0].mesh.view().await.ok_or("no mesh view")?.coordinator;
    let victim = nodes.iter().rposition(|x| x.identity.node_id != coordinator).ok_or("no worker")?;
    net.silence(&nodes[victim].address);
    let gone: BTreeSet<NodeId> = [nodes[victim].identity.node_id.clone()].into();
    let live: BTreeSet<NodeId> = ids.difference(&gone).cloned().collect();
    let others: Vec<&Node> = nodes.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, x)| x).collect();
    let offline_detect =
        until("a silent worker offline everywhere", &others, timeout, |node| sees(node, &live, &gone)).await?;
    eprintln!("{n} nodes: a silent worker offline everywhere after {offline_detect:.1?}");

    // The coordinator goes silent.
    let c = nodes.iter().position(|x| x.identity.node_id == coordinator).ok_or("no coordinator")?;
    net.silence(&nodes[c].address);
    let remaining: Vec<&Node> =
        nodes.iter().enumerate().filter(|(i, _)| *i != victim && *i != c).map(|(_, x)| x).collect();
    // Done when every live node names the same coordinator, not the old one.
    let failover = until_round("a new coordinator everywhere", remaining.len(), timeout, || async {
        let views = join_all(remaining.iter().map(|node| node.mesh.view())).await;
        let named: Vec<NodeId> = views.into_iter().flatten().map(|v| v.coordinator).collect();
        named.iter().filter(|c| **c != coordinator).map(|c| named.iter().filter(|x| *x == c).count()).max().unwrap_or(0)
    })
    .await?;
    eprintln!("{n} nodes: a new coordinator everywhere after {failover:.1?}");

    // The live nodes split; each side writes entries; the split heals.
    let cut = ((remaining.len() as f64 * scenario.split).round() as usize).clamp(1, remaining.len() - 1);
    let (side_a, side_b) = remaining.split_at(cut);
    let addresses = |side: &[&Node]| side.iter().map(|x| x.address.clone()).collect::<Vec<_>>();
    let id_set = |side: &[&Node]| side.iter().map(|x| x.identity.node_id.clone()).collect::<BTreeSet<_>>();
    let (ids_a, ids_b) = (id_set(side_a), id_set(side_b));
    net.partition(&[addresses(side_a), addresses(side_b)]);
    let split_at = Instant::now();
    until("side A sees side B offline", side_a, timeout, |node| sees(node, &ids_a, &ids_b)).await?;
    until("side B sees side A offline", side_b, timeout, |node| sees(node, &ids_b, &ids_a)).await?;
    let partition_detect = split_at.elapsed();
    let mut acknowledged = Vec::new();
    for side in [side_a, side_b] {
        for k in 0..scenario.entries_per_side {
            let writer = side[k % side.len()];
            let data = serde_json::json!({ "simulation": "written while split", "k": k });
            let entry = writer.ledger.append(LedgerEntryType::ConfigModified, data).await.map_err(|e| e.to_string())?;
            acknowledged.push(entry);
        }
    }
    net.heal();
    let partition_heal = identical_heads(&net, &remaining, &acknowledged, timeout).await?;
    eprintln!(
        "{n} nodes: split seen after {partition_detect:.1?}; heads identical {partition_heal:.1?} after the heal"
    );
    let live_ids: BTreeSet<NodeId> = remaining.iter().map(|x| x.identity.node_id.clone()).collect();
    let gone_ids: BTreeSet<NodeId> = ids.difference(&live_ids).cloned().collect();
    let rejoin = match until("both sides online again after the heal", &remaining, timeout, |node| {
        sees(node, &live_ids, &gone_ids)
    })
    .await
    {
        Ok(took) => took,
        Err(e) => return Err(format!("{e}; {}", lagging(&remaining, &live_ids).await)),
    };
    let mut lost = 0;
    for node in &remaining {
        for entry in &acknowledged {
            let held = node.ledger.entries_after(entry.origin.clone(), entry.seq - 1, 1).await.unwrap_or_default();
            if held.first().is_none_or(|e| e.hash != entry.hash) {
                lost += 1;
            }
        }
    }
    for node in &nodes {
        node.shutdown("simulation over").await;
    }
    for arbiter in arbiters {
        arbiter.stop();
        let _ = arbiter.join();
    }
    Ok(Report {
        nodes: n,
        threads: scenario.threads.max(1),
        latency_ms: scenario.conditions.latency.as_secs_f64() * 1000.0,
        jitter_ms: scenario.conditions.jitter.as_secs_f64() * 1000.0,
        loss: scenario.conditions.loss,
        start_ms,
        all_online_ms: all_online.as_millis(),
        bytes_per_node_per_s,
        cpu_ms_per_node_per_s,
        links_per_node,
        on_demand_test_ms: on_demand_test.as_millis(),
        on_demand_links,
        offline_detect_ms: offline_detect.as_millis(),
        coordinator_failover_ms: failover.as_millis(),
        partition_detect_ms: partition_detect.as_millis(),
        partition_heal_ms: partition_heal.as_millis(),
        partition_rejoin_ms: (partition_heal + rejoin).as_millis(),
        lost_entries: lost,
        acknowledged_entries: acknowledged.len(),
    })
}
