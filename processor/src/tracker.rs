//! Agent state storage and stall scheduling structures.
//!
//! Promises:
//! * One [`Slot`] per tracked agent in a slab (`Vec`), found through a
//!   `hashbrown::HashTable<u32>` of slot indices keyed by (source, key pid:
//!   the host pid for kernel-attested UDS agents, the frame pid otherwise)
//!   — the key is stored once, in the slot. Lookup, insert and replacement
//!   are O(1); nothing allocates except when a *new* agent grows the slab
//!   (never beyond `capacity`) or the index.
//! * Two intrusive doubly-linked lists through the slots (`u32` links):
//!   the *live* list in order of last accepted beat (head = next to stall,
//!   because the threshold is shared) and the *stalled* list in order of
//!   stall (head = eviction candidate). [`Tracker::touch`] moves an agent to
//!   the live tail in O(1); [`Tracker::next_deadline`] is the live head's
//!   last beat + threshold. No scan over agents ever happens on the hot path.
//! * Memory per agent is bounded: [`Tracker::memory_bytes`] accounts the slab
//!   and index allocations (≈ 110–130 bytes per agent at 1,000,000 agents).
//!
//! The tracker keeps the lists ordered only if callers feed it
//! non-decreasing times (the processor's [`crate::clock::ClockGuard`] does).

use hashbrown::{DefaultHashBuilder, HashTable};
use std::hash::BuildHasher;
use varta_proto::{Source, Status, Transport};

use crate::agent::{AgentId, AgentRef};

/// "No slot" in the intrusive links.
const NIL: u32 = u32::MAX;

const STALLED: u8 = 1;
const HAS_NONCE: u8 = 2;

/// One tracked agent.
#[derive(Debug, Clone)]
pub struct Slot {
    source: Source,
    pid: u32,
    pub(crate) host_pid: u32,
    start_time: u64,
    /// Processor time of the last accepted beat (the stall clock).
    pub(crate) last_beat_ns: u64,
    /// Processor time of the last beat admitted by the per-agent rate limit.
    pub(crate) last_admitted_ns: u64,
    pub(crate) last_nonce: u64,
    pub(crate) last_timestamp: u64,
    pub(crate) beats: u64,
    /// The current (or last) stall incident of this agent.
    pub(crate) incident: u64,
    pub(crate) stalls: u32,
    pub(crate) last_payload: u32,
    /// The pid written in the agent's frames (its own pid namespace's).
    pub(crate) frame_pid: u32,
    prev: u32,
    next: u32,
    pub(crate) transport: Transport,
    /// Status carried by the last accepted frame.
    pub(crate) status: Status,
    flags: u8,
}

impl Slot {
    /// A fresh agent, first seen (admitted) at `now_ns`; no beat accepted yet.
    pub fn new(
        source: Source,
        pid: u32,
        host_pid: u32,
        start_time: u64,
        transport: Transport,
        now_ns: u64,
    ) -> Slot {
        Slot {
            source,
            pid,
            host_pid,
            start_time,
            last_beat_ns: now_ns,
            last_admitted_ns: now_ns,
            last_nonce: 0,
            last_timestamp: 0,
            beats: 0,
            incident: 0,
            stalls: 0,
            last_payload: 0,
            frame_pid: pid,
            prev: NIL,
            next: NIL,
            transport,
            status: Status::Ok,
            flags: 0,
        }
    }

    /// Sets the frame pid when it differs from the key pid (a UDS agent in
    /// another pid namespace).
    pub fn with_frame_pid(mut self, frame_pid: u32) -> Slot {
        self.frame_pid = frame_pid;
        self
    }

    pub fn agent_ref(&self) -> AgentRef {
        AgentRef {
            id: AgentId { source: self.source, pid: self.pid, start_time: self.start_time },
            frame_pid: self.frame_pid,
            host_pid: self.host_pid,
            transport: self.transport,
        }
    }

    pub fn is_stalled(&self) -> bool {
        self.flags & STALLED != 0
    }

