//! Node names wherever node ids are taken (one resolver in the engine: a unique name or an id;
//! a name two nodes share refused with the ids), progress and failure lines that name the node,
//! history with names, and the interactive `config create` driven through a pseudo-terminal.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{self, Start, TestNode, BIN};

fn text(out: &std::process::Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A project of two packages: one that takes a moment, one that fails (loudly or silently).
fn project(dir: &Path, fail: &str) -> std::path::PathBuf {
    let root = dir.join("p");
    std::fs::create_dir_all(&root).expect("mkdir");
    let manifest = format!(
        r#"[packages.slow]
command = ["sleep", "1"]

[packages.fail]
shell = "{fail}"
deps = ["slow"]
"#
    );
    std::fs::write(root.join("buildnet.toml"), manifest).expect("manifest");
    root
}

#[test]
fn names_work_wherever_ids_do_and_shared_names_are_refused() {
    let _serial = common::serial();
    // Two nodes named alpha (ambiguous) and one beta (unique, a peer of the first). A join under
    // a name a member carries is refused, so the twin is admitted as "twin" and restarted as
    // "alpha": a node renamed by a restart is how two members come to share a name.
    let a = TestNode::start_with(Start::named("alpha"));
    let b = a.join("beta", "builder", Start::default());
    let admitted = a.join("twin", "builder", Start::default());
    let twin_dir = admitted.dir.clone();
    let (_, _keep) = admitted.stop();
    let twin = TestNode::start_with(Start { dir: Some(twin_dir), ..Start::named("alpha") });
    common::wait_all_online(&[&a, &b, &twin]);
    let (beta, alpha1, alpha2) = (b.node_id(), a.node_id(), twin.node_id());

    // config create --node NAME:CORES stores the id.
    let out = a.cli(&["config", "create", "--name", "on-beta", "--node", "beta:1"]);
    assert!(out.status.success(), "{}", text(&out).1);
    let (_, cfg) = a.get("/api/configs/on-beta");
    assert_eq!(cfg["resources"]["cpu"]["node_allocations"][0]["node_id"], beta.as_str(), "{cfg}");

    // An ambiguous name: one line, exit 1, both ids named; nothing saved.
    let out = a.cli(&["config", "create", "--name", "twin", "--node", "alpha:1"]);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(&alpha1) && err.contains(&alpha2) && err.contains("node_allocations[0].node_id"), "{err}");
    assert_eq!(a.get("/api/configs/twin").0, 404);
    // An unknown name says so.
    let out = a.cli(&["config", "create", "--name", "ghost", "--node", "nobody:1"]);
    assert!(text(&out).1.contains("no node named or with id 'nobody'"), "{}", text(&out).1);
    // The API takes names the same way (the page form goes through the same create).
    let (status, body) = a.post(
        "/api/configs",
        &json!({"name": "api-beta", "resources": {"cpu": {"node_allocations": [{"node_id": "beta", "cores": 1}]}}}),
    );
    assert_eq!(status, 201, "{body}");
    let (_, cfg) = a.get("/api/configs/api-beta");
    assert_eq!(cfg["resources"]["cpu"]["node_allocations"][0]["node_id"], beta.as_str());

    // /api/pool/resources?node=NAME; an ambiguous one is 400 naming the parameter and the ids.
    let (status, body) = a.get("/api/pool/resources?node=beta&type=cpu");
    assert_eq!(status, 200, "{body}");
    let list = body["resources"].as_array().cloned().unwrap_or_default();
    assert!(!list.is_empty() && list.iter().all(|r| r["node_id"] == beta.as_str()), "{body}");
    let (status, body) = a.get("/api/pool/resources?node=alpha");
    assert_eq!(status, 400, "{body}");
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.starts_with("node:") && msg.contains(&alpha1) && msg.contains(&alpha2), "{body}");
    // `pool resources --node` is not a flag, but the ledger filter takes names too.
    // beta's own entries reach a by the ledger's sync (committed in beta's next group, pushed at
    // its next tick): wait for the first rather than assume it crossed already.
    let body = common::wait_until("beta's entries on a", Duration::from_secs(10), || {
        let (status, body) = a.get("/api/ledger?origin_node=beta&limit=5");
        assert_eq!(status, 200, "{body}");
        body["entries"].as_array().is_some_and(|e| !e.is_empty()).then_some(body)
    });
    let entries = body["entries"].as_array().cloned().unwrap_or_default();
    assert!(entries.iter().all(|e| e["origin_node"] == beta.as_str()), "{body}");

    // test network by name (CLI) and by plan §13.1's `target` (API); ambiguous refused.
    let out = a.cli(&["test", "network", "beta", "--size-mb", "1", "--samples", "3"]);
    assert!(out.status.success(), "{}", text(&out).1);
    let (status, body) = a.post("/api/test/network", &json!({"target": "beta", "size_mb": 1, "samples": 3}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["target_node"], beta.as_str(), "{body}");
    let (status, body) = a.post("/api/test/network", &json!({"target": "alpha", "size_mb": 1, "samples": 3}));
    assert_eq!(status, 400, "{body}");

    // A build confined to beta: the progress line names beta while the slow package runs, and
    // the failure shows the failing package's output under a header naming its node.
    let tmp = tempfile::tempdir().expect("tempdir");
    // Its output came from another machine: an escape sequence in it is shown, not obeyed.
    let root = project(tmp.path(), "printf '\\\\033[2J\\\\033[31m\\\\342\\\\200\\\\256' >&2; echo boom >&2; exit 3");
    let out = a.cli(&["build", "--project", root.to_str().expect("path"), "--config", "on-beta"]);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.lines().any(|l| l == "slow on beta"), "the progress line names the node: {err}");
    assert!(
        err.contains(
            "--- fail on beta, exit code 3 (last lines of its output) ---\n\\u{1b}[2J\\u{1b}[31m\\u{202e}boom\n"
        ),
        "{err}"
    );
    assert!(
        !err.contains('\u{1b}') && !err.contains('\u{202e}'),
        "no raw escape or bidi override reached the terminal: {err:?}"
    );

    // A package that fails without a word says so instead of an empty header.
    let quiet = project(&tmp.path().join("q"), "exit 4");
    let out = a.cli(&["build", "--project", quiet.to_str().expect("path"), "--config", "on-beta"]);
    let (_, err) = text(&out);
    assert!(err.contains("--- fail on beta failed, exit code 4 and printed nothing"), "{err}");

    // history shows names; -l is the plan's short form of --limit.
    let out = a.cli(&["history", "-l", "1"]);
    let (table, err) = text(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(table.lines().count(), 2, "a header and one build: {table}");
    assert!(table.contains("beta") && !table.contains(&beta), "{table}");
    let id = a.get("/api/builds?limit=1").1["builds"][0]["id"].as_str().expect("id").to_string();
    let (detail, _) = text(&a.cli(&["history", &id]));
    assert!(detail.contains("beta") && !detail.contains(&beta), "{detail}");
}

