//! A task's files in and out of its sandbox, never through a symbolic link.
//!
//! Inputs are laid out at their checked paths with [`wire::join_no_follow`]: directories on the
//! way are created, a link on the way is refused, and nothing may already be where a file goes.
//! Outputs are read back only if they are regular files reached without a link: a package that
//! leaves a symbolic link as an output (to the node's `admin.key`, say) fails with `output 'x'
//! is a symbolic link; outputs must be regular files` — links are refused, not stored as links,
//! since a build's outputs are files written back into a project. The file is opened with
//! `O_NOFOLLOW` and checked again on the open descriptor, so a link swapped in after the check
//! is not followed either.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::cas::{Cas, Object, Staged};
use crate::wire::{join_no_follow, join_no_follow_in, CheckedDirs, FileRef, JoinError, Task};

/// An input that is a hard link to its stored object in a sandbox: a pooled sandbox may keep it
/// for the next package that wants the same object at the same path (`sandbox`'s pool).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linked {
    pub path: String,
    pub digest: String,
    pub object: Object,
}

/// Lays out the task's inputs in `dir` (an empty sandbox but for the inputs in `linked`, which a
/// pooled sandbox kept in place: links to the objects the task wants at those paths) and makes
/// the directories its declared outputs go into. `link_for`: the user the package runs as, when
/// its inputs may be hard links to the store ([`Cas::materialize`]); each input linked is added
/// to `linked`, so the sandbox's next user may keep it.
pub fn inputs(
    cas: &Cas,
    dir: &Path,
    task: &Task,
    link_for: Option<u32>,
    linked: &mut Vec<Linked>,
) -> Result<(), String> {
    let in_place: std::collections::BTreeSet<(String, String)> =
        linked.iter().map(|l| (l.path.clone(), l.digest.clone())).collect();
    // Each directory on the way is looked at (or made) once: the sandbox is the node's until the
    // package starts, and a pooled one's kept directories were checked as it was emptied.
    let mut checked = CheckedDirs::remembering();
    for f in &task.files {
        if !f.executable && in_place.contains(&(f.path.clone(), f.digest.clone())) {
            continue;
        }
        let dest = join_no_follow_in(dir, &f.path, true, &mut checked).map_err(|e| format!("input {e}"))?;
        if std::fs::symlink_metadata(&dest).is_ok() {
            return Err(format!("input '{}': something is already at that path in the sandbox", f.path));
        }
        if let Staged::Linked(object) =
            cas.materialize(f, &dest, link_for).map_err(|e| format!("input {}: {e}", f.path))?
        {
            linked.push(Linked { path: f.path.clone(), digest: f.digest.clone(), object });
        }
    }
    // Declared outputs may go into directories the command expects to exist.
    for o in &task.outputs {
        join_no_follow_in(dir, o, true, &mut checked).map_err(|e| format!("output directory for {e}"))?;
    }
    Ok(())
}

/// The directories [`inputs`] makes for `task`: every one on the way to an input or a declared
/// output, relative to the sandbox, each after its parent. A sandbox kept for reuse holds only
/// directories of this set, emptied, so the package sees what a new sandbox would give it.
pub fn dirs(task: &Task) -> std::collections::BTreeSet<String> {
    let mut dirs = std::collections::BTreeSet::new();
    for path in task.files.iter().map(|f| f.path.as_str()).chain(task.outputs.iter().map(String::as_str)) {
        let mut end = 0;
        while let Some(slash) = path[end..].find('/') {
            end += slash;
            dirs.insert(path[..end].to_string());
            end += 1;
        }
    }
    dirs
}

/// Stores the declared outputs the command left in `dir`, in order; the first one that is
/// missing, not a regular file, or reached through a symbolic link fails the task.
pub fn outputs(cas: &Cas, dir: &Path, task: &Task) -> Result<Vec<FileRef>, String> {
    task.outputs.iter().map(|o| output(cas, dir, o)).collect()
}

fn symlink_refused(o: &str) -> String {
    format!("output '{o}' is a symbolic link; outputs must be regular files")
}

/// Opens a regular file for reading, checked on the open descriptor: `O_NOFOLLOW`, so a link
/// at its name (put there since any check) fails the open (ELOOP, answered by `link()`)
/// instead of being followed; `O_NONBLOCK`, so a FIFO put there does not hang the node. `what`
/// names the file in the other errors.
pub fn open_regular(
    path: &Path,
    what: &str,
    link: impl FnOnce() -> String,
) -> Result<(File, std::fs::Metadata), String> {
    let file: File = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| if e.raw_os_error() == Some(libc::ELOOP) { link() } else { format!("{what}: {e}") })?;
    let meta = file.metadata().map_err(|e| format!("{what}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{what} is not a regular file"));
    }
    Ok((file, meta))
}

