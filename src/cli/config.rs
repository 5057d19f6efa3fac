//! `buildnet config list|show|create|edit|delete|export|import` and
//! `buildnet template list|use|save` (plan §7.1).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Subcommand;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use buildnet_actors::builds::config::{BuildConfiguration, ConfigTemplate};
use buildnet_actors::builds::ConfigSummary;

use super::output::{print_facts, time, Table};
use super::{CliError, Ctx};

mod ask;

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// List saved configurations
    List,
    /// Show one configuration
    Show { name: String },
    /// Create a configuration: asks on a terminal, or takes flags
    Create {
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Cores in all (0 = all the pool offers)
        #[arg(long)]
        cores: Option<u32>,
        /// Memory in GB (0 = what is available)
        #[arg(long)]
        memory_gb: Option<f64>,
        /// Confine to a node: NAME[:CORES], NODE_ID[:CORES] or local[:CORES]; repeatable
        #[arg(long = "node")]
        nodes: Vec<String>,
        /// A tool the build needs: NAME or NAME>=VERSION; repeatable
        #[arg(long = "tool")]
        tools: Vec<String>,
        /// A runtime the build needs: NAME or NAME>=VERSION; repeatable
        #[arg(long = "runtime")]
        runtimes: Vec<String>,
    },
    /// Change fields: --set resources.cpu.cores=4 (values are JSON or text)
    Edit {
        name: String,
        #[arg(long = "set", required = true)]
        set: Vec<String>,
    },
    /// Delete a configuration
    Delete { name: String },
    /// Write a configuration to a JSON file
    Export { name: String, file: PathBuf },
    /// Create a configuration from a JSON file (plan Appendix B format)
    Import {
        file: PathBuf,
        /// Save it under this name (and a new id) instead of the file's
        #[arg(long)]
        name: Option<String>,
        /// Replace the configuration of the same name, if there is one
        #[arg(long)]
        replace: bool,
    },
}

#[derive(Subcommand)]
pub enum TemplateCommand {
    /// List system and custom templates
    List,
    /// Create a configuration from a template
    Use {
        template: String,
        /// Name of the new configuration
        #[arg(long)]
        name: String,
        /// Template variable: NAME=VALUE; repeatable
        #[arg(long = "set")]
        set: Vec<String>,
    },
    /// Save a configuration as a custom template
    Save {
        config: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        description: Option<String>,
    },
}

#[derive(Serialize, Deserialize)]
struct Configs {
    configs: Vec<ConfigSummary>,
}

#[derive(Serialize, Deserialize)]
struct Templates {
    templates: Vec<ConfigTemplate>,
}

#[derive(Serialize, Deserialize)]
struct Created {
    id: String,
}

/// `gcc>=12` → {"name": "gcc", "version": ">=12"}.
fn requirement(text: &str) -> Value {
    match text.find(['>', '<', '=']) {
        Some(i) => json!({ "name": text[..i].trim(), "version": text[i..].trim() }),
        None => json!({ "name": text.trim() }),
    }
}

/// Sets a dotted path in a JSON document, creating objects on the way.
fn set_path(doc: &mut Value, path: &str, value: Value) -> Result<(), CliError> {
    let mut cur = doc;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            return Err(CliError::Usage(format!("--set {path}: empty path segment")));
        }
        let obj = cur.as_object_mut().ok_or_else(|| {
            CliError::Usage(format!("--set {path}: '{part}' is inside a value that is not an object"))
        })?;
        if i + 1 == parts.len() {
            obj.insert(part.to_string(), value);
            return Ok(());
        }
        cur = obj.entry(part.to_string()).or_insert_with(|| json!({}));
    }
    Ok(())
}

