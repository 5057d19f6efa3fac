//! The runner: feeds a target its seeds and then mutated inputs on a worker thread with the stack
//! of a real node's threads, each input under `catch_unwind`, a watchdog for hangs and the memory
//! guard for OOM; counts outcomes and saves failing inputs.
//!
//! Failures it reports and goes on: a panic, an allocation or live growth over
//! [`guard::SOFT_LIMIT`], an oracle violation (e.g. a message that does not re-encode to itself).
//! Failures that end the process, as they would end a node: a hang (the watchdog saves the input
//! and exits with status 3), a stack overflow or an allocation over [`guard::HARD_LIMIT`] (a
//! SIGABRT handler saves the input before the process dies).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use crate::guard;
use crate::mutate::{mutate, Hints, Rng};

/// The stack a node's worker threads get (Rust's default for spawned threads): a decoder that
/// recurses too deep overflows here as it would in the daemon.
pub const WORKER_STACK: usize = 2 << 20;

/// One decoder under test.
pub trait Target: Send {
    fn name(&self) -> &'static str;
    /// Valid encodings the mutator starts from.
    fn seeds(&self) -> Vec<Vec<u8>>;
    fn hints(&self) -> Hints;
    /// A structural input the byte mutator would not find (e.g. a dependency chain 30 000 long);
    /// asked for one input in 64.
    fn generate(&self, _rng: &mut Rng) -> Option<Vec<u8>> {
        None
    }
    /// Runs one input: `Ok(outcome)` names what the decoder did (accepted which kind, refused
    /// with which error); `Err` is a broken invariant, reported as a failure.
    fn run(&mut self, input: &[u8]) -> Result<String, String>;
}

