//! The seam between the processor and whatever inspects agents on the host
//! (attributes from `/proc`, stall diagnosis): the processor never reads
//! `/proc` itself. It tells an [`Inspector`] about agents that start, stall
//! and go, and polls it for finished diagnoses, which it emits as
//! [`crate::EventKind::Diagnosis`] events in the same stream, after the
//! stall they explain.
//!
//! Promises the processor relies on: every method returns at once (no
//! I/O, no blocking, no allocation per call in steady state); an inspector
//! that cannot keep up drops work and counts it instead of pushing back.

use crate::agent::{AgentId, AgentRef};
use crate::threshold::{AgentAttributes, Unresolved};

/// What a stalled process was doing, judged from two looks at `/proc`
/// (at detection and a window later).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// Gone, or its pid now belongs to another process: a crash, not a hang.
    Exited,
    /// Dead but not reaped by its parent.
    Zombie,
    /// Stopped (SIGSTOP) or stopped under a tracer/debugger.
    Stopped,
    /// At least one thread burning CPU: a busy loop or livelock.
    Spinning,
    /// Threads in uninterruptible sleep (D): stuck in I/O.
    BlockedIo,
    /// Every thread asleep: a lock, a wedged event loop, a lost wake-up
    /// (see the diagnosis' `wchan`).
    Waiting,
    /// The process cannot be told apart from another one (its start time
    /// was never read, e.g. `/proc` mounted with `hidepid`): nothing about
    /// it is judged.
    Unknown,
}

impl Cause {
    pub const ALL: [Cause; 7] = [
        Cause::Exited,
        Cause::Zombie,
        Cause::Stopped,
        Cause::Spinning,
        Cause::BlockedIo,
        Cause::Waiting,
        Cause::Unknown,
    ];
    pub const COUNT: usize = Cause::ALL.len();

    pub const fn label(self) -> &'static str {
        match self {
            Cause::Exited => "exited",
            Cause::Zombie => "zombie",
            Cause::Stopped => "stopped",
            Cause::Spinning => "spinning",
            Cause::BlockedIo => "blocked_io",
            Cause::Waiting => "waiting",
            Cause::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<Cause> {
        Cause::ALL.into_iter().find(|c| c.label() == s)
    }
}

/// The kernel wait channel most sleeping threads wait in (`/proc/…/wchan`,
/// e.g. `futex_wait_queue`), truncated to fit a `Copy` event.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Wchan([u8; 22], u8);

impl Wchan {
    pub fn new(name: &str) -> Wchan {
        let mut w = Wchan::default();
        let n = name.len().min(w.0.len());
        w.0[..n].copy_from_slice(&name.as_bytes()[..n]);
        w.1 = n as u8;
        w
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0[..usize::from(self.1)]).unwrap_or("")
    }
}

impl std::fmt::Debug for Wchan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// The diagnosis of one stall (heap-free, `Copy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Diagnosis {
    pub cause: Cause,
    /// Threads by state at the second look: running, sleeping, disk (D),
    /// stopped/traced (T/t), zombie.
    pub threads: u16,
    pub running: u16,
    pub sleeping: u16,
    pub disk: u16,
    pub stopped: u16,
    /// CPU used over the window, in per mille of one core (1000 = one core busy).
    pub cpu_permille: u32,
    pub rss_kib: u32,
    pub voluntary_switches: u32,
    pub involuntary_switches: u32,
    /// Pid of the tracer (debugger) attached, 0 if none.
    pub tracer_pid: u32,
    pub wchan: Wchan,
    /// From the first look to the second, in milliseconds (the diagnosis
    /// span lasts this long; `window` is at most 10 s).
    pub took_ms: u16,
}

impl Diagnosis {
    /// The details as `key=value` pairs separated by `;` (no spaces or
    /// tabs: one TSV column), e.g. `threads=3;running=1;…;wchan=futex_wait_queue`.
    pub fn details(&self) -> impl std::fmt::Display + '_ {
        DiagnosisDetails(self)
    }
}

struct DiagnosisDetails<'a>(&'a Diagnosis);

impl std::fmt::Display for DiagnosisDetails<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.0;
        write!(
            f,
            "threads={};running={};sleeping={};disk={};stopped={};cpu_permille={};rss_kib={};\
             voluntary_switches={};involuntary_switches={};tracer_pid={};wchan={}",
            d.threads,
            d.running,
            d.sleeping,
            d.disk,
            d.stopped,
            d.cpu_permille,
            d.rss_kib,
            d.voluntary_switches,
            d.involuntary_switches,
            d.tracer_pid,
            if d.wchan.as_str().is_empty() { "-" } else { d.wchan.as_str() }
        )
    }
}

/// A finished diagnosis, handed back to the processor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Diagnosed {
    pub agent: AgentRef,
    pub incident: u64,
    pub diagnosis: Diagnosis,
}

/// Evidence of where a stalled agent is stuck was captured (its details
/// are the inspector's: exporters read them by agent and incident).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evidenced {
    pub agent: AgentRef,
    pub incident: u64,
    /// How long the capture took.
    pub duration_ns: u64,
}

/// Told about agents by the processor thread; see the module docs.
pub trait Inspector: Send {
    /// A new agent (or a new incarnation) was admitted at `now_ns`.
    fn agent_started(&mut self, agent: &AgentRef, now_ns: u64);
    /// An agent stalled (incident `incident`) at `now_ns`. Returns false if
    /// the stall will not be diagnosed (budget spent, not a local agent,
    /// backlog full).
    fn agent_stalled(&mut self, agent: &AgentRef, incident: u64, now_ns: u64) -> bool;
    /// An agent was taken back from a checkpoint (last heard at
    /// `last_beat_ns`). After a `restart` its identity is checked at once:
    /// one found gone, or its pid another process's, is handed back by
    /// [`Inspector::take_exited`]. Otherwise as [`Inspector::agent_started`].
    fn agent_restored(&mut self, agent: &AgentRef, last_beat_ns: u64, _restart: bool) {
        self.agent_started(agent, last_beat_ns);
    }
    /// The agent's state was dropped.
    fn agent_gone(&mut self, agent: &AgentId);
    /// Hands over every finished diagnosis (`now_ns`: processor time).
    fn poll(&mut self, now_ns: u64, out: &mut dyn FnMut(Diagnosed));
    /// Hands over every finished evidence capture (after the diagnoses:
    /// evidence follows its stall's diagnosis).
    fn poll_evidence(&mut self, _out: &mut dyn FnMut(Evidenced)) {}
    /// When the processor should poll again at the latest (processor time),
    /// while diagnoses are outstanding.
    fn next_poll(&self) -> Option<u64>;
    /// Appends the agents the inspector answered for since the last call —
    /// resolved, or found unreadable — so threshold rules on attributes
    /// apply to them (or their provisional rule falls back).
    fn take_resolved(&mut self, _out: &mut Vec<AgentId>) {}
    /// Appends restored agents found gone, or whose pid is now another
    /// process's, since the last call (see [`Inspector::agent_restored`]).
    fn take_exited(&mut self, _out: &mut Vec<AgentId>) {}
    /// Calls `f` with the agent's resolved attributes ([`Unresolved`] when
    /// there are none). Returns at once: a short read, no I/O.
    fn with_attributes(&self, _agent: &AgentId, f: &mut dyn FnMut(&dyn AgentAttributes)) {
        f(&Unresolved)
    }
}
