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
use crate::exec::{ExecutorHandle, OutputSink, RunRequest};
use crate::wire::{self, MeshMessage, NodeId, RemoteError, Task, TaskResult};

/// Where the result of a task sent to a peer goes.
type ResultSlot = oneshot::Sender<Result<TaskResult, RemoteError>>;

/// A peer's result whose outputs are still being pulled into this node's CAS.
struct Collecting {
    link_id: u64,
    peer: NodeId,
    result: TaskResult,
    reply: ResultSlot,
}

/// A task this node asked a peer to run.
struct Sent {
    peer: NodeId,
    build_id: String,
    /// The outputs its package declares: what a result may name ([`TaskResult::answers`]).
    outputs: Vec<String>,
    reply: ResultSlot,
}

/// Packages run for other nodes, and packages this node sent elsewhere.
pub(super) struct RemoteWork {
    pub(super) executor: ExecutorHandle,
    pub(super) accept: bool,
    pub(super) local_only_hours: Vec<HoursWindow>,
    next_task: u64,
    /// Tasks this node asked a peer to run, by id.
    sent: HashMap<u64, Sent>,
    /// Where the output of a task sent to a peer goes while it runs.
    sent_output: HashMap<u64, OutputSink>,
    /// Tasks from peers waiting for blobs.
    waiting: Vec<Waiting>,
    /// Results of tasks run on peers, waiting for their outputs to arrive.
    collecting: Vec<Collecting>,
}

/// What is known to have been stored since waiting tasks last looked.
pub(super) enum Stored<'a> {
    /// Nothing beyond what the transfers found stored already.
    Nothing,
    /// This blob, just received.
    Blob(&'a str),
    /// Perhaps anything (a batch of blobs stored at once, or an upload or a transfer finished
    /// after its link closed): what each task still lacks is looked up in the store.
    LookUp,
}

/// A peer's task waiting for blobs, with the digests it still lacks: each arrival strikes one
/// off every task that lacks it, instead of every waiting task's every input being looked up in
/// the store again whenever any blob arrives (quadratic for a new node pulling a build's inputs).
struct Waiting {
    link_id: u64,
    from: NodeId,
    req: wire::TaskRequest,
    missing: BTreeSet<String>,
}

impl RemoteWork {
    /// Whether a peer's task waits here for blobs.
    pub(super) fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Whether a peer's result waits here for its outputs.
    pub(super) fn has_collecting(&self) -> bool {
        !self.collecting.is_empty()
    }

    pub(super) fn new(executor: ExecutorHandle, accept: bool, local_only_hours: Vec<HoursWindow>) -> RemoteWork {
        RemoteWork {
            executor,
            accept,
            local_only_hours,
            next_task: 1,
            sent: HashMap::new(),
            sent_output: HashMap::new(),
            waiting: Vec::new(),
            collecting: Vec::new(),
        }
    }
}

/// One package for some node: what to run and the leases it needs there.
#[derive(Clone)]
pub struct Job {
    pub task: Task,
    pub cores: u64,
    pub memory_bytes: Option<u64>,
    /// The storage volume the configuration selected on that node.
    pub volume: Option<String>,
}

/// Who watches the output of which running package: (build id, package) → sink.
type Watchers = std::sync::Arc<std::sync::Mutex<HashMap<(String, String), OutputSink>>>;

/// Runs packages on any node of the mesh: this node's executor for itself, a task request over
/// the link for a peer. The caller does not branch on where.
#[derive(Clone)]
pub struct Workers {
    me: NodeId,
    executor: ExecutorHandle,
    mesh: MeshHandle,
    watchers: Watchers,
}

impl Workers {
    pub fn new(me: NodeId, executor: ExecutorHandle, mesh: MeshHandle) -> Workers {
        Workers { me, executor, mesh, watchers: Watchers::default() }
    }

    /// Sends what `package` of `build_id` prints to `sink` while it runs, wherever it runs,
    /// until [`Workers::unwatch`].
    pub fn watch(&self, build_id: &str, package: &str, sink: OutputSink) {
        if let Ok(mut w) = self.watchers.lock() {
            w.insert((build_id.to_string(), package.to_string()), sink);
        }
    }

