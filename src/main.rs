//! `buildnet`: one binary for the daemon (`buildnet up`), the CLI and the web server.

mod cli;
mod human;
mod web;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

fn main() {
    let matches = cli::Cli::command().get_matches();
    let token_on_command_line = matches.value_source("token") == Some(ValueSource::CommandLine);
    let cli = match cli::Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let cli::Command::SandboxExec(args) = cli.command {
        // Before any logger, runtime or thread: the launcher forks and restricts itself.
        std::process::exit(cli::sandbox::run(args));
    }
    let daemon = matches!(cli.command, cli::Command::Up(_));
    if !daemon {
        // A CLI piped into `head` should stop quietly, as Unix tools do. The daemon keeps Rust's
        // default (SIGPIPE ignored) so a closed socket never kills it.
        // SAFETY: setting a signal disposition before any threads exist.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let default_level = if daemon { "info" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level)).init();
    if let Err(e) = cli::run(cli, token_on_command_line) {
        // One line, whatever a node put in the message.
        eprintln!("buildnet: {}", cli::output::one_line(&e.to_string()));
        std::process::exit(e.exit_code());
    }
}
