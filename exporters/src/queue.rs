//! A bounded, three-lane queue and thread in front of one exporter.
//!
//! Lanes: *incident* events (stall, diagnosis, recovery, resume, eviction,
//! clock anomaly, blind window), *notices* the agents themselves choose to
//! cause (status changes, panics) and *bulk* events (beats, refusals, rate
//! limits, stale nonces, origin conflicts, capacity refusals) wait in
//! separate bounded channels, so neither a flood of bulk events nor a crowd
//! of agents flipping their status every beat can ever push an incident
//! out. Delivery: the exporter thread merges the lanes back into the order
//! the events were offered (each carries a sequence number). Bound: when a
//! lane is full its *oldest* event is dropped and counted
//! (`dropped{queue_full}`; `incidents_dropped` for the incident lane,
//! `notices_dropped` for the notice lane); the producer never blocks. An event offered after the exporter thread
//! died is counted as `dropped{exporter_stopped}`. Shutdown: dropping every
//! [`ExporterQueue`] disconnects the lanes; the thread exports what is
//! left, flushes, and ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Select, Sender, TryRecvError, TrySendError, bounded};
use varta_pipeline::clock::monotonic_ns;
use varta_pipeline::{Instrumented, LogThrottle, Metric, Sample};
use varta_processor::{Event, EventKind};

use crate::Exporter;

/// Whether an event belongs in the incident lane.
pub fn is_incident(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Stall { .. }
            | EventKind::Resume { .. }
            | EventKind::Evicted { .. }
            | EventKind::ClockAnomaly { .. }
            | EventKind::BlindWindow { .. }
            | EventKind::Diagnosis { .. }
            | EventKind::Evidence { .. }
            | EventKind::Recovery { .. }
    )
}

/// Whether an event is a notice an agent chose to cause (its own lane:
/// it can never displace an incident).
pub fn is_notice(kind: &EventKind) -> bool {
    matches!(kind, EventKind::StatusChange { .. } | EventKind::Panic { .. })
}

/// Capacity of the incident lane (and of the notice lane) for a bulk
/// capacity of `queue_size`.
pub fn incident_capacity(queue_size: usize) -> usize {
    (queue_size / 4).max(1024)
}

/// Counters of one exporter queue.
#[derive(Debug, Default)]
pub struct ExporterStats {
    /// Events accepted into the queue.
    pub queued: AtomicU64,
    /// Events dropped because their lane was full (oldest first).
    pub dropped_full: AtomicU64,
    /// Of `dropped_full`, incident events.
    pub incidents_dropped: AtomicU64,
    /// Of `dropped_full`, notices (status changes, panics).
    pub notices_dropped: AtomicU64,
    /// Events offered after the exporter thread had stopped.
    pub dropped_stopped: AtomicU64,
    /// Events handed to the exporter successfully.
    pub exported: AtomicU64,
    /// Export or flush calls that failed.
    pub failed: AtomicU64,
    /// Set when the exporter thread has ended (normally only at shutdown).
    pub stopped: AtomicBool,
}

/// The exporter queue's metrics.
pub mod metric {
    use varta_pipeline::Metric;

    pub static QUEUED: Metric =
        Metric::counter("queued", "Events accepted into the exporter queue.").unit("{event}");
    pub static DROPPED: Metric = Metric::labelled(
        "dropped",
        "reason",
        "Events dropped: queue_full (oldest dropped) or exporter_stopped (its thread had ended).",
    )
    .unit("{event}");
    pub static INCIDENTS_DROPPED: Metric = Metric::counter(
        "incidents_dropped",
        "Incident events (stall, resume, diagnosis, recovery, eviction) dropped because the incident lane was full.",
    ).unit("{event}");
    pub static NOTICES_DROPPED: Metric = Metric::counter(
        "notices_dropped",
        "Status changes and panics (what agents choose to send) dropped because their own lane was full.",
    )
    .unit("{event}");
    pub static EXPORTED: Metric =
        Metric::counter("exported", "Events the exporter handled successfully.").unit("{event}");
    pub static FAILED: Metric =
        Metric::counter("failed", "Export or flush calls that failed.").unit("{event}");
    pub static QUEUE_DEPTH: Metric =
        Metric::gauge("queue_depth", "Events waiting in the exporter queue.").unit("{event}");
    pub static QUEUE_CAPACITY: Metric =
        Metric::gauge("queue_capacity", "Events the exporter queue can hold (both lanes).").unit("{event}");
}

