//! Containment: what a package may see and touch. The daemon never restricts itself; every
//! package starts in a single-threaded launcher — a child of the node's fork server (`buildnet
//! sandbox-exec --serve`, see [`super::forkserver`]), or the one-shot `buildnet sandbox-exec --
//! …` ([`run`]) — which restricts itself step by step and then execs the command:
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
//!
//! The work is split in two. [`Prepared::new`] does everything that allocates or looks things up
//! — the plan of mounts, the `chown` of the sandbox, the Landlock ruleset with every rule but
//! `/proc`'s (its `/proc` is mounted later), the command, environment and the places `PATH`
//! offers for it — in the launcher itself; [`Prepared::enter`] is what is left: system calls on
//! prepared memory, no allocation and no lock, ending in the exec. So the fork server can run it
//! in a child that shares its memory ([`Prepared::spawn`]: `CLONE_VM | CLONE_VFORK` on a stack of
//! its own), which copies no page tables and faults nothing in again (issue 14) — or in a
//! [`Spare`], such a child made ahead in the package's namespaces.

use std::cell::Cell;
use std::ffi::{c_char, CStr, CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use landlock::{
    path_beneath_rules, Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetError, Scope, ABI,
};
use nix::errno::Errno;
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Gid, Pid, Uid};

pub use crate::wire::SandboxLevel;

/// The user packages run as when the node runs as root.
pub const NOBODY: u32 = 65534;

/// Locations every package may read and execute, but `/proc`: a package with namespaces mounts
/// its own, whose rule [`Prepared::enter`] adds once it is there.
const SYSTEM_READ: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/sys"];
/// Devices every package may read and write.
const DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"];
/// The Landlock ABI whose rights are asked for; older kernels get what they know.
const LANDLOCK_ABI: ABI = ABI::V6;
/// Where `execvp` looks when there is no `PATH` (glibc's default).
const DEFAULT_PATH: &[u8] = b"/bin:/usr/bin";

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
    /// A directory of the sandbox (its TMPDIR) covered, for this package alone, by a tmpfs of
    /// its own when the level has namespaces: temporary files stay in memory and go with the
    /// package. On disk, every compile's temporary files were inodes made and freed in the
    /// sandbox's block group, and on ext4 without a journal each new inode there skips every
    /// one freed in the last minutes (`recently_deleted`): a quarter of the compiler driver's
    /// time and a fifth of the assembler's in a 30-package C build, against 1 % and 4 % under
    /// make with `/tmp`.
    #[serde(default)]
    pub tmp: Option<PathBuf>,
    /// The daemon has given the sandbox to `user` as it laid it out (`sandbox::give_sandbox`):
    /// the launcher does not walk it to do so.
    #[serde(default)]
    pub given: bool,
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

/// Contains this process as `spec` says and execs the command (the one-shot launcher). Returns
/// only on failure, having said why on stderr, with the exit code to end with. With namespaces,
/// the launcher unshares them and forks, so that the package is PID 1 of its own PID namespace;
/// the parent waits and exits with the package's status.
pub fn run(spec: &Spec) -> i32 {
    let prepared = match Prepared::new(spec, std::env::vars_os()) {
        Ok(p) => p,
        Err(e) => return said(&e),
    };
    let failure = match prepared.namespaces {
        None => prepared.enter(),
        Some(namespaces) => {
            if let Err(e) = unshare(namespaces.flags()) {
                return said(&ContainError::Namespaces(format!("unshare: {e}")));
            }
            // SAFETY: the one-shot launcher is single-threaded (a fresh exec that started no
            // threads), so the child may do anything after fork.
            match unsafe { fork() } {
                Err(e) => return said(&ContainError::Namespaces(format!("fork: {e}"))),
                Ok(ForkResult::Parent { child }) => {
                    let code = wait_for(child);
                    // `_exit`: nothing to flush, and Rust's and libc's exit handlers cost ~0.1 ms.
                    // SAFETY: ends this process; it holds nothing that needs cleaning up.
                    unsafe { libc::_exit(code) }
                }
                Ok(ForkResult::Child) => prepared.enter(),
            }
        }
    };
    let failure = prepared.explain(failure);
    // Its descriptors may be closed already (`close_on_exec_from` on an old kernel).
    std::mem::forget(prepared);
    said(&failure)
}

fn said(failure: &ContainError) -> i32 {
    eprintln!("buildnet sandbox-exec: {failure}");
    CANNOT_CONTAIN
}

enum Never {}

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

    /// What maps the maker to root inside a new user namespace (needed to mount `/proc`), and
    /// nobody else; nothing without one.
    fn user_map(&self) -> Option<UserMap> {
        let map = |id: u32| CString::new(format!("0 {id} 1")).ok();
        if self.root {
            return None;
        }
        Some(UserMap { uid_map: map(self.uid.as_raw())?, gid_map: map(self.gid.as_raw())? })
    }
}

/// The contents of a new user namespace's maps.
#[derive(Debug)]
struct UserMap {
    uid_map: CString,
    gid_map: CString,
}

impl UserMap {
    /// Writes them for this process, from inside the namespace.
    fn write(&self) -> Result<(), Failure> {
        write_file(c"/proc/self/setgroups", c"deny", Step::DenySetgroups)?;
        write_file(c"/proc/self/uid_map", &self.uid_map, Step::UidMap)?;
        write_file(c"/proc/self/gid_map", &self.gid_map, Step::GidMap)
    }
}

/// A step of [`Prepared::enter`] that failed, and why: what the child that shares the fork
/// server's memory leaves it, to be put into words there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    step: Step,
    errno: Errno,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The package's stdout and stderr (the fork server's child).
    Output,
    DenySetgroups,
    UidMap,
    GidMap,
    PrivateMounts,
    Tmpfs,
    TmpDir,
    Mountpoint,
    Bind,
    Proc,
    Setgroups,
    Setresgid,
    Setresuid,
    Chdir,
    LandlockProc,
    NoNewPrivs,
    Restrict,
    Exec,
}

impl Failure {
    fn of(step: Step) -> Failure {
        Failure { step, errno: Errno::last() }
    }
}

/// A system call's result, or the step's failure with `errno`.
fn check(step: Step, result: impl Into<i64>) -> Result<i64, Failure> {
    let result = result.into();
    if result < 0 {
        Err(Failure::of(step))
    } else {
        Ok(result)
    }
}

/// Writes `text` to the file at `path` in one `write`.
fn write_file(path: &CStr, text: &CStr, step: Step) -> Result<(), Failure> {
    // SAFETY: open, write and close on NUL-terminated strings and a descriptor opened here.
    unsafe {
        let fd = check(step, libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC))? as RawFd;
        let len = text.to_bytes().len();
        let wrote = libc::write(fd, text.as_ptr().cast(), len);
        let failure = Failure::of(step);
        libc::close(fd);
        match wrote {
            n if n == len as isize => Ok(()),
            n if n < 0 => Err(failure),
            _ => Err(Failure { step, errno: Errno::EIO }),
        }
    }
}

