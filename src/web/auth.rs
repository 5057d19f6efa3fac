//! Who is calling: an API key (`Authorization: Bearer …`) or the pages' session cookie, and
//! whether their role allows what they ask. Sessions live in memory (a restart logs everyone
//! out); each carries its own CSRF token for forms.

use std::collections::HashMap;
use std::future::{ready, Ready};
use std::sync::{Arc, RwLock};

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{web, FromRequest, HttpRequest};
use buildnet_actors::wire::{self, Action, Role};
use rand::RngCore;

use super::error::ApiError;
use super::AppState;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "bn_session";
/// Name of the cookie that carries the login form's CSRF token before a session exists.
pub const LOGIN_CSRF_COOKIE: &str = "bn_login_csrf";
/// A session ends after this long without use.
const SESSION_IDLE_MS: u64 = 12 * 60 * 60 * 1000;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_id: String,
    pub key_name: String,
    pub role: Role,
    /// Present when the caller came through the pages; forms must echo it.
    pub csrf: Option<String>,
}

impl Caller {
    /// Refuses with 403 unless the caller's role allows `action`.
    pub fn require(&self, action: Action, what: &str) -> Result<(), ApiError> {
        if self.role.allows(action) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "a key with role '{}' may not {what}; use a key with role '{}'",
                    self.role,
                    Role::least_for(action)
                ),
            ))
        }
    }

    /// Who did it, for the ledger.
    pub fn actor(&self) -> String {
        format!("{} ({})", self.key_name, self.key_id)
    }
}

#[derive(Clone)]
struct Session {
    key_id: String,
    csrf: String,
    last_used_ms: u64,
}

/// The pages' sessions.
#[derive(Clone, Default)]
pub struct Sessions {
    inner: Arc<RwLock<HashMap<String, Session>>>,
}

/// 32 random bytes as hex: session ids and CSRF tokens.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    wire::hex(&bytes)
}

impl Sessions {
    /// Opens a session for a key; returns (session id, csrf token).
    pub fn open(&self, key_id: &str) -> (String, String) {
        let (id, csrf) = (random_token(), random_token());
        if let Ok(mut map) = self.inner.write() {
            let now = wire::now_ms();
            map.retain(|_, s| now.saturating_sub(s.last_used_ms) < SESSION_IDLE_MS);
            map.insert(id.clone(), Session { key_id: key_id.to_string(), csrf: csrf.clone(), last_used_ms: now });
        }
        (id, csrf)
    }

    pub fn close(&self, id: &str) {
        if let Ok(mut map) = self.inner.write() {
            map.remove(id);
        }
    }

    /// The key id and csrf token of a live session.
    fn lookup(&self, id: &str) -> Option<(String, String)> {
        let mut map = self.inner.write().ok()?;
        let now = wire::now_ms();
        let s = map.get_mut(id)?;
        if now.saturating_sub(s.last_used_ms) >= SESSION_IDLE_MS {
            map.remove(id);
            return None;
        }
        s.last_used_ms = now;
        Some((s.key_id.clone(), s.csrf.clone()))
    }
}

/// Authenticates a request, by bearer key first, then by session cookie.
pub fn authenticate(req: &HttpRequest, state: &AppState) -> Option<Caller> {
    let keys = &state.node.keys;
    let bearer = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if let Some(secret) = bearer {
        let info = keys.authenticate(secret)?;
        keys.touch(&info.id);
        return Some(Caller { key_id: info.id, key_name: info.name, role: info.role, csrf: None });
    }
    let cookie = req.cookie(SESSION_COOKIE)?;
    let (key_id, csrf) = state.sessions.lookup(cookie.value())?;
    // A revoked or expired key ends its sessions at once.
    let now = wire::now_ms();
    let info = keys.list().into_iter().find(|k| k.id == key_id && k.active(now))?;
    Some(Caller { key_id: info.id, key_name: info.name, role: info.role, csrf: Some(csrf) })
}

/// Header a page script sends with the session's CSRF token on an API write.
pub const CSRF_HEADER: &str = "X-CSRF-Token";

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Caller, ApiError>>;

    /// The API's caller. A bearer key is enough; the pages' session cookie is taken for reads, and
    /// for writes only with the session's token in [`CSRF_HEADER`] from this node's own origin
    /// (a cookie rides along on a cross-site request; the token and the origin do not).
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(state) = req.app_data::<web::Data<AppState>>() else {
            return ready(Err(ApiError::internal(&std::io::Error::other("app state missing"))));
        };
        let Some(caller) = authenticate(req, state) else { return ready(Err(ApiError::unauthorized())) };
        let safe = matches!(*req.method(), actix_web::http::Method::GET | actix_web::http::Method::HEAD);
        if let (Some(csrf), false) = (&caller.csrf, safe) {
            let token = req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
            if !(same_token(csrf, token) && same_origin(req)) {
                return ready(Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "csrf_required",
                    format!("a session cookie changes nothing without the page's {CSRF_HEADER} header from this node's own origin; scripts use 'Authorization: Bearer <key>'"),
                )));
            }
        }
        ready(Ok(caller))
    }
}

/// Whether a browser request comes from this node's own pages: `Origin`, else `Referer`, must
/// name this host. A request with neither (a script; browsers send `Origin` on every POST)
/// passes on this check alone; the CSRF token still guards it.
pub fn same_origin(req: &HttpRequest) -> bool {
    use actix_web::http::header;
    let Some(host) = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()) else { return false };
    let named = |value: &str| {
        let rest = value.strip_prefix("http://").or_else(|| value.strip_prefix("https://"));
        rest.is_some_and(|r| r.split('/').next() == Some(host))
    };
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        return origin.to_str().is_ok_and(named);
    }
    if let Some(referer) = req.headers().get(header::REFERER) {
        return referer.to_str().is_ok_and(named);
    }
    true
}

/// A page form post: the session's CSRF token, from this node's own origin.
pub fn form_allowed(req: &HttpRequest, who: &Caller, csrf: &str) -> bool {
    same_origin(req) && who.csrf.as_deref().is_some_and(|t| same_token(t, csrf))
}

/// Constant-time comparison of two tokens.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && blake3::hash(a.as_bytes()) == blake3::hash(b.as_bytes())
}
