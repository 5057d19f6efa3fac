//! The mesh: which nodes belong (the signed roster), which are alive (SWIM gossip over the links),
//! who coordinates (a deterministic choice with a growing epoch), and keeping every node's
//! ledger and resource view in step.
//!
//! `MeshActor` owns the peer table. Each link is a [`bridge::BridgeActor`]; the web layer owns
//! the sockets and the [`Dialer`] that opens new ones. See ARCHITECTURE.md for the safety
//! argument.

mod adverts;
pub mod bridge;
pub mod coordinator;
pub mod gossip;
pub mod join;
mod links;
pub mod membership;
pub mod memory;
pub mod netbench;
pub mod noise;
pub mod remote;
pub mod roster;
mod sync;
pub(crate) use sync::heads_digest;
pub mod topology;
mod transfer;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;
use utoipa::ToSchema;

use crate::cas::Cas;
use crate::events::EventBus;
use crate::exec::ExecutorHandle;
use crate::identity::Identity;
use crate::ledger::LedgerHandle;
use crate::node::NodeHandle;
use crate::store::StoreHandle;
use crate::wire::{self, CoordinatorView, MeshMessage, NodeId, NodeState, NodeStatus, Role};
use bridge::{BridgeActor, Outgoing};
pub use coordinator::{adopt_epoch, choose_coordinator, next_view, Candidate};
use coordinator::{BenchSchedule, SetBenchmarkSink};
use links::{Attach, DialFailed, SetDialer};
pub use links::{LinkAuthenticated, LinkClosed};
use membership::{
    store_error, AcceptJoin, Admit, CanJoin, CreateToken, Leave, NoteRefusal, OpenJoin, RefusedJoins, ReloadRoster,
    Remove, StartJoin, TokenHash,
};
pub use membership::{Refusal, REFUSAL_SUMMARY_EVERY, REMOVED};
use netbench::NetworkTest;
use remote::RemoteWork;
pub use remote::{Job, Workers};
use roster::{MeshInfo, MeshKey, RosterEntry, RosterError, TokenInfo};
use sync::SyncNow;
use transfer::Transfer;

/// Ledger digests, adverts and the coordinator view go out this often.
pub const TICK: Duration = Duration::from_secs(1);
/// Grace after start before this node hands out benchmark turns (peers have linked by then).
pub const OFFLINE_AFTER: Duration = Duration::from_secs(3);
/// Random peers that get this node's ledger digest and coordinator view each tick (all of
/// them when its own chain grew): gossip, so an idle node's traffic does not grow with N.
const GOSSIP_FANOUT: usize = 3;
/// Each link carries at least a ping this often, so a half-open socket is noticed
/// ([`bridge::IDLE_LINK_TIMEOUT`]); liveness itself is gossip's.
const KEEPALIVE_TICKS: u64 = 10;
/// The peer table goes to the pool on every change, and this often anyway (last seen, latency).
const REPUBLISH_TICKS: u64 = 5;
/// The peer table goes to the pool at most this often (see [`MeshActor::publish_peers`]).
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
/// Redial backoff starts here and doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// Ledger entries per batch; a batch is also kept under one frame's size.
const SYNC_BATCH: usize = 200;

/// Opens a link to a URL. The web layer implements it with a WebSocket client and calls
/// [`MeshHandle::attach`] once connected, or [`MeshHandle::dial_failed`].
pub type Dialer = Arc<dyn Fn(String, MeshHandle) + Send + Sync>;

/// A peer as the pool shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PeerView {
    pub node_id: NodeId,
    /// Shared text, like the advert: the table is copied to the pool whenever liveness changes,
    /// and heap copies of every name and address were a sixth of a 200-node simulation's CPU.
    #[schema(value_type = String)]
    pub name: Arc<str>,
    #[schema(value_type = String)]
    pub address: Arc<str>,
    pub role: Role,
    pub status: NodeState,
    pub last_seen_ms: u64,
    pub latency_ms: Option<f64>,
    /// Shared, not copied: the peer table goes to the pool on every change, and an advert
    /// (tools, volumes, benchmarks) is the bulk of it.
    #[schema(value_type = Option<NodeStatus>)]
    pub advert: Option<Arc<NodeStatus>>,
}

