//! The tamper-evident ledger: each node appends to its own hash chain, every entry hashed with
//! BLAKE3 over a canonical encoding and signed with the node's Ed25519 key.
//!
//! `LedgerActor` owns the `ledger` table on its own `SyncArbiter` thread and connection, opened
//! with `synchronous=FULL`: once `append` returns, the entry survives a crash.

use std::collections::BTreeMap;
use std::path::Path;

use actix::prelude::*;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::events::{Event, EventBus};
use crate::identity::{self, Identity};
use crate::store::{self, Durability, StoreError};
use crate::wire::{self, Head, Hlc, LedgerEntry, LedgerEntryType, NodeId};

/// `prev_hash` of an origin's first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Domain separation: a ledger hash can never be mistaken for another BLAKE3 use.
const HASH_CONTEXT: &str = "buildnet-ledger/1";
/// Upper bound on one query's page.
pub const MAX_PAGE: usize = 1000;

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
    let signature: [u8; 64] = wire::unhex(&entry.signature)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| "signature is not 64 hex bytes".to_string())?;
    if !identity::verify(public_key, hash.as_bytes(), &signature) {
        return Err("signature does not verify with the origin's key".into());
    }
    Ok(())
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Filters of plan §10.2, plus an offset for "load more".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LedgerFilter {
    pub types: Vec<LedgerEntryType>,
    pub origin: Option<NodeId>,
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    pub limit: usize,
    pub offset: usize,
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

/// Owns the ledger table.
pub struct LedgerActor {
    conn: Option<Connection>,
    identity: Identity,
    /// Our chain's head: (seq, hash).
    head: Option<(u64, String)>,
    last_hlc: Hlc,
}

impl Actor for LedgerActor {
    type Context = SyncContext<Self>;
}

impl LedgerActor {
    fn conn(&mut self) -> Result<&mut Connection, StoreError> {
        self.conn.as_mut().ok_or(StoreError::Unavailable)
    }

    fn own_head(&mut self) -> Result<(u64, String), StoreError> {
        if let Some(head) = &self.head {
            return Ok(head.clone());
        }
        let origin = self.identity.node_id.to_string();
        let head = self
            .conn()?
            .query_row("SELECT seq, hash FROM ledger WHERE origin = ?1 ORDER BY seq DESC LIMIT 1", [origin], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
            })
            .optional()?
            .unwrap_or((0, GENESIS_HASH.to_string()));
        self.head = Some(head.clone());
        Ok(head)
    }

    /// Next reading of the hybrid logical clock.
    fn tick(&mut self) -> Hlc {
        let wall = wire::now_ms();
        self.last_hlc = if wall > self.last_hlc.wall_ms {
            Hlc { wall_ms: wall, logical: 0 }
        } else {
            Hlc { wall_ms: self.last_hlc.wall_ms, logical: self.last_hlc.logical + 1 }
        };
        self.last_hlc
    }
}

/// Appends an entry to this node's chain.
#[derive(Message)]
#[rtype(result = "Result<LedgerEntry, StoreError>")]
pub struct Append {
    pub entry_type: LedgerEntryType,
    pub data: serde_json::Value,
}

impl Handler<Append> for LedgerActor {
    type Result = Result<LedgerEntry, StoreError>;

    fn handle(&mut self, msg: Append, _: &mut Self::Context) -> Self::Result {
        let (seq, prev_hash) = self.own_head()?;
        let seq = seq + 1;
        let hlc = self.tick();
        let origin = self.identity.node_id.clone();
        let hash = blake3::hash(&canonical_bytes(&origin, seq, &prev_hash, hlc, msg.entry_type, &msg.data));
        let signature = wire::hex(&self.identity.sign(hash.as_bytes()));
        let entry = LedgerEntry {
            origin,
            seq,
            prev_hash,
            hlc,
            entry_type: msg.entry_type,
            data: msg.data,
            hash: hash.to_hex().to_string(),
            signature,
        };
        insert(self.conn()?, &entry)?;
        self.head = Some((seq, entry.hash.clone()));
        Ok(entry)
    }
}

fn insert(conn: &Connection, e: &LedgerEntry) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO ledger (origin, seq, prev_hash, hlc_wall, hlc_logical, entry_type, entry_data, hash, signature, received_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            e.origin.as_str(),
            e.seq as i64,
            e.prev_hash,
            e.hlc.wall_ms as i64,
            e.hlc.logical,
            e.entry_type.as_str(),
            e.data.to_string(),
            e.hash,
            e.signature,
            wire::now_ms() as i64
        ],
    )?;
    Ok(())
}

