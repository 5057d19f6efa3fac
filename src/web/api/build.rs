//! Builds over HTTP: content-addressed blobs (only missing ones are sent), starting a build,
//! its status, cancelling it, and the history (plan §13.1).

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use buildnet_actors::builds::history::BuildSummary;
use buildnet_actors::builds::projects::ProjectBuild;
use buildnet_actors::builds::runner::{BuildRequest, BuildStatus};
use buildnet_actors::builds::BuildError;
use buildnet_actors::cas::CasError;
use buildnet_actors::wire::Action;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::web::auth::Caller;
use crate::web::error::{ApiError, ErrorBody};
use crate::web::json::JsonBody;
use crate::web::query::Query;
use crate::web::AppState;

/// Largest blob one request may upload.
pub const MAX_BLOB_BYTES: usize = 1 << 30;
/// Bytes of a blob a request handler holds at once, on the way to or from its file.
const BLOB_BUFFER: usize = 256 << 10;
/// Largest build request (manifest and file list).
pub const MAX_BUILD_REQUEST_BYTES: usize = 32 << 20;

pub fn build_error(e: BuildError) -> ApiError {
    match e {
        e @ BuildError::InvalidConfig(_) => ApiError::bad_request("invalid_config", e.to_string()),
        e @ BuildError::Insufficient(_) => ApiError::new(StatusCode::CONFLICT, "insufficient_resources", e.to_string()),
        e @ BuildError::Duplicate(_) => ApiError::new(StatusCode::CONFLICT, "duplicate", e.to_string()),
        BuildError::Project(p) => ApiError::bad_request("invalid_project", p.to_string()),
        e @ (BuildError::MissingFile(_) | BuildError::BadDigest(_) | BuildError::WrongSize { .. }) => {
            ApiError::bad_request("invalid_field", e.to_string())
        }
        e @ BuildError::MissingBlobs { .. } => ApiError::bad_request("missing_blobs", e.to_string()),
        e @ BuildError::Path(_) => ApiError::bad_request("invalid_path", e.to_string()),
        e @ (BuildError::NotFound(_) | BuildError::NoConfig(_) | BuildError::NoProject(_)) => {
            ApiError::not_found(e.to_string())
        }
        e @ BuildError::Invalid { .. } => ApiError::bad_request("invalid_body", e.to_string()),
        e @ BuildError::ProjectExists(_) => ApiError::new(StatusCode::CONFLICT, "duplicate", e.to_string()),
        BuildError::Store(s) => ApiError::internal(&s),
        e @ BuildError::Unavailable => ApiError::internal(&e),
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Digests {
    pub digests: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Missing {
    /// The digests this node does not hold.
    pub missing: Vec<String>,
}

/// Which of these blobs this node lacks.
#[utoipa::path(post, path = "/api/blobs/missing", tag = "builds", request_body = Digests,
    responses((status = 200, body = Missing), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub async fn missing(state: web::Data<AppState>, caller: Caller, body: JsonBody) -> Result<HttpResponse, ApiError> {
    caller.require(Action::TriggerBuild, "upload build inputs")?;
    let body: Digests = body.parse()?;
    if let Some(bad) = body.digests.iter().find(|d| !buildnet_actors::cas::valid_digest(d)) {
        return Err(ApiError::bad_request(
            "invalid_body",
            format!("digests: '{bad}' is not a BLAKE3 digest (64 hex digits)"),
        ));
    }
    Ok(HttpResponse::Ok().json(Missing { missing: state.node.builds.cas.missing(&body.digests) }))
}

/// Uploads one blob; the body must hash to the digest in the path. The caller's role and the
/// declared size are checked before a byte of the body is read; the body is streamed into a
/// temporary file in the CAS, hashed on the fly, and stored only if its digest matches.
#[utoipa::path(put, path = "/api/blobs/{digest}", tag = "builds",
    params(("digest" = String, Path, description = "BLAKE3 of the body, hex")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, description = "stored"), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody)), security(("bearer" = [])))]
