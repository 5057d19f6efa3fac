//! A member of the mesh as the mesh key signed it (signing and checking live in `mesh::roster`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{NodeId, Role};

/// One member of the mesh, signed by the mesh key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RosterEntry {
    pub node_id: NodeId,
    pub name: String,
    pub role: Role,
    /// Hex Ed25519 key that signs the node's ledger entries.
    pub ed_public: String,
    /// Hex X25519 key the node's Noise links prove.
    pub noise_public: String,
    /// Where the node was reachable when admitted.
    pub address: String,
    pub issued_at_ms: u64,
    /// A revoked or departed member may not link.
    pub revoked: bool,
    pub signature: String,
}
