//! Placement at scale: a whole build of a large DAG placed over 100 simulated nodes with mixed
//! tools and cores, timing the scheduler only (packages "run" on a simulated clock).
//!
//! It drives the functions the runner uses over a build's life: the build's [`Frontier`] (which
//! packages may start; updated as each ends), the pool snapshot ([`NodeOffer::peer`] from real
//! `PeerView` adverts, ranked and indexed by [`PoolIndex`], read again when older than
//! `POOL_SNAPSHOT_TTL` of simulated time, as the runner does), the candidates and the reservation ([`PoolIndex::candidates`],
//! [`reserve_best`], [`Limits`]), and the waiting lines: packages with the same needs wait in
//! one line whose first member alone looks for room, again whenever a core is freed. Not timed:
//! the action-cache lookup (one SQLite read per distinct tool-version set per package), building
//! each task's file list, and sending the package.
//!
//! The baseline is the previous algorithm on the same DAG and pool: after every package ended
//! the whole build order was walked (each dependency found by name in the package list), every
//! waiting package looked for room again, and each look copied every peer's advert and read its
//! tools. It grows with packages² × nodes, so it runs at the smaller sizes only.
//!
//! Run: `cargo bench -p buildnet-actors --bench placement -- [--packages 500,2000,10000]
//! [--baseline-max 500] [--runs 5] [--json]`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::time::Instant;

use buildnet_actors::builds::frontier::Frontier;
use buildnet_actors::builds::placement::{
    placement_rank, reserve_best, Limits, NodeOffer, PoolIndex, POOL_SNAPSHOT_TTL,
};
use buildnet_actors::builds::project::Requirement;
use buildnet_actors::mesh::PeerView;
use buildnet_actors::wire::{
    BenchmarkScores, CpuBenchmarkResult, CpuInfo, MemoryInfo, NodeId, NodeResources, NodeRole, NodeState, NodeStatus,
    ResourceInfo, ResourceKind, ResourceStatus, Role, ToolInfo,
};

/// A package of the simulated build.
struct Pkg {
    name: String,
    deps: Vec<String>,
    requirements: Vec<Requirement>,
    cores: u64,
    /// Simulated run time.
    run_ms: u64,
}

/// A small deterministic generator, so every run places the same build.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn package(i: usize, name: String, deps: Vec<String>, rng: &mut Lcg) -> Pkg {
    // Most packages compile C; every fifth is a Python step; a few need a recent gcc.
    let requirements = match i % 10 {
        0 | 5 => vec![Requirement::Name("python3".into())],
        3 => vec![Requirement::Versioned { name: "gcc".into(), version: Some(">=13".into()) }],
        _ => vec![Requirement::Name("gcc".into())],
    };
    let cores = if i.is_multiple_of(7) { 2 } else { 1 };
    Pkg { name, deps, requirements, cores, run_ms: 500 + rng.next() % 2500 }
}

/// `wide`: n independent compiles feeding one link step. `deep`: 100 layers, each package
/// depending on 8 of the layer before (about 8 edges per package).
fn dag(shape: &str, n: usize) -> Vec<Pkg> {
    let mut rng = Lcg(42);
    let mut out = Vec::with_capacity(n + 1);
    match shape {
        "wide" => {
            for i in 0..n {
                out.push(package(i, format!("cc{i}"), vec![], &mut rng));
            }
            let all = (0..n).map(|i| format!("cc{i}")).collect();
            let mut link = package(1, "link".into(), all, &mut rng);
            link.cores = 4;
            out.push(link);
        }
        _ => {
            let layers = 100;
            let width = n.div_ceil(layers);
            for i in 0..n {
                let (layer, slot) = (i / width, i % width);
                let deps = if layer == 0 {
                    vec![]
                } else {
                    let below = (layer - 1) * width;
                    (0..8).map(|k| format!("p{}", below + (slot + k * 13) % width)).collect()
                };
                out.push(package(i, format!("p{i}"), deps, &mut rng));
            }
        }
    }
    out
}

