//! The nodes page: every node with status, role and latency, and the topology as an SVG drawn
//! here — this node in the middle, each peer around it, links labelled with the round-trip
//! time this node measures, the coordinator marked.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use maud::{html, Markup};

use super::{bytes, caller, html_response, layout, time};
use crate::web::api::mesh::{quality, topology, PoolVisualization};
use crate::web::AppState;
use buildnet_actors::wire::NodeState;

/// Draws the topology.
pub fn topology_svg(viz: &PoolVisualization, me: &str) -> Markup {
    const W: f64 = 640.0;
    const H: f64 = 360.0;
    let (cx, cy, r) = (W / 2.0, H / 2.0, 130.0);
    let peers: Vec<_> = viz.nodes.iter().filter(|n| n.id.as_str() != me).collect();
    let count = peers.len().max(1) as f64;
    let place = |i: usize| {
        let angle = std::f64::consts::PI + i as f64 * std::f64::consts::TAU / count;
        (cx + r * 1.6 * angle.cos(), cy + r * angle.sin())
    };
    let local = viz.nodes.iter().find(|n| n.id.as_str() == me);
    html! {
        svg.topology viewBox=(format!("0 0 {W} {H}")) width="100%" role="img" aria-label="Mesh topology" {
            @for (i, p) in peers.iter().enumerate() {
                @let (x, y) = place(i);
                @let q = quality(p.latency_ms, p.status != NodeState::Offline);
                line x1=(cx) y1=(cy) x2=(x) y2=(y) class=(format!("link {q}")) {}
                text x=((cx + x) / 2.0) y=((cy + y) / 2.0 - 4.0) class="link-label" text-anchor="middle" {
                    @if p.status == NodeState::Offline { "down" } @else { (format!("{:.0} ms", p.latency_ms)) }
                }
            }
            @for (i, p) in peers.iter().enumerate() {
                @let (x, y) = place(i);
                (node_mark(x, y, &p.name, p.status.as_str(), p.id.as_str() == viz.coordinator))
            }
            @if let Some(l) = local { (node_mark(cx, cy, &format!("{} (this node)", l.name), l.status.as_str(), l.id.as_str() == viz.coordinator)) }
        }
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
    let mesh_id = state.node.mesh.view().await.and_then(|v| v.mesh_id).unwrap_or_default();
    let body = html! {
        h1 { "Nodes" }
        p.small { "Mesh " code { (mesh_id) } " · coordinator " code { (viz.coordinator) } " (epoch " (viz.epoch) ")" }
        (topology_svg(&viz, &me))
        table #nodes {
            thead { tr { th { "Name" } th { "Status" } th { "Role" } th { "Latency" } th { "Cores" } th { "Memory" } th { "Last seen" } } }
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
                    }
                }
            }
        }
        p.small { "Join another machine: " code { "buildnet token create --role builder" } " here, then "
                  code { "buildnet up --join <this node's URL> --token <token>" } " there." }
    };
    html_response(StatusCode::OK, layout("Nodes", Some(&who), "/nodes", body))
}
