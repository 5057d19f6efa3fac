//! What a node trusts, and what an outsider can do to it. Its own state across restarts: its
//! ledger chain is checked before it serves or extends it, and its coordinator epoch never goes
//! back. Its unauthenticated surfaces: joins run inside Noise and are pinned to the mesh key (a
//! recording proxy sees no names, roster or token; an impostor is refused), floods and oversized
//! joins are rate-limited and summarised without splitting the mesh, and the pages' session
//! cookie changes nothing without its CSRF token from the node's own origin.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::outsider::{self, block_on, Impostor};
use crate::common::proxy::Proxy;
use crate::common::{self, http, http_full, wait_all_online, wait_until, Start, TestNode};
use crate::mesh::{agreed, heads};
use crate::pages::{cookie, hidden_csrf, session, submit_login};
use buildnet_actors::mesh::roster::MeshInfo;

#[test]
fn a_node_whose_own_ledger_was_altered_refuses_to_start() {
    let node = TestNode::start();
    node.key("observer");
    let (dir, _keep) = {
        let dir = node.dir.clone();
        let (status, keep) = node.stop();
        assert!(status.success());
        (dir, keep)
    };
    let db = rusqlite::Connection::open(dir.join("buildnet.db")).expect("open db");
    let changed = db
        .execute("UPDATE ledger SET entry_data = replace(entry_data, 'observer', 'admin') WHERE seq = 3", [])
        .expect("tamper");
    assert_eq!(changed, 1);
    drop(db);
    let out = Command::new(common::BIN)
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .output()
        .expect("run buildnet up");
    assert!(!out.status.success(), "it must not start");
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().find(|l| l.starts_with("buildnet:")).unwrap_or_default();
    assert!(line.contains("own ledger was altered") && line.contains("#3"), "one line naming the entry: {err}");
    assert!(!dir.join("address").exists(), "it never served");
}

#[test]
fn the_coordinator_epoch_never_goes_back_after_a_restart() {
    let _serial = common::serial();
    let (a, b) = common::two_nodes();
    let epoch_of = |n: &TestNode| n.get("/api/mesh").1["epoch"].as_u64().unwrap_or(0);
    // Whichever coordinates (once both agree), stopping it moves the other to a new epoch.
    let coordinator = wait_until("one coordinator for both", Duration::from_secs(10), || {
        let (x, y) = (a.get("/api/mesh").1, b.get("/api/mesh").1);
        (x["coordinator"] == y["coordinator"] && x["epoch"] == y["epoch"])
            .then(|| x["coordinator"].as_str().map(str::to_string))
            .flatten()
    });
    let (stays, goes) = if coordinator == a.node_id() { (b, a) } else { (a, b) };
    let before = epoch_of(&stays);
    let (_, _gone) = goes.stop();
    let raised = wait_until("a new coordinator epoch", Duration::from_secs(10), || {
        let e = epoch_of(&stays);
        (e > before).then_some(e)
    });
    let (dir, keep) = {
        let dir = stays.dir.clone();
        let (status, keep) = stays.stop();
        assert!(status.success());
        (dir, keep)
    };
    let again = TestNode::start_with(Start { dir: Some(dir), ..Default::default() });
    assert!(epoch_of(&again) >= raised, "epoch {} after restart, {raised} before", epoch_of(&again));
    drop(keep);
}

fn mesh_info(node: &TestNode) -> MeshInfo {
    let (_, pool) = node.get("/api/pool");
    let (_, mesh) = node.get("/api/mesh");
    let public_key = mesh["mesh_key"].as_str().map(str::to_string).unwrap_or_default();
    MeshInfo { mesh_id: pool["mesh_id"].as_str().expect("mesh id").to_string(), public_key }
}

