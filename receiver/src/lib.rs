//! `varta-receiver`: the `vlp` receiver component. It turns datagrams on one
//! socket (`uds`, `udp` or `secure_udp`) into decoded, attested
//! [`varta_proto::Arrival`]s and hands them to the processor in fixed-size
//! [`varta_proto::Batch`]es over the bounded, recycling [`varta_pipeline::queue`].
//!
//! Promises:
//! * **Delivery.** Every datagram read becomes exactly one arrival: a `Beat`
//!   or a `Refused` event, each counted in [`ReceiverStats`]. A batch that
//!   does not fit in the queue is dropped whole and counted
//!   (`queue_full_beats`, `queue_full_refusals`); the receiver never blocks
//!   on the queue and never drops silently.
//! * **Ordering.** Arrivals keep the kernel's receive order within and
//!   across batches.
//! * **Bounds.** One `recvmmsg` round reads ≤ 64 datagrams into
//!   preallocated buffers and yields one batch; the steady-state path does
//!   not allocate. Secure-UDP sender state is bounded by `max_senders`.
//! * **Shutdown.** An idle receiver sleeps in the kernel (no polling);
//!   [`StopHandle::stop`] wakes it at once, and [`VlpReceiver::run`] then
//!   drops the queue sender and unlinks a UDS socket file it created (only
//!   if it is still our inode).
//! * **Pause.** [`StopHandle::pause`] makes [`VlpReceiver::run_fanout`]
//!   return after the batch in hand while the socket stays bound and keeps
//!   queueing datagrams in the kernel, so a reload can rewire a receiver
//!   without a window where beats bounce. An idle receiver is woken by a
//!   datagram holding the handle's random wake token, which is never
//!   counted or handed on.
//!
//! Modules: [`config`] (YAML config + validation), [`error`], [`mmsg`]
//! (batched receive, the libc edge),
//! [`replay`] (secure-UDP replay table), [`stats`]; transports in `uds`,
//! `udp`, `secure`.

pub mod activation;
pub mod config;
pub mod error;
pub mod mmsg;
pub mod replay;
mod secure;
pub mod sessions;
pub mod stats;
mod udp;
mod uds;

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use varta_pipeline::LogThrottle;
use varta_pipeline::clock::monotonic_ns;
use varta_pipeline::queue::{BatchSender, TrySendError};
use varta_proto::{Arrival, Refusal, RefusedFrame, Source, Transport};

pub use config::{SocketMode, TransportKind, VlpReceiverConfig};
pub use error::{ConfigError, ReceiverError};
pub use stats::ReceiverStats;
pub use varta_secrets::{SecretFileError, load_key_file};

use mmsg::{Ancillary, RecvBatch};
use secure::SecureReceiver;
pub use secure::{KeyHandle, KeyRing};
use stats::RefusalLog;
use udp::{BoundUdp, UdpReceiver};
use uds::UdsReceiver;

/// Receive rounds (of up to a batch each) a stopped receiver spends on
/// datagrams still queued in its socket.
const MAX_DRAIN_ROUNDS: usize = 1024;

/// Pause before the next receive after a partial batch under load (UDP only).
const LINGER: Duration = Duration::from_micros(100);

#[derive(Debug)]
enum Endpoint {
    Uds(UdsReceiver),
    Udp(UdpReceiver),
    Secure(Box<SecureReceiver>),
}

/// Stops a running receiver from any thread, at once: it records the
/// request and shuts down the socket's read side, which wakes a receive
/// blocked in the kernel (so an idle receiver never polls). Holds its own
/// duplicate of the socket descriptor, so it stays valid after the
/// receiver is gone.
#[derive(Debug, Clone)]
pub struct StopHandle {
    requested: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    socket: Arc<OwnedFd>,
    /// Where a wake datagram reaches the socket, and what it holds.
    wake: Arc<(WakeTarget, WakeToken)>,
    /// The socket outlives us (systemd passed it, or holds it in its
    /// file-descriptor store): a stop must leave it as the next process
    /// finds it, so it is woken, never shut down.
    shared: bool,
}