/// Raw row, before it is trusted.
struct Row {
    origin: String,
    seq: i64,
    prev_hash: String,
    wall: i64,
    logical: i64,
    entry_type: String,
    data: String,
    hash: String,
    signature: String,
}

const ROW_COLUMNS: &str = "origin, seq, prev_hash, hlc_wall, hlc_logical, entry_type, entry_data, hash, signature";

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        origin: r.get(0)?,
        seq: r.get(1)?,
        prev_hash: r.get(2)?,
        wall: r.get(3)?,
        logical: r.get(4)?,
        entry_type: r.get(5)?,
        data: r.get(6)?,
        hash: r.get(7)?,
        signature: r.get(8)?,
    })
}

impl Row {
    fn into_entry(self) -> Result<LedgerEntry, String> {
        Ok(LedgerEntry {
            origin: NodeId::parse(&self.origin).map_err(|e| e.to_string())?,
            seq: u64::try_from(self.seq).map_err(|_| format!("negative seq {}", self.seq))?,
            prev_hash: self.prev_hash,
            hlc: Hlc {
                wall_ms: u64::try_from(self.wall).map_err(|_| "negative time".to_string())?,
                logical: u32::try_from(self.logical).map_err(|_| "bad logical clock".to_string())?,
            },
            entry_type: self.entry_type.parse().map_err(|e: wire::InvalidId| e.to_string())?,
            data: serde_json::from_str(&self.data).map_err(|e| format!("data is not JSON: {e}"))?,
            hash: self.hash,
            signature: self.signature,
        })
    }
}

/// Entries matching a filter, newest first.
#[derive(Message)]
#[rtype(result = "Result<Vec<LedgerEntry>, StoreError>")]
pub struct Query {
    pub filter: LedgerFilter,
}

impl Handler<Query> for LedgerActor {
    type Result = Result<Vec<LedgerEntry>, StoreError>;

    fn handle(&mut self, msg: Query, _: &mut Self::Context) -> Self::Result {
        let f = msg.filter;
        let mut sql = format!("SELECT {ROW_COLUMNS} FROM ledger WHERE 1=1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if !f.types.is_empty() {
            let marks = vec!["?"; f.types.len()].join(",");
            sql.push_str(&format!(" AND entry_type IN ({marks})"));
            args.extend(f.types.iter().map(|t| t.as_str().to_string().into()));
        }
        if let Some(origin) = &f.origin {
            sql.push_str(" AND origin = ?");
            args.push(origin.to_string().into());
        }
        if let Some(from) = f.from_ms {
            sql.push_str(" AND hlc_wall >= ?");
            args.push((from as i64).into());
        }
        if let Some(to) = f.to_ms {
            sql.push_str(" AND hlc_wall <= ?");
            args.push((to as i64).into());
        }
        sql.push_str(" ORDER BY hlc_wall DESC, hlc_logical DESC, origin DESC LIMIT ? OFFSET ?");
        args.push((f.limit.clamp(1, MAX_PAGE) as i64).into());
        args.push((f.offset as i64).into());
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), read_row)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row?.into_entry().map_err(StoreError::Corrupt)?);
        }
        Ok(out)
    }
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

/// Closes the ledger's connection; used on shutdown.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Close;

impl Handler<Close> for LedgerActor {
    type Result = ();

    fn handle(&mut self, _: Close, _: &mut Self::Context) {
        store::close(self.conn.take());
    }
}

/// Typed front of the ledger actor.
#[derive(Clone)]
pub struct LedgerHandle {
    addr: Addr<LedgerActor>,
    events: Option<EventBus>,
}

impl LedgerHandle {
    /// Opens the ledger's own connection (`synchronous=FULL`) and starts the actor.
    pub fn start(db_path: &Path, identity: Identity, events: Option<EventBus>) -> Result<LedgerHandle, StoreError> {
        let conn = store::open(db_path, Durability::Full)?;
        let slot = std::sync::Mutex::new(Some(conn));
        let addr = SyncArbiter::start(1, move || LedgerActor {
            conn: slot.lock().ok().and_then(|mut s| s.take()),
            identity: identity.clone(),
            head: None,
            last_hlc: Hlc { wall_ms: 0, logical: 0 },
        });
        Ok(LedgerHandle { addr, events })
    }

