//! Who belongs to the mesh. The first node creates the mesh root key (`mesh.key`); it signs a
//! roster entry for every node it admits with a join token, and every node verifies entries
//! against the mesh's public key before trusting a link or a ledger entry.

use std::path::Path;

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use rand::RngCore;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::identity::write_secret;
use crate::store::StoreError;
pub use crate::wire::RosterEntry;
use crate::wire::{self, NodeId, Role};

/// The mesh root key file, present only on the node that created the mesh.
pub const MESH_KEY_FILE: &str = "mesh.key";
/// The node's X25519 static key for Noise links.
pub const NOISE_KEY_FILE: &str = "noise.key";
/// Prefix of join tokens.
pub const TOKEN_PREFIX: &str = "bnj_";

#[derive(Debug, thiserror::Error)]
pub enum RosterError {
    #[error("{0}")]
    Io(String),
    #[error("join token is malformed: expected bnj_<16 hex>_<32 hex>")]
    MalformedToken,
    #[error("join token is not known to this mesh")]
    UnknownToken,
    #[error("join token expired")]
    ExpiredToken,
    #[error("join token was already used")]
    UsedToken,
    #[error("join token pins mesh {pinned}, but this node's mesh is {actual}")]
    WrongMesh { pinned: String, actual: String },
    #[error("this node does not hold the mesh key; ask the node that created the mesh")]
    NotMeshAdmin,
    #[error("this node is a member of mesh {0} already")]
    AlreadyMember(String),
    #[error(
        "this node belongs to mesh {mesh} with {others} other node(s); run `buildnet node leave` first to join another"
    )]
    InAnotherMesh { mesh: String, others: usize },
    #[error(
        "this node holds the key of mesh {mesh}, which {others} other node(s) depend on: it can neither leave that mesh nor join another"
    )]
    HoldsMeshKey { mesh: String, others: usize },
    #[error(
        "a member named '{name}' exists already ({holder}); start the joining node with another --name, or, if it \
         replaces that member, remove it first (`buildnet node remove {holder}` on the mesh key holder)"
    )]
    NameTaken { name: String, holder: String },
    #[error("the mesh key holder cannot remove itself (`buildnet node leave`, once every other member is removed)")]
    RemoveSelf,
    #[error("this node was removed from mesh {0}; run `buildnet node leave` first, then join with a new token")]
    Removed(String),
    #[error("{0} is being removed already")]
    RemovalUnderWay(String),
    #[error("no member with id {0} in this mesh")]
    UnknownMember(String),
    #[error("{0} is no longer a member of this mesh (it left or was removed)")]
    NoLongerMember(String),
    #[error("roster entry for {0} has a bad signature")]
    BadSignature(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for RosterError {
    fn from(e: rusqlite::Error) -> Self {
        RosterError::Store(StoreError::Sql(e))
    }
}

/// The mesh's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MeshInfo {
    /// 16 hex digits: the first 8 bytes of the root public key.
    pub mesh_id: String,
    /// Hex Ed25519 public key of the mesh root.
    pub public_key: String,
}

impl MeshInfo {
    pub fn from_public_key(key: &[u8; 32]) -> MeshInfo {
        MeshInfo { mesh_id: wire::hex(&key[..8]), public_key: wire::hex(key) }
    }

    pub fn key_bytes(&self) -> Option<[u8; 32]> {
        wire::unhex(&self.public_key)?.try_into().ok()
    }
}

/// The mesh root key.
pub struct MeshKey {
    signing: SigningKey,
}

impl MeshKey {
    /// Loads `mesh.key` from the data dir, if this node holds it.
    pub fn load(data_dir: &Path) -> Result<Option<MeshKey>, RosterError> {
        let path = data_dir.join(MESH_KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let bytes: [u8; 32] = wire::unhex(text.trim())
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| RosterError::Io(format!("{}: not a mesh key", path.display())))?;
                Ok(Some(MeshKey { signing: SigningKey::from_bytes(&bytes) }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RosterError::Io(format!("{}: {e}", path.display()))),
        }
    }

    /// Creates a new mesh root key in the data dir.
    pub fn create(data_dir: &Path) -> Result<MeshKey, RosterError> {
        let signing = SigningKey::generate(&mut rand::rngs::OsRng);
        let path = data_dir.join(MESH_KEY_FILE);
        write_secret(&path, wire::hex(&signing.to_bytes()).as_bytes())
            .map_err(|e| RosterError::Io(format!("{}: {e}", path.display())))?;
        Ok(MeshKey { signing })
    }

    pub fn info(&self) -> MeshInfo {
        MeshInfo::from_public_key(self.signing.verifying_key().as_bytes())
    }

