//! Ledger sync at scale: a node holding 100,000 ledger entries and a fresh peer joining it over
//! in-memory links (`mesh::memory::MemoryNet`, the real engines), timed until the peer's heads
//! equal the source's, with the process's peak RSS during the sync.
//!
//! The entries continue the source's own chain, made as `Append` makes them (hash over the
//! canonical encoding, Ed25519 signature by the node's identity) but written in one transaction
//! while the node is stopped, so setting up takes seconds rather than 100,000 fsyncs; the source
//! then restarts, checking its whole chain as every start does.
//!
//! Memory: both nodes share this process (MemoryNet links exist only in-process), so the figure
//! is the whole process's peak (VmHWM, reset just before the join through
//! /proc/self/clear_refs): sender, receiver and the bench together — an upper bound on the
//! receiver's. The RSS before the join is printed beside it.
//!
//! Run: `cargo bench -p buildnet-actors --bench ledger_sync -- [--entries 100000] [--runs 3]
//! [--json]`.

use std::path::Path;
use std::time::{Duration, Instant};

use buildnet_actors::config::NodeConfig;
use buildnet_actors::identity::Identity;
use buildnet_actors::ledger::canonical_bytes;
use buildnet_actors::mesh::memory::{join_in_memory, MemoryNet};
use buildnet_actors::node::NodeOptions;
use buildnet_actors::start::{start, Node};
use buildnet_actors::store::{self, Durability, DB_FILE};
use buildnet_actors::wire::{self, Hlc, LedgerEntryType, Role};

async fn node(net: &MemoryNet, dir: &Path, name: &str, create_mesh: bool) -> Node {
    let mut config = NodeConfig::default();
    config.benchmark.on_start = false;
    config.benchmark.interval_hours = 0.0;
    let opts = NodeOptions {
        data_dir: dir.join(name),
        config,
        config_file: "simulation".into(),
        name: Some(name.into()),
        address: format!("mem://{name}"),
        create_mesh,
        launcher: None,
        lock: buildnet_actors::node::lock_data_dir(&dir.join(name)).expect("the data dir is free"),
    };
    let node = match start(opts).await {
        Ok(s) => s.node,
        Err(e) => panic!("node {name} did not start: {e}"),
    };
    net.register(&node.address, node.mesh.clone());
    node.mesh.set_dialer(net.dialer());
    node
}

