//! Agent state storage and stall scheduling structures.
//!
//! Promises:
//! * One [`Slot`] per tracked agent in a slab (`Vec`), found through a
//!   `hashbrown::HashTable<u32>` of slot indices keyed by (source, key pid:
//!   the host pid for kernel-attested UDS agents, the frame pid otherwise)
//!   — the key is stored once, in the slot. Lookup, insert and replacement
//!   are O(1); nothing allocates except when a *new* agent grows the slab
//!   (never beyond `capacity`) or the index.
//! * Every agent runs under a threshold *class* (see [`crate::threshold`]:
//!   the default, a rule's, or a learned step — at most 256). Per class, two
//!   intrusive doubly-linked lists through the slots (`u32` links): *live*
//!   in order of last accepted beat — so its head is the class's next
//!   stall, as the class shares one threshold — and *stalled* in order of
//!   stall. [`Tracker::touch`] moves an agent to its class's live tail in
//!   O(1); [`Tracker::next_deadline`] is the earliest of the live heads'
//!   deadlines, found through a bitmap of non-empty classes (one word per
//!   64 classes; one class without rules or learning). No scan over agents
//!   ever happens on the hot path.
//! * Memory per agent is bounded: [`Tracker::memory_bytes`] accounts the slab
//!   and index allocations (≈ 110–130 bytes per agent at 1,000,000 agents).
//!
//! The tracker keeps the lists ordered only if callers feed it
//! non-decreasing times (the processor's [`crate::clock::ClockGuard`] does).
//!
//! Blind windows: a live agent's deadline is `max(last beat, floor)` plus
//! its threshold, where the *floor* is the end of the latest window in
//! which the collector could not listen ([`Tracker::raise_floor`]). An
//! agent may have beaten unheard during such a window, so it gets a full
//! threshold from the first read after it; the true last beat stays what
//! views and stall events report. `max(·, floor)` is monotone in the last
//! beat, so every list stays in deadline order and nothing is rescanned.

use hashbrown::{DefaultHashBuilder, HashTable};
use std::hash::BuildHasher;
use varta_proto::{Source, Status, Transport};

use crate::agent::{AgentId, AgentRef};
use crate::threshold::learned::Code;
use crate::threshold::{Class, Learned};

/// "No slot" in the intrusive links.
const NIL: u32 = u32::MAX;

const STALLED: u8 = 1;
const HAS_NONCE: u8 = 2;
/// The upper six bits of `flags` count the gaps learned from (saturating).
const GAPS_SHIFT: u32 = 2;
/// Most warm-up gaps `flags` can count (`tracker.adaptive.warmup_beats` ≤ this).
pub const MAX_WARMUP: u8 = u8::MAX >> GAPS_SHIFT;

/// One tracked agent (104 bytes: no field is spare — the host pid is the
/// key pid for every transport, and the learned-gap count shares `flags`).
#[derive(Debug, Clone)]
pub struct Slot {
    source: Source,
    /// The key pid: the host pid (UDS, kernel-attested, and every network
    /// receiver's `host_pid`, which is the frame pid there).
    pid: u32,
    start_time: u64,
    /// Processor time of the last accepted beat (the stall clock).
    pub(crate) last_beat_ns: u64,
    /// Processor time of the last beat admitted by the per-agent rate limit.
    pub(crate) last_admitted_ns: u64,
    pub(crate) last_nonce: u64,
    pub(crate) last_timestamp: u64,
    pub(crate) beats: u64,
    /// The low 32 bits of the current (or last) stall incident of this
    /// agent; the processor restores the rest (see
    /// `Processor::incident_of`): the other half holds `first_seen_s`.
    pub(crate) incident: u32,
    /// Processor time of its first admission, in whole seconds: where its
    /// cumulative series start (a restarted incarnation is a new agent).
    pub(crate) first_seen_s: u32,
    pub(crate) stalls: u32,
    pub(crate) last_payload: u32,
    /// The pid written in the agent's frames (its own pid namespace's).
    pub(crate) frame_pid: u32,
    prev: u32,
    next: u32,
    /// The class it runs under now (whose lists hold it).
    class: Class,
    /// The class of its matching rule (or the default): its threshold while
    /// nothing is learned, and the ceiling of what is.
    pub(crate) rule: Class,
    interval: Code,
    pub(crate) transport: Transport,
    /// Status carried by the last accepted frame.
    pub(crate) status: Status,
    flags: u8,
}

