//! What two nodes say to each other over a link: the envelope and every message, encoded as
//! MessagePack with field names so version skew keeps working.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{LedgerEntry, NodeId, NodeStatus, RemoteError, RosterEntry, TaskRequest, TaskResult};

/// The envelope every mesh message travels in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<B> {
    pub v: u16,
    pub id: u64,
    pub from: NodeId,
    pub to: Option<NodeId>,
    pub body: B,
}

/// Everything two nodes say to each other over a link, inside an [`Envelope`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MeshMessage {
    /// First message on a link: who I am now and where I can be reached.
    Hello(Hello),
    /// Heartbeat; carries the sender's coordinator view so views converge.
    Ping {
        sent_ms: u64,
        view: CoordinatorView,
    },
    Pong {
        echo_ms: u64,
    },
    /// A member's resources and their availability: the sender's own, or one it passes on
    /// (see `mesh/adverts.rs`). `seq` grows with every change its origin makes.
    Advert {
        seq: u64,
        status: Box<NodeStatus>,
    },
    /// The sender lacks these members' adverts; the receiver answers with those it holds.
    AdvertWant {
        nodes: Vec<NodeId>,
    },
    /// Signed roster entries the receiver may not have.
    Roster {
        entries: Vec<RosterEntry>,
    },
    /// The sender's ledger heads; the receiver answers with entries the sender lacks. One head
    /// per member whose chain it holds, so they go packed ([`packed_heads`]): with field names
    /// a head took ~125 bytes and a mesh past ~520 members could not send its heads in a frame.
    LedgerHeads {
        #[serde(with = "packed_heads")]
        heads: Vec<Head>,
    },
    /// A bounded batch of ledger entries, in chain order per origin.
    LedgerEntries {
        entries: Vec<LedgerEntry>,
        /// How far along the grid they have been passed (see the mesh's `pass_on`): 0 for an
        /// answer to an ask (and from older senders), 1 from their origin or the member that
        /// fetched them, 2 passed on once more, and no further.
        #[serde(default)]
        hop: u8,
    },
    /// The sender leaves the mesh.
    Leave {
        node_id: NodeId,
    },
    /// The sender switches to a new key for what it sends next.
    Rekey,
    /// Run a package here (the sender holds every blob it names).
    TaskRequest(Box<TaskRequest>),
    /// Blobs the sender needs from the receiver (it asks for a few at a time).
    BlobWant {
        digests: Vec<String>,
    },
    /// Part of a blob; parts arrive in order on a link, at most a window ahead of the last
    /// [`MeshMessage::BlobAck`].
    BlobChunk(BlobChunk),
    /// The receiver of a blob has written its first `offset` bytes: the sender may send more.
    /// An `offset` at or past the blob's size ends the transfer (received whole, or abandoned:
    /// then `u64::MAX`).
    BlobAck {
        digest: String,
        offset: u64,
    },
    /// How a requested task ended; the requester pulls outputs it lacks with `BlobWant`.
    /// Small outputs come along (`outputs`, at most [`INLINE_OUTPUT_BYTES`] in all): an object
    /// file of a few kilobytes then costs no `BlobWant`, chunk and ack — three messages and two
    /// hops through both nodes' actors on the build's path, per package (issue 14).
    TaskDone {
        task_id: u64,
        result: Result<TaskResult, RemoteError>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        outputs: Vec<InlineBlob>,
    },
    /// Stop every package of this build that the receiver runs for the sender.
    TaskCancel {
        build_id: String,
    },
    /// A digest of the sender's ledger heads, sent every tick instead of the heads: a peer whose
    /// own heads differ answers with its `LedgerHeads`, so an idle mesh sends 32 bytes per link
    /// per second instead of one head per node.
    LedgerDigest {
        digest: String,
    },
    /// A SWIM message (membership and failure detection, `mesh/gossip.rs`): opaque to the
    /// envelope, encoded by the gossip layer.
    Swim {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// A SWIM message for a node the sender has no link to: the receiver passes it on as
    /// [`MeshMessage::SwimRelayed`] over its own link to `to` (one hop, never further).
    SwimVia {
        to: NodeId,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// A SWIM message passed on by the link's peer from the member it names as sender.
    SwimRelayed {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Output a requested task printed so far (at most [`crate::wire::OUTPUT_CHUNK`] bytes), sent
    /// while it runs so the requester's build page and CLI can show it live.
    TaskOutput {
        task_id: u64,
        chunk: String,
    },
    /// Network benchmark (see `mesh::netbench`): answer with `NetEchoReply` at once.
    NetEcho {
        probe: u64,
        seq: u32,
    },
    NetEchoReply {
        probe: u64,
        seq: u32,
    },
    /// Benchmark payload, counted by the receiver and otherwise dropped.
    NetData {
        probe: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The end of a probe's payload: the uploader's peer answers `NetReceived`.
    NetDataEnd {
        probe: u64,
    },
    NetReceived {
        probe: u64,
        bytes: u64,
    },
    /// Send me this many bytes of payload for `probe`, then `NetDataEnd` (a download test).
    NetPull {
        probe: u64,
        bytes: u64,
    },
    /// The coordinator's turn for the receiver to run its scheduled benchmark.
    BenchmarkGrant {
        epoch: u64,
    },
}

/// Bytes of a blob in MessagePack's binary form.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobChunk {
    pub digest: String,
    pub offset: u64,
    pub total: u64,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// Outputs sent inside a `TaskDone` at most, in bytes: with the result (its output tail is at
/// most `OUTPUT_TAIL`) and the envelope, well inside one frame.
pub const INLINE_OUTPUT_BYTES: u64 = 32 * 1024;

/// A whole blob sent along with what names it; the receiver stores it only if it hashes to
/// `digest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InlineBlob {
    pub digest: String,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub node_id: NodeId,
    pub name: String,
    pub address: String,
    pub version: String,
    /// A digest of the sender's roster: the receiver sends its roster only when its own
    /// differs, instead of every roster entry on every new link.
    #[serde(default)]
    pub roster_digest: String,
    /// The `seq` of the receiver's own advert that the sender holds (0: none). The receiver
    /// sends its advert over the new link only when it has a different one, instead of on
    /// every new link (after a heal every member gets new links to the whole other side).
    #[serde(default)]
    pub your_advert_seq: u64,
}

/// Who a node thinks coordinates, and the epoch of that choice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CoordinatorView {
    pub coordinator: NodeId,
    pub epoch: u64,
}

/// The newest entry of one origin's chain as a node holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Head {
    pub origin: NodeId,
    pub seq: u64,
    pub hash: String,
}

