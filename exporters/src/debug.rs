//! The `debug` exporter: every event as one human-readable log line
//! (tracing, INFO, target `varta::event`), with the agent as structured
//! fields — for trying things out and for reading a collector's logs.

use std::fmt::{self, Display};

use std::sync::Arc;

use serde::Deserialize;
use varta_agents::AttributeStore;

use crate::aggregate::{Admit, BulkBudget, Summary};
use varta_processor::{Event, EventKind};
use varta_proto::Refusal;

use crate::Exporter;

/// Configuration of the `debug` exporter.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebugExporterConfig {
    /// Also log every accepted beat (default false: only stalls, resumes,
    /// status changes, refusals and other notable events).
    #[serde(default)]
    pub beats: bool,
    /// Bulk events (refusals, rate limits …) logged one by one per second at
    /// most; the rest are logged as one summary per kind and source per
    /// second ([`crate::aggregate`]).
    #[serde(default = "default_bulk")]
    pub bulk_lines_per_second: u64,
}

fn default_bulk() -> u64 {
    100
}

impl Default for DebugExporterConfig {
    fn default() -> Self {
        DebugExporterConfig { beats: false, bulk_lines_per_second: default_bulk() }
    }
}

/// Logs events; see the module docs.
#[derive(Debug)]
pub struct DebugExporter {
    config: DebugExporterConfig,
    budget: BulkBudget,
    /// Each pipeline served, by source index: its name and its resolver
    /// store, if it has one (agents' program, service and container are
    /// then logged too).
    pipelines: Vec<(String, Option<Arc<AttributeStore>>)>,
}

impl DebugExporter {
    /// `pipelines`: see the field; events from source `i` are logged with
    /// the `i`-th pipeline's name and attributes.
    pub fn new(
        config: DebugExporterConfig,
        pipelines: Vec<(String, Option<Arc<AttributeStore>>)>,
    ) -> DebugExporter {
        let budget = BulkBudget::new(config.bulk_lines_per_second);
        DebugExporter { config, budget, pipelines }
    }
}

/// Short name of an event kind (log field `kind`).
pub fn kind_name(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::Beat { .. } => "beat",
        EventKind::Stall { .. } => "stall",
        EventKind::Resume { .. } => "resume",
        EventKind::StatusChange { .. } => "status",
        EventKind::Panic { .. } => "panic",
        EventKind::StaleNonce { .. } => "stale_nonce",
        EventKind::Evicted { .. } => "eviction",
        EventKind::CapacityExceeded { .. } => "capacity",
        EventKind::RateLimited { .. } => "ratelimit",
        EventKind::OriginConflict { .. } => "origin_conflict",
        EventKind::ClockAnomaly { .. } => "clock",
        EventKind::BlindWindow { .. } => "blind_window",
        EventKind::Diagnosis { .. } => "diagnosis",
        EventKind::Evidence { .. } => "evidence",
        EventKind::Recovery { .. } => "recovery",
        EventKind::Refused(_) => "refused",
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// What happened, in words (the log message).
struct Describe<'a>(&'a EventKind);

impl Display for Describe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            EventKind::Beat { frame } => {
                write!(f, "beat nonce={} status={} payload={}", frame.nonce, frame.status, frame.payload)
            }
            EventKind::Stall { incident, silence_ns, threshold_ns, learned_interval_ns, blind, .. } => {
                write!(
                    f,
                    "agent stalled: silent for {:.1} ms, threshold {:.1} ms",
                    ms(*silence_ns),
                    ms(*threshold_ns)
                )?;
                if *learned_interval_ns != 0 {
                    write!(f, " (learned from its {:.1} ms beat)", ms(*learned_interval_ns))?;
                }
                if *blind {
                    write!(f, " (its silence spans a blind window; it had a full threshold after it)")?;
                }
                write!(f, " (incident {incident})")
            }
            EventKind::Resume { incident, silence_ns, .. } => {
                write!(f, "agent resumed after {:.1} ms of silence (incident {incident})", ms(*silence_ns))
            }
            EventKind::StatusChange { from, to, frame } => {
                write!(f, "status {from} -> {to} (payload {})", frame.payload)
            }
            EventKind::Panic { frame } => write!(f, "agent panicked (payload {})", frame.payload),
            EventKind::StaleNonce { frame } => write!(f, "stale nonce {} refused", frame.nonce),
            EventKind::Evicted { reason } => write!(f, "agent state dropped: {}", reason.label()),
            EventKind::CapacityExceeded { pid } => write!(f, "tracker full: new agent pid {pid} refused"),
            EventKind::RateLimited { reason } => write!(f, "beat rate-limited ({})", reason.label()),
            EventKind::OriginConflict { from, to } => {
                write!(f, "beat over {} refused: agent is pinned to {}", to.as_str(), from.as_str())
            }
            EventKind::ClockAnomaly { kind } => write!(f, "clock anomaly: {}", kind.label()),
            EventKind::BlindWindow { cause, duration_ns, .. } => write!(
                f,
                "blind window ({}): the collector could not listen for {:.1} ms; every agent gets a full threshold from now",
                cause.label(),
                ms(*duration_ns)
            ),
            EventKind::Recovery { incident, report } => {
                write!(f, "recovery (incident {incident}): {} — {}", report.outcome.label(), report.details())
            }
            EventKind::Diagnosis { incident, diagnosis } => write!(
                f,
                "stall diagnosis (incident {incident}): {} — {}",
                diagnosis.cause.label(),
                diagnosis.details()
            ),
            EventKind::Evidence { incident, duration_ns } => {
                write!(f, "stall evidence (incident {incident}) captured in {:.1} ms", ms(*duration_ns))
            }
            EventKind::Refused(r) => match r.refusal {
                Refusal::Decode(kind) => write!(f, "frame refused: {}", kind.name()),
                other => write!(f, "frame refused: {} (claimed pid {})", other.label(), r.claimed_pid),
            },
        }
    }
}