/// A random datagram body that wakes an idle receiver for a pause; the
/// receiver drops it uncounted. Never a VLP frame (frames are 32 bytes).
type WakeToken = [u8; 16];

fn wake_token() -> WakeToken {
    use std::hash::{BuildHasher, RandomState};
    let state = RandomState::new();
    let mut token = [0u8; 16];
    token[..8].copy_from_slice(&state.hash_one(monotonic_ns()).to_le_bytes());
    token[8..].copy_from_slice(&state.hash_one(std::process::id()).to_le_bytes());
    token
}

/// The address a wake datagram is sent to.
#[derive(Debug)]
enum WakeTarget {
    Ip(SocketAddr),
    Path(std::path::PathBuf),
}

impl StopHandle {
    fn new(fd: RawFd, wake: WakeTarget, shared: bool) -> std::io::Result<StopHandle> {
        // SAFETY: `fd` is a valid open socket owned by the receiver; F_DUPFD_CLOEXEC
        // returns a new descriptor (or -1) that we then own exclusively.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `dup` is a freshly created descriptor nobody else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(dup) };
        Ok(StopHandle {
            requested: Arc::new(AtomicBool::new(false)),
            paused: Arc::new(AtomicBool::new(false)),
            socket: Arc::new(socket),
            wake: Arc::new((wake, wake_token())),
            shared,
        })
    }

    /// Asks a running receiver to return from [`VlpReceiver::run_fanout`]
    /// without closing its socket (datagrams keep queueing in the kernel),
    /// after the batch in hand; an idle one is woken by a wake datagram.
    /// Clear the request ([`StopHandle::unpause`]) before running it again.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::Release);
        // Best effort and never blocking: if the socket's queue is full the
        // receiver is busy and sees the request after its current round.
        self.wake(None);
    }

    /// Sends the wake datagram: without waiting (`None`), or waiting at
    /// most `patience` for room in the socket's queue.
    fn wake(&self, patience: Option<Duration>) {
        let (target, token) = &*self.wake;
        let sent = match target {
            WakeTarget::Ip(addr) => {
                let any: SocketAddr = if addr.is_ipv4() {
                    (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                std::net::UdpSocket::bind(any).and_then(|s| s.send_to(token, addr))
            }
            WakeTarget::Path(path) => std::os::unix::net::UnixDatagram::unbound()
                .and_then(|s| match patience {
                    None => s.set_nonblocking(true).map(|()| s),
                    Some(t) => s.set_write_timeout(Some(t)).map(|()| s),
                })
                .and_then(|s| s.send_to(token, path)),
        };
        if let Err(e) = sent {
            tracing::debug!(
                "no wake datagram sent ({e}); the receiver sees the request after its current round"
            );
        }
    }

    /// Bytes waiting in the socket's receive queue (`FIONREAD`: the next
    /// datagram's length), for liveness checks: work waiting.
    pub fn queued(&self) -> usize {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD on a socket we own writes one c_int through the pointer.
        let rc = unsafe { libc::ioctl(self.socket.as_raw_fd(), libc::FIONREAD, &raw mut n) };
        if rc == 0 { usize::try_from(n).unwrap_or(0) } else { 0 }
    }

    /// Withdraws a pause request (before the receiver runs again; not done
    /// by running, so a request made just after a resume is never lost).
    pub fn unpause(&self) {
        self.paused.store(false, Ordering::Release);
    }

    fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Asks the receiver to stop; it returns from [`VlpReceiver::run`] promptly.
    pub fn stop(&self) {
        self.requested.store(true, Ordering::Release);
        if self.shared {
            // Shutting a shared socket down would shut it down for the
            // next process too (it would read empty datagrams forever):
            // the receiver reads up to this datagram instead, and what
            // arrives after it waits in the socket for the next process.
            self.wake(Some(Duration::from_secs(1)));
            return;
        }
        // Linux wakes blocked receivers on shutdown even for unconnected
        // datagram sockets (the call itself may report ENOTCONN; harmless).
        // SAFETY: shutdown on a descriptor we own; no memory is involved.
        unsafe { libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RD) };
    }

    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }
}

