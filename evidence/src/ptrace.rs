//! User-space stacks, one thread at a time: PTRACE_SEIZE (no stop),
//! PTRACE_INTERRUPT, wait for that one thread's stop with a timeout, read
//! its registers and a bounded copy of its stack, PTRACE_DETACH at once.
//! Never more than one thread of the target is stopped by us, and never a
//! whole-process stop.
//!
//! No attachment is left behind: a [`Seized`] guard detaches on every path
//! (errors and early returns included). A thread that never reaches its
//! stop (it entered uninterruptible sleep between our check and the
//! interrupt) cannot be detached — PTRACE_DETACH needs a stopped tracee —
//! so [`capture_threads`] runs all ptrace work on a short-lived thread of
//! its own: when that thread exits, the kernel releases every tracee it
//! still holds and clears the pending interrupt. After a timeout the phase
//! ends at once, so that release comes right away.
//!
//! ESRCH and exits are normal input here: the thread (or the process) may
//! go away at any step.

use std::io;
use std::time::{Duration, Instant};

use crate::evidence::StackSkips;
use crate::maps::{self, Mapping};
use crate::memory;
use crate::threads;

/// The registers unwinding starts from.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Regs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

/// One thread's registers and a copy of its stack from `sp` up.
#[derive(Debug)]
pub(crate) struct Captured {
    pub tid: u32,
    pub regs: Regs,
    stack: Vec<u8>,
    /// PTRACE_INTERRUPT sent to PTRACE_DETACH returned.
    pub pause: Duration,
    /// The thread stopped for a signal of its own (a signal-delivery-stop)
    /// rather than our interrupt; the signal went on at detach.
    pub passed_on_signal: bool,
}

impl Captured {
    /// Reads 8 bytes of the copied stack (the unwinder's only memory).
    pub(crate) fn read_u64(&self, addr: u64) -> Result<u64, ()> {
        let start = usize::try_from(addr.checked_sub(self.regs.sp).ok_or(())?).map_err(|_| ())?;
        let bytes = self.stack.get(start..start.checked_add(8).ok_or(())?).ok_or(())?;
        Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| ())?))
    }
}

/// What the stacks phase may do.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub stack_bytes: usize,
    pub stop_timeout: Duration,
    pub budget: Duration,
}

/// The result of the stacks phase.
#[derive(Debug, Default)]
pub(crate) struct Phase {
    pub captured: Vec<Captured>,
    pub skips: StackSkips,
    /// First interrupt to last detach.
    pub window: Duration,
}

enum ThreadSkip {
    Uninterruptible,
    Stopped,
    Gone,
    Denied,
    Timeout,
    Error,
    /// Died while we held it: the process exits or execs.
    Vanished,
    /// A ptrace step failed while we held it.
    HeldError,
}

/// Captures `tids` of `pid` in order, one at a time, on a dedicated
/// thread that exits before this returns (see the module doc).
pub(crate) fn capture_threads(pid: u32, tids: &[u32], maps: &[Mapping], limits: Limits) -> Phase {
    std::thread::scope(|scope| {
        let tracer = std::thread::Builder::new()
            .name("evidence-ptrace".to_owned())
            .spawn_scoped(scope, || capture_on_this_thread(pid, tids, maps, limits));
        match tracer {
            Ok(handle) => handle.join().unwrap_or_else(|_| Phase::default()),
            Err(_) => {
                let mut phase = Phase::default();
                phase.skips.error = u32::try_from(tids.len()).unwrap_or(u32::MAX);
                phase
            }
        }
    })
}

