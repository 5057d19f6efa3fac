//! Pattern packages through the real binary: a 300-file pattern builds across three nodes and
//! rebuilds per file (nothing, one changed file, one added file); a package depending on the
//! pattern waits for every expansion; an expansion never built is estimated from its siblings;
//! the manifest's pattern mistakes are one line naming the table.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;
use std::time::Instant;

use crate::common::{self, TestNode};
use serde_json::Value;

pub fn write(root: &Path, path: &str, text: &str) {
    let p = root.join(path);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, text).expect("write");
}

pub fn build(node: &TestNode, root: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["build", "--project", root.to_str().expect("utf-8 path")];
    args.extend(extra);
    node.cli(&args)
}

/// Builds, expecting success; returns stdout.
pub fn built(node: &TestNode, root: &Path) -> String {
    let out = build(node, root, &[]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "build failed:\n{stdout}\n{stderr}");
    stdout.into_owned()
}

fn last_build(n: &TestNode) -> Value {
    let list = n.cli_json(&["history", "-n", "1"]);
    let id = list["builds"][0]["id"].as_str().expect("id").to_string();
    n.cli_json(&["history", &id])
}

const UPPER: &str = r#"
[packages.upper]
for_each = "in/**/*.txt"
shell = "tr a-z A-Z < {in} > out/{dir}/{stem}.up"
outputs = ["out/{dir}/{stem}.up"]
"#;

#[test]
fn a_300_file_pattern_builds_across_three_nodes_and_rebuilds_per_file() {
    let _serial = common::serial();
    let (a, _b, _c) = common::three_nodes();
    let work = tempfile::tempdir().expect("tempdir");
    let root = work.path().join("upper");
    for i in 0..300 {
        write(&root, &format!("in/d{}/f{i:03}.txt", i % 10), &format!("file {i}\n"));
    }
    write(&root, "buildnet.toml", UPPER);

    let t = Instant::now();
    let text = built(&a, &root);
    eprintln!("300 expansions from scratch on three nodes: {:.1} s", t.elapsed().as_secs_f64());
    assert!(text.contains("300 packages, 300 ran, 0 from cache"), "{text}");
    assert!(text.contains("upper: 300 expansions, 300 ran, 0 from cache"), "grouped: {text}");
    assert_eq!(std::fs::read_to_string(root.join("out/in/d7/f117.up")).expect("output"), "FILE 117\n");
    let status = last_build(&a);
    let packages = status["packages"].as_array().expect("packages");
    let nodes: BTreeSet<&str> = packages.iter().filter_map(|p| p["node"].as_str()).collect();
    assert!(nodes.len() > 1, "expansions are placed one by one, over more than one node: {nodes:?}");
    assert!(packages.iter().any(|p| p["name"] == "upper[in/d3/f003.txt]"), "stable expansion names");
    let auth = crate::pages::session(&a);
    let id = status["id"].as_str().expect("build id");
    let (_, page) = common::http("GET", &format!("{}/builds/{id}", a.url), &[("Cookie", &auth)], None);
    assert!(
        page.contains("data-pattern=\"upper\"") && page.contains("<td>upper</td><td>300</td><td>300</td><td>0</td>"),
        "the build page groups the expansions"
    );

    let t = Instant::now();
    let text = built(&a, &root);
    eprintln!("no-change rebuild of 300 expansions: {:.1} s", t.elapsed().as_secs_f64());
    assert!(text.starts_with("Up to date"), "a no-change rebuild runs nothing: {text}");

    write(&root, "in/d5/f005.txt", "changed\n");
    let text = built(&a, &root);
    assert!(text.contains("1 ran, 299 from cache"), "one changed input runs one expansion: {text}");
    assert_eq!(std::fs::read_to_string(root.join("out/in/d5/f005.up")).expect("output"), "CHANGED\n");

    write(&root, "in/d0/new.txt", "new\n");
    let text = built(&a, &root);
    assert!(text.contains("301 packages, 1 ran, 300 from cache"), "one added file runs one new expansion: {text}");
    let status = last_build(&a);
    let new = status["packages"].as_array().expect("packages").iter().find(|p| p["name"] == "upper[in/d0/new.txt]");
    assert_eq!(new.map(|p| p["state"].clone()), Some(Value::from("succeeded")), "{status}");

    std::fs::remove_file(root.join("in/d0/new.txt")).expect("remove");
    let text = built(&a, &root);
    assert!(text.contains("300 packages, 0 ran, 300 from cache"), "a deleted file leaves the plan: {text}");
}

