//! One real node: start-up, discovery against the machine's own tools, auth, errors, ledger,
//! clean shutdown and restart.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use crate::common::{self, fake_tool, http, wait_until, Start, TestNode, BIN};
use serde_json::{json, Value};

#[test]
fn up_writes_address_and_admin_key_and_prints_where_pages_are() {
    let node = TestNode::start();
    let stdout = std::fs::read_to_string(&node.stdout).expect("stdout");
    assert!(stdout.contains(&format!("Admin pages: {}/", node.url)), "{stdout}");
    assert!(stdout.contains(&node.admin_key), "the first start prints the admin key once");
    let mode = std::fs::metadata(node.dir.join("admin.key")).expect("admin.key").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let key_mode = std::fs::metadata(node.dir.join("node.key")).expect("node.key").permissions().mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let (status, body) = http("GET", &format!("{}/api/health", node.url), &[], None);
    assert_eq!(status, 200);
    let health: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(health["status"], "ok");
}

fn first_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).env("LC_ALL", "C").output().ok()?;
    let text = if out.stdout.iter().any(|b| !b.is_ascii_whitespace()) { out.stdout } else { out.stderr };
    String::from_utf8_lossy(&text).lines().map(str::trim).find(|l| !l.is_empty()).map(str::to_string)
}

#[test]
fn discovery_reports_what_the_machine_says() {
    let node = TestNode::start();
    let (status, n) = node.get("/api/node");
    assert_eq!(status, 200);
    let r = &n["resources"];

    let nproc: u64 = first_line("nproc", &[]).and_then(|s| s.parse().ok()).expect("nproc");
    assert_eq!(r["cpu"]["count"], nproc, "cores = nproc");

    let meminfo = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
    let kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("MemTotal");
    assert_eq!(r["memory"]["total_bytes"], kb * 1024, "memory = /proc/meminfo MemTotal");

    let df = Command::new("df").args(["-B1", "--output=size,avail"]).arg(&node.dir).output().expect("df");
    let df = String::from_utf8_lossy(&df.stdout);
    let nums: Vec<u64> = df.lines().nth(1).expect("df row").split_whitespace().filter_map(|v| v.parse().ok()).collect();
    let vol =
        r["storage"].as_array().expect("storage").iter().find(|v| v["purpose"] == "data").expect("data dir volume");
    assert_eq!(vol["total_bytes"], nums[0], "disk size = df");
    let avail = vol["available_bytes"].as_u64().expect("available");
    assert!(avail.abs_diff(nums[1]) < 256 << 20, "available {avail} vs df {}", nums[1]);

    let found: Vec<&Value> =
        r["tools"].as_array().expect("tools").iter().chain(r["runtimes"].as_array().expect("runtimes")).collect();
    assert!(!found.is_empty(), "at least one tool on any CI machine (gcc, git or make)");
    for t in found.iter().filter(|t| t["error"].is_null()) {
        let path = t["path"].as_str().expect("path");
        let args: &[&str] = match t["name"].as_str().expect("name") {
            "imagemagick" | "ffmpeg" | "java" => &["-version"],
            "go" => &["version"],
            _ => &["--version"],
        };
        let line = first_line(path, args).expect("tool answers");
        assert_eq!(t["version_output"].as_str(), Some(line.as_str()), "{} reports what it says itself", t["name"]);
        if let Some(v) = t["version"].as_str() {
            assert!(line.contains(v), "{v} is in '{line}'");
        }
    }
    let names: Vec<&str> =
        n["resource_status"].as_array().expect("status").iter().filter_map(|s| s["key"].as_str()).collect();
    assert!(names.contains(&"cpu") && names.contains(&"memory"), "{names:?}");
}

