//! The node's own configuration, `node-config.json` (plan §2.4): limits on what it offers, tool
//! overrides, network and scheduling settings.
//!
//! A bad file must stop `buildnet up` before it serves anything, with one line that names the
//! file, the field path and what is wrong, so parsing goes through `serde_path_to_error` and every
//! semantic check reports the same way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default time a tool's version probe may take before it is abandoned.
pub const DEFAULT_PROBE_TIMEOUT_MS: u64 = 5_000;

/// Storage purposes a configured path may have.
pub const STORAGE_PURPOSES: [&str; 5] = ["cache", "builds", "build", "output", "scratch"];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// `"auto"` (the only accepted value): a node's id is derived from its key.
    pub node_id: Option<String>,
    pub node_name: Option<String>,
    pub node_tags: Vec<String>,
    pub resource_limits: ResourceLimits,
    pub tool_overrides: BTreeMap<String, ToolOverride>,
    pub network: NetworkConfig,
    pub scheduling: SchedulingConfig,
    pub scan: ScanConfig,
    pub benchmark: BenchmarkConfig,
    pub sandbox: SandboxConfig,
}

/// How packages must be contained on this node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// Contain packages with at most this level (default: the strongest the kernel offers) —
    /// for a node whose packages need more than their sandbox allows, at the cost of safety.
    pub level: Option<crate::wire::SandboxLevel>,
    /// The weakest containment under which this node runs peers' packages: `none`, `landlock`
    /// or `landlock+namespaces`. A node whose kernel offers less refuses them (its own builds
    /// still run).
    pub require: crate::wire::SandboxLevel,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResourceLimits {
    pub cpu: CpuLimits,
    pub memory: MemoryLimits,
    pub storage: Vec<StorageLimit>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CpuLimits {
    /// At most this many cores are offered.
    pub max_cores: Option<usize>,
    /// Core indices kept for the system; each reduces what is offered by one.
    pub reserved_cores: Vec<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryLimits {
    pub max_gb: Option<f64>,
    /// Kept for the OS and other programs.
    pub reserved_gb: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageLimit {
    pub path: PathBuf,
    pub max_gb: Option<f64>,
    #[serde(default = "default_purpose")]
    pub purpose: String,
}

fn default_purpose() -> String {
    "builds".to_string()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToolOverride {
    pub path: Option<PathBuf>,
    pub enabled: bool,
}

impl Default for ToolOverride {
    fn default() -> Self {
        ToolOverride { path: None, enabled: true }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    pub listen_port: Option<u16>,
    pub advertise_address: Option<String>,
    pub peers: Vec<String>,
    /// HTTPS for the HTTP face: `false` (the default), `true` (a self-signed certificate made at
    /// first start and kept in the data dir) or `{"cert": "/path/cert.pem", "key": "/path/key.pem"}`.
    pub tls: TlsSetting,
}

/// `network.tls`: whether and with which certificate a node serves HTTPS.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum TlsSetting {
    /// Plain HTTP.
    #[default]
    Off,
    /// A self-signed certificate, generated at first start and kept in the data dir.
    SelfSigned,
    /// A PEM certificate chain and its PEM private key (absolute paths).
    Files { cert: PathBuf, key: PathBuf },
}

impl TlsSetting {
    pub fn enabled(&self) -> bool {
        !matches!(self, TlsSetting::Off)
    }
}

/// The object form of `network.tls`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
}

impl Serialize for TlsSetting {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TlsSetting::Off => s.serialize_bool(false),
            TlsSetting::SelfSigned => s.serialize_bool(true),
            TlsSetting::Files { cert, key } => TlsFiles { cert: cert.clone(), key: key.clone() }.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for TlsSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = TlsSetting;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false or {\"cert\": \"/path/cert.pem\", \"key\": \"/path/key.pem\"}")
            }
            fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<TlsSetting, E> {
                Ok(if on { TlsSetting::SelfSigned } else { TlsSetting::Off })
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<TlsSetting, E> {
                Ok(TlsSetting::Off)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<TlsSetting, A::Error> {
                // Through the map access itself, so a wrong field is named with its path.
                let files = TlsFiles::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(TlsSetting::Files { cert: files.cert, key: files.key })
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulingConfig {
    pub accept_remote_builds: bool,
    /// Higher is preferred, and wins the coordinator choice.
    pub priority_weight: f64,
    pub time_restrictions: TimeRestrictions,
}

impl Default for SchedulingConfig {
    fn default() -> Self {
        SchedulingConfig {
            accept_remote_builds: true,
            priority_weight: 1.0,
            time_restrictions: TimeRestrictions::default(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeRestrictions {
    /// Local times `HH:MM-HH:MM` during which only this node's own builds run here.
    pub local_only_hours: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScanConfig {
    /// How long one tool's version probe may run.
    pub probe_timeout_ms: u64,
}

impl Default for ScanConfig {
    fn default() -> Self {
        ScanConfig { probe_timeout_ms: DEFAULT_PROBE_TIMEOUT_MS }
    }
}

/// When this node measures itself (plan §8.3). The coordinator grants the runs one node at a
/// time, so two nodes' benchmarks never disturb each other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BenchmarkConfig {
    /// A quick benchmark (CPU, memory, data-dir storage, peers) shortly after start-up.
    pub on_start: bool,
    /// Hours between full scheduled benchmarks; 0 turns the schedule off.
    pub interval_hours: f64,
}

impl Default for BenchmarkConfig {
    fn default() -> Self {
        BenchmarkConfig { on_start: true, interval_hours: 24.0 }
    }
}

/// A configuration problem: which file, which field, what is wrong.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}: {field}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub field: String,
    pub message: String,
}

/// A `HH:MM-HH:MM` window in minutes after midnight; may wrap past midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoursWindow {
    pub start_minute: u32,
    pub end_minute: u32,
}

impl HoursWindow {
    pub fn parse(text: &str) -> Option<Self> {
        let (start, end) = text.split_once('-')?;
        let minute = |t: &str| -> Option<u32> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60 && t.trim().len() == 5).then_some(h * 60 + m)
        };
        Some(HoursWindow { start_minute: minute(start)?, end_minute: minute(end)? })
    }

    pub fn contains(&self, minute_of_day: u32) -> bool {
        if self.start_minute <= self.end_minute {
            (self.start_minute..self.end_minute).contains(&minute_of_day)
        } else {
            minute_of_day >= self.start_minute || minute_of_day < self.end_minute
        }
    }
}

impl NodeConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            field: "(file)".into(),
            message: format!("cannot be read: {e}"),
        })?;
        NodeConfig::parse(&file, &text)
    }

    /// Parses config text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<NodeConfig, ConfigError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let config: NodeConfig = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            ConfigError {
                file: file.to_string(),
                field: if path == "." { "(document)".into() } else { path },
                message: humanize_serde(&inner),
            }
        })?;
        config.validate(file)?;
        Ok(config)
    }

    /// Semantic checks that types alone do not express.
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let fail = |field: String, message: String| Err(ConfigError { file: file.to_string(), field, message });
        if let Some(id) = &self.node_id {
            if id != "auto" {
                return fail("node_id".into(), "must be \"auto\": a node's id is derived from its key".into());
            }
        }
        if let Some(name) = &self.node_name {
            if name.trim().is_empty() || name.len() > 64 {
                return fail("node_name".into(), "must be 1 to 64 characters".into());
            }
        }
        let hours = self.benchmark.interval_hours;
        if !hours.is_finite() || !(0.0..=8760.0).contains(&hours) {
            return fail("benchmark.interval_hours".into(), "must be between 0 (off) and 8760".into());
        }
        if self.resource_limits.cpu.max_cores == Some(0) {
            return fail("resource_limits.cpu.max_cores".into(), "must be at least 1".into());
        }
        let mem = &self.resource_limits.memory;
        for (field, value) in [("max_gb", mem.max_gb), ("reserved_gb", mem.reserved_gb)] {
            if let Some(v) = value {
                if !v.is_finite() || v < 0.0 || (field == "max_gb" && v == 0.0) {
                    return fail(
                        format!("resource_limits.memory.{field}"),
                        format!("must be a positive number of GB, got {v}"),
                    );
                }
            }
        }
        for (i, s) in self.resource_limits.storage.iter().enumerate() {
            if !s.path.is_absolute() {
                return fail(
                    format!("resource_limits.storage[{i}].path"),
                    format!("must be an absolute path, got '{}'", s.path.display()),
                );
            }
            if let Some(gb) = s.max_gb {
                if !gb.is_finite() || gb <= 0.0 {
                    return fail(
                        format!("resource_limits.storage[{i}].max_gb"),
                        format!("must be a positive number of GB, got {gb}"),
                    );
                }
            }
            if !STORAGE_PURPOSES.contains(&s.purpose.as_str()) {
                return fail(
                    format!("resource_limits.storage[{i}].purpose"),
                    format!("must be one of {}, got '{}'", STORAGE_PURPOSES.join(", "), s.purpose),
                );
            }
        }
        for (name, o) in &self.tool_overrides {
            if let Some(p) = &o.path {
                if !p.is_absolute() {
                    return fail(
                        format!("tool_overrides.{name}.path"),
                        format!("must be an absolute path, got '{}'", p.display()),
                    );
                }
            }
        }
        if let Some(addr) = &self.network.advertise_address {
            if addr.trim().is_empty() {
                return fail("network.advertise_address".into(), "must not be empty".into());
            }
        }
        if let TlsSetting::Files { cert, key } = &self.network.tls {
            for (field, path) in [("cert", cert), ("key", key)] {
                if !path.is_absolute() {
                    return fail(
                        format!("network.tls.{field}"),
                        format!("must be an absolute path, got '{}'", path.display()),
                    );
                }
            }
        }
        for (i, peer) in self.network.peers.iter().enumerate() {
            if !(peer.starts_with("http://") || peer.starts_with("https://")) {
                return fail(
                    format!("network.peers[{i}]"),
                    format!("must be a URL starting with http:// or https://, got '{peer}'"),
                );
            }
        }
        let w = self.scheduling.priority_weight;
        if !w.is_finite() || w < 0.0 {
            return fail("scheduling.priority_weight".into(), format!("must be a number >= 0, got {w}"));
        }
        for (i, h) in self.scheduling.time_restrictions.local_only_hours.iter().enumerate() {
            if HoursWindow::parse(h).is_none() {
                return fail(
                    format!("scheduling.time_restrictions.local_only_hours[{i}]"),
                    format!("expected HH:MM-HH:MM, got '{h}'"),
                );
            }
        }
        if !(1..=60_000).contains(&self.scan.probe_timeout_ms) {
            return fail(
                "scan.probe_timeout_ms".into(),
                format!("must be between 1 and 60000, got {}", self.scan.probe_timeout_ms),
            );
        }
        Ok(())
    }

    /// Checks against the machine: reserved core indices must exist.
    pub fn validate_for_machine(&self, file: &str, logical_cores: usize) -> Result<(), ConfigError> {
        for (i, core) in self.resource_limits.cpu.reserved_cores.iter().enumerate() {
            if *core >= logical_cores {
                return Err(ConfigError {
                    file: file.to_string(),
                    field: format!("resource_limits.cpu.reserved_cores[{i}]"),
                    message: format!(
                        "core {core} does not exist: this machine has cores 0 to {}",
                        logical_cores.saturating_sub(1)
                    ),
                });
            }
        }
        if self.resource_limits.cpu.reserved_cores.len() >= logical_cores {
            return Err(ConfigError {
                file: file.to_string(),
                field: "resource_limits.cpu.reserved_cores".into(),
                message: format!("reserves every one of the machine's {logical_cores} cores"),
            });
        }
        Ok(())
    }

    /// The parsed `local_only_hours` windows (validated at load).
    pub fn local_only_windows(&self) -> Vec<HoursWindow> {
        self.scheduling.time_restrictions.local_only_hours.iter().filter_map(|h| HoursWindow::parse(h)).collect()
    }
}

