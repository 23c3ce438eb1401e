//! Stall incidents as OTLP spans. Pure: events in, spans out.
//!
//! Promises (one trace per incident, see [`crate::ids`]):
//! * `Stall` → span `varta.stall` from the agent's last beat to detection,
//!   status ERROR, with the agent's attributes, the threshold, the last
//!   status/payload/nonce, the incident id, and an event
//!   `varta.stall.detected` at detection.
//! * `Resume` → span `varta.stall.resolved`, child of that `varta.stall`
//!   span in the same trace, from the last beat to the resuming beat (the
//!   total silence), status OK.
//! * `Panic` → span `varta.agent.panic` of its own (zero length, at the
//!   panic frame, status ERROR, event `varta.agent.panic`), in a trace of
//!   its own. Why not on the incident's span: a panic frame is the agent's
//!   last word *before* its stall, so no incident exists yet when it
//!   arrives, and holding it back until the stall (threshold later, or
//!   never if the collector stops) would delay or lose it. The stall that
//!   follows carries `varta.last_status = critical` and the panic nonce.
//! * `Diagnosis` → span `varta.stall.diagnosis`, child of the incident's
//!   `varta.stall` span, lasting what the diagnosis took (from its first
//!   look to its second), with `varta.stall.cause` and the details
//!   (threads by state, CPU ‰, RSS, context switches, tracer pid, wchan).
//! * `Evidence` → span `varta.stall.evidence`, child of the diagnosis
//!   span, lasting the capture, with a one-line `varta.evidence.summary`
//!   and one span event per group of threads waiting on the same thing
//!   (`thread.id`, `thread.name`, `code.stacktrace`, the lock address or
//!   fd target, the number of threads), from the resolver's evidence
//!   board (no span when the capture is no longer there).
//! * `Recovery` (finished, refused or skipped; not `started`) → span
//!   `varta.recovery`, child of the incident's `varta.stall` span: from
//!   spawn to completion for a command that ran (program, child pid, exit
//!   code or signal, duration, outcome; status OK when it succeeded, ERROR
//!   otherwise), zero length with the refusal reason when it did not run.
//! * Who the span is about: with `agent_resource` (the default) the agent
//!   is the span's resource ([`SpanBuilder::resource`], see
//!   [`crate::resource`]) and the span carries only what belongs to the
//!   event (`varta.*`); without it, the agent's identity and what the
//!   resolver knows (`process.pid`, `service.name`, `container.id`, …) are
//!   span attributes under the collector's resource.
//! * Other events produce no span.

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event as SpanEvent, SpanKind};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{Span, Status as SpanStatus};
use std::sync::Arc;

use varta_agents::AttributeStore;
use varta_processor::{AgentRef, Event, EventKind, RecoveryOutcome};

use crate::ids::{IdSource, PANIC_SEQ_BIT, SpanRole};
use crate::wallclock::WallClock;
use crate::{attrs, resource};

/// Names, so tests and docs agree.
pub mod name {
    pub const STALL: &str = "varta.stall";
    pub const DETECTED: &str = "varta.stall.detected";
    pub const RESOLVED: &str = "varta.stall.resolved";
    pub const PANIC: &str = "varta.agent.panic";
    pub const DIAGNOSIS: &str = "varta.stall.diagnosis";
    pub const RECOVERY: &str = "varta.recovery";
    pub const EVIDENCE: &str = "varta.stall.evidence";
    pub const EVIDENCE_GROUP: &str = "varta.stall.evidence.group";
}

/// Turns incident events into spans for one pipeline.
#[derive(Debug)]
pub struct SpanBuilder {
    ids: IdSource,
    pipeline: String,
    panics: u64,
    attributes: Option<Arc<AttributeStore>>,
    /// `Some(this node's host name, if known)`: agents are resources.
    agent_resource: Option<Option<String>>,
}

impl SpanBuilder {
    pub fn new(ids: IdSource, pipeline: impl Into<String>) -> SpanBuilder {
        SpanBuilder { ids, pipeline: pipeline.into(), panics: 0, attributes: None, agent_resource: None }
    }

