//! API keys: created with a role, shown once, stored only as BLAKE3 hashes, checked in constant
//! time, revocable. Every creation and revocation goes into the ledger.

use std::sync::{Arc, RwLock};

use rand::RngCore;
use rusqlite::params;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ledger::LedgerHandle;
use crate::store::{StoreError, StoreHandle};
use crate::wire::{self, LedgerEntryType, Role};

/// Prefix that makes a BuildNet key recognisable in logs and secret scanners.
pub const KEY_PREFIX: &str = "bn_";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("name: must be 1 to 64 printable characters, with no blank at either end")]
    BadName,
    #[error("no key with id '{0}'")]
    NotFound(String),
    #[error("key '{0}' is revoked already")]
    AlreadyRevoked(String),
    #[error("key '{0}' is the last admin key; create another admin key before revoking it")]
    LastAdmin(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What is known about a key, never its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    pub last_used_at_ms: Option<u64>,
    pub revoked_at_ms: Option<u64>,
}

impl KeyInfo {
    pub fn active(&self, now_ms: u64) -> bool {
        self.revoked_at_ms.is_none() && self.expires_at_ms.is_none_or(|t| t > now_ms)
    }
}

#[derive(Clone)]
struct KeyRecord {
    info: KeyInfo,
    hash: blake3::Hash,
}

/// The node's keys: the database is the truth, the ring in memory answers every request.
#[derive(Clone)]
pub struct Keys {
    store: StoreHandle,
    ledger: LedgerHandle,
    ring: Arc<RwLock<Vec<KeyRecord>>>,
}

