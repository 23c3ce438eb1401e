//! Small, allocation-light readers of Linux `/proc`, and the one access
//! layer that tells *why* a read failed ([`ProcError`]): a process that is
//! gone, one we may not look at, and everything else (EMFILE, ENOMEM, EIO…)
//! are three different answers. Only "gone" may ever be read as "the
//! process exited", and an action taken on that reading confirms it first
//! ([`verified_gone`]). The `Option` readers return `None` for any failure
//! (callers that only *report* treat it as "unknown", never as a reason to
//! panic).

use std::fs;
use std::io;

/// Why a `/proc` read failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcError {
    /// ENOENT or ESRCH: the process (or thread) no longer exists.
    Gone,
    /// EACCES or EPERM: it exists, but we may not read this file.
    Denied,
    /// Any other error (EMFILE, ENOMEM, EIO…, or text that does not
    /// parse): nothing can be said about the process.
    Other(i32),
}

impl ProcError {
    /// The access answer an I/O error gives.
    pub fn of(e: &io::Error) -> ProcError {
        match e.raw_os_error() {
            Some(libc::ENOENT | libc::ESRCH) => ProcError::Gone,
            Some(libc::EACCES | libc::EPERM) => ProcError::Denied,
            Some(errno) => ProcError::Other(errno),
            None => ProcError::Other(0),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            ProcError::Gone => "gone",
            ProcError::Denied => "denied",
            ProcError::Other(_) => "error",
        }
    }
}

