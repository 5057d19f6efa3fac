//! Membership: who belongs to the mesh (the signed roster), joining with a token, admitting a
//! joiner (mesh key holder only), adopting a mesh after a join, and leaving.

use actix::prelude::*;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::bridge::{self, frame_batches};
use super::join::{self, Admission, Initiator, JoinReply, Responder};
use super::roster::{self, JoinToken, MeshInfo, MeshKey, RosterEntry, RosterError, TokenInfo};
use super::sync::split_batch;
use super::{MeshActor, Peer, SYNC_BATCH};
use crate::events::Event;
use crate::ledger::{LedgerFilter, LedgerHandle};
use crate::store::StoreHandle;
use crate::wire::{self, LedgerEntryType, MeshMessage, NodeId, NodeState, Role};

/// What a removed node says, at start, when it learns it, and in `buildnet pool status`.
pub const REMOVED: &str = "this node was removed from its mesh by the mesh key holder, and its members refuse its \
                       links: `buildnet node leave` makes it a mesh of one, which a new join token can admit again";

impl MeshActor {
    /// The mesh admin re-signs its own entry when its address changed.
    pub(super) async fn refresh_own_entry(&mut self) -> Result<(), RosterError> {
        let (Some(key), Some(mesh)) = (&self.mesh_key, self.mesh.clone()) else { return Ok(()) };
        let me = self.me.clone();
        let current = self.store.run(move |c| roster::load_roster(c).map_err(store_error)).await?;
        let mine = current.into_iter().find(|(e, _)| e.node_id == me).map(|(e, _)| e);
        if mine.as_ref().is_some_and(|e| e.address == self.address && e.name == self.name && !e.revoked) {
            return Ok(());
        }
        let mut entry = self.own_admin_entry();
        key.sign(&mut entry);
        self.store.run(move |c| roster::save_entry(c, &mesh, &entry).map(|_| ()).map_err(store_error)).await?;
        Ok(())
    }

