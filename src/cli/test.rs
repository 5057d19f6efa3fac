//! `buildnet test cpu|memory|storage <path>|network <node>|all` and `buildnet node benchmark`:
//! measure this node's resources and its links to peers (plan §8) and print the figures.

use clap::Subcommand;
use serde_json::json;

use buildnet_actors::bench::{BenchOptions, BenchmarkResults, NetworkBenchmarkResult, StorageBenchmarkResult};

use super::output::{print_facts, spinner};
use super::{CliError, Ctx};

#[derive(Subcommand)]
pub enum TestCommand {
    /// CPU: single-core and all-core scores (work units/s), parallel efficiency
    Cpu {
        /// Seconds of one-core work and as many of all-core work, split into five rounds (at least
        /// 0.2 s a round); a round disturbed by other work is run again, so a run takes at least
        /// twice this
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
    },
    /// Memory: bandwidth and latency
    Memory,
    /// Storage: sequential and random I/O of a directory's volume, page cache bypassed
    Storage {
        path: String,
        /// Test file size in MB
        #[arg(long, default_value_t = 256)]
        size_mb: u64,
    },
    /// Network: latency, jitter and bandwidth of the encrypted mesh link to a peer
    Network {
        /// The peer's name or node id
        node: String,
        /// Payload each way in MB
        #[arg(long, default_value_t = 32)]
        size_mb: u64,
        /// Round trips to time
        #[arg(long, default_value_t = 50)]
        samples: u32,
    },
    /// CPU, memory, every storage volume of the node and the link to every online peer
    All,
}

fn print_network(n: &NetworkBenchmarkResult) {
    print_facts(&[
        ("Network", format!("to {} ({})", n.target_name, n.target_node)),
        (
            "Latency",
            format!(
                "{:.2} ms median of {} (min {:.2}, max {:.2}), jitter {:.2} ms",
                n.latency_ms, n.samples, n.min_latency_ms, n.max_latency_ms, n.jitter_ms
            ),
        ),
        (
            "Bandwidth",
            format!(
                "upload {:.0} Mbit/s, download {:.0} Mbit/s ({} MB each way)",
                n.upload_mbps,
                n.download_mbps,
                n.bytes >> 20
            ),
        ),
    ]);
}

/// The line a disturbed figure gets: it was recorded, not advertised.
fn disturbed_fact(why: &Option<String>) -> Option<(&'static str, String)> {
    why.as_ref().map(|w| ("Disturbed", format!("{w} — recorded, not advertised to placement")))
}

fn print_storage(s: &StorageBenchmarkResult) {
    let mut facts = vec![
        ("Storage", format!("{} — class {} ({}, {} MB file)", s.path, s.storage_class, s.method, s.file_mb)),
        ("Sequential", format!("read {:.0} MB/s, write {:.0} MB/s", s.seq_read_mbps, s.seq_write_mbps)),
        (
            "Random 4 KiB",
            format!(
                "read {} IOPS, write {} IOPS, read latency {} µs",
                s.random_read_iops, s.random_write_iops, s.read_latency_us
            ),
        ),
    ];
    facts.extend(disturbed_fact(&s.disturbed));
    print_facts(&facts);
}

pub fn print_results(r: &BenchmarkResults) {
    if r.waited_ms > 0 {
        print_facts(&[("Waited", format!("{:.1} s for the benchmark already running here", r.waited_ms as f64 / 1e3))]);
    }
    if let Some(c) = &r.cpu {
        let mut facts = vec![
            ("CPU single", format!("{:.1} units/s", c.single_core_score)),
            ("CPU all", format!("{:.1} units/s on {} threads", c.multi_core_score, c.threads)),
            ("Efficiency", format!("{:.2} ({} effective cores)", c.parallel_efficiency, c.effective_cores)),
        ];
        facts.extend(disturbed_fact(&c.disturbed));
        print_facts(&facts);
    }
    if let Some(m) = &r.memory {
        let mut facts = vec![("Memory", format!("{:.1} GB/s, {:.0} ns latency", m.bandwidth_gbps, m.latency_ns))];
        facts.extend(disturbed_fact(&m.disturbed));
        print_facts(&facts);
    }
    for s in &r.storage {
        print_storage(s);
    }
    for n in &r.network {
        print_network(n);
    }
}

/// Says so (on stderr) when another benchmark runs on the node: this one waits for it, the node
/// measures one at a time.
async fn say_if_another_runs(ctx: &Ctx) {
    let status: Result<serde_json::Value, CliError> = ctx.client.get("/api/node").await;
    if status.is_ok_and(|s| s["benchmarks"]["running"] == true) {
        eprintln!("a benchmark is already running on this node (scheduled, or asked for elsewhere); this one starts when it ends");
    }
}

