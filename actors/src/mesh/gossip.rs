//! Liveness by gossip: SWIM membership and failure detection (the `foca` crate, sans-IO) carried
//! over the mesh's own Noise links as [`MeshMessage::Swim`].
//!
//! Why: with a heartbeat on every link, an idle node sends N messages a second and a silent peer
//! is noticed only by the nodes linked to it; at 200 nodes that is tens of KB/s per node and the
//! cost grows with N. SWIM probes one member per period (asking a few others to probe it
//! indirectly when it does not answer), suspects it, lets it refute, and declares it down
//! after a fixed suspicion time; the verdict rides on the messages that go out anyway to random
//! members, retransmitted often enough that every member hears it within a second or two, and
//! the bytes per node do not grow with N. ARCHITECTURE.md ("Scale") has the measured curve.
//!
//! Identities are `(node id, generation)`. A node starts with the wall clock in ms as its
//! generation, so a restarted node is newer than anything said about its previous run; a node
//! the others declared down (a pause, a partition) takes the next generation and is up again.
//! A SWIM message is accepted only from the link of the node it names as its sender, or passed
//! on by one peer from a member it has a link to (a node not yet linked to every other — at
//! start, in a large mesh — still probes everyone; unanswered probes through a missing link
//! would otherwise declare live nodes down). Only roster members have links: gossip adds no one
//! to the mesh. Members are trusted as they are for everything else (a member could lie about
//! another's liveness; it cannot make anyone accept a node outside the roster).

use std::num::{NonZeroU8, NonZeroUsize};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::{Buf, BufMut};
use foca::{AccumulatingRuntime, Codec, Config, Foca, Header, Member, NoCustomBroadcast, OwnedNotification};
use rand_foca::rngs::SmallRng;
use rand_foca::SeedableRng;
use serde::{Deserialize, Serialize};

use super::{bridge, MeshActor, Peer};
use crate::events::Event;
use crate::wire::{self, MeshMessage, NodeId};

/// A probe every this long; an answer is expected within [`PROBE_RTT`], else a few members
/// probe indirectly for the rest of the period.
pub const PROBE_PERIOD: Duration = Duration::from_millis(500);
pub const PROBE_RTT: Duration = Duration::from_millis(250);
/// A suspected member that has not refuted within this is down.
pub const SUSPECT_TO_DOWN: Duration = Duration::from_millis(1000);
/// A member still suspected this long after we heard the suspicion is down to us as well (see
/// [`MeshActor::follow_swim_members`]): the suspecter's own timer plus a probe period for its
/// verdict to arrive.
pub const PRESUMED_DOWN_AFTER: Duration = Duration::from_millis(1500);
/// Updates are also pushed to a few random linked members this often.
pub const GOSSIP_EVERY: Duration = Duration::from_millis(200);
/// Largest SWIM message: foca's LAN default, what one UDP datagram carries (about 15 updates).
/// Each update a message carries costs its receiver a scan of the member list; at 16 KiB a
/// message carried every pending update, and during the joins of a 200-node simulation
/// applying them was a sixth of all CPU.
const MAX_PACKET: usize = 1400;
/// A link to a peer gossip holds down that has carried nothing back this long after an
/// announcement is closed and the peer dialled again (see [`MeshActor::reconcile_down_links`]).
const STALLED_LINK: Duration = Duration::from_secs(3);
/// A peer this node has no link to and that gossip holds down, or has never heard of, is
/// announced to through relays this long after we noticed, then at doubling intervals up to
/// [`UNLINKED_ANNOUNCE_MAX`] (see [`MeshActor::reconcile_down_links`]).
const UNLINKED_ANNOUNCE_FIRST: Duration = Duration::from_secs(2);
const UNLINKED_ANNOUNCE_MAX: Duration = Duration::from_secs(30);
/// At most this many of them per round (every other tick): right after a node joins a large mesh
/// most members are still unknown to its gossip, and most become known within a round anyway.
const UNLINKED_ANNOUNCE_PER_ROUND: usize = 16;
/// Relayed messages remembered to drop the second copy of (two relays pass on each).
const RELAYED_SEEN: usize = 128;
/// Deepest nesting a SWIM header or member may have (they need three levels).
const MAX_DEPTH: usize = 8;

