//! `node-config.json` (`NodeConfig::parse`: serde_json with field paths, then the semantic
//! checks). Oracle: an accepted config serialises and parses back to itself.

use buildnet_actors::config::NodeConfig;

use crate::mutate::Hints;
use crate::run::Target;

pub struct Config;

const FULL: &str = r#"{
  "node_id": "auto",
  "node_name": "build-box",
  "node_tags": ["fast", "gpu"],
  "resource_limits": {
    "cpu": {"max_cores": 6, "reserved_cores": [0, 1]},
    "memory": {"max_gb": 12.5, "reserved_gb": 2},
    "storage": [
      {"path": "/var/lib/buildnet/builds", "max_gb": 100, "purpose": "builds"},
      {"path": "/mnt/cache", "purpose": "cache"}
    ]
  },
  "tool_overrides": {"gcc": {"path": "/usr/local/bin/gcc", "enabled": true}, "clang": {"enabled": false}},
  "network": {"listen_port": 8080, "advertise_address": "http://10.0.0.2:8080",
              "peers": ["http://10.0.0.3:8080", "https://vps.example:8443"], "tls": false},
  "scheduling": {"accept_remote_builds": true, "priority_weight": 1.5,
                 "time_restrictions": {"local_only_hours": ["09:00-17:30", "22:00-02:00"]}},
  "scan": {"probe_timeout_ms": 5000},
  "benchmark": {"on_start": false, "interval_hours": 24},
  "sandbox": {"level": "landlock", "require": "none"}
}"#;

const TLS_FILES: &str =
    r#"{"network": {"tls": {"cert": "/etc/buildnet/cert.pem", "key": "/etc/buildnet/key.pem"}}, "node_name": "x"}"#;

impl Target for Config {
    fn name(&self) -> &'static str {
        "config"
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        [FULL, TLS_FILES, "{}", r#"{"network": {"tls": true}, "sandbox": {"require": "landlock+namespaces"}}"#]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect()
    }

    fn hints(&self) -> Hints {
        let dictionary = [
            "\"node_id\":",
            "\"node_name\":",
            "\"resource_limits\":",
            "\"cpu\":",
            "\"memory\":",
            "\"storage\":",
            "\"max_cores\":",
            "\"reserved_cores\":",
            "\"max_gb\":",
            "\"reserved_gb\":",
            "\"path\":",
            "\"purpose\":",
            "\"tool_overrides\":",
            "\"network\":",
            "\"peers\":",
            "\"tls\":",
            "\"cert\":",
            "\"key\":",
            "\"listen_port\":",
            "\"local_only_hours\":",
            "\"interval_hours\":",
            "\"sandbox\":",
            "\"level\":",
            "\"require\":",
            "true",
            "false",
            "null",
            "-1",
            "65536",
            "1e308",
            "-0.0",
            "NaN",
            "\"\\ud800\"",
            "\"\\u0000\"",
            "\"24:00-25:61\"",
            "\"99:99-00:00\"",
            "\"/\"",
            "\"relative\"",
            "[]",
            "{}",
            ",",
            ":",
        ];
        Hints {
            dictionary: dictionary.iter().map(|s| s.as_bytes().to_vec()).collect(),
            nesting: vec![b"[".to_vec(), b"{\"a\":".to_vec(), b"{\"network\":".to_vec()],
            binary: false,
        }
    }

    fn run(&mut self, input: &[u8]) -> Result<String, String> {
        let text = super::text(input);
        let config = match NodeConfig::parse("node-config.json", &text) {
            Ok(c) => c,
            Err(e) => {
                return Ok(format!("refused:{}:{}", e.field.split(['[', '.']).next().unwrap_or(""), {
                    let l = super::label("", &e.message);
                    l.trim_start_matches(':').to_string()
                }))
            }
        };
        let json = serde_json::to_string(&config).map_err(|e| format!("an accepted config does not serialise: {e}"))?;
        let again = NodeConfig::parse("node-config.json", &json)
            .map_err(|e| format!("an accepted config does not parse back: {e} in {json}"))?;
        if again != config {
            return Err(format!("an accepted config parses back different: {json}"));
        }
        Ok("accepted".into())
    }
}
