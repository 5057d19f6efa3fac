-- BuildNet's one SQLite schema (plan §12.1, extended). Applied at start by
-- buildnet_actors::store::open, which records the version in PRAGMA user_version.
-- Times are milliseconds since the Unix epoch.

-- Every node this node knows: itself first, later its peers (the roster).
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    -- Not UNIQUE as in the plan: a node restarted on port 0 has a new address, and two
    -- records may briefly share one while a peer moves.
    address TEXT NOT NULL,
    public_key BLOB NOT NULL,
    role TEXT NOT NULL DEFAULT 'worker',
    status TEXT NOT NULL DEFAULT 'offline',
    capabilities TEXT NOT NULL,            -- JSON
    last_seen_at INTEGER NOT NULL,
    joined_at INTEGER NOT NULL
);

-- One row per resource (the plan had one per type; a node has many volumes and tools).
CREATE TABLE IF NOT EXISTS node_resources (
    id TEXT PRIMARY KEY,                   -- node_id/resource_key
    node_id TEXT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    resource_type TEXT NOT NULL,           -- cpu, memory, storage, tool, runtime, network
    resource_key TEXT NOT NULL,            -- cpu, memory, storage:/path, tool:gcc, …
    resource_data TEXT NOT NULL,           -- JSON
    benchmark_data TEXT,                   -- JSON
    last_updated_at INTEGER NOT NULL,
    UNIQUE(node_id, resource_key)
);

CREATE TABLE IF NOT EXISTS configurations (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT,
    config_data TEXT NOT NULL,             -- JSON
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    is_template BOOLEAN NOT NULL DEFAULT FALSE,
    template_category TEXT,
    UNIQUE(name)
);

CREATE TABLE IF NOT EXISTS builds (
    id TEXT PRIMARY KEY,
    config_id TEXT REFERENCES configurations(id),
    status TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    completed_at INTEGER,
    duration_ms INTEGER,
    error TEXT,
    metrics TEXT,                          -- JSON
    artifacts TEXT,                        -- JSON array of artifact digests
    triggered_by TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS build_packages (
    id TEXT PRIMARY KEY,
    build_id TEXT NOT NULL REFERENCES builds(id) ON DELETE CASCADE,
    package_name TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at INTEGER,
    completed_at INTEGER,
    duration_ms INTEGER,
    assigned_node TEXT REFERENCES nodes(id),
    output TEXT,
    error TEXT
);

CREATE TABLE IF NOT EXISTS allocations (
    id TEXT PRIMARY KEY,
    build_id TEXT REFERENCES builds(id) ON DELETE SET NULL,
    resource_type TEXT NOT NULL,
    node_id TEXT NOT NULL REFERENCES nodes(id),
    amount TEXT NOT NULL,                  -- JSON (cores, bytes, …)
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    released_at INTEGER
);

-- The ledger: one hash chain per origin node (DESIGN.md "Ledger"). An entry is stored only
-- after its prev_hash and signature check; (origin, seq) is its identity.
CREATE TABLE IF NOT EXISTS ledger (
    origin TEXT NOT NULL,
    seq INTEGER NOT NULL,
    prev_hash TEXT NOT NULL,
    hlc_wall INTEGER NOT NULL,
    hlc_logical INTEGER NOT NULL,
    entry_type TEXT NOT NULL,
    entry_data TEXT NOT NULL,              -- JSON
    hash TEXT NOT NULL,
    signature TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (origin, seq)
);

CREATE TABLE IF NOT EXISTS benchmarks (
    id TEXT PRIMARY KEY,
    node_id TEXT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    benchmark_type TEXT NOT NULL,
    results TEXT NOT NULL,                 -- JSON
    run_at INTEGER NOT NULL
);

-- API keys, stored only as BLAKE3 hashes of the secret.
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    last_used_at INTEGER,
    revoked_at INTEGER
);

