//! Pipeline assembly and ordered shutdown.
//!
//! Per pipeline: exporters (each on its own thread behind a bounded queue)
//! ← one processor thread (owns all agent state) ← a bounded batch queue ←
//! one thread per receiver. Shutdown follows the data: receivers stop and
//! drop their queue senders; the processor drains what was queued and
//! returns when the queue disconnects; that drops the exporter queues, so
//! exporters write what is left, flush and end. Each step is bounded by the
//! shutdown deadline.

use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use varta_agents::Resolver;
use varta_exporters::otlp::{OtlpTelemetry, ShutdownDeadline, ViewCell, Wiring};
use varta_exporters::prometheus::{BoundEndpoint, PrometheusServer};
use varta_exporters::{
    CollectorView, DebugExporter, Exporter, ExporterQueue, Fanout, FileExporter, OtlpExporter, PipelineView,
};
use varta_pipeline::{Instrumented, Role};
use varta_processor::Processor;
use varta_processor::recovery::Recovery;
use varta_receiver::{KeyHandle, StopHandle, VlpReceiver};

use crate::config::{
    Config, ConfigError, ExporterConfig, ExtensionConfig, ProcessorConfig, ReceiverConfig,
    components::Component,
};
use crate::health::{self, HealthServer, Phase, SharedReport, Stage};
use crate::reload::ReloadStats;
use crate::runtime::AsyncRuntime;

/// A started collector.
#[derive(Debug)]
pub struct Running {
    stops: Vec<StopHandle>,
    receivers: Vec<(String, JoinHandle<()>)>,
    processors: Vec<(String, JoinHandle<()>)>,
    exporters: Vec<(String, JoinHandle<()>)>,
    /// Metrics endpoints, served on `runtime`.
    servers: Vec<(String, PrometheusServer)>,
    /// The shared Tokio runtime, when a component needs one (metrics
    /// endpoints, OTLP).
    runtime: Option<AsyncRuntime>,
    /// Set when shutdown begins; async exporters bound their final flush by it.
    deadline: ShutdownDeadline,
    /// Every component's metrics and each pipeline's snapshot.
    pub view: CollectorView,
    /// Progress probes of every queue-consuming stage.
    stages: Vec<Stage>,
    /// The `health_check` extension, when configured.
    health: Option<HealthServer>,
    /// What the health endpoint serves (written by the main loop).
    pub report: SharedReport,
    /// Secure receivers' key handles, for reloads.
    pub keys: Vec<(String, KeyHandle)>,
    /// Reload counters.
    pub reloads: Arc<ReloadStats>,
}

fn component_error<T>(config: &Config, section: &str, c: &Component<T>, message: String) -> ConfigError {
    ConfigError {
        source: config.source().to_owned(),
        at: Some(c.at),
        component: Some(format!("{section}::{}", c.id)),
        message,
    }
}

fn spawn<F: FnOnce() + Send + 'static>(name: String, f: F) -> Result<JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map_err(|e| format!("cannot start thread {name}: {e}"))
}

