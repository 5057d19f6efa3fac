//! Every type that may cross a machine boundary: resources a node advertises, leases, ledger
//! entries and the envelope that carries them.
//!
//! These are plain serde types. Over the mesh they travel as MessagePack
//! (`rmp_serde::to_vec_named`, so field names survive version skew); over HTTP as JSON. Field names
//! follow plan §2.1 (`count`, `total_bytes`, …) because scripts and pages read them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

mod bench;
mod message;
mod paths;
mod roster;
mod status;
mod task;

pub use bench::*;
pub use message::*;
pub use paths::*;
pub use roster::*;
pub use status::*;
pub use task::*;

/// Version of the wire protocol; bumped on any incompatible change of these types.
/// 2: blobs are pulled with `BlobWant` and sent in a window acknowledged by `BlobAck`.
/// 5: `LedgerHeads` packs its heads into one byte string (`message::packed_heads`); `TaskDone`
/// carries small outputs whole.
pub const PROTOCOL_VERSION: u16 = 5;
/// Keeps the last `max` bytes of `text` (or a little less, to cut on a character boundary).
pub fn keep_tail(text: &mut String, max: usize) {
    if text.len() > max {
        let mut cut = text.len() - max;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        text.drain(..cut);
    }
}

/// Largest piece of a running package's output sent at once (a `TaskOutput` message, an event).
pub const OUTPUT_CHUNK: usize = 4096;

/// A node's identity on the wire: 16 lowercase hex digits (the first 8 bytes of its Ed25519
/// public key). Parsed, never trusted raw.
///
/// Held as the 16 ASCII digits inline rather than a `String`: ids are copied into every peer
/// table, SWIM identity and message, and in a 150-node simulation those heap copies and frees
/// were a tenth of all CPU. Ordering and equality are those of the text.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, ToSchema)]
#[schema(value_type = String, example = "3f9a0c1d5e7b2a48")]
pub struct NodeId([u8; 16]);

impl NodeId {
    pub fn parse(text: &str) -> Result<Self, InvalidId> {
        let digits: Option<[u8; 16]> = text.as_bytes().try_into().ok();
        match digits.filter(|d| d.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))) {
            Some(digits) => Ok(NodeId(digits)),
            None => Err(InvalidId {
                what: "node id",
                value: text.chars().take(40).collect(),
                expected: "16 lowercase hex digits",
            }),
        }
    }

    /// Derives the id from an Ed25519 public key.
    pub fn from_public_key(key: &[u8; 32]) -> Self {
        let mut digits = [0u8; 16];
        digits.copy_from_slice(hex(&key[..8]).as_bytes());
        NodeId(digits)
    }

    pub fn as_str(&self) -> &str {
        // Only ever built from checked hex digits, so this is never the empty fallback.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Digits;
        impl serde::de::Visitor<'_> for Digits {
            type Value = NodeId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a node id (16 lowercase hex digits)")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<NodeId, E> {
                NodeId::parse(text).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Digits)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for NodeId {
    type Error = InvalidId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        NodeId::parse(&value)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> String {
        id.as_str().to_string()
    }
}

impl FromStr for NodeId {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeId::parse(s)
    }
}

/// An identifier that did not parse.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid {what} '{value}': expected {expected}")]
pub struct InvalidId {
    pub what: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// The longest name of a node or an API key, in characters.
pub const MAX_NAME: usize = 64;

/// Whether `name` may name a node or an API key: 1 to [`MAX_NAME`] characters, none of them a
/// control character — a newline or an escape sequence in a name would forge or repaint lines
/// of other users' tables — nor an invisible one that reorders or hides text (bidi overrides
/// and isolates, zero-width characters, line and paragraph separators), which would let a
/// name pass for another.
pub fn is_display_name(name: &str) -> bool {
    // Blanks at either end are refused too: names are looked up trimmed, so " beta" would be
    // found as "beta", another node.
    !name.trim().is_empty()
        && name.trim() == name
        && name.chars().count() <= MAX_NAME
        && !name.chars().any(|c| c.is_control() || is_invisible(c))
}

/// A character that shows as nothing, or reorders what follows: format characters (bidi
/// overrides and isolates, zero-width ones, the soft hyphen), line and paragraph separators,
/// tag characters, variation selectors and the Hangul fillers that show as blanks. In a name
/// or a line of a peer's output they would let one text pass for another.
pub fn is_invisible(c: char) -> bool {
    matches!(c, '\u{00AD}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}' | '\u{180B}'..='\u{180F}'
        | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{3164}'
        | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF9}'..='\u{FFFB}' | '\u{E0000}'..='\u{E007F}'
        | '\u{E0100}'..='\u{E01EF}')
}