/// An exporter queue's counters plus its live depth.
#[derive(Debug)]
pub struct ExporterTelemetry {
    stats: Arc<ExporterStats>,
    lanes: [Receiver<Queued>; LANES],
}

impl Instrumented for ExporterTelemetry {
    fn samples(&self, out: &mut dyn FnMut(Sample)) {
        use metric::*;
        let s = &self.stats;
        let plain: [(&'static Metric, u64); 5] = [
            (&QUEUED, s.queued.load(Relaxed)),
            (&INCIDENTS_DROPPED, s.incidents_dropped.load(Relaxed)),
            (&NOTICES_DROPPED, s.notices_dropped.load(Relaxed)),
            (&EXPORTED, s.exported.load(Relaxed)),
            (&FAILED, s.failed.load(Relaxed)),
        ];
        for (metric, value) in plain {
            out(Sample::new(metric, value));
        }
        out(Sample::labelled(&DROPPED, "queue_full", s.dropped_full.load(Relaxed)));
        out(Sample::labelled(&DROPPED, "exporter_stopped", s.dropped_stopped.load(Relaxed)));
        let depth: usize = self.lanes.iter().map(Receiver::len).sum();
        let capacity: usize = self.lanes.iter().filter_map(Receiver::capacity).sum();
        out(Sample::new(&QUEUE_DEPTH, depth as u64));
        out(Sample::new(&QUEUE_CAPACITY, capacity as u64));
    }
}

/// An event, its place in the order it was offered, and the producer
/// (pipeline) that offered it.
type Queued = (u64, u16, Event);

const BULK: usize = 0;
const NOTICE: usize = 1;
const INCIDENT: usize = 2;
const LANES: usize = 3;

fn lane_of(kind: &EventKind) -> usize {
    if is_incident(kind) {
        INCIDENT
    } else if is_notice(kind) {
        NOTICE
    } else {
        BULK
    }
}

/// One lane: its sender and a receiver clone used only to evict the oldest.
#[derive(Debug)]
struct Lane {
    tx: Sender<Queued>,
    evict: Receiver<Queued>,
}

/// Producer side of an exporter's queue. Cheap to use from the processor
/// thread: one `try_send` per event.
#[derive(Debug)]
pub struct ExporterQueue {
    id: String,
    lanes: [Lane; LANES],
    /// Shared by every producer of this queue (pipelines sharing the
    /// exporter): each producer's events keep their offer order.
    next_seq: Arc<AtomicU64>,
    /// Which producer this handle is (see [`ExporterQueue::share_as`]).
    source: u16,
    stats: Arc<ExporterStats>,
    wants_beats: bool,
}

impl ExporterQueue {
    /// Starts `exporter` on its own thread behind a queue of `capacity`
    /// bulk events plus [`incident_capacity`] incident events.
    pub fn start(
        id: String,
        exporter: Box<dyn Exporter>,
        capacity: usize,
    ) -> std::io::Result<(ExporterQueue, JoinHandle<()>)> {
        let channels: [(Sender<Queued>, Receiver<Queued>); LANES] = [
            bounded(capacity.max(1)),
            bounded(incident_capacity(capacity)),
            bounded(incident_capacity(capacity)),
        ];
        let stats = Arc::new(ExporterStats::default());
        let wants_beats = exporter.wants_beats();
        let thread = std::thread::Builder::new().name(format!("export-{id}")).spawn({
            let (lanes, stats, id) = (channels.clone().map(|(_, rx)| rx), stats.clone(), id.clone());
            move || drain(&id, exporter, &lanes, &stats)
        })?;
        let lanes = channels.map(|(tx, evict)| Lane { tx, evict });
        let next_seq = Arc::new(AtomicU64::new(0));
        Ok((ExporterQueue { id, lanes, next_seq, source: 0, stats, wants_beats }, thread))
    }

