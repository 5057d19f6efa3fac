//! Finds tools and runtimes on the PATH (or where `tool_overrides` point), asks each its version
//! and, where the tool can tell, its capabilities.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::probe::{self, ProbeOutput};
use crate::config::ToolOverride;
use crate::wire::ToolInfo;

/// Whether a spec describes a tool or a runtime; they are listed apart (plan §2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tool,
    Runtime,
}

/// How to find and question one tool.
pub struct ToolSpec {
    pub name: &'static str,
    pub kind: Kind,
    /// Executable names tried in order.
    pub binaries: &'static [&'static str],
    pub version_args: &'static [&'static str],
    /// Extra questions for capabilities, given the executable and the probe time limit.
    pub capabilities: fn(&Path, Duration) -> Vec<String>,
}

fn none(_: &Path, _: Duration) -> Vec<String> {
    Vec::new()
}

/// The tools and runtimes every node looks for.
pub const KNOWN: &[ToolSpec] = &[
    ToolSpec {
        name: "imagemagick",
        kind: Kind::Tool,
        binaries: &["magick", "convert"],
        version_args: &["-version"],
        capabilities: imagemagick_formats,
    },
    ToolSpec {
        name: "ffmpeg",
        kind: Kind::Tool,
        binaries: &["ffmpeg"],
        version_args: &["-version"],
        capabilities: ffmpeg_encoders,
    },
    ToolSpec {
        name: "docker",
        kind: Kind::Tool,
        binaries: &["docker"],
        version_args: &["--version"],
        capabilities: docker_daemon,
    },
    ToolSpec { name: "git", kind: Kind::Tool, binaries: &["git"], version_args: &["--version"], capabilities: none },
    ToolSpec {
        name: "gcc",
        kind: Kind::Tool,
        binaries: &["gcc"],
        version_args: &["--version"],
        capabilities: compiler_target,
    },
    ToolSpec {
        name: "clang",
        kind: Kind::Tool,
        binaries: &["clang"],
        version_args: &["--version"],
        capabilities: compiler_target,
    },
    ToolSpec { name: "make", kind: Kind::Tool, binaries: &["make"], version_args: &["--version"], capabilities: none },
    ToolSpec {
        name: "cmake",
        kind: Kind::Tool,
        binaries: &["cmake"],
        version_args: &["--version"],
        capabilities: none,
    },
    ToolSpec {
        name: "ninja",
        kind: Kind::Tool,
        binaries: &["ninja"],
        version_args: &["--version"],
        capabilities: none,
    },
    ToolSpec {
        name: "node",
        kind: Kind::Runtime,
        binaries: &["node"],
        version_args: &["--version"],
        capabilities: none,
    },
    ToolSpec { name: "bun", kind: Kind::Runtime, binaries: &["bun"], version_args: &["--version"], capabilities: none },
    ToolSpec {
        name: "deno",
        kind: Kind::Runtime,
        binaries: &["deno"],
        version_args: &["--version"],
        capabilities: none,
    },
    ToolSpec {
        name: "python",
        kind: Kind::Runtime,
        binaries: &["python3", "python"],
        version_args: &["--version"],
        capabilities: none,
    },
    ToolSpec {
        name: "rust",
        kind: Kind::Runtime,
        binaries: &["rustc"],
        version_args: &["--version"],
        capabilities: none,
    },
    ToolSpec {
        name: "cargo",
        kind: Kind::Runtime,
        binaries: &["cargo"],
        version_args: &["--version"],
        capabilities: none,
    },
    ToolSpec { name: "go", kind: Kind::Runtime, binaries: &["go"], version_args: &["version"], capabilities: none },
    ToolSpec {
        name: "java",
        kind: Kind::Runtime,
        binaries: &["java"],
        version_args: &["-version"],
        capabilities: none,
    },
];

