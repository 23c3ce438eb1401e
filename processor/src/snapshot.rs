//! The published view of a processor: every counter and every agent's
//! state, as one immutable [`Snapshot`] that any thread may read.
//!
//! Promises:
//! * **One writer, never blocked.** Only the processor thread builds and
//!   publishes snapshots ([`Publisher`]); readers ([`SnapshotReader`]) load
//!   the latest one atomically (`arc-swap`) and can never delay the
//!   processor, however many there are or however long they hold it.
//! * **Consistent cut.** A snapshot is built between two batches on the
//!   processor thread: its counters, its agent list and `agents_tracked`
//!   agree with each other, and every event it counts was already handed to
//!   the exporters before it was published.
//! * **Bounded cost.** Publication happens at most once per
//!   `snapshot_interval` while something changes (plus once on demand and
//!   once at shutdown), never per beat, and nothing is published while
//!   nothing changes. Agent views are kept in chunks of
//!   [`VIEW_CHUNK`] slots; a publication copies only the chunks whose
//!   slots changed and shares the rest with the previous snapshot.
//! * **Freshness.** The latest snapshot is at most `snapshot_interval`
//!   behind the processor. [`SnapshotReader::is_current`] says whether
//!   anything changed since it was taken, and [`SnapshotReader::request`]
//!   asks for the next one as soon as the processor next handles a batch
//!   (an idle processor with changes publishes them when the interval has
//!   passed; [`SnapshotReader::fresh`] waits for that).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use varta_proto::{Status, Transport};

use crate::agent::AgentId;
use crate::clock::Clock;
use crate::stats::StatsSnapshot;
use crate::tracker::{Slot, Tracker, VIEW_CHUNK};

/// One agent's state, as published views see it (kept compact: a million
/// of them live in every snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentView {
    pub id: AgentId,
    /// The pid in the agent's frames (see [`crate::AgentRef::frame_pid`]).
    pub frame_pid: u32,
    /// Processor time of its first admission, in whole seconds (see
    /// [`AgentView::first_seen_ns`]). (Its host pid is `id.pid`.)
    pub first_seen_s: u32,
    pub stalls: u32,
    /// Pinned origin.
    pub transport: Transport,
    /// Status of the last accepted frame, or `Stall` while stalled.
    pub status: Status,
    /// Its threshold class: [`Snapshot::threshold_ns_of`] tells the threshold.
    pub class: u8,
    pub beats: u64,
    /// Processor time of the last accepted beat (or of first admission).
    pub last_beat_ns: u64,
}

impl AgentView {
    /// Processor time its cumulative series start at: its first admission
    /// (to the second; a series must not start after its first point, so
    /// never later than its last beat).
    pub fn first_seen_ns(&self) -> u64 {
        (u64::from(self.first_seen_s) * 1_000_000_000).min(self.last_beat_ns)
    }

    /// The agent as events refer to it.
    pub fn agent_ref(&self) -> crate::AgentRef {
        crate::AgentRef {
            id: self.id,
            frame_pid: self.frame_pid,
            host_pid: self.id.pid,
            transport: self.transport,
        }
    }

    pub fn of(slot: &Slot) -> AgentView {
        let agent = slot.agent_ref();
        AgentView {
            id: agent.id,
            frame_pid: agent.frame_pid,
            stalls: slot.stalls,
            transport: agent.transport,
            status: if slot.is_stalled() { Status::Stall } else { slot.status },
            class: slot.class(),
            beats: slot.beats,
            last_beat_ns: slot.last_beat_ns,
            first_seen_s: slot.first_seen_s,
        }
    }
}

/// Everything the tracker holds about one agent (for tests and tools;
/// see [`crate::Processor::agent_states`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentState {
    pub id: AgentId,
    pub frame_pid: u32,
    pub host_pid: u32,
    pub transport: Transport,
    pub status: Status,
    pub beats: u64,
    pub stalls: u64,
    pub last_beat_ns: u64,
    /// Last accepted regular nonce (0 before the first regular frame).
    pub last_nonce: u64,
    pub last_payload: u32,
}

