//! What one capture found, shaped for spans and log lines: the threads, the
//! groups of threads that wait on the same thing, the counts of everything
//! that was bounded or could not be read, and the pause a stacks capture
//! inflicted. Every string in here that the target controls (thread names,
//! fd targets, symbols, file names) was passed through
//! [`sanitize`](crate::sanitize::sanitize) when it was read.

use std::fmt::Write as _;
use std::time::Duration;

use crate::syscall::SyscallState;

/// One thread of the target.
#[derive(Debug, Clone)]
pub struct ThreadEvidence {
    /// Thread id in our pid namespace.
    pub tid: u32,
    /// `comm`, sanitized.
    pub name: String,
    /// State letter from `stat` (`R`, `S`, `D`, `T`, `t`, `Z`…).
    pub state: char,
    /// Innermost kernel function it sleeps in (`None` when running or
    /// unreadable).
    pub wchan: Option<String>,
    /// Current system call (`None` when the `syscall` file was unreadable).
    pub syscall: Option<SyscallState>,
    /// Kernel stack, read for threads in uninterruptible sleep (`D`) only,
    /// where readable.
    pub kernel_stack: Vec<String>,
    /// User-space stack, when stacks were taken for this thread.
    pub stack: Option<Stack>,
    /// This thread holds the lock a group waits on.
    pub holder: bool,
}

impl ThreadEvidence {
    /// The system call name while blocked in one.
    pub fn syscall_name(&self) -> Option<&'static str> {
        self.syscall.and_then(|s| s.nr()).map(crate::syscall::name)
    }
}

/// What a group of threads waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WaitKind {
    /// The same futex word (a lock, a condition variable, a join).
    Futex,
    /// The same file descriptor target.
    Fd,
    /// epoll/poll/select.
    Poll,
    /// nanosleep/clock_nanosleep (and restarted sleeps).
    Sleep,
    /// wait4/waitid.
    Child,
    /// Running (on a CPU or runnable).
    Running,
    /// Anything else: grouped by system call name, or by `wchan` when the
    /// system call is unknown.
    Other,
}

impl WaitKind {
    /// A stable lowercase word for attributes and metrics.
    pub fn label(self) -> &'static str {
        match self {
            WaitKind::Futex => "futex",
            WaitKind::Fd => "fd",
            WaitKind::Poll => "poll",
            WaitKind::Sleep => "sleep",
            WaitKind::Child => "child",
            WaitKind::Running => "running",
            WaitKind::Other => "other",
        }
    }
}

/// Threads that wait on the same thing.
#[derive(Debug, Clone)]
pub struct WaitGroup {
    pub kind: WaitKind,
    /// What they share: `0x7f…` for a futex, the fd's `readlink` target
    /// (`pipe:[123]`, `socket:[9]`, a path), `epoll_wait fd 5 watching
    /// socket:[9]`, `poll on pipe:[7]`, a system call or
    /// `wchan` name; empty for sleeps and running threads. Sanitized.
    pub key: String,
    /// The futex word's address, for [`WaitKind::Futex`].
    pub futex: Option<u64>,
    pub tids: Vec<u32>,
    /// Thread names in `tids` order.
    pub names: Vec<String>,
    /// The thread that holds the lock (a glibc mutex whose owner field names
    /// a live thread of the process); not one of `tids`.
    pub holder: Option<u32>,
    /// Frames (innermost first) every thread of the group shares, when
    /// stacks were taken for all of them.
    pub common_frames: Vec<Frame>,
}

impl WaitGroup {
    /// A `code.stacktrace` value for the group: its common frames, one a
    /// line, or `None` when no stacks were taken.
    pub fn stacktrace(&self) -> Option<String> {
        (!self.common_frames.is_empty()).then(|| render_frames(&self.common_frames))
    }
}

/// One frame of a user-space stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Absolute address (a return address points after the call).
    pub addr: u64,
    /// File name of the module (`libc.so.6`, `[vdso]`), `None` when the
    /// address is in no mapped file.
    pub module: Option<String>,
    /// Offset of the looked-up address in the module's file address space.
    pub offset: u64,
    /// Demangled function name, `None` when unsymbolized.
    pub function: Option<String>,
    /// `file:line` from DWARF.
    pub location: Option<String>,
    /// Inlined into the next (outer) frame, which has the same address.
    pub inlined: bool,
}

