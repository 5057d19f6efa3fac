//! Adverts: this node's resources sent to every peer when they change.

use actix::prelude::*;

use super::MeshActor;
use crate::events::Event;
use crate::wire::{MeshMessage, NodeId, NodeRole, NodeStatus};

impl MeshActor {
    /// Sends our resources to every peer when they changed, and to a new link always.
    pub(super) fn advertise(&mut self, ctx: &mut Context<Self>, new_link: Option<u64>) {
        let node = self.node.clone();
        ctx.spawn(async move { node.status().await }.into_actor(self).map(move |status, act, _| {
            let Ok(mut status) = status else { return };
            status.role = NodeRole::of(&act.me, act.role, &act.view.coordinator);
            act.bench.own = Some(Box::new(status.clone()));
            let fingerprint = advert_fingerprint(&status);
            if fingerprint != act.last_advert {
                act.last_advert = fingerprint;
                act.broadcast(MeshMessage::Advert(Box::new(status)));
            } else if let Some(link) = new_link {
                act.send(link, MeshMessage::Advert(Box::new(status)));
            }
        }));
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
    /// A peer's resources: kept for the coordinator's view and handed to the pool.
    pub(super) fn on_advert(&mut self, from: NodeId, status: Box<NodeStatus>) {
        let Some(peer) = self.peers.get_mut(&from) else { return };
        if status.node_id != from {
            return;
        }
        let resources = Box::new(status.resources.clone());
        peer.advert = Some(std::sync::Arc::from(status));
        self.events.publish(Event::ResourceUpdate { node_id: from, resources });
        self.publish_peers();
    }
}