/// Probes every known tool in parallel; returns (tools, runtimes), each sorted by name.
pub fn scan(
    overrides: &BTreeMap<String, ToolOverride>,
    search_path: Option<&std::ffi::OsStr>,
    timeout: Duration,
) -> (Vec<ToolInfo>, Vec<ToolInfo>) {
    let found: Vec<(Kind, ToolInfo)> = std::thread::scope(|scope| {
        let handles: Vec<_> = KNOWN
            .iter()
            .filter(|spec| overrides.get(spec.name).is_none_or(|o| o.enabled))
            .filter_map(|spec| {
                let configured = overrides.get(spec.name).and_then(|o| o.path.clone());
                let (path, on_path) = match configured {
                    Some(p) => (p, false),
                    None => (spec.binaries.iter().find_map(|b| find_executable(b, search_path))?, true),
                };
                Some(scope.spawn(move || {
                    let mut info = probe_tool(spec, &path, timeout);
                    // A path the configuration names is kept as it is.
                    if on_path && info.error.is_none() {
                        if let Some(real) = real_executable(spec, &path, info.version.as_deref(), timeout) {
                            info.path = real.display().to_string();
                        }
                    }
                    (spec.kind, info)
                }))
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    let (mut tools, mut runtimes) = (Vec::new(), Vec::new());
    for (kind, info) in found {
        match kind {
            Kind::Tool => tools.push(info),
            Kind::Runtime => runtimes.push(info),
        }
    }
    tools.sort_by(|a, b| a.name.cmp(&b.name));
    runtimes.sort_by(|a, b| a.name.cmp(&b.name));
    (tools, runtimes)
}

/// Asks one tool its version and capabilities. Never fails: problems land in `error`.
pub fn probe_tool(spec: &ToolSpec, path: &Path, timeout: Duration) -> ToolInfo {
    let mut info = ToolInfo {
        name: spec.name.to_string(),
        path: path.display().to_string(),
        version: None,
        version_output: None,
        capabilities: Vec::new(),
        error: None,
    };
    let asked = format!("`{} {}`", path.display(), spec.version_args.join(" "));
    match probe::run(path, spec.version_args, timeout) {
        Ok(out) if out.success() => {
            info.version_output = out.first_line();
            info.version = version_in(&version_text(spec, &out));
            info.capabilities = (spec.capabilities)(path, timeout);
        }
        Ok(out) => {
            let code = out.code.map_or("a signal".to_string(), |c| format!("status {c}"));
            let said = out.first_line().unwrap_or_default();
            info.error = Some(format!("{asked} exited with {code}: {said}").trim_end_matches(": ").to_string());
        }
        Err(e) => info.error = Some(format!("{asked} {e}")),
    }
    info
}

/// The interpreter a runtime found on the PATH really runs, when it can say: version managers
/// (pyenv, asdf, nvm's and volta's shims) put a script on the PATH that execs the interpreter
/// from a directory of their own, and a sandbox that lets a package reach only the script fails
/// with "No such file or directory" (exit 127). With the interpreter's path, the sandbox exposes
/// its prefix (`exec::tool_locations`, which refuses a prefix that would expose too much) and puts
/// its `bin` on the package's PATH. The answer is taken only for an executable file that reports
/// the same version as the one the PATH led to.
fn real_executable(spec: &ToolSpec, path: &Path, version: Option<&str>, timeout: Duration) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let args: &[&str] = match spec.name {
        "python" => &["-c", "import sys; print(sys.executable)"],
        "node" => &["-p", "process.execPath"],
        _ => return None,
    };
    let out = probe::run(path, args, timeout).ok().filter(|o| o.success())?;
    let real = PathBuf::from(out.first_line()?.trim());
    let executable = std::fs::metadata(&real).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if !real.is_absolute() || !executable || real == path {
        return None;
    }
    let same = probe::run(&real, spec.version_args, timeout).ok().filter(|o| o.success());
    (same.map(|o| version_in(&version_text(spec, &o))).as_ref().map(Option::as_deref) == Some(version)).then_some(real)
}

/// Where a tool prints its version: `java -version` uses stderr.
fn version_text(spec: &ToolSpec, out: &ProbeOutput) -> String {
    if spec.name == "java" || out.stdout.trim().is_empty() {
        out.stderr.lines().next().unwrap_or_default().to_string()
    } else {
        out.first_line().unwrap_or_default()
    }
}

/// The first dotted version number in a line (`gcc (Debian 12.2.0-14) 12.2.0` → `12.2.0`,
/// `go version go1.22.1` → `1.22.1`, `v20.1.0` → `20.1.0`); a bare number if none is dotted.
pub fn version_in(line: &str) -> Option<String> {
    let bytes = line.as_bytes();
    let mut bare = None;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_digit()) {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                i += 1;
            }
            let token = line[start..i].trim_end_matches('.');
            if token.contains('.') {
                return Some(token.to_string());
            }
            bare.get_or_insert_with(|| token.to_string());
        } else {
            i += 1;
        }
    }
    bare
}

