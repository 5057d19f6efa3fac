//! Builds: a project's packages as a DAG, run where the configuration allows, with inputs and
//! outputs moved by content digest and unchanged work served from the cache.
//!
//! [`Builds`] is the node's front door: it checks a request, starts a [`runner::BuildActor`],
//! and answers status, cancel and history.

pub mod config;
pub mod estimate;
pub mod history;
pub mod placement;
pub mod project;
pub mod runner;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use rand::RngCore;

use crate::cas::{self, Cas};
use crate::events::EventBus;
use crate::ledger::LedgerHandle;
use crate::mesh::Workers;
use crate::node::NodeHandle;
use crate::store::{StoreError, StoreHandle};
use crate::wire::{self, NodeId};
use history::BuildSummary;
use runner::{BuildActor, BuildContext, BuildRequest, BuildStatus, Registry};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{}", list(.0))]
    InvalidConfig(Vec<config::Problem>),
    #[error("the pool cannot give this configuration what it asks: {}", list(.0))]
    Insufficient(Vec<config::Problem>),
    #[error("a configuration named '{0}' exists already")]
    Duplicate(String),
    #[error(transparent)]
    Project(#[from] project::ProjectError),
    #[error("files: {count} input blob(s) are not on this node (first: {first}); upload them to /api/blobs first")]
    MissingBlobs { count: usize, first: String },
    #[error("files: '{0}' has no entry")]
    MissingFile(String),
    #[error("no build '{0}'")]
    NotFound(String),
    #[error("no configuration or template named '{0}'")]
    NoConfig(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the node is not running")]
    Unavailable,
}

fn list(problems: &[config::Problem]) -> String {
    problems.iter().map(|p| format!("{}: {}", p.field, p.message)).collect::<Vec<_>>().join("; ")
}

/// A line of the configuration list.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ConfigSummary {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub cores: u32,
    pub memory_gb: f64,
    pub nodes: Vec<String>,
    pub updated_at_ms: u64,
}

/// The node's builds.
#[derive(Clone)]
pub struct Builds {
    node_id: NodeId,
    node: NodeHandle,
    workers: Workers,
    ledger: LedgerHandle,
    store: StoreHandle,
    events: EventBus,
    pub cas: Cas,
    registry: Registry,
    pool: crate::pool::PoolHandle,
}

