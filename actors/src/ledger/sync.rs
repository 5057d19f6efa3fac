//! Replication between peers: this node's heads, entries after a head, storing a peer's batch
//! after checking it whole, and keeping proof when an origin signs two entries for one position.

use actix::prelude::*;
use rusqlite::{params, Connection, OptionalExtension};

use super::chain::{canonical_bytes, check_entry, GENESIS_HASH};
use super::table::{insert, read_row, ROW_COLUMNS};
use super::LedgerActor;
use crate::identity;
use crate::store::StoreError;
use crate::wire::{self, Head, LedgerEntry, NodeId};

/// The newest entry of every chain held here.
#[derive(Message)]
#[rtype(result = "Result<Vec<Head>, StoreError>")]
pub struct Heads;

impl Handler<Heads> for LedgerActor {
    type Result = Result<Vec<Head>, StoreError>;

    fn handle(&mut self, _: Heads, _: &mut Self::Context) -> Self::Result {
        heads(self.conn()?)
    }
}

fn heads(conn: &Connection) -> Result<Vec<Head>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT l.origin, l.seq, l.hash FROM ledger l
         JOIN (SELECT origin, max(seq) AS top FROM ledger GROUP BY origin) h ON l.origin = h.origin AND l.seq = h.top
         ORDER BY l.origin",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (origin, seq, hash) = row?;
        out.push(Head {
            origin: NodeId::parse(&origin).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            seq: seq as u64,
            hash,
        });
    }
    Ok(out)
}

/// Entries of one origin after a sequence number, in chain order.
#[derive(Message)]
#[rtype(result = "Result<Vec<LedgerEntry>, StoreError>")]
pub struct EntriesAfter {
    pub origin: NodeId,
    pub after_seq: u64,
    pub limit: usize,
}

impl Handler<EntriesAfter> for LedgerActor {
    type Result = Result<Vec<LedgerEntry>, StoreError>;

    fn handle(&mut self, msg: EntriesAfter, _: &mut Self::Context) -> Self::Result {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {ROW_COLUMNS} FROM ledger WHERE origin = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
        ))?;
        let rows = stmt.query_map(params![msg.origin.as_str(), msg.after_seq as i64, msg.limit as i64], read_row)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row?.into_entry().map_err(StoreError::Corrupt)?);
        }
        Ok(out)
    }
}

/// What a batch from a peer did.
#[derive(Debug, Clone, Default)]
pub struct InsertOutcome {
    /// Entries stored, in order.
    pub stored: Vec<LedgerEntry>,
    /// Entries already held.
    pub duplicates: usize,
    /// Origins caught with two different entries at one position.
    pub equivocations: Vec<(NodeId, u64)>,
}

