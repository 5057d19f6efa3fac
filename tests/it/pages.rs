//! The admin pages: the login flow over plain HTTP (cookies, CSRF, redirects), and the same
//! in headless Chromium through WebDriver. Without Chromium the browser test says it was
//! skipped; with `CI` set a missing browser is a failure.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{self, http, http_full, two_nodes, wait_until, TestNode};
use serde_json::{json, Value};

pub(crate) fn cookie(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .filter_map(|(_, v)| v.split(';').next())
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, v)| *k == name && !v.is_empty())
        .map(|(_, v)| v.to_string())
}

pub(crate) fn hidden_csrf(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("csrf field") + "name=\"csrf\" value=\"".len();
    html[at..].split('"').next().expect("value").to_string()
}

#[test]
fn login_sets_a_session_and_forms_need_the_csrf_token() {
    let node = TestNode::start();
    let url = |p: &str| format!("{}{p}", node.url);
    let (status, headers, _) = http_full("GET", &url("/"), &[], None);
    assert_eq!(status, 303);
    assert!(headers.iter().any(|(k, v)| k == "location" && v == "/login"));

    let (status, headers, page) = http_full("GET", &url("/login"), &[], None);
    assert_eq!(status, 200);
    let csrf_cookie = cookie(&headers, "bn_login_csrf").expect("login csrf cookie");
    let csrf = hidden_csrf(&page);
    assert_eq!(csrf, csrf_cookie);

    let form = |key: &str, token: &str| format!("key={key}&csrf={token}");
    let ctype = ("Content-Type", "application/x-www-form-urlencoded");
    let with_cookie = format!("bn_login_csrf={csrf_cookie}");
    let (status, _, body) = http_full(
        "POST",
        &url("/login"),
        &[ctype, ("Cookie", &with_cookie)],
        Some(form(&node.admin_key, "forged").as_bytes()),
    );
    assert_eq!(status, 401, "a wrong CSRF token is refused");
    assert!(body.contains("expired"));
    let (status, _, body) =
        http_full("POST", &url("/login"), &[ctype, ("Cookie", &with_cookie)], Some(form("bn_wrong", &csrf).as_bytes()));
    assert_eq!(status, 401);
    assert!(body.contains("not valid"));
    let (status, headers, _) = http_full(
        "POST",
        &url("/login"),
        &[ctype, ("Cookie", &with_cookie)],
        Some(form(&node.admin_key, &csrf).as_bytes()),
    );
    assert_eq!(status, 303);
    let session = cookie(&headers, "bn_session").expect("session cookie");
    let auth = format!("bn_session={session}");

    let (_, n) = node.get("/api/node");
    let (status, page) = http("GET", &url("/"), &[("Cookie", &auth)], None);
    assert_eq!(status, 200);
    let cores = n["resources"]["cpu"]["offered"].as_u64().expect("cores");
    assert!(page.contains(&format!("id=\"total-cores\" data-value=\"{cores}\"")), "dashboard shows the pool's cores");
    let (status, page) = http("GET", &url("/node"), &[("Cookie", &auth)], None);
    assert_eq!(status, 200);
    assert!(page.contains(n["resources"]["cpu"]["model"].as_str().expect("model")));
    let (status, page) = http("GET", &url("/ledger?types=NodeJoined"), &[("Cookie", &auth)], None);
    assert_eq!(status, 200);
    assert!(page.contains("data-type=\"NodeJoined\"") && !page.contains("data-type=\"KeyCreated\""));
    // A misspelt filter is said, not taken for "everything".
    let (status, page) = http("GET", &url("/ledger?type=NodeJoined"), &[("Cookie", &auth)], None);
    assert_eq!(status, 400);
    assert!(page.contains("type: unknown parameter") && !page.contains("data-type=\"KeyCreated\""), "{page}");
    let (status, _) = http("GET", &url("/api/node"), &[("Cookie", &auth)], None);
    assert_eq!(status, 200, "the session cookie also works for the API");

    let csrf = hidden_csrf(&http("GET", &url("/keys"), &[("Cookie", &auth)], None).1);
    let (status, page) = http(
        "POST",
        &url("/keys"),
        &[ctype, ("Cookie", &auth)],
        Some(format!("csrf={csrf}&name=pager&role=observer").as_bytes()),
    );
    assert_eq!(status, 200);
    assert!(page.contains("id=\"new-key\""), "the new key is shown once");
    let (status, _) =
        http("POST", &url("/keys"), &[ctype, ("Cookie", &auth)], Some(b"csrf=forged&name=evil&role=admin"));
    assert_eq!(status, 400, "forged CSRF is refused");
    assert!(!node.get("/api/keys").1.to_string().contains("evil"));

    let (status, _) =
        http("POST", &url("/logout"), &[ctype, ("Cookie", &auth)], Some(format!("csrf={csrf}").as_bytes()));
    assert_eq!(status, 303);
    let (status, _) = http("GET", &url("/"), &[("Cookie", &auth)], None);
    assert_eq!(status, 303, "logged out");
}

