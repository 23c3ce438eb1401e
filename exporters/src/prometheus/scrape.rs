//! One scrape as a stream of text slices: the collector's own families
//! (O(components), encoded up front by the `prometheus` crate, so an
//! encoding error is still a 500 before any byte is sent) interleaved in
//! name order with the per-agent families, which [`super::agents`]
//! renders slice by slice as the client takes them.
//!
//! Promises: the same families, headers and samples as one
//! `Registry::gather` + `TextEncoder` of everything (families sorted by
//! name, the fixed families' samples sorted by label values; per-agent
//! samples in selection order); memory per scrape is the fixed families'
//! text plus one slice, whatever the number of agents.

use std::collections::VecDeque;

use prometheus::proto::MetricFamily;
use prometheus::{Encoder, TextEncoder};

use super::agents::{AGENT_FAMILIES, AgentFamily, AgentSource, Cursor};

/// Bytes of text a slice aims at (a slice ends after the agent line that
/// reaches it).
pub const SLICE_BYTES: usize = 32 * 1024;

enum Part {
    /// A fixed family, already encoded.
    Text(Vec<u8>),
    Agents(&'static AgentFamily),
}

/// The rest of one scrape.
pub struct Exposition {
    parts: VecDeque<Part>,
    agents: AgentSource,
    cursor: Cursor,
}

impl std::fmt::Debug for Exposition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exposition").field("parts", &self.parts.len()).finish_non_exhaustive()
    }
}

impl Exposition {
    /// `fixed`: every family but the per-agent ones.
    pub fn new(mut fixed: Vec<MetricFamily>, agents: AgentSource) -> prometheus::Result<Exposition> {
        sort_like_registry(&mut fixed);
        let mut named: Vec<(&str, Part)> = Vec::with_capacity(fixed.len() + AGENT_FAMILIES.len());
        let encoder = TextEncoder::new();
        for f in &fixed {
            let mut text = Vec::new();
            encoder.encode(std::slice::from_ref(f), &mut text)?;
            named.push((f.name(), Part::Text(text)));
        }
        if agents.selected() > 0 {
            named.extend(AGENT_FAMILIES.iter().map(|f| (f.name, Part::Agents(f))));
        }
        named.sort_by(|a, b| a.0.cmp(b.0));
        let parts = named.into_iter().map(|(_, p)| p).collect();
        Ok(Exposition { parts, agents, cursor: Cursor::default() })
    }

    /// Appends the next slice to `out` (until it holds at least `until`
    /// bytes, or the end); returns whether more follows.
    pub fn fill(&mut self, out: &mut Vec<u8>, until: usize) -> bool {
        while out.len() < until {
            let Some(part) = self.parts.front() else { return false };
            match part {
                Part::Text(text) => {
                    out.extend_from_slice(text);
                    self.parts.pop_front();
                }
                Part::Agents(family) => {
                    if self.agents.render(family, &mut self.cursor, out, until) {
                        self.parts.pop_front();
                        self.cursor = Cursor::default();
                    }
                }
            }
        }
        !self.parts.is_empty()
    }
}