fn tool(name: &str, version: &str) -> ToolInfo {
    ToolInfo {
        name: name.into(),
        path: format!("/usr/bin/{name}"),
        version: Some(version.into()),
        version_output: None,
        capabilities: vec![],
        error: None,
    }
}

/// Node `i` of the pool as its advert reaches the others: 2..64 cores, a quarter without gcc,
/// two gcc versions, varied single-core scores.
fn advert(i: usize) -> NodeStatus {
    let cores = [2usize, 4, 8, 16, 32, 64][i % 6];
    let mut tools = vec![tool("make", "4.3"), tool("ld", "2.40")];
    if !i.is_multiple_of(4) {
        tools.push(tool("gcc", if i.is_multiple_of(3) { "13.2.0" } else { "12.2.0" }));
    }
    let runtimes = if i.is_multiple_of(2) { vec![tool("python3", "3.11.2")] } else { vec![] };
    let cpu = CpuInfo {
        count: cores,
        physical_count: Some(cores),
        offered: cores,
        architecture: "x86_64".into(),
        model: "simulated".into(),
        frequency_mhz: 3000,
        features: vec![],
    };
    let memory = MemoryInfo { total_bytes: 8 << 30, available_bytes: 8 << 30, offered_bytes: 8 << 30 };
    let resources = NodeResources {
        cpu: cpu.clone(),
        memory,
        storage: vec![],
        tools,
        runtimes,
        network: vec![],
        scanned_at_ms: 0,
        scan_duration_ms: 0,
    };
    let cpu_status = ResourceStatus {
        key: "cpu".into(),
        kind: ResourceKind::Cpu,
        unit: "cores".into(),
        capacity: cores as u64,
        leased: 0,
        available: cores as u64,
        leases: vec![],
        restarts: 0,
        resource: ResourceInfo::Cpu(cpu),
    };
    let single = 800.0 + (i * 37 % 400) as f64;
    // Through serde, so fields with defaults (added as the benchmark record grows) need no care.
    let cpu: CpuBenchmarkResult = serde_json::from_value(serde_json::json!({
        "single_core_score": single, "multi_core_score": single * cores as f64 * 0.9,
        "parallel_efficiency": 0.9, "effective_cores": cores, "threads": cores, "duration_ms": 1000,
    }))
    .expect("a CPU result");
    let benchmarks = BenchmarkScores { cpu: Some(cpu), ..Default::default() };
    NodeStatus {
        node_id: node_id(i),
        name: format!("n{i:03}"),
        address: format!("mem://n{i:03}"),
        version: "sim".into(),
        role: NodeRole::Worker,
        status: NodeState::Online,
        tags: vec![],
        started_at_ms: 0,
        uptime_ms: 0,
        accept_remote_builds: true,
        priority_weight: 1.0,
        resources,
        resource_status: vec![cpu_status],
        benchmarks,
        sandbox: Default::default(),
    }
}

fn node_id(i: usize) -> NodeId {
    NodeId::parse(&format!("{:016x}", i + 1)).expect("a valid node id")
}

/// This node (0) and 99 peers as the pool hands them to placement.
struct Pool {
    local: NodeStatus,
    peers: Vec<PeerView>,
}

fn pool(nodes: usize) -> Pool {
    let peers = (1..nodes)
        .map(|i| {
            let a = advert(i);
            PeerView {
                node_id: a.node_id.clone(),
                name: a.name.as_str().into(),
                address: a.address.as_str().into(),
                role: Role::Builder,
                status: NodeState::Online,
                last_seen_ms: 0,
                latency_ms: Some(0.5),
                advert: Some(a.into()),
            }
        })
        .collect();
    Pool { local: advert(0), peers }
}

