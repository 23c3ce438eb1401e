//! Captures of real processes: the test programs in `tests/progs` are built
//! here (`cc -O2 -g`, `rustc -O` with line tables; no forced frame
//! pointers) and run as the targets. These tests need root (ptrace, /proc
//! of other processes, `unshare --pid`), `cc`, `rustc`, `chrt`, `strace`
//! and `unshare`; without them they fail. They run one at a time (a shared
//! lock) so that their targets do not compete for the CPUs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use varta_evidence::{Capturer, Config, Evidence, Skip, WaitKind};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn progs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs")
}

fn out_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("evidence-progs");
    std::fs::create_dir_all(&dir).expect("create the test programs' directory");
    dir
}

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

fn c_deadlock() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = out_dir().join("deadlock");
        run(Command::new("cc")
            .args(["-O2", "-g", "-pthread", "-o"])
            .arg(&bin)
            .arg(progs_dir().join("deadlock.c")));
        bin
    })
}

fn rust_deadlock() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = out_dir().join("rust_deadlock");
        run(Command::new("rustc")
            .args(["--edition", "2021", "-O", "-C", "debuginfo=line-tables-only", "-o"])
            .arg(&bin)
            .arg(progs_dir().join("rust_deadlock.rs")));
        bin
    })
}

/// A running test program; killed and reaped when dropped.
struct Target {
    child: Child,
    pid: u32,
}

impl Target {
    /// Starts `argv` and waits for its `READY` line. `pid_of` finds the
    /// target's pid from the child's (they differ under `unshare`).
    fn start(argv: &[&str], pid_of: fn(u32) -> u32) -> Target {
        let mut child = Command::new(argv[0])
            .args(&argv[1..])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {argv:?}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read READY");
        assert!(line.starts_with("READY"), "{argv:?} said {line:?}");
        let pid = pid_of(child.id());
        let target = Target { child, pid };
        // The waiter count follows the program (after `chrt`'s or
        // `unshare`'s arguments).
        let program = argv.iter().position(|a| a.ends_with("deadlock")).expect("a deadlock program");
        let expected = argv.get(program + 1).and_then(|a| a.parse::<usize>().ok()).expect("its waiter count");
        target.wait_for_blocked_waiters(expected);
        target
    }

