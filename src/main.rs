//! `buildnet`: one binary for the daemon (`buildnet up`), the CLI and the web server.

mod cli;
mod human;
mod web;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let default_level = if matches!(cli.command, cli::Command::Up(_)) {
        "info"
    } else {
        "warn"
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .init();
    if let Err(e) = cli::run(cli) {
        eprintln!("buildnet: {e}");
        std::process::exit(e.exit_code());
    }
}