impl Slot {
    /// A fresh agent, first seen (admitted) at `now_ns`; no beat accepted
    /// yet; under `rule` (its class) until it learns otherwise.
    pub fn new(
        source: Source,
        pid: u32,
        start_time: u64,
        transport: Transport,
        now_ns: u64,
        rule: Class,
    ) -> Slot {
        Slot {
            source,
            pid,
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
            first_seen_s: u32::try_from(now_ns / 1_000_000_000).unwrap_or(u32::MAX),
            prev: NIL,
            next: NIL,
            class: rule,
            rule,
            interval: Code::default(),
            transport,
            status: Status::Ok,
            flags: 0,
        }
    }

    /// Puts a fresh agent under rule class `rule`.
    pub fn with_rule(mut self, rule: Class) -> Slot {
        (self.rule, self.class) = (rule, rule);
        self
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
            host_pid: self.pid,
            transport: self.transport,
        }
    }

    pub fn is_stalled(&self) -> bool {
        self.flags & STALLED != 0
    }

    /// The class whose threshold the agent runs under.
    pub fn class(&self) -> Class {
        self.class
    }

    /// What it learned of its own beat.
    pub fn learned(&self) -> Learned {
        Learned::from_parts(self.interval, self.flags >> GAPS_SHIFT)
    }

    pub(crate) fn set_learned(&mut self, learned: Learned) {
        let (interval, gaps) = learned.parts();
        self.interval = interval;
        self.flags = (self.flags & ((1 << GAPS_SHIFT) - 1)) | (gaps.min(MAX_WARMUP) << GAPS_SHIFT);
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

/// One list per class, and which of them are non-empty.
#[derive(Debug)]
struct Lists {
    lists: Vec<List>,
    nonempty: [u64; 4],
}

impl Lists {
    fn new(classes: usize) -> Lists {
        Lists { lists: vec![List::EMPTY; classes], nonempty: [0; 4] }
    }

    fn head(&self, class: Class) -> u32 {
        self.lists[usize::from(class)].head
    }

    /// The non-empty classes, ascending.
    fn classes(&self) -> impl Iterator<Item = Class> + '_ {
        self.nonempty.iter().enumerate().flat_map(|(w, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                (bits != 0).then(|| {
                    let c = w * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    c as Class
                })
            })
        })
    }

    fn link_tail(&mut self, slots: &mut [Slot], class: Class, idx: u32) {
        let list = &mut self.lists[usize::from(class)];
        let i = idx as usize;
        slots[i].prev = list.tail;
        slots[i].next = NIL;
        if list.tail == NIL {
            list.head = idx;
            self.nonempty[usize::from(class) / 64] |= 1 << (class % 64);
        } else {
            slots[list.tail as usize].next = idx;
        }
        list.tail = idx;
    }

    /// Links `idx` into `class` in order of `last_beat_ns`, walking back
    /// from the tail: O(1) when it is the latest, else one step per agent
    /// of that class that beat after it.
    fn link_ordered(&mut self, slots: &mut [Slot], class: Class, idx: u32) {
        let at = slots[idx as usize].last_beat_ns;
        let mut after = self.lists[usize::from(class)].tail;
        while after != NIL && slots[after as usize].last_beat_ns > at {
            after = slots[after as usize].prev;
        }
        if after == self.lists[usize::from(class)].tail {
            return self.link_tail(slots, class, idx);
        }
        let list = &mut self.lists[usize::from(class)];
        let next = if after == NIL { list.head } else { slots[after as usize].next };
        slots[idx as usize].prev = after;
        slots[idx as usize].next = next;
        slots[next as usize].prev = idx;
        if after == NIL {
            list.head = idx;
        } else {
            slots[after as usize].next = idx;
        }
    }

    fn unlink(&mut self, slots: &mut [Slot], class: Class, idx: u32) {
        let list = &mut self.lists[usize::from(class)];
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
        if list.head == NIL {
            self.nonempty[usize::from(class) / 64] &= !(1 << (class % 64));
        }
        slots[idx as usize].prev = NIL;
        slots[idx as usize].next = NIL;
    }
}