#[test]
fn a_dependent_waits_for_every_expansion_and_new_expansions_are_estimated_from_siblings() {
    let _shared = common::shared();
    let node = TestNode::start();
    let work = tempfile::tempdir().expect("tempdir");
    let root = work.path().join("slow");
    for name in ["a", "b", "c", "d"] {
        write(&root, &format!("in/{name}.txt"), name);
    }
    write(
        &root,
        "buildnet.toml",
        r#"
[packages.copy]
for_each = "in/*.txt"
shell = "sleep 0.3 && cp {in} out/{name}"
outputs = ["out/{name}"]

[packages.index]
deps = ["copy"]
shell = "ls out > index.txt"
outputs = ["index.txt"]
"#,
    );
    let text = built(&node, &root);
    assert!(text.contains("copy: 4 expansions, 4 ran, 0 from cache"), "{text}");
    assert_eq!(std::fs::read_to_string(root.join("index.txt")).expect("index"), "a.txt\nb.txt\nc.txt\nd.txt\n");
    let status = last_build(&node);
    let packages = status["packages"].as_array().expect("packages");
    let index_start = packages.iter().find(|p| p["name"] == "index").and_then(|p| p["started_at_ms"].as_u64());
    let copies_end = packages
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("copy[")))
        .map(|p| p["started_at_ms"].as_u64().unwrap_or(u64::MAX) + p["duration_ms"].as_u64().unwrap_or(0))
        .max();
    assert!(index_start >= copies_end, "index started after every copy: {index_start:?} vs {copies_end:?}");
    let history = node.cli(&["history", status["id"].as_str().expect("id")]);
    assert!(String::from_utf8_lossy(&history.stdout).contains("copy: 4 expansions, 4 ran"), "history groups them");

    write(&root, "in/e.txt", "e");
    let estimate = node.cli_json(&["build", "--project", root.to_str().expect("path"), "--estimate"]);
    let by_name = |n: &str| {
        estimate["package_estimates"].as_array().expect("estimates").iter().find(|p| p["package"] == n).cloned()
    };
    let fresh = by_name("copy[in/e.txt]").expect("the new expansion is estimated");
    for s in ["a", "b", "c", "d"] {
        let sibling = by_name(&format!("copy[in/{s}.txt]")).expect("a sibling is estimated");
        assert_eq!(sibling["samples"], 1, "from its own run: {sibling}");
    }
    assert_eq!(fresh["samples"], 1, "estimated from the siblings' median run: {fresh}");
    let ms = fresh["duration_ms"].as_u64().expect("ms");
    assert!((300..3000).contains(&ms), "about a sibling's 0.3 s, not the input-size prior: {fresh}");
    eprintln!("new expansion estimated at {ms} ms from its siblings");
}

#[test]
fn pattern_mistakes_are_one_line_naming_the_table() {
    let _shared = common::shared();
    let node = TestNode::start();
    let work = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "for_each = \"img/*.png\"\ncommand = [\"cp\", \"{in}\", \"out/{name}\"]",
            "packages.thumbs.for_each: 'img/*.png' matches no file",
        ),
        (
            "for_each = \"img/**/*.jpg\"\ncommand = [\"cp\", \"{in}\", \"out/{stme}\"]",
            "packages.thumbs.command[2]: unknown placeholder '{stme}'",
        ),
        (
            "for_each = \"img/**/*.jpg\"\ncommand = [\"cp\", \"{in}\", \"out/{name}\"]\noutputs = [\"out/{name}\"]",
            "packages.thumbs.outputs: 'out/a.jpg' would be written by both 'img/a.jpg' and 'img/sub/a.jpg'",
        ),
    ];
    for (i, (table, want)) in cases.iter().enumerate() {
        let root = work.path().join(format!("p{i}"));
        write(&root, "img/a.jpg", "a");
        write(&root, "img/sub/a.jpg", "b");
        write(&root, "buildnet.toml", &format!("[packages.thumbs]\n{table}\n"));
        let out = build(&node, &root, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{table}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(want), "got {stderr}, want {want}");
    }
}

