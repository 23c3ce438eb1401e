//! What the processor tells the rest of the collector.
//!
//! Promises: every [`Event`] is `Copy`, a little over 100 bytes and owns no
//! heap memory, so sinks can queue them without allocating. Events are
//! emitted synchronously, in the order the processor decided them, into an
//! [`EventSink`]; the sink (exporter fan-out) decides about queueing and
//! must not block. `Event::at_ns` is processor time (its configured clock,
//! clamped to never go backwards).

use varta_proto::{Frame, RefusedFrame, Status, Transport};

use crate::agent::AgentRef;
use crate::clock::ClockAnomalyKind;
use crate::inspect::Diagnosis;
use crate::recovery::RecoveryReport;

/// Why an agent's state was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EvictionReason {
    /// Tracker full; this agent had been stalled and silent for more than
    /// `eviction_after × threshold`, so a new agent took its place.
    Stale,
    /// A UDS beat with a regressing nonce came from a process with a
    /// different start time: the pid was recycled. A fresh agent follows.
    PidRecycled,
    /// A network agent's nonce and timestamp both went backwards: it
    /// restarted under the same pid. A fresh incarnation follows (counted
    /// as `incarnations_restarted`, not as an eviction).
    Restarted,
}

impl EvictionReason {
    pub const fn label(self) -> &'static str {
        match self {
            EvictionReason::Stale => "stale",
            EvictionReason::PidRecycled => "pid_recycled",
            EvictionReason::Restarted => "restarted",
        }
    }
}

/// Why the collector could not listen for a while (a *blind window*).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlindCause {
    /// The processor's loop did not run when due: the process was stopped
    /// (SIGSTOP), CPU-throttled, or its VM frozen.
    Stopped,
    /// The host was suspended (`CLOCK_BOOTTIME` moved ahead of
    /// `CLOCK_MONOTONIC`), whichever clock the processor reads.
    Suspend,
    /// A reload parked the pipeline.
    Reload,
    /// The collector was not running: from its last checkpoint (or its
    /// stop) to the first read of the process that restored it.
    Restart,
}

impl BlindCause {
    pub const ALL: [BlindCause; 4] =
        [BlindCause::Stopped, BlindCause::Suspend, BlindCause::Reload, BlindCause::Restart];

    pub const fn label(self) -> &'static str {
        match self {
            BlindCause::Stopped => "stopped",
            BlindCause::Suspend => "suspend",
            BlindCause::Reload => "reload",
            BlindCause::Restart => "restart",
        }
    }
}

/// Which limit refused a beat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateLimitReason {
    PerAgent,
    Global,
    /// Plain-UDP beats past their share of the global rate, in a pipeline
    /// that also has attested receivers.
    UnauthenticatedShare,
}

impl RateLimitReason {
    pub const ALL: [RateLimitReason; 3] =
        [RateLimitReason::PerAgent, RateLimitReason::Global, RateLimitReason::UnauthenticatedShare];

    pub const fn label(self) -> &'static str {
        match self {
            RateLimitReason::PerAgent => "per_agent",
            RateLimitReason::Global => "global",
            RateLimitReason::UnauthenticatedShare => "unauthenticated_share",
        }
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// An accepted beat (only produced when the sink [`EventSink::wants_beats`]).
    Beat { frame: Frame },
    /// No accepted beat for at least the threshold. `incident` is unique per
    /// processor run (monotonic, from 1) and shared with the matching
    /// [`EventKind::Resume`].
    /// `last_nonce` is the last accepted regular nonce (0 if none);
    /// `last_status` and `last_payload` are what the agent's last accepted
    /// frame carried (trace exporters attach them to the incident).
    Stall {
        incident: u64,
        last_beat_ns: u64,
        last_nonce: u64,
        silence_ns: u64,
        last_status: Status,
        last_payload: u32,
        /// The threshold the agent ran under (its rule's, the default, or learned).
        threshold_ns: u64,
        /// Its learned beat interval, 0 while nothing is learned (learning
        /// off, or still warming up).
        learned_interval_ns: u64,
        /// Its silence spans a blind window: it was given a full threshold
        /// from the first read after the window, and stalled all the same.
        blind: bool,
    },
    /// A stalled agent beat again after `silence_ns` of silence.
    Resume { incident: u64, silence_ns: u64, frame: Frame },
    /// The status carried in frames changed (a new agent counts as coming from `Ok`).
    StatusChange { from: Status, to: Status, frame: Frame },
    /// A terminal frame (Critical, `NONCE_TERMINAL`) was accepted. The agent
    /// stays tracked and will stall.
    Panic { frame: Frame },
    /// The agent's state was dropped (see [`EvictionReason`]); `agent` is the old identity.
    Evicted { reason: EvictionReason },
    /// A new agent could not be tracked: the tracker is full of live agents.
    CapacityExceeded { pid: u32 },
    /// A beat was refused by admission control.
    RateLimited { reason: RateLimitReason },
    /// A beat for a known agent arrived over a weaker transport than its
    /// pinned origin and was refused.
    OriginConflict { from: Transport, to: Transport },
    /// A beat whose nonce does not advance (and is not a new incarnation) was dropped.
    StaleNonce { frame: Frame },
    /// A datagram a receiver refused, forwarded so it appears in the stream.
    Refused(RefusedFrame),
    /// The processor's clock misbehaved (see [`crate::clock::ClockGuard`]).
    ClockAnomaly { kind: ClockAnomalyKind },
    /// The collector could not listen for `duration_ns` (from `start_ns`):
    /// every agent is given a full threshold from the first read after it
    /// (`at_ns`) before it can be declared stalled.
    BlindWindow { cause: BlindCause, start_ns: u64, duration_ns: u64 },
    /// What the stalled agent of `incident` was doing (follows its `Stall`).
    Diagnosis { incident: u64, diagnosis: Diagnosis },
    /// Where the stalled agent of `incident` is stuck was captured, in
    /// `duration_ns` (follows its `Diagnosis`; the details are the
    /// resolver's evidence board's, by agent and incident).
    Evidence { incident: u64, duration_ns: u64 },
    /// A recovery step for `incident`: started, finished, refused or skipped.
    Recovery { incident: u64, report: RecoveryReport },
}

/// One event: when (processor time), about whom (if an agent is known), what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub at_ns: u64,
    pub agent: Option<AgentRef>,
    pub kind: EventKind,
}

/// Receives the processor's events, synchronously, on the processor thread.
pub trait EventSink {
    fn emit(&mut self, event: &Event);

    /// Whether to produce an [`EventKind::Beat`] per accepted beat (off by
    /// default: at a million beats per second most sinks do not want them).
    fn wants_beats(&self) -> bool {
        false
    }
}

/// Collects events into a `Vec` (tests, tools).
impl EventSink for Vec<Event> {
    fn emit(&mut self, event: &Event) {
        self.push(*event);
    }

    fn wants_beats(&self) -> bool {
        true
    }
}

/// Drops every event (benchmarks, or when only counters matter).
#[derive(Debug, Clone, Copy, Default)]
pub struct DiscardSink;

impl EventSink for DiscardSink {
    fn emit(&mut self, _event: &Event) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_small() {
        assert!(std::mem::size_of::<Event>() <= 128, "{}", std::mem::size_of::<Event>());
    }
}
