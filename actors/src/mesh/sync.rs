//! Ledger sync. What a node writes it pushes to every linked peer at its next tick, and fresh
//! entries new to a node go on at once along the grid, two hops from their origin in all
//! ([`MeshActor::pass_on`]). The rest spreads by anti-entropy: every tick a node sends a digest
//! of its heads to a few random peers, and to both ends of a new link; a node whose heads
//! differ sends its heads (one such ask at a time), and the other answers with what it lacks in
//! bounded batches that each fit one frame; received batches are checked and stored by the
//! ledger actor, our heads move with them, and a batch that ends a full answer asks for what
//! follows at once ([`Pulls`]), so a long ledger flows at the speed of checking it. `SyncNow`
//! sends the heads to everyone.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::bridge::frame_batches;
use super::{MeshActor, SYNC_BATCH};
use crate::events::Event;
use crate::wire::{self, Head, MeshMessage, NodeId};

impl MeshActor {
    /// Reads our ledger heads and sends them on (see [`HeadsTo`]).
    pub(super) fn exchange_heads(&mut self, ctx: &mut Context<Self>, to: HeadsTo) {
        let ledger = self.ledger.clone();
        ctx.spawn(async move { ledger.heads().await }.into_actor(self).map(move |heads, act, ctx| match heads {
            Ok(heads) => {
                let digest = heads_digest(&heads);
                let own_seq = heads.iter().find(|h| h.origin == act.me).map_or(0, |h| h.seq);
                act.heads = (digest.clone(), heads.clone());
                match to {
                    HeadsTo::Link(link) => act.send(link, MeshMessage::LedgerDigest { digest }),
                    HeadsTo::Everyone => {
                        let links: Vec<u64> = act.peers.values().filter_map(|p| p.link).collect();
                        for link in links {
                            act.ask_on_link(link, heads.to_vec());
                        }
                    }
                    HeadsTo::Gossip => {
                        act.gossip_digest(digest);
                        act.push_own_entries(ctx, own_seq);
                    }
                }
            }
            Err(e) => log::warn!("ledger heads: {e}"),
        }));
    }

    /// The tick's digest, to a few random peers: entries this node did not write spread by
    /// those exchanges.
    fn gossip_digest(&self, digest: String) {
        for link in self.gossip_targets(false) {
            self.send(link, MeshMessage::LedgerDigest { digest: digest.clone() });
        }
    }

    /// The entries this node wrote since the last tick go to every linked peer as they are
    /// (up to [`SYNC_BATCH`]; a peer that gets a full batch asks for the rest): one hop instead
    /// of a digest, an ask and an answer per peer, so a fresh entry is everywhere within a tick.
    fn push_own_entries(&mut self, ctx: &mut Context<Self>, own_seq: u64) {
        // The first tick only notes where our chain is: peers take older entries by asking.
        let Some(pushed) = self.pushed_own_seq.replace(own_seq) else { return };
        if own_seq <= pushed {
            self.pushed_own_seq = Some(pushed);
            return;
        }
        let (ledger, me) = (self.ledger.clone(), self.me.clone());
        ctx.spawn(async move { ledger.entries_after(me, pushed, SYNC_BATCH).await }.into_actor(self).map(
            |entries, act, _| match entries {
                Ok(entries) => {
                    for batch in split_batch(entries) {
                        act.broadcast(MeshMessage::LedgerEntries { entries: batch, hop: 1 });
                    }
                }
                Err(e) => log::warn!("pushing our new ledger entries: {e}"),
            },
        ));
    }

    /// Sends our `heads` over `link` to ask its peer for what we lack, and remembers the ask so
    /// that the answer's end can be told from its middle ([`Pull::next_ask`]).
    fn ask_on_link(&mut self, link: u64, heads: Vec<Head>) {
        if let Some(peer) = self.links.get(&link).and_then(|l| l.peer.clone()) {
            self.pulls.peers.entry(peer).or_default().record_ask(&heads);
        }
        self.send(link, MeshMessage::LedgerHeads { heads });
    }

