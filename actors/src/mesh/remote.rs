//! Remote packages. On the receiving side: task requests from peers, checked against this
//! node's scheduling rules, their blobs fetched, then run by this node's executor — the same one
//! local builds use; cancels and lost requesters kill what runs. On the sending side: requests
//! and their results by task id. [`Workers`] is the one interface a build uses to run a package
//! on any node, this one included.

use std::collections::{BTreeSet, HashMap};

use actix::prelude::*;
use tokio::sync::oneshot;

use super::{MeshActor, MeshHandle};
use crate::config::HoursWindow;
use crate::exec::{ExecutorHandle, RunRequest};
use crate::wire::{self, MeshMessage, NodeId, RemoteError, Task, TaskResult};

/// Where the result of a task sent to a peer goes.
type ResultSlot = oneshot::Sender<Result<TaskResult, RemoteError>>;

/// Packages run for other nodes, and packages this node sent elsewhere.
pub(super) struct RemoteWork {
    pub(super) executor: ExecutorHandle,
    pub(super) accept: bool,
    pub(super) local_only_hours: Vec<HoursWindow>,
    next_task: u64,
    /// Tasks this node asked a peer to run: id → (peer, build, where the result goes).
    sent: HashMap<u64, (NodeId, String, ResultSlot)>,
    /// Tasks from peers waiting for blobs: (link, peer, request).
    waiting: Vec<(u64, NodeId, wire::TaskRequest)>,
}

impl RemoteWork {
    pub(super) fn new(executor: ExecutorHandle, accept: bool, local_only_hours: Vec<HoursWindow>) -> RemoteWork {
        RemoteWork { executor, accept, local_only_hours, next_task: 1, sent: HashMap::new(), waiting: Vec::new() }
    }
}

/// One package for some node: what to run and the leases it needs there.
#[derive(Debug, Clone)]
pub struct Job {
    pub task: Task,
    pub cores: u64,
    pub memory_bytes: Option<u64>,
    /// The storage volume the configuration selected on that node.
    pub volume: Option<String>,
}

/// Runs packages on any node of the mesh: this node's executor for itself, a task request over
/// the link for a peer. The caller does not branch on where.
#[derive(Clone)]
pub struct Workers {
    me: NodeId,
    executor: ExecutorHandle,
    mesh: MeshHandle,
}

impl Workers {
    pub fn new(me: NodeId, executor: ExecutorHandle, mesh: MeshHandle) -> Workers {
        Workers { me, executor, mesh }
    }

    /// Runs `job` on `node` and waits for its result; outputs are in this node's CAS by then.
    pub async fn run_on(&self, node: &NodeId, job: Job) -> Result<TaskResult, RemoteError> {
        let epoch = self.mesh.view().await.map_or(0, |v| v.epoch);
        if *node == self.me {
            let Job { task, cores, memory_bytes, volume } = job;
            let req = RunRequest { task, cores, memory_bytes, epoch, volume, requester: self.me.clone() };
            return self.executor.run(req).await;
        }
        self.mesh.addr.send(RunRemote { peer: node.clone(), job }).await.unwrap_or(Err(RemoteError::Stopped))
    }

    /// Kills a build's packages wherever they run: here, and on every peer it sent work to.
    pub async fn cancel_build(&self, build_id: &str) {
        self.executor.cancel_build(&self.me, build_id).await;
        self.mesh.addr.do_send(CancelRemote { build_id: build_id.to_string() });
    }
}

/// The minute of the local day, for `local_only_hours`.
fn minute_of_day() -> u32 {
    use chrono::Timelike;
    let now = chrono::Local::now();
    now.hour() * 60 + now.minute()
}

impl MeshActor {
    pub(super) fn on_task_request(
        &mut self,
        ctx: &mut Context<Self>,
        link_id: u64,
        from: NodeId,
        req: wire::TaskRequest,
    ) {
        let refusal = if !self.work.accept {
            Some("this node does not accept remote builds (scheduling.accept_remote_builds)")
        } else if self.work.local_only_hours.iter().any(|w| w.contains(minute_of_day())) {
            Some("this node runs only its own builds at this hour (local_only_hours)")
        } else {
            None
        };
        if let Some(why) = refusal {
            let result = Err(RemoteError::Refused(why.into()));
            return self.send(link_id, MeshMessage::TaskDone { task_id: req.task_id, result });
        }
        let digests: Vec<String> =
            req.task.files.iter().map(|f| f.digest.clone()).collect::<BTreeSet<_>>().into_iter().collect();
        let missing = self.transfer.cas.missing(&digests);
        self.work.waiting.push((link_id, from, req));
        if missing.is_empty() {
            self.start_ready_tasks(ctx);
        } else {
            self.send(link_id, MeshMessage::BlobWant { digests: missing });
        }
    }

