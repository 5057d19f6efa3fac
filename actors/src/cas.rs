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
    /// Opens the store (once per node, at start): blobs half-received when the node last
    /// stopped are deleted.
    pub fn open(root: PathBuf) -> Result<Cas, CasError> {
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(io(&root))?;
        for entry in std::fs::read_dir(&tmp).map_err(io(&tmp))?.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
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

    /// The size of a stored blob, `None` when it is not stored.
    pub fn size_of(&self, digest: &str) -> Option<u64> {
        self.path(digest).ok().and_then(|p| std::fs::metadata(p).ok()).filter(|m| m.is_file()).map(|m| m.len())
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
        seal(&file).map_err(io(&tmp))?;
        std::fs::rename(&tmp, target).map_err(io(target))
    }

    /// A writer for a blob that must hash to `expected`: bytes go to a temporary file in the
    /// store, hashed as they arrive; [`BlobWriter::finish`] moves the file into place only if
    /// the digest matches. Nothing of the blob is held in memory.
    pub fn writer(&self, expected: &str) -> Result<BlobWriter, CasError> {
        let target = self.path(expected)?;
        let tmp = self.root.join("tmp").join(format!("{expected}.{:016x}", rand::random::<u64>()));
        let file = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(io(&tmp))?;
        Ok(BlobWriter { expected: expected.to_string(), target, tmp, file, hasher: blake3::Hasher::new(), written: 0 })
    }

    /// Opens a stored blob for reading, with its size.
    pub fn open_blob(&self, digest: &str) -> Result<(std::fs::File, u64), CasError> {
        let path = self.path(digest)?;
        let file = std::fs::File::open(&path).map_err(|e| missing_or_io(digest, &path, e))?;
        let size = file.metadata().map_err(io(&path))?.len();
        Ok((file, size))
    }

    /// Reads a whole blob into memory: for small blobs and tests only — artifacts are streamed
    /// with [`Cas::open_blob`] and [`Cas::writer`].
    pub fn read(&self, digest: &str) -> Result<Vec<u8>, CasError> {
        let path = self.path(digest)?;
        std::fs::read(&path).map_err(|e| missing_or_io(digest, &path, e))
    }

    /// Puts a blob at `dest`, in a directory the caller has made (`exec::layout::inputs` makes
    /// each one once for every input under it). With `link_for`, the user a contained
    /// package runs as, the blob is a hard link to the stored object when that is safe (see
    /// [`linkable`]): no new file, so no inode to allocate — on this machine's ext4 each new one
    /// cost more than the rest of staging — and read-only for the package. Otherwise, or when the
    /// link fails (another filesystem, too many links), it is a copy of its own, executable if
    /// asked.
    pub fn materialize(&self, file: &FileRef, dest: &Path, link_for: Option<u32>) -> Result<Staged, CasError> {
        let source = self.path(&file.digest)?;
        let object = match std::fs::metadata(&source) {
            Ok(m) if m.is_file() => m,
            _ => return Err(CasError::Missing(file.digest.clone())),
        };
        if link_for.is_some_and(|user| linkable(&object, user, file.executable)) {
            match std::fs::hard_link(&source, dest) {
                Ok(()) => return Ok(Staged::Linked(Object::of(&object))),
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => warn_copying_across_filesystems(dest),
                Err(_) => {}
            }
        }
        std::fs::copy(&source, dest).map_err(io(dest))?;
        set_executable(dest, file.executable).map_err(io(dest))?;
        Ok(Staged::Copied)
    }
}

/// How [`Cas::materialize`] put a blob in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Staged {
    /// A hard link to this stored object.
    Linked(Object),
    /// A copy of its own.
    Copied,
}

/// A stored object's inode as a hard link to it shows it: a regular file on the store's device
/// with the object's inode number and owner is that object. The owner matters because a link is
/// only made for a package that runs as another user ([`linkable`]), which cannot make a file of
/// its own owned by the node's user — not even one that reuses the number of a freed inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Object {
    device: u64,
    inode: u64,
    owner: u32,
}

impl Object {
    fn of(m: &std::fs::Metadata) -> Object {
        use std::os::unix::fs::MetadataExt;
        Object { device: m.dev(), inode: m.ino(), owner: m.uid() }
    }

    /// Whether `m` (read without following a link) is this object.
    pub fn is(&self, m: &std::fs::Metadata) -> bool {
        m.is_file() && Object::of(m) == *self
    }
}

/// The mode of stored objects: nobody writes an object once it is stored, and a package handed
/// one as a hard link must not be able to either.
const OBJECT_MODE: u32 = 0o444;

