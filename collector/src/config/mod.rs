//! The collector's configuration, in OpenTelemetry Collector form:
//!
//! ```yaml
//! receivers:  { vlp/uds: { transport: uds, path: /run/varta.sock } }
//! processors: { ratelimit: {}, tracker: { threshold: 2s } }
//! exporters:  { file: { path: /var/log/varta/events.tsv } }
//! service:
//!   pipelines:
//!     liveness: { receivers: [vlp/uds], processors: [ratelimit, tracker], exporters: [file] }
//! ```
//!
//! Loading is: read file → `${env:VAR}` substitution → YAML parse (unknown
//! keys and types are errors with line:column) → semantic checks (each
//! component's own `validate`, pipeline wiring). Every error names the file,
//! a position where one is known, and the component id. For several
//! `--config` files or `--set`s, the file (or `--set`) and position are
//! those of the source that supplied the offending value (see `provenance`).

mod checks;
pub mod components;
pub mod env;
mod fd_budget;
mod merge;
mod provenance;
mod service;

pub use merge::Origin;
pub use service::{LogFormat, Logs, Pipeline, Service};

use std::fmt;

use serde::Deserialize;

pub use crate::registry::{ExporterConfig, ExtensionConfig, ProcessorConfig, ReceiverConfig};
use components::{Component, ComponentId, Components, Position};

/// The configuration used when `--config` is not given; also shipped as
/// `otel-config/varta.yaml`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../otel-config/varta.yaml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub receivers: Components<ReceiverConfig>,
    #[serde(default)]
    pub processors: Components<ProcessorConfig>,
    #[serde(default)]
    pub exporters: Components<ExporterConfig>,
    #[serde(default)]
    pub extensions: Components<ExtensionConfig>,
    pub service: Service,
    #[serde(skip)]
    pub source: String,
    /// Where it was read from (a reload reads the same again).
    #[serde(skip)]
    pub origin: Origin,
    /// For a merged configuration: which source supplied each value, so
    /// errors name it.
    #[serde(skip)]
    provenance: Option<provenance::Provenance>,
    /// Values read from the environment that were ignored (logged at start).
    #[serde(skip)]
    pub env_warnings: Vec<String>,
}

