//! Test harness: real `buildnet up` processes on 127.0.0.1 port 0 with temporary data dirs, a
//! tiny blocking HTTP client, polling with deadlines instead of sleeps, and the set-ups several
//! areas share: meshes of two or three nodes, example projects, fake tools on the PATH.

pub mod outsider;
pub mod proxy;
pub mod tls;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_buildnet");

/// Which tests may run beside which: the test threads share two cores, and the heartbeats,
/// failover deadlines and network test timeouts under test need them.
static CORES: RwLock<()> = RwLock::new(());

/// Held by the tests that start several nodes or whose timing is under test (meshes, failover,
/// distributed builds, the network and start-up benchmarks, the live pages): they run one at a
/// time, and only beside tests that hold neither guard. A test that failed while holding it does
/// not poison it for the others.
pub fn serial() -> RwLockWriteGuard<'static, ()> {
    CORES.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Held by the single-node tests that load the cores (builds, benchmarks, the browser): they run
/// beside each other, never beside a [`serial`] one.
pub fn shared() -> RwLockReadGuard<'static, ()> {
    CORES.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The exit status of `child` if it exits within `bound`; None (it still runs) otherwise. A test
/// of something that must end fails through this instead of hanging.
pub fn exit_within(child: &mut std::process::Child, bound: Duration) -> Option<std::process::ExitStatus> {
    let started = std::time::Instant::now();
    while started.elapsed() < bound {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Polls `check` until it returns Some or the deadline passes.
pub fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A running node; killed when dropped.
pub struct TestNode {
    pub child: Child,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub url: String,
    pub admin_key: String,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

/// Options for starting a node.
#[derive(Default, Clone)]
pub struct Start<'a> {
    pub args: Vec<String>,
    pub config: Option<&'a str>,
    pub path_prefix: Option<&'a Path>,
    /// Reuse this data dir (a restart).
    pub dir: Option<PathBuf>,
    /// Keep the start-up benchmark (off by default so parallel tests don't load each other's
    /// cores; tests of the schedule turn it on).
    pub benchmark_on_start: bool,
}

impl Start<'_> {
    /// Starts a node with `--name name`.
    pub fn named(name: &str) -> Self {
        Start { args: vec!["--name".into(), name.into()], ..Default::default() }
    }
}

impl TestNode {
    pub fn start() -> TestNode {
        TestNode::start_with(Start::default())
    }

    pub fn start_with(opts: Start<'_>) -> TestNode {
        let (tmp, dir) = match opts.dir {
            Some(d) => (None, d),
            None => {
                let t = tempfile::tempdir().expect("tempdir");
                let d = t.path().join("data");
                (Some(t), d)
            }
        };
        std::fs::create_dir_all(&dir).expect("data dir");
        let config = match (opts.config, opts.benchmark_on_start) {
            (Some(c), true) => Some(c.to_string()),
            (c, false) => match serde_json::from_str::<Value>(&c.map(str::to_string).unwrap_or_else(|| {
                std::fs::read_to_string(dir.join("node-config.json")).unwrap_or_else(|_| "{}".into())
            })) {
                Ok(Value::Object(mut map)) => {
                    map.entry("benchmark").or_insert(serde_json::json!({ "on_start": false }));
                    Some(Value::Object(map).to_string())
                }
                // A deliberately broken config is written as it is.
                _ => c.map(str::to_string),
            },
            (None, true) => None,
        };
        if let Some(c) = config {
            std::fs::write(dir.join("node-config.json"), c).expect("write config");
        }
        let _ = std::fs::remove_file(dir.join("address"));
        let stdout = dir.with_extension("stdout");
        let stderr = dir.with_extension("stderr");
        let mut cmd = Command::new(BIN);
        cmd.args(["up", "--listen", "127.0.0.1:0", "--data-dir"]).arg(&dir).args(&opts.args);
        cmd.stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"));
        cmd.env_remove("BUILDNET_ADDRESS").env_remove("BUILDNET_TOKEN").env_remove("BUILDNET_DATA_DIR");
        if let Some(prefix) = opts.path_prefix {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut dirs = vec![prefix.to_path_buf()];
            dirs.extend(std::env::split_paths(&path));
            cmd.env("PATH", std::env::join_paths(dirs).expect("PATH"));
        }
        let mut child = cmd.spawn().expect("spawn buildnet up");
        let url = wait_until("the node to write its address", Duration::from_secs(60), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "buildnet up exited early with {status}: {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
            std::fs::read_to_string(dir.join("address")).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
        });
        let admin_key = std::fs::read_to_string(dir.join("admin.key")).expect("admin.key").trim().to_string();
        if url.starts_with("https://") && dir.join("tls-cert.pem").exists() {
            tls::trust(&dir.join("tls-cert.pem"));
        }
        TestNode { child, dir, _tmp: tmp, url, admin_key, stdout, stderr }
    }

    /// A fresh join token of `role` for this node's mesh.
    pub fn token(&self, role: &str) -> String {
        let (status, body) = self.post("/api/tokens", &serde_json::json!({ "role": role, "ttl_secs": 3600 }));
        assert_eq!(status, 201, "{body}");
        body["token"].as_str().expect("token").to_string()
    }

    /// Starts a node named `name` that joins this node's mesh with a fresh token of `role`.
    pub fn join(&self, name: &str, role: &str, extra: Start<'_>) -> TestNode {
        let token = self.token(role);
        let mut args = vec!["--name".into(), name.into(), "--join".into(), self.url.clone(), "--token".into(), token];
        args.extend(extra.args.clone());
        TestNode::start_with(Start { args, ..extra })
    }

    /// The CLI against this node through its data dir (no address or token from the
    /// environment), reading nothing.
    fn command<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env("BUILDNET_DATA_DIR", &self.dir)
            .env_remove("BUILDNET_ADDRESS")
            .env_remove("BUILDNET_TOKEN")
            .stdin(Stdio::null());
        command
    }

    /// Runs the CLI against this node through its data dir.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run buildnet")
    }

    /// Starts the CLI against this node through its data dir, in the background, its output
    /// piped.
    pub fn spawn_cli<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> std::process::Child {
        self.command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start buildnet")
    }

    /// Runs the CLI and parses its `--format json` output.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["--format", "json"]);
        let out = self.cli(&all);
        assert!(out.status.success(), "buildnet {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("CLI printed JSON")
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let (status, body) = http(
            "GET",
            &format!("{}{path}", self.url),
            &[("Authorization", &format!("Bearer {}", self.admin_key))],
            None,
        );
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send("POST", path, body)
    }

    pub fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send("PUT", path, body)
    }

    /// A JSON request with the admin key.
    pub fn send(&self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        let (status, text) = http(
            method,
            &format!("{}{path}", self.url),
            &[("Authorization", &format!("Bearer {}", self.admin_key)), ("Content-Type", "application/json")],
            Some(body.to_string().as_bytes()),
        );
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Creates a key with a role and returns its secret.
    pub fn key(&self, role: &str) -> String {
        let (status, body) =
            self.post("/api/keys", &serde_json::json!({ "name": format!("test-{role}"), "role": role }));
        assert_eq!(status, 201, "{body}");
        body["key"].as_str().expect("secret").to_string()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Stops with SIGTERM; returns the exit status and the data dir's guard, so a test can
    /// start the node again on the same data dir.
    pub fn stop(mut self) -> (std::process::ExitStatus, Option<tempfile::TempDir>) {
        self.signal(libc::SIGTERM);
        let child = &mut self.child;
        let status = wait_until("the node to exit", Duration::from_secs(20), || child.try_wait().ok().flatten());
        (status, self._tmp.take())
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn node_id(&self) -> String {
        self.get("/api/node").1["node_id"].as_str().expect("node id").to_string()
    }

    /// The nodes of this node's pool view (`/api/pool/nodes`).
    pub fn pool_nodes(&self) -> Vec<Value> {
        self.get("/api/pool/nodes").1["nodes"].as_array().cloned().unwrap_or_default()
    }

    /// The status this node's pool view gives node `id`, if it lists it.
    pub fn status_of(&self, id: &str) -> Option<String> {
        self.pool_nodes().iter().find(|n| n["id"] == id).and_then(|n| n["status"].as_str().map(str::to_string))
    }

    /// Whether this node sees `id` up: online, or busy. Nodes take turns at their start-up
    /// benchmark (the coordinator hands the turns out, so a restart or a link flap can start
    /// one), and a node under benchmark is advertised busy for as long as it runs.
    pub fn sees_up(&self, id: &str) -> bool {
        matches!(self.status_of(id).as_deref(), Some("online" | "busy"))
    }
}

/// Waits until every node's pool view lists exactly these nodes, none of them offline, each with
/// its advert (its resources and tools) received: liveness can come before the advert, and a
/// build placed or recorded in between sees a smaller pool than the one the test meant (a later
/// advert changes the pool's tools line, and with it whether a rebuild is up to date).
pub fn wait_all_online(nodes: &[&TestNode]) {
    for n in nodes {
        wait_until("every node online and advertised in every pool view", Duration::from_secs(30), || {
            let list = n.pool_nodes();
            let ready = |x: &Value| x["status"] != "offline" && x["memory_bytes"].as_u64().is_some_and(|m| m > 0);
            (list.len() == nodes.len() && list.iter().all(ready)).then_some(())
        });
    }
}

/// `alpha`, and `beta` joined to it as a builder, once each sees the other online.
pub fn two_nodes() -> (TestNode, TestNode) {
    let a = TestNode::start_with(Start::named("alpha"));
    let b = a.join("beta", "builder", Start::default());
    wait_all_online(&[&a, &b]);
    (a, b)
}

/// `alpha`, with `beta` and `gamma` joined to it as builders, once all three see each other online.
pub fn three_nodes() -> (TestNode, TestNode, TestNode) {
    let a = TestNode::start_with(Start::named("alpha"));
    let b = a.join("beta", "builder", Start::default());
    let c = a.join("gamma", "builder", Start::default());
    wait_all_online(&[&a, &b, &c]);
    (a, b, c)
}

/// Copies `examples/<name>` into `to`; returns the copy's root.
pub fn copy_example(name: &str, to: &Path) -> PathBuf {
    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read dir").flatten() {
            let target = to.join(entry.file_name());
            if entry.path().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).expect("copy");
            }
        }
    }
    let root = to.join(name);
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name), &root);
    root
}

