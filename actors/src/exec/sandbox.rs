//! Runs one package in a sandbox directory: inputs and dependencies' outputs laid out at their
//! project-relative paths, the command run as argv (or `sh -c` when the package asked for a
//! shell) in its own process group — started by the node's fork server when it is contained —
//! output captured, declared outputs stored by digest.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::contain;
use super::forkserver::{ForkServer, Served};
use super::layout::Linked;
use crate::cas::Cas;
use crate::wire::{Invocation, SandboxLevel, Task, TaskResult, OUTPUT_CHUNK, TAIL_BYTES};

fn failed(error: String, started: Instant) -> TaskResult {
    TaskResult {
        exit_code: None,
        outputs: vec![],
        output_tail: String::new(),
        duration_ms: started.elapsed().as_millis() as u64,
        cpu_ms: 0,
        error: Some(error),
    }
}

/// Reaps the child if it has exited, with its CPU time in ms. `wait4` rather than
/// `Child::try_wait` because only it reports the resources the process used.
pub(super) fn try_reap(pid: u32) -> std::io::Result<Option<(ExitStatus, u64)>> {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid value of a plain C struct; the kernel overwrites it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child with valid pointers to locals.
    let reaped = unsafe { libc::wait4(pid as libc::pid_t, &mut status, libc::WNOHANG, &mut usage) };
    match reaped {
        0 => Ok(None),
        -1 => Err(std::io::Error::last_os_error()),
        _ => Ok(Some((std::process::ExitStatus::from_raw(status), cpu_ms(&usage)))),
    }
}

/// User and system time of `usage`, in ms.
pub(super) fn cpu_ms(usage: &libc::rusage) -> u64 {
    let ms = |t: libc::timeval| t.tv_sec.max(0) as u64 * 1000 + t.tv_usec.max(0) as u64 / 1000;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

/// How often a running package's cancel flag is looked at; its exit is seen at once.
const CANCEL_CHECK: Duration = Duration::from_millis(20);

/// Waits for a child to exit without a fixed polling interval: a pidfd becomes readable the
/// moment the child exits, so a package that takes 1 ms is reaped after 1 ms, not at the next
/// tick (a 5 ms sleep loop cost every short package up to 5 ms). Kernels without pidfds (before
/// 5.3) fall back to short sleeps.
struct ExitWatch {
    pidfd: Option<std::os::fd::OwnedFd>,
}

impl ExitWatch {
    fn new(pid: u32) -> ExitWatch {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        // SAFETY: a non-negative result is a descriptor this process now owns.
        let pidfd = (fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) });
        ExitWatch { pidfd }
    }

    /// Returns when the child has exited or after `at_most`, whichever comes first.
    fn wait(&self, at_most: Duration) {
        use std::os::fd::AsRawFd;
        let Some(fd) = &self.pidfd else {
            std::thread::sleep(Duration::from_millis(1));
            return;
        };
        let mut poll = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd on the stack; an interrupted or failed poll only means the
        // caller looks again.
        unsafe { libc::poll(&mut poll, 1, at_most.as_millis() as libc::c_int) };
    }
}

/// The package was cancelled: its process group was killed and it has no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled;

/// How packages start on this node: directly, or through the containment launcher.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// The node's fork server (`None`: commands run directly, level none).
    pub launcher: Option<Arc<ForkServer>>,
    pub level: SandboxLevel,
    /// Packages run as this user (the node runs as root).
    pub user: Option<u32>,
    /// The declared tools' and runtimes' locations: readable, and their directories on PATH.
    pub read_only: Vec<PathBuf>,
}

impl Launch {
    /// The user whose packages may get their inputs as hard links to the store: one the
    /// launcher switches to (the node runs as root), which is not this process's — it cannot
    /// write or chmod the root-owned, read-only objects, and the launcher's `chown` of the
    /// sandbox leaves linked files alone (`contain::chown_tree`). A package running with the
    /// node's own rights gets copies.
    pub fn links_for(&self) -> Option<u32> {
        let contained = self.launcher.is_some() && self.level > SandboxLevel::None;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        self.user.filter(|&user| contained && user != me)
    }
}

/// Directories on every package's PATH, after the declared tools' own.
const SYSTEM_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

impl Launch {
    /// Starts the package in `dir` as the leader of its own process group, stdin /dev/null,
    /// output to `stdout` and `stderr`. Its environment is what it declared plus PATH, HOME and
    /// TMPDIR inside the sandbox, nothing of the node's.
    fn start(&self, dir: &Path, task: &Task, given: bool, stdout: OwnedFd, stderr: OwnedFd) -> Result<Running, String> {
        let argv: Vec<String> = match &task.invocation {
            Invocation::Argv(argv) => argv.clone(),
            Invocation::Shell(line) => vec!["/bin/sh".into(), "-c".into(), line.clone()],
        };
        let tmp = dir.join(TMP);
        let _ = std::fs::create_dir_all(&tmp);
        let mut path: Vec<String> = Vec::new();
        for p in &self.read_only {
            let bin = if p.is_dir() { p.join("bin") } else { p.parent().map(Path::to_path_buf).unwrap_or_default() };
            let bin = bin.display().to_string();
            if !path.contains(&bin) {
                path.push(bin);
            }
        }
        path.push(SYSTEM_PATH.into());
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), path.join(":")),
            ("HOME".into(), dir.display().to_string()),
            ("TMPDIR".into(), tmp.display().to_string()),
        ];
        env.extend(task.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        match (&self.launcher, self.level) {
            (Some(server), level) if level > SandboxLevel::None => {
                let spec = contain::Spec {
                    dir: dir.to_path_buf(),
                    read_only: self.read_only.clone(),
                    level,
                    user: self.user,
                    argv,
                    tmp: Some(tmp.clone()),
                    given,
                };
                server.start(&spec, &env, &stdout, &stderr).map(Running::Served)
            }
            _ => {
                // Batch scheduling, as the fork server's packages get it: the child inherits
                // this thread's policy, set around the spawn (see `contain::batch_scheduled`).
                let child = contain::batch_scheduled(|| {
                    Command::new(&argv[0])
                        .args(&argv[1..])
                        .current_dir(dir)
                        .env_clear()
                        .envs(env)
                        .stdin(Stdio::null())
                        .stdout(stdout)
                        .stderr(stderr)
                        .process_group(0)
                        .spawn()
                })
                .map_err(|e| format!("could not start the command: {e}"))?;
                let exit = ExitWatch::new(child.id());
                Ok(Running::Direct { child, exit })
            }
        }
    }
}

/// A started package: the daemon's own child (level none), or the fork server's.
enum Running {
    Direct { child: std::process::Child, exit: ExitWatch },
    Served(Served),
}

impl Running {
    /// The package's pid, which is also its process group.
    fn pid(&self) -> u32 {
        match self {
            Running::Direct { child, .. } => child.id(),
            Running::Served(served) => served.pid,
        }
    }

    /// Its status and CPU time (ms) once it has exited — whatever it left running in its group
    /// killed — waiting at most `at_most`; an error when that cannot be known.
    fn wait(&self, at_most: Duration) -> Result<Option<(ExitStatus, u64)>, String> {
        match self {
            Running::Direct { child, exit } => match try_reap(child.id()) {
                Ok(Some(reaped)) => {
                    kill_group(child.id());
                    Ok(Some(reaped))
                }
                Ok(None) => {
                    exit.wait(at_most);
                    Ok(None)
                }
                Err(e) => Err(format!("waiting for the command: {e}")),
            },
            // The server kills the group before it reaps the leader, while the group's id
            // cannot have been reused.
            Running::Served(served) => served.wait(at_most),
        }
    }

