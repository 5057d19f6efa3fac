//! The mesh: which nodes belong (the signed roster), which are alive (links and heartbeats),
//! who coordinates (a deterministic choice with a growing epoch), and keeping every node's
//! ledger and resource view in step.
//!
//! `MeshActor` owns the peer table. Each link is a [`bridge::BridgeActor`]; the web layer owns
//! the sockets and the [`Dialer`] that opens new ones. See ARCHITECTURE.md for the safety
//! argument.

pub mod bridge;
pub mod netbench;
pub mod noise;
pub mod roster;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;
use utoipa::ToSchema;

use crate::build::cas::Cas;
use crate::build::exec::{Task, TaskResult};
use crate::events::{Event, EventBus};
use crate::identity::{self, Identity};
use crate::ledger::LedgerHandle;
use crate::node::{NodeHandle, NodeStatus};
use crate::store::StoreHandle;
use crate::wire::{self, CoordinatorView, Head, Hello, LedgerEntryType, MeshMessage, NodeId, Role};
use bridge::{BridgeActor, Outgoing};
use roster::{MeshInfo, MeshKey, RosterEntry, RosterError, TokenInfo};

/// Heartbeats, ledger heads and adverts go out this often.
pub const TICK: Duration = Duration::from_secs(1);
/// A peer not heard from for this long is offline.
pub const OFFLINE_AFTER: Duration = bridge::LINK_TIMEOUT;
/// Redial backoff starts here and doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// Ledger entries per batch; a batch is also kept under one frame's size.
const SYNC_BATCH: usize = 200;

/// Opens a link to a URL. The web layer implements it with a WebSocket client and calls
/// [`MeshHandle::attach`] once connected, or [`MeshHandle::dial_failed`].
pub type Dialer = Arc<dyn Fn(String, MeshHandle) + Send + Sync>;

/// A node asking to join, signed with its own key.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinRequest {
    pub token: String,
    pub node_id: NodeId,
    pub name: String,
    pub address: String,
    pub ed_public: String,
    pub noise_public: String,
    pub signature: String,
}

impl JoinRequest {
    fn signing_bytes(&self) -> Vec<u8> {
        serde_json::json!(["buildnet-join/1", self.token, self.node_id, self.name, self.address, self.noise_public])
            .to_string()
            .into_bytes()
    }

    fn verify(&self) -> bool {
        let key: Option<[u8; 32]> = wire::unhex(&self.ed_public).and_then(|b| b.try_into().ok());
        let sig: Option<[u8; 64]> = wire::unhex(&self.signature).and_then(|b| b.try_into().ok());
        match (key, sig) {
            (Some(k), Some(s)) => {
                NodeId::from_public_key(&k) == self.node_id && identity::verify(&k, &self.signing_bytes(), &s)
            }
            _ => false,
        }
    }
}

/// The admin node's answer to a join.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinResponse {
    pub mesh: MeshInfo,
    pub roster: Vec<RosterEntry>,
}

/// A peer as the pool shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PeerView {
    pub node_id: NodeId,
    pub name: String,
    pub address: String,
    pub role: Role,
    /// `online`, `busy` or `offline`.
    pub status: String,
    pub last_seen_ms: u64,
    pub latency_ms: Option<f64>,
    pub advert: Option<Box<NodeStatus>>,
}

/// This node's place in the mesh.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MeshView {
    pub mesh_id: Option<String>,
    pub node_id: NodeId,
    pub role: Role,
    /// Whether this node holds the mesh key (admits new nodes).
    pub mesh_admin: bool,
    pub coordinator: NodeId,
    pub epoch: u64,
    /// Links open to peers; with duplicates resolved, at most one per peer.
    pub links: usize,
}

struct Peer {
    entry: RosterEntry,
    address: String,
    link: Option<u64>,
    last_seen: Option<Instant>,
    last_seen_ms: u64,
    rtt_ms: Option<f64>,
    advert: Option<Box<NodeStatus>>,
    next_dial: Instant,
    backoff: Duration,
    dialing: bool,
    was_online: bool,
}

impl Peer {
    fn new(entry: RosterEntry, address: String) -> Peer {
        Peer {
            entry,
            address,
            link: None,
            last_seen: None,
            last_seen_ms: 0,
            rtt_ms: None,
            advert: None,
            next_dial: Instant::now(),
            backoff: MIN_BACKOFF,
            dialing: false,
            was_online: false,
        }
    }

    fn online(&self) -> bool {
        self.link.is_some() && self.last_seen.is_some_and(|t| t.elapsed() < OFFLINE_AFTER)
    }

    fn status(&self) -> &'static str {
        match (self.online(), self.advert.as_ref().map(|a| a.status.as_str())) {
            (false, _) => "offline",
            (true, Some("busy")) => "busy",
            (true, _) => "online",
        }
    }
}

struct Link {
    addr: Addr<BridgeActor>,
    initiator: bool,
    peer: Option<NodeId>,
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
    /// Where blobs and sandboxes of remote tasks live.
    pub cas: Cas,
    pub sandboxes: PathBuf,
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
    bench: BenchSchedule,
}

/// Network probes in flight and the benchmark schedule this node runs when it coordinates.
struct BenchSchedule {
    /// This node's own probes: id → where the peer's answers go.
    probes: HashMap<u64, UnboundedSender<netbench::ProbeEvent>>,
    /// Payload bytes counted for peers' upload probes.
    counted: HashMap<(NodeId, u64), u64>,
    /// Where a grant for this node's own scheduled benchmark goes (set by the node at start).
    sink: Option<UnboundedSender<()>>,
    /// The node granted a run, when (wall ms), and whether it has been seen running.
    granted: Option<(NodeId, u64, bool)>,
    /// This node's latest status, for the schedule's view of itself.
    own: Option<Box<NodeStatus>>,
    started: Instant,
}

/// Packages run for other nodes, and packages this node sent elsewhere.
struct RemoteWork {
    cas: Cas,
    sandboxes: PathBuf,
    accept: bool,
    local_only_hours: Vec<crate::config::HoursWindow>,
    next_task: u64,
    /// Tasks this node asked a peer to run: id → (peer, where the result goes).
    sent: HashMap<u64, (NodeId, tokio::sync::oneshot::Sender<Result<TaskResult, String>>)>,
    /// Blobs being received: digest → bytes so far.
    receiving: HashMap<String, Vec<u8>>,
    /// Tasks from peers waiting for blobs: (link, peer, request).
    waiting: Vec<(u64, NodeId, wire::TaskRequest)>,
}