    /// READY comes once the waiters exist, not once they run: a Rust
    /// thread names itself when it first runs, so on a loaded machine
    /// some are not yet `waiter-N`. Wait (bounded) until `expected`
    /// `waiter-N` threads all sit in futex(2), so captures see them blocked.
    fn wait_for_blocked_waiters(&self, expected: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let tids = varta_pipeline::procfs::task_ids(self.pid).unwrap_or_default();
            let task = |tid: u32, file: &str| {
                varta_pipeline::procfs::read(&format!("/proc/{}/task/{tid}/{file}", self.pid))
                    .unwrap_or_default()
            };
            let waiters: Vec<u32> =
                tids.into_iter().filter(|&t| task(t, "comm").starts_with("waiter-")).collect();
            if waiters.len() >= expected && waiters.iter().all(|&t| task(t, "syscall").starts_with("202 ")) {
                return;
            }
            assert!(Instant::now() < deadline, "the waiters of {} never blocked", self.pid);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn c(waiters: usize) -> Target {
        Target::start(&[path(c_deadlock()), &waiters.to_string()], |p| p)
    }

    fn start_time(&self) -> u64 {
        varta_pipeline::procfs::start_time(self.pid).expect("target's start time")
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // Under `unshare` the target is the child's child (pid 1 of its
        // namespace): killing `unshare` alone would leave it running.
        if self.pid != self.child.id() {
            // SAFETY: kill with a valid signal to the target we started.
            unsafe { libc::kill(libc::pid_t::try_from(self.pid).unwrap_or(0), libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

fn tracer_pids(pid: u32) -> Vec<(u32, u32)> {
    varta_pipeline::procfs::task_ids(pid)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|tid| {
            let status = varta_pipeline::procfs::read(&format!("/proc/{pid}/task/{tid}/status")).ok()?;
            let tracer = status.lines().find_map(|l| l.strip_prefix("TracerPid:"))?.trim().parse().ok()?;
            Some((tid, tracer))
        })
        .collect()
}

fn assert_untraced(pid: u32) {
    let all = tracer_pids(pid);
    assert!(!all.is_empty(), "no threads of {pid} read");
    assert!(all.iter().all(|&(_, tracer)| tracer == 0), "still traced: {all:?}");
}

fn capture(config: Config, target: &Target) -> Evidence {
    Capturer::new(config).capture(target.pid, target.start_time()).expect("captured")
}

fn stacks() -> Config {
    Config { stacks: true, ..Config::default() }
}

fn names_in_stack(ev: &Evidence, tid: u32) -> Vec<String> {
    let t = ev.thread(tid).expect("thread");
    t.stack.as_ref().map_or_else(Vec::new, |s| s.frames.iter().filter_map(|f| f.function.clone()).collect())
}

/// The tids of the four waiters: threads named `waiter-N`.
fn waiters(ev: &Evidence) -> Vec<u32> {
    ev.threads.iter().filter(|t| t.name.starts_with("waiter-")).map(|t| t.tid).collect()
}

fn holder_tid(ev: &Evidence) -> u32 {
    ev.threads.iter().find(|t| t.name == "holder").expect("holder thread").tid
}

#[test]
fn zero_stop_capture_groups_the_waiters_on_one_lock_and_names_its_holder() {
    let _serial = serial();
    let target = Target::c(4);
    let ev = capture(Config::default(), &target);
    println!("{}\n{}", ev.summary(), ev.compact_line());
    let lock = &ev.groups[0];
    assert_eq!(lock.kind, WaitKind::Futex);
    let mut tids = lock.tids.clone();
    tids.sort_unstable();
    let mut expected = waiters(&ev);
    expected.sort_unstable();
    assert_eq!(tids, expected);
    assert_eq!(tids.len(), 4);
    let holder = holder_tid(&ev);
    assert_eq!(lock.holder, Some(holder));
    assert!(ev.thread(holder).is_some_and(|t| t.holder));
    assert_eq!(ev.threads.iter().filter(|t| t.holder).count(), 1);
    assert!(ev.pauses.is_none());
    assert_eq!(ev.counts.stacks_taken, 0);
    assert_eq!(ev.counts.threads_seen, 7);
    assert_eq!(ev.counts.unreadable.total(), 0);
    let summary = ev.summary();
    assert!(summary.starts_with("4 threads wait on one lock"), "{summary}");
    assert!(summary.contains(&format!("holder tid {holder} sleeps (")), "{summary}");
    assert_untraced(target.pid);
}

#[test]
fn stacks_name_the_waiters_and_the_holders_functions_and_leave_no_tracer() {
    let _serial = serial();
    let target = Target::c(4);
    let ev = capture(stacks(), &target);
    println!("{}", ev.summary());
    assert_untraced(target.pid);
    for tid in waiters(&ev) {
        let names = names_in_stack(&ev, tid);
        assert!(names.iter().any(|n| n == "waiter_take_lock"), "waiter {tid}: {names:?}");
    }
    let holder = holder_tid(&ev);
    let names = names_in_stack(&ev, holder);
    assert!(names.iter().any(|n| n == "holdout_hold_lock"), "holder: {names:?}");
    assert_eq!(ev.counts.stacks_taken, 7);
    assert_eq!(ev.counts.stacks_skipped.total(), 0);
    let pauses = ev.pauses.expect("pause stats");
    assert_eq!(pauses.threads, 7);
    println!("pause median {:?} max {:?} window {:?}", pauses.median, pauses.max, pauses.window);
    let trace = ev.groups[0].stacktrace().expect("the lock group's common frames");
    assert!(trace.contains("waiter_take_lock"), "{trace}");
    let summary = ev.summary();
    assert!(summary.starts_with("4 threads wait on one lock"), "{summary}");
    assert!(summary.contains("the holder sleeps in holdout_hold_lock"), "{summary}");
}

#[test]
fn without_stacks_nothing_is_attached() {
    let _serial = serial();
    let target = Target::c(4);
    let pid = target.pid;
    let done = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(AtomicU32::new(0));
    let traced_seen = Arc::new(AtomicU32::new(0));
    let watcher = {
        let (done, samples, traced_seen) = (done.clone(), samples.clone(), traced_seen.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let traced = tracer_pids(pid).iter().filter(|(_, t)| *t != 0).count();
                traced_seen.fetch_add(u32::try_from(traced).unwrap_or(u32::MAX), Ordering::Relaxed);
                samples.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let mut capturer = Capturer::new(Config::default());
    let start = target.start_time();
    let until = Instant::now() + Duration::from_millis(300);
    let mut captures = 0;
    while Instant::now() < until {
        let ev = capturer.capture(pid, start).expect("captured");
        assert_eq!(ev.counts.stacks_taken, 0);
        assert!(ev.pauses.is_none());
        assert!(ev.threads.iter().all(|t| t.stack.is_none()));
        captures += 1;
    }
    done.store(true, Ordering::Relaxed);
    watcher.join().expect("watcher");
    let samples = samples.load(Ordering::Relaxed);
    println!("{captures} zero-stop captures, {samples} TracerPid samples of every thread");
    assert!(samples > 10 && captures > 10, "too few samples ({samples}) or captures ({captures})");
    assert_eq!(traced_seen.load(Ordering::Relaxed), 0, "a thread was traced during zero-stop captures");
    assert_untraced(pid);
}

fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// The longest ticker gap (ns) overlapping [t0, t1] in the program's log
/// (it logs only gaps over 1.5 ms; 0 when none).
fn max_gap(log: &Path, t0: u64, t1: u64) -> u64 {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (end, gap) = l.split_once(' ')?;
            Some((end.parse::<u64>().ok()?, gap.trim().parse::<u64>().ok()?))
        })
        .filter(|&(end, gap)| end >= t0 && end.saturating_sub(gap) <= t1)
        .map(|(_, gap)| gap)
        .max()
        .unwrap_or(0)
}

#[test]
fn a_running_ticker_sees_no_gap_over_50_ms_during_a_stacks_capture() {
    let _serial = serial();
    let log = out_dir().join("ticker.log");
    let _ = std::fs::remove_file(&log);
    // SCHED_FIFO for the target, so that its ticker measures stops we
    // inflict rather than CPU contention on a shared machine.
    let target = Target::start(&["chrt", "-f", "10", path(c_deadlock()), "4", path(&log)], |p| p);
    std::thread::sleep(Duration::from_millis(300));
    let mut capturer = Capturer::new(stacks());
    let start = target.start_time();
    // Warm the symbol cache so the measured capture is the steady state.
    capturer.capture(target.pid, start).expect("first capture");

    let t0 = mono_ns();
    let ev = capturer.capture(target.pid, start).expect("captured");
    let t1 = mono_ns();
    let window = Duration::from_nanos(t1 - t0);
    std::thread::sleep(Duration::from_millis(50));
    let during = max_gap(&log, t0, t1 + 20_000_000);

    let b0 = mono_ns();
    std::thread::sleep(window.max(Duration::from_millis(20)));
    let b1 = mono_ns();
    std::thread::sleep(Duration::from_millis(50));
    let baseline = max_gap(&log, b0, b1 + 20_000_000);

    let ms = |ns: u64| if ns == 0 { "<1.5 ms".to_owned() } else { format!("{:.2} ms", ns as f64 / 1e6) };
    let pauses = ev.pauses.expect("pause stats");
    println!(
        "ticker max gap during the stacks capture {} (capture {:?}, {} threads stopped one at a time, \
         pause median {:?} max {:?}); baseline without a capture {}",
        ms(during),
        window,
        pauses.threads,
        pauses.median,
        pauses.max,
        ms(baseline)
    );
    assert!(ev.counts.stacks_taken >= 6, "{:?}", ev.counts);
    assert!(during < 50_000_000, "the ticker saw a {} gap", ms(during));
    assert_untraced(target.pid);
}

#[test]
fn rust_frames_are_demangled() {
    let _serial = serial();
    let target = Target::start(&[path(rust_deadlock()), "4"], |p| p);
    let ev = capture(stacks(), &target);
    println!("{}", ev.summary());
    assert_untraced(target.pid);
    for tid in waiters(&ev) {
        let names = names_in_stack(&ev, tid);
        assert!(
            names.iter().any(|n| n == "rust_deadlock::locks::waiter_take_lock"),
            "waiter {tid}: {names:?}"
        );
        assert!(names.iter().all(|n| !n.contains("17h") && !n.starts_with("_ZN")), "{names:?}");
    }
    let holder = holder_tid(&ev);
    let names = names_in_stack(&ev, holder);
    assert!(names.iter().any(|n| n == "rust_deadlock::locks::holdout_hold_lock"), "holder: {names:?}");
    let summary = ev.summary();
    assert!(summary.starts_with("4 threads wait on one futex"), "{summary}");
    assert!(summary.contains("in rust_deadlock::locks::waiter_take_lock"), "{summary}");
}

#[test]
fn a_process_that_exits_during_a_capture_is_a_skip_or_partial_evidence() {
    let _serial = serial();
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    for round in 0..12u64 {
        let target = Target::c(64);
        let start = target.start_time();
        let pid = target.pid;
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_micros(200 * round));
            // SAFETY: kill with a valid signal; the pid is our own child
            // (not yet reaped, so not reused).
            unsafe { libc::kill(libc::pid_t::try_from(pid).unwrap_or(0), libc::SIGKILL) };
        });
        let result = Capturer::new(stacks()).capture(pid, start);
        killer.join().expect("killer");
        let label = match &result {
            Ok(ev) => format!("evidence ({} of 67 stacks)", ev.counts.stacks_taken),
            Err(skip) => skip.label().to_owned(),
        };
        *outcomes.entry(label).or_default() += 1;
        if let Err(skip) = result {
            assert!(
                matches!(skip, Skip::Gone | Skip::Changed | Skip::IdentityMismatch | Skip::Error(_)),
                "{skip:?}"
            );
        }
        drop(target);
    }
    println!("outcomes: {outcomes:?}");
    assert!(outcomes.contains_key("gone"), "no capture saw the exit: {outcomes:?}");

    // Threads that come and go during captures: the process lives on and
    // is left untraced.
    let target = Target::start(&[path(c_deadlock()), "4", "-", "churn"], |p| p);
    let mut capturer = Capturer::new(stacks());
    let start = target.start_time();
    let mut gone = 0;
    for _ in 0..30 {
        let ev = capturer.capture(target.pid, start).expect("captured");
        gone += ev.counts.stacks_skipped.gone + ev.counts.unreadable.gone;
    }
    println!("threads that vanished mid-capture over 30 captures: {gone}");
    assert_untraced(target.pid);
}

/// A real exec (another program) landing during a stacks capture: the
/// capture ends as a skip (`exec` once the identity check sees the new
/// image, or `gone`), never a panic or a hang, and the new program is left
/// untraced. A round whose exec lands outside the capture may end as
/// evidence; at least one must land inside.
#[test]
fn a_process_that_execs_during_a_capture_is_refused_as_changed_and_left_untraced() {
    let _serial = serial();
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    for round in 0..12u64 {
        let target = Target::start(&[path(c_deadlock()), "64", "-", "exec"], |p| p);
        let (pid, start) = (target.pid, target.start_time());
        let execer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_micros(200 * round));
            // SAFETY: kill with a valid signal; the pid is our own child
            // (not yet reaped, so not reused). Its handler execs.
            unsafe { libc::kill(libc::pid_t::try_from(pid).unwrap_or(0), libc::SIGUSR1) };
        });
        // Bounded: an exec and our attach once waited on each other for
        // ever (see ptrace.rs); fail rather than hang the suite.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(Capturer::new(stacks()).capture(pid, start));
        });
        let result = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
            panic!("round {round}: the capture of {pid} hung (exec and ptrace deadlocked?)")
        });
        execer.join().expect("execer");
        let label = match &result {
            Ok(ev) => format!("evidence ({} of 67 stacks)", ev.counts.stacks_taken),
            Err(skip) => skip.label().to_owned(),
        };
        *outcomes.entry(label).or_default() += 1;
        if let Err(skip) = result {
            assert!(matches!(skip, Skip::Changed | Skip::Gone | Skip::Error(_)), "{skip:?}");
        }
        wait_for_exec(pid);
        assert_untraced(pid);
    }
    println!("outcomes: {outcomes:?}");
    assert!(outcomes.contains_key("exec"), "no capture saw the exec: {outcomes:?}");
}

