//! varta-otel "where is a stalled process stuck" spike.
//!
//! Layout mirrors the module design proposed in REPORT.md:
//! - `proc_threads`: zero-stop /proc reader (comm, state, wchan, syscall, kernel stack)
//! - `grouping`: group threads by what they block on (futex uaddr, fd, sleep, epoll...)
//! - `maps`: /proc/<pid>/maps parser
//! - `ptrace_capture`: one-thread-at-a-time PTRACE_SEIZE/INTERRUPT/GETREGS/stack copy/DETACH
//! - `unwind`: offline unwinding of captured regs + stack bytes with framehop (.eh_frame)
//! - `symbols`: per-binary symbol cache (.symtab/.dynsym + DWARF via addr2line), demangling
pub mod grouping;
pub mod maps;
pub mod proc_threads;
pub mod ptrace_capture;
pub mod symbols;
pub mod unwind;

/// Monotonic clock in nanoseconds (same clock the test programs' tickers use).
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes into the valid timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