/// Builds and starts every pipeline. Nothing receives until every component
/// of every pipeline was built, so a startup error leaves nothing running.
pub fn start(config: &Config) -> Result<Running, ConfigError> {
    let mut view = CollectorView::default();
    // Async exporters read the finished view; it is complete only once
    // every component has started.
    let view_cell: ViewCell = Arc::new(OnceLock::new());
    let deadline: ShutdownDeadline = Arc::new(OnceLock::new());
    let needs_runtime = config.service.pipelines.values().any(|p| {
        p.value.exporters.iter().any(|id| {
            matches!(
                config.exporters.get(id).map(|c| &c.config),
                Some(ExporterConfig::Otlp(_) | ExporterConfig::Prometheus(_))
            )
        })
    }) || !config.service.extensions.is_empty();
    let runtime = if needs_runtime {
        Some(AsyncRuntime::start().map_err(|e| ConfigError {
            source: config.source().to_owned(),
            at: None,
            component: None,
            message: format!("cannot start the async runtime: {e}"),
        })?)
    } else {
        None
    };
    let mut receivers = Vec::new();
    let mut exporter_metrics = Vec::new();
    let mut processor_metrics: Vec<(String, Arc<dyn Instrumented>)> = Vec::new();
    // Resolver and recovery threads end when their processor does; joined after processors.
    let mut resolvers = Vec::new();
    let mut exporters = Vec::new();
    let mut stages = Vec::new();
    let mut keys = Vec::new();
    let mut ready = Vec::new();
    // Metrics endpoints, bound before anything runs, with the pipelines each serves.
    let mut endpoints: Vec<(String, BoundEndpoint, Vec<String>)> = Vec::new();
    // Receivers bound so far, with the pipelines each feeds.
    let mut bound: Vec<(String, VlpReceiver, Vec<String>)> = Vec::new();
    // Event exporters started so far (a handle each, dropped once wired).
    let mut started: Vec<ExporterQueue> = Vec::new();

    for (name, pipeline) in &config.service.pipelines {
        let p = &pipeline.value;
        let pipeline_err = |m: String| ConfigError {
            source: config.source().to_owned(),
            at: None,
            component: Some(format!("service::pipelines::{name}")),
            message: m,
        };
        let mut ratelimit = None;
        let mut tracker = None;
        let mut resolver = None;
        let mut recovery = None;
        for id in &p.processors {
            match config.processors.get(id).map(|c| &c.config) {
                Some(ProcessorConfig::RateLimit(cfg)) => ratelimit = Some(*cfg),
                Some(ProcessorConfig::Tracker(cfg)) => tracker = Some(*cfg),
                Some(ProcessorConfig::Resolver(cfg)) => resolver = Some((id.clone(), *cfg)),
                Some(ProcessorConfig::Recovery(cfg)) => recovery = Some((id.clone(), (**cfg).clone())),
                None => {}
            }
        }
        // The resolver first: exporters read the attributes it stores.
        let mut inspector = None;
        let mut attributes = None;
        if let Some((id, cfg)) = resolver {
            let (started, handle) = Resolver::start(name, cfg)
                .map_err(|e| pipeline_err(format!("cannot start the resolver: {e}")))?;
            attributes = Some(Arc::clone(&started.store));
            processor_metrics.push((id, started.stats.clone() as Arc<dyn Instrumented>));
            resolvers.push((format!("resolver-{name}"), started.thread));
            inspector = Some(handle);
        }
        let tracker = tracker.ok_or_else(|| pipeline_err("no tracker processor".into()))?;
        let mut processor = Processor::new(ratelimit, tracker, Box::new(varta_pipeline::procfs::start_time))
            .map_err(|e| pipeline_err(e.to_string()))?;
        if let Some(handle) = inspector {
            processor = processor.with_inspector(Box::new(handle));
        }
        if let Some((id, cfg)) = recovery {
            let store = attributes.clone();
            let labels: varta_processor::recovery::AgentLabels = Box::new(move |agent| {
                let view = store.as_ref().map(|s| s.read());
                let a = view.as_ref().and_then(|v| v.get(agent));
                [
                    a.and_then(|a| a.service_name()).map(str::to_owned),
                    a.and_then(|a| a.executable_name()).map(str::to_owned),
                    a.and_then(|a| a.container_id()).map(str::to_owned),
                ]
            });
            let (started, handle) =
                Recovery::start(name, cfg, Box::new(varta_agents::proc::process_facts), labels)
                    .map_err(|e| pipeline_err(format!("cannot start the recovery runner: {e}")))?;
            processor_metrics.push((id, started.stats.clone() as Arc<dyn Instrumented>));
            resolvers.push((format!("recovery-{name}"), started.thread));
            processor = processor.with_recovery(handle);
        }

        // Exporters next: they must be ready before any event exists (the
        // processor only emits once it runs).
        let mut queues = Vec::new();
        for id in &p.exporters {
            let Some(c) = config.exporters.get(id) else { continue };
            // An exporter serving several pipelines runs once; later
            // pipelines get another producer handle on its queue.
            if let Some(first) = started.iter().find(|q: &&ExporterQueue| q.id() == id) {
                queues.push(first.share());
                continue;
            }
            let err = |m: String| component_error(config, "exporters", c, m);
            let mut otlp_stats = None;
            let (exporter, capacity): (Box<dyn Exporter>, usize) = match &c.config {
                ExporterConfig::File(cfg) => (
                    Box::new(FileExporter::open(cfg.clone()).map_err(|e| err(e.to_string()))?),
                    cfg.queue_size,
                ),
                ExporterConfig::Debug(cfg) => {
                    (Box::new(DebugExporter::new(cfg.clone(), attributes.clone())), 4096)
                }
                ExporterConfig::Prometheus(cfg) => {
                    match endpoints.iter_mut().find(|(eid, ..)| eid == id) {
                        Some((.., served)) => served.push(name.clone()),
                        None => {
                            let bound = BoundEndpoint::bind(cfg.clone()).map_err(|e| err(e.to_string()))?;
                            endpoints.push((id.clone(), bound, vec![name.clone()]));
                        }
                    }
                    continue;
                }
                ExporterConfig::Otlp(cfg) => {
                    let Some(rt) = &runtime else { return Err(err("no async runtime".into())) };
                    let wiring = Wiring {
                        pipeline: name.clone(),
                        snapshots: processor.snapshots(),
                        view: view_cell.clone(),
                        runtime: rt.handle(),
                        shutdown_timeout: config.service.shutdown_timeout,
                        shutdown_deadline: deadline.clone(),
                        attributes: attributes.clone(),
                    };
                    let (exporter, stats) =
                        OtlpExporter::start(id, cfg, wiring).map_err(|e| err(e.to_string()))?;
                    otlp_stats = Some(stats);
                    (Box::new(exporter), cfg.sending_queue.queue_size)
                }
            };
            let (queue, thread) =
                ExporterQueue::start(id.clone(), exporter, capacity).map_err(|e| err(e.to_string()))?;
            let telemetry: Arc<dyn Instrumented> = match otlp_stats {
                Some(otlp) => Arc::new(OtlpTelemetry { queue: queue.telemetry(), otlp }),
                None => queue.telemetry(),
            };
            exporter_metrics.push((id.clone(), telemetry));
            stages.push(Stage::new(format!("exporters::{id}"), Box::new(queue.progress_probe())));
            exporters.push((id.clone(), thread));
            started.push(queue.share());
            queues.push(queue);
        }

        for id in &p.receivers {
            let Some(c) = config.receivers.get(id) else { continue };
            // A receiver shared by several pipelines is bound once and feeds each.
            if let Some((.., fed)) = bound.iter_mut().find(|(rid, ..)| rid == id) {
                fed.push(name.clone());
                continue;
            }
            let ReceiverConfig::Vlp(cfg) = &c.config;
            // ReceiverError messages already name the receiver.
            let receiver = VlpReceiver::bind(id, cfg).map_err(|e| ConfigError {
                component: None,
                ..component_error(config, "receivers", c, e.to_string())
            })?;
            receivers.push((id.clone(), receiver.stats()));
            if let Some(handle) = receiver.key_handle() {
                keys.push((id.clone(), handle));
            }
            bound.push((id.clone(), receiver, vec![name.clone()]));
        }
        ready.push((name.clone(), p.queue_batches, processor, Fanout::new(queues), attributes));
    }

    // Metrics are listed in configuration order: receivers, pipelines, exporters.
    for (id, stats) in receivers {
        view.add(Role::Receiver, id, stats);
    }
    let mut pipelines = Vec::new();
    for (id, metrics) in processor_metrics {
        view.add(Role::Processor, id, metrics);
    }
    for (name, queue_batches, processor, fanout, attributes) in ready {
        let (tx, rx) = varta_pipeline::queue::batch_queue(queue_batches);
        let (stats, depth) = (processor.stats(), rx.depth());
        stages.push(Stage::new(
            format!("pipelines::{name}"),
            Box::new(move || (stats.snapshot().batches, !depth.is_empty())),
        ));
        view.add_pipeline(PipelineView {
            name: name.clone(),
            snapshots: processor.snapshots(),
            queue: rx.depth(),
            attributes,
        });
        pipelines.push((name, processor, fanout, tx, rx));
    }
    for (id, metrics) in exporter_metrics {
        view.add(Role::Exporter, id, metrics);
    }
    for (id, bound, _) in &endpoints {
        view.add(Role::Exporter, id.clone(), bound.telemetry());
    }
    let reloads = Arc::new(ReloadStats::default());
    view.add(Role::Service, "service", reloads.clone());

    // The view is complete: async exporters may read it from now on.
    let _ = view_cell.set(view.clone());
    let mut servers = Vec::new();
    if let Some(rt) = &runtime {
        for (id, bound, served) in endpoints {
            let mut own = view.clone();
            own.pipelines.retain(|p| served.contains(&p.name));
            let server = bound.serve(own, &rt.handle()).map_err(|e| ConfigError {
                source: config.source().to_owned(),
                at: None,
                component: Some(format!("exporters::{id}")),
                message: e.to_string(),
            })?;
            servers.push((id, server));
        }
    }

    let report = health::shared_report();
    let mut health_server = None;
    for id in &config.service.extensions {
        let Some(c) = config.extensions.get(id) else { continue };
        let ExtensionConfig::HealthCheck(cfg) = &c.config;
        let Some(rt) = &runtime else { continue };
        health_server =
            Some(HealthServer::start(cfg, Arc::clone(&report), &rt.handle()).map_err(|m| ConfigError {
                source: config.source().to_owned(),
                at: Some(c.at),
                component: Some(format!("extensions::{id}")),
                message: m,
            })?);
    }

    let mut running = Running {
        stops: Vec::new(),
        receivers: Vec::new(),
        processors: Vec::new(),
        exporters,
        servers,
        runtime,
        deadline,
        view,
        stages,
        health: health_server,
        report,
        keys,
        reloads,
    };
    let mut senders = Vec::new();
    for (name, processor, mut fanout, tx, rx) in pipelines {
        let wedge = test_wedge();
        let handle = spawn(format!("proc-{name}"), move || match wedge {
            Some(after) => processor.run(rx, &mut Wedge { inner: fanout, remaining: after }),
            None => processor.run(rx, &mut fanout),
        })
        .map_err(|m| ConfigError {
            source: config.source().to_owned(),
            at: None,
            component: None,
            message: m,
        })?;
        running.processors.push((name.clone(), handle));
        senders.push((name, tx));
    }
    for (id, receiver, fed) in bound {
        let mut queues =
            fed.iter().filter_map(|p| senders.iter().find(|(name, _)| name == p)).map(|(_, tx)| tx.clone());
        let Some(first) = queues.next() else { continue };
        let more: Vec<_> = queues.collect();
        running.stops.push(receiver.stop_handle());
        let rid = id.clone();
        let handle = spawn(format!("recv-{id}"), move || {
            if let Err(e) = receiver.run_fanout(first, more) {
                tracing::error!(receiver = %rid, "receiver stopped with an error: {e}");
            }
        })
        .map_err(|m| ConfigError {
            source: config.source().to_owned(),
            at: None,
            component: None,
            message: m,
        })?;
        running.receivers.push((id, handle));
    }
    // Only the receivers hold senders now: a pipeline's queue closes when
    // every receiver feeding it has stopped.
    drop(senders);
    running.processors.extend(resolvers);
    Ok(running)
}