/// Signals of the target's own that arrive while we hold one of its threads
/// (a signal-delivery-stop instead of our interrupt's stop) go on at
/// detach: a storm of queued real-time signals at the waiters during
/// captures, and every one sent is handled by the target, none lost.
#[test]
fn signals_that_arrive_while_a_thread_is_held_are_passed_on_not_lost() {
    let _serial = serial();
    let log = out_dir().join("signals.log");
    let _ = std::fs::remove_file(&log);
    let target = Target::start(&[path(c_deadlock()), "16", path(&log), "signals"], |p| p);
    let (pid, start) = (target.pid, target.start_time());
    let ev = Capturer::new(Config::default()).capture(pid, start).expect("captured");
    let waiters = waiters(&ev);
    let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU32::new(0)));
    let sender = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for &tid in &waiters {
                    // SAFETY: tgkill with a valid signal to our own child's
                    // threads; nothing else is passed.
                    let r = unsafe {
                        libc::syscall(
                            libc::SYS_tgkill,
                            pid as libc::c_long,
                            tid as libc::c_long,
                            libc::SIGRTMIN(),
                        )
                    };
                    // EAGAIN (the queue is full) sends nothing: not counted.
                    if r == 0 {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        })
    };
    let mut capturer = Capturer::new(stacks());
    let (mut passed_on, mut captures) = (0, 0);
    while passed_on < 3 && captures < 300 {
        passed_on += capturer.capture(pid, start).expect("captured").counts.signals_passed_on;
        captures += 1;
    }
    stop.store(true, Ordering::Relaxed);
    sender.join().expect("sender");
    let sent = sent.load(Ordering::Relaxed);
    let handled =
        || std::fs::read_to_string(&log).unwrap_or_default().lines().filter(|l| *l == "S").count() as u32;
    let deadline = Instant::now() + Duration::from_secs(10);
    while handled() < sent && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("{captures} captures, {passed_on} signal-delivery-stops, {sent} signals sent");
    assert!(passed_on > 0, "no capture held a thread as its own signal arrived ({captures} captures)");
    assert_eq!(handled(), sent, "signals handled by the target vs sent");
    assert_untraced(pid);
}

