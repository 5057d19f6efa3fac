//! The Noise XX link between two nodes (X25519, ChaCha20-Poly1305, BLAKE2s, from `snow`): bytes
//! ↔ encrypted frames. The prologue binds the protocol version and the mesh id, so a node of
//! another mesh or version fails the handshake. Nonces are counters, so a replayed or reordered
//! frame fails to decrypt; the caller closes the link on any error.

use crate::wire::PROTOCOL_VERSION;

/// The Noise protocol every link speaks.
pub const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// Largest Noise message, and so the largest WebSocket frame a link accepts.
pub const MAX_FRAME: usize = 65_535;
/// Authentication tag added to every transport message.
const TAG_LEN: usize = 16;
/// Largest plaintext that fits in one frame.
pub const MAX_PLAINTEXT: usize = MAX_FRAME - TAG_LEN;

#[derive(Debug, thiserror::Error)]
pub enum NoiseError {
    #[error("noise: {0}")]
    Snow(#[from] snow::Error),
    #[error("frame of {0} bytes is larger than {MAX_FRAME}")]
    TooLarge(usize),
    #[error("the peer's static key is missing or malformed")]
    NoRemoteKey,
    #[error("handshake message out of turn")]
    OutOfTurn,
}

/// The prologue both sides must agree on.
pub fn prologue(mesh_id: &str) -> Vec<u8> {
    format!("buildnet-mesh/{PROTOCOL_VERSION}/{mesh_id}").into_bytes()
}

/// A fresh X25519 static key pair: (private, public).
pub fn generate_keypair() -> Result<([u8; 32], [u8; 32]), NoiseError> {
    let params = NOISE_PARAMS.parse::<snow::params::NoiseParams>()?;
    let kp = snow::Builder::new(params).generate_keypair()?;
    let private: [u8; 32] = kp.private.as_slice().try_into().map_err(|_| NoiseError::NoRemoteKey)?;
    let public: [u8; 32] = kp.public.as_slice().try_into().map_err(|_| NoiseError::NoRemoteKey)?;
    Ok((private, public))
}

/// A handshake in progress.
pub struct Handshake {
    state: snow::HandshakeState,
}

impl Handshake {
    fn builder<'a>(
        params: snow::params::NoiseParams,
        private: &'a [u8; 32],
        prologue: &'a [u8],
    ) -> Result<snow::Builder<'a>, NoiseError> {
        Ok(snow::Builder::new(params).local_private_key(private)?.prologue(prologue)?)
    }

    pub fn initiator(private: &[u8; 32], prologue: &[u8]) -> Result<Self, NoiseError> {
        let params = NOISE_PARAMS.parse::<snow::params::NoiseParams>()?;
        Ok(Handshake { state: Self::builder(params, private, prologue)?.build_initiator()? })
    }

    pub fn responder(private: &[u8; 32], prologue: &[u8]) -> Result<Self, NoiseError> {
        let params = NOISE_PARAMS.parse::<snow::params::NoiseParams>()?;
        Ok(Handshake { state: Self::builder(params, private, prologue)?.build_responder()? })
    }

    /// Whether this side sends the next handshake message.
    pub fn my_turn(&self) -> bool {
        self.state.is_my_turn()
    }

    pub fn finished(&self) -> bool {
        self.state.is_handshake_finished()
    }

    /// The next handshake message (no payload: identity comes from the static keys).
    pub fn write(&mut self) -> Result<Vec<u8>, NoiseError> {
        if !self.state.is_my_turn() {
            return Err(NoiseError::OutOfTurn);
        }
        let mut buf = vec![0u8; MAX_FRAME];
        let n = self.state.write_message(&[], &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    pub fn read(&mut self, message: &[u8]) -> Result<(), NoiseError> {
        if message.len() > MAX_FRAME {
            return Err(NoiseError::TooLarge(message.len()));
        }
        if self.state.is_my_turn() {
            return Err(NoiseError::OutOfTurn);
        }
        let mut buf = vec![0u8; MAX_FRAME];
        self.state.read_message(message, &mut buf)?;
        Ok(())
    }

    /// Switches to transport mode once the handshake is done.
    pub fn into_transport(self) -> Result<Transport, NoiseError> {
        let remote: [u8; 32] =
            self.state.get_remote_static().and_then(|k| k.try_into().ok()).ok_or(NoiseError::NoRemoteKey)?;
        Ok(Transport { state: self.state.into_transport_mode()?, remote_static: remote, sent: 0, received: 0 })
    }
}

/// An established link's cipher state.
pub struct Transport {
    state: snow::TransportState,
    /// The peer's X25519 static key, proven by the handshake.
    pub remote_static: [u8; 32],
    pub sent: u64,
    pub received: u64,
}

impl Transport {
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, NoiseError> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(NoiseError::TooLarge(plaintext.len() + TAG_LEN));
        }
        let mut buf = vec![0u8; plaintext.len() + TAG_LEN];
        let n = self.state.write_message(plaintext, &mut buf)?;
        buf.truncate(n);
        self.sent += 1;
        Ok(buf)
    }

    /// Decrypts one frame. Refuses oversized frames before allocating for them.
    pub fn decrypt(&mut self, frame: &[u8]) -> Result<Vec<u8>, NoiseError> {
        if frame.len() > MAX_FRAME {
            return Err(NoiseError::TooLarge(frame.len()));
        }
        let mut buf = vec![0u8; frame.len()];
        let n = self.state.read_message(frame, &mut buf)?;
        buf.truncate(n);
        self.received += 1;
        Ok(buf)
    }

    /// New key for what this side sends (after telling the peer with a `Rekey` message).
    pub fn rekey_outgoing(&mut self) {
        self.state.rekey_outgoing();
    }

    /// New key for what the peer sends (after its `Rekey` message).
    pub fn rekey_incoming(&mut self) {
        self.state.rekey_incoming();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::unhex;

    fn key(hex: &str) -> [u8; 32] {
        unhex(hex).expect("hex").try_into().expect("32 bytes")
    }

    /// Noise_XX_25519_ChaChaPoly_BLAKE2s from the cacophony vectors shipped with snow.
    #[test]
    fn matches_the_cacophony_vector() {
        let prologue = unhex("4a6f686e2047616c74").expect("hex");
        let (is, ie) = (
            key("e61ef9919cde45dd5f82166404bd08e38bceb5dfdfded0a34c8df7ed542214d1"),
            key("893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a"),
        );
        let (rs, re) = (
            key("4a3acbfdb163dec651dfa3194dece676d437029c62a408b4c5ea9114246e4893"),
            key("bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b"),
        );
        let params = || NOISE_PARAMS.parse::<snow::params::NoiseParams>().expect("params");
        let mut init = snow::Builder::new(params())
            .local_private_key(&is)
            .and_then(|b| b.prologue(&prologue))
            .expect("builder")
            .fixed_ephemeral_key_for_testing_only(&ie)
            .build_initiator()
            .expect("initiator");
        let mut resp = snow::Builder::new(params())
            .local_private_key(&rs)
            .and_then(|b| b.prologue(&prologue))
            .expect("builder")
            .fixed_ephemeral_key_for_testing_only(&re)
            .build_responder()
            .expect("responder");
        let messages = [
            ("4c756477696720766f6e204d69736573", "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c79444c756477696720766f6e204d69736573"),
            ("4d757272617920526f746862617264", "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f1448088437c365eb362a1c991b0557fe8a7fb187d99346765d93ec63db6c1b01504ebeec55a2298d2dbff80eff034d20595153f63a196a6cead1e11b2bb13e336fa13616dd3e8b0a070c882ed3f1a78c7c06c93"),
            ("462e20412e20486179656b", "46c3307de83b014258717d97781c1f50936d8b7d50c0722a1739654d10392d415b670c114f79b9a4f80541570f77ce88802efa4220cff733e7b5668ba38059ec904b4b8eef9448085faf51"),
        ];
        let mut buf = [0u8; 1024];
        let mut out = [0u8; 1024];
        for (i, (payload, cipher)) in messages.iter().enumerate() {
            let payload = unhex(payload).expect("hex");
            let (w, r) = if i % 2 == 0 { (&mut init, &mut resp) } else { (&mut resp, &mut init) };
            let n = w.write_message(&payload, &mut buf).expect("write");
            assert_eq!(crate::wire::hex(&buf[..n]), *cipher, "handshake message {i}");
            let m = r.read_message(&buf[..n], &mut out).expect("read");
            assert_eq!(&out[..m], payload.as_slice());
        }
        assert_eq!(
            crate::wire::hex(init.get_handshake_hash()),
            "6c4c56cf71612f72d05ceb96c0155e6f4ea54a26b504c93de632a2db4a49d200"
        );
        let mut init = init.into_transport_mode().expect("transport");
        let mut resp = resp.into_transport_mode().expect("transport");
        // Messages keep alternating after the handshake: the responder sends the fourth.
        let n = resp.write_message(&unhex("4361726c204d656e676572").expect("hex"), &mut buf).expect("write");
        assert_eq!(crate::wire::hex(&buf[..n]), "d5e83adfaac5dc324a68f1862df54549e56d209fba707205f328b2");
        init.read_message(&buf[..n], &mut out).expect("read");
        let n =
            init.write_message(&unhex("4a65616e2d426170746973746520536179").expect("hex"), &mut buf).expect("write");
        assert_eq!(crate::wire::hex(&buf[..n]), "d102c9029b1f55c788f561ba7737afbccef9c9f1bf2f238167fd40ba9c1c134867");
    }

    fn pair(mesh_a: &str, mesh_b: &str) -> Result<(Transport, Transport, [u8; 32], [u8; 32]), NoiseError> {
        let (a_priv, a_pub) = generate_keypair()?;
        let (b_priv, b_pub) = generate_keypair()?;
        let mut a = Handshake::initiator(&a_priv, &prologue(mesh_a))?;
        let mut b = Handshake::responder(&b_priv, &prologue(mesh_b))?;
        while !(a.finished() && b.finished()) {
            if a.my_turn() {
                b.read(&a.write()?)?;
            } else {
                a.read(&b.write()?)?;
            }
        }
        Ok((a.into_transport()?, b.into_transport()?, a_pub, b_pub))
    }

    #[test]
    fn links_authenticate_both_sides_and_refuse_tampering_and_replay() {
        let (mut a, mut b, a_pub, b_pub) = pair("m1", "m1").expect("handshake");
        assert_eq!(a.remote_static, b_pub);
        assert_eq!(b.remote_static, a_pub);
        let frame = a.encrypt(b"node names are secret").expect("encrypt");
        assert!(!frame.windows(5).any(|w| w == b"names"), "ciphertext hides the text");
        assert_eq!(b.decrypt(&frame).expect("decrypt"), b"node names are secret");
        assert!(b.decrypt(&frame).is_err(), "a replayed frame is refused");

        let (mut a, mut b, _, _) = pair("m1", "m1").expect("handshake");
        let mut frame = a.encrypt(b"hello").expect("encrypt");
        frame[3] ^= 0x40;
        assert!(b.decrypt(&frame).is_err(), "a flipped byte is refused");
        assert!(matches!(b.decrypt(&vec![0u8; MAX_FRAME + 1]), Err(NoiseError::TooLarge(_))));
    }

    #[test]
    fn another_mesh_fails_the_handshake() {
        assert!(pair("m1", "m2").is_err());
    }

    #[test]
    fn rekeying_keeps_the_link_working() {
        let (mut a, mut b, _, _) = pair("m", "m").expect("handshake");
        a.rekey_outgoing();
        b.rekey_incoming();
        let frame = a.encrypt(b"after rekey").expect("encrypt");
        assert_eq!(b.decrypt(&frame).expect("decrypt"), b"after rekey");
        let stale = a.encrypt(b"x").expect("encrypt");
        a.rekey_outgoing();
        let fresh = a.encrypt(b"y").expect("encrypt");
        assert!(b.decrypt(&stale).is_ok());
        assert!(b.decrypt(&fresh).is_err(), "a side that did not rekey cannot read");
    }
}