/// Lowercase hex of some bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses lowercase or uppercase hex into bytes.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// Role of an API key or a mesh member (plan §11.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything: keys, configuration, resources, builds.
    Admin,
    /// Reads everything and triggers builds.
    Builder,
    /// Reads resources, builds and the ledger; changes nothing.
    Observer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Builder => "builder",
            Role::Observer => "observer",
        }
    }

    /// Whether this role may perform `action`.
    pub fn allows(self, action: Action) -> bool {
        match self {
            Role::Admin => true,
            Role::Builder => {
                matches!(action, Action::View | Action::ReadBuildOutput | Action::TriggerBuild | Action::CancelBuild)
            }
            Role::Observer => action == Action::View,
        }
        // (ModifyConfig is admin-only: plan §11.3 lets builders build, not change configs.)
    }

    /// The least role that may perform `action` (what an error should ask for).
    pub fn least_for(action: Action) -> Role {
        [Role::Observer, Role::Builder].into_iter().find(|r| r.allows(action)).unwrap_or(Role::Admin)
    }
}

impl FromStr for Role {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "builder" => Ok(Role::Builder),
            "observer" => Ok(Role::Observer),
            other => Err(InvalidId { what: "role", value: other.to_string(), expected: "admin, builder or observer" }),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a caller wants to do; checked against its [`Role`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    View,
    /// What packages printed (output tails) and what they produced (artifacts): builders and
    /// admins, not observers — a package's output is the project's, not the pool's.
    ReadBuildOutput,
    TriggerBuild,
    CancelBuild,
    ModifyResources,
    ManageKeys,
    ManageNodes,
    ModifyConfig,
}

/// Plan §2.1 CPU resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CpuInfo {
    /// Logical cores the machine has.
    pub count: usize,
    /// Physical cores, where the OS tells.
    pub physical_count: Option<usize>,
    /// Cores this node offers after `resource_limits.cpu`.
    pub offered: usize,
    pub architecture: String,
    pub model: String,
    pub frequency_mhz: u64,
    pub features: Vec<String>,
}

/// Plan §2.1 memory resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MemoryInfo {
    pub total_bytes: u64,
    pub available_bytes: u64,
    /// Bytes this node offers after `resource_limits.memory`.
    pub offered_bytes: u64,
}

/// Plan §2.1 storage volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StorageVolume {
    pub path: String,
    pub mount_point: String,
    pub total_bytes: u64,
    pub available_bytes: u64,
    /// Bytes this node offers on the volume after `max_gb`.
    pub offered_bytes: u64,
    /// `ssd`, `hdd` from the kernel's rotational flag, or `unknown`; benchmarks refine it.
    pub storage_type: String,
    /// `data` for the data dir's volume, else the configured purpose (`cache`, `builds`, …).
    pub purpose: String,
}

/// Plan §2.1 tool or runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ToolInfo {
    pub name: String,
    pub path: String,
    /// The version number, e.g. `12.2.0`, when one could be read.
    pub version: Option<String>,
    /// The first line the tool printed when asked its version.
    pub version_output: Option<String>,
    pub capabilities: Vec<String>,
    /// Why the tool is present but not usable (probe timed out, failed to run, …).
    pub error: Option<String>,
}

/// Plan §2.1 network interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NetworkInterface {
    pub name: String,
    pub addresses: Vec<String>,
    pub mac_address: String,
}

/// Everything one scan found on one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeResources {
    pub cpu: CpuInfo,
    pub memory: MemoryInfo,
    pub storage: Vec<StorageVolume>,
    pub tools: Vec<ToolInfo>,
    pub runtimes: Vec<ToolInfo>,
    pub network: Vec<NetworkInterface>,
    /// Milliseconds since the Unix epoch when the scan finished.
    pub scanned_at_ms: u64,
    /// How long the scan took.
    pub scan_duration_ms: u64,
}

impl NodeResources {
    /// Every working tool and runtime by name, with its version: what placement and the action
    /// cache match requirements against.
    pub fn tool_versions(&self) -> std::collections::BTreeMap<String, Option<String>> {
        self.tools
            .iter()
            .chain(&self.runtimes)
            .filter(|t| t.error.is_none())
            .map(|t| (t.name.clone(), t.version.clone()))
            .collect()
    }

    /// The parts a user would call "what this node has", without fluctuating numbers (free
    /// memory, free disk, time of scan). Used to decide whether a rescan changed anything.
    pub fn fingerprint(&self) -> String {
        let storage: Vec<_> = self
            .storage
            .iter()
            .map(|v| (&v.path, v.total_bytes, v.offered_bytes / (1 << 30), &v.storage_type))
            .collect();
        let tools: Vec<_> = self
            .tools
            .iter()
            .chain(&self.runtimes)
            .map(|t| (&t.name, &t.path, &t.version, t.error.is_some()))
            .collect();
        let text = serde_json::json!({
            "cpu": [self.cpu.count, self.cpu.offered],
            "memory": [self.memory.total_bytes, self.memory.offered_bytes / (1 << 20)],
            "storage": storage,
            "tools": tools,
        });
        blake3::hash(text.to_string().as_bytes()).to_hex().to_string()
    }
}