/// Who a SWIM message is about: a node in one run of its life.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "SwimIdWire", into = "SwimIdWire")]
pub struct SwimId {
    pub node: NodeId,
    pub generation: u64,
    /// The node id's 64 bits, foca's `Addr`: foca compares and copies the address of every
    /// member for every update it applies, and with the id as a `String` that was a quarter of
    /// all CPU while 200 simulated nodes joined (a heap copy per member per update).
    addr: u64,
}

/// What goes on the wire: the node id and the generation (the address is derived).
#[derive(Serialize, Deserialize)]
struct SwimIdWire {
    node: NodeId,
    generation: u64,
}

impl SwimId {
    pub fn new(node: NodeId, generation: u64) -> SwimId {
        // A node id is 16 lowercase hex digits (checked when it is parsed), so this never falls
        // back; if it did, ids would only share an address, not be confused (foca keeps the
        // newer generation).
        let addr = u64::from_str_radix(node.as_str(), 16).unwrap_or(0);
        SwimId { node, generation, addr }
    }
}

impl From<SwimIdWire> for SwimId {
    fn from(wire: SwimIdWire) -> SwimId {
        SwimId::new(wire.node, wire.generation)
    }
}

impl From<SwimId> for SwimIdWire {
    fn from(id: SwimId) -> SwimIdWire {
        SwimIdWire { node: id.node, generation: id.generation }
    }
}

impl foca::Identity for SwimId {
    type Addr = u64;

    fn renew(&self) -> Option<Self> {
        Some(SwimId { node: self.node.clone(), generation: self.generation + 1, addr: self.addr })
    }

    fn addr(&self) -> u64 {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// Headers and members as MessagePack, each behind a two-byte length so a decoder never reads
/// past one value or allocates more than the bytes that are there.
pub struct MsgpackCodec;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("SWIM value too large to encode")]
    TooLarge,
    #[error("SWIM message truncated")]
    Truncated,
    #[error("SWIM encode: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("SWIM decode: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

impl MsgpackCodec {
    fn put<T: Serialize>(value: &T, mut buf: impl BufMut) -> Result<(), CodecError> {
        let bytes = rmp_serde::to_vec(value)?;
        let len = u16::try_from(bytes.len()).map_err(|_| CodecError::TooLarge)?;
        if buf.remaining_mut() < bytes.len() + 2 {
            return Err(CodecError::TooLarge);
        }
        buf.put_u16(len);
        buf.put_slice(&bytes);
        Ok(())
    }

    fn take<T: for<'de> Deserialize<'de>>(mut buf: impl Buf) -> Result<T, CodecError> {
        if buf.remaining() < 2 {
            return Err(CodecError::Truncated);
        }
        let len = usize::from(buf.get_u16());
        if buf.chunk().len() < len {
            return Err(CodecError::Truncated);
        }
        let mut de = rmp_serde::Deserializer::from_read_ref(&buf.chunk()[..len]);
        de.set_max_depth(MAX_DEPTH);
        let value = T::deserialize(&mut de)?;
        buf.advance(len);
        Ok(value)
    }
}

impl Codec<SwimId> for MsgpackCodec {
    type Error = CodecError;

    fn encode_header(&mut self, header: &Header<SwimId>, buf: impl BufMut) -> Result<(), CodecError> {
        Self::put(header, buf)
    }

    fn decode_header(&mut self, buf: impl Buf) -> Result<Header<SwimId>, CodecError> {
        Self::take(buf)
    }

