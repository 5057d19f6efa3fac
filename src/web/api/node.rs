//! `/api/node`: this node's status and rescans.

use actix_web::{web, HttpResponse};
use buildnet_actors::node::{NodeStatus, ScanOutcome};
use buildnet_actors::wire::Action;

use crate::web::auth::Caller;
use crate::web::error::{ApiError, ErrorBody};
use crate::web::AppState;

/// This node: identity, resources with their versions and capabilities, leases.
#[utoipa::path(get, path = "/api/node", tag = "node",
    responses((status = 200, body = NodeStatus), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_node(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require(Action::View, "read the node")?;
    Ok(HttpResponse::Ok().json(state.node.status().await?))
}

/// Rescans the machine's resources; live leases are kept. Admin only.
#[utoipa::path(post, path = "/api/node/scan", tag = "node",
    responses((status = 200, body = ScanOutcome), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn scan(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require(Action::ModifyResources, "rescan resources")?;
    let outcome = state.node.node.rescan().await?;
    Ok(HttpResponse::Ok().json(outcome))
}
