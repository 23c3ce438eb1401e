//! The running instance of each component kind, and the few things a
//! reload does to it: park (stop its thread, keep its state), resume
//! (start the thread again, rewired), close (stop it for good, bounded).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use varta_agents::{AttributeStore, Resolver};
use varta_exporters::otlp::{OtlpTelemetry, PipelineWiring, ShutdownDeadline, ViewCell, Wiring};
use varta_exporters::prometheus::{BoundEndpoint, PrometheusConfig, PrometheusServer};
use varta_exporters::{DebugExporter, Exporter, ExporterQueue, Fanout, FileExporter, LiveView, OtlpExporter};
use varta_pipeline::Instrumented;
use varta_pipeline::queue::{BatchReceiver, BatchSender, QueueDepth};
use varta_pipeline::threads::{join_by, spawn};
use varta_processor::recovery::{Recovery, SHUTDOWN_MARGIN};
use varta_processor::{Processor, ProcessorStats, SnapshotReader};
use varta_receiver::{KeyHandle, ReceiverError, ReceiverStats, StopHandle, VlpReceiver, VlpReceiverConfig};

use super::keys::{ExporterKey, PipelinePlan};
use super::wedge;
use crate::config::ExporterConfig;
use crate::health::{HealthCheckConfig, HealthServer, SharedReport, Stage};

/// Joins a thread that should be ending; says whether it ended cleanly in time.
fn join_logged<T>(what: &str, component: &str, thread: JoinHandle<T>, deadline: Instant) -> bool {
    match join_by(thread, deadline) {
        Ok(Ok(_)) => true,
        Ok(Err(_)) => {
            tracing::error!(component, "{what} thread panicked");
            false
        }
        Err(_) => {
            tracing::error!(component, "{what} did not stop before the deadline");
            false
        }
    }
}

/// Takes back what a thread asked to park returns, waiting until
/// `deadline`; a thread still running is left in place (logged).
fn take_parked<T>(thread: &mut Option<JoinHandle<T>>, component: &str, deadline: Instant) -> Option<T> {
    match join_by(thread.take()?, deadline) {
        Ok(Ok(back)) => Some(back),
        Ok(Err(_)) => {
            tracing::error!(component, "thread panicked");
            None
        }
        Err(running) => {
            tracing::error!(component, "did not pause in time; it keeps its old wiring");
            *thread = Some(running);
            None
        }
    }
}

/// A running component a reload keeps, replaces or stops by its key.
pub trait Keyed {
    /// Settings as a reload compares them (see [`super::keys`]).
    type Key: PartialEq;
    fn id(&self) -> &str;
    fn key(&self) -> &Self::Key;
    /// Stops it for good, bounded by `deadline`.
    fn close(self, deadline: Instant);
}

/// Keeps the `slots` whose `(id, key)` is still `wanted`, closes the
/// others, and returns the wanted ones that do not run yet.
pub fn keep_wanted<S: Keyed>(
    slots: &mut Vec<S>,
    wanted: Vec<(String, S::Key)>,
    deadline: Instant,
) -> Vec<(String, S::Key)> {
    let (retired, new) = retire_unwanted(slots, wanted);
    for s in retired {
        s.close(deadline);
    }
    new
}

/// [`keep_wanted`] that hands the slots no longer wanted back instead of
/// closing them, so the caller can close them later (after the pipelines
/// resume: an exporter's final export may wait out its `timeout`, and no
/// pipeline should be parked meanwhile).
pub fn retire_unwanted<S: Keyed>(
    slots: &mut Vec<S>,
    wanted: Vec<(String, S::Key)>,
) -> (Vec<S>, Vec<(String, S::Key)>) {
    let mut retired = Vec::new();
    for s in std::mem::take(slots) {
        if wanted.iter().any(|(id, key)| id == s.id() && key == s.key()) {
            slots.push(s);
        } else {
            retired.push(s);
        }
    }
    let new = wanted.into_iter().filter(|(id, _)| !slots.iter().any(|s| s.id() == id)).collect();
    (retired, new)
}

