//! An entry's integrity: the canonical encoding its hash covers, checking one entry against its
//! predecessor and its origin's key, and walking every stored chain (`Verify`, `verify_all`).

use std::collections::BTreeMap;

use actix::prelude::*;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::table::{read_row, ROW_COLUMNS};
use super::LedgerActor;
use crate::identity;
use crate::store::StoreError;
use crate::wire::{self, Hlc, LedgerEntry, LedgerEntryType, NodeId};

/// `prev_hash` of an origin's first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Domain separation: a ledger hash can never be mistaken for another BLAKE3 use.
const HASH_CONTEXT: &str = "buildnet-ledger/1";

/// The bytes an entry's hash covers: every field but `hash` and `signature`, as a JSON array
/// whose object keys are sorted (serde_json's map is ordered), so any node recomputes the same.
pub fn canonical_bytes(
    origin: &NodeId,
    seq: u64,
    prev_hash: &str,
    hlc: Hlc,
    entry_type: LedgerEntryType,
    data: &serde_json::Value,
) -> Vec<u8> {
    let doc = serde_json::json!([
        HASH_CONTEXT,
        origin.as_str(),
        seq,
        prev_hash,
        hlc.wall_ms,
        hlc.logical,
        entry_type.as_str(),
        data
    ]);
    doc.to_string().into_bytes()
}

/// Why an entry does not check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BadEntry {
    pub origin: String,
    pub seq: u64,
    pub reason: String,
}

/// Checks one entry against its predecessor's hash and the origin's public key.
pub fn check_entry(entry: &LedgerEntry, expected_prev: &str, public_key: &[u8; 32]) -> Result<(), String> {
    let hash = check_content(entry, expected_prev)?;
    if !identity::verify(public_key, hash.as_bytes(), &signature_of(entry)?) {
        return Err(BAD_SIGNATURE.into());
    }
    Ok(())
}

/// Why an entry whose signature does not verify is refused.
pub(super) const BAD_SIGNATURE: &str = "signature does not verify with the origin's key";

/// Checks an entry's link to its predecessor and its content against its hash; returns the hash,
/// which is what its signature covers (checked by the caller, one by one or in a batch).
pub(super) fn check_content(entry: &LedgerEntry, expected_prev: &str) -> Result<blake3::Hash, String> {
    if entry.prev_hash != expected_prev {
        return Err(format!(
            "prev_hash {} does not match the previous entry's hash {}",
            short(&entry.prev_hash),
            short(expected_prev)
        ));
    }
    let hash = blake3::hash(&canonical_bytes(
        &entry.origin,
        entry.seq,
        &entry.prev_hash,
        entry.hlc,
        entry.entry_type,
        &entry.data,
    ));
    if hash.to_hex().as_str() != entry.hash {
        return Err("content does not match its hash (the entry was altered)".into());
    }
    Ok(hash)
}

