//! The visual configuration builder (`/builder`): the pool as cards (every node with its cores,
//! memory, volumes, tools and runtimes), drop zones for CPU, memory, storage and tools, and a
//! summary with totals against the pool, latency between the chosen nodes, missing tools and the
//! live estimate. The server renders everything it knows; `static/builder.js` adds dragging (pointer
//! events), keyboard buttons, chips, the estimate and the save/export/run actions, all through the
//! JSON API. Without JavaScript the page shows the plain configuration form instead.
//!
//! Test hooks: cards `data-node`, their parts `data-resource` (`cpu`, `memory`, `storage:<path>`,
//! `tool:<name>`, `runtime:<name>`), zones `data-zone`, chips `data-chip="<zone>:<node>"`, the
//! estimate `data-estimate-ms`, actions `data-action`.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use buildnet_actors::pool::{PoolNode, PooledResource};
use buildnet_actors::wire::{Action, NodeState, ResourceInfo};
use maud::{html, Markup};
use serde::Deserialize;

use super::{bytes, caller, html_response, layout};
use crate::web::AppState;

#[derive(Deserialize)]
pub struct BuilderQuery {
    /// A saved configuration to open (id or name).
    config: Option<String>,
    /// The project to estimate and build.
    project: Option<String>,
}

const GB: f64 = 1024.0 * 1024.0 * 1024.0;

fn gb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / GB)
}

/// A part of a card: its label, facts for the script (`k=v;` pairs) and its keyboard button.
fn part(r: &PooledResource, zone: &str, label: Markup, attrs: &[(&str, String)]) -> Markup {
    let mut data = String::new();
    for (k, v) in attrs {
        data.push_str(&format!("{k}={v};"));
    }
    html! {
        div.part data-resource=(r.key) data-facts=(data) {
            span.part-label { (label) }
            button.add type="button" data-add=(zone) title=(format!("Add to {zone}")) aria-label=(format!("Add {} of {} to {zone}", r.key, r.node_name)) { "+ " (zone) }
        }
    }
}

/// One part of a node's card: its CPU, memory, a volume, a tool or a runtime.
fn node_part(node: &PoolNode, r: &PooledResource) -> Markup {
    match &r.resource {
        ResourceInfo::Cpu(_) => part(
            r,
            "cpu",
            html! { "CPU " span data-free-cores=(node.cores_available) { (node.cores_available) } " of " (node.cores) " cores free" },
            &[("cores", node.cores.to_string())],
        ),
        ResourceInfo::Memory(_) => {
            part(r, "memory", html! { "Memory " (gb(r.capacity)) " GB" }, &[("gb", gb(r.capacity))])
        }
        ResourceInfo::Storage(v) => {
            let speed = node
                .benchmarks
                .storage
                .iter()
                .find(|s| s.path == v.path)
                .map(|s| (s.storage_class.clone(), format!("{:.0} MB/s", s.seq_read_mbps)));
            let class = speed.as_ref().map_or(v.storage_type.clone(), |(c, _)| c.clone());
            part(
                r,
                "storage",
                html! { "Disk " code { (v.path) } " " (class) " · " (bytes(r.available)) " free"
                @if let Some((_, s)) = &speed { " · " (s) } },
                &[("free_gb", gb(r.available)), ("class", class.clone())],
            )
        }
        ResourceInfo::Tool(t) | ResourceInfo::Runtime(t) => {
            let kind = if matches!(r.resource, ResourceInfo::Tool(_)) { "tool" } else { "runtime" };
            let version = t.version.clone().unwrap_or_default();
            part(
                r,
                "tools",
                html! { (kind) " " strong { (t.name) } " " span.small { (version) } },
                &[("name", t.name.clone()), ("version", version.clone())],
            )
        }
    }
}

fn card(node: &PoolNode, resources: &[&PooledResource]) -> Markup {
    let offline = node.status == NodeState::Offline;
    let score = node.benchmarks.cpu.as_ref().map(|c| c.multi_core_score);
    html! {
        div.card.offline[offline] data-node=(node.name) data-node-id=(node.id) data-status=(node.status)
            aria-disabled=[offline.then_some("true")] tabindex="0" {
            header {
                strong.card-name { (node.name) }
                span class=(format!("status {}", node.status)) { " " (node.status) }
                @if let Some(s) = score { span.small.score title="CPU benchmark, all cores" { " · " (format!("{s:.0}")) " units/s" } }
            }
            @for r in resources { (node_part(node, r)) }
        }
    }
}