    /// This node's roster entry as the holder of its mesh's key (unsigned).
    fn own_admin_entry(&self) -> RosterEntry {
        self.entry_for(
            self.me.clone(),
            self.name.clone(),
            Role::Admin,
            wire::hex(&self.identity.public_key()),
            wire::hex(&self.noise_public),
            self.address.clone(),
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn entry_for(
        &self,
        node_id: NodeId,
        name: String,
        role: Role,
        ed_public: String,
        noise_public: String,
        address: String,
    ) -> RosterEntry {
        RosterEntry {
            node_id,
            name,
            role,
            ed_public,
            noise_public,
            address,
            issued_at_ms: wire::now_ms(),
            revoked: false,
            signature: String::new(),
        }
    }

    pub(super) async fn reload_roster(&mut self) -> Result<(), RosterError> {
        let roster = self.store.run(|c| roster::load_roster(c).map_err(store_error)).await?;
        self.take_roster(roster);
        // Who left is in the ledger, not the roster: read again at start, a member that left is
        // not listed again (offline), nor counted as one that the mesh key holder's leaving or a
        // join to another mesh must wait for.
        let filter = LedgerFilter { types: vec![LedgerEntryType::NodeLeft], limit: 10_000, ..Default::default() };
        let left = self.ledger.query(filter).await?;
        self.note_departures(&left);
        Ok(())
    }

    /// Takes the stored roster as this node's view of the members (and of itself).
    fn take_roster(&mut self, roster: Vec<(RosterEntry, String)>) {
        for (entry, address) in roster {
            if entry.node_id == self.me {
                self.take_own_entry(entry);
                continue;
            }
            match self.peers.get_mut(&entry.node_id) {
                Some(p) => p.set_entry(entry),
                None => {
                    self.peers.insert(entry.node_id.clone(), Peer::new(entry, address));
                }
            }
        }
        self.apply_topology();
    }

    pub(super) fn on_roster(&mut self, ctx: &mut Context<Self>, link_id: u64, mut entries: Vec<RosterEntry>) {
        let Some(mesh) = self.mesh.clone() else { return };
        // A member holding an older entry of ours missed our admission again (it dismisses us
        // for a removal since undone): ours goes back on the link the old one came on.
        if let Some(own) = &self.own_entry {
            if entries.iter().any(|e| e.node_id == self.me && e.issued_at_ms < own.issued_at_ms) {
                self.send(link_id, MeshMessage::Roster { entries: vec![own.clone()] });
            }
        }
        // Entries held already are not checked again (a signature check each, on every link).
        entries.retain(|e| {
            let held = if e.node_id == self.me {
                self.own_entry.as_ref()
            } else {
                self.peers.get(&e.node_id).map(|p| &p.entry)
            };
            held != Some(e)
        });
        if entries.is_empty() {
            return;
        }
        let store = self.store.clone();
        ctx.spawn(
            async move {
                store
                    .run(move |c| {
                        let mut fresh = Vec::new();
                        for e in entries {
                            match roster::save_entry(c, &mesh, &e) {
                                Ok(true) => fresh.push(e),
                                Ok(false) => {}
                                Err(err) => log::warn!("roster entry refused: {err}"),
                            }
                        }
                        Ok(fresh)
                    })
                    .await
            }
            .into_actor(self)
            .map(|fresh, act, _| act.adopt_entries(fresh.unwrap_or_default())),
        );
    }

    /// Takes roster entries this node has just verified and stored as its view: passed on to
    /// every link (in a grid not every member hears the admitting node, and entries a peer holds
    /// already stop there), then the peer table. A member whose entry is now revoked is removed:
    /// its link is closed and it is shown offline, "removed".
    fn adopt_entries(&mut self, fresh: Vec<RosterEntry>) {
        if fresh.is_empty() {
            return;
        }
        roster_messages(fresh.clone()).into_iter().for_each(|m| self.broadcast(m));
        let mut removed = false;
        for e in fresh {
            if e.node_id == self.me {
                self.take_own_entry(e);
                continue;
            }
            let (id, revoked) = (e.node_id.clone(), e.revoked);
            let was_member = self.peers.get(&id).is_some_and(|p| !p.entry.revoked);
            match self.peers.get_mut(&id) {
                Some(p) => p.set_entry(e),
                None => {
                    let address = e.address.clone();
                    self.peers.insert(id.clone(), Peer::new(e, address));
                }
            }
            if revoked && was_member {
                self.member_removed(&id);
                removed = true;
            }
        }
        self.apply_topology();
        if removed {
            self.publish_peers();
        }
    }

    /// A member was removed (its revoked entry is in the peer table): its link is closed, and
    /// pages and subscribers are told it is offline, "removed".
    fn member_removed(&mut self, id: &NodeId) {
        self.member_gone(id, "removed");
        self.peers_changed.set(true);
    }

    /// This node's own roster entry, at start or as received; a revoked one is said.
    fn take_own_entry(&mut self, entry: RosterEntry) {
        if entry.revoked {
            log::warn!("{REMOVED}");
        }
        self.role = entry.role;
        self.own_entry = Some(entry);
    }

    /// A member that is no longer one (it left, or was removed): its link is closed, and pages
    /// and subscribers are told it is offline, with why.
    fn member_gone(&mut self, id: &NodeId, why: &str) {
        if let Some(link) = self.peers.get(id).and_then(|p| p.link).and_then(|l| self.links.get(&l)) {
            link.addr.do_send(bridge::Close);
        }
        log::info!("{id} is no longer a member of the mesh ({why})");
        self.events.publish(Event::NodeStatus {
            node_id: id.clone(),
            status: NodeState::Offline,
            reason: Some(why.into()),
        });
    }

    pub(super) async fn all_entries(store: &StoreHandle) -> Vec<RosterEntry> {
        store
            .run(|c| roster::load_roster(c).map_err(store_error))
            .await
            .map(|r| r.into_iter().map(|(e, _)| e).collect())
            .unwrap_or_default()
    }
}

/// Of what a dismissed member sent, the entry that admits it again: its own, unrevoked, newer than
/// the revoked one this node holds (the newest such). Its signature is checked when stored.
pub(super) fn admits_again(held: &RosterEntry, sent: Vec<RosterEntry>) -> Option<RosterEntry> {
    sent.into_iter()
        .filter(|e| e.node_id == held.node_id && !e.revoked && e.issued_at_ms > held.issued_at_ms)
        .max_by_key(|e| e.issued_at_ms)
}

/// Roster entries as messages that each fit a frame (a whole roster of ~150 members does not).
fn roster_messages(entries: Vec<RosterEntry>) -> Vec<MeshMessage> {
    frame_batches(entries, |e| format!("roster entry of {}", e.node_id))
        .into_iter()
        .map(|entries| MeshMessage::Roster { entries })
        .collect()
}

pub(super) fn store_error(e: RosterError) -> crate::store::StoreError {
    match e {
        RosterError::Store(s) => s,
        other => crate::store::StoreError::Corrupt(other.to_string()),
    }
}

/// Creates a join token (mesh admin only).
#[derive(Message)]
#[rtype(result = "Result<(String, TokenInfo), RosterError>")]
pub struct CreateToken {
    pub role: Role,
    pub ttl_ms: u64,
    pub created_by: String,
}

impl Handler<CreateToken> for MeshActor {
    type Result = ResponseFuture<Result<(String, TokenInfo), RosterError>>;

    fn handle(&mut self, msg: CreateToken, _: &mut Context<Self>) -> Self::Result {
        let (mesh, admin, store) = (self.mesh.clone(), self.mesh_key.is_some(), self.store.clone());
        Box::pin(async move {
            let mesh = mesh.filter(|_| admin).ok_or(RosterError::NotMeshAdmin)?;
            store
                .run(move |c| {
                    roster::create_token(c, &mesh, msg.role, msg.ttl_ms, &msg.created_by).map_err(store_error)
                })
                .await
                .map_err(RosterError::from)
        })
    }
}

/// Why a join was refused, as the summary in the ledger counts it: fixed words, never text the
/// outsider sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    UnknownToken,
    UsedToken,
    ExpiredToken,
    WrongSecret,
    BadRequest,
    RateLimited,
    NameTaken,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::UnknownToken => "unknown token",
            Refusal::UsedToken => "used token",
            Refusal::ExpiredToken => "expired token",
            Refusal::WrongSecret => "wrong token secret",
            Refusal::BadRequest => "malformed join",
            Refusal::RateLimited => "rate limited",
            Refusal::NameTaken => "name taken",
        }
    }

    pub(super) fn of(e: &RosterError) -> Refusal {
        match e {
            RosterError::UnknownToken | RosterError::MalformedToken | RosterError::WrongMesh { .. } => {
                Refusal::UnknownToken
            }
            RosterError::UsedToken => Refusal::UsedToken,
            RosterError::ExpiredToken => Refusal::ExpiredToken,
            RosterError::NameTaken { .. } => Refusal::NameTaken,
            _ => Refusal::BadRequest,
        }
    }
}

