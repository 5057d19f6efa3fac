//! The fork server: one long-lived launcher per node that starts every contained package.
//!
//! Exec'ing the 27 MB position-independent binary per package (`buildnet sandbox-exec -- …`)
//! cost ~4 ms of CPU before containment began — the dynamic loader's relocations, page faults,
//! mapping and unmapping. Instead the daemon runs `buildnet sandbox-exec --serve` once, a
//! single-threaded process that may fork freely (the daemon, with its threads, never forks),
//! connected by a socketpair handed over as its stdin: no path on disk, nothing else can reach it.
//!
//! Per package the daemon sends a [`Request`] — the [`Spec`] and the environment — with the
//! package's stdout and stderr (SCM_RIGHTS) in one `SOCK_SEQPACKET` message. The server prepares
//! the containment ([`Prepared::new`]: everything that allocates or looks things up) and makes the
//! child with one `clone(CLONE_VM | CLONE_VFORK)` on a stack of its own — or, when the level has
//! new PID and mount namespaces, hands it to a child already made in them (a [`Spare`], below;
//! the package is PID 1 there, the server's own child).
//! The child shares the server's memory — no page tables copied, nothing faulted in again, which
//! a fork of the server's image cost every package — and the server waits until it has exec'd or
//! failed. The child makes itself a process group, takes those descriptors as 1 and 2 and runs
//! the rest ([`Prepared::enter`], the code the one-shot launcher runs too: system calls on
//! prepared memory, closing every other descriptor before the exec, so the package inherits
//! nothing of the server's or the daemon's). A child that failed leaves the reason in the shared
//! memory, and the server writes it to the package's stderr. The server answers `Started` with the
//! pid (the daemon can still `kill(-pgid)` on cancel), and when the child exits it kills what is
//! left of the group, reaps the child and answers `Exited` with the wait status and its CPU time.
//! Replies carry the request's id, so any number of packages are in flight at once; the server
//! polls the socket and a signalfd for SIGCHLD.
//!
//! With namespaces, the child is made ahead (a [`Spare`]): as soon as a package has exec'd, the
//! server clones the next child into new namespaces, where it makes its mounts private and
//! mounts its `/proc` while that package runs, then sleeps until the next request hands it its
//! prepared package. So the clone and those mounts are off the next package's path (issue 14).
//! The spare's mount namespace is a copy of the server's made at its clone: when the server's
//! mount table has changed since (`/proc/self/mountinfo` polls `POLLPRI`), the spare is replaced
//! before it is used, so a package sees what was mounted before it was asked for.
//!
//! The last reference to a mount namespace tears it down, and that waits for an RCU grace period
//! (`namespace_unlock` → `synchronize_rcu_expedited`: milliseconds on a loaded 2-vCPU machine).
//! So that neither the package's result nor the server waits for it, the server opens each
//! child's mount namespace (`/proc/<pid>/ns/mnt`) and hands it to the daemon with `Started`; the
//! daemon keeps it until the package's `Exited` and then lets go of it on a thread of its own.
//! The server closes its copy once the message carrying one is sent, and the daemon lets go only
//! after `Exited`, which the server sends later: the server's close is not the last reference
//! (a spare replaced unused, rare, is the exception). It opens the namespace when the spare is
//! made, not once the package has exec'd: that open waits on the child's exec
//! (`proc_ns_get_link` takes the task's `exec_update_lock`, which `execve` holds while it loads
//! the program), and the server, which starts and reaps every package of the node, sat in it
//! 0.5–7 ms about a dozen times per 30-package C build (`sched_switch` stacks, issue 14).
//!
//! Failure: when the server dies, the daemon's reader thread sees the socket close; every package
//! in flight fails with an error naming the launcher (and its group is killed by the daemon), and
//! the next package starts a fresh server. When the daemon dies, the server sees the socket close,
//! kills the groups it started and exits.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{
    recvmsg, sendmsg, shutdown, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, Shutdown,
    SockFlag, SockType,
};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::contain::{close_from, ChildStack, Failure, Namespaces, Prepared, Spare, Spec};
use super::sandbox::try_reap;

