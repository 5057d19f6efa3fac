//! Build-time estimates (plan §9): per-package durations learned from history, cached packages
//! counted as near zero, and the DAG scheduled over the cores the build may use. Without history
//! a package is estimated from its input size, with low confidence.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Plan §9.2's factors behind one package's estimate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EstimationFactors {
    /// Single-core benchmark score of the nodes it ran on over that of the node expected to run
    /// it (below 1: the target is faster); 1.0 when either is unmeasured.
    pub cpu_factor: f64,
    /// Not modelled: builds are rarely bound by memory bandwidth; always 1.0.
    pub memory_factor: f64,
    /// Sequential read speed of the recorded nodes' storage over the target's, applied to the
    /// time reading the package's inputs takes; 1.0 when unmeasured.
    pub storage_factor: f64,
    /// Cores the package kept busy in its recorded runs (CPU time over wall time, median);
    /// its declared `cores` where nothing is recorded.
    pub parallel_speedup: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PackageEstimate {
    pub package: String,
    pub duration_ms: u64,
    /// Its result is in the action cache: it will not run.
    pub cached: bool,
    /// Recorded runs the estimate is based on.
    pub samples: usize,
    pub confidence: f64,
    pub factors: EstimationFactors,
}

/// Plan §9.2's `BuildEstimation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BuildEstimation {
    pub total_duration_ms: u64,
    pub package_estimates: Vec<PackageEstimate>,
    /// Sum of package times over the scheduled wall time.
    pub parallelization_factor: f64,
    pub network_overhead_ms: u64,
    /// Time a build spends outside its packages (checking inputs, starting, writing outputs),
    /// learned from recorded builds of these packages; 0 without history.
    #[serde(default)]
    pub build_overhead_ms: u64,
    /// 0.0–1.0.
    pub confidence: f64,
    /// The range the real time should fall in at this confidence.
    pub low_ms: u64,
    pub high_ms: u64,
    /// Cores the schedule assumed.
    pub cores: u64,
}

impl BuildEstimation {
    /// Plan §9.2's text.
    pub fn format_human(&self) -> String {
        let confidence = match self.confidence {
            c if c > 0.8 => "high",
            c if c > 0.5 => "medium",
            _ => "low",
        };
        format!(
            "Estimated time: ~{:.1} seconds ({} confidence, {:.1}–{:.1} s)\nParallelization: {:.1}x speedup on {} cores\nNetwork overhead: {}ms\nBuild overhead: {}ms",
            self.total_duration_ms as f64 / 1000.0,
            confidence,
            self.low_ms as f64 / 1000.0,
            self.high_ms as f64 / 1000.0,
            self.parallelization_factor,
            self.cores,
            self.network_overhead_ms,
            self.build_overhead_ms
        )
    }
}

/// What is known about one package before estimating.
#[derive(Debug, Clone)]
pub struct PackageFacts {
    pub name: String,
    pub deps: Vec<String>,
    pub cores: u64,
    /// Recorded real runs, newest first.
    pub history: Vec<RecordedRun>,
    pub cached: bool,
    pub input_bytes: u64,
}

/// One recorded run of a package and the benchmark figures of the node it ran on.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RecordedRun {
    pub duration_ms: u64,
    /// Single-core score of the node (0: not measured).
    pub cpu_score: f64,
    /// Sequential read MB/s of the node's storage (0: not measured).
    pub storage_mbps: f64,
    /// CPU time of the run (0: not recorded).
    pub cpu_ms: u64,
}

/// The node a package is expected to run on, by its benchmark figures (0: not measured).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Target {
    pub cpu_score: f64,
    pub storage_mbps: f64,
}

