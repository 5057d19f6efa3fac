//! Benchmark figures (plan §8.1) as nodes record and advertise them.

use std::path::Path;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Plan §8.1's CPU result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CpuBenchmarkResult {
    /// Work units (the odd primes below 10 000 counted by trial division) per second on one
    /// thread, per second it ran on a core (on an idle machine, per
    /// wall second).
    pub single_core_score: f64,
    /// Work units per second on every core at once: each thread's rate, summed.
    pub multi_core_score: f64,
    /// multi / (single × cores), 0–1.
    pub parallel_efficiency: f64,
    pub effective_cores: usize,
    pub threads: usize,
    pub duration_ms: u64,
    /// Why this run is not the node's figure — other work ran during it — or none when it is.
    /// A disturbed result is recorded and shown but never advertised to placement.
    #[serde(default)]
    pub disturbed: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MemoryBenchmarkResult {
    pub bandwidth_gbps: f64,
    pub latency_ns: f64,
    pub duration_ms: u64,
    /// Why this run is not the node's figure — other work ran during it — or none when it is.
    /// A disturbed result is recorded and shown but never advertised to placement.
    #[serde(default)]
    pub disturbed: Option<String>,
}

/// Plan §8.1's storage result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StorageBenchmarkResult {
    pub path: String,
    /// nvme, ssd, hdd or network, from the figures (plan §2.3).
    pub storage_class: String,
    pub seq_read_mbps: f64,
    pub seq_write_mbps: f64,
    pub random_read_iops: u32,
    pub random_write_iops: u32,
    pub read_latency_us: u64,
    /// `direct` (O_DIRECT) or `fsync+fadvise` when the filesystem refuses O_DIRECT.
    pub method: String,
    pub file_mb: u64,
    pub duration_ms: u64,
    /// Why this run is not the node's figure — other work ran during it — or none when it is.
    /// A disturbed result is recorded and shown but never advertised to placement.
    #[serde(default)]
    pub disturbed: Option<String>,
}

/// Plan §8.1's network result: measured over the real, encrypted mesh link to one peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NetworkBenchmarkResult {
    /// The peer's node id.
    pub target_node: String,
    pub target_name: String,
    /// Median round trip of `samples` echoes through both nodes' mesh actors (ms).
    pub latency_ms: f64,
    pub min_latency_ms: f64,
    pub max_latency_ms: f64,
    /// Mean difference between consecutive round trips (RFC 3550's idea of jitter), ms.
    pub jitter_ms: f64,
    pub samples: u32,
    /// Megabits per second sent to the peer, until the peer confirmed every byte.
    pub upload_mbps: f64,
    /// Megabits per second received from the peer.
    pub download_mbps: f64,
    /// Payload bytes each way.
    pub bytes: u64,
    pub duration_ms: u64,
}

/// Plan §8.1's full result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BenchmarkResults {
    pub node_id: String,
    pub timestamp_ms: u64,
    pub duration_ms: u64,
    pub cpu: Option<CpuBenchmarkResult>,
    pub memory: Option<MemoryBenchmarkResult>,
    pub storage: Vec<StorageBenchmarkResult>,
    #[serde(default)]
    pub network: Vec<NetworkBenchmarkResult>,
    /// How long the run waited for another benchmark on this node to end first (ms).
    #[serde(default)]
    pub waited_ms: u64,
}

impl BenchmarkResults {
    /// The local parts other work disturbed: (kind, why).
    pub fn disturbed(&self) -> Vec<(&'static str, &str)> {
        let cpu = self.cpu.iter().filter_map(|c| c.disturbed.as_deref()).map(|w| ("cpu", w));
        let memory = self.memory.iter().filter_map(|m| m.disturbed.as_deref()).map(|w| ("memory", w));
        let storage = self.storage.iter().filter_map(|s| s.disturbed.as_deref()).map(|w| ("storage", w));
        cpu.chain(memory).chain(storage).collect()
    }

    /// Marks every local part disturbed for `why`, keeping the reason a part found itself.
    pub fn mark_disturbed(&mut self, why: &str) {
        let parts = self.cpu.iter_mut().map(|c| &mut c.disturbed);
        let parts = parts.chain(self.memory.iter_mut().map(|m| &mut m.disturbed));
        for d in parts.chain(self.storage.iter_mut().map(|s| &mut s.disturbed)) {
            d.get_or_insert_with(|| why.to_string());
        }
    }
}

/// A node's latest figures, advertised to the pool: placement ranks nodes by them, the estimator
/// scales durations by them, and the coordinator schedules benchmarks by `next_due_ms`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BenchmarkScores {
    pub cpu: Option<CpuBenchmarkResult>,
    pub memory: Option<MemoryBenchmarkResult>,
    /// The latest result per path.
    pub storage: Vec<StorageBenchmarkResult>,
    /// The latest result per peer.
    pub network: Vec<NetworkBenchmarkResult>,
    /// When the newest of these was measured (0: never).
    pub measured_at_ms: u64,
    /// When this node wants its next scheduled benchmark; none when the schedule is off.
    pub next_due_ms: Option<u64>,
    /// A benchmark is running on this node now.
    pub running: bool,
}

impl BenchmarkScores {
    /// Folds newer results in, keeping one per storage path and one per peer. Disturbed parts
    /// are left out: other work skewed them, so placement must not rank the node by them.
    /// `measured_at_ms` still moves on, so the schedule sees the run ended.
    pub fn merge(&mut self, r: &BenchmarkResults) {
        if let Some(c) = r.cpu.as_ref().filter(|c| c.disturbed.is_none()) {
            self.cpu = Some(c.clone());
        }
        if let Some(m) = r.memory.as_ref().filter(|m| m.disturbed.is_none()) {
            self.memory = Some(m.clone());
        }
        for s in r.storage.iter().filter(|s| s.disturbed.is_none()) {
            self.storage.retain(|x| x.path != s.path);
            self.storage.push(s.clone());
        }
        for n in &r.network {
            self.network.retain(|x| x.target_node != n.target_node);
            self.network.push(n.clone());
        }
        self.measured_at_ms = self.measured_at_ms.max(r.timestamp_ms);
    }

    /// Work units per second on one core, the figure nodes are compared by.
    pub fn cpu_single(&self) -> Option<f64> {
        self.cpu.as_ref().map(|c| c.single_core_score).filter(|s| *s > 0.0)
    }

    /// The storage result for the volume holding `path` (the longest matching prefix).
    pub fn storage_for(&self, path: &str) -> Option<&StorageBenchmarkResult> {
        self.storage.iter().filter(|s| Path::new(path).starts_with(&s.path)).max_by_key(|s| s.path.len())
    }

    pub fn network_to(&self, node: &str) -> Option<&NetworkBenchmarkResult> {
        self.network.iter().find(|n| n.target_node == node)
    }
}
