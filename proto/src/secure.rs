//! Secure VLP frames: the 32-byte base frame sealed with ChaCha20-Poly1305
//! (RFC 8439), and the HKDF-SHA256 key derivations of VLP v0.2.
//!
//! Shared-key frame (60 bytes, empty AAD):
//! `iv_random[8] | iv_counter u32 LE | ciphertext[32] | tag[16]`.
//!
//! Master-key frame (64 bytes): `agent_pid u32 LE | iv_random[8] |
//! iv_counter u32 LE | ciphertext[32] | tag[16]`; the 4 pid bytes are the
//! AAD and the key is [`MasterKey::agent_key`] for that pid. After opening,
//! the plaintext goes through the ordinary [`Frame::decode`], and a master
//! frame whose plaintext pid differs from the wire pid is refused.
//!
//! Tag failures are [`OpenError::AuthFailed`], never a CRC error. Replay
//! protection is the receiver's job; [`Iv`] is returned so it can do it.
//!
//! What a master-key frame proves — a deliberate narrowing of the
//! reference's "master key may trigger recovery": the sender holds the
//! master key, so it is not an *outsider*. It does not prove the pid: every
//! agent of the deployment holds the master key and can derive any other
//! pid's agent key. varta therefore treats a master-key pid as a claim —
//! recovery never substitutes it (or anything read about it from `/proc`)
//! into a command (`unverified_identity`); only UDS, where the kernel
//! attests the pid, identifies a process.

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::frame::{DecodeError, FRAME_LEN, Frame};
use crate::hex::{HexError, decode_hex_array};

/// Length of a shared-key secure frame.
pub const SHARED_FRAME_LEN: usize = 60;
/// Length of a master-key secure frame.
pub const MASTER_FRAME_LEN: usize = 64;
/// Length of a key in bytes.
pub const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;

/// A 256-bit secret. Zeroed on drop, deliberately not `Clone`, and its
/// `Debug` output never shows the bytes.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Key([u8; KEY_LEN]);

impl Key {
    /// Wraps raw key bytes (the caller's copy should be zeroized too).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Key {
        Key(bytes)
    }

    /// Parses 64 hex characters, surrounding whitespace allowed (key files
    /// usually end with a newline).
    pub fn from_hex(s: &str) -> Result<Key, HexError> {
        let mut bytes = decode_hex_array::<KEY_LEN>(s)?;
        let key = Key(bytes);
        bytes.zeroize();
        Ok(key)
    }

    /// The secret bytes. Handle with care: never log them.
    pub fn expose_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// The master key from which every agent's key is derived.
#[derive(Debug)]
pub struct MasterKey(Key);

impl MasterKey {
    pub fn new(key: Key) -> MasterKey {
        MasterKey(key)
    }

    /// `HKDF-SHA256(IKM = master, salt = empty, info = "varta-agent-v1" || 0x00 || pid LE, L = 32)`.
    pub fn agent_key(&self, pid: u32) -> Key {
        Key(hkdf_expand::<KEY_LEN>(self.0.expose_bytes(), b"varta-agent-v1", &pid.to_le_bytes()))
    }
}

/// `HKDF(IKM = session_salt, info = "varta-iv-prefix-v1" || 0x00 || index LE, L = 8)`:
/// how clients derive `iv_random` prefixes from a session salt.
pub fn iv_prefix(session_salt: &[u8; 16], index: u32) -> [u8; 8] {
    hkdf_expand::<8>(session_salt, b"varta-iv-prefix-v1", &index.to_le_bytes())
}

/// `HKDF(IKM = agent_key, info = "varta-epoch-v1" || 0x00 || epoch LE, L = 32)`
/// (reserved by the spec; unused on the wire today).
pub fn epoch_key(agent_key: &Key, epoch: u64) -> Key {
    Key(hkdf_expand::<KEY_LEN>(agent_key.expose_bytes(), b"varta-epoch-v1", &epoch.to_le_bytes()))
}

