//! Benchmarks that measure rather than guess (plan §8): CPU (a fixed prime sieve, one thread and
//! every core), memory (large sequential copies; dependent random reads), storage (sequential and
//! random I/O with the page cache out of the way). `BenchmarkActor` runs them on its own
//! `SyncArbiter` thread so the node keeps serving.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use crate::wire::{
    BenchmarkResults, BenchmarkScores, CpuBenchmarkResult, MemoryBenchmarkResult, NetworkBenchmarkResult,
    StorageBenchmarkResult,
};

/// Sizes and durations; the defaults finish in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BenchOptions {
    /// Seconds each CPU phase runs.
    pub cpu_secs: f64,
    /// Size of the storage test file.
    pub file_mb: u64,
    /// Seconds each random-I/O phase runs.
    pub random_secs: f64,
    /// Size of the memory test's buffers (keep it well above the last-level cache).
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
}

fn default_memory_mb() -> u64 {
    256
}

impl BenchOptions {
    /// Names the field that is out of range: a benchmark must end and must not fill a disk.
    pub fn check(&self) -> Result<(), String> {
        if !(0.05..=60.0).contains(&self.cpu_secs) {
            return Err("cpu_secs: must be between 0.05 and 60".into());
        }
        if !(1..=65_536).contains(&self.file_mb) {
            return Err("file_mb: must be between 1 and 65536".into());
        }
        if !(0.1..=120.0).contains(&self.random_secs) {
            return Err("random_secs: must be between 0.1 and 120".into());
        }
        if !(16..=4096).contains(&self.memory_mb) {
            return Err("memory_mb: must be between 16 and 4096".into());
        }
        Ok(())
    }
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions { cpu_secs: 1.0, file_mb: 256, random_secs: 2.0, memory_mb: default_memory_mb() }
    }
}

/// The fixed unit of CPU work: primes below 200 000 by the sieve of Eratosthenes.
fn sieve() -> usize {
    const N: usize = 200_000;
    let mut composite = vec![false; N];
    let mut count = 0;
    for i in 2..N {
        if !composite[i] {
            count += 1;
            let mut j = i * i;
            while j < N {
                composite[j] = true;
                j += i;
            }
        }
    }
    count
}

fn sieves_for(duration: Duration) -> u64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        std::hint::black_box(sieve());
        n += 1;
    }
    n
}

pub fn cpu(threads: usize, secs: f64) -> CpuBenchmarkResult {
    let started = Instant::now();
    let d = Duration::from_secs_f64(secs);
    let single = sieves_for(d) as f64 / secs;
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1)).map(|_| s.spawn(|| sieves_for(d))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    let multi = total as f64 / secs;
    let efficiency = if single > 0.0 { (multi / (single * threads.max(1) as f64)).min(1.0) } else { 0.0 };
    CpuBenchmarkResult {
        single_core_score: single,
        multi_core_score: multi,
        parallel_efficiency: efficiency,
        effective_cores: (efficiency * threads as f64).round() as usize,
        threads,
        duration_ms: started.elapsed().as_millis() as u64,
    }
}

pub fn memory(buffer_mb: usize) -> MemoryBenchmarkResult {
    let started = Instant::now();
    let len = buffer_mb << 20;
    let src = vec![1u8; len];
    let mut dst = vec![0u8; len];
    let mut copied = 0usize;
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(500) {
        dst.copy_from_slice(&src);
        std::hint::black_box(&dst);
        copied += len;
    }
    // A copy reads and writes every byte.
    let bandwidth = (2 * copied) as f64 / t.elapsed().as_secs_f64() / 1e9;
    // Dependent random reads over a single cycle through a large table defeat prefetching.
    let n = (len / 8).max(1024);
    let mut next: Vec<usize> = (0..n).collect();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for i in (1..n).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        next.swap(i, (state % i as u64) as usize);
    }
    let order = next.clone();
    for w in order.windows(2) {
        next[w[0]] = w[1];
    }
    next[order[n - 1]] = order[0];
    let steps = 2_000_000usize;
    let mut at = order[0];
    let t = Instant::now();
    for _ in 0..steps {
        at = next[at];
    }
    std::hint::black_box(at);
    let latency = t.elapsed().as_nanos() as f64 / steps as f64;
    MemoryBenchmarkResult {
        bandwidth_gbps: bandwidth,
        latency_ns: latency,
        duration_ms: started.elapsed().as_millis() as u64,
    }
}