#[derive(Debug, Clone)]
pub struct Options {
    pub inputs: u64,
    pub seed: u64,
    /// An input running longer than this is a hang.
    pub timeout: Duration,
    /// Where failing inputs are saved; `None` keeps them in the report only.
    pub crash_dir: Option<PathBuf>,
    /// Print progress lines to stderr.
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { inputs: 1_000_000, seed: 1, timeout: Duration::from_secs(10), crash_dir: None, progress: false }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FailureKind {
    Panic,
    Oom,
    Oracle,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Panic => "panic",
            FailureKind::Oom => "oom",
            FailureKind::Oracle => "oracle",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub index: u64,
    pub kind: FailureKind,
    pub detail: String,
    pub input: Vec<u8>,
    pub saved: Option<PathBuf>,
}

/// What a run of one target did.
#[derive(Debug, Clone)]
pub struct Report {
    pub target: &'static str,
    pub inputs: u64,
    pub elapsed: Duration,
    /// Outcome label → inputs that ended so.
    pub outcomes: BTreeMap<String, u64>,
    pub failures: Vec<Failure>,
    /// Failures beyond the ones kept in `failures`.
    pub failures_dropped: u64,
    pub slowest: Duration,
    pub largest_allocation: usize,
    pub largest_growth: usize,
    /// Whether the counting allocator was installed (without it OOM is not detected).
    pub memory_guard: bool,
}

impl Report {
    pub fn per_second(&self) -> f64 {
        self.inputs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn failure_count(&self) -> u64 {
        self.failures.len() as u64 + self.failures_dropped
    }

    /// One line per target, as the binary prints it.
    pub fn line(&self) -> String {
        format!(
            "{:<9} {:>9} inputs  {:>7.1} s  {:>9.0}/s  {:>4} outcomes  {:>3} failures  slowest {:>6.1} ms  \
             largest alloc {:>6.1} MiB  peak growth {:>6.1} MiB{}",
            self.target,
            self.inputs,
            self.elapsed.as_secs_f64(),
            self.per_second(),
            self.outcomes.len(),
            self.failure_count(),
            self.slowest.as_secs_f64() * 1e3,
            self.largest_allocation as f64 / 1048576.0,
            self.largest_growth as f64 / 1048576.0,
            if self.memory_guard { "" } else { "  (no memory guard)" },
        )
    }
}

/// At most this many failures are kept (and saved) per run.
const KEEP_FAILURES: usize = 50;

/// Input `index` of `target` in a run seeded with `seed`: the seeds first, then mutations.
pub fn input(target: &dyn Target, seeds: &[Vec<u8>], hints: &Hints, seed: u64, index: u64) -> Vec<u8> {
    if let Some(s) = seeds.get(index as usize) {
        return s.clone();
    }
    let mut rng = Rng::for_input(seed, target.name(), index);
    if rng.chance(64) {
        if let Some(generated) = target.generate(&mut rng) {
            return generated;
        }
    }
    mutate(&mut rng, seeds, hints)
}

// --- what the watchdog and the abort handler need to find the current input ---

/// The generation of the input running now; 0 when idle, `u64::MAX` once the watchdog claimed it.
static RUNNING: AtomicU64 = AtomicU64::new(0);
static STARTED_NS: AtomicU64 = AtomicU64::new(0);
static CUR_PTR: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static CUR_LEN: AtomicUsize = AtomicUsize::new(0);
/// NUL-terminated path the SIGABRT handler writes the current input to (leaked per target).
static ABORT_PATH: AtomicPtr<libc::c_char> = AtomicPtr::new(std::ptr::null_mut());
static RUN_LOCK: Mutex<()> = Mutex::new(());
static INSTALL: Once = Once::new();

thread_local! {
    static FUZZ_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static LAST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

extern "C" fn on_abort(_: libc::c_int) {
    // Async-signal-safe only: loads, open, write, close.
    let path = ABORT_PATH.load(Ordering::SeqCst);
    let ptr = CUR_PTR.load(Ordering::SeqCst);
    let len = CUR_LEN.load(Ordering::SeqCst);
    let say = |s: &[u8]| unsafe {
        libc::write(2, s.as_ptr().cast(), s.len());
    };
    if RUNNING.load(Ordering::SeqCst) == 0 || ptr.is_null() {
        return;
    }
    say(b"\nbuildnet-fuzz: the process aborted while running an input (stack overflow, allocation over the hard limit, or abort)");
    if !path.is_null() {
        unsafe {
            let fd = libc::open(path, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o644);
            if fd >= 0 {
                libc::write(fd, ptr.cast(), len);
                libc::close(fd);
                say(b"; input saved to ");
                say(std::ffi::CStr::from_ptr(path).to_bytes());
            }
        }
    }
    say(b"\n");
}

fn oom_hook(bytes: usize) -> ! {
    eprintln!("\nbuildnet-fuzz: an input asked for {bytes} bytes (hard limit {}): aborting", guard::HARD_LIMIT);
    std::process::abort()
}

fn install_handlers() {
    INSTALL.call_once(|| {
        guard::set_emergency(oom_hook);
        // SAFETY: a plain sigaction install with a handler that only makes async-signal-safe calls.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_abort as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_ONSTACK | libc::SA_RESETHAND;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGABRT, &sa, std::ptr::null_mut());
        }
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if FUZZ_THREAD.with(|f| f.get()) {
                let msg = if let Some(s) = info.payload().downcast_ref::<&str>() {
                    (*s).to_string()
                } else if let Some(s) = info.payload().downcast_ref::<String>() {
                    s.clone()
                } else {
                    "panic".to_string()
                };
                let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{msg}{at}")));
            } else {
                previous(info);
            }
        }));
    });
}