    /// Signs a roster entry.
    pub fn sign(&self, entry: &mut RosterEntry) {
        entry.signature = wire::hex(&self.signing.sign(&entry.signing_bytes()).to_bytes());
    }

    /// Signs bytes with the mesh key (a join's proof of holding it).
    pub fn sign_bytes(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }
}

/// Loads or creates the node's Noise static key pair: (private, public).
pub fn noise_keys(data_dir: &Path) -> Result<([u8; 32], [u8; 32]), RosterError> {
    let path = data_dir.join(NOISE_KEY_FILE);
    let parse = |text: &str| -> Option<([u8; 32], [u8; 32])> {
        let (a, b) = text.trim().split_once(':')?;
        Some((wire::unhex(a)?.try_into().ok()?, wire::unhex(b)?.try_into().ok()?))
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text).ok_or_else(|| RosterError::Io(format!("{}: not a noise key", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (private, public) = super::noise::generate_keypair().map_err(|e| RosterError::Io(e.to_string()))?;
            write_secret(&path, format!("{}:{}", wire::hex(&private), wire::hex(&public)).as_bytes())
                .map_err(|e| RosterError::Io(format!("{}: {e}", path.display())))?;
            Ok((private, public))
        }
        Err(e) => Err(RosterError::Io(format!("{}: {e}", path.display()))),
    }
}

impl RosterEntry {
    fn signing_bytes(&self) -> Vec<u8> {
        serde_json::json!([
            "buildnet-roster/1",
            self.node_id,
            self.name,
            self.role,
            self.ed_public,
            self.noise_public,
            self.address,
            self.issued_at_ms,
            self.revoked
        ])
        .to_string()
        .into_bytes()
    }

    /// Checks the mesh's signature and that the node id matches its key.
    pub fn verify(&self, mesh: &MeshInfo) -> Result<(), RosterError> {
        let bad = || RosterError::BadSignature(self.node_id.to_string());
        let mesh_key = mesh.key_bytes().and_then(|k| VerifyingKey::from_bytes(&k).ok()).ok_or_else(bad)?;
        let signature: [u8; 64] = wire::unhex(&self.signature).and_then(|b| b.try_into().ok()).ok_or_else(bad)?;
        mesh_key.verify(&self.signing_bytes(), &ed25519_dalek::Signature::from_bytes(&signature)).map_err(|_| bad())?;
        let ed: [u8; 32] = wire::unhex(&self.ed_public).and_then(|b| b.try_into().ok()).ok_or_else(bad)?;
        if NodeId::from_public_key(&ed) != self.node_id {
            return Err(bad());
        }
        Ok(())
    }

    pub fn ed_key(&self) -> Option<[u8; 32]> {
        wire::unhex(&self.ed_public)?.try_into().ok()
    }

    pub fn noise_key(&self) -> Option<[u8; 32]> {
        wire::unhex(&self.noise_public)?.try_into().ok()
    }
}

/// A parsed join token: the mesh it pins and its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub mesh_id: String,
    pub secret: String,
}

impl JoinToken {
    pub fn parse(text: &str) -> Result<JoinToken, RosterError> {
        let rest = text.trim().strip_prefix(TOKEN_PREFIX).ok_or(RosterError::MalformedToken)?;
        let (mesh_id, secret) = rest.split_once('_').ok_or(RosterError::MalformedToken)?;
        let hex_ok = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex_ok(mesh_id, 16) || !hex_ok(secret, 32) {
            return Err(RosterError::MalformedToken);
        }
        Ok(JoinToken { mesh_id: mesh_id.to_lowercase(), secret: secret.to_lowercase() })
    }

    pub fn text(&self) -> String {
        format!("{TOKEN_PREFIX}{}_{}", self.mesh_id, self.secret)
    }

    /// What the holder stores instead of the token (and derives the join's pre-shared key from).
    pub fn hash(&self) -> String {
        blake3::hash(self.text().as_bytes()).to_hex().to_string()
    }

    /// The token's public id (`token list` shows it; the join names it in clear).
    pub fn id(&self) -> String {
        format!("tok_{}", &self.hash()[..12])
    }
}

/// A token as listed (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub id: String,
    pub role: Role,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub used_at_ms: Option<u64>,
    pub used_by: Option<String>,
}

/// Creates a single-use token for `role`, valid for `ttl_ms`.
pub fn create_token(
    conn: &Connection,
    mesh: &MeshInfo,
    role: Role,
    ttl_ms: u64,
    created_by: &str,
) -> Result<(String, TokenInfo), RosterError> {
    let mut secret = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let token = JoinToken { mesh_id: mesh.mesh_id.clone(), secret: wire::hex(&secret) };
    let now = wire::now_ms();
    let info = TokenInfo {
        id: token.id(),
        role,
        created_at_ms: now,
        expires_at_ms: now.saturating_add(ttl_ms),
        used_at_ms: None,
        used_by: None,
    };
    conn.execute(
        "INSERT INTO join_tokens (id, token_hash, role, created_by, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![info.id, token.hash(), role.as_str(), created_by, now as i64, info.expires_at_ms as i64],
    )?;
    Ok((token.text(), info))
}

