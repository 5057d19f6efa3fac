//! The JSON API under `/api` (plan §13.1). Each handler checks the caller's role, asks an actor
//! handle, and answers JSON; the OpenAPI document is generated from these handlers' types.

pub mod bench;
pub mod build;
pub mod configs;
pub mod keys;
pub mod ledger;
pub mod mesh;
pub mod node;
pub mod pool;
pub mod projects;

use actix_web::{web, HttpResponse};
use buildnet_actors::wire::NodeId;
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use super::auth::Caller;
use super::error::ApiError;
use super::AppState;

/// Refuses query parameters a handler does not know (a misspelt filter must not be ignored):
/// 400 naming the parameter and the ones it takes.
pub fn known_params(req: &actix_web::HttpRequest, known: &[&str]) -> Result<(), ApiError> {
    for pair in req.query_string().split('&').filter(|p| !p.is_empty()) {
        let name = pair.split('=').next().unwrap_or_default();
        if !known.contains(&name) {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("{name}: unknown parameter; {} takes {}", req.path(), known.join(", ")),
            ));
        }
    }
    Ok(())
}

/// Registers every API route under `/api`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .route("/openapi.json", web::get().to(openapi))
        .route("/node", web::get().to(node::get_node))
        .route("/node/scan", web::post().to(node::scan))
        .route("/node/benchmark", web::post().to(bench::run))
        .route("/node/benchmarks", web::get().to(bench::history))
        .route("/test/storage", web::post().to(bench::storage))
        .route("/test/network", web::post().to(bench::network))
        .route("/pool", web::get().to(pool::get_pool))
        .route("/pool/nodes", web::get().to(pool::get_nodes))
        .route("/pool/resources", web::get().to(pool::get_resources))
        .route("/ledger", web::get().to(ledger::get_ledger))
        .route("/ledger/verify", web::get().to(ledger::verify))
        .route("/keys", web::get().to(keys::list))
        .route("/keys", web::post().to(keys::create))
        .route("/keys/{id}", web::delete().to(keys::revoke))
        .route("/tokens", web::post().to(mesh::create_token))
        .route("/mesh", web::get().to(mesh::view))
        .route("/pool/join", web::post().to(mesh::join))
        .route("/pool/leave", web::post().to(mesh::leave))
        .route("/pool/remove", web::post().to(mesh::remove))
        .route("/pool/visualization", web::get().to(mesh::visualization))
        .route("/ledger/sync", web::post().to(mesh::sync))
        // A literal path beside a template (`/blobs/missing`, `/build/estimate`) is a resource of
        // its own, matched by path before the template: another method there is 405, not a blob
        // named "missing" (`allowed_methods` says the same).
        .service(web::resource("/blobs/missing").route(web::post().to(build::missing)))
        // The body is streamed to disk; `put_blob` checks the role and the size first.
        .route("/blobs/{digest}", web::put().to(build::put_blob))
        .route("/blobs/{digest}", web::get().to(build::get_blob))
        .service(
            web::resource("/build")
                .app_data(web::PayloadConfig::new(build::MAX_BUILD_REQUEST_BYTES))
                .route(web::post().to(build::start)),
        )
        .service(
            web::resource("/build/estimate")
                .app_data(web::PayloadConfig::new(build::MAX_BUILD_REQUEST_BYTES))
                .route(web::post().to(build::estimate)),
        )
        .route("/build/{id}", web::get().to(build::status))
        .route("/build/{id}/cancel", web::post().to(build::cancel))
        .route("/build/{id}/rerun", web::post().to(build::rerun))
        .route("/builds", web::get().to(build::list))
        .route("/configs", web::get().to(configs::list))
        .route("/configs", web::post().to(configs::create))
        .route("/configs/{id}", web::get().to(configs::get))
        .route("/configs/{id}", web::put().to(configs::update))
        .route("/configs/{id}", web::delete().to(configs::delete))
        .route("/templates", web::get().to(configs::templates))
        .route("/templates", web::post().to(configs::save_template))
        .route("/templates/{id}/use", web::post().to(configs::use_template))
        .route("/projects", web::get().to(projects::list))
        .route("/projects", web::post().to(projects::add))
        .route("/projects/{name}", web::get().to(projects::get))
        .route("/projects/{name}", web::delete().to(projects::remove));
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the node answers.
    pub status: String,
    pub node_id: NodeId,
    pub version: String,
}

