//! What a running component is, as far as a reload is concerned: two
//! configurations that give a component the same key let a reload keep it
//! running untouched (its socket, queue and state); a different key means
//! it is rebuilt. Receiver and exporter keys are their settings *by
//! value* — secrets included, which their `Debug` text hides, so a rotated
//! header must compare by value or the reload would keep the old one — plus
//! a digest of the contents of the files they name (TLS, bearer token), so
//! a reload re-reads a rotated certificate. Keys are never printed.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};
use varta_embed::compose::PipelinePlan;
use varta_processor::TrackerConfig;
use varta_receiver::VlpReceiverConfig;

use crate::config::{Config, ExporterConfig, Pipeline, ProcessorConfig, ReceiverConfig};

/// A receiver's settings without its key files: keys are swapped in place
/// (see [`crate::reload`]), anything else rebinds the socket.
pub fn receiver(c: &ReceiverConfig) -> VlpReceiverConfig {
    let ReceiverConfig::Vlp(cfg) = c;
    let mut cfg = cfg.clone();
    cfg.key_files = None;
    cfg.master_key_file = None;
    cfg
}

/// What an exporter is, for a reload: see the module doc.
#[derive(Debug, Clone, PartialEq)]
pub struct ExporterKey {
    settings: ExporterConfig,
    serves: Vec<(String, u64)>,
    files: [u8; 32],
}

/// Files a key digests are read up to this much (PEM bundles are far
/// smaller); what lies beyond does not take part in the comparison.
const MAX_DIGESTED_FILE: u64 = 4 << 20;

/// The pipelines a receiver feeds, in configuration order.
pub fn feeds(config: &Config, receiver: &str) -> Vec<String> {
    config
        .service
        .pipelines
        .iter()
        .filter(|(_, p)| p.value.receivers.iter().any(|r| r == receiver))
        .map(|(name, _)| name.clone())
        .collect()
}

/// An exporter's settings. `debug` and `otlp` exporters also read the
/// state of the pipelines they serve (agent attributes, snapshots), so
/// they are rebuilt when those pipelines or their state change
/// (`(name, generation)` of each, in order).
pub fn exporter(c: &ExporterConfig, serves: &[(&str, u64)]) -> ExporterKey {
    let serves = match c {
        ExporterConfig::Debug(_) | ExporterConfig::Otlp(_) => {
            serves.iter().map(|(name, generation)| ((*name).to_owned(), *generation)).collect()
        }
        _ => Vec::new(),
    };
    let files: Vec<&Path> = match c {
        ExporterConfig::Otlp(o) => [&o.tls.ca_file, &o.tls.cert_file, &o.tls.key_file]
            .into_iter()
            .flatten()
            .map(|p| p.as_path())
            .collect(),
        ExporterConfig::Prometheus(p) => p.bearer_token_file.iter().map(|p| p.as_path()).collect(),
        ExporterConfig::File(_) | ExporterConfig::Debug(_) => Vec::new(),
    };
    ExporterKey { settings: c.clone(), serves, files: digest(&files) }
}

/// One digest of the named files' contents (a file that cannot be read
/// contributes its error kind: the build that follows reports it).
fn digest(files: &[&Path]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for path in files {
        let mut contents = Vec::new();
        match std::fs::File::open(path).and_then(|f| f.take(MAX_DIGESTED_FILE).read_to_end(&mut contents)) {
            Ok(n) => {
                hash.update((n as u64).to_le_bytes());
                hash.update(&contents);
            }
            Err(e) => hash.update(format!("error {:?}", e.kind()).as_bytes()),
        }
        contents.iter_mut().for_each(|b| *b = 0);
    }
    hash.finalize().into()
}