type ReceiverRun = (VlpReceiver, Result<(), ReceiverError>);

/// A bound receiver: its socket lives as long as the slot.
#[derive(Debug)]
pub struct ReceiverSlot {
    pub id: String,
    /// See [`super::keys::receiver`].
    pub key: VlpReceiverConfig,
    pub feeds: Vec<String>,
    pub stats: Arc<ReceiverStats>,
    pub keys: Option<KeyHandle>,
    stop: StopHandle,
    thread: Option<JoinHandle<ReceiverRun>>,
    parked: Option<VlpReceiver>,
    parking: bool,
}

impl ReceiverSlot {
    /// Binds the socket (parked: [`ReceiverSlot::resume`] starts it).
    pub fn bind(
        id: &str,
        key: VlpReceiverConfig,
        cfg: &VlpReceiverConfig,
        feeds: Vec<String>,
    ) -> Result<ReceiverSlot, String> {
        let receiver = VlpReceiver::bind(id, cfg).map_err(|e| e.to_string())?;
        Ok(ReceiverSlot {
            id: id.to_owned(),
            key,
            feeds,
            stats: receiver.stats(),
            keys: receiver.key_handle(),
            stop: receiver.stop_handle(),
            thread: None,
            parked: Some(receiver),
            parking: false,
        })
    }

    /// Asks the thread to return its receiver (see [`StopHandle::pause`]).
    pub fn request_park(&mut self) {
        if self.thread.is_some() {
            self.stop.pause();
            self.parking = true;
        }
    }

    /// Takes the receiver back from a thread asked to park.
    pub fn park(&mut self, deadline: Instant) {
        if !std::mem::take(&mut self.parking) {
            return;
        }
        let component = format!("receivers::{}", self.id);
        if let Some((receiver, result)) = take_parked(&mut self.thread, &component, deadline) {
            if let Err(e) = result {
                tracing::error!(component, "receiver had stopped with an error: {e}");
            }
            self.parked = Some(receiver);
        }
    }

    /// Runs a parked receiver, feeding `queues`.
    pub fn resume(&mut self, queues: Vec<BatchSender>) -> Result<(), String> {
        let Some(mut receiver) = self.parked.take() else { return Ok(()) };
        let mut queues = queues.into_iter();
        let Some(first) = queues.next() else {
            self.parked = Some(receiver);
            return Err("feeds no running pipeline".into());
        };
        let more: Vec<_> = queues.collect();
        self.stop.unpause();
        let id = self.id.clone();
        self.thread = Some(spawn(format!("recv-{id}"), move || {
            let result = receiver.run_fanout(first, more);
            if let Err(e) = &result {
                tracing::error!(receiver = %id, "receiver stopped with an error: {e}");
            }
            (receiver, result)
        })?);
        Ok(())
    }

    /// Liveness: datagrams read, judged while datagrams wait in the socket.
    pub fn stage(&self) -> Stage {
        let (stats, stop) = (Arc::clone(&self.stats), self.stop.clone());
        Stage::new(
            format!("receivers::{}", self.id),
            Box::new(move || (stats.datagrams.load(Ordering::Relaxed), stop.queued() > 0)),
        )
    }

    pub fn died(&self) -> bool {
        self.thread.as_ref().is_some_and(JoinHandle::is_finished)
    }

    /// Closes the socket for good (the address is free once this returns).
    /// A running receiver first reads what its socket holds into the
    /// queues it feeds (see [`StopHandle::stop`]).
    pub fn close(mut self, deadline: Instant) {
        if self.thread.is_some() {
            self.stop.stop();
            if let Some(t) = self.thread.take() {
                join_logged("receiver", &self.id, t, deadline);
            }
        }
        tracing::info!(receiver = %self.id, "receiver closed");
    }

    /// Shutdown, step one: stop receiving (drains what the socket holds).
    pub fn stop(&self) {
        self.stop.stop();
    }

    pub fn join(mut self, deadline: Instant) -> bool {
        self.thread.take().is_none_or(|t| join_logged("receiver", &self.id, t, deadline))
    }
}