    /// A peer's digest: when its heads differ from ours, it gets ours and answers with what we
    /// lack (and, getting our digest too, sends its heads for us to answer). One such ask per
    /// [`DIGEST_ASK_GAP`]: after a write or a heal every peer's digest differs from ours at
    /// once, and asking each of them would fetch the same entries from all of them; the
    /// answer moves our heads ([`MeshActor::note_stored`]), and a digest that still differs
    /// after the gap asks again with those.
    pub(super) fn on_ledger_digest(&mut self, link_id: u64, digest: String) {
        if digest == self.heads.0 || self.heads.1.is_empty() {
            return;
        }
        if self.last_digest_ask.is_some_and(|at| at.elapsed() < DIGEST_ASK_GAP) {
            return;
        }
        self.last_digest_ask = Some(Instant::now());
        self.ask_on_link(link_id, self.heads.1.to_vec());
    }

    /// Entries the ledger stored from a peer move our heads at once, so the next digest is
    /// compared with (and the next ask carries) what we hold, not what we held at the tick.
    fn note_stored(&mut self, stored: &[wire::LedgerEntry]) {
        if stored.is_empty() {
            return;
        }
        let heads = std::sync::Arc::make_mut(&mut self.heads.1);
        for e in stored {
            crate::ledger::advance_head(heads, e);
        }
        self.heads.0 = heads_digest(&self.heads.1);
    }

    /// Answers a peer's heads with the entries it lacks, in bounded batches.
    pub(super) fn answer_heads(&mut self, ctx: &mut Context<Self>, link_id: u64, theirs: Vec<Head>) {
        let ledger = self.ledger.clone();
        ctx.spawn(
            async move {
                let mine = ledger.heads().await?;
                // Every origin's entries in one answer, split only where a frame is full: after a
                // heal a peer lacks one or two entries of each of many origins.
                let mut lacking = Vec::new();
                for head in mine.iter() {
                    let their_seq = theirs.iter().find(|h| h.origin == head.origin).map_or(0, |h| h.seq);
                    if head.seq <= their_seq {
                        continue;
                    }
                    lacking.extend(ledger.entries_after(head.origin.clone(), their_seq, SYNC_BATCH).await?);
                }
                Ok::<_, crate::store::StoreError>(split_batch(lacking))
            }
            .into_actor(self)
            .map(move |batches, act, _| match batches {
                Ok(batches) => {
                    for entries in batches {
                        act.send(link_id, MeshMessage::LedgerEntries { entries, hop: 0 });
                    }
                }
                Err(e) => log::warn!("ledger sync: {e}"),
            }),
        );
    }
}

/// Who gets this node's ledger heads.
pub(super) enum HeadsTo {
    /// A new link: our digest, so a side that lacks something asks for it. Not the heads
    /// themselves: a node that joins, or comes back from a partition, gets a new link to every
    /// peer at once, and heads on each would fetch the whole ledger from every one of them
    /// (at 150 nodes a join took 30 s); through the digest it asks one peer at a time
    /// ([`MeshActor::on_ledger_digest`]).
    Link(u64),
    /// Every peer, the heads themselves (`ledger sync`).
    Everyone,
    /// The tick: a digest, see [`MeshActor::gossip_digest`].
    Gossip,
}

/// The digest of a set of heads: BLAKE3 over each origin's id, seq and hash, in origin order.
pub(crate) fn heads_digest(heads: &[Head]) -> String {
    let mut sorted: Vec<&Head> = heads.iter().collect();
    sorted.sort_by(|a, b| a.origin.cmp(&b.origin));
    let mut hasher = blake3::Hasher::new();
    for h in sorted {
        hasher.update(h.origin.as_str().as_bytes());
        hasher.update(&h.seq.to_le_bytes());
        hasher.update(h.hash.as_bytes());
    }
    hasher.finalize().to_hex().to_string()
}

/// Whether `e` is the head of its chain in `heads` (sorted by origin), hash and all.
fn is_head(heads: &[Head], e: &wire::LedgerEntry) -> bool {
    heads.binary_search_by(|h| h.origin.cmp(&e.origin)).is_ok_and(|i| heads[i].seq == e.seq && heads[i].hash == e.hash)
}

