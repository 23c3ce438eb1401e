//! `beat()` latency distribution to a live Unix datagram collector.
//!
//! A receiver thread drains a bound socket (large `SO_RCVBUF`); the main
//! thread times every single `beat()` with `Instant::now()` and reports
//! p50/p99/p99.9/max. Dropped beats (kernel queue full) are counted apart.
//! Run: `cargo bench -p varta-client --bench beat` (`VARTA_BEATS=N` to change
//! the number of timed beats, default 1,000,000).

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use varta_client::{BeatOutcome, Client};
use varta_proto::Status;

fn set_rcvbuf(socket: &UnixDatagram, bytes: libc::c_int) {
    // SAFETY: `bytes` outlives the call and the length matches its type.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        eprintln!("SO_RCVBUF: {}", std::io::Error::last_os_error());
    }
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let beats: usize = std::env::var("VARTA_BEATS").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bench.sock");
    let rx = UnixDatagram::bind(&path).expect("bind collector socket");
    set_rcvbuf(&rx, 8 << 20);
    rx.set_read_timeout(Some(Duration::from_millis(50))).expect("read timeout");

    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let drain = {
        let (stop, received) = (Arc::clone(&stop), Arc::clone(&received));
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if rx.recv(&mut buf).is_ok() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let client = Client::connect_uds(&path).expect("connect");
    for _ in 0..10_000 {
        let _ = client.beat(Status::Ok, 0);
    }
    // Cost of the timing itself, to read the numbers against.
    let t = Instant::now();
    for _ in 0..100_000 {
        std::hint::black_box(Instant::now());
    }
    let clock_ns = t.elapsed().as_nanos() as f64 / 100_000.0;

    // Back to back: the collector thread cannot keep up (net.unix.max_dgram_qlen
    // bounds the queue), so this also times the Dropped(QueueFull) path.
    let mut sent_lat = Vec::with_capacity(beats);
    let mut dropped_lat = Vec::with_capacity(beats);
    let start = Instant::now();
    for _ in 0..beats {
        let t0 = Instant::now();
        let outcome = client.beat(Status::Ok, 7);
        let ns = u32::try_from(t0.elapsed().as_nanos()).unwrap_or(u32::MAX);
        match outcome {
            BeatOutcome::Sent => sent_lat.push(ns),
            _ => dropped_lat.push(ns),
        }
    }
    let wall = start.elapsed();
    println!("beat() to a live UDS collector, {beats} beats back to back in {wall:?}");
    report("all", sent_lat.iter().chain(&dropped_lat).copied().collect());
    report("sent", sent_lat);
    report("dropped", dropped_lat);

    // Paced (one beat every 20 µs, busy-waited): the queue is never full, as
    // for a real agent beating every few ms.
    let paced_n = (beats / 10).max(1);
    let mut paced = Vec::with_capacity(paced_n);
    let mut not_sent = 0u64;
    let mut next = Instant::now();
    for _ in 0..paced_n {
        next += Duration::from_micros(20);
        while Instant::now() < next {
            std::hint::spin_loop();
        }
        let t0 = Instant::now();
        let outcome = client.beat(Status::Ok, 7);
        paced.push(u32::try_from(t0.elapsed().as_nanos()).unwrap_or(u32::MAX));
        not_sent += u64::from(!outcome.is_sent());
    }
    println!("paced, {paced_n} beats at 20 µs intervals ({not_sent} not sent):");
    report("paced", paced);

    stop.store(true, Ordering::Relaxed);
    let _ = drain.join();
    println!("received by collector thread (incl. warm-up): {}", received.load(Ordering::Relaxed));
    println!("Instant::now() costs ~{clock_ns:.0} ns (included in every sample)");
}

fn report(label: &str, mut lat: Vec<u32>) {
    if lat.is_empty() {
        println!("  {label:<8} n=0");
        return;
    }
    lat.sort_unstable();
    println!(
        "  {label:<8} n={:<8} p50 {:>6} ns  p99 {:>6} ns  p99.9 {:>6} ns  max {:>8} ns",
        lat.len(),
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        percentile(&lat, 0.999),
        lat[lat.len() - 1]
    );
}
