//! Paths are data (issue 10, attacks 2, 4 and 5), through the real binary with a **builder**
//! key: a build request whose files name places outside the project is refused with a 400 that
//! names the field, on the node that receives it and before any peer sees it; an output that is
//! a symbolic link (to the node's `admin.key`) fails the build and the key goes nowhere; a link
//! already in the project at an output's path is replaced, never written through, and a linked
//! directory leading outside the project is refused by the CLI.
//!
//! The peer's own check (a task from a requester that skipped it) is tested in the engine, over
//! in-memory links: `mesh::memory::tests::a_peer_refuses_a_task_whose_paths_leave_its_sandbox`.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::common::{self, http, wait_until, TestNode};
use serde_json::{json, Value};

/// A JSON request with `key`.
fn send_as(node: &TestNode, key: &str, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let (status, text) = http(
        method,
        &format!("{}{path}", node.url),
        &[("Authorization", &format!("Bearer {key}")), ("Content-Type", "application/json")],
        Some(body.to_string().as_bytes()),
    );
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Uploads `bytes` as a blob with `key`; returns its digest.
fn upload(node: &TestNode, key: &str, bytes: &[u8]) -> String {
    let digest = blake3::hash(bytes).to_hex().to_string();
    let (status, body) = http(
        "PUT",
        &format!("{}/api/blobs/{digest}", node.url),
        &[("Authorization", &format!("Bearer {key}")), ("Content-Type", "application/octet-stream")],
        Some(bytes),
    );
    assert!(status == 201 || status == 200, "upload: {status} {body}");
    digest
}

/// A build request whose package reads input `a.txt`, with `files` as given.
fn request(files: Value, outputs: &[&str], config: Option<&str>) -> Value {
    json!({
        "project": {
            "manifest": { "packages": { "p": {
                "shell": "cat a.txt > out.txt", "inputs": ["a.txt"], "outputs": outputs } } },
            "order": [],
            "inputs": { "p": ["a.txt"] }
        },
        "files": files,
        "config": config,
    })
}

fn file(path: &str, digest: &str) -> Value {
    json!({ "path": path, "digest": digest, "executable": false, "size": 8 })
}

/// `buildnet build` of `root` against `node` with `key`.
fn build_as(node: &TestNode, key: &str, root: &Path, extra: &[&str]) -> Output {
    Command::new(common::BIN)
        .args(["build", "--project"])
        .arg(root)
        .args(["--address", &node.url, "--token", key])
        .args(extra)
        .env_remove("BUILDNET_DATA_DIR")
        .env_remove("BUILDNET_ADDRESS")
        .env_remove("BUILDNET_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("run buildnet build")
}

/// Every bad `files` entry of a request, with the field and problem the 400 must name.
fn bad_requests(digest: &str, outside: &Path) -> Vec<(Value, String)> {
    let abs = outside.join("abs.txt").display().to_string();
    vec![
        (
            json!({ "a.txt": file("../../../../escaped.txt", digest) }),
            r#"files["a.txt"].path: '../../../../escaped.txt' has a '..' component"#.to_string(),
        ),
        (json!({ "a.txt": file(&abs, digest) }), format!(r#"files["a.txt"].path: '{abs}' is absolute"#)),
        (
            json!({ "a.txt": file("a.txt", digest), "../../../../escaped.txt": file("../../../../escaped.txt", digest) }),
            r#"files["../../../../escaped.txt"]: '../../../../escaped.txt' has a '..' component"#.into(),
        ),
        (json!({ "a.txt": file("b.txt", digest) }), r#"files["a.txt"].path: 'b.txt' differs from its key"#.into()),
        (json!({ "a.txt": file("a.txt\u{0}x", digest) }), r#"files["a.txt"].path: 'a.txt\0x' contains a NUL"#.into()),
        // The package's TMPDIR: a tmpfs of its own would hide the input.
        (
            json!({ "a.txt": file("a.txt", digest), ".tmp/a.txt": file(".tmp/a.txt", digest) }),
            r#"files[".tmp/a.txt"]: '.tmp/a.txt' is under '.tmp'"#.into(),
        ),
    ]
}

fn assert_refused(status: u16, body: &Value, want: &str) {
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_path", "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.starts_with(want), "got '{message}', want '{want}…'");
}

/// Nothing named `escaped.txt` or `abs.txt` anywhere under `dir`.
fn nothing_escaped(dir: &Path) {
    fn walk(dir: &Path) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name();
            assert!(name != "escaped.txt" && name != "abs.txt", "written outside: {}", entry.path().display());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&entry.path());
            }
        }
    }
    walk(dir);
}

#[test]
fn a_request_naming_files_outside_the_project_is_refused_naming_the_field() {
    let _shared = common::shared();
    let node = TestNode::start();
    let builder = node.key("builder");
    let digest = upload(&node, &builder, b"payload\n");
    let outside = node.dir.parent().expect("the node's temporary dir").join("outside");
    std::fs::create_dir_all(&outside).expect("outside");
    for (files, want) in bad_requests(&digest, &outside) {
        let (status, body) =
            send_as(&node, &builder, "POST", "/api/build", &request(files.clone(), &["out.txt"], None));
        assert_refused(status, &body, &want);
        let (status, body) =
            send_as(&node, &builder, "POST", "/api/build/estimate", &request(files, &["out.txt"], None));
        assert_refused(status, &body, &want);
    }
    // The manifest's outputs and globs are checked by the same function, named by their field.
    let files = json!({ "a.txt": file("a.txt", &digest) });
    let (status, body) = send_as(&node, &builder, "POST", "/api/build", &request(files, &["../../../x"], None));
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_project")), "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("packages.p.outputs[0]: '../../../x' has a '..' component"), "{message}");
    // An output in the package's TMPDIR would go with it.
    let files = json!({ "a.txt": file("a.txt", &digest) });
    let (status, body) = send_as(&node, &builder, "POST", "/api/build", &request(files, &[".tmp/out.txt"], None));
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_project")), "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("packages.p.outputs[0]: '.tmp/out.txt' is under '.tmp'"), "{message}");

    // A digest that is none, or an input with no entry, is the request's mistake, named as such;
    // no upload could mend it (it was answered `missing_blobs`).
    for (files, want) in [
        (json!({ "a.txt": file("a.txt", "zz") }), "files.a.txt.digest: expected 64 lowercase hex digits"),
        (json!({}), "files: 'a.txt' has no entry"),
        // A size other than its blob's: estimates and transfers are planned from it.
        (
            json!({ "a.txt": { "path": "a.txt", "digest": digest, "executable": false, "size": 9 } }),
            "files.a.txt.size: declared 9 bytes, but the blob of its digest holds 8",
        ),
    ] {
        let (status, body) = send_as(&node, &builder, "POST", "/api/build", &request(files, &["out.txt"], None));
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_field")), "{body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| m.starts_with(want)), "{body}");
    }

    let (_, history) = node.get("/api/builds");
    assert_eq!(history["builds"].as_array().map(Vec::len), Some(0), "nothing started: {history}");
    nothing_escaped(node.dir.parent().expect("the node's temporary dir"));
    // A good request with the same blob builds: what was refused was the path.
    let files = json!({ "a.txt": file("a.txt", &digest) });
    let (status, body) = send_as(&node, &builder, "POST", "/api/build", &request(files, &["out.txt"], None));
    assert_eq!(status, 202, "{body}");
}

