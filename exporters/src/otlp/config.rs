//! Configuration of the `otlp` (OTLP/gRPC) and `otlphttp` (OTLP/HTTP)
//! exporters, shaped like the OpenTelemetry Collector's exporters of the
//! same names so that people who know one know the other: a Collector
//! config block copied over works (`endpoint: host:port` with
//! `tls: {insecure: true}`, `headers`, `compression`, `retry_on_failure`,
//! `sending_queue`, `encoding`, `traces_endpoint` …).
//!
//! Promises: unknown keys are errors (`deny_unknown_fields`), and so is a
//! key of the other transport (`encoding` on `otlp`);
//! [`OtlpExporterConfig::validate`] refuses every setting that cannot work
//! and names the field; header values (API keys) never appear in `Debug`
//! output or in any error message; `tls.key_file` is read by the same
//! careful reader as every other secret (regular file, not a symlink,
//! ours, 0600).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// How `endpoint` is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `http://`, or `host:port` with `tls.insecure: true`: plaintext (an
    /// explicit choice, never a default).
    Plaintext,
    /// `https://`, or `host:port`: TLS, verified against the system roots
    /// or `tls.ca_file`.
    Tls,
}

/// Which wire the exporter speaks; chosen by the component type, never
/// by a key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    /// `otlp`: OTLP/gRPC.
    #[default]
    Grpc,
    /// `otlphttp`: OTLP/HTTP (`POST {endpoint}/v1/traces`, `/v1/metrics`).
    Http,
}

/// `encoding:` of `otlphttp` request bodies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// `application/x-protobuf`.
    #[default]
    Proto,
    /// `application/json` (OTLP/JSON: hex ids, camelCase names).
    Json,
}

/// `tls:` — as the OpenTelemetry Collector's `configtls` client settings.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// `true`: plaintext. With a `host:port` endpoint this is how the
    /// Collector says "no TLS"; with `https://` it is a contradiction.
    #[serde(default)]
    pub insecure: bool,
    /// Accept any server certificate (TLS still encrypts, but anyone on
    /// the path can impersonate the backend). For tests and labs only;
    /// logged as a warning at start.
    #[serde(default)]
    pub insecure_skip_verify: bool,
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

fn default_multiplier() -> f64 {
    1.5
}
fn default_randomization_factor() -> f64 {
    0.5
}

/// `retry_on_failure:` — retries of one export after a retryable failure
/// (backend unavailable, deadline exceeded, throttled …), as the
/// Collector's `configretry`: exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Wait before the first retry; × `multiplier` after each failure.
    #[serde(default = "default_initial_interval", deserialize_with = "varta_pipeline::config::duration")]
    pub initial_interval: Duration,
    /// Growth of the wait between two retries (at least 1; default 1.5).
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    /// Each wait is drawn from `[wait × (1 − f), wait × (1 + f)]` (0 ≤ f < 1;
    /// default 0.5), so exporters that failed together do not retry together.
    #[serde(default = "default_randomization_factor")]
    pub randomization_factor: f64,
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
            multiplier: default_multiplier(),
            randomization_factor: default_randomization_factor(),
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

pub use varta_telemetry::metrics::Temporality;

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

/// Configuration of the `otlp` exporter (OTLP/gRPC) and of the `otlphttp`
/// exporter (OTLP/HTTP): one struct, one sending core; [`Self::protocol`]
/// is set by the component type and [`Self::validate`] refuses the keys of
/// the other transport.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpExporterConfig {
    /// Set from the component type (`otlp` or `otlphttp`), never from YAML.
    #[serde(skip)]
    pub protocol: Protocol,
    /// `otlp`: `host:port` (TLS unless `tls.insecure`), `https://host:port`
    /// or `http://host:port` (plaintext). `otlphttp`: a base URL
    /// (`https://otlp.example.com`, `http://127.0.0.1:4318`) to which
    /// `/v1/traces` and `/v1/metrics` are appended.
    #[serde(default)]
    pub endpoint: String,
    /// `otlphttp` only: the full URL for traces, instead of
    /// `{endpoint}/v1/traces`.
    #[serde(default)]
    pub traces_endpoint: Option<String>,
    /// `otlphttp` only: the full URL for metrics, instead of
    /// `{endpoint}/v1/metrics`.
    #[serde(default)]
    pub metrics_endpoint: Option<String>,
    /// `otlphttp` only: request body encoding.
    #[serde(default)]
    pub encoding: Option<Encoding>,
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
    /// The collector's own resource attributes; they override the computed
    /// ones (`service.name` = `varta-collector` or `OTEL_SERVICE_NAME`,
    /// `service.version`, `host.name`, `service.instance.id`, then
    /// `OTEL_RESOURCE_ATTRIBUTES`).
    #[serde(default)]
    pub resource: BTreeMap<String, String>,
    /// `true` (default): incident spans and per-agent metric points are
    /// sent under a resource describing the observed agent (its
    /// `service.name`, `process.*`, `container.id` …), so a trace store
    /// lists a service's stalls under that service. `false`: everything
    /// under the collector's resource, agent attributes on each span and
    /// point (the form before agent resources).
    #[serde(default = "default_true")]
    pub agent_resource: bool,
}

