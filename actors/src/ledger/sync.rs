//! Replication between peers: this node's heads, entries after a head, storing a peer's batch
//! after checking it whole, and keeping proof when an origin signs two entries for one position.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use rusqlite::{params, Connection, OptionalExtension};

use super::chain::{canonical_bytes, check_content, signature_of, BAD_SIGNATURE, GENESIS_HASH};
use super::table::{insert, read_row, ROW_COLUMNS};
use super::LedgerActor;
use crate::identity;
use crate::store::StoreError;
use crate::wire::{self, Head, LedgerEntry, NodeId};

/// The newest entry of every chain held here.
#[derive(Message)]
#[rtype(result = "Result<Arc<Vec<Head>>, StoreError>")]
pub struct Heads;

impl Handler<Heads> for LedgerActor {
    type Result = Result<Arc<Vec<Head>>, StoreError>;

    fn handle(&mut self, _: Heads, _: &mut Self::Context) -> Self::Result {
        if let Some(cached) = &self.heads {
            return Ok(cached.clone());
        }
        let read = Arc::new(heads(self.conn()?)?);
        self.heads = Some(read.clone());
        Ok(read)
    }
}

/// Moves `heads` (in origin order, as [`heads`] reads them) past `e`, as a read of the table
/// after storing it would: its origin's head becomes `e` when `e` is newer, and a new origin
/// gets one in its place. The ledger keeps its cached heads this way rather than reading them
/// again after every commit (while 200 simulated nodes joined, re-reading them, two queries per
/// origin, was an eighth of all CPU), and the mesh its copy.
pub fn advance_head(heads: &mut Vec<Head>, e: &LedgerEntry) {
    match heads.binary_search_by(|h| h.origin.cmp(&e.origin)) {
        Ok(i) if heads[i].seq < e.seq => {
            heads[i].seq = e.seq;
            heads[i].hash.clone_from(&e.hash);
        }
        Ok(_) => {}
        Err(i) => heads.insert(i, Head { origin: e.origin.clone(), seq: e.seq, hash: e.hash.clone() }),
    }
}