    /// Another producer of the same queue: same lanes, counters and thread.
    pub fn share(&self) -> ExporterQueue {
        self.share_as(self.source)
    }

    /// Another producer of the same queue whose events the exporter sees
    /// as coming from `source` ([`Exporter::export_from`]): for the
    /// `source`-th pipeline served by this exporter.
    pub fn share_as(&self, source: u16) -> ExporterQueue {
        let lane = |l: &Lane| Lane { tx: l.tx.clone(), evict: l.evict.clone() };
        ExporterQueue {
            id: self.id.clone(),
            lanes: std::array::from_fn(|i| lane(&self.lanes[i])),
            next_seq: Arc::clone(&self.next_seq),
            source,
            stats: Arc::clone(&self.stats),
            wants_beats: self.wants_beats,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn stats(&self) -> Arc<ExporterStats> {
        self.stats.clone()
    }

    /// Counters and live depth, for metrics views.
    pub fn telemetry(&self) -> Arc<dyn Instrumented> {
        Arc::new(ExporterTelemetry {
            stats: self.stats.clone(),
            lanes: std::array::from_fn(|i| self.lanes[i].evict.clone()),
        })
    }

    pub fn wants_beats(&self) -> bool {
        self.wants_beats
    }

    /// Reads `(progress, work waiting)` for liveness checks: events handled
    /// (exported or failed) and whether any wait in the queue.
    pub fn progress_probe(&self) -> impl Fn() -> (u64, bool) + Send + 'static {
        let stats = Arc::clone(&self.stats);
        let lanes: [Receiver<Queued>; LANES] = std::array::from_fn(|i| self.lanes[i].evict.clone());
        move || {
            let handled = stats.exported.load(Relaxed) + stats.failed.load(Relaxed);
            (handled, lanes.iter().any(|l| !l.is_empty()))
        }
    }

    /// Queues an event, dropping the oldest queued one of its lane if full.
    pub fn offer(&mut self, event: &Event) {
        if self.stats.stopped.load(Relaxed) {
            self.stats.dropped_stopped.fetch_add(1, Relaxed);
            return;
        }
        let lane = &self.lanes[lane_of(&event.kind)];
        let mut item = (self.next_seq.fetch_add(1, Relaxed), self.source, *event);
        loop {
            match lane.tx.try_send(item) {
                Ok(()) => {
                    self.stats.queued.fetch_add(1, Relaxed);
                    return;
                }
                Err(TrySendError::Full(back)) => {
                    if let Ok((_, _, old)) = lane.evict.try_recv() {
                        self.stats.dropped_full.fetch_add(1, Relaxed);
                        match lane_of(&old.kind) {
                            INCIDENT => self.stats.incidents_dropped.fetch_add(1, Relaxed),
                            NOTICE => self.stats.notices_dropped.fetch_add(1, Relaxed),
                            _ => 0,
                        };
                    }
                    item = back;
                }
                Err(TrySendError::Disconnected(_)) => {
                    // Unreachable while `evict` lives; counted all the same.
                    self.stats.dropped_stopped.fetch_add(1, Relaxed);
                    return;
                }
            }
        }
    }
}

/// Merges the two lanes back into offer order. Single consumer.
struct Merge<'a> {
    lanes: &'a [Receiver<Queued>; LANES],
    held: [Option<Queued>; LANES],
}

impl Merge<'_> {
    /// The next event in offer order, waiting for one when both lanes are
    /// empty and `wait` is set; `None` once both lanes are disconnected and
    /// drained (or, without `wait`, when nothing is waiting).
    fn next(&mut self, wait: bool) -> Option<(u16, Event)> {
        loop {
            let mut closed = 0;
            for (held, lane) in self.held.iter_mut().zip(self.lanes) {
                if held.is_none() {
                    match lane.try_recv() {
                        Ok(item) => *held = Some(item),
                        Err(TryRecvError::Disconnected) => closed += 1,
                        Err(TryRecvError::Empty) => {}
                    }
                }
            }
            // Every head was refilled before choosing, and a producer
            // numbers its events in offer order, so the smallest number is
            // its earliest offer. (Between producers — pipelines sharing the
            // exporter — there is no order to keep.)
            let pick =
                (0..LANES).filter(|&i| self.held[i].is_some()).min_by_key(|&i| self.held[i].map(|h| h.0));
            if let Some(i) = pick {
                return self.held[i].take().map(|(_, source, ev)| (source, ev));
            }
            if closed == LANES || !wait {
                return None;
            }
            let mut select = Select::new();
            for lane in self.lanes {
                select.recv(lane);
            }
            // Ready means a message or a disconnect; the next round tells which.
            select.ready();
        }
    }
}