/// Heads as one byte string of [`packed_heads::HEAD_BYTES`] per head: the origin's 16 bytes, the
/// sequence number (8, big-endian) and the hash's 32 bytes. A frame holds ~1,160 of them.
pub(crate) mod packed_heads {
    use super::Head;
    use crate::wire::NodeId;
    use serde::de::Error as _;
    use serde::ser::Error as _;
    use serde::{Deserializer, Serializer};

    pub const HEAD_BYTES: usize = 16 + 8 + 32;

    pub fn serialize<S: Serializer>(heads: &[Head], serializer: S) -> Result<S::Ok, S::Error> {
        let mut packed = Vec::with_capacity(heads.len() * HEAD_BYTES);
        for head in heads {
            let hash = crate::wire::unhex(&head.hash)
                .filter(|h| h.len() == 32)
                .ok_or_else(|| S::Error::custom(format!("head of {}: the hash is not 32 bytes of hex", head.origin)))?;
            packed.extend_from_slice(&head.origin.0);
            packed.extend_from_slice(&head.seq.to_be_bytes());
            packed.extend_from_slice(&hash);
        }
        serializer.serialize_bytes(&packed)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Head>, D::Error> {
        let packed: serde_bytes::ByteBuf = serde::Deserialize::deserialize(deserializer)?;
        if !packed.len().is_multiple_of(HEAD_BYTES) {
            return Err(D::Error::custom(format!("{} bytes of heads: not a multiple of {HEAD_BYTES}", packed.len())));
        }
        packed
            .chunks_exact(HEAD_BYTES)
            .map(|h| {
                // A node id is its 16 hex digits; anything else is refused as text would be.
                let origin = std::str::from_utf8(&h[..16])
                    .ok()
                    .and_then(|text| NodeId::parse(text).ok())
                    .ok_or_else(|| D::Error::custom("a head's origin is not a node id"))?;
                let mut seq = [0u8; 8];
                seq.copy_from_slice(&h[16..24]);
                Ok(Head { origin, seq: u64::from_be_bytes(seq), hash: crate::wire::hex(&h[24..]) })
            })
            .collect()
    }
}

/// Encodes a message for a link (MessagePack with field names).
pub fn encode(env: &Envelope<MeshMessage>) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(env)
}