/// Each origin's newest entry by seeks on the primary key (origin, seq): the next origin after
/// the last, then its top entry. A peer pulling a long ledger asks for heads with every batch;
/// grouping the whole table instead read every row each time.
fn heads(conn: &Connection) -> Result<Vec<Head>, StoreError> {
    let mut next_origin = conn.prepare_cached("SELECT origin FROM ledger WHERE origin > ?1 ORDER BY origin LIMIT 1")?;
    let mut top = conn.prepare_cached("SELECT seq, hash FROM ledger WHERE origin = ?1 ORDER BY seq DESC LIMIT 1")?;
    let mut out = Vec::new();
    let mut after = String::new();
    while let Some(origin) = next_origin.query_row([&after], |r| r.get::<_, String>(0)).optional()? {
        let (seq, hash) = top.query_row([&origin], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
        out.push(Head {
            origin: NodeId::parse(&origin).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            seq: seq as u64,
            hash,
        });
        after = origin;
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
        let outcome = insert_batch(&tx, &own, msg.entries)?;
        tx.commit()?;
        if let Some(heads) = &mut self.heads {
            let heads = Arc::make_mut(heads);
            for e in &outcome.stored {
                advance_head(heads, e);
            }
        }
        Ok(outcome)
    }
}

/// Checks and stores a peer's batch inside `tx` (the caller commits). Each origin's key and head
/// are read once per batch and the head then followed in memory, so a batch of one chain costs
/// one lookup per origin plus the checks and inserts; an entry past the head cannot be held
/// already, so only entries at or below it are looked up as possible duplicates. The signatures
/// of the entries stored are verified together at the end (see [`identity::verify_batch`]); when
/// that fails, one by one, to name the first bad entry and refuse the batch.
fn insert_batch(tx: &Connection, own: &NodeId, mut entries: Vec<LedgerEntry>) -> Result<InsertOutcome, BatchError> {
    let mut outcome = InsertOutcome::default();
    entries.sort_by(|a, b| (a.origin.as_str(), a.seq).cmp(&(b.origin.as_str(), b.seq)));
    // origin → (its key, the head this batch has reached).
    let mut chains: HashMap<NodeId, ([u8; 32], u64, String)> = HashMap::new();
    // Entries stored so far (by position in `outcome.stored`) with their hash and signature.
    let mut signed: Vec<([u8; 32], blake3::Hash, [u8; 64])> = Vec::new();
    for e in entries {
        let refuse = |reason: String| BatchError::Refused { origin: e.origin.to_string(), seq: e.seq, reason };
        if !chains.contains_key(&e.origin) {
            let key: Option<Vec<u8>> = tx
                .prepare_cached("SELECT public_key FROM nodes WHERE id = ?1")?
                .query_row([e.origin.as_str()], |r| r.get(0))
                .optional()?;
            let key: [u8; 32] =
                key.and_then(|k| k.try_into().ok()).ok_or_else(|| refuse("origin is not in the roster".into()))?;
            let head: Option<(i64, String)> = tx
                .prepare_cached("SELECT seq, hash FROM ledger WHERE origin = ?1 ORDER BY seq DESC LIMIT 1")?
                .query_row([e.origin.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let (seq, hash) = head.map(|(s, h)| (s as u64, h)).unwrap_or((0, GENESIS_HASH.to_string()));
            chains.insert(e.origin.clone(), (key, seq, hash));
        }
        let Some((key, head_seq, head_hash)) = chains.get_mut(&e.origin) else { continue };
        if e.seq <= *head_seq {
            let held: Option<String> = tx
                .prepare_cached("SELECT hash FROM ledger WHERE origin = ?1 AND seq = ?2")?
                .query_row(params![e.origin.as_str(), e.seq as i64], |r| r.get(0))
                .optional()?;
            if let Some(hash) = held {
                if hash == e.hash {
                    outcome.duplicates += 1;
                    continue;
                }
                // Only a correctly signed second entry proves anything.
                let signed = wire::unhex(&e.signature).and_then(|b| <[u8; 64]>::try_from(b).ok()).is_some_and(|sig| {
                    let h =
                        blake3::hash(&canonical_bytes(&e.origin, e.seq, &e.prev_hash, e.hlc, e.entry_type, &e.data));
                    h.to_hex().as_str() == e.hash && identity::verify(key, h.as_bytes(), &sig)
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
        }
        if e.origin == *own {
            return Err(refuse("claims to be this node's entry, which this node never wrote".into()));
        }
        if e.seq != *head_seq + 1 {
            return Err(refuse(format!("expected seq {} next", *head_seq + 1)));
        }
        let hash = check_content(&e, head_hash).map_err(refuse)?;
        signed.push((*key, hash, signature_of(&e).map_err(refuse)?));
        insert(tx, &e)?;
        (*head_seq, *head_hash) = (e.seq, e.hash.clone());
        outcome.stored.push(e);
    }
    let items: Vec<(&[u8; 32], &[u8], [u8; 64])> =
        signed.iter().map(|(key, hash, sig)| (key, hash.as_bytes().as_slice(), *sig)).collect();
    if !identity::verify_batch(&items) {
        let bad = items.iter().position(|(key, message, sig)| !identity::verify(key, message, sig));
        if let Some(e) = bad.and_then(|i| outcome.stored.get(i)) {
            return Err(BatchError::Refused { origin: e.origin.to_string(), seq: e.seq, reason: BAD_SIGNATURE.into() });
        }
    }
    Ok(outcome)
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
        // Heads are read (and kept) before the batch: the kept heads must not hide it below.
        assert!(local.heads().await.expect("heads").iter().all(|h| h.origin != rid.node_id));

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
        // And an append of our own moves our head in them.
        let own = local.append(LedgerEntryType::ConfigModified, serde_json::json!({})).await.expect("append");
        let heads = local.heads().await.expect("heads");
        assert!(heads.iter().any(|h| h.origin == own.origin && h.seq == own.seq));
        let after = local.entries_after(rid.node_id.clone(), 2, 10).await.expect("entries");
        assert_eq!(after.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4]);
        assert_heads_are_the_tables(local_dir.path(), &local).await;
    }

    /// The heads the ledger keeps in memory, moved on by each commit, are what reading the
    /// table gives.
    async fn assert_heads_are_the_tables(dir: &std::path::Path, ledger: &LedgerHandle) {
        let read = heads(&Connection::open(dir.join(DB_FILE)).expect("open")).expect("read heads");
        assert_eq!(*ledger.heads().await.expect("heads"), read, "the same heads in the same order");
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
        assert_heads_are_the_tables(local_dir.path(), &local).await;
    }

    #[actix::test]
    async fn batches_continue_a_chain_and_one_bad_signature_refuses_its_whole_batch() {
        let (local_dir, local, _) = fresh_ledger().await;
        let (_rdir, remote_ledger, rid) = remote(9).await;
        let other = Identity::from_secret(&[10; 32]);
        admit(local_dir.path(), &rid);
        let appends =
            (0..450).map(|i| remote_ledger.append(LedgerEntryType::KeyCreated, serde_json::json!({ "i": i })));
        futures_util::future::join_all(appends).await.into_iter().collect::<Result<Vec<_>, _>>().expect("appends");
        let entries = remote_ledger.entries_after(rid.node_id.clone(), 0, 1000).await.expect("entries");
        assert_eq!(entries.len(), 450);

        // Entry #250 keeps its content and hash but carries another key's signature.
        let mut forged = entries[..300].to_vec();
        forged[249].signature = wire::hex(&other.sign(&wire::unhex(&forged[249].hash).expect("hex hash")));
        let refused = local.insert_remote(forged).await.expect_err("a forged signature");
        assert!(refused.to_string().contains("#250") && refused.to_string().contains("signature"), "{refused}");
        assert!(local.heads().await.expect("heads").iter().all(|h| h.origin != rid.node_id), "nothing stored");

        // Batches in order, each continuing where the last stopped; one overlapping the held part.
        let first = local.insert_remote(entries[..200].to_vec()).await.expect("first batch");
        assert_eq!(first.stored.len(), 200);
        let next = local.insert_remote(entries[150..400].to_vec()).await.expect("overlapping batch");
        assert_eq!((next.stored.len(), next.duplicates), (200, 50));
        let gap = local.insert_remote(entries[401..].to_vec()).await.expect_err("a gap");
        assert!(gap.to_string().contains("expected seq 401"), "{gap}");
        local.insert_remote(entries[400..].to_vec()).await.expect("the rest");
        let heads = local.heads().await.expect("heads");
        assert!(heads.iter().any(|h| h.origin == rid.node_id && h.seq == 450 && h.hash == entries[449].hash));
        assert!(local.verify().await.expect("verify").ok);
        assert_heads_are_the_tables(local_dir.path(), &local).await;
    }

    /// Lets the wall clock move so a forked entry differs from the honest one.
    async fn ledger_sleep() {
        actix_rt::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