impl Pool {
    /// What placement reads each snapshot: this node and every peer's advert, copied as the
    /// pool actor answers, ranked and indexed.
    fn snapshot(&self) -> PoolIndex {
        let peers = self.peers.clone();
        let local = &self.local;
        let mut nodes = vec![NodeOffer::local(local.node_id.clone(), local.resources.tool_versions(), Some(local))];
        nodes.extend(peers.iter().filter_map(NodeOffer::peer));
        PoolIndex::new(nodes)
    }
}

/// What a simulated build did.
struct Outcome {
    placed: usize,
    attempts: u64,
    simulated_ms: u64,
}

/// A whole build with the runner's current algorithm.
fn build(pkgs: &[Pkg], pool: &Pool) -> Outcome {
    let order: Vec<String> = pkgs.iter().map(|p| p.name.clone()).collect();
    let by_name: HashMap<&str, &Pkg> = pkgs.iter().map(|p| (p.name.as_str(), p)).collect();
    let mut frontier = Frontier::new(&order, |n| by_name.get(n).map(|p| p.deps.as_slice()).unwrap_or_default());
    let limits = Limits::default();
    let snapshot_ttl = POOL_SNAPSHOT_TTL.as_millis() as u64;
    let mut index = pool.snapshot();
    let mut snapshot_at = 0;
    let mut lines: BTreeMap<String, VecDeque<usize>> = BTreeMap::new();
    let mut running: BinaryHeap<Reverse<(u64, usize, NodeId)>> = BinaryHeap::new();
    let (mut now, mut placed, mut attempts) = (0u64, 0usize, 0u64);
    loop {
        for i in frontier.take_ready() {
            let p = &pkgs[i];
            lines.entry(format!("{} {:?}", p.cores, p.requirements)).or_default().push_back(i);
        }
        // Each line's first package looks for room; once placed, the next one looks. The pool is
        // read again when a look finds the snapshot older than its lifetime.
        for line in lines.values_mut() {
            while let Some(&i) = line.front() {
                if now >= snapshot_at + snapshot_ttl {
                    index = pool.snapshot();
                    snapshot_at = now;
                }
                attempts += 1;
                let p = &pkgs[i];
                let candidates = index.candidates(&p.requirements, false);
                assert!(!candidates.is_empty(), "{} has no candidate", p.name);
                let Some(chosen) = reserve_best(&index, candidates.iter(), p.cores, &limits, |_| false) else {
                    break;
                };
                running.push(Reverse((now + p.run_ms, i, index.offer(chosen).node.clone())));
                line.pop_front();
                placed += 1;
            }
        }
        let Some(Reverse((end, i, node))) = running.pop() else { break };
        now = end;
        limits.release(&node, pkgs[i].cores);
        frontier.finish(i, true);
    }
    assert!(frontier.done(), "every package ran");
    Outcome { placed, attempts, simulated_ms: now }
}

