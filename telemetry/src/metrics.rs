//! The collector's metrics as OTLP data, read from the [`CollectorView`] at
//! export time. Pure apart from the delta state it keeps.
//!
//! Promises:
//! * **Views, not per-beat calls.** Nothing here runs per beat: every value
//!   is read from the pipelines' published snapshots and the components'
//!   atomic counters when an export is due, so OTLP and the Prometheus
//!   endpoint report the same numbers.
//! * **Names.** Fleet metrics per pipeline (attribute `varta.pipeline`):
//!   `varta.beats`, `varta.stalls`, `varta.resumes` (sums),
//!   `varta.agents.tracked`, `varta.agents.stalled` (gauges),
//!   `varta.rate_limited{reason}`, `varta.capacity_exceeded`,
//!   `varta.evictions{reason}` (sums), `varta.stall.duration` (histogram,
//!   seconds). Per receiver (attribute `varta.receiver`):
//!   `varta.decode_errors{kind}` and `varta.refusals{reason}` (every other
//!   refusal). Per agent (`process.pid`, `varta.agent.source`,
//!   `varta.agent.transport`): `varta.agent.status` (gauge: 0 ok,
//!   1 degraded, 2 critical, 3 stalled), `varta.agent.beats`,
//!   `varta.agent.stalls` (sums). Self-health: every sample of every
//!   component as `varta.collector.<role>.<name>` with attribute
//!   `component` (and the sample's label key), counters as monotonic sums,
//!   gauges as gauges.
//! * **Temporality.** Cumulative sums start at the collector's start;
//!   delta sums (and the histogram) cover the time since the previous
//!   collection, computed from the previous cumulative values (a value that
//!   went down — a component restarted — counts from zero).
//! * Every series is present from the first export, zeros included.
//! * **Who per-agent points are about.** With agent resources (the
//!   default) each agent's three points are sent under the agent's own
//!   resource ([`crate::resource::agent`]), attribute `varta.pipeline`
//!   only ([`Collected::agents`]); otherwise under the collector's
//!   resource with the agent's identity as point attributes.

use std::collections::HashMap;

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, DataPointFlags, Exemplar, Gauge, Histogram, HistogramDataPoint, Metric,
    NumberDataPoint, Sum, metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use varta_pipeline::{MetricKind, Role};
use varta_processor::{AgentId, STALL_DURATION_BOUNDS_NS, StallDurations};
use varta_proto::{DecodeErrorKind, Status};

use crate::attrs;
use crate::view::CollectorView;
use crate::wallclock::WallClock;

/// How sums and histogram counts are reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Temporality {
    /// Sums and the histogram count from the collector's start.
    #[default]
    Cumulative,
    /// Sums and the histogram count since the previous export.
    Delta,
}

/// Names of the fleet metrics (tests and docs use them).
pub mod name {
    pub const BEATS: &str = "varta.beats";
    pub const STALLS: &str = "varta.stalls";
    pub const RESUMES: &str = "varta.resumes";
    pub const AGENTS_TRACKED: &str = "varta.agents.tracked";
    pub const AGENTS_STALLED: &str = "varta.agents.stalled";
    pub const RATE_LIMITED: &str = "varta.rate_limited";
    pub const CAPACITY_EXCEEDED: &str = "varta.capacity_exceeded";
    pub const EVICTIONS: &str = "varta.evictions";
    pub const STALL_DURATION: &str = "varta.stall.duration";
    pub const DECODE_ERRORS: &str = "varta.decode_errors";
    pub const REFUSALS: &str = "varta.refusals";
    pub const AGENT_STATUS: &str = "varta.agent.status";
    pub const AGENT_BEATS: &str = "varta.agent.beats";
    pub const AGENT_STALLS: &str = "varta.agent.stalls";
}

/// Numeric value of `varta.agent.status`.
pub const fn status_code(status: Status) -> i64 {
    match status {
        Status::Ok => 0,
        Status::Degraded => 1,
        Status::Critical => 2,
        Status::Stall => 3,
    }
}

/// One metric being assembled.
struct Family {
    name: String,
    description: &'static str,
    unit: &'static str,
    shape: Shape,
    points: Vec<NumberDataPoint>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Sum,
    Gauge,
}

/// Exemplars kept per series until the next collection (the latest win).
pub const MAX_EXEMPLARS_PER_SERIES: usize = 4;

/// Which series an exemplar belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExemplarSeries {
    /// `varta.stalls`: one exemplar per stall, pointing at its `varta.stall` span.
    Stalls,
    /// `varta.stall.duration`: one per ended stall, its length in seconds,
    /// pointing at the `varta.stall.resolved` span.
    StallDuration,
}

/// Incidents since the last collection, per pipeline and series, bounded
/// ([`MAX_EXEMPLARS_PER_SERIES`] each, oldest dropped): the link from a
/// metric spike to its traces (Grafana's "exemplars").
#[derive(Debug, Default)]
pub struct Exemplars {
    by_series: HashMap<(String, ExemplarSeries), std::collections::VecDeque<Exemplar>>,
}

impl Exemplars {
    /// Notes an incident of `pipeline` in `series`; `span` is its span.
    pub fn note(
        &mut self,
        pipeline: &str,
        series: ExemplarSeries,
        span: &opentelemetry_proto::tonic::trace::v1::Span,
        value: f64,
    ) {
        let q = self.by_series.entry((pipeline.to_owned(), series)).or_default();
        if q.len() == MAX_EXEMPLARS_PER_SERIES {
            q.pop_front();
        }
        q.push_back(Exemplar {
            time_unix_nano: span.end_time_unix_nano,
            trace_id: span.trace_id.clone(),
            span_id: span.span_id.clone(),
            value: Some(match series {
                ExemplarSeries::Stalls => {
                    opentelemetry_proto::tonic::metrics::v1::exemplar::Value::AsInt(value as i64)
                }
                ExemplarSeries::StallDuration => {
                    opentelemetry_proto::tonic::metrics::v1::exemplar::Value::AsDouble(value)
                }
            }),
            ..Default::default()
        });
    }

