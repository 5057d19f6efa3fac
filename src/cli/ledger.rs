//! `buildnet ledger [-n N]` and `buildnet ledger verify`.

use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

use buildnet_actors::ledger::VerifyReport;
use buildnet_actors::wire::LedgerEntry;

use super::output::{time, Table};
use super::{CliError, Ctx};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LedgerArgs {
    #[command(subcommand)]
    pub action: Option<LedgerCommand>,
    /// Number of entries, newest first
    #[arg(short = 'n', long = "limit", default_value_t = 50)]
    pub limit: usize,
    /// Only these entry types (comma-separated), e.g. KeyCreated,NodeJoined
    #[arg(long = "type")]
    pub types: Option<String>,
    /// Only entries from this node id
    #[arg(long)]
    pub node: Option<String>,
}

#[derive(Subcommand)]
pub enum LedgerCommand {
    /// Check every chain's links, hashes and signatures; exit 1 naming the first bad entry
    Verify,
    /// Exchange ledger heads with every linked peer now (an admin key; it also runs every second)
    Sync,
}

#[derive(Serialize, Deserialize)]
struct Entries {
    entries: Vec<LedgerEntry>,
}

pub async fn run(ctx: &Ctx, args: LedgerArgs) -> Result<(), CliError> {
    match args.action {
        Some(LedgerCommand::Sync) => {
            let synced: serde_json::Value = ctx.client.post("/api/ledger/sync", None).await?;
            if !ctx.printed_as_document(&synced) {
                println!("Asked {} peer(s) for what this node lacks; entries arrive within seconds.", synced["peers"]);
            }
            Ok(())
        }
        Some(LedgerCommand::Verify) => {
            let report: VerifyReport = ctx.client.get("/api/ledger/verify").await?;
            if !ctx.printed_as_document(&report) {
                let mut t = Table::new(&["origin", "entries", "head", "result"]);
                for c in &report.chains {
                    t.row(vec![
                        c.origin.clone(),
                        c.entries.to_string(),
                        c.head_hash.get(..16).unwrap_or("").to_string(),
                        if c.ok { "ok".into() } else { "BAD".into() },
                    ]);
                }
                t.print();
            }
            for e in &report.equivocations {
                eprintln!(
                    "buildnet: warning: node {} signed two different entries at {} position(s); the proof is kept",
                    e.origin, e.positions
                );
            }
            match report.first_bad {
                Some(bad) => Err(CliError::Other(format!(
                    "ledger verify failed at entry {}#{}: {}",
                    bad.origin, bad.seq, bad.reason
                ))),
                None => Ok(()),
            }
        }
        None => {
            if args.limit == 0 || args.limit > 1000 {
                return Err(CliError::Usage(format!("-n must be between 1 and 1000, got {}", args.limit)));
            }
            let mut path = format!("/api/ledger?limit={}", args.limit);
            if let Some(t) = &args.types {
                path.push_str(&format!("&types={t}"));
            }
            if let Some(n) = &args.node {
                path.push_str(&format!("&origin={n}"));
            }
            let list: Entries = ctx.client.get(&path).await?;
            if !ctx.printed_as_document(&list) {
                let mut t = Table::new(&["time", "type", "origin", "seq", "data"]);
                for e in &list.entries {
                    let mut data = serde_json::to_string(&e.data).unwrap_or_default();
                    if data.chars().count() > 90 {
                        data = format!("{}…", data.chars().take(89).collect::<String>());
                    }
                    t.row(vec![
                        time(e.hlc.wall_ms),
                        e.entry_type.to_string(),
                        e.origin.to_string(),
                        e.seq.to_string(),
                        data,
                    ]);
                }
                t.print();
            }
            Ok(())
        }
    }
}