/// Refused joins go to the ledger as one summary per source per interval, never one entry per
/// attempt: a flood from outside costs a counter, not the chain.
pub const REFUSAL_SUMMARY_EVERY: Duration = Duration::from_secs(10);
/// Sources tracked per interval; the rest are counted under one "other sources" row.
const MAX_SOURCES: usize = 256;

#[derive(Default)]
pub(super) struct RefusedJoins {
    by_source: BTreeMap<String, RefusalTally>,
    since: Option<Instant>,
}

struct RefusalTally {
    attempts: u64,
    reasons: BTreeMap<Refusal, u64>,
    first_ms: u64,
    last_ms: u64,
}

impl RefusedJoins {
    fn note(&mut self, source: String, reason: Refusal) {
        let source = if self.by_source.len() >= MAX_SOURCES && !self.by_source.contains_key(&source) {
            "other sources".to_string()
        } else {
            source
        };
        let now = wire::now_ms();
        let tally = self.by_source.entry(source).or_insert(RefusalTally {
            attempts: 0,
            reasons: BTreeMap::new(),
            first_ms: now,
            last_ms: now,
        });
        tally.attempts += 1;
        *tally.reasons.entry(reason).or_default() += 1;
        tally.last_ms = now;
        self.since.get_or_insert_with(Instant::now);
    }

    /// The summaries due: one ledger entry's data per source, once an interval has passed.
    fn take_due(&mut self) -> Vec<serde_json::Value> {
        if self.since.is_none_or(|t| t.elapsed() < REFUSAL_SUMMARY_EVERY) {
            return Vec::new();
        }
        self.since = None;
        std::mem::take(&mut self.by_source)
            .into_iter()
            .map(|(source, t)| {
                let reasons: serde_json::Map<String, serde_json::Value> =
                    t.reasons.into_iter().map(|(r, n)| (r.as_str().to_string(), n.into())).collect();
                serde_json::json!({ "source": source, "attempts": t.attempts, "reasons": reasons, "first_ms": t.first_ms, "last_ms": t.last_ms })
            })
            .collect()
    }
}

impl MeshActor {
    /// Writes the refused-join summaries that are due (called on every tick).
    pub(super) fn summarise_refusals(&mut self) {
        let due = self.refused.take_due();
        if due.is_empty() {
            return;
        }
        let ledger = self.ledger.clone();
        actix::spawn(async move {
            for data in due {
                if let Err(e) = ledger.append(LedgerEntryType::JoinRefused, data).await {
                    log::warn!("recording refused joins: {e}");
                }
            }
        });
    }
}

/// Counts a refused join from `source` (an IP address).
#[derive(Message)]
#[rtype(result = "()")]
pub struct NoteRefusal {
    pub source: String,
    pub reason: Refusal,
}

impl Handler<NoteRefusal> for MeshActor {
    type Result = ();

    fn handle(&mut self, msg: NoteRefusal, _: &mut Context<Self>) {
        self.refused.note(msg.source, msg.reason);
    }
}

/// Starts the holder's side of a join (mesh key holder only).
#[derive(Message)]
#[rtype(result = "Result<Responder, RosterError>")]
pub struct OpenJoin;

impl Handler<OpenJoin> for MeshActor {
    type Result = Result<Responder, RosterError>;

    fn handle(&mut self, _: OpenJoin, _: &mut Context<Self>) -> Self::Result {
        let mesh = self.mesh.as_ref().filter(|_| self.mesh_key.is_some()).ok_or(RosterError::NotMeshAdmin)?;
        Responder::new(&self.noise_private, &mesh.mesh_id).map_err(|e| RosterError::Io(e.to_string()))
    }
}

/// The stored hash of a token a join names, if it can still be spent.
#[derive(Message)]
#[rtype(result = "Result<String, RosterError>")]
pub struct TokenHash {
    pub id: String,
}