    fn take(&mut self, pipeline: &str, series: ExemplarSeries) -> Vec<Exemplar> {
        self.by_series.remove(&(pipeline.to_owned(), series)).map(Vec::from).unwrap_or_default()
    }
}

/// Agents per chunk of per-agent points: three points each, so a chunk is
/// one request well below the exporter's `MAX_POINTS_PER_REQUEST`. Small because
/// a chunk is alive up to three times per exporter at once (being built, in
/// the one-slot channel, being encoded and sent), each agent under its own
/// resource: measured at 50,000 agents, 512 left a peak of ~4 MB per
/// exporter, 128 about a quarter of it, for more (equally full) requests.
pub const AGENTS_PER_CHUNK: usize = 128;

pub const AGENT_STATUS_HELP: &str = "Agent status: 0 ok, 1 degraded, 2 critical, 3 stalled.";
pub const AGENT_BEATS_HELP: &str = "Beats accepted from this agent.";
pub const AGENT_STALLS_HELP: &str = "Stalls of this agent.";

/// Per-agent points of up to [`AGENTS_PER_CHUNK`] agents.
#[derive(Debug)]
pub enum AgentChunk {
    /// Under each agent's own resource.
    Resources(Vec<AgentMetrics>),
    /// Under the collector's resource, agent identity as point attributes:
    /// the three `varta.agent.*` metrics holding the chunk's points.
    Points(Vec<Metric>),
}

/// One collection: the collector's metrics, and each agent's own points
/// under its resource (empty unless agents are resources).
#[derive(Debug, Default)]
pub struct Collected {
    pub metrics: Vec<Metric>,
    pub agents: Vec<AgentMetrics>,
}

/// An agent's points, under its resource.
#[derive(Debug)]
pub struct AgentMetrics {
    pub resource: Resource,
    pub metrics: Vec<Metric>,
}

/// Where an agent's series are, besides the metric name: its resource (when
/// agents are resources) and its points' attributes. The same function
/// names live agents' series and departed agents' staleness points, so a
/// marker always names the series it ends.
pub fn agent_series(
    agent_resource: &Option<Option<String>>,
    pipeline: &str,
    agent: &varta_processor::AgentRef,
    resolved: Option<&varta_agents::attributes::AttributesRef<'_>>,
) -> (Option<Resource>, Vec<KeyValue>) {
    let pl = vec![attrs::string("varta.pipeline", pipeline)];
    match agent_resource {
        Some(host) => (Some(crate::resource::agent(agent, resolved, host.as_deref())), pl),
        None => {
            let mut at = pl;
            attrs::agent(&mut at, agent);
            if let Some(resolved) = resolved {
                attrs::resolved_brief(&mut at, resolved);
            }
            (None, at)
        }
    }
}

/// An agent that left (evicted): its series as they were named when its
/// eviction was seen, and when (Unix ns). The next collection sends a
/// staleness point (no value, flag `NoRecordedValue`) on each of them, so
/// a backend ends them at once instead of keeping the last value for
/// minutes (a stalled agent's `status = 3` would linger).
#[derive(Debug, Clone)]
pub struct Departed {
    pub resource: Option<Resource>,
    pub attributes: Vec<KeyValue>,
    pub at_unix_ns: u64,
}

/// Turns the collector view into OTLP metrics; keeps what delta needs.
#[derive(Debug)]
pub struct MetricsBuilder {
    temporality: Temporality,
    per_agent: bool,
    /// `Some(this node's host name)`: per-agent points go under the
    /// agent's resource.
    agent_resource: Option<Option<String>>,
    /// Unix ns the cumulative series start at (collector start).
    start_ns: u64,
    /// Unix ns of the previous collection (delta start).
    last_ns: u64,
    prev: HashMap<String, u64>,
    prev_hist: HashMap<String, StallDurations>,
    prev_agents: HashMap<(usize, AgentId), (u64, u64)>,
    /// Each pipeline's processor clock mapped to Unix time, measured once
    /// (and again only when the wall clock steps), so that an agent's
    /// series start — its first admission on that clock — reads the same
    /// at every collection. Per pipeline, never per agent.
    clocks: HashMap<String, WallClock>,
    /// Departed agents whose staleness points the next collection sends.
    departed: Vec<Departed>,
}

impl MetricsBuilder {
    pub fn new(temporality: Temporality, per_agent: bool, start_ns: u64) -> MetricsBuilder {
        MetricsBuilder {
            temporality,
            per_agent,
            agent_resource: None,
            start_ns,
            last_ns: start_ns,
            prev: HashMap::new(),
            prev_hist: HashMap::new(),
            prev_agents: HashMap::new(),
            clocks: HashMap::new(),
            departed: Vec::new(),
        }
    }

    /// Departed agents (see [`Departed`]) to mark stale in the next collection.
    pub fn mark_departed(&mut self, departed: Vec<Departed>) {
        self.departed.extend(departed);
    }

    /// How this builder names agents' series (see [`agent_series`]).
    pub fn agent_resource(&self) -> &Option<Option<String>> {
        &self.agent_resource
    }

    /// Per-agent points under each agent's resource; `host_name` is this
    /// node's (for local agents). `None` keeps them on the collector's.
    pub fn with_agent_resource(mut self, host_name: Option<Option<String>>) -> MetricsBuilder {
        self.agent_resource = host_name;
        self
    }

    fn temporality_code(&self) -> i32 {
        match self.temporality {
            Temporality::Cumulative => AggregationTemporality::Cumulative as i32,
            Temporality::Delta => AggregationTemporality::Delta as i32,
        }
    }