/// This node's place in the mesh.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MeshView {
    pub mesh_id: Option<String>,
    /// Hex Ed25519 public key of the mesh root; join tokens pin its first 8 bytes (the mesh id).
    pub mesh_key: Option<String>,
    pub node_id: NodeId,
    pub role: Role,
    /// Whether this node holds the mesh key (admits new nodes).
    pub mesh_admin: bool,
    pub coordinator: NodeId,
    pub epoch: u64,
    /// Links open to peers; with duplicates resolved, at most one per peer.
    pub links: usize,
    /// Peers the topology wants a link to (every peer in a full mesh; the row and column in a
    /// grid): `links` well below it for long means dials are failing.
    #[serde(default)]
    pub links_wanted: usize,
    /// Dials on their way now.
    #[serde(default)]
    pub dialing: usize,
    /// The mesh key holder removed this node (`buildnet node remove`): every member refuses its
    /// links; `buildnet node leave` makes it a mesh of one, which a new token can admit again.
    #[serde(default)]
    pub removed: bool,
}

struct Peer {
    entry: RosterEntry,
    /// What the peer is called: its advert's name, else its roster entry's (see
    /// [`Peer::refresh_name`]); shared with every copy of the peer table.
    name: Arc<str>,
    address: Arc<str>,
    link: Option<u64>,
    last_seen: Option<Instant>,
    last_seen_ms: u64,
    rtt_ms: Option<f64>,
    advert: Option<Arc<NodeStatus>>,
    /// The `seq` the held advert came with.
    advert_seq: u64,
    /// Whether the held advert came from the member itself (not passed on by another).
    advert_from_origin: bool,
    /// Whether the topology links this node to the peer (see [`topology`]).
    wanted: bool,
    /// Until when a link opened for work (a task, a network test) is kept without use.
    on_demand_until: Option<Instant>,
    next_dial: Instant,
    backoff: Duration,
    dialing: bool,
    was_online: bool,
    /// Liveness as gossip knows it.
    swim: gossip::SwimState,
}

impl Peer {
    fn new(entry: RosterEntry, address: String) -> Peer {
        Peer {
            name: Arc::from(entry.name.as_str()),
            entry,
            address: Arc::from(address),
            link: None,
            last_seen: None,
            last_seen_ms: 0,
            rtt_ms: None,
            advert: None,
            advert_seq: 0,
            advert_from_origin: false,
            wanted: true,
            on_demand_until: None,
            next_dial: Instant::now(),
            backoff: MIN_BACKOFF,
            dialing: false,
            was_online: false,
            swim: gossip::SwimState::default(),
        }
    }

    /// Not declared down by gossip, and linked when the topology links us (a closed socket is
    /// noticed at once; a hung or unreachable node by SWIM within seconds). A peer the topology
    /// does not link us to is online once gossip has heard it alive.
    fn online(&self) -> bool {
        !self.swim.down
            && !self.swim.presumed_down
            && (self.link.is_some() || (!self.wanted && self.swim.generation > 0))
    }

    fn status(&self) -> NodeState {
        match (self.online(), self.advert.as_ref().map(|a| a.status)) {
            (false, _) => NodeState::Offline,
            (true, Some(NodeState::Busy)) => NodeState::Busy,
            (true, _) => NodeState::Online,
        }
    }

    /// Takes a new roster entry for the peer (its name may have changed).
    fn set_entry(&mut self, entry: RosterEntry) {
        self.entry = entry;
        self.refresh_name();
    }

    /// Names the peer as its advert does, else as its roster entry does; allocates only when
    /// that changed.
    fn refresh_name(&mut self) {
        let name = self.advert.as_ref().map_or(self.entry.name.as_str(), |a| a.name.as_str());
        if *self.name != *name {
            self.name = Arc::from(name);
        }
    }

    fn view(&self, id: &NodeId) -> PeerView {
        PeerView {
            node_id: id.clone(),
            name: self.name.clone(),
            address: self.address.clone(),
            role: self.entry.role,
            status: self.status(),
            last_seen_ms: self.last_seen_ms,
            latency_ms: self.rtt_ms,
            advert: self.advert.clone(),
        }
    }
}

