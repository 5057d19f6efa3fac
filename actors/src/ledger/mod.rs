//! The tamper-evident ledger: each node appends to its own hash chain, every entry hashed with
//! BLAKE3 over a canonical encoding and signed with the node's Ed25519 key.
//!
//! `LedgerActor` owns the `ledger` table on its own `SyncArbiter` thread and connection, opened
//! with `synchronous=FULL`: once `append` returns, the entry survives a crash. Appends are
//! committed in groups: every append waiting when the actor gets to them goes into one
//! transaction with one sync, and each is answered only after that commit (see [`Appends`]).
//! This file owns the actor, appending to this node's own chain, and `LedgerHandle`; the other
//! concerns live in `chain` (encoding, hashing, checking), `table` (the row layout), `query`
//! (the timeline's filters) and `sync` (peers' batches, heads, equivocation proofs).

mod chain;
mod query;
mod sync;
mod table;

use std::path::Path;
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use rusqlite::{Connection, OptionalExtension};
use tokio::sync::oneshot;

use crate::events::{Event, EventBus};
use crate::identity::Identity;
use crate::store::{self, Durability, StoreError};
use crate::wire::{self, Head, Hlc, LedgerEntry, LedgerEntryType, NodeId};

pub use chain::{
    canonical_bytes, check_entry, verify_all, BadEntry, ChainReport, Equivocation, Verify, VerifyReport, GENESIS_HASH,
};
pub use query::{LedgerFilter, Query, MAX_PAGE};
pub use sync::{advance_head, BatchError, EntriesAfter, Equivocators, Heads, InsertOutcome, InsertRemote};
use table::insert;

/// Owns the ledger table.
pub struct LedgerActor {
    conn: Option<Connection>,
    identity: Identity,
    /// Our chain's head: (seq, hash).
    head: Option<(u64, String)>,
    last_hlc: Hlc,
    /// Appends waiting for the next group commit (shared with every [`LedgerHandle`]).
    appends: Appends,
    /// Every chain's head, read once and then moved on by each commit (only this actor writes
    /// the ledger; see [`sync::advance_head`]). The mesh reads the heads every second; at 200
    /// simulated nodes reading them from SQLite, one query per origin, was a sixth of all CPU.
    /// Shared with every reader (the mesh each tick, every answer to an ask, the simulation's
    /// checks) rather than copied: 200 heads of 64-digit hashes per copy.
    heads: Option<Arc<Vec<Head>>>,
}

impl Actor for LedgerActor {
    type Context = SyncContext<Self>;
}

impl LedgerActor {
    fn conn(&mut self) -> Result<&mut Connection, StoreError> {
        self.conn.as_mut().ok_or(StoreError::Unavailable)
    }

    fn own_head(&mut self) -> Result<(u64, String), StoreError> {
        if let Some(head) = &self.head {
            return Ok(head.clone());
        }
        let origin = self.identity.node_id.to_string();
        let head = self
            .conn()?
            .query_row("SELECT seq, hash FROM ledger WHERE origin = ?1 ORDER BY seq DESC LIMIT 1", [origin], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
            })
            .optional()?
            .unwrap_or((0, GENESIS_HASH.to_string()));
        self.head = Some(head.clone());
        Ok(head)
    }
}

/// Next reading of the hybrid logical clock after `last`.
fn next_hlc(last: &mut Hlc) -> Hlc {
    let wall = wire::now_ms();
    *last = if wall > last.wall_ms {
        Hlc { wall_ms: wall, logical: 0 }
    } else {
        Hlc { wall_ms: last.wall_ms, logical: last.logical + 1 }
    };
    *last
}

/// An entry waiting to be appended, and where its answer goes once its group is committed.
struct PendingAppend {
    entry_type: LedgerEntryType,
    data: serde_json::Value,
    reply: oneshot::Sender<Result<LedgerEntry, StoreError>>,
}

