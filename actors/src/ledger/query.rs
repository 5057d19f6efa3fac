//! The timeline: filtering and paging the entries of every chain, newest first.

use actix::prelude::*;

use super::table::{read_row, ROW_COLUMNS};
use super::LedgerActor;
use crate::store::StoreError;
use crate::wire::{LedgerEntry, LedgerEntryType, NodeId};

/// Upper bound on one query's page.
pub const MAX_PAGE: usize = 1000;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::tests::fresh_ledger;

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
}
