//! Noise frames as a link receives them (`mesh::noise`, `mesh::bridge::open_frame`). The first
//! byte of an input picks where the rest goes:
//!
//! - 0: a fresh responder's `Handshake::read` (the first message of XX);
//! - 1: an initiator that sent its first message reads the rest as the second;
//! - 2: a responder that answered a real first message reads the rest as the third;
//! - 3: an open link's `Transport::decrypt` gets the rest as a frame (a forgery: must fail);
//! - 4: a genuine frame, altered at the positions the rest names, must fail to decrypt, and the
//!   link must still read the unaltered frame afterwards;
//! - 5 (and above): the rest is a plaintext the peer encrypts; the receiver opens the frame as the
//!   bridge does (`open_frame`: decrypt, decode the envelope, check the sender, follow a rekey).
//!
//! Modes 3–5 share one established link, kept in step (a refused frame does not move a
//! receiver's nonce). Handshake modes build fresh states per input.

use buildnet_actors::mesh::bridge::{open_frame, FrameError, Opened};
use buildnet_actors::mesh::noise::{generate_keypair, prologue, Handshake, Transport, MAX_FRAME};
use buildnet_actors::wire::NodeId;

use super::envelope;
use crate::mutate::Hints;
use crate::run::Target;

const MESH: &str = "00000000deadbeef";

pub struct Noise {
    initiator_key: [u8; 32],
    responder_key: [u8; 32],
    prologue: Vec<u8>,
    /// The sending and the receiving end of one open link.
    link: Option<(Transport, Transport)>,
    peer: NodeId,
}

fn pair(init: &[u8; 32], resp: &[u8; 32], prologue: &[u8]) -> Option<(Transport, Transport)> {
    let mut a = Handshake::initiator(init, prologue).ok()?;
    let mut b = Handshake::responder(resp, prologue).ok()?;
    while !(a.finished() && b.finished()) {
        if a.my_turn() {
            b.read(&a.write().ok()?).ok()?;
        } else {
            a.read(&b.write().ok()?).ok()?;
        }
    }
    Some((a.into_transport().ok()?, b.into_transport().ok()?))
}

impl Noise {
    pub fn new() -> Option<Noise> {
        let (initiator_key, _) = generate_keypair().ok()?;
        let (responder_key, _) = generate_keypair().ok()?;
        let prologue = prologue(MESH);
        let link = pair(&initiator_key, &responder_key, &prologue);
        Some(Noise { initiator_key, responder_key, prologue, link, peer: NodeId::parse(envelope::FROM).ok()? })
    }

    fn link(&mut self) -> Result<&mut (Transport, Transport), String> {
        if self.link.is_none() {
            self.link = pair(&self.initiator_key, &self.responder_key, &self.prologue);
        }
        self.link.as_mut().ok_or_else(|| "cannot establish a link".to_string())
    }

    fn handshake(&self, mode: u8, frame: &[u8]) -> Result<String, String> {
        let mk = |e: &dyn std::fmt::Display| format!("handshake setup: {e}");
        let result = match mode {
            0 => Handshake::responder(&self.responder_key, &self.prologue).map_err(|e| mk(&e))?.read(frame),
            1 => {
                let mut a = Handshake::initiator(&self.initiator_key, &self.prologue).map_err(|e| mk(&e))?;
                a.write().map_err(|e| mk(&e))?;
                a.read(frame)
            }
            _ => {
                let mut a = Handshake::initiator(&self.initiator_key, &self.prologue).map_err(|e| mk(&e))?;
                let mut b = Handshake::responder(&self.responder_key, &self.prologue).map_err(|e| mk(&e))?;
                b.read(&a.write().map_err(|e| mk(&e))?).map_err(|e| mk(&e))?;
                b.write().map_err(|e| mk(&e))?;
                let r = b.read(frame);
                if r.is_ok() {
                    // A third message only a real initiator could write was accepted.
                    return Err("a forged third handshake message was accepted".into());
                }
                r
            }
        };
        Ok(match result {
            Ok(()) => format!("hs{mode}:accepted"),
            Err(e) => super::label(&format!("hs{mode}"), &e),
        })
    }

    fn forged(&mut self, frame: &[u8]) -> Result<String, String> {
        let (_, b) = self.link()?;
        match b.decrypt(frame) {
            Ok(_) => Err(format!("a forged frame of {} bytes decrypted", frame.len())),
            Err(e) => Ok(super::label("forged", &e)),
        }
    }

