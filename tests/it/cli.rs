//! The CLI against a real node: formats, global flags anywhere, key management, the ledger,
//! and the one-line errors when no node answers.

use std::process::Command;

use crate::common::{TestNode, BIN};
use serde_json::Value;

#[test]
fn no_node_answers_is_one_line_and_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let url = format!("http://127.0.0.1:{port}");
    std::fs::write(dir.path().join("address"), &url).expect("write");
    std::fs::write(dir.path().join("admin.key"), "bn_x").expect("write");
    let out = Command::new(BIN).args(["node", "status", "--data-dir"]).arg(dir.path()).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim(), format!("buildnet: no BuildNet node answers at {url} — start one with `buildnet up`"));

    let empty = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args(["pool", "status", "--data-dir"])
        .arg(empty.path())
        .env_remove("BUILDNET_ADDRESS")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("start one with `buildnet up`"));

    // Something else answers there (a web server, or no HTTP at all): the line asks whether the
    // address is a BuildNet node's.
    for answer in [&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"[..], b"SSH-2.0-x\r\n"] {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            if let Ok((mut socket, _)) = listener.accept() {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request);
                let _ = socket.write_all(answer);
            }
        });
        let out = Command::new(BIN)
            .args(["pool", "status", "--address", &url, "--token", "bn_x", "--data-dir"])
            .arg(empty.path())
            .output()
            .expect("run");
        let _ = server.join();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "no node to use at all: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(&format!("is {url} a BuildNet node")), "{err}");
    }

    // A port that takes the connection and never answers (a node stopped with SIGSTOP, or
    // wedged): the command gives up after --timeout, not after five minutes.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let _held = std::thread::spawn(move || listener.incoming().flatten().collect::<Vec<_>>());
    let started = std::time::Instant::now();
    let out = Command::new(BIN)
        .args(["pool", "status", "--timeout", "1", "--address", &url, "--token", "bn_x", "--data-dir"])
        .arg(empty.path())
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("{url} did not answer within 1 s")) && err.contains("--timeout"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
    let out = Command::new(BIN).args(["pool", "status", "--timeout", "0"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn status_in_every_format_and_flags_before_or_after() {
    let node = TestNode::start();
    let json = node.cli_json(&["node", "status"]);
    let (_, api) = node.get("/api/node");
    assert_eq!(json["node_id"], api["node_id"]);
    assert_eq!(json["resources"]["cpu"]["count"], api["resources"]["cpu"]["count"]);

    let before = node.cli(&["--format", "json", "pool", "status"]);
    assert!(before.status.success());
    let pool: Value = serde_json::from_slice(&before.stdout).expect("json");
    assert_eq!(pool["aggregate"]["total_cpu_cores"], api["resources"]["cpu"]["offered"]);

    let yaml = node.cli(&["pool", "nodes", "--format", "yaml"]);
    assert!(yaml.status.success());
    let text = String::from_utf8_lossy(&yaml.stdout);
    assert!(text.starts_with("nodes:\n  - "), "{text}");
    assert!(text.contains(&format!("id: {}", api["node_id"].as_str().expect("id"))), "{text}");

    let table = node.cli(&["node", "status"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("logical cores") && text.contains("Storage") && text.contains("Runtimes"), "{text}");

    let resources = node.cli_json(&["pool", "resources", "--type", "storage"]);
    let list = resources["resources"].as_array().expect("resources");
    assert!(!list.is_empty() && list.iter().all(|r| r["type"] == "storage"));

    let health = node.cli(&["pool", "health"]);
    assert!(health.status.success(), "{}", String::from_utf8_lossy(&health.stdout));
}

#[test]
fn address_and_token_flags_reach_another_node() {
    let node = TestNode::start();
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args(["node", "status", "--format", "json", "--data-dir"])
        .arg(elsewhere.path())
        .args(["--address", &node.url, "--token", &node.admin_key])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(BIN)
        .args(["node", "status", "--data-dir"])
        .arg(elsewhere.path())
        .env("BUILDNET_ADDRESS", &node.url)
        .env("BUILDNET_TOKEN", "bn_wrong")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing or invalid API key") && err.contains("--token"), "{err}");
    assert_eq!(err.lines().count(), 1);
}

#[test]
fn keys_can_be_created_listed_and_revoked() {
    let node = TestNode::start();
    let created = node.cli_json(&["key", "create", "--role", "observer", "--name", "ci-reader", "--ttl", "24h"]);
    let secret = created["key"].as_str().expect("secret");
    assert!(secret.starts_with("bn_"));
    let id = created["info"]["id"].as_str().expect("id").to_string();
    assert!(created["info"]["expires_at_ms"].as_u64().is_some());

    let out = Command::new(BIN)
        .args(["node", "status", "--format", "json", "--address", &node.url, "--token", secret])
        .output()
        .expect("run");
    assert!(out.status.success());
    let out =
        Command::new(BIN).args(["node", "scan", "--address", &node.url, "--token", secret]).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("may not rescan"));

    let list = node.cli(&["key", "list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("ci-reader") && text.contains("observer") && !text.contains(secret), "{text}");

    let revoked = node.cli(&["key", "revoke", &id]);
    assert!(revoked.status.success());
    let again = node.cli(&["key", "revoke", &id]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains(&format!("key '{id}' is revoked already")));
    let unknown = node.cli(&["key", "revoke", "key_000000000000"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no key with id 'key_000000000000'"));

    let bad = node.cli(&["key", "create", "--role", "king", "--name", "x"]);
    assert_eq!(bad.status.code(), Some(2), "clap refuses a bad role");
}

#[test]
fn ledger_lists_filters_and_verifies() {
    let node = TestNode::start();
    node.key("builder");
    let all = node.cli_json(&["ledger"]);
    assert_eq!(all["entries"].as_array().expect("entries").len(), 3);
    let one = node.cli_json(&["ledger", "-n", "1"]);
    assert_eq!(one["entries"].as_array().expect("entries").len(), 1);
    assert_eq!(one["entries"][0]["entry_type"], "KeyCreated");
    let joined = node.cli_json(&["ledger", "--type", "NodeJoined"]);
    assert_eq!(joined["entries"][0]["entry_type"], "NodeJoined");
    let verify = node.cli_json(&["ledger", "verify"]);
    assert_eq!(verify["ok"], true);
    let table = node.cli(&["ledger"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("NodeJoined"));
    let bad = node.cli(&["ledger", "--type", "Nope"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("types:"));
}

#[test]
fn scan_prints_a_summary() {
    let node = TestNode::start();
    let out = node.cli(&["node", "scan"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("Scanned in ") && text.contains("cores offered"), "{text}");
}
