//! Ledger sync: every tick a node sends a digest of its heads; a peer whose heads differ sends
//! its heads, and the other answers with what it lacks in bounded batches that each fit one
//! frame; received batches are checked and stored by the ledger actor. `SyncNow` sends the heads
//! themselves at once.

use actix::prelude::*;

use super::{noise, MeshActor, SYNC_BATCH};
use crate::events::Event;
use crate::wire::{self, Head, MeshMessage, NodeId};

impl MeshActor {
    /// Reads our ledger heads and sends every peer their digest (`full`: the heads themselves,
    /// so each answers with what we lack at once).
    pub(super) fn exchange_heads(&mut self, ctx: &mut Context<Self>, full: bool) {
        let ledger = self.ledger.clone();
        ctx.spawn(async move { ledger.heads().await }.into_actor(self).map(move |heads, act, _| match heads {
            Ok(heads) => {
                let digest = heads_digest(&heads);
                act.heads = (digest.clone(), heads.clone());
                if full {
                    act.broadcast(MeshMessage::LedgerHeads { heads });
                } else {
                    act.broadcast(MeshMessage::LedgerDigest { digest });
                }
            }
            Err(e) => log::warn!("ledger heads: {e}"),
        }));
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
        self.exchange_heads(ctx, true);
        self.peers.values().filter(|p| p.link.is_some()).count()
    }
}

impl MeshActor {
    /// A peer's batch: the ledger checks every entry (chain, hash, signature) before storing.
    pub(super) fn on_entries(&mut self, from: NodeId, entries: Vec<wire::LedgerEntry>) {
        let (ledger, events) = (self.ledger.clone(), self.events.clone());
        actix::spawn(async move {
            match ledger.insert_remote(entries).await {
                Ok(outcome) => {
                    for (origin, seq) in &outcome.equivocations {
                        log::error!(
                            "node {origin} equivocated at seq {seq}: two different signed entries; kept as proof"
                        );
                    }
                    for entry in outcome.stored {
                        events.publish(Event::LedgerEntry { entry: Box::new(entry) });
                    }
                }
                Err(e) => log::warn!("refused a ledger batch from {from}: {e}"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::LedgerEntryType;

    fn id(n: u8) -> NodeId {
        NodeId::parse(&format!("{n:016x}")).expect("id")
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
