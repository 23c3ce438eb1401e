//! Starting and stopping the engine: receivers → bounded batch queue →
//! processor (with the resolver and the recovery runner) → the host's
//! outputs, each on threads the engine owns.
//!
//! Promises:
//! * **Nothing global.** No signal handlers, no logging setup (the crates
//!   log through `tracing`; the host decides whether anything listens),
//!   no global OpenTelemetry provider, no environment read. Two engines in
//!   one process are independent.
//! * **Start order as the collector's.** Outputs, then the processor and
//!   its helpers, receivers last: nothing receives before what it feeds
//!   exists. A start error leaves nothing running (sockets closed, UDS
//!   files removed, threads ended).
//! * **Same refusals and counters as the collector.** The same receivers,
//!   processor and queues do the work: every refused datagram, rate-limited
//!   beat and dropped event is counted (see [`Engine::view`], and the
//!   `varta.collector.*` metrics through the meter).
//! * **Ordered, bounded shutdown** ([`Engine::shutdown`]): receivers stop
//!   (reading what their socket still holds), the processor drains its
//!   queue and ends, which ends the resolver and the recovery runner, then
//!   the outputs deliver what is queued and end. Every join waits until
//!   one deadline at most; what did not end by then is named in
//!   [`Stopped::late`] and left detached. A recovery runner's children get
//!   their `kill_grace` whatever the deadline, as in the collector.
//!   Dropping an engine without `shutdown` asks every receiver to stop, so
//!   its threads wind down on their own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use varta_agents::{AttributeStore, Resolver, ResolverConfig};
use varta_exporters::otlp::wallclock::WallClock;
use varta_exporters::{CollectorView, Exporter, ExporterQueue, Fanout, PipelineView};
use varta_pipeline::Role;
use varta_pipeline::threads::{join_by, spawn};
use varta_processor::recovery::{Recovery, RecoveryConfig, SHUTDOWN_MARGIN};
use varta_processor::{Processor, ProcessorStats, RateLimitConfig, SnapshotReader, TrackerConfig};
use varta_receiver::{KeyHandle, ReceiverError, ReceiverStats, StopHandle, VlpReceiver, VlpReceiverConfig};

use crate::incident::{Incident, IncidentCallback, IncidentExporter};
use crate::otel::{self, OpenTelemetry};

/// Default bound of the receiver → processor queue, in batches (as the collector's `queue_batches`).
pub const DEFAULT_QUEUE_BATCHES: usize = 1024;
/// Default bound of each output's event queue (as the collector's `debug` exporter).
pub const DEFAULT_OUTPUT_QUEUE: usize = 4096;

/// Why the engine did not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("no receiver: add one with EngineBuilder::receiver")]
    NoReceiver,
    #[error("two receivers are called {0:?}")]
    DuplicateReceiver(String),
    #[error("queue_batches must be at least 1")]
    QueueBatches,
    #[error(transparent)]
    Receiver(#[from] ReceiverError),
    #[error("processor: {0}")]
    Processor(#[from] varta_processor::ConfigError),
    #[error("resolver: {0}")]
    Resolver(String),
    #[error("recovery: {0}")]
    Recovery(String),
    #[error("{0}")]
    Thread(String),
}

/// How to build an [`Engine`]. Defaults are the collector's default
/// configuration: `ratelimit` and `resolver` on with their defaults, the
/// `tracker` defaults (2 s threshold), no recovery, pipeline `liveness`.
pub struct EngineBuilder {
    name: String,
    receivers: Vec<(String, VlpReceiverConfig)>,
    ratelimit: Option<RateLimitConfig>,
    tracker: TrackerConfig,
    resolver: Option<ResolverConfig>,
    recovery: Option<RecoveryConfig>,
    queue_batches: usize,
    output_queue: usize,
    incidents: Option<IncidentCallback>,
    telemetry: Option<OpenTelemetry>,
}

impl std::fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("name", &self.name)
            .field("receivers", &self.receivers)
            .field("ratelimit", &self.ratelimit)
            .field("tracker", &self.tracker)
            .field("resolver", &self.resolver)
            .field("recovery", &self.recovery.is_some())
            .field("queue_batches", &self.queue_batches)
            .field("incidents", &self.incidents.is_some())
            .field("telemetry", &self.telemetry)
            .finish()
    }
}

