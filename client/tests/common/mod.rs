//! Test collectors: real sockets bound in a temp dir or on loopback, with
//! bounded receive timeouts.
#![allow(dead_code)]

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

use varta_proto::Key;

pub const TIMEOUT: Duration = Duration::from_secs(5);

/// A Unix datagram receiver with `SO_PASSCRED`, like the collector's.
pub struct UdsCollector {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub socket: UnixDatagram,
}

impl UdsCollector {
    pub fn bind() -> UdsCollector {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("varta.sock");
        let socket = bind_passcred(&path);
        UdsCollector { dir, path, socket }
    }

    /// Receives one datagram and the sender pid the kernel attests.
    pub fn recv(&self) -> (Vec<u8>, u32) {
        recv_with_pid(&self.socket).unwrap()
    }

    /// Receives without waiting; `None` when the queue is empty.
    pub fn try_recv(&self) -> Option<(Vec<u8>, u32)> {
        self.socket.set_nonblocking(true).unwrap();
        let r = recv_with_pid(&self.socket);
        self.socket.set_nonblocking(false).unwrap();
        match r {
            Ok(x) => Some(x),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("recv: {e}"),
        }
    }
}

pub fn bind_passcred(path: &std::path::Path) -> UnixDatagram {
    let socket = UnixDatagram::bind(path).unwrap();
    let one: libc::c_int = 1;
    // SAFETY: `one` outlives the call and the length matches its type.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_PASSCRED: {}", io::Error::last_os_error());
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    socket
}

/// `recvmsg` one datagram and return it with the `SCM_CREDENTIALS` pid.
pub fn recv_with_pid(socket: &UnixDatagram) -> io::Result<(Vec<u8>, u32)> {
    let mut buf = [0u8; 256];
    let mut control = [0u64; 16]; // u64 for cmsghdr alignment
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: msg points at live buffers sized as declared above.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut pid = None;
    // SAFETY: CMSG_* walk the control buffer the kernel just filled, within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_CREDENTIALS {
                let cred: libc::ucred = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                pid = Some(cred.pid as u32);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let pid = pid.ok_or_else(|| io::Error::other("no SCM_CREDENTIALS"))?;
    Ok((buf[..n as usize].to_vec(), pid))
}

pub fn udp_collector() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

pub fn udp_recv(s: &UdpSocket) -> Vec<u8> {
    let mut buf = [0u8; 256];
    let n = s.recv(&mut buf).unwrap();
    buf[..n].to_vec()
}

/// The spec's known-answer key `000102…1f`.
pub fn counting_key_bytes() -> [u8; 32] {
    std::array::from_fn(|i| i as u8)
}

pub fn counting_key() -> Key {
    Key::from_bytes(counting_key_bytes())
}
