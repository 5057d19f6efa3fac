//! The join exchange, inside Noise: a node holding a join token asks the mesh key holder to admit
//! it, and nothing of the exchange but a token's public id crosses in clear.
//!
//! Pattern `Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s`, prologue `buildnet-join/<version>/<mesh id>`
//! (the mesh id the token pins), pre-shared key derived from the token:
//!
//! 1. joiner → holder: `-> e`, payload the token's id (`tok_…`, public: `token list` shows it), so
//!    the holder knows which pre-shared key to expect;
//! 2. holder → joiner: `<- e, ee, s, es`; a node of another mesh fails here (prologue);
//! 3. joiner → holder: `-> s, se, psk`; only a holder of the token's secret can read what follows;
//! 4. joiner → holder: the [`JoinRequest`] (name, address, keys), signed over the handshake hash;
//! 5. holder → joiner: a [`JoinReply`]: the mesh key, a signature by the mesh key over the
//!    handshake hash (the proof that this node holds the key the token pins) and the roster.
//!
//! An impostor that answers at the joiner's URL cannot finish step 3 without the token's secret,
//! so it learns neither the request nor the token; one that stole the token still cannot sign
//! step 5 with the mesh key, and the joiner aborts. This file is sans-IO: the web layer moves
//! the frames, the mesh actor looks tokens up and signs.

use serde::{Deserialize, Serialize};

use super::membership::Refusal;
use super::noise::{NoiseError, MAX_FRAME, MAX_PLAINTEXT};
use super::roster::{JoinToken, MeshInfo, RosterEntry, RosterError};
use crate::identity::{self, Identity};
use crate::wire::{self, NodeId, PROTOCOL_VERSION};

/// The Noise protocol of a join.
pub const JOIN_NOISE_PARAMS: &str = "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s";
/// Where the pre-shared key goes in `XXpsk3`.
const PSK_SLOT: usize = 3;
/// Longest address a join may carry.
pub const MAX_ADDRESS: usize = 512;
/// Largest reply a joiner reassembles (a roster of thousands of nodes fits).
const MAX_REPLY: usize = 16 << 20;
/// Largest request a holder reads: one frame.
const MAX_REQUEST: usize = MAX_PLAINTEXT - 1;

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Noise(#[from] NoiseError),
    #[error("the first join message does not name a token")]
    NoTokenId,
    #[error("{0}")]
    Malformed(String),
    #[error("the answer is larger than {MAX_REPLY} bytes")]
    TooLarge,
}

impl From<snow::Error> for JoinError {
    fn from(e: snow::Error) -> Self {
        JoinError::Noise(NoiseError::Snow(e))
    }
}

/// The prologue both sides bind: protocol version and the mesh the token pins.
pub fn prologue(mesh_id: &str) -> Vec<u8> {
    format!("buildnet-join/{PROTOCOL_VERSION}/{mesh_id}").into_bytes()
}

/// The pre-shared key of a token, from the hash the holder stores (it never stores the secret).
pub fn psk(token_hash: &str) -> [u8; 32] {
    blake3::derive_key("buildnet 2026 join pre-shared key", token_hash.as_bytes())
}

fn params() -> Result<snow::params::NoiseParams, JoinError> {
    Ok(JOIN_NOISE_PARAMS.parse::<snow::params::NoiseParams>().map_err(NoiseError::Snow)?)
}

/// What the joiner tells the holder, encrypted: who it is and where it listens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub node_id: NodeId,
    pub name: String,
    pub address: String,
    /// Hex Ed25519 key; the node id must derive from it.
    pub ed_public: String,
    /// Signature by `ed_public` over the handshake hash, name and address.
    pub signature: String,
}

impl JoinRequest {
    fn signing_bytes(&self, handshake_hash: &[u8], noise_public: &[u8; 32]) -> Vec<u8> {
        serde_json::json!([
            "buildnet-join/2",
            wire::hex(handshake_hash),
            self.node_id,
            self.name,
            self.address,
            wire::hex(noise_public)
        ])
        .to_string()
        .into_bytes()
    }