/// Turns serde's type names into words a user reads.
fn humanize_serde(err: &serde_json::Error) -> String {
    let mut msg = err.to_string();
    if let Some(pos) = msg.find(" at line ") {
        msg.truncate(pos);
    }
    for (rust, words) in [
        ("expected usize", "expected an integer"),
        ("expected u64", "expected an integer"),
        ("expected u32", "expected an integer"),
        ("expected u16", "expected an integer from 0 to 65535"),
        ("expected u8", "expected an integer"),
        ("expected i64", "expected an integer"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
    ] {
        msg = msg.replace(rust, words);
    }
    // serde says "invalid type: string \"six\", expected an integer"; lead with what was expected.
    if let Some(rest) = msg.strip_prefix("invalid type: ") {
        if let Some((found, expected)) = rest.split_once(", ") {
            return format!("{expected}, found {found} (line {}, column {})", err.line(), err.column());
        }
    }
    if err.line() > 0 {
        format!("{msg} (line {}, column {})", err.line(), err.column())
    } else {
        msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        NodeConfig::parse("node-config.json", text).expect_err("should be refused").to_string()
    }

    #[test]
    fn plan_example_parses() {
        let text = r#"{
          "node_id": "auto", "node_name": "dev-macbook", "node_tags": ["development"],
          "resource_limits": {
            "cpu": {"max_cores": 6, "reserved_cores": [0, 1]},
            "memory": {"max_gb": 24, "reserved_gb": 8},
            "storage": [{"path": "/tmp/bn-cache", "max_gb": 100, "purpose": "cache"}]
          },
          "tool_overrides": {"imagemagick": {"path": "/usr/bin/magick", "enabled": true},
                             "docker": {"enabled": false}},
          "network": {"listen_port": 80, "advertise_address": "192.168.1.100",
                      "peers": ["http://192.168.1.101:80"]},
          "scheduling": {"accept_remote_builds": true, "priority_weight": 1.0,
                         "time_restrictions": {"local_only_hours": ["09:00-17:00"]}}
        }"#;
        let c = NodeConfig::parse("f", text).expect("plan example is valid");
        assert_eq!(c.resource_limits.cpu.max_cores, Some(6));
        assert!(!c.tool_overrides["docker"].enabled);
        assert_eq!(c.local_only_windows().len(), 1);
    }

    #[test]
    fn wrong_type_names_the_field_and_says_integer() {
        let e = err(r#"{"resource_limits": {"cpu": {"max_cores": "six"}}}"#);
        assert!(e.starts_with("node-config.json: resource_limits.cpu.max_cores: expected an integer"), "{e}");
    }

    #[test]
    fn unknown_field_is_named() {
        let e = err(r#"{"network": {"listen_prot": 80}}"#);
        assert!(e.contains("network.listen_prot"), "{e}");
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn syntax_error_gives_position() {
        let e = err("{\"node_name\": ");
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn semantic_checks_name_the_field() {
        assert!(err(r#"{"resource_limits":{"cpu":{"max_cores":0}}}"#).contains("resource_limits.cpu.max_cores"));
        assert!(
            err(r#"{"resource_limits":{"storage":[{"path":"rel/x"}]}}"#).contains("resource_limits.storage[0].path")
        );
        assert!(
            err(r#"{"resource_limits":{"storage":[{"path":"/x","purpose":"junk"}]}}"#).contains("storage[0].purpose")
        );
        assert!(err(r#"{"network":{"peers":["ftp://x"]}}"#).contains("network.peers[0]"));
        assert!(err(r#"{"scheduling":{"priority_weight":-1}}"#).contains("scheduling.priority_weight"));
        assert!(
            err(r#"{"scheduling":{"time_restrictions":{"local_only_hours":["9-5"]}}}"#).contains("local_only_hours[0]")
        );
        assert!(err(r#"{"node_id":"abc"}"#).contains("node_id"));
        assert!(err(r#"{"network":{"listen_port":70000}}"#).contains("network.listen_port"));
    }

    #[test]
    fn tls_is_off_true_or_a_cert_and_key() {
        let tls = |text: &str| NodeConfig::parse("f", text).expect("valid").network.tls;
        assert_eq!(tls("{}"), TlsSetting::Off);
        assert_eq!(tls(r#"{"network":{"tls":false}}"#), TlsSetting::Off);
        assert_eq!(tls(r#"{"network":{"tls":true}}"#), TlsSetting::SelfSigned);
        assert_eq!(
            tls(r#"{"network":{"tls":{"cert":"/etc/c.pem","key":"/etc/k.pem"}}}"#),
            TlsSetting::Files { cert: "/etc/c.pem".into(), key: "/etc/k.pem".into() }
        );
        let e = err(r#"{"network":{"tls":{"cert":"/c.pem","kye":"/k.pem"}}}"#);
        assert!(e.contains("network.tls.kye") && e.contains("unknown field"), "{e}");
        let e = err(r#"{"network":{"tls":{"cert":"/c.pem"}}}"#);
        assert!(e.contains("network.tls") && e.contains("missing field `key`"), "{e}");
        let e = err(r#"{"network":{"tls":"yes"}}"#);
        assert!(e.starts_with("node-config.json: network.tls: expected true, false or {"), "{e}");
        let e = err(r#"{"network":{"tls":{"cert":"c.pem","key":"/k.pem"}}}"#);
        assert!(e.starts_with("node-config.json: network.tls.cert: must be an absolute path"), "{e}");
        // It writes back as it was read.
        for text in ["true", "false", r#"{"cert":"/c.pem","key":"/k.pem"}"#] {
            let setting: TlsSetting = serde_json::from_str(text).expect("parses");
            assert_eq!(serde_json::to_string(&setting).expect("serializes"), text);
        }
    }

    #[test]
    fn reserved_cores_checked_against_machine() {
        let c = NodeConfig::parse("f", r#"{"resource_limits":{"cpu":{"reserved_cores":[5]}}}"#).expect("parses");
        let e = c.validate_for_machine("f", 2).expect_err("core 5 of 2");
        assert_eq!(e.field, "resource_limits.cpu.reserved_cores[0]");
        assert!(c.validate_for_machine("f", 8).is_ok());
    }

    #[test]
    fn hours_windows_wrap_midnight() {
        let day = HoursWindow::parse("09:00-17:00").expect("valid");
        assert!(day.contains(9 * 60) && !day.contains(17 * 60) && !day.contains(8 * 60));
        let night = HoursWindow::parse("22:00-06:00").expect("valid");
        assert!(night.contains(23 * 60) && night.contains(60) && !night.contains(12 * 60));
        assert!(HoursWindow::parse("24:00-01:00").is_none());
        assert!(HoursWindow::parse("9:00-10:00").is_none());
    }
}
