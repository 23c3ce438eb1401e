//! The `otlp` and `otlphttp` exporters: liveness metrics and
//! stall-incident traces pushed over OTLP/gRPC ([`grpc`]) or OTLP/HTTP
//! ([`http`]) to any OpenTelemetry backend (an OpenTelemetry Collector,
//! Tempo, Jaeger, a vendor). One sending core serves both: everything
//! below but the wire is shared ([`client`]).
//!
//! Shape: the exporter thread (behind the usual two-lane
//! [`crate::ExporterQueue`]) turns incident events into spans
//! ([`traces`]) and appends them to a bounded *sending queue*; two tasks on
//! the collector's shared Tokio runtime do all network I/O — one sends
//! queued spans as soon as they are there (batches of up to
//! [`MAX_SPANS_PER_REQUEST`], so detection → export takes one round trip,
//! well under a second), one reads the [`CollectorView`](crate::view::CollectorView) every
//! `metrics.interval` and sends metrics ([`metrics`]).
//!
//! Promises:
//! * **Never blocks ingestion.** The exporter thread never waits on the
//!   network; the processor never waits on the exporter thread (its queue
//!   drops oldest and counts). Backend down or slow: spans wait in the
//!   sending queue (`sending_queue.queue_size`), the oldest is dropped and
//!   counted when it is full, failures are logged at most once per 10 s
//!   with a count, and export resumes by itself when the backend returns.
//! * **Never loses an incident silently.** See [`stats`]: every span ends
//!   up exported, failed, or dropped with a reason — all counted.
//! * **Bounded shutdown.** Dropping the exporter (at the end of its thread,
//!   after the pipeline drained) sends what is queued and a final metrics
//!   export, waiting at most `service.shutdown_timeout`; spans still queued
//!   then are counted `dropped{shutdown}`. Only the exporter thread waits,
//!   never a runtime worker.
//!
//! Which OpenTelemetry crate serves where, and why:
//! * `opentelemetry-proto`: the OTLP messages and gRPC stubs, built
//!   directly. The SDK's `BatchSpanProcessor` drops spans on overflow
//!   without a counter we can read and exports on a thread of its own; SDK
//!   metric data cannot be built by hand and there is no observable
//!   histogram, while the processor already keeps the stall-duration
//!   histogram. Building the messages ourselves gives every promise above,
//!   exact histogram buckets, agent resources made per incident, and no SDK
//!   call on the event path. Its `with-serde` mapping is the OTLP/JSON
//!   encoding of `otlphttp`.
//! * `opentelemetry-semantic-conventions`: attribute names ([`resource`],
//!   [`attrs`]).
//! * Not `opentelemetry-otlp`: its exporters take SDK data (see above), its
//!   builders panic outside a Tokio runtime and its partial-success
//!   rejections are logged, not returned — we count them. Its
//!   `OTEL_EXPORTER_OTLP_*` handling lives in those builders, so [`env`]
//!   reads the same variables into our configuration instead.
//! * Not the SDK trace model (`SpanData`, `SpanContext`, `Status`, `Event`)
//!   with `opentelemetry-proto`'s transforms: a span here is made once, from
//!   an incident event, with ids derived from the incident ([`ids`]) and a
//!   resource per agent; `SpanData` would be a second copy of the same
//!   fields on the way to the proto message, and the transform groups a
//!   batch under one resource per call. The embedding façade (`varta-embed`)
//!   emits the same spans through the `opentelemetry` API, where that model
//!   is the natural one: the host program's SDK owns the export.
//! * Not `opentelemetry_sdk::Resource`: a resource here is a handful of
//!   key-values made per incident from the resolver's store; an SDK value
//!   converted straight back to the proto would be a wrapper for its own
//!   sake. The embedding façade (which reports through a host program's
//!   SDK) is where the SDK types belong.

mod client;
pub mod config;
pub mod env;
mod grpc;
mod http;
mod retry;
pub mod stats;
mod tls;

