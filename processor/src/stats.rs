//! The processor's counters.
//!
//! Promises: [`ProcessorStats`] is shared through an `Arc`; the processor
//! thread is its only writer (plain relaxed load + store, no read-modify-write
//! contention), any thread may read. Every counter exists from the start at
//! zero, including one per [`Refusal`] label, so exporters can publish every
//! series from the first scrape. [`ProcessorStats::snapshot`] copies all
//! values into a plain [`StatsSnapshot`]; [`StatsSnapshot::samples`] lists
//! them as `(name, label, value)` for metrics views.

use std::sync::atomic::{AtomicU64, Ordering};

use varta_proto::Refusal;

use crate::clock::ClockAnomalyKind;
use crate::event::{EvictionReason, RateLimitReason};

/// Every receiver refusal, in counter-index order.
pub const REFUSALS: [Refusal; Refusal::COUNT] = Refusal::ALL;

/// A counter written by exactly one thread.
#[derive(Debug, Default)]
struct Cell(AtomicU64);

impl Cell {
    #[inline]
    fn add(&self, n: u64) {
        // Single writer: load + store is exact and avoids a locked RMW.
        self.0.store(self.0.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    #[inline]
    fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    #[inline]
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Live counters of one processor.
#[derive(Debug, Default)]
pub struct ProcessorStats {
    beats_accepted: Cell,
    stalls: Cell,
    resumes: Cell,
    agents_tracked: Cell,
    rate_limited: [Cell; 2],
    capacity_exceeded: Cell,
    evicted_stale: Cell,
    evicted_pid_recycled: Cell,
    origin_conflicts: Cell,
    stale_nonces: Cell,
    panics: Cell,
    status_changes: Cell,
    refused: [Cell; REFUSALS.len()],
    clock_backwards: Cell,
    clock_jumps: Cell,
    incarnations_restarted: Cell,
    batches: Cell,
}

/// A copy of every counter at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub beats_accepted: u64,
    pub stalls: u64,
    pub resumes: u64,
    /// Gauge: agents currently tracked.
    pub agents_tracked: u64,
    pub rate_limited_per_agent: u64,
    pub rate_limited_global: u64,
    pub capacity_exceeded: u64,
    pub evicted_stale: u64,
    pub evicted_pid_recycled: u64,
    pub origin_conflicts: u64,
    pub stale_nonces: u64,
    pub panics: u64,
    pub status_changes: u64,
    /// Indexed like [`REFUSALS`].
    pub refused: [u64; REFUSALS.len()],
    pub clock_backwards: u64,
    pub clock_jumps: u64,
    pub incarnations_restarted: u64,
    pub batches: u64,
}

/// One metric value: `name{label.0=label.1} value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub name: &'static str,
    pub label: Option<(&'static str, &'static str)>,
    pub value: u64,
    /// Gauges go up and down; everything else is a monotonic counter.
    pub is_gauge: bool,
}

impl ProcessorStats {
    pub fn new() -> ProcessorStats {
        ProcessorStats::default()
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let mut refused = [0; REFUSALS.len()];
        for (out, cell) in refused.iter_mut().zip(&self.refused) {
            *out = cell.get();
        }
        StatsSnapshot {
            beats_accepted: self.beats_accepted.get(),
            stalls: self.stalls.get(),
            resumes: self.resumes.get(),
            agents_tracked: self.agents_tracked.get(),
            rate_limited_per_agent: self.rate_limited[0].get(),
            rate_limited_global: self.rate_limited[1].get(),
            capacity_exceeded: self.capacity_exceeded.get(),
            evicted_stale: self.evicted_stale.get(),
            evicted_pid_recycled: self.evicted_pid_recycled.get(),
            origin_conflicts: self.origin_conflicts.get(),
            stale_nonces: self.stale_nonces.get(),
            panics: self.panics.get(),
            status_changes: self.status_changes.get(),
            refused,
            clock_backwards: self.clock_backwards.get(),
            clock_jumps: self.clock_jumps.get(),
            incarnations_restarted: self.incarnations_restarted.get(),
            batches: self.batches.get(),
        }
    }

    pub fn beats_accepted(&self) -> u64 {
        self.beats_accepted.get()
    }
    pub fn stalls(&self) -> u64 {
        self.stalls.get()
    }
    pub fn agents_tracked(&self) -> u64 {
        self.agents_tracked.get()
    }
    pub fn refused(&self, refusal: Refusal) -> u64 {
        self.refused[refusal.index()].get()
    }