/// The kind of resource a lease is taken on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ResourceKind {
    Cpu,
    Memory,
    Storage,
    Tool,
    Runtime,
}

impl ResourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Cpu => "cpu",
            ResourceKind::Memory => "memory",
            ResourceKind::Storage => "storage",
            ResourceKind::Tool => "tool",
            ResourceKind::Runtime => "runtime",
        }
    }

    /// The unit in which leases on this kind are counted.
    pub fn unit(self) -> &'static str {
        match self {
            ResourceKind::Cpu => "cores",
            ResourceKind::Memory | ResourceKind::Storage => "bytes",
            ResourceKind::Tool | ResourceKind::Runtime => "slots",
        }
    }
}

impl FromStr for ResourceKind {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(ResourceKind::Cpu),
            "memory" => Ok(ResourceKind::Memory),
            "storage" => Ok(ResourceKind::Storage),
            "tool" => Ok(ResourceKind::Tool),
            "runtime" => Ok(ResourceKind::Runtime),
            other => Err(InvalidId {
                what: "resource type",
                value: other.to_string(),
                expected: "cpu, memory, storage, tool or runtime",
            }),
        }
    }
}

/// A request for part of a resource, sent to the actor that owns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LeaseRequest {
    /// Cores, bytes or slots, per [`ResourceKind::unit`].
    pub amount: u64,
    /// Who holds the lease (a build id, a test, …).
    pub holder: String,
    /// How long the lease lives unless renewed.
    pub ttl_ms: u64,
    /// Coordinator epoch of the requester; an owner refuses epochs older than it has seen.
    pub epoch: u64,
}

/// A granted lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Lease {
    pub id: String,
    pub resource: String,
    pub amount: u64,
    pub holder: String,
    pub expires_at_ms: u64,
    pub epoch: u64,
}

/// Hybrid logical clock reading: wall milliseconds, then a counter for events in the same
/// millisecond. Orders the merged ledger across nodes whose clocks disagree a little.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
pub struct Hlc {
    pub wall_ms: u64,
    pub logical: u32,
}

/// One ledger entry as stored and as sent between nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LedgerEntry {
    /// The node whose chain this entry belongs to.
    pub origin: NodeId,
    /// Position in the origin's chain, from 1.
    pub seq: u64,
    /// Hash of the origin's previous entry (64 zeros for the first).
    pub prev_hash: String,
    pub hlc: Hlc,
    pub entry_type: LedgerEntryType,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    /// BLAKE3 of the canonical encoding, hex.
    pub hash: String,
    /// Ed25519 signature of the hash by the origin, hex.
    pub signature: String,
}

/// What happened (plan §10.1, extended with key, scan and join events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum LedgerEntryType {
    NodeJoined,
    NodeLeft,
    NodeStarted,
    NodeStopped,
    ResourcesChanged,
    KeyCreated,
    KeyRevoked,
    JoinRefused,
    BuildStarted,
    BuildCompleted,
    BuildFailed,
    ResourceAllocated,
    ResourceReleased,
    ConfigCreated,
    ConfigModified,
    BenchmarkCompleted,
}

impl LedgerEntryType {
    pub const ALL: [LedgerEntryType; 16] = [
        LedgerEntryType::NodeJoined,
        LedgerEntryType::NodeLeft,
        LedgerEntryType::NodeStarted,
        LedgerEntryType::NodeStopped,
        LedgerEntryType::ResourcesChanged,
        LedgerEntryType::KeyCreated,
        LedgerEntryType::KeyRevoked,
        LedgerEntryType::JoinRefused,
        LedgerEntryType::BuildStarted,
        LedgerEntryType::BuildCompleted,
        LedgerEntryType::BuildFailed,
        LedgerEntryType::ResourceAllocated,
        LedgerEntryType::ResourceReleased,
        LedgerEntryType::ConfigCreated,
        LedgerEntryType::ConfigModified,
        LedgerEntryType::BenchmarkCompleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LedgerEntryType::NodeJoined => "NodeJoined",
            LedgerEntryType::NodeLeft => "NodeLeft",
            LedgerEntryType::NodeStarted => "NodeStarted",
            LedgerEntryType::NodeStopped => "NodeStopped",
            LedgerEntryType::ResourcesChanged => "ResourcesChanged",
            LedgerEntryType::KeyCreated => "KeyCreated",
            LedgerEntryType::KeyRevoked => "KeyRevoked",
            LedgerEntryType::JoinRefused => "JoinRefused",
            LedgerEntryType::BuildStarted => "BuildStarted",
            LedgerEntryType::BuildCompleted => "BuildCompleted",
            LedgerEntryType::BuildFailed => "BuildFailed",
            LedgerEntryType::ResourceAllocated => "ResourceAllocated",
            LedgerEntryType::ResourceReleased => "ResourceReleased",
            LedgerEntryType::ConfigCreated => "ConfigCreated",
            LedgerEntryType::ConfigModified => "ConfigModified",
            LedgerEntryType::BenchmarkCompleted => "BenchmarkCompleted",
        }
    }
}

