//! Where a build's outputs may be written back into the project. The paths come from a node,
//! so they are data: each is checked with [`wire::check_path`] and must be an output the
//! manifest declares; the directories on the way are walked without trusting links — a link
//! that stays inside the project is followed, one that leads outside is refused — and missing
//! ones are created inside the project. The file itself is then written beside its place and
//! renamed over it, so a symbolic link already at an output's path is replaced by the file and
//! its target is never written.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use buildnet_actors::builds::project::Project;
use buildnet_actors::cas;
use buildnet_actors::wire;

use super::CliError;

fn refused(path: &str, why: impl std::fmt::Display) -> CliError {
    CliError::Other(format!("output '{}' not written: {why}", path.escape_debug()))
}

/// The place in `root` (canonical) for output `path`, its directories made. Refuses a path
/// that fails the path check, that no package declares, or whose directories lead outside the
/// project through a symbolic link.
pub fn place(root: &Path, project: &Project, path: &str) -> Result<PathBuf, CliError> {
    wire::check_path(path).map_err(|e| refused(path, format!("the path {e}")))?;
    let declared: BTreeSet<&str> =
        project.manifest.packages.values().flat_map(|p| p.outputs.iter().map(String::as_str)).collect();
    if !declared.contains(path) {
        return Err(refused(path, "no package of buildnet.toml declares it"));
    }
    walk(root, path, true)
}

/// Where outputs (already declared and checked) are now, by the same walk as [`place`] but
/// making nothing: None where a directory on the way is missing or refused. Each directory is
/// walked to once for every output under it, as `wire::CheckedDirs::remembering` does for the
/// inputs: an up-to-date check reads its user's own tree, and 30 outputs in `obj/` cost 30 looks
/// at `obj` before (issue 14).
pub struct ExistingPlaces<'a> {
    root: &'a Path,
    dirs: std::collections::HashMap<String, Option<PathBuf>>,
}

impl<'a> ExistingPlaces<'a> {
    pub fn new(root: &'a Path) -> Self {
        ExistingPlaces { root, dirs: Default::default() }
    }

    pub fn of(&mut self, path: &str) -> Option<PathBuf> {
        wire::check_path(path).ok()?;
        let (dir, last) = path.rsplit_once('/').unwrap_or(("", path));
        if !self.dirs.contains_key(dir) {
            let components: Vec<&str> = dir.split('/').filter(|c| !c.is_empty()).collect();
            let found = walk_dirs(self.root, path, &components, false).ok();
            self.dirs.insert(dir.to_string(), found);
        }
        self.dirs.get(dir).and_then(|found| found.as_ref()).map(|dir| dir.join(last))
    }
}

/// The walk of [`place`]: each directory on the way entered if it is one, followed if it is a link
/// staying inside the project, made if missing and `create`.
fn walk(root: &Path, path: &str, create: bool) -> Result<PathBuf, CliError> {
    let mut components: Vec<&str> = path.split('/').collect();
    let last = components.pop().unwrap_or_default();
    Ok(walk_dirs(root, path, &components, create)?.join(last))
}

