//! The join exchange (`mesh::join`, Noise `XXpsk3`), fed by a joiner or holder that lies. The
//! first byte of an input picks the step; the rest is what the other side sent:
//!
//! - 0: a fresh holder's `Responder::read_hello` (the first message, naming a token id);
//! - 1: the decrypted join request as the holder reads it (`JoinRequest` JSON, field caps,
//!   signature over the handshake hash), exactly `Admitting::read_request`'s steps after `open`;
//! - 2: the holder's reply as the joiner reads it: sealed by a real holder session, read frame by
//!   frame with `Joining::read` (JSON, mesh key proof, roster);
//! - 3: a forged request frame into a real holder session (`Admitting::read_request`): must fail;
//! - 4: a joiner that sent its first message reads the rest as the second (`Initiator::respond`);
//! - 5 (and above): a holder that answered reads the rest as the third message
//!   (`Responder::finish`): without the token's secret this must fail.

use buildnet_actors::identity::Identity;
use buildnet_actors::mesh::join::{proof_bytes, Admitting, Initiator, JoinReply, JoinRequest, Joining, Responder};
use buildnet_actors::mesh::noise::generate_keypair;
use buildnet_actors::mesh::roster::{JoinToken, MeshInfo};
use buildnet_actors::wire;

use crate::mutate::Hints;
use crate::run::Target;

pub struct Join {
    token: JoinToken,
    mesh_key: Identity,
    joiner: Identity,
    holder_noise: ([u8; 32], [u8; 32]),
    joiner_noise: ([u8; 32], [u8; 32]),
    /// One finished handshake: the holder's and the joiner's ends, and the request it carried.
    session: Option<(Admitting, Joining, Vec<u8>)>,
}

const NAME: &str = "gamma";
const ADDRESS: &str = "http://10.1.2.3:8080";

impl Join {
    pub fn new() -> Option<Join> {
        let mesh_key = Identity::from_secret(&[0x42; 32]);
        let mesh = MeshInfo::from_public_key(&mesh_key.public_key());
        let token = JoinToken::parse(&format!("bnj_{}_{}", mesh.mesh_id, "ab".repeat(16))).ok()?;
        let mut join = Join {
            token,
            mesh_key,
            joiner: Identity::from_secret(&[7; 32]),
            holder_noise: generate_keypair().ok()?,
            joiner_noise: generate_keypair().ok()?,
            session: None,
        };
        join.session = join.handshake();
        Some(join)
    }

    fn start(&self) -> Option<(Initiator, Vec<u8>)> {
        Initiator::start(
            self.token.clone(),
            self.joiner.clone(),
            NAME.into(),
            ADDRESS.into(),
            (&self.joiner_noise.0, self.joiner_noise.1),
        )
        .ok()
    }

    fn responder(&self) -> Option<Responder> {
        Responder::new(&self.holder_noise.0, &self.token.mesh_id).ok()
    }

    /// A whole handshake; returns both ends and the request JSON the joiner sent.
    fn handshake(&self) -> Option<(Admitting, Joining, Vec<u8>)> {
        let (init, first) = self.start()?;
        let mut resp = self.responder()?;
        resp.read_hello(&first).ok()?;
        let second = resp.answer(&self.token.hash()).ok()?;
        let (frames, joining) = init.respond(&second).ok()?;
        let mut admitting = resp.finish(frames.first()?).ok()?;
        let request = admitting.read_request(frames.get(1)?).ok()?;
        let json = serde_json::to_vec(&request).ok()?;
        Some((admitting, joining, json))
    }

    fn session(&mut self) -> Result<&mut (Admitting, Joining, Vec<u8>), String> {
        if self.session.is_none() {
            self.session = self.handshake();
        }
        self.session.as_mut().ok_or_else(|| "cannot finish a join handshake".to_string())
    }

