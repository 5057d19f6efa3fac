//! Three real nodes on 127.0.0.1 forming one mesh: joining with good and bad tokens, failure
//! detection and coordinator failover, restarts, and a proxy that tampers with, replays and
//! partitions a link — and whose capture must show nothing readable.

use std::time::Duration;

use crate::common::proxy::{Mode, Proxy};
use crate::common::{self, serial, three_nodes, wait_all_online, wait_until, Start, TestNode};
use serde_json::json;

// Every mesh test takes `serial()`: the heartbeats and failover deadlines under test need the
// two cores, rather than starving behind another test's mesh or a benchmark.

/// Waits until every node names the same coordinator; returns it.
pub(crate) fn agreed(nodes: &[&TestNode], timeout: Duration) -> String {
    wait_until("one coordinator everywhere", timeout, || {
        let views: Vec<String> = nodes.iter().map(|n| coordinator(n)).collect();
        (!views[0].is_empty() && views.iter().all(|v| *v == views[0])).then(|| views[0].clone())
    })
}

pub(crate) fn coordinator(n: &TestNode) -> String {
    n.get("/api/pool").1["coordinator"].as_str().unwrap_or_default().to_string()
}

pub(crate) fn heads(n: &TestNode) -> Vec<(String, u64)> {
    let (_, v) = n.get("/api/ledger/verify");
    assert_eq!(v["ok"], true, "ledger verifies on {}: {v}", n.url);
    let mut h: Vec<(String, u64)> = v["chains"]
        .as_array()
        .expect("chains")
        .iter()
        .map(|c| (c["origin"].as_str().unwrap_or("").to_string(), c["entries"].as_u64().unwrap_or(0)))
        .collect();
    h.sort();
    h
}

