//! The OpenTelemetry SDK environment variables as exporter configurations:
//! what a newcomer's `OTEL_EXPORTER_OTLP_ENDPOINT=…` means when the
//! collector runs with its embedded default configuration — exactly as the
//! SDK environment specification says.
//!
//! Read, per signal (traces, metrics), the signal's own variable first,
//! else the general one, else the default:
//! `OTEL_EXPORTER_OTLP[_TRACES|_METRICS]_ENDPOINT` (a per-signal endpoint
//! is the full URL; the general one gets `/v1/traces` or `/v1/metrics`
//! over HTTP), `…_PROTOCOL` (`http/protobuf` by default, `http/json`,
//! `grpc`), `…_HEADERS` (`k=v,…`, percent-decoded; a signal's own list
//! replaces the general one, never merges into it, so one backend's key
//! never reaches the other), `…_TIMEOUT` (milliseconds), `…_COMPRESSION`
//! (`gzip`, `none`), `…_CERTIFICATE`, `…_CLIENT_CERTIFICATE`,
//! `…_CLIENT_KEY`, `…_INSECURE`. Also `OTEL_METRIC_EXPORT_INTERVAL` and
//! `OTEL_METRIC_EXPORT_TIMEOUT` (milliseconds), `OTEL_SDK_DISABLED=true`
//! (nothing is exported) and `OTEL_TRACES_EXPORTER` /
//! `OTEL_METRICS_EXPORTER` (`none` turns the signal off; `otlp` is the
//! default; anything else is warned about and ignored).
//!
//! Promises: a value from the environment only ever fills a field (it is
//! never parsed as configuration text, so it cannot add keys); an optional
//! value that does not parse is warned about (naming the variable, never
//! its content: headers are secrets) and its default used; an endpoint
//! that cannot work is an error naming the variable. The two signals share
//! one exporter when their settings agree, else each gets its own (see
//! [`EnvExporter::name`]). Each result is checked by the same
//! [`OtlpExporterConfig::validate`] as any configured exporter.

use std::path::PathBuf;
use std::time::Duration;

use super::config::{Compression, Encoding, Headers, OtlpConfigError, OtlpExporterConfig, Protocol};
use super::resource::parse_resource_attributes;

const PREFIX: &str = "OTEL_EXPORTER_OTLP_";

/// One exporter the environment asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvExporter {
    /// `env` when both signals share it, else `env_traces` / `env_metrics`.
    pub name: &'static str,
    pub config: OtlpExporterConfig,
}

/// What the environment asks for, and what in it was ignored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FromEnv {
    pub exporters: Vec<EnvExporter>,
    /// One line per ignored value (the variable and why, never the value).
    pub warnings: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    fn var(self) -> &'static str {
        match self {
            Signal::Traces => "TRACES",
            Signal::Metrics => "METRICS",
        }
    }
}

/// The exporters the environment asks for (none when no endpoint variable
/// is set, or `OTEL_SDK_DISABLED=true`). `env` looks a variable up.
pub fn from_otel_env(env: impl Fn(&str) -> Option<String>) -> Result<FromEnv, OtlpConfigError> {
    let raw = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let mut out = FromEnv::default();
    if raw("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(out);
    }
    let mut per_signal = Vec::new();
    for signal in [Signal::Traces, Signal::Metrics] {
        if let Some(config) = signal_config(signal, &raw, &mut out.warnings)? {
            per_signal.push((signal, config));
        }
    }
    out.exporters = match per_signal.as_slice() {
        [(_, traces), (_, metrics)] if same_but_signals(traces, metrics) => {
            let mut both = traces.clone();
            both.metrics = metrics.metrics;
            vec![EnvExporter { name: "env", config: both }]
        }
        [(_, only)] => vec![EnvExporter { name: "env", config: only.clone() }],
        _ => per_signal
            .into_iter()
            .map(|(signal, config)| EnvExporter {
                name: if signal == Signal::Traces { "env_traces" } else { "env_metrics" },
                config,
            })
            .collect(),
    };
    Ok(out)
}

