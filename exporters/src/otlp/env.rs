//! The OpenTelemetry SDK environment variables as an exporter
//! configuration: what a newcomer's `OTEL_EXPORTER_OTLP_ENDPOINT=…` means
//! when the collector runs with its embedded default configuration.
//!
//! Read: `OTEL_EXPORTER_OTLP_ENDPOINT` and the per-signal
//! `…_TRACES_ENDPOINT` / `…_METRICS_ENDPOINT`, `…_PROTOCOL` (`grpc`,
//! `http/protobuf`, `http/json`; per-signal variants must agree),
//! `…_HEADERS` (`k=v,…`, percent-decoded; per-signal entries win),
//! `…_TIMEOUT` (milliseconds), `…_COMPRESSION` (`gzip`, `none`),
//! `…_CERTIFICATE`, `…_CLIENT_CERTIFICATE`, `…_CLIENT_KEY`, `…_INSECURE`.
//!
//! Promises: a value from the environment only ever fills a field (it is
//! never parsed as configuration text, so it cannot add keys); a value that
//! cannot work is an error naming the variable, never its content (headers
//! are secrets); the result is checked by the same
//! [`OtlpExporterConfig::validate`] as any configured exporter.
//!
//! One deliberate difference from the SDK specification: without
//! `OTEL_EXPORTER_OTLP_PROTOCOL` the protocol is `grpc` (the specification
//! suggests `http/protobuf`), because the endpoint users most often give a
//! collector is an OpenTelemetry Collector's `:4317`.

use std::path::PathBuf;
use std::time::Duration;

use super::config::{Compression, Encoding, Headers, OtlpConfigError, OtlpExporterConfig, Protocol};
use super::resource::parse_resource_attributes;

const PREFIX: &str = "OTEL_EXPORTER_OTLP_";

