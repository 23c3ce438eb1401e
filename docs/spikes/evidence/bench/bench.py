#!/usr/bin/env python3
"""Compare stack-capture tools on the spike's deadlock programs.

For each program x thread count, starts the target once (with a ticker log), then runs
each tool REPS times and records:
  wall_ms     - wall time of the tool process (fork..exit), including its symbol loading
  gap_ms      - the ticker's max iteration gap overlapping [tool start, tool end]
                ('<1.5' when no gap > 1.5 ms was logged = below the ticker's log threshold)
  hits        - number of 'waiter_take_lock' frames in the tool's output (expect N)
  traced      - threads still showing TracerPid != 0 afterwards (expect 0)
  ours: pause median / max per stopped thread, from the tool's SUMMARY line.
The target runs under SCHED_FIFO (chrt -f 10) so the ticker is not starved by other load.
Baseline: the ticker's max gap during an idle window of IDLE_S seconds before the tools
run (the machine is shared with another build, so gaps > 1.5 ms also happen on their own).
Usage: bench.py [REPS] [N,N,...] [prog,prog]
"""
import os, re, subprocess, sys, time, json, statistics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # docs/spikes/evidence
BIN = f"{ROOT}/progs/bin"
OURS = f"{ROOT}/target/release/stuck"
REPS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
NS = [int(x) for x in (sys.argv[2] if len(sys.argv) > 2 else "4,64,256").split(",")]
SPIN = os.environ.get("TICKER") == "spin"  # busy-loop ticker (C program only)
PROGS = (sys.argv[3] if len(sys.argv) > 3 else "deadlock,rust-deadlock").split(",")
IDLE_S = 3.0

TOOLS = {
    "ours-ptrace": lambda pid: [OURS, str(pid), "--mode", "ptrace"],
    "ours-auto": lambda pid: [OURS, str(pid), "--mode", "auto"],
    "eu-stack": lambda pid: ["eu-stack", "-p", str(pid)],
    "gdb": lambda pid: ["gdb", "-nx", "-batch", "-iex", "set debuginfod enabled off",
                        "-ex", "thread apply all bt", "-p", str(pid)],
}

def gaps_in(log, t0, t1):
    """Max gap (ns) of ticker iterations overlapping [t0, t1]; 0 if none logged."""
    best = 0
    try:
        with open(log) as f:
            for line in f:
                try:
                    end, gap = map(int, line.split())
                except ValueError:
                    continue
                if end >= t0 and end - gap <= t1:
                    best = max(best, gap)
    except FileNotFoundError:
        pass
    return best

def traced_threads(pid):
    n = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for l in f:
                    if l.startswith("TracerPid:") and int(l.split()[1]) != 0:
                        n += 1
        except FileNotFoundError:
            pass
    return n

def fmt_gap(ns):
    if ns == 0:
        return "<0.1" if SPIN else "<1.5"
    return f"{ns/1e6:.2f}" if SPIN else f"{ns/1e6:.1f}"

rows = []
for prog in PROGS:
    for n in NS:
        log = f"{ROOT}/bench/results/ticker-{prog}-{n}{'-spin' if SPIN else ''}.log"
        if os.path.exists(log):
            os.remove(log)
        # SCHED_FIFO for the target so the ticker's gaps measure stops we inflict, not
        # CPU contention with the concurrent build on this 2-core machine.
        p = subprocess.Popen(["chrt", "-f", "10", f"{BIN}/{prog}", str(n), log] + (["spin"] if SPIN else []), stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
        line = p.stdout.readline()
        assert line.startswith("READY"), line
        time.sleep(1.0)
        t0 = time.monotonic_ns(); time.sleep(IDLE_S); t1 = time.monotonic_ns()
        base = gaps_in(log, t0, t1)
        print(f"== {prog} N={n} pid={p.pid} idle-baseline max gap {fmt_gap(base)} ms", flush=True)
        for tool, argv in TOOLS.items():
            for rep in range(REPS):
                out = f"{ROOT}/bench/results/{tool}-{prog}-{n}-{rep}{'-spin' if SPIN else ''}.txt"
                time.sleep(0.3)
                t0 = time.monotonic_ns()
                with open(out, "w") as f:
                    rc = subprocess.call(argv(p.pid), stdout=f, stderr=subprocess.STDOUT)
                t1 = time.monotonic_ns()
                time.sleep(0.05)  # let the ticker log the gap that ended after the tool
                gap = gaps_in(log, t0, t1 + 20_000_000)
                txt = open(out, errors="replace").read()
                if tool.startswith("ours"):
                    # ours prints each distinct stack once: "-- K thread(s), e.g. ..."
                    hits = sum(int(b.split(" ", 1)[0]) for b in txt.split("\n-- ")[1:]
                               if "waiter_take_lock" in b)
                else:
                    hits = txt.count("waiter_take_lock")
                m = re.search(r"pause_med_us=(\S+) .*pause_max_us=(\S+) .*capture_ms=(\S+)", txt)
                r = dict(prog=prog, n=n, tool=tool, rep=rep, rc=rc, wall_ms=(t1 - t0) / 1e6,
                         gap_ns=gap, base_ns=base, hits=hits, traced=traced_threads(p.pid),
                         pause_med_us=float(m.group(1)) if m else None,
                         pause_max_us=float(m.group(2)) if m else None,
                         capture_ms=float(m.group(3)) if m else None)
                rows.append(r)
                print(f"  {tool:12} rep{rep} rc={rc} wall={r['wall_ms']:8.1f}ms gap={fmt_gap(gap):>6}ms "
                      f"hits={hits:3} traced={r['traced']} pause_med={r['pause_med_us']} "
                      f"pause_max={r['pause_max_us']} capture_ms={r['capture_ms']}", flush=True)
        p.kill(); p.wait()

with open(f"{ROOT}/bench/results/rows{'-spin' if SPIN else ''}.json", "w") as f:
    json.dump(rows, f, indent=1)

# Summary table: medians over reps (gap: max over reps too).
print("\n| prog | N | tool | wall ms (median) | capture window ms | pause median / max us | ticker max gap ms (median / worst) | idle baseline gap ms | waiter frames found | traced after |")
print("|---|---|---|---|---|---|---|---|---|---|")
for prog in PROGS:
    for n in NS:
        for tool in TOOLS:
            rs = [r for r in rows if r["prog"] == prog and r["n"] == n and r["tool"] == tool]
            if not rs:
                continue
            med = lambda k: statistics.median([r[k] for r in rs if r[k] is not None]) if any(r[k] is not None for r in rs) else None
            pm, px, cm = med("pause_med_us"), max([r["pause_max_us"] or 0 for r in rs]), med("capture_ms")
            pause = f"{pm:.0f} / {px:.0f}" if pm is not None and pm == pm else ("0 (no stop)" if tool == "ours-auto" and pm is not None else "all threads stopped")
            gaps = sorted(r["gap_ns"] for r in rs)
            print(f"| {prog} | {n} | {tool} | {med('wall_ms'):.0f} | {cm if cm is not None else '-'} | {pause} | "
                  f"{fmt_gap(gaps[len(gaps)//2])} / {fmt_gap(gaps[-1])} | {fmt_gap(rs[0]['base_ns'])} | "
                  f"{statistics.median([r['hits'] for r in rs]):.0f} | {max(r['traced'] for r in rs)} |")
