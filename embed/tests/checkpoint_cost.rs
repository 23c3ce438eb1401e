//! What keeping agents across restarts costs, at 100,000 and 1,000,000
//! agents: the processor's share (one step of a checkpoint copies
//! `STEP` agents), the writer's (encode, write, sync, rename) and the
//! bytes on disk, and a restart's (read, check, restore every agent).
//! Prints the numbers (BENCHMARKS.md has them, with the command); asserts
//! only that what comes back is what went in.
//!
//! `cargo test --release -p varta-embed --test checkpoint_cost -- --nocapture`

use std::time::{Duration, Instant};

use varta_embed::compose::storage::{StateFile, open_dir};
use varta_processor::checkpoint::STEP;
use varta_processor::{DiscardSink, Processor, TrackerConfig};
use varta_proto::{Arrival, Batch, Beat, Frame, Source, Status, Transport};

fn fleet(agents: u32) -> Processor {
    let cfg = TrackerConfig {
        capacity: agents as usize,
        threshold: Duration::from_secs(60),
        ..TrackerConfig::default()
    };
    let mut p = Processor::new(None, cfg, Box::new(|pid| Some(u64::from(pid)))).expect("processor");
    let now = p.clock().now_ns();
    let mut b = Batch::new();
    for i in 0..agents {
        let pid = i + 2;
        let beat = Beat {
            frame: Frame::new(Status::Ok, pid, 1, 1, 0),
            transport: Transport::Uds,
            source: Source::Local,
            host_pid: pid,
            received_ns: 0,
        };
        if b.push(Arrival::Beat(beat)).is_err() {
            p.handle_batch(&b, now, &mut DiscardSink);
            b.clear();
            assert!(b.push(Arrival::Beat(beat)).is_ok());
        }
    }
    p.handle_batch(&b, now, &mut DiscardSink);
    assert_eq!(p.agents(), agents as usize);
    p
}

#[test]
fn checkpoint_cost_at_100_000_and_1_000_000_agents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = open_dir(&dir.path().join("state")).expect("state dir");
    for agents in [100_000u32, 1_000_000] {
        let p = fleet(agents);
        // The processor's part: one step at a time, the longest one noted
        // (into a vector sized for every agent up front, as the processor's).
        let (mut copied, mut from, mut longest) = (Vec::with_capacity(agents as usize), 0, Duration::ZERO);
        loop {
            let t = Instant::now();
            let next = p.export_agents(from, STEP, &mut copied);
            longest = longest.max(t.elapsed());
            match next {
                Some(n) => from = n,
                None => break,
            }
        }
        let steps = (agents as usize).div_ceil(STEP);
        let checkpoint = p.checkpoint_of(copied);
        // The writer's part.
        let file = StateFile::new(&dir, &format!("fleet-{agents}"));
        let t = Instant::now();
        let bytes = file.write(&checkpoint).expect("write");
        let write = t.elapsed();
        // A restart's part: read, check, restore into an empty processor.
        let t = Instant::now();
        let back = file.load(p.clock()).expect("restorable");
        let load = t.elapsed();
        let mut q = Processor::new(
            None,
            TrackerConfig {
                capacity: agents as usize,
                threshold: Duration::from_secs(60),
                ..TrackerConfig::default()
            },
            Box::new(|pid| Some(u64::from(pid))),
        )
        .expect("processor");
        let t = Instant::now();
        let restored =
            q.restore(&back, q.clock().now_ns(), varta_processor::BlindCause::Restart, &mut DiscardSink);
        let rearm = t.elapsed();
        assert_eq!(restored.agents, agents as usize);
        assert_eq!(back.agents, checkpoint.agents, "what comes back is what went in");
        println!(
            "{agents} agents: processor {steps} steps of {STEP}, longest {:.3} ms; writer {:.1} ms, {bytes} bytes ({:.1} B/agent); restart: read+check {:.1} ms, re-arm {:.1} ms",
            longest.as_secs_f64() * 1e3,
            write.as_secs_f64() * 1e3,
            bytes as f64 / f64::from(agents),
            load.as_secs_f64() * 1e3,
            rearm.as_secs_f64() * 1e3,
        );
    }
}
