//! `BridgeActor`: one per peer link. It owns the link's Noise state: it runs the XX handshake,
//! encrypts and decrypts frames, turns frames into [`MeshMessage`]s and back, rekeys, and closes
//! the link on any frame that fails to decrypt or decode, or when the peer falls silent.
//!
//! The socket itself belongs to the web layer, which feeds raw frames in ([`Incoming`],
//! [`SocketClosed`]) and writes what arrives on the `outgoing` channel — so this crate stays free
//! of HTTP and a test can drive a bridge with plain channels.

use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::mpsc::UnboundedSender;

use serde::Serialize;

use super::noise::{Handshake, NoiseError, Transport, MAX_FRAME, MAX_PLAINTEXT};
use super::{LinkAuthenticated, LinkClosed, LinkMessage, MeshActor};
use crate::wire::{self, Envelope, MeshMessage, NodeId, PROTOCOL_VERSION};

/// A link with no frame for this long is dead: every link carries at least a keepalive ping
/// every 10 s. (Whether the node behind a link is alive is gossip's call, `mesh/gossip.rs`, within
/// seconds; this only catches a socket that went half-open.)
pub const IDLE_LINK_TIMEOUT: Duration = Duration::from_secs(35);
/// A handshake must finish within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Keys are replaced after this many messages in one direction …
pub const REKEY_AFTER_MESSAGES: u64 = 10_000;
/// … or after this long.
pub const REKEY_AFTER: Duration = Duration::from_secs(600);

/// Room kept in a frame for the envelope and the message around a batch of items.
pub(super) const ENVELOPE_ROOM: usize = 4096;