/// Liveness; the only endpoint that needs no key.
#[utoipa::path(get, path = "/api/health", tag = "node", responses((status = 200, body = Health)))]
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok".into(),
        node_id: state.node.identity.node_id.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "node", responses((status = 200, description = "OpenAPI 3.1 document")), security(("bearer" = [])))]
pub async fn openapi(_caller: Caller) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(ApiDoc::openapi()))
}

/// The methods the API takes at `path`, as its OpenAPI document lists them (read once): a 405
/// names them in `Allow` (RFC 9110 §15.5.6), from the same description `/api/openapi.json`
/// serves. A path that is a template without parameters is that resource alone, as [`routes`]
/// matches it before any template it also fits (`/api/build/estimate` takes POST only, though
/// `/api/build/{id}` takes GET); otherwise every template it fits counts, each tried in turn.
/// None for a path no template fits.
pub fn allowed_methods(path: &str) -> Option<String> {
    static ROUTES: std::sync::OnceLock<Vec<(Vec<String>, Vec<&'static str>)>> = std::sync::OnceLock::new();
    let routes = ROUTES.get_or_init(|| {
        ApiDoc::openapi()
            .paths
            .paths
            .iter()
            .map(|(template, item)| {
                let methods = [
                    ("GET", item.get.is_some()),
                    ("HEAD", item.head.is_some()),
                    ("POST", item.post.is_some()),
                    ("PUT", item.put.is_some()),
                    ("PATCH", item.patch.is_some()),
                    ("DELETE", item.delete.is_some()),
                ];
                let taken = methods.iter().filter(|(_, on)| *on).map(|(m, _)| *m).collect();
                (template.split('/').map(str::to_string).collect(), taken)
            })
            .collect()
    });
    let segments: Vec<&str> = path.split('/').collect();
    let fits = |template: &[String]| {
        template.len() == segments.len()
            && template
                .iter()
                .zip(&segments)
                .all(|(t, s)| t == s || (t.starts_with('{') && t.ends_with('}') && !s.is_empty()))
    };
    let literal =
        routes.iter().find(|(t, _)| t.iter().zip(&segments).all(|(t, s)| t == s) && t.len() == segments.len());
    let mut allowed: Vec<&str> = match literal {
        Some((_, methods)) => methods.clone(),
        None => routes.iter().filter(|(t, _)| fits(t)).flat_map(|(_, m)| m.iter().copied()).collect(),
    };
    if allowed.is_empty() {
        return None;
    }
    let order = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];
    allowed.sort_by_key(|m| order.iter().position(|o| o == m));
    allowed.dedup();
    Some(allowed.join(", "))
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key from `buildnet key create`"))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "BuildNet API", description = "Pool the machines you already have into one build farm."),
    paths(
        health, openapi,
        node::get_node, node::scan, bench::run, bench::history, bench::storage, bench::network,
        pool::get_pool, pool::get_nodes, pool::get_resources,
        ledger::get_ledger, ledger::verify,
        keys::list, keys::create, keys::revoke,
        build::missing, build::put_blob, build::get_blob, build::start, build::status, build::cancel, build::rerun, build::list, build::estimate,
        configs::list, configs::create, configs::get, configs::update, configs::delete, configs::templates, configs::save_template, configs::use_template,
        projects::list, projects::add, projects::get, projects::remove,
        mesh::view, mesh::create_token, mesh::join, mesh::leave, mesh::remove, mesh::sync, mesh::visualization,
    ),
    modifiers(&BearerAuth),
    tags((name = "node"), (name = "pool"), (name = "ledger"), (name = "keys"), (name = "builds"))
)]
pub struct ApiDoc;