    pub async fn append(
        &self,
        entry_type: LedgerEntryType,
        data: serde_json::Value,
    ) -> Result<LedgerEntry, StoreError> {
        let entry = self.addr.send(Append { entry_type, data }).await.map_err(|_| StoreError::Unavailable)??;
        if let Some(events) = &self.events {
            events.publish(Event::LedgerEntry { entry: Box::new(entry.clone()) });
        }
        Ok(entry)
    }

    pub async fn query(&self, filter: LedgerFilter) -> Result<Vec<LedgerEntry>, StoreError> {
        self.addr.send(Query { filter }).await.map_err(|_| StoreError::Unavailable)?
    }

    pub async fn verify(&self) -> Result<VerifyReport, StoreError> {
        self.addr.send(Verify).await.map_err(|_| StoreError::Unavailable)?
    }

    pub async fn heads(&self) -> Result<Vec<Head>, StoreError> {
        self.addr.send(Heads).await.map_err(|_| StoreError::Unavailable)?
    }

    pub async fn entries_after(
        &self,
        origin: NodeId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        self.addr.send(EntriesAfter { origin, after_seq, limit }).await.map_err(|_| StoreError::Unavailable)?
    }

    pub async fn insert_remote(&self, entries: Vec<LedgerEntry>) -> Result<InsertOutcome, BatchError> {
        self.addr.send(InsertRemote { entries }).await.map_err(|_| BatchError::Store(StoreError::Unavailable))?
    }

    pub async fn equivocators(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.addr.send(Equivocators).await.map_err(|_| StoreError::Unavailable)?
    }

    /// Closes the ledger's connection; used on shutdown.
    pub async fn close(&self) {
        let _ = self.addr.send(Close).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DB_FILE;

    async fn fresh_ledger() -> (tempfile::TempDir, LedgerHandle, Identity) {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = Identity::from_secret(&[3; 32]);
        let path = dir.path().join(DB_FILE);
        let conn = store::open(&path, Durability::Normal).expect("open");
        conn.execute(
            "INSERT INTO nodes (id, name, address, public_key, capabilities, last_seen_at, joined_at) VALUES (?1, 'n', 'a', ?2, '{}', 0, 0)",
            params![id.node_id.as_str(), id.public_key().to_vec()],
        )
        .expect("roster row");
        let handle = LedgerHandle::start(&path, id.clone(), None).expect("start");
        (dir, handle, id)
    }

    #[actix::test]
    async fn entries_chain_and_verify() {
        let (_dir, ledger, id) = fresh_ledger().await;
        let a =
            ledger.append(LedgerEntryType::NodeJoined, serde_json::json!({"b": 1, "a": [1, 2]})).await.expect("append");
        let b = ledger.append(LedgerEntryType::KeyCreated, serde_json::json!({"name": "ci"})).await.expect("append");
        assert_eq!(a.seq, 1);
        assert_eq!(a.prev_hash, GENESIS_HASH);
        assert_eq!(b.prev_hash, a.hash);
        assert!(b.hlc > a.hlc);
        check_entry(&b, &a.hash, &id.public_key()).expect("checks");
        let report = ledger.verify().await.expect("verify");
        assert!(report.ok, "{report:?}");
        assert_eq!(report.chains[0].entries, 2);
    }

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
    async fn filters_select_and_page() {
        let (_dir, ledger, id) = fresh_ledger().await;
        for i in 0..5 {
            ledger.append(LedgerEntryType::KeyCreated, serde_json::json!({ "i": i })).await.expect("append");
        }
        ledger.append(LedgerEntryType::KeyRevoked, serde_json::json!({})).await.expect("append");
        let all = ledger.query(LedgerFilter { limit: 100, ..Default::default() }).await.expect("query");
        assert_eq!(all.len(), 6);
        assert_eq!(all[0].entry_type, LedgerEntryType::KeyRevoked, "newest first");
        let revoked = ledger
            .query(LedgerFilter { types: vec![LedgerEntryType::KeyRevoked], limit: 100, ..Default::default() })
            .await
            .expect("query");
        assert_eq!(revoked.len(), 1);
        let page = ledger.query(LedgerFilter { limit: 2, offset: 2, ..Default::default() }).await.expect("query");
        assert_eq!(page.len(), 2);
        assert_eq!(page[0].seq, 4);
        let other = NodeId::parse("00000000000000aa").expect("valid");
        let none =
            ledger.query(LedgerFilter { origin: Some(other), limit: 10, ..Default::default() }).await.expect("query");
        assert!(none.is_empty());
        let mine = ledger
            .query(LedgerFilter { origin: Some(id.node_id), limit: 10, ..Default::default() })
            .await
            .expect("query");
        assert_eq!(mine.len(), 6);
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