/// The largest request: a package's command and environment. A `SOCK_SEQPACKET` message must fit
/// the socket's send buffer (208 KiB by default); Linux refuses a single argument over 128 KiB
/// anyway.
const MAX_REQUEST: usize = 160 * 1024;

/// One package to start, daemon to server; its stdout and stderr travel with it.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    id: u64,
    spec: Spec,
    /// The package's whole environment, in order (a later name wins).
    env: Vec<(String, String)>,
}

/// A [`Request`] as the daemon writes it, borrowing what it sends.
#[derive(Serialize)]
struct RequestOut<'a> {
    id: u64,
    spec: &'a Spec,
    env: &'a [(String, String)],
}

/// Server to daemon, about the request `id`.
#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Started {
        id: u64,
        pid: u32,
    },
    NotStarted {
        id: u64,
        error: String,
    },
    /// `status` is the raw wait status; `cpu_ms` the user and system time of the child and of
    /// everything it reaped.
    Exited {
        id: u64,
        status: i32,
        cpu_ms: u64,
    },
}

// ---------------------------------------------------------------------------------------------
// The server: `buildnet sandbox-exec --serve`.

/// Runs the fork server on the socket that is this process's stdin until the daemon closes it.
/// Must be called before anything starts a thread.
pub fn serve() -> i32 {
    let mut server = match Server::open() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("buildnet sandbox-exec --serve: {e}");
            return 1;
        }
    };
    let code = match server.run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("buildnet sandbox-exec --serve: {e}");
            1
        }
    };
    // The daemon is gone (or cannot be answered): nobody waits for these packages.
    for pid in server.children.keys() {
        let _ = killpg(*pid, Signal::SIGKILL);
    }
    code
}

/// A started package: its pid, why it failed if it did, and its mount namespace (when it has
/// one of its own and it could be opened).
type Launched = (Pid, Option<Failure>, Option<OwnedFd>);

/// A spare with its mount namespace, opened while it waits for its package: the package's, since
/// the spare made it at its clone and the package only adds mounts to it. Not opened (a spare that
/// died already, say): the package's exit pays for the teardown, and nothing is lost but time.
fn with_mount_namespace(spare: Spare) -> (Spare, Option<OwnedFd>) {
    let namespace = std::fs::File::open(format!("/proc/{}/ns/mnt", spare.pid())).ok().map(OwnedFd::from);
    (spare, namespace)
}

struct Server {
    socket: OwnedFd,
    exits: SignalFd,
    /// The stack of the child that becomes the next package without namespaces (see
    /// [`Prepared::spawn`]).
    stack: ChildStack,
    /// The child made ahead that becomes the next package with namespaces, once one came, and
    /// its mount namespace (the package's), held from when it was made.
    spare: Option<(Spare, Option<OwnedFd>)>,
    /// The stack for the next spare when there is none.
    spare_stack: Option<ChildStack>,
    /// Whether packages with namespaces came (spares are made only then).
    wants_spares: bool,
    /// This process's mount table, watched for changes: a spare's mount namespace is a copy
    /// made when it was cloned, so one made before a mount (a storage volume, say) is replaced
    /// by one that has it. Without it, every spare is made at its package's start.
    mounts: Option<std::fs::File>,
    /// The requests of started packages not yet reaped, by pid (which is also their process group).
    children: HashMap<Pid, u64>,
    buf: Vec<u8>,
}

