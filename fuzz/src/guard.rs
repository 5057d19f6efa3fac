//! The memory guard: a counting global allocator (installed by the fuzz binary and its tests with
//! `#[global_allocator]`) that watches the thread running an input.
//!
//! While a thread is *armed* every allocation it makes is counted: the largest single request and
//! the peak of its live bytes since the input started. Over [`SOFT_LIMIT`] the input is flagged as
//! an out-of-memory failure after it returns (the memory is only reserved, not touched, so the run
//! survives it). Over [`HARD_LIMIT`] the allocation is not made at all: the guard calls the runner's
//! emergency hook, which saves the input and aborts the process, as a real node would die.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// An input whose single allocation or live growth exceeds this fails as "oom".
pub const SOFT_LIMIT: usize = 64 << 20;
/// Beyond this the process would really be at risk: save the input and abort.
pub const HARD_LIMIT: usize = 1 << 30;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// Called (disarmed) when an armed thread asks for more than [`HARD_LIMIT`]; must not return.
static EMERGENCY: AtomicUsize = AtomicUsize::new(0);

/// Registers the function that saves the current input and ends the process.
pub fn set_emergency(hook: fn(usize) -> !) {
    EMERGENCY.store(hook as usize, Ordering::SeqCst);
}

/// What one armed stretch allocated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// The largest single allocation, bytes.
    pub largest: usize,
    /// The peak of live bytes above the level at [`arm`].
    pub peak_growth: usize,
}

impl Usage {
    pub fn over_limit(&self) -> bool {
        self.largest > SOFT_LIMIT || self.peak_growth > SOFT_LIMIT
    }
}

/// Starts counting this thread's allocations.
pub fn arm() {
    LIVE.with(|c| c.set(0));
    PEAK.with(|c| c.set(0));
    LARGEST.with(|c| c.set(0));
    ARMED.with(|c| c.set(true));
}

/// Stops counting and reports what happened since [`arm`].
pub fn disarm() -> Usage {
    ARMED.with(|c| c.set(false));
    Usage { largest: LARGEST.with(Cell::get), peak_growth: PEAK.with(Cell::get).max(0) as usize }
}

/// Whether this allocator is the global one (a run without it would not see OOM).
pub fn installed() -> bool {
    arm();
    let probe = std::hint::black_box(vec![0u8; 4096]);
    drop(probe);
    disarm().largest >= 4096
}

/// The counting allocator; everything is served by [`System`].
pub struct GuardedAlloc;

fn armed() -> bool {
    ARMED.try_with(Cell::get).unwrap_or(false)
}

fn grow(delta: isize, request: usize) {
    if request > HARD_LIMIT {
        emergency(request);
    }
    let live = LIVE.with(|c| {
        let v = c.get() + delta;
        c.set(v);
        v
    });
    if live > HARD_LIMIT as isize {
        emergency(live as usize);
    }
    PEAK.with(|c| c.set(c.get().max(live)));
    LARGEST.with(|c| c.set(c.get().max(request)));
}

fn emergency(bytes: usize) {
    ARMED.with(|c| c.set(false));
    let hook = EMERGENCY.load(Ordering::SeqCst);
    if hook != 0 {
        // SAFETY: only `set_emergency` stores here, always a `fn(usize) -> !`.
        let hook: fn(usize) -> ! = unsafe { std::mem::transmute::<usize, fn(usize) -> !>(hook) };
        hook(bytes);
    }
    std::process::abort();
}

unsafe impl GlobalAlloc for GuardedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if armed() {
            grow(layout.size() as isize, layout.size());
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if armed() {
            grow(layout.size() as isize, layout.size());
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if armed() {
            LIVE.with(|c| c.set(c.get() - layout.size() as isize));
        }
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if armed() {
            grow(new_size as isize - layout.size() as isize, new_size);
        }
        System.realloc(ptr, layout, new_size)
    }
}