/// The steps of a terminal session: wait for the text, then type the line (None: only wait).
const DRIVER: &str = r#"
import json, os, pty, select, sys, time
binary, data, steps = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
pid, fd = pty.fork()
if pid == 0:
    for k in ("BUILDNET_ADDRESS", "BUILDNET_TOKEN"):
        os.environ.pop(k, None)
    os.environ["BUILDNET_DATA_DIR"] = data
    os.execv(binary, [binary, "config", "create"])
seen = b""
pos = 0
def read(deadline):
    global seen
    r, _, _ = select.select([fd], [], [], max(0.0, deadline - time.time()))
    if not r:
        return False
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        chunk = b""
    if not chunk:
        return None
    seen += chunk
    return True
for want, send in steps:
    deadline = time.time() + 60
    while want.encode() not in seen[pos:]:
        got = read(deadline)
        if not got:
            sys.stdout.write(seen.decode(errors="replace"))
            sys.stdout.write("\n<<did not see %r>>\n" % want)
            sys.exit(90)
    pos = seen.index(want.encode(), pos) + len(want)
    if send is not None:
        os.write(fd, (send + "\n").encode())
deadline = time.time() + 60
while read(deadline):
    pass
_, status = os.waitpid(pid, 0)
sys.stdout.write(seen.decode(errors="replace"))
sys.exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 91)
"#;

#[test]
fn interactive_create_re_asks_after_a_bad_value_and_ends_with_estimate_and_confirmation() {
    let _shared = common::shared();
    let node = TestNode::start_with(Start::named("solo"));
    let id = node.node_id();
    let volumes = node.get("/api/pool").1["volumes"][&id].as_array().map_or(0, Vec::len);
    let storage = if volumes > 0 {
        json!([
            ["Storage for sandboxes", "99"],
            ["'99' is not one of the numbers above — try again", null],
            ["Storage for sandboxes", "1"]
        ])
    } else {
        json!([["no node has a storage volume configured", null]])
    };
    let mut steps = json!([
        ["solo (", null],
        ["Start from a template", "no-such-template"],
        ["no template 'no-such-template' — try again", null],
        ["Start from a template", ""],
        ["Name", "pty-made"],
        ["Cores in all", "lots"],
        ["'lots' is not a number of cores — try again", null],
        ["Cores in all", "1"],
        ["Memory in GB", "-1"],
        ["memory must be 0 or more — try again", null],
        ["Memory in GB", "0"],
        ["Nodes (name[:cores]", "nobody:1"],
        ["no node named or with id 'nobody' in the pool — try again", null],
        ["Nodes (name[:cores]", "solo:1"]
    ]);
    let rest = json!([
        ["Tools", "no-such-tool"],
        ["no node has the tool 'no-such-tool'", null],
        ["Tools", ""],
        ["Runtimes", ""],
        ["stimate", null],
        ["Create configuration 'pty-made'? [Y/n]", "y"],
        ["Created configuration 'pty-made'", null]
    ]);
    if let (Some(all), Some(storage), Some(rest)) = (steps.as_array_mut(), storage.as_array(), rest.as_array()) {
        all.extend(storage.iter().cloned());
        all.extend(rest.iter().cloned());
    }
    let out = Command::new("python3")
        .args(["-c", DRIVER, BIN])
        .arg(&node.dir)
        .arg(steps.to_string())
        .output()
        .expect("python3 with pty");
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{transcript}\n{}", String::from_utf8_lossy(&out.stderr));
    // What each node offers was shown before the questions.
    assert!(transcript.contains("cores free") && transcript.contains("tools:"), "{transcript}");
    let (status, cfg) = node.get("/api/configs/pty-made");
    assert_eq!(status, 200, "{cfg}");
    assert_eq!(cfg["resources"]["cpu"]["cores"], 1);
    assert_eq!(cfg["resources"]["cpu"]["node_allocations"][0]["node_id"], Value::from(id.as_str()), "{cfg}");
}
