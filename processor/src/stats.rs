//! The processor's counters.
//!
//! Promises: [`ProcessorStats`] is shared through an `Arc`; the processor
//! thread is its only writer (plain relaxed load + store, no read-modify-write
//! contention), any thread may read. Every counter exists from the start at
//! zero, so exporters can publish every series from the first scrape.
//! [`ProcessorStats::snapshot`] copies all values into a plain
//! [`StatsSnapshot`]; the published [`crate::Snapshot`] carries one taken on
//! the processor thread, so its values are a consistent cut.
//! [`StatsSnapshot::samples`] lists them through the shared metric model.
//!
//! Refusals of datagrams are counted by the receiver that refused them (one
//! owner per counter); the processor only forwards them as events.

use std::sync::atomic::{AtomicU64, Ordering};

use varta_pipeline::{Metric, Sample};

use crate::clock::ClockAnomalyKind;
use crate::event::{BlindCause, EvictionReason, RateLimitReason};
use crate::inspect::Cause;
use crate::recovery::{RecoveryOutcome, RecoveryRefusal, RecoveryReport};

/// Upper bounds (inclusive, nanoseconds) of the stall-duration histogram
/// buckets; a last, unbounded bucket follows. Stall duration is the silence
/// of a stall that ended (the agent resumed).
pub const STALL_DURATION_BOUNDS_NS: [u64; 14] = [
    10_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
    300_000_000_000,
    900_000_000_000,
    3_600_000_000_000,
];

/// Buckets of the stall-duration histogram (the bounds plus +Inf).
pub const STALL_DURATION_BUCKETS: usize = STALL_DURATION_BOUNDS_NS.len() + 1;

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
    agents_stalled: Cell,
    rate_limited: [Cell; 3],
    capacity_exceeded: Cell,
    unauthenticated_share_exceeded: Cell,
    evicted_stale: Cell,
    evicted_pid_recycled: Cell,
    origin_conflicts: Cell,
    stale_nonces: Cell,
    panics: Cell,
    status_changes: Cell,
    clock_backwards: Cell,
    clock_jumps: Cell,
    incarnations_restarted: Cell,
    provisional_rules: Cell,
    provisional_fallbacks: Cell,
    blind_windows: [Cell; BlindCause::ALL.len()],
    blind_ns: Cell,
    batches: Cell,
    stall_duration: [Cell; STALL_DURATION_BUCKETS],
    stall_duration_sum_ns: Cell,
    stall_causes: [Cell; Cause::COUNT],
    recoveries_started: Cell,
    recovery_outcomes: [Cell; RecoveryOutcome::FINAL.len()],
    recovery_refused: [Cell; RecoveryRefusal::ALL.len()],
    recovery_duration: [Cell; STALL_DURATION_BUCKETS],
    recovery_duration_sum_ns: Cell,
}

/// The stall-duration histogram: per-bucket counts (not cumulative),
/// indexed like [`STALL_DURATION_BOUNDS_NS`] plus a last +Inf bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StallDurations {
    pub buckets: [u64; STALL_DURATION_BUCKETS],
    pub sum_ns: u64,
}

