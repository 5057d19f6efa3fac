//! `buildnet pool status|resources|nodes|health`.

use clap::Subcommand;
use serde::Deserialize;

use buildnet_actors::ledger::VerifyReport;
use buildnet_actors::node::NodeStatus;
use buildnet_actors::pool::{PoolNode, PoolView, PooledResource};
use buildnet_actors::resource::ResourceInfo;
use buildnet_actors::wire::NodeState;

use super::output::{bytes, print_facts, Table};
use super::{CliError, Ctx};

#[derive(Subcommand)]
pub enum PoolCommand {
    /// Totals and nodes of the whole pool
    Status,
    /// Every pooled resource
    Resources {
        /// Only this type: cpu, memory, storage, tool, runtime
        #[arg(long = "type")]
        kind: Option<String>,
        /// Only this node (id)
        #[arg(long)]
        node: Option<String>,
    },
    /// Every node with status, role and latency
    Nodes,
    /// Check that the node answers, its ledger verifies and its tools work
    Health,
}

#[derive(Deserialize, serde::Serialize)]
struct Nodes {
    nodes: Vec<PoolNode>,
}

#[derive(Deserialize, serde::Serialize)]
struct Resources {
    resources: Vec<PooledResource>,
}

fn nodes_table(nodes: &[PoolNode], coordinator: Option<&str>) {
    let mut t = Table::new(&["name", "id", "status", "role", "cores", "memory", "storage", "latency"]);
    for n in nodes {
        let star = if Some(n.id.as_str()) == coordinator { " *" } else { "" };
        t.row(vec![
            n.name.clone(),
            n.id.to_string(),
            n.status.to_string(),
            format!("{}{star}", n.role),
            format!("{}/{}", n.cores_available, n.cores),
            format!("{}/{}", bytes(n.memory_available_bytes), bytes(n.memory_bytes)),
            format!("{}/{}", bytes(n.storage_available_bytes), bytes(n.storage_bytes)),
            format!("{:.1} ms", n.latency_ms),
        ]);
    }
    t.print();
}

