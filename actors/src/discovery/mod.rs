//! Resource discovery: what this machine has (CPU, memory, storage, tools, runtimes, network),
//! with the node config's limits applied to what it offers.
//!
//! A scan is blocking work (it reads /proc and runs tools), so callers run it off the async
//! threads. It never fails as a whole: a tool that misbehaves is reported with its error.

pub mod probe;
pub mod tools;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sysinfo::{CpuRefreshKind, Disks, MemoryRefreshKind, Networks, RefreshKind, System};

use crate::config::NodeConfig;
use crate::wire::{self, CpuInfo, MemoryInfo, NetworkInterface, NodeResources, StorageVolume};

const GIB: f64 = (1u64 << 30) as f64;

/// What a scan needs to know besides the machine itself.
pub struct ScanInput<'a> {
    pub config: &'a NodeConfig,
    pub data_dir: &'a Path,
    /// Directories searched for tools (normally `$PATH`).
    pub search_path: Option<std::ffi::OsString>,
}

/// Scans the whole machine.
pub fn scan(input: &ScanInput<'_>) -> NodeResources {
    let started = Instant::now();
    let timeout = Duration::from_millis(input.config.scan.probe_timeout_ms);
    let (tools, runtimes) = std::thread::scope(|s| {
        let probes = s.spawn(|| tools::scan(&input.config.tool_overrides, input.search_path.as_deref(), timeout));
        probes.join().unwrap_or_default()
    });
    let sys = System::new_with_specifics(
        RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing().with_frequency())
            .with_memory(MemoryRefreshKind::nothing().with_ram()),
    )
    .ok();
    NodeResources {
        cpu: scan_cpu(sys.as_ref(), input.config),
        memory: scan_memory(sys.as_ref(), input.config),
        storage: scan_storage(input.config, input.data_dir),
        tools,
        runtimes,
        network: scan_network(),
        scanned_at_ms: wire::now_ms(),
        scan_duration_ms: started.elapsed().as_millis() as u64,
    }
}

fn scan_cpu(sys: Option<&System>, config: &NodeConfig) -> CpuInfo {
    let cpus = sys.map(|s| s.cpus()).unwrap_or_default();
    let count = usable_cores().unwrap_or(cpus.len()).max(1);
    let limits = &config.resource_limits.cpu;
    let after_reserved = count.saturating_sub(limits.reserved_cores.len()).max(1);
    let offered = limits.max_cores.map_or(after_reserved, |m| m.min(after_reserved));
    CpuInfo {
        count,
        physical_count: System::physical_core_count().ok(),
        offered,
        architecture: std::env::consts::ARCH.to_string(),
        model: cpus.first().map(|c| c.brand().trim().to_string()).unwrap_or_default(),
        frequency_mhz: cpus.iter().map(|c| c.frequency()).max().unwrap_or(0),
        features: cpu_features(),
    }
}

/// Cores this process may run on, counted as `nproc` counts them (the affinity mask).
#[cfg(target_os = "linux")]
fn usable_cores() -> Option<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for pid 0 (this process).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        Some(libc::CPU_COUNT(&set) as usize)
    }
}

#[cfg(not(target_os = "linux"))]
fn usable_cores() -> Option<usize> {
    std::thread::available_parallelism().ok().map(|n| n.get())
}

/// Instruction-set extensions the CPU has, by the standard library's runtime detection.
fn cpu_features() -> Vec<String> {
    #[allow(unused_mut)]
    let mut features: Vec<&str> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($name:tt => $label:expr),*) => {
                $(if std::arch::is_x86_feature_detected!($name) { features.push($label); })*
            };
        }
        probe!("sse2" => "sse2", "sse3" => "sse3", "ssse3" => "ssse3", "sse4.1" => "sse4_1",
               "sse4.2" => "sse4_2", "popcnt" => "popcnt", "avx" => "avx", "avx2" => "avx2",
               "fma" => "fma", "bmi1" => "bmi1", "bmi2" => "bmi2", "aes" => "aes",
               "pclmulqdq" => "pclmulqdq", "sha" => "sha", "avx512f" => "avx512f",
               "avx512bw" => "avx512bw", "avx512vl" => "avx512vl");
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! probe {
            ($($name:tt),*) => {
                $(if std::arch::is_aarch64_feature_detected!($name) { features.push($name); })*
            };
        }
        probe!("neon", "aes", "sha2", "crc", "lse", "sve", "sve2");
    }
    features.into_iter().map(str::to_string).collect()
}

fn scan_memory(sys: Option<&System>, config: &NodeConfig) -> MemoryInfo {
    let (total, available) = sys.map_or((0, 0), |s| (s.total_memory(), s.available_memory()));
    let limits = &config.resource_limits.memory;
    let reserved = limits.reserved_gb.map_or(0, |gb| (gb * GIB) as u64);
    let after_reserved = total.saturating_sub(reserved);
    let offered = limits.max_gb.map_or(after_reserved, |gb| ((gb * GIB) as u64).min(after_reserved));
    MemoryInfo { total_bytes: total, available_bytes: available, offered_bytes: offered }
}

