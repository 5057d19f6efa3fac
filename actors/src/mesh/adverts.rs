//! Adverts: every member's resources, held by every member (the pool and placement read them).
//!
//! A node sends its own advert over its links when it changes, and to a new link always. In a
//! grid (see [`super::topology`]) a member hears directly only from its row and column, so an
//! advert goes on one step: a node that got one straight from its origin passes it along its
//! row when the origin is in its column, and along its column when the origin is in its row.
//! Every member then gets it twice, by the two ways round the grid, so one dead relay loses
//! nothing. `seq` grows with each change, so a copy that arrives late never replaces a newer
//! one and nothing is passed on twice. A member that holds no advert for a live peer (it just
//! joined, or both ways were down) asks a linked peer for it ([`MeshMessage::AdvertWant`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::MeshActor;
use crate::events::Event;
use crate::wire::{self, MeshMessage, NodeId, NodeRole, NodeStatus};

/// After a task ends, a node reads its own status for an advert at most this often, unless the
/// last read found it saturated (see [`advert_wait`]). Reading it after every task end cost a
/// status read (a round trip to each resource's actor) per package run for a peer, though few
/// of those reads differed from the advert before and were sent (none of 32 for tasks run one
/// after another in `mesh::memory::tests::task_ends_are_advertised_a_few_times_a_second_not_once_each`).
const ADVERT_EVERY: Duration = Duration::from_millis(250);
/// A member missing adverts asks for them at most this often.
const ASK_EVERY: Duration = Duration::from_secs(2);
/// Adverts named in one ask (and so answered in one go).
const MAX_WANTED: usize = 512;

impl MeshActor {
    /// Sends our resources to every peer when they changed (a new link gets them when its
    /// peer's hello says it holds another advert of ours, see [`MeshActor::send_own_advert`]).
    pub(super) fn advertise(&mut self, ctx: &mut Context<Self>) {
        // This read covers whatever a read still due was for.
        if let Some(due) = self.advert_due.take() {
            ctx.cancel_future(due);
        }
        self.advert_read_at = Some(Instant::now());
        self.own_status_reads += 1;
        let node = self.node.clone();
        ctx.spawn(async move { node.status().await }.into_actor(self).map(move |status, act, _| {
            let Ok(mut status) = status else { return };
            status.role = NodeRole::of(&act.me, act.role, &act.view.coordinator);
            act.bench.own = Some(Box::new(status.clone()));
            let fingerprint = advert_fingerprint(&status);
            if fingerprint != act.last_advert {
                act.last_advert = fingerprint;
                // Wall-clock ms, so a restarted node's adverts are newer than its last run's.
                act.advert_seq = (act.advert_seq + 1).max(wire::now_ms());
                act.broadcast(MeshMessage::Advert { seq: act.advert_seq, status: Box::new(status) });
            }
        }));
    }

    /// Advertises a core freed by a task that ended, when [`advert_wait`] says, however many
    /// tasks end meanwhile.
    pub(super) fn advertise_soon(&mut self, ctx: &mut Context<Self>) {
        if self.advert_due.is_some() {
            return;
        }
        let saturated = self.bench.own.as_ref().is_some_and(|own| own.status == wire::NodeState::Busy);
        let wait = advert_wait(self.advert_read_at.map(|at| at.elapsed()), saturated);
        if wait.is_zero() {
            self.advertise(ctx);
            return;
        }
        self.advert_due = Some(ctx.run_later(wait, |act, ctx| {
            act.advert_due = None;
            act.advertise(ctx);
        }));
    }

    /// Our advert as last read, over one link (none yet: the first tick broadcasts it).
    pub(super) fn send_own_advert(&self, link: u64) {
        if let Some(status) = &self.bench.own {
            self.send(link, MeshMessage::Advert { seq: self.advert_seq, status: status.clone() });
        }
    }

    /// Asks a linked peer for the adverts of live members this node has none of.
    pub(super) fn ask_missing_adverts(&mut self) {
        if self.last_advert_ask.is_some_and(|t| t.elapsed() < ASK_EVERY) {
            return;
        }
        let nodes: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.advert.is_none() && p.online() && !p.entry.revoked)
            .map(|(id, _)| id.clone())
            .take(MAX_WANTED)
            .collect();
        let Some(link) = self.gossip_targets(true).first().copied() else { return };
        if nodes.is_empty() {
            return;
        }
        self.last_advert_ask = Some(Instant::now());
        self.send(link, MeshMessage::AdvertWant { nodes });
    }

    /// A peer lacks adverts: it gets each one this node holds.
    pub(super) fn on_advert_want(&self, link_id: u64, nodes: Vec<NodeId>) {
        for id in nodes.iter().take(MAX_WANTED) {
            if let Some(p) = self.peers.get(id) {
                if let Some(status) = &p.advert {
                    let status = Box::new(NodeStatus::clone(status));
                    self.send(link_id, MeshMessage::Advert { seq: p.advert_seq, status });
                }
            }
        }
    }
}

