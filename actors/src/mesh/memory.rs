//! In-memory links: several nodes' meshes in one process, joined without sockets.
//!
//! The engine never touches a socket (ARCHITECTURE.md, "The mesh and why it is safe"): a link
//! is a [`BridgeActor`] fed raw frames ([`Incoming`], [`SocketClosed`]) whose own frames come
//! out of a channel ([`Outgoing`]). `web/mesh.rs` carries those frames over WebSockets; a
//! [`MemoryNet`] hands them straight to the other node's bridge, in order, as a socket would.
//! Everything above the frames — Noise, the roster check, duplicate links, heartbeats, redial
//! with backoff, lost-node handling — is the real engine.
//!
//! A `MemoryNet` maps addresses (any string, e.g. `mem://a`) to the node listening there: give
//! each node [`MemoryNet::register`] and [`MemoryNet::dialer`]. [`MemoryNet::sever`] drops every
//! link of a node as a network fault would (the meshes redial); [`MemoryNet::kill`] also takes
//! the node off the net, as a lost machine: nobody reaches it and it reaches nobody;
//! [`MemoryNet::silence`] keeps a node's links open but carries nothing (a hung machine);
//! [`MemoryNet::partition`] splits the net into sides that cannot reach each other until
//! [`MemoryNet::heal`]; [`MemoryNet::set_conditions`] gives every link latency, jitter and loss.
//! A cut path stalls a link as it stalls a TCP stream: frames wait and arrive, in order, at the
//! first retransmission after the path is back (see `pump`).
//!
//! It is not behind `cfg(test)`: it is small, uses nothing the engine does not already use, and
//! tests outside this crate (a simulation harness) can start many nodes with it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::mpsc::{self, UnboundedReceiver};

use super::bridge::{BridgeActor, Incoming, Outgoing, SocketClosed};
use super::join::{self, FrameIo};
use super::roster::MeshInfo;
use super::{Dialer, MeshHandle};

/// The nodes of one in-process network and the links open between them. Clones share it.
#[derive(Clone, Default)]
pub struct MemoryNet {
    inner: Arc<Mutex<Net>>,
}

#[derive(Default)]
struct Net {
    nodes: HashMap<String, MeshHandle>,
    links: HashMap<u64, MemoryLink>,
    next_link: u64,
    /// Nodes whose frames stall both ways while their links stay open: a machine that hangs
    /// or drops off the network without closing its sockets (only liveness checks can tell).
    silent: std::collections::HashSet<String>,
    /// Frame bytes delivered, for the background traffic of a simulation.
    bytes: u64,
    /// Each address's side while the net is split; frames between sides stall, dials fail.
    sides: HashMap<String, usize>,
    conditions: LinkConditions,
}

/// How every link behaves. A link is a stream (as the WebSocket it stands for), so a lost
/// frame is not dropped — TCP would send it again — it arrives `retransmit` late, and frames
/// stay in order: a late frame holds back those behind it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkConditions {
    /// One-way delay of every frame.
    pub latency: Duration,
    /// A uniformly random extra delay, up to this.
    pub jitter: Duration,
    /// The chance a frame is lost once (0..1).
    pub loss: f64,
    /// How late a lost frame arrives (a retransmission timeout).
    pub retransmit: Duration,
}

impl LinkConditions {
    fn delay(&self) -> Duration {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        let mut delay = self.latency;
        if !self.jitter.is_zero() {
            delay += self.jitter.mul_f64(rng.gen::<f64>());
        }
        if self.loss > 0.0 && rng.gen::<f64>() < self.loss {
            delay += self.retransmit;
        }
        delay
    }
}

impl Net {
    /// Whether the path between `a` and `b` is cut (either is silent, or they are on two sides).
    fn cut(&self, a: &str, b: &str) -> bool {
        self.silent.contains(a)
            || self.silent.contains(b)
            || matches!((self.sides.get(a), self.sides.get(b)), (Some(x), Some(y)) if x != y)
    }
}

/// One open link: the addresses of its two ends and their bridges.
struct MemoryLink {
    ends: [String; 2],
    bridges: [Addr<BridgeActor>; 2],
}

impl MemoryNet {
    pub fn new() -> MemoryNet {
        MemoryNet::default()
    }

    fn net(&self) -> MutexGuard<'_, Net> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `mesh` listens at `address`: dials of that address reach it.
    pub fn register(&self, address: &str, mesh: MeshHandle) {
        self.net().nodes.insert(address.to_string(), mesh);
    }

    /// The dialer for a registered node's mesh ([`MeshHandle::set_dialer`]). A dial from a node
    /// that is not on the net, or to an address nobody listens at, fails at once.
    pub fn dialer(&self) -> Dialer {
        let net = self.clone();
        Arc::new(move |url: String, from: MeshHandle| {
            actix::spawn(net.clone().dial(url, from));
        })
    }

    /// Closes every link of the node at `address` (both ends see their socket close); returns
    /// how many. The node stays on the net, so the meshes link again.
    pub fn sever(&self, address: &str) -> usize {
        let cut: Vec<MemoryLink> = {
            let mut net = self.net();
            let ids: Vec<u64> =
                net.links.iter().filter(|(_, l)| l.ends.iter().any(|e| e == address)).map(|(id, _)| *id).collect();
            ids.iter().filter_map(|id| net.links.remove(id)).collect()
        };
        for bridge in cut.iter().flat_map(|l| &l.bridges) {
            bridge.do_send(SocketClosed);
        }
        cut.len()
    }