    /// Field caps and shape, before anything is signed or stored. Names the field at fault.
    pub fn check_fields(&self) -> Result<(), String> {
        if !wire::is_display_name(&self.name) {
            return Err(format!(
                "name: must be 1 to {} printable characters, with no blank at either end",
                wire::MAX_NAME
            ));
        }
        if self.address.len() > MAX_ADDRESS
            || !self.address.contains("://")
            || self.address.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(format!("address: must be a URL (like http://host:port) of at most {MAX_ADDRESS} bytes"));
        }
        if self.ed_public.len() != 64 || self.signature.len() != 128 {
            return Err("ed_public/signature: expected 64 and 128 hex digits".into());
        }
        Ok(())
    }

    /// Whether the request is signed by the key its node id derives from, for this handshake
    /// and the static key the handshake proved.
    pub fn verify(&self, handshake_hash: &[u8], noise_public: &[u8; 32]) -> bool {
        let key: Option<[u8; 32]> = wire::unhex(&self.ed_public).and_then(|b| b.try_into().ok());
        let sig: Option<[u8; 64]> = wire::unhex(&self.signature).and_then(|b| b.try_into().ok());
        match (key, sig) {
            (Some(k), Some(s)) => {
                NodeId::from_public_key(&k) == self.node_id
                    && identity::verify(&k, &self.signing_bytes(handshake_hash, noise_public), &s)
            }
            _ => false,
        }
    }
}

/// The holder's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum JoinReply {
    Admitted {
        mesh: MeshInfo,
        /// Signature by the mesh key over [`proof_bytes`] of this handshake.
        proof: String,
        roster: Vec<RosterEntry>,
    },
    Refused {
        reason: String,
    },
}

/// What the mesh key signs to prove it took part in this handshake.
pub fn proof_bytes(handshake_hash: &[u8]) -> Vec<u8> {
    let mut out = b"buildnet-join-proof/2:".to_vec();
    out.extend_from_slice(handshake_hash);
    out
}

/// The mesh and roster a verified reply admits the joiner into.
#[derive(Debug, Clone)]
pub struct Admission {
    pub mesh: MeshInfo,
    pub roster: Vec<RosterEntry>,
}

/// An encrypted session after the handshake: messages split into frames and reassembled.
pub struct Session {
    state: snow::TransportState,
    /// The handshake hash both sides share: what signatures bind to.
    pub handshake_hash: Vec<u8>,
    /// The peer's static key, proven by the handshake.
    pub remote_static: [u8; 32],
    pending: Vec<u8>,
}

impl Session {
    fn new(hs: snow::HandshakeState) -> Result<Session, JoinError> {
        let handshake_hash = hs.get_handshake_hash().to_vec();
        let remote_static: [u8; 32] =
            hs.get_remote_static().and_then(|k| k.try_into().ok()).ok_or(NoiseError::NoRemoteKey)?;
        Ok(Session { state: hs.into_transport_mode()?, handshake_hash, remote_static, pending: Vec::new() })
    }

    /// Encrypts a message as frames: each carries a flag byte (1 on the last) and a chunk.
    pub fn seal(&mut self, message: &[u8]) -> Result<Vec<Vec<u8>>, JoinError> {
        let chunk = MAX_PLAINTEXT - 1;
        let pieces: Vec<&[u8]> = if message.is_empty() { vec![&[]] } else { message.chunks(chunk).collect() };
        let last = pieces.len() - 1;
        let mut frames = Vec::with_capacity(pieces.len());
        for (i, piece) in pieces.into_iter().enumerate() {
            let mut plain = Vec::with_capacity(piece.len() + 1);
            plain.push(u8::from(i == last));
            plain.extend_from_slice(piece);
            let mut buf = vec![0u8; plain.len() + 16];
            let n = self.state.write_message(&plain, &mut buf)?;
            buf.truncate(n);
            frames.push(buf);
        }
        Ok(frames)
    }

    /// Takes one frame; returns the whole message once its last frame arrived. Refuses a message
    /// over `limit` bytes before growing past it.
    fn open(&mut self, frame: &[u8], limit: usize) -> Result<Option<Vec<u8>>, JoinError> {
        if frame.len() > MAX_FRAME {
            return Err(NoiseError::TooLarge(frame.len()).into());
        }
        let mut buf = vec![0u8; frame.len()];
        let n = self.state.read_message(frame, &mut buf)?;
        let Some((&flag, piece)) = buf[..n].split_first() else {
            return Err(JoinError::Malformed("an empty join frame".into()));
        };
        if self.pending.len() + piece.len() > limit {
            return Err(JoinError::TooLarge);
        }
        self.pending.extend_from_slice(piece);
        Ok((flag == 1).then(|| std::mem::take(&mut self.pending)))
    }
}

/// The joining side.
pub struct Initiator {
    hs: snow::HandshakeState,
    token: JoinToken,
    identity: Identity,
    name: String,
    address: String,
    noise_public: [u8; 32],
}