/// How long an entry nobody waits for ([`Commit::Soon`]) may wait for company before its group
/// is committed. The executor records two entries per package and no package waits for their
/// sync; committed as they came, a 200-package build of `true` on this machine's disk made a
/// group of one or two entries per sync (each sync ~4 ms, plus its WAL pages and the wake-up of
/// the ledger thread). Holding them this long lets one sync serve a build's worth: at 20 ms a
/// 200-package build of `true` still made ~35 commits (each ~0.5 ms of CPU: its WAL frames —
/// the table's and three indexes' pages, written again by the next group — and the sync), at
/// 100 ms a handful. Nothing waits on them: a build's own last entry commits them at once.
pub const SOON: std::time::Duration = std::time::Duration::from_millis(100);

/// When a queued entry's group is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Someone waits for the answer: commit at once, with everything queued before it.
    Now,
    /// Nobody waits yet: commit within [`SOON`], or earlier with the next `Now` entry queued
    /// after it. Its place in the chain is fixed when it is queued either way, so an entry
    /// acknowledged later is never on disk without it.
    Soon,
}

/// Appends waiting for the ledger thread, in the order they were asked for (their chain order),
/// and whether the ledger thread has been woken for them.
#[derive(Default)]
struct Queue {
    entries: Vec<PendingAppend>,
    wake: Wake,
}

/// What the ledger thread has been asked to do about the queue since it last took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Wake {
    /// Nothing: the next entry must wake it.
    #[default]
    None,
    /// A [`CommitAppends`] is on its way after [`SOON`].
    Timer,
    /// A [`CommitAppends`] is on its way now.
    Now,
}

/// Appends waiting for the ledger thread. The first `Now` entry since the thread last took the
/// queue sends [`CommitAppends`]; the first `Soon` entry starts a timer that sends it after
/// [`SOON`]. Entries that arrive while a group is being committed go together into the next one,
/// so under load one sync serves many entries, and alone an entry that is waited for waits for
/// no timer.
#[derive(Clone, Default)]
pub struct Appends {
    queue: Arc<Mutex<Queue>>,
}

impl Appends {
    /// Queues an entry; answers what the caller must do to wake the ledger thread, if anything.
    fn push(&self, pending: PendingAppend, commit: Commit) -> Result<Wake, PendingAppend> {
        let Ok(mut q) = self.queue.lock() else { return Err(pending) };
        q.entries.push(pending);
        let wake = match (commit, q.wake) {
            (_, Wake::Now) | (Commit::Soon, Wake::Timer) => Wake::None,
            (Commit::Now, _) => Wake::Now,
            (Commit::Soon, Wake::None) => Wake::Timer,
        };
        if wake != Wake::None {
            q.wake = wake;
        }
        Ok(wake)
    }

    fn take(&self) -> Vec<PendingAppend> {
        self.queue
            .lock()
            .map(|mut q| {
                q.wake = Wake::None;
                std::mem::take(&mut q.entries)
            })
            .unwrap_or_default()
    }
}

/// Commits every queued append in one transaction (one sync) and answers each.
#[derive(Message)]
#[rtype(result = "()")]
struct CommitAppends;

impl Handler<CommitAppends> for LedgerActor {
    type Result = ();

    fn handle(&mut self, _: CommitAppends, _: &mut Self::Context) {
        self.commit_queued();
    }
}