impl Server {
    fn open() -> Result<Server, String> {
        // Nothing but the socket is meant to come from the daemon.
        close_from(3);
        let stdin = std::io::stdin();
        let socket = fcntl(stdin.as_fd(), FcntlArg::F_DUPFD_CLOEXEC(3)).map_err(|e| format!("the socket: {e}"))?;
        // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(socket) };
        // Packages read from /dev/null: it takes the socket's place as fd 0, which they inherit.
        let null = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
        nix::unistd::dup2_stdin(&null).map_err(|e| format!("/dev/null: {e}"))?;
        let mut chld = SigSet::empty();
        chld.add(Signal::SIGCHLD);
        sigprocmask(SigmaskHow::SIG_BLOCK, Some(&chld), None).map_err(|e| format!("sigprocmask: {e}"))?;
        let exits = SignalFd::with_flags(&chld, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| format!("signalfd: {e}"))?;
        let stack = || ChildStack::new().map_err(|e| format!("a stack for the packages' launches: {e}"));
        Ok(Server {
            socket,
            exits,
            stack: stack()?,
            spare: None,
            spare_stack: Some(stack()?),
            wants_spares: false,
            mounts: std::fs::File::open("/proc/self/mountinfo").ok(),
            children: HashMap::new(),
            buf: vec![0; MAX_REQUEST + 1],
        })
    }