impl Exporter for DebugExporter {
    fn wants_beats(&self) -> bool {
        self.config.beats
    }

    fn export(&mut self, ev: &Event) -> std::io::Result<()> {
        self.export_from(0, ev)
    }

    fn export_from(&mut self, source: usize, ev: &Event) -> std::io::Result<()> {
        if !self.config.beats && matches!(ev.kind, EventKind::Beat { .. }) {
            return Ok(());
        }
        if self.budget.admit(ev, &mut log_summary) == Admit::Aggregated {
            return Ok(());
        }
        let kind = kind_name(&ev.kind);
        let (pipeline, attributes) = match self.pipelines.get(source) {
            Some((name, attributes)) => (name.as_str(), attributes.as_ref()),
            None => ("-", None),
        };
        let evidence = match (&ev.kind, &ev.agent, attributes) {
            (EventKind::Evidence { incident, .. }, Some(a), Some(store)) => {
                store.evidence().get(&a.id, *incident).map(|c| describe_evidence(*incident, &c.evidence))
            }
            _ => None,
        };
        match &ev.agent {
            Some(a) => {
                let view = attributes.map(|s| s.read());
                let attrs = view.as_ref().and_then(|v| v.get(&a.id));
                let message = evidence.unwrap_or_else(|| Describe(&ev.kind).to_string());
                tracing::info!(
                    target: "varta::event",
                    kind,
                    pipeline,
                    pid = a.id.pid,
                    frame_pid = a.frame_pid,
                    source = %a.id.source,
                    transport = a.transport.as_str(),
                    program = attrs.and_then(|x| x.executable_name()).unwrap_or("-"),
                    service = attrs.and_then(|x| x.service_name()).unwrap_or("-"),
                    container = attrs.and_then(|x| x.container_id()).unwrap_or("-"),
                    at_ns = ev.at_ns,
                    "{message}"
                )
            }
            None => {
                tracing::info!(target: "varta::event", kind, pipeline, at_ns = ev.at_ns, "{}", Describe(&ev.kind))
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    fn finish(&mut self) -> std::io::Result<()> {
        self.budget.finish(&mut log_summary);
        Ok(())
    }
}

/// The evidence summary and, per group (largest first, at most
/// [`EVIDENCE_GROUPS`]), its threads and top frames (innermost first,
/// `<` between them) — one line, as every event.
fn describe_evidence(incident: u64, e: &varta_agents::evidence::Evidence) -> String {
    use std::fmt::Write as _;
    let mut out = format!("stall evidence (incident {incident}): {}", e.summary());
    for g in e.groups.iter().take(EVIDENCE_GROUPS) {
        let _ = write!(out, " | {} thread(s) [{}]", g.tids.len(), g.kind.label());
        if !g.key.is_empty() {
            let _ = write!(out, " on {}", g.key);
        }
        let first = g.tids.first().and_then(|t| e.thread(*t)).and_then(|t| t.stack.as_ref());
        let frames = if g.common_frames.is_empty() {
            first.map_or(&[][..], |s| &s.frames[..])
        } else {
            &g.common_frames
        };
        for f in frames.iter().take(EVIDENCE_FRAMES) {
            let _ = write!(out, " < {}", f.render());
        }
    }
    out
}

/// Groups and frames per group the debug exporter prints of evidence.
const EVIDENCE_GROUPS: usize = 4;
const EVIDENCE_FRAMES: usize = 5;

fn log_summary(s: &Summary) {
    let source = s.source.map_or_else(|| "other".to_owned(), |src| src.to_string());
    tracing::info!(
        target: "varta::event",
        kind = "aggregated",
        of = s.kind,
        source,
        count = s.count,
        "{} {} events not logged one by one (over the per-second budget)",
        s.count,
        s.kind
    );
}