impl AgentState {
    pub fn of(slot: &Slot) -> AgentState {
        let agent = slot.agent_ref();
        AgentState {
            id: agent.id,
            frame_pid: agent.frame_pid,
            host_pid: agent.host_pid,
            transport: agent.transport,
            status: if slot.is_stalled() { Status::Stall } else { slot.status },
            beats: slot.beats,
            stalls: u64::from(slot.stalls),
            last_beat_ns: slot.last_beat_ns,
            last_nonce: slot.last_nonce().unwrap_or(0),
            last_payload: slot.last_payload,
        }
    }
}

/// Everything a processor knows, at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// 0 for the empty snapshot before the first publication, then 1, 2, …
    pub seq: u64,
    /// Processor time (its clock) when the snapshot was taken.
    pub taken_ns: u64,
    pub clock: Clock,
    /// The default threshold (`tracker.threshold`).
    pub threshold_ns: u64,
    /// The threshold of every class (index: [`AgentView::class`]).
    pub class_ns: Arc<[u64]>,
    /// The processor's `snapshot_interval`, in nanoseconds.
    pub interval_ns: u64,
    pub stats: StatsSnapshot,
    chunks: Vec<Arc<[AgentView]>>,
}

impl Snapshot {
    /// Every tracked agent, in slot order.
    pub fn agents(&self) -> impl Iterator<Item = &AgentView> {
        self.chunks.iter().flat_map(|c| c.iter())
    }

    /// The agent views in slot order, chunk by chunk (shared, not copied):
    /// for readers that want to let go of each chunk once read rather than
    /// hold the whole snapshot for as long as they work on it.
    pub fn agent_chunks(&self) -> Vec<Arc<[AgentView]>> {
        self.chunks.clone()
    }

    /// Bytes held by the agent views (shared with other snapshots where
    /// chunks did not change).
    pub fn memory_bytes(&self) -> usize {
        self.chunks.iter().map(|c| c.len() * std::mem::size_of::<AgentView>()).sum::<usize>()
            + self.chunks.capacity() * std::mem::size_of::<Arc<[AgentView]>>()
    }

    /// The threshold `agent` runs under.
    pub fn threshold_ns_of(&self, agent: &AgentView) -> u64 {
        self.class_ns.get(usize::from(agent.class)).copied().unwrap_or(self.threshold_ns)
    }

    /// Number of tracked agents (equals `stats.agents_tracked`).
    pub fn agent_count(&self) -> usize {
        self.chunks.iter().map(|c| c.len()).sum()
    }
}

#[derive(Debug)]
struct Shared {
    latest: ArcSwap<Snapshot>,
    requested: AtomicBool,
    /// The processor's state changed since `latest` was taken.
    pending: AtomicBool,
}

/// Read side: cheap to clone, any thread.
#[derive(Debug, Clone)]
pub struct SnapshotReader {
    shared: Arc<Shared>,
}

impl SnapshotReader {
    /// Which processor's snapshots these are (by address): a rebuilt
    /// processor has another.
    pub fn identity(&self) -> usize {
        Arc::as_ptr(&self.shared) as usize
    }

    /// The latest published snapshot.
    pub fn latest(&self) -> Arc<Snapshot> {
        self.shared.latest.load_full()
    }

    /// Asks the processor to publish at its next batch instead of waiting
    /// for the interval.
    pub fn request(&self) {
        self.shared.requested.store(true, Ordering::Relaxed);
    }

    /// Whether nothing changed since the latest snapshot was taken.
    pub fn is_current(&self) -> bool {
        !self.shared.pending.load(Ordering::Acquire)
    }

