//! `buildnet.toml`: the work of a project as packages with commands, dependencies, inputs and
//! outputs. Parsed with field paths and checked (cycles, unknown dependencies, inputs that match
//! nothing, bad globs, outputs outside the project) before anything runs.
//!
//! A pattern package (`for_each = "<glob>"`) stands for one package per matching file. It is
//! expanded here, when the manifest is checked against the project directory and before anything
//! is placed: each expansion (`thumbs[images/a.jpg]`) is an ordinary package from then on, so
//! placement, the action cache, retries, history and estimates treat it as one, by a stable name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::inputs::Listed;
use crate::wire::check_path;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The file a project describes its work in.
pub const MANIFEST: &str = "buildnet.toml";

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}: {field}: {message}")]
pub struct ProjectError {
    pub file: String,
    /// `packages.<name>.<field>`, or the document.
    pub field: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default)]
    pub packages: BTreeMap<String, Package>,
}

/// One unit of work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Package {
    /// A glob over the project: the table is a pattern, expanded into one package per matching
    /// file, with `{in}`, `{stem}`, `{name}`, `{dir}` and `{ext}` replaced in its command, shell,
    /// env, inputs and outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<String>,
    /// The program and its arguments, run without a shell.
    pub command: Option<Vec<String>>,
    /// A shell line run by `sh -c`, for packages that want one.
    pub shell: Option<String>,
    #[serde(default)]
    pub deps: Vec<String>,
    /// Globs relative to the project root.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Files the package produces, relative to the project root.
    #[serde(default)]
    pub outputs: Vec<String>,
    #[serde(default)]
    pub tools: Vec<Requirement>,
    #[serde(default)]
    pub runtimes: Vec<Requirement>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub cores: Option<u32>,
    pub memory_gb: Option<f64>,
}

/// A tool or runtime a package needs: `"gcc"` or `{ name = "node", version = ">=20" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Requirement {
    Name(String),
    Versioned { name: String, version: Option<String> },
}

impl Requirement {
    pub fn name(&self) -> &str {
        match self {
            Requirement::Name(n) | Requirement::Versioned { name: n, .. } => n,
        }
    }

    pub fn version(&self) -> Option<&str> {
        match self {
            Requirement::Name(_) => None,
            Requirement::Versioned { version, .. } => version.as_deref(),
        }
    }

    /// Whether a found version satisfies this requirement.
    pub fn accepts(&self, found: Option<&str>) -> bool {
        match (self.version(), found) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(req), Some(v)) => version_matches(req, v),
        }
    }
}

/// Whether `requirement` is one [`version_matches`] reads as written: an optional operator
/// (`>=`, `<=`, `>`, `<`, `==`, `=`), then a version — an optional `v` and dot-separated numbers,
/// each of which may carry a suffix (`3.11`, `v20`, `12.2.0-rc1`). Anything else (`>=>=9`) would
/// be read as some other requirement without a word.
pub fn is_version_requirement(requirement: &str) -> bool {
    let req = requirement.trim();
    let rest = [">=", "<=", "==", ">", "<", "="].iter().find_map(|op| req.strip_prefix(op)).unwrap_or(req).trim();
    let version = rest.strip_prefix('v').unwrap_or(rest);
    !version.is_empty()
        && version.split('.').all(|part| {
            part.starts_with(|c: char| c.is_ascii_digit())
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '+')
        })
}

/// Compares dotted numeric versions: `>=20`, `>1.2`, `<=3`, `<3.11`, `=12.2.0`, or a bare
/// version meaning "starts with" (`12` accepts 12.2.0). Missing components count as zero.
pub fn version_matches(requirement: &str, found: &str) -> bool {
    let parse = |v: &str| -> Vec<u64> {
        v.trim()
            .trim_start_matches('v')
            .split('.')
            .map(|p| p.chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap_or(0))
            .collect()
    };
    let cmp = |a: &[u64], b: &[u64]| {
        let n = a.len().max(b.len());
        (0..n)
            .map(|i| a.get(i).copied().unwrap_or(0).cmp(&b.get(i).copied().unwrap_or(0)))
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    };
    let req = requirement.trim();
    let have = parse(found);
    for (op, test) in [(">=", 0), ("<=", 1), (">", 2), ("<", 3), ("==", 4), ("=", 4)] {
        if let Some(rest) = req.strip_prefix(op) {
            let want = parse(rest);
            let o = cmp(&have, &want);
            return match test {
                0 => o.is_ge(),
                1 => o.is_le(),
                2 => o.is_gt(),
                3 => o.is_lt(),
                _ => o.is_eq(),
            };
        }
    }
    let want = parse(req);
    have.len() >= want.len() && have[..want.len()] == want[..]
}

