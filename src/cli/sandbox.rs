//! `buildnet sandbox-exec`: the containment launcher the daemon starts each package through
//! (hidden from help; see `buildnet_actors::exec::contain`). It runs before anything else in the
//! process — no logger, no runtime, no threads — restricts itself and execs the package.

use std::path::PathBuf;

use buildnet_actors::exec::contain::{self, Spec};
use buildnet_actors::wire::SandboxLevel;
use clap::Args;

#[derive(Args, Debug)]
pub struct SandboxArgs {
    /// Print the containment level this kernel allows and exit
    #[arg(long)]
    pub probe: bool,
    /// The sandbox: working directory, the only writable place
    #[arg(long, required_unless_present = "probe")]
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

/// Contains this process and execs the package; returns the exit code only on failure.
pub fn run(args: SandboxArgs) -> i32 {
    if args.probe {
        println!("{}", contain::probe());
        return 0;
    }
    let level: SandboxLevel = match args.level.parse() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("buildnet sandbox-exec: {e}");
            return 126;
        }
    };
    let spec =
        Spec { dir: args.dir.unwrap_or_default(), read_only: args.read_only, level, user: args.user, argv: args.argv };
    let failure = contain::launch(&spec);
    eprintln!("buildnet sandbox-exec: {failure}");
    126
}
