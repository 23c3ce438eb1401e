//! The README's component metrics table names every metric the components
//! report: the table is checked against the metric statics themselves, so
//! a new counter cannot go undocumented (nor a removed one stay).

use varta_pipeline::{Instrumented, Metric, Sample};

/// Every component metric, from the components' own statics and samples.
fn every_metric() -> Vec<&'static Metric> {
    let mut out: Vec<&'static Metric> = Vec::new();
    let mut add = |s: Sample| out.push(s.metric);
    varta_processor::ProcessorStats::new().snapshot().samples(&mut add);
    varta_processor::recovery::RecoveryStats::default().samples(&mut add);
    varta_agents::ResolverStats::default().samples(&mut add);
    varta_receiver::ReceiverStats::default().samples(&mut add);
    varta_exporters::otlp::stats::OtlpStats::default().samples(&mut add);
    varta_exporters::httpd::ConnectionStats::default().samples(&mut add);
    {
        use varta_exporters::queue::metric::*;
        for m in [
            &QUEUED,
            &DROPPED,
            &INCIDENTS_DROPPED,
            &NOTICES_DROPPED,
            &EXPORTED,
            &FAILED,
            &QUEUE_DEPTH,
            &QUEUE_CAPACITY,
        ] {
            out.push(m);
        }
    }
    {
        use varta_exporters::prometheus::http::metric::*;
        out.extend([&REQUESTS, &SCRAPE_FAILURES]);
    }
    {
        use varta_exporters::view::metric::*;
        out.extend([&QUEUE_DEPTH, &QUEUE_CAPACITY, &SNAPSHOT_SEQ]);
    }
    out.sort_by_key(|m| m.name);
    out.dedup_by_key(|m| m.name);
    out
}

#[test]
fn the_readme_documents_every_component_metric() {
    let readme = include_str!("../../README.md");
    let start = readme.find("### Component metrics").expect("the README's component metrics section");
    let section = &readme[start..];
    let section = &section[..section[4..].find("\n## ").map_or(section.len(), |e| e + 4)];
    let missing: Vec<&str> = every_metric()
        .iter()
        .map(|m| m.name)
        .filter(|name| !section.contains(&format!("`{name}`")))
        .collect();
    assert!(missing.is_empty(), "README's *Component metrics* does not name: {missing:?}");
}
