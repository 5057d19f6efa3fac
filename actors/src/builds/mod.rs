//! Builds: a project's packages as a DAG, run where the configuration allows, with inputs and
//! outputs moved by content digest and unchanged work served from the cache.
//!
//! [`Builds`] is the node's front door: it checks a request, starts a [`runner::BuildActor`],
//! and answers status, cancel and history.

pub mod cache;
mod catalog;
pub mod config;
pub mod estimate;
pub mod frontier;
pub mod history;
pub mod inputs;
pub mod placement;
pub mod project;
pub mod projects;
pub mod runner;
pub mod uptodate;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use rand::RngCore;

use crate::cas::Cas;
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
    #[error("files.{0}.digest: expected 64 lowercase hex digits (a BLAKE3 digest)")]
    BadDigest(String),
    #[error("files.{path}.size: declared {declared} bytes, but the blob of its digest holds {stored}")]
    WrongSize { path: String, declared: u64, stored: u64 },
    /// A path of the request that could leave the project or the sandbox.
    #[error(transparent)]
    Path(#[from] wire::BadPath),
    #[error("no build '{0}'")]
    NotFound(String),
    #[error("no configuration or template named '{0}'")]
    NoConfig(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the node is not running")]
    Unavailable,
    /// A field of a request that cannot be used, named.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("no project '{0}' is registered on this node")]
    NoProject(String),
    #[error("name: a project named '{0}' is registered already")]
    ProjectExists(String),
}

fn list(problems: &[config::Problem]) -> String {
    problems.iter().map(|p| format!("{}: {}", p.field, p.message)).collect::<Vec<_>>().join("; ")
}

/// Checks the paths of a request's `files` where it enters the node: each key and each
/// `FileRef.path` with [`wire::check_path`], and that the two agree (a task lays a file out at
/// its `path`; the key is what the input lists name). The manifest's outputs and globs and the
/// input lists are checked by [`project::Project::recheck`].
pub fn check_request_paths(req: &BuildRequest) -> Result<(), wire::BadPath> {
    for (key, f) in &req.files {
        wire::check_field(|| format!("files[{key:?}]"), key)?;
        wire::check_field(|| format!("files[{key:?}].path"), &f.path)?;
        if f.path != *key {
            return Err(wire::BadPath::new(format!("files[{key:?}].path"), &f.path, "differs from its key in files"));
        }
    }
    Ok(())
}

/// A line of the configuration list.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ConfigSummary {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    /// The most cores a build under it may use (`CpuSelection::cores_at_most`); 0 = all offered.
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
    cache: cache::ActionCache,
    registry: Registry,
    pool: crate::pool::PoolHandle,
    /// The node's data dir: no project may hold it or lie in it.
    data_dir: PathBuf,
    snapshots: projects::Snapshots,
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
        data_dir: PathBuf,
    ) -> Builds {
        let cache = cache::ActionCache::new(store.clone(), cas.clone());
        Builds {
            cache,
            node_id,
            node,
            workers,
            pool,
            ledger,
            store,
            events,
            cas,
            registry: Arc::new(Mutex::new(HashMap::new())),
            data_dir,
            snapshots: Default::default(),
        }
    }

    /// Checks a request and starts the build; returns its id.
    pub async fn start(&self, mut req: BuildRequest, triggered_by: &str) -> Result<String, BuildError> {
        check_request_paths(&req)?;
        req.project.order = req.project.recheck("buildnet.toml")?;
        for files in req.project.inputs.values() {
            for f in files {
                if !req.files.contains_key(f) {
                    return Err(BuildError::MissingFile(f.clone()));
                }
            }
        }
        // Not a digest at all: no upload can supply it, so it is not "missing".
        if let Some(path) = req.files.iter().find(|(_, f)| !crate::cas::valid_digest(&f.digest)).map(|(p, _)| p) {
            return Err(BuildError::BadDigest(path.clone()));
        }
        // Each blob is looked up once: missing, or there with the size its entry declares
        // (estimates and transfers are planned from the declared sizes).
        let mut missing = Vec::new();
        for (path, f) in &req.files {
            match self.cas.size_of(&f.digest) {
                None => missing.push(f.digest.clone()),
                Some(stored) if stored != f.size => {
                    return Err(BuildError::WrongSize { path: path.clone(), declared: f.size, stored })
                }
                Some(_) => {}
            }
        }
        if let Some(first) = missing.first() {
            return Err(BuildError::MissingBlobs { count: missing.len(), first: first.clone() });
        }
        let cfg = self.resolve_request(&req).await?;
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
            cache: self.cache.clone(),
            tools,
            workers: self.workers.clone(),
            pool: self.pool.clone(),
            limits: Arc::new(limits),
        };
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
        let live = match self.live(id) {
            Some(addr) => addr.send(runner::GetRequest).await.ok(),
            None => None,
        };
        let mut req: BuildRequest = match live {
            Some(req) => req,
            None => {
                let sql = "SELECT request FROM build_requests WHERE build_id = ?1";
                let text = self.store.optional_text(sql, id.to_string()).await?;
                text.and_then(|t| serde_json::from_str(&t).ok()).ok_or_else(|| BuildError::NotFound(id.to_string()))?
            }
        };
        req.force = force;
        if config.is_some() {
            req.config = config;
            req.template = None;
            req.inline_config = None;
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

    /// The build's status as soon as it has ended (its history and ledger entry written), or as
    /// it is after `wait` if it is still running then.
    pub async fn status_when_done(&self, id: &str, wait: std::time::Duration) -> Result<BuildStatus, BuildError> {
        if let Some(addr) = self.live(id).filter(|_| !wait.is_zero()) {
            if let Ok(ended) = addr.send(runner::WhenDone).await {
                // The final status when it ends; closed without one when the build stops some
                // other way: then, as after the wait, it is read as any status is.
                if let Ok(Ok(status)) = tokio::time::timeout(wait, ended).await {
                    return Ok(status);
                }
            }
        }
        self.status(id).await
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas;
    use crate::start::{start, test_options};
    use std::collections::BTreeMap;

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
        BuildRequest { project, files, force, local_only: true, config: None, template: None, inline_config: None }
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

    /// A build whose end cannot reach the ledger (the node closing it as it stops) is not told
    /// to its caller as succeeded: the next start ends it as interrupted, and the caller is told
    /// it failed and why (before, it was told succeeded and the history said failed).
    #[actix::test]
    async fn a_build_whose_end_cannot_be_recorded_is_not_reported_as_succeeded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("project");
        write(&root, "a.txt", "alpha");
        write(
            &root,
            project::MANIFEST,
            "[packages.a]\ncommand = [\"cp\", \"a.txt\", \"a.out\"]\ninputs = [\"a.txt\"]\noutputs = [\"a.out\"]\n",
        );
        let started = start(test_options(&dir.path().join("data"))).await.expect("node");
        let builds = started.node.builds.clone();
        let request = request(&root, &builds.cas, true).await;
        started.node.ledger.close().await;
        let id = builds.start(request, "test").await.expect("start");
        let s = builds.status_when_done(&id, std::time::Duration::from_secs(30)).await.expect("status");
        assert_eq!(s.status, runner::BuildState::Failed, "{s:?}");
        let error = s.error.as_deref().unwrap_or_default();
        assert!(error.starts_with("its end could not be recorded in the ledger"), "{s:?}");
        assert!(s.packages.iter().all(|p| p.state == runner::PackageState::Succeeded), "the package itself ran: {s:?}");
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
        // Asked at once, a rerun takes the live build's request (its history row may not be
        // written yet).
        let rerun = builds.rerun(&id, false, None, "test").await.expect("a rerun of a build just started");
        let s = wait(&builds, &id).await;
        wait(&builds, &rerun).await;
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
        assert_eq!(history.len(), 5);
        let status = started.node.node.status().await.expect("status");
        let cpu = status.resource_status.iter().find(|r| r.key == "cpu").expect("cpu");
        assert_eq!(cpu.leased, 0, "every lease was released");
    }
}