impl Handler<TokenHash> for MeshActor {
    type Result = ResponseFuture<Result<String, RosterError>>;

    fn handle(&mut self, msg: TokenHash, _: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move { store.run(move |c| Ok(roster::usable_token(c, &msg.id))).await? })
    }
}

/// Admits a node whose join proved the token (mesh key holder only): spends the token, signs
/// its roster entry, records `NodeJoined`, and answers with the proof and the roster.
#[derive(Message)]
#[rtype(result = "Result<JoinReply, RosterError>")]
pub struct Admit {
    pub token_id: String,
    pub request: join::JoinRequest,
    /// The joiner's Noise static key, proven by the handshake.
    pub noise_public: [u8; 32],
    pub handshake_hash: Vec<u8>,
}

impl Handler<Admit> for MeshActor {
    type Result = ResponseActFuture<Self, Result<JoinReply, RosterError>>;

    fn handle(&mut self, msg: Admit, _: &mut Context<Self>) -> Self::Result {
        let req = msg.request;
        // Before the token is spent: a joiner told to choose another name can use it again. A
        // name being admitted right now counts as taken (two joins at once under one name).
        let taken = self.member_named(&req.name).or_else(|| self.admitting.get(&req.name).cloned());
        if let Some(holder) = taken.filter(|id| *id != req.node_id) {
            return Box::pin(fut::ready(Err(RosterError::NameTaken {
                name: req.name.clone(),
                holder: holder.to_string(),
            })));
        }
        self.admitting.insert(req.name.clone(), req.node_id.clone());
        let admitted_name = req.name.clone();
        let store = self.store.clone();
        let mesh = self.mesh.clone().filter(|_| self.mesh_key.is_some());
        let unsigned = self.entry_for(
            req.node_id.clone(),
            req.name.clone(),
            Role::Builder,
            req.ed_public.clone(),
            wire::hex(&msg.noise_public),
            req.address.clone(),
        );
        let (me, token_id, joiner) = (self.me.clone(), msg.token_id, req.node_id.clone());
        Box::pin(
            async move {
                let mesh = mesh.ok_or(RosterError::NotMeshAdmin)?;
                let role = store.run(move |c| Ok(roster::redeem_token(c, &token_id, &joiner))).await??;
                Ok::<_, RosterError>((mesh, role))
            }
            .into_actor(self)
            .then(move |checked, act, _| {
                let signed = checked.and_then(|(mesh, role)| {
                    let key = act.mesh_key.as_ref().ok_or(RosterError::NotMeshAdmin)?;
                    let mut entry = unsigned;
                    entry.role = role;
                    key.sign(&mut entry);
                    let proof = wire::hex(&key.sign_bytes(&join::proof_bytes(&msg.handshake_hash)));
                    Ok((mesh, entry, proof))
                });
                let (store, ledger) = (act.store.clone(), act.ledger.clone());
                fut::wrap_future(async move {
                    let (mesh, entry, proof) = signed?;
                    let (m, e) = (mesh.clone(), entry.clone());
                    store.run(move |c| roster::save_entry(c, &m, &e).map(|_| ()).map_err(store_error)).await?;
                    let data = serde_json::json!({ "node_id": entry.node_id, "node_name": entry.name, "role": entry.role, "address": entry.address, "admitted_by": me });
                    ledger.append(LedgerEntryType::NodeJoined, data).await?;
                    let roster = MeshActor::all_entries(&store).await;
                    Ok((JoinReply::Admitted { mesh, proof, roster }, entry))
                })
            })
            .map(move |result: Result<(JoinReply, RosterEntry), RosterError>, act, _| {
                act.admitting.remove(&admitted_name);
                let (reply, entry) = result?;
                let id = entry.node_id.clone();
                let address = entry.address.clone();
                act.peers.insert(id, Peer::new(entry.clone(), address));
                act.broadcast(MeshMessage::Roster { entries: vec![entry] });
                Ok(reply)
            }),
        )
    }
}

/// Starts this node's side of a join with a token.
#[derive(Message)]
#[rtype(result = "Result<(Initiator, Vec<u8>), RosterError>")]
pub struct StartJoin {
    pub token: JoinToken,
}

/// Whether this node may join the mesh a token is for: not one it is in, and not another while
/// it shares its own with other nodes — joining drops its mesh and, if it holds it, the mesh key,
/// after which no node could ever be admitted to that mesh again. A mesh of one (a new node, or
/// one that left) may be given up.
#[derive(Message)]
#[rtype(result = "Result<(), RosterError>")]
pub struct CanJoin {
    pub mesh_id: String,
}

impl Handler<CanJoin> for MeshActor {
    type Result = Result<(), RosterError>;

    fn handle(&mut self, msg: CanJoin, _: &mut Context<Self>) -> Self::Result {
        self.may_join(&msg.mesh_id)
    }
}

