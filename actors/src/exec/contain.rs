//! Containment: what a package may see and touch. The daemon never restricts itself; every
//! package starts in a single-threaded launcher process — a child of the node's fork server
//! (`buildnet sandbox-exec --serve`, see [`super::forkserver`]), or the one-shot `buildnet
//! sandbox-exec -- …` — which runs [`run`] (or, made by the fork server's `clone` already in
//! its namespaces, [`run_as_pid1`]): it restricts itself step by step and then execs the command:
//!
//! 1. **Namespaces** (when the kernel allows): a new PID namespace, so the package sees no other
//!    process and everything it starts dies with it, and a private mount namespace with its own
//!    `/proc`. An unprivileged node adds a user namespace to be allowed to do this.
//! 2. **An unprivileged user** when the node runs as root: the sandbox is handed to
//!    `nobody` (65534) and the launcher switches to it. Directories on the way to the sandbox or
//!    a declared tool that `nobody` may not traverse (a data dir in a 0700 folder) are covered in
//!    the package's mount namespace by an empty tmpfs holding only bind mounts of what the
//!    package may use, at their own paths.
//! 3. **Landlock**: read and execute on the system's read-only locations and the declared
//!    tools; read and write on the sandbox and a few devices; nothing else — not the data dir,
//!    its keys, the CAS or other sandboxes. Signals and abstract sockets outside the sandbox are
//!    scoped off where the kernel knows how (ABI 6).
//!
//! A level that was asked for and cannot be applied is an error: the package does not run.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use landlock::{
    path_beneath_rules, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope, ABI,
};
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{signal, sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, setgroups, setresgid, setresuid, ForkResult, Gid, Uid};

pub use crate::wire::SandboxLevel;

/// The user packages run as when the node runs as root.
pub const NOBODY: u32 = 65534;

/// Locations every package may read and execute.
const SYSTEM_READ: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/proc", "/sys"];
/// Devices every package may read and write.
const DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"];
/// The Landlock ABI whose rights are asked for; older kernels get what they know.
const LANDLOCK_ABI: ABI = ABI::V6;

/// The exit code of a launcher that could not contain its package (with the reason on stderr).
pub const CANNOT_CONTAIN: i32 = 126;

/// What the launcher is asked to do.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Spec {
    /// The sandbox: the working directory, the only place the package may write.
    pub dir: PathBuf,
    /// Declared tools and runtimes: read and execute.
    pub read_only: Vec<PathBuf>,
    pub level: SandboxLevel,
    /// Run as this uid/gid (the node runs as root).
    pub user: Option<u32>,
    pub argv: Vec<String>,
}

/// Why the launcher could not contain a package (it exits 126 with this on stderr).
#[derive(Debug, thiserror::Error)]
pub enum ContainError {
    #[error("namespaces: {0}")]
    Namespaces(String),
    #[error("user {user}: {detail}")]
    User { user: u32, detail: String },
    #[error("landlock: {0}")]
    Landlock(String),
    #[error("landlock is not enforced by this kernel")]
    LandlockMissing,
    #[error("{0}")]
    Exec(String),
}

fn ns<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> ContainError {
    move |e| ContainError::Namespaces(format!("{what}: {e}"))
}

/// Restricts this process as `spec` says and execs the command (the one-shot launcher, and the
/// fork server's child at a level without namespaces). Returns only on failure, having said why
/// on stderr (the package's), with the exit code to end with. With namespaces, the launcher
/// unshares them and forks, so that the package is PID 1 of its own PID namespace; the parent
/// waits and exits with the package's status.
pub fn run(spec: &Spec) -> i32 {
    let failure = match contain_and_exec(spec) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    said(failure)
}

/// The fork server's child, made by `clone` directly in the namespaces `namespaces` describes
/// (PID 1 of its PID namespace; no waiting parent in between): finishes the containment and
/// execs the command. Returns only on failure, as [`run`].
pub fn run_as_pid1(spec: &Spec, namespaces: &Namespaces) -> i32 {
    let failure = match namespaces.map_user().and_then(|()| confine(spec, true)) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    said(failure)
}

fn said(failure: ContainError) -> i32 {
    eprintln!("buildnet sandbox-exec: {failure}");
    CANNOT_CONTAIN
}

enum Never {}

fn contain_and_exec(spec: &Spec) -> Result<Never, ContainError> {
    if !spec.level.has_namespaces() {
        return confine(spec, false);
    }
    let namespaces = Namespaces::here();
    unshare(namespaces.flags()).map_err(ns("unshare"))?;
    namespaces.map_user()?;
    // SAFETY: the one-shot launcher is single-threaded (a fresh exec that started no threads), so
    // the child may do anything after fork.
    if let ForkResult::Parent { child } = unsafe { fork() }.map_err(ns("fork"))? {
        let code = wait_for(child);
        // `_exit`: nothing to flush, and Rust's and libc's exit handlers cost ~0.1 ms.
        // SAFETY: ends this process; it holds nothing that needs cleaning up.
        unsafe { libc::_exit(code) }
    }
    confine(spec, true)
}

