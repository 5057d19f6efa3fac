//! Links: which peers to link to (the [`super::topology`], plus links opened for work),
//! starting a bridge on a fresh socket, admitting the peer its handshake proved (and keeping
//! exactly one link per peer when both dial at once), closing idle ones, and redialling.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use super::bridge::{self, BridgeActor, Outgoing};
use super::sync::HeadsTo;
use super::topology::{self, Topology};
use super::{noise, Dialer, Link, MeshActor, MeshHandle, MAX_BACKOFF, MIN_BACKOFF};
use crate::wire::{self, Hello, MeshMessage, NodeId};

/// A link opened for work (a task, a network test) outside the topology is closed by the node
/// that opened it once it has carried no work for this long.
const ON_DEMAND_IDLE: Duration = Duration::from_secs(60);
/// A link outside the topology that never carried work (the one a joining node dials its
/// bootstrap address with, or one the grid dropped as the mesh grew) is closed this long after
/// it opened, once a link the topology wants is up.
const BOOTSTRAP_KEEP: Duration = Duration::from_secs(2);
/// How long work waits for a link opened for it.
const LINK_WAIT: Duration = Duration::from_secs(10);

/// Resolves once a link opened for work is up; an error when it did not come up in time.
pub(super) type LinkOpened = Pin<Box<dyn Future<Output = Result<(), ()>>>>;

impl MeshActor {
    /// Recomputes which peers the topology links this node to (the roster may have changed).
    pub(super) fn apply_topology(&mut self) {
        let Some(own) = &self.own_entry else {
            // Not on the roster (yet): link to whoever we can.
            self.peers.values_mut().for_each(|p| p.wanted = true);
            return;
        };
        let members = || std::iter::once(own).chain(self.peers.values().map(|p| &p.entry));
        // Every tick asks; the grid is computed again only when the roster changed (it is an
        // allocation per member, on every node, every second).
        let fingerprint = topology::roster_fingerprint(members());
        if fingerprint == self.topology_of && self.topology.members() > 0 {
            return;
        }
        self.topology = Topology::new(members());
        self.topology_of = fingerprint;
        let before = self.peers.values().filter(|p| p.wanted).count();
        for (id, p) in self.peers.iter_mut() {
            p.wanted = self.topology.linked(&self.me, id);
        }
        let after = self.peers.values().filter(|p| p.wanted).count();
        if after != before {
            let shape = if self.topology.full_mesh() { "a full mesh" } else { "a grid" };
            log::info!("topology: {shape}, linking to {after} of {} peers", self.peers.len());
        }
    }

    /// The link to do work with `peer` over: `Ok` when there is one; when the peer is live but
    /// not linked, a link is dialled now and `Err(Some(opened))` says when it is up; `Err(None)`
    /// when the peer is not online. Either way the link is kept [`ON_DEMAND_IDLE`] from now.
    pub(super) fn link_for_work(&mut self, peer: &NodeId, ctx: &mut Context<Self>) -> Result<u64, Option<LinkOpened>> {
        let now = Instant::now();
        let Some(p) = self.peers.get_mut(peer).filter(|p| p.online()) else { return Err(None) };
        p.on_demand_until = Some(now + ON_DEMAND_IDLE);
        if let Some(link) = p.link {
            return Ok(link);
        }
        p.next_dial = p.next_dial.min(now);
        let (tx, rx) = oneshot::channel();
        self.link_waiters.push((peer.clone(), tx));
        self.dial_missing(now, ctx);
        Err(Some(Box::pin(async move {
            match tokio::time::timeout(LINK_WAIT, rx).await {
                Ok(Ok(())) => Ok(()),
                _ => Err(()),
            }
        })))
    }

    /// Closes the links this node opened outside the topology once they have carried no work
    /// for [`ON_DEMAND_IDLE`] (the peer's own links to us are the peer's to close).
    pub(super) fn close_idle_links(&mut self, now: Instant) {
        self.link_waiters.retain(|(_, tx)| !tx.is_closed());
        let grid_up = self.peers.values().any(|p| p.wanted && p.link.is_some());
        let idle: Vec<u64> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.wanted && p.on_demand_until.is_none_or(|t| t <= now))
            .filter_map(|(id, p)| p.link.map(|l| (id, l)))
            .filter(|(id, l)| {
                let keep = match self.peers.get(*id).is_some_and(|p| p.on_demand_until.is_some()) {
                    true => ON_DEMAND_IDLE,
                    false if grid_up => BOOTSTRAP_KEEP,
                    false => return false,
                };
                self.links.get(l).is_some_and(|link| link.initiator && now.duration_since(link.opened) >= keep)
                    && !self.work_with(id)
                    && !self.transfers_on(*l)
            })
            .map(|(_, l)| l)
            .collect();
        for link in idle.iter().filter_map(|l| self.links.get(l)) {
            link.addr.do_send(bridge::Close);
        }
    }

    pub(super) fn dial_missing(&mut self, now: Instant, ctx: &mut Context<Self>) {
        let Some(dialer) = self.dialer.clone() else { return };
        // Removed from its mesh, a node has nobody to link to: every member refuses it.
        if self.removed() {
            return;
        }
        let handle = MeshHandle { addr: ctx.address() };
        for p in self.peers.values_mut() {
            let needed = p.wanted || p.on_demand_until.is_some_and(|t| t > now);
            if needed
                && p.link.is_none()
                && !p.dialing
                && !p.entry.revoked
                && p.next_dial <= now
                && !p.address.is_empty()
            {
                p.dialing = true;
                p.next_dial = now + p.backoff;
                p.backoff = (p.backoff * 2).min(MAX_BACKOFF);
                dialer(p.address.to_string(), handle.clone());
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
        let opened = Instant::now();
        let link = Link { addr: addr.clone(), initiator, dialed: msg.dialed, peer: None, dismissed: None, opened };
        self.links.insert(id, link);
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
            // A member the key holder removed is told so (its revoked entry, which it verifies
            // with the mesh key) and stops dialling; without it, it redialled every member every
            // second for ever, each refusal a warning here.
            let removed = self.peers.iter().find(|(_, p)| {
                p.entry.noise_public == remote
                    && p.entry.revoked
                    && self.mesh.as_ref().is_some_and(|m| p.entry.verify(m).is_ok())
            });
            if let Some((id, p)) = removed {
                log::info!("link {}: {id} was removed from the mesh; told so and closed", msg.link_id);
                let (id, body) = (id.clone(), MeshMessage::Roster { entries: vec![p.entry.clone()] });
                if let Some(link) = self.links.get_mut(&msg.link_id) {
                    link.dismissed = Some(id.clone());
                }
                return msg.bridge.do_send(bridge::Dismiss { peer: id, body });
            }
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
        let your_advert_seq = if p.advert.is_some() { p.advert_seq } else { 0 };
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
            your_advert_seq,
        };
        self.send(msg.link_id, MeshMessage::Hello(hello));
        self.swim_link_up(ctx, &peer_id);
        self.exchange_heads(ctx, HeadsTo::Link(msg.link_id));
        let (ready, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.link_waiters).into_iter().partition(|(p, _)| *p == peer_id);
        self.link_waiters = waiting;
        for (_, tx) in ready {
            let _ = tx.send(());
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
        for p in self.peers.values_mut().filter(|p| *p.address == *url) {
            p.dialing = false;
        }
    }

    pub(super) fn on_pong(&mut self, from: &crate::wire::NodeId, echo_ms: u64) {
        if let Some(peer) = self.peers.get_mut(from) {
            peer.rtt_ms = Some(wire::now_ms().saturating_sub(echo_ms) as f64);
        }
    }
}
