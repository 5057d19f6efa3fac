//! `buildnet token create`: single-use, expiring join tokens for new nodes.

use clap::Subcommand;
use serde::{Deserialize, Serialize};

use buildnet_actors::mesh::roster::TokenInfo;
use buildnet_actors::wire::{self, Role};

use super::output::time;
use super::{parse_duration, CliError, Ctx};

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a join token (on the node that holds the mesh key)
    Create {
        /// builder (a worker), observer (contributes nothing, cannot trigger work) or admin
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// How long the token stays valid, e.g. 1h or 7d
        #[arg(long, value_parser = parse_duration, default_value = "24h")]
        ttl: std::time::Duration,
    },
}

fn parse_role(text: &str) -> Result<Role, String> {
    text.parse().map_err(|e: wire::InvalidId| e.to_string())
}

#[derive(Serialize, Deserialize)]
struct Created {
    token: String,
    info: TokenInfo,
}

pub async fn run(ctx: &Ctx, cmd: TokenCommand) -> Result<(), CliError> {
    match cmd {
        TokenCommand::Create { role, ttl } => {
            let body = serde_json::json!({ "role": role, "ttl_secs": ttl.as_secs().max(1) });
            let created: Created = ctx.client.post("/api/tokens", Some(body)).await?;
            if !ctx.printed_as_document(&created) {
                println!(
                    "Join token for a {} node, single use, valid until {} UTC:",
                    created.info.role,
                    time(created.info.expires_at_ms)
                );
                println!("{}", created.token);
                println!("On the new machine: buildnet up --join {} --token {}", ctx.client.base(), created.token);
            }
        }
    }
    Ok(())
}
