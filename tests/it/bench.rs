//! Benchmarks between real nodes: the network test over the mesh link, results advertised to the
//! pool, the start-up benchmarks that the coordinator grants one node at a time, one benchmark at
//! a time on a node, no new packages while it runs, and disturbed figures kept from placement.

use std::process::Command;
use std::time::Duration;

use crate::common::{self, two_nodes, wait_until, Start, TestNode};
use serde_json::{json, Value};

#[test]
fn the_network_test_measures_the_mesh_link_and_the_pool_sees_it() {
    let _serial = common::serial();
    let (a, b) = two_nodes();
    let a_id = a.node_id();

    let out = b.cli(&["test", "network", "alpha", "--size-mb", "4", "--samples", "10"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("to alpha") && text.contains("median of 10") && text.contains("Mbit/s"), "{text}");

    let (status, r) = b.post("/api/test/network", &json!({ "node": a_id, "size_mb": 2, "samples": 5 }));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["target_node"], a_id.as_str());
    assert_eq!(r["bytes"], 2 << 20);
    assert_eq!(r["samples"], 5);
    for field in ["latency_ms", "upload_mbps", "download_mbps"] {
        assert!(r[field].as_f64().unwrap_or(0.0) > 0.0, "{field} measured: {r}");
    }
    assert!(r["min_latency_ms"].as_f64() <= r["latency_ms"].as_f64());
    assert!(r["latency_ms"].as_f64() <= r["max_latency_ms"].as_f64());

    // Bad requests name the field; the node keeps serving.
    let (status, e) = b.post("/api/test/network", &json!({ "node": "nobody" }));
    assert_eq!(status, 400, "{e}");
    assert!(e["error"]["message"].as_str().unwrap_or("").starts_with("node:"), "{e}");
    let (status, e) = b.post("/api/test/network", &json!({ "node": "alpha", "size_mb": 0 }));
    assert_eq!(status, 400, "{e}");
    assert!(e["error"]["message"].as_str().unwrap_or("").starts_with("size_mb"), "{e}");
    let out = b.cli(&["test", "network", "nobody"]);
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim().lines().count(), 1);

    // An observer may not load the link.
    let viewer = b.key("observer");
    let (status, _) = common::http(
        "POST",
        &format!("{}/api/test/network", b.url),
        &[("Authorization", &format!("Bearer {viewer}")), ("Content-Type", "application/json")],
        Some(json!({ "node": "alpha" }).to_string().as_bytes()),
    );
    assert_eq!(status, 403);

    // Recorded here, in the shared ledger, and advertised: alpha sees beta's link figures.
    let (_, history) = b.get("/api/node/benchmarks?type=network");
    assert_eq!(history.as_array().map(Vec::len), Some(2), "{history}");
    let b_id = b.node_id();
    wait_until("beta's network figures in alpha's pool view", Duration::from_secs(10), || {
        let (_, v) = a.get("/api/pool/nodes");
        let beta = v["nodes"].as_array()?.iter().find(|n| n["id"] == b_id.as_str())?.clone();
        let net = beta["benchmarks"]["network"].as_array()?.clone();
        (net.len() == 1 && net[0]["target_node"] == a_id.as_str()).then_some(())
    });
    wait_until("beta's BenchmarkCompleted replicated to alpha", Duration::from_secs(30), || {
        let (_, v) = a.get(&format!("/api/ledger?types=BenchmarkCompleted&origin={b_id}"));
        (v["entries"].as_array()?.len() == 2).then_some(())
    });
}

