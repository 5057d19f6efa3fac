//! Build history: builds and their packages written to `builds`, `build_packages` and
//! `build_package_results`, read back for `GET /api/build/:id` and `buildnet history`.

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::runner::{BuildState, BuildStatus, PackageState, PackageStatus};
use crate::ledger::LedgerHandle;
use crate::store::{StoreError, StoreHandle};
use crate::wire::NodeId;

/// A build's end as its node's ledger holds it: entry type, the entry's status and error, and its time.
type RecordedEnd = (String, Option<String>, Option<String>, i64);

/// The error an interrupted build ends with ([`end_interrupted`]).
pub const INTERRUPTED: &str = "interrupted: the node stopped while the build ran";

/// Ends the builds this node was running when it stopped — killed, or stopped with builds under
/// way: their rows still say running, and nothing would ever end them (a cancel finds no build
/// to stop). A build whose end this node's ledger already holds (its row's last save was lost)
/// takes that end, at that entry's time; any other is marked failed with [`INTERRUPTED`], its
/// `BuildFailed` entry appended before its row changes, so a start that fails half-way leaves
/// the rest for the next one. Such a build ends when this node stopped, by its own `NodeStopped`
/// entry after the build's `BuildStarted` in its chain (after the build's start by time where
/// that entry is missing), or, killed, at the last thing this node knew of it: a
/// package's end in its row ([`save_packages`]) or the arrival of a ledger entry for the build,
/// its own or a peer's (by this node's clock: a peer's may be ahead) — never before the build's
/// start nor after this start — so its duration leaves out the time the node was down. Its packages that had not
/// ended get rows too, cancelled with the same error, and its summary counts what ran. Run at
/// start, before the mesh brings peers' entries in and before any build can begin. Returns the
/// ids of the builds it ended as interrupted.
pub async fn end_interrupted(
    store: &StoreHandle,
    ledger: &LedgerHandle,
    me: &NodeId,
) -> Result<Vec<String>, StoreError> {
    let origin = me.to_string();
    let found: Vec<(String, Option<RecordedEnd>, i64)> = store
        .run(move |conn| {
            let ids: Vec<String> = conn
                .prepare("SELECT id FROM builds WHERE status = ?1 ORDER BY started_at")?
                .query_map(params![BuildState::Running.as_str()], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            // A build's end, if this node recorded one: stamped after the build's start, so read
            // by the time index from an hour before it, as the lookups below are (by the
            // origin's index, a build with no end read every entry this node ever wrote: ~0.1 s
            // at 200k).
            let mut end = conn.prepare(
                "SELECT entry_type, json_extract(entry_data, '$.status'), json_extract(entry_data, '$.error'), hlc_wall FROM ledger
                 WHERE +origin = ?1 AND +entry_type IN ('BuildCompleted', 'BuildFailed')
                   AND hlc_wall >= (SELECT started_at FROM builds WHERE id = ?2) - 3600000
                   AND json_valid(entry_data) AND json_extract(entry_data, '$.build_id') = ?2
                 ORDER BY seq DESC LIMIT 1",
            )?;
            // Read before this start appends anything. An entry counts by when this node got it
            // (`received_at`, its own clock: a peer's may be ahead or behind); those stamped by
            // their origin within an hour before the build's start or after are read, by the time
            // index — every entry's JSON is parsed otherwise (0.7 s a build in 1M).
            let mut last = conn.prepare(
                "SELECT MAX(started_at, MIN(?3, MAX(
                    COALESCE((SELECT MAX(completed_at) FROM build_packages WHERE build_id = ?1), 0),
                    COALESCE(
                      CASE WHEN ?4 IS NULL
                        THEN (SELECT MIN(hlc_wall) FROM ledger WHERE origin = ?2 AND entry_type = 'NodeStopped'
                                AND hlc_wall >= builds.started_at)
                        ELSE (SELECT hlc_wall FROM ledger WHERE origin = ?2 AND entry_type = 'NodeStopped'
                                AND seq > ?4 ORDER BY seq LIMIT 1)
                      END,
                      (SELECT MAX(received_at) FROM ledger WHERE hlc_wall >= builds.started_at - 3600000
                         AND received_at >= builds.started_at
                         AND entry_type NOT IN ('BuildCompleted', 'BuildFailed')
                         AND json_valid(entry_data) AND json_extract(entry_data, '$.build_id') = ?1),
                      0))))
                 FROM builds WHERE id = ?1",
            )?;
            // Where the build's start sits in this node's own chain: the stop that ends it is the
            // first `NodeStopped` after that, in chain order. By time alone, a clock set back
            // between two runs made an earlier run's stop (stamped later than this build's start)
            // count as this build's end. A start not in the ledger (the node was killed before
            // its group commit, within `ledger::SOON` of the build's start) leaves the stop to be
            // found by time. Read by the time index (the `+` keeps SQLite off the origin's and the
            // type's, which would walk every entry this node ever wrote, ~0.5 s a build in 1M),
            // as the arrivals below are.
            let mut started_seq = conn.prepare(
                "SELECT MIN(seq) FROM ledger WHERE +origin = ?1 AND +entry_type = 'BuildStarted'
                   AND hlc_wall >= (SELECT started_at FROM builds WHERE id = ?2) - 3600000
                   AND json_valid(entry_data) AND json_extract(entry_data, '$.build_id') = ?2",
            )?;
            let now = crate::wire::now_ms() as i64;
            ids.into_iter()
                .map(|id| {
                    let recorded = end
                        .query_row(params![origin, id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                        .optional()?;
                    let seq: Option<i64> = started_seq.query_row(params![origin, id], |r| r.get(0))?;
                    let last: i64 = last.query_row(params![id, origin, now, seq], |r| r.get(0))?;
                    Ok((id, recorded, last))
                })
                .collect()
        })
        .await?;
    let mut interrupted = Vec::new();
    for (id, recorded, last) in found {
        let (state, error, end) = match recorded {
            Some((kind, _, _, at)) if kind == "BuildCompleted" => (BuildState::Succeeded, None, at),
            // Ended as interrupted by an earlier start whose row update was lost: that entry
            // was made at that start, not when the build stopped.
            Some((_, _, error, _)) if error.as_deref() == Some(INTERRUPTED) => {
                (BuildState::Failed, Some(INTERRUPTED.to_string()), last)
            }
            Some((_, status, error, at)) => {
                let state =
                    if status.as_deref() == Some("cancelled") { BuildState::Cancelled } else { BuildState::Failed };
                (state, Some(error.unwrap_or_else(|| INTERRUPTED.to_string())), at)
            }
            None => {
                let data = serde_json::json!({ "build_id": id, "error": INTERRUPTED, "status": BuildState::Failed });
                ledger.append(crate::wire::LedgerEntryType::BuildFailed, data).await?;
                interrupted.push(id.clone());
                (BuildState::Failed, Some(INTERRUPTED.to_string()), last)
            }
        };
        let build = id.clone();
        let ended = store
            .run(move |conn| {
                let tx = conn.transaction()?;
                // The packages that had not ended: stopped with the node (those of a build that
                // ended have their rows, written before its ledger entry). A request that is not
                // the JSON it should be names none.
                tx.execute(
                    "INSERT OR IGNORE INTO build_packages (id, build_id, package_name, status, error)
                     SELECT ?1 || '/' || o.value, ?1, o.value, ?2, ?3
                     FROM build_requests r, json_each(CASE WHEN json_valid(r.request)
                       AND json_type(r.request, '$.project.order') = 'array'
                       THEN json_extract(r.request, '$.project.order') ELSE '[]' END) o
                     WHERE r.build_id = ?1 AND o.type = 'text'",
                    params![id, PackageState::Cancelled.as_str(), INTERRUPTED],
                )?;
                // Its summary counts what its rows say ran (the row's was written at its start).
                tx.execute(
                    "UPDATE builds SET status = ?1, error = ?2, completed_at = COALESCE(completed_at, MAX(started_at, ?3)),
                       duration_ms = COALESCE(duration_ms, MAX(0, ?3 - started_at)),
                       metrics = json_set(CASE WHEN json_valid(metrics) THEN metrics ELSE '{}' END,
                         '$.executed', (SELECT COUNT(*) FROM build_packages WHERE build_id = ?4 AND status = ?6),
                         '$.cached', (SELECT COUNT(*) FROM build_package_results WHERE build_id = ?4 AND cache_hit))
                     WHERE id = ?4 AND status = ?5",
                    params![
                        state.as_str(),
                        error,
                        end,
                        id,
                        BuildState::Running.as_str(),
                        PackageState::Succeeded.as_str()
                    ],
                )?;
                tx.commit()?;
                Ok(())
            })
            .await;
        // One build's rows that cannot be updated do not keep the node from starting: it stays
        // running in the history, and the next start tries again (its entry is not appended twice).
        if let Err(e) = ended {
            log::error!("ending interrupted build {build}: {e}");
        }
    }
    Ok(interrupted)
}

