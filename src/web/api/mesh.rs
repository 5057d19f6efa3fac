//! Mesh management: join tokens, joining and leaving, forcing a ledger sync, and the pool's
//! topology (plan §4.3 `PoolVisualization`).

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use buildnet_actors::mesh::roster::{JoinToken, RosterError, TokenInfo};
use buildnet_actors::mesh::MeshView;
use buildnet_actors::pool::{resolve_node, Aggregate, NodeLookupError, PoolNode};
use buildnet_actors::wire::{Action, NodeId, NodeState, Role};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::web::auth::Caller;
use crate::web::error::{ApiError, ErrorBody};
use crate::web::json::JsonBody;
use crate::web::AppState;

/// Join tokens live this long unless asked otherwise.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 24 * 3600;

fn mesh_error(e: RosterError) -> ApiError {
    match e {
        RosterError::Store(s) => ApiError::internal(&s),
        e @ RosterError::NotMeshAdmin => ApiError::new(StatusCode::CONFLICT, "not_mesh_admin", e.to_string()),
        other => ApiError::new(StatusCode::CONFLICT, "mesh", other.to_string()),
    }
}

/// This node's place in the mesh: mesh id, role, coordinator and epoch, open links.
#[utoipa::path(get, path = "/api/mesh", tag = "pool",
    responses((status = 200, body = MeshView)), security(("bearer" = [])))]
pub async fn view(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require(Action::View, "read the mesh")?;
    let view =
        state.node.mesh.view().await.ok_or_else(|| ApiError::internal(&std::io::Error::other("mesh actor stopped")))?;
    Ok(HttpResponse::Ok().json(view))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// Role the joining node gets: builder (a worker), observer (contributes nothing, cannot
    /// trigger work) or admin.
    pub role: Role,
    /// Seconds until the token expires (default one day).
    pub ttl_secs: Option<u64>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    /// The single-use token; it pins this mesh's key.
    pub token: String,
    pub info: TokenInfo,
}