pub async fn run(ctx: &Ctx, cmd: ConfigCommand) -> Result<(), CliError> {
    match cmd {
        ConfigCommand::List => {
            let list: Configs = ctx.client.get("/api/configs").await?;
            if !ctx.printed_as_document(&list) {
                let mut t = Table::new(&["name", "id", "cores", "memory", "nodes", "updated"]);
                for c in &list.configs {
                    let cores = if c.cores == 0 { "all".into() } else { c.cores.to_string() };
                    let mem = if c.memory_gb == 0.0 { "available".into() } else { format!("{} GB", c.memory_gb) };
                    let nodes = if c.nodes.is_empty() { "any".into() } else { c.nodes.join(", ") };
                    t.row(vec![c.name.clone(), c.id.clone(), cores, mem, nodes, time(c.updated_at_ms)]);
                }
                t.print();
            }
        }
        ConfigCommand::Show { name } => {
            let cfg: BuildConfiguration = ctx.client.get(&format!("/api/configs/{name}")).await?;
            if !ctx.printed_as_document(&cfg) {
                let r = &cfg.resources;
                print_facts(&[
                    ("Name", format!("{} ({})", cfg.name, cfg.id.clone().unwrap_or_default())),
                    (
                        "Cores",
                        match r.cpu.cores_at_most() {
                            0 if r.cpu.node_allocations.as_ref().is_some_and(|a| !a.is_empty()) => {
                                "all the nodes below offer".into()
                            }
                            0 => "all the pool offers".into(),
                            n => n.to_string(),
                        },
                    ),
                    (
                        "Nodes",
                        r.cpu
                            .node_allocations
                            .iter()
                            .flatten()
                            .map(|a| format!("{}:{}", a.node_id, a.cores))
                            .collect::<Vec<_>>()
                            .join(", "),
                    ),
                    (
                        "Memory",
                        if r.memory.gb == 0.0 { "what is available".into() } else { format!("{} GB", r.memory.gb) },
                    ),
                    ("Tools", r.tools.iter().map(|t| t.name().to_string()).collect::<Vec<_>>().join(", ")),
                    (
                        "Runtimes",
                        r.runtimes
                            .iter()
                            .map(|t| format!("{} {}", t.name(), t.version().unwrap_or("")))
                            .collect::<Vec<_>>()
                            .join(", "),
                    ),
                ]);
            }
        }
        ConfigCommand::Create { name, description, cores, memory_gb, nodes, tools, runtimes } => {
            let Some(name) = name else {
                if std::io::stdin().is_terminal() {
                    return ask::create(ctx, description).await;
                }
                return Err(CliError::Usage("config create needs --name (or a terminal to ask on)".into()));
            };
            let (cores, memory_gb) = (cores.unwrap_or(0), memory_gb.unwrap_or(0.0));
            // Node names are sent as they are: the node resolves them to ids (one resolver).
            let allocations: Vec<Value> = nodes
                .iter()
                .map(|n| {
                    let (id, c) = n.split_once(':').unwrap_or((n.as_str(), "0"));
                    c.parse::<u32>()
                        .map(|c| json!({ "node_id": id, "cores": c }))
                        .map_err(|_| CliError::Usage(format!("--node {n}: cores must be a number")))
                })
                .collect::<Result<_, _>>()?;
            let body = json!({
                "name": name,
                "description": description,
                "resources": {
                    "cpu": { "cores": cores, "node_allocations": if allocations.is_empty() { Value::Null } else { Value::Array(allocations) } },
                    "memory": { "gb": memory_gb },
                    "tools": tools.iter().map(|t| requirement(t)).collect::<Vec<_>>(),
                    "runtimes": runtimes.iter().map(|t| requirement(t)).collect::<Vec<_>>(),
                }
            });
            let created: Created = ctx.client.post("/api/configs", Some(body)).await?;
            if !ctx.printed_as_document(&created) {
                println!(
                    "Created configuration '{name}' ({}). Build with it: buildnet build --config '{name}'",
                    created.id
                );
            }
        }
        ConfigCommand::Edit { name, set } => {
            let mut patch = json!({});
            for s in &set {
                let (path, value) =
                    s.split_once('=').ok_or_else(|| CliError::Usage(format!("--set {s}: expected PATH=VALUE")))?;
                let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
                set_path(&mut patch, path, value)?;
            }
            let updated: Value = ctx.client.send_json("PUT", &format!("/api/configs/{name}"), Some(patch)).await?;
            if !ctx.printed_as_document(&updated) {
                println!("Updated configuration '{name}'.");
            }
        }
        ConfigCommand::Delete { name } => {
            let _: Value = ctx.client.delete(&format!("/api/configs/{name}")).await?;
            println!("Deleted configuration '{name}'.");
        }
        ConfigCommand::Export { name, file } => {
            let cfg: Value = ctx.client.get(&format!("/api/configs/{name}")).await?;
            let text = serde_json::to_string_pretty(&cfg).map_err(|e| CliError::Other(e.to_string()))?;
            std::fs::write(&file, text + "\n").map_err(|e| CliError::Other(format!("{}: {e}", file.display())))?;
            println!("Wrote '{name}' to {}.", file.display());
        }
        ConfigCommand::Import { file, name, replace } => {
            let text =
                std::fs::read_to_string(&file).map_err(|e| CliError::Other(format!("{}: {e}", file.display())))?;
            let mut body: Value = serde_json::from_str(&text)
                .map_err(|e| CliError::Other(format!("{}: not JSON: {e}", file.display())))?;
            let obj = body
                .as_object_mut()
                .ok_or_else(|| CliError::Other(format!("{}: not a configuration (a JSON object)", file.display())))?;
            if let Some(n) = &name {
                // A copy: a new name and, so it does not collide with the original, a new id.
                obj.insert("name".into(), Value::String(n.clone()));
                obj.remove("id");
            }
            let target = obj.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
            if replace {
                let list: Configs = ctx.client.get("/api/configs").await?;
                if let Some(old) = list.configs.iter().find(|c| c.name == target) {
                    obj.remove("id");
                    let path = format!("/api/configs/{}", old.id);
                    let updated: Value = ctx.client.send_json("PUT", &path, Some(body)).await?;
                    if !ctx.printed_as_document(&updated) {
                        println!("Replaced configuration '{target}' ({}) with {}.", old.id, file.display());
                    }
                    return Ok(());
                }
            }
            let created: Created = match ctx.client.post("/api/configs", Some(body)).await {
                // Only a name taken has that way out (a pool that cannot give what the
                // configuration asks is a 409 too).
                Err(CliError::Api { status: 409, message, code }) if code == "duplicate" => {
                    return Err(CliError::Api {
                        status: 409,
                        code,
                        message: format!("{message} — import it with --name NEW, or --replace to overwrite it"),
                    })
                }
                other => other?,
            };
            if !ctx.printed_as_document(&created) {
                println!("Imported {} as configuration '{target}' ({}).", file.display(), created.id);
            }
        }
    }
    Ok(())
}