    /// Spans of local agents also carry the resolver's attributes.
    pub fn with_attributes(mut self, store: Option<Arc<AttributeStore>>) -> SpanBuilder {
        self.attributes = store;
        self
    }

    /// The pipeline these spans come from.
    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }

    /// The agent becomes the spans' resource ([`Self::resource`]);
    /// `host_name` is this node's, for local agents.
    pub fn with_agent_resource(mut self, host_name: Option<String>) -> SpanBuilder {
        self.agent_resource = Some(host_name);
        self
    }

    /// The resource of `agent`'s spans, or `None` when spans go under the
    /// collector's resource.
    pub fn resource(&self, agent: &AgentRef) -> Option<Resource> {
        let host = self.agent_resource.as_ref()?;
        let view = self.attributes.as_ref().map(|s| s.read());
        let resolved = view.as_ref().and_then(|v| v.get(&agent.id));
        Some(resource::agent(agent, resolved.as_ref(), host.as_deref()))
    }

    fn common(&self, agent: &AgentRef) -> Vec<KeyValue> {
        let mut a = Vec::with_capacity(24);
        a.push(attrs::string("varta.pipeline", self.pipeline.as_str()));
        if self.agent_resource.is_some() {
            return a;
        }
        attrs::agent(&mut a, agent);
        if let Some(store) = &self.attributes {
            let view = store.read();
            if let Some(resolved) = view.get(&agent.id) {
                attrs::resolved(&mut a, &resolved);
            }
        }
        a
    }

    /// The span for `event`, if it is an incident event with an agent.
    pub fn span(&mut self, event: &Event, clock: &WallClock) -> Option<Span> {
        let agent = event.agent.as_ref()?;
        let at = clock.to_unix_ns(event.at_ns);
        match event.kind {
            EventKind::Stall {
                incident,
                last_beat_ns,
                last_nonce,
                silence_ns,
                last_status,
                last_payload,
                threshold_ns,
                learned_interval_ns,
                blind,
            } => {
                let mut a = self.common(agent);
                a.push(attrs::uint("varta.incident.id", incident));
                if blind {
                    a.push(attrs::boolean("varta.stall.blind_window", true));
                }
                a.push(attrs::uint("varta.stall.threshold_ns", threshold_ns));
                if learned_interval_ns != 0 {
                    a.push(attrs::uint("varta.stall.learned_interval_ns", learned_interval_ns));
                }
                a.push(attrs::uint("varta.stall.silence_ns", silence_ns));
                a.push(attrs::string("varta.last_status", last_status.as_str()));
                a.push(attrs::int("varta.last_payload", i64::from(last_payload)));
                a.push(attrs::uint("varta.last_nonce", last_nonce));
                Some(Span {
                    trace_id: self.ids.trace_id(incident).to_vec(),
                    span_id: self.ids.span_id(incident, SpanRole::Stall).to_vec(),
                    name: name::STALL.into(),
                    kind: SpanKind::Internal as i32,
                    start_time_unix_nano: clock.to_unix_ns(last_beat_ns),
                    end_time_unix_nano: at,
                    attributes: a,
                    events: vec![SpanEvent {
                        time_unix_nano: at,
                        name: name::DETECTED.into(),
                        attributes: vec![attrs::uint("varta.stall.silence_ns", silence_ns)],
                        dropped_attributes_count: 0,
                    }],
                    status: Some(SpanStatus {
                        message: format!("agent silent for {} ms", silence_ns / 1_000_000),
                        code: StatusCode::Error as i32,
                    }),
                    ..Default::default()
                })
            }
            EventKind::Resume { incident, silence_ns, frame } => {
                let mut a = self.common(agent);
                a.push(attrs::uint("varta.incident.id", incident));
                a.push(attrs::uint("varta.stall.silence_ns", silence_ns));
                a.push(attrs::string("varta.status", frame.status.as_str()));
                a.push(attrs::uint("varta.nonce", frame.nonce));
                a.push(attrs::int("varta.payload", i64::from(frame.payload)));
                Some(Span {
                    trace_id: self.ids.trace_id(incident).to_vec(),
                    span_id: self.ids.span_id(incident, SpanRole::Resolved).to_vec(),
                    parent_span_id: self.ids.span_id(incident, SpanRole::Stall).to_vec(),
                    name: name::RESOLVED.into(),
                    kind: SpanKind::Internal as i32,
                    start_time_unix_nano: clock.to_unix_ns(event.at_ns.saturating_sub(silence_ns)),
                    end_time_unix_nano: at,
                    attributes: a,
                    status: Some(SpanStatus { message: String::new(), code: StatusCode::Ok as i32 }),
                    ..Default::default()
                })
            }
            EventKind::Panic { frame } => {
                self.panics += 1;
                let seq = self.panics | PANIC_SEQ_BIT;
                let mut a = self.common(agent);
                a.push(attrs::uint("varta.nonce", frame.nonce));
                a.push(attrs::int("varta.payload", i64::from(frame.payload)));
                Some(Span {
                    trace_id: self.ids.trace_id(seq).to_vec(),
                    span_id: self.ids.span_id(seq, SpanRole::Panic).to_vec(),
                    name: name::PANIC.into(),
                    kind: SpanKind::Internal as i32,
                    start_time_unix_nano: at,
                    end_time_unix_nano: at,
                    attributes: a.clone(),
                    events: vec![SpanEvent {
                        time_unix_nano: at,
                        name: name::PANIC.into(),
                        attributes: vec![attrs::int("varta.payload", i64::from(frame.payload))],
                        dropped_attributes_count: 0,
                    }],
                    status: Some(SpanStatus {
                        message: "agent sent a terminal (panic) frame".into(),
                        code: StatusCode::Error as i32,
                    }),
                    ..Default::default()
                })
            }
            EventKind::Diagnosis { incident, diagnosis: d } => {
                let mut a = self.common(agent);
                a.push(attrs::uint("varta.incident.id", incident));
                a.push(attrs::string("varta.stall.cause", d.cause.label()));
                a.push(attrs::int("varta.threads", i64::from(d.threads)));
                a.push(attrs::int("varta.threads.running", i64::from(d.running)));
                a.push(attrs::int("varta.threads.sleeping", i64::from(d.sleeping)));
                a.push(attrs::int("varta.threads.disk", i64::from(d.disk)));
                a.push(attrs::int("varta.threads.stopped", i64::from(d.stopped)));
                a.push(attrs::int("varta.cpu_permille", i64::from(d.cpu_permille)));
                a.push(attrs::int("varta.rss_kib", i64::from(d.rss_kib)));
                a.push(attrs::int("varta.context_switches.voluntary", i64::from(d.voluntary_switches)));
                a.push(attrs::int("varta.context_switches.involuntary", i64::from(d.involuntary_switches)));
                if d.tracer_pid != 0 {
                    a.push(attrs::int("varta.tracer_pid", i64::from(d.tracer_pid)));
                }
                if !d.wchan.as_str().is_empty() {
                    a.push(attrs::string("varta.wchan", d.wchan.as_str()));
                }
                Some(Span {
                    trace_id: self.ids.trace_id(incident).to_vec(),
                    span_id: self.ids.span_id(incident, SpanRole::Diagnosis).to_vec(),
                    parent_span_id: self.ids.span_id(incident, SpanRole::Stall).to_vec(),
                    name: name::DIAGNOSIS.into(),
                    kind: SpanKind::Internal as i32,
                    start_time_unix_nano: at.saturating_sub(u64::from(d.took_ms) * 1_000_000),
                    end_time_unix_nano: at,
                    attributes: a,
                    ..Default::default()
                })
            }
            EventKind::Evidence { incident, duration_ns } => {
                let captured = self.attributes.as_ref()?.evidence().get(&agent.id, incident)?;
                let e = &captured.evidence;
                let mut a = self.common(agent);
                a.push(attrs::uint("varta.incident.id", incident));
                a.push(attrs::string("varta.evidence.summary", e.summary()));
                a.push(attrs::uint("varta.evidence.threads", u64::from(e.counts.threads_seen)));
                a.push(attrs::uint("varta.evidence.threads_omitted", u64::from(e.counts.threads_omitted)));
                a.push(attrs::uint("varta.evidence.stacks", u64::from(e.counts.stacks_taken)));
                if let Some(p) = &e.pauses {
                    a.push(attrs::uint("varta.evidence.pause_total_ns", p.total.as_nanos() as u64));
                    a.push(attrs::uint("varta.evidence.pause_max_ns", p.max.as_nanos() as u64));
                }
                let events = e.groups.iter().map(|g| SpanEvent {
                    time_unix_nano: at,
                    name: name::EVIDENCE_GROUP.into(),
                    attributes: evidence_group(g, e),
                    dropped_attributes_count: 0,
                });
                Some(Span {
                    trace_id: self.ids.trace_id(incident).to_vec(),
                    span_id: self.ids.span_id(incident, SpanRole::Evidence).to_vec(),
                    parent_span_id: self.ids.span_id(incident, SpanRole::Diagnosis).to_vec(),
                    name: name::EVIDENCE.into(),
                    kind: SpanKind::Internal as i32,
                    start_time_unix_nano: at.saturating_sub(duration_ns),
                    end_time_unix_nano: at,
                    attributes: a,
                    events: events.collect(),
                    ..Default::default()
                })
            }
            EventKind::Recovery { incident, report } => {
                if report.outcome == RecoveryOutcome::Started {
                    return None;
                }
                let mut a = self.common(agent);
                a.push(attrs::uint("varta.incident.id", incident));
                a.push(attrs::string("varta.recovery.outcome", report.outcome.label()));
                a.push(attrs::string("varta.recovery.program", report.program.as_str()));
                let status = match report.outcome {
                    RecoveryOutcome::Refused(why) => {
                        a.push(attrs::string("varta.recovery.refused_reason", why.label()));
                        None
                    }
                    RecoveryOutcome::Skipped => None,
                    outcome => {
                        a.push(attrs::int("varta.recovery.child_pid", i64::from(report.child_pid)));
                        a.push(attrs::uint("varta.recovery.duration_ns", report.duration_ns));
                        if let Some(code) = report.exit_code {
                            a.push(attrs::int("varta.recovery.exit_code", i64::from(code)));
                        }
                        if let Some(signal) = report.signal {
                            a.push(attrs::int("varta.recovery.signal", i64::from(signal)));
                        }
                        let ok = outcome == RecoveryOutcome::Succeeded;
                        Some(SpanStatus {
                            message: if ok { String::new() } else { format!("recovery {}", outcome.label()) },
                            code: if ok { StatusCode::Ok } else { StatusCode::Error } as i32,
                        })
                    }
                };
                Some(Span {
                    trace_id: self.ids.trace_id(incident).to_vec(),
                    span_id: self.ids.span_id(incident, SpanRole::Recovery).to_vec(),
                    parent_span_id: self.ids.span_id(incident, SpanRole::Stall).to_vec(),
                    name: name::RECOVERY.into(),
                    kind: SpanKind::Internal as i32,
                    start_time_unix_nano: clock.to_unix_ns(event.at_ns.saturating_sub(report.duration_ns)),
                    end_time_unix_nano: at,
                    attributes: a,
                    status,
                    ..Default::default()
                })
            }
            _ => None,
        }
    }
}

