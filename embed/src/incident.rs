//! Incident events for the host program: stall, diagnosis, resume, panic,
//! recovery, each with the agent's attributes.
//!
//! Promises: the host's callback runs on a thread of its own behind the
//! exporters' two-lane bounded queue (`varta_exporters::ExporterQueue`), so
//! a slow callback never slows the processor; when the queue is full the
//! oldest queued event is dropped and counted (component `incidents`,
//! `varta.collector.exporter.dropped`). Events arrive in the order the
//! processor decided them. A callback that panics loses only that
//! incident: the panic is caught, logged and counted (component
//! `incidents.callback`, `varta.collector.exporter.callback_panics`), and
//! delivery goes on. Other events (beats, refusals, status changes,
//! evictions) are not delivered here: refusals are counted and exported
//! as metrics.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::SystemTime;

use opentelemetry::KeyValue;
use varta_agents::AttributeStore;
use varta_exporters::Exporter;
use varta_pipeline::{Instrumented, Metric, Sample};
use varta_processor::{AgentRef, Event, EventKind};
use varta_telemetry::attrs;
use varta_telemetry::wallclock::WallClock;

use crate::otel::convert;

/// One incident event and who it is about.
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    /// What the processor emitted: processor time `at_ns`, the agent, what happened.
    pub event: Event,
    /// When it happened, on the wall clock.
    pub time: SystemTime,
    /// The agent's identity (`process.pid`, `varta.agent.source`,
    /// `varta.agent.transport`) and what the resolver knows of it
    /// (`service.name`, `process.executable.name`, `container.id`, …): the
    /// attributes its spans carry besides the event's own.
    pub attributes: Vec<KeyValue>,
}

impl Incident {
    /// The incident id (shared by a stall and its diagnosis, recovery and
    /// resume; a panic has none).
    pub fn incident_id(&self) -> Option<u64> {
        match self.event.kind {
            EventKind::Stall { incident, .. }
            | EventKind::Resume { incident, .. }
            | EventKind::Diagnosis { incident, .. }
            | EventKind::Recovery { incident, .. } => Some(incident),
            _ => None,
        }
    }

    /// The value of attribute `key`, if it has one.
    pub fn attribute(&self, key: &str) -> Option<&opentelemetry::Value> {
        self.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| &kv.value)
    }
}

/// Whether `kind` is delivered as an [`Incident`].
pub fn is_reported(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Stall { .. }
            | EventKind::Resume { .. }
            | EventKind::Diagnosis { .. }
            | EventKind::Panic { .. }
            | EventKind::Recovery { .. }
    )
}

/// The attributes of `agent` (see [`Incident::attributes`]), exactly as
/// the collector puts them on spans when agents are not resources.
pub fn agent_attributes(agent: &AgentRef, store: Option<&AttributeStore>) -> Vec<KeyValue> {
    let mut proto = Vec::with_capacity(16);
    attrs::agent(&mut proto, agent);
    if let Some(store) = store {
        let view = store.read();
        if let Some(resolved) = view.get(&agent.id) {
            attrs::resolved(&mut proto, &resolved);
        }
    }
    convert::attributes(&proto)
}

/// The host's callback.
pub type IncidentCallback = Box<dyn FnMut(&Incident) + Send>;

mod metric {
    use varta_pipeline::Metric;
    pub static DELIVERED: Metric =
        Metric::counter("delivered", "Incidents handed to the host's callback.").unit("{incident}");
    pub static PANICS: Metric =
        Metric::counter("callback_panics", "Incidents whose callback panicked (caught; delivery went on).")
            .unit("{incident}");
}

/// The callback's counters.
#[derive(Debug, Default)]
pub struct CallbackStats {
    pub delivered: AtomicU64,
    pub panics: AtomicU64,
}

impl Instrumented for CallbackStats {
    fn samples(&self, out: &mut dyn FnMut(Sample)) {
        let plain: [(&'static Metric, u64); 2] = [
            (&metric::DELIVERED, self.delivered.load(Relaxed)),
            (&metric::PANICS, self.panics.load(Relaxed)),
        ];
        for (m, v) in plain {
            out(Sample::new(m, v));
        }
    }
}

/// The exporter that hands incidents to the host's callback.
pub struct IncidentExporter {
    callback: IncidentCallback,
    clock: WallClock,
    store: Option<Arc<AttributeStore>>,
    stats: Arc<CallbackStats>,
}

impl std::fmt::Debug for IncidentExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncidentExporter").field("clock", &self.clock).finish_non_exhaustive()
    }
}

impl IncidentExporter {
    /// `clock`: the pipeline's (shared with the span adapter, so both agree on times).
    pub fn new(
        callback: IncidentCallback,
        clock: WallClock,
        store: Option<Arc<AttributeStore>>,
    ) -> (IncidentExporter, Arc<CallbackStats>) {
        let stats = Arc::new(CallbackStats::default());
        (IncidentExporter { callback, clock, store, stats: stats.clone() }, stats)
    }
}

impl Exporter for IncidentExporter {
    fn wants_beats(&self) -> bool {
        false
    }

    fn export(&mut self, event: &Event) -> std::io::Result<()> {
        if !is_reported(&event.kind) {
            return Ok(());
        }
        let Some(agent) = event.agent.as_ref() else { return Ok(()) };
        self.clock.check_step();
        let incident = Incident {
            event: *event,
            time: convert::time(self.clock.to_unix_ns(event.at_ns)),
            attributes: agent_attributes(agent, self.store.as_deref()),
        };
        // The host's code: a panic there must not end delivery for good.
        let callback = &mut self.callback;
        match catch_unwind(AssertUnwindSafe(|| callback(&incident))) {
            Ok(()) => {
                self.stats.delivered.fetch_add(1, Relaxed);
            }
            Err(_) => {
                self.stats.panics.fetch_add(1, Relaxed);
                tracing::error!(incident = ?incident.incident_id(), "the host's incident callback panicked; delivery goes on");
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
