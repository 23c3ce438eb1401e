//! Health as progress, not thread existence, and the `health_check`
//! extension that serves it.
//!
//! Promises: every pipeline stage (each receiver, processor and event
//! exporter) is judged by its progress counter *while work waits for it*: a
//! stage whose socket or queue is non-empty and whose counter has not moved
//! for `service.progress_timeout` is unhealthy (an idle stage blocked on an
//! empty socket or queue is healthy). A stage whose thread ended is unhealthy.
//! The main loop re-checks once per tick; the systemd watchdog is fed and
//! the endpoint answers 200 only while everything is healthy; 503 while
//! starting, while shutting down, or naming the unhealthy components in a
//! small JSON body. The endpoint runs on the collector's async runtime with
//! the bounds of [`varta_exporters::httpd`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Response, StatusCode};
use serde::Deserialize;
use tokio::sync::watch;
use varta_exporters::httpd::{self, ConnectionStats, Limits};

fn default_endpoint() -> String {
    "127.0.0.1:13133".into()
}
fn default_path() -> String {
    "/".into()
}

/// `extensions: health_check:`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    #[serde(default = "default_path")]
    pub path: String,
    /// Open connections at most.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open connections at most from one source address, so that a
    /// neighbour's idle connections never starve the kubelet's probes.
    #[serde(default = "default_max_connections_per_source")]
    pub max_connections_per_source: usize,
    /// Open connections at most from one range of addresses (loopback as
    /// one, IPv4 /24, IPv6 /64); default a quarter of `max_connections`.
    #[serde(default)]
    pub max_connections_per_range: Option<usize>,
    /// Time a client has to send its request headers; an idle connection
    /// frees its slot then.
    /// `read_header_timeout` (the Collector's `confighttp` name) is accepted.
    #[serde(
        default = "default_header_timeout",
        alias = "read_header_timeout",
        deserialize_with = "varta_pipeline::config::duration"
    )]
    pub header_timeout: Duration,
    /// An answer whose writing makes no progress this long (a client that
    /// does not read) ends its connection (default `10s`).
    #[serde(default, deserialize_with = "varta_pipeline::config::opt_duration")]
    pub write_timeout: Option<Duration>,
    /// A kept-alive connection with no request in progress that sends
    /// nothing this long is closed (default `60s`).
    #[serde(default, deserialize_with = "varta_pipeline::config::opt_duration")]
    pub idle_timeout: Option<Duration>,
}

fn default_max_connections() -> usize {
    256
}
fn default_max_connections_per_source() -> usize {
    4
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(2)
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            endpoint: default_endpoint(),
            path: default_path(),
            max_connections: default_max_connections(),
            max_connections_per_source: default_max_connections_per_source(),
            max_connections_per_range: None,
            header_timeout: default_header_timeout(),
            write_timeout: None,
            idle_timeout: None,
        }
    }
}

impl HealthCheckConfig {
    /// Its connection bounds.
    pub fn limits(&self) -> Limits {
        Limits::from_settings(
            self.max_connections,
            self.max_connections_per_source,
            self.max_connections_per_range,
            self.header_timeout,
            self.write_timeout,
            self.idle_timeout,
        )
    }

    pub fn validate(&self) -> Result<(), String> {
        self.endpoint.parse::<SocketAddr>().map_err(|_| {
            format!("`endpoint` {:?} is not an IP:port address (e.g. 127.0.0.1:13133)", self.endpoint)
        })?;
        if !self.path.starts_with('/') {
            return Err(format!("`path` {:?} must start with `/`", self.path));
        }
        self.limits().validate()?;
        Ok(())
    }
}

/// Where the collector is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Running,
    Stopping,
}

/// The latest verdict, shared by the main loop (writer) and the endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub phase: Phase,
    /// `(component, why)` of every unhealthy component.
    pub unhealthy: Vec<(String, String)>,
    /// `(component, what)` of components that failed and were restarted
    /// (an exporter task that panicked): shown, but healthy — failing the
    /// probe would restart a collector that already recovered.
    pub recovered: Vec<(String, String)>,
}

impl Report {
    pub fn healthy(&self) -> bool {
        self.phase == Phase::Running && self.unhealthy.is_empty()
    }

    fn json(&self) -> String {
        let status = match (self.phase, self.unhealthy.is_empty()) {
            (Phase::Starting, _) => "starting",
            (Phase::Stopping, _) => "stopping",
            (Phase::Running, true) => "ok",
            (Phase::Running, false) => "unhealthy",
        };
        let map = |list: &[(String, String)]| -> serde_json::Map<String, serde_json::Value> {
            list.iter().map(|(c, why)| (c.clone(), serde_json::Value::String(why.clone()))).collect()
        };
        serde_json::json!({ "status": status, "unhealthy": map(&self.unhealthy), "recovered": map(&self.recovered) })
            .to_string()
    }
}

pub type SharedReport = Arc<Mutex<Report>>;

pub fn shared_report() -> SharedReport {
    Arc::new(Mutex::new(Report { phase: Phase::Starting, unhealthy: Vec::new(), recovered: Vec::new() }))
}

