//! The projects page: projects registered on this node with their package counts and tools, a
//! form to register one (a directory on the node holding `buildnet.toml`) and a remove button
//! each. Reading is for every key; registering and removing are for admins.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use buildnet_actors::wire::Action;
use maud::html;
use serde::Deserialize;

use super::{caller, html_response, layout, time};
use crate::web::auth::Caller;
use crate::web::AppState;

/// What the add form held, shown again with an error.
#[derive(Default, Deserialize)]
pub struct AddForm {
    csrf: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    name: String,
}

async fn render(who: &Caller, state: &AppState, form: Option<&AddForm>, error: Option<&str>) -> HttpResponse {
    let projects = state.node.builds.projects().await;
    let csrf = who.csrf.clone().unwrap_or_default();
    let admin = who.role.allows(Action::ModifyConfig);
    let (path, name) = form.map(|f| (f.path.as_str(), f.name.as_str())).unwrap_or_default();
    let body = html! {
        h1 { "Projects" }
        p.small { "A project is a directory on this node holding a " code { "buildnet.toml" } ". Registered here, it "
                  "can be built by name: the node reads its files itself (" code { "POST /api/build {\"project\": NAME}" } ")." }
        @if let Some(e) = error { p.error role="alert" { (e) } }
        @match &projects {
            Err(e) => p.error { (e.to_string()) },
            Ok(list) if list.is_empty() => (super::empty("No projects registered yet.")),
            Ok(list) => table #projects {
                thead { tr { th { "Name" } th { "Packages" } th { "Tools" } th { "Path" } th { "Registered" } th {} } }
                tbody {
                    @for p in list {
                        tr data-project=(p.name) {
                            td { (p.name) }
                            td.packages { @if let Some(e) = &p.error { span.error title=(e) { "manifest broken" } } @else { (p.packages) } }
                            td { (p.tools.join(", ")) }
                            td { code { (p.path) } }
                            td { (time(p.created_at_ms)) }
                            td { @if admin {
                                form.inline method="post" action=(format!("/projects/{}/delete", p.name)) {
                                    input type="hidden" name="csrf" value=(csrf);
                                    button.danger type="submit" { "Remove" }
                                }
                            } }
                        }
                    }
                }
            },
        }
        @if admin {
            h2 { "Register a project" }
            form.stack #add-project method="post" action="/projects" {
                input type="hidden" name="csrf" value=(csrf);
                label { "Directory on this node (absolute path) " input type="text" name="path" required value=(path); }
                label { "Name (default: the directory's name) " input type="text" name="name" maxlength="64" value=(name); }
                button type="submit" { "Register" }
            }
        }
    };
    let status = if error.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    html_response(status, layout("Projects", Some(who), "/projects", body))
}

pub async fn page(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    match caller(&req, &state) {
        Ok(who) => render(&who, &state, None, None).await,
        Err(redirect) => *redirect,
    }
}

fn admin_form(req: &HttpRequest, state: &AppState, csrf: &str) -> Result<Caller, Box<HttpResponse>> {
    super::form_caller(req, state, csrf, Action::ModifyConfig, "register and remove projects")
}

fn back() -> HttpResponse {
    HttpResponse::SeeOther().insert_header((header::LOCATION, "/projects")).finish()
}

pub async fn add(req: HttpRequest, state: web::Data<AppState>, form: web::Form<AddForm>) -> HttpResponse {
    let who = match admin_form(&req, &state, &form.csrf) {
        Ok(w) => w,
        Err(res) => return *res,
    };
    let name = Some(form.name.as_str()).filter(|n| !n.trim().is_empty());
    match state.node.builds.add_project(form.path.trim(), name, &who.actor()).await {
        Ok(_) => back(),
        Err(e) => render(&who, &state, Some(&form), Some(&e.to_string())).await,
    }
}

#[derive(Deserialize)]
pub struct RemoveForm {
    csrf: String,
}

pub async fn remove(
    req: HttpRequest,
    state: web::Data<AppState>,
    name: web::Path<String>,
    form: web::Form<RemoveForm>,
) -> HttpResponse {
    let who = match admin_form(&req, &state, &form.csrf) {
        Ok(w) => w,
        Err(res) => return *res,
    };
    match state.node.builds.remove_project(&name).await {
        Ok(()) => back(),
        Err(e) => render(&who, &state, None, Some(&e.to_string())).await,
    }
}
