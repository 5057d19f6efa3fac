//! Blob transfer between peers, streamed both ways so that memory does not grow with a blob.
//!
//! The node that needs blobs pulls them: [`MeshActor::fetch_blobs`] queues digests and asks the
//! holder for at most [`MAX_INCOMING`] at a time (`BlobWant`). The holder reads each blob from
//! its file in [`CHUNK`]-sized `BlobChunk`s, never more than [`WINDOW`] chunks ahead of the
//! receiver's last `BlobAck`, and streams at most [`MAX_SENDS_PER_LINK`] blobs per link at once
//! (further wants wait in a queue). The receiver checks every chunk's order and size, writes it
//! to a temporary file through the CAS's streaming writer (BLAKE3 on the fly) and acknowledges
//! it; after the last chunk — off the actor's thread — the digest is checked and the file moved
//! into place, or deleted. A transfer silent for [`STALL`] is dropped on both sides, and so is
//! everything of a link that closes.

use actix::prelude::*;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Read;
use std::time::{Duration, Instant};

use super::MeshActor;
use crate::cas::{BlobWriter, Cas};
use crate::wire::{self, MeshMessage};

/// Bytes of a blob per chunk: with framing, one chunk stays well inside a Noise frame.
pub const CHUNK: usize = 48 * 1024;
/// Chunks of one blob in flight before the receiver acknowledges them (768 KiB).
pub const WINDOW: u64 = 16;
/// Blobs streamed to one link at once.
pub const MAX_SENDS_PER_LINK: usize = 8;
/// Blobs this node receives at once, from all links together.
pub const MAX_INCOMING: usize = 8;
/// Wants one link may queue with this node; more are ignored.
const MAX_QUEUED_PER_LINK: usize = 10_000;
/// Largest blob accepted from a peer.
pub const MAX_BLOB: u64 = 1 << 34;
/// A transfer with no progress for this long is dropped.
pub const STALL: Duration = Duration::from_secs(30);

/// A first-in, first-out queue without duplicates, with membership in constant time.
struct Queue<T> {
    order: VecDeque<T>,
    members: HashSet<T>,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Queue { order: VecDeque::new(), members: HashSet::new() }
    }
}

impl<T: Clone + Eq + std::hash::Hash> Queue<T> {
    fn contains(&self, item: &T) -> bool {
        self.members.contains(item)
    }

    fn len(&self) -> usize {
        self.order.len()
    }

    /// Appends `item` unless it is queued already.
    fn push(&mut self, item: T) {
        if self.members.insert(item.clone()) {
            self.order.push_back(item);
        }
    }

    fn pop(&mut self) -> Option<T> {
        let item = self.order.pop_front()?;
        self.members.remove(&item);
        Some(item)
    }

    fn retain(&mut self, keep: impl Fn(&T) -> bool) {
        self.order.retain(|i| keep(i));
        self.members.retain(|i| keep(i));
    }
}

/// A blob being sent: its open file and how far the receiver has got.
struct Sending {
    file: std::fs::File,
    total: u64,
    sent: u64,
    acked: u64,
    last_progress: Instant,
}

/// A blob asked for: the writer exists once its first chunk arrived.
struct Receiving {
    writer: Option<BlobWriter>,
    total: u64,
    /// The last chunk arrived; the digest is being checked off the actor's thread.
    finishing: bool,
    last_progress: Instant,
}

/// This node's blobs, and blobs moving between it and its peers. Transfers are keyed by
/// (link, digest): two links may carry the same blob, and the first to finish stores it.
pub(super) struct Transfer {
    pub(super) cas: Cas,
    /// Blobs to pull, not yet asked for: (link, digest), oldest first.
    wanted: Queue<(u64, String)>,
    /// Blobs asked for and not yet stored.
    receiving: HashMap<(u64, String), Receiving>,
    /// When a chunk last arrived on each link (a blob queued behind others is not stalled).
    link_rx: HashMap<u64, Instant>,
    /// Blobs being streamed to peers.
    sending: HashMap<(u64, String), Sending>,
    /// Blobs peers asked for, waiting for a free slot on their link.
    send_queue: HashMap<u64, Queue<String>>,
    /// Blobs this node has asked peers for since it started.
    pub(super) asked: u64,
    /// Blobs found already stored when they were about to be asked for (an upload, a build of
    /// this node's own, another link's transfer got them there first): struck off what waiting
    /// tasks lack at the next look ([`MeshActor::start_ready_tasks`]), as an arrival would be.
    pub(super) present: Vec<String>,
}