impl Default for EngineBuilder {
    fn default() -> Self {
        EngineBuilder {
            name: "liveness".into(),
            receivers: Vec::new(),
            ratelimit: Some(RateLimitConfig::default()),
            tracker: TrackerConfig::default(),
            resolver: Some(ResolverConfig::default()),
            recovery: None,
            queue_batches: DEFAULT_QUEUE_BATCHES,
            output_queue: DEFAULT_OUTPUT_QUEUE,
            incidents: None,
            telemetry: None,
        }
    }
}

impl EngineBuilder {
    /// The pipeline name: attribute `varta.pipeline` of every span and
    /// metric, and part of thread names.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Adds a `vlp` receiver called `id` (e.g. `vlp/uds`), configured as
    /// in the collector's YAML (`transport`, `path`, `endpoint`, keys, …).
    pub fn receiver(mut self, id: impl Into<String>, config: VlpReceiverConfig) -> Self {
        self.receivers.push((id.into(), config));
        self
    }

    /// Admission control; `None` admits every beat.
    pub fn ratelimit(mut self, config: Option<RateLimitConfig>) -> Self {
        self.ratelimit = config;
        self
    }

    /// The tracker (threshold, capacity, clock, …).
    pub fn tracker(mut self, config: TrackerConfig) -> Self {
        self.tracker = config;
        self
    }

    /// The resolver (attributes from `/proc`, stall diagnoses); `None` turns it off.
    pub fn resolver(mut self, config: Option<ResolverConfig>) -> Self {
        self.resolver = config;
        self
    }

    /// The recovery runner (operator commands on stalls, audit log); off by default.
    pub fn recovery(mut self, config: Option<RecoveryConfig>) -> Self {
        self.recovery = config;
        self
    }

    /// Bound of the receiver → processor queue, in batches of up to 64 arrivals.
    pub fn queue_batches(mut self, batches: usize) -> Self {
        self.queue_batches = batches;
        self
    }

    /// Bound of each output's event queue (oldest dropped and counted when full).
    pub fn output_queue(mut self, events: usize) -> Self {
        self.output_queue = events;
        self
    }

    /// Calls `callback` with every incident event (see [`crate::incident`]),
    /// on a thread of its own. To get a channel instead, send from here
    /// (`try_send` into a bounded channel keeps the promise of never blocking).
    pub fn on_incident(mut self, callback: impl FnMut(&Incident) + Send + 'static) -> Self {
        self.incidents = Some(Box::new(callback));
        self
    }

    /// Reports through the host's OpenTelemetry tracer and meter.
    pub fn opentelemetry(mut self, telemetry: OpenTelemetry) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// Starts everything (see the module docs for the order).
    pub fn start(self) -> Result<Engine, EmbedError> {
        Engine::start(self)
    }
}

/// A receiver's thread and what stops it.
#[derive(Debug)]
struct ReceiverThread {
    id: String,
    stop: StopHandle,
    thread: JoinHandle<Result<(), ReceiverError>>,
}

/// A thread the engine joins at shutdown.
#[derive(Debug)]
struct Owned {
    what: String,
    thread: JoinHandle<()>,
}

/// What [`Engine::shutdown`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    /// Every thread ended, without a panic, before the deadline.
    pub clean: bool,
    /// Threads still running at the deadline (left detached), by role.
    pub late: Vec<String>,
    /// Threads that panicked, or receivers that had stopped with an error.
    pub failed: Vec<String>,
}