#[test]
fn static_files_are_embedded_and_unknown_pages_are_404() {
    let node = TestNode::start();
    let (status, css) = http("GET", &format!("{}/static/style.css", node.url), &[], None);
    assert_eq!(status, 200);
    assert!(css.contains(".bar-fill"));
    let (status, _) = http("GET", &format!("{}/nowhere", node.url), &[], None);
    assert_eq!(status, 404);
}

/// Finds a program on the PATH.
fn which(names: &[&str]) -> Option<String> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|n| {
        std::env::split_paths(&path).map(|d| d.join(n)).find(|p| p.is_file()).map(|p| p.display().to_string())
    })
}

pub(crate) struct Driver {
    child: Child,
    base: String,
    session: String,
}

impl Driver {
    pub(crate) fn start(chromium: &str, chromedriver: &str) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        wait_until("chromedriver", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            let (_, body) = http("GET", &format!("{base}/status"), &[], None);
            let v: Value = serde_json::from_str(&body).ok()?;
            v["value"]["ready"].as_bool().filter(|r| *r)
        });
        let profile = tempfile::tempdir().expect("profile").keep();
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:loggingPrefs": {"browser": "ALL"}, "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--window-size=1400,1000", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     format!("--user-data-dir={}", profile.display())]}}}});
        let mut driver = Driver { child, base, session: String::new() };
        let v = driver.call("POST", "/session", Some(caps));
        driver.session = v["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {v}")).to_string();
        driver
    }

    pub(crate) fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = if path.starts_with("/session/") || path == "/session" {
            path.to_string()
        } else {
            format!("/session/{}{path}", self.session)
        };
        let body = body.map(|b| b.to_string());
        let (_, text) = http(
            method,
            &format!("{}{path}", self.base),
            &[("Content-Type", "application/json")],
            body.as_deref().map(str::as_bytes),
        );
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("webdriver said: {text}"));
        v["value"].clone()
    }

    pub(crate) fn find(&self, css: &str) -> String {
        let v = wait_until(&format!("element {css}"), Duration::from_secs(10), || {
            let v = self.call("POST", "/element", Some(json!({"using": "css selector", "value": css})));
            v.as_object()?.values().next()?.as_str().map(str::to_string)
        });
        v
    }

    pub(crate) fn text(&self, css: &str) -> String {
        let id = self.find(css);
        self.call("GET", &format!("/element/{id}/text"), None).as_str().unwrap_or_default().to_string()
    }
}

impl Driver {
    pub(crate) fn exists(&self, css: &str) -> bool {
        let v = self.call("POST", "/elements", Some(json!({"using": "css selector", "value": css})));
        v.as_array().is_some_and(|a| !a.is_empty())
    }