struct Link {
    addr: Addr<BridgeActor>,
    initiator: bool,
    /// The URL this node dialled to open the link (`None` when the peer dialled).
    dialed: Option<String>,
    peer: Option<NodeId>,
    /// A removed member told so on this link ([`bridge::Dismiss`]): until the link closes, the
    /// one thing read from it is a newer roster entry of its own — it was admitted again while
    /// this node was away, and without that this node would dismiss it at every dial.
    dismissed: Option<NodeId>,
    /// When the socket was attached (a link opened for work is not closed as idle sooner).
    opened: Instant,
}

/// Everything the mesh actor needs at start.
pub struct MeshOptions {
    pub identity: Identity,
    pub name: String,
    pub address: String,
    pub data_dir: PathBuf,
    pub priority_weight: f64,
    pub bootstrap: Vec<String>,
    /// Create a mesh of our own when this node belongs to none.
    pub create_if_missing: bool,
    pub store: StoreHandle,
    pub ledger: LedgerHandle,
    pub node: NodeHandle,
    pub events: EventBus,
    /// Where blobs live.
    pub cas: Cas,
    /// Runs the packages peers send.
    pub executor: ExecutorHandle,
    /// `scheduling.accept_remote_builds` and `local_only_hours` of the node config.
    pub accept_remote_builds: bool,
    pub local_only_hours: Vec<crate::config::HoursWindow>,
}

pub struct MeshActor {
    me: NodeId,
    identity: Identity,
    name: String,
    address: String,
    data_dir: PathBuf,
    priority_weight: f64,
    noise_private: [u8; 32],
    noise_public: [u8; 32],
    mesh: Option<MeshInfo>,
    mesh_key: Option<MeshKey>,
    role: Role,
    peers: BTreeMap<NodeId, Peer>,
    links: HashMap<u64, Link>,
    next_link: u64,
    bootstrap: Vec<String>,
    bootstrap_next: Instant,
    dialer: Option<Dialer>,
    view: CoordinatorView,
    highest_epoch: u64,
    last_advert: String,
    store: StoreHandle,
    ledger: LedgerHandle,
    node: NodeHandle,
    events: EventBus,
    work: RemoteWork,
    transfer: Transfer,
    bench: BenchSchedule,
    probes: netbench::Probes,
    /// Where the peer table goes whenever it changes (the pool).
    pool: Option<Recipient<PeersChanged>>,
    /// Refused joins counted until their summary goes to the ledger.
    refused: RefusedJoins,
    /// Our ledger heads as last read, and their digest (what peers compare theirs with).
    heads: (String, Arc<Vec<wire::Head>>),
    /// When a differing ledger digest last made us ask for entries (see `sync`).
    last_digest_ask: Option<Instant>,
    /// The last of our own ledger entries pushed to peers (see `sync`); None before the first tick.
    pushed_own_seq: Option<u64>,
    /// Ledger entries being pulled from peers (see [`sync::Pulls`]).
    pulls: sync::Pulls,
    /// SWIM membership and failure detection.
    swim: gossip::Swim,
    /// Ticks since start (keepalives and republishing are spread over ticks).
    ticks: u64,
    /// This node's own roster entry (part of the roster digest).
    own_entry: Option<RosterEntry>,
    /// Which peers this node links to, from the roster.
    topology: topology::Topology,
    /// What the topology was computed from (see [`topology::roster_fingerprint`]).
    topology_of: u64,
    /// The `seq` of our latest advert.
    advert_seq: u64,
    /// When our status was last read for an advert, and the read due after a task ended (see
    /// [`MeshActor::advertise_soon`]).
    advert_read_at: Option<Instant>,
    advert_due: Option<SpawnHandle>,
    /// Reads of our status for an advert since start ([`MeshCounters`]).
    own_status_reads: u64,
    /// When we last asked a peer for adverts we lack.
    last_advert_ask: Option<Instant>,
    /// Work waiting for a link to a peer to come up: (peer, told when it is up).
    link_waiters: Vec<(NodeId, tokio::sync::oneshot::Sender<()>)>,
    /// Members whose removal is being recorded and stored (`membership::Remove`).
    removing: std::collections::HashSet<NodeId>,
    /// Names of joiners being admitted, with their ids (`membership::Admit`).
    admitting: HashMap<String, NodeId>,
    /// The peer table changed since it last went to the pool.
    peers_changed: std::cell::Cell<bool>,
    /// When the peer table last went to the pool.
    peers_published: std::cell::Cell<Option<Instant>>,
}

