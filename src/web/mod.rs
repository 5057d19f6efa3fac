//! The HTTP face of a node: the JSON API under `/api`, the admin pages, static files. Built
//! around an already bound `TcpListener` so tests and `buildnet up` share one path.

pub mod api;
pub mod auth;
pub mod error;
pub mod json;
pub mod limit;
pub mod mesh;
pub mod pages;
pub mod query;
pub mod tls;
pub mod ws;

use actix_web::dev::{Server, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers, Logger};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use buildnet_actors::start::Node;

use error::ApiError;

/// What every handler can reach.
pub struct AppState {
    pub node: Node,
    pub sessions: auth::Sessions,
    /// Joins per source address: 10 at once, then one every 6 s.
    pub join_limit: limit::RateLimit,
    /// Logins per source address: 20 at once, then one every 3 s.
    pub login_limit: limit::RateLimit,
    /// The serialized `/api/pool` answer, shared for a few milliseconds.
    pub pool_json: api::pool::PoolJson,
    /// Turns true when the node is told to stop: open event streams end then.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// Builds the server on a bound listener, serving HTTPS when given a TLS configuration; the
/// caller awaits it. SIGINT or SIGTERM stops it ([`stop_on_signal`]).
pub fn server(
    node: Node,
    listener: std::net::TcpListener,
    tls: Option<rustls::ServerConfig>,
) -> std::io::Result<Server> {
    node.mesh.set_dialer(mesh::dialer());
    let (stop_told, stopping) = tokio::sync::watch::channel(false);
    let mesh_of_node = node.mesh.clone();
    let state = web::Data::new(AppState {
        node,
        sessions: auth::Sessions::default(),
        join_limit: limit::RateLimit::new("join", 10, std::time::Duration::from_secs(6)),
        login_limit: limit::RateLimit::new("login", 20, std::time::Duration::from_secs(3)),
        pool_json: api::pool::PoolJson::default(),
        stopping,
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::PayloadConfig::new(json::MAX_BODY_BYTES))
            .app_data(web::FormConfig::default().limit(64 * 1024).error_handler(form_error))
            .app_data(
                web::QueryConfig::default()
                    .error_handler(|e, _| ApiError::bad_request("invalid_query", e.to_string()).into()),
            )
            .app_data(
                web::PathConfig::default()
                    .error_handler(|e, _| ApiError::bad_request("invalid_path", e.to_string()).into()),
            )
            .wrap(Logger::new("%a \"%r\" %s %b %Dms").exclude("/api/health"))
            .wrap(ErrorHandlers::new().handler(StatusCode::METHOD_NOT_ALLOWED, method_not_allowed))
            // HEAD is GET without the body (RFC 9110 §9.3.2): routes are registered for GET only,
            // and the connection, which saw HEAD, sends the headers alone.
            .wrap_fn(|mut req, srv| {
                if req.method() == actix_web::http::Method::HEAD {
                    req.head_mut().method = actix_web::http::Method::GET;
                }
                actix_web::dev::Service::call(srv, req)
            })
            .route("/mesh", web::get().to(mesh::accept))
            .route("/mesh/join", web::get().to(mesh::accept_join))
            .route("/ws", web::get().to(ws::events))
            .service(web::scope("/api").configure(api::routes).default_service(web::to(api_not_found)))
            .configure(pages::routes)
            .default_service(web::to(page_not_found))
    })
    .workers(2)
    // Small messages (a mesh link's task results, API answers) go at once rather than waiting
    // for the ACK of the one before (see `tls::no_delay`, the client side).
    .tcp_nodelay(true)
    .shutdown_timeout(5)
    .disable_signals();
    let server = match tls {
        Some(config) => server.listen_rustls_0_23(listener, config)?,
        None => server.listen(listener)?,
    }
    .run();
    actix_rt::spawn(stop_on_signal(server.handle(), mesh_of_node, stop_told));
    Ok(server)
}

