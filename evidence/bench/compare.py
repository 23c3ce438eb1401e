#!/usr/bin/env python3
"""Compare varta-evidence's stacks capture with eu-stack and gdb.

For each test program (evidence/tests/progs: deadlock.c, rust_deadlock.rs) and
waiter count, start the program once under SCHED_FIFO (chrt -f 10, so its
ticker thread measures stops rather than CPU contention) with a ticker log,
record the ticker's max gap over an idle window (baseline), then run each tool
REPS times against the live program and record:
  wall ms    - fork..exit of the tool process (ours: cold symbol cache, DWARF on)
  ours       - from evidence-bench's SUMMARY: pause per stopped thread
               (PTRACE_INTERRUPT..PTRACE_DETACH) median/max, stop window
               (first interrupt..last detach), cold and warm capture ms
  gap        - the ticker's longest iteration overlapping the tool's run
               ('<1.5' = none logged: the ticker logs gaps over 1.5 ms only)
  frames     - stacks containing waiter_take_lock (expect N)
  traced     - threads with TracerPid != 0 afterwards (expect 0)
Usage (root; from the repository root):
  cargo build --release -p varta-evidence --bin evidence-bench
  python3 evidence/bench/compare.py [REPS] [N,N,...]
"""
import os, re, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # evidence/
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(os.path.dirname(ROOT), "target"))
OURS = os.path.join(TARGET, "release", "evidence-bench")
REPS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
NS = [int(x) for x in (sys.argv[2] if len(sys.argv) > 2 else "4,64,256").split(",")]
IDLE_S = 2.0
WORK = tempfile.mkdtemp(prefix="evidence-bench-")

def build():
    progs = os.path.join(ROOT, "tests", "progs")
    c = os.path.join(WORK, "deadlock")
    r = os.path.join(WORK, "rust_deadlock")
    subprocess.check_call(["cc", "-O2", "-g", "-pthread", "-o", c, os.path.join(progs, "deadlock.c")])
    subprocess.check_call(["rustc", "--edition", "2021", "-O", "-C", "debuginfo=line-tables-only",
                           "-o", r, os.path.join(progs, "rust_deadlock.rs")])
    return {"C deadlock": c, "Rust deadlock": r}

TOOLS = {
    "varta-evidence (zero-stop)": lambda pid: [OURS, str(pid)],
    "varta-evidence (stacks, defaults)": lambda pid: [OURS, str(pid), "--stacks"],
    "varta-evidence (stacks, all threads)": lambda pid: [OURS, str(pid), "--stacks", "--stack-threads", "1024"],
    "eu-stack": lambda pid: ["eu-stack", "-p", str(pid)],
    "gdb": lambda pid: ["gdb", "-nx", "-batch", "-iex", "set debuginfod enabled off",
                        "-ex", "thread apply all bt", "-p", str(pid)],
}

def max_gap(log, t0, t1):
    best = 0
    try:
        for line in open(log):
            try:
                end, gap = map(int, line.split())
            except ValueError:
                continue
            if end >= t0 and end - gap <= t1:
                best = max(best, gap)
    except FileNotFoundError:
        pass
    return best

def count_threads(pid, test):
    """Threads of pid for which test(read) holds, where read(name) returns
    /proc/<pid>/task/<tid>/<name>; a thread that exits meanwhile is skipped."""
    n = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            n += bool(test(lambda name: open(f"/proc/{pid}/task/{tid}/{name}").read()))
        except OSError:
            pass
    return n

def traced(pid):
    return count_threads(pid, lambda read: any(
        l.startswith("TracerPid:") and int(l.split()[1]) != 0 for l in read("status").splitlines()))

def blocked_waiters(pid):
    return count_threads(pid, lambda read:
        read("comm").startswith("waiter-") and read("syscall").startswith("202 "))

def gap_str(ns):
    return "<1.5" if ns == 0 else f"{ns / 1e6:.1f}"

rows = []
for prog, path in build().items():
    for n in NS:
        log = os.path.join(WORK, f"ticker-{os.path.basename(path)}-{n}.log")
        p = subprocess.Popen(["chrt", "-f", "10", path, str(n), log], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
        assert p.stdout.readline().startswith("READY")
        while blocked_waiters(p.pid) < n:
            time.sleep(0.01)
        time.sleep(0.5)
        t0 = time.monotonic_ns(); time.sleep(IDLE_S); t1 = time.monotonic_ns()
        base = max_gap(log, t0, t1)
        print(f"== {prog} N={n} pid={p.pid} idle max gap {gap_str(base)} ms", flush=True)
        for tool, argv in TOOLS.items():
            for rep in range(REPS):
                time.sleep(0.3)
                t0 = time.monotonic_ns()
                out = subprocess.run(argv(p.pid), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, errors="replace").stdout
                t1 = time.monotonic_ns()
                time.sleep(0.05)
                m = re.search(r"pause_med_us=(\S+) pause_max_us=(\S+) window_ms=(\S+) cold_ms=(\S+) "
                              r"warm_ms=(\S+) .*waiter_frames=(\d+)", out)
                nan = lambda x: None if x == "NaN" else float(x)
                frames = int(m.group(6)) if m else out.count("waiter_take_lock")
                r = dict(prog=prog, n=n, tool=tool, wall=(t1 - t0) / 1e6, gap=max_gap(log, t0, t1 + 20_000_000),
                         base=base, frames=frames, traced=traced(p.pid),
                         med=nan(m.group(1)) if m else None, max=nan(m.group(2)) if m else None,
                         window=nan(m.group(3)) if m else None, cold=float(m.group(4)) if m else None,
                         warm=float(m.group(5)) if m else None)
                rows.append(r)
                print(f"  {tool:36} rep{rep} wall={r['wall']:7.1f}ms gap={gap_str(r['gap']):>5}ms "
                      f"frames={frames} traced={r['traced']} pause_med={r['med']} pause_max={r['max']} "
                      f"window_ms={r['window']} cold_ms={r['cold']} warm_ms={r['warm']}", flush=True)
        p.kill(); p.wait()

print()
print("| program | waiters | tool | wall ms (median) | pause per thread µs median / max | stop window ms | "
      "capture ms cold / warm | ticker max gap ms (median / worst) | idle gap ms | waiter stacks found | traced after |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for prog in dict.fromkeys(r["prog"] for r in rows):
    for n in NS:
        for tool in TOOLS:
            rs = [r for r in rows if r["prog"] == prog and r["n"] == n and r["tool"] == tool]
            if not rs:
                continue
            med = lambda k: statistics.median(r[k] for r in rs)
            gaps = sorted(r["gap"] for r in rs)
            if tool.startswith("varta-evidence") and all(r["med"] is not None for r in rs):
                pause = f"{med('med'):.0f} / {max(r['max'] for r in rs):.0f}"
                window = f"{med('window'):.2f}"
                cap = f"{med('cold'):.1f} / {med('warm'):.1f}"
            else:
                pause = {"gdb": "whole process stopped", "eu-stack": "not measurable from outside"}.get(tool, "no stop")
                window = "-"
                cap = f"{med('cold'):.1f} / {med('warm'):.1f}" if rs[0]["cold"] is not None else "-"
            print(f"| {prog} | {n} | {tool} | {med('wall'):.0f} | {pause} | {window} | {cap} | "
                  f"{gap_str(gaps[len(gaps) // 2])} / {gap_str(gaps[-1])} | {gap_str(rs[0]['base'])} | "
                  f"{statistics.median(r['frames'] for r in rs):.0f} | {max(r['traced'] for r in rs)} |")
