//! The API against plan §13.1: its request and response shapes accepted beside ours, unknown
//! query parameters refused naming them, 405 for a known path with a wrong method.

use serde_json::json;

use crate::common::{self, Start, TestNode};

#[test]
fn plan_shapes_are_accepted_and_mistakes_are_named() {
    let _shared = common::shared();
    let node = TestNode::start_with(Start::named("solo"));

    // 405 for a known path with a method it does not take; 404 for an unknown one.
    let (status, body) = node.send("DELETE", "/api/node", &json!({}));
    assert_eq!(status, 405, "{body}");
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    let (status, body) = node.send("POST", "/api/ledger", &json!({}));
    assert_eq!(status, 405, "{body}");
    // `Allow` names what the path takes, as the OpenAPI document lists it (RFC 9110 §15.5.6).
    for (method, path, allow) in [
        ("DELETE", "/api/node", "GET"),
        ("PUT", "/api/ledger", "GET"),
        ("GET", "/api/build", "POST"),
        ("PATCH", "/api/keys/key_0a1b2c3d4e5f", "DELETE"),
        // A literal path beside a template is its own resource: not `GET /api/build/{id}`, nor
        // a blob named "missing".
        ("GET", "/api/build/estimate", "POST"),
        ("PUT", "/api/blobs/missing", "POST"),
        ("DELETE", "/api/build/b_0a1b2c3d4e5f", "GET"),
    ] {
        let (status, headers, body) = common::http_full(
            method,
            &format!("{}{path}", node.url),
            &[("Authorization", &format!("Bearer {}", node.admin_key)), ("Content-Type", "application/json")],
            Some(b"{}"),
        );
        assert_eq!(status, 405, "{method} {path}: {body}");
        let allowed = headers.iter().find(|(k, _)| k == "allow").map(|(_, v)| v.as_str());
        assert_eq!(allowed, Some(allow), "{method} {path}: {headers:?}");
        assert!(body.contains(&format!("(it takes {allow})")), "{body}");
    }
    assert_eq!(node.get("/api/no-such-thing").0, 404);
    // HEAD is GET without the body: the headers, the length included, and nothing else.
    let auth = format!("Bearer {}", node.admin_key);
    let (status, headers, body) =
        common::http_full("HEAD", &format!("{}/api/node", node.url), &[("Authorization", &auth)], None);
    assert_eq!(status, 200, "{body}");
    assert!(body.is_empty(), "{body}");
    let length = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse::<usize>().ok());
    assert!(length.is_some_and(|n| n > 100), "{headers:?}");
    let (status, _, _) = common::http_full("HEAD", &format!("{}/api/node", node.url), &[], None);
    assert_eq!(status, 401, "and asks for the same key");

    // Unknown query parameters and values: 400 naming the parameter.
    for (path, param) in [
        ("/api/ledger?typo=KeyCreated", "typo"),
        ("/api/ledger?types=Nope", "types"),
        ("/api/builds?state=failed", "state"),
        ("/api/builds?status=exploded", "status"),
        ("/api/pool/resources?kind=cpu", "kind"),
        ("/api/pool/resources?type=gpu", "type"),
        ("/api/node/benchmarks?type=gpu", "type"),
        ("/api/ledger?limit=0", "limit"),
    ] {
        let (status, body) = node.get(path);
        assert_eq!(status, 400, "{path}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(&format!("{param}:")), "{path}: {body}");
    }

    let (status, body) = node.get("/api/ledger?types=KeyCreated&types=NodeJoined");
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.starts_with("duplicate field `types`")), "{body}");
    // A key that would be expired as it is made is refused, naming the field.
    let (status, body) = node.post("/api/keys", &json!({"name": "gone", "role": "observer", "ttl_secs": 0}));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.starts_with("ttl_secs:")), "{body}");

    // Ledger entries carry the plan's field names too, and its filter names work.
    let (status, body) = node.get("/api/ledger?entry_types=KeyCreated,NodeJoined&from_time=0");
    assert_eq!(status, 200, "{body}");
    let (status, body) = node.get("/api/ledger?origin_node=solo&limit=1");
    assert_eq!(status, 200, "{body}");
    let entry = &body["entries"][0];
    assert_eq!(entry["origin_node"], entry["origin"], "{entry}");
    assert_eq!(entry["sequence"], entry["seq"], "{entry}");
    assert!(entry["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{entry}");

    // POST /api/build/estimate with a bare configuration (plan §13.1): before any build it asks
    // for a project, naming the field; after one, it estimates that project under it.
    let plan_cfg = json!({ "name": "x", "resources": { "cpu": { "cores": 1, "node_allocations": [{ "node_id": "solo", "cores": 1 }] } } });
    let (status, body) = node.post("/api/build/estimate", &plan_cfg);
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or_default().starts_with("project:"), "{body}");
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("p");
    std::fs::create_dir_all(&root).expect("mkdir");
    std::fs::write(root.join("buildnet.toml"), "[packages.nap]\ncommand = [\"sleep\", \"30\"]\n").expect("manifest");
    let out = node.cli(&["build", "--project", root.to_str().expect("path"), "--estimate"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Start it by name so it runs while we cancel it.
    let (status, body) = node.post("/api/projects", &json!({ "path": root, "name": "nap" }));
    assert_eq!(status, 201, "{body}");
    let (status, body) = node.post("/api/build", &json!({ "project": "nap" }));
    assert_eq!(status, 202, "{body}");
    let id = body["build_id"].as_str().expect("id").to_string();
    // The build's history row is written as it starts, after the 202: a loaded machine (the
    // whole suite at once) can ask before that, so wait for it as a script would.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let (status, body) = loop {
        let (status, body) = node.post("/api/build/estimate", &plan_cfg);
        if status == 200 || std::time::Instant::now() > deadline {
            break (status, body);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(status, 200, "{body}");
    assert!(body["total_duration_ms"].is_u64(), "{body}");

    // Cancel answers plan §13.1's {success} as well as the status.
    let (status, body) = node.post(&format!("/api/build/{id}/cancel"), &json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true, "{body}");
    assert_eq!(body["id"], id.as_str(), "{body}");
}
