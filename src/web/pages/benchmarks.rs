//! Benchmark pages: every node's latest figures, the network matrix between every pair of nodes,
//! and history charts. History comes from the shared ledger (`BenchmarkCompleted` entries are
//! replicated to every node), so any node can chart any other's.

use std::collections::BTreeMap;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use buildnet_actors::bench::BenchmarkScores;
use buildnet_actors::ledger::LedgerFilter;
use buildnet_actors::pool::PoolNode;
use buildnet_actors::wire::{Action, LedgerEntryType, NodeId};
use maud::{html, Markup};

use super::{caller, html_response, layout, time};
use crate::web::AppState;

/// One line of a chart: a label and (time ms, value) points, oldest first.
pub struct Series {
    pub label: String,
    pub points: Vec<(u64, f64)>,
}

const PALETTE: [&str; 6] = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2"];

/// A line chart as SVG: time across, value up from zero, each point with its value as a tooltip.
pub fn line_chart(title: &str, unit: &str, series: &[Series]) -> Markup {
    const W: f64 = 640.0;
    const H: f64 = 200.0;
    const LEFT: f64 = 56.0;
    const BOTTOM: f64 = 24.0;
    let all: Vec<(u64, f64)> = series.iter().flat_map(|s| s.points.iter().copied()).collect();
    if all.is_empty() {
        return html! {};
    }
    let (t0, t1) = all.iter().fold((u64::MAX, 0), |(a, b), (t, _)| (a.min(*t), b.max(*t)));
    let max = all.iter().map(|p| p.1).fold(0.0, f64::max).max(f64::MIN_POSITIVE) * 1.1;
    let x =
        |t: u64| LEFT + if t1 > t0 { (t - t0) as f64 / (t1 - t0) as f64 * (W - LEFT - 8.0) } else { (W - LEFT) / 2.0 };
    let y = |v: f64| (H - BOTTOM) - v / max * (H - BOTTOM - 8.0);
    html! {
        figure.chart {
            figcaption { (title) }
            svg viewBox=(format!("0 0 {W} {H}")) width="100%" role="img" aria-label=(format!("{title} over time")) {
                line x1=(LEFT) y1=(H - BOTTOM) x2=(W) y2=(H - BOTTOM) class="axis" {}
                line x1=(LEFT) y1="0" x2=(LEFT) y2=(H - BOTTOM) class="axis" {}
                text x=(LEFT - 4.0) y=(y(max / 1.1) + 4.0) text-anchor="end" class="tick" { (format!("{:.4}", max / 1.1).trim_end_matches('0').trim_end_matches('.')) }
                text x=(LEFT - 4.0) y=(H - BOTTOM) text-anchor="end" class="tick" { "0" }
                text x=(LEFT) y=(H - 6.0) class="tick" { (crate::human::utc(t0)) }
                text x=(W) y=(H - 6.0) text-anchor="end" class="tick" { (crate::human::utc(t1)) }
                @for (i, s) in series.iter().enumerate() {
                    @let color = PALETTE[i % PALETTE.len()];
                    @let path = s.points.iter().map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v))).collect::<Vec<_>>().join(" ");
                    polyline points=(path) fill="none" stroke=(color) stroke-width="2" {}
                    @for (t, v) in &s.points {
                        circle cx=(format!("{:.1}", x(*t))) cy=(format!("{:.1}", y(*v))) r="3" fill=(color) {
                            title { (s.label) ": " (format!("{v:.2}")) " " (unit) " at " (crate::human::utc(*t)) " UTC" }
                        }
                    }
                }
            }
            ul.legend {
                @for (i, s) in series.iter().enumerate() {
                    li { span.swatch style=(format!("background:{}", PALETTE[i % PALETTE.len()])) {} (s.label) " (" (unit) ")" }
                }
            }
        }
    }
}