/// Looks an executable up on a PATH-style list of directories.
pub fn find_executable(name: &str, search_path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dirs = search_path.map(std::env::split_paths)?;
    for dir in dirs {
        let candidate = dir.join(name);
        if let Ok(meta) = std::fs::metadata(&candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Some(candidate);
            }
        }
    }
    None
}

/// ImageMagick's readable or writable formats, lowercase (`-list format`).
fn imagemagick_formats(path: &Path, timeout: Duration) -> Vec<String> {
    let Ok(out) = probe::run(path, &["-list", "format"], timeout) else {
        return Vec::new();
    };
    let mut formats: Vec<String> = out
        .stdout
        .lines()
        .filter_map(|line| {
            // "      PNG* PNG       rw-   Portable Network Graphics"
            let mut cols = line.split_whitespace();
            let name = cols.next()?.trim_end_matches('*');
            let _module = cols.next()?;
            let mode = cols.next()?;
            let is_mode = mode.len() == 3 && mode.chars().all(|c| matches!(c, 'r' | 'w' | '+' | '-'));
            (is_mode && mode.contains(['r', 'w'])).then(|| name.to_lowercase())
        })
        .collect();
    formats.sort();
    formats.dedup();
    formats
}

/// ffmpeg's encoder names (`-encoders`).
fn ffmpeg_encoders(path: &Path, timeout: Duration) -> Vec<String> {
    let Ok(out) = probe::run(path, &["-hide_banner", "-encoders"], timeout) else {
        return Vec::new();
    };
    let mut after_header = false;
    let mut encoders = Vec::new();
    for line in out.stdout.lines() {
        if line.trim_start().starts_with("------") {
            after_header = true;
            continue;
        }
        // " V....D libx264              libx264 H.264 / AVC"
        if let (true, [flags, name, ..]) = (after_header, line.split_whitespace().collect::<Vec<_>>().as_slice()) {
            if flags.len() == 6 {
                encoders.push(name.to_string());
            }
        }
    }
    encoders
}

/// Whether the docker CLI reaches a daemon.
fn docker_daemon(path: &Path, timeout: Duration) -> Vec<String> {
    match probe::run(path, &["info", "--format", "{{.ServerVersion}}"], timeout) {
        Ok(out) if out.success() && !out.stdout.trim().is_empty() => {
            vec!["daemon:reachable".into(), format!("server:{}", out.stdout.trim())]
        }
        _ => vec!["daemon:unreachable".into()],
    }
}

