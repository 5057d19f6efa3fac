//! `/api/ledger`: the merged timeline with plan §10.2's filters, and chain verification.

use actix_web::{web, HttpResponse};
use buildnet_actors::ledger::{LedgerFilter, VerifyReport, MAX_PAGE};
use buildnet_actors::wire::{Action, LedgerEntry, LedgerEntryType, NodeId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::web::auth::Caller;
use crate::web::error::{ApiError, ErrorBody};
use crate::web::query::Query;
use crate::web::AppState;

/// Entries returned when no limit is given.
pub const DEFAULT_LIMIT: usize = 50;

/// The filters; plan §10.2's names (`entry_types`, `origin_node`, `from_time`, `to_time`) are
/// accepted as well.
#[derive(Debug, Default, Clone, Deserialize, IntoParams)]
pub struct LedgerQuery {
    /// Comma-separated entry types, e.g. `KeyCreated,KeyRevoked` (also `entry_types`).
    #[serde(alias = "entry_types")]
    pub types: Option<String>,
    /// Only entries from this node: its id or name (also `origin_node`).
    #[serde(alias = "origin_node")]
    pub origin: Option<String>,
    /// From this time: RFC 3339 or milliseconds since the epoch (also `from_time`).
    #[serde(alias = "from_time")]
    pub from: Option<String>,
    /// Up to this time: RFC 3339 or milliseconds since the epoch (also `to_time`).
    #[serde(alias = "to_time")]
    pub to: Option<String>,
    /// At most this many entries (1–1000, default 50).
    pub limit: Option<String>,
    /// Skip this many (for "load more").
    pub offset: Option<String>,
}

fn time(field: &str, text: &str) -> Result<u64, ApiError> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(text).map(|t| t.timestamp_millis().max(0) as u64).map_err(|_| {
        ApiError::bad_request("invalid_query", format!("{field}: expected RFC 3339 time or milliseconds, got '{text}'"))
    })
}

fn number(field: &str, text: &str, range: std::ops::RangeInclusive<usize>) -> Result<usize, ApiError> {
    text.parse::<usize>().ok().filter(|n| range.contains(n)).ok_or_else(|| {
        let (min, max) = (range.start(), range.end());
        ApiError::bad_request(
            "invalid_query",
            format!("{field}: expected an integer from {min} to {max}, got '{text}'"),
        )
    })
}

impl LedgerQuery {
    /// Turns query text into a checked filter; errors name the parameter.
    pub fn filter(&self) -> Result<LedgerFilter, ApiError> {
        let nonempty = |o: &Option<String>| o.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
        let mut filter = LedgerFilter { limit: DEFAULT_LIMIT, ..Default::default() };
        if let Some(types) = nonempty(&self.types) {
            for t in types.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                filter.types.push(
                    t.parse::<LedgerEntryType>()
                        .map_err(|e| ApiError::bad_request("invalid_query", format!("types: {e}")))?,
                );
            }
        }
        if let Some(origin) = nonempty(&self.origin) {
            filter.origin = Some(
                NodeId::parse(&origin).map_err(|e| ApiError::bad_request("invalid_query", format!("origin: {e}")))?,
            );
        }
        if let Some(from) = nonempty(&self.from) {
            filter.from_ms = Some(time("from", &from)?);
        }
        if let Some(to) = nonempty(&self.to) {
            filter.to_ms = Some(time("to", &to)?);
        }
        if let Some(limit) = nonempty(&self.limit) {
            filter.limit = number("limit", &limit, 1..=MAX_PAGE)?;
        }
        if let Some(offset) = nonempty(&self.offset) {
            filter.offset = number("offset", &offset, 0..=usize::MAX / 2)?;
        }
        Ok(filter)
    }
}

/// Parameters `GET /api/ledger` takes (with plan §10.2's names).
pub(crate) const PARAMS: [&str; 10] =
    ["types", "entry_types", "origin", "origin_node", "from", "from_time", "to", "to_time", "limit", "offset"];

