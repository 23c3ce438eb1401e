//! Bounded output under attack: a flood of refusals must not fill a disk
//! or a log. Exporters that write one line per event (file, debug) pass
//! *bulk* events — refused datagrams, rate-limited beats, stale nonces,
//! origin conflicts, capacity refusals — through a [`BulkBudget`]: up to
//! `per_second` of them are written as usual in each one-second window;
//! beyond that they are counted per (kind, source) and written as one
//! summary line per pair when the window is over. Incident events (stall,
//! diagnosis, recovery, resume, status, panic, eviction) and beats are never
//! aggregated; counters (the metrics) see every event regardless.
//!
//! Promises: per window at most `per_second` bulk lines plus one summary
//! per distinct (kind, source) — at most [`MAX_KEYS`], beyond which pairs
//! fold into one `other` summary. Summaries are written when the first
//! event after the window arrives, or when the exporter stops.

use varta_processor::{Event, EventKind};
use varta_proto::Source;

/// Distinct (kind, source) pairs tracked per window.
pub const MAX_KEYS: usize = 64;
const WINDOW_NS: u64 = 1_000_000_000;

/// Whether an event is bulk (may be aggregated) and its kind label.
pub fn bulk_kind(kind: &EventKind) -> Option<&'static str> {
    match kind {
        EventKind::Refused(r) => Some(r.refusal.label()),
        EventKind::RateLimited { reason } => Some(reason.label()),
        EventKind::StaleNonce { .. } => Some("stale_nonce"),
        EventKind::OriginConflict { .. } => Some("origin_conflict"),
        EventKind::CapacityExceeded { .. } => Some("capacity"),
        _ => None,
    }
}

/// The source an event concerns (a refusal's sender, else its agent's).
fn source(ev: &Event) -> Source {
    match &ev.kind {
        EventKind::Refused(r) => r.source,
        _ => ev.agent.map_or(Source::Local, |a| a.id.source),
    }
}

/// One summary: `count` bulk events of `kind` from `source` were not
/// written one by one in the window that started at `window_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub window_ns: u64,
    pub kind: &'static str,
    /// `None` for the `other` fold-all pair.
    pub source: Option<Source>,
    pub count: u64,
}

/// What to do with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Write it as usual.
    Write,
    /// Counted into a summary; do not write it.
    Aggregated,
}

/// The per-exporter budget. See the module docs.
#[derive(Debug)]
pub struct BulkBudget {
    per_second: u64,
    window_ns: u64,
    used: u64,
    pending: Vec<Summary>,
}

impl BulkBudget {
    pub fn new(per_second: u64) -> BulkBudget {
        BulkBudget { per_second, window_ns: 0, used: 0, pending: Vec::new() }
    }

    /// Decides for `ev`; first hands over the summaries of a window that is
    /// over (`flush`).
    pub fn admit(&mut self, ev: &Event, flush: &mut dyn FnMut(&Summary)) -> Admit {
        if ev.at_ns >= self.window_ns.saturating_add(WINDOW_NS) {
            self.finish(flush);
            self.window_ns = ev.at_ns;
            self.used = 0;
        }
        let Some(kind) = bulk_kind(&ev.kind) else { return Admit::Write };
        if self.used < self.per_second {
            self.used += 1;
            return Admit::Write;
        }
        let src = source(ev);
        let key = (kind, Some(src));
        if let Some(s) = self.pending.iter_mut().find(|s| (s.kind, s.source) == key) {
            s.count += 1;
        } else if self.pending.len() < MAX_KEYS {
            self.pending.push(Summary { window_ns: self.window_ns, kind, source: Some(src), count: 1 });
        } else if let Some(s) = self.pending.iter_mut().find(|s| s.source.is_none()) {
            s.count += 1;
        } else {
            // Make room for the fold-all pair by folding the last one into it.
            let last = self.pending.pop().map_or(0, |s| s.count);
            self.pending.push(Summary {
                window_ns: self.window_ns,
                kind: "other",
                source: None,
                count: last + 1,
            });
        }
        Admit::Aggregated
    }

    /// Hands over every pending summary (window over, or shutdown).
    pub fn finish(&mut self, flush: &mut dyn FnMut(&Summary)) {
        for s in self.pending.drain(..) {
            flush(&s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use varta_proto::{DecodeErrorKind, Refusal, RefusedFrame, Transport};

    fn junk(at_ns: u64, host: u8) -> Event {
        let source = Source::Ip(std::net::IpAddr::from([10, 0, 0, host]));
        Event {
            at_ns,
            agent: None,
            kind: EventKind::Refused(RefusedFrame {
                refusal: Refusal::Decode(DecodeErrorKind::BadMagic),
                transport: Transport::Udp,
                source,
                claimed_pid: 0,
                received_ns: at_ns,
            }),
        }
    }

    #[test]
    fn budget_then_one_summary_per_kind_and_source_per_window() {
        let mut b = BulkBudget::new(3);
        let mut summaries = Vec::new();
        let mut admitted = 0;
        for i in 0..10 {
            if b.admit(&junk(1_000 + i, (i % 2) as u8), &mut |s| summaries.push(*s)) == Admit::Write {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 3);
        assert!(summaries.is_empty(), "the window is not over yet");
        // The next window: its first event flushes the last window's summaries.
        assert_eq!(b.admit(&junk(2_000_000_000, 0), &mut |s| summaries.push(*s)), Admit::Write);
        let total: u64 = summaries.iter().map(|s| s.count).sum();
        assert_eq!(total, 7, "nothing lost: 3 written + 7 summarised");
        assert_eq!(summaries.len(), 2, "one per source");
    }

    #[test]
    fn keys_are_bounded() {
        let mut b = BulkBudget::new(0);
        for host in 0..=255u8 {
            b.admit(&junk(5, host), &mut |_| {});
        }
        let mut summaries = Vec::new();
        b.finish(&mut |s| summaries.push(*s));
        assert!(summaries.len() <= MAX_KEYS);
        assert_eq!(summaries.iter().map(|s| s.count).sum::<u64>(), 256);
    }
}