pub async fn put_blob(
    state: web::Data<AppState>,
    caller: Caller,
    digest: web::Path<String>,
    request: HttpRequest,
    mut body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    caller.require(Action::TriggerBuild, "upload build inputs")?;
    let too_large = |n: u64| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("a blob may have at most {MAX_BLOB_BYTES} bytes; this one has {n}"),
        )
    };
    let declared = match request.headers().get(header::CONTENT_LENGTH) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("invalid_body", "Content-Length is not a number"))?,
        ),
        None => None,
    };
    if let Some(n) = declared.filter(|n| *n > MAX_BLOB_BYTES as u64) {
        return Err(too_large(n));
    }
    let mut writer = state.node.builds.cas.writer(&digest).map_err(|e| match e {
        e @ CasError::BadDigest(_) => ApiError::bad_request("invalid_blob", e.to_string()),
        e => ApiError::internal(&e),
    })?;
    // Up to BLOB_BUFFER bytes gather here, then go to the file off this thread.
    let mut buffer = web::BytesMut::with_capacity(BLOB_BUFFER);
    loop {
        let next = body.next().await;
        if let Some(chunk) = &next {
            let chunk = chunk.as_ref().map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?;
            let received = writer.written() + (buffer.len() + chunk.len()) as u64;
            if received > MAX_BLOB_BYTES as u64 {
                return Err(too_large(received));
            }
            buffer.extend_from_slice(chunk);
        }
        if buffer.len() >= BLOB_BUFFER || (next.is_none() && !buffer.is_empty()) {
            let full = buffer.split().freeze();
            writer = web::block(move || writer.write(&full).map(|()| writer))
                .await
                .map_err(|e| ApiError::internal(&e))?
                .map_err(|e| ApiError::internal(&e))?;
        }
        if next.is_none() {
            break;
        }
    }
    web::block(move || writer.finish()).await.map_err(|e| ApiError::internal(&e))?.map_err(|e| match e {
        e @ CasError::Mismatch { .. } => ApiError::bad_request("invalid_blob", e.to_string()),
        e => ApiError::internal(&e),
    })?;
    Ok(HttpResponse::Created().finish())
}