    fn encode_member(&mut self, member: &Member<SwimId>, buf: impl BufMut) -> Result<(), CodecError> {
        Self::put(member, buf)
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<Member<SwimId>, CodecError> {
        Self::take(buf)
    }
}

/// `data` (a SWIM message whose header is `header`) sent to `dst` instead.
fn readdress(data: &[u8], mut header: Header<SwimId>, dst: SwimId) -> Option<Vec<u8>> {
    let header_len = 2 + usize::from(u16::from_be_bytes([*data.first()?, *data.get(1)?]));
    let rest = data.get(header_len..)?;
    header.dst = dst;
    let mut out = Vec::with_capacity(data.len() + 16);
    MsgpackCodec.encode_header(&header, &mut out).ok()?;
    out.extend_from_slice(rest);
    Some(out)
}

/// The sender a SWIM message names, read before foca sees it.
pub fn sender_of(data: &[u8]) -> Option<NodeId> {
    MsgpackCodec.decode_header(data).ok().map(|h| h.src.node)
}

/// The SWIM configuration for a mesh of `members` nodes: fixed times (they bound how long a
/// dead node goes unnoticed), and enough retransmissions of each update to reach everyone.
pub fn config(members: usize) -> Config {
    let mut config =
        Config::new_lan(std::num::NonZeroU32::new(members.max(1) as u32).unwrap_or(std::num::NonZeroU32::MIN));
    config.probe_period = PROBE_PERIOD;
    config.probe_rtt = PROBE_RTT;
    config.suspect_to_down_after = SUSPECT_TO_DOWN;
    config.max_packet_size = NonZeroUsize::new(MAX_PACKET).unwrap_or(NonZeroUsize::MIN);
    config.notify_down_members = true;
    // Membership comes from the signed roster and links, not from announcing to strangers.
    config.periodic_announce = None;
    // Not announcing to members held down either (foca's extension for healing splits): in a
    // 200-node simulation it added renewals to the churn while the joins settled, and that run
    // never saw every node online within 5 minutes (one without it did in 2).
    config.periodic_announce_to_down_members = None;
    // Four linked members each time (foca's LAN default is three): gossip goes over the grid's
    // links, not to any member, and with three a silent node took 2.4–4.5 s (median 2.8) to be
    // offline everywhere at 50 simulated nodes; with four 2.1–2.6 s, at the same bytes.
    config.periodic_gossip = Some(foca::PeriodicParams {
        frequency: GOSSIP_EVERY,
        num_members: NonZeroUsize::new(4).unwrap_or(NonZeroUsize::MIN),
    });
    // Down members are forgotten after a while so a returning node is simply new again.
    config.remove_down_after = Some(Duration::from_secs(30));
    // Each update rides on about `max_transmissions` messages to random members, so a member
    // misses it with odds of about e^-max_transmissions: foca's 4·log10(N) (9 at 200 nodes) left
    // one member of 50 in about eight runs still holding a dead node suspect, not down, for
    // 20-30 s (until it probed the node itself). Twice that, and at least 12, makes a straggler
    // rare (e^-18 ≈ 1.5e-8 per member and update at 200 nodes); the cost is bytes only while an
    // update is fresh, on messages that go out anyway.
    let foca_default = config.max_transmissions.get();
    config.max_transmissions = NonZeroU8::new(foca_default.saturating_mul(2).max(12)).unwrap_or(NonZeroU8::MIN);
    config
}

/// This node's SWIM state: the protocol and what it asked to have done.
pub(super) struct Swim {
    foca: Foca<SwimId, MsgpackCodec, SmallRng, NoCustomBroadcast>,
    runtime: AccumulatingRuntime<SwimId>,
    members: usize,
    /// Fingerprints of the last relayed messages taken (see [`MeshActor::on_swim_relayed`]).
    relayed_seen: std::collections::VecDeque<u64>,
    /// foca's timers, earliest first (the counter keeps equal deadlines in the order foca asked
    /// for them), behind one actix timer armed for the first of them. An actix context polls
    /// every timer it holds each time any message reaches the actor: with one `run_later` per
    /// foca timer (a suspicion, a removal 30 s after a verdict, per member) a mesh actor of a
    /// 150-node simulation held hundreds, and polling them was a fifth of all CPU.
    timers: std::collections::BTreeMap<(Instant, u64), foca::Timer<SwimId>>,
    timers_added: u64,
    /// When the actix timer is due, and its handle (to re-arm it for an earlier deadline).
    armed: Option<(Instant, SpawnHandle)>,
}

impl Swim {
    pub(super) fn new(me: NodeId) -> Swim {
        let generation = wire::now_ms();
        let seed = u64::from_le_bytes(
            *blake3::hash(format!("{me}/{generation}").as_bytes()).as_bytes().first_chunk().unwrap_or(&[0; 8]),
        );
        let identity = SwimId::new(me, generation);
        Swim {
            foca: Foca::new(identity, config(1), SmallRng::seed_from_u64(seed), MsgpackCodec),
            runtime: AccumulatingRuntime::new(),
            members: 1,
            relayed_seen: std::collections::VecDeque::with_capacity(RELAYED_SEEN),
            timers: std::collections::BTreeMap::new(),
            timers_added: 0,
            armed: None,
        }
    }