CREATE INDEX IF NOT EXISTS idx_nodes_status ON nodes(status);
CREATE INDEX IF NOT EXISTS idx_builds_status ON builds(status);
CREATE INDEX IF NOT EXISTS idx_builds_started ON builds(started_at DESC);
CREATE INDEX IF NOT EXISTS idx_ledger_time ON ledger(hlc_wall DESC, hlc_logical DESC, origin);
CREATE INDEX IF NOT EXISTS idx_ledger_type ON ledger(entry_type);
CREATE INDEX IF NOT EXISTS idx_allocations_build ON allocations(build_id);
CREATE INDEX IF NOT EXISTS idx_allocations_expires ON allocations(expires_at);
-- A build's packages (its page, its history row) and a package's recent runs (the estimate
-- asks for each package of a build before it starts): without these both read every package
-- of every build ever run (v8).
CREATE INDEX IF NOT EXISTS idx_build_packages_build ON build_packages(build_id);
CREATE INDEX IF NOT EXISTS idx_build_packages_name ON build_packages(package_name, started_at DESC);

-- Schema version 2: the mesh.

-- The mesh this node belongs to (one row): its id and root public key.
-- The highest coordinator epoch this node has seen: epochs never go back, across restarts too.
CREATE TABLE IF NOT EXISTS coordinator_epoch (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    epoch INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS mesh (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    mesh_id TEXT NOT NULL,
    public_key TEXT NOT NULL,              -- hex Ed25519
    joined_at INTEGER NOT NULL
);

-- Roster entries signed by the mesh key: who may link, with which keys and role.
CREATE TABLE IF NOT EXISTS roster (
    node_id TEXT PRIMARY KEY,
    entry TEXT NOT NULL,                   -- JSON RosterEntry, signature included
    address TEXT NOT NULL,                 -- last address seen (a link's Hello may update it)
    updated_at INTEGER NOT NULL
);

-- Single-use join tokens, stored as BLAKE3 hashes.
CREATE TABLE IF NOT EXISTS join_tokens (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER,
    used_by TEXT
);

-- Two different entries for one (origin, seq): proof that the origin equivocated.
CREATE TABLE IF NOT EXISTS ledger_conflicts (
    origin TEXT NOT NULL,
    seq INTEGER NOT NULL,
    stored_hash TEXT NOT NULL,
    other_entry TEXT NOT NULL,             -- JSON of the conflicting entry
    seen_at INTEGER NOT NULL,
    PRIMARY KEY (origin, seq, stored_hash)
);

-- Schema version 3: builds.

-- Results of actions by key: an unchanged package is served from here.
CREATE TABLE IF NOT EXISTS action_cache (
    action_key TEXT PRIMARY KEY,
    package_name TEXT NOT NULL,
    outputs TEXT NOT NULL,                 -- JSON [FileRef]
    node_id TEXT NOT NULL,
    duration_ms INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);

-- Per-package facts the plan's build_packages lacked (kept apart so older databases migrate
-- by adding a table).
CREATE TABLE IF NOT EXISTS build_package_results (
    build_id TEXT NOT NULL REFERENCES builds(id) ON DELETE CASCADE,
    package_name TEXT NOT NULL,
    cache_hit BOOLEAN NOT NULL DEFAULT FALSE,
    exit_code INTEGER,
    action_key TEXT,
    outputs TEXT,                          -- JSON [FileRef]
    cpu_ms INTEGER,                        -- CPU time of the process (v5)
    PRIMARY KEY (build_id, package_name)
);

-- What each build was asked to do, so it can be run again from the pages or the API.
CREATE TABLE IF NOT EXISTS build_requests (
    build_id TEXT PRIMARY KEY,             -- no foreign key: written before the build row
    request TEXT NOT NULL                  -- JSON BuildRequest
);

-- Schema version 7: projects registered on this node, built by name from their directory.
CREATE TABLE IF NOT EXISTS projects (
    name TEXT PRIMARY KEY,                 -- letters, digits, . - _ (it goes into URLs)
    path TEXT NOT NULL,                    -- absolute, canonical directory holding buildnet.toml
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL
);
