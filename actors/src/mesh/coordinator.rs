//! The coordinator: a deterministic choice from each node's live view with an epoch that only
//! grows (see ARCHITECTURE.md for the safety argument), and the benchmark turns it hands out.

use actix::prelude::*;
use tokio::sync::mpsc::UnboundedSender;

use super::{MeshActor, OFFLINE_AFTER};
use crate::wire::{self, CoordinatorView, MeshMessage, NodeId, NodeState, NodeStatus, Role};

/// A node that could coordinate, as this node sees it. It borrows the id: every liveness change
/// on every node chooses again from all N members, and at 150 simulated nodes under churn
/// copying each id for that was a tenth of the CPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate<'a> {
    pub id: &'a NodeId,
    pub weight: f64,
    pub role: Role,
    /// This node itself, or a peer that is linked and not declared down by gossip.
    pub live: bool,
}

/// DESIGN.md's rule: among live nodes that are not observers, the highest priority weight
/// coordinates; ties go to the smallest node id. Every node applies it to its own live view,
/// so nodes that see the same members choose the same coordinator. `None` only when every
/// live node is an observer.
pub fn choose_coordinator<'a>(candidates: impl IntoIterator<Item = Candidate<'a>>) -> Option<NodeId> {
    candidates
        .into_iter()
        .filter(|c| c.live && c.role != Role::Observer)
        .max_by(|a, b| a.weight.total_cmp(&b.weight).then_with(|| b.id.cmp(a.id)))
        .map(|c| c.id.clone())
}