/// What a benchmark phase measures, as the spinner says it while it runs.
fn describe(cmd: &TestCommand) -> String {
    match cmd {
        TestCommand::Cpu { seconds } => format!(
            "CPU: integer work in five rounds of one core, then every core ({seconds} s of each), the fastest undisturbed round"
        ),
        TestCommand::Memory => "memory: copy bandwidth, then dependent-read latency".into(),
        TestCommand::Storage { path, size_mb } => format!(
            "storage at {path}: {size_mb} MB written and read sequentially, random 4 KiB writes and reads, read latency (page cache bypassed)"
        ),
        TestCommand::Network { node, size_mb, samples } => {
            format!("the link to {node}: {samples} round trips, then {size_mb} MB up and {size_mb} MB down")
        }
        TestCommand::All => "everything".into(),
    }
}

/// The phases of `test all`, one request each (results merge into the node's figures), so the
/// spinner can say what runs and each phase's figures print as soon as it ends.
const PHASES: [(&str, &str); 4] = [
    ("cpu", "CPU: integer work in rounds of one core, then every core"),
    ("memory", "memory: copy bandwidth, then dependent-read latency"),
    ("storage", "storage: every volume of the node, page cache bypassed"),
    ("network", "network: the mesh link to every online peer"),
];

async fn run_all(ctx: &Ctx) -> Result<(), CliError> {
    say_if_another_runs(ctx).await;
    let mut all: Option<BenchmarkResults> = None;
    for (i, (kind, what)) in PHASES.iter().enumerate() {
        let bar = spinner(&format!("[{}/{}] measuring {what}…", i + 1, PHASES.len()));
        let r: Result<BenchmarkResults, CliError> =
            ctx.client.post("/api/node/benchmark", Some(json!({ "types": [kind] }))).await;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let r = r?;
        if ctx.format == super::output::Format::Table {
            print_results(&r);
        }
        match &mut all {
            None => all = Some(r),
            Some(a) => {
                a.duration_ms += r.duration_ms;
                a.waited_ms += r.waited_ms;
                a.cpu = a.cpu.take().or(r.cpu);
                a.memory = a.memory.take().or(r.memory);
                a.storage.extend(r.storage);
                a.network.extend(r.network);
            }
        }
    }
    ctx.printed_as_document(&all);
    Ok(())
}

pub async fn run(ctx: &Ctx, cmd: TestCommand) -> Result<(), CliError> {
    if matches!(cmd, TestCommand::All) {
        return run_all(ctx).await;
    }
    say_if_another_runs(ctx).await;
    let bar = spinner(&format!("measuring {}…", describe(&cmd)));
    if let Some(b) = &bar {
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
            b.set_style(style);
        }
    }
    let outcome = async {
        match cmd {
            TestCommand::Storage { path, size_mb } => {
                let r: StorageBenchmarkResult =
                    ctx.client.post("/api/test/storage", Some(json!({ "path": path, "file_mb": size_mb }))).await?;
                Ok::<_, CliError>(serde_json::to_value(r).unwrap_or_default())
            }
            TestCommand::Network { node, size_mb, samples } => {
                let r: NetworkBenchmarkResult = ctx
                    .client
                    .post("/api/test/network", Some(json!({ "node": node, "size_mb": size_mb, "samples": samples })))
                    .await?;
                Ok(serde_json::to_value(r).unwrap_or_default())
            }
            other => {
                let body = match other {
                    TestCommand::Cpu { seconds } => {
                        if !(0.1..=60.0).contains(&seconds) {
                            return Err(CliError::Usage("--seconds must be between 0.1 and 60".into()));
                        }
                        let options = BenchOptions { cpu_secs: seconds, ..BenchOptions::default() };
                        json!({ "types": ["cpu"], "options": options })
                    }
                    TestCommand::Memory => json!({ "types": ["memory"] }),
                    _ => json!({}),
                };
                let r: BenchmarkResults = ctx.client.post("/api/node/benchmark", Some(body)).await?;
                Ok(serde_json::to_value(r).unwrap_or_default())
            }
        }
    }
    .await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let value = outcome?;
    if ctx.printed_as_document(&value) {
        return Ok(());
    }
    if let Ok(r) = serde_json::from_value::<BenchmarkResults>(value.clone()) {
        print_results(&r);
    } else if let Ok(s) = serde_json::from_value::<StorageBenchmarkResult>(value.clone()) {
        print_storage(&s);
    } else if let Ok(n) = serde_json::from_value::<NetworkBenchmarkResult>(value) {
        print_network(&n);
    }
    Ok(())
}
