//! A bounded queue and thread in front of one exporter.
//!
//! Delivery: events reach the exporter in the order offered. Bound: at most
//! `capacity` events wait; when full, the oldest waiting event is dropped
//! and counted (`dropped`), never the producer blocked. Shutdown: dropping
//! every [`ExporterQueue`] disconnects the channel; the thread exports what
//! is left, flushes, and ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use varta_processor::Event;

use crate::Exporter;

/// Counters of one exporter queue.
#[derive(Debug, Default)]
pub struct ExporterStats {
    /// Events accepted into the queue.
    pub queued: AtomicU64,
    /// Events dropped because the queue was full (oldest first).
    pub dropped: AtomicU64,
    /// Events handed to the exporter successfully.
    pub exported: AtomicU64,
    /// Export or flush calls that failed.
    pub failed: AtomicU64,
}

/// Producer side of an exporter's queue. Cheap to use from the processor
/// thread: one `try_send` per event.
#[derive(Debug)]
pub struct ExporterQueue {
    id: String,
    tx: Sender<Event>,
    /// A receiver clone used only to evict the oldest event when full.
    evict: Receiver<Event>,
    stats: Arc<ExporterStats>,
    wants_beats: bool,
}

impl ExporterQueue {
    /// Starts `exporter` on its own thread behind a queue of `capacity` events.
    pub fn start(
        id: String,
        exporter: Box<dyn Exporter>,
        capacity: usize,
    ) -> std::io::Result<(ExporterQueue, JoinHandle<()>)> {
        let (tx, rx) = bounded(capacity.max(1));
        let stats = Arc::new(ExporterStats::default());
        let wants_beats = exporter.wants_beats();
        let thread = std::thread::Builder::new().name(format!("export-{id}")).spawn({
            let (rx, stats, id) = (rx.clone(), stats.clone(), id.clone());
            move || drain(&id, exporter, &rx, &stats)
        })?;
        Ok((ExporterQueue { id, tx, evict: rx, stats, wants_beats }, thread))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn stats(&self) -> Arc<ExporterStats> {
        self.stats.clone()
    }

    pub fn wants_beats(&self) -> bool {
        self.wants_beats
    }

    /// Queues an event, dropping the oldest queued one if the queue is full.
    pub fn offer(&self, event: &Event) {
        let mut event = *event;
        loop {
            match self.tx.try_send(event) {
                Ok(()) => {
                    self.stats.queued.fetch_add(1, Relaxed);
                    return;
                }
                Err(TrySendError::Full(back)) => {
                    if self.evict.try_recv().is_ok() {
                        self.stats.dropped.fetch_add(1, Relaxed);
                    }
                    event = back;
                }
                Err(TrySendError::Disconnected(_)) => {
                    // The exporter thread is gone (it only ends on disconnect or panic).
                    self.stats.dropped.fetch_add(1, Relaxed);
                    return;
                }
            }
        }
    }
}

/// Warns at most once per interval, with the number of failures in between.
struct FailureLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl FailureLog {
    fn record(&mut self, id: &str, what: &str, err: &std::io::Error) {
        let now = Instant::now();
        if self.last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10)) {
            tracing::warn!(exporter = id, suppressed = self.suppressed, "{what} failed: {err}");
            self.last = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
    }
}

fn drain(id: &str, mut exporter: Box<dyn Exporter>, rx: &Receiver<Event>, stats: &ExporterStats) {
    let mut failures = FailureLog { last: None, suppressed: 0 };
    let mut export = |exporter: &mut Box<dyn Exporter>, ev: &Event| match exporter.export(ev) {
        Ok(()) => {
            stats.exported.fetch_add(1, Relaxed);
        }
        Err(e) => {
            stats.failed.fetch_add(1, Relaxed);
            failures.record(id, "export", &e);
        }
    };
    // Block for the next event, then take everything already waiting, then
    // flush: one flush per burst keeps latency low when idle and cost low
    // under load.
    while let Ok(first) = rx.recv() {
        export(&mut exporter, &first);
        while let Ok(ev) = rx.try_recv() {
            export(&mut exporter, &ev);
        }
        if let Err(e) = exporter.flush() {
            stats.failed.fetch_add(1, Relaxed);
            tracing::warn!(exporter = id, "flush failed: {e}");
        }
    }
    if let Err(e) = exporter.flush() {
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

    /// Records exported `at_ns` values; blocks until released, to fill the queue.
    struct Slow {
        seen: Arc<Mutex<Vec<u64>>>,
        gate: Receiver<()>,
    }

    impl Exporter for Slow {
        fn wants_beats(&self) -> bool {
            true
        }
        fn export(&mut self, ev: &Event) -> std::io::Result<()> {
            let _ = self.gate.recv();
            self.seen.lock().expect("lock").push(ev.at_ns);
            Ok(())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn ev(at_ns: u64) -> Event {
        Event {
            at_ns,
            agent: None,
            kind: EventKind::Panic { frame: Frame::new(Status::Critical, 2, 0, 1, 0) },
        }
    }

    #[test]
    fn full_queue_drops_oldest_counts_it_and_drains_on_shutdown() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (open, gate) = crossbeam_channel::unbounded();
        let (queue, thread) =
            ExporterQueue::start("slow".into(), Box::new(Slow { seen: seen.clone(), gate }), 4)
                .expect("start");
        // The exporter takes event 0 and blocks on the gate; 1..=4 fill the
        // queue; 5..=9 each evict the oldest waiting event.
        queue.offer(&ev(0));
        while !queue.evict.is_empty() {
            std::thread::yield_now();
        }
        for i in 1..10 {
            queue.offer(&ev(i));
        }
        let stats = queue.stats();
        assert_eq!(stats.dropped.load(Relaxed), 5);
        assert_eq!(stats.queued.load(Relaxed), 10);
        for _ in 0..10 {
            open.send(()).expect("gate");
        }
        drop(queue);
        thread.join().expect("exporter thread");
        assert_eq!(*seen.lock().expect("lock"), vec![0, 6, 7, 8, 9], "newest kept, in order");
        assert_eq!(stats.exported.load(Relaxed), 5);
    }
}