    /// `Admitting::read_request` after its `open`: parse, field caps, signature.
    fn request(&mut self, body: &[u8]) -> Result<String, String> {
        let (admitting, _, _) = self.session()?;
        let request: JoinRequest = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return Ok(super::label("request", &e)),
        };
        if let Err(e) = request.check_fields() {
            return Ok(super::label("request:fields", &e));
        }
        let s = &admitting.session;
        Ok(if request.verify(&s.handshake_hash, &s.remote_static) {
            "request:verified"
        } else {
            "request:bad-signature"
        }
        .into())
    }

    fn reply(&mut self, body: &[u8]) -> Result<String, String> {
        let (admitting, joining, _) = self.session()?;
        let frames = admitting.session.seal(body).map_err(|e| format!("seal: {e}"))?;
        let last = frames.len() - 1;
        for (i, frame) in frames.iter().enumerate() {
            match joining.read(frame) {
                Ok(None) if i < last => continue,
                Ok(None) => return Err("the last frame of a reply did not complete it".into()),
                Ok(Some(admission)) => return Ok(format!("reply:admitted with {} entries", admission.roster.len())),
                Err(e) => return Ok(super::label("reply", &e)),
            }
        }
        Err("a reply of no frames".into())
    }

    fn forged(&mut self, frame: &[u8]) -> Result<String, String> {
        let (admitting, _, _) = self.session()?;
        match admitting.read_request(frame) {
            Ok(_) => Err("a forged request frame was accepted".into()),
            Err(e) => Ok(super::label("forged", &e)),
        }
    }

    fn second(&self, message: &[u8]) -> Result<String, String> {
        let (init, _) = self.start().ok_or("cannot start a join")?;
        Ok(match init.respond(message) {
            Ok(_) => "second:accepted".into(),
            Err(e) => super::label("second", &e),
        })
    }

    fn third(&self, message: &[u8]) -> Result<String, String> {
        let (_, first) = self.start().ok_or("cannot start a join")?;
        let mut resp = self.responder().ok_or("cannot make a responder")?;
        resp.read_hello(&first).map_err(|e| format!("hello: {e}"))?;
        resp.answer(&self.token.hash()).map_err(|e| format!("answer: {e}"))?;
        match resp.finish(message) {
            Ok(_) => Err("a third message written without the token's secret was accepted".into()),
            Err(e) => Ok(super::label("third", &e)),
        }
    }

    fn admitted_reply(&self) -> Option<Vec<u8>> {
        let mesh = MeshInfo::from_public_key(&self.mesh_key.public_key());
        let hash = self.session.as_ref()?.0.session.handshake_hash.clone();
        let proof = wire::hex(&self.mesh_key.sign(&proof_bytes(&hash)));
        let entry = serde_json::json!({"node_id": self.joiner.node_id, "name": NAME, "role": "builder",
            "ed_public": wire::hex(&self.joiner.public_key()), "noise_public": wire::hex(&self.joiner_noise.1),
            "address": ADDRESS, "issued_at_ms": 5, "revoked": false, "signature": "33".repeat(64)});
        let reply = serde_json::json!({"outcome": "admitted", "mesh": mesh, "proof": proof, "roster": [entry]});
        serde_json::to_vec(&reply).ok()
    }
}

impl Target for Join {
    fn name(&self) -> &'static str {
        "join"
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        let with = |mode: u8, rest: &[u8]| [&[mode][..], rest].concat();
        let mut seeds = Vec::new();
        if let Some((init, first)) = self.start() {
            seeds.push(with(0, &first));
            if let Some(mut resp) = self.responder() {
                if resp.read_hello(&first).is_ok() {
                    if let Ok(second) = resp.answer(&self.token.hash()) {
                        seeds.push(with(4, &second));
                        if let Ok((frames, _)) = init.respond(&second) {
                            for f in frames {
                                seeds.push(with(5, &f));
                                seeds.push(with(3, &f));
                            }
                        }
                    }
                }
            }
        }
        // The request and reply seeds are valid for the session this target keeps.
        if let Some((_, _, request)) = &self.session {
            seeds.push(with(1, request));
        }
        if let Some(reply) = self.admitted_reply() {
            seeds.push(with(2, &reply));
        }
        if let Ok(refused) = serde_json::to_vec(&JoinReply::Refused { reason: "token expired".into() }) {
            seeds.push(with(2, &refused));
        }
        seeds
    }

    fn hints(&self) -> Hints {
        let mut dictionary: Vec<Vec<u8>> = [
            "\"node_id\":",
            "\"name\":",
            "\"address\":",
            "\"ed_public\":",
            "\"signature\":",
            "\"outcome\":",
            "\"admitted\"",
            "\"refused\"",
            "\"mesh\":",
            "\"proof\":",
            "\"roster\":",
            "\"reason\":",
            "\"mesh_id\":",
            "\"public_key\":",
            "tok_",
            "http://",
            "null",
            "true",
            "\"\\u0000\"",
            "\"\\ud800\"",
            "1e999",
            "-0",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        for mode in 0..6u8 {
            dictionary.push(vec![mode]);
        }
        Hints { dictionary, nesting: vec![b"[".to_vec(), b"{\"a\":".to_vec()], binary: false }
    }

    fn run(&mut self, input: &[u8]) -> Result<String, String> {
        let Some((&mode, rest)) = input.split_first() else { return Ok("empty".into()) };
        match mode % 8 {
            0 => {
                let mut resp = self.responder().ok_or("cannot make a responder")?;
                Ok(match resp.read_hello(rest) {
                    Ok(id) if id.len() == 16 => "hello:token id".into(),
                    Ok(_) => return Err("read_hello returned a malformed token id".into()),
                    Err(e) => super::label("hello", &e),
                })
            }
            1 => self.request(rest),
            2 => self.reply(rest),
            3 => self.forged(rest),
            4 => self.second(rest),
            _ => self.third(rest),
        }
    }
}