/// A configuration problem: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub source: String,
    pub at: Option<Position>,
    pub component: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)?;
        if let Some(at) = self.at {
            write!(f, ":{}:{}", at.line, at.column)?;
        }
        f.write_str(": ")?;
        if let Some(c) = &self.component {
            write!(f, "{c}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads, merges and checks the configuration `origin` names.
    pub fn load(origin: &Origin) -> Result<Config, ConfigError> {
        let env = |k: &str| std::env::var(k).ok();
        let mut config = match origin.files.as_slice() {
            [] if origin.is_single() => Config::parse(EMBEDDED_DEFAULT, &origin.describe(), env)?,
            [path] if origin.is_single() => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                    source: origin.describe(),
                    at: None,
                    component: None,
                    message: format!("cannot read config file: {e}"),
                })?;
                Config::parse(&text, &origin.describe(), env)?
            }
            _ => {
                let merged = origin.merged()?;
                Config::parse_traced(&merged.text, &origin.describe(), env, merged.provenance)?
            }
        };
        if origin.files.is_empty() {
            config.add_otel_env_exporter(env)?;
        }
        config.origin = origin.clone();
        Ok(config)
    }

    /// The embedded default configuration also exports over OTLP when the
    /// OpenTelemetry SDK variables name an endpoint
    /// (`OTEL_EXPORTER_OTLP_ENDPOINT` …, see
    /// [`varta_exporters::otlp::env`]): an exporter `otlphttp/env` (or
    /// `otlp/env` over gRPC) is added to every pipeline — or, when the two
    /// signals' settings differ, `…/env_traces` and `…/env_metrics`. Only
    /// ever for the embedded default (with or without `--set` overrides): a
    /// configuration file always wins.
    fn add_otel_env_exporter(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let error = |message: String| ConfigError {
            source: self.source.clone(),
            at: None,
            component: Some("exporters::otlp/env".into()),
            message,
        };
        let found = varta_exporters::otlp::env::from_otel_env(env).map_err(|e| error(e.message))?;
        self.env_warnings = found.warnings;
        if found.exporters.is_empty() {
            return Ok(());
        }
        for exporter in found.exporters {
            let cfg = exporter.config;
            let id = ComponentId { kind: cfg.kind().to_owned(), name: Some(exporter.name.into()) };
            for p in self.service.pipelines.values_mut() {
                p.value.exporters.push(id.to_string());
            }
            self.exporters.0.push(Component {
                id,
                at: Position::default(),
                config: ExporterConfig::otlp(cfg),
            });
        }
        self.check()
    }

    /// Parses and checks config text; `source` names it in errors.
    pub fn parse(
        text: &str,
        source: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Config::parse_traced(text, source, lookup, None)
    }

    /// [`Config::parse`] of a merged text: errors name the source that
    /// supplied the value in question, as `provenance` tells (without it,
    /// they point into the merged text with a `print-config` hint).
    fn parse_traced(
        text: &str,
        source: &str,
        lookup: impl Fn(&str) -> Option<String>,
        provenance: Option<provenance::Provenance>,
    ) -> Result<Config, ConfigError> {
        // Parse errors are located once their message is final.
        let located = |e: ConfigError| match &provenance {
            Some(p) => p.locate(e, None),
            None => e,
        };
        let err = |at: Option<Position>, message: String| ConfigError {
            source: source.to_owned(),
            at,
            component: None,
            message,
        };
        let prepared = env::prepare(text, lookup).map_err(|e| {
            located(err(Some(Position { line: e.line as u64, column: e.column as u64 }), e.message))
        })?;
        let report = |e: serde_saphyr::Error| {
            let at = e.location().map(|l| Position { line: l.line(), column: l.column() });
            err(at, first_line(&e.to_string()))
        };
        // References are expanded inside scalars, after parsing (see `env`).
        let mut config: Config = match serde_saphyr::from_str_with_options(&prepared.text, prepared.options())
        {
            Ok(c) => c,
            // The parser hides interpolated values (and with them misspelt
            // keys) in its errors: word the error from the plain text.
            Err(e) => match serde_saphyr::from_str::<Config>(&prepared.plain) {
                Err(plain) => {
                    let mut e = report(plain);
                    // Never echo a substituted value (it may be a secret).
                    for value in prepared.properties.values().filter(|v| v.len() >= 3) {
                        e.message = e.message.replace(value.as_str(), "<redacted>");
                    }
                    // A value holding a line break moves the plain text's
                    // lines: its position names no source reliably.
                    if provenance.is_some() && prepared.properties.values().any(|v| v.contains(['\n', '\r']))
                    {
                        return Err(provenance::in_merged_document(e));
                    }
                    return Err(located(e));
                }
                // Only as a whole scalar is the value wrong: say so plainly.
                Ok(_) => {
                    let mut e = report(e);
                    e.message = "the environment value substituted here is not valid for this field \
                                 (a value is always one scalar: it cannot add keys or structure)"
                        .into();
                    return Err(located(e));
                }
            },
        };
        config.source = source.to_owned();
        config.provenance = provenance;
        config.check()?;
        Ok(config)
    }

    /// An error about this configuration; for a merged one, naming the
    /// source that supplied the value at `at` (or the component).
    pub fn error(&self, at: Option<Position>, component: Option<String>, message: String) -> ConfigError {
        self.error_on(&[], at, component, message)
    }

    /// [`Config::error`] about the value at key path `path` (e.g. one id in
    /// a pipeline's list), which names the source more precisely than the
    /// position of the whole component.
    pub(super) fn error_on(
        &self,
        path: &[&str],
        at: Option<Position>,
        component: Option<String>,
        message: String,
    ) -> ConfigError {
        let e = ConfigError { source: self.source.clone(), at, component, message };
        let Some(p) = &self.provenance else { return e };
        let path: Vec<String> = path.iter().map(|k| (*k).to_owned()).collect();
        p.locate(e, (!path.is_empty()).then_some(path.as_slice()))
    }

    /// Where a config came from, for messages.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }
}

pub use crate::registry::components_listing;