/// The rest of the containment, in this process: with `in_namespaces`, it is PID 1 of a new PID
/// namespace in a new mount namespace and mounts its own `/proc` (and, for `nobody`, what it may
/// reach); then the user, the working directory, Landlock and the exec.
fn confine(spec: &Spec, in_namespaces: bool) -> Result<Never, ContainError> {
    let root = Uid::effective().is_root();
    if in_namespaces {
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
            .map_err(ns("private mounts"))?;
        if root && spec.user.is_some() {
            expose_to_nobody(spec)?;
        }
        let proc_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mount(Some("proc"), "/proc", Some("proc"), proc_flags, None::<&str>).map_err(ns("/proc"))?;
    }
    if let (true, Some(user)) = (root, spec.user) {
        become_user(&spec.dir, user)?;
    }
    std::env::set_current_dir(&spec.dir).map_err(|e| ContainError::Exec(format!("{}: {e}", spec.dir.display())))?;
    if spec.level.has_landlock() {
        restrict(spec)?;
    }
    exec(&spec.argv)
}

/// The namespaces a package gets, as seen from the process that makes them: PID and mount, and a
/// user namespace when that process is not root (it needs one to be allowed to mount `/proc`).
#[derive(Debug, Clone, Copy)]
pub struct Namespaces {
    root: bool,
    /// Who the maker is outside, mapped to root inside a new user namespace.
    uid: Uid,
    gid: Gid,
}

impl Namespaces {
    /// The namespaces this process would make.
    pub fn here() -> Namespaces {
        Namespaces { root: Uid::effective().is_root(), uid: Uid::current(), gid: Gid::current() }
    }

    /// The `unshare`/`clone` flags that make them.
    pub fn flags(&self) -> CloneFlags {
        let flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID;
        if self.root {
            flags
        } else {
            flags | CloneFlags::CLONE_NEWUSER
        }
    }

    /// Inside a new user namespace, maps the maker to its root (needed to mount `/proc`) and
    /// nobody else; nothing to do without one.
    fn map_user(&self) -> Result<(), ContainError> {
        if self.root {
            return Ok(());
        }
        std::fs::write("/proc/self/setgroups", "deny").map_err(ns("setgroups"))?;
        std::fs::write("/proc/self/uid_map", format!("0 {} 1", self.uid)).map_err(ns("uid_map"))?;
        std::fs::write("/proc/self/gid_map", format!("0 {} 1", self.gid)).map_err(ns("gid_map"))?;
        Ok(())
    }
}

/// The exit code that tells the package's fate, as a shell would.
fn wait_for(child: nix::unistd::Pid) -> i32 {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 125,
        }
    }
}

/// Whether `nobody` may pass through a directory.
fn traversable(meta: &std::fs::Metadata) -> bool {
    let mode = meta.mode();
    mode & 0o001 != 0 || (meta.uid() == NOBODY && mode & 0o100 != 0)
}

