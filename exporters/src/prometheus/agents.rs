//! Per-agent series, rendered from the published snapshot slice by slice
//! straight into the exposition text — never one owned object per agent.
//!
//! Promises:
//! * **Memory O(slice), not O(agents).** A scrape holds the snapshots it
//!   began with (shared with the processor, not copied) and a cursor; each
//!   call renders the next agents until the buffer reaches the slice size,
//!   then stops where it was. The attribute store is read-locked for one
//!   slice at a time, never across a suspension.
//! * **Which agents.** With `per_agent_series` on, at most
//!   `max_agent_series` agents: stalled agents first (they are the ones an
//!   operator is looking for), then the others, in snapshot order; every
//!   family serves the same agents, since the snapshots do not change under
//!   a scrape. Agents left out are counted in
//!   `varta_prometheus_agents_omitted`.
//! * **Labels.** `pid`; `source` for network agents (two hosts may share a
//!   pid); `exe` and `service` once the resolver knows them; `pipeline`
//!   when the endpoint serves several pipelines. Values are escaped by
//!   [`super::exposition`], the only thing that happens to them.
//!
//! Series within a family come in selection order, not sorted by label
//! values as the `prometheus` crate's registry sorted them (sorting would
//! need every agent at once); the exposition format does not ask for an
//! order within a family.

use std::fmt::Write as _;
use std::sync::Arc;

use varta_agents::AttributeStore;
use varta_processor::{AgentView, Snapshot};
use varta_proto::{Source, Status};

use super::exposition::{self, Kind};

/// One per-agent family. Adding a per-agent series is one entry in
/// [`AGENT_FAMILIES`].
#[derive(Debug)]
pub struct AgentFamily {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    /// The sample value of one agent (of the snapshot it is in).
    pub value: fn(&Snapshot, &AgentView) -> f64,
}

/// Every per-agent family (served in name order among the others).
pub static AGENT_FAMILIES: &[AgentFamily] = &[
    AgentFamily {
        name: "varta_beats_total",
        help: "Beats accepted from this agent.",
        kind: Kind::Counter,
        value: |_, a| a.beats as f64,
    },
    AgentFamily {
        name: "varta_stalls_total",
        help: "Stalls of this agent.",
        kind: Kind::Counter,
        value: |_, a| f64::from(a.stalls),
    },
    AgentFamily {
        name: "varta_status",
        help: "Agent status: 0 ok, 1 degraded, 2 critical, 3 stalled.",
        kind: Kind::Gauge,
        value: |_, a| status_value(a.status),
    },
    AgentFamily {
        name: "varta_agent_threshold_seconds",
        help: "The stall threshold this agent runs under: its rule's, the default, or learned from its beat.",
        kind: Kind::Gauge,
        value: |snap, a| snap.threshold_ns_of(a) as f64 / 1e9,
    },
];

/// `varta_status` of an agent.
pub fn status_value(s: Status) -> f64 {
    match s {
        Status::Ok => 0.0,
        Status::Degraded => 1.0,
        Status::Critical => 2.0,
        Status::Stall => 3.0,
    }
}

/// One pipeline's agents as a scrape found them.
#[derive(Debug)]
pub struct PipelineAgents {
    pub name: String,
    pub snapshot: Arc<Snapshot>,
    pub attributes: Option<Arc<AttributeStore>>,
}

/// The agents one scrape serves.
#[derive(Debug)]
pub struct AgentSource {
    pipelines: Vec<PipelineAgents>,
    /// How many agents every per-agent family serves.
    selected: usize,
    omitted: usize,
}

impl AgentSource {
    /// `max_agents` is `None` when per-agent series are off.
    pub fn new(pipelines: Vec<PipelineAgents>, max_agents: Option<usize>) -> AgentSource {
        let total: usize = pipelines.iter().map(|p| p.snapshot.agent_count()).sum();
        let selected = max_agents.map_or(0, |max| total.min(max));
        AgentSource { pipelines, selected, omitted: total - selected }
    }

    /// Agents each per-agent family serves.
    pub fn selected(&self) -> usize {
        self.selected
    }

    /// Agents left out (`varta_prometheus_agents_omitted`).
    pub fn omitted(&self) -> usize {
        self.omitted
    }

    /// Renders `family` from `cursor` on into `out`, stopping once `out`
    /// holds `until` bytes or more; returns whether the family is complete.
    pub fn render(&self, family: &AgentFamily, cursor: &mut Cursor, out: &mut Vec<u8>, until: usize) -> bool {
        if cursor.served == self.selected {
            return true;
        }
        if !cursor.started {
            exposition::header(out, family.name, family.help, family.kind);
            cursor.started = true;
        }
        let tagged = self.pipelines.len() > 1;
        let mut pid = String::new();
        let mut source = String::new();
        while cursor.pass < 2 {
            let stalled = cursor.pass == 0;
            while let Some(p) = self.pipelines.get(cursor.pipeline) {
                let store = p.attributes.as_deref().map(AttributeStore::read);
                for a in p.snapshot.agents().skip(cursor.index) {
                    cursor.index += 1;
                    if (a.status == Status::Stall) != stalled {
                        continue;
                    }
                    let attrs = store.as_ref().and_then(|s| s.get(&a.id));
                    pid.clear();
                    let _ = write!(pid, "{}", a.id.pid);
                    let mut labels: [(&str, &str); 5] = [("", ""); 5];
                    let mut n = 0;
                    let mut label = |k, v| {
                        labels[n] = (k, v);
                        n += 1;
                    };
                    if tagged {
                        label("pipeline", p.name.as_str());
                    }
                    label("pid", pid.as_str());
                    if a.id.source != Source::Local {
                        source.clear();
                        let _ = write!(source, "{}", a.id.source);
                        label("source", source.as_str());
                    }
                    if let Some(exe) = attrs.as_ref().and_then(|x| x.executable_name()) {
                        label("exe", exe);
                    }
                    if let Some(service) = attrs.as_ref().and_then(|x| x.service_name()) {
                        label("service", service);
                    }
                    exposition::sample(out, family.name, &labels[..n], (family.value)(&p.snapshot, a));
                    cursor.served += 1;
                    if cursor.served == self.selected {
                        return true;
                    }
                    if out.len() >= until {
                        return false;
                    }
                }
                cursor.pipeline += 1;
                cursor.index = 0;
            }
            cursor.pass += 1;
            cursor.pipeline = 0;
        }
        true
    }
}

/// Where the rendering of one per-agent family stands.
#[derive(Debug, Default)]
pub struct Cursor {
    started: bool,
    /// 0: stalled agents, 1: the others.
    pass: u8,
    pipeline: usize,
    /// Position in the pipeline's snapshot.
    index: usize,
    served: usize,
}