/// An entry's signature as bytes.
pub(super) fn signature_of(entry: &LedgerEntry) -> Result<[u8; 64], String> {
    wire::unhex(&entry.signature).and_then(|b| b.try_into().ok()).ok_or_else(|| "signature is not 64 hex bytes".into())
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Result of checking every chain.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VerifyReport {
    pub ok: bool,
    pub chains: Vec<ChainReport>,
    /// The first entry that failed, if any.
    pub first_bad: Option<BadEntry>,
    /// Origins caught signing two different entries for one position (proof is kept).
    pub equivocations: Vec<Equivocation>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Equivocation {
    pub origin: String,
    /// How many positions have a second, different signed entry.
    pub positions: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChainReport {
    pub origin: String,
    pub entries: u64,
    pub head_hash: String,
    pub ok: bool,
}

/// Walks every chain and checks links, hashes and signatures.
#[derive(Message)]
#[rtype(result = "Result<VerifyReport, StoreError>")]
pub struct Verify;

impl Handler<Verify> for LedgerActor {
    type Result = Result<VerifyReport, StoreError>;

    fn handle(&mut self, _: Verify, _: &mut Self::Context) -> Self::Result {
        let own = (self.identity.node_id.to_string(), self.identity.public_key());
        verify_all(self.conn()?, own)
    }
}

/// Checks every chain in the database. Public keys come from the roster (`nodes`), and this
/// node's own key from its identity, so altering the roster row cannot hide an altered entry.
pub fn verify_all(conn: &Connection, own: (String, [u8; 32])) -> Result<VerifyReport, StoreError> {
    let mut keys: BTreeMap<String, [u8; 32]> = BTreeMap::new();
    {
        let mut stmt = conn.prepare("SELECT id, public_key FROM nodes")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)))? {
            let (id, key) = row?;
            if let Ok(key) = <[u8; 32]>::try_from(key.as_slice()) {
                keys.insert(id, key);
            }
        }
    }
    keys.insert(own.0, own.1);
    let origins: Vec<String> = {
        let mut stmt = conn.prepare("SELECT DISTINCT origin FROM ledger ORDER BY origin")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    let equivocations = {
        let mut stmt = conn.prepare("SELECT origin, count(*) FROM ledger_conflicts GROUP BY origin ORDER BY origin")?;
        let rows =
            stmt.query_map([], |r| Ok(Equivocation { origin: r.get(0)?, positions: r.get::<_, i64>(1)? as u64 }))?;
        rows.collect::<Result<Vec<_>, _>>()?
    };
    let mut report = VerifyReport { ok: true, chains: Vec::new(), first_bad: None, equivocations };
    let mut stmt = conn.prepare(&format!("SELECT {ROW_COLUMNS} FROM ledger WHERE origin = ?1 ORDER BY seq"))?;
    for origin in origins {
        let mut chain = ChainReport { origin: origin.clone(), entries: 0, head_hash: GENESIS_HASH.into(), ok: true };
        let mut expected_seq = 1u64;
        for row in stmt.query_map([&origin], read_row)? {
            let row = row?;
            let seq = row.seq.max(0) as u64;
            let verdict = match (row.into_entry(), keys.get(&origin)) {
                (Err(e), _) => Err(e),
                (_, None) => Err("origin is not in the roster; its key is unknown".to_string()),
                (Ok(e), Some(_)) if e.seq != expected_seq => {
                    Err(format!("expected seq {expected_seq}, found {} (entries missing)", e.seq))
                }
                (Ok(e), Some(key)) => check_entry(&e, &chain.head_hash, key).map(|_| e.hash),
            };
            match verdict {
                Ok(hash) => {
                    chain.head_hash = hash;
                    chain.entries += 1;
                    expected_seq += 1;
                }
                Err(reason) => {
                    chain.ok = false;
                    report.ok = false;
                    report.first_bad.get_or_insert(BadEntry { origin: origin.clone(), seq, reason });
                    break;
                }
            }
        }
        report.chains.push(chain);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::tests::fresh_ledger;
    use crate::ledger::LedgerFilter;
    use crate::store::DB_FILE;

    #[actix::test]
    async fn entries_with_floats_still_check_after_a_trip_through_the_database() {
        // Benchmark figures are floats; the text in SQLite must parse back to the very same
        // values, or a peer receiving the entry would find it altered.
        let (_dir, ledger, id) = fresh_ledger().await;
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let floats: Vec<f64> = (0..2000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 1_000_000_007) as f64 / ((state >> 20) % 999_983 + 1) as f64
            })
            .collect();
        let data = serde_json::json!({ "mbps": 30.497247279407716, "ms": 0.06263911111111112, "floats": floats });
        let e = ledger.append(LedgerEntryType::BenchmarkCompleted, data).await.expect("append");
        let stored = ledger.query(LedgerFilter { limit: 1, ..Default::default() }).await.expect("query");
        assert_eq!(stored[0].data, e.data);
        check_entry(&stored[0], GENESIS_HASH, &id.public_key()).expect("checks after the round trip");
        let wire =
            rmp_serde::from_slice::<LedgerEntry>(&rmp_serde::to_vec(&stored[0]).expect("encode")).expect("decode");
        check_entry(&wire, GENESIS_HASH, &id.public_key()).expect("checks after MessagePack");
    }

    #[actix::test]
    async fn an_altered_row_is_caught() {
        let (dir, ledger, id) = fresh_ledger().await;
        for i in 0..3 {
            ledger.append(LedgerEntryType::KeyCreated, serde_json::json!({ "i": i })).await.expect("append");
        }
        let conn = Connection::open(dir.path().join(DB_FILE)).expect("open");
        conn.execute("UPDATE ledger SET entry_data = '{\"i\":99}' WHERE seq = 2", []).expect("tamper");
        let report = verify_all(&conn, (id.node_id.to_string(), id.public_key())).expect("verify runs");
        assert!(!report.ok);
        let bad = report.first_bad.expect("names the bad entry");
        assert_eq!(bad.seq, 2);
        assert!(bad.reason.contains("altered"), "{}", bad.reason);
    }

    #[actix::test]
    async fn a_re_signed_forgery_and_a_gap_are_caught() {
        let (dir, ledger, id) = fresh_ledger().await;
        for i in 0..3 {
            ledger.append(LedgerEntryType::KeyCreated, serde_json::json!({ "i": i })).await.expect("append");
        }
        let conn = Connection::open(dir.path().join(DB_FILE)).expect("open");
        // A forger without the key recomputes the hash but cannot sign it.
        let entries = ledger.query(LedgerFilter { limit: 10, ..Default::default() }).await.expect("query");
        let e = entries.iter().find(|e| e.seq == 1).expect("seq 1");
        let forged = blake3::hash(&canonical_bytes(
            &e.origin,
            1,
            &e.prev_hash,
            e.hlc,
            e.entry_type,
            &serde_json::json!({"i": 42}),
        ));
        conn.execute(
            "UPDATE ledger SET entry_data = '{\"i\":42}', hash = ?1 WHERE seq = 1",
            [forged.to_hex().as_str()],
        )
        .expect("forge");
        let report = verify_all(&conn, (id.node_id.to_string(), id.public_key())).expect("verify runs");
        assert_eq!(report.first_bad.as_ref().map(|b| b.seq), Some(1));
        assert!(report.first_bad.expect("bad").reason.contains("signature"));

        let (dir2, ledger2, id2) = fresh_ledger().await;
        for i in 0..3 {
            ledger2.append(LedgerEntryType::KeyCreated, serde_json::json!({ "i": i })).await.expect("append");
        }
        let conn2 = Connection::open(dir2.path().join(DB_FILE)).expect("open");
        conn2.execute("DELETE FROM ledger WHERE seq = 2", []).expect("delete");
        let report = verify_all(&conn2, (id2.node_id.to_string(), id2.public_key())).expect("verify runs");
        assert!(report.first_bad.expect("bad").reason.contains("missing"));
        drop(dir);
    }
}