/// Waits (bounded) until `pid` runs `/bin/sleep`: its exec is complete.
fn wait_for_exec(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe.ends_with("sleep")) {
        assert!(Instant::now() < deadline, "{pid} never executed /bin/sleep");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Idle event loops are named by what they wait on, with no stop: an
/// epoll instance by what it watches (its `fdinfo`), a poll by its fd
/// array (read from the target's memory); here each a pipe's read end.
/// A read on a socket says what the socket is (its network tables).
#[test]
fn threads_in_epoll_wait_poll_and_read_are_grouped_with_what_they_wait_on() {
    let _serial = serial();
    let target = Target::start(&[path(c_deadlock()), "4", "-", "loops"], |p| p);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (looper, poller, reader) = loop {
        let ev = Capturer::new(Config::default()).capture(target.pid, target.start_time()).expect("captured");
        let group_of = |name: &str| {
            ev.groups.iter().find(|g| g.kind == WaitKind::Poll && g.names.iter().any(|n| n == name)).cloned()
        };
        let reader =
            ev.groups.iter().find(|g| g.kind == WaitKind::Fd && g.names.iter().any(|n| n == "reader"));
        if let (Some(l), Some(p), Some(r)) = (group_of("looper"), group_of("poller"), reader) {
            break (l, p, r.clone());
        }
        assert!(Instant::now() < deadline, "the loops never waited: {:?}", ev.groups);
        std::thread::sleep(Duration::from_millis(10));
    };
    println!("{} / {} / {}", looper.key, poller.key, reader.key);
    assert!(
        reader.key.starts_with("socket:[") && reader.key.ends_with("] (unix, unnamed)"),
        "{}",
        reader.key
    );
    assert!(looper.key.starts_with("epoll_") && looper.key.contains(" watching pipe:["), "{}", looper.key);
    assert!(poller.key.starts_with("poll on pipe:["), "{}", poller.key);
    for key in [&looper.key, &poller.key] {
        assert!(!key.contains(','), "one fd each: {key}");
    }
}

#[test]
fn an_agent_in_another_pid_namespace_is_captured_by_its_host_pid() {
    let _serial = serial();
    let target =
        Target::start(&["unshare", "--pid", "--fork", "--mount-proc", path(c_deadlock()), "4"], |unshare| {
            let children = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
                .expect("unshare's children");
            children
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
                .expect("unshare forked the program")
        });
    let ns = varta_pipeline::procfs::ns_pids(target.pid).expect("NSpid");
    assert_eq!(ns.len(), 2, "not in a nested pid namespace: {ns:?}");
    assert_eq!(ns[1], 1);
    let ev = capture(stacks(), &target);
    println!("{}", ev.summary());
    assert_untraced(target.pid);
    let lock = &ev.groups[0];
    assert_eq!(lock.tids.len(), 4);
    assert_eq!(lock.holder, Some(holder_tid(&ev)), "the owner tid is mapped from the inner namespace");
    assert!(names_in_stack(&ev, holder_tid(&ev)).iter().any(|n| n == "holdout_hold_lock"));
}

#[test]
fn binaries_over_the_size_cap_are_skipped_and_counted() {
    let _serial = serial();
    let target = Target::c(4);
    let ev = capture(Config { max_binary_bytes: 4096, ..stacks() }, &target);
    assert_untraced(target.pid);
    assert!(ev.counts.binaries_skipped.too_large >= 2, "{:?}", ev.counts.binaries_skipped);
    assert_eq!(ev.counts.stacks_taken, 7);
    let all: Vec<_> = ev.threads.iter().filter_map(|t| t.stack.as_ref()).flat_map(|s| &s.frames).collect();
    assert!(!all.is_empty());
    assert!(all.iter().all(|f| f.function.is_none() || f.module.as_deref() == Some("[vdso]")), "{all:?}");
    assert!(all.iter().any(|f| f.module.as_deref() == Some("libc.so.6")), "frames show module+offset");
}

#[test]
fn a_wrong_start_time_or_a_traced_process_is_refused() {
    let _serial = serial();
    let target = Target::c(4);
    let mut capturer = Capturer::new(stacks());
    let start = target.start_time();
    assert_eq!(capturer.capture(target.pid, start + 1).err(), Some(Skip::IdentityMismatch));
    assert_eq!(capturer.capture(target.pid, start.saturating_sub(1)).err(), Some(Skip::IdentityMismatch));

    let mut strace = Command::new("strace")
        .args(["-f", "-o", "/dev/null", "-p", &target.pid.to_string()])
        .stderr(Stdio::null())
        .spawn()
        .expect("strace");
    let deadline = Instant::now() + Duration::from_secs(10);
    while tracer_pids(target.pid).iter().any(|&(_, t)| t == 0) {
        assert!(Instant::now() < deadline, "strace did not attach");
        std::thread::sleep(Duration::from_millis(10));
    }
    let skip = capturer.capture(target.pid, start).expect_err("refused");
    assert_eq!(skip, Skip::Traced { tracer: strace.id() });
    assert_eq!(skip.label(), "traced");
    let zero_stop = Capturer::new(Config::default()).capture(target.pid, start).err();
    assert_eq!(zero_stop.map(|s| s.label()), Some("traced"));
    // SAFETY: SIGINT to our own child, strace, which then detaches.
    unsafe { libc::kill(libc::pid_t::try_from(strace.id()).unwrap_or(0), libc::SIGINT) };
    strace.wait().expect("strace exits");
    let ev = capturer.capture(target.pid, start).expect("captured once strace has gone");
    assert_eq!(ev.counts.stacks_taken, 7);
    assert_untraced(target.pid);
}

#[test]
fn a_thread_in_uninterruptible_sleep_keeps_its_kernel_stack_and_is_not_stopped() {
    let _serial = serial();
    let target = Target::start(&[path(c_deadlock()), "4", "-", "dstate"], |p| p);
    let deadline = Instant::now() + Duration::from_secs(10);
    let vforker = loop {
        let ev = capture(Config::default(), &target);
        if let Some(t) = ev.threads.iter().find(|t| t.name == "vforker" && t.state == 'D') {
            break t.tid;
        }
        assert!(Instant::now() < deadline, "the vforker thread never entered D");
        std::thread::sleep(Duration::from_millis(5));
    };
    let ev = capture(stacks(), &target);
    assert_untraced(target.pid);
    let t = ev.thread(vforker).expect("vforker");
    println!("vforker {} wchan {:?} kernel stack {:?}", t.state, t.wchan, t.kernel_stack);
    assert_eq!(t.state, 'D');
    assert!(t.stack.is_none(), "a D thread is never stopped");
    assert!(!t.kernel_stack.is_empty(), "root reads the kernel stack of a D thread");
    assert!(ev.counts.stacks_skipped.uninterruptible >= 1, "{:?}", ev.counts.stacks_skipped);
    assert!(ev.threads.iter().filter(|t| t.state != 'D').all(|t| t.kernel_stack.is_empty()));
    assert_eq!(ev.counts.stacks_taken, ev.counts.threads_seen - 1);
}
