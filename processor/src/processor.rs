//! The liveness engine: admission control + tracker + stall scheduling,
//! driven by one thread.
//!
//! Promises:
//! * [`Processor::handle_batch`] and [`Processor::fire_due`] are pure logic
//!   in virtual time (the caller passes the clock reading) and emit events
//!   synchronously into the sink, in decision order. Both first surface every
//!   stall that is due at `now`, so a beat arriving after a long silence
//!   yields `Stall` then `Resume`, whoever drives the clock.
//! * Per beat: one hash lookup, O(1) list moves, no allocation unless a new
//!   agent grows the slab. Per due stall: O(1). No scan over agents.
//! * [`Processor::run`] sleeps on the queue until the next stall deadline
//!   exactly (no periodic wake-up), and returns once every sender is gone
//!   and every queued batch has been handled.
//!   [`Processor::run_until`] also returns when asked to pause, keeping all
//!   agent state and leaving queued batches for the next run — how a reload
//!   rewires a pipeline (new exporters, resolver or recovery runner)
//!   without losing its agents.
//!
//! Beat pipeline (first refusal wins, each counted and emitted):
//! 1. origin: a beat over a weaker transport than the agent's pinned one →
//!    `OriginConflict` (checked first so a weaker sender cannot use up the
//!    agent's rate budget); a stronger one upgrades the pin;
//! 2. per-agent interval, then global token bucket → `RateLimited`;
//! 3. new agents: capacity (evict the stalled agent silent for more than
//!    `eviction_after ×` its own threshold, else `CapacityExceeded`), then the
//!    start time is probed once (UDS only);
//! 4. sequencing ([`varta_proto::nonce_follows`]): advancing nonce → accepted;
//!    panic frame with timestamp ≥ the last accepted → accepted; otherwise a
//!    regression: UDS → probe the start time: different → the pid was
//!    recycled (`Evicted{pid_recycled}`, fresh agent), else `StaleNonce`
//!    (dropped); network → timestamp also backwards → the agent restarted
//!    (`Evicted{restarted}`, fresh incarnation, counted as
//!    `incarnations_restarted`); else `StaleNonce` *counted as liveness
//!    only*: the stall clock is refreshed, sequencing, status and payload
//!    are not. A network identity is not proven (plain UDP: anyone; secure
//!    UDP: any key holder), so a forged frame may have moved the sequence
//!    ahead; the real sender must still keep its agent live — a forger can
//!    add beats, never silence one (see `varta_proto`'s sequencing rule).
//!    Sequencing never moves backwards: the last timestamp only grows.
//!    A stalled UDS agent that beats again is also re-probed (once per
//!    incident), which catches recycled pids whose new nonces happen to be
//!    higher than the old ones.
//!
//! Times: the processor uses its own clock (`now`), not `Beat::received_ns`
//! (which a receiver may stamp from a different clock).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use varta_pipeline::queue::{BatchReceiver, RecvTimeoutError};
use varta_proto::{Arrival, Batch, Beat, Frame, Transport};

use crate::agent::{AgentId, AgentRef};
use crate::clock::{Clock, ClockGuard};
use crate::config::{ConfigError, RateLimitConfig, TrackerConfig};
use crate::event::{BlindCause, Event, EventKind, EventSink, EvictionReason, RateLimitReason};
use crate::inspect::{Diagnosed, Inspector};
use crate::ratelimit::RateLimiter;
use crate::recovery::{Recovered, RecoveryHandle};
use crate::snapshot::{AgentState, Publisher, SnapshotReader};
use crate::stats::ProcessorStats;
use crate::threshold::{Class, DEFAULT_CLASS, Thresholds, Unresolved, rules};
use crate::tracker::{Slot, Tracker};

/// Returns the process start time of a host pid (e.g. field 22 of
/// `/proc/<pid>/stat`), `None` if it cannot be read.
pub type StartTimeProbe = Box<dyn Fn(u32) -> Option<u64> + Send>;

/// Why [`Processor::run_until`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Asked to pause: run again to resume.
    Paused,
    /// Every sender is gone and the queue is drained.
    Disconnected,
}

/// The `ratelimit` + `tracker` processors; owns all agent state.
pub struct Processor {
    limiter: RateLimiter,
    tracker: Tracker,
    probe: StartTimeProbe,
    clock: Clock,
    guard: ClockGuard,
    stats: Arc<ProcessorStats>,
    publisher: Publisher,
    inspector: Option<Box<dyn Inspector>>,
    recovery: Option<RecoveryHandle>,
    thresholds: Thresholds,
    /// The capacity rule's factor: evict stalled agents silent longer than
    /// this × their own threshold.
    eviction_after: u64,
    next_incident: u64,
    /// Scratch list of agents whose attributes were just resolved.
    resolved: Vec<AgentId>,
    /// Agents armed at a provisional rule (see [`Thresholds::provisional_rule`])
    /// until the resolver answers: slot → when it falls back without an answer.
    provisional: hashbrown::HashMap<u32, u64>,
    /// When agents were last restored from a checkpoint: one silent since
    /// then stopped while the collector was down.
    pub(crate) restored_at_ns: Option<u64>,
    /// Periodic checkpoints of the agents' state, when configured.
    pub(crate) checkpoints: Option<crate::checkpoint::Checkpoints>,
    /// How late the loop may run before the gap is a blind window: a
    /// quarter of the smallest threshold in force, at least 50 ms.
    blind_after_ns: u64,
    /// When the run loop expects to run next: the deadline it sleeps until,
    /// or the moment it paused (a reload). `None`: nothing is due.
    expected_wake: Option<(u64, BlindCause)>,
    /// `CLOCK_BOOTTIME − CLOCK_MONOTONIC` at the last wake: grows by the
    /// length of every suspend, whichever clock the processor reads.
    suspended_ns: u64,
    blind_logged_ns: Option<u64>,
    /// Plain-UDP agents tracked now, and how many may be (see
    /// [`TrackerConfig::unauthenticated_limit`]).
    unauthenticated: usize,
    unauthenticated_limit: usize,
}