/// The exporter the environment asks for, or `None` when no endpoint
/// variable is set. `env` looks a variable up.
pub fn from_otel_env(
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<OtlpExporterConfig>, OtlpConfigError> {
    let get = |name: &str| env(&format!("{PREFIX}{name}")).filter(|v| !v.trim().is_empty());
    let signal = |signal: &str, name: &str| get(&format!("{signal}_{name}"));
    let (endpoint, traces, metrics) =
        (get("ENDPOINT"), signal("TRACES", "ENDPOINT"), signal("METRICS", "ENDPOINT"));
    if endpoint.is_none() && traces.is_none() && metrics.is_none() {
        return Ok(None);
    }
    let bad = |var: &str, message: String| OtlpConfigError {
        field: "environment",
        message: format!("{PREFIX}{var}: {message}"),
    };
    let protocol_of =
        |var: &str, value: Option<String>| -> Result<Option<(Protocol, Option<Encoding>)>, OtlpConfigError> {
            Ok(match value.as_deref().map(str::trim) {
                None => None,
                Some("grpc") => Some((Protocol::Grpc, None)),
                Some("http/protobuf") => Some((Protocol::Http, Some(Encoding::Proto))),
                Some("http/json") => Some((Protocol::Http, Some(Encoding::Json))),
                Some(_) => return Err(bad(var, "must be `grpc`, `http/protobuf` or `http/json`".into())),
            })
        };
    let general = protocol_of("PROTOCOL", get("PROTOCOL"))?;
    let traces_p = protocol_of("TRACES_PROTOCOL", signal("TRACES", "PROTOCOL"))?;
    let metrics_p = protocol_of("METRICS_PROTOCOL", signal("METRICS", "PROTOCOL"))?;
    let chosen = [traces_p, metrics_p, general].into_iter().flatten().collect::<Vec<_>>();
    if chosen.windows(2).any(|w| w[0] != w[1]) {
        return Err(bad(
            "TRACES_PROTOCOL",
            "traces and metrics must use one protocol here; use a configuration file for two exporters"
                .into(),
        ));
    }
    let (protocol, encoding) = chosen.first().copied().unwrap_or((Protocol::Grpc, None));

    let mut c = OtlpExporterConfig { protocol, encoding, ..Default::default() };
    match protocol {
        Protocol::Grpc => {
            if traces.is_some() && metrics.is_some() && traces != metrics {
                return Err(bad(
                    "METRICS_ENDPOINT",
                    "differs from the traces endpoint; one gRPC exporter has one endpoint (use a configuration file)".into(),
                ));
            }
            c.endpoint = traces.clone().or(metrics.clone()).or(endpoint.clone()).unwrap_or_default();
        }
        Protocol::Http => {
            c.endpoint = endpoint.clone().unwrap_or_default();
            c.traces_endpoint = traces.clone();
            c.metrics_endpoint = metrics.clone();
        }
    }
    // Only per-signal endpoints given: only those signals are exported.
    if endpoint.is_none() {
        c.traces.enabled = traces.is_some();
        c.metrics.enabled = metrics.is_some();
    }

    let mut headers = Headers::default();
    for var in ["HEADERS", "TRACES_HEADERS", "METRICS_HEADERS"] {
        if let Some(list) = get(var) {
            for (k, v) in parse_resource_attributes(&list) {
                let k = if protocol == Protocol::Grpc { k.to_ascii_lowercase() } else { k };
                headers.0.insert(k, v);
            }
        }
    }
    c.headers = headers;
    if let Some(t) = get("TIMEOUT") {
        let ms: u64 =
            t.trim().parse().map_err(|_| bad("TIMEOUT", "must be a whole number of milliseconds".into()))?;
        c.timeout = Duration::from_millis(ms);
    }
    if let Some(z) = get("COMPRESSION") {
        c.compression = match z.trim() {
            "gzip" => Compression::Gzip,
            "none" => Compression::None,
            _ => return Err(bad("COMPRESSION", "must be `gzip` or `none`".into())),
        };
    }
    c.tls.ca_file = get("CERTIFICATE").map(PathBuf::from);
    c.tls.cert_file = get("CLIENT_CERTIFICATE").map(PathBuf::from);
    c.tls.key_file = get("CLIENT_KEY").map(PathBuf::from);
    if let Some(v) = get("INSECURE") {
        c.tls.insecure = match v.trim().to_ascii_lowercase().as_str() {
            "true" => true,
            "false" => false,
            _ => return Err(bad("INSECURE", "must be `true` or `false`".into())),
        };
    }
    c.validate().map_err(|e| OtlpConfigError {
        field: "environment",
        message: format!("the OTEL_EXPORTER_OTLP_* variables give an exporter that cannot work: {e}"),
    })?;
    Ok(Some(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<Option<OtlpExporterConfig>, OtlpConfigError> {
        let map: HashMap<String, String> =
            vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        from_otel_env(|k| map.get(k).cloned())
    }

    #[test]
    fn nothing_set_means_no_exporter() {
        assert!(from(&[]).expect("ok").is_none());
        assert!(from(&[("OTEL_EXPORTER_OTLP_HEADERS", "a=b")]).expect("ok").is_none());
    }

    #[test]
    fn the_newcomer_line_gives_grpc() {
        let c = from(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4317")]).expect("ok").expect("some");
        assert_eq!((c.protocol, c.endpoint.as_str()), (Protocol::Grpc, "http://localhost:4317"));
        assert!(c.traces.enabled && c.metrics.enabled);
    }

    #[test]
    fn http_json_headers_timeout_compression() {
        let c = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otlp.example.com/otlp"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Basic%20dXNlcjpzM2NyZXQ=,x-a=1"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-a=2"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
        ])
        .expect("ok")
        .expect("some");
        assert_eq!((c.protocol, c.http_encoding()), (Protocol::Http, Encoding::Json));
        assert_eq!(c.traces_url(), "https://otlp.example.com/otlp/v1/traces");
        assert_eq!(c.headers.0.get("Authorization").map(String::as_str), Some("Basic dXNlcjpzM2NyZXQ="));
        assert_eq!(c.headers.0.get("x-a").map(String::as_str), Some("2"), "per-signal wins");
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(c.compression, Compression::None);
    }

    #[test]
    fn per_signal_endpoints_alone_export_only_their_signal() {
        let c = from(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:4318/v1/traces"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ])
        .expect("ok")
        .expect("some");
        assert!(c.traces.enabled && !c.metrics.enabled);
        assert_eq!(c.traces_url(), "http://127.0.0.1:4318/v1/traces");
    }

    #[test]
    fn bad_values_name_the_variable_never_the_secret() {
        let e =
            from(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:1"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift")])
                .expect_err("bad protocol");
        assert!(e.message.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{e}");
        let e = from(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:1"), ("OTEL_EXPORTER_OTLP_TIMEOUT", "5s")])
            .expect_err("bad timeout");
        assert!(e.message.contains("TIMEOUT"), "{e}");
        let e = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:1"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-key=s3cret%01"),
        ])
        .expect_err("bad header value");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let e = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:1"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
        ])
        .expect_err("two protocols");
        assert!(e.message.contains("one protocol"), "{e}");
    }
}
