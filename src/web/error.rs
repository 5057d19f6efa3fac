//! The API's one error shape: `{"error":{"code":…,"message":…}}` with the right status. A 500
//! says only that something failed; the cause chain goes to the log.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use buildnet_actors::keys::KeyError;
use buildnet_actors::node::NodeError;
use buildnet_actors::store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// Body of every error response.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `unauthorized`, `forbidden`, `not_found`, `invalid_body`, …
    pub code: String,
    /// What went wrong, naming the field where one is at fault.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid API key: send 'Authorization: Bearer <key>' (see `buildnet key create`)",
        )
    }

    /// Logs the cause and answers with an opaque 500.
    pub fn internal(cause: &dyn std::error::Error) -> Self {
        let mut chain = cause.to_string();
        let mut source = cause.source();
        while let Some(s) = source {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            source = s.source();
        }
        log::error!("internal error: {chain}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the node failed to handle the request; see its log")
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status)
            .json(ErrorBody { error: ErrorDetail { code: self.code.to_string(), message: self.message.clone() } })
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::UnknownResource(r) => ApiError::not_found(format!("no resource '{r}' on this node")),
            NodeError::Lease(l) => ApiError::new(StatusCode::CONFLICT, "lease_refused", l.to_string()),
            other => ApiError::internal(&other),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::internal(&e)
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::BadName => ApiError::bad_request("invalid_field", e.to_string()),
            KeyError::NotFound(_) => ApiError::not_found(e.to_string()),
            KeyError::AlreadyRevoked(_) => ApiError::new(StatusCode::CONFLICT, "already_revoked", e.to_string()),
            KeyError::LastAdmin(_) => ApiError::new(StatusCode::CONFLICT, "last_admin_key", e.to_string()),
            KeyError::Store(s) => ApiError::internal(&s),
        }
    }
}