    // Writers (processor thread only).
    pub(crate) fn beat_accepted(&self) {
        self.beats_accepted.add(1);
    }
    pub(crate) fn stall(&self) {
        self.stalls.add(1);
    }
    pub(crate) fn resume(&self) {
        self.resumes.add(1);
    }
    pub(crate) fn set_agents_tracked(&self, n: usize) {
        self.agents_tracked.set(n as u64);
    }
    pub(crate) fn rate_limited(&self, reason: RateLimitReason) {
        self.rate_limited[reason as usize].add(1);
    }
    pub(crate) fn capacity_exceeded(&self) {
        self.capacity_exceeded.add(1);
    }
    pub(crate) fn evicted(&self, reason: EvictionReason) {
        match reason {
            EvictionReason::Stale => self.evicted_stale.add(1),
            EvictionReason::PidRecycled => self.evicted_pid_recycled.add(1),
            EvictionReason::Restarted => self.incarnations_restarted.add(1),
        }
    }
    pub(crate) fn origin_conflict(&self) {
        self.origin_conflicts.add(1);
    }
    pub(crate) fn stale_nonce(&self) {
        self.stale_nonces.add(1);
    }
    pub(crate) fn panic(&self) {
        self.panics.add(1);
    }
    pub(crate) fn status_change(&self) {
        self.status_changes.add(1);
    }
    pub(crate) fn refusal(&self, refusal: Refusal) {
        self.refused[refusal.index()].add(1);
    }
    pub(crate) fn clock_anomaly(&self, kind: ClockAnomalyKind) {
        match kind {
            ClockAnomalyKind::Backwards => self.clock_backwards.add(1),
            ClockAnomalyKind::ForwardJump => self.clock_jumps.add(1),
        }
    }
    pub(crate) fn batch(&self) {
        self.batches.add(1);
    }
}

impl StatsSnapshot {
    /// Every value as a metric sample (names without prefix; exporters add
    /// theirs). Labelled families list every label value, zeros included.
    pub fn samples(&self) -> impl Iterator<Item = Sample> + '_ {
        let counter = |name, value| Sample { name, label: None, value, is_gauge: false };
        let labelled =
            |name, key, label, value| Sample { name, label: Some((key, label)), value, is_gauge: false };
        let plain = [
            counter("beats_accepted", self.beats_accepted),
            counter("stalls", self.stalls),
            counter("resumes", self.resumes),
            Sample { name: "agents_tracked", label: None, value: self.agents_tracked, is_gauge: true },
            labelled(
                "rate_limited",
                "reason",
                RateLimitReason::PerAgent.label(),
                self.rate_limited_per_agent,
            ),
            labelled("rate_limited", "reason", RateLimitReason::Global.label(), self.rate_limited_global),
            counter("capacity_exceeded", self.capacity_exceeded),
            labelled("evicted", "reason", EvictionReason::Stale.label(), self.evicted_stale),
            labelled("evicted", "reason", EvictionReason::PidRecycled.label(), self.evicted_pid_recycled),
            counter("origin_conflicts", self.origin_conflicts),
            counter("stale_nonces", self.stale_nonces),
            counter("panics", self.panics),
            counter("status_changes", self.status_changes),
            counter("clock_backwards", self.clock_backwards),
            counter("clock_jumps", self.clock_jumps),
            counter("incarnations_restarted", self.incarnations_restarted),
            counter("batches", self.batches),
        ];
        let refused = REFUSALS
            .iter()
            .zip(self.refused)
            .map(move |(r, value)| labelled("refused", "reason", r.label(), value));
        plain.into_iter().chain(refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_indices_are_a_bijection() {
        for (i, r) in REFUSALS.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
        let mut labels: Vec<_> = REFUSALS.iter().map(|r| r.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), REFUSALS.len());
    }

    #[test]
    fn every_series_present_at_zero() {
        let stats = ProcessorStats::new();
        let samples: Vec<_> = stats.snapshot().samples().collect();
        assert_eq!(samples.len(), 17 + REFUSALS.len());
        assert!(samples.iter().all(|s| s.value == 0));
        stats.refusal(Refusal::Replay);
        stats.rate_limited(RateLimitReason::Global);
        let snap = stats.snapshot();
        assert_eq!(stats.refused(Refusal::Replay), 1);
        assert_eq!(snap.rate_limited_global, 1);
        assert!(
            snap.samples()
                .any(|s| s.name == "refused" && s.label == Some(("reason", "replay")) && s.value == 1)
        );
    }
}
