//! Readers of `/proc/<pid>/…` for one process. The `Option` readers return
//! `None` when the file is missing, unreadable (another user's process) or
//! does not parse: the process may exit at any moment, and that is normal
//! for what only labels. What judges a process (diagnosis, recovery's last
//! check) uses the `_checked` readers, which say *why* through the one
//! access layer, [`ProcError`]: only "gone" may become `exited`.

use std::fs;

pub use varta_pipeline::procfs::ProcError;
use varta_pipeline::procfs::read;

/// What `/proc/<pid>/stat` says about a process or thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub state: char,
    pub ppid: u32,
    /// utime + stime, clock ticks.
    pub cpu_ticks: u64,
    pub threads: u32,
    pub start_time: u64,
    pub rss_pages: u64,
}

pub fn parse_stat(text: &str) -> Option<Stat> {
    let f: Vec<&str> = varta_pipeline::procfs::stat_fields(text)?.collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: u32::try_from(num(1)?).ok()?,
        cpu_ticks: num(11)?.saturating_add(num(12)?),
        threads: u32::try_from(num(17)?).unwrap_or(u32::MAX),
        start_time: num(19)?,
        rss_pages: num(21)?,
    })
}

pub fn stat(pid: u32) -> Option<Stat> {
    stat_checked(pid).ok()
}

/// `/proc/<pid>/stat`, or why not (text that does not parse is `Other`).
pub fn stat_checked(pid: u32) -> Result<Stat, ProcError> {
    parse_stat(&read(&format!("/proc/{pid}/stat"))?).ok_or(ProcError::Other(0))
}

/// Lines of `/proc/<pid>/status` this crate uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Status {
    pub uid: u32,
    pub tracer_pid: u32,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    pub rss_kib: u64,
}

pub fn parse_status(text: &str) -> Option<Status> {
    let mut s = Status::default();
    let mut saw_uid = false;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let first = || value.split_ascii_whitespace().next().and_then(|v| v.parse::<u64>().ok());
        match key {
            "Uid" => {
                s.uid = u32::try_from(first()?).ok()?;
                saw_uid = true;
            }
            "TracerPid" => s.tracer_pid = u32::try_from(first().unwrap_or(0)).unwrap_or(0),
            "voluntary_ctxt_switches" => s.voluntary_switches = first().unwrap_or(0),
            "nonvoluntary_ctxt_switches" => s.involuntary_switches = first().unwrap_or(0),
            "VmRSS" => s.rss_kib = first().unwrap_or(0),
            _ => {}
        }
    }
    saw_uid.then_some(s)
}

pub fn status(pid: u32) -> Option<Status> {
    status_checked(pid).ok()
}

/// `/proc/<pid>/status`, or why not.
pub fn status_checked(pid: u32) -> Result<Status, ProcError> {
    parse_status(&read(&format!("/proc/{pid}/status"))?).ok_or(ProcError::Other(0))
}

/// Most bytes read from `/proc/<pid>/cmdline` (argv[0] and, opt-in, the
/// arguments: any longer is cut, as attribute values are anyway).
pub const MAX_CMDLINE_BYTES: u64 = 64 << 10;
/// Most bytes read from `/proc/<pid>/environ` (an agent controls its size;
/// the kernel allows megabytes).
pub const MAX_ENVIRON_BYTES: u64 = 1 << 20;

/// At most `max` bytes of a file.
fn read_bounded(path: &str, max: u64) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut raw = Vec::new();
    fs::File::open(path).ok()?.take(max).read_to_end(&mut raw).ok()?;
    Some(raw)
}

/// `argv` from `/proc/<pid>/cmdline` (NUL-separated), at most
/// [`MAX_CMDLINE_BYTES`] of it.
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = read_bounded(&format!("/proc/{pid}/cmdline"), MAX_CMDLINE_BYTES)?;
    let args: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    (!args.is_empty()).then_some(args)
}

/// The environment variables `/proc/<pid>/environ` holds that `wanted`
/// accepts (readable for our own user's processes, or as root), from its
/// first [`MAX_ENVIRON_BYTES`].
pub fn environ(pid: u32, wanted: impl Fn(&str) -> bool) -> Vec<(String, String)> {
    let Some(raw) = read_bounded(&format!("/proc/{pid}/environ"), MAX_ENVIRON_BYTES) else {
        return Vec::new();
    };
    raw.split(|&b| b == 0)
        .filter_map(|kv| {
            let kv = std::str::from_utf8(kv).ok()?;
            let (k, v) = kv.split_once('=')?;
            wanted(k).then(|| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// Target of `/proc/<pid>/exe`.
pub fn exe(pid: u32) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/exe")).ok().map(|p| p.to_string_lossy().into_owned())
}

/// `/proc/<pid>/comm` (the kernel's 15-character command name).
pub fn comm(pid: u32) -> Option<String> {
    Some(fs::read_to_string(format!("/proc/{pid}/comm")).ok()?.trim_end().to_owned())
}

/// `/proc/<pid>/cgroup` text.
pub fn cgroup(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()
}

/// One thread: its state, CPU ticks and wait channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thread {
    pub tid: u32,
    pub state: char,
    pub cpu_ticks: u64,
    pub wchan: Option<String>,
}

/// Every thread of a process (`/proc/<pid>/task`); a thread that exits
/// while it is read is left out.
pub fn threads(pid: u32) -> Result<Vec<Thread>, ProcError> {
    let dir = fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| ProcError::of(&e))?;
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let path = entry.path();
        let Some(st) = fs::read_to_string(path.join("stat")).ok().and_then(|t| parse_stat(&t)) else {
            continue;
        };
        let wchan = fs::read_to_string(path.join("wchan")).ok().filter(|w| !w.is_empty() && w != "0");
        let tid = entry.file_name().to_str().and_then(|t| t.parse().ok()).unwrap_or(0);
        // A thread held for a moment by our own evidence capture is asleep
        // as far as a diagnosis is concerned, not stopped by a debugger.
        let ours = st.state == 't'
            && fs::read_to_string(path.join("status"))
                .ok()
                .and_then(|s| parse_status(&s))
                .is_some_and(|s| s.tracer_pid != 0 && traced_by_us(s.tracer_pid));
        let state = if ours { 'S' } else { st.state };
        out.push(Thread { tid, state, cpu_ticks: st.cpu_ticks, wchan });
    }
    if out.is_empty() { Err(ProcError::Gone) } else { Ok(out) }
}

