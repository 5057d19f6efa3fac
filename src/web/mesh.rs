//! The mesh's sockets: `/mesh` accepts links, the dialer opens them (awc WebSocket client), and
//! the join handshake over HTTP. The bridges themselves (Noise, codec, liveness) live in the
//! engine; this file only moves frames between sockets and bridges.

use actix_web::{web, HttpRequest, HttpResponse};
use buildnet_actors::mesh::bridge::{Incoming, Outgoing, SocketClosed};
use buildnet_actors::mesh::noise::MAX_FRAME;
use buildnet_actors::mesh::roster::{MeshInfo, RosterError};
use buildnet_actors::mesh::{Dialer, JoinRequest, JoinResponse, MeshHandle};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::json::JsonBody;
use super::AppState;

/// `GET /mesh`: a peer opens a link. No API key: the Noise handshake proves the peer is in the
/// signed roster, and anyone else is dropped.
pub async fn accept(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> actix_web::Result<HttpResponse> {
    let (response, mut session, stream) = actix_ws::handle(&req, body)?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let Some(bridge) = state.node.mesh.attach(tx, None).await else {
        let _ = session.close(None).await;
        return Ok(response);
    };
    let mut stream = stream.max_frame_size(MAX_FRAME);
    let mut pong_session = session.clone();
    actix_web::rt::spawn(async move {
        while let Some(out) = rx.recv().await {
            match out {
                Outgoing::Frame(frame) => {
                    if session.binary(frame).await.is_err() {
                        break;
                    }
                }
                Outgoing::Close => {
                    let _ = session.close(None).await;
                    break;
                }
            }
        }
    });
    actix_web::rt::spawn(async move {
        while let Some(Ok(msg)) = stream.recv().await {
            match msg {
                actix_ws::Message::Binary(frame) => bridge.do_send(Incoming { frame: frame.to_vec() }),
                actix_ws::Message::Ping(p) => {
                    let _ = pong_session.pong(&p).await;
                }
                actix_ws::Message::Close(_) => break,
                // Text or continuation frames are not part of the protocol.
                actix_ws::Message::Text(_) | actix_ws::Message::Continuation(_) => break,
                _ => {}
            }
        }
        bridge.do_send(SocketClosed);
    });
    Ok(response)
}

/// The URL of a node's `/mesh` endpoint.
fn mesh_url(address: &str) -> String {
    let base = address.trim_end_matches('/');
    let base = base
        .strip_prefix("https://")
        .map(|r| format!("wss://{r}"))
        .unwrap_or_else(|| base.replacen("http://", "ws://", 1));
    format!("{base}/mesh")
}

/// Opens links with awc's WebSocket client.
pub fn dialer() -> Dialer {
    std::sync::Arc::new(|address: String, mesh: MeshHandle| {
        actix_web::rt::spawn(async move {
            let client = awc::Client::builder().timeout(std::time::Duration::from_secs(5)).finish();
            let connected = client.ws(mesh_url(&address)).max_frame_size(MAX_FRAME).connect().await;
            let framed = match connected {
                Ok((_, framed)) => framed,
                Err(e) => {
                    log::debug!("dialling {address}: {e}");
                    return mesh.dial_failed(address);
                }
            };
            let (tx, mut rx) = mpsc::unbounded_channel();
            let Some(bridge) = mesh.attach(tx, Some(address.clone())).await else {
                return mesh.dial_failed(address);
            };
            let (mut sink, mut stream) = framed.split();
            actix_web::rt::spawn(async move {
                while let Some(out) = rx.recv().await {
                    let sent = match out {
                        Outgoing::Frame(frame) => sink.send(awc::ws::Message::Binary(frame.into())).await,
                        Outgoing::Close => {
                            let _ = sink.send(awc::ws::Message::Close(None)).await;
                            break;
                        }
                    };
                    if sent.is_err() {
                        break;
                    }
                }
            });
            while let Some(Ok(frame)) = stream.next().await {
                match frame {
                    awc::ws::Frame::Binary(bytes) => bridge.do_send(Incoming { frame: bytes.to_vec() }),
                    awc::ws::Frame::Close(_) | awc::ws::Frame::Text(_) | awc::ws::Frame::Continuation(_) => break,
                    _ => {}
                }
            }
            bridge.do_send(SocketClosed);
        });
    })
}

/// `POST /api/mesh/join`: a node presents a join token (the token is its credential).
#[utoipa::path(post, path = "/api/mesh/join", tag = "pool", request_body = JoinRequest,
    responses((status = 200, body = JoinResponse), (status = 403, body = super::error::ErrorBody)))]
pub async fn admit(state: web::Data<AppState>, body: JsonBody) -> Result<HttpResponse, ApiError> {
    match state.node.mesh.admit(body.parse()?).await {
        Ok(response) => Ok(HttpResponse::Ok().json(response)),
        Err(RosterError::Store(e)) => Err(ApiError::internal(&e)),
        Err(e @ RosterError::NotMeshAdmin) => {
            Err(ApiError::new(actix_web::http::StatusCode::CONFLICT, "not_mesh_admin", e.to_string()))
        }
        Err(e) => Err(ApiError::new(actix_web::http::StatusCode::FORBIDDEN, "join_refused", e.to_string())),
    }
}

/// Joins the mesh of the node at `url` with `token`: asks it to admit us, then checks that the
/// mesh key it answers with is the one the token pins.
pub async fn join_remote(mesh: &MeshHandle, url: &str, token: &str) -> Result<MeshInfo, String> {
    buildnet_actors::mesh::roster::JoinToken::parse(token).map_err(|e| e.to_string())?;
    let request = mesh.join_request(token).await.ok_or("the mesh actor is not running")?;
    let client = awc::Client::builder().timeout(std::time::Duration::from_secs(15)).finish();
    let target = format!("{}/api/mesh/join", url.trim_end_matches('/'));
    let mut res = client
        .post(&target)
        .send_json(&request)
        .await
        .map_err(|e| format!("no BuildNet node answers at {url}: {e}"))?;
    let body = res.body().limit(16 << 20).await.map_err(|e| format!("reading the answer from {url}: {e}"))?;
    if !res.status().is_success() {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let message = v["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{url} answered {}", res.status()));
        return Err(format!("join refused by {url}: {message}"));
    }
    let response: JoinResponse =
        serde_json::from_slice(&body).map_err(|e| format!("unexpected answer from {url}: {e}"))?;
    mesh.accept_join(token, response).await.map_err(|e| e.to_string())
}