/// Closes every descriptor from `first` up.
pub(super) fn close_from(first: RawFd) {
    // SAFETY: close_range takes plain integers; descriptors owned by Rust objects in this process
    // are not used again by the callers (the server before it opens its own; a launcher whose
    // exec failed forgets them, see `close_on_exec_from`).
    unsafe { libc::syscall(libc::SYS_close_range, first as libc::c_uint, libc::c_uint::MAX, 0 as libc::c_uint) };
}

/// Marks every descriptor from `first` up close-on-exec: the package inherits none of them,
/// and a launcher whose exec failed still has its own. Kernels before 5.11 close them instead.
fn close_on_exec_from(first: RawFd) {
    let (first, last) = (first as libc::c_uint, libc::c_uint::MAX);
    // SAFETY: close_range takes plain integers.
    if unsafe { libc::syscall(libc::SYS_close_range, first, last, libc::CLOSE_RANGE_CLOEXEC) } < 0 {
        close_from(first as RawFd);
    }
}

/// A mount point made in a covering tmpfs, or a bind mount onto it.
#[derive(Debug)]
enum MountStep {
    Dir(CString),
    File(CString),
    /// The target, bound from `/proc/self/fd/<handle>`: what the child opened at that path in
    /// its own mount namespace (a bind's source must be in it) before anything was mounted over
    /// the way to it.
    Bind {
        target: CString,
        handle: Cell<RawFd>,
    },
}

/// `/proc/self/fd/<fd>` in `buf`, without allocating.
fn fd_path(fd: RawFd, buf: &mut [u8; 32]) -> &CStr {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 10];
    let (mut n, mut len) = (fd.unsigned_abs(), 0);
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 || len == digits.len() {
            break;
        }
    }
    for (i, d) in digits[..len].iter().rev().enumerate() {
        buf[PREFIX.len() + i] = *d;
    }
    buf[PREFIX.len() + len] = 0;
    CStr::from_bytes_until_nul(&buf[..]).unwrap_or(c"")
}

/// The Landlock ruleset, made and filled in the launcher, and the rights `/proc` gets in it.
#[derive(Debug)]
struct Landlock {
    ruleset: OwnedFd,
    proc_access: u64,
}

/// `struct landlock_path_beneath_attr` (packed, as in the kernel's uapi).
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// The command and what the exec needs, as the kernel takes it.
#[derive(Debug)]
struct Exec {
    /// What `execvp` would try, in order: the command itself when it names a path, else each
    /// place on `PATH`.
    candidates: Vec<CString>,
    _argv: Vec<CString>,
    argv: Vec<*const c_char>,
    _envp: Vec<CString>,
    envp: Vec<*const c_char>,
    /// `/bin/sh <candidate> <args…>`, for a candidate the kernel cannot exec (ENOEXEC), as
    /// `execvp` does; the second slot is filled by the child.
    script: Vec<Cell<*const c_char>>,
}

/// Everything a package's containment needs, prepared by the launcher; [`Prepared::enter`] is
/// the rest.
#[derive(Debug)]
pub struct Prepared {
    /// The namespaces the package is made in (by the fork server's `clone`, or the one-shot
    /// launcher's `unshare` and fork), when the level has them.
    namespaces: Option<Namespaces>,
    user_map: Option<UserMap>,
    /// Folders covered by an empty tmpfs (a root node, for `nobody`), then what is made and bound
    /// in them.
    covers: Vec<CString>,
    mounts: Vec<MountStep>,
    /// The user to become (the node runs as root); the sandbox is already theirs.
    user: Option<u32>,
    dir: CString,
    /// The TMPDIR covered by a tmpfs of the package's own, with that tmpfs's options.
    tmp: Option<(CString, CString)>,
    landlock: Option<Landlock>,
    exec: Exec,
    /// For the words of a failure.
    dir_shown: String,
    program_shown: String,
}