    /// Kills its process group and waits until it is gone (or cannot be waited for).
    fn kill(&self) {
        kill_group(self.pid());
        while let Ok(None) = self.wait(Duration::from_secs(1)) {}
    }
}

/// One output stream of a running package on its way to an [`super::OutputSink`]: the first
/// bytes go at once, then at most every 200 ms or [`OUTPUT_CHUNK`] bytes, so a chatty package
/// costs a few messages a second, not one per line. Beyond that rate, what piles up is cut to its
/// last chunk (the whole output is still in the result's tail).
struct LiveOutput {
    sink: super::OutputSink,
    pending: Vec<u8>,
    last: Option<Instant>,
}

impl LiveOutput {
    fn new(sink: super::OutputSink) -> LiveOutput {
        LiveOutput { sink, pending: Vec::new(), last: None }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        let excess = self.pending.len().saturating_sub(OUTPUT_CHUNK);
        self.pending.drain(..excess);
        if self.last.is_none_or(|t| t.elapsed() >= Duration::from_millis(200)) {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        self.last = Some(Instant::now());
        (self.sink)(text);
    }
}

/// A running package's stdout and stderr, read by the thread that waits for it: a thread per
/// stream cost two thread starts and exits per package (~14 % of the daemon's CPU in
/// 200-package builds, issue 14). Both go into one tail of the last [`TAIL_BYTES`], as they come,
/// and each to its own [`LiveOutput`].
struct OutputStreams {
    /// The streams not yet at their end.
    open: Vec<(std::fs::File, Option<LiveOutput>)>,
    tail: Vec<u8>,
}

impl OutputStreams {
    fn new(pipes: [OwnedFd; 2], sink: Option<super::OutputSink>) -> OutputStreams {
        let open = pipes.into_iter().map(|fd| (std::fs::File::from(fd), sink.clone().map(LiveOutput::new))).collect();
        OutputStreams { open, tail: Vec::new() }
    }

    fn open(&self) -> bool {
        !self.open.is_empty()
    }

    /// Waits at most `at_most` for output and reads what came; a stream at its end (or failing)
    /// is closed, its live output flushed.
    fn read_some(&mut self, at_most: Duration) {
        use std::os::fd::AsRawFd;
        let mut polled: Vec<libc::pollfd> = self
            .open
            .iter()
            .map(|(f, _)| libc::pollfd { fd: f.as_raw_fd(), events: libc::POLLIN, revents: 0 })
            .collect();
        // SAFETY: a valid array of pollfds on the heap, its length passed with it; an interrupted
        // or failed poll only means the caller looks again.
        let ready =
            unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, at_most.as_millis() as i32) };
        if ready <= 0 {
            return;
        }
        let mut buf = [0u8; 8192];
        for i in (0..polled.len()).rev() {
            if polled[i].revents == 0 {
                continue;
            }
            let (stream, live) = &mut self.open[i];
            match stream.read(&mut buf) {
                Ok(n) if n > 0 => {
                    self.tail.extend_from_slice(&buf[..n]);
                    let excess = self.tail.len().saturating_sub(TAIL_BYTES);
                    self.tail.drain(..excess);
                    if let Some(live) = live {
                        live.push(&buf[..n]);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                _ => {
                    if let Some(live) = live {
                        live.flush();
                    }
                    self.open.remove(i);
                }
            }
        }
    }

    /// Reads until both streams end.
    fn read_to_end(&mut self) {
        while self.open() {
            self.read_some(CANCEL_CHECK);
        }
    }
}

/// Runs a task under `sandboxes`; `cancel` kills it; its output also goes to `output` as it is
/// printed. The sandbox comes back with the result as [`Used`], for the caller to release
/// (empty into the pool, or remove) — or released when dropped: the executor answers first and
/// empties the sandbox after, so the ~1–2 ms of emptying it (more for a package with many
/// inputs) is not on the build's critical path — at a build's tail it was the wait between the
/// last compile and the link.
pub fn run(
    cas: &Cas,
    sandboxes: &Path,
    task: &Task,
    launch: &Launch,
    cancel: &Arc<AtomicBool>,
    output: Option<super::OutputSink>,
) -> (Result<TaskResult, Cancelled>, Used) {
    let started = Instant::now();
    let build_dir = sandboxes.join(&task.build_id);
    let dir: PathBuf = build_dir.join(task.sandbox_name());
    // Only where nothing the package started can outlive it — its PID namespace died with it —
    // may its directory serve another package: a survivor could still write there.
    let pool = (launch.launcher.is_some() && launch.level.has_namespaces()).then(|| sandboxes.join(FREE_SANDBOXES));
    let wanted = Wanted::of(task, launch.links_for().is_some());
    let mut linked = match BuildDirs::enter(&build_dir).and_then(|()| make_sandbox(pool.as_deref(), &dir, &wanted)) {
        Ok(kept) => kept,
        Err(e) => {
            BuildDirs::leave(&build_dir);
            return (Ok(failed(format!("sandbox {}: {e}", dir.display()), started)), Used::nothing());
        }
    };
    let result = run_in(cas, &dir, task, launch, cancel, started, output, &mut linked);
    if pool.is_some() {
        returning();
    }
    (result, Used { sandbox: Some(UsedSandbox { pool, dir, build_dir, wanted: wanted.dirs, linked }) })
}

/// A sandbox a package has finished with, until [`Used::release`] empties it into its pool (or
/// removes it) and counts it out of its build's directory. Dropped unreleased — the blocking
/// task meant to release it never ran (the node stopping) or panicked — it is released then.
#[must_use = "a used sandbox is released, or it stays on disk"]
pub struct Used {
    sandbox: Option<UsedSandbox>,
}

struct UsedSandbox {
    pool: Option<PathBuf>,
    dir: PathBuf,
    build_dir: PathBuf,
    /// The directories its package's files went into.
    wanted: BTreeSet<String>,
    /// Its inputs that are hard links to stored objects.
    linked: Vec<Linked>,
}

impl Used {
    fn nothing() -> Used {
        Used { sandbox: None }
    }

    pub fn release(mut self) {
        self.release_now();
    }

    fn release_now(&mut self) {
        if let Some(used) = self.sandbox.take() {
            release_sandbox(used.pool.as_deref(), &used.dir, &used.wanted, &used.linked);
            BuildDirs::leave(&used.build_dir);
            if used.pool.is_some() {
                returned_one();
            }
        }
    }
}

impl Drop for Used {
    fn drop(&mut self) {
        self.release_now();
    }
}

/// What a package wants its sandbox to hold before its inputs are laid out: the directories its
/// files go into, and — when its inputs are hard links to the store — the (path, digest) of each
/// input a link may serve (not executable: a link has the object's mode).
struct Wanted {
    dirs: BTreeSet<String>,
    links: BTreeSet<(String, String)>,
}

impl Wanted {
    fn of(task: &Task, linked_inputs: bool) -> Wanted {
        let links = task.files.iter().filter(|f| linked_inputs && !f.executable);
        Wanted { dirs: super::layout::dirs(task), links: links.map(|f| (f.path.clone(), f.digest.clone())).collect() }
    }