/// Creates a single-use, expiring join token (on the node holding the mesh key).
#[utoipa::path(post, path = "/api/tokens", tag = "pool", request_body = CreateTokenRequest,
    responses((status = 201, body = CreatedToken), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_token(
    state: web::Data<AppState>,
    caller: Caller,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    caller.require(Action::ManageNodes, "create join tokens")?;
    let body: CreateTokenRequest = body.parse()?;
    let ttl = body.ttl_secs.unwrap_or(DEFAULT_TOKEN_TTL_SECS);
    if ttl == 0 {
        return Err(ApiError::bad_request("invalid_body", "ttl_secs: must be at least 1"));
    }
    let (token, info) =
        state.node.mesh.create_token(body.role, ttl.saturating_mul(1000), &caller.actor()).await.map_err(mesh_error)?;
    Ok(HttpResponse::Created().json(CreatedToken { token, info }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinPoolRequest {
    /// URL of a node of the mesh to join (the one holding the mesh key), e.g. http://10.0.0.5:80
    pub address: String,
    /// A join token from `buildnet token create` on that node.
    pub token: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct JoinPoolResponse {
    pub success: bool,
    pub node_id: String,
    pub mesh_id: String,
}

/// Makes this running node join another mesh.
#[utoipa::path(post, path = "/api/pool/join", tag = "pool", request_body = JoinPoolRequest,
    responses((status = 200, body = JoinPoolResponse), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 502, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn join(state: web::Data<AppState>, caller: Caller, body: JsonBody) -> Result<HttpResponse, ApiError> {
    caller.require(Action::ManageNodes, "join a mesh")?;
    let req: JoinPoolRequest = body.parse()?;
    crate::web::mesh::check_join_url("address", &req.address).map_err(|e| ApiError::bad_request("invalid_body", e))?;
    if let Ok(token) = JoinToken::parse(&req.token) {
        // A refusal of this node's own (it is in a mesh with others) is a conflict, not a
        // failure of the node asked.
        state.node.mesh.can_join(&token.mesh_id).await.map_err(mesh_error)?;
    }
    let info = crate::web::mesh::join_remote(&state.node.mesh, &req.address, &req.token)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "join_failed", e))?;
    Ok(HttpResponse::Ok().json(JoinPoolResponse {
        success: true,
        node_id: state.node.identity.node_id.to_string(),
        mesh_id: info.mesh_id,
    }))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Success {
    pub success: bool,
}

/// Leaves the mesh cleanly (`NodeLeft` in the ledger); the node becomes a mesh of one.
#[utoipa::path(post, path = "/api/pool/leave", tag = "pool",
    responses((status = 200, body = Success), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn leave(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require(Action::ManageNodes, "leave the mesh")?;
    state.node.mesh.leave().await.map_err(mesh_error)?;
    Ok(HttpResponse::Ok().json(Success { success: true }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveNodeRequest {
    /// The member to remove: its node id, or its name when exactly one node carries it.
    pub node: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct RemoveNodeResponse {
    pub success: bool,
    pub node_id: String,
    pub name: String,
}

/// Removes a member that cannot leave by itself (its machine or data dir is lost), on the node
/// holding the mesh key: its roster entry is signed again, revoked; every member closes its link
/// and refuses it from then on, and `NodeLeft` (reason `removed`) records it. A new join token
/// admits it again once it has left (`buildnet node leave` on it).
#[utoipa::path(post, path = "/api/pool/remove", tag = "pool", request_body = RemoveNodeRequest,
    responses((status = 200, body = RemoveNodeResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn remove(state: web::Data<AppState>, caller: Caller, body: JsonBody) -> Result<HttpResponse, ApiError> {
    caller.require(Action::ManageNodes, "remove a node from the mesh")?;
    let req: RemoveNodeRequest = body.parse()?;
    // Only the key holder can remove; said before any name is looked up.
    if !state.node.mesh.view().await.is_some_and(|v| v.mesh_admin) {
        return Err(mesh_error(RosterError::NotMeshAdmin));
    }
    // Ids of members that are gone already are not in the pool: asked by id, the mesh says so.
    let nodes = state.node.pool.view().await?.nodes;
    let node = match resolve_node(&nodes, &req.node) {
        Ok(id) => id,
        Err(NodeLookupError::Unknown(key)) => NodeId::parse(&key.to_ascii_lowercase()).map_err(|_| {
            let shown: String = key.chars().take(64).collect();
            ApiError::new(StatusCode::NOT_FOUND, "unknown_node", format!("node: no node named '{shown}' in the pool"))
        })?,
        Err(e) => return Err(ApiError::bad_request("invalid_field", format!("node: {e}"))),
    };
    let entry = state.node.mesh.remove(node, &caller.actor()).await.map_err(|e| match e {
        e @ (RosterError::RemoveSelf | RosterError::NoLongerMember(_) | RosterError::RemovalUnderWay(_)) => {
            ApiError::new(StatusCode::CONFLICT, "not_removable", format!("node: {e}"))
        }
        e @ RosterError::UnknownMember(_) => ApiError::new(StatusCode::NOT_FOUND, "unknown_node", format!("node: {e}")),
        other => mesh_error(other),
    })?;
    Ok(HttpResponse::Ok().json(RemoveNodeResponse {
        success: true,
        node_id: entry.node_id.to_string(),
        name: entry.name,
    }))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct SyncResponse {
    /// Peers asked for what this node lacks.
    pub peers: usize,
}

/// Forces a ledger exchange with every linked peer now (an admin's: each call sends a request
/// to every peer, which a read-only key could repeat to load the whole mesh; the exchange runs
/// every second anyway).
#[utoipa::path(post, path = "/api/ledger/sync", tag = "ledger",
    responses((status = 200, body = SyncResponse)), security(("bearer" = [])))]
pub async fn sync(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require(Action::ManageNodes, "sync the ledger")?;
    Ok(HttpResponse::Ok().json(SyncResponse { peers: state.node.mesh.sync_now().await }))
}

/// A link between two nodes (plan §4.3).
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ConnectionVisualization {
    pub from_node: String,
    pub to_node: String,
    pub latency_ms: f64,
    /// Measured bandwidth; absent until network benchmarks exist.
    pub bandwidth_mbps: Option<f64>,
    /// `excellent` (< 5 ms), `good` (< 20 ms), `fair` (< 100 ms), `poor`, or `down`.
    pub status: String,
}

/// Plan §4.3's `PoolVisualization`.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct PoolVisualization {
    pub coordinator: String,
    pub epoch: u64,
    pub nodes: Vec<PoolNode>,
    /// Links from this node to each peer, as this node measures them.
    pub connections: Vec<ConnectionVisualization>,
    pub aggregate: Aggregate,
}

/// A label for a round-trip time.
pub fn quality(latency_ms: f64, up: bool) -> &'static str {
    match (up, latency_ms) {
        (false, _) => "down",
        (true, l) if l < 5.0 => "excellent",
        (true, l) if l < 20.0 => "good",
        (true, l) if l < 100.0 => "fair",
        _ => "poor",
    }
}

/// The pool as a graph: nodes, links with latency and a quality label, totals.
#[utoipa::path(get, path = "/api/pool/visualization", tag = "pool",
    responses((status = 200, body = PoolVisualization)), security(("bearer" = [])))]
pub async fn visualization(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require(Action::View, "read the pool")?;
    Ok(HttpResponse::Ok().json(topology(&state).await?))
}

pub async fn topology(state: &AppState) -> Result<PoolVisualization, ApiError> {
    let view = state.node.pool.view().await?;
    let me = state.node.identity.node_id.to_string();
    let mut connections: Vec<ConnectionVisualization> = view
        .nodes
        .iter()
        .filter(|n| n.id.as_str() != me)
        .map(|n| ConnectionVisualization {
            from_node: me.clone(),
            to_node: n.id.to_string(),
            latency_ms: n.latency_ms,
            bandwidth_mbps: None,
            status: quality(n.latency_ms, n.status != NodeState::Offline).into(),
        })
        .collect();
    // Links between peers, as their network benchmarks measured them (each pair once).
    for (i, from) in view.nodes.iter().enumerate() {
        for to in view.nodes.iter().skip(i + 1) {
            if from.id.as_str() == me || to.id.as_str() == me {
                continue;
            }
            let measured =
                from.benchmarks.network_to(to.id.as_str()).or_else(|| to.benchmarks.network_to(from.id.as_str()));
            if let Some(r) = measured {
                let up = from.status != NodeState::Offline && to.status != NodeState::Offline;
                connections.push(ConnectionVisualization {
                    from_node: from.id.to_string(),
                    to_node: to.id.to_string(),
                    latency_ms: r.latency_ms,
                    bandwidth_mbps: Some(r.download_mbps),
                    status: quality(r.latency_ms, up).into(),
                });
            }
        }
    }
    Ok(PoolVisualization {
        coordinator: view.coordinator.to_string(),
        epoch: view.epoch,
        nodes: view.nodes,
        connections,
        aggregate: view.aggregate,
    })
}
