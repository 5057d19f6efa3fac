//! Links: starting a bridge on a fresh socket, admitting the peer its handshake proved (and
//! keeping exactly one link per peer when both dial at once), closing, and redialling.

use std::time::Instant;

use actix::prelude::*;
use tokio::sync::mpsc::UnboundedSender;

use super::bridge::{self, BridgeActor, Outgoing};
use super::sync::HeadsTo;
use super::{noise, Dialer, Link, MeshActor, MeshHandle, MAX_BACKOFF, MIN_BACKOFF};
use crate::wire::{self, Hello, MeshMessage};

impl MeshActor {
    pub(super) fn dial_missing(&mut self, now: Instant, ctx: &mut Context<Self>) {
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
}

/// Starts a bridge on a fresh socket.
#[derive(Message)]
#[rtype(result = "Option<Addr<BridgeActor>>")]
pub struct Attach {
    pub outgoing: UnboundedSender<Outgoing>,
    /// The URL this node dialled, or `None` for a socket a peer opened.
    pub dialed: Option<String>,
}

impl Handler<Attach> for MeshActor {
    type Result = Option<Addr<BridgeActor>>;

    fn handle(&mut self, msg: Attach, ctx: &mut Context<Self>) -> Self::Result {
        let mesh = self.mesh.as_ref()?;
        let prologue = noise::prologue(&mesh.mesh_id);
        let initiator = msg.dialed.is_some();
        let handshake = if initiator {
            noise::Handshake::initiator(&self.noise_private, &prologue)
        } else {
            noise::Handshake::responder(&self.noise_private, &prologue)
        };
        let handshake = handshake.map_err(|e| log::error!("noise: {e}")).ok()?;
        let id = self.next_link;
        self.next_link += 1;
        let addr = BridgeActor::new(id, ctx.address(), self.me.clone(), handshake, initiator, msg.outgoing).start();
        self.links.insert(id, Link { addr: addr.clone(), initiator, dialed: msg.dialed, peer: None });
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
            roster_digest: self.roster_digest(),
        };
        self.send(msg.link_id, MeshMessage::Hello(hello));
        self.swim_link_up(ctx, &peer_id);
        self.advertise(ctx, Some(msg.link_id));
        self.exchange_heads(ctx, HeadsTo::Link(msg.link_id));
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
        self.drop_link_transfers(msg.link_id);
        if let (None, Some(url)) = (&link.peer, &link.dialed) {
            // A dial that connected but never became a link (handshake failed or timed out):
            // the peer may be dialled again, as after a failed dial.
            self.clear_dialing(url);
        }
        if let Some(peer_id) = link.peer {
            if let Some(p) = self.peers.get_mut(&peer_id) {
                if p.link == Some(msg.link_id) {
                    p.link = None;
                    p.dialing = false;
                    log::info!("link {} to {peer_id} closed", msg.link_id);
                    self.on_peer_lost(&peer_id);
                    self.publish_peers();
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
        self.clear_dialing(&msg.url);
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

impl MeshActor {
    fn clear_dialing(&mut self, url: &str) {
        for p in self.peers.values_mut().filter(|p| p.address == url) {
            p.dialing = false;
        }
    }

    pub(super) fn on_pong(&mut self, from: &crate::wire::NodeId, echo_ms: u64) {
        if let Some(peer) = self.peers.get_mut(from) {
            peer.rtt_ms = Some(wire::now_ms().saturating_sub(echo_ms) as f64);
        }
    }
}
