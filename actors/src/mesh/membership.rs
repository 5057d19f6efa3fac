//! Membership: who belongs to the mesh (the signed roster), joining with a token, admitting a
//! joiner (mesh key holder only), adopting a mesh after a join, and leaving.

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::bridge;
use super::roster::{self, MeshInfo, MeshKey, RosterEntry, RosterError, TokenInfo};
use super::sync::split_batch;
use super::{MeshActor, Peer, SYNC_BATCH};
use crate::events::Event;
use crate::identity;
use crate::store::StoreHandle;
use crate::wire::{self, LedgerEntryType, MeshMessage, NodeId, NodeState, Role};

/// A node asking to join, signed with its own key.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinRequest {
    pub token: String,
    pub node_id: NodeId,
    pub name: String,
    pub address: String,
    pub ed_public: String,
    pub noise_public: String,
    pub signature: String,
}

impl JoinRequest {
    fn signing_bytes(&self) -> Vec<u8> {
        serde_json::json!(["buildnet-join/1", self.token, self.node_id, self.name, self.address, self.noise_public])
            .to_string()
            .into_bytes()
    }

    fn verify(&self) -> bool {
        let key: Option<[u8; 32]> = wire::unhex(&self.ed_public).and_then(|b| b.try_into().ok());
        let sig: Option<[u8; 64]> = wire::unhex(&self.signature).and_then(|b| b.try_into().ok());
        match (key, sig) {
            (Some(k), Some(s)) => {
                NodeId::from_public_key(&k) == self.node_id && identity::verify(&k, &self.signing_bytes(), &s)
            }
            _ => false,
        }
    }
}

/// The admin node's answer to a join.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinResponse {
    pub mesh: MeshInfo,
    pub roster: Vec<RosterEntry>,
}

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
        let mut entry = self.entry_for(
            self.me.clone(),
            self.name.clone(),
            Role::Admin,
            wire::hex(&self.identity.public_key()),
            wire::hex(&self.noise_public),
            self.address.clone(),
        );
        key.sign(&mut entry);
        self.store.run(move |c| roster::save_entry(c, &mesh, &entry).map(|_| ()).map_err(store_error)).await?;
        Ok(())
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
        for (entry, address) in roster {
            if entry.node_id == self.me {
                self.role = entry.role;
                continue;
            }
            match self.peers.get_mut(&entry.node_id) {
                Some(p) => p.entry = entry,
                None => {
                    self.peers.insert(entry.node_id.clone(), Peer::new(entry, address));
                }
            }
        }
        Ok(())
    }

    pub(super) fn on_roster(&mut self, ctx: &mut Context<Self>, entries: Vec<RosterEntry>) {
        let Some(mesh) = self.mesh.clone() else { return };
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
            .map(|fresh, act, _| {
                for e in fresh.unwrap_or_default() {
                    if e.node_id == act.me {
                        act.role = e.role;
                        continue;
                    }
                    let revoked = e.revoked;
                    let id = e.node_id.clone();
                    match act.peers.get_mut(&id) {
                        Some(p) => p.entry = e,
                        None => {
                            let address = e.address.clone();
                            act.peers.insert(id.clone(), Peer::new(e, address));
                        }
                    }
                    if revoked {
                        if let Some(link) = act.peers.get(&id).and_then(|p| p.link).and_then(|l| act.links.get(&l)) {
                            link.addr.do_send(bridge::Close);
                        }
                    }
                }
            }),
        );
    }

    pub(super) async fn all_entries(store: &StoreHandle) -> Vec<RosterEntry> {
        store
            .run(|c| roster::load_roster(c).map_err(store_error))
            .await
            .map(|r| r.into_iter().map(|(e, _)| e).collect())
            .unwrap_or_default()
    }
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

/// Admits a node that presents a valid token (mesh admin only).
#[derive(Message)]
#[rtype(result = "Result<JoinResponse, RosterError>")]
pub struct Admit {
    pub request: JoinRequest,
}

impl Handler<Admit> for MeshActor {
    type Result = ResponseActFuture<Self, Result<JoinResponse, RosterError>>;

