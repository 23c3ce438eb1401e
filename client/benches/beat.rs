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

    let mut lat = vec![0u32; beats];
    let (mut sent, mut dropped, mut failed) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    for slot in lat.iter_mut() {
        let t0 = Instant::now();
        let outcome = client.beat(Status::Ok, 7);
        let dt = t0.elapsed();
        *slot = u32::try_from(dt.as_nanos()).unwrap_or(u32::MAX);
        match outcome {
            BeatOutcome::Sent => sent += 1,
            BeatOutcome::Dropped(_) => dropped += 1,
            BeatOutcome::Failed(_) => failed += 1,
        }
    }
    let wall = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = drain.join();

    lat.sort_unstable();
    println!("beat() to a live UDS collector, {beats} beats in {wall:?}");
    println!("  sent {sent}, dropped (queue full) {dropped}, failed {failed}");
    println!("  received by collector thread (incl. warm-up) {}", received.load(Ordering::Relaxed));
    println!(
        "  latency ns: p50 {}  p99 {}  p99.9 {}  max {}  (Instant::now() costs ~{clock_ns:.0} ns)",
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        percentile(&lat, 0.999),
        lat[lat.len() - 1]
    );
}
