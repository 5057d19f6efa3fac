//! Projects registered on this node: a name for a directory holding `buildnet.toml`, so the
//! pages and the API can build it by name. The node reads the manifest and collects the inputs
//! into its own CAS itself (`inputs::snapshot`, the collection the CLI uses too), keeping the
//! last snapshot of each project so an unchanged project is not read again: only its manifest,
//! its directory listing and one `lstat` per input.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::config::{BuildConfiguration, Problem};
use super::inputs::{self, Snapshot};
use super::project::{self, Manifest, Project};
use super::runner::BuildRequest;
use super::{BuildError, Builds};
use crate::wire;

/// The last snapshot of each project, by name, with the directory it was taken from.
pub type Snapshots = Arc<Mutex<HashMap<String, (PathBuf, Arc<Snapshot>)>>>;

/// A registered project as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProjectInfo {
    pub name: String,
    /// Absolute path of the project directory on this node.
    pub path: String,
    /// Number of packages in its manifest (0 when the manifest no longer parses).
    pub packages: usize,
    /// Tools the packages require, by name, sorted.
    pub tools: Vec<String>,
    /// Runtimes the packages require, by name, sorted.
    pub runtimes: Vec<String>,
    pub created_at_ms: u64,
    pub created_by: String,
    /// Packages in dependency order (`GET /api/projects/{name}` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_names: Option<Vec<String>>,
    /// Why the manifest cannot be read now, if it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /api/build` (and `/api/build/estimate`) by project name.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectBuild {
    /// A registered project's name.
    pub project: String,
    /// A saved configuration's name or id, or a configuration object (plan Appendix B), checked
    /// like a saved one.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub config: Option<serde_json::Value>,
    /// A template's id or name to take the configuration from instead.
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub local_only: bool,
    /// Build only these packages and what they depend on.
    #[serde(default)]
    pub packages: Option<Vec<String>>,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> BuildError {
    BuildError::Invalid { field: field.into(), message: message.into() }
}

/// Project names go into URLs: 1 to 64 letters, digits, `.`, `-` and `_`, not starting with
/// `.` or `-`.
pub fn check_project_name(name: &str) -> Result<(), String> {
    let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if name.is_empty() || name.len() > 64 || !ok_chars || name.starts_with(['.', '-']) {
        return Err(format!(
            "'{}' is not a project name: use 1 to 64 letters, digits, '.', '-' and '_', not starting with '.' or '-'",
            name.escape_debug()
        ));
    }
    Ok(())
}

/// Splits `config` of a [`ProjectBuild`] into a saved configuration's name or an inline one.
fn config_choice(
    config: Option<serde_json::Value>,
) -> Result<(Option<String>, Option<BuildConfiguration>), BuildError> {
    match config {
        None | Some(serde_json::Value::Null) => Ok((None, None)),
        Some(serde_json::Value::String(name)) => Ok((Some(name), None)),
        Some(serde_json::Value::Object(mut doc)) => {
            doc.entry("name").or_insert_with(|| "inline".into());
            let cfg: BuildConfiguration =
                serde_path_to_error::deserialize(serde_json::Value::Object(doc)).map_err(|e| {
                    let field = e.path().to_string();
                    BuildError::InvalidConfig(vec![Problem { field, message: e.into_inner().to_string() }])
                })?;
            Ok((None, Some(cfg)))
        }
        Some(_) => Err(invalid("config", "expected a configuration's name or id, or a configuration object")),
    }
}

/// The project cut down to `names` and everything they depend on.
fn select(project: &Project, names: &[String]) -> Result<Project, BuildError> {
    let mut keep = BTreeSet::new();
    let mut stack = Vec::new();
    for (i, name) in names.iter().enumerate() {
        // A pattern package's name selects every expansion.
        let expansions: Vec<&String> = project
            .manifest
            .packages
            .keys()
            .filter(|n| project::expansion_of(n).is_some_and(|(table, _)| table == name))
            .collect();
        if !expansions.is_empty() {
            stack.extend(expansions.into_iter().cloned());
            continue;
        }
        if !project.manifest.packages.contains_key(name) {
            return Err(invalid(
                format!("packages[{i}]"),
                format!("no package '{}' in the project", name.escape_debug()),
            ));
        }
        stack.push(name.clone());
    }
    if stack.is_empty() {
        return Err(invalid("packages", "name at least one package, or leave packages out to build them all"));
    }
    while let Some(name) = stack.pop() {
        if let Some(p) = project.manifest.packages.get(&name) {
            if keep.insert(name) {
                stack.extend(p.deps.iter().cloned());
            }
        }
    }
    let mut cut = project.clone();
    cut.manifest.packages.retain(|n, _| keep.contains(n));
    cut.inputs.retain(|n, _| keep.contains(n));
    cut.order.retain(|n| keep.contains(n));
    Ok(cut)
}