/// Bytes of a blob per chunk: with framing, one chunk stays well inside a Noise frame.
const CHUNK: usize = 48 * 1024;

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
            view: CoordinatorView { coordinator: me, epoch: 1 },
            highest_epoch: 1,
            last_advert: String::new(),
            store: opts.store,
            ledger: opts.ledger,
            node: opts.node,
            events: opts.events,
            work: RemoteWork {
                cas: opts.cas,
                sandboxes: opts.sandboxes,
                accept: opts.accept_remote_builds,
                local_only_hours: opts.local_only_hours,
                next_task: 1,
                sent: HashMap::new(),
                receiving: HashMap::new(),
                waiting: Vec::new(),
            },
            bench: BenchSchedule {
                probes: HashMap::new(),
                counted: HashMap::new(),
                sink: None,
                granted: None,
                own: None,
                started: Instant::now(),
            },
        };
        actor.refresh_own_entry().await?;
        actor.reload_roster().await?;
        Ok(actor)
    }

    /// The mesh admin re-signs its own entry when its address changed.
    async fn refresh_own_entry(&mut self) -> Result<(), RosterError> {
        let (Some(key), Some(mesh)) = (&self.mesh_key, self.mesh.clone()) else { return Ok(()) };
        let me = self.me.clone();
        let current = self.store.run(move |c| roster::load_roster(c).map_err(store_error)).await?;
        let mine = current.into_iter().find(|(e, _)| e.node_id == me).map(|(e, _)| e);
        if mine.as_ref().is_some_and(|e| e.address == self.address && e.name == self.name && !e.revoked) {
            return Ok(());
        }
        let mut entry = self.entry_for(
            self.me.clone(),
            self.name.clone(),
            Role::Admin,
            wire::hex(&self.identity.public_key()),
            wire::hex(&self.noise_public),
            self.address.clone(),
        );
        key.sign(&mut entry);
        self.store.run(move |c| roster::save_entry(c, &mesh, &entry).map(|_| ()).map_err(store_error)).await?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn entry_for(
        &self,
        node_id: NodeId,
        name: String,
        role: Role,
        ed_public: String,
        noise_public: String,
        address: String,
    ) -> RosterEntry {
        RosterEntry {
            node_id,
            name,
            role,
            ed_public,
            noise_public,
            address,
            issued_at_ms: wire::now_ms(),
            revoked: false,
            signature: String::new(),
        }
    }

    async fn reload_roster(&mut self) -> Result<(), RosterError> {
        let roster = self.store.run(|c| roster::load_roster(c).map_err(store_error)).await?;
        for (entry, address) in roster {
            if entry.node_id == self.me {
                self.role = entry.role;
                continue;
            }
            match self.peers.get_mut(&entry.node_id) {
                Some(p) => p.entry = entry,
                None => {
                    self.peers.insert(entry.node_id.clone(), Peer::new(entry, address));
                }
            }
        }
        Ok(())
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

    fn candidates(&self) -> Vec<Candidate> {
        let mut list =
            vec![Candidate { id: self.me.clone(), weight: self.priority_weight, role: self.role, live: true }];
        list.extend(self.peers.iter().filter(|(_, p)| !p.entry.revoked).map(|(id, p)| Candidate {
            id: id.clone(),
            weight: p.advert.as_ref().map_or(1.0, |a| a.priority_weight),
            role: p.entry.role,
            live: p.online(),
        }));
        list
    }

    fn recompute_coordinator(&mut self) {
        let next = next_view(&self.view, self.highest_epoch, &self.candidates());
        if next.coordinator != self.view.coordinator {
            log::info!("coordinator is now {} (epoch {})", next.coordinator, next.epoch);
        }
        self.highest_epoch = self.highest_epoch.max(next.epoch);
        self.view = next;
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        for (id, p) in self.peers.iter_mut() {
            let online = p.online();
            if p.was_online != online {
                p.was_online = online;
                self.events.publish(Event::NodeStatus {
                    node_id: id.clone(),
                    status: p.status().into(),
                    reason: (!online).then(|| "no heartbeat".to_string()),
                });
            }
        }
        self.recompute_coordinator();
        let ping = MeshMessage::Ping { sent_ms: wire::now_ms(), view: self.view.clone() };
        self.broadcast(ping);
        self.dial_missing(now, ctx);
        self.exchange_heads(ctx);
        self.advertise(ctx, false);
        self.schedule_benchmarks();
    }

    /// The coordinator's half of plan §8.3: at most one node benchmarks at a time, the one most
    /// overdue first, and never one that is busy with builds. A grant is over when the node's
    /// advert shows results newer than the grant, when it goes offline, when it has not started
    /// within 15 s (a grant lost in a coordinator change), or after ten minutes.
    fn schedule_benchmarks(&mut self) {
        if self.view.coordinator != self.me || self.bench.started.elapsed() < OFFLINE_AFTER {
            return;
        }
        let now = wire::now_ms();
        let mut nodes: Vec<(&NodeId, &NodeStatus)> = Vec::new();
        if let Some(own) = &self.bench.own {
            if self.role != Role::Observer {
                nodes.push((&self.me, own));
            }
        }
        for (id, p) in &self.peers {
            if let (true, Some(a)) = (p.online() && p.entry.role != Role::Observer, &p.advert) {
                nodes.push((id, a));
            }
        }
        if let Some((id, at, seen_running)) = &mut self.bench.granted {
            let (done, running) = match nodes.iter().find(|(n, _)| *n == id) {
                Some((_, s)) => (!s.benchmarks.running && s.benchmarks.measured_at_ms >= *at, s.benchmarks.running),
                None => (true, false),
            };
            *seen_running |= running;
            let age = now.saturating_sub(*at);
            let lapsed = (!*seen_running && age > 15_000) || age > 600_000;
            if !done && !lapsed {
                return;
            }
            self.bench.granted = None;
        }
        if nodes.iter().any(|(_, s)| s.benchmarks.running) {
            return;
        }
        let due = nodes
            .iter()
            .filter(|(_, s)| s.status != "busy")
            .filter_map(|(id, s)| s.benchmarks.next_due_ms.filter(|d| *d <= now).map(|d| (d, (*id).clone())))
            .min();
        let Some((_, id)) = due else { return };
        log::info!("benchmark turn for {id}");
        self.bench.granted = Some((id.clone(), now, false));
        if id == self.me {
            if let Some(sink) = &self.bench.sink {
                let _ = sink.send(());
            }
        } else if let Some(link) = self.peers.get(&id).and_then(|p| p.link) {
            self.send(link, MeshMessage::BenchmarkGrant { epoch: self.view.epoch });
        }
    }

    fn dial_missing(&mut self, now: Instant, ctx: &mut Context<Self>) {
        let Some(dialer) = self.dialer.clone() else { return };
        let handle = MeshHandle { addr: ctx.address() };
        for p in self.peers.values_mut() {
            if p.link.is_none() && !p.dialing && !p.entry.revoked && p.next_dial <= now && !p.address.is_empty() {
                p.dialing = true;
                p.next_dial = now + p.backoff;
                p.backoff = (p.backoff * 2).min(MAX_BACKOFF);
                dialer(p.address.clone(), handle.clone());
            }
        }
        if self.links.values().all(|l| l.peer.is_none()) && !self.bootstrap.is_empty() && self.bootstrap_next <= now {
            self.bootstrap_next = now + MAX_BACKOFF;
            for url in &self.bootstrap {
                dialer(url.clone(), handle.clone());
            }
        }
    }

    /// Sends our ledger heads to every peer; each answers with what we lack.
    fn exchange_heads(&mut self, ctx: &mut Context<Self>) {
        let ledger = self.ledger.clone();
        ctx.spawn(async move { ledger.heads().await }.into_actor(self).map(|heads, act, _| match heads {
            Ok(heads) => act.broadcast(MeshMessage::LedgerHeads { heads }),
            Err(e) => log::warn!("ledger heads: {e}"),
        }));
    }

    /// Answers a peer's heads with the entries it lacks, in bounded batches.
    fn answer_heads(&mut self, ctx: &mut Context<Self>, link_id: u64, theirs: Vec<Head>) {
        let ledger = self.ledger.clone();
        ctx.spawn(
            async move {
                let mine = ledger.heads().await?;
                let mut batches = Vec::new();
                for head in mine {
                    let their_seq = theirs.iter().find(|h| h.origin == head.origin).map_or(0, |h| h.seq);
                    if head.seq <= their_seq {
                        continue;
                    }
                    let entries = ledger.entries_after(head.origin.clone(), their_seq, SYNC_BATCH).await?;
                    batches.extend(split_batch(entries));
                }
                Ok::<_, crate::store::StoreError>(batches)
            }
            .into_actor(self)
            .map(move |batches, act, _| match batches {
                Ok(batches) => {
                    for entries in batches {
                        act.send(link_id, MeshMessage::LedgerEntries { entries });
                    }
                }
                Err(e) => log::warn!("ledger sync: {e}"),
            }),
        );
    }

    /// Sends our resources to every peer when they changed (or to all when `force`).
    fn advertise(&mut self, ctx: &mut Context<Self>, force: bool) {
        let node = self.node.clone();
        ctx.spawn(async move { node.status().await }.into_actor(self).map(move |status, act, _| {
            let Ok(status) = status else { return };
            act.bench.own = Some(Box::new(status.clone()));
            let fingerprint = advert_fingerprint(&status);
            if force || fingerprint != act.last_advert {
                act.last_advert = fingerprint;
                act.broadcast(MeshMessage::Advert(Box::new(status)));
            }
        }));
    }

    fn on_message(&mut self, ctx: &mut Context<Self>, link_id: u64, from: NodeId, body: MeshMessage) {
        let Some(peer) = self.peers.get_mut(&from) else { return };
        peer.last_seen = Some(Instant::now());
        peer.last_seen_ms = wire::now_ms();
        match body {
            MeshMessage::Hello(hello) => {
                if hello.address != peer.address && !hello.address.is_empty() {
                    peer.address = hello.address.clone();
                    let (store, id, addr) = (self.store.clone(), from.clone(), hello.address);
                    actix::spawn(async move {
                        if let Err(e) =
                            store.run(move |c| roster::save_address(c, &id, &addr).map_err(store_error)).await
                        {
                            log::warn!("saving a peer's address: {e}");
                        }
                    });
                }
            }
            MeshMessage::Ping { sent_ms, view } => {
                self.send(link_id, MeshMessage::Pong { echo_ms: sent_ms });
                self.highest_epoch = self.highest_epoch.max(view.epoch);
                self.view = adopt_epoch(&self.view, &view);
            }
            MeshMessage::Pong { echo_ms } => {
                peer.rtt_ms = Some(wire::now_ms().saturating_sub(echo_ms) as f64);
            }
            MeshMessage::Advert(status) => {
                if status.node_id == from {
                    let resources = Box::new(status.resources.clone());
                    peer.advert = Some(status);
                    self.events.publish(Event::ResourceUpdate { node_id: from, resources });
                }
            }
            MeshMessage::Roster { entries } => self.on_roster(ctx, entries),
            MeshMessage::LedgerHeads { heads } => self.answer_heads(ctx, link_id, heads),
            MeshMessage::LedgerEntries { entries } => {
                let (ledger, events) = (self.ledger.clone(), self.events.clone());
                actix::spawn(async move {
                    match ledger.insert_remote(entries).await {
                        Ok(outcome) => {
                            for (origin, seq) in &outcome.equivocations {
                                log::error!("node {origin} equivocated at seq {seq}: two different signed entries; kept as proof");
                            }
                            for entry in outcome.stored {
                                events.publish(Event::LedgerEntry { entry: Box::new(entry) });
                            }
                        }
                        Err(e) => log::warn!("refused a ledger batch from {from}: {e}"),
                    }
                });
            }
            MeshMessage::Leave { node_id } if node_id == from => {
                log::info!("{from} left the mesh");
                if let Some(p) = self.peers.get_mut(&from) {
                    p.entry.revoked = true;
                }
                if let Some(link) = self.links.get(&link_id) {
                    link.addr.do_send(bridge::Close);
                }
                self.events.publish(Event::NodeStatus {
                    node_id: from,
                    status: "offline".into(),
                    reason: Some("left".into()),
                });
            }
            MeshMessage::Leave { .. } | MeshMessage::Rekey => {}
            MeshMessage::TaskRequest(req) => self.on_task_request(ctx, link_id, from, *req),
            MeshMessage::BlobWant { digests } => {
                for d in digests {
                    self.send_blob(link_id, &d);
                }
            }
            MeshMessage::BlobChunk(chunk) => self.on_chunk(ctx, chunk),
            MeshMessage::NetEcho { probe, seq } => self.send(link_id, MeshMessage::NetEchoReply { probe, seq }),
            MeshMessage::NetEchoReply { probe, seq } => self.forward_to_probe(probe, netbench::ProbeEvent::Echo(seq)),
            MeshMessage::NetData { probe, data } => {
                if self.bench.probes.contains_key(&probe) {
                    self.forward_to_probe(probe, netbench::ProbeEvent::Data(data.len()));
                } else {
                    *self.bench.counted.entry((from, probe)).or_default() += data.len() as u64;
                }
            }
            MeshMessage::NetDataEnd { probe } => {
                if self.bench.probes.contains_key(&probe) {
                    self.forward_to_probe(probe, netbench::ProbeEvent::End);
                } else {
                    let bytes = self.bench.counted.remove(&(from, probe)).unwrap_or(0);
                    self.send(link_id, MeshMessage::NetReceived { probe, bytes });
                }
            }
            MeshMessage::NetReceived { probe, bytes } => {
                self.forward_to_probe(probe, netbench::ProbeEvent::Received(bytes))
            }
            MeshMessage::NetPull { probe, bytes } => {
                let payload = vec![0xA5u8; netbench::PAYLOAD_CHUNK];
                let (mut sent, bytes) = (0u64, bytes.min(netbench::MAX_PULL_BYTES));
                while sent < bytes {
                    let n = netbench::PAYLOAD_CHUNK.min((bytes - sent) as usize);
                    self.send(link_id, MeshMessage::NetData { probe, data: payload[..n].to_vec() });
                    sent += n as u64;
                }
                self.send(link_id, MeshMessage::NetDataEnd { probe });
            }
            MeshMessage::BenchmarkGrant { epoch } => {
                // Only the coordinator this node recognises hands out turns.
                if from == self.view.coordinator || epoch > self.view.epoch {
                    if let Some(sink) = &self.bench.sink {
                        let _ = sink.send(());
                    }
                }
            }
            MeshMessage::TaskDone { task_id, result } => {
                if let Some((peer, reply)) = self.work.sent.remove(&task_id) {
                    if peer == from {
                        let result =
                            result.and_then(|r| match r.outputs.iter().find(|f| !self.work.cas.has(&f.digest)) {
                                Some(missing) => Err(format!("output {} did not arrive", missing.path)),
                                None => Ok(r),
                            });
                        let _ = reply.send(result);
                    }
                }
            }
        }
    }

    fn forward_to_probe(&mut self, probe: u64, event: netbench::ProbeEvent) {
        if let Some(tx) = self.bench.probes.get(&probe) {
            if tx.send(event).is_err() {
                self.bench.probes.remove(&probe);
            }
        }
    }

    fn on_roster(&mut self, ctx: &mut Context<Self>, entries: Vec<RosterEntry>) {
        let Some(mesh) = self.mesh.clone() else { return };
        let store = self.store.clone();
        ctx.spawn(
            async move {
                store
                    .run(move |c| {
                        let mut fresh = Vec::new();
                        for e in entries {
                            match roster::save_entry(c, &mesh, &e) {
                                Ok(true) => fresh.push(e),
                                Ok(false) => {}
                                Err(err) => log::warn!("roster entry refused: {err}"),
                            }
                        }
                        Ok(fresh)
                    })
                    .await
            }
            .into_actor(self)
            .map(|fresh, act, _| {
                for e in fresh.unwrap_or_default() {
                    if e.node_id == act.me {
                        act.role = e.role;
                        continue;
                    }
                    let revoked = e.revoked;
                    let id = e.node_id.clone();
                    match act.peers.get_mut(&id) {
                        Some(p) => p.entry = e,
                        None => {
                            let address = e.address.clone();
                            act.peers.insert(id.clone(), Peer::new(e, address));
                        }
                    }
                    if revoked {
                        if let Some(link) = act.peers.get(&id).and_then(|p| p.link).and_then(|l| act.links.get(&l)) {
                            link.addr.do_send(bridge::Close);
                        }
                    }
                }
            }),
        );
    }

    /// Streams a blob to a peer in chunks.
    fn send_blob(&self, link_id: u64, digest: &str) {
        let Ok(bytes) = self.work.cas.read(digest) else {
            log::warn!("a peer asked for blob {digest}, which this node does not hold");
            return;
        };
        let total = bytes.len() as u64;
        if bytes.is_empty() {
            self.send(
                link_id,
                MeshMessage::BlobChunk(wire::BlobChunk { digest: digest.to_string(), offset: 0, total, data: vec![] }),
            );
        }
        for (i, part) in bytes.chunks(CHUNK).enumerate() {
            let chunk =
                wire::BlobChunk { digest: digest.to_string(), offset: (i * CHUNK) as u64, total, data: part.to_vec() };
            self.send(link_id, MeshMessage::BlobChunk(chunk));
        }
    }

    fn on_chunk(&mut self, ctx: &mut Context<Self>, chunk: wire::BlobChunk) {
        if self.work.cas.has(&chunk.digest) {
            return;
        }
        let buf = self.work.receiving.entry(chunk.digest.clone()).or_default();
        if chunk.offset != buf.len() as u64 || chunk.total > (1 << 32) {
            log::warn!("blob {}: chunk out of order; dropped", chunk.digest);
            self.work.receiving.remove(&chunk.digest);
            return;
        }
        buf.extend_from_slice(&chunk.data);
        if (buf.len() as u64) < chunk.total {
            return;
        }
        let bytes = self.work.receiving.remove(&chunk.digest).unwrap_or_default();
        if let Err(e) = self.work.cas.put_verified(&chunk.digest, &bytes) {
            log::warn!("blob {}: {e}", chunk.digest);
        }
        self.start_ready_tasks(ctx);
    }

    fn on_task_request(&mut self, ctx: &mut Context<Self>, link_id: u64, from: NodeId, req: wire::TaskRequest) {
        let minute = {
            use chrono::Timelike;
            let now = chrono::Local::now();
            now.hour() * 60 + now.minute()
        };
        let refusal = if !self.work.accept {
            Some("this node does not accept remote builds (scheduling.accept_remote_builds)".to_string())
        } else if self.work.local_only_hours.iter().any(|w| w.contains(minute)) {
            Some("this node runs only its own builds at this hour (local_only_hours)".to_string())
        } else {
            None
        };
        if let Some(why) = refusal {
            return self.send(link_id, MeshMessage::TaskDone { task_id: req.task_id, result: Err(why) });
        }
        let digests: Vec<String> = req
            .task
            .files
            .iter()
            .map(|f| f.digest.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let missing = self.work.cas.missing(&digests);
        self.work.waiting.push((link_id, from, req));
        if missing.is_empty() {
            self.start_ready_tasks(ctx);
        } else {
            self.send(link_id, MeshMessage::BlobWant { digests: missing });
        }
    }

    /// Starts every waiting task whose blobs are all here.
    fn start_ready_tasks(&mut self, ctx: &mut Context<Self>) {
        let cas = self.work.cas.clone();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.work.waiting)
            .into_iter()
            .partition(|(_, _, r)| r.task.files.iter().all(|f| cas.has(&f.digest)));
        self.work.waiting = waiting;
        for (link_id, from, req) in ready {
            let (node, sandboxes, cas, ledger) =
                (self.node.clone(), self.work.sandboxes.clone(), cas.clone(), self.ledger.clone());
            let task_id = req.task_id;
            let fut = async move {
                let lease_req = |amount| crate::wire::LeaseRequest {
                    amount,
                    holder: format!("{}:{}", from, req.task.build_id),
                    ttl_ms: 3_600_000,
                    epoch: req.epoch,
                };
                let cpu = node.lease("cpu", lease_req(req.cores)).await.map_err(|e| format!("busy: {e}"))?;
                let mem = match req.memory_bytes {
                    Some(b) => match node.lease("memory", lease_req(b)).await {
                        Ok(l) => Some(l),
                        Err(e) => {
                            let _ = node.release("cpu", &cpu.id).await;
                            return Err(format!("busy: {e}"));
                        }
                    },
                    None => None,
                };
                let _ = ledger.append(LedgerEntryType::ResourceAllocated, serde_json::json!({ "allocation_id": cpu.id, "build_id": req.task.build_id, "package": req.task.package, "for_node": from, "cores": req.cores })).await;
                let task = req.task.clone();
                let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let result =
                    actix_rt::task::spawn_blocking(move || crate::build::exec::run(&cas, &sandboxes, &task, &flag))
                        .await;
                let _ = node.release("cpu", &cpu.id).await;
                if let Some(m) = mem {
                    let _ = node.release("memory", &m.id).await;
                }
                let _ = ledger
                    .append(
                        LedgerEntryType::ResourceReleased,
                        serde_json::json!({ "allocation_id": cpu.id, "build_id": req.task.build_id }),
                    )
                    .await;
                result.map_err(|e| format!("the task panicked: {e}"))
            };
            ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
                if let Ok(r) = &result {
                    for f in &r.outputs {
                        act.send_blob(link_id, &f.digest);
                    }
                }
                act.send(link_id, MeshMessage::TaskDone { task_id, result });
                // The freed core is news now: a requester waiting for it should not wait for
                // the next tick's advert.
                act.advertise(ctx, false);
            }));
        }
    }

    async fn all_entries(store: &StoreHandle) -> Vec<RosterEntry> {
        store
            .run(|c| roster::load_roster(c).map_err(store_error))
            .await
            .map(|r| r.into_iter().map(|(e, _)| e).collect())
            .unwrap_or_default()
    }
}

