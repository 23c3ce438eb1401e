//! Metric families built from the [`CollectorView`] at scrape time — the
//! `prometheus` crate's [`Collector`] trait, so no per-beat registry call
//! and no per-agent object ever lives in a registry.
//!
//! Three groups, every fixed-label series present from the first scrape:
//! * **varta-watch 0.2 compatible** (`varta_beats_total{pid}`,
//!   `varta_decode_errors_total{kind}`, `varta_watch_pids_tracked`, …) so
//!   existing dashboards and alerts keep working; per-agent series of
//!   network agents also carry `source` (two hosts may share a pid), and
//!   local agents `exe` and `service` once the resolver knows them.
//! * **ours**: `varta_stall_duration_seconds` (histogram of ended stalls),
//!   `varta_stall_causes_total{cause}` (diagnosed stalls),
//!   `varta_replay_refusals_total`, `varta_build_info`,
//!   `varta_prometheus_agents_omitted`.
//! * **every component's metrics** as `varta_collector_<role>_<name>`
//!   (`_total` for counters) with a `component` label.

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use varta_agents::AttributeStore;
use varta_pipeline::{MetricKind, Role, Sample};
use varta_processor::{
    AgentView, Cause, RecoveryOutcome, RecoveryRefusal, STALL_DURATION_BOUNDS_NS, Snapshot, StallDurations,
    StatsSnapshot,
};
use varta_proto::{Source, Status};

use super::http::HttpStats;
use crate::view::{CollectorView, LiveView};

/// The eight decode-error kinds varta-watch exports (receiver refusal labels).
pub const DECODE_KINDS: [&str; 8] = [
    "bad_magic",
    "bad_version",
    "bad_status",
    "bad_pid",
    "bad_timestamp",
    "bad_nonce",
    "stall_on_wire",
    "bad_crc",
];

/// Receiver refusals counted as varta-watch's `frame_auth_failures`: the
/// sender's attested identity disagrees with the frame.
pub const AUTH_FAILURE_REASONS: [&str; 4] =
    ["auth_failed", "uid_mismatch", "namespace_mismatch", "pid_mismatch"];

/// Receiver refusals counted as `truncated_datagrams`: wrong length.
pub const TRUNCATED_REASONS: [&str; 2] = ["bad_length", "truncated"];

/// How per-agent series are produced.
#[derive(Debug, Clone, Copy)]
pub struct AgentSeries {
    pub enabled: bool,
    pub max_agents: usize,
}

/// The collector handed to the registry.
#[derive(Debug)]
pub struct VartaFamilies {
    /// Every component, and the pipelines whose agents this exporter serves.
    view: LiveView,
    agents: AgentSeries,
    http: Arc<HttpStats>,
    descs: Vec<Desc>,
}

fn status_value(s: Status) -> f64 {
    match s {
        Status::Ok => 0.0,
        Status::Degraded => 1.0,
        Status::Critical => 2.0,
        Status::Stall => 3.0,
    }
}

/// `varta_collector_<role>_<name>[_total]`.
pub fn component_family_name(role: Role, metric: &varta_pipeline::Metric) -> String {
    let suffix = if metric.kind == MetricKind::Counter { "_total" } else { "" };
    format!("varta_collector_{}_{}{}", role.as_str(), metric.name, suffix)
}

struct Family(MetricFamily);

impl Family {
    fn new(name: &str, help: &str, ty: MetricType) -> Family {
        let mut f = MetricFamily::default();
        f.set_name(name.to_owned());
        f.set_help(help.to_owned());
        f.set_field_type(ty);
        Family(f)
    }

    fn counter(name: &str, help: &str) -> Family {
        Family::new(name, help, MetricType::COUNTER)
    }

    fn gauge(name: &str, help: &str) -> Family {
        Family::new(name, help, MetricType::GAUGE)
    }

    fn push(&mut self, labels: &[(&str, &str)], value: f64) {
        let ty = self.0.get_field_type();
        let mut m = proto::Metric::from_label(labels.iter().map(|&(k, v)| label(k, v)).collect());
        if ty == MetricType::COUNTER {
            let mut c = proto::Counter::default();
            c.set_value(value);
            m.set_counter(c);
        } else {
            let mut g = proto::Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
        }
        self.0.mut_metric().push(m);
    }

