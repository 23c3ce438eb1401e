//! `varta-client`: the Rust agent SDK for VLP v0.2 heartbeats.
//!
//! What a [`Client`] promises:
//! * [`Client::beat`] never blocks and never allocates once the client is
//!   connected: the socket is non-blocking, every send uses `MSG_DONTWAIT`,
//!   and frames are built and sealed on the stack. A beat that cannot be
//!   handed to the kernel right now is reported as [`BeatOutcome::Dropped`]
//!   with the reason; it is never queued or retried later.
//! * Frames carry the process's own pid (UDS receivers attest it with
//!   `SCM_CREDENTIALS`), a timestamp in CLOCK_MONOTONIC nanoseconds since the
//!   session started, and a nonce that starts at 1 and advances (wrapping
//!   with [`next_nonce`]) only when a frame was actually sent.
//! * Secure sessions never reuse `(key, iv_random, iv_counter)`: `iv_random`
//!   comes from OS entropy, the counter starts at 0, advances once per
//!   sealed frame (sent or not), and a fresh `iv_random` is drawn before the
//!   counter would wrap.
//! * Fork safety: a child created with `fork(2)` (through libc, which runs
//!   `pthread_atfork` handlers) starts a fresh session before its first beat:
//!   its own pid, nonce 1, a new epoch and a new `iv_random` (and, for
//!   master-key sessions, its own derived agent key). The check on the beat
//!   path is one relaxed atomic load.
//! * [`install_panic_hook`] sends a Critical frame with [`NONCE_TERMINAL`]
//!   when the process panics, then runs the previously installed hook.
//!
//! A [`Client`] is `Send + Sync`; share it with `Arc` between the
//! application, a [`BeatHandle`] and the panic hook. Beats are serialised by
//! an uncontended mutex, so do not fork while another thread is inside
//! [`Client::beat`].

use std::io;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once, PoisonError, TryLockError};
use std::time::Instant;

use varta_proto::{
    FRAME_LEN, Frame, FrameCipher, Iv, Key, MASTER_FRAME_LEN, MasterKey, NONCE_TERMINAL, SHARED_FRAME_LEN,
    Status, next_nonce,
};

mod beating;

pub use beating::BeatHandle;

/// The key a secure UDP session seals its frames with.
#[derive(Debug)]
pub enum SecureKey {
    /// One key shared by every agent (60-byte frames).
    Shared(Key),
    /// The master key; the client derives its own per-pid agent key from it
    /// (64-byte frames, the pid bound in as AAD).
    Master(MasterKey),
}

/// Why a beat was not handed to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The socket's send queue is full (`EAGAIN`, `ENOBUFS`).
    QueueFull,
    /// Nobody is listening at the address (`ECONNREFUSED`, `ENOENT`).
    NoCollector,
    /// The connected peer went away (`EPIPE`, `ENOTCONN`, `ECONNRESET`).
    PeerGone,
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DropReason::QueueFull => "the kernel send queue is full",
            DropReason::NoCollector => "no collector is listening",
            DropReason::PeerGone => "the collector went away",
        })
    }
}

/// What became of one beat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeatOutcome {
    /// The frame was handed to the kernel.
    Sent,
    /// The frame was not sent, for an expected, transient reason.
    Dropped(DropReason),
    /// The frame was not sent for another reason (including a caller asking
    /// to send status Stall, `InvalidInput`, or no OS entropy for a new
    /// `iv_random`, `Other`).
    Failed(io::ErrorKind),
}

impl BeatOutcome {
    pub fn is_sent(&self) -> bool {
        matches!(self, BeatOutcome::Sent)
    }
}

/// Bumped in every child created by `fork(2)`; sessions compare it with the
/// generation they were started in.
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);
/// Set when the atfork handler could not be registered: then every beat
/// compares `getpid()` instead.
static ALWAYS_CHECK_PID: AtomicBool = AtomicBool::new(false);
static ATFORK: Once = Once::new();

extern "C" fn on_fork_child() {
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
}

