//! Blob transfer: a peer's `BlobWant` answered with in-order chunks, chunks reassembled and
//! checked against their digest before they enter the CAS.

use actix::prelude::*;

use std::collections::HashMap;

use super::MeshActor;
use crate::cas::Cas;
use crate::wire::{self, MeshMessage};

/// Bytes of a blob per chunk: with framing, one chunk stays well inside a Noise frame.
const CHUNK: usize = 48 * 1024;

/// This node's blobs, and blobs arriving from peers.
pub(super) struct Transfer {
    pub(super) cas: Cas,
    /// Blobs being received: digest → bytes so far.
    receiving: HashMap<String, Vec<u8>>,
}

impl Transfer {
    pub(super) fn new(cas: Cas) -> Transfer {
        Transfer { cas, receiving: HashMap::new() }
    }
}

impl MeshActor {
    /// Streams a blob to a peer in chunks.
    pub(super) fn send_blob(&self, link_id: u64, digest: &str) {
        let Ok(bytes) = self.transfer.cas.read(digest) else {
            log::warn!("a peer asked for blob {digest}, which this node does not hold");
            return;
        };
        let total = bytes.len() as u64;
        if bytes.is_empty() {
            self.send(
                link_id,
                MeshMessage::BlobChunk(wire::BlobChunk { digest: digest.to_string(), offset: 0, total, data: vec![] }),
            );
        }
        for (i, part) in bytes.chunks(CHUNK).enumerate() {
            let chunk =
                wire::BlobChunk { digest: digest.to_string(), offset: (i * CHUNK) as u64, total, data: part.to_vec() };
            self.send(link_id, MeshMessage::BlobChunk(chunk));
        }
    }

    pub(super) fn on_chunk(&mut self, ctx: &mut Context<Self>, chunk: wire::BlobChunk) {
        if self.transfer.cas.has(&chunk.digest) {
            return;
        }
        let buf = self.transfer.receiving.entry(chunk.digest.clone()).or_default();
        if chunk.offset != buf.len() as u64 || chunk.total > (1 << 32) {
            log::warn!("blob {}: chunk out of order; dropped", chunk.digest);
            self.transfer.receiving.remove(&chunk.digest);
            return;
        }
        buf.extend_from_slice(&chunk.data);
        if (buf.len() as u64) < chunk.total {
            return;
        }
        let bytes = self.transfer.receiving.remove(&chunk.digest).unwrap_or_default();
        if let Err(e) = self.transfer.cas.put_verified(&chunk.digest, &bytes) {
            log::warn!("blob {}: {e}", chunk.digest);
        }
        self.start_ready_tasks(ctx);
    }

    pub(super) fn on_blob_want(&mut self, link_id: u64, digests: Vec<String>) {
        for d in digests {
            self.send_blob(link_id, &d);
        }
    }
}