    fn series_start(&self) -> u64 {
        match self.temporality {
            Temporality::Cumulative => self.start_ns,
            Temporality::Delta => self.last_ns,
        }
    }

    /// The value to send for a cumulative counter reading under the
    /// configured temporality; remembers the reading for the next delta.
    fn counter(prev: &mut HashMap<String, u64>, temporality: Temporality, key: String, value: u64) -> u64 {
        match temporality {
            Temporality::Cumulative => value,
            Temporality::Delta => {
                let before = prev.insert(key, value).unwrap_or(0);
                if value >= before { value - before } else { value }
            }
        }
    }

    /// Every metric, read now, all at once (tests; the exporter streams
    /// with [`Self::collect_with`]). `now_ns` is the wall clock (Unix ns).
    pub fn collect(&mut self, view: &CollectorView, now_ns: u64) -> Collected {
        let mut agents = Vec::new();
        let mut points = Vec::new();
        let metrics = self.collect_with(view, now_ns, &mut Exemplars::default(), &mut |chunk| {
            match chunk {
                AgentChunk::Resources(mut r) => agents.append(&mut r),
                AgentChunk::Points(mut m) => points.append(&mut m),
            }
            true
        });
        Collected { metrics: [metrics, points].concat(), agents }
    }

    /// Every metric, read now: returns the collector's own metrics and
    /// hands the per-agent points to `emit` in chunks of at most
    /// [`AGENTS_PER_CHUNK`] agents as they are built (so that a large fleet
    /// costs memory for one chunk, not for every agent; `emit` returning
    /// `false` stops the collection). Attaches (and consumes) the
    /// incidents' exemplars to the stall counter and stall-duration points
    /// of their pipeline.
    pub fn collect_with(
        &mut self,
        view: &CollectorView,
        now_ns: u64,
        exemplars: &mut Exemplars,
        emit: &mut dyn FnMut(AgentChunk) -> bool,
    ) -> Vec<Metric> {
        let start = self.series_start();
        let mut families: Vec<Family> = Vec::new();
        let fam = |families: &mut Vec<Family>,
                   name: &str,
                   description: &'static str,
                   unit: &'static str,
                   shape: Shape|
         -> usize {
            if let Some(i) = families.iter().position(|f| f.name == name) {
                return i;
            }
            families.push(Family { name: name.to_owned(), description, unit, shape, points: Vec::new() });
            families.len() - 1
        };
        let temporality = self.temporality;
        let prev = &mut self.prev;
        // `series_start`: when the series' counting began (see the callers).
        let mut push = |families: &mut Vec<Family>,
                        i: usize,
                        attributes: Vec<KeyValue>,
                        value: u64,
                        series_start: u64| {
            let f = &mut families[i];
            let value = if f.shape == Shape::Sum {
                let key = series_key(&f.name, &attributes);
                Self::counter(prev, temporality, key, value)
            } else {
                value
            };
            f.points.push(NumberDataPoint {
                attributes,
                start_time_unix_nano: if f.shape == Shape::Sum { series_start } else { 0 },
                time_unix_nano: now_ns,
                value: Some(number_data_point::Value::AsInt(i64::try_from(value).unwrap_or(i64::MAX))),
                ..Default::default()
            });
        };

        // A component's counters begin with it: a component made anew by a
        // reload starts its series again (delta series start at the last
        // collection either way).
        let component_start = |c: &varta_pipeline::Component| match temporality {
            Temporality::Cumulative => c.started_unix_nano,
            Temporality::Delta => start,
        };
        let mut raw_histograms = Vec::new();
        for p in &view.pipelines {
            let snap = p.latest();
            let s = &snap.stats;
            let pl = || vec![attrs::string("varta.pipeline", p.name.as_str())];
            let with = |k: &str, v: &str| {
                let mut a = pl();
                a.push(attrs::string(k, v));
                a
            };
            let i = fam(&mut families, name::BEATS, "Beats accepted by the tracker.", "{beat}", Shape::Sum);
            push(&mut families, i, pl(), s.beats_accepted, start);
            let i = fam(
                &mut families,
                name::STALLS,
                "Stalls detected (an agent silent past its threshold).",
                "{stall}",
                Shape::Sum,
            );
            push(&mut families, i, pl(), s.stalls, start);
            let i =
                fam(&mut families, name::RESUMES, "Stalled agents that beat again.", "{resume}", Shape::Sum);
            push(&mut families, i, pl(), s.resumes, start);
            let i = fam(
                &mut families,
                name::AGENTS_TRACKED,
                "Agents currently tracked.",
                "{agent}",
                Shape::Gauge,
            );
            push(&mut families, i, pl(), s.agents_tracked, start);
            let i = fam(
                &mut families,
                name::AGENTS_STALLED,
                "Tracked agents currently stalled.",
                "{agent}",
                Shape::Gauge,
            );
            push(&mut families, i, pl(), s.agents_stalled, start);
            let i = fam(
                &mut families,
                name::RATE_LIMITED,
                "Beats refused by rate limiting, by limit.",
                "{beat}",
                Shape::Sum,
            );
            push(&mut families, i, with("reason", "per_agent"), s.rate_limited_per_agent, start);
            push(&mut families, i, with("reason", "global"), s.rate_limited_global, start);
            let i = fam(
                &mut families,
                name::CAPACITY_EXCEEDED,
                "New agents refused because the tracker was full of live agents.",
                "{agent}",
                Shape::Sum,
            );
            push(&mut families, i, pl(), s.capacity_exceeded, start);
            let i = fam(
                &mut families,
                name::EVICTIONS,
                "Agents whose state was dropped, by reason.",
                "{agent}",
                Shape::Sum,
            );
            push(&mut families, i, with("reason", "stale"), s.evicted_stale, start);
            push(&mut families, i, with("reason", "pid_recycled"), s.evicted_pid_recycled, start);
            raw_histograms.push((p.name.clone(), pl(), s.stall_durations));
        }

        let decode_kinds: Vec<&str> = DecodeErrorKind::ALL.iter().map(|k| k.label()).collect();
        for c in view.components.iter().filter(|c| c.role == Role::Receiver) {
            c.metrics.samples(&mut |s| {
                if s.metric.name != "refused" {
                    return;
                }
                let (n, key, desc) = if decode_kinds.contains(&s.label) {
                    (name::DECODE_ERRORS, "kind", "Datagrams that are not valid VLP frames, by kind.")
                } else {
                    (
                        name::REFUSALS,
                        "reason",
                        "Datagrams refused for other reasons (authentication, replay, …), by reason.",
                    )
                };
                let i = fam(&mut families, n, desc, "{datagram}", Shape::Sum);
                push(
                    &mut families,
                    i,
                    vec![attrs::string("varta.receiver", c.id.as_str()), attrs::string(key, s.label)],
                    s.value,
                    component_start(c),
                );
            });
        }

        for c in &view.components {
            c.metrics.samples(&mut |s| {
                let n = format!("varta.collector.{}.{}", c.role.as_str(), s.metric.name);
                let shape = match s.metric.kind {
                    MetricKind::Counter => Shape::Sum,
                    MetricKind::Gauge => Shape::Gauge,
                };
                let i = fam(&mut families, &n, s.metric.help, s.metric.unit, shape);
                let mut a = vec![attrs::string("component", c.id.as_str())];
                if let Some(key) = s.metric.label {
                    a.push(attrs::string(key, s.label));
                }
                push(&mut families, i, a, s.value, component_start(c));
            });
        }

        if self.per_agent {
            self.agent_chunks(view, start, now_ns, emit);
        }
        let histograms: Vec<HistogramDataPoint> = raw_histograms
            .into_iter()
            .map(|(pipeline, attributes, h)| self.histogram_point(&pipeline, attributes, h, start, now_ns))
            .collect();
        self.last_ns = now_ns;
        let temporality = self.temporality_code();
        let mut out: Vec<Metric> = families
            .into_iter()
            .map(|f| Metric {
                name: f.name,
                description: f.description.to_owned(),
                unit: f.unit.to_owned(),
                data: Some(match f.shape {
                    Shape::Sum => Data::Sum(Sum {
                        data_points: f.points,
                        aggregation_temporality: temporality,
                        is_monotonic: true,
                    }),
                    Shape::Gauge => Data::Gauge(Gauge { data_points: f.points }),
                }),
                ..Default::default()
            })
            .collect();
        out.push(Metric {
            name: name::STALL_DURATION.into(),
            description: "Length of stalls that ended (the agent beat again).".into(),
            unit: "s".into(),
            data: Some(Data::Histogram(Histogram {
                data_points: histograms,
                aggregation_temporality: temporality,
            })),
            ..Default::default()
        });
        let pipeline_of = |attributes: &[KeyValue]| {
            attributes.iter().find(|kv| kv.key == "varta.pipeline").and_then(|kv| {
                match kv.value.as_ref()?.value.as_ref()? {
                    opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s) => {
                        Some(s.clone())
                    }
                    _ => None,
                }
            })
        };
        for m in &mut out {
            match (m.name.as_str(), &mut m.data) {
                (name::STALLS, Some(Data::Sum(sum))) => {
                    for p in &mut sum.data_points {
                        if let Some(pl) = pipeline_of(&p.attributes) {
                            p.exemplars = exemplars.take(&pl, ExemplarSeries::Stalls);
                        }
                    }
                }
                (name::STALL_DURATION, Some(Data::Histogram(h))) => {
                    for p in &mut h.data_points {
                        if let Some(pl) = pipeline_of(&p.attributes) {
                            p.exemplars = exemplars.take(&pl, ExemplarSeries::StallDuration);
                        }
                    }
                }
                _ => {}
            }
        }
        // Families of per-agent points that went to agent resources carry
        // no point here: leave them out rather than send empty metrics.
        out.retain(|m| points(m) > 0 || !m.name.starts_with("varta.agent."));
        out
    }

    /// The per-agent points of every pipeline, chunk by chunk (see
    /// [`Self::collect_with`]).
    fn agent_chunks(
        &mut self,
        view: &CollectorView,
        start: u64,
        now_ns: u64,
        emit: &mut dyn FnMut(AgentChunk) -> bool,
    ) {
        let temporality = self.temporality;
        let temporality_code = self.temporality_code();
        // Only delta sums need the previous reading of every agent.
        let mut agents_now: HashMap<(usize, AgentId), (u64, u64)> = HashMap::new();
        let metric = |name: &str, description: &str, unit: &str, data: Data| Metric {
            name: name.to_owned(),
            description: description.to_owned(),
            unit: unit.to_owned(),
            data: Some(data),
            ..Default::default()
        };
        let sum = |points: Vec<NumberDataPoint>| {
            Data::Sum(Sum {
                data_points: points,
                aggregation_temporality: temporality_code,
                is_monotonic: true,
            })
        };
        let families = |status: Vec<NumberDataPoint>, beats, stalls| {
            vec![
                metric(
                    name::AGENT_STATUS,
                    AGENT_STATUS_HELP,
                    "1",
                    Data::Gauge(Gauge { data_points: status }),
                ),
                metric(name::AGENT_BEATS, AGENT_BEATS_HELP, "{beat}", sum(beats)),
                metric(name::AGENT_STALLS, AGENT_STALLS_HELP, "{stall}", sum(stalls)),
            ]
        };
        let mut chunk_resources: Vec<AgentMetrics> = Vec::new();
        let (mut status_points, mut beat_points, mut stall_points) = (Vec::new(), Vec::new(), Vec::new());
        let mut in_chunk = 0;
        for (pi, p) in view.pipelines.iter().enumerate() {
            // The agent views of one consistent snapshot, but not the
            // snapshot itself: each view chunk is let go as soon as its
            // agents are built, so while this collection waits for the
            // network the processor's newer snapshots can replace the
            // chunks already sent instead of adding a whole generation.
            let (view_chunks, clock) = {
                let latest = p.latest();
                (latest.agent_chunks(), latest.clock)
            };
            let wall = self.clocks.entry(p.name.clone()).or_insert_with(|| WallClock::new(clock));
            wall.check_step();
            let wall = wall.clone();
            for a in view_chunks.into_iter().flat_map(|c| (0..c.len()).map(move |i| c[i])) {
                // Read-locked per agent: `emit` below may wait for the
                // network, and the resolver must not wait with it.
                let store = p.attributes.as_deref().map(varta_agents::AttributeStore::read);
                let agent = a.agent_ref();
                let resolved = store.as_ref().and_then(|s| s.get(&a.id));
                // Per-agent sums are deltas of the agent's own previous
                // reading; kept per agent (not by string key) and rebuilt
                // every collection so departed agents vanish.
                let (b, st) = match temporality {
                    Temporality::Cumulative => (a.beats, u64::from(a.stalls)),
                    Temporality::Delta => {
                        let (pb, ps) = self.prev_agents.get(&(pi, a.id)).copied().unwrap_or((0, 0));
                        agents_now.insert((pi, a.id), (a.beats, u64::from(a.stalls)));
                        (
                            a.beats.checked_sub(pb).unwrap_or(a.beats),
                            u64::from(a.stalls).checked_sub(ps).unwrap_or(u64::from(a.stalls)),
                        )
                    }
                };
                // A cumulative series starts when its agent was first
                // admitted: it resets only when the agent does (a new
                // incarnation is a new agent), not when the exporter does.
                let series_start = match temporality {
                    Temporality::Cumulative => wall.to_unix_ns(a.first_seen_ns()).min(now_ns),
                    Temporality::Delta => start,
                };
                let sum_point = |attributes: Vec<KeyValue>, v: u64| NumberDataPoint {
                    attributes,
                    start_time_unix_nano: series_start,
                    time_unix_nano: now_ns,
                    value: Some(number_data_point::Value::AsInt(i64::try_from(v).unwrap_or(i64::MAX))),
                    ..Default::default()
                };
                let status_point = |attributes: Vec<KeyValue>| NumberDataPoint {
                    attributes,
                    time_unix_nano: now_ns,
                    value: Some(number_data_point::Value::AsInt(status_code(a.status))),
                    ..Default::default()
                };
                match agent_series(&self.agent_resource, &p.name, &agent, resolved.as_ref()) {
                    (Some(resource), at) => chunk_resources.push(AgentMetrics {
                        resource,
                        metrics: families(
                            vec![status_point(at.clone())],
                            vec![sum_point(at.clone(), b)],
                            vec![sum_point(at, st)],
                        ),
                    }),
                    (None, at) => {
                        beat_points.push(sum_point(at.clone(), b));
                        stall_points.push(sum_point(at.clone(), st));
                        status_points.push(status_point(at));
                    }
                }
                drop(store);
                in_chunk += 1;
                if in_chunk == AGENTS_PER_CHUNK {
                    in_chunk = 0;
                    let chunk = if self.agent_resource.is_some() {
                        AgentChunk::Resources(std::mem::take(&mut chunk_resources))
                    } else {
                        AgentChunk::Points(families(
                            std::mem::take(&mut status_points),
                            std::mem::take(&mut beat_points),
                            std::mem::take(&mut stall_points),
                        ))
                    };
                    if !emit(chunk) {
                        return;
                    }
                }
            }
        }
        if in_chunk > 0 {
            let chunk = if self.agent_resource.is_some() {
                AgentChunk::Resources(chunk_resources)
            } else {
                AgentChunk::Points(families(status_points, beat_points, stall_points))
            };
            emit(chunk);
        }
        self.prev_agents = agents_now;
        self.clocks.retain(|name, _| view.pipelines.iter().any(|p| p.name == *name));
        // Staleness points of departed agents, after the live ones.
        let departed = std::mem::take(&mut self.departed);
        for group in departed.chunks(AGENTS_PER_CHUNK) {
            let stale = |attributes: Vec<KeyValue>, at: u64| NumberDataPoint {
                attributes,
                time_unix_nano: at,
                flags: DataPointFlags::NoRecordedValueMask as u32,
                value: None,
                ..Default::default()
            };
            let chunk = if self.agent_resource.is_some() {
                AgentChunk::Resources(
                    group
                        .iter()
                        .map(|d| AgentMetrics {
                            resource: d.resource.clone().unwrap_or_default(),
                            metrics: families(
                                vec![stale(d.attributes.clone(), d.at_unix_ns)],
                                vec![stale(d.attributes.clone(), d.at_unix_ns)],
                                vec![stale(d.attributes.clone(), d.at_unix_ns)],
                            ),
                        })
                        .collect(),
                )
            } else {
                let points = || group.iter().map(|d| stale(d.attributes.clone(), d.at_unix_ns)).collect();
                AgentChunk::Points(families(points(), points(), points()))
            };
            if !emit(chunk) {
                return;
            }
        }
    }

    fn histogram_point(
        &mut self,
        pipeline: &str,
        attributes: Vec<KeyValue>,
        h: StallDurations,
        start: u64,
        now_ns: u64,
    ) -> HistogramDataPoint {
        let h = match self.temporality {
            Temporality::Cumulative => h,
            Temporality::Delta => {
                let before = self.prev_hist.insert(pipeline.to_owned(), h).unwrap_or_default();
                if h.count() >= before.count() && h.sum_ns >= before.sum_ns {
                    let mut d = h;
                    for (b, p) in d.buckets.iter_mut().zip(before.buckets) {
                        *b = b.saturating_sub(p);
                    }
                    d.sum_ns = h.sum_ns - before.sum_ns;
                    d
                } else {
                    h
                }
            }
        };
        HistogramDataPoint {
            attributes,
            start_time_unix_nano: start,
            time_unix_nano: now_ns,
            count: h.count(),
            sum: Some(h.sum_ns as f64 / 1e9),
            bucket_counts: h.buckets.to_vec(),
            explicit_bounds: STALL_DURATION_BOUNDS_NS.iter().map(|&b| b as f64 / 1e9).collect(),
            ..Default::default()
        }
    }
}

