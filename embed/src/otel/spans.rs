//! Incidents as spans through the host's `opentelemetry::trace::Tracer`.
//!
//! Promises:
//! * **Same shape as the collector's OTLP traces.** Each span is first
//!   built by the collector's own `varta_telemetry::traces::SpanBuilder`
//!   (names `varta.stall`, `varta.stall.resolved`, `varta.stall.diagnosis`,
//!   `varta.recovery`, `varta.agent.panic`; attributes, events, status,
//!   start and end times) and then started and ended through the API, so
//!   the two cannot drift. The agent's identity and resolved attributes are
//!   span attributes (the collector's `agent_resource: false` form): the
//!   resource is the host program's, as its SDK set it up.
//! * **Parent/child.** The API lets the SDK choose trace and span ids, so
//!   the `varta.stall` span's context is remembered per agent while its
//!   incident is open, and the incident's diagnosis, recovery and
//!   resolution are started with it as their (remote) parent: one trace per
//!   incident, `varta.incident.id` on every span of it. Closed incidents
//!   stay findable for late children (a recovery that finishes after the
//!   resume) in a ring of [`RECENT_INCIDENTS`].
//! * **Bounded and counted.** Open incidents are at most one per tracked
//!   agent (the tracker's capacity bounds them); a child whose incident is
//!   no longer known (its stall was dropped from a full queue, or it left
//!   the ring) is exported as a root span and counted
//!   (`spans_without_parent`).
//! * Runs on the exporter thread behind the usual bounded queue: the SDK's
//!   span processor may block here, never the processor thread.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{
    Event as ApiEvent, Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span as ProtoSpan;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use varta_agents::AttributeStore;
use varta_exporters::Exporter;
use varta_pipeline::{Instrumented, Metric, Sample};
use varta_processor::{AgentId, Event, EventKind};
use varta_telemetry::ids::IdSource;
use varta_telemetry::traces::SpanBuilder;
use varta_telemetry::wallclock::WallClock;

use super::convert;

/// Closed incidents whose `varta.stall` context stays known for late children.
pub const RECENT_INCIDENTS: usize = 1024;

mod metric {
    use varta_pipeline::Metric;
    pub static SPANS: Metric =
        Metric::counter("spans", "Spans started and ended through the host's tracer.").unit("{span}");
    pub static WITHOUT_PARENT: Metric = Metric::counter(
        "spans_without_parent",
        "Child spans whose incident's varta.stall span was not known (its stall event was dropped, or the incident left the ring of recent ones): exported as roots.",
    ).unit("{span}");
}

/// The span adapter's counters.
#[derive(Debug, Default)]
pub struct SpanStats {
    pub spans: AtomicU64,
    pub without_parent: AtomicU64,
}

impl Instrumented for SpanStats {
    fn samples(&self, out: &mut dyn FnMut(Sample)) {
        let plain: [(&'static Metric, u64); 2] = [
            (&metric::SPANS, self.spans.load(Relaxed)),
            (&metric::WITHOUT_PARENT, self.without_parent.load(Relaxed)),
        ];
        for (m, v) in plain {
            out(Sample::new(m, v));
        }
    }
}

/// Where the incidents' `varta.stall` spans are, for their children.
#[derive(Debug, Default)]
struct Parents {
    /// The open incident of each stalled agent.
    open: HashMap<AgentId, (u64, SpanContext)>,
    /// Incidents that ended (resumed, or their agent evicted), newest last.
    recent: VecDeque<(u64, SpanContext)>,
    /// Bound of `open` (the tracker's capacity).
    capacity: usize,
}

impl Parents {
    fn opened(&mut self, agent: AgentId, incident: u64, cx: SpanContext) {
        if self.open.len() >= self.capacity && !self.open.contains_key(&agent) {
            // Cannot happen while incidents ≤ tracked agents; bounded anyway.
            if let Some(k) = self.open.keys().next().copied() {
                self.close(&k);
            }
        }
        if let Some((old, old_cx)) = self.open.insert(agent, (incident, cx)) {
            self.remember(old, old_cx);
        }
    }

    fn close(&mut self, agent: &AgentId) {
        if let Some((incident, cx)) = self.open.remove(agent) {
            self.remember(incident, cx);
        }
    }

    fn remember(&mut self, incident: u64, cx: SpanContext) {
        if self.recent.len() == RECENT_INCIDENTS {
            self.recent.pop_front();
        }
        self.recent.push_back((incident, cx));
    }

    fn find(&self, agent: &AgentId, incident: u64) -> Option<&SpanContext> {
        match self.open.get(agent) {
            Some((i, cx)) if *i == incident => Some(cx),
            _ => self.recent.iter().rev().find(|(i, _)| *i == incident).map(|(_, cx)| cx),
        }
    }
}

/// The exporter that emits incidents as spans through `T`.
pub struct SpanExporter {
    /// `None`: metrics only (the stall-duration histogram).
    tracer: Option<BoxedTracer>,
    spans: SpanBuilder,
    clock: WallClock,
    parents: Parents,
    stats: Arc<SpanStats>,
    /// `varta.stall.duration`, recorded per resume (see [`super::metrics`]).
    durations: Option<opentelemetry::metrics::Histogram<f64>>,
    pipeline: KeyValue,
}

impl std::fmt::Debug for SpanExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanExporter").field("pipeline", &self.pipeline).finish_non_exhaustive()
    }
}