/// The shortest lateness that counts as a blind window.
const MIN_BLIND_NS: u64 = 50_000_000;

fn blind_after(thresholds: &Thresholds) -> u64 {
    (thresholds.class_ns().iter().copied().min().unwrap_or(0) / 4).max(MIN_BLIND_NS)
}

/// Time the host spent suspended since boot.
fn suspended_ns() -> u64 {
    Clock::Boottime.now_ns().saturating_sub(Clock::Monotonic.now_ns())
}

/// How often the processor asks the inspector for answers while agents
/// wait under a provisional rule (their real rule may be shorter).
const PROVISIONAL_POLL_NS: u64 = 20_000_000;

impl std::fmt::Debug for Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processor")
            .field("limiter", &self.limiter)
            .field("agents", &self.tracker.len())
            .field("clock", &self.clock)
            .field("next_incident", &self.next_incident)
            .finish_non_exhaustive()
    }
}

enum Sequence {
    Advances,
    Regresses,
}

impl Processor {
    /// Validates both configs; `ratelimit: None` admits every beat.
    pub fn new(
        ratelimit: Option<RateLimitConfig>,
        tracker: TrackerConfig,
        probe: StartTimeProbe,
    ) -> Result<Processor, ConfigError> {
        if let Some(rl) = &ratelimit {
            rl.validate()?;
        }
        tracker.validate()?;
        let thresholds = tracker.thresholds();
        let stats = Arc::new(ProcessorStats::new());
        let mut limiter = RateLimiter::new(ratelimit.as_ref());
        limiter.set_unauthenticated_share(tracker.unauthenticated_share_if_shared());
        Ok(Processor {
            limiter,
            tracker: Tracker::new(tracker.capacity, thresholds.class_ns()),
            probe,
            clock: tracker.clock,
            guard: ClockGuard::new(),
            stats,
            publisher: Publisher::new(tracker.snapshot_interval_ns(), tracker.clock, thresholds.class_ns()),
            inspector: None,
            recovery: None,
            eviction_after: u64::from(tracker.eviction_after),
            next_incident: 1,
            resolved: Vec::new(),
            provisional: hashbrown::HashMap::new(),
            checkpoints: None,
            restored_at_ns: None,
            blind_after_ns: blind_after(&thresholds),
            thresholds,
            expected_wake: None,
            suspended_ns: suspended_ns(),
            blind_logged_ns: None,
            unauthenticated: 0,
            unauthenticated_limit: tracker.unauthenticated_limit(),
        })
    }

    /// Applies changed threshold settings (`threshold`, `thresholds`,
    /// `adaptive`, `eviction_after`) to a processor that already tracks
    /// agents (a reload): every agent keeps its state and what it learned,
    /// and is judged by the new settings from now on — one re-evaluated
    /// past its new deadline stalls at once. Other `tracker` settings
    /// (capacity, clock, snapshot interval) need a new processor.
    pub fn set_thresholds(&mut self, tracker: &TrackerConfig) -> Result<(), ConfigError> {
        tracker.validate()?;
        self.thresholds = tracker.thresholds();
        self.blind_after_ns = blind_after(&self.thresholds);
        self.unauthenticated_limit = tracker.unauthenticated_limit();
        self.limiter.set_unauthenticated_share(tracker.unauthenticated_share_if_shared());
        self.eviction_after = u64::from(tracker.eviction_after);
        self.reclassify();
        Ok(())
    }

    pub(crate) fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    pub(crate) fn tracker_mut(&mut self) -> &mut Tracker {
        &mut self.tracker
    }

    /// How many agents it may track.
    pub fn capacity(&self) -> usize {
        self.tracker.capacity()
    }

    /// Puts a restored agent in the tracker (its class follows from the
    /// rules: see [`Processor::reclassify`]) and tells the resolver.
    /// `restart`: taken back after a restart (not carried across a
    /// reload), so its identity is checked at once.
    pub(crate) fn insert_restored(&mut self, slot: Slot, restart: bool) -> Option<u32> {
        let agent = slot.agent_ref();
        let hash = self.tracker.hash(&agent.id.source, agent.id.pid);
        if self.tracker.find(hash, &agent.id.source, agent.id.pid).is_some() {
            return None;
        }
        let last_beat_ns = slot.last_beat_ns;
        let idx = self.tracker.insert(hash, slot)?;
        if agent.transport == Transport::Udp {
            self.unauthenticated += 1;
        }
        self.provisional.remove(&idx);
        if let Some(inspector) = self.inspector.as_mut() {
            inspector.agent_restored(&agent, last_beat_ns, restart);
        }
        Some(idx)
    }