impl Builds {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node_id: NodeId,
        node: NodeHandle,
        workers: Workers,
        pool: crate::pool::PoolHandle,
        ledger: LedgerHandle,
        store: StoreHandle,
        events: EventBus,
        cas: Cas,
    ) -> Builds {
        Builds {
            node_id,
            node,
            workers,
            pool,
            ledger,
            store,
            events,
            cas,
            registry: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Checks a request and starts the build; returns its id.
    pub async fn start(&self, mut req: BuildRequest, triggered_by: &str) -> Result<String, BuildError> {
        req.project.order = req.project.recheck("buildnet.toml")?;
        for files in req.project.inputs.values() {
            for f in files {
                if !req.files.contains_key(f) {
                    return Err(BuildError::MissingFile(f.clone()));
                }
            }
        }
        let digests: Vec<String> = req.files.values().map(|f| f.digest.clone()).collect();
        let missing = self.cas.missing(&digests);
        if let Some(first) = missing.first() {
            return Err(BuildError::MissingBlobs { count: missing.len(), first: first.clone() });
        }
        let cfg = self.resolve(req.config.as_deref(), req.template.as_deref()).await?;
        let limits = match &cfg {
            Some(c) => runner::Limits::new(
                c.node_caps(&self.node_id),
                (c.resources.cpu.cores > 0).then_some(u64::from(c.resources.cpu.cores)),
                c.volumes(&self.node_id),
            ),
            None => runner::Limits::default(),
        };
        let status = self.node.status().await.map_err(|_| BuildError::Unavailable)?;
        let tools = status.resources.tool_versions();
        let mut raw = [0u8; 6];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let id = format!("b_{}", wire::hex(&raw));
        let ctx = BuildContext {
            node_id: self.node_id.clone(),
            node: self.node.clone(),
            ledger: self.ledger.clone(),
            store: self.store.clone(),
            events: self.events.clone(),
            cas: self.cas.clone(),
            tools,
            workers: self.workers.clone(),
            pool: self.pool.clone(),
            limits: Arc::new(limits),
        };
        // Kept so the build can be run again from the pages or the API.
        let (saved_id, saved) =
            (id.clone(), serde_json::to_string(&req).map_err(|e| StoreError::Corrupt(e.to_string()))?);
        self.store
            .run(move |c| {
                c.execute(
                    "INSERT INTO build_requests (build_id, request) VALUES (?1, ?2)",
                    rusqlite::params![saved_id, saved],
                )?;
                Ok(())
            })
            .await?;
        let actor = BuildActor::new(ctx, req, id.clone(), triggered_by.to_string(), self.registry.clone());
        let addr = actor.start();
        if let Ok(mut r) = self.registry.lock() {
            r.insert(id.clone(), addr);
        }
        Ok(id)
    }

    /// Starts a new build with the same request as an earlier one (its blobs are still here).
    pub async fn rerun(
        &self,
        id: &str,
        force: bool,
        config: Option<String>,
        triggered_by: &str,
    ) -> Result<String, BuildError> {
        let text =
            self.store.optional_text("SELECT request FROM build_requests WHERE build_id = ?1", id.to_string()).await?;
        let mut req: BuildRequest =
            text.and_then(|t| serde_json::from_str(&t).ok()).ok_or_else(|| BuildError::NotFound(id.to_string()))?;
        req.force = force;
        if config.is_some() {
            req.config = config;
            req.template = None;
        }
        self.start(req, triggered_by).await
    }

    fn live(&self, id: &str) -> Option<Addr<BuildActor>> {
        self.registry.lock().ok()?.get(id).cloned()
    }

    pub async fn status(&self, id: &str) -> Result<BuildStatus, BuildError> {
        if let Some(addr) = self.live(id) {
            if let Ok(status) = addr.send(runner::GetStatus).await {
                return Ok(status);
            }
        }
        history::load(&self.store, id).await?.ok_or_else(|| BuildError::NotFound(id.to_string()))
    }

    /// Cancels a running build; a finished one is left as it is.
    pub async fn cancel(&self, id: &str) -> Result<BuildStatus, BuildError> {
        if let Some(addr) = self.live(id) {
            let _ = addr.send(runner::Cancel).await;
        }
        self.status(id).await
    }

    pub async fn history(&self, limit: usize, status: Option<String>) -> Result<Vec<BuildSummary>, BuildError> {
        Ok(history::history(&self.store, limit, status).await?)
    }

    /// Checks a configuration on its own and against the pool.
    async fn check(&self, cfg: &config::BuildConfiguration) -> Result<(), BuildError> {
        let problems = cfg.validate();
        if !problems.is_empty() {
            return Err(BuildError::InvalidConfig(problems));
        }
        let pool = self.pool.view().await.map_err(|_| BuildError::Unavailable)?;
        let short = cfg.check_against(&pool, &self.node_id);
        if !short.is_empty() {
            return Err(BuildError::Insufficient(short));
        }
        Ok(())
    }

    /// Saves a new configuration; returns its id.
    pub async fn create_config(
        &self,
        mut cfg: config::BuildConfiguration,
        by: &str,
        template: bool,
    ) -> Result<String, BuildError> {
        self.check(&cfg).await?;
        let id = cfg.id.clone().filter(|i| !i.trim().is_empty()).unwrap_or_else(|| {
            let mut raw = [0u8; 6];
            rand::rngs::OsRng.fill_bytes(&mut raw);
            format!("cfg_{}", wire::hex(&raw))
        });
        cfg.id = Some(id.clone());
        cfg.created_by.get_or_insert_with(|| by.to_string());
        let (row, name, now) = (cfg.clone(), cfg.name.clone(), wire::now_ms() as i64);
        let inserted = self
            .store
            .run(move |c| {
                let json = serde_json::to_string(&row).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let n = c.execute(
                    "INSERT OR IGNORE INTO configurations (id, name, description, config_data, created_by, created_at, updated_at, is_template, template_category)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8)",
                    rusqlite::params![row.id, row.name, row.description, json, row.created_by, now, template, template.then_some("custom")],
                )?;
                Ok(n)
            })
            .await?;
        if inserted == 0 {
            return Err(BuildError::Duplicate(name));
        }
        let kind = crate::wire::LedgerEntryType::ConfigCreated;
        let _ = self
            .ledger
            .append(
                kind,
                serde_json::json!({ "config_id": id, "config_name": name, "created_by": by, "template": template }),
            )
            .await;
        Ok(id)
    }

    /// A configuration (or custom template) by id or name.
    pub async fn config(&self, key: &str) -> Result<config::BuildConfiguration, BuildError> {
        let data = self
            .store
            .optional_text("SELECT config_data FROM configurations WHERE id = ?1 OR name = ?1", key.to_string())
            .await?;
        data.and_then(|d| serde_json::from_str(&d).ok()).ok_or_else(|| BuildError::NoConfig(key.to_string()))
    }

    /// Stored configurations (or custom templates): JSON, last change, description.
    async fn config_rows(&self, templates: bool) -> Result<Vec<(String, i64, Option<String>)>, BuildError> {
        Ok(self
            .store
            .run(move |c| {
                let mut stmt = c.prepare(
                    "SELECT config_data, updated_at, description FROM configurations WHERE is_template = ?1 ORDER BY name",
                )?;
                let rows = stmt.query_map([templates], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await?)
    }

    /// Every saved configuration (templates are listed apart).
    pub async fn configs(&self) -> Result<Vec<ConfigSummary>, BuildError> {
        Ok(self
            .config_rows(false)
            .await?
            .into_iter()
            .filter_map(|(data, updated, _)| {
                let cfg: config::BuildConfiguration = serde_json::from_str(&data).ok()?;
                Some(ConfigSummary {
                    id: cfg.id.clone().unwrap_or_default(),
                    name: cfg.name.clone(),
                    description: cfg.description.clone(),
                    cores: cfg.resources.cpu.cores,
                    memory_gb: cfg.resources.memory.gb,
                    nodes: cfg.resources.cpu.node_allocations.iter().flatten().map(|a| a.node_id.clone()).collect(),
                    updated_at_ms: updated as u64,
                })
            })
            .collect())
    }

    /// Replaces a configuration with `patch` merged into it (JSON merge: objects merge, the rest
    /// replaces).
    pub async fn update_config(
        &self,
        key: &str,
        patch: serde_json::Value,
        by: &str,
    ) -> Result<config::BuildConfiguration, BuildError> {
        let current = self.config(key).await?;
        let mut doc = serde_json::to_value(&current).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        merge(&mut doc, patch);
        let mut cfg: config::BuildConfiguration = serde_json::from_value(doc).map_err(|e| {
            BuildError::InvalidConfig(vec![config::Problem { field: "(body)".into(), message: e.to_string() }])
        })?;
        cfg.id = current.id.clone();
        self.check(&cfg).await?;
        let (row, now) = (cfg.clone(), wire::now_ms() as i64);
        self.store
            .run(move |c| {
                let json = serde_json::to_string(&row).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                c.execute(
                    "UPDATE configurations SET name = ?2, description = ?3, config_data = ?4, updated_at = ?5 WHERE id = ?1",
                    rusqlite::params![row.id, row.name, row.description, json, now],
                )?;
                Ok(())
            })
            .await?;
        let _ = self
            .ledger
            .append(
                crate::wire::LedgerEntryType::ConfigModified,
                serde_json::json!({ "config_id": cfg.id, "config_name": cfg.name, "modified_by": by }),
            )
            .await;
        Ok(cfg)
    }

    pub async fn delete_config(&self, key: &str, by: &str) -> Result<(), BuildError> {
        let cfg = self.config(key).await?;
        let id = cfg.id.clone().unwrap_or_default();
        let gone = id.clone();
        self.store.run(move |c| Ok(c.execute("DELETE FROM configurations WHERE id = ?1", [gone])?)).await?;
        let _ = self
            .ledger
            .append(
                crate::wire::LedgerEntryType::ConfigModified,
                serde_json::json!({ "config_id": id, "config_name": cfg.name, "deleted": true, "modified_by": by }),
            )
            .await;
        Ok(())
    }

    /// System templates, then custom ones.
    pub async fn templates(&self) -> Result<Vec<config::ConfigTemplate>, BuildError> {
        let mut list = config::system_templates();
        for (data, _, description) in self.config_rows(true).await? {
            if let Ok(cfg) = serde_json::from_str::<config::BuildConfiguration>(&data) {
                list.push(config::ConfigTemplate {
                    id: cfg.id.clone().unwrap_or_default(),
                    name: cfg.name.clone(),
                    description: description.unwrap_or_default(),
                    icon: "star".into(),
                    category: "custom".into(),
                    config: cfg,
                    variables: vec![],
                    use_cases: vec![],
                    system: false,
                });
            }
        }
        Ok(list)
    }

    pub async fn template(&self, key: &str) -> Result<config::ConfigTemplate, BuildError> {
        self.templates()
            .await?
            .into_iter()
            .find(|t| t.id == key || t.name == key)
            .ok_or_else(|| BuildError::NoConfig(key.to_string()))
    }

    /// Saves a configuration as a custom template.
    pub async fn save_template(
        &self,
        config_key: &str,
        name: &str,
        description: Option<String>,
        by: &str,
    ) -> Result<String, BuildError> {
        let mut cfg = self.config(config_key).await?;
        cfg.id = None;
        cfg.name = name.to_string();
        cfg.description = description;
        self.create_config(cfg, by, true).await
    }

    /// A new configuration from a template.
    pub async fn use_template(
        &self,
        template: &str,
        name: &str,
        values: &BTreeMap<String, String>,
        by: &str,
    ) -> Result<String, BuildError> {
        let t = self.template(template).await?;
        let cfg = t.instantiate(name, values).map_err(|p| BuildError::InvalidConfig(vec![p]))?;
        self.create_config(cfg, by, false).await
    }
}

impl Builds {
    /// Estimates a build without running anything (plan §9).
    pub async fn estimate(&self, mut req: BuildRequest) -> Result<estimate::BuildEstimation, BuildError> {
        req.project.order = req.project.recheck("buildnet.toml")?;
        let cfg = self.resolve(req.config.as_deref(), req.template.as_deref()).await?;
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
            let requirements: Vec<project::Requirement> = spec.tools.iter().chain(&spec.runtimes).cloned().collect();
            let mut cached = false;
            if deps_known && !req.force {
                if let (Some(versions), Ok(task)) =
                    (placement::tool_versions(&requirements, &tools), runner::make_task("estimate", name, spec, files))
                {
                    if let Some(outs) =
                        placement::cached_outputs(&self.store, &self.cas, &task.action_key(&versions)).await
                    {
                        outputs.insert(name.clone(), outs);
                        cached = true;
                    }
                }
            }
            let history = self.history_of(name, &figures).await?;
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
                let mut stmt = c.prepare(
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
        let Ok(mut req) = serde_json::from_str::<BuildRequest>(&text) else { return Ok(None) };
        req.config = Some(config.to_string());
        req.template = None;
        req.local_only = false;
        req.force = true;
        let packages = req.project.order.clone();
        Ok(Some((build_id, packages, self.estimate(req).await?)))
    }

    /// A package's real (not cached) successful runs, newest first, with the figures of the node
    /// each ran on.
    async fn history_of(
        &self,
        package: &str,
        figures: &BTreeMap<String, estimate::Target>,
    ) -> Result<Vec<estimate::RecordedRun>, BuildError> {
        let name = package.to_string();
        let rows: Vec<(i64, Option<String>, Option<i64>)> = self
            .store
            .run(move |c| {
                let mut stmt = c.prepare(
                    "SELECT p.duration_ms, p.assigned_node, r.cpu_ms FROM build_packages p
                     JOIN build_package_results r ON r.build_id = p.build_id AND r.package_name = p.package_name
                     WHERE p.package_name = ?1 AND p.status = 'succeeded' AND r.cache_hit = 0 AND p.duration_ms IS NOT NULL
                     ORDER BY p.started_at DESC LIMIT 10",
                )?;
                let rows = stmt.query_map([name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                Ok(rows.collect::<Result<_, _>>()?)
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

/// Link speed assumed where no network benchmark has measured one (Mbit/s).
const ASSUMED_MBPS: f64 = 800.0;

/// The figures the estimator scales by: single-core score and the fastest volume's reads.
fn target_of(b: &crate::bench::BenchmarkScores) -> estimate::Target {
    estimate::Target {
        cpu_score: b.cpu_single().unwrap_or(0.0),
        storage_mbps: b.storage.iter().map(|s| s.seq_read_mbps).fold(0.0, f64::max),
    }
}

/// RFC 7386 JSON merge.
fn merge(target: &mut serde_json::Value, patch: serde_json::Value) {
    match (target, patch) {
        (serde_json::Value::Object(t), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(&k);
                } else {
                    merge(t.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
        }
        (t, p) => *t = p,
    }
}

impl Builds {
    /// Resolves the configuration a build asks for (by name or id, or from a template).
    pub async fn resolve(
        &self,
        config: Option<&str>,
        template: Option<&str>,
    ) -> Result<Option<config::BuildConfiguration>, BuildError> {
        let cfg = match (config, template) {
            (Some(c), _) => Some(self.config(c).await?),
            (None, Some(t)) => {
                let t = self.template(t).await?;
                Some(t.instantiate(&t.name, &BTreeMap::new()).map_err(|p| BuildError::InvalidConfig(vec![p]))?)
            }
            (None, None) => None,
        };
        if let Some(c) = &cfg {
            self.check(c).await?;
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::start::{start, test_options};

    fn write(root: &std::path::Path, path: &str, text: &str) {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }

    async fn request(root: &std::path::Path, cas: &Cas, force: bool) -> BuildRequest {
        let project = project::load(root).expect("valid project");
        let mut files = BTreeMap::new();
        for path in project.inputs.values().flatten() {
            let (digest, size) = cas.put_file(&root.join(path)).expect("put");
            files.insert(path.clone(), cas::FileRef { path: path.clone(), digest, executable: false, size });
        }
        BuildRequest { project, files, force, local_only: true, config: None, template: None }
    }

    async fn wait(builds: &Builds, id: &str) -> BuildStatus {
        for _ in 0..500 {
            let s = builds.status(id).await.expect("status");
            if s.done() {
                return s;
            }
            actix_rt::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("build {id} did not finish");
    }

    #[actix::test]
    async fn a_dag_builds_caches_and_rebuilds_only_what_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("project");
        write(&root, "a.txt", "alpha");
        write(&root, "b.txt", "beta");
        write(
            &root,
            project::MANIFEST,
            r#"
[packages.a]
shell = "tr a-z A-Z < a.txt > a.out"
inputs = ["a.txt"]
outputs = ["a.out"]
[packages.b]
command = ["cp", "b.txt", "b.out"]
inputs = ["b.txt"]
outputs = ["b.out"]
[packages.both]
shell = "cat a.out b.out > both.out"
deps = ["a", "b"]
outputs = ["both.out"]
"#,
        );
        let started = start(test_options(&dir.path().join("data"))).await.expect("node");
        let builds = started.node.builds.clone();
        let cas = builds.cas.clone();

        let id = builds.start(request(&root, &cas, false).await, "test").await.expect("start");
        let s = wait(&builds, &id).await;
        assert_eq!(s.status, runner::BuildState::Succeeded, "{s:?}");
        let both = s.outputs().into_iter().find(|f| f.path == "both.out").expect("output");
        assert_eq!(cas.read(&both.digest).expect("blob"), b"ALPHAbeta");

        let again = wait(&builds, &builds.start(request(&root, &cas, false).await, "test").await.expect("start")).await;
        assert!(again.packages.iter().all(|p| p.cache_hit), "nothing changed, nothing runs: {again:?}");

        write(&root, "b.txt", "BETA2");
        let changed =
            wait(&builds, &builds.start(request(&root, &cas, false).await, "test").await.expect("start")).await;
        let hits: BTreeMap<String, bool> = changed.packages.iter().map(|p| (p.name.clone(), p.cache_hit)).collect();
        assert_eq!(hits, BTreeMap::from([("a".into(), true), ("b".into(), false), ("both".into(), false)]));

        let forced = wait(&builds, &builds.start(request(&root, &cas, true).await, "test").await.expect("start")).await;
        assert!(forced.packages.iter().all(|p| !p.cache_hit));

        let history = builds.history(10, None).await.expect("history");
        assert_eq!(history.len(), 4);
        let status = started.node.node.status().await.expect("status");
        let cpu = status.resource_status.iter().find(|r| r.key == "cpu").expect("cpu");
        assert_eq!(cpu.leased, 0, "every lease was released");
    }
}