    fn has_link(&self, link: &Linked) -> bool {
        self.links.contains(&(link.path.clone(), link.digest.clone()))
    }
}

/// Emptied sandboxes waiting for the next package, in each sandbox root. A directory made anew
/// costs an inode, and on ext4 without a journal (this machine's disk) allocating one scans past
/// every inode freed in the last seconds (`recently_deleted`): a sandbox and its `.tmp` made and
/// removed per package were 39 % of the daemon's CPU in a 200-package build, and the directories
/// its inputs go into (`src/`, `include/`, `obj/`) ~190 ms of CPU per c-compdb build.
const FREE_SANDBOXES: &str = ".free";
/// Each package's TMPDIR, inside its sandbox (no project path may lie under it: `check_path`).
const TMP: &str = crate::wire::SANDBOX_TMP;

/// An emptied sandbox in a pool, with the empty directories kept in it (relative to it, each
/// after its parent) for a package that lays out its files in the same ones, and the inputs kept
/// in them: hard links to stored objects, for a package that wants the same object at the same
/// path (a C project's compiles all want the same headers). Keeping a link saves its `link` and
/// `unlink` and the path walks that check its place.
struct Free {
    path: PathBuf,
    dirs: Vec<String>,
    links: Vec<Linked>,
}

/// The emptied sandboxes in each pool directory, as this process put them there: taking one is
/// then a rename, not a listing of the pool (what a previous run left there is cleared at start).
static FREE: std::sync::Mutex<Vec<Free>> = std::sync::Mutex::new(Vec::new());

/// Takes the emptied sandbox of `pool` that keeps the most of the `wanted` directories and inputs
/// (the one freed last among equals) off the free list.
fn take_free(pool: &Path, wanted: &Wanted) -> Option<Free> {
    let mut free = FREE.lock().ok()?;
    let (at, _) = free.iter().enumerate().filter(|(_, f)| f.path.parent() == Some(pool)).max_by_key(|&(i, f)| {
        let dirs = f.dirs.iter().filter(|d| wanted.dirs.contains(*d)).count();
        (dirs + f.links.iter().filter(|l| wanted.has_link(l)).count(), i)
    })?;
    Some(free.swap_remove(at))
}

/// The builds' directories (`<root>/<build>`, each holding that build's sandboxes) with how
/// many of their sandboxes are in use. One in use is never removed; one no longer in use leaves
/// its place when the next build's is made (or, for a build still running then, with its last
/// sandbox), so a node keeps at most one empty build directory per root instead of one per build
/// it ever ran (they piled up until the node restarted), and a
/// build whose packages reach this node one at a time does not make its directory per package.
///
/// Leaving is a rename aside (`<root>/.gone-…`); the removal waits for the next release, after a
/// package's result has gone back. Removed in place, it held up the next build's first package
/// on each node, and every other package start behind the lock: an `rmdir` frees the directory's
/// block, and on this machine's ext4 (no journal, mounted `discard`) that waits for the disk to
/// trim it — 0.3–1.6 ms at a build's start (`perf` syscall tracepoints, issue 14).
struct BuildDirs;

static BUILD_DIRS: std::sync::Mutex<Vec<(PathBuf, usize)>> = std::sync::Mutex::new(Vec::new());

/// Build directories moved aside by [`BuildDirs::enter`], for the next release to remove.
static GONE_BUILD_DIRS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// The name a build directory is moved aside to: no build's (ids do not start with a dot).
const GONE_PREFIX: &str = ".gone-";

impl BuildDirs {
    /// Counts a sandbox in `build_dir`, making the directory for the first one.
    fn enter(build_dir: &Path) -> std::io::Result<()> {
        let mut dirs = BUILD_DIRS.lock().map_err(|_| std::io::Error::other("the build directories' lock"))?;
        if let Some((_, users)) = dirs.iter_mut().find(|(d, _)| d == build_dir) {
            *users += 1;
            return Ok(());
        }
        dirs.retain(|(d, users)| *users > 0 || !Self::moved_aside(d));
        if let Some(root) = build_dir.parent() {
            private_dir(root)?;
        }
        std::fs::create_dir_all(build_dir)?;
        dirs.push((build_dir.to_path_buf(), 1));
        Ok(())
    }

