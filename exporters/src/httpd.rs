//! The one small HTTP/1.1 server behind every endpoint the collector
//! serves (the Prometheus exporter, the `health_check` extension): hyper on
//! the collector's Tokio runtime, never on a pipeline thread.
//!
//! Promises: at most `max_connections` connections are open (more are
//! closed at once and counted); request headers are bounded in size (16 KiB
//! buffer, 32 fields) and in time (`header_timeout`, slowloris); accept
//! errors are logged at a limited pace and never spin; a stop request ends
//! the accept loop and asks open connections to finish. What a request gets
//! is the caller's `handle`.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use varta_pipeline::clock::monotonic_ns;
use varta_pipeline::{Metric, Sample};

/// Connection bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

/// Connection counters of one endpoint.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    connections: AtomicU64,
    refused: AtomicU64,
    open: AtomicU64,
    errors: AtomicU64,
}

/// The connection metrics (part of an endpoint's component).
pub mod metric {
    use varta_pipeline::Metric;

    pub static CONNECTIONS: Metric = Metric::counter("connections", "HTTP connections accepted.");
    pub static CONNECTIONS_REFUSED: Metric =
        Metric::counter("connections_refused", "HTTP connections closed at once: max_connections reached.");
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
        let all: [(&'static Metric, &AtomicU64); 4] = [
            (&CONNECTIONS, &self.connections),
            (&CONNECTIONS_REFUSED, &self.refused),
            (&CONNECTIONS_OPEN, &self.open),
            (&CONNECTION_ERRORS, &self.errors),
        ];
        for (m, v) in all {
            out(Sample::new(m, v.load(Relaxed)));
        }
    }
}

/// Keeps `connections_open` exact however a connection ends.
struct OpenConnection(Arc<ConnectionStats>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

/// Accepts and serves connections until `stop` turns true; `name` appears
/// in log lines.
pub async fn serve<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    limits: Limits,
    stats: Arc<ConnectionStats>,
    mut stop: watch::Receiver<bool>,
    handle: F,
) where
    F: Fn(Request<Incoming>, IpAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
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
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            stats.refused.fetch_add(1, Relaxed);
            drop(stream);
            continue;
        };
        stats.connections.fetch_add(1, Relaxed);
        stats.open.fetch_add(1, Relaxed);
        let open = OpenConnection(Arc::clone(&stats));
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
