//! Every metric a component reports is named in the *Metrics* section of
//! the README of the crate that owns it (`receiver/README.md`,
//! `processor/README.md`, `agents/README.md`, `exporters/README.md`,
//! `collector/README.md`, `embed/README.md`): the tables are checked against the metric
//! statics themselves, so a new counter cannot go undocumented.

use varta_pipeline::{Instrumented, Metric, Sample};

/// A crate's README and the metrics that crate owns.
struct Owner {
    readme_path: &'static str,
    readme: &'static str,
    metrics: Vec<&'static Metric>,
}

fn samples_of(stats: &dyn Instrumented) -> Vec<&'static Metric> {
    metrics_of(|out| stats.samples(out))
}

fn metrics_of(list: impl FnOnce(&mut dyn FnMut(Sample))) -> Vec<&'static Metric> {
    let mut out: Vec<&'static Metric> = Vec::new();
    list(&mut |s: Sample| out.push(s.metric));
    out
}

/// Every component metric, from the components' own statics and samples,
/// by the crate that owns it.
fn owners() -> Vec<Owner> {
    let mut processor = metrics_of(|out| varta_processor::ProcessorStats::new().snapshot().samples(out));
    processor.extend(samples_of(&varta_processor::recovery::RecoveryStats::default()));
    processor.extend(samples_of(&varta_embed::compose::storage::StorageStats::default()));

    let mut exporters = samples_of(&varta_exporters::otlp::stats::OtlpStats::default());
    exporters.extend(samples_of(&varta_exporters::httpd::ConnectionStats::default()));
    {
        use varta_exporters::queue::metric::*;
        exporters.extend([
            &QUEUED,
            &DROPPED,
            &INCIDENTS_DROPPED,
            &NOTICES_DROPPED,
            &EXPORTED,
            &FAILED,
            &QUEUE_DEPTH,
            &QUEUE_CAPACITY,
        ]);
    }
    {
        use varta_exporters::prometheus::http::metric::*;
        exporters.extend([&REQUESTS, &SCRAPE_FAILURES]);
    }
    {
        use varta_exporters::view::metric::*;
        exporters.extend([&QUEUE_DEPTH, &QUEUE_CAPACITY, &SNAPSHOT_SEQ]);
    }

    vec![
        Owner {
            readme_path: "receiver/README.md",
            readme: include_str!("../../receiver/README.md"),
            metrics: samples_of(&varta_receiver::ReceiverStats::default()),
        },
        Owner {
            readme_path: "processor/README.md",
            readme: include_str!("../../processor/README.md"),
            metrics: processor,
        },
        Owner {
            readme_path: "agents/README.md",
            readme: include_str!("../../agents/README.md"),
            metrics: samples_of(&varta_agents::ResolverStats::default()),
        },
        Owner {
            readme_path: "exporters/README.md",
            readme: include_str!("../../exporters/README.md"),
            metrics: exporters,
        },
        Owner {
            readme_path: "embed/README.md",
            readme: include_str!("../../embed/README.md"),
            metrics: {
                let mut embed = samples_of(&varta_embed::incident::CallbackStats::default());
                embed.extend(samples_of(&varta_embed::otel::spans::SpanStats::default()));
                embed
            },
        },
        Owner {
            readme_path: "collector/README.md",
            readme: include_str!("../README.md"),
            metrics: samples_of(&crate::reload_outcome::ReloadStats::default()),
        },
    ]
}

/// The README's `## Metrics` section, up to the next `## ` heading.
fn metrics_section<'a>(path: &str, readme: &'a str) -> &'a str {
    let start = readme.find("\n## Metrics\n").unwrap_or_else(|| panic!("{path} has no `## Metrics` section"));
    let section = &readme[start + 1..];
    &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)]
}

#[test]
fn each_crate_readme_documents_its_metrics() {
    let mut missing: Vec<String> = Vec::new();
    let mut checked = 0;
    for owner in owners() {
        assert!(!owner.metrics.is_empty(), "no metrics listed for {}", owner.readme_path);
        let section = metrics_section(owner.readme_path, owner.readme);
        for m in owner.metrics {
            checked += 1;
            if !section.contains(&format!("`{}`", m.name)) {
                missing.push(format!("{}: `{}`", owner.readme_path, m.name));
            }
        }
    }
    missing.sort();
    missing.dedup();
    assert!(checked > 80, "only {checked} metrics checked");
    assert!(missing.is_empty(), "not named in the README's *Metrics* section: {missing:?}");
}

#[test]
fn a_missing_metric_is_found() {
    static UNDOCUMENTED: Metric = Metric::counter("no_such_metric_documented", "test").unit("{test}");
    let readme = "# x\n\n## Metrics\n\n| `beats` | counter |\n\n## Other\n\n`no_such_metric_documented`\n";
    let section = metrics_section("test", readme);
    assert!(section.contains("`beats`"));
    assert!(!section.contains(&format!("`{}`", UNDOCUMENTED.name)), "{section:?}");
}

/// Every component metric names its unit: counts are annotations
/// (`{beat}`), never the bare `1` that backends read as a ratio (the
/// Collector's Prometheus translation would append `_ratio`).
#[test]
fn every_component_metric_has_a_unit() {
    let bare: Vec<String> = owners()
        .into_iter()
        .flat_map(|o| o.metrics)
        .filter(|m| m.unit == "1" || m.unit.is_empty())
        .map(|m| m.name.to_owned())
        .collect();
    assert!(bare.is_empty(), "metrics without a unit: {bare:?}");
}