impl Initiator {
    /// Starts a join with `token`; returns the first message to send.
    pub fn start(
        token: JoinToken,
        identity: Identity,
        name: String,
        address: String,
        noise: (&[u8; 32], [u8; 32]),
    ) -> Result<(Initiator, Vec<u8>), JoinError> {
        let prologue = prologue(&token.mesh_id);
        let psk = psk(&token.hash());
        let mut hs = snow::Builder::new(params()?)
            .local_private_key(noise.0)?
            .prologue(&prologue)?
            .psk(PSK_SLOT as u8, &psk)?
            .build_initiator()?;
        let mut first = vec![0u8; MAX_FRAME];
        let n = hs.write_message(token.id().as_bytes(), &mut first)?;
        first.truncate(n);
        Ok((Initiator { hs, token, identity, name, address, noise_public: noise.1 }, first))
    }

    /// Reads the holder's answer to the first message; returns the frames to send (the last
    /// handshake message, then the encrypted request) and the session to read the reply with.
    pub fn respond(mut self, second: &[u8]) -> Result<(Vec<Vec<u8>>, Joining), JoinError> {
        if second.len() > MAX_FRAME {
            return Err(NoiseError::TooLarge(second.len()).into());
        }
        let mut scratch = vec![0u8; MAX_FRAME];
        self.hs.read_message(second, &mut scratch)?;
        let mut third = vec![0u8; MAX_FRAME];
        let n = self.hs.write_message(&[], &mut third)?;
        third.truncate(n);
        let mut session = Session::new(self.hs)?;
        let mut request = JoinRequest {
            node_id: self.identity.node_id.clone(),
            name: self.name,
            address: self.address,
            ed_public: wire::hex(&self.identity.public_key()),
            signature: String::new(),
        };
        request.signature =
            wire::hex(&self.identity.sign(&request.signing_bytes(&session.handshake_hash, &self.noise_public)));
        let body = serde_json::to_vec(&request).map_err(|e| JoinError::Malformed(e.to_string()))?;
        let mut frames = vec![third];
        frames.extend(session.seal(&body)?);
        Ok((frames, Joining { session, token: self.token }))
    }
}

/// A joiner waiting for the holder's reply.
pub struct Joining {
    session: Session,
    token: JoinToken,
}

/// How a join ended, as the joiner sees it.
#[derive(Debug, thiserror::Error)]
pub enum JoinOutcome {
    #[error("join refused: {0}")]
    Refused(String),
    #[error("the answering node did not prove it holds the key of mesh {0}; it may be an impostor")]
    Unproven(String),
    #[error(transparent)]
    Broken(#[from] JoinError),
}

impl Joining {
    /// Takes one frame of the reply; `Some` once the reply is complete and verified.
    pub fn read(&mut self, frame: &[u8]) -> Result<Option<Admission>, JoinOutcome> {
        let Some(message) = self.session.open(frame, MAX_REPLY)? else { return Ok(None) };
        let reply: JoinReply =
            serde_json::from_slice(&message).map_err(|e| JoinError::Malformed(format!("join reply: {e}")))?;
        match reply {
            JoinReply::Refused { reason } => Err(JoinOutcome::Refused(reason)),
            JoinReply::Admitted { mesh, proof, roster } => {
                let unproven = || JoinOutcome::Unproven(self.token.mesh_id.clone());
                let key = mesh.key_bytes().ok_or_else(unproven)?;
                if MeshInfo::from_public_key(&key) != mesh || mesh.mesh_id != self.token.mesh_id {
                    return Err(unproven());
                }
                let signature: [u8; 64] = wire::unhex(&proof).and_then(|b| b.try_into().ok()).ok_or_else(unproven)?;
                if !identity::verify(&key, &proof_bytes(&self.session.handshake_hash), &signature) {
                    return Err(unproven());
                }
                Ok(Some(Admission { mesh, roster }))
            }
        }
    }
}

/// The holder's side.
pub struct Responder {
    hs: snow::HandshakeState,
}

/// A holder that finished the handshake, waiting for the request.
pub struct Admitting {
    pub session: Session,
}

impl Responder {
    pub fn new(noise_private: &[u8; 32], mesh_id: &str) -> Result<Responder, JoinError> {
        let hs = snow::Builder::new(params()?)
            .local_private_key(noise_private)?
            .prologue(&prologue(mesh_id))?
            .build_responder()?;
        Ok(Responder { hs })
    }

