//! Configuration of the `otlp` exporter, shaped like the OpenTelemetry
//! Collector's `otlp` exporter so that people who know one know the other.
//!
//! Promises: unknown keys are errors (`deny_unknown_fields`);
//! [`OtlpExporterConfig::validate`] refuses every setting that cannot work
//! and names the field; header values (API keys) never appear in `Debug`
//! output or in any error message.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// How `endpoint` is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `http://`: plaintext gRPC (an explicit choice, never a default).
    Plaintext,
    /// `https://`: TLS, verified against the system roots or `tls.ca_file`.
    Tls,
}

/// `tls:` — only meaningful with an `https://` endpoint.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// OpenTelemetry Collector compatibility: `true` means "no TLS", which
    /// here must also be spelled out as an `http://` endpoint.
    #[serde(default)]
    pub insecure: bool,
    /// PEM CA bundle to verify the server with, instead of the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (mutual TLS); needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Gzip,
    None,
}

fn default_true() -> bool {
    true
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_initial_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_max_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_max_elapsed() -> Duration {
    Duration::from_secs(300)
}
fn default_queue_size() -> usize {
    16_384
}
fn default_metrics_interval() -> Duration {
    Duration::from_secs(10)
}

/// `retry_on_failure:` — retries of one export after a retryable failure
/// (backend unavailable, deadline exceeded, resource exhausted …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Wait before the first retry; doubles after each failure.
    #[serde(default = "default_initial_interval", deserialize_with = "varta_pipeline::config::duration")]
    pub initial_interval: Duration,
    /// Cap of the wait between two retries.
    #[serde(default = "default_max_interval", deserialize_with = "varta_pipeline::config::duration")]
    pub max_interval: Duration,
    /// Give up on a batch (and count it failed) after retrying this long.
    #[serde(default = "default_max_elapsed", deserialize_with = "varta_pipeline::config::duration")]
    pub max_elapsed_time: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            enabled: true,
            initial_interval: default_initial_interval(),
            max_interval: default_max_interval(),
            max_elapsed_time: default_max_elapsed(),
        }
    }
}

/// `sending_queue:` — spans waiting for the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendingQueueConfig {
    /// Spans that may wait (also the bound of the event queue in front of
    /// the exporter). When full, the oldest span is dropped and counted.
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
}

impl Default for SendingQueueConfig {
    fn default() -> Self {
        SendingQueueConfig { queue_size: default_queue_size() }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Temporality {
    /// Sums and the histogram count from the collector's start.
    #[default]
    Cumulative,
    /// Sums and the histogram count since the previous export.
    Delta,
}

/// `metrics:`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Time between two metric exports.
    #[serde(default = "default_metrics_interval", deserialize_with = "varta_pipeline::config::duration")]
    pub interval: Duration,
    #[serde(default)]
    pub temporality: Temporality,
    /// Send one point per tracked agent (status, beats, stalls). With very
    /// large fleets, switch off and keep only the fleet totals.
    #[serde(default = "default_true")]
    pub per_agent: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            interval: default_metrics_interval(),
            temporality: Temporality::Cumulative,
            per_agent: true,
        }
    }
}

/// `traces:`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracesConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for TracesConfig {
    fn default() -> Self {
        TracesConfig { enabled: true }
    }
}

/// Header map whose values are secrets (API keys): `Debug` prints the
/// names only.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Headers(pub BTreeMap<String, String>);

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.keys().map(|k| (k, "<redacted>"))).finish()
    }
}

/// Configuration of the `otlp` exporter (OTLP over gRPC).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpExporterConfig {
    /// `http://host:port` (plaintext, explicit) or `https://host:port`.
    #[serde(default)]
    pub endpoint: String,
    #[serde(default)]
    pub tls: TlsConfig,
    /// gRPC metadata sent with every export; values may come from
    /// `${env:VAR}` and are never logged.
    #[serde(default)]
    pub headers: Headers,
    #[serde(default)]
    pub compression: Compression,
    /// Deadline of one export call.
    #[serde(default = "default_timeout", deserialize_with = "varta_pipeline::config::duration")]
    pub timeout: Duration,
    #[serde(default)]
    pub retry_on_failure: RetryConfig,
    #[serde(default)]
    pub sending_queue: SendingQueueConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub traces: TracesConfig,
    /// Resource attributes; they override the computed ones (`service.name`
    /// = `varta-collector`, `service.version`, `host.name`,
    /// `service.instance.id`).
    #[serde(default)]
    pub resource: BTreeMap<String, String>,
}

impl Default for OtlpExporterConfig {
    fn default() -> Self {
        OtlpExporterConfig {
            endpoint: String::new(),
            tls: TlsConfig::default(),
            headers: Headers::default(),
            compression: Compression::Gzip,
            timeout: default_timeout(),
            retry_on_failure: RetryConfig::default(),
            sending_queue: SendingQueueConfig::default(),
            metrics: MetricsConfig::default(),
            traces: TracesConfig::default(),
            resource: BTreeMap::new(),
        }
    }
}

