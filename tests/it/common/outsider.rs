//! What an outsider can do to a node's join endpoint, written with the engine's own join code
//! (`buildnet_actors::mesh::join`) so it speaks the protocol exactly: a hostile joiner (a stolen
//! token, a chosen name, a flood of hellos) and an impostor node answering joins at its own URL.

#![allow(dead_code)]

use std::future::Future;
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use buildnet_actors::identity::Identity;
use buildnet_actors::mesh::join::{self, FrameIo, Initiator, JoinReply, Responder};
use buildnet_actors::mesh::noise::{generate_keypair, MAX_FRAME};
use buildnet_actors::mesh::roster::{JoinToken, MeshInfo, MeshKey};
use futures_util::{SinkExt, StreamExt};

/// Runs `f` to completion on a fresh actix system in this thread.
pub fn block_on<F: Future>(f: F) -> F::Output {
    actix_rt::System::new().block_on(f)
}

/// A WebSocket to a node's `/mesh/join`, as frames.
pub struct Socket<S> {
    framed: S,
}

impl<S> FrameIo for Socket<S>
where
    S: futures_util::Sink<awc::ws::Message>
        + futures_util::Stream<Item = Result<awc::ws::Frame, awc::error::WsProtocolError>>
        + Unpin,
{
    async fn send(&mut self, frame: Vec<u8>) -> Result<(), String> {
        self.framed.send(awc::ws::Message::Binary(frame.into())).await.map_err(|_| "closed".to_string())
    }

    async fn recv(&mut self) -> Result<Vec<u8>, String> {
        loop {
            match self.framed.next().await {
                Some(Ok(awc::ws::Frame::Binary(b))) => return Ok(b.to_vec()),
                Some(Ok(awc::ws::Frame::Ping(_) | awc::ws::Frame::Pong(_))) => {}
                Some(Ok(awc::ws::Frame::Close(reason))) => {
                    return Err(reason.and_then(|r| r.description).unwrap_or_else(|| "closed".into()))
                }
                other => return Err(format!("{other:?}")),
            }
        }
    }
}

/// Opens `/mesh/join` on `url`; `Err` holds the HTTP status when the node answered without
/// upgrading (429 when rate-limited).
pub async fn open(url: &str) -> Result<impl FrameIo, u16> {
    open_at(url, "/mesh/join").await
}

/// Opens `path` (`/mesh/join`, or `/mesh` where links are made) on `url`, as [`open`] does.
pub async fn open_at(url: &str, path: &str) -> Result<impl FrameIo, u16> {
    let target = format!("{}{path}", url.replacen("http://", "ws://", 1));
    match awc::Client::new().ws(target).max_frame_size(MAX_FRAME).connect().await {
        Ok((_, framed)) => Ok(Socket { framed }),
        Err(awc::error::WsClientError::InvalidResponseStatus(s)) => Err(s.as_u16()),
        Err(e) => panic!("connecting to {url}: {e}"),
    }
}

/// A join with `token` under a chosen `name`, from a throwaway identity; returns the holder's
/// verdict as the joiner sees it: `Ok` when admitted, else the one-line reason.
pub async fn join_as(url: &str, token: &str, name: &str) -> Result<MeshInfo, String> {
    let token = JoinToken::parse(token).map_err(|e| e.to_string())?;
    let mut io = open(url).await.map_err(|s| format!("HTTP {s}"))?;
    let (private, public) = generate_keypair().map_err(|e| e.to_string())?;
    let id = Identity::from_secret(&rand_bytes());
    let (init, first) = Initiator::start(token, id, name.into(), "http://127.0.0.1:9".into(), (&private, public))
        .map_err(|e| e.to_string())?;
    io.send(first).await?;
    let second = io.recv().await?;
    let (frames, mut joining) = init.respond(&second).map_err(|e| e.to_string())?;
    for f in frames {
        io.send(f).await?;
    }
    loop {
        let frame = io.recv().await?;
        if let Some(admission) = joining.read(&frame).map_err(|e| e.to_string())? {
            return Ok(admission.mesh);
        }
    }
}