/// [`open_regular`] for `rel` (a checked relative path) under `root`, without following a link
/// anywhere on the way, whatever changes meanwhile: each directory is opened relative to the one
/// before (`O_PATH | O_DIRECTORY | O_NOFOLLOW`: a link fails to open as a directory) and the file
/// relative to the last. A check of the directories followed by an open by path is a race: a
/// directory swapped for a link to `/etc` between the two was followed, and a node reading a
/// registered project stored `/etc/shadow` for a builder who could write into the project (found
/// by a tester, about one try in ten). `link` answers a link at the name; one on the way is
/// named in the error.
pub fn open_regular_beneath(
    root: &Path,
    rel: &str,
    what: &str,
    link: impl FnOnce() -> String,
) -> Result<(File, std::fs::Metadata), String> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::Mode;
    crate::wire::check_path(rel).map_err(|problem| format!("{what} {problem}"))?;
    let (dirs, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    let dir = dir_beneath(root, dirs, what)?;
    let read = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let fd = openat(&dir, name, read, Mode::empty()).map_err(|e| match e {
        nix::errno::Errno::ELOOP => link(),
        e => format!("{what}: {}", std::io::Error::from(e)),
    })?;
    let file = File::from(fd);
    let meta = file.metadata().map_err(|e| format!("{what}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{what}: not a regular file"));
    }
    Ok((file, meta))
}

/// The directory `dirs` (a checked relative path, or "" for `root` itself) under `root`, opened
/// `O_PATH` a directory at a time from `/` (or the working directory) without following a link
/// anywhere, `root` included: a project's directory is registered canonical, and one swapped for a
/// link by whoever can write to its parent must not lead elsewhere either. Errors name `what`
/// and, for a link or a file on the way, where it is.
pub fn dir_beneath(root: &Path, dirs: &str, what: &str) -> Result<std::os::fd::OwnedFd, String> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::Mode;
    let walk = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let failed = |e: nix::errno::Errno| format!("{what}: {}", std::io::Error::from(e));
    let start = if root.is_absolute() { "/" } else { "." };
    let mut dir = openat(nix::fcntl::AT_FDCWD, start, walk, Mode::empty()).map_err(failed)?;
    for component in root.components() {
        let name = match component {
            std::path::Component::Normal(name) => name,
            std::path::Component::RootDir | std::path::Component::CurDir => continue,
            _ => return Err(format!("{what}: {} is not a canonical directory", root.display())),
        };
        dir = openat(&dir, name, walk, Mode::empty()).map_err(|e| match e {
            nix::errno::Errno::ENOTDIR | nix::errno::Errno::ELOOP => format!(
                "{what}: {} passes through a symbolic link or is not a directory; links are not followed",
                root.display()
            ),
            e => failed(e),
        })?;
    }
    let mut way = 0;
    for component in dirs.split('/').filter(|c| !c.is_empty()) {
        way += component.len() + usize::from(way > 0);
        dir = match openat(&dir, component, walk, Mode::empty()) {
            Ok(next) => next,
            // A link (or a file) where a directory should be.
            Err(nix::errno::Errno::ENOTDIR | nix::errno::Errno::ELOOP) => {
                return Err(format!(
                    "{what} passes through '{}', a symbolic link or not a directory; links are not followed",
                    &dirs[..way]
                ))
            }
            Err(e) => return Err(failed(e)),
        };
    }
    Ok(dir)
}

