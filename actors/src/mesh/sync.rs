//! Ledger sync: every tick a node sends a digest of its heads; a peer whose heads differ sends
//! its heads, and the other answers with what it lacks in bounded batches that each fit one
//! frame; received batches are checked and stored by the ledger actor, and a batch that ends an
//! answer asks for what follows at once ([`Pulls`]), so a long ledger flows at the speed of
//! checking it. `SyncNow` sends the heads themselves at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::{noise, MeshActor, SYNC_BATCH};
use crate::events::Event;
use crate::wire::{self, Head, MeshMessage, NodeId};

impl MeshActor {
    /// Reads our ledger heads and sends them on (see [`HeadsTo`]).
    pub(super) fn exchange_heads(&mut self, ctx: &mut Context<Self>, to: HeadsTo) {
        let ledger = self.ledger.clone();
        ctx.spawn(async move { ledger.heads().await }.into_actor(self).map(move |heads, act, _| match heads {
            Ok(heads) => {
                let digest = heads_digest(&heads);
                let own = |hs: &[Head], me: &NodeId| hs.iter().find(|h| h.origin == *me).map(|h| h.seq);
                let grew = own(&heads, &act.me) != own(&act.heads.1, &act.me);
                act.heads = (digest.clone(), heads.clone());
                match to {
                    HeadsTo::Link(link) => act.send(link, MeshMessage::LedgerHeads { heads }),
                    HeadsTo::Everyone => act.broadcast(MeshMessage::LedgerHeads { heads }),
                    HeadsTo::Gossip => act.gossip_digest(digest, grew),
                }
            }
            Err(e) => log::warn!("ledger heads: {e}"),
        }));
    }

    /// The tick's digest: to every peer when this node's own chain grew (its entries spread in
    /// one hop), else to a few random peers (everything else spreads by those exchanges).
    fn gossip_digest(&self, digest: String, grew: bool) {
        if grew {
            self.broadcast(MeshMessage::LedgerDigest { digest });
        } else {
            for link in self.gossip_targets(false) {
                self.send(link, MeshMessage::LedgerDigest { digest: digest.clone() });
            }
        }
    }

    /// A peer's digest: when its heads differ from ours, it gets ours and answers with what we
    /// lack (and, getting our digest too, sends its heads for us to answer).
    pub(super) fn on_ledger_digest(&mut self, link_id: u64, digest: String) {
        if digest != self.heads.0 && !self.heads.1.is_empty() {
            self.send(link_id, MeshMessage::LedgerHeads { heads: self.heads.1.clone() });
        }
    }