/// Slots per view chunk: the published snapshot copies agent views in
/// chunks of this many slots, and only chunks whose slots changed.
pub const VIEW_CHUNK: usize = 1024;

/// Initial slab/index reservation bound.
const INITIAL_RESERVATION: usize = 4096;

/// All tracked agents plus the per-class recency lists.
#[derive(Debug)]
pub struct Tracker {
    slots: Vec<Slot>,
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    capacity: usize,
    /// Threshold of each class, nanoseconds.
    class_ns: Vec<u64>,
    live: Lists,
    stalled: Lists,
    stalled_len: usize,
    /// One bit per [`VIEW_CHUNK`] of slots: set when a slot in it changed
    /// since the last [`Tracker::take_changed_chunks`].
    changed: Vec<u64>,
    /// End of the latest blind window (see the module docs); 0 before any.
    floor_ns: u64,
}

impl Tracker {
    /// `capacity` must be ≥ 1 and < `u32::MAX` (validated by `TrackerConfig`);
    /// `class_ns` holds 1 to 256 thresholds (class 0 the default).
    pub fn new(capacity: usize, class_ns: &[u64]) -> Tracker {
        let capacity = capacity.clamp(1, NIL as usize - 1);
        let initial = capacity.min(INITIAL_RESERVATION);
        let class_ns = valid_classes(class_ns);
        Tracker {
            slots: Vec::with_capacity(initial),
            index: HashTable::with_capacity(initial),
            hasher: DefaultHashBuilder::default(),
            capacity,
            live: Lists::new(class_ns.len()),
            stalled: Lists::new(class_ns.len()),
            class_ns,
            stalled_len: 0,
            changed: Vec::new(),
            floor_ns: 0,
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

    /// Threshold of every class, nanoseconds.
    pub fn class_ns(&self) -> &[u64] {
        &self.class_ns
    }

    /// The threshold `class` stands for.
    #[inline]
    pub fn threshold_ns(&self, class: Class) -> u64 {
        self.class_ns[usize::from(class)]
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

    /// How many agents it may hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The slots from index `from` on.
    pub fn slots_from(&self, from: usize) -> impl Iterator<Item = &Slot> {
        self.slots.get(from..).unwrap_or_default().iter()
    }

    pub fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter()
    }

    /// Adds a new agent at its class's live tail. `None` when the tracker is full.
    pub fn insert(&mut self, hash: u64, mut slot: Slot) -> Option<u32> {
        if self.is_full() {
            return None;
        }
        if self.slots.len() == self.slots.capacity() {
            // Grow geometrically, but never past the configured capacity.
            let target = self.slots.capacity().saturating_mul(2).clamp(1, self.capacity);
            self.slots.reserve_exact(target - self.slots.len());
        }
        let idx = u32::try_from(self.slots.len()).ok()?;
        self.clamp_classes(&mut slot);
        let class = slot.class;
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
        self.live.link_tail(&mut self.slots, class, idx);
        Some(idx)
    }

    /// A slot's classes always name one of ours.
    fn clamp_classes(&self, slot: &mut Slot) {
        let last = (self.class_ns.len() - 1) as Class;
        slot.class = slot.class.min(last);
        slot.rule = slot.rule.min(last);
    }

    /// Puts a new agent (with a different key) in the place of `victim`,
    /// which leaves the index and its list. The new agent joins its live tail.
    pub fn replace(&mut self, victim: u32, hash: u64, mut slot: Slot) {
        self.unlink_any(victim);
        let old = &self.slots[victim as usize];
        let old_hash = self.hash(&old.source, old.pid);
        if let Ok(entry) = self.index.find_entry(old_hash, |&i| i == victim) {
            entry.remove();
        }
        self.clamp_classes(&mut slot);
        let class = slot.class;
        self.slots[victim as usize] = slot;
        self.note_change(victim);
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index.insert_unique(hash, victim, |&i| {
            let s = &slots[i as usize];
            hasher.hash_one((&s.source, s.pid))
        });
        self.live.link_tail(&mut self.slots, class, victim);
    }

    /// Starts a new incarnation of the agent in `idx` (same key): its state
    /// is replaced by `slot` and it joins its live tail.
    pub fn reincarnate(&mut self, idx: u32, mut slot: Slot) {
        self.unlink_any(idx);
        self.clamp_classes(&mut slot);
        let class = slot.class;
        self.slots[idx as usize] = slot;
        self.note_change(idx);
        self.live.link_tail(&mut self.slots, class, idx);
    }

    fn unlink_any(&mut self, idx: u32) {
        let slot = &self.slots[idx as usize];
        let class = slot.class;
        if slot.is_stalled() {
            self.stalled.unlink(&mut self.slots, class, idx);
            self.stalled_len -= 1;
        } else {
            self.live.unlink(&mut self.slots, class, idx);
        }
    }

    /// Records an accepted beat at `now_ns`: the agent moves to the live
    /// tail of `class` (leaving the stalled list if it was stalled).
    #[inline]
    pub fn touch(&mut self, idx: u32, now_ns: u64, class: Class) {
        self.unlink_any(idx);
        self.note_change(idx);
        let class = class.min((self.class_ns.len() - 1) as Class);
        let slot = &mut self.slots[idx as usize];
        slot.flags &= !STALLED;
        slot.last_beat_ns = now_ns;
        slot.class = class;
        self.live.link_tail(&mut self.slots, class, idx);
    }

    /// Moves a live agent to `class` without a beat (its rule just resolved):
    /// its deadline becomes its last beat plus that class's threshold — one
    /// already past stalls at the next [`Tracker::due`]. A stalled agent
    /// takes `class` at its next beat instead.
    pub fn reclass(&mut self, idx: u32, class: Class) {
        let class = class.min((self.class_ns.len() - 1) as Class);
        let (stalled, current) = (self.slots[idx as usize].is_stalled(), self.slots[idx as usize].class);
        if stalled || current == class {
            return;
        }
        self.live.unlink(&mut self.slots, current, idx);
        self.slots[idx as usize].class = class;
        self.live.link_ordered(&mut self.slots, class, idx);
        self.note_change(idx);
    }

    /// The earliest deadline among live agents and whose it is: one look
    /// per non-empty class.
    #[inline]
    fn earliest(&self) -> Option<(u64, u32)> {
        let mut best: Option<(u64, u32)> = None;
        for (w, &word) in self.live.nonempty.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let class = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let head = self.live.lists[class].head;
                let heard = self.slots[head as usize].last_beat_ns.max(self.floor_ns);
                let deadline = heard.saturating_add(self.class_ns[class]);
                if best.is_none_or(|(b, _)| deadline < b) {
                    best = Some((deadline, head));
                }
            }
        }
        best
    }

