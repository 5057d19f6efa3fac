//! `buildnet.toml`: the work of a project as packages with commands, dependencies, inputs and
//! outputs. Parsed with field paths and checked (cycles, unknown dependencies, inputs that match
//! nothing, bad globs, outputs outside the project) before anything runs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

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

impl Manifest {
    pub fn parse(file: &str, text: &str) -> Result<Manifest, ProjectError> {
        let de =
            toml::Deserializer::parse(text).map_err(|e| err(file, "(document)".into(), e.message().to_string()))?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            err(file, if path == "." { "(document)".into() } else { path }, e.into_inner().message().to_string())
        })
    }

    /// Checks the manifest against the project directory and orders the packages.
    pub fn check(self, file: &str, root: &Path) -> Result<Project, ProjectError> {
        let order = self.check_structure(file)?;
        let mut inputs = BTreeMap::new();
        for (name, p) in &self.packages {
            let field = |f: &str| format!("packages.{name}.{f}");
            let mut matched = BTreeSet::new();
            for pattern in &p.inputs {
                // Expanded without following a link (`inputs::expand`), as the CLI and the node share it.
                let found = super::inputs::expand(root, pattern).map_err(|m| err(file, field("inputs"), m))?;
                if found.is_empty() {
                    return Err(err(
                        file,
                        field("inputs"),
                        format!("'{pattern}' matches no file in {}", root.display()),
                    ));
                }
                matched.extend(found);
            }
            inputs.insert(name.clone(), matched.into_iter().collect());
        }
        Ok(Project { manifest: self, order, inputs })
    }

    /// Every check that needs no files; returns the packages in dependency order.
    pub fn check_structure(&self, file: &str) -> Result<Vec<String>, ProjectError> {
        if self.packages.is_empty() {
            return Err(err(file, "packages".into(), "no packages: add a [packages.<name>] table"));
        }
        for (name, p) in &self.packages {
            let field = |f: &str| format!("packages.{name}.{f}");
            if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(err(file, format!("packages.{name}"), "package names use letters, digits, - and _"));
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
    let path: PathBuf = root.join(MANIFEST);
    let file = path.display().to_string();
    let text =
        std::fs::read_to_string(&path).map_err(|e| err(&file, "(file)".into(), format!("cannot be read: {e}")))?;
    Manifest::parse(&file, &text)?.check(&file, root)
}

impl Project {
    /// Re-checks a project a client sent: the manifest's structure, and input lists that only
    /// name files matching the package's globs.
    pub fn recheck(&self, file: &str) -> Result<Vec<String>, ProjectError> {
        let order = self.manifest.check_structure(file)?;
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