/// What [`save`] writes of a build.
#[derive(Debug, Clone)]
pub enum Rows {
    /// Its own row, and the request it was started with (JSON, kept so it can be run again):
    /// a build that starts has nothing yet to say per package (its live status is the
    /// actor's), and writing every package's pending row, to write it again when the build
    /// ends, was two statements per package on the store's thread. The request in the same
    /// transaction saves a store round trip and a commit per build (issue 14: a rebuild with
    /// nothing to do is little else). Like the row, it is written as the build starts and a
    /// failure is logged, not the build's: such a build runs, and cannot be run again by id
    /// once it has ended.
    Start { request: Option<String> },
    /// Its row as it ended, with the rows of `packages` — those [`save_packages`] could not
    /// write (normally none).
    End { packages: Vec<PackageStatus> },
}

/// Writes a build's own row to the history tables.
pub async fn save(store: &StoreHandle, status: &BuildStatus, rows: Rows) -> Result<(), StoreError> {
    let metrics = serde_json::json!({
        "packages": status.packages.len(),
        "cached": status.packages.iter().filter(|p| p.cache_hit).count(),
        "executed": status.packages.iter().filter(|p| p.state == PackageState::Succeeded).count(),
    });
    let artifacts = serde_json::to_string(&status.outputs()).unwrap_or_default();
    let (request, packages) = match rows {
        Rows::Start { request } => (request, Vec::new()),
        Rows::End { packages } => (None, packages),
    };
    let (id, state, triggered_by, error) =
        (status.id.clone(), status.status, status.triggered_by.clone(), status.error.clone());
    let (started, completed, duration) = (status.started_at_ms, status.completed_at_ms, status.duration_ms);
    store
        .run(move |conn| {
            let tx = conn.transaction()?;
            tx.prepare_cached(
                "INSERT INTO builds (id, config_id, status, started_at, completed_at, duration_ms, error, metrics, artifacts, triggered_by)
                 VALUES (?1, NULL, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT(id) DO UPDATE SET status = ?2, completed_at = ?4, duration_ms = ?5, error = ?6, metrics = ?7, artifacts = ?8",
            )?
            .execute(params![
                id,
                state.as_str(),
                started as i64,
                completed.map(|t| t as i64),
                duration.map(|t| t as i64),
                error,
                metrics.to_string(),
                artifacts,
                triggered_by
            ])?;
            if let Some(request) = &request {
                tx.prepare_cached("INSERT INTO build_requests (build_id, request) VALUES (?1, ?2)")?
                    .execute(params![id, request])?;
            }
            package_rows(&tx, &id, &packages)?;
            tx.commit()?;
            Ok(())
        })
        .await
}

/// Writes the rows of packages of build `id` that ended — not the build's own row: while it
/// runs, so that a node that dies mid-build keeps them, and at its end before its ledger entry.
pub async fn save_packages(store: &StoreHandle, id: String, packages: Vec<PackageStatus>) -> Result<(), StoreError> {
    store
        .run(move |conn| {
            let tx = conn.transaction()?;
            package_rows(&tx, &id, &packages)?;
            tx.commit()?;
            Ok(())
        })
        .await
}

/// The rows of `packages` of build `id`, each with its result. Two statements per package,
/// prepared once per connection: preparing them anew for every package was ~10 % of the
/// daemon's CPU in 200-package builds (issue 14). The node is kept only when the roster knows it
/// (the foreign key).
fn package_rows(tx: &rusqlite::Transaction, id: &str, packages: &[PackageStatus]) -> rusqlite::Result<()> {
    let mut package_row = tx.prepare_cached(
        "INSERT INTO build_packages (id, build_id, package_name, status, started_at, completed_at, duration_ms, assigned_node, output, error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, (SELECT id FROM nodes WHERE id = ?10), ?8, ?9)
         ON CONFLICT(id) DO UPDATE SET status = ?4, started_at = ?5, completed_at = ?6, duration_ms = ?7,
           assigned_node = excluded.assigned_node, output = ?8, error = ?9",
    )?;
    let mut result_row = tx.prepare_cached(
        "INSERT OR REPLACE INTO build_package_results (build_id, package_name, cache_hit, exit_code, action_key, outputs, cpu_ms) VALUES (?1, ?2, ?3, ?4, NULL, ?5, ?6)",
    )?;
    for p in packages {
        package_row.execute(params![
            format!("{}/{}", id, p.name),
            id,
            p.name,
            p.state.as_str(),
            p.started_at_ms.map(|t| t as i64),
            p.started_at_ms.zip(p.duration_ms).map(|(a, d)| (a + d) as i64),
            p.duration_ms.map(|t| t as i64),
            p.output_tail,
            p.error,
            p.node.as_ref().map(|n| n.to_string())
        ])?;
        result_row.execute(params![
            id,
            p.name,
            p.cache_hit,
            p.exit_code,
            serde_json::to_string(&p.outputs).unwrap_or_default(),
            p.cpu_ms.map(|c| c as i64)
        ])?;
    }
    Ok(())
}

/// Reads a finished build back from history.
pub async fn load(store: &StoreHandle, id: &str) -> Result<Option<BuildStatus>, StoreError> {
    let id = id.to_string();
    store
        .run(move |conn| {
            let head = conn
                .query_row("SELECT id, status, started_at, completed_at, duration_ms, error, triggered_by FROM builds WHERE id = ?1", [&id], |r| {
                    Ok(BuildStatus {
                        id: r.get(0)?,
                        status: BuildState::parse(&r.get::<_, String>(1)?),
                        started_at_ms: r.get::<_, i64>(2)? as u64,
                        completed_at_ms: r.get::<_, Option<i64>>(3)?.map(|t| t as u64),
                        duration_ms: r.get::<_, Option<i64>>(4)?.map(|t| t as u64),
                        error: r.get(5)?,
                        triggered_by: r.get(6)?,
                        packages: vec![],
                    })
                })
                .optional()?;
            let Some(mut status) = head else { return Ok(None) };
            let mut stmt = conn.prepare(
                "SELECT p.package_name, p.status, p.assigned_node, p.started_at, p.duration_ms, p.output, p.error, r.cache_hit, r.exit_code, r.outputs, r.cpu_ms, n.name
                 FROM build_packages p LEFT JOIN build_package_results r ON r.build_id = p.build_id AND r.package_name = p.package_name
                 LEFT JOIN nodes n ON n.id = p.assigned_node
                 WHERE p.build_id = ?1 ORDER BY p.started_at IS NULL, p.started_at, p.package_name",
            )?;
            let rows = stmt.query_map([&id], |r| {
                let state: String = r.get(1)?;
                Ok(PackageStatus {
                    name: r.get(0)?,
                    state: serde_json::from_value(serde_json::Value::String(state)).unwrap_or(PackageState::Failed),
                    node: r.get::<_, Option<String>>(2)?.and_then(|n| NodeId::parse(&n).ok()),
                    node_name: r.get(11)?,
                    started_at_ms: r.get::<_, Option<i64>>(3)?.map(|t| t as u64),
                    duration_ms: r.get::<_, Option<i64>>(4)?.map(|t| t as u64),
                    output_tail: r.get::<_, Option<String>>(5)?.unwrap_or_default(),
                    error: r.get(6)?,
                    cache_hit: r.get::<_, Option<bool>>(7)?.unwrap_or(false),
                    exit_code: r.get(8)?,
                    outputs: r.get::<_, Option<String>>(9)?.and_then(|o| serde_json::from_str(&o).ok()).unwrap_or_default(),
                    cpu_ms: r.get::<_, Option<i64>>(10)?.map(|c| c.max(0) as u64),
                })
            })?;
            status.packages = rows.collect::<Result<_, _>>()?;
            Ok(Some(status))
        })
        .await
}

/// One line of the build history.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BuildSummary {
    pub id: String,
    pub status: BuildState,
    pub started_at_ms: u64,
    pub duration_ms: Option<u64>,
    pub packages: u64,
    pub cached: u64,
    pub executed: u64,
    pub error: Option<String>,
    pub triggered_by: String,
    /// Names of the nodes its packages ran on (ids where a node's name is unknown).
    #[serde(default)]
    pub nodes: Vec<String>,
}