impl Prepared {
    /// Prepares `spec` with exactly `env` as the package's environment (a later name wins).
    pub fn new<K, V>(spec: &Spec, env: impl IntoIterator<Item = (K, V)>) -> Result<Prepared, ContainError>
    where
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let here = Namespaces::here();
        let namespaces = spec.level.has_namespaces().then_some(here);
        let user = spec.user.filter(|_| here.root);
        let (covers, mounts) = match (namespaces, user) {
            (Some(_), Some(_)) => expose_to_nobody(spec)?,
            _ => (Vec::new(), Vec::new()),
        };
        if let Some(user) = user.filter(|_| !spec.given) {
            chown_tree(&spec.dir, user)
                .map_err(|e| ContainError::User { user, detail: format!("{}: {e}", spec.dir.display()) })?;
        }
        let landlock = spec.level.has_landlock().then(|| landlock(spec)).transpose()?;
        let dir = c_path(&spec.dir).map_err(|_| ContainError::Exec("the sandbox's path contains a NUL byte".into()))?;
        // Owned by the user the package becomes (root inside a user namespace maps to the
        // node's own user). Its pages belong to no process, so the OOM killer would pick the
        // daemon rather than the package that filled it: each holds at most the memory over
        // twice the cores (a node runs a package per core, so together at most half the
        // memory), and a quarter million files.
        let size = format!("mode=0700,size={},nr_inodes=262144", tmp_bytes());
        let options = match user {
            Some(user) => format!("{size},uid={user},gid={user}"),
            None => size,
        };
        let tmp = match (&spec.tmp, namespaces) {
            (Some(path), Some(_)) => Some((
                c_path(path).map_err(|_| ContainError::Exec("the TMPDIR's path contains a NUL byte".into()))?,
                CString::new(options).map_err(|_| ContainError::Exec("tmpfs options".into()))?,
            )),
            _ => None,
        };
        Ok(Prepared {
            namespaces,
            user_map: namespaces.and_then(|n| n.user_map()),
            covers,
            mounts,
            user,
            dir,
            tmp,
            landlock,
            exec: Exec::new(&spec.argv, env)?,
            dir_shown: spec.dir.display().to_string(),
            program_shown: spec.argv.first().cloned().unwrap_or_default(),
        })
    }

    /// The namespaces the package is to be made in, if any.
    pub fn namespaces(&self) -> Option<Namespaces> {
        self.namespaces
    }

    /// The rest of the containment, in this process: with namespaces, it is PID 1 of a new PID
    /// namespace in a new mount namespace (and, not being root, a new user namespace): it maps
    /// its user, mounts its own `/proc` and, for `nobody`, what it may reach; then the user, the
    /// working directory, Landlock and the exec. Returns only on failure.
    ///
    /// Allocates nothing and takes no lock, and writes no memory but its stack and the exec's
    /// script slot: it runs in a child that shares the fork server's memory.
    pub fn enter(&self) -> Failure {
        self.enter_from(false)
    }

    /// [`Prepared::enter`], its first steps ([`enter_namespaces`]) already taken when
    /// `namespaces_entered` (a [`Spare`] took them ahead).
    fn enter_from(&self, namespaces_entered: bool) -> Failure {
        match self.contain_and_exec(namespaces_entered) {
            Ok(never) => match never {},
            Err(failure) => failure,
        }
    }

    fn contain_and_exec(&self, namespaces_entered: bool) -> Result<Never, Failure> {
        let none = std::ptr::null::<c_char>();
        if self.namespaces.is_some() && !namespaces_entered {
            enter_namespaces(self.user_map.as_ref())?;
        }
        // SAFETY (the block): system calls on NUL-terminated strings that outlive them, null
        // pointers where the call allows them, and plain integers.
        unsafe {
            if self.namespaces.is_some() {
                for step in &self.mounts {
                    if let MountStep::Bind { target, handle } = step {
                        let flags = libc::O_PATH | libc::O_CLOEXEC;
                        handle.set(check(Step::Bind, libc::open(target.as_ptr(), flags))? as RawFd);
                    }
                }
                for cover in &self.covers {
                    let flags = (libc::MS_NOSUID | libc::MS_NODEV) as libc::c_ulong;
                    let mode = c"mode=0755".as_ptr().cast();
                    let tmpfs = c"tmpfs".as_ptr();
                    check(Step::Tmpfs, libc::mount(tmpfs, cover.as_ptr(), tmpfs, flags, mode))?;
                }
                for step in &self.mounts {
                    match step {
                        MountStep::Dir(path) => {
                            if libc::mkdir(path.as_ptr(), 0o777) < 0 && Errno::last() != Errno::EEXIST {
                                return Err(Failure::of(Step::Mountpoint));
                            }
                        }
                        MountStep::File(path) => {
                            let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC;
                            let fd = check(Step::Mountpoint, libc::open(path.as_ptr(), flags, 0o666))?;
                            libc::close(fd as RawFd);
                        }
                        MountStep::Bind { target, handle } => {
                            let flags = (libc::MS_BIND | libc::MS_REC) as libc::c_ulong;
                            let mut buf = [0u8; 32];
                            let source = fd_path(handle.get(), &mut buf);
                            let bind = libc::mount(source.as_ptr(), target.as_ptr(), none, flags, std::ptr::null());
                            check(Step::Bind, bind)?;
                        }
                    }
                }
                // Last: where the sandbox is bound into a cover, through the bind.
                if let Some((path, options)) = &self.tmp {
                    let flags = (libc::MS_NOSUID | libc::MS_NODEV) as libc::c_ulong;
                    let tmpfs = c"tmpfs".as_ptr();
                    check(Step::TmpDir, libc::mount(tmpfs, path.as_ptr(), tmpfs, flags, options.as_ptr().cast()))?;
                }
            }
            if let Some(user) = self.user {
                // Raw calls: glibc's wrappers would signal the other threads of a process that
                // shares this memory to switch too.
                check(Step::Setgroups, libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()))?;
                check(Step::Setresgid, libc::syscall(libc::SYS_setresgid, user, user, user))?;
                check(Step::Setresuid, libc::syscall(libc::SYS_setresuid, user, user, user))?;
            }
            check(Step::Chdir, libc::chdir(self.dir.as_ptr()))?;
            if let Some(landlock) = &self.landlock {
                landlock.restrict()?;
            }
        }
        self.exec.run()
    }

    /// Starts the package in a child that shares this process's memory and waits until it has
    /// exec'd or failed (`CLONE_VM | CLONE_VFORK`, on `stack`), in its namespaces when it has
    /// them. With `stdio`, the child first makes itself a process group and takes those as its
    /// stdout and stderr. Returns its pid, and why it failed if it did (it has then exited with
    /// [`CANNOT_CONTAIN`]).
    ///
    /// Sound while the child writes nothing but its stack and the `Cell`s meant for it: the
    /// parent waits, and [`Prepared::enter`] allocates nothing.
    pub fn spawn(&self, stack: &mut ChildStack, stdio: Option<[RawFd; 2]>) -> nix::Result<(Pid, Option<Failure>)> {
        let failed: Cell<Option<Failure>> = Cell::new(None);
        let child = Box::new(|| {
            failed.set(Some(enter_as_package(self, stdio, false)));
            CANNOT_CONTAIN as isize
        });
        let flags = CloneFlags::CLONE_VM
            | CloneFlags::CLONE_VFORK
            | self.namespaces.map(|n| n.flags()).unwrap_or_else(CloneFlags::empty);
        // SAFETY: the child runs `enter_as_package`, which allocates nothing, takes no lock and
        // writes only `failed`, the exec's script slot and its own stack; this thread is
        // suspended until it has exec'd or exited (CLONE_VFORK), so nothing else touches them.
        let pid = unsafe { nix::sched::clone(child, stack.usable(), flags, Some(libc::SIGCHLD)) }?;
        Ok((pid, failed.get()))
    }

    /// The words for `failure`.
    pub fn explain(&self, failure: Failure) -> ContainError {
        let e = failure.errno;
        let namespaces = |what: &str| ContainError::Namespaces(format!("{what}: {e}"));
        let user =
            |what: &str| ContainError::User { user: self.user.unwrap_or_default(), detail: format!("{what}: {e}") };
        match failure.step {
            Step::Output => ContainError::Exec(format!("the package's stdout and stderr: {e}")),
            Step::DenySetgroups => namespaces("setgroups"),
            Step::UidMap => namespaces("uid_map"),
            Step::GidMap => namespaces("gid_map"),
            Step::PrivateMounts => namespaces("private mounts"),
            Step::Tmpfs => namespaces("tmpfs"),
            Step::TmpDir => namespaces("tmpfs on TMPDIR"),
            Step::Mountpoint => namespaces("mountpoint"),
            Step::Bind => namespaces("bind"),
            Step::Proc => namespaces("/proc"),
            Step::Setgroups => user("setgroups"),
            Step::Setresgid => user("setresgid"),
            Step::Setresuid => user("setresuid"),
            Step::Chdir => ContainError::Exec(format!("{}: {e}", self.dir_shown)),
            Step::LandlockProc => ContainError::Landlock(format!("/proc: {e}")),
            Step::NoNewPrivs => ContainError::Landlock(format!("no_new_privs: {e}")),
            Step::Restrict => ContainError::Landlock(format!("restricting: {e}")),
            Step::Exec => ContainError::Exec(format!("could not start {}: {e}", self.program_shown)),
        }
    }
}

/// The fork server's child: its own process group and output, batch scheduling, then
/// [`Prepared::enter`].
fn enter_as_package(prepared: &Prepared, stdio: Option<[RawFd; 2]>, namespaces_entered: bool) -> Failure {
    schedule_as_batch();
    if let Some([stdout, stderr]) = stdio {
        // SAFETY: setpgid and dup2 take plain integers.
        unsafe {
            libc::setpgid(0, 0);
            if libc::dup2(stdout, 1) < 0 || libc::dup2(stderr, 2) < 0 {
                return Failure::of(Step::Output);
            }
        }
    }
    prepared.enter_from(namespaces_entered)
}

