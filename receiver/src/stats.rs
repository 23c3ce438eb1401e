//! Receiver counters. Written only by the receiver thread (Relaxed atomics,
//! single writer), read by anyone holding the `Arc`. Every refusal kind has
//! a counter from the start, at zero, so `absent()` alerts work.
//!
//! Also home of [`RefusalLog`], which turns refusals into at most one warning
//! per kind per [`REFUSAL_LOG_INTERVAL_NS`], carrying the count since the last one.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use varta_proto::frame::DecodeErrorKind;
use varta_proto::{Refusal, RefusedFrame};

/// Number of distinct refusal kinds (size of [`ReceiverStats::refused`]).
pub const REFUSAL_KINDS: usize = DecodeErrorKind::COUNT + 9;

/// Every refusal kind, in [`refusal_index`] order.
pub const ALL_REFUSALS: [Refusal; REFUSAL_KINDS] = [
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

/// Stable index of a refusal kind: decode kinds first (by their own index),
/// then the receiver's refusals in declaration order.
pub const fn refusal_index(r: Refusal) -> usize {
    const D: usize = DecodeErrorKind::COUNT;
    match r {
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

/// Counters of one receiver.
#[derive(Debug, Default)]
pub struct ReceiverStats {
    /// Datagrams read from the socket.
    pub datagrams: AtomicU64,
    /// Accepted beats (including ones later dropped because the queue was full).
    pub beats: AtomicU64,
    /// Refusals by kind, indexed by [`refusal_index`].
    pub refused: [AtomicU64; REFUSAL_KINDS],
    /// Beats dropped because the processor queue was full.
    pub queue_full_beats: AtomicU64,
    /// Refusal events dropped because the processor queue was full (still counted in `refused`).
    pub queue_full_refusals: AtomicU64,
    /// Secure UDP: senders that restarted with a fresh iv_random and a lower nonce.
    pub sessions_restarted: AtomicU64,
    /// Secure UDP: idle senders evicted to make room in the sender table.
    pub senders_evicted: AtomicU64,
    /// Socket errors other than the receive timeout.
    pub io_errors: AtomicU64,
    /// Batches handed to the processor queue.
    pub batches: AtomicU64,
    /// SO_RCVBUF as granted by the kernel (gauge, set at bind).
    pub recv_buffer_granted: AtomicU64,
}

impl ReceiverStats {
    /// Count of one refusal kind.
    pub fn refusal(&self, r: Refusal) -> u64 {
        self.refused[refusal_index(r)].load(Relaxed)
    }

    /// `(label, count)` for every refusal kind, zeros included, in index order.
    pub fn refusals(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        ALL_REFUSALS.iter().map(|r| (r.label(), self.refusal(*r)))
    }

    /// Sum over all refusal kinds.
    pub fn refused_total(&self) -> u64 {
        self.refused.iter().map(|c| c.load(Relaxed)).sum()
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        // Single writer: a load + store is enough and cheaper than fetch_add.
        counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
    }

    pub(crate) fn count_refusal(&self, r: Refusal) {
        Self::add(&self.refused[refusal_index(r)], 1);
    }
}

/// Minimum spacing of refusal warnings of one kind (10 s).
pub const REFUSAL_LOG_INTERVAL_NS: u64 = 10_000_000_000;

/// Rate-limited refusal warnings, owned by the receiver thread.
#[derive(Debug)]
pub(crate) struct RefusalLog {
    id: String,
    last_ns: [Option<u64>; REFUSAL_KINDS],
    since_last: [u64; REFUSAL_KINDS],
}

impl RefusalLog {
    pub(crate) fn new(id: &str) -> RefusalLog {
        RefusalLog { id: id.to_owned(), last_ns: [None; REFUSAL_KINDS], since_last: [0; REFUSAL_KINDS] }
    }

    pub(crate) fn note(&mut self, r: &RefusedFrame) {
        let i = refusal_index(r.refusal);
        self.since_last[i] += 1;
        let due = self.last_ns[i].is_none_or(|t| r.received_ns.saturating_sub(t) >= REFUSAL_LOG_INTERVAL_NS);
        if due {
            tracing::warn!(
                receiver = %self.id,
                refusal = r.refusal.label(),
                count = self.since_last[i],
                last_source = %r.source,
                last_claimed_pid = r.claimed_pid,
                "refused VLP datagrams (at most one warning per kind per 10 s; count is since the last)"
            );
            self.last_ns[i] = Some(r.received_ns);
            self.since_last[i] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_dense_and_labels_unique() {
        for (i, r) in ALL_REFUSALS.iter().enumerate() {
            assert_eq!(refusal_index(*r), i);
        }
        let mut labels: Vec<&str> = ALL_REFUSALS.iter().map(|r| r.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), REFUSAL_KINDS);
        let s = ReceiverStats::default();
        s.count_refusal(Refusal::Replay);
        assert_eq!(s.refusals().count(), REFUSAL_KINDS);
        assert_eq!(s.refusals().find(|(l, _)| *l == "replay"), Some(("replay", 1)));
        assert_eq!(s.refused_total(), 1);
    }
}