/// A node that could coordinate, as this node sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: NodeId,
    pub weight: f64,
    pub role: Role,
    /// This node itself, or a peer heard from within [`OFFLINE_AFTER`].
    pub live: bool,
}

/// DESIGN.md's rule: among live nodes that are not observers, the highest priority weight
/// coordinates; ties go to the smallest node id. Every node applies it to its own live view,
/// so nodes that see the same members choose the same coordinator. `None` only when every
/// live node is an observer.
pub fn choose_coordinator(candidates: &[Candidate]) -> Option<NodeId> {
    candidates
        .iter()
        .filter(|c| c.live && c.role != Role::Observer)
        .max_by(|a, b| a.weight.total_cmp(&b.weight).then_with(|| b.id.cmp(&a.id)))
        .map(|c| c.id.clone())
}

/// The view after a membership change: a different coordinator gets an epoch above any this
/// node has seen, so epochs only grow; the same coordinator keeps its epoch.
pub fn next_view(current: &CoordinatorView, highest_seen: u64, candidates: &[Candidate]) -> CoordinatorView {
    let chosen = choose_coordinator(candidates).unwrap_or_else(|| current.coordinator.clone());
    if chosen == current.coordinator {
        current.clone()
    } else {
        CoordinatorView { coordinator: chosen, epoch: highest_seen.max(current.epoch) + 1 }
    }
}