/// Deepest nesting a frame may have. A message needs about ten levels, plus a ledger entry's
/// JSON data (at most 128 levels: the API's JSON parser allows no more). rmp-serde's default of
/// 1024 overflowed a 2 MiB thread stack in debug builds (found by fuzzing, `fuzz/`).
pub const MAX_DEPTH: usize = 256;

/// Decodes a message from a link. Lengths are checked against the bytes that are there before
/// anything is allocated for them (`rmp-serde` reading a slice, serde's capped size hints).
pub fn decode(bytes: &[u8]) -> Result<Envelope<MeshMessage>, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_DEPTH);
    Envelope::deserialize(&mut de)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(body: MeshMessage) -> Envelope<MeshMessage> {
        Envelope {
            v: crate::wire::PROTOCOL_VERSION,
            id: 1,
            from: NodeId::parse("0000000000000001").expect("id"),
            to: None,
            body,
        }
    }

    #[test]
    fn the_heads_of_a_thousand_members_fit_one_frame_and_arrive_as_sent() {
        let heads: Vec<Head> = (0..1000u64)
            .map(|i| Head {
                origin: NodeId::parse(&format!("{i:016x}")).expect("id"),
                seq: i * 1_000_003,
                hash: format!("{:064x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            })
            .collect();
        let bytes = encode(&envelope(MeshMessage::LedgerHeads { heads: heads.clone() })).expect("encodes");
        // The frame's plaintext limit (`mesh::noise::MAX_PLAINTEXT`): with field names these
        // heads took ~125 KB, and past ~520 members a node's heads could not be sent at all.
        assert!(bytes.len() <= 65_519, "{} bytes", bytes.len());
        let Ok(Envelope { body: MeshMessage::LedgerHeads { heads: back }, .. }) = decode(&bytes) else {
            panic!("decodes as heads")
        };
        assert_eq!(back, heads);
    }

    #[test]
    fn packed_heads_that_are_not_heads_are_refused() {
        let ok = Head { origin: NodeId::parse("00000000000000ab").expect("id"), seq: 7, hash: "cd".repeat(32) };
        let bytes = encode(&envelope(MeshMessage::LedgerHeads { heads: vec![ok.clone()] })).expect("encodes");
        // The origin's digits are the packing's first 16 bytes, right after the bytes' header.
        let at = bytes.windows(16).position(|w| w == b"00000000000000ab").expect("origin in the frame");
        let mut bad_origin = bytes.clone();
        bad_origin[at] = b'G';
        assert!(decode(&bad_origin).is_err(), "an origin that is not a node id");
        let short =
            rmp_serde::to_vec(&serde_bytes::ByteBuf::from(vec![b'0'; packed_heads::HEAD_BYTES - 1])).expect("bytes");
        assert!(
            packed_heads::deserialize(&mut rmp_serde::Deserializer::new(&short[..])).is_err(),
            "a packing that is not whole heads"
        );
        let unhexed = Head { hash: "not hex".into(), ..ok };
        assert!(encode(&envelope(MeshMessage::LedgerHeads { heads: vec![unhexed] })).is_err(), "a hash not 32 bytes");
    }
}