/// Runs `buildnet init` with `args`; returns (success, stdout, stderr).
fn init(node: &TestNode, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["init"];
    all.extend(args);
    let out = node.cli(&all);
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn init_turns_a_compilation_database_into_a_build_whose_program_runs() {
    let _shared = common::shared();
    let node = TestNode::start();
    let work = tempfile::tempdir().expect("tempdir");
    let root = work.path().join("c-compdb");
    std::fs::create_dir_all(&root).expect("mkdir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/c-compdb/generate.sh");
    let gen = std::process::Command::new(script).arg(&root).output().expect("generate");
    assert!(gen.status.success(), "{}", String::from_utf8_lossy(&gen.stderr));
    let dir = root.to_str().expect("path");

    let (ok, manifest, notes) = init(&node, &[dir, "--dry-run"]);
    assert!(ok, "{notes}");
    assert!(!root.join("buildnet.toml").exists(), "--dry-run writes nothing");
    assert_eq!(manifest.matches("[packages.").count(), 30, "29 translation units and a link: {manifest}");
    assert!(manifest.contains("inputs = [\"src/mod7.c\", \"include/*.h\"]"), "{manifest}");
    assert!(notes.contains("29 translation units") && notes.contains("a link package"), "{notes}");

    let (ok, said, err) = init(&node, &[dir]);
    assert!(ok && said.starts_with("wrote "), "{said}{err}");
    let (ok, _, err) = init(&node, &[dir]);
    assert!(!ok && err.trim().lines().count() == 1 && err.contains("--force"), "never overwritten: {err}");
    assert!(init(&node, &[dir, "--force"]).0);

    let t = Instant::now();
    let text = built(&node, &root);
    eprintln!("c-compdb (29 compiles and a link) built in {:.1} s", t.elapsed().as_secs_f64());
    assert!(text.contains("30 packages, 30 ran"), "{text}");
    let run = std::process::Command::new(root.join("c-compdb")).output().expect("the program runs");
    assert!(run.status.success());
    assert_eq!(String::from_utf8_lossy(&run.stdout), "total 406\n");
}

#[test]
fn the_media_example_builds_per_picture_and_init_guesses_a_pattern() {
    let _shared = common::shared();
    let node = TestNode::start();
    let work = tempfile::tempdir().expect("tempdir");
    let root = common::copy_example("media-thumbs", work.path());
    let text = built(&node, &root);
    assert!(text.contains("thumbs: 5 expansions, 5 ran"), "{text}");
    let gallery = std::fs::read_to_string(root.join("gallery.txt")).expect("gallery");
    assert_eq!(gallery.lines().count(), 5, "{gallery}");
    assert!(std::fs::read_to_string(root.join("thumbs/images/more/pic2.pgm")).expect("thumb").starts_with("P2\n8 8\n"));

    let gen = std::process::Command::new("python3").arg(root.join("generate.py")).arg(&root).arg("6").output();
    assert!(gen.expect("python3").status.success());
    let text = built(&node, &root);
    assert!(text.contains("thumbs: 6 expansions, 1 ran, 5 from cache"), "one new picture: {text}");

    // init on the pictures alone: a pattern package with a tool on PATH, or a one-line refusal.
    let bare = work.path().join("bare");
    std::fs::create_dir_all(bare.join("images")).expect("mkdir");
    std::fs::copy(root.join("images/pic0.pgm"), bare.join("images/pic0.pgm")).expect("copy");
    let (ok, manifest, notes) = init(&node, &[bare.to_str().expect("path"), "--dry-run"]);
    if ok {
        assert!(manifest.contains("for_each = \"images/**/*.pgm\""), "{manifest}");
    } else {
        assert!(notes.trim().lines().count() == 1 && notes.contains("no tool"), "{notes}");
    }

    // The ImageMagick variant, where the machine has the real thing.
    let magick = std::process::Command::new("magick").arg("-version").output();
    if magick.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("ImageMagick")) {
        std::fs::copy(root.join("imagemagick.toml"), root.join("buildnet.toml")).expect("variant");
        let text = built(&node, &root);
        assert!(text.contains("thumbs: 6 expansions, 6 ran"), "{text}");
    } else {
        eprintln!("no ImageMagick `magick` here: its variant is not built");
    }
}

/// A node that takes the connection and never answers does not hold `init` up: it asks about the
/// pool's tools for at most 3 s, then says it looked on this machine's PATH only.
#[test]
fn init_does_not_wait_long_for_a_node_that_never_answers() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = format!("http://{}", silent.local_addr().expect("address"));
    let work = tempfile::tempdir().expect("tempdir");
    let root = work.path().join("sounds");
    std::fs::create_dir_all(&root).expect("mkdir");
    std::fs::write(root.join("a.wav"), "RIFF").expect("clip");
    let empty = work.path().join("empty-path");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let started = Instant::now();
    let out = std::process::Command::new(common::BIN)
        .args(["init", root.to_str().expect("path"), "--address", &address, "--token", "any"])
        .env("PATH", &empty)
        .env("BUILDNET_DATA_DIR", work.path().join("no-node"))
        .output()
        .expect("init");
    let took = started.elapsed();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "no ffmpeg anywhere: nothing to write");
    assert!(said.contains("did not answer in 3 s") && said.contains("PATH only"), "{said}");
    assert!(took < std::time::Duration::from_secs(20), "init waited {took:?}");
    drop(silent);
}