/// Takes a peer's higher epoch when it agrees on the coordinator, so all nodes converge on
/// one (coordinator, epoch) pair once they see the same members.
pub fn adopt_epoch(mine: &CoordinatorView, theirs: &CoordinatorView) -> CoordinatorView {
    if theirs.coordinator == mine.coordinator && theirs.epoch > mine.epoch {
        theirs.clone()
    } else {
        mine.clone()
    }
}

fn store_error(e: RosterError) -> crate::store::StoreError {
    match e {
        RosterError::Store(s) => s,
        other => crate::store::StoreError::Corrupt(other.to_string()),
    }
}

/// What of a status is worth re-advertising (not the clock-driven fields).
fn advert_fingerprint(s: &NodeStatus) -> String {
    let caps: Vec<_> = s.resource_status.iter().map(|r| (&r.key, r.capacity, r.available)).collect();
    let b = &s.benchmarks;
    format!(
        "{}|{}|{:?}|{}|{}|{}|{:?}",
        s.status,
        s.resources.fingerprint(),
        caps,
        s.name,
        b.running,
        b.measured_at_ms,
        b.next_due_ms
    )
}

/// Splits entries into batches that each fit one frame.
fn split_batch(entries: Vec<wire::LedgerEntry>) -> Vec<Vec<wire::LedgerEntry>> {
    let budget = noise::MAX_PLAINTEXT - 4096;
    let mut batches = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for e in entries {
        let len = rmp_serde::to_vec_named(&e).map(|v| v.len()).unwrap_or(budget);
        if !current.is_empty() && size + len > budget {
            batches.push(std::mem::take(&mut current));
            size = 0;
        }
        size += len;
        current.push(e);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

impl Actor for MeshActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(TICK, |act, ctx| act.tick(ctx));
    }

    fn stopping(&mut self, _: &mut Context<Self>) -> Running {
        for link in self.links.values() {
            link.addr.do_send(bridge::Close);
        }
        Running::Stop
    }
}