/// A bound `vlp` receiver, ready to [`run`](VlpReceiver::run) on a thread of its own.
#[derive(Debug)]
pub struct VlpReceiver {
    id: String,
    endpoint: Endpoint,
    stats: Arc<ReceiverStats>,
    stop: StopHandle,
    /// A secure receiver's replay sessions kept in a file (`storage`).
    sessions: Option<sessions::SessionKeeper>,
}

impl Drop for VlpReceiver {
    /// A receiver dropped without running to its stop (parked, then
    /// closed) still writes its sessions.
    fn drop(&mut self) {
        self.save_sessions();
    }
}

impl VlpReceiver {
    /// Validates `cfg`, loads keys and binds the socket. Every startup
    /// error surfaces here, naming the receiver `id`.
    pub fn bind(id: &str, cfg: &VlpReceiverConfig) -> Result<VlpReceiver, ReceiverError> {
        cfg.validate().map_err(|source| ReceiverError::Config { id: id.to_owned(), source })?;
        let endpoint = match cfg.transport {
            TransportKind::Uds => Endpoint::Uds(UdsReceiver::bind(id, cfg)?),
            TransportKind::Udp => {
                let endpoint = cfg.endpoint.as_deref().unwrap_or_default();
                Endpoint::Udp(UdpReceiver { socket: BoundUdp::bind(id, endpoint, cfg.recv_buffer())? })
            }
            TransportKind::SecureUdp => Endpoint::Secure(Box::new(bind_secure(id, cfg)?)),
        };
        let fd = match &endpoint {
            Endpoint::Uds(u) => u.fd(),
            Endpoint::Udp(u) => u.socket.fd(),
            Endpoint::Secure(s) => s.fd(),
        };
        let wake = match &endpoint {
            Endpoint::Uds(u) => WakeTarget::Path(u.path().to_owned()),
            Endpoint::Udp(u) => WakeTarget::Ip(reachable(u.socket.local)),
            Endpoint::Secure(s) => WakeTarget::Ip(reachable(s.socket.local)),
        };
        let shared = matches!(&endpoint, Endpoint::Uds(u) if u.outlives_us());
        let stop = StopHandle::new(fd, wake, shared).map_err(|source| ReceiverError::Io {
            id: id.to_owned(),
            what: "duplicate socket descriptor".into(),
            source,
        })?;
        let me = VlpReceiver {
            id: id.to_owned(),
            endpoint,
            stats: Arc::new(ReceiverStats::default()),
            stop,
            sessions: None,
        };
        let granted = match &me.endpoint {
            Endpoint::Uds(u) => u.granted,
            Endpoint::Udp(u) => u.socket.granted,
            Endpoint::Secure(s) => s.socket.granted,
        };
        me.stats.recv_buffer_granted.store(granted, Ordering::Relaxed);
        if matches!(me.endpoint, Endpoint::Udp(_)) {
            tracing::warn!(
                receiver = id,
                "plain UDP: senders are not authenticated (accept_unauthenticated)"
            );
        }
        tracing::info!(receiver = id, listening = %me.describe(), recv_buffer_granted = granted, "vlp receiver bound");
        Ok(me)
    }

    /// The handle that stops [`VlpReceiver::run`]; take it before running.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// For a secure UDP receiver: the handle that swaps its keys while it
    /// runs (see [`KeyHandle`]).
    pub fn key_handle(&self) -> Option<KeyHandle> {
        match &self.endpoint {
            Endpoint::Secure(s) => Some(s.key_handle()),
            _ => None,
        }
    }

