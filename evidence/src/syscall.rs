//! What `/proc/<pid>/task/<tid>/syscall` says a thread is doing, and the
//! names of the system calls we classify (x86_64 numbers; other
//! architectures get the number and `?`). Parsing never fails loudly: text
//! that does not parse is `None`, shown as unknown.

/// A thread's current system call, from the `syscall` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyscallState {
    /// Blocked in system call `nr` with `args`; `sp` and `pc` are the
    /// user-space registers at entry.
    Blocked { nr: u64, args: [u64; 6], sp: u64, pc: u64 },
    /// `-1 sp pc`: in the kernel but not in a system call (a page fault, an
    /// interrupt).
    NotInSyscall { sp: u64, pc: u64 },
    /// `running`: on a CPU in user space.
    Running,
}

impl SyscallState {
    /// The system call number while blocked in one.
    pub fn nr(&self) -> Option<u64> {
        match self {
            SyscallState::Blocked { nr, .. } => Some(*nr),
            _ => None,
        }
    }
}

/// Parses the text of a `syscall` file: `running`, `-1 sp pc`, or
/// `nr a0 a1 a2 a3 a4 a5 sp pc` (numbers after `nr` in hex).
pub fn parse(text: &str) -> Option<SyscallState> {
    let text = text.trim();
    if text == "running" {
        return Some(SyscallState::Running);
    }
    let mut fields = text.split_ascii_whitespace();
    let first = fields.next()?;
    let rest: Vec<u64> = fields.map(parse_hex).collect::<Option<_>>()?;
    if first == "-1" {
        let [sp, pc] = rest[..] else { return None };
        return Some(SyscallState::NotInSyscall { sp, pc });
    }
    let nr: u64 = first.parse().ok()?;
    let [a0, a1, a2, a3, a4, a5, sp, pc] = rest[..] else { return None };
    Some(SyscallState::Blocked { nr, args: [a0, a1, a2, a3, a4, a5], sp, pc })
}

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

/// What a system call waits for, for grouping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitClass {
    /// A futex word (argument 0).
    Futex,
    /// A file descriptor (argument 0).
    Fd,
    /// An epoll instance (argument 0 is the epoll fd).
    Epoll,
    /// poll/select: the fd sets live in the target's memory.
    Poll,
    Sleep,
    Child,
    Other,
}

/// x86_64 system call numbers (asm/unistd_64.h) of the calls we name.
#[cfg(target_arch = "x86_64")]
const TABLE: &[(u64, &str, WaitClass)] = {
    use WaitClass::*;
    &[
        (0, "read", Fd),
        (1, "write", Fd),
        (7, "poll", Poll),
        (17, "pread64", Fd),
        (18, "pwrite64", Fd),
        (19, "readv", Fd),
        (20, "writev", Fd),
        (23, "select", Poll),
        (34, "pause", Sleep),
        (35, "nanosleep", Sleep),
        (42, "connect", Fd),
        (43, "accept", Fd),
        (44, "sendto", Fd),
        (45, "recvfrom", Fd),
        (46, "sendmsg", Fd),
        (47, "recvmsg", Fd),
        (61, "wait4", Child),
        (72, "fcntl", Fd),
        (73, "flock", Fd),
        (74, "fsync", Fd),
        (75, "fdatasync", Fd),
        (128, "rt_sigtimedwait", Other),
        (130, "rt_sigsuspend", Other),
        (202, "futex", Futex),
        (219, "restart_syscall", Sleep),
        (230, "clock_nanosleep", Sleep),
        (232, "epoll_wait", Epoll),
        (247, "waitid", Child),
        (270, "pselect6", Poll),
        (271, "ppoll", Poll),
        (277, "sync_file_range", Fd),
        (281, "epoll_pwait", Epoll),
        (288, "accept4", Fd),
        (295, "preadv", Fd),
        (296, "pwritev", Fd),
        (299, "recvmmsg", Fd),
        (307, "sendmmsg", Fd),
        (327, "preadv2", Fd),
        (328, "pwritev2", Fd),
        (441, "epoll_pwait2", Epoll),
        (449, "futex_waitv", Other),
    ]
};

#[cfg(not(target_arch = "x86_64"))]
const TABLE: &[(u64, &str, WaitClass)] = &[];

/// The name of system call `nr`, `?` when we do not name it.
pub fn name(nr: u64) -> &'static str {
    TABLE.iter().find(|e| e.0 == nr).map_or("?", |e| e.1)
}

/// What system call `nr` waits for.
pub fn class(nr: u64) -> WaitClass {
    TABLE.iter().find(|e| e.0 == nr).map_or(WaitClass::Other, |e| e.2)
}

/// What a kernel function in `wchan` says a thread waits for, when its
/// `syscall` file could not be read.
pub fn class_of_wchan(wchan: &str) -> Option<WaitClass> {
    let w = wchan.trim();
    if w.contains("futex") {
        Some(WaitClass::Futex)
    } else if w.contains("nanosleep") || w == "do_nanosleep" {
        Some(WaitClass::Sleep)
    } else if w.contains("epoll") {
        Some(WaitClass::Epoll)
    } else if w.contains("poll") || w.contains("select") {
        Some(WaitClass::Poll)
    } else if w.contains("do_wait") || w == "kernel_wait4" {
        Some(WaitClass::Child)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_forms_parse() {
        assert_eq!(parse("running\n"), Some(SyscallState::Running));
        assert_eq!(
            parse("-1 0x7ffc0 0x401000\n"),
            Some(SyscallState::NotInSyscall { sp: 0x7ffc0, pc: 0x401000 })
        );
        let blocked = parse("202 0x561c062c71c0 0x80 0x2 0x0 0x0 0x0 0x7f5ded644e98 0x7f5ded75112b\n");
        assert_eq!(
            blocked,
            Some(SyscallState::Blocked {
                nr: 202,
                args: [0x561c062c71c0, 0x80, 0x2, 0, 0, 0],
                sp: 0x7f5ded644e98,
                pc: 0x7f5ded75112b,
            })
        );
        assert_eq!(blocked.and_then(|s| s.nr()), Some(202));
    }

    #[test]
    fn malformed_text_is_unknown() {
        assert_eq!(parse(""), None);
        assert_eq!(parse("-1 0x1"), None);
        assert_eq!(parse("-1 zz 0x1"), None);
        assert_eq!(parse("202 0x1 0x2"), None);
        assert_eq!(parse("202 0x1 0x2 0x3 0x4 0x5 0x6 0x7 0x8 0x9"), None);
        assert_eq!(parse("abc 0x1 0x2 0x3 0x4 0x5 0x6 0x7 0x8"), None);
        assert_eq!(parse("202 1 2 3 4 5 6 7 8"), None, "arguments are hex with 0x");
        assert_eq!(parse("0x18446744073709551616 0x0"), None);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn names_and_classes() {
        assert_eq!(name(202), "futex");
        assert_eq!(class(202), WaitClass::Futex);
        assert_eq!(name(230), "clock_nanosleep");
        assert_eq!(class(0), WaitClass::Fd);
        assert_eq!(class(232), WaitClass::Epoll);
        assert_eq!(name(99_999), "?");
        assert_eq!(class(99_999), WaitClass::Other);
        assert_eq!(class_of_wchan("futex_do_wait"), Some(WaitClass::Futex));
        assert_eq!(class_of_wchan("hrtimer_nanosleep"), Some(WaitClass::Sleep));
        assert_eq!(class_of_wchan("do_epoll_wait"), Some(WaitClass::Epoll));
        assert_eq!(class_of_wchan("pipe_read"), None);
    }
}