impl Transfer {
    /// Whether no blob is on its way here or queued to be asked for.
    pub(super) fn idle(&self) -> bool {
        self.receiving.is_empty() && self.wanted.len() == 0
    }

    pub(super) fn new(cas: Cas) -> Transfer {
        Transfer {
            cas,
            wanted: Queue::default(),
            receiving: HashMap::new(),
            link_rx: HashMap::new(),
            sending: HashMap::new(),
            send_queue: HashMap::new(),
            asked: 0,
            present: Vec::new(),
        }
    }
}

impl MeshActor {
    /// Pulls blobs this node lacks from the peer on `link_id`; waiting tasks and results are
    /// told as each one is stored ([`MeshActor::blob_arrived`]) or fails ([`MeshActor::blob_failed`]).
    pub(super) fn fetch_blobs(&mut self, link_id: u64, digests: impl IntoIterator<Item = String>) {
        let t = &mut self.transfer;
        for d in digests {
            let key = (link_id, d);
            if t.cas.has(&key.1) {
                t.present.push(key.1);
                continue;
            }
            if t.receiving.contains_key(&key) || t.wanted.contains(&key) {
                continue;
            }
            t.wanted.push(key);
        }
        self.ask_for_more();
    }

    /// Asks for queued blobs while fewer than [`MAX_INCOMING`] are on their way.
    fn ask_for_more(&mut self) {
        let mut asks: HashMap<u64, Vec<String>> = HashMap::new();
        let t = &mut self.transfer;
        while t.receiving.len() < MAX_INCOMING {
            let Some(key) = t.wanted.pop() else { break };
            if t.cas.has(&key.1) {
                t.present.push(key.1);
                continue;
            }
            if t.receiving.contains_key(&key) || !self.links.contains_key(&key.0) {
                continue;
            }
            asks.entry(key.0).or_default().push(key.1.clone());
            t.asked += 1;
            t.receiving
                .insert(key, Receiving { writer: None, total: 0, finishing: false, last_progress: Instant::now() });
        }
        for (link_id, digests) in asks {
            self.send(link_id, MeshMessage::BlobWant { digests });
        }
    }

    /// A peer asks for blobs: they are queued for its link and streamed a few at a time.
    pub(super) fn on_blob_want(&mut self, link_id: u64, digests: Vec<String>) {
        let t = &mut self.transfer;
        let queue = t.send_queue.entry(link_id).or_default();
        for d in digests {
            if queue.len() >= MAX_QUEUED_PER_LINK {
                log::warn!("mesh link {link_id}: more than {MAX_QUEUED_PER_LINK} blobs wanted; the rest ignored");
                break;
            }
            if !t.sending.contains_key(&(link_id, d.clone())) && !queue.contains(&d) {
                queue.push(d);
            }
        }
        self.start_sends(link_id);
    }

    /// Starts queued sends on a link while it has free slots.
    fn start_sends(&mut self, link_id: u64) {
        loop {
            let t = &mut self.transfer;
            if t.sending.keys().filter(|(l, _)| *l == link_id).count() >= MAX_SENDS_PER_LINK {
                return;
            }
            let Some(digest) = t.send_queue.get_mut(&link_id).and_then(Queue::pop) else {
                t.send_queue.remove(&link_id);
                return;
            };
            match t.cas.open_blob(&digest) {
                Ok((file, total)) => {
                    let now = Instant::now();
                    log::debug!("blob {digest} ({total} bytes): sending over mesh link {link_id}");
                    let s = Sending { file, total, sent: 0, acked: 0, last_progress: now };
                    t.sending.insert((link_id, digest.clone()), s);
                    self.send_window(link_id, &digest);
                }
                // The receiver gives up on it after STALL.
                Err(e) => log::warn!("a peer asked for blob {digest}: {e}"),
            }
        }
    }