    /// Makes the node at `address` silent: its links stay open but carry nothing either way.
    pub fn silence(&self, address: &str) {
        self.net().silent.insert(address.to_string());
    }

    /// Lets a silent node's frames flow again (a paused machine that resumes).
    pub fn resume(&self, address: &str) {
        self.net().silent.remove(address);
    }

    /// Splits the net: nodes on different sides reach each other no more (their open links go
    /// quiet, new dials fail) until [`MemoryNet::heal`]. Addresses on no side reach everyone.
    pub fn partition(&self, sides: &[Vec<String>]) {
        let mut net = self.net();
        net.sides = sides.iter().enumerate().flat_map(|(i, side)| side.iter().map(move |a| (a.clone(), i))).collect();
    }

    /// Ends a partition.
    pub fn heal(&self) {
        self.net().sides.clear();
    }

    /// Latency, jitter and loss for every frame from now on.
    pub fn set_conditions(&self, conditions: LinkConditions) {
        self.net().conditions = conditions;
    }

    /// Links opened since the net was made, closed ones included.
    pub fn links_opened(&self) -> u64 {
        self.net().next_link
    }

    /// Links open now (a simulation's progress report).
    pub fn open_links(&self) -> usize {
        self.net().links.len()
    }

    /// Frame bytes delivered so far over every link.
    pub fn bytes(&self) -> u64 {
        self.net().bytes
    }

    /// Takes the node at `address` off the net and closes its links: a lost machine.
    pub fn kill(&self, address: &str) -> usize {
        self.net().nodes.remove(address);
        self.sever(address)
    }

    async fn dial(self, url: String, from: MeshHandle) {
        let (from_address, target) = {
            let net = self.net();
            let me = net.nodes.iter().find(|(_, m)| m.addr == from.addr).map(|(a, _)| a.clone());
            let reachable = me.as_ref().is_some_and(|a| !net.cut(a, &url));
            (me, net.nodes.get(&url).filter(|_| reachable).cloned())
        };
        let (Some(from_address), Some(target)) = (from_address, target) else {
            return from.dial_failed(url);
        };
        let (out_a, rx_a) = mpsc::unbounded_channel();
        let (out_b, rx_b) = mpsc::unbounded_channel();
        let Some(a) = from.attach(out_a, Some(url.clone())).await else {
            return from.dial_failed(url);
        };
        let Some(b) = target.attach(out_b, None).await else {
            // The target is in no mesh (yet): as if its socket refused us.
            a.do_send(SocketClosed);
            return from.dial_failed(url);
        };
        let id = {
            let mut net = self.net();
            // Either end may have been killed while its bridge started.
            if !net.nodes.contains_key(&from_address) || !net.nodes.contains_key(&url) {
                drop(net);
                a.do_send(SocketClosed);
                b.do_send(SocketClosed);
                return from.dial_failed(url);
            }
            let id = net.next_link;
            net.next_link += 1;
            net.links.insert(id, MemoryLink { ends: [from_address, url], bridges: [a.clone(), b.clone()] });
            id
        };
        actix::spawn(self.clone().pump(id, rx_a, a.clone(), b.clone()));
        actix::spawn(self.pump(id, rx_b, b, a));
    }

    /// Carries one direction's frames, each after the link's delay and in order; when the
    /// sending bridge closes (or drops its channel), both ends see the socket close.
    ///
    /// While the path is cut (a partition, a silent node) the link behaves as the TCP stream
    /// under a WebSocket does: nothing arrives and nothing is lost. The frames wait, and are
    /// tried again after TCP's retransmission timeout, which starts at `retransmit` and doubles
    /// up to [`RTO_MAX`]; the first try after the path is back delivers everything in order.
    /// Only the ends give up on a stalled link (their idle timeout closes it).
    async fn pump(self, id: u64, mut rx: UnboundedReceiver<Outgoing>, from: Addr<BridgeActor>, to: Addr<BridgeActor>) {
        let (delayed_tx, mut delayed) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
        let receiver = to.clone();
        let deliver = actix::spawn(async move {
            while let Some((at, frame)) = delayed.recv().await {
                actix_rt::time::sleep_until(at.into()).await;
                receiver.do_send(Incoming { frame });
            }
        });
        let mut last = Instant::now();
        let mut stall: Option<Stall> = None;
        loop {
            // A new frame, or (None) the stalled link's retransmission timer.
            let next = match stall.as_ref().map(|s| s.retry_at) {
                None => Some(rx.recv().await),
                Some(at) => tokio::time::timeout_at(at.into(), rx.recv()).await.ok(),
            };
            let frame = match next {
                Some(Some(Outgoing::Frame(frame))) => Some(frame),
                Some(_) => break,
                None => None,
            };
            let (cut, conditions) = {
                let net = self.net();
                (net.links.get(&id).is_none_or(|l| net.cut(&l.ends[0], &l.ends[1])), net.conditions)
            };
            let mut ready = Vec::new();
            match (frame, &mut stall) {
                // Behind a stall, a frame waits its turn as TCP's later segments do.
                (Some(frame), Some(s)) => s.held.push(frame),
                (Some(frame), None) if cut => stall = Some(Stall::new(frame, conditions.retransmit)),
                (Some(frame), None) => ready.push(frame),
                (None, Some(s)) if cut => s.back_off(),
                (None, Some(_)) => ready = stall.take().map(|s| s.held).unwrap_or_default(),
                (None, None) => {}
            }
            for frame in ready {
                let delay = {
                    let mut net = self.net();
                    net.bytes += frame.len() as u64;
                    net.conditions.delay()
                };
                if delay.is_zero() && last <= Instant::now() {
                    to.do_send(Incoming { frame });
                } else {
                    last = last.max(Instant::now() + delay);
                    let _ = delayed_tx.send((last, frame));
                }
            }
        }
        drop(delayed_tx);
        let _ = deliver.await;
        from.do_send(SocketClosed);
        to.do_send(SocketClosed);
        self.net().links.remove(&id);
    }
}

