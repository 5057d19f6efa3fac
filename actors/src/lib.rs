//! BuildNet's engine: every actor, the wire protocol, crypto, storage, discovery. No HTTP in
//! here; the `buildnet` binary puts the API, pages and CLI in front of it.
//!
//! Start with [`node::start`], which brings up a whole node and returns handles to its actors.

pub mod bench;
pub mod builds;
pub mod cas;
pub mod config;
pub mod discovery;
pub mod events;
pub mod exec;
pub mod identity;
pub mod keys;
pub mod lease;
pub mod ledger;
pub mod mesh;
pub mod node;
pub mod pool;
pub mod resource;
pub mod simulation;
pub mod start;
pub mod store;
pub mod wire;