pub async fn run(ctx: &Ctx, cmd: PoolCommand) -> Result<(), CliError> {
    match cmd {
        PoolCommand::Status => {
            let p: PoolView = ctx.client.get("/api/pool").await?;
            if ctx.printed_as_document(&p) {
                return Ok(());
            }
            let a = &p.aggregate;
            print_facts(&[
                ("Coordinator", format!("{} (epoch {})", p.coordinator, p.epoch)),
                ("CPU", format!("{} cores ({} available)", a.total_cpu_cores, a.available_cpu_cores)),
                ("Memory", format!("{} ({} available)", bytes(a.total_memory_bytes), bytes(a.available_memory_bytes))),
                (
                    "Storage",
                    format!(
                        "{} ({} available) on {} volumes",
                        bytes(a.total_storage_bytes),
                        bytes(a.available_storage_bytes),
                        a.storage_volumes
                    ),
                ),
                ("Tools", a.tools.keys().cloned().collect::<Vec<_>>().join(", ")),
                ("Runtimes", a.runtimes.keys().cloned().collect::<Vec<_>>().join(", ")),
            ]);
            println!("\nNodes ({})", p.nodes.len());
            nodes_table(&p.nodes, Some(p.coordinator.as_str()));
            let mesh: Result<buildnet_actors::mesh::MeshView, _> = ctx.client.get("/api/mesh").await;
            if mesh.is_ok_and(|m| m.removed) {
                println!("\n{}", buildnet_actors::mesh::REMOVED);
            }
        }
        PoolCommand::Resources { kind, node } => {
            let mut query = Vec::new();
            if let Some(k) = kind {
                query.push(format!("type={k}"));
            }
            if let Some(n) = node {
                query.push(format!("node={n}"));
            }
            let path = if query.is_empty() {
                "/api/pool/resources".to_string()
            } else {
                format!("/api/pool/resources?{}", query.join("&"))
            };
            let r: Resources = ctx.client.get(&path).await?;
            if ctx.printed_as_document(&r) {
                return Ok(());
            }
            let mut t = Table::new(&["node", "resource", "capacity", "available", "detail"]);
            for res in &r.resources {
                let amount = |n: u64| match res.resource {
                    ResourceInfo::Memory(_) | ResourceInfo::Storage(_) => bytes(n),
                    _ => format!("{n} {}", res.unit),
                };
                let detail = match &res.resource {
                    ResourceInfo::Cpu(c) => format!("{} ({})", c.model, c.architecture),
                    ResourceInfo::Memory(m) => format!("{} total", bytes(m.total_bytes)),
                    ResourceInfo::Storage(s) => {
                        format!("{} on {}, {}", s.storage_type, s.mount_point, s.purpose)
                    }
                    ResourceInfo::Tool(t) | ResourceInfo::Runtime(t) => match &t.error {
                        Some(e) => format!("not usable: {e}"),
                        None => format!("{} {}", t.version.clone().unwrap_or_default(), t.path),
                    },
                };
                t.row(vec![
                    res.node_name.clone(),
                    res.key.clone(),
                    amount(res.capacity),
                    amount(res.available),
                    detail,
                ]);
            }
            t.print();
        }
        PoolCommand::Nodes => {
            let n: Nodes = ctx.client.get("/api/pool/nodes").await?;
            if !ctx.printed_as_document(&n) {
                nodes_table(&n.nodes, None);
            }
        }
        PoolCommand::Health => health(ctx).await?,
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct Check {
    check: String,
    ok: bool,
    detail: String,
}

async fn health(ctx: &Ctx) -> Result<(), CliError> {
    let mut checks = Vec::new();
    let started = std::time::Instant::now();
    let health: serde_json::Value = ctx.client.get("/api/health").await?;
    checks.push(Check {
        check: "node answers".into(),
        ok: health.get("status").and_then(|s| s.as_str()) == Some("ok"),
        detail: format!("{} in {} ms", ctx.client.base(), started.elapsed().as_millis()),
    });
    let nodes: Nodes = ctx.client.get("/api/pool/nodes").await?;
    for n in &nodes.nodes {
        checks.push(Check {
            check: format!("node {}", n.name),
            ok: n.status != NodeState::Offline,
            detail: format!("{} ({})", n.status, n.id),
        });
    }
    let verify: VerifyReport = ctx.client.get("/api/ledger/verify").await?;
    let entries: u64 = verify.chains.iter().map(|c| c.entries).sum();
    checks.push(Check {
        check: "ledger verifies".into(),
        ok: verify.ok,
        detail: match &verify.first_bad {
            Some(b) => format!("entry {}#{}: {}", b.origin, b.seq, b.reason),
            None => format!("{entries} entries in {} chains", verify.chains.len()),
        },
    });
    let status: NodeStatus = ctx.client.get("/api/node").await?;
    let broken: Vec<String> = status
        .resources
        .tools
        .iter()
        .chain(&status.resources.runtimes)
        .filter(|t| t.error.is_some())
        .map(|t| t.name.clone())
        .collect();
    checks.push(Check {
        check: "tools usable".into(),
        ok: broken.is_empty(),
        detail: if broken.is_empty() {
            "all found tools answer".into()
        } else {
            format!("not usable: {}", broken.join(", "))
        },
    });
    let failed = checks.iter().filter(|c| !c.ok && c.check != "tools usable").count();
    if !ctx.printed_as_document(&checks) {
        let mut t = Table::new(&["check", "result", "detail"]);
        for c in &checks {
            let result = match (c.ok, c.check == "tools usable") {
                (true, _) => "ok",
                (false, true) => "warn",
                (false, false) => "FAIL",
            };
            t.row(vec![c.check.clone(), result.into(), c.detail.clone()]);
        }
        t.print();
    }
    // A broken optional tool is worth showing but does not make the pool unhealthy.
    if failed > 0 {
        return Err(CliError::Other(format!("{failed} health check(s) failed")));
    }
    Ok(())
}