/// History charts of one node from its `BenchmarkCompleted` ledger entries.
pub async fn history_charts(state: &AppState, node: &NodeId, names: &BTreeMap<String, String>) -> Markup {
    let filter = LedgerFilter {
        types: vec![LedgerEntryType::BenchmarkCompleted],
        origin: Some(node.clone()),
        limit: 200,
        ..Default::default()
    };
    let mut entries = state.node.ledger.query(filter).await.unwrap_or_default();
    entries.reverse();
    let mut by: BTreeMap<(u8, String), Vec<(u64, f64)>> = BTreeMap::new();
    let mut add = |chart: u8, label: String, t: u64, v: Option<f64>| {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            by.entry((chart, label)).or_default().push((t, v));
        }
    };
    for e in &entries {
        let d = &e.data;
        let t = d["finished_at_ms"].as_u64().unwrap_or(e.hlc.wall_ms);
        add(0, "single core".into(), t, d["cpu"]["single"].as_f64());
        add(0, "all cores".into(), t, d["cpu"]["multi"].as_f64());
        add(1, "bandwidth".into(), t, d["memory"]["gbps"].as_f64());
        for s in d["storage"].as_array().into_iter().flatten() {
            let path = s["path"].as_str().unwrap_or("?");
            add(2, format!("read {path}"), t, s["read_mbps"].as_f64());
            add(2, format!("write {path}"), t, s["write_mbps"].as_f64());
        }
        for n in d["network"].as_array().into_iter().flatten() {
            let id = n["node"].as_str().unwrap_or("?");
            let peer = names.get(id).cloned().unwrap_or_else(|| id.to_string());
            add(3, format!("to {peer}"), t, n["latency_ms"].as_f64());
            add(4, format!("up to {peer}"), t, n["upload_mbps"].as_f64());
            add(4, format!("down from {peer}"), t, n["download_mbps"].as_f64());
        }
    }
    let charts = [
        ("CPU score", "sieves/s"),
        ("Memory", "GB/s"),
        ("Storage, sequential", "MB/s"),
        ("Network round trip", "ms"),
        ("Network bandwidth", "Mbit/s"),
    ];
    html! {
        @if entries.is_empty() { (super::empty("No benchmark recorded yet.")) }
        div.charts {
            @for (i, (title, unit)) in charts.iter().enumerate() {
                @let series: Vec<Series> = by.iter().filter(|((c, _), _)| *c as usize == i)
                    .map(|((_, label), points)| Series { label: label.clone(), points: points.clone() }).collect();
                (line_chart(title, unit, &series))
            }
        }
    }
}

/// A node's latest figures as a definition list.
pub fn latest(b: &BenchmarkScores, names: &BTreeMap<String, String>) -> Markup {
    html! {
        @if b.measured_at_ms == 0 && !b.running { p.small { "Not measured yet." } } @else {
            dl.facts.benchmarks {
                @if let Some(c) = &b.cpu {
                    dt { "CPU" } dd.cpu-score { (format!("{:.0}", c.single_core_score)) " sieves/s on one core, " (format!("{:.0}", c.multi_core_score))
                        " on " (c.threads) " (efficiency " (format!("{:.2}", c.parallel_efficiency)) ", " (c.effective_cores) " effective cores)" }
                }
                @if let Some(m) = &b.memory {
                    dt { "Memory" } dd { (format!("{:.1}", m.bandwidth_gbps)) " GB/s, " (format!("{:.0}", m.latency_ns)) " ns latency" }
                }
                @for s in &b.storage {
                    dt { "Storage " code { (s.path) } } dd { (s.storage_class) ": read " (format!("{:.0}", s.seq_read_mbps)) " MB/s, write "
                        (format!("{:.0}", s.seq_write_mbps)) " MB/s, " (s.random_read_iops) "/" (s.random_write_iops) " IOPS, "
                        (s.read_latency_us) " µs (" (s.method) ")" }
                }
                @for n in &b.network {
                    dt { "Link to " (names.get(&n.target_node).cloned().unwrap_or(n.target_name.clone())) }
                    dd { (format!("{:.2}", n.latency_ms)) " ms ± " (format!("{:.2}", n.jitter_ms)) ", up " (format!("{:.0}", n.upload_mbps))
                         " / down " (format!("{:.0}", n.download_mbps)) " Mbit/s" }
                }
                dt { "Measured" } dd { @if b.running { "running now" } @else { (time(b.measured_at_ms)) }
                    @if let Some(due) = b.next_due_ms { " · next " (time(due)) } }
            }
        }
    }
}

