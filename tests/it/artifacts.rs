//! Artifacts are streamed: a large output built on a peer comes back to the project with the
//! memory of both nodes and of the CLI flat; an observer's large upload is refused before its
//! body is read; a blob whose bytes do not match its digest is refused and not stored.
//!
//! The output's size is `BUILDNET_ARTIFACT_MB` (200 by default, so CI on two cores stays
//! quick); `bench/artifacts.py` runs the same round trip with 1 GiB on release binaries.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{self, wait_until, Start, TestNode};

/// Every process stays under this resident size, whatever the artifact's.
const RSS_LIMIT_KB: u64 = 100 * 1024;

/// No benchmarks: the memory benchmark takes 256 MiB on purpose, which is not what these
/// tests measure.
const NO_BENCHMARKS: &str = r#"{"benchmark": {"on_start": false, "interval_hours": 0}}"#;

/// A field of `/proc/<pid>/status` in kB (VmRSS, VmHWM), if the process is alive.
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Samples the resident size of some processes every 10 ms until stopped; keeps each one's
/// peak (VmHWM, read while the process lives, so a short-lived CLI's peak is caught too).
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<u64>>,
}

impl Sampler {
    fn start(pids: Vec<Arc<std::sync::atomic::AtomicU32>>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peaks = vec![0u64; pids.len()];
            while !flag.load(Ordering::SeqCst) {
                for (peak, pid) in peaks.iter_mut().zip(&pids) {
                    let pid = pid.load(Ordering::SeqCst);
                    if pid != 0 {
                        let now = status_kb(pid, "VmHWM:").max(status_kb(pid, "VmRSS:")).unwrap_or(0);
                        *peak = (*peak).max(now);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            peaks
        });
        Sampler { stop, thread }
    }

    /// Peak kB of each process, in the order given.
    fn finish(self) -> Vec<u64> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("sampler")
    }
}

fn pid_cell(pid: u32) -> Arc<std::sync::atomic::AtomicU32> {
    Arc::new(std::sync::atomic::AtomicU32::new(pid))
}

#[test]
fn a_large_output_built_on_a_peer_returns_with_node_and_cli_memory_flat() {
    let _serial = common::serial();
    let mb: u64 = std::env::var("BUILDNET_ARTIFACT_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let a = TestNode::start_with(Start { config: Some(NO_BENCHMARKS), ..Start::named("alpha") });
    let b = a.join("beta", "builder", Start { config: Some(NO_BENCHMARKS), ..Default::default() });
    common::wait_all_online(&[&a, &b]);
    let beta = b.node_id();
    let created = a.cli(&["config", "create", "--name", "on-beta", "--node", &format!("{beta}:1")]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let work = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        work.path().join("buildnet.toml"),
        format!(
            "[packages.big]\nshell = \"dd if=/dev/zero of=out/big.bin bs=1M count={mb} status=none\"\n\
             outputs = [\"out/big.bin\"]\n"
        ),
    )
    .expect("manifest");

    let cli = pid_cell(0);
    let sampler = Sampler::start(vec![pid_cell(a.child.id()), pid_cell(b.child.id()), cli.clone()]);
    let started = Instant::now();
    let mut child = std::process::Command::new(common::BIN)
        .args(["build", "--config", "on-beta", "--project"])
        .arg(work.path())
        .env("BUILDNET_DATA_DIR", &a.dir)
        .env_remove("BUILDNET_ADDRESS")
        .env_remove("BUILDNET_TOKEN")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the CLI");
    cli.store(child.id(), Ordering::SeqCst);
    let status = wait_until("the build to end", Duration::from_secs(600), || child.try_wait().ok().flatten());
    let elapsed = started.elapsed();
    let peaks = sampler.finish();
    let mut out = String::new();
    let mut err = String::new();
    let _ = child.stdout.take().map(|mut s| s.read_to_string(&mut out));
    let _ = child.stderr.take().map(|mut s| s.read_to_string(&mut err));
    assert!(status.success(), "the build succeeds: {out}{err}");

    let written = work.path().join("out/big.bin");
    assert_eq!(std::fs::metadata(&written).expect("the output is written back").len(), mb << 20);
    assert!(all_zero(&written), "the output's bytes are the package's");
    let build = a.cli_json(&["history", "-n", "1"]);
    let id = build["builds"][0]["id"].as_str().expect("build id").to_string();
    let detail = a.cli_json(&["history", &id]);
    assert_eq!(detail["packages"][0]["node"], beta.as_str(), "beta built it: {detail}");

    let [alpha_kb, beta_kb, cli_kb] = [peaks[0], peaks[1], peaks[2]];
    eprintln!(
        "artifact round trip: {mb} MiB built on beta, returned to the project in {elapsed:.1?}; \
         peak RSS alpha {} MiB, beta {} MiB, CLI {} MiB",
        alpha_kb / 1024,
        beta_kb / 1024,
        cli_kb / 1024
    );
    assert!(cli_kb > 0, "the CLI was sampled");
    for (who, kb) in [("alpha", alpha_kb), ("beta", beta_kb), ("the CLI", cli_kb)] {
        assert!(kb < RSS_LIMIT_KB, "{who} peaked at {} MiB moving a {mb} MiB artifact", kb / 1024);
    }
}

fn all_zero(path: &Path) -> bool {
    let mut f = std::fs::File::open(path).expect("open");
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            return true;
        }
        if buf[..n].iter().any(|b| *b != 0) {
            return false;
        }
    }
}