    /// Keeps a secure receiver's replay sessions in `<dir>/<id>.sessions`
    /// across restarts (see [`sessions`]): restores them now, writes them
    /// at most every `interval` while frames are admitted and when it
    /// stops. Other transports keep no sessions (an error).
    pub fn keep_sessions(&mut self, dir: &std::path::Path, interval: Duration) -> Result<(), ReceiverError> {
        let Endpoint::Secure(s) = &mut self.endpoint else {
            return Err(ReceiverError::Io {
                id: self.id.clone(),
                what: "keep sessions".into(),
                source: std::io::Error::other("only a secure_udp receiver has sessions to keep"),
            });
        };
        let path = sessions::path_in(dir, &self.id);
        let keeper = sessions::SessionKeeper::start(
            &self.id,
            path,
            interval,
            &mut s.replay,
            monotonic_ns(),
            Arc::clone(&self.stats),
        )
        .map_err(|source| ReceiverError::Io {
            id: self.id.clone(),
            what: "start the sessions writer".into(),
            source,
        })?;
        self.sessions = Some(keeper);
        Ok(())
    }

    /// The last write of its sessions, if it keeps them (once).
    fn save_sessions(&mut self) {
        if let (Some(keeper), Endpoint::Secure(s)) = (self.sessions.as_mut(), &mut self.endpoint) {
            keeper.finish(&mut s.replay);
        }
        self.sessions = None;
    }

    /// Counters, shared with whoever wants to read them.
    pub fn stats(&self) -> Arc<ReceiverStats> {
        Arc::clone(&self.stats)
    }

    /// Human-readable summary, e.g. `uds /run/user/1000/varta.sock (mode 0600, rcvbuf 2097152)`.
    pub fn describe(&self) -> String {
        match &self.endpoint {
            Endpoint::Uds(u) => u.describe(),
            Endpoint::Udp(u) => {
                format!("udp {} (unauthenticated, rcvbuf {})", u.socket.local, u.socket.granted)
            }
            Endpoint::Secure(s) => s.describe(),
        }
    }