impl FromStr for LedgerEntryType {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LedgerEntryType::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| InvalidId {
            what: "ledger entry type",
            value: s.to_string(),
            expected: "one of NodeJoined, NodeLeft, KeyCreated, BuildStarted, … (see /api/openapi.json)",
        })
    }
}

impl fmt::Display for LedgerEntryType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_shows_as_what_it_is() {
        for good in ["alpha", "build-01", "Ünïcode ok", "東京"] {
            assert!(is_display_name(good), "{good}");
        }
        let long = "n".repeat(MAX_NAME + 1);
        for bad in [
            "",
            "   ",
            "a\nb",
            "x\u{1b}[2J",
            "admin\u{202E}nimda",
            "al\u{200B}pha",
            "a\u{2028}b",
            "k\u{E0020}ey",
            "\u{3164}",
            "a\u{206A}b",
            "a\u{FE0F}",
            long.as_str(),
        ] {
            assert!(!is_display_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn node_id_parses_only_16_lower_hex() {
        assert!(NodeId::parse("0123456789abcdef").is_ok());
        assert!(NodeId::parse("0123456789ABCDEF").is_err());
        assert!(NodeId::parse("0123").is_err());
        assert!(NodeId::parse("0123456789abcdeg").is_err());
        let id = NodeId::from_public_key(&[0xab; 32]);
        assert_eq!(id.as_str(), "abababababababab");
    }

    #[test]
    fn node_id_is_checked_when_deserialized() {
        let bad: Result<NodeId, _> = serde_json::from_str("\"nope\"");
        assert!(bad.is_err());
        let good: NodeId = serde_json::from_str("\"00000000000000ff\"").expect("valid id");
        assert_eq!(good.as_str(), "00000000000000ff");
        // The inline form refuses every other shape with a message naming what a node id is.
        for hostile in ["17", "null", "[\"00000000000000ff\"]", "\"00000000000000fff\"", "\"00000000000000f\u{e9}\""] {
            let refused = serde_json::from_str::<NodeId>(hostile).expect_err(hostile).to_string();
            assert!(refused.contains("node id"), "{hostile}: {refused}");
        }
        // An escaped but valid id is read as its text, and the wire form is the text.
        let escaped: NodeId = serde_json::from_str("\"00000000000000\\u0066f\"").expect("escaped id");
        assert_eq!(escaped, good);
        let packed = rmp_serde::to_vec(&good).expect("encode");
        assert_eq!(rmp_serde::from_slice::<String>(&packed).expect("a string"), "00000000000000ff");
        assert_eq!(rmp_serde::from_slice::<NodeId>(&packed).expect("decode"), good);
        assert_eq!(format!("{good:?}"), "\"00000000000000ff\"");
    }

    #[test]
    fn roles_allow_per_plan() {
        assert!(Role::Admin.allows(Action::ManageKeys));
        assert!(Role::Builder.allows(Action::TriggerBuild));
        assert!(!Role::Builder.allows(Action::ModifyResources));
        assert!(Role::Observer.allows(Action::View));
        assert!(!Role::Observer.allows(Action::ModifyResources));
        assert!(!Role::Observer.allows(Action::TriggerBuild));
    }

    #[test]
    fn entry_types_round_trip_through_text() {
        for t in LedgerEntryType::ALL {
            assert_eq!(t.as_str().parse::<LedgerEntryType>().ok(), Some(t));
            let json = serde_json::to_string(&t).expect("serializes");
            assert_eq!(json, format!("\"{}\"", t.as_str()));
        }
    }

    #[test]
    fn hex_round_trips() {
        let bytes = [0u8, 1, 0xfe, 0xff];
        assert_eq!(unhex(&hex(&bytes)), Some(bytes.to_vec()));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn envelope_survives_messagepack() {
        let env = Envelope {
            v: PROTOCOL_VERSION,
            id: 7,
            from: NodeId::parse("0123456789abcdef").expect("valid"),
            to: None,
            body: LeaseRequest { amount: 2, holder: "b1".into(), ttl_ms: 1000, epoch: 3 },
        };
        let bytes = rmp_serde::to_vec_named(&env).expect("encodes");
        let back: Envelope<LeaseRequest> = rmp_serde::from_slice(&bytes).expect("decodes");
        assert_eq!(back.body, env.body);
        assert_eq!(back.from, env.from);
    }
}
