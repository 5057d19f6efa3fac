//! Benchmarks that measure rather than guess (plan §8): CPU (fixed integer work, one thread and
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
    /// Seconds of one-thread and of all-thread CPU work each, in five rounds (at least 0.2 s a
    /// round; disturbed rounds are run again).
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

/// The fixed unit of CPU work: count the primes below 10 000 by trial division (sysbench's CPU
/// test). Integer arithmetic in registers, no memory traffic: a kernel that streamed through
/// memory (a 200 KB prime sieve, before) moved ±25–40 % between runs on a quiet shared VM, with
/// the neighbours' use of the caches, while this one moves as little as sysbench (measured in
/// ARCHITECTURE.md); memory has its own benchmark.
fn work_unit() -> u32 {
    const LIMIT: u32 = 10_000;
    let mut primes = 0;
    for candidate in 3..LIMIT {
        let mut divisor = 2;
        let mut prime = true;
        while divisor * divisor <= candidate {
            if std::hint::black_box(candidate) % divisor == 0 {
                prime = false;
                break;
            }
            divisor += 1;
        }
        primes += u32::from(prime);
    }
    primes
}

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec.max(0) as u64, t.tv_nsec.clamp(0, 999_999_999) as u32)
}

/// Whole work units for about `duration` on this thread: (units, wall time they took, CPU time
/// this thread got meanwhile).
fn units_for(duration: Duration) -> (u64, Duration, Duration) {
    let (start, cpu_start) = (Instant::now(), thread_cpu());
    let mut n = 0u64;
    while start.elapsed() < duration {
        std::hint::black_box(work_unit());
        n += 1;
    }
    (n, start.elapsed(), thread_cpu().saturating_sub(cpu_start))
}

/// Where the machine's CPU time went: all of it busy (from `/proc/stat`, steal included: a
/// hypervisor's other guests take cores too) and this process's own share. The difference over
/// a phase is other work: packages (child processes), other programs, other guests.
#[derive(Debug, Clone, Copy)]
struct CpuClock {
    at: Instant,
    machine_busy: Duration,
    own: Duration,
}

impl CpuClock {
    /// None where `/proc/stat` cannot be read (not Linux): then nothing is judged disturbed.
    fn now() -> Option<CpuClock> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let ticks: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).map_while(|v| v.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal; guest time is already in user.
        let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|i| ticks.get(*i)).sum();
        // SAFETY: sysconf reads a constant.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let mut own = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes one timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut own) };
        Some(CpuClock {
            at: Instant::now(),
            machine_busy: Duration::from_micros(busy * 1_000_000 / hz),
            own: Duration::new(own.tv_sec.max(0) as u64, own.tv_nsec.clamp(0, 999_999_999) as u32),
        })
    }

    /// Cores' worth of CPU other work used since `earlier`.
    fn others_since(&self, earlier: &CpuClock) -> f64 {
        let wall = self.at.duration_since(earlier.at).as_secs_f64();
        let busy = self.machine_busy.saturating_sub(earlier.machine_busy).as_secs_f64();
        let own = self.own.saturating_sub(earlier.own).as_secs_f64();
        if wall > 0.0 {
            ((busy - own) / wall).max(0.0)
        } else {
            0.0
        }
    }
}

/// Cores the kernel runs work on now.
fn online_cores() -> usize {
    // SAFETY: sysconf reads a constant.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 {
        n as usize
    } else {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    }
}

/// How much other work a phase on `threads` threads tolerates, in cores beyond those it leaves
/// idle: `/proc/stat` counts in 10 ms ticks, so a 0.2 s phase on two cores reads ±0.1 core.
const OTHERS_TOLERANCE: f64 = 0.25;
/// Below this share of the wall time on a core, the phase's threads were preempted.
const MIN_OWN_SHARE: f64 = 0.92;

/// Whether other work took CPU the measurement needed: its threads did not have their cores
/// (`own_share`), or other work used more cores than the measurement left idle.
fn disturbance(cores: usize, threads: usize, own_share: f64, others: f64) -> Option<String> {
    let idle = cores.saturating_sub(threads) as f64;
    if own_share < MIN_OWN_SHARE {
        Some(format!("its threads ran {:.0} % of the time (other work took their cores)", own_share * 100.0))
    } else if others > idle + OTHERS_TOLERANCE {
        Some(format!("other work used {others:.2} cores while it left {idle} idle"))
    } else {
        None
    }
}

/// One timed phase of work units on `threads` threads.
struct Phase {
    /// Work units per second, all threads together.
    score: f64,
    disturbed: Option<String>,
}

