//! Groups threads by what they wait on, from the zero-stop reading alone:
//! the same futex word, the same file descriptor target (resolved only with
//! `readlink` on `/proc/<pid>/fd/N`: never stat or open, which could hang
//! on a dead network mount or block on a FIFO), the same epoll fd (named
//! with what it watches, from its `fdinfo`), sleeps, running threads, and
//! the rest by system call or `wchan`. Largest group first; ties keep a
//! stable order.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use varta_pipeline::procfs;

use crate::evidence::{ThreadEvidence, WaitGroup, WaitKind};
use crate::memory;
use crate::sanitize::{MAX_CHARS, sanitize};
use crate::sockets::Sockets;
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

    /// What the epoll instance `epfd` watches (`pipe:[9], socket:[12]
    /// (+3 more)`, or `nothing`); `None` when that cannot be read.
    fn watched(&mut self, _epfd: u64) -> Option<String> {
        None
    }

    /// What a poll/select system call `nr` with `args` waits on, from its
    /// fd array or sets in the target's memory; `None` when unreadable.
    fn polled(&mut self, _nr: u64, _args: &[u64; 6]) -> Option<String> {
        None
    }
}

/// At most this many `pollfd`s are read (8 bytes each); the rest counted.
const POLLFDS_READ: u64 = 64;
/// `select`'s sets cover at most FD_SETSIZE descriptors.
const FD_SETSIZE: u64 = 1024;

/// Watched fds named per epoll instance; the rest are counted.
const WATCHED_SHOWN: usize = 4;
/// An `fdinfo` file read at most this far (~800 watched fds): the agent
/// decides how many it watches.
const FDINFO_BYTES: u64 = 64 * 1024;

/// `readlink /proc/<pid>/fd/N` (a socket described from the process's
/// network tables), cached for one capture; an epoll instance's watch list
/// from `/proc/<pid>/fdinfo/N` (its `tfd:` lines).
pub(crate) struct ProcFdTargets {
    pid: u32,
    seen: HashMap<u64, String>,
    watching: HashMap<u64, Option<String>>,
    sockets: Sockets,
}

impl ProcFdTargets {
    pub(crate) fn new(pid: u32) -> ProcFdTargets {
        ProcFdTargets { pid, seen: HashMap::new(), watching: HashMap::new(), sockets: Sockets::new(pid) }
    }
}

/// The fd numbers an epoll `fdinfo` text lists (`tfd:  5 events: …`).
fn epoll_targets(fdinfo: &str) -> Vec<u64> {
    fdinfo.lines().filter_map(|l| l.strip_prefix("tfd:")?.split_whitespace().next()?.parse().ok()).collect()
}

impl FdTargets for ProcFdTargets {
    fn target(&mut self, fd: u64) -> String {
        if let Some(known) = self.seen.get(&fd) {
            return known.clone();
        }
        let named = match procfs::read_link(&format!("/proc/{}/fd/{fd}", self.pid)) {
            Ok(t) => {
                let inode = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']'));
                match inode.and_then(|i| i.parse().ok()).and_then(|i| self.sockets.describe(i)) {
                    Some(what) => sanitize(&format!("{t} ({what})"), MAX_CHARS),
                    None => sanitize(&t, MAX_CHARS),
                }
            }
            Err(e) => format!("fd {fd} ({})", e.label()),
        };
        self.seen.insert(fd, named.clone());
        named
    }

    fn watched(&mut self, epfd: u64) -> Option<String> {
        if let Some(known) = self.watching.get(&epfd) {
            return known.clone();
        }
        let mut text = String::new();
        let read = std::fs::File::open(format!("/proc/{}/fdinfo/{epfd}", self.pid))
            .and_then(|f| f.take(FDINFO_BYTES).read_to_string(&mut text));
        let named = read.ok().map(|_| {
            let fds = epoll_targets(&text);
            let cut = text.len() as u64 >= FDINFO_BYTES;
            let total = fds.len() as u64;
            self.name_list(&fds, total, cut)
        });
        self.watching.insert(epfd, named.clone());
        named
    }

    fn polled(&mut self, nr: u64, args: &[u64; 6]) -> Option<String> {
        let (fds, total) = match syscall::name(nr) {
            "poll" | "ppoll" => {
                let mut buf = vec![0u8; 8 * usize::try_from(args[1].min(POLLFDS_READ)).ok()?];
                let got = memory::read(self.pid, args[0], &mut buf).ok()?;
                let fds = pollfd_targets(buf.get(..got)?);
                // Entries poll ignores (a negative fd) are not "more".
                let ignored = (got / 8 - fds.len()) as u64;
                let total = args[1].saturating_sub(ignored);
                (fds, total)
            }
            "select" | "pselect6" if cfg!(target_endian = "little") => {
                let nfds = args[0].min(FD_SETSIZE);
                let mut fds = Vec::new();
                for &set in args.get(1..4)?.iter().filter(|&&a| a != 0) {
                    let mut bits = vec![0u8; usize::try_from(nfds.div_ceil(8)).ok()?];
                    if memory::read(self.pid, set, &mut bits).ok()? == bits.len() {
                        fds.extend(fd_set_members(&bits, nfds));
                    }
                }
                fds.sort_unstable();
                fds.dedup();
                let total = fds.len() as u64;
                (fds, total)
            }
            _ => return None,
        };
        Some(self.name_list(&fds, total, false))
    }
}