fn register_fork_handler() {
    ATFORK.call_once(|| {
        // SAFETY: registers a child-side handler that only increments an
        // atomic, which is async-signal-safe and valid in a forked child.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(on_fork_child)) };
        if rc != 0 {
            ALWAYS_CHECK_PID.store(true, Ordering::Relaxed);
        }
    });
}

/// An agent's connection to a collector. See the crate docs for guarantees.
#[derive(Debug)]
pub struct Client {
    session: Mutex<Session>,
}

#[derive(Debug)]
struct Session {
    pid: u32,
    fork_generation: u64,
    epoch: Instant,
    nonce: u64,
    sealer: Option<Sealer>,
    transport: Transport,
}

#[derive(Debug)]
enum Transport {
    Uds { socket: UnixDatagram, path: PathBuf, connected: bool },
    Udp(UdpSocket),
}

#[derive(Debug)]
struct Sealer {
    mode: SealMode,
    cipher: FrameCipher,
    /// The IV the next sealed frame uses; `None` means "draw a fresh
    /// `iv_random`" (new session, after a fork, or the counter is spent).
    next_iv: Option<Iv>,
}

#[derive(Debug)]
enum SealMode {
    Shared,
    Master(MasterKey),
}

impl Client {
    /// A client beating to the Unix datagram socket at `path`. Succeeds even
    /// when no collector is listening yet: beats are then
    /// `Dropped(NoCollector)` until one appears, and the client reconnects
    /// by itself after a collector restart.
    pub fn connect_uds(path: impl AsRef<Path>) -> io::Result<Client> {
        let path = path.as_ref().to_path_buf();
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        let connected = match socket.connect(&path) {
            Ok(()) => true,
            Err(e) if matches!(classify(&e), BeatOutcome::Dropped(_)) => false,
            Err(e) => return Err(e),
        };
        Ok(Client::with(Transport::Uds { socket, path, connected }, None))
    }

    /// A client beating plain (unauthenticated) frames to a UDP collector.
    pub fn connect_udp(addr: impl ToSocketAddrs) -> io::Result<Client> {
        Ok(Client::with(Transport::Udp(udp_socket(addr)?), None))
    }

    /// A client beating ChaCha20-Poly1305 sealed frames to a UDP collector.
    pub fn connect_secure_udp(addr: impl ToSocketAddrs, key: SecureKey) -> io::Result<Client> {
        let socket = udp_socket(addr)?;
        let pid = std::process::id();
        let (mode, cipher) = match key {
            SecureKey::Shared(k) => (SealMode::Shared, FrameCipher::new(&k)),
            SecureKey::Master(m) => {
                let cipher = FrameCipher::new(&m.agent_key(pid));
                (SealMode::Master(m), cipher)
            }
        };
        let mut sealer = Sealer { mode, cipher, next_iv: None };
        // Fail at connect, not at the first beat, when there is no entropy.
        sealer.next_iv = Some(fresh_iv()?);
        Ok(Client::with(Transport::Udp(socket), Some(sealer)))
    }

    fn with(transport: Transport, sealer: Option<Sealer>) -> Client {
        register_fork_handler();
        let session = Session {
            pid: std::process::id(),
            fork_generation: FORK_GENERATION.load(Ordering::Relaxed),
            epoch: Instant::now(),
            nonce: 1,
            sealer,
            transport,
        };
        Client { session: Mutex::new(session) }
    }

    fn lock(&self) -> MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends one beat. Never blocks, never allocates. Status `Stall` is
    /// observer-only and refused with `Failed(InvalidInput)`.
    pub fn beat(&self, status: Status, payload: u32) -> BeatOutcome {
        if status == Status::Stall {
            return BeatOutcome::Failed(io::ErrorKind::InvalidInput);
        }
        let mut s = self.lock();
        s.start_over_after_fork();
        let nonce = s.nonce;
        let outcome = s.send_frame(status, nonce, payload);
        if outcome.is_sent() {
            s.nonce = next_nonce(nonce);
        }
        outcome
    }