fn phase(threads: usize, duration: Duration) -> Phase {
    let before = CpuClock::now();
    let runs: Vec<(u64, Duration, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(|| units_for(duration))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    let others = match (before, CpuClock::now()) {
        (Some(b), Some(a)) => a.others_since(&b),
        _ => 0.0,
    };
    // Each thread's rate per second it was on a core: time-slicing with other work then moves
    // the score far less than it moves a rate per wall second (measured with other builds
    // running: single-thread spread ±30 % per wall second, ±13 % per CPU second), and on a quiet
    // machine the two are the same. Other work is still judged below, by its share.
    let on_core = |wall: &Duration, cpu: &Duration| if *cpu > Duration::from_millis(1) { *cpu } else { *wall };
    let score = runs.iter().map(|(n, wall, cpu)| *n as f64 / on_core(wall, cpu).as_secs_f64().max(1e-9)).sum();
    let wall: f64 = runs.iter().map(|(_, w, _)| w.as_secs_f64()).sum();
    let cpu: f64 = runs.iter().map(|(_, _, c)| c.as_secs_f64()).sum();
    let own_share = if wall > 0.0 { cpu / wall } else { 1.0 };
    Phase { score, disturbed: disturbance(online_cores(), threads, own_share, others) }
}

/// Rounds of (one thread, every thread) phases; the fastest clean one is the score.
const CPU_ROUNDS: usize = 5;
/// A phase shorter than this reads `/proc/stat` too coarsely to judge disturbance.
const MIN_PHASE: Duration = Duration::from_millis(200);
/// At least this many undisturbed phases of each kind make a figure.
const MIN_CLEAN: usize = 3;

/// The median, or 0 for no values.
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Phases of one kind: the scores of undisturbed ones, and the rest with why.
#[derive(Default)]
struct Phases {
    clean: Vec<f64>,
    disturbed: Vec<(f64, String)>,
}

impl Phases {
    fn add(&mut self, p: Phase) {
        match p.disturbed {
            None => self.clean.push(p.score),
            Some(why) => self.disturbed.push((p.score, why)),
        }
    }

    /// The fastest undisturbed phase when there are enough: other work (a neighbour on the
    /// host's sibling thread, which no counter in the guest shows) only ever slows fixed
    /// arithmetic down, never speeds it up, so the fastest phase is the machine's rate and the
    /// statistic that holds still (on this VM the median of five all-core phases once halved
    /// for a second of such contention). Too few undisturbed phases: the median of all, with
    /// the latest reason.
    fn score(&self) -> (f64, Option<String>) {
        if self.clean.len() >= MIN_CLEAN {
            return (self.clean.iter().copied().fold(0.0, f64::max), None);
        }
        let all = self.clean.iter().copied().chain(self.disturbed.iter().map(|d| d.0)).collect();
        (median(all), self.disturbed.last().map(|d| d.1.clone()))
    }
}

/// The CPU benchmark: after a warm-up (clock up, memory touched), rounds of a one-thread phase
/// then an all-thread phase, each `secs / 5` long (at least 0.2 s); the scores are the fastest
/// of the phases no other work disturbed. Disturbed phases are run again, within three times
/// the planned time; a result without three clean phases of each kind says it was disturbed.
pub fn cpu(threads: usize, secs: f64) -> CpuBenchmarkResult {
    let started = Instant::now();
    let threads = threads.max(1);
    let length = Duration::from_secs_f64(secs / CPU_ROUNDS as f64).max(MIN_PHASE);
    phase(threads, length.min(MIN_PHASE));
    let budget = length * (2 * CPU_ROUNDS as u32) * 3;
    let (mut single, mut multi) = (Phases::default(), Phases::default());
    for round in 0.. {
        let enough = single.clean.len() >= CPU_ROUNDS && multi.clean.len() >= CPU_ROUNDS;
        if enough || (round >= CPU_ROUNDS && started.elapsed() > budget) {
            break;
        }
        if single.clean.len() < CPU_ROUNDS {
            single.add(phase(1, length));
        }
        if multi.clean.len() < CPU_ROUNDS {
            multi.add(phase(threads, length));
        }
    }
    let (single_score, single_why) = single.score();
    let (multi_score, multi_why) = multi.score();
    let disturbed = match (single_why, multi_why) {
        (None, None) => None,
        (s, m) => Some(format!(
            "{} of {} one-thread and {} of {} all-core phases disturbed; latest: {}",
            single.disturbed.len(),
            single.clean.len() + single.disturbed.len(),
            multi.disturbed.len(),
            multi.clean.len() + multi.disturbed.len(),
            m.or(s).unwrap_or_default()
        )),
    };
    let efficiency = if single_score > 0.0 { (multi_score / (single_score * threads as f64)).min(1.0) } else { 0.0 };
    CpuBenchmarkResult {
        single_core_score: single_score,
        multi_core_score: multi_score,
        parallel_efficiency: efficiency,
        effective_cores: (efficiency * threads as f64).round() as usize,
        threads,
        duration_ms: started.elapsed().as_millis() as u64,
        disturbed,
    }
}

pub fn memory(buffer_mb: usize) -> MemoryBenchmarkResult {
    let started = Instant::now();
    let before = CpuClock::now();
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
        // Bandwidth and latency are shared with every core: other work on any of them counts.
        disturbed: match (before, CpuClock::now()) {
            (Some(b), Some(a)) => disturbance(online_cores(), 1, 1.0, a.others_since(&b)),
            _ => None,
        },
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

/// Reserves `len` bytes for `file`; where the filesystem cannot (EOPNOTSUPP), writes allocate.
fn preallocate(file: &std::fs::File, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate on a valid descriptor with mode 0 (allocate, extend the size).
    let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    if r != 0 {
        log::debug!("storage benchmark: fallocate: {}", std::io::Error::last_os_error());
    }
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
    // Sequential write the way fio measures it (see ARCHITECTURE, Benchmarks): into a file
    // preallocated first, whose unwritten extents each write converts, and timed to the last
    // write's return. A fresh file's extending writes skip the conversions and read well above
    // fio; the final flush, timed, read below it on a disk other work keeps busy.
    let mut f = open(file, direct, true)?;
    preallocate(&f, (blocks * BLOCK) as u64);
    let t = Instant::now();
    for _ in 0..blocks {
        f.write_all(buf.slice())?;
    }
    let seq_write = (blocks * BLOCK) as f64 / t.elapsed().as_secs_f64() / 1e6;
    // Durable (and, without O_DIRECT, out of the page cache) before the reads are timed.
    f.sync_data()?;
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
        disturbed: None,
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
            waited_ms: 0,
        })
    }
}

