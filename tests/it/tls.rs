//! TLS for the HTTP face: `buildnet up --tls` serves HTTPS with a self-signed certificate kept in
//! the data dir (or a given one), the CLI pins its fingerprint and refuses another, plain HTTP on
//! the TLS port gets nowhere, two TLS nodes form a mesh over https/wss, and plain HTTP on a
//! non-loopback address is warned about.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use crate::common::{self, wait_all_online, wait_until, Start, TestNode, BIN};

/// The fingerprint a node wrote to its data dir.
fn stored_fingerprint(node: &TestNode) -> String {
    std::fs::read_to_string(node.dir.join("tls-fingerprint")).expect("tls-fingerprint").trim().to_string()
}

/// `AB:CD:…` of the first certificate in a PEM file, computed here independently of the node.
fn fingerprint_of(pem: &Path) -> String {
    let cert = CertificateDer::pem_file_iter(pem).expect("PEM").next().expect("a certificate").expect("valid");
    Sha256::digest(&cert).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// The CLI from a machine that has no data dir of the node: address, key and pin from flags.
fn cli_elsewhere(node: &TestNode, args: &[&str]) -> Output {
    let empty = tempfile::tempdir().expect("tempdir");
    Command::new(BIN)
        .args(args)
        .env("BUILDNET_DATA_DIR", empty.path())
        .env("BUILDNET_TOKEN", &node.admin_key)
        .env_remove("BUILDNET_ADDRESS")
        .env_remove("BUILDNET_TLS_FINGERPRINT")
        .stdin(Stdio::null())
        .output()
        .expect("run buildnet")
}

fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr).lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
}

