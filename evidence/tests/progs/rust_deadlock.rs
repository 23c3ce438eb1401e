//! Rust twin of deadlock.c: N threads block on a std::sync::Mutex held by a
//! thread sleeping in `holdout_hold_lock`; a ticker thread logs gaps > 1.5 ms.
//! usage: rust_deadlock N_WAITERS [TICKER_LOG]
//! Built by the tests with `rustc --edition 2021 -O -C debuginfo=line-tables-only`
//! (no forced frame pointers), so the crate is `rust_deadlock`.
use std::io::Write;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

mod locks {
    use super::*;
    /// Holder: takes the lock and sleeps forever while holding it.
    #[inline(never)]
    pub fn holdout_hold_lock(m: &Mutex<u64>, ready: &Barrier) -> ! {
        let _g = m.lock().unwrap();
        ready.wait();
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }

    /// Waiter: blocks forever in Mutex::lock (futex wait).
    #[inline(never)]
    pub fn waiter_take_lock(m: &Mutex<u64>) -> u64 {
        let g = m.lock().unwrap();
        std::hint::black_box(*g)
    }
}

fn mono_ns() -> u64 {
    let mut ts = libc_timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into a valid timespec.
    unsafe { clock_gettime(1 /* CLOCK_MONOTONIC */, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
#[repr(C)]
struct libc_timespec { tv_sec: i64, tv_nsec: i64 }
extern "C" { fn clock_gettime(clk: i32, ts: *mut libc_timespec) -> i32; }

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(4);
    let log = args.get(2).filter(|p| p.as_str() != "-").map(|p| {
        std::fs::OpenOptions::new().create(true).append(true).open(p).expect("ticker log")
    });
    let m = Arc::new(Mutex::new(0u64));
    let ready = Arc::new(Barrier::new(2));
    {
        let (m, ready) = (m.clone(), ready.clone());
        std::thread::Builder::new().name("holder".into()).stack_size(256 << 10)
            .spawn(move || locks::holdout_hold_lock(&m, &ready)).unwrap();
    }
    ready.wait();
    std::thread::Builder::new().name("ticker".into()).stack_size(256 << 10).spawn(move || {
        let mut log = log;
        let mut prev = mono_ns();
        let mut max = 0u64;
        let mut last = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(1));
            let t = mono_ns();
            let gap = t - prev;
            prev = t;
            max = max.max(gap);
            if gap > 1_500_000 {
                if let Some(f) = log.as_mut() { let _ = writeln!(f, "{t} {gap}"); }
            }
            if last.elapsed() > Duration::from_secs(10) {
                eprintln!("ticker: max gap so far {:.3} ms", max as f64 / 1e6);
                last = Instant::now();
            }
        }
    }).unwrap();
    for i in 0..n {
        let m = m.clone();
        std::thread::Builder::new().name(format!("waiter-{i}")).stack_size(256 << 10)
            .spawn(move || locks::waiter_take_lock(&m)).unwrap();
    }
    println!("READY {}", std::process::id());
    loop { std::thread::park(); }
}