impl Keys {
    /// Loads every key from the database.
    pub async fn load(store: StoreHandle, ledger: LedgerHandle) -> Result<Keys, KeyError> {
        let records = store
            .run(|c| {
                let mut stmt = c.prepare(
                    "SELECT id, key_hash, name, role, created_at, expires_at, last_used_at, revoked_at FROM api_keys ORDER BY created_at",
                )?;
                let rows = stmt.query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, Option<i64>>(5)?,
                        r.get::<_, Option<i64>>(6)?,
                        r.get::<_, Option<i64>>(7)?,
                    ))
                })?;
                let mut out = Vec::new();
                for row in rows {
                    let (id, hash, name, role, created, expires, used, revoked) = row?;
                    let hash = blake3::Hash::from_hex(&hash).map_err(|_| StoreError::Corrupt(format!("api key {id}: bad hash")))?;
                    let role = role.parse().map_err(|e: wire::InvalidId| StoreError::Corrupt(e.to_string()))?;
                    out.push(KeyRecord {
                        info: KeyInfo {
                            id,
                            name,
                            role,
                            created_at_ms: created as u64,
                            expires_at_ms: expires.map(|t| t as u64),
                            last_used_at_ms: used.map(|t| t as u64),
                            revoked_at_ms: revoked.map(|t| t as u64),
                        },
                        hash,
                    });
                }
                Ok(out)
            })
            .await?;
        Ok(Keys { store, ledger, ring: Arc::new(RwLock::new(records)) })
    }

    /// Creates a key and returns its secret (the only time it exists outside the caller).
    pub async fn create(
        &self,
        name: &str,
        role: Role,
        ttl_ms: Option<u64>,
        created_by: &str,
    ) -> Result<(String, KeyInfo), KeyError> {
        let name = name.trim();
        if !wire::is_display_name(name) {
            return Err(KeyError::BadName);
        }
        let mut secret_bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret_bytes);
        let secret = format!("{KEY_PREFIX}{}", wire::hex(&secret_bytes));
        let mut id_bytes = [0u8; 6];
        rand::rngs::OsRng.fill_bytes(&mut id_bytes);
        let now = wire::now_ms();
        let info = KeyInfo {
            id: format!("key_{}", wire::hex(&id_bytes)),
            name: name.to_string(),
            role,
            created_at_ms: now,
            expires_at_ms: ttl_ms.map(|t| now.saturating_add(t)),
            last_used_at_ms: None,
            revoked_at_ms: None,
        };
        let hash = blake3::hash(secret.as_bytes());
        let row = info.clone();
        self.store
            .run(move |c| {
                c.execute(
                    "INSERT INTO api_keys (id, key_hash, name, role, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![row.id, hash.to_hex().as_str(), row.name, row.role.as_str(), row.created_at_ms as i64, row.expires_at_ms.map(|t| t as i64)],
                )?;
                Ok(())
            })
            .await?;
        if let Ok(mut ring) = self.ring.write() {
            ring.push(KeyRecord { info: info.clone(), hash });
        }
        self.ledger
            .append(
                LedgerEntryType::KeyCreated,
                serde_json::json!({ "key_id": info.id, "name": info.name, "role": role, "created_by": created_by }),
            )
            .await?;
        Ok((secret, info))
    }

    /// Revokes a key; it stops working at once.
    pub async fn revoke(&self, id: &str, revoked_by: &str) -> Result<KeyInfo, KeyError> {
        let now = wire::now_ms();
        let target = {
            let ring = self.ring.read().map_err(|_| StoreError::Unavailable)?;
            let target = ring.iter().find(|k| k.info.id == id).cloned();
            let target = target.ok_or_else(|| KeyError::NotFound(id.to_string()))?;
            if target.info.revoked_at_ms.is_some() {
                return Err(KeyError::AlreadyRevoked(id.to_string()));
            }
            let other_admins =
                ring.iter().filter(|k| k.info.id != id && k.info.role == Role::Admin && k.info.active(now)).count();
            if target.info.role == Role::Admin && other_admins == 0 {
                return Err(KeyError::LastAdmin(id.to_string()));
            }
            target
        };
        let key_id = id.to_string();
        self.store
            .run(move |c| {
                c.execute("UPDATE api_keys SET revoked_at = ?1 WHERE id = ?2", params![now as i64, key_id])?;
                Ok(())
            })
            .await?;
        let mut info = target.info;
        info.revoked_at_ms = Some(now);
        if let Ok(mut ring) = self.ring.write() {
            if let Some(k) = ring.iter_mut().find(|k| k.info.id == id) {
                k.info.revoked_at_ms = Some(now);
            }
        }
        self.ledger
            .append(
                LedgerEntryType::KeyRevoked,
                serde_json::json!({ "key_id": info.id, "name": info.name, "revoked_by": revoked_by }),
            )
            .await?;
        Ok(info)
    }

    pub fn list(&self) -> Vec<KeyInfo> {
        self.ring.read().map(|r| r.iter().map(|k| k.info.clone()).collect()).unwrap_or_default()
    }

    /// The active key whose secret this is. Compares against every key with BLAKE3's
    /// constant-time equality and without stopping early, so timing says nothing.
    pub fn authenticate(&self, secret: &str) -> Option<KeyInfo> {
        let presented = blake3::hash(secret.as_bytes());
        let now = wire::now_ms();
        let ring = self.ring.read().ok()?;
        let mut found = None;
        for k in ring.iter() {
            if k.hash == presented && k.info.active(now) {
                found = Some(k.info.clone());
            }
        }
        found
    }

    /// Records use of a key; at most one write a minute per key. Looked at under the shared
    /// lock first: every authenticated request touches its key, and taking the exclusive lock
    /// each time made concurrent requests queue behind one another.
    pub fn touch(&self, id: &str) {
        let now = wire::now_ms();
        let recent = |k: &KeyRecord| k.info.last_used_at_ms.is_some_and(|t| now.saturating_sub(t) <= 60_000);
        let fresh = self.ring.read().ok().and_then(|ring| ring.iter().find(|k| k.info.id == id).map(recent));
        if fresh != Some(false) {
            return;
        }
        let stale = self
            .ring
            .write()
            .ok()
            .and_then(|mut ring| {
                let k = ring.iter_mut().find(|k| k.info.id == id)?;
                let stale = k.info.last_used_at_ms.is_none_or(|t| now.saturating_sub(t) > 60_000);
                if stale {
                    k.info.last_used_at_ms = Some(now);
                }
                Some(stale)
            })
            .unwrap_or(false);
        if stale {
            let store = self.store.clone();
            let id = id.to_string();
            actix::spawn(async move {
                let result = store
                    .run(move |c| {
                        c.execute("UPDATE api_keys SET last_used_at = ?1 WHERE id = ?2", params![now as i64, id])?;
                        Ok(())
                    })
                    .await;
                if let Err(e) = result {
                    log::warn!("recording key use: {e}");
                }
            });
        }
    }

    /// Whether any active admin key exists (a first start creates one when not).
    pub fn has_admin(&self) -> bool {
        let now = wire::now_ms();
        self.list().iter().any(|k| k.role == Role::Admin && k.active(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::store::{self, Durability, DB_FILE};

    async fn keys() -> (tempfile::TempDir, Keys) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DB_FILE);
        let store = StoreHandle::start(store::open(&path, Durability::Normal).expect("open"));
        let ledger = LedgerHandle::start(&path, Identity::from_secret(&[1; 32]), None).expect("ledger");
        let keys = Keys::load(store, ledger).await.expect("load");
        (dir, keys)
    }

    #[actix::test]
    async fn created_keys_authenticate_until_revoked() {
        let (_dir, keys) = keys().await;
        let (admin, _) = keys.create("admin", Role::Admin, None, "test").await.expect("create");
        let (secret, info) = keys.create("ci", Role::Observer, None, "test").await.expect("create");
        assert!(secret.starts_with(KEY_PREFIX));
        assert_eq!(keys.authenticate(&secret).map(|k| k.role), Some(Role::Observer));
        assert_eq!(keys.authenticate(&admin).map(|k| k.role), Some(Role::Admin));
        assert!(keys.authenticate("bn_wrong").is_none());
        keys.revoke(&info.id, "test").await.expect("revoke");
        assert!(keys.authenticate(&secret).is_none());
        assert!(matches!(keys.revoke(&info.id, "test").await, Err(KeyError::AlreadyRevoked(_))));
        assert!(matches!(keys.revoke("key_000000000000", "test").await, Err(KeyError::NotFound(_))));
    }

    #[actix::test]
    async fn keys_survive_reload_and_only_hashes_are_stored() {
        let (dir, keys) = keys().await;
        let (secret, _) = keys.create("ci", Role::Builder, None, "test").await.expect("create");
        let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).expect("open");
        let stored: String = conn.query_row("SELECT key_hash FROM api_keys", [], |r| r.get(0)).expect("row");
        assert_ne!(stored, secret);
        assert_eq!(stored, blake3::hash(secret.as_bytes()).to_hex().as_str());
        let reloaded = Keys::load(keys.store.clone(), keys.ledger.clone()).await.expect("reload");
        assert_eq!(reloaded.authenticate(&secret).map(|k| k.name), Some("ci".to_string()));
    }

    #[actix::test]
    async fn the_last_admin_key_cannot_be_revoked_and_names_are_checked() {
        let (_dir, keys) = keys().await;
        let (_, admin) = keys.create("admin", Role::Admin, None, "test").await.expect("create");
        assert!(matches!(keys.revoke(&admin.id, "test").await, Err(KeyError::LastAdmin(_))));
        assert!(matches!(keys.create("  ", Role::Admin, None, "t").await, Err(KeyError::BadName)));
    }

    #[actix::test]
    async fn expired_keys_do_not_authenticate() {
        let (_dir, keys) = keys().await;
        let (secret, _) = keys.create("short", Role::Admin, Some(0), "test").await.expect("create");
        assert!(keys.authenticate(&secret).is_none());
    }
}
