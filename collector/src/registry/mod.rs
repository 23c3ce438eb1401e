//! Every component kind this build knows, and everything the collector
//! knows about each: its type name and aliases, its default settings, its
//! own checks (naming the field at fault), what it reads from disk, how it
//! is built, and whether a running instance can take new settings in place
//! (compared by value, secrets included). Config loading, pipeline
//! planning and reload ask the registry and never switch on a component
//! type themselves; adding a kind touches this folder only.
//!
//! One file per family: [`receivers`], [`processors`], [`exporters`],
//! [`extensions`]. Each holds the family's settings enum, its factories
//! (one per kind) and the family's dispatch.

pub mod exporters;
pub mod extensions;
pub mod processors;
pub mod receivers;

pub use exporters::ExporterConfig;
pub use extensions::ExtensionConfig;
pub use processors::ProcessorConfig;
pub use receivers::ReceiverConfig;

use crate::config::components::ComponentFamily;

/// One component kind.
#[derive(Debug)]
pub struct Factory {
    /// The type name in a component id (`type/name`).
    pub kind: &'static str,
    /// Other names it answers to (older or Collector spellings).
    pub aliases: &'static [&'static str],
}

// A kind's default settings are its settings type's `Default`, which
// `kind:` with nothing after it means; its `validate` then judges them (a
// `file` exporter still needs a `path`). Kinds with a setting that has no
// default (a receiver's `transport`, a recovery runner's `exec`) refuse an
// empty body while parsing.

/// The type names a family answers to: every kind, then every alias (the
/// order `varta-collector components` prints).
pub fn names(factories: &[Factory]) -> Vec<&'static str> {
    let kinds = factories.iter().map(|f| f.kind);
    kinds.chain(factories.iter().flat_map(|f| f.aliases.iter().copied())).collect()
}

/// The factory answering to `name` (a kind or an alias).
pub fn find<'f>(factories: &'f [Factory], name: &str) -> Option<&'f Factory> {
    factories.iter().find(|f| f.kind == name || f.aliases.contains(&name))
}

/// What `varta-collector components` prints.
pub fn components_listing() -> String {
    format!(
        "receivers:\n  {}\nprocessors:\n  {}\nexporters:\n  {}\nextensions:\n  {}\n",
        ReceiverConfig::types().join("\n  "),
        ProcessorConfig::types().join("\n  "),
        ExporterConfig::types().join("\n  "),
        ExtensionConfig::types().join("\n  ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// The listing is part of the interface (scripts read it): unchanged by
    /// the reshaping (issue 28); `file_storage` came with restart state.
    #[test]
    fn the_listing_is_unchanged() {
        assert_eq!(
            components_listing(),
            "receivers:\n  vlp\nprocessors:\n  ratelimit\n  tracker\n  resolver\n  recovery\nexporters:\n  file\n  debug\n  prometheus\n  otlp_grpc\n  otlp_http\n  otlp\n  otlphttp\nextensions:\n  health_check\n  file_storage\n"
        );
    }

    /// `kind/x:` with nothing after it, in `section`, beside a minimal pipeline.
    fn with_empty(section: &str, kind: &str) -> Result<Config, crate::config::ConfigError> {
        let mut text = String::from(
            "receivers:\n  vlp: { transport: uds, path: /tmp/r.sock }\nprocessors:\n  tracker:\nexporters:\n  debug:\nservice:\n  pipelines:\n    p: { receivers: [vlp], processors: [tracker], exporters: [debug] }\n",
        );
        if section == "extensions" {
            text.insert_str(0, "extensions:\n");
        }
        let at = text.find(&format!("{section}:\n")).expect("section") + section.len() + 2;
        text.insert_str(at, &format!("  {kind}/x:\n"));
        Config::parse(&text, "t.yaml", |_| None)
    }

    /// The kinds with a setting that has no default refuse an empty body;
    /// the kinds whose defaults are complete take them.
    #[test]
    fn required_kinds_refuse_an_empty_body_and_complete_defaults_parse() {
        let families: [(&str, &[Factory]); 4] = [
            ("receivers", receivers::FACTORIES),
            ("processors", processors::FACTORIES),
            ("exporters", exporters::FACTORIES),
            ("extensions", extensions::FACTORIES),
        ];
        let required = ["vlp", "recovery"];
        // (`prometheus` alone is refused by its check: no anonymous metrics by default.)
        let complete = ["ratelimit", "tracker", "resolver", "debug", "health_check"];
        let mut seen = 0;
        for (section, factories) in families {
            for f in factories {
                let parsed = with_empty(section, f.kind);
                if required.contains(&f.kind) {
                    assert!(parsed.is_err(), "{section}::{} without settings must be refused", f.kind);
                    seen += 1;
                } else if complete.contains(&f.kind) {
                    parsed.unwrap_or_else(|e| panic!("{section}::{}: {e}", f.kind));
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, 7, "vlp and recovery required, five complete");
    }
}