#[test]
fn a_join_through_a_recording_proxy_shows_no_names_roster_or_token() {
    let _serial = common::serial();
    let a = TestNode::start_with(Start::named("alpha-holder"));
    let proxy = Proxy::start();
    proxy.set_target(&a.url);
    let token = a.token("builder");
    let b = TestNode::start_with(Start {
        args: ["--name", "bravo-joiner", "--join", &proxy.url(), "--token", &token].map(String::from).to_vec(),
        ..Default::default()
    });
    wait_all_online(&[&a, &b]);
    let capture = proxy.captured();
    assert!(capture.len() > 500, "the join crossed the proxy ({} bytes)", capture.len());
    let secret = token.rsplit('_').next().expect("secret").to_string();
    let (a_port, b_port) = (a.url.rsplit(':').next().expect("port"), b.url.rsplit(':').next().expect("port"));
    for needle in [
        "alpha-holder".to_string(),
        "bravo-joiner".to_string(),
        token.clone(),
        secret,
        a.node_id(),
        b.node_id(),
        format!("127.0.0.1:{a_port}"),
        format!("127.0.0.1:{b_port}"),
    ] {
        assert!(
            !capture.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "'{needle}' crossed the proxy in clear"
        );
    }
}

#[test]
fn a_joiner_refuses_an_impostor_that_cannot_prove_the_mesh_key() {
    let a = TestNode::start_with(Start::named("real-holder"));
    let mesh = mesh_info(&a);
    assert_eq!(mesh.public_key.len(), 64, "/api/mesh shows the mesh key");
    let token = a.token("builder");

    // It stole the token: it can read the join, but cannot sign with the mesh key.
    let thief = Impostor::start(mesh.clone(), Some(&token));
    let err = common::join_with(&thief.url, &token, "victim").expect_err("the impostor must be refused");
    assert!(err.contains("did not prove it holds the key of mesh"), "{err}");
    assert!(thief.seen.lock().expect("lock").iter().any(|s| s == "read the request of victim"), "{:?}", thief.seen);

    // Without the token it reads nothing of the join.
    let stranger = Impostor::start(mesh, None);
    let err = common::join_with(&stranger.url, &token, "victim").expect_err("refused");
    assert!(err.starts_with("buildnet: join failed"), "{err}");
    let seen = stranger.seen.lock().expect("lock").clone();
    assert!(seen.iter().any(|s| s.starts_with("could not read the join")), "{seen:?}");
    assert!(!seen.iter().any(|s| s.starts_with("read the request")), "{seen:?}");

    // A token altered (another mesh id) or of another mesh is said to be so, not as a cipher's
    // error, and a URL that is none is a usage error before anything starts.
    let (_, secret) = token.trim_start_matches("bnj_").split_once('_').expect("token shape");
    let altered = format!("bnj_ffffffffffffffff_{secret}");
    let err = common::join_with(&a.url, &altered, "victim").expect_err("refused");
    assert!(err.contains("did not make that join token"), "{err}");
    let bad_url = std::process::Command::new(common::BIN)
        .args(["up", "--listen", "127.0.0.1:0", "--join", "notaurl", "--token", &token])
        .output()
        .expect("run");
    assert_eq!(bad_url.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_url.stderr).contains("--join: expected a node's URL"));

    // The real holder still takes the token: nobody spent it.
    common::join_with(&a.url, &token, "rightful").expect("the token still admits at the real node");
}