/// Splits entries into batches that each fit one frame.
pub(super) fn split_batch(entries: Vec<wire::LedgerEntry>) -> Vec<Vec<wire::LedgerEntry>> {
    // Only an entry written before entries were bounded can be too large for a frame.
    frame_batches(entries, |e| format!("ledger entry {}#{}", e.origin, e.seq))
}

/// Forces a ledger exchange with every peer now; returns how many were asked.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct SyncNow;

impl Handler<SyncNow> for MeshActor {
    type Result = usize;

    fn handle(&mut self, _: SyncNow, ctx: &mut Context<Self>) -> usize {
        self.exchange_heads(ctx, HeadsTo::Everyone);
        self.peers.values().filter(|p| p.link.is_some()).count()
    }
}

/// Received batches a peer may have queued at the ledger, unchecked, before this node asks it
/// for more: enough to keep the sender reading while the ledger checks, and a bound on memory.
const PULL_WINDOW: usize = 4;
/// A pull nothing arrived for in this long is forgotten; the tick's heads exchange starts anew.
const PULL_IDLE: Duration = Duration::from_secs(2);
/// Entries written this recently (by their origin's clock) are passed on as news
/// ([`MeshActor::pass_on`]); older ones travel by digests and asks only.
const PASS_ON_FRESH: Duration = Duration::from_secs(30);
/// At most one ask for a differing digest this often (see [`MeshActor::on_ledger_digest`]).
const DIGEST_ASK_GAP: Duration = Duration::from_millis(250);

/// What this node is pulling from each peer. A batch that completes the answer to the last ask
/// (or arrives unasked, from the tick's exchange) asks for what follows at once, before it is
/// checked, while fewer than [`PULL_WINDOW`] batches wait at the ledger; so a fresh node takes a
/// long ledger at the speed of checking it rather than one batch per tick, in bounded memory.
#[derive(Default)]
pub(super) struct Pulls {
    peers: HashMap<NodeId, Pull>,
}

#[derive(Default)]
struct Pull {
    /// Origin → the seq last asked after.
    asked: HashMap<NodeId, u64>,
    /// The last ask carried all our heads: an origin not in `asked` was asked after 0.
    whole_heads: bool,
    /// Batches handed to the ledger and not stored (or refused) yet.
    in_flight: usize,
    /// An ask held back until the ledger catches up.
    deferred: Option<Vec<Head>>,
    last_batch: Option<Instant>,
    /// Origin → the last seq of this pull's batches handed to the ledger: an answer larger than
    /// a frame comes as several batches, and the second may arrive before the first is stored.
    taken: HashMap<NodeId, u64>,
}

impl Pull {
    /// We sent `heads` to this peer: its answer is up to SYNC_BATCH entries past each of them,
    /// and of every origin they do not name.
    fn record_ask(&mut self, heads: &[Head]) {
        self.asked = heads.iter().map(|h| (h.origin.clone(), h.seq)).collect();
        self.whole_heads = true;
        self.last_batch = Some(Instant::now());
    }

    /// The heads to ask `entries`' sender with, when the batch ends an answer: our heads with
    /// each origin of the batch moved to the batch's last entry.
    fn next_ask(&mut self, ours: &[Head], entries: &[wire::LedgerEntry]) -> Option<Vec<Head>> {
        if self.last_batch.is_none_or(|t| t.elapsed() > PULL_IDLE) {
            self.asked.clear();
            self.taken.clear();
            self.whole_heads = false;
        }
        self.last_batch = Some(Instant::now());
        let mut tails: HashMap<&NodeId, &wire::LedgerEntry> = HashMap::new();
        for e in entries {
            let tail = tails.entry(&e.origin).or_insert(e);
            if e.seq > tail.seq {
                *tail = e;
            }
        }
        // An answer carries up to SYNC_BATCH entries after what was asked; one that reached that
        // far may have more behind it. An origin our last ask did not name was asked after 0;
        // a batch that came unasked (a peer pushing what it wrote) is measured from our head.
        let whole_heads = self.whole_heads;
        let our_seq = |origin: &NodeId| ours.iter().find(|h| h.origin == *origin).map_or(0, |h| h.seq);
        let ends: Vec<&wire::LedgerEntry> = tails
            .into_values()
            .filter(|e| {
                let after = match self.asked.get(&e.origin) {
                    Some(after) => *after,
                    None if whole_heads => 0,
                    None => our_seq(&e.origin),
                };
                e.seq >= after + SYNC_BATCH as u64
            })
            .collect();
        if ends.is_empty() {
            return None;
        }
        let mut heads: Vec<Head> = ours.to_vec();
        for e in ends {
            self.asked.insert(e.origin.clone(), e.seq);
            crate::ledger::advance_head(&mut heads, e);
        }
        Some(heads)
    }

