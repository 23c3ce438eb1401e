//! One thread at a time: PTRACE_SEIZE + PTRACE_INTERRUPT + waitpid(__WALL) +
//! PTRACE_GETREGS + stack copy + PTRACE_DETACH. The rest of the process keeps running.
//!
//! Invariants:
//! - Never more than one thread of the target is stopped by us at any moment.
//! - Every successful SEIZE is followed by a DETACH on every path, except when the
//!   thread never reaches a stop within the timeout (then the DETACH is impossible:
//!   DETACH needs a stopped tracee). Such tids are returned in `Outcome::TimedOut` and
//!   the caller must either keep waiting later or let the tracer *thread* exit, which
//!   makes the kernel detach all its tracees (see REPORT.md "pitfalls").
use crate::maps::{self, Mapping};
use crate::mono_ns;
use std::io;

/// Sentinel for "rbp not known" (non-canonical address: never inside any stack copy).
pub const UNKNOWN_BP: u64 = 0xdead_0000_0000_0b0b;

/// Minimal register set we keep (x86_64).
#[derive(Debug, Clone, Copy, Default)]
pub struct Regs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

#[derive(Debug, Clone)]
pub struct StackCopy {
    /// Address of `bytes[0]` (== sp at capture time).
    pub base: u64,
    pub bytes: Vec<u8>,
}

impl StackCopy {
    /// framehop read callback: 8-byte aligned reads inside the copy only.
    pub fn read_u64(&self, addr: u64) -> Result<u64, ()> {
        let off = addr.checked_sub(self.base).ok_or(())? as usize;
        let b = self.bytes.get(off..off.checked_add(8).ok_or(())?).ok_or(())?;
        Ok(u64::from_le_bytes(b.try_into().unwrap()))
    }
}

#[derive(Debug, Clone)]
pub struct Captured {
    pub tid: i32,
    pub regs: Regs,
    pub stack: StackCopy,
    /// INTERRUPT sent -> DETACH returned: upper bound of the pause we inflicted.
    pub pause_ns: u64,
    /// How the thread stopped (for diagnostics).
    pub stop_kind: StopKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopKind {
    /// PTRACE_EVENT_STOP with SIGTRAP: our interrupt.
    Interrupt,
    /// PTRACE_EVENT_STOP with a stop signal: the process is in group-stop. Detaching
    /// leaves it stopped, as it was.
    GroupStop(i32),
    /// Signal-delivery-stop: a signal was about to be delivered. We MUST re-inject it on
    /// DETACH or the target loses the signal.
    SignalDelivery(i32),
}

#[derive(Debug)]
pub enum Outcome {
    Ok(Captured),
    /// State D / T at pre-check: skipped without touching it.
    Skipped(char),
    /// SEIZE failed: EPERM (already traced, or no permission), ESRCH (gone).
    SeizeFailed(io::Error),
    /// Thread exited while we waited for it (WIFEXITED/WIFSIGNALED or ESRCH).
    Vanished,
    /// No stop within the timeout; still seized with an interrupt pending.
    TimedOut,
    Other(String),
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Max bytes of stack to copy above sp (bounded by the mapping end).
    pub stack_bytes: usize,
    pub stop_timeout_ns: u64,
    /// Skip threads in these states (checked just before SEIZE).
    pub skip_d_state: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { stack_bytes: 128 * 1024, stop_timeout_ns: 100_000_000, skip_d_state: true }
    }
}

fn errno() -> io::Error {
    io::Error::last_os_error()
}

fn ptrace(req: libc::c_uint, tid: i32, addr: usize, data: usize) -> io::Result<libc::c_long> {
    // SAFETY: raw ptrace syscall; arguments are plain integers or a pointer to a
    // caller-owned buffer (GETREGS), valid for the duration of the call.
    let r = unsafe { libc::ptrace(req, tid, addr as *mut libc::c_void, data as *mut libc::c_void) };
    if r == -1 { Err(errno()) } else { Ok(r) }
}

/// Copy up to `max` bytes starting at `sp` from the target (bounded by sp's mapping).
pub fn read_stack(pid: i32, sp: u64, maps: &[Mapping], max: usize) -> StackCopy {
    let end = maps::find(maps, sp).map(|m| m.end).unwrap_or(sp);
    let len = ((end - sp) as usize).min(max);
    let mut bytes = vec![0u8; len];
    if len > 0 {
        let local = libc::iovec { iov_base: bytes.as_mut_ptr().cast(), iov_len: len };
        let remote = libc::iovec { iov_base: sp as *mut libc::c_void, iov_len: len };
        // SAFETY: local iovec points at our own buffer of `len` bytes; the remote side
        // is validated by the kernel (EFAULT on bad address, never UB for us).
        let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
        bytes.truncate(n.max(0) as usize);
    }
    StackCopy { base: sp, bytes }
}