/// A token a join names by id, if it can still be spent: its stored hash (the join's pre-shared
/// key derives from it).
pub fn usable_token(conn: &Connection, id: &str) -> Result<String, RosterError> {
    let row: Option<(String, i64, Option<i64>)> = conn
        .query_row("SELECT token_hash, expires_at, used_at FROM join_tokens WHERE id = ?1", [id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let (hash, expires, used) = row.ok_or(RosterError::UnknownToken)?;
    if used.is_some() {
        return Err(RosterError::UsedToken);
    }
    if expires <= wire::now_ms() as i64 {
        return Err(RosterError::ExpiredToken);
    }
    Ok(hash)
}

/// Spends a token the join proved it holds: checks it is still unexpired and unused, then marks
/// it used. Returns the role it grants.
pub fn redeem_token(conn: &Connection, id: &str, used_by: &NodeId) -> Result<Role, RosterError> {
    usable_token(conn, id)?;
    let changed = conn.execute(
        "UPDATE join_tokens SET used_at = ?1, used_by = ?2 WHERE id = ?3 AND used_at IS NULL",
        params![wire::now_ms() as i64, used_by.as_str(), id],
    )?;
    if changed != 1 {
        return Err(RosterError::UsedToken);
    }
    let role: String = conn.query_row("SELECT role FROM join_tokens WHERE id = ?1", [id], |r| r.get(0))?;
    role.parse().map_err(|e: wire::InvalidId| RosterError::Io(e.to_string()))
}

/// The mesh this node belongs to, if any.
pub fn load_mesh(conn: &Connection) -> Result<Option<MeshInfo>, RosterError> {
    Ok(conn
        .query_row("SELECT mesh_id, public_key FROM mesh WHERE id = 1", [], |r| {
            Ok(MeshInfo { mesh_id: r.get(0)?, public_key: r.get(1)? })
        })
        .optional()?)
}

/// Records membership of a mesh, replacing any earlier one (and its roster).
pub fn save_mesh(conn: &mut Connection, mesh: &MeshInfo) -> Result<(), RosterError> {
    let tx = conn.transaction()?;
    let old = tx.query_row("SELECT mesh_id FROM mesh WHERE id = 1", [], |r| r.get::<_, String>(0)).optional()?;
    if old.as_deref() != Some(mesh.mesh_id.as_str()) {
        tx.execute("DELETE FROM roster", [])?;
    }
    tx.execute(
        "INSERT INTO mesh (id, mesh_id, public_key, joined_at) VALUES (1, ?1, ?2, ?3)
         ON CONFLICT(id) DO UPDATE SET mesh_id = ?1, public_key = ?2, joined_at = ?3",
        params![mesh.mesh_id, mesh.public_key, wire::now_ms() as i64],
    )?;
    tx.commit()?;
    Ok(())
}

/// Stores a verified roster entry and makes its key known to ledger verification. An entry
/// older than the stored one is ignored.
pub fn save_entry(conn: &Connection, mesh: &MeshInfo, entry: &RosterEntry) -> Result<bool, RosterError> {
    entry.verify(mesh)?;
    let stored: Option<String> = conn
        .query_row("SELECT entry FROM roster WHERE node_id = ?1", [entry.node_id.as_str()], |r| r.get(0))
        .optional()?;
    if let Some(old) = stored.and_then(|s| serde_json::from_str::<RosterEntry>(&s).ok()) {
        if old.issued_at_ms > entry.issued_at_ms || old == *entry {
            return Ok(false);
        }
    }
    let now = wire::now_ms() as i64;
    let json = serde_json::to_string(entry).map_err(|e| RosterError::Io(e.to_string()))?;
    conn.execute(
        "INSERT INTO roster (node_id, entry, address, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(node_id) DO UPDATE SET entry = ?2, updated_at = ?4",
        params![entry.node_id.as_str(), json, entry.address, now],
    )?;
    let key = entry.ed_key().map(|k| k.to_vec()).unwrap_or_default();
    conn.execute(
        "INSERT INTO nodes (id, name, address, public_key, role, status, capabilities, last_seen_at, joined_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 'offline', '{}', ?6, ?6)
         ON CONFLICT(id) DO UPDATE SET public_key = ?4, role = ?5",
        params![entry.node_id.as_str(), entry.name, entry.address, key, entry.role.as_str(), now],
    )?;
    Ok(true)
}

/// Every roster entry with the last address seen for it.
pub fn load_roster(conn: &Connection) -> Result<Vec<(RosterEntry, String)>, RosterError> {
    let mut stmt = conn.prepare("SELECT entry, address FROM roster ORDER BY node_id")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (entry, address) = row?;
        let entry: RosterEntry =
            serde_json::from_str(&entry).map_err(|e| RosterError::Io(format!("roster row: {e}")))?;
        out.push((entry, address));
    }
    Ok(out)
}

/// Remembers where a member was last reachable.
pub fn save_address(conn: &Connection, node: &NodeId, address: &str) -> Result<(), RosterError> {
    conn.execute("UPDATE roster SET address = ?1 WHERE node_id = ?2", params![address, node.as_str()])?;
    conn.execute("UPDATE nodes SET address = ?1 WHERE id = ?2", params![address, node.as_str()])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::store::{self, Durability};

    fn entry(key: &MeshKey, id: &Identity) -> RosterEntry {
        let mut e = RosterEntry {
            node_id: id.node_id.clone(),
            name: "n".into(),
            role: Role::Builder,
            ed_public: wire::hex(&id.public_key()),
            noise_public: wire::hex(&[9; 32]),
            address: "http://127.0.0.1:1".into(),
            issued_at_ms: 1,
            revoked: false,
            signature: String::new(),
        };
        key.sign(&mut e);
        e
    }

    #[test]
    fn entries_verify_only_with_their_mesh_and_unaltered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = MeshKey::create(dir.path()).expect("mesh key");
        let id = Identity::from_secret(&[4; 32]);
        let e = entry(&key, &id);
        e.verify(&key.info()).expect("verifies");
        let mut altered = e.clone();
        altered.role = Role::Admin;
        assert!(altered.verify(&key.info()).is_err());
        let other = MeshKey::create(tempfile::tempdir().expect("tempdir").path()).expect("key");
        assert!(e.verify(&other.info()).is_err());
        let mut wrong_id = e.clone();
        wrong_id.node_id = NodeId::parse("00000000000000ff").expect("id");
        key.sign(&mut wrong_id);
        assert!(wrong_id.verify(&key.info()).is_err(), "the id must match the key");
    }

    #[test]
    fn tokens_are_single_use_and_expiring() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = store::open(&dir.path().join("db"), Durability::Normal).expect("db");
        let key = MeshKey::create(dir.path()).expect("mesh key");
        let mesh = key.info();
        let who = NodeId::parse("0000000000000001").expect("id");
        let (text, info) = create_token(&conn, &mesh, Role::Builder, 60_000, "test").expect("token");
        assert!(text.starts_with("bnj_"));
        let token = JoinToken::parse(&text).expect("parses");
        assert_eq!(token.id(), info.id);
        assert_eq!(usable_token(&conn, &info.id).expect("usable"), token.hash());
        assert_eq!(redeem_token(&conn, &info.id, &who).expect("redeems"), Role::Builder);
        assert!(matches!(redeem_token(&conn, &info.id, &who), Err(RosterError::UsedToken)));
        let (_, expired) = create_token(&conn, &mesh, Role::Observer, 0, "test").expect("token");
        assert!(matches!(redeem_token(&conn, &expired.id, &who), Err(RosterError::ExpiredToken)));
        assert!(matches!(JoinToken::parse("bnj_nope"), Err(RosterError::MalformedToken)));
        assert!(matches!(usable_token(&conn, "tok_000000000000"), Err(RosterError::UnknownToken)));
    }

    #[test]
    fn roster_rows_make_keys_known_and_ignore_older_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut conn = store::open(&dir.path().join("db"), Durability::Normal).expect("db");
        let key = MeshKey::create(dir.path()).expect("mesh key");
        save_mesh(&mut conn, &key.info()).expect("save mesh");
        let id = Identity::from_secret(&[5; 32]);
        let mut e = entry(&key, &id);
        e.issued_at_ms = 10;
        key.sign(&mut e);
        assert!(save_entry(&conn, &key.info(), &e).expect("save"));
        let mut older = e.clone();
        older.issued_at_ms = 5;
        older.revoked = true;
        key.sign(&mut older);
        assert!(!save_entry(&conn, &key.info(), &older).expect("ignored"));
        let roster = load_roster(&conn).expect("load");
        assert_eq!(roster.len(), 1);
        assert!(!roster[0].0.revoked);
        let stored_key: Vec<u8> = conn
            .query_row("SELECT public_key FROM nodes WHERE id = ?1", [id.node_id.as_str()], |r| r.get(0))
            .expect("node row");
        assert_eq!(stored_key, id.public_key().to_vec());
    }
}
