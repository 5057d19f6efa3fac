//! Server-rendered admin pages. Every page reads without JavaScript; `static/app.js` only
//! enhances (local times). Charts are SVG drawn here. Pages need a session: without one they
//! redirect to `/login`.

pub mod benchmarks;
pub mod builder;
pub mod builds;
pub mod configs;
pub mod dashboard;
pub mod keys;
pub mod ledger;
pub mod login;
pub mod node;
pub mod nodes;
pub mod projects;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use maud::{html, Markup, DOCTYPE};

use super::auth::{self, Caller};
use super::AppState;

/// Registers the pages and static files.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(dashboard::page))
        .route("/node", web::get().to(node::page))
        .route("/node/scan", web::post().to(node::scan))
        .route("/nodes", web::get().to(nodes::page))
        .route("/nodes/{id}", web::get().to(node::remote_page))
        .route("/nodes/{id}/remove", web::get().to(nodes::confirm_remove))
        .route("/nodes/{id}/remove", web::post().to(nodes::remove))
        .route("/benchmarks", web::get().to(benchmarks::page))
        .route("/benchmarks/run", web::post().to(benchmarks::run))
        .route("/builder", web::get().to(builder::page))
        .route("/configs", web::get().to(configs::list))
        .route("/configs", web::post().to(configs::create))
        .route("/configs/{id}", web::get().to(configs::edit_page))
        .route("/configs/{id}", web::post().to(configs::edit))
        .route("/configs/{id}/delete", web::post().to(configs::delete))
        .route("/templates/{id}/use", web::post().to(configs::use_template))
        .route("/projects", web::get().to(projects::page))
        .route("/projects", web::post().to(projects::add))
        .route("/projects/{name}/delete", web::post().to(projects::remove))
        .route("/builds", web::get().to(builds::list))
        .route("/builds/{id}", web::get().to(builds::page))
        .route("/builds/{id}/rerun", web::post().to(builds::rerun))
        .route("/builds/{id}/cancel", web::post().to(builds::cancel))
        .route("/ledger", web::get().to(ledger::page))
        .route("/keys", web::get().to(keys::page))
        .route("/keys", web::post().to(keys::create))
        .route("/keys/{id}/revoke", web::get().to(keys::confirm_revoke))
        .route("/keys/{id}/revoke", web::post().to(keys::revoke))
        .route("/login", web::get().to(login::page))
        .route("/login", web::post().to(login::submit))
        .route("/logout", web::post().to(login::logout))
        .route("/static/{file}", web::get().to(static_file));
}

/// The caller of a page, or a redirect to the login page.
pub fn caller(req: &HttpRequest, state: &AppState) -> Result<Caller, Box<HttpResponse>> {
    auth::authenticate(req, state)
        .ok_or_else(|| Box::new(HttpResponse::SeeOther().insert_header((header::LOCATION, "/login")).finish()))
}

/// The caller of a form post: logged in, echoing the session's CSRF token, and with a role
/// that allows `action`; otherwise the page that says why.
pub fn form_caller(
    req: &HttpRequest,
    state: &AppState,
    csrf: &str,
    action: buildnet_actors::wire::Action,
    what: &str,
) -> Result<Caller, Box<HttpResponse>> {
    let who = caller(req, state)?;
    if !auth::form_allowed(req, &who, csrf) {
        return Err(Box::new(super::error_page(Some(&who), "The form expired; reload the page and try again.")));
    }
    who.require(action, what).map_err(|e| Box::new(super::forbidden_page(&who, &e.message)))?;
    Ok(who)
}

/// Answers a page.
pub fn html_response(status: actix_web::http::StatusCode, markup: Markup) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'",
        ))
        .insert_header(("X-Frame-Options", "DENY"))
        .body(markup.into_string())
}

/// Pages that re-render when `/ws` reports a change.
const LIVE_PAGES: [&str; 5] = ["/", "/nodes", "/node", "/ledger", "/builds"];