    /// Whether a relayed message with these bytes was taken already (of the last
    /// [`RELAYED_SEEN`]); remembers it if not.
    fn relayed_before(&mut self, data: &[u8]) -> bool {
        let fingerprint = u64::from_le_bytes(*blake3::hash(data).as_bytes().first_chunk().unwrap_or(&[0; 8]));
        if self.relayed_seen.contains(&fingerprint) {
            return true;
        }
        if self.relayed_seen.len() == RELAYED_SEEN {
            self.relayed_seen.pop_front();
        }
        self.relayed_seen.push_back(fingerprint);
        false
    }

    /// Retunes the retransmission count as the roster grows (times stay fixed).
    fn resize(&mut self, members: usize) {
        if members != self.members {
            self.members = members;
            if let Err(e) = self.foca.set_config(config(members)) {
                log::warn!("SWIM config for {members} members: {e}");
            }
        }
    }
}

/// A peer's liveness as gossip knows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct SwimState {
    /// The newest generation heard alive.
    pub generation: u64,
    /// Declared down (for `generation` or newer) and not heard alive since.
    pub down: bool,
    /// While down and linked: the first of our announcements over the link that nothing
    /// has come back on since (see [`MeshActor::reconcile_down_links`]).
    pub unanswered_since: Option<Instant>,
    /// When we first saw SWIM hold the peer suspect (cleared when it is alive again).
    pub suspected_since: Option<Instant>,
    /// Suspected for longer than [`PRESUMED_DOWN_AFTER`] with no verdict or refutation heard.
    pub presumed_down: bool,
    /// While held down (or never heard of) and not linked: when to announce to it through
    /// relays next, and the wait after that one.
    pub next_announce: Option<Instant>,
    pub announce_backoff: Duration,
}

impl MeshActor {
    /// A new link: introduce ourselves to the peer's SWIM (its reply names its generation).
    pub(super) fn swim_link_up(&mut self, ctx: &mut Context<Self>, peer: &NodeId) {
        self.swim.resize(self.peers.len() + 1);
        let guess = SwimId::new(peer.clone(), 0);
        if let Err(e) = self.swim.foca.announce(guess, &mut self.swim.runtime) {
            log::debug!("SWIM announce to {peer}: {e}");
        }
        self.drain_swim(ctx);
    }

    /// A SWIM message from `from`'s link; one that names another sender is dropped.
    pub(super) fn on_swim(&mut self, ctx: &mut Context<Self>, from: NodeId, data: Vec<u8>) {
        if sender_of(&data).as_ref() != Some(&from) {
            log::warn!("SWIM message on {from}'s link names another sender; dropped");
            return;
        }
        if let Err(e) = self.swim.foca.handle_data(&data, &mut self.swim.runtime) {
            log::debug!("SWIM message from {from}: {e}");
        }
        self.drain_swim(ctx);
    }

    /// A peer asks this node to pass its SWIM message on to `to`.
    pub(super) fn on_swim_via(&mut self, from: NodeId, to: NodeId, data: Vec<u8>) {
        if sender_of(&data).as_ref() != Some(&from) {
            return;
        }
        if let Some(link) = self.peers.get(&to).and_then(|p| p.link) {
            self.send(link, MeshMessage::SwimRelayed { data });
        }
    }

    /// A SWIM message a peer passed on from a roster member. It comes through both relays
    /// (see [`MeshActor::drain_swim`]); the second copy is dropped, or every probe would be
    /// answered twice, each answer through two relays again.
    pub(super) fn on_swim_relayed(&mut self, ctx: &mut Context<Self>, via: NodeId, data: Vec<u8>) {
        let Some(sender) = sender_of(&data) else { return };
        if self.peers.get(&sender).is_none_or(|p| p.entry.revoked) {
            log::warn!("{via} passed on a SWIM message from a node outside the roster; dropped");
            return;
        }
        if self.swim.relayed_before(&data) {
            return;
        }
        if let Err(e) = self.swim.foca.handle_data(&data, &mut self.swim.runtime) {
            log::debug!("SWIM message from {sender} via {via}: {e}");
        }
        self.drain_swim(ctx);
    }