/// Test-only fault hook (debug builds only): with
/// `VARTA_TEST_WEDGE_PROCESSOR_AFTER=N` the processor thread blocks forever
/// after emitting N events — how the integration tests wedge a pipeline to
/// check that the health endpoint and the systemd watchdog notice.
fn test_wedge() -> Option<u64> {
    if !cfg!(debug_assertions) {
        return None;
    }
    std::env::var("VARTA_TEST_WEDGE_PROCESSOR_AFTER").ok()?.parse().ok()
}

/// The event sink that wedges its processor (see [`test_wedge`]).
struct Wedge {
    inner: Fanout,
    remaining: u64,
}

impl varta_processor::EventSink for Wedge {
    fn emit(&mut self, event: &varta_processor::Event) {
        if self.remaining == 0 {
            tracing::warn!("VARTA_TEST_WEDGE_PROCESSOR_AFTER: wedging the processor thread (test hook)");
            loop {
                std::thread::park();
            }
        }
        self.remaining -= 1;
        self.inner.emit(event);
    }

    fn wants_beats(&self) -> bool {
        true
    }
}

fn join_all(stage: &str, threads: Vec<(String, JoinHandle<()>)>, deadline: Instant) -> bool {
    let mut clean = true;
    for (id, t) in threads {
        while !t.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !t.is_finished() {
            tracing::error!(component = %id, "{stage} did not stop before the shutdown deadline");
            clean = false;
        } else if t.join().is_err() {
            tracing::error!(component = %id, "{stage} thread panicked");
            clean = false;
        }
    }
    clean
}