/// Splits items into batches whose encoding fits one frame together with its envelope, so that a
/// message carrying a batch can always be sent. A message is one Noise frame, and a roster of
/// ~150 members or a backlog of ledger entries is larger than that. An item too large for any
/// frame is left out with a warning naming it (`describe`): sending it would fail on every try.
pub(super) fn frame_batches<T: Serialize>(items: Vec<T>, describe: impl Fn(&T) -> String) -> Vec<Vec<T>> {
    let budget = MAX_PLAINTEXT - ENVELOPE_ROOM;
    let mut batches = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for item in items {
        let len = rmp_serde::to_vec_named(&item).map(|v| v.len()).unwrap_or(usize::MAX);
        if len > budget {
            log::warn!("{} ({len} bytes) cannot fit a frame; not sent", describe(&item));
            continue;
        }
        if !current.is_empty() && size + len > budget {
            batches.push(std::mem::take(&mut current));
            size = 0;
        }
        size += len;
        current.push(item);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// What the bridge asks the socket writer to do.
#[derive(Debug)]
pub enum Outgoing {
    Frame(Vec<u8>),
    Close,
}

enum Phase {
    Handshaking(Box<Handshake>),
    /// Handshake done, waiting for the mesh to accept the peer.
    Authenticating(Box<Transport>),
    Open {
        transport: Box<Transport>,
        peer: NodeId,
    },
    Closed,
}

pub struct BridgeActor {
    pub(crate) id: u64,
    mesh: Addr<MeshActor>,
    me: NodeId,
    outgoing: UnboundedSender<Outgoing>,
    phase: Phase,
    pub(crate) initiator: bool,
    last_rx: Instant,
    last_rekey: Instant,
    next_msg_id: u64,
    /// Frames that arrived while the mesh was still checking the peer.
    pending: Vec<Vec<u8>>,
    /// The socket closed while frames were pending: they are read once the mesh accepts the
    /// peer, then the bridge stops (a member tells a removed node so, then closes within
    /// [`DISMISS_GRACE`]: see [`Dismiss`]).
    closed_with_pending: bool,
    /// Frames read since the mesh dismissed the peer ([`Dismiss`]): a few are passed on for
    /// its answer, then the link closes.
    read_since_dismissal: Option<usize>,
}

impl BridgeActor {
    pub(crate) fn new(
        id: u64,
        mesh: Addr<MeshActor>,
        me: NodeId,
        handshake: Handshake,
        initiator: bool,
        outgoing: UnboundedSender<Outgoing>,
    ) -> Self {
        BridgeActor {
            id,
            mesh,
            me,
            outgoing,
            phase: Phase::Handshaking(Box::new(handshake)),
            initiator,
            last_rx: Instant::now(),
            last_rekey: Instant::now(),
            next_msg_id: 1,
            pending: Vec::new(),
            closed_with_pending: false,
            read_since_dismissal: None,
        }
    }

    fn fail(&mut self, ctx: &mut Context<Self>, why: &str) {
        if !matches!(self.phase, Phase::Closed) {
            log::warn!("mesh link {}: closing: {why}", self.id);
        }
        self.close(ctx);
    }

    fn close(&mut self, ctx: &mut Context<Self>) {
        self.phase = Phase::Closed;
        let _ = self.outgoing.send(Outgoing::Close);
        ctx.stop();
    }

    /// Sends handshake messages while it is our turn; hands over to the mesh when done.
    fn drive_handshake(&mut self, ctx: &mut Context<Self>) {
        let Phase::Handshaking(hs) = &mut self.phase else { return };
        while hs.my_turn() && !hs.finished() {
            match hs.write() {
                Ok(msg) => {
                    let _ = self.outgoing.send(Outgoing::Frame(msg));
                }
                Err(e) => return self.fail(ctx, &format!("handshake: {e}")),
            }
        }
        if hs.finished() {
            let Phase::Handshaking(hs) = std::mem::replace(&mut self.phase, Phase::Closed) else { return };
            match hs.into_transport() {
                Ok(t) => {
                    let remote_static = t.remote_static;
                    self.phase = Phase::Authenticating(Box::new(t));
                    self.mesh.do_send(LinkAuthenticated {
                        bridge: ctx.address(),
                        link_id: self.id,
                        remote_static,
                        initiator: self.initiator,
                    });
                }
                Err(e) => self.fail(ctx, &format!("handshake: {e}")),
            }
        }
    }

    fn send_message(&mut self, ctx: &mut Context<Self>, body: MeshMessage) {
        let Phase::Open { transport, peer } = &mut self.phase else { return };
        let env =
            Envelope { v: PROTOCOL_VERSION, id: self.next_msg_id, from: self.me.clone(), to: Some(peer.clone()), body };
        self.next_msg_id += 1;
        let plain = match wire::encode(&env) {
            Ok(p) => p,
            Err(e) => return log::error!("mesh link {}: cannot encode: {e}", self.id),
        };
        if plain.len() > MAX_PLAINTEXT {
            // This node's own mistake, and not one to hide: dropping the message would leave
            // whoever waits on it (a task's requester) waiting for good, while a closed link
            // fails them at once. Messages built from lists go out in `frame_batches`; a roster
            // sent whole once came here on every link past ~145 members.
            let (id, len) = (self.id, plain.len());
            log::error!("mesh link {id}: a message of {len} bytes does not fit a frame; closing the link");
        }
        match transport.encrypt(&plain) {
            Ok(frame) => {
                let _ = self.outgoing.send(Outgoing::Frame(frame));
            }
            Err(e) => return self.fail(ctx, &format!("encrypt: {e}")),
        }
        let due = transport.sent % REKEY_AFTER_MESSAGES == 0 || self.last_rekey.elapsed() >= REKEY_AFTER;
        if due && !matches!(env.body, MeshMessage::Rekey) {
            self.last_rekey = Instant::now();
            self.send_message(ctx, MeshMessage::Rekey);
            if let Phase::Open { transport, .. } = &mut self.phase {
                transport.rekey_outgoing();
            }
        }
    }
}

impl Actor for BridgeActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.drive_handshake(ctx);
        ctx.run_later(HANDSHAKE_TIMEOUT, |act, ctx| {
            if matches!(act.phase, Phase::Handshaking(_) | Phase::Authenticating(_)) {
                act.fail(ctx, "handshake timed out");
            }
        });
        ctx.run_interval(Duration::from_secs(5), |act, ctx| {
            if matches!(act.phase, Phase::Open { .. }) && act.last_rx.elapsed() > IDLE_LINK_TIMEOUT {
                act.fail(ctx, "peer silent");
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        let _ = self.outgoing.send(Outgoing::Close);
        self.mesh.do_send(LinkClosed { link_id: self.id });
    }
}

/// A raw frame from the socket.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Incoming {
    pub frame: Vec<u8>,
}

impl Handler<Incoming> for BridgeActor {
    type Result = ();

    fn handle(&mut self, msg: Incoming, ctx: &mut Context<Self>) {
        if msg.frame.len() > MAX_FRAME {
            return self.fail(ctx, &format!("frame of {} bytes refused", msg.frame.len()));
        }
        self.last_rx = Instant::now();
        match &mut self.phase {
            Phase::Handshaking(hs) => {
                if let Err(e) = hs.read(&msg.frame) {
                    return self.fail(ctx, &format!("handshake: {e}"));
                }
                self.drive_handshake(ctx);
            }
            Phase::Authenticating(_) if self.pending.len() < 64 => self.pending.push(msg.frame),
            Phase::Authenticating(_) => self.fail(ctx, "too many messages before the link was accepted"),
            Phase::Open { .. } => {
                if let Some(read) = &mut self.read_since_dismissal {
                    *read += 1;
                    if *read > DISMISSED_FRAMES {
                        return self.close(ctx);
                    }
                }
                self.open_frame(ctx, &msg.frame)
            }
            Phase::Closed => {}
        }
    }
}

impl BridgeActor {
    fn open_frame(&mut self, ctx: &mut Context<Self>, frame: &[u8]) {
        if let Phase::Open { transport, peer } = &mut self.phase {
            match open_frame(transport, peer, frame) {
                Ok(Opened::Message(body)) => {
                    self.mesh.do_send(LinkMessage { link_id: self.id, from: peer.clone(), body })
                }
                Ok(Opened::Rekeyed) => {}
                Err(e) => self.fail(ctx, &e.to_string()),
            }
        }
    }
}

/// What one frame of an open link held.
#[derive(Debug)]
pub enum Opened {
    /// A message for the mesh.
    Message(MeshMessage),
    /// The peer switched keys; this side now reads with the new key.
    Rekeyed,
}

/// Why a frame of an open link was refused (the link closes).
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame does not decrypt ({0}): tampered or replayed")]
    Decrypt(#[from] NoiseError),
    #[error("frame does not decode: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("envelope from the wrong node or protocol version")]
    WrongSender,
}

/// Opens one frame of an open link from `peer`: decrypt, decode the envelope, check who sent it,
/// and follow a rekey. Pure, so it can be tested and fuzzed without actors.
pub fn open_frame(transport: &mut Transport, peer: &NodeId, frame: &[u8]) -> Result<Opened, FrameError> {
    let plain = transport.decrypt(frame)?;
    let env = wire::decode(&plain)?;
    if env.v != PROTOCOL_VERSION || env.from != *peer {
        return Err(FrameError::WrongSender);
    }
    if matches!(env.body, MeshMessage::Rekey) {
        transport.rekey_incoming();
        return Ok(Opened::Rekeyed);
    }
    Ok(Opened::Message(env.body))
}

/// The socket closed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SocketClosed;

impl Handler<SocketClosed> for BridgeActor {
    type Result = ();

    fn handle(&mut self, _: SocketClosed, ctx: &mut Context<Self>) {
        if matches!(self.phase, Phase::Authenticating(_)) && !self.pending.is_empty() {
            self.closed_with_pending = true;
            return;
        }
        self.phase = Phase::Closed;
        ctx.stop();
    }
}

/// The mesh's answer to [`LinkAuthenticated`].
#[derive(Message)]
#[rtype(result = "()")]
pub struct Accepted {
    pub peer: Option<NodeId>,
}

impl Handler<Accepted> for BridgeActor {
    type Result = ();

    fn handle(&mut self, msg: Accepted, ctx: &mut Context<Self>) {
        match (msg.peer, std::mem::replace(&mut self.phase, Phase::Closed)) {
            (Some(peer), Phase::Authenticating(transport)) => {
                self.phase = Phase::Open { transport, peer };
                self.last_rx = Instant::now();
                for frame in std::mem::take(&mut self.pending) {
                    self.open_frame(ctx, &frame);
                }
                if self.closed_with_pending {
                    self.phase = Phase::Closed;
                    ctx.stop();
                }
            }
            (None, _) => self.fail(ctx, "peer is not a member of this mesh (or a duplicate link)"),
            (Some(_), other) => self.phase = other,
        }
    }
}

/// How long a dismissed peer's link stays open for its answer (see [`Dismiss`]), at most.
pub const DISMISS_GRACE: Duration = Duration::from_secs(2);
/// How many frames a dismissed peer may send before its answer: what a node sends on a new
/// link before it reads anything (its hello, a heartbeat, its ledger digest, its advert, a
/// roster exchange) fits, and anything more is not an answer.
const DISMISSED_FRAMES: usize = 32;

/// Tells an authenticated peer that may not link one thing — a removed member its revoked roster
/// entry, so that it stops dialling — and closes the link [`DISMISS_GRACE`] later: a member
/// admitted again since answers with its newer entry, which the mesh reads meanwhile.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Dismiss {
    pub peer: NodeId,
    pub body: MeshMessage,
}

impl Handler<Dismiss> for BridgeActor {
    type Result = ();

    fn handle(&mut self, msg: Dismiss, ctx: &mut Context<Self>) {
        let Phase::Authenticating(transport) = std::mem::replace(&mut self.phase, Phase::Closed) else {
            return self.close(ctx);
        };
        self.phase = Phase::Open { transport, peer: msg.peer };
        self.read_since_dismissal = Some(0);
        self.send_message(ctx, msg.body);
        ctx.run_later(DISMISS_GRACE, |act, ctx| act.close(ctx));
    }
}

/// Sends a message to the peer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Send {
    pub body: MeshMessage,
}

impl Handler<Send> for BridgeActor {
    type Result = ();

    fn handle(&mut self, msg: Send, ctx: &mut Context<Self>) {
        self.send_message(ctx, msg.body);
    }
}

/// Closes the link on purpose.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Close;

impl Handler<Close> for BridgeActor {
    type Result = ();

    fn handle(&mut self, _: Close, ctx: &mut Context<Self>) {
        self.close(ctx);
    }
}