    /// Counts a sandbox out of `build_dir` — which stays while it is its root's newest, and leaves
    /// with its last sandbox when a newer build's was made meanwhile (concurrent builds) — then
    /// removes the build directories moved aside.
    fn leave(build_dir: &Path) {
        if let Ok(mut dirs) = BUILD_DIRS.lock() {
            if let Some(at) = dirs.iter().position(|(d, _)| d == build_dir) {
                dirs[at].1 = dirs[at].1.saturating_sub(1);
                let newer = dirs[at + 1..].iter().any(|(d, _)| d.parent() == build_dir.parent());
                if dirs[at].1 == 0 && newer && Self::moved_aside(build_dir) {
                    dirs.remove(at);
                }
            }
        }
        let gone = GONE_BUILD_DIRS.lock().map(|mut list| std::mem::take(&mut *list)).unwrap_or_default();
        for dir in gone {
            // The node's own directory, under its private sandboxes root; a sandbox left in it
            // (one that could not be removed) goes with it.
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// Moves the unused build directory `dir` aside for the next release to remove; true when it
    /// is no longer at its place (moved, or gone already), false when it stays (and is kept
    /// counted, to be tried again).
    fn moved_aside(dir: &Path) -> bool {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let aside =
            dir.with_file_name(format!("{GONE_PREFIX}{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        match std::fs::rename(dir, &aside) {
            Ok(()) => {
                if let Ok(mut list) = GONE_BUILD_DIRS.lock() {
                    list.push(aside);
                }
                true
            }
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        }
    }
}

/// Makes sure the node's sandboxes directory `root` is a directory of this user's alone (0700),
/// making it (and, with the default mode, what is missing above it) if need be: packages' files
/// are not for other users of the machine. One left by an older version is made private. On a
/// volume others can write to, where the node's id is no secret, a link planted at `root` or
/// the directory above, or a directory above of another user's (who could move `root` away and
/// put a link in its place), is refused rather than used.
fn private_dir(root: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let me = nix::unistd::geteuid().as_raw();
    let refuse = |dir: &Path| {
        std::io::Error::other(format!(
            "{} is not a directory of this user's (a link, a file, or another user's); sandboxes are not made there",
            dir.display()
        ))
    };
    if let Some(above) = root.parent() {
        std::fs::create_dir_all(above)?;
        let meta = std::fs::symlink_metadata(above)?;
        if !meta.is_dir() || (meta.uid() != me && meta.uid() != 0) {
            return Err(refuse(above));
        }
    }
    match std::fs::DirBuilder::new().mode(0o700).create(root) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        other => other?,
    }
    let meta = std::fs::symlink_metadata(root)?;
    if !meta.is_dir() || meta.uid() != me {
        return Err(refuse(root));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Makes the sandbox `dir` for a package that wants what `wanted` says: an emptied one from
/// `pool`, moved into place, or a new one. A pooled sandbox's kept inputs and directories that
/// this package does not want are removed, so it holds exactly what a new one would plus inputs
/// already in place; returns those (for [`super::layout::inputs`], which lays out the others).
fn make_sandbox(pool: Option<&Path>, dir: &Path, wanted: &Wanted) -> std::io::Result<Vec<Linked>> {
    let _ = std::fs::remove_dir_all(dir);
    // One that is gone (its root was cleared) is forgotten: then the next.
    while let Some(free) = pool.and_then(|pool| take_free(pool, wanted).or_else(|| returned(pool, wanted))) {
        if std::fs::rename(&free.path, dir).is_ok() {
            let (kept, unwanted): (Vec<Linked>, Vec<Linked>) = free.links.into_iter().partition(|l| wanted.has_link(l));
            for link in unwanted {
                std::fs::remove_file(dir.join(&link.path))?;
            }
            // Children before their parents (the list has each after its parent).
            for unwanted in free.dirs.iter().rev().filter(|d| !wanted.dirs.contains(*d)) {
                std::fs::remove_dir(dir.join(unwanted))?;
            }
            return Ok(kept);
        }
    }
    std::fs::create_dir(dir)?;
    Ok(Vec::new())
}

/// Sandboxes on their way back to a pool: a package's result goes back before its sandbox is
/// emptied ([`Used`]), so in a chain of packages the next one asks for a sandbox while the last
/// is still being emptied. It waits for that, briefly, rather than make a directory anew (each
/// new inode is what the pool saves on this machine's ext4). One count for every pool: a wait
/// for another volume's sandbox costs at most [`RETURN_WAIT`].
static RETURNING: (std::sync::Mutex<usize>, std::sync::Condvar) = (std::sync::Mutex::new(0), std::sync::Condvar::new());
/// How long a package waits for a sandbox on its way back, at most (emptying one takes 1–2 ms).
const RETURN_WAIT: Duration = Duration::from_millis(50);

/// One more sandbox on its way back to a pool.
fn returning() {
    if let Ok(mut n) = RETURNING.0.lock() {
        *n += 1;
    }
}

/// A sandbox is back in its pool (or removed).
fn returned_one() {
    if let Ok(mut n) = RETURNING.0.lock() {
        *n = n.saturating_sub(1);
    }
    RETURNING.1.notify_all();
}

/// When sandboxes are on their way back, waits for one (at most [`RETURN_WAIT`]) and takes from
/// `pool` as [`take_free`] does.
fn returned(pool: &Path, wanted: &Wanted) -> Option<Free> {
    let guard = RETURNING.0.lock().ok()?;
    let before = *guard;
    if before == 0 {
        return None;
    }
    drop(RETURNING.1.wait_timeout_while(guard, RETURN_WAIT, |n| *n >= before).ok()?);
    take_free(pool, wanted)
}

/// Empties the sandbox `dir` into `pool`, keeping the `wanted` directories its package's files
/// went into and the inputs in them that are still the `linked` objects, or removes it (no pool,
/// or it cannot be made fit for another package).
fn release_sandbox(pool: Option<&Path>, dir: &Path, wanted: &BTreeSet<String>, linked: &[Linked]) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let pooled = pool.is_some_and(|pool| {
        let Ok((dirs, links)) = empty_for_reuse(dir, wanted, linked) else {
            return false;
        };
        let free = pool.join(format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        let moved = std::fs::rename(dir, &free)
            .or_else(|_| std::fs::create_dir(pool).and_then(|()| std::fs::rename(dir, &free)))
            .is_ok();
        if let (true, Ok(mut list)) = (moved, FREE.lock()) {
            list.push(Free { path: free, dirs, links });
        }
        moved
    });
    if !pooled {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Empties the sandbox `dir` a package has finished with, for the next package: its `.tmp` and
/// the `wanted` directories are kept (emptied, mode 0755) when [`reset_dir`] finds them fit, and
/// in them the inputs that are still the hard links to stored objects laid out as `linked`;
/// everything else goes. Returns the kept directories besides `.tmp`, each after its parent, and
/// the kept inputs. The package owned all of it and may have left anything there — files, links
/// where directories were, modes, extended attributes, inode flags, another file or another
/// object at an input's path — so nothing is followed, a directory that is not plainly a
/// directory is removed, not reused, and an input is kept only if the entry at its path is the
/// very object (device, inode and owner: [`crate::cas::Object::is`]), whose content and mode the
/// package could not change. An error: the sandbox itself is not fit (or could not be emptied)
/// and must be removed.
fn empty_for_reuse(
    dir: &Path,
    wanted: &BTreeSet<String>,
    linked: &[Linked],
) -> std::io::Result<(Vec<String>, Vec<Linked>)> {
    // Its parent, the build's directory, is the node's own: what a directory made here carries.
    let like = dir.parent().map(DirTraits::of).transpose()?;
    if !reset_dir(dir, like.as_ref())? {
        return Err(std::io::Error::other("the sandbox was changed in ways it cannot be reset from"));
    }
    let mut kept =
        Kept { dirs: Vec::new(), links: Vec::new(), linked: linked.iter().map(|l| (l.path.as_str(), l)).collect() };
    empty_dir(dir, "", wanted, like.as_ref(), &mut kept)?;
    kept.dirs.retain(|d| d != TMP);
    Ok((kept.dirs, kept.links))
}

/// What [`empty_dir`] keeps, and the inputs it may keep by path.
struct Kept<'a> {
    dirs: Vec<String>,
    links: Vec<Linked>,
    linked: std::collections::BTreeMap<&'a str, &'a Linked>,
}

/// Removes everything in `dir` (at `prefix` in its sandbox) but the directories of `wanted` (and
/// the sandbox's `.tmp`) that [`reset_dir`] passes, which are emptied in turn and added to
/// `kept`, and the inputs still linked to their objects.
fn empty_dir(
    dir: &Path,
    prefix: &str,
    wanted: &BTreeSet<String>,
    like: Option<&DirTraits>,
    kept: &mut Kept,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let rel = entry.file_name().to_str().map(|name| {
            if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}/{name}")
            }
        });
        // The type of the entry itself (a link is a link), from the listing.
        if !entry.file_type()?.is_dir() {
            // `DirEntry::metadata` does not follow a link.
            let input = rel.as_deref().and_then(|rel| kept.linked.get(rel).copied());
            match input {
                Some(input) if input.object.is(&entry.metadata()?) => kept.links.push(input.clone()),
                _ => std::fs::remove_file(&path)?,
            }
            continue;
        }
        match rel {
            Some(rel) if (wanted.contains(&rel) || rel == TMP) && reset_dir(&path, like)? => {
                kept.dirs.push(rel.clone());
                empty_dir(&path, &rel, wanted, like, kept)?;
            }
            _ => std::fs::remove_dir_all(&path)?,
        }
    }
    Ok(())
}

/// What a package may have set on a directory it owned that would reach the next package
/// through it, and a mode reset does not undo: extended attributes (a default ACL decides the
/// modes of files made in it; `user.*` ones carry data) and inode flags an owner can set
/// (`chattr`: synchronous writes, case-insensitive names, ...).
#[derive(Debug, PartialEq, Eq)]
struct DirTraits {
    /// Attributes other than `security.*` (which the kernel's security modules set, not a package).
    xattrs: bool,
    /// The flags an owner can set (`FS_IOC_GETFLAGS`), `None` where the filesystem has none.
    flags: Option<libc::c_int>,
}

/// Inode flags an owner may set (see `chattr(1)`): the user-modifiable set with casefold,
/// project inheritance, DAX, no-CoW, no-compression and data journalling. Flags the filesystem
/// sets by itself (extents, an indexed directory, inline data) are not compared.
const OWNER_FLAGS: libc::c_int = 0x0003_80ff | 0x4000_0000 | 0x2000_0000 | 0x0200_0000 | 0x0080_0000 | 0x0400 | 0x4000;

impl DirTraits {
    fn of(dir: &Path) -> std::io::Result<DirTraits> {
        use std::os::unix::fs::OpenOptionsExt;
        let file =
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW).open(dir)?;
        Self::of_open(&file)
    }

    fn of_open(dir: &std::fs::File) -> std::io::Result<DirTraits> {
        use std::os::fd::AsRawFd;
        let fd = dir.as_raw_fd();
        let mut names = [0u8; 1024];
        // SAFETY: the buffer and its length are valid for the call; the kernel writes at most that.
        let len = unsafe { libc::flistxattr(fd, names.as_mut_ptr().cast(), names.len()) };
        let xattrs = match len {
            -1 => match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::ENOTSUP) => false,
                // More names than fit: certainly more than the security modules' own.
                Some(libc::ERANGE) => true,
                _ => return Err(std::io::Error::last_os_error()),
            },
            len => names[..len as usize].split(|&b| b == 0).any(|n| !n.is_empty() && !n.starts_with(b"security.")),
        };
        let mut flags: libc::c_int = 0;
        // SAFETY: FS_IOC_GETFLAGS writes one int to the pointer (declared as a long, read and
        // written as an int by every filesystem).
        let got = unsafe { libc::ioctl(fd, FS_IOC_GETFLAGS as _, &mut flags) };
        let flags = (got == 0).then_some(flags & OWNER_FLAGS);
        Ok(DirTraits { xattrs, flags })
    }
}