    /// Sends chunks of a blob until the window is full or the blob is all sent.
    fn send_window(&mut self, link_id: u64, digest: &str) {
        let key = (link_id, digest.to_string());
        let Some(s) = self.transfer.sending.get_mut(&key) else { return };
        let mut chunks = Vec::new();
        let mut failed = None;
        if s.total == 0 && s.sent == 0 {
            chunks.push(wire::BlobChunk { digest: digest.to_string(), offset: 0, total: 0, data: vec![] });
        }
        while s.sent < s.total && s.sent - s.acked < WINDOW * CHUNK as u64 {
            let len = (s.total - s.sent).min(CHUNK as u64) as usize;
            let mut data = vec![0u8; len];
            if let Err(e) = s.file.read_exact(&mut data) {
                failed = Some(e);
                break;
            }
            chunks.push(wire::BlobChunk { digest: digest.to_string(), offset: s.sent, total: s.total, data });
            s.sent += len as u64;
        }
        let empty_done = s.total == 0;
        for chunk in chunks {
            self.send(link_id, MeshMessage::BlobChunk(chunk));
        }
        if let Some(e) = failed {
            // The receiver sees the stream stop and gives up after STALL.
            log::warn!("blob {digest}: reading it for a peer: {e}");
            self.transfer.sending.remove(&key);
            self.start_sends(link_id);
        } else if empty_done {
            self.transfer.sending.remove(&key);
            self.start_sends(link_id);
        }
    }

    /// The receiver has written `offset` bytes of a blob: more may go, or the transfer ends.
    pub(super) fn on_blob_ack(&mut self, link_id: u64, digest: String, offset: u64) {
        let key = (link_id, digest);
        let Some(s) = self.transfer.sending.get_mut(&key) else { return };
        if offset >= s.total {
            self.transfer.sending.remove(&key);
            return self.start_sends(link_id);
        }
        if offset > s.acked && offset <= s.sent {
            s.acked = offset;
            s.last_progress = Instant::now();
            self.send_window(link_id, &key.1);
        }
    }

    /// A chunk of a blob this node asked for: checked, written to the blob's temporary file,
    /// acknowledged; the last one has the digest checked and the blob stored.
    pub(super) fn on_chunk(&mut self, ctx: &mut Context<Self>, link_id: u64, chunk: wire::BlobChunk) {
        let key = (link_id, chunk.digest);
        let now = Instant::now();
        let t = &mut self.transfer;
        let Some(r) = t.receiving.get_mut(&key) else {
            log::debug!("blob {}: a chunk nobody asked for; dropped", key.1);
            return;
        };
        t.link_rx.insert(link_id, now);
        r.last_progress = now;
        if r.writer.is_none() && !r.finishing {
            if chunk.offset != 0 || chunk.total > MAX_BLOB {
                return self.receive_failed(
                    link_id,
                    &key.1,
                    "the first chunk is not at offset 0 or the blob is too large",
                );
            }
            match t.cas.writer(&key.1) {
                Ok(w) => r.writer = Some(w),
                Err(e) => return self.receive_failed(link_id, &key.1, &e.to_string()),
            }
            r.total = chunk.total;
        }
        let Some(writer) = r.writer.as_mut() else {
            return self.receive_failed(link_id, &key.1, "a chunk after the last one");
        };
        let len = chunk.data.len() as u64;
        if chunk.total != r.total
            || chunk.offset != writer.written()
            || chunk.data.len() > CHUNK
            || writer.written() + len > r.total
        {
            return self.receive_failed(link_id, &key.1, "chunk out of order");
        }
        if let Err(e) = writer.write(&chunk.data) {
            return self.receive_failed(link_id, &key.1, &e.to_string());
        }
        let written = writer.written();
        if written < r.total {
            return self.send(link_id, MeshMessage::BlobAck { digest: key.1, offset: written });
        }
        // The whole blob is here: the digest check and the sync run off this thread.
        r.finishing = true;
        let Some(writer) = r.writer.take() else { return };
        self.send(link_id, MeshMessage::BlobAck { digest: key.1.clone(), offset: written });
        let finish = async move { actix_rt::task::spawn_blocking(move || writer.finish()).await };
        ctx.spawn(finish.into_actor(self).map(move |done, act, ctx| {
            let (link_id, digest) = key;
            // Dropped meanwhile (the link closed): the blob is stored if it was good, and
            // nobody on that link waits for it any more.
            if act.transfer.receiving.remove(&(link_id, digest.clone())).is_none() {
                return;
            }
            match done {
                Ok(Ok(size)) => {
                    log::debug!("blob {digest} ({size} bytes) received over mesh link {link_id}");
                    act.blob_arrived(ctx, &digest)
                }
                Ok(Err(e)) => act.blob_failed(link_id, &digest, &e.to_string()),
                Err(e) => act.blob_failed(link_id, &digest, &e.to_string()),
            }
            act.ask_for_more();
        }));
    }