    fn single(mut self, value: f64) -> MetricFamily {
        self.push(&[], value);
        self.0
    }
}

fn label(k: &str, v: &str) -> proto::LabelPair {
    let mut l = proto::LabelPair::default();
    l.set_name(k.to_owned());
    l.set_value(v.to_owned());
    l
}

impl VartaFamilies {
    pub fn new(view: LiveView, agents: AgentSeries, http: Arc<HttpStats>) -> VartaFamilies {
        // Descriptors of every family this collector can produce (the
        // registry checks names for validity and uniqueness).
        let descs = Scrape { view: &view.load(), agents, http: &http }
            .collect()
            .iter()
            .filter_map(|f| {
                Desc::new(f.name().to_owned(), f.help().to_owned(), Vec::new(), Default::default()).ok()
            })
            .collect();
        VartaFamilies { view, agents, http, descs }
    }
}

/// One scrape: families built from the view current when it began (a
/// reload replaces the view whole, never under a scrape).
struct Scrape<'a> {
    view: &'a CollectorView,
    agents: AgentSeries,
    http: &'a Arc<HttpStats>,
}

impl Scrape<'_> {
    fn collect(&self) -> Vec<MetricFamily> {
        let snaps = self.snapshots();
        let mut out = Vec::with_capacity(64);
        self.compat(&snaps, &mut out);
        self.per_agent(&snaps, &mut out);
        self.components(&mut out);
        out
    }

    fn snapshots(&self) -> Vec<(&str, Arc<Snapshot>)> {
        self.view.pipelines.iter().map(|p| (p.name.as_str(), p.latest())).collect()
    }

    fn attributes(&self, pipeline: &str) -> Option<&AttributeStore> {
        self.view.pipelines.iter().find(|p| p.name == pipeline).and_then(|p| p.attributes.as_deref())
    }

    fn receiver_total(&self, reasons: &[&str]) -> u64 {
        let mut sum = 0u64;
        for c in self.view.components.iter().filter(|c| c.role == Role::Receiver) {
            c.metrics.samples(&mut |s: Sample| {
                if s.metric.name == "refused" && reasons.contains(&s.label) {
                    sum = sum.wrapping_add(s.value);
                }
            });
        }
        sum
    }

    fn compat(&self, snaps: &[(&str, Arc<Snapshot>)], out: &mut Vec<MetricFamily>) {
        let total = |f: fn(&StatsSnapshot) -> u64| snaps.iter().map(|(_, s)| f(&s.stats)).sum::<u64>() as f64;

        let mut decode =
            Family::counter("varta_decode_errors_total", "Frames refused by the VLP decoder, by kind.");
        for kind in DECODE_KINDS {
            decode.push(&[("kind", kind)], self.receiver_total(&[kind]) as f64);
        }
        out.push(decode.0);
        out.push(
            Family::counter(
                "varta_frame_auth_failures_total",
                "Frames whose attested sender disagrees with the frame (auth_failed, uid/namespace/pid mismatch).",
            )
            .single(self.receiver_total(&AUTH_FAILURE_REASONS) as f64),
        );
        out.push(
            Family::counter("varta_frame_decrypt_failures_total", "Secure frames no configured key opens.")
                .single(self.receiver_total(&["decrypt_failed"]) as f64),
        );
        out.push(
            Family::counter(
                "varta_truncated_datagrams_total",
                "Datagrams of the wrong length (short or cut).",
            )
            .single(self.receiver_total(&TRUNCATED_REASONS) as f64),
        );
        out.push(
            Family::counter("varta_replay_refusals_total", "Secure frames refused as replays.")
                .single(self.receiver_total(&["replay"]) as f64),
        );
        let mut causes = Family::counter(
            "varta_stall_causes_total",
            "Diagnosed stalls by cause (exited, zombie, stopped, spinning, blocked_io, waiting).",
        );
        for (i, cause) in Cause::ALL.iter().enumerate() {
            let n: u64 = snaps.iter().map(|(_, s)| s.stats.stall_causes[i]).sum();
            causes.push(&[("cause", cause.label())], n as f64);
        }
        out.push(causes.0);
        let mut outcomes = Family::counter(
            "varta_recovery_outcomes_total",
            "Recoveries by final outcome (succeeded, failed, timed_out, spawn_failed, skipped).",
        );
        for (i, o) in RecoveryOutcome::FINAL.iter().enumerate() {
            let n: u64 = snaps.iter().map(|(_, s)| s.stats.recovery_outcomes[i]).sum();
            outcomes.push(&[("outcome", o.label())], n as f64);
        }
        out.push(outcomes.0);
        let mut refused =
            Family::counter("varta_recovery_refused_total", "Stalls recovery refused to act on, by reason.");
        for (i, r) in RecoveryRefusal::ALL.iter().enumerate() {
            let n: u64 = snaps.iter().map(|(_, s)| s.stats.recovery_refused[i]).sum();
            refused.push(&[("reason", r.label())], n as f64);
        }
        out.push(refused.0);
        let mut limited =
            Family::counter("varta_rate_limited_total", "Beats refused by rate limits, by reason.");
        limited.push(&[("reason", "per_pid")], total(|s| s.rate_limited_per_agent));
        limited.push(&[("reason", "global")], total(|s| s.rate_limited_global));
        out.push(limited.0);
        out.push(
            Family::counter(
                "varta_tracker_capacity_exceeded_total",
                "New agents refused because the tracker was full of live agents.",
            )
            .single(total(|s| s.capacity_exceeded)),
        );
        out.push(
            Family::counter(
                "varta_tracker_evicted_total",
                "Agents whose state was dropped (stale under capacity pressure, or pid recycled).",
            )
            .single(total(|s| s.evicted_stale + s.evicted_pid_recycled)),
        );
        out.push(
            Family::gauge("varta_watch_pids_tracked", "Agents currently tracked.")
                .single(total(|s| s.agents_tracked)),
        );
        out.push(
            Family::counter(
                "varta_prom_auth_failures_total",
                "Metrics requests refused for a missing or wrong token.",
            )
            .single(self.http.unauthorized() as f64),
        );
        let uptime = self.view.started.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0);
        out.push(
            Family::gauge("varta_watch_uptime_seconds", "Seconds since the collector started.")
                .single(uptime),
        );
        let mut info = Family::gauge("varta_build_info", "Build of this collector (value is always 1).");
        info.push(&[("version", env!("CARGO_PKG_VERSION"))], 1.0);
        out.push(info.0);
        out.push(histogram(
            "varta_stall_duration_seconds",
            "Length of stalls that ended (silence until the agent beat again).",
            snaps.iter().map(|(_, s)| s.stats.stall_durations),
        ));
        out.push(histogram(
            "varta_recovery_duration_seconds",
            "Run time of recovery commands that finished (spawn to exit).",
            snaps.iter().map(|(_, s)| s.stats.recovery_durations),
        ));
    }

    fn per_agent(&self, snaps: &[(&str, Arc<Snapshot>)], out: &mut Vec<MetricFamily>) {
        let mut beats = Family::counter("varta_beats_total", "Beats accepted from this agent.");
        let mut stalls = Family::counter("varta_stalls_total", "Stalls of this agent.");
        let mut status =
            Family::gauge("varta_status", "Agent status: 0 ok, 1 degraded, 2 critical, 3 stalled.");
        let mut threshold = Family::gauge(
            "varta_agent_threshold_seconds",
            "The stall threshold this agent runs under: its rule's, the default, or learned from its beat.",
        );
        let tagged = snaps.len() > 1;
        let mut budget = if self.agents.enabled { self.agents.max_agents } else { 0 };
        let mut omitted = 0u64;
        // Stalled agents first: they are the ones an operator is looking for.
        for stalled_pass in [true, false] {
            for (pipeline, snap) in snaps {
                let store = self.attributes(pipeline).map(AttributeStore::read);
                for a in snap.agents().filter(|a| (a.status == Status::Stall) == stalled_pass) {
                    if budget == 0 {
                        omitted += 1;
                        continue;
                    }
                    budget -= 1;
                    let attrs = store.as_ref().and_then(|s| s.get(&a.id));
                    let series = AgentLabels {
                        pipeline: tagged.then_some(*pipeline),
                        exe: attrs.and_then(|x| x.executable_name()),
                        service: attrs.and_then(|x| x.service_name()),
                    };
                    let families = [&mut beats, &mut stalls, &mut status, &mut threshold];
                    push_agent(a, snap.threshold_ns_of(a), &series, families);
                }
            }
        }
        if self.agents.enabled {
            out.extend([beats.0, stalls.0, status.0, threshold.0]);
        }
        out.push(
            Family::gauge(
                "varta_prometheus_agents_omitted",
                "Agents left out of per-agent families at this scrape (max_agent_series, or per_agent_series off).",
            )
            .single(omitted as f64),
        );
    }

    fn components(&self, out: &mut Vec<MetricFamily>) {
        let mut families: BTreeMap<String, Family> = BTreeMap::new();
        self.view.for_each_sample(|c, s| {
            let name = component_family_name(c.role, s.metric);
            let family = families.entry(name).or_insert_with_key(|name| match s.metric.kind {
                MetricKind::Counter => Family::counter(name, s.metric.help),
                MetricKind::Gauge => Family::gauge(name, s.metric.help),
            });
            match s.metric.label {
                Some(key) => family.push(&[("component", &c.id), (key, s.label)], s.value as f64),
                None => family.push(&[("component", &c.id)], s.value as f64),
            }
        });
        out.extend(families.into_values().map(|f| f.0));
    }
}

