//! Paths are data. Every path that enters a node from outside — a build request's files and
//! outputs, a manifest's globs, a peer's task, a node's answer to the CLI — is checked here by
//! one function, [`check_path`], before anything joins it onto a directory; and
//! [`join_no_follow`] joins a checked path onto a root without following a symbolic link on the
//! way, so what it names stays inside the root (a sandbox or a project).
//!
//! A checked path is relative and `/`-separated, made of `Normal` components only: not empty,
//! no leading `/`, no `.` or `..` and no empty components (`a//b`, a trailing `/`), no NUL or
//! other control characters, no backslash (a separator elsewhere, an escape in globs), at most
//! [`MAX_PATH_BYTES`] bytes and [`MAX_COMPONENT_BYTES`] per component.

use std::fmt;
use std::path::{Path, PathBuf};

/// Longest path accepted (Linux's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest component accepted (Linux's `NAME_MAX`).
pub const MAX_COMPONENT_BYTES: usize = 255;

/// What is wrong with a path; the message reads after the path ("'a/../b' has a '..' component").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("is empty")]
    Empty,
    #[error("is {len} bytes long; at most {MAX_PATH_BYTES} are allowed")]
    TooLong { len: usize },
    #[error("is absolute; paths are relative to the project, without a leading '/'")]
    Absolute,
    #[error("contains a NUL byte")]
    Nul,
    #[error("contains a control character (U+{0:04X})")]
    Control(u32),
    #[error("contains a backslash; separate components with '/'")]
    Backslash,
    #[error("has a '..' component; paths must stay inside the project")]
    ParentDir,
    #[error("has a '.' component; write the path without it")]
    CurDir,
    #[error("has an empty component ('//' or a trailing '/')")]
    EmptyComponent,
    #[error("has a component of {len} bytes; at most {MAX_COMPONENT_BYTES} are allowed")]
    ComponentTooLong { len: usize },
    #[error("must be a single name, without '/'")]
    NotAName,
    #[error(
        "is under '{SANDBOX_TMP}', which is each package's TMPDIR in its sandbox; rename it or leave it out of the inputs and outputs"
    )]
    Reserved,
}

/// Each package's `TMPDIR` in its sandbox. No project path may lie under it: at levels with
/// namespaces it is a tmpfs of the package's own, which would hide an input laid out there and
/// swallow an output written there, and at every level the executor makes and empties it.
pub const SANDBOX_TMP: &str = ".tmp";

/// Checks a path string from outside. `Ok` means: relative, `/`-separated, inside whatever
/// root it is joined onto (before symbolic links, which [`join_no_follow`] deals with).
pub fn check_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong { len: path.len() });
    }
    if let Some(c) = path.chars().find(|c| c.is_control()) {
        return Err(if c == '\0' { PathError::Nul } else { PathError::Control(c as u32) });
    }
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    for component in path.split('/') {
        match component {
            "" => return Err(PathError::EmptyComponent),
            "." => return Err(PathError::CurDir),
            ".." => return Err(PathError::ParentDir),
            c if c.len() > MAX_COMPONENT_BYTES => return Err(PathError::ComponentTooLong { len: c.len() }),
            _ => {}
        }
    }
    if path.split('/').next() == Some(SANDBOX_TMP) {
        return Err(PathError::Reserved);
    }
    Ok(())
}

/// Checks a single name (a build id, a package name) that becomes one directory level.
pub fn check_name(name: &str) -> Result<(), PathError> {
    check_path(name)?;
    if name.contains('/') {
        return Err(PathError::NotAName);
    }
    Ok(())
}

/// A path that failed [`check_path`], with the field of the request it came from:
/// `files["../x"].path: '../x' has a '..' component; …`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{field}: {}", describe(.path, .problem))]
pub struct BadPath {
    /// Where in the request: `files["a.c"].path`, `packages.app.outputs[0]`, `task.files[2].path`.
    pub field: String,
    /// The offending text (shortened when long).
    pub path: String,
    /// What is wrong with it.
    pub problem: String,
}

fn describe(path: &str, problem: &str) -> String {
    if path.is_empty() {
        format!("the path {problem}")
    } else {
        format!("'{path}' {problem}")
    }
}