/// Puts the calling process (and what it starts, which inherits the policy) under
/// `SCHED_BATCH`: the same share of the CPU as before, but no preempting of others on waking.
/// A node runs more packages than it has cores (a build's packages, other builds', the same
/// machine's other nodes); the daemon's few milliseconds between two packages — a result
/// going back, the next package's request and start — then wait behind compilers, each hop for
/// a time slice, and that wait is where a build's cores go idle. distcc and icecream `nice`
/// their jobs for the same reason; batch scheduling gives the daemon its turn without lowering
/// the packages' share. A failure changes nothing but the scheduling, so it is ignored.
pub fn schedule_as_batch() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler on the calling thread (pid 0) with a valid parameter; it
    // allocates nothing, so it is safe between fork and exec.
    unsafe {
        libc::sched_setscheduler(0, libc::SCHED_BATCH, &param);
    }
}

/// Runs `start` (which starts a process) with the calling thread under `SCHED_BATCH`, then puts
/// the thread's own policy back: on Linux the policy is per thread and a child inherits its
/// parent thread's, so the process has it from its first instruction — set on the child after
/// it started, a child that started one of its own at once could leave that one without it.
pub fn batch_scheduled<T>(start: impl FnOnce() -> T) -> T {
    let mut param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_getscheduler and sched_getparam on the calling thread, into a valid struct.
    let policy = unsafe { libc::sched_getscheduler(0) };
    let saved = policy >= 0 && unsafe { libc::sched_getparam(0, &mut param) } == 0;
    schedule_as_batch();
    let started = start();
    if saved {
        // SAFETY: the policy and parameter this thread had, given back to it.
        unsafe {
            libc::sched_setscheduler(0, policy, &param);
        }
    }
    started
}

/// The first steps in a package's new namespaces, the same for every package of a process:
/// map the user (in a new user namespace), make every mount private (nothing mounted here
/// reaches the server's namespace, nor the other way) and mount this PID namespace's `/proc`.
fn enter_namespaces(user_map: Option<&UserMap>) -> Result<(), Failure> {
    if let Some(map) = user_map {
        map.write()?;
    }
    let none = std::ptr::null::<c_char>();
    let private = (libc::MS_REC | libc::MS_PRIVATE) as libc::c_ulong;
    let proc_flags = (libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC) as libc::c_ulong;
    let proc = c"proc".as_ptr();
    // SAFETY: mount on NUL-terminated strings and null pointers where the call allows them.
    unsafe {
        check(Step::PrivateMounts, libc::mount(none, c"/".as_ptr(), none, private, std::ptr::null()))?;
        check(Step::Proc, libc::mount(proc, c"/proc".as_ptr(), proc, proc_flags, std::ptr::null()))?;
    }
    Ok(())
}

/// A child made ahead of its package (issue 14): cloned into the package namespaces of this
/// process, where it has taken [`enter_namespaces`]' steps, then sleeps until [`Spare::start`]
/// hands it a prepared package. The fork server makes the next one as soon as a package has
/// exec'd, so the clone into new namespaces, the private mounts and `/proc` overlap the
/// previous package's run instead of coming before the next.
///
/// Like [`Prepared::spawn`]'s child it shares this process's memory (`CLONE_VM`) and its
/// descriptor table (`CLONE_FILES`, so that it can take the package's output, which arrives
/// after it was made; it takes a copy of the table of its own when started). While it runs
/// ahead and sleeps it writes nothing but its stack and the [`HandOff`] (its `errno` is this
/// process's too: it fails nowhere but in steps whose failure it keeps for later); once started,
/// this process waits until it has exec'd or exited, as with `CLONE_VFORK`: the kernel clears
/// [`HandOff::alive`] and wakes it then (`CLONE_CHILD_CLEARTID`). It dies with this process
/// (`PR_SET_PDEATHSIG`, cleared before its package's exec).
#[derive(Debug)]
pub struct Spare {
    pid: Pid,
    /// At a fixed address, shared with the child; never moved or freed while it may run.
    handoff: Box<HandOff>,
    /// Its stack, handed back by [`Spare::start`] for the next one.
    stack: Option<ChildStack>,
}

/// What a [`Spare`] and the process that made it share.
#[derive(Debug)]
struct HandOff {
    /// [`HandOff::WAITING`] until the package is handed over, then [`HandOff::GO`] (a futex).
    state: std::sync::atomic::AtomicU32,
    /// Non-zero until the child has exec'd or exited: the kernel zeroes it then and wakes its
    /// futex (`CLONE_CHILD_CLEARTID`).
    alive: std::sync::atomic::AtomicU32,
    user_map: Option<UserMap>,
    prepared: Cell<*const Prepared>,
    stdio: Cell<[RawFd; 2]>,
    /// Why the child failed (it then exits [`CANNOT_CONTAIN`]).
    failed: Cell<Option<Failure>>,
}

impl HandOff {
    const WAITING: u32 = 0;
    const GO: u32 = 1;
}

impl Spare {
    /// Clones a spare in `namespaces` on `stack`; on failure the stack is handed back.
    pub fn new(namespaces: Namespaces, stack: ChildStack) -> Result<Spare, (ChildStack, Errno)> {
        use std::sync::atomic::AtomicU32;
        let handoff = Box::new(HandOff {
            state: AtomicU32::new(HandOff::WAITING),
            alive: AtomicU32::new(1),
            user_map: namespaces.user_map(),
            prepared: Cell::new(std::ptr::null()),
            stdio: Cell::new([-1, -1]),
            failed: Cell::new(None),
        });
        let mut stack = stack;
        let top = {
            let usable = stack.usable();
            // The stack grows down from the end of its mapping (page-aligned).
            usable.as_mut_ptr().wrapping_add(usable.len()).cast::<libc::c_void>()
        };
        let flags =
            libc::CLONE_VM | libc::CLONE_FILES | libc::CLONE_CHILD_CLEARTID | namespaces.flags().bits() | libc::SIGCHLD;
        let arg = (&*handoff as *const HandOff).cast_mut().cast::<libc::c_void>();
        // SAFETY: the child runs `spare_main` on its own stack with the hand-off, which outlives
        // it (see `Drop`); it allocates nothing, takes no lock and writes only its stack and the
        // hand-off's cells, which this process reads only once the kernel has cleared `alive`.
        let pid = unsafe {
            libc::clone(
                spare_main,
                top,
                flags,
                arg,
                std::ptr::null_mut::<libc::pid_t>(),
                std::ptr::null_mut::<libc::c_void>(),
                handoff.alive.as_ptr(),
            )
        };
        if pid < 0 {
            return Err((stack, Errno::last()));
        }
        Ok(Spare { pid: Pid::from_raw(pid), handoff, stack: Some(stack) })
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Whether it has neither exec'd nor exited (killed from outside, say).
    pub fn alive(&self) -> bool {
        self.handoff.alive.load(std::sync::atomic::Ordering::Acquire) != 0
    }

    /// Hands it `prepared` with `stdio` as its stdout and stderr ([`Prepared::spawn`]'s
    /// `stdio`), and waits until it has exec'd the package or failed. Returns its pid, why it
    /// failed if it did, and the stack for the next spare.
    pub fn start(mut self, prepared: &Prepared, stdio: [RawFd; 2]) -> (Pid, Option<Failure>, ChildStack) {
        use std::sync::atomic::Ordering;
        let handoff = &self.handoff;
        handoff.prepared.set(prepared);
        handoff.stdio.set(stdio);
        handoff.state.store(HandOff::GO, Ordering::Release);
        futex_wake(&handoff.state);
        loop {
            let alive = handoff.alive.load(Ordering::Acquire);
            if alive == 0 {
                break;
            }
            futex_wait(&handoff.alive, alive);
        }
        let failed = handoff.failed.get();
        let stack = self.stack.take().unwrap_or_else(|| unreachable!("a spare's stack is taken once, here"));
        (self.pid, failed, stack)
    }
}

impl Spare {
    /// Ends one never started: kills it if it still lives, waits until it is gone from this
    /// memory and hands back its stack; the caller reaps it.
    pub fn end(mut self) -> ChildStack {
        self.kill();
        self.stack.take().unwrap_or_else(|| unreachable!("a spare's stack is taken once"))
    }

