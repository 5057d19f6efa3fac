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

/// Where output `path` (already declared and checked) is now, by the same walk as [`place`] but
/// making nothing: None where a directory on the way is missing or refused.
pub fn existing_place(root: &Path, path: &str) -> Option<PathBuf> {
    wire::check_path(path).ok()?;
    walk(root, path, false).ok()
}

/// The walk of [`place`]: each directory on the way entered if it is one, followed if it is a link
/// staying inside the project, made if missing and `create`.
fn walk(root: &Path, path: &str, create: bool) -> Result<PathBuf, CliError> {
    let mut components: Vec<&str> = path.split('/').collect();
    let last = components.pop().unwrap_or_default();
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
    Ok(at.join(last))
}

/// Whether `dest` is already a regular file (not a link) holding `digest`, executable or not as
/// `executable` says (a build that only changes an output's mode changes the project's file).
pub fn holds(dest: &Path, digest: &str, executable: bool) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(dest).is_ok_and(|m| m.is_file() && (m.permissions().mode() & 0o111 != 0) == executable)
        && cas::hash_file(dest).is_ok_and(|(d, _)| d == digest)
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

    #[test]
    fn outputs_go_inside_the_project_only() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().canonicalize().expect("canonical");
        let root = base.join("project");
        let outside = base.join("outside");
        std::fs::create_dir_all(root.join("real")).expect("project");
        std::fs::create_dir_all(&outside).expect("outside");
        std::os::unix::fs::symlink(&outside, root.join("out")).expect("symlink");
        std::os::unix::fs::symlink(root.join("real"), root.join("inner")).expect("symlink");
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