/// A resolver or recovery runner thread, with its metrics.
#[derive(Debug)]
struct Helper {
    id: String,
    stats: Arc<dyn Instrumented>,
    thread: JoinHandle<()>,
    /// Its progress, for the health check (the resolver's).
    progress: Option<varta_agents::Progress>,
    /// How long its own shutdown may take (a recovery runner gives its
    /// children `kill_grace`, then kills and records them): a join waits
    /// at least this long, whatever the caller's deadline.
    ends_within: Duration,
}

impl Helper {
    fn join(self, deadline: Instant) -> bool {
        let deadline = deadline.max(Instant::now() + self.ends_within);
        join_logged("processor", &self.id, self.thread, deadline)
    }
}

/// Distinguishes the pipeline states a `debug`/`otlp` exporter may read.
static GENERATIONS: LazyLock<AtomicU64> = LazyLock::new(|| AtomicU64::new(1));

type ProcessorRun = (Processor, BatchReceiver);

/// One pipeline: its queue, its processor (running or parked) and the
/// processor's helpers.
#[derive(Debug)]
pub struct PipelineSlot {
    pub name: String,
    processor_key: String,
    thresholds_key: String,
    resolver_key: String,
    recovery_key: String,
    queue_batches: usize,
    /// Its exporters' ids, in configuration order.
    pub exporters: Vec<String>,
    /// Changes whenever the state exporters read (snapshots, attributes) is replaced.
    pub generation: u64,
    tx: BatchSender,
    pub depth: QueueDepth,
    /// A replaced queue still holding batches, drained on resume.
    stale: Option<BatchReceiver>,
    pause: Arc<AtomicBool>,
    stats: Arc<ProcessorStats>,
    pub snapshots: SnapshotReader,
    pub attributes: Option<Arc<AttributeStore>>,
    resolver: Option<Helper>,
    recovery: Option<Helper>,
    thread: Option<JoinHandle<ProcessorRun>>,
    processor: Option<Processor>,
    rx: Option<BatchReceiver>,
}

fn new_processor(plan: &PipelinePlan) -> Result<Processor, String> {
    let tracker = plan.tracker.clone().ok_or("no tracker processor")?;
    Processor::new(plan.ratelimit, tracker, Box::new(varta_pipeline::procfs::start_time))
        .map_err(|e| e.to_string())
}

impl PipelineSlot {
    /// A new pipeline, parked.
    pub fn build(plan: &PipelinePlan) -> Result<PipelineSlot, String> {
        let processor = new_processor(plan)?;
        let (tx, rx) = varta_pipeline::queue::batch_queue(plan.queue_batches);
        let mut slot = PipelineSlot {
            name: plan.name.clone(),
            processor_key: plan.processor_key(),
            thresholds_key: plan.thresholds_key(),
            resolver_key: String::new(),
            recovery_key: String::new(),
            queue_batches: plan.queue_batches,
            exporters: plan.exporters.clone(),
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
            depth: rx.depth(),
            tx,
            stale: None,
            pause: Arc::new(AtomicBool::new(false)),
            stats: processor.stats(),
            snapshots: processor.snapshots(),
            attributes: None,
            resolver: None,
            recovery: None,
            thread: None,
            processor: Some(processor),
            rx: Some(rx),
        };
        slot.set_helpers(plan, Instant::now())?;
        Ok(slot)
    }

    /// Whether `plan` needs a new queue (so receivers feeding it rewire).
    pub fn needs_queue(&self, plan: &PipelinePlan) -> bool {
        self.queue_batches != plan.queue_batches
    }

