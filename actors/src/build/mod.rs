//! Builds: a project's packages as a DAG, run where the configuration allows, with inputs and
//! outputs moved by content digest and unchanged work served from the cache.
//!
//! [`Builds`] is the node's front door: it checks a request, starts a [`runner::BuildActor`],
//! and answers status, cancel and history.

pub mod cas;
pub mod exec;
pub mod project;
pub mod runner;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use rand::RngCore;

use crate::events::EventBus;
use crate::ledger::LedgerHandle;
use crate::mesh::MeshHandle;
use crate::node::NodeHandle;
use crate::store::{StoreError, StoreHandle};
use crate::wire::{self, NodeId};
use cas::Cas;
use runner::{BuildActor, BuildContext, BuildRequest, BuildStatus, BuildSummary, Registry};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Project(#[from] project::ProjectError),
    #[error("files: {count} input blob(s) are not on this node (first: {first}); upload them to /api/blobs first")]
    MissingBlobs { count: usize, first: String },
    #[error("files: '{0}' has no entry")]
    MissingFile(String),
    #[error("no build '{0}'")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the node is not running")]
    Unavailable,
}

/// The node's builds.
#[derive(Clone)]
pub struct Builds {
    node_id: NodeId,
    node: NodeHandle,
    mesh: MeshHandle,
    ledger: LedgerHandle,
    store: StoreHandle,
    events: EventBus,
    pub cas: Cas,
    sandboxes: std::path::PathBuf,
    registry: Registry,
}

impl Builds {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node_id: NodeId,
        node: NodeHandle,
        mesh: MeshHandle,
        ledger: LedgerHandle,
        store: StoreHandle,
        events: EventBus,
        cas: Cas,
        sandboxes: std::path::PathBuf,
    ) -> Builds {
        Builds {
            node_id,
            node,
            mesh,
            ledger,
            store,
            events,
            cas,
            sandboxes,
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
        let status = self.node.status().await.map_err(|_| BuildError::Unavailable)?;
        let tools: BTreeMap<String, Option<String>> = status
            .resources
            .tools
            .iter()
            .chain(&status.resources.runtimes)
            .filter(|t| t.error.is_none())
            .map(|t| (t.name.clone(), t.version.clone()))
            .collect();
        let epoch = self.mesh.peers().await.map(|(v, _)| v.epoch).unwrap_or(0);
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
            sandboxes: self.sandboxes.clone(),
            tools,
            epoch,
        };
        let actor = BuildActor::new(ctx, req, id.clone(), triggered_by.to_string(), self.registry.clone());
        let addr = actor.start();
        if let Ok(mut r) = self.registry.lock() {
            r.insert(id.clone(), addr);
        }
        Ok(id)
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
        runner::load(&self.store, id).await?.ok_or_else(|| BuildError::NotFound(id.to_string()))
    }

    /// Cancels a running build; a finished one is left as it is.
    pub async fn cancel(&self, id: &str) -> Result<BuildStatus, BuildError> {
        if let Some(addr) = self.live(id) {
            let _ = addr.send(runner::Cancel).await;
        }
        self.status(id).await
    }

    pub async fn history(&self, limit: usize, status: Option<String>) -> Result<Vec<BuildSummary>, BuildError> {
        Ok(runner::history(&self.store, limit, status).await?)
    }
}