impl ProcFdTargets {
    /// `pipe:[9], socket:[12] (+3 more)` for `fds` of `total` (more may
    /// exist if `cut`): targets named while the list stays within one
    /// target's cap, and at most [`WATCHED_SHOWN`]; `nothing` for none.
    fn name_list(&mut self, fds: &[u64], total: u64, cut: bool) -> String {
        let (mut s, mut named) = (String::new(), 0u64);
        for &fd in fds.iter().take(WATCHED_SHOWN) {
            let target = self.target(fd);
            if named > 0 {
                if s.chars().count() + 2 + target.chars().count() > MAX_CHARS {
                    break;
                }
                s.push_str(", ");
            }
            s.push_str(&target);
            named += 1;
        }
        let more = total.saturating_sub(named);
        if total == 0 && !cut {
            s.push_str("nothing");
        }
        if more > 0 || cut {
            s.push_str(&format!(" (+{more}{} more)", if cut { " or" } else { "" }));
        }
        s
    }
}

/// The fds of an array of `struct pollfd { int fd; short events, revents; }`
/// (a negative fd is ignored by poll, and here).
fn pollfd_targets(raw: &[u8]) -> Vec<u64> {
    raw.chunks_exact(8)
        .filter_map(|p| u64::try_from(i32::from_ne_bytes([p[0], p[1], p[2], p[3]])).ok())
        .collect()
}

