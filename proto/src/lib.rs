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