/// Why a batch was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("entry {origin}#{seq} refused: {reason}")]
    Refused { origin: String, seq: u64, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for BatchError {
    fn from(e: rusqlite::Error) -> Self {
        BatchError::Store(StoreError::Sql(e))
    }
}

/// Stores entries from a peer after checking each against its chain and its origin's key
/// (from the roster). One bad entry refuses the whole batch; a different entry at a held
/// position is kept as proof of equivocation.
#[derive(Message)]
#[rtype(result = "Result<InsertOutcome, BatchError>")]
pub struct InsertRemote {
    pub entries: Vec<LedgerEntry>,
}

impl Handler<InsertRemote> for LedgerActor {
    type Result = Result<InsertOutcome, BatchError>;

    fn handle(&mut self, msg: InsertRemote, _: &mut Self::Context) -> Self::Result {
        let own = self.identity.node_id.clone();
        let conn = self.conn()?;
        let tx = conn.transaction()?;
        let mut outcome = InsertOutcome::default();
        let mut entries = msg.entries;
        entries.sort_by(|a, b| (a.origin.as_str(), a.seq).cmp(&(b.origin.as_str(), b.seq)));
        for e in entries {
            let refuse = |reason: String| BatchError::Refused { origin: e.origin.to_string(), seq: e.seq, reason };
            let held: Option<String> = tx
                .query_row(
                    "SELECT hash FROM ledger WHERE origin = ?1 AND seq = ?2",
                    params![e.origin.as_str(), e.seq as i64],
                    |r| r.get(0),
                )
                .optional()?;
            let key: Option<Vec<u8>> = tx
                .query_row("SELECT public_key FROM nodes WHERE id = ?1", [e.origin.as_str()], |r| r.get(0))
                .optional()?;
            let key: [u8; 32] =
                key.and_then(|k| k.try_into().ok()).ok_or_else(|| refuse("origin is not in the roster".into()))?;
            if let Some(hash) = held {
                if hash == e.hash {
                    outcome.duplicates += 1;
                    continue;
                }
                // Only a correctly signed second entry proves anything.
                let signed = wire::unhex(&e.signature).and_then(|b| <[u8; 64]>::try_from(b).ok()).is_some_and(|sig| {
                    let h =
                        blake3::hash(&canonical_bytes(&e.origin, e.seq, &e.prev_hash, e.hlc, e.entry_type, &e.data));
                    h.to_hex().as_str() == e.hash && identity::verify(&key, h.as_bytes(), &sig)
                });
                if !signed {
                    return Err(refuse("conflicts with a held entry and does not verify".into()));
                }
                tx.execute(
                    "INSERT OR IGNORE INTO ledger_conflicts (origin, seq, stored_hash, other_entry, seen_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![e.origin.as_str(), e.seq as i64, hash, serde_json::to_string(&e).unwrap_or_default(), wire::now_ms() as i64],
                )?;
                outcome.equivocations.push((e.origin.clone(), e.seq));
                continue;
            }
            if e.origin == own {
                return Err(refuse("claims to be this node's entry, which this node never wrote".into()));
            }
            let prev: Option<(i64, String)> = tx
                .query_row(
                    "SELECT seq, hash FROM ledger WHERE origin = ?1 ORDER BY seq DESC LIMIT 1",
                    [e.origin.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let (head_seq, head_hash) = prev.map(|(s, h)| (s as u64, h)).unwrap_or((0, GENESIS_HASH.to_string()));
            if e.seq != head_seq + 1 {
                return Err(refuse(format!("expected seq {} next", head_seq + 1)));
            }
            check_entry(&e, &head_hash, &key).map_err(refuse)?;
            insert(&tx, &e)?;
            outcome.stored.push(e);
        }
        tx.commit()?;
        Ok(outcome)
    }
}

/// Origins with proof of equivocation, and how many conflicting positions each has.
#[derive(Message)]
#[rtype(result = "Result<Vec<(String, u64)>, StoreError>")]
pub struct Equivocators;

impl Handler<Equivocators> for LedgerActor {
    type Result = Result<Vec<(String, u64)>, StoreError>;

    fn handle(&mut self, _: Equivocators, _: &mut Self::Context) -> Self::Result {
        let conn = self.conn()?;
        let mut stmt = conn.prepare("SELECT origin, count(*) FROM ledger_conflicts GROUP BY origin ORDER BY origin")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::ledger::tests::fresh_ledger;
    use crate::ledger::{LedgerFilter, LedgerHandle};
    use crate::store::{self, Durability, DB_FILE};
    use crate::wire::LedgerEntryType;

    /// A second node's ledger, writing entries as `secret`'s identity.
    async fn remote(secret: u8) -> (tempfile::TempDir, LedgerHandle, Identity) {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = Identity::from_secret(&[secret; 32]);
        let path = dir.path().join(DB_FILE);
        store::open(&path, Durability::Normal).expect("open");
        (dir, LedgerHandle::start(&path, id.clone(), None).expect("start"), id)
    }

    async fn chain(ledger: &LedgerHandle, n: u64) -> Vec<LedgerEntry> {
        for i in 0..n {
            ledger.append(LedgerEntryType::KeyCreated, serde_json::json!({ "i": i })).await.expect("append");
        }
        let mut all = ledger.query(LedgerFilter { limit: 100, ..Default::default() }).await.expect("query");
        all.reverse();
        all
    }

    fn admit(dir: &std::path::Path, id: &Identity) {
        let conn = Connection::open(dir.join(DB_FILE)).expect("open");
        conn.execute(
            "INSERT INTO nodes (id, name, address, public_key, capabilities, last_seen_at, joined_at) VALUES (?1, 'r', 'a', ?2, '{}', 0, 0)",
            params![id.node_id.as_str(), id.public_key().to_vec()],
        )
        .expect("roster row");
    }

    #[actix::test]
    async fn remote_entries_are_checked_and_a_bad_batch_is_refused_whole() {
        let (local_dir, local, _) = fresh_ledger().await;
        let (_rdir, remote_ledger, rid) = remote(9).await;
        let entries = chain(&remote_ledger, 4).await;

        let unknown = local.insert_remote(entries.clone()).await;
        assert!(matches!(unknown, Err(BatchError::Refused { .. })), "an origin outside the roster is refused");
        admit(local_dir.path(), &rid);

        let mut tampered = entries.clone();
        tampered[2].data = serde_json::json!({ "i": 99 });
        let refused = local.insert_remote(tampered).await.expect_err("tampered batch");
        assert!(refused.to_string().contains("#3"), "{refused}");
        let held = local
            .query(LedgerFilter { origin: Some(rid.node_id.clone()), limit: 10, ..Default::default() })
            .await
            .expect("query");
        assert!(held.is_empty(), "nothing of a refused batch is stored");

        let gap = local.insert_remote(entries[1..].to_vec()).await;
        assert!(gap.is_err(), "a batch that does not continue the chain is refused");

        let outcome = local.insert_remote(entries.clone()).await.expect("valid batch");
        assert_eq!(outcome.stored.len(), 4);
        let again = local.insert_remote(entries.clone()).await.expect("duplicates are fine");
        assert_eq!((again.stored.len(), again.duplicates), (0, 4));
        let report = local.verify().await.expect("verify");
        assert!(report.ok, "{report:?}");
        let heads = local.heads().await.expect("heads");
        assert!(heads.iter().any(|h| h.origin == rid.node_id && h.seq == 4));
        let after = local.entries_after(rid.node_id.clone(), 2, 10).await.expect("entries");
        assert_eq!(after.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4]);
    }

    #[actix::test]
    async fn two_signed_entries_at_one_position_are_kept_as_proof() {
        let (local_dir, local, _) = fresh_ledger().await;
        let (_d1, honest, rid) = remote(11).await;
        let (_d2, forked, _) = remote(11).await;
        admit(local_dir.path(), &rid);
        let first = chain(&honest, 2).await;
        local.insert_remote(first).await.expect("stored");
        ledger_sleep().await;
        let other = chain(&forked, 1).await;
        let outcome = local.insert_remote(other).await.expect("a conflict is not an error");
        assert_eq!(outcome.equivocations, vec![(rid.node_id.clone(), 1)]);
        let flagged = local.equivocators().await.expect("query");
        assert_eq!(flagged, vec![(rid.node_id.to_string(), 1)]);
        let report = local.verify().await.expect("verify");
        assert_eq!(report.equivocations.len(), 1);
        assert_eq!(report.equivocations[0].origin, rid.node_id.to_string());
        assert!(local.verify().await.expect("verify").ok, "the stored chain still verifies");
    }

    /// Lets the wall clock move so a forked entry differs from the honest one.
    async fn ledger_sleep() {
        actix_rt::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
