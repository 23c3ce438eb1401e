//! Who an agent is — the identity every other module (tracker, events,
//! inspection, recovery) speaks of.
//!
//! Promises: plain `Copy` data, no heap, no behaviour beyond equality and
//! hashing. This module imports nothing from the rest of the crate, so
//! [`crate::event`], [`crate::inspect`] and [`crate::recovery`] can all
//! depend on it without depending on each other.

use varta_proto::{Source, Transport};

/// Who an agent is: where it lives, its pid, and its process start time
/// (clock ticks since boot as in `/proc/<pid>/stat` field 22; 0 when
/// unknown, which is always the case for network sources).
///
/// `pid` is the pid in the collector's pid namespace for kernel-attested
/// (UDS) agents — unique on the host, so two containers whose agents both
/// write pid 1 or 2 in their frames are two agents — and the pid written in
/// the frames for network agents (all a network sender can tell).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AgentId {
    pub source: Source,
    pub pid: u32,
    pub start_time: u64,
}

/// An agent as events refer to it: its identity plus the facts later
/// stages need (recovery acts on `host_pid`, trust follows `transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AgentRef {
    pub id: AgentId,
    /// The pid the agent writes in its frames (its own pid namespace's;
    /// equals `id.pid` unless it lives in another pid namespace).
    pub frame_pid: u32,
    /// The pid in the collector's pid namespace (differs from `id.pid` for
    /// UDS agents in other pid namespaces).
    pub host_pid: u32,
    /// The pinned origin: the strongest transport this agent has used.
    pub transport: Transport,
}