impl BadPath {
    pub fn new(field: impl Into<String>, path: &str, problem: impl fmt::Display) -> BadPath {
        BadPath { field: field.into(), path: shorten(path), problem: problem.to_string() }
    }
}

/// Checks `path` with [`check_path`], naming `field` when it fails.
pub fn check_field(field: impl FnOnce() -> String, path: &str) -> Result<(), BadPath> {
    check_path(path).map_err(|e| BadPath::new(field(), path, e))
}

/// At most 120 characters of a path for an error message, control characters escaped.
fn shorten(path: &str) -> String {
    let mut out: String = path.chars().take(120).flat_map(char::escape_debug).collect();
    if path.chars().count() > 120 {
        out.push('…');
    }
    out
}

/// Why a checked path could not be joined onto a root.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("'{path}' {problem}")]
    Invalid { path: String, problem: PathError },
    /// A component on the way is a symbolic link: it could lead anywhere.
    #[error("'{path}' passes through '{at}', a symbolic link; links are not followed")]
    Symlink { path: String, at: String },
    #[error("'{path}' passes through '{at}', which is not a directory")]
    NotADirectory { path: String, at: String },
    #[error("'{path}': {source}")]
    Io { path: String, source: std::io::Error },
}

/// Joins a path onto `root` so that the result stays inside `root`: the path is checked with
/// [`check_path`], then every directory on the way (not the last component) is looked at with
/// `symlink_metadata` — never followed. A directory that is a symbolic link is refused; one that
/// is missing is created when `create_dirs`, else the walk stops there (nothing below it exists
/// yet). `root` itself is trusted. The last component is not looked at: the caller decides what
/// a link or a file there means (open it with `O_NOFOLLOW`, or replace it by a rename).
pub fn join_no_follow(root: &Path, path: &str, create_dirs: bool) -> Result<PathBuf, JoinError> {
    join_no_follow_in(root, path, create_dirs, &mut CheckedDirs::looking_each_time())
}

/// The directories under one root that [`join_no_follow_in`] found to be directories (not links)
/// or made, during one pass over many paths — a project's inputs, a sandbox's layout — so that
/// each is looked at once, not once per path under it: 30 files in `src/` cost 30 looks at `src`
/// (a cold C build's CLI made 172 `statx` calls for 57 inputs, issue 14). A directory swapped for
/// a link after its look would be followed by an open below it for the rest of the pass, so only
/// a pass over a tree nobody else changes meanwhile remembers ([`CheckedDirs::remembering`]).
#[derive(Debug)]
pub struct CheckedDirs {
    dirs: std::collections::HashSet<String>,
    remember: bool,
}

impl CheckedDirs {
    /// Remembers each directory found: for the caller's own files (the CLI reading its user's
    /// project) or a sandbox before its package starts, where no one else changes the tree.
    pub fn remembering() -> CheckedDirs {
        CheckedDirs { dirs: Default::default(), remember: true }
    }

    /// Looks at every directory on the way of every path: for a tree others may write to while
    /// it is read (a project the node reads for a builder), where remembering would widen the
    /// window for a directory swapped for a link from one path's walk to the whole pass.
    pub fn looking_each_time() -> CheckedDirs {
        CheckedDirs { dirs: Default::default(), remember: false }
    }

    fn insert(&mut self, dir: &str) {
        if self.remember {
            self.dirs.insert(dir.to_string());
        }
    }
}