/// The frame around every page: navigation, who is logged in, a logout form.
pub fn layout(title: &str, caller: Option<&Caller>, active: &str, body: Markup) -> Markup {
    let nav = [
        ("/", "Dashboard"),
        ("/nodes", "Nodes"),
        ("/node", "This node"),
        ("/builds", "Builds"),
        ("/projects", "Projects"),
        ("/configs", "Configurations"),
        ("/builder", "Builder"),
        ("/benchmarks", "Benchmarks"),
        ("/ledger", "Ledger"),
        ("/keys", "Keys"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · BuildNet" }
                link rel="stylesheet" href="/static/style.css";
                link rel="icon" href="/static/icon.svg" type="image/svg+xml";
                script src="/static/app.js" defer {}
            }
            body data-live=[LIVE_PAGES.contains(&active).then_some("")] {
                header.top {
                    a.brand href="/" { "BuildNet" }
                    @if let Some(c) = caller {
                        nav {
                            @for (href, label) in nav {
                                a href=(href) class=[(active == href).then_some("active")] { (label) }
                            }
                        }
                        form.logout method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(c.csrf.clone().unwrap_or_default());
                            span.who { (c.key_name) " · " (c.role) }
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A horizontal bar as SVG: `used` of `total`, with a label.
pub fn bar(label: &str, used: f64, total: f64, text: &str) -> Markup {
    let fraction = if total > 0.0 { (used / total).clamp(0.0, 1.0) } else { 0.0 };
    let width = (fraction * 300.0).round();
    html! {
        div.bar {
            span.bar-label { (label) }
            svg width="300" height="14" viewBox="0 0 300 14" role="img" aria-label=(format!("{label}: {text}")) {
                rect x="0" y="0" width="300" height="14" rx="3" class="bar-bg" {}
                rect x="0" y="0" width=(width) height="14" rx="3" class="bar-fill" {}
            }
            span.bar-text { (text) }
        }
    }
}

pub use crate::human::bytes;

/// A time as UTC text inside `<time>`, which app.js shows in the reader's zone.
pub fn time(ms: u64) -> Markup {
    let text = format!("{} UTC", crate::human::utc(ms));
    html! { time datetime=(ms) { (text) } }
}

const STYLE_CSS: &str = include_str!("../../../static/style.css");
const APP_JS: &str = include_str!("../../../static/app.js");
const BUILDER_JS: &str = include_str!("../../../static/builder.js");
const ICON_SVG: &str = include_str!("../../../static/icon.svg");

/// Static files, embedded at compile time. Public: they hold no data, and the login page
/// needs them before anyone is logged in.
async fn static_file(file: web::Path<String>) -> HttpResponse {
    let (body, kind) = match file.as_str() {
        "style.css" => (STYLE_CSS, "text/css; charset=utf-8"),
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "builder.js" => (BUILDER_JS, "text/javascript; charset=utf-8"),
        "icon.svg" => (ICON_SVG, "image/svg+xml"),
        _ => return HttpResponse::NotFound().content_type("text/plain").body("no such file"),
    };
    HttpResponse::Ok().content_type(kind).insert_header((header::CACHE_CONTROL, "public, max-age=300")).body(body)
}

/// The HTML 404 for paths outside `/api`.
pub fn not_found(caller: Option<&Caller>, path: &str) -> HttpResponse {
    html_response(
        actix_web::http::StatusCode::NOT_FOUND,
        layout(
            "Not found",
            caller,
            "",
            html! { h1 { "Not found" } p { "Nothing lives at " code { (path) } ". " a href="/" { "Back to the dashboard" } } },
        ),
    )
}

/// An empty-state line for tables with no rows.
pub fn empty(text: &str) -> Markup {
    html! { p.empty { (text) } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_clamp() {
        let svg = bar("CPU", 5.0, 4.0, "5/4").into_string();
        assert!(svg.contains("width=\"300\" height=\"14\" rx=\"3\" class=\"bar-fill\""));
        let zero = bar("CPU", 1.0, 0.0, "n/a").into_string();
        assert!(zero.contains("width=\"0\""));
    }
}