#[test]
fn keys_and_roles_gate_every_endpoint() {
    let node = TestNode::start();
    let url = |p: &str| format!("{}{p}", node.url);
    for path in [
        "/api/node",
        "/api/pool",
        "/api/pool/nodes",
        "/api/pool/resources",
        "/api/ledger",
        "/api/keys",
        "/api/openapi.json",
    ] {
        let (status, body) = http("GET", &url(path), &[], None);
        assert_eq!(status, 401, "{path} without a key");
        let v: Value = serde_json::from_str(&body).expect("JSON error");
        assert_eq!(v["error"]["code"], "unauthorized");
        let (status, _) = http("GET", &url(path), &[("Authorization", "Bearer bn_wrong")], None);
        assert_eq!(status, 401, "{path} with a wrong key");
    }
    let observer = node.key("observer");
    let auth = format!("Bearer {observer}");
    let (status, _) = http("GET", &url("/api/node"), &[("Authorization", &auth)], None);
    assert_eq!(status, 200, "an observer may read");
    let (status, body) = http("POST", &url("/api/node/scan"), &[("Authorization", &auth)], None);
    assert_eq!(status, 403, "an observer may not scan: {body}");
    assert!(body.contains("forbidden"));
    let (status, _) = http("GET", &url("/api/keys"), &[("Authorization", &auth)], None);
    assert_eq!(status, 403, "an observer may not manage keys");

    let builder = node.key("builder");
    let (status, _) = http("POST", &url("/api/node/scan"), &[("Authorization", &format!("Bearer {builder}"))], None);
    assert_eq!(status, 403, "a builder may not scan");

    let (_, keys) = node.get("/api/keys");
    let id = keys["keys"].as_array().expect("keys").iter().find(|k| k["role"] == "observer").expect("observer key")
        ["id"]
        .as_str()
        .expect("id")
        .to_string();
    let (status, _) = http(
        "DELETE",
        &url(&format!("/api/keys/{id}")),
        &[("Authorization", &format!("Bearer {}", node.admin_key))],
        None,
    );
    assert_eq!(status, 200);
    let (status, _) = http("GET", &url("/api/node"), &[("Authorization", &auth)], None);
    assert_eq!(status, 401, "a revoked key stops working at once");

    let (_, ledger) = node.get("/api/ledger?types=KeyCreated,KeyRevoked");
    let types: Vec<&str> =
        ledger["entries"].as_array().expect("entries").iter().filter_map(|e| e["entry_type"].as_str()).collect();
    assert_eq!(types.iter().filter(|t| **t == "KeyRevoked").count(), 1);
    assert_eq!(types.iter().filter(|t| **t == "KeyCreated").count(), 3, "admin, observer, builder");
}