    /// Brings a parked pipeline to `plan`, keeping its agents unless its
    /// tracker or rate limit settings changed.
    pub fn update(&mut self, plan: &PipelinePlan, deadline: Instant) -> Result<(), String> {
        self.exporters = plan.exporters.clone();
        if self.needs_queue(plan) {
            let (tx, rx) = varta_pipeline::queue::batch_queue(plan.queue_batches);
            self.tx = tx;
            self.depth = rx.depth();
            self.stale = self.rx.replace(rx);
            self.queue_batches = plan.queue_batches;
        }
        if self.processor.is_none() || self.processor_key != plan.processor_key() {
            // Helpers first: a recovery runner must have closed its audit
            // file before the new one opens it.
            let numbered = self.processor.as_ref().map_or(1, Processor::next_incident);
            self.drop_helpers(deadline);
            let mut processor = new_processor(plan)?;
            processor.continue_incidents_from(numbered);
            self.stats = processor.stats();
            self.snapshots = processor.snapshots();
            self.processor = Some(processor);
            self.processor_key = plan.processor_key();
            self.thresholds_key = plan.thresholds_key();
            self.generation = GENERATIONS.fetch_add(1, Ordering::Relaxed);
            tracing::info!(pipeline = %self.name, "reload: tracker capacity, clock, snapshot interval or rate limit changed; the pipeline starts with no agents");
        }
        self.set_helpers(plan, deadline)?;
        if self.thresholds_key != plan.thresholds_key() {
            // After the helpers: rules on attributes read the (new) resolver.
            let tracker = plan.tracker.as_ref().ok_or("no tracker processor")?;
            let processor = self.processor.as_mut().ok_or("no processor")?;
            processor.set_thresholds(tracker).map_err(|e| e.to_string())?;
            self.thresholds_key = plan.thresholds_key();
            tracing::info!(pipeline = %self.name, agents = processor.agents(), "reload: threshold settings applied to the tracked agents");
        }
        Ok(())
    }

    /// Replaces the resolver and recovery runner where `plan` differs.
    fn set_helpers(&mut self, plan: &PipelinePlan, deadline: Instant) -> Result<(), String> {
        let processor = self.processor.as_mut().ok_or("no processor")?;
        let resolver_changed = self.resolver_key != plan.resolver_key();
        if self.recovery_key != plan.recovery_key() || resolver_changed {
            processor.set_recovery(None);
            self.recovery.take().map(|h| h.join(deadline));
            self.recovery_key.clear();
        }
        if resolver_changed {
            processor.set_inspector(None);
            self.resolver.take().map(|h| h.join(deadline));
            self.attributes = None;
            // Cleared until the new one runs: a failed start is retried by
            // the next apply.
            self.resolver_key.clear();
            self.generation = GENERATIONS.fetch_add(1, Ordering::Relaxed);
            if let Some((id, cfg)) = &plan.resolver {
                let (started, handle) = Resolver::start(&self.name, *cfg)
                    .map_err(|e| format!("cannot start the resolver: {e}"))?;
                processor.set_inspector(Some(Box::new(handle)));
                self.attributes = Some(started.store);
                self.resolver = Some(Helper {
                    id: id.clone(),
                    stats: started.stats,
                    thread: started.thread,
                    progress: Some(started.progress),
                    ends_within: Duration::ZERO,
                });
            }
            self.resolver_key = plan.resolver_key();
        }
        if self.recovery_key.is_empty()
            && let Some((id, cfg)) = &plan.recovery
        {
            let labels = varta_agents::recovery_targets(self.attributes.clone(), cfg.trusted_slices.clone());
            let window = plan.resolver.as_ref().map(|(_, r)| r.diagnosis.window);
            let probe = Box::new(varta_agents::proc::process_facts);
            let (started, handle) = Recovery::start(&self.name, cfg.clone(), probe, labels, window)
                .map_err(|e| format!("cannot start the recovery runner: {e}"))?;
            processor.set_recovery(Some(handle));
            self.recovery = Some(Helper {
                id: id.clone(),
                stats: started.stats,
                thread: started.thread,
                progress: None,
                ends_within: cfg.kill_grace + SHUTDOWN_MARGIN + Duration::from_millis(500),
            });
        }
        self.recovery_key = plan.recovery_key();
        Ok(())
    }

    fn drop_helpers(&mut self, deadline: Instant) {
        if let Some(p) = self.processor.as_mut() {
            p.set_recovery(None);
            p.set_inspector(None);
        }
        self.processor = None;
        for h in [self.recovery.take(), self.resolver.take()].into_iter().flatten() {
            h.join(deadline);
        }
        self.attributes = None;
        self.resolver_key.clear();
        self.recovery_key.clear();
    }