    /// Sends the panic frame: status Critical, nonce [`NONCE_TERMINAL`],
    /// payload 0. Does not touch the regular nonce. Waits only briefly for
    /// a beat in progress on another thread (then gives up with
    /// `Failed(WouldBlock)`), so it is safe to call from a panic hook.
    pub fn send_panic_frame(&self) -> BeatOutcome {
        let mut guard = None;
        for _ in 0..1000 {
            match self.session.try_lock() {
                Ok(g) => guard = Some(g),
                Err(TryLockError::Poisoned(p)) => guard = Some(p.into_inner()),
                Err(TryLockError::WouldBlock) => std::thread::yield_now(),
            }
            if guard.is_some() {
                break;
            }
        }
        let Some(mut s) = guard else {
            return BeatOutcome::Failed(io::ErrorKind::WouldBlock);
        };
        s.start_over_after_fork();
        s.send_frame(Status::Critical, NONCE_TERMINAL, 0)
    }

    /// The pid this client's frames carry (the current process's).
    pub fn pid(&self) -> u32 {
        let mut s = self.lock();
        s.start_over_after_fork();
        s.pid
    }

    /// The nonce the next successfully sent beat will carry.
    pub fn next_nonce(&self) -> u64 {
        let mut s = self.lock();
        s.start_over_after_fork();
        s.nonce
    }
}

/// Installs a panic hook that sends `client`'s panic frame, then chains to
/// the hook that was installed before. Any panic on any thread triggers it.
pub fn install_panic_hook(client: Arc<Client>) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let _ = client.send_panic_frame();
        previous(info);
    }));
}

impl Session {
    fn start_over_after_fork(&mut self) {
        let generation = FORK_GENERATION.load(Ordering::Relaxed);
        if generation == self.fork_generation && !ALWAYS_CHECK_PID.load(Ordering::Relaxed) {
            return;
        }
        self.fork_generation = generation;
        let pid = std::process::id();
        if pid == self.pid {
            return;
        }
        self.pid = pid;
        self.nonce = 1;
        self.epoch = Instant::now();
        if let Some(sealer) = &mut self.sealer {
            sealer.next_iv = None;
            if let SealMode::Master(master) = &sealer.mode {
                sealer.cipher = FrameCipher::new(&master.agent_key(pid));
            }
        }
    }

    /// CLOCK_MONOTONIC nanoseconds since the session began (never the
    /// reserved `u64::MAX`).
    fn timestamp(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX).min(u64::MAX - 1)
    }

    fn send_frame(&mut self, status: Status, nonce: u64, payload: u32) -> BeatOutcome {
        let frame = Frame::new(status, self.pid, self.timestamp(), nonce, payload).encode();
        let mut wire = [0u8; MASTER_FRAME_LEN];
        let len = match &mut self.sealer {
            None => {
                wire[..FRAME_LEN].copy_from_slice(&frame);
                FRAME_LEN
            }
            Some(sealer) => {
                let Ok(iv) = sealer.take_iv() else {
                    return BeatOutcome::Failed(io::ErrorKind::Other);
                };
                match sealer.mode {
                    SealMode::Shared => {
                        wire[..SHARED_FRAME_LEN].copy_from_slice(&sealer.cipher.seal_shared(iv, &frame));
                        SHARED_FRAME_LEN
                    }
                    SealMode::Master(_) => {
                        wire.copy_from_slice(&sealer.cipher.seal_master(self.pid, iv, &frame));
                        MASTER_FRAME_LEN
                    }
                }
            }
        };
        self.transport.send(&wire[..len])
    }
}

impl Sealer {
    /// The IV for the frame about to be sealed; never hands out the same
    /// `(iv_random, iv_counter)` twice.
    fn take_iv(&mut self) -> io::Result<Iv> {
        let iv = match self.next_iv {
            Some(iv) => iv,
            None => fresh_iv()?,
        };
        self.next_iv = iv.counter.checked_add(1).map(|counter| Iv { counter, ..iv });
        Ok(iv)
    }
}

fn fresh_iv() -> io::Result<Iv> {
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|e| io::Error::other(format!("no OS entropy: {e}")))?;
    Ok(Iv { random, counter: 0 })
}

fn udp_socket(addr: impl ToSocketAddrs) -> io::Result<UdpSocket> {
    let addr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "address resolved to nothing"))?;
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(addr)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

