//! stuck PID [--mode ptrace|nostop|auto] [--no-dwarf] [--no-debug-dir] [--stack-kb N] [--quiet]
//!
//! 1. zero-stop snapshot + grouping (proc_threads, grouping)
//! 2. capture each thread, one at a time (ptrace_capture), or zero-stop for threads blocked
//!    in a syscall (--mode nostop / auto)
//! 3. offline unwind + symbolize (unwind, symbols), print identical stacks once with counts
//! 4. verify TracerPid is 0 on every thread
use evspike::ptrace_capture::{self, Outcome};
use evspike::proc_threads::{self, SyscallState};
use evspike::symbols::BinaryCache;
use evspike::unwind::ProcessModules;
use evspike::{grouping, maps, mono_ns};
use std::collections::BTreeMap;

fn pct(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize] as f64 / 1e3
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let pid: i32 = args.get(1).and_then(|s| s.parse().ok()).expect("usage: stuck PID [opts]");
    let flag = |f: &str| args.iter().any(|a| a == f);
    let val = |f: &str| args.iter().position(|a| a == f).and_then(|i| args.get(i + 1).cloned());
    let mode = val("--mode").unwrap_or_else(|| "ptrace".into());
    let quiet = flag("--quiet");
    let mut opt = ptrace_capture::Options::default();
    if let Some(kb) = val("--stack-kb") {
        opt.stack_bytes = kb.parse::<usize>().unwrap() * 1024;
    }

    let t_start = mono_ns();
    // -- 1. zero-stop snapshot
    let snap = proc_threads::snapshot(pid, false).expect("snapshot");
    let groups = grouping::group(pid, &snap);
    let t_snap = mono_ns();
    let maps = maps::read_maps(pid).expect("maps");

    // Modules are parsed before capturing only in auto mode (it must unwind right away to
    // decide whether a ptrace fallback is needed). A long-running collector would have
    // them cached anyway; capture_ms never includes module parsing.
    let mut cache = BinaryCache::default();
    let t_mod0 = mono_ns();
    let pm = ProcessModules::build(pid, &maps, &mut cache, !flag("--no-debug-dir"), !flag("--no-dwarf"));
    let t_mod1 = mono_ns();
    let mut fh_cache = framehop::x86_64::CacheX86_64::new();

    // -- 2. capture, one thread at a time
    let cap_start = mono_ns();
    let mut captured = vec![];
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    let mut pauses = vec![];
    let mut nostop_ok = 0;
    let mut fallbacks = 0;
    for t in &snap {
        let nostop = match (&mode[..], &t.syscall) {
            ("nostop" | "auto", SyscallState::Blocked { sp, pc, .. }) => Some((*sp, *pc)),
            _ => None,
        };
        if let Some((sp, pc)) = nostop {
            let c = ptrace_capture::capture_blocked_nostop(pid, t.tid, sp, pc, &maps, &opt);
            let needs_bp = mode == "auto" && {
                let (_, trunc) = pm.unwind(&c, &mut fh_cache);
                trunc.is_some_and(|e| e.contains(&format!("{}", ptrace_capture::UNKNOWN_BP)) || e.contains(&format!("{:x}", ptrace_capture::UNKNOWN_BP)))
            };
            if !needs_bp {
                nostop_ok += 1;
                captured.push(c);
                continue;
            }
            fallbacks += 1;
        }
        if mode == "nostop" {
            *failures.entry("not-blocked (nostop mode)".into()).or_default() += 1;
            continue;
        }
        match ptrace_capture::capture_thread(pid, t.tid, &maps, &opt) {
            Outcome::Ok(c) => {
                pauses.push(c.pause_ns);
                captured.push(c);
            }
            other => *failures.entry(format!("{other:?}").chars().take(60).collect()).or_default() += 1,
        }
    }
    let cap_end = mono_ns();

    // -- 3. offline unwind + symbolize
    let t_unw0 = mono_ns();
    let mut by_sig: BTreeMap<String, (Vec<i32>, String)> = BTreeMap::new();
    let mut truncated = 0;
    for c in &captured {
        let st = pm.unwind_and_symbolize(c, &mut fh_cache);
        if st.truncated.is_some() {
            truncated += 1;
        }
        let e = by_sig.entry(st.signature()).or_insert_with(|| (vec![], st.render()));
        e.0.push(c.tid);
    }
    let t_unw = mono_ns();

    // -- 4. verify nobody is left traced by us
    let still_traced = proc_threads::list_tids(pid)
        .unwrap_or_default()
        .into_iter()
        .filter(|&tid| proc_threads::tracer_pid(pid, tid).unwrap_or(0) != 0)
        .count();

    if !quiet {
        println!("== zero-stop groups");
        for (k, tids) in &groups {
            println!("{:>4} threads  {:?}", tids.len(), k);
        }
        println!("== stacks ({} distinct)", by_sig.len());
        let mut v: Vec<_> = by_sig.values().collect();
        v.sort_by(|a, b| b.0.len().cmp(&a.0.len()));
        for (tids, text) in v {
            let names: Vec<_> = tids.iter().take(3).map(|t| snap.iter().find(|x| x.tid == *t).map(|x| x.comm.clone()).unwrap_or_default()).collect();
            println!("-- {} thread(s), e.g. {:?}", tids.len(), names);
            print!("{text}");
        }
        for e in &pm.errors {
            println!("module error: {e}");
        }
    }
    println!(
        "SUMMARY stuck mode={mode} threads={} captured={} failures={:?} truncated={} still_traced={} \
         pause_med_us={:.1} pause_p90_us={:.1} pause_max_us={:.1} snap_ms={:.2} capture_ms={:.2} \
         cap_start_ns={cap_start} cap_end_ns={cap_end} modules_ms={:.2} unwind_sym_ms={:.2} total_ms={:.2} \
         modules={} cache_misses={} nostop_ok={nostop_ok} ptrace_fallbacks={fallbacks}",
        snap.len(),
        captured.len(),
        failures,
        truncated,
        still_traced,
        pct(&mut pauses.clone(), 0.5),
        pct(&mut pauses.clone(), 0.9),
        pct(&mut pauses, 1.0),
        (t_snap - t_start) as f64 / 1e6,
        (cap_end - cap_start) as f64 / 1e6,
        (t_mod1 - t_mod0) as f64 / 1e6,
        (t_unw - t_unw0) as f64 / 1e6,
        (t_unw - t_start) as f64 / 1e6,
        pm.modules.len(),
        cache.misses,
    );
}