impl Frame {
    /// `name at file:line (module+0xoff)`, `?? (module+0xoff)` when
    /// unsymbolized.
    pub fn render(&self) -> String {
        let mut s = self.function.clone().unwrap_or_else(|| "??".to_owned());
        if let Some(loc) = &self.location {
            let _ = write!(s, " at {loc}");
        }
        if self.inlined {
            s.push_str(" [inlined]");
        }
        match &self.module {
            Some(m) => {
                let _ = write!(s, " ({m}+{:#x})", self.offset);
            }
            None => {
                let _ = write!(s, " ({:#x})", self.addr);
            }
        }
        s
    }
}

/// A thread's user-space stack, innermost frame first.
#[derive(Debug, Clone, Default)]
pub struct Stack {
    pub frames: Vec<Frame>,
    /// Why unwinding stopped before the end of the stack (`None` when it
    /// reached the end).
    pub truncated: Option<String>,
}

impl Stack {
    /// A `code.stacktrace` value: one frame a line.
    pub fn render(&self) -> String {
        let mut s = render_frames(&self.frames);
        if let Some(t) = &self.truncated {
            let _ = writeln!(s, "(truncated: {t})");
        }
        s
    }
}

fn render_frames(frames: &[Frame]) -> String {
    let mut s = String::new();
    for (i, f) in frames.iter().enumerate() {
        let _ = writeln!(s, "#{i} {}", f.render());
    }
    s
}

/// Files that could not be read, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unreadable {
    /// EACCES/EPERM: e.g. `syscall` without ptrace-attach rights, `stack`
    /// without CAP_SYS_ADMIN.
    pub denied: u32,
    /// The thread exited while we read it.
    pub gone: u32,
    pub other: u32,
}

impl Unreadable {
    pub(crate) fn count(&mut self, e: varta_pipeline::procfs::ProcError) {
        use varta_pipeline::procfs::ProcError;
        match e {
            ProcError::Denied => self.denied += 1,
            ProcError::Gone => self.gone += 1,
            ProcError::Other(_) => self.other += 1,
        }
    }

    pub fn total(&self) -> u32 {
        self.denied + self.gone + self.other
    }
}

/// Threads whose user-space stack was not taken, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StackSkips {
    /// In uninterruptible sleep (`D`): an interrupt would wait for it to
    /// wake; its kernel stack is shown instead.
    pub uninterruptible: u32,
    /// Already stopped (`T`/`t`) or a zombie.
    pub stopped: u32,
    /// Exited before or during its capture.
    pub gone: u32,
    /// PTRACE_SEIZE refused (EPERM: traced by someone else, or no rights).
    pub denied: u32,
    /// Did not stop within the per-thread timeout.
    pub timeout: u32,
    /// Beyond `stack_threads`.
    pub over_limit: u32,
    /// Not reached within `stack_budget`.
    pub over_budget: u32,
    /// Any other ptrace or read error.
    pub error: u32,
}

impl StackSkips {
    pub fn total(&self) -> u32 {
        self.uninterruptible
            + self.stopped
            + self.gone
            + self.denied
            + self.timeout
            + self.over_limit
            + self.over_budget
            + self.error
    }
}

/// Binaries whose symbols and unwind tables were not loaded, by reason
/// (their frames show `module+offset` only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BinarySkips {
    /// Larger than `max_binary_bytes`.
    pub too_large: u32,
    /// Not openable (gone, denied, not a regular file).
    pub unreadable: u32,
    /// Not a parsable ELF file.
    pub unparsable: u32,
    /// Not loaded because this capture's `parse_budget` was spent.
    pub over_budget: u32,
}

impl BinarySkips {
    pub fn total(&self) -> u32 {
        self.too_large + self.unreadable + self.unparsable + self.over_budget
    }
}