/// Linux's ceiling on TCP's retransmission timeout (`TCP_RTO_MAX`).
const RTO_MAX: Duration = Duration::from_secs(120);

/// Frames waiting on a link whose path is cut, and when TCP would try them again.
struct Stall {
    held: Vec<Vec<u8>>,
    rto: Duration,
    retry_at: Instant,
}

impl Stall {
    fn new(first: Vec<u8>, rto: Duration) -> Stall {
        // A zero timeout (conditions without loss) still retries: at TCP's floor, 200 ms.
        let rto = if rto.is_zero() { Duration::from_millis(200) } else { rto };
        Stall { held: vec![first], rto, retry_at: Instant::now() + rto }
    }

    fn back_off(&mut self) {
        self.rto = (self.rto * 2).min(RTO_MAX);
        self.retry_at = Instant::now() + self.rto;
    }
}

/// One end of an in-memory frame pipe.
struct PipeEnd {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    rx: UnboundedReceiver<Vec<u8>>,
}

impl FrameIo for PipeEnd {
    async fn send(&mut self, frame: Vec<u8>) -> Result<(), String> {
        self.tx.send(frame).map_err(|_| "closed".to_string())
    }

    async fn recv(&mut self) -> Result<Vec<u8>, String> {
        self.rx.recv().await.ok_or_else(|| "closed".to_string())
    }
}