    /// Hands every waiting task whose blobs are all here to the executor.
    pub(super) fn start_ready_tasks(&mut self, ctx: &mut Context<Self>) {
        let cas = self.transfer.cas.clone();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.work.waiting)
            .into_iter()
            .partition(|(_, _, r)| r.task.files.iter().all(|f| cas.has(&f.digest)));
        self.work.waiting = waiting;
        for (link_id, from, req) in ready {
            let task_id = req.task_id;
            let wire::TaskRequest { task, cores, memory_bytes, epoch, volume, .. } = req;
            let run = RunRequest { task, cores, memory_bytes, epoch, volume, requester: from };
            let executor = self.work.executor.clone();
            ctx.spawn(async move { executor.run(run).await }.into_actor(self).map(move |result, act, ctx| {
                if let Ok(r) = &result {
                    for f in &r.outputs {
                        act.send_blob(link_id, &f.digest);
                    }
                }
                act.send(link_id, MeshMessage::TaskDone { task_id, result });
                // The freed core is news now: a requester waiting for it should not wait for
                // the next tick's advert.
                act.advertise(ctx, false);
            }));
        }
    }

    /// The result of a task this node sent; its outputs came as chunks just before.
    pub(super) fn on_task_done(&mut self, from: NodeId, task_id: u64, result: Result<TaskResult, RemoteError>) {
        let Some((peer, _, reply)) = self.work.sent.remove(&task_id) else { return };
        if peer != from {
            return;
        }
        let result = result.and_then(|r| match r.outputs.iter().find(|f| !self.transfer.cas.has(&f.digest)) {
            Some(missing) => Err(RemoteError::Failed(format!("output {} did not arrive", missing.path))),
            None => Ok(r),
        });
        let _ = reply.send(result);
    }

    /// A requester cancels its build: tasks still waiting for blobs end at once, running ones are
    /// killed by the executor (only those this requester asked for).
    pub(super) fn on_task_cancel(&mut self, ctx: &mut Context<Self>, link_id: u64, from: NodeId, build_id: String) {
        let (cancelled, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.work.waiting)
            .into_iter()
            .partition(|(_, peer, r)| *peer == from && r.task.build_id == build_id);
        self.work.waiting = waiting;
        for (_, _, req) in cancelled {
            self.send(link_id, MeshMessage::TaskDone { task_id: req.task_id, result: Err(RemoteError::Cancelled) });
        }
        let executor = self.work.executor.clone();
        ctx.spawn(
            async move {
                let killed = executor.cancel_build(&from, &build_id).await;
                log::info!("{from} cancelled build {build_id}: {killed} package(s) killed here");
            }
            .into_actor(self),
        );
    }

    /// A link to `peer` closed: what this node sent there is lost (the build places it again),
    /// and what `peer` asked of this node has nobody waiting for it.
    pub(super) fn on_peer_lost(&mut self, peer: &NodeId) {
        let lost: Vec<u64> = self.work.sent.iter().filter(|(_, (p, _, _))| p == peer).map(|(id, _)| *id).collect();
        for id in lost {
            if let Some((_, _, reply)) = self.work.sent.remove(&id) {
                let _ = reply.send(Err(RemoteError::LostNode(peer.clone())));
            }
        }
        self.work.waiting.retain(|(_, from, _)| from != peer);
        self.work.executor.cancel_requester(peer);
    }
}

/// Runs a job on a peer and waits for its result (outputs land in the local CAS).
#[derive(Message)]
#[rtype(result = "Result<TaskResult, RemoteError>")]
struct RunRemote {
    peer: NodeId,
    job: Job,
}

impl Handler<RunRemote> for MeshActor {
    type Result = ResponseFuture<Result<TaskResult, RemoteError>>;

    fn handle(&mut self, RunRemote { peer, job }: RunRemote, _: &mut Context<Self>) -> Self::Result {
        let Some(link_id) = self.peers.get(&peer).and_then(|p| p.link.filter(|_| p.online())) else {
            return Box::pin(async move { Err(RemoteError::LostNode(peer)) });
        };
        let task_id = self.work.next_task;
        self.work.next_task += 1;
        let (tx, rx) = oneshot::channel();
        self.work.sent.insert(task_id, (peer.clone(), job.task.build_id.clone(), tx));
        let req = wire::TaskRequest {
            task_id,
            task: job.task,
            cores: job.cores,
            memory_bytes: job.memory_bytes,
            epoch: self.view.epoch,
            volume: job.volume,
        };
        self.send(link_id, MeshMessage::TaskRequest(Box::new(req)));
        Box::pin(async move { rx.await.unwrap_or(Err(RemoteError::LostNode(peer))) })
    }
}

/// Tells every peer that runs work of a build to kill it.
#[derive(Message)]
#[rtype(result = "()")]
struct CancelRemote {
    build_id: String,
}

impl Handler<CancelRemote> for MeshActor {
    type Result = ();

    fn handle(&mut self, msg: CancelRemote, _: &mut Context<Self>) {
        let peers: BTreeSet<NodeId> =
            self.work.sent.values().filter(|(_, b, _)| *b == msg.build_id).map(|(p, _, _)| p.clone()).collect();
        for peer in peers {
            if let Some(link) = self.peers.get(&peer).and_then(|p| p.link) {
                self.send(link, MeshMessage::TaskCancel { build_id: msg.build_id.clone() });
            }
        }
    }
}