/// Downloads one blob (build outputs), streamed from its file.
#[utoipa::path(get, path = "/api/blobs/{digest}", tag = "builds",
    params(("digest" = String, Path, description = "BLAKE3 of the blob, hex")),
    responses((status = 200, description = "the bytes"), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_blob(
    state: web::Data<AppState>,
    caller: Caller,
    digest: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Action::ReadBuildOutput, "read build outputs")?;
    let cas = state.node.builds.cas.clone();
    let (file, size) = web::block(move || cas.open_blob(&digest))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(|e| ApiError::not_found(e.to_string()))?;
    let chunks = futures_util::stream::try_unfold(file, |mut file| async move {
        let (file, data) = web::block(move || {
            let mut data = vec![0u8; BLOB_BUFFER];
            let n = std::io::Read::read(&mut file, &mut data)?;
            data.truncate(n);
            Ok::<_, std::io::Error>((file, data))
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok::<_, std::io::Error>((!data.is_empty()).then(|| (web::Bytes::from(data), file)))
    });
    Ok(HttpResponse::Ok().content_type("application/octet-stream").no_chunking(size).streaming(chunks))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Started {
    pub build_id: String,
    /// What the estimator expected when the build started; `null` when it could not say.
    #[serde(default)]
    pub estimated_duration_ms: Option<u64>,
    /// The build's status (as `GET /api/build/{id}` gives it) when the request asked to wait
    /// (`wait_ms`) and the build ended within the wait; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<BuildStatus>,
}

/// The two bodies `POST /api/build` and `/api/build/estimate` take: a registered project by
/// name (`"project": "NAME"`; the node reads its inputs itself), or a whole project with its
/// uploaded inputs (`"project": {…}`, what the CLI sends).
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum BuildBody {
    ByName(ProjectBuild),
    Uploaded(Box<BuildRequest>),
}

/// Reads either body into a request; a registered project's inputs are collected here. A body
/// that is a configuration itself (plan §13.1: `resources` at the top, no `project`) estimates
/// the project last built on this node under that configuration.
async fn request_of(state: &AppState, body: &JsonBody) -> Result<BuildRequest, ApiError> {
    // A body of no known shape is parsed as a request below, whose error names the field.
    let shape = body.parse::<BodyShape>().unwrap_or(BodyShape { project: None, resources: None });
    if shape.project.is_none() && shape.resources.is_some() {
        let config = body.parse()?;
        return state.node.builds.latest_request(config).await.map_err(build_error);
    }
    if shape.project == Some(Kind::Text) {
        let by_name: ProjectBuild = body.parse()?;
        state.node.builds.project_request(by_name).await.map_err(build_error)
    } else {
        body.parse()
    }
}

/// Which of the three bodies `POST /api/build` takes a request is, read without keeping
/// anything: a rebuild's body holds the whole project, and reading it into a
/// `serde_json::Value` first cost a tree of allocations per build.
#[derive(Deserialize)]
struct BodyShape {
    #[serde(default)]
    project: Option<Kind>,
    #[serde(default)]
    resources: Option<serde::de::IgnoredAny>,
}

/// What kind of JSON value a field holds: a string, or anything else (skipped).
#[derive(Debug, PartialEq)]
enum Kind {
    Text,
    Other,
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Kind, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Kind;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E>(self, _: &str) -> Result<Kind, E> {
                Ok(Kind::Text)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Kind, A::Error> {
                while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
                Ok(Kind::Other)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Kind, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Kind::Other)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Kind, E> {
                Ok(Kind::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Kind, E> {
                Ok(Kind::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Kind, E> {
                Ok(Kind::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Kind, E> {
                Ok(Kind::Other)
            }
            fn visit_unit<E>(self) -> Result<Kind, E> {
                Ok(Kind::Other)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Deserialize, IntoParams)]
pub struct StartQuery {
    /// Answer as soon as the build ends, or after this many milliseconds (at most 30 000) with it
    /// still running. A build that ended comes back whole in `status`, so a rebuild that found
    /// everything cached takes one request; the estimate is left out (`null`): a client that
    /// waits for the end has no use for it, and it is a history query per package.
    pub wait_ms: Option<u64>,
}

/// Starts a build: of a registered project by name (with a saved or inline configuration or a
/// template, optionally only some packages), or of a project whose input blobs are uploaded
/// (any that are not: `400 missing_blobs`; `POST /api/blobs/missing` says which).
#[utoipa::path(post, path = "/api/build", tag = "builds", request_body = BuildBody, params(StartQuery),
    responses((status = 202, body = Started), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn start(
    state: web::Data<AppState>,
    caller: Caller,
    body: JsonBody,
    http: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    caller.require(Action::TriggerBuild, "start builds")?;
    super::known_params(&http, &["wait_ms"])?;
    let query: StartQuery = crate::web::query::parse(http.query_string())?;
    let wait = std::time::Duration::from_millis(query.wait_ms.unwrap_or(0).min(MAX_STATUS_WAIT_MS));
    let request = request_of(&state, &body).await?;
    let builds = &state.node.builds;
    let estimated_duration_ms = match wait.is_zero() {
        true => builds.estimate(request.clone()).await.ok().map(|e| e.total_duration_ms),
        false => None,
    };
    let build_id = builds.start(request, &caller.actor()).await.map_err(build_error)?;
    let status = match wait.is_zero() {
        true => None,
        // The build runs whatever the wait brings: a status that cannot be read now is left
        // out (the client follows the id), not an error that would invite starting it again.
        false => match builds.status_when_done(&build_id, wait).await {
            Ok(status) => status.done().then(|| shown_to(&caller, status)),
            Err(e) => {
                log::warn!("build {build_id} started; its status after the wait: {e}");
                None
            }
        },
    };
    Ok(HttpResponse::Accepted().json(Started { build_id, estimated_duration_ms, status }))
}

/// A build's status as `caller` may see it: without the packages' output unless its role reads
/// build output.
fn shown_to(caller: &Caller, status: BuildStatus) -> BuildStatus {
    if caller.role.allows(Action::ReadBuildOutput) {
        status
    } else {
        status.without_output()
    }
}

/// Estimates a build without running it: per-package times learned from history (cached
/// packages near zero), the DAG scheduled over the cores the configuration allows, network
/// overhead, and a confidence with its range (plan §9). Blobs need not be uploaded; a
/// registered project is named as for `POST /api/build`.
#[utoipa::path(post, path = "/api/build/estimate", tag = "builds", request_body = BuildBody,
    responses((status = 200, body = buildnet_actors::builds::estimate::BuildEstimation), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn estimate(state: web::Data<AppState>, caller: Caller, body: JsonBody) -> Result<HttpResponse, ApiError> {
    caller.require(Action::View, "estimate builds")?;
    let request = request_of(&state, &body).await?;
    Ok(HttpResponse::Ok().json(state.node.builds.estimate(request).await.map_err(build_error)?))
}

/// Longest `wait_ms` a status request may hold the connection.
const MAX_STATUS_WAIT_MS: u64 = 30_000;

#[derive(Deserialize, IntoParams)]
pub struct StatusQuery {
    /// Answer as soon as the build ends, or after this many milliseconds if it is still running
    /// (at most 30 000): a client following a build learns of its end at once instead of at its
    /// next poll.
    pub wait_ms: Option<u64>,
}

/// A build's status with every package.
#[utoipa::path(get, path = "/api/build/{id}", tag = "builds", params(("id" = String, Path, description = "Build id"), StatusQuery),
    responses((status = 200, body = BuildStatus), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn status(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    query: Query<StatusQuery>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    caller.require(Action::View, "read builds")?;
    super::known_params(&request, &["wait_ms"])?;
    let wait = std::time::Duration::from_millis(query.wait_ms.unwrap_or(0).min(MAX_STATUS_WAIT_MS));
    let status = state.node.builds.status_when_done(&id, wait).await.map_err(build_error)?;
    Ok(HttpResponse::Ok().json(shown_to(&caller, status)))
}

/// The answer to a cancel: the build's status, and plan §13.1's `success`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Cancelled {
    /// True: the build was cancelled (or had already ended; `status` says how).
    pub success: bool,
    #[serde(flatten)]
    pub build: BuildStatus,
}

/// Cancels a build: running commands are killed, leases released.
#[utoipa::path(post, path = "/api/build/{id}/cancel", tag = "builds", params(("id" = String, Path, description = "Build id")),
    responses((status = 200, body = Cancelled), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn cancel(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Action::CancelBuild, "cancel builds")?;
    let build = state.node.builds.cancel(&id).await.map_err(build_error)?;
    // A build that had ended (succeeded or failed) before the request was not cancelled by it.
    let success = matches!(
        build.status,
        buildnet_actors::builds::runner::BuildState::Running | buildnet_actors::builds::runner::BuildState::Cancelled
    );
    Ok(HttpResponse::Ok().json(Cancelled { success, build: shown_to(&caller, build) }))
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RerunRequest {
    /// Run every package even if cached.
    #[serde(default)]
    pub force: bool,
    /// Use this configuration (name or id) instead of the earlier one.
    #[serde(default)]
    pub config: Option<String>,
}

/// Runs an earlier build again with the same project and inputs.
#[utoipa::path(post, path = "/api/build/{id}/rerun", tag = "builds", params(("id" = String, Path, description = "Build id")),
    request_body = RerunRequest, responses((status = 202, body = Started), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn rerun(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    caller.require(Action::TriggerBuild, "start builds")?;
    let req: RerunRequest = body.parse()?;
    let build_id = state.node.builds.rerun(&id, req.force, req.config, &caller.actor()).await.map_err(build_error)?;
    Ok(HttpResponse::Accepted().json(Started { build_id, estimated_duration_ms: None, status: None }))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct HistoryQuery {
    /// At most this many (1–500, default 20).
    pub limit: Option<usize>,
    /// Only builds with this status: running, succeeded, failed, cancelled.
    pub status: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BuildList {
    pub builds: Vec<BuildSummary>,
}

/// Build history, newest first.
#[utoipa::path(get, path = "/api/builds", tag = "builds", params(HistoryQuery),
    responses((status = 200, body = BuildList), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list(
    state: web::Data<AppState>,
    caller: Caller,
    query: Query<HistoryQuery>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    caller.require(Action::View, "read builds")?;
    super::known_params(&request, &["limit", "status"])?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", format!("limit: expected 1 to 500, got {limit}")));
    }
    if let Some(s) = &query.status {
        if !["running", "succeeded", "failed", "cancelled"].contains(&s.as_str()) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("status: expected running, succeeded, failed or cancelled, got '{s}'"),
            ));
        }
    }
    let builds = state.node.builds.history(limit, query.status.clone()).await.map_err(build_error)?;
    Ok(HttpResponse::Ok().json(BuildList { builds }))
}
