//! `buildnet node status|scan`.

use std::path::Path;

use clap::Subcommand;

use buildnet_actors::node::{NodeStatus, ScanOutcome};
use buildnet_actors::wire::ToolInfo;

use super::output::{bytes, one_line, print_facts, spinner, time, Table};
use super::{CliError, Ctx};
use crate::web::api::mesh::RemoveNodeResponse;

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Show this node: identity, CPU, memory, storage, tools, runtimes
    Status,
    /// Rescan this node's resources (live leases are kept)
    Scan,
    /// Join the mesh of the node at URL, with a join token given as --token
    Join {
        /// URL of the node holding the mesh key
        url: String,
    },
    /// Leave the mesh cleanly; this node becomes a mesh of one
    Leave,
    /// Remove a member that cannot leave by itself (a lost machine); on the mesh key holder
    Remove {
        /// The member's node id, or its name
        node: String,
    },
    /// Benchmark this node: CPU, memory, every storage volume and the links to online peers
    Benchmark,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Joined {
    success: bool,
    node_id: String,
    mesh_id: String,
}

pub async fn run(ctx: &Ctx, cmd: NodeCommand, join_token: Option<String>) -> Result<(), CliError> {
    match cmd {
        NodeCommand::Join { url } => {
            let token = join_token.ok_or_else(|| {
                CliError::Usage("node join needs the join token: buildnet node join URL --token bnj_…".into())
            })?;
            let joined: Joined =
                ctx.client.post("/api/pool/join", Some(serde_json::json!({ "address": url, "token": token }))).await?;
            if !ctx.printed_as_document(&joined) {
                println!("Node {} joined mesh {} through {url}.", joined.node_id, joined.mesh_id);
            }
        }
        NodeCommand::Benchmark => return super::test::run(ctx, super::test::TestCommand::All).await,
        NodeCommand::Leave => {
            let left: serde_json::Value = ctx.client.post("/api/pool/leave", None).await?;
            if !ctx.printed_as_document(&left) {
                println!("Left the mesh; this node is now a mesh of one.");
            }
        }
        NodeCommand::Remove { node } => {
            let removed: RemoveNodeResponse =
                ctx.client.post("/api/pool/remove", Some(serde_json::json!({ "node": node }))).await?;
            if !ctx.printed_as_document(&removed) {
                println!(
                    "Removed {} ({}) from the mesh: every member closes its link and refuses it from now on.",
                    one_line(&removed.name),
                    removed.node_id
                );
            }
        }
        NodeCommand::Status => {
            let s: NodeStatus = ctx.client.get("/api/node").await?;
            if !ctx.printed_as_document(&s) {
                print_status(&s);
            }
        }
        NodeCommand::Scan => {
            let bar = spinner("scanning resources…");
            let outcome: Result<ScanOutcome, _> = ctx.client.post("/api/node/scan", None).await;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            let outcome = outcome?;
            if !ctx.printed_as_document(&outcome) {
                let r = &outcome.resources;
                println!(
                    "Scanned in {} ms: {} cores offered, {} memory offered, {} volumes, {} tools, {} runtimes; {}.",
                    r.scan_duration_ms,
                    r.cpu.offered,
                    bytes(r.memory.offered_bytes),
                    r.storage.len(),
                    r.tools.iter().filter(|t| t.error.is_none()).count(),
                    r.runtimes.iter().filter(|t| t.error.is_none()).count(),
                    if outcome.changed { "resources changed (recorded in the ledger)" } else { "nothing changed" }
                );
            }
        }
    }
    Ok(())
}

fn tools_table(list: &[ToolInfo]) {
    let mut t = Table::new(&["name", "version", "path", "capabilities"]);
    for tool in list {
        let caps = match &tool.error {
            Some(e) => format!("NOT USABLE: {e}"),
            None if tool.capabilities.len() > 6 => {
                format!("{} … ({} in all)", tool.capabilities[..6].join(", "), tool.capabilities.len())
            }
            None => tool.capabilities.join(", "),
        };
        t.row(vec![tool.name.clone(), tool.version.clone().unwrap_or_else(|| "?".into()), tool.path.clone(), caps]);
    }
    t.print();
}

fn print_status(s: &NodeStatus) {
    let r = &s.resources;
    print_facts(&[
        ("Node", format!("{} ({})", s.name, s.node_id)),
        ("Address", s.address.clone()),
        ("Status", format!("{}, role {}", s.status, s.role)),
        ("Version", s.version.clone()),
        ("Sandbox", s.sandbox.to_string()),
        ("Up since", time(s.started_at_ms)),
        (
            "CPU",
            format!(
                "{} — {} logical cores ({} physical), {} offered, {} MHz, {}",
                r.cpu.model,
                r.cpu.count,
                r.cpu.physical_count.map_or("?".into(), |n| n.to_string()),
                r.cpu.offered,
                r.cpu.frequency_mhz,
                r.cpu.architecture
            ),
        ),
        ("Features", r.cpu.features.join(" ")),
        (
            "Memory",
            format!(
                "{} total, {} available, {} offered",
                bytes(r.memory.total_bytes),
                bytes(r.memory.available_bytes),
                bytes(r.memory.offered_bytes)
            ),
        ),
    ]);
    println!("\nStorage");
    let mut t = Table::new(&["path", "purpose", "mount", "class", "total", "available", "offered"]);
    for v in &r.storage {
        // What the benchmark measured where it has run: a virtual disk is often "rotational" to
        // the kernel whatever it stands on (an hdd here measured as an ssd).
        // Only a measure taken on this volume: one of `/` says nothing of a disk mounted below it.
        let measured = s.benchmarks.storage_for(&v.path).filter(|b| Path::new(&b.path).starts_with(&v.mount_point));
        let class = match measured {
            Some(b) => format!("{} (measured)", b.storage_class),
            None => format!("{} (kernel; not measured)", v.storage_type),
        };
        t.row(vec![
            v.path.clone(),
            v.purpose.clone(),
            v.mount_point.clone(),
            class,
            bytes(v.total_bytes),
            bytes(v.available_bytes),
            bytes(v.offered_bytes),
        ]);
    }
    t.print();
    println!("\nTools");
    tools_table(&r.tools);
    println!("\nRuntimes");
    tools_table(&r.runtimes);
    println!("\nNetwork");
    let mut t = Table::new(&["interface", "addresses"]);
    for n in &r.network {
        t.row(vec![n.name.clone(), n.addresses.join(", ")]);
    }
    t.print();
}