impl MeshActor {
    fn may_join(&self, mesh_id: &str) -> Result<(), RosterError> {
        // Counted as `Leave` counts them: revoked members are no longer in the mesh.
        let others = self.peers.values().filter(|p| !p.entry.revoked).count();
        match &self.mesh {
            Some(m) if self.removed() => Err(RosterError::Removed(m.mesh_id.clone())),
            Some(m) if m.mesh_id == mesh_id => Err(RosterError::AlreadyMember(m.mesh_id.clone())),
            // Leaving first is no way out for the key holder: say so rather than advise it.
            Some(m) if others > 0 && self.mesh_key.is_some() => {
                Err(RosterError::HoldsMeshKey { mesh: m.mesh_id.clone(), others })
            }
            Some(m) if others > 0 => Err(RosterError::InAnotherMesh { mesh: m.mesh_id.clone(), others }),
            _ => Ok(()),
        }
    }
}

impl Handler<StartJoin> for MeshActor {
    type Result = Result<(Initiator, Vec<u8>), RosterError>;

    fn handle(&mut self, msg: StartJoin, _: &mut Context<Self>) -> Self::Result {
        self.may_join(&msg.token.mesh_id)?;
        Initiator::start(
            msg.token,
            self.identity.clone(),
            self.name.clone(),
            self.address.clone(),
            (&self.noise_private, self.noise_public),
        )
        .map_err(|e| RosterError::Io(e.to_string()))
    }
}

/// Adopts the mesh and roster a verified join admitted us into.
#[derive(Message)]
#[rtype(result = "Result<MeshInfo, RosterError>")]
pub struct AcceptJoin {
    pub admission: Admission,
}

impl Handler<AcceptJoin> for MeshActor {
    type Result = ResponseActFuture<Self, Result<MeshInfo, RosterError>>;

    fn handle(&mut self, msg: AcceptJoin, _: &mut Context<Self>) -> Self::Result {
        // Again, now: this node may have admitted a member while its own join was under way,
        // and adopting the other mesh drops its mesh key.
        if let Err(e) = self.may_join(&msg.admission.mesh.mesh_id) {
            return Box::pin(fut::ready(Err(e)));
        }
        let (store, data_dir, me) = (self.store.clone(), self.data_dir.clone(), self.me.clone());
        Box::pin(
            async move {
                let Admission { mesh, roster: entries } = msg.admission;
                let m = mesh.clone();
                store
                    .run(move |c| {
                        roster::save_mesh(c, &m).map_err(store_error)?;
                        for e in &entries {
                            roster::save_entry(c, &m, e).map_err(store_error)?;
                        }
                        Ok(())
                    })
                    .await?;
                // Our own mesh key, if we had made one, belongs to a mesh we no longer are in.
                let _ = std::fs::remove_file(data_dir.join(roster::MESH_KEY_FILE));
                log::info!("{me} joined mesh {}", mesh.mesh_id);
                Ok(mesh)
            }
            .into_actor(self)
            .map(|result, act, _| {
                if let Ok(mesh) = &result {
                    act.mesh = Some(mesh.clone());
                    act.mesh_key = None;
                    act.peers.clear();
                    // An entry of the old mesh (revoked, if it was removed from it) is no longer this node's.
                    act.own_entry = None;
                    for link in act.links.values() {
                        link.addr.do_send(bridge::Close);
                    }
                }
                result
            }),
        )
    }
}

/// Leaves the mesh: tells every peer, records `NodeLeft`, and becomes a mesh of one again.
#[derive(Message)]
#[rtype(result = "Result<(), RosterError>")]
pub struct Leave;

impl Handler<Leave> for MeshActor {
    type Result = ResponseActFuture<Self, Result<(), RosterError>>;