impl MeshActor {
    /// Loads keys, membership and roster; creates a mesh of one when asked and none exists.
    pub async fn load(opts: MeshOptions) -> Result<MeshActor, RosterError> {
        let (noise_private, noise_public) = roster::noise_keys(&opts.data_dir)?;
        let mut mesh_key = MeshKey::load(&opts.data_dir)?;
        let mut mesh = opts.store.run(|c| roster::load_mesh(c).map_err(store_error)).await?;
        if mesh.is_none() && opts.create_if_missing {
            let key = match mesh_key.take() {
                Some(k) => k,
                None => MeshKey::create(&opts.data_dir)?,
            };
            let info = key.info();
            let saved = info.clone();
            opts.store.run(move |c| roster::save_mesh(c, &saved).map_err(store_error)).await?;
            mesh = Some(info);
            mesh_key = Some(key);
        }
        // A mesh key of another mesh (left behind by a join) is not ours to use.
        if let (Some(k), Some(m)) = (&mesh_key, &mesh) {
            if k.info() != *m {
                mesh_key = None;
            }
        }
        let me = opts.identity.node_id.clone();
        let epoch = opts
            .store
            .optional_text("SELECT CAST(epoch AS TEXT) FROM coordinator_epoch WHERE id = ?1", "1".to_string())
            .await?
            .and_then(|e| e.parse::<u64>().ok())
            .unwrap_or(1);
        let mut actor = MeshActor {
            me: me.clone(),
            identity: opts.identity,
            name: opts.name,
            address: opts.address,
            data_dir: opts.data_dir,
            priority_weight: opts.priority_weight,
            noise_private,
            noise_public,
            mesh,
            mesh_key,
            role: Role::Admin,
            peers: BTreeMap::new(),
            links: HashMap::new(),
            next_link: 1,
            bootstrap: opts.bootstrap,
            bootstrap_next: Instant::now(),
            dialer: None,
            view: CoordinatorView { coordinator: me.clone(), epoch },
            highest_epoch: epoch,
            last_advert: String::new(),
            store: opts.store,
            ledger: opts.ledger,
            node: opts.node,
            events: opts.events,
            work: RemoteWork::new(opts.executor, opts.accept_remote_builds, opts.local_only_hours),
            transfer: Transfer::new(opts.cas),
            bench: BenchSchedule::new(),
            probes: netbench::Probes::default(),
            pool: None,
            refused: RefusedJoins::default(),
            heads: (String::new(), Arc::default()),
            last_digest_ask: None,
            pushed_own_seq: None,
            pulls: sync::Pulls::default(),
            swim: gossip::Swim::new(me),
            ticks: 0,
            own_entry: None,
            topology: topology::Topology::default(),
            topology_of: 0,
            advert_seq: 0,
            advert_read_at: None,
            advert_due: None,
            own_status_reads: 0,
            last_advert_ask: None,
            link_waiters: Vec::new(),
            removing: Default::default(),
            admitting: HashMap::new(),
            peers_changed: std::cell::Cell::new(true),
            peers_published: std::cell::Cell::new(None),
        };
        actor.refresh_own_entry().await?;
        actor.reload_roster().await?;
        actor.apply_topology();
        Ok(actor)
    }

    fn send(&self, link_id: u64, body: MeshMessage) {
        if let Some(link) = self.links.get(&link_id) {
            link.addr.do_send(bridge::Send { body });
        }
    }

