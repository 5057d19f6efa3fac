//! Build pages: the history list, and one build with its packages, the nodes they ran on, their
//! durations and output tails. A running build's page refreshes itself from `/ws`; "Run again"
//! starts the same build (its inputs are still in the node's store) and "Cancel" stops one.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use buildnet_actors::builds::runner::PackageState;
use buildnet_actors::wire::Action;
use maud::html;
use serde::Deserialize;

use super::{caller, html_response, layout, time};
use crate::web::auth;
use crate::web::AppState;

pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let who = match caller(&req, &state) {
        Ok(c) => c,
        Err(redirect) => return *redirect,
    };
    let builds = match state.node.builds.history(100, None).await {
        Ok(b) => b,
        Err(e) => return super::super::error_page(Some(&who), &e.to_string()),
    };
    let body = html! {
        h1 { "Builds" }
        p.small { "Start one with " code { "buildnet build --project <dir>" } "; any build below can be run again from its page." }
        @if builds.is_empty() { (super::empty("No builds yet.")) } @else {
            table #builds {
                thead { tr { th { "Build" } th { "Status" } th { "Started" } th { "Duration" } th { "Packages" } th { "Ran" } th { "Cached" } th { "Nodes" } th { "By" } } }
                tbody {
                    @for b in &builds {
                        tr {
                            td { a href=(format!("/builds/{}", b.id)) { code { (b.id) } } }
                            td { span class=(format!("build-status {}", b.status)) { (b.status) } }
                            td { (time(b.started_at_ms)) }
                            td { (b.duration_ms.map(|d| format!("{d} ms")).unwrap_or_default()) }
                            td { (b.packages) } td { (b.executed) } td { (b.cached) }
                            td { (b.nodes.join(", ")) }
                            td.small { (b.triggered_by) }
                        }
                    }
                }
            }
        }
    };
    html_response(StatusCode::OK, layout("Builds", Some(&who), "/builds", body))
}

pub async fn page(req: HttpRequest, state: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    let who = match caller(&req, &state) {
        Ok(c) => c,
        Err(redirect) => return *redirect,
    };
    let b = match state.node.builds.status(&id).await {
        Ok(b) if who.role.allows(Action::ReadBuildOutput) => b,
        Ok(b) => b.without_output(),
        Err(_) => return super::not_found(Some(&who), &format!("/builds/{id}")),
    };
    let csrf = who.csrf.clone().unwrap_or_default();
    let total = b.packages.len().max(1);
    let finished =
        b.packages.iter().filter(|p| !matches!(p.state, PackageState::Pending | PackageState::Running)).count();
    let groups = pattern_groups(&b.packages);
    let body = html! {
        h1 { "Build " code { (b.id) } }
        p { span class=(format!("build-status {}", b.status)) #build-status { (b.status) }
            " · started " (time(b.started_at_ms))
            @if let Some(d) = b.duration_ms { " · " (d) " ms" }
            " · by " (b.triggered_by) }
        (super::bar("Done", finished as f64, total as f64, &format!("{finished}/{total} packages")))
        @if let Some(e) = &b.error { p.error { (e) } }
        div.actions {
            @if !b.done() && who.role.allows(Action::CancelBuild) {
                form.inline method="post" action=(format!("/builds/{}/cancel", b.id)) {
                    input type="hidden" name="csrf" value=(csrf);
                    button.danger type="submit" { "Cancel" }
                }
            }
            @if b.done() && who.role.allows(Action::TriggerBuild) {
                form.inline method="post" action=(format!("/builds/{}/rerun", b.id)) {
                    input type="hidden" name="csrf" value=(csrf);
                    label { input type="checkbox" name="force" value="true"; " force (ignore the cache)" }
                    button type="submit" { "Run again" }
                }
            }
        }
        @if !groups.is_empty() {
            h2 { "Pattern packages" }
            table #patterns {
                thead { tr { th { "Pattern" } th { "Expansions" } th { "Ran" } th { "Cached" } th { "Running" } th { "Pending" } th { "Failed" } } }
                tbody {
                    @for (table, g) in &groups {
                        tr data-pattern=(table) {
                            td { (table) } td { (g.total) } td { (g.ran) } td { (g.cached) } td { (g.running) } td { (g.pending) }
                            td { (g.failed.len())
                                 @if !g.failed.is_empty() { br; span.small.error { (g.failed.iter().take(10).cloned().collect::<Vec<_>>().join(", "))
                                     @if g.failed.len() > 10 { " and " (g.failed.len() - 10) " more" } } } }
                        }
                    }
                }
            }
            h2 { "Packages" }
        }
        table #packages {
            thead { tr { th { "Package" } th { "State" } th { "Node" } th { "Cache" } th { "Duration" } th { "Exit" } } }
            tbody {
                @for p in &b.packages {
                    tr data-package=(p.name) {
                        td { (p.name) }
                        td { span class=(format!("pkg {}", p.state.as_str())) { (p.state.as_str()) } }
                        td { @if let Some(n) = &p.node { a href=(format!("/nodes/{n}")) title=(n) { (p.node_name.clone().unwrap_or_else(|| n.to_string())) } } }
                        td { @if p.cache_hit { "hit" } }
                        td { (p.duration_ms.map(|d| format!("{d} ms")).unwrap_or_default()) }
                        td { (p.exit_code.map(|c| c.to_string()).unwrap_or_default()) }
                    }
                    @if !p.output_tail.is_empty() || p.error.is_some() {
                        tr.log { td colspan="6" {
                            @if let Some(e) = &p.error { p.error { (e) } }
                            @if !p.output_tail.is_empty() { pre.log { (tail_lines(&p.output_tail, 30)) } }
                        } }
                    }
                }
            }
        }
    };
    html_response(StatusCode::OK, layout(&format!("Build {}", b.id), Some(&who), "/builds", body))
}

