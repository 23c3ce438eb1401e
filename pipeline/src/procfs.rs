//! Small, allocation-light readers of Linux `/proc`. Every function returns
//! `None` when the file is missing or does not parse (the process exited, no
//! procfs, a different kernel format): callers treat that as "unknown", never
//! as a reason to panic.

use std::fs;

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
