//! Secure UDP transport: ChaCha20-Poly1305 sealed frames (VLP v0.2 §2).
//!
//! The datagram length selects the mode: 60 bytes → shared keys (every
//! configured key is tried, so timing does not reveal which matched;
//! `Transport::SecureShared`), 64 bytes → master key (per-pid key derived by
//! HKDF from the wire pid; `Transport::SecureMaster`). Any other length is
//! `Decode(BadLength)` (or `Truncated` beyond the receive buffer).
//!
//! Refusals: tag failure → `DecryptFailed`; master frame whose sealed pid
//! differs from its wire pid → `PidMismatch`; bad plaintext → `Decode(kind)`;
//! stale or repeated frame → `Replay`; sender table full → `SenderTableFull`
//! (see [`crate::replay`]). Accepted beats carry `source = Ip(sender)` and
//! `host_pid = frame.pid`.
//!
//! Derived agent keys are cached in a direct-mapped table of
//! [`AGENT_KEY_CACHE`] slots (slot = pid mod size; a collision replaces the
//! entry). Only keys that opened a frame are cached, so forged frames with
//! random pids cost an HKDF each but cannot flush legitimate entries.

use std::os::fd::RawFd;
use std::sync::Arc;

use arc_swap::ArcSwap;

use varta_proto::{
    Arrival, Beat, FrameCipher, MASTER_FRAME_LEN, MasterKey, OpenError, Refusal, SHARED_FRAME_LEN, Source,
    Transport, frame::DecodeErrorKind, master_frame_pid, open_shared_any,
};

use crate::mmsg::Datagram;
use crate::refused;
use crate::replay::{ReplayTable, SenderId};
use crate::stats::ReceiverStats;
use crate::udp::{BoundUdp, source_of};

/// Slots of the derived agent-key cache.
pub const AGENT_KEY_CACHE: usize = 4096;

/// Per-pid ciphers derived from the master key.
#[derive(Debug)]
pub(crate) struct MasterCiphers {
    master: MasterKey,
    slots: Vec<Option<(u32, FrameCipher)>>,
}

impl MasterCiphers {
    pub(crate) fn new(master: MasterKey) -> MasterCiphers {
        MasterCiphers { master, slots: (0..AGENT_KEY_CACHE).map(|_| None).collect() }
    }

    fn open(&mut self, wire: &[u8]) -> Result<(varta_proto::Iv, varta_proto::Frame), OpenError> {
        let pid = master_frame_pid(wire)?;
        let slot = &mut self.slots[pid as usize % AGENT_KEY_CACHE];
        if let Some((_, cipher)) = slot.as_ref().filter(|(cached, _)| *cached == pid) {
            return cipher.open_master(wire);
        }
        let cipher = FrameCipher::new(&self.master.agent_key(pid));
        let opened = cipher.open_master(wire);
        if !matches!(opened, Err(OpenError::AuthFailed)) {
            *slot = Some((pid, cipher));
        }
        opened
    }
}

/// The keys a secure receiver opens frames with. Replaced as a whole on a
/// reload ([`KeyHandle::replace`]); the receiver picks the new ring up at
/// its next datagram, without touching its replay state.
#[derive(Debug)]
pub struct KeyRing {
    shared: Vec<FrameCipher>,
    master: Option<varta_proto::Key>,
}

impl KeyRing {
    pub fn new(shared: &[varta_proto::Key], master: Option<varta_proto::Key>) -> KeyRing {
        KeyRing { shared: shared.iter().map(FrameCipher::new).collect(), master }
    }

    /// A fresh per-pid cipher cache for the master key, if any (the copy of
    /// the key is zeroized with the cache).
    fn master_ciphers(&self) -> Option<MasterCiphers> {
        self.master
            .as_ref()
            .map(|k| MasterCiphers::new(MasterKey::new(varta_proto::Key::from_bytes(*k.expose_bytes()))))
    }
}

/// Swaps a running secure receiver's keys (key rotation without a restart).
#[derive(Debug, Clone)]
pub struct KeyHandle(Arc<ArcSwap<KeyRing>>);

impl KeyHandle {
    pub fn replace(&self, ring: KeyRing) {
        self.0.store(Arc::new(ring));
    }
}

