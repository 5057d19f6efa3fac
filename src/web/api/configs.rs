//! `/api/configs` and `/api/templates`: build configurations (plan §5.1, Appendix B JSON as is)
//! and templates (plan §5.2). Changing them is for admins; reading is for everyone.

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use buildnet_actors::builds::config::{BuildConfiguration, ConfigTemplate};
use buildnet_actors::builds::ConfigSummary;
use buildnet_actors::wire::Action;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::build::build_error;
use crate::web::auth::Caller;
use crate::web::error::{ApiError, ErrorBody};
use crate::web::json::JsonBody;
use crate::web::AppState;

#[derive(Serialize, Deserialize, ToSchema)]
pub struct ConfigList {
    pub configs: Vec<ConfigSummary>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Created {
    pub id: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Updated {
    pub success: bool,
    pub config: BuildConfiguration,
}

/// Saved configurations.
#[utoipa::path(get, path = "/api/configs", tag = "builds", responses((status = 200, body = ConfigList)), security(("bearer" = [])))]
pub async fn list(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require(Action::View, "read configurations")?;
    Ok(HttpResponse::Ok().json(ConfigList { configs: state.node.builds.configs().await.map_err(build_error)? }))
}

/// Creates a configuration; refused with the field at fault, or with what the pool lacks.
#[utoipa::path(post, path = "/api/configs", tag = "builds", request_body = BuildConfiguration,
    responses((status = 201, body = Created), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn create(state: web::Data<AppState>, caller: Caller, body: JsonBody) -> Result<HttpResponse, ApiError> {
    caller.require(Action::ModifyConfig, "change configurations")?;
    let cfg: BuildConfiguration = body.parse()?;
    let id = state.node.builds.create_config(cfg, &caller.actor(), false).await.map_err(build_error)?;
    Ok(HttpResponse::Created().json(Created { id }))
}

/// One configuration, by id or name.
#[utoipa::path(get, path = "/api/configs/{id}", tag = "builds", params(("id" = String, Path, description = "Id or name")),
    responses((status = 200, body = BuildConfiguration), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get(state: web::Data<AppState>, caller: Caller, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    caller.require(Action::View, "read configurations")?;
    Ok(HttpResponse::Ok().json(state.node.builds.config(&id).await.map_err(build_error)?))
}

/// Changes a configuration: the body is merged into it (JSON merge patch).
#[utoipa::path(put, path = "/api/configs/{id}", tag = "builds", params(("id" = String, Path, description = "Id or name")),
    request_body(content = Object, description = "Fields to change"),
    responses((status = 200, body = Updated), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn update(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    caller.require(Action::ModifyConfig, "change configurations")?;
    let patch: serde_json::Value = body.parse()?;
    if !patch.is_object() {
        return Err(ApiError::bad_request("invalid_body", "body: expected an object of fields to change"));
    }
    let config = state.node.builds.update_config(&id, patch, &caller.actor()).await.map_err(build_error)?;
    Ok(HttpResponse::Ok().json(Updated { success: true, config }))
}

/// Deletes a configuration.
#[utoipa::path(delete, path = "/api/configs/{id}", tag = "builds", params(("id" = String, Path, description = "Id or name")),
    responses((status = 200, description = "deleted"), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn delete(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Action::ModifyConfig, "change configurations")?;
    state.node.builds.delete_config(&id, &caller.actor()).await.map_err(build_error)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "success": true })))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct TemplateList {
    pub templates: Vec<ConfigTemplate>,
}

/// System templates (Local Only, Quick Build, Full Distributed, CI/CD) and custom ones.
#[utoipa::path(get, path = "/api/templates", tag = "builds", responses((status = 200, body = TemplateList)), security(("bearer" = [])))]
pub async fn templates(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require(Action::View, "read templates")?;
    Ok(HttpResponse::Ok().json(TemplateList { templates: state.node.builds.templates().await.map_err(build_error)? }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SaveTemplate {
    pub config_id: String,
    pub name: String,
    pub description: Option<String>,
}

/// Saves a configuration as a custom template.
#[utoipa::path(post, path = "/api/templates", tag = "builds", request_body = SaveTemplate,
    responses((status = 201, body = Created), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn save_template(
    state: web::Data<AppState>,
    caller: Caller,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    caller.require(Action::ModifyConfig, "change templates")?;
    let req: SaveTemplate = body.parse()?;
    let id = state
        .node
        .builds
        .save_template(&req.config_id, &req.name, req.description, &caller.actor())
        .await
        .map_err(build_error)?;
    Ok(HttpResponse::Created().json(Created { id }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UseTemplate {
    /// Name of the new configuration.
    pub name: String,
    /// Template variables, e.g. {"cores": "4"}.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
}

/// Creates a configuration from a template.
#[utoipa::path(post, path = "/api/templates/{id}/use", tag = "builds", params(("id" = String, Path, description = "Template id or name")),
    request_body = UseTemplate, responses((status = 201, body = Created), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn use_template(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    caller.require(Action::ModifyConfig, "change configurations")?;
    let req: UseTemplate = body.parse()?;
    let id =
        state.node.builds.use_template(&id, &req.name, &req.variables, &caller.actor()).await.map_err(build_error)?;
    Ok(HttpResponse::Created().json(Created { id }))
}