impl Default for OtlpExporterConfig {
    fn default() -> Self {
        OtlpExporterConfig {
            protocol: Protocol::Grpc,
            endpoint: String::new(),
            traces_endpoint: None,
            metrics_endpoint: None,
            encoding: None,
            tls: TlsConfig::default(),
            headers: Headers::default(),
            compression: Compression::Gzip,
            timeout: default_timeout(),
            retry_on_failure: RetryConfig::default(),
            sending_queue: SendingQueueConfig::default(),
            metrics: MetricsConfig::default(),
            traces: TracesConfig::default(),
            resource: BTreeMap::new(),
            agent_resource: true,
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

impl From<OtlpConfigError> for varta_pipeline::config::FieldError {
    fn from(e: OtlpConfigError) -> Self {
        varta_pipeline::config::FieldError::new(e.field, e.to_string())
    }
}

fn bad(field: &'static str, message: impl Into<String>) -> OtlpConfigError {
    OtlpConfigError { field, message: message.into() }
}

/// Largest queue accepted (spans are a few hundred bytes each).
pub const MAX_QUEUE_SIZE: usize = 1 << 20;

impl OtlpExporterConfig {
    /// The component type's name, for messages.
    pub fn kind(&self) -> &'static str {
        match self.protocol {
            Protocol::Grpc => "otlp",
            Protocol::Http => "otlphttp",
        }
    }

    /// The endpoint's scheme (after [`Self::validate`] succeeded).
    pub fn scheme(&self) -> Scheme {
        let explicit = |url: &str| {
            if url.starts_with("https://") {
                Some(Scheme::Tls)
            } else if url.starts_with("http://") {
                Some(Scheme::Plaintext)
            } else {
                None
            }
        };
        explicit(&self.endpoint)
            .or_else(|| self.traces_endpoint.as_deref().and_then(explicit))
            .or_else(|| self.metrics_endpoint.as_deref().and_then(explicit))
            .unwrap_or(if self.tls.insecure { Scheme::Plaintext } else { Scheme::Tls })
    }

    /// The gRPC target as a URI tonic accepts: `host:port` gains the scheme
    /// its `tls` settings imply.
    pub fn grpc_uri(&self) -> String {
        if self.endpoint.contains("://") {
            self.endpoint.clone()
        } else {
            match self.scheme() {
                Scheme::Tls => format!("https://{}", self.endpoint),
                Scheme::Plaintext => format!("http://{}", self.endpoint),
            }
        }
    }

    /// `otlphttp`: the URL traces are posted to.
    pub fn traces_url(&self) -> String {
        self.traces_endpoint.clone().unwrap_or_else(|| signal_url(&self.endpoint, "traces"))
    }

    /// `otlphttp`: the URL metrics are posted to.
    pub fn metrics_url(&self) -> String {
        self.metrics_endpoint.clone().unwrap_or_else(|| signal_url(&self.endpoint, "metrics"))
    }

    /// `otlphttp`: the request body encoding.
    pub fn http_encoding(&self) -> Encoding {
        self.encoding.unwrap_or_default()
    }

    /// Semantic checks; errors name the field.
    pub fn validate(&self) -> Result<(), OtlpConfigError> {
        match self.protocol {
            Protocol::Grpc => self.validate_grpc_endpoint()?,
            Protocol::Http => self.validate_http_endpoints()?,
        }
        match self.scheme() {
            Scheme::Plaintext => {
                if self.tls.ca_file.is_some()
                    || self.tls.cert_file.is_some()
                    || self.tls.key_file.is_some()
                    || self.tls.insecure_skip_verify
                {
                    return Err(bad(
                        "tls",
                        "TLS settings are given but the endpoint is plaintext (`http://` or `tls.insecure: true`)",
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
        for (field, path) in [("tls.ca_file", &self.tls.ca_file), ("tls.cert_file", &self.tls.cert_file)] {
            if let Some(p) = path
                && !p.is_file()
            {
                return Err(bad(field, format!("{} is not a readable file", p.display())));
            }
        }
        if let Some(p) = &self.tls.key_file {
            // A private key: the secret reader's rules, checked now so that
            // `validate` and a reload refuse a world-readable key.
            varta_secrets::read_secret_pem(p).map_err(|e| bad("tls.key_file", e.to_string()))?;
        }
        for (name, value) in self.headers.0.iter().filter(|_| self.protocol == Protocol::Grpc) {
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
            if !(1.0..=100.0).contains(&r.multiplier) {
                return Err(bad("retry_on_failure.multiplier", "must be between 1 and 100"));
            }
            if !(0.0..1.0).contains(&r.randomization_factor) {
                return Err(bad(
                    "retry_on_failure.randomization_factor",
                    "must be at least 0 and less than 1",
                ));
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

    fn validate_grpc_endpoint(&self) -> Result<(), OtlpConfigError> {
        for (field, given) in [
            ("traces_endpoint", self.traces_endpoint.is_some()),
            ("metrics_endpoint", self.metrics_endpoint.is_some()),
            ("encoding", self.encoding.is_some()),
        ] {
            if given {
                return Err(bad(field, "is an `otlphttp` setting; the `otlp` exporter speaks gRPC"));
            }
        }
        if self.endpoint.is_empty() {
            return Err(bad(
                "endpoint",
                "is required, e.g. `otlp.example.com:4317` (TLS), `127.0.0.1:4317` with `tls: {insecure: true}`, or `http://127.0.0.1:4317`",
            ));
        }
        let rest = match self.endpoint.split_once("://") {
            Some(("http" | "https", rest)) => rest,
            Some((scheme, _)) => {
                return Err(bad(
                    "endpoint",
                    format!(
                        "{:?}: scheme `{scheme}` is not `http` or `https` (or leave it out: `host:port`)",
                        self.endpoint
                    ),
                ));
            }
            None => &self.endpoint,
        };
        let authority = rest.split('/').next().unwrap_or("");
        if authority.is_empty() {
            return Err(bad("endpoint", format!("{:?} has no host", self.endpoint)));
        }
        if !self.endpoint.contains("://")
            && !authority.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        {
            return Err(bad("endpoint", format!("{:?} is not `host:port`", self.endpoint)));
        }
        tonic::transport::Endpoint::from_shared(self.grpc_uri())
            .map_err(|e| bad("endpoint", format!("{:?} is not a valid URI: {e}", self.endpoint)))?;
        Ok(())
    }

    fn validate_http_endpoints(&self) -> Result<(), OtlpConfigError> {
        let urls = [
            ("endpoint", (!self.endpoint.is_empty()).then_some(self.endpoint.as_str())),
            ("traces_endpoint", self.traces_endpoint.as_deref()),
            ("metrics_endpoint", self.metrics_endpoint.as_deref()),
        ];
        let needed = (self.traces.enabled && self.traces_endpoint.is_none())
            || (self.metrics.enabled && self.metrics_endpoint.is_none());
        if self.endpoint.is_empty() && needed {
            return Err(bad(
                "endpoint",
                "is required (or `traces_endpoint` and `metrics_endpoint`), e.g. `https://otlp.example.com` or `http://127.0.0.1:4318`",
            ));
        }
        let mut schemes = Vec::new();
        for (field, url) in urls {
            let Some(url) = url else { continue };
            let parsed: Result<hyper::Uri, _> = url.parse();
            match parsed {
                Ok(u)
                    if matches!(u.scheme_str(), Some("http" | "https"))
                        && u.host().is_some_and(|h| !h.is_empty()) =>
                {
                    schemes.push(u.scheme_str() == Some("https"));
                }
                _ => {
                    return Err(bad(
                        field,
                        format!("{url:?} must be a URL starting with `http://` or `https://`, with a host"),
                    ));
                }
            }
        }
        if schemes.windows(2).any(|w| w[0] != w[1]) {
            return Err(bad("traces_endpoint", "endpoints must all be `https://` or all be `http://`"));
        }
        for (name, value) in &self.headers.0 {
            if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(bad("headers", format!("{name:?} is not a valid HTTP header name")));
            }
            if hyper::header::HeaderValue::from_str(value).is_err() {
                return Err(bad("headers", format!("the value of {name:?} is not a valid header value")));
            }
        }
        Ok(())
    }
}

/// `{base}/v1/{signal}`, as the Collector's `otlphttp` appends it.
fn signal_url(base: &str, signal: &str) -> String {
    format!("{}/v1/{signal}", base.trim_end_matches('/'))
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
    fn endpoint_forms_follow_the_collector() {
        assert_eq!(invalid(r#"{}"#).field, "endpoint");
        // `host:port` is TLS, as in the OpenTelemetry Collector …
        let c = parse(r#"{"endpoint":"otelcol:4317"}"#).expect("parses");
        c.validate().expect("valid");
        assert_eq!((c.scheme(), c.grpc_uri().as_str()), (Scheme::Tls, "https://otelcol:4317"));
        // … and plaintext with `tls.insecure`.
        let c = parse(r#"{"endpoint":"127.0.0.1:4317","tls":{"insecure":true}}"#).expect("parses");
        c.validate().expect("valid");
        assert_eq!((c.scheme(), c.grpc_uri().as_str()), (Scheme::Plaintext, "http://127.0.0.1:4317"));
        assert_eq!(invalid(r#"{"endpoint":"http://"}"#).field, "endpoint");
        assert_eq!(invalid(r#"{"endpoint":"grpc://a:1"}"#).field, "endpoint");
        assert_eq!(invalid(r#"{"endpoint":"no-port"}"#).field, "endpoint");
        // HTTP-only keys are refused on the gRPC exporter, with the reason.
        let e = invalid(r#"{"endpoint":"http://a:1","encoding":"json"}"#);
        assert!(e.field == "encoding" && e.message.contains("otlphttp"), "{e}");
    }

    fn http(json: &str) -> Result<OtlpExporterConfig, OtlpConfigError> {
        let mut c = parse(json).expect("parses");
        c.protocol = Protocol::Http;
        c.validate().map(|()| c)
    }

    #[test]
    fn otlphttp_takes_base_urls_and_signal_urls() {
        let c = http(r#"{"endpoint":"http://127.0.0.1:4318"}"#).expect("valid");
        assert_eq!(c.traces_url(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(c.http_encoding(), Encoding::Proto);
        let c = http(
            r#"{"traces_endpoint":"https://t.example/v1/traces","metrics_endpoint":"https://m.example/x","encoding":"json"}"#,
        )
        .expect("valid");
        assert_eq!(c.metrics_url(), "https://m.example/x");
        assert_eq!(c.scheme(), Scheme::Tls);
        assert_eq!(http(r#"{}"#).expect_err("needs an endpoint").field, "endpoint");
        assert_eq!(http(r#"{"endpoint":"127.0.0.1:4318"}"#).expect_err("needs a URL").field, "endpoint");
        let e = http(r#"{"endpoint":"http://a:1","traces_endpoint":"https://b:2/t"}"#).expect_err("mixed");
        assert_eq!(e.field, "traces_endpoint");
        // Grafana Cloud style header: capitalised name, Basic credentials.
        http(r#"{"endpoint":"https://otlp.example","headers":{"Authorization":"Basic dXNlcjpzM2NyZXQ="}}"#)
            .expect("valid");
        assert_eq!(
            http(r#"{"endpoint":"http://a:1","headers":{"Bad Name":"v"}}"#).expect_err("name").field,
            "headers"
        );
    }

    #[test]
    fn tls_settings_must_agree_with_the_scheme() {
        let e = invalid(r#"{"endpoint":"https://a:1","tls":{"insecure":true}}"#);
        assert_eq!(e.field, "tls.insecure");
        let e = invalid(r#"{"endpoint":"http://a:1","tls":{"ca_file":"/etc/hostname"}}"#);
        assert_eq!(e.field, "tls");
        let e = invalid(r#"{"endpoint":"a:1","tls":{"insecure":true,"insecure_skip_verify":true}}"#);
        assert_eq!(e.field, "tls");
        let e = invalid(r#"{"endpoint":"https://a:1","tls":{"cert_file":"/etc/hostname"}}"#);
        assert_eq!(e.field, "tls.cert_file");
        let e = invalid(r#"{"endpoint":"https://a:1","tls":{"ca_file":"/nonexistent/ca.pem"}}"#);
        assert_eq!(e.field, "tls.ca_file");
        // The client key goes through the secret reader: not world-readable.
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("client.key");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").expect("write");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
        let body = format!(
            r#"{{"endpoint":"https://a:1","tls":{{"cert_file":"/etc/hostname","key_file":{:?}}}}}"#,
            key.display().to_string()
        );
        let e = invalid(&body);
        assert_eq!(e.field, "tls.key_file", "{e}");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
        parse(&body).expect("parses").validate().expect("a 0600 key of ours is accepted");
        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(&key, &link).expect("symlink");
        let body = body.replace("client.key", "link.key");
        assert_eq!(invalid(&body).field, "tls.key_file", "a symlinked key is refused");
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