    /// The page's console messages at level SEVERE (errors, CSP violations, failed loads) since
    /// the last call.
    pub(crate) fn console_errors(&self) -> Vec<String> {
        let logs = self.call("POST", "/se/log", Some(json!({"type": "browser"})));
        logs.as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter(|e| e["level"] == "SEVERE")
                    .map(|e| e["message"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = http("DELETE", &format!("{}/session/{}", self.base, self.session), &[], None);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Chromium and chromedriver, or None after saying the browser tests are skipped.
pub(crate) fn browser() -> Option<(String, String)> {
    match (which(&["chromium", "chromium-browser", "google-chrome"]), which(&["chromedriver"])) {
        (Some(c), Some(d)) => Some((c, d)),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but Chromium or chromedriver is missing: .ci/run installs chromium and chromium-driver"
            );
            eprintln!(
                "browser tests skipped: chromium and chromedriver not found (apt-get install chromium chromium-driver)"
            );
            None
        }
    }
}

pub(crate) fn log_in(driver: &Driver, node: &TestNode) {
    driver.call("POST", "/url", Some(json!({"url": format!("{}/", node.url)})));
    let key_field = driver.find("#key");
    driver.call("POST", &format!("/element/{key_field}/value"), Some(json!({"text": node.admin_key})));
    let submit = driver.find("section.login button[type=submit]");
    driver.call("POST", &format!("/element/{submit}/click"), Some(json!({})));
    wait_until("the dashboard after login", Duration::from_secs(10), || {
        let url = driver.call("GET", "/url", None);
        (url.as_str() == Some(&format!("{}/", node.url))).then_some(())
    });
}

#[test]
fn browser_logs_in_and_the_dashboard_shows_the_nodes_cores() {
    let Some((chromium, chromedriver)) = browser() else { return };
    let _shared = common::shared();
    let node = TestNode::start();
    let driver = Driver::start(&chromium, &chromedriver);
    log_in(&driver, &node);
    let (_, n) = node.get("/api/node");
    let shown = driver.text("#total-cores");
    assert_eq!(shown, n["resources"]["cpu"]["offered"].to_string(), "dashboard cores = /api/node");
    assert_eq!(n["resources"]["cpu"]["offered"], n["resources"]["cpu"]["count"], "no limits: every core is offered");

    driver.call("POST", "/url", Some(json!({"url": format!("{}/node", node.url)})));
    assert_eq!(driver.text("#cpu-count"), n["resources"]["cpu"]["count"].to_string());
    driver.call("POST", "/url", Some(json!({"url": format!("{}/ledger", node.url)})));
    assert!(driver.text("#ledger-entries").contains("NodeJoined"));
}

#[test]
fn browser_nodes_page_shows_the_mesh_and_updates_live_when_a_peer_dies() {
    let Some((chromium, chromedriver)) = browser() else { return };
    let _serial = common::serial();
    let (a, b) = two_nodes();
    let b_id = b.node_id();
    let driver = Driver::start(&chromium, &chromedriver);
    log_in(&driver, &a);
    driver.call("POST", "/url", Some(json!({"url": format!("{}/nodes", a.url)})));
    let row = format!("tr[data-node='{b_id}'] .status");
    assert_eq!(driver.text(&row), "online");
    assert!(driver.text("svg.topology").contains("beta"), "the topology names the peer");
    let _ = driver.find("svg.topology line.link");
    // Kill beta: alpha's page changes by itself, without a reload.
    b.signal(libc::SIGKILL);
    wait_until("the page shows beta offline", Duration::from_secs(10), || {
        (driver.text(&row) == "offline").then_some(())
    });
    driver.call("POST", "/url", Some(json!({"url": format!("{}/nodes/{b_id}", a.url)})));
    assert!(driver.text("main").contains("last advertised"), "a remote node has its own page");
}

/// Posts the login form with `key` as a browser would (its CSRF cookie and field); the raw
/// answer: status and headers.
pub(crate) fn submit_login(node: &TestNode, key: &str) -> (u16, Vec<(String, String)>) {
    let (_, headers, page) = http_full("GET", &format!("{}/login", node.url), &[], None);
    let csrf_cookie = cookie(&headers, "bn_login_csrf").expect("csrf cookie");
    let csrf = hidden_csrf(&page);
    let (status, headers, _) = http_full(
        "POST",
        &format!("{}/login", node.url),
        &[("Content-Type", "application/x-www-form-urlencoded"), ("Cookie", &format!("bn_login_csrf={csrf_cookie}"))],
        Some(format!("key={key}&csrf={csrf}").as_bytes()),
    );
    (status, headers)
}

/// Logs in with `key`; returns the Cookie header value of the session.
pub(crate) fn session_with(node: &TestNode, key: &str) -> String {
    let (status, headers) = submit_login(node, key);
    assert_eq!(status, 303);
    format!("bn_session={}", cookie(&headers, "bn_session").expect("session"))
}

/// Logs in with the node's admin key; returns the Cookie header value of the session.
pub(crate) fn session(node: &TestNode) -> String {
    session_with(node, &node.admin_key)
}

fn form_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn configurations_can_be_made_edited_and_deleted_from_the_pages() {
    let node = TestNode::start();
    let auth = session(&node);
    let ctype = ("Content-Type", "application/x-www-form-urlencoded");
    let url = |p: &str| format!("{}{p}", node.url);
    let (status, page) = http("GET", &url("/configs"), &[("Cookie", &auth)], None);
    assert_eq!(status, 200);
    assert!(page.contains("Local Only") && page.contains("CI/CD"), "system templates are listed");
    let csrf = hidden_csrf(&page);

    let (status, _) = http(
        "POST",
        &url("/configs"),
        &[ctype, ("Cookie", &auth)],
        Some(format!("csrf={csrf}&name=paged&cores=1&memory_gb=0&nodes=local%3A1&tools=").as_bytes()),
    );
    assert_eq!(status, 303);
    let (_, cfg) = node.get("/api/configs/paged");
    assert_eq!(cfg["resources"]["cpu"]["cores"], 1);
    let id = cfg["id"].as_str().expect("id").to_string();

    let (status, page) = http(
        "POST",
        &url("/configs"),
        &[ctype, ("Cookie", &auth)],
        Some(format!("csrf={csrf}&name=greedy&cores=100000").as_bytes()),
    );
    assert_eq!(status, 400);
    assert!(page.contains("resources.cpu.cores"), "the page says what is short");

    let json = form_encode(r#"{"description": "edited in the page"}"#);
    let (status, _) = http(
        "POST",
        &url(&format!("/configs/{id}")),
        &[ctype, ("Cookie", &auth)],
        Some(format!("csrf={csrf}&json={json}").as_bytes()),
    );
    assert_eq!(status, 303);
    assert_eq!(node.get(&format!("/api/configs/{id}")).1["description"], "edited in the page");

    let (status, _) = http(
        "POST",
        &url("/templates/local-only/use"),
        &[ctype, ("Cookie", &auth)],
        Some(format!("csrf={csrf}&name=from-template&cores=1").as_bytes()),
    );
    assert_eq!(status, 303);
    assert_eq!(node.get("/api/configs/from-template").0, 200);

    let (status, _) = http(
        "POST",
        &url(&format!("/configs/{id}/delete")),
        &[ctype, ("Cookie", &auth)],
        Some(format!("csrf={csrf}").as_bytes()),
    );
    assert_eq!(status, 303);
    assert_eq!(node.get(&format!("/api/configs/{id}")).0, 404);
    let (status, _) =
        http("POST", &url("/configs"), &[ctype, ("Cookie", &auth)], Some(b"csrf=forged&name=evil&cores=1"));
    assert_eq!(status, 400, "forged CSRF is refused");
}

#[test]
fn browser_benchmark_pages_show_figures_history_and_the_network_matrix() {
    let Some((chromium, chromedriver)) = browser() else { return };
    let _serial = common::serial();
    let (a, b) = two_nodes();
    let b_id = b.node_id();
    // Beta measures itself and its link to alpha twice, with small sizes: two points of history.
    let small = json!({ "types": ["cpu", "storage", "network"],
        "options": { "cpu_secs": 0.2, "file_mb": 4, "random_secs": 0.2 },
        "network_options": { "samples": 5, "interval_ms": 1, "size_mb": 1 } });
    // A CPU figure that other work disturbed is recorded but not advertised (the whole suite
    // loads the machine): the advert carries the last undisturbed one, so runs go on (six at
    // most) until there is one.
    let (mut runs, mut score) = (0, None);
    while runs < 2 || (score.is_none() && runs < 6) {
        let (status, r) = b.post("/api/node/benchmark", &small);
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["network"].as_array().map(Vec::len), Some(1), "{r}");
        runs += 1;
        if r["cpu"]["disturbed"].is_null() {
            score = Some(r["cpu"]["single_core_score"].as_f64().expect("score"));
        }
    }
    let score = score.expect("an undisturbed CPU figure in six runs: the machine is too busy");
    // Every run in alpha's ledger, and beta's advert carrying the last undisturbed figures (the
    // ledger's entries can arrive before the advert that follows them).
    wait_until("beta's results on alpha", Duration::from_secs(30), || {
        let (_, v) = a.get(&format!("/api/ledger?types=BenchmarkCompleted&origin={b_id}"));
        let (_, p) = a.get("/api/pool/nodes");
        let beta = p["nodes"].as_array()?.iter().find(|n| n["id"] == b_id.as_str())?.clone();
        let advertised = beta["benchmarks"]["cpu"]["single_core_score"].as_f64()?;
        (v["entries"].as_array()?.len() == runs
            && beta["benchmarks"]["network"].as_array()?.len() == 1
            && advertised == score)
            .then_some(())
    });

    let driver = Driver::start(&chromium, &chromedriver);
    log_in(&driver, &a);
    driver.call("POST", "/url", Some(json!({"url": format!("{}/benchmarks", a.url)})));
    let matrix = driver.text("#network-matrix");
    assert!(matrix.contains("ms") && matrix.contains("Mbit/s"), "beta's link to alpha: {matrix}");
    assert!(matrix.contains("not measured"), "alpha has not measured its link to beta: {matrix}");
    let listed = driver.text("#benchmark-nodes");
    assert!(listed.contains(&format!("{score:.0}")), "beta's CPU score {score:.0} is listed: {listed}");

    driver.call("POST", "/url", Some(json!({"url": format!("{}/nodes/{b_id}", a.url)})));
    assert!(driver.text("dl.benchmarks").contains("units/s"), "beta's latest figures on its page");
    let _ = driver.find("figure.chart svg polyline");
    assert!(driver.text("main").contains("CPU score"), "history charts drawn from the shared ledger");
}

/// Registers a project in a fresh directory with one package that sleeps; returns its name.
fn slow_project(node: &TestNode, dir: &std::path::Path) -> String {
    std::fs::write(dir.join("buildnet.toml"), "[packages.nap]\ncommand = [\"sleep\", \"25\"]\n").expect("manifest");
    let (status, body) = node.post("/api/projects", &json!({"path": dir, "name": "napping"}));
    assert_eq!(status, 201, "{body}");
    "napping".into()
}

#[test]
fn browser_walks_every_page_with_builds_finished_and_running_without_console_errors() {
    let Some((chromium, chromedriver)) = browser() else { return };
    let _serial = common::serial();
    let (a, _b, _c) = common::three_nodes();
    let work = tempfile::tempdir().expect("tempdir");
    let hello = common::copy_example("c-hello", &work.path().join("hello"));
    let (status, body) = a.post("/api/projects", &json!({"path": hello, "name": "hello"}));
    assert_eq!(status, 201, "{body}");
    let (status, started) = a.post("/api/build", &json!({"project": "hello"}));
    assert_eq!(status, 202, "{started}");
    let finished = started["build_id"].as_str().expect("build id").to_string();
    wait_until("the first build", Duration::from_secs(120), || {
        (a.get(&format!("/api/build/{finished}")).1["status"] == "succeeded").then_some(())
    });
    let nap_dir = work.path().join("nap");
    std::fs::create_dir_all(&nap_dir).expect("dir");
    let nap = slow_project(&a, &nap_dir);
    let (status, started) = a.post("/api/build", &json!({"project": nap}));
    assert_eq!(status, 202, "{started}");
    let running = started["build_id"].as_str().expect("build id").to_string();

    let driver = Driver::start(&chromium, &chromedriver);
    log_in(&driver, &a);
    let links = driver.call(
        "POST",
        "/execute/sync",
        Some(json!({"script": "return [...document.querySelectorAll('header nav a')].map(a => a.getAttribute('href'))", "args": []})),
    );
    let mut pages: Vec<String> =
        links.as_array().expect("nav links").iter().filter_map(|v| v.as_str().map(str::to_string)).collect();
    assert!(pages.len() >= 9, "{pages:?}");
    pages.extend([format!("/builds/{finished}"), format!("/builds/{running}"), format!("/nodes/{}", a.node_id())]);
    let _ = driver.console_errors();
    for page in &pages {
        driver.call("POST", "/url", Some(json!({"url": format!("{}{page}", a.url)})));
        let text = driver.text("main");
        assert!(!text.contains("Not found") && !text.contains("That did not work"), "{page}: {text}");
        let errors = driver.console_errors();
        assert!(errors.is_empty(), "{page}: console errors {errors:?}");
        // Every legend swatch shows its series' colour (a blocked inline style leaves it transparent).
        let colours = driver.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": "return [...document.querySelectorAll('ul.legend .swatch')].map(s => getComputedStyle(s).backgroundColor)", "args": []})),
        );
        for c in colours.as_array().into_iter().flatten() {
            let c = c.as_str().unwrap_or_default();
            assert!(
                !c.is_empty() && c != "rgba(0, 0, 0, 0)" && c != "transparent",
                "{page}: a legend swatch without colour ({c})"
            );
        }
        if page == "/ledger" {
            assert!(!text.contains("{\""), "the ledger shows fields, not JSON: {text}");
        }
    }
    let colours = driver.call("POST", "/url", Some(json!({"url": format!("{}/", a.url)})));
    drop(colours);
    assert!(driver.exists("ul.legend .swatch"), "the dashboard charts build durations");
    let _ = a.post(&format!("/api/build/{running}/cancel"), &json!({}));
}

#[test]
fn pages_ask_before_revoking_keep_typed_input_and_name_the_role_needed() {
    let node = TestNode::start();
    let auth = session(&node);
    let url = |p: &str| format!("{}{p}", node.url);
    let ctype = ("Content-Type", "application/x-www-form-urlencoded");

    // Revoking asks first; the list links to the question, the question posts.
    let (status, body) = node.post("/api/keys", &json!({"name": "ci-runner", "role": "builder"}));
    assert_eq!(status, 201, "{body}");
    let (id, builder_key) =
        (body["info"]["id"].as_str().expect("id").to_string(), body["key"].as_str().expect("key").to_string());
    let (_, page) = http("GET", &url("/keys"), &[("Cookie", &auth)], None);
    assert!(page.contains(&format!("href=\"/keys/{id}/revoke\"")), "a link, not an immediate revoke");
    let (status, page) = http("GET", &url(&format!("/keys/{id}/revoke")), &[("Cookie", &auth)], None);
    assert_eq!(status, 200);
    assert!(page.contains("Revoke key ci-runner?") && page.contains("data-confirm-revoke=\"ci-runner\""), "{page}");
    assert!(node.get("/api/keys").1.to_string().contains("ci-runner"), "asking revoked nothing");

    // A configuration form with a bad value comes back with what was typed.
    let csrf = hidden_csrf(&http("GET", &url("/configs"), &[("Cookie", &auth)], None).1);
    let (status, page) = http(
        "POST",
        &url("/configs"),
        &[ctype, ("Cookie", &auth)],
        Some(format!("csrf={csrf}&name=typed-by-hand&cores=lots&memory_gb=2&nodes=local%3A1&tools=gcc").as_bytes()),
    );
    assert_eq!(status, 400);
    assert!(page.contains("cores: expected a whole number"), "{page}");
    for kept in ["value=\"typed-by-hand\"", "value=\"lots\"", "value=\"local:1\"", "value=\"gcc\""] {
        assert!(page.contains(kept), "{kept} was lost");
    }

    // A builder key is told which role a page action needs, not "something went wrong".
    let as_builder = session_with(&node, &builder_key);
    let csrf = hidden_csrf(&http("GET", &url("/configs"), &[("Cookie", &as_builder)], None).1);
    let (status, page) = http(
        "POST",
        &url("/configs"),
        &[ctype, ("Cookie", &as_builder)],
        Some(format!("csrf={csrf}&name=x&cores=1").as_bytes()),
    );
    assert_eq!(status, 403);
    assert!(page.contains("use a key with role 'admin'") && page.contains("data-forbidden"), "{page}");
    let (status, body) =
        http("POST", &url("/api/node/benchmark"), &[("Authorization", &format!("Bearer {builder_key}"))], None);
    assert_eq!(status, 403);
    assert!(body.contains("use a key with role 'admin'"), "{body}");
}

#[test]
fn a_running_packages_output_streams_to_the_build_page_from_a_peer() {
    let _serial = common::serial();
    let (a, b) = two_nodes();
    let work = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        work.path().join("buildnet.toml"),
        "[packages.ticker]\nshell = \"for i in 1 2 3 4 5 6 7 8; do echo tick$i; sleep 1; done\"\n",
    )
    .expect("manifest");
    let (status, body) = a.post("/api/projects", &json!({"path": work.path(), "name": "ticker"}));
    assert_eq!(status, 201, "{body}");
    // Placed on beta, so the output crosses the mesh while the package runs.
    let config = json!({"name": "on-beta", "resources": {"cpu": {"cores": 1, "node_allocations": [{"node_id": b.node_id(), "cores": 1}]}}});
    let (status, started) = a.post("/api/build", &json!({"project": "ticker", "config": config}));
    assert_eq!(status, 202, "{started}");
    let id = started["build_id"].as_str().expect("id").to_string();
    let auth = session(&a);
    let seen = wait_until("tick2 on the page while the build runs", Duration::from_secs(20), || {
        let (_, page) = http("GET", &format!("{}/builds/{id}", a.url), &[("Cookie", &auth)], None);
        page.contains("tick2").then_some(page)
    });
    assert!(!seen.contains("tick8"), "the page showed output before the package ended");
    assert!(seen.contains(&format!("title=\"{}\">beta</a>", b.node_id())), "the node by its name");
    let (_, s) = a.get(&format!("/api/build/{id}"));
    assert_eq!(s["status"], "running", "{s}");
    assert_eq!(s["packages"][0]["node"], b.node_id(), "it ran on beta");
    let done = wait_until("the build to end", Duration::from_secs(30), || {
        let (_, s) = a.get(&format!("/api/build/{id}"));
        (s["status"] != "running").then_some(s)
    });
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(done["packages"][0]["output_tail"].as_str().unwrap_or_default().contains("tick8"));
    let (_, list) = http("GET", &format!("{}/builds", a.url), &[("Cookie", &auth)], None);
    assert!(list.contains("<td>beta</td>"), "the history names the nodes");
}