/// `joiner` joins `holder`'s mesh with `token`: the encrypted join of [`join`] over an
/// in-memory pipe instead of a WebSocket.
pub async fn join_in_memory(holder: &MeshHandle, joiner: &MeshHandle, token: &str) -> Result<MeshInfo, String> {
    let (a_tx, a_rx) = mpsc::unbounded_channel();
    let (b_tx, b_rx) = mpsc::unbounded_channel();
    let mut holder_end = PipeEnd { tx: a_tx, rx: b_rx };
    let mut joiner_end = PipeEnd { tx: b_tx, rx: a_rx };
    let responder = holder.open_join().await.map_err(|e| e.to_string())?;
    let holder = holder.clone();
    let serving = actix::spawn(async move { join::serve_join(&holder, responder, &mut holder_end, "memory").await });
    let joined = join::run_join(joiner, &mut joiner_end, token).await.map_err(|e| e.to_string());
    let _ = serving.await;
    joined
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;
    use std::time::{Duration, Instant};

    use super::*;

    use crate::events::Event;
    use crate::ledger::LedgerFilter;
    use crate::mesh::Job;
    use crate::start::{start, test_options, Node};
    use crate::wire::{Invocation, LedgerEntryType, NodeId, NodeState, RemoteError, Role, Task, TaskResult};

    async fn node(net: &MemoryNet, dir: &Path, name: &str, create_mesh: bool) -> Node {
        let mut opts = test_options(&dir.join(name));
        opts.name = Some(name.into());
        opts.address = format!("mem://{name}");
        opts.create_mesh = create_mesh;
        // No start-up or scheduled benchmark: it would load the machine under the heartbeats.
        opts.config.benchmark.on_start = false;
        opts.config.benchmark.interval_hours = 0.0;
        let node = start(opts).await.expect("node starts").node;
        net.register(&node.address, node.mesh.clone());
        node.mesh.set_dialer(net.dialer());
        node
    }

    /// Nodes on `net` named `names`, the first with a mesh of its own, the others not yet in it.
    async fn unjoined<const N: usize>(net: &MemoryNet, dir: &Path, names: [&str; N]) -> [Node; N] {
        let mut nodes = Vec::new();
        for (i, name) in names.into_iter().enumerate() {
            nodes.push(node(net, dir, name, i == 0).await);
        }
        nodes.try_into().unwrap_or_else(|_| unreachable!("one node per name"))
    }

    /// `joiner` joins `admin`'s mesh, the steps `buildnet join` takes over HTTP.
    async fn join(admin: &Node, joiner: &Node) {
        let (token, _) = admin.mesh.create_token(Role::Builder, 60_000, "test").await.expect("token");
        super::join_in_memory(&admin.mesh, &joiner.mesh, &token).await.expect("joined");
    }

    /// What `node` sees of its peers.
    async fn seen(node: &Node) -> HashMap<NodeId, NodeState> {
        node.pool.peers().await.into_iter().map(|p| (p.node_id, p.status)).collect()
    }

    /// Polls until `ok` holds for what every node sees; returns how long that took.
    async fn wait_until(
        what: &str,
        nodes: &[&Node],
        timeout: Duration,
        ok: impl Fn(&Node, &HashMap<NodeId, NodeState>) -> bool,
    ) -> Duration {
        let started = Instant::now();
        loop {
            let mut views = Vec::new();
            for n in nodes {
                views.push((n.address.clone(), seen(n).await));
            }
            if nodes.iter().zip(&views).all(|(n, (_, v))| ok(n, v)) {
                return started.elapsed();
            }
            assert!(started.elapsed() < timeout, "{what}: not within {timeout:?}; seen: {views:?}");
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn hello(build_id: &str) -> Job {
        let task = Task {
            build_id: build_id.into(),
            package: "hello".into(),
            invocation: Invocation::Shell("echo hi > out.txt".into()),
            env: Default::default(),
            files: vec![],
            outputs: vec!["out.txt".into()],
            tools: vec![],
        };
        Job { task, cores: 1, memory_bytes: None, volume: None }
    }

    #[actix::test]
    async fn three_nodes_join_run_a_remote_package_and_lose_one_over_memory_links() {
        let t0 = Instant::now();
        let dir = tempfile::tempdir().expect("tempdir");
        let net = MemoryNet::new();
        let a = node(&net, dir.path(), "a", true).await;
        let b = node(&net, dir.path(), "b", false).await;
        let c = node(&net, dir.path(), "c", false).await;
        let started = t0.elapsed();
        join(&a, &b).await;
        join(&a, &c).await;
        let ids = [&a, &b, &c].map(|n| n.identity.node_id.clone());
        let all_online = |n: &Node, v: &HashMap<NodeId, NodeState>| {
            ids.iter().filter(|id| **id != n.identity.node_id).all(|id| v.get(id) == Some(&NodeState::Online))
        };
        let linked = wait_until("all online", &[&a, &b, &c], Duration::from_secs(10), all_online).await;

        // A package of `a` runs on `b`; its output comes back into `a`'s CAS.
        let workers = a.workers.clone();
        let result = workers.run_on(&ids[1], hello("mem-1")).await.expect("ran on b");
        assert!(result.success(), "{result:?}");
        assert_eq!(result.outputs.len(), 1);
        assert!(a.builds.cas.has(&result.outputs[0].digest), "the output is in a's CAS");
        assert_eq!(a.mesh.counters().await.blobs_asked, 0, "a small output comes inside the result, not asked for");
        // One larger than a result carries is pulled as before.
        let mut large = hello("mem-large");
        large.task.invocation = Invocation::Shell("head -c 40000 /dev/zero | tr '\\0' x > out.txt".into());
        let result = workers.run_on(&ids[1], large).await.expect("ran on b");
        assert!(result.success(), "{result:?}");
        assert_eq!(result.outputs[0].size, 40_000);
        assert_eq!(a.builds.cas.read(&result.outputs[0].digest).expect("in a's CAS"), vec![b'x'; 40_000]);
        assert_eq!(a.mesh.counters().await.blobs_asked, 1, "the large output was pulled");
        let filter = LedgerFilter {
            types: vec![LedgerEntryType::ResourceAllocated],
            origin: Some(ids[1].clone()),
            limit: 100,
            ..Default::default()
        };
        // The executor's entries are committed within `ledger::SOON` of the package, not before
        // its result: wait for them.
        let mut allocations = Vec::new();
        for _ in 0..100 {
            allocations = b.ledger.query(filter.clone()).await.expect("b's ledger");
            if allocations.iter().any(|e| e.data["build_id"] == "mem-1") {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            allocations.iter().any(|e| e.data["build_id"] == "mem-1" && e.data["for_node"] == ids[0].to_string()),
            "b leased its core for a: {allocations:?}"
        );

        // `c` is lost: its links drop and it is unreachable; the others notice at once.
        assert_eq!(net.kill(&c.address), 2, "c had one link to each peer");
        c.shutdown("killed by the test").await;
        let noticed = wait_until("c offline, a and b still linked", &[&a, &b], Duration::from_secs(5), |n, v| {
            let other = if n.identity.node_id == ids[0] { &ids[1] } else { &ids[0] };
            v.get(&ids[2]) == Some(&NodeState::Offline) && v.get(other) == Some(&NodeState::Online)
        })
        .await;
        match workers.run_on(&ids[2], hello("mem-2")).await {
            Err(RemoteError::LostNode(id)) => assert_eq!(id, ids[2]),
            other => panic!("a package for a lost node: {other:?}"),
        }
        eprintln!(
            "memory mesh: 3 nodes started in {started:?}, all online {linked:?} after joining, c offline {noticed:?} \
             after the kill, total {:?}",
            t0.elapsed()
        );
    }

    /// Two nodes on one memory network, joined and online to each other.
    async fn two_linked(dir: &Path) -> (MemoryNet, Node, Node, [NodeId; 2]) {
        let net = MemoryNet::new();
        let a = node(&net, dir, "a", true).await;
        let b = node(&net, dir, "b", false).await;
        join(&a, &b).await;
        let ids = [&a, &b].map(|n| n.identity.node_id.clone());
        wait_until("both online", &[&a, &b], Duration::from_secs(10), |n, v| {
            ids.iter().filter(|id| **id != n.identity.node_id).all(|id| v.get(id) == Some(&NodeState::Online))
        })
        .await;
        (net, a, b, ids)
    }

    /// Past eight members a node links only to its row and column of the grid, so most members
    /// never get a leaver's `Leave` over a link; its signed `NodeLeft` entry reaches them all, and
    /// every one of them stops counting it (before, they showed it offline for good).
    #[actix::test]
    async fn a_node_that_leaves_a_grid_is_gone_everywhere_not_only_at_its_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let net = MemoryNet::new();
        let mut nodes = vec![node(&net, dir.path(), "n0", true).await];
        for i in 1..10 {
            let joiner = node(&net, dir.path(), &format!("n{i}"), false).await;
            join(&nodes[0], &joiner).await;
            nodes.push(joiner);
        }
        let ids: Vec<NodeId> = nodes.iter().map(|n| n.identity.node_id.clone()).collect();
        let everyone: Vec<&Node> = nodes.iter().collect();
        wait_until("all online", &everyone, Duration::from_secs(60), |n, v| {
            ids.iter().filter(|id| **id != n.identity.node_id).all(|id| v.get(id) == Some(&NodeState::Online))
        })
        .await;
        let leaver = nodes.last().expect("ten nodes");
        let links = leaver.mesh.view().await.expect("view").links;
        assert!(links < 9, "a grid: the leaver links to {links} of 9, so some hear of it only through the ledger");
        leaver.mesh.leave().await.expect("left");
        let rest: Vec<&Node> = nodes[..9].iter().collect();
        wait_until("the leaver gone from every pool", &rest, Duration::from_secs(15), |_, v| !v.contains_key(&ids[9]))
            .await;
        for n in &nodes {
            n.shutdown("test over").await;
        }
    }

    /// A removal cut short after its record — the key holder killed between the `NodeLeft`
    /// entry and the revoked roster entry — is completed by the next one, which finds the
    /// record and writes none (before, each attempt wrote its own): a record naming the
    /// membership it ends, and one from before records named it (taken by time).
    #[actix::test]
    async fn a_removal_cut_short_after_its_record_is_completed_without_a_second_record() {
        for names_its_membership in [true, false] {
            complete_a_removal_cut_short(names_its_membership).await;
        }
    }

    /// When the roster entry `holder` stores for `member` was signed.
    async fn issued_at_ms(holder: &Node, member: &NodeId) -> u64 {
        let member = member.to_string();
        let entry: String = holder
            .store
            .run(move |c| Ok(c.query_row("SELECT entry FROM roster WHERE node_id = ?1", [member], |r| r.get(0))?))
            .await
            .expect("the member's roster entry");
        serde_json::from_str::<serde_json::Value>(&entry).expect("json")["issued_at_ms"].as_u64().expect("issued_at_ms")
    }

    async fn complete_a_removal_cut_short(names_its_membership: bool) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_net, a, b, ids) = two_linked(dir.path()).await;
        let mesh_id = a.mesh.view().await.expect("view").mesh_id.expect("a mesh");
        let admitted_at_ms = issued_at_ms(&a, &ids[1]).await;
        let mut record = serde_json::json!({
            "node_id": ids[1], "node_name": "b", "mesh_id": mesh_id, "reason": "removed", "removed_by": "cut short",
        });
        if names_its_membership {
            record["admitted_at_ms"] = admitted_at_ms.into();
        }
        let removals = || {
            let filter = LedgerFilter { types: vec![LedgerEntryType::NodeLeft], limit: 100, ..Default::default() };
            let ledger = a.ledger.clone();
            let b_id = ids[1].clone();
            async move {
                let left = ledger.query(filter).await.expect("a's ledger");
                left.into_iter().filter(|e| e.data["node_id"] == b_id.as_str()).collect::<Vec<_>>()
            }
        };
        // What the attempt cut short left: its record, and b still a member.
        a.ledger.append(LedgerEntryType::NodeLeft, record).await.expect("append");
        let entry = a.mesh.remove(ids[1].clone(), "admin").await.expect("removed");
        assert!(entry.revoked);
        let recorded = removals().await;
        assert_eq!(recorded.len(), 1, "no second record for one removal: {recorded:?}");
        assert_eq!(recorded[0].data["removed_by"], "cut short", "{recorded:?}");
        b.shutdown("test over").await;
        a.shutdown("test over").await;
    }

    /// Records that are not this removal's: one from before the member's admission, another
    /// mesh's, and one naming another membership (an earlier admission, stamped later through a
    /// clock set back). A removal records its own, naming the membership it ends.
    #[actix::test]
    async fn a_removal_records_itself_when_no_record_is_of_this_membership() {
        let dir = tempfile::tempdir().expect("tempdir");
        let net = MemoryNet::new();
        let [a, b] = unjoined(&net, dir.path(), ["a", "b"]).await;
        let mesh_id = a.mesh.view().await.expect("view").mesh_id.expect("a mesh");
        let b_id = b.identity.node_id.clone();
        let record = |mesh_id: &str, by: &str, admitted_at_ms: Option<u64>| {
            let mut data = serde_json::json!({
                "node_id": b_id, "node_name": "b", "mesh_id": mesh_id, "reason": "removed", "removed_by": by,
            });
            if let Some(at) = admitted_at_ms {
                data["admitted_at_ms"] = at.into();
            }
            data
        };
        a.ledger.append(LedgerEntryType::NodeLeft, record(&mesh_id, "long ago", None)).await.expect("append");
        // Admitted later than that record, on the same clock.
        actix_rt::time::sleep(Duration::from_millis(5)).await;
        join(&a, &b).await;
        a.ledger.append(LedgerEntryType::NodeLeft, record("another-mesh", "elsewhere", None)).await.expect("append");
        a.ledger.append(LedgerEntryType::NodeLeft, record(&mesh_id, "earlier", Some(1))).await.expect("append");
        let admitted_at_ms = issued_at_ms(&a, &b_id).await;
        a.mesh.remove(b_id.clone(), "admin").await.expect("removed");
        let filter = LedgerFilter { types: vec![LedgerEntryType::NodeLeft], limit: 100, ..Default::default() };
        let left = a.ledger.query(filter).await.expect("a's ledger");
        let by: Vec<_> =
            left.iter().filter(|e| e.data["node_id"] == b_id.as_str()).map(|e| &e.data["removed_by"]).collect();
        assert_eq!(by, ["admin", "earlier", "elsewhere", "long ago"], "{left:?}");
        let own = left.iter().find(|e| e.data["removed_by"] == "admin").expect("the removal's record");
        assert_eq!(own.data["admitted_at_ms"].as_u64(), Some(admitted_at_ms), "it names its membership: {own:?}");
        b.shutdown("test over").await;
        a.shutdown("test over").await;
    }

    /// A member that heard of a node's removal but not of its admission again — down meanwhile,
    /// and back when no up-to-date member is up — refused the node at each of its dials for
    /// ever (it dismisses a removed member before any roster exchange). The dismissed node
    /// answers with its newer entry, and the two link again.
    #[actix::test]
    async fn a_member_that_missed_an_admission_again_learns_it_from_the_node_it_dismisses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let net = MemoryNet::new();
        let [a, b, c] = unjoined(&net, dir.path(), ["a", "b", "c"]).await;
        join(&a, &b).await;
        join(&a, &c).await;
        let ids = [&a, &b, &c].map(|n| n.identity.node_id.clone());
        wait_until("all online", &[&a, &b, &c], Duration::from_secs(20), |n, v| {
            ids.iter().filter(|id| **id != n.identity.node_id).all(|id| v.get(id) == Some(&NodeState::Online))
        })
        .await;
        // b is removed, and c hears of it; then c is down while b is admitted again.
        a.mesh.remove(ids[1].clone(), "admin").await.expect("removed");
        wait_until("b gone for c", &[&c], Duration::from_secs(10), |_, v| !v.contains_key(&ids[1])).await;
        net.kill(&c.address);
        c.shutdown("down while b is admitted again").await;
        b.mesh.leave().await.expect("b leaves");
        join(&a, &b).await;
        wait_until("b back for a", &[&a], Duration::from_secs(15), |_, v| v.get(&ids[1]) == Some(&NodeState::Online))
            .await;
        // The one member that knows goes down, and c comes back from its data dir.
        net.kill(&a.address);
        a.shutdown("down").await;
        let c = node(&net, dir.path(), "c", false).await;
        let took = wait_until("b and c linked again", &[&b, &c], Duration::from_secs(20), |n, v| {
            let other = if n.identity.node_id == ids[1] { &ids[2] } else { &ids[1] };
            v.get(other) == Some(&NodeState::Online)
        })
        .await;
        eprintln!("b and c linked {took:?} after c came back");
        b.shutdown("test over").await;
        c.shutdown("test over").await;
    }

    #[actix::test]
    async fn a_short_cut_stalls_a_link_and_what_was_sent_arrives_after_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (net, a, b, _) = two_linked(dir.path()).await;
        let opened = net.links_opened();
        net.partition(&[vec![a.address.clone()], vec![b.address.clone()]]);
        // Written while cut: pushed at a's next tick into the stalled link.
        let entry = a.ledger.append(LedgerEntryType::ConfigCreated, serde_json::json!({ "cut": true })).await;
        let entry = entry.expect("append");
        actix_rt::time::sleep(Duration::from_millis(1500)).await;
        let lacks = |n: &Node| {
            let (origin, seq) = (entry.origin.clone(), entry.seq);
            let ledger = n.ledger.clone();
            async move { ledger.entries_after(origin, seq - 1, 1).await.expect("read").is_empty() }
        };
        assert!(lacks(&b).await, "nothing crosses a cut path");
        net.heal();
        let started = Instant::now();
        while lacks(&b).await {
            assert!(started.elapsed() < Duration::from_secs(10), "the entry never arrived after the heal");
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
        // Held frames arrive in order, as TCP delivers them: the Noise session on the link
        // still decrypts them, so no link was closed and opened again.
        assert_eq!(net.links_opened(), opened, "the link survived the cut");
        assert_eq!(net.open_links(), 1);
    }

    /// How many cpu cores `viewer`'s advert of `of` says are leased.
    async fn cpu_leased_as_seen(viewer: &Node, of: &NodeId) -> Option<u64> {
        let peers = viewer.pool.peers().await;
        let advert = peers.into_iter().find(|p| p.node_id == *of)?.advert?;
        advert.resource_status.iter().find(|r| r.key == "cpu").map(|r| r.leased)
    }

    /// Waits until `viewer`'s advert of `of` says `leased` cpu cores are leased; how long it took.
    async fn until_cpu_leased_as_seen(
        viewer: &Node,
        of: &NodeId,
        leased: u64,
        within: Duration,
        what: &str,
    ) -> Duration {
        let started = Instant::now();
        while cpu_leased_as_seen(viewer, of).await != Some(leased) {
            assert!(started.elapsed() < within, "{what}");
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        started.elapsed()
    }

    #[actix::test]
    async fn an_advert_that_changed_while_unlinked_arrives_over_the_next_link() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (net, a, b, [a_id, _]) = two_linked(dir.path()).await;
        until_cpu_leased_as_seen(&b, &a_id, 0, Duration::from_secs(10), "b never held a's advert").await;
        // a drops off the net; its advert changes (a lease) while nothing links it to b, so the
        // change it broadcasts reaches nobody.
        net.kill(&a.address);
        let request = crate::wire::LeaseRequest { amount: 1, holder: "test".into(), ttl_ms: 600_000, epoch: 0 };
        a.node.lease("cpu", request).await.expect("lease");
        actix_rt::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(cpu_leased_as_seen(&b, &a_id).await, Some(0), "nothing crossed while unlinked");
        // Back on the net: the next link's hello says which advert of a's b holds, and a sends
        // the one that changed (a new link no longer carries the advert when it is unchanged).
        let opened = net.links_opened();
        net.register(&a.address, a.mesh.clone());
        until_cpu_leased_as_seen(&b, &a_id, 1, Duration::from_secs(15), "a's changed advert never arrived").await;
        assert!(net.links_opened() > opened, "it came over a new link");
    }

    /// A peer whose tasks end one after another reads its status for an advert a few times a
    /// second, not once per task end (`mesh::adverts::advert_wait`).
    #[actix::test]
    async fn task_ends_are_advertised_a_few_times_a_second_not_once_each() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_net, a, b, [_, b_id]) = two_linked(dir.path()).await;
        until_cpu_leased_as_seen(&a, &b_id, 0, Duration::from_secs(10), "a never held b's advert").await;
        let status = b.node.status().await.expect("b's status");
        let cores = status.resource_status.iter().find(|r| r.key == "cpu").map_or(0, |r| r.capacity);
        if cores < 2 {
            // One task at a time saturates a single core, and a saturated node's freed core is
            // read at once by design: nothing here would be throttled.
            eprintln!("skipped: b has {cores} core(s); one task at a time keeps 2 or more from saturating");
            return;
        }
        let mut events = a.events.subscribe();
        let window = Instant::now();
        let reads_before = b.mesh.counters().await.own_status_reads;
        let burst = Instant::now();
        for i in 0..32 {
            let mut job = hello(&format!("burst-{i}"));
            job.task.invocation = Invocation::Shell("sleep 0.02; echo hi > out.txt".into());
            let result = a.workers.run_on(&b_id, job).await.expect("ran on b");
            assert!(result.success(), "{result:?}");
        }
        let burst = burst.elapsed();
        let reads = b.mesh.counters().await.own_status_reads - reads_before;
        let took = window.elapsed();
        let mut adverts = 0;
        loop {
            match events.try_recv() {
                Ok(Event::ResourceUpdate { node_id, .. }) if node_id == b_id => adverts += 1,
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) => panic!("{n} events missed: count lost"),
                Err(_) => break,
            }
        }
        // A read for a task end comes at least a quarter second after the read before it (b,
        // never saturated, is not read at once), and the tick reads once a second besides.
        let bound = (took.as_millis() as u64 / 250 + 1) + (took.as_secs() + 1);
        eprintln!(
            "32 task ends on b in {burst:?}: {reads} reads of its status (at most {bound}), {adverts} adverts to a"
        );
        assert!(reads <= bound, "b read its status {reads} times for 32 task ends in {took:?}: more than {bound}");
    }

    #[actix::test]
    async fn the_largest_ledger_entry_and_an_oversized_one_reach_the_peer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_net, a, b, ids) = two_linked(dir.path()).await;
        let size = |v: &serde_json::Value| rmp_serde::to_vec_named(v).expect("encode").len();
        let mut largest = serde_json::json!({ "text": "" });
        let overhead = size(&largest);
        largest["text"] = "z".repeat(crate::ledger::MAX_DATA_BYTES - overhead - 2).into();
        while size(&largest) < crate::ledger::MAX_DATA_BYTES {
            let text = format!("{}z", largest["text"].as_str().expect("text"));
            largest["text"] = text.into();
        }
        assert_eq!(size(&largest), crate::ledger::MAX_DATA_BYTES);
        let kept = a.ledger.append(LedgerEntryType::ConfigCreated, largest.clone()).await.expect("append");
        assert_eq!(kept.data, largest, "the largest allowed data is stored as is");
        let oversized = serde_json::json!({ "name": "n".repeat(200_000) });
        let cut = a.ledger.append(LedgerEntryType::ConfigCreated, oversized).await.expect("append");
        assert_eq!(cut.data["truncated"], true);
        let filter = LedgerFilter {
            types: vec![LedgerEntryType::ConfigCreated],
            origin: Some(ids[0].clone()),
            limit: 10,
            ..Default::default()
        };
        let started = Instant::now();
        loop {
            let seen = b.ledger.query(filter.clone()).await.expect("b's ledger");
            if seen.iter().any(|e| e.hash == kept.hash) && seen.iter().any(|e| e.hash == cut.hash) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "b did not get both entries: {seen:?}");
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
        let b_view = seen(&b).await;
        assert_eq!(b_view.get(&ids[0]), Some(&NodeState::Online), "the link stayed up");
    }

    #[actix::test]
    async fn blobs_stream_between_peers_and_a_corrupt_one_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_net, a, b, ids) = two_linked(dir.path()).await;
        let input_ref = |path: &Path| {
            let (digest, size) = a.builds.cas.put_file(path).expect("put");
            crate::wire::FileRef { path: "in.bin".into(), digest, executable: false, size }
        };
        let job = |file: &crate::wire::FileRef| {
            let mut job = hello("mem-blobs");
            job.task.invocation = Invocation::Shell("cat in.bin in.bin > out.bin".into());
            job.task.files = vec![file.clone()];
            job.task.outputs = vec!["out.bin".into()];
            job
        };

        // An input of many windows of chunks goes to b; an output twice its size comes back.
        let input: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("in.bin"), &input).expect("write");
        let file = input_ref(&dir.path().join("in.bin"));
        let result = a.workers.run_on(&ids[1], job(&file)).await.expect("ran on b");
        assert!(result.success(), "{result:?}");
        assert!(b.builds.cas.has(&file.digest), "b pulled the input");
        let out = &result.outputs[0];
        assert_eq!(out.size, 6_000_000);
        assert_eq!(a.builds.cas.read(&out.digest).expect("the output is in a's CAS"), input.repeat(2));

        // A blob whose bytes do not match its digest (a's stored copy went bad): b refuses it,
        // the task fails, and nothing is stored or left behind on b.
        std::fs::write(dir.path().join("other.bin"), b"another input".repeat(100_000)).expect("write");
        let file = input_ref(&dir.path().join("other.bin"));
        let stored = a.builds.cas.path(&file.digest).expect("path");
        // Replaced rather than written: stored objects are read-only.
        std::fs::remove_file(&stored).expect("remove");
        std::fs::write(&stored, b"ANOTHER INPUT".repeat(100_000)).expect("corrupt");
        match a.workers.run_on(&ids[1], job(&file)).await {
            Err(RemoteError::Failed(why)) => {
                assert!(why.contains("input in.bin could not be received") && why.contains("does not match"), "{why}")
            }
            other => panic!("a task whose input arrived corrupt: {other:?}"),
        }
        assert!(!b.builds.cas.has(&file.digest), "the corrupt blob is not stored");
        let leftovers = std::fs::read_dir(dir.path().join("b/cas/tmp")).expect("b's cas/tmp").count();
        assert_eq!(leftovers, 0, "its temporary file is gone");
    }

    /// A member's result that does not answer its task — an output the package does not declare,
    /// one left out, a failure carrying outputs — fails that node for the package (the build
    /// places it elsewhere) before any of its blobs is stored or pulled.
    #[actix::test]
    async fn a_result_naming_outputs_the_package_does_not_declare_is_refused_before_its_blobs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_net, a, b, ids) = two_linked(dir.path()).await;
        let blob = vec![7u8; 20_000];
        let digest = blake3::hash(&blob).to_hex().to_string();
        let file = |path: &str| crate::wire::FileRef {
            path: path.into(),
            digest: digest.clone(),
            executable: false,
            size: 20_000,
        };
        let cases: Vec<(Option<i32>, Vec<crate::wire::FileRef>)> = vec![
            (Some(0), vec![file("out.txt"), file("src/main.c")]),
            (Some(0), vec![]),
            (Some(0), vec![file("out.txt"), file("out.txt")]),
            (Some(1), vec![file("out.txt")]),
        ];
        for (i, (exit_code, outputs)) in cases.into_iter().enumerate() {
            let mut job = hello(&format!("mem-answer-{i}"));
            job.task.invocation = Invocation::Shell("sleep 1; echo hi > out.txt".into());
            let workers = a.workers.clone();
            let peer = ids[1].clone();
            let running = actix_rt::spawn(async move { workers.run_on(&peer, job).await });
            // Sent and running there; then b's "result" comes first.
            actix_rt::time::sleep(Duration::from_millis(500)).await;
            let result =
                TaskResult { exit_code, outputs, output_tail: String::new(), duration_ms: 1, cpu_ms: 1, error: None };
            let inline = vec![crate::wire::InlineBlob { digest: digest.clone(), data: blob.clone() }];
            let task_id = i as u64 + 1;
            a.mesh.addr.do_send(crate::mesh::remote::TaskDoneFrom {
                from: ids[1].clone(),
                task_id,
                result: Ok(result),
                outputs: inline,
            });
            match running.await.expect("joined") {
                Err(RemoteError::Failed(why)) => assert!(why.contains("but the package declares ['out.txt']"), "{why}"),
                other => panic!("case {i}: {other:?}"),
            }
            assert!(!a.builds.cas.has(&digest), "case {i}: nothing of it was stored");
            // b's own package is still sleeping (a no longer waits for it): its cores come back.
            actix_rt::time::sleep(Duration::from_millis(1200)).await;
        }
        drop(b);
    }

    #[actix::test]
    async fn a_peer_refuses_a_task_whose_paths_leave_its_sandbox() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_net, a, b, ids) = two_linked(dir.path()).await;
        let workers = a.workers.clone();
        // A requester that skipped its own check (an older or hostile node): the blob is there
        // to fetch, the path climbs out of b's sandbox (<data>/sandboxes/<build>/<package>).
        std::fs::write(dir.path().join("payload"), "written outside").expect("payload");
        let (digest, size) = a.builds.cas.put_file(&dir.path().join("payload")).expect("put");
        for (path, field) in
            [("../../../../escaped.txt", "task.files[0].path"), ("/tmp/escaped.txt", "task.files[0].path")]
        {
            let mut job = hello("mem-paths");
            job.task.files.push(crate::wire::FileRef {
                path: path.into(),
                digest: digest.clone(),
                executable: false,
                size,
            });
            match workers.run_on(&ids[1], job).await {
                Err(RemoteError::Refused(why)) => {
                    assert!(why.starts_with(&format!("{field}: '{path}' ")), "{why}")
                }
                other => panic!("a task writing to '{path}' on a peer: {other:?}"),
            }
        }
        assert!(!b.builds.cas.has(&digest), "b refused before fetching a blob");
        assert!(!dir.path().join("escaped.txt").exists() && !Path::new("/tmp/escaped.txt").exists());
        let mut job = hello("mem-paths");
        job.task.outputs = vec!["../../../a/admin.key".into()];
        match workers.run_on(&ids[1], job).await {
            Err(RemoteError::Refused(why)) => assert!(why.starts_with("task.outputs[0]: "), "{why}"),
            other => panic!("an output outside the sandbox: {other:?}"),
        }
    }
}