    /// How long its helpers may take to end (a recovery runner's
    /// `kill_grace` and margin): shutdown gives at least this.
    pub fn ends_within(&self) -> Duration {
        [&self.resolver, &self.recovery]
            .into_iter()
            .flatten()
            .map(|h| h.ends_within)
            .max()
            .unwrap_or_default()
    }

    /// The resolver's and recovery runner's metrics, by processor id.
    pub fn helper_metrics(&self) -> Vec<(String, Arc<dyn Instrumented>)> {
        [&self.resolver, &self.recovery]
            .into_iter()
            .flatten()
            .map(|h| (h.id.clone(), h.stats.clone()))
            .collect()
    }

    /// A sender for a receiver feeding this pipeline.
    pub fn sender(&self) -> BatchSender {
        self.tx.clone()
    }

    /// Asks the processor thread to park, waking it if it sleeps.
    pub fn request_park(&self) {
        if self.thread.is_some() {
            self.pause.store(true, Ordering::Release);
            // An empty batch is a no-op for the processor; it only wakes it.
            let _ = self.tx.try_send(self.tx.empty_batch());
        }
    }

    /// Takes the processor back from a thread asked to park.
    pub fn park(&mut self, deadline: Instant) {
        let component = format!("pipelines::{}", self.name);
        if let Some((processor, rx)) = take_parked(&mut self.thread, &component, deadline) {
            self.processor = Some(processor);
            self.rx = Some(rx);
        }
    }

    /// Runs a parked processor, emitting into `producers`.
    pub fn resume(&mut self, producers: Vec<ExporterQueue>) -> Result<(), String> {
        if self.thread.is_some() {
            return Ok(());
        }
        let (Some(mut processor), Some(rx)) = (self.processor.take(), self.rx.take()) else {
            return Err("no processor (see the reload error)".into());
        };
        let mut fanout = Fanout::new(producers);
        if let Some(stale) = self.stale.take() {
            while let Some(batch) = stale.try_recv() {
                processor.handle_batch(&batch, processor.clock().now_ns(), &mut fanout);
            }
        }
        self.pause.store(false, Ordering::Release);
        let pause = Arc::clone(&self.pause);
        let wedge = wedge::from_env();
        self.thread = Some(spawn(format!("proc-{}", self.name), move || {
            match wedge {
                Some(after) => processor.run_until(&rx, &mut wedge::Wedge::new(fanout, after), &pause),
                None => processor.run_until(&rx, &mut fanout, &pause),
            };
            (processor, rx)
        })?);
        Ok(())
    }

    /// Its stages under watch: the processor, and a resolver (notices
    /// waiting that it does not take).
    pub fn stages(&self) -> Vec<Stage> {
        let (stats, depth) = (Arc::clone(&self.stats), self.depth.clone());
        let mut stages = vec![Stage::new(
            format!("pipelines::{}", self.name),
            Box::new(move || (stats.snapshot().batches, !depth.is_empty())),
        )];
        for helper in [&self.resolver, &self.recovery].into_iter().flatten() {
            if let Some(progress) = &helper.progress {
                let progress = progress.clone();
                stages.push(Stage::new(
                    format!("processors::{}", helper.id),
                    Box::new(move || progress.read()),
                ));
            }
        }
        stages
    }

    /// The component whose thread ended, if one did.
    pub fn died(&self) -> Option<String> {
        if self.thread.as_ref().is_some_and(JoinHandle::is_finished) {
            return Some(format!("pipelines::{}", self.name));
        }
        [&self.resolver, &self.recovery]
            .into_iter()
            .flatten()
            .find(|h| h.thread.is_finished())
            .map(|h| format!("processors::{} ({})", h.id, self.name))
    }

    /// Ends a parked pipeline that was removed.
    pub fn close(mut self, deadline: Instant) {
        self.drop_helpers(deadline);
        tracing::info!(pipeline = %self.name, "pipeline removed");
    }