    /// The bound address of a `udp`/`secure_udp` receiver (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.endpoint {
            Endpoint::Uds(_) => None,
            Endpoint::Udp(u) => Some(u.socket.local),
            Endpoint::Secure(s) => Some(s.socket.local),
        }
    }

    /// Receives until [`StopHandle::stop`] is called, blocking in the kernel
    /// while idle and pushing one batch per receive round with `try_send`.
    /// Returns `Ok` on stop, [`ReceiverError::QueueClosed`] if the processor
    /// dropped the queue first. Dropping `queue` on return tells the
    /// processor we are done.
    pub fn run(mut self, queue: BatchSender) -> Result<(), ReceiverError> {
        self.run_fanout(queue, Vec::new())
    }

    /// Like [`VlpReceiver::run`], also feeding every pipeline in `more` a
    /// copy of each batch (a receiver shared by several pipelines). Counters
    /// keep one owner: datagrams, beats and refusals are counted once; a
    /// batch a full queue could not take is counted per pipeline that missed
    /// it.
    ///
    /// Also returns `Ok` after [`StopHandle::pause`], with the socket still
    /// bound: [`StopHandle::unpause`], then call it again (with the same or
    /// other queues) to resume.
    pub fn run_fanout(&mut self, queue: BatchSender, more: Vec<BatchSender>) -> Result<(), ReceiverError> {
        let ancillary = match self.endpoint {
            Endpoint::Uds(_) => Ancillary::Credentials,
            _ => Ancillary::SourceAddress,
        };
        let fd = match &self.endpoint {
            Endpoint::Uds(u) => u.fd(),
            Endpoint::Udp(u) => u.socket.fd(),
            Endpoint::Secure(s) => s.fd(),
        };
        let mut rx = RecvBatch::new(ancillary);
        let mut log = RefusalLog::new(&self.id);
        let mut io_log = LogThrottle::default();
        let stats = &*self.stats;
        tracing::debug!(receiver = %self.id, "vlp receiver running");
        let stop = self.stop.clone();
        let token = self.stop.wake.1;
        let mut wedge = test_wedge();
        let mut batch = queue.empty_batch();
        // Under load a UDP socket hands over a few datagrams per wakeup; a
        // short pause after a partial batch lets a full one accumulate,
        // trading at most LINGER of latency for far fewer wakeups. Not for
        // UDS: its queue is capped in datagrams (net.unix.max_dgram_qlen),
        // so pausing would only block the senders.
        let may_linger = !matches!(self.endpoint, Endpoint::Uds(_));
        let mut busy = false;
        let mut drain_rounds = 0usize;
        loop {
            if stop.is_paused() && !stop.is_requested() {
                tracing::debug!(receiver = %self.id, "vlp receiver paused");
                return Ok(());
            }
            if busy && !stop.is_requested() {
                std::thread::sleep(LINGER);
            }
            let received = rx.recv(fd);
            busy = may_linger && matches!(received, Ok(n) if (2..varta_proto::BATCH_CAPACITY).contains(&n));
            // Once stopped (the read side is shut down), the socket is
            // drained: datagrams already queued are still handled, and the
            // end-of-stream read that follows (no datagram, or an empty one
            // — never counted) ends the loop.
            let mut round = rx.len();
            if stop.is_requested() && stop.shared {
                // Read up to our wake datagram (see StopHandle::stop).
                drain_rounds += 1;
            } else if stop.is_requested() {
                round = (0..round).take_while(|&i| rx.get(i).is_some_and(|d| d.len > 0)).count();
                drain_rounds += 1;
                // Bounded: a sender flooding a stopped socket cannot hold shutdown up.
                if round == 0 || drain_rounds > MAX_DRAIN_ROUNDS {
                    break;
                }
            }
            if let Err(e) = received {
                use std::io::ErrorKind::{Interrupted, TimedOut, WouldBlock};
                if !matches!(e.kind(), WouldBlock | TimedOut | Interrupted) {
                    ReceiverStats::add(&stats.io_errors, 1);
                    if let Some(count) = io_log.note(monotonic_ns()) {
                        tracing::warn!(receiver = %self.id, error = %e, count, "receive failed (at most one warning per 10 s; count is since the last)");
                    }
                    // Do not spin on a persistent error.
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            let now = monotonic_ns();
            let mut beats = 0u64;
            let mut woken = 0;
            for d in (0..round).filter_map(|i| rx.get(i)) {
                if d.len == token.len() && d.bytes == token {
                    woken += 1;
                    continue;
                }
                let arrival = match &mut self.endpoint {
                    Endpoint::Uds(u) => u.classify(&d, now),
                    Endpoint::Udp(u) => u.classify(&d, now),
                    Endpoint::Secure(s) => s.classify(&d, now, stats),
                };
                match &arrival {
                    Arrival::Beat(_) => beats += 1,
                    Arrival::Refused(r) => {
                        stats.count_refusal(r.refusal);
                        log.note(r);
                    }
                }
                // A round holds at most BATCH_CAPACITY datagrams, so this cannot overflow.
                let _ = batch.push(arrival);
            }
            ReceiverStats::add(&stats.datagrams, (round - woken) as u64);
            ReceiverStats::add(&stats.beats, beats);
            let last_round =
                stop.shared && stop.is_requested() && (woken > 0 || drain_rounds > MAX_DRAIN_ROUNDS);
            if let (Some(keeper), Endpoint::Secure(s)) = (self.sessions.as_mut(), &mut self.endpoint) {
                keeper.tick(&mut s.replay, now);
            }
            if batch.is_empty() {
                if last_round {
                    break;
                }
                continue;
            }
            if let Some(left) = wedge.as_mut() {
                if *left == 0 {
                    tracing::warn!(receiver = %self.id, "VARTA_TEST_WEDGE_RECEIVER_AFTER: wedging the receiver thread (test hook)");
                    loop {
                        std::thread::park();
                    }
                }
                *left -= 1;
            }
            let mut closed = false;
            for extra in &more {
                let mut copy = extra.empty_batch();
                copy.clone_from(&batch);
                closed |= deliver(extra, copy, beats, stats).is_err();
            }
            match deliver(&queue, batch, beats, stats) {
                Ok(_) if last_round => break,
                Ok(back) if !closed => batch = back.unwrap_or_else(|| queue.empty_batch()),
                _ => {
                    if stop.is_requested() {
                        break;
                    }
                    tracing::warn!(receiver = %self.id, "processor queue closed; receiver stopping");
                    return Err(ReceiverError::QueueClosed { id: self.id.clone() });
                }
            }
        }
        self.save_sessions();
        tracing::debug!(receiver = %self.id, "vlp receiver stopped");
        Ok(())
    }
}

/// Test-only fault hook (debug builds only): with
/// `VARTA_TEST_WEDGE_RECEIVER_AFTER=N` the receiver thread blocks forever
/// after N batches — how the integration tests check that health checks
/// see a receiver that stopped turning.
fn test_wedge() -> Option<u64> {
    if !cfg!(debug_assertions) {
        return None;
    }
    std::env::var("VARTA_TEST_WEDGE_RECEIVER_AFTER").ok()?.parse().ok()
}

/// Where a wake datagram reaches a socket bound to `local` (a wildcard
/// address is reached on loopback).
fn reachable(local: SocketAddr) -> SocketAddr {
    match local.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            (std::net::Ipv4Addr::LOCALHOST, local.port()).into()
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            (std::net::Ipv6Addr::LOCALHOST, local.port()).into()
        }
        _ => local,
    }
}