/// A buffer aligned for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize) -> Option<Aligned> {
        let layout = std::alloc::Layout::from_size_align(len, 4096).ok()?;
        // SAFETY: layout has a non-zero size (callers pass at least 4096).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        (!ptr.is_null()).then_some(Aligned { ptr, layout })
    }

    fn slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr points to layout.size() initialised bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

fn drop_cache(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    let _ = file.sync_all();
    // SAFETY: fadvise on a valid descriptor; only advice, no memory involved.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

fn open(path: &Path, direct: bool, write: bool) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    if write {
        o.write(true).create(true);
    }
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path)
}

/// Classifies storage by the plan's thresholds.
pub fn classify(seq_read_mbps: f64, random_read_iops: u32) -> &'static str {
    match (seq_read_mbps, random_read_iops) {
        (r, i) if r > 3000.0 && i > 100_000 => "nvme",
        (r, i) if r > 500.0 && i > 10_000 => "ssd",
        (r, _) if r > 100.0 => "hdd",
        _ => "network",
    }
}

#[derive(Debug, thiserror::Error)]
#[error("storage benchmark in {path}: {source}")]
pub struct StorageBenchError {
    pub path: String,
    pub source: std::io::Error,
}

/// Runs the storage benchmark in `dir`; the test file is removed afterwards.
pub fn storage(dir: &Path, opts: &BenchOptions) -> Result<StorageBenchmarkResult, StorageBenchError> {
    let file: PathBuf = dir.join(format!(".buildnet-bench-{}", std::process::id()));
    let result = storage_in(dir, &file, opts);
    let _ = std::fs::remove_file(&file);
    result.map_err(|source| StorageBenchError { path: dir.display().to_string(), source })
}

