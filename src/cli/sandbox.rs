//! `buildnet sandbox-exec`: the containment launcher (hidden from help; see
//! `buildnet_actors::exec::contain`). `--serve` is the node's fork server, which the daemon starts
//! once and which forks a launcher per package (`buildnet_actors::exec::forkserver`); with a
//! command it contains this one process and execs it; `--probe` says what this kernel allows. It
//! runs before anything else in the process — no logger, no runtime, no threads.

use std::path::PathBuf;

use buildnet_actors::exec::contain::{self, Spec, CANNOT_CONTAIN};
use buildnet_actors::exec::forkserver;
use buildnet_actors::wire::SandboxLevel;
use clap::Args;

#[derive(Args, Debug)]
pub struct SandboxArgs {
    /// Print the containment level this kernel allows and exit
    #[arg(long)]
    pub probe: bool,
    /// Serve the daemon on the socket that is stdin: fork a contained package per request
    #[arg(long, conflicts_with = "probe")]
    pub serve: bool,
    /// The sandbox: working directory, the only writable place
    #[arg(long, required_unless_present_any = ["probe", "serve"])]
    pub dir: Option<PathBuf>,
    /// none, landlock or landlock+namespaces
    #[arg(long, default_value = "none")]
    pub level: String,
    /// A declared tool or runtime the package may read and execute (repeatable)
    #[arg(long = "read")]
    pub read_only: Vec<PathBuf>,
    /// Run as this uid and gid (the node runs as root)
    #[arg(long)]
    pub user: Option<u32>,
    /// The package's command
    #[arg(last = true)]
    pub argv: Vec<String>,
}

/// Serves, probes, or contains this process and execs the package (returning the exit code only
/// on failure).
pub fn run(args: SandboxArgs) -> i32 {
    if args.probe {
        println!("{}", contain::probe());
        return 0;
    }
    if args.serve {
        return forkserver::serve();
    }
    let level: SandboxLevel = match args.level.parse() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("buildnet sandbox-exec: {e}");
            return CANNOT_CONTAIN;
        }
    };
    let spec = Spec {
        dir: args.dir.unwrap_or_default(),
        read_only: args.read_only,
        level,
        user: args.user,
        argv: args.argv,
        tmp: None,
        given: false,
    };
    contain::run(&spec)
}