/// Queues `batch` (holding `beats` beats) without blocking. A full queue
/// gives the batch back, emptied and counted; `Err` when the processor has
/// gone.
fn deliver(
    queue: &BatchSender,
    batch: Box<varta_proto::Batch>,
    beats: u64,
    stats: &ReceiverStats,
) -> Result<Option<Box<varta_proto::Batch>>, ()> {
    match queue.try_send(batch) {
        Ok(()) => {
            ReceiverStats::add(&stats.batches, 1);
            Ok(None)
        }
        Err(TrySendError::Full(mut b)) => {
            ReceiverStats::add(&stats.queue_full_beats, beats);
            ReceiverStats::add(&stats.queue_full_refusals, b.len() as u64 - beats);
            b.clear();
            Ok(Some(b))
        }
        Err(TrySendError::Disconnected(_)) => Err(()),
    }
}

/// Reads the key files a secure receiver's configuration names.
pub fn load_key_ring(id: &str, cfg: &VlpReceiverConfig) -> Result<KeyRing, ReceiverError> {
    let key_err = |source| ReceiverError::Key { id: id.to_owned(), source };
    let mut shared = Vec::new();
    for path in cfg.key_files.iter().flatten() {
        shared.push(load_key_file(path).map_err(key_err)?);
    }
    let master = match &cfg.master_key_file {
        Some(path) => Some(load_key_file(path).map_err(key_err)?),
        None => None,
    };
    Ok(KeyRing::new(&shared, master))
}

fn bind_secure(id: &str, cfg: &VlpReceiverConfig) -> Result<SecureReceiver, ReceiverError> {
    let ring = load_key_ring(id, cfg)?;
    let max_senders = cfg.max_senders.unwrap_or(config::DEFAULT_MAX_SENDERS);
    let socket = BoundUdp::bind(id, cfg.secure_endpoint(), cfg.recv_buffer())?;
    Ok(SecureReceiver::new(
        socket,
        ring,
        replay::ReplayTable::new(max_senders, cfg.idle_timeout())
            .with_max_per_source(cfg.max_senders_per_source.unwrap_or(max_senders)),
        max_senders,
    ))
}

/// A refusal arrival.
pub(crate) fn refused(
    refusal: Refusal,
    transport: Transport,
    source: Source,
    claimed_pid: u32,
    received_ns: u64,
) -> Arrival {
    Arrival::Refused(RefusedFrame { refusal, transport, source, claimed_pid, received_ns })
}