    fn handle(&mut self, _: Leave, _: &mut Context<Self>) -> Self::Result {
        let others = self.peers.values().filter(|p| !p.entry.revoked).count();
        if self.mesh_key.is_some() && others > 0 {
            return Box::pin(fut::ready(Err(RosterError::Io(
                "this node holds the mesh key and other nodes depend on it; it cannot leave its own mesh \
                 (members that are gone for good are removed with `buildnet node remove`)"
                    .into(),
            ))));
        }
        let (ledger, store, data_dir, me) =
            (self.ledger.clone(), self.store.clone(), self.data_dir.clone(), self.me.clone());
        let mesh_id = self.mesh.as_ref().map(|m| m.mesh_id.clone());
        // Its own entry in the new mesh, as a start writes it (`refresh_own_entry`): without
        // it, a node admitted to the new mesh got a roster without its admitter and refused
        // that node's links for ever.
        let mut own = self.own_admin_entry();
        Box::pin(
            async move {
                let left = ledger
                    .append(
                        LedgerEntryType::NodeLeft,
                        serde_json::json!({ "node_id": me, "mesh_id": mesh_id, "reason": "left" }),
                    )
                    .await?;
                // Our recent chain, so peers get the NodeLeft entry before the links close
                // (entries they hold already are skipped as duplicates).
                let recent = ledger.entries_after(me, left.seq.saturating_sub(SYNC_BATCH as u64), SYNC_BATCH).await?;
                let key = MeshKey::create(&data_dir)?;
                let info = key.info();
                key.sign(&mut own);
                let (saved, entry) = (info.clone(), own.clone());
                store
                    .run(move |c| {
                        roster::save_mesh(c, &saved).map_err(store_error)?;
                        roster::save_entry(c, &saved, &entry).map(|_| ()).map_err(store_error)
                    })
                    .await?;
                Ok((key, info, recent, own))
            }
            .into_actor(self)
            .map(
                |result: Result<(MeshKey, MeshInfo, Vec<wire::LedgerEntry>, RosterEntry), RosterError>, act, _| {
                    let (key, info, recent, own) = result?;
                    for entries in split_batch(recent) {
                        act.broadcast(MeshMessage::LedgerEntries { entries, hop: 1 });
                    }
                    act.broadcast(MeshMessage::Leave { node_id: act.me.clone() });
                    for link in act.links.values() {
                        link.addr.do_send(bridge::Close);
                    }
                    act.peers.clear();
                    // Its entry of the new mesh; the old one (revoked, if it was removed) is gone.
                    act.own_entry = Some(own);
                    act.mesh = Some(info);
                    act.mesh_key = Some(key);
                    act.role = Role::Admin;
                    // At once: the pool, and with it `pool nodes`, showed the old peers online
                    // until the next periodic flush.
                    act.peers_changed.set(true);
                    act.flush_peers();
                    Ok(())
                },
            ),
        )
    }
}

/// Removes a member that cannot leave by itself — its machine or its data dir is lost — on the
/// node holding the mesh key: its roster entry is signed again, revoked, and goes to every
/// member, which closes its link and refuses it from then on (DESIGN: "revocation is a signed
/// roster entry too"); `NodeLeft` with reason `removed` records who removed it. Until then a
/// member that never came back kept the key holder from leaving or joining another mesh.
#[derive(Message)]
#[rtype(result = "Result<RosterEntry, RosterError>")]
pub struct Remove {
    pub node: NodeId,
    /// Who asked (an API key's actor), for the ledger.
    pub by: String,
}

impl Handler<Remove> for MeshActor {
    type Result = ResponseActFuture<Self, Result<RosterEntry, RosterError>>;

    fn handle(&mut self, msg: Remove, _: &mut Context<Self>) -> Self::Result {
        let refuse = |e: RosterError| -> Self::Result { Box::pin(fut::ready(Err(e))) };
        let (Some(key), Some(mesh)) = (&self.mesh_key, self.mesh.clone()) else {
            return refuse(RosterError::NotMeshAdmin);
        };
        if msg.node == self.me {
            return refuse(RosterError::RemoveSelf);
        }
        let Some(peer) = self.peers.get(&msg.node) else {
            return refuse(RosterError::UnknownMember(msg.node.to_string()));
        };
        if peer.entry.revoked {
            return refuse(RosterError::NoLongerMember(msg.node.to_string()));
        }
        // One removal of a member at a time: a second, asked while the first is stored, is
        // refused (both succeeded before, each with its `NodeLeft`). The signed entry reaches
        // the peer table, and with it any link, only once it is recorded and stored.
        if !self.removing.insert(msg.node.clone()) {
            return refuse(RosterError::RemovalUnderWay(msg.node.to_string()));
        }
        let mut entry = peer.entry.clone();
        let admitted_at_ms = entry.issued_at_ms;
        entry.revoked = true;
        // Newer than the entry it replaces, which every member keeps otherwise.
        entry.issued_at_ms = wire::now_ms().max(entry.issued_at_ms + 1);
        key.sign(&mut entry);
        let (store, ledger) = (self.store.clone(), self.ledger.clone());
        let saved = entry.clone();
        let mesh_id = mesh.mesh_id.clone();
        let node = msg.node.clone();
        let me = self.me.clone();
        Box::pin(
            async move {
                // The record first: a node stopped between the two has a `NodeLeft` for a
                // removal the next attempt completes, never a removal nobody recorded. That
                // attempt finds the record and does not write it again (a kill -9 between the
                // two left a second `NodeLeft` for one removal before).
                if !removal_recorded(&ledger, &me, &entry.node_id, &mesh_id, admitted_at_ms).await? {
                    // `admitted_at_ms` names the membership this removal ends (the roster
                    // entry it revokes), so a later attempt knows its own record by it.
                    let data = serde_json::json!({
                        "node_id": entry.node_id, "node_name": entry.name, "mesh_id": mesh_id,
                        "reason": "removed", "removed_by": msg.by, "admitted_at_ms": admitted_at_ms,
                    });
                    ledger.append(LedgerEntryType::NodeLeft, data).await?;
                }
                store.run(move |c| roster::save_entry(c, &mesh, &saved).map_err(store_error)).await?;
                Ok(entry)
            }
            .into_actor(self)
            .map(move |result: Result<RosterEntry, RosterError>, act, _| {
                act.removing.remove(&node);
                let entry = result?;
                act.adopt_entries(vec![entry.clone()]);
                // At once, for the caller's next `pool nodes`.
                act.flush_peers();
                Ok(entry)
            }),
        )
    }
}