#[test]
fn three_nodes_form_one_pool_with_one_ledger() {
    let _serial = serial();
    let (a, b, c) = three_nodes();
    // Totals are the sum over the three machines.
    let per_node: u64 =
        [&a, &b, &c].iter().map(|n| n.get("/api/node").1["resources"]["cpu"]["offered"].as_u64().expect("cores")).sum();
    for n in [&a, &b, &c] {
        wait_until("pool totals", Duration::from_secs(10), || {
            (n.get("/api/pool").1["aggregate"]["total_cpu_cores"].as_u64() == Some(per_node)).then_some(())
        });
    }
    // One coordinator, the same everywhere; every pair has exactly one link although both
    // sides dial.
    agreed(&[&a, &b, &c], Duration::from_secs(10));
    for n in [&a, &b, &c] {
        wait_until("one link per peer", Duration::from_secs(10), || (n.get("/api/mesh").1["links"] == 2).then_some(()));
    }
    // The pooled resources name their nodes.
    let (_, res) = b.get("/api/pool/resources?type=cpu");
    assert_eq!(res["resources"].as_array().expect("list").len(), 3);
    let (_, viz) = c.get("/api/pool/visualization");
    assert_eq!(viz["connections"].as_array().expect("connections").len(), 2);

    // A bad, a reused and an expired token are refused and recorded.
    let used = a.token("builder");
    common::join_with(&a.url, &used, "delta").expect("a fresh token admits");
    let again = common::join_with(&a.url, &used, "epsilon").expect_err("reused token");
    assert!(again.contains("already used"), "{again}");
    let forged = format!("bnj_{}_{}", a.get("/api/pool").1["mesh_id"].as_str().expect("mesh id"), "0".repeat(32));
    let bad = common::join_with(&a.url, &forged, "zeta").expect_err("unknown token");
    assert!(bad.contains("not known"), "{bad}");
    let garbage = common::join_with(&a.url, "not-a-token", "eta").expect_err("malformed");
    assert!(garbage.contains("malformed"), "{garbage}");
    // The malformed token never reaches the admin: the joining node refuses it itself. The two
    // that did are summarised in one ledger entry for their source, not one entry each.
    let summary = wait_until("refused joins summarised", Duration::from_secs(20), || {
        let (_, refused) = a.get("/api/ledger?types=JoinRefused");
        refused["entries"].as_array().filter(|e| !e.is_empty()).cloned()
    });
    assert_eq!(summary.len(), 1, "{summary:?}");
    let data = &summary[0]["data"];
    assert_eq!((data["source"].as_str(), data["attempts"].as_u64()), (Some("127.0.0.1"), Some(2)), "{data}");
    assert_eq!((data["reasons"]["used token"].as_u64(), data["reasons"]["unknown token"].as_u64()), (Some(1), Some(1)));

    // Every node ends with the same ledger, and it verifies.
    let key = a.key("observer");
    assert!(key.starts_with("bn_"));
    wait_until("identical ledgers", Duration::from_secs(15), || {
        let (ha, hb, hc) = (heads(&a), heads(&b), heads(&c));
        (ha == hb && hb == hc && ha.len() >= 3).then_some(())
    });
    let out = c.cli(&["ledger", "sync"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A read-only key may not make the node ask every peer (each call would).
    let (status, body) = common::http(
        "POST",
        &format!("{}/api/ledger/sync", a.url),
        &[("Authorization", &format!("Bearer {key}")), ("Content-Type", "application/json")],
        None,
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("admin"), "it says which role may: {body}");
}

#[test]
fn a_killed_worker_goes_offline_and_rejoins_on_restart_without_a_token() {
    let _serial = serial();
    let (a, b, c) = three_nodes();
    let ids = [a.node_id(), b.node_id(), c.node_id()];
    let coord = agreed(&[&a, &b, &c], Duration::from_secs(10));
    let mut all = vec![(ids[0].clone(), a), (ids[1].clone(), b), (ids[2].clone(), c)];
    let pos = all.iter().position(|(id, _)| *id != coord).expect("a worker");
    let (worker_id, worker) = all.remove(pos);
    let worker_id = &worker_id;
    let others: Vec<&TestNode> = all.iter().map(|(_, n)| n).collect();
    let worker_dir = worker.dir.clone();
    worker.signal(libc::SIGKILL);
    let started = std::time::Instant::now();
    for n in &others {
        wait_until("worker offline", Duration::from_secs(5), || {
            (n.status_of(worker_id).as_deref() == Some("offline")).then_some(())
        });
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    let _keep = worker;

    // Restarted with its data dir, it rejoins by itself, without a token.
    let back = TestNode::start_with(Start { dir: Some(worker_dir), ..Default::default() });
    for n in &others {
        wait_until("worker back online", Duration::from_secs(15), || n.sees_up(worker_id).then_some(()));
    }
    wait_until("rejoined sees all", Duration::from_secs(15), || {
        let list = back.pool_nodes();
        (list.len() == 3 && list.iter().all(|x| x["status"] != "offline")).then_some(())
    });

    // Stopped with its peers linked, it closes their links first rather than waiting the
    // server's five seconds for requests that never end (it took 7 s).
    let stopping = std::time::Instant::now();
    let (status, _keep) = back.stop();
    assert!(status.success(), "{status}");
    // Waiting for the links took the whole 5 s graceful timeout and ~2 s more (7.2 s measured);
    // without it a stop takes ~2.5 s here.
    assert!(stopping.elapsed() < Duration::from_secs(6), "the stop waited for the links: {:?}", stopping.elapsed());
}

#[test]
fn killing_the_coordinator_elects_a_new_one_within_five_seconds() {
    let _serial = serial();
    let (a, b, c) = three_nodes();
    let ids = [a.node_id(), b.node_id(), c.node_id()];
    let coord = agreed(&[&a, &b, &c], Duration::from_secs(10));
    let epoch_before = a.get("/api/pool").1["epoch"].as_u64().expect("epoch");
    let mut all = vec![(ids[0].clone(), a), (ids[1].clone(), b), (ids[2].clone(), c)];
    let pos = all.iter().position(|(id, _)| *id == coord).expect("coordinator is a node");
    let (_, dead) = all.remove(pos);
    let dead_dir = dead.dir.clone();
    dead.signal(libc::SIGKILL);
    let started = std::time::Instant::now();
    let mut new = String::new();
    for (_, n) in &all {
        new = wait_until("a new coordinator", Duration::from_secs(5), || {
            let c = coordinator(n);
            (c != coord && !c.is_empty()).then_some(c)
        });
    }
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    for (_, n) in &all {
        wait_until("everyone agrees", Duration::from_secs(5), || (coordinator(n) == new).then_some(()));
        let epoch = n.get("/api/pool").1["epoch"].as_u64().expect("epoch");
        assert!(epoch > epoch_before, "the epoch only grows");
    }
    let _dead = dead;
    let back = TestNode::start_with(Start { dir: Some(dead_dir), ..Default::default() });
    for (_, n) in &all {
        wait_until("old coordinator online again", Duration::from_secs(15), || n.sees_up(&coord).then_some(()));
    }
    let settled = wait_until("one coordinator after the return", Duration::from_secs(10), || {
        let views: Vec<String> = all.iter().map(|(_, n)| coordinator(n)).chain([coordinator(&back)]).collect();
        views.windows(2).all(|w| w[0] == w[1]).then(|| views[0].clone())
    });
    assert!(!settled.is_empty());
}

#[test]
fn a_tampered_or_replayed_frame_closes_the_link_and_a_partition_heals() {
    let _serial = serial();
    let pa = Proxy::start();
    let pb = Proxy::start();
    let cfg_a = format!(r#"{{"node_name": "zebra-alpha-secret", "network": {{"advertise_address": "{}"}}}}"#, pa.url());
    let a = TestNode::start_with(Start { config: Some(&cfg_a), ..Default::default() });
    pa.set_target(&a.url);
    let cfg_b = format!(r#"{{"node_name": "zebra-beta-secret", "network": {{"advertise_address": "{}"}}}}"#, pb.url());
    let t = a.token("builder");
    // b joins through a's proxy too: a node with no link left redials its join address
    // besides the peer's advertised one, and a link dialled straight to a would carry the
    // traffic past both proxies (the last link to authenticate is the one kept).
    let b = TestNode::start_with(Start {
        config: Some(&cfg_b),
        args: vec!["--join".into(), pa.url(), "--token".into(), t],
        ..Default::default()
    });
    pb.set_target(&b.url);
    wait_all_online(&[&a, &b]);
    let b_id = b.node_id();

    // A flipped byte: the link closes, the nodes keep serving, and it comes back.
    let links_closed =
        |n: &TestNode| n.stderr_text().lines().filter(|l| l.contains("] link ") && l.ends_with(" closed")).count();
    // The pool may still say "online" for a moment after a link closed (its view is
    // republished at most every 100 ms): a relink is a new link up, not only that word. The
    // proxy must not be asked to replay before then, or it holds the new link's upgrade.
    let links_up =
        |n: &TestNode| n.stderr_text().lines().filter(|l| l.contains("] link ") && l.ends_with(" is up")).count();
    let up_before = links_up(&a);
    let closed_before = links_closed(&a);
    pa.set_mode(Mode::FlipOnce);
    pb.set_mode(Mode::FlipOnce);
    wait_until("a frame was tampered with", Duration::from_secs(10), || {
        (pa.mode() == Mode::Pass || pb.mode() == Mode::Pass).then_some(())
    });
    wait_until("tampering detected", Duration::from_secs(10), || {
        (a.stderr_text().contains("does not decrypt") || b.stderr_text().contains("does not decrypt")).then_some(())
    });
    pa.set_mode(Mode::Pass);
    pb.set_mode(Mode::Pass);
    // The node logs the bad frame before it drops the link: wait for the drop, so that "online"
    // below is the new link, not the old one not yet taken down.
    wait_until("the tampered link closed", Duration::from_secs(10), || {
        (links_closed(&a) > closed_before).then_some(())
    });
    wait_until("relinked after tampering", Duration::from_secs(20), || {
        (links_up(&a) > up_before && a.sees_up(&b_id)).then_some(())
    });

    // A replayed frame is refused the same way.
    let before =
        a.stderr_text().matches("does not decrypt").count() + b.stderr_text().matches("does not decrypt").count();
    let closed_before = links_closed(&a);
    let up_before = links_up(&a);
    // The link kept between two nodes is the one the smaller id dialled, so replay on both.
    pa.set_mode(Mode::ReplayOnce);
    pb.set_mode(Mode::ReplayOnce);
    wait_until("a frame was replayed", Duration::from_secs(10), || {
        (pa.mode() == Mode::Pass || pb.mode() == Mode::Pass).then_some(())
    });
    pa.set_mode(Mode::Pass);
    pb.set_mode(Mode::Pass);
    wait_until("replay refused", Duration::from_secs(10), || {
        let now =
            a.stderr_text().matches("does not decrypt").count() + b.stderr_text().matches("does not decrypt").count();
        (now > before).then_some(())
    });
    wait_until("the replayed link closed", Duration::from_secs(10), || {
        (links_closed(&a) > closed_before).then_some(())
    });
    wait_until("relinked after replay", Duration::from_secs(20), || {
        (links_up(&a) > up_before && a.sees_up(&b_id)).then_some(())
    });
    assert_eq!(a.get("/api/health").0, 200);
    assert_eq!(b.get("/api/health").0, 200);

    // A partition: each side writes to its ledger; after healing, heads are identical.
    pa.set_mode(Mode::Drop);
    pb.set_mode(Mode::Drop);
    wait_until("partitioned", Duration::from_secs(8), || {
        (a.status_of(&b_id).as_deref() == Some("offline")).then_some(())
    });
    let a_id = a.node_id();
    wait_until("each side has its own coordinator", Duration::from_secs(5), || {
        (coordinator(&a) == a_id && coordinator(&b) == b_id).then_some(())
    });
    a.key("observer");
    b.key("builder");
    let (_, key) = a.post("/api/keys", &json!({ "name": "capture-probe-key-name", "role": "observer" }));
    assert!(key["key"].is_string());
    pa.cut();
    pb.cut();
    pa.set_mode(Mode::Pass);
    pb.set_mode(Mode::Pass);
    let healed = std::time::Instant::now();
    wait_until("ledgers converge", Duration::from_secs(20), || (heads(&a) == heads(&b)).then_some(()));
    eprintln!("ledgers converged {:?} after healing", healed.elapsed());
    agreed(&[&a, &b], Duration::from_secs(10));
    let (_, entries) = b.get("/api/ledger?types=KeyCreated&limit=100");
    assert!(entries.to_string().contains("capture-probe-key-name"), "the probe entry crossed the link");

    // Nothing readable crossed the wire.
    let capture = [pa.captured(), pb.captured()].concat();
    assert!(capture.len() > 10_000, "the capture saw the traffic ({} bytes)", capture.len());
    for secret in ["zebra-alpha-secret", "zebra-beta-secret", "capture-probe-key-name", "x86_64", "KeyCreated"] {
        assert!(
            !capture.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "'{secret}' is readable in the capture"
        );
    }
}

#[test]
fn an_oversized_frame_is_refused_before_allocation_and_the_node_keeps_serving() {
    use std::io::{Read, Write};
    // One node and no timing: this one runs alongside the others.
    let a = TestNode::start();
    let host = a.url.trim_start_matches("http://").to_string();
    let mut tcp = std::net::TcpStream::connect(&host).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let upgrade = format!(
        "GET /mesh HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(upgrade.as_bytes()).expect("upgrade");
    let mut head = [0u8; 1024];
    let n = tcp.read(&mut head).expect("101");
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 101"));
    // A masked binary frame claiming 1 TiB of payload.
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&(1u64 << 40).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    tcp.write_all(&frame).expect("frame header");
    let mut rest = Vec::new();
    let _ = tcp.read_to_end(&mut rest);
    assert_eq!(a.get("/api/health").0, 200, "the node keeps serving");
    let rss_kb: u64 = std::fs::read_to_string(format!("/proc/{}/status", a.child.id()))
        .expect("status")
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .expect("VmRSS");
    assert!(rss_kb < 512 * 1024, "nothing near the announced size was allocated ({rss_kb} KiB)");
}

#[test]
fn observers_offer_nothing_rescans_propagate_and_a_node_can_leave() {
    let _serial = serial();
    let a = TestNode::start_with(Start::named("alpha"));
    let tools = tempfile::tempdir().expect("tempdir");
    let b = a.join("beta", "builder", Start { path_prefix: Some(tools.path()), ..Default::default() });
    let o = a.join("watcher", "observer", Start::default());
    wait_all_online(&[&a, &b, &o]);
    let o_id = o.node_id();
    let role = a.pool_nodes().iter().find(|n| n["id"] == o_id.as_str()).map(|n| n["role"].clone());
    assert_eq!(role, Some(json!("observer")));
    let cores = |n: &TestNode| n.get("/api/node").1["resources"]["cpu"]["offered"].as_u64().expect("cores");
    let expected = cores(&a) + cores(&b);
    wait_until("observer cores not counted", Duration::from_secs(10), || {
        (a.get("/api/pool").1["aggregate"]["total_cpu_cores"].as_u64() == Some(expected)).then_some(())
    });
    assert_ne!(coordinator(&a), o_id, "an observer never coordinates");

    // A tool appears on beta; after its rescan every node lists it within seconds.
    common::fake_tool(tools.path(), "ninja", "#!/bin/sh\necho 1.12.1\n");
    assert_eq!(b.post("/api/node/scan", &json!({})).0, 200);
    wait_until("ninja in alpha's pool", Duration::from_secs(5), || {
        a.get("/api/pool").1["aggregate"]["tools"]["ninja"].as_array().filter(|v| !v.is_empty()).map(|_| ())
    });

    // Beta leaves cleanly: NodeLeft in the ledger, and the others stop counting it.
    let b_id = b.node_id();
    let out = b.cli(&["node", "leave"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("beta gone from alpha's pool", Duration::from_secs(10), || {
        (!a.pool_nodes().iter().any(|n| n["id"] == b_id.as_str())).then_some(())
    });
    let (_, left) = b.get("/api/ledger?types=NodeLeft");
    assert_eq!(left["entries"].as_array().expect("entries").len(), 1);
    wait_until("NodeLeft reached alpha", Duration::from_secs(10), || {
        a.get("/api/ledger?types=NodeLeft").1["entries"].as_array().filter(|e| !e.is_empty()).map(|_| ())
    });
    // Restarted, alpha still knows from its ledger that beta left: beta is not listed again.
    let a_dir = a.dir.clone();
    let (status, _keep_a) = a.stop();
    assert!(status.success(), "{status}");
    let a = TestNode::start_with(Start { dir: Some(a_dir), ..Default::default() });
    wait_until("the observer back in alpha's pool", Duration::from_secs(15), || a.sees_up(&o_id).then_some(()));
    assert!(!a.pool_nodes().iter().any(|n| n["id"] == b_id.as_str()), "{:?}", a.pool_nodes());
    let refused = a.cli(&["node", "leave"]);
    assert_eq!(refused.status.code(), Some(1), "the mesh key holder cannot leave while others depend on it");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("mesh key"));

    // Nor can it join another mesh (beta's, a mesh of one now): that would drop its mesh key,
    // and no node could be admitted to its mesh again.
    let token = b.token("builder");
    let refused = a.cli(&["node", "join", &b.url, "--token", &token]);
    assert_eq!(refused.status.code(), Some(1), "{}", String::from_utf8_lossy(&refused.stdout));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("holds the key of mesh") && err.contains("neither leave that mesh nor join another"), "{err}");
    assert!(a.dir.join("mesh.key").exists(), "the mesh key is kept");
    assert_eq!(a.get("/api/mesh").1["mesh_admin"], true);
    // A mesh of one may join: beta goes back into alpha's mesh with a token of alpha's.
    let back = b.cli(&["node", "join", &a.url, "--token", &a.token("builder")]);
    assert!(back.status.success(), "{}", String::from_utf8_lossy(&back.stderr));
    // A member that does not hold the key is told to leave first.
    let other = TestNode::start_with(Start::named("other"));
    let elsewhere = b.cli(&["node", "join", &other.url, "--token", &other.token("builder")]);
    assert_eq!(elsewhere.status.code(), Some(1));
    let err = String::from_utf8_lossy(&elsewhere.stderr).to_string();
    assert!(err.contains("run `buildnet node leave` first"), "{err}");
    let again = b.cli(&["node", "join", &a.url, "--token", &a.token("builder")]);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("a member of mesh"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

/// A member whose machine is lost never leaves by itself; the mesh key holder removes it (a
/// revoked roster entry, signed again) and every member refuses it from then on — also with its
/// own keys, restarted from its data dir — until it leaves and a new token admits it. Only the
/// key holder, with an admin key, may remove, and not itself. Before this a lost member kept the
/// key holder from ever leaving or joining another mesh.
#[test]
fn the_key_holder_removes_a_lost_member_which_every_member_then_refuses() {
    let _serial = serial();
    let (a, b, c) = three_nodes();
    let (b_id, c_id) = (b.node_id(), c.node_id());
    let fails = |out: &std::process::Output, says: &str| {
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(says), "expected '{says}' in: {err}");
    };
    // Who may not: a node without the mesh key, the holder itself, a builder's key, a stranger.
    fails(&b.cli(&["node", "remove", "gamma"]), "does not hold the mesh key");
    fails(&a.cli(&["node", "remove", "alpha"]), "cannot remove itself");
    fails(&a.cli(&["node", "remove", "nosuch"]), "no node named 'nosuch'");
    let builder = a.key("builder");
    let (status, body) = common::http(
        "POST",
        &format!("{}/api/pool/remove", a.url),
        &[("Authorization", &format!("Bearer {builder}")), ("Content-Type", "application/json")],
        Some(json!({ "node": "gamma" }).to_string().as_bytes()),
    );
    assert_eq!(status, 403, "{body}");
    // Bodies that name no field: an unknown one, and an array (which serde reads by position).
    for bad in [json!({ "node": "gamma", "force": true }), json!(["gamma"])] {
        let (status, body) = a.post("/api/pool/remove", &bad);
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_body")), "{body}");
    }
    let (status, body) = common::http(
        "POST",
        &format!("{}/api/pool/remove", a.url),
        &[("Authorization", &format!("Bearer {}", a.admin_key)), ("Content-Type", "application/json")],
        Some(br#"{"node": "beta"} ["gamma"]"#),
    );
    assert!(status == 400 && body.contains("something follows the JSON object"), "{status} {body}");
    assert!(a.sees_up(&c_id), "nothing was removed by the refused requests");

    // Gamma's machine is lost. A new machine meant to replace it under its name is refused while
    // the lost one is a member (names are what users pick nodes by), without spending the token.
    let c_dir = c.dir.clone();
    c.signal(libc::SIGKILL);
    wait_until("gamma offline", Duration::from_secs(10), || {
        (a.status_of(&c_id).as_deref() == Some("offline")).then_some(())
    });
    let token = a.token("builder");
    let taken = common::join_with(&a.url, &token, "gamma").expect_err("a second gamma");
    assert!(
        taken.contains("a member named 'gamma' exists already") && taken.contains("buildnet node remove"),
        "{taken}"
    );
    let out = a.cli(&["node", "remove", "gamma"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("Removed gamma ({c_id})")));
    assert!(!a.pool_nodes().iter().any(|n| n["id"] == c_id.as_str()), "gone at once on the holder");
    wait_until("gamma gone from beta's pool", Duration::from_secs(10), || {
        (!b.pool_nodes().iter().any(|n| n["id"] == c_id.as_str())).then_some(())
    });
    fails(&a.cli(&["node", "remove", &c_id]), "no longer a member");
    let (_, left) = a.get("/api/ledger?types=NodeLeft");
    let entry = &left["entries"][0]["data"];
    assert_eq!((entry["node_id"].as_str(), entry["reason"].as_str()), (Some(c_id.as_str()), Some("removed")), "{left}");
    // The replacement takes the name with the same token.
    let args = ["--name", "gamma", "--join", a.url.as_str(), "--token", token.as_str()].map(String::from).to_vec();
    let new_gamma = TestNode::start_with(Start { args, ..Default::default() });
    let new_id = new_gamma.node_id();
    wait_until("the new gamma online", Duration::from_secs(15), || {
        (a.sees_up(&new_id) && b.sees_up(&new_id)).then_some(())
    });

    // The lost one, back from its data dir with its own keys, is refused by every member.
    let _keep = c;
    let back = TestNode::start_with(Start { dir: Some(c_dir), ..Default::default() });
    std::thread::sleep(Duration::from_secs(3));
    for n in [&a, &b] {
        assert!(!n.pool_nodes().iter().any(|x| x["id"] == c_id.as_str()), "{:?}", n.pool_nodes());
        assert_eq!(n.get("/api/mesh").1["links"], 2, "linked to the two members only");
    }
    // It is told why (its revoked entry, on the link a member then closes) and stops dialling:
    // it redialled every member every second, each refusal a warning in the member's log.
    wait_until("gamma knows it was removed", Duration::from_secs(10), || {
        (back.get("/api/mesh").1["removed"] == true).then_some(())
    });
    let status = back.cli(&["pool", "status"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("removed from its mesh"));
    let refusals = |n: &TestNode| {
        let log = n.stderr_text();
        log.matches("refused a node that is not in the roster").count() + log.matches("told so and closed").count()
    };
    let before = refusals(&a) + refusals(&b);
    std::thread::sleep(Duration::from_secs(3));
    assert!(refusals(&a) + refusals(&b) <= before + 1, "it still dials: {}", a.stderr_text());
    fails(&back.cli(&["node", "join", &a.url, "--token", &a.token("builder")]), "run `buildnet node leave` first");
    // It leaves (a mesh of one); joining again, its name is the new gamma's now.
    let out = back.cli(&["node", "leave"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = a.token("builder");
    fails(&back.cli(&["node", "join", &a.url, "--token", &token]), "a member named 'gamma' exists already");
    // The replacement is removed while online (its link closes), by four removals at once: one
    // succeeds and records it, the others are refused (before, all four succeeded, each writing
    // a `NodeLeft`).
    let removals: Vec<std::process::Output> = std::thread::scope(|s| {
        let started: Vec<_> = (0..4).map(|_| s.spawn(|| a.cli(&["node", "remove", &new_id]))).collect();
        started.into_iter().map(|t| t.join().expect("a removal")).collect()
    });
    assert_eq!(removals.iter().filter(|o| o.status.success()).count(), 1, "{removals:?}");
    let (_, left) = a.get("/api/ledger?types=NodeLeft");
    let recorded =
        left["entries"].as_array().expect("entries").iter().filter(|e| e["data"]["node_id"] == new_id.as_str());
    assert_eq!(recorded.count(), 1, "{left}");
    // The old gamma is admitted again.
    let out = back.cli(&["node", "join", &a.url, "--token", &token]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("gamma admitted again", Duration::from_secs(15), || a.sees_up(&c_id).then_some(()));
    assert!(!a.pool_nodes().iter().any(|x| x["id"] == new_id.as_str()));

    // The key holder, its other members removed (one of them online), may leave its mesh.
    fails(&a.cli(&["node", "leave"]), "mesh key");
    for id in [&b_id, &c_id] {
        let out = a.cli(&["node", "remove", id]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    wait_until("beta's link closed", Duration::from_secs(10), || (a.get("/api/mesh").1["links"] == 0).then_some(()));
    let out = a.cli(&["node", "leave"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Its new mesh of one admits a node that sees it: the new mesh's roster holds its entry (a
    // tester found joiners refusing its links for ever, the roster they got lacking it).
    let d = a.join("delta", "builder", Start::default());
    common::wait_all_online(&[&a, &d]);
}
