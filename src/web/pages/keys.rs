//! Key management page: list, create (the secret is shown once), revoke. Admin only.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use buildnet_actors::wire::{self, Action, Role};
use maud::html;
use serde::Deserialize;

use super::{caller, html_response, layout, time};
use crate::web::auth::{self, Caller};
use crate::web::AppState;

fn render(who: &Caller, state: &AppState, created: Option<(&str, &str)>, error: Option<&str>) -> HttpResponse {
    let now = wire::now_ms();
    let keys = state.node.keys.list();
    let csrf = who.csrf.clone().unwrap_or_default();
    let body = html! {
        h1 { "API keys" }
        @if let Some((name, secret)) = created {
            div.notice role="status" {
                p { "Key " strong { (name) } " created. Copy it now; it is not shown again:" }
                pre #new-key { (secret) }
            }
        }
        @if let Some(e) = error { p.error role="alert" { (e) } }
        table {
            thead { tr { th { "Name" } th { "Id" } th { "Role" } th { "Created" } th { "Last used" } th { "State" } th {} } }
            tbody {
                @for k in &keys {
                    tr {
                        td { (k.name) } td { code { (k.id) } } td { (k.role) } td { (time(k.created_at_ms)) }
                        td { @if let Some(t) = k.last_used_at_ms { (time(t)) } @else { "never" } }
                        td { @if k.revoked_at_ms.is_some() { "revoked" } @else if k.active(now) { "active" } @else { "expired" } }
                        td { @if k.active(now) {
                            a.button.danger href=(format!("/keys/{}/revoke", k.id)) data-revoke=(k.name) { "Revoke…" }
                        } }
                    }
                }
            }
        }
        h2 { "Create a key" }
        form.stack method="post" action="/keys" {
            input type="hidden" name="csrf" value=(csrf);
            label { "Name " input type="text" name="name" required maxlength="64"; }
            label { "Role "
                select name="role" {
                    option value="observer" { "observer — reads everything" }
                    option value="builder" { "builder — reads and runs builds" }
                    option value="admin" { "admin — everything" }
                }
            }
            button type="submit" { "Create key" }
        }
    };
    let status = if error.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    html_response(status, layout("Keys", Some(who), "/keys", body))
}

fn admin(req: &HttpRequest, state: &AppState) -> Result<Caller, Box<HttpResponse>> {
    let who = caller(req, state)?;
    who.require(Action::ManageKeys, "manage keys")
        .map_err(|e| Box::new(super::super::forbidden_page(&who, &e.message)))?;
    Ok(who)
}

pub async fn page(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    match admin(&req, &state) {
        Ok(who) => render(&who, &state, None, None),
        Err(res) => *res,
    }
}

#[derive(Deserialize)]
pub struct CreateForm {
    csrf: String,
    name: String,
    role: String,
}

pub async fn create(req: HttpRequest, state: web::Data<AppState>, form: web::Form<CreateForm>) -> HttpResponse {
    let who = match admin(&req, &state) {
        Ok(w) => w,
        Err(res) => return *res,
    };
    if !auth::form_allowed(&req, &who, &form.csrf) {
        return render(&who, &state, None, Some("The form expired; try again."));
    }
    let role: Role = match form.role.parse() {
        Ok(r) => r,
        Err(e) => return render(&who, &state, None, Some(&format!("role: {e}"))),
    };
    match state.node.keys.create(&form.name, role, None, &who.actor()).await {
        Ok((secret, info)) => render(&who, &state, Some((&info.name, &secret)), None),
        Err(e) => render(&who, &state, None, Some(&e.to_string())),
    }
}

/// Asks before revoking: scripts and nodes using the key stop working at once.
pub async fn confirm_revoke(req: HttpRequest, state: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    let who = match admin(&req, &state) {
        Ok(w) => w,
        Err(res) => return *res,
    };
    let Some(key) = state.node.keys.list().into_iter().find(|k| k.id == *id) else {
        return super::not_found(Some(&who), &format!("/keys/{id}/revoke"));
    };
    let body = html! {
        h1 { "Revoke key " (key.name) "?" }
        p { "Anything using key " code { (key.id) } " (role " (key.role) ") stops working at once, and pages logged in with it are logged out. This cannot be undone." }
        form.inline method="post" action=(format!("/keys/{}/revoke", key.id)) {
            input type="hidden" name="csrf" value=(who.csrf.clone().unwrap_or_default());
            button.danger type="submit" data-confirm-revoke=(key.name) { "Revoke " (key.name) }
            a href="/keys" { "Cancel" }
        }
    };
    html_response(StatusCode::OK, layout("Revoke key", Some(&who), "/keys", body))
}

#[derive(Deserialize)]
pub struct RevokeForm {
    csrf: String,
}

pub async fn revoke(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
    form: web::Form<RevokeForm>,
) -> HttpResponse {
    let who = match admin(&req, &state) {
        Ok(w) => w,
        Err(res) => return *res,
    };
    if !auth::form_allowed(&req, &who, &form.csrf) {
        return render(&who, &state, None, Some("The form expired; try again."));
    }
    match state.node.keys.revoke(&id, &who.actor()).await {
        Ok(_) => render(&who, &state, None, None),
        Err(e) => render(&who, &state, None, Some(&e.to_string())),
    }
}
