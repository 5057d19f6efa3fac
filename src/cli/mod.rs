//! The command line: `buildnet up` runs a node; every other command is a thin client of a
//! node's HTTP API (plan §7.1). Global flags work before or after the subcommand, and without
//! them the local node's address and admin key are read from the data dir.

pub mod build;
pub mod client;
pub mod config;
pub mod init;
pub mod key;
pub mod ledger;
pub mod node;
pub mod output;
pub mod pool;
pub mod project;
pub mod sandbox;
pub mod test;
pub mod token;
pub mod up;
mod writeback;

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::web::tls;
use buildnet_actors::node::{ADDRESS_FILE, ADMIN_KEY_FILE};
use client::Client;
use output::Format;

#[derive(Parser)]
#[command(
    name = "buildnet",
    version,
    about = "Pool the machines you already have into one build farm",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct GlobalArgs {
    /// URL of the node to talk to [default: the one in the data dir's `address` file]
    #[arg(long, global = true, env = "BUILDNET_ADDRESS")]
    pub address: Option<String>,
    /// API key [default: the data dir's `admin.key`]
    #[arg(long, global = true, env = "BUILDNET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Data dir [default: ~/.buildnet]
    #[arg(long, global = true, env = "BUILDNET_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// SHA-256 fingerprint of the node's TLS certificate, for an https:// address: only that
    /// certificate is accepted [default: the data dir's `tls-fingerprint` for the local node;
    /// else the certificate must be signed by a known authority]
    #[arg(long, global = true, env = "BUILDNET_TLS_FINGERPRINT", value_name = "SHA256")]
    pub tls_fingerprint: Option<String>,
    /// Output format
    #[arg(long, global = true, value_enum, default_value = "table")]
    pub format: Format,
    /// Seconds a request waits for the node's answer; benchmarks, tests, a rescan, a join and
    /// transfers of files wait for as long as their work takes
    #[arg(long, global = true, env = "BUILDNET_TIMEOUT", value_name = "SECONDS", default_value_t = client::DEFAULT_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: u64,
}

// Deferred: a subcommand's arguments are made only when it is the one run, so `buildnet build`
// does not build the other commands' trees (~7 % of an up-to-date answer before).
#[derive(Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// Run a node (the daemon) in the foreground
    Up(up::UpArgs),
    /// This node: status, rescan
    Node {
        #[command(subcommand)]
        action: node::NodeCommand,
    },
    /// The pool: status, resources, nodes, health
    Pool {
        #[command(subcommand)]
        action: pool::PoolCommand,
    },
    /// The activity ledger; `ledger verify` checks every chain
    Ledger(ledger::LedgerArgs),
    /// API keys: create, list, revoke
    Key {
        #[command(subcommand)]
        action: key::KeyCommand,
    },
    /// Build configurations: list, show, create, edit, delete, export, import
    Config {
        #[command(subcommand)]
        action: config::ConfigCommand,
    },
    /// Configuration templates: list, use, save
    Template {
        #[command(subcommand)]
        action: config::TemplateCommand,
    },
    /// Projects registered on the node, built by name from the pages and the API
    Project {
        #[command(subcommand)]
        action: project::ProjectCommand,
    },
    /// Write a starting buildnet.toml from a compilation database or a directory of media files
    Init(init::InitArgs),
    /// Build a project (its buildnet.toml) on the pool
    Build(build::BuildArgs),
    /// Build history; with an id, one build's packages
    History(build::HistoryArgs),
    /// Measure this node and its links: cpu, memory, storage <path>, network <node>, all
    Test {
        #[command(subcommand)]
        what: test::TestCommand,
    },
    /// Join tokens for new nodes
    Token {
        #[command(subcommand)]
        action: token::TokenCommand,
    },
    /// The containment launcher the daemon starts packages through (internal)
    #[command(name = "sandbox-exec", hide = true)]
    SandboxExec(sandbox::SandboxArgs),
}