    /// The latest snapshot once it is current: asks for a publication and
    /// waits for one while changes are pending — at most until the
    /// processor's interval has passed (plus `slack`), after which it returns
    /// the latest anyway (the processor may be wedged).
    pub fn fresh(&self, slack: std::time::Duration) -> Arc<Snapshot> {
        let first = self.latest();
        if self.is_current() {
            return first;
        }
        self.request();
        let deadline = std::time::Instant::now() + std::time::Duration::from_nanos(first.interval_ns) + slack;
        loop {
            let latest = self.latest();
            if latest.seq != first.seq || self.is_current() || std::time::Instant::now() >= deadline {
                return latest;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

/// Write side, owned by the processor.
#[derive(Debug)]
pub struct Publisher {
    shared: Arc<Shared>,
    chunks: Vec<Arc<[AgentView]>>,
    interval_ns: u64,
    last_ns: Option<u64>,
    seq: u64,
    clock: Clock,
    class_ns: Arc<[u64]>,
    /// Something changed since the last publication.
    dirty: bool,
    /// Scratch list of changed chunk indices (kept to reuse its allocation).
    changed: Vec<usize>,
}

impl Publisher {
    /// `class_ns`: the threshold of every class (class 0 the default).
    pub fn new(interval_ns: u64, clock: Clock, class_ns: &[u64]) -> Publisher {
        let class_ns: Arc<[u64]> = Arc::from(class_ns);
        let threshold_ns = class_ns.first().copied().unwrap_or(0);
        let empty = Snapshot {
            clock,
            threshold_ns,
            class_ns: Arc::clone(&class_ns),
            interval_ns,
            ..Snapshot::default()
        };
        Publisher {
            shared: Arc::new(Shared {
                latest: ArcSwap::from_pointee(empty),
                requested: AtomicBool::new(false),
                pending: AtomicBool::new(false),
            }),
            chunks: Vec::new(),
            interval_ns,
            last_ns: None,
            seq: 0,
            clock,
            class_ns,
            dirty: false,
            changed: Vec::new(),
        }
    }

    /// The thresholds changed (a reload); the next snapshot carries them.
    pub fn set_classes(&mut self, class_ns: &[u64]) {
        self.class_ns = Arc::from(class_ns);
    }

    pub fn reader(&self) -> SnapshotReader {
        SnapshotReader { shared: Arc::clone(&self.shared) }
    }

    /// Notes that the processor's state changed (one atomic store per
    /// publication period, not per call).
    #[inline]
    pub fn mark_dirty(&mut self) {
        if !self.dirty {
            self.dirty = true;
            self.shared.pending.store(true, Ordering::Release);
        }
    }

    /// When the next publication is due, if anything waits to be published.
    pub fn due_at(&self) -> Option<u64> {
        self.dirty.then(|| self.last_ns.map_or(0, |t| t.saturating_add(self.interval_ns)))
    }

    /// Whether a publication is due at `now_ns`: something changed and the
    /// interval has passed, or a reader asked.
    pub fn is_due(&self, now_ns: u64) -> bool {
        self.due_at().is_some_and(|at| now_ns >= at)
            || (self.dirty && self.shared.requested.load(Ordering::Relaxed))
    }

    /// Publishes now, whatever changed.
    pub fn publish(&mut self, now_ns: u64, tracker: &mut Tracker, stats: StatsSnapshot) {
        let wanted = tracker.len().div_ceil(VIEW_CHUNK);
        self.chunks.truncate(wanted);
        self.chunks.resize_with(wanted, || Arc::from(Vec::new()));
        let mut changed = std::mem::take(&mut self.changed);
        tracker.take_changed_chunks(|c| changed.push(c));
        for &c in &changed {
            if let Some(chunk) = self.chunks.get_mut(c) {
                *chunk = tracker.chunk(c).iter().map(AgentView::of).collect();
            }
        }
        changed.clear();
        self.changed = changed;
        self.shared.requested.store(false, Ordering::Relaxed);
        self.seq += 1;
        self.last_ns = Some(now_ns);
        self.dirty = false;
        let snapshot = Snapshot {
            seq: self.seq,
            taken_ns: now_ns,
            clock: self.clock,
            threshold_ns: self.class_ns.first().copied().unwrap_or(0),
            class_ns: Arc::clone(&self.class_ns),
            interval_ns: self.interval_ns,
            stats,
            chunks: self.chunks.clone(),
        };
        self.shared.latest.store(Arc::new(snapshot));
        // After the store: a reader that sees "current" sees this snapshot.
        self.shared.pending.store(false, Ordering::Release);
    }
}