    /// Leaves out the origins of a batch that would leave a gap after our head `ours`: a push
    /// of entries a lagging node has not reached yet. The ledger would refuse the whole batch
    /// (and the refusal would drop the pull under way from that peer); the chain's earlier
    /// entries come by asking, and these with them. An answer to an ask starts where we asked,
    /// and the rest of an answer where its batch before it ended.
    fn keep_joinable(&mut self, ours: &[Head], entries: &mut Vec<wire::LedgerEntry>) {
        let mut first: HashMap<NodeId, u64> = HashMap::new();
        for e in entries.iter() {
            let seq = first.entry(e.origin.clone()).or_insert(e.seq);
            *seq = (*seq).min(e.seq);
        }
        let joins = |origin: &NodeId, seq: u64| {
            let head = ours.iter().find(|h| h.origin == *origin).map_or(0, |h| h.seq);
            let follows = |last: Option<&u64>| last.is_some_and(|last| seq == last + 1);
            seq <= head + 1 || follows(self.asked.get(origin)) || follows(self.taken.get(origin))
        };
        let gaps: Vec<NodeId> = first.into_iter().filter(|(o, seq)| !joins(o, *seq)).map(|(o, _)| o).collect();
        if !gaps.is_empty() {
            entries.retain(|e| !gaps.contains(&e.origin));
        }
        for e in entries.iter() {
            let last = self.taken.entry(e.origin.clone()).or_insert(e.seq);
            *last = (*last).max(e.seq);
        }
    }
}

impl MeshActor {
    /// A peer's batch: asks for what follows (see [`Pulls`]), then the ledger checks every
    /// entry (chain, hash, signature) before storing.
    pub(super) fn on_entries(
        &mut self,
        ctx: &mut Context<Self>,
        from: NodeId,
        mut entries: Vec<wire::LedgerEntry>,
        hop: u8,
    ) {
        let pull = self.pulls.peers.entry(from.clone()).or_default();
        pull.keep_joinable(&self.heads.1, &mut entries);
        if entries.is_empty() {
            return;
        }
        if let Some(ask) = pull.next_ask(&self.heads.1, &entries) {
            pull.deferred = Some(ask);
        }
        // What a fresh entry brings is passed on by several peers, so most copies arrive after
        // the first: an entry that is our head of its chain, hash and all, is held already and
        // not worth a ledger transaction (after a 150-node heal two in three batches were only
        // such copies, each a transaction on the ledger's thread). Any other entry at or below
        // our head still goes to the ledger, which tells a duplicate from an equivocation.
        entries.retain(|e| !is_head(&self.heads.1, e));
        if entries.is_empty() {
            self.ask_more(&from);
            return;
        }
        if let Some(pull) = self.pulls.peers.get_mut(&from) {
            pull.in_flight += 1;
        }
        self.ask_more(&from);
        let (ledger, events) = (self.ledger.clone(), self.events.clone());
        let stored = async move { ledger.insert_remote(entries).await };
        ctx.spawn(stored.into_actor(self).map(move |outcome, act, _| {
            if let Some(pull) = act.pulls.peers.get_mut(&from) {
                pull.in_flight = pull.in_flight.saturating_sub(1);
            }
            match outcome {
                Ok(outcome) => {
                    for (origin, seq) in &outcome.equivocations {
                        log::error!(
                            "node {origin} equivocated at seq {seq}: two different signed entries; kept as proof"
                        );
                    }
                    act.note_stored(&outcome.stored);
                    act.note_departures(&outcome.stored);
                    act.pass_on(&from, hop, &outcome.stored);
                    for entry in outcome.stored {
                        events.publish(Event::LedgerEntry { entry: Box::new(entry) });
                    }
                    act.ask_more(&from);
                }
                Err(e) => {
                    log::warn!("refused a ledger batch from {from}: {e}");
                    // What was asked on its strength is moot; the tick's exchange starts over.
                    act.pulls.peers.remove(&from);
                }
            }
        }));
    }

