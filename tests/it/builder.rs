//! The visual configuration builder (`/builder`) on a three-node mesh, in headless Chromium:
//! real pointer drags (WebDriver pointer actions, which Chromium turns into input events), chip
//! edits, the live estimate and totals, saving, running the build from the page, and the same
//! configuration built with the keyboard alone. The page must log no console error.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{self, http, three_nodes, wait_until, TestNode};
use crate::pages::{browser, log_in, session, Driver};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Driver {
    fn attr(&self, css: &str, name: &str) -> Option<String> {
        let id = self.find(css);
        self.call("GET", &format!("/element/{id}/attribute/{name}"), None).as_str().map(str::to_string)
    }

    fn prop(&self, css: &str, name: &str) -> Option<String> {
        let id = self.find(css);
        self.call("GET", &format!("/element/{id}/property/{name}"), None).as_str().map(str::to_string)
    }

    fn click(&self, css: &str) {
        let id = self.find(css);
        self.call("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    fn keys(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.call("POST", &format!("/element/{id}/value"), Some(json!({"text": text})));
    }

    /// Presses the mouse on `from`, moves in steps onto `to` and releases: real input events.
    fn drag(&self, from: &str, to: &str) {
        let (from, to) = (self.find(from), self.find(to));
        let actions = json!({"actions": [{"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"}, "actions": [
            {"type": "pointerMove", "duration": 0, "origin": {ELEMENT: from}, "x": 0, "y": 0},
            {"type": "pointerDown", "button": 0},
            {"type": "pointerMove", "duration": 150, "origin": {ELEMENT: from}, "x": 20, "y": 10},
            {"type": "pointerMove", "duration": 250, "origin": {ELEMENT: to}, "x": 0, "y": 0},
            {"type": "pointerUp", "button": 0}
        ]}]});
        self.call("POST", "/actions", Some(actions));
        self.call("DELETE", "/actions", None);
    }

    fn estimate(&self) -> Option<u64> {
        self.attr("[data-estimate-ms]", "data-estimate-ms").and_then(|v| v.parse().ok())
    }
}

/// Registers examples/c-hello as project `hello` on `node`.
fn register_hello(node: &TestNode, dir: &std::path::Path) {
    let root = common::copy_example("c-hello", dir);
    let (status, body) = node.post("/api/projects", &json!({"path": root, "name": "hello"}));
    assert_eq!(status, 201, "{body}");
}

fn resources(node: &TestNode, name: &str) -> Value {
    let (status, cfg) = node.get(&format!("/api/configs/{name}"));
    assert_eq!(status, 200, "{cfg}");
    cfg["resources"].clone()
}

#[test]
fn the_page_renders_the_pool_with_test_hooks_and_a_form_without_javascript() {
    let node = TestNode::start_with(common::Start::named("solo"));
    let auth = session(&node);
    let (status, page) = http("GET", &format!("{}/builder", node.url), &[("Cookie", &auth)], None);
    assert_eq!(status, 200);
    for hook in [
        "data-node=\"solo\"",
        "data-resource=\"cpu\"",
        "data-resource=\"memory\"",
        "data-resource=\"storage:",
        "data-zone=\"cpu\"",
        "data-zone=\"memory\"",
        "data-zone=\"storage\"",
        "data-zone=\"tools\"",
        "data-estimate-ms=\"\"",
        "data-action=\"run\"",
    ] {
        assert!(page.contains(hook), "{hook} missing");
    }
    assert!(page.contains("data-fallback") && page.contains("action=\"/configs\""), "the plain form for no JavaScript");
    assert!(!page.contains("<script>") && !page.contains("style=\""), "nothing inline (strict CSP)");
    let (status, js) = http("GET", &format!("{}/static/builder.js", node.url), &[], None);
    assert_eq!(status, 200);
    assert!(js.contains("pointerdown"));
    let (status, page) = http("GET", &format!("{}/builder?config=nope", node.url), &[("Cookie", &auth)], None);
    assert_eq!(status, 400);
    assert!(page.contains("config:"), "an unknown configuration is named");
}

