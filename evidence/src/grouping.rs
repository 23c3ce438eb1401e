//! Groups threads by what they wait on, from the zero-stop reading alone:
//! the same futex word, the same file descriptor target (resolved only with
//! `readlink` on `/proc/<pid>/fd/N`: never stat or open, which could hang
//! on a dead network mount or block on a FIFO), the same epoll fd, sleeps,
//! running threads, and the rest by system call or `wchan`. Largest group
//! first; ties keep a stable order.

use std::collections::{BTreeMap, HashMap};

use varta_pipeline::procfs;

use crate::evidence::{ThreadEvidence, WaitGroup, WaitKind};
use crate::sanitize::{MAX_CHARS, sanitize};
use crate::syscall::{self, SyscallState, WaitClass};

/// What two threads must share to be in one group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct WaitKey {
    pub kind: WaitKind,
    pub key: String,
    pub futex: Option<u64>,
}

/// Resolves fd numbers to their `readlink` targets, once per capture.
pub(crate) trait FdTargets {
    fn target(&mut self, fd: u64) -> String;
}

/// `readlink /proc/<pid>/fd/N`, cached for one capture.
pub(crate) struct ProcFdTargets {
    pid: u32,
    seen: HashMap<u64, String>,
}

impl ProcFdTargets {
    pub(crate) fn new(pid: u32) -> ProcFdTargets {
        ProcFdTargets { pid, seen: HashMap::new() }
    }
}

impl FdTargets for ProcFdTargets {
    fn target(&mut self, fd: u64) -> String {
        let pid = self.pid;
        self.seen
            .entry(fd)
            .or_insert_with(|| match procfs::read_link(&format!("/proc/{pid}/fd/{fd}")) {
                Ok(t) => sanitize(&t, MAX_CHARS),
                Err(e) => format!("fd {fd} ({})", e.label()),
            })
            .clone()
    }
}

/// The wait key of one thread.
pub(crate) fn wait_key(t: &ThreadEvidence, fds: &mut dyn FdTargets) -> WaitKey {
    let plain = |kind| WaitKey { kind, key: String::new(), futex: None };
    let other = |key: &str| WaitKey { kind: WaitKind::Other, key: key.to_owned(), futex: None };
    match t.syscall {
        Some(SyscallState::Blocked { nr, args, .. }) => match syscall::class(nr) {
            WaitClass::Futex => {
                WaitKey { kind: WaitKind::Futex, key: format!("{:#x}", args[0]), futex: Some(args[0]) }
            }
            WaitClass::Fd => WaitKey { kind: WaitKind::Fd, key: fds.target(args[0]), futex: None },
            WaitClass::Epoll => WaitKey {
                kind: WaitKind::Poll,
                key: format!("{} fd {}", syscall::name(nr), args[0]),
                futex: None,
            },
            WaitClass::Poll => {
                WaitKey { kind: WaitKind::Poll, key: syscall::name(nr).to_owned(), futex: None }
            }
            WaitClass::Sleep => plain(WaitKind::Sleep),
            WaitClass::Child => plain(WaitKind::Child),
            WaitClass::Other => match syscall::name(nr) {
                "?" => other(&format!("syscall {nr}")),
                name => other(name),
            },
        },
        Some(SyscallState::Running) => plain(WaitKind::Running),
        _ if t.state == 'R' => plain(WaitKind::Running),
        // No system call to go by: the wchan word (what the `syscall` file
        // would have said is unknown, e.g. it was not readable).
        _ => match t.wchan.as_deref() {
            Some(w) => match syscall::class_of_wchan(w) {
                Some(WaitClass::Sleep) => plain(WaitKind::Sleep),
                Some(WaitClass::Child) => plain(WaitKind::Child),
                Some(WaitClass::Futex) => {
                    WaitKey { kind: WaitKind::Futex, key: format!("wchan {w}"), futex: None }
                }
                Some(WaitClass::Epoll | WaitClass::Poll) => {
                    WaitKey { kind: WaitKind::Poll, key: format!("wchan {w}"), futex: None }
                }
                _ => other(&format!("wchan {w}")),
            },
            None => other(&format!("state {}", t.state)),
        },
    }
}

