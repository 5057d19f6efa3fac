//! The nodes page: every node with status, role and latency, and the topology as an SVG drawn
//! here — this node in the middle, each peer around it, links labelled with the round-trip
//! time this node measures, the coordinator marked.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use maud::{html, Markup};

use super::{bytes, caller, html_response, layout, time};
use crate::web::api::mesh::{topology, PoolVisualization};
use crate::web::AppState;
use buildnet_actors::mesh::roster::RosterError;
use buildnet_actors::wire::{Action, NodeId, NodeState};

/// Draws the topology.
pub fn topology_svg(viz: &PoolVisualization, me: &str) -> Markup {
    const W: f64 = 640.0;
    const H: f64 = 380.0;
    let (cx, cy, r) = (W / 2.0, H / 2.0 - 10.0, 135.0);
    // Every node on a circle, this one first (on the left): every member links to every other.
    let mut nodes: Vec<_> = viz.nodes.iter().collect();
    nodes.sort_by_key(|n| n.id.as_str() != me);
    let count = nodes.len().max(1) as f64;
    let at: BTreeMap<&str, (f64, f64)> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let angle = std::f64::consts::PI + i as f64 * std::f64::consts::TAU / count;
            (n.id.as_str(), (cx + r * 1.6 * angle.cos(), cy + r * angle.sin()))
        })
        .collect();
    let measured: BTreeMap<(&str, &str), &crate::web::api::mesh::ConnectionVisualization> =
        viz.connections.iter().map(|c| ((c.from_node.as_str(), c.to_node.as_str()), c)).collect();
    let online = |id: &str| viz.nodes.iter().any(|n| n.id.as_str() == id && n.status != NodeState::Offline);
    html! {
        svg.topology viewBox=(format!("0 0 {W} {H}")) width="100%" role="img" aria-label="Mesh topology" {
            @for (i, a) in nodes.iter().enumerate() {
                @for b in nodes.iter().skip(i + 1) {
                    @let ((x1, y1), (x2, y2)) = (at[a.id.as_str()], at[b.id.as_str()]);
                    @let link = measured.get(&(a.id.as_str(), b.id.as_str())).or_else(|| measured.get(&(b.id.as_str(), a.id.as_str())));
                    @match link {
                        Some(c) => {
                            line x1=(x1) y1=(y1) x2=(x2) y2=(y2) class=(format!("link {}", c.status)) data-link=(format!("{}-{}", a.name, b.name)) {}
                            text x=((x1 + x2) / 2.0) y=((y1 + y2) / 2.0 - 4.0) class="link-label" text-anchor="middle" {
                                @if c.status == "down" { "down" } @else { (format!("{:.1} ms", c.latency_ms)) }
                            }
                        }
                        None => {
                            @let up = online(a.id.as_str()) && online(b.id.as_str());
                            line x1=(x1) y1=(y1) x2=(x2) y2=(y2) class=(if up { "link unmeasured" } else { "link down" }) data-link=(format!("{}-{}", a.name, b.name)) {}
                        }
                    }
                }
            }
            @for n in &nodes {
                @let (x, y) = at[n.id.as_str()];
                @let label = if n.id.as_str() == me { format!("{} (this node)", n.name) } else { n.name.clone() };
                (node_mark(x, y, &label, n.status.as_str(), n.id.as_str() == viz.coordinator))
            }
        }
        p.caption { "Every member links to every other. Links from this node show its heartbeat round trip; links between peers show their network benchmark once one ran (a thin line until then)." }
    }
}

fn node_mark(x: f64, y: f64, name: &str, status: &str, coordinator: bool) -> Markup {
    html! {
        g class=(format!("node {status}")) {
            @if coordinator { circle cx=(x) cy=(y) r="30" class="coordinator-ring" {} }
            circle cx=(x) cy=(y) r="22" {}
            text x=(x) y=(y + 44.0) text-anchor="middle" { (name) @if coordinator { " ★" } }
        }
    }
}