/// Marks the exporter stopped when its thread ends, even by a panic.
struct StoppedOnDrop<'a>(&'a AtomicBool);

impl Drop for StoppedOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Relaxed);
    }
}

fn drain(
    id: &str,
    mut exporter: Box<dyn Exporter>,
    lanes: &[Receiver<Queued>; LANES],
    stats: &ExporterStats,
) {
    let _stopped = StoppedOnDrop(&stats.stopped);
    let mut failures = LogThrottle::default();
    let mut export = |exporter: &mut Box<dyn Exporter>, (source, ev): (u16, Event)| match exporter
        .export_from(usize::from(source), &ev)
    {
        Ok(()) => {
            stats.exported.fetch_add(1, Relaxed);
        }
        Err(e) => {
            stats.failed.fetch_add(1, Relaxed);
            if let Some(count) = failures.note(monotonic_ns()) {
                tracing::warn!(
                    exporter = id,
                    count,
                    "export failed: {e} (at most one warning per 10 s; count is since the last)"
                );
            }
        }
    };
    let mut merge = Merge { lanes, held: [None, None, None] };
    // Block for the next event, then take everything already waiting, then
    // flush: one flush per burst keeps latency low when idle and cost low
    // under load.
    while let Some(first) = merge.next(true) {
        export(&mut exporter, first);
        while let Some(next) = merge.next(false) {
            export(&mut exporter, next);
        }
        if let Err(e) = exporter.flush() {
            stats.failed.fetch_add(1, Relaxed);
            tracing::warn!(exporter = id, "flush failed: {e}");
        }
    }
    if let Err(e) = exporter.finish() {
        stats.failed.fetch_add(1, Relaxed);
        tracing::warn!(exporter = id, "final flush failed: {e}");
    }
    tracing::debug!(exporter = id, "exporter stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use varta_processor::EventKind;
    use varta_proto::{Frame, Status};

    /// Records exported events; says when it starts one, then blocks on
    /// the gate, to fill the queue.
    struct Slow {
        seen: Arc<Mutex<Vec<Event>>>,
        entered: Sender<()>,
        gate: Receiver<()>,
    }

    impl Exporter for Slow {
        fn wants_beats(&self) -> bool {
            true
        }
        fn export(&mut self, ev: &Event) -> std::io::Result<()> {
            let _ = self.entered.send(());
            if self.gate.recv().is_err() {
                panic!("gate closed: the test wants this exporter dead");
            }
            self.seen.lock().expect("lock").push(*ev);
            Ok(())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn beat(at_ns: u64) -> Event {
        Event { at_ns, agent: None, kind: EventKind::Beat { frame: Frame::new(Status::Ok, 2, 0, at_ns, 0) } }
    }

    fn panic_frame(at_ns: u64) -> Event {
        Event {
            at_ns,
            agent: None,
            kind: EventKind::Panic { frame: Frame::new(Status::Critical, 2, 0, 1, 0) },
        }
    }

    fn stall(at_ns: u64) -> Event {
        Event {
            at_ns,
            agent: None,
            kind: EventKind::Stall {
                incident: at_ns,
                last_beat_ns: 0,
                last_nonce: 1,
                silence_ns: at_ns,
                last_status: Status::Ok,
                last_payload: 0,
                threshold_ns: 1,
                learned_interval_ns: 0,
                blind: false,
            },
        }
    }

    fn status_flip(at_ns: u64) -> Event {
        let frame = Frame::new(Status::Degraded, 2, 0, at_ns, 0);
        Event {
            at_ns,
            agent: None,
            kind: EventKind::StatusChange { from: Status::Ok, to: Status::Degraded, frame },
        }
    }

    type Seen = Arc<Mutex<Vec<Event>>>;

    struct Harness {
        queue: ExporterQueue,
        thread: JoinHandle<()>,
        seen: Seen,
        open: Sender<()>,
        entered: Receiver<()>,
    }

    fn start(capacity: usize) -> Harness {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (open, gate) = crossbeam_channel::unbounded();
        let (entered_tx, entered) = crossbeam_channel::unbounded();
        let slow = Slow { seen: seen.clone(), entered: entered_tx, gate };
        let (queue, thread) = ExporterQueue::start("slow".into(), Box::new(slow), capacity).expect("start");
        Harness { queue, thread, seen, open, entered }
    }

    /// Offers `first`, then waits until the exporter is inside `export`
    /// with it (blocked on the gate, holding nothing else).
    fn occupy(h: &mut Harness, first: &Event) {
        h.queue.offer(first);
        h.entered.recv().expect("exporter started an export");
    }

    #[test]
    fn full_bulk_lane_drops_oldest_counts_it_and_drains_on_shutdown() {
        let mut h = start(4);
        occupy(&mut h, &beat(0));
        let Harness { mut queue, thread, seen, open, .. } = h;
        // 1..=4 fill the bulk lane; 5..=9 each evict the oldest waiting beat.
        for i in 1..10 {
            queue.offer(&beat(i));
        }
        let stats = queue.stats();
        assert_eq!(stats.dropped_full.load(Relaxed), 5);
        assert_eq!(stats.incidents_dropped.load(Relaxed), 0);
        assert_eq!(stats.queued.load(Relaxed), 10);
        for _ in 0..10 {
            open.send(()).expect("gate");
        }
        drop(queue);
        thread.join().expect("exporter thread");
        let at: Vec<u64> = seen.lock().expect("lock").iter().map(|e| e.at_ns).collect();
        assert_eq!(at, vec![0, 6, 7, 8, 9], "newest kept, in order");
        assert_eq!(stats.exported.load(Relaxed), 5);
    }

    #[test]
    fn incidents_survive_a_flood_and_keep_their_place_in_order() {
        let mut h = start(4);
        occupy(&mut h, &beat(0));
        let Harness { mut queue, thread, seen, open, .. } = h;
        queue.offer(&beat(1));
        queue.offer(&panic_frame(2));
        for i in 3..1000 {
            queue.offer(&beat(i));
        }
        queue.offer(&panic_frame(1000));
        queue.offer(&beat(1001));
        let stats = queue.stats();
        assert_eq!(stats.incidents_dropped.load(Relaxed), 0);
        // 999 beats went into a lane of 4.
        assert_eq!(stats.dropped_full.load(Relaxed), 999 - 4);
        drop(queue);
        for _ in 0..10 {
            open.send(()).expect("gate");
        }
        thread.join().expect("exporter thread");
        let at: Vec<u64> = seen.lock().expect("lock").iter().map(|e| e.at_ns).collect();
        // Both panics survive, merged back where they were offered.
        assert_eq!(at, vec![0, 2, 997, 998, 999, 1000, 1001]);
    }

    #[test]
    fn incident_lane_overflow_is_counted_separately() {
        let mut h = start(4);
        occupy(&mut h, &beat(0));
        let Harness { mut queue, thread, open, .. } = h;
        let cap = incident_capacity(4) as u64;
        for i in 0..cap + 3 {
            queue.offer(&stall(i));
        }
        let stats = queue.stats();
        assert_eq!(stats.incidents_dropped.load(Relaxed), 3);
        assert_eq!(stats.dropped_full.load(Relaxed), 3);
        drop(open); // the exporter panics at its next event
        drop(queue);
        assert!(thread.join().is_err());
    }

    /// A crowd of agents flipping their status every beat fills its own
    /// lane and is counted there; the stall offered in the middle of it is
    /// delivered (it once shared the lane and was pushed out).
    #[test]
    fn status_flips_never_displace_a_stall() {
        let mut h = start(4);
        occupy(&mut h, &beat(0));
        let Harness { mut queue, thread, seen, open, .. } = h;
        let cap = incident_capacity(4) as u64;
        for i in 1..cap {
            queue.offer(&status_flip(i));
        }
        queue.offer(&stall(cap));
        for i in cap + 1..4 * cap {
            queue.offer(&status_flip(i));
        }
        let stats = queue.stats();
        assert_eq!(stats.incidents_dropped.load(Relaxed), 0);
        assert!(stats.notices_dropped.load(Relaxed) >= 2 * cap, "the crowd overflowed its own lane");
        drop(queue);
        // One permit per event it may still hold; it ends (closing the gate)
        // once what is queued is written, which may take fewer.
        for _ in 0..3 * cap {
            if open.send(()).is_err() {
                break;
            }
        }
        thread.join().expect("exporter thread");
        let seen = seen.lock().expect("lock");
        assert!(
            seen.iter().any(|e| e.at_ns == cap && matches!(e.kind, EventKind::Stall { .. })),
            "the stall was delivered"
        );
    }

    #[test]
    fn events_after_the_exporter_died_are_counted_as_such() {
        let Harness { mut queue, thread, open, .. } = start(4);
        drop(open);
        queue.offer(&beat(0)); // the exporter panics on it
        assert!(thread.join().is_err());
        queue.offer(&panic_frame(1));
        queue.offer(&beat(2));
        let stats = queue.stats();
        assert_eq!(stats.dropped_stopped.load(Relaxed), 2);
        assert_eq!(stats.dropped_full.load(Relaxed), 0);
        let mut samples = Vec::new();
        queue.telemetry().samples(&mut |s| samples.push((s.metric.name, s.label, s.value)));
        assert!(samples.contains(&("dropped", "exporter_stopped", 2)), "{samples:?}");
        assert!(samples.contains(&("queue_depth", "", 0)), "{samples:?}");
    }

    /// Records which producer each event came from.
    struct Sources(Arc<Mutex<Vec<(usize, u64)>>>);

    impl Exporter for Sources {
        fn wants_beats(&self) -> bool {
            true
        }
        fn export(&mut self, ev: &Event) -> std::io::Result<()> {
            self.export_from(0, ev)
        }
        fn export_from(&mut self, source: usize, ev: &Event) -> std::io::Result<()> {
            self.0.lock().expect("lock").push((source, ev.at_ns));
            Ok(())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn each_producer_is_seen_as_its_source() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (first, thread) =
            ExporterQueue::start("shared".into(), Box::new(Sources(seen.clone())), 16).expect("start");
        let (mut a, mut b) = (first.share_as(0), first.share_as(1));
        drop(first);
        a.offer(&beat(10));
        b.offer(&beat(20));
        a.offer(&beat(11));
        drop((a, b));
        thread.join().expect("exporter thread");
        assert_eq!(*seen.lock().expect("lock"), [(0, 10), (1, 20), (0, 11)]);
    }
}
