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

use varta_agents::{AttributeStore, ResolverConfig};
use varta_exporters::{CollectorView, Exporter, ExporterQueue, PipelineView};
use varta_pipeline::Role;
use varta_processor::recovery::RecoveryConfig;
use varta_processor::{ProcessorStats, RateLimitConfig, SnapshotReader, TrackerConfig};
use varta_receiver::{KeyHandle, ReceiverError, ReceiverStats, VlpReceiverConfig};
use varta_telemetry::wallclock::WallClock;

pub use crate::compose::Stopped;
use crate::compose::{BuildError, Pipeline, PipelinePlan, Receiver};

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
    storage: Option<crate::compose::StorageSpec>,
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
            storage: None,
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

    /// Keeps the agents' state in `directory` (created 0700 if missing; an
    /// existing one must be ours and 0700), checkpointed every `interval`
    /// and at shutdown, restored at the next start (see
    /// [`crate::compose::storage`]).
    pub fn state_directory(mut self, directory: impl Into<std::path::PathBuf>, interval: Duration) -> Self {
        self.storage = Some(crate::compose::StorageSpec {
            directory: directory.into(),
            interval,
            component: "tracker".into(),
        });
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

/// An output's thread, joined at shutdown after the pipeline.
#[derive(Debug)]
struct Output {
    id: String,
    thread: JoinHandle<()>,
}

/// The running liveness engine: one [`Pipeline`] fed by its own receivers.
#[derive(Debug)]
pub struct Engine {
    name: String,
    receivers: Vec<Receiver>,
    pipeline: Option<Pipeline>,
    outputs: Vec<Output>,
    attributes: Option<Arc<AttributeStore>>,
    view: CollectorView,
    _instruments: Option<otel::metrics::Instruments>,
}

/// How long a failed start waits for the threads it had started.
const ABANDON_WITHIN: Duration = Duration::from_secs(5);

/// The outputs started so far: their queues (handed to the pipeline) and threads.
#[derive(Default)]
struct Outputs {
    queues: Vec<ExporterQueue>,
    threads: Vec<Output>,
    view: CollectorView,
}

impl Outputs {
    fn add(&mut self, id: &str, exporter: Box<dyn Exporter>, capacity: usize) -> Result<(), EmbedError> {
        let (queue, thread) = ExporterQueue::start(id.to_owned(), exporter, capacity)
            .map_err(|e| EmbedError::Thread(format!("cannot start output {id}: {e}")))?;
        self.view.add(Role::Exporter, id, queue.telemetry());
        self.threads.push(Output { id: id.to_owned(), thread });
        self.queues.push(queue);
        Ok(())
    }

    /// Undoes a start: dropping the queues ends the outputs; waits (bounded).
    fn abandon(self) {
        drop(self.queues);
        join_outputs(self.threads, Instant::now() + ABANDON_WITHIN);
    }
}

fn join_outputs(outputs: Vec<Output>, deadline: Instant) -> Stopped {
    let mut stopped = Stopped::default();
    for o in outputs {
        stopped.join(format!("exporters::{}", o.id), o.thread, deadline);
    }
    stopped
}

impl From<BuildError> for EmbedError {
    fn from(e: BuildError) -> Self {
        match e {
            BuildError::Processor(e) => EmbedError::Processor(e),
            BuildError::Resolver(e) => EmbedError::Resolver(e),
            BuildError::Recovery(e) => EmbedError::Recovery(e),
            other => EmbedError::Thread(other.to_string()),
        }
    }
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
        let mut receivers = Vec::new();
        for (id, cfg) in &b.receivers {
            receivers.push(Receiver::bind(id, cfg.clone(), cfg, vec![b.name.clone()], None)?);
        }
        let capacity = b.tracker.capacity;
        // As the collector does: plain UDP beside attested receivers gets
        // its share of the tracker, the rate and the queue.
        let plain = |c: &VlpReceiverConfig| c.transport == varta_receiver::TransportKind::Udp;
        b.tracker.shared_with_attested =
            b.receivers.iter().any(|(_, c)| plain(c)) && b.receivers.iter().any(|(_, c)| !plain(c));
        let plan = PipelinePlan {
            name: b.name.clone(),
            ratelimit: b.ratelimit,
            tracker: Some(std::mem::take(&mut b.tracker)),
            resolver: b.resolver.take().map(|c| ("resolver".to_owned(), c)),
            recovery: b.recovery.take().map(|c| ("recovery".to_owned(), c)),
            exporters: Vec::new(),
            queue_batches: b.queue_batches,
            storage: b.storage.take(),
        };
        let mut pipeline = Pipeline::build(&plan)?;
        let mut outputs = Outputs::default();
        let meter = match Self::outputs(&mut b, capacity, &pipeline, &mut outputs) {
            Ok(meter) => meter,
            Err(e) => {
                pipeline.close(Instant::now() + ABANDON_WITHIN);
                outputs.abandon();
                return Err(e);
            }
        };
        let Outputs { queues, threads, view: outputs_view } = outputs;
        if let Err(e) = pipeline.resume(queues) {
            // The queues went with the failed start: the outputs end.
            pipeline.close(Instant::now() + ABANDON_WITHIN);
            join_outputs(threads, Instant::now() + ABANDON_WITHIN);
            return Err(e.into());
        }

        let mut view = CollectorView::default();
        for r in &receivers {
            view.add(Role::Receiver, r.id.clone(), r.stats.clone());
        }
        view.add_pipeline(PipelineView {
            name: b.name.clone(),
            snapshots: pipeline.snapshots.clone(),
            queue: pipeline.depth.clone(),
            attributes: pipeline.attributes.clone(),
        });
        for (id, metrics) in pipeline.helper_metrics() {
            view.add(Role::Processor, id, metrics);
        }
        view.components.extend(outputs_view.components);

        let mut engine = Engine {
            name: b.name,
            receivers: Vec::new(),
            attributes: pipeline.attributes.clone(),
            pipeline: Some(pipeline),
            outputs: threads,
            view,
            _instruments: None,
        };
        for mut receiver in receivers {
            let sender = engine.pipeline.as_ref().map(|p| p.sender(receiver.attested()));
            if let Err(e) = receiver.resume(sender.into_iter().collect()) {
                engine.receivers.push(receiver);
                engine.shutdown(ABANDON_WITHIN);
                return Err(EmbedError::Thread(e));
            }
            engine.receivers.push(receiver);
        }
        if let Some((meter, per_agent)) = meter {
            engine._instruments = Some(otel::metrics::register(&meter, engine.view.clone(), per_agent));
        }
        Ok(engine)
    }

    /// Starts the outputs; returns the meter to register the metrics on
    /// once everything runs. (Takes the outputs' settings out of `b`.)
    fn outputs(
        b: &mut EngineBuilder,
        capacity: usize,
        pipeline: &Pipeline,
        outputs: &mut Outputs,
    ) -> Result<Option<(opentelemetry::metrics::Meter, bool)>, EmbedError> {
        let (name, queue) = (b.name.as_str(), b.output_queue);
        let store = pipeline.attributes.clone();
        let clock = WallClock::new(pipeline.snapshots.latest().clock);
        if let Some(callback) = b.incidents.take() {
            let (exporter, callback_stats) = IncidentExporter::new(callback, clock.clone(), store.clone());
            outputs.add("incidents", Box::new(exporter), queue)?;
            outputs.view.add(Role::Exporter, "incidents.callback", callback_stats);
        }
        let Some(t) = b.telemetry.take() else { return Ok(None) };
        let durations = t.meter.as_ref().map(otel::metrics::stall_durations);
        let (exporter, span_stats) =
            otel::spans::SpanExporter::new(t.tracer, name, clock, store, capacity, durations);
        outputs.add("opentelemetry", Box::new(exporter), queue)?;
        outputs.view.add(Role::Exporter, "opentelemetry.spans", span_stats);
        Ok(t.meter.map(|m| (m, t.per_agent)))
    }

    /// The pipeline name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address receiver `id` listens on (UDP and secure UDP: useful
    /// with port 0), `None` for UDS or an unknown id.
    pub fn local_addr(&self, id: &str) -> Option<SocketAddr> {
        self.receivers.iter().find(|r| r.id == id).and_then(|r| r.local_addr)
    }

    /// Secure receiver `id`'s key handle (key rotation without a restart).
    pub fn keys(&self, id: &str) -> Option<&KeyHandle> {
        self.receivers.iter().find(|r| r.id == id).and_then(|r| r.keys.as_ref())
    }

    /// The processor's counters, live.
    pub fn stats(&self) -> Arc<ProcessorStats> {
        self.pipeline.as_ref().map(Pipeline::stats).expect("the pipeline lives as long as the engine")
    }

    /// The processor's published snapshots (agents, counters).
    pub fn snapshots(&self) -> SnapshotReader {
        self.pipeline.as_ref().map(|p| p.snapshots.clone()).expect("the pipeline lives as long as the engine")
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
        self.receivers.iter().find(|r| r.id == id).map(|r| r.stats.clone())
    }

    /// Ordered shutdown (see the module docs), every step bounded by
    /// `timeout` from now (extended to a recovery runner's `kill_grace`).
    pub fn shutdown(mut self, timeout: Duration) -> Stopped {
        let helpers = self.pipeline.as_ref().map(Pipeline::ends_within).unwrap_or_default();
        let deadline = Instant::now() + timeout.max(helpers);
        let mut stopped = Stopped::default();
        for r in &self.receivers {
            r.stop();
        }
        for r in std::mem::take(&mut self.receivers) {
            stopped.merge(r.join(deadline));
        }
        // With every receiver gone, dropping the pipeline's own sender
        // closes its queue: the processor drains and ends, then its helpers.
        if let Some(p) = self.pipeline.take() {
            stopped.merge(p.finish().join(deadline));
        }
        stopped.merge(join_outputs(std::mem::take(&mut self.outputs), deadline));
        stopped
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        for r in &self.receivers {
            r.stop();
        }
    }
}
