//! Zero-stop reader: everything here comes from /proc and never stops the target.
use std::fs;
use std::io;

/// What /proc/<pid>/task/<tid>/syscall said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyscallState {
    /// Blocked in syscall `nr` with `args`; `sp`/`pc` are the *user* registers at entry.
    Blocked { nr: u64, args: [u64; 6], sp: u64, pc: u64 },
    /// "-1 sp pc": in the kernel but not in a syscall (e.g. page fault, preempted in kernel).
    NotInSyscall { sp: u64, pc: u64 },
    /// "running": on CPU in user space, nothing to read.
    Running,
    /// File unreadable (thread gone, permission, or kernel without CONFIG_HAVE_ARCH_TRACEHOOK).
    Unavailable,
}

#[derive(Debug, Clone)]
pub struct ThreadInfo {
    pub tid: i32,
    pub comm: String,
    /// Single-letter state from /proc/.../stat field 3 (R, S, D, T, t, Z, ...).
    pub state: char,
    pub wchan: String,
    pub syscall: SyscallState,
    /// /proc/.../stack (kernel stack). Root only; None when unreadable.
    pub kernel_stack: Option<Vec<String>>,
}

/// List thread ids of `pid`. Threads may vanish between this and later reads:
/// every per-thread read below tolerates ENOENT/ESRCH.
pub fn list_tids(pid: i32) -> io::Result<Vec<i32>> {
    let mut tids: Vec<i32> = fs::read_dir(format!("/proc/{pid}/task"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

/// Parse the state letter out of /proc/.../stat. comm may contain spaces and ')',
/// so we split at the *last* ')'.
pub fn parse_stat_state(stat: &str) -> Option<char> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.trim_start().chars().next()
}

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

pub fn parse_syscall(s: &str) -> SyscallState {
    let s = s.trim();
    if s == "running" {
        return SyscallState::Running;
    }
    let f: Vec<&str> = s.split_whitespace().collect();
    if f.len() == 3 && f[0] == "-1" {
        return match (parse_hex(f[1]), parse_hex(f[2])) {
            (Some(sp), Some(pc)) => SyscallState::NotInSyscall { sp, pc },
            _ => SyscallState::Unavailable,
        };
    }
    if f.len() == 9 {
        let nr: Option<u64> = f[0].parse().ok();
        let v: Option<Vec<u64>> = f[1..].iter().map(|x| parse_hex(x)).collect();
        if let (Some(nr), Some(v)) = (nr, v) {
            return SyscallState::Blocked {
                nr,
                args: [v[0], v[1], v[2], v[3], v[4], v[5]],
                sp: v[6],
                pc: v[7],
            };
        }
    }
    SyscallState::Unavailable
}

/// Read one thread. Returns None if the thread vanished.
pub fn read_thread(pid: i32, tid: i32, with_kernel_stack: bool) -> Option<ThreadInfo> {
    let base = format!("/proc/{pid}/task/{tid}");
    let stat = fs::read_to_string(format!("{base}/stat")).ok()?;
    let state = parse_stat_state(&stat).unwrap_or('?');
    let comm = fs::read_to_string(format!("{base}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_default();
    let wchan = fs::read_to_string(format!("{base}/wchan")).unwrap_or_default();
    let syscall = fs::read_to_string(format!("{base}/syscall"))
        .map(|s| parse_syscall(&s))
        .unwrap_or(SyscallState::Unavailable);
    let kernel_stack = if with_kernel_stack {
        fs::read_to_string(format!("{base}/stack"))
            .ok()
            .map(|s| s.lines().map(|l| l.to_string()).collect())
    } else {
        None
    };
    Some(ThreadInfo { tid, comm, state, wchan, syscall, kernel_stack })
}

/// Snapshot of all threads of `pid` (threads that vanish mid-scan are dropped).
pub fn snapshot(pid: i32, with_kernel_stack: bool) -> io::Result<Vec<ThreadInfo>> {
    Ok(list_tids(pid)?
        .into_iter()
        .filter_map(|tid| read_thread(pid, tid, with_kernel_stack))
        .collect())
}

/// TracerPid from /proc/<pid>/task/<tid>/status (0 = not traced).
pub fn tracer_pid(pid: i32, tid: i32) -> Option<i32> {
    let s = fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn stat_with_paren_in_comm() {
        assert_eq!(parse_stat_state("12 (a) b) S 1 2 3"), Some('S'));
    }
    #[test]
    fn syscall_forms() {
        assert_eq!(parse_syscall("running\n"), SyscallState::Running);
        assert_eq!(
            parse_syscall("-1 0x7ffc0 0x401000"),
            SyscallState::NotInSyscall { sp: 0x7ffc0, pc: 0x401000 }
        );
        match parse_syscall("202 0x561c062c71c0 0x80 0x2 0x0 0x0 0x0 0x7f5ded644e98 0x7f5ded75112b") {
            SyscallState::Blocked { nr: 202, args, sp, pc } => {
                assert_eq!(args[0], 0x561c062c71c0);
                assert_eq!(sp, 0x7f5ded644e98);
                assert_eq!(pc, 0x7f5ded75112b);
            }
            other => panic!("{other:?}"),
        }
    }
}