/// Whether a stored object (`object`, its metadata) may be handed as a hard link to a package
/// running as `user`. A link shares the object's inode — content, mode and owner — so the
/// package's user must neither own it (an owner may chmod, then write) nor have write bits on it
/// through its group or as other, and its executable bit must already be the one the input asks
/// for: a link has no mode of its own, and changing it would change the object.
pub fn linkable(object: &std::fs::Metadata, user: u32, executable: bool) -> bool {
    use std::os::unix::fs::MetadataExt;
    object.uid() != user && object.mode() & 0o022 == 0 && (object.mode() & 0o111 != 0) == executable
}

/// Says once per process that inputs are copied because the sandboxes are on another filesystem
/// than the store (a configuration's storage volume, say): a hard link cannot cross it.
fn warn_copying_across_filesystems(dest: &Path) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        log::warn!(
            "inputs are copied into sandboxes such as {}: they are on another filesystem than the store, which a hard link cannot cross",
            dest.display()
        )
    });
}

/// Makes a complete blob's file read-only ([`OBJECT_MODE`]) and durable, before it is renamed into
/// the store.
fn seal(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(OBJECT_MODE))?;
    file.sync_all()
}

fn missing_or_io(digest: &str, path: &Path, e: std::io::Error) -> CasError {
    if e.kind() == std::io::ErrorKind::NotFound {
        CasError::Missing(digest.to_string())
    } else {
        CasError::Io { path: path.to_path_buf(), source: e }
    }
}

/// A blob on its way into the store (see [`Cas::writer`]): a temporary file and the BLAKE3 of
/// what was written so far. Dropped unfinished, or finished with the wrong digest, it deletes
/// its temporary file and stores nothing.
pub struct BlobWriter {
    expected: String,
    target: PathBuf,
    tmp: PathBuf,
    file: std::fs::File,
    hasher: blake3::Hasher,
    written: u64,
}