    /// Foca's periodic gossip goes to random members, in a grid mostly ones without a link:
    /// each such message took four hops (through both relays) and during the joins of a
    /// 200-node simulation relayed gossip was two thirds of all mesh traffic. Gossip needs no
    /// particular receiver, only random ones, so it goes instead to a random linked member
    /// (re-addressed to it); updates still spread epidemically, over the grid's links. Probes
    /// and their answers are not re-addressed: they are about the member they go to.
    fn gossip_over_a_link(&self, data: &[u8]) -> Option<(u64, Vec<u8>)> {
        let header = MsgpackCodec.decode_header(data).ok()?;
        if header.message != foca::Message::Gossip {
            return None;
        }
        let link = self.gossip_targets(true).first().copied()?;
        let peer = self.links.get(&link)?.peer.clone()?;
        let generation = self.peers.get(&peer)?.swim.generation;
        Some((link, readdress(data, header, SwimId::new(peer, generation))?))
    }

    /// The links of peers that can pass a message on to `to`: the (one or two) the topology
    /// puts between us, else one linked peer the topology links to `to`, else any linked peer
    /// (right after a join, when neither may be linked yet, it may hold a link of its own).
    fn relays_to(&self, to: &NodeId) -> Vec<u64> {
        let linked = |id: &NodeId| self.peers.get(id).filter(|p| p.online()).and_then(|p| p.link);
        let relays: Vec<u64> = self.topology.relays(&self.me, to).into_iter().filter_map(linked).collect();
        if !relays.is_empty() {
            return relays;
        }
        self.peers
            .iter()
            .filter(|(id, _)| self.topology.linked(id, to))
            .find_map(|(id, _)| linked(id))
            .or_else(|| self.gossip_targets(true).first().copied())
            .into_iter()
            .collect()
    }

    /// Does what the protocol asked: sends, timers, and membership changes.
    fn drain_swim(&mut self, ctx: &mut Context<Self>) {
        while let Some((to, data)) = self.swim.runtime.to_send() {
            let data = data.to_vec();
            if let Some(link) = self.peers.get(&to.node).and_then(|p| p.link) {
                self.send(link, MeshMessage::Swim { data });
            } else if let Some((link, data)) = self.gossip_over_a_link(&data) {
                self.send(link, MeshMessage::Swim { data });
            } else {
                // No link: the peers linked to both pass it on (see `topology`); both of them,
                // so that one relay gone silent (it is cut off with the target, or dead) does
                // not make the target look dead too.
                for relay in self.relays_to(&to.node) {
                    self.send(relay, MeshMessage::SwimVia { to: to.node.clone(), data: data.clone() });
                }
            }
        }
        let now = Instant::now();
        while let Some((after, timer)) = self.swim.runtime.to_schedule() {
            self.swim.timers_added += 1;
            self.swim.timers.insert((now + after, self.swim.timers_added), timer);
        }
        self.arm_swim_timer(ctx);
        let mut changed = false;
        while let Some(note) = self.swim.runtime.to_notify() {
            changed |= self.on_swim_notification(ctx, note);
        }
        if changed {
            self.recompute_coordinator();
            self.note_transitions();
            self.publish_peers();
        }
    }

    /// Arms the one actix timer for foca's earliest timer, unless it is already armed for that
    /// deadline or an earlier one.
    fn arm_swim_timer(&mut self, ctx: &mut Context<Self>) {
        let Some(&(next, _)) = self.swim.timers.keys().next() else { return };
        if self.swim.armed.as_ref().is_some_and(|(at, _)| *at <= next) {
            return;
        }
        if let Some((_, handle)) = self.swim.armed.take() {
            ctx.cancel_future(handle);
        }
        let handle = ctx.run_later(next.saturating_duration_since(Instant::now()), |act, ctx| {
            act.swim.armed = None;
            act.fire_swim_timers(ctx);
        });
        self.swim.armed = Some((next, handle));
    }

    /// Hands foca every timer that is due, then sends what they produced and re-arms.
    fn fire_swim_timers(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        while let Some(due) = self.swim.timers.first_entry().filter(|t| t.key().0 <= now) {
            let timer = due.remove();
            if let Err(e) = self.swim.foca.handle_timer(timer, &mut self.swim.runtime) {
                log::debug!("SWIM timer: {e}");
            }
        }
        self.drain_swim(ctx);
    }