fn scan_storage(config: &NodeConfig, data_dir: &Path) -> Vec<StorageVolume> {
    let disks = Disks::new_with_refreshed_list().ok();
    let mut paths: Vec<(PathBuf, String, Option<f64>)> = vec![(data_dir.to_path_buf(), "data".to_string(), None)];
    for s in &config.resource_limits.storage {
        paths.push((s.path.clone(), s.purpose.clone(), s.max_gb));
    }
    paths
        .into_iter()
        .filter_map(|(path, purpose, max_gb)| match volume(&path, disks.as_ref()) {
            Ok((mount_point, total, available, storage_type)) => Some(StorageVolume {
                path: path.display().to_string(),
                mount_point,
                total_bytes: total,
                available_bytes: available,
                offered_bytes: max_gb.map_or(available, |gb| ((gb * GIB) as u64).min(available)),
                storage_type,
                purpose,
            }),
            Err(e) => {
                log::warn!("storage {}: {e}; not offered", path.display());
                None
            }
        })
        .collect()
}

/// Mount point, total bytes, available bytes and type of the volume holding `path`.
fn volume(path: &Path, disks: Option<&Disks>) -> std::io::Result<(String, u64, u64, String)> {
    let path = path.canonicalize()?;
    let (total, available) = statvfs(&path)?;
    let disk = disks.and_then(|d| {
        d.iter()
            .filter(|disk| path.starts_with(disk.mount_point()))
            .max_by_key(|disk| disk.mount_point().as_os_str().len())
    });
    let (mount, kind) = match disk {
        Some(d) => (
            d.mount_point().display().to_string(),
            match d.kind() {
                sysinfo::DiskKind::SSD => "ssd",
                sysinfo::DiskKind::HDD => "hdd",
                sysinfo::DiskKind::Unknown(_) => "unknown",
            },
        ),
        None => ("/".to_string(), "unknown"),
    };
    Ok((mount, total, available, kind.to_string()))
}

/// Total and available bytes of the filesystem holding `path`, as `df` counts them.
fn statvfs(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: c_path is a valid NUL-terminated string and stat points to writable memory of the
    // right type; statvfs fills it completely when it returns 0.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: rc == 0 means statvfs initialised the struct.
    let stat = unsafe { stat.assume_init() };
    // The field types differ between platforms (u32 on some); on Linux they are already u64.
    #[allow(clippy::useless_conversion)]
    let (frsize, blocks, avail) = (u64::from(stat.f_frsize), u64::from(stat.f_blocks), u64::from(stat.f_bavail));
    Ok((blocks * frsize, avail * frsize))
}

fn scan_network() -> Vec<NetworkInterface> {
    let Ok(networks) = Networks::new_with_refreshed_list() else {
        return Vec::new();
    };
    let mut list: Vec<NetworkInterface> = networks
        .iter()
        .map(|(name, data)| NetworkInterface {
            name: name.to_string_lossy().into_owned(),
            addresses: data.ip_networks().iter().map(|n| n.to_string()).collect(),
            mac_address: data.mac_address().to_string(),
        })
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_with(config: &NodeConfig, dir: &Path) -> NodeResources {
        scan(&ScanInput { config, data_dir: dir, search_path: Some("/nonexistent".into()) })
    }

    #[test]
    fn limits_change_what_is_offered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let free = scan_with(&NodeConfig::default(), dir.path());
        assert_eq!(free.cpu.offered, free.cpu.count);
        assert_eq!(free.memory.offered_bytes, free.memory.total_bytes);

        let limited = NodeConfig::parse("t", r#"{"resource_limits":{"cpu":{"max_cores":1},"memory":{"max_gb":0.5}}}"#)
            .expect("valid");
        let r = scan_with(&limited, dir.path());
        assert_eq!(r.cpu.offered, 1);
        assert_eq!(r.memory.offered_bytes, (0.5 * GIB) as u64);
    }

    #[test]
    fn data_dir_and_configured_paths_are_volumes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = dir.path().join("cache");
        std::fs::create_dir(&cache).expect("mkdir");
        let config = NodeConfig::parse(
            "t",
            &format!(
                r#"{{"resource_limits":{{"storage":[{{"path":"{}","max_gb":1,"purpose":"cache"}}]}}}}"#,
                cache.display()
            ),
        )
        .expect("valid");
        let r = scan_with(&config, dir.path());
        assert_eq!(r.storage.len(), 2);
        assert_eq!(r.storage[0].purpose, "data");
        assert_eq!(r.storage[1].purpose, "cache");
        assert!(r.storage[1].offered_bytes <= 1 << 30);
        assert!(r.storage[0].total_bytes >= r.storage[0].available_bytes);
        assert!(r.storage[0].total_bytes > 0);
    }

    #[test]
    fn cpu_and_memory_are_real() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = scan_with(&NodeConfig::default(), dir.path());
        assert!(r.cpu.count >= 1);
        assert!(r.memory.total_bytes > 0);
        assert!(r.memory.available_bytes <= r.memory.total_bytes);
        assert_eq!(r.cpu.architecture, std::env::consts::ARCH);
    }
}