    fn handle(&mut self, msg: Admit, _: &mut Context<Self>) -> Self::Result {
        let req = msg.request;
        let (store, ledger) = (self.store.clone(), self.ledger.clone());
        let mesh = self.mesh.clone().filter(|_| self.mesh_key.is_some());
        let unsigned = self.entry_for(
            req.node_id.clone(),
            req.name.clone(),
            Role::Builder,
            req.ed_public.clone(),
            req.noise_public.clone(),
            req.address.clone(),
        );
        let me = self.me.clone();
        Box::pin(
            async move {
                let mesh = mesh.ok_or(RosterError::NotMeshAdmin)?;
                let result: Result<Role, RosterError> = if !req.verify() {
                    Err(RosterError::BadSignature(req.node_id.to_string()))
                } else {
                    let (token, id, m) = (req.token.clone(), req.node_id.clone(), mesh.clone());
                    store.run(move |c| roster::redeem_token(c, &m, &token, &id).map_err(store_error)).await.map_err(|e| match e {
                        crate::store::StoreError::Corrupt(text) => RosterError::Io(text),
                        other => RosterError::Store(other),
                    })
                };
                match result {
                    Ok(role) => Ok((mesh, role)),
                    Err(e) => {
                        let data = serde_json::json!({ "node_id": req.node_id, "name": req.name, "address": req.address, "reason": e.to_string() });
                        if let Err(le) = ledger.append(LedgerEntryType::JoinRefused, data).await {
                            log::warn!("recording a refused join: {le}");
                        }
                        Err(e)
                    }
                }
            }
            .into_actor(self)
            .then(move |checked, act, _| {
                let signed = checked.and_then(|(mesh, role)| {
                    let key = act.mesh_key.as_ref().ok_or(RosterError::NotMeshAdmin)?;
                    let mut entry = unsigned;
                    entry.role = role;
                    key.sign(&mut entry);
                    Ok((mesh, entry))
                });
                let (store, ledger) = (act.store.clone(), act.ledger.clone());
                fut::wrap_future(async move {
                    let (mesh, entry) = signed?;
                    let (m, e) = (mesh.clone(), entry.clone());
                    store.run(move |c| roster::save_entry(c, &m, &e).map(|_| ()).map_err(store_error)).await?;
                    let data = serde_json::json!({ "node_id": entry.node_id, "node_name": entry.name, "role": entry.role, "address": entry.address, "admitted_by": me });
                    ledger.append(LedgerEntryType::NodeJoined, data).await?;
                    let roster = MeshActor::all_entries(&store).await;
                    Ok((JoinResponse { mesh, roster }, entry))
                })
            })
            .map(|result: Result<(JoinResponse, RosterEntry), RosterError>, act, _| {
                let (response, entry) = result?;
                let id = entry.node_id.clone();
                let address = entry.address.clone();
                act.peers.insert(id, Peer::new(entry.clone(), address));
                act.broadcast(MeshMessage::Roster { entries: vec![entry] });
                Ok(response)
            }),
        )
    }
}

/// Builds this node's signed request to join with a token.
#[derive(Message)]
#[rtype(result = "JoinRequest")]
pub struct MakeJoinRequest {
    pub token: String,
}

impl Handler<MakeJoinRequest> for MeshActor {
    type Result = MessageResult<MakeJoinRequest>;

    fn handle(&mut self, msg: MakeJoinRequest, _: &mut Context<Self>) -> Self::Result {
        let mut req = JoinRequest {
            token: msg.token,
            node_id: self.me.clone(),
            name: self.name.clone(),
            address: self.address.clone(),
            ed_public: wire::hex(&self.identity.public_key()),
            noise_public: wire::hex(&self.noise_public),
            signature: String::new(),
        };
        req.signature = wire::hex(&self.identity.sign(&req.signing_bytes()));
        MessageResult(req)
    }
}

/// Takes the admin's answer to our join: checks it is the mesh the token pinned, then adopts
/// the mesh and its roster.
#[derive(Message)]
#[rtype(result = "Result<MeshInfo, RosterError>")]
pub struct AcceptJoin {
    pub token: String,
    pub response: JoinResponse,
}

impl Handler<AcceptJoin> for MeshActor {
    type Result = ResponseActFuture<Self, Result<MeshInfo, RosterError>>;

