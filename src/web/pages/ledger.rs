//! The ledger timeline (plan §10.3): filter by type and node, load more — all as plain links
//! and a GET form, so it works without JavaScript.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use buildnet_actors::wire::LedgerEntryType;
use maud::html;

use super::{caller, html_response, layout, time};
use crate::web::api::ledger::{LedgerQuery, DEFAULT_LIMIT};
use crate::web::AppState;

pub async fn page(req: HttpRequest, state: web::Data<AppState>, query: web::Query<LedgerQuery>) -> HttpResponse {
    let who = match caller(&req, &state) {
        Ok(c) => c,
        Err(redirect) => return *redirect,
    };
    let filter = match query.filter() {
        Ok(f) => f,
        Err(e) => return super::super::error_page(Some(&who), &e.message),
    };
    let entries = match state.node.ledger.query(filter.clone()).await {
        Ok(e) => e,
        Err(e) => return super::super::error_page(Some(&who), &e.to_string()),
    };
    let selected_type = filter.types.first().map(|t| t.as_str()).unwrap_or("");
    let origin = filter.origin.as_ref().map(|o| o.to_string()).unwrap_or_default();
    let more = format!("/ledger?types={selected_type}&origin={origin}&limit={}", filter.limit + DEFAULT_LIMIT);
    let body = html! {
        h1 { "Ledger" }
        p.small { "Every node's signed, hash-chained history, merged by hybrid logical clock. "
                  "Check it with " code { "buildnet ledger verify" } "." }
        form.filters method="get" action="/ledger" {
            label { "Type "
                select name="types" {
                    option value="" selected[selected_type.is_empty()] { "all" }
                    @for t in LedgerEntryType::ALL { option value=(t.as_str()) selected[t.as_str() == selected_type] { (t.as_str()) } }
                }
            }
            label { "Node " input type="text" name="origin" value=(origin) placeholder="node id" size="18"; }
            input type="hidden" name="limit" value=(filter.limit);
            button type="submit" { "Filter" }
        }
        @if entries.is_empty() { (super::empty("No entries match.")) }
        ol.timeline #ledger-entries {
            @for e in &entries {
                li.entry data-type=(e.entry_type.as_str()) {
                    div.entry-head {
                        strong { (e.entry_type.as_str()) }
                        span.small { (time(e.hlc.wall_ms)) }
                    }
                    pre.data { (serde_json::to_string(&e.data).unwrap_or_default()) }
                    div.small { "From " code { (e.origin) } " · seq #" (e.seq) " · hash " code { (e.hash.get(..16).unwrap_or(&e.hash)) } }
                }
            }
        }
        @if entries.len() >= filter.limit { p { a.button href=(more) { "Load more" } } }
    };
    html_response(StatusCode::OK, layout("Ledger", Some(&who), "/ledger", body))
}