    /// Fresh entries new to this node go on at once, along the grid, by how far they came
    /// (`hop`, see [`MeshMessage::LedgerEntries`]): an origin pushes what it wrote to its row
    /// and column (hop 1); a member that gets it from them passes it along its other line —
    /// its row when it came along its column, its column when along its row — as hop 2, which
    /// goes no further. So an entry reaches every member in two hops, by the two ways round the
    /// grid (as adverts do), each member getting about two copies. What a member fetched with
    /// an ask (hop 0: after a heal, from the other side) it sends on as if it had written it:
    /// to its row and column as hop 1. Passed on to a few random links instead, as before, an
    /// entry took about six hops to reach half the members and the last few waited for the
    /// digests (after a 150-node heal: half the nodes after ~4.5 s, all after ~13 s). The
    /// digests still mend whatever this misses. Only news is passed on (written within
    /// [`PASS_ON_FRESH`] by its origin's clock): a fresh node taking a long ledger would
    /// otherwise send all of it on to peers that hold it. In a full mesh an entry from its
    /// origin has reached everyone already, and the rest go to a few random links.
    fn pass_on(&self, from: &NodeId, hop: u8, stored: &[wire::LedgerEntry]) {
        let full_mesh = self.topology.full_mesh();
        if hop >= 2 && !full_mesh {
            return;
        }
        let now = wire::now_ms();
        let fresh: Vec<wire::LedgerEntry> = stored
            .iter()
            .filter(|e| now.abs_diff(e.hlc.wall_ms) < PASS_ON_FRESH.as_millis() as u64)
            .filter(|e| !(full_mesh && e.origin == *from))
            .cloned()
            .collect();
        if fresh.is_empty() {
            return;
        }
        let from_link = self.peers.get(from).and_then(|p| p.link);
        let (targets, next_hop): (Vec<u64>, u8) = if full_mesh {
            (self.gossip_targets(false), 0)
        } else {
            // Hop 0 (fetched): both lines, as if written here. Hop 1: the other line.
            let came_from = (hop > 0).then_some(from);
            let next = |id: &NodeId| self.topology.passes_on_to(&self.me, came_from, id);
            (self.peers.iter().filter(|(id, _)| next(id)).filter_map(|(_, p)| p.link).collect(), hop + 1)
        };
        for batch in split_batch(fresh) {
            for link in targets.iter().filter(|l| Some(**l) != from_link) {
                self.send(*link, MeshMessage::LedgerEntries { entries: batch.clone(), hop: next_hop });
            }
        }
    }