    /// Answers a peer's heads with the entries it lacks, in bounded batches.
    pub(super) fn answer_heads(&mut self, ctx: &mut Context<Self>, link_id: u64, theirs: Vec<Head>) {
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
}

/// Who gets this node's ledger heads.
pub(super) enum HeadsTo {
    /// A new link: the heads themselves, so each side answers with what the other lacks.
    Link(u64),
    /// Every peer, the heads themselves (`ledger sync`).
    Everyone,
    /// The tick: a digest, see [`MeshActor::gossip_digest`].
    Gossip,
}

/// The digest of a set of heads: BLAKE3 over each origin's id, seq and hash, in origin order.
pub(super) fn heads_digest(heads: &[Head]) -> String {
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

/// Splits entries into batches that each fit one frame.
pub(super) fn split_batch(entries: Vec<wire::LedgerEntry>) -> Vec<Vec<wire::LedgerEntry>> {
    let budget = noise::MAX_PLAINTEXT - 4096;
    let mut batches = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for e in entries {
        let len = rmp_serde::to_vec_named(&e).map(|v| v.len()).unwrap_or(usize::MAX);
        if len > budget {
            // Only an entry written before entries were bounded can be this large: sending it
            // would close the link on every try, so it stays behind and the rest still flow.
            log::warn!("ledger entry {}#{} ({len} bytes) cannot fit a frame; not sent", e.origin, e.seq);
            continue;
        }
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
    /// Batches handed to the ledger and not stored (or refused) yet.
    in_flight: usize,
    /// An ask held back until the ledger catches up.
    deferred: Option<Vec<Head>>,
    last_batch: Option<Instant>,
}

impl Pull {
    /// The heads to ask `entries`' sender with, when the batch ends an answer: our heads with
    /// each origin of the batch moved to the batch's last entry.
    fn next_ask(&mut self, ours: &[Head], entries: &[wire::LedgerEntry]) -> Option<Vec<Head>> {
        if self.last_batch.is_none_or(|t| t.elapsed() > PULL_IDLE) {
            self.asked.clear();
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
        // far may have more behind it. An origin never asked about came with the tick.
        let ends: Vec<&wire::LedgerEntry> = tails
            .into_values()
            .filter(|e| self.asked.get(&e.origin).is_none_or(|after| e.seq >= after + SYNC_BATCH as u64))
            .collect();
        if ends.is_empty() {
            return None;
        }
        let mut heads: Vec<Head> = ours.to_vec();
        for e in ends {
            self.asked.insert(e.origin.clone(), e.seq);
            let head = Head { origin: e.origin.clone(), seq: e.seq, hash: e.hash.clone() };
            match heads.iter_mut().find(|h| h.origin == e.origin) {
                Some(h) if h.seq < e.seq => *h = head,
                Some(_) => {}
                None => heads.push(head),
            }
        }
        Some(heads)
    }
}

impl MeshActor {
    /// A peer's batch: asks for what follows (see [`Pulls`]), then the ledger checks every
    /// entry (chain, hash, signature) before storing.
    pub(super) fn on_entries(&mut self, ctx: &mut Context<Self>, from: NodeId, entries: Vec<wire::LedgerEntry>) {
        let pull = self.pulls.peers.entry(from.clone()).or_default();
        if let Some(ask) = pull.next_ask(&self.heads.1, &entries) {
            pull.deferred = Some(ask);
        }
        pull.in_flight += 1;
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

    /// Sends a held-back ask to `peer` once its batches at the ledger are fewer than the window.
    fn ask_more(&mut self, peer: &NodeId) {
        let Some(pull) = self.pulls.peers.get_mut(peer) else { return };
        if pull.in_flight >= PULL_WINDOW {
            return;
        }
        let Some(heads) = pull.deferred.take() else { return };
        if let Some(link) = self.peers.get(peer).and_then(|p| p.link) {
            self.send(link, MeshMessage::LedgerHeads { heads });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn a_pull_asks_for_what_follows_only_when_an_answer_ends() {
        let ours = vec![Head { origin: id(9), seq: 3, hash: "9".repeat(64) }];
        let mut pull = Pull::default();
        // A batch nobody asked for (the tick's exchange): ask after its last entry, keeping our
        // other heads so the peer does not resend those.
        let ask = pull.next_ask(&ours, &(1..=120).map(|s| entry(1, s)).collect::<Vec<_>>()).expect("asks");
        assert_eq!(ask.len(), 2);
        assert!(ask.contains(&ours[0]));
        assert!(ask.iter().any(|h| h.origin == id(1) && h.seq == 120 && h.hash == format!("{:064x}", 120)));
        // The answer comes in two frames: only the one reaching SYNC_BATCH past the ask asks again.
        let half = (121..=220).map(|s| entry(1, s)).collect::<Vec<_>>();
        assert!(pull.next_ask(&ours, &half).is_none(), "the answer's first frame");
        let rest = (221..=320).map(|s| entry(1, s)).collect::<Vec<_>>();
        let ask = pull.next_ask(&ours, &rest).expect("the answer ended");
        assert!(ask.iter().any(|h| h.origin == id(1) && h.seq == 320));
        // A short answer is the end of the chain: nothing more to ask.
        assert!(pull.next_ask(&ours, &(321..=330).map(|s| entry(1, s)).collect::<Vec<_>>()).is_none());
        // A duplicate of what was already asked past asks nothing.
        assert!(pull.next_ask(&ours, &(1..=200).map(|s| entry(1, s)).collect::<Vec<_>>()).is_none());
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
                body: MeshMessage::LedgerEntries { entries: b.clone() },
            };
            assert!(wire::encode(&env).expect("encodes").len() <= noise::MAX_PLAINTEXT);
        }
    }
}