    fn run(&mut self) -> Result<(), String> {
        loop {
            let mut fds = [
                PollFd::new(self.socket.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.exits.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(format!("poll: {e}")),
            }
            let ready = fds.map(|fd| fd.revents().is_some_and(|r| !r.is_empty()));
            if ready[1] {
                while let Ok(Some(_)) = self.exits.read_signal() {}
                self.reap()?;
            }
            if ready[0] && !self.receive()? {
                return Ok(());
            }
        }
    }

    /// Takes one request and starts it; false when the daemon has closed the socket.
    fn receive(&mut self) -> Result<bool, String> {
        let mut iov = [IoSliceMut::new(&mut self.buf)];
        let mut space = nix::cmsg_space!([RawFd; 2]);
        let msg = match recvmsg::<()>(self.socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(m) => m,
            Err(Errno::EINTR) => return Ok(true),
            Err(e) => return Err(format!("receiving: {e}")),
        };
        let mut fds: Vec<OwnedFd> = Vec::new();
        for cmsg in msg.cmsgs().map_err(|e| format!("receiving descriptors: {e}"))? {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                // SAFETY: descriptors just received are new in this process and owned by nobody else.
                fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        let (bytes, truncated) = (msg.bytes, msg.flags.contains(MsgFlags::MSG_TRUNC));
        if bytes == 0 && fds.is_empty() {
            return Ok(false);
        }
        let request: Request = match serde_json::from_slice(&self.buf[..bytes]) {
            Ok(r) if !truncated => r,
            // The daemon checks the size and writes the format: this is a bug, not a package's fault.
            Ok(_) | Err(_) => return Err(format!("an unreadable request ({bytes} bytes)")),
        };
        let id = request.id;
        let (reply, mount_namespace) = match <[OwnedFd; 2]>::try_from(fds) {
            Ok([stdout, stderr]) => self.start(request, stdout, stderr),
            Err(fds) => {
                (Reply::NotStarted { id, error: format!("the launcher got {} descriptors, not 2", fds.len()) }, None)
            }
        };
        // Sent with `Started`, a copy travels in the message and the daemon keeps it until the
        // package's `Exited`, which this server sends only later: closing it here is not the
        // last reference. (Sent with `Exited`, the daemon's thread could let go of its copy
        // first, and this close then waited for the teardown: ~10 % of packages.)
        self.reply_with(&reply, mount_namespace.as_ref())?;
        drop(mount_namespace);
        // The next package's namespaces are made while this one runs.
        if matches!(reply, Reply::Started { .. }) && self.wants_spares && self.spare.is_none() {
            self.make_spare();
        }
        Ok(true)
    }

    /// Clones the next spare, if it can (else the next package makes its namespaces itself).
    fn make_spare(&mut self) {
        let Some(stack) = self.spare_stack.take() else { return };
        match Spare::new(Namespaces::here(), stack) {
            Ok(spare) => self.spare = Some(with_mount_namespace(spare)),
            Err((stack, _)) => self.spare_stack = Some(stack),
        }
    }

    /// Starts `prepared` in the spare made ahead (made now when there is none, or it died).
    /// Returns the package's pid, why it failed if it did, and its mount namespace.
    fn start_spare(&mut self, prepared: &Prepared, stdio: [RawFd; 2]) -> Result<Launched, String> {
        self.wants_spares = true;
        let mounted = self.mounts_changed();
        // A spare replaced (rare: the mount table changed): its namespace is let go of while
        // the spare (alive, or exiting and not yet reaped) may still hold it, so that its end,
        // not this close, is likely the last reference.
        if let Some((dead, namespace)) = self.spare.take_if(|(s, _)| mounted || !s.alive()) {
            drop(namespace);
            let pid = dead.pid();
            self.spare_stack = Some(dead.end());
            let _ = try_reap(pid.as_raw() as u32);
        }
        let (spare, mount_namespace) = match self.spare.take() {
            Some(made) => made,
            None => {
                let stack = match self.spare_stack.take() {
                    Some(stack) => stack,
                    None => ChildStack::new().map_err(|e| e.to_string())?,
                };
                let spare = Spare::new(Namespaces::here(), stack).map_err(|(stack, e)| {
                    self.spare_stack = Some(stack);
                    e.to_string()
                })?;
                with_mount_namespace(spare)
            }
        };
        let (pid, failed, stack) = spare.start(prepared, stdio);
        self.spare_stack = Some(stack);
        Ok((pid, failed, mount_namespace))
    }

    /// Whether this process's mount table changed since last asked (always, when it cannot
    /// be watched): `/proc/self/mountinfo` polls `POLLPRI` once per change.
    fn mounts_changed(&self) -> bool {
        let Some(mounts) = &self.mounts else { return true };
        let mut fds = [PollFd::new(mounts.as_fd(), PollFlags::POLLPRI)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(0) => false,
            Ok(_) => fds[0].revents().is_some_and(|r| r.intersects(PollFlags::POLLPRI | PollFlags::POLLERR)),
            Err(_) => true,
        }
    }

    /// Starts a package; the answer, and the package's mount namespace to go with it.
    fn start(&mut self, request: Request, stdout: OwnedFd, stderr: OwnedFd) -> (Reply, Option<OwnedFd>) {
        let id = request.id;
        // Everything that allocates or looks things up, here; the child only makes system calls.
        let prepared = match Prepared::new(&request.spec, request.env.iter().map(|(k, v)| (k, v))) {
            Ok(p) => p,
            Err(e) => return (Reply::NotStarted { id, error: format!("buildnet sandbox-exec: {e}") }, None),
        };
        let stdio = [stdout.as_raw_fd(), stderr.as_raw_fd()];
        let spawned = match prepared.namespaces() {
            Some(_) => self.start_spare(&prepared, stdio),
            None => prepared
                .spawn(&mut self.stack, Some(stdio))
                .map(|(pid, failed)| (pid, failed, None))
                .map_err(|e| e.to_string()),
        };
        let (child, failed, mount_namespace) = match spawned {
            Ok(spawned) => spawned,
            Err(e) => return (Reply::NotStarted { id, error: format!("the launcher could not fork: {e}") }, None),
        };
        // The child has exec'd the package or exited (CLONE_VFORK): it made its process group
        // before either, so the group exists before the daemon can signal it. A child that
        // failed said why in the memory it shares with this process; it goes where the
        // package's own words would have.
        if let Some(failure) = failed {
            let mut stderr = std::fs::File::from(stderr);
            let _ = writeln!(stderr, "buildnet sandbox-exec: {}", prepared.explain(failure));
        }
        self.children.insert(child, id);
        (Reply::Started { id, pid: child.as_raw() as u32 }, mount_namespace)
    }

    /// Ends every child that has exited: kills what it left in its group (its id cannot be
    /// reused while the child is unreaped), reaps it and reports its status and CPU time.
    fn reap(&mut self) -> Result<(), String> {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        loop {
            let pid = match waitid(Id::All, flags) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(format!("waitid: {e}")),
                Ok(status) => match status.pid() {
                    Some(pid) => pid,
                    None => return Ok(()),
                },
            };
            let _ = killpg(pid, Signal::SIGKILL);
            let Some((status, cpu_ms)) = try_reap(pid.as_raw() as u32).map_err(|e| format!("wait4: {e}"))? else {
                continue;
            };
            let Some(id) = self.children.remove(&pid) else { continue };
            self.reply(&Reply::Exited { id, status: status.into_raw(), cpu_ms })?;
        }
    }

    fn reply(&self, reply: &Reply) -> Result<(), String> {
        self.reply_with(reply, None)
    }

    /// Answers the daemon, handing it `fd` with the answer when there is one.
    fn reply_with(&self, reply: &Reply, fd: Option<&OwnedFd>) -> Result<(), String> {
        let bytes = serde_json::to_vec(reply).map_err(|e| e.to_string())?;
        let fds: Vec<RawFd> = fd.iter().map(|fd| fd.as_raw_fd()).collect();
        let attached: &[ControlMessage] = if fds.is_empty() { &[] } else { &[ControlMessage::ScmRights(&fds)] };
        loop {
            let message = [IoSlice::new(&bytes)];
            match sendmsg::<()>(self.socket.as_raw_fd(), &message, attached, MsgFlags::MSG_NOSIGNAL, None) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(format!("answering the daemon: {e}")),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon's side.

/// The daemon's handle on its fork server, started on first use and again after it died.
#[derive(Debug)]
pub struct ForkServer {
    binary: PathBuf,
    live: Mutex<Option<Arc<Connection>>>,
}

/// What the daemon learns about one request.
#[derive(Debug)]
enum Event {
    Started(u32),
    NotStarted(String),
    Exited {
        status: i32,
        cpu_ms: u64,
    },
    /// The server died; why.
    Lost(String),
}

#[derive(Debug)]
struct Connection {
    socket: OwnedFd,
    pid: u32,
    next_id: AtomicU64,
    waiting: Mutex<Waiting>,
}

#[derive(Debug, Default)]
struct Waiting {
    /// Why the server is gone, once it is.
    lost: Option<String>,
    by_id: HashMap<u64, mpsc::Sender<Event>>,
}

/// A package the fork server started.
#[derive(Debug)]
pub struct Served {
    pub pid: u32,
    id: u64,
    events: mpsc::Receiver<Event>,
    connection: Arc<Connection>,
}

impl ForkServer {
    /// The server will be `binary sandbox-exec --serve`.
    pub fn new(binary: PathBuf) -> ForkServer {
        ForkServer { binary, live: Mutex::new(None) }
    }

    /// Starts a package contained as `spec` says, with exactly `env` as its environment and
    /// `stdout`/`stderr` as its output. A server found dead before it took the request is
    /// replaced once; a package it may have started is not started again.
    pub fn start(
        &self,
        spec: &Spec,
        env: &[(String, String)],
        stdout: &OwnedFd,
        stderr: &OwnedFd,
    ) -> Result<Served, String> {
        let mut retried = false;
        loop {
            let connection = self.connection()?;
            match connection.start(spec, env, [stdout, stderr]) {
                Ok(served) => return Ok(served),
                Err(Sent::No(why)) if !retried => {
                    connection.lose(why);
                    retried = true;
                }
                Err(Sent::No(why)) | Err(Sent::Maybe(why)) => return Err(why),
            }
        }
    }

    fn connection(&self) -> Result<Arc<Connection>, String> {
        let mut live = self.live.lock().map_err(|_| "the launcher's lock is poisoned".to_string())?;
        if let Some(c) = live.as_ref().filter(|c| !c.is_lost()) {
            return Ok(c.clone());
        }
        let c = Connection::spawn(&self.binary)?;
        *live = Some(c.clone());
        Ok(c)
    }
}

/// Why a request failed: before the server could have seen it, or perhaps after.
enum Sent {
    No(String),
    Maybe(String),
}

impl Connection {
    fn spawn(binary: &Path) -> Result<Arc<Connection>, String> {
        let cannot = |e: &dyn std::fmt::Display| format!("could not start the launcher {}: {e}", binary.display());
        let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
            .map_err(|e| cannot(&e))?;
        let mut child = Command::new(binary)
            .args(["sandbox-exec", "--serve"])
            .env_clear()
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| cannot(&e))?;
        let connection = Arc::new(Connection {
            socket: ours,
            pid: child.id(),
            next_id: AtomicU64::new(1),
            waiting: Mutex::new(Waiting::default()),
        });
        // Lets go of the packages' mount namespaces, off the reader's path (see the module's
        // documentation): the teardown each last reference starts waits for an RCU grace period.
        let (release, released) = mpsc::channel::<OwnedFd>();
        let releaser =
            std::thread::Builder::new().name("launcher-ns".into()).spawn(move || released.iter().for_each(drop));
        if let Err(e) = releaser {
            return Err(cannot(&e));
        }
        let reader = connection.clone();
        let spawned = std::thread::Builder::new().name("launcher".into()).spawn(move || {
            let why = reader.read_replies(&release);
            // The socket is closed or unusable: this server is done with, dead or not.
            let _ = child.kill();
            let ended = child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            reader.lose(format!(
                "the launcher (`buildnet sandbox-exec --serve`, pid {}) died: {why}, {ended}",
                reader.pid
            ));
        });
        if let Err(e) = spawned {
            return Err(cannot(&e));
        }
        log::debug!("started the launcher, pid {}", connection.pid);
        Ok(connection)
    }

    fn is_lost(&self) -> bool {
        self.waiting.lock().map(|w| w.lost.is_some()).unwrap_or(true)
    }

    /// Marks the server gone and tells every package waiting on it. Shutting the socket down
    /// ends a server that is still alive (it kills what it started) and so the reader thread.
    fn lose(&self, why: String) {
        let _ = shutdown(self.socket.as_raw_fd(), Shutdown::Both);
        let Ok(mut waiting) = self.waiting.lock() else { return };
        if waiting.lost.is_none() {
            log::warn!("{why}");
            waiting.lost = Some(why);
        }
        let why = waiting.lost.clone().unwrap_or_default();
        for (_, tx) in waiting.by_id.drain() {
            let _ = tx.send(Event::Lost(why.clone()));
        }
    }

    /// Hands replies to the packages they are about until the socket closes, and the descriptors
    /// that come with them to `release`; returns why it stopped.
    fn read_replies(&self, release: &mpsc::Sender<OwnedFd>) -> String {
        // The mount namespaces of the packages running, by request: when the server is gone they
        // go to the releasing thread too, so that telling its packages waits for no teardown.
        let mut namespaces: HashMap<u64, OwnedFd> = HashMap::new();
        let why = self.read_replies_holding(release, &mut namespaces);
        namespaces.into_values().for_each(|fd| drop(release.send(fd)));
        why
    }

    fn read_replies_holding(&self, release: &mpsc::Sender<OwnedFd>, namespaces: &mut HashMap<u64, OwnedFd>) -> String {
        let mut buf = vec![0u8; 4096];
        loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let mut space = nix::cmsg_space!([RawFd; 1]);
            let flags = MsgFlags::MSG_CMSG_CLOEXEC;
            let msg = match recvmsg::<()>(self.socket.as_raw_fd(), &mut iov, Some(&mut space), flags) {
                Ok(m) => m,
                Err(Errno::EINTR) => continue,
                Err(e) => return format!("reading its socket: {e}"),
            };
            let n = msg.bytes;
            let mut attached: Vec<OwnedFd> = Vec::new();
            for cmsg in msg.cmsgs().into_iter().flatten() {
                if let ControlMessageOwned::ScmRights(raw) = cmsg {
                    // SAFETY: descriptors just received are new in this process and owned by nobody
                    // else.
                    attached.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                }
            }
            if n == 0 {
                return "its socket closed".into();
            }
            let reply = match serde_json::from_slice::<Reply>(&buf[..n]) {
                Ok(r) => r,
                Err(e) => return format!("an unreadable reply: {e}"),
            };
            let (id, event) = match reply {
                Reply::Started { id, pid } => (id, Event::Started(pid)),
                Reply::NotStarted { id, error } => (id, Event::NotStarted(error)),
                Reply::Exited { id, status, cpu_ms } => (id, Event::Exited { status, cpu_ms }),
            };
            let last = !matches!(event, Event::Started(_));
            // A package's mount namespace comes with its `Started` and is let go of (on the
            // releasing thread) once it has ended.
            if !last {
                if let Some(namespace) = attached.pop() {
                    namespaces.insert(id, namespace);
                }
            }
            let Ok(mut waiting) = self.waiting.lock() else { return "a poisoned lock".into() };
            let tx = if last { waiting.by_id.remove(&id) } else { waiting.by_id.get(&id).cloned() };
            if let Some(tx) = tx {
                let _ = tx.send(event);
            }
            drop(waiting);
            if last {
                if let Some(namespace) = namespaces.remove(&id) {
                    let _ = release.send(namespace);
                }
            }
            // Anything else attached is not expected: let go of it the same way.
            attached.into_iter().for_each(|fd| drop(release.send(fd)));
        }
    }

    fn start(self: &Arc<Self>, spec: &Spec, env: &[(String, String)], stdio: [&OwnedFd; 2]) -> Result<Served, Sent> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let bytes = serde_json::to_vec(&RequestOut { id, spec, env })
            .map_err(|e| Sent::No(format!("encoding the package for the launcher: {e}")))?;
        if bytes.len() > MAX_REQUEST {
            let why =
                format!("the command and environment take {} bytes; the launcher takes {MAX_REQUEST}", bytes.len());
            return Err(Sent::Maybe(why));
        }
        let (tx, events) = mpsc::channel();
        {
            let mut waiting = self.waiting.lock().map_err(|_| Sent::No("a poisoned lock".into()))?;
            if let Some(why) = &waiting.lost {
                return Err(Sent::No(why.clone()));
            }
            waiting.by_id.insert(id, tx);
        }
        let mut served = Served { pid: 0, id, events, connection: self.clone() };
        let fds = stdio.map(|fd| fd.as_raw_fd());
        let message = [IoSlice::new(&bytes)];
        let sent = loop {
            match sendmsg::<()>(
                self.socket.as_raw_fd(),
                &message,
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Err(Errno::EINTR) => continue,
                other => break other,
            }
        };
        if let Err(e) = sent {
            return Err(Sent::No(format!("the launcher (pid {}) did not take the package: {e}", self.pid)));
        }
        match served.events.recv() {
            Ok(Event::Started(pid)) => {
                served.pid = pid;
                Ok(served)
            }
            Ok(Event::NotStarted(why)) | Ok(Event::Lost(why)) => Err(Sent::Maybe(why)),
            Ok(Event::Exited { .. }) => Err(Sent::Maybe("the launcher reported an exit before the start".into())),
            Err(_) => Err(Sent::Maybe("the launcher's reader is gone".into())),
        }
    }
}

impl Served {
    /// The package's wait status and CPU time (ms) once it has exited, waiting at most `at_most`;
    /// an error when the launcher died first.
    pub fn wait(&self, at_most: Duration) -> Result<Option<(ExitStatus, u64)>, String> {
        match self.events.recv_timeout(at_most) {
            Ok(Event::Exited { status, cpu_ms }) => Ok(Some((ExitStatus::from_raw(status), cpu_ms))),
            Ok(Event::Lost(why)) => Err(why),
            Ok(Event::Started(_)) | Ok(Event::NotStarted(_)) | Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err("the launcher's reader is gone".into()),
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(mut waiting) = self.connection.waiting.lock() {
            waiting.by_id.remove(&self.id);
        }
    }
}