/// Groups `threads`, largest group first.
pub(crate) fn group(threads: &[ThreadEvidence], fds: &mut dyn FdTargets) -> Vec<WaitGroup> {
    let mut by_key: BTreeMap<WaitKey, (Vec<u32>, Vec<String>)> = BTreeMap::new();
    for t in threads {
        let entry = by_key.entry(wait_key(t, fds)).or_default();
        entry.0.push(t.tid);
        entry.1.push(t.name.clone());
    }
    let mut groups: Vec<WaitGroup> = by_key
        .into_iter()
        .map(|(k, (tids, names))| WaitGroup {
            kind: k.kind,
            key: k.key,
            futex: k.futex,
            tids,
            names,
            holder: None,
            common_frames: Vec::new(),
        })
        .collect();
    groups.sort_by_key(|g| std::cmp::Reverse(g.tids.len()));
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FakeFds;
    impl FdTargets for FakeFds {
        fn target(&mut self, fd: u64) -> String {
            if fd == 3 { "pipe:[123]".to_owned() } else { format!("socket:[{fd}]") }
        }
    }

    fn t(tid: u32, state: char, syscall: Option<SyscallState>, wchan: Option<&str>) -> ThreadEvidence {
        ThreadEvidence {
            tid,
            name: format!("t{tid}"),
            state,
            wchan: wchan.map(str::to_owned),
            syscall,
            kernel_stack: vec![],
            stack: None,
            holder: false,
        }
    }

    fn blocked(nr: u64, a0: u64) -> Option<SyscallState> {
        Some(SyscallState::Blocked { nr, args: [a0, 0, 0, 0, 0, 0], sp: 0, pc: 0 })
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn threads_group_by_what_they_wait_on() {
        let threads = vec![
            t(1, 'S', blocked(202, 0x5000), None),
            t(2, 'S', blocked(202, 0x5000), None),
            t(3, 'S', blocked(202, 0x5000), None),
            t(4, 'S', blocked(202, 0x6000), None),
            t(5, 'S', blocked(0, 3), None),
            t(6, 'S', blocked(0, 3), None),
            t(7, 'S', blocked(230, 0), None),
            t(8, 'S', blocked(35, 0), None),
            t(9, 'S', blocked(232, 7), None),
            t(10, 'R', Some(SyscallState::Running), None),
            t(11, 'S', None, Some("hrtimer_nanosleep")),
            t(12, 'D', None, Some("nfs_wait_bit")),
            t(13, 'S', blocked(9999, 0), None),
        ];
        let groups = group(&threads, &mut FakeFds);
        let find =
            |kind, key: &str| groups.iter().find(|g| g.kind == kind && g.key == key).map(|g| g.tids.clone());
        assert_eq!(groups[0].tids, vec![1, 2, 3]);
        assert_eq!(groups[0].futex, Some(0x5000));
        assert_eq!(find(WaitKind::Futex, "0x6000"), Some(vec![4]));
        assert_eq!(find(WaitKind::Fd, "pipe:[123]"), Some(vec![5, 6]));
        assert_eq!(find(WaitKind::Sleep, ""), Some(vec![7, 8, 11]));
        assert_eq!(find(WaitKind::Poll, "epoll_wait fd 7"), Some(vec![9]));
        assert_eq!(find(WaitKind::Running, ""), Some(vec![10]));
        assert_eq!(find(WaitKind::Other, "wchan nfs_wait_bit"), Some(vec![12]));
        assert_eq!(find(WaitKind::Other, "syscall 9999"), Some(vec![13]));
        assert!(groups.windows(2).all(|w| w[0].tids.len() >= w[1].tids.len()));
    }

    #[test]
    fn fd_targets_come_from_readlink_only() {
        let f = std::fs::File::open("/proc/self/stat").expect("open");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        let mut fds = ProcFdTargets::new(std::process::id());
        assert!(fds.target(u64::try_from(fd).expect("fd")).ends_with("/stat"));
        assert_eq!(fds.target(999_999), "fd 999999 (gone)");
    }
}
