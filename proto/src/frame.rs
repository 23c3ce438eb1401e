//! The 32-byte VLP v0.2 base frame: layout, encoding and the normative
//! decode order.
//!
//! Layout (all integers little-endian):
//!
//! | offset | size | field     |
//! |-------:|-----:|-----------|
//! | 0      | 2    | magic `"VA"` |
//! | 2      | 1    | version `2` |
//! | 3      | 1    | status |
//! | 4      | 4    | pid |
//! | 8      | 8    | timestamp (agent-local monotonic ns) |
//! | 16     | 8    | nonce |
//! | 24     | 4    | payload (opaque) |
//! | 28     | 4    | CRC-32C over bytes 0..28 |
//!
//! [`Frame::decode`] applies the checks in the order the spec makes
//! normative, so the first failing check decides the error: a wrong magic
//! means "not VLP on this port", a CRC mismatch means "VLP, corrupted".
//! [`Frame::encode`] writes any field values verbatim (including ones that
//! `decode` rejects) so tools and tests can craft every kind of bad frame.

use crate::crc::crc32c;

/// Length of a plain VLP frame on the wire.
pub const FRAME_LEN: usize = 32;
/// `"VA"`.
pub const MAGIC: [u8; 2] = [0x56, 0x41];
/// The only accepted protocol version.
pub const VERSION: u8 = 2;
/// Nonce reserved for the last frame of a panicking agent (status Critical).
pub const NONCE_TERMINAL: u64 = u64::MAX;

/// Agent health as carried in a frame.
///
/// `Stall` is synthesised by observers when an agent goes silent; a frame
/// that carries it on the wire is rejected with [`DecodeError::StallOnWire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Status {
    Ok = 0,
    Degraded = 1,
    Critical = 2,
    Stall = 3,
}

impl Status {
    /// Every status, in wire order.
    pub const ALL: [Status; 4] = [Status::Ok, Status::Degraded, Status::Critical, Status::Stall];

    /// Lower-case name used in configs, CLIs, JSON and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Degraded => "degraded",
            Status::Critical => "critical",
            Status::Stall => "stall",
        }
    }

    /// The status for a wire byte, if it names one.
    pub const fn from_byte(byte: u8) -> Option<Status> {
        match byte {
            0 => Some(Status::Ok),
            1 => Some(Status::Degraded),
            2 => Some(Status::Critical),
            3 => Some(Status::Stall),
            _ => None,
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown status {s:?} (expected ok, degraded, critical or stall)"))
    }
}

/// A decoded (or to-be-encoded) VLP frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Frame {
    pub status: Status,
    pub pid: u32,
    pub timestamp: u64,
    pub nonce: u64,
    pub payload: u32,
}

/// Why a datagram is not a valid VLP frame. Variants are listed in the
/// normative check order; `BadLength` comes before all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("datagram is {0} bytes, expected {FRAME_LEN}")]
    BadLength(usize),
    #[error("bad magic (not a VLP frame)")]
    BadMagic,
    #[error("unsupported version {0} (expected 2)")]
    BadVersion(u8),
    #[error("CRC mismatch: frame carries {actual:#010x}, computed {expected:#010x}")]
    BadCrc { expected: u32, actual: u32 },
    #[error("unknown status byte {0}")]
    BadStatus(u8),
    #[error("status Stall is observer-synthesised and never valid on the wire")]
    StallOnWire,
    #[error("reserved pid {0}")]
    BadPid(u32),
    #[error("timestamp u64::MAX is reserved")]
    BadTimestamp,
    #[error("terminal nonce without Critical status")]
    BadNonce,
}

/// Field-free classification of [`DecodeError`], usable as a counter index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DecodeErrorKind {
    BadLength = 0,
    BadMagic,
    BadVersion,
    BadCrc,
    BadStatus,
    StallOnWire,
    BadPid,
    BadTimestamp,
    BadNonce,
}

impl DecodeErrorKind {
    /// Number of kinds (size of a per-kind counter array).
    pub const COUNT: usize = 9;
    /// Every kind, in index order.
    pub const ALL: [DecodeErrorKind; Self::COUNT] = [
        DecodeErrorKind::BadLength,
        DecodeErrorKind::BadMagic,
        DecodeErrorKind::BadVersion,
        DecodeErrorKind::BadCrc,
        DecodeErrorKind::BadStatus,
        DecodeErrorKind::StallOnWire,
        DecodeErrorKind::BadPid,
        DecodeErrorKind::BadTimestamp,
        DecodeErrorKind::BadNonce,
    ];