impl StallDurations {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// A copy of every counter at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub beats_accepted: u64,
    pub stalls: u64,
    pub resumes: u64,
    /// Gauge: agents currently tracked.
    pub agents_tracked: u64,
    /// Gauge: agents currently stalled.
    pub agents_stalled: u64,
    pub rate_limited_per_agent: u64,
    pub rate_limited_global: u64,
    pub rate_limited_unauthenticated_share: u64,
    pub capacity_exceeded: u64,
    /// Of those, plain-UDP agents over their share of the tracker.
    pub unauthenticated_share_exceeded: u64,
    pub evicted_stale: u64,
    pub evicted_pid_recycled: u64,
    pub origin_conflicts: u64,
    pub stale_nonces: u64,
    pub panics: u64,
    pub status_changes: u64,
    pub clock_backwards: u64,
    pub clock_jumps: u64,
    pub incarnations_restarted: u64,
    /// New agents armed at the longest rule they may end up under while
    /// their attributes resolve.
    pub provisional_rules: u64,
    /// Of those, agents whose attributes did not resolve (or not in time):
    /// they fell back to the rule known without attributes.
    pub provisional_fallbacks: u64,
    /// Blind windows, indexed like [`BlindCause::ALL`].
    pub blind_windows: [u64; BlindCause::ALL.len()],
    /// Their total length, nanoseconds.
    pub blind_ns: u64,
    pub batches: u64,
    pub stall_durations: StallDurations,
    /// Diagnosed stalls by cause, indexed like [`Cause::ALL`].
    pub stall_causes: [u64; Cause::COUNT],
    pub recoveries_started: u64,
    /// Finished recoveries, indexed like [`RecoveryOutcome::FINAL`].
    pub recovery_outcomes: [u64; RecoveryOutcome::FINAL.len()],
    /// Refused recoveries, indexed like [`RecoveryRefusal::ALL`].
    pub recovery_refused: [u64; RecoveryRefusal::ALL.len()],
    /// Durations of finished recovery commands (same buckets as stalls).
    pub recovery_durations: StallDurations,
}

/// The processor's metrics (see [`StatsSnapshot::samples`]).
pub mod metric {
    use varta_pipeline::Metric;

    pub static BEATS_ACCEPTED: Metric =
        Metric::counter("beats_accepted", "Beats accepted by the tracker.").unit("{beat}");
    pub static STALLS: Metric =
        Metric::counter("stalls", "Stalls detected (an agent silent past the threshold).").unit("{stall}");
    pub static RESUMES: Metric =
        Metric::counter("resumes", "Stalled agents that beat again.").unit("{resume}");
    pub static AGENTS_TRACKED: Metric =
        Metric::gauge("agents_tracked", "Agents currently tracked.").unit("{agent}");
    pub static AGENTS_STALLED: Metric =
        Metric::gauge("agents_stalled", "Tracked agents currently stalled.").unit("{agent}");
    pub static RATE_LIMITED: Metric =
        Metric::labelled("rate_limited", "reason", "Beats refused by the ratelimit processor, by limit.")
            .unit("{beat}");
    pub static UNAUTHENTICATED_SHARE_EXCEEDED: Metric = Metric::counter(
        "unauthenticated_share_exceeded",
        "New plain-UDP agents refused because they had taken their share of the tracker (attested agents keep the rest).",
    ).unit("{beat}");
    pub static CAPACITY_EXCEEDED: Metric = Metric::counter(
        "capacity_exceeded",
        "New agents refused because the tracker was full of live agents.",
    )
    .unit("{beat}");
    pub static EVICTED: Metric =
        Metric::labelled("evicted", "reason", "Agents whose state was dropped, by reason.").unit("{agent}");
    pub static ORIGIN_CONFLICTS: Metric = Metric::counter(
        "origin_conflicts",
        "Beats refused for arriving over a weaker transport than the agent's pinned one.",
    )
    .unit("{beat}");
    pub static STALE_NONCES: Metric = Metric::counter(
        "stale_nonces",
        "Beats whose nonce did not advance (UDS: dropped; network: kept as liveness only).",
    )
    .unit("{beat}");
    pub static PANICS: Metric =
        Metric::counter("panics", "Terminal (panic) frames accepted.").unit("{panic}");
    pub static STATUS_CHANGES: Metric =
        Metric::counter("status_changes", "Changes of the status agents report.").unit("{change}");
    pub static CLOCK_BACKWARDS: Metric =
        Metric::counter("clock_backwards", "Clock readings below the previous one (clamped).").unit("{step}");
    pub static CLOCK_JUMPS: Metric = Metric::counter(
        "clock_jumps",
        "Forward clock jumps past an expected wake-up (suspend or a wedged loop).",
    )
    .unit("{jump}");
    pub static INCARNATIONS_RESTARTED: Metric =
        Metric::counter("incarnations_restarted", "Network agents that restarted under the same pid.")
            .unit("{agent}");
    pub static PROVISIONAL_RULES: Metric = Metric::counter(
        "provisional_rules",
        "New agents armed at the longest threshold rule they may match while the resolver reads their attributes.",
    ).unit("{agent}");
    pub static PROVISIONAL_FALLBACKS: Metric = Metric::counter(
        "provisional_fallbacks",
        "Provisionally armed agents whose attributes did not resolve in time (the rule known without them applies).",
    ).unit("{agent}");
    pub static BLIND_WINDOWS: Metric = Metric::labelled(
        "blind_windows",
        "cause",
        "Times the collector could not listen (stopped, suspend, reload); agents got a full threshold after each.",
    ).unit("{window}");
    pub static BLIND_SECONDS: Metric = Metric::counter(
        "blind_seconds",
        "Time the collector could not listen (blind windows, in all), whole seconds of the running total.",
    )
    .unit("s");
    pub static BATCHES: Metric = Metric::counter("batches", "Batches handled.").unit("{batch}");
    pub static RECOVERIES_STARTED: Metric =
        Metric::counter("recoveries_started", "Recovery commands started.").unit("{recovery}");
    pub static RECOVERY_OUTCOMES: Metric = Metric::labelled(
        "recovery_outcomes",
        "outcome",
        "Recoveries by final outcome (succeeded, failed, timed_out, spawn_failed, skipped).",
    )
    .unit("{recovery}");
    pub static RECOVERY_REFUSED: Metric =
        Metric::labelled("recovery_refused", "reason", "Stalls recovery refused to act on, by reason.")
            .unit("{recovery}");
    pub static STALL_CAUSES: Metric = Metric::labelled(
        "stall_causes",
        "cause",
        "Diagnosed stalls by cause (exited, zombie, stopped, spinning, blocked_io, waiting).",
    )
    .unit("{stall}");
}

