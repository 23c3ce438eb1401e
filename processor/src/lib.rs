//! varta-processor — the liveness engine of the varta collector.
//!
//! It turns attested beats ([`varta_proto::Batch`]) into per-agent liveness
//! state and [`Event`]s (stalls, resumes, status changes, panics, refusals).
//! It owns all agent state, is driven by one thread and knows nothing about
//! sockets or OTLP. Two collector processors are configured here:
//! `ratelimit` ([`RateLimitConfig`]) and `tracker` ([`TrackerConfig`]).
//!
//! Modules, one job each:
//! * [`config`]: YAML/serde configuration, defaults and validation
//!   (errors name the field).
//! * [`clock`]: `CLOCK_MONOTONIC` / `CLOCK_BOOTTIME` readings and the guard
//!   that keeps processor time monotonic and counts anomalies.
//! * [`ratelimit`]: per-agent minimum interval and global token bucket, O(1).
//! * [`threshold`]: which threshold each agent runs under — rules by
//!   attribute, transport and source, and thresholds learned from the
//!   agent's own beat — as a few numbered classes.
//! * [`tracker`]: slab of agent slots, hash index, intrusive live/stalled
//!   recency lists per threshold class; O(1) per beat, exact next deadline,
//!   bounded memory.
//! * [`agent`]: who an agent is ([`AgentId`], [`AgentRef`]), the data
//!   types `event`, `inspect` and `recovery` share (so none imports another's).
//! * [`event`]: the `Copy`, heap-free events and the [`EventSink`] trait.
//! * [`inspect`]: the [`Inspector`] seam (attributes, stall diagnosis) —
//!   implemented outside, because the processor never reads `/proc`.
//! * [`stats`]: single-writer atomic counters, every series present at zero.
//! * [`snapshot`]: the published, immutable view of counters and agents
//!   that metrics views read without ever blocking the processor.
//! * [`recovery`]: the `recovery` processor — operator commands on stalls,
//!   gated and bounded, on a runner thread, with a hash-chained audit log.
//! * [`processor`]: ties them together ([`Processor`]) and runs the loop.

pub mod agent;
pub mod checkpoint;
mod checkpointing;
pub mod clock;
pub mod config;
pub mod event;
pub mod inspect;
pub mod processor;
pub mod ratelimit;
pub mod recovery;
pub mod snapshot;
pub mod stats;
pub mod threshold;
pub mod tracker;

pub use agent::{AgentId, AgentRef};
pub use clock::{Clock, ClockAnomalyKind};
pub use config::{ConfigError, RateLimitConfig, TrackerConfig};
pub use event::{BlindCause, DiscardSink, Event, EventKind, EventSink, EvictionReason, RateLimitReason};
pub use inspect::{Cause, Diagnosed, Diagnosis, Evidenced, Inspector, Wchan};
pub use processor::{Ended, Processor, StartTimeProbe};
pub use recovery::{RecoveryConfig, RecoveryOutcome, RecoveryRefusal, RecoveryReport};
pub use snapshot::{AgentState, AgentView, Snapshot, SnapshotReader};
pub use stats::{ProcessorStats, STALL_DURATION_BOUNDS_NS, StallDurations, StatsSnapshot};
pub use threshold::{AdaptiveConfig, AgentAttributes, AttributeKey, ThresholdRule};