/// How long after a task ended this node reads its status for an advert, `since_last_read` the
/// time since it last did. At once when the last read found it saturated (busy: no core free),
/// which is what keeps a requester from placing work here: placement takes a node whose advert
/// shows a free core, from a snapshot of the pool it reads once a tick
/// (`builds::placement::POOL_SNAPSHOT_TTL`). Otherwise peers already see a free core here and
/// the new figure can wait until [`ADVERT_EVERY`] has passed since the last read.
fn advert_wait(since_last_read: Option<Duration>, saturated: bool) -> Duration {
    match since_last_read {
        Some(elapsed) if !saturated => ADVERT_EVERY.saturating_sub(elapsed),
        _ => Duration::ZERO,
    }
}

/// What of a status is worth re-advertising (not the clock-driven fields).
fn advert_fingerprint(s: &NodeStatus) -> String {
    let caps: Vec<_> = s.resource_status.iter().map(|r| (&r.key, r.capacity, r.available)).collect();
    let b = &s.benchmarks;
    format!(
        "{}|{}|{}|{:?}|{}|{}|{}|{:?}",
        s.status,
        s.role,
        s.resources.fingerprint(),
        caps,
        s.name,
        b.running,
        b.measured_at_ms,
        b.next_due_ms
    )
}

impl MeshActor {
    /// A member's resources, from the member itself or passed on: kept for the coordinator's
    /// view and handed to the pool when newer than what this node holds, and passed on one step
    /// along the grid when it came straight from its origin.
    pub(super) fn on_advert(&mut self, from: NodeId, seq: u64, status: Box<NodeStatus>) {
        let origin = status.node_id.clone();
        if origin == self.me {
            return;
        }
        let Some(peer) = self.peers.get_mut(&origin) else { return };
        // A member's name reaches every user's tables and pages: one that could forge a line or
        // pass for another there is replaced by the node's id (a node of this version refuses
        // such a name of its own at start; an older one may have started with it).
        let mut status = status;
        if !wire::is_display_name(&status.name) {
            if peer.advert.as_ref().is_none_or(|a| a.name != origin.as_str()) {
                log::warn!(
                    "{origin} advertises a name that is not 1 to {} printable characters; shown by its id",
                    wire::MAX_NAME
                );
            }
            status.name = origin.to_string();
        }
        // The origin's own word always counts (a member passing on a forged `seq` cannot
        // shut it out); a copy passed on counts when newer.
        if peer.entry.revoked || (from != origin && peer.advert.is_some() && seq <= peer.advert_seq) {
            return;
        }
        // The origin sends its advert on every new link, and after a heal every member gets
        // new links to the other side at once: the advert this node already holds from the
        // origin itself is not news, and passing each copy on along the grid (a clone and an
        // encryption per link) was most of the mesh's work while a 150-node split healed.
        if from == origin && peer.advert_from_origin && seq == peer.advert_seq && peer.advert.is_some() {
            return;
        }
        let status: Arc<NodeStatus> = Arc::from(status);
        peer.advert = Some(status.clone());
        peer.advert_seq = seq;
        peer.advert_from_origin = from == origin;
        peer.refresh_name();
        self.events.publish_with(|| Event::ResourceUpdate {
            node_id: origin.clone(),
            resources: Box::new(status.resources.clone()),
        });
        self.publish_peers_soon();
        if from != origin || self.topology.full_mesh() {
            return;
        }
        let Some(along_column) = self.topology.same_column(&self.me, &origin) else { return };
        // Origin in our column: pass it along our row, and the other way round.
        let next: Vec<u64> = self
            .peers
            .iter()
            .filter(|(id, _)| **id != origin && self.topology.in_line(&self.me, id, along_column))
            .filter_map(|(_, p)| p.link)
            .collect();
        for link in next {
            self.send(link, MeshMessage::Advert { seq, status: Box::new(NodeStatus::clone(&status)) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_end_is_read_at_once_unless_a_read_of_a_node_with_room_is_recent() {
        let ms = Duration::from_millis;
        assert_eq!(advert_wait(None, false), Duration::ZERO, "never read: at once");
        assert_eq!(advert_wait(Some(ms(100)), false), ms(150), "read 100 ms ago: the rest of the 250");
        assert_eq!(advert_wait(Some(ms(250)), false), Duration::ZERO);
        assert_eq!(advert_wait(Some(ms(900)), false), Duration::ZERO);
        // Peers last saw no free core here: the freed one is news to placement now.
        assert_eq!(advert_wait(Some(ms(10)), true), Duration::ZERO);
    }
}