/// Latency and bandwidth between every pair of nodes, each measured from the row's node.
pub fn matrix(nodes: &[PoolNode]) -> Markup {
    html! {
        table #network-matrix {
            thead { tr { th { "from \\ to" } @for n in nodes { th { (n.name) } } } }
            tbody {
                @for from in nodes {
                    tr {
                        th { a href=(format!("/nodes/{}", from.id)) { (from.name) } }
                        @for to in nodes {
                            @if from.id == to.id { td.self { "—" } }
                            @else if let Some(r) = from.benchmarks.network_to(to.id.as_str()) {
                                td title=(format!("jitter {:.2} ms, {} samples", r.jitter_ms, r.samples)) {
                                    (format!("{:.2}", r.latency_ms)) " ms" br;
                                    span.small { "↑" (format!("{:.0}", r.upload_mbps)) " ↓" (format!("{:.0}", r.download_mbps)) " Mbit/s" }
                                }
                            }
                            @else { td.small { "not measured" } }
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
    let view = match state.node.pool.view().await {
        Ok(v) => v,
        Err(e) => return super::super::error_page(Some(&who), &e.to_string()),
    };
    let names: BTreeMap<String, String> = view.nodes.iter().map(|n| (n.id.to_string(), n.name.clone())).collect();
    let me = state.node.identity.node_id.clone();
    let body = html! {
        h1 { "Benchmarks" }
        p.small { "Each node measures its CPU, memory, storage and links to its peers after it starts and every "
            code { "benchmark.interval_hours" } "; the coordinator gives one node a turn at a time. Placement sends work to faster nodes first and estimates scale by these figures." }
        @if who.role.allows(Action::ModifyResources) {
            form.inline method="post" action="/benchmarks/run" {
                input type="hidden" name="csrf" value=(who.csrf.clone().unwrap_or_default());
                button type="submit" { "Benchmark this node now" }
                span.small { " CPU, memory, every volume and every online peer; takes about half a minute." }
            }
        }
        h2 { "Network matrix" }
        (matrix(&view.nodes))
        h2 { "Latest figures" }
        table #benchmark-nodes {
            thead { tr { th { "Node" } th { "CPU one core" } th { "CPU all cores" } th { "Efficiency" } th { "Memory" } th { "Storage" } th { "Measured" } } }
            tbody {
                @for n in &view.nodes {
                    @let b = &n.benchmarks;
                    tr {
                        td { a href=(format!("/nodes/{}", n.id)) { (n.name) } }
                        td { @if let Some(c) = &b.cpu { (format!("{:.0}", c.single_core_score)) } @else { "—" } }
                        td { @if let Some(c) = &b.cpu { (format!("{:.0}", c.multi_core_score)) " on " (c.threads) } @else { "—" } }
                        td { @if let Some(c) = &b.cpu { (format!("{:.2}", c.parallel_efficiency)) } @else { "—" } }
                        td { @if let Some(m) = &b.memory { (format!("{:.1}", m.bandwidth_gbps)) " GB/s" } @else { "—" } }
                        td { @for s in &b.storage { (s.storage_class) " " (format!("{:.0}/{:.0}", s.seq_read_mbps, s.seq_write_mbps)) " MB/s" br; } }
                        td { @if b.running { "running now" } @else if b.measured_at_ms > 0 { (time(b.measured_at_ms)) } @else { "never" } }
                    }
                }
            }
        }
        h2 { "History of this node" }
        (history_charts(&state, &me, &names).await)
    };
    html_response(StatusCode::OK, layout("Benchmarks", Some(&who), "/benchmarks", body))
}

#[derive(serde::Deserialize)]
pub struct RunForm {
    csrf: String,
}

pub async fn run(req: HttpRequest, state: web::Data<AppState>, form: web::Form<RunForm>) -> HttpResponse {
    let who = match super::form_caller(&req, &state, &form.csrf, Action::ModifyResources, "run benchmarks") {
        Ok(c) => c,
        Err(res) => return *res,
    };
    let selection = state.node.full_selection(false).await;
    if let Err(e) = state.node.benchmark(selection).await {
        return super::super::error_page(Some(&who), &format!("The benchmark failed: {e}"));
    }
    HttpResponse::SeeOther().insert_header((header::LOCATION, "/benchmarks")).finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_scale_to_the_largest_value_and_skip_empty_ones() {
        assert!(line_chart("x", "u", &[]).into_string().is_empty());
        let svg = line_chart(
            "CPU",
            "sieves/s",
            &[Series { label: "single".into(), points: vec![(1_000, 100.0), (2_000, 200.0)] }],
        )
        .into_string();
        assert!(svg.contains("<polyline"));
        assert!(svg.contains("single: 200.00 sieves/s"));
        // The larger point sits higher (smaller y) than the smaller one.
        let ys: Vec<f64> =
            svg.split("cy=\"").skip(1).filter_map(|s| s.split('"').next().and_then(|v| v.parse().ok())).collect();
        assert_eq!(ys.len(), 2);
        assert!(ys[1] < ys[0]);
    }
}