/// A ledger entry with plan §10.1's field names beside ours: `origin_node` (= `origin`),
/// `sequence` (= `seq`) and `timestamp` (RFC 3339 of `hlc.wall_ms`).
#[derive(Serialize, Deserialize, ToSchema)]
pub struct PlanLedgerEntry {
    #[serde(flatten)]
    pub entry: LedgerEntry,
    pub origin_node: String,
    pub sequence: u64,
    pub timestamp: String,
}

impl From<LedgerEntry> for PlanLedgerEntry {
    fn from(entry: LedgerEntry) -> Self {
        let timestamp = chrono::DateTime::from_timestamp_millis(entry.hlc.wall_ms as i64)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default();
        PlanLedgerEntry { origin_node: entry.origin.to_string(), sequence: entry.seq, timestamp, entry }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct LedgerResponse {
    pub entries: Vec<PlanLedgerEntry>,
}

/// Ledger entries, newest first.
#[utoipa::path(get, path = "/api/ledger", tag = "ledger", params(LedgerQuery),
    responses((status = 200, body = LedgerResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_ledger(
    state: web::Data<AppState>,
    caller: Caller,
    query: Query<LedgerQuery>,
    request: actix_web::HttpRequest,
) -> Result<HttpResponse, ApiError> {
    caller.require(Action::View, "read the ledger")?;
    super::known_params(&request, &PARAMS)?;
    let mut query = query.into_inner();
    // A node's name is as good as its id (a name two nodes share is refused, listing the ids).
    if let Some(origin) = query.origin.as_deref().map(str::trim).filter(|o| !o.is_empty() && NodeId::parse(o).is_err())
    {
        let id = state
            .node
            .pool
            .resolve(origin)
            .await
            .map_err(|e| ApiError::bad_request("invalid_query", format!("origin: {e}")))?;
        query.origin = Some(id.to_string());
    }
    let entries = state.node.ledger.query(query.filter()?).await?;
    Ok(HttpResponse::Ok().json(LedgerResponse { entries: entries.into_iter().map(PlanLedgerEntry::from).collect() }))
}

/// Checks every chain: links, hashes, signatures. `ok` is false and `first_bad` names the
/// entry when any row was altered.
#[utoipa::path(get, path = "/api/ledger/verify", tag = "ledger",
    responses((status = 200, body = VerifyReport), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn verify(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require(Action::View, "verify the ledger")?;
    Ok(HttpResponse::Ok().json(state.node.ledger.verify().await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_parsed_and_errors_name_the_parameter() {
        let q = LedgerQuery {
            types: Some("KeyCreated, NodeJoined".into()),
            limit: Some("10".into()),
            from: Some("2026-01-01T00:00:00Z".into()),
            ..Default::default()
        };
        let f = q.filter().expect("valid");
        assert_eq!(f.types, vec![LedgerEntryType::KeyCreated, LedgerEntryType::NodeJoined]);
        assert_eq!(f.limit, 10);
        assert_eq!(f.from_ms, Some(1_767_225_600_000));
        let bad = |q: LedgerQuery| q.filter().expect_err("invalid").message;
        assert!(bad(LedgerQuery { types: Some("Nope".into()), ..Default::default() }).starts_with("types:"));
        assert!(bad(LedgerQuery { limit: Some("x".into()), ..Default::default() }).starts_with("limit:"));
        assert!(bad(LedgerQuery { limit: Some("5000".into()), ..Default::default() }).starts_with("limit:"));
        assert!(bad(LedgerQuery { limit: Some("0".into()), ..Default::default() }).contains("from 1 to"));
        assert!(bad(LedgerQuery { origin: Some("zz".into()), ..Default::default() }).starts_with("origin:"));
        assert!(bad(LedgerQuery { to: Some("yesterday".into()), ..Default::default() }).starts_with("to:"));
    }
}