/// The view after a membership change: a different coordinator gets an epoch above any this
/// node has seen, so epochs only grow; the same coordinator keeps its epoch.
pub fn next_view<'a>(
    current: &CoordinatorView,
    highest_seen: u64,
    candidates: impl IntoIterator<Item = Candidate<'a>>,
) -> CoordinatorView {
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

impl MeshActor {
    pub(super) fn candidates(&self) -> impl Iterator<Item = Candidate<'_>> {
        let me = Candidate { id: &self.me, weight: self.priority_weight, role: self.role, live: true };
        std::iter::once(me).chain(self.peers.iter().filter(|(_, p)| !p.entry.revoked).map(|(id, p)| Candidate {
            id,
            weight: p.advert.as_ref().map_or(1.0, |a| a.priority_weight),
            role: p.entry.role,
            live: p.online(),
        }))
    }

    pub(super) fn recompute_coordinator(&mut self) {
        let next = next_view(&self.view, self.highest_epoch, self.candidates());
        if next.coordinator != self.view.coordinator {
            log::info!("coordinator is now {} (epoch {})", next.coordinator, next.epoch);
        }
        self.view = next;
        self.saw_epoch(self.view.epoch);
    }

    /// Remembers the highest epoch seen, on disk too: a restarted node never goes back to an
    /// older epoch (owners fence requests by it).
    pub(super) fn saw_epoch(&mut self, epoch: u64) {
        if epoch <= self.highest_epoch {
            return;
        }
        self.highest_epoch = epoch;
        let store = self.store.clone();
        actix::spawn(async move {
            let saved = store
                .run(move |c| {
                    c.execute(
                        "INSERT INTO coordinator_epoch (id, epoch) VALUES (1, ?1) ON CONFLICT(id) DO UPDATE SET epoch = max(epoch, ?1)",
                        [epoch as i64],
                    )?;
                    Ok(())
                })
                .await;
            if let Err(e) = saved {
                log::warn!("saving the coordinator epoch: {e}");
            }
        });
    }

    /// The coordinator's half of plan §8.3: at most one node benchmarks at a time, the one most
    /// overdue first, and never one that is busy with builds. A grant is over when the node's
    /// advert shows results newer than the grant, when it goes offline, when it has not started
    /// within 15 s (a grant lost in a coordinator change), or after ten minutes.
    pub(super) fn schedule_benchmarks(&mut self) {
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
            .filter(|(_, s)| s.status != NodeState::Busy)
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

/// The benchmark schedule this node runs when it coordinates, and its own turns.
pub(super) struct BenchSchedule {
    /// Where a grant for this node's own scheduled benchmark goes (set by the node at start).
    pub(super) sink: Option<UnboundedSender<()>>,
    /// The node granted a run, when (wall ms), and whether it has been seen running.
    pub(super) granted: Option<(NodeId, u64, bool)>,
    /// This node's latest status, for the schedule's view of itself.
    pub(super) own: Option<Box<NodeStatus>>,
    pub(super) started: std::time::Instant,
}

impl BenchSchedule {
    pub(super) fn new() -> BenchSchedule {
        BenchSchedule { sink: None, granted: None, own: None, started: std::time::Instant::now() }
    }
}

impl MeshActor {
    /// A heartbeat carries the sender's view: answer, and converge on the higher epoch.
    pub(super) fn on_ping(&mut self, link_id: u64, sent_ms: u64, view: CoordinatorView) {
        self.send(link_id, MeshMessage::Pong { echo_ms: sent_ms });
        self.saw_epoch(view.epoch);
        self.view = adopt_epoch(&self.view, &view);
    }

    /// Only the coordinator this node recognises (or a newer one) hands out turns.
    pub(super) fn on_benchmark_grant(&mut self, from: NodeId, epoch: u64) {
        if from == self.view.coordinator || epoch > self.view.epoch {
            if let Some(sink) = &self.bench.sink {
                let _ = sink.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId::parse(&format!("{n:016x}")).expect("id")
    }

    static IDS: std::sync::LazyLock<Vec<NodeId>> = std::sync::LazyLock::new(|| (0..10).map(id).collect());

    fn cand(n: u8, weight: f64, role: Role, live: bool) -> Candidate<'static> {
        Candidate { id: &IDS[usize::from(n)], weight, role, live }
    }

    #[test]
    fn highest_weight_then_smallest_id_among_live_non_observers() {
        let all =
            [cand(3, 1.0, Role::Builder, true), cand(1, 1.0, Role::Builder, true), cand(2, 1.0, Role::Admin, true)];
        assert_eq!(choose_coordinator(all), Some(id(1)));
        let weighted = [cand(3, 2.0, Role::Builder, true), cand(1, 1.0, Role::Builder, true)];
        assert_eq!(choose_coordinator(weighted), Some(id(3)));
        let dead = [cand(1, 5.0, Role::Builder, false), cand(2, 1.0, Role::Builder, true)];
        assert_eq!(choose_coordinator(dead), Some(id(2)));
        let observer = [cand(1, 9.0, Role::Observer, true), cand(2, 1.0, Role::Builder, true)];
        assert_eq!(choose_coordinator(observer), Some(id(2)));
        assert_eq!(choose_coordinator([cand(1, 1.0, Role::Observer, true)]), None);
    }

    #[test]
    fn the_same_view_gives_the_same_choice_in_any_order() {
        let mut list =
            [cand(9, 1.0, Role::Builder, true), cand(4, 1.0, Role::Builder, true), cand(7, 1.0, Role::Builder, true)];
        let first = choose_coordinator(list);
        list.reverse();
        assert_eq!(choose_coordinator(list), first);
    }

    #[test]
    fn epochs_only_grow_and_converge() {
        let start = CoordinatorView { coordinator: id(1), epoch: 3 };
        let same = next_view(&start, 3, [cand(1, 1.0, Role::Builder, true), cand(2, 1.0, Role::Builder, true)]);
        assert_eq!(same, start, "no change, no new epoch");
        let failover = next_view(&start, 7, [cand(1, 1.0, Role::Builder, false), cand(2, 1.0, Role::Builder, true)]);
        assert_eq!(failover, CoordinatorView { coordinator: id(2), epoch: 8 });
        let back = next_view(&failover, 8, [cand(1, 1.0, Role::Builder, true), cand(2, 1.0, Role::Builder, true)]);
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
        assert_eq!(choose_coordinator(side_a), Some(id(1)));
        assert_eq!(choose_coordinator(side_b), Some(id(3)));
        let healed = [
            cand(1, 1.0, Role::Builder, true),
            cand(2, 1.0, Role::Builder, true),
            cand(3, 1.0, Role::Builder, true),
            cand(4, 1.0, Role::Builder, true),
        ];
        assert_eq!(choose_coordinator(healed), Some(id(1)));
    }
}
