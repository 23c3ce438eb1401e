//! Batched datagram receive (`recvmmsg`) into preallocated buffers, and the
//! few other socket calls the receivers need. This is the crate's libc edge:
//! everything `unsafe` lives here (plus one `geteuid` in `keys`).
//!
//! Promises:
//! * One [`RecvBatch::recv`] call reads at most [`BATCH_CAPACITY`] datagrams:
//!   it blocks until the first one arrives (or the socket is shut down), then takes
//!   whatever else is already queued, in kernel queue order.
//! * No allocation and no per-call setup: datagram buffers, message
//!   headers, iovecs, address and control buffers are allocated and wired
//!   together once; a round only resets the lengths the kernel overwrites.
//! * The true length of every datagram is reported (`MSG_TRUNC`), so a
//!   datagram longer than the buffer is known to be truncated.
//! * File descriptors smuggled in with `SCM_RIGHTS` are closed at once.

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;

use varta_proto::BATCH_CAPACITY;

/// Bytes per datagram buffer: larger than the largest VLP frame (64 bytes),
/// so an oversized datagram is visible as such.
pub const DATAGRAM_BUF: usize = 80;
/// Control buffer per message, in u64 words (aligned for `cmsghdr`);
/// room for SCM_CREDENTIALS plus a few descriptors we will close.
const CMSG_WORDS: usize = 8;

/// Kernel-attested sender of a Unix datagram (SCM_CREDENTIALS), translated
/// into the receiver's pid and user namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

/// What to collect alongside each datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ancillary {
    /// Unix sockets: SCM_CREDENTIALS.
    Credentials,
    /// IP sockets: the source address.
    SourceAddress,
}

/// One received datagram.
#[derive(Debug, Clone, Copy)]
pub struct Datagram<'a> {
    /// The received bytes (at most [`DATAGRAM_BUF`]).
    pub bytes: &'a [u8],
    /// The datagram's real length on the wire (may exceed `bytes.len()`).
    pub len: usize,
    pub credentials: Option<Credentials>,
    pub source: Option<IpAddr>,
}

impl Datagram<'_> {
    /// Longer than the receive buffer: the kernel cut it.
    pub fn truncated(&self) -> bool {
        self.len > DATAGRAM_BUF
    }
}

/// The `recvmmsg` argument arrays, boxed once. The headers point into the
/// iovecs, names and control buffers of the same allocation and (through
/// the iovecs) into the datagram buffers; both allocations keep their
/// addresses for the life of the [`RecvBatch`].
struct Headers {
    hdrs: [libc::mmsghdr; BATCH_CAPACITY],
    iovs: [libc::iovec; BATCH_CAPACITY],
    names: [libc::sockaddr_storage; BATCH_CAPACITY],
    controls: [[u64; CMSG_WORDS]; BATCH_CAPACITY],
}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Headers { .. }")
    }
}

/// Preallocated buffers for one `recvmmsg` round.
#[derive(Debug)]
pub struct RecvBatch {
    bufs: Box<[[u8; DATAGRAM_BUF]; BATCH_CAPACITY]>,
    headers: Box<Headers>,
    lens: [usize; BATCH_CAPACITY],
    credentials: [Option<Credentials>; BATCH_CAPACITY],
    sources: [Option<IpAddr>; BATCH_CAPACITY],
    count: usize,
    want: Ancillary,
}

impl RecvBatch {
    pub fn new(want: Ancillary) -> RecvBatch {
        let mut bufs = Box::new([[0; DATAGRAM_BUF]; BATCH_CAPACITY]);
        // SAFETY: all-zero bytes are a valid value for these plain C structs
        // (integers and null pointers).
        let mut headers: Box<Headers> = Box::new(unsafe { mem::zeroed() });
        let h = &mut *headers;
        for (i, buf) in bufs.iter_mut().enumerate() {
            h.iovs[i] = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: DATAGRAM_BUF };
            let m = &mut h.hdrs[i].msg_hdr;
            m.msg_iov = &raw mut h.iovs[i];
            m.msg_iovlen = 1;
            match want {
                Ancillary::SourceAddress => m.msg_name = (&raw mut h.names[i]).cast(),
                Ancillary::Credentials => m.msg_control = h.controls[i].as_mut_ptr().cast(),
            }
        }
        RecvBatch {
            bufs,
            headers,
            lens: [0; BATCH_CAPACITY],
            credentials: [None; BATCH_CAPACITY],
            sources: [None; BATCH_CAPACITY],
            count: 0,
            want,
        }
    }

    /// Datagrams from the last successful [`RecvBatch::recv`].
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The `i`-th datagram of the last round (`i < len()`).
    pub fn get(&self, i: usize) -> Option<Datagram<'_>> {
        if i >= self.count {
            return None;
        }
        let len = self.lens[i];
        Some(Datagram {
            bytes: &self.bufs[i][..len.min(DATAGRAM_BUF)],
            len,
            credentials: self.credentials[i],
            source: self.sources[i],
        })
    }

    /// Receives up to [`BATCH_CAPACITY`] datagrams. Blocks for the first
    /// one until it arrives or the socket is shut down.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.count = 0;
        let want = self.want;
        let h = &mut *self.headers;
        // The kernel overwrote these lengths last round; give it the full buffers again.
        for m in h.hdrs.iter_mut() {
            match want {
                Ancillary::SourceAddress => {
                    m.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t
                }
                Ancillary::Credentials => m.msg_hdr.msg_controllen = mem::size_of::<[u64; CMSG_WORDS]>() as _,
            }
        }
        let flags = libc::MSG_WAITFORONE | libc::MSG_TRUNC | libc::MSG_CMSG_CLOEXEC;
        // SAFETY: `h.hdrs` holds BATCH_CAPACITY headers wired in `new` whose
        // iovec, name and control pointers point into live buffers of the
        // stated sizes (`self.bufs` and the rest of `*h`, never moved).
        let n = unsafe {
            libc::recvmmsg(
                fd,
                h.hdrs.as_mut_ptr(),
                BATCH_CAPACITY as libc::c_uint,
                flags as _,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = (n as usize).min(BATCH_CAPACITY);
        for (i, m) in h.hdrs.iter().take(n).enumerate() {
            self.lens[i] = m.msg_len as usize;
            match want {
                Ancillary::Credentials => self.credentials[i] = take_credentials(&m.msg_hdr),
                Ancillary::SourceAddress => {
                    self.sources[i] = source_ip(&h.names[i], m.msg_hdr.msg_namelen as usize)
                }
            }
        }
        self.count = n;
        Ok(n)
    }
}