/// A histogram family from per-pipeline bucket counts (bounds:
/// [`STALL_DURATION_BOUNDS_NS`]).
fn histogram(name: &str, help: &str, parts: impl Iterator<Item = StallDurations>) -> MetricFamily {
    let mut f = Family::new(name, help, MetricType::HISTOGRAM);
    let mut counts = [0u64; STALL_DURATION_BOUNDS_NS.len() + 1];
    let mut sum_ns = 0u64;
    for part in parts {
        for (c, b) in counts.iter_mut().zip(part.buckets) {
            *c += b;
        }
        sum_ns = sum_ns.wrapping_add(part.sum_ns);
    }
    let mut cumulative = 0;
    let buckets = STALL_DURATION_BOUNDS_NS
        .iter()
        .zip(counts)
        .map(|(&bound, n)| {
            cumulative += n;
            let mut b = proto::Bucket::default();
            b.set_upper_bound(bound as f64 / 1e9);
            b.set_cumulative_count(cumulative);
            b
        })
        .collect();
    let mut h = proto::Histogram::default();
    h.set_bucket(buckets);
    h.set_sample_count(counts.iter().sum());
    h.set_sample_sum(sum_ns as f64 / 1e9);
    let mut m = proto::Metric::default();
    m.set_histogram(h);
    f.0.mut_metric().push(m);
    f.0
}

