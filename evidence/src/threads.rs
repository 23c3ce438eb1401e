//! The zero-stop reader: per thread, `stat` (name, state), `wchan`,
//! `syscall` and, for threads in uninterruptible sleep, `stack`. Nothing
//! here stops or signals the target. A file that cannot be read is counted
//! by reason and the thread is still shown with what could be read (a
//! thread whose `stat` is gone has exited and is left out).

use varta_pipeline::procfs::{self, ProcError};

use crate::evidence::{ThreadEvidence, Unreadable};
use crate::sanitize::{MAX_CHARS, sanitize};
use crate::syscall;

/// Kernel stack lines kept per thread.
const MAX_KERNEL_FRAMES: usize = 64;

/// Reads one thread; `None` when it has exited.
pub(crate) fn read_thread(
    pid: u32,
    tid: u32,
    kernel_stacks: bool,
    unreadable: &mut Unreadable,
) -> Option<ThreadEvidence> {
    let base = format!("/proc/{pid}/task/{tid}");
    let stat = match procfs::read(&format!("{base}/stat")) {
        Ok(s) => s,
        Err(e) => {
            unreadable.count(e);
            return None;
        }
    };
    let (name, state) = parse_stat(&stat)?;
    let wchan = match procfs::read(&format!("{base}/wchan")) {
        Ok(w) => parse_wchan(&w),
        Err(e) => {
            unreadable.count(e);
            None
        }
    };
    let syscall = match procfs::read(&format!("{base}/syscall")) {
        Ok(s) => syscall::parse(&s),
        Err(e) => {
            unreadable.count(e);
            None
        }
    };
    let kernel_stack = if kernel_stacks && state == 'D' {
        match procfs::read(&format!("{base}/stack")) {
            Ok(s) => parse_kernel_stack(&s),
            Err(e) => {
                unreadable.count(e);
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    Some(ThreadEvidence { tid, name, state, wchan, syscall, kernel_stack, stack: None, holder: false })
}

/// The thread's state letter alone (`None` when it has exited).
pub(crate) fn state(pid: u32, tid: u32) -> Result<char, ProcError> {
    let stat = procfs::read(&format!("/proc/{pid}/task/{tid}/stat"))?;
    parse_stat(&stat).map(|(_, s)| s).ok_or(ProcError::Other(0))
}

/// Name (between the first `(` and the last `)`, sanitized) and state
/// letter (the first field after the last `)`).
pub(crate) fn parse_stat(stat: &str) -> Option<(String, char)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?;
    let state = procfs::stat_fields(stat)?.next()?.chars().next()?;
    Some((sanitize(name, MAX_CHARS), state))
}

/// `wchan` is `0` (or empty) for a running thread.
fn parse_wchan(text: &str) -> Option<String> {
    let w = text.trim();
    (!w.is_empty() && w != "0").then(|| sanitize(w, MAX_CHARS))
}

/// Lines like `[<0>] futex_wait_queue+0x60/0x90` become
/// `futex_wait_queue+0x60/0x90`.
fn parse_kernel_stack(text: &str) -> Vec<String> {
    text.lines()
        .take(MAX_KERNEL_FRAMES)
        .map(|l| l.rsplit_once("] ").map_or(l, |(_, f)| f).trim())
        .filter(|f| !f.is_empty())
        .map(|f| sanitize(f, MAX_CHARS))
        .collect()
}

/// `TracerPid` from the text of a `status` file.
pub(crate) fn parse_tracer_pid(status: &str) -> Option<u32> {
    status.lines().find_map(|l| l.strip_prefix("TracerPid:"))?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_hostile_name() {
        let (name, state) = parse_stat("12 (a) b\n) D 1 2 3").expect("parses");
        assert_eq!(name, "a) b\\n");
        assert_eq!(state, 'D');
        assert_eq!(parse_stat("12 no parens S"), None);
        assert_eq!(parse_stat("12 (x)"), None);
    }

    #[test]
    fn wchan_and_kernel_stack() {
        assert_eq!(parse_wchan("0"), None);
        assert_eq!(parse_wchan(""), None);
        assert_eq!(parse_wchan("futex_do_wait"), Some("futex_do_wait".to_owned()));
        let stack = "[<0>] futex_do_wait+0x43/0x70\n[<0>] __futex_wait+0x8f/0x100\n";
        assert_eq!(parse_kernel_stack(stack), vec!["futex_do_wait+0x43/0x70", "__futex_wait+0x8f/0x100"]);
    }

    #[test]
    fn tracer_pid() {
        assert_eq!(parse_tracer_pid("Name:\tx\nTracerPid:\t0\n"), Some(0));
        assert_eq!(parse_tracer_pid("TracerPid:\t4242\n"), Some(4242));
        assert_eq!(parse_tracer_pid("Name:\tx\n"), None);
    }

    #[test]
    fn our_own_threads_read() {
        let me = std::process::id();
        let mut unreadable = Unreadable::default();
        let t = read_thread(me, me, true, &mut unreadable).expect("own main thread");
        assert_eq!(t.tid, me);
        assert!(!t.name.is_empty());
        assert_eq!(read_thread(me, u32::MAX, true, &mut unreadable).map(|t| t.tid), None);
        assert_eq!(unreadable.gone, 1);
    }
}