/// Starts a bridge on a fresh socket.
#[derive(Message)]
#[rtype(result = "Option<Addr<BridgeActor>>")]
pub struct Attach {
    pub outgoing: UnboundedSender<Outgoing>,
    pub initiator: bool,
}

impl Handler<Attach> for MeshActor {
    type Result = Option<Addr<BridgeActor>>;

    fn handle(&mut self, msg: Attach, ctx: &mut Context<Self>) -> Self::Result {
        let mesh = self.mesh.as_ref()?;
        let prologue = noise::prologue(&mesh.mesh_id);
        let handshake = if msg.initiator {
            noise::Handshake::initiator(&self.noise_private, &prologue)
        } else {
            noise::Handshake::responder(&self.noise_private, &prologue)
        };
        let handshake = handshake.map_err(|e| log::error!("noise: {e}")).ok()?;
        let id = self.next_link;
        self.next_link += 1;
        let addr = BridgeActor::new(id, ctx.address(), self.me.clone(), handshake, msg.initiator, msg.outgoing).start();
        self.links.insert(id, Link { addr: addr.clone(), initiator: msg.initiator, peer: None });
        Some(addr)
    }
}

/// A bridge finished its handshake; the mesh decides whether the peer may link.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LinkAuthenticated {
    pub bridge: Addr<BridgeActor>,
    pub link_id: u64,
    pub remote_static: [u8; 32],
    pub initiator: bool,
}

impl Handler<LinkAuthenticated> for MeshActor {
    type Result = ();

    fn handle(&mut self, msg: LinkAuthenticated, ctx: &mut Context<Self>) {
        let remote = wire::hex(&msg.remote_static);
        let found = self
            .peers
            .iter()
            .find(|(_, p)| p.entry.noise_public == remote && !p.entry.revoked)
            .map(|(id, _)| id.clone());
        let Some(peer_id) = found else {
            log::warn!("link {}: refused a node that is not in the roster", msg.link_id);
            return msg.bridge.do_send(bridge::Accepted { peer: None });
        };
        // Two nodes dialling each other at once: keep the link the smaller node id opened.
        let initiator_of = |initiator: bool| if initiator { self.me.clone() } else { peer_id.clone() };
        let new_initiator = initiator_of(msg.initiator);
        let existing = self.peers.get(&peer_id).and_then(|p| p.link).filter(|l| *l != msg.link_id);
        if let Some(old_id) = existing {
            let old_initiator = self.links.get(&old_id).map(|l| initiator_of(l.initiator));
            let keep_new = match old_initiator {
                Some(old) if old != new_initiator => new_initiator < old,
                _ => true,
            };
            if !keep_new {
                return msg.bridge.do_send(bridge::Accepted { peer: None });
            }
            if let Some(old) = self.links.get_mut(&old_id) {
                old.peer = None;
                old.addr.do_send(bridge::Close);
            }
        }
        if let Some(link) = self.links.get_mut(&msg.link_id) {
            link.peer = Some(peer_id.clone());
        }
        let Some(p) = self.peers.get_mut(&peer_id) else { return };
        p.link = Some(msg.link_id);
        p.dialing = false;
        p.backoff = MIN_BACKOFF;
        p.last_seen = Some(Instant::now());
        p.last_seen_ms = wire::now_ms();
        msg.bridge.do_send(bridge::Accepted { peer: Some(peer_id.clone()) });
        log::info!("link {} to {peer_id} is up", msg.link_id);
        let hello = Hello {
            node_id: self.me.clone(),
            name: self.name.clone(),
            address: self.address.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
        };
        self.send(msg.link_id, MeshMessage::Hello(hello));
        let (store, link_id) = (self.store.clone(), msg.link_id);
        ctx.spawn(async move { MeshActor::all_entries(&store).await }.into_actor(self).map(move |entries, act, _| {
            act.send(link_id, MeshMessage::Roster { entries });
        }));
        self.advertise(ctx, true);
        self.exchange_heads(ctx);
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
        if self.links.get(&msg.link_id).and_then(|l| l.peer.as_ref()) == Some(&msg.from) {
            self.on_message(ctx, msg.link_id, msg.from, msg.body);
        }
    }
}

/// A bridge stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LinkClosed {
    pub link_id: u64,
}

impl Handler<LinkClosed> for MeshActor {
    type Result = ();

    fn handle(&mut self, msg: LinkClosed, _: &mut Context<Self>) {
        let Some(link) = self.links.remove(&msg.link_id) else { return };
        if let Some(peer_id) = link.peer {
            if let Some(p) = self.peers.get_mut(&peer_id) {
                if p.link == Some(msg.link_id) {
                    p.link = None;
                    p.dialing = false;
                    log::info!("link {} to {peer_id} closed", msg.link_id);
                    let lost: Vec<u64> =
                        self.work.sent.iter().filter(|(_, (peer, _))| *peer == peer_id).map(|(id, _)| *id).collect();
                    for id in lost {
                        if let Some((_, reply)) = self.work.sent.remove(&id) {
                            let _ = reply.send(Err(format!("lost node {peer_id}")));
                        }
                    }
                }
            }
        }
    }
}

/// A dial attempt failed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DialFailed {
    pub url: String,
}

impl Handler<DialFailed> for MeshActor {
    type Result = ();

    fn handle(&mut self, msg: DialFailed, _: &mut Context<Self>) {
        for p in self.peers.values_mut().filter(|p| p.address == msg.url) {
            p.dialing = false;
        }
    }
}

/// Sets how links are opened (the web layer's WebSocket client).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetDialer {
    pub dialer: Dialer,
}

impl Handler<SetDialer> for MeshActor {
    type Result = ();