pub async fn page(req: HttpRequest, state: web::Data<AppState>, query: web::Query<BuilderQuery>) -> HttpResponse {
    let who = match caller(&req, &state) {
        Ok(c) => c,
        Err(redirect) => return *redirect,
    };
    let view = match state.node.pool.view().await {
        Ok(v) => v,
        Err(e) => return crate::web::error_page(Some(&who), &e.to_string()),
    };
    let resources = state.node.pool.resources(None, None).await.unwrap_or_default();
    let mut by_node: BTreeMap<String, Vec<&PooledResource>> = BTreeMap::new();
    for r in &resources {
        by_node.entry(r.node_id.to_string()).or_default().push(r);
    }
    let opened = match &query.config {
        Some(id) => match state.node.builds.config(id).await {
            Ok(c) => Some(c),
            Err(e) => return crate::web::error_page(Some(&who), &format!("config: {e}")),
        },
        None => None,
    };
    // Latency between every pair, as each node measured it (network benchmarks), else this
    // node's heartbeat round trip to its peers.
    let mut latency: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    let me = state.node.identity.node_id.to_string();
    for from in &view.nodes {
        for to in &view.nodes {
            if from.id == to.id {
                continue;
            }
            let measured = from.benchmarks.network_to(to.id.as_str()).map(|r| r.latency_ms);
            let heartbeat = (from.id.as_str() == me).then_some(to.latency_ms).filter(|ms| *ms > 0.0);
            if let Some(ms) = measured.or(heartbeat) {
                latency.entry(from.id.to_string()).or_default().insert(to.id.to_string(), ms);
            }
        }
    }
    let totals = &view.aggregate;
    let csrf = who.csrf.clone().unwrap_or_default();
    let can_save = who.role.allows(Action::ModifyConfig);
    let can_run = who.role.allows(Action::TriggerBuild);
    let config_json = opened.as_ref().and_then(|c| serde_json::to_string(c).ok());
    let body = html! {
        h1 { "Configuration builder" }
        div.fallback data-fallback="" {
            p { "The builder needs JavaScript. Without it, describe a configuration with the form:" }
            (super::configs::create_form(&csrf, None))
        }
        section.builder hidden data-builder="" data-csrf=(csrf) data-local-id=(me)
            data-latency=(serde_json::to_string(&latency).unwrap_or_default())
            data-config=[config_json] data-project=[query.project.clone()]
            data-pool-cores=(totals.total_cpu_cores) data-pool-memory-gb=(gb(totals.total_memory_bytes))
            data-pool-disk-gb=(gb(totals.total_storage_bytes))
            data-can-save=[can_save.then_some("")] data-can-run=[can_run.then_some("")] {
            p.small { "Drag a node (or one of its parts) into a zone, or use its " strong { "+" } " buttons; edit a chip's amount; the estimate follows every change." }
            div.builder-grid {
                aside.palette aria-label="The pool" {
                    h2 { "Pool" }
                    @for node in &view.nodes {
                        (card(node, by_node.get(node.id.as_str()).map(Vec::as_slice).unwrap_or(&[])))
                    }
                }
                div.canvas {
                    div.controls {
                        label { "Project " select data-project-select="" { option value="" { "(none)" } } }
                        label { "Template " select data-template-select="" { option value="" { "(none)" } } }
                        label { "Name " input type="text" data-config-name="" maxlength="64" value=[opened.as_ref().map(|c| c.name.clone())]; }
                    }
                    @for (zone, title) in [("cpu", "CPU"), ("memory", "Memory"), ("storage", "Storage"), ("tools", "Tools and runtimes")] {
                        div.zone data-zone=(zone) aria-label=(format!("{title} zone")) {
                            h3 { (title) }
                            ul.chips data-chips=(zone) {}
                            p.zone-hint { "Drop here" }
                        }
                    }
                }
                aside.summary-panel aria-live="polite" {
                    h2 { "Summary" }
                    @for (what, total) in [("cores", totals.total_cpu_cores.to_string()), ("memory", gb(totals.total_memory_bytes)), ("disk", gb(totals.total_storage_bytes))] {
                        div.bar data-total=(what) data-value="0" {
                            span.bar-label { (what) }
                            svg width="200" height="14" viewBox="0 0 200 14" role="img" aria-label=(format!("{what} selected of the pool")) {
                                rect x="0" y="0" width="200" height="14" rx="3" class="bar-bg" {}
                                rect x="0" y="0" width="0" height="14" rx="3" class="bar-fill" data-bar-fill=(what) {}
                            }
                            span.bar-text data-total-text=(what) { "0 of " (total) }
                        }
                    }
                    p data-latency-out="" { "Latency: choose two or more nodes." }
                    p.warning data-missing-tools="" hidden {}
                    div.estimate data-estimate-ms="" { span data-estimate-text="" { "Estimate: choose a project." } }
                    p.error data-message="" role="alert" hidden {}
                    div.actions {
                        button type="button" data-action="save-config" disabled[!can_save] { "Save as configuration" }
                        button type="button" data-action="save-template" disabled[!can_save] { "Save as template" }
                        button type="button" data-action="export" { "Export JSON" }
                        button type="button" data-action="run" disabled[!can_run] { "Run build" }
                    }
                }
            }
        }
        script src="/static/builder.js" defer {}
    };
    html_response(StatusCode::OK, layout("Builder", Some(&who), "/builder", body))
}
