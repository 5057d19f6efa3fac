//! The action cache: which outputs a package's action key produced, in the `action_cache` table,
//! with the entries this node has read or written since it started also kept in memory.
//!
//! A rebuild with nothing to do asks it once per package. Through the store actor each answer
//! was a query on another thread — two thread wake-ups and a SQLite statement per package, the
//! largest part of a cached build's time at the node (issue 14). The table is only ever added
//! to (`INSERT OR REPLACE`; nothing deletes from it), so an entry seen once stays true; what can
//! go is a blob it names, which is why every answer is still checked against the CAS.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rusqlite::params;

use crate::cas::{Cas, FileRef};
use crate::store::StoreHandle;
use crate::wire::{self, NodeId};

/// Entries kept in memory at most; past it the memory starts afresh (the table has them all).
const HOT_ENTRIES: usize = 50_000;

#[derive(Clone)]
pub struct ActionCache {
    store: StoreHandle,
    cas: Cas,
    hot: Arc<Mutex<HashMap<String, Arc<[FileRef]>>>>,
}

impl ActionCache {
    pub fn new(store: StoreHandle, cas: Cas) -> ActionCache {
        ActionCache { store, cas, hot: Arc::default() }
    }

    fn keep(&self, key: &str, outputs: Arc<[FileRef]>) {
        if let Ok(mut hot) = self.hot.lock() {
            if hot.len() >= HOT_ENTRIES {
                hot.clear();
            }
            hot.insert(key.to_string(), outputs);
        }
    }

    /// The outputs cached under `key`, if there are and their blobs are all still in the CAS.
    pub async fn outputs(&self, key: &str) -> Option<Vec<FileRef>> {
        let known = self.hot.lock().ok().and_then(|hot| hot.get(key).cloned());
        let outputs = match known {
            Some(outputs) => outputs,
            None => {
                let sql = "SELECT outputs FROM action_cache WHERE action_key = ?1";
                let text = self.store.optional_text(sql, key.to_string()).await.ok()??;
                let outputs: Arc<[FileRef]> = serde_json::from_str::<Vec<FileRef>>(&text).ok()?.into();
                self.keep(key, outputs.clone());
                outputs
            }
        };
        // A cache entry is only good while its blobs are still here.
        outputs.iter().all(|f| self.cas.has(&f.digest)).then(|| outputs.to_vec())
    }

    /// Records that `key` produced `outputs` on `node` in `duration_ms`. Later lookups see it at
    /// once; the row is written meanwhile, and the package does not wait for that: a lost row
    /// costs a rerun, not a result.
    pub fn remember(&self, key: &str, outputs: &[FileRef], node: &NodeId, duration_ms: u64) {
        self.keep(key, outputs.into());
        let (key, outputs, node) =
            (key.to_string(), serde_json::to_string(outputs).unwrap_or_default(), node.to_string());
        let store = self.store.clone();
        actix_rt::spawn(async move {
            let saved = store
                .run(move |conn| {
                    conn.prepare_cached(
                        "INSERT OR REPLACE INTO action_cache (action_key, package_name, outputs, node_id, duration_ms, created_at) VALUES (?1, '', ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![key, outputs, node, duration_ms as i64, wire::now_ms() as i64])?;
                    Ok(())
                })
                .await;
            if let Err(e) = saved {
                log::warn!("caching a result: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(cas: &Cas, text: &str) -> FileRef {
        let digest = blake3::hash(text.as_bytes()).to_hex().to_string();
        cas.put_verified(&digest, text.as_bytes()).expect("put");
        FileRef { path: "out.o".into(), digest, executable: false, size: text.len() as u64 }
    }

    #[actix::test]
    async fn a_remembered_result_is_found_at_once_kept_across_a_restart_and_dropped_with_its_blob() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("db");
        let store = StoreHandle::start(crate::store::open(&db, crate::store::Durability::Normal).expect("open"));
        let cas = Cas::open(dir.path().join("cas")).expect("cas");
        let output = stored(&cas, "object code");
        let key = "a".repeat(64);
        let cache = ActionCache::new(store.clone(), cas.clone());
        assert_eq!(cache.outputs(&key).await, None, "nothing cached yet");

        cache.remember(&key, std::slice::from_ref(&output), &NodeId::from_public_key(&[7; 32]), 12);
        assert_eq!(cache.outputs(&key).await, Some(vec![output.clone()]), "found before its row is written");

        // A node started again has only the table: the row was written meanwhile.
        let mut found = None;
        for _ in 0..100 {
            found = ActionCache::new(store.clone(), cas.clone()).outputs(&key).await;
            if found.is_some() {
                break;
            }
            actix_rt::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(found, Some(vec![output.clone()]), "the row outlives the memory");

        std::fs::remove_file(cas.path(&output.digest).expect("path")).expect("blob removed");
        assert_eq!(cache.outputs(&key).await, None, "an entry whose blob is gone is no hit");
    }
}