    /// Shutdown: drops the pipeline's own sender, so its queue closes once
    /// the receivers have stopped.
    pub fn finish(self) -> Finishing {
        let PipelineSlot { name, thread, resolver, recovery, .. } = self;
        Finishing { name, thread, helpers: [resolver, recovery].into_iter().flatten().collect() }
    }
}

/// A pipeline on its way out (see [`PipelineSlot::finish`]).
pub struct Finishing {
    name: String,
    thread: Option<JoinHandle<ProcessorRun>>,
    helpers: Vec<Helper>,
}

impl Finishing {
    pub fn join(self, deadline: Instant) -> bool {
        // The processor ends first; dropping it ends its helpers.
        let mut clean = self.thread.is_none_or(|t| join_logged("processor", &self.name, t, deadline));
        for h in self.helpers {
            clean &= h.join(deadline);
        }
        clean
    }
}

/// What async exporters are given besides their configuration.
#[derive(Debug, Clone)]
pub struct AsyncWiring {
    pub runtime: Option<Handle>,
    pub view: ViewCell,
    pub shutdown_timeout: Duration,
    pub shutdown_deadline: ShutdownDeadline,
}

/// An event exporter: its thread behind its queue.
#[derive(Debug)]
pub struct ExporterSlot {
    pub id: String,
    pub key: ExporterKey,
    /// The pipelines it serves; a pipeline's events reach the exporter as
    /// coming from its index here.
    serves: Vec<String>,
    queue: ExporterQueue,
    thread: JoinHandle<()>,
    pub telemetry: Arc<dyn Instrumented>,
    /// Its final flush talks to the network (OTLP): when replaced, it is
    /// closed after the pipelines resume, never while they are parked.
    pub closes_late: bool,
}

impl ExporterSlot {
    /// Starts the exporter for the pipelines it `serves`.
    pub fn start(
        id: &str,
        key: ExporterKey,
        config: &ExporterConfig,
        serves: &[&PipelineSlot],
        wiring: AsyncWiring,
    ) -> Result<ExporterSlot, String> {
        if serves.len() > usize::from(u16::MAX) {
            return Err("serves too many pipelines".into());
        }
        let mut otlp_stats = None;
        let (exporter, capacity): (Box<dyn Exporter>, usize) = match config {
            ExporterConfig::File(cfg) => {
                (Box::new(FileExporter::open(cfg.clone()).map_err(|e| e.to_string())?), cfg.queue_size)
            }
            ExporterConfig::Debug(cfg) => {
                let pipelines = serves.iter().map(|p| (p.name.clone(), p.attributes.clone())).collect();
                (Box::new(DebugExporter::new(cfg.clone(), pipelines)), 4096)
            }
            ExporterConfig::Otlp(cfg) => {
                let runtime = wiring.runtime.ok_or("no async runtime")?;
                let pipelines = serves
                    .iter()
                    .map(|p| PipelineWiring {
                        name: p.name.clone(),
                        snapshots: p.snapshots.clone(),
                        attributes: p.attributes.clone(),
                    })
                    .collect();
                let wiring = Wiring {
                    pipelines,
                    view: wiring.view,
                    runtime,
                    shutdown_timeout: wiring.shutdown_timeout,
                    shutdown_deadline: wiring.shutdown_deadline,
                };
                let (exporter, stats) = OtlpExporter::start(id, cfg, wiring).map_err(|e| e.to_string())?;
                otlp_stats = Some(stats);
                (Box::new(exporter), cfg.sending_queue.queue_size)
            }
            ExporterConfig::Prometheus(_) => return Err("a metrics endpoint is not an event exporter".into()),
        };
        let (queue, thread) =
            ExporterQueue::start(id.to_owned(), exporter, capacity).map_err(|e| e.to_string())?;
        let telemetry: Arc<dyn Instrumented> = match otlp_stats {
            Some(otlp) => Arc::new(OtlpTelemetry { queue: queue.telemetry(), otlp }),
            None => queue.telemetry(),
        };
        let serves = serves.iter().map(|p| p.name.clone()).collect();
        let closes_late = matches!(config, ExporterConfig::Otlp(_));
        Ok(ExporterSlot { id: id.to_owned(), key, serves, queue, thread, telemetry, closes_late })
    }