    /// When the next live agent stalls, if any agent is live.
    #[inline]
    pub fn next_deadline(&self) -> Option<u64> {
        self.earliest().map(|(d, _)| d)
    }

    /// A live agent whose deadline is ≤ `now_ns`, if any (the earliest).
    #[inline]
    pub fn due(&self, now_ns: u64) -> Option<u32> {
        self.earliest().filter(|&(d, _)| d <= now_ns).map(|(_, idx)| idx)
    }

    /// Ends a blind window at `end_ns`: every live agent's deadline is
    /// counted from at least then (see the module docs). Never lowers.
    pub fn raise_floor(&mut self, end_ns: u64) {
        self.floor_ns = self.floor_ns.max(end_ns);
    }

    /// The end of the latest blind window (0 before any): an agent whose
    /// last beat is older was judged across it.
    pub fn floor(&self) -> u64 {
        self.floor_ns
    }

    /// Moves a live agent to its class's stalled tail.
    pub fn mark_stalled(&mut self, idx: u32) {
        if self.slots[idx as usize].is_stalled() {
            return;
        }
        let class = self.slots[idx as usize].class;
        self.live.unlink(&mut self.slots, class, idx);
        self.slots[idx as usize].flags |= STALLED;
        self.stalled.link_tail(&mut self.slots, class, idx);
        self.stalled_len += 1;
        self.note_change(idx);
    }