    fn broadcast(&self, body: MeshMessage) {
        for p in self.peers.values() {
            if let Some(id) = p.link {
                self.send(id, body.clone());
            }
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        self.ticks += 1;
        self.note_transitions();
        self.recompute_coordinator();
        self.ping_some();
        self.reconcile_down_links(ctx);
        self.apply_topology();
        self.close_idle_links(now);
        self.dial_missing(now, ctx);
        self.exchange_heads(ctx, sync::HeadsTo::Gossip);
        self.advertise(ctx);
        self.ask_missing_adverts();
        self.schedule_benchmarks();
        self.expire_transfers();
        // A blob a task or a result waits for may have come another way than a transfer (an
        // upload, a transfer finished after its link closed). While blobs are on their way their
        // arrivals look again; once none is, nothing else would. With no task waiting, what the
        // transfers found stored already concerns nobody.
        if !self.work.has_waiting() {
            self.transfer.present.clear();
        } else if self.transfer.idle() {
            self.start_ready_tasks(ctx, remote::Stored::LookUp);
        }
        if self.work.has_collecting() && self.transfer.idle() {
            self.answer_collected();
        }
        self.summarise_refusals();
        if self.ticks.is_multiple_of(REPUBLISH_TICKS) {
            self.publish_peers_soon();
        }
    }

    /// Linked peers, a few at random: who gets this tick's view (`online_only`: the ones gossip
    /// holds alive) or ledger digest (any open link: after a heal, a link that carries frames
    /// again is reason enough to compare ledgers, before gossip has taken the peer back).
    fn gossip_targets(&self, online_only: bool) -> Vec<u64> {
        use rand::seq::SliceRandom;
        let mut linked: Vec<u64> =
            self.peers.values().filter_map(|p| p.link.filter(|_| !online_only || p.online())).collect();
        linked.shuffle(&mut rand::thread_rng());
        linked.truncate(GOSSIP_FANOUT);
        linked
    }

    /// Pings carry the coordinator view (so epochs converge) and measure latency: a few random
    /// peers each tick, and every link at least every [`KEEPALIVE_TICKS`].
    fn ping_some(&self) {
        let ping = MeshMessage::Ping { sent_ms: wire::now_ms(), view: self.view.clone() };
        let mut chosen = self.gossip_targets(true);
        for (i, p) in self.peers.values().enumerate() {
            if let Some(link) = p.link {
                if (self.ticks + i as u64).is_multiple_of(KEEPALIVE_TICKS) && !chosen.contains(&link) {
                    chosen.push(link);
                }
            }
        }
        for link in chosen {
            self.send(link, ping.clone());
        }
    }

    /// Hands the peer table to the pool now: a peer went online or offline, and builds, pages
    /// and the API should know at once. When it went less than [`PUBLISH_EVERY`] ago, the next
    /// periodic flush takes it instead: each copy is the whole table, and when many members'
    /// liveness changes at once (a split, a loaded simulation of 150 engines) copying it for
    /// every change on every node was a quarter of all CPU, which slowed probes, which changed
    /// more liveness.
    fn publish_peers(&self) {
        self.peers_changed.set(true);
        if self.peers_published.get().is_none_or(|at| at.elapsed() >= PUBLISH_EVERY) {
            self.flush_peers();
        }
    }

    /// Marks the peer table changed; it goes to the pool within [`PUBLISH_EVERY`]. In a big
    /// mesh adverts change it many times a second, and copying all of it to the pool each time
    /// was a seventh of the CPU of a 200-node simulation.
    fn publish_peers_soon(&self) {
        self.peers_changed.set(true);
    }

    /// Hands the peer table to the pool, which owns the pooled view everyone else reads.
    fn flush_peers(&self) {
        let Some(pool) = &self.pool else { return };
        if !self.peers_changed.replace(false) {
            return;
        }
        let peers = self.peers.iter().filter(|(_, p)| !p.entry.revoked).map(|(id, p)| p.view(id)).collect();
        self.peers_published.set(Some(Instant::now()));
        pool.do_send(PeersChanged { view: self.mesh_view(), peers });
    }

    /// Every message from a peer lands here; each arm hands it to the file that owns its concern.
    fn on_message(&mut self, ctx: &mut Context<Self>, link_id: u64, from: NodeId, body: MeshMessage) {
        let Some(peer) = self.peers.get_mut(&from) else { return };
        peer.last_seen = Some(Instant::now());
        peer.last_seen_ms = wire::now_ms();
        match body {
            MeshMessage::Hello(hello) => self.on_hello(ctx, link_id, from, hello),
            MeshMessage::Ping { sent_ms, view } => self.on_ping(link_id, sent_ms, view),
            MeshMessage::Pong { echo_ms } => self.on_pong(&from, echo_ms),
            MeshMessage::Advert { seq, status } => self.on_advert(from, seq, status),
            MeshMessage::AdvertWant { nodes } => self.on_advert_want(link_id, nodes),
            MeshMessage::Roster { entries } => self.on_roster(ctx, link_id, entries),
            MeshMessage::Leave { node_id } => self.on_leave(from, node_id),
            MeshMessage::Rekey => {}
            MeshMessage::LedgerHeads { heads } => self.answer_heads(ctx, link_id, heads),
            MeshMessage::LedgerDigest { digest } => self.on_ledger_digest(link_id, digest),
            MeshMessage::Swim { data } => self.on_swim(ctx, from, data),
            MeshMessage::SwimVia { to, data } => self.on_swim_via(from, to, data),
            MeshMessage::SwimRelayed { data } => self.on_swim_relayed(ctx, from, data),
            MeshMessage::LedgerEntries { entries, hop } => self.on_entries(ctx, from, entries, hop),
            MeshMessage::BlobWant { digests } => self.on_blob_want(link_id, digests),
            MeshMessage::BlobChunk(chunk) => self.on_chunk(ctx, link_id, chunk),
            MeshMessage::BlobAck { digest, offset } => self.on_blob_ack(link_id, digest, offset),
            MeshMessage::TaskRequest(req) => self.on_task_request(ctx, link_id, from, *req),
            MeshMessage::TaskDone { task_id, result, outputs } => {
                self.on_task_done(ctx, link_id, from, task_id, result, outputs)
            }
            MeshMessage::TaskCancel { build_id } => self.on_task_cancel(ctx, link_id, from, build_id),
            MeshMessage::TaskOutput { task_id, chunk } => self.on_task_output(from, task_id, chunk),
            MeshMessage::BenchmarkGrant { epoch } => self.on_benchmark_grant(from, epoch),
            probe @ (MeshMessage::NetEcho { .. }
            | MeshMessage::NetEchoReply { .. }
            | MeshMessage::NetData { .. }
            | MeshMessage::NetDataEnd { .. }
            | MeshMessage::NetReceived { .. }
            | MeshMessage::NetPull { .. }) => self.on_probe(link_id, from, probe),
        }
    }
}

impl Actor for MeshActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(TICK, |act, ctx| act.tick(ctx));
        ctx.run_interval(gossip::PROBE_RTT, |act, _| act.follow_swim_members());
        ctx.run_interval(PUBLISH_EVERY, |act, _| act.flush_peers());
    }

    fn stopping(&mut self, _: &mut Context<Self>) -> Running {
        for link in self.links.values() {
            link.addr.do_send(bridge::Close);
        }
        Running::Stop
    }
}