/// Orders families as `prometheus::Registry::gather` does: by name, empty
/// ones dropped, each family's samples by their label values.
fn sort_like_registry(families: &mut Vec<MetricFamily>) {
    families.retain(|f| !f.get_metric().is_empty());
    families.sort_by(|a, b| a.name().cmp(b.name()));
    for f in families.iter_mut() {
        f.mut_metric().sort_by(|m1, m2| {
            let (l1, l2) = (m1.get_label(), m2.get_label());
            if l1.len() != l2.len() {
                return l1.len().cmp(&l2.len());
            }
            l1.iter()
                .zip(l2)
                .map(|(a, b)| a.value().cmp(b.value()))
                .find(|o| o.is_ne())
                .unwrap_or_else(|| m1.timestamp_ms().cmp(&m2.timestamp_ms()))
        });
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use prometheus::proto::{self, MetricType};
    use varta_agents::AttributeStore;
    use varta_agents::attributes::Resolved;
    use varta_pipeline::Role;
    use varta_processor::clock::Clock;
    use varta_processor::snapshot::Publisher;
    use varta_processor::tracker::{Slot, Tracker};
    use varta_processor::{AgentId, StatsSnapshot};
    use varta_proto::{Source, Transport};

    use crate::prometheus::agents::status_value;
    use crate::prometheus::families::{AgentSeries, VartaFamilies};
    use crate::prometheus::http::HttpStats;
    use crate::view::{CollectorView, LiveView, PipelineView};

    /// Values an agent controls, as hostile as the text format allows.
    const HOSTILE: [&str; 4] = ["quote\" } x=\"1", "back\\slash", "new\nline # TYPE", "plain"];

    /// A pipeline of `n` agents: every third stalled; local agents with
    /// hostile attributes, network ones without.
    fn pipeline(name: &str, n: u32) -> (PipelineView, Publisher) {
        let mut tracker = Tracker::new(n as usize + 1, &[1_000_000_000]);
        let store = Arc::new(AttributeStore::default());
        for pid in 1..=n {
            let source =
                if pid % 2 == 0 { Source::Local } else { Source::Ip("10.0.0.7".parse().expect("ip")) };
            let transport = if source == Source::Local { Transport::Uds } else { Transport::Udp };
            let idx = tracker
                .insert(
                    tracker.hash(&source, pid),
                    Slot::new(source, pid, 1000 + u64::from(pid), transport, 5, 0),
                )
                .expect("room");
            if pid % 3 == 0 {
                tracker.mark_stalled(idx);
            }
            if source == Source::Local {
                let v = HOSTILE[pid as usize % HOSTILE.len()];
                let r = Resolved {
                    start_time: 1000 + u64::from(pid),
                    executable_name: Some(format!("exe-{v}")),
                    service_name: (pid % 4 == 0).then(|| format!("svc-{v}")),
                    ..Resolved::default()
                };
                store.insert(AgentId { source, pid, start_time: 1000 + u64::from(pid) }, &r);
            }
        }
        let mut publisher = Publisher::new(1, Clock::Monotonic, &[1_000_000_000]);
        publisher.publish(10, &mut tracker, StatsSnapshot::default());
        let (_tx, rx) = varta_pipeline::queue::batch_queue(4);
        let view = PipelineView {
            name: name.into(),
            snapshots: publisher.reader(),
            queue: rx.depth(),
            attributes: Some(store),
        };
        (view, publisher)
    }

    pub fn families(pipelines: &[(&str, u32)], max_agents: usize) -> (VartaFamilies, Vec<Publisher>) {
        let mut view = CollectorView::default();
        let mut keep = Vec::new();
        for &(name, n) in pipelines {
            let (p, publisher) = pipeline(name, n);
            view.add_pipeline(p);
            keep.push(publisher);
        }
        let http = Arc::new(HttpStats::default());
        view.add(Role::Exporter, "prometheus", http.clone());
        let f = VartaFamilies::new(LiveView::new(view), AgentSeries { enabled: true, max_agents }, http);
        (f, keep)
    }

    /// The whole exposition, rendered in slices of `slice` bytes.
    pub fn render(f: &VartaFamilies, slice: usize) -> String {
        let mut e = f.scrape().expect("scrape");
        let mut text = Vec::new();
        let mut slices = 0;
        loop {
            let start = text.len();
            let more = e.fill(&mut text, start + slice);
            slices += 1;
            if !more {
                break;
            }
        }
        assert!(slice > 10_000 || slices > 10, "small slices cut the scrape: {slices}");
        String::from_utf8(text).expect("utf-8")
    }

    /// Family name → its lines, in order of appearance.
    fn blocks(text: &str) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                out.push((rest.split(' ').next().unwrap_or("").to_owned(), Vec::new()));
            }
            out.last_mut().expect("a family first").1.push(line.to_owned());
        }
        out
    }

    /// Labels and value of one sample.
    type Series = (Vec<(String, String)>, f64);

    /// What the `prometheus` crate encodes for one per-agent family of the
    /// given agents (labels in the same order), sample lines only.
    fn crate_lines(name: &str, ty: MetricType, agents: &[Series]) -> Vec<String> {
        let mut f = MetricFamily::default();
        f.set_name(name.into());
        f.set_help("h".into());
        f.set_field_type(ty);
        for (labels, value) in agents {
            let mut m = proto::Metric::from_label(
                labels
                    .iter()
                    .map(|(k, v)| {
                        let mut l = proto::LabelPair::default();
                        l.set_name(k.clone());
                        l.set_value(v.clone());
                        l
                    })
                    .collect(),
            );
            if ty == MetricType::COUNTER {
                let mut c = proto::Counter::default();
                c.set_value(*value);
                m.set_counter(c);
            } else {
                let mut g = proto::Gauge::default();
                g.set_value(*value);
                m.set_gauge(g);
            }
            f.mut_metric().push(m);
        }
        let mut out = Vec::new();
        TextEncoder::new().encode(&[f], &mut out).expect("encode");
        String::from_utf8(out).expect("utf-8").lines().skip(2).map(str::to_owned).collect()
    }

    #[test]
    fn streamed_slices_make_the_same_exposition_as_the_prometheus_crate() {
        let (f, _keep) = families(&[("a", 40), ("b", 25)], 1_000);
        let whole = render(&f, 1 << 30);
        // (Only the uptime moves between two scrapes.)
        let steady = |t: &str| -> Vec<String> {
            t.lines().filter(|l| !l.starts_with("varta_watch_uptime_seconds ")).map(str::to_owned).collect()
        };
        assert!(steady(&render(&f, 200)) == steady(&whole), "slicing changes nothing");
        let blocks = blocks(&whole);
        let names: Vec<&str> = blocks.iter().map(|(n, _)| n.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(names, sorted, "families once each, in name order");
        // The reference: every agent, labelled as before, through the crate.
        let mut expect: BTreeMap<&str, Vec<Series>> = BTreeMap::new();
        for (pipeline, n) in [("a", 40u32), ("b", 25)] {
            for pid in 1..=n {
                let mut labels =
                    vec![("pipeline".to_owned(), pipeline.to_owned()), ("pid".into(), pid.to_string())];
                if pid % 2 == 1 {
                    labels.push(("source".into(), "10.0.0.7".into()));
                } else {
                    let v = HOSTILE[pid as usize % HOSTILE.len()];
                    labels.push(("exe".into(), format!("exe-{v}")));
                    if pid % 4 == 0 {
                        labels.push(("service".into(), format!("svc-{v}")));
                    }
                }
                let stalled = pid % 3 == 0;
                let status =
                    status_value(if stalled { varta_proto::Status::Stall } else { varta_proto::Status::Ok });
                expect.entry("varta_beats_total").or_default().push((labels.clone(), 0.0));
                expect.entry("varta_stalls_total").or_default().push((labels.clone(), 0.0));
                expect.entry("varta_status").or_default().push((labels, status));
            }
        }
        for (name, agents) in expect {
            let ty = if name == "varta_status" { MetricType::GAUGE } else { MetricType::COUNTER };
            let mut want = crate_lines(name, ty, &agents);
            let (_, lines) = blocks.iter().find(|(n, _)| n == name).expect(name);
            let mut got: Vec<String> = lines.iter().skip(2).cloned().collect();
            want.sort();
            got.sort();
            assert_eq!(got, want, "{name}");
        }
        assert!(whole.contains("\nvarta_prometheus_agents_omitted 0\n"), "{whole}");
    }

    #[test]
    fn at_most_max_agent_series_agents_stalled_first_and_the_rest_counted() {
        // 30 agents, 10 of them stalled; room for 12.
        let (f, _keep) = families(&[("a", 30)], 12);
        let text = render(&f, 100);
        let status: Vec<&str> = text.lines().filter(|l| l.starts_with("varta_status{")).collect();
        assert_eq!(status.len(), 12);
        assert!(status[..10].iter().all(|l| l.ends_with(" 3")), "stalled first: {status:?}");
        assert_eq!(text.lines().filter(|l| l.starts_with("varta_beats_total{")).count(), 12);
        assert!(text.contains("\nvarta_prometheus_agents_omitted 18\n"));
        let (off, _keep) = families(&[("a", 30)], 0);
        let text = render(&off, 1 << 30);
        assert!(!text.contains("varta_status"), "no empty per-agent family");
        assert!(text.contains("\nvarta_prometheus_agents_omitted 30\n"));
    }
}