/// The nodes page of the mesh key holder offers to remove a member, asks first, and posts with
/// the session's CSRF token; a member without the key offers nothing, and a forged form removes
/// nothing.
#[test]
fn the_key_holder_removes_a_member_from_the_nodes_page_after_asking() {
    let _serial = common::serial();
    let (a, b) = two_nodes();
    let b_id = b.node_id();
    let (auth_a, auth_b) = (session(&a), session(&b));
    let ctype = ("Content-Type", "application/x-www-form-urlencoded");
    let (_, page) = http("GET", &format!("{}/nodes", b.url), &[("Cookie", &auth_b)], None);
    assert!(!page.contains("data-remove"), "only the key holder offers removal");
    let (_, page) = http("GET", &format!("{}/nodes", a.url), &[("Cookie", &auth_a)], None);
    assert!(
        page.contains(&format!("href=\"/nodes/{b_id}/remove\"")) && page.contains("data-remove=\"beta\""),
        "{page}"
    );
    // Typed by hand: the holder's own row, or a member without the key, is refused at the question.
    let a_id = a.node_id();
    let (status, page) = http("GET", &format!("{}/nodes/{a_id}/remove", a.url), &[("Cookie", &auth_a)], None);
    assert!(status == 400 && page.contains("cannot remove itself"), "{status} {page}");
    let (status, page) = http("GET", &format!("{}/nodes/{a_id}/remove", b.url), &[("Cookie", &auth_b)], None);
    assert!(status == 400 && page.contains("does not hold the mesh key"), "{status} {page}");
    let ask = format!("{}/nodes/{b_id}/remove", a.url);
    let (status, page) = http("GET", &ask, &[("Cookie", &auth_a)], None);
    assert_eq!(status, 200);
    assert!(page.contains("Remove beta from the mesh?") && page.contains("data-confirm-remove=\"beta\""), "{page}");
    let (status, _) = http("POST", &ask, &[ctype, ("Cookie", &auth_a)], Some(b"csrf=forged"));
    assert_eq!(status, 400);
    // A form without its field is the error page too (it was actix's plain-text "Parse error").
    let (status, page) = http("POST", &ask, &[ctype, ("Cookie", &auth_a)], Some(b"other=1"));
    assert!(status == 400 && page.contains("The form could not be read") && page.contains("<html"), "{page}");
    assert!(a.sees_up(&b_id), "asking and a forged form removed nothing");
    let csrf = hidden_csrf(&page);
    let (status, _) = http("POST", &ask, &[ctype, ("Cookie", &auth_a)], Some(format!("csrf={csrf}").as_bytes()));
    assert_eq!(status, 303);
    assert!(!a.pool_nodes().iter().any(|n| n["id"] == b_id.as_str()), "{:?}", a.pool_nodes());
    let (_, page) = http("GET", &format!("{}/nodes", a.url), &[("Cookie", &auth_a)], None);
    assert!(!page.contains("data-remove=\"beta\""), "{page}");
    let (status, page) = http("POST", &ask, &[ctype, ("Cookie", &auth_a)], Some(format!("csrf={csrf}").as_bytes()));
    assert_eq!(status, 400);
    assert!(page.contains("no longer a member"), "{page}");
}