    fn tampered(&mut self, edits: &[u8]) -> Result<String, String> {
        let (a, b) = self.link()?;
        let plain: Vec<u8> = (0..(edits.len() * 7 % 200)).map(|i| i as u8).collect();
        let genuine = a.encrypt(&plain).map_err(|e| format!("encrypt: {e}"))?;
        let mut frame = genuine.clone();
        // At most 64 edits: more would only time this harness's own byte shuffling.
        for pair in edits.chunks(2).take(64) {
            let (pos, val) = (pair[0] as usize, pair.get(1).copied().unwrap_or(0xff));
            match val {
                0 => frame.truncate(pos.min(frame.len())),
                1 => frame.insert(pos.min(frame.len()), 0),
                _ if frame.is_empty() => {}
                _ => {
                    let i = pos % frame.len();
                    frame[i] ^= val;
                }
            }
        }
        let outcome = if frame == genuine {
            "tamper:unchanged".to_string()
        } else {
            match b.decrypt(&frame) {
                Ok(_) => return Err("an altered frame decrypted".into()),
                Err(e) => super::label("tamper", &e),
            }
        };
        match b.decrypt(&genuine) {
            Ok(p) if p == plain => Ok(outcome),
            Ok(_) => Err("a genuine frame decrypted to something else".into()),
            Err(e) => Err(format!("a refused frame broke the link: the next genuine frame fails ({e})")),
        }
    }

    fn opened(&mut self, plain: &[u8]) -> Result<String, String> {
        let peer = self.peer.clone();
        let (a, b) = self.link()?;
        let frame = match a.encrypt(plain) {
            Ok(f) => f,
            Err(e) => return Ok(super::label("too-large", &e)),
        };
        let frame_len = frame.len();
        if frame_len > MAX_FRAME {
            return Err(format!("encrypt made a frame of {frame_len} bytes"));
        }
        let outcome = match open_frame(b, &peer, &frame) {
            Ok(Opened::Rekeyed) => {
                a.rekey_outgoing();
                "open:rekeyed".to_string()
            }
            Ok(Opened::Message(body)) => format!("open:{}", envelope::variant(&body)),
            // A genuine frame decrypted, so both ends moved on in step: the bridge would close
            // the link here, the fuzzer keeps it.
            Err(FrameError::Decrypt(e)) => return Err(format!("a genuine frame did not decrypt: {e}")),
            Err(e) => super::label("open", &e),
        };
        Ok(outcome)
    }
}

impl Target for Noise {
    fn name(&self) -> &'static str {
        "noise"
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        let mut seeds = Vec::new();
        // Real handshake messages from a run of the pattern.
        if let (Ok(mut a), Ok(mut b)) = (
            Handshake::initiator(&self.initiator_key, &self.prologue),
            Handshake::responder(&self.responder_key, &self.prologue),
        ) {
            let mut mode = 0u8;
            while !(a.finished() && b.finished()) && mode < 3 {
                let (from, to) = if a.my_turn() { (&mut a, &mut b) } else { (&mut b, &mut a) };
                let Ok(msg) = from.write() else { break };
                let mut seed = vec![mode];
                seed.extend_from_slice(&msg);
                seeds.push(seed);
                if to.read(&msg).is_err() {
                    break;
                }
                mode += 1;
            }
        }
        if let Some((a, _)) = pair(&self.initiator_key, &self.responder_key, &self.prologue) {
            let mut a = a;
            if let Ok(frame) = a.encrypt(b"a frame of another link") {
                seeds.push([&[3u8][..], &frame].concat());
            }
        }
        seeds.push(vec![4, 0, 0x80, 5, 0x01, 17, 0]);
        for (i, m) in envelope::sample_messages().into_iter().enumerate() {
            if let Some(plain) = envelope::encode(i as u64, m) {
                seeds.push([&[5u8][..], &plain].concat());
            }
        }
        seeds
    }

    fn hints(&self) -> Hints {
        let mut hints = envelope::hints();
        for mode in 0..6u8 {
            hints.dictionary.push(vec![mode]);
        }
        hints
    }

    fn run(&mut self, input: &[u8]) -> Result<String, String> {
        let Some((&mode, rest)) = input.split_first() else { return Ok("empty".into()) };
        match mode % 8 {
            m @ 0..=2 => self.handshake(m, rest),
            3 => self.forged(rest),
            4 => self.tampered(rest),
            _ => self.opened(rest),
        }
    }
}
