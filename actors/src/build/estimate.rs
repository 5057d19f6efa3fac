//! Build-time estimates (plan §9): per-package durations learned from history, cached packages
//! counted as near zero, and the DAG scheduled over the cores the build may use. Without history
//! a package is estimated from its input size, with low confidence.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Plan §9.2's factors behind one package's estimate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EstimationFactors {
    /// Recorded speed of the nodes it ran on against the node expected to run it (CPU frequency
    /// until benchmarks score nodes); 1.0 when unknown.
    pub cpu_factor: f64,
    pub memory_factor: f64,
    pub storage_factor: f64,
    /// Cores the package gets (its `cores`).
    pub parallel_speedup: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PackageEstimate {
    pub package: String,
    pub duration_ms: u64,
    /// Its result is in the action cache: it will not run.
    pub cached: bool,
    /// Recorded runs the estimate is based on.
    pub samples: usize,
    pub confidence: f64,
    pub factors: EstimationFactors,
}

/// Plan §9.2's `BuildEstimation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BuildEstimation {
    pub total_duration_ms: u64,
    pub package_estimates: Vec<PackageEstimate>,
    /// Sum of package times over the scheduled wall time.
    pub parallelization_factor: f64,
    pub network_overhead_ms: u64,
    /// 0.0–1.0.
    pub confidence: f64,
    /// The range the real time should fall in at this confidence.
    pub low_ms: u64,
    pub high_ms: u64,
    /// Cores the schedule assumed.
    pub cores: u64,
}

impl BuildEstimation {
    /// Plan §9.2's text.
    pub fn format_human(&self) -> String {
        let confidence = match self.confidence {
            c if c > 0.8 => "high",
            c if c > 0.5 => "medium",
            _ => "low",
        };
        format!(
            "Estimated time: ~{:.1} seconds ({} confidence, {:.1}–{:.1} s)\nParallelization: {:.1}x speedup on {} cores\nNetwork overhead: {}ms",
            self.total_duration_ms as f64 / 1000.0,
            confidence,
            self.low_ms as f64 / 1000.0,
            self.high_ms as f64 / 1000.0,
            self.parallelization_factor,
            self.cores,
            self.network_overhead_ms
        )
    }
}

/// What is known about one package before estimating.
#[derive(Debug, Clone)]
pub struct PackageFacts {
    pub name: String,
    pub deps: Vec<String>,
    pub cores: u64,
    /// Recorded durations (ms) of real runs, newest first, each with the CPU MHz of its node.
    pub history: Vec<(u64, u64)>,
    pub cached: bool,
    pub input_bytes: u64,
}

/// Time for a package that has never run: process start plus reading its inputs.
fn unknown_package_ms(input_bytes: u64) -> u64 {
    100 + input_bytes / 20_000 // ~20 MB/s of source compiled: a deliberately rough prior
}

/// Estimates a package from its history, scaled to a node of `target_mhz`.
pub fn package_estimate(f: &PackageFacts, target_mhz: u64) -> PackageEstimate {
    let unit = |cpu_factor| EstimationFactors {
        cpu_factor,
        memory_factor: 1.0,
        storage_factor: 1.0,
        parallel_speedup: f.cores as f64,
    };
    if f.cached {
        return PackageEstimate {
            package: f.name.clone(),
            duration_ms: 0,
            cached: true,
            samples: f.history.len(),
            confidence: 0.95,
            factors: unit(1.0),
        };
    }
    let recent: Vec<(u64, u64)> = f.history.iter().take(5).copied().collect();
    if recent.is_empty() {
        return PackageEstimate {
            package: f.name.clone(),
            duration_ms: unknown_package_ms(f.input_bytes),
            cached: false,
            samples: 0,
            confidence: 0.2,
            factors: unit(1.0),
        };
    }
    let mut scaled: Vec<f64> = recent
        .iter()
        .map(|&(ms, mhz)| {
            let factor = if mhz > 0 && target_mhz > 0 { mhz as f64 / target_mhz as f64 } else { 1.0 };
            ms as f64 * factor
        })
        .collect();
    scaled.sort_by(f64::total_cmp);
    let median = scaled[scaled.len() / 2];
    let raw_median = {
        let mut r: Vec<u64> = recent.iter().map(|x| x.0).collect();
        r.sort();
        r[r.len() / 2] as f64
    };
    let cpu_factor = if raw_median > 0.0 { median / raw_median } else { 1.0 };
    let confidence = (0.5 + 0.15 * recent.len() as f64).min(0.9);
    PackageEstimate {
        package: f.name.clone(),
        duration_ms: median.round() as u64,
        cached: false,
        samples: recent.len(),
        confidence,
        factors: unit(cpu_factor),
    }
}

