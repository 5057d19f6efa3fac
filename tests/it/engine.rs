//! The engine's seams through the real binary: one executor for local and remote packages (the
//! same ledger entries, the configuration's volume honoured on a peer), cancel reaching a peer's
//! process group, the fork server packages start through (its death, what packages inherit, the
//! launcher's own failures), and node roles as the mesh decides them.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, wait_all_online, wait_until, Start, TestNode};
use serde_json::{json, Value};

/// Pids of processes whose command line contains `marker` (the nodes share this machine).
fn processes_with(marker: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return vec![] };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(marker))
                .unwrap_or(false)
        })
        .collect()
}

fn write_manifest(dir: &Path, text: &str) {
    std::fs::write(dir.join("buildnet.toml"), text).expect("manifest");
}

/// `buildnet build` against `node` in the background.
fn build_in_background(node: &TestNode, project: &Path, extra: &[&str]) -> Child {
    Command::new(common::BIN)
        .args(["build", "--project"])
        .arg(project)
        .args(extra)
        .env("BUILDNET_DATA_DIR", &node.dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn")
}

fn running_build_id(node: &TestNode) -> String {
    wait_until("the build is recorded", Duration::from_secs(20), || {
        let list = node.cli_json(&["history", "-n", "1"]);
        let b = list["builds"].get(0)?;
        (b["status"] == "running").then(|| b["id"].as_str().map(str::to_string)).flatten()
    })
}

/// A configuration whose cores are all on `node_id`.
fn confine_to(admin: &TestNode, name: &str, node_id: &str) {
    let out = admin.cli(&["config", "create", "--name", name, "--node", &format!("{node_id}:1")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn cancelling_a_build_kills_its_package_on_the_peer() {
    let _serial = common::serial();
    let (a, b) = common::two_nodes();
    wait_all_online(&[&a, &b]);
    confine_to(&a, "on-b", &b.node_id());
    let work = tempfile::tempdir().expect("tempdir");
    let marker = format!("4{}.25", std::process::id() % 1000);
    write_manifest(
        work.path(),
        &format!("[packages.slow]\nshell = \"sleep {marker}; echo done > out.txt\"\noutputs = [\"out.txt\"]\n"),
    );
    let mut child = build_in_background(&a, work.path(), &["--config", "on-b"]);
    let id = running_build_id(&a);
    wait_until("the package runs on the peer", Duration::from_secs(20), || {
        (!processes_with(&format!("sleep {marker}")).is_empty()).then_some(())
    });
    let leased_on_b = |n: &TestNode| {
        let (_, s) = n.get("/api/node");
        s["resource_status"].as_array()?.iter().find(|r| r["key"] == "cpu")?["leased"].as_u64()
    };
    assert_eq!(leased_on_b(&b), Some(1), "the peer holds the lease: it runs there");

    let asked = Instant::now();
    let (status, body) = a.post(&format!("/api/build/{id}/cancel"), &json!({}));
    assert!(status < 300, "{status} {body}");
    wait_until("the peer's process is killed", Duration::from_secs(2), || {
        processes_with(&format!("sleep {marker}")).is_empty().then_some(())
    });
    let killed_after = asked.elapsed();
    let ended = wait_until("the build is cancelled", Duration::from_secs(2), || {
        let (_, s) = a.get(&format!("/api/build/{id}"));
        (s["status"] == "cancelled").then_some(s)
    });
    println!("remote cancel: process killed after {killed_after:?}, build cancelled after {:?}", asked.elapsed());
    assert_eq!(ended["packages"][0]["state"], "cancelled", "{ended}");
    wait_until("the peer released its lease", Duration::from_secs(5), || (leased_on_b(&b) == Some(0)).then_some(()));
    let _ = wait_until("the CLI ends", Duration::from_secs(10), || child.try_wait().ok().flatten());
    assert!(!work.path().join("out.txt").exists(), "a cancelled package writes nothing back");
}

#[test]
fn a_configurations_storage_volume_is_used_on_a_peer() {
    let _serial = common::serial();
    let volumes = tempfile::tempdir().expect("tempdir");
    let (fast, config) = common::builds_volume(volumes.path());
    let a = TestNode::start_with(Start::named("alpha"));
    let b = a.join("beta", "builder", Start { config: Some(&config), ..Default::default() });
    wait_all_online(&[&a, &b]);
    let b_id = b.node_id();
    wait_until("beta's volume is advertised", Duration::from_secs(20), || {
        let (_, pool) = a.get("/api/pool");
        pool["volumes"][b_id.as_str()]
            .as_array()?
            .iter()
            .any(|v| v == fast.display().to_string().as_str())
            .then_some(())
    });
    let body = json!({ "name": "fast-on-beta", "resources": {
        "cpu": { "node_allocations": [ { "node_id": b_id, "cores": 1 } ] },
        "storage": { "volumes": [ { "node_id": b_id, "path": fast.display().to_string(), "purpose": "build", "size_gb": 1 } ] } } });
    let (status, created) = a.post("/api/configs", &body);
    assert_eq!(status, 201, "{created}");
    let work = tempfile::tempdir().expect("tempdir");
    write_manifest(work.path(), "[packages.where]\nshell = \"pwd > out/where.txt\"\noutputs = [\"out/where.txt\"]\n");
    let out = a.cli(&["build", "--project", work.path().to_str().expect("path"), "--config", "fast-on-beta"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let wd = std::fs::read_to_string(work.path().join("out/where.txt")).expect("output");
    assert!(common::ran_in_volume(&wd, &fast), "the peer ran it on the selected volume, not in its data dir: {wd}");
}

/// A peer's task waiting for its inputs starts once they are all in the peer's store, however
/// they got there: here most reach beta's store by an upload of their own while beta still has
/// them queued to pull from alpha, so beta finds them stored when their turn comes (found by a
/// reviewer: such a blob was dropped from the queue without being struck off what the task
/// lacked, and the task waited for ever).
#[test]
fn a_peers_task_starts_when_its_inputs_reach_its_store_by_another_way() {
    let _serial = common::serial();
    let (a, b) = common::two_nodes();
    let beta = b.node_id();
    let created = a.cli(&["config", "create", "--name", "on-beta", "--node", &format!("{beta}:1")]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let work = tempfile::tempdir().expect("tempdir");
    write_manifest(
        work.path(),
        "[packages.sum]\nshell = \"cat in/*.txt | wc -c > out/n.txt\"\ninputs = [\"in/*.txt\"]\noutputs = [\"out/n.txt\"]\n",
    );
    // More inputs than beta pulls at once (`transfer::MAX_INCOMING`, 8), each large enough that
    // the rest are still queued when the uploads below land.
    let inputs: Vec<String> = (0..24).map(|i| format!("{i:02}").repeat(2 << 20)).collect();
    std::fs::create_dir_all(work.path().join("in")).expect("in");
    for (i, text) in inputs.iter().enumerate() {
        std::fs::write(work.path().join(format!("in/f{i:02}.txt")), text).expect("input");
    }
    let digests: Vec<String> = inputs.iter().map(|t| blake3::hash(t.as_bytes()).to_hex().to_string()).collect();
    let project = work.path().to_str().expect("a UTF-8 path");
    let mut cli = a.spawn_cli(&["build", "--config", "on-beta", "--project", project]);
    let missing_on_beta = || {
        let (_, missing) = b.post("/api/blobs/missing", &json!({ "digests": digests }));
        missing["missing"].as_array().map(Vec::len).unwrap_or(digests.len())
    };
    // Beta has begun pulling: the task is waiting, the rest of its inputs queued.
    wait_until("beta to pull its first input", Duration::from_secs(60), || (missing_on_beta() < 24).then_some(()));
    let auth = format!("Bearer {}", b.admin_key);
    // Beta pulls in digest order: the last it will pull go up first, while surely still queued.
    let mut uploads: Vec<(&String, &String)> = inputs.iter().zip(&digests).collect();
    uploads.sort_by(|x, y| y.1.cmp(x.1));
    for (text, digest) in uploads {
        let (status, body) = common::http(
            "PUT",
            &format!("{}/api/blobs/{digest}", b.url),
            &[("Authorization", &auth)],
            Some(text.as_bytes()),
        );
        assert!([200, 201, 204].contains(&status), "{status} {body}");
    }
    let exit = wait_until("the build to end", Duration::from_secs(60), || cli.try_wait().ok().flatten());
    let mut stderr = String::new();
    std::io::Read::read_to_string(cli.stderr.as_mut().expect("stderr"), &mut stderr).expect("stderr");
    assert!(exit.success(), "{stderr}");
    let n = std::fs::read_to_string(work.path().join("out/n.txt")).expect("output");
    assert_eq!(n.trim(), ((24 * 4) << 20).to_string(), "every input, whole");
}

/// The `ResourceAllocated` and `ResourceReleased` entries one node recorded for a build.
fn allocation_entries(node: &TestNode, build_id: &str) -> Vec<Value> {
    let (_, ledger) = node.get("/api/ledger?types=ResourceAllocated,ResourceReleased&limit=500");
    ledger["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["data"]["build_id"] == build_id && e["origin"] == node.node_id().as_str())
        .cloned()
        .collect()
}

fn keys_by_type(entries: &[Value]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = entries
        .iter()
        .map(|e| {
            let mut keys: Vec<String> = e["data"].as_object().expect("data").keys().cloned().collect();
            keys.sort();
            (e["entry_type"].as_str().or(e["type"].as_str()).unwrap_or_default().to_string(), keys)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn local_and_remote_runs_record_the_same_ledger_entries() {
    let _serial = common::serial();
    let (a, b) = common::two_nodes();
    wait_all_online(&[&a, &b]);
    confine_to(&a, "on-a", &a.node_id());
    confine_to(&a, "on-b", &b.node_id());
    let work = tempfile::tempdir().expect("tempdir");
    write_manifest(work.path(), "[packages.one]\nshell = \"echo one > one.txt\"\noutputs = [\"one.txt\"]\n");
    let path = work.path().to_str().expect("path");
    let mut recorded = Vec::new();
    for (config, runner) in [("on-a", &a), ("on-b", &b)] {
        let out = a.cli(&["build", "--project", path, "--config", config, "--force"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let id = a.cli_json(&["history", "-n", "1"])["builds"][0]["id"].as_str().expect("id").to_string();
        let entries = wait_until("the runner's entries", Duration::from_secs(10), || {
            let e = allocation_entries(runner, &id);
            (e.len() == 2).then_some(e)
        });
        let allocated = entries.iter().find(|e| e["data"]["cores"] == 1).expect("allocation");
        assert_eq!(allocated["data"]["for_node"], a.node_id().as_str(), "{allocated}");
        assert_eq!(allocated["data"]["package"], "one");
        recorded.push(keys_by_type(&entries));
    }
    assert_eq!(recorded[0], recorded[1], "a local and a remote run leave the same entries");
}

#[test]
fn only_the_coordinator_reports_itself_as_coordinator() {
    let _serial = common::serial();
    let (a, b, c) = common::three_nodes();
    wait_all_online(&[&a, &b, &c]);
    let coordinator = wait_until("one coordinator for all", Duration::from_secs(10), || {
        let views: Vec<String> = [&a, &b, &c]
            .iter()
            .map(|n| n.get("/api/mesh").1["coordinator"].as_str().unwrap_or("").to_string())
            .collect();
        (views.iter().all(|v| *v == views[0]) && !views[0].is_empty()).then(|| views[0].clone())
    });
    for n in [&a, &b, &c] {
        let expected = if n.node_id() == coordinator { "coordinator" } else { "worker" };
        let (_, status) = n.get("/api/node");
        assert_eq!(status["role"], expected, "{}", n.node_id());
        let cli = n.cli(&["node", "status"]);
        let text = String::from_utf8_lossy(&cli.stdout);
        assert!(text.contains(expected), "node status says {expected}: {text}");
        if expected == "worker" {
            assert!(!text.contains("coordinator"), "a worker does not claim to coordinate: {text}");
        }
        let (_, page) = common::http(
            "GET",
            &format!("{}/node", n.url),
            &[("Authorization", &format!("Bearer {}", n.key("admin")))],
            None,
        );
        assert!(page.contains(&format!("role {expected}")), "the node page agrees");
    }
}

/// The detail of the node's latest build, with what its packages printed.
fn latest_build(node: &TestNode) -> Value {
    let id = node.cli_json(&["history", "-n", "1"])["builds"][0]["id"].as_str().expect("id").to_string();
    node.get(&format!("/api/build/{id}")).1
}

/// The parent of a process, from outside any namespace it is in.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// The node's fork server: its child running `sandbox-exec --serve`.
fn launcher_of(node: &TestNode) -> Option<u32> {
    processes_with("sandbox-exec --serve").into_iter().find(|pid| parent_of(*pid) == Some(node.child.id()))
}

#[test]
fn a_contained_package_is_pid_1_of_its_namespace_and_its_launchers_own_child() {
    let _shared = common::shared();
    let node = TestNode::start();
    assert_eq!(node.get("/api/node").1["sandbox"], "landlock+namespaces");
    let work = tempfile::tempdir().expect("tempdir");
    // A sleep of under two seconds that no other test's package matches.
    let marker = format!("1.{:03}7", std::process::id() % 1000);
    write_manifest(
        work.path(),
        &format!("[packages.pid]\nshell = \"echo pid=$$\"\n[packages.slow]\ncommand = [\"sleep\", \"{marker}\"]\n"),
    );
    let mut child = build_in_background(&node, work.path(), &["--local-only"]);
    let sleeping = wait_until("the package runs", Duration::from_secs(20), || {
        processes_with(&format!("sleep {marker}")).first().copied()
    });
    let launcher = launcher_of(&node).expect("the node starts packages through its fork server");
    // The server makes the package in its namespaces with one clone: no launcher waits between.
    assert_eq!(parent_of(sleeping), Some(launcher), "the package is the fork server's own child");
    let ended = wait_until("the build ends", Duration::from_secs(30), || child.try_wait().ok().flatten());
    assert!(ended.success());
    let build = latest_build(&node);
    let packages = build["packages"].as_array().expect("packages");
    let pid = packages.iter().find(|p| p["name"] == "pid").expect("the pid package");
    assert_eq!(pid["output_tail"].as_str().unwrap_or_default().trim(), "pid=1", "{build}");
    let slow = packages.iter().find(|p| p["name"] == "slow").expect("the slow package");
    assert_eq!(slow["exit_code"], 0, "{build}");
}

#[test]
fn a_killed_launcher_fails_its_packages_and_the_next_build_starts_a_fresh_one() {
    let _shared = common::shared();
    let node = TestNode::start();
    assert_eq!(node.get("/api/node").1["sandbox"], "landlock+namespaces", "packages go through the launcher");
    let work = tempfile::tempdir().expect("tempdir");
    let marker = format!("5{}.75", std::process::id() % 1000);
    write_manifest(work.path(), &format!("[packages.slow]\nshell = \"sleep {marker}; echo done > out.txt\"\n"));
    let mut child = build_in_background(&node, work.path(), &["--local-only"]);
    let id = running_build_id(&node);
    wait_until("the package runs", Duration::from_secs(20), || {
        (!processes_with(&format!("sleep {marker}")).is_empty()).then_some(())
    });
    let launcher = launcher_of(&node).expect("the node starts packages through its fork server");
    // SAFETY: kill(2) on a pid this test found; no memory is involved.
    assert_eq!(unsafe { libc::kill(launcher as i32, libc::SIGKILL) }, 0);

    let ended = wait_until("the build fails", Duration::from_secs(10), || {
        let (_, s) = node.get(&format!("/api/build/{id}"));
        (s["status"] == "failed").then_some(s)
    });
    let error = ended["packages"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("launcher") && error.contains(&format!("pid {launcher}")), "names the launcher: {ended}");
    wait_until("the package went with its launcher", Duration::from_secs(5), || {
        processes_with(&format!("sleep {marker}")).is_empty().then_some(())
    });
    let cli = wait_until("the CLI ends", Duration::from_secs(10), || child.try_wait().ok().flatten());
    assert!(!cli.success());

    write_manifest(work.path(), "[packages.again]\nshell = \"echo again > again.txt\"\noutputs = [\"again.txt\"]\n");
    let out = node.cli(&["build", "--project", work.path().to_str().expect("path")]);
    assert!(out.status.success(), "the node still builds: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(work.path().join("again.txt")).expect("output"), "again\n");
    let fresh = launcher_of(&node).expect("a fresh launcher");
    assert_ne!(fresh, launcher);
}

#[test]
fn a_package_inherits_no_descriptor_of_the_node_or_its_launcher() {
    let _shared = common::shared();
    let node = TestNode::start();
    let work = tempfile::tempdir().expect("tempdir");
    // Several packages at once (distinct, so none is a cache hit of another), so other
    // packages' pipes are open in the daemon meanwhile.
    let manifest: String = (0..4)
        .map(|i| format!("[packages.fds{i}]\ncommand = [\"ls\", \"-l\", \"/proc/self/fd\"]\nenv = {{ N = \"{i}\" }}\n"))
        .collect();
    write_manifest(work.path(), &manifest);
    let out = node.cli(&["build", "--project", work.path().to_str().expect("path")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let build = latest_build(&node);
    let packages = build["packages"].as_array().expect("packages");
    assert_eq!(packages.len(), 4, "{build}");
    for package in packages {
        let listing = package["output_tail"].as_str().unwrap_or_default();
        let open: Vec<(u32, &str)> = listing
            .lines()
            .filter_map(|l| l.split_once(" -> "))
            .filter_map(|(left, target)| Some((left.rsplit(' ').next()?.parse().ok()?, target)))
            .collect();
        assert_eq!(open.iter().map(|(fd, _)| *fd).take(3).collect::<Vec<_>>(), [0, 1, 2], "{listing}");
        for (fd, target) in &open {
            let expected = match fd {
                0 => *target == "/dev/null",
                1 | 2 => target.starts_with("pipe:"),
                // `ls` reading the directory.
                _ => target.ends_with("/fd"),
            };
            assert!(expected, "fd {fd} -> {target} reached the package:\n{listing}");
        }
    }
}

#[test]
fn a_package_its_launcher_cannot_start_fails_with_the_launchers_reason() {
    let _shared = common::shared();
    let node = TestNode::start();
    let work = tempfile::tempdir().expect("tempdir");
    write_manifest(work.path(), "[packages.missing]\ncommand = [\"no-such-tool-4711\"]\n");
    let out = node.cli(&["build", "--project", work.path().to_str().expect("path")]);
    assert!(!out.status.success());
    let build = latest_build(&node);
    let package = &build["packages"][0];
    assert_eq!(package["exit_code"], 126, "{build}");
    // What the one-shot launcher says for the same package, word for word.
    let sandbox = tempfile::tempdir().expect("tempdir");
    let one_shot = Command::new(common::BIN)
        .args(["sandbox-exec", "--level", "landlock+namespaces", "--dir"])
        .arg(sandbox.path())
        .args(["--", "no-such-tool-4711"])
        .output()
        .expect("run the one-shot launcher");
    assert_eq!(one_shot.status.code(), Some(126));
    let said = String::from_utf8_lossy(&one_shot.stderr);
    assert!(said.starts_with("buildnet sandbox-exec: could not start no-such-tool-4711"), "{said}");
    assert_eq!(package["output_tail"].as_str().unwrap_or_default().trim(), said.trim(), "{build}");
}

#[test]
fn at_level_landlock_the_launcher_reports_status_output_and_kills_what_the_package_left() {
    let _shared = common::shared();
    let node =
        TestNode::start_with(Start { config: Some(r#"{"sandbox": {"level": "landlock"}}"#), ..Default::default() });
    assert_eq!(node.get("/api/node").1["sandbox"], "landlock");
    let work = tempfile::tempdir().expect("tempdir");
    let marker = format!("6{}.25", std::process::id() % 1000);
    write_manifest(
        work.path(),
        &format!("[packages.left]\nshell = \"sleep {marker} & echo said-this; echo and-this >&2; exit 3\"\n"),
    );
    let out = node.cli(&["build", "--project", work.path().to_str().expect("path")]);
    assert!(!out.status.success());
    let build = latest_build(&node);
    let package = &build["packages"][0];
    assert_eq!(package["exit_code"], 3, "{build}");
    let tail = package["output_tail"].as_str().unwrap_or_default();
    assert!(tail.contains("said-this") && tail.contains("and-this"), "{build}");
    assert!(launcher_of(&node).is_some(), "contained packages start through the fork server");
    wait_until("what the package left in its group is killed", Duration::from_secs(5), || {
        processes_with(&format!("sleep {marker}")).is_empty().then_some(())
    });
}