#[test]
fn a_join_flood_and_an_oversized_join_leave_the_mesh_replicating_with_one_coordinator() {
    let _serial = common::serial();
    let (a, b) = common::two_nodes();
    let mesh_id = mesh_info(&a).mesh_id;
    let token = a.token("builder");

    // A 200 kB name with a valid token: refused before anything is stored or signed.
    let huge = "n".repeat(200_000);
    let err = block_on(outsider::join_as(&a.url, &token, &huge)).expect_err("refused");
    assert!(err.contains("must fit one frame"), "{err}");
    let err = block_on(outsider::join_as(&a.url, &token, &"m".repeat(1000))).expect_err("refused");
    assert!(err.contains("name: must be 1 to 64"), "{err}");

    // 300 hellos naming tokens that do not exist, as fast as one client sends them.
    let started = Instant::now();
    let outcomes: Vec<Result<String, u16>> =
        block_on(async { futures_util::future::join_all((0..300).map(|_| outsider::hello(&a.url, &mesh_id))).await });
    let flood_ms = started.elapsed().as_millis();
    let limited = outcomes.iter().filter(|o| **o == Err(429)).count();
    let refused = outcomes.iter().filter(|o| o.as_ref().is_ok_and(|r| r.contains("not known"))).count();
    assert!(limited >= 280 && limited + refused == 300, "{limited} rate-limited, {refused} refused: {outcomes:?}");
    let (status, headers, body) = http_full("GET", &format!("{}/mesh/join", a.url), &[], None);
    assert_eq!(status, 429, "{body}");
    let retry: u64 =
        headers.iter().find(|(k, _)| k == "retry-after").and_then(|(_, v)| v.parse().ok()).expect("Retry-After");
    assert!((1..=10).contains(&retry), "{retry}");
    assert!(body.contains("rate_limited"), "{body}");

    // Both nodes keep one coordinator and one ledger.
    agreed(&[&a, &b], Duration::from_secs(5));
    let summary = wait_until("refused joins summarised", Duration::from_secs(30), || {
        let (_, v) = a.get("/api/ledger?types=JoinRefused&limit=100");
        let entries = v["entries"].as_array().cloned().unwrap_or_default();
        let attempts: u64 = entries.iter().filter_map(|e| e["data"]["attempts"].as_u64()).sum();
        (attempts >= 302).then_some(entries)
    });
    assert!(summary.len() <= 3, "one entry per source per interval, not one per attempt: {} entries", summary.len());
    wait_until("b holds a's chain with the summary", Duration::from_secs(15), || {
        (heads(&a) == heads(&b)).then_some(())
    });
    agreed(&[&a, &b], Duration::from_secs(5));
    eprintln!(
        "join flood: 300 hellos in {flood_ms} ms, {limited} answered 429, {refused} refused; {} ledger entries",
        summary.len()
    );

    // The token the oversized joins used was never spent; the rightful node joins once the
    // limit lets its address in again.
    std::thread::sleep(Duration::from_secs(retry));
    common::join_with(&a.url, &token, "rightful").expect("joins");
}

/// Logs in through the form; returns the session cookie header and the page's CSRF token.
fn login(node: &TestNode) -> (String, String) {
    let auth = session(node);
    let csrf = hidden_csrf(&http("GET", &format!("{}/keys", node.url), &[("Cookie", &auth)], None).1);
    (auth, csrf)
}