impl LedgerActor {
    /// Commits every queued append as one group and answers each.
    fn commit_queued(&mut self) {
        let (group, replies): (Vec<_>, Vec<_>) =
            self.appends.take().into_iter().map(|p| ((p.entry_type, p.data), p.reply)).unzip();
        if group.is_empty() {
            return;
        }
        match self.commit_group(group) {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                log::warn!("committing {} ledger entries: {e}", replies.len());
                for reply in replies {
                    let again = match &e {
                        StoreError::Unavailable => StoreError::Unavailable,
                        other => StoreError::Corrupt(format!("the ledger did not commit: {other}")),
                    };
                    let _ = reply.send(Err(again));
                }
            }
        }
    }

    /// Chains and inserts a group of entries in one transaction, in order: each is hashed and
    /// signed onto the last one stored. An entry whose insert fails is answered with its error
    /// and the next takes its place in the chain. Only a successful commit makes them count (and
    /// moves the cached head); a failed commit leaves the chain as it was.
    fn commit_group(
        &mut self,
        group: Vec<(LedgerEntryType, serde_json::Value)>,
    ) -> Result<Vec<Result<LedgerEntry, StoreError>>, StoreError> {
        let mut head = self.own_head()?;
        let origin = self.identity.node_id.clone();
        let (identity, last_hlc) = (&self.identity, &mut self.last_hlc);
        let tx = self.conn.as_mut().ok_or(StoreError::Unavailable)?.transaction()?;
        let mut results = Vec::with_capacity(group.len());
        for (entry_type, data) in group {
            let (seq, prev_hash) = (head.0 + 1, head.1.clone());
            let hlc = next_hlc(last_hlc);
            let data = bounded(data);
            let hash = blake3::hash(&canonical_bytes(&origin, seq, &prev_hash, hlc, entry_type, &data));
            let signature = wire::hex(&identity.sign(hash.as_bytes()));
            let hash = hash.to_hex().to_string();
            let entry = LedgerEntry { origin: origin.clone(), seq, prev_hash, hlc, entry_type, data, hash, signature };
            match insert(&tx, &entry) {
                Ok(()) => {
                    head = (seq, entry.hash.clone());
                    results.push(Ok(entry));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        tx.commit()?;
        self.head = Some(head);
        if let Some(heads) = &mut self.heads {
            let heads = Arc::make_mut(heads);
            for entry in results.iter().flatten() {
                sync::advance_head(heads, entry);
            }
        }
        Ok(results)
    }
}

/// Largest `data` of an entry, MessagePack-encoded as sync sends it. With the rest of an entry
/// (ids, hashes, signature: under 1 KiB) it always fits one mesh frame, so no entry can stall
/// replication.
pub const MAX_DATA_BYTES: usize = 40 * 1024;
/// Strings longer than this are shortened when an entry's data must shrink.
const KEPT_TEXT: usize = 512;

fn encoded_len(data: &serde_json::Value) -> usize {
    rmp_serde::to_vec_named(data).map_or(usize::MAX, |v| v.len())
}

/// What stands in for a value dropped from an oversized entry: its size and BLAKE3 digest (of its
/// JSON), so the record still says what it was and can be matched against the original.
fn digest_of(value: &serde_json::Value) -> serde_json::Value {
    let json = value.to_string();
    let mut summary = serde_json::json!({ "omitted_bytes": json.len(), "blake3": blake3::hash(json.as_bytes()).to_hex().to_string() });
    if let Some(items) = value.as_array() {
        summary["count"] = items.len().into();
    }
    summary
}

/// An entry's data made to fit [`MAX_DATA_BYTES`]: unchanged when it fits; else its largest
/// fields are replaced one by one (long strings shortened, arrays and objects by their digest)
/// until it does; a value that still does not fit becomes its digest.
pub fn bounded(data: serde_json::Value) -> serde_json::Value {
    if encoded_len(&data) <= MAX_DATA_BYTES {
        return data;
    }
    let serde_json::Value::Object(mut fields) = data else { return digest_of(&data) };
    let mut by_size: Vec<(usize, String)> = fields.iter().map(|(k, v)| (encoded_len(v), k.clone())).collect();
    by_size.sort_unstable_by(|a, b| b.cmp(a));
    for (_, key) in by_size {
        let Some(value) = fields.get_mut(&key) else { continue };
        *value = match value {
            serde_json::Value::String(text) if text.len() > KEPT_TEXT => {
                let kept: String = text.chars().take(KEPT_TEXT).collect();
                serde_json::json!({ "text": format!("{kept}…"), "digest": digest_of(value) })
            }
            serde_json::Value::Array(_) | serde_json::Value::Object(_) => digest_of(value),
            _ => continue,
        };
        fields.insert("truncated".into(), true.into());
        if encoded_len(&serde_json::Value::Object(fields.clone())) <= MAX_DATA_BYTES {
            return serde_json::Value::Object(fields);
        }
    }
    digest_of(&serde_json::Value::Object(fields))
}

/// Closes the ledger's connection; used on shutdown.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Close;

impl Handler<Close> for LedgerActor {
    type Result = ();

    fn handle(&mut self, _: Close, _: &mut Self::Context) {
        // Appends asked for before the close are committed (and answered) first.
        self.commit_queued();
        store::close(self.conn.take());
    }
}

/// Typed front of the ledger actor.
#[derive(Clone)]
pub struct LedgerHandle {
    addr: Addr<LedgerActor>,
    appends: Appends,
    events: Option<EventBus>,
}

impl LedgerHandle {
    /// Opens the ledger's own connection (`synchronous=FULL`) and starts the actor.
    pub fn start(db_path: &Path, identity: Identity, events: Option<EventBus>) -> Result<LedgerHandle, StoreError> {
        let conn = store::open(db_path, Durability::Full)?;
        let slot = std::sync::Mutex::new(Some(conn));
        let appends = Appends::default();
        let queue = appends.clone();
        let addr = SyncArbiter::start(1, move || LedgerActor {
            conn: slot.lock().ok().and_then(|mut s| s.take()),
            identity: identity.clone(),
            head: None,
            last_hlc: Hlc { wall_ms: 0, logical: 0 },
            appends: queue.clone(),
            heads: None,
        });
        Ok(LedgerHandle { addr, appends, events })
    }

    /// Appends an entry to this node's chain; answers once the entry is committed (synced), in
    /// a group with whatever else was appended meanwhile.
    pub async fn append(
        &self,
        entry_type: LedgerEntryType,
        data: serde_json::Value,
    ) -> Result<LedgerEntry, StoreError> {
        self.submit(entry_type, data, Commit::Now).await
    }

    /// Queues an entry at once — its place in the chain is fixed by this call, before any later
    /// one — and returns what answers when it is committed (`commit` says how soon). A caller
    /// that need not wait for the sync (the executor, while the package runs) queues it with
    /// [`Commit::Soon`] and awaits it later or lets it be.
    pub fn submit(
        &self,
        entry_type: LedgerEntryType,
        data: serde_json::Value,
        commit: Commit,
    ) -> impl std::future::Future<Output = Result<LedgerEntry, StoreError>> + 'static {
        let queued = self.queue(entry_type, data, commit);
        let events = self.events.clone();
        async move {
            let entry = queued?.await.map_err(|_| StoreError::Unavailable)??;
            if let Some(events) = &events {
                events.publish_with(|| Event::LedgerEntry { entry: Box::new(entry.clone()) });
            }
            Ok(entry)
        }
    }

    fn queue(
        &self,
        entry_type: LedgerEntryType,
        data: serde_json::Value,
        commit: Commit,
    ) -> Result<oneshot::Receiver<Result<LedgerEntry, StoreError>>, StoreError> {
        if !self.addr.connected() {
            return Err(StoreError::Unavailable);
        }
        let (reply, answer) = oneshot::channel();
        match self.appends.push(PendingAppend { entry_type, data, reply }, commit) {
            Ok(Wake::Now) => self.addr.do_send(CommitAppends),
            Ok(Wake::Timer) => match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    let addr = self.addr.clone();
                    runtime.spawn(async move {
                        tokio::time::sleep(SOON).await;
                        addr.do_send(CommitAppends);
                    });
                }
                // No timer without a runtime: commit it now rather than leave it queued.
                Err(_) => self.addr.do_send(CommitAppends),
            },
            Ok(Wake::None) => {}
            Err(_) => return Err(StoreError::Unavailable),
        }
        Ok(answer)
    }

    pub async fn query(&self, filter: LedgerFilter) -> Result<Vec<LedgerEntry>, StoreError> {
        self.addr.send(Query { filter }).await.map_err(|_| StoreError::Unavailable)?
    }

    pub async fn verify(&self) -> Result<VerifyReport, StoreError> {
        self.addr.send(Verify).await.map_err(|_| StoreError::Unavailable)?
    }

    pub async fn heads(&self) -> Result<Arc<Vec<Head>>, StoreError> {
        self.addr.send(Heads).await.map_err(|_| StoreError::Unavailable)?
    }

    pub async fn entries_after(
        &self,
        origin: NodeId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        self.addr.send(EntriesAfter { origin, after_seq, limit }).await.map_err(|_| StoreError::Unavailable)?
    }

    pub async fn insert_remote(&self, entries: Vec<LedgerEntry>) -> Result<InsertOutcome, BatchError> {
        self.addr.send(InsertRemote { entries }).await.map_err(|_| BatchError::Store(StoreError::Unavailable))?
    }

    pub async fn equivocators(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.addr.send(Equivocators).await.map_err(|_| StoreError::Unavailable)?
    }

    /// Closes the ledger's connection; used on shutdown.
    pub async fn close(&self) {
        let _ = self.addr.send(Close).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DB_FILE;
    use rusqlite::params;

    /// A ledger on a fresh database whose roster holds its own node.
    pub(super) async fn fresh_ledger() -> (tempfile::TempDir, LedgerHandle, Identity) {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = Identity::from_secret(&[3; 32]);
        let path = dir.path().join(DB_FILE);
        let conn = store::open(&path, Durability::Normal).expect("open");
        conn.execute(
            "INSERT INTO nodes (id, name, address, public_key, capabilities, last_seen_at, joined_at) VALUES (?1, 'n', 'a', ?2, '{}', 0, 0)",
            params![id.node_id.as_str(), id.public_key().to_vec()],
        )
        .expect("roster row");
        let handle = LedgerHandle::start(&path, id.clone(), None).expect("start");
        (dir, handle, id)
    }

    #[actix::test]
    async fn entries_chain_and_verify() {
        let (_dir, ledger, id) = fresh_ledger().await;
        let a =
            ledger.append(LedgerEntryType::NodeJoined, serde_json::json!({"b": 1, "a": [1, 2]})).await.expect("append");
        let b = ledger.append(LedgerEntryType::KeyCreated, serde_json::json!({"name": "ci"})).await.expect("append");
        assert_eq!(a.seq, 1);
        assert_eq!(a.prev_hash, GENESIS_HASH);
        assert_eq!(b.prev_hash, a.hash);
        assert!(b.hlc > a.hlc);
        check_entry(&b, &a.hash, &id.public_key()).expect("checks");
        let report = ledger.verify().await.expect("verify");
        assert!(report.ok, "{report:?}");
        assert_eq!(report.chains[0].entries, 2);
    }

    #[actix::test]
    async fn concurrent_appends_are_chained_in_the_order_asked_and_kept_once_answered() {
        let (dir, ledger, id) = fresh_ledger().await;
        // Queued together (as the executor's entries are while packages run): one group commit
        // or several, each entry is answered with its place in the chain only once committed.
        let pending: Vec<_> = (0..200)
            .map(|i| {
                let commit = if i % 50 == 49 { Commit::Now } else { Commit::Soon };
                ledger.submit(LedgerEntryType::ResourceAllocated, serde_json::json!({ "i": i }), commit)
            })
            .collect();
        let answered = futures_util::future::join_all(pending).await;
        let entries: Vec<LedgerEntry> = answered.into_iter().map(|r| r.expect("append")).collect();
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.seq, i as u64 + 1, "chain order is the order asked");
            assert_eq!(e.data["i"], i);
        }
        let appended = ledger.append(LedgerEntryType::KeyCreated, serde_json::json!({})).await.expect("append");
        assert_eq!(appended.prev_hash, entries[199].hash);
        // What was answered is on disk: another connection, opened after, reads every entry.
        let conn = Connection::open(dir.path().join(DB_FILE)).expect("open");
        let report = verify_all(&conn, (id.node_id.to_string(), id.public_key())).expect("verify");
        assert!(report.ok, "{report:?}");
        assert_eq!(report.chains[0].entries, 201);
        assert_eq!(report.chains[0].head_hash, appended.hash);
    }

    #[actix::test]
    async fn an_entry_nobody_waits_for_is_committed_with_the_next_one_waited_for_or_soon() {
        let (dir, ledger, id) = fresh_ledger().await;
        let on_disk = || {
            let conn = Connection::open(dir.path().join(DB_FILE)).expect("open");
            let report = verify_all(&conn, (id.node_id.to_string(), id.public_key())).expect("verify");
            assert!(report.ok, "{report:?}");
            report.chains.first().map_or(0, |c| c.entries)
        };
        // Queued first, it is on disk once the entry waited for after it is answered, and
        // before it in the chain, long before its own delay is over.
        let lazy = ledger.submit(LedgerEntryType::ResourceAllocated, serde_json::json!({ "n": 1 }), Commit::Soon);
        let waited =
            ledger.append(LedgerEntryType::BuildCompleted, serde_json::json!({ "n": 2 })).await.expect("append");
        assert_eq!(on_disk(), 2, "both entries were committed when the second was answered");
        assert_eq!(waited.seq, 2);
        assert_eq!(lazy.await.expect("committed").seq, 1);
        // Alone, it is committed after the delay, without anything else asking.
        let lazy = ledger.submit(LedgerEntryType::ResourceReleased, serde_json::json!({ "n": 3 }), Commit::Soon);
        let entry = tokio::time::timeout(SOON * 50, lazy).await.expect("committed within the delay").expect("entry");
        assert_eq!((entry.seq, entry.prev_hash), (3, waited.hash));
        assert_eq!(on_disk(), 3);
    }

    #[actix::test]
    async fn a_closed_ledger_commits_what_was_queued_and_refuses_the_rest() {
        let (_dir, ledger, _) = fresh_ledger().await;
        let queued = ledger.submit(LedgerEntryType::KeyCreated, serde_json::json!({ "before": "close" }), Commit::Soon);
        ledger.close().await;
        assert_eq!(queued.await.expect("committed before the close").seq, 1);
        let late = ledger.append(LedgerEntryType::KeyCreated, serde_json::json!({})).await;
        assert!(matches!(late, Err(StoreError::Unavailable)), "{late:?}");
    }

    #[test]
    fn oversized_data_is_made_to_fit_and_says_what_it_dropped() {
        let packages: Vec<String> = (0..10_000).map(|i| format!("package-{i:05}")).collect();
        let data = serde_json::json!({ "build_id": "b1", "packages": packages, "note": "x".repeat(100_000) });
        let fitted = bounded(data.clone());
        assert!(encoded_len(&fitted) <= MAX_DATA_BYTES);
        assert_eq!(fitted["build_id"], "b1", "small fields stay");
        assert_eq!(fitted["truncated"], true);
        assert!(fitted["note"]["text"].as_str().expect("kept text").starts_with("xxx"));
        let json = data["packages"].to_string();
        assert_eq!(fitted["packages"]["count"], 10_000);
        assert_eq!(fitted["packages"]["blake3"], blake3::hash(json.as_bytes()).to_hex().to_string());
        let small = serde_json::json!({ "a": 1 });
        assert_eq!(bounded(small.clone()), small, "data that fits is untouched");
        let huge_text = serde_json::Value::String("y".repeat(1_000_000));
        assert!(encoded_len(&bounded(huge_text)) <= MAX_DATA_BYTES);
    }
}