/// Everything a capture counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Threads listed under `/proc/<pid>/task`.
    pub threads_seen: u32,
    /// Threads beyond `max_threads`, not read.
    pub threads_omitted: u32,
    /// Threads not read because the capture's `budget` was spent.
    pub threads_over_budget: u32,
    /// Per-thread `/proc` files that could not be read.
    pub unreadable: Unreadable,
    pub stacks_taken: u32,
    pub stacks_skipped: StackSkips,
    /// Threads that stopped for a signal of their own while we held them
    /// (a signal-delivery-stop); each signal went on at detach, not lost.
    pub signals_passed_on: u32,
    pub binaries_skipped: BinarySkips,
}

/// How long the stacks capture stopped each thread: PTRACE_INTERRUPT sent
/// to PTRACE_DETACH returned (an upper bound of the real stop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PauseStats {
    pub threads: u32,
    pub median: Duration,
    pub max: Duration,
    pub total: Duration,
    /// First interrupt to last detach.
    pub window: Duration,
}

impl PauseStats {
    pub(crate) fn of(pauses: &[Duration], window: Duration) -> Option<PauseStats> {
        let mut v = pauses.to_vec();
        v.sort_unstable();
        let median = *v.get(v.len() / 2)?;
        Some(PauseStats {
            threads: u32::try_from(v.len()).unwrap_or(u32::MAX),
            median,
            max: v.last().copied().unwrap_or_default(),
            total: v.iter().sum(),
            window,
        })
    }
}

/// What one capture of one process found.
#[derive(Debug, Clone)]
pub struct Evidence {
    pub pid: u32,
    /// The threads read, ascending by tid.
    pub threads: Vec<ThreadEvidence>,
    /// Largest group first.
    pub groups: Vec<WaitGroup>,
    pub counts: Counts,
    /// Set when user-space stacks were taken (`stacks: true`).
    pub pauses: Option<PauseStats>,
    /// Whole capture, identity checks included.
    pub duration: Duration,
}

impl Evidence {
    /// The thread with this tid.
    pub fn thread(&self, tid: u32) -> Option<&ThreadEvidence> {
        self.threads.binary_search_by_key(&tid, |t| t.tid).ok().map(|i| &self.threads[i])
    }

    /// One line for a span or log: the most telling group, its lock's
    /// holder when known, and how much else there is; e.g. "4 threads wait
    /// on one lock; the holder sleeps in holdout_hold_lock (+3 threads in 2
    /// other groups)".
    pub fn summary(&self) -> String {
        let Some(lead) = self.lead_group() else {
            return "no threads read".to_owned();
        };
        let mut s = describe_group(lead);
        if let Some(holder) = lead.holder {
            s.push_str("; ");
            s.push_str(&self.describe_holder(holder));
        }
        let others: Vec<&WaitGroup> = self.groups.iter().filter(|g| !std::ptr::eq(*g, lead)).collect();
        if !others.is_empty() {
            let n: usize = others.iter().map(|g| g.tids.len()).sum();
            let _ = write!(
                s,
                " (+{n} thread{} in {} other group{})",
                plural(n),
                others.len(),
                plural(others.len())
            );
        }
        s
    }

    /// A compact single line for an event file: counts and every group
    /// (`kind[:key]=threads[,holder=tid]`), no stacks.
    pub fn compact_line(&self) -> String {
        let c = &self.counts;
        let mut s = format!(
            "threads={} omitted={} unreadable={}",
            c.threads_seen,
            c.threads_omitted + c.threads_over_budget,
            c.unreadable.total()
        );
        if let Some(p) = &self.pauses {
            let _ = write!(s, " stacks={} pause_median_us={}", c.stacks_taken, p.median.as_micros());
        }
        s.push_str(" groups=");
        for (i, g) in self.groups.iter().enumerate() {
            if i > 0 {
                s.push(';');
            }
            s.push_str(g.kind.label());
            if !g.key.is_empty() {
                let _ = write!(s, ":{}", g.key.replace([' ', ';', '='], "_"));
            }
            let _ = write!(s, "={}", g.tids.len());
            if let Some(h) = g.holder {
                let _ = write!(s, ",holder={h}");
            }
        }
        s
    }

