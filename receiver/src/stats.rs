//! Receiver counters. Written only by the receiver thread (Relaxed atomics,
//! single writer), read by anyone holding the `Arc`. Every refusal kind has
//! a counter from the start, at zero, so `absent()` alerts work.
//!
//! Also home of [`RefusalLog`], which turns refusals into at most one warning
//! per kind per 10 s, carrying the count since the last one.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use varta_pipeline::{Instrumented, LogThrottle, Metric, Sample};
use varta_proto::{Refusal, RefusedFrame};

/// Number of distinct refusal kinds (size of [`ReceiverStats::refused`]).
pub const REFUSAL_KINDS: usize = Refusal::COUNT;

/// Counters of one receiver.
#[derive(Debug, Default)]
pub struct ReceiverStats {
    /// Datagrams read from the socket.
    pub datagrams: AtomicU64,
    /// Accepted beats (including ones later dropped because the queue was full).
    pub beats: AtomicU64,
    /// Refusals by kind, indexed by [`Refusal::index`].
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
    /// Secure UDP with `storage`: replay sessions written whole (by the
    /// writer thread; see [`crate::sessions`]).
    pub session_saves: AtomicU64,
    /// … that could not be written (the previous file stays).
    pub session_saves_failed: AtomicU64,
    /// … not taken because the writer was still writing (receiver thread).
    pub session_saves_skipped: AtomicU64,
    /// Size of the last sessions file written.
    pub session_bytes: AtomicU64,
    /// Senders taken back from the sessions file at start.
    pub senders_restored: AtomicU64,
    /// Sessions files not restored (other version, damaged, too large).
    pub session_files_set_aside: AtomicU64,
    /// Whether it keeps sessions (only then are the session metrics reported).
    pub keeps_sessions: std::sync::atomic::AtomicBool,
}

impl ReceiverStats {
    /// Count of one refusal kind.
    pub fn refusal(&self, r: Refusal) -> u64 {
        self.refused[r.index()].load(Relaxed)
    }

    /// `(label, count)` for every refusal kind, zeros included, in index order.
    pub fn refusals(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Refusal::ALL.iter().map(|r| (r.label(), self.refusal(*r)))
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
        Self::add(&self.refused[r.index()], 1);
    }
}

/// The receiver's metrics (see [`ReceiverStats`]'s fields).
pub mod metric {
    use varta_pipeline::Metric;

    pub static DATAGRAMS: Metric =
        Metric::counter("datagrams", "Datagrams read from the socket.").unit("{datagram}");
    pub static BEATS: Metric =
        Metric::counter("beats", "Beats accepted (including ones then dropped on a full queue).")
            .unit("{beat}");
    pub static REFUSED: Metric =
        Metric::labelled("refused", "reason", "Datagrams refused, by reason.").unit("{datagram}");
    pub static QUEUE_FULL_BEATS: Metric =
        Metric::counter("queue_full_beats", "Beats dropped because the processor queue was full.")
            .unit("{beat}");
    pub static QUEUE_FULL_REFUSALS: Metric = Metric::counter(
        "queue_full_refusals",
        "Refusal events dropped because the processor queue was full (still counted in refused).",
    )
    .unit("{datagram}");
    pub static SESSIONS_RESTARTED: Metric =
        Metric::counter("sessions_restarted", "Secure UDP senders that restarted their session.")
            .unit("{session}");
    pub static SENDERS_EVICTED: Metric =
        Metric::counter("senders_evicted", "Idle secure UDP senders evicted from the replay table.")
            .unit("{sender}");
    pub static IO_ERRORS: Metric =
        Metric::counter("io_errors", "Socket errors other than timeouts.").unit("{error}");
    pub static BATCHES: Metric =
        Metric::counter("batches", "Batches handed to the processor queue.").unit("{batch}");
    pub static RECV_BUFFER: Metric =
        Metric::gauge("recv_buffer_bytes", "Socket receive buffer granted by the kernel, in bytes.")
            .unit("By");
    pub static SESSION_SAVES: Metric =
        Metric::counter("session_saves", "Secure UDP with storage: replay sessions written whole.")
            .unit("{file}");
    pub static SESSION_SAVES_FAILED: Metric = Metric::counter(
        "session_saves_failed",
        "Replay sessions that could not be written (disk full, I/O error); the previous file stays.",
    )
    .unit("{file}");
    pub static SESSION_SAVES_SKIPPED: Metric = Metric::counter(
        "session_saves_skipped",
        "Replay session writes not taken because the writer was still writing the previous one.",
    )
    .unit("{file}");
    pub static SESSION_BYTES: Metric =
        Metric::gauge("session_bytes", "Size of the last replay sessions file written.").unit("By");
    pub static SENDERS_RESTORED: Metric =
        Metric::counter("senders_restored", "Secure UDP senders taken back from the sessions file at start.")
            .unit("{sender}");
    pub static SESSION_FILES_SET_ASIDE: Metric = Metric::counter(
        "session_files_set_aside",
        "Sessions files not restored (other version, damaged, too large); the receiver started with none.",
    )
    .unit("{file}");
}

