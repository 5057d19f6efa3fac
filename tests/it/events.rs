//! `/ws`: authenticated, same-origin only, and it streams the events a client subscribed to.

use std::time::Duration;

use crate::common::{self, TestNode};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

fn ws_url(node: &TestNode) -> String {
    format!("{}/ws", node.url.replacen("http://", "ws://", 1))
}

/// Reads text messages until one satisfies `want`, or fails after a deadline.
async fn next_matching(
    stream: &mut (impl futures_util::Stream<Item = Result<awc::ws::Frame, awc::error::WsProtocolError>> + Unpin),
    want: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = actix_rt::time::Instant::now() + Duration::from_secs(10);
    loop {
        let frame =
            actix_rt::time::timeout(deadline.saturating_duration_since(actix_rt::time::Instant::now()), stream.next())
                .await
                .expect("event in time")
                .expect("stream open")
                .expect("frame");
        if let awc::ws::Frame::Text(text) = frame {
            let v: Value = serde_json::from_slice(&text).expect("JSON event");
            if want(&v) {
                return v;
            }
        }
    }
}

#[actix_rt::test]
async fn subscribers_receive_ledger_and_resource_events() {
    let node = TestNode::start();
    let client = awc::Client::new();

    let refused = client.ws(ws_url(&node)).connect().await;
    assert!(refused.is_err(), "no key, no events");
    let foreign = client.ws(ws_url(&node)).bearer_auth(&node.admin_key).origin("http://evil.example").connect().await;
    assert!(foreign.is_err(), "another site's origin is refused");

    let (_, mut conn) = client
        .ws(ws_url(&node))
        .bearer_auth(&node.admin_key)
        .origin(node.url.as_str())
        .connect()
        .await
        .expect("connect");
    conn.send(awc::ws::Message::Text(json!({"type": "subscribe", "channels": ["galaxies"]}).to_string().into()))
        .await
        .expect("send");
    let err = next_matching(&mut conn, |v| v["type"] == "error").await;
    assert!(err["message"].as_str().expect("message").contains("channels"));
    conn.send(awc::ws::Message::Text(
        json!({"type": "subscribe", "channels": ["ledger", "resources"]}).to_string().into(),
    ))
    .await
    .expect("send");
    next_matching(&mut conn, |v| v["type"] == "subscribed").await;

    let key = node.key("observer");
    assert!(key.starts_with("bn_"));
    let event = next_matching(&mut conn, |v| v["type"] == "ledger_entry").await;
    assert_eq!(event["entry"]["entry_type"], "KeyCreated");
    assert_eq!(event["entry"]["data"]["name"], "test-observer");

    let (status, _) = node.post("/api/node/scan", &json!({}));
    assert_eq!(status, 200);
    let update = next_matching(&mut conn, |v| v["type"] == "resource_update").await;
    assert!(update["resources"]["cpu"]["count"].as_u64().expect("cores") >= 1);

    // The node told to stop ends the stream itself (it held every stop for the server's whole
    // graceful timeout before), and exits.
    node.signal(libc::SIGTERM);
    let closed = actix_rt::time::timeout(Duration::from_secs(4), async {
        loop {
            match conn.next().await {
                None | Some(Err(_)) | Some(Ok(awc::ws::Frame::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the event stream ended when the node was told to stop");
    let mut node = node;
    let status = common::exit_within(&mut node.child, Duration::from_secs(20)).expect("the node exits");
    assert!(status.success(), "{status}");
}