    fn kill(&self) {
        use std::sync::atomic::Ordering;
        if self.handoff.alive.load(Ordering::Acquire) != 0 {
            let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        }
        loop {
            let alive = self.handoff.alive.load(Ordering::Acquire);
            if alive == 0 {
                break;
            }
            futex_wait(&self.handoff.alive, alive);
        }
    }
}

impl Drop for Spare {
    /// One never started is killed first: its stack and hand-off go with it.
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sleeps while `word` holds `expected` (or until a signal or a spurious wake-up). Shared, not
/// process-private: the kernel's wake-up for `CLONE_CHILD_CLEARTID` is a shared one.
fn futex_wait(word: &std::sync::atomic::AtomicU32, expected: u32) {
    // SAFETY: FUTEX_WAIT on a valid, aligned u32 that outlives the call, no timeout.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, expected, std::ptr::null::<libc::timespec>())
    };
}

/// Wakes whoever sleeps on `word`.
fn futex_wake(word: &std::sync::atomic::AtomicU32) {
    // SAFETY: FUTEX_WAKE on a valid, aligned u32.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1) };
}

/// A [`Spare`]'s life: dies with its maker, takes the namespaces' first steps, sleeps until a
/// package is handed over, takes its own copy of the descriptor table (with the package's
/// output in it) and becomes the package.
extern "C" fn spare_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the hand-off `Spare::new` passed, alive as long as this child may run.
    let handoff = unsafe { &*arg.cast_const().cast::<HandOff>() };
    // SAFETY: prctl takes plain integers.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let entered = enter_namespaces(handoff.user_map.as_ref());
    use std::sync::atomic::Ordering;
    while handoff.state.load(Ordering::Acquire) != HandOff::GO {
        futex_wait(&handoff.state, HandOff::WAITING);
    }
    let failure = match entered {
        Err(failure) => failure,
        // SAFETY: set before GO, alive until this child has exec'd or exited.
        Ok(()) => unsafe {
            let prepared = &*handoff.prepared.get();
            if libc::unshare(libc::CLONE_FILES) < 0 {
                Failure::of(Step::Output)
            } else {
                libc::prctl(libc::PR_SET_PDEATHSIG, 0);
                enter_as_package(prepared, Some(handoff.stdio.get()), true)
            }
        },
    };
    handoff.failed.set(Some(failure));
    CANNOT_CONTAIN
}

/// The stack of a child that shares the fork server's memory, below it a page that faults: one,
/// made once, since `CLONE_VFORK` lets one child at a time run on it.
#[derive(Debug)]
pub struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

impl ChildStack {
    const SIZE: usize = 256 * 1024;
    const GUARD: usize = 4096;

    pub fn new() -> std::io::Result<ChildStack> {
        // SAFETY: a fresh private anonymous mapping, owned by the returned value.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let stack = ChildStack { base, len: Self::SIZE };
        // SAFETY: the lowest page of the mapping made above.
        if unsafe { libc::mprotect(base, Self::GUARD, libc::PROT_NONE) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stack)
    }

    fn usable(&mut self) -> &mut [u8] {
        // SAFETY: the mapping above its guard page, owned by self and borrowed mutably with it.
        unsafe { std::slice::from_raw_parts_mut(self.base.cast::<u8>().add(Self::GUARD), self.len - Self::GUARD) }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer used.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

impl Landlock {
    /// Adds `/proc`'s rule (the `/proc` this process sees now), then restricts this process.
    ///
    /// # Safety
    /// System calls only; the ruleset's descriptor is valid while `self` lives.
    unsafe fn restrict(&self) -> Result<(), Failure> {
        let ruleset = self.ruleset.as_raw_fd();
        let proc = check(Step::LandlockProc, libc::open(c"/proc".as_ptr(), libc::O_PATH | libc::O_CLOEXEC))? as RawFd;
        let rule = PathBeneathAttr { allowed_access: self.proc_access, parent_fd: proc };
        const LANDLOCK_RULE_PATH_BENEATH: libc::c_long = 1;
        let added = libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset,
            LANDLOCK_RULE_PATH_BENEATH,
            &rule as *const PathBeneathAttr,
            0,
        );
        let failure = Failure::of(Step::LandlockProc);
        libc::close(proc);
        if added < 0 {
            return Err(failure);
        }
        check(Step::NoNewPrivs, libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        check(Step::Restrict, libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0))?;
        Ok(())
    }
}

/// The ruleset of `spec`: read/execute on the system and the declared tools, read/write on the
/// sandbox and the devices; `/proc`'s rule is added by [`Landlock::restrict`].
fn landlock(spec: &Spec) -> Result<Landlock, ContainError> {
    let ll = |e: RulesetError| ContainError::Landlock(e.to_string());
    let read = AccessFs::from_read(LANDLOCK_ABI);
    let all = AccessFs::from_all(LANDLOCK_ABI);
    let system = system_rules().iter().map(|(fd, access)| Ok::<_, RulesetError>(PathBeneath::new(fd.as_fd(), *access)));
    let created = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)
        .map_err(ll)?
        .scope(Scope::from_all(LANDLOCK_ABI))
        .map_err(ll)?
        .create()
        .map_err(ll)?
        .add_rules(system)
        .map_err(ll)?
        .add_rules(path_beneath_rules(&spec.read_only, read))
        .map_err(ll)?
        .add_rules(path_beneath_rules([&spec.dir], all))
        .map_err(ll)?;
    // No descriptor: this kernel enforces nothing.
    let ruleset: Option<OwnedFd> = created.into();
    Ok(Landlock { ruleset: ruleset.ok_or(ContainError::LandlockMissing)?, proc_access: proc_access() })
}

