//! The running instance of each collector-side component kind — event
//! exporters, metrics endpoints, the health extension — and the reload
//! rule they share: keep what a reload's key did not change, close the
//! rest (bounded). Pipelines and receivers are the engine's
//! ([`varta_embed::compose`]).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use varta_embed::compose::Pipeline;
use varta_exporters::prometheus::PrometheusServer;
use varta_exporters::{ExporterQueue, LiveView};
use varta_pipeline::Instrumented;
use varta_pipeline::threads::join_by;

use super::keys::ExporterKey;
use crate::config::{ExporterConfig, ExtensionConfig};
use crate::health::{HealthServer, SharedReport, Stage};
use crate::registry::exporters::AsyncWiring;
use crate::registry::exporters::Built;

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
        serves: &[&Pipeline],
        wiring: AsyncWiring,
    ) -> Result<ExporterSlot, String> {
        if serves.len() > usize::from(u16::MAX) {
            return Err("serves too many pipelines".into());
        }
        let Built { exporter, capacity, extra, closes_late } = config.build(id, serves, wiring)?;
        let (queue, thread) =
            ExporterQueue::start(id.to_owned(), exporter, capacity).map_err(|e| e.to_string())?;
        let telemetry = Built::telemetry(extra, queue.telemetry());
        let serves = serves.iter().map(|p| p.name.clone()).collect();
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
        config: &ExporterConfig,
        runtime: &Handle,
    ) -> Result<EndpointSlot, String> {
        let bound = config.bind_endpoint()?;
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
    /// Its settings, compared by value on a reload.
    pub key: ExtensionConfig,
    server: HealthServer,
}

impl HealthSlot {
    pub fn start(
        id: &str,
        config: &ExtensionConfig,
        report: SharedReport,
        runtime: &Handle,
    ) -> Result<HealthSlot, String> {
        let health = config.health_check().ok_or("not a health check")?;
        let server = HealthServer::start(health, report, runtime)?;
        Ok(HealthSlot { id: id.to_owned(), key: config.clone(), server })
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