    /// The last accepted regular nonce, if any regular frame was accepted.
    pub fn last_nonce(&self) -> Option<u64> {
        (self.flags & HAS_NONCE != 0).then_some(self.last_nonce)
    }

    pub(crate) fn set_last_nonce(&mut self, nonce: u64) {
        self.last_nonce = nonce;
        self.flags |= HAS_NONCE;
    }

    pub fn start_time(&self) -> u64 {
        self.start_time
    }

    pub(crate) fn set_start_time(&mut self, start_time: u64) {
        self.start_time = start_time;
    }

    fn key_matches(&self, source: &Source, pid: u32) -> bool {
        self.pid == pid && self.source == *source
    }
}

/// Head and tail of one intrusive list.
#[derive(Debug, Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
}

impl List {
    const EMPTY: List = List { head: NIL, tail: NIL };
}

fn link_tail(slots: &mut [Slot], list: &mut List, idx: u32) {
    let i = idx as usize;
    slots[i].prev = list.tail;
    slots[i].next = NIL;
    if list.tail == NIL {
        list.head = idx;
    } else {
        slots[list.tail as usize].next = idx;
    }
    list.tail = idx;
}

fn unlink(slots: &mut [Slot], list: &mut List, idx: u32) {
    let (prev, next) = (slots[idx as usize].prev, slots[idx as usize].next);
    if prev == NIL {
        list.head = next;
    } else {
        slots[prev as usize].next = next;
    }
    if next == NIL {
        list.tail = prev;
    } else {
        slots[next as usize].prev = prev;
    }
    slots[idx as usize].prev = NIL;
    slots[idx as usize].next = NIL;
}

/// Slots per view chunk: the published snapshot copies agent views in
/// chunks of this many slots, and only chunks whose slots changed.
pub const VIEW_CHUNK: usize = 1024;

/// Initial slab/index reservation bound.
const INITIAL_RESERVATION: usize = 4096;

/// All tracked agents plus the two recency lists.
#[derive(Debug)]
pub struct Tracker {
    slots: Vec<Slot>,
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    capacity: usize,
    threshold_ns: u64,
    live: List,
    stalled: List,
    stalled_len: usize,
    /// One bit per [`VIEW_CHUNK`] of slots: set when a slot in it changed
    /// since the last [`Tracker::take_changed_chunks`].
    changed: Vec<u64>,
}

impl Tracker {
    /// `capacity` must be ≥ 1 and < `u32::MAX` (validated by `TrackerConfig`).
    pub fn new(capacity: usize, threshold_ns: u64) -> Tracker {
        let capacity = capacity.clamp(1, NIL as usize - 1);
        let initial = capacity.min(INITIAL_RESERVATION);
        Tracker {
            slots: Vec::with_capacity(initial),
            index: HashTable::with_capacity(initial),
            hasher: DefaultHashBuilder::default(),
            capacity,
            threshold_ns,
            live: List::EMPTY,
            stalled: List::EMPTY,
            stalled_len: 0,
            changed: Vec::new(),
        }
    }

    #[inline]
    fn note_change(&mut self, idx: u32) {
        let chunk = idx as usize / VIEW_CHUNK;
        if let Some(word) = self.changed.get_mut(chunk / 64) {
            *word |= 1 << (chunk % 64);
        }
    }

    /// Calls `f` with every chunk index that changed since the last call,
    /// in ascending order, and clears the marks.
    pub fn take_changed_chunks(&mut self, mut f: impl FnMut(usize)) {
        for (w, word) in self.changed.iter_mut().enumerate() {
            let mut bits = std::mem::take(word);
            while bits != 0 {
                f(w * 64 + bits.trailing_zeros() as usize);
                bits &= bits - 1;
            }
        }
    }

    /// The slots of view chunk `chunk` (empty past the end).
    pub fn chunk(&self, chunk: usize) -> &[Slot] {
        let start = (chunk * VIEW_CHUNK).min(self.slots.len());
        let end = (start + VIEW_CHUNK).min(self.slots.len());
        &self.slots[start..end]
    }

    /// Agents currently stalled.
    pub fn stalled_len(&self) -> usize {
        self.stalled_len
    }