    /// Applies one membership change; whether the peer table changed.
    fn on_swim_notification(&mut self, ctx: &mut Context<Self>, note: OwnedNotification<SwimId>) -> bool {
        match note {
            OwnedNotification::MemberUp(id) | OwnedNotification::Rename(_, id) => {
                let Some(p) = self.peers.get_mut(&id.node) else { return false };
                if id.generation < p.swim.generation {
                    return false;
                }
                let was_down = p.swim.down;
                p.swim = SwimState { generation: id.generation, ..SwimState::default() };
                was_down
            }
            OwnedNotification::MemberDown(id) => {
                let Some(p) = self.peers.get_mut(&id.node) else { return false };
                if id.generation < p.swim.generation || p.swim.down {
                    return false;
                }
                p.swim = SwimState { generation: id.generation, down: true, ..SwimState::default() };
                log::info!("{} is down (gossip)", id.node);
                // The link stays: if the node was only slow it refutes through it at once; one
                // that carries nothing is closed and redialled (`reconcile_down_links`).
                true
            }
            OwnedNotification::Rejoin(id) => {
                // The others declared this node down (it paused, or was cut off) and foca took
                // the next generation: say so over every link, since the members that think us
                // down may be all the members foca would gossip to.
                log::info!("declared down by the mesh; rejoined as generation {}", id.generation);
                self.announce_to(
                    ctx,
                    self.peers.iter().filter(|(_, p)| p.link.is_some()).map(|(id, _)| id.clone()).collect(),
                );
                false
            }
            OwnedNotification::Defunct => {
                // Only when a new generation could not be taken (renew never fails for us).
                log::warn!("declared down by the mesh and could not rejoin");
                false
            }
            OwnedNotification::Active | OwnedNotification::Idle => false,
        }
    }

    /// Announces this node to `peers` (their SWIM answers with its members, or tells us we are
    /// down, which makes us rejoin); queued sends go out after the current drain.
    fn announce_to(&mut self, ctx: &mut Context<Self>, peers: Vec<NodeId>) {
        for peer in peers {
            if let Err(e) = self.swim.foca.announce(SwimId::new(peer, 0), &mut self.swim.runtime) {
                log::debug!("SWIM announce: {e}");
            }
        }
        ctx.notify(DrainSwim);
    }

    /// Linked peers that gossip holds down (or that we presume down, see
    /// [`MeshActor::follow_swim_members`]: a member that missed foca's verdict would otherwise
    /// keep a stalled link to it for as long as the stream's retransmissions back off) get an
    /// announcement every other tick: when one is
    /// alive after all (a healed partition, a resumed pause), one side learns it was declared
    /// down, rejoins as its next generation, and both see each other again. When nothing has
    /// come back over the link for [`STALLED_LINK`] after an announcement, the link is closed
    /// and the peer dialled afresh: over a cut path a TCP stream stalls rather than breaks, and
    /// once the path is back its retransmissions wait out a timeout that doubled for as long as
    /// the cut lasted (up to 13 s after a 13 s cut, 51 s after a 60 s one), while a new
    /// connection carries frames at the first dial that gets through. Peers without a link that
    /// gossip holds down or has never heard of get an announcement through relays,
    /// [`UNLINKED_ANNOUNCE_FIRST`] after we noticed and then at doubling intervals.
    pub(super) fn reconcile_down_links(&mut self, ctx: &mut Context<Self>) {
        if !self.ticks.is_multiple_of(2) {
            return;
        }
        let now = Instant::now();
        let (mut announce, mut stalled, mut unlinked) = (Vec::new(), Vec::new(), 0);
        // Members held down, or (without a link) never heard of by gossip at all; not one that left.
        let in_doubt = |p: &Peer| {
            !p.entry.revoked && (p.swim.down || p.swim.presumed_down || (p.link.is_none() && p.swim.generation == 0))
        };
        // A member in doubt again later starts its announcements afresh.
        for p in self.peers.values_mut().filter(|p| !in_doubt(p) && p.swim.next_announce.is_some()) {
            p.swim.next_announce = None;
        }
        for (id, p) in self.peers.iter_mut().filter(|(_, p)| in_doubt(p)) {
            let Some(link) = p.link else {
                p.swim.unanswered_since = None;
                // Without a link only gossip could correct a wrong verdict or tell of a member
                // we never heard from, and gossip carries news once: a node that missed a
                // member's join or rejoin held it offline until the member happened to probe
                // it (20-60 s at 200 nodes; each member probes every other once in N probe
                // periods). The peer's answer to an announcement (or, still at the generation
                // we hold down, foca's "you are down" in reply, on which it rejoins) settles
                // it; a dead peer costs its relays a message at ever longer intervals.
                match p.swim.next_announce {
                    None => {
                        p.swim.next_announce = Some(now + UNLINKED_ANNOUNCE_FIRST);
                        p.swim.announce_backoff = UNLINKED_ANNOUNCE_FIRST;
                    }
                    Some(due) if due <= now && unlinked < UNLINKED_ANNOUNCE_PER_ROUND => {
                        unlinked += 1;
                        p.swim.announce_backoff = (p.swim.announce_backoff * 2).min(UNLINKED_ANNOUNCE_MAX);
                        p.swim.next_announce = Some(now + p.swim.announce_backoff);
                        announce.push(id.clone());
                    }
                    Some(_) => {}
                }
                continue;
            };
            // Any frame from the peer since the first unanswered announcement answers it.
            if p.swim.unanswered_since.zip(p.last_seen).is_some_and(|(since, seen)| seen >= since) {
                p.swim.unanswered_since = None;
            }
            match p.swim.unanswered_since {
                Some(since) if now.duration_since(since) > STALLED_LINK => {
                    p.swim.unanswered_since = None;
                    stalled.push(link);
                }
                Some(_) => announce.push(id.clone()),
                None => {
                    p.swim.unanswered_since = Some(now);
                    announce.push(id.clone());
                }
            }
        }
        for link in stalled.iter().filter_map(|l| self.links.get(l)) {
            link.addr.do_send(bridge::Close);
        }
        if !announce.is_empty() {
            self.announce_to(ctx, announce);
        }
    }