fn capture_on_this_thread(pid: u32, tids: &[u32], maps: &[Mapping], limits: Limits) -> Phase {
    let mut phase = Phase::default();
    let mut first_interrupt: Option<Instant> = None;
    let mut last_detach = None;
    for (i, &tid) in tids.iter().enumerate() {
        let spent = first_interrupt.map_or(Duration::ZERO, |t| t.elapsed());
        if spent > limits.budget {
            phase.skips.over_budget += u32::try_from(tids.len() - i).unwrap_or(u32::MAX);
            break;
        }
        match capture_one(pid, tid, maps, limits, &mut first_interrupt) {
            Ok(c) => {
                last_detach = Some(Instant::now());
                phase.captured.push(c);
            }
            Err(skip) => {
                let s = &mut phase.skips;
                match skip {
                    ThreadSkip::Uninterruptible => s.uninterruptible += 1,
                    ThreadSkip::Stopped => s.stopped += 1,
                    ThreadSkip::Gone => s.gone += 1,
                    ThreadSkip::Denied => s.denied += 1,
                    ThreadSkip::Error => s.error += 1,
                    ThreadSkip::Timeout => {
                        s.timeout += 1;
                        s.over_budget += u32::try_from(tids.len() - i - 1).unwrap_or(u32::MAX);
                        break;
                    }
                    // A thread that died while ours and could not be reaped in
                    // time. If an exec killed it, the exec waits, holding the
                    // lock any PTRACE_SEIZE takes, for that thread to be
                    // reaped — by us, its tracer: one more SEIZE and agent and
                    // collector wait on each other for ever (seen in the exec
                    // test before reaping). So no further attach: the phase
                    // ends, and this thread's exit releases what it holds.
                    ThreadSkip::Vanished => {
                        s.gone += u32::try_from(tids.len() - i).unwrap_or(u32::MAX);
                        break;
                    }
                    // Likewise after any failure while holding a thread:
                    // it may still be ours.
                    ThreadSkip::HeldError => {
                        s.error += u32::try_from(tids.len() - i).unwrap_or(u32::MAX);
                        break;
                    }
                }
            }
        }
    }
    if let (Some(a), Some(b)) = (first_interrupt, last_detach) {
        phase.window = b.saturating_duration_since(a);
    }
    phase
}

fn capture_one(
    pid: u32,
    tid: u32,
    maps: &[Mapping],
    limits: Limits,
    first_interrupt: &mut Option<Instant>,
) -> Result<Captured, ThreadSkip> {
    // D: an interrupt would only take effect when it wakes (its kernel
    // stack is shown instead). T/t: already stopped. Z/X: exiting.
    match threads::state(pid, tid) {
        Ok('D') => return Err(ThreadSkip::Uninterruptible),
        Ok('T' | 't') => return Err(ThreadSkip::Stopped),
        Ok('Z' | 'X' | 'x') => return Err(ThreadSkip::Gone),
        Ok(_) => {}
        Err(varta_pipeline::procfs::ProcError::Gone) => return Err(ThreadSkip::Gone),
        Err(_) => return Err(ThreadSkip::Error),
    }
    let raw_tid = libc::pid_t::try_from(tid).map_err(|_| ThreadSkip::Error)?;
    let mut seized = Seized::seize(raw_tid).map_err(|e| match e.raw_os_error() {
        Some(libc::ESRCH) => ThreadSkip::Gone,
        Some(libc::EPERM | libc::EACCES) => ThreadSkip::Denied,
        _ => ThreadSkip::Error,
    })?;
    let interrupted = Instant::now();
    first_interrupt.get_or_insert(interrupted);
    // From here on the thread is ours until detached (or reaped: a thread
    // that exits while traced waits for its tracer, wait_for_stop reaps it).
    let failed = |e: io::Error| held_failure(&e, raw_tid, limits.stop_timeout);
    ptrace(libc::PTRACE_INTERRUPT, raw_tid, 0).map_err(failed)?;
    seized.signal = wait_for_stop(raw_tid, limits.stop_timeout).map_err(|skip| match skip {
        ThreadSkip::Error => ThreadSkip::HeldError,
        other => other,
    })?;
    let passed_on_signal = seized.signal != 0;
    let regs = registers(raw_tid).map_err(failed)?;
    let stack = copy_stack(pid, regs.sp, maps, limits.stack_bytes);
    seized.detach().map_err(failed)?;
    Ok(Captured { tid, regs, stack, pause: interrupted.elapsed(), passed_on_signal })
}

/// A ptrace step on a thread we hold failed. ESRCH means it died (it
/// cannot leave our stop otherwise): reaped within `timeout` it is simply
/// `Gone`; a zombie still waiting for us is `Vanished`.
fn held_failure(e: &io::Error, tid: libc::pid_t, timeout: Duration) -> ThreadSkip {
    if e.raw_os_error() != Some(libc::ESRCH) {
        return ThreadSkip::HeldError;
    }
    let started = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into our local integer.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
        if r == -1 || (r == tid && !libc::WIFSTOPPED(status)) {
            return ThreadSkip::Gone; // reaped, or not ours to reap
        }
        if started.elapsed() > timeout {
            return ThreadSkip::Vanished;
        }
        std::thread::sleep(Duration::from_micros(20));
    }
}