/// Recent builds, newest first.
pub async fn history(
    store: &StoreHandle,
    limit: usize,
    status: Option<String>,
) -> Result<Vec<BuildSummary>, StoreError> {
    store
        .run(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT id, status, started_at, duration_ms, metrics, error, triggered_by,
                   (SELECT GROUP_CONCAT(DISTINCT COALESCE(n.name, p.assigned_node)) FROM build_packages p LEFT JOIN nodes n ON n.id = p.assigned_node WHERE p.build_id = builds.id)
                 FROM builds WHERE (?1 IS NULL OR status = ?1) ORDER BY started_at DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![status, limit as i64], |r| {
                let metrics: serde_json::Value = r.get::<_, Option<String>>(4)?.and_then(|m| serde_json::from_str(&m).ok()).unwrap_or_default();
                Ok(BuildSummary {
                    id: r.get(0)?,
                    status: BuildState::parse(&r.get::<_, String>(1)?),
                    started_at_ms: r.get::<_, i64>(2)? as u64,
                    duration_ms: r.get::<_, Option<i64>>(3)?.map(|d| d as u64),
                    packages: metrics["packages"].as_u64().unwrap_or(0),
                    cached: metrics["cached"].as_u64().unwrap_or(0),
                    executed: metrics["executed"].as_u64().unwrap_or(0),
                    error: r.get(5)?,
                    triggered_by: r.get(6)?,
                    nodes: r.get::<_, Option<String>>(7)?.map(|n| n.split(',').map(str::to_string).collect()).unwrap_or_default(),
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
}