impl Transport {
    fn send(&mut self, wire: &[u8]) -> BeatOutcome {
        match self {
            Transport::Udp(socket) => outcome(send_dontwait(socket.as_raw_fd(), wire)),
            Transport::Uds { socket, path, connected } => {
                let was_connected = *connected;
                if !*connected {
                    if let Err(e) = socket.connect(&*path) {
                        return classify(&e);
                    }
                    *connected = true;
                }
                let mut result = outcome(send_dontwait(socket.as_raw_fd(), wire));
                if matches!(result, BeatOutcome::Dropped(DropReason::NoCollector | DropReason::PeerGone)) {
                    *connected = false;
                    // A restarted collector re-binds the path: reconnect once
                    // so the beat is not lost to the restart.
                    if was_connected && socket.connect(&*path).is_ok() {
                        *connected = true;
                        result = outcome(send_dontwait(socket.as_raw_fd(), wire));
                    }
                }
                result
            }
        }
    }
}

fn send_dontwait(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a live slice valid for `buf.len()` bytes for the whole
    // call, and `fd` is an open socket owned by the caller.
    let n =
        unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

fn outcome(result: io::Result<usize>) -> BeatOutcome {
    match result {
        Ok(_) => BeatOutcome::Sent,
        Err(e) => classify(&e),
    }
}

fn classify(e: &io::Error) -> BeatOutcome {
    match e.raw_os_error() {
        Some(libc::EAGAIN | libc::ENOBUFS) => BeatOutcome::Dropped(DropReason::QueueFull),
        Some(libc::ECONNREFUSED | libc::ENOENT) => BeatOutcome::Dropped(DropReason::NoCollector),
        Some(libc::EPIPE | libc::ENOTCONN | libc::ECONNRESET | libc::EDESTADDRREQ) => {
            BeatOutcome::Dropped(DropReason::PeerGone)
        }
        _ => BeatOutcome::Failed(e.kind()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sealer() -> Sealer {
        Sealer {
            mode: SealMode::Shared,
            cipher: FrameCipher::new(&Key::from_bytes([3; 32])),
            next_iv: Some(Iv { random: [1; 8], counter: u32::MAX - 1 }),
        }
    }

    #[test]
    fn iv_random_rotates_before_the_counter_wraps() {
        let mut s = sealer();
        let a = s.take_iv().unwrap();
        let b = s.take_iv().unwrap();
        let c = s.take_iv().unwrap();
        assert_eq!((a.random, a.counter), ([1; 8], u32::MAX - 1));
        assert_eq!((b.random, b.counter), ([1; 8], u32::MAX));
        assert_eq!(c.counter, 0);
        assert_ne!(c.random, [1; 8], "a fresh iv_random must be drawn after the counter is spent");
        assert_eq!(s.take_iv().unwrap(), Iv { counter: 1, ..c });
    }

    #[test]
    fn errno_classification() {
        let e = |n| classify(&io::Error::from_raw_os_error(n));
        assert_eq!(e(libc::EAGAIN), BeatOutcome::Dropped(DropReason::QueueFull));
        assert_eq!(e(libc::ENOBUFS), BeatOutcome::Dropped(DropReason::QueueFull));
        assert_eq!(e(libc::ECONNREFUSED), BeatOutcome::Dropped(DropReason::NoCollector));
        assert_eq!(e(libc::ENOENT), BeatOutcome::Dropped(DropReason::NoCollector));
        assert_eq!(e(libc::EPIPE), BeatOutcome::Dropped(DropReason::PeerGone));
        assert_eq!(e(libc::EACCES), BeatOutcome::Failed(io::ErrorKind::PermissionDenied));
    }

    #[test]
    fn stall_is_refused_without_sending() {
        let dir = std::env::temp_dir().join(format!("varta-client-unit-{}", std::process::id()));
        let c = Client::connect_uds(dir.join("absent.sock")).unwrap();
        assert_eq!(c.beat(Status::Stall, 0), BeatOutcome::Failed(io::ErrorKind::InvalidInput));
        assert_eq!(c.next_nonce(), 1);
    }
}