/// Reads one stage: `(progress counter, work waiting)`.
pub use varta_embed::compose::Probe;

/// One stage under watch.
pub struct Stage {
    pub component: String,
    probe: Probe,
    last: u64,
    stuck_since: Option<Instant>,
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stage").field("component", &self.component).finish_non_exhaustive()
    }
}

impl Stage {
    pub fn new(component: impl Into<String>, probe: Probe) -> Stage {
        Stage { component: component.into(), probe, last: 0, stuck_since: None }
    }

    /// `Some(why)` when the stage has had work waiting without progress for
    /// at least `timeout`.
    pub fn check(&mut self, now: Instant, timeout: Duration) -> Option<String> {
        let (progress, waiting) = (self.probe)();
        if progress != self.last || !waiting {
            self.last = progress;
            self.stuck_since = None;
            return None;
        }
        let since = *self.stuck_since.get_or_insert(now);
        let stuck = now.duration_since(since);
        (stuck >= timeout).then(|| format!("work waiting, no progress for {:.1} s", stuck.as_secs_f64()))
    }
}

fn respond(report: &SharedReport, path: &str, method: &Method, uri_path: &str) -> Response<Full<Bytes>> {
    let (status, body) = if uri_path != path {
        (StatusCode::NOT_FOUND, "{\"status\":\"not found\"}".to_owned())
    } else if method != Method::GET && method != Method::HEAD {
        (StatusCode::METHOD_NOT_ALLOWED, "{\"status\":\"method not allowed\"}".to_owned())
    } else {
        let r = report.lock().map(|r| r.clone()).unwrap_or_else(|p| p.into_inner().clone());
        (if r.healthy() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, r.json())
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A bound health endpoint.
#[derive(Debug)]
pub struct HealthServer {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    /// Its connection counters (`connections_refused{reason}` …).
    pub connections: Arc<ConnectionStats>,
}

impl HealthServer {
    /// Binds now (so a startup error stops the collector before anything
    /// receives) and serves `report` on `runtime`.
    pub fn start(
        config: &HealthCheckConfig,
        report: SharedReport,
        runtime: &tokio::runtime::Handle,
    ) -> Result<HealthServer, String> {
        let addr: SocketAddr =
            config.endpoint.parse().map_err(|_| format!("bad endpoint {}", config.endpoint))?;
        let std_listener =
            std::net::TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        std_listener.set_nonblocking(true).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener)
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?
        };
        let (stop, stopped) = watch::channel(false);
        let path = config.path.clone();
        let limits = config.limits();
        let connections = Arc::new(ConnectionStats::default());
        let task = runtime.spawn(httpd::serve(
            "health endpoint",
            listener,
            limits,
            Arc::clone(&connections),
            stopped,
            move |req, _peer| {
                let resp = respond(&report, &path, req.method(), req.uri().path());
                async move { resp }
            },
        ));
        tracing::info!(%addr, "health endpoint listening");
        Ok(HealthServer { stop, task, connections })
    }

    /// Whether it stopped serving (its listener is closed).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

    #[test]
    fn stuck_only_while_work_waits() {
        let progress = Arc::new(AtomicU64::new(0));
        let waiting = Arc::new(AtomicU64::new(0));
        let (p, w) = (Arc::clone(&progress), Arc::clone(&waiting));
        let mut stage = Stage::new("pipelines::x", Box::new(move || (p.load(Relaxed), w.load(Relaxed) > 0)));
        let t0 = Instant::now();
        let limit = Duration::from_secs(5);
        assert_eq!(stage.check(t0, limit), None);
        assert_eq!(stage.check(t0 + Duration::from_secs(60), limit), None, "idle: nothing waits");
        waiting.store(3, Relaxed);
        assert_eq!(stage.check(t0 + Duration::from_secs(61), limit), None, "just became stuck");
        assert!(
            stage.check(t0 + Duration::from_secs(67), limit).is_some(),
            "stuck for 6 s with work waiting"
        );
        progress.store(1, Relaxed);
        assert_eq!(stage.check(t0 + Duration::from_secs(68), limit), None, "progress clears it");
    }

    #[test]
    fn reports_map_to_status_codes() {
        let report = shared_report();
        let get = |r: &SharedReport| respond(r, "/", &Method::GET, "/").status();
        assert_eq!(get(&report), StatusCode::SERVICE_UNAVAILABLE, "starting");
        report.lock().expect("lock").phase = Phase::Running;
        assert_eq!(get(&report), StatusCode::OK);
        report.lock().expect("lock").unhealthy.push(("pipelines::liveness".into(), "stuck".into()));
        assert_eq!(get(&report), StatusCode::SERVICE_UNAVAILABLE);
        assert!(report.lock().expect("lock").json().contains("pipelines::liveness"));
        assert_eq!(respond(&report, "/", &Method::GET, "/x").status(), StatusCode::NOT_FOUND);
        assert_eq!(respond(&report, "/", &Method::POST, "/").status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