#[test]
fn errors_are_json_naming_the_field_and_the_node_keeps_serving() {
    let node = TestNode::start();
    let auth = format!("Bearer {}", node.admin_key);
    let h = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let call = |method: &str, path: &str, body: Option<&[u8]>| {
        let (status, text) = http(method, &format!("{}{path}", node.url), &h, body);
        (status, serde_json::from_str::<Value>(&text).unwrap_or(Value::Null))
    };
    let (status, v) = call("GET", "/api/no/such/route", None);
    assert_eq!((status, v["error"]["code"].as_str()), (404, Some("not_found")));
    let (status, v) = call("POST", "/api/keys", Some(br#"{"name":"x","role":"king"}"#));
    assert_eq!(status, 400);
    assert!(v["error"]["message"].as_str().expect("message").starts_with("role:"), "{v}");
    let (status, v) = call("POST", "/api/keys", Some(br#"{"name":"x"}"#));
    assert_eq!(status, 400);
    assert!(v["error"]["message"].as_str().expect("message").contains("role"), "{v}");
    let (status, v) = call("POST", "/api/keys", Some(b"{not json"));
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("invalid_body")));
    let big = vec![b' '; 2 << 20];
    let (status, v) = call("POST", "/api/keys", Some(&big));
    assert_eq!((status, v["error"]["code"].as_str()), (413, Some("payload_too_large")));
    let (status, v) = call("GET", "/api/ledger?limit=lots", None);
    assert_eq!(status, 400);
    assert!(v["error"]["message"].as_str().expect("message").starts_with("limit:"), "{v}");
    let (status, v) = call("GET", "/api/pool/resources?type=gpu", None);
    assert_eq!(status, 400);
    assert!(v["error"]["message"].as_str().expect("message").starts_with("type:"), "{v}");
    let (status, _) = call("GET", "/api/health", None);
    assert_eq!(status, 200, "still serving");
}

#[test]
fn openapi_is_generated_from_the_handlers() {
    let node = TestNode::start();
    let (status, doc) = node.get("/api/openapi.json");
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().expect("version").starts_with("3."));
    for path in [
        "/api/health",
        "/api/node",
        "/api/node/scan",
        "/api/pool",
        "/api/pool/nodes",
        "/api/pool/resources",
        "/api/ledger",
        "/api/keys",
        "/api/keys/{id}",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
    assert!(doc["components"]["schemas"].get("NodeStatus").is_some());
}

#[test]
fn scan_and_pool_agree_with_the_node() {
    let config = r#"{"resource_limits": {"cpu": {"max_cores": 1}, "memory": {"max_gb": 1}}}"#;
    let node = TestNode::start_with(Start { config: Some(config), ..Default::default() });
    let (status, scan) = node.post("/api/node/scan", &json!({}));
    assert_eq!(status, 200, "{scan}");
    assert_eq!(scan["success"], true);
    let (_, n) = node.get("/api/node");
    assert_eq!(n["resources"]["cpu"]["offered"], 1, "limits change what is offered");
    assert_eq!(n["resources"]["memory"]["offered_bytes"], 1u64 << 30);
    let (_, pool) = node.get("/api/pool");
    assert_eq!(pool["aggregate"]["total_cpu_cores"], 1);
    assert_eq!(pool["aggregate"]["total_memory_bytes"], 1u64 << 30);
    assert_eq!(pool["coordinator"], n["node_id"]);
    let (_, res) = node.get("/api/pool/resources?type=cpu");
    let list = res["resources"].as_array().expect("resources");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["node_id"], n["node_id"]);
    // A node the pool does not know is refused, naming the parameter (not an empty list).
    let (status, none) = node.get("/api/pool/resources?node=00000000000000ff");
    assert_eq!(status, 400, "{none}");
    assert!(none["error"]["message"].as_str().unwrap_or_default().starts_with("node:"), "{none}");
}

#[test]
fn a_hanging_tool_does_not_hang_the_scan() {
    let tools = tempfile::tempdir().expect("tempdir");
    fake_tool(tools.path(), "ninja", "#!/bin/sh\nsleep 60\n");
    let started = std::time::Instant::now();
    let node = TestNode::start_with(Start {
        config: Some(r#"{"scan": {"probe_timeout_ms": 500}}"#),
        path_prefix: Some(tools.path()),
        ..Default::default()
    });
    assert!(started.elapsed() < Duration::from_secs(30));
    let (_, n) = node.get("/api/node");
    let ninja = n["resources"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .find(|t| t["name"] == "ninja")
        .expect("ninja listed")
        .clone();
    assert!(ninja["error"].as_str().expect("error").contains("did not answer within 500 ms"), "{ninja}");
    let (status, _) = node.post("/api/node/scan", &json!({}));
    assert_eq!(status, 200);
}

#[test]
fn a_bad_config_stops_up_before_it_serves_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("node-config.json");
    std::fs::write(&config, r#"{"resource_limits": {"cpu": {"max_cores": "six"}}}"#).expect("write");
    let out =
        Command::new(BIN).args(["up", "--listen", "127.0.0.1:0", "--data-dir"]).arg(dir.path()).output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("node-config.json: resource_limits.cpu.max_cores: expected an integer"), "{err}");
    assert!(!dir.path().join("address").exists(), "it never served");
}

/// Runs a second `buildnet up` on `dir`, which must be refused (exit 1) within 30 s; its stderr.
/// Bounded: a second node that is not refused would serve until killed.
fn second_up_refused(dir: &std::path::Path, case: &str) -> String {
    let err_file = dir.with_extension("second.stderr");
    let mut second = Command::new(BIN)
        .args(["up", "--tls", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env_remove("BUILDNET_DATA_DIR")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err_file).expect("stderr file"))
        .spawn()
        .expect("run");
    let Some(status) = common::exit_within(&mut second, Duration::from_secs(30)) else {
        let _ = second.kill();
        panic!("{case}: a second node on the same data dir was not refused");
    };
    assert_eq!(status.code(), Some(1), "{case}");
    std::fs::read_to_string(&err_file).expect("stderr")
}

#[test]
fn a_second_node_on_a_data_dir_in_use_is_refused_and_the_first_keeps_serving() {
    let node = TestNode::start_with(Start { args: vec!["--tls".into()], ..Default::default() });
    let files = ["address", "tls-fingerprint", "tls-cert.pem", "node.lock"];
    let read = |name: &str| std::fs::read(node.dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let before: Vec<Vec<u8>> = files.iter().map(|f| read(f)).collect();
    let err = second_up_refused(&node.dir, "the data dir in use");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains(&format!("is in use by another node (pid {})", node.child.id())), "{err}");
    let after: Vec<Vec<u8>> = files.iter().map(|f| read(f)).collect();
    assert!(before == after, "the second one touched none of the first one's files");
    let (status, _) = node.get("/api/node");
    assert_eq!(status, 200, "the first one keeps serving");
    assert!(node.cli(&["ledger", "verify"]).status.success());

    // The lock is the directory's, not node.lock's: with that file deleted (by hand, a tmp
    // cleaner), a second node is still refused.
    std::fs::remove_file(node.dir.join("node.lock")).expect("delete node.lock");
    second_up_refused(&node.dir, "node.lock deleted");
    assert_eq!(read("address"), before[0], "the first one's address stands");
    assert!(node.cli(&["ledger", "verify"]).status.success());

    // Killed, a node leaves no lock behind: the next start takes the data dir at once.
    let mut node = node;
    node.child.kill().expect("kill -9");
    let _ = node.child.wait();
    let again =
        TestNode::start_with(Start { dir: Some(node.dir.clone()), args: vec!["--tls".into()], ..Default::default() });
    assert_eq!(again.get("/api/node").0, 200);
}

#[test]
fn a_name_that_could_forge_a_line_of_another_users_table_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A blank at either end too: names are looked up trimmed, and " beta" would be found as
    // "beta", another node (a tester removed the wrong node that way).
    for name in ["x\u{1b}[2J\u{1b}[31mFAKE", "two\nlines", &"n".repeat(65), "", " beta", "beta\t"] {
        let out = Command::new(BIN)
            .args(["up", "--listen", "127.0.0.1:0", "--name", name, "--data-dir"])
            .arg(dir.path())
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(1), "{name:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(lines[0].contains("must be 1 to 64 printable characters"), "{err}");
        assert!(!dir.path().join("address").exists(), "it never served");
    }
}

#[test]
fn an_altered_ledger_row_is_caught_by_verify() {
    let node = TestNode::start();
    node.key("observer");
    let out = node.cli(&["ledger", "verify"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let db = rusqlite::Connection::open(node.dir.join("buildnet.db")).expect("open db");
    db.busy_timeout(Duration::from_secs(5)).expect("timeout");
    let changed = db
        .execute("UPDATE ledger SET entry_data = replace(entry_data, 'observer', 'admin') WHERE seq = 3", [])
        .expect("tamper");
    assert_eq!(changed, 1);
    let out = node.cli(&["ledger", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("#3") && err.contains("altered"), "{err}");
}

#[test]
fn sigterm_stops_cleanly_and_a_restart_keeps_identity_and_keys() {
    let node = TestNode::start();
    let (_, before) = node.get("/api/node");
    let (dir, key) = (node.dir.clone(), node.admin_key.clone());
    let (status, _keep) = node.stop();
    assert!(status.success(), "exit status {status}");
    assert!(!dir.join("buildnet.db-wal").exists(), "the database was closed (WAL checkpointed)");
    assert!(!dir.join("address").exists());

    let again = TestNode::start_with(Start { dir: Some(dir.clone()), ..Default::default() });
    assert_eq!(again.admin_key, key, "the admin key is kept");
    let (status, after) = again.get("/api/node");
    assert_eq!(status, 200);
    assert_eq!(after["node_id"], before["node_id"]);
    let stdout = std::fs::read_to_string(&again.stdout).expect("stdout");
    assert!(!stdout.contains(&key), "the key is printed only on first start");
    let (_, ledger) = again.get("/api/ledger?limit=100");
    let types: Vec<&str> =
        ledger["entries"].as_array().expect("entries").iter().filter_map(|e| e["entry_type"].as_str()).collect();
    assert_eq!(types, vec!["NodeStarted", "NodeStopped", "KeyCreated", "NodeJoined"]);
    wait_until("verify passes", Duration::from_secs(5), || {
        again.cli(&["ledger", "verify"]).status.success().then_some(())
    });
}

#[test]
fn a_second_stop_signal_ends_the_node_at_once() {
    let _shared = common::shared();
    let mut node = TestNode::start();
    // A request in flight that the graceful stop waits for: a build of `sleep 60`, asked to
    // answer when it ends.
    let body = json!({
        "project": { "manifest": { "packages": { "slow": { "shell": "sleep 60" } } }, "order": [], "inputs": {} },
        "files": {},
    });
    let (url, key) = (format!("{}/api/build?wait_ms=30000", node.url), node.admin_key.clone());
    let waiting = std::thread::spawn(move || {
        let auth = format!("Bearer {key}");
        http(
            "POST",
            &url,
            &[("Authorization", &auth), ("Content-Type", "application/json")],
            Some(body.to_string().as_bytes()),
        )
    });
    wait_until("the build to run", Duration::from_secs(20), || {
        let (_, list) = node.get("/api/builds");
        (list["builds"][0]["status"] == "running").then_some(())
    });
    node.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    node.signal(libc::SIGINT);
    let status = common::exit_within(&mut node.child, Duration::from_secs(20)).expect("the node exits");
    assert_eq!(status.code(), Some(130), "{status}");
    let _ = waiting.join();
    // Nothing is left locked: the next start takes the data dir.
    let again = TestNode::start_with(Start { dir: Some(node.dir.clone()), ..Default::default() });
    assert_eq!(again.get("/api/node").0, 200);
}

#[test]
fn a_rescan_that_finds_a_new_tool_is_persisted_and_in_the_ledger() {
    let tools = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start_with(Start { path_prefix: Some(tools.path()), ..Default::default() });
    let (_, scan) = node.post("/api/node/scan", &json!({}));
    assert_eq!(scan["changed"], false, "nothing changed yet");

    let fake = fake_tool(tools.path(), "cmake", "#!/bin/sh\necho 'cmake version 3.99.1'\n");
    let (status, scan) = node.post("/api/node/scan", &json!({}));
    assert_eq!(status, 200);
    assert_eq!(scan["changed"], true);
    let cmake = scan["resources"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .find(|t| t["name"] == "cmake")
        .expect("cmake found")
        .clone();
    assert_eq!(cmake["version"], "3.99.1");

    let (_, ledger) = node.get("/api/ledger?types=ResourcesChanged");
    let entries = ledger["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["data"]["added"], json!(["cmake@3.99.1"]));

    let db = rusqlite::Connection::open(node.dir.join("buildnet.db")).expect("open db");
    let keys: Vec<String> = {
        let mut stmt = db.prepare("SELECT resource_key FROM node_resources ORDER BY resource_key").expect("prepare");
        stmt.query_map([], |r| r.get(0)).expect("query").collect::<Result<_, _>>().expect("rows")
    };
    for want in ["cpu", "memory", "network", "tool:cmake"] {
        assert!(keys.iter().any(|k| k == want), "{want} in {keys:?}");
    }
    let nodes: i64 = db.query_row("SELECT count(*) FROM nodes", [], |r| r.get(0)).expect("count");
    assert_eq!(nodes, 1);

    std::fs::remove_file(&fake).expect("remove");
    let (_, scan) = node.post("/api/node/scan", &json!({}));
    assert_eq!(scan["changed"], true);
    let gone: i64 = db
        .query_row("SELECT count(*) FROM node_resources WHERE resource_key = 'tool:cmake'", [], |r| r.get(0))
        .expect("count");
    assert_eq!(gone, 0, "a vanished tool's row is removed");
    let (_, n) = node.get("/api/node");
    assert!(
        !n["resource_status"].as_array().expect("status").iter().any(|r| r["key"] == "tool:cmake"),
        "and its actor is gone"
    );
}

#[test]
fn benchmarks_measure_record_and_need_an_admin() {
    // The CPU test loads every core: not while a mesh test counts heartbeats.
    let _shared = common::shared();
    let node = TestNode::start();
    let cpu = node.cli_json(&["test", "cpu"]);
    let c = &cpu["cpu"];
    assert!(c["single_core_score"].as_f64().expect("single") > 0.0);
    let eff = c["parallel_efficiency"].as_f64().expect("efficiency");
    assert!(eff > 0.0 && eff <= 1.0);
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = node.cli_json(&["test", "storage", dir.path().to_str().expect("path"), "--size-mb", "8"]);
    assert!(
        storage["seq_read_mbps"].as_f64().expect("read") > 0.0
            && storage["random_write_iops"].as_u64().expect("iops") > 0
    );
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0, "the test file is removed");
    let bad = node.cli(&["test", "storage", "/no/such/dir"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("path:"));
    // The data dir's volume: its class is the kernel's word until measured, then the measure's.
    let status = || String::from_utf8_lossy(&node.cli(&["node", "status"]).stdout).to_string();
    assert!(status().contains("(kernel; not measured)"), "{}", status());
    node.cli_json(&["test", "storage", node.dir.to_str().expect("path"), "--size-mb", "8"]);
    assert!(status().contains(" (measured)"), "{}", status());

    let (_, history) = node.get("/api/node/benchmarks");
    let kinds: Vec<&str> =
        history.as_array().expect("records").iter().filter_map(|r| r["benchmark_type"].as_str()).collect();
    assert_eq!(kinds, vec!["storage", "storage", "cpu"]);
    let (_, ledger) = node.get("/api/ledger?types=BenchmarkCompleted");
    assert_eq!(ledger["entries"].as_array().expect("entries").len(), 3);
    let observer = node.key("observer");
    let (status, _) = http(
        "POST",
        &format!("{}/api/node/benchmark", node.url),
        &[("Authorization", &format!("Bearer {observer}"))],
        None,
    );
    assert_eq!(status, 403);
    // Options that would never end or would fill the disk are refused, naming the field.
    let (status, e) = node.post(
        "/api/node/benchmark",
        &json!({ "types": ["cpu"], "options": { "cpu_secs": 1e9, "file_mb": 8, "random_secs": 1 } }),
    );
    assert_eq!(status, 400, "{e}");
    assert!(e["error"]["message"].as_str().unwrap_or("").starts_with("options.cpu_secs"), "{e}");
    let bad = node.cli(&["test", "cpu", "--seconds", "0"]);
    assert_eq!(bad.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--seconds"));
}