    /// The stalled agent that has been silent longest relative to its own
    /// threshold, if it has been silent for more than `factor ×` it (the
    /// capacity rule's eviction candidate).
    pub fn evictable(&self, now_ns: u64, factor: u64) -> Option<u32> {
        let mut best: Option<(u64, u32)> = None;
        for class in self.stalled.classes() {
            let head = self.stalled.head(class);
            let after = self.threshold_ns(class).saturating_mul(factor);
            let at = self.slots[head as usize].last_beat_ns.saturating_add(after);
            if best.is_none_or(|(b, _)| at < b) {
                best = Some((at, head));
            }
        }
        best.filter(|&(at, _)| now_ns > at).map(|(_, idx)| idx)
    }

    /// Takes a new set of classes (a reload of the threshold settings):
    /// `classify` gives each agent its new `(rule class, class)`, and every
    /// list is rebuilt in order of last beat — O(agents log agents), once.
    /// Stalled agents stay stalled; a live agent now past its new deadline
    /// stalls at the next [`Tracker::due`].
    pub fn set_classes(&mut self, class_ns: &[u64], mut classify: impl FnMut(&Slot) -> (Class, Class)) {
        self.class_ns = valid_classes(class_ns);
        self.live = Lists::new(self.class_ns.len());
        self.stalled = Lists::new(self.class_ns.len());
        let last = (self.class_ns.len() - 1) as Class;
        for slot in &mut self.slots {
            let (rule, class) = classify(slot);
            (slot.rule, slot.class) = (rule.min(last), class.min(last));
        }
        let mut order: Vec<(u64, u32)> =
            self.slots.iter().enumerate().map(|(i, s)| (s.last_beat_ns, i as u32)).collect();
        order.sort_unstable();
        for (_, idx) in order {
            let slot = &self.slots[idx as usize];
            let class = slot.class;
            if slot.is_stalled() {
                self.stalled.link_tail(&mut self.slots, class, idx);
            } else {
                self.live.link_tail(&mut self.slots, class, idx);
            }
        }
        self.changed.iter_mut().for_each(|w| *w = u64::MAX);
    }

    /// Bytes held by the slab and the index (capacities × element sizes).
    pub fn memory_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.index.allocation_size()
            + self.changed.capacity() * std::mem::size_of::<u64>()
            + 2 * self.class_ns.len() * std::mem::size_of::<List>()
    }
}