    pub fn unwatch(&self, build_id: &str, package: &str) {
        if let Ok(mut w) = self.watchers.lock() {
            w.remove(&(build_id.to_string(), package.to_string()));
        }
    }

    fn watcher(&self, task: &Task) -> Option<OutputSink> {
        self.watchers.lock().ok()?.get(&(task.build_id.clone(), task.package.clone())).cloned()
    }

    /// Runs `job` on `node` and waits for its result; outputs are in this node's CAS by then.
    pub async fn run_on(&self, node: &NodeId, job: Job) -> Result<TaskResult, RemoteError> {
        let epoch = self.mesh.view().await.map_or(0, |v| v.epoch);
        let declared = job.task.outputs.clone();
        let output = self.watcher(&job.task);
        let result = if *node == self.me {
            let Job { task, cores, memory_bytes, volume } = job;
            let req = RunRequest { task, cores, memory_bytes, epoch, volume, requester: self.me.clone(), output };
            self.executor.run(req).await
        } else {
            let run = RunRemote { peer: node.clone(), job, output };
            self.mesh.addr.send(run).await.unwrap_or(Err(RemoteError::Stopped))
        };
        // The outputs' paths come back from the node that ran the package: only the paths the
        // package declared (checked when the build started) go on to later packages and the CLI.
        // (A peer's result is checked once already as it arrives, before its blobs are pulled.)
        result.and_then(|r| {
            r.answers(&declared).map(|()| r).map_err(|e| RemoteError::Failed(format!("node {node}: {e}")))
        })
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
        // Paths are data: a task naming a place outside its sandbox is refused before any blob
        // is fetched or any directory made.
        if let Err(bad) = req.task.check_paths() {
            log::warn!("refused a task from {from}: {bad}");
            let result = Err(RemoteError::Refused(bad.to_string()));
            return self.send(link_id, MeshMessage::TaskDone { task_id: req.task_id, result, outputs: vec![] });
        }
        let refusal = if !self.work.accept {
            Some("this node does not accept remote builds (scheduling.accept_remote_builds)")
        } else if self.work.local_only_hours.iter().any(|w| w.contains(minute_of_day())) {
            Some("this node runs only its own builds at this hour (local_only_hours)")
        } else {
            None
        };
        if let Some(why) = refusal {
            let result = Err(RemoteError::Refused(why.into()));
            return self.send(link_id, MeshMessage::TaskDone { task_id: req.task_id, result, outputs: vec![] });
        }
        let digests: Vec<String> =
            req.task.files.iter().map(|f| f.digest.clone()).collect::<BTreeSet<_>>().into_iter().collect();
        let missing = self.transfer.cas.missing(&digests);
        if missing.is_empty() {
            // Every blob is here (checked just now): it starts without joining the waiting ones.
            self.start_task(ctx, link_id, from, req);
        } else {
            self.work.waiting.push(Waiting { link_id, from, req, missing: missing.iter().cloned().collect() });
            self.fetch_blobs(link_id, missing);
            // One stored meanwhile (between the look and the queue) is struck off now.
            if !self.transfer.present.is_empty() {
                self.start_ready_tasks(ctx, Stored::Nothing);
            }
        }
    }

    /// Hands every waiting task whose blobs are all here to the executor. What the transfers
    /// found stored already is struck off what each lacks, and with it what `news` says.
    pub(super) fn start_ready_tasks(&mut self, ctx: &mut Context<Self>, news: Stored<'_>) {
        let mut stored = std::mem::take(&mut self.transfer.present);
        match news {
            Stored::Nothing => {}
            Stored::Blob(digest) => stored.push(digest.to_string()),
            // Each digest a waiting task lacks looked up once, however many tasks lack it.
            Stored::LookUp => {
                let lacking: BTreeSet<&String> = self.work.waiting.iter().flat_map(|w| &w.missing).collect();
                let cas = &self.transfer.cas;
                stored.extend(lacking.into_iter().filter(|d| cas.has(d)).cloned());
            }
        }
        for waiting in &mut self.work.waiting {
            for digest in &stored {
                waiting.missing.remove(digest);
            }
        }
        let (ready, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.work.waiting).into_iter().partition(|w| w.missing.is_empty());
        self.work.waiting = waiting;
        for Waiting { link_id, from, req, .. } in ready {
            self.start_task(ctx, link_id, from, req);
        }
    }

