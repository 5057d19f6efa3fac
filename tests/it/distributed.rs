//! Builds across three real nodes: packages spread over the mesh, a package needing a tool only
//! one node has runs there, and killing a worker mid-build still ends in success.

use std::path::Path;
use std::time::Duration;

use crate::common::{self, copy_example, fake_tool, wait_all_online, wait_until, Start, TestNode};
use serde_json::Value;

fn mesh_of_three(tools: &Path) -> (TestNode, TestNode, TestNode) {
    // alpha offers one core, so work spills over to the others.
    let a = TestNode::start_with(Start {
        config: Some(r#"{"resource_limits": {"cpu": {"max_cores": 1}}}"#),
        ..Start::named("alpha")
    });
    let b = a.join("beta", "builder", Start::default());
    let c = a.join("gamma", "builder", Start { path_prefix: Some(tools), ..Default::default() });
    wait_all_online(&[&a, &b, &c]);
    for n in [&a, &b, &c] {
        wait_until("every node's cores advertised", Duration::from_secs(20), || {
            n.pool_nodes().iter().all(|x| x["cores"].as_u64().unwrap_or(0) > 0).then_some(())
        });
    }
    (a, b, c)
}

fn fake_ffmpeg(dir: &Path) {
    fake_tool(dir, "ffmpeg", "#!/bin/sh\nfor a in \"$@\"; do case \"$a\" in -version) echo 'ffmpeg version 6.1.1'; exit 0;; -encoders) exit 0;; esac; done\nfor last in \"$@\"; do :; done\necho tone > \"$last\"\n");
}

fn last_build(n: &TestNode) -> Value {
    let list = n.cli_json(&["history", "-n", "1"]);
    let id = list["builds"][0]["id"].as_str().expect("id").to_string();
    n.cli_json(&["history", &id])
}

#[test]
fn packages_spread_over_the_mesh_and_tools_decide_where_they_run() {
    let _serial = common::serial();
    let tools = tempfile::tempdir().expect("tempdir");
    fake_ffmpeg(tools.path());
    let (a, _b, c) = mesh_of_three(tools.path());
    let work = tempfile::tempdir().expect("tempdir");

    let root = copy_example("c-hello", work.path());
    let out = a.cli(&["build", "--project", root.to_str().expect("path")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = std::process::Command::new(root.join("app")).arg("--check").output().expect("runs");
    assert!(run.status.success());
    let build = last_build(&a);
    let nodes: std::collections::BTreeSet<String> = build["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter_map(|p| p["node"].as_str().map(str::to_string))
        .collect();
    assert!(nodes.len() > 1, "packages ran on more than one node: {build}");

    // Unchanged: nothing runs anywhere.
    let again = a.cli(&["build", "--project", root.to_str().expect("path")]);
    assert!(String::from_utf8_lossy(&again.stdout).starts_with("Up to date"));
    let asked = a.cli(&["build", "--project", root.to_str().expect("path"), "--ask-node"]);
    assert!(String::from_utf8_lossy(&asked.stdout).contains("0 ran, 4 from cache"));

    // A configuration that allocates cores only on gamma: every package runs there.
    let gamma = c.node_id();
    let created = a.cli(&["config", "create", "--name", "on-gamma", "--node", &format!("{gamma}:2")]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let out = a.cli(&["build", "--project", root.to_str().expect("path"), "--config", "on-gamma", "--force"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let build = last_build(&a);
    assert!(
        build["packages"].as_array().expect("packages").iter().all(|p| p["node"] == gamma.as_str()),
        "per-node allocations are honoured: {build}"
    );

    let tone = copy_example("media-tone", work.path());
    let out = a.cli(&["build", "--project", tone.to_str().expect("path")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let build = last_build(&a);
    let c_id = c.node_id();
    let tone_pkg =
        build["packages"].as_array().expect("packages").iter().find(|p| p["name"] == "tone").expect("tone").clone();
    assert_eq!(tone_pkg["node"], c_id.as_str(), "the only node with ffmpeg ran it");
    assert_eq!(std::fs::read_to_string(tone.join("out/tone.wav")).expect("output").trim(), "tone");
}

#[test]
fn a_worker_killed_mid_build_has_its_package_retried_elsewhere() {
    let _serial = common::serial();
    let tools = tempfile::tempdir().expect("tempdir");
    let (a, b, c) = mesh_of_three(tools.path());
    let b_id = b.node_id();
    let work = tempfile::tempdir().expect("tempdir");
    let mut manifest = String::new();
    for i in 0..4 {
        manifest.push_str(&format!(
            "[packages.slow{i}]\nshell = \"sleep 2 && echo {i} > out/{i}.txt\"\noutputs = [\"out/{i}.txt\"]\n"
        ));
    }
    std::fs::write(work.path().join("buildnet.toml"), manifest).expect("manifest");
    let mut child = std::process::Command::new(common::BIN)
        .args(["build", "--project"])
        .arg(work.path())
        .env("BUILDNET_DATA_DIR", &a.dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // Kill beta as soon as it is running one of the packages.
    wait_until("beta runs a package", Duration::from_secs(20), || {
        let (_, n) = b.get("/api/node");
        let cpu = n["resource_status"].as_array()?.iter().find(|r| r["key"] == "cpu")?.clone();
        (cpu["leased"].as_u64()? > 0).then_some(())
    });
    b.signal(libc::SIGKILL);
    let status = wait_until("the build to end", Duration::from_secs(60), || child.try_wait().ok().flatten());
    let out = child.wait_with_output().expect("output");
    assert!(status.success(), "the build still succeeds: {}", String::from_utf8_lossy(&out.stderr));
    for i in 0..4 {
        assert_eq!(
            std::fs::read_to_string(work.path().join(format!("out/{i}.txt"))).expect("output").trim(),
            i.to_string()
        );
    }
    let build = last_build(&a);
    assert!(
        build["packages"].as_array().expect("packages").iter().all(|p| p["node"] != b_id.as_str()),
        "nothing is credited to the dead node: {build}"
    );
    drop(c);
}

/// `buildnet init` on a machine without the tool its media need writes the package anyway when
/// a node of the pool has it (here only gamma has `ffmpeg`), says where, and the build it wrote
/// runs there. With no node to ask it says it looked on this machine's PATH only.
#[test]
fn init_finds_a_tool_the_pool_has_and_this_machine_lacks() {
    let _serial = common::serial();
    let tools = tempfile::tempdir().expect("tempdir");
    fake_ffmpeg(tools.path());
    let (a, _b, c) = mesh_of_three(tools.path());
    let work = tempfile::tempdir().expect("tempdir");
    let root = work.path().join("sounds");
    std::fs::create_dir_all(root.join("clips")).expect("mkdir");
    for name in ["a.wav", "b.wav"] {
        std::fs::write(root.join("clips").join(name), "RIFF").expect("clip");
    }
    // A PATH with no ffmpeg on it, whatever this machine has.
    let empty = work.path().join("empty-path");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let init = |data_dir: &Path| {
        std::process::Command::new(common::BIN)
            .args(["init", root.to_str().expect("path")])
            .env("BUILDNET_DATA_DIR", data_dir)
            .env("PATH", &empty)
            .env_remove("BUILDNET_ADDRESS")
            .env_remove("BUILDNET_TOKEN")
            .output()
            .expect("init")
    };
    let nowhere = init(work.path());
    assert!(!nowhere.status.success(), "no node to ask, no ffmpeg here: nothing to write");
    let said = String::from_utf8_lossy(&nowhere.stderr);
    assert!(said.contains("on PATH or in the pool") && said.contains("PATH only"), "{said}");

    let out = init(&a.dir);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("the pool has it on gamma"), "{said}");
    let built = a.cli(&["build", "--project", root.to_str().expect("path")]);
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    assert_eq!(std::fs::read_to_string(root.join("audio/clips/a.wav")).expect("output"), "tone\n");
    let build = last_build(&a);
    let gamma = c.node_id();
    assert!(
        build["packages"].as_array().expect("packages").iter().all(|p| p["node"] == gamma.as_str()),
        "every expansion ran on gamma, the one node with ffmpeg: {build}"
    );
}
