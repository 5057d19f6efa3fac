//! `buildnet project add|list|show|remove`: project directories registered on a node, which the
//! pages and `POST /api/build {"project": NAME}` build by name (the node reads the files itself).

use std::path::PathBuf;

use clap::Subcommand;
use serde::{Deserialize, Serialize};

use buildnet_actors::builds::projects::{check_project_name, ProjectInfo};

use super::output::{print_facts, time, Table};
use super::{CliError, Ctx};

#[derive(Subcommand)]
pub enum ProjectCommand {
    /// Register a project directory (holding buildnet.toml) on the node; the path is the
    /// directory's place on the node's machine
    Add {
        path: PathBuf,
        /// Name to build it by [default: the directory's name]
        #[arg(long)]
        name: Option<String>,
    },
    /// List registered projects
    List,
    /// One project with its packages
    Show { name: String },
    /// Forget a project (its directory is left alone)
    Remove { name: String },
}

#[derive(Serialize, Deserialize)]
struct ProjectList {
    projects: Vec<ProjectInfo>,
}

#[derive(Serialize, Deserialize)]
struct Removed {
    success: bool,
}

fn checked(name: &str) -> Result<&str, CliError> {
    check_project_name(name).map_err(CliError::Usage)?;
    Ok(name)
}

pub async fn run(ctx: &Ctx, cmd: ProjectCommand) -> Result<(), CliError> {
    match cmd {
        ProjectCommand::Add { path, name } => {
            // The node resolves the path on its machine; a path that exists here is sent whole
            // (the usual case: the node is local).
            let path = path
                .canonicalize()
                .or_else(|_| std::path::absolute(&path))
                .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
            let body = serde_json::json!({ "path": path.to_string_lossy(), "name": name });
            let p: ProjectInfo = ctx.client.post("/api/projects", Some(body)).await?;
            if !ctx.printed_as_document(&p) {
                println!("Project '{}' registered: {} package(s) in {}.", p.name, p.packages, p.path);
                println!("Build it from the pages, or with POST /api/build {{\"project\": \"{}\"}}.", p.name);
            }
        }
        ProjectCommand::List => {
            let list: ProjectList = ctx.client.get("/api/projects").await?;
            if ctx.printed_as_document(&list) {
                return Ok(());
            }
            let mut t = Table::new(&["name", "packages", "tools", "path", "registered"]);
            for p in &list.projects {
                let packages = match &p.error {
                    Some(_) => "manifest broken".to_string(),
                    None => p.packages.to_string(),
                };
                t.row(vec![p.name.clone(), packages, p.tools.join(", "), p.path.clone(), time(p.created_at_ms)]);
            }
            t.print();
        }
        ProjectCommand::Show { name } => {
            let p: ProjectInfo = ctx.client.get(&format!("/api/projects/{}", checked(&name)?)).await?;
            if ctx.printed_as_document(&p) {
                return Ok(());
            }
            print_facts(&[
                ("name", p.name.clone()),
                ("path", p.path.clone()),
                ("packages", p.package_names.clone().unwrap_or_default().join(", ")),
                ("tools", p.tools.join(", ")),
                ("runtimes", p.runtimes.join(", ")),
                ("registered", format!("{} by {}", time(p.created_at_ms), p.created_by)),
            ]);
            if let Some(e) = &p.error {
                println!("manifest: {e}");
            }
        }
        ProjectCommand::Remove { name } => {
            let done: Removed = ctx.client.delete(&format!("/api/projects/{}", checked(&name)?)).await?;
            if !ctx.printed_as_document(&done) {
                println!("Project '{name}' removed (its directory is untouched).");
            }
        }
    }
    Ok(())
}
