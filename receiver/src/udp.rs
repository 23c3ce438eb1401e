//! Plain UDP transport: nothing authenticates the sender, so any host that
//! can reach the endpoint can claim any pid. Enabled only with
//! `accept_unauthenticated: true`. Identity = source IP + frame pid; beats
//! are `Transport::Udp` (the weakest origin, never allowed to take over an
//! agent first seen on a stronger transport — the processor's rule).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

use varta_proto::{Arrival, Beat, Frame, Refusal, Source, Transport};

use crate::error::ReceiverError;
use crate::mmsg::{self, Datagram};
use crate::refused;

#[derive(Debug)]
pub(crate) struct UdpReceiver {
    pub(crate) socket: BoundUdp,
}

impl UdpReceiver {
    pub(crate) fn classify(&self, d: &Datagram<'_>, now: u64) -> Arrival {
        let source = Source::Ip(source_of(d));
        let refuse = |r: Refusal| refused(r, Transport::Udp, source, 0, now);
        if d.truncated() {
            return refuse(Refusal::Truncated);
        }
        match Frame::decode(d.bytes) {
            Ok(frame) => Arrival::Beat(Beat {
                frame,
                transport: Transport::Udp,
                source,
                host_pid: frame.pid,
                received_ns: now,
            }),
            Err(e) => refuse(Refusal::Decode(e.kind())),
        }
    }
}

/// The sender address of a datagram (unspecified if the kernel gave none).
pub(crate) fn source_of(d: &Datagram<'_>) -> IpAddr {
    d.source.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// A bound UDP socket with its receive buffer and timeout set.
#[derive(Debug)]
pub(crate) struct BoundUdp {
    pub(crate) socket: UdpSocket,
    pub(crate) local: SocketAddr,
    pub(crate) granted: u64,
}

impl BoundUdp {
    pub(crate) fn bind(id: &str, endpoint: &str, recv_buffer: usize) -> Result<BoundUdp, ReceiverError> {
        let io_err = |what: String| move |source| ReceiverError::Io { id: id.to_owned(), what, source };
        let addrs: Vec<SocketAddr> =
            endpoint.to_socket_addrs().map_err(io_err(format!("resolve endpoint {endpoint}")))?.collect();
        let socket = UdpSocket::bind(&addrs[..]).map_err(io_err(format!("bind udp {endpoint}")))?;
        let local = socket.local_addr().map_err(io_err("local address".into()))?;
        let granted =
            mmsg::set_recv_buffer(socket.as_raw_fd(), recv_buffer).map_err(io_err("set SO_RCVBUF".into()))?;
        Ok(BoundUdp { socket, local, granted })
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}
