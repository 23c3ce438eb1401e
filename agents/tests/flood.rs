//! 10,000 local agents stalling at once: diagnoses are capped by the
//! per-second budget, the rest counted as undiagnosed, none lost silently.

use std::time::{Duration, Instant};

use varta_agents::{Resolver, ResolverConfig};
use varta_pipeline::Instrumented;
use varta_processor::{Event, EventKind, Processor, TrackerConfig};
use varta_proto::{Arrival, Batch, Beat, Frame, Source, Status, Transport};

const S: u64 = 1_000_000_000;

#[test]
fn ten_thousand_simultaneous_stalls_respect_the_budget() {
    let tracker = TrackerConfig { threshold: Duration::from_millis(100), ..TrackerConfig::default() };
    let config = ResolverConfig::default(); // 1,000 diagnoses per second
    let (resolver, handle) = Resolver::start("flood", config).expect("resolver");
    // Host pids above any pid_max: every look finds the process gone.
    let mut p = Processor::new(None, tracker, Box::new(|_| Some(1)))
        .expect("processor")
        .with_inspector(Box::new(handle));
    let t0 = 1_000 * S;
    let mut events: Vec<Event> = Vec::new();
    for chunk in (0..10_000u32).collect::<Vec<_>>().chunks(64) {
        let mut b = Batch::new();
        for &i in chunk {
            let pid = 5_000_000 + i;
            let beat = Beat {
                frame: Frame::new(Status::Ok, pid, 1, 1, 0),
                transport: Transport::Uds,
                source: Source::Local,
                host_pid: pid,
                received_ns: 0,
            };
            assert!(b.push(Arrival::Beat(beat)).is_ok());
        }
        p.handle_batch(&b, t0, &mut events);
    }
    events.clear();
    // All stall at the same instant.
    let stall_at = t0 + S / 10;
    p.fire_due(stall_at, &mut events);
    assert_eq!(events.iter().filter(|e| matches!(e.kind, EventKind::Stall { .. })).count(), 10_000);

    // Collect diagnoses as the processor would: polling at its own pace.
    let deadline = Instant::now() + Duration::from_secs(60);
    let diagnosed =
        |ev: &[Event]| ev.iter().filter(|e| matches!(e.kind, EventKind::Diagnosis { .. })).count();
    while diagnosed(&events) < 1_000 {
        assert!(Instant::now() < deadline, "only {} diagnoses", diagnosed(&events));
        std::thread::sleep(Duration::from_millis(10));
        p.fire_due(stall_at, &mut events);
    }
    let mut stats = Vec::new();
    resolver.stats.samples(&mut |s| stats.push((s.metric.name, s.label, s.value)));
    assert!(stats.contains(&("undiagnosed", "budget", 9_000)), "{stats:?}");
    assert!(stats.contains(&("diagnoses", "", 1_000)), "{stats:?}");
    assert_eq!(diagnosed(&events), 1_000, "exactly the budget");
    assert_eq!(p.stats().snapshot().stall_causes[varta_processor::Cause::Exited as usize], 1_000);
    drop(p);
    resolver.thread.join().expect("resolver ends with its processor");
}