    /// Runs a peer's task on this node's executor; its result (with small outputs) goes back
    /// over `link_id`.
    fn start_task(&mut self, ctx: &mut Context<Self>, link_id: u64, from: NodeId, req: wire::TaskRequest) {
        let task_id = req.task_id;
        let wire::TaskRequest { task, cores, memory_bytes, epoch, volume, .. } = req;
        // What it prints goes back to the requester as it runs.
        let addr = ctx.address();
        let output: OutputSink = std::sync::Arc::new(move |chunk| addr.do_send(SendOutput { link_id, task_id, chunk }));
        let run = RunRequest { task, cores, memory_bytes, epoch, volume, requester: from, output: Some(output) };
        let executor = self.work.executor.clone();
        ctx.spawn(async move { executor.run(run).await }.into_actor(self).map(move |result, act, ctx| {
            // Small outputs go along; the requester pulls those it still lacks.
            let outputs = result.as_ref().map(|r| act.inline_outputs(r)).unwrap_or_default();
            act.send(link_id, MeshMessage::TaskDone { task_id, result, outputs });
            // The freed core is news: a requester waiting for it should not wait for the next
            // tick's advert (nor should every task end cost one).
            act.advertise_soon(ctx);
        }));
    }

    /// The outputs of `result` that go inside its `TaskDone` ([`inline_outputs`], read from this
    /// node's CAS).
    fn inline_outputs(&self, result: &TaskResult) -> Vec<wire::InlineBlob> {
        inline_outputs(result, |digest| self.transfer.cas.read(digest).ok())
    }