pub async fn page(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let who = match caller(&req, &state) {
        Ok(c) => c,
        Err(redirect) => return *redirect,
    };
    let viz = match topology(&state).await {
        Ok(v) => v,
        Err(e) => return super::super::error_page(Some(&who), &e.message),
    };
    let me = state.node.identity.node_id.to_string();
    let view = state.node.mesh.view().await;
    let mesh_id = view.as_ref().and_then(|v| v.mesh_id.clone()).unwrap_or_default();
    // Members are removed on the mesh key holder, by a caller who may manage nodes.
    let may_remove = view.is_some_and(|v| v.mesh_admin) && who.require(Action::ManageNodes, "").is_ok();
    let body = html! {
        h1 { "Nodes" }
        p.small { "Mesh " code { (mesh_id) } " · coordinator "
            (viz.nodes.iter().find(|n| n.id.as_str() == viz.coordinator).map_or(viz.coordinator.clone(), |n| n.name.clone()))
            " (epoch " (viz.epoch) ")" }
        (topology_svg(&viz, &me))
        table #nodes {
            thead { tr { th { "Name" } th { "Status" } th { "Role" } th { "Latency" } th { "Cores" } th { "Memory" } th { "Last seen" }
                @if may_remove { th {} } } }
            tbody {
                @for n in &viz.nodes {
                    tr data-node=(n.id) {
                        td { a href=(format!("/nodes/{}", n.id)) { (n.name) } br; code.small { (n.id) } }
                        td { span class=(format!("status {}", n.status)) { (n.status) } }
                        td { (n.role) }
                        td { @if n.id.as_str() == me { "—" } @else { (format!("{:.1} ms", n.latency_ms)) } }
                        td { (n.cores_available) " / " (n.cores) }
                        td { (bytes(n.memory_available_bytes)) " / " (bytes(n.memory_bytes)) }
                        td { @if n.last_seen_ms > 0 { (time(n.last_seen_ms)) } @else { "never" } }
                        @if may_remove {
                            td { @if n.id.as_str() != me {
                                a.button.danger href=(format!("/nodes/{}/remove", n.id)) data-remove=(n.name) { "Remove…" }
                            } }
                        }
                    }
                }
            }
        }
        p.small { "Join another machine: " code { "buildnet token create --role builder" } " here, then "
                  code { "buildnet up --join <this node's URL> --token <token>" } " there." }
    };
    html_response(StatusCode::OK, layout("Nodes", Some(&who), "/nodes", body))
}

/// Asks before removing a member: it is refused by every member from then on.
pub async fn confirm_remove(req: HttpRequest, state: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    let who = match caller(&req, &state) {
        Ok(c) => c,
        Err(redirect) => return *redirect,
    };
    if let Err(e) = who.require(Action::ManageNodes, "remove a node from the mesh") {
        return super::super::forbidden_page(&who, &e.message);
    }
    let nodes = state.node.pool.view().await.map(|v| v.nodes).unwrap_or_default();
    let Some(node) = nodes.iter().find(|n| n.id.as_str() == id.as_str()) else {
        return super::not_found(Some(&who), &format!("/nodes/{id}/remove"));
    };
    // Said before the question, not after it was answered.
    if !state.node.mesh.view().await.is_some_and(|v| v.mesh_admin) {
        return super::super::error_page(Some(&who), &RosterError::NotMeshAdmin.to_string());
    }
    if node.id == state.node.identity.node_id {
        return super::super::error_page(Some(&who), &RosterError::RemoveSelf.to_string());
    }
    let body = html! {
        h1 { "Remove " (node.name) " from the mesh?" }
        p { "For a member that cannot leave by itself, such as a lost machine. Every member closes its link to "
            code { (node.id) } " and refuses it from then on, even restarted with its own data dir. "
            "It can come back only by leaving (" code { "buildnet node leave" } " on it) and joining again with a new token." }
        form.inline method="post" action=(format!("/nodes/{}/remove", node.id)) {
            input type="hidden" name="csrf" value=(who.csrf.clone().unwrap_or_default());
            button.danger type="submit" data-confirm-remove=(node.name) { "Remove " (node.name) }
            a href="/nodes" { "Cancel" }
        }
    };
    html_response(StatusCode::OK, layout("Remove node", Some(&who), "/nodes", body))
}

#[derive(serde::Deserialize)]
pub struct RemoveForm {
    csrf: String,
}

/// Removes a member (see `POST /api/pool/remove`), then shows the nodes page.
pub async fn remove(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
    form: web::Form<RemoveForm>,
) -> HttpResponse {
    let who = match super::form_caller(&req, &state, &form.csrf, Action::ManageNodes, "remove a node from the mesh") {
        Ok(who) => who,
        Err(res) => return *res,
    };
    let Ok(node) = NodeId::parse(&id) else {
        return super::not_found(Some(&who), &format!("/nodes/{id}/remove"));
    };
    match state.node.mesh.remove(node, &who.actor()).await {
        Ok(_) => HttpResponse::SeeOther().insert_header((actix_web::http::header::LOCATION, "/nodes")).finish(),
        Err(e) => super::super::error_page(Some(&who), &e.to_string()),
    }
}