/// A checked project: the manifest plus the files each package's inputs matched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Project {
    pub manifest: Manifest,
    /// Packages in an order where every dependency comes first.
    pub order: Vec<String>,
    /// Package → input files (project-relative, `/`-separated, sorted).
    pub inputs: BTreeMap<String, Vec<String>>,
}

fn err(file: &str, field: String, message: impl Into<String>) -> ProjectError {
    ProjectError { file: file.to_string(), field, message: message.into() }
}

/// Largest `buildnet.toml` read. The TOML parser can use up to ~200 bytes of memory per byte of
/// a malformed file (found by fuzzing), so the cap bounds that to ~50 MB; a manifest this large
/// is thousands of hand-written packages, which pattern packages describe in a few lines.
pub const MAX_MANIFEST_BYTES: usize = 256 * 1024;

impl Manifest {
    pub fn parse(file: &str, text: &str) -> Result<Manifest, ProjectError> {
        if text.len() > MAX_MANIFEST_BYTES {
            return Err(err(
                file,
                "(document)".into(),
                format!("{} bytes; a manifest may have at most {MAX_MANIFEST_BYTES}", text.len()),
            ));
        }
        let de =
            toml::Deserializer::parse(text).map_err(|e| err(file, "(document)".into(), e.message().to_string()))?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            err(file, if path == "." { "(document)".into() } else { path }, e.into_inner().message().to_string())
        })
    }

    /// Checks the manifest against the project directory, expands its pattern packages and
    /// orders the packages.
    pub fn check(self, file: &str, root: &Path) -> Result<Project, ProjectError> {
        self.check_listing(file, root, &mut Listed::new())
    }

    /// [`Manifest::check`], adding every directory whose listing it read to `listed`.
    pub fn check_listing(self, file: &str, root: &Path, listed: &mut Listed) -> Result<Project, ProjectError> {
        self.check_structure(file)?;
        let manifest = self.expand(file, root, listed)?;
        let order = manifest.structure(file, true)?;
        let mut inputs = BTreeMap::new();
        // Each pattern is walked once, however many packages list it: a generated manifest gives
        // every compile the same `include/*.h`, and walking it per package was ~15 % of the CLI's
        // CPU in a cached build of a 30-package C project, more than hashing every input (issue 14).
        let mut walked: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (name, p) in &manifest.packages {
            let field = |f: &str| format!("packages.{name}.{f}");
            let mut matched = BTreeSet::new();
            for pattern in &p.inputs {
                if !walked.contains_key(pattern.as_str()) {
                    // Expanded without following a link (`inputs::expand`), as the CLI and the node share it.
                    let found = super::inputs::expand_listing(root, pattern, listed)
                        .map_err(|m| err(file, field("inputs"), m))?;
                    walked.insert(pattern, found);
                }
                let found = &walked[pattern.as_str()];
                if found.is_empty() {
                    return Err(err(
                        file,
                        field("inputs"),
                        format!("'{pattern}' matches no file in {}", root.display()),
                    ));
                }
                matched.extend(found.iter().cloned());
            }
            inputs.insert(name.clone(), matched.into_iter().collect());
        }
        Ok(Project { manifest, order, inputs })
    }

    /// Every check that needs no files; returns the packages in dependency order (pattern
    /// packages unexpanded).
    pub fn check_structure(&self, file: &str) -> Result<Vec<String>, ProjectError> {
        self.structure(file, false)
    }

    /// [`Manifest::check_structure`]; with `expanded`, of an expanded manifest: names may be
    /// expansions (`table[path]`) and no table may still be a pattern.
    fn structure(&self, file: &str, expanded: bool) -> Result<Vec<String>, ProjectError> {
        if self.packages.is_empty() {
            return Err(err(file, "packages".into(), "no packages: add a [packages.<name>] table"));
        }
        let plain = |n: &str| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        for (name, p) in &self.packages {
            let field = |f: &str| format!("packages.{name}.{f}");
            let expansion = expanded && expansion_of(name).is_some_and(|(t, f)| plain(t) && check_path(f).is_ok());
            if !plain(name) && !expansion {
                return Err(err(file, format!("packages.{name}"), "package names use letters, digits, - and _"));
            }
            if let Some(glob) = &p.for_each {
                if expanded {
                    return Err(err(file, field("for_each"), "a sent project's pattern packages must be expanded"));
                }
                if let Err(e) = check_path(glob) {
                    return Err(err(file, field("for_each"), format!("'{}' {e}", glob.escape_debug())));
                }
                glob::Pattern::new(glob)
                    .map_err(|e| err(file, field("for_each"), format!("bad glob '{glob}': {e}")))?;
                check_placeholders(p).map_err(|(f, m)| err(file, field(&f), m))?;
            }
            match (&p.command, &p.shell) {
                (Some(_), Some(_)) => return Err(err(file, field("shell"), "give either command or shell, not both")),
                (None, None) => {
                    return Err(err(
                        file,
                        field("command"),
                        "missing: give command = [\"program\", \"arg\", …] or shell = \"…\"",
                    ))
                }
                (Some(argv), None) if argv.is_empty() || argv[0].trim().is_empty() => {
                    return Err(err(file, field("command"), "must name a program"))
                }
                (None, Some(sh)) if sh.trim().is_empty() => return Err(err(file, field("shell"), "must not be empty")),
                _ => {}
            }
            for dep in &p.deps {
                if !self.packages.contains_key(dep) {
                    return Err(err(file, field("deps"), format!("unknown package '{dep}'")));
                }
                if dep == name {
                    return Err(err(file, field("deps"), "a package cannot depend on itself"));
                }
            }
            for (i, o) in p.outputs.iter().enumerate() {
                if let Err(e) = check_path(o) {
                    return Err(err(file, field(&format!("outputs[{i}]")), format!("'{}' {e}", o.escape_debug())));
                }
            }
            if p.cores == Some(0) {
                return Err(err(file, field("cores"), "must be at least 1"));
            }
            for (kind, list) in [("tools", &p.tools), ("runtimes", &p.runtimes)] {
                for (i, r) in list.iter().enumerate() {
                    if let Some(bad) = r.version().filter(|v| !is_version_requirement(v)) {
                        return Err(err(
                            file,
                            field(&format!("{kind}[{i}].version")),
                            format!(
                                "'{}' is not a version requirement: a version like 12.2 or v20, after one of >=, <=, >, <, = or nothing",
                                bad.escape_debug()
                            ),
                        ));
                    }
                }
            }
            if let Some(gb) = p.memory_gb {
                if !gb.is_finite() || gb <= 0.0 {
                    return Err(err(file, field("memory_gb"), format!("must be a positive number, got {gb}")));
                }
            }
            for (i, pattern) in p.inputs.iter().enumerate() {
                // A glob is checked as a path: its wildcards are ordinary characters there.
                if let Err(e) = check_path(pattern) {
                    return Err(err(file, field(&format!("inputs[{i}]")), format!("'{}' {e}", pattern.escape_debug())));
                }
                glob::Pattern::new(pattern)
                    .map_err(|e| err(file, field("inputs"), format!("bad glob '{pattern}': {e}")))?;
            }
        }
        topological_order(&self.packages).map_err(|cycle| {
            err(file, format!("packages.{}.deps", cycle[0]), format!("dependency cycle: {}", cycle.join(" → ")))
        })
    }
}