/// A decoded message from a peer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LinkMessage {
    pub link_id: u64,
    pub from: NodeId,
    pub body: MeshMessage,
}

impl Handler<LinkMessage> for MeshActor {
    type Result = ();

    fn handle(&mut self, msg: LinkMessage, ctx: &mut Context<Self>) {
        let Some(link) = self.links.get(&msg.link_id) else { return };
        if link.peer.as_ref() == Some(&msg.from) {
            self.on_message(ctx, msg.link_id, msg.from, msg.body);
        } else if link.dismissed.as_ref() == Some(&msg.from) {
            // Only a newer entry of its own that admits it is read, and it ends the link (the
            // node dials again as a member). Nothing else reaches the store or the log from a
            // node that is not a member here: a node truly removed holds no such entry.
            let MeshMessage::Roster { entries } = msg.body else { return };
            let held = self.peers.get(&msg.from).map(|p| &p.entry);
            let Some(entry) = held.and_then(|held| membership::admits_again(held, entries)) else { return };
            link.addr.do_send(bridge::Close);
            // Frames the bridge passed on before it closes are not read.
            if let Some(link) = self.links.get_mut(&msg.link_id) {
                link.dismissed = None;
            }
            self.on_roster(ctx, msg.link_id, vec![entry]);
        }
    }
}

/// The peer table and this node's place in the mesh, sent to the pool whenever they change.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct PeersChanged {
    pub view: MeshView,
    pub peers: Arc<[PeerView]>,
}

/// Where the peer table goes (the pool registers itself at start).
#[derive(Message)]
#[rtype(result = "()")]
struct SetPool(Recipient<PeersChanged>);

impl Handler<SetPool> for MeshActor {
    type Result = ();

    fn handle(&mut self, SetPool(pool): SetPool, _: &mut Context<Self>) {
        self.pool = Some(pool);
        self.publish_peers();
    }
}

/// Stops the mesh: every link closes (the node is shutting down).
#[derive(Message)]
#[rtype(result = "()")]
struct StopMesh;

impl Handler<StopMesh> for MeshActor {
    type Result = ();