/// The system's locations and devices, opened once per process (a fork server serves thousands
/// of packages; each `open` of these ~15 paths was a path walk per package), with the rights
/// each gets: read/execute on the locations, all on the devices, either cut to what a file can
/// have when it is not a directory.
fn system_rules() -> &'static [(PathFd, BitFlags<AccessFs>)] {
    static RULES: OnceLock<Vec<(PathFd, BitFlags<AccessFs>)>> = OnceLock::new();
    RULES.get_or_init(|| {
        let read = SYSTEM_READ.iter().map(|p| (*p, AccessFs::from_read(LANDLOCK_ABI)));
        let devices = DEVICES.iter().map(|p| (*p, AccessFs::from_all(LANDLOCK_ABI)));
        read.chain(devices)
            .filter_map(|(path, access)| {
                let fd = PathFd::new(path).ok()?;
                let is_dir = std::fs::metadata(path).map(|m| m.is_dir()).unwrap_or(true);
                Some((fd, if is_dir { access } else { access & AccessFs::from_file(LANDLOCK_ABI) }))
            })
            .collect()
    })
}

/// The rights `/proc` gets: read/execute, as far as this kernel's Landlock knows them (what the
/// crate's best effort hands the other rules; a right the ruleset does not handle is refused).
fn proc_access() -> u64 {
    static ACCESS: OnceLock<u64> = OnceLock::new();
    *ACCESS.get_or_init(|| {
        const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
        // SAFETY: the version query takes no ruleset and returns a number.
        let version = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<u8>(),
                0usize,
                LANDLOCK_CREATE_RULESET_VERSION,
            )
        };
        let kernel = ABI::from(i32::try_from(version).unwrap_or(0));
        (AccessFs::from_read(LANDLOCK_ABI) & AccessFs::from_all(kernel)).bits()
    })
}

fn c_path(path: &Path) -> Result<CString, std::ffi::NulError> {
    CString::new(path.as_os_str().as_bytes())
}

impl Exec {
    fn new<K, V>(argv: &[String], env: impl IntoIterator<Item = (K, V)>) -> Result<Exec, ContainError>
    where
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let args: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|_| ContainError::Exec("an argument contains a NUL byte".into()))?;
        let Some(program) = argv.first() else { return Err(ContainError::Exec("no command".into())) };
        // In order, a later value of a name replacing the earlier in its place, as `setenv` does.
        let mut vars: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for (name, value) in env {
            let (name, value) = (name.as_ref().as_bytes(), value.as_ref().as_bytes());
            if name.is_empty() || name.contains(&b'=') || name.contains(&0) || value.contains(&0) {
                let shown = String::from_utf8_lossy(name);
                return Err(ContainError::Exec(format!("the environment variable {shown:?} cannot be set")));
            }
            match vars.iter_mut().find(|(n, _)| n == name) {
                Some((_, v)) => *v = value.to_vec(),
                None => vars.push((name.to_vec(), value.to_vec())),
            }
        }
        let path = vars.iter().find(|(n, _)| n == b"PATH").map(|(_, v)| v.as_slice()).unwrap_or(DEFAULT_PATH);
        let candidates =
            candidates(program.as_bytes(), path).into_iter().filter_map(|c| CString::new(c).ok()).collect();
        let envp: Vec<CString> = vars
            .into_iter()
            .filter_map(|(mut n, v)| {
                n.push(b'=');
                n.extend(v);
                CString::new(n).ok()
            })
            .collect();
        let pointers = |strings: &[CString]| -> Vec<*const c_char> {
            strings.iter().map(|s| s.as_ptr()).chain(std::iter::once(std::ptr::null())).collect()
        };
        let script = [c"/bin/sh".as_ptr(), std::ptr::null()]
            .into_iter()
            .chain(args.iter().skip(1).map(|a| a.as_ptr()))
            .chain(std::iter::once(std::ptr::null()))
            .map(Cell::new)
            .collect();
        Ok(Exec { candidates, argv: pointers(&args), _argv: args, envp: pointers(&envp), _envp: envp, script })
    }

    /// Execs the first candidate the kernel takes, every descriptor but 0–2 closed by the exec, after
    /// restoring the signal handling a shell would give the package (the launcher ignores
    /// SIGPIPE and the fork server blocks SIGCHLD; both would outlive the exec). Errors as
    /// `execvp`'s: a candidate that is missing or not a directory on the way is passed over,
    /// one that may not be run is remembered (EACCES at the end), any other error ends the search.
    fn run(&self) -> Result<Never, Failure> {
        close_on_exec_from(3);
        // SAFETY (the block): system calls on arrays of NUL-terminated strings that end in a
        // null pointer and outlive the calls.
        unsafe {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            let (mut denied, mut last) = (false, Errno::ENOENT);
            for candidate in &self.candidates {
                libc::execve(candidate.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr());
                if Errno::last() == Errno::ENOEXEC {
                    if let Some(slot) = self.script.get(1) {
                        slot.set(candidate.as_ptr());
                    }
                    // `Cell<*const c_char>` has the layout of `*const c_char`.
                    let script = self.script.as_ptr().cast::<*const c_char>();
                    libc::execve(c"/bin/sh".as_ptr(), script, self.envp.as_ptr());
                }
                last = Errno::last();
                match last {
                    Errno::EACCES => denied = true,
                    Errno::ENOENT | Errno::ESTALE | Errno::ENOTDIR | Errno::ENODEV | Errno::ETIMEDOUT => {}
                    _ => return Err(Failure { step: Step::Exec, errno: last }),
                }
            }
            Err(Failure { step: Step::Exec, errno: if denied { Errno::EACCES } else { last } })
        }
    }
}

/// What `execvp` tries for `program` on `path`: the program itself when it names a path, else
/// each place on the path (an empty place is the working directory).
fn candidates(program: &[u8], path: &[u8]) -> Vec<Vec<u8>> {
    if program.is_empty() {
        return Vec::new();
    }
    if program.contains(&b'/') {
        return vec![program.to_vec()];
    }
    path.split(|b| *b == b':')
        .map(|place| match place {
            [] => program.to_vec(),
            _ => [place, b"/", program].concat(),
        })
        .collect()
}