    fn handle(&mut self, msg: SetDialer, _: &mut Context<Self>) {
        self.dialer = Some(msg.dialer);
    }
}

/// The peers as the pool shows them.
#[derive(Message)]
#[rtype(result = "(MeshView, Vec<PeerView>)")]
pub struct GetPeers;

impl Handler<GetPeers> for MeshActor {
    type Result = MessageResult<GetPeers>;

    fn handle(&mut self, _: GetPeers, _: &mut Context<Self>) -> Self::Result {
        let peers = self
            .peers
            .iter()
            .filter(|(_, p)| !p.entry.revoked)
            .map(|(id, p)| PeerView {
                node_id: id.clone(),
                name: p.advert.as_ref().map_or(p.entry.name.clone(), |a| a.name.clone()),
                address: p.address.clone(),
                role: p.entry.role,
                status: p.status().into(),
                last_seen_ms: p.last_seen_ms,
                latency_ms: p.rtt_ms,
                advert: p.advert.clone(),
            })
            .collect();
        MessageResult((self.mesh_view(), peers))
    }
}

impl MeshActor {
    fn mesh_view(&self) -> MeshView {
        MeshView {
            mesh_id: self.mesh.as_ref().map(|m| m.mesh_id.clone()),
            node_id: self.me.clone(),
            role: self.role,
            mesh_admin: self.mesh_key.is_some(),
            coordinator: self.view.coordinator.clone(),
            epoch: self.view.epoch,
            links: self.links.values().filter(|l| l.peer.is_some()).count(),
        }
    }
}

/// Creates a join token (mesh admin only).
#[derive(Message)]
#[rtype(result = "Result<(String, TokenInfo), RosterError>")]
pub struct CreateToken {
    pub role: Role,
    pub ttl_ms: u64,
    pub created_by: String,
}

impl Handler<CreateToken> for MeshActor {
    type Result = ResponseFuture<Result<(String, TokenInfo), RosterError>>;

    fn handle(&mut self, msg: CreateToken, _: &mut Context<Self>) -> Self::Result {
        let (mesh, admin, store) = (self.mesh.clone(), self.mesh_key.is_some(), self.store.clone());
        Box::pin(async move {
            let mesh = mesh.filter(|_| admin).ok_or(RosterError::NotMeshAdmin)?;
            store
                .run(move |c| {
                    roster::create_token(c, &mesh, msg.role, msg.ttl_ms, &msg.created_by).map_err(store_error)
                })
                .await
                .map_err(RosterError::from)
        })
    }
}

/// Admits a node that presents a valid token (mesh admin only).
#[derive(Message)]
#[rtype(result = "Result<JoinResponse, RosterError>")]
pub struct Admit {
    pub request: JoinRequest,
}

impl Handler<Admit> for MeshActor {
    type Result = ResponseActFuture<Self, Result<JoinResponse, RosterError>>;

    fn handle(&mut self, msg: Admit, _: &mut Context<Self>) -> Self::Result {
        let req = msg.request;
        let (store, ledger) = (self.store.clone(), self.ledger.clone());
        let mesh = self.mesh.clone().filter(|_| self.mesh_key.is_some());
        let unsigned = self.entry_for(
            req.node_id.clone(),
            req.name.clone(),
            Role::Builder,
            req.ed_public.clone(),
            req.noise_public.clone(),
            req.address.clone(),
        );
        let me = self.me.clone();
        Box::pin(
            async move {
                let mesh = mesh.ok_or(RosterError::NotMeshAdmin)?;
                let result: Result<Role, RosterError> = if !req.verify() {
                    Err(RosterError::BadSignature(req.node_id.to_string()))
                } else {
                    let (token, id, m) = (req.token.clone(), req.node_id.clone(), mesh.clone());
                    store.run(move |c| roster::redeem_token(c, &m, &token, &id).map_err(store_error)).await.map_err(|e| match e {
                        crate::store::StoreError::Corrupt(text) => RosterError::Io(text),
                        other => RosterError::Store(other),
                    })
                };
                match result {
                    Ok(role) => Ok((mesh, role)),
                    Err(e) => {
                        let data = serde_json::json!({ "node_id": req.node_id, "name": req.name, "address": req.address, "reason": e.to_string() });
                        if let Err(le) = ledger.append(LedgerEntryType::JoinRefused, data).await {
                            log::warn!("recording a refused join: {le}");
                        }
                        Err(e)
                    }
                }
            }
            .into_actor(self)
            .then(move |checked, act, _| {
                let signed = checked.and_then(|(mesh, role)| {
                    let key = act.mesh_key.as_ref().ok_or(RosterError::NotMeshAdmin)?;
                    let mut entry = unsigned;
                    entry.role = role;
                    key.sign(&mut entry);
                    Ok((mesh, entry))
                });
                let (store, ledger) = (act.store.clone(), act.ledger.clone());
                fut::wrap_future(async move {
                    let (mesh, entry) = signed?;
                    let (m, e) = (mesh.clone(), entry.clone());
                    store.run(move |c| roster::save_entry(c, &m, &e).map(|_| ()).map_err(store_error)).await?;
                    let data = serde_json::json!({ "node_id": entry.node_id, "node_name": entry.name, "role": entry.role, "address": entry.address, "admitted_by": me });
                    ledger.append(LedgerEntryType::NodeJoined, data).await?;
                    let roster = MeshActor::all_entries(&store).await;
                    Ok((JoinResponse { mesh, roster }, entry))
                })
            })
            .map(|result: Result<(JoinResponse, RosterEntry), RosterError>, act, _| {
                let (response, entry) = result?;
                let id = entry.node_id.clone();
                let address = entry.address.clone();
                act.peers.insert(id, Peer::new(entry.clone(), address));
                act.broadcast(MeshMessage::Roster { entries: vec![entry] });
                Ok(response)
            }),
        )
    }
}

/// Builds this node's signed request to join with a token.
#[derive(Message)]
#[rtype(result = "JoinRequest")]
pub struct MakeJoinRequest {
    pub token: String,
}

impl Handler<MakeJoinRequest> for MeshActor {
    type Result = MessageResult<MakeJoinRequest>;

    fn handle(&mut self, msg: MakeJoinRequest, _: &mut Context<Self>) -> Self::Result {
        let mut req = JoinRequest {
            token: msg.token,
            node_id: self.me.clone(),
            name: self.name.clone(),
            address: self.address.clone(),
            ed_public: wire::hex(&self.identity.public_key()),
            noise_public: wire::hex(&self.noise_public),
            signature: String::new(),
        };
        req.signature = wire::hex(&self.identity.sign(&req.signing_bytes()));
        MessageResult(req)
    }
}

/// Takes the admin's answer to our join: checks it is the mesh the token pinned, then adopts
/// the mesh and its roster.
#[derive(Message)]
#[rtype(result = "Result<MeshInfo, RosterError>")]
pub struct AcceptJoin {
    pub token: String,
    pub response: JoinResponse,
}

impl Handler<AcceptJoin> for MeshActor {
    type Result = ResponseActFuture<Self, Result<MeshInfo, RosterError>>;