/// The same build with the previous algorithm (see the module comment).
fn baseline(pkgs: &[Pkg], pool: &Pool) -> Outcome {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Pending,
        Waiting,
        Running,
        Done,
    }
    let limits = Limits::default();
    let mut states: Vec<(String, State)> = pkgs.iter().map(|p| (p.name.clone(), State::Pending)).collect();
    let mut running: BinaryHeap<Reverse<(u64, usize, NodeId)>> = BinaryHeap::new();
    let (mut now, mut placed, mut attempts) = (0u64, 0usize, 0u64);
    loop {
        // The old schedule(): every package in order, each dependency looked up by name.
        for i in 0..pkgs.len() {
            if states[i].1 != State::Pending {
                continue;
            }
            let find = |n: &str| states.iter().find(|(m, _)| m == n).map(|(_, s)| *s);
            if pkgs[i].deps.iter().all(|d| find(d) == Some(State::Done)) {
                states[i].1 = State::Waiting;
            }
        }
        // Every waiting package looks for room (each was woken by the freed core).
        for i in 0..pkgs.len() {
            if states[i].1 != State::Waiting {
                continue;
            }
            attempts += 1;
            let p = &pkgs[i];
            let peers = pool.peers.clone();
            let local = &pool.local;
            let mut offers =
                vec![NodeOffer::local(local.node_id.clone(), local.resources.tool_versions(), Some(local))];
            offers.extend(peers.iter().filter_map(NodeOffer::peer));
            let mut list: Vec<&NodeOffer> = offers
                .iter()
                .filter(|o| {
                    p.requirements.iter().all(|r| o.tools.get(r.name()).is_some_and(|v| r.accepts(v.as_deref())))
                })
                .collect();
            list.sort_by(|a, b| {
                placement_rank(b.cpu_score, b.local)
                    .total_cmp(&placement_rank(a.cpu_score, a.local))
                    .then(b.free_cores.cmp(&a.free_cores))
            });
            if let Some(o) = list.iter().find(|o| limits.reserve(&o.node, p.cores, o.capacity)) {
                running.push(Reverse((now + p.run_ms, i, o.node.clone())));
                states[i].1 = State::Running;
                placed += 1;
            }
        }
        let Some(Reverse((end, i, node))) = running.pop() else { break };
        now = end;
        limits.release(&node, pkgs[i].cores);
        states[i].1 = State::Done;
    }
    Outcome { placed, attempts, simulated_ms: now }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let json = args.iter().any(|a| a == "--json");
    let sizes: Vec<usize> = arg(&args, "--packages")
        .map(|l| l.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![500, 2000, 10_000]);
    let runs: usize = arg(&args, "--runs").and_then(|n| n.parse().ok()).unwrap_or(5).max(1);
    let baseline_max: usize = arg(&args, "--baseline-max").and_then(|n| n.parse().ok()).unwrap_or(500);
    let nodes = 100;
    let pool = pool(nodes);
    if !json {
        println!(
            "{:>6} {:>8} {:>9} {:>10} {:>12} {:>13} {:>14}",
            "shape", "packages", "algorithm", "median ms", "attempts", "simulated s", "vs baseline"
        );
    }
    for shape in ["wide", "deep"] {
        for &n in &sizes {
            let pkgs = dag(shape, n);
            let mut algorithms = vec!["current"];
            if n <= baseline_max {
                algorithms.push("baseline");
            }
            let mut medians = BTreeMap::new();
            for algorithm in algorithms {
                let mut times = Vec::new();
                let mut last = None;
                for run in 0..runs {
                    let t = Instant::now();
                    let outcome = if algorithm == "current" { build(&pkgs, &pool) } else { baseline(&pkgs, &pool) };
                    let ms = t.elapsed().as_secs_f64() * 1000.0;
                    assert_eq!(outcome.placed, pkgs.len(), "every package placed");
                    times.push(ms);
                    if json {
                        let mut line = serde_json::json!({
                            "shape": shape, "packages": pkgs.len(), "nodes": nodes, "algorithm": algorithm,
                            "run": run, "scheduler_ms": (ms * 10.0).round() / 10.0,
                            "attempts": outcome.attempts, "simulated_build_ms": outcome.simulated_ms,
                        });
                        if algorithm == "current" && n == 10_000 {
                            line["placement_10k_on_100_ms"] = line["scheduler_ms"].clone();
                        }
                        println!("{line}");
                    }
                    last = Some(outcome);
                }
                let m = median(times);
                medians.insert(algorithm, m);
                if !json {
                    let o = last.expect("at least one run");
                    let vs = match (algorithm, medians.get("current")) {
                        ("baseline", Some(c)) => format!("{:.0}× slower", m / c),
                        _ => String::new(),
                    };
                    println!(
                        "{shape:>6} {:>8} {algorithm:>9} {m:>10.1} {:>12} {:>13.1} {vs:>14}",
                        pkgs.len(),
                        o.attempts,
                        o.simulated_ms as f64 / 1000.0
                    );
                }
            }
        }
    }
}
