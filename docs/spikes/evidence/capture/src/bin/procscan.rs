//! procscan PID [--kstack] [--iters N]
//! Zero-stop snapshot of every thread + grouping by wait key, with timing.
use evspike::{grouping, mono_ns, proc_threads};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let pid: i32 = args.get(1).and_then(|s| s.parse().ok()).expect("usage: procscan PID [--kstack] [--iters N]");
    let kstack = args.iter().any(|a| a == "--kstack");
    let iters: usize = args.iter().position(|a| a == "--iters").and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(1);
    let mut times = vec![];
    let mut last = None;
    for _ in 0..iters {
        let t0 = mono_ns();
        let snap = proc_threads::snapshot(pid, kstack).expect("snapshot");
        let groups = grouping::group(pid, &snap);
        times.push(mono_ns() - t0);
        last = Some((snap, groups));
    }
    let (snap, groups) = last.unwrap();
    for (k, tids) in &groups {
        let names: Vec<_> = tids.iter().take(4).map(|t| snap.iter().find(|x| x.tid == *t).map(|x| x.comm.clone()).unwrap_or_default()).collect();
        println!("{:>4} threads  {:?}  e.g. {:?}", tids.len(), k, names);
    }
    if kstack {
        if let Some(t) = snap.iter().find(|t| t.comm.starts_with("waiter")) {
            println!("kernel stack of {} ({}):", t.tid, t.comm);
            for l in t.kernel_stack.as_deref().unwrap_or(&[]) {
                println!("    {l}");
            }
        }
    }
    times.sort_unstable();
    println!(
        "SUMMARY procscan threads={} groups={} kstack={} median_us={:.1} max_us={:.1}",
        snap.len(),
        groups.len(),
        kstack,
        times[times.len() / 2] as f64 / 1e3,
        *times.last().unwrap() as f64 / 1e3
    );
}
