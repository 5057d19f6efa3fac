//! Configuration pages: the list with export links, a form to create one (cores, nodes, memory,
//! tools), an edit page with the configuration's JSON, delete, and the templates with a form to
//! make a configuration from each. Changing anything is for admins.

use std::collections::BTreeMap;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use buildnet_actors::builds::config::BuildConfiguration;
use buildnet_actors::wire::Action;
use maud::{html, Markup};
use serde::Deserialize;

use super::{caller, html_response, layout};
use crate::web::auth::Caller;
use crate::web::AppState;

/// The plain configuration form, filled with what was typed when it comes back with an error;
/// the builder page's fallback without JavaScript too.
pub fn create_form(csrf: &str, typed: Option<&CreateForm>) -> Markup {
    let value = |f: fn(&CreateForm) -> Option<&str>| typed.and_then(f).unwrap_or("").to_string();
    let cores = typed.and_then(|t| t.cores.as_deref()).unwrap_or("0").to_string();
    let memory = typed.and_then(|t| t.memory_gb.as_deref()).unwrap_or("0").to_string();
    html! {
        form.stack #create-config method="post" action="/configs" {
            input type="hidden" name="csrf" value=(csrf);
            label { "Name " input type="text" name="name" required maxlength="64" value=(value(|t| Some(t.name.as_str()))); }
            label { "Cores in all (0 = all the pool offers) " input type="number" name="cores" min="0" value=(cores); }
            label { "Memory GB (0 = what is available) " input type="number" name="memory_gb" min="0" step="0.5" value=(memory); }
            label { "Nodes (name or id, with :cores; local for this node; comma-separated; empty = any) "
                    input type="text" name="nodes" value=(value(|t| t.nodes.as_deref())); }
            label { "Tools (comma-separated, e.g. gcc>=12) " input type="text" name="tools" value=(value(|t| t.tools.as_deref())); }
            button type="submit" { "Create" }
        }
    }
}

