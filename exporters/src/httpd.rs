//! The one small HTTP/1.1 server behind every endpoint the collector
//! serves (the Prometheus exporter, the `health_check` extension): hyper on
//! the collector's Tokio runtime, never on a pipeline thread.
//!
//! Promises: at most `max_connections` connections are open, at most
//! `max_connections_per_source` from one source address and at most
//! `max_connections_per_range` from one range of addresses (loopback —
//! `127/8` and `::1` — as one range, else an IPv4 `/24` or an IPv6 `/64`;
//! IPv4-mapped IPv6 addresses count as IPv4), because a local user can
//! bind any of `127.0.0.0/8`. When the endpoint (or the newcomer's range)
//! is full, the oldest connection that has not sent a request yet is
//! closed to admit the newcomer (`connections_evicted`): idle connections,
//! from however many addresses, can never keep a probe or a scrape out.
//! Only when every connection there is busy is the newcomer closed,
//! counted by reason (`connections_refused{reason=per_source|per_range|total}`); request headers
//! are bounded in size (16 KiB buffer, 32 fields) and in time
//! (`header_timeout`, slowloris: a connection that sends nothing frees its
//! slot then); an answer whose writing makes no progress for
//! `write_timeout` (a client that asks and never reads) ends its
//! connection, which releases what the answer held (a scrape's snapshot),
//! counted as `write_timeouts`; a kept-alive connection with no request
//! in progress that sends nothing for `idle_timeout` is closed
//! (`idle_timeouts`); accept
//! errors are logged at a limited pace and never spin; a stop request ends
//! the accept loop and asks open connections to finish. What a request gets
//! is the caller's `handle`.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::{Body, Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use varta_pipeline::clock::monotonic_ns;
use varta_pipeline::{Metric, Sample};

/// Connection bounds (the `max_connections`, `max_connections_per_source`,
/// `max_connections_per_range` and `header_timeout` keys of every
/// endpoint's configuration).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    pub max_connections_per_range: usize,
    pub header_timeout: Duration,
    /// An answer whose writing makes no progress this long ends its connection.
    pub write_timeout: Duration,
    /// A connection with no request in progress that sends nothing this
    /// long is closed (the Collector's `confighttp` `idle_timeout`).
    pub idle_timeout: Duration,
}

/// `write_timeout` when not configured.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// `idle_timeout` when not configured.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// `max_connections_per_range` when not configured: a quarter of the total.
fn default_per_range(max_connections: usize) -> usize {
    (max_connections / 4).max(1)
}

impl Limits {
    /// The bounds an endpoint's settings give, defaults filled in
    /// (`max_connections_per_range`: a quarter of the total, at least the
    /// per-source cap; `write_timeout`: [`DEFAULT_WRITE_TIMEOUT`];
    /// `idle_timeout`: [`DEFAULT_IDLE_TIMEOUT`]).
    pub fn from_settings(
        max_connections: usize,
        max_connections_per_source: usize,
        max_connections_per_range: Option<usize>,
        header_timeout: Duration,
        write_timeout: Option<Duration>,
        idle_timeout: Option<Duration>,
    ) -> Limits {
        Limits {
            max_connections,
            max_connections_per_source,
            max_connections_per_range: max_connections_per_range
                .unwrap_or_else(|| default_per_range(max_connections).max(max_connections_per_source)),
            header_timeout,
            write_timeout: write_timeout.unwrap_or(DEFAULT_WRITE_TIMEOUT),
            idle_timeout: idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT),
        }
    }

    /// The same bounds for every endpoint; errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_connections == 0 || self.max_connections > 65_536 {
            return Err("`max_connections` must be between 1 and 65536".into());
        }
        if self.max_connections_per_source == 0 || self.max_connections_per_source > self.max_connections {
            return Err("`max_connections_per_source` must be between 1 and `max_connections`".into());
        }
        if self.max_connections_per_range < self.max_connections_per_source
            || self.max_connections_per_range > self.max_connections
        {
            return Err(
                "`max_connections_per_range` must be between `max_connections_per_source` and `max_connections`"
                    .into(),
            );
        }
        if self.header_timeout.is_zero() || self.header_timeout > Duration::from_secs(300) {
            return Err("`header_timeout` must be between 1ms and 5m".into());
        }
        if self.write_timeout.is_zero() || self.write_timeout > Duration::from_secs(3600) {
            return Err("`write_timeout` must be between 1ms and 1h".into());
        }
        if self.idle_timeout.is_zero() || self.idle_timeout > Duration::from_secs(3600) {
            return Err("`idle_timeout` must be between 1ms and 1h".into());
        }
        Ok(())
    }
}