    /// The group a reader should see first: a lock with a known holder,
    /// else the largest group that waits on something, else the largest.
    fn lead_group(&self) -> Option<&WaitGroup> {
        self.groups
            .iter()
            .find(|g| g.holder.is_some())
            .or_else(|| self.groups.iter().find(|g| g.kind != WaitKind::Sleep && g.tids.len() > 1))
            .or_else(|| self.groups.first())
    }

    fn describe_holder(&self, tid: u32) -> String {
        let Some(t) = self.thread(tid) else { return format!("holder tid {tid}") };
        let doing = activity(t);
        match t.stack.as_ref().and_then(own_function) {
            Some(f) => format!("the holder {doing} in {f}"),
            None => match t.syscall_name().or(t.wchan.as_deref()) {
                Some(what) => format!("holder tid {tid} {doing} ({what})"),
                None => format!("holder tid {tid} {doing}"),
            },
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn describe_group(g: &WaitGroup) -> String {
    let n = g.tids.len();
    let who = if n == 1 { "1 thread".to_owned() } else { format!("{n} threads") };
    let (verb_one, verb_many) = match g.kind {
        WaitKind::Futex if g.holder.is_some() => ("waits on a lock", "wait on one lock"),
        WaitKind::Futex => ("waits on a futex", "wait on one futex"),
        WaitKind::Fd => ("waits on", "wait on"),
        WaitKind::Poll => ("waits in", "wait in"),
        WaitKind::Sleep => ("sleeps", "sleep"),
        WaitKind::Child => ("waits for a child", "wait for children"),
        WaitKind::Running => ("runs", "run"),
        WaitKind::Other => ("is in", "are in"),
    };
    let verb = if n == 1 { verb_one } else { verb_many };
    let mut s = format!("{who} {verb}");
    match g.kind {
        WaitKind::Futex => {
            let _ = write!(s, " ({})", g.key);
        }
        WaitKind::Fd | WaitKind::Poll | WaitKind::Other if !g.key.is_empty() => {
            let _ = write!(s, " {}", g.key);
        }
        _ => {}
    }
    if let Some(f) = g.common_frames.iter().find_map(|f| own_frame_name(f)) {
        let _ = write!(s, " in {f}");
    }
    s
}

/// "sleeps", "waits on a lock"… for one thread.
fn activity(t: &ThreadEvidence) -> &'static str {
    use crate::syscall::{WaitClass, class, class_of_wchan};
    let class = match t.syscall {
        Some(SyscallState::Blocked { nr, .. }) => Some(class(nr)),
        Some(SyscallState::Running) => return "runs",
        _ => t.wchan.as_deref().and_then(class_of_wchan),
    };
    match class {
        Some(WaitClass::Sleep) => "sleeps",
        Some(WaitClass::Futex) => "waits on a futex",
        Some(WaitClass::Fd) => "waits on a file",
        Some(WaitClass::Epoll | WaitClass::Poll) => "waits in poll",
        Some(WaitClass::Child) => "waits for a child",
        _ if t.state == 'D' => "is in uninterruptible sleep",
        _ if t.state == 'R' => "runs",
        _ => "waits",
    }
}

/// The innermost frame that is the program's own code: not the C library,
/// the dynamic loader, the vDSO, or the Rust standard library.
fn own_function(stack: &Stack) -> Option<&str> {
    stack.frames.iter().find_map(own_frame_name)
}

fn own_frame_name(f: &Frame) -> Option<&str> {
    // Inlined frames carry DWARF's short names ("lock"); the real function
    // frame has the symbol table's full name.
    if f.inlined {
        return None;
    }
    let module = f.module.as_deref()?;
    let name = f.function.as_deref()?;
    let system_module = module.starts_with("libc.so")
        || module.starts_with("libc-")
        || module.starts_with("libpthread")
        || module.starts_with("ld-linux")
        || module.starts_with("ld-musl")
        || module.starts_with("libstdc++")
        || module == "[vdso]";
    let runtime = ["std::", "core::", "alloc::", "<std::", "<core::", "<alloc::", "__", "_start"]
        .iter()
        .any(|p| name.starts_with(p))
        || name.starts_with("start_thread")
        || name.starts_with("clone")
        || name.starts_with("thread_start");
    (!system_module && !runtime).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(module: &str, function: &str) -> Frame {
        Frame {
            addr: 0x1000,
            module: Some(module.to_owned()),
            offset: 0x10,
            function: Some(function.to_owned()),
            location: None,
            inlined: false,
        }
    }

    fn thread(tid: u32, name: &str, syscall: Option<SyscallState>) -> ThreadEvidence {
        ThreadEvidence {
            tid,
            name: name.to_owned(),
            state: 'S',
            wchan: None,
            syscall,
            kernel_stack: vec![],
            stack: None,
            holder: false,
        }
    }

    fn sleeping() -> Option<SyscallState> {
        Some(SyscallState::Blocked { nr: 230, args: [0; 6], sp: 0, pc: 0 })
    }

    fn lock_group(holder: Option<u32>) -> WaitGroup {
        WaitGroup {
            kind: WaitKind::Futex,
            key: "0x5555deadbeef".to_owned(),
            futex: Some(0x5555_dead_beef),
            tids: vec![11, 12, 13, 14],
            names: vec!["waiter-0".into(), "waiter-1".into(), "waiter-2".into(), "waiter-3".into()],
            holder,
            common_frames: vec![],
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn summary_names_the_holder_by_syscall_without_stacks() {
        let mut holder = thread(10, "holder", sleeping());
        holder.holder = true;
        let ev = Evidence {
            pid: 10,
            threads: vec![holder, thread(11, "waiter-0", None)],
            groups: vec![
                lock_group(Some(10)),
                WaitGroup {
                    kind: WaitKind::Sleep,
                    key: String::new(),
                    futex: None,
                    tids: vec![10, 15],
                    names: vec!["holder".into(), "ticker".into()],
                    holder: None,
                    common_frames: vec![],
                },
            ],
            counts: Counts::default(),
            pauses: None,
            duration: Duration::ZERO,
        };
        assert_eq!(
            ev.summary(),
            "4 threads wait on one lock (0x5555deadbeef); holder tid 10 sleeps (clock_nanosleep) \
             (+2 threads in 1 other group)"
        );
        let line = ev.compact_line();
        assert!(line.contains("groups=futex:0x5555deadbeef=4,holder=10;sleep=2"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn summary_names_functions_when_stacks_were_taken() {
        let mut holder = thread(10, "holder", sleeping());
        holder.holder = true;
        holder.stack = Some(Stack {
            frames: vec![
                frame("libc.so.6", "__GI___clock_nanosleep"),
                frame("libc.so.6", "__GI___nanosleep"),
                frame("deadlock", "holdout_hold_lock"),
                frame("deadlock", "holder_main"),
            ],
            truncated: None,
        });
        let mut group = lock_group(Some(10));
        group.common_frames =
            vec![frame("libc.so.6", "___pthread_mutex_lock"), frame("deadlock", "waiter_take_lock")];
        let ev = Evidence {
            pid: 10,
            threads: vec![holder],
            groups: vec![group],
            counts: Counts::default(),
            pauses: None,
            duration: Duration::ZERO,
        };
        assert_eq!(
            ev.summary(),
            "4 threads wait on one lock (0x5555deadbeef) in waiter_take_lock; \
             the holder sleeps in holdout_hold_lock"
        );
        let trace = ev.groups[0].stacktrace().expect("common frames");
        assert_eq!(trace, "#0 ___pthread_mutex_lock (libc.so.6+0x10)\n#1 waiter_take_lock (deadlock+0x10)\n");
    }

    #[test]
    fn rust_runtime_frames_are_not_the_programs_own() {
        let stack = Stack {
            frames: vec![
                frame("rust_deadlock", "std::thread::sleep"),
                frame("rust_deadlock", "rust_deadlock::locks::holdout_hold_lock"),
            ],
            truncated: None,
        };
        assert_eq!(own_function(&stack), Some("rust_deadlock::locks::holdout_hold_lock"));
    }

    #[test]
    fn pause_stats() {
        let ms = Duration::from_millis;
        let p = PauseStats::of(&[ms(3), ms(1), ms(2)], ms(10)).expect("stats");
        assert_eq!((p.threads, p.median, p.max, p.total), (3, ms(2), ms(3), ms(6)));
        assert_eq!(PauseStats::of(&[], ms(1)), None);
    }
}