/// A hello naming a token id the node never issued (what a flood sends); returns the HTTP
/// status when the node refused the socket itself.
pub async fn hello(url: &str, mesh_id: &str) -> Result<String, u16> {
    let mut io = open(url).await?;
    let token = JoinToken { mesh_id: mesh_id.to_string(), secret: buildnet_actors::wire::hex(&rand_bytes()[..16]) };
    let (private, public) = generate_keypair().expect("keys");
    let id = Identity::from_secret(&rand_bytes());
    let (_, first) =
        Initiator::start(token, id, "flood".into(), "http://127.0.0.1:9".into(), (&private, public)).expect("start");
    let _ = io.send(first).await;
    Ok(io.recv().await.err().unwrap_or_default())
}

fn rand_bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    getrandom(&mut b);
    b
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf)).expect("urandom");
}

/// An impostor answering joins at its own URL for a mesh whose key it does not hold. With the
/// token (stolen) it can finish the handshake and read the request, but signs the proof with its
/// own key; without it, it learns nothing. `seen` records what it managed to read.
pub struct Impostor {
    pub url: String,
    pub seen: Arc<Mutex<Vec<String>>>,
    server: actix_web::dev::ServerHandle,
}

struct ImpostorState {
    mesh: MeshInfo,
    stolen_hash: Option<String>,
    key: MeshKey,
    noise: [u8; 32],
    seen: Arc<Mutex<Vec<String>>>,
}

impl Impostor {
    /// Starts an impostor of `mesh` in a thread of its own; `stolen` is the token it holds, if any.
    pub fn start(mesh: MeshInfo, stolen: Option<&str>) -> Impostor {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stolen_hash = stolen.map(|t| JoinToken::parse(t).expect("token").hash());
        let (tx, rx) = std::sync::mpsc::channel();
        let keydir = tempfile::tempdir().expect("tempdir");
        let key = MeshKey::create(keydir.path()).expect("impostor key");
        let state = web::Data::new(ImpostorState {
            mesh,
            stolen_hash,
            key,
            noise: generate_keypair().expect("keys").0,
            seen: seen.clone(),
        });
        std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    App::new().app_data(state.clone()).route("/mesh/join", web::get().to(impostor_join))
                })
                .workers(1)
                .bind("127.0.0.1:0")
                .expect("bind");
                let addr = server.addrs()[0];
                let server = server.run();
                tx.send((addr, server.handle())).expect("send");
                let _ = server.await;
            })
        });
        let (addr, server) = rx.recv().expect("impostor started");
        Impostor { url: format!("http://{addr}"), seen, server }
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        drop(self.server.stop(false));
    }
}

async fn impostor_join(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<ImpostorState>,
) -> actix_web::Result<HttpResponse> {
    let (response, mut session, mut stream) = actix_ws::handle(&req, body)?;
    async fn next(stream: &mut actix_ws::MessageStream) -> Option<Vec<u8>> {
        loop {
            match stream.recv().await {
                Some(Ok(actix_ws::Message::Binary(b))) => return Some(b.to_vec()),
                Some(Ok(actix_ws::Message::Ping(_) | actix_ws::Message::Pong(_))) => {}
                _ => return None,
            }
        }
    }
    actix_web::rt::spawn(async move {
        let note = |what: String| state.seen.lock().expect("lock").push(what);
        let mut responder = Responder::new(&state.noise, &state.mesh.mesh_id).expect("responder");
        let Some(first) = next(&mut stream).await else { return };
        let Ok(token_id) = responder.read_hello(&first) else { return note("unreadable hello".into()) };
        note(format!("hello naming {token_id}"));
        // Without the token it can only guess the key the joiner proves.
        let guess = state.stolen_hash.clone().unwrap_or_else(|| "0".repeat(64));
        let Ok(second) = responder.answer(&guess) else { return };
        if session.binary(second).await.is_err() {
            return;
        }
        let Some(third) = next(&mut stream).await else { return };
        let mut admitting = match responder.finish(&third) {
            Ok(a) => a,
            Err(e) => return note(format!("could not read the join: {e}")),
        };
        let Some(request) = next(&mut stream).await else { return };
        match admitting.read_request(&request) {
            Ok(r) => note(format!("read the request of {}", r.name)),
            Err(e) => return note(format!("request unreadable: {e}")),
        }
        let proof =
            buildnet_actors::wire::hex(&state.key.sign_bytes(&join::proof_bytes(&admitting.session.handshake_hash)));
        let reply = JoinReply::Admitted { mesh: state.mesh.clone(), proof, roster: Vec::new() };
        for frame in admitting.reply(&reply).expect("reply") {
            let _ = session.binary(frame).await;
        }
        let _ = session.close(None).await;
    });
    Ok(response)
}