    /// Reads the first message: the id of the token the joiner holds.
    pub fn read_hello(&mut self, first: &[u8]) -> Result<String, JoinError> {
        if first.len() > MAX_FRAME {
            return Err(NoiseError::TooLarge(first.len()).into());
        }
        let mut payload = vec![0u8; MAX_FRAME];
        let n = self.hs.read_message(first, &mut payload)?;
        let id = std::str::from_utf8(&payload[..n]).map_err(|_| JoinError::NoTokenId)?;
        let well_formed =
            id.strip_prefix("tok_").is_some_and(|h| h.len() == 12 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !well_formed {
            return Err(JoinError::NoTokenId);
        }
        Ok(id.to_string())
    }

    /// Answers with the second message, expecting the token whose stored hash is `token_hash`.
    pub fn answer(&mut self, token_hash: &str) -> Result<Vec<u8>, JoinError> {
        self.hs.set_psk(PSK_SLOT, &psk(token_hash))?;
        let mut second = vec![0u8; MAX_FRAME];
        let n = self.hs.write_message(&[], &mut second)?;
        second.truncate(n);
        Ok(second)
    }

    /// Reads the last handshake message: fails unless the joiner holds the token's secret.
    pub fn finish(mut self, third: &[u8]) -> Result<Admitting, JoinError> {
        if third.len() > MAX_FRAME {
            return Err(NoiseError::TooLarge(third.len()).into());
        }
        let mut scratch = vec![0u8; MAX_FRAME];
        self.hs.read_message(third, &mut scratch)?;
        Ok(Admitting { session: Session::new(self.hs)? })
    }
}

impl Admitting {
    /// Reads the request (one frame), checks its fields and its signature over this handshake.
    pub fn read_request(&mut self, frame: &[u8]) -> Result<JoinRequest, JoinError> {
        let body = self
            .session
            .open(frame, MAX_REQUEST)?
            .ok_or_else(|| JoinError::Malformed("the join request must fit one frame".into()))?;
        let request: JoinRequest =
            serde_json::from_slice(&body).map_err(|e| JoinError::Malformed(format!("join request: {e}")))?;
        request.check_fields().map_err(JoinError::Malformed)?;
        if !request.verify(&self.session.handshake_hash, &self.session.remote_static) {
            return Err(JoinError::Malformed("join request: bad signature".into()));
        }
        Ok(request)
    }