/// A `/proc` file's text, or why it could not be read.
pub fn read(path: &str) -> Result<String, ProcError> {
    fs::read_to_string(path).map_err(|e| ProcError::of(&e))
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`, 16 bytes; zeros if
/// unreadable): times of one boot mean nothing in another.
pub fn boot_id() -> [u8; 16] {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let hex: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    let mut id = [0u8; 16];
    for (i, pair) in hex.chunks(2).take(16).enumerate() {
        let s = std::str::from_utf8(pair).unwrap_or("0");
        id[i] = u8::from_str_radix(s, 16).unwrap_or(0);
    }
    id
}

/// Where a `/proc` symlink points (`fd/N`, `ns/user`, `exe`), or why it
/// could not be read. Only `readlink`: the target is never opened or
/// stat'ed, so a file on a dead network mount cannot hang the caller.
pub fn read_link(path: &str) -> Result<String, ProcError> {
    fs::read_link(path).map(|p| p.to_string_lossy().into_owned()).map_err(|e| ProcError::of(&e))
}

/// The thread ids of `pid` (the names under `/proc/<pid>/task`, as seen
/// from our pid namespace), ascending. Threads may exit right after.
pub fn task_ids(pid: u32) -> Result<Vec<u32>, ProcError> {
    let dir = fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| ProcError::of(&e))?;
    let mut tids: Vec<u32> = dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    tids.sort_unstable();
    Ok(tids)
}

/// Whether `pid` is verifiably gone: `kill(pid, 0)` answers ESRCH (no such
/// process in our pid namespace). EPERM means it exists; any other answer
/// is not a verification.
pub fn verified_gone(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 performs only the existence and permission checks.
    let r = unsafe { libc::kill(pid, 0) };
    r == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// Process start time (field 22 of `/proc/<pid>/stat`, clock ticks since
/// boot). A recycled pid has a different start time, so (pid, start time)
/// identifies a process.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// Parses field 22 from the text of `/proc/<pid>/stat`. The command name
/// (field 2) is in parentheses and may itself contain `)` and spaces, so
/// fields are counted after the *last* `)`.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    // Field 22 is the 20th after the name (index 0 is field 3, the state).
    stat_fields(stat)?.nth(22 - 3)?.parse().ok()
}

/// The fields of a `/proc/<pid>/stat` (or `…/task/<tid>/stat`) text after
/// the command name, which is in parentheses and may itself contain `)`
/// and spaces: the first item is field 3 (state).
pub fn stat_fields(stat: &str) -> Option<std::str::SplitAsciiWhitespace<'_>> {
    Some(stat.get(stat.rfind(')')? + 1..)?.split_ascii_whitespace())
}

/// `/proc/sys/kernel/pid_max`: pids above it cannot exist on this host.
pub fn pid_max() -> Option<u32> {
    fs::read_to_string("/proc/sys/kernel/pid_max").ok()?.trim().parse().ok()
}

/// The `NSpid` line of `/proc/<pid>/status`: the pid in each pid namespace
/// from the one of our `/proc` mount down to the process's own (last entry).
pub fn ns_pids(pid: u32) -> Option<Vec<u32>> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_ns_pids(&status)
}

/// Parses the `NSpid:` line out of the text of `/proc/<pid>/status`.
pub fn parse_ns_pids(status: &str) -> Option<Vec<u32>> {
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    let pids: Option<Vec<u32>> = line.split_ascii_whitespace().map(|p| p.parse().ok()).collect();
    pids.filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_errors_say_gone_denied_or_other() {
        assert_eq!(ProcError::of(&io::Error::from_raw_os_error(libc::ENOENT)), ProcError::Gone);
        assert_eq!(ProcError::of(&io::Error::from_raw_os_error(libc::ESRCH)), ProcError::Gone);
        assert_eq!(ProcError::of(&io::Error::from_raw_os_error(libc::EACCES)), ProcError::Denied);
        assert_eq!(
            ProcError::of(&io::Error::from_raw_os_error(libc::EMFILE)),
            ProcError::Other(libc::EMFILE)
        );
        assert_eq!(read("/proc/self/definitely-not-a-file"), Err(ProcError::Gone));
        assert!(read("/proc/self/stat").is_ok());
    }

    #[test]
    fn links_and_tasks_of_our_own_process() {
        let me = std::process::id();
        assert!(read_link("/proc/self/ns/user").is_ok_and(|l| l.starts_with("user:[")));
        assert_eq!(read_link("/proc/self/fd/999999"), Err(ProcError::Gone));
        let tids = task_ids(me).expect("own tasks");
        assert!(tids.contains(&me));
        assert!(tids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn only_a_reaped_process_is_verified_gone() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("spawn sleep");
        assert!(!verified_gone(child.id()));
        child.kill().expect("kill");
        // A zombie still exists until it is reaped.
        child.wait().expect("reap");
        assert!(verified_gone(child.id()));
        assert!(!verified_gone(std::process::id()));
        assert!(!verified_gone(0));
    }

    const STAT: &str = "4242 (evil) name) (x) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                        987654 12345 67 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn start_time_parses_after_last_paren() {
        assert_eq!(parse_start_time(STAT), Some(987654));
        assert_eq!(parse_start_time("1 (a) S 1 2"), None);
        assert_eq!(parse_start_time("no paren here"), None);
        assert_eq!(parse_start_time(""), None);
    }

    #[test]
    fn own_start_time_is_stable() {
        let me = std::process::id();
        let a = start_time(me);
        assert!(a.is_some());
        assert_eq!(a, start_time(me));
        assert!(pid_max().is_some_and(|m| m >= me));
    }

    #[test]
    fn live_child_has_a_later_start_time_and_loses_it_when_reaped() {
        let ours = start_time(std::process::id()).expect("own start time");
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("spawn sleep");
        let pid = child.id();
        let theirs = start_time(pid).expect("live child's start time");
        assert!(theirs >= ours, "child started at {theirs}, before us at {ours}");
        child.kill().expect("kill");
        child.wait().expect("reap");
        // Gone: no start time — or, if the pid was already recycled, not the child's.
        assert_ne!(start_time(pid), Some(theirs), "pid {pid} still reports the reaped child");
    }

    #[test]
    fn ns_pids_parse() {
        assert_eq!(parse_ns_pids("Name:\tx\nNSpid:\t4242\t7\nNSpgid:\t1\n"), Some(vec![4242, 7]));
        assert_eq!(parse_ns_pids("Name:\tx\n"), None);
        assert_eq!(parse_ns_pids("NSpid:\tabc\n"), None);
        let mine = ns_pids(std::process::id()).expect("own NSpid");
        assert_eq!(mine.first(), Some(&std::process::id()));
    }
}