#[test]
fn a_session_cookie_changes_nothing_without_its_token_from_its_own_origin() {
    let node = TestNode::start();
    let url = |p: &str| format!("{}{p}", node.url);
    let (auth, csrf) = login(&node);
    let host = node.url.trim_start_matches("http://").to_string();
    let own = format!("http://{host}");

    // The JSON API: a cookie alone, a foreign origin, or a wrong token is refused.
    let scan = |headers: &[(&str, &str)]| http("POST", &url("/api/node/scan"), headers, Some(b""));
    let (status, body) = scan(&[("Cookie", &auth), ("Origin", "http://127.0.0.1:9999")]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("csrf_required"), "{body}");
    assert_eq!(scan(&[("Cookie", &auth), ("X-CSRF-Token", &csrf), ("Origin", "http://127.0.0.1:9999")]).0, 403);
    assert_eq!(scan(&[("Cookie", &auth), ("X-CSRF-Token", "forged"), ("Origin", &own)]).0, 403);
    assert_eq!(scan(&[("Cookie", &auth), ("X-CSRF-Token", &csrf), ("Origin", &own)]).0, 200);
    assert_eq!(http("GET", &url("/api/node"), &[("Cookie", &auth)], None).0, 200, "reads need no token");

    // A page form with the right token but from another origin (or Referer) changes nothing.
    let ctype = ("Content-Type", "application/x-www-form-urlencoded");
    let form = format!("csrf={csrf}&name=crosssite&role=admin");
    for foreign in [("Origin", "http://evil.example"), ("Referer", "http://evil.example/page")] {
        let (status, _) = http("POST", &url("/keys"), &[ctype, ("Cookie", &auth), foreign], Some(form.as_bytes()));
        assert_ne!(status, 303);
        assert!(!node.get("/api/keys").1.to_string().contains("crosssite"), "{foreign:?} was taken");
    }
    let (status, _) = http("POST", &url("/keys"), &[ctype, ("Cookie", &auth), ("Origin", &own)], Some(form.as_bytes()));
    assert_eq!(status, 200);
    assert!(node.get("/api/keys").1.to_string().contains("crosssite"), "the same origin is taken");

    // A logout with a forged token keeps the session; a real one ends it on the server, so the
    // old cookie is worthless even to someone who kept a copy.
    let (status, _) = http("POST", &url("/logout"), &[ctype, ("Cookie", &auth)], Some(b"csrf=forged"));
    assert_ne!(status, 303);
    assert_eq!(http("GET", &url("/api/node"), &[("Cookie", &auth)], None).0, 200, "still logged in");
    let (status, _) = http(
        "POST",
        &url("/logout"),
        &[ctype, ("Cookie", &auth), ("Origin", &own)],
        Some(format!("csrf={csrf}").as_bytes()),
    );
    assert_eq!(status, 303);
    assert_eq!(http("GET", &url("/api/node"), &[("Cookie", &auth)], None).0, 401, "the session is gone");
}

#[test]
fn logins_are_rate_limited_per_source() {
    let node = TestNode::start();
    let (_, headers, page) = http_full("GET", &format!("{}/login", node.url), &[], None);
    let (csrf_cookie, csrf) = (cookie(&headers, "bn_login_csrf").expect("csrf cookie"), hidden_csrf(&page));
    let attempt = || {
        http_full(
            "POST",
            &format!("{}/login", node.url),
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Cookie", &format!("bn_login_csrf={csrf_cookie}")),
            ],
            Some(format!("key=bn_guess&csrf={csrf}").as_bytes()),
        )
    };
    let statuses: Vec<u16> = (0..30).map(|_| attempt().0).collect();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(statuses[..20].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(limited >= 9, "{statuses:?}");
    let (status, headers, body) = attempt();
    assert_eq!(status, 429);
    assert!(headers.iter().any(|(k, _)| k == "retry-after"), "{headers:?}");
    assert!(body.contains("Too many login attempts"));
    // A key-sized field cap: a 1 MB "key" is answered without being looked up.
    let (status, _) = http("GET", &format!("{}/api/health", node.url), &[], None);
    assert_eq!(status, 200, "the node keeps serving");
}

#[test]
fn over_https_the_session_cookie_is_marked_secure() {
    let node = TestNode::start_with(Start { args: vec!["--tls".into()], ..Default::default() });
    assert!(node.url.starts_with("https://"), "{}", node.url);
    let (status, headers) = submit_login(&node, &node.admin_key);
    assert_eq!(status, 303);
    let set = headers.iter().find(|(k, v)| k == "set-cookie" && v.starts_with("bn_session=")).expect("session cookie");
    assert!(set.1.contains("Secure") && set.1.contains("HttpOnly"), "{}", set.1);
}

