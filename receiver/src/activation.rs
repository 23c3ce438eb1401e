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
//! * **Kept in the file-descriptor store.** Under a unit with
//!   `FileDescriptorStoreMax=` (systemd then sets `$FDSTORE`), a UDS socket
//!   the collector bound itself is handed to systemd once
//!   (`FDSTORE=1` over `$NOTIFY_SOCKET`, with the descriptor attached) and
//!   from then on treated as passed: never unlinked. systemd hands it to
//!   the next start as `LISTEN_FDS`, so a restart neither unlinks nor
//!   rebinds the path even without a `.socket` unit.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Passed sockets not taken by a receiver (or given back), by path.
static PASSED: Mutex<Vec<(PathBuf, UnixDatagram)>> = Mutex::new(Vec::new());

/// The first descriptor systemd passes.
const SD_LISTEN_FDS_START: i32 = 3;

/// The name stored sockets are given (`FDNAME=`): systemd passes it back
/// in `LISTEN_FDNAMES`; sockets are matched by path, not by name.
const FD_NAME: &str = "varta-uds";

/// Where to store sockets (`$NOTIFY_SOCKET`), when `$FDSTORE` allows it.
static STORE: Mutex<Option<std::os::unix::net::SocketAddr>> = Mutex::new(None);

/// Reads `$FDSTORE` (the unit's `FileDescriptorStoreMax=`, set by systemd
/// ≥ 254) and `$NOTIFY_SOCKET`: whether sockets can be stored.
fn read_store_env() {
    use std::os::linux::net::SocketAddrExt;
    let allowed = std::env::var("FDSTORE").ok().and_then(|v| v.parse::<u32>().ok()).is_some_and(|n| n > 0);
    let addr = std::env::var("NOTIFY_SOCKET").ok().filter(|_| allowed).and_then(|path| {
        match path.strip_prefix('@') {
            Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok(),
            None => std::os::unix::net::SocketAddr::from_pathname(&path).ok(),
        }
    });
    *STORE.lock().unwrap_or_else(|p| p.into_inner()) = addr;
}

/// Hands `socket` to systemd's file-descriptor store, if the unit has
/// one (see the module docs). Whether systemd now holds it.
pub(crate) fn store(path: &Path, socket: &UnixDatagram) -> bool {
    let Some(addr) = STORE.lock().unwrap_or_else(|p| p.into_inner()).clone() else { return false };
    let message = format!("FDSTORE=1\nFDNAME={FD_NAME}");
    let sent =
        UnixDatagram::unbound().and_then(|notify| send_with_fd(&notify, &addr, message.as_bytes(), socket));
    match sent {
        Ok(()) => {
            tracing::info!(path = %path.display(), "socket kept in systemd's file-descriptor store: the next start takes it, the path is never unlinked here");
            true
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), "could not store the socket with systemd (FDSTORE=1), it is unlinked at the stop as usual: {e}");
            false
        }
    }
}

/// `sendmsg(2)` of `message` to `addr` with `fd`'s descriptor attached
/// (SCM_RIGHTS), as `sd_pid_notify_with_fds` does it.
fn send_with_fd(
    notify: &UnixDatagram,
    addr: &std::os::unix::net::SocketAddr,
    message: &[u8],
    fd: &impl AsRawFd,
) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    // SAFETY: a zeroed sockaddr_un is a valid value; we fill it below.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let (name, offset) = match (addr.as_pathname(), addr.as_abstract_name()) {
        (Some(p), _) => (p.as_os_str().as_bytes(), 0),
        (None, Some(n)) => (n, 1),
        _ => return Err(std::io::Error::other("NOTIFY_SOCKET is an unnamed socket")),
    };
    if offset + name.len() >= sun.sun_path.len() {
        return Err(std::io::Error::other("NOTIFY_SOCKET path too long"));
    }
    for (dst, src) in sun.sun_path[offset..].iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    let sun_len = std::mem::size_of::<libc::sa_family_t>() + offset + name.len() + usize::from(offset == 0);
    let mut iov = libc::iovec { iov_base: message.as_ptr() as *mut libc::c_void, iov_len: message.len() };
    // Room for one descriptor, aligned as cmsghdr wants.
    let mut control = [0u64; 4];
    // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic.
    let (space, len) = unsafe {
        (
            libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32),
            libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32),
        )
    };
    // SAFETY: a zeroed msghdr is valid; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&raw mut sun).cast();
    msg.msg_namelen = sun_len as libc::socklen_t;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as usize;
    // SAFETY: msg_control has `space` bytes (≤ 32), so the first header
    // and its data fit.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = len as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd.as_raw_fd());
    }
    // SAFETY: sendmsg(2) reads the structures set up above.
    let sent = unsafe { libc::sendmsg(notify.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if sent < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// Reads and clears the socket-activation variables (see the module
/// docs); how many sockets were kept. Call once, early, before threads.
pub fn adopt_from_env() -> usize {
    read_store_env();
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