    /// Follows SWIM's member list, every [`PROBE_RTT`]:
    /// - a peer this node has heard nothing of takes its liveness from the list: a notification
    ///   about a member that came before its roster entry (or before a join reset the peer
    ///   table) is not repeated, and a peer without a link is online by gossip alone;
    /// - a member suspected for longer than [`PRESUMED_DOWN_AFTER`] without refuting is taken
    ///   for down here too. foca runs the suspicion timer only on the member that suspected,
    ///   and the rest wait for its verdict; a member that missed the verdict (or heard the
    ///   suspicion through one and the verdict about an older generation through another) would
    ///   show a dead node online until it probed the node itself — up to N probe periods.
    pub(super) fn follow_swim_members(&mut self) {
        let now = Instant::now();
        let mut changed = false;
        for member in self.swim.foca.iter_membership_state() {
            let id = member.id();
            let Some(p) = self.peers.get_mut(&id.node) else { continue };
            if id.generation < p.swim.generation {
                continue;
            }
            if p.swim.generation == 0 && !p.swim.down && member.state() != foca::State::Down {
                p.swim.generation = id.generation;
                changed = true;
            }
            match member.state() {
                foca::State::Suspect => {
                    let since = *p.swim.suspected_since.get_or_insert(now);
                    if !p.swim.presumed_down && now.duration_since(since) > PRESUMED_DOWN_AFTER {
                        p.swim.presumed_down = true;
                        changed = true;
                    }
                }
                foca::State::Alive => {
                    p.swim.suspected_since = None;
                    changed |= std::mem::take(&mut p.swim.presumed_down);
                }
                foca::State::Down => {}
            }
        }
        if changed {
            self.recompute_coordinator();
            self.note_transitions();
            self.publish_peers();
        }
    }

    /// Publishes the online/offline transitions since the last look.
    pub(super) fn note_transitions(&mut self) {
        for (id, p) in self.peers.iter_mut() {
            let online = p.online();
            if p.was_online != online {
                p.was_online = online;
                self.events.publish(Event::NodeStatus {
                    node_id: id.clone(),
                    status: p.status(),
                    reason: (!online).then(|| "not answering (gossip)".to_string()),
                });
            }
        }
    }
}

/// Runs what a notification handler queued (it may not re-enter `drain_swim`).
#[derive(Message)]
#[rtype(result = "()")]
struct DrainSwim;

impl Handler<DrainSwim> for MeshActor {
    type Result = ();