/// The target triple a C compiler builds for.
fn compiler_target(path: &Path, timeout: Duration) -> Vec<String> {
    match probe::run(path, &["-dumpmachine"], timeout) {
        Ok(out) if out.success() => out.first_line().map(|t| vec![format!("target:{t}")]).unwrap_or_default(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn versions_are_read_from_real_world_lines() {
        let cases = [
            ("gcc (Debian 12.2.0-14+deb12u1) 12.2.0", "12.2.0"),
            ("go version go1.22.1 linux/amd64", "1.22.1"),
            ("v20.20.2", "20.20.2"),
            ("openjdk version \"17.0.15\" 2025-04-15", "17.0.15"),
            ("Version: ImageMagick 6.9.11-60 Q16 x86_64", "6.9.11"),
            ("Docker version 28.2.2, build e6534b4", "28.2.2"),
            ("Python 3.11.7", "3.11.7"),
            ("ninja 1", "1"),
        ];
        for (line, want) in cases {
            assert_eq!(version_in(line).as_deref(), Some(want), "{line}");
        }
        assert_eq!(version_in("no digits"), None);
    }

    fn fake_tool(dir: &Path, name: &str, script: &str) {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{script}\n")).expect("write fake tool");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    #[test]
    fn broken_and_hanging_tools_do_not_stop_the_scan() {
        let dir = tempfile::tempdir().expect("tempdir");
        fake_tool(dir.path(), "git", "echo 'git version 2.47.3'");
        fake_tool(dir.path(), "ninja", "sleep 30");
        fake_tool(dir.path(), "make", "echo 'make: broken' >&2; exit 4");
        let started = std::time::Instant::now();
        let (tools, _) = scan(&BTreeMap::new(), Some(dir.path().as_os_str()), Duration::from_millis(300));
        assert!(started.elapsed() < Duration::from_secs(5));
        let by_name = |n: &str| tools.iter().find(|t| t.name == n).cloned().expect(n);
        assert_eq!(by_name("git").version.as_deref(), Some("2.47.3"));
        assert_eq!(by_name("git").version_output.as_deref(), Some("git version 2.47.3"));
        assert!(by_name("ninja").error.as_deref().unwrap_or("").contains("did not answer"));
        assert!(by_name("make").error.as_deref().unwrap_or("").contains("status 4"));
    }

    #[test]
    fn capabilities_are_read_from_real_tool_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        fake_tool(
            dir.path(),
            "magick",
            r#"case "$1" in
  -version) echo 'Version: ImageMagick 7.1.1-21 Q16-HDRI x86_64 https://imagemagick.org';;
  -list) printf '   Format  Module    Mode  Description\n-------------------------------\n      AVIF  HEIC      rw+   AV1 Image File Format\n       PNG* PNG       rw-   Portable Network Graphics\n      WEBP* WEBP      r--   WebP Image Format\n     XC  XC        ---   Constant image\n';;
esac"#,
        );
        fake_tool(
            dir.path(),
            "ffmpeg",
            r#"case "$1" in
  -version) echo 'ffmpeg version 6.1.1 Copyright (c) 2000-2023';;
  -hide_banner) printf 'Encoders:\n V..... = Video\n ------\n V....D libx264              libx264 H.264\n A....D aac                  AAC\n';;
esac"#,
        );
        fake_tool(
            dir.path(),
            "docker",
            r#"case "$1" in
  --version) echo 'Docker version 28.2.2, build e6534b4';;
  info) echo '28.2.2';;
esac"#,
        );
        let (tools, _) = scan(&BTreeMap::new(), Some(dir.path().as_os_str()), Duration::from_secs(5));
        let by_name = |n: &str| tools.iter().find(|t| t.name == n).cloned().expect(n);
        let im = by_name("imagemagick");
        assert_eq!(im.version.as_deref(), Some("7.1.1"));
        assert_eq!(im.capabilities, vec!["avif", "png", "webp"]);
        assert_eq!(by_name("ffmpeg").capabilities, vec!["libx264", "aac"]);
        assert_eq!(by_name("docker").capabilities, vec!["daemon:reachable", "server:28.2.2"]);
    }

    #[test]
    fn overrides_disable_and_redirect() {
        let dir = tempfile::tempdir().expect("tempdir");
        fake_tool(dir.path(), "git", "echo 'git version 1.0.0'");
        fake_tool(dir.path(), "mygit", "echo 'git version 9.9.9'");
        let mut o = BTreeMap::new();
        o.insert("git".to_string(), ToolOverride { path: Some(dir.path().join("mygit")), enabled: true });
        let (tools, _) = scan(&o, Some(dir.path().as_os_str()), Duration::from_secs(2));
        assert_eq!(tools[0].version.as_deref(), Some("9.9.9"));
        o.insert("git".to_string(), ToolOverride { path: None, enabled: false });
        let (tools, _) = scan(&o, Some(dir.path().as_os_str()), Duration::from_secs(2));
        assert!(tools.is_empty());
    }
}