    /// Sends a held-back ask to `peer` once its batches at the ledger are fewer than the window.
    fn ask_more(&mut self, peer: &NodeId) {
        let Some(pull) = self.pulls.peers.get_mut(peer) else { return };
        if pull.in_flight >= PULL_WINDOW {
            return;
        }
        let Some(heads) = pull.deferred.take() else { return };
        pull.record_ask(&heads);
        if let Some(link) = self.peers.get(peer).and_then(|p| p.link) {
            self.send(link, MeshMessage::LedgerHeads { heads });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::noise;
    use crate::wire::LedgerEntryType;

    fn id(n: u8) -> NodeId {
        NodeId::parse(&format!("{n:016x}")).expect("id")
    }

    fn entry(origin: u8, seq: u64) -> wire::LedgerEntry {
        wire::LedgerEntry {
            origin: id(origin),
            seq,
            prev_hash: "0".repeat(64),
            hlc: wire::Hlc { wall_ms: 1, logical: 0 },
            entry_type: LedgerEntryType::KeyCreated,
            data: serde_json::json!({}),
            hash: format!("{seq:064x}"),
            signature: "0".repeat(128),
        }
    }

    #[test]
    fn only_the_held_head_itself_is_a_known_copy() {
        let held = entry(1, 5);
        let mut heads = Vec::new();
        for origin in [3, 1, 2] {
            crate::ledger::advance_head(&mut heads, &entry(origin, 5));
        }
        assert!(is_head(&heads, &held));
        // The same seq with another hash is an equivocation for the ledger to keep as proof;
        // entries past the head, before it, or of an origin we hold nothing of are not copies.
        let mut forged = held.clone();
        forged.hash = "f".repeat(64);
        assert!(!is_head(&heads, &forged));
        assert!(!is_head(&heads, &entry(1, 6)));
        assert!(!is_head(&heads, &entry(1, 4)));
        assert!(!is_head(&heads, &entry(9, 5)));
    }

    #[test]
    fn a_pull_asks_for_what_follows_only_when_an_answer_ends() {
        let ours = vec![Head { origin: id(9), seq: 3, hash: "9".repeat(64) }];
        let mut pull = Pull::default();
        let batch = SYNC_BATCH as u64;
        // A few entries nobody asked for (a peer pushing what it wrote): nothing more to ask.
        assert!(pull.next_ask(&ours, &(1..=3).map(|s| entry(1, s)).collect::<Vec<_>>()).is_none());
        // A full batch nobody asked for: ask after its last entry, keeping our other heads so
        // the peer does not resend those.
        let ask = pull.next_ask(&ours, &(1..=batch).map(|s| entry(1, s)).collect::<Vec<_>>()).expect("asks");
        assert_eq!(ask.len(), 2);
        assert!(ask.contains(&ours[0]));
        assert!(ask.iter().any(|h| h.origin == id(1) && h.seq == batch && h.hash == format!("{batch:064x}")));
        // The answer comes in two frames: only the one reaching SYNC_BATCH past the ask asks again.
        let half = (batch + 1..=batch + 100).map(|s| entry(1, s)).collect::<Vec<_>>();
        assert!(pull.next_ask(&ours, &half).is_none(), "the answer's first frame");
        let rest = (batch + 101..=2 * batch).map(|s| entry(1, s)).collect::<Vec<_>>();
        let ask = pull.next_ask(&ours, &rest).expect("the answer ended");
        assert!(ask.iter().any(|h| h.origin == id(1) && h.seq == 2 * batch));
        // A short answer is the end of the chain: nothing more to ask.
        let short = (2 * batch + 1..=2 * batch + 10).map(|s| entry(1, s)).collect::<Vec<_>>();
        assert!(pull.next_ask(&ours, &short).is_none());
        // A duplicate of what was already asked past asks nothing.
        assert!(pull.next_ask(&ours, &(1..=batch).map(|s| entry(1, s)).collect::<Vec<_>>()).is_none());
    }

    #[test]
    fn an_answer_to_our_heads_asks_again_only_where_it_filled_a_batch() {
        let ours = vec![Head { origin: id(9), seq: 3, hash: "9".repeat(64) }];
        let mut pull = Pull::default();
        pull.record_ask(&ours);
        // After a heal: one new entry of an origin we hold, one of an origin we never saw. That
        // is the whole answer; asking again would fetch them a second time.
        assert!(pull.next_ask(&ours, &[entry(9, 4), entry(1, 1)]).is_none());
        // A full batch of an origin we never saw may have more behind it.
        let full: Vec<_> = (1..=SYNC_BATCH as u64).map(|s| entry(2, s)).collect();
        let ask = pull.next_ask(&ours, &full).expect("asks for what follows");
        assert!(ask.iter().any(|h| h.origin == id(2) && h.seq == SYNC_BATCH as u64));
    }

    #[test]
    fn a_push_past_our_head_is_left_to_the_pull_and_an_asked_answer_is_kept() {
        let ours = vec![Head { origin: id(1), seq: 10, hash: "1".repeat(64) }];
        let mut pull = Pull::default();
        // A push of origin 1's seq 50 while we hold 10: a gap the ledger would refuse. Origin
        // 2's first entry and origin 1's next one join.
        let mut pushed = vec![entry(1, 50), entry(2, 1), entry(1, 51)];
        pull.keep_joinable(&ours, &mut pushed);
        assert!(pushed.iter().all(|e| e.origin == id(2)), "{pushed:?}");
        let mut next = vec![entry(1, 11)];
        pull.keep_joinable(&ours, &mut next);
        assert_eq!(next.len(), 1);
        // A pipelined answer starts where we asked, past what the ledger has stored yet.
        pull.record_ask(&[Head { origin: id(1), seq: 210, hash: "1".repeat(64) }]);
        let mut answer = vec![entry(1, 211), entry(1, 212)];
        pull.keep_joinable(&ours, &mut answer);
        assert_eq!(answer.len(), 2, "an answer to an ask is kept");
        // The rest of that answer, in a second batch (a whole answer can be larger than a frame),
        // before the ledger stored the first: it continues what this pull took, so it is kept.
        // (Dropped, every answer's second part waited for the next tick: 124 entries a second.)
        let mut rest = vec![entry(1, 213), entry(1, 214)];
        pull.keep_joinable(&ours, &mut rest);
        assert_eq!(rest.len(), 2, "the rest of an answer is kept");
        let mut gap = vec![entry(1, 300)];
        pull.keep_joinable(&ours, &mut gap);
        assert!(gap.is_empty(), "a push past what was taken is still a gap");
    }

    #[actix::test]
    async fn a_fresh_peer_takes_a_long_ledger_and_its_heads_match() {
        use crate::mesh::memory::{join_in_memory, MemoryNet};
        use crate::start::{start, test_options};
        let dir = tempfile::tempdir().expect("tempdir");
        let net = MemoryNet::new();
        let mut nodes = Vec::new();
        for (name, create_mesh) in [("source", true), ("fresh", false)] {
            let mut opts = test_options(&dir.path().join(name));
            (opts.name, opts.address, opts.create_mesh) = (Some(name.into()), format!("mem://{name}"), create_mesh);
            opts.config.benchmark.on_start = false;
            opts.config.benchmark.interval_hours = 0.0;
            let node = start(opts).await.expect("node starts").node;
            net.register(&node.address, node.mesh.clone());
            node.mesh.set_dialer(net.dialer());
            nodes.push(node);
        }
        let (source, fresh) = (&nodes[0], &nodes[1]);
        let appends =
            (0..2000).map(|i| source.ledger.append(LedgerEntryType::KeyCreated, serde_json::json!({ "i": i })));
        futures_util::future::join_all(appends).await.into_iter().collect::<Result<Vec<_>, _>>().expect("appends");
        let (token, _) = source.mesh.create_token(crate::wire::Role::Builder, 60_000, "test").await.expect("token");
        join_in_memory(&source.mesh, &fresh.mesh, &token).await.expect("joined");
        let started = std::time::Instant::now();
        loop {
            let want = source.ledger.heads().await.expect("heads");
            if want == fresh.ledger.heads().await.expect("heads") {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(120), "heads still differ: {want:?}");
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
        let report = fresh.ledger.verify().await.expect("verify");
        assert!(report.ok, "{:?}", report.first_bad);
        let source_chain = report.chains.iter().find(|c| c.origin == source.identity.node_id.to_string());
        assert!(source_chain.is_some_and(|c| c.entries > 2000), "{:?}", report.chains);
        for n in &nodes {
            n.shutdown("test over").await;
        }
    }

    #[test]
    fn heads_digests_ignore_order_and_see_every_change() {
        let head = |o: u8, seq: u64| Head { origin: id(o), seq, hash: format!("{seq:064x}") };
        let a = heads_digest(&[head(1, 5), head(2, 7)]);
        assert_eq!(a, heads_digest(&[head(2, 7), head(1, 5)]), "order does not matter");
        assert_ne!(a, heads_digest(&[head(1, 5), head(2, 8)]), "a new entry changes it");
        assert_ne!(a, heads_digest(&[head(1, 5)]), "a missing origin changes it");
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
                body: MeshMessage::LedgerEntries { entries: b.clone(), hop: 2 },
            };
            assert!(wire::encode(&env).expect("encodes").len() <= noise::MAX_PLAINTEXT);
        }
    }
}