/// A seized thread; detached when dropped.
struct Seized {
    tid: libc::pid_t,
    /// A signal caught in signal-delivery-stop, re-injected at detach so
    /// the target does not lose it.
    signal: i32,
    detached: bool,
}

impl Seized {
    fn seize(tid: libc::pid_t) -> io::Result<Seized> {
        // No options: no exec/fork/clone events, no syscall stops.
        ptrace(libc::PTRACE_SEIZE, tid, 0)?;
        Ok(Seized { tid, signal: 0, detached: false })
    }

    fn detach(mut self) -> io::Result<()> {
        self.detached = true;
        ptrace(libc::PTRACE_DETACH, self.tid, usize::try_from(self.signal).unwrap_or(0)).map(|_| ())
    }
}

impl Drop for Seized {
    fn drop(&mut self) {
        if !self.detached {
            // Fails (ESRCH) when the thread is gone or not stopped; the
            // tracer thread's exit releases it then.
            let _ = ptrace(libc::PTRACE_DETACH, self.tid, usize::try_from(self.signal).unwrap_or(0));
        }
    }
}

fn ptrace(request: libc::c_uint, tid: libc::pid_t, data: usize) -> io::Result<libc::c_long> {
    // SAFETY: requests that take no pointer (SEIZE, INTERRUPT, DETACH with
    // a signal number as data); plain integers only.
    let r = unsafe {
        libc::ptrace(request, tid, std::ptr::null_mut::<libc::c_void>(), data as *mut libc::c_void)
    };
    if r == -1 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

/// Waits for `tid`'s stop: spins briefly, then polls every 20 µs until
/// `timeout`. Returns the signal to re-inject at detach (0 for our own
/// interrupt or a group-stop).
fn wait_for_stop(tid: libc::pid_t, timeout: Duration) -> Result<i32, ThreadSkip> {
    let started = Instant::now();
    let mut polls = 0u32;
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into our local integer.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
        if r == tid {
            if !libc::WIFSTOPPED(status) {
                return Err(ThreadSkip::Gone);
            }
            let event = (status >> 16) & 0xff;
            // PTRACE_EVENT_STOP: our interrupt (SIGTRAP) or a group-stop;
            // otherwise a signal-delivery-stop whose signal must go on.
            return Ok(if event == libc::PTRACE_EVENT_STOP { 0 } else { libc::WSTOPSIG(status) });
        }
        if r == -1 {
            let e = io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::ECHILD) {
                ThreadSkip::Gone
            } else {
                ThreadSkip::Error
            });
        }
        if started.elapsed() > timeout {
            return Err(ThreadSkip::Timeout);
        }
        polls += 1;
        if polls < 200 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(20));
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn registers(tid: libc::pid_t) -> io::Result<Regs> {
    // SAFETY: user_regs_struct is plain integers; all-zero is valid.
    let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    // SAFETY: PTRACE_GETREGS writes one user_regs_struct to the pointer we
    // pass, which points at our local of exactly that type.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_GETREGS,
            tid,
            std::ptr::null_mut::<libc::c_void>(),
            (&mut regs as *mut libc::user_regs_struct).cast::<libc::c_void>(),
        )
    };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(Regs { ip: regs.rip, sp: regs.rsp, bp: regs.rbp })
}

#[cfg(not(target_arch = "x86_64"))]
fn registers(_tid: libc::pid_t) -> io::Result<Regs> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

/// Up to `max` bytes from `sp` to the end of its mapping.
fn copy_stack(pid: u32, sp: u64, maps: &[Mapping], max: usize) -> Vec<u8> {
    let end = maps::find(maps, sp).map_or(sp, |m| m.end);
    let len = usize::try_from(end - sp).unwrap_or(max).min(max);
    let mut stack = vec![0u8; len];
    let n = memory::read(pid, sp, &mut stack).unwrap_or(0);
    stack.truncate(n);
    stack
}
