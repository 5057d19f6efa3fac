//! Login: paste an API key, get a session cookie. The form is protected by a double-submit
//! CSRF token (cookie and hidden field must match) since no session exists yet.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use maud::html;
use serde::Deserialize;

use super::{html_response, layout};
use crate::web::auth::{self, LOGIN_CSRF_COOKIE, SESSION_COOKIE};
use crate::web::AppState;

fn form(csrf: &str, error: Option<&str>) -> maud::Markup {
    layout(
        "Log in",
        None,
        "",
        html! {
            section.login {
                h1 { "Log in to this node" }
                p { "Paste an API key. The admin key of a new node is in " code { "<data-dir>/admin.key" } "; "
                    code { "buildnet key create --role observer --name you" } " makes more." }
                @if let Some(e) = error { p.error role="alert" { (e) } }
                form method="post" action="/login" {
                    input type="hidden" name="csrf" value=(csrf);
                    label for="key" { "API key" }
                    input #key type="password" name="key" autocomplete="off" required autofocus;
                    button type="submit" { "Log in" }
                }
            }
        },
    )
}

fn csrf_cookie(value: &str) -> Cookie<'static> {
    Cookie::build(LOGIN_CSRF_COOKIE, value.to_string())
        .path("/login")
        .http_only(true)
        .same_site(SameSite::Strict)
        .finish()
}

pub async fn page(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if auth::authenticate(&req, &state).is_some() {
        return HttpResponse::SeeOther().insert_header((header::LOCATION, "/")).finish();
    }
    let csrf = auth::random_token();
    let mut res = html_response(StatusCode::OK, form(&csrf, None));
    let _ = res.add_cookie(&csrf_cookie(&csrf));
    res
}

#[derive(Deserialize)]
pub struct LoginForm {
    key: String,
    csrf: String,
}

pub async fn submit(req: HttpRequest, state: web::Data<AppState>, form_data: web::Form<LoginForm>) -> HttpResponse {
    let fresh = auth::random_token();
    let refuse = |message: &str| {
        let mut res = html_response(StatusCode::UNAUTHORIZED, form(&fresh, Some(message)));
        let _ = res.add_cookie(&csrf_cookie(&fresh));
        res
    };
    let cookie_ok = req.cookie(LOGIN_CSRF_COOKIE).is_some_and(|c| auth::same_token(c.value(), &form_data.csrf));
    if !cookie_ok {
        return refuse("The form expired. Please try again.");
    }
    let Some(info) = state.node.keys.authenticate(form_data.key.trim()) else {
        return refuse("That key is not valid here (wrong, revoked or expired).");
    };
    let (session, _) = state.sessions.open(&info.id);
    let cookie = Cookie::build(SESSION_COOKIE, session).path("/").http_only(true).same_site(SameSite::Strict).finish();
    let mut clear = csrf_cookie("");
    clear.make_removal();
    HttpResponse::SeeOther().insert_header((header::LOCATION, "/")).cookie(cookie).cookie(clear).finish()
}

#[derive(Deserialize)]
pub struct LogoutForm {
    csrf: String,
}

pub async fn logout(req: HttpRequest, state: web::Data<AppState>, form_data: web::Form<LogoutForm>) -> HttpResponse {
    if let (Some(caller), Some(cookie)) = (auth::authenticate(&req, &state), req.cookie(SESSION_COOKIE)) {
        if caller.csrf.as_deref().is_some_and(|t| auth::same_token(t, &form_data.csrf)) {
            state.sessions.close(cookie.value());
        }
    }
    let mut gone = Cookie::build(SESSION_COOKIE, "").path("/").finish();
    gone.make_removal();
    HttpResponse::SeeOther().insert_header((header::LOCATION, "/login")).cookie(gone).finish()
}
