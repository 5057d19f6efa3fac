//! The node page: every resource with its numbers, tools and runtimes with versions and
//! capabilities, and the leases each resource has granted.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use buildnet_actors::resource::ResourceInfo;
use buildnet_actors::wire::{Action, ToolInfo};
use maud::{html, Markup};
use serde::Deserialize;

use super::{bytes, caller, html_response, layout, time};
use crate::web::AppState;

fn tools_table(list: &[ToolInfo]) -> Markup {
    html! {
        @if list.is_empty() { (super::empty("None found.")) } @else {
            table {
                thead { tr { th { "Name" } th { "Version" } th { "Path" } th { "Capabilities" } } }
                tbody {
                    @for t in list {
                        tr class=[t.error.as_ref().map(|_| "broken")] {
                            td { (t.name) }
                            td { @if let Some(v) = &t.version { (v) br; } span.small { (t.version_output.clone().unwrap_or_default()) } }
                            td { code { (t.path) } }
                            td {
                                @if let Some(e) = &t.error { span.error { "not usable: " (e) } }
                                @else if t.capabilities.len() > 24 {
                                    details { summary { (t.capabilities.len()) " capabilities" } (t.capabilities.join(", ")) }
                                } @else { (t.capabilities.join(", ")) }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub async fn page(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let who = match caller(&req, &state) {
        Ok(c) => c,
        Err(redirect) => return *redirect,
    };
    match state.node.status().await {
        Ok(s) => render(&who, &s, true, &state).await,
        Err(e) => super::super::error_page(Some(&who), &e.to_string()),
    }
}

/// A peer's page, from what it last advertised.
pub async fn remote_page(req: HttpRequest, state: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    let who = match caller(&req, &state) {
        Ok(c) => c,
        Err(redirect) => return *redirect,
    };
    if *id == state.node.identity.node_id.to_string() {
        return page(req, state).await;
    }
    let peers = state.node.pool.peers().await;
    match peers.into_iter().find(|p| p.node_id.as_str() == id.as_str()) {
        Some(p) => match p.advert {
            Some(status) => {
                let mut status = std::sync::Arc::unwrap_or_clone(status);
                status.status = p.status;
                render(&who, &status, false, &state).await
            }
            None => super::super::error_page(
                Some(&who),
                &format!("{} ({}) has not advertised its resources yet; it is {}", p.name, p.node_id, p.status),
            ),
        },
        None => super::not_found(Some(&who), &format!("/nodes/{id}")),
    }
}

async fn render(
    who: &crate::web::auth::Caller,
    s: &buildnet_actors::node::NodeStatus,
    local: bool,
    state: &AppState,
) -> HttpResponse {
    let r = &s.resources;
    let names: std::collections::BTreeMap<String, String> = match state.node.pool.view().await {
        Ok(v) => v.nodes.iter().map(|n| (n.id.to_string(), n.name.clone())).collect(),
        Err(_) => Default::default(),
    };
    let history = super::benchmarks::history_charts(state, &s.node_id, &names).await;
    let body = html! {
        h1 { (s.name) " " span.small { code { (s.node_id) } } }
        p { "Serving " code { (s.address) } " · version " (s.version) " · " span class=(format!("status {}", s.status)) { (s.status) }
            " · role " (s.role) " · sandbox " (s.sandbox) " · up since " (time(s.started_at_ms)) }
        @if !local { p.notice { "Resources as " (s.name) " last advertised them over the mesh." } }
        @if local && who.role.allows(Action::ModifyResources) {
            form.inline method="post" action="/node/scan" {
                input type="hidden" name="csrf" value=(who.csrf.clone().unwrap_or_default());
                button type="submit" { "Rescan resources" }
                span.small { " Last scan " (time(r.scanned_at_ms)) ", took " (r.scan_duration_ms) " ms." }
            }
        }
        h2 { "CPU" }
        dl.facts {
            dt { "Model" } dd #cpu-model { (r.cpu.model) }
            dt { "Logical cores" } dd #cpu-count { (r.cpu.count) }
            dt { "Physical cores" } dd { (r.cpu.physical_count.map_or("unknown".to_string(), |n| n.to_string())) }
            dt { "Offered" } dd #cpu-offered { (r.cpu.offered) }
            dt { "Architecture" } dd { (r.cpu.architecture) }
            dt { "Frequency" } dd { (r.cpu.frequency_mhz) " MHz" }
            dt { "Features" } dd { (r.cpu.features.join(" ")) }
        }
        h2 { "Memory" }
        dl.facts {
            dt { "Total" } dd #memory-total data-value=(r.memory.total_bytes) { (bytes(r.memory.total_bytes)) }
            dt { "Available" } dd { (bytes(r.memory.available_bytes)) }
            dt { "Offered" } dd { (bytes(r.memory.offered_bytes)) }
        }
        h2 { "Storage" }
        table {
            thead { tr { th { "Path" } th { "Purpose" } th { "Mount" } th { "Type" } th { "Total" } th { "Available" } th { "Offered" } } }
            tbody {
                @for v in &r.storage {
                    tr { td { code { (v.path) } } td { (v.purpose) } td { code { (v.mount_point) } } td { (v.storage_type) }
                         td { (bytes(v.total_bytes)) } td { (bytes(v.available_bytes)) } td { (bytes(v.offered_bytes)) } }
                }
            }
        }
        h2 { "Tools" }
        (tools_table(&r.tools))
        h2 { "Runtimes" }
        (tools_table(&r.runtimes))
        h2 { "Network interfaces" }
        table {
            thead { tr { th { "Name" } th { "Addresses" } th { "MAC" } } }
            tbody { @for n in &r.network { tr { td { (n.name) } td { (n.addresses.join(", ")) } td { code { (n.mac_address) } } } } }
        }
        h2 #benchmarks { "Benchmarks" }
        (super::benchmarks::latest(&s.benchmarks, &names))
        (history)
        h2 { "Leases" }
        table {
            thead { tr { th { "Resource" } th { "Capacity" } th { "Leased" } th { "Available" } th { "Holders" } } }
            tbody {
                @for rs in &s.resource_status {
                    @let fmt = |n: u64| if matches!(rs.resource, ResourceInfo::Memory(_) | ResourceInfo::Storage(_)) { bytes(n) } else { format!("{n} {}", rs.unit) };
                    tr { td { code { (rs.key) } } td { (fmt(rs.capacity)) } td { (fmt(rs.leased)) } td { (fmt(rs.available)) }
                         td { (rs.leases.iter().map(|l| l.holder.as_str()).collect::<Vec<_>>().join(", ")) } }
                }
            }
        }
    };
    html_response(StatusCode::OK, layout(&s.name, Some(who), if local { "/node" } else { "/nodes" }, body))
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

pub async fn scan(req: HttpRequest, state: web::Data<AppState>, form: web::Form<CsrfForm>) -> HttpResponse {
    let who = match super::form_caller(&req, &state, &form.csrf, Action::ModifyResources, "rescan resources") {
        Ok(c) => c,
        Err(res) => return *res,
    };
    if let Err(e) = state.node.node.rescan().await {
        return super::super::error_page(Some(&who), &e.to_string());
    }
    HttpResponse::SeeOther().insert_header((header::LOCATION, "/node")).finish()
}