#[test]
fn browser_drags_nodes_into_a_configuration_sees_the_estimate_move_saves_and_runs_it() {
    let Some((chromium, chromedriver)) = browser() else { return };
    let _serial = common::serial();
    let (a, b, c) = three_nodes();
    let dir = tempfile::tempdir().expect("tempdir");
    register_hello(&a, dir.path());
    let driver = Driver::start(&chromium, &chromedriver);
    log_in(&driver, &a);
    driver.call("POST", "/url", Some(json!({"url": format!("{}/builder?project=hello", a.url)})));
    wait_until("the builder to start", Duration::from_secs(10), || {
        driver.attr("[data-builder]", "hidden").is_none().then_some(())
    });
    wait_until("the project to load", Duration::from_secs(10), || {
        (driver.prop("[data-project-select]", "value").as_deref() == Some("hello")).then_some(())
    });

    // Two nodes' cards dragged into the CPU zone by the pointer.
    driver.drag(".card[data-node=\"beta\"] header", "[data-zone=\"cpu\"]");
    driver.drag(".card[data-node=\"gamma\"] header", "[data-zone=\"cpu\"]");
    for chip in ["cpu:beta", "cpu:gamma"] {
        wait_until(chip, Duration::from_secs(5), || driver.exists(&format!("[data-chip=\"{chip}\"]")).then_some(()));
    }
    let cores = |d: &Driver| d.attr("[data-total=\"cores\"]", "data-value").and_then(|v| v.parse::<u64>().ok());
    let both = cores(&driver).expect("total cores");
    assert!(both >= 2, "{both}");
    let first = wait_until("an estimate", Duration::from_secs(10), || driver.estimate());
    if std::env::var_os("BUILDNET_UPDATE_SCREENSHOT").is_some() {
        // docs/builder.png, shown in the README: `BUILDNET_UPDATE_SCREENSHOT=1 cargo test --test it -- builder::browser_drags`
        driver.keys(".card[data-node=\"alpha\"] [data-resource=\"memory\"] [data-add]", "\u{E007}");
        driver.call("POST", "/execute/sync", Some(json!({"script": "window.scrollTo(0, 0)", "args": []})));
        std::thread::sleep(Duration::from_millis(500));
        let png = driver.call("GET", "/screenshot", None);
        let bytes = decode_base64(png.as_str().expect("screenshot"));
        std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/builder.png"), bytes).expect("write screenshot");
        driver.click("[data-chip=\"memory:alpha\"] [data-remove]");
    }

    // One chip edited down to one core, the other removed: the totals and the estimate move.
    driver.keys("[data-chip=\"cpu:beta\"] input", "\u{E003}\u{E003}1");
    wait_until("beta's chip at one core", Duration::from_secs(5), || {
        (cores(&driver) == Some(both - b.get("/api/node").1["resources"]["cpu"]["offered"].as_u64().unwrap_or(1) + 1))
            .then_some(())
    });
    let removed = std::time::Instant::now();
    driver.click("[data-chip=\"cpu:gamma\"] [data-remove]");
    wait_until("one core in all", Duration::from_secs(5), || (cores(&driver) == Some(1)).then_some(()));
    let second =
        wait_until("the estimate to move", Duration::from_secs(10), || driver.estimate().filter(|e| *e != first));
    eprintln!(
        "builder estimate: {first} ms on {both} cores of beta and gamma, {second} ms on one core of beta; \
         shown {} ms after the change (page clock; {} ms with WebDriver's round trips)",
        driver.attr("[data-estimate-ms]", "data-latency-ms").unwrap_or_default(),
        removed.elapsed().as_millis()
    );

    // Saved, it is exactly what `config show` prints.
    driver.keys("[data-config-name]", "dragged");
    driver.click("[data-action=\"save-config\"]");
    wait_until("saved", Duration::from_secs(10), || driver.attr("[data-message]", "data-saved-id"));
    let saved = resources(&a, "dragged");
    assert_eq!(saved["cpu"]["node_allocations"], json!([{"node_id": b.node_id(), "cores": 1}]), "{saved}");
    let shown = a.cli_json(&["config", "show", "dragged"]);
    assert_eq!(shown["resources"], saved, "the page saved what `config show` prints");

    // Exported, it is the same configuration, and `config import` takes it back. Exported twice,
    // one link is left: the last one.
    driver.click("[data-action=\"export\"]");
    driver.click("[data-action=\"export\"]");
    let links = driver.call(
        "POST",
        "/execute/sync",
        Some(json!({"script": "return document.querySelectorAll('a[data-exported]').length", "args": []})),
    );
    assert_eq!(links, json!(1), "one export link after two exports");
    let exported = wait_until("the export's link", Duration::from_secs(5), || {
        driver.attr("a[data-exported]", "data-exported").filter(|t| !t.is_empty())
    });
    let mut exported: Value =
        serde_json::from_str(&exported).unwrap_or_else(|e| panic!("the export is not JSON ({e}): {exported}"));
    assert_eq!(exported["name"], "dragged", "{exported}");
    assert_eq!(exported["resources"]["cpu"]["node_allocations"], saved["cpu"]["node_allocations"], "{exported}");
    exported["name"] = json!("imported");
    let file = dir.path().join("exported.json");
    std::fs::write(&file, exported.to_string()).expect("write");
    let imported = a.cli(&["config", "import", file.to_str().expect("path")]);
    assert!(imported.status.success(), "{}", String::from_utf8_lossy(&imported.stderr));
    assert_eq!(resources(&a, "imported")["cpu"], saved["cpu"], "imported as exported");

    // Run from the page: it goes to the build's page, and the build succeeds on beta.
    driver.click("[data-action=\"run\"]");
    let build = wait_until("the build page", Duration::from_secs(10), || {
        let url = driver.call("GET", "/url", None);
        url.as_str().and_then(|u| u.split("/builds/").nth(1)).map(str::to_string)
    });
    let status = wait_until("the build to finish", Duration::from_secs(120), || {
        let (_, s) = a.get(&format!("/api/build/{build}"));
        let state = s["status"].as_str().unwrap_or_default().to_string();
        (state != "running" && state != "pending").then_some(s)
    });
    assert_eq!(status["status"], "succeeded", "{status}");
    let errors = driver.console_errors();
    assert!(errors.is_empty(), "console errors: {errors:?}");

    // The keyboard alone builds the same configuration: "+ cpu" on beta, the amount, a name.
    driver.call("POST", "/url", Some(json!({"url": format!("{}/builder?project=hello", a.url)})));
    wait_until("the builder again", Duration::from_secs(10), || {
        driver.attr("[data-builder]", "hidden").is_none().then_some(())
    });
    driver.keys(".card[data-node=\"beta\"] [data-resource=\"cpu\"] [data-add]", "\u{E007}");
    wait_until("a chip by keyboard", Duration::from_secs(5), || {
        driver.exists("[data-chip=\"cpu:beta\"]").then_some(())
    });
    driver.keys("[data-chip=\"cpu:beta\"] input", "\u{E003}\u{E003}1");
    driver.keys("[data-config-name]", "typed");
    driver.keys("[data-action=\"save-config\"]", "\u{E007}");
    wait_until("saved by keyboard", Duration::from_secs(10), || driver.attr("[data-message]", "data-saved-id"));
    assert_eq!(resources(&a, "typed"), saved, "the keyboard made the same configuration");
    driver.keys("[data-action=\"save-template\"]", "\u{E007}");
    wait_until("a template from the page", Duration::from_secs(10), || {
        let (_, t) = a.get("/api/templates");
        t["templates"].as_array()?.iter().any(|t| t["name"] == "typed template").then_some(())
    });
    let errors = driver.console_errors();
    assert!(errors.is_empty(), "console errors: {errors:?}");
    drop(c);
}