impl SpanExporter {
    pub fn new(
        tracer: Option<BoxedTracer>,
        pipeline: &str,
        clock: WallClock,
        store: Option<Arc<AttributeStore>>,
        capacity: usize,
        durations: Option<opentelemetry::metrics::Histogram<f64>>,
    ) -> (SpanExporter, Arc<SpanStats>) {
        let stats = Arc::new(SpanStats::default());
        let me = SpanExporter {
            tracer,
            // The ids it makes are not used: the host's SDK assigns them.
            spans: SpanBuilder::new(IdSource::new(0, pipeline), pipeline).with_attributes(store),
            clock,
            parents: Parents { capacity: capacity.max(1), ..Parents::default() },
            stats: stats.clone(),
            durations,
            pipeline: KeyValue::new("varta.pipeline", pipeline.to_owned()),
        };
        (me, stats)
    }

    /// A span of `agent`'s `incident`, under its `varta.stall` span.
    fn child(&self, span: ProtoSpan, agent: &AgentId, incident: u64) {
        let parent = self.parents.find(agent, incident).cloned();
        if parent.is_none() {
            self.stats.without_parent.fetch_add(1, Relaxed);
        }
        self.emit(span, parent.as_ref());
    }

    /// Starts and ends `span` through the tracer, under `parent` (or as a
    /// root); returns its context.
    fn emit(&self, span: ProtoSpan, parent: Option<&SpanContext>) -> SpanContext {
        let Some(tracer) = &self.tracer else { return SpanContext::empty_context() };
        let events = span
            .events
            .iter()
            .map(|e| {
                ApiEvent::new(
                    e.name.clone(),
                    convert::time(e.time_unix_nano),
                    convert::attributes(&e.attributes),
                    0,
                )
            })
            .collect();
        let builder = tracer
            .span_builder(span.name.clone())
            .with_kind(SpanKind::Internal)
            .with_start_time(convert::time(span.start_time_unix_nano))
            .with_attributes(convert::attributes(&span.attributes))
            .with_events(events);
        let cx = match parent {
            Some(p) => Context::new().with_remote_span_context(p.clone()),
            None => Context::new(),
        };
        let mut out = tracer.build_with_context(builder, &cx);
        if let Some(status) = &span.status {
            if status.code == StatusCode::Error as i32 {
                out.set_status(Status::error(status.message.clone()));
            } else if status.code == StatusCode::Ok as i32 {
                out.set_status(Status::Ok);
            }
        }
        let context = out.span_context().clone();
        out.end_with_timestamp(convert::time(span.end_time_unix_nano));
        self.stats.spans.fetch_add(1, Relaxed);
        context
    }
}

impl Exporter for SpanExporter {
    fn wants_beats(&self) -> bool {
        false
    }

    fn export(&mut self, event: &Event) -> std::io::Result<()> {
        let Some(agent) = event.agent.as_ref() else { return Ok(()) };
        if let EventKind::Evicted { .. } = event.kind {
            self.parents.close(&agent.id);
            return Ok(());
        }
        if let (EventKind::Resume { silence_ns, .. }, Some(h)) = (&event.kind, &self.durations) {
            h.record(*silence_ns as f64 / 1e9, std::slice::from_ref(&self.pipeline));
        }
        if self.tracer.is_none() {
            return Ok(());
        }
        self.clock.check_step();
        let Some(span) = self.spans.span(event, &self.clock) else { return Ok(()) };
        match event.kind {
            EventKind::Stall { incident, .. } => {
                let cx = self.emit(span, None);
                self.parents.opened(agent.id, incident, cx);
            }
            EventKind::Resume { incident, .. } => {
                self.child(span, &agent.id, incident);
                self.parents.close(&agent.id);
            }
            EventKind::Diagnosis { incident, .. } | EventKind::Recovery { incident, .. } => {
                self.child(span, &agent.id, incident);
            }
            _ => {
                self.emit(span, None);
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
    use varta_proto::Source;

    fn agent(pid: u32) -> AgentId {
        AgentId { source: Source::Local, pid, start_time: 1 }
    }

    fn cx(n: u64) -> SpanContext {
        SpanContext::new(
            TraceId::from(u128::from(n)),
            SpanId::from(n),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        )
    }

    #[test]
    fn children_find_their_incident_while_open_and_for_a_while_after() {
        let mut p = Parents { capacity: 2, ..Parents::default() };
        p.opened(agent(1), 10, cx(10));
        assert_eq!(p.find(&agent(1), 10), Some(&cx(10)));
        assert_eq!(p.find(&agent(1), 11), None, "another incident of the same agent");
        p.close(&agent(1));
        assert!(p.open.is_empty());
        assert_eq!(p.find(&agent(1), 10), Some(&cx(10)), "a late recovery still finds its stall");
        for i in 0..RECENT_INCIDENTS as u64 {
            p.opened(agent(2), 100 + i, cx(100 + i));
            p.close(&agent(2));
        }
        assert_eq!(p.find(&agent(1), 10), None, "the ring forgets the oldest");
        assert_eq!(p.recent.len(), RECENT_INCIDENTS);
    }

    #[test]
    fn open_incidents_stay_within_the_tracker_capacity() {
        let mut p = Parents { capacity: 2, ..Parents::default() };
        for pid in 1..=5 {
            p.opened(agent(pid), u64::from(pid), cx(u64::from(pid)));
            assert!(p.open.len() <= 2);
        }
        // Whoever was pushed out is still findable among the recent ones.
        for pid in 1..=5u32 {
            assert_eq!(p.find(&agent(pid), u64::from(pid)), Some(&cx(u64::from(pid))));
        }
    }
}