/// What a node on the TLS port answers to a plain HTTP request (its first bytes, if any).
fn plain_http_answer(url: &str) -> String {
    let host = url.trim_start_matches("https://");
    let mut tcp = TcpStream::connect(host).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let _ = tcp.write_all(format!("GET /api/health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes());
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).to_string()
}

#[test]
fn a_tls_node_serves_https_and_the_cli_pins_its_fingerprint() {
    let node = TestNode::start_with(Start { args: vec!["--tls".into()], ..Default::default() });
    assert!(node.url.starts_with("https://127.0.0.1:"), "the address file carries the https URL: {}", node.url);

    // The self-signed certificate and its key are in the data dir, the key private; the
    // fingerprint printed at start is the certificate's and is stored beside it.
    let cert = node.dir.join("tls-cert.pem");
    let mode = std::fs::metadata(node.dir.join("tls-key.pem")).expect("tls-key.pem").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let fp = stored_fingerprint(&node);
    assert_eq!(fp, fingerprint_of(&cert));
    let stdout = std::fs::read_to_string(&node.stdout).expect("stdout");
    assert!(stdout.contains(&format!("Fingerprint: SHA-256 {fp}")), "{stdout}");
    assert!(stdout.contains("(self-signed, made now)"), "{stdout}");
    assert!(!node.stderr_text().contains("plain HTTP"), "no warning for TLS");

    // HTTPS answers; plain HTTP on the same port gets no HTTP answer.
    let (status, body) = node.get("/api/node");
    assert_eq!(status, 200, "{body}");
    let answer = plain_http_answer(&node.url);
    assert!(!answer.starts_with("HTTP/"), "plain HTTP must not be served on the TLS port: {answer:?}");
    let plain = cli_elsewhere(&node, &["node", "status", "--address", &node.url.replacen("https://", "http://", 1)]);
    assert!(!plain.status.success(), "plain HTTP to the TLS port failed");

    // The local CLI pins the fingerprint from the data dir, with no flags.
    let out = node.cli(&["node", "status"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // From elsewhere: --tls-fingerprint (or BUILDNET_TLS_FINGERPRINT), in either spelling.
    let out = cli_elsewhere(&node, &["--address", &node.url, "--tls-fingerprint", &fp, "pool", "status"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bare = fp.replace(':', "").to_lowercase();
    let out = cli_elsewhere(&node, &["node", "status", "--address", &node.url, "--tls-fingerprint", &bare]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A wrong fingerprint is refused: one line saying what to do, non-zero exit.
    let wrong = format!("{}{}", if fp.starts_with('0') { "1" } else { "0" }, &fp[1..]);
    let out = cli_elsewhere(&node, &["node", "status", "--address", &node.url, "--tls-fingerprint", &wrong]);
    assert_eq!(out.status.code(), Some(2));
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(&format!("not the pinned {wrong}")) && lines[0].contains(&fp), "{}", lines[0]);
    assert!(lines[0].contains("--tls-fingerprint"), "{}", lines[0]);
    // So is an https node with no fingerprint known: its certificate is no known authority's.
    let out = cli_elsewhere(&node, &["node", "status", "--address", &node.url]);
    assert_eq!(out.status.code(), Some(2));
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("no known authority") && lines[0].contains("--tls-fingerprint"), "{}", lines[0]);
    // A malformed fingerprint is a usage error naming the flag.
    let out = cli_elsewhere(&node, &["node", "status", "--address", &node.url, "--tls-fingerprint", "AB:CD"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_lines(&out)[0].contains("--tls-fingerprint: expected a SHA-256 fingerprint"));

    // curl trusts the certificate file for the name localhost.
    if Command::new("curl").arg("--version").output().is_ok() {
        let port = node.url.rsplit(':').next().expect("port");
        let out = Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(&cert)
            .arg(format!("https://localhost:{port}/api/health"))
            .output()
            .expect("curl");
        assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    }

    // A restart keeps the certificate, so pins stay valid.
    let dir = node.dir.clone();
    let (_, guard) = node.stop();
    let again = TestNode::start_with(Start { args: vec!["--tls".into()], dir: Some(dir), ..Default::default() });
    assert_eq!(stored_fingerprint(&again), fp);
    let stdout = std::fs::read_to_string(&again.stdout).expect("stdout");
    assert!(!stdout.contains("made now"), "{stdout}");
    let out = again.cli(&["node", "status"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    drop(again);
    drop(guard);
}

#[test]
fn a_given_certificate_is_served_and_a_bad_one_stops_up_naming_the_field() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    let (cert_path, key_path) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");

    let config =
        format!(r#"{{"network": {{"tls": {{"cert": "{}", "key": "{}"}}}}}}"#, cert_path.display(), key_path.display());
    let node = TestNode::start_with(Start { config: Some(&config), ..Default::default() });
    assert!(node.url.starts_with("https://"), "{}", node.url);
    assert_eq!(stored_fingerprint(&node), fingerprint_of(&cert_path));
    assert!(!node.dir.join("tls-key.pem").exists(), "no certificate of its own is made");
    let out = node.cli(&["node", "status"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    drop(node);

    // A key that is not the certificate's, and a missing file: one line naming the field.
    let other = rcgen::KeyPair::generate().expect("key");
    let wrong_key = tmp.path().join("other.pem");
    std::fs::write(&wrong_key, other.serialize_pem()).expect("write key");
    for (cert, key, field) in [
        (cert_path.clone(), wrong_key, "network.tls.key"),
        (tmp.path().join("missing.pem"), key_path.clone(), "network.tls.cert"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let config =
            format!(r#"{{"network": {{"tls": {{"cert": "{}", "key": "{}"}}}}}}"#, cert.display(), key.display());
        std::fs::write(dir.path().join("node-config.json"), config).expect("config");
        let out = Command::new(BIN)
            .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .output()
            .expect("run");
        assert!(!out.status.success());
        let lines = stderr_lines(&out);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with(&format!("buildnet: {field}: ")), "{}", lines[0]);
        assert!(!dir.path().join("address").exists(), "it never served");
    }
}

#[test]
fn two_tls_nodes_join_and_link_over_https() {
    let _serial = common::serial();
    let a = TestNode::start_with(Start {
        args: vec!["--name".into(), "alpha".into(), "--tls".into()],
        ..Default::default()
    });
    let b = a.join("beta", "builder", Start { args: vec!["--tls".into()], ..Default::default() });
    assert!(b.url.starts_with("https://"), "{}", b.url);
    wait_all_online(&[&a, &b]);
    // Each knows the other by its https address, and the link carries the ledger both ways.
    for (n, other) in [(&a, &b), (&b, &a)] {
        let id = other.node_id();
        let listed = n.pool_nodes().into_iter().find(|x| x["id"] == id.as_str()).expect("listed");
        assert_eq!(listed["address"], other.url.as_str());
    }
    let joined = wait_until("beta's join in alpha's ledger", Duration::from_secs(15), || {
        let v = b.cli_json(&["ledger", "--type", "NodeJoined"]);
        let entries = v["entries"].as_array().cloned().unwrap_or_default();
        (!entries.is_empty()).then_some(entries.len())
    });
    assert!(joined >= 1);
}

#[test]
fn plain_http_on_a_non_loopback_address_is_warned_about() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("d");
    let stderr = tmp.path().join("stderr");
    let mut child = Command::new(BIN)
        .args(["up", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(&dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("spawn");
    wait_until("the node to write its address", Duration::from_secs(60), || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("up exited with {status}: {}", std::fs::read_to_string(&stderr).unwrap_or_default());
        }
        dir.join("address").exists().then_some(())
    });
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&stderr).expect("stderr");
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("plain HTTP")).collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(warnings[0].starts_with("buildnet: warning: serving plain HTTP on 0.0.0.0:"), "{}", warnings[0]);
    assert!(warnings[0].contains("--tls"), "{}", warnings[0]);
    // On loopback, plain HTTP is not warned about.
    let local = TestNode::start();
    assert!(!local.stderr_text().contains("plain HTTP"), "{}", local.stderr_text());
}