/// Connection counters of one endpoint.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    connections: AtomicU64,
    refused_total: AtomicU64,
    refused_per_source: AtomicU64,
    refused_per_range: AtomicU64,
    evicted: AtomicU64,
    write_timeouts: Arc<AtomicU64>,
    idle_timeouts: AtomicU64,
    open: AtomicU64,
    errors: AtomicU64,
}

/// The connection metrics (part of an endpoint's component).
pub mod metric {
    use varta_pipeline::Metric;

    pub static CONNECTIONS: Metric =
        Metric::counter("connections", "HTTP connections accepted.").unit("{connection}");
    pub static CONNECTIONS_REFUSED: Metric = Metric::labelled(
        "connections_refused",
        "reason",
        "HTTP connections closed at once: per_source, per_range or total limit reached with every connection there busy.",
    ).unit("{connection}");
    pub static WRITE_TIMEOUTS: Metric = Metric::counter(
        "write_timeouts",
        "HTTP connections ended because writing the answer made no progress for write_timeout (a client that does not read).",
    ).unit("{connection}");
    pub static CONNECTIONS_EVICTED: Metric = Metric::counter(
        "connections_evicted",
        "Idle HTTP connections (no request sent yet) closed to admit a newcomer when the endpoint or its range was full.",
    ).unit("{connection}");
    pub static IDLE_TIMEOUTS: Metric = Metric::counter(
        "idle_timeouts",
        "HTTP connections closed because, with no request in progress, they sent nothing for idle_timeout.",
    )
    .unit("{connection}");
    pub static CONNECTIONS_OPEN: Metric =
        Metric::gauge("connections_open", "HTTP connections open now.").unit("{connection}");
    pub static CONNECTION_ERRORS: Metric = Metric::counter(
        "connection_errors",
        "HTTP connections ended by an error (malformed request, header timeout, reset).",
    )
    .unit("{connection}");
}