/// Whether two single-signal configurations differ only in which signal
/// each sends.
fn same_but_signals(traces: &OtlpExporterConfig, metrics: &OtlpExporterConfig) -> bool {
    let mut t = traces.clone();
    t.metrics = metrics.metrics;
    t.traces = metrics.traces;
    // A per-signal endpoint is a full URL: over HTTP both may live in one
    // exporter through `traces_endpoint` / `metrics_endpoint`.
    t.traces_endpoint = metrics.traces_endpoint.clone();
    t.metrics_endpoint = metrics.metrics_endpoint.clone();
    t == *metrics && (traces.protocol == Protocol::Http || traces.endpoint == metrics.endpoint)
}

/// The exporter of one signal, if it is on and has an endpoint.
fn signal_config(
    signal: Signal,
    raw: &impl Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<Option<OtlpExporterConfig>, OtlpConfigError> {
    let s = signal.var();
    match raw(&format!("OTEL_{s}_EXPORTER")).map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("otlp") => {}
        Some("none") => return Ok(None),
        Some(_) => warnings.push(format!(
            "OTEL_{s}_EXPORTER: only `otlp` and `none` are understood here; the value is ignored (otlp)"
        )),
    }
    // The signal's own variable, else the general one: (name, value).
    let pick = |name: &str| -> Option<(String, String)> {
        let own = format!("{PREFIX}{s}_{name}");
        let general = format!("{PREFIX}{name}");
        raw(&own).map(|v| (own, v)).or_else(|| raw(&general).map(|v| (general, v)))
    };
    let own_endpoint = raw(&format!("{PREFIX}{s}_ENDPOINT"));
    let base_endpoint = raw(&format!("{PREFIX}ENDPOINT"));
    if own_endpoint.is_none() && base_endpoint.is_none() {
        return Ok(None);
    }
    let mut warn = |var: &str, why: &str| warnings.push(format!("{var}: {why}; the default is used"));

    let (protocol, encoding) = match pick("PROTOCOL") {
        None => (Protocol::Http, Some(Encoding::Proto)),
        Some((var, v)) => match v.trim() {
            "grpc" => (Protocol::Grpc, None),
            "http/protobuf" => (Protocol::Http, Some(Encoding::Proto)),
            "http/json" => (Protocol::Http, Some(Encoding::Json)),
            _ => {
                warn(&var, "must be `grpc`, `http/protobuf` or `http/json`");
                (Protocol::Http, Some(Encoding::Proto))
            }
        },
    };
    let mut c = OtlpExporterConfig { protocol, encoding, ..Default::default() };
    c.traces.enabled = signal == Signal::Traces;
    c.metrics.enabled = signal == Signal::Metrics;
    let endpoint_var =
        if own_endpoint.is_some() { format!("{PREFIX}{s}_ENDPOINT") } else { format!("{PREFIX}ENDPOINT") };
    match (protocol, own_endpoint) {
        (Protocol::Http, Some(url)) => {
            c.endpoint = url.clone();
            match signal {
                Signal::Traces => c.traces_endpoint = Some(url),
                Signal::Metrics => c.metrics_endpoint = Some(url),
            }
        }
        (_, Some(url)) => c.endpoint = url,
        (_, None) => c.endpoint = base_endpoint.unwrap_or_default(),
    }

    if let Some((var, list)) = pick("HEADERS") {
        let mut headers = Headers::default();
        for (k, v) in parse_resource_attributes(&list) {
            let k = if protocol == Protocol::Grpc { k.to_ascii_lowercase() } else { k };
            headers.0.insert(k, v);
        }
        if headers.0.is_empty() {
            warn(&var, "holds no `key=value` pair");
        }
        c.headers = headers;
    }
    let millis = |var: &str, v: &str, warn: &mut dyn FnMut(&str, &str)| -> Option<Duration> {
        match v.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Some(Duration::from_millis(ms)),
            _ => {
                warn(var, "must be a positive whole number of milliseconds");
                None
            }
        }
    };
    if let Some((var, v)) = pick("TIMEOUT")
        && let Some(t) = millis(&var, &v, &mut warn)
    {
        c.timeout = t;
    }
    if signal == Signal::Metrics {
        if let Some(v) = raw("OTEL_METRIC_EXPORT_TIMEOUT")
            && let Some(t) = millis("OTEL_METRIC_EXPORT_TIMEOUT", &v, &mut warn)
        {
            c.timeout = t;
        }
        if let Some(v) = raw("OTEL_METRIC_EXPORT_INTERVAL")
            && let Some(t) = millis("OTEL_METRIC_EXPORT_INTERVAL", &v, &mut warn)
        {
            c.metrics.interval = t;
        }
    }
    if let Some((var, z)) = pick("COMPRESSION") {
        match z.trim() {
            "gzip" => c.compression = Compression::Gzip,
            "none" => c.compression = Compression::None,
            _ => warn(&var, "must be `gzip` or `none`"),
        }
    }
    c.tls.ca_file = pick("CERTIFICATE").map(|(_, v)| PathBuf::from(v));
    c.tls.cert_file = pick("CLIENT_CERTIFICATE").map(|(_, v)| PathBuf::from(v));
    c.tls.key_file = pick("CLIENT_KEY").map(|(_, v)| PathBuf::from(v));
    if let Some((var, v)) = pick("INSECURE") {
        match v.trim().to_ascii_lowercase().as_str() {
            "true" => c.tls.insecure = true,
            "false" => c.tls.insecure = false,
            _ => warn(&var, "must be `true` or `false`"),
        }
    }
    c.validate().map_err(|e| OtlpConfigError {
        field: "environment",
        message: format!("{endpoint_var} and the other OTEL_EXPORTER_OTLP_* variables give an exporter that cannot work: {e}"),
    })?;
    Ok(Some(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<FromEnv, OtlpConfigError> {
        let map: HashMap<String, String> =
            vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        from_otel_env(|k| map.get(k).cloned())
    }

    fn one(vars: &[(&str, &str)]) -> OtlpExporterConfig {
        let got = from(vars).expect("ok");
        assert_eq!(got.exporters.len(), 1, "{got:?}");
        got.exporters[0].config.clone()
    }

    #[test]
    fn nothing_set_or_sdk_disabled_means_no_exporter() {
        assert!(from(&[]).expect("ok").exporters.is_empty());
        assert!(from(&[("OTEL_EXPORTER_OTLP_HEADERS", "a=b")]).expect("ok").exporters.is_empty());
        let disabled = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"), ("OTEL_SDK_DISABLED", "true")];
        assert!(from(&disabled).expect("ok").exporters.is_empty());
    }

    #[test]
    fn the_newcomer_line_gives_http_protobuf_as_the_specification_says() {
        let c = one(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318")]);
        assert_eq!((c.protocol, c.http_encoding()), (Protocol::Http, Encoding::Proto));
        assert_eq!(c.traces_url(), "http://localhost:4318/v1/traces");
        assert_eq!(c.metrics_url(), "http://localhost:4318/v1/metrics");
        assert!(c.traces.enabled && c.metrics.enabled);
        let c = one(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]);
        assert_eq!(c.protocol, Protocol::Grpc);
    }

    #[test]
    fn general_settings_apply_to_both_signals() {
        let c = one(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otlp.example.com/otlp"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Basic%20dXNlcjpzM2NyZXQ=,x-a=1"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
        ]);
        assert_eq!((c.protocol, c.http_encoding()), (Protocol::Http, Encoding::Json));
        assert_eq!(c.traces_url(), "https://otlp.example.com/otlp/v1/traces");
        assert_eq!(c.headers.0.get("Authorization").map(String::as_str), Some("Basic dXNlcjpzM2NyZXQ="));
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(c.compression, Compression::None);
    }

    /// Two backends, two keys: each signal gets only its own (they were
    /// merged, and the traces backend received the metrics backend's key).
    #[test]
    fn per_signal_settings_apply_to_their_own_signal_only() {
        let got = from(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:4318/v1/traces"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-key=traces-key"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://127.0.0.2:4318/v1/metrics"),
            ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "x-key=metrics-key"),
        ])
        .expect("ok");
        let names: Vec<&str> = got.exporters.iter().map(|e| e.name).collect();
        assert_eq!(names, ["env_traces", "env_metrics"]);
        let (t, m) = (&got.exporters[0].config, &got.exporters[1].config);
        assert!(t.traces.enabled && !t.metrics.enabled && m.metrics.enabled && !m.traces.enabled);
        assert_eq!(t.headers.0.get("x-key").map(String::as_str), Some("traces-key"));
        assert_eq!(m.headers.0.get("x-key").map(String::as_str), Some("metrics-key"));
        assert_eq!(t.traces_url(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(m.metrics_url(), "http://127.0.0.2:4318/v1/metrics");
    }

    /// A base endpoint plus a traces endpoint over gRPC: metrics go to the
    /// base endpoint (they once went to the traces one).
    #[test]
    fn a_traces_endpoint_never_takes_the_metrics_over_grpc() {
        let got = from(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.2:4317"),
        ])
        .expect("ok");
        let endpoints: Vec<(&str, &str)> =
            got.exporters.iter().map(|e| (e.name, e.config.endpoint.as_str())).collect();
        assert_eq!(
            endpoints,
            [("env_traces", "http://127.0.0.2:4317"), ("env_metrics", "http://127.0.0.1:4317")]
        );
    }

    #[test]
    fn per_signal_protocols_may_differ() {
        let got = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:4317"),
        ])
        .expect("ok");
        let kinds: Vec<(&str, Protocol)> =
            got.exporters.iter().map(|e| (e.name, e.config.protocol)).collect();
        assert_eq!(kinds, [("env_traces", Protocol::Grpc), ("env_metrics", Protocol::Http)]);
    }

    #[test]
    fn metric_export_interval_and_timeout_are_read() {
        let got = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "250"),
            ("OTEL_METRIC_EXPORT_TIMEOUT", "1500"),
        ])
        .expect("ok");
        // The metrics timeout differs from the traces one: two exporters.
        let m = &got.exporters.iter().find(|e| e.name == "env_metrics").expect("metrics").config;
        assert_eq!(
            (m.metrics.interval, m.timeout),
            (Duration::from_millis(250), Duration::from_millis(1500))
        );
        let one = one(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "250"),
        ]);
        assert_eq!(one.metrics.interval, Duration::from_millis(250));
    }

    #[test]
    fn a_signal_exporter_none_turns_it_off_and_others_are_warned() {
        let c = one(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"), ("OTEL_METRICS_EXPORTER", "none")]);
        assert!(c.traces.enabled && !c.metrics.enabled);
        let got =
            from(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"), ("OTEL_TRACES_EXPORTER", "zipkin")])
                .expect("ok");
        assert_eq!(got.exporters.len(), 1);
        assert!(got.warnings.iter().any(|w| w.starts_with("OTEL_TRACES_EXPORTER")), "{:?}", got.warnings);
    }

    /// Optional values that do not parse warn and use the default, naming
    /// the variable and never the value.
    #[test]
    fn unparsable_optional_values_warn_and_use_the_default() {
        for (var, value) in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "5s"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd-s3cret"),
            ("OTEL_EXPORTER_OTLP_INSECURE", "yes-s3cret"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "often"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "-1"),
        ] {
            let got = from(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"), (var, value)]).expect(var);
            assert!(!got.exporters.is_empty(), "{var}");
            assert!(got.warnings.iter().any(|w| w.starts_with(var)), "{var}: {:?}", got.warnings);
            assert!(got.warnings.iter().all(|w| !w.contains(value)), "{var}: echoes its value");
        }
    }

    #[test]
    fn an_unusable_endpoint_is_an_error_naming_the_variable() {
        let e = from(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4318")]).expect_err("no scheme over HTTP");
        assert!(e.message.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{e}");
        let e = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:1"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-key=s3cret%01"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .expect_err("bad header value");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }
}
