//! The meeting point of receiver and processor: a decoded beat plus how its
//! sender was authenticated. Receivers produce [`Beat`]s; the processor
//! consumes them. Neither crate imports the other.

use std::net::IpAddr;

use crate::frame::{DecodeErrorKind, Frame};

/// The transport a beat arrived on, ordered from weakest to strongest
/// sender authentication (the order used for origin pinning: an agent first
/// seen on a stronger transport is never taken over by a weaker one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Transport {
    /// Plain UDP: any host can claim any pid.
    Udp = 0,
    /// Secure UDP with a key shared by all agents.
    SecureShared = 1,
    /// Secure UDP with a per-pid key derived from a master key.
    SecureMaster = 2,
    /// Unix datagram socket with per-datagram kernel credentials.
    Uds = 3,
}

impl Transport {
    pub const ALL: [Transport; 4] =
        [Transport::Udp, Transport::SecureShared, Transport::SecureMaster, Transport::Uds];

    /// Label for logs, events and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::SecureShared => "secure_udp_shared_key",
            Transport::SecureMaster => "secure_udp_master_key",
            Transport::Uds => "uds",
        }
    }

    /// Whether the sender's pid is authenticated (kernel credentials or a
    /// per-pid key). Shared keys prove membership, not which pid sent.
    pub const fn authenticates_pid(self) -> bool {
        matches!(self, Transport::Uds | Transport::SecureMaster)
    }
}

/// Where an agent lives: this host (UDS, kernel-attested) or a network
/// source address. Part of agent identity, so the same pid on two hosts is
/// two agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Local,
    Ip(IpAddr),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Local => f.write_str("local"),
            Source::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// One accepted, authenticated frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    pub frame: Frame,
    pub transport: Transport,
    pub source: Source,
    /// The pid as the collector's kernel sees it. Equal to `frame.pid`
    /// except for UDS senders in another pid namespace (when allowed), where
    /// the kernel translates the credentials into our namespace.
    pub host_pid: u32,
    /// Observer clock (ns) when the datagram was received.
    pub received_ns: u64,
}

/// Why a receiver refused a datagram. Every refusal is counted by kind and
/// forwarded to the processor as a [`RefusedFrame`] so it shows up in the
/// event stream; nothing is dropped silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Not a valid base frame (includes wrong length on plain transports).
    Decode(crate::frame::DecodeErrorKind),
    /// Kernel credentials disagree with the frame pid (UDS).
    AuthFailed,
    /// Sender uid differs from the collector's and is not allowed (UDS).
    UidMismatch,
    /// Sender lives in another pid namespace and that is not allowed (UDS).
    NamespaceMismatch,
    /// Frame pid above `/proc/sys/kernel/pid_max` (UDS).
    PidAboveMax,
    /// No configured key opens the secure frame (tag failure).
    DecryptFailed,
    /// Master-key frame whose sealed pid differs from its wire pid.
    PidMismatch,
    /// Secure frame (or its nonce) already seen for this sender.
    Replay,
    /// Secure-UDP sender table full of live senders; refused (fail closed).
    SenderTableFull,
    /// Datagram longer than the transport's frame (cut by the kernel).
    Truncated,
}

impl Refusal {
    /// Number of refusal kinds (size of a per-kind counter array).
    pub const COUNT: usize = DecodeErrorKind::COUNT + 9;

    /// Every refusal kind, in [`Refusal::index`] order.
    pub const ALL: [Refusal; Refusal::COUNT] = [
        Refusal::Decode(DecodeErrorKind::BadLength),
        Refusal::Decode(DecodeErrorKind::BadMagic),
        Refusal::Decode(DecodeErrorKind::BadVersion),
        Refusal::Decode(DecodeErrorKind::BadCrc),
        Refusal::Decode(DecodeErrorKind::BadStatus),
        Refusal::Decode(DecodeErrorKind::StallOnWire),
        Refusal::Decode(DecodeErrorKind::BadPid),
        Refusal::Decode(DecodeErrorKind::BadTimestamp),
        Refusal::Decode(DecodeErrorKind::BadNonce),
        Refusal::AuthFailed,
        Refusal::UidMismatch,
        Refusal::NamespaceMismatch,
        Refusal::PidAboveMax,
        Refusal::DecryptFailed,
        Refusal::PidMismatch,
        Refusal::Replay,
        Refusal::SenderTableFull,
        Refusal::Truncated,
    ];