/// Whether this node recorded the removal of `node` from `mesh_id` that ends the membership
/// its roster entry signed at `admitted_at_ms` began: a removal whose revoked roster entry was
/// never stored, because the node stopped between the two. The record names that entry; one
/// written before records did is taken by time (stamped since the admission, which a clock set
/// back between the two can fool). The newest of this node's `NodeLeft` entries are read: its
/// own leavings and the removals it made.
async fn removal_recorded(
    ledger: &LedgerHandle,
    me: &NodeId,
    node: &NodeId,
    mesh_id: &str,
    admitted_at_ms: u64,
) -> Result<bool, RosterError> {
    let filter = LedgerFilter {
        types: vec![LedgerEntryType::NodeLeft],
        origin: Some(me.clone()),
        limit: crate::ledger::MAX_PAGE,
        ..Default::default()
    };
    let recorded = ledger.query(filter).await?;
    Ok(recorded.iter().any(|e| {
        let this_membership = match e.data["admitted_at_ms"].as_u64() {
            Some(admitted) => admitted == admitted_at_ms,
            None => e.hlc.wall_ms >= admitted_at_ms,
        };
        e.data["node_id"] == node.as_str()
            && e.data["mesh_id"] == mesh_id
            && e.data["reason"] == "removed"
            && this_membership
    }))
}

/// Reloads the roster table into the peer table.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReloadRoster;

impl Handler<ReloadRoster> for MeshActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: ReloadRoster, _: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move { store.run(|c| roster::load_roster(c).map_err(store_error)).await }.into_actor(self).map(
            |roster, act, _| match roster {
                Ok(roster) => act.take_roster(roster),
                Err(e) => log::warn!("reloading the roster: {e}"),
            },
        ))
    }
}

impl MeshActor {
    /// A peer's first message on a link: remember where it can be reached now.
    /// A digest of every roster entry this node holds (its own included): equal digests mean
    /// equal rosters, so a new link exchanges entries only when they differ.
    pub(super) fn roster_digest(&self) -> String {
        let mut signed: Vec<(&NodeId, &str)> =
            self.peers.iter().map(|(id, p)| (id, p.entry.signature.as_str())).collect();
        if let Some(own) = &self.own_entry {
            signed.push((&own.node_id, own.signature.as_str()));
        }
        signed.sort();
        let mut hasher = blake3::Hasher::new();
        for (id, signature) in signed {
            hasher.update(id.as_str().as_bytes());
            hasher.update(signature.as_bytes());
        }
        hasher.finalize().to_hex().to_string()
    }

    pub(super) fn on_hello(&mut self, ctx: &mut Context<Self>, link_id: u64, from: NodeId, hello: wire::Hello) {
        if hello.your_advert_seq != self.advert_seq {
            self.send_own_advert(link_id);
        }
        if hello.roster_digest != self.roster_digest() {
            let store = self.store.clone();
            ctx.spawn(async move { MeshActor::all_entries(&store).await }.into_actor(self).map(
                move |entries, act, _| {
                    roster_messages(entries).into_iter().for_each(|m| act.send(link_id, m));
                },
            ));
        }
        let Some(peer) = self.peers.get_mut(&from) else { return };
        if *hello.address == *peer.address || hello.address.is_empty() {
            return;
        }
        peer.address = std::sync::Arc::from(hello.address.as_str());
        let (store, addr) = (self.store.clone(), hello.address);
        actix::spawn(async move {
            if let Err(e) = store.run(move |c| roster::save_address(c, &from, &addr).map_err(store_error)).await {
                log::warn!("saving a peer's address: {e}");
            }
        });
    }

    /// A peer leaves the mesh (only for itself), over its link.
    pub(super) fn on_leave(&mut self, from: NodeId, node_id: NodeId) {
        if node_id == from {
            self.mark_left(&from);
        }
    }

    /// Stored ledger entries: a `NodeLeft` its own node signed says it left. In a grid most
    /// members have no link to the leaver and never get its `Leave`; its entry reaches them all.
    /// An entry older than the member's roster entry is from before it was admitted again.
    pub(super) fn note_departures(&mut self, stored: &[wire::LedgerEntry]) {
        for entry in stored.iter().filter(|e| e.entry_type == LedgerEntryType::NodeLeft) {
            let admitted_after = self.peers.get(&entry.origin).is_none_or(|p| p.entry.issued_at_ms > entry.hlc.wall_ms);
            let this_mesh = self.mesh.as_ref().is_some_and(|m| entry.data["mesh_id"] == m.mesh_id.as_str());
            if entry.data["node_id"] == entry.origin.as_str() && this_mesh && !admitted_after {
                self.mark_left(&entry.origin.clone());
            }
        }
    }