    fn handle(&mut self, msg: AcceptJoin, _: &mut Context<Self>) -> Self::Result {
        let (store, data_dir, me) = (self.store.clone(), self.data_dir.clone(), self.me.clone());
        Box::pin(
            async move {
                let token = roster::JoinToken::parse(&msg.token)?;
                let mesh = msg.response.mesh;
                let key = mesh.key_bytes().ok_or(RosterError::BadSignature("mesh key".into()))?;
                if MeshInfo::from_public_key(&key) != mesh || mesh.mesh_id != token.mesh_id {
                    return Err(RosterError::WrongMesh { pinned: token.mesh_id, actual: mesh.mesh_id });
                }
                let (m, entries) = (mesh.clone(), msg.response.roster);
                store
                    .run(move |c| {
                        roster::save_mesh(c, &m).map_err(store_error)?;
                        for e in &entries {
                            roster::save_entry(c, &m, e).map_err(store_error)?;
                        }
                        Ok(())
                    })
                    .await?;
                // Our own mesh key, if we had made one, belongs to a mesh we no longer are in.
                let _ = std::fs::remove_file(data_dir.join(roster::MESH_KEY_FILE));
                log::info!("{me} joined mesh {}", mesh.mesh_id);
                Ok(mesh)
            }
            .into_actor(self)
            .map(|result, act, _| {
                if let Ok(mesh) = &result {
                    act.mesh = Some(mesh.clone());
                    act.mesh_key = None;
                    act.peers.clear();
                    for link in act.links.values() {
                        link.addr.do_send(bridge::Close);
                    }
                }
                result
            }),
        )
    }
}

/// Forces a ledger exchange with every peer now; returns how many were asked.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct SyncNow;

impl Handler<SyncNow> for MeshActor {
    type Result = usize;

    fn handle(&mut self, _: SyncNow, ctx: &mut Context<Self>) -> usize {
        self.exchange_heads(ctx);
        self.peers.values().filter(|p| p.link.is_some()).count()
    }
}

/// Leaves the mesh: tells every peer, records `NodeLeft`, and becomes a mesh of one again.
#[derive(Message)]
#[rtype(result = "Result<(), RosterError>")]
pub struct Leave;

impl Handler<Leave> for MeshActor {
    type Result = ResponseActFuture<Self, Result<(), RosterError>>;

    fn handle(&mut self, _: Leave, _: &mut Context<Self>) -> Self::Result {
        let others = self.peers.values().filter(|p| !p.entry.revoked).count();
        if self.mesh_key.is_some() && others > 0 {
            return Box::pin(fut::ready(Err(RosterError::Io(
                "this node holds the mesh key and other nodes depend on it; it cannot leave its own mesh".into(),
            ))));
        }
        let (ledger, store, data_dir, me) =
            (self.ledger.clone(), self.store.clone(), self.data_dir.clone(), self.me.clone());
        let mesh_id = self.mesh.as_ref().map(|m| m.mesh_id.clone());
        Box::pin(
            async move {
                let left = ledger
                    .append(
                        LedgerEntryType::NodeLeft,
                        serde_json::json!({ "node_id": me, "mesh_id": mesh_id, "reason": "left" }),
                    )
                    .await?;
                // Our recent chain, so peers get the NodeLeft entry before the links close
                // (entries they hold already are skipped as duplicates).
                let recent = ledger.entries_after(me, left.seq.saturating_sub(SYNC_BATCH as u64), SYNC_BATCH).await?;
                let key = MeshKey::create(&data_dir)?;
                let info = key.info();
                let saved = info.clone();
                store.run(move |c| roster::save_mesh(c, &saved).map_err(store_error)).await?;
                Ok((key, info, recent))
            }
            .into_actor(self)
            .map(|result: Result<(MeshKey, MeshInfo, Vec<wire::LedgerEntry>), RosterError>, act, _| {
                let (key, info, recent) = result?;
                for entries in split_batch(recent) {
                    act.broadcast(MeshMessage::LedgerEntries { entries });
                }
                act.broadcast(MeshMessage::Leave { node_id: act.me.clone() });
                for link in act.links.values() {
                    link.addr.do_send(bridge::Close);
                }
                act.peers.clear();
                act.mesh = Some(info);
                act.mesh_key = Some(key);
                act.role = Role::Admin;
                Ok(())
            }),
        )
    }
}

/// Reloads the roster table into the peer table.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReloadRoster;

impl Handler<ReloadRoster> for MeshActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: ReloadRoster, _: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move { store.run(|c| roster::load_roster(c).map_err(store_error)).await }.into_actor(self).map(
            |roster, act, _| {
                for (entry, address) in roster.unwrap_or_default() {
                    if entry.node_id == act.me {
                        act.role = entry.role;
                        continue;
                    }
                    act.peers.entry(entry.node_id.clone()).or_insert_with(|| Peer::new(entry, address));
                }
            },
        ))
    }
}

/// Runs a task on a peer and waits for its result (outputs land in the local CAS).
#[derive(Message)]
#[rtype(result = "Result<TaskResult, String>")]
pub struct RunRemote {
    pub peer: NodeId,
    pub task: Task,
    pub cores: u64,
    pub memory_bytes: Option<u64>,
    pub volume: Option<String>,
}

impl Handler<RunRemote> for MeshActor {
    type Result = ResponseFuture<Result<TaskResult, String>>;

    fn handle(&mut self, msg: RunRemote, _: &mut Context<Self>) -> Self::Result {
        let link = self.peers.get(&msg.peer).and_then(|p| p.link.filter(|_| p.online()));
        let Some(link_id) = link else {
            let peer = msg.peer;
            return Box::pin(async move { Err(format!("lost node {peer}")) });
        };
        let task_id = self.work.next_task;
        self.work.next_task += 1;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.work.sent.insert(task_id, (msg.peer.clone(), tx));
        let req = wire::TaskRequest {
            task_id,
            task: msg.task,
            cores: msg.cores,
            memory_bytes: msg.memory_bytes,
            epoch: self.view.epoch,
            volume: msg.volume,
        };
        self.send(link_id, MeshMessage::TaskRequest(Box::new(req)));
        let peer = msg.peer;
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err(format!("lost node {peer}"))) })
    }
}

/// Measures the link to a peer (see [`netbench`]).
#[derive(Message)]
#[rtype(result = "Result<crate::bench::NetworkBenchmarkResult, String>")]
pub struct NetworkTest {
    pub peer: NodeId,
    pub options: netbench::NetworkOptions,
}

impl Handler<NetworkTest> for MeshActor {
    type Result = ResponseActFuture<Self, Result<crate::bench::NetworkBenchmarkResult, String>>;

    fn handle(&mut self, msg: NetworkTest, _: &mut Context<Self>) -> Self::Result {
        let target = self.peers.get(&msg.peer).and_then(|p| {
            let link = p.link.filter(|_| p.online()).and_then(|l| self.links.get(&l))?;
            Some((link.addr.clone(), p.advert.as_ref().map_or(p.entry.name.clone(), |a| a.name.clone())))
        });
        let Some((link, name)) = target else {
            let why = format!("node {} is not online", msg.peer);
            return Box::pin(async move { Err(why) }.into_actor(self));
        };
        let probe = rand::random::<u64>();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.bench.probes.insert(probe, tx);
        let fut = netbench::measure(link, rx, probe, (msg.peer.to_string(), name), msg.options);
        Box::pin(fut.into_actor(self).map(move |result, act, _| {
            act.bench.probes.remove(&probe);
            result
        }))
    }
}

/// Where this node's turns of the benchmark schedule go.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetBenchmarkSink {
    pub sink: UnboundedSender<()>,
}

impl Handler<SetBenchmarkSink> for MeshActor {
    type Result = ();

    fn handle(&mut self, msg: SetBenchmarkSink, _: &mut Context<Self>) {
        self.bench.sink = Some(msg.sink);
    }
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

    /// Starts a bridge for a connected socket; `None` when this node is in no mesh.
    pub async fn attach(&self, outgoing: UnboundedSender<Outgoing>, initiator: bool) -> Option<Addr<BridgeActor>> {
        self.addr.send(Attach { outgoing, initiator }).await.ok().flatten()
    }