impl ProcessorStats {
    pub fn new() -> ProcessorStats {
        ProcessorStats::default()
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let mut stall_durations =
            StallDurations { sum_ns: self.stall_duration_sum_ns.get(), ..Default::default() };
        for (out, cell) in stall_durations.buckets.iter_mut().zip(&self.stall_duration) {
            *out = cell.get();
        }
        StatsSnapshot {
            beats_accepted: self.beats_accepted.get(),
            stalls: self.stalls.get(),
            resumes: self.resumes.get(),
            agents_tracked: self.agents_tracked.get(),
            agents_stalled: self.agents_stalled.get(),
            rate_limited_per_agent: self.rate_limited[0].get(),
            rate_limited_global: self.rate_limited[1].get(),
            rate_limited_unauthenticated_share: self.rate_limited[2].get(),
            capacity_exceeded: self.capacity_exceeded.get(),
            unauthenticated_share_exceeded: self.unauthenticated_share_exceeded.get(),
            evicted_stale: self.evicted_stale.get(),
            evicted_pid_recycled: self.evicted_pid_recycled.get(),
            origin_conflicts: self.origin_conflicts.get(),
            stale_nonces: self.stale_nonces.get(),
            panics: self.panics.get(),
            status_changes: self.status_changes.get(),
            clock_backwards: self.clock_backwards.get(),
            clock_jumps: self.clock_jumps.get(),
            incarnations_restarted: self.incarnations_restarted.get(),
            provisional_rules: self.provisional_rules.get(),
            provisional_fallbacks: self.provisional_fallbacks.get(),
            blind_windows: std::array::from_fn(|i| self.blind_windows[i].get()),
            blind_ns: self.blind_ns.get(),
            batches: self.batches.get(),
            stall_durations,
            stall_causes: std::array::from_fn(|i| self.stall_causes[i].get()),
            recoveries_started: self.recoveries_started.get(),
            recovery_outcomes: std::array::from_fn(|i| self.recovery_outcomes[i].get()),
            recovery_refused: std::array::from_fn(|i| self.recovery_refused[i].get()),
            recovery_durations: StallDurations {
                buckets: std::array::from_fn(|i| self.recovery_duration[i].get()),
                sum_ns: self.recovery_duration_sum_ns.get(),
            },
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

    // Writers (processor thread only).
    pub(crate) fn beat_accepted(&self) {
        self.beats_accepted.add(1);
    }
    pub(crate) fn stall(&self) {
        self.stalls.add(1);
    }
    pub(crate) fn resume(&self, silence_ns: u64) {
        self.resumes.add(1);
        let bucket = STALL_DURATION_BOUNDS_NS.partition_point(|&bound| bound < silence_ns);
        self.stall_duration[bucket].add(1);
        self.stall_duration_sum_ns.add(silence_ns);
    }
    pub(crate) fn set_agents(&self, tracked: usize, stalled: usize) {
        self.agents_tracked.set(tracked as u64);
        self.agents_stalled.set(stalled as u64);
    }
    pub(crate) fn rate_limited(&self, reason: RateLimitReason) {
        self.rate_limited[reason as usize].add(1);
    }
    pub(crate) fn capacity_exceeded(&self) {
        self.capacity_exceeded.add(1);
    }
    pub(crate) fn unauthenticated_share_exceeded(&self) {
        self.unauthenticated_share_exceeded.add(1);
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
    pub(crate) fn clock_anomaly(&self, kind: ClockAnomalyKind) {
        match kind {
            ClockAnomalyKind::Backwards => self.clock_backwards.add(1),
            ClockAnomalyKind::ForwardJump => self.clock_jumps.add(1),
        }
    }
    pub(crate) fn diagnosed(&self, cause: Cause) {
        self.stall_causes[cause as usize].add(1);
    }
    pub(crate) fn recovery(&self, r: &RecoveryReport) {
        match r.outcome {
            RecoveryOutcome::Started => self.recoveries_started.add(1),
            RecoveryOutcome::Refused(why) => {
                if let Some(i) = RecoveryRefusal::ALL.iter().position(|x| *x == why) {
                    self.recovery_refused[i].add(1);
                }
            }
            outcome => {
                if let Some(i) = RecoveryOutcome::FINAL.iter().position(|x| *x == outcome) {
                    self.recovery_outcomes[i].add(1);
                }
                if outcome != RecoveryOutcome::Skipped {
                    let bucket = STALL_DURATION_BOUNDS_NS.partition_point(|&b| b < r.duration_ns);
                    self.recovery_duration[bucket].add(1);
                    self.recovery_duration_sum_ns.add(r.duration_ns);
                }
            }
        }
    }
    pub(crate) fn provisional_rule(&self) {
        self.provisional_rules.add(1);
    }
    pub(crate) fn provisional_fallback(&self) {
        self.provisional_fallbacks.add(1);
    }
    pub(crate) fn blind_window(&self, cause: BlindCause, duration_ns: u64) {
        self.blind_windows[cause as usize].add(1);
        self.blind_ns.add(duration_ns);
    }
    pub(crate) fn batch(&self) {
        self.batches.add(1);
    }
}

impl StatsSnapshot {
    /// Every counter and gauge as a metric sample, zeros included, every
    /// label value of a labelled family listed (the histogram is read from
    /// [`StatsSnapshot::stall_durations`]).
    pub fn samples(&self, out: &mut dyn FnMut(Sample)) {
        use metric::*;
        let plain: [(&'static Metric, u64); 18] = [
            (&BEATS_ACCEPTED, self.beats_accepted),
            (&STALLS, self.stalls),
            (&RESUMES, self.resumes),
            (&AGENTS_TRACKED, self.agents_tracked),
            (&AGENTS_STALLED, self.agents_stalled),
            (&CAPACITY_EXCEEDED, self.capacity_exceeded),
            (&UNAUTHENTICATED_SHARE_EXCEEDED, self.unauthenticated_share_exceeded),
            (&ORIGIN_CONFLICTS, self.origin_conflicts),
            (&STALE_NONCES, self.stale_nonces),
            (&PANICS, self.panics),
            (&STATUS_CHANGES, self.status_changes),
            (&CLOCK_BACKWARDS, self.clock_backwards),
            (&CLOCK_JUMPS, self.clock_jumps),
            (&INCARNATIONS_RESTARTED, self.incarnations_restarted),
            (&PROVISIONAL_RULES, self.provisional_rules),
            (&PROVISIONAL_FALLBACKS, self.provisional_fallbacks),
            (&BLIND_SECONDS, self.blind_ns / 1_000_000_000),
            (&BATCHES, self.batches),
        ];
        for (metric, value) in plain {
            out(Sample::new(metric, value));
        }
        out(Sample::labelled(&RATE_LIMITED, RateLimitReason::PerAgent.label(), self.rate_limited_per_agent));
        out(Sample::labelled(&RATE_LIMITED, RateLimitReason::Global.label(), self.rate_limited_global));
        out(Sample::labelled(
            &RATE_LIMITED,
            RateLimitReason::UnauthenticatedShare.label(),
            self.rate_limited_unauthenticated_share,
        ));
        out(Sample::labelled(&EVICTED, EvictionReason::Stale.label(), self.evicted_stale));
        out(Sample::labelled(&EVICTED, EvictionReason::PidRecycled.label(), self.evicted_pid_recycled));
        for (cause, n) in Cause::ALL.iter().zip(self.stall_causes) {
            out(Sample::labelled(&STALL_CAUSES, cause.label(), n));
        }
        for (cause, n) in BlindCause::ALL.iter().zip(self.blind_windows) {
            out(Sample::labelled(&BLIND_WINDOWS, cause.label(), n));
        }
        out(Sample::new(&RECOVERIES_STARTED, self.recoveries_started));
        for (o, n) in RecoveryOutcome::FINAL.iter().zip(self.recovery_outcomes) {
            out(Sample::labelled(&RECOVERY_OUTCOMES, o.label(), n));
        }
        for (r, n) in RecoveryRefusal::ALL.iter().zip(self.recovery_refused) {
            out(Sample::labelled(&RECOVERY_REFUSED, r.label(), n));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_present_at_zero() {
        let stats = ProcessorStats::new();
        let mut samples = Vec::new();
        stats.snapshot().samples(&mut |s| samples.push(s));
        assert_eq!(
            samples.len(),
            23 + BlindCause::ALL.len()
                + Cause::COUNT
                + 1
                + RecoveryOutcome::FINAL.len()
                + RecoveryRefusal::ALL.len()
        );
        assert!(samples.iter().all(|s| s.value == 0));
        stats.rate_limited(RateLimitReason::Global);
        let mut samples = Vec::new();
        stats.snapshot().samples(&mut |s| samples.push(s));
        let global = samples.iter().find(|s| s.metric.name == "rate_limited" && s.label == "global");
        assert_eq!(global.map(|s| s.value), Some(1));
    }

    #[test]
    fn stall_durations_land_in_their_bucket() {
        let stats = ProcessorStats::new();
        stats.resume(10_000_000); // exactly on the first bound: first bucket
        stats.resume(10_000_001);
        stats.resume(u64::MAX / 2); // beyond every bound: +Inf
        let h = stats.snapshot().stall_durations;
        assert_eq!(h.buckets[0], 1);
        assert_eq!(h.buckets[1], 1);
        assert_eq!(h.buckets[STALL_DURATION_BUCKETS - 1], 1);
        assert_eq!(h.count(), 3);
        assert_eq!(stats.snapshot().resumes, 3);
    }
}