/// A PUT of `size` zero bytes to `/api/blobs/{digest}`, streamed from a socket without holding
/// the body; returns the status (or None if the node closed the connection without answering).
fn put_zeros(node: &TestNode, key: &str, digest: &str, size: u64) -> Option<u16> {
    let host = node.url.strip_prefix("http://").expect("http URL").to_string();
    let mut stream = TcpStream::connect(&host).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let head = format!(
        "PUT /api/blobs/{digest} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).expect("write head");
    // The body goes from a second handle while this one waits for the answer: a node that
    // answers before reading may stop reading, and the writer then simply fails.
    let mut writer = stream.try_clone().expect("clone");
    let body = std::thread::spawn(move || {
        let zeros = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            if writer.write_all(&zeros[..n]).is_err() {
                return;
            }
            left -= n as u64;
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = body.join();
    String::from_utf8_lossy(&answer).split_whitespace().nth(1).and_then(|s| s.parse().ok())
}

fn zeros_digest(size: u64) -> String {
    let mut h = blake3::Hasher::new();
    let zeros = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        h.update(&zeros[..n]);
        left -= n as u64;
    }
    h.finalize().to_hex().to_string()
}

fn rss_kb(node: &TestNode) -> u64 {
    status_kb(node.child.id(), "VmRSS:").expect("the node runs")
}

fn tmp_files(node: &TestNode) -> usize {
    std::fs::read_dir(node.dir.join("cas/tmp")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn uploads_are_checked_before_their_body_is_read_and_stored_only_if_they_match() {
    let _shared = common::shared();
    let node = TestNode::start_with(Start { config: Some(NO_BENCHMARKS), ..Start::named("blobs") });
    let observer = node.key("observer");
    let builder = node.key("builder");
    let size: u64 = 300 << 20;
    let digest = zeros_digest(size);

    // Three observers' 300 MB uploads at once: 403 each, and the node does not grow.
    let before = rss_kb(&node);
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(before));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (peak, done, pid) = (peak.clone(), done.clone(), node.child.id());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(status_kb(pid, "VmRSS:").unwrap_or(0), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let statuses: Vec<Option<u16>> = std::thread::scope(|s| {
        let puts: Vec<_> = (0..3).map(|_| s.spawn(|| put_zeros(&node, &observer, &digest, size))).collect();
        puts.into_iter().map(|p| p.join().expect("put")).collect()
    });
    done.store(true, Ordering::SeqCst);
    watcher.join().expect("watcher");
    let grew = peak.load(Ordering::SeqCst).saturating_sub(before);
    eprintln!("three observers' 300 MiB uploads: {statuses:?}, the node grew by {grew} KiB (from {before} KiB)");
    assert_eq!(statuses, vec![Some(403); 3], "an observer may not upload");
    assert!(grew < 20 * 1024, "three refused 300 MB uploads grew the node by {} MiB", grew / 1024);
    assert_eq!(tmp_files(&node), 0);

    // A builder declaring more than the limit is refused before the body, too.
    let huge = (1u64 << 30) + 1;
    assert_eq!(put_zeros(&node, &builder, &digest, huge), Some(413));

    // The builder's 300 MB upload is streamed to disk: stored, the node still small.
    let before = rss_kb(&node);
    assert_eq!(put_zeros(&node, &builder, &digest, size), Some(201));
    let after = status_kb(node.child.id(), "VmHWM:").expect("hwm");
    eprintln!("a builder's 300 MiB upload: peak RSS {} MiB", after / 1024);
    assert!(after < RSS_LIMIT_KB, "a 300 MB upload took the node to {} MiB (from {} MiB)", after / 1024, before / 1024);
    let (status, missing) = node.post("/api/blobs/missing", &serde_json::json!({ "digests": [digest] }));
    assert_eq!((status, missing["missing"].as_array().map(Vec::len)), (200, Some(0)), "{missing}");

    // Bytes that do not hash to the digest they claim: refused, not stored, nothing left over.
    let claimed = zeros_digest(1000);
    let (status, body) = common::http(
        "PUT",
        &format!("{}/api/blobs/{claimed}", node.url),
        &[("Authorization", &format!("Bearer {builder}")), ("Content-Type", "application/octet-stream")],
        Some(&[1u8; 1000]),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid_blob"), "{body}");
    let (status, missing) = node.post("/api/blobs/missing", &serde_json::json!({ "digests": [claimed] }));
    assert_eq!((status, missing["missing"].as_array().map(Vec::len)), (200, Some(1)), "not stored: {missing}");
    let (status, _) = node.get(&format!("/api/blobs/{claimed}"));
    assert_eq!(status, 404);
    assert_eq!(tmp_files(&node), 0, "the refused upload's temporary file is gone");
}
