//! Benchmarks over HTTP (plan §13.1): run them on this node, test one storage path, read the
//! recorded history. Running a benchmark loads the machine, so it is for admins.

use actix_web::{web, HttpResponse};
use buildnet_actors::bench::{BenchOptions, BenchmarkResults, NetworkBenchmarkResult, StorageBenchmarkResult};
use buildnet_actors::mesh::netbench::NetworkOptions;
use buildnet_actors::start::BenchmarkSelection;
use buildnet_actors::wire::Action;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::web::auth::Caller;
use crate::web::error::{ApiError, ErrorBody};
use crate::web::json::JsonBody;
use crate::web::query::Query;
use crate::web::AppState;

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BenchmarkRequest {
    /// Any of cpu, memory, storage, network (default: all four; storage on every volume,
    /// network to every online peer).
    #[serde(default)]
    pub types: Vec<String>,
    #[serde(default)]
    pub options: Option<BenchOptions>,
    #[serde(default)]
    pub network_options: Option<NetworkOptions>,
}

fn failed(e: String) -> ApiError {
    ApiError::new(actix_web::http::StatusCode::UNPROCESSABLE_ENTITY, "benchmark_failed", e)
}

const TYPES: [&str; 4] = ["cpu", "memory", "storage", "network"];

/// Runs benchmarks on this node and to its peers, records them (`benchmarks`,
/// `BenchmarkCompleted`) and advertises them to the pool.
#[utoipa::path(post, path = "/api/node/benchmark", tag = "node", request_body = BenchmarkRequest,
    responses((status = 200, body = BenchmarkResults), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub async fn run(state: web::Data<AppState>, caller: Caller, body: JsonBody) -> Result<HttpResponse, ApiError> {
    caller.require(Action::ModifyResources, "run benchmarks")?;
    let req: BenchmarkRequest = if body.is_empty() { BenchmarkRequest::default() } else { body.parse()? };
    for t in &req.types {
        if !TYPES.contains(&t.as_str()) {
            return Err(ApiError::bad_request(
                "invalid_body",
                format!("types: '{t}' is not cpu, memory, storage or network"),
            ));
        }
    }
    if let Some(o) = &req.options {
        o.check().map_err(|e| ApiError::bad_request("invalid_body", format!("options.{e}")))?;
    }
    if let Some(o) = &req.network_options {
        o.check().map_err(|e| ApiError::bad_request("invalid_body", format!("network_options.{e}")))?;
    }
    let wants = |t: &str| req.types.is_empty() || req.types.iter().any(|x| x == t);
    let mut selection = state.node.full_selection(false).await;
    selection.cpu = wants("cpu");
    selection.memory = wants("memory");
    if !wants("storage") {
        selection.storage.clear();
    }
    if !wants("network") {
        selection.network.clear();
    }
    if let Some(o) = req.options {
        selection.options = o;
    }
    if let Some(o) = req.network_options {
        selection.network_options = o;
    }
    Ok(HttpResponse::Ok().json(state.node.benchmark(selection).await.map_err(failed)?))
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
    let selection = BenchmarkSelection { storage: vec![req.path.into()], options, ..Default::default() };
    let mut results = state.node.benchmark(selection).await.map_err(failed)?;
    Ok(HttpResponse::Ok().json(results.storage.remove(0)))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkTest {
    /// The peer's node id or name; plan §13.1 calls it `target`, accepted too.
    #[serde(alias = "target")]
    pub node: String,
    /// Round trips to time (default 50).
    pub samples: Option<u32>,
    /// Pause between round trips, ms (default 10).
    pub interval_ms: Option<u64>,
    /// Payload each way, MB (default 32).
    pub size_mb: Option<u64>,
}

/// Measures the mesh link to one peer: round-trip latency and jitter, upload and download.
#[utoipa::path(post, path = "/api/test/network", tag = "node", request_body = NetworkTest,
    responses((status = 200, body = NetworkBenchmarkResult), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn network(state: web::Data<AppState>, caller: Caller, body: JsonBody) -> Result<HttpResponse, ApiError> {
    caller.require(Action::ModifyResources, "run benchmarks")?;
    let req: NetworkTest = body.parse()?;
    let d = NetworkOptions::default();
    let options = NetworkOptions {
        samples: req.samples.unwrap_or(d.samples),
        interval_ms: req.interval_ms.unwrap_or(d.interval_ms),
        size_mb: req.size_mb.unwrap_or(d.size_mb),
    };
    options.check().map_err(|e| ApiError::bad_request("invalid_body", e))?;
    let id = state
        .node
        .pool
        .resolve(&req.node)
        .await
        .map_err(|e| ApiError::bad_request("invalid_body", format!("node: {e}")))?;
    let peers = state.node.pool.peers().await;
    let Some(peer) = peers.iter().find(|p| p.node_id == id) else {
        return Err(ApiError::bad_request("invalid_body", format!("node: '{}' is this node, not a peer", req.node)));
    };
    if peer.status == buildnet_actors::wire::NodeState::Offline {
        return Err(failed(format!("node: '{}' is offline", req.node)));
    }
    let selection =
        BenchmarkSelection { network: vec![peer.node_id.clone()], network_options: options, ..Default::default() };
    let mut results = state.node.benchmark(selection).await.map_err(failed)?;
    Ok(HttpResponse::Ok().json(results.network.remove(0)))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct HistoryQuery {
    /// cpu, memory, storage or network.
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
    query: Query<HistoryQuery>,
    request: actix_web::HttpRequest,
) -> Result<HttpResponse, ApiError> {
    caller.require(Action::View, "read benchmarks")?;
    super::known_params(&request, &["type", "limit"])?;
    if let Some(t) = query.kind.as_deref().filter(|t| !TYPES.contains(t)) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("type: '{t}' is not cpu, memory, storage or network"),
        ));
    }
    let rows = state.node.bench.history(query.kind.clone(), query.limit.unwrap_or(50).clamp(1, 500)).await?;
    let records: Vec<BenchmarkRecord> = rows
        .into_iter()
        .map(|(benchmark_type, run_at_ms, results)| BenchmarkRecord { benchmark_type, run_at_ms, results })
        .collect();
    Ok(HttpResponse::Ok().json(records))
}
