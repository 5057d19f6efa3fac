//! `/ws`: live events for pages and scripts (plan §13.2). Authenticated like the API; a browser
//! must come from this node's own origin. A client subscribes to channels (`resources`, `nodes`,
//! `ledger`, `builds`) and then receives each event as one JSON text message.

use std::collections::HashSet;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::auth::Caller;
use super::error::ApiError;
use super::AppState;

/// Channels a client may subscribe to.
pub const CHANNELS: [&str; 4] = ["resources", "nodes", "ledger", "builds"];

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage {
    Subscribe { channels: Vec<String> },
    Unsubscribe { channels: Vec<String> },
}

pub async fn events(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    caller: Caller,
) -> actix_web::Result<HttpResponse> {
    caller.require(buildnet_actors::wire::Action::View, "watch events")?;
    if !super::auth::same_origin(&req) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "bad_origin",
            "WebSocket connections from other sites are refused",
        )
        .into());
    }
    let (response, mut session, mut stream) = actix_ws::handle(&req, body)?;
    let mut events = state.node.events.subscribe();
    let mut stopping = state.stopping.clone();
    actix_web::rt::spawn(async move {
        let mut subscribed: HashSet<String> = HashSet::new();
        loop {
            tokio::select! {
                msg = stream.recv() => match msg {
                    Some(Ok(actix_ws::Message::Text(text))) => match serde_json::from_str::<ClientMessage>(&text) {
                        Ok(ClientMessage::Subscribe { channels }) => {
                            let unknown: Vec<&String> = channels.iter().filter(|c| !CHANNELS.contains(&c.as_str())).collect();
                            if !unknown.is_empty() {
                                let err = serde_json::json!({ "type": "error", "message": format!("channels: unknown {unknown:?}; use {}", CHANNELS.join(", ")) });
                                let _ = session.text(err.to_string()).await;
                                continue;
                            }
                            subscribed.extend(channels);
                            let ack = serde_json::json!({ "type": "subscribed", "channels": subscribed.iter().collect::<Vec<_>>() });
                            if session.text(ack.to_string()).await.is_err() { break; }
                        }
                        Ok(ClientMessage::Unsubscribe { channels }) => {
                            for c in channels { subscribed.remove(&c); }
                        }
                        Err(e) => {
                            let err = serde_json::json!({ "type": "error", "message": format!("not understood: {e}") });
                            let _ = session.text(err.to_string()).await;
                        }
                    },
                    Some(Ok(actix_ws::Message::Ping(p))) => { let _ = session.pong(&p).await; }
                    Some(Ok(actix_ws::Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
                event = events.recv() => match event {
                    Ok(event) if subscribed.contains(event.channel()) => {
                        let text = serde_json::to_string(&event).unwrap_or_default();
                        if session.text(text).await.is_err() { break; }
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                },
                // The node is stopping: the stream ends now rather than holding the stop.
                _ = stopping.changed() => break,
            }
        }
        let _ = session.close(None).await;
    });
    Ok(response)
}