/// [`join_no_follow`], looking only at directories `checked` has not seen, and adding those it
/// finds or makes.
pub fn join_no_follow_in(
    root: &Path,
    path: &str,
    create_dirs: bool,
    checked: &mut CheckedDirs,
) -> Result<PathBuf, JoinError> {
    check_path(path).map_err(|problem| JoinError::Invalid { path: shorten(path), problem })?;
    let mut components: Vec<&str> = path.split('/').collect();
    let last = components.pop().unwrap_or_default();
    let mut at = root.to_path_buf();
    let mut missing = false;
    // The directory so far, relative to `root`: `path` up to the end of component `i`.
    let mut end = 0;
    for (i, c) in components.iter().enumerate() {
        at.push(c);
        end += c.len() + usize::from(i > 0);
        let here = &path[..end];
        if missing {
            if create_dirs {
                std::fs::create_dir(&at).map_err(|source| JoinError::Io { path: shorten(path), source })?;
                checked.insert(here);
            }
            continue;
        }
        if checked.dirs.contains(here) {
            continue;
        }
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(JoinError::Symlink { path: shorten(path), at: shorten(here) })
            }
            Ok(m) if m.is_dir() => {
                checked.insert(here);
            }
            Ok(_) => return Err(JoinError::NotADirectory { path: shorten(path), at: shorten(here) }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                missing = true;
                if create_dirs {
                    std::fs::create_dir(&at).map_err(|source| JoinError::Io { path: shorten(path), source })?;
                    checked.insert(here);
                }
            }
            Err(source) => return Err(JoinError::Io { path: shorten(path), source }),
        }
    }
    at.push(last);
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_paths_pass() {
        for p in [
            "a",
            "a.c",
            "src/main.c",
            "obj/x.o",
            ".hidden",
            "a/.b/c..d",
            "...",
            "with space",
            "ünï/cödé",
            "*.h",
            ".tmpx",
            "a/.tmp/b",
            ".tmp.c",
        ] {
            assert_eq!(check_path(p), Ok(()), "{p}");
        }
        assert_eq!(check_path("a/".repeat(2000).trim_end_matches('/')), Ok(()));
    }

    #[test]
    fn every_escape_is_refused_with_its_reason() {
        let cases: &[(&str, PathError)] = &[
            ("", PathError::Empty),
            ("/tmp/x", PathError::Absolute),
            ("/", PathError::Absolute),
            ("../x", PathError::ParentDir),
            ("../../../../x", PathError::ParentDir),
            ("a/../../x", PathError::ParentDir),
            ("a/..", PathError::ParentDir),
            (".tmp", PathError::Reserved),
            (".tmp/x.c", PathError::Reserved),
            (".tmp/a/b", PathError::Reserved),
            ("..", PathError::ParentDir),
            ("./a", PathError::CurDir),
            ("a/./b", PathError::CurDir),
            (".", PathError::CurDir),
            ("a//b", PathError::EmptyComponent),
            ("a/", PathError::EmptyComponent),
            ("a\0b", PathError::Nul),
            ("a\nb", PathError::Control(0x0a)),
            ("a\u{7f}", PathError::Control(0x7f)),
            ("..\\x", PathError::Backslash),
            ("C:\\Windows", PathError::Backslash),
        ];
        for (p, want) in cases {
            assert_eq!(check_path(p).as_ref(), Err(want), "{p:?}");
        }
        assert_eq!(check_path(&"x".repeat(MAX_PATH_BYTES + 1)), Err(PathError::TooLong { len: MAX_PATH_BYTES + 1 }));
        assert_eq!(check_path(&"x".repeat(256)), Err(PathError::ComponentTooLong { len: 256 }));
    }

    #[test]
    fn names_are_single_components() {
        assert_eq!(check_name("b_0123abcd"), Ok(()));
        assert_eq!(check_name("a/b"), Err(PathError::NotAName));
        assert_eq!(check_name(".."), Err(PathError::ParentDir));
    }

    #[test]
    fn errors_name_the_field_and_the_path() {
        let e = check_field(|| r#"files["../x"].path"#.into(), "../x").expect_err("refused");
        assert_eq!(
            e.to_string(),
            r#"files["../x"].path: '../x' has a '..' component; paths must stay inside the project"#
        );
        let e = check_field(|| "outputs[0]".into(), "a\0b").expect_err("refused");
        assert_eq!(e.to_string(), r"outputs[0]: 'a\0b' contains a NUL byte");
        assert_eq!(check_field(|| "x".into(), "").expect_err("refused").to_string(), "x: the path is empty");
    }

    /// One pass over many paths with the directories it has seen gives, path by path, what a
    /// walk of each alone gives: the same joined path, the same link or file refused at the same
    /// place, the same directories made.
    #[test]
    fn a_pass_over_many_paths_joins_each_as_a_walk_of_its_own_would() {
        let paths =
            ["src/a.c", "src/b/c.h", "src/b/d/e.h", "link/x", "src/link/y", "file/x", "new/d/e", "new/d/f", "top"];
        let tree = || {
            let dir = tempfile::tempdir().expect("tempdir");
            let root = dir.path().join("root");
            std::fs::create_dir_all(root.join("src/b")).expect("tree");
            std::fs::write(root.join("file"), "").expect("file");
            std::os::unix::fs::symlink(dir.path(), root.join("link")).expect("symlink");
            std::os::unix::fs::symlink(dir.path(), root.join("src/link")).expect("symlink");
            (dir, root)
        };
        let shown = |r: Result<PathBuf, JoinError>, root: &Path| match r {
            Ok(p) => format!("ok {}", p.strip_prefix(root).expect("inside").display()),
            Err(JoinError::Symlink { at, .. }) => format!("link at {at}"),
            Err(JoinError::NotADirectory { at, .. }) => format!("not a directory at {at}"),
            Err(e) => format!("{e}"),
        };
        for create in [false, true] {
            let (_one, alone) = tree();
            let (_other, pass) = tree();
            let mut checked = CheckedDirs::remembering();
            for p in paths {
                let each = shown(join_no_follow(&alone, p, create), &alone);
                let together = shown(join_no_follow_in(&pass, p, create, &mut checked), &pass);
                assert_eq!(each, together, "{p}, create {create}");
            }
            for made in ["src/b/d", "new/d"] {
                assert_eq!(alone.join(made).is_dir(), pass.join(made).is_dir(), "{made}, create {create}");
            }
        }
    }

    /// A pass over a tree others may change looks again at every directory: one swapped for a
    /// link between two paths is refused at the second. A remembering pass (for a tree no one
    /// else changes) takes its first look for the whole pass.
    #[test]
    fn a_directory_swapped_for_a_link_mid_pass_is_refused_unless_the_pass_remembers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("src")).expect("tree");
        for (mut checked, remembers) in [(CheckedDirs::looking_each_time(), false), (CheckedDirs::remembering(), true)]
        {
            let _ = std::fs::remove_file(root.join("src"));
            std::fs::create_dir_all(root.join("src")).expect("a real directory again");
            join_no_follow_in(&root, "src/a.c", false, &mut checked).expect("a real directory");
            std::fs::remove_dir(root.join("src")).expect("rmdir");
            std::os::unix::fs::symlink(dir.path(), root.join("src")).expect("swapped for a link");
            let second = join_no_follow_in(&root, "src/b.c", false, &mut checked);
            assert_eq!(second.is_ok(), remembers, "remembering {remembers}: {second:?}");
        }
    }

    #[test]
    fn joining_creates_directories_and_refuses_links_on_the_way() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&root).expect("root");
        std::fs::create_dir_all(&outside).expect("outside");

        let p = join_no_follow(&root, "a/b/c.txt", true).expect("joined");
        assert_eq!(p, root.join("a/b/c.txt"));
        assert!(root.join("a/b").is_dir(), "directories on the way are created");
        assert!(!p.exists(), "the last component is left to the caller");
        assert_eq!(join_no_follow(&root, "x/y/z", false).expect("joined"), root.join("x/y/z"));
        assert!(!root.join("x").exists(), "nothing is created unless asked");

        std::os::unix::fs::symlink(&outside, root.join("link")).expect("symlink");
        for create in [true, false] {
            match join_no_follow(&root, "link/f.txt", create) {
                Err(JoinError::Symlink { at, .. }) => assert_eq!(at, "link"),
                other => panic!("a link on the way is refused, got {other:?}"),
            }
        }
        std::os::unix::fs::symlink(&outside, root.join("a/b/deep")).expect("symlink");
        let e = join_no_follow(&root, "a/b/deep/f", true).expect_err("refused");
        assert_eq!(e.to_string(), "'a/b/deep/f' passes through 'a/b/deep', a symbolic link; links are not followed");
        assert!(std::fs::read_dir(&outside).expect("outside").next().is_none(), "nothing was made outside");
        // A link as the last component is the caller's to judge (here: it is not followed).
        assert_eq!(join_no_follow(&root, "link", false).expect("joined"), root.join("link"));

        std::fs::write(root.join("file"), "x").expect("file");
        assert!(matches!(join_no_follow(&root, "file/x", true), Err(JoinError::NotADirectory { .. })));
        assert!(matches!(
            join_no_follow(&root, "../outside/x", true),
            Err(JoinError::Invalid { problem: PathError::ParentDir, .. })
        ));
    }
}