    fn handle(&mut self, _: StopMesh, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// This node's place in the mesh.
#[derive(Message)]
#[rtype(result = "MeshView")]
struct GetView;

impl Handler<GetView> for MeshActor {
    type Result = MessageResult<GetView>;

    fn handle(&mut self, _: GetView, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.mesh_view())
    }
}

#[derive(Message)]
#[rtype(result = "String")]
struct ExplainPeer(NodeId);

/// How much of some work a node has done since it started, for tests that check it is not
/// done more often than it needs to be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, MessageResponse)]
pub struct MeshCounters {
    /// Blobs asked of peers (outputs that came inside a task's result are not asked for).
    pub blobs_asked: u64,
    /// Reads of this node's own status for an advert.
    pub own_status_reads: u64,
}

#[derive(Message)]
#[rtype(result = "MeshCounters")]
struct Counters;

impl Handler<Counters> for MeshActor {
    type Result = MeshCounters;

    fn handle(&mut self, _: Counters, _: &mut Context<Self>) -> MeshCounters {
        MeshCounters { blobs_asked: self.transfer.asked, own_status_reads: self.own_status_reads }
    }
}

impl Handler<ExplainPeer> for MeshActor {
    type Result = String;

    fn handle(&mut self, msg: ExplainPeer, _: &mut Context<Self>) -> String {
        let Some(p) = self.peers.get(&msg.0) else {
            return format!("{} is not in this node's roster of {} peers", msg.0, self.peers.len());
        };
        let now = Instant::now();
        format!(
            "of {} peers; {}: wanted {}, link {:?}, dialing {}, next dial in {:?}, backoff {:?}, swim {:?}, \
             topology of {} members",
            self.peers.len(),
            msg.0,
            p.wanted,
            p.link,
            p.dialing,
            p.next_dial.saturating_duration_since(now),
            p.backoff,
            p.swim,
            self.topology.members()
        )
    }
}

impl MeshActor {
    fn mesh_view(&self) -> MeshView {
        MeshView {
            mesh_id: self.mesh.as_ref().map(|m| m.mesh_id.clone()),
            mesh_key: self.mesh.as_ref().map(|m| m.public_key.clone()),
            node_id: self.me.clone(),
            role: self.role,
            mesh_admin: self.mesh_key.is_some(),
            coordinator: self.view.coordinator.clone(),
            epoch: self.view.epoch,
            links: self.links.values().filter(|l| l.peer.is_some()).count(),
            links_wanted: self.peers.values().filter(|p| p.wanted && !p.entry.revoked).count(),
            dialing: self.peers.values().filter(|p| p.dialing).count(),
            removed: self.removed(),
        }
    }

    /// Whether the mesh key holder removed this node (its own roster entry is revoked).
    fn removed(&self) -> bool {
        self.own_entry.as_ref().is_some_and(|e| e.revoked)
    }
}

fn stopped() -> RosterError {
    RosterError::Io("mesh actor stopped".into())
}

/// Typed front of the mesh actor.
#[derive(Clone)]
pub struct MeshHandle {
    pub(crate) addr: Addr<MeshActor>,
}

impl MeshHandle {
    pub fn start(actor: MeshActor) -> MeshHandle {
        MeshHandle { addr: actor.start() }
    }

    /// Starts a bridge for a connected socket: `dialed` is the URL this node dialled, `None` for
    /// a socket a peer opened. `None` when this node is in no mesh.
    pub async fn attach(
        &self,
        outgoing: UnboundedSender<Outgoing>,
        dialed: Option<String>,
    ) -> Option<Addr<BridgeActor>> {
        self.addr.send(Attach { outgoing, dialed }).await.ok().flatten()
    }

    pub fn dial_failed(&self, url: String) {
        self.addr.do_send(DialFailed { url });
    }

    pub fn set_dialer(&self, dialer: Dialer) {
        self.addr.do_send(SetDialer { dialer });
    }

    /// This node's place in the mesh (peers and their adverts are the pool's: `PoolHandle`).
    pub async fn view(&self) -> Option<MeshView> {
        self.addr.send(GetView).await.ok()
    }

    /// How this node holds `peer`, in one line, for a report on a node that lags (the
    /// simulation's): whether the topology wants a link, the link, dials, and gossip's verdict.
    pub async fn explain_peer(&self, peer: NodeId) -> String {
        self.addr.send(ExplainPeer(peer)).await.unwrap_or_else(|_| "mesh stopped".into())
    }