    /// Abandons a blob being received: its temporary file goes, the sender is told to stop,
    /// and whatever waited for it fails.
    fn receive_failed(&mut self, link_id: u64, digest: &str, why: &str) {
        log::warn!("blob {digest} from mesh link {link_id}: {why}; abandoned");
        self.transfer.receiving.remove(&(link_id, digest.to_string()));
        self.send(link_id, MeshMessage::BlobAck { digest: digest.to_string(), offset: u64::MAX });
        self.blob_failed(link_id, digest, why);
        self.ask_for_more();
    }

    /// Drops transfers that made no progress for [`STALL`] (called every tick).
    pub(super) fn expire_transfers(&mut self) {
        let t = &mut self.transfer;
        let now = Instant::now();
        let stalled = |last: Instant, link: u64, link_rx: &HashMap<u64, Instant>| {
            let last = link_rx.get(&link).map_or(last, |rx| last.max(*rx));
            now.duration_since(last) > STALL
        };
        let dead: Vec<(u64, String)> = t
            .receiving
            .iter()
            .filter(|((link, _), r)| !r.finishing && stalled(r.last_progress, *link, &t.link_rx))
            .map(|(k, _)| k.clone())
            .collect();
        let idle: Vec<(u64, String)> = t
            .sending
            .iter()
            .filter(|(_, s)| now.duration_since(s.last_progress) > STALL)
            .map(|(k, _)| k.clone())
            .collect();
        for (link_id, digest) in idle {
            log::warn!("blob {digest} for mesh link {link_id}: no acknowledgement for {STALL:?}; dropped");
            self.transfer.sending.remove(&(link_id, digest));
            self.start_sends(link_id);
        }
        for (link_id, digest) in dead {
            self.receive_failed(link_id, &digest, &format!("no data for {STALL:?}"));
        }
    }

    /// A link closed: everything moving over it stops (temporary files are deleted) and
    /// whatever waited for its blobs fails.
    /// Whether blobs are moving (or queued to move) over `link_id`.
    pub(super) fn transfers_on(&self, link_id: u64) -> bool {
        let t = &self.transfer;
        t.sending.keys().any(|(l, _)| *l == link_id)
            || t.receiving.keys().any(|(l, _)| *l == link_id)
            || t.send_queue.contains_key(&link_id)
            || t.wanted.members.iter().any(|(l, _)| *l == link_id)
    }

    pub(super) fn drop_link_transfers(&mut self, link_id: u64) {
        let t = &mut self.transfer;
        t.sending.retain(|(l, _), _| *l != link_id);
        t.send_queue.remove(&link_id);
        t.link_rx.remove(&link_id);
        t.wanted.retain(|(l, _)| *l != link_id);
        let lost: Vec<String> = t.receiving.keys().filter(|(l, _)| *l == link_id).map(|(_, d)| d.clone()).collect();
        t.receiving.retain(|(l, _), _| *l != link_id);
        for digest in lost {
            self.blob_failed(link_id, &digest, "the link closed");
        }
        self.ask_for_more();
    }
}
