//! `buildnet-fuzz [--target NAME]... [--inputs N] [--seed S] [--timeout-ms MS] [--crashes DIR]`
//! `buildnet-fuzz --target NAME --replay FILE`
//!
//! Runs every target (or the named ones) for N inputs each and prints one line per target;
//! exits 1 when any input failed. Failing inputs are saved under `fuzz/crashes/`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use buildnet_fuzz::guard::GuardedAlloc;
use buildnet_fuzz::{run, targets, Options};

#[global_allocator]
static ALLOC: GuardedAlloc = GuardedAlloc;

const USAGE: &str = "usage: buildnet-fuzz [--target NAME]... [--inputs N] [--seed S] [--timeout-ms MS] \
                     [--crashes DIR] [--replay FILE] [--outcomes] [--quiet]\ntargets: envelope, noise, join, manifest, config";

struct Args {
    targets: Vec<String>,
    opts: Options,
    replay: Option<PathBuf>,
    outcomes: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut opts =
        Options { crash_dir: Some(buildnet_fuzz::default_crash_dir()), progress: true, ..Options::default() };
    let mut targets = Vec::new();
    let mut replay = None;
    let mut outcomes = false;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |what: &str| it.next().ok_or(format!("{arg} needs {what}"));
        match arg.as_str() {
            "--target" | "-t" => targets.push(value("a target name")?),
            "--inputs" | "-n" => opts.inputs = value("a number")?.parse().map_err(|e| format!("--inputs: {e}"))?,
            "--seed" | "-s" => opts.seed = value("a number")?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--timeout-ms" => {
                opts.timeout =
                    Duration::from_millis(value("milliseconds")?.parse().map_err(|e| format!("--timeout-ms: {e}"))?)
            }
            "--crashes" => opts.crash_dir = Some(PathBuf::from(value("a directory")?)),
            "--replay" => replay = Some(PathBuf::from(value("a file")?)),
            "--quiet" | "-q" => opts.progress = false,
            "--outcomes" => outcomes = true,
            "--help" | "-h" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument '{other}'\n{USAGE}")),
        }
    }
    for t in &targets {
        if !targets::NAMES.contains(&t.as_str()) {
            return Err(format!("unknown target '{t}'\n{USAGE}"));
        }
    }
    if targets.is_empty() {
        targets = targets::NAMES.iter().map(|s| s.to_string()).collect();
    }
    if replay.is_some() && targets.len() != 1 {
        return Err("--replay needs exactly one --target".into());
    }
    Ok(Args { targets, opts, replay, outcomes })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut failed = false;
    let mut total = Duration::ZERO;
    println!("seed {}, {} inputs per target, hang after {:?}", args.opts.seed, args.opts.inputs, args.opts.timeout);
    for name in &args.targets {
        let Some(target) = targets::by_name(name) else {
            eprintln!("buildnet-fuzz: cannot set up target {name}");
            return ExitCode::from(2);
        };
        let report = match &args.replay {
            Some(file) => match std::fs::read(file) {
                Ok(input) => run::replay(target, input, &args.opts),
                Err(e) => {
                    eprintln!("buildnet-fuzz: {}: {e}", file.display());
                    return ExitCode::from(2);
                }
            },
            None => run::run(target, &args.opts),
        };
        println!("{}", report.line());
        if args.replay.is_some() || args.outcomes {
            for (outcome, n) in &report.outcomes {
                println!("  {n:>9}  {outcome}");
            }
        }
        for f in &report.failures {
            println!(
                "  FAILED input #{} ({}): {}{}",
                f.index,
                f.kind.as_str(),
                f.detail,
                f.saved.as_ref().map(|p| format!(" [{}]", p.display())).unwrap_or_default()
            );
        }
        failed |= report.failure_count() > 0;
        total += report.elapsed;
    }
    println!("total {:.1} s", total.as_secs_f64());
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