/// On SIGINT, SIGTERM or SIGQUIT: the mesh's links and the open event streams are closed first,
/// then the server finishes the requests in flight (up to five seconds) and stops. Left to
/// actix-web, a peer's link — a request that never ends — held every stop for the whole five
/// seconds. A second signal stops the process at once, should the stop itself hang.
async fn stop_on_signal(
    server: actix_web::dev::ServerHandle,
    mesh: buildnet_actors::mesh::MeshHandle,
    stop_told: tokio::sync::watch::Sender<bool>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut signals: Vec<_> = [SignalKind::interrupt(), SignalKind::terminate(), SignalKind::quit()]
        .into_iter()
        .filter_map(|kind| signal(kind).map_err(|e| log::warn!("a stop signal cannot be caught: {e}")).ok())
        .collect();
    next_signal(&mut signals).await;
    log::info!("stopping: closing the mesh's links, then the server (a second signal stops at once)");
    actix_rt::spawn(async move {
        next_signal(&mut signals).await;
        log::warn!("a second stop signal: stopping at once");
        std::process::exit(130);
    });
    mesh.stop().await;
    let _ = stop_told.send(true);
    server.stop(true).await;
}

/// A page form that cannot be read (a field missing, a value of the wrong kind, too large):
/// the error page, not actix's plain-text "Parse error". Forms are the pages' alone; the API
/// reads JSON.
fn form_error(e: actix_web::error::UrlencodedError, req: &HttpRequest) -> actix_web::Error {
    let caller = req.app_data::<web::Data<AppState>>().and_then(|state| auth::authenticate(req, state));
    let page =
        error_page(caller.as_ref(), &format!("The form could not be read ({e}); reload the page and try again."));
    actix_web::error::InternalError::from_response(e, page).into()
}

/// Waits for the next of `signals` (for ever when none could be caught).
async fn next_signal(signals: &mut [tokio::signal::unix::Signal]) {
    if signals.is_empty() {
        return std::future::pending().await;
    }
    let _ = futures_util::future::select_all(signals.iter_mut().map(|s| Box::pin(s.recv()))).await;
}

/// Unknown API paths are 404; a known path asked with a method it does not take is 405 (routes
/// are registered one method each, so such a request falls through to here).
async fn api_not_found(req: HttpRequest) -> HttpResponse {
    if !req.resource_map().has_resource(req.path()) {
        let err = ApiError::not_found(format!("no API route {} {}; see /api/openapi.json", req.method(), req.path()));
        return actix_web::ResponseError::error_response(&err);
    }
    not_allowed(&req)
}

async fn page_not_found(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    pages::not_found(auth::authenticate(&req, &state).as_ref(), req.path())
}

fn method_not_allowed<B>(res: ServiceResponse<B>) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let (req, _) = res.into_parts();
    let res = ServiceResponse::new(req.clone(), not_allowed(&req)).map_into_right_body();
    Ok(ErrorHandlerResponse::Response(res))
}

/// A 405 naming the methods the path takes (from the OpenAPI document, for an API path) in its
/// message and its `Allow` header.
fn not_allowed(req: &HttpRequest) -> HttpResponse {
    let is_api = req.path().starts_with("/api/");
    let allowed = is_api.then(|| api::allowed_methods(req.path())).flatten();
    let takes = allowed.as_deref().map(|m| format!(" (it takes {m})")).unwrap_or_default();
    let see = if is_api { "; see /api/openapi.json" } else { "" };
    let err = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}{takes}{see}", req.method(), req.path()),
    );
    let mut res = actix_web::ResponseError::error_response(&err);
    if let Some(value) = allowed.and_then(|m| actix_web::http::header::HeaderValue::from_str(&m).ok()) {
        res.headers_mut().insert(actix_web::http::header::ALLOW, value);
    }
    res
}

/// A page saying what went wrong.
pub fn error_page(caller: Option<&auth::Caller>, message: &str) -> HttpResponse {
    pages::html_response(
        StatusCode::BAD_REQUEST,
        pages::layout(
            "Error",
            caller,
            "",
            maud::html! { h1 { "That did not work" } p.error role="alert" { (message) } p { a href="/" { "Back to the dashboard" } } },
        ),
    )
}

/// The page for a role that may not do what it asked: which role would, and who is logged in.
pub fn forbidden_page(caller: &auth::Caller, message: &str) -> HttpResponse {
    pages::html_response(
        StatusCode::FORBIDDEN,
        pages::layout(
            "Not allowed",
            Some(caller),
            "",
            maud::html! {
                h1 { "Not allowed with this key" }
                p.error role="alert" data-forbidden="" { (message) }
                p { "You are logged in as " strong { (caller.key_name) } " (" (caller.role) "). "
                    "Log out and log in with a key of the role named above, or ask an admin for one ("
                    code { "buildnet key create --name NAME --role ROLE" } ")." }
                p { a href="/" { "Back to the dashboard" } }
            },
        ),
    )
}