/// HKDF-SHA256 with empty salt and `info = label || 0x00 || suffix`.
fn hkdf_expand<const L: usize>(ikm: &[u8], label: &[u8], suffix: &[u8]) -> [u8; L] {
    let hk = Hkdf::<Sha256>::new(None, ikm);
    let mut info = [0u8; 64];
    let n = label.len() + 1 + suffix.len();
    info[..label.len()].copy_from_slice(label);
    info[label.len()] = 0;
    info[label.len() + 1..n].copy_from_slice(suffix);
    let mut okm = [0u8; L];
    // L <= 32 is far below HKDF-SHA256's 255 * 32 byte limit, so this cannot fail.
    if hk.expand(&info[..n], &mut okm).is_err() {
        unreachable!("HKDF output length {L} is within limits");
    }
    okm
}

/// The AEAD nonce of one secure frame: `iv_random || iv_counter (LE)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Iv {
    pub random: [u8; 8],
    pub counter: u32,
}

impl Iv {
    fn nonce(&self) -> Nonce {
        let mut n = [0u8; 12];
        n[..8].copy_from_slice(&self.random);
        n[8..].copy_from_slice(&self.counter.to_le_bytes());
        Nonce::from(n)
    }
}

/// Why a secure datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("datagram is {got} bytes, expected {expected}")]
    BadLength { got: usize, expected: usize },
    #[error("authentication failed (wrong key or tampered frame)")]
    AuthFailed,
    #[error("sealed frame is invalid: {0}")]
    Decode(DecodeError),
    #[error("wire pid {wire} does not match sealed frame pid {sealed}")]
    PidMismatch { wire: u32, sealed: u32 },
}

/// A ready-to-use ChaCha20-Poly1305 instance for one key. The cipher state
/// holds a copy of the key and zeroes it on drop; not `Clone`.
pub struct FrameCipher(ChaCha20Poly1305);

impl std::fmt::Debug for FrameCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FrameCipher(<redacted>)")
    }
}

impl FrameCipher {
    pub fn new(key: &Key) -> FrameCipher {
        FrameCipher(ChaCha20Poly1305::new(key.expose_bytes().into()))
    }

    fn seal_into(&self, iv: Iv, aad: &[u8], frame: &[u8; FRAME_LEN], out: &mut [u8]) {
        let (ct, tag_out) = out.split_at_mut(FRAME_LEN);
        ct.copy_from_slice(frame);
        // ChaCha20-Poly1305 only fails for messages beyond 256 GiB.
        match self.0.encrypt_inout_detached(&iv.nonce(), aad, ct.into()) {
            Ok(tag) => tag_out.copy_from_slice(&tag),
            Err(_) => unreachable!("a 32-byte message is within ChaCha20-Poly1305 limits"),
        }
    }

    fn open_from(&self, iv: Iv, aad: &[u8], sealed: &[u8]) -> Result<[u8; FRAME_LEN], OpenError> {
        let mut pt = [0u8; FRAME_LEN];
        pt.copy_from_slice(&sealed[..FRAME_LEN]);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&sealed[FRAME_LEN..FRAME_LEN + TAG_LEN]);
        self.0
            .decrypt_inout_detached(&iv.nonce(), aad, (&mut pt[..]).into(), &Tag::from(tag))
            .map_err(|_| OpenError::AuthFailed)?;
        Ok(pt)
    }

    /// Seals a base frame into a 60-byte shared-key frame.
    pub fn seal_shared(&self, iv: Iv, frame: &[u8; FRAME_LEN]) -> [u8; SHARED_FRAME_LEN] {
        let mut out = [0u8; SHARED_FRAME_LEN];
        out[..8].copy_from_slice(&iv.random);
        out[8..12].copy_from_slice(&iv.counter.to_le_bytes());
        self.seal_into(iv, &[], frame, &mut out[12..]);
        out
    }

    /// Seals a base frame into a 64-byte master-key frame. `self` must be
    /// the agent key for `pid` ([`MasterKey::agent_key`]).
    pub fn seal_master(&self, pid: u32, iv: Iv, frame: &[u8; FRAME_LEN]) -> [u8; MASTER_FRAME_LEN] {
        let mut out = [0u8; MASTER_FRAME_LEN];
        out[..4].copy_from_slice(&pid.to_le_bytes());
        out[4..12].copy_from_slice(&iv.random);
        out[12..16].copy_from_slice(&iv.counter.to_le_bytes());
        let (aad, rest) = out.split_at_mut(4);
        self.seal_into(iv, aad, frame, &mut rest[12..]);
        out
    }

    /// Opens a 60-byte shared-key frame and decodes the plaintext.
    pub fn open_shared(&self, wire: &[u8]) -> Result<(Iv, Frame), OpenError> {
        let iv = shared_iv(wire)?;
        let pt = self.open_from(iv, &[], &wire[12..])?;
        let frame = Frame::decode_array(&pt).map_err(OpenError::Decode)?;
        Ok((iv, frame))
    }

    /// Opens a 64-byte master-key frame with this agent cipher (the caller
    /// picked it by [`master_frame_pid`]) and checks the pid binding.
    pub fn open_master(&self, wire: &[u8]) -> Result<(Iv, Frame), OpenError> {
        let wire_pid = master_frame_pid(wire)?;
        let iv = Iv { random: array8(&wire[4..12]), counter: u32_le(&wire[12..16]) };
        let pt = self.open_from(iv, &wire[..4], &wire[16..])?;
        let frame = Frame::decode_array(&pt).map_err(OpenError::Decode)?;
        if frame.pid != wire_pid {
            return Err(OpenError::PidMismatch { wire: wire_pid, sealed: frame.pid });
        }
        Ok((iv, frame))
    }
}

