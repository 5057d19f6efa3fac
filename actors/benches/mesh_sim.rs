//! The simulated mesh (`buildnet_actors::simulation`) at several sizes: N real engines in one
//! process over in-memory links, with a worker and then the coordinator gone silent, and a
//! 40 | 60 % split written on both sides and healed.
//!
//! `cargo bench -p buildnet-actors --bench mesh_sim -- --nodes 10,50,200 [--latency-ms 5]
//! [--jitter-ms 5] [--loss 0.01] [--threads T] [--json]` — a table, or one JSON object per run.
//! `bench/scale.py` runs it with the targets beside each figure, and with `TMPDIR=/dev/shm` so
//! that the nodes' SQLite files are not all synced to one disk (see there).

use std::time::Duration;

use buildnet_actors::mesh::memory::LinkConditions;
use buildnet_actors::simulation::{run, Scenario};

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    let value = args.iter().position(|a| a == name).and_then(|i| args.get(i + 1))?;
    match value.parse() {
        Ok(v) => Some(v),
        Err(_) => {
            eprintln!("{name}: not a valid value: {value}");
            std::process::exit(2);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let json = args.iter().any(|a| a == "--json");
    let sizes: Vec<usize> = arg::<String>(&args, "--nodes")
        .map(|list| list.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10, 50]);
    let ms = |v: f64| Duration::from_secs_f64(v / 1000.0);
    let conditions = LinkConditions {
        latency: ms(arg(&args, "--latency-ms").unwrap_or(2.0)),
        jitter: ms(arg(&args, "--jitter-ms").unwrap_or(2.0)),
        loss: arg(&args, "--loss").unwrap_or(0.01),
        retransmit: ms(200.0),
    };
    if !json {
        println!(
            "{:>5} {:>9} {:>10} {:>6} {:>12} {:>11} {:>14} {:>12} {:>13} {:>9} {:>5}",
            "nodes",
            "start s",
            "online ms",
            "links",
            "bytes/node/s",
            "cpu ms/n/s",
            "offline det ms",
            "failover ms",
            "split det ms",
            "heal ms",
            "lost"
        );
    }
    for n in sizes {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => {
                eprintln!("a temporary directory: {e}");
                std::process::exit(1);
            }
        };
        let mut scenario = Scenario::new(n);
        scenario.conditions = conditions;
        if let Some(threads) = arg(&args, "--threads") {
            scenario.threads = threads;
        }
        let report = match actix_rt::System::new().block_on(run(dir.path(), &scenario)) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{n} nodes: {e}");
                std::process::exit(1);
            }
        };
        if json {
            println!("{}", serde_json::to_string(&report).unwrap_or_default());
        } else {
            println!(
                "{:>5} {:>9.1} {:>10} {:>6.1} {:>12.0} {:>11.2} {:>14} {:>12} {:>13} {:>9} {:>5}",
                report.nodes,
                report.start_ms as f64 / 1000.0,
                report.all_online_ms,
                report.links_per_node,
                report.bytes_per_node_per_s,
                report.cpu_ms_per_node_per_s,
                report.offline_detect_ms,
                report.coordinator_failover_ms,
                report.partition_detect_ms,
                report.partition_heal_ms,
                report.lost_entries
            );
        }
    }
}