fn monotonic_ns(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// Replaces digits so that "length 12" and "length 13" are one outcome.
fn normalise(label: &str) -> String {
    let mut out = String::with_capacity(label.len().min(96));
    let mut last_digit = false;
    for c in label.chars() {
        if out.len() >= 90 {
            break;
        }
        if c.is_ascii_digit() {
            if !last_digit {
                out.push('#');
            }
            last_digit = true;
        } else {
            out.push(c);
            last_digit = false;
        }
    }
    out
}

fn save(dir: &Path, target: &str, kind: &str, input: &[u8]) -> Option<PathBuf> {
    std::fs::create_dir_all(dir).ok()?;
    let hash = blake3::hash(input).to_hex();
    let path = dir.join(format!("{target}-{kind}-{}.bin", &hash[..16]));
    std::fs::write(&path, input).ok()?;
    Some(path)
}

/// Runs `opts.inputs` inputs through `target` and reports.
pub fn run(target: Box<dyn Target>, opts: &Options) -> Report {
    let _one_at_a_time = RUN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    install_handlers();
    let name = target.name();
    if let Some(dir) = &opts.crash_dir {
        let _ = std::fs::create_dir_all(dir);
        if let Ok(c) = CString::new(dir.join(format!("{name}-abort.bin")).to_string_lossy().as_bytes()) {
            ABORT_PATH.store(c.into_raw(), Ordering::SeqCst);
        }
    } else {
        ABORT_PATH.store(std::ptr::null_mut(), Ordering::SeqCst);
    }

    let epoch = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        let timeout = opts.timeout;
        let dir = opts.crash_dir.clone();
        std::thread::Builder::new()
            .name("fuzz-watchdog".into())
            .spawn(move || watch(name, epoch, timeout, dir, &done))
            .ok()
    };

    let opts_worker = opts.clone();
    let worker = std::thread::Builder::new()
        .name(format!("fuzz-{name}"))
        .stack_size(WORKER_STACK)
        .spawn(move || run_on_worker(target, &opts_worker, epoch));
    let report = match worker.map(|h| h.join()) {
        Ok(Ok(report)) => report,
        _ => {
            eprintln!("buildnet-fuzz: the {name} worker thread failed outside an input");
            std::process::exit(4);
        }
    };
    done.store(true, Ordering::SeqCst);
    if let Some(w) = watchdog {
        let _ = w.join();
    }
    report
}

fn watch(name: &str, epoch: Instant, timeout: Duration, dir: Option<PathBuf>, done: &AtomicBool) {
    while !done.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
        let generation = RUNNING.load(Ordering::SeqCst);
        if generation == 0 || generation == u64::MAX {
            continue;
        }
        let started = STARTED_NS.load(Ordering::SeqCst);
        let now = monotonic_ns(epoch);
        if RUNNING.load(Ordering::SeqCst) != generation || now.saturating_sub(started) < timeout.as_nanos() as u64 {
            continue;
        }
        // Claim the input so the worker cannot finish and reuse the buffer under us.
        if RUNNING.compare_exchange(generation, u64::MAX, Ordering::SeqCst, Ordering::SeqCst).is_err() {
            continue;
        }
        let (ptr, len) = (CUR_PTR.load(Ordering::SeqCst), CUR_LEN.load(Ordering::SeqCst));
        // SAFETY: the worker set ptr/len to its input before publishing `generation` and does
        // not touch the buffer until it swaps `generation` back, which our claim prevents.
        let input = if ptr.is_null() { Vec::new() } else { unsafe { std::slice::from_raw_parts(ptr, len).to_vec() } };
        let saved = dir.as_deref().and_then(|d| save(d, name, "hang", &input));
        let _ = writeln!(
            std::io::stderr(),
            "\nbuildnet-fuzz: {name}: input #{} ran longer than {:?} (hang){}",
            generation - 1,
            timeout,
            saved.map(|p| format!("; saved to {}", p.display())).unwrap_or_default()
        );
        std::process::exit(3);
    }
}