/// Walks the control messages of one received message: returns its
/// SCM_CREDENTIALS and closes any SCM_RIGHTS descriptors.
fn take_credentials(h: &libc::msghdr) -> Option<Credentials> {
    let mut found = None;
    // SAFETY: `h` was filled by recvmmsg; msg_control/msg_controllen describe
    // a live buffer (or are null/0). CMSG_* only walk inside that range.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(h) };
    while !c.is_null() {
        // SAFETY: `c` is non-null and points at a complete cmsghdr inside the buffer.
        let (level, kind, clen) = unsafe { ((*c).cmsg_level, (*c).cmsg_type, (*c).cmsg_len as usize) };
        // SAFETY: CMSG_LEN is a pure size computation.
        let header = unsafe { libc::CMSG_LEN(0) } as usize;
        let data_len = clen.saturating_sub(header);
        // SAFETY: CMSG_DATA points just past the header of the same, complete cmsghdr.
        let data = unsafe { libc::CMSG_DATA(c) };
        if level == libc::SOL_SOCKET
            && kind == libc::SCM_CREDENTIALS
            && data_len >= mem::size_of::<libc::ucred>()
        {
            // SAFETY: the kernel wrote a `ucred` of at least this size at `data`; unaligned read.
            let u = unsafe { std::ptr::read_unaligned(data.cast::<libc::ucred>()) };
            found = Some(Credentials { pid: u.pid as u32, uid: u.uid, gid: u.gid });
        } else if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            for k in 0..data_len / mem::size_of::<RawFd>() {
                // SAFETY: the kernel wrote `data_len` bytes of descriptors at `data`.
                let fd = unsafe { std::ptr::read_unaligned(data.cast::<RawFd>().add(k)) };
                // SAFETY: the descriptor was just installed for us and is owned by nobody else.
                unsafe { libc::close(fd) };
            }
        }
        // SAFETY: `h` and `c` are the header and a cmsg within it, as CMSG_NXTHDR requires.
        c = unsafe { libc::CMSG_NXTHDR(h, c) };
    }
    found
}

fn source_ip(name: &libc::sockaddr_storage, len: usize) -> Option<IpAddr> {
    match i32::from(name.ss_family) {
        libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: family AF_INET and length say the storage holds a sockaddr_in.
            let a = unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))))
        }
        libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: family AF_INET6 and length say the storage holds a sockaddr_in6.
            let a = unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr)).to_canonical())
        }
        _ => None,
    }
}

fn set_int_opt(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is a live c_int and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

fn get_int_opt(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value`/`len` are live out-pointers of the sizes passed.
    let rc = unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &mut len) };
    if rc == 0 { Ok(value) } else { Err(io::Error::last_os_error()) }
}

/// Requests a receive buffer of `bytes` (SO_RCVBUFFORCE first when root, so
/// `net.core.rmem_max` does not cap it) and returns what the kernel granted.
pub fn set_recv_buffer(fd: RawFd, bytes: usize) -> io::Result<u64> {
    let want = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    if varta_secrets::effective_uid() != 0
        || set_int_opt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, want).is_err()
    {
        set_int_opt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, want)?;
    }
    Ok(get_int_opt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF)?.max(0) as u64)
}

/// Asks the kernel to attach SCM_CREDENTIALS to every datagram.
pub fn set_pass_credentials(fd: RawFd) -> io::Result<()> {
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_PASSCRED, 1)
}