#[test]
fn browser_opens_a_saved_configuration_flags_an_offline_node_and_keeps_input_on_errors() {
    let Some((chromium, chromedriver)) = browser() else { return };
    let _serial = common::serial();
    let (a, b, c) = three_nodes();
    let cfg = json!({"name": "pair", "resources": {"cpu": {"cores": 2, "node_allocations": [
        {"node_id": b.node_id(), "cores": 1}, {"node_id": c.node_id(), "cores": 1}]}}});
    let (status, body) = a.post("/api/configs", &cfg);
    assert_eq!(status, 201, "{body}");
    let driver = Driver::start(&chromium, &chromedriver);
    log_in(&driver, &a);
    driver.call("POST", "/url", Some(json!({"url": format!("{}/configs", a.url)})));
    driver.click("[data-edit-in-builder=\"pair\"]");
    for chip in ["cpu:beta", "cpu:gamma"] {
        wait_until(chip, Duration::from_secs(10), || driver.exists(&format!("[data-chip=\"{chip}\"]")).then_some(()));
    }
    assert_eq!(driver.prop("[data-config-name]", "value").as_deref(), Some("pair"));

    // A template fills the canvas: Local Only is this node's cores.
    driver.click("[data-template-select] option[value=\"local-only\"]");
    wait_until("the template's chip", Duration::from_secs(5), || {
        (driver.exists("[data-chip=\"cpu:alpha\"]") && !driver.exists("[data-chip=\"cpu:beta\"]")).then_some(())
    });
    driver.call("POST", "/refresh", Some(json!({})));
    for chip in ["cpu:beta", "cpu:gamma"] {
        wait_until(chip, Duration::from_secs(10), || driver.exists(&format!("[data-chip=\"{chip}\"]")).then_some(()));
    }

    // gamma dies while the page is open: its card greys out and its chip is flagged.
    let (_, _keep) = c.stop();
    wait_until("gamma offline on the page", Duration::from_secs(15), || {
        (driver.exists(".card.offline[data-node=\"gamma\"]") && driver.exists(".chip.flagged[data-chip=\"cpu:gamma\"]"))
            .then_some(())
    });

    // A chip over what its node has: the save is refused, the chip is pointed at, nothing is lost.
    driver.keys("[data-chip=\"cpu:beta\"] input", "\u{E003}\u{E003}9");
    driver.click("[data-action=\"save-config\"]");
    wait_until("the chip marked and the save refused", Duration::from_secs(5), || {
        (driver.exists("[data-chip=\"cpu:beta\"].invalid")
            && driver.text("[data-message]").contains("Fix the marked chip cpu:beta"))
        .then_some(())
    });
    assert_eq!(driver.prop("[data-chip=\"cpu:beta\"] input", "value").as_deref(), Some("9"), "the input is kept");
    assert!(driver.exists("[data-chip=\"cpu:gamma\"]"), "the other chip is kept");
    assert_eq!(resources(&a, "pair")["cpu"]["node_allocations"][0]["cores"], 1, "nothing was saved");
}

fn decode_base64(text: &str) -> Vec<u8> {
    let table = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = text.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let v = chunk.iter().enumerate().fold(0u32, |acc, (i, c)| acc | (u32::from(table(*c)) << (18 - 6 * i)));
        out.extend_from_slice(&v.to_be_bytes()[1..chunk.len()]);
    }
    out
}