    /// snake_case label, as used by varta-watch's `varta_decode_errors_total{kind}`.
    pub const fn label(self) -> &'static str {
        match self {
            DecodeErrorKind::BadLength => "bad_length",
            DecodeErrorKind::BadMagic => "bad_magic",
            DecodeErrorKind::BadVersion => "bad_version",
            DecodeErrorKind::BadCrc => "bad_crc",
            DecodeErrorKind::BadStatus => "bad_status",
            DecodeErrorKind::StallOnWire => "stall_on_wire",
            DecodeErrorKind::BadPid => "bad_pid",
            DecodeErrorKind::BadTimestamp => "bad_timestamp",
            DecodeErrorKind::BadNonce => "bad_nonce",
        }
    }

    /// CamelCase name, as used in the spec and `varta frame decode --json`.
    pub const fn name(self) -> &'static str {
        match self {
            DecodeErrorKind::BadLength => "BadLength",
            DecodeErrorKind::BadMagic => "BadMagic",
            DecodeErrorKind::BadVersion => "BadVersion",
            DecodeErrorKind::BadCrc => "BadCrc",
            DecodeErrorKind::BadStatus => "BadStatus",
            DecodeErrorKind::StallOnWire => "StallOnWire",
            DecodeErrorKind::BadPid => "BadPid",
            DecodeErrorKind::BadTimestamp => "BadTimestamp",
            DecodeErrorKind::BadNonce => "BadNonce",
        }
    }
}

impl DecodeError {
    pub const fn kind(&self) -> DecodeErrorKind {
        match self {
            DecodeError::BadLength(_) => DecodeErrorKind::BadLength,
            DecodeError::BadMagic => DecodeErrorKind::BadMagic,
            DecodeError::BadVersion(_) => DecodeErrorKind::BadVersion,
            DecodeError::BadCrc { .. } => DecodeErrorKind::BadCrc,
            DecodeError::BadStatus(_) => DecodeErrorKind::BadStatus,
            DecodeError::StallOnWire => DecodeErrorKind::StallOnWire,
            DecodeError::BadPid(_) => DecodeErrorKind::BadPid,
            DecodeError::BadTimestamp => DecodeErrorKind::BadTimestamp,
            DecodeError::BadNonce => DecodeErrorKind::BadNonce,
        }
    }
}

