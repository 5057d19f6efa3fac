//! Runs one package in a sandbox directory: inputs and dependencies' outputs laid out at their
//! project-relative paths, the command run as argv (or `sh -c` when the package asked for a
//! shell) in its own process group — started by the node's fork server when it is contained —
//! output captured, declared outputs stored by digest.

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
    fn start(&self, dir: &Path, task: &Task, stdout: OwnedFd, stderr: OwnedFd) -> Result<Running, String> {
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
                };
                server.start(&spec, &env, &stdout, &stderr).map(Running::Served)
            }
            _ => {
                let child = Command::new(&argv[0])
                    .args(&argv[1..])
                    .current_dir(dir)
                    .env_clear()
                    .envs(env)
                    .stdin(Stdio::null())
                    .stdout(stdout)
                    .stderr(stderr)
                    .process_group(0)
                    .spawn()
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
/// printed. The sandbox is removed afterwards.
pub fn run(
    cas: &Cas,
    sandboxes: &Path,
    task: &Task,
    launch: &Launch,
    cancel: &Arc<AtomicBool>,
    output: Option<super::OutputSink>,
) -> Result<TaskResult, Cancelled> {
    let started = Instant::now();
    let dir: PathBuf = sandboxes.join(&task.build_id).join(task.sandbox_name());
    // Only where nothing the package started can outlive it — its PID namespace died with it —
    // may its directory serve another package: a survivor could still write there.
    let pool = (launch.launcher.is_some() && launch.level.has_namespaces()).then(|| sandboxes.join(FREE_SANDBOXES));
    if let Err(e) = make_sandbox(pool.as_deref(), &dir) {
        return Ok(failed(format!("sandbox {}: {e}", dir.display()), started));
    }
    let result = run_in(cas, &dir, task, launch, cancel, started, output);
    release_sandbox(pool.as_deref(), &dir);
    result
}

/// Emptied sandboxes waiting for the next package, in each sandbox root. A directory made anew
/// costs an inode, and on ext4 without a journal (this machine's disk) allocating one scans past
/// every inode freed in the last seconds (`recently_deleted`): a sandbox and its `.tmp` made and
/// removed per package were 39 % of the daemon's CPU in a 200-package build.
const FREE_SANDBOXES: &str = ".free";
/// Each package's TMPDIR, inside its sandbox.
const TMP: &str = ".tmp";

/// The emptied sandboxes in each pool directory, as this process put them there: taking one is
/// then a rename, not a listing of the pool (what a previous run left there is cleared at start).
static FREE: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Takes an emptied sandbox of `pool` off the free list.
fn take_free(pool: &Path) -> Option<PathBuf> {
    let mut free = FREE.lock().ok()?;
    let at = free.iter().rposition(|p| p.parent() == Some(pool))?;
    Some(free.swap_remove(at))
}

/// Makes the sandbox `dir`: an emptied one from `pool`, moved into place, or a new one.
fn make_sandbox(pool: Option<&Path>, dir: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // One that is gone (its root was cleared) is forgotten: then the next.
    while let Some(free) = pool.and_then(take_free) {
        if std::fs::rename(&free, dir).is_ok() {
            return Ok(());
        }
    }
    std::fs::create_dir(dir)
}

/// Empties the sandbox `dir` into `pool`, or removes it (no pool, or it cannot be emptied).
fn release_sandbox(pool: Option<&Path>, dir: &Path) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    use std::os::unix::fs::PermissionsExt;
    let pooled = pool.is_some_and(|pool| {
        let reset = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
        if reset.and_then(|()| remove_entries(dir, Some(TMP))).is_err() {
            return false;
        }
        let free = pool.join(format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        let moved = std::fs::rename(dir, &free)
            .or_else(|_| std::fs::create_dir(pool).and_then(|()| std::fs::rename(dir, &free)))
            .is_ok();
        if let (true, Ok(mut list)) = (moved, FREE.lock()) {
            list.push(free);
        }
        moved
    });
    if !pooled {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Removes everything in `dir`; a directory named `keep` is emptied (and its mode reset) instead.
fn remove_entries(dir: &Path, keep: Option<&str>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if !entry.file_type()?.is_dir() {
            std::fs::remove_file(&path)?;
        } else if keep.is_some_and(|k| entry.file_name() == k) {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            remove_entries(&path, None)?;
        } else {
            std::fs::remove_dir_all(&path)?;
        }
    }
    Ok(())
}

fn run_in(
    cas: &Cas,
    dir: &Path,
    task: &Task,
    launch: &Launch,
    cancel: &Arc<AtomicBool>,
    started: Instant,
    output: Option<super::OutputSink>,
) -> Result<TaskResult, Cancelled> {
    // Inputs at their paths, never through a symbolic link (see `layout`).
    if let Err(e) = super::layout::inputs(cas, dir, task, launch.links_for()) {
        return Ok(failed(e, started));
    }
    let ((out_read, out_write), (err_read, err_write)) = match pipe().and_then(|out| Ok((out, pipe()?))) {
        Ok(pipes) => pipes,
        Err(e) => return Ok(failed(format!("could not create the output pipes: {e}"), started)),
    };
    let running = match launch.start(dir, task, out_write, err_write) {
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

    #[test]
    fn sandboxes_are_emptied_into_the_pool_and_reused() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let root = tempfile::tempdir().expect("tempdir");
        let pool = root.path().join(FREE_SANDBOXES);
        let dir = root.path().join("b1/p");
        make_sandbox(Some(&pool), &dir).expect("made");
        std::fs::create_dir_all(dir.join(".tmp/t")).expect("tmp");
        std::fs::create_dir_all(dir.join("out/deep")).expect("out");
        std::fs::write(dir.join("out/deep/o.txt"), "o").expect("file");
        std::fs::write(dir.join(".tmp/x"), "x").expect("file");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let inode = std::fs::metadata(&dir).expect("meta").ino();
        release_sandbox(Some(&pool), &dir);
        assert!(!dir.exists());
        let free: Vec<PathBuf> = std::fs::read_dir(&pool).expect("pool").flatten().map(|e| e.path()).collect();
        assert_eq!(free.len(), 1);
        let left: Vec<_> = std::fs::read_dir(&free[0]).expect("pooled").flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, [".tmp"], "only an emptied .tmp is kept");
        assert_eq!(std::fs::read_dir(free[0].join(".tmp")).expect("tmp").count(), 0);
        assert_eq!(std::fs::metadata(&free[0]).expect("meta").mode() & 0o777, 0o755);

        let next = root.path().join("b2/q");
        make_sandbox(Some(&pool), &next).expect("made");
        assert_eq!(std::fs::metadata(&next).expect("meta").ino(), inode, "the pooled sandbox is reused");
        assert_eq!(std::fs::read_dir(&pool).expect("pool").count(), 0);
        release_sandbox(None, &next);
        assert!(!next.exists());
        assert_eq!(std::fs::read_dir(&pool).expect("pool").count(), 0, "without a pool it is removed");
    }

    #[test]
    fn a_pool_gives_only_its_own_sandboxes_and_forgets_those_that_are_gone() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().expect("tempdir");
        let (pool_a, pool_b) = (root.path().join("a").join(FREE_SANDBOXES), root.path().join("b").join(FREE_SANDBOXES));
        let first = root.path().join("a/b1/p");
        make_sandbox(Some(&pool_a), &first).expect("made");
        release_sandbox(Some(&pool_a), &first);
        let other = root.path().join("b/b1/p");
        make_sandbox(Some(&pool_b), &other).expect("made");
        assert_eq!(std::fs::read_dir(&pool_a).expect("pool").count(), 1, "another root's pool left it alone");
        release_sandbox(Some(&pool_b), &other);

        // The roots are cleared (as at a node's start): what the free list remembers is gone.
        std::fs::remove_dir_all(&pool_a).expect("clear");
        let again = root.path().join("a/b2/q");
        make_sandbox(Some(&pool_a), &again).expect("a fresh sandbox when the pooled one is gone");
        assert!(again.is_dir());
        release_sandbox(Some(&pool_a), &again);
        let inode =
            std::fs::metadata(std::fs::read_dir(&pool_a).expect("pool").flatten().next().expect("pooled").path())
                .expect("meta")
                .ino();
        let last = root.path().join("a/b3/r");
        make_sandbox(Some(&pool_a), &last).expect("made");
        assert_eq!(std::fs::metadata(&last).expect("meta").ino(), inode, "the pool is used again");
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
