//! Benchmarks over HTTP (plan §13.1): run them on this node, test one storage path, read the
//! recorded history. Running a benchmark loads the machine, so it is for admins.

use actix_web::{web, HttpResponse};
use buildnet_actors::bench::{BenchOptions, BenchmarkResults, Run, StorageBenchmarkResult};
use buildnet_actors::wire::Action;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::web::auth::Caller;
use crate::web::error::{ApiError, ErrorBody};
use crate::web::json::JsonBody;
use crate::web::AppState;

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BenchmarkRequest {
    /// Any of cpu, memory, storage (default: all three; storage on every volume).
    #[serde(default)]
    pub types: Vec<String>,
    #[serde(default)]
    pub options: Option<BenchOptions>,
}

fn failed(e: String) -> ApiError {
    ApiError::new(actix_web::http::StatusCode::UNPROCESSABLE_ENTITY, "benchmark_failed", e)
}

/// Runs benchmarks on this node and records them (`benchmarks`, `BenchmarkCompleted`).
#[utoipa::path(post, path = "/api/node/benchmark", tag = "node", request_body = BenchmarkRequest,
    responses((status = 200, body = BenchmarkResults), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub async fn run(state: web::Data<AppState>, caller: Caller, body: JsonBody) -> Result<HttpResponse, ApiError> {
    caller.require(Action::ModifyResources, "run benchmarks")?;
    let req: BenchmarkRequest = if body.is_empty() { BenchmarkRequest::default() } else { body.parse()? };
    let all = req.types.is_empty();
    for t in &req.types {
        if !["cpu", "memory", "storage"].contains(&t.as_str()) {
            return Err(ApiError::bad_request("invalid_body", format!("types: '{t}' is not cpu, memory or storage")));
        }
    }
    let wants = |t: &str| all || req.types.iter().any(|x| x == t);
    let status = state.node.node.status().await?;
    let run = Run {
        node_id: status.node_id.to_string(),
        cpu_threads: wants("cpu").then_some(status.resources.cpu.count),
        memory: wants("memory"),
        storage: if wants("storage") {
            status.resources.storage.iter().map(|v| v.path.clone().into()).collect()
        } else {
            vec![]
        },
        options: req.options.unwrap_or_default(),
    };
    Ok(HttpResponse::Ok().json(state.node.bench.run(run).await.map_err(failed)?))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StorageTest {
    /// A directory on the volume to test; a test file is written there and removed.
    pub path: String,
    /// Test file size (default 256 MB).
    pub file_mb: Option<u64>,
}

/// Tests one storage path (page cache bypassed with O_DIRECT, or fsync + fadvise).
#[utoipa::path(post, path = "/api/test/storage", tag = "node", request_body = StorageTest,
    responses((status = 200, body = StorageBenchmarkResult), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
pub async fn storage(state: web::Data<AppState>, caller: Caller, body: JsonBody) -> Result<HttpResponse, ApiError> {
    caller.require(Action::ModifyResources, "run benchmarks")?;
    let req: StorageTest = body.parse()?;
    if !std::path::Path::new(&req.path).is_dir() {
        return Err(ApiError::bad_request(
            "invalid_body",
            format!("path: '{}' is not a directory on this node", req.path),
        ));
    }
    let mut options = BenchOptions::default();
    if let Some(mb) = req.file_mb {
        if mb == 0 || mb > 65_536 {
            return Err(ApiError::bad_request("invalid_body", "file_mb: must be between 1 and 65536"));
        }
        options.file_mb = mb;
    }
    let status = state.node.node.status().await?;
    let run = Run {
        node_id: status.node_id.to_string(),
        cpu_threads: None,
        memory: false,
        storage: vec![req.path.into()],
        options,
    };
    let mut results = state.node.bench.run(run).await.map_err(failed)?;
    Ok(HttpResponse::Ok().json(results.storage.remove(0)))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct HistoryQuery {
    /// cpu, memory or storage.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub kind: Option<String>,
    pub limit: Option<usize>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct BenchmarkRecord {
    pub benchmark_type: String,
    pub run_at_ms: u64,
    #[schema(value_type = Object)]
    pub results: serde_json::Value,
}

/// Recorded benchmark results, newest first.
#[utoipa::path(get, path = "/api/node/benchmarks", tag = "node", params(HistoryQuery),
    responses((status = 200, body = Vec<BenchmarkRecord>)), security(("bearer" = [])))]
pub async fn history(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Action::View, "read benchmarks")?;
    let rows = state.node.bench.history(query.kind.clone(), query.limit.unwrap_or(50).clamp(1, 500)).await?;
    let records: Vec<BenchmarkRecord> = rows
        .into_iter()
        .map(|(benchmark_type, run_at_ms, results)| BenchmarkRecord { benchmark_type, run_at_ms, results })
        .collect();
    Ok(HttpResponse::Ok().json(records))
}