/// Continues `dir`'s own chain by `count` entries, signed by its identity, in one transaction.
fn grow_chain(dir: &Path, count: u64) {
    let (identity, _) = Identity::load_or_create(dir).expect("identity");
    let conn = store::open(&dir.join(DB_FILE), Durability::Normal).expect("database");
    let origin = identity.node_id.clone();
    let (mut seq, mut prev): (i64, String) = conn
        .query_row("SELECT seq, hash FROM ledger WHERE origin = ?1 ORDER BY seq DESC LIMIT 1", [origin.as_str()], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("the node's first entries");
    let tx = conn.unchecked_transaction().expect("transaction");
    let mut insert = tx
        .prepare(
            "INSERT INTO ledger (origin, seq, prev_hash, hlc_wall, hlc_logical, entry_type, entry_data, hash, signature, received_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .expect("statement");
    let wall = wire::now_ms();
    for i in 0..count {
        seq += 1;
        let hlc = Hlc { wall_ms: wall, logical: i as u32 };
        // About the size of a real allocation entry.
        let data = serde_json::json!({
            "build_id": format!("b_{:012x}", i / 50), "package": format!("pkg-{i}"), "cores": 1,
            "for_node": origin, "lease_id": format!("l_{i:016x}"),
        });
        let kind = LedgerEntryType::ResourceAllocated;
        let digest = blake3::hash(&canonical_bytes(&origin, seq as u64, &prev, hlc, kind, &data));
        let (hash, signature) = (digest.to_hex().to_string(), wire::hex(&identity.sign(digest.as_bytes())));
        insert
            .execute(rusqlite::params![
                origin.as_str(),
                seq,
                prev,
                hlc.wall_ms as i64,
                hlc.logical,
                kind.as_str(),
                data.to_string(),
                hash,
                signature,
                wall as i64
            ])
            .expect("insert");
        prev = hash;
    }
    drop(insert);
    tx.commit().expect("commit");
}

/// A line of /proc/self/status in MB (VmRSS, VmHWM).
fn status_mb(field: &str) -> f64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = text
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// CPU time this process has used (user + system), from /proc/self/stat, in ms.
fn cpu_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime and stime are 14 and 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let field = |n: usize| after.split_whitespace().nth(n).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    let ticks = field(11) + field(12);
    let per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1000 / per_s
}

struct Report {
    entries: u64,
    sync_ms: u128,
    /// CPU the whole process (both nodes) used during the sync.
    cpu_ms: u64,
    rss_before_mb: f64,
    peak_rss_mb: f64,
}

async fn run(entries: u64) -> Report {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = MemoryNet::new();
    let first = node(&net, dir.path(), "source", true).await;
    first.shutdown("growing its chain").await;
    grow_chain(&dir.path().join("source"), entries);
    let source = node(&net, dir.path(), "source", false).await;
    let fresh = node(&net, dir.path(), "fresh", false).await;

    let rss_before_mb = status_mb("VmRSS:");
    // Resets VmHWM to the current RSS, so the peak below is this sync's.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (t0, cpu0) = (Instant::now(), cpu_ms());
    let (token, _) = source.mesh.create_token(Role::Builder, 600_000, "bench").await.expect("token");
    join_in_memory(&source.mesh, &fresh.mesh, &token).await.expect("joined");
    loop {
        let want = source.ledger.heads().await.expect("source heads");
        let have = fresh.ledger.heads().await.expect("fresh heads");
        if want == have {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(600), "not in sync after 10 minutes");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    let (sync_ms, cpu_ms) = (t0.elapsed().as_millis(), cpu_ms() - cpu0);
    let peak_rss_mb = status_mb("VmHWM:");
    let total = fresh.ledger.verify().await.expect("verify");
    assert!(total.ok, "the synced ledger verifies: {:?}", total.first_bad);
    for n in [&source, &fresh] {
        n.shutdown("bench over").await;
    }
    Report { entries, sync_ms, cpu_ms, rss_before_mb, peak_rss_mb }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let json = args.iter().any(|a| a == "--json");
    let entries: u64 = arg(&args, "--entries").and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let runs: usize = arg(&args, "--runs").and_then(|n| n.parse().ok()).unwrap_or(3).max(1);
    let mut times = Vec::new();
    let mut peaks = Vec::new();
    for run_no in 0..runs {
        let r = actix_rt::System::new().block_on(run(entries));
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "entries": r.entries, "run": run_no, "ledger_sync_100k_ms": r.sync_ms, "cpu_ms": r.cpu_ms,
                    "ledger_sync_peak_rss_mb": r.peak_rss_mb.round(), "rss_before_sync_mb": r.rss_before_mb.round(),
                    "entries_per_s": (r.entries as f64 / (r.sync_ms as f64 / 1000.0)).round(),
                })
            );
        } else {
            println!(
                "run {run_no}: {} entries in {} ms ({:.0}/s, {} ms CPU), process peak RSS {:.0} MB (before the join {:.0} MB)",
                r.entries,
                r.sync_ms,
                r.entries as f64 / (r.sync_ms as f64 / 1000.0),
                r.cpu_ms,
                r.peak_rss_mb,
                r.rss_before_mb
            );
        }
        times.push(r.sync_ms as f64);
        peaks.push(r.peak_rss_mb);
    }
    times.sort_by(f64::total_cmp);
    peaks.sort_by(f64::total_cmp);
    if !json {
        println!(
            "median of {runs}: {:.0} ms, peak RSS {:.0} MB (targets: ≤ 10000 ms, < 200 MB)",
            times[times.len() / 2],
            peaks[peaks.len() / 2]
        );
    }
}