// The transport-free shape of what is sent (varta-telemetry).
use varta_telemetry::{ids, metrics, resource, traces, wallclock};

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::metrics::v1::{Metric, ResourceMetrics, ScopeMetrics};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use varta_agents::AttributeStore;
use varta_pipeline::LogThrottle;
use varta_pipeline::clock::monotonic_ns;
use varta_processor::{AgentId, Event, SnapshotReader};

use crate::Exporter;
use crate::queue::{is_incident, is_notice};
use client::Client;
pub use config::OtlpExporterConfig;
use ids::IdSource;
use retry::{Failure, with_retry};
pub use stats::{OtlpStats, OtlpTelemetry};
use traces::SpanBuilder;
use wallclock::WallClock;

/// Spans per export request (a few hundred bytes each: far below gRPC's
/// 4 MiB default message limit).
pub const MAX_SPANS_PER_REQUEST: usize = 1024;
/// Data points per metrics request, for the same reason.
pub const MAX_POINTS_PER_REQUEST: usize = 8192;

/// The collector's view, filled in once every component has started (the
/// exporter starts before the view is complete: it must be ready before
/// the first event exists) and replaced by reloads. Until it is set metric
/// exports are skipped.
pub type ViewCell = crate::view::LiveView;

/// When the collector's ordered shutdown must be over; set once shutdown
/// begins. The exporter's final flush never waits past it (nor past
/// `shutdown_timeout` from its own start, if it was never set).
pub type ShutdownDeadline = Arc<OnceLock<Instant>>;

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error(transparent)]
    Config(#[from] config::OtlpConfigError),
    #[error("endpoint: {0}")]
    Endpoint(String),
    #[error("tls: {0}")]
    Tls(String),
}

/// A span waiting to be sent, with the resource it is about (`None`: the
/// collector's) and the agent it belongs to, so that a request groups one
/// `ResourceSpans` per agent.
#[derive(Debug)]
struct QueuedSpan {
    owner: Option<(usize, AgentId)>,
    resource: Option<Resource>,
    span: Span,
    /// From an event the agent chose to cause (a panic): dropped first when
    /// the queue is full, so it never displaces an incident's span.
    notice: bool,
}

impl QueuedSpan {
    #[cfg(test)]
    fn of_collector(span: Span) -> QueuedSpan {
        QueuedSpan { owner: None, resource: None, span, notice: false }
    }
}

/// State shared by the exporter thread and the sender tasks.
#[derive(Debug)]
struct Shared {
    spans: Mutex<VecDeque<QueuedSpan>>,
    capacity: usize,
    /// Spans of the export call in progress. Whoever swaps it to zero
    /// counts them: the sender when the call ends, or shutdown when the
    /// deadline passed first — so each span is counted exactly once.
    in_flight: AtomicU64,
    stats: Arc<OtlpStats>,
    /// Spans were queued (or the exporter is closing).
    wake: Notify,
    /// The exporter is closing: send what is left, once, and stop.
    closing: AtomicBool,
    closed: Notify,
    /// Incidents since the last metrics collection (bounded per series).
    exemplars: Mutex<metrics::Exemplars>,
    /// Agents evicted since the last metrics collection, whose series it
    /// ends with staleness points (at most [`MAX_DEPARTED`]).
    departed: Mutex<Vec<metrics::Departed>>,
}

/// Evicted agents waiting for their staleness points, at most; beyond it
/// they are counted (`stale_markers_dropped`) and their series simply stop.
const MAX_DEPARTED: usize = 65_536;

impl Shared {
    /// Queues a span; when full, the oldest notice goes first (else the
    /// oldest span), counted — an agent's panics never push out a stall.
    fn push(&self, span: QueuedSpan) {
        let mut q = self.spans.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= self.capacity {
            match q.iter().position(|s| s.notice) {
                Some(at) => drop(q.remove(at)),
                None if span.notice => {
                    self.stats.spans_dropped_full.fetch_add(1, Relaxed);
                    return;
                }
                None => drop(q.pop_front()),
            }
            self.stats.spans_dropped_full.fetch_add(1, Relaxed);
        }
        q.push_back(span);
        self.stats.spans_queued.store(q.len() as u64, Relaxed);
    }