/// The running liveness engine.
#[derive(Debug)]
pub struct Engine {
    name: String,
    receivers: Vec<ReceiverThread>,
    /// Processor first, then its helpers, then the outputs: the order they end in.
    threads: Vec<Owned>,
    /// How long the recovery runner's own shutdown may take.
    helpers_end_within: Duration,
    /// Each receiver's id, address (UDP) and counters.
    bound: Vec<(String, Option<SocketAddr>, Arc<ReceiverStats>)>,
    keys: Vec<(String, KeyHandle)>,
    stats: Arc<ProcessorStats>,
    snapshots: SnapshotReader,
    attributes: Option<Arc<AttributeStore>>,
    view: CollectorView,
    _instruments: Option<otel::metrics::Instruments>,
}

/// Everything built before anything receives; dropping it undoes the start.
struct Parts {
    processor: Processor,
    threads: Vec<Owned>,
    outputs: Vec<ExporterQueue>,
    view: CollectorView,
    helpers_end_within: Duration,
    attributes: Option<Arc<AttributeStore>>,
}

/// How long a failed start waits for the threads it had started.
const ABANDON_WITHIN: Duration = Duration::from_secs(5);

impl Parts {
    /// Undoes a start: dropping the processor ends its helpers, dropping
    /// the output queues ends the outputs; waits for them (bounded).
    fn abandon(self) {
        let Parts { processor, threads, outputs, .. } = self;
        drop(processor);
        drop(outputs);
        join_all(threads, Instant::now() + ABANDON_WITHIN);
    }
}

/// Joins `threads` in order by `deadline`; leaves the late ones detached.
fn join_all(threads: Vec<Owned>, deadline: Instant) {
    for t in threads {
        let _ = join_by(t.thread, deadline);
    }
}

fn output(
    id: &str,
    exporter: Box<dyn Exporter>,
    capacity: usize,
    parts: &mut Parts,
) -> Result<(), EmbedError> {
    let (queue, thread) = ExporterQueue::start(id.to_owned(), exporter, capacity)
        .map_err(|e| EmbedError::Thread(format!("cannot start output {id}: {e}")))?;
    parts.view.add(Role::Exporter, id, queue.telemetry());
    parts.threads.push(Owned { what: format!("exporters::{id}"), thread });
    parts.outputs.push(queue);
    Ok(())
}

impl Engine {
    /// A builder with the collector's defaults.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    fn start(mut b: EngineBuilder) -> Result<Engine, EmbedError> {
        if b.receivers.is_empty() {
            return Err(EmbedError::NoReceiver);
        }
        for (i, (id, _)) in b.receivers.iter().enumerate() {
            if b.receivers[..i].iter().any(|(other, _)| other == id) {
                return Err(EmbedError::DuplicateReceiver(id.clone()));
            }
        }
        if b.queue_batches == 0 {
            return Err(EmbedError::QueueBatches);
        }
        // Sockets first: a bind error (address taken, bad key file) stops
        // the start before any thread runs. Datagrams wait in the kernel
        // until the receiver threads start, last.
        let mut bound = Vec::new();
        for (id, cfg) in &b.receivers {
            bound.push((id.clone(), VlpReceiver::bind(id, cfg)?));
        }
        let capacity = b.tracker.capacity;
        let processor = Processor::new(
            b.ratelimit,
            std::mem::take(&mut b.tracker),
            Box::new(varta_pipeline::procfs::start_time),
        )?;
        let stats = processor.stats();
        let snapshots = processor.snapshots();
        let mut parts = Parts {
            processor,
            threads: Vec::new(),
            outputs: Vec::new(),
            view: CollectorView::default(),
            helpers_end_within: Duration::ZERO,
            attributes: None,
        };
        let meter = match Self::outputs(&mut b, capacity, &snapshots, &mut parts) {
            Ok(meter) => meter,
            Err(e) => {
                parts.abandon();
                return Err(e);
            }
        };