    /// A producer handle for `pipeline`'s fan-out, if it serves it.
    pub fn producer(&self, pipeline: &str) -> Option<ExporterQueue> {
        let source = self.serves.iter().position(|p| p == pipeline)?;
        Some(self.queue.share_as(u16::try_from(source).ok()?))
    }

    pub fn stage(&self) -> Stage {
        Stage::new(format!("exporters::{}", self.id), Box::new(self.queue.progress_probe()))
    }

    pub fn died(&self) -> bool {
        self.thread.is_finished()
    }

    pub fn join(self, deadline: Instant) -> bool {
        drop(self.queue);
        join_logged("exporter", &self.id, self.thread, deadline)
    }
}

/// Waits (bounded) for an async server task to end, so its port is free.
fn wait_finished(done: impl Fn() -> bool, deadline: Instant) -> bool {
    while !done() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    done()
}

/// A metrics endpoint serving a [`LiveView`].
#[derive(Debug)]
pub struct EndpointSlot {
    pub id: String,
    pub key: ExporterKey,
    server: PrometheusServer,
    pub telemetry: Arc<dyn Instrumented>,
    /// What it serves: set (and replaced) by every apply.
    pub view: LiveView,
}

impl EndpointSlot {
    pub fn start(
        id: &str,
        key: ExporterKey,
        config: &PrometheusConfig,
        runtime: &Handle,
    ) -> Result<EndpointSlot, String> {
        let bound = BoundEndpoint::bind(config.clone()).map_err(|e| e.to_string())?;
        let telemetry = bound.telemetry();
        let view = LiveView::default();
        let server = bound.serve(view.clone(), runtime).map_err(|e| e.to_string())?;
        Ok(EndpointSlot { id: id.to_owned(), key, server, telemetry, view })
    }

    pub fn died(&self) -> bool {
        self.server.is_finished()
    }

    pub fn stop(&self) {
        self.server.stop();
    }
}

impl Keyed for ExporterSlot {
    fn id(&self) -> &str {
        &self.id
    }

    type Key = ExporterKey;

    fn key(&self) -> &ExporterKey {
        &self.key
    }

    /// Ends the exporter: it writes what is queued, flushes and stops once
    /// no pipeline holds a producer (parked pipelines hold none).
    fn close(self, deadline: Instant) {
        let id = self.id.clone();
        if self.join(deadline) {
            tracing::info!(exporter = %id, "exporter stopped");
        }
    }
}

impl Keyed for EndpointSlot {
    fn id(&self) -> &str {
        &self.id
    }

    type Key = ExporterKey;

    fn key(&self) -> &ExporterKey {
        &self.key
    }

    fn close(self, deadline: Instant) {
        self.server.stop();
        if !wait_finished(|| self.server.is_finished(), deadline) {
            tracing::error!(exporter = %self.id, "metrics endpoint did not stop before the deadline");
        }
    }
}

/// The `health_check` extension.
#[derive(Debug)]
pub struct HealthSlot {
    pub id: String,
    pub key: String,
    server: HealthServer,
}

impl HealthSlot {
    pub fn start(
        id: &str,
        config: &HealthCheckConfig,
        report: SharedReport,
        runtime: &Handle,
    ) -> Result<HealthSlot, String> {
        let server = HealthServer::start(config, report, runtime)?;
        Ok(HealthSlot { id: id.to_owned(), key: format!("{config:?}"), server })
    }

    pub fn stop(&self) {
        self.server.stop();
    }

    /// Its connection counters, for the metrics views.
    pub fn connections(&self) -> Arc<dyn varta_pipeline::Instrumented> {
        self.server.connections.clone()
    }

    pub fn close(self, deadline: Instant) {
        self.server.stop();
        if !wait_finished(|| self.server.is_finished(), deadline) {
            tracing::error!(extension = %self.id, "health endpoint did not stop before the deadline");
        }
    }
}