    fn take(&self, max: usize) -> Vec<QueuedSpan> {
        let mut q = self.spans.lock().unwrap_or_else(|p| p.into_inner());
        let n = q.len().min(max);
        let batch: Vec<QueuedSpan> = q.drain(..n).collect();
        self.stats.spans_queued.store(q.len() as u64, Relaxed);
        batch
    }

    fn is_closing(&self) -> bool {
        self.closing.load(Relaxed)
    }

    /// Resolves once the exporter is closing.
    async fn until_closing(&self) {
        loop {
            let notified = self.closed.notified();
            if self.is_closing() {
                return;
            }
            notified.await;
        }
    }
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is valid and writable for its length; gethostname writes
    // at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..end].to_vec()).ok().filter(|h| !h.is_empty())
}

/// This process's `service.instance.id`, drawn once.
fn process_instance_id() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| instance_id(ids::random_salt(), ids::random_salt())).clone()
}

/// A random UUID (v4) string: this process's `service.instance.id`.
fn instance_id(a: u64, b: u64) -> String {
    let a = (a & !0xf000) | 0x4000; // version 4
    let b = (b & !(0b11 << 62)) | (0b10 << 62); // RFC 4122 variant
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// One pipeline an `otlp` exporter serves.
#[derive(Debug, Clone)]
pub struct PipelineWiring {
    /// Its name (trace ids and the `varta.pipeline` attribute).
    pub name: String,
    /// Its snapshots (processor clock).
    pub snapshots: SnapshotReader,
    /// Its resolver store (agent attributes), if it has one.
    pub attributes: Option<Arc<AttributeStore>>,
}

/// What the collector hands an `otlp` exporter besides its configuration.
#[derive(Debug, Clone)]
pub struct Wiring {
    /// The pipelines whose events this exporter receives; events from
    /// source `i` (see [`crate::ExporterQueue::share_as`]) belong to the
    /// `i`-th.
    pub pipelines: Vec<PipelineWiring>,
    /// The whole collector, for metrics (filled in once everything started).
    pub view: ViewCell,
    /// The collector's shared Tokio runtime, where all network I/O runs.
    pub runtime: Handle,
    /// `service.shutdown_timeout`.
    pub shutdown_timeout: Duration,
    /// Set when the collector's shutdown begins.
    pub shutdown_deadline: ShutdownDeadline,
}

/// Per served pipeline: how its incidents become spans.
#[derive(Debug)]
struct Source {
    spans: SpanBuilder,
    clock: WallClock,
    /// The pipeline's name and attributes: what names an agent's series.
    name: String,
    attributes: Option<Arc<varta_agents::AttributeStore>>,
}

/// The `otlp` exporter (the part on the exporter thread). See the module docs.
#[derive(Debug)]
pub struct OtlpExporter {
    id: String,
    traces_enabled: bool,
    sources: Vec<Source>,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    shutdown_timeout: Duration,
    shutdown_deadline: ShutdownDeadline,
    steps_logged: LogThrottle,
    /// How per-agent series are named (see [`metrics::agent_series`]),
    /// when this exporter sends them: evicted agents get staleness points.
    agent_series: Option<Option<Option<String>>>,
}

impl OtlpExporter {
    /// Starts the sender tasks on the shared runtime and returns the
    /// exporter (for an [`crate::ExporterQueue`]) and its counters.
    pub fn start(
        id: &str,
        config: &OtlpExporterConfig,
        wiring: Wiring,
    ) -> Result<(OtlpExporter, Arc<OtlpStats>), OtlpError> {
        let Wiring { pipelines, view, runtime, shutdown_timeout, shutdown_deadline } = wiring;
        config.validate()?;
        if config.tls.insecure_skip_verify {
            tracing::warn!(exporter = %id, "tls.insecure_skip_verify: the backend's certificate is not verified; anyone on the path can impersonate it");
        }
        let client = {
            // tonic's lazy channel spawns its worker on the current runtime.
            let _guard = runtime.enter();
            Client::connect(config)?
        };
        // One trace per incident across exporter restarts, and one
        // `service.instance.id` for the life of the process.
        let salt = ids::process_salt();
        let instance = process_instance_id();
        let host_name = hostname();
        let own = Arc::new(Identity {
            resource: resource::collector(&config.resource, &instance, host_name.as_deref(), |k| {
                std::env::var(k).ok()
            }),
            scope: resource::scope(&instance),
        });
        let stats = Arc::new(OtlpStats::default());
        let shared = Arc::new(Shared {
            spans: Mutex::new(VecDeque::new()),
            capacity: config.sending_queue.queue_size,
            in_flight: AtomicU64::new(0),
            stats: stats.clone(),
            wake: Notify::new(),
            closing: AtomicBool::new(false),
            closed: Notify::new(),
            exemplars: Mutex::default(),
            departed: Mutex::default(),
        });
        let sources = pipelines
            .into_iter()
            .map(|p| {
                let spans = SpanBuilder::new(IdSource::new(salt, &p.name), &p.name)
                    .with_attributes(p.attributes.clone());
                Source {
                    name: p.name.clone(),
                    attributes: p.attributes,
                    spans: if config.agent_resource {
                        spans.with_agent_resource(host_name.clone())
                    } else {
                        spans
                    },
                    clock: WallClock::new(p.snapshots.latest().clock),
                }
            })
            .collect();
        let agent_series = (config.metrics.enabled && config.metrics.per_agent)
            .then(|| config.agent_resource.then(|| host_name.clone()));
        let mut tasks = Vec::new();
        if config.traces.enabled {
            let (id, shared, client, own, config) =
                (id.to_owned(), shared.clone(), client.fork(), own.clone(), config.clone());
            let stats = shared.stats.clone();
            tasks.push(runtime.spawn(supervised(id.clone(), "span sender", stats, move || {
                send_spans(id.clone(), shared.clone(), client.fork(), own.clone(), config.clone())
            })));
        }
        if config.metrics.enabled {
            let started_ns = u64::try_from(wallclock::unix_now_ns()).unwrap_or(0);
            let (id, shared, own, config) = (id.to_owned(), shared.clone(), own, config.clone());
            let stats = shared.stats.clone();
            tasks.push(runtime.spawn(supervised(id.clone(), "metrics sender", stats, move || {
                let builder = metrics::MetricsBuilder::new(
                    config.metrics.temporality,
                    config.metrics.per_agent,
                    started_ns,
                )
                .with_agent_resource(config.agent_resource.then(|| host_name.clone()));
                send_metrics(
                    id.clone(),
                    shared.clone(),
                    client.fork(),
                    own.clone(),
                    config.clone(),
                    builder,
                    view.clone(),
                )
            })));
        }
        let exporter = OtlpExporter {
            agent_series,
            id: id.to_owned(),
            traces_enabled: config.traces.enabled,
            sources,
            shared,
            tasks,
            shutdown_timeout,
            shutdown_deadline,
            steps_logged: LogThrottle::default(),
        };
        Ok((exporter, stats))
    }
}

impl OtlpExporter {
    /// Notes an evicted agent's series for their staleness points, named
    /// now, while its attributes still linger in the resolver's store.
    fn depart(&mut self, source: usize, agent: &varta_processor::AgentRef, at_ns: u64) {
        let (Some(series), Some(src)) = (&self.agent_series, self.sources.get(source)) else { return };
        let store = src.attributes.as_deref().map(varta_agents::AttributeStore::read);
        let resolved = store.as_ref().and_then(|s| s.get(&agent.id));
        let (resource, attributes) = metrics::agent_series(series, &src.name, agent, resolved.as_ref());
        drop(store);
        let departed = metrics::Departed { resource, attributes, at_unix_ns: src.clock.to_unix_ns(at_ns) };
        let mut list = self.shared.departed.lock().unwrap_or_else(|p| p.into_inner());
        if list.len() >= MAX_DEPARTED {
            self.shared.stats.stale_markers_dropped.fetch_add(1, Relaxed);
        } else {
            list.push(departed);
        }
    }
}

impl Exporter for OtlpExporter {
    fn wants_beats(&self) -> bool {
        false
    }

    fn export(&mut self, event: &Event) -> std::io::Result<()> {
        self.export_from(0, event)
    }

    fn export_from(&mut self, source: usize, event: &Event) -> std::io::Result<()> {
        if let (varta_processor::EventKind::Evicted { .. }, Some(agent)) = (&event.kind, &event.agent) {
            self.depart(source, agent, event.at_ns);
        }
        let notice = is_notice(&event.kind);
        if !self.traces_enabled || !(is_incident(&event.kind) || notice) {
            return Ok(());
        }
        let Some(src) = self.sources.get_mut(source) else { return Ok(()) };
        if src.clock.check_step() {
            self.shared.stats.clock_steps.fetch_add(1, Relaxed);
            if let Some(count) = self.steps_logged.note(monotonic_ns()) {
                tracing::warn!(exporter = %self.id, count, "wall clock stepped; span timestamps follow the new wall-clock time");
            }
        }
        if let Some(span) = src.spans.span(event, &src.clock) {
            let exemplar = match event.kind {
                varta_processor::EventKind::Stall { .. } => Some((metrics::ExemplarSeries::Stalls, 1.0)),
                varta_processor::EventKind::Resume { silence_ns, .. } => {
                    Some((metrics::ExemplarSeries::StallDuration, silence_ns as f64 / 1e9))
                }
                _ => None,
            };
            if let Some((series, value)) = exemplar {
                let mut ex = self.shared.exemplars.lock().unwrap_or_else(|p| p.into_inner());
                ex.note(src.spans.pipeline(), series, &span, value);
            }
            let agent = event.agent.as_ref();
            let resource = agent.and_then(|a| src.spans.resource(a));
            let owner = agent.filter(|_| resource.is_some()).map(|a| (source, a.id));
            self.shared.push(QueuedSpan { owner, resource, span, notice });
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.shared.wake.notify_one();
        Ok(())
    }
}

impl Drop for OtlpExporter {
    fn drop(&mut self) {
        self.shared.closing.store(true, Relaxed);
        self.shared.wake.notify_one();
        self.shared.closed.notify_waiters();
        let own = Instant::now() + self.shutdown_timeout;
        // A little before the collector's deadline, so that this thread has
        // ended when the collector checks.
        let deadline = self
            .shutdown_deadline
            .get()
            .map_or(own, |d| d.checked_sub(Duration::from_millis(100)).unwrap_or(*d).min(own));
        // This is the exporter's own thread, never a runtime worker, so
        // waiting here cannot stall the runtime.
        while self.tasks.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        for t in &self.tasks {
            t.abort();
        }
        let left = self.shared.take(usize::MAX).len() as u64 + self.shared.in_flight.swap(0, Relaxed);
        if left > 0 {
            self.shared.stats.spans_dropped_shutdown.fetch_add(left, Relaxed);
            tracing::warn!(exporter = %self.id, spans = left, "shutdown deadline passed with spans not yet delivered; counted as dropped");
        }
    }
}

/// Runs the task `start` makes, and makes it again whenever it panics —
/// a bug, or an answer nobody foresaw, must never stop an exporter for
/// good. The queue and counters live in [`Shared`], so nothing queued is
/// lost; each panic is logged and counted (`task_panics`). Aborting the
/// supervisor (shutdown) aborts the task it runs.
async fn supervised<F, Fut>(id: String, what: &'static str, stats: Arc<OtlpStats>, mut start: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    /// Aborts the task when the supervisor goes (shutdown aborts it).
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut runs = 0u32;
    loop {
        let run = start();
        let panics = panic_for_tests(runs);
        runs = runs.saturating_add(1);
        let mut task = AbortOnDrop(tokio::spawn(async move {
            assert!(!panics, "VARTA_TEST_PANIC_EXPORTER_TASKS: a panic on purpose (test hook)");
            run.await
        }));
        match (&mut task.0).await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                stats.task_panics.fetch_add(1, Relaxed);
                tracing::error!(exporter = %id, "the {what} panicked and is restarted; its queue is kept");
                // Not a tight loop if it panics at once again.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => return,
        }
    }
}

/// Test hook (debug builds only): with `VARTA_TEST_PANIC_EXPORTER_TASKS=N`
/// the first N runs of every supervised task panic at once.
fn panic_for_tests(run: u32) -> bool {
    #[cfg(debug_assertions)]
    if let Some(n) = std::env::var("VARTA_TEST_PANIC_EXPORTER_TASKS").ok().and_then(|v| v.parse::<u32>().ok())
    {
        return run < n;
    }
    let _ = run;
    false
}

/// The collector's own resource and its instrumentation scope.
#[derive(Debug)]
struct Identity {
    resource: Resource,
    scope: InstrumentationScope,
}

/// One request for `batch`: one `ResourceSpans` per distinct resource (per
/// agent, or the collector's), spans in queue order within each.
fn trace_request(own: &Identity, batch: Vec<QueuedSpan>) -> ExportTraceServiceRequest {
    let mut groups: Vec<(Option<Resource>, Vec<Span>)> = Vec::new();
    // Owner → indices of its groups (an agent's resource may have changed
    // between two of its spans, e.g. once its attributes were resolved).
    let mut by_owner: HashMap<Option<(usize, AgentId)>, Vec<usize>> = HashMap::new();
    for q in batch {
        let slots = by_owner.entry(q.owner).or_default();
        match slots.iter().find(|&&i| groups[i].0 == q.resource) {
            Some(&i) => groups[i].1.push(q.span),
            None => {
                slots.push(groups.len());
                groups.push((q.resource, vec![q.span]));
            }
        }
    }
    ExportTraceServiceRequest {
        resource_spans: groups
            .into_iter()
            .map(|(resource, spans)| ResourceSpans {
                resource: Some(resource.unwrap_or_else(|| own.resource.clone())),
                scope_spans: vec![ScopeSpans { scope: Some(own.scope.clone()), spans, ..Default::default() }],
                ..Default::default()
            })
            .collect(),
    }
}

/// Sends queued spans as soon as there are any, until closing and empty.
async fn send_spans(
    id: String,
    shared: Arc<Shared>,
    client: Client,
    own: Arc<Identity>,
    config: OtlpExporterConfig,
) {
    let mut failures = LogThrottle::default();
    let mut recovered_after: u64 = 0;
    loop {
        let wake = shared.wake.notified();
        let batch = shared.take(MAX_SPANS_PER_REQUEST);
        if batch.is_empty() {
            if shared.is_closing() {
                return;
            }
            wake.await;
            continue;
        }
        shared.in_flight.store(batch.len() as u64, Relaxed);
        let request = trace_request(&own, batch);
        // While closing: no backoff waits, one attempt only.
        let policy = if shared.is_closing() {
            config::RetryConfig { enabled: false, ..config.retry_on_failure }
        } else {
            config.retry_on_failure
        };
        let stats = &shared.stats;
        let result = with_retry(
            policy,
            || {
                let mut c = client.clone();
                let r = request.clone();
                async move { c.export_traces(r).await }
            },
            || shared.until_closing(),
            |failure| {
                stats.span_exports_retried.fetch_add(1, Relaxed);
                if matches!(failure, Failure::Retryable { after: Some(_), .. }) {
                    stats.exports_throttled.fetch_add(1, Relaxed);
                }
            },
        )
        .await;
        // Zero if shutdown gave up on this call and counted it already.
        let n = shared.in_flight.swap(0, Relaxed);
        match result {
            _ if n == 0 => {}
            Ok(rejected) => {
                let rejected = rejected.min(n);
                stats.spans_exported.fetch_add(n - rejected, Relaxed);
                stats.spans_failed.fetch_add(rejected, Relaxed);
                if recovered_after > 0 {
                    tracing::info!(exporter = %id, failed_batches = recovered_after, "OTLP span export recovered");
                    recovered_after = 0;
                }
            }
            Err(f) => {
                stats.spans_failed.fetch_add(n, Relaxed);
                recovered_after += 1;
                log_failure(&id, "span", &f, n, &mut failures);
            }
        }
    }
}

fn log_failure(id: &str, what: &str, f: &Failure, n: u64, throttle: &mut LogThrottle) {
    if let Some(count) = throttle.note(monotonic_ns()) {
        tracing::warn!(
            exporter = %id,
            count,
            items = n,
            "OTLP {what} export failed: {} (at most one warning per 10 s; count is since the last)",
            f.message()
        );
    }
}

impl Identity {
    fn request(&self, resource_metrics: Vec<ResourceMetrics>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest { resource_metrics }
    }

    /// Metrics under `resource` (the collector's when `None`), in this scope.
    fn scoped(&self, resource: Option<Resource>, metrics: Vec<Metric>) -> ResourceMetrics {
        ResourceMetrics {
            resource: Some(resource.unwrap_or_else(|| self.resource.clone())),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(self.scope.clone()),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// The request carrying one chunk of per-agent points.
    fn agent_request(&self, chunk: metrics::AgentChunk) -> ExportMetricsServiceRequest {
        match chunk {
            metrics::AgentChunk::Resources(agents) => {
                self.request(agents.into_iter().map(|a| self.scoped(Some(a.resource), a.metrics)).collect())
            }
            metrics::AgentChunk::Points(metrics) => self.request(vec![self.scoped(None, metrics)]),
        }
    }
}

/// Metric requests a collection hands from its blocking thread to the
/// sender, already encoded: one in flight and one waiting, so exporting a
/// large fleet costs memory for a few chunks' bytes (and the objects of the
/// one being built), never for every agent.
const METRIC_REQUESTS_IN_FLIGHT: usize = 1;

/// Reads the view every `metrics.interval` and sends it; once more when closing.
async fn send_metrics(
    id: String,
    shared: Arc<Shared>,
    client: Client,
    own: Arc<Identity>,
    config: OtlpExporterConfig,
    builder: metrics::MetricsBuilder,
    view: ViewCell,
) {
    let mut failures = LogThrottle::default();
    let mut tick = tokio::time::interval(config.metrics.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate; the view is not ready yet
    let mut builder = Some((builder, client::EncodeBuffers::default()));
    loop {
        let closing = tokio::select! {
            _ = tick.tick() => false,
            () = shared.until_closing() => true,
        };
        if let Some(view) = view.get()
            && let Some((mut b, mut buffers)) = builder.take()
        {
            // Reading a large fleet is CPU work: keep it off the async workers.
            let now = u64::try_from(wallclock::unix_now_ns()).unwrap_or(0);
            let exemplars = std::mem::take(&mut *shared.exemplars.lock().unwrap_or_else(|p| p.into_inner()));
            let departed = std::mem::take(&mut *shared.departed.lock().unwrap_or_else(|p| p.into_inner()));
            shared.stats.stale_markers.fetch_add(departed.len() as u64, Relaxed);
            b.mark_departed(departed);
            let (tx, mut requests) = tokio::sync::mpsc::channel(METRIC_REQUESTS_IN_FLIGHT);
            let ident = own.clone();
            let encoder = client.clone();
            let collecting = tokio::task::spawn_blocking(move || {
                let mut exemplars = exemplars;
                // Each request is encoded as soon as it is built and its
                // objects dropped: what waits for the network is bytes.
                let mut send = |request: ExportMetricsServiceRequest| {
                    tx.blocking_send(encoder.encode_metrics(&request, &mut buffers)).is_ok()
                };
                let mut emit = |chunk| send(ident.agent_request(chunk));
                let fleet = b.collect_with(&view, now, &mut exemplars, &mut emit);
                for group in metrics::split(fleet, MAX_POINTS_PER_REQUEST) {
                    if !send(ident.request(vec![ident.scoped(None, group)])) {
                        break;
                    }
                }
                (b, buffers)
            });
            // Retries never outlast the next collection, nor shutdown.
            let mut policy = config.retry_on_failure;
            policy.max_elapsed_time = policy.max_elapsed_time.min(config.metrics.interval);
            if closing {
                policy.enabled = false;
            }
            while let Some(encoded) = requests.recv().await {
                let result = match encoded {
                    Ok(body) => {
                        with_retry(
                            policy,
                            || {
                                let mut c = client.clone();
                                let body = body.clone();
                                async move { c.export_metrics(body).await }
                            },
                            || shared.until_closing(),
                            |failure| {
                                if matches!(failure, Failure::Retryable { after: Some(_), .. }) {
                                    shared.stats.exports_throttled.fetch_add(1, Relaxed);
                                }
                            },
                        )
                        .await
                    }
                    Err(f) => Err(f),
                };
                match result {
                    Ok(_) => {
                        shared.stats.metric_exports.fetch_add(1, Relaxed);
                    }
                    Err(f) => {
                        shared.stats.metric_exports_failed.fetch_add(1, Relaxed);
                        log_failure(&id, "metric", &f, 1, &mut failures);
                    }
                }
            }
            match collecting.await {
                Ok(b) => builder = Some(b),
                Err(_) => return,
            }
            // Everything the collection built is freed by now; give its
            // pages back rather than keep them in the threads' arenas.
            crate::trim::release_freed_memory();
        }
        if closing {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sender task that panics is restarted (counted), and what it was
    /// working from survives; a task that ends is not restarted.
    #[tokio::test]
    async fn a_panicking_sender_is_restarted_with_its_state() {
        let stats = Arc::new(OtlpStats::default());
        let runs = Arc::new(AtomicU64::new(0));
        let r = runs.clone();
        supervised("test".into(), "sender", stats.clone(), move || {
            let n = r.fetch_add(1, Relaxed);
            async move {
                if n < 2 {
                    panic!("an answer nobody foresaw");
                }
            }
        })
        .await;
        assert_eq!(runs.load(Relaxed), 3, "ran until it ended without a panic");
        assert_eq!(stats.task_panics.load(Relaxed), 2);
    }

    #[test]
    fn instance_ids_are_uuid_v4() {
        let id = instance_id(ids::random_salt(), ids::random_salt());
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
    }

    #[test]
    fn full_sending_queue_drops_oldest_and_counts() {
        let stats = Arc::new(OtlpStats::default());
        let shared = Shared {
            spans: Mutex::new(VecDeque::new()),
            capacity: 2,
            in_flight: AtomicU64::new(0),
            stats: stats.clone(),
            wake: Notify::new(),
            closing: AtomicBool::new(false),
            closed: Notify::new(),
            exemplars: Mutex::default(),
            departed: Mutex::default(),
        };
        for name in ["a", "b", "c"] {
            shared.push(QueuedSpan::of_collector(Span { name: name.into(), ..Default::default() }));
        }
        assert_eq!(stats.spans_dropped_full.load(Relaxed), 1);
        let names: Vec<String> = shared.take(10).into_iter().map(|q| q.span.name).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(stats.spans_queued.load(Relaxed), 0);
    }
}
