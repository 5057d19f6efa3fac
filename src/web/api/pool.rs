//! `/api/pool`: the pooled view of every node's resources.

use std::sync::RwLock;
use std::time::{Duration, Instant};

use actix_web::http::header::ContentType;
use actix_web::web::Bytes;
use actix_web::{web, HttpResponse};
use buildnet_actors::pool::{PoolNode, PoolView, PooledResource};
use buildnet_actors::wire::{Action, ResourceKind};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::web::auth::Caller;
use crate::web::error::{ApiError, ErrorBody};
use crate::web::query::Query;
use crate::web::AppState;

/// The pool: coordinator, nodes and aggregate totals.
#[utoipa::path(get, path = "/api/pool", tag = "pool",
    responses((status = 200, body = PoolView), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_pool(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require(Action::View, "read the pool")?;
    let body = state.pool_json.get(|| state.node.pool.view()).await?;
    Ok(HttpResponse::Ok().content_type(ContentType::json()).body(body))
}

/// How long a serialized pool view is served before it is built again. Peers' figures change
/// once an advert (a second) at most; this node's free cores change with every lease, so the
/// answer is at most this much behind them.
pub const POOL_FRESH: Duration = Duration::from_millis(50);

/// The `/api/pool` answer, serialized once and shared by every request within [`POOL_FRESH`]:
/// a dashboard or monitor polling the pool costs one pool-actor round trip and one
/// serialization per 50 ms rather than one per request. One request rebuilds it; the others
/// wait for that one instead of each building their own.
#[derive(Default)]
pub struct PoolJson {
    latest: RwLock<Option<(Instant, Bytes)>>,
    rebuilding: tokio::sync::Mutex<()>,
}

impl PoolJson {
    fn fresh(&self) -> Option<Bytes> {
        let latest = self.latest.read().ok()?;
        latest.as_ref().filter(|(at, _)| at.elapsed() < POOL_FRESH).map(|(_, body)| body.clone())
    }

    /// The serialized view, rebuilt with `view` when the one held is older than [`POOL_FRESH`].
    pub async fn get<F, Fut, E>(&self, view: F) -> Result<Bytes, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<PoolView, E>>,
        ApiError: From<E>,
    {
        if let Some(body) = self.fresh() {
            return Ok(body);
        }
        let _turn = self.rebuilding.lock().await;
        if let Some(body) = self.fresh() {
            return Ok(body);
        }
        let body = Bytes::from(serde_json::to_vec(&view().await?).map_err(|e| ApiError::internal(&e))?);
        if let Ok(mut latest) = self.latest.write() {
            *latest = Some((Instant::now(), body.clone()));
        }
        Ok(body)
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct NodesResponse {
    pub nodes: Vec<PoolNode>,
}

/// Every node in the pool with its status, role and latency.
#[utoipa::path(get, path = "/api/pool/nodes", tag = "pool",
    responses((status = 200, body = NodesResponse), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_nodes(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require(Action::View, "read the pool")?;
    let view = state.node.pool.view().await?;
    Ok(HttpResponse::Ok().json(NodesResponse { nodes: view.nodes }))
}

#[derive(Deserialize, IntoParams)]
pub struct ResourceQuery {
    /// cpu, memory, storage, tool or runtime.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub kind: Option<String>,
    /// A node id or a node's name (a name two nodes share is refused, listing their ids).
    pub node: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct ResourcesResponse {
    pub resources: Vec<PooledResource>,
}

/// Pooled resources, filtered by type and node.
#[utoipa::path(get, path = "/api/pool/resources", tag = "pool", params(ResourceQuery),
    responses((status = 200, body = ResourcesResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_resources(
    state: web::Data<AppState>,
    caller: Caller,
    query: Query<ResourceQuery>,
    request: actix_web::HttpRequest,
) -> Result<HttpResponse, ApiError> {
    caller.require(Action::View, "read the pool")?;
    super::known_params(&request, &["type", "node"])?;
    let kind = match query.kind.as_deref().filter(|s| !s.is_empty()) {
        Some(k) => {
            Some(k.parse::<ResourceKind>().map_err(|e| ApiError::bad_request("invalid_query", format!("type: {e}")))?)
        }
        None => None,
    };
    let node = match query.node.as_deref().filter(|s| !s.is_empty()) {
        Some(n) => Some(
            state
                .node
                .pool
                .resolve(n)
                .await
                .map_err(|e| ApiError::bad_request("invalid_query", format!("node: {e}")))?,
        ),
        None => None,
    };
    let resources = state.node.pool.resources(kind, node).await?;
    Ok(HttpResponse::Ok().json(ResourcesResponse { resources }))
}
