//! evidence-bench PID [--stacks] [--stack-threads N] [--no-dwarf] [--quiet]
//!
//! Captures PID twice with one `Capturer` (cold, then warm symbol cache),
//! prints the evidence of the cold capture and one `SUMMARY key=value…`
//! line that `evidence/bench/compare.py` reads: pause per stopped thread
//! (median/max), the stop window, both capture durations, how many stacks
//! contain `waiter_take_lock`, and how many threads are still traced.

use std::process::ExitCode;
use std::time::Instant;

use varta_evidence::{Capturer, Config};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let Some(pid) = args.get(1).and_then(|s| s.parse::<u32>().ok()) else {
        eprintln!("usage: evidence-bench PID [--stacks] [--stack-threads N] [--no-dwarf] [--quiet]");
        return ExitCode::from(2);
    };
    let flag = |f: &str| args.iter().any(|a| a == f);
    let value = |f: &str| args.iter().position(|a| a == f).and_then(|i| args.get(i + 1)?.parse().ok());
    let defaults = Config::default();
    let config = Config {
        stacks: flag("--stacks"),
        dwarf: !flag("--no-dwarf"),
        stack_threads: value("--stack-threads").unwrap_or(defaults.stack_threads),
        max_threads: value("--stack-threads")
            .map_or(defaults.max_threads, |n: usize| n.max(defaults.max_threads)),
        ..defaults
    };
    let Some(start_time) = varta_pipeline::procfs::start_time(pid) else {
        eprintln!("evidence-bench: no such process {pid}");
        return ExitCode::from(1);
    };
    let mut capturer = Capturer::new(config);
    let t0 = Instant::now();
    let cold = match capturer.capture(pid, start_time) {
        Ok(e) => e,
        Err(skip) => {
            eprintln!("evidence-bench: skipped: {skip} ({})", skip.label());
            return ExitCode::from(1);
        }
    };
    let cold_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t1 = Instant::now();
    let warm = capturer.capture(pid, start_time);
    let warm_ms = t1.elapsed().as_secs_f64() * 1e3;

    if !flag("--quiet") {
        println!("{}", cold.summary());
        println!("{}", cold.compact_line());
        for g in &cold.groups {
            println!("-- {} thread(s) {} {} holder={:?}", g.tids.len(), g.kind.label(), g.key, g.holder);
            if let Some(trace) = g.stacktrace() {
                print!("{trace}");
            }
        }
        for t in cold.threads.iter().filter(|t| t.holder) {
            println!("-- holder {} ({})", t.tid, t.name);
            if let Some(s) = &t.stack {
                print!("{}", s.render());
            }
        }
    }
    let waiter_frames = cold
        .threads
        .iter()
        .filter(|t| {
            t.stack.as_ref().is_some_and(|s| {
                s.frames
                    .iter()
                    .any(|f| f.function.as_deref().is_some_and(|n| n.ends_with("waiter_take_lock")))
            })
        })
        .count();
    let traced = varta_pipeline::procfs::task_ids(pid)
        .unwrap_or_default()
        .iter()
        .filter(|tid| {
            varta_pipeline::procfs::read(&format!("/proc/{pid}/task/{tid}/status"))
                .ok()
                .and_then(|s| s.lines().find_map(|l| l.strip_prefix("TracerPid:")).map(|v| v.trim() != "0"))
                .unwrap_or(false)
        })
        .count();
    let (med, max, window) = cold.pauses.map_or((f64::NAN, f64::NAN, f64::NAN), |p| {
        (p.median.as_secs_f64() * 1e6, p.max.as_secs_f64() * 1e6, p.window.as_secs_f64() * 1e3)
    });
    println!(
        "SUMMARY threads={} stacks={} pause_med_us={med:.1} pause_max_us={max:.1} window_ms={window:.2} \
         cold_ms={cold_ms:.2} warm_ms={warm_ms:.2} warm_ok={} waiter_frames={waiter_frames} traced={traced} \
         binaries_skipped={}",
        cold.threads.len(),
        cold.counts.stacks_taken,
        warm.is_ok(),
        cold.counts.binaries_skipped.total(),
    );
    ExitCode::SUCCESS
}
