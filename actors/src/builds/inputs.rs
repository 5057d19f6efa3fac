//! A project's input files, collected one way for the CLI and for the node: the manifest's globs
//! expanded inside the project without following a symbolic link, each file opened with
//! `O_NOFOLLOW` and hashed as a stream (and, on a node, stored in its CAS on the way).
//!
//! `buildnet build --project DIR` hashes here and uploads what the node lacks; a node building a
//! registered project (`builds/projects.rs`) collects here straight into its CAS, reusing the
//! digests of files whose size, times and inode are unchanged since its last snapshot.

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::project::{self, Project, ProjectError};
use crate::cas::{self, Cas, CasError, FileRef};
use crate::exec::layout::{dir_beneath, open_regular, open_regular_beneath};
use crate::wire::{check_path, join_no_follow, join_no_follow_in, CheckedDirs, JoinError};

/// How globs match: as `glob::glob` walks (a `*` stays within one component, `**` crosses them,
/// hidden files match), but over a walk that never follows a link.
const MATCH: glob::MatchOptions =
    glob::MatchOptions { case_sensitive: true, require_literal_separator: true, require_literal_leading_dot: false };

fn link_refused(path: &str) -> String {
    format!("'{path}' is a symbolic link; links are not followed (inputs must be regular files in the project)")
}

/// Directories whose listing an expansion read (project-relative, `""` for the root), each
/// stamped just before it was read: a change while it was read shows as a different stamp.
pub type Listed = BTreeMap<String, Stamp>;

/// The regular files under `root` that `pattern` matches, project-relative and sorted. A
/// matching symbolic link, or a directory on the way that is one, is an error; directories that
/// are links are never entered; FIFOs, sockets and devices are passed over. The pattern was
/// checked with [`check_path`] (`Manifest::check_structure`).
pub fn expand(root: &Path, pattern: &str) -> Result<Vec<String>, String> {
    expand_listing(root, pattern, &mut Listed::new())
}

