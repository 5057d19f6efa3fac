//! What a node trusts of its own state across restarts: its ledger chain is checked before it
//! serves or extends it, and its coordinator epoch never goes back.

use std::process::Command;
use std::time::Duration;

use crate::common::{self, wait_all_online, wait_until, Start, TestNode};

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
    let a = TestNode::start_with(Start::named("alpha"));
    let b = a.join("beta", "builder", Start::default());
    wait_all_online(&[&a, &b]);
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