pub async fn run_template(ctx: &Ctx, cmd: TemplateCommand) -> Result<(), CliError> {
    match cmd {
        TemplateCommand::List => {
            let list: Templates = ctx.client.get("/api/templates").await?;
            if !ctx.printed_as_document(&list) {
                let mut t = Table::new(&["id", "name", "kind", "variables", "description"]);
                for tpl in &list.templates {
                    let vars = tpl
                        .variables
                        .iter()
                        .map(|v| format!("{}={}", v.name, v.default.clone().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(" ");
                    t.row(vec![
                        tpl.id.clone(),
                        tpl.name.clone(),
                        if tpl.system { "system".into() } else { "custom".into() },
                        vars,
                        tpl.description.clone(),
                    ]);
                }
                t.print();
            }
        }
        TemplateCommand::Use { template, name, set } => {
            let mut variables = BTreeMap::new();
            for s in &set {
                let (k, v) =
                    s.split_once('=').ok_or_else(|| CliError::Usage(format!("--set {s}: expected NAME=VALUE")))?;
                variables.insert(k.to_string(), v.to_string());
            }
            let created: Created = ctx
                .client
                .post(&format!("/api/templates/{template}/use"), Some(json!({ "name": name, "variables": variables })))
                .await?;
            if !ctx.printed_as_document(&created) {
                println!("Created configuration '{name}' ({}) from template '{template}'.", created.id);
            }
        }
        TemplateCommand::Save { config, name, description } => {
            let created: Created = ctx
                .client
                .post("/api/templates", Some(json!({ "config_id": config, "name": name, "description": description })))
                .await?;
            if !ctx.printed_as_document(&created) {
                println!("Saved '{config}' as template '{name}' ({}).", created.id);
            }
        }
    }
    Ok(())
}