/// The exit code that tells the package's fate, as a shell would.
fn wait_for(child: Pid) -> i32 {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
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

/// Plans making the sandbox and the declared tools reachable for `nobody` at their own paths:
/// each directory that blocks the way is covered by an empty tmpfs in which only the bind mounts
/// of what the package may use appear. What else was under it (the data dir, other sandboxes)
/// is not there at all. Returns the covers and, in order, the mount points and bind mounts.
fn expose_to_nobody(spec: &Spec) -> Result<(Vec<CString>, Vec<MountStep>), ContainError> {
    let nul = |_| ContainError::Namespaces("a path contains a NUL byte".into());
    let targets: Vec<PathBuf> = std::iter::once(spec.dir.clone())
        .chain(spec.read_only.iter().cloned())
        .filter_map(|p| p.canonicalize().ok())
        .collect();
    let mut plan: Vec<(PathBuf, PathBuf, bool)> = Vec::new();
    for t in targets {
        if let Some(blocking) = first_blocking_ancestor(&t) {
            let is_dir = std::fs::metadata(&t).map_err(|e| ContainError::Namespaces(format!("open: {e}")))?.is_dir();
            plan.push((blocking, t, is_dir));
        }
    }
    let mut covered: Vec<PathBuf> = Vec::new();
    for (blocking, _, _) in &plan {
        if !covered.iter().any(|c| blocking.starts_with(c)) {
            covered.push(blocking.clone());
        }
    }
    let mut made: Vec<PathBuf> = Vec::new();
    let mut mounts = Vec::new();
    for (_, target, is_dir) in plan {
        let cover = covered.iter().find(|c| target.starts_with(c));
        // The folders from below the cover down to the mount point (or the folder it is in).
        let deepest = if is_dir { Some(target.as_path()) } else { target.parent() };
        let mut folders: Vec<&Path> = deepest
            .into_iter()
            .flat_map(Path::ancestors)
            .take_while(|a| Some(*a) != cover.map(PathBuf::as_path))
            .collect();
        folders.reverse();
        for folder in folders {
            if !made.iter().any(|m| m == folder) {
                made.push(folder.to_path_buf());
                mounts.push(MountStep::Dir(c_path(folder).map_err(nul)?));
            }
        }
        if !is_dir {
            mounts.push(MountStep::File(c_path(&target).map_err(nul)?));
        }
        mounts.push(MountStep::Bind { target: c_path(&target).map_err(nul)?, handle: Cell::new(-1) });
    }
    let covers = covered.iter().map(|c| c_path(c)).collect::<Result<_, _>>().map_err(nul)?;
    Ok((covers, mounts))
}

/// The most a package's TMPDIR holds: the machine's memory over twice its cores. Worked out
/// once per process: `available_parallelism` reads the cgroup files under `/proc` and `/sys`
/// each time, which was 16 % of the fork server's CPU when it ran per package.
fn tmp_bytes() -> u64 {
    static BYTES: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| {
        // SAFETY: sysconf takes a constant and returns a number (-1 when unknown).
        let (pages, page) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
        let memory = (pages.max(0) as u64).saturating_mul(page.max(0) as u64);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        (memory / (2 * cores)).max(64 << 20)
    })
}

/// Gives every entry under `dir` to `user`, without following links — except files with more
/// than one link: inputs the daemon linked in from its store (`Cas::materialize`), whose inode is
/// the store's object; given to `user`, it could chmod and rewrite them.
fn chown_tree(dir: &Path, user: u32) -> std::io::Result<()> {
    chown_entry(dir, &std::fs::symlink_metadata(dir)?, user)
}

/// [`chown_tree`] of an entry whose metadata is known. What `user` owns already is left as it
/// is (a pooled sandbox's kept directories: the chown changed nothing, and its path walk and
/// the stat before it by full path were most of the fork server's time per package); entries
/// are stat'ed through their directory's listing.
fn chown_entry(path: &Path, meta: &std::fs::Metadata, user: u32) -> std::io::Result<()> {
    if meta.is_file() && meta.nlink() > 1 {
        return Ok(());
    }
    if (meta.uid(), meta.gid()) != (user, user) {
        std::os::unix::fs::lchown(path, Some(user), Some(user))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            chown_entry(&entry.path(), &entry.metadata()?, user)?;
        }
    }
    Ok(())
}