impl BlobWriter {
    /// Appends bytes.
    pub fn write(&mut self, data: &[u8]) -> Result<(), CasError> {
        self.file.write_all(data).map_err(io(&self.tmp))?;
        self.hasher.update(data);
        self.written += data.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The digest this blob must have.
    pub fn digest(&self) -> &str {
        &self.expected
    }

    /// Checks the digest; on a match syncs the file and renames it into place (a blob already
    /// stored is kept as it is), else deletes it. Returns the size.
    pub fn finish(self) -> Result<u64, CasError> {
        let actual = self.hasher.finalize().to_hex().to_string();
        if actual != self.expected {
            return Err(CasError::Mismatch { expected: self.expected.clone(), actual });
        }
        seal(&self.file).map_err(io(&self.tmp))?;
        if !self.target.is_file() {
            let dir = self.target.parent().unwrap_or(&self.target);
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            std::fs::rename(&self.tmp, &self.target).map_err(io(&self.target))?;
        }
        Ok(self.written)
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        BlobWriter::write(self, buf).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Finished and renamed: the temporary path no longer exists and this does nothing.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// BLAKE3 and size of a file, streamed.
pub fn hash_file(path: &Path) -> Result<(String, u64), CasError> {
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    hash_reader(&mut file, path)
}

/// Bytes read at a time when hashing a stream: large enough for BLAKE3's SIMD to work on many
/// chunks at once.
const HASH_READ: usize = 256 * 1024;

thread_local! {
    /// One read buffer per thread, reused. A new one per file was zeroed every time (once glibc
    /// has freed one such block it serves the next from its heap, and `calloc` then clears it):
    /// 256 KiB per file, for each of a project's inputs and outputs, which a cached build's CLI
    /// hashes all of.
    static HASH_BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; HASH_READ]);
}

/// BLAKE3 and size of what `file` yields, streamed; `path` names it in errors.
pub fn hash_reader(file: &mut impl Read, path: &Path) -> Result<(String, u64), CasError> {
    HASH_BUFFER.with_borrow_mut(|buf| {
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        loop {
            let n = file.read(buf).map_err(io(path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        Ok((hasher.finalize().to_hex().to_string(), size))
    })
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
        std::fs::create_dir_all(dir.path().join("x/y")).expect("its directory");
        let tool = FileRef { path: "x".into(), digest: d, executable: true, size };
        assert_eq!(cas.materialize(&tool, &out, None).expect("materialize"), Staged::Copied);
        assert!(is_executable(&out));
    }

    fn mode_and_links(path: &Path) -> (u32, u64) {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(path).expect("metadata");
        (m.mode() & 0o7777, m.nlink())
    }

    #[test]
    fn objects_are_read_only_and_linked_only_where_the_package_cannot_change_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cas = Cas::open(dir.path().join("cas")).expect("open");
        let text = blake3::hash(b"int x;").to_hex().to_string();
        cas.put_verified(&text, b"int x;").expect("put");
        let mut w = cas.writer(blake3::hash(b"streamed").to_hex().as_ref()).expect("writer");
        w.write(b"streamed").expect("write");
        let streamed = w.digest().to_string();
        w.finish().expect("finish");
        for d in [&text, &streamed] {
            assert_eq!(mode_and_links(&cas.path(d).expect("path")).0, OBJECT_MODE, "stored read-only");
        }

        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        let package_user = me.wrapping_add(1);
        let input = |executable| FileRef { path: "x.h".into(), digest: text.clone(), executable, size: 6 };
        let at = |name: &str| dir.path().join("sandbox").join(name);
        std::fs::create_dir(dir.path().join("sandbox")).expect("the sandbox");

        // Another user's package: a link, sharing the object's read-only inode.
        assert!(matches!(
            cas.materialize(&input(false), &at("linked.h"), Some(package_user)).expect("link"),
            Staged::Linked(object) if object.is(&std::fs::symlink_metadata(at("linked.h")).expect("meta"))
        ));
        assert_eq!(mode_and_links(&at("linked.h")), (OBJECT_MODE, 2));
        assert_eq!(std::fs::read(at("linked.h")).expect("read"), b"int x;");

        // A copy when the input must be executable (a link cannot have its own mode), when the
        // package runs as the object's owner, or when no user was given.
        let copied =
            [(input(true), Some(package_user), 0o755), (input(false), Some(me), 0o644), (input(false), None, 0o644)];
        for (i, (file, user, mode)) in copied.into_iter().enumerate() {
            let dest = at(&format!("copy{i}"));
            assert_eq!(cas.materialize(&file, &dest, user).expect("copy"), Staged::Copied, "case {i}");
            assert_eq!(mode_and_links(&dest), (mode, 1), "case {i}");
        }
        assert_eq!(mode_and_links(&cas.path(&text).expect("path")), (OBJECT_MODE, 2), "the object kept its mode");

        // An object others may write (a store written before objects were sealed, changed by
        // hand) is never linked.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(cas.path(&text).expect("path"), std::fs::Permissions::from_mode(0o666))
            .expect("chmod");
        assert_eq!(cas.materialize(&input(false), &at("open.h"), Some(package_user)).expect("copy"), Staged::Copied);
    }

    #[test]
    fn across_filesystems_inputs_are_copied() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let Ok(other) = tempfile::tempdir_in("/dev/shm") else { return };
        let device = |p: &Path| std::fs::metadata(p).expect("metadata").dev();
        if device(dir.path()) == device(other.path()) {
            return; // one filesystem here: nothing to cross
        }
        let cas = Cas::open(dir.path().join("cas")).expect("open");
        let digest = blake3::hash(b"far").to_hex().to_string();
        cas.put_verified(&digest, b"far").expect("put");
        let dest = other.path().join("far.txt");
        let file = FileRef { path: "far.txt".into(), digest, executable: false, size: 3 };
        // SAFETY: geteuid has no preconditions.
        let user = unsafe { libc::geteuid() }.wrapping_add(1);
        assert_eq!(cas.materialize(&file, &dest, Some(user)).expect("copied"), Staged::Copied);
        assert_eq!(std::fs::read(&dest).expect("read"), b"far");
    }

    fn tmp_files(dir: &Path) -> usize {
        std::fs::read_dir(dir.join("cas/tmp")).expect("tmp dir").count()
    }

    #[test]
    fn blobs_stream_in_and_only_a_matching_digest_is_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cas = Cas::open(dir.path().join("cas")).expect("open");
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let digest = blake3::hash(&body).to_hex().to_string();

        let mut w = cas.writer(&digest).expect("writer");
        for part in body.chunks(7_000) {
            w.write(part).expect("write");
        }
        assert_eq!(w.written(), body.len() as u64);
        assert!(!cas.has(&digest), "nothing is stored before the digest is checked");
        assert_eq!(w.finish().expect("finish"), body.len() as u64);
        assert_eq!(cas.read(&digest).expect("stored"), body);
        assert_eq!(tmp_files(dir.path()), 0);

        // One byte off: refused, not stored, the temporary file gone.
        let other = blake3::hash(b"something else").to_hex().to_string();
        let mut w = cas.writer(&other).expect("writer");
        w.write(&body).expect("write");
        assert!(matches!(w.finish(), Err(CasError::Mismatch { .. })));
        assert!(!cas.has(&other));
        assert_eq!(tmp_files(dir.path()), 0);

        // Abandoned half-way (a lost link): nothing is left behind.
        let mut w = cas.writer(&other).expect("writer");
        w.write(&body[..10]).expect("write");
        assert_eq!(tmp_files(dir.path()), 1);
        drop(w);
        assert_eq!(tmp_files(dir.path()), 0);
        assert!(matches!(cas.writer("../x"), Err(CasError::BadDigest(_))));

        // Leftovers of a crash are cleared when the store opens.
        std::fs::write(dir.path().join("cas/tmp/stale"), b"x").expect("write");
        let _ = Cas::open(dir.path().join("cas")).expect("open");
        assert_eq!(tmp_files(dir.path()), 0);
    }
}