/// Labels of one agent's series beyond `pid` and `source`.
struct AgentLabels<'a> {
    /// Set when the endpoint serves several pipelines.
    pipeline: Option<&'a str>,
    exe: Option<&'a str>,
    service: Option<&'a str>,
}

/// One agent's points in `[beats, stalls, status, threshold]`.
fn push_agent(a: &AgentView, threshold_ns: u64, extra: &AgentLabels<'_>, families: [&mut Family; 4]) {
    let [beats, stalls, status, threshold] = families;
    let pid = a.id.pid.to_string();
    let source = match a.id.source {
        Source::Local => None,
        other => Some(other.to_string()),
    };
    let mut labels: Vec<(&str, &str)> = Vec::with_capacity(5);
    if let Some(p) = extra.pipeline {
        labels.push(("pipeline", p));
    }
    labels.push(("pid", &pid));
    if let Some(src) = &source {
        labels.push(("source", src));
    }
    if let Some(exe) = extra.exe {
        labels.push(("exe", exe));
    }
    if let Some(service) = extra.service {
        labels.push(("service", service));
    }
    beats.push(&labels, a.beats as f64);
    stalls.push(&labels, a.stalls as f64);
    status.push(&labels, status_value(a.status));
    threshold.push(&labels, threshold_ns as f64 / 1e9);
}

impl Collector for VartaFamilies {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        Scrape { view: &self.view.load(), agents: self.agents, http: &self.http }.collect()
    }
}