/// What recovery checks right before spawning: the start time (pid
/// recycled?) and whether the process is stopped or traced — or why it
/// cannot be said (recovery acts on "gone" only once [`varta_pipeline::procfs::verified_gone`]
/// confirms it). Our own evidence capture (stacks: one thread stopped briefly under a
/// thread of ours) is not a debugger: it never makes recovery refuse.
pub fn process_facts(pid: u32) -> Result<varta_processor::recovery::ProcessFacts, ProcError> {
    let st = stat_checked(pid)?;
    let tracer = status_checked(pid)?.tracer_pid;
    let ours = tracer != 0 && traced_by_us(tracer);
    Ok(varta_processor::recovery::ProcessFacts {
        start_time: st.start_time,
        stopped: st.state == 'T' || (st.state == 't' && !ours) || (tracer != 0 && !ours),
    })
}

/// Whether `tracer` (a `TracerPid`: the tracing *thread*) is one of this
/// process's threads — the evidence capture.
pub fn traced_by_us(tracer: u32) -> bool {
    std::path::Path::new(&format!("/proc/self/task/{tracer}")).exists()
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 when unknown).
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// Boot time, seconds since the epoch (`btime` of `/proc/stat`).
pub fn boot_time() -> Option<u64> {
    let text = fs::read_to_string("/proc/stat").ok()?;
    text.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

/// The user name of `uid` from `/etc/passwd`, if listed.
pub fn user_name(uid: u32) -> Option<String> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id: u32 = f.nth(1)?.parse().ok()?;
        (id == uid).then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process one of our threads holds stopped (as the evidence capture
    /// does for a moment) is neither `stopped` for recovery nor for a
    /// diagnosis; the same stop by a signal is.
    #[test]
    fn our_own_brief_attachment_is_not_a_stop() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
        let pid = libc::pid_t::try_from(child.id()).expect("pid");
        let mut status = 0;
        // SAFETY: ptrace(2) and waitpid(2) on our own child, from this
        // thread (the tracer); it is detached before the checks end.
        unsafe {
            assert_eq!(libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0), 0, "seize (tests run as root)");
            assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0), 0);
            assert_eq!(libc::waitpid(pid, &mut status, libc::__WALL), pid);
        }
        let held = stat(child.id()).expect("stat").state;
        let facts = process_facts(child.id()).expect("facts");
        let sample = crate::diagnose::sample(child.id()).expect("sample");
        // SAFETY: as above.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0) };
        assert_eq!(held, 't', "held in a ptrace stop");
        assert!(!facts.stopped, "recovery must not see our capture as a debugger");
        assert_ne!(sample.state, 't');
        assert_eq!(sample.tracer_pid, 0);
        assert!(sample.threads.iter().all(|t| t.state != 't'), "{:?}", sample.threads);
        // A real stop still is one.
        // SAFETY: SIGSTOP to our own child.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while stat(child.id()).is_some_and(|s| s.state != 'T') {
            assert!(std::time::Instant::now() < deadline, "SIGSTOP not seen");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(process_facts(child.id()).expect("facts").stopped);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The shared known answer, with utime 11, stime 22 and 3 threads.
    const STAT: &str = "4242 (evil) name) (x) S 1 4242 4242 0 -1 4194560 100 0 0 0 11 22 0 0 20 0 3 0 \
                        987654 12345 67 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn stat_fields_count_after_the_last_paren() {
        let s = parse_stat(STAT).expect("parses");
        assert_eq!(
            s,
            Stat { state: 'S', ppid: 1, cpu_ticks: 33, threads: 3, start_time: 987654, rss_pages: 67 }
        );
        assert_eq!(parse_stat("1 (a) S"), None);
    }

    #[test]
    fn status_lines() {
        let text = "Name:\tx\nTracerPid:\t77\nUid:\t1000\t1000\t1000\t1000\nVmRSS:\t  1234 kB\n\
                    voluntary_ctxt_switches:\t5\nnonvoluntary_ctxt_switches:\t6\n";
        let s = parse_status(text).expect("parses");
        assert_eq!(
            s,
            Status {
                uid: 1000,
                tracer_pid: 77,
                voluntary_switches: 5,
                involuntary_switches: 6,
                rss_kib: 1234
            }
        );
        assert_eq!(parse_status("Name:\tx\n"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id();
        let st = stat(me).expect("own stat");
        assert!("RSD".contains(st.state), "state {}", st.state);
        assert!(st.threads >= 1);
        assert_eq!(status(me).map(|s| s.uid), Some(varta_pipeline_uid()));
        assert!(threads(me).is_ok_and(|t| t.len() as u32 >= 1));
        assert!(cmdline(me).is_some_and(|a| !a.is_empty()));
        assert!(exe(me).is_some_and(|e| e.starts_with('/')));
    }

    fn varta_pipeline_uid() -> u32 {
        // SAFETY: getuid has no preconditions.
        unsafe { libc::getuid() }
    }
}
