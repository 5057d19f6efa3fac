//! The content-addressed store: blobs named by their BLAKE3 digest under `<data-dir>/cas`.
//! Inputs and outputs of builds move between nodes as digests; only missing blobs travel.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub use crate::wire::FileRef;

#[derive(Debug, thiserror::Error)]
pub enum CasError {
    #[error("'{0}' is not a BLAKE3 digest (64 hex digits)")]
    BadDigest(String),
    #[error("blob {0} is not in the store")]
    Missing(String),
    #[error("content does not match digest {expected} (it hashes to {actual})")]
    Mismatch { expected: String, actual: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CasError + '_ {
    move |source| CasError::Io { path: path.to_path_buf(), source }
}

/// Checks that text is a digest.
pub fn valid_digest(d: &str) -> bool {
    d.len() == 64 && d.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[derive(Debug, Clone)]
pub struct Cas {
    root: PathBuf,
}

impl Cas {
    pub fn open(root: PathBuf) -> Result<Cas, CasError> {
        std::fs::create_dir_all(root.join("tmp")).map_err(io(&root))?;
        Ok(Cas { root })
    }

    pub fn path(&self, digest: &str) -> Result<PathBuf, CasError> {
        if !valid_digest(digest) {
            return Err(CasError::BadDigest(digest.chars().take(80).collect()));
        }
        Ok(self.root.join(&digest[..2]).join(digest))
    }

    pub fn has(&self, digest: &str) -> bool {
        self.path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    /// Digests from a list this store lacks.
    pub fn missing(&self, digests: &[String]) -> Vec<String> {
        digests.iter().filter(|d| !self.has(d)).cloned().collect()
    }

    /// Stores bytes that must hash to `expected`.
    pub fn put_verified(&self, expected: &str, bytes: &[u8]) -> Result<(), CasError> {
        let target = self.path(expected)?;
        let actual = blake3::hash(bytes).to_hex().to_string();
        if actual != expected {
            return Err(CasError::Mismatch { expected: expected.to_string(), actual });
        }
        self.write_atomically(&target, |f| f.write_all(bytes))
    }

    /// Stores a file from disk; returns its digest and size.
    pub fn put_file(&self, source: &Path) -> Result<(String, u64), CasError> {
        let (digest, size) = hash_file(source)?;
        let target = self.path(&digest)?;
        if !target.is_file() {
            self.write_atomically(&target, |f| {
                let mut from = std::fs::File::open(source)?;
                std::io::copy(&mut from, f).map(|_| ())
            })?;
        }
        Ok((digest, size))
    }

    fn write_atomically(
        &self,
        target: &Path,
        fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
    ) -> Result<(), CasError> {
        if target.is_file() {
            return Ok(());
        }
        let dir = target.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let tmp = self.root.join("tmp").join(format!(
            "{}.{}",
            target.file_name().and_then(|n| n.to_str()).unwrap_or("blob"),
            rand::random::<u64>()
        ));
        let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        fill(&mut file).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, target).map_err(io(target))
    }

    pub fn read(&self, digest: &str) -> Result<Vec<u8>, CasError> {
        let path = self.path(digest)?;
        std::fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                CasError::Missing(digest.to_string())
            } else {
                CasError::Io { path, source: e }
            }
        })
    }

    /// Writes a blob to `dest` (creating directories), executable if asked.
    pub fn materialize(&self, file: &FileRef, dest: &Path) -> Result<(), CasError> {
        let source = self.path(&file.digest)?;
        if !source.is_file() {
            return Err(CasError::Missing(file.digest.clone()));
        }
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        std::fs::copy(&source, dest).map_err(io(dest))?;
        set_executable(dest, file.executable).map_err(io(dest))
    }
}

/// BLAKE3 and size of a file, streamed.
pub fn hash_file(path: &Path) -> Result<(String, u64), CasError> {
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hasher.finalize().to_hex().to_string(), size))
}

pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).map(|m| m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

pub fn set_executable(path: &Path, executable: bool) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if executable { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_stored_by_digest_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cas = Cas::open(dir.path().join("cas")).expect("open");
        let digest = blake3::hash(b"hello").to_hex().to_string();
        assert_eq!(cas.missing(std::slice::from_ref(&digest)), vec![digest.clone()]);
        assert!(matches!(cas.put_verified(&digest, b"hellp"), Err(CasError::Mismatch { .. })));
        cas.put_verified(&digest, b"hello").expect("put");
        assert!(cas.has(&digest));
        assert_eq!(cas.read(&digest).expect("read"), b"hello");
        assert!(matches!(cas.path("../../etc/passwd"), Err(CasError::BadDigest(_))));

        let src = dir.path().join("tool.sh");
        std::fs::write(&src, "#!/bin/sh\n").expect("write");
        let (d, size) = cas.put_file(&src).expect("put file");
        assert_eq!(size, 10);
        let out = dir.path().join("x/y/tool.sh");
        cas.materialize(&FileRef { path: "x".into(), digest: d, executable: true, size }, &out).expect("materialize");
        assert!(is_executable(&out));
    }
}
