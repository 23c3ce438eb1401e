//! `Processor::run` on a real channel with the real clock: a beat, then
//! silence, produces a Stall; dropping the sender ends the loop after the
//! queue is drained.

mod common;

use std::thread;
use std::time::Duration;

use common::*;
use crossbeam_channel::{Sender, bounded, unbounded};
use varta_pipeline::queue::batch_queue;
use varta_processor::{Event, EventKind, EventSink, Processor};

struct Forward(Sender<Event>);

impl EventSink for Forward {
    fn emit(&mut self, event: &Event) {
        let _ = self.0.send(*event);
    }
}

#[test]
fn run_surfaces_stalls_and_returns_on_disconnect() {
    let p: Processor = processor(None, tracker(20));
    let stats = p.stats();
    let (tx, rx) = batch_queue(16);
    let (events_tx, events_rx) = unbounded();
    let (done_tx, done_rx) = bounded(1);
    let worker = thread::spawn(move || {
        p.run(rx, &mut Forward(events_tx));
        let _ = done_tx.send(());
    });

    assert!(tx.try_send(Box::new(batch(&[uds(11, 1)]))).is_ok());
    let stall = events_rx.recv_timeout(Duration::from_secs(10));
    let stall = match stall {
        Ok(e) => e,
        Err(e) => panic!("no stall event: {e}"),
    };
    assert!(matches!(stall.kind, EventKind::Stall { incident: 1, silence_ns, .. } if silence_ns >= 20 * MS));
    assert_eq!(pid_of(&stall), Some(11));

    // Beats sent just before the sender goes away are still handled.
    assert!(tx.try_send(Box::new(batch(&[uds(11, 2)]))).is_ok());
    assert!(tx.try_send(Box::new(batch(&[uds(12, 1)]))).is_ok());
    drop(tx);
    assert!(done_rx.recv_timeout(Duration::from_secs(10)).is_ok(), "run did not return after disconnect");
    assert!(worker.join().is_ok());
    let resumed = events_rx.try_iter().any(|e| matches!(e.kind, EventKind::Resume { incident: 1, .. }));
    assert!(resumed);
    let snap = stats.snapshot();
    assert_eq!((snap.beats_accepted, snap.agents_tracked), (3, 2));
}

#[test]
fn run_returns_when_idle_and_disconnected() {
    let p = processor(None, tracker(2000));
    let (tx, rx) = batch_queue(1);
    let (done_tx, done_rx) = bounded(1);
    let worker = thread::spawn(move || {
        p.run(rx, &mut varta_processor::DiscardSink);
        let _ = done_tx.send(());
    });
    drop(tx);
    assert!(done_rx.recv_timeout(Duration::from_secs(10)).is_ok());
    assert!(worker.join().is_ok());
}

/// A pause returns the processor with its agents; batches queued meanwhile
/// wait for the next run, and a pause requested while it sleeps is seen.
#[test]
fn a_paused_processor_keeps_its_agents_and_its_queue() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use varta_processor::Ended;

    let mut p = processor(None, tracker(60_000));
    let (tx, rx) = batch_queue(16);
    let pause = Arc::new(AtomicBool::new(false));
    assert!(tx.try_send(Box::new(batch(&[uds(11, 1)]))).is_ok());
    let run = |mut p: Processor, rx, pause: Arc<AtomicBool>| {
        thread::spawn(move || {
            let ended = p.run_until(&rx, &mut varta_processor::DiscardSink, &pause);
            (p, rx, ended)
        })
    };
    let stats = p.stats();
    let worker = run(p, rx, Arc::clone(&pause));
    // Once the beat is handled the processor sleeps (no deadline is near).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stats.snapshot().beats_accepted == 0 {
        assert!(std::time::Instant::now() < deadline, "the beat was not handled");
        thread::sleep(Duration::from_millis(5));
    }
    pause.store(true, Ordering::Release);
    // Wake it at once (it would otherwise sleep to its next deadline, a minute away).
    assert!(tx.try_send(Box::new(batch(&[]))).is_ok());
    let (back, rx, ended) = worker.join().expect("processor thread");
    assert_eq!(ended, Ended::Paused);
    p = back;
    assert!(tx.try_send(Box::new(batch(&[uds(12, 1)]))).is_ok(), "queued while paused");
    pause.store(false, Ordering::Release);
    let worker = run(p, rx, Arc::clone(&pause));
    drop(tx);
    let (p, _, ended) = worker.join().expect("processor thread");
    assert_eq!(ended, Ended::Disconnected);
    assert_eq!(p.agents(), 2, "the agent from before the pause and the one queued during it");
}
