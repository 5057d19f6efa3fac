//! The node's identity: an Ed25519 signing key kept in the data dir (mode 0600). The node id is
//! derived from the public key, so it cannot be claimed without the key.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};

use crate::wire::{self, NodeId};

/// File name of the signing key inside the data dir.
pub const KEY_FILE: &str = "node.key";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a node key (expected 64 hex digits)")]
    Malformed { path: PathBuf },
}

/// This node's keys and the id derived from them.
#[derive(Clone)]
pub struct Identity {
    signing: SigningKey,
    pub node_id: NodeId,
}

impl Identity {
    /// Loads the key from `data_dir`, creating it on first start. Returns whether it was created.
    pub fn load_or_create(data_dir: &Path) -> Result<(Identity, bool), IdentityError> {
        let path = data_dir.join(KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let bytes: [u8; 32] = wire::unhex(text.trim())
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| IdentityError::Malformed { path: path.clone() })?;
                Ok((Identity::from_secret(&bytes), false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let signing = SigningKey::generate(&mut rand::rngs::OsRng);
                write_secret(&path, wire::hex(&signing.to_bytes()).as_bytes())
                    .map_err(|source| IdentityError::Io { path: path.clone(), source })?;
                Ok((Identity::from_secret(&signing.to_bytes()), true))
            }
            Err(source) => Err(IdentityError::Io { path, source }),
        }
    }

    pub fn from_secret(secret: &[u8; 32]) -> Identity {
        let signing = SigningKey::from_bytes(secret);
        let node_id = NodeId::from_public_key(signing.verifying_key().as_bytes());
        Identity { signing, node_id }
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }
}

/// Checks an Ed25519 signature by `public_key` over `message`.
pub fn verify(public_key: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(public_key) else {
        return false;
    };
    key.verify(message, &ed25519_dalek::Signature::from_bytes(signature)).is_ok()
}

/// Checks many Ed25519 signatures at once: (public key, message, signature) each; true only when
/// every one verifies. Batch verification costs about half of checking one by one; it is
/// cofactored, so a key's holder could craft a signature this accepts and [`verify`] refuses —
/// only about their own entries, which `ledger verify` then names. Callers find the culprit of a
/// failed batch with [`verify`].
pub fn verify_batch(items: &[(&[u8; 32], &[u8], [u8; 64])]) -> bool {
    let mut keys: std::collections::HashMap<&[u8; 32], VerifyingKey> = std::collections::HashMap::new();
    let mut verifying = Vec::with_capacity(items.len());
    for (key, _, _) in items {
        let parsed = match keys.get(key) {
            Some(k) => *k,
            None => {
                let Ok(k) = VerifyingKey::from_bytes(key) else { return false };
                keys.insert(key, k);
                k
            }
        };
        verifying.push(parsed);
    }
    let messages: Vec<&[u8]> = items.iter().map(|(_, m, _)| *m).collect();
    let signatures: Vec<ed25519_dalek::Signature> =
        items.iter().map(|(_, _, s)| ed25519_dalek::Signature::from_bytes(s)).collect();
    ed25519_dalek::verify_batch(&messages, &signatures, &verifying).is_ok()
}

/// Writes a file only its owner may read (0600), replacing any old one.
pub fn write_secret(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_is_created_once_with_mode_0600_and_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (first, created) = Identity::load_or_create(dir.path()).expect("create");
        assert!(created);
        let mode = std::fs::metadata(dir.path().join(KEY_FILE)).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, created) = Identity::load_or_create(dir.path()).expect("load");
        assert!(!created);
        assert_eq!(first.node_id, again.node_id);
    }

    #[test]
    fn signatures_verify_and_tampering_fails() {
        let id = Identity::from_secret(&[7; 32]);
        let sig = id.sign(b"hello");
        assert!(verify(&id.public_key(), b"hello", &sig));
        assert!(!verify(&id.public_key(), b"hellp", &sig));
        let other = Identity::from_secret(&[8; 32]);
        assert!(!verify(&other.public_key(), b"hello", &sig));
    }

    #[test]
    fn a_malformed_key_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(KEY_FILE), "zz").expect("write");
        assert!(matches!(Identity::load_or_create(dir.path()), Err(IdentityError::Malformed { .. })));
    }
}