/// What the manifest says now, for a listing: never an error, a broken manifest is shown as one.
fn describe(name: String, path: String, created_at_ms: u64, created_by: String, detail: bool) -> ProjectInfo {
    let mut info = ProjectInfo {
        name,
        path,
        packages: 0,
        tools: vec![],
        runtimes: vec![],
        created_at_ms,
        created_by,
        package_names: None,
        error: None,
    };
    let file = Path::new(&info.path).join(project::MANIFEST);
    let read = project::read_manifest(Path::new(&info.path))
        .map_err(|e| format!("{}: {e}", file.display()))
        .and_then(|text| Manifest::parse(&file.display().to_string(), &text).map_err(|e| e.to_string()))
        .and_then(|m| {
            m.check_structure(&file.display().to_string()).map(|order| (m, order)).map_err(|e| e.to_string())
        });
    match read {
        Ok((m, order)) => {
            let names = |f: fn(&project::Package) -> &Vec<project::Requirement>| {
                m.packages
                    .values()
                    .flat_map(f)
                    .map(|r| r.name().to_string())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect()
            };
            info.packages = m.packages.len();
            info.tools = names(|p| &p.tools);
            info.runtimes = names(|p| &p.runtimes);
            info.package_names = detail.then_some(order);
        }
        Err(e) => info.error = Some(e),
    }
    info
}

type Row = (String, String, i64, String);

impl Builds {
    /// Registers the project directory at `path` (absolute, on this node) under `name`, by
    /// default the directory's name. Its manifest must parse and its inputs match files.
    pub async fn add_project(&self, path: &str, name: Option<&str>, by: &str) -> Result<ProjectInfo, BuildError> {
        if path.trim().is_empty() {
            return Err(invalid("path", "missing: give the absolute path of a directory holding buildnet.toml"));
        }
        if !Path::new(path).is_absolute() {
            return Err(invalid(
                "path",
                format!("'{path}' is not absolute; give the directory's full path on the node"),
            ));
        }
        let data_dir = self.data_dir.clone();
        let given = PathBuf::from(path);
        let root = actix_rt::task::spawn_blocking(move || check_root(&given, &data_dir))
            .await
            .map_err(|_| BuildError::Unavailable)??;
        let name = match name.map(str::trim).filter(|n| !n.is_empty()) {
            Some(n) => n.to_string(),
            None => root.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string(),
        };
        check_project_name(&name).map_err(|m| invalid("name", m))?;
        let text = root.to_string_lossy().to_string();
        let (row_name, row_path, now, row_by) = (name.clone(), text.clone(), wire::now_ms() as i64, by.to_string());
        let inserted = self
            .store
            .run(move |c| {
                Ok(c.execute(
                    "INSERT OR IGNORE INTO projects (name, path, created_at, created_by) VALUES (?1, ?2, ?3, ?4)",
                    rusqlite::params![row_name, row_path, now, row_by],
                )?)
            })
            .await?;
        if inserted == 0 {
            return Err(BuildError::ProjectExists(name));
        }
        if let Ok(mut cache) = self.snapshots.lock() {
            cache.remove(&name);
        }
        Ok(describe(name, text, now as u64, by.to_string(), false))
    }