    /// The member (this node included) that carries `name` now (its latest advert's name):
    /// names are what users pick nodes by (`--node beta:2`, `node remove beta`).
    fn member_named(&self, name: &str) -> Option<NodeId> {
        if *self.name == *name {
            return Some(self.me.clone());
        }
        self.peers.iter().filter(|(_, p)| !p.entry.revoked).find(|(_, p)| *p.name == *name).map(|(id, _)| id.clone())
    }

    /// `node` left: it is no longer a member here (its link, if any, is closed).
    fn mark_left(&mut self, node: &NodeId) {
        let Some(p) = self.peers.get_mut(node).filter(|p| !p.entry.revoked) else { return };
        p.entry.revoked = true;
        self.member_gone(node, "left");
        self.publish_peers();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::noise;

    /// What a dismissed member may send that is read: only a newer, unrevoked entry of its own.
    /// A node truly removed holds none (its unrevoked entries are older than the revocation),
    /// so what it sends — its old entry, copies of it, others' entries — is never stored.
    #[test]
    fn a_dismissed_member_is_read_again_only_with_a_newer_entry_of_its_own() {
        let entry = |node: &str, issued_at_ms: u64, revoked: bool| RosterEntry {
            node_id: NodeId::parse(node).expect("id"),
            name: "n".into(),
            role: Role::Builder,
            ed_public: "ab".repeat(32),
            noise_public: "cd".repeat(32),
            address: "mem://n".into(),
            issued_at_ms,
            revoked,
            signature: "ef".repeat(64),
        };
        let (me, other) = ("00000000000000aa", "00000000000000bb");
        let revoked = entry(me, 2_000, true);
        let old = entry(me, 1_000, false);
        let refused = [
            vec![],
            vec![old.clone(), old.clone(), old],
            vec![entry(me, 3_000, true)],
            vec![entry(other, 3_000, false)],
            vec![entry(me, 2_000, false)],
        ];
        for sent in refused {
            assert_eq!(admits_again(&revoked, sent.clone()), None, "{sent:?}");
        }
        let sent = vec![entry(me, 3_000, false), entry(me, 4_000, false), entry(other, 5_000, false)];
        assert_eq!(admits_again(&revoked, sent).map(|e| e.issued_at_ms), Some(4_000));
    }

    #[test]
    fn a_large_roster_crosses_in_messages_that_each_fit_a_frame() {
        let entry = |i: u64| RosterEntry {
            node_id: NodeId::parse(&format!("{i:016x}")).expect("id"),
            name: format!("sim-{i:03}"),
            role: Role::Builder,
            ed_public: "ab".repeat(32),
            noise_public: "cd".repeat(32),
            address: format!("sim://node-{i}"),
            issued_at_ms: 1_700_000_000_000 + i,
            revoked: false,
            signature: "ef".repeat(64),
        };
        let envelope =
            |body| wire::Envelope { v: 1, id: 1, from: NodeId::parse("0000000000000001").expect("id"), to: None, body };
        let roster: Vec<RosterEntry> = (1..=400).map(entry).collect();
        // What on_hello used to send: the whole roster as one message, larger than any frame, so
        // the link closed and the node it was meant to repair was cut off (issue 14).
        let whole = wire::encode(&envelope(MeshMessage::Roster { entries: roster.clone() })).expect("encodes");
        assert!(whole.len() > noise::MAX_PLAINTEXT, "{} bytes", whole.len());
        let messages = roster_messages(roster.clone());
        assert!(messages.len() > 1);
        let mut crossed = Vec::new();
        for m in messages {
            assert!(wire::encode(&envelope(m.clone())).expect("encodes").len() <= noise::MAX_PLAINTEXT);
            let MeshMessage::Roster { entries } = m else { panic!("a roster message") };
            crossed.extend(entries);
        }
        assert_eq!(crossed, roster, "every entry crosses, once, in order");
    }

    #[test]
    fn refusals_are_summarised_per_source_and_bounded() {
        let mut r = RefusedJoins::default();
        for _ in 0..300 {
            r.note("10.0.0.1".into(), Refusal::UnknownToken);
        }
        r.note("10.0.0.1".into(), Refusal::RateLimited);
        for i in 0..1000 {
            r.note(format!("10.1.{}.{}", i / 256, i % 256), Refusal::WrongSecret);
        }
        assert!(r.take_due().is_empty(), "nothing is written before the interval ends");
        r.since = Some(Instant::now() - REFUSAL_SUMMARY_EVERY);
        let due = r.take_due();
        assert_eq!(due.len(), MAX_SOURCES + 1, "one entry per source, the rest under 'other sources'");
        let first = due.iter().find(|d| d["source"] == "10.0.0.1").expect("flooder");
        assert_eq!(first["attempts"], 301);
        assert_eq!(first["reasons"]["unknown token"], 300);
        assert!(r.take_due().is_empty());
    }
}