/// One pipeline as configured: its processors resolved, its exporters.
pub fn plan(config: &Config, name: &str, p: &Pipeline) -> PipelinePlan {
    let mut plan = PipelinePlan {
        name: name.to_owned(),
        ratelimit: None,
        tracker: None,
        resolver: None,
        recovery: None,
        exporters: p.exporters.clone(),
        queue_batches: p.queue_batches,
    };
    // Plain UDP beside attested receivers: its agents get their share
    // of the tracker only (see `TrackerConfig::unauthenticated_share`).
    let plain_udp = |id: &String| {
        config.receivers.get(id).is_some_and(|c| {
            let ReceiverConfig::Vlp(r) = &c.config;
            r.transport == varta_receiver::TransportKind::Udp
        })
    };
    let shared_with_attested =
        p.receivers.iter().any(plain_udp) && p.receivers.iter().any(|id| !plain_udp(id));
    for id in &p.processors {
        match config.processors.get(id).map(|c| &c.config) {
            Some(ProcessorConfig::RateLimit(cfg)) => plan.ratelimit = Some(*cfg),
            Some(ProcessorConfig::Tracker(cfg)) => {
                plan.tracker = Some(TrackerConfig { shared_with_attested, ..cfg.clone() })
            }
            Some(ProcessorConfig::Resolver(cfg)) => plan.resolver = Some((id.clone(), *cfg)),
            Some(ProcessorConfig::Recovery(cfg)) => plan.recovery = Some((id.clone(), (**cfg).clone())),
            None => {}
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Config {
        Config::parse(yaml, "test.yaml", |_| None).unwrap_or_else(|e| panic!("{e}"))
    }

    const BASE: &str = "
receivers:
  vlp/a: { transport: udp, endpoint: 127.0.0.1:0, accept_unauthenticated: true }
  vlp/b: { transport: secure_udp, endpoint: 127.0.0.1:0, key_files: [k1] }
processors:
  tracker: { threshold: 2s }
  tracker/2: { threshold: 5s }
  resolver: {}
exporters:
  debug: {}
  file: { path: /tmp/x.tsv }
service:
  pipelines:
    one: { receivers: [vlp/a, vlp/b], processors: [tracker, resolver], exporters: [debug, file] }
    two: { receivers: [vlp/a], processors: [tracker/2], exporters: [file] }
";

    #[test]
    fn receiver_key_ignores_key_files_only() {
        let a = parse(BASE);
        let b = parse(&BASE.replace("key_files: [k1]", "key_files: [k2, k3]"));
        let c =
            parse(&BASE.replace("secure_udp, endpoint: 127.0.0.1:0", "secure_udp, endpoint: 127.0.0.1:1"));
        let key = |c: &Config| receiver(&c.receivers.get("vlp/b").unwrap().config);
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&c));
    }

    #[test]
    fn feeds_lists_pipelines_in_order() {
        let c = parse(BASE);
        assert_eq!(feeds(&c, "vlp/a"), ["one", "two"]);
        assert_eq!(feeds(&c, "vlp/b"), ["one"]);
        assert!(feeds(&c, "vlp/none").is_empty());
    }

    #[test]
    fn pipeline_keys_separate_tracker_from_helpers() {
        let a = parse(BASE);
        let plan = |c: &Config, n: &str| plan(c, n, &c.service.pipelines[n].value);
        let threshold = parse(&BASE.replace("threshold: 2s", "threshold: 3s"));
        assert_eq!(plan(&a, "one").processor_key(), plan(&threshold, "one").processor_key());
        assert_ne!(plan(&a, "one").thresholds_key(), plan(&threshold, "one").thresholds_key());
        let capacity = parse(&BASE.replace("threshold: 2s", "threshold: 2s, capacity: 9"));
        assert_ne!(plan(&a, "one").processor_key(), plan(&capacity, "one").processor_key());
        assert_eq!(plan(&a, "one").thresholds_key(), plan(&capacity, "one").thresholds_key());
        let resolver = parse(&BASE.replace("resolver: {}", "resolver: { queue_size: 7 }"));
        assert_eq!(plan(&a, "one").processor_key(), plan(&resolver, "one").processor_key());
        assert_ne!(plan(&a, "one").resolver_key(), plan(&resolver, "one").resolver_key());
        // The recovery runner reads the resolver's attributes: rebuilt with it.
        assert_ne!(plan(&a, "one").recovery_key(), plan(&resolver, "one").recovery_key());
        assert_eq!(plan(&a, "two").recovery_key(), plan(&resolver, "two").recovery_key());
    }

    #[test]
    fn state_reading_exporters_follow_their_pipeline() {
        let c = parse(BASE);
        let debug = &c.exporters.get("debug").unwrap().config;
        let file = &c.exporters.get("file").unwrap().config;
        assert_ne!(exporter(debug, &[("one", 1)]), exporter(debug, &[("one", 2)]));
        assert_ne!(exporter(debug, &[("one", 1)]), exporter(debug, &[("one", 1), ("two", 3)]));
        assert_eq!(exporter(file, &[("one", 1)]), exporter(file, &[("one", 2), ("two", 3)]));
    }

    /// Header values are secrets their `Debug` text hides: a rotated API
    /// key once compared equal and the old one stayed in use.
    #[test]
    fn a_header_value_change_rebuilds_the_exporter() {
        let otlp = |key: &str| {
            let yaml = BASE.replace(
                "debug: {}",
                &format!("debug: {{}}\n  otlphttp: {{ endpoint: http://127.0.0.1:4318, headers: {{ x-api-key: {key} }} }}"),
            );
            let c = parse(&yaml);
            exporter(&c.exporters.get("otlphttp").unwrap().config, &[])
        };
        assert_eq!(otlp("old"), otlp("old"));
        assert_ne!(otlp("old"), otlp("new"));
    }

    /// The contents of TLS and token files are part of the key, so a reload
    /// re-reads a rotated certificate or token kept at the same path.
    #[test]
    fn a_rewritten_tls_file_rebuilds_the_exporter() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "first").unwrap();
        let yaml = BASE.replace(
            "debug: {}",
            &format!(
                "debug: {{}}\n  otlp: {{ endpoint: 127.0.0.1:4317, tls: {{ ca_file: {} }} }}",
                ca.display()
            ),
        );
        let c = parse(&yaml);
        let key = || exporter(&c.exporters.get("otlp").unwrap().config, &[]);
        let before = key();
        assert_eq!(before, key());
        std::fs::write(&ca, "second").unwrap();
        assert_ne!(before, key());
    }
}