fn runs(entries: &[Value]) -> Vec<(String, u64, u64)> {
    entries
        .iter()
        .map(|e| {
            let d = &e["data"];
            (
                e["origin"].as_str().unwrap_or_default().to_string(),
                d["started_at_ms"].as_u64().unwrap_or(0),
                d["finished_at_ms"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn start_up_benchmarks_take_turns_across_the_mesh() {
    let _serial = common::serial();
    let on = || Start { benchmark_on_start: true, ..Default::default() };
    let a = TestNode::start_with(Start { benchmark_on_start: true, ..Start::named("alpha") });
    let b = a.join("beta", "builder", on());
    let c = a.join("gamma", "builder", on());
    let ids = [a.node_id(), b.node_id(), c.node_id()];

    // The node serves at once, while its benchmark waits for its turn or runs.
    assert_eq!(a.get("/api/health").0, 200);

    let entries = wait_until("a start-up benchmark from each node", Duration::from_secs(120), || {
        let (_, v) = a.get("/api/ledger?types=BenchmarkCompleted&limit=100");
        let entries = v["entries"].as_array()?.clone();
        ids.iter().all(|id| entries.iter().any(|e| e["origin"] == id.as_str())).then_some(entries)
    });
    let mut spans = runs(&entries);
    spans.sort_by_key(|s| s.1);
    for pair in spans.windows(2) {
        assert!(pair[0].2 <= pair[1].1, "benchmarks overlapped: {pair:?}");
    }
    // Every result carries the figures placement and estimates use, and each node advertises them.
    for e in &entries {
        assert!(e["data"]["cpu"]["single"].as_f64().unwrap_or(0.0) > 0.0, "{e}");
        assert!(!e["data"]["storage"].as_array().map(Vec::is_empty).unwrap_or(true), "{e}");
    }
    // A run other work disturbed (three nodes and whatever else shares this machine) is
    // recorded but not advertised, and comes back sooner than the interval.
    let clean = |id: &str| entries.iter().any(|e| e["origin"] == id && e["data"]["cpu"]["disturbed"].is_null());
    wait_until("every node's clean scores, and only those, in the pool view", Duration::from_secs(10), || {
        let (_, v) = c.get("/api/pool/nodes");
        let nodes = v["nodes"].as_array()?.clone();
        (nodes.len() == 3
            && nodes.iter().all(|n| {
                let advertised = n["benchmarks"]["cpu"]["single_core_score"].as_f64().unwrap_or(0.0) > 0.0;
                advertised == clean(n["id"].as_str().unwrap_or_default())
                    && n["benchmarks"]["next_due_ms"].as_u64().unwrap_or(0)
                        > n["benchmarks"]["measured_at_ms"].as_u64().unwrap_or(u64::MAX)
            }))
        .then_some(())
    });
}

/// `buildnet test cpu` against `node`, running in the background.
fn cpu_test_in_background(node: &TestNode, seconds: &str) -> std::process::Child {
    node.spawn_cli(&["test", "cpu", "--seconds", seconds, "--format", "json"])
}

fn wait_benchmarking(node: &TestNode, timeout: Duration) {
    wait_until("the node to benchmark", timeout, || {
        let (_, v) = node.get("/api/node");
        (v["benchmarks"]["running"] == true).then_some(())
    });
}

#[test]
fn an_explicit_run_during_the_start_up_benchmark_waits_for_it_and_says_so() {
    let _serial = common::serial();
    let node = TestNode::start_with(Start { benchmark_on_start: true, ..Start::named("solo") });
    // The start-up run starts once the node has settled as its own coordinator.
    wait_benchmarking(&node, Duration::from_secs(60));
    let out = node.cli(&["test", "cpu", "--seconds", "0.2", "--format", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(r["waited_ms"].as_u64().unwrap_or(0) > 0, "{r}");

    let (_, v) = node.get("/api/ledger?types=BenchmarkCompleted");
    let entries = v["entries"].as_array().expect("entries").clone();
    assert_eq!(entries.len(), 2, "the start-up run and ours: {v}");
    let mut spans = runs(&entries);
    spans.sort_by_key(|s| s.1);
    assert!(spans[0].2 <= spans[1].1, "benchmarks overlapped: {spans:?}");
    assert!(entries.iter().any(|e| e["data"]["waited_ms"].as_u64().unwrap_or(0) > 0), "{v}");
}

#[test]
fn a_node_under_benchmark_offers_no_core_and_starts_no_package() {
    let _serial = common::serial();
    let node = TestNode::start();
    let project = tempfile::tempdir().expect("tempdir");
    std::fs::write(project.path().join("buildnet.toml"), "[packages.hello]\ncommand = [\"true\"]\n").expect("manifest");

    let mut bench = cpu_test_in_background(&node, "2");
    wait_benchmarking(&node, Duration::from_secs(30));
    let (_, status) = node.get("/api/node");
    assert_eq!(status["status"], "busy", "{status}");
    let cpu = status["resource_status"].as_array().expect("resources").iter().find(|r| r["key"] == "cpu").cloned();
    assert_eq!(cpu.as_ref().map(|c| c["available"].clone()), Some(json!(0)), "no free core advertised: {cpu:?}");

    // A build asked for now waits until the benchmark is over.
    let built = node.cli(&["build", "--project", project.path().to_str().expect("path")]);
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    assert!(bench.wait().expect("benchmark").success());
    let (_, v) = node.get("/api/ledger?types=BenchmarkCompleted,ResourceAllocated");
    let seq = |kind: &str| {
        v["entries"]
            .as_array()
            .and_then(|es| es.iter().find(|e| e["entry_type"] == kind))
            .and_then(|e| e["seq"].as_u64())
    };
    let (done, allocated) = (seq("BenchmarkCompleted").expect("benchmark"), seq("ResourceAllocated").expect("package"));
    assert!(allocated > done, "the package got its core (seq {allocated}) before the benchmark ended (seq {done})");
    let (_, status) = node.get("/api/node");
    assert_eq!(status["benchmarks"]["running"], false);
}

/// Processes spinning on every core until dropped: work the node did not start.
struct Spinners(Vec<std::process::Child>);

impl Drop for Spinners {
    fn drop(&mut self) {
        self.0.iter_mut().for_each(|c| drop((c.kill(), c.wait())));
    }
}

#[test]
fn a_run_other_work_disturbed_is_recorded_and_said_but_not_advertised() {
    let _serial = common::serial();
    let node = TestNode::start();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let spin = || Command::new("sh").args(["-c", "while :; do :; done"]).spawn().expect("sh");
    let spinners = Spinners((0..cores).map(|_| spin()).collect());
    let out = node.cli(&["test", "cpu", "--seconds", "0.2"]);
    let r = node.cli_json(&["test", "cpu", "--seconds", "0.2"]);
    drop(spinners);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("Disturbed") && text.contains("not advertised"), "{text}");
    let why = r["cpu"]["disturbed"].as_str().expect("the result says it was disturbed");
    assert!(why.contains("phases disturbed"), "{why}");

    let (_, status) = node.get("/api/node");
    assert!(status["benchmarks"]["cpu"].is_null(), "not the node's figure: {}", status["benchmarks"]);
    let (_, history) = node.get("/api/node/benchmarks?type=cpu");
    let recorded = history.as_array().expect("history").clone();
    assert_eq!(recorded.len(), 2, "{history}");
    assert!(recorded.iter().all(|h| h["results"]["disturbed"].is_string()), "{history}");
    let (_, v) = node.get("/api/ledger?types=BenchmarkCompleted");
    let entries = v["entries"].as_array().expect("entries").clone();
    assert!(entries.iter().all(|e| e["data"]["cpu"]["disturbed"].is_string()), "{v}");
}