impl ConnectionStats {
    /// Lists the connection samples.
    pub fn samples(&self, out: &mut dyn FnMut(Sample)) {
        use metric::*;
        let all: [(&'static Metric, &AtomicU64); 5] = [
            (&CONNECTIONS, &self.connections),
            (&IDLE_TIMEOUTS, &self.idle_timeouts),
            (&CONNECTIONS_EVICTED, &self.evicted),
            (&CONNECTIONS_OPEN, &self.open),
            (&CONNECTION_ERRORS, &self.errors),
        ];
        for (m, v) in all {
            out(Sample::new(m, v.load(Relaxed)));
        }
        out(Sample::new(&WRITE_TIMEOUTS, self.write_timeouts.load(Relaxed)));
        out(Sample::labelled(&CONNECTIONS_REFUSED, "per_source", self.refused_per_source.load(Relaxed)));
        out(Sample::labelled(&CONNECTIONS_REFUSED, "per_range", self.refused_per_range.load(Relaxed)));
        out(Sample::labelled(&CONNECTIONS_REFUSED, "total", self.refused_total.load(Relaxed)));
    }
}

impl varta_pipeline::Instrumented for ConnectionStats {
    fn samples(&self, out: &mut dyn FnMut(Sample)) {
        ConnectionStats::samples(self, out);
    }
}

/// The address a connection counts under (IPv4-mapped IPv6 as IPv4).
fn normalized(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The range an address counts under: loopback as one, else IPv4 /24 or
/// IPv6 /64.
fn range_of(ip: IpAddr) -> IpAddr {
    match ip {
        ip if ip.is_loopback() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, 0))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

/// One open connection, as the registry sees it.
#[derive(Debug)]
struct Entry {
    id: u64,
    ip: IpAddr,
    range: IpAddr,
    /// Set once it has sent a whole request: it is in use, not idle.
    busy: Arc<AtomicBool>,
    /// Closes it (eviction).
    evict: Arc<Notify>,
}

/// Every open connection (bounded by `max_connections`), oldest first.
#[derive(Debug, Default)]
struct Registry {
    open: Mutex<Vec<Entry>>,
    next_id: AtomicU64,
}

/// Why a newcomer was closed at once.
enum Refused {
    PerSource,
    PerRange,
    Total,
}

impl Registry {
    /// Admits a connection from `ip` (evicting the oldest idle one where a
    /// limit is reached), or says which limit refused it.
    fn admit(
        &self,
        ip: IpAddr,
        limits: &Limits,
        stats: &ConnectionStats,
    ) -> Result<(u64, Arc<AtomicBool>, Arc<Notify>), Refused> {
        let range = range_of(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.iter().filter(|e| e.ip == ip).count() >= limits.max_connections_per_source {
            return Err(Refused::PerSource);
        }
        if open.iter().filter(|e| e.range == range).count() >= limits.max_connections_per_range
            && !Self::evict_oldest_idle(&mut open, |e| e.range == range, stats)
        {
            return Err(Refused::PerRange);
        }
        if open.len() >= limits.max_connections && !Self::evict_oldest_idle(&mut open, |_| true, stats) {
            return Err(Refused::Total);
        }
        let id = self.next_id.fetch_add(1, Relaxed);
        let (busy, evict) = (Arc::new(AtomicBool::new(false)), Arc::new(Notify::new()));
        open.push(Entry { id, ip, range, busy: Arc::clone(&busy), evict: Arc::clone(&evict) });
        Ok((id, busy, evict))
    }

    /// Closes the oldest idle connection matching `which`; `false` if none.
    fn evict_oldest_idle(
        open: &mut Vec<Entry>,
        which: impl Fn(&Entry) -> bool,
        stats: &ConnectionStats,
    ) -> bool {
        let Some(at) = open.iter().position(|e| which(e) && !e.busy.load(Relaxed)) else { return false };
        let gone = open.remove(at);
        gone.evict.notify_one();
        stats.evicted.fetch_add(1, Relaxed);
        true
    }

    fn remove(&self, id: u64) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = open.iter().position(|e| e.id == id) {
            open.remove(at);
        }
    }
}

/// Keeps `connections_open` and the registry exact however a connection
/// ends.
struct OpenConnection {
    stats: Arc<ConnectionStats>,
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Relaxed);
        self.registry.remove(self.id);
    }
}

/// Accepts and serves connections until `stop` turns true; `name` appears
/// in log lines.
pub async fn serve<F, Fut, B>(
    name: &'static str,
    listener: TcpListener,
    limits: Limits,
    stats: Arc<ConnectionStats>,
    mut stop: watch::Receiver<bool>,
    handle: F,
) where
    F: Fn(Request<Incoming>, IpAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let registry = Arc::new(Registry::default());
    let mut accept_errors = varta_pipeline::LogThrottle::default();
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => break,
            a = listener.accept() => a,
        };
        let (stream, peer): (_, SocketAddr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                if let Some(count) = accept_errors.note(monotonic_ns()) {
                    tracing::warn!(count, "{name}: accept failed: {e}");
                }
                // Out of descriptors or similar: do not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Per source first: a neighbour over its share is refused before
        // it can take (or evict) one of the slots everybody shares.
        let (id, busy, evicted) = match registry.admit(normalized(peer.ip()), &limits, &stats) {
            Ok(admitted) => admitted,
            Err(why) => {
                let counter = match why {
                    Refused::PerSource => &stats.refused_per_source,
                    Refused::PerRange => &stats.refused_per_range,
                    Refused::Total => &stats.refused_total,
                };
                counter.fetch_add(1, Relaxed);
                drop(stream);
                continue;
            }
        };
        stats.connections.fetch_add(1, Relaxed);
        stats.open.fetch_add(1, Relaxed);
        let open = OpenConnection { stats: Arc::clone(&stats), registry: Arc::clone(&registry), id };
        let stats = Arc::clone(&stats);
        let handle = handle.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _open = open;
            let activity = Arc::new(Activity::default());
            let in_service = Arc::clone(&activity);
            let service = service_fn(move |req| {
                // A whole request arrived: in use, never evicted as idle.
                busy.store(true, Relaxed);
                let handle = handle.clone();
                let serving = Serving::start(Arc::clone(&in_service));
                async move {
                    let answer = handle(req, peer.ip()).await;
                    drop(serving);
                    Ok::<_, Infallible>(answer)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(16 * 1024)
                .max_headers(32)
                .serve_connection(
                    TokioIo::new(WriteProgress::new(
                        stream,
                        limits.write_timeout,
                        Arc::clone(&stats.write_timeouts),
                        Arc::clone(&activity),
                    )),
                    service,
                );
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                // Idle and in a newcomer's way: closed at once.
                () = evicted.notified() => Ok(()),
                () = activity.idle_for(limits.idle_timeout) => {
                    stats.idle_timeouts.fetch_add(1, Relaxed);
                    Ok(())
                }
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if result.is_err() {
                stats.errors.fetch_add(1, Relaxed);
            }
        });
    }
}

