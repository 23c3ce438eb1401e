//! Metric families built from the [`CollectorView`] at scrape time: the
//! collector's own families as `prometheus` crate [`MetricFamily`]s (their
//! number does not grow with the fleet), the per-agent ones streamed from
//! the same snapshots by [`super::agents`] — so no per-beat registry call,
//! and no per-agent object at all.
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

use prometheus::proto::{self, MetricFamily, MetricType};
use varta_agents::AttributeStore;
use varta_pipeline::{MetricKind, Role, Sample};
use varta_processor::{
    Cause, RecoveryOutcome, RecoveryRefusal, STALL_DURATION_BOUNDS_NS, Snapshot, StallDurations,
    StatsSnapshot,
};

use super::agents::{AgentSource, PipelineAgents};
use super::scrape::Exposition;
use super::stats::HttpStats;
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

/// What the endpoint serves: every family, built anew at each scrape.
#[derive(Debug)]
pub struct VartaFamilies {
    /// Every component, and the pipelines whose agents this exporter serves.
    view: LiveView,
    agents: AgentSeries,
    http: Arc<HttpStats>,
}

/// `varta_collector_<role>_<name>[_total]`.
pub fn component_family_name(role: Role, metric: &varta_pipeline::Metric) -> String {
    let suffix = if metric.kind == MetricKind::Counter { "_total" } else { "" };
    format!("varta_collector_{}_{}{}", role.as_str(), metric.name, suffix)
}

/// One family being built (also the reference the streamed exposition's
/// tests compare against).
pub(super) struct Family(pub(super) MetricFamily);

impl Family {
    pub(super) fn new(name: &str, help: &str, ty: MetricType) -> Family {
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

    pub(super) fn push(&mut self, labels: &[(&str, &str)], value: f64) {
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
        VartaFamilies { view, agents, http }
    }

    /// Begins a scrape: the fixed families (encoded now) and the per-agent
    /// ones (rendered as the body is sent), from one reading of the view
    /// and its snapshots (a reload replaces the view whole, never under a
    /// scrape).
    pub fn scrape(&self) -> prometheus::Result<Exposition> {
        let view = self.view.load();
        let scrape = Scrape { view: &view, http: &self.http };
        let snaps = scrape.snapshots();
        let agents = AgentSource::new(
            snaps
                .iter()
                .map(|(name, snapshot)| PipelineAgents {
                    name: (*name).to_owned(),
                    snapshot: Arc::clone(snapshot),
                    attributes: scrape.attributes(name),
                })
                .collect(),
            self.agents.enabled.then_some(self.agents.max_agents),
        );
        let mut fixed = Vec::with_capacity(64);
        scrape.compat(&snaps, &mut fixed);
        scrape.omitted(agents.omitted(), &mut fixed);
        scrape.components(&mut fixed);
        Exposition::new(fixed, agents)
    }
}

/// The fixed families of one scrape.
struct Scrape<'a> {
    view: &'a CollectorView,
    http: &'a Arc<HttpStats>,
}

impl Scrape<'_> {
    fn snapshots(&self) -> Vec<(&str, Arc<Snapshot>)> {
        self.view.pipelines.iter().map(|p| (p.name.as_str(), p.latest())).collect()
    }

    fn attributes(&self, pipeline: &str) -> Option<Arc<AttributeStore>> {
        self.view.pipelines.iter().find(|p| p.name == pipeline).and_then(|p| p.attributes.clone())
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
        limited.push(&[("reason", "unauthenticated_share")], total(|s| s.rate_limited_unauthenticated_share));
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

    /// `varta_prometheus_agents_omitted` (the per-agent families themselves
    /// are streamed by [`super::agents`]).
    fn omitted(&self, omitted: usize, out: &mut Vec<MetricFamily>) {
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