impl Instrumented for ReceiverStats {
    fn samples(&self, out: &mut dyn FnMut(Sample)) {
        use metric::*;
        let plain: [(&'static Metric, &AtomicU64); 9] = [
            (&DATAGRAMS, &self.datagrams),
            (&BEATS, &self.beats),
            (&QUEUE_FULL_BEATS, &self.queue_full_beats),
            (&QUEUE_FULL_REFUSALS, &self.queue_full_refusals),
            (&SESSIONS_RESTARTED, &self.sessions_restarted),
            (&SENDERS_EVICTED, &self.senders_evicted),
            (&IO_ERRORS, &self.io_errors),
            (&BATCHES, &self.batches),
            (&RECV_BUFFER, &self.recv_buffer_granted),
        ];
        for (metric, value) in plain {
            out(Sample::new(metric, value.load(Relaxed)));
        }
        for (label, value) in self.refusals() {
            out(Sample::labelled(&REFUSED, label, value));
        }
        if self.keeps_sessions.load(Relaxed) {
            let sessions: [(&'static Metric, &AtomicU64); 6] = [
                (&SESSION_SAVES, &self.session_saves),
                (&SESSION_SAVES_FAILED, &self.session_saves_failed),
                (&SESSION_SAVES_SKIPPED, &self.session_saves_skipped),
                (&SESSION_BYTES, &self.session_bytes),
                (&SENDERS_RESTORED, &self.senders_restored),
                (&SESSION_FILES_SET_ASIDE, &self.session_files_set_aside),
            ];
            for (metric, value) in sessions {
                out(Sample::new(metric, value.load(Relaxed)));
            }
        }
    }
}

/// Rate-limited refusal warnings (one [`LogThrottle`] per kind), owned by
/// the receiver thread.
#[derive(Debug)]
pub(crate) struct RefusalLog {
    id: String,
    kinds: [LogThrottle; REFUSAL_KINDS],
}

impl RefusalLog {
    pub(crate) fn new(id: &str) -> RefusalLog {
        RefusalLog { id: id.to_owned(), kinds: [LogThrottle::default(); REFUSAL_KINDS] }
    }

    pub(crate) fn note(&mut self, r: &RefusedFrame) {
        if let Some(count) = self.kinds[r.refusal.index()].note(r.received_ns) {
            tracing::warn!(
                receiver = %self.id,
                refusal = r.refusal.label(),
                count,
                last_source = %r.source,
                last_claimed_pid = r.claimed_pid,
                "refused VLP datagrams (at most one warning per kind per 10 s; count is since the last)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_dense_and_labels_unique() {
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let mut labels: Vec<&str> = Refusal::ALL.iter().map(|r| r.label()).collect();
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