/// What a connection is doing: requests being answered, and when a byte
/// last went either way (monotonic ns).
#[derive(Debug, Default)]
struct Activity {
    serving: AtomicUsize,
    last_ns: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ns.store(monotonic_ns(), Relaxed);
    }

    /// Resolves once the connection has had no request in progress and no
    /// byte either way for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        self.touch();
        let timeout_ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        loop {
            let quiet_ns = monotonic_ns().saturating_sub(self.last_ns.load(Relaxed));
            if self.serving.load(Relaxed) == 0 && quiet_ns >= timeout_ns {
                return;
            }
            let left = if self.serving.load(Relaxed) > 0 { timeout_ns } else { timeout_ns - quiet_ns };
            tokio::time::sleep(Duration::from_nanos(left.max(1_000_000))).await;
        }
    }
}

/// A request in progress (while its answer is made).
struct Serving(Arc<Activity>);

impl Serving {
    fn start(activity: Arc<Activity>) -> Serving {
        activity.serving.fetch_add(1, Relaxed);
        Serving(activity)
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.touch();
        self.0.serving.fetch_sub(1, Relaxed);
    }
}

/// A stream whose writes must make progress: a write still pending
/// `timeout` after the last byte went out fails (`TimedOut`), which ends
/// the connection and drops the answer.
struct WriteProgress<S> {
    inner: S,
    activity: Arc<Activity>,
    timeout: Duration,
    /// Armed while a write is pending; re-armed on every byte written.
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    timeouts: Arc<AtomicU64>,
}

impl<S> WriteProgress<S> {
    fn new(
        inner: S,
        timeout: Duration,
        timeouts: Arc<AtomicU64>,
        activity: Arc<Activity>,
    ) -> WriteProgress<S> {
        WriteProgress { inner, activity, timeout, stalled: None, timeouts }
    }