/// Wait for `tid` to report a stop. Spin briefly (yield), then back off with short sleeps.
fn wait_stop(tid: i32, timeout_ns: u64) -> Result<i32, Outcome> {
    let t0 = mono_ns();
    let mut spins = 0u32;
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes status into our local.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
        if r == tid {
            if libc::WIFSTOPPED(status) {
                return Ok(status);
            }
            // WIFEXITED / WIFSIGNALED: the thread (or the whole process) is gone.
            return Err(Outcome::Vanished);
        }
        if r == -1 {
            let e = errno();
            return Err(if e.raw_os_error() == Some(libc::ECHILD) {
                Outcome::Vanished
            } else {
                Outcome::Other(format!("waitpid: {e}"))
            });
        }
        if mono_ns() - t0 > timeout_ns {
            return Err(Outcome::TimedOut);
        }
        spins += 1;
        if spins < 200 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(std::time::Duration::from_micros(20));
        }
    }
}

/// Capture one thread of `pid`. `maps` is used only to bound the stack copy.
pub fn capture_thread(pid: i32, tid: i32, maps: &[Mapping], opt: &Options) -> Outcome {
    if opt.skip_d_state {
        // D: uninterruptible sleep - INTERRUPT would only take effect when it leaves D, and
        // we would wait for the timeout. T/t: already stopped (job control / another tracer).
        if let Some(t) = crate::proc_threads::read_thread(pid, tid, false) {
            if matches!(t.state, 'D' | 'T' | 't' | 'Z' | 'X') {
                return Outcome::Skipped(t.state);
            }
        } else {
            return Outcome::Vanished;
        }
    }
    // SEIZE does not stop the thread. No options: we don't want exec/fork/clone events.
    if let Err(e) = ptrace(libc::PTRACE_SEIZE, tid, 0, 0) {
        return Outcome::SeizeFailed(e);
    }
    let t_int = mono_ns();
    if let Err(e) = ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) {
        // ESRCH here = thread died between SEIZE and INTERRUPT (kernel auto-untraces it).
        let _ = ptrace(libc::PTRACE_DETACH, tid, 0, 0);
        return if e.raw_os_error() == Some(libc::ESRCH) { Outcome::Vanished } else { Outcome::Other(format!("interrupt: {e}")) };
    }
    let status = match wait_stop(tid, opt.stop_timeout_ns) {
        Ok(s) => s,
        Err(o) => return o,
    };
    let sig = libc::WSTOPSIG(status);
    let event = (status >> 16) & 0xff;
    let stop_kind = if event == libc::PTRACE_EVENT_STOP {
        if sig == libc::SIGTRAP { StopKind::Interrupt } else { StopKind::GroupStop(sig) }
    } else {
        StopKind::SignalDelivery(sig)
    };
    let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    let got = ptrace(libc::PTRACE_GETREGS, tid, 0, &mut regs as *mut _ as usize);
    let stack = match got {
        Ok(_) => read_stack(pid, regs.rsp, maps, opt.stack_bytes),
        Err(_) => StackCopy { base: 0, bytes: vec![] },
    };
    // Re-inject a signal we intercepted in signal-delivery-stop; 0 otherwise.
    let inject = match stop_kind {
        StopKind::SignalDelivery(s) => s as usize,
        _ => 0,
    };
    let det = ptrace(libc::PTRACE_DETACH, tid, 0, inject);
    let pause_ns = mono_ns() - t_int;
    if let Err(e) = got {
        return Outcome::Other(format!("getregs: {e}"));
    }
    if let Err(e) = det {
        return Outcome::Other(format!("detach: {e}"));
    }
    Outcome::Ok(Captured {
        tid,
        regs: Regs { ip: regs.rip, sp: regs.rsp, bp: regs.rbp },
        stack,
        pause_ns,
        stop_kind,
    })
}

/// Zero-stop variant for threads blocked in a syscall: /proc/.../syscall gives the user
/// sp and pc at syscall entry (consistent: the kernel samples an inactive task). rbp is NOT
/// available, so frames whose CFA is rbp-based cannot be unwound. The stack is read while
/// the thread keeps sleeping; it is only racy if the thread wakes up meanwhile.
///
/// rbp is set to `UNKNOWN_BP`, an unreadable sentinel: if the unwinder ever needs rbp
/// (rbp-based CFA, e.g. Rust std which is built with frame pointers, or a frame-pointer
/// fallback) it fails with CouldNotReadStack(UNKNOWN_BP) instead of silently stopping,
/// and the caller can fall back to a ptrace capture of that one thread.
pub fn capture_blocked_nostop(pid: i32, tid: i32, sp: u64, pc: u64, maps: &[Mapping], opt: &Options) -> Captured {
    let stack = read_stack(pid, sp, maps, opt.stack_bytes);
    Captured { tid, regs: Regs { ip: pc, sp, bp: UNKNOWN_BP }, stack, pause_ns: 0, stop_kind: StopKind::Interrupt }
}