#[test]
fn a_build_confined_to_a_peer_with_a_path_outside_is_refused_before_the_peer_sees_it() {
    let _serial = common::serial();
    let (a, b) = common::two_nodes();
    let b_id = b.node_id();
    let out = a.cli(&["config", "create", "--name", "on-b", "--node", &format!("{b_id}:1")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let builder = a.key("builder");
    let digest = upload(&a, &builder, b"payload\n");
    let outside = b.dir.parent().expect("b's temporary dir").join("outside");
    std::fs::create_dir_all(&outside).expect("outside");
    for (files, want) in bad_requests(&digest, &outside) {
        let (status, body) = send_as(&a, &builder, "POST", "/api/build", &request(files, &["out.txt"], Some("on-b")));
        assert_refused(status, &body, &want);
    }
    // The same request with a good path runs on b: the configuration does send work there.
    let files = json!({ "a.txt": file("a.txt", &digest) });
    let (status, started) = send_as(&a, &builder, "POST", "/api/build", &request(files, &["out.txt"], Some("on-b")));
    assert_eq!(status, 202, "{started}");
    let id = started["build_id"].as_str().expect("build id");
    let done = wait_until("the good build ends", Duration::from_secs(60), || {
        let (_, s) = a.get(&format!("/api/build/{id}"));
        (s["status"] != "running").then_some(s)
    });
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["packages"][0]["node"], b_id.as_str(), "{done}");
    // b's own entries for a package it ran are committed in its ledger's next group (up to
    // `ledger::SOON` after they were written), not before the build's end reaches a.
    let allocations = wait_until("b's allocation entry", Duration::from_secs(5), || {
        let (_, ledger) = b.get("/api/ledger?types=ResourceAllocated&limit=100");
        let mine: Vec<Value> = ledger["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .filter(|e| e["origin"] == b_id.as_str())
            .cloned()
            .collect();
        (!mine.is_empty()).then_some(mine)
    });
    // Then three times that window more: an allocation for a refused request, had one been
    // written, would be committed and counted below by now.
    std::thread::sleep(Duration::from_millis(300));
    let (_, ledger) = b.get("/api/ledger?types=ResourceAllocated&limit=100");
    let all: Vec<&Value> =
        ledger["entries"].as_array().expect("entries").iter().filter(|e| e["origin"] == b_id.as_str()).collect();
    assert_eq!((allocations.len(), all.len()), (1, 1), "b ran the good build only: {all:?}");
    nothing_escaped(a.dir.parent().expect("a's temporary dir"));
    nothing_escaped(b.dir.parent().expect("b's temporary dir"));
}

/// A package whose output is a symbolic link to the node's key (or reached through one).
fn link_attack(node: &TestNode, builder: &str, shell: &str, output: &str, want: &str) {
    let work = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        work.path().join("buildnet.toml"),
        format!("[packages.steal]\nshell = {shell:?}\noutputs = [{output:?}]\n"),
    )
    .expect("manifest");
    let out = build_as(node, builder, work.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "the build fails: {stderr}");
    assert!(stderr.contains(want), "the error says why: {stderr}");

    let key = std::fs::read(node.dir.join("admin.key")).expect("admin.key");
    let key_text = String::from_utf8_lossy(&key).trim().to_string();
    let digest = blake3::hash(&key).to_hex().to_string();
    let (status, _) = http(
        "GET",
        &format!("{}/api/blobs/{digest}", node.url),
        &[("Authorization", &format!("Bearer {builder}"))],
        None,
    );
    assert_eq!(status, 404, "the key is not in the store");
    assert!(!node.dir.join("cas").join(&digest[..2]).join(&digest).exists(), "the key is not in the store");
    let (_, builds) = node.get("/api/builds?limit=1");
    let id = builds["builds"][0]["id"].as_str().expect("build id");
    let (_, status) = node.get(&format!("/api/build/{id}"));
    assert_eq!(status["status"], "failed", "{status}");
    assert!(status["packages"][0]["error"].as_str().expect("error").contains(want), "{status}");
    assert!(!status.to_string().contains(&key_text), "the key is not in the build's status");
    for entry in walk_files(work.path()) {
        let text = std::fs::read(&entry).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&text).contains(&key_text), "the key was written to {}", entry.display());
    }
}

fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => files.extend(walk_files(&path)),
            Ok(_) => files.push(path),
            Err(_) => {}
        }
    }
    files
}

#[test]
fn an_output_that_is_a_link_to_the_admin_key_fails_the_build_and_the_key_goes_nowhere() {
    let _shared = common::shared();
    let node = TestNode::start();
    let builder = node.key("builder");
    let key = node.dir.join("admin.key").display().to_string();
    // Absolute, relative (the sandbox is <data-dir>/sandboxes/<build>/<package>), and a linked
    // directory on the way.
    link_attack(
        &node,
        &builder,
        &format!("ln -s {key} key.txt"),
        "key.txt",
        "output 'key.txt' is a symbolic link; outputs must be regular files",
    );
    link_attack(
        &node,
        &builder,
        "ln -s ../../../admin.key key.txt",
        "key.txt",
        "output 'key.txt' is a symbolic link; outputs must be regular files",
    );
    link_attack(
        &node,
        &builder,
        "rmdir up && ln -s ../../.. up",
        "up/admin.key",
        "output 'up/admin.key' is reached through 'up', a symbolic link; outputs must be regular files",
    );
}

#[test]
fn a_link_in_the_project_at_an_output_path_is_never_written_through() {
    let _shared = common::shared();
    let node = TestNode::start();
    let builder = node.key("builder");
    let tmp = tempfile::tempdir().expect("tempdir");
    let outside = tmp.path().join("outside");
    let root = tmp.path().join("project");
    std::fs::create_dir_all(&outside).expect("outside");
    std::fs::create_dir_all(&root).expect("project");
    std::fs::write(outside.join("victim.txt"), "precious\n").expect("victim");
    std::fs::write(
        root.join("buildnet.toml"),
        "[packages.p]\nshell = \"mkdir -p out && echo built > victim.txt && echo built > out/victim.txt\"\n\
         outputs = [\"victim.txt\", \"out/victim.txt\"]\n",
    )
    .expect("manifest");

    // The last component a link: the file replaces the link, its target is untouched.
    std::os::unix::fs::symlink(outside.join("victim.txt"), root.join("victim.txt")).expect("symlink");
    std::fs::create_dir_all(root.join("out")).expect("out");
    let out = build_as(&node, &builder, &root, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(outside.join("victim.txt")).expect("victim"), "precious\n");
    let meta = std::fs::symlink_metadata(root.join("victim.txt")).expect("output");
    assert!(meta.is_file(), "the link was replaced by the file");
    assert_eq!(std::fs::read_to_string(root.join("victim.txt")).expect("output"), "built\n");

    // A directory on the way that links outside the project: refused, one line, non-zero.
    std::fs::remove_dir_all(root.join("out")).expect("rm out");
    std::os::unix::fs::symlink(&outside, root.join("out")).expect("symlink");
    let out = build_as(&node, &builder, &root, &["--force"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let want = "output 'out/victim.txt' not written: 'out' is a symbolic link leading outside the project";
    assert!(stderr.lines().any(|l| l.contains(want)), "{stderr}");
    assert_eq!(std::fs::read_to_string(outside.join("victim.txt")).expect("victim"), "precious\n");
    assert_eq!(std::fs::read_dir(&outside).expect("outside").count(), 1, "nothing else was written outside");
}

/// Each package's TMPDIR is its sandbox's `.tmp` (a tmpfs of its own where the node has
/// namespaces): no glob looks there, and a project file named there outright, or an output
/// declared there, would be hidden or lost in the sandbox, so the CLI refuses the build in one
/// line naming the path. `buildnet init` skips it, and says so of a compilation database's
/// source there (the project's to move, not a guess gone wrong).
#[test]
fn a_project_path_in_the_packages_tmpdir_is_skipped_by_globs_and_refused_when_named() {
    let _shared = common::shared();
    let node = TestNode::start();
    let builder = node.key("builder");
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("project");
    std::fs::create_dir_all(root.join(".tmp")).expect("project");
    std::fs::write(root.join("a.txt"), "a\n").expect("input");
    std::fs::write(root.join(".tmp/b.txt"), "b\n").expect("input in .tmp");
    let manifest = |inputs: &str, output: &str| {
        format!("[packages.p]\nshell = \"cat *.txt > {output}\"\ninputs = [{inputs}]\noutputs = [\"{output}\"]\n")
    };
    for (inputs, output, want) in [
        ("\"a.txt\", \".tmp/b.txt\"", "out.log", "'.tmp/b.txt' is under '.tmp'"),
        ("\"a.txt\"", ".tmp/out.log", "'.tmp/out.log' is under '.tmp'"),
    ] {
        std::fs::write(root.join("buildnet.toml"), manifest(inputs, output)).expect("manifest");
        let out = build_as(&node, &builder, &root, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(want) && stderr.contains("TMPDIR"), "{stderr}");
    }
    let (_, history) = node.get("/api/builds");
    assert_eq!(history["builds"].as_array().map(Vec::len), Some(0), "nothing was asked for: {history}");
    // A glob does not look into `.tmp`: the package sees a.txt alone.
    std::fs::write(root.join("buildnet.toml"), manifest("\"**/*.txt\"", "out.log")).expect("manifest");
    let out = build_as(&node, &builder, &root, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(root.join("out.log")).expect("output"), "a\n");

    // `buildnet init`: media found beside a `.tmp` of notes; a compilation database's source
    // in `.tmp` is named as the project's to move.
    let init = |dir: &Path, extra: &[&str]| {
        let mut args = vec!["init", dir.to_str().expect("utf-8 path")];
        args.extend(extra);
        node.cli(&args)
    };
    let media = tmp.path().join("media");
    std::fs::create_dir_all(media.join("img")).expect("img");
    std::fs::create_dir_all(media.join(".tmp")).expect(".tmp");
    std::fs::write(media.join("img/a.pgm"), b"P5\n2 2\n255\n\0\x10\x20\x30").expect("image");
    std::fs::write(media.join(".tmp/notes.txt"), "notes\n").expect("notes");
    let out = init(&media, &["--dry-run"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let c = tmp.path().join("c");
    std::fs::create_dir_all(c.join(".tmp")).expect(".tmp");
    std::fs::write(c.join(".tmp/gen.c"), "int gen(void) { return 1; }\n").expect("source");
    let db = json!([{ "directory": c, "file": ".tmp/gen.c", "arguments": ["cc", "-c", ".tmp/gen.c", "-o", "gen.o"] }]);
    std::fs::write(c.join("compile_commands.json"), db.to_string()).expect("database");
    let out = init(&c, &["--dry-run"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("entry 0: '.tmp/gen.c' is under '.tmp'") && !stderr.contains("report"), "{stderr}");
}
