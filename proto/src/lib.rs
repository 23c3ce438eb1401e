//! VLP v0.2 — the Varta Lifeline Protocol, byte-exact.
//!
//! * [`frame`]: the 32-byte base frame, its encoding and normative decode order.
//! * [`secure`]: ChaCha20-Poly1305 sealed frames (shared key, master key) and
//!   the HKDF-SHA256 derivations.
//! * [`crc`]: the CRC-32C checksum.
//! * [`beat`]: the decoded-and-attested beat that receivers hand to the processor.
//! * [`duration`]: the one duration grammar (`150ms`, `2s`) every config and CLI uses.
//!
//! Pure functions and plain types only: no I/O, no async, no allocation on
//! the frame paths.
//!
//! Decisions where the public spec is silent:
//! * `Frame::encode` writes fields verbatim (even a pid of 0 or status
//!   Stall) so tools can craft invalid frames; validation is `decode`'s job.
//! * Length is checked before anything else (`BadLength`), then the spec's
//!   eight checks in order.
//! * A sealed frame whose plaintext fails base decoding is
//!   `OpenError::Decode`, distinct from `AuthFailed` (tag failure).
//!
//! Sequencing, a deliberate reading of the reference ("a regular nonce must
//! be greater than the last accepted one"): the rule protects against
//! replays and reordering, and varta applies it so that *no frame can lock
//! a live agent out*. A frame whose identity the transport does not prove
//! (plain UDP, or secure UDP, where every key holder can seal any pid's
//! frames) may have jumped an agent's sequence far ahead; the real
//! sender's next frames then do not advance it. Such a frame is still
//! counted as liveness (the stall clock is refreshed; sequence, status and
//! payload are not), and the last timestamp only ever grows, so a forged
//! timestamp of 0 cannot make the real sender look restarted. A forger can
//! add beats, never silence a sender. Over UDS, where the kernel attests
//! the pid, a nonce that does not advance is dropped as the reference
//! says. Replays of recorded secure datagrams are refused before sequencing,
//! by the receiver's per-session `iv_counter` check.

pub mod beat;
pub mod crc;
pub mod duration;
pub mod frame;
pub mod hex;
pub mod secure;

pub use beat::{Arrival, BATCH_CAPACITY, Batch, Beat, Refusal, RefusedFrame, Source, Transport};
pub use frame::{
    DecodeError, DecodeErrorKind, FRAME_LEN, Frame, NONCE_TERMINAL, NONCE_WRAP_WINDOW, PidRule, Status,
    next_nonce, nonce_follows,
};
pub use secure::{
    FrameCipher, Iv, Key, MASTER_FRAME_LEN, MasterKey, OpenError, SHARED_FRAME_LEN, master_frame_pid,
    open_shared_any,
};