#[derive(Debug)]
pub(crate) struct SecureReceiver {
    pub(crate) socket: BoundUdp,
    keys: Arc<ArcSwap<KeyRing>>,
    /// The ring `master` was derived from (a new ring means new agent keys).
    ring: Arc<KeyRing>,
    pub(crate) master: Option<MasterCiphers>,
    pub(crate) replay: ReplayTable,
    pub(crate) max_senders: usize,
}

impl SecureReceiver {
    pub(crate) fn new(
        socket: BoundUdp,
        ring: KeyRing,
        replay: ReplayTable,
        max_senders: usize,
    ) -> SecureReceiver {
        let ring = Arc::new(ring);
        let master = ring.master_ciphers();
        SecureReceiver {
            socket,
            keys: Arc::new(ArcSwap::new(Arc::clone(&ring))),
            ring,
            master,
            replay,
            max_senders,
        }
    }

    pub(crate) fn key_handle(&self) -> KeyHandle {
        KeyHandle(Arc::clone(&self.keys))
    }

    /// Picks up a replaced key ring (one pointer comparison per datagram).
    fn refresh_keys(&mut self) {
        let current = self.keys.load();
        if !Arc::ptr_eq(&current, &self.ring) {
            self.ring = Arc::clone(&current);
            self.master = self.ring.master_ciphers();
            tracing::info!(
                shared_keys = self.ring.shared.len(),
                master_key = self.ring.master.is_some(),
                "secure receiver: new keys in effect for new frames"
            );
        }
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.socket.fd()
    }

    pub(crate) fn describe(&self) -> String {
        let mut keys = Vec::new();
        if !self.ring.shared.is_empty() {
            keys.push(format!("{} shared key(s)", self.ring.shared.len()));
        }
        if self.master.is_some() {
            keys.push("master key".to_owned());
        }
        format!(
            "secure_udp {} ({}, max_senders {}, rcvbuf {})",
            self.socket.local,
            keys.join(" + "),
            self.max_senders,
            self.socket.granted
        )
    }

    pub(crate) fn classify(&mut self, d: &Datagram<'_>, now: u64, stats: &ReceiverStats) -> Arrival {
        self.refresh_keys();
        let ip = source_of(d);
        let source = Source::Ip(ip);
        let shared = &self.ring.shared;
        let guess = if shared.is_empty() { Transport::SecureMaster } else { Transport::SecureShared };
        if d.truncated() {
            return refused(Refusal::Truncated, guess, source, 0, now);
        }
        let (transport, opened) = match (d.len, &mut self.master) {
            (SHARED_FRAME_LEN, _) if !shared.is_empty() => {
                (Transport::SecureShared, open_shared_any(shared, d.bytes).map(|(_, iv, frame)| (iv, frame)))
            }
            (MASTER_FRAME_LEN, Some(m)) => (Transport::SecureMaster, m.open(d.bytes)),
            _ => return refused(Refusal::Decode(DecodeErrorKind::BadLength), guess, source, 0, now),
        };
        // The cleartext pid of a master frame is a claim worth reporting; a
        // shared frame has none until it opens.
        let claimed =
            if transport == Transport::SecureMaster { master_frame_pid(d.bytes).unwrap_or(0) } else { 0 };
        let (iv, frame) = match opened {
            Ok(x) => x,
            Err(e) => {
                let refusal = match e {
                    OpenError::AuthFailed => Refusal::DecryptFailed,
                    OpenError::PidMismatch { .. } => Refusal::PidMismatch,
                    OpenError::Decode(k) => Refusal::Decode(k.kind()),
                    OpenError::BadLength { .. } => Refusal::Decode(DecodeErrorKind::BadLength),
                };
                return refused(refusal, transport, source, claimed, now);
            }
        };
        let id = SenderId { ip, pid: frame.pid, master: transport == Transport::SecureMaster };
        match self.replay.admit(id, iv, &frame, now) {
            Ok(admitted) => {
                if admitted.restarted {
                    ReceiverStats::add(&stats.sessions_restarted, 1);
                }
                if admitted.evicted > 0 {
                    ReceiverStats::add(&stats.senders_evicted, admitted.evicted as u64);
                }
                Arrival::Beat(Beat { frame, transport, source, host_pid: frame.pid, received_ns: now })
            }
            Err(refusal) => refused(refusal, transport, source, frame.pid, now),
        }
    }
}
