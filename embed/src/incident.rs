//! Incident events for the host program: stall, diagnosis, resume, panic,
//! recovery, each with the agent's attributes.
//!
//! Promises: the host's callback runs on a thread of its own behind the
//! exporters' two-lane bounded queue (`varta_exporters::ExporterQueue`), so
//! a slow callback never slows the processor; when the queue is full the
//! oldest queued event is dropped and counted (component `incidents`,
//! `varta.collector.exporter.dropped`). Events arrive in the order the
//! processor decided them. Other events (beats, refusals, status changes,
//! evictions) are not delivered here: refusals are counted and exported
//! as metrics.

use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::KeyValue;
use varta_agents::AttributeStore;
use varta_exporters::Exporter;
use varta_exporters::otlp::attrs;
use varta_exporters::otlp::wallclock::WallClock;
use varta_processor::{AgentRef, Event, EventKind};

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

/// The exporter that hands incidents to the host's callback.
pub struct IncidentExporter {
    callback: IncidentCallback,
    clock: WallClock,
    store: Option<Arc<AttributeStore>>,
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
    ) -> IncidentExporter {
        IncidentExporter { callback, clock, store }
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
        (self.callback)(&incident);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
