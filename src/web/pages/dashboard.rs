//! The dashboard: pool totals as bars (plan §6.1's summary), the nodes, recent builds with their
//! durations over time, and the latest ledger activity.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use maud::html;

use super::{bar, bytes, caller, html_response, layout, time};
use crate::web::AppState;

pub async fn page(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let who = match caller(&req, &state) {
        Ok(c) => c,
        Err(redirect) => return *redirect,
    };
    let pool = match state.node.pool.view().await {
        Ok(p) => p,
        Err(e) => return super::super::error_page(Some(&who), &e.to_string()),
    };
    let recent = state.node.builds.history(30, None).await.unwrap_or_default();
    let activity = state
        .node
        .ledger
        .query(buildnet_actors::ledger::LedgerFilter { limit: 8, ..Default::default() })
        .await
        .unwrap_or_default();
    let names: std::collections::BTreeMap<String, String> =
        pool.nodes.iter().map(|n| (n.id.to_string(), n.name.clone())).collect();
    let durations = super::benchmarks::Series {
        label: "build duration".into(),
        points: recent.iter().rev().filter_map(|b| b.duration_ms.map(|d| (b.started_at_ms, d as f64))).collect(),
    };
    let a = &pool.aggregate;
    let leased_cores = a.total_cpu_cores.saturating_sub(a.available_cpu_cores);
    let leased_mem = a.total_memory_bytes.saturating_sub(a.available_memory_bytes);
    let leased_disk = a.total_storage_bytes.saturating_sub(a.available_storage_bytes);
    let body = html! {
        h1 { "Pool" }
        section.summary {
            div.totals {
                div.total { span.num #total-cores data-value=(a.total_cpu_cores) { (a.total_cpu_cores) } span.unit { "cores" } }
                div.total { span.num #total-memory data-value=(a.total_memory_bytes) { (bytes(a.total_memory_bytes)) } span.unit { "memory" } }
                div.total { span.num #total-storage data-value=(a.total_storage_bytes) { (bytes(a.total_storage_bytes)) } span.unit { "storage on " (a.storage_volumes) " volumes" } }
                div.total { span.num #total-nodes { (pool.nodes.len()) } span.unit { "nodes" } }
            }
            p.caption { "Offered by the pool after each node's limits; the bars show what builds hold right now." }
            (bar("CPU", leased_cores as f64, a.total_cpu_cores as f64, &format!("{leased_cores}/{} cores leased", a.total_cpu_cores)))
            (bar("RAM", leased_mem as f64, a.total_memory_bytes as f64, &format!("{} / {} leased", bytes(leased_mem), bytes(a.total_memory_bytes))))
            (bar("Disk", leased_disk as f64, a.total_storage_bytes as f64, &format!("{} / {} leased", bytes(leased_disk), bytes(a.total_storage_bytes))))
        }
        h2 { "Nodes" }
        table {
            thead { tr { th { "Name" } th { "Status" } th { "Role" } th { "Cores" } th { "Memory" } th { "Storage" } th { "Latency" } th { "Tools" } } }
            tbody {
                @for n in &pool.nodes {
                    tr {
                        td { a href=(format!("/nodes/{}", n.id)) { (n.name) } br; code.small { (n.id) } }
                        td { span class=(format!("status {}", n.status)) { (n.status) } }
                        td { (n.role) @if n.id == pool.coordinator { " ★" } }
                        td { (n.cores_available) " / " (n.cores) }
                        td { (bytes(n.memory_available_bytes)) " / " (bytes(n.memory_bytes)) }
                        td { (bytes(n.storage_available_bytes)) " / " (bytes(n.storage_bytes)) }
                        td { (format!("{:.1} ms", n.latency_ms)) }
                        td { (n.tools.len() + n.runtimes.len()) }
                    }
                }
            }
        }
        h2 { "Tools and runtimes in the pool" }
        @if a.tools.is_empty() && a.runtimes.is_empty() {
            (super::empty("No usable tools or runtimes were found."))
        } @else {
            ul.chips {
                @for (name, nodes) in a.tools.iter().chain(a.runtimes.iter()) {
                    li { (name) span.small { " ×" (nodes.len()) } }
                }
            }
        }
        h2 { "Recent builds" }
        @if recent.is_empty() { (super::empty("No builds yet: start one from the Builder or with buildnet build.")) } @else {
            table #recent-builds {
                thead { tr { th { "Build" } th { "Status" } th { "Started" } th { "Duration" } th { "Ran / cached" } } }
                tbody {
                    @for b in recent.iter().take(5) {
                        tr {
                            td { a href=(format!("/builds/{}", b.id)) { code { (b.id) } } }
                            td { span class=(format!("build-status {}", b.status)) { (b.status) } }
                            td { (time(b.started_at_ms)) }
                            td { (b.duration_ms.map(|d| format!("{d} ms")).unwrap_or_else(|| "running".into())) }
                            td { (b.executed) " / " (b.cached) }
                        }
                    }
                }
            }
            div.charts { (super::benchmarks::line_chart("Build durations, last 30 builds", "ms", &[durations])) }
        }
        h2 { "Recent activity" }
        @if activity.is_empty() { (super::empty("Nothing in the ledger yet.")) } @else {
            ol.timeline #recent-activity {
                @for e in &activity {
                    li.entry data-type=(e.entry_type.as_str()) {
                        div.entry-head {
                            strong { (e.entry_type.as_str()) }
                            span.small { (names.get(e.origin.as_str()).cloned().unwrap_or_else(|| e.origin.to_string())) " · " (time(e.hlc.wall_ms)) }
                        }
                    }
                }
            }
            p { a href="/ledger" { "The whole ledger" } }
        }
        p.small { "Updated " (time(a.last_updated_ms)) }
    };
    html_response(StatusCode::OK, layout("Dashboard", Some(&who), "/", body))
}