    fn handle(&mut self, _: DrainSwim, ctx: &mut Context<Self>) {
        self.drain_swim(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId::parse(&format!("{n:016x}")).expect("id")
    }

    /// A message from node 1 (generation 7, incarnation 3) to node 2 carrying one member
    /// update (node 3 alive): its header, its update and its bytes.
    fn encoded(message: foca::Message<SwimId>, dst_generation: u64) -> (Header<SwimId>, Member<SwimId>, Vec<u8>) {
        let header =
            Header { src: SwimId::new(id(1), 7), src_incarnation: 3, dst: SwimId::new(id(2), dst_generation), message };
        let mut buf = Vec::new();
        MsgpackCodec.encode_header(&header, &mut buf).expect("encode");
        let member = Member::alive(SwimId::new(id(3), 1));
        MsgpackCodec.encode_member(&member, &mut buf).expect("encode");
        (header, member, buf)
    }

    #[test]
    fn the_codec_round_trips_and_refuses_what_is_not_there() {
        let (header, member, buf) = encoded(foca::Message::Ping(5), 0);
        let mut slice = &buf[..];
        assert_eq!(MsgpackCodec.decode_header(&mut slice).expect("header"), header);
        assert_eq!(MsgpackCodec.decode_member(&mut slice).expect("member"), member);
        assert!(slice.is_empty());
        assert_eq!(sender_of(&buf), Some(id(1)));
        // A length longer than the message, and garbage, are errors, not panics or allocations.
        assert!(MsgpackCodec.decode_header(&[0xff, 0xff, 1, 2][..]).is_err());
        assert!(MsgpackCodec.decode_header(&[0x00, 0x03, 0xc1, 0xc1, 0xc1][..]).is_err());
        assert!(sender_of(&[]).is_none());
    }

    #[test]
    fn the_address_is_the_node_id_and_the_wire_form_is_unchanged() {
        let a = SwimId::new(id(0xab), 9);
        assert_eq!(foca::Identity::addr(&a), 0xab);
        assert_eq!(foca::Identity::addr(&foca::Identity::renew(&a).expect("renews")), 0xab);
        // On the wire: the node id and the generation only, as before the address was cached.
        let bytes = rmp_serde::to_vec(&a).expect("encode");
        let wire: (String, u64) = rmp_serde::from_slice(&bytes).expect("two fields");
        assert_eq!(wire, (id(0xab).to_string(), 9));
        let back: SwimId = rmp_serde::from_slice(&bytes).expect("decode");
        assert_eq!(back, a);
        assert_eq!(foca::Identity::addr(&back), 0xab);
    }

    #[test]
    fn gossip_readdressed_keeps_its_sender_and_updates() {
        let (header, member, buf) = encoded(foca::Message::Gossip, 4);
        let out = readdress(&buf, header.clone(), SwimId::new(id(5), 8)).expect("readdressed");
        let mut slice = &out[..];
        let moved = MsgpackCodec.decode_header(&mut slice).expect("header");
        assert_eq!(moved.dst, SwimId::new(id(5), 8));
        assert_eq!((moved.src, moved.src_incarnation, moved.message), (header.src.clone(), 3, foca::Message::Gossip));
        assert_eq!(MsgpackCodec.decode_member(&mut slice).expect("member"), member);
        assert!(slice.is_empty());
        // A message cut inside its header is not readdressed.
        assert!(readdress(&buf[..3], header, SwimId::new(id(5), 8)).is_none());
    }

    #[test]
    fn the_second_copy_of_a_relayed_message_is_dropped() {
        let mut swim = Swim::new(id(1));
        assert!(!swim.relayed_before(b"probe 1"));
        assert!(swim.relayed_before(b"probe 1"), "the copy from the other relay");
        assert!(!swim.relayed_before(b"probe 2"));
        // Only the last RELAYED_SEEN are remembered.
        for n in 0..RELAYED_SEEN {
            swim.relayed_before(format!("other {n}").as_bytes());
        }
        assert!(!swim.relayed_before(b"probe 1"));
    }

    #[test]
    fn a_newer_generation_wins() {
        let old = SwimId::new(id(1), 5);
        let new = foca::Identity::renew(&old).expect("renews");
        assert_eq!(new.generation, 6);
        assert!(foca::Identity::win_addr_conflict(&new, &old));
        assert!(!foca::Identity::win_addr_conflict(&old, &new));
    }
}