fn array8(b: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    a
}

fn u32_le(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn shared_iv(wire: &[u8]) -> Result<Iv, OpenError> {
    if wire.len() != SHARED_FRAME_LEN {
        return Err(OpenError::BadLength { got: wire.len(), expected: SHARED_FRAME_LEN });
    }
    Ok(Iv { random: array8(&wire[..8]), counter: u32_le(&wire[8..12]) })
}

/// The cleartext agent pid of a 64-byte master-key frame (checks length).
pub fn master_frame_pid(wire: &[u8]) -> Result<u32, OpenError> {
    if wire.len() != MASTER_FRAME_LEN {
        return Err(OpenError::BadLength { got: wire.len(), expected: MASTER_FRAME_LEN });
    }
    Ok(u32_le(&wire[..4]))
}

/// Opens a shared-key frame trying *every* cipher, without stopping at the
/// first match, so the time taken does not reveal which key (primary or a
/// rotation key) opened it. Returns the index of the matching key.
pub fn open_shared_any(ciphers: &[FrameCipher], wire: &[u8]) -> Result<(usize, Iv, Frame), OpenError> {
    let iv = shared_iv(wire)?;
    let mut opened: Option<(usize, [u8; FRAME_LEN])> = None;
    for (i, c) in ciphers.iter().enumerate() {
        if let Ok(pt) = c.open_from(iv, &[], &wire[12..]) {
            opened.get_or_insert((i, pt));
        }
    }
    let (i, pt) = opened.ok_or(OpenError::AuthFailed)?;
    let frame = Frame::decode_array(&pt).map_err(OpenError::Decode)?;
    Ok((i, iv, frame))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Status;
    use crate::hex::{decode_hex, encode_hex};

    fn counting_key() -> Key {
        let mut b = [0u8; 32];
        for (i, x) in b.iter_mut().enumerate() {
            *x = i as u8;
        }
        Key::from_bytes(b)
    }

    const IV: Iv = Iv { random: [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88], counter: 0 };

    fn plaintext() -> [u8; 32] {
        Frame::new(Status::Ok, 2, 1000, 1, 0).encode()
    }

    const SHARED_WIRE: &str = "1122334455667788 00000000
        bcba1b202190b688a08e0a7ac909da44a2023cb7a421fd6428453fd12141c257
        b6fd638c55fddf5c621020de1327975a";
    const MASTER_WIRE: &str = "02000000 1122334455667788 00000000
        efe8fd8c226106641e01fc8fe649f79475e19b4f2093e063987f1c663a5d2f0b
        73ba429fadc4c494e2723baff86af9cc";

    #[test]
    fn shared_key_known_answer() {
        let c = FrameCipher::new(&counting_key());
        let wire = decode_hex(SHARED_WIRE).expect("hex");
        assert_eq!(c.seal_shared(IV, &plaintext()).as_slice(), wire.as_slice());
        let (iv, f) = c.open_shared(&wire).expect("opens");
        assert_eq!(iv, IV);
        assert_eq!(f.encode(), plaintext());
    }

    #[test]
    fn master_key_known_answers() {
        let master = MasterKey::new(counting_key());
        let k2 = master.agent_key(2);
        assert_eq!(
            encode_hex(k2.expose_bytes()),
            "db292f5843a0737aec785a9df270561b343d06e5fe8f89fce72f0869ba77afd5"
        );
        let c = FrameCipher::new(&k2);
        let wire = decode_hex(MASTER_WIRE).expect("hex");
        assert_eq!(c.seal_master(2, IV, &plaintext()).as_slice(), wire.as_slice());
        assert_eq!(master_frame_pid(&wire), Ok(2));
        let (iv, f) = c.open_master(&wire).expect("opens");
        assert_eq!((iv, f.pid), (IV, 2));
    }

    #[test]
    fn hkdf_known_answers() {
        let master = MasterKey::new(counting_key());
        assert_eq!(
            encode_hex(master.agent_key(42).expose_bytes()),
            "61f5951b2bf1905d5053df0abb027002cba62da1f16d93c6552ff61cb65f2599"
        );
        let mut salt = [0u8; 16];
        for (i, x) in salt.iter_mut().enumerate() {
            *x = i as u8 + 1;
        }
        assert_eq!(encode_hex(&iv_prefix(&salt, 7)), "9fee777f36be69ce");
        assert_eq!(
            encode_hex(epoch_key(&counting_key(), 100).expose_bytes()),
            "cb9fe8cb3db0d8d667b7dd9e72adce07c669d3b27bc68ea69e3cc3c129d601ab"
        );
    }

    #[test]
    fn tampering_is_an_auth_failure_never_bad_crc() {
        let c = FrameCipher::new(&counting_key());
        let wire = decode_hex(SHARED_WIRE).expect("hex");
        for i in 0..wire.len() {
            let mut w = wire.clone();
            w[i] ^= 0x40;
            assert_eq!(c.open_shared(&w).map(|_| ()), Err(OpenError::AuthFailed), "byte {i}");
        }
        let other = FrameCipher::new(&Key::from_bytes([9; 32]));
        assert_eq!(other.open_shared(&wire).map(|_| ()), Err(OpenError::AuthFailed));
        assert_eq!(
            c.open_shared(&wire[..59]).map(|_| ()),
            Err(OpenError::BadLength { got: 59, expected: 60 })
        );
    }

    #[test]
    fn master_pid_binding() {
        let master = MasterKey::new(counting_key());
        // A frame for pid 5 sealed under pid 2's key but labelled 2 on the wire.
        let c2 = FrameCipher::new(&master.agent_key(2));
        let inner = Frame::new(Status::Ok, 5, 1, 1, 0).encode();
        let wire = c2.seal_master(2, IV, &inner);
        assert_eq!(c2.open_master(&wire).map(|_| ()), Err(OpenError::PidMismatch { wire: 2, sealed: 5 }));
        // Relabelling the wire pid breaks the AAD.
        let mut relabelled = wire;
        relabelled[0] = 5;
        assert_eq!(c2.open_master(&relabelled).map(|_| ()), Err(OpenError::AuthFailed));
    }

    #[test]
    fn sealed_garbage_is_a_decode_error() {
        let c = FrameCipher::new(&counting_key());
        let wire = c.seal_shared(IV, &[0u8; 32]);
        assert_eq!(c.open_shared(&wire).map(|_| ()), Err(OpenError::Decode(DecodeError::BadMagic)));
    }

    #[test]
    fn any_key_reports_which_matched() {
        let keys = [Key::from_bytes([1; 32]), counting_key(), Key::from_bytes([3; 32])];
        let ciphers: Vec<FrameCipher> = keys.iter().map(FrameCipher::new).collect();
        let wire = decode_hex(SHARED_WIRE).expect("hex");
        let (i, _, f) = open_shared_any(&ciphers, &wire).expect("second key opens");
        assert_eq!((i, f.timestamp), (1, 1000));
        assert_eq!(open_shared_any(&ciphers[..1], &wire).map(|_| ()), Err(OpenError::AuthFailed));
    }

    #[test]
    fn keys_never_print_their_bytes() {
        let k = counting_key();
        let shown =
            format!("{k:?} {:?} {:?}", MasterKey::new(Key::from_bytes([0xab; 32])), FrameCipher::new(&k));
        assert!(!shown.contains("0, 1, 2") && !shown.contains("ab") && !shown.contains("171"), "{shown}");
        assert!(Key::from_hex(" 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n").is_ok());
        assert!(Key::from_hex("0001").is_err());
    }
}
