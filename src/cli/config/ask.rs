//! `buildnet config create` on a terminal: shows what each node offers, offers a template to
//! start from, asks for every field (again after a bad answer, never aborting the session),
//! then shows the estimate and asks before saving.

use std::io::{BufRead, Write};
use std::path::Path;

use serde::Deserialize;
use serde_json::json;

use buildnet_actors::builds::config::{BuildConfiguration, ConfigTemplate, LOCAL};
use buildnet_actors::builds::estimate::BuildEstimation;
use buildnet_actors::builds::runner::BuildRequest;
use buildnet_actors::builds::{inputs, ConfigSummary};
use buildnet_actors::pool::{resolve_node, PoolView};

use super::{requirement, Configs, Created, Templates};
use crate::cli::{CliError, Ctx};

const GIB: f64 = (1u64 << 30) as f64;

/// One line from the terminal; the end of input ends the session with one line.
fn line(prompt: &str, default: &str) -> Result<String, CliError> {
    if default.is_empty() {
        eprint!("{prompt}: ");
    } else {
        eprint!("{prompt} [{default}]: ");
    }
    let _ = std::io::stderr().flush();
    let mut text = String::new();
    let n = std::io::stdin().lock().read_line(&mut text).map_err(|e| CliError::Other(e.to_string()))?;
    if n == 0 {
        return Err(CliError::Usage("config create: input ended before the configuration was complete".into()));
    }
    let text = text.trim();
    Ok(if text.is_empty() { default.to_string() } else { text.to_string() })
}

/// Asks until `parse` accepts the answer, saying what was wrong each time.
fn ask<T>(prompt: &str, default: &str, parse: impl Fn(&str) -> Result<T, String>) -> Result<T, CliError> {
    loop {
        match parse(&line(prompt, default)?) {
            Ok(v) => return Ok(v),
            Err(e) => eprintln!("  {e} — try again"),
        }
    }
}

fn list(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

fn gb(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / GIB)
}

/// What each node offers, one line each.
fn show_pool(pool: &PoolView) {
    eprintln!("The pool:");
    for n in &pool.nodes {
        let volumes = pool.volumes.get(n.id.as_str()).cloned().unwrap_or_default();
        let state = if n.usable() { String::new() } else { format!(" ({})", n.status.as_str()) };
        eprintln!(
            "  {} ({}){state}: {} of {} cores free, {} of {} memory free; volumes: {}; tools: {}; runtimes: {}",
            n.name,
            n.id,
            n.cores_available,
            n.cores,
            gb(n.memory_available_bytes),
            gb(n.memory_bytes),
            if volumes.is_empty() { "none configured".into() } else { volumes.join(", ") },
            if n.tools.is_empty() { "none".into() } else { n.tools.join(", ") },
            if n.runtimes.is_empty() { "none".into() } else { n.runtimes.join(", ") },
        );
    }
}

/// `beta:2`, `local`, `3f9a…:1` → (node id or `local`, cores; 0 = what it offers).
fn node_choice(pool: &PoolView, text: &str) -> Result<(String, u32), String> {
    let (key, cores) = text.split_once(':').unwrap_or((text, "0"));
    let cores: u32 = cores.trim().parse().map_err(|_| format!("{text}: the cores after ':' must be a number"))?;
    let key = key.trim();
    if key == LOCAL {
        return Ok((LOCAL.into(), cores));
    }
    let id = resolve_node(&pool.nodes, key).map_err(|e| e.to_string())?;
    if let Some(n) = pool.nodes.iter().find(|n| n.id == id) {
        if u64::from(cores) > n.cores {
            return Err(format!("{}: asks {cores} cores; {} offers {}", text, n.name, n.cores));
        }
    }
    Ok((id.to_string(), cores))
}

/// Names the pool has for tools or runtimes; each asked one must be among them.
fn known(kind: &str, pool_names: &[String], text: &str) -> Result<Vec<String>, String> {
    let asked = list(text);
    for a in &asked {
        let name = a.split(['>', '<', '=']).next().unwrap_or(a).trim();
        if !pool_names.iter().any(|n| n == name) {
            return Err(format!("no node has the {kind} '{name}' (the pool has: {})", pool_names.join(", ")));
        }
    }
    Ok(asked)
}

/// The answers so far; they are the defaults when asking again.
struct Answers {
    cfg: BuildConfiguration,
}