/// The placeholders a pattern package may use.
pub const PLACEHOLDERS: [&str; 5] = ["in", "stem", "name", "dir", "ext"];

/// `("thumbs", "images/a.jpg")` for the expansion `thumbs[images/a.jpg]`.
pub fn expansion_of(name: &str) -> Option<(&str, &str)> {
    let (table, file) = name.strip_suffix(']')?.split_once('[')?;
    (!table.is_empty() && !file.is_empty()).then_some((table, file))
}

/// The `{word}` placeholders of `text` (a lowercase word in braces, not a shell's `${word}`), as
/// byte ranges including the braces.
fn placeholders(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'{' && (i == 0 || bytes[i - 1] != b'$') {
            let word = bytes[i + 1..].iter().take_while(|b| b.is_ascii_lowercase() || **b == b'_').count();
            if word > 0 && bytes.get(i + 1 + word) == Some(&b'}') {
                found.push((i, i + word + 2));
                i += word + 2;
                continue;
            }
        }
        i += 1;
    }
    found
}

/// The values of the placeholders for one file: `images/a/b.jpg` gives `{in}` the path, `{name}`
/// `b.jpg`, `{stem}` `b`, `{ext}` `jpg` (empty without one) and `{dir}` `images/a` (`.` at the
/// project root).
fn placeholder_values(path: &str) -> [(&'static str, String); 5] {
    let p = Path::new(path);
    let text = |o: Option<&std::ffi::OsStr>| o.and_then(|s| s.to_str()).unwrap_or_default().to_string();
    let dir = text(p.parent().map(Path::as_os_str));
    [
        ("in", path.to_string()),
        ("stem", text(p.file_stem())),
        ("name", text(p.file_name())),
        ("dir", if dir.is_empty() { ".".into() } else { dir }),
        ("ext", text(p.extension())),
    ]
}

/// `text` with its placeholders replaced by `values` (each passed through `escape`).
fn substitute(text: &str, values: &[(&'static str, String)], escape: fn(&str) -> String) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (start, end) in placeholders(text) {
        out.push_str(&text[last..start]);
        match values.iter().find(|(k, _)| *k == &text[start + 1..end - 1]) {
            Some((_, v)) => out.push_str(&escape(v)),
            None => out.push_str(&text[start..end]),
        }
        last = end;
    }
    out.push_str(&text[last..]);
    out
}

/// A substituted path without its `.` components (`{dir}/x.o` at the root is `x.o`).
fn tidy(path: String) -> String {
    if !path.split('/').any(|c| c == ".") {
        return path;
    }
    path.split('/').filter(|c| *c != ".").collect::<Vec<_>>().join("/")
}

/// A pattern package's fields name only known placeholders; else the field and the message.
fn check_placeholders(p: &Package) -> Result<(), (String, String)> {
    let mut fields: Vec<(String, &str)> = Vec::new();
    for (i, a) in p.command.iter().flatten().enumerate() {
        fields.push((format!("command[{i}]"), a));
    }
    if let Some(sh) = &p.shell {
        fields.push(("shell".into(), sh));
    }
    for (i, o) in p.outputs.iter().enumerate() {
        fields.push((format!("outputs[{i}]"), o));
    }
    for (i, o) in p.inputs.iter().enumerate() {
        fields.push((format!("inputs[{i}]"), o));
    }
    for (k, v) in &p.env {
        fields.push((format!("env.{k}"), v));
    }
    for (field, text) in fields {
        for (start, end) in placeholders(text) {
            let word = &text[start + 1..end - 1];
            if !PLACEHOLDERS.contains(&word) {
                let known = PLACEHOLDERS.map(|k| format!("{{{k}}}")).join(", ");
                return Err((field, format!("unknown placeholder '{{{word}}}' (a pattern package may use {known})")));
            }
        }
    }
    Ok(())
}

impl Manifest {
    /// Replaces each pattern package with one package per file its `for_each` glob matches
    /// (walked as inputs are, never through a link), and a dependency on the pattern with one on
    /// every expansion. A glob that matches nothing, or two expansions producing one output, is
    /// an error naming the table (and the files).
    fn expand(mut self, file: &str, root: &Path, listed: &mut Listed) -> Result<Manifest, ProjectError> {
        let patterns: Vec<String> =
            self.packages.iter().filter(|(_, p)| p.for_each.is_some()).map(|(n, _)| n.clone()).collect();
        let mut expansions: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for table in patterns {
            let Some(pattern) = self.packages.remove(&table) else { continue };
            let glob = pattern.for_each.clone().unwrap_or_default();
            let field = |f: &str| format!("packages.{table}.{f}");
            let files =
                super::inputs::expand_listing(root, &glob, listed).map_err(|m| err(file, field("for_each"), m))?;
            if files.is_empty() {
                return Err(err(file, field("for_each"), format!("'{glob}' matches no file in {}", root.display())));
            }
            let mut produced: BTreeMap<String, String> = BTreeMap::new();
            let mut names = Vec::with_capacity(files.len());
            for path in files {
                let values = placeholder_values(&path);
                let text = |s: &String| substitute(s, &values, str::to_string);
                let mut e = pattern.clone();
                e.for_each = None;
                e.command = pattern.command.as_ref().map(|argv| argv.iter().map(text).collect());
                e.shell = pattern.shell.as_ref().map(text);
                e.env = pattern.env.iter().map(|(k, v)| (k.clone(), text(v))).collect();
                e.outputs = pattern.outputs.iter().map(|o| tidy(text(o))).collect();
                e.inputs = std::iter::once(glob::Pattern::escape(&path))
                    .chain(pattern.inputs.iter().map(|g| tidy(substitute(g, &values, glob::Pattern::escape))))
                    .collect();
                e.inputs.dedup();
                for (i, o) in e.outputs.iter().enumerate() {
                    if let Err(why) = check_path(o) {
                        return Err(err(file, field(&format!("outputs[{i}]")), format!("'{o}' (for '{path}') {why}")));
                    }
                    if let Some(first) = produced.insert(o.clone(), path.clone()) {
                        return Err(err(
                            file,
                            field("outputs"),
                            format!("'{o}' would be written by both '{first}' and '{path}': make the outputs differ, e.g. by {{dir}}"),
                        ));
                    }
                }
                let name = format!("{table}[{path}]");
                self.packages.insert(name.clone(), e);
                names.push(name);
            }
            expansions.insert(table, names);
        }
        if !expansions.is_empty() {
            for p in self.packages.values_mut() {
                if p.deps.iter().any(|d| expansions.contains_key(d)) {
                    p.deps = p
                        .deps
                        .iter()
                        .flat_map(|d| expansions.get(d).cloned().unwrap_or_else(|| vec![d.clone()]))
                        .collect();
                }
            }
        }
        Ok(self)
    }
}

/// Dependencies first; on a cycle, the cycle's packages in order. Depth-first with an explicit
/// stack: a project's dependency chain is as long as its sender makes it (a 20 000-package chain
/// fits the API's body limit), and recursion that deep overflowed the thread's stack.
fn topological_order(packages: &BTreeMap<String, Package>) -> Result<Vec<String>, Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    let deps_of = |name: &str| packages.get(name).map(|p| p.deps.as_slice()).unwrap_or_default();
    let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
    let mut order = Vec::new();
    for root in packages.keys() {
        if marks.contains_key(root.as_str()) {
            continue;
        }
        marks.insert(root, Mark::Visiting);
        // The path being visited: each package with the index of its next dependency.
        let mut stack: Vec<(&str, usize)> = vec![(root, 0)];
        while let Some(&(name, next)) = stack.last() {
            let Some(dep) = deps_of(name).get(next) else {
                marks.insert(name, Mark::Done);
                order.push(name.to_string());
                stack.pop();
                continue;
            };
            if let Some(top) = stack.last_mut() {
                top.1 += 1;
            }
            match marks.get(dep.as_str()) {
                Some(Mark::Done) => {}
                Some(Mark::Visiting) => {
                    let start = stack.iter().position(|(n, _)| *n == dep.as_str()).unwrap_or(0);
                    let mut cycle: Vec<String> = stack[start..].iter().map(|(n, _)| n.to_string()).collect();
                    cycle.push(dep.clone());
                    return Err(cycle);
                }
                None => {
                    marks.insert(dep, Mark::Visiting);
                    stack.push((dep, 0));
                }
            }
        }
    }
    Ok(order)
}

/// Reads and checks `<root>/buildnet.toml`.
pub fn load(root: &Path) -> Result<Project, ProjectError> {
    load_listing(root, &mut Listed::new())
}

/// [`load`], adding every directory whose listing it read to `listed`.
pub fn load_listing(root: &Path, listed: &mut Listed) -> Result<Project, ProjectError> {
    let file = root.join(MANIFEST).display().to_string();
    let text = read_manifest(root).map_err(|message| err(&file, "(file)".into(), message))?;
    Manifest::parse(&file, &text)?.check_listing(&file, root, listed)
}

/// The text of `<root>/buildnet.toml`, read without following a link on the way or at its name
/// (`exec::layout::open_regular_beneath`), only if it is a regular file, and never more than
/// [`MAX_MANIFEST_BYTES`] + 1 bytes (then [`Manifest::parse`] refuses it): a manifest that was a
/// link to `/dev/zero` had the node read until it ran out of memory, and a FIFO held a thread.
/// The error is the message, for the caller to place.
pub fn read_manifest(root: &Path) -> Result<String, String> {
    use std::io::Read;
    let link = || "is a symbolic link; links are not followed".to_string();
    let (file, _) = crate::exec::layout::open_regular_beneath(root, MANIFEST, "cannot be read", link)?;
    let mut text = String::new();
    file.take(MAX_MANIFEST_BYTES as u64 + 1).read_to_string(&mut text).map_err(|e| format!("cannot be read: {e}"))?;
    Ok(text)
}

impl Project {
    /// Re-checks a project a client sent (pattern packages expanded by it): the manifest's
    /// structure, and input lists that only name files matching the package's globs.
    pub fn recheck(&self, file: &str) -> Result<Vec<String>, ProjectError> {
        let order = self.manifest.structure(file, true)?;
        for (name, files) in &self.inputs {
            let Some(p) = self.manifest.packages.get(name) else {
                return Err(err(file, format!("inputs.{name}"), "no such package"));
            };
            let patterns: Vec<glob::Pattern> = p.inputs.iter().filter_map(|g| glob::Pattern::new(g).ok()).collect();
            for f in files {
                if let Err(e) = check_path(f) {
                    return Err(err(file, format!("inputs.{name}"), format!("'{}' {e}", f.escape_debug())));
                }
                if !patterns.iter().any(|pat| pat.matches(f)) {
                    return Err(err(
                        file,
                        format!("packages.{name}.inputs"),
                        format!("'{f}' is not matched by the package's inputs"),
                    ));
                }
            }
        }
        Ok(order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The manifest is read only as a regular file reached without a link, and never past the
    /// size a manifest may have: a link to `/dev/zero` had the node read until memory ran out,
    /// a FIFO held a thread.
    #[test]
    fn the_manifest_is_read_only_as_a_bounded_regular_file_without_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("p");
        std::fs::create_dir(&root).expect("mkdir");
        std::os::unix::fs::symlink("/dev/zero", root.join(MANIFEST)).expect("link");
        let e = read_manifest(&root).expect_err("a link");
        assert!(e.contains("symbolic link"), "{e}");
        std::fs::remove_file(root.join(MANIFEST)).expect("rm");
        nix::unistd::mkfifo(&root.join(MANIFEST), nix::sys::stat::Mode::S_IRWXU).expect("fifo");
        let e = read_manifest(&root).expect_err("a FIFO");
        assert!(e.contains("not a regular file"), "{e}");
        std::fs::remove_file(root.join(MANIFEST)).expect("rm");
        std::fs::write(root.join(MANIFEST), "#".repeat(4 * MAX_MANIFEST_BYTES)).expect("write");
        assert_eq!(read_manifest(&root).expect("read").len(), MAX_MANIFEST_BYTES + 1, "bounded");
        let e = load(&root).expect_err("too large").to_string();
        assert!(e.contains("a manifest may have at most"), "{e}");
        std::os::unix::fs::symlink(&root, dir.path().join("via")).expect("link");
        let e = read_manifest(&dir.path().join("via")).expect_err("a project reached through a link");
        assert!(e.contains("passes through a symbolic link"), "{e}");
    }

    fn project(files: &[(&str, &str)], manifest: &str) -> (tempfile::TempDir, Result<Project, ProjectError>) {
        let dir = tempfile::tempdir().expect("tempdir");
        for (path, text) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, text).expect("write");
        }
        std::fs::write(dir.path().join(MANIFEST), manifest).expect("manifest");
        let result = load(dir.path());
        (dir, result)
    }

    const C_PROJECT: &str = r#"
[packages.util]
command = ["gcc", "-c", "src/util.c", "-o", "util.o"]
inputs = ["src/util.c", "src/*.h"]
outputs = ["util.o"]
tools = ["gcc"]

[packages.main]
command = ["gcc", "-c", "src/main.c", "-o", "main.o"]
inputs = ["src/main.c", "src/*.h"]
outputs = ["main.o"]
tools = [{ name = "gcc", version = ">=9" }]
env = { LC_ALL = "C" }

[packages.app]
shell = "gcc util.o main.o -o app && ./app --check"
deps = ["util", "main"]
outputs = ["app"]
cores = 1
memory_gb = 0.5
"#;

    #[test]
    fn a_c_project_parses_and_orders_dependencies_first() {
        let files = [("src/util.c", "int f(){return 1;}"), ("src/main.c", "int main(){}"), ("src/util.h", "int f();")];
        let (_dir, p) = project(&files, C_PROJECT);
        let p = p.expect("valid");
        assert_eq!(p.order.last().map(String::as_str), Some("app"));
        assert_eq!(p.inputs["util"], vec!["src/util.c", "src/util.h"]);
        assert!(p.manifest.packages["main"].tools[0].accepts(Some("12.2.0")));
        assert!(!p.manifest.packages["main"].tools[0].accepts(Some("8.5")));
        for good in [">=9", "12", "v20", "=12.2.0", "<3.11", "== 1.2.3-rc1", ">= 2"] {
            assert!(is_version_requirement(good), "{good}");
        }
        for bad in [">=>=9", "", ">=", "latest", "9..1", "~1.2", ">=v"] {
            assert!(!is_version_requirement(bad), "{bad}");
        }
    }

    #[test]
    fn an_oversized_manifest_is_refused_before_parsing() {
        let huge = format!("# {}\n{C_PROJECT}", "x".repeat(MAX_MANIFEST_BYTES));
        let e = Manifest::parse("buildnet.toml", &huge).expect_err("too large");
        assert!(e.to_string().contains("at most 262144"), "{e}");
        assert!(Manifest::parse("buildnet.toml", C_PROJECT).is_ok());
    }

    #[test]
    fn errors_name_the_package_and_field() {
        let files = [("a.c", "x")];
        let cases = [
            (
                "[packages.a]\ncommand=[\"cc\"]\ndeps=[\"b\"]\n[packages.b]\ncommand=[\"cc\"]\ndeps=[\"a\"]\n",
                "dependency cycle",
            ),
            ("[packages.a]\ncommand=[\"cc\"]\ndeps=[\"nope\"]\n", "packages.a.deps: unknown package 'nope'"),
            (
                "[packages.a]\ncommand=[\"cc\"]\ninputs=[\"missing.c\"]\n",
                "packages.a.inputs: 'missing.c' matches no file",
            ),
            ("[packages.a]\ncommand=[\"cc\"]\ninputs=[\"[a.c\"]\n", "packages.a.inputs: bad glob"),
            ("[packages.a]\ninputs=[\"a.c\"]\n", "packages.a.command: missing"),
            ("[packages.a]\ncommand=[\"cc\"]\nshell=\"cc\"\n", "packages.a.shell"),
            (
                "[packages.a]\ncommand=[\"cc\"]\noutputs=[\"../escape\"]\n",
                "packages.a.outputs[0]: '../escape' has a '..'",
            ),
            (
                "[packages.a]\ncommand=[\"cc\"]\noutputs=[\"ok\", \"/tmp/x\"]\n",
                "packages.a.outputs[1]: '/tmp/x' is absolute",
            ),
            (
                "[packages.a]\ncommand=[\"cc\"]\noutputs=[\"a//b\"]\n",
                "packages.a.outputs[0]: 'a//b' has an empty component",
            ),
            (
                "[packages.a]\ncommand=[\"cc\"]\ninputs=[\"src/../../*.c\"]\n",
                "packages.a.inputs[0]: 'src/../../*.c' has a '..'",
            ),
            ("[packages.a]\ncommand=[\"cc\"]\ninputs=[\"/etc/*\"]\n", "packages.a.inputs[0]: '/etc/*' is absolute"),
            ("[packages.a]\ncommand=[\"cc\"]\ncores=\"two\"\n", "packages.a.cores"),
            (
                "[packages.a]\ncommand=[\"cc\"]\ntools=[{name=\"gcc\", version=\">=>=9\"}]\n",
                "packages.a.tools[0].version: '>=>=9' is not a version requirement",
            ),
            (
                "[packages.a]\ncommand=[\"cc\"]\nruntimes=[{name=\"node\", version=\"latest\"}]\n",
                "packages.a.runtimes[0].version: 'latest'",
            ),
            ("[packages.a]\ncommand=[\"cc\"]\ncolour=\"red\"\n", "packages.a"),
            ("[packages.a\n", "(document)"),
        ];
        for (manifest, want) in cases {
            let (_dir, result) = project(&files, manifest);
            let e = result.expect_err(manifest).to_string();
            assert!(e.contains(want), "{manifest:?}: got '{e}', want '{want}'");
        }
    }

    #[test]
    fn a_sent_input_list_names_only_paths_inside_the_project() {
        let manifest = Manifest::parse("m", "[packages.a]\ncommand=[\"cc\"]\ninputs=[\"*\"]\n").expect("parses");
        let sent = |files: &[&str]| Project {
            manifest: manifest.clone(),
            order: vec![],
            inputs: BTreeMap::from([("a".to_string(), files.iter().map(|f| f.to_string()).collect())]),
        };
        assert_eq!(sent(&["a.c"]).recheck("m"), Ok(vec!["a".to_string()]));
        // `*` matches '/' and '..' as text: the path check is what refuses these.
        for bad in ["../../../../x", "/tmp/x", "a/./b"] {
            assert!(glob::Pattern::new("*").expect("glob").matches(bad));
            let e = sent(&[bad]).recheck("m").expect_err(bad).to_string();
            assert!(e.starts_with(&format!("m: inputs.a: '{bad}' ")), "{e}");
        }
    }

    #[test]
    fn a_pattern_package_expands_per_file_with_placeholders() {
        let files = [
            ("images/a/b.jpg", "b"),
            ("images/c.jpg", "c"),
            ("images/c.txt", "t"),
            ("images/a/b.h", "h"),
            ("images/c.h", "h"),
        ];
        let manifest = r#"
[packages.thumbs]
for_each = "images/**/*.jpg"
command = ["magick", "{in}", "{name}", "{ext}", "out/{dir}/{stem}.webp"]
inputs = ["{dir}/*.h"]
outputs = ["out/{dir}/{stem}.webp"]

[packages.gallery]
deps = ["thumbs"]
command = ["python3", "make_gallery.py"]
"#;
        let (_dir, result) = project(&files, manifest);
        let p = result.expect("valid");
        let e = &p.manifest.packages["thumbs[images/a/b.jpg]"];
        assert_eq!(
            e.command.clone().expect("command"),
            vec!["magick", "images/a/b.jpg", "b.jpg", "jpg", "out/images/a/b.webp"]
        );
        assert_eq!(e.outputs, vec!["out/images/a/b.webp"]);
        assert_eq!(p.inputs["thumbs[images/a/b.jpg]"], vec!["images/a/b.h", "images/a/b.jpg"]);
        assert_eq!(p.order.last().map(String::as_str), Some("gallery"));
        assert_eq!(p.manifest.packages["gallery"].deps, vec!["thumbs[images/a/b.jpg]", "thumbs[images/c.jpg]"]);
        assert_eq!(p.recheck("m"), Ok(p.order.clone()), "an expanded project passes the node's check");
        // A shell's own braces are not placeholders.
        assert_eq!(placeholders("echo ${home} {print $1} {in}"), vec![(24, 28)]);
        assert_eq!(expansion_of("thumbs[images/a.jpg]"), Some(("thumbs", "images/a.jpg")));
        assert_eq!(tidy("./x.o".into()), "x.o");
    }

    #[test]
    fn pattern_errors_are_one_line_naming_the_table() {
        let files = [("img/a.jpg", "a"), ("img/sub/a.jpg", "b")];
        let cases = [
            (
                "[packages.t]\nfor_each=\"img/*.png\"\ncommand=[\"cc\", \"{in}\"]\n",
                "packages.t.for_each: 'img/*.png' matches no file",
            ),
            (
                "[packages.t]\nfor_each=\"img/*.jpg\"\ncommand=[\"cc\", \"{stme}\"]\n",
                "packages.t.command[1]: unknown placeholder '{stme}'",
            ),
            (
                "[packages.t]\nfor_each=\"img/**/*.jpg\"\ncommand=[\"cc\"]\noutputs=[\"out/{stem}.o\"]\n",
                "packages.t.outputs: 'out/a.o' would be written by both 'img/a.jpg' and 'img/sub/a.jpg'",
            ),
            ("[packages.t]\nfor_each=\"../*.jpg\"\ncommand=[\"cc\"]\n", "packages.t.for_each: '../*.jpg' has a '..'"),
            (
                "[packages.t]\nfor_each=\"img/*.jpg\"\ncommand=[\"cc\"]\ninputs=[\"{dir}/{stem}.h\"]\n",
                "packages.t[img/a.jpg].inputs: 'img/a.h' matches no file",
            ),
        ];
        for (manifest, want) in cases {
            let (_dir, result) = project(&files, manifest);
            let e = result.expect_err(manifest).to_string();
            assert!(e.contains(want), "{manifest:?}: got '{e}', want '{want}'");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        // A hand-written expansion name is not a package name.
        let (_dir, result) = project(&files, "[packages.\"t[img/a.jpg]\"]\ncommand=[\"cc\"]\n");
        assert!(result.expect_err("bracketed").to_string().contains("package names use"));
    }

    #[test]
    fn version_requirements() {
        assert!(version_matches(">=20", "20.20.2"));
        assert!(!version_matches(">=20", "18.1.0"));
        assert!(version_matches("<3.12", "3.11.7"));
        assert!(version_matches("12", "12.2.0"));
        assert!(!version_matches("12", "1.2"));
        assert!(version_matches("=1.95", "1.95.0"));
        assert!(version_matches(">1.0", "v1.0.1"));
    }
}
