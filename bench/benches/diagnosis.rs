//! `cargo bench -p varta-bench --bench diagnosis`: what the resolver costs.
//!
//! * one diagnosis (two looks at a live process — this one — and the
//!   verdict) and one attribute resolution, on the resolver thread;
//! * the processor's ingest with 1,000 stalls per second being handed to
//!   the resolver (and the recovery runner) vs nothing attached: 100,000 live UDS agents beating, plus 1,000
//!   new agents per second that beat once and stall a second later, in
//!   virtual time as fast as the processor can go (best of 3 passes).
//!
//! Plain `std::time::Instant` timing, like the tracker bench.

use std::hint::black_box;
use std::time::{Duration, Instant};

use varta_agents::attributes::{Host, resolve};
use varta_agents::diagnose::{diagnose, sample};
use varta_agents::{Resolver, ResolverConfig};
use varta_processor::recovery::Recovery;
use varta_processor::{DiscardSink, Processor, RecoveryConfig, TrackerConfig};
use varta_proto::{Arrival, BATCH_CAPACITY, Batch, Beat, Frame, Source, Status, Transport};

const MS: u64 = 1_000_000;

fn uds(pid: u32, nonce: u64) -> Arrival {
    Arrival::Beat(Beat {
        frame: Frame::new(Status::Ok, pid, nonce, nonce, 0),
        transport: Transport::Uds,
        source: Source::Local,
        host_pid: pid,
        received_ns: 0,
    })
}

fn per_call(iters: u32, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed().as_nanos() as f64 / f64::from(iters)
}

fn lookups(quick: bool) {
    let me = std::process::id();
    let host = Host::read();
    let iters = if quick { 20 } else { 2_000 };
    let diag = per_call(iters, || {
        let a = sample(me);
        let b = sample(me);
        black_box(diagnose(0, a.as_ref().map_err(|e| *e), b.as_ref().map_err(|e| *e), 200 * MS, 100));
    });
    let attrs = per_call(iters, || {
        black_box(resolve(me, host, false));
    });
    let threads = sample(me).map_or(0, |s| s.threads.len());
    println!(
        "one diagnosis (2 looks, {threads} threads): {:.1} µs | one attribute resolution: {:.1} µs",
        diag / 1e3,
        attrs / 1e3
    );
}

/// What is attached to the processor.
#[derive(Clone, Copy, PartialEq)]
enum Attached {
    Nothing,
    Resolver,
    ResolverAndRecovery,
}

/// Beats/s the processor handles over `secs` of virtual time.
fn ingest(attached: Attached, secs: u64, dir: &std::path::Path) -> (f64, u64) {
    let live = 100_000u32;
    let tracker =
        TrackerConfig { threshold: Duration::from_secs(1), capacity: 1 << 20, ..TrackerConfig::default() };
    let mut p = Processor::new(None, tracker, Box::new(|pid| Some(u64::from(pid)))).expect("processor");
    let mut threads = Vec::new();
    if attached != Attached::Nothing {
        let (r, handle) = Resolver::start("bench", ResolverConfig::default()).expect("resolver");
        p = p.with_inspector(Box::new(handle));
        threads.push(r.thread);
    }
    if attached == Attached::ResolverAndRecovery {
        let config: RecoveryConfig = serde_json::from_value(serde_json::json!({
            "exec": ["/bin/true"],
            "audit_file": dir.join("audit.tsv"),
            "audit_sync": "interval",
        }))
        .expect("recovery config");
        let probe = Box::new(varta_agents::proc::process_facts);
        let (r, handle) = Recovery::start(
            "bench",
            config,
            probe,
            Box::new(|_| varta_processor::recovery::TargetFacts::default()),
            None,
            None,
        )
        .expect("recovery");
        p = p.with_recovery(handle);
        threads.push(r.thread);
    }
    let mut sink = DiscardSink;
    // Pids above pid_max: the resolver's looks fail fast (these agents
    // "exited"), so this measures the processor side, not /proc.
    let base = 5_000_000u32;
    let mut now = 1_000 * 1_000_000_000u64;
    let mut b = Batch::new();
    for i in 0..live {
        if b.push(uds(base + i, 1)).is_err() {
            p.handle_batch(&b, now, &mut sink);
            b.clear();
            let _ = b.push(uds(base + i, 1));
        }
    }
    p.handle_batch(&b, now, &mut sink);
    // 500,000 beats/s of virtual time: a batch every 128 µs; one new
    // short-lived agent per millisecond (1,000 stalls/s a second later).
    let batch_ns = 128_000u64;
    let batches = secs * 1_000_000_000 / batch_ns;
    let mut next = 0u32;
    let mut nonce = 2u64;
    let mut victim = base + live;
    let mut last_victim_ns = now;
    let mut beats = 0u64;
    let start = Instant::now();
    for _ in 0..batches {
        now += batch_ns;
        b.clear();
        if now - last_victim_ns >= MS {
            last_victim_ns = now;
            let _ = b.push(uds(victim, 1));
            victim += 1;
        }
        while b.len() < BATCH_CAPACITY {
            let _ = b.push(uds(base + next, nonce));
            next += 1;
            if next == live {
                next = 0;
                nonce += 1;
            }
        }
        beats += b.len() as u64;
        p.handle_batch(black_box(&b), now, &mut sink);
        p.fire_due(now, &mut sink);
    }
    let rate = beats as f64 / start.elapsed().as_secs_f64();
    let stalls = p.stats().snapshot().stalls;
    drop(p);
    for t in threads {
        let _ = t.join();
    }
    (rate, stalls)
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    lookups(quick);
    let (secs, passes) = if quick { (1, 1) } else { (5, 3) };
    let dir = std::env::temp_dir().join(format!("varta-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    for (attached, label) in [
        (Attached::Nothing, "nothing attached"),
        (Attached::Resolver, "resolver"),
        (Attached::ResolverAndRecovery, "resolver + recovery"),
    ] {
        let mut best = 0f64;
        let mut stalls = 0;
        for _ in 0..passes {
            let _ = std::fs::remove_file(dir.join("audit.tsv"));
            let (rate, s) = ingest(attached, secs, &dir);
            best = best.max(rate);
            stalls = s;
        }
        println!(
            "ingest, 100,000 live agents + 1,000 stalls/s, {label}: {best:.0} beats/s ({stalls} stalls in {secs} s virtual)"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