impl Answers {
    fn nodes_text(&self) -> String {
        self.cfg
            .resources
            .cpu
            .node_allocations
            .iter()
            .flatten()
            .map(|a| format!("{}:{}", a.node_id, a.cores))
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[derive(Deserialize)]
struct ProjectRow {
    name: String,
}

#[derive(Deserialize)]
struct Projects {
    projects: Vec<ProjectRow>,
}

/// The estimate for this configuration: of the project in the current directory, else of the
/// first registered project, else of the project last built on the node.
async fn estimate(ctx: &Ctx, cfg: &BuildConfiguration) -> Result<(String, BuildEstimation), CliError> {
    let here = Path::new(".");
    if here.join("buildnet.toml").is_file() {
        if let Ok(snap) = inputs::snapshot(here, None, None) {
            let request = BuildRequest {
                project: snap.project,
                files: snap.files,
                force: true,
                local_only: false,
                config: None,
                template: None,
                inline_config: Some(cfg.clone()),
            };
            let body = serde_json::to_value(&request).map_err(|e| CliError::Other(e.to_string()))?;
            return Ok((
                "the project in this directory".into(),
                ctx.client.post("/api/build/estimate", Some(body)).await?,
            ));
        }
    }
    let projects: Projects = ctx.client.get("/api/projects").await.unwrap_or(Projects { projects: vec![] });
    if let Some(p) = projects.projects.first() {
        let body = json!({ "project": p.name, "config": cfg, "force": true });
        return Ok((format!("project '{}'", p.name), ctx.client.post("/api/build/estimate", Some(body)).await?));
    }
    let body = serde_json::to_value(cfg).map_err(|e| CliError::Other(e.to_string()))?;
    Ok(("the project last built on the node".into(), ctx.client.post("/api/build/estimate", Some(body)).await?))
}

pub async fn create(ctx: &Ctx, description: Option<String>) -> Result<(), CliError> {
    let pool: PoolView = ctx.client.get("/api/pool").await?;
    let templates: Templates = ctx.client.get("/api/templates").await?;
    let existing: Configs = ctx.client.get("/api/configs").await?;
    show_pool(&pool);
    let agg = &pool.aggregate;
    let tools: Vec<String> = agg.tools.keys().cloned().collect();
    let runtimes: Vec<String> = agg.runtimes.keys().cloned().collect();

    eprintln!("Templates:");
    for (i, t) in templates.templates.iter().enumerate() {
        eprintln!("  {}. {} ({}) — {}", i + 1, t.name, t.id, t.description);
    }
    let template: Option<&ConfigTemplate> = ask("Start from a template (number or id; empty = none)", "", |text| {
        if text.is_empty() {
            return Ok(None);
        }
        let by_number =
            text.parse::<usize>().ok().and_then(|i| i.checked_sub(1)).and_then(|i| templates.templates.get(i));
        by_number
            .or_else(|| templates.templates.iter().find(|t| t.id == text || t.name == text))
            .map(Some)
            .ok_or_else(|| format!("no template '{text}'"))
    })?;
    let start = match template {
        Some(t) => t
            .instantiate("", &Default::default())
            .map_err(|p| CliError::Other(format!("{}: {}", p.field, p.message)))?,
        None => serde_json::from_value(json!({ "name": "", "resources": {} }))
            .map_err(|e| CliError::Other(e.to_string()))?,
    };
    let mut answers = Answers { cfg: start };
    answers.cfg.description = description.or(answers.cfg.description.take());

    loop {
        let taken = |name: &str| existing.configs.iter().any(|c: &ConfigSummary| c.name == name);
        let current = answers.cfg.name.clone();
        answers.cfg.name = ask("Name", &current, |t| {
            if t.is_empty() || t.len() > 64 {
                Err("a name has 1 to 64 characters".into())
            } else if taken(t) && t != current {
                Err(format!("a configuration named '{t}' exists"))
            } else {
                Ok(t.to_string())
            }
        })?;
        let r = &mut answers.cfg.resources;
        r.cpu.cores = ask("Cores in all (0 = all the pool offers)", &r.cpu.cores.to_string(), |t| {
            let n: u32 = t.parse().map_err(|_| format!("'{t}' is not a number of cores"))?;
            if u64::from(n) > agg.total_cpu_cores {
                return Err(format!("the pool offers {} cores", agg.total_cpu_cores));
            }
            Ok(n)
        })?;
        r.memory.gb = ask("Memory in GB (0 = what is available)", &r.memory.gb.to_string(), |t| {
            let n: f64 = t.parse().map_err(|_| format!("'{t}' is not a number of GB"))?;
            if !n.is_finite() || n < 0.0 {
                return Err("memory must be 0 or more".into());
            }
            if n * GIB > agg.total_memory_bytes as f64 {
                return Err(format!("the pool offers {}", gb(agg.total_memory_bytes)));
            }
            Ok(n)
        })?;
        let nodes_default = answers.nodes_text();
        let nodes = ask("Nodes (name[:cores] or local, comma-separated; empty = any)", &nodes_default, |t| {
            list(t).iter().map(|n| node_choice(&pool, n)).collect::<Result<Vec<_>, _>>()
        })?;
        let r = &mut answers.cfg.resources;
        r.cpu.node_allocations = (!nodes.is_empty()).then(|| {
            nodes
                .iter()
                .map(|(id, cores)| serde_json::from_value(json!({ "node_id": id, "cores": cores })))
                .collect::<Result<Vec<_>, _>>()
                .unwrap_or_default()
        });

        let volumes: Vec<(String, String, String)> = pool
            .nodes
            .iter()
            .flat_map(|n| {
                pool.volumes
                    .get(n.id.as_str())
                    .into_iter()
                    .flatten()
                    .map(|p| (n.id.to_string(), n.name.clone(), p.clone()))
            })
            .collect();
        if volumes.is_empty() {
            eprintln!("Storage: no node has a storage volume configured; sandboxes go under each data dir.");
        } else {
            eprintln!("Storage volumes:");
            for (i, (_, name, path)) in volumes.iter().enumerate() {
                eprintln!("  {}. {name}:{path}", i + 1);
            }
            let chosen = ask("Storage for sandboxes (numbers, comma-separated; empty = the data dirs)", "", |t| {
                list(t)
                    .iter()
                    .map(|n| {
                        n.parse::<usize>()
                            .ok()
                            .and_then(|i| i.checked_sub(1))
                            .and_then(|i| volumes.get(i))
                            .ok_or_else(|| format!("'{n}' is not one of the numbers above"))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })?;
            if !chosen.is_empty() {
                answers.cfg.resources.storage.volumes = chosen
                    .iter()
                    .filter_map(|(id, _, path)| serde_json::from_value(json!({ "node_id": id, "path": path })).ok())
                    .collect();
            }
        }
        let tools_default =
            answers.cfg.resources.tools.iter().map(|t| t.name().to_string()).collect::<Vec<_>>().join(",");
        let wanted_tools =
            ask("Tools (comma-separated, e.g. gcc>=12; empty = none)", &tools_default, |t| known("tool", &tools, t))?;
        let runtimes_default =
            answers.cfg.resources.runtimes.iter().map(|t| t.name().to_string()).collect::<Vec<_>>().join(",");
        let wanted_runtimes =
            ask("Runtimes (comma-separated, e.g. python>=3.8; empty = none)", &runtimes_default, |t| {
                known("runtime", &runtimes, t)
            })?;
        let r = &mut answers.cfg.resources;
        r.tools = wanted_tools.iter().filter_map(|t| serde_json::from_value(requirement(t)).ok()).collect();
        r.runtimes = wanted_runtimes.iter().filter_map(|t| serde_json::from_value(requirement(t)).ok()).collect();

        match estimate(ctx, &answers.cfg).await {
            Ok((what, e)) => {
                eprintln!("Estimate for {what}, built from scratch with this configuration:");
                for l in e.format_human().lines() {
                    eprintln!("  {l}");
                }
            }
            Err(e) => eprintln!("No estimate: {e}"),
        }
        let save = ask(&format!("Create configuration '{}'? [Y/n]", answers.cfg.name), "y", |t| {
            match t.to_lowercase().as_str() {
                "y" | "yes" => Ok(true),
                "n" | "no" => Ok(false),
                _ => Err("answer y or n".into()),
            }
        })?;
        if !save {
            let again = ask("Change something? [y/N]", "n", |t| match t.to_lowercase().as_str() {
                "y" | "yes" => Ok(true),
                "n" | "no" => Ok(false),
                _ => Err("answer y or n".into()),
            })?;
            if again {
                continue;
            }
            println!("Nothing created.");
            return Ok(());
        }
        let body = serde_json::to_value(&answers.cfg).map_err(|e| CliError::Other(e.to_string()))?;
        match ctx.client.post::<Created>("/api/configs", Some(body)).await {
            Ok(created) => {
                let name = &answers.cfg.name;
                println!(
                    "Created configuration '{name}' ({}). Build with it: buildnet build --config '{name}'",
                    created.id
                );
                return Ok(());
            }
            // The node judges against the pool as it is now; say why and ask again.
            Err(CliError::Api { status: 400 | 409, message, .. }) => {
                eprintln!("  the node refuses it: {message} — change what it names");
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_split_on_commas() {
        assert_eq!(list(" gcc, make ,,"), vec!["gcc".to_string(), "make".to_string()]);
        assert!(known("tool", &["gcc".into()], "gcc>=9").is_ok());
        assert!(known("tool", &["gcc".into()], "clang").is_err());
    }
}