/// Schedules the DAG on `cores` (each package takes its own core count, at most `cores`):
/// dependencies first, longest-ready-first. Returns the wall time.
pub fn makespan(
    order: &[String],
    facts: &BTreeMap<String, PackageFacts>,
    durations: &BTreeMap<String, u64>,
    cores: u64,
) -> u64 {
    let cores = cores.max(1);
    let mut finish: BTreeMap<&str, u64> = BTreeMap::new();
    // Free times of each core slot.
    let mut slots: Vec<u64> = vec![0; cores.min(4096) as usize];
    for name in order {
        let Some(f) = facts.get(name) else { continue };
        let ready = f.deps.iter().filter_map(|d| finish.get(d.as_str()).copied()).max().unwrap_or(0);
        let need = (f.cores.clamp(1, cores)) as usize;
        slots.sort();
        // The package starts when it is ready and `need` slots are free.
        let start = ready.max(slots[need - 1]);
        let end = start + durations.get(name).copied().unwrap_or(0);
        for s in slots.iter_mut().take(need) {
            *s = end;
        }
        finish.insert(name, end);
    }
    finish.values().copied().max().unwrap_or(0)
}

/// The whole estimate.
pub fn estimate(
    order: &[String],
    facts: &BTreeMap<String, PackageFacts>,
    cores: u64,
    target_mhz: u64,
    network_overhead_ms: u64,
) -> BuildEstimation {
    let packages: Vec<PackageEstimate> =
        order.iter().filter_map(|n| facts.get(n)).map(|f| package_estimate(f, target_mhz)).collect();
    let durations: BTreeMap<String, u64> = packages.iter().map(|p| (p.package.clone(), p.duration_ms)).collect();
    let wall = makespan(order, facts, &durations, cores);
    let sum: u64 = durations.values().sum();
    let total = wall + network_overhead_ms;
    let weight: f64 = packages.iter().map(|p| p.duration_ms.max(1) as f64).sum();
    let confidence = if weight > 0.0 {
        packages.iter().map(|p| p.confidence * p.duration_ms.max(1) as f64).sum::<f64>() / weight
    } else {
        0.2
    };
    let spread = 1.0 - confidence;
    BuildEstimation {
        total_duration_ms: total,
        parallelization_factor: if wall > 0 { sum as f64 / wall as f64 } else { 1.0 },
        network_overhead_ms,
        confidence,
        low_ms: (total as f64 * (1.0 - spread)).round() as u64,
        high_ms: (total as f64 * (1.0 + spread)).round() as u64 + 50,
        cores,
        package_estimates: packages,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(name: &str, deps: &[&str], history: &[u64], cached: bool) -> PackageFacts {
        PackageFacts {
            name: name.into(),
            deps: deps.iter().map(|d| d.to_string()).collect(),
            cores: 1,
            history: history.iter().map(|&ms| (ms, 0)).collect(),
            cached,
            input_bytes: 0,
        }
    }

    #[test]
    fn the_dag_is_scheduled_over_the_cores() {
        let f: BTreeMap<String, PackageFacts> = [
            facts("a", &[], &[100], false),
            facts("b", &[], &[100], false),
            facts("c", &[], &[100], false),
            facts("link", &["a", "b", "c"], &[50], false),
        ]
        .into_iter()
        .map(|f| (f.name.clone(), f))
        .collect();
        let order: Vec<String> = ["a", "b", "c", "link"].iter().map(|s| s.to_string()).collect();
        let one = estimate(&order, &f, 1, 0, 0);
        assert_eq!(one.total_duration_ms, 350);
        let three = estimate(&order, &f, 3, 0, 0);
        assert_eq!(three.total_duration_ms, 150, "three compiles in parallel, then the link");
        assert!((three.parallelization_factor - 350.0 / 150.0).abs() < 1e-9);
    }

    #[test]
    fn history_cache_and_speed_shape_a_package() {
        let cached = package_estimate(&facts("x", &[], &[500], true), 0);
        assert_eq!((cached.duration_ms, cached.cached), (0, true));
        let learned = package_estimate(&facts("x", &[], &[100, 120, 90, 5000, 110], false), 0);
        assert_eq!(learned.duration_ms, 110, "the median resists an outlier");
        assert!(learned.confidence > 0.8);
        let fresh = package_estimate(&PackageFacts { input_bytes: 2_000_000, ..facts("x", &[], &[], false) }, 0);
        assert_eq!(fresh.duration_ms, 200);
        assert!(fresh.confidence < 0.3);
        let mut slow_history = facts("x", &[], &[], false);
        slow_history.history = vec![(200, 1000)];
        let faster_target = package_estimate(&slow_history, 2000);
        assert_eq!(faster_target.duration_ms, 100, "a node twice as fast halves the time");
        assert!((faster_target.factors.cpu_factor - 0.5).abs() < 1e-9);
    }

    #[test]
    fn format_human_reads_like_the_plan() {
        let e = estimate(
            &["a".to_string()],
            &[("a".to_string(), facts("a", &[], &[1500], false))].into_iter().collect(),
            2,
            0,
            12,
        );
        let text = e.format_human();
        assert!(text.starts_with("Estimated time: ~1.5 seconds (medium confidence"), "{text}");
        assert!(text.contains("Network overhead: 12ms"));
    }
}