    fn handle(&mut self, msg: AcceptJoin, _: &mut Context<Self>) -> Self::Result {
        let (store, data_dir, me) = (self.store.clone(), self.data_dir.clone(), self.me.clone());
        Box::pin(
            async move {
                let token = roster::JoinToken::parse(&msg.token)?;
                let mesh = msg.response.mesh;
                let key = mesh.key_bytes().ok_or(RosterError::BadSignature("mesh key".into()))?;
                if MeshInfo::from_public_key(&key) != mesh || mesh.mesh_id != token.mesh_id {
                    return Err(RosterError::WrongMesh { pinned: token.mesh_id, actual: mesh.mesh_id });
                }
                let (m, entries) = (mesh.clone(), msg.response.roster);
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
                "this node holds the mesh key and other nodes depend on it; it cannot leave its own mesh".into(),
            ))));
        }
        let (ledger, store, data_dir, me) =
            (self.ledger.clone(), self.store.clone(), self.data_dir.clone(), self.me.clone());
        let mesh_id = self.mesh.as_ref().map(|m| m.mesh_id.clone());
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
                let saved = info.clone();
                store.run(move |c| roster::save_mesh(c, &saved).map_err(store_error)).await?;
                Ok((key, info, recent))
            }
            .into_actor(self)
            .map(|result: Result<(MeshKey, MeshInfo, Vec<wire::LedgerEntry>), RosterError>, act, _| {
                let (key, info, recent) = result?;
                for entries in split_batch(recent) {
                    act.broadcast(MeshMessage::LedgerEntries { entries });
                }
                act.broadcast(MeshMessage::Leave { node_id: act.me.clone() });
                for link in act.links.values() {
                    link.addr.do_send(bridge::Close);
                }
                act.peers.clear();
                act.mesh = Some(info);
                act.mesh_key = Some(key);
                act.role = Role::Admin;
                Ok(())
            }),
        )
    }
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
            |roster, act, _| {
                for (entry, address) in roster.unwrap_or_default() {
                    if entry.node_id == act.me {
                        act.role = entry.role;
                        continue;
                    }
                    act.peers.entry(entry.node_id.clone()).or_insert_with(|| Peer::new(entry, address));
                }
            },
        ))
    }
}

impl MeshActor {
    /// A peer's first message on a link: remember where it can be reached now.
    pub(super) fn on_hello(&mut self, from: NodeId, hello: wire::Hello) {
        let Some(peer) = self.peers.get_mut(&from) else { return };
        if hello.address == peer.address || hello.address.is_empty() {
            return;
        }
        peer.address = hello.address.clone();
        let (store, addr) = (self.store.clone(), hello.address);
        actix::spawn(async move {
            if let Err(e) = store.run(move |c| roster::save_address(c, &from, &addr).map_err(store_error)).await {
                log::warn!("saving a peer's address: {e}");
            }
        });
    }

    /// A peer leaves the mesh (only for itself).
    pub(super) fn on_leave(&mut self, link_id: u64, from: NodeId, node_id: NodeId) {
        if node_id != from {
            return;
        }
        log::info!("{from} left the mesh");
        if let Some(p) = self.peers.get_mut(&from) {
            p.entry.revoked = true;
        }
        if let Some(link) = self.links.get(&link_id) {
            link.addr.do_send(bridge::Close);
        }
        self.events.publish(Event::NodeStatus {
            node_id: from,
            status: NodeState::Offline,
            reason: Some("left".into()),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    #[test]
    fn join_requests_must_be_signed_by_the_joining_key() {
        let identity = Identity::from_secret(&[6; 32]);
        let mut req = JoinRequest {
            token: "bnj_x".into(),
            node_id: identity.node_id.clone(),
            name: "n".into(),
            address: "http://127.0.0.1:1".into(),
            ed_public: wire::hex(&identity.public_key()),
            noise_public: wire::hex(&[1; 32]),
            signature: String::new(),
        };
        req.signature = wire::hex(&identity.sign(&req.signing_bytes()));
        assert!(req.verify());
        let mut stolen = req.clone();
        stolen.noise_public = wire::hex(&[2; 32]);
        assert!(!stolen.verify(), "changing the link key breaks the signature");
    }
}