    /// Every agent's class from the rules again (after new thresholds, or
    /// agents restored from a checkpoint).
    pub(crate) fn reclassify(&mut self) {
        let (thresholds, inspector) = (&self.thresholds, self.inspector.as_deref());
        let mut waiting = Vec::new();
        let mut index = 0u32;
        self.tracker.set_classes(thresholds.class_ns(), |slot| {
            let agent = slot.agent_ref();
            let (mut rule, found) = rule_class(thresholds, inspector, &agent);
            // Not resolved (yet) under a rule that needs it: never a
            // shorter threshold than it may get.
            if !found && let Some(p) = provisional_for(thresholds, inspector, &agent) {
                waiting.push((index, p));
                rule = p;
            }
            index += 1;
            (rule, thresholds.effective(rule, &slot.learned()))
        });
        let now = self.guard.last_ns().unwrap_or(0);
        self.provisional.clear();
        for (idx, rule) in waiting {
            self.provisional.insert(idx, now.saturating_add(self.thresholds.ns(rule)));
        }
        self.publisher.set_classes(self.thresholds.class_ns());
        self.publisher.mark_dirty();
    }

    /// Attaches the inspector told about agents and asked for stall
    /// diagnoses (see [`crate::inspect`]).
    pub fn with_inspector(mut self, inspector: Box<dyn Inspector>) -> Processor {
        self.inspector = Some(inspector);
        self
    }

    /// Attaches the recovery runner (see [`crate::recovery`]).
    pub fn with_recovery(mut self, recovery: RecoveryHandle) -> Processor {
        self.recovery = Some(recovery);
        self
    }

    /// Replaces the inspector of a processor that already tracks agents (a
    /// reload): the new one is told about every tracked agent, so their
    /// attributes and diagnoses continue; dropping the old one ends it.
    pub fn set_inspector(&mut self, inspector: Option<Box<dyn Inspector>>) {
        self.inspector = inspector;
        if let Some(inspector) = self.inspector.as_mut() {
            let now = self.guard.last_ns().unwrap_or(0);
            for slot in self.tracker.slots() {
                inspector.agent_started(&slot.agent_ref(), now);
            }
        }
        // Rules on attributes wait for the new inspector to resolve them again.
        self.publisher.mark_dirty();
    }

    /// Replaces the recovery runner (a reload). Actions the old runner had
    /// pending are dropped with it; incidents from now on use the new one.
    pub fn set_recovery(&mut self, recovery: Option<RecoveryHandle>) {
        self.recovery = recovery;
    }

    /// The number the next incident gets.
    /// The incident whose low 32 bits a slot keeps: the latest incident
    /// number ending in them. Exact while fewer than 2³² incidents open
    /// during one agent's stall (at 100,000 stalls a second, 12 hours).
    pub(crate) fn incident_of(&self, low: u32) -> u64 {
        let latest = self.next_incident.saturating_sub(1);
        latest - u64::from((latest as u32).wrapping_sub(low)).min(latest)
    }

    pub fn next_incident(&self) -> u64 {
        self.next_incident
    }

    /// Numbers incidents from `next` on (a pipeline rebuilt by a reload
    /// carries on its numbering, so trace ids — derived from it — never
    /// repeat within the process).
    pub fn continue_incidents_from(&mut self, next: u64) {
        self.next_incident = self.next_incident.max(next);
    }

    /// The shared counters (read from any thread).
    pub fn stats(&self) -> Arc<ProcessorStats> {
        Arc::clone(&self.stats)
    }

    /// The clock `run` reads.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Agents currently tracked.
    pub fn agents(&self) -> usize {
        self.tracker.len()
    }

    /// Bytes of agent state held (slab + index capacities × sizes, plus this struct).
    pub fn memory_bytes(&self) -> usize {
        self.tracker.memory_bytes() + std::mem::size_of::<Processor>()
    }

    /// Every tracked agent's full state now (allocates; for tests and
    /// tools — other threads read [`Processor::snapshots`]).
    pub fn agent_states(&self) -> Vec<AgentState> {
        self.tracker.slots().map(AgentState::of).collect()
    }

    /// The read side of the published snapshot (see [`crate::snapshot`]).
    pub fn snapshots(&self) -> SnapshotReader {
        self.publisher.reader()
    }

    /// Publishes a snapshot of the current state now (the run loop does
    /// this by itself; for callers driving the processor in virtual time).
    pub fn publish_snapshot(&mut self, now_ns: u64) {
        self.publisher.publish(now_ns, &mut self.tracker, self.stats.snapshot());
    }

    pub(crate) fn note_agents(&mut self) {
        self.stats.set_agents(self.tracker.len(), self.tracker.stalled_len());
        self.publisher.mark_dirty();
    }

    /// Handles one batch at processor time `now_ns` (after surfacing due stalls).
    pub fn handle_batch(&mut self, batch: &Batch, now_ns: u64, out: &mut dyn EventSink) {
        let now = self.advance_clock(now_ns, out);
        self.stats.batch();
        self.fire_stalls(now, out);
        let wants_beats = out.wants_beats();
        for arrival in batch.as_slice() {
            match arrival {
                Arrival::Beat(beat) => self.on_beat(beat, now, wants_beats, out),
                // Counted by the receiver that refused it; forwarded so event views see it.
                Arrival::Refused(refused) => {
                    out.emit(&Event { at_ns: now, agent: None, kind: EventKind::Refused(*refused) });
                }
            }
        }
        self.note_agents();
    }