/// `_IOR('f', 1, long)`.
const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;

/// Makes a directory a package had fit for the next one: mode 0755, and true if it is a
/// directory (not followed if a link) carrying no extended attribute and no inode flag beyond
/// what a directory made beside it (`like`) has; false: it must be removed instead.
fn reset_dir(dir: &Path, like: Option<&DirTraits>) -> std::io::Result<bool> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    // Nothing follows a link: the directory is opened without following one (and its mode
    // then set through the descriptor), so a link swapped in is refused, not chmodded.
    let file = match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW).open(dir)
    {
        Ok(file) => file,
        // Its mode may forbid reading it to a node that is not root: the mode is the package's
        // to change, so it is reset first, on the entry that was listed as a directory.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            if !std::fs::symlink_metadata(dir)?.is_dir() {
                return Ok(false);
            }
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW).open(dir)?
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => return Ok(false),
        Err(e) => return Err(e),
    };
    file.set_permissions(std::fs::Permissions::from_mode(0o755))?;
    let traits = DirTraits::of_open(&file)?;
    Ok(!traits.xattrs && like.is_none_or(|like| traits.flags == like.flags))
}

/// Lays out the task's inputs in `dir` (those in `linked` are in place) and runs it; every input
/// linked to the store is added to `linked`.
#[allow(clippy::too_many_arguments)]
fn run_in(
    cas: &Cas,
    dir: &Path,
    task: &Task,
    launch: &Launch,
    cancel: &Arc<AtomicBool>,
    started: Instant,
    output: Option<super::OutputSink>,
    linked: &mut Vec<Linked>,
) -> Result<TaskResult, Cancelled> {
    // Inputs at their paths, never through a symbolic link (see `layout`).
    if let Err(e) = super::layout::inputs(cas, dir, task, launch.links_for(), linked) {
        return Ok(failed(e, started));
    }
    let ((out_read, out_write), (err_read, err_write)) = match pipe().and_then(|out| Ok((out, pipe()?))) {
        Ok(pipes) => pipes,
        Err(e) => return Ok(failed(format!("could not create the output pipes: {e}"), started)),
    };
    // A package that runs as another user gets its sandbox given to it here, where what was
    // laid out is known, rather than by the launcher walking all of it (the walk and a stat per
    // input were the most of the fork server's time per package: a C compile has every header).
    let given = match launch.links_for() {
        Some(user) => match give_sandbox(dir, task, linked, user) {
            Ok(()) => true,
            Err(e) => return Ok(failed(format!("sandbox {}: giving it to user {user}: {e}", dir.display()), started)),
        },
        None => false,
    };
    let running = match launch.start(dir, task, given, out_write, err_write) {
        Ok(r) => r,
        Err(e) => return Ok(failed(e, started)),
    };
    let mut streams = OutputStreams::new([out_read, err_read], output);
    let (status, cpu_ms) = loop {
        if cancel.load(Ordering::SeqCst) {
            running.kill();
            streams.read_to_end();
            return Err(Cancelled);
        }
        // The output ends when the package and its group do, so while it flows its exit is only
        // looked for in passing; once both streams are closed, it is waited for.
        let waited = if streams.open() {
            streams.read_some(CANCEL_CHECK);
            running.wait(Duration::ZERO)
        } else {
            running.wait(CANCEL_CHECK)
        };
        match waited {
            Ok(Some(ended)) => break ended,
            Ok(None) => {}
            Err(e) => {
                // The launcher is gone: its packages go too, and nobody will reap them here.
                kill_group(running.pid());
                return Ok(failed(e, started));
            }
        }
    };
    // What its group printed last (the group is gone, so the ends come at once).
    streams.read_to_end();
    let output_tail = String::from_utf8_lossy(&streams.tail).into_owned();
    let mut result =
        TaskResult { exit_code: status.code(), outputs: vec![], output_tail, duration_ms: 0, cpu_ms, error: None };
    if status.success() {
        // Regular files only, opened without following a link (see `layout`).
        match super::layout::outputs(cas, dir, task) {
            Ok(outputs) => result.outputs = outputs,
            Err(e) => result.error = Some(e),
        }
    } else {
        result.error = Some(match status.code() {
            Some(code) => format!("exited with status {code}"),
            None => "killed by a signal".into(),
        });
    }
    result.duration_ms = started.elapsed().as_millis() as u64;
    Ok(result)
}

/// Gives the sandbox `dir`, just laid out for `task`, to `user`: the sandbox, its `.tmp` and the
/// directories the task's files go into, and every input that is not a hard link to a stored
/// object (those stay the store's, read-only: see `contain::chown_tree`). A pooled sandbox's
/// kept directories are the user's already; giving them again costs a call each, not a walk.
fn give_sandbox(dir: &Path, task: &Task, linked: &[Linked], user: u32) -> std::io::Result<()> {
    use std::os::unix::fs::lchown;
    let give = |path: &Path| lchown(path, Some(user), Some(user));
    std::fs::create_dir_all(dir.join(TMP))?;
    give(dir)?;
    give(&dir.join(TMP))?;
    for d in super::layout::dirs(task) {
        give(&dir.join(d))?;
    }
    let links: BTreeSet<&str> = linked.iter().map(|l| l.path.as_str()).collect();
    for f in task.files.iter().filter(|f| !links.contains(f.path.as_str())) {
        give(&dir.join(&f.path))?;
    }
    Ok(())
}

/// A pipe whose ends are closed on exec (the package gets its end through dup2).
fn pipe() -> nix::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
}