    /// `Pending` from the inner stream: time out if no progress for too long.
    fn pending<T>(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<T>> {
        use std::future::Future;
        let timeout = self.timeout;
        let sleep = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if sleep.as_mut().poll(cx).is_ready() {
            self.timeouts.fetch_add(1, Relaxed);
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client read nothing for write_timeout",
            )));
        }
        std::task::Poll::Pending
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteProgress<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let read = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        read
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteProgress<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match std::pin::Pin::new(&mut self.inner).poll_write(cx, buf) {
            std::task::Poll::Pending => self.pending(cx),
            ready => {
                self.stalled = None;
                self.activity.touch();
                ready
            }
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match std::pin::Pin::new(&mut self.inner).poll_flush(cx) {
            std::task::Poll::Pending => self.pending(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_count_under_their_range() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(range_of(ip("127.0.0.1")), range_of(ip("127.201.3.4")), "all of loopback is one range");
        assert_eq!(range_of(ip("::1")), range_of(ip("127.0.0.1")));
        assert_eq!(range_of(ip("10.1.2.3")), ip("10.1.2.0"));
        assert_ne!(range_of(ip("10.1.2.3")), range_of(ip("10.1.3.3")));
        assert_eq!(range_of(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(normalized(ip("::ffff:10.1.2.3")), ip("10.1.2.3"), "IPv4-mapped counts as IPv4");
    }

    #[test]
    fn a_full_endpoint_evicts_its_oldest_idle_connection_never_a_busy_one() {
        let limits = Limits {
            max_connections: 3,
            max_connections_per_source: 2,
            max_connections_per_range: 3,
            header_timeout: Duration::from_secs(1),
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        };
        let (registry, stats) = (Registry::default(), ConnectionStats::default());
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let busy = registry.admit(ip("10.0.0.1"), &limits, &stats).ok().expect("first");
        busy.1.store(true, Relaxed);
        let idle = registry.admit(ip("10.0.1.1"), &limits, &stats).ok().expect("second");
        registry.admit(ip("10.0.2.1"), &limits, &stats).ok().expect("third");
        // Full: the oldest idle (the second) is closed for the newcomer.
        registry.admit(ip("10.0.3.1"), &limits, &stats).ok().expect("admitted by eviction");
        assert_eq!(stats.evicted.load(Relaxed), 1);
        let notified = idle.2.notified();
        futures_free_poll(notified);
        // Per source is never evicted for: a third from one address is refused.
        registry.admit(ip("10.0.0.1"), &limits, &stats).ok().expect("its second");
        assert!(matches!(registry.admit(ip("10.0.0.1"), &limits, &stats), Err(Refused::PerSource)));
    }

    /// A kept-alive connection that asked once and then sends nothing is
    /// closed after `idle_timeout` (counted), well before the header
    /// timeout would; one that keeps asking stays open.
    #[test]
    fn an_idle_kept_alive_connection_is_closed_after_idle_timeout() {
        use std::io::{Read, Write};
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let limits = Limits::from_settings(
            8,
            8,
            None,
            Duration::from_secs(300),
            None,
            Some(Duration::from_millis(300)),
        );
        let stats = Arc::new(ConnectionStats::default());
        let (stop_tx, stop) = watch::channel(false);
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = std_listener.local_addr().expect("addr");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let listener = {
            let _in = rt.enter();
            TcpListener::from_std(std_listener).expect("listener")
        };
        let served = Arc::clone(&stats);
        rt.spawn(serve("test", listener, limits, served, stop, |_req, _ip| async {
            Response::new(http_body_util::Full::new(Bytes::from_static(b"ok")))
        }));
        let ask = |c: &mut std::net::TcpStream| {
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
            let mut answer = [0u8; 256];
            let n = c.read(&mut answer).expect("answer");
            assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 200"), "an answer");
        };
        let mut idle = std::net::TcpStream::connect(addr).expect("connect");
        idle.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        ask(&mut idle);
        let mut busy = std::net::TcpStream::connect(addr).expect("connect");
        busy.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        // The busy one asks every 50 ms while the idle one waits to be closed.
        let mut closed = false;
        for _ in 0..600 {
            ask(&mut busy);
            std::thread::sleep(Duration::from_millis(50));
            idle.set_nonblocking(true).expect("nonblocking");
            let mut byte = [0u8; 1];
            closed = matches!(idle.read(&mut byte), Ok(0));
            idle.set_nonblocking(false).expect("blocking");
            if closed {
                break;
            }
        }
        assert!(closed, "the idle connection was closed");
        let mut idle_timeouts = 0;
        stats.samples(&mut |s| {
            if s.metric.name == "idle_timeouts" {
                idle_timeouts = s.value;
            }
        });
        assert_eq!(idle_timeouts, 1, "counted once; the connection that kept asking stays");
        ask(&mut busy);
        stop_tx.send(true).expect("stop");
    }

    /// The eviction notice is stored: the connection's task sees it at once.
    fn futures_free_poll(notified: tokio::sync::futures::Notified<'_>) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), notified).await.expect("notified");
        });
    }
}
