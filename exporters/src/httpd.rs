//! The one small HTTP/1.1 server behind every endpoint the collector
//! serves (the Prometheus exporter, the `health_check` extension): hyper on
//! the collector's Tokio runtime, never on a pipeline thread.
//!
//! Promises: at most `max_connections` connections are open, and at most
//! `max_connections_per_source` from one source address — so one
//! neighbour opening (idle) connections can never take the slots probes
//! and scrapes from elsewhere need; more are closed at once and counted by
//! reason (`connections_refused{reason=per_source|total}`); request headers
//! are bounded in size (16 KiB buffer, 32 fields) and in time
//! (`header_timeout`, slowloris: a connection that sends nothing frees its
//! slot then); accept
//! errors are logged at a limited pace and never spin; a stop request ends
//! the accept loop and asks open connections to finish. What a request gets
//! is the caller's `handle`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::{Body, Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use varta_pipeline::clock::monotonic_ns;
use varta_pipeline::{Metric, Sample};

/// Connection bounds (the `max_connections`, `max_connections_per_source`
/// and `header_timeout` keys of every endpoint's configuration).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    pub header_timeout: Duration,
}

impl Limits {
    /// The same bounds for every endpoint; errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_connections == 0 || self.max_connections > 65_536 {
            return Err("`max_connections` must be between 1 and 65536".into());
        }
        if self.max_connections_per_source == 0 || self.max_connections_per_source > self.max_connections {
            return Err("`max_connections_per_source` must be between 1 and `max_connections`".into());
        }
        if self.header_timeout.is_zero() || self.header_timeout > Duration::from_secs(300) {
            return Err("`header_timeout` must be between 1ms and 5m".into());
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
    open: AtomicU64,
    errors: AtomicU64,
}

/// The connection metrics (part of an endpoint's component).
pub mod metric {
    use varta_pipeline::Metric;

    pub static CONNECTIONS: Metric = Metric::counter("connections", "HTTP connections accepted.");
    pub static CONNECTIONS_REFUSED: Metric = Metric::labelled(
        "connections_refused",
        "reason",
        "HTTP connections closed at once: per_source (max_connections_per_source from that address reached) or total (max_connections reached).",
    );
    pub static CONNECTIONS_OPEN: Metric = Metric::gauge("connections_open", "HTTP connections open now.");
    pub static CONNECTION_ERRORS: Metric = Metric::counter(
        "connection_errors",
        "HTTP connections ended by an error (malformed request, header timeout, reset).",
    );
}

impl ConnectionStats {
    /// Lists the connection samples.
    pub fn samples(&self, out: &mut dyn FnMut(Sample)) {
        use metric::*;
        let all: [(&'static Metric, &AtomicU64); 3] = [
            (&CONNECTIONS, &self.connections),
            (&CONNECTIONS_OPEN, &self.open),
            (&CONNECTION_ERRORS, &self.errors),
        ];
        for (m, v) in all {
            out(Sample::new(m, v.load(Relaxed)));
        }
        out(Sample::labelled(&CONNECTIONS_REFUSED, "per_source", self.refused_per_source.load(Relaxed)));
        out(Sample::labelled(&CONNECTIONS_REFUSED, "total", self.refused_total.load(Relaxed)));
    }
}

impl varta_pipeline::Instrumented for ConnectionStats {
    fn samples(&self, out: &mut dyn FnMut(Sample)) {
        ConnectionStats::samples(self, out);
    }
}

/// Open connections per source address. Holds only addresses with a
/// connection open, so it is bounded by `max_connections`.
#[derive(Debug, Default)]
struct PerSource(Mutex<HashMap<IpAddr, usize>>);

impl PerSource {
    /// Takes a slot for `ip` unless it already holds `max`.
    fn take(&self, ip: IpAddr, max: usize) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    fn give_back(&self, ip: IpAddr) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

/// Keeps `connections_open` and the per-source count exact however a
/// connection ends.
struct OpenConnection {
    stats: Arc<ConnectionStats>,
    sources: Arc<PerSource>,
    ip: IpAddr,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Relaxed);
        self.sources.give_back(self.ip);
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
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let sources = Arc::new(PerSource::default());
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
        // it can take one of the slots everybody shares.
        if !sources.take(peer.ip(), limits.max_connections_per_source) {
            stats.refused_per_source.fetch_add(1, Relaxed);
            drop(stream);
            continue;
        }
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            sources.give_back(peer.ip());
            stats.refused_total.fetch_add(1, Relaxed);
            drop(stream);
            continue;
        };
        stats.connections.fetch_add(1, Relaxed);
        stats.open.fetch_add(1, Relaxed);
        let open = OpenConnection { stats: Arc::clone(&stats), sources: Arc::clone(&sources), ip: peer.ip() };
        let stats = Arc::clone(&stats);
        let handle = handle.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _open = open;
            let service = service_fn(move |req| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(handle(req, peer.ip()).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(16 * 1024)
                .max_headers(32)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
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