    pub fn threshold_ns(&self) -> u64 {
        self.threshold_ns
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.slots.len() >= self.capacity
    }

    /// Hash of an agent key, for [`Tracker::find`], [`Tracker::insert`] and [`Tracker::replace`].
    #[inline]
    pub fn hash(&self, source: &Source, pid: u32) -> u64 {
        self.hasher.hash_one((source, pid))
    }

    #[inline]
    pub fn find(&self, hash: u64, source: &Source, pid: u32) -> Option<u32> {
        let slots = &self.slots;
        self.index.find(hash, |&i| slots[i as usize].key_matches(source, pid)).copied()
    }

    #[inline]
    pub fn slot(&self, idx: u32) -> &Slot {
        &self.slots[idx as usize]
    }

    #[inline]
    pub fn slot_mut(&mut self, idx: u32) -> &mut Slot {
        self.note_change(idx);
        &mut self.slots[idx as usize]
    }

    pub fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter()
    }

    /// Adds a new agent at the live tail. `None` when the tracker is full.
    pub fn insert(&mut self, hash: u64, slot: Slot) -> Option<u32> {
        if self.is_full() {
            return None;
        }
        if self.slots.len() == self.slots.capacity() {
            // Grow geometrically, but never past the configured capacity.
            let target = self.slots.capacity().saturating_mul(2).clamp(1, self.capacity);
            self.slots.reserve_exact(target - self.slots.len());
        }
        let idx = u32::try_from(self.slots.len()).ok()?;
        self.slots.push(slot);
        let words = (self.slots.len().div_ceil(VIEW_CHUNK)).div_ceil(64);
        if self.changed.len() < words {
            self.changed.resize(words, 0);
        }
        self.note_change(idx);
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index.insert_unique(hash, idx, |&i| {
            let s = &slots[i as usize];
            hasher.hash_one((&s.source, s.pid))
        });
        link_tail(&mut self.slots, &mut self.live, idx);
        Some(idx)
    }

    /// Puts a new agent (with a different key) in the place of `victim`,
    /// which leaves the index and its list. The new agent joins the live tail.
    pub fn replace(&mut self, victim: u32, hash: u64, slot: Slot) {
        self.unlink_any(victim);
        let old = &self.slots[victim as usize];
        let old_hash = self.hash(&old.source, old.pid);
        if let Ok(entry) = self.index.find_entry(old_hash, |&i| i == victim) {
            entry.remove();
        }
        self.slots[victim as usize] = slot;
        self.note_change(victim);
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index.insert_unique(hash, victim, |&i| {
            let s = &slots[i as usize];
            hasher.hash_one((&s.source, s.pid))
        });
        link_tail(&mut self.slots, &mut self.live, victim);
    }

    /// Starts a new incarnation of the agent in `idx` (same key): its state
    /// is replaced by `slot` and it joins the live tail.
    pub fn reincarnate(&mut self, idx: u32, slot: Slot) {
        self.unlink_any(idx);
        self.slots[idx as usize] = slot;
        self.note_change(idx);
        link_tail(&mut self.slots, &mut self.live, idx);
    }

    fn unlink_any(&mut self, idx: u32) {
        if self.slots[idx as usize].is_stalled() {
            unlink(&mut self.slots, &mut self.stalled, idx);
            self.stalled_len -= 1;
        } else {
            unlink(&mut self.slots, &mut self.live, idx);
        }
    }

    /// Records an accepted beat at `now_ns`: the agent moves to the live
    /// tail (leaving the stalled list if it was stalled).
    #[inline]
    pub fn touch(&mut self, idx: u32, now_ns: u64) {
        self.unlink_any(idx);
        self.note_change(idx);
        let slot = &mut self.slots[idx as usize];
        slot.flags &= !STALLED;
        slot.last_beat_ns = now_ns;
        link_tail(&mut self.slots, &mut self.live, idx);
    }

    /// When the next live agent stalls, if any agent is live.
    #[inline]
    pub fn next_deadline(&self) -> Option<u64> {
        (self.live.head != NIL)
            .then(|| self.slots[self.live.head as usize].last_beat_ns.saturating_add(self.threshold_ns))
    }

    /// The live agent whose deadline is ≤ `now_ns`, if any (the live head).
    #[inline]
    pub fn due(&self, now_ns: u64) -> Option<u32> {
        self.next_deadline().filter(|&d| d <= now_ns).map(|_| self.live.head)
    }

    /// Moves a live agent to the stalled tail.
    pub fn mark_stalled(&mut self, idx: u32) {
        if self.slots[idx as usize].is_stalled() {
            return;
        }
        unlink(&mut self.slots, &mut self.live, idx);
        self.slots[idx as usize].flags |= STALLED;
        link_tail(&mut self.slots, &mut self.stalled, idx);
        self.stalled_len += 1;
        self.note_change(idx);
    }

    /// The agent that stalled first among those still stalled.
    pub fn oldest_stalled(&self) -> Option<u32> {
        (self.stalled.head != NIL).then_some(self.stalled.head)
    }

    /// Bytes held by the slab and the index (capacities × element sizes).
    pub fn memory_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.index.allocation_size()
            + self.changed.capacity() * std::mem::size_of::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(t: &mut Tracker, pid: u32, now: u64) -> Option<u32> {
        let h = t.hash(&Source::Local, pid);
        let idx = t.insert(h, Slot::new(Source::Local, pid, pid, 0, Transport::Uds, now))?;
        t.touch(idx, now);
        Some(idx)
    }

    fn live_order(t: &Tracker) -> Vec<u32> {
        let mut out = vec![];
        let mut i = t.live.head;
        while i != NIL {
            out.push(t.slot(i).pid);
            i = t.slot(i).next;
        }
        out
    }

    #[test]
    fn touch_moves_to_tail_and_deadline_follows_head() {
        let mut t = Tracker::new(8, 100);
        let a = add(&mut t, 1, 10);
        add(&mut t, 2, 20);
        add(&mut t, 3, 30);
        assert_eq!(live_order(&t), [1, 2, 3]);
        assert_eq!(t.next_deadline(), Some(110));
        if let Some(a) = a {
            t.touch(a, 40);
        }
        assert_eq!(live_order(&t), [2, 3, 1]);
        assert_eq!(t.next_deadline(), Some(120));
        assert_eq!(t.due(119), None);
        let due = t.due(120);
        assert_eq!(due.map(|i| t.slot(i).pid), Some(2));
        if let Some(i) = due {
            t.mark_stalled(i);
        }
        assert_eq!(live_order(&t), [3, 1]);
        assert_eq!(t.oldest_stalled().map(|i| t.slot(i).pid), Some(2));
        if let Some(i) = due {
            t.touch(i, 200);
        }
        assert_eq!(live_order(&t), [3, 1, 2]);
        assert_eq!(t.oldest_stalled(), None);
    }

    #[test]
    fn full_tracker_refuses_and_replace_rekeys() {
        let mut t = Tracker::new(2, 100);
        add(&mut t, 1, 0);
        add(&mut t, 2, 0);
        assert!(t.is_full());
        assert_eq!(add(&mut t, 3, 0), None);
        let h1 = t.hash(&Source::Local, 1);
        let victim = t.find(h1, &Source::Local, 1);
        assert!(victim.is_some());
        if let Some(v) = victim {
            t.mark_stalled(v);
            let h3 = t.hash(&Source::Local, 3);
            t.replace(v, h3, Slot::new(Source::Local, 3, 3, 0, Transport::Uds, 5));
            assert_eq!(t.find(h1, &Source::Local, 1), None);
            assert_eq!(t.find(h3, &Source::Local, 3), Some(v));
        }
        assert_eq!(live_order(&t), [2, 3]);
        assert_eq!(t.oldest_stalled(), None);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn slab_growth_stops_at_capacity() {
        let mut t = Tracker::new(5000, 100);
        for pid in 1..=5000 {
            add(&mut t, pid, 0);
        }
        assert_eq!(t.slots.capacity(), 5000);
    }
}