#[inline]
fn u32_at(b: &[u8; FRAME_LEN], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline]
fn u64_at(b: &[u8; FRAME_LEN], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

impl Frame {
    /// A frame with the given fields.
    pub const fn new(status: Status, pid: u32, timestamp: u64, nonce: u64, payload: u32) -> Frame {
        Frame { status, pid, timestamp, nonce, payload }
    }

    /// True for the last frame of a panicking agent: Critical with [`NONCE_TERMINAL`].
    pub const fn is_panic(&self) -> bool {
        matches!(self.status, Status::Critical) && self.nonce == NONCE_TERMINAL
    }

    /// Writes the frame's 32 wire bytes, CRC included. Field values are
    /// written verbatim, even ones [`Frame::decode`] would reject.
    pub fn encode(&self) -> [u8; FRAME_LEN] {
        let mut b = [0u8; FRAME_LEN];
        b[0..2].copy_from_slice(&MAGIC);
        b[2] = VERSION;
        b[3] = self.status as u8;
        b[4..8].copy_from_slice(&self.pid.to_le_bytes());
        b[8..16].copy_from_slice(&self.timestamp.to_le_bytes());
        b[16..24].copy_from_slice(&self.nonce.to_le_bytes());
        b[24..28].copy_from_slice(&self.payload.to_le_bytes());
        let crc = crc32c(&b[0..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a datagram, applying the spec's checks in normative order.
    /// Any length other than [`FRAME_LEN`] is `BadLength`; never panics.
    pub fn decode(datagram: &[u8]) -> Result<Frame, DecodeError> {
        let b: &[u8; FRAME_LEN] = datagram.try_into().map_err(|_| DecodeError::BadLength(datagram.len()))?;
        Self::decode_array(b)
    }

    /// [`Frame::decode`] for a buffer already known to be 32 bytes.
    pub fn decode_array(b: &[u8; FRAME_LEN]) -> Result<Frame, DecodeError> {
        Self::decode_array_with(b, PidRule::Spec)
    }

    /// The normative decode with a choice of pid rule (see [`PidRule`]).
    pub fn decode_array_with(b: &[u8; FRAME_LEN], pids: PidRule) -> Result<Frame, DecodeError> {
        if b[0..2] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        if b[2] != VERSION {
            return Err(DecodeError::BadVersion(b[2]));
        }
        let expected = crc32c(&b[0..28]);
        let actual = u32_at(b, 28);
        if expected != actual {
            return Err(DecodeError::BadCrc { expected, actual });
        }
        let status = match Status::from_byte(b[3]) {
            None => return Err(DecodeError::BadStatus(b[3])),
            Some(Status::Stall) => return Err(DecodeError::StallOnWire),
            Some(s) => s,
        };
        let pid = u32_at(b, 4);
        let lowest = match pids {
            PidRule::Spec => 2,
            PidRule::AllowNamespaceInit => 1,
        };
        if pid < lowest {
            return Err(DecodeError::BadPid(pid));
        }
        let timestamp = u64_at(b, 8);
        if timestamp == u64::MAX {
            return Err(DecodeError::BadTimestamp);
        }
        let nonce = u64_at(b, 16);
        if nonce == NONCE_TERMINAL && status != Status::Critical {
            return Err(DecodeError::BadNonce);
        }
        Ok(Frame { status, pid, timestamp, nonce, payload: u32_at(b, 24) })
    }
}

/// Which frame pids decoding accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidRule {
    /// The spec: `0` and `1` are `BadPid` (on a host, pid 1 is init).
    Spec,
    /// A collector extension, only for senders the kernel shows to be pid 1
    /// of a pid namespace other than the collector's (a containerised
    /// agent is often its namespace's init): `1` is accepted, `0` is not.
    AllowNamespaceInit,
}

/// How near the ends of the nonce range a wrap must be to be accepted: a
/// regular nonce `next` below the last accepted `last` is a wrap when
/// `last ≥ NONCE_TERMINAL − 1 − NONCE_WRAP_WINDOW` and
/// `next < NONCE_WRAP_WINDOW` — at most ~2²¹ beats lost around the wrap
/// ([`next_nonce`] wraps `u64::MAX − 1` to 0).
pub const NONCE_WRAP_WINDOW: u64 = 1 << 20;

/// Whether the regular nonce `next` comes after `last` in one sender's
/// sequence: strictly greater, or a wrap (see [`NONCE_WRAP_WINDOW`]). The
/// one definition the tracker and the secure receiver's replay table share.
#[inline]
pub const fn nonce_follows(last: u64, next: u64) -> bool {
    next > last || (last >= NONCE_TERMINAL - 1 - NONCE_WRAP_WINDOW && next < NONCE_WRAP_WINDOW)
}

/// The nonce an agent sends after `nonce`: strictly increasing, wrapping
/// from `u64::MAX - 1` to `0` (never producing [`NONCE_TERMINAL`]).
#[inline]
pub const fn next_nonce(nonce: u64) -> u64 {
    if nonce >= NONCE_TERMINAL - 1 { 0 } else { nonce + 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        crate::hex::decode_hex(s).expect("valid test hex")
    }

    #[test]
    fn worked_frame_ok() {
        let f = Frame::new(Status::Ok, 2, 0, 1, 0);
        let wire = hex("56 41 02 00 02 00 00 00 00 00 00 00 00 00 00 00
                        01 00 00 00 00 00 00 00 00 00 00 00 e4 11 6b aa");
        assert_eq!(f.encode().as_slice(), wire.as_slice());
        assert_eq!(Frame::decode(&wire), Ok(f));
    }

    #[test]
    fn worked_frame_panic() {
        let f = Frame::new(Status::Critical, 2, 999, NONCE_TERMINAL, 0);
        let wire = hex("56 41 02 02 02 00 00 00 e7 03 00 00 00 00 00 00
                        ff ff ff ff ff ff ff ff 00 00 00 00 a2 99 ee ed");
        assert_eq!(f.encode().as_slice(), wire.as_slice());
        let d = Frame::decode(&wire).expect("panic frame decodes");
        assert!(d.is_panic());
    }

    #[test]
    fn worked_frame_timestamp_1000() {
        let f = Frame::new(Status::Ok, 2, 1000, 1, 0);
        let wire = hex("5641020002000000e80300000000000001000000000000000000000055d0861c");
        assert_eq!(f.encode().as_slice(), wire.as_slice());
    }

    /// Re-seals a frame's CRC after bytes were changed, so a check after
    /// the CRC can be reached.
    fn reseal(mut b: [u8; FRAME_LEN]) -> [u8; FRAME_LEN] {
        let crc = crc32c(&b[0..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn every_error_kind_in_normative_order() {
        let good = Frame::new(Status::Ok, 2, 0, 1, 0).encode();
        assert_eq!(Frame::decode(&good[..31]), Err(DecodeError::BadLength(31)));
        assert_eq!(Frame::decode(&[0u8; 33]), Err(DecodeError::BadLength(33)));
        assert_eq!(Frame::decode(&[]), Err(DecodeError::BadLength(0)));

        // Magic wins over everything, even a broken version and CRC.
        let mut b = good;
        b[0] = b'X';
        b[2] = 1;
        assert_eq!(Frame::decode(&b), Err(DecodeError::BadMagic));

        // Legacy v1 is rejected, not reinterpreted; version wins over CRC.
        let mut b = good;
        b[2] = 1;
        assert_eq!(Frame::decode(&b), Err(DecodeError::BadVersion(1)));

        let mut b = good;
        b[24] ^= 0x01;
        match Frame::decode(&b) {
            Err(DecodeError::BadCrc { expected, actual }) => {
                assert_eq!(actual, u32::from_le_bytes([b[28], b[29], b[30], b[31]]));
                assert_eq!(expected, crc32c(&b[0..28]));
            }
            other => panic!("expected BadCrc, got {other:?}"),
        }

        let mut b = good;
        b[3] = 4;
        b[4] = 0; // also a bad pid: status is checked first
        assert_eq!(Frame::decode(&reseal(b)), Err(DecodeError::BadStatus(4)));

        let mut b = good;
        b[3] = 3;
        b[4] = 0;
        assert_eq!(Frame::decode(&reseal(b)), Err(DecodeError::StallOnWire));

        for pid in [0u32, 1] {
            let f = Frame::new(Status::Ok, pid, u64::MAX, 1, 0);
            assert_eq!(Frame::decode(&f.encode()), Err(DecodeError::BadPid(pid)));
        }

        let f = Frame::new(Status::Ok, 2, u64::MAX, NONCE_TERMINAL, 0);
        assert_eq!(Frame::decode(&f.encode()), Err(DecodeError::BadTimestamp));

        for status in [Status::Ok, Status::Degraded] {
            let f = Frame::new(status, 2, 5, NONCE_TERMINAL, 0);
            assert_eq!(Frame::decode(&f.encode()), Err(DecodeError::BadNonce));
        }
    }

    #[test]
    fn critical_with_ordinary_nonce_is_legal() {
        let f = Frame::new(Status::Critical, 77, 5, 9, 3);
        let d = Frame::decode(&f.encode()).expect("operational alert");
        assert_eq!(d, f);
        assert!(!d.is_panic());
    }

    #[test]
    fn pid_one_only_under_the_namespace_rule() {
        let one = Frame::new(Status::Ok, 1, 0, 1, 0).encode();
        assert_eq!(Frame::decode_array(&one), Err(DecodeError::BadPid(1)));
        let f = Frame::decode_array_with(&one, PidRule::AllowNamespaceInit).expect("pid 1 allowed");
        assert_eq!(f.pid, 1);
        let zero = Frame::new(Status::Ok, 0, 0, 1, 0).encode();
        assert_eq!(Frame::decode_array_with(&zero, PidRule::AllowNamespaceInit), Err(DecodeError::BadPid(0)));
        // Later checks still run.
        let bad = Frame::new(Status::Ok, 1, u64::MAX, 1, 0).encode();
        assert_eq!(
            Frame::decode_array_with(&bad, PidRule::AllowNamespaceInit),
            Err(DecodeError::BadTimestamp)
        );
    }

    #[test]
    fn nonce_follows_is_greater_or_a_wrap_near_the_ends() {
        assert!(nonce_follows(1, 2));
        assert!(!nonce_follows(2, 2));
        assert!(!nonce_follows(3, 2));
        assert!(nonce_follows(u64::MAX - 1, 0));
        assert!(nonce_follows(u64::MAX - 10, 5));
        assert!(!nonce_follows(u64::MAX - 1, NONCE_WRAP_WINDOW));
        assert!(!nonce_follows(1 << 40, 0));
    }

    #[test]
    fn nonce_wraps_past_terminal() {
        assert_eq!(next_nonce(1), 2);
        assert_eq!(next_nonce(u64::MAX - 2), u64::MAX - 1);
        assert_eq!(next_nonce(u64::MAX - 1), 0);
        assert_eq!(next_nonce(0), 1);
    }

    #[test]
    fn kinds_are_indexable_and_named() {
        for (i, k) in DecodeErrorKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
            assert!(!k.label().is_empty());
        }
        assert_eq!("Degraded".parse::<Status>(), Ok(Status::Degraded));
        assert!("sleepy".parse::<Status>().is_err());
    }
}