async fn render(who: &Caller, state: &AppState, error: Option<&str>, typed: Option<&CreateForm>) -> HttpResponse {
    let configs = state.node.builds.configs().await.unwrap_or_default();
    let templates = state.node.builds.templates().await.unwrap_or_default();
    let csrf = who.csrf.clone().unwrap_or_default();
    let admin = who.role.allows(Action::ModifyConfig);
    let body = html! {
        h1 { "Configurations" }
        p.small { "Build with one: " code { "buildnet build --config <name>" } ". Export gives the JSON of plan Appendix B; "
                  code { "buildnet config import <file>" } " takes it back." }
        @if let Some(e) = error { p.error role="alert" { (e) } }
        @if configs.is_empty() { (super::empty("No configurations yet.")) } @else {
            table #configs {
                thead { tr { th { "Name" } th { "Cores" } th { "Memory" } th { "Nodes" } th { "Estimate" } th {} } }
                tbody {
                    @for c in &configs {
                        tr {
                            td { a href=(format!("/configs/{}", c.id)) { (c.name) } br; code.small { (c.id) } br;
                                 a.small href=(format!("/builder?config={}", c.id)) data-edit-in-builder=(c.name) { "open in builder" } }
                            td { @if c.cores == 0 { "all" } @else { (c.cores) } }
                            td { @if c.memory_gb == 0.0 { "available" } @else { (c.memory_gb) " GB" } }
                            td { @if c.nodes.is_empty() { "any" } @else { (c.nodes.join(", ")) } }
                            td.estimate { (estimate_cell(state, &c.id).await) }
                            td {
                                a href=(format!("/api/configs/{}", c.id)) download=(format!("{}.json", c.name)) { "Export" }
                                @if admin {
                                    form.inline method="post" action=(format!("/configs/{}/delete", c.id)) {
                                        input type="hidden" name="csrf" value=(csrf);
                                        button.danger type="submit" { "Delete" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if admin {
            h2 { "Create a configuration" }
            p { a.button href="/builder" data-open-builder="" { "Open the visual builder" } " or fill in the form:" }
            (create_form(&csrf, typed))
        }
        h2 { "Templates" }
        table #templates {
            thead { tr { th { "Template" } th { "Kind" } th { "Description" } th {} } }
            tbody {
                @for t in &templates {
                    tr {
                        td { (t.name) br; code.small { (t.id) } }
                        td { @if t.system { "system" } @else { "custom" } }
                        td { (t.description) }
                        td { @if admin {
                            form.inline method="post" action=(format!("/templates/{}/use", t.id)) {
                                input type="hidden" name="csrf" value=(csrf);
                                input type="text" name="name" placeholder="new configuration" required size="16";
                                @for v in &t.variables {
                                    input type="number" name=(v.name) placeholder=(format!("{} ({})", v.name, v.default.clone().unwrap_or_default())) size="6";
                                }
                                button type="submit" { "Use" }
                            }
                        } }
                    }
                }
            }
        }
    };
    let status = if error.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    html_response(status, layout("Configurations", Some(who), "/configs", body))
}

pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    match caller(&req, &state) {
        Ok(who) => render(&who, &state, None, None).await,
        Err(redirect) => *redirect,
    }
}

fn admin_form(req: &HttpRequest, state: &AppState, csrf: &str) -> Result<Caller, Box<HttpResponse>> {
    super::form_caller(req, state, csrf, Action::ModifyConfig, "change configurations")
}

#[derive(Deserialize)]
pub struct CreateForm {
    csrf: String,
    name: String,
    cores: Option<String>,
    memory_gb: Option<String>,
    nodes: Option<String>,
    tools: Option<String>,
}

fn from_form(f: &CreateForm) -> Result<BuildConfiguration, String> {
    let cores: u32 = f
        .cores
        .as_deref()
        .filter(|s| !s.is_empty())
        .unwrap_or("0")
        .parse()
        .map_err(|_| "cores: expected a whole number".to_string())?;
    let gb: f64 = f
        .memory_gb
        .as_deref()
        .filter(|s| !s.is_empty())
        .unwrap_or("0")
        .parse()
        .map_err(|_| "memory: expected a number".to_string())?;
    let mut allocations = Vec::new();
    for n in f.nodes.as_deref().unwrap_or("").split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, c) = n.split_once(':').unwrap_or((n, "0"));
        let c: u32 = c.parse().map_err(|_| format!("nodes: '{n}' — cores after ':' must be a number"))?;
        allocations.push(serde_json::json!({ "node_id": id, "cores": c }));
    }
    let tools: Vec<serde_json::Value> = f
        .tools
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|t| match t.find(['>', '<', '=']) {
            Some(i) => serde_json::json!({ "name": t[..i].trim(), "version": t[i..].trim() }),
            None => serde_json::json!({ "name": t }),
        })
        .collect();
    let doc = serde_json::json!({ "name": f.name, "resources": {
        "cpu": { "cores": cores, "node_allocations": if allocations.is_empty() { serde_json::Value::Null } else { allocations.into() } },
        "memory": { "gb": gb }, "tools": tools } });
    serde_json::from_value(doc).map_err(|e| e.to_string())
}

pub async fn create(req: HttpRequest, state: web::Data<AppState>, form: web::Form<CreateForm>) -> HttpResponse {
    let who = match admin_form(&req, &state, &form.csrf) {
        Ok(w) => w,
        Err(res) => return *res,
    };
    let cfg = match from_form(&form) {
        Ok(c) => c,
        Err(e) => return render(&who, &state, Some(&e), Some(&form)).await,
    };
    match state.node.builds.create_config(cfg, &who.actor(), false).await {
        Ok(_) => HttpResponse::SeeOther().insert_header((header::LOCATION, "/configs")).finish(),
        Err(e) => render(&who, &state, Some(&e.to_string()), Some(&form)).await,
    }
}

pub async fn edit_page(req: HttpRequest, state: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    let who = match caller(&req, &state) {
        Ok(c) => c,
        Err(redirect) => return *redirect,
    };
    show(&who, &state, &id, None).await
}

/// A clean build of the last project built here under this configuration, in one line.
async fn estimate_cell(state: &AppState, id: &str) -> maud::Markup {
    match state.node.builds.estimate_latest(id).await {
        Ok(Some((_, _, e))) => html! {
            span title=(e.format_human()) { "~" (format!("{:.1}", e.total_duration_ms as f64 / 1000.0)) " s" }
            span.small { " (" (format!("{:.0}", e.confidence * 100.0)) "%)" }
        },
        Ok(None) => html! { span.small { "no build yet" } },
        Err(e) => html! { span.small.error { (e.to_string()) } },
    }
}

/// The estimate with its packages, or why there is none.
async fn estimate_section(state: &AppState, id: &str) -> maud::Markup {
    let estimate = state.node.builds.estimate_latest(id).await;
    html! {
        h2 { "Estimate" }
        @match estimate {
            Ok(Some((build, packages, e))) => {
                p.small { "A build from scratch (cache ignored) of the project last built here — build "
                    a href=(format!("/builds/{build}")) { code { (build) } } ", packages " (packages.join(", "))
                    " — on the nodes and cores this configuration allows, learned from recorded builds and scaled by benchmarks." }
                pre #estimate data-total-ms=(e.total_duration_ms) { (e.format_human()) }
                table #estimate-packages {
                    thead { tr { th { "Package" } th { "Estimate" } th { "Runs learned from" } th { "CPU factor" } th { "Storage factor" } th { "Confidence" } } }
                    tbody {
                        @for p in &e.package_estimates {
                            tr { td { (p.package) } td { (p.duration_ms) " ms" } td { (p.samples) }
                                 td { (format!("{:.2}", p.factors.cpu_factor)) } td { (format!("{:.2}", p.factors.storage_factor)) }
                                 td { (format!("{:.0}%", p.confidence * 100.0)) } }
                        }
                    }
                }
            }
            Ok(None) => { p.small { "No estimate yet: estimates are for the project last built on this node; run a build first." } }
            Err(e) => { p.error { "No estimate: " (e.to_string()) } }
        }
    }
}

async fn show(who: &Caller, state: &AppState, id: &str, error: Option<&str>) -> HttpResponse {
    let cfg = match state.node.builds.config(id).await {
        Ok(c) => c,
        Err(_) => return super::not_found(Some(who), &format!("/configs/{id}")),
    };
    let json = serde_json::to_string_pretty(&cfg).unwrap_or_default();
    let body = html! {
        h1 { "Configuration " (cfg.name) }
        @if let Some(e) = error { p.error role="alert" { (e) } }
        p { a.button href=(format!("/builder?config={id}")) data-edit-in-builder=(cfg.name) { "Edit in the builder" } }
        @if who.role.allows(Action::ModifyConfig) {
            form.stack method="post" action=(format!("/configs/{id}")) {
                input type="hidden" name="csrf" value=(who.csrf.clone().unwrap_or_default());
                label { "JSON (plan §5.1 / Appendix B)" textarea #config-json name="json" rows="24" cols="80" { (json) } }
                button type="submit" { "Save" }
            }
        } @else {
            pre.data { (json) }
        }
        p { a href=(format!("/api/configs/{id}")) download=(format!("{}.json", cfg.name)) { "Export" } " · " a href="/configs" { "All configurations" } }
        (estimate_section(state, id).await)
    };
    html_response(
        if error.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK },
        layout(&cfg.name, Some(who), "/configs", body),
    )
}

#[derive(Deserialize)]
pub struct EditForm {
    csrf: String,
    json: String,
}

pub async fn edit(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
    form: web::Form<EditForm>,
) -> HttpResponse {
    let who = match admin_form(&req, &state, &form.csrf) {
        Ok(w) => w,
        Err(res) => return *res,
    };
    // The form's own field, not an API body: its errors name `json`.
    let patch = match serde_json::from_str::<serde_json::Value>(&form.json) {
        Ok(v) if v.is_object() => v,
        Ok(_) => return show(&who, &state, &id, Some("json: must be an object")).await,
        Err(e) => return show(&who, &state, &id, Some(&format!("json: {e}"))).await,
    };
    match state.node.builds.update_config(&id, patch, &who.actor()).await {
        Ok(_) => HttpResponse::SeeOther().insert_header((header::LOCATION, format!("/configs/{id}"))).finish(),
        Err(e) => show(&who, &state, &id, Some(&e.to_string())).await,
    }
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

pub async fn delete(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
    form: web::Form<CsrfForm>,
) -> HttpResponse {
    let who = match admin_form(&req, &state, &form.csrf) {
        Ok(w) => w,
        Err(res) => return *res,
    };
    match state.node.builds.delete_config(&id, &who.actor()).await {
        Ok(_) => HttpResponse::SeeOther().insert_header((header::LOCATION, "/configs")).finish(),
        Err(e) => render(&who, &state, Some(&e.to_string()), None).await,
    }
}

pub async fn use_template(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
    form: web::Form<BTreeMap<String, String>>,
) -> HttpResponse {
    let form = form.into_inner();
    let who = match admin_form(&req, &state, form.get("csrf").map(String::as_str).unwrap_or("")) {
        Ok(w) => w,
        Err(res) => return *res,
    };
    let name = form.get("name").cloned().unwrap_or_default();
    let values: BTreeMap<String, String> =
        form.into_iter().filter(|(k, v)| k != "csrf" && k != "name" && !v.is_empty()).collect();
    match state.node.builds.use_template(&id, &name, &values, &who.actor()).await {
        Ok(_) => HttpResponse::SeeOther().insert_header((header::LOCATION, "/configs")).finish(),
        Err(e) => render(&who, &state, Some(&e.to_string()), None).await,
    }
}