/// Writes an executable shell script `dir/name` — a tool for a node to discover on its PATH.
pub fn fake_tool(dir: &Path, name: &str, script: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, script).expect("write tool");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod tool");
    path
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal blocking HTTP/1.1 client (one request per connection). Returns status and body.
pub fn http(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> (u16, String) {
    let (status, _, body) = http_full(method, url, headers, body);
    (status, body)
}

/// Like [`http`], also returning response headers (lowercase names).
pub fn http_full(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> (u16, Vec<(String, String)>, String) {
    let (secure, rest) = match url.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (false, url.strip_prefix("http://").expect("http URL")),
    };
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let tcp = TcpStream::connect(host).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
    let mut stream: Box<dyn tls::Stream> = if secure { tls::wrap(host, tcp) } else { Box::new(tcp) };
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or_default();
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(req.as_bytes()).expect("write");
    let _ = stream.write_all(body);
    // Read the head, then exactly the body the head announces: some servers (chromedriver)
    // keep the connection open despite `Connection: close`.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let split = loop {
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = stream.read(&mut buf).expect("read response head");
        assert!(n > 0, "connection closed before the response head");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status: u16 =
        lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).expect("status line");
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string())).collect();
    let length = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse::<usize>().ok());
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    loop {
        let done = match (length, chunked) {
            (Some(n), _) => body.len() >= n,
            (None, true) => body.windows(5).any(|w| w == b"0\r\n\r\n"),
            (None, false) => false,
        };
        if done {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    if chunked {
        body = dechunk(&body);
    }
    (status, headers, String::from_utf8_lossy(&body).to_string())
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&body[..line_end]).trim(), 16).unwrap_or(0);
        let rest = &body[line_end + 2..];
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        body = rest[n..].strip_prefix(b"\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// A storage volume for builds under `parent`: its path and the node config that offers it.
pub fn builds_volume(parent: &Path) -> (PathBuf, String) {
    let fast = parent.join("fast");
    let config =
        format!(r#"{{"resource_limits": {{"storage": [{{"path": "{}", "purpose": "builds"}}]}}}}"#, fast.display());
    (fast, config)
}

/// Whether a package's working directory (`pwd` output) was a sandbox on `volume`.
pub fn ran_in_volume(wd: &str, volume: &Path) -> bool {
    let on = |v: &Path| wd.trim().starts_with(&v.join("buildnet-sandboxes").display().to_string());
    on(volume) || volume.canonicalize().is_ok_and(|c| on(&c))
}

/// Starts a fresh node that joins with a given token, and stops it once it has joined; Err
/// carries the one-line message it exited with.
pub fn join_with(url: &str, token: &str, name: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(BIN)
        .args(["up", "--listen", "127.0.0.1:0", "--name", name, "--data-dir"])
        .arg(dir.path().join("d"))
        .args(["--join", url, "--token", token])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let dir_path = dir.path().join("d");
    let mut child = out;
    let result = wait_until("join to finish", Duration::from_secs(30), || {
        if let Ok(Some(_)) = child.try_wait() {
            let mut err = String::new();
            let _ = child.stderr.take().map(|mut s| s.read_to_string(&mut err));
            return Some(Err(err.lines().find(|l| l.starts_with("buildnet:")).unwrap_or(&err).to_string()));
        }
        dir_path.join("address").exists().then_some(Ok(()))
    });
    let _ = child.kill();
    let _ = child.wait();
    result
}
