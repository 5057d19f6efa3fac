//! The `ledger` table's row layout: writing an entry, and reading a row back as an untrusted
//! `LedgerEntry`.

use rusqlite::{params, Connection};

use crate::store::StoreError;
use crate::wire::{self, Hlc, LedgerEntry, NodeId};

/// Writes one entry; its checks are the caller's. The statement is prepared once per
/// connection (a batch of thousands of entries does not parse it again for each).
pub(super) fn insert(conn: &Connection, e: &LedgerEntry) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO ledger (origin, seq, prev_hash, hlc_wall, hlc_logical, entry_type, entry_data, hash, signature, received_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
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
    ])?;
    Ok(())
}

/// Raw row, before it is trusted.
pub(super) struct Row {
    origin: String,
    pub(super) seq: i64,
    prev_hash: String,
    wall: i64,
    logical: i64,
    entry_type: String,
    data: String,
    hash: String,
    signature: String,
}

pub(super) const ROW_COLUMNS: &str =
    "origin, seq, prev_hash, hlc_wall, hlc_logical, entry_type, entry_data, hash, signature";

pub(super) fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
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
    pub(super) fn into_entry(self) -> Result<LedgerEntry, String> {
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