/// A member that dismisses a removed node (its revoked entry, then the link closes) reads from
/// it one thing: a newer, unrevoked entry of the node's own, which a node admitted again sends
/// back. Here the removed node, with its own keys from its data dir, answers the dismissal with
/// a flood instead: 100 roster messages of 100 forged entries each. The member checks at most
/// one (its signature is refused), closes the link, keeps the node removed and keeps serving
/// (before, each forged copy was a signature check on the store's thread and a warning).
#[test]
fn a_removed_node_that_answers_its_dismissal_with_forged_entries_is_read_once_and_closed() {
    use buildnet_actors::mesh::join::FrameIo;
    use buildnet_actors::mesh::noise::{prologue, Handshake};
    use buildnet_actors::mesh::{bridge, roster};
    use buildnet_actors::wire::{self, Envelope, MeshMessage, NodeId, Role, RosterEntry};

    let _serial = common::serial();
    let (a, b) = common::two_nodes();
    let (a_id, b_id) = (a.node_id(), b.node_id());
    b.signal(libc::SIGKILL);
    wait_until("beta offline", Duration::from_secs(10), || {
        (a.status_of(&b_id).as_deref() == Some("offline")).then_some(())
    });
    let out = a.cli(&["node", "remove", "beta"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (private, public) = roster::noise_keys(&b.dir).expect("beta's noise key");
    let mesh_id = a.get("/api/mesh").1["mesh_id"].as_str().expect("mesh id").to_string();
    let refusals_before = a.stderr_text().matches("roster entry refused").count();

    let (told, sent) = block_on(async {
        let mut ws = outsider::open_at(&a.url, "/mesh").await.expect("the member takes the socket");
        let mut hs = Handshake::initiator(&private, &prologue(&mesh_id)).expect("handshake");
        while !hs.finished() {
            if hs.my_turn() {
                ws.send(hs.write().expect("write")).await.expect("send");
            } else {
                hs.read(&ws.recv().await.expect("the member's handshake")).expect("read");
            }
        }
        let mut transport = hs.into_transport().expect("transport");
        let member = NodeId::parse(&a_id).expect("id");
        let first = ws.recv().await.expect("the dismissal");
        let told = match bridge::open_frame(&mut transport, &member, &first).expect("opens") {
            bridge::Opened::Message(MeshMessage::Roster { entries }) => entries,
            other => panic!("expected the revoked entry, got {other:?}"),
        };
        let me = NodeId::parse(&b_id).expect("id");
        let forged = |i: u64| RosterEntry {
            node_id: me.clone(),
            name: "beta".into(),
            role: Role::Admin,
            ed_public: "ab".repeat(32),
            noise_public: wire::hex(&public),
            address: "http://127.0.0.1:9".into(),
            issued_at_ms: wire::now_ms() + 1_000_000 + i,
            revoked: false,
            signature: "ef".repeat(64),
        };
        let mut sent = 0;
        for m in 0..100u64 {
            let body = MeshMessage::Roster { entries: (0..100).map(|i| forged(m * 100 + i)).collect() };
            let env =
                Envelope { v: wire::PROTOCOL_VERSION, id: m + 1, from: me.clone(), to: Some(member.clone()), body };
            let frame = transport.encrypt(&wire::encode(&env).expect("encode")).expect("encrypt");
            if ws.send(frame).await.is_err() {
                break;
            }
            sent += 1;
        }
        // The member closes the link: nothing but its close comes back.
        let closed = tokio::time::timeout(Duration::from_secs(5), ws.recv()).await;
        assert!(matches!(closed, Ok(Err(_))), "the member closed the link within its grace: {closed:?}");
        (told, sent)
    });
    assert!(told.len() == 1 && told[0].revoked, "the member told beta it was removed: {told:?}");
    assert!(sent > 0, "the flood reached the member");
    std::thread::sleep(Duration::from_millis(500));
    let refusals = a.stderr_text().matches("roster entry refused").count() - refusals_before;
    assert!(refusals <= 1, "{refusals} forged entries were checked and refused, of {} sent", sent * 100);
    assert!(!a.pool_nodes().iter().any(|n| n["id"] == b_id.as_str()), "beta is still removed");
    assert_eq!(a.get("/api/health").0, 200, "the member keeps serving");
}