/// A failed command: one line for the user, and an exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("no BuildNet node answers at {url} — start one with `buildnet up`")]
    NoNode { url: String },
    #[error("no BuildNet node address in {0} — start one with `buildnet up`, or pass --address")]
    NoAddress(PathBuf),
    #[error("no API key — pass --token or set BUILDNET_TOKEN (a local node's admin key is in {0})")]
    NoToken(PathBuf),
    #[error("{message}")]
    Api { status: u16, code: String, message: String },
    #[error("{0}")]
    Usage(String),
    /// The node's TLS certificate was refused (not the pinned one, or from no known authority).
    #[error("{0}")]
    Tls(String),
    /// Something other than a BuildNet node (of this version) answered at the address.
    #[error("{0}")]
    NotANode(String),
    /// The node took the connection but did not answer in time (stopped, or overloaded).
    #[error(
        "{url} did not answer within {secs} s — is the node stopped or overloaded? (--timeout SECONDS waits longer)"
    )]
    NoAnswer { url: String, secs: u64 },
    #[error("{0}")]
    Other(String),
}

impl CliError {
    /// 2 for "could not reach or use a node at all", 1 for a command that ran and failed.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::NoNode { .. }
            | CliError::NoAddress(_)
            | CliError::NoToken(_)
            | CliError::Usage(_)
            | CliError::Tls(_)
            | CliError::NotANode(_)
            | CliError::NoAnswer { .. } => 2,
            CliError::Api { status: 401, .. } => 2,
            _ => 1,
        }
    }
}

/// `--data-dir`, else `$BUILDNET_DATA_DIR` (folded into the flag by clap), else `~/.buildnet`.
pub fn data_dir(global: &GlobalArgs) -> Result<PathBuf, CliError> {
    if let Some(d) = &global.data_dir {
        return Ok(d.clone());
    }
    std::env::var_os("HOME")
        .map(|home| Path::new(&home).join(".buildnet"))
        .ok_or_else(|| CliError::Usage("HOME is not set; pass --data-dir".into()))
}

/// Everything a client command needs.
pub struct Ctx {
    pub client: Client,
    pub format: Format,
    /// The data dir, when the node addressed is its own (its `address` file) and the key is its
    /// own admin key: where a build keeps what lets the next one see it is up to date
    /// (`builds::uptodate`).
    pub local_dir: Option<PathBuf>,
}

/// The node a command talks to: its address, and whether it is the data dir's own node.
struct Addressed {
    dir: PathBuf,
    address: String,
    /// The address in the data dir's `address` file, if any.
    local_address: Option<String>,
}

impl Addressed {
    fn find(global: &GlobalArgs) -> Result<Addressed, CliError> {
        let dir = data_dir(global)?;
        let local_address = std::fs::read_to_string(dir.join(ADDRESS_FILE))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        let address = match (&global.address, &local_address) {
            (Some(a), _) => a.clone(),
            (None, Some(a)) => a.clone(),
            (None, None) => return Err(CliError::NoAddress(dir.join(ADDRESS_FILE))),
        };
        if !(address.starts_with("http://") || address.starts_with("https://")) {
            return Err(CliError::Usage(format!("--address must be a URL like http://host:port, got '{address}'")));
        }
        Ok(Addressed { dir, address, local_address })
    }

    /// Whether the node addressed is the one whose data dir this is.
    fn is_local(&self) -> bool {
        self.local_address.as_deref() == Some(self.address.trim_end_matches('/'))
    }
}

impl Ctx {
    /// Finds the node and key: flags and environment first, then the data dir. When `--token`
    /// carries a join token (`node join`), the API key comes from `BUILDNET_TOKEN` or the data dir.
    pub fn connect(global: &GlobalArgs, token_is_join_token: bool) -> Result<Ctx, CliError> {
        let addressed = Addressed::find(global)?;
        let local = addressed.is_local();
        let Addressed { dir, address, .. } = addressed;
        // The certificate to pin: the one named on the command line, else — for the node of this
        // data dir — the one it serves; else none, and the webpki roots decide.
        let pin = match &global.tls_fingerprint {
            Some(text) => {
                Some(tls::Fingerprint::parse(text).map_err(|e| CliError::Usage(format!("--tls-fingerprint: {e}")))?)
            }
            None if local => tls::read_fingerprint(&dir).map_err(CliError::Other)?,
            None => None,
        };
        let api_token = if token_is_join_token { std::env::var("BUILDNET_TOKEN").ok() } else { global.token.clone() };
        let admin_key = || std::fs::read_to_string(dir.join(ADMIN_KEY_FILE)).ok().map(|s| s.trim().to_string());
        let token = match api_token.clone() {
            Some(t) => Some(t),
            None => admin_key(),
        };
        let token = token.filter(|t| !t.is_empty()).ok_or_else(|| CliError::NoToken(dir.join(ADMIN_KEY_FILE)))?;
        // Only the data dir's own key may be answered without asking the node (`build::prepare`):
        // another key, which may not be allowed to build, has the node say so.
        let own_key = api_token.is_none() || admin_key().is_some_and(|k| k == token);
        let local_dir = (local && own_key).then_some(dir);
        Ok(Ctx {
            client: Client::new(address, Some(token), pin, std::time::Duration::from_secs(global.timeout)),
            format: global.format,
            local_dir,
        })
    }

