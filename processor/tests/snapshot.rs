//! The published snapshot: a consistent cut, built incrementally, read
//! without ever blocking the processor, refreshed by the run loop.

mod common;

use std::thread;
use std::time::Duration;

use common::*;
use varta_pipeline::queue::batch_queue;
use varta_processor::{DiscardSink, EventKind, TrackerConfig, tracker::VIEW_CHUNK};
use varta_proto::Status;

#[test]
fn snapshot_is_empty_until_published_then_a_consistent_cut() {
    let mut p = processor(no_limits(), tracker(100));
    let reader = p.snapshots();
    assert_eq!(reader.latest().seq, 0);
    assert_eq!(reader.latest().agent_count(), 0);

    p.handle_batch(&batch(&[uds(10, 1), uds(11, 1)]), T0, &mut DiscardSink);
    assert_eq!(reader.latest().seq, 0, "handle_batch alone does not publish");
    p.publish_snapshot(T0);
    let s1 = reader.latest();
    assert_eq!(s1.seq, 1);
    assert_eq!(s1.agent_count(), 2);
    assert_eq!(s1.stats.agents_tracked, 2);
    assert_eq!(s1.stats.beats_accepted, 2);

    // pid 10 stalls; 11 keeps beating.
    p.handle_batch(&batch(&[uds(11, 2)]), T0 + 60 * MS, &mut DiscardSink);
    let mut events = Vec::new();
    p.fire_due(T0 + 101 * MS, &mut events);
    assert!(matches!(events[0].kind, EventKind::Stall { .. }));
    p.publish_snapshot(T0 + 101 * MS);
    let s2 = reader.latest();
    assert_eq!(s2.stats.stalls, 1);
    assert_eq!(s2.stats.agents_stalled, 1);
    let stalled: Vec<_> = s2.agents().filter(|a| a.status == Status::Stall).map(|a| a.id.pid).collect();
    assert_eq!(stalled, [10], "agent list agrees with the counters");
    assert_eq!(s2.agents().map(|a| u64::from(a.stalls)).sum::<u64>(), s2.stats.stalls);
    assert_eq!(s2.agents().map(|a| a.beats).sum::<u64>(), s2.stats.beats_accepted);
    // The earlier snapshot is immutable.
    assert_eq!(s1.stats.stalls, 0);
    assert!(s1.agents().all(|a| a.status == Status::Ok));
}

#[test]
fn unchanged_chunks_are_shared_not_copied() {
    let mut p = processor(no_limits(), TrackerConfig { capacity: 4 * VIEW_CHUNK, ..tracker(10_000) });
    let reader = p.snapshots();
    let all: Vec<_> = (0..3 * VIEW_CHUNK as u32).map(|i| uds(100 + i, 1)).collect();
    for chunk in all.chunks(64) {
        p.handle_batch(&batch(chunk), T0, &mut DiscardSink);
    }
    p.publish_snapshot(T0);
    let before = reader.latest();
    // One agent in the last chunk beats again.
    p.handle_batch(&batch(&[uds(100 + 3 * VIEW_CHUNK as u32 - 1, 2)]), T0 + MS, &mut DiscardSink);
    p.publish_snapshot(T0 + MS);
    let after = reader.latest();
    assert_eq!(after.agent_count(), 3 * VIEW_CHUNK);
    let first_before = before.agents().next().map(|a| a as *const _);
    let first_after = after.agents().next().map(|a| a as *const _);
    assert_eq!(first_before, first_after, "an unchanged chunk is the same memory");
    let last_before = before.agents().last().map(|a| a as *const _);
    let last_after = after.agents().last().map(|a| a as *const _);
    assert_ne!(last_before, last_after, "the changed chunk was rebuilt");
    assert_eq!(after.agents().last().map(|a| a.beats), Some(2));
    assert_eq!(before.agents().last().map(|a| a.beats), Some(1));
}

#[test]
fn run_publishes_within_the_interval_and_at_exit() {
    let cfg = TrackerConfig { snapshot_interval: Duration::from_millis(20), ..tracker(60_000) };
    let p = processor(no_limits(), cfg);
    let reader = p.snapshots();
    let (tx, rx) = batch_queue(16);
    let worker = thread::spawn(move || p.run(rx, &mut DiscardSink));
    assert!(tx.try_send(Box::new(batch(&[uds(7, 1)]))).is_ok());
    // No further batch arrives: the publication must come from the loop's own wake-up.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while reader.latest().stats.beats_accepted == 0 {
        assert!(std::time::Instant::now() < deadline, "no snapshot published while idle");
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(reader.latest().agent_count(), 1);
    let seq = reader.latest().seq;
    thread::sleep(Duration::from_millis(100));
    assert_eq!(reader.latest().seq, seq, "nothing changed, nothing published");
    assert!(tx.try_send(Box::new(batch(&[uds(7, 2)]))).is_ok());
    drop(tx);
    worker.join().expect("processor thread");
    assert_eq!(reader.latest().stats.beats_accepted, 2, "final snapshot at exit");
}

#[test]
fn pending_changes_are_visible_and_fresh_waits_for_them() {
    let cfg = TrackerConfig { snapshot_interval: Duration::from_millis(200), ..tracker(60_000) };
    let p = processor(no_limits(), cfg);
    let reader = p.snapshots();
    assert!(reader.is_current(), "nothing happened yet");
    let (tx, rx) = batch_queue(16);
    let worker = thread::spawn(move || p.run(rx, &mut DiscardSink));
    assert!(tx.try_send(Box::new(batch(&[uds(7, 1)]))).is_ok());
    // The first change is published as soon as it is handled (a batch still
    // in the queue is not a change yet); the second waits for the interval.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while reader.latest().stats.beats_accepted == 0 {
        assert!(std::time::Instant::now() < deadline, "first change never published");
        thread::sleep(Duration::from_millis(1));
    }
    assert!(tx.try_send(Box::new(batch(&[uds(7, 2)]))).is_ok());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while reader.is_current() {
        assert!(std::time::Instant::now() < deadline, "the second batch never marked the snapshot stale");
        thread::sleep(Duration::from_millis(1));
    }
    let second = reader.fresh(Duration::from_secs(10));
    assert_eq!(second.stats.beats_accepted, 2, "fresh() returned before the pending change was published");
    assert!(reader.is_current());
    drop(tx);
    worker.join().expect("processor thread");
}