/// The highest ancestor of `path` that `nobody` may not pass through, if any.
fn first_blocking_ancestor(path: &Path) -> Option<PathBuf> {
    let mut current = PathBuf::from("/");
    let parent = path.parent()?;
    for part in parent.components().skip(1) {
        current.push(part);
        match std::fs::metadata(&current) {
            Ok(m) if m.is_dir() && !traversable(&m) => return Some(current),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

/// Makes the sandbox and the declared tools reachable for `nobody` at their own paths: each
/// directory that blocks the way is covered by an empty tmpfs in which only the bind mounts of
/// what the package may use appear. What else was under it (the data dir, other sandboxes)
/// is not there at all.
fn expose_to_nobody(spec: &Spec) -> Result<(), ContainError> {
    let targets: Vec<PathBuf> = std::iter::once(spec.dir.clone())
        .chain(spec.read_only.iter().cloned())
        .filter_map(|p| p.canonicalize().ok())
        .collect();
    let mut plan: Vec<(PathBuf, PathBuf, std::fs::File)> = Vec::new();
    for t in targets {
        if let Some(blocking) = first_blocking_ancestor(&t) {
            // Opened before anything is mounted over the way to it.
            let handle = std::fs::File::open(&t).map_err(ns("open"))?;
            plan.push((blocking, t, handle));
        }
    }
    let mut covered: Vec<PathBuf> = Vec::new();
    for (blocking, _, _) in &plan {
        if covered.iter().any(|c| blocking.starts_with(c)) {
            continue;
        }
        mount(Some("tmpfs"), blocking, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755"))
            .map_err(ns("tmpfs"))?;
        covered.push(blocking.clone());
    }
    for (_, target, handle) in &plan {
        let is_dir = handle.metadata().map(|m| m.is_dir()).unwrap_or(false);
        if is_dir {
            std::fs::create_dir_all(target).map_err(ns("mountpoint"))?;
        } else {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(ns("mountpoint"))?;
            }
            std::fs::File::create(target).map_err(ns("mountpoint"))?;
        }
        let source = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(handle));
        let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
        mount(Some(source.as_str()), target, None::<&str>, flags, None::<&str>).map_err(ns("bind"))?;
    }
    Ok(())
}

/// Hands the sandbox to `user` and becomes it, with no supplementary groups.
fn become_user(dir: &Path, user: u32) -> Result<(), ContainError> {
    let fail = |detail: String| ContainError::User { user, detail };
    chown_tree(dir, user).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    let (uid, gid) = (Uid::from_raw(user), Gid::from_raw(user));
    setgroups(&[]).map_err(|e| fail(format!("setgroups: {e}")))?;
    setresgid(gid, gid, gid).map_err(|e| fail(format!("setresgid: {e}")))?;
    setresuid(uid, uid, uid).map_err(|e| fail(format!("setresuid: {e}")))?;
    Ok(())
}

/// Gives every entry under `dir` to `user`, without following links — except files with more
/// than one link: inputs the daemon linked in from its store (`Cas::materialize`), whose inode is
/// the store's object; given to `user`, it could chmod and rewrite them.
fn chown_tree(dir: &Path, user: u32) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.is_file() && meta.nlink() > 1 {
        return Ok(());
    }
    std::os::unix::fs::lchown(dir, Some(user), Some(user))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            chown_tree(&entry?.path(), user)?;
        }
    }
    Ok(())
}

/// Landlock: read/execute on the system and the declared tools, read/write on the sandbox.
fn restrict(spec: &Spec) -> Result<(), ContainError> {
    let ll = |e: landlock::RulesetError| ContainError::Landlock(e.to_string());
    let read = AccessFs::from_read(LANDLOCK_ABI);
    let all = AccessFs::from_all(LANDLOCK_ABI);
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)
        .map_err(ll)?
        .scope(Scope::from_all(LANDLOCK_ABI))
        .map_err(ll)?
        .create()
        .map_err(ll)?
        .add_rules(path_beneath_rules(SYSTEM_READ, read))
        .map_err(ll)?
        .add_rules(path_beneath_rules(&spec.read_only, read))
        .map_err(ll)?
        .add_rules(path_beneath_rules(DEVICES, all))
        .map_err(ll)?
        .add_rules(path_beneath_rules([&spec.dir], all))
        .map_err(ll)?
        .restrict_self()
        .map_err(ll)?;
    match status.ruleset {
        RulesetStatus::NotEnforced => Err(ContainError::LandlockMissing),
        RulesetStatus::FullyEnforced | RulesetStatus::PartiallyEnforced => Ok(()),
    }
}

fn exec(argv: &[String]) -> Result<Never, ContainError> {
    let args: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| ContainError::Exec("an argument contains a NUL byte".into()))?;
    let Some(program) = args.first() else { return Err(ContainError::Exec("no command".into())) };
    // The package starts with the signal handling a shell would give it, not the launcher's: Rust
    // ignores SIGPIPE and the fork server blocks SIGCHLD, and both would outlive the exec.
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    // SAFETY: restoring the default disposition installs no handler.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    let e = nix::unistd::execvp(program, &args).err().map(|e| e.to_string()).unwrap_or_default();
    Err(ContainError::Exec(format!("could not start {}: {e}", argv[0])))
}

/// What this kernel lets a package be contained with, found by trying it in this (throwaway)
/// process: `buildnet sandbox-exec --probe` prints it.
pub fn probe() -> SandboxLevel {
    let here = Namespaces::here();
    let namespaces = unshare(here.flags()).is_ok() && here.map_user().is_ok();
    let landlock = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(LANDLOCK_ABI))
        .and_then(|r| r.create())
        .and_then(|r| r.restrict_self())
        .map(|s| s.ruleset != RulesetStatus::NotEnforced)
        .unwrap_or(false);
    match (landlock, namespaces) {
        (true, true) => SandboxLevel::Full,
        (true, false) => SandboxLevel::Landlock,
        (false, _) => SandboxLevel::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_ancestors_are_found_from_the_top() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inner = dir.path().join("a/b");
        std::fs::create_dir_all(&inner).expect("mkdir");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
        std::fs::set_permissions(dir.path().join("a"), std::fs::Permissions::from_mode(0o700)).expect("chmod");
        assert_eq!(first_blocking_ancestor(&inner.join("c")), Some(dir.path().to_path_buf()));
        assert_eq!(first_blocking_ancestor(Path::new("/usr/bin/env")), None);
    }
}