fn kill_group(pid: u32) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
    unsafe {
        libc::kill(-(pid as i32), libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sandboxes_directory_is_private_and_never_reached_through_a_link() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        let root = tmp.path().join("volume/buildnet-sandboxes/node");
        private_dir(&root).expect("made");
        assert_eq!(mode(&root), 0o700);
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        private_dir(&root).expect("there already");
        assert_eq!(mode(&root), 0o700, "made private again");

        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).expect("mkdir");
        let linked = tmp.path().join("volume/buildnet-sandboxes/other");
        std::os::unix::fs::symlink(&elsewhere, &linked).expect("link");
        assert!(private_dir(&linked).is_err(), "a link at the node's directory");
        let above = tmp.path().join("volume2/buildnet-sandboxes");
        std::fs::create_dir_all(above.parent().expect("parent")).expect("mkdir");
        std::os::unix::fs::symlink(&elsewhere, &above).expect("link");
        assert!(private_dir(&above.join("node")).is_err(), "a link at the directory above");
        assert_eq!(std::fs::read_dir(&elsewhere).expect("list").count(), 0, "nothing made through either");
    }

    /// [`super::run`] with its sandbox released before the result is looked at, as most tests
    /// want (the used sandbox is dropped at once).
    fn run(
        cas: &Cas,
        sandboxes: &Path,
        task: &Task,
        launch: &Launch,
        cancel: &Arc<AtomicBool>,
        output: Option<crate::exec::OutputSink>,
    ) -> Result<TaskResult, Cancelled> {
        super::run(cas, sandboxes, task, launch, cancel, output).0
    }
    use crate::wire::FileRef;

    fn setup() -> (tempfile::TempDir, Cas) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cas = Cas::open(dir.path().join("cas")).expect("cas");
        (dir, cas)
    }

    fn file(cas: &Cas, dir: &Path, path: &str, text: &str) -> FileRef {
        let p = dir.join("src-files").join(path.replace('/', "_"));
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
        let (digest, size) = cas.put_file(&p).expect("put");
        FileRef { path: path.into(), digest, executable: false, size }
    }

    fn task(invocation: Invocation, files: Vec<FileRef>, outputs: &[&str]) -> Task {
        Task {
            build_id: "b1".into(),
            package: "p".into(),
            invocation,
            env: Default::default(),
            files,
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            tools: vec![],
        }
    }

    #[test]
    fn inputs_appear_at_their_paths_and_outputs_are_stored() {
        let (dir, cas) = setup();
        let input = file(&cas, dir.path(), "src/in.txt", "hello");
        let t = task(
            Invocation::Shell("mkdir -p out && tr a-z A-Z < src/in.txt > out/up.txt && echo done".into()),
            vec![input],
            &["out/up.txt"],
        );
        let r =
            run(&cas, &dir.path().join("sandboxes"), &t, &Launch::default(), &Arc::new(AtomicBool::new(false)), None)
                .expect("ran");
        assert!(r.success(), "{r:?}");
        assert_eq!(r.output_tail.trim(), "done");
        assert_eq!(cas.read(&r.outputs[0].digest).expect("read"), b"HELLO");
        assert!(!dir.path().join("sandboxes/b1/p").exists(), "the sandbox is removed");
    }

    #[test]
    fn a_package_runs_under_batch_scheduling_and_its_sandbox_waits_for_the_release() {
        let (dir, cas) = setup();
        // Field 41 of stat is the scheduling policy (SCHED_BATCH is 3): `cut`'s own, inherited
        // from the shell the node started.
        let t = task(Invocation::Shell("cut -d' ' -f41 /proc/self/stat".into()), vec![], &[]);
        let sandboxes = dir.path().join("sandboxes");
        let (r, used) = super::run(&cas, &sandboxes, &t, &Launch::default(), &Arc::new(AtomicBool::new(false)), None);
        let r = r.expect("ran");
        assert!(r.success(), "{r:?}");
        assert_eq!(r.output_tail.trim(), "3", "SCHED_BATCH");
        assert!(sandboxes.join("b1/p").is_dir(), "the sandbox is there until it is released");
        used.release();
        assert!(!sandboxes.join("b1/p").exists(), "released, the sandbox is removed");
    }

    #[test]
    fn argv_is_not_interpreted_by_a_shell() {
        let (dir, cas) = setup();
        let t = task(Invocation::Argv(vec!["/bin/echo".into(), "$HOME; rm -rf /".into()]), vec![], &[]);
        let r = run(&cas, &dir.path().join("s"), &t, &Launch::default(), &Arc::new(AtomicBool::new(false)), None)
            .expect("ran");
        assert_eq!(r.output_tail.trim(), "$HOME; rm -rf /");
    }

    #[test]
    fn failures_missing_outputs_and_cancellation_are_reported() {
        let (dir, cas) = setup();
        let cancel = Arc::new(AtomicBool::new(false));
        let r = run(
            &cas,
            &dir.path().join("s"),
            &task(Invocation::Shell("echo broken >&2; exit 3".into()), vec![], &[]),
            &Launch::default(),
            &cancel,
            None,
        )
        .expect("ran");
        assert_eq!((r.exit_code, r.error.as_deref()), (Some(3), Some("exited with status 3")));
        assert!(r.output_tail.contains("broken"));
        let r = run(
            &cas,
            &dir.path().join("s"),
            &task(Invocation::Shell("true".into()), vec![], &["nothing.o"]),
            &Launch::default(),
            &cancel,
            None,
        )
        .expect("ran");
        assert_eq!(r.error.as_deref(), Some("output 'nothing.o' was not produced"));
        let r = run(
            &cas,
            &dir.path().join("s"),
            &task(Invocation::Argv(vec!["/no/such/tool".into()]), vec![], &[]),
            &Launch::default(),
            &cancel,
            None,
        )
        .expect("ran");
        assert!(r.error.expect("error").starts_with("could not start"));
        let flag = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            flag.store(true, Ordering::SeqCst);
        });
        let started = Instant::now();
        let r = run(
            &cas,
            &dir.path().join("s"),
            &task(Invocation::Shell("sleep 30 & sleep 30".into()), vec![], &[]),
            &Launch::default(),
            &cancel,
            None,
        );
        assert_eq!(r, Err(Cancelled));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn output_streams_while_the_package_runs() {
        let (dir, cas) = setup();
        let seen = Arc::new(std::sync::Mutex::new(Vec::<(Duration, String)>::new()));
        let started = Instant::now();
        let sink: super::super::OutputSink = {
            let seen = seen.clone();
            Arc::new(move |chunk| seen.lock().expect("lock").push((started.elapsed(), chunk)))
        };
        let t = task(Invocation::Shell("echo first; sleep 1; echo second".into()), vec![], &[]);
        let r = run(&cas, &dir.path().join("s"), &t, &Launch::default(), &Arc::new(AtomicBool::new(false)), Some(sink))
            .expect("ran");
        assert!(r.success());
        let seen = seen.lock().expect("lock").clone();
        let first = seen.iter().find(|(_, c)| c.contains("first")).expect("first line streamed");
        assert!(first.0 < Duration::from_millis(900), "it came before the package ended: {seen:?}");
        assert!(seen.iter().any(|(_, c)| c.contains("second")), "{seen:?}");
    }

    fn wanted(dirs: &[&str]) -> BTreeSet<String> {
        dirs.iter().map(|d| d.to_string()).collect()
    }

    /// Makes `dir` as `run` does (its build's directory counted, then the sandbox).
    fn made(pool: &Path, dir: &Path, dirs: &BTreeSet<String>) {
        BuildDirs::enter(dir.parent().expect("build dir")).expect("build dir");
        let kept = make_sandbox(Some(pool), dir, &Wanted { dirs: dirs.clone(), links: BTreeSet::new() }).expect("made");
        assert!(kept.is_empty());
    }

    fn released(pool: Option<&Path>, dir: &Path, dirs: &BTreeSet<String>) {
        release_sandbox(pool, dir, dirs, &[]);
        BuildDirs::leave(dir.parent().expect("build dir"));
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut found = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("list").flatten() {
                let rel = e.path().strip_prefix(dir).expect("inside").display().to_string();
                if e.file_type().expect("type").is_dir() {
                    stack.push(e.path());
                    found.push(format!("{rel}/"));
                } else {
                    found.push(rel);
                }
            }
        }
        found.sort();
        found
    }

    /// A build still running when the next one's directory is made leaves with its last
    /// sandbox; the newest build's directory stays after its last, for its next package. After
    /// concurrent builds, at most that one is left (a tester counted three).
    #[test]
    fn a_build_directory_leaves_with_its_last_sandbox_once_a_newer_one_is_made() {
        let root = tempfile::tempdir().expect("tempdir");
        let (first, second) = (root.path().join("b1/p"), root.path().join("b2/q"));
        made(&root.path().join(FREE_SANDBOXES), &first, &wanted(&[]));
        made(&root.path().join(FREE_SANDBOXES), &second, &wanted(&[]));
        assert!(root.path().join("b1").is_dir(), "in use when the newer one was made");
        released(None, &first, &wanted(&[]));
        let gone = || !root.path().join("b1").exists();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !gone() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(gone(), "left with its last sandbox, a newer build's directory being there");
        released(None, &second, &wanted(&[]));
        assert!(root.path().join("b2").is_dir(), "the newest stays for its build's next package");
    }

    #[test]
    fn sandboxes_are_emptied_into_the_pool_and_reused() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let root = tempfile::tempdir().expect("tempdir");
        let pool = root.path().join(FREE_SANDBOXES);
        let dir = root.path().join("b1/p");
        let dirs = wanted(&["out", "out/deep"]);
        made(&pool, &dir, &dirs);
        std::fs::create_dir_all(dir.join(".tmp/t")).expect("tmp");
        std::fs::create_dir_all(dir.join("out/deep")).expect("out");
        std::fs::create_dir_all(dir.join("mine/own")).expect("a directory the package made");
        std::fs::write(dir.join("out/deep/o.txt"), "o").expect("file");
        std::fs::write(dir.join(".tmp/x"), "x").expect("file");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        std::fs::set_permissions(dir.join("out"), std::fs::Permissions::from_mode(0o2777)).expect("chmod");
        let inode = std::fs::metadata(&dir).expect("meta").ino();
        released(Some(&pool), &dir, &dirs);
        assert!(!dir.exists());
        let free: Vec<PathBuf> = std::fs::read_dir(&pool).expect("pool").flatten().map(|e| e.path()).collect();
        assert_eq!(free.len(), 1);
        assert_eq!(listing(&free[0]), [".tmp/", "out/", "out/deep/"], "emptied; what the package made is gone");
        for d in ["", ".tmp", "out", "out/deep"] {
            assert_eq!(std::fs::metadata(free[0].join(d)).expect("meta").mode() & 0o7777, 0o755, "{d}");
        }

        // A package that lays out files only in `out/` gets the sandbox without `out/deep/`.
        let next = root.path().join("b2/q");
        made(&pool, &next, &wanted(&["out"]));
        assert_eq!(std::fs::metadata(&next).expect("meta").ino(), inode, "the pooled sandbox is reused");
        assert_eq!(listing(&next), [".tmp/", "out/"]);
        assert_eq!(std::fs::read_dir(&pool).expect("pool").count(), 0);
        assert!(!root.path().join("b1").exists(), "the last build's directory went when the next one's came");
        released(None, &next, &wanted(&["out"]));
        // Removed by the next release: this one, or another test's that took the list first.
        let aside = || {
            std::fs::read_dir(root.path())
                .expect("root")
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(GONE_PREFIX))
                .count()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while aside() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(aside(), 0, "the directory moved aside is removed by the next release");
        assert!(!next.exists());
        assert_eq!(std::fs::read_dir(&pool).expect("pool").count(), 0, "without a pool it is removed");
    }

    #[test]
    fn a_kept_directory_is_what_a_new_one_would_be_or_it_goes() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let root = tempfile::tempdir().expect("tempdir");
        let pool = root.path().join(FREE_SANDBOXES);
        let dir = root.path().join("b1/p");
        let dirs = wanted(&["src", "inc", "obj", "attr", "flag", "lib", "lib/sub"]);
        made(&pool, &dir, &dirs);
        for d in &dirs {
            std::fs::create_dir_all(dir.join(d)).expect("dir");
        }
        let obj = std::fs::metadata(dir.join("obj")).expect("obj").ino();
        std::fs::write(dir.join("obj/left.o"), "left").expect("a file left behind");
        std::os::unix::fs::symlink("/etc", dir.join("obj/etc")).expect("a link left behind");
        // A directory replaced by a link to somewhere else, one replaced by a file.
        std::fs::remove_dir(dir.join("inc")).expect("rmdir");
        std::os::unix::fs::symlink("/etc", dir.join("inc")).expect("link where a directory was");
        std::fs::remove_dir_all(dir.join("lib")).expect("rmdir");
        std::fs::write(dir.join("lib"), "a file where a directory was").expect("file");
        // One the package cannot read any more, one with an attribute of its own.
        std::fs::set_permissions(dir.join("src"), std::fs::Permissions::from_mode(0o000)).expect("chmod");
        let name = std::ffi::CString::new("user.mark").expect("name");
        let path = std::ffi::CString::new(dir.join("attr").as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: valid NUL-terminated strings and a one-byte value.
        let set = unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), b"1".as_ptr().cast(), 1, 0) };
        // An inode flag its owner may set (`chattr +d`, no dump).
        let flagged = {
            use std::os::fd::AsRawFd;
            let flag = std::fs::File::open(dir.join("flag")).expect("open");
            let mut flags: libc::c_int = 0;
            const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
            // SAFETY: the flags ioctls read and write one int at the pointer.
            unsafe {
                libc::ioctl(flag.as_raw_fd(), FS_IOC_GETFLAGS as _, &mut flags) == 0 && {
                    flags |= 0x40;
                    libc::ioctl(flag.as_raw_fd(), FS_IOC_SETFLAGS as _, &flags) == 0
                }
            }
        };
        released(Some(&pool), &dir, &dirs);

        let next = root.path().join("b2/q");
        made(&pool, &next, &dirs);
        let mut want = vec!["obj/", "src/"];
        if set != 0 {
            // The filesystem has no user attributes: the directory is kept like the others.
            want.push("attr/");
        }
        if !flagged {
            want.push("flag/");
        }
        want.sort();
        assert_eq!(listing(&next), want, "only plain directories are kept, and emptied");
        assert_eq!(std::fs::metadata(next.join("obj")).expect("obj").ino(), obj, "obj/ was kept");
        assert_eq!(std::fs::metadata(next.join("src")).expect("src").mode() & 0o777, 0o755);
        assert!(std::fs::read_link("/etc").is_err(), "nothing followed the link: /etc is still there");
        assert!(std::path::Path::new("/etc/passwd").exists());
        released(None, &next, &dirs);
    }

    #[test]
    fn a_pool_gives_only_its_own_sandboxes_and_forgets_those_that_are_gone() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().expect("tempdir");
        let (pool_a, pool_b) = (root.path().join("a").join(FREE_SANDBOXES), root.path().join("b").join(FREE_SANDBOXES));
        let none = BTreeSet::new();
        let first = root.path().join("a/b1/p");
        made(&pool_a, &first, &none);
        released(Some(&pool_a), &first, &none);
        let other = root.path().join("b/b1/p");
        made(&pool_b, &other, &none);
        assert_eq!(std::fs::read_dir(&pool_a).expect("pool").count(), 1, "another root's pool left it alone");
        released(Some(&pool_b), &other, &none);

        // The roots are cleared (as at a node's start): what the free list remembers is gone.
        std::fs::remove_dir_all(&pool_a).expect("clear");
        let again = root.path().join("a/b2/q");
        made(&pool_a, &again, &none);
        assert!(again.is_dir(), "a fresh sandbox when the pooled one is gone");
        released(Some(&pool_a), &again, &none);
        let inode =
            std::fs::metadata(std::fs::read_dir(&pool_a).expect("pool").flatten().next().expect("pooled").path())
                .expect("meta")
                .ino();
        let last = root.path().join("a/b3/r");
        made(&pool_a, &last, &none);
        assert_eq!(std::fs::metadata(&last).expect("meta").ino(), inode, "the pool is used again");
    }

    #[test]
    fn kept_directories_nobody_wants_go_children_first() {
        let root = tempfile::tempdir().expect("tempdir");
        let pool = root.path().join(FREE_SANDBOXES);
        let dir = root.path().join("b1/p");
        let dirs = wanted(&["a", "a/b", "a/b/c", "d"]);
        made(&pool, &dir, &dirs);
        std::fs::create_dir_all(dir.join("a/b/c")).expect("dirs");
        std::fs::create_dir_all(dir.join("d")).expect("dirs");
        released(Some(&pool), &dir, &dirs);
        let next = root.path().join("b2/q");
        made(&pool, &next, &wanted(&["d"]));
        assert_eq!(listing(&next), ["d/"]);
        released(None, &next, &BTreeSet::new());
    }

    #[test]
    fn the_pooled_sandbox_that_keeps_the_most_wanted_directories_is_taken() {
        let root = tempfile::tempdir().expect("tempdir");
        let pool = root.path().join(FREE_SANDBOXES);
        let compile = wanted(&["include", "obj", "src"]);
        let link = wanted(&["obj"]);
        for (name, dirs) in [("b1/cc", &compile), ("b1/link", &link)] {
            let dir = root.path().join(name);
            made(&pool, &dir, dirs);
            for d in dirs.iter() {
                std::fs::create_dir_all(dir.join(d)).expect("dir");
            }
        }
        // Freed in this order, the link's sandbox is the last freed; a compile still gets the other.
        released(Some(&pool), &root.path().join("b1/cc"), &compile);
        released(Some(&pool), &root.path().join("b1/link"), &link);
        let next = root.path().join("b2/cc");
        made(&pool, &next, &compile);
        assert_eq!(listing(&next), ["include/", "obj/", "src/"]);
        released(None, &next, &compile);
    }

    /// A pooled sandbox keeps an input only while the entry at its path is the very object the
    /// next package wants there; whatever its package did to the others, they are laid out anew.
    #[test]
    fn kept_inputs_are_the_stored_objects_the_next_package_wants_or_they_go() {
        use std::os::unix::fs::MetadataExt;
        let (tmp, cas) = setup();
        let pool = tmp.path().join("sandboxes").join(FREE_SANDBOXES);
        let nobody = Some(65534);
        let [a, b, c, x] = [("inc/a.h", "a"), ("inc/b.h", "b"), ("inc/c.h", "c"), ("src/x.c", "x")]
            .map(|(path, text)| file(&cas, tmp.path(), path, text));
        let object = |f: &FileRef| std::fs::metadata(cas.path(&f.digest).expect("path")).expect("object").ino();
        let compile = task(Invocation::Argv(vec![]), vec![a.clone(), b.clone(), c.clone(), x.clone()], &["obj/x.o"]);
        let wanted = Wanted::of(&compile, true);

        let dir = tmp.path().join("sandboxes/b1/p");
        BuildDirs::enter(dir.parent().expect("build dir")).expect("build dir");
        let mut linked = make_sandbox(Some(&pool), &dir, &wanted).expect("made");
        super::super::layout::inputs(&cas, &dir, &compile, nobody, &mut linked).expect("laid out");
        assert_eq!(linked.len(), 4, "every input is a link: {linked:?}");
        // The package moves one input over another and puts a file of its own at a third's path.
        std::fs::rename(dir.join("inc/a.h"), dir.join("inc/b.h")).expect("rename");
        std::fs::remove_file(dir.join("src/x.c")).expect("unlink");
        std::fs::write(dir.join("src/x.c"), "mine").expect("own file");
        released_linked(&pool, &dir, &wanted, &linked);

        // The next compile wants the same headers and another x.c: only inc/c.h is still its object.
        let x2 = file(&cas, tmp.path(), "src/x.c", "x, edited");
        let next_task = task(Invocation::Argv(vec![]), vec![a.clone(), b.clone(), c.clone(), x2.clone()], &["obj/x.o"]);
        let next = tmp.path().join("sandboxes/b2/q");
        BuildDirs::enter(next.parent().expect("build dir")).expect("build dir");
        let mut linked = make_sandbox(Some(&pool), &next, &Wanted::of(&next_task, true)).expect("made");
        assert_eq!(linked.iter().map(|l| l.path.as_str()).collect::<Vec<_>>(), ["inc/c.h"]);
        assert_eq!(listing(&next), ["inc/", "inc/c.h", "obj/", "src/"], "the rest is gone");
        super::super::layout::inputs(&cas, &next, &next_task, nobody, &mut linked).expect("laid out");
        for f in [&a, &b, &c, &x2] {
            let at = next.join(&f.path);
            assert_eq!(std::fs::symlink_metadata(&at).expect("input").ino(), object(f), "{} is its object", f.path);
        }
        assert_eq!(std::fs::read_to_string(next.join("src/x.c")).expect("x.c"), "x, edited");
        assert_eq!(linked.len(), 4);

        // A package wanting none of them (or not as links) finds none of them.
        released_linked(&pool, &next, &Wanted::of(&next_task, true), &linked);
        let other = tmp.path().join("sandboxes/b3/r");
        BuildDirs::enter(other.parent().expect("build dir")).expect("build dir");
        let kept = make_sandbox(Some(&pool), &other, &Wanted::of(&next_task, false)).expect("made");
        assert!(kept.is_empty());
        assert_eq!(listing(&other), ["inc/", "obj/", "src/"]);
        released(None, &other, &BTreeSet::new());
    }

    fn released_linked(pool: &Path, dir: &Path, wanted: &Wanted, linked: &[Linked]) {
        release_sandbox(Some(pool), dir, &wanted.dirs, linked);
        BuildDirs::leave(dir.parent().expect("build dir"));
    }

    #[test]
    fn action_keys_change_with_what_matters() {
        let (dir, cas) = setup();
        let a = file(&cas, dir.path(), "a.c", "1");
        let b = file(&cas, dir.path(), "a.c", "2");
        let t1 = task(Invocation::Argv(vec!["cc".into()]), vec![a.clone()], &["a.o"]);
        let t2 = task(Invocation::Argv(vec!["cc".into()]), vec![b], &["a.o"]);
        let tools = vec![("gcc".to_string(), "12.2.0".to_string())];
        assert_ne!(t1.action_key(&tools), t2.action_key(&tools));
        assert_eq!(t1.action_key(&tools), t1.clone().action_key(&tools));
        assert_ne!(t1.action_key(&tools), t1.action_key(&[("gcc".into(), "13.1.0".into())]));
        let mut t3 = t1.clone();
        t3.build_id = "another build".into();
        assert_eq!(t1.action_key(&tools), t3.action_key(&tools), "the build id does not matter");
    }
}
