//! Group threads by what they are blocked on, from the zero-stop snapshot only.
use crate::proc_threads::{SyscallState, ThreadInfo};
use std::collections::BTreeMap;

/// x86_64 syscall numbers we classify (asm/unistd_64.h).
mod nr {
    pub const READ: u64 = 0;
    pub const WRITE: u64 = 1;
    pub const POLL: u64 = 7;
    pub const READV: u64 = 19;
    pub const WRITEV: u64 = 20;
    pub const SELECT: u64 = 23;
    pub const NANOSLEEP: u64 = 35;
    pub const ACCEPT: u64 = 43;
    pub const SENDTO: u64 = 44;
    pub const RECVFROM: u64 = 45;
    pub const SENDMSG: u64 = 46;
    pub const RECVMSG: u64 = 47;
    pub const WAIT4: u64 = 61;
    pub const FLOCK: u64 = 73;
    pub const FSYNC: u64 = 74;
    pub const FUTEX: u64 = 202;
    pub const EPOLL_WAIT: u64 = 232;
    pub const CLOCK_NANOSLEEP: u64 = 230;
    pub const PSELECT6: u64 = 270;
    pub const PPOLL: u64 = 271;
    pub const EPOLL_PWAIT: u64 = 281;
    pub const ACCEPT4: u64 = 288;
    pub const PREAD64: u64 = 17;
    pub const PWRITE64: u64 = 18;
    pub const EPOLL_PWAIT2: u64 = 441;
    pub const FUTEX_WAITV: u64 = 449;
    pub const RESTART_SYSCALL: u64 = 219;
}

/// The "wait key" two threads must share to be grouped together.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WaitKey {
    /// futex(uaddr, op...): same uaddr in the same process = same lock/condvar.
    Futex { uaddr: u64 },
    /// read/write/recv/...(fd) with the fd's readlink target (e.g. "pipe:[123]", "socket:[456]").
    Fd { syscall: &'static str, fd: i32, target: String },
    /// epoll_wait(epfd): the epoll instance ("anon_inode:[eventpoll]").
    Epoll { epfd: i32 },
    /// poll/select/ppoll: fd sets live in user memory; not resolved zero-stop.
    Poll,
    Sleep,
    WaitChild,
    OtherSyscall { nr: u64 },
    /// Not in a syscall: running or in-kernel (page fault, D state...).
    NotBlocked { state: char, wchan: String },
}

pub fn syscall_name(n: u64) -> &'static str {
    match n {
        nr::READ => "read",
        nr::WRITE => "write",
        nr::READV => "readv",
        nr::WRITEV => "writev",
        nr::PREAD64 => "pread64",
        nr::PWRITE64 => "pwrite64",
        nr::ACCEPT => "accept",
        nr::ACCEPT4 => "accept4",
        nr::SENDTO => "sendto",
        nr::RECVFROM => "recvfrom",
        nr::SENDMSG => "sendmsg",
        nr::RECVMSG => "recvmsg",
        nr::FLOCK => "flock",
        nr::FSYNC => "fsync",
        nr::FUTEX => "futex",
        nr::NANOSLEEP => "nanosleep",
        nr::CLOCK_NANOSLEEP => "clock_nanosleep",
        nr::EPOLL_WAIT => "epoll_wait",
        nr::EPOLL_PWAIT => "epoll_pwait",
        nr::EPOLL_PWAIT2 => "epoll_pwait2",
        nr::POLL => "poll",
        nr::PPOLL => "ppoll",
        nr::SELECT => "select",
        nr::PSELECT6 => "pselect6",
        nr::WAIT4 => "wait4",
        nr::FUTEX_WAITV => "futex_waitv",
        nr::RESTART_SYSCALL => "restart_syscall",
        _ => "?",
    }
}

/// Resolve an fd with readlink only (never open it: opening a FIFO/device could block
/// or have side effects).
pub fn fd_target(pid: i32, fd: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("<{e}>"))
}

pub fn wait_key(pid: i32, t: &ThreadInfo) -> WaitKey {
    match &t.syscall {
        SyscallState::Blocked { nr, args, .. } => match *nr {
            nr::FUTEX => WaitKey::Futex { uaddr: args[0] },
            nr::READ | nr::WRITE | nr::READV | nr::WRITEV | nr::PREAD64 | nr::PWRITE64
            | nr::ACCEPT | nr::ACCEPT4 | nr::SENDTO | nr::RECVFROM | nr::SENDMSG
            | nr::RECVMSG | nr::FLOCK | nr::FSYNC => {
                let fd = args[0] as i32;
                WaitKey::Fd { syscall: syscall_name(*nr), fd, target: fd_target(pid, fd) }
            }
            nr::EPOLL_WAIT | nr::EPOLL_PWAIT | nr::EPOLL_PWAIT2 => {
                WaitKey::Epoll { epfd: args[0] as i32 }
            }
            nr::POLL | nr::PPOLL | nr::SELECT | nr::PSELECT6 => WaitKey::Poll,
            // restart_syscall: a nanosleep/futex/poll that a stop interrupted and the
            // kernel restarted; the original syscall is no longer visible.
            nr::NANOSLEEP | nr::CLOCK_NANOSLEEP | nr::RESTART_SYSCALL => WaitKey::Sleep,
            nr::WAIT4 => WaitKey::WaitChild,
            n => WaitKey::OtherSyscall { nr: n },
        },
        _ => WaitKey::NotBlocked { state: t.state, wchan: t.wchan.clone() },
    }
}

/// Groups, largest first. Values are tids.
pub fn group(pid: i32, threads: &[ThreadInfo]) -> Vec<(WaitKey, Vec<i32>)> {
    let mut m: BTreeMap<WaitKey, Vec<i32>> = BTreeMap::new();
    for t in threads {
        m.entry(wait_key(pid, t)).or_default().push(t.tid);
    }
    let mut v: Vec<_> = m.into_iter().collect();
    v.sort_by(|a, b| b.1.len().cmp(&a.1.len()));
    v
}