    async fn project_rows(&self, name: Option<String>) -> Result<Vec<Row>, BuildError> {
        Ok(self
            .store
            .run(move |c| {
                let mut stmt = c.prepare(
                    "SELECT name, path, created_at, created_by FROM projects WHERE ?1 IS NULL OR name = ?1 ORDER BY name",
                )?;
                let rows = stmt.query_map([name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await?)
    }

    /// Every registered project with what its manifest says now.
    pub async fn projects(&self) -> Result<Vec<ProjectInfo>, BuildError> {
        let rows = self.project_rows(None).await?;
        actix_rt::task::spawn_blocking(move || {
            rows.into_iter().map(|(n, p, at, by)| describe(n, p, at.max(0) as u64, by, false)).collect()
        })
        .await
        .map_err(|_| BuildError::Unavailable)
    }

    /// One project, with its packages' names.
    pub async fn project(&self, name: &str) -> Result<ProjectInfo, BuildError> {
        let (n, p, at, by) = self.project_path(name).await?;
        actix_rt::task::spawn_blocking(move || describe(n, p, at.max(0) as u64, by, true))
            .await
            .map_err(|_| BuildError::Unavailable)
    }

    async fn project_path(&self, name: &str) -> Result<Row, BuildError> {
        self.project_rows(Some(name.to_string()))
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| BuildError::NoProject(name.to_string()))
    }

    /// Forgets a project (its directory is left alone).
    pub async fn remove_project(&self, name: &str) -> Result<(), BuildError> {
        let gone = name.to_string();
        let n = self.store.run(move |c| Ok(c.execute("DELETE FROM projects WHERE name = ?1", [gone])?)).await?;
        if n == 0 {
            return Err(BuildError::NoProject(name.to_string()));
        }
        if let Ok(mut cache) = self.snapshots.lock() {
            cache.remove(name);
        }
        Ok(())
    }

    /// The project's inputs, read now into this node's CAS (unchanged files since the last
    /// snapshot are not read again).
    pub async fn snapshot(&self, name: &str) -> Result<Arc<Snapshot>, BuildError> {
        let (_, path, _, _) = self.project_path(name).await?;
        let root = PathBuf::from(&path);
        let previous =
            self.snapshots.lock().ok().and_then(|c| c.get(name).filter(|(p, _)| *p == root).map(|(_, s)| s.clone()));
        let (cas, dir) = (self.cas.clone(), root.clone());
        let snapshot = actix_rt::task::spawn_blocking(move || inputs::snapshot(&dir, Some(&cas), previous.as_deref()))
            .await
            .map_err(|_| BuildError::Unavailable)??;
        let snapshot = Arc::new(snapshot);
        if let Ok(mut cache) = self.snapshots.lock() {
            cache.insert(name.to_string(), (root, snapshot.clone()));
        }
        Ok(snapshot)
    }

    /// The build request for a build (or an estimate) of a registered project.
    pub async fn project_request(&self, b: ProjectBuild) -> Result<BuildRequest, BuildError> {
        let (config, inline_config) = config_choice(b.config)?;
        if (config.is_some() || inline_config.is_some()) && b.template.is_some() {
            return Err(invalid("template", "give a config or a template, not both"));
        }
        let snapshot = self.snapshot(&b.project).await?;
        let project = match &b.packages {
            Some(names) => select(&snapshot.project, names)?,
            None => snapshot.project.clone(),
        };
        let wanted: BTreeSet<&String> = project.inputs.values().flatten().collect();
        let files: BTreeMap<String, wire::FileRef> =
            snapshot.files.iter().filter(|(p, _)| wanted.contains(p)).map(|(p, f)| (p.clone(), f.clone())).collect();
        Ok(BuildRequest {
            project,
            files,
            force: b.force,
            local_only: b.local_only,
            config,
            template: b.template,
            inline_config,
        })
    }
}

/// The canonical project directory: it exists, holds a manifest that parses and whose inputs
/// match files, and neither lies in nor contains the node's data dir (its keys and store).
fn check_root(given: &Path, data_dir: &Path) -> Result<PathBuf, BuildError> {
    let shown = given.display();
    let root =
        given.canonicalize().map_err(|e| invalid("path", format!("'{shown}' cannot be used on this node: {e}")))?;
    if !root.is_dir() {
        return Err(invalid("path", format!("'{shown}' is not a directory")));
    }
    if let Ok(data) = data_dir.canonicalize() {
        if root.starts_with(&data) || data.starts_with(&root) {
            return Err(invalid(
                "path",
                format!("'{shown}' holds or lies inside the node's data dir; projects must live elsewhere"),
            ));
        }
    }
    if std::fs::symlink_metadata(root.join(project::MANIFEST)).is_err() {
        return Err(invalid(
            "path",
            format!("'{shown}' has no {}: a project declares its work there", project::MANIFEST),
        ));
    }
    inputs::load(&root)?;
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_inline_configs() {
        for ok in ["c-hello", "app_2", "v1.2"] {
            assert_eq!(check_project_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".hidden", "-x", "a/b", "a b", "..", &"x".repeat(65)] {
            assert!(check_project_name(bad).is_err(), "{bad}");
        }
        let (name, inline) = config_choice(Some(serde_json::json!("fast"))).expect("a name");
        assert_eq!((name.as_deref(), inline), (Some("fast"), None));
        let e = config_choice(Some(serde_json::json!({"resources": {"cpu": {"cores": "two"}}}))).expect_err("bad");
        assert!(e.to_string().starts_with("resources.cpu.cores: invalid type"), "{e}");
        let (_, inline) =
            config_choice(Some(serde_json::json!({"resources": {"cpu": {"cores": 2}}}))).expect("an object");
        assert_eq!(inline.map(|c| (c.name, c.resources.cpu.cores)), Some(("inline".to_string(), 2)));
        assert!(config_choice(Some(serde_json::json!(3))).is_err());
    }

    #[test]
    fn selecting_packages_keeps_their_dependencies() {
        let manifest = Manifest::parse(
            "m",
            "[packages.a]\ncommand=[\"x\"]\n[packages.b]\ncommand=[\"x\"]\ndeps=[\"a\"]\n[packages.c]\ncommand=[\"x\"]\n",
        )
        .expect("parses");
        let order = manifest.check_structure("m").expect("ok");
        let p = Project { manifest, order, inputs: BTreeMap::new() };
        let cut = select(&p, &["b".to_string()]).expect("b");
        assert_eq!(cut.order, vec!["a", "b"]);
        assert!(!cut.manifest.packages.contains_key("c"));
        let e = select(&p, &["b".to_string(), "zz".to_string()]).expect_err("unknown");
        assert_eq!(e.to_string(), "packages[1]: no package 'zz' in the project");
    }
}
