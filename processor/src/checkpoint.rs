//! Agent state that outlives the process: what a checkpoint keeps of each
//! tracked agent, and how a new processor takes it back.
//!
//! Promises:
//! * **Values, not indices.** A record holds its agent's identity, last
//!   beat (on the processor's clock, which the whole system shares within
//!   one boot), sequence, transport, status, counters, open incident and
//!   what it learned of its own beat; never a class index (the next
//!   configuration may order its rules differently): its class is found
//!   again from the rules, as for a new agent.
//! * **Never blocks the processor for long.** `Processor::export_agents`
//!   copies a bounded range of slots; the caller spreads a checkpoint over
//!   loop iterations and encodes and writes it elsewhere.
//! * **Restores honestly.** `Processor::restore` re-arms every agent by
//!   time at once (their remaining deadlines), keeps stalled ones stalled
//!   under their open incident, continues the incident numbering, and then
//!   reports the gap since the checkpoint as a blind window (cause
//!   `restart`): an agent whose deadline fell inside it gets a full
//!   threshold from the first read, as for any other window in which the
//!   collector could not listen.

use varta_proto::{Source, Status, Transport};

use crate::clock::Clock;

/// One agent as a checkpoint keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentState {
    pub source: Source,
    pub pid: u32,
    pub start_time: u64,
    pub frame_pid: u32,
    pub transport: Transport,
    pub status: Status,
    pub stalled: bool,
    /// Processor time (its clock) of its last accepted beat.
    pub last_beat_ns: u64,
    pub last_nonce: Option<u64>,
    pub last_timestamp: u64,
    pub last_payload: u32,
    pub beats: u64,
    pub stalls: u32,
    /// Its current (or last) incident, whole.
    pub incident: u64,
    pub first_seen_s: u32,
    /// What it learned of its own beat (interval code, gaps seen).
    pub learned: (u16, u8),
}

/// A whole checkpoint: when it was taken and every agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// Processor time it was taken at.
    pub taken_ns: u64,
    pub clock: Clock,
    /// The next incident number.
    pub next_incident: u64,
    /// The exporters' trace-id salt when it was written (opaque here):
    /// with the incident numbers it keeps an incident's trace across a
    /// restart. Filled in by whoever writes the checkpoint.
    pub trace_salt: u64,
    pub agents: Vec<AgentState>,
}

/// Where the processor hands finished checkpoints (a writer thread's
/// queue). `offer` must not block: a busy writer skips one.
pub trait CheckpointSink: Send {
    fn offer(&mut self, checkpoint: Checkpoint);
}

/// Agents copied per step of a checkpoint in progress: the longest step
/// measured 0.3–0.7 ms of the processor's time at a million agents
/// (release build, a 2-core VM; see BENCHMARKS.md), inside the 1 ms the
/// processor may be held; the rest of the loop iteration goes on as usual.
pub const STEP: usize = 4096;

/// A processor's periodic checkpoints: every `interval_ns`, copied
/// [`STEP`] agents per loop iteration, handed to `sink` when whole.
pub(crate) struct Checkpoints {
    pub(crate) sink: Box<dyn CheckpointSink>,
    pub(crate) interval_ns: u64,
    pub(crate) next_due_ns: u64,
    /// In progress: the next slot to copy, what was copied.
    pub(crate) job: Option<(usize, Vec<AgentState>)>,
}

impl std::fmt::Debug for Checkpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoints").field("interval_ns", &self.interval_ns).finish_non_exhaustive()
    }
}

impl Checkpoint {
    /// The same agents with their times moved from clock `from` to clock
    /// `to` (a reload that changed `clock`): each time keeps its distance
    /// from now.
    pub fn rebased(mut self, from: Clock, to: Clock) -> Checkpoint {
        if from == to {
            return self;
        }
        let (was, is) = (from.now_ns() as i128, to.now_ns() as i128);
        let move_ns = |t: u64| (t as i128 - was + is).clamp(0, i128::from(u64::MAX)) as u64;
        self.taken_ns = move_ns(self.taken_ns);
        for a in &mut self.agents {
            a.last_beat_ns = move_ns(a.last_beat_ns);
        }
        self.clock = to;
        self
    }
}

/// What `Processor::restore` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    pub agents: usize,
    /// Agents left out: the tracker was full (a smaller `capacity`).
    pub dropped: usize,
    pub stalled: usize,
}