/// 1 to 256 classes (an empty table becomes one 2 s class; only tests and
/// unvalidated callers get there).
fn valid_classes(class_ns: &[u64]) -> Vec<u64> {
    let mut v = class_ns[..class_ns.len().min(256)].to_vec();
    if v.is_empty() {
        v.push(2_000_000_000);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(t: &mut Tracker, pid: u32, now: u64) -> Option<u32> {
        let h = t.hash(&Source::Local, pid);
        let idx = t.insert(h, Slot::new(Source::Local, pid, 0, Transport::Uds, now, 0))?;
        t.touch(idx, now, 0);
        Some(idx)
    }

    fn live_order(t: &Tracker) -> Vec<u32> {
        let mut out = vec![];
        let mut i = t.live.head(0);
        while i != NIL {
            out.push(t.slot(i).pid);
            i = t.slot(i).next;
        }
        out
    }

    #[test]
    fn touch_moves_to_tail_and_deadline_follows_head() {
        let mut t = Tracker::new(8, &[100]);
        let a = add(&mut t, 1, 10);
        add(&mut t, 2, 20);
        add(&mut t, 3, 30);
        assert_eq!(live_order(&t), [1, 2, 3]);
        assert_eq!(t.next_deadline(), Some(110));
        if let Some(a) = a {
            t.touch(a, 40, 0);
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
        assert_eq!(t.evictable(1000, 1).map(|i| t.slot(i).pid), Some(2));
        if let Some(i) = due {
            t.touch(i, 200, 0);
        }
        assert_eq!(live_order(&t), [3, 1, 2]);
        assert_eq!(t.evictable(u64::MAX, 1), None);
    }

    /// A resolved rule moves an agent between classes without a beat, in
    /// order of its last beat, and its deadline follows the new threshold.
    #[test]
    fn reclass_keeps_each_list_in_beat_order() {
        let mut t = Tracker::new(8, &[100, 1000]);
        let live = |t: &Tracker, class: Class| {
            let mut out = vec![];
            let mut i = t.live.head(class);
            while i != NIL {
                out.push(t.slot(i).pid);
                i = t.slot(i).next;
            }
            out
        };
        let ids: Vec<u32> = [(1, 10), (2, 20), (3, 30), (4, 40)]
            .into_iter()
            .filter_map(|(pid, at)| {
                let idx = add(&mut t, pid, at)?;
                t.touch(idx, at, 1);
                Some(idx)
            })
            .collect();
        assert_eq!(live(&t, 1), [1, 2, 3, 4]);
        // 3 (beat at 30) first, then 1 (10), then 4 (40), then 2 (20).
        for (i, pid) in [(2, 3), (0, 1), (3, 4), (1, 2)] {
            t.reclass(ids[i], 0);
            assert_eq!(t.slot(ids[i]).pid, pid);
        }
        assert_eq!(live(&t, 0), [1, 2, 3, 4]);
        assert!(live(&t, 1).is_empty());
        assert_eq!(t.next_deadline(), Some(110));
        // A stalled agent keeps its class until it beats.
        t.mark_stalled(ids[0]);
        t.reclass(ids[0], 1);
        assert_eq!(t.slot(ids[0]).class(), 0);
    }

    #[test]
    fn full_tracker_refuses_and_replace_rekeys() {
        let mut t = Tracker::new(2, &[100]);
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
            t.replace(v, h3, Slot::new(Source::Local, 3, 0, Transport::Uds, 5, 0));
            assert_eq!(t.find(h1, &Source::Local, 1), None);
            assert_eq!(t.find(h3, &Source::Local, 3), Some(v));
        }
        assert_eq!(live_order(&t), [2, 3]);
        assert_eq!(t.evictable(u64::MAX, 1), None);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn per_agent_deadlines_cost_no_bytes() {
        // Class, rule and learned interval live in what was padding and in
        // the host pid's place (it always equals the key pid); the first
        // admission second shares the incident's word (its low half is
        // kept), and in the published view the host pid's place.
        assert_eq!(std::mem::size_of::<Slot>(), 104);
        assert_eq!(std::mem::size_of::<crate::snapshot::AgentView>(), 64);
    }

    #[test]
    fn classes_keep_their_own_order_and_the_earliest_deadline_wins() {
        // Class 0: 100 ns; class 1: 30 ns; class 2: 1000 ns.
        let mut t = Tracker::new(8, &[100, 30, 1000]);
        let mut add_in = |pid: u32, now: u64, class: Class| {
            let h = t.hash(&Source::Local, pid);
            let idx = t.insert(h, Slot::new(Source::Local, pid, 0, Transport::Uds, now, class));
            if let Some(idx) = idx {
                t.touch(idx, now, class);
            }
            idx
        };
        let a = add_in(1, 0, 0); // due at 100
        add_in(2, 50, 1); // due at 80
        add_in(3, 60, 2); // due at 1060
        assert_eq!(t.next_deadline(), Some(80));
        let due = t.due(80);
        assert_eq!(due.map(|i| t.slot(i).pid), Some(2));
        if let Some(i) = due {
            t.mark_stalled(i);
        }
        assert_eq!(t.next_deadline(), Some(100));
        // A beat can move an agent to another class.
        if let Some(a) = a {
            t.touch(a, 90, 2);
        }
        assert_eq!(t.next_deadline(), Some(1060));
        // Eviction is by each agent's own threshold: pid 2 (30 ns) is
        // evictable after 3 × 30 ns of silence.
        assert_eq!(t.evictable(50 + 90, 3), None);
        assert_eq!(t.evictable(50 + 91, 3).map(|i| t.slot(i).pid), Some(2));
        // New classes (a reload): lists rebuilt in last-beat order.
        t.set_classes(&[10, 20], |s| (0, if s.pid == 3 { 1 } else { 0 }));
        assert_eq!(t.next_deadline(), Some(80), "pid 3: 60 + 20");
        assert_eq!(t.slot(0).class(), 0);
    }

    #[test]
    fn slab_growth_stops_at_capacity() {
        let mut t = Tracker::new(5000, &[100]);
        for pid in 1..=5000 {
            add(&mut t, pid, 0);
        }
        assert_eq!(t.slots.capacity(), 5000);
    }
}