    /// Encrypts the reply.
    pub fn reply(&mut self, reply: &JoinReply) -> Result<Vec<Vec<u8>>, JoinError> {
        let body = serde_json::to_vec(reply).map_err(|e| JoinError::Malformed(e.to_string()))?;
        self.session.seal(&body)
    }
}

/// A socket that moves whole frames: a WebSocket in the web layer, channels in tests.
#[allow(async_fn_in_trait)]
pub trait FrameIo {
    async fn send(&mut self, frame: Vec<u8>) -> Result<(), String>;
    /// The next frame; an error when the peer closed, timed out or sent something else.
    async fn recv(&mut self) -> Result<Vec<u8>, String>;
}

/// Why a join failed, for the joiner's one-line error.
#[derive(Debug, thiserror::Error)]
pub enum JoinFailure {
    #[error("{0}")]
    Token(#[from] RosterError),
    #[error("join failed: {0}")]
    Transport(String),
    #[error("the answering node is not a member of mesh {0} (the encrypted join failed); check the URL and token")]
    NotThatMesh(String),
    #[error(transparent)]
    Outcome(#[from] JoinOutcome),
}

/// Why a join was closed whose hello did not open: the token names another mesh, or was altered.
pub const NOT_THIS_MESH: &str =
    "this node's mesh did not make that join token (it is another mesh's, or was altered); ask this mesh's key holder for one";
/// Why a join was closed whose token proof did not check: the token's secret is not the one this
/// holder made.
pub const WRONG_SECRET: &str =
    "the join token's secret is not the one this mesh made (altered?); ask this mesh's key holder for a new token";

/// The joiner's side of one join over `io`: handshake, request, verified reply, adoption.
pub async fn run_join(mesh: &super::MeshHandle, io: &mut impl FrameIo, token: &str) -> Result<MeshInfo, JoinFailure> {
    let token = JoinToken::parse(token)?;
    let mesh_id = token.mesh_id.clone();
    let (initiator, first) = mesh.start_join(token).await?;
    io.send(first).await.map_err(JoinFailure::Transport)?;
    let second = io.recv().await.map_err(JoinFailure::Transport)?;
    let (frames, mut joining) = initiator.respond(&second).map_err(|_| JoinFailure::NotThatMesh(mesh_id))?;
    for frame in frames {
        io.send(frame).await.map_err(JoinFailure::Transport)?;
    }
    let admission = loop {
        let frame = io.recv().await.map_err(JoinFailure::Transport)?;
        if let Some(admission) = joining.read(&frame)? {
            break admission;
        }
    };
    Ok(mesh.accept_join(admission).await?)
}

/// The holder's side of one join from `source` (an IP address, for the refusal summary), with
/// the responder [`super::MeshHandle::open_join`] gave. Every refusal is counted. An `Err` is
/// the reason to close the socket with: before the joiner proved the token it says only what
/// an outsider may know (the token id is unknown, used or expired; the handshake failed).
pub async fn serve_join(
    mesh: &super::MeshHandle,
    mut responder: Responder,
    io: &mut impl FrameIo,
    source: &str,
) -> Result<(), String> {
    let refused = |reason: Refusal| mesh.note_refusal(source.to_string(), reason);
    let first = io.recv().await?;
    let token_id = match responder.read_hello(&first) {
        Ok(id) => id,
        Err(e) => {
            refused(Refusal::BadRequest);
            // The hello is bound to the mesh the token names: one that does not open is a
            // token of another mesh, or one altered ("decrypt error" said nothing of that).
            return Err(match e {
                JoinError::Noise(_) => NOT_THIS_MESH.to_string(),
                other => other.to_string(),
            });
        }
    };
    let hash = match mesh.token_hash(&token_id).await {
        Ok(hash) => hash,
        Err(e) => {
            refused(Refusal::of(&e));
            return Err(e.to_string());
        }
    };
    io.send(responder.answer(&hash).map_err(|e| e.to_string())?).await?;
    let third = io.recv().await?;
    let mut admitting = match responder.finish(&third) {
        Ok(a) => a,
        Err(_) => {
            refused(Refusal::WrongSecret);
            // What the joiner is told (it knows its token failed; "decrypt error" said nothing).
            return Err(WRONG_SECRET.into());
        }
    };
    let request = io.recv().await?;
    let reply = match admitting.read_request(&request) {
        Err(e) => {
            refused(Refusal::BadRequest);
            JoinReply::Refused { reason: e.to_string() }
        }
        Ok(request) => match mesh.admit(token_id, request, &admitting.session).await {
            Ok(reply) => reply,
            Err(e) => {
                refused(Refusal::of(&e));
                JoinReply::Refused { reason: e.to_string() }
            }
        },
    };
    for frame in admitting.reply(&reply).map_err(|e| e.to_string())? {
        io.send(frame).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::noise::generate_keypair;
    use crate::mesh::roster::MeshKey;

    struct Setup {
        token: JoinToken,
        key: MeshKey,
        holder: ([u8; 32], [u8; 32]),
        joiner: ([u8; 32], [u8; 32]),
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = MeshKey::create(dir.path()).expect("mesh key");
        let token = JoinToken { mesh_id: key.info().mesh_id, secret: "ab".repeat(16) };
        Setup { token, key, holder: generate_keypair().expect("keys"), joiner: generate_keypair().expect("keys") }
    }

    fn joiner(s: &Setup, token: JoinToken) -> (Initiator, Vec<u8>) {
        let id = Identity::from_secret(&[7; 32]);
        Initiator::start(token, id, "gamma".into(), "http://10.1.2.3:8080".into(), (&s.joiner.0, s.joiner.1))
            .expect("start")
    }

    /// Runs the holder's side with `holder_token_hash` as the token it finds, signing the proof
    /// with `prover`; returns what the joiner concluded and the wire bytes.
    fn exchange(
        s: &Setup,
        presented: JoinToken,
        holder_hash: &str,
        prover: &MeshKey,
    ) -> (Result<Admission, String>, Vec<u8>) {
        let mut wire_bytes = Vec::new();
        let (init, first) = joiner(s, presented);
        wire_bytes.extend(&first);
        let mut resp = Responder::new(&s.holder.0, &s.key.info().mesh_id).expect("responder");
        // The first message is bound to the pinned mesh too: a holder of another mesh cannot read it.
        let id = match resp.read_hello(&first) {
            Ok(id) => id,
            Err(e) => return (Err(format!("holder: {e}")), wire_bytes),
        };
        assert!(id.starts_with("tok_"));
        let second = resp.answer(holder_hash).expect("answer");
        wire_bytes.extend(&second);
        let (frames, mut joining) = match init.respond(&second) {
            Ok(x) => x,
            Err(e) => return (Err(e.to_string()), wire_bytes),
        };
        frames.iter().for_each(|f| wire_bytes.extend(f));
        let mut admitting = match resp.finish(&frames[0]) {
            Ok(a) => a,
            Err(e) => return (Err(format!("holder: {e}")), wire_bytes),
        };
        let request = admitting.read_request(&frames[1]).expect("request");
        assert_eq!(request.name, "gamma");
        let reply = JoinReply::Admitted {
            mesh: s.key.info(),
            proof: wire::hex(&prover.sign_bytes(&proof_bytes(&admitting.session.handshake_hash))),
            roster: Vec::new(),
        };
        let mut outcome = Err("no reply".to_string());
        for frame in admitting.reply(&reply).expect("reply") {
            wire_bytes.extend(&frame);
            match joining.read(&frame) {
                Ok(Some(a)) => outcome = Ok(a),
                Ok(None) => {}
                Err(e) => outcome = Err(e.to_string()),
            }
        }
        (outcome, wire_bytes)
    }

    #[test]
    fn a_join_is_encrypted_and_admits_with_the_pinned_key() {
        let s = setup();
        let (outcome, bytes) = exchange(&s, s.token.clone(), &s.token.hash(), &s.key);
        assert_eq!(outcome.expect("admitted").mesh, s.key.info());
        for secret in ["gamma", "10.1.2.3", &s.token.secret, &s.token.text()] {
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "{secret} crossed in clear");
        }
    }

    #[test]
    fn a_holder_without_the_token_secret_learns_nothing() {
        let s = setup();
        let (outcome, _) =
            exchange(&s, s.token.clone(), &JoinToken { secret: "cd".repeat(16), ..s.token.clone() }.hash(), &s.key);
        assert!(outcome.expect_err("refused").starts_with("holder:"), "the holder cannot read the request");
    }

    #[test]
    fn an_impostor_with_a_stolen_token_cannot_prove_the_mesh_key() {
        let s = setup();
        let other = MeshKey::create(tempfile::tempdir().expect("tempdir").path()).expect("key");
        let (outcome, _) = exchange(&s, s.token.clone(), &s.token.hash(), &other);
        assert!(outcome.expect_err("aborted").contains("did not prove"));
    }

    #[test]
    fn a_node_of_another_mesh_fails_the_handshake() {
        let s = setup();
        let wrong = JoinToken { mesh_id: "00000000000000ff".into(), ..s.token.clone() };
        let (outcome, _) = exchange(&s, wrong.clone(), &wrong.hash(), &s.key);
        assert!(outcome.is_err());
    }

    #[test]
    fn long_replies_cross_in_several_frames_and_bombs_are_refused() {
        let s = setup();
        let (init, first) = joiner(&s, s.token.clone());
        let mut resp = Responder::new(&s.holder.0, &s.key.info().mesh_id).expect("responder");
        resp.read_hello(&first).expect("hello");
        let second = resp.answer(&s.token.hash()).expect("answer");
        let (frames, mut joining) = init.respond(&second).expect("respond");
        let mut admitting = resp.finish(&frames[0]).expect("finish");
        admitting.read_request(&frames[1]).expect("request");
        let big = vec![b'x'; 200_000];
        let sealed = admitting.session.seal(&big).expect("seal");
        assert_eq!(sealed.len(), 4);
        let mut whole = None;
        for f in &sealed {
            whole = joining.session.open(f, MAX_REPLY).expect("open");
        }
        assert_eq!(whole.expect("complete").len(), 200_000);
        let sealed = admitting.session.seal(&big).expect("seal");
        let too_big = sealed.iter().try_for_each(|f| joining.session.open(f, 100_000).map(|_| ()));
        assert!(matches!(too_big, Err(JoinError::TooLarge)));
    }

    #[test]
    fn field_caps_name_the_field() {
        let mut r = JoinRequest {
            node_id: NodeId::parse("0000000000000001").expect("id"),
            name: "x".repeat(200_000),
            address: "http://127.0.0.1:1".into(),
            ed_public: "0".repeat(64),
            signature: "0".repeat(128),
        };
        assert!(r.check_fields().expect_err("long name").starts_with("name:"));
        r.name = "ok".into();
        r.address = "http://a b".into();
        assert!(r.check_fields().expect_err("bad address").starts_with("address:"));
    }
}
