//! `cargo bench -p varta-bench --bench tracker`: the processor's per-beat
//! cost (rate limiter off, tracker update) and stall scheduling at 1,000 /
//! 100,000 / 1,000,000 tracked agents. O(1) per beat means the ns/beat
//! column stays flat as the agent count grows (cache misses aside).
//!
//! Each size runs twice, side by side: `shared` (one threshold, as before
//! per-agent deadlines) and `per-agent` (agents from four sources under
//! three `source` rules plus the default, and learning on: every beat
//! updates the agent's learned interval and picks its threshold class).
//!
//! Plain `std::time::Instant` timing (no criterion) so the bench builds in
//! seconds; each figure is the best of 5 passes.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use varta_processor::threshold::{Cidr, Match};
use varta_processor::{AdaptiveConfig, DiscardSink, Processor, ThresholdRule, TrackerConfig};
use varta_proto::{Arrival, BATCH_CAPACITY, Batch, Beat, Frame, Source, Status, Transport};

const THRESHOLD: Duration = Duration::from_secs(1);

/// Sources of the agents in `per-agent` mode (rules on .2, .3 and .4).
const SOURCES: u8 = 4;

fn processor(capacity: usize, per_agent: bool) -> Processor {
    let mut cfg = TrackerConfig { threshold: THRESHOLD, capacity, ..TrackerConfig::default() };
    if per_agent {
        cfg.thresholds = (2..=SOURCES)
            .map(|i| ThresholdRule {
                matches: Match { source: Cidr::parse(&format!("127.0.0.{i}")).ok(), ..Match::default() },
                threshold: THRESHOLD * u32::from(i),
            })
            .collect();
        cfg.adaptive = AdaptiveConfig { enabled: true, ..AdaptiveConfig::default() };
    }
    match Processor::new(None, cfg, Box::new(|_| Some(1))) {
        Ok(p) => p,
        Err(e) => panic!("tracker config: {e}"),
    }
}

/// Batches covering agents `0..n` once, nonce `round`; `sources` loopback
/// addresses take turns.
fn batches(n: usize, round: u64, now: u64, sources: u8) -> Vec<Batch> {
    let mut out = Vec::with_capacity(n / BATCH_CAPACITY + 1);
    let mut b = Batch::new();
    for i in 0..n {
        let pid = 1000 + i as u32;
        let beat = Beat {
            frame: Frame::new(Status::Ok, pid, round, round, 0),
            transport: Transport::Udp,
            source: Source::Ip(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % usize::from(sources)) as u8))),
            host_pid: pid,
            received_ns: now,
        };
        if b.push(Arrival::Beat(beat)).is_err() {
            out.push(std::mem::replace(&mut b, Batch::new()));
            let _ = b.push(Arrival::Beat(beat));
        }
    }
    if !b.is_empty() {
        out.push(b);
    }
    out
}

fn bench(n: usize, per_agent: bool) -> f64 {
    let mut p = processor(n + 16, per_agent);
    let sources = if per_agent { SOURCES } else { 1 };
    let mut sink = DiscardSink;
    let t0 = 1_000_000_000u64;
    // Round 1 inserts every agent; later rounds are the steady state.
    for b in &batches(n, 1, t0, sources) {
        p.handle_batch(b, t0, &mut sink);
    }
    let mut best_update = f64::MAX;
    let mut now = t0;
    for round in 2..7u64 {
        let bs = batches(n, round, now, sources);
        // 100 ms later: nothing falls due (learning sees a 100 ms beat).
        now += 100_000_000;
        let start = Instant::now();
        for b in &bs {
            p.handle_batch(black_box(b), now, &mut sink);
        }
        best_update = best_update.min(start.elapsed().as_nanos() as f64 / n as f64);
    }
    // Nothing due: fire_due must not look at every agent.
    let start = Instant::now();
    let iters = 100_000;
    for _ in 0..iters {
        black_box(p.fire_due(black_box(now), &mut sink));
    }
    let idle_fire = start.elapsed().as_nanos() as f64 / iters as f64;
    // Everyone falls silent: each stall is surfaced once, in deadline order.
    let start = Instant::now();
    black_box(p.fire_due(now + u64::from(SOURCES) * THRESHOLD.as_nanos() as u64 + 1, &mut sink));
    let per_stall = start.elapsed().as_nanos() as f64 / n as f64;
    let mode = if per_agent { "per-agent" } else { "shared" };
    println!(
        "{n:>9} agents {mode:>9} | update {best_update:7.1} ns/beat | fire_due (none due) {idle_fire:6.1} ns | stall {per_stall:7.1} ns/agent | state {:.0} B/agent",
        p.memory_bytes() as f64 / n as f64
    );
    best_update
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: keep it quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let sizes: &[usize] = if quick { &[1_000] } else { &[1_000, 100_000, 1_000_000] };
    for &n in sizes {
        let shared = bench(n, false);
        let per_agent = bench(n, true);
        println!("{n:>9} agents per-agent / shared update cost: {:.2}×", per_agent / shared);
    }
}
