//! `/api/projects`: project directories registered on this node, so a build can name a project
//! (`POST /api/build` with `"project": "NAME"`) and the node reads its inputs itself. Reading is
//! for every key (`View`); registering and removing are for admin keys (`ModifyConfig`): a
//! registered directory's files are read by the node and become build inputs.

use actix_web::{web, HttpResponse};
use buildnet_actors::builds::projects::ProjectInfo;
use buildnet_actors::wire::Action;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::build::build_error;
use crate::web::auth::Caller;
use crate::web::error::{ApiError, ErrorBody};
use crate::web::json::JsonBody;
use crate::web::AppState;

#[derive(Serialize, Deserialize, ToSchema)]
pub struct ProjectList {
    pub projects: Vec<ProjectInfo>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddProject {
    /// Absolute path, on the node, of a directory holding `buildnet.toml`.
    #[serde(default)]
    pub path: String,
    /// Default: the directory's name.
    #[serde(default)]
    pub name: Option<String>,
}

/// Registered projects, each with its package count and the tools its packages require.
#[utoipa::path(get, path = "/api/projects", tag = "builds", responses((status = 200, body = ProjectList)), security(("bearer" = [])))]
pub async fn list(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require(Action::View, "read projects")?;
    Ok(HttpResponse::Ok().json(ProjectList { projects: state.node.builds.projects().await.map_err(build_error)? }))
}

/// Registers a project directory: it must hold a `buildnet.toml` that parses (errors name the
/// file and field) and lie outside the node's data dir.
#[utoipa::path(post, path = "/api/projects", tag = "builds", request_body = AddProject,
    responses((status = 201, body = ProjectInfo), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn add(state: web::Data<AppState>, caller: Caller, body: JsonBody) -> Result<HttpResponse, ApiError> {
    caller.require(Action::ModifyConfig, "register projects")?;
    let req: AddProject = body.parse()?;
    let info =
        state.node.builds.add_project(&req.path, req.name.as_deref(), &caller.actor()).await.map_err(build_error)?;
    Ok(HttpResponse::Created().json(info))
}

/// One project, with its packages in dependency order (`package_names`).
#[utoipa::path(get, path = "/api/projects/{name}", tag = "builds", params(("name" = String, Path, description = "Project name")),
    responses((status = 200, body = ProjectInfo), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Action::View, "read projects")?;
    Ok(HttpResponse::Ok().json(state.node.builds.project(&name).await.map_err(build_error)?))
}

/// Forgets a project; its directory is left as it is.
#[utoipa::path(delete, path = "/api/projects/{name}", tag = "builds", params(("name" = String, Path, description = "Project name")),
    responses((status = 200, description = "{\"success\": true}"), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn remove(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Action::ModifyConfig, "remove projects")?;
    state.node.builds.remove_project(&name).await.map_err(build_error)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "success": true })))
}
