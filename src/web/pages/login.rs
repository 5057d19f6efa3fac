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

/// Longest text the login form's key field may hold (API keys are far shorter).
const MAX_KEY_FIELD: usize = 256;

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
    if let Err(limited) = state.login_limit.check(&req) {
        let mut res =
            refuse(&format!("Too many login attempts from this address; try again in {} s.", limited.retry_after_secs));
        *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        if let Ok(value) = header::HeaderValue::from_str(&limited.retry_after_secs.to_string()) {
            res.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return res;
    }
    let cookie_ok = req.cookie(LOGIN_CSRF_COOKIE).is_some_and(|c| auth::same_token(c.value(), &form_data.csrf));
    if !cookie_ok || !auth::same_origin(&req) {
        return refuse("The form expired. Please try again.");
    }
    if form_data.key.len() > MAX_KEY_FIELD {
        return refuse("That is not an API key (too long).");
    }
    let Some(info) = state.node.keys.authenticate(form_data.key.trim()) else {
        return refuse("That key is not valid here (wrong, revoked or expired).");
    };
    let (session, _) = state.sessions.open(&info.id);
    // Over HTTPS the browser must never send the session back over plain HTTP.
    let secure = req.app_config().secure();
    let cookie = Cookie::build(SESSION_COOKIE, session)
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .finish();
    let mut clear = csrf_cookie("");
    clear.make_removal();
    HttpResponse::SeeOther().insert_header((header::LOCATION, "/")).cookie(cookie).cookie(clear).finish()
}

#[derive(Deserialize)]
pub struct LogoutForm {
    csrf: String,
}

/// Ends the session on the server, then clears the cookie. A post without the session's token
/// (or from another origin) changes nothing: it could not have come from the user's page.
pub async fn logout(req: HttpRequest, state: web::Data<AppState>, form_data: web::Form<LogoutForm>) -> HttpResponse {
    if let (Some(caller), Some(cookie)) = (auth::authenticate(&req, &state), req.cookie(SESSION_COOKIE)) {
        if !auth::form_allowed(&req, &caller, &form_data.csrf) {
            return crate::web::error_page(Some(&caller), "The form expired; reload the page and log out again.");
        }
        state.sessions.close(cookie.value());
    }
    let mut gone = Cookie::build(SESSION_COOKIE, "").path("/").finish();
    gone.make_removal();
    HttpResponse::SeeOther().insert_header((header::LOCATION, "/login")).cookie(gone).finish()
}
