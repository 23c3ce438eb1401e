//! Sockets handed over by systemd (socket activation, `LISTEN_FDS`): a
//! Unix datagram socket that systemd bound (a `varta-collector.socket`
//! with `ListenDatagram=`) outlives every restart of the collector, so
//! agents never find the path gone or refused while it restarts.
//!
//! Promises:
//! * **Taken once, checked.** [`adopt_from_env`] reads `LISTEN_PID`,
//!   `LISTEN_FDS` (and `LISTEN_FDNAMES`) once at start, only when
//!   `LISTEN_PID` is this process, marks every passed descriptor
//!   close-on-exec (recovery commands must not inherit it), keeps the Unix
//!   datagram sockets bound to a path (others are closed, logged) and
//!   removes the variables, so children never believe they were passed
//!   sockets.
//! * **Matched by path.** A `vlp` UDS receiver whose `path` is a passed
//!   socket's takes it instead of binding: it never unlinks or binds the
//!   path, at start, stop or reload (a receiver closed by a reload gives
//!   the socket back for the next one).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Passed sockets not taken by a receiver (or given back), by path.
static PASSED: Mutex<Vec<(PathBuf, UnixDatagram)>> = Mutex::new(Vec::new());

/// The first descriptor systemd passes.
const SD_LISTEN_FDS_START: i32 = 3;

/// Reads and clears the socket-activation variables (see the module
/// docs); how many sockets were kept. Call once, early, before threads.
pub fn adopt_from_env() -> usize {
    let pid = std::env::var("LISTEN_PID").ok().and_then(|v| v.parse::<u32>().ok());
    let count = std::env::var("LISTEN_FDS").ok().and_then(|v| v.parse::<i32>().ok()).unwrap_or(0);
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: called once at start, before any thread is spawned
        // (see the caller), so nothing reads the environment meanwhile.
        unsafe { std::env::remove_var(var) };
    }
    if pid != Some(std::process::id()) || count <= 0 {
        return 0;
    }
    let mut names = names.split(':');
    let mut kept = 0;
    let mut passed = PASSED.lock().unwrap_or_else(|p| p.into_inner());
    for fd in SD_LISTEN_FDS_START..SD_LISTEN_FDS_START.saturating_add(count.min(1024)) {
        let name = names.next().unwrap_or("");
        // SAFETY: systemd passed us descriptors 3..3+LISTEN_FDS; each is
        // owned from here on (closed if not kept).
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: fcntl(2) on a descriptor we own.
        unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        match datagram_path(&owned) {
            Some(path) => {
                tracing::info!(fd, name, path = %path.display(), "socket passed by systemd");
                passed.push((path, UnixDatagram::from(owned)));
                kept += 1;
            }
            None => tracing::warn!(
                fd,
                name,
                "a passed descriptor is not a Unix datagram socket with a path; closed"
            ),
        }
    }
    kept
}

/// The path a Unix datagram socket is bound to.
fn datagram_path(fd: &OwnedFd) -> Option<PathBuf> {
    let raw = fd.as_raw_fd();
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt(2) writes at most `len` bytes into `kind`.
    let ok =
        unsafe { libc::getsockopt(raw, libc::SOL_SOCKET, libc::SO_TYPE, (&raw mut kind).cast(), &mut len) };
    if ok != 0 || kind != libc::SOCK_DGRAM {
        return None;
    }
    // SAFETY: a zeroed sockaddr_un is a valid value; getsockname(2) writes
    // at most `len` bytes into it.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    let ok = unsafe { libc::getsockname(raw, (&raw mut addr).cast(), &mut len) };
    if ok != 0 || i32::from(addr.sun_family) != libc::AF_UNIX {
        return None;
    }
    let bytes: Vec<u8> = addr.sun_path.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    if bytes.is_empty() {
        return None;
    }
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(&bytes)))
}

/// Takes the passed socket bound to `path`, if there is one.
pub(crate) fn take(path: &Path) -> Option<UnixDatagram> {
    let mut passed = PASSED.lock().unwrap_or_else(|p| p.into_inner());
    let at = passed.iter().position(|(p, _)| p == path)?;
    Some(passed.swap_remove(at).1)
}

/// Gives a passed socket back (its receiver was closed): the next
/// receiver on that path takes it again.
pub(crate) fn give_back(path: PathBuf, socket: UnixDatagram) {
    PASSED.lock().unwrap_or_else(|p| p.into_inner()).push((path, socket));
}
