//! `/api/pool`: the pooled view of every node's resources.

use actix_web::{web, HttpResponse};
use buildnet_actors::pool::{PoolNode, PoolView, PooledResource};
use buildnet_actors::wire::{Action, ResourceKind};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::web::auth::Caller;
use crate::web::error::{ApiError, ErrorBody};
use crate::web::AppState;

/// The pool: coordinator, nodes and aggregate totals.
#[utoipa::path(get, path = "/api/pool", tag = "pool",
    responses((status = 200, body = PoolView), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_pool(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require(Action::View, "read the pool")?;
    Ok(HttpResponse::Ok().json(state.node.pool.view().await?))
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
    query: web::Query<ResourceQuery>,
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