    /// Prints a document when a machine format was asked for; true if it did.
    pub fn printed_as_document<T: serde::Serialize>(&self, value: &T) -> bool {
        if self.format == Format::Table {
            return false;
        }
        output::print_document(self.format, &serde_json::to_value(value).unwrap_or_default());
        true
    }
}

/// Parses durations like `90s`, `30m`, `24h`, `7d`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("expected a duration like 30m, 24h or 7d, got '{text}'"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" | "" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("unknown unit '{unit}' in '{text}': use s, m, h or d")),
    };
    Ok(std::time::Duration::from_secs(secs))
}

/// Runs a parsed command line. `token_on_command_line` says whether `--token` was typed (as
/// opposed to coming from `BUILDNET_TOKEN`): for `up --join` and `node join` it is the join token.
pub fn run(cli: Cli, token_on_command_line: bool) -> Result<(), CliError> {
    let typed_token = cli.global.token.clone().filter(|_| token_on_command_line);
    match cli.command {
        Command::Up(args) => {
            let join_token = if args.join.is_some() { typed_token } else { None };
            up::run(&cli.global, args, join_token)
        }
        Command::Init(args) => init::run(args, &cli.global),
        Command::Build(args) => {
            // Everything `connect` checks (address, key, pin) is checked first, as for any
            // command; a build with nothing changed is then answered without a connection or a
            // runtime (`build::prepare`).
            let ctx = Ctx::connect(&cli.global, false)?;
            match build::prepare(args, ctx.local_dir.as_deref(), cli.global.format)? {
                build::Prepared::UpToDate => Ok(()),
                build::Prepared::Ask(asking) => {
                    actix_rt::System::new().block_on(async move { build::run(&ctx, *asking).await })
                }
            }
        }
        other => {
            let joining = matches!(&other, Command::Node { action: node::NodeCommand::Join { .. } });
            let ctx = Ctx::connect(&cli.global, joining && token_on_command_line)?;
            let join_token = if joining { typed_token } else { None };
            actix_rt::System::new().block_on(async move {
                match other {
                    Command::Node { action } => node::run(&ctx, action, join_token).await,
                    Command::Token { action } => token::run(&ctx, action).await,
                    Command::Project { action } => project::run(&ctx, action).await,
                    Command::Config { action } => config::run(&ctx, action).await,
                    Command::Test { what } => test::run(&ctx, what).await,
                    Command::Template { action } => config::run_template(&ctx, action).await,
                    Command::History(args) => build::history(&ctx, args).await,
                    Command::Pool { action } => pool::run(&ctx, action).await,
                    Command::Ledger(args) => ledger::run(&ctx, args).await,
                    Command::Key { action } => key::run(&ctx, action).await,
                    Command::Up(_) | Command::Init(_) | Command::Build(_) | Command::SandboxExec(_) => Ok(()),
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_work_before_and_after_the_subcommand() {
        let before = Cli::try_parse_from(["buildnet", "--format", "json", "node", "status"]).expect("parses");
        let after = Cli::try_parse_from(["buildnet", "node", "status", "--format", "json"]).expect("parses");
        assert_eq!(before.global.format, Format::Json);
        assert_eq!(after.global.format, Format::Json);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s").map(|d| d.as_secs()), Ok(90));
        assert_eq!(parse_duration("24h").map(|d| d.as_secs()), Ok(86_400));
        assert_eq!(parse_duration("7d").map(|d| d.as_secs()), Ok(604_800));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5w").is_err());
    }
}