/// The expansions of one pattern package (`table[file]`), counted by state.
#[derive(Default)]
struct PatternGroup {
    total: usize,
    ran: usize,
    cached: usize,
    running: usize,
    pending: usize,
    /// Expansions that failed, by file.
    failed: Vec<String>,
}

/// Pattern packages grouped by table, in name order; plain packages are not in it.
fn pattern_groups(
    packages: &[buildnet_actors::builds::runner::PackageStatus],
) -> std::collections::BTreeMap<String, PatternGroup> {
    let mut groups: std::collections::BTreeMap<String, PatternGroup> = std::collections::BTreeMap::new();
    for p in packages {
        let Some((table, file)) = p.name.strip_suffix(']').and_then(|n| n.split_once('[')) else { continue };
        let g = groups.entry(table.to_string()).or_default();
        g.total += 1;
        match p.state {
            PackageState::Succeeded => g.ran += 1,
            PackageState::Cached => g.cached += 1,
            PackageState::Running => g.running += 1,
            PackageState::Pending => g.pending += 1,
            PackageState::Failed => g.failed.push(file.to_string()),
            PackageState::Skipped | PackageState::Cancelled => {}
        }
    }
    groups
}

/// The last `n` lines of some output.
fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[derive(Deserialize)]
pub struct ActionForm {
    csrf: String,
    force: Option<String>,
}

fn checked(
    req: &HttpRequest,
    state: &AppState,
    form: &ActionForm,
    action: Action,
    what: &str,
) -> Result<auth::Caller, Box<HttpResponse>> {
    super::form_caller(req, state, &form.csrf, action, what)
}

pub async fn rerun(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
    form: web::Form<ActionForm>,
) -> HttpResponse {
    let who = match checked(&req, &state, &form, Action::TriggerBuild, "start builds") {
        Ok(w) => w,
        Err(res) => return *res,
    };
    match state.node.builds.rerun(&id, form.force.is_some(), None, &who.actor()).await {
        Ok(new_id) => HttpResponse::SeeOther().insert_header((header::LOCATION, format!("/builds/{new_id}"))).finish(),
        Err(e) => super::super::error_page(Some(&who), &e.to_string()),
    }
}

pub async fn cancel(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
    form: web::Form<ActionForm>,
) -> HttpResponse {
    let who = match checked(&req, &state, &form, Action::CancelBuild, "cancel builds") {
        Ok(w) => w,
        Err(res) => return *res,
    };
    match state.node.builds.cancel(&id).await {
        Ok(_) => HttpResponse::SeeOther().insert_header((header::LOCATION, format!("/builds/{id}"))).finish(),
        Err(e) => super::super::error_page(Some(&who), &e.to_string()),
    }
}
