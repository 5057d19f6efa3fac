//! The mesh's sockets: `/mesh` accepts links, the dialer opens them (awc WebSocket client), and
//! `/mesh/join` carries the encrypted join. The bridges and the join itself (Noise, codec,
//! liveness, tokens) live in the engine; this file only moves frames between sockets and them.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use buildnet_actors::mesh::bridge::{Incoming, Outgoing, SocketClosed};
use buildnet_actors::mesh::join::{self, FrameIo};
use buildnet_actors::mesh::noise::MAX_FRAME;
use buildnet_actors::mesh::roster::{JoinToken, MeshInfo, RosterError};
use buildnet_actors::mesh::{Dialer, MeshHandle, Refusal};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use super::error::ApiError;
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
            let client = super::tls::mesh_client(std::time::Duration::from_secs(5));
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

/// How long one step of a join may take before the socket is dropped.
const JOIN_STEP: std::time::Duration = std::time::Duration::from_secs(10);

/// `GET /mesh/join`: the encrypted join (`buildnet_actors::mesh::join`). No API key: the token
/// is the credential, and it is proved inside Noise, never sent. Rate-limited per source.
pub async fn accept_join(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> actix_web::Result<HttpResponse> {
    if let Err(limited) = state.join_limit.check(&req) {
        state.node.mesh.note_refusal(limited.ip.to_string(), Refusal::RateLimited);
        return Ok(limited.response());
    }
    let source = req.peer_addr().map_or_else(|| "unknown".to_string(), |a| a.ip().to_string());
    let responder = match state.node.mesh.open_join().await {
        Ok(r) => r,
        Err(e @ RosterError::NotMeshAdmin) => {
            return Err(ApiError::new(StatusCode::CONFLICT, "not_mesh_admin", e.to_string()).into())
        }
        Err(e) => return Err(ApiError::internal(&e).into()),
    };
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let mesh = state.node.mesh.clone();
    actix_web::rt::spawn(async move {
        let mut socket = ServerSocket { session, stream: stream.max_frame_size(MAX_FRAME) };
        let result = join::serve_join(&mesh, responder, &mut socket, &source).await;
        let reason = result.err().map(|r| actix_ws::CloseReason {
            code: actix_ws::CloseCode::Policy,
            // A close frame's reason must fit a control frame (125 bytes).
            description: Some(r.chars().take(100).collect()),
        });
        let _ = socket.session.close(reason).await;
    });
    Ok(response)
}

/// The holder's end of a join socket.
struct ServerSocket {
    session: actix_ws::Session,
    stream: actix_ws::MessageStream,
}

impl FrameIo for ServerSocket {
    async fn send(&mut self, frame: Vec<u8>) -> Result<(), String> {
        self.session.binary(frame).await.map_err(|_| "the joiner closed the connection".to_string())
    }

    async fn recv(&mut self) -> Result<Vec<u8>, String> {
        let next = async {
            loop {
                match self.stream.recv().await {
                    Some(Ok(actix_ws::Message::Binary(frame))) => return Ok(frame.to_vec()),
                    Some(Ok(actix_ws::Message::Ping(p))) => {
                        let _ = self.session.pong(&p).await;
                    }
                    Some(Ok(actix_ws::Message::Pong(_))) => {}
                    _ => return Err("the joiner closed the connection".to_string()),
                }
            }
        };
        actix_web::rt::time::timeout(JOIN_STEP, next).await.map_err(|_| "the joiner timed out".to_string())?
    }
}

/// The joiner's end of a join socket.
struct ClientSocket<S> {
    framed: S,
}

impl<S> FrameIo for ClientSocket<S>
where
    S: futures_util::Sink<awc::ws::Message>
        + futures_util::Stream<Item = Result<awc::ws::Frame, awc::error::WsProtocolError>>
        + Unpin,
{
    async fn send(&mut self, frame: Vec<u8>) -> Result<(), String> {
        self.framed
            .send(awc::ws::Message::Binary(frame.into()))
            .await
            .map_err(|_| "the node closed the connection".to_string())
    }

    async fn recv(&mut self) -> Result<Vec<u8>, String> {
        let next = async {
            loop {
                match self.framed.next().await {
                    Some(Ok(awc::ws::Frame::Binary(frame))) => return Ok(frame.to_vec()),
                    Some(Ok(awc::ws::Frame::Ping(_) | awc::ws::Frame::Pong(_))) => {}
                    Some(Ok(awc::ws::Frame::Close(Some(reason)))) => {
                        return Err(reason.description.unwrap_or_else(|| "the node closed the connection".into()))
                    }
                    _ => return Err("the node closed the connection".to_string()),
                }
            }
        };
        actix_web::rt::time::timeout(JOIN_STEP, next)
            .await
            .map_err(|_| "the node did not answer in time".to_string())?
    }
}

/// Whether `url` can be a node's address to join through: `field` names where it came from.
pub fn check_join_url(field: &str, url: &str) -> Result<(), String> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(format!("{field}: expected a node's URL like http://host:port, got '{}'", url.escape_debug()))
    }
}

/// Joins the mesh of the node at `url` with `token`, over the encrypted join at `/mesh/join`.
pub async fn join_remote(mesh: &MeshHandle, url: &str, token: &str) -> Result<MeshInfo, String> {
    let parsed = JoinToken::parse(token).map_err(|e| e.to_string())?;
    // Refused here before any connection, so the holder counts no failed join.
    mesh.can_join(&parsed.mesh_id).await.map_err(|e| e.to_string())?;
    let target = format!("{}/join", mesh_url(url));
    let client = super::tls::mesh_client(JOIN_STEP);
    let framed = match client.ws(&target).max_frame_size(MAX_FRAME).connect().await {
        Ok((_, framed)) => framed,
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
            return Err(match status {
                StatusCode::TOO_MANY_REQUESTS => {
                    format!("{url} refuses more join attempts from this address for now; retry in a minute")
                }
                StatusCode::CONFLICT => {
                    format!("{url} does not hold the mesh key; join through the node that created the mesh")
                }
                other => format!("{url} answered {other} instead of a join; is it a BuildNet node of this version?"),
            })
        }
        Err(e) => return Err(format!("no BuildNet node answers at {url}: {e}")),
    };
    let mut socket = ClientSocket { framed };
    let joined = join::run_join(mesh, &mut socket, token).await.map_err(|e| e.to_string());
    let _ = socket.framed.send(awc::ws::Message::Close(None)).await;
    joined
}