impl Running {
    /// Whether any thread ended (they only end at shutdown): then the
    /// collector shuts down.
    pub fn thread_died(&self) -> Option<String> {
        let threads = [
            ("receivers", &self.receivers),
            ("processors", &self.processors),
            ("exporters", &self.exporters),
        ];
        for (section, list) in threads {
            if let Some((id, _)) = list.iter().find(|(_, t)| t.is_finished()) {
                return Some(format!("{section}::{id}"));
            }
        }
        self.servers.iter().find(|(_, s)| s.is_finished()).map(|(id, _)| format!("exporters::{id}"))
    }

    /// Re-checks every stage's progress (see [`crate::health`]), updates the
    /// shared report and says whether all is healthy (gates the systemd
    /// watchdog and the health endpoint).
    pub fn check_health(&mut self, timeout: Duration) -> bool {
        let now = Instant::now();
        let unhealthy: Vec<(String, String)> = self
            .stages
            .iter_mut()
            .filter_map(|s| s.check(now, timeout).map(|why| (s.component.clone(), why)))
            .collect();
        let mut report = self.report.lock().unwrap_or_else(|p| p.into_inner());
        report.phase = Phase::Running;
        if !unhealthy.is_empty() && report.unhealthy != unhealthy {
            tracing::error!(
                ?unhealthy,
                "a pipeline stage makes no progress while work waits; health checks fail"
            );
        }
        report.unhealthy = unhealthy;
        report.healthy()
    }

    /// Ordered shutdown; says whether every stage stopped cleanly in time,
    /// and hands back the view (processors published their final snapshot
    /// when they ended).
    pub fn shutdown(self, timeout: Duration) -> (bool, CollectorView) {
        let deadline = Instant::now() + timeout;
        self.report.lock().unwrap_or_else(|p| p.into_inner()).phase = Phase::Stopping;
        let _ = self.deadline.set(deadline);
        for stop in &self.stops {
            stop.stop();
        }
        let r = join_all("receiver", self.receivers, deadline);
        let p = join_all("processor", self.processors, deadline);
        let e = join_all("exporter", self.exporters, deadline);
        // Metrics endpoints last: they serve the final snapshots until here.
        for (_, server) in &self.servers {
            server.stop();
        }
        if let Some(h) = &self.health {
            h.stop();
        }
        if let Some(rt) = self.runtime {
            // Exporters have flushed (or given up at the deadline); what is
            // left of it bounds the runtime's own shutdown.
            rt.shutdown(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100)));
        }
        (r && p && e, self.view)
    }
}