/// A setting of the `otlp` exporter that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {message}")]
pub struct OtlpConfigError {
    pub field: &'static str,
    pub message: String,
}

fn bad(field: &'static str, message: impl Into<String>) -> OtlpConfigError {
    OtlpConfigError { field, message: message.into() }
}

/// Largest queue accepted (spans are a few hundred bytes each).
pub const MAX_QUEUE_SIZE: usize = 1 << 20;

impl OtlpExporterConfig {
    /// The endpoint's scheme (after [`Self::validate`] succeeded).
    pub fn scheme(&self) -> Scheme {
        if self.endpoint.starts_with("https://") { Scheme::Tls } else { Scheme::Plaintext }
    }

    /// Semantic checks; errors name the field.
    pub fn validate(&self) -> Result<(), OtlpConfigError> {
        let scheme = if let Some(rest) = self.endpoint.strip_prefix("http://") {
            (Scheme::Plaintext, rest)
        } else if let Some(rest) = self.endpoint.strip_prefix("https://") {
            (Scheme::Tls, rest)
        } else if self.endpoint.is_empty() {
            return Err(bad(
                "endpoint",
                "is required, e.g. `http://127.0.0.1:4317` or `https://otlp.example.com:4317`",
            ));
        } else {
            return Err(bad(
                "endpoint",
                format!(
                    "{:?} must start with `http://` (plaintext, said explicitly) or `https://` (TLS)",
                    self.endpoint
                ),
            ));
        };
        let (scheme, rest) = scheme;
        let authority = rest.split('/').next().unwrap_or("");
        if authority.is_empty() {
            return Err(bad("endpoint", format!("{:?} has no host", self.endpoint)));
        }
        tonic::transport::Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| bad("endpoint", format!("{:?} is not a valid URI: {e}", self.endpoint)))?;
        match scheme {
            Scheme::Plaintext => {
                if self.tls.ca_file.is_some() || self.tls.cert_file.is_some() || self.tls.key_file.is_some() {
                    return Err(bad(
                        "tls",
                        "certificate files are set but `endpoint` is plaintext `http://`; use `https://`",
                    ));
                }
            }
            Scheme::Tls => {
                if self.tls.insecure {
                    return Err(bad(
                        "tls.insecure",
                        "`true` means plaintext, but `endpoint` is `https://`; write `http://` for plaintext",
                    ));
                }
            }
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err(bad("tls.cert_file", "`cert_file` and `key_file` must be given together"));
        }
        for (field, path) in [
            ("tls.ca_file", &self.tls.ca_file),
            ("tls.cert_file", &self.tls.cert_file),
            ("tls.key_file", &self.tls.key_file),
        ] {
            if let Some(p) = path
                && !p.is_file()
            {
                return Err(bad(field, format!("{} is not a readable file", p.display())));
            }
        }
        for (name, value) in &self.headers.0 {
            if tonic::metadata::MetadataKey::<tonic::metadata::Ascii>::from_bytes(name.as_bytes()).is_err()
                || name.ends_with("-bin")
            {
                return Err(bad(
                    "headers",
                    format!(
                        "{name:?} is not a valid gRPC metadata name (lower-case ASCII, no `-bin` suffix)"
                    ),
                ));
            }
            // The value is a secret: say which header, never what it holds.
            if tonic::metadata::MetadataValue::<tonic::metadata::Ascii>::try_from(value.as_str()).is_err() {
                return Err(bad("headers", format!("the value of {name:?} is not printable ASCII")));
            }
        }
        if self.timeout.is_zero() {
            return Err(bad("timeout", "must be greater than 0"));
        }
        let r = &self.retry_on_failure;
        if r.enabled {
            if r.initial_interval.is_zero() {
                return Err(bad("retry_on_failure.initial_interval", "must be greater than 0"));
            }
            if r.max_interval < r.initial_interval {
                return Err(bad(
                    "retry_on_failure.max_interval",
                    "must be at least `retry_on_failure.initial_interval`",
                ));
            }
        }
        if self.sending_queue.queue_size == 0 || self.sending_queue.queue_size > MAX_QUEUE_SIZE {
            return Err(bad("sending_queue.queue_size", format!("must be between 1 and {MAX_QUEUE_SIZE}")));
        }
        if self.metrics.enabled && self.metrics.interval < Duration::from_millis(100) {
            return Err(bad("metrics.interval", "must be at least 100ms"));
        }
        if !self.metrics.enabled && !self.traces.enabled {
            return Err(bad("metrics.enabled", "metrics and traces are both disabled: nothing to export"));
        }
        for key in self.resource.keys() {
            if key.is_empty() {
                return Err(bad("resource", "attribute names must not be empty"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<OtlpExporterConfig, String> {
        serde_json::from_str::<OtlpExporterConfig>(json).map_err(|e| e.to_string())
    }

    fn invalid(json: &str) -> OtlpConfigError {
        parse(json).expect("parses").validate().expect_err("must be refused")
    }

    #[test]
    fn defaults_follow_the_collector() {
        let c = parse(r#"{"endpoint":"http://127.0.0.1:4317"}"#).expect("parses");
        c.validate().expect("valid");
        assert_eq!(c.scheme(), Scheme::Plaintext);
        assert_eq!(c.compression, Compression::Gzip);
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.metrics.interval, Duration::from_secs(10));
        assert_eq!(c.metrics.temporality, Temporality::Cumulative);
        assert!(c.metrics.enabled && c.traces.enabled && c.retry_on_failure.enabled);
        assert_eq!(c.sending_queue.queue_size, 16_384);
    }

    #[test]
    fn every_documented_key_parses() {
        let c = parse(
            r#"{"endpoint":"https://otlp.example.com:4317",
                "tls":{"insecure":false},
                "headers":{"x-api-key":"s3cret"},
                "compression":"none","timeout":"2s",
                "retry_on_failure":{"enabled":true,"initial_interval":"100ms","max_interval":"1s","max_elapsed_time":"10s"},
                "sending_queue":{"queue_size":100},
                "metrics":{"enabled":true,"interval":"1s","temporality":"delta","per_agent":false},
                "traces":{"enabled":true},
                "resource":{"deployment.environment":"prod"}}"#,
        )
        .expect("parses");
        c.validate().expect("valid");
        assert_eq!(c.scheme(), Scheme::Tls);
        assert_eq!(c.metrics.temporality, Temporality::Delta);
        assert_eq!(c.retry_on_failure.initial_interval, Duration::from_millis(100));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = parse(r#"{"endpoint":"http://a:1","retry":{}}"#).expect_err("unknown");
        assert!(e.contains("unknown field"), "{e}");
        let e = parse(r#"{"endpoint":"http://a:1","metrics":{"temporal":"delta"}}"#).expect_err("unknown");
        assert!(e.contains("unknown field"), "{e}");
        let e = parse(r#"{"endpoint":"http://a:1","compression":"zstd"}"#).expect_err("variant");
        assert!(e.contains("unknown variant"), "{e}");
    }

    #[test]
    fn endpoint_needs_an_explicit_scheme() {
        assert_eq!(invalid(r#"{}"#).field, "endpoint");
        let e = invalid(r#"{"endpoint":"127.0.0.1:4317"}"#);
        assert_eq!(e.field, "endpoint");
        assert!(e.to_string().contains("http://"), "{e}");
        assert_eq!(invalid(r#"{"endpoint":"http://"}"#).field, "endpoint");
        assert_eq!(invalid(r#"{"endpoint":"grpc://a:1"}"#).field, "endpoint");
    }

    #[test]
    fn tls_settings_must_agree_with_the_scheme() {
        let e = invalid(r#"{"endpoint":"https://a:1","tls":{"insecure":true}}"#);
        assert_eq!(e.field, "tls.insecure");
        let e = invalid(r#"{"endpoint":"http://a:1","tls":{"ca_file":"/etc/hostname"}}"#);
        assert_eq!(e.field, "tls");
        let e = invalid(r#"{"endpoint":"https://a:1","tls":{"cert_file":"/etc/hostname"}}"#);
        assert_eq!(e.field, "tls.cert_file");
        let e = invalid(r#"{"endpoint":"https://a:1","tls":{"ca_file":"/nonexistent/ca.pem"}}"#);
        assert_eq!(e.field, "tls.ca_file");
        // insecure with plaintext is simply consistent.
        parse(r#"{"endpoint":"http://a:1","tls":{"insecure":true}}"#)
            .expect("parses")
            .validate()
            .expect("valid");
    }

    #[test]
    fn header_values_are_never_printed() {
        let c = parse(r#"{"endpoint":"http://a:1","headers":{"authorization":"Bearer s3cret-token"}}"#)
            .expect("parses");
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("authorization"), "{debug}");
        let e = invalid(r#"{"endpoint":"http://a:1","headers":{"x-key":"s3cret\u0001"}}"#);
        assert_eq!(e.field, "headers");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let e = invalid(r#"{"endpoint":"http://a:1","headers":{"Bad Name":"v"}}"#);
        assert_eq!(e.field, "headers");
    }

    #[test]
    fn bounds_are_checked() {
        assert_eq!(invalid(r#"{"endpoint":"http://a:1","timeout":"0s"}"#).field, "timeout");
        assert_eq!(
            invalid(r#"{"endpoint":"http://a:1","sending_queue":{"queue_size":0}}"#).field,
            "sending_queue.queue_size"
        );
        assert_eq!(
            invalid(r#"{"endpoint":"http://a:1","retry_on_failure":{"initial_interval":"2s","max_interval":"1s"}}"#)
                .field,
            "retry_on_failure.max_interval"
        );
        assert_eq!(
            invalid(r#"{"endpoint":"http://a:1","metrics":{"interval":"1ms"}}"#).field,
            "metrics.interval"
        );
        assert_eq!(
            invalid(r#"{"endpoint":"http://a:1","metrics":{"enabled":false},"traces":{"enabled":false}}"#)
                .field,
            "metrics.enabled"
        );
    }
}
