//! The ledger timeline (plan §10.3): filter by type, node and time range, load more — all as
//! plain links and a GET form, so it works without JavaScript. Each entry's data is shown as
//! fields, not JSON, with build and node ids as links (nodes by name) and a dot coloured by kind.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use buildnet_actors::wire::LedgerEntryType;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;

use super::{caller, html_response, layout, time};
use crate::web::api::ledger::{LedgerQuery, DEFAULT_LIMIT, PARAMS};
use crate::web::AppState;

/// The page's query: the API's filters plus a relative time range.
#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    #[serde(flatten)]
    api: LedgerQuery,
    /// `1h`, `24h` or `7d`: entries since then (overrides `from`).
    since: Option<String>,
}

const RANGES: [(&str, &str, u64); 3] =
    [("1h", "last hour", 3_600_000), ("24h", "last day", 86_400_000), ("7d", "last week", 604_800_000)];

/// Fields whose values name a node or a build, and where their pages are.
fn link_for(key: &str, value: &str, names: &BTreeMap<String, String>) -> Option<(String, String)> {
    match key {
        "build_id" => Some((format!("/builds/{value}"), value.to_string())),
        "node_id" | "for_node" | "admitted_by" | "origin" | "target_node" | "coordinator" => {
            names.get(value).map(|name| (format!("/nodes/{value}"), name.clone()))
        }
        _ => None,
    }
}

/// A value as text: scalars as they are, lists and objects as `k=v` pairs, never JSON.
fn plain(v: &Value) -> String {
    match v {
        Value::Null => "—".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.len() > 12 => {
            format!("{} … ({} in all)", items.iter().take(12).map(plain).collect::<Vec<_>>().join(", "), items.len())
        }
        Value::Array(items) => items.iter().map(plain).collect::<Vec<_>>().join(", "),
        Value::Object(map) => map.iter().map(|(k, v)| format!("{k}={}", plain(v))).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// An entry's data as a list of fields.
fn fields(data: &Value, names: &BTreeMap<String, String>) -> Markup {
    let Value::Object(map) = data else { return html! { span { (plain(data)) } } };
    html! {
        dl.kv {
            @for (k, v) in map {
                dt { (k) }
                dd {
                    @match v.as_str().and_then(|s| link_for(k, s, names)) {
                        Some((href, text)) => a href=(href) { (text) },
                        None => (plain(v)),
                    }
                }
            }
        }
    }
}

pub async fn page(req: HttpRequest, state: web::Data<AppState>, query: web::Query<PageQuery>) -> HttpResponse {
    let who = match caller(&req, &state) {
        Ok(c) => c,
        Err(redirect) => return *redirect,
    };
    // A misspelt filter (`type=` for `types=`) is said, as the API says it, rather than the
    // whole ledger shown as if filtered.
    let known: Vec<&str> = PARAMS.iter().copied().chain(["since"]).collect();
    if let Err(e) = crate::web::api::known_params(&req, &known) {
        return super::super::error_page(Some(&who), &e.message);
    }
    let mut filter = match query.api.filter() {
        Ok(f) => f,
        Err(e) => return super::super::error_page(Some(&who), &e.message),
    };
    let since = query.since.clone().unwrap_or_default();
    if !since.is_empty() {
        match RANGES.iter().find(|(k, _, _)| *k == since) {
            Some((_, _, ms)) => filter.from_ms = Some(buildnet_actors::wire::now_ms().saturating_sub(*ms)),
            None => {
                return super::super::error_page(Some(&who), &format!("since: expected 1h, 24h or 7d, got '{since}'"))
            }
        }
    }
    let entries = match state.node.ledger.query(filter.clone()).await {
        Ok(e) => e,
        Err(e) => return super::super::error_page(Some(&who), &e.to_string()),
    };
    let nodes = state.node.pool.view().await.map(|v| v.nodes).unwrap_or_default();
    let mut names: BTreeMap<String, String> = nodes.iter().map(|n| (n.id.to_string(), n.name.clone())).collect();
    names.entry(state.node.identity.node_id.to_string()).or_insert_with(|| state.node.identity.node_id.to_string());
    let selected_type = filter.types.first().map(|t| t.as_str()).unwrap_or("");
    let origin = filter.origin.as_ref().map(|o| o.to_string()).unwrap_or_default();
    let more =
        format!("/ledger?types={selected_type}&origin={origin}&since={since}&limit={}", filter.limit + DEFAULT_LIMIT);
    let body = html! {
        h1 { "Ledger" }
        p.small { "Every node's signed, hash-chained history, merged by hybrid logical clock. "
                  "Check it with " code { "buildnet ledger verify" } "." }
        form.filters method="get" action="/ledger" {
            label { "Type "
                select name="types" data-filter="type" {
                    option value="" selected[selected_type.is_empty()] { "all" }
                    @for t in LedgerEntryType::ALL { option value=(t.as_str()) selected[t.as_str() == selected_type] { (t.as_str()) } }
                }
            }
            label { "Node "
                select name="origin" data-filter="node" {
                    option value="" selected[origin.is_empty()] { "all" }
                    @for (id, name) in &names { option value=(id) selected[*id == origin] { (name) } }
                }
            }
            label { "Time "
                select name="since" data-filter="since" {
                    option value="" selected[since.is_empty()] { "all" }
                    @for (key, label, _) in RANGES { option value=(key) selected[key == since] { (label) } }
                }
            }
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
                    (fields(&e.data, &names))
                    div.small { "From "
                        @match names.get(e.origin.as_str()) {
                            Some(name) => a href=(format!("/nodes/{}", e.origin)) { (name) },
                            None => code { (e.origin) },
                        }
                        " · seq #" (e.seq) " · hash " code { (e.hash.get(..16).unwrap_or(&e.hash)) } }
                }
            }
        }
        @if entries.len() >= filter.limit { p { a.button href=(more) { "Load more" } } }
    };
    html_response(StatusCode::OK, layout("Ledger", Some(&who), "/ledger", body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_fields_with_links_never_json() {
        let names = BTreeMap::from([("00000000000000aa".to_string(), "alpha".to_string())]);
        let data = serde_json::json!({"build_id": "b1", "node_id": "00000000000000aa", "reasons": {"unknown token": 3}, "packages": ["a", "b"]});
        let html = fields(&data, &names).into_string();
        assert!(html.contains("href=\"/builds/b1\"") && html.contains(">alpha</a>"), "{html}");
        assert!(html.contains("unknown token=3") && html.contains("a, b"), "{html}");
        assert!(!html.contains("{&quot;") && !html.contains("{\""), "{html}");
    }
}
