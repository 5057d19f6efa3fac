//! SQLite: the one schema, opening a migrated connection, and `StoreActor`, which runs queries
//! on a `SyncArbiter` thread so blocking I/O never sits on the async threads.
//!
//! The ledger has its own connection in `LedgerActor` (with `synchronous=FULL`); everything
//! else goes through the store.

use std::path::{Path, PathBuf};

use actix::prelude::*;
use rusqlite::Connection;

/// The schema, embedded so the binary runs from any directory.
pub const SCHEMA_SQL: &str = include_str!("../../schema.sql");
/// Recorded in `PRAGMA user_version` once the schema is applied.
pub const SCHEMA_VERSION: i32 = 8;
/// Changes to tables an older database already has: `(from, to, sql)` applies to a database at
/// a version in `from..to` (the table exists since `from`); `schema.sql` (all `IF NOT EXISTS`)
/// then adds what is new, and creates tables that did not exist yet with every column.
const UPGRADES: &[(i32, i32, &str)] = &[(4, 5, "ALTER TABLE build_package_results ADD COLUMN cpu_ms INTEGER;")];
/// File name of the database inside the data dir.
pub const DB_FILE: &str = "buildnet.db";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("database {path} has schema version {found}, newer than this buildnet understands ({SCHEMA_VERSION}); upgrade buildnet")]
    TooNew { path: PathBuf, found: i32 },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the database actor is not running")]
    Unavailable,
}

/// How hard a connection syncs: the ledger must never lose an acknowledged entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=NORMAL`: safe with WAL against corruption, may lose the last commits on
    /// power loss.
    Normal,
    /// `synchronous=FULL`: every commit is on disk before it returns.
    Full,
}

/// Opens the database, applies the schema if needed and turns on WAL.
pub fn open(path: &Path, durability: Durability) -> Result<Connection, StoreError> {
    let err = |source| StoreError::Open { path: path.to_path_buf(), source };
    let conn = Connection::open(path).map_err(err)?;
    conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(err)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
    let sync = match durability {
        Durability::Normal => "NORMAL",
        Durability::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", sync).map_err(err)?;
    conn.pragma_update(None, "foreign_keys", "ON").map_err(err)?;
    let version: i32 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(err)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew { path: path.to_path_buf(), found: version });
    }
    if version < SCHEMA_VERSION {
        let upgrades: String = UPGRADES
            .iter()
            .filter(|(from, to, _)| (*from..*to).contains(&version))
            .map(|(_, _, sql)| *sql)
            .collect::<Vec<_>>()
            .join(" ");
        conn.execute_batch(&format!("BEGIN; {upgrades} {SCHEMA_SQL}; PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"))
            .map_err(err)?;
    }
    Ok(conn)
}

/// Owns a connection on a sync thread and runs jobs against it.
pub struct StoreActor {
    conn: Option<Connection>,
}

impl Actor for StoreActor {
    type Context = SyncContext<Self>;
}

/// A unit of work for the store thread.
pub type Job<R> = Box<dyn FnOnce(&mut Connection) -> Result<R, StoreError> + Send>;

/// Runs a job on the store's connection.
pub struct Exec<R: Send + 'static> {
    pub job: Job<R>,
}

impl<R: Send + 'static> Message for Exec<R> {
    type Result = Result<R, StoreError>;
}

impl<R: Send + 'static> Handler<Exec<R>> for StoreActor {
    type Result = Result<R, StoreError>;

    fn handle(&mut self, msg: Exec<R>, _: &mut Self::Context) -> Self::Result {
        let conn = self.conn.as_mut().ok_or(StoreError::Unavailable)?;
        (msg.job)(conn)
    }
}

/// Closes the connection (checkpointing the WAL); later jobs answer `Unavailable`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Close;

impl Handler<Close> for StoreActor {
    type Result = ();

    fn handle(&mut self, _: Close, _: &mut Self::Context) {
        close(self.conn.take());
    }
}

/// Closes a connection, logging rather than panicking if SQLite refuses.
pub fn close(conn: Option<Connection>) {
    if let Some(conn) = conn {
        if let Err((_, e)) = conn.close() {
            log::warn!("closing the database: {e}");
        }
    }
}

/// Typed front of the store actor.
#[derive(Clone)]
pub struct StoreHandle {
    addr: Addr<StoreActor>,
}

impl StoreHandle {
    /// Starts the store on its own thread with an already opened connection.
    pub fn start(conn: Connection) -> StoreHandle {
        let slot = std::sync::Mutex::new(Some(conn));
        let addr = SyncArbiter::start(1, move || StoreActor {
            // A restarted actor finds the slot empty and answers `Unavailable`.
            conn: slot.lock().ok().and_then(|mut s| s.take()),
        });
        StoreHandle { addr }
    }

    /// Runs `job` on the store thread and waits for its result.
    pub async fn run<R, F>(&self, job: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        self.addr.send(Exec { job: Box::new(job) }).await.map_err(|_| StoreError::Unavailable)?
    }

    /// One optional text value from a query with one parameter (prepared once per connection:
    /// placement asks the action cache this for every package).
    pub async fn optional_text(&self, sql: &'static str, param: String) -> Result<Option<String>, StoreError> {
        self.run(move |c| {
            use rusqlite::OptionalExtension;
            Ok(c.prepare_cached(sql)?.query_row([param], |r| r.get(0)).optional()?)
        })
        .await
    }

    /// Closes the database; used on shutdown.
    pub async fn close(&self) {
        let _ = self.addr.send(Close).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_is_applied_once_and_versioned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DB_FILE);
        let conn = open(&path, Durability::Normal).expect("open");
        let v: i32 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).expect("pragma");
        assert_eq!(v, SCHEMA_VERSION);
        let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).expect("pragma");
        assert_eq!(mode, "wal");
        drop(conn);
        open(&path, Durability::Full).expect("reopen is fine");
    }

    #[test]
    fn a_version_4_database_gains_the_new_column_and_keeps_its_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DB_FILE);
        let conn = Connection::open(&path).expect("open");
        // build_package_results as version 4 made it, with a row in it.
        conn.execute_batch(
            "CREATE TABLE build_package_results (build_id TEXT NOT NULL, package_name TEXT NOT NULL,
               cache_hit BOOLEAN NOT NULL DEFAULT FALSE, exit_code INTEGER, action_key TEXT, outputs TEXT,
               PRIMARY KEY (build_id, package_name));
             INSERT INTO build_package_results (build_id, package_name) VALUES ('b1', 'p');
             PRAGMA user_version = 4;",
        )
        .expect("old schema");
        drop(conn);
        let conn = open(&path, Durability::Normal).expect("upgrade");
        let (name, cpu): (String, Option<i64>) = conn
            .query_row("SELECT package_name, cpu_ms FROM build_package_results", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("the column exists");
        assert_eq!((name.as_str(), cpu), ("p", None));
    }

    #[test]
    fn a_newer_database_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DB_FILE);
        let conn = Connection::open(&path).expect("open");
        conn.pragma_update(None, "user_version", 99).expect("set");
        drop(conn);
        assert!(matches!(open(&path, Durability::Normal), Err(StoreError::TooNew { found: 99, .. })));
    }

    #[actix::test]
    async fn jobs_run_on_the_store_thread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StoreHandle::start(open(&dir.path().join(DB_FILE), Durability::Normal).expect("open"));
        let n: i64 =
            store.run(|c| Ok(c.query_row("SELECT count(*) FROM api_keys", [], |r| r.get(0))?)).await.expect("query");
        assert_eq!(n, 0);
    }
}
