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

/// Series colours are classes (`s0`…`s5` in style.css): the page's CSP allows no inline styles.
const SERIES_CLASSES: usize = 6;

/// A round axis maximum at or above `v`: 1, 2, 2.5 or 5 times a power of ten.
pub fn nice_max(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * magnitude).find(|m| *m >= v).unwrap_or(10.0 * magnitude)
}

/// An axis label without trailing zeros: 1200, 2.5, 0.25.
fn tick_label(v: f64) -> String {
    let text = format!("{v:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A line chart as SVG: time across, value up from zero on a round scale with grid lines, each
/// point with its value as a tooltip, and a legend whose swatches carry the series' colours.
pub fn line_chart(title: &str, unit: &str, series: &[Series]) -> Markup {
    const W: f64 = 480.0;
    const H: f64 = 220.0;
    const LEFT: f64 = 64.0;
    const BOTTOM: f64 = 28.0;
    const TOP: f64 = 10.0;
    let all: Vec<(u64, f64)> = series.iter().flat_map(|s| s.points.iter().copied()).collect();
    if all.is_empty() {
        return html! {};
    }
    let (t0, t1) = all.iter().fold((u64::MAX, 0), |(a, b), (t, _)| (a.min(*t), b.max(*t)));
    let max = nice_max(all.iter().map(|p| p.1).fold(0.0, f64::max));
    let x =
        |t: u64| LEFT + if t1 > t0 { (t - t0) as f64 / (t1 - t0) as f64 * (W - LEFT - 12.0) } else { (W - LEFT) / 2.0 };
    let y = |v: f64| (H - BOTTOM) - v / max * (H - BOTTOM - TOP);
    let ticks: Vec<f64> = (0..=4).map(|i| max * f64::from(i) / 4.0).collect();
    html! {
        figure.chart {
            figcaption { (title) " (" (unit) ")" }
            svg viewBox=(format!("0 0 {W} {H}")) width="100%" role="img" aria-label=(format!("{title} over time")) {
                @for v in &ticks {
                    line x1=(LEFT) y1=(format!("{:.1}", y(*v))) x2=(W) y2=(format!("{:.1}", y(*v))) class="grid" {}
                    text x=(LEFT - 6.0) y=(format!("{:.1}", y(*v) + 4.0)) text-anchor="end" class="tick" { (tick_label(*v)) }
                }
                line x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(H - BOTTOM) class="axis" {}
                text x=(LEFT) y=(H - 8.0) class="tick" { (crate::human::utc(t0)) }
                @if t1 > t0 { text x=(W) y=(H - 8.0) text-anchor="end" class="tick" { (crate::human::utc(t1)) } }
                @for (i, s) in series.iter().enumerate() {
                    @let class = format!("s{}", i % SERIES_CLASSES);
                    @let path = s.points.iter().map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v))).collect::<Vec<_>>().join(" ");
                    polyline points=(path) class=(format!("series {class}")) {}
                    @for (t, v) in &s.points {
                        circle cx=(format!("{:.1}", x(*t))) cy=(format!("{:.1}", y(*v))) r="3.5" class=(format!("point {class}")) {
                            title { (s.label) ": " (format!("{v:.2}")) " " (unit) " at " (crate::human::utc(*t)) " UTC" }
                        }
                    }
                }
            }
            ul.legend {
                @for (i, s) in series.iter().enumerate() {
                    li data-series=(s.label) { span class=(format!("swatch s{}", i % SERIES_CLASSES)) {} (s.label) }
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
        ("CPU score", "units/s"),
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
                    dt { "CPU" } dd.cpu-score { (format!("{:.0}", c.single_core_score)) " units/s on one core, " (format!("{:.0}", c.multi_core_score))
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
            "units/s",
            &[Series { label: "single".into(), points: vec![(1_000, 100.0), (2_000, 200.0)] }],
        )
        .into_string();
        assert!(svg.contains("<polyline"));
        assert!(svg.contains("single: 200.00 units/s"));
        // The larger point sits higher (smaller y) than the smaller one.
        let ys: Vec<f64> =
            svg.split("cy=\"").skip(1).filter_map(|s| s.split('"').next().and_then(|v| v.parse().ok())).collect();
        assert_eq!(ys.len(), 2);
        assert!(ys[1] < ys[0]);
        assert!(!svg.contains("style="), "colours are classes: the CSP allows no inline style");
        assert!(svg.contains("class=\"swatch s0\""), "the legend carries the series colour");
        assert!(svg.contains(">200<") && svg.contains(">50<"), "a round axis with ticks: {svg}");
    }

    #[test]
    fn axis_maxima_are_round() {
        for (v, want) in [(1207.5738, 2000.0), (0.0, 1.0), (3.2, 5.0), (250.0, 250.0), (0.07, 0.1), (11.0, 20.0)] {
            assert_eq!(nice_max(v), want, "{v}");
        }
        assert_eq!(tick_label(0.25), "0.25");
        assert_eq!(tick_label(1500.0), "1500");
    }
}