    /// Emits every stall due at `now_ns`, every finished diagnosis and
    /// every recovery report; returns when to wake next (the next stall
    /// deadline, or the next poll of the inspector or the recovery runner
    /// while they have work outstanding).
    pub fn fire_due(&mut self, now_ns: u64, out: &mut dyn EventSink) -> Option<u64> {
        let now = self.advance_clock(now_ns, out);
        self.fire_stalls(now, out);
        self.apply_resolved();
        self.apply_exited(now, out);
        self.emit_diagnoses(now, out);
        self.emit_recoveries(now, out);
        let wake =
            earliest(self.tracker.next_deadline(), self.inspector.as_ref().and_then(|i| i.next_poll()));
        let wake =
            earliest(wake, (!self.provisional.is_empty()).then(|| now.saturating_add(PROVISIONAL_POLL_NS)));
        earliest(wake, self.recovery.as_ref().and_then(RecoveryHandle::next_poll))
    }

    fn emit_recoveries(&mut self, now: u64, out: &mut dyn EventSink) {
        let Some(recovery) = self.recovery.as_mut() else { return };
        let stats = &self.stats;
        let mut any = false;
        recovery.poll(now, &mut |r: Recovered| {
            stats.recovery(&r.report);
            any = true;
            let kind = EventKind::Recovery { incident: r.incident, report: r.report };
            out.emit(&Event { at_ns: now, agent: Some(r.agent), kind });
        });
        if any {
            self.publisher.mark_dirty();
        }
    }

    /// Gives agents the inspector answered for (resolved, or found
    /// unreadable) the rule their attributes select, at once: a live agent
    /// moves to its class now, its deadline its last beat plus the new
    /// threshold (a stalled one takes it at its next beat). An agent that
    /// waited under a provisional rule and got no attributes falls back to
    /// the rule known without them (counted).
    fn apply_resolved(&mut self) {
        let Some(inspector) = self.inspector.as_mut() else { return };
        let mut resolved = std::mem::take(&mut self.resolved);
        inspector.take_resolved(&mut resolved);
        if self.thresholds.needs_attributes() {
            for id in &resolved {
                let hash = self.tracker.hash(&id.source, id.pid);
                let Some(idx) = self.tracker.find(hash, &id.source, id.pid) else { continue };
                let slot = self.tracker.slot(idx);
                if slot.start_time() != id.start_time {
                    continue; // another incarnation by now
                }
                let (rule, found) =
                    rule_class(&self.thresholds, self.inspector.as_deref(), &slot.agent_ref());
                if self.provisional.remove(&idx).is_some() && !found {
                    self.stats.provisional_fallback();
                }
                self.set_rule(idx, rule);
            }
        }
        resolved.clear();
        self.resolved = resolved;
    }

    fn set_rule(&mut self, idx: u32, rule: Class) {
        let slot = self.tracker.slot_mut(idx);
        slot.rule = rule;
        let class = self.thresholds.effective_near(rule, &slot.learned(), Some(slot.class()));
        self.tracker.reclass(idx, class);
        self.publisher.mark_dirty();
    }

    /// A provisional agent the inspector never answered for by `until`
    /// (its notice was dropped, or the resolver is wedged) takes the rule
    /// known without attributes at its next beat (counted).
    fn expire_provisional(&mut self, idx: u32, now: u64) {
        if self.provisional.get(&idx).is_some_and(|&until| now >= until) {
            self.provisional.remove(&idx);
            self.stats.provisional_fallback();
            let (rule, _) = rule_class(&self.thresholds, None, &self.tracker.slot(idx).agent_ref());
            self.tracker.slot_mut(idx).rule = rule;
        }
    }

    fn emit_diagnoses(&mut self, now: u64, out: &mut dyn EventSink) {
        let Some(inspector) = self.inspector.as_mut() else { return };
        let stats = &self.stats;
        let mut any = false;
        let recovery = &mut self.recovery;
        inspector.poll(now, &mut |d: Diagnosed| {
            stats.diagnosed(d.diagnosis.cause);
            if let Some(r) = recovery.as_mut() {
                r.diagnosed(d.incident, d.diagnosis.cause);
            }
            any = true;
            let kind = EventKind::Diagnosis { incident: d.incident, diagnosis: d.diagnosis };
            out.emit(&Event { at_ns: now, agent: Some(d.agent), kind });
        });
        inspector.poll_evidence(&mut |e| {
            let kind = EventKind::Evidence { incident: e.incident, duration_ns: e.duration_ns };
            out.emit(&Event { at_ns: now, agent: Some(e.agent), kind });
        });
        if any {
            self.publisher.mark_dirty();
        }
    }

    /// The processor thread: handles batches as they come and wakes exactly
    /// at the next stall deadline (or snapshot publication while something
    /// waits to be published, or poll while a diagnosis or recovery is
    /// outstanding). Returns when every sender has been dropped
    /// and the queue is drained, after publishing a final snapshot.
    pub fn run(mut self, rx: BatchReceiver, out: &mut dyn EventSink) {
        self.run_until(&rx, out, &AtomicBool::new(false));
    }