/// serde-saphyr renders a source snippet after the first line; the first
/// line is the message, and the position is reported separately.
fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or(s).trim();
    let line = line.strip_prefix("error: ").unwrap_or(line);
    // Drop serde-saphyr's own "line L column C: " prefix; we print the position.
    match line.strip_prefix("line ").and_then(|rest| rest.split_once(": ")) {
        Some((pos, msg)) if pos.contains(" column ") => msg.to_owned(),
        _ => line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use varta_exporters::otlp::config::Protocol;

    const GOOD: &str = r#"receivers:
  vlp/uds:
    transport: uds
    path: /tmp/varta-test.sock
processors:
  ratelimit: {}
  tracker:
    threshold: ${env:THRESHOLD:-2s}
exporters:
  debug:
service:
  pipelines:
    liveness:
      receivers: [vlp/uds]
      processors: [ratelimit, tracker]
      exporters: [debug]
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "t.yaml", |k| (k == "THRESHOLD").then(|| "150ms".to_owned()))
    }

    fn error(text: &str) -> String {
        parse(text).expect_err("config must be refused").to_string()
    }

    #[test]
    fn good_config_and_embedded_default_parse() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.receivers.0.len(), 1);
        assert_eq!(c.service.pipelines.len(), 1);
        assert!(c.unused_components().is_empty());
        let d = Config::parse(EMBEDDED_DEFAULT, "default", |_| None).expect("embedded default is valid");
        assert_eq!(d.receivers.0[0].id.to_string(), "vlp/uds");
    }

    #[test]
    fn unknown_keys_types_and_ids_have_positions() {
        let e = error(&GOOD.replace("    threshold:", "    treshold:"));
        assert!(e.starts_with("t.yaml:8:5: ") && e.contains("treshold"), "{e}");
        let e = error(&GOOD.replace("  debug:", "  kafka/x:"));
        assert!(e.contains("t.yaml:10:") && e.contains("unknown exporter type `kafka`"), "{e}");
        let e = error(&GOOD.replace("service:", "servce:"));
        assert!(e.contains("t.yaml:11:1") && e.contains("servce"), "{e}");
    }

    #[test]
    fn threshold_rules_are_checked_with_positions() {
        let with = |rules: &str| {
            GOOD.replace("    threshold: ${env:THRESHOLD:-2s}\n", &format!("    thresholds:\n{rules}"))
        };
        let good = parse(&with("      - { match: { service.name: \"batch-*\" }, threshold: 10m }\n"))
            .expect("valid rule");
        assert!(
            matches!(good.processors.get("tracker").map(|c| &c.config), Some(ProcessorConfig::Tracker(t)) if t.thresholds.len() == 1)
        );
        let e = error(&with("      - { match: { servce.name: x }, threshold: 1s }\n"));
        assert!(e.starts_with("t.yaml:9:20: ") && e.contains("servce.name"), "{e}");
        let e = error(&with("      - { match: { source: 10.0.0.0/33 }, threshold: 1s }\n"));
        assert!(e.starts_with("t.yaml:9:28: ") && e.contains("prefix length"), "{e}");
        let e = error(&with("      - { match: { container.id: \"a[0-9]\" }, threshold: 1s }\n"));
        assert!(e.starts_with("t.yaml:9:34: ") && e.contains("only `*` and `?`"), "{e}");
        let e = error(&with("      - { match: { transport: tcp }, threshold: 1s }\n"));
        assert!(e.starts_with("t.yaml:9:31: ") && e.contains("unknown transport"), "{e}");
        // Semantic checks (validate) point at `thresholds` and name the rule.
        let e = error(&with("      - { match: { transport: udp }, threshold: 5ms }\n"));
        assert!(e.starts_with("t.yaml:8:5: ") && e.contains("tracker.thresholds[0].threshold"), "{e}");
        let e = error(&with("      - { match: {}, threshold: 5s }\n"));
        assert!(e.contains("tracker.thresholds[0].match") && e.contains("at least one key"), "{e}");
    }

    #[test]
    fn pipeline_wiring_is_checked() {
        let e = error(&GOOD.replace("exporters: [debug]", "exporters: [file]"));
        assert!(e.contains("service::pipelines::liveness") && e.contains("`file` is not defined"), "{e}");
        let e = error(&GOOD.replace("processors: [ratelimit, tracker]", "processors: [tracker, ratelimit]"));
        assert!(e.contains("rate limiting happens before tracking"), "{e}");
        let e = error(&GOOD.replace("processors: [ratelimit, tracker]", "processors: []"));
        assert!(e.contains("processors must be"), "{e}");
        let two = format!(
            "{GOOD}    second:\n      receivers: [vlp/uds]\n      processors: [tracker]\n      exporters: [debug]\n"
        );
        let e = error(&two);
        assert!(e.contains("processors `tracker` is already used by pipeline `liveness`"), "{e}");
    }

    #[test]
    fn receivers_and_exporters_serve_several_pipelines() {
        let two = |exporter: &str| {
            format!(
                "{GOOD}    second:\n      receivers: [vlp/two]\n      processors: [tracker/two]\n      exporters: [{exporter}]\n"
            )
            .replace("processors:\n  ratelimit: {}", "processors:\n  tracker/two: { threshold: 1s }\n  ratelimit: {}")
            .replace("receivers:\n", "receivers:\n  vlp/two: { transport: uds, path: /tmp/two.sock }\n")
            .replace("exporters:\n  debug:\n", "exporters:\n  debug:\n  file: { path: /tmp/e.tsv }\n")
            .replace("exporters: [debug]\n    second", "exporters: [debug, file]\n    second")
        };
        parse(&two("file")).expect("a file exporter may serve both pipelines");
        parse(&two("file").replace("receivers: [vlp/two]", "receivers: [vlp/uds, vlp/two]"))
            .expect("a receiver may feed both pipelines");
        parse(&two("debug")).expect("a debug exporter may serve both pipelines");
    }

    #[test]
    fn an_environment_value_cannot_inject_configuration() {
        // A value that would add a key if pasted into the text stays one
        // scalar: here an invalid duration, refused as such.
        let evil = |k: &str| (k == "THRESHOLD").then(|| "2s\n    capacity: 1".to_owned());
        let e = Config::parse(GOOD, "t.yaml", evil).expect_err("not a duration").to_string();
        assert!(e.contains("t.yaml:8:") && e.contains("environment value") && !e.contains("capacity"), "{e}");
        let ok = |k: &str| (k == "THRESHOLD").then(|| "3s".to_owned());
        let c = Config::parse(GOOD, "t.yaml", ok).expect("valid");
        let ProcessorConfig::Tracker(t) = &c.processors.get("tracker").expect("tracker").config else {
            panic!("tracker expected")
        };
        assert_eq!(t.threshold, std::time::Duration::from_secs(3));
    }

    #[test]
    fn component_validation_names_the_component() {
        let e = error(&GOOD.replace("${env:THRESHOLD:-2s}", "1ms"));
        assert!(e.contains("processors::tracker") && e.contains("threshold"), "{e}");
        let e = error(&GOOD.replace("transport: uds", "transport: udp"));
        assert!(e.contains("receivers::vlp/uds"), "{e}");
    }

    #[test]
    fn otlp_exporter_is_configured_and_checked() {
        let otlp = |body: &str| {
            GOOD.replace("  debug:\n", &format!("  otlp:\n{body}"))
                .replace("exporters: [debug]", "exporters: [otlp]")
        };
        let c = parse(&otlp("    endpoint: http://127.0.0.1:4317\n    headers: { x-api-key: k }\n"))
            .expect("valid");
        assert!(matches!(c.exporters.0[0].config, ExporterConfig::Otlp(_)));
        // The Collector's own form: host:port (TLS), or plaintext when insecure.
        parse(&otlp("    endpoint: 127.0.0.1:4317\n    tls: { insecure: true }\n")).expect("host:port form");
        let e = error(&otlp("    endpoint: grpc://127.0.0.1:4317\n"));
        assert!(e.contains("exporters::otlp") && e.contains("`endpoint`") && e.contains("http"), "{e}");
        let e = error(&otlp("    endpoint: http://a:1\n    encoding: json\n"));
        assert!(e.contains("`encoding`") && e.contains("otlphttp"), "{e}");
        // `otlphttp` is the same exporter over OTLP/HTTP.
        let http = GOOD
            .replace("  debug:\n", "  otlphttp:\n    endpoint: http://127.0.0.1:4318\n    encoding: json\n")
            .replace("exporters: [debug]", "exporters: [otlphttp]");
        let c = parse(&http).expect("otlphttp");
        let ExporterConfig::Otlp(cfg) = &c.exporters.0[0].config else { panic!("otlp config") };
        assert_eq!(cfg.protocol, Protocol::Http);
        let e = error(&http.replace("http://127.0.0.1:4318", "127.0.0.1:4318"));
        assert!(e.contains("exporters::otlphttp") && e.contains("`endpoint`"), "{e}");
        let e = error(&otlp("    endpoint: http://a:1\n    metrics: { intervall: 1s }\n"));
        assert!(e.contains("t.yaml:") && e.contains("intervall"), "{e}");
        let e = error(&otlp(""));
        assert!(e.contains("`endpoint`: is required"), "{e}");
        assert!(components_listing().contains("otlp") && components_listing().contains("otlphttp"));
        // The Collector's current names, as in our own gateway config.
        for (kind, protocol) in [("otlp_grpc", Protocol::Grpc), ("otlp_http", Protocol::Http)] {
            let text = GOOD
                .replace("  debug:\n", &format!("  {kind}/backend:\n    endpoint: http://127.0.0.1:4318\n"))
                .replace("exporters: [debug]", &format!("exporters: [{kind}/backend]"));
            let c = parse(&text).unwrap_or_else(|e| panic!("{kind}: {e}"));
            let ExporterConfig::Otlp(cfg) = &c.exporters.0[0].config else { panic!("otlp config") };
            assert_eq!(cfg.protocol, protocol, "{kind}");
            assert!(components_listing().contains(kind));
        }
    }

    #[test]
    fn env_errors_have_positions() {
        let e = Config::parse(&GOOD.replace(":-2s", ""), "t.yaml", |_| None).expect_err("unset");
        assert_eq!(e.at.map(|p| p.line), Some(8));
        assert!(e.message.contains("THRESHOLD is not set"));
    }

    #[test]
    fn logs_encoding_is_the_opentelemetry_spelling_of_format() {
        let with =
            |logs: &str| GOOD.replace("service:\n", &format!("service:\n  telemetry:\n    logs: {logs}\n"));
        for (logs, want) in [
            ("{ encoding: json }", LogFormat::Json),
            ("{ encoding: console }", LogFormat::Text),
            ("{ format: text }", LogFormat::Text),
            ("{ format: json }", LogFormat::Json),
        ] {
            let c = parse(&with(logs)).unwrap_or_else(|e| panic!("{logs}: {e}"));
            assert_eq!(c.service.telemetry.logs.format, want, "{logs}");
        }
        let e = error(&with("{ encoding: yaml }"));
        assert!(e.starts_with("t.yaml:13:") && e.contains("yaml"), "{e}");
        let e = error(&with("{ format: json, encoding: json }"));
        assert!(e.starts_with("t.yaml:13:") && e.contains("duplicate"), "{e}");
    }

    #[test]
    fn unused_components_are_listed() {
        let c = parse(&GOOD.replace("  debug:\n", "  debug:\n  debug/spare:\n")).expect("valid");
        assert_eq!(c.unused_components(), vec!["exporters::debug/spare".to_owned()]);
    }

    /// Loads GOOD merged with `second` and `sets` (THRESHOLD unset; SECRET
    /// and LINES set); the error, and the second file's name.
    fn merged_error(second: &str, sets: &[&str]) -> (String, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = ["one.yaml", "two.yaml"].map(|name| dir.path().join(name));
        std::fs::write(&files[0], GOOD).expect("write");
        std::fs::write(&files[1], second).expect("write");
        let origin = Origin { files: files.to_vec(), sets: sets.iter().map(|s| (*s).to_owned()).collect() };
        let merged = origin.merged().expect("merged");
        let lookup = |k: &str| match k {
            "SECRET" => Some("hunter2-secret".to_owned()),
            "LINES" => Some("5\n    clock: x".to_owned()),
            _ => None,
        };
        let e = Config::parse_traced(&merged.text, &origin.describe(), lookup, merged.provenance)
            .expect_err("config must be refused");
        (e.to_string(), files[1].display().to_string())
    }

    #[test]
    fn merged_errors_name_the_file_and_line_that_supplied_the_value() {
        let tracker = |line: &str| format!("processors:\n  tracker:\n    {line}\n");
        let (e, two) = merged_error(&tracker("treshold: 3s"), &[]);
        assert!(e.starts_with(&format!("{two}:3:5: ")) && e.contains("treshold"), "{e}");
        assert!(!e.contains("merged document"), "{e}");
        let (e, two) = merged_error(&tracker("threshold: soon"), &[]);
        assert!(e.starts_with(&format!("{two}:3:16: ")) && e.contains("soon"), "{e}");
        // An exporter id a pipeline names but nothing defines: the list item.
        let (e, two) =
            merged_error("service:\n  pipelines:\n    liveness:\n      exporters: [debug, file]\n", &[]);
        assert!(e.starts_with(&format!("{two}:4:26: service::pipelines::liveness: exporters `file`")), "{e}");
        let (e, two) = merged_error("\nservice:\n  extensions: [health_check]\n", &[]);
        assert!(e.starts_with(&format!("{two}:3:16: service::extensions: ")), "{e}");
    }

    #[test]
    fn merged_errors_name_the_set_that_supplied_the_value() {
        let (e, _) = merged_error("", &["processors::tracker::threshold=soon"]);
        assert!(e.starts_with("--set processors::tracker::threshold=soon: ") && e.contains("soon"), "{e}");
        let (e, _) = merged_error("", &["processors.tracker.treshold=3s"]);
        assert!(e.starts_with("--set processors.tracker.treshold=3s: ") && e.contains("treshold"), "{e}");
        // A component's own check that names the field: that field's source.
        let (e, _) = merged_error("", &["processors::tracker::threshold=1ms"]);
        assert!(
            e.starts_with("--set processors::tracker::threshold=1ms: processors::tracker: tracker.threshold"),
            "{e}"
        );
        let (e, _) = merged_error("", &["receivers::vlp/uds::transport=udp"]);
        assert!(e.contains("one.yaml:4:11: receivers::vlp/uds: `path` does not apply"), "{e}");
        // A field that is missing: the component, merged from a file and sets.
        let (e, _) = merged_error("", &["receivers::vlp/uds::transport=udp", "receivers::vlp/uds::path="]);
        assert!(e.contains("one.yaml:3:5: receivers::vlp/uds: `endpoint` is required"), "{e}");
        assert!(
            e.ends_with(
                "(merged with --set receivers::vlp/uds::transport=udp, --set receivers::vlp/uds::path=)"
            ),
            "{e}"
        );
    }

    #[test]
    fn merged_errors_never_echo_environment_values() {
        let tracker = |line: &str| format!("processors:\n  tracker:\n    {line}\n");
        for line in ["threshold: ${env:SECRET}", "treshold: ${env:SECRET}"] {
            let (e, two) = merged_error(&tracker(line), &[]);
            assert!(e.starts_with(&format!("{two}:3:")) && !e.contains("hunter2"), "{e}");
        }
        // An unset variable: the error's position is inside the value.
        let (e, two) = merged_error(&tracker("threshold: \"x${env:UNSET}\""), &[]);
        assert!(e.starts_with(&format!("{two}:3:16: ")) && e.contains("UNSET"), "{e}");
        // A value with a line break shifts the positions of the text the
        // message is worded from: no source is named rather than a wrong one.
        let (e, _) =
            merged_error(&format!("{}    capacity: ${{env:LINES}}\n", tracker("threshold: 2s")), &[]);
        assert!(e.starts_with("merged configuration (") && e.contains("the merged document"), "{e}");
    }

    /// The Collector's `confighttp` spells the header bound
    /// `read_header_timeout`; a copied block keeps working.
    #[test]
    fn read_header_timeout_is_the_header_timeout() {
        let c = parse(
            r#"receivers:
  vlp: { transport: uds, path: /tmp/v.sock }
processors:
  tracker: { threshold: 1s }
exporters:
  prometheus: { endpoint: "127.0.0.1:0", auth: none, read_header_timeout: 7s }
extensions:
  health_check: { endpoint: "127.0.0.1:0", read_header_timeout: 3s }
service:
  extensions: [health_check]
  pipelines:
    liveness: { receivers: [vlp], processors: [tracker], exporters: [prometheus] }
"#,
        )
        .expect("valid");
        let ExporterConfig::Prometheus(p) = &c.exporters.0[0].config else { panic!("prometheus") };
        assert_eq!(p.header_timeout, std::time::Duration::from_secs(7));
        let ExtensionConfig::HealthCheck(h) = &c.extensions.0[0].config else { panic!("health_check") };
        assert_eq!(h.header_timeout, std::time::Duration::from_secs(3));
    }
}
