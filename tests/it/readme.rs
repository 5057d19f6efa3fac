//! The README runs as written: every ```sh block of README.md is run, in order, by bash
//! (`set -eo pipefail`) against a fresh three-node mesh, and the test fails naming each block
//! that failed, with its output.
//!
//! The environment the blocks see:
//! - nodes `alpha`, `beta` and `gamma` (127.0.0.1, port 0), joined into one mesh; `HOME` is a
//!   temporary directory whose `.buildnet` is alpha's data dir, so `buildnet …`, `~/.buildnet/…`
//!   and `cat ~/.buildnet/admin.key` reach alpha with no flags, as on the first machine;
//! - `buildnet` on the `PATH` (this build's binary), no `BUILDNET_*` variables;
//! - the working directory is a fresh copy of the repository's `examples/` (as `examples/…`),
//!   so builds write their outputs into the copy, never into the repository.
//!
//! Placeholders substituted before a block runs (each one a value no reader could type):
//! - `key_0a1b2c3d4e5f` → the id of the newest key named `ci` (created by the same block).
//!
//! A block preceded by `<!-- readme-test: skip (why) -->` is not run (the reason is printed):
//! daemons that never return (`up`), long benchmarks, or what another test drives (the
//! interactive prompt). New sections are covered as soon as they are written.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, Start, TestNode, BIN};

/// One ```sh block: the line its fence is on, its text, and why it is skipped (if it is).
#[derive(Debug)]
struct Block {
    line: usize,
    text: String,
    skip: Option<String>,
}

const MARKER: &str = "<!-- readme-test: skip";

/// Every ```sh block, with the skip marker on the last non-empty line before its fence.
fn blocks(readme: &str) -> Vec<Block> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() == "```sh" {
            let before = lines[..i].iter().rev().find(|l| !l.trim().is_empty()).map(|l| l.trim());
            let skip = before.filter(|l| l.starts_with(MARKER)).map(|l| {
                l.trim_start_matches(MARKER).trim_end_matches("-->").trim().trim_matches(['(', ')']).to_string()
            });
            let start = i + 1;
            let mut end = start;
            while end < lines.len() && lines[end].trim() != "```" {
                end += 1;
            }
            out.push(Block { line: i + 1, text: lines[start..end].join("\n"), skip });
            i = end;
        }
        i += 1;
    }
    out
}

const SUBSTITUTIONS: [(&str, &str); 1] = [(
    "key_0a1b2c3d4e5f",
    r#"$(buildnet key list --format json | python3 -c 'import json,sys; print([k["id"] for k in json.load(sys.stdin)["keys"] if k["name"] == "ci"][-1])')"#,
)];

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(entry.file_name());
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            copy_dir(&entry.path(), &target);
        } else if kind.is_file() {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

/// Runs one block; Err carries what it printed.
fn run(block: &Block, home: &Path, cwd: &Path, path: &str) -> Result<Duration, String> {
    let mut script = format!("set -eo pipefail\n{}\n", block.text);
    for (placeholder, value) in SUBSTITUTIONS {
        script = script.replace(placeholder, value);
    }
    let out_file = cwd.join(format!(".readme-block-{}.out", block.line));
    let started = Instant::now();
    let mut child = Command::new("bash")
        .args(["-c", &script])
        .current_dir(cwd)
        .env("HOME", home)
        .env("PATH", path)
        .env_remove("BUILDNET_ADDRESS")
        .env_remove("BUILDNET_TOKEN")
        .env_remove("BUILDNET_DATA_DIR")
        .env_remove("BUILDNET_TLS_FINGERPRINT")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_file).expect("out file"))
        .stderr(std::fs::File::options().append(true).open(&out_file).expect("out file"))
        .spawn()
        .expect("bash");
    let limit = Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = std::fs::read_to_string(&out_file).unwrap_or_default();
    let _ = std::fs::remove_file(&out_file);
    match status {
        Some(s) if s.success() => Ok(started.elapsed()),
        Some(s) => Err(format!("exited with {s}:\n{output}")),
        None => Err(format!("still running after {limit:?}:\n{output}")),
    }
}

#[test]
fn the_readme_blocks_parse_with_their_markers() {
    let readme =
        "a\n<!-- readme-test: skip (a daemon) -->\n```sh\nbuildnet up\n```\n\n```sh\nls\n```\n```toml\nx\n```\n";
    let b = blocks(readme);
    assert_eq!(b.len(), 2, "{b:?}");
    assert_eq!((b[0].line, b[0].skip.as_deref(), b[0].text.as_str()), (3, Some("a daemon"), "buildnet up"));
    assert_eq!((b[1].line, b[1].skip.as_deref(), b[1].text.as_str()), (7, None, "ls"));
}

#[test]
fn every_command_block_of_the_readme_runs_as_written() {
    let _serial = common::serial();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(repo.join("README.md")).expect("README.md");
    let all = blocks(&readme);
    assert!(all.len() >= 5, "the README has command blocks");

    let a = TestNode::start_with(Start::named("alpha"));
    let b = a.join("beta", "builder", Start::default());
    let c = a.join("gamma", "builder", Start::default());
    common::wait_all_online(&[&a, &b, &c]);

    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    std::os::unix::fs::symlink(&a.dir, home.join(".buildnet")).expect("~/.buildnet");
    let cwd: PathBuf = tmp.path().join("repo");
    copy_dir(&repo.join("examples"), &cwd.join("examples"));
    let bin_dir = Path::new(BIN).parent().expect("bin dir");
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());

    let mut failed = Vec::new();
    for block in &all {
        if let Some(why) = &block.skip {
            println!("README line {}: skipped ({why})", block.line);
            continue;
        }
        match run(block, &home, &cwd, &path) {
            Ok(took) => println!("README line {}: ran in {:.1} s", block.line, took.as_secs_f64()),
            Err(e) => failed.push(format!("README line {}:\n{}\n--- {e}", block.line, block.text)),
        }
    }
    assert!(failed.is_empty(), "{} README block(s) failed as written:\n\n{}", failed.len(), failed.join("\n\n"));
}