fn ratio(recorded: f64, target: f64) -> f64 {
    if recorded > 0.0 && target > 0.0 {
        recorded / target
    } else {
        1.0
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(1.0)
}

/// Source bytes a node of [`REFERENCE_SCORE`] turns into output per second when nothing is known
/// of a package: gcc -O2 on generated C ran at about 45 KB/s on the development machine. A
/// rough prior, reported with low confidence; the first real run replaces it.
const PRIOR_BYTES_PER_SEC: f64 = 50_000.0;
/// Single-core CPU score (work units/s, release build) of the machine the prior was measured on.
const REFERENCE_SCORE: f64 = 3_700.0;
/// Starting a process in a sandbox and collecting its outputs: ~20 ms for a tiny compile.
const PRIOR_START_MS: u64 = 20;

/// Time for a package that has never run: process start plus working through its inputs at the
/// prior rate, scaled by the target node's CPU score.
fn unknown_package_ms(input_bytes: u64, target: Target) -> u64 {
    let speed = if target.cpu_score > 0.0 { target.cpu_score / REFERENCE_SCORE } else { 1.0 };
    PRIOR_START_MS + (input_bytes as f64 / (PRIOR_BYTES_PER_SEC * speed) * 1000.0).round() as u64
}

/// Estimates a package from its last five real runs, each scaled to the target node: the time
/// spent reading inputs by storage speed, the rest by CPU score; the median resists outliers.
pub fn package_estimate(f: &PackageFacts, target: Target) -> PackageEstimate {
    let measured: Vec<f64> = f
        .history
        .iter()
        .take(5)
        .filter(|r| r.cpu_ms > 0 && r.duration_ms > 0)
        .map(|r| r.cpu_ms as f64 / r.duration_ms as f64)
        .collect();
    let parallel_speedup = if measured.is_empty() { f.cores as f64 } else { median(measured) };
    let unit = |cpu_factor, storage_factor| EstimationFactors {
        cpu_factor,
        memory_factor: 1.0,
        storage_factor,
        parallel_speedup,
    };
    if f.cached {
        return PackageEstimate {
            package: f.name.clone(),
            duration_ms: 0,
            cached: true,
            samples: f.history.len(),
            confidence: 0.95,
            factors: unit(1.0, 1.0),
        };
    }
    let recent: Vec<RecordedRun> = f.history.iter().take(5).copied().collect();
    if recent.is_empty() {
        return PackageEstimate {
            package: f.name.clone(),
            duration_ms: unknown_package_ms(f.input_bytes, target),
            cached: false,
            samples: 0,
            confidence: 0.2,
            factors: unit(1.0, 1.0),
        };
    }
    let scaled: Vec<f64> = recent
        .iter()
        .map(|r| {
            let io_ms = if r.storage_mbps > 0.0 { f.input_bytes as f64 / (r.storage_mbps * 1e3) } else { 0.0 };
            let io_ms = io_ms.min(r.duration_ms as f64);
            let cpu_ms = r.duration_ms as f64 - io_ms;
            cpu_ms * ratio(r.cpu_score, target.cpu_score) + io_ms * ratio(r.storage_mbps, target.storage_mbps)
        })
        .collect();
    let cpu_factor = median(recent.iter().map(|r| ratio(r.cpu_score, target.cpu_score)).collect());
    let storage_factor = median(recent.iter().map(|r| ratio(r.storage_mbps, target.storage_mbps)).collect());
    let confidence = (0.5 + 0.15 * recent.len() as f64).min(0.9);
    PackageEstimate {
        package: f.name.clone(),
        duration_ms: median(scaled).round() as u64,
        cached: false,
        samples: recent.len(),
        confidence,
        factors: unit(cpu_factor, storage_factor),
    }
}

/// What an expansion of a pattern package that never ran is estimated from: the run of median
/// duration among its siblings' recent runs (`None` when none has run).
pub fn sibling_run(runs: &[RecordedRun]) -> Option<RecordedRun> {
    let mut sorted = runs.to_vec();
    sorted.sort_by_key(|r| r.duration_ms);
    sorted.get(sorted.len() / 2).copied()
}

/// Schedules the DAG on `cores` (each package takes its own core count, at most `cores`):
/// dependencies first, longest-ready-first. Returns the wall time.
pub fn makespan(
    order: &[String],
    facts: &BTreeMap<String, PackageFacts>,
    durations: &BTreeMap<String, u64>,
    cores: u64,
) -> u64 {
    let cores = cores.max(1);
    let mut finish: BTreeMap<&str, u64> = BTreeMap::new();
    // Free times of each core slot.
    let mut slots: Vec<u64> = vec![0; cores.min(4096) as usize];
    for name in order {
        let Some(f) = facts.get(name) else { continue };
        let ready = f.deps.iter().filter_map(|d| finish.get(d.as_str()).copied()).max().unwrap_or(0);
        let need = (f.cores.clamp(1, cores)) as usize;
        slots.sort();
        // The package starts when it is ready and `need` slots are free.
        let start = ready.max(slots[need - 1]);
        let end = start + durations.get(name).copied().unwrap_or(0);
        for s in slots.iter_mut().take(need) {
            *s = end;
        }
        finish.insert(name, end);
    }
    finish.values().copied().max().unwrap_or(0)
}

/// The whole estimate.
pub fn estimate(
    order: &[String],
    facts: &BTreeMap<String, PackageFacts>,
    cores: u64,
    target: Target,
    network_overhead_ms: u64,
    build_overhead_ms: u64,
) -> BuildEstimation {
    let packages: Vec<PackageEstimate> =
        order.iter().filter_map(|n| facts.get(n)).map(|f| package_estimate(f, target)).collect();
    let durations: BTreeMap<String, u64> = packages.iter().map(|p| (p.package.clone(), p.duration_ms)).collect();
    let wall = makespan(order, facts, &durations, cores);
    let sum: u64 = durations.values().sum();
    let total = wall + network_overhead_ms + build_overhead_ms;
    let weight: f64 = packages.iter().map(|p| p.duration_ms.max(1) as f64).sum();
    let confidence = if weight > 0.0 {
        packages.iter().map(|p| p.confidence * p.duration_ms.max(1) as f64).sum::<f64>() / weight
    } else {
        0.2
    };
    let spread = 1.0 - confidence;
    BuildEstimation {
        total_duration_ms: total,
        parallelization_factor: if wall > 0 { sum as f64 / wall as f64 } else { 1.0 },
        network_overhead_ms,
        build_overhead_ms,
        confidence,
        low_ms: (total as f64 * (1.0 - spread)).round() as u64,
        high_ms: (total as f64 * (1.0 + spread)).round() as u64 + 50,
        cores,
        package_estimates: packages,
    }
}

/// Estimates as a service of the node's builds: from its history tables and the pool view.
mod service {
    use std::collections::BTreeMap;

    use super::super::{estimate, placement, project, runner, runner::BuildRequest, BuildError, Builds};
    use crate::cas;
    use crate::wire::NodeId;

    impl Builds {
        /// Estimates a build without running anything (plan §9).
        pub async fn estimate(&self, mut req: BuildRequest) -> Result<estimate::BuildEstimation, BuildError> {
            super::super::check_request_paths(&req)?;
            req.project.order = req.project.recheck("buildnet.toml")?;
            let cfg = self.resolve_request(&req).await?;
            let status = self.node.status().await.map_err(|_| BuildError::Unavailable)?;
            let peers = self.pool.peers().await;
            // Every node's figures, to scale recorded runs by; the node each ran on may be offline now.
            let mut figures: BTreeMap<String, estimate::Target> = BTreeMap::new();
            figures.insert(self.node_id.to_string(), target_of(&status.benchmarks));
            let mut cores_by_node: BTreeMap<NodeId, u64> = BTreeMap::new();
            cores_by_node.insert(self.node_id.clone(), status.resources.cpu.offered as u64);
            let mut links = Vec::new();
            for p in &peers {
                if let Some(a) = &p.advert {
                    figures.insert(p.node_id.to_string(), target_of(&a.benchmarks));
                    if crate::pool::is_usable(p) && a.accept_remote_builds && !req.local_only {
                        cores_by_node.insert(p.node_id.clone(), a.resources.cpu.offered as u64);
                        let measured = status.benchmarks.network_to(p.node_id.as_str());
                        links.push((
                            measured.map_or(p.latency_ms.unwrap_or(1.0), |n| n.latency_ms),
                            measured.map_or(ASSUMED_MBPS, |n| n.upload_mbps.min(n.download_mbps)),
                        ));
                    }
                }
            }
            // The cores the build may use: the configuration's nodes and caps, else the pool.
            let caps = cfg.as_ref().and_then(|c| c.node_caps(&self.node_id));
            let mut cores: u64 = cores_by_node
                .iter()
                .filter(|(n, _)| caps.as_ref().is_none_or(|c| c.contains_key(*n)))
                .map(|(n, c)| (*c).min(caps.as_ref().and_then(|m| m.get(n).copied()).unwrap_or(u64::MAX)))
                .sum();
            if let Some(total) = cfg.as_ref().map(|c| u64::from(c.resources.cpu.cores)).filter(|t| *t > 0) {
                cores = cores.min(total);
            }
            // Packages go to the node placement ranks first, so that node's figures are the target.
            let target = cores_by_node
                .keys()
                .filter(|n| caps.as_ref().is_none_or(|c| c.contains_key(*n)))
                .filter_map(|n| {
                    figures.get(n.as_str()).map(|f| (placement::placement_rank(f.cpu_score, *n == self.node_id), *f))
                })
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, f)| f)
                .unwrap_or_default();
            let tools = status.resources.tool_versions();

            let mut facts: BTreeMap<String, estimate::PackageFacts> = BTreeMap::new();
            let mut outputs: BTreeMap<String, Vec<cas::FileRef>> = BTreeMap::new();
            let mut input_total = 0u64;
            let mut siblings: BTreeMap<String, Option<estimate::RecordedRun>> = BTreeMap::new();
            for name in &req.project.order {
                let Some(spec) = req.project.manifest.packages.get(name) else { continue };
                let mut files = BTreeMap::new();
                let mut input_bytes = 0;
                for path in req.project.inputs.get(name).map(Vec::as_slice).unwrap_or_default() {
                    if let Some(f) = req.files.get(path) {
                        input_bytes += f.size;
                        files.insert(path.clone(), f.clone());
                    }
                }
                input_total += input_bytes;
                // Cached when every dependency is cached (their outputs are then known) and so is it.
                let mut deps_known = true;
                let mut stack = spec.deps.clone();
                let mut seen = std::collections::BTreeSet::new();
                while let Some(d) = stack.pop() {
                    if !seen.insert(d.clone()) {
                        continue;
                    }
                    match outputs.get(&d) {
                        Some(outs) => outs.iter().for_each(|f| {
                            files.insert(f.path.clone(), f.clone());
                        }),
                        None => deps_known = false,
                    }
                    stack.extend(req.project.manifest.packages.get(&d).map(|p| p.deps.clone()).unwrap_or_default());
                }
                let requirements: Vec<project::Requirement> =
                    spec.tools.iter().chain(&spec.runtimes).cloned().collect();
                let mut cached = false;
                if deps_known && !req.force {
                    if let (Some(versions), Ok(task)) = (
                        placement::tool_versions(&requirements, &tools),
                        runner::make_task("estimate", name, spec, files),
                    ) {
                        if let Some(outs) = self.cache.outputs(&task.action_key(&versions)).await {
                            outputs.insert(name.clone(), outs);
                            cached = true;
                        }
                    }
                }
                let mut history = self.history_of(name, &figures).await?;
                // An expansion never built is estimated from its siblings' runs.
                if let (true, Some((table, _))) = (history.is_empty(), project::expansion_of(name)) {
                    if !siblings.contains_key(table) {
                        let runs = self.sibling_history(table, &figures).await?;
                        siblings.insert(table.to_string(), estimate::sibling_run(&runs));
                    }
                    history.extend(siblings.get(table).copied().flatten());
                }
                facts.insert(
                    name.clone(),
                    estimate::PackageFacts {
                        name: name.clone(),
                        deps: spec.deps.clone(),
                        cores: u64::from(spec.cores.unwrap_or(1)),
                        history,
                        cached,
                        input_bytes,
                    },
                );
            }
            // Work beyond this node's cores goes to peers: their share of the inputs crosses the
            // mesh at the measured bandwidth (an assumed 800 Mbit/s where no network benchmark has
            // run), plus two round trips per package.
            let local = status.resources.cpu.offered as u64;
            let remote_share = if cores > local { (cores - local) as f64 / cores as f64 } else { 0.0 };
            let running = facts.values().filter(|f| !f.cached).count() as f64;
            let n = links.len().max(1) as f64;
            let rtt = links.iter().map(|l| l.0).sum::<f64>() / n;
            let mbps = if links.is_empty() { ASSUMED_MBPS } else { links.iter().map(|l| l.1).sum::<f64>() / n };
            let transfer_ms = input_total as f64 * 8.0 / (mbps.max(1.0) * 1e3);
            let network = (remote_share * (transfer_ms + running * 2.0 * rtt)).round() as u64;
            let overhead = self.build_overhead(&req.project.order).await?;
            Ok(estimate::estimate(&req.project.order, &facts, cores.max(1), target, network, overhead))
        }

        /// Median time of the last five successful builds of these packages outside the packages
        /// themselves: build duration less the span from the first package's start to the last's end.
        async fn build_overhead(&self, packages: &[String]) -> Result<u64, BuildError> {
            let names = serde_json::to_string(packages).unwrap_or_default();
            let mut spans: Vec<i64> = self
                .store
                .run(move |c| {
                    let mut stmt = c.prepare_cached(
                        "SELECT b.duration_ms - (MAX(p.completed_at) - MIN(p.started_at)) FROM builds b
                         JOIN build_packages p ON p.build_id = b.id
                         WHERE b.status = 'succeeded' AND b.duration_ms IS NOT NULL AND p.started_at IS NOT NULL
                           AND p.package_name IN (SELECT value FROM json_each(?1))
                         GROUP BY b.id ORDER BY b.started_at DESC LIMIT 5",
                    )?;
                    let rows = stmt.query_map([names], |r| r.get::<_, Option<i64>>(0))?;
                    Ok(rows.filter_map(|r| r.ok().flatten()).collect())
                })
                .await?;
            spans.sort();
            Ok(spans.get(spans.len() / 2).copied().unwrap_or(0).max(0) as u64)
        }

        /// Estimates a from-scratch build (cache ignored: a configuration matters most then) of the
        /// project built here most recently, under configuration `config`: what the configuration
        /// pages show. `None` when nothing has been built here yet.
        pub async fn estimate_latest(
            &self,
            config: &str,
        ) -> Result<Option<(String, Vec<String>, estimate::BuildEstimation)>, BuildError> {
            let Some((build_id, mut req)) = self.latest_build_request().await? else { return Ok(None) };
            req.config = Some(config.to_string());
            req.template = None;
            req.inline_config = None;
            req.local_only = false;
            req.force = true;
            let packages = req.project.order.clone();
            Ok(Some((build_id, packages, self.estimate(req).await?)))
        }

        /// A from-scratch build of the project built here most recently, under the configuration
        /// `config` (checked like a saved one when estimated): what `POST /api/build/estimate`
        /// estimates for plan §13.1's body, a bare configuration. Refused, naming `project`, when
        /// nothing has been built here yet.
        pub async fn latest_request(
            &self,
            config: crate::builds::config::BuildConfiguration,
        ) -> Result<BuildRequest, BuildError> {
            let Some((_, mut req)) = self.latest_build_request().await? else {
                return Err(BuildError::Invalid {
                    field: "project".into(),
                    message: "nothing has been built on this node yet: name a project to estimate".into(),
                });
            };
            req.config = None;
            req.template = None;
            req.inline_config = Some(config);
            req.local_only = false;
            req.force = true;
            Ok(req)
        }

        /// The request of the build started here most recently, with its id.
        async fn latest_build_request(&self) -> Result<Option<(String, BuildRequest)>, BuildError> {
            let latest: Option<(String, String)> = self
                .store
                .run(|c| {
                    let mut stmt = c.prepare(
                        "SELECT r.build_id, r.request FROM build_requests r JOIN builds b ON b.id = r.build_id
                         ORDER BY b.started_at DESC LIMIT 1",
                    )?;
                    let mut rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                    Ok(rows.next().transpose()?)
                })
                .await?;
            let Some((build_id, text)) = latest else { return Ok(None) };
            Ok(serde_json::from_str::<BuildRequest>(&text).ok().map(|req| (build_id, req)))
        }

        /// A package's real (not cached) successful runs, newest first, with the figures of the node
        /// each ran on.
        async fn history_of(
            &self,
            package: &str,
            figures: &BTreeMap<String, estimate::Target>,
        ) -> Result<Vec<estimate::RecordedRun>, BuildError> {
            self.recorded_runs(package, false, figures).await
        }

        /// Recent real successful runs of the expansions of pattern package `table`.
        async fn sibling_history(
            &self,
            table: &str,
            figures: &BTreeMap<String, estimate::Target>,
        ) -> Result<Vec<estimate::RecordedRun>, BuildError> {
            self.recorded_runs(&format!("{table}["), true, figures).await
        }

        /// Runs of the package `name`, or with `prefix`, of every package whose name starts so.
        async fn recorded_runs(
            &self,
            name: &str,
            prefix: bool,
            figures: &BTreeMap<String, estimate::Target>,
        ) -> Result<Vec<estimate::RecordedRun>, BuildError> {
            let name = name.to_string();
            // An empty prefix starts every name: up to the last character there is.
            let until = prefix.then(|| after_prefix(&name).unwrap_or_else(|| char::MAX.to_string()));
            let rows: Vec<(i64, Option<String>, Option<i64>)> = self
                .store
                .run(move |c| {
                    let row = |r: &rusqlite::Row| -> rusqlite::Result<(i64, Option<String>, Option<i64>)> {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    };
                    let rows: rusqlite::Result<Vec<_>> = match until {
                        Some(until) => c.prepare_cached(PREFIXED)?.query_map([name, until], row)?.collect(),
                        None => c.prepare_cached(NAMED)?.query_map([name], row)?.collect(),
                    };
                    Ok(rows?)
                })
                .await?;
            Ok(rows
                .into_iter()
                .map(|(ms, node, cpu)| {
                    let f = node.and_then(|n| figures.get(&n).copied()).unwrap_or_default();
                    estimate::RecordedRun {
                        duration_ms: ms.max(0) as u64,
                        cpu_score: f.cpu_score,
                        storage_mbps: f.storage_mbps,
                        cpu_ms: cpu.unwrap_or(0).max(0) as u64,
                    }
                })
                .collect())
        }
    }

    /// A package's recent real runs (`recorded_runs`), asked for every package of a build before
    /// it starts, so each form is prepared once and reads the index on (package_name,
    /// started_at): a pattern's siblings are the range of names from its prefix up to the next
    /// string after every name it starts (`after_prefix`), not an expression that would make
    /// SQLite read every row.
    pub(super) const PREFIXED: &str = "SELECT p.duration_ms, p.assigned_node, r.cpu_ms FROM build_packages p
         JOIN build_package_results r ON r.build_id = p.build_id AND r.package_name = p.package_name
         WHERE p.package_name >= ?1 AND p.package_name < ?2
           AND p.status = 'succeeded' AND r.cache_hit = 0 AND p.duration_ms IS NOT NULL
         ORDER BY p.started_at DESC LIMIT 200";
    /// One package's runs. The name is `+?1`: compared bare, with the ORDER BY the index serves,
    /// SQLite marks the statement to be re-prepared whenever a new name is bound (6 % of the
    /// daemon's CPU in 200-package builds); the unary plus keeps the same plan without that.
    pub(super) const NAMED: &str = "SELECT p.duration_ms, p.assigned_node, r.cpu_ms FROM build_packages p
         JOIN build_package_results r ON r.build_id = p.build_id AND r.package_name = p.package_name
         WHERE p.package_name = +?1
           AND p.status = 'succeeded' AND r.cache_hit = 0 AND p.duration_ms IS NOT NULL
         ORDER BY p.started_at DESC LIMIT 10";

    /// The smallest string greater than every string that starts with `prefix` (its last
    /// character moved up by one), as SQLite compares text; `None` for an empty prefix.
    pub(super) fn after_prefix(prefix: &str) -> Option<String> {
        let last = prefix.chars().last()?;
        let next = (last as u32 + 1..=char::MAX as u32).find_map(char::from_u32)?;
        Some(format!("{}{next}", &prefix[..prefix.len() - last.len_utf8()]))
    }

    /// Link speed assumed where no network benchmark has measured one (Mbit/s).
    const ASSUMED_MBPS: f64 = 800.0;

    /// The figures the estimator scales by: single-core score and the fastest volume's reads.
    fn target_of(b: &crate::bench::BenchmarkScores) -> estimate::Target {
        estimate::Target {
            cpu_score: b.cpu_single().unwrap_or(0.0),
            storage_mbps: b.storage.iter().map(|s| s.seq_read_mbps).fold(0.0, f64::max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(name: &str, deps: &[&str], history: &[u64], cached: bool) -> PackageFacts {
        PackageFacts {
            name: name.into(),
            deps: deps.iter().map(|d| d.to_string()).collect(),
            cores: 1,
            history: history.iter().map(|&ms| RecordedRun { duration_ms: ms, ..Default::default() }).collect(),
            cached,
            input_bytes: 0,
        }
    }

    #[test]
    fn the_dag_is_scheduled_over_the_cores() {
        let f: BTreeMap<String, PackageFacts> = [
            facts("a", &[], &[100], false),
            facts("b", &[], &[100], false),
            facts("c", &[], &[100], false),
            facts("link", &["a", "b", "c"], &[50], false),
        ]
        .into_iter()
        .map(|f| (f.name.clone(), f))
        .collect();
        let order: Vec<String> = ["a", "b", "c", "link"].iter().map(|s| s.to_string()).collect();
        let one = estimate(&order, &f, 1, Target::default(), 0, 0);
        assert_eq!(one.total_duration_ms, 350);
        let three = estimate(&order, &f, 3, Target::default(), 0, 0);
        assert_eq!(three.total_duration_ms, 150, "three compiles in parallel, then the link");
        assert!((three.parallelization_factor - 350.0 / 150.0).abs() < 1e-9);
    }

    #[test]
    fn history_cache_and_speed_shape_a_package() {
        let none = Target::default();
        let cached = package_estimate(&facts("x", &[], &[500], true), none);
        assert_eq!((cached.duration_ms, cached.cached), (0, true));
        let learned = package_estimate(&facts("x", &[], &[100, 120, 90, 5000, 110], false), none);
        assert_eq!(learned.duration_ms, 110, "the median resists an outlier");
        assert!(learned.confidence > 0.8);
        let fresh = package_estimate(&PackageFacts { input_bytes: 200_000, ..facts("x", &[], &[], false) }, none);
        assert_eq!(fresh.duration_ms, 4_020);
        let fast = Target { cpu_score: REFERENCE_SCORE * 2.0, storage_mbps: 0.0 };
        let on_fast = package_estimate(&PackageFacts { input_bytes: 200_000, ..facts("x", &[], &[], false) }, fast);
        assert_eq!(on_fast.duration_ms, 2_020, "a node twice the reference score halves the prior");
        assert!(fresh.confidence < 0.3);
        let mut slow_history = facts("x", &[], &[], false);
        slow_history.history = vec![RecordedRun { duration_ms: 200, cpu_score: 100.0, storage_mbps: 0.0, cpu_ms: 380 }];
        let faster_target = package_estimate(&slow_history, Target { cpu_score: 200.0, storage_mbps: 0.0 });
        assert_eq!(faster_target.duration_ms, 100, "a node twice as fast halves the time");
        assert!((faster_target.factors.cpu_factor - 0.5).abs() < 1e-9);
        assert!((faster_target.factors.parallel_speedup - 1.9).abs() < 1e-9, "380 ms of CPU in 200 ms: 1.9 cores");
        // 100 MB of inputs read at 100 MB/s took 1 s of a 1.5 s run; storage 4× as fast makes
        // that 0.25 s, the CPU part stays.
        let io_heavy = PackageFacts {
            input_bytes: 100_000_000,
            history: vec![RecordedRun { duration_ms: 1500, cpu_score: 100.0, storage_mbps: 100.0, cpu_ms: 0 }],
            ..facts("x", &[], &[], false)
        };
        let e = package_estimate(&io_heavy, Target { cpu_score: 100.0, storage_mbps: 400.0 });
        assert_eq!(e.duration_ms, 750);
        assert!((e.factors.storage_factor - 0.25).abs() < 1e-9);
    }

    #[test]
    fn an_expansion_without_history_takes_its_siblings_median() {
        let runs: Vec<RecordedRun> =
            [40, 5000, 60, 50, 55].iter().map(|&ms| RecordedRun { duration_ms: ms, ..Default::default() }).collect();
        let median = sibling_run(&runs).expect("a run");
        assert_eq!(median.duration_ms, 55);
        assert_eq!(sibling_run(&[]), None);
        let fresh = PackageFacts { history: vec![median], ..facts("thumbs[new.jpg]", &[], &[], false) };
        let e = package_estimate(&fresh, Target::default());
        assert_eq!((e.duration_ms, e.samples), (55, 1));
    }

    #[test]
    fn a_prefix_range_holds_exactly_the_names_that_start_with_it() {
        let until = service::after_prefix("thumbs[").expect("a bound");
        assert_eq!(until, "thumbs\\");
        let within = |name: &str| name >= "thumbs[" && name < until.as_str();
        assert!(within("thumbs[a.jpg]") && within("thumbs[") && within("thumbs[\u{10FFFF}]"));
        assert!(!within("thumbs") && !within("thumbsZ") && !within("thumbs\\x") && !within("thumbt["));
        assert_eq!(service::after_prefix("é").as_deref(), Some("ê"));
        assert_eq!(service::after_prefix(""), None);
    }

    #[test]
    fn a_packages_runs_are_read_through_the_index_by_one_statement_prepared_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = crate::store::open(&dir.path().join("db"), crate::store::Durability::Normal).expect("open");
        conn.execute_batch(
            "INSERT INTO builds (id, status, started_at, triggered_by) VALUES ('b', 'succeeded', 1, 't');
             INSERT INTO build_packages (id, build_id, package_name, status, started_at, duration_ms)
               VALUES ('b/p1', 'b', 'p1', 'succeeded', 1, 5), ('b/p2', 'b', 'p2', 'succeeded', 1, 7);
             INSERT INTO build_package_results (build_id, package_name, cache_hit) VALUES ('b', 'p1', 0), ('b', 'p2', 0);",
        )
        .expect("rows");
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", service::NAMED))
            .and_then(|mut s| s.query_map(["p1"], |r| r.get(3))?.collect())
            .expect("plan");
        assert!(plan[0].contains("USING INDEX idx_build_packages_name"), "{plan:?}");
        assert!(!plan.iter().any(|step| step.contains("TEMP B-TREE")), "the index gives the order: {plan:?}");
        for (name, ms) in [("p1", 5), ("p2", 7), ("p1", 5)] {
            let mut stmt = conn.prepare_cached(service::NAMED).expect("prepare");
            let runs: Vec<i64> = stmt.query_map([name], |r| r.get(0)).and_then(|r| r.collect()).expect("runs");
            assert_eq!(runs, [ms]);
            assert_eq!(stmt.get_status(rusqlite::StatementStatus::RePrepare), 0, "not re-prepared for {name}");
        }
    }

    #[test]
    fn format_human_reads_like_the_plan() {
        let e = estimate(
            &["a".to_string()],
            &[("a".to_string(), facts("a", &[], &[1500], false))].into_iter().collect(),
            2,
            Target::default(),
            12,
            0,
        );
        let text = e.format_human();
        assert!(text.starts_with("Estimated time: ~1.5 seconds (medium confidence"), "{text}");
        assert!(text.contains("Network overhead: 12ms"));
    }
}