    /// How much of some work this node has done since it started ([`MeshCounters`]).
    pub async fn counters(&self) -> MeshCounters {
        self.addr.send(Counters).await.unwrap_or_default()
    }

    /// Closes every link and stops the mesh actor.
    pub async fn stop(&self) {
        let _ = self.addr.send(StopMesh).await;
    }

    /// Sends every change of the peer table to `pool`.
    pub fn set_pool(&self, pool: Recipient<PeersChanged>) {
        self.addr.do_send(SetPool(pool));
    }

    pub async fn create_token(
        &self,
        role: Role,
        ttl_ms: u64,
        created_by: &str,
    ) -> Result<(String, TokenInfo), RosterError> {
        self.addr
            .send(CreateToken { role, ttl_ms, created_by: created_by.into() })
            .await
            .map_err(|_| RosterError::Io("mesh actor stopped".into()))?
    }

    /// Starts the holder's side of a join; `NotMeshAdmin` unless this node holds the mesh key.
    pub async fn open_join(&self) -> Result<join::Responder, RosterError> {
        self.addr.send(OpenJoin).await.map_err(|_| stopped())?
    }

    /// The stored hash of the token a join names, if it can still be spent.
    pub async fn token_hash(&self, id: &str) -> Result<String, RosterError> {
        self.addr.send(TokenHash { id: id.to_string() }).await.map_err(|_| stopped())?
    }

    /// Admits the node of a join that proved its token; the reply carries the mesh key's proof.
    pub async fn admit(
        &self,
        token_id: String,
        request: join::JoinRequest,
        session: &join::Session,
    ) -> Result<join::JoinReply, RosterError> {
        let admit = Admit {
            token_id,
            request,
            noise_public: session.remote_static,
            handshake_hash: session.handshake_hash.clone(),
        };
        self.addr.send(admit).await.map_err(|_| stopped())?
    }

    /// Counts a refused join from `source`; the ledger gets one summary per source per interval.
    pub fn note_refusal(&self, source: String, reason: Refusal) {
        self.addr.do_send(NoteRefusal { source, reason });
    }

    /// Whether this node may join the mesh `mesh_id` (see [`membership::CanJoin`]).
    pub async fn can_join(&self, mesh_id: &str) -> Result<(), RosterError> {
        self.addr.send(CanJoin { mesh_id: mesh_id.to_string() }).await.map_err(|_| stopped())?
    }

    /// Starts this node's side of a join with a token: the first message to send.
    pub async fn start_join(&self, token: roster::JoinToken) -> Result<(join::Initiator, Vec<u8>), RosterError> {
        self.addr.send(StartJoin { token }).await.map_err(|_| stopped())?
    }

    /// Adopts the mesh a verified join admitted this node into.
    pub async fn accept_join(&self, admission: join::Admission) -> Result<MeshInfo, RosterError> {
        let info = self.addr.send(AcceptJoin { admission }).await.map_err(|_| stopped())??;
        let _ = self.addr.send(ReloadRoster).await;
        Ok(info)
    }

    pub async fn sync_now(&self) -> usize {
        self.addr.send(SyncNow).await.unwrap_or(0)
    }

    /// Measures latency, jitter and bandwidth to a peer over its mesh link.
    pub async fn network_test(
        &self,
        peer: NodeId,
        options: netbench::NetworkOptions,
    ) -> Result<crate::bench::NetworkBenchmarkResult, String> {
        self.addr.send(NetworkTest { peer, options }).await.unwrap_or_else(|_| Err("the mesh actor stopped".into()))
    }

    pub fn set_benchmark_sink(&self, sink: UnboundedSender<()>) {
        self.addr.do_send(SetBenchmarkSink { sink });
    }

    pub async fn leave(&self) -> Result<(), RosterError> {
        self.addr.send(Leave).await.map_err(|_| RosterError::Io("mesh actor stopped".into()))?
    }

    /// Removes a member that cannot leave by itself (on the mesh key holder): see [`Remove`].
    pub async fn remove(&self, node: NodeId, by: &str) -> Result<RosterEntry, RosterError> {
        self.addr.send(Remove { node, by: by.to_string() }).await.map_err(|_| stopped())?
    }
}