fn series_key(name: &str, attributes: &[KeyValue]) -> String {
    let mut key = name.to_owned();
    for kv in attributes {
        key.push('\u{1f}');
        key.push_str(&kv.key);
        key.push('=');
        if let Some(v) = kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            key.push_str(&format!("{v:?}"));
        }
    }
    key
}

/// Number of data points in a metric.
fn points(m: &Metric) -> usize {
    match &m.data {
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        _ => 0,
    }
}

/// Splits metrics into groups of at most about `max_points` data points
/// (a large metric is cut into several copies), so one request stays well
/// under gRPC's default 4 MiB message limit however many agents there are.
pub fn split(metrics: Vec<Metric>, max_points: usize) -> Vec<Vec<Metric>> {
    let max_points = max_points.max(1);
    let mut out: Vec<Vec<Metric>> = Vec::new();
    let mut current: Vec<Metric> = Vec::new();
    let mut count = 0usize;
    for mut m in metrics {
        while points(&m) > max_points {
            let rest = cut(&mut m, max_points);
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            out.push(vec![m]);
            count = 0;
            m = rest;
        }
        let n = points(&m);
        if count + n > max_points && !current.is_empty() {
            out.push(std::mem::take(&mut current));
            count = 0;
        }
        count += n;
        current.push(m);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Keeps the first `at` points in `m`, returns a copy holding the rest.
fn cut(m: &mut Metric, at: usize) -> Metric {
    let mut rest = Metric {
        name: m.name.clone(),
        description: m.description.clone(),
        unit: m.unit.clone(),
        ..Default::default()
    };
    rest.data = match &mut m.data {
        Some(Data::Sum(s)) => Some(Data::Sum(Sum { data_points: s.data_points.split_off(at), ..*s })),
        Some(Data::Gauge(g)) => Some(Data::Gauge(Gauge { data_points: g.data_points.split_off(at) })),
        Some(Data::Histogram(h)) => {
            Some(Data::Histogram(Histogram { data_points: h.data_points.split_off(at), ..*h }))
        }
        _ => None,
    };
    rest
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use varta_pipeline::{Instrumented, Metric as ModelMetric, Sample};
    use varta_processor::StatsSnapshot;
    use varta_processor::clock::Clock;
    use varta_processor::snapshot::Publisher;

    use crate::view::PipelineView;

    static REFUSED: ModelMetric = ModelMetric::labelled("refused", "reason", "test").unit("{datagram}");
    static DEPTH: ModelMetric = ModelMetric::gauge("depth", "test").unit("{batch}");

    #[derive(Debug, Default)]
    struct Fake(AtomicU64);

    impl Instrumented for Fake {
        fn samples(&self, out: &mut dyn FnMut(Sample)) {
            out(Sample::labelled(&REFUSED, "bad_crc", self.0.load(Relaxed)));
            out(Sample::labelled(&REFUSED, "replay", 1));
            out(Sample::new(&DEPTH, 7));
        }
    }

    fn view(fake: Arc<Fake>) -> (CollectorView, Publisher) {
        let publisher = Publisher::new(1, Clock::Monotonic, &[2_000_000_000]);
        let (_tx, rx) = varta_pipeline::queue::batch_queue(4);
        let mut v = CollectorView::default();
        v.add(Role::Receiver, "vlp/udp", fake);
        v.add_pipeline(PipelineView {
            name: "liveness".into(),
            snapshots: publisher.reader(),
            queue: rx.depth(),
            attributes: None,
        });
        (v, publisher)
    }

    fn find<'a>(metrics: &'a [Metric], name: &str) -> &'a Metric {
        metrics.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("{name} missing"))
    }

    fn int(p: &NumberDataPoint) -> i64 {
        match p.value {
            Some(number_data_point::Value::AsInt(v)) => v,
            _ => panic!("not an int"),
        }
    }

    #[test]
    fn names_shapes_and_the_decode_refusal_split() {
        let (v, _p) = view(Arc::new(Fake::default()));
        let mut b = MetricsBuilder::new(Temporality::Cumulative, true, 100);
        let m = b.collect(&v, 200).metrics;
        assert!(matches!(find(&m, name::BEATS).data, Some(Data::Sum(Sum { is_monotonic: true, .. }))));
        assert!(matches!(find(&m, name::AGENTS_TRACKED).data, Some(Data::Gauge(_))));
        let Some(Data::Histogram(h)) = &find(&m, name::STALL_DURATION).data else { panic!("histogram") };
        assert_eq!(h.data_points[0].bucket_counts.len(), STALL_DURATION_BOUNDS_NS.len() + 1);
        assert_eq!(h.data_points[0].explicit_bounds[0], 0.01);
        let Some(Data::Sum(d)) = &find(&m, name::DECODE_ERRORS).data else { panic!("sum") };
        assert_eq!(d.data_points.len(), 1, "bad_crc is a decode error");
        let Some(Data::Sum(r)) = &find(&m, name::REFUSALS).data else { panic!("sum") };
        assert_eq!(r.data_points.len(), 1, "replay is another refusal");
        assert_eq!(
            r.data_points[0].start_time_unix_nano, v.components[0].started_unix_nano,
            "a component's counters start with it"
        );
        assert!(matches!(find(&m, "varta.collector.receiver.depth").data, Some(Data::Gauge(_))));
        assert!(matches!(find(&m, "varta.collector.pipeline.queue_depth").data, Some(Data::Gauge(_))));
    }

    /// A rebuild of the views keeps the start time of a component whose
    /// counters it still shows; a component made anew under the same name
    /// (a reload that replaced it, its counters back at zero) starts its
    /// series again, so cumulative readers see a reset, not a decrease.
    #[test]
    fn component_series_start_when_their_counters_do() {
        let fake = Arc::new(Fake::default());
        let (mut first, _p) = view(fake.clone());
        first.components[0].started_unix_nano = 1_000;
        let (mut kept, _q) = view(fake);
        kept.carry_starts(&first);
        assert_eq!(kept.components[0].started_unix_nano, 1_000, "the same counters");
        let (mut replaced, _r) = view(Arc::new(Fake::default()));
        replaced.carry_starts(&first);
        assert!(replaced.components[0].started_unix_nano > 1_000, "new counters, a new start");
        let mut b = MetricsBuilder::new(Temporality::Cumulative, true, 100);
        let m = b.collect(&kept, 200).metrics;
        let Some(Data::Sum(r)) = &find(&m, name::REFUSALS).data else { panic!("sum") };
        assert_eq!(r.data_points[0].start_time_unix_nano, 1_000);
        let Some(Data::Sum(beats)) = &find(&m, name::BEATS).data else { panic!("sum") };
        assert_eq!(
            beats.data_points[0].start_time_unix_nano, 100,
            "pipeline families keep the exporter's start"
        );
    }

    #[test]
    fn delta_sends_differences_and_restarts_from_a_reset() {
        let fake = Arc::new(Fake::default());
        let (v, _p) = view(fake.clone());
        let mut b = MetricsBuilder::new(Temporality::Delta, true, 100);
        let value = |b: &mut MetricsBuilder, now| {
            let m = b.collect(&v, now).metrics;
            let Some(Data::Sum(s)) = &find(&m, name::DECODE_ERRORS).data else { panic!("sum") };
            assert_eq!(s.aggregation_temporality, AggregationTemporality::Delta as i32);
            (int(&s.data_points[0]), s.data_points[0].start_time_unix_nano)
        };
        fake.0.store(5, Relaxed);
        assert_eq!(value(&mut b, 200), (5, 100));
        fake.0.store(8, Relaxed);
        assert_eq!(value(&mut b, 300), (3, 200), "since the previous export");
        assert_eq!(value(&mut b, 400), (0, 300));
        fake.0.store(2, Relaxed);
        assert_eq!(value(&mut b, 500), (2, 400), "a counter that went down counts from zero");
    }

    /// While a collection waits on `emit` (the network), the view chunks
    /// it has already turned into points are no longer kept alive by it:
    /// once the processor publishes a newer snapshot, they are freed.
    #[test]
    fn a_collection_lets_go_of_the_view_chunks_it_has_sent() {
        use varta_processor::tracker::{Slot, Tracker};
        use varta_proto::{Source, Transport};
        let (v, mut publisher) = view(Arc::new(Fake::default()));
        let agents = 3 * varta_processor::tracker::VIEW_CHUNK as u32;
        let mut tracker = Tracker::new(agents as usize, &[2_000_000_000]);
        for pid in 1..=agents {
            let slot = Slot::new(Source::Local, pid, 0, Transport::Uds, 10, 0);
            let hash = tracker.hash(&Source::Local, pid);
            tracker.insert(hash, slot).expect("room");
        }
        publisher.publish(20, &mut tracker, StatsSnapshot::default());
        let first = Arc::downgrade(&v.pipelines[0].latest().agent_chunks()[0]);
        let mut b = MetricsBuilder::new(Temporality::Cumulative, true, 100).with_agent_resource(Some(None));
        let (mut chunks, mut agents_sent, mut freed_while_sending) = (0, 0, None);
        b.collect_with(&v, 200, &mut Exemplars::default(), &mut |chunk| {
            let AgentChunk::Resources(r) = chunk else { panic!("agents are resources") };
            agents_sent += r.len();
            chunks += 1;
            // Past the first view chunk: every agent beats, the processor
            // publishes a new generation of every view chunk.
            if agents_sent == varta_processor::tracker::VIEW_CHUNK + AGENTS_PER_CHUNK {
                for idx in 0..agents {
                    tracker.touch(idx, 30, 0);
                }
                publisher.publish(30, &mut tracker, StatsSnapshot::default());
                freed_while_sending = Some(first.upgrade().is_none());
            }
            true
        });
        assert_eq!(agents_sent, agents as usize, "every agent once");
        assert!(chunks > 3);
        assert_eq!(freed_while_sending, Some(true), "the first view chunk outlived its points");
    }

    /// An agent's cumulative series start when it was first admitted, on
    /// the processor clock mapped to Unix time once: two agents admitted
    /// seconds apart start apart, and a later collection (more beats, a
    /// later wall time) gives each the same start again.
    #[test]
    fn agent_series_start_at_the_agents_first_admission() {
        use varta_processor::tracker::{Slot, Tracker};
        use varta_proto::{Source, Transport};
        let (v, mut publisher) = view(Arc::new(Fake::default()));
        let mut tracker = Tracker::new(4, &[2_000_000_000]);
        let now = Clock::Monotonic.now_ns();
        let (early, late) = (now - 7_000_000_000, now - 2_000_000_000);
        for (pid, admitted) in [(1, early), (2, late)] {
            let hash = tracker.hash(&Source::Local, pid);
            tracker
                .insert(hash, Slot::new(Source::Local, pid, 0, Transport::Uds, admitted, 0))
                .expect("room");
        }
        publisher.publish(now, &mut tracker, StatsSnapshot::default());
        let starts = |b: &mut MetricsBuilder, at: u64| {
            let m = b.collect(&v, at).metrics;
            let Some(Data::Sum(beats)) = &find(&m, name::AGENT_BEATS).data else { panic!("sum") };
            let mut s: Vec<(i64, u64)> = beats
                .data_points
                .iter()
                .map(|p| {
                    let pid = p.attributes.iter().find(|kv| kv.key == "process.pid").and_then(|kv| match kv
                        .value
                        .as_ref()?
                        .value
                        .as_ref()?
                    {
                        opentelemetry_proto::tonic::common::v1::any_value::Value::IntValue(v) => Some(*v),
                        _ => None,
                    });
                    (pid.expect("process.pid"), p.start_time_unix_nano)
                })
                .collect();
            s.sort();
            s
        };
        let wall_now = crate::wallclock::unix_now_ns() as u64;
        let mut b = MetricsBuilder::new(Temporality::Cumulative, true, wall_now - 1_000);
        let first = starts(&mut b, wall_now);
        let gap = first[1].1 as i64 - first[0].1 as i64;
        assert!(
            (4_000_000_000..=6_000_000_000).contains(&gap),
            "admitted 5 s apart (to the second): {first:?}"
        );
        assert!(first[0].1 < wall_now - 1_000, "before the exporter started: the agent's own start");
        for idx in 0..2 {
            tracker.touch(idx, now + 1_000_000_000, 0);
        }
        publisher.publish(now + 1_000_000_000, &mut tracker, StatsSnapshot::default());
        assert_eq!(starts(&mut b, wall_now + 1_000_000_000), first, "the same start at every collection");
    }

    /// An evicted agent's series get one staleness point each (no value,
    /// flag NoRecordedValue, at the eviction), named exactly as its live
    /// points were, under the agent's resource or as point attributes.
    #[test]
    fn departed_agents_get_staleness_points_on_their_own_series() {
        use varta_processor::tracker::{Slot, Tracker};
        use varta_processor::{AgentId, AgentRef};
        use varta_proto::{Source, Transport};
        for agent_resource in [Some(Some("node-1".to_owned())), None] {
            let (v, mut publisher) = view(Arc::new(Fake::default()));
            let mut tracker = Tracker::new(4, &[2_000_000_000]);
            let hash = tracker.hash(&Source::Local, 42);
            tracker.insert(hash, Slot::new(Source::Local, 42, 0, Transport::Uds, 10, 0)).expect("room");
            publisher.publish(20, &mut tracker, StatsSnapshot::default());
            let mut b = MetricsBuilder::new(Temporality::Cumulative, true, 100)
                .with_agent_resource(agent_resource.clone());
            let series_of = |b: &mut MetricsBuilder, at: u64| {
                let mut out = Vec::new();
                let mut collect = |chunk: AgentChunk| {
                    let groups: Vec<(Option<Resource>, Vec<Metric>)> = match chunk {
                        AgentChunk::Resources(r) => {
                            r.into_iter().map(|a| (Some(a.resource), a.metrics)).collect()
                        }
                        AgentChunk::Points(m) => vec![(None, m)],
                    };
                    for (resource, metrics) in groups {
                        for m in metrics {
                            let points = match m.data {
                                Some(Data::Gauge(g)) => g.data_points,
                                Some(Data::Sum(s)) => s.data_points,
                                _ => Vec::new(),
                            };
                            for p in points {
                                out.push((m.name.clone(), resource.clone(), p));
                            }
                        }
                    }
                    true
                };
                b.collect_with(&v, at, &mut Exemplars::default(), &mut collect);
                out
            };
            let live = series_of(&mut b, 200);
            assert_eq!(live.len(), 3, "status, beats, stalls");
            let agent = AgentRef {
                id: AgentId { source: Source::Local, pid: 42, start_time: 0 },
                frame_pid: 42,
                host_pid: 42,
                transport: Transport::Uds,
            };
            let (resource, attributes) = agent_series(b.agent_resource(), "liveness", &agent, None);
            b.mark_departed(vec![Departed { resource, attributes, at_unix_ns: 250 }]);
            let after = series_of(&mut b, 300);
            let stale: Vec<_> = after.iter().filter(|(_, _, p)| p.flags & 1 == 1).collect();
            assert_eq!(stale.len(), 3, "{agent_resource:?}: one per series");
            for (name, resource, p) in stale {
                assert!(p.value.is_none() && p.time_unix_nano == 250, "{p:?}");
                let (_, live_resource, live_point) =
                    live.iter().find(|(n, _, _)| n == name).expect("a live series of that name");
                assert_eq!(resource, live_resource, "{name}: the same resource");
                assert_eq!(p.attributes, live_point.attributes, "{name}: the same attributes");
            }
            assert!(series_of(&mut b, 400).iter().all(|(_, _, p)| p.flags == 0), "sent once");
        }
    }

    #[test]
    fn split_keeps_every_point_and_bounds_each_request() {
        let big = Metric {
            name: "big".into(),
            data: Some(Data::Gauge(Gauge { data_points: vec![NumberDataPoint::default(); 25] })),
            ..Default::default()
        };
        let small = Metric {
            name: "small".into(),
            data: Some(Data::Sum(Sum {
                data_points: vec![NumberDataPoint::default(); 3],
                ..Default::default()
            })),
            ..Default::default()
        };
        let groups = split(vec![small.clone(), big, small], 10);
        assert!(groups.iter().all(|g| g.iter().map(points).sum::<usize>() <= 10), "{}", groups.len());
        assert_eq!(groups.iter().flatten().map(points).sum::<usize>(), 31);
        assert!(groups.iter().flatten().filter(|m| m.name == "big").count() >= 3);
    }
}