/// Typed front of the benchmark actor; records every result in `benchmarks` and the ledger.
#[derive(Clone)]
pub struct BenchHandle {
    addr: Addr<BenchmarkActor>,
    store: crate::store::StoreHandle,
    ledger: crate::ledger::LedgerHandle,
    /// One benchmark at a time on this node, whoever asks (schedule, API, CLI): two at once
    /// would each measure the other.
    turn: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl BenchHandle {
    pub fn start(store: crate::store::StoreHandle, ledger: crate::ledger::LedgerHandle) -> BenchHandle {
        let turn = Default::default();
        BenchHandle { addr: SyncArbiter::start(1, || BenchmarkActor), store, ledger, turn }
    }

    /// Waits until no other benchmark runs on this node; the turn lasts while the guard lives.
    pub async fn turn(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.turn.clone().lock_owned().await
    }

    /// Measures on the benchmark thread without recording: the caller holds a [`Self::turn`] and
    /// adds network figures before recording it all.
    pub async fn measure(&self, run: Run) -> Result<BenchmarkResults, String> {
        self.addr.send(run).await.map_err(|_| "the benchmark actor stopped".to_string())?
    }

    /// Stores results in `benchmarks` and appends `BenchmarkCompleted` to the ledger, disturbed
    /// parts marked as such (and logged): they stay in the history, out of the node's figures.
    pub async fn record(&self, results: &BenchmarkResults) {
        for (kind, why) in results.disturbed() {
            log::warn!("{kind} benchmark disturbed by other work, recorded but not advertised: {why}");
        }
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
            "cpu": results.cpu.as_ref().map(|c| serde_json::json!({ "single": c.single_core_score, "multi": c.multi_core_score, "efficiency": c.parallel_efficiency, "disturbed": c.disturbed })),
            "memory": results.memory.as_ref().map(|m| serde_json::json!({ "gbps": m.bandwidth_gbps, "latency_ns": m.latency_ns, "disturbed": m.disturbed })),
            "storage": results.storage.iter().map(|s| serde_json::json!({ "path": s.path, "class": s.storage_class, "read_mbps": s.seq_read_mbps, "write_mbps": s.seq_write_mbps, "disturbed": s.disturbed })).collect::<Vec<_>>(),
            "waited_ms": results.waited_ms,
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
                waited_ms: 0,
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
    fn the_work_unit_is_fixed_work() {
        // The odd primes below 10 000 (1 229 primes, 2 not counted).
        assert_eq!(work_unit(), 1_228);
    }

    #[test]
    fn cpu_scores_and_efficiency_are_consistent() {
        let r = cpu(2, 0.2);
        assert!(r.single_core_score > 0.0 && r.multi_core_score > 0.0);
        assert!(r.parallel_efficiency > 0.0 && r.parallel_efficiency <= 1.0);
        assert!(r.effective_cores <= 2);
    }

    /// Processes spinning on every core until dropped: other work, as packages are. (The
    /// integration tests have their own: a test crate cannot reach this module's.)
    struct Spinners(Vec<std::process::Child>);

    impl Drop for Spinners {
        fn drop(&mut self) {
            self.0.iter_mut().for_each(|c| drop((c.kill(), c.wait())));
        }
    }

    fn spin_every_core() -> Spinners {
        let spin = |_| std::process::Command::new("sh").args(["-c", "while :; do :; done"]).spawn().expect("sh");
        Spinners((0..online_cores()).map(spin).collect())
    }

    #[test]
    fn the_cpu_clock_counts_other_processes_not_this_one() {
        let cores = online_cores();
        let _spin = spin_every_core();
        let before = CpuClock::now().expect("/proc/stat");
        std::thread::sleep(Duration::from_millis(500));
        let others = CpuClock::now().expect("/proc/stat").others_since(&before);
        // The spinners alone keep every core busy; the sleeping test uses none.
        assert!(others > cores as f64 * 0.8, "others used {others} of {cores} cores");
    }

    #[test]
    fn a_cpu_run_beside_other_work_says_it_was_disturbed() {
        let _spin = spin_every_core();
        let r = cpu(online_cores(), 0.2);
        let why = r.disturbed.expect("disturbed");
        assert!(why.contains("all-core phases disturbed"), "{why}");
    }

    #[test]
    fn disturbance_compares_other_work_with_the_cores_a_phase_leaves_idle() {
        // One thread on two cores leaves one idle: another program there is fine.
        assert_eq!(disturbance(2, 1, 1.0, 1.0), None);
        assert!(disturbance(2, 1, 1.0, 1.5).is_some_and(|w| w.contains("1.50 cores")));
        // Every core busy: a quarter core of other work is within /proc/stat's resolution.
        assert_eq!(disturbance(2, 2, 0.99, 0.2), None);
        assert!(disturbance(2, 2, 0.99, 0.4).is_some());
        // Threads that did not get their cores were disturbed whatever /proc/stat says.
        assert!(disturbance(2, 2, 0.8, 0.0).is_some_and(|w| w.contains("80 %")));
    }

    #[test]
    fn scores_are_the_fastest_clean_phase_unless_too_few() {
        let p = |score, why: Option<&str>| Phase { score, disturbed: why.map(String::from) };
        let mut phases = Phases::default();
        for (score, why) in [(100.0, None), (500.0, Some("busy")), (104.0, None), (52.0, None), (98.0, None)] {
            phases.add(p(score, why));
        }
        assert_eq!(phases.score(), (104.0, None), "the fastest of 100, 104, 52, 98; the disturbed one left out");
        let mut few = Phases::default();
        for (score, why) in [(100.0, None), (50.0, Some("a")), (60.0, Some("b"))] {
            few.add(p(score, why));
        }
        assert_eq!(few.score(), (60.0, Some("b".to_string())));
    }

    fn results(cpu: f64, disturbed: Option<&str>) -> BenchmarkResults {
        BenchmarkResults {
            node_id: "n".into(),
            timestamp_ms: 1000 + cpu as u64,
            duration_ms: 1,
            cpu: Some(CpuBenchmarkResult {
                single_core_score: cpu,
                multi_core_score: cpu * 2.0,
                parallel_efficiency: 1.0,
                effective_cores: 2,
                threads: 2,
                duration_ms: 1,
                disturbed: disturbed.map(String::from),
            }),
            memory: None,
            storage: vec![],
            network: vec![],
            waited_ms: 0,
        }
    }

    #[test]
    fn disturbed_figures_are_not_folded_into_what_the_node_advertises() {
        let mut scores = BenchmarkScores::default();
        scores.merge(&results(700.0, None));
        scores.merge(&results(900.0, Some("other work used 1.5 cores")));
        assert_eq!(scores.cpu_single(), Some(700.0), "the clean figure stays");
        assert_eq!(scores.measured_at_ms, 1900, "the schedule still sees the run end");
        let mut marked = results(800.0, None);
        marked.mark_disturbed("packages were running");
        assert_eq!(marked.disturbed(), vec![("cpu", "packages were running")]);
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