/// One group's span event attributes: its first thread, how many wait
/// with it, on what (and who holds that lock), and where (the frames the
/// group shares, else its first thread's stack).
fn evidence_group(
    g: &varta_agents::evidence::WaitGroup,
    e: &varta_agents::evidence::Evidence,
) -> Vec<KeyValue> {
    let tid = g.tids.first().copied().unwrap_or(0);
    let mut a = vec![
        attrs::int("thread.id", i64::from(tid)),
        attrs::string("varta.wait.kind", g.kind.label()),
        attrs::int("varta.threads", g.tids.len() as i64),
    ];
    if let Some(t) = e.thread(tid) {
        a.push(attrs::string("thread.name", t.name.as_str()));
    }
    match g.kind {
        varta_agents::evidence::WaitKind::Futex => {
            if let Some(addr) = g.futex {
                a.push(attrs::string("varta.lock.address", format!("{addr:#x}")));
            }
        }
        varta_agents::evidence::WaitKind::Fd => a.push(attrs::string("varta.fd.target", g.key.as_str())),
        _ if !g.key.is_empty() => a.push(attrs::string("varta.wait.on", g.key.as_str())),
        _ => {}
    }
    if let Some(holder) = g.holder {
        a.push(attrs::int("varta.lock.holder", i64::from(holder)));
    }
    let first = || e.thread(tid).and_then(|t| t.stack.as_ref()).map(|s| s.render());
    if let Some(trace) = g.stacktrace().or_else(first) {
        a.push(attrs::string("code.stacktrace", trace));
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use varta_processor::{AgentId, clock::Clock};
    use varta_proto::{Frame, Source, Status, Transport};

    fn agent(pid: u32) -> AgentRef {
        AgentRef {
            id: AgentId { source: Source::Local, pid, start_time: 9 },
            frame_pid: pid,
            host_pid: pid,
            transport: Transport::Uds,
        }
    }

    fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
        span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()?.value.as_ref())
    }

    #[test]
    fn stall_and_resume_share_a_trace_and_link_parent_to_child() {
        let clock = WallClock::new(Clock::Monotonic);
        let mut b = SpanBuilder::new(IdSource::new(5, "liveness"), "liveness");
        let stall = Event {
            at_ns: 3_000_000_000,
            agent: Some(agent(77)),
            kind: EventKind::Stall {
                incident: 4,
                last_beat_ns: 1_000_000_000,
                last_nonce: 12,
                silence_ns: 2_000_000_000,
                last_status: Status::Degraded,
                last_payload: 99,
                threshold_ns: 2_000_000_000,
                learned_interval_ns: 0,
                blind: false,
            },
        };
        let s = b.span(&stall, &clock).expect("stall span");
        assert_eq!(s.name, "varta.stall");
        assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 2_000_000_000);
        assert_eq!(s.status.as_ref().map(|st| st.code), Some(StatusCode::Error as i32));
        assert_eq!(attr(&s, "process.pid"), Some(&Value::IntValue(77)));
        assert_eq!(attr(&s, "varta.last_status"), Some(&Value::StringValue("degraded".into())));
        assert_eq!(attr(&s, "varta.last_payload"), Some(&Value::IntValue(99)));
        assert_eq!(attr(&s, "varta.last_nonce"), Some(&Value::IntValue(12)));
        assert_eq!(attr(&s, "varta.incident.id"), Some(&Value::IntValue(4)));
        assert_eq!(attr(&s, "varta.stall.threshold_ns"), Some(&Value::IntValue(2_000_000_000)));
        assert_eq!(s.events.len(), 1);
        assert_eq!(s.events[0].name, "varta.stall.detected");
        assert_eq!(s.events[0].time_unix_nano, s.end_time_unix_nano);
        assert!(s.parent_span_id.is_empty());

        let resume = Event {
            at_ns: 5_000_000_000,
            agent: Some(agent(77)),
            kind: EventKind::Resume {
                incident: 4,
                silence_ns: 4_000_000_000,
                frame: Frame::new(Status::Ok, 77, 0, 13, 1),
            },
        };
        let r = b.span(&resume, &clock).expect("resolved span");
        assert_eq!(r.name, "varta.stall.resolved");
        assert_eq!(r.trace_id, s.trace_id);
        assert_eq!(r.parent_span_id, s.span_id);
        assert_ne!(r.span_id, s.span_id);
        assert_eq!(r.start_time_unix_nano, s.start_time_unix_nano);
        assert_eq!(attr(&r, "varta.stall.silence_ns"), Some(&Value::IntValue(4_000_000_000)));
        assert_eq!(r.status.as_ref().map(|st| st.code), Some(StatusCode::Ok as i32));
    }

    #[test]
    fn recovery_spans_are_children_of_the_stall_spanning_the_command() {
        use varta_processor::{RecoveryRefusal, RecoveryReport, Wchan};
        let clock = WallClock::new(Clock::Monotonic);
        let mut b = SpanBuilder::new(IdSource::new(5, "liveness"), "liveness");
        let mut report = RecoveryReport::new(RecoveryOutcome::Started, Wchan::new("restart-svc"));
        let started = Event {
            at_ns: 4_000_000_000,
            agent: Some(agent(77)),
            kind: EventKind::Recovery { incident: 4, report },
        };
        assert!(b.span(&started, &clock).is_none(), "the span is made when it finishes");
        report.outcome = RecoveryOutcome::Failed;
        report.exit_code = Some(3);
        report.duration_ns = 500_000_000;
        report.child_pid = 4242;
        let done = Event {
            at_ns: 4_500_000_000,
            agent: Some(agent(77)),
            kind: EventKind::Recovery { incident: 4, report },
        };
        let r = b.span(&done, &clock).expect("recovery span");
        assert_eq!(r.name, "varta.recovery");
        assert_eq!(r.trace_id, IdSource::new(5, "liveness").trace_id(4).to_vec());
        assert_eq!(r.parent_span_id, IdSource::new(5, "liveness").span_id(4, SpanRole::Stall).to_vec());
        assert_eq!(r.end_time_unix_nano - r.start_time_unix_nano, 500_000_000);
        assert_eq!(attr(&r, "varta.recovery.exit_code"), Some(&Value::IntValue(3)));
        assert_eq!(attr(&r, "varta.recovery.program"), Some(&Value::StringValue("restart-svc".into())));
        assert_eq!(r.status.as_ref().map(|st| st.code), Some(StatusCode::Error as i32));
        report.outcome = RecoveryOutcome::Refused(RecoveryRefusal::Debounce);
        let refused =
            Event { at_ns: 5, agent: Some(agent(77)), kind: EventKind::Recovery { incident: 5, report } };
        let r = b.span(&refused, &clock).expect("refusal span");
        assert_eq!(attr(&r, "varta.recovery.refused_reason"), Some(&Value::StringValue("debounce".into())));
    }

    #[test]
    fn with_agent_resources_identity_moves_from_the_span_to_the_resource() {
        let clock = WallClock::new(Clock::Monotonic);
        let mut b = SpanBuilder::new(IdSource::new(5, "p"), "p").with_agent_resource(Some("node-1".into()));
        let panic = Event {
            at_ns: 1,
            agent: Some(agent(3)),
            kind: EventKind::Panic { frame: Frame::new(Status::Critical, 3, 0, u64::MAX, 7) },
        };
        let span = b.span(&panic, &clock).expect("panic span");
        assert!(attr(&span, "process.pid").is_none(), "identity is the resource's");
        assert_eq!(attr(&span, "varta.pipeline"), Some(&Value::StringValue("p".into())));
        let r = b.resource(&agent(3)).expect("an agent resource");
        let get = |k: &str| r.attributes.iter().find(|kv| kv.key == k).and_then(|kv| kv.value.clone()?.value);
        assert_eq!(get("process.pid"), Some(Value::IntValue(3)));
        assert_eq!(get("service.name"), Some(Value::StringValue("unknown_service".into())));
        assert!(SpanBuilder::new(IdSource::new(5, "p"), "p").resource(&agent(3)).is_none());
    }

    #[test]
    fn panics_get_their_own_trace_and_other_events_none() {
        let clock = WallClock::new(Clock::Monotonic);
        let mut b = SpanBuilder::new(IdSource::new(5, "p"), "p");
        let panic = Event {
            at_ns: 1,
            agent: Some(agent(3)),
            kind: EventKind::Panic { frame: Frame::new(Status::Critical, 3, 0, u64::MAX, 7) },
        };
        let p1 = b.span(&panic, &clock).expect("panic span");
        let p2 = b.span(&panic, &clock).expect("panic span");
        assert_eq!(p1.name, "varta.agent.panic");
        assert_eq!(p1.events[0].name, "varta.agent.panic");
        assert_ne!(p1.trace_id, p2.trace_id);
        let beat = Event {
            at_ns: 1,
            agent: Some(agent(3)),
            kind: EventKind::Beat { frame: Frame::new(Status::Ok, 3, 1, 0, 0) },
        };
        assert!(b.span(&beat, &clock).is_none());
    }
}