fn storage_in(dir: &Path, file: &Path, opts: &BenchOptions) -> std::io::Result<StorageBenchmarkResult> {
    let started = Instant::now();
    const BLOCK: usize = 1 << 20;
    const SMALL: usize = 4096;
    let blocks = opts.file_mb.max(1) as usize;
    let direct = open(file, true, true).is_ok();
    let method = if direct { "direct" } else { "fsync+fadvise" };
    let mut buf = Aligned::new(BLOCK).ok_or_else(|| std::io::Error::other("cannot allocate an aligned buffer"))?;
    for (i, b) in buf.slice().iter_mut().enumerate() {
        *b = (i * 31 % 251) as u8;
    }
    // Sequential write.
    let mut f = open(file, direct, true)?;
    let t = Instant::now();
    for _ in 0..blocks {
        f.write_all(buf.slice())?;
    }
    f.sync_all()?;
    let seq_write = (blocks * BLOCK) as f64 / t.elapsed().as_secs_f64() / 1e6;
    drop_cache(&f);
    drop(f);
    // Sequential read.
    let mut f = open(file, direct, false)?;
    let t = Instant::now();
    for _ in 0..blocks {
        f.read_exact(buf.slice())?;
    }
    let seq_read = (blocks * BLOCK) as f64 / t.elapsed().as_secs_f64() / 1e6;
    drop_cache(&f);
    // Random 4 KiB reads.
    let mut small = Aligned::new(SMALL).ok_or_else(|| std::io::Error::other("cannot allocate an aligned buffer"))?;
    let slots = (blocks * BLOCK / SMALL) as u64;
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % slots
    };
    let phase = Duration::from_secs_f64(opts.random_secs / 2.0);
    let (mut reads, t) = (0u64, Instant::now());
    while t.elapsed() < phase {
        f.seek(SeekFrom::Start(rand() * SMALL as u64))?;
        f.read_exact(small.slice())?;
        reads += 1;
    }
    let read_secs = t.elapsed().as_secs_f64();
    drop(f);
    // Random 4 KiB writes, each made durable (O_DIRECT, or fdatasync without it).
    let mut f = open(file, direct, true)?;
    let (mut writes, t) = (0u64, Instant::now());
    while t.elapsed() < phase {
        f.seek(SeekFrom::Start(rand() * SMALL as u64))?;
        f.write_all(small.slice())?;
        if !direct {
            f.sync_data()?;
        }
        writes += 1;
    }
    f.sync_all()?;
    let write_secs = t.elapsed().as_secs_f64();
    let random_read_iops = (reads as f64 / read_secs) as u32;
    Ok(StorageBenchmarkResult {
        path: dir.display().to_string(),
        storage_class: classify(seq_read, random_read_iops).into(),
        seq_read_mbps: seq_read,
        seq_write_mbps: seq_write,
        random_read_iops,
        random_write_iops: (writes as f64 / write_secs) as u32,
        read_latency_us: if reads > 0 { (read_secs * 1e6 / reads as f64) as u64 } else { 0 },
        method: method.into(),
        file_mb: opts.file_mb,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

/// Runs benchmarks off the async threads.
pub struct BenchmarkActor;

impl Actor for BenchmarkActor {
    type Context = SyncContext<Self>;
}

/// What to run.
#[derive(Message)]
#[rtype(result = "Result<BenchmarkResults, String>")]
pub struct Run {
    pub node_id: String,
    pub cpu_threads: Option<usize>,
    pub memory: bool,
    pub storage: Vec<PathBuf>,
    pub options: BenchOptions,
}

impl Handler<Run> for BenchmarkActor {
    type Result = Result<BenchmarkResults, String>;

    fn handle(&mut self, msg: Run, _: &mut Self::Context) -> Self::Result {
        let started = Instant::now();
        let cpu = msg.cpu_threads.map(|t| cpu(t, msg.options.cpu_secs));
        let memory = msg.memory.then(|| memory(msg.options.memory_mb.clamp(16, 4096) as usize));
        let mut storage_results = Vec::new();
        for dir in &msg.storage {
            storage_results.push(storage(dir, &msg.options).map_err(|e| e.to_string())?);
        }
        Ok(BenchmarkResults {
            node_id: msg.node_id,
            timestamp_ms: crate::wire::now_ms(),
            duration_ms: started.elapsed().as_millis() as u64,
            cpu,
            memory,
            storage: storage_results,
            network: vec![],
        })
    }
}

/// Typed front of the benchmark actor; records every result in `benchmarks` and the ledger.
#[derive(Clone)]
pub struct BenchHandle {
    addr: Addr<BenchmarkActor>,
    store: crate::store::StoreHandle,
    ledger: crate::ledger::LedgerHandle,
}

impl BenchHandle {
    pub fn start(store: crate::store::StoreHandle, ledger: crate::ledger::LedgerHandle) -> BenchHandle {
        BenchHandle { addr: SyncArbiter::start(1, || BenchmarkActor), store, ledger }
    }

    /// Runs what `run` asks for on the benchmark thread (one run at a time), then records it.
    pub async fn run(&self, run: Run) -> Result<BenchmarkResults, String> {
        let results = self.measure(run).await?;
        self.record(&results).await;
        Ok(results)
    }

    /// Runs without recording, for callers that add network figures before recording it all.
    pub async fn measure(&self, run: Run) -> Result<BenchmarkResults, String> {
        self.addr.send(run).await.map_err(|_| "the benchmark actor stopped".to_string())?
    }

    /// Stores results in `benchmarks` and appends `BenchmarkCompleted` to the ledger.
    pub async fn record(&self, results: &BenchmarkResults) {
        let (node, at) = (results.node_id.clone(), results.timestamp_ms as i64);
        let mut rows: Vec<(&'static str, String)> = Vec::new();
        if let Some(c) = &results.cpu {
            rows.push(("cpu", serde_json::to_string(c).unwrap_or_default()));
        }
        if let Some(m) = &results.memory {
            rows.push(("memory", serde_json::to_string(m).unwrap_or_default()));
        }
        for s in &results.storage {
            rows.push(("storage", serde_json::to_string(s).unwrap_or_default()));
        }
        for n in &results.network {
            rows.push(("network", serde_json::to_string(n).unwrap_or_default()));
        }
        let stored = self
            .store
            .run(move |c| {
                for (kind, json) in rows {
                    let id = format!("bench_{}_{}_{}", kind, at, rand::random::<u32>());
                    c.execute(
                        "INSERT INTO benchmarks (id, node_id, benchmark_type, results, run_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                        rusqlite::params![id, node, kind, json, at],
                    )?;
                }
                Ok(())
            })
            .await;
        if let Err(e) = stored {
            log::warn!("recording benchmark results: {e}");
        }
        let summary = serde_json::json!({
            "node_id": results.node_id,
            "started_at_ms": results.timestamp_ms.saturating_sub(results.duration_ms),
            "finished_at_ms": results.timestamp_ms,
            "cpu": results.cpu.as_ref().map(|c| serde_json::json!({ "single": c.single_core_score, "multi": c.multi_core_score, "efficiency": c.parallel_efficiency })),
            "memory": results.memory.as_ref().map(|m| serde_json::json!({ "gbps": m.bandwidth_gbps, "latency_ns": m.latency_ns })),
            "storage": results.storage.iter().map(|s| serde_json::json!({ "path": s.path, "class": s.storage_class, "read_mbps": s.seq_read_mbps, "write_mbps": s.seq_write_mbps })).collect::<Vec<_>>(),
            "network": results.network.iter().map(|n| serde_json::json!({ "node": n.target_node, "latency_ms": n.latency_ms, "jitter_ms": n.jitter_ms, "upload_mbps": n.upload_mbps, "download_mbps": n.download_mbps })).collect::<Vec<_>>(),
        });
        let _ = self.ledger.append(crate::wire::LedgerEntryType::BenchmarkCompleted, summary).await;
    }

    /// The latest recorded figures, folded oldest to newest.
    pub async fn latest(&self) -> BenchmarkScores {
        let rows = self.history(None, 500).await.unwrap_or_default();
        let mut scores = BenchmarkScores::default();
        for (kind, at, value) in rows.into_iter().rev() {
            let mut r = BenchmarkResults {
                node_id: String::new(),
                timestamp_ms: at,
                duration_ms: 0,
                cpu: None,
                memory: None,
                storage: vec![],
                network: vec![],
            };
            match kind.as_str() {
                "cpu" => r.cpu = serde_json::from_value(value).ok(),
                "memory" => r.memory = serde_json::from_value(value).ok(),
                "storage" => r.storage.extend(serde_json::from_value(value).ok()),
                "network" => r.network.extend(serde_json::from_value(value).ok()),
                _ => continue,
            }
            scores.merge(&r);
        }
        scores
    }

    /// Recorded results of one kind, newest first.
    pub async fn history(
        &self,
        kind: Option<String>,
        limit: usize,
    ) -> Result<Vec<(String, u64, serde_json::Value)>, crate::store::StoreError> {
        self.store
            .run(move |c| {
                let mut stmt = c.prepare("SELECT benchmark_type, run_at, results FROM benchmarks WHERE (?1 IS NULL OR benchmark_type = ?1) ORDER BY run_at DESC LIMIT ?2")?;
                let rows = stmt.query_map(rusqlite::params![kind, limit as i64], |r| {
                    let text: String = r.get(2)?;
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64, serde_json::from_str(&text).unwrap_or_default()))
                })?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sieve_is_fixed_work() {
        assert_eq!(sieve(), 17_984);
    }

    #[test]
    fn cpu_scores_and_efficiency_are_consistent() {
        let r = cpu(2, 0.2);
        assert!(r.single_core_score > 0.0 && r.multi_core_score > 0.0);
        assert!(r.parallel_efficiency > 0.0 && r.parallel_efficiency <= 1.0);
        assert!(r.effective_cores <= 2);
    }

    #[test]
    fn storage_measures_and_cleans_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = storage(dir.path(), &BenchOptions { cpu_secs: 0.1, file_mb: 4, random_secs: 0.2, memory_mb: 16 })
            .expect("benchmark");
        assert!(r.seq_read_mbps > 0.0 && r.seq_write_mbps > 0.0 && r.random_read_iops > 0 && r.random_write_iops > 0);
        assert!(["nvme", "ssd", "hdd", "network"].contains(&r.storage_class.as_str()));
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0, "the test file is removed");
    }

    #[test]
    fn options_out_of_range_name_their_field() {
        assert!(BenchOptions::default().check().is_ok());
        let e = BenchOptions { cpu_secs: 1e9, ..BenchOptions::default() }.check().unwrap_err();
        assert!(e.starts_with("cpu_secs"), "{e}");
        let e = BenchOptions { file_mb: 0, ..BenchOptions::default() }.check().unwrap_err();
        assert!(e.starts_with("file_mb"), "{e}");
    }

    #[test]
    fn classification_follows_the_plan() {
        assert_eq!(classify(3500.0, 200_000), "nvme");
        assert_eq!(classify(550.0, 50_000), "ssd");
        assert_eq!(classify(150.0, 100), "hdd");
        assert_eq!(classify(50.0, 100), "network");
    }
}