/// The members below `nfds` of a `fd_set` bitmap (bit `fd % 8` of byte
/// `fd / 8` on little-endian, as the kernel's `unsigned long` words are).
fn fd_set_members(bits: &[u8], nfds: u64) -> Vec<u64> {
    (0..nfds)
        .filter(|&fd| {
            let (byte, bit) = (usize::try_from(fd / 8).unwrap_or(usize::MAX), fd % 8);
            bits.get(byte).is_some_and(|b| b & (1 << bit) != 0)
        })
        .collect()
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
            WaitClass::Epoll => {
                let key = format!("{} fd {}", syscall::name(nr), args[0]);
                let key = match fds.watched(args[0]) {
                    Some(what) => format!("{key} watching {what}"),
                    None => key,
                };
                WaitKey { kind: WaitKind::Poll, key, futex: None }
            }
            WaitClass::Poll => {
                let key = match fds.polled(nr, &args) {
                    Some(what) => format!("{} on {what}", syscall::name(nr)),
                    None => syscall::name(nr).to_owned(),
                };
                WaitKey { kind: WaitKind::Poll, key, futex: None }
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

    #[test]
    fn poll_arrays_and_select_sets_list_their_fds() {
        let mut raw = Vec::new();
        for fd in [3i32, -1, 12] {
            raw.extend_from_slice(&fd.to_ne_bytes());
            raw.extend_from_slice(&[1, 0, 0, 0]); // events POLLIN, revents 0
        }
        assert_eq!(pollfd_targets(&raw), vec![3, 12]);
        assert_eq!(pollfd_targets(&raw[..12]), vec![3], "a partial pollfd is not read");
        let mut set = [0u8; 128];
        set[0] = 0b0000_1001; // fds 0 and 3
        set[8] = 0b0000_0010; // fd 65
        assert_eq!(fd_set_members(&set, 1024), vec![0, 3, 65]);
        assert_eq!(fd_set_members(&set, 64), vec![0, 3], "nfds bounds the members");
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn a_poll_array_is_read_from_memory_and_its_ignored_entries_are_not_more() {
        let f = std::fs::File::open("/proc/self/stat").expect("open");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        let pollfds = [
            libc::pollfd { fd, events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: -1, events: 0, revents: 0 },
        ];
        let addr = pollfds.as_ptr() as u64;
        let mut fds = ProcFdTargets::new(std::process::id());
        let on = fds.polled(7, &[addr, 2, 0, 0, 0, 0]).expect("our own memory reads");
        assert!(on.ends_with("/stat") && !on.contains("more"), "{on}");
        let on = fds.polled(7, &[addr, 0, 0, 0, 0, 0]).expect("an empty array");
        assert_eq!(on, "nothing");
        // A select with no sets is a sleep.
        assert_eq!(fds.polled(23, &[0, 0, 0, 0, 0, 0]).as_deref(), Some("nothing"));
    }

    #[test]
    fn an_epoll_instance_is_named_by_what_it_watches() {
        let fdinfo = "pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t1057\n\
                      tfd:        5 events:       19 data:                5  pos:0 ino:1a sdev:d\n\
                      tfd:       12 events:       19 data:                c  pos:0 ino:2b sdev:d\n";
        assert_eq!(epoll_targets(fdinfo), vec![5, 12]);

        // A real epoll instance of ours watching a pipe, then nothing.
        let mut pipe = [0; 2];
        // SAFETY: pipe writes two fds into our local array; epoll_create1
        // and epoll_ctl take integers and a pointer to our local event.
        let (ep, rc) = unsafe {
            assert_eq!(libc::pipe(pipe.as_mut_ptr()), 0);
            let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: 0 };
            (ep, libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, pipe[0], &mut ev))
        };
        assert!(ep >= 0 && rc == 0);
        let epfd = u64::try_from(ep).expect("fd");
        let watched = ProcFdTargets::new(std::process::id()).watched(epfd).expect("readable");
        assert!(watched.starts_with("pipe:[") && !watched.contains(','), "{watched}");
        // Six watched: four named, two counted.
        let mut more = [0; 10];
        for pair in more.chunks_mut(2) {
            // SAFETY: as above, with locals of this test.
            unsafe {
                assert_eq!(libc::pipe(pair.as_mut_ptr()), 0);
                let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: 0 };
                assert_eq!(libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, pair[0], &mut ev), 0);
            }
        }
        let watched = ProcFdTargets::new(std::process::id()).watched(epfd).expect("readable");
        assert_eq!(watched.matches("pipe:[").count(), 4, "{watched}");
        assert!(watched.ends_with(" (+2 more)"), "{watched}");
        for pair in more.chunks(2) {
            // SAFETY: unregisters and closes this test's pipes.
            unsafe {
                libc::epoll_ctl(ep, libc::EPOLL_CTL_DEL, pair[0], std::ptr::null_mut());
                libc::close(pair[0]);
                libc::close(pair[1]);
            }
        }
        // SAFETY: removes the pipe from our own epoll instance.
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_DEL, pipe[0], std::ptr::null_mut()) };
        assert_eq!(ProcFdTargets::new(std::process::id()).watched(epfd).as_deref(), Some("nothing"));
        assert_eq!(ProcFdTargets::new(std::process::id()).watched(999_999), None);
        // SAFETY: closes the three fds this test opened.
        unsafe {
            libc::close(ep);
            libc::close(pipe[0]);
            libc::close(pipe[1]);
        }
    }
}