        let (tx, rx) = varta_pipeline::queue::batch_queue(b.queue_batches);
        let mut view = CollectorView::default();
        let mut receivers_bound = Vec::new();
        let mut keys = Vec::new();
        for (id, r) in &bound {
            view.add(Role::Receiver, id.clone(), r.stats());
            receivers_bound.push((id.clone(), r.local_addr(), r.stats()));
            if let Some(k) = r.key_handle() {
                keys.push((id.clone(), k));
            }
        }
        view.add_pipeline(PipelineView {
            name: b.name.clone(),
            snapshots: snapshots.clone(),
            queue: rx.depth(),
            attributes: parts.attributes.clone(),
        });
        view.components.append(&mut parts.view.components);

        let Parts { processor, mut threads, outputs, helpers_end_within, attributes, .. } = parts;
        let mut fanout = Fanout::new(outputs);
        let name = b.name.clone();
        match spawn(format!("proc-{name}"), move || processor.run(rx, &mut fanout)) {
            Ok(thread) => threads.insert(0, Owned { what: format!("pipelines::{name}"), thread }),
            Err(e) => {
                // The processor (and with it the helpers' handles and the
                // output queues) went with the closure: the threads end.
                join_all(threads, Instant::now() + ABANDON_WITHIN);
                return Err(EmbedError::Thread(e));
            }
        }
        let mut engine = Engine {
            name: b.name,
            receivers: Vec::new(),
            threads,
            helpers_end_within,
            bound: receivers_bound,
            keys,
            stats,
            snapshots,
            attributes,
            view,
            _instruments: None,
        };
        for (id, receiver) in bound {
            let stop = receiver.stop_handle();
            let queue = tx.clone();
            match spawn(format!("recv-{id}"), move || receiver.run(queue)) {
                Ok(thread) => engine.receivers.push(ReceiverThread { id, stop, thread }),
                Err(e) => {
                    drop(tx);
                    engine.shutdown(ABANDON_WITHIN);
                    return Err(EmbedError::Thread(e));
                }
            }
        }
        // Only receivers hold senders now: when they stop, the queue closes.
        drop(tx);
        if let Some((meter, per_agent)) = meter {
            engine._instruments = Some(otel::metrics::register(&meter, engine.view.clone(), per_agent));
        }
        Ok(engine)
    }

    /// Starts the helpers and the outputs; returns the meter to register
    /// the metrics on once everything runs.
    /// (Takes the helpers' and outputs' settings out of `b`.)
    fn outputs(
        b: &mut EngineBuilder,
        capacity: usize,
        snapshots: &SnapshotReader,
        parts: &mut Parts,
    ) -> Result<Option<(opentelemetry::metrics::Meter, bool)>, EmbedError> {
        let (name, queue) = (b.name.as_str(), b.output_queue);
        Self::helpers(name, b.resolver.take(), b.recovery.take(), parts)?;
        let store = parts.attributes.clone();
        let clock = WallClock::new(snapshots.latest().clock);
        if let Some(callback) = b.incidents.take() {
            let (exporter, callback_stats) = IncidentExporter::new(callback, clock.clone(), store.clone());
            output("incidents", Box::new(exporter), queue, parts)?;
            parts.view.add(Role::Exporter, "incidents.callback", callback_stats);
        }
        let Some(t) = b.telemetry.take() else { return Ok(None) };
        let durations = t.meter.as_ref().map(otel::metrics::stall_durations);
        let (exporter, span_stats) =
            otel::spans::SpanExporter::new(t.tracer, name, clock, store, capacity, durations);
        output("opentelemetry", Box::new(exporter), queue, parts)?;
        parts.view.add(Role::Exporter, "opentelemetry.spans", span_stats);
        Ok(t.meter.map(|m| (m, t.per_agent)))
    }

    /// Starts the resolver and the recovery runner and attaches them to the processor.
    fn helpers(
        name: &str,
        resolver: Option<ResolverConfig>,
        recovery: Option<RecoveryConfig>,
        parts: &mut Parts,
    ) -> Result<(), EmbedError> {
        let window = resolver.as_ref().map(|r| r.diagnosis.window);
        if let Some(cfg) = resolver {
            cfg.validate().map_err(EmbedError::Resolver)?;
            let (started, handle) =
                Resolver::start(name, cfg).map_err(|e| EmbedError::Resolver(e.to_string()))?;
            parts.processor.set_inspector(Some(Box::new(handle)));
            parts.attributes = Some(started.store);
            parts.view.add(Role::Processor, "resolver", started.stats);
            parts.threads.push(Owned { what: "processors::resolver".into(), thread: started.thread });
        }
        if let Some(cfg) = recovery {
            cfg.validate().map_err(EmbedError::Recovery)?;
            let labels = varta_agents::recovery_targets(parts.attributes.clone(), cfg.trusted_slices.clone());
            let probe = Box::new(varta_agents::proc::process_facts);
            let kill_grace = cfg.kill_grace;
            let (started, handle) = Recovery::start(name, cfg, probe, labels, window)
                .map_err(|e| EmbedError::Recovery(e.to_string()))?;
            parts.processor.set_recovery(Some(handle));
            parts.view.add(Role::Processor, "recovery", started.stats);
            parts.threads.push(Owned { what: "processors::recovery".into(), thread: started.thread });
            parts.helpers_end_within = kill_grace + SHUTDOWN_MARGIN;
        }
        Ok(())
    }

    /// The pipeline name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address receiver `id` listens on (UDP and secure UDP: useful
    /// with port 0), `None` for UDS or an unknown id.
    pub fn local_addr(&self, id: &str) -> Option<SocketAddr> {
        self.bound.iter().find(|(r, _, _)| r == id).and_then(|(_, a, _)| *a)
    }

    /// Secure receiver `id`'s key handle (key rotation without a restart).
    pub fn keys(&self, id: &str) -> Option<&KeyHandle> {
        self.keys.iter().find(|(r, _)| r == id).map(|(_, k)| k)
    }

    /// The processor's counters, live.
    pub fn stats(&self) -> Arc<ProcessorStats> {
        self.stats.clone()
    }

    /// The processor's published snapshots (agents, counters).
    pub fn snapshots(&self) -> SnapshotReader {
        self.snapshots.clone()
    }

    /// What the resolver knows of local agents, if it runs.
    pub fn attributes(&self) -> Option<Arc<AttributeStore>> {
        self.attributes.clone()
    }

    /// Every component's counters (receivers' refusals, output queues'
    /// drops, …) and the pipeline's snapshot: what the collector's metrics
    /// views read.
    pub fn view(&self) -> &CollectorView {
        &self.view
    }

    /// A receiver's counters.
    pub fn receiver_stats(&self, id: &str) -> Option<Arc<ReceiverStats>> {
        self.bound.iter().find(|(r, _, _)| r == id).map(|(_, _, s)| s.clone())
    }

    /// Ordered shutdown (see the module docs), every step bounded by
    /// `timeout` from now (extended to a recovery runner's `kill_grace`).
    pub fn shutdown(mut self, timeout: Duration) -> Stopped {
        let deadline = Instant::now() + timeout.max(self.helpers_end_within);
        let mut stopped = Stopped { clean: true, late: Vec::new(), failed: Vec::new() };
        for r in &self.receivers {
            r.stop.stop();
        }
        for r in std::mem::take(&mut self.receivers) {
            let what = format!("receivers::{}", r.id);
            match join_by(r.thread, deadline) {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => stopped.failed.push(format!("{what}: {e}")),
                Ok(Err(_)) => stopped.failed.push(format!("{what}: panicked")),
                Err(_) => stopped.late.push(what),
            }
        }
        for t in std::mem::take(&mut self.threads) {
            match join_by(t.thread, deadline) {
                Ok(Ok(())) => {}
                Ok(Err(_)) => stopped.failed.push(format!("{}: panicked", t.what)),
                Err(_) => stopped.late.push(t.what),
            }
        }
        stopped.clean = stopped.late.is_empty() && stopped.failed.is_empty();
        stopped
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        for r in &self.receivers {
            r.stop.stop();
        }
    }
}