    /// [`Processor::run`] that also returns [`Ended::Paused`] once `pause`
    /// is set and the next batch (or deadline) wakes it — send an empty
    /// batch to wake it at once — keeping its state and leaving queued
    /// batches in `rx`. The caller clears `pause` before running
    /// again (never the run itself: a request made as it starts would be lost).
    pub fn run_until(&mut self, rx: &BatchReceiver, out: &mut dyn EventSink, pause: &AtomicBool) -> Ended {
        loop {
            if pause.load(Ordering::Acquire) {
                // Resumed at once, or the park was a blind window.
                self.expected_wake = self.guard.last_ns().map(|at| (at, BlindCause::Reload));
                return Ended::Paused;
            }
            let now = self.clock.now_ns();
            self.check_blind(now, out);
            let stall = self.fire_due(now, out);
            let now = self.guard.last_ns().unwrap_or(0);
            if self.publisher.is_due(now) {
                self.publish_snapshot(now);
            }
            self.checkpoint_step(now);
            let deadline = earliest(earliest(stall, self.publisher.due_at()), self.checkpoint_due(now));
            self.expected_wake = deadline.map(|at| (at, BlindCause::Stopped));
            let received = match deadline {
                Some(deadline) => {
                    let now = self.guard.last_ns().unwrap_or(0);
                    rx.recv_timeout(Duration::from_nanos(deadline.saturating_sub(now)))
                }
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match received {
                Ok(batch) => {
                    let now = self.clock.now_ns();
                    self.check_blind(now, out);
                    self.handle_batch(&batch, now, out);
                    rx.recycle(batch);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let now = self.guard.last_ns().unwrap_or(0);
                    self.publish_snapshot(now);
                    return Ended::Disconnected;
                }
            }
        }
    }

    /// At a wake of the run loop: was the collector unable to listen? Its
    /// loop ran later than it meant to by more than a quarter of the
    /// smallest threshold (at least 50 ms) — stopped, throttled, frozen, or
    /// parked by a reload — or the host was suspended. Then that was a
    /// blind window, before any deadline is judged.
    fn check_blind(&mut self, now: u64, out: &mut dyn EventSink) {
        let suspended = suspended_ns();
        let slept = suspended.saturating_sub(self.suspended_ns);
        self.suspended_ns = suspended;
        let expected = self.expected_wake.take();
        if slept > self.blind_after_ns {
            return self.blind_window(BlindCause::Suspend, now.saturating_sub(slept), now, out);
        }
        if let Some((at, cause)) = expected
            && now > at.saturating_add(self.blind_after_ns)
        {
            self.blind_window(cause, at, now, out);
        }
    }

    /// A window `[start_ns, end_ns]` in which the collector could not
    /// listen (processor time; `end_ns` is the first read after it): every
    /// live agent whose deadline fell inside it gets a full threshold from
    /// `end_ns` before it can be declared stalled (see [`crate::tracker`]);
    /// one already stalled before it stays reported. Counted, logged and
    /// emitted; stalls it touches are marked. Public so that whatever else
    /// blinds the collector (a restart) reports it the same way.
    pub fn blind_window(&mut self, cause: BlindCause, start_ns: u64, end_ns: u64, out: &mut dyn EventSink) {
        let (end_ns, _) = self.guard.observe(end_ns, None);
        let duration_ns = end_ns.saturating_sub(start_ns);
        self.tracker.raise_floor(end_ns);
        self.stats.blind_window(cause, duration_ns);
        self.publisher.mark_dirty();
        // At most one line a second (a throttled cgroup may blind it often;
        // the counters have every window).
        if self.blind_logged_ns.is_none_or(|at| end_ns.saturating_sub(at) >= 1_000_000_000) {
            self.blind_logged_ns = Some(end_ns);
            tracing::warn!(
                cause = cause.label(),
                duration_ms = duration_ns / 1_000_000,
                agents = self.tracker.len(),
                "blind window: the collector could not listen; every agent gets a full threshold from now"
            );
        }
        Self::emit(out, end_ns, None, EventKind::BlindWindow { cause, start_ns, duration_ns });
    }

    fn emit(out: &mut dyn EventSink, at_ns: u64, agent: Option<AgentRef>, kind: EventKind) {
        out.emit(&Event { at_ns, agent, kind });
    }

    fn advance_clock(&mut self, raw_ns: u64, out: &mut dyn EventSink) -> u64 {
        let (now, anomaly) = self.guard.observe(raw_ns, self.tracker.next_deadline());
        if let Some(kind) = anomaly {
            self.publisher.mark_dirty();
            self.stats.clock_anomaly(kind);
            Self::emit(out, now, None, EventKind::ClockAnomaly { kind });
        }
        now
    }

    fn fire_stalls(&mut self, now: u64, out: &mut dyn EventSink) {
        while let Some(idx) = self.tracker.due(now) {
            self.stall(idx, now, out);
        }
    }

    /// Reports restored agents the inspector found gone (or their pid
    /// recycled) stalled now, rather than a threshold after the restart:
    /// they will never beat again. One already stalled before the restart
    /// continues its open incident: that incident is diagnosed again (it
    /// now says `exited`); recovery, decided before, is not asked again.
    /// Only agents still silent since the restore and still the
    /// incarnation that was checked.
    fn apply_exited(&mut self, now: u64, out: &mut dyn EventSink) {
        let Some(inspector) = self.inspector.as_mut() else { return };
        let mut exited = std::mem::take(&mut self.resolved);
        inspector.take_exited(&mut exited);
        for id in &exited {
            let hash = self.tracker.hash(&id.source, id.pid);
            let Some(idx) = self.tracker.find(hash, &id.source, id.pid) else { continue };
            let slot = self.tracker.slot(idx);
            let silent_since_restore = self.restored_at_ns.is_some_and(|at| slot.last_beat_ns < at);
            if slot.start_time() != id.start_time || !silent_since_restore {
                continue;
            }
            if slot.is_stalled() {
                let (agent, incident) = (slot.agent_ref(), self.incident_of(slot.incident));
                if let Some(inspector) = self.inspector.as_mut() {
                    inspector.agent_stalled(&agent, incident, now);
                }
            } else {
                self.stall(idx, now, out);
            }
        }
        exited.clear();
        self.resolved = exited;
    }

    /// Opens an incident for the live agent `idx`: its stall is reported,
    /// diagnosed and handed to recovery.
    fn stall(&mut self, idx: u32, now: u64, out: &mut dyn EventSink) {
        self.tracker.mark_stalled(idx);
        let incident = self.next_incident;
        self.next_incident += 1;
        let threshold_ns = self.tracker.threshold_ns(self.tracker.slot(idx).class());
        let warmup = self.thresholds.warmup();
        let slot = self.tracker.slot_mut(idx);
        slot.incident = incident as u32;
        slot.stalls = slot.stalls.saturating_add(1);
        let learned_interval_ns = warmup.and_then(|w| slot.learned().interval_ns(w)).unwrap_or(0);
        let last_beat_ns = slot.last_beat_ns;
        let last_nonce = slot.last_nonce().unwrap_or(0);
        let (last_status, last_payload) = (slot.status, slot.last_payload);
        let agent = slot.agent_ref();
        self.stats.stall();
        self.note_agents();
        let silence_ns = now.saturating_sub(last_beat_ns);
        let blind = last_beat_ns < self.tracker.floor();
        Self::emit(
            out,
            now,
            Some(agent),
            EventKind::Stall {
                incident,
                last_beat_ns,
                last_nonce,
                silence_ns,
                last_status,
                last_payload,
                threshold_ns,
                learned_interval_ns,
                blind,
            },
        );
        let diagnosing = self.inspector.as_mut().is_some_and(|i| i.agent_stalled(&agent, incident, now));
        // Silent since it was restored from a checkpoint: it stopped
        // while the collector was down (`on_restore`).
        let restored = self.restored_at_ns.is_some_and(|at| last_beat_ns < at);
        if let Some(recovery) = self.recovery.as_mut() {
            recovery.stalled(&agent, incident, diagnosing, restored);
        }
    }

    fn on_beat(&mut self, beat: &Beat, now: u64, wants_beats: bool, out: &mut dyn EventSink) {
        let pid = key_pid(beat);
        let hash = self.tracker.hash(&beat.source, pid);
        match self.tracker.find(hash, &beat.source, pid) {
            Some(idx) => self.on_known_agent(idx, beat, now, wants_beats, out),
            None => self.on_new_agent(hash, beat, now, wants_beats, out),
        }
    }

    fn on_known_agent(
        &mut self,
        idx: u32,
        beat: &Beat,
        now: u64,
        wants_beats: bool,
        out: &mut dyn EventSink,
    ) {
        let slot = self.tracker.slot(idx);
        let agent = slot.agent_ref();
        if beat.transport < slot.transport {
            self.stats.origin_conflict();
            let kind = EventKind::OriginConflict { from: slot.transport, to: beat.transport };
            return Self::emit(out, now, Some(agent), kind);
        }
        if !self.limiter.admits_agent(Some(slot.last_admitted_ns), now) {
            return self.rate_limited(RateLimitReason::PerAgent, agent, now, out);
        }
        if let Err(reason) = self.limiter.take(now, beat.transport == Transport::Udp) {
            return self.rate_limited(reason, agent, now, out);
        }
        let slot = self.tracker.slot_mut(idx);
        slot.last_admitted_ns = now;
        if slot.transport == Transport::Udp && beat.transport > Transport::Udp {
            self.unauthenticated -= 1;
        }
        slot.transport = slot.transport.max(beat.transport);
        let pinned_start = slot.start_time();
        let is_uds = beat.transport == Transport::Uds;
        match Self::sequence(slot, &beat.frame) {
            Sequence::Advances => {
                if is_uds && slot.is_stalled() {
                    // Once per incident: the process may have died and its pid been reused.
                    match (self.probe)(beat.host_pid) {
                        Some(st) if pinned_start != 0 && st != pinned_start => {
                            let reason = EvictionReason::PidRecycled;
                            return self.start_incarnation(idx, beat, st, reason, now, wants_beats, out);
                        }
                        Some(st) if pinned_start == 0 => self.tracker.slot_mut(idx).set_start_time(st),
                        _ => {}
                    }
                }
                self.accept(idx, beat, now, wants_beats, out);
            }
            Sequence::Regresses => {
                if is_uds {
                    if let Some(st) = (self.probe)(beat.host_pid).filter(|&st| st != pinned_start) {
                        let reason = EvictionReason::PidRecycled;
                        return self.start_incarnation(idx, beat, st, reason, now, wants_beats, out);
                    }
                } else if beat.frame.timestamp < self.tracker.slot(idx).last_timestamp {
                    let reason = EvictionReason::Restarted;
                    return self.start_incarnation(idx, beat, 0, reason, now, wants_beats, out);
                }
                self.stats.stale_nonce();
                let agent = self.tracker.slot(idx).agent_ref();
                Self::emit(out, now, Some(agent), EventKind::StaleNonce { frame: beat.frame });
                if !is_uds {
                    self.keep_alive(idx, beat, now, wants_beats, out);
                }
            }
        }
    }

    fn on_new_agent(&mut self, hash: u64, beat: &Beat, now: u64, wants_beats: bool, out: &mut dyn EventSink) {
        let unpinned = AgentRef {
            id: AgentId { source: beat.source, pid: key_pid(beat), start_time: 0 },
            frame_pid: beat.frame.pid,
            host_pid: beat.host_pid,
            transport: beat.transport,
        };
        if let Err(reason) = self.limiter.take(now, beat.transport == Transport::Udp) {
            return self.rate_limited(reason, unpinned, now, out);
        }
        if beat.transport == Transport::Udp && self.unauthenticated >= self.unauthenticated_limit {
            // Their share is taken: a flood of fake pids never keeps an
            // attested agent out.
            self.stats.capacity_exceeded();
            self.stats.unauthenticated_share_exceeded();
            let kind = EventKind::CapacityExceeded { pid: beat.frame.pid };
            return Self::emit(out, now, Some(unpinned), kind);
        }
        let victim = if self.tracker.is_full() {
            let Some(victim) = self.tracker.evictable(now, self.eviction_after) else {
                self.stats.capacity_exceeded();
                let kind = EventKind::CapacityExceeded { pid: beat.frame.pid };
                return Self::emit(out, now, Some(unpinned), kind);
            };
            Some(victim)
        } else {
            None
        };
        // 0 when it cannot be read (the sender is already gone, or `/proc`
        // hides it): an unknown identity, which whatever acts on it
        // (recovery) refuses and whatever reports on it (resolver,
        // diagnosis) leaves `unknown`.
        let start_time =
            if beat.transport == Transport::Uds { (self.probe)(beat.host_pid).unwrap_or(0) } else { 0 };
        let (slot, provisional) = self.fresh_slot(beat, start_time, now);
        let idx = match victim {
            Some(victim) => {
                let old = self.tracker.slot(victim).agent_ref();
                self.forget_transport(old.transport);
                self.stats.evicted(EvictionReason::Stale);
                Self::emit(out, now, Some(old), EventKind::Evicted { reason: EvictionReason::Stale });
                self.tracker.replace(victim, hash, slot);
                if let Some(inspector) = self.inspector.as_mut() {
                    inspector.agent_gone(&old.id);
                }
                victim
            }
            None => match self.tracker.insert(hash, slot) {
                Some(idx) => idx,
                None => {
                    // Unreachable: the tracker was not full.
                    self.stats.capacity_exceeded();
                    let kind = EventKind::CapacityExceeded { pid: beat.frame.pid };
                    return Self::emit(out, now, Some(unpinned), kind);
                }
            },
        };
        if beat.transport == Transport::Udp {
            self.unauthenticated += 1;
        }
        self.agent_started(idx, now, provisional);
        self.accept(idx, beat, now, wants_beats, out);
    }

    fn forget_transport(&mut self, transport: Transport) {
        if transport == Transport::Udp {
            self.unauthenticated = self.unauthenticated.saturating_sub(1);
        }
    }

    /// A fresh agent for `beat`, first admitted at `now`, under the rule
    /// its first beat selects: only `transport` and `source` are known yet.
    /// When an attribute rule may still apply (attributes follow from the
    /// resolver, see [`Processor::apply_resolved`]) it runs under the
    /// longest rule it may end up under until then (`true`).
    fn fresh_slot(&self, beat: &Beat, start_time: u64, now: u64) -> (Slot, bool) {
        let slot = Slot::new(beat.source, key_pid(beat), start_time, beat.transport, now, DEFAULT_CLASS)
            .with_frame_pid(beat.frame.pid);
        let agent = slot.agent_ref();
        match provisional_for(&self.thresholds, self.inspector.as_deref(), &agent) {
            Some(rule) => (slot.with_rule(rule), true),
            None => (slot.with_rule(rule_class(&self.thresholds, None, &agent).0), false),
        }
    }

    fn agent_started(&mut self, idx: u32, now: u64, provisional: bool) {
        if provisional {
            let until = now.saturating_add(self.thresholds.ns(self.tracker.slot(idx).rule));
            self.provisional.insert(idx, until);
            self.stats.provisional_rule();
        } else {
            self.provisional.remove(&idx);
        }
        if let Some(inspector) = self.inspector.as_mut() {
            inspector.agent_started(&self.tracker.slot(idx).agent_ref(), now);
        }
    }

    fn rate_limited(&mut self, reason: RateLimitReason, agent: AgentRef, now: u64, out: &mut dyn EventSink) {
        self.stats.rate_limited(reason);
        Self::emit(out, now, Some(agent), EventKind::RateLimited { reason });
    }

    fn sequence(slot: &Slot, frame: &Frame) -> Sequence {
        let advances = if frame.is_panic() {
            frame.timestamp >= slot.last_timestamp
        } else {
            match slot.last_nonce() {
                None => true,
                Some(last) => varta_proto::nonce_follows(last, frame.nonce),
            }
        };
        if advances { Sequence::Advances } else { Sequence::Regresses }
    }

    /// Retires the agent in `idx` (its old identity gets `Evicted{reason}`)
    /// and starts a fresh one in the same slot with this beat.
    #[allow(clippy::too_many_arguments)]
    fn start_incarnation(
        &mut self,
        idx: u32,
        beat: &Beat,
        start_time: u64,
        reason: EvictionReason,
        now: u64,
        wants_beats: bool,
        out: &mut dyn EventSink,
    ) {
        let old = self.tracker.slot(idx).agent_ref();
        self.forget_transport(old.transport);
        if beat.transport == Transport::Udp {
            self.unauthenticated += 1;
        }
        self.stats.evicted(reason);
        Self::emit(out, now, Some(old), EventKind::Evicted { reason });
        let (fresh, provisional) = self.fresh_slot(beat, start_time, now);
        self.tracker.reincarnate(idx, fresh);
        if let Some(inspector) = self.inspector.as_mut() {
            inspector.agent_gone(&old.id);
        }
        self.agent_started(idx, now, provisional);
        self.accept(idx, beat, now, wants_beats, out);
    }

    /// A network frame that did not advance the sequence: proof that the
    /// agent's identity is in use now, nothing more — the stall clock is
    /// refreshed (a stalled agent resumes), its sequence, status, payload
    /// and learned interval stay as they were.
    fn keep_alive(&mut self, idx: u32, beat: &Beat, now: u64, wants_beats: bool, out: &mut dyn EventSink) {
        let slot = self.tracker.slot(idx);
        let (was_stalled, previous_beat_ns, class) = (slot.is_stalled(), slot.last_beat_ns, slot.class());
        self.tracker.touch(idx, now, class);
        let slot = self.tracker.slot(idx);
        let (agent, incident) = (Some(slot.agent_ref()), slot.incident);
        if was_stalled {
            let incident = self.incident_of(incident);
            self.resumed(incident, now.saturating_sub(previous_beat_ns), agent, beat.frame, now, out);
        }
        if wants_beats {
            Self::emit(out, now, agent, EventKind::Beat { frame: beat.frame });
        }
    }

    fn resumed(
        &mut self,
        incident: u64,
        silence_ns: u64,
        agent: Option<AgentRef>,
        frame: Frame,
        now: u64,
        out: &mut dyn EventSink,
    ) {
        self.stats.resume(silence_ns);
        if let Some(recovery) = self.recovery.as_mut() {
            recovery.resumed(incident);
        }
        Self::emit(out, now, agent, EventKind::Resume { incident, silence_ns, frame });
    }

    fn accept(&mut self, idx: u32, beat: &Beat, now: u64, wants_beats: bool, out: &mut dyn EventSink) {
        if !self.provisional.is_empty() {
            self.expire_provisional(idx, now);
        }
        let frame = beat.frame;
        let slot = self.tracker.slot(idx);
        let was_stalled = slot.is_stalled();
        let previous_beat_ns = slot.last_beat_ns;
        let from = slot.status;
        let mut learned = slot.learned();
        if let Some(warmup) = self.thresholds.warmup() {
            if was_stalled {
                // A stall teaches nothing; the resumed agent warms up afresh.
                learned.forget();
            } else if slot.beats > 0 {
                learned.observe(now.saturating_sub(previous_beat_ns), warmup);
            }
        }
        let class = self.thresholds.effective_near(slot.rule, &learned, Some(slot.class()));
        self.tracker.touch(idx, now, class);
        let slot = self.tracker.slot_mut(idx);
        slot.set_learned(learned);
        slot.beats += 1;
        slot.status = frame.status;
        // Never backwards: a frame with timestamp 0 must not make the real
        // sender's next beats look like a restart or a stale panic.
        slot.last_timestamp = slot.last_timestamp.max(frame.timestamp);
        slot.last_payload = frame.payload;
        if !frame.is_panic() {
            slot.set_last_nonce(frame.nonce);
        }
        let (agent, incident) = (Some(slot.agent_ref()), slot.incident);
        self.stats.beat_accepted();
        if was_stalled {
            let incident = self.incident_of(incident);
            self.resumed(incident, now.saturating_sub(previous_beat_ns), agent, frame, now, out);
        }
        if wants_beats {
            Self::emit(out, now, agent, EventKind::Beat { frame });
        }
        if from != frame.status {
            self.stats.status_change();
            Self::emit(out, now, agent, EventKind::StatusChange { from, to: frame.status, frame });
        }
        if frame.is_panic() {
            self.stats.panic();
            Self::emit(out, now, agent, EventKind::Panic { frame });
        }
    }
}

/// The earlier of two optional times.
fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The pid an agent is keyed by: the kernel-attested host pid for UDS (unique
/// on the host whatever pid namespace the agent lives in), the frame pid for
/// network transports.
fn key_pid(beat: &Beat) -> u32 {
    if beat.transport == Transport::Uds { beat.host_pid } else { beat.frame.pid }
}

/// The rule class of `agent` with everything known of it (its attributes,
/// if an inspector resolved them), and whether attributes were found.
fn rule_class(thresholds: &Thresholds, inspector: Option<&dyn Inspector>, agent: &AgentRef) -> (Class, bool) {
    if thresholds.rules().is_empty() {
        return (DEFAULT_CLASS, false);
    }
    let mut rule = None;
    let mut found = false;
    match inspector {
        Some(i) if thresholds.needs_attributes() => i.with_attributes(&agent.id, &mut |attrs| {
            found = attrs.resolved();
            rule = rules::first_match(thresholds.rules(), agent, attrs);
        }),
        _ => rule = rules::first_match(thresholds.rules(), agent, &Unresolved),
    }
    (thresholds.rule_class(rule), found)
}

/// The provisional rule of an agent whose attributes an inspector will
/// read (local agents; see [`Thresholds::provisional_rule`]).
fn provisional_for(
    thresholds: &Thresholds,
    inspector: Option<&dyn Inspector>,
    agent: &AgentRef,
) -> Option<Class> {
    (inspector.is_some() && agent.transport == Transport::Uds)
        .then(|| thresholds.provisional_rule(agent))
        .flatten()
}