    pub fn dial_failed(&self, url: String) {
        self.addr.do_send(DialFailed { url });
    }

    pub fn set_dialer(&self, dialer: Dialer) {
        self.addr.do_send(SetDialer { dialer });
    }

    pub async fn peers(&self) -> Option<(MeshView, Vec<PeerView>)> {
        self.addr.send(GetPeers).await.ok()
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

    pub async fn admit(&self, request: JoinRequest) -> Result<JoinResponse, RosterError> {
        self.addr.send(Admit { request }).await.map_err(|_| RosterError::Io("mesh actor stopped".into()))?
    }

    pub async fn join_request(&self, token: &str) -> Option<JoinRequest> {
        self.addr.send(MakeJoinRequest { token: token.to_string() }).await.ok()
    }

    pub async fn accept_join(&self, token: &str, response: JoinResponse) -> Result<MeshInfo, RosterError> {
        let info = self
            .addr
            .send(AcceptJoin { token: token.to_string(), response })
            .await
            .map_err(|_| RosterError::Io("mesh actor stopped".into()))??;
        let _ = self.addr.send(ReloadRoster).await;
        Ok(info)
    }

    pub async fn sync_now(&self) -> usize {
        self.addr.send(SyncNow).await.unwrap_or(0)
    }

    /// Runs a package on a peer.
    pub async fn run_remote(
        &self,
        peer: NodeId,
        task: Task,
        cores: u64,
        memory_bytes: Option<u64>,
        volume: Option<String>,
    ) -> Result<TaskResult, String> {
        self.addr
            .send(RunRemote { peer, task, cores, memory_bytes, volume })
            .await
            .unwrap_or_else(|_| Err("the mesh actor stopped".into()))
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId::parse(&format!("{n:016x}")).expect("id")
    }

    fn cand(n: u8, weight: f64, role: Role, live: bool) -> Candidate {
        Candidate { id: id(n), weight, role, live }
    }

    #[test]
    fn highest_weight_then_smallest_id_among_live_non_observers() {
        let all =
            [cand(3, 1.0, Role::Builder, true), cand(1, 1.0, Role::Builder, true), cand(2, 1.0, Role::Admin, true)];
        assert_eq!(choose_coordinator(&all), Some(id(1)));
        let weighted = [cand(3, 2.0, Role::Builder, true), cand(1, 1.0, Role::Builder, true)];
        assert_eq!(choose_coordinator(&weighted), Some(id(3)));
        let dead = [cand(1, 5.0, Role::Builder, false), cand(2, 1.0, Role::Builder, true)];
        assert_eq!(choose_coordinator(&dead), Some(id(2)));
        let observer = [cand(1, 9.0, Role::Observer, true), cand(2, 1.0, Role::Builder, true)];
        assert_eq!(choose_coordinator(&observer), Some(id(2)));
        assert_eq!(choose_coordinator(&[cand(1, 1.0, Role::Observer, true)]), None);
    }

    #[test]
    fn the_same_view_gives_the_same_choice_in_any_order() {
        let mut list = vec![
            cand(9, 1.0, Role::Builder, true),
            cand(4, 1.0, Role::Builder, true),
            cand(7, 1.0, Role::Builder, true),
        ];
        let first = choose_coordinator(&list);
        list.reverse();
        assert_eq!(choose_coordinator(&list), first);
    }

    #[test]
    fn epochs_only_grow_and_converge() {
        let start = CoordinatorView { coordinator: id(1), epoch: 3 };
        let same = next_view(&start, 3, &[cand(1, 1.0, Role::Builder, true), cand(2, 1.0, Role::Builder, true)]);
        assert_eq!(same, start, "no change, no new epoch");
        let failover = next_view(&start, 7, &[cand(1, 1.0, Role::Builder, false), cand(2, 1.0, Role::Builder, true)]);
        assert_eq!(failover, CoordinatorView { coordinator: id(2), epoch: 8 });
        let back = next_view(&failover, 8, &[cand(1, 1.0, Role::Builder, true), cand(2, 1.0, Role::Builder, true)]);
        assert_eq!(back.coordinator, id(1));
        assert!(back.epoch > failover.epoch);
        // Two nodes that chose the same coordinator at different epochs end on the higher one.
        let mine = CoordinatorView { coordinator: id(1), epoch: 9 };
        let theirs = CoordinatorView { coordinator: id(1), epoch: 11 };
        assert_eq!(adopt_epoch(&mine, &theirs), theirs);
        assert_eq!(adopt_epoch(&theirs, &mine), theirs);
        let other = CoordinatorView { coordinator: id(2), epoch: 50 };
        assert_eq!(adopt_epoch(&mine, &other), mine, "a different choice is not adopted");
    }

    #[test]
    fn a_split_mesh_has_at_most_one_coordinator_per_side() {
        // Side A sees 1 and 2, side B sees 3 and 4; each side agrees internally.
        let side_a = [
            cand(1, 1.0, Role::Builder, true),
            cand(2, 1.0, Role::Builder, true),
            cand(3, 1.0, Role::Builder, false),
            cand(4, 1.0, Role::Builder, false),
        ];
        let side_b = [
            cand(1, 1.0, Role::Builder, false),
            cand(2, 1.0, Role::Builder, false),
            cand(3, 1.0, Role::Builder, true),
            cand(4, 1.0, Role::Builder, true),
        ];
        assert_eq!(choose_coordinator(&side_a), Some(id(1)));
        assert_eq!(choose_coordinator(&side_b), Some(id(3)));
        let healed = [
            cand(1, 1.0, Role::Builder, true),
            cand(2, 1.0, Role::Builder, true),
            cand(3, 1.0, Role::Builder, true),
            cand(4, 1.0, Role::Builder, true),
        ];
        assert_eq!(choose_coordinator(&healed), Some(id(1)));
    }

    #[test]
    fn join_requests_must_be_signed_by_the_joining_key() {
        let identity = Identity::from_secret(&[6; 32]);
        let mut req = JoinRequest {
            token: "bnj_x".into(),
            node_id: identity.node_id.clone(),
            name: "n".into(),
            address: "http://127.0.0.1:1".into(),
            ed_public: wire::hex(&identity.public_key()),
            noise_public: wire::hex(&[1; 32]),
            signature: String::new(),
        };
        req.signature = wire::hex(&identity.sign(&req.signing_bytes()));
        assert!(req.verify());
        let mut stolen = req.clone();
        stolen.noise_public = wire::hex(&[2; 32]);
        assert!(!stolen.verify(), "changing the link key breaks the signature");
    }

    #[test]
    fn batches_fit_in_a_frame() {
        let entry = |seq: u64| wire::LedgerEntry {
            origin: id(1),
            seq,
            prev_hash: "0".repeat(64),
            hlc: wire::Hlc { wall_ms: 1, logical: 0 },
            entry_type: LedgerEntryType::KeyCreated,
            data: serde_json::json!({ "pad": "x".repeat(2000) }),
            hash: "0".repeat(64),
            signature: "0".repeat(128),
        };
        let batches = split_batch((1..=100).map(entry).collect());
        assert!(batches.len() > 1);
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 100);
        for b in &batches {
            let env = wire::Envelope {
                v: 1,
                id: 1,
                from: id(1),
                to: None,
                body: MeshMessage::LedgerEntries { entries: b.clone() },
            };
            assert!(wire::encode(&env).expect("encodes").len() <= noise::MAX_PLAINTEXT);
        }
    }
}
