//! Ledger sync: every tick a node sends its heads; a peer answers with what the sender lacks in
//! bounded batches that each fit one frame; received batches are checked and stored by the
//! ledger actor.

use actix::prelude::*;

use super::{noise, MeshActor, SYNC_BATCH};
use crate::events::Event;
use crate::wire::{self, Head, MeshMessage, NodeId};

impl MeshActor {
    /// Sends our ledger heads to every peer; each answers with what we lack.
    pub(super) fn exchange_heads(&mut self, ctx: &mut Context<Self>) {
        let ledger = self.ledger.clone();
        ctx.spawn(async move { ledger.heads().await }.into_actor(self).map(|heads, act, _| match heads {
            Ok(heads) => act.broadcast(MeshMessage::LedgerHeads { heads }),
            Err(e) => log::warn!("ledger heads: {e}"),
        }));
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
        self.exchange_heads(ctx);
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