fn run_on_worker(mut target: Box<dyn Target>, opts: &Options, epoch: Instant) -> Report {
    FUZZ_THREAD.with(|f| f.set(true));
    let name = target.name();
    let seeds = target.seeds();
    let hints = target.hints();
    let mut report = Report {
        target: name,
        inputs: 0,
        elapsed: Duration::ZERO,
        outcomes: BTreeMap::new(),
        failures: Vec::new(),
        failures_dropped: 0,
        slowest: Duration::ZERO,
        largest_allocation: 0,
        largest_growth: 0,
        memory_guard: guard::installed(),
    };
    let start = Instant::now();
    let mut last_progress = start;
    for index in 0..opts.inputs {
        let data = input(target.as_ref(), &seeds, &hints, opts.seed, index);
        CUR_PTR.store(data.as_ptr() as *mut u8, Ordering::SeqCst);
        CUR_LEN.store(data.len(), Ordering::SeqCst);
        let t0 = monotonic_ns(epoch);
        STARTED_NS.store(t0, Ordering::SeqCst);
        RUNNING.store(index + 1, Ordering::SeqCst);

        guard::arm();
        let result = catch_unwind(AssertUnwindSafe(|| target.run(&data)));
        let usage = guard::disarm();

        if RUNNING.compare_exchange(index + 1, 0, Ordering::SeqCst, Ordering::SeqCst).is_err() {
            // The watchdog claimed this input as a hang and is ending the process.
            loop {
                std::thread::park();
            }
        }
        CUR_PTR.store(std::ptr::null_mut(), Ordering::SeqCst);
        CUR_LEN.store(0, Ordering::SeqCst);
        let took = Duration::from_nanos(monotonic_ns(epoch).saturating_sub(t0));
        report.slowest = report.slowest.max(took);
        report.largest_allocation = report.largest_allocation.max(usage.largest);
        report.largest_growth = report.largest_growth.max(usage.peak_growth);
        report.inputs += 1;

        let failure = match result {
            Err(_) => {
                let msg = LAST_PANIC.with(|p| p.borrow_mut().take()).unwrap_or_else(|| "panic".into());
                Some((FailureKind::Panic, msg))
            }
            Ok(_) if usage.over_limit() => Some((
                FailureKind::Oom,
                format!(
                    "largest allocation {} bytes, live growth {} bytes (limit {})",
                    usage.largest,
                    usage.peak_growth,
                    guard::SOFT_LIMIT
                ),
            )),
            Ok(Err(broken)) => Some((FailureKind::Oracle, broken)),
            Ok(Ok(outcome)) => {
                *report.outcomes.entry(normalise(&outcome)).or_insert(0) += 1;
                None
            }
        };
        if let Some((kind, detail)) = failure {
            *report.outcomes.entry(format!("FAILURE:{}", kind.as_str())).or_insert(0) += 1;
            if report.failures.len() < KEEP_FAILURES {
                let saved = opts.crash_dir.as_deref().and_then(|d| save(d, name, kind.as_str(), &data));
                if opts.progress {
                    eprintln!(
                        "buildnet-fuzz: {name}: input #{index}: {}: {detail}{}",
                        kind.as_str(),
                        saved.as_ref().map(|p| format!(" (saved to {})", p.display())).unwrap_or_default()
                    );
                }
                report.failures.push(Failure { index, kind, detail, input: data, saved });
            } else {
                report.failures_dropped += 1;
            }
        }
        if opts.progress && last_progress.elapsed() >= Duration::from_secs(10) {
            last_progress = Instant::now();
            eprintln!(
                "buildnet-fuzz: {name}: {} / {} inputs, {:.0}/s",
                index + 1,
                opts.inputs,
                (index + 1) as f64 / start.elapsed().as_secs_f64()
            );
        }
    }
    report.elapsed = start.elapsed();
    report
}

/// Runs one saved input through `target` under the same guards (for `--replay`).
pub fn replay(target: Box<dyn Target>, input: Vec<u8>, opts: &Options) -> Report {
    struct One {
        inner: Box<dyn Target>,
        input: Vec<u8>,
    }
    impl Target for One {
        fn name(&self) -> &'static str {
            self.inner.name()
        }
        fn seeds(&self) -> Vec<Vec<u8>> {
            vec![self.input.clone()]
        }
        fn hints(&self) -> Hints {
            Hints::default()
        }
        fn run(&mut self, input: &[u8]) -> Result<String, String> {
            self.inner.run(input)
        }
    }
    let opts = Options { inputs: 1, ..opts.clone() };
    run(Box::new(One { inner: target, input }), &opts)
}