/// The directories `components` of output `path` (named in a refusal), walked as [`walk`] says.
fn walk_dirs(root: &Path, path: &str, components: &[&str], create: bool) -> Result<PathBuf, CliError> {
    let mut at = root.to_path_buf();
    for (i, c) in components.iter().enumerate() {
        let next = at.join(c);
        // Named only in a refusal: every up-to-date check walks each output's path.
        let shown = || components[..=i].join("/");
        match std::fs::symlink_metadata(&next) {
            Ok(m) if m.is_dir() => at = next,
            Ok(m) if m.file_type().is_symlink() => {
                let target = next.canonicalize().map_err(|e| refused(path, format!("'{}' is a link: {e}", shown())))?;
                if !target.starts_with(root) {
                    return Err(refused(
                        path,
                        format!(
                            "'{}' is a symbolic link leading outside the project (to {})",
                            shown(),
                            target.display()
                        ),
                    ));
                }
                if !target.is_dir() {
                    return Err(refused(path, format!("'{}' is not a directory", shown())));
                }
                at = target;
            }
            Ok(_) => return Err(refused(path, format!("'{}' is not a directory", shown()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                std::fs::create_dir(&next).map_err(|e| refused(path, format!("{}: {e}", next.display())))?;
                at = next;
            }
            Err(e) => return Err(refused(path, format!("{}: {e}", next.display()))),
        }
    }
    Ok(at)
}

/// Whether `dest` is already a regular file (not a link) holding `digest`, executable or not as
/// `executable` says (a build that only changes an output's mode changes the project's file).
pub fn holds(dest: &Path, digest: &str, executable: bool) -> bool {
    use std::os::unix::fs::PermissionsExt;
    // Read through a descriptor that is the regular file itself: a link at its name fails the
    // open rather than being followed to a file elsewhere that holds the bytes.
    let Ok((mut file, meta)) = buildnet_actors::exec::layout::open_regular(dest, "output", String::new) else {
        return false;
    };
    (meta.permissions().mode() & 0o111 != 0) == executable
        && cas::hash_reader(&mut file, dest).is_ok_and(|(d, _)| d == digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use buildnet_actors::builds::project::Manifest;

    fn project(outputs: &[&str]) -> Project {
        let list = outputs.iter().map(|o| format!("{o:?}")).collect::<Vec<_>>().join(", ");
        let manifest =
            Manifest::parse("m", &format!("[packages.p]\ncommand = [\"true\"]\noutputs = [{list}]\n")).expect("parses");
        Project { manifest, order: vec!["p".into()], inputs: Default::default() }
    }

    /// A project dir with `real/`, `inner` (a link to `real`) and `out` (a link to a directory
    /// outside it): (the temporary dir, the project, the outside directory).
    fn project_with_links() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().canonicalize().expect("canonical");
        let root = base.join("project");
        let outside = base.join("outside");
        std::fs::create_dir_all(root.join("real")).expect("project");
        std::fs::create_dir_all(&outside).expect("outside");
        std::os::unix::fs::symlink(&outside, root.join("out")).expect("symlink");
        std::os::unix::fs::symlink(root.join("real"), root.join("inner")).expect("symlink");
        (tmp, root, outside)
    }

    #[test]
    fn outputs_go_inside_the_project_only() {
        let (_tmp, root, outside) = project_with_links();
        let p = project(&["obj/a.o", "out/x", "inner/y", "a.txt"]);

        assert_eq!(place(&root, &p, "obj/a.o").expect("placed"), root.join("obj/a.o"));
        assert!(root.join("obj").is_dir(), "its directory is made");
        assert_eq!(place(&root, &p, "inner/y").expect("a link inside"), root.join("real/y"));
        assert_eq!(place(&root, &p, "a.txt").expect("placed"), root.join("a.txt"));
        let e = place(&root, &p, "out/x").expect_err("leaves the project").to_string();
        assert!(
            e.starts_with("output 'out/x' not written: 'out' is a symbolic link leading outside the project"),
            "{e}"
        );
        let e = place(&root, &p, "../x").expect_err("climbs out").to_string();
        assert_eq!(e, "output '../x' not written: the path has a '..' component; paths must stay inside the project");
        let e = place(&root, &p, "b.txt").expect_err("undeclared").to_string();
        assert_eq!(e, "output 'b.txt' not written: no package of buildnet.toml declares it");

        std::fs::write(outside.join("same"), "x").expect("write");
        std::os::unix::fs::symlink(outside.join("same"), root.join("a.txt")).expect("symlink");
        let (digest, _) = cas::hash_file(&outside.join("same")).expect("hash");
        assert!(!holds(&root.join("a.txt"), &digest, false), "a link is never taken for the output");
    }

    /// An up-to-date check finds each output where `place` put it, walking each directory once
    /// for all the outputs under it, and nowhere when a directory on the way is missing or leads
    /// outside the project; one answer about a directory does not leak into another's.
    #[test]
    fn existing_places_are_where_place_put_them() {
        let (_tmp, root, _) = project_with_links();
        let outputs = ["obj/a.o", "obj/b.o", "obj/deep/c.o", "inner/y", "inner/z", "a.txt"];
        let p = project(&[&outputs[..], &["out/x", "gone/w"]].concat());
        let placed: Vec<PathBuf> = outputs.iter().map(|o| place(&root, &p, o).expect("placed")).collect();

        let mut places = ExistingPlaces::new(&root);
        for (output, placed) in outputs.iter().zip(&placed) {
            assert_eq!(places.of(output).as_ref(), Some(placed), "{output}");
        }
        assert_eq!(places.of("obj/a.o").as_ref(), Some(&placed[0]), "asked again, the same answer");
        assert_eq!(places.of("out/x"), None, "a link leading outside the project");
        assert_eq!(places.of("gone/w"), None, "a directory that is not there");
        assert_eq!(places.of("../x"), None, "a path that climbs out");
        assert_eq!(places.of("obj/../../x"), None);
        std::fs::remove_dir_all(root.join("obj")).expect("remove");
        assert_eq!(ExistingPlaces::new(&root).of("obj/a.o"), None, "a new check looks again");
    }

    /// An output whose bytes are right but whose executable bit is not is not held: a build that
    /// only changes an output's mode changes the project's file (found by a tester).
    #[test]
    fn an_output_is_held_with_its_bytes_and_its_executable_bit() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let out = tmp.path().join("x.sh");
        std::fs::write(&out, "echo hi\n").expect("write");
        let (digest, _) = cas::hash_file(&out).expect("hash");
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(holds(&out, &digest, false));
        assert!(!holds(&out, &digest, true), "wanted executable, it is not");
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert!(holds(&out, &digest, true));
        assert!(!holds(&out, &digest, false), "wanted not executable, it is");
    }
}
