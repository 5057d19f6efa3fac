//! `/api/keys`: API key management (admin only).

use actix_web::{web, HttpResponse};
use buildnet_actors::keys::KeyInfo;
use buildnet_actors::wire::{Action, Role};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::web::auth::Caller;
use crate::web::error::{ApiError, ErrorBody};
use crate::web::json::JsonBody;
use crate::web::AppState;

#[derive(Serialize, Deserialize, ToSchema)]
pub struct KeysResponse {
    pub keys: Vec<KeyInfo>,
}

/// Every key, without secrets.
#[utoipa::path(get, path = "/api/keys", tag = "keys",
    responses((status = 200, body = KeysResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require(Action::ManageKeys, "manage keys")?;
    Ok(HttpResponse::Ok().json(KeysResponse { keys: state.node.keys.list() }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// A name to recognise the key by, 1–64 characters.
    pub name: String,
    pub role: Role,
    /// Seconds until the key expires; never when absent.
    pub ttl_secs: Option<u64>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct CreatedKey {
    /// The secret. Shown this once; only its hash is kept.
    pub key: String,
    pub info: KeyInfo,
}

/// Creates a key with a role.
#[utoipa::path(post, path = "/api/keys", tag = "keys", request_body = CreateKeyRequest,
    responses((status = 201, body = CreatedKey), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(state: web::Data<AppState>, caller: Caller, body: JsonBody) -> Result<HttpResponse, ApiError> {
    caller.require(Action::ManageKeys, "manage keys")?;
    let req: CreateKeyRequest = body.parse()?;
    if req.ttl_secs == Some(0) {
        return Err(ApiError::bad_request(
            "invalid_field",
            "ttl_secs: must be at least 1 (leave it out for a key that does not expire)",
        ));
    }
    let ttl_ms = req.ttl_secs.map(|s| s.saturating_mul(1000));
    let (key, info) = state.node.keys.create(&req.name, req.role, ttl_ms, &caller.actor()).await?;
    Ok(HttpResponse::Created().json(CreatedKey { key, info }))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct RevokedKey {
    pub revoked: KeyInfo,
}

/// Revokes a key; it stops working at once.
#[utoipa::path(delete, path = "/api/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "Key id, e.g. key_0a1b2c3d4e5f")),
    responses((status = 200, body = RevokedKey), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Action::ManageKeys, "manage keys")?;
    let revoked = state.node.keys.revoke(&id, &caller.actor()).await?;
    Ok(HttpResponse::Ok().json(RevokedKey { revoked }))
}