fn output(cas: &Cas, dir: &Path, o: &str) -> Result<FileRef, String> {
    let not_produced = || format!("output '{o}' was not produced");
    let path = match join_no_follow(dir, o, false) {
        Ok(p) => p,
        Err(JoinError::Symlink { at, .. }) => {
            return Err(format!(
                "output '{o}' is reached through '{at}', a symbolic link; outputs must be regular files"
            ))
        }
        Err(JoinError::NotADirectory { .. }) => return Err(not_produced()),
        Err(e) => return Err(format!("output {e}")),
    };
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_symlink() => return Err(symlink_refused(o)),
        Ok(m) if !m.is_file() => return Err(format!("output '{o}' is not a regular file")),
        Ok(_) => {}
        Err(_) => return Err(not_produced()),
    }
    let (file, meta) = open_regular(&path, &format!("output '{o}'"), || symlink_refused(o))?;
    // The store reads the file through the descriptor opened above: whatever the name points to
    // by now, what is stored is the file that was checked.
    let by_fd = format!("/proc/self/fd/{}", file.as_raw_fd());
    let (digest, size) = cas.put_file(Path::new(&by_fd)).map_err(|e| format!("output '{o}': {e}"))?;
    Ok(FileRef { path: o.to_string(), digest, executable: meta.permissions().mode() & 0o111 != 0, size })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Invocation;

    /// Opened beneath the root a directory at a time, a file is never reached through a link on
    /// the way or at its name, and what is not a regular file (a FIFO) is refused without
    /// hanging. A directory swapped for a link while the node opens is tried through the binary:
    /// `projects::a_directory_swapped_for_a_link_while_the_node_reads_a_project_leads_nowhere`.
    #[test]
    fn a_file_opened_beneath_its_root_is_never_reached_through_a_link() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("project");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("src")).expect("src");
        std::fs::create_dir_all(&outside).expect("outside");
        std::fs::write(root.join("src/secret"), "inside").expect("write");
        std::fs::write(outside.join("secret"), "OUTSIDE").expect("write");
        std::os::unix::fs::symlink(&outside, root.join("alt")).expect("link");
        let link = || "link".to_string();

        let (file, meta) = open_regular_beneath(&root, "src/secret", "'src/secret'", link).expect("opened");
        assert!(meta.is_file());
        drop(file);
        let through = open_regular_beneath(&root, "alt/secret", "'alt/secret'", link).expect_err("a link on the way");
        assert!(through.contains("passes through 'alt'"), "{through}");
        assert_eq!(open_regular_beneath(&root, "alt", "'alt'", link).expect_err("a link at the name"), "link");
        nix::unistd::mkfifo(&root.join("src/fifo"), nix::sys::stat::Mode::S_IRWXU).expect("fifo");
        let fifo = open_regular_beneath(&root, "src/fifo", "'src/fifo'", link).expect_err("not a file");
        assert!(fifo.contains("not a regular file"), "{fifo}");
    }

    fn task(files: Vec<FileRef>, outputs: &[&str]) -> Task {
        Task {
            build_id: "b1".into(),
            package: "p".into(),
            invocation: Invocation::Argv(vec!["true".into()]),
            env: Default::default(),
            files,
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            tools: vec![],
        }
    }

    #[test]
    fn inputs_are_laid_out_and_output_directories_made() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cas = Cas::open(tmp.path().join("cas")).expect("cas");
        std::fs::write(tmp.path().join("src"), "hello").expect("write");
        let (digest, size) = cas.put_file(&tmp.path().join("src")).expect("put");
        let dir = tmp.path().join("sandbox");
        std::fs::create_dir(&dir).expect("sandbox");
        let f = FileRef { path: "a/b/in.txt".into(), digest, executable: false, size };
        inputs(&cas, &dir, &task(vec![f.clone()], &["out/x.o"]), None, &mut Vec::new()).expect("laid out");
        assert_eq!(std::fs::read_to_string(dir.join("a/b/in.txt")).expect("input"), "hello");
        assert!(dir.join("out").is_dir());
        // A second file at the same place, or a file through a link, is refused.
        let e = inputs(&cas, &dir, &task(vec![f.clone()], &[]), None, &mut Vec::new()).expect_err("twice");
        assert!(e.contains("already"), "{e}");
        std::os::unix::fs::symlink(tmp.path(), dir.join("up")).expect("symlink");
        let through = FileRef { path: "up/escaped.txt".into(), ..f };
        let e = inputs(&cas, &dir, &task(vec![through], &[]), None, &mut Vec::new()).expect_err("link");
        assert!(e.contains("symbolic link"), "{e}");
        assert!(!tmp.path().join("escaped.txt").exists());
    }

    #[test]
    fn outputs_must_be_regular_files_reached_without_links() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cas = Cas::open(tmp.path().join("cas")).expect("cas");
        let secret = tmp.path().join("secret.key");
        std::fs::write(&secret, "the key").expect("secret");
        let dir = tmp.path().join("sandbox");
        std::fs::create_dir_all(dir.join("d")).expect("sandbox");
        std::fs::write(dir.join("ok.txt"), "fine").expect("ok");
        std::os::unix::fs::symlink(&secret, dir.join("key.txt")).expect("symlink");
        std::os::unix::fs::symlink(tmp.path(), dir.join("up")).expect("symlink");

        let stored = outputs(&cas, &dir, &task(vec![], &["ok.txt"])).expect("stored");
        assert_eq!(cas.read(&stored[0].digest).expect("blob"), b"fine");
        let cases = [
            ("key.txt", "output 'key.txt' is a symbolic link; outputs must be regular files".to_string()),
            (
                "up/secret.key",
                "output 'up/secret.key' is reached through 'up', a symbolic link; outputs must be regular files".into(),
            ),
            ("d", "output 'd' is not a regular file".into()),
            ("missing", "output 'missing' was not produced".into()),
            ("ok.txt/x", "output 'ok.txt/x' was not produced".into()),
        ];
        for (o, want) in cases {
            assert_eq!(outputs(&cas, &dir, &task(vec![], &["ok.txt", o])), Err(want), "{o}");
        }
        let (key_digest, _) = crate::cas::hash_file(&secret).expect("hash");
        assert!(!cas.has(&key_digest), "the linked file never entered the store");
    }
}