    /// Stable counter index: decode kinds first (by their own index), then
    /// the other refusals in declaration order.
    pub const fn index(self) -> usize {
        const D: usize = DecodeErrorKind::COUNT;
        match self {
            Refusal::Decode(kind) => kind as usize,
            Refusal::AuthFailed => D,
            Refusal::UidMismatch => D + 1,
            Refusal::NamespaceMismatch => D + 2,
            Refusal::PidAboveMax => D + 3,
            Refusal::DecryptFailed => D + 4,
            Refusal::PidMismatch => D + 5,
            Refusal::Replay => D + 6,
            Refusal::SenderTableFull => D + 7,
            Refusal::Truncated => D + 8,
        }
    }

    /// Stable snake_case label for metrics and event files.
    pub const fn label(self) -> &'static str {
        match self {
            Refusal::Decode(kind) => kind.label(),
            Refusal::AuthFailed => "auth_failed",
            Refusal::UidMismatch => "uid_mismatch",
            Refusal::NamespaceMismatch => "namespace_mismatch",
            Refusal::PidAboveMax => "pid_above_max",
            Refusal::DecryptFailed => "decrypt_failed",
            Refusal::PidMismatch => "pid_mismatch",
            Refusal::Replay => "replay",
            Refusal::SenderTableFull => "sender_table_full",
            Refusal::Truncated => "truncated",
        }
    }
}

/// A refused datagram, with whatever could be learned about its claimed sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusedFrame {
    pub refusal: Refusal,
    pub transport: Transport,
    pub source: Source,
    /// The pid the frame claimed, or 0 when it could not be read.
    pub claimed_pid: u32,
    /// Observer clock (CLOCK_MONOTONIC ns) at receipt.
    pub received_ns: u64,
}

/// One item on the receiver → processor queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    Beat(Beat),
    Refused(RefusedFrame),
}

/// Items per [`Batch`]: one batched receive (`recvmmsg`) fills at most one batch.
pub const BATCH_CAPACITY: usize = 64;

/// A fixed-size batch of arrivals, moved by value through the bounded
/// receiver → processor queue so the hot path never allocates.
#[derive(Debug, Clone)]
pub struct Batch {
    len: usize,
    items: [Arrival; BATCH_CAPACITY],
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    const FILLER: Arrival = Arrival::Refused(RefusedFrame {
        refusal: Refusal::Truncated,
        transport: Transport::Udp,
        source: Source::Local,
        claimed_pid: 0,
        received_ns: 0,
    });

    pub const fn new() -> Batch {
        Batch { len: 0, items: [Self::FILLER; BATCH_CAPACITY] }
    }

    /// Appends an arrival; returns it back when the batch is full.
    pub fn push(&mut self, item: Arrival) -> Result<(), Arrival> {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = item;
                self.len += 1;
                Ok(())
            }
            None => Err(item),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.len == BATCH_CAPACITY
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Number of `Arrival::Beat` items (for drop accounting).
    pub fn beats(&self) -> usize {
        self.as_slice().iter().filter(|a| matches!(a, Arrival::Beat(_))).count()
    }

    pub fn as_slice(&self) -> &[Arrival] {
        &self.items[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Status;

    #[test]
    fn batch_fills_and_reports_full() {
        let beat = Arrival::Beat(Beat {
            frame: Frame::new(Status::Ok, 9, 1, 1, 0),
            transport: Transport::Uds,
            source: Source::Local,
            host_pid: 9,
            received_ns: 5,
        });
        let mut b = Batch::new();
        for _ in 0..BATCH_CAPACITY {
            assert!(b.push(beat).is_ok());
        }
        assert!(b.is_full());
        assert_eq!(b.push(beat), Err(beat));
        assert_eq!(b.beats(), BATCH_CAPACITY);
        b.clear();
        assert!(b.is_empty() && b.as_slice().is_empty());
        assert!(Transport::Uds > Transport::SecureMaster && Transport::SecureShared > Transport::Udp);
    }

    #[test]
    fn refusal_indexes_are_dense_and_labels_unique() {
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
        let mut labels: Vec<&str> = Refusal::ALL.iter().map(|r| r.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Refusal::COUNT);
    }
}
