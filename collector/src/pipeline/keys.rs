//! What a running component is, as far as a reload is concerned: two
//! configurations that give a component the same key let a reload keep it
//! running untouched (its socket, queue and state); a different key means
//! it is rebuilt. The keys themselves — settings by value, secrets
//! included, plus a digest of the files they name — are the registry's
//! (each kind says what it can take in place); here they are put together
//! with the pipelines' wiring. Keys are never printed.

use varta_embed::compose::PipelinePlan;

use crate::config::{Config, Pipeline};
pub use crate::registry::exporters::ExporterKey;
use crate::registry::receivers::ReceiverConfig;

/// The state directory a receiver keeps its state in (its `storage`
/// extension's), if it keeps any.
pub fn state_dir(config: &Config, receiver: &ReceiverConfig) -> Option<std::path::PathBuf> {
    receiver.storage().and_then(|s| config.extensions.get(s)).and_then(|e| e.config.state_directory())
}

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
        storage: None,
    };
    // Unattested receivers (plain UDP) beside attested ones: their agents
    // get their share of the tracker only.
    let unattested = |id: &String| config.receivers.get(id).is_some_and(|c| c.config.unattested());
    let shared_with_attested =
        p.receivers.iter().any(unattested) && p.receivers.iter().any(|id| !unattested(id));
    for id in &p.processors {
        if let Some(c) = config.processors.get(id) {
            c.config.plan_into(id, &mut plan, shared_with_attested);
            if let Some((storage, interval)) = c.config.storage() {
                let directory = config.extensions.get(storage).and_then(|e| e.config.state_directory());
                plan.storage = directory.map(|directory| varta_embed::compose::StorageSpec {
                    directory,
                    interval,
                    component: id.clone(),
                });
            }
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
        let key = |c: &Config| c.receivers.get("vlp/b").unwrap().config.reload_key(None);
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&c));
    }

    /// A secure receiver's `storage` compares by the directory: the same
    /// extension name with a new directory is a change (the sessions move).
    #[test]
    fn receiver_key_follows_its_state_directory() {
        let with = |dir: &str| {
            parse(
                &BASE
                    .replace("key_files: [k1] }", "key_files: [k1], storage: file_storage }")
                    .replace("service:\n", &format!("extensions:\n  file_storage: {{ directory: {dir} }}\nservice:\n  extensions: [file_storage]\n")),
            )
        };
        let key = |c: &Config| {
            let r = &c.receivers.get("vlp/b").unwrap().config;
            r.reload_key(state_dir(c, r).as_deref())
        };
        let (a, b) = (with("/tmp/state-a"), with("/tmp/state-b"));
        assert_eq!(state_dir(&a, &a.receivers.get("vlp/b").unwrap().config), Some("/tmp/state-a".into()));
        assert_ne!(key(&a), key(&b));
        assert_eq!(key(&a), key(&with("/tmp/state-a")));
        assert_ne!(key(&a), key(&parse(BASE)), "storage added or removed is a change too");
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
        assert_ne!(debug.reload_key(&[("one", 1)]), debug.reload_key(&[("one", 2)]));
        assert_ne!(debug.reload_key(&[("one", 1)]), debug.reload_key(&[("one", 1), ("two", 3)]));
        assert_eq!(file.reload_key(&[("one", 1)]), file.reload_key(&[("one", 2), ("two", 3)]));
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
            c.exporters.get("otlphttp").unwrap().config.reload_key(&[])
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
        let key = || c.exporters.get("otlp").unwrap().config.reload_key(&[]);
        let before = key();
        assert_eq!(before, key());
        std::fs::write(&ca, "second").unwrap();
        assert_ne!(before, key());
    }
}