/// What this kernel lets a package be contained with, found by trying it in this (throwaway)
/// process: `buildnet sandbox-exec --probe` prints it.
pub fn probe() -> SandboxLevel {
    let here = Namespaces::here();
    let namespaces = unshare(here.flags()).is_ok() && here.user_map().is_none_or(|map| map.write().is_ok());
    let landlock = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(LANDLOCK_ABI))
        .and_then(|r| r.create())
        .and_then(|r| r.restrict_self())
        .map(|s| s.ruleset != landlock::RulesetStatus::NotEnforced)
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

    #[test]
    fn the_command_is_looked_for_where_execvp_would() {
        let found = |program: &str, path: &str| -> Vec<String> {
            candidates(program.as_bytes(), path.as_bytes()).iter().map(|c| String::from_utf8_lossy(c).into()).collect()
        };
        assert_eq!(found("cc", "/opt/gcc/bin:/usr/bin"), ["/opt/gcc/bin/cc", "/usr/bin/cc"]);
        assert_eq!(found("cc", ":bin:"), ["cc", "bin/cc", "cc"], "an empty place is the working directory");
        assert_eq!(found("./configure", "/usr/bin"), ["./configure"], "a path is not looked for");
        assert!(found("", "/usr/bin").is_empty());
    }

    #[test]
    fn an_environment_that_cannot_be_set_is_refused() {
        let spec = Spec {
            dir: PathBuf::from("/tmp"),
            read_only: vec![],
            level: SandboxLevel::None,
            user: None,
            tmp: None,
            given: false,
            argv: vec!["true".into()],
        };
        for (name, value) in [("A=B", "x"), ("", "x"), ("A", "nul\0inside")] {
            let e = Prepared::new(&spec, [(name, value)]).expect_err(name);
            assert!(e.to_string().contains("cannot be set"), "{e}");
        }
        let no_command = Spec { argv: vec![], ..spec };
        assert_eq!(Prepared::new(&no_command, [("A", "1")]).expect_err("no command").to_string(), "no command");
    }

    /// Runs `prepared` as the fork server does: its status, why it failed, what it printed.
    fn spawned(prepared: &Prepared, stack: &mut ChildStack) -> (WaitStatus, Option<Failure>, String) {
        use std::io::Read;
        let (mut read, write) = std::io::pipe().expect("pipe");
        let write = OwnedFd::from(write);
        let (pid, failed) = prepared.spawn(stack, Some([write.as_raw_fd(), write.as_raw_fd()])).expect("spawned");
        drop(write);
        let mut said = String::new();
        read.read_to_string(&mut said).expect("output");
        (waitpid(pid, None).expect("waited"), failed, said)
    }

    /// A spare made ahead (a root node's or, with a user namespace, an unprivileged one's): the
    /// package it is handed is PID 1 of its namespaces with its own `/proc`; one never handed a
    /// package is killed and its stack serves the next; a failure is left for the server to
    /// word, as with a child made at once.
    #[test]
    fn a_spare_made_ahead_becomes_the_package_it_is_handed() {
        use std::io::Read;
        if !Uid::effective().is_root() {
            eprintln!("skipped: needs root (or user namespaces, which this test does not probe)");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = Spec {
            dir: dir.path().to_path_buf(),
            read_only: vec![],
            level: SandboxLevel::Full,
            user: None,
            tmp: None,
            given: false,
            argv: vec![
                "sh".into(),
                "-c".into(),
                "echo pid=$$ $(cat /proc/1/comm) $(ls /proc | grep -c '^[0-9]')".into(),
            ],
        };
        let run = |spare: Spare, prepared: &Prepared| {
            let (mut read, write) = std::io::pipe().expect("pipe");
            let write = OwnedFd::from(write);
            let (pid, failed, stack) = spare.start(prepared, [write.as_raw_fd(), write.as_raw_fd()]);
            drop(write);
            let mut said = String::new();
            read.read_to_string(&mut said).expect("output");
            (waitpid(pid, None).expect("waited"), failed, said, stack)
        };
        let prepared = Prepared::new(&spec, [("PATH", "/usr/bin:/bin")]).expect("prepared");
        let spare = Spare::new(Namespaces::here(), ChildStack::new().expect("stack")).expect("spare");
        // It is in its namespaces before it has a package.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(spare.alive());
        let (status, failed, said, stack) = run(spare, &prepared);
        assert_eq!((status, failed), (WaitStatus::Exited(status.pid().expect("pid"), 0), None), "{said}");
        assert_eq!(said, "pid=1 sh 4\n", "PID 1 of its namespace, seeing only itself, a subshell, ls and grep");

        let unused = Spare::new(Namespaces::here(), stack).expect("spare");
        let pid = unused.pid();
        let stack = unused.end();
        assert!(matches!(waitpid(pid, None), Ok(WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGKILL, _))));

        let missing = Spec { argv: vec!["no-such-tool-4711".into()], ..spec };
        let prepared = Prepared::new(&missing, [("PATH", "/usr/bin:/bin")]).expect("prepared");
        let spare = Spare::new(Namespaces::here(), stack).expect("spare");
        let (status, failed, said, _) = run(spare, &prepared);
        assert_eq!(status, WaitStatus::Exited(status.pid().expect("pid"), CANNOT_CONTAIN));
        assert_eq!(said, "", "the child does not write: the fork server does, from what it left");
        assert_eq!(
            prepared.explain(failed.expect("why")).to_string(),
            "could not start no-such-tool-4711: ENOENT: No such file or directory"
        );
    }

    /// On a root node: PID 1 of its namespaces, `nobody`, and its sandbox reached through a folder
    /// `nobody` may not pass (covered by a tmpfs with the sandbox bound into it: the binds' sources
    /// are opened by the child, in its own mount namespace), and nothing else of that folder.
    #[test]
    fn as_nobody_a_package_reaches_its_sandbox_and_nothing_else_of_a_closed_folder() {
        use std::os::unix::fs::PermissionsExt;
        if !Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let sandbox = dir.path().join("sandboxes/p");
        std::fs::create_dir_all(&sandbox).expect("sandbox");
        std::fs::create_dir(dir.path().join("sandboxes/other")).expect("another sandbox");
        std::fs::write(dir.path().join("admin.key"), "secret").expect("key");
        let closed = dir.path().display();
        let spec = Spec {
            dir: sandbox.clone(),
            read_only: vec![],
            level: SandboxLevel::Full,
            user: Some(NOBODY),
            tmp: None,
            given: false,
            argv: vec![
                "sh".into(),
                "-c".into(),
                format!(
                    "echo uid=$(id -u) pid=$$; cat {closed}/admin.key; ls {closed}/sandboxes/other && echo SAW-OTHER; \
                     echo made > out && echo wrote"
                ),
            ],
        };
        let prepared = Prepared::new(&spec, [("PATH", "/usr/bin:/bin")]).expect("prepared");
        let (status, failed, said) = spawned(&prepared, &mut ChildStack::new().expect("stack"));
        assert_eq!((status, failed), (WaitStatus::Exited(status.pid().expect("pid"), 0), None), "{said}");
        assert!(said.starts_with("uid=65534 pid=1\n") && said.ends_with("wrote\n"), "{said}");
        assert!(!said.contains("secret") && !said.contains("SAW-OTHER"), "{said}");
        assert_eq!(std::fs::metadata(sandbox.join("out")).expect("written").uid(), NOBODY);
    }

    /// What the fork server does, in this (multi-threaded) test process: the child shares this
    /// memory, so it must run on what was prepared, allocating nothing.
    #[test]
    fn a_child_sharing_this_memory_is_contained_gets_its_environment_and_says_why_it_failed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let sandbox = dir.path().join("sandbox");
        std::fs::create_dir(&sandbox).expect("sandbox");
        // No `#!` line: the kernel cannot exec it, so it is run by /bin/sh, as execvp does.
        std::fs::write(sandbox.join("script"), "echo from-a-script\n").expect("script");
        std::fs::set_permissions(sandbox.join("script"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let outside = dir.path().join("outside");
        let shell = format!(
            "env | grep -v -e ^PWD= -e ^SHLVL= -e ^_= | sort; ./script; echo in > inside && echo wrote-inside; \
             (echo out > {}) 2>/dev/null || echo kept-out",
            outside.display()
        );
        let spec = Spec {
            dir: sandbox.clone(),
            read_only: vec![],
            level: SandboxLevel::Landlock,
            user: None,
            tmp: None,
            given: false,
            argv: vec!["sh".into(), "-c".into(), shell],
        };
        let env = [("PATH", "/usr/bin:/bin"), ("A", "first"), ("B", "b"), ("A", "second")];
        let prepared = Prepared::new(&spec, env).expect("prepared");
        let mut stack = ChildStack::new().expect("stack");
        let (status, failed, said) = spawned(&prepared, &mut stack);
        assert_eq!((status, failed), (WaitStatus::Exited(status.pid().expect("pid"), 0), None), "{said}");
        assert_eq!(
            said, "A=second\nB=b\nPATH=/usr/bin:/bin\nfrom-a-script\nwrote-inside\nkept-out\n",
            "exactly its environment, a later value in the earlier's place"
        );
        assert!(sandbox.join("inside").exists() && !outside.exists());

        let missing = Spec { argv: vec!["no-such-tool-4711".into()], ..spec };
        let prepared = Prepared::new(&missing, [("PATH", "/usr/bin:/bin")]).expect("prepared");
        let (status, failed, said) = spawned(&prepared, &mut stack);
        assert_eq!(status, WaitStatus::Exited(status.pid().expect("pid"), CANNOT_CONTAIN));
        assert_eq!(said, "", "the child does not write: the fork server does, from what it left");
        let failed = failed.expect("the child left why it failed");
        assert_eq!(
            prepared.explain(failed).to_string(),
            "could not start no-such-tool-4711: ENOENT: No such file or directory"
        );
    }
}
