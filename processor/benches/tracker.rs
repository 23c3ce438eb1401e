//! Tracker cost per beat and per stall at 1,000 / 100,000 / 1,000,000 agents.
//!
//! * `beat_update/N`: batches of 64 accepted beats for agents spread over
//!   the whole table (each moves its agent to the live tail).
//! * `stall_cycle/N`: steady state where exactly one agent is due per step:
//!   `fire_due` stalls it, then its next beat resumes it (stall + resume +
//!   beat per iteration).
//!
//! Flat numbers across N show O(1) per beat and per stall.
//! Run: `cargo bench -p varta-processor --bench tracker`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use varta_processor::{DiscardSink, Processor, TrackerConfig};
use varta_proto::{Arrival, BATCH_CAPACITY, Batch, Beat, Frame, Source, Status, Transport};

const SIZES: [u32; 3] = [1_000, 100_000, 1_000_000];
const T0: u64 = 1_000_000_000_000;

fn beat(i: u32, nonce: u64) -> Beat {
    let source = Source::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, (i >> 8) as u8 & 0x3f, i as u8)));
    Beat {
        frame: Frame::new(Status::Ok, i + 1, nonce, nonce, 0),
        transport: Transport::SecureMaster,
        source,
        host_pid: i + 1,
        received_ns: 0,
    }
}

fn processor(agents: u32, threshold: Duration) -> Processor {
    let cfg = TrackerConfig { capacity: agents as usize, threshold, ..TrackerConfig::default() };
    match Processor::new(None, cfg, Box::new(|_| None)) {
        Ok(p) => p,
        Err(e) => panic!("bench config: {e}"),
    }
}

/// Fills the tracker; agent `i` beats at `T0 + i × spacing_ns`.
fn populate(p: &mut Processor, agents: u32, spacing_ns: u64) {
    let mut b = Batch::new();
    for i in 0..agents {
        b.clear();
        let _ = b.push(Arrival::Beat(beat(i, 1)));
        p.handle_batch(&b, T0 + u64::from(i) * spacing_ns, &mut DiscardSink);
    }
}

fn beat_update(c: &mut Criterion) {
    let mut group = c.benchmark_group("beat_update");
    group.throughput(Throughput::Elements(BATCH_CAPACITY as u64));
    for agents in SIZES {
        let mut p = processor(agents, Duration::from_secs(3600));
        populate(&mut p, agents, 0);
        let mut nonce = 2u64;
        let mut cursor = 0u32;
        let mut now = T0 + 1;
        let mut b = Batch::new();
        group.bench_with_input(BenchmarkId::from_parameter(agents), &agents, |bench, &agents| {
            bench.iter(|| {
                b.clear();
                for _ in 0..BATCH_CAPACITY {
                    // A stride co-prime with N visits agents all over the table.
                    cursor = (cursor + 7919) % agents;
                    let _ = b.push(Arrival::Beat(beat(cursor, nonce)));
                    nonce += 1;
                }
                now += 1_000;
                p.handle_batch(black_box(&b), now, &mut DiscardSink);
            });
        });
    }
    group.finish();
}

fn stall_cycle(c: &mut Criterion) {
    let mut group = c.benchmark_group("stall_cycle");
    group.throughput(Throughput::Elements(1));
    for agents in SIZES {
        let threshold_ns = 1_000_000_000u64;
        let spacing = threshold_ns / u64::from(agents);
        let mut p = processor(agents, Duration::from_nanos(threshold_ns));
        populate(&mut p, agents, spacing);
        // Agent k is due at T0 + k × spacing + threshold; walk that schedule.
        let mut step = 0u64;
        let mut b = Batch::new();
        group.bench_with_input(BenchmarkId::from_parameter(agents), &agents, |bench, &agents| {
            bench.iter(|| {
                let now = T0 + step * spacing + threshold_ns;
                let next = p.fire_due(now, &mut DiscardSink);
                let agent = (step % u64::from(agents)) as u32;
                b.clear();
                let _ = b.push(Arrival::Beat(beat(agent, step + 2)));
                p.handle_batch(&b, now, &mut DiscardSink);
                step += 1;
                black_box(next)
            });
        });
        let stats = p.stats().snapshot();
        assert!(stats.stalls > 0 && stats.stalls == stats.resumes, "{stats:?}");
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! { name = benches; config = config(); targets = beat_update, stall_cycle }
criterion_main!(benches);