/// [`expand`], adding each directory it lists to `listed`.
pub fn expand_listing(root: &Path, pattern: &str, listed: &mut Listed) -> Result<Vec<String>, String> {
    let pat = glob::Pattern::new(pattern).map_err(|e| format!("bad glob '{pattern}': {e}"))?;
    let components: Vec<&str> = pattern.split('/').collect();
    let literal = components.iter().take_while(|c| !c.contains(['*', '?', '['])).count();
    let joined = |rel: &str| {
        join_no_follow(root, rel, false).map_err(|e| match e {
            JoinError::Symlink { at, .. } => link_refused(&at),
            e => e.to_string(),
        })
    };
    if literal == components.len() {
        return match std::fs::symlink_metadata(joined(pattern)?) {
            Ok(m) if m.file_type().is_symlink() => Err(link_refused(pattern)),
            Ok(m) if m.is_file() => Ok(vec![pattern.to_string()]),
            _ => Ok(vec![]),
        };
    }
    // Walk from the literal directory the pattern starts in, no deeper than it can match.
    let prefix = components[..literal].join("/");
    let start = if prefix.is_empty() { root.to_path_buf() } else { joined(&prefix)? };
    match std::fs::symlink_metadata(&start) {
        Ok(m) if m.file_type().is_symlink() => return Err(link_refused(&prefix)),
        Ok(m) if m.is_dir() => {}
        _ => return Ok(vec![]),
    }
    // Each directory is listed from a descriptor, never by path: opened beneath the project's
    // root (itself reached from `/` without following a link, `exec::layout::dir_beneath`) by
    // `openat2` with no link followed anywhere on the way. One swapped for a link while the walk
    // goes on fails to open, and what is on the other side is not listed, not even its names in
    // an error (a node reads registered projects others may write to). Only the root and the
    // directory being listed are open at a time, however wide or deep the tree, and no directory
    // deeper than a path may be long is entered.
    let root_fd = dir_beneath(root, "", &format!("'{prefix}'"))?;
    let mut stack = vec![(prefix, 0usize)];
    let max_depth = if pattern.contains("**") { usize::MAX } else { components.len() - literal };
    let mut found = Vec::new();
    while let Some((rel_dir, depth)) = stack.pop() {
        let failed = |e: &dyn std::fmt::Display| format!("'{}': {e}", shown(&rel_dir));
        // Stamped before it is read.
        let dir = std::fs::File::from(open_beneath(&root_fd, root, &rel_dir)?);
        let stamp = Stamp::of(&dir.metadata().map_err(|e| failed(&e))?);
        listed.entry(rel_dir.clone()).or_insert(stamp);
        let dir = std::os::fd::OwnedFd::from(dir);
        let mut listing = nix::dir::Dir::from_fd(dir.try_clone().map_err(|e| failed(&e))?).map_err(|e| failed(&e))?;
        let mut entries = Vec::new();
        for entry in listing.iter() {
            let entry = entry.map_err(|e| failed(&e))?;
            let Ok(name) = entry.file_name().to_str() else { continue };
            if name != "." && name != ".." {
                entries.push((name.to_string(), entry.file_type()));
            }
        }
        drop(listing);
        for (name, kind) in entries {
            // Each package's TMPDIR in its sandbox: no glob looks there (a path named there
            // outright is refused by `check_path`).
            if rel_dir.is_empty() && name == crate::wire::SANDBOX_TMP {
                continue;
            }
            let rel = if rel_dir.is_empty() { name.clone() } else { format!("{rel_dir}/{name}") };
            let kind = match kind {
                Some(kind) => kind,
                // Filesystems that do not say in the listing: asked of the entry, not followed.
                None => entry_kind(&dir, &name).map_err(|e| format!("'{}': {e}", shown(&rel)))?,
            };
            match kind {
                nix::dir::Type::Directory if depth + 1 < max_depth => {
                    // A path the kernel takes is shorter than MAX_PATH_BYTES, its NUL included.
                    if rel.len() >= crate::wire::MAX_PATH_BYTES {
                        return Err(format!(
                            "'{}' is deeper than a path may be long ({} bytes); a glob goes no deeper",
                            shown(&rel),
                            crate::wire::MAX_PATH_BYTES
                        ));
                    }
                    stack.push((rel, depth + 1));
                }
                _ if !pat.matches_with(&rel, MATCH) => {}
                nix::dir::Type::Symlink => return Err(link_refused(&shown(&rel))),
                nix::dir::Type::File => {
                    check_path(&rel).map_err(|e| format!("'{}' {e}", shown(&rel).escape_debug()))?;
                    found.push(rel);
                }
                _ => {}
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The directory `rel` ("" for the root itself) beneath the project's root `root_fd` (reached
/// as [`dir_beneath`] does), opened for listing without following a link anywhere on the way:
/// `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` where the kernel has it (Linux 5.6),
/// else a directory at a time from `/` with `O_NOFOLLOW`. A link or a file on the way is refused.
fn open_beneath(root_fd: &std::os::fd::OwnedFd, root: &Path, rel: &str) -> Result<std::os::fd::OwnedFd, String> {
    use nix::errno::Errno;
    use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
    let read = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let refused = |e: Errno| match e {
        Errno::ELOOP => link_refused(&shown(rel)),
        Errno::ENOTDIR => format!("'{}' is not a directory", shown(rel)),
        e => format!("'{}': {}", shown(rel), std::io::Error::from(e)),
    };
    let at = if rel.is_empty() { "." } else { rel };
    let how = OpenHow::new()
        .flags(read)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match openat2(root_fd, at, how) {
        Ok(fd) => Ok(fd),
        // No `openat2` here (an older kernel, or a container's seccomp filter refusing it).
        Err(Errno::ENOSYS | Errno::EPERM) => {
            let (dirs, name) = rel.rsplit_once('/').unwrap_or(("", rel));
            let parent = dir_beneath(root, dirs, &format!("'{rel}'"))?;
            openat(&parent, if name.is_empty() { "." } else { name }, read, nix::sys::stat::Mode::empty())
                .map_err(refused)
        }
        Err(e) => Err(refused(e)),
    }
}

/// `rel` as an error names it: a directory deep in a tree has a path of up to 4 KB, and a line
/// about it need not repeat all of it.
fn shown(rel: &str) -> String {
    // Its start and its end (which names what failed), whole below this many characters.
    const EACH: usize = 100;
    let chars = rel.chars().count();
    if chars <= 2 * EACH {
        return rel.to_string();
    }
    let start: String = rel.chars().take(EACH).collect();
    let end: String = rel.chars().skip(chars - EACH).collect();
    format!("{start}…{end}")
}

/// The kind of entry `name` in `parent`, the entry itself (a link is a link).
fn entry_kind(parent: &std::os::fd::OwnedFd, name: &str) -> std::io::Result<nix::dir::Type> {
    use nix::sys::stat::{fstatat, SFlag};
    let stat = fstatat(parent, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)?;
    Ok(match SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFDIR => nix::dir::Type::Directory,
        SFlag::S_IFLNK => nix::dir::Type::Symlink,
        SFlag::S_IFREG => nix::dir::Type::File,
        _ => nix::dir::Type::Fifo,
    })
}

/// What a file looked like when it was hashed: unchanged stamps mean an unchanged digest — once
/// the file had settled (see [`SETTLED_NS`]). Kept as a bare array (`[size, mtime, ctime, inode,
/// device]`): a record holds one per input and output, and reading it is part of every
/// up-to-date answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(from = "StampFields", into = "StampFields")]
pub struct Stamp {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    inode: u64,
    device: u64,
}

type StampFields = (u64, i128, i128, u64, u64);

impl From<Stamp> for StampFields {
    fn from(s: Stamp) -> StampFields {
        (s.size, s.mtime_ns, s.ctime_ns, s.inode, s.device)
    }
}

impl From<StampFields> for Stamp {
    fn from((size, mtime_ns, ctime_ns, inode, device): StampFields) -> Stamp {
        Stamp { size, mtime_ns, ctime_ns, inode, device }
    }
}

impl Stamp {
    pub fn of(m: &std::fs::Metadata) -> Stamp {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Stamp {
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
            inode: m.ino(),
            device: m.dev(),
        }
    }

    /// Whether the file's last change (either time: a modification time may be set to anything,
    /// the change time only by the kernel) was at least [`SETTLED_NS`] before `ns`.
    pub fn settled_before(&self, ns: i128) -> bool {
        self.mtime_ns.max(self.ctime_ns) + SETTLED_NS <= ns
    }
}

/// How long before a snapshot began a file must have last changed for its stamp to vouch for it
/// at the next snapshot. File times come from a coarse clock (a few ms): a file hashed and then
/// changed again within the same tick keeps its size and times (git's "racily clean" entries),
/// so a stamp taken that close to a change is not kept and the file is hashed again next time.
/// Two seconds also cover a file server whose clock is a little off this node's.
const SETTLED_NS: i128 = 2_000_000_000;

/// A project as read at one moment: the checked manifest and every input file by path.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub project: Project,
    pub files: BTreeMap<String, FileRef>,
    stamps: BTreeMap<String, Stamp>,
    watch: Option<Watch>,
}

impl Snapshot {
    /// The stamps that vouch for their files' digests (taken once the file had settled).
    pub fn stamps(&self) -> &BTreeMap<String, Stamp> {
        &self.stamps
    }

    /// What the project was read from besides its inputs, when all of it had settled.
    pub fn watch(&self) -> Option<&Watch> {
        self.watch.as_ref()
    }
}

/// Everything a snapshot was made from besides its input files, by stamps: the manifest, each
/// directory whose listing a glob read, and each directory on the way to an input. While these
/// and the inputs' stamps are unchanged (and had settled when taken), a new snapshot would be the
/// same, so it need not be made: the CLI's check that a build is up to date reads no file
/// (`builds::uptodate`), as ninja decides from its log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Watch {
    manifest: Stamp,
    listed: Listed,
    /// Directory → (device, inode): the same directories, none of them replaced or made a link,
    /// as a snapshot refuses to read through one.
    on_the_way: BTreeMap<String, (u64, u64)>,
}

impl Watch {
    /// The watch of a snapshot begun at `now_ns`, if every stamp in it had settled (see
    /// [`SETTLED_NS`]) and every directory on the way to an input is one.
    fn of(
        root: &Path,
        manifest: Stamp,
        listed: Listed,
        files: &BTreeMap<String, FileRef>,
        now_ns: i128,
    ) -> Option<Watch> {
        if !manifest.settled_before(now_ns) || !listed.values().all(|s| s.settled_before(now_ns)) {
            return None;
        }
        let mut on_the_way = BTreeMap::new();
        for path in files.keys() {
            let mut dir = path.as_str();
            while let Some(slash) = dir.rfind('/') {
                dir = &dir[..slash];
                if on_the_way.contains_key(dir) {
                    break;
                }
                let meta = std::fs::symlink_metadata(root.join(dir)).ok().filter(|m| m.is_dir())?;
                on_the_way.insert(dir.to_string(), (meta.dev(), meta.ino()));
            }
        }
        Some(Watch { manifest, listed, on_the_way })
    }

    /// Whether the manifest, the listed directories and those on the way are as they were.
    pub fn holds(&self, root: &Path) -> bool {
        let stamp = |rel: &str| std::fs::symlink_metadata(root.join(rel)).ok();
        stamp(project::MANIFEST).is_some_and(|m| m.is_file() && Stamp::of(&m) == self.manifest)
            && self.listed.iter().all(|(dir, s)| stamp(dir).is_some_and(|m| m.is_dir() && Stamp::of(&m) == *s))
            && self
                .on_the_way
                .iter()
                .all(|(dir, id)| stamp(dir).is_some_and(|m| m.is_dir() && (m.dev(), m.ino()) == *id))
    }
}

/// Reads and checks `<root>/buildnet.toml` (not through a symbolic link) and expands its inputs.
pub fn load(root: &Path) -> Result<Project, ProjectError> {
    load_watching(root, &mut Listed::new()).map(|(project, _)| project)
}

/// [`load`], with the manifest's stamp (taken before it was read) and every directory listed.
fn load_watching(root: &Path, listed: &mut Listed) -> Result<(Project, Option<Stamp>), ProjectError> {
    let manifest = root.join(project::MANIFEST);
    let meta = std::fs::symlink_metadata(&manifest).ok();
    if meta.as_ref().is_some_and(|m| m.file_type().is_symlink()) {
        return Err(ProjectError {
            file: manifest.display().to_string(),
            field: "(file)".into(),
            message: "is a symbolic link; links are not followed".into(),
        });
    }
    let stamp = meta.filter(|m| m.is_file()).map(|m| Stamp::of(&m));
    Ok((project::load_listing(root, listed)?, stamp))
}

/// Reads `<root>/buildnet.toml`, expands its inputs and hashes every input file; with a `cas`,
/// each file is stored there as it is read (only if missing). Files unchanged since `previous`
/// (same size, times and inode, still in the CAS, and settled when that snapshot was taken: see
/// [`SETTLED_NS`]) keep their digest without being read. Errors name the manifest and the
/// package's `inputs`.
pub fn snapshot(root: &Path, cas: Option<&Cas>, previous: Option<&Snapshot>) -> Result<Snapshot, ProjectError> {
    snapshot_known(root, cas, previous.map(|p| (&p.files, &p.stamps)))
}

/// Digests known from before, and the stamps that vouch for them.
pub type Known<'a> = (&'a BTreeMap<String, FileRef>, &'a BTreeMap<String, Stamp>);

/// [`snapshot`] with the digests and stamps known from before given as they were kept (the CLI
/// keeps them between runs: `builds::uptodate`).
pub fn snapshot_known(root: &Path, cas: Option<&Cas>, known: Option<Known<'_>>) -> Result<Snapshot, ProjectError> {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    snapshot_at(root, cas, known, since_epoch.as_nanos() as i128)
}

/// [`snapshot`] begun at `now_ns` (nanoseconds since the epoch).
fn snapshot_at(
    root: &Path,
    cas: Option<&Cas>,
    known: Option<Known<'_>>,
    now_ns: i128,
) -> Result<Snapshot, ProjectError> {
    let mut listed = Listed::new();
    let (project, manifest) = load_watching(root, &mut listed)?;
    let file = root.join(project::MANIFEST).display().to_string();
    let mut files = BTreeMap::new();
    let mut stamps = BTreeMap::new();
    // The CLI reads its user's own tree: each directory on the way to an input is looked at once
    // (a C project's 30 sources in `src`). The node reading a registered project for a builder
    // (with its store) looks again for every input: others may write to that tree meanwhile.
    let mut checked = if cas.is_some() { CheckedDirs::looking_each_time() } else { CheckedDirs::remembering() };
    for (package, paths) in &project.inputs {
        for path in paths {
            if files.contains_key(path) {
                continue;
            }
            let fail = |message: String| ProjectError {
                file: file.clone(),
                field: format!("packages.{package}.inputs"),
                message,
            };
            let full = join_no_follow_in(root, path, false, &mut checked).map_err(|e| fail(e.to_string()))?;
            let known = known.and_then(|(files, stamps)| Some((stamps.get(path)?, files.get(path)?)));
            if let (Some((stamp, f)), Ok(m)) = (known, std::fs::symlink_metadata(&full)) {
                if m.is_file() && Stamp::of(&m) == *stamp && cas.is_none_or(|c| c.has(&f.digest)) {
                    files.insert(path.clone(), f.clone());
                    stamps.insert(path.clone(), *stamp);
                    continue;
                }
            }
            let (f, stamp) = read(root, &full, path, cas).map_err(fail)?;
            files.insert(path.clone(), f);
            if stamp.settled_before(now_ns) {
                stamps.insert(path.clone(), stamp);
            }
        }
    }
    // Only a snapshot whose every input a settled stamp vouches for can be known unchanged by stamps.
    let all_vouched = stamps.len() == files.len();
    let watch = manifest.filter(|_| all_vouched).and_then(|m| Watch::of(root, m, listed, &files, now_ns));
    Ok(Snapshot { project, files, stamps, watch })
}

/// Hashes one file, never through a link at its own name (`exec::layout::open_regular`, as
/// outputs are read), and stores it in `cas` if given and missing: read again from the same
/// descriptor and checked against the digest on the way, so a file that changed meanwhile is
/// refused rather than stored under the wrong name.
fn read(root: &Path, full: &Path, path: &str, cas: Option<&Cas>) -> Result<(FileRef, Stamp), String> {
    let what = format!("'{path}'");
    // The node reading a project for a builder opens it beneath its root, a directory at a
    // time: others may write to that tree while it is read. The CLI reads its user's own.
    let (mut file, meta) = match cas {
        Some(_) => open_regular_beneath(root, path, &what, || link_refused(path))?,
        None => open_regular(full, &what, || link_refused(path))?,
    };
    let (digest, size) = cas::hash_reader(&mut file, full).map_err(|e| e.to_string())?;
    if let Some(cas) = cas.filter(|c| !c.has(&digest)) {
        let stored = (|| {
            file.seek(SeekFrom::Start(0)).map_err(|source| CasError::Io { path: full.to_path_buf(), source })?;
            let mut writer = cas.writer(&digest)?;
            std::io::copy(&mut file, &mut writer)
                .map_err(|source| CasError::Io { path: full.to_path_buf(), source })?;
            writer.finish()
        })();
        stored.map_err(|e| match e {
            CasError::Mismatch { .. } => format!("'{path}' changed while it was read; try again"),
            e => format!("'{path}': {e}"),
        })?;
    }
    use std::os::unix::fs::PermissionsExt;
    let executable = meta.permissions().mode() & 0o111 != 0;
    Ok((FileRef { path: path.to_string(), digest, executable, size }, Stamp::of(&meta)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, path: &str, text: &str) {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }

    #[test]
    fn globs_do_not_look_into_the_packages_tmpdir_at_the_top_only() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        for f in ["a.txt", ".tmp/b.txt", ".tmp/deep/c.txt", "sub/.tmp/d.txt", ".tmpx/e.txt"] {
            std::fs::create_dir_all(root.join(f).parent().expect("dir")).expect("mkdir");
            std::fs::write(root.join(f), f).expect("write");
        }
        let mut found = expand(root, "**/*.txt").expect("expand");
        found.sort();
        assert_eq!(found, [".tmpx/e.txt", "a.txt", "sub/.tmp/d.txt"]);
        assert_eq!(expand(root, "*/*.txt").expect("expand"), [".tmpx/e.txt"]);
        // Named outright, it is refused with the reason.
        let e = expand(root, ".tmp/*.txt").expect_err("refused");
        assert!(e.contains("is under '.tmp'"), "{e}");
    }

    #[test]
    fn globs_match_like_glob_without_following_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("p");
        for f in ["a.c", "src/b.c", "src/b.h", "src/deep/c.c", ".hidden.c"] {
            write(&root, f, "x");
        }
        write(dir.path(), "outside/secret.c", "s");
        assert_eq!(expand(&root, "*.c").expect("ok"), vec![".hidden.c", "a.c"]);
        assert_eq!(expand(&root, "src/*.c").expect("ok"), vec!["src/b.c"], "a '*' stays in its directory");
        assert_eq!(expand(&root, "src/**/*.c").expect("ok"), vec!["src/b.c", "src/deep/c.c"]);
        assert_eq!(expand(&root, "src/b.h").expect("ok"), vec!["src/b.h"]);
        assert!(expand(&root, "nothing/*.c").expect("ok").is_empty());

        std::os::unix::fs::symlink(dir.path().join("outside"), root.join("src/out")).expect("symlink");
        assert_eq!(
            expand(&root, "src/**/*.c").expect("ok"),
            vec!["src/b.c", "src/deep/c.c"],
            "a linked directory is not entered"
        );
        let e = expand(&root, "src/out/*.c").expect_err("through a link");
        assert!(e.contains("'src/out' is a symbolic link"), "{e}");
        std::os::unix::fs::symlink(dir.path().join("outside/secret.c"), root.join("src/leak.c")).expect("symlink");
        let e = expand(&root, "src/*.c").expect_err("a matching link");
        assert!(e.contains("'src/leak.c' is a symbolic link"), "{e}");
        assert!(expand(&root, "src/leak.c").expect_err("named").contains("symbolic link"));
    }

    /// A glob enters no directory deeper than a path may be long, and says so in a line of its
    /// own size (found by a tester: listed from descriptors with no such limit, a chain of
    /// 255-byte directory names grew a node to a gigabyte and its refusal to 400 KB; listed by
    /// path, the old walk had stopped at the kernel's limit).
    #[test]
    fn a_glob_goes_no_deeper_than_a_path_may_be_long() {
        use nix::fcntl::{openat, OFlag};
        use nix::sys::stat::{mkdirat, Mode};
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("p");
        write(&root, "src/a.h", "x");
        let name = "d".repeat(255);
        let mut at = openat(nix::fcntl::AT_FDCWD, &root.join("src"), OFlag::O_DIRECTORY, Mode::empty()).expect("src");
        for _ in 0..20 {
            mkdirat(&at, name.as_str(), Mode::from_bits_truncate(0o755)).expect("mkdirat");
            at = openat(&at, name.as_str(), OFlag::O_DIRECTORY, Mode::empty()).expect("openat");
        }
        let e = expand(&root, "src/**/*.h").expect_err("too deep");
        assert!(e.contains("is deeper than a path may be long (4096 bytes)"), "{e}");
        assert!(e.len() < 500, "a line, not the path: {} bytes", e.len());
        // A directory whose path is 4,096 bytes exactly is one too long for the kernel too (its
        // NUL): refused the same way, in a line of its own size (found by a tester).
        let exact = tempfile::tempdir().expect("tempdir");
        let root = exact.path().join("p");
        write(&root, "src/a.h", "x");
        let mut at = openat(nix::fcntl::AT_FDCWD, &root.join("src"), OFlag::O_DIRECTORY, Mode::empty()).expect("src");
        let mut rel = "src".len();
        while rel < crate::wire::MAX_PATH_BYTES {
            let len = (crate::wire::MAX_PATH_BYTES - rel - 1).clamp(1, 255);
            let name = "e".repeat(len);
            mkdirat(&at, name.as_str(), Mode::from_bits_truncate(0o755)).expect("mkdirat");
            at = openat(&at, name.as_str(), OFlag::O_DIRECTORY, Mode::empty()).expect("openat");
            rel += 1 + len;
        }
        assert_eq!(rel, crate::wire::MAX_PATH_BYTES);
        let e = expand(&root, "src/**/*.h").expect_err("exactly at the limit");
        assert!(e.contains("is deeper than a path may be long"), "{e}");
        assert!(e.len() < 500, "{} bytes", e.len());
        assert_eq!(expand(&root, "src/*.h").expect("one level"), ["src/a.h"], "a shallow glob is not affected");
    }

    #[test]
    fn a_snapshot_stores_inputs_and_rehashes_only_what_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("p");
        write(&root, "a.txt", "alpha");
        write(&root, "b.txt", "beta");
        write(&root, project::MANIFEST, "[packages.x]\ncommand=[\"cat\"]\ninputs=[\"*.txt\"]\n");
        let cas = Cas::open(dir.path().join("cas")).expect("cas");
        let first = snapshot(&root, Some(&cas), None).expect("snapshot");
        assert_eq!(first.files.len(), 2);
        assert!(first.files.values().all(|f| cas.has(&f.digest)), "every input is in the store");
        let hashed_only = snapshot(&root, None, None).expect("hash only");
        assert_eq!(hashed_only.files, first.files, "the CLI and the node see the same digests");

        // Remove a blob behind the snapshot's back: an unchanged stamp alone does not reuse it.
        let a = first.files["a.txt"].digest.clone();
        std::fs::remove_file(cas.path(&a).expect("path")).expect("remove");
        write(&root, "b.txt", "BETA!");
        let second = snapshot(&root, Some(&cas), Some(&first)).expect("snapshot");
        assert_eq!(second.files["a.txt"].digest, a);
        assert!(cas.has(&a), "a missing blob is stored again");
        assert_ne!(second.files["b.txt"].digest, first.files["b.txt"].digest, "a changed file is hashed again");
    }

    /// A file changed again within the clock tick it was hashed in keeps its size and times: a
    /// stamp taken that soon after a change does not vouch for the file next time.
    #[test]
    fn a_stamp_vouches_only_for_a_file_that_had_settled_when_it_was_hashed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("p");
        write(&root, "a.txt", "alpha");
        write(&root, project::MANIFEST, "[packages.x]\ncommand=[\"cat\"]\ninputs=[\"a.txt\"]\n");
        let cas = Cas::open(dir.path().join("cas")).expect("cas");
        let meta = std::fs::metadata(root.join("a.txt")).expect("meta");
        let changed_ns = Stamp::of(&meta).mtime_ns.max(Stamp::of(&meta).ctime_ns);
        // The same content under another digest in the previous snapshot shows whether it was read.
        let stale = |snap: &Snapshot| {
            let mut s = snap.clone();
            s.files.get_mut("a.txt").expect("a").digest = blake3::hash(b"stale").to_hex().to_string();
            cas.put_verified(&s.files["a.txt"].digest, b"stale").expect("put");
            s
        };
        fn known(s: &Snapshot) -> Known<'_> {
            (&s.files, &s.stamps)
        }
        // Hashed in the tick it was written: the next snapshot reads it again.
        let racy = snapshot_at(&root, Some(&cas), None, changed_ns).expect("snapshot");
        let again =
            snapshot_at(&root, Some(&cas), Some(known(&stale(&racy))), changed_ns + SETTLED_NS).expect("snapshot");
        assert_eq!(again.files["a.txt"].digest, racy.files["a.txt"].digest, "read again, not taken from the stamp");
        // Hashed long after it was written: the stamp stands for it.
        let settled = snapshot_at(&root, Some(&cas), None, changed_ns + SETTLED_NS).expect("snapshot");
        let reused = snapshot_at(&root, Some(&cas), Some(known(&stale(&settled))), changed_ns + 2 * SETTLED_NS)
            .expect("snapshot");
        assert_eq!(
            reused.files["a.txt"].digest,
            blake3::hash(b"stale").to_hex().to_string(),
            "not read: the stamp vouched"
        );
    }

    /// A watch stands for what a snapshot read besides its inputs: a file added where a glob
    /// looks, a directory on the way made a link, or an edited manifest all break it, and it is
    /// kept only when everything it holds had settled.
    #[test]
    fn a_watch_holds_only_while_the_manifest_and_the_directories_read_are_unchanged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("p");
        write(&root, "src/a.c", "a");
        write(&root, "src/deep/b.c", "b");
        write(&root, "include/x.h", "x");
        write(&root, project::MANIFEST, "[packages.x]\ncommand=[\"cc\"]\ninputs=[\"src/**/*.c\", \"include/x.h\"]\n");
        let later = crate::builds::uptodate::now_ns() + 100 * SETTLED_NS;
        let watched = || snapshot_at(&root, None, None, later).expect("snapshot").watch.expect("settled: a watch");
        assert!(
            snapshot_at(&root, None, None, later - 100 * SETTLED_NS).expect("snapshot").watch.is_none(),
            "nothing settled yet"
        );
        let watch = watched();
        assert_eq!(watch.listed.keys().collect::<Vec<_>>(), ["src", "src/deep"], "the directories the glob read");
        assert_eq!(watch.on_the_way.keys().collect::<Vec<_>>(), ["include", "src", "src/deep"]);
        assert!(watch.holds(&root));

        write(&root, "src/deep/c.c", "c");
        assert!(!watch.holds(&root), "a file added where the glob looks");
        let watch = watched();
        std::fs::rename(root.join("include"), root.join("include.real")).expect("move");
        std::os::unix::fs::symlink(root.join("include.real"), root.join("include")).expect("link");
        assert!(std::fs::metadata(root.join("include/x.h")).is_ok(), "the input is still reached, through a link");
        assert!(!watch.holds(&root), "a directory on the way made a link");
        std::fs::remove_file(root.join("include")).expect("unlink");
        std::fs::rename(root.join("include.real"), root.join("include")).expect("move back");
        let watch = watched();
        assert!(watch.holds(&root));
        write(&root, project::MANIFEST, "[packages.x]\ncommand=[\"cd\"]\ninputs=[\"src/**/*.c\", \"include/x.h\"]\n");
        assert!(!watch.holds(&root), "an edited manifest");
    }
}