    /// The result of a task this node sent: answered once every output is in this node's CAS.
    /// Those that came inside the message are stored first, off the actor's thread (each store
    /// syncs its file), if the result names them and they hash to their digest; those still
    /// lacking are pulled from the peer.
    pub(super) fn on_task_done(
        &mut self,
        ctx: &mut Context<Self>,
        link_id: u64,
        from: NodeId,
        task_id: u64,
        result: Result<TaskResult, RemoteError>,
        inline: Vec<wire::InlineBlob>,
    ) {
        if self.work.sent.get(&task_id).is_none_or(|sent| sent.peer != from) {
            return;
        }
        self.work.sent_output.remove(&task_id);
        let Some(Sent { peer, outputs: declared, reply, .. }) = self.work.sent.remove(&task_id) else { return };
        // Checked before any of its blobs is stored or pulled.
        let result = match result.and_then(|r| r.answers(&declared).map(|()| r).map_err(RemoteError::Failed)) {
            Ok(r) => r,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let cas = self.transfer.cas.clone();
        let storable: Vec<wire::InlineBlob> =
            inline.into_iter().filter(|b| names_output(&result, b) && !cas.has(&b.digest)).collect();
        if storable.is_empty() {
            return self.collect_outputs(link_id, peer, result, reply);
        }
        let store = actix_rt::task::spawn_blocking(move || {
            for blob in storable {
                // One refused (it does not hash to its digest) is pulled like any other.
                if let Err(e) = cas.put_verified(&blob.digest, &blob.data) {
                    log::warn!("an output {from} sent with its result was not stored: {e}");
                }
            }
        });
        ctx.spawn(store.into_actor(self).map(move |_, act, ctx| {
            act.collect_outputs(link_id, peer, result, reply);
            // Whatever else waits for these blobs (a task's inputs) may go on too.
            act.blob_arrived(ctx, "");
        }));
    }

    /// Answers a peer's result whose outputs are all here, or pulls those that are not first.
    fn collect_outputs(&mut self, link_id: u64, peer: NodeId, result: TaskResult, reply: ResultSlot) {
        let missing: Vec<String> =
            result.outputs.iter().map(|f| f.digest.clone()).filter(|d| !self.transfer.cas.has(d)).collect();
        if missing.is_empty() {
            let _ = reply.send(Ok(result));
            return;
        }
        self.work.collecting.push(Collecting { link_id, peer, result, reply });
        self.fetch_blobs(link_id, missing);
    }

    /// A blob is stored: tasks waiting for their inputs may start, results whose outputs are
    /// all here are answered.
    pub(super) fn blob_arrived(&mut self, ctx: &mut Context<Self>, digest: &str) {
        self.start_ready_tasks(ctx, if digest.is_empty() { Stored::LookUp } else { Stored::Blob(digest) });
        self.answer_collected();
    }

    /// Answers every result whose outputs are all here (a result has a few, looked up in the
    /// store each time).
    pub(super) fn answer_collected(&mut self) {
        let cas = self.transfer.cas.clone();
        let (done, collecting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.work.collecting)
            .into_iter()
            .partition(|c| c.result.outputs.iter().all(|f| cas.has(&f.digest)));
        self.work.collecting = collecting;
        for c in done {
            let _ = c.reply.send(Ok(c.result));
        }
    }

    /// A blob pulled over `link_id` could not be received: what waited for it there fails.
    pub(super) fn blob_failed(&mut self, link_id: u64, digest: &str, why: &str) {
        let needs = |files: &[wire::FileRef]| files.iter().any(|f| f.digest == digest);
        let (failed, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.work.waiting)
            .into_iter()
            .partition(|w| w.link_id == link_id && needs(&w.req.task.files));
        self.work.waiting = waiting;
        for Waiting { req, .. } in failed {
            let path = req.task.files.iter().find(|f| f.digest == digest).map(|f| f.path.clone()).unwrap_or_default();
            let result = Err(RemoteError::Failed(format!("input {path} could not be received: {why}")));
            self.send(link_id, MeshMessage::TaskDone { task_id: req.task_id, result, outputs: vec![] });
        }
        let (failed, collecting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.work.collecting)
            .into_iter()
            .partition(|c| c.link_id == link_id && needs(&c.result.outputs));
        self.work.collecting = collecting;
        for c in failed {
            let path = c.result.outputs.iter().find(|f| f.digest == digest).map(|f| f.path.clone()).unwrap_or_default();
            let _ = c.reply.send(Err(RemoteError::Failed(format!("output {path} could not be fetched: {why}"))));
        }
    }

    /// A requester cancels its build: tasks still waiting for blobs end at once, running ones are
    /// killed by the executor (only those this requester asked for).
    pub(super) fn on_task_cancel(&mut self, ctx: &mut Context<Self>, link_id: u64, from: NodeId, build_id: String) {
        let (cancelled, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.work.waiting)
            .into_iter()
            .partition(|w| w.from == from && w.req.task.build_id == build_id);
        self.work.waiting = waiting;
        for Waiting { req, .. } in cancelled {
            self.send(
                link_id,
                MeshMessage::TaskDone { task_id: req.task_id, result: Err(RemoteError::Cancelled), outputs: vec![] },
            );
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
        let lost: Vec<u64> = self.work.sent.iter().filter(|(_, sent)| sent.peer == *peer).map(|(id, _)| *id).collect();
        for id in lost {
            self.work.sent_output.remove(&id);
            if let Some(Sent { reply, .. }) = self.work.sent.remove(&id) {
                let _ = reply.send(Err(RemoteError::LostNode(peer.clone())));
            }
        }
        self.work.waiting.retain(|w| w.from != *peer);
        let (lost, collecting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.work.collecting).into_iter().partition(|c| c.peer == *peer);
        self.work.collecting = collecting;
        for c in lost {
            let _ = c.reply.send(Err(RemoteError::LostNode(peer.clone())));
        }
        self.work.executor.cancel_requester(peer);
    }
}

/// Runs a job on a peer and waits for its result (outputs land in the local CAS).
#[derive(Message)]
#[rtype(result = "Result<TaskResult, RemoteError>")]
struct RunRemote {
    peer: NodeId,
    job: Job,
    output: Option<OutputSink>,
}

impl Handler<RunRemote> for MeshActor {
    type Result = ResponseFuture<Result<TaskResult, RemoteError>>;

    fn handle(&mut self, msg: RunRemote, ctx: &mut Context<Self>) -> Self::Result {
        let peer = msg.peer.clone();
        let link_id = match self.link_for_work(&peer, ctx) {
            Ok(link_id) => link_id,
            Err(Some(opened)) => {
                // Live, but the topology links us elsewhere: ask again once the link is up.
                let me = ctx.address();
                return Box::pin(async move {
                    opened.await.map_err(|_| RemoteError::LostNode(peer.clone()))?;
                    me.send(msg).await.unwrap_or(Err(RemoteError::LostNode(peer)))
                });
            }
            Err(None) => return Box::pin(async move { Err(RemoteError::LostNode(peer)) }),
        };
        let RunRemote { peer, job, output } = msg;
        let task_id = self.work.next_task;
        self.work.next_task += 1;
        let (tx, rx) = oneshot::channel();
        let sent = Sent {
            peer: peer.clone(),
            build_id: job.task.build_id.clone(),
            outputs: job.task.outputs.clone(),
            reply: tx,
        };
        self.work.sent.insert(task_id, sent);
        if let Some(sink) = output {
            self.work.sent_output.insert(task_id, sink);
        }
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

impl MeshActor {
    /// Whether anything is in flight with `peer` (its link is not idle).
    pub(super) fn work_with(&self, peer: &NodeId) -> bool {
        self.work.sent.values().any(|sent| sent.peer == *peer)
            || self.work.waiting.iter().any(|w| w.from == *peer)
            || self.work.collecting.iter().any(|c| c.peer == *peer)
    }
}

/// Output of a task this node runs for a peer, on its way back over the link it came on.
#[derive(Message)]
#[rtype(result = "()")]
struct SendOutput {
    link_id: u64,
    task_id: u64,
    chunk: String,
}

impl Handler<SendOutput> for MeshActor {
    type Result = ();

    fn handle(&mut self, msg: SendOutput, _: &mut Context<Self>) {
        self.send(msg.link_id, MeshMessage::TaskOutput { task_id: msg.task_id, chunk: msg.chunk });
    }
}

impl MeshActor {
    /// Output of a task this node sent to `from`: to whoever watches it (a peer's chunk is cut to
    /// [`wire::OUTPUT_CHUNK`] bytes whatever it claims).
    pub(super) fn on_task_output(&mut self, from: NodeId, task_id: u64, mut chunk: String) {
        if self.work.sent.get(&task_id).is_none_or(|sent| sent.peer != from) {
            return;
        }
        wire::keep_tail(&mut chunk, wire::OUTPUT_CHUNK);
        if let Some(sink) = self.work.sent_output.get(&task_id) {
            sink(chunk);
        }
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
        let peers: BTreeSet<NodeId> = self
            .work
            .sent
            .values()
            .filter(|sent| sent.build_id == msg.build_id)
            .map(|sent| sent.peer.clone())
            .collect();
        for peer in peers {
            if let Some(link) = self.peers.get(&peer).and_then(|p| p.link) {
                self.send(link, MeshMessage::TaskCancel { build_id: msg.build_id.clone() });
            }
        }
    }
}

/// The outputs of `result` that go inside its `TaskDone`: whole blobs (as `read` finds them),
/// each once, while they fit [`wire::INLINE_OUTPUT_BYTES`] and the frame still holds the rest of
/// the message.
fn inline_outputs(result: &TaskResult, read: impl Fn(&str) -> Option<Vec<u8>>) -> Vec<wire::InlineBlob> {
    // The result is measured (encoded once more) only when something could go along.
    if !result.outputs.iter().any(|f| f.size <= wire::INLINE_OUTPUT_BYTES) {
        return Vec::new();
    }
    let Ok(rest) = rmp_serde::to_vec_named(result) else { return Vec::new() };
    let room = super::noise::MAX_PLAINTEXT.saturating_sub(rest.len() + super::bridge::ENVELOPE_ROOM) as u64;
    let mut budget = wire::INLINE_OUTPUT_BYTES.min(room);
    let mut sent: BTreeSet<&str> = BTreeSet::new();
    let mut blobs = Vec::new();
    for f in &result.outputs {
        // Its bytes, its digest and MessagePack's headers.
        let cost = f.size + f.digest.len() as u64 + 32;
        if cost > budget || !sent.insert(&f.digest) {
            continue;
        }
        if let Some(data) = read(&f.digest).filter(|d| d.len() as u64 == f.size) {
            budget -= cost;
            blobs.push(wire::InlineBlob { digest: f.digest.clone(), data });
        }
    }
    blobs
}

/// Whether a blob sent with a result is one of its outputs, at that output's size (whether it
/// hashes to the digest is `Cas::put_verified`'s to check).
/// A peer's `TaskDone` as if it came over the peer's link: what a broken or hostile member could
/// send (tests only; a real one is sealed by the peer's Noise session).
#[cfg(test)]
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct TaskDoneFrom {
    pub from: NodeId,
    pub task_id: u64,
    pub result: Result<TaskResult, RemoteError>,
    pub outputs: Vec<wire::InlineBlob>,
}

#[cfg(test)]
impl Handler<TaskDoneFrom> for MeshActor {
    type Result = ();

    fn handle(&mut self, msg: TaskDoneFrom, ctx: &mut Context<Self>) {
        let link_id = self.peers.get(&msg.from).and_then(|p| p.link).unwrap_or_default();
        self.on_task_done(ctx, link_id, msg.from, msg.task_id, msg.result, msg.outputs);
    }
}

fn names_output(result: &TaskResult, blob: &wire::InlineBlob) -> bool {
    result.outputs.iter().any(|f| f.digest == blob.digest && f.size == blob.data.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::FileRef;

    fn result(outputs: Vec<FileRef>, tail: usize) -> TaskResult {
        TaskResult {
            exit_code: Some(0),
            outputs,
            output_tail: "x".repeat(tail),
            duration_ms: 1,
            cpu_ms: 1,
            error: None,
        }
    }

    fn output(i: usize, size: u64) -> FileRef {
        FileRef { path: format!("obj/m{i}.o"), digest: format!("{i:064x}"), executable: false, size }
    }

    #[test]
    fn outputs_inside_a_result_keep_its_message_within_one_frame() {
        // The worst a result brings: the longest output tail and many small outputs, each of
        // which would fit the inline budget on its own.
        let read = |done: &TaskResult, digest: &str| {
            done.outputs.iter().find(|f| f.digest == digest).map(|f| vec![7u8; f.size as usize])
        };
        // A result that fills a frame by itself takes nothing along.
        let full = result((0..400).map(|i| output(i, 1000)).collect(), wire::TAIL_BYTES);
        assert!(inline_outputs(&full, |d| read(&full, d)).is_empty());
        let done = result((0..150).map(|i| output(i, 1000)).collect(), wire::TAIL_BYTES);
        let inline = inline_outputs(&done, |d| read(&done, d));
        assert!(!inline.is_empty(), "some go inside");
        let inlined: u64 = inline.iter().map(|b| b.data.len() as u64).sum();
        assert!(inlined <= wire::INLINE_OUTPUT_BYTES);
        let message = MeshMessage::TaskDone { task_id: u64::MAX, result: Ok(done), outputs: inline };
        let envelope = wire::Envelope {
            v: wire::PROTOCOL_VERSION,
            id: u64::MAX,
            from: NodeId::parse("0123456789abcdef").expect("id"),
            to: Some(NodeId::parse("fedcba9876543210").expect("id")),
            body: message,
        };
        let bytes = wire::encode(&envelope).expect("encodes");
        assert!(bytes.len() <= super::super::noise::MAX_PLAINTEXT, "{} bytes", bytes.len());
    }

    #[test]
    fn a_blob_sent_with_a_result_is_taken_only_as_one_of_its_outputs() {
        let done = result(vec![output(1, 3)], 0);
        let blob = |digest: String, data: &[u8]| wire::InlineBlob { digest, data: data.to_vec() };
        assert!(names_output(&done, &blob(format!("{:064x}", 1), b"abc")));
        assert!(!names_output(&done, &blob(format!("{:064x}", 2), b"abc")), "a digest the result does not name");
        assert!(!names_output(&done, &blob(format!("{:064x}", 1), b"abcd")), "another size than the output's");
        // Each one is read once, and one whose stored size differs is left to the pull.
        let twice = result(vec![output(1, 3), output(1, 3), output(2, 5)], 0);
        let inline = inline_outputs(&twice, |_| Some(b"abc".to_vec()));
        assert_eq!(inline.len(), 1, "{inline:?}");
    }
}
