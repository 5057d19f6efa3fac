//! Live events for `/ws` subscribers (plan §13.2): a broadcast channel any part of the node
//! can publish to. Slow subscribers miss events rather than slowing the node down.

use serde::Serialize;
use tokio::sync::broadcast;

use crate::wire::{LedgerEntry, NodeId, NodeResources, NodeState};

/// Events kept for a subscriber that has not read them yet.
const BACKLOG: usize = 256;

/// One event, in the JSON shape of plan §13.2.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    NodeStatus { node_id: NodeId, status: NodeState, reason: Option<String> },
    ResourceUpdate { node_id: NodeId, resources: Box<NodeResources> },
    LedgerEntry { entry: Box<LedgerEntry> },
    BuildProgress { build_id: String, package: String, status: String, progress: f64, output: Option<String> },
}

impl Event {
    /// The subscription channel the event belongs to.
    pub fn channel(&self) -> &'static str {
        match self {
            Event::NodeStatus { .. } => "nodes",
            Event::ResourceUpdate { .. } => "resources",
            Event::LedgerEntry { .. } => "ledger",
            Event::BuildProgress { .. } => "builds",
        }
    }
}

#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus { tx: broadcast::channel(BACKLOG).0 }
    }
}

impl EventBus {
    pub fn publish(&self, event: Event) {
        // No subscribers is fine.
        let _ = self.tx.send(event);
    }

    /// Publishes the event `make` builds, only if anyone listens: the node publishes several
    /// per package (each ledger entry, each package's progress), each a copy of what it carries,
    /// and usually nobody has `/ws` open.
    pub fn publish_with(&self, make: impl FnOnce() -> Event) {
        if self.tx.receiver_count() > 0 {
            self.publish(make());
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
