//! `buildnet key create|list|revoke`.

use clap::Subcommand;
use serde::{Deserialize, Serialize};

use buildnet_actors::keys::KeyInfo;
use buildnet_actors::wire::{self, Role};

use super::output::{time, Table};
use super::{parse_duration, CliError, Ctx};

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Create a key; its secret is printed once
    Create {
        /// admin, builder or observer
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// A name to recognise it by
        #[arg(long)]
        name: String,
        /// Expire after this long, e.g. 24h or 30d [default: never]
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<std::time::Duration>,
    },
    /// List keys (never their secrets)
    List,
    /// Revoke a key by id; it stops working at once
    Revoke { id: String },
}

fn parse_role(text: &str) -> Result<Role, String> {
    text.parse().map_err(|e: wire::InvalidId| e.to_string())
}

#[derive(Serialize, Deserialize)]
struct Created {
    key: String,
    info: KeyInfo,
}

#[derive(Serialize, Deserialize)]
struct Keys {
    keys: Vec<KeyInfo>,
}

#[derive(Serialize, Deserialize)]
struct Revoked {
    revoked: KeyInfo,
}

pub async fn run(ctx: &Ctx, cmd: KeyCommand) -> Result<(), CliError> {
    match cmd {
        KeyCommand::Create { role, name, ttl } => {
            let body = serde_json::json!({ "name": name, "role": role, "ttl_secs": ttl.map(|d| d.as_secs()) });
            let created: Created = ctx.client.post("/api/keys", Some(body)).await?;
            if !ctx.printed_as_document(&created) {
                println!(
                    "Created key '{}' ({}) with role {}. It is shown only this once:",
                    created.info.name, created.info.id, created.info.role
                );
                println!("{}", created.key);
            }
        }
        KeyCommand::List => {
            let keys: Keys = ctx.client.get("/api/keys").await?;
            if !ctx.printed_as_document(&keys) {
                let now = wire::now_ms();
                let mut t = Table::new(&["id", "name", "role", "created", "last used", "state"]);
                for k in &keys.keys {
                    let state = if k.revoked_at_ms.is_some() {
                        "revoked"
                    } else if k.active(now) {
                        "active"
                    } else {
                        "expired"
                    };
                    t.row(vec![
                        k.id.clone(),
                        k.name.clone(),
                        k.role.to_string(),
                        time(k.created_at_ms),
                        k.last_used_at_ms.map_or("never".into(), time),
                        state.into(),
                    ]);
                }
                t.print();
            }
        }
        KeyCommand::Revoke { id } => {
            let revoked: Revoked = ctx.client.delete(&format!("/api/keys/{id}")).await?;
            if !ctx.printed_as_document(&revoked) {
                println!("Revoked key '{}' ({}).", revoked.revoked.name, revoked.revoked.id);
            }
        }
    }
    Ok(())
}
