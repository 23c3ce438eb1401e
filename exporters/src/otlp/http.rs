//! OTLP/HTTP (`otlphttp`): `POST` of the same protobuf messages as gRPC,
//! encoded as `application/x-protobuf` or OTLP/JSON, to
//! `{endpoint}/v1/traces` and `{endpoint}/v1/metrics` (or the configured
//! per-signal URLs), over HTTP/1.1 with one kept-alive connection per
//! sender.
//!
//! Promises (the rest is the shared core, [`super::client`]):
//! * Status codes as the OTLP/HTTP specification says: 2xx is success (a
//!   partial-success body is decoded and its rejections counted); 429, 502,
//!   503 and 504 are retryable and a `Retry-After` of whole seconds is
//!   honoured; every other status is permanent. A connection that cannot
//!   be made, breaks, or outlasts `timeout` is retryable.
//! * Headers are marked sensitive and never appear in a log or error; an
//!   error quotes at most 256 bytes of the server's answer, escaped.
//! * Bodies are gzip-compressed unless `compression: none`.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use flate2::Compression as Level;
use flate2::write::GzEncoder;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_ENCODING, CONTENT_TYPE, HOST, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use rustls::ClientConfig;

use super::OtlpError;
use super::config::{Compression, Encoding, OtlpExporterConfig, Scheme};
use super::retry::Failure;
use super::tls;

/// Longest excerpt of a server's error answer put into a message.
const MAX_ERROR_EXCERPT: usize = 256;
/// Largest response body read (a partial-success answer is tiny).
const MAX_RESPONSE: usize = 64 << 10;

/// One OTLP/HTTP sender. Clones share the settings and the kept-alive
/// connection (one request at a time on it); [`Self::fork`] makes a
/// sender with a connection of its own.
#[derive(Debug, Clone)]
pub struct HttpClient {
    traces: Uri,
    metrics: Uri,
    headers: Arc<HeaderMap>,
    encoding: Encoding,
    gzip: bool,
    timeout: Duration,
    tls: Option<Arc<ClientConfig>>,
    connection: Arc<tokio::sync::Mutex<Option<Connection>>>,
}

/// A kept-alive HTTP/1.1 connection to one authority.
#[derive(Debug)]
struct Connection {
    authority: String,
    sender: SendRequest<Full<Bytes>>,
}

impl HttpClient {
    pub fn new(config: &OtlpExporterConfig) -> Result<HttpClient, OtlpError> {
        let parse = |url: String| -> Result<Uri, OtlpError> {
            url.parse().map_err(|e| OtlpError::Endpoint(format!("{url:?}: {e}")))
        };
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers.0 {
            let key = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| OtlpError::Endpoint(format!("header name {name:?} is invalid")))?;
            let mut value = HeaderValue::from_str(value)
                .map_err(|_| OtlpError::Endpoint(format!("the value of header {name:?} is invalid")))?;
            value.set_sensitive(true);
            headers.insert(key, value);
        }
        let tls = match config.scheme() {
            Scheme::Tls => Some(tls::client_config(&config.tls, &[b"http/1.1"])?),
            Scheme::Plaintext => None,
        };
        Ok(HttpClient {
            traces: parse(config.traces_url())?,
            metrics: parse(config.metrics_url())?,
            headers: Arc::new(headers),
            encoding: config.http_encoding(),
            gzip: config.compression == Compression::Gzip,
            timeout: config.timeout,
            tls,
            connection: Arc::default(),
        })
    }

    /// The same settings with a connection of its own (the span and the
    /// metric sender each get one, so a large metrics export never holds
    /// up a stall span).
    pub fn fork(&self) -> HttpClient {
        HttpClient { connection: Arc::default(), ..self.clone() }
    }

    /// One attempt. `Ok(rejected)`: the backend took the request and
    /// rejected that many spans (partial success).
    pub async fn export_traces(&self, req: ExportTraceServiceRequest) -> Result<u64, Failure> {
        let body = self.encode(&req)?;
        let url = self.traces.clone();
        let answer = self.post(&url, Bytes::from(body)).await?;
        Ok(self.partial_success(&answer, "rejectedSpans", |r: ExportTraceServiceResponse| {
            r.partial_success.map(|p| (p.rejected_spans, p.error_message))
        }))
    }

    /// One attempt with a body from [`Self::encode_into`]; `Ok(rejected data points)`.
    pub async fn export_metrics(&self, body: Bytes) -> Result<u64, Failure> {
        let url = self.metrics.clone();
        let answer = self.post(&url, body).await?;
        Ok(self.partial_success(&answer, "rejectedDataPoints", |r: ExportMetricsServiceResponse| {
            r.partial_success.map(|p| (p.rejected_data_points, p.error_message))
        }))
    }

    /// The count a 2xx answer's partial success rejected (0 when it has
    /// none or cannot be read: the data was accepted), its message logged.
    /// OTLP/JSON writes 64-bit integers as strings (`"rejectedSpans":"5"`),
    /// which the proto crate's serde does not read: JSON is read by hand.
    fn partial_success<M: Message + Default>(
        &self,
        body: &[u8],
        count_field: &str,
        of_proto: impl Fn(M) -> Option<(i64, String)>,
    ) -> u64 {
        if body.is_empty() {
            return 0;
        }
        let (rejected, message) = match self.encoding {
            Encoding::Proto => M::decode(body).ok().and_then(of_proto).unwrap_or_default(),
            Encoding::Json => json_partial_success(body, count_field),
        };
        if rejected > 0 || !message.is_empty() {
            tracing::warn!(
                rejected,
                message = %excerpt(message.as_bytes()),
                "the OTLP backend accepted the export only in part"
            );
        }
        u64::try_from(rejected).unwrap_or(0)
    }

    /// `message` as this exporter sends it (encoding, then gzip), built in
    /// `buffers` (reused from request to request).
    pub fn encode_into<M: Message + serde::Serialize>(
        &self,
        message: &M,
        buffers: &mut EncodeBuffers,
    ) -> Result<Bytes, Failure> {
        let raw = &mut buffers.raw;
        raw.clear();
        match self.encoding {
            Encoding::Proto => {
                message.encode(raw).map_err(|e| Failure::Permanent(format!("cannot encode OTLP: {e}")))?
            }
            Encoding::Json => write_json(&mut *raw, message)?,
        }
        let out = &mut buffers.out;
        if !self.gzip {
            out.reserve(raw.len());
            out.extend_from_slice(raw);
            return Ok(out.split().freeze());
        }
        out.reserve(raw.len() / 4);
        let mut gz = GzEncoder::new(std::mem::take(out).writer(), Level::fast());
        gz.write_all(raw).map_err(|e| Failure::Permanent(format!("gzip: {e}")))?;
        *out = gz.finish().map_err(|e| Failure::Permanent(format!("gzip: {e}")))?.into_inner();
        Ok(out.split().freeze())
    }

    fn encode<M: Message + serde::Serialize>(&self, message: &M) -> Result<Vec<u8>, Failure> {
        let raw = match self.encoding {
            Encoding::Proto => message.encode_to_vec(),
            Encoding::Json => {
                let mut raw = Vec::new();
                write_json(&mut raw, message)?;
                raw
            }
        };
        if !self.gzip {
            return Ok(raw);
        }
        let mut gz = GzEncoder::new(Vec::with_capacity(raw.len() / 4), Level::fast());
        gz.write_all(&raw).and_then(|()| gz.finish()).map_err(|e| Failure::Permanent(format!("gzip: {e}")))
    }

    async fn post(&self, url: &Uri, body: Bytes) -> Result<Bytes, Failure> {
        let slot = self.connection.clone();
        let mut connection = slot.lock().await;
        match tokio::time::timeout(self.timeout, self.post_once(&mut connection, url, body)).await {
            Ok(result) => result,
            Err(_) => {
                // The connection may hold half a request: start afresh.
                *connection = None;
                Err(Failure::retryable(format!("no answer within {:?}", self.timeout)))
            }
        }
    }

    async fn post_once(
        &self,
        connection: &mut Option<Connection>,
        url: &Uri,
        body: Bytes,
    ) -> Result<Bytes, Failure> {
        let authority = url.authority().map_or_else(String::new, |a| a.as_str().to_owned());
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(url.path_and_query().map_or("/", |p| p.as_str()))
            .header(HOST, authority.as_str())
            .header(
                CONTENT_TYPE,
                match self.encoding {
                    Encoding::Proto => "application/x-protobuf",
                    Encoding::Json => "application/json",
                },
            )
            .header(hyper::header::USER_AGENT, concat!("varta-collector/", env!("CARGO_PKG_VERSION")));
        if self.gzip {
            request = request.header(CONTENT_ENCODING, "gzip");
        }
        let mut request = request.body(Full::new(body)).map_err(|e| Failure::Permanent(e.to_string()))?;
        for (k, v) in self.headers.iter() {
            request.headers_mut().insert(k.clone(), v.clone());
        }
        let sender = self.sender(connection, url, &authority).await?;
        let response = match sender.send_request(request).await {
            Ok(r) => r,
            Err(e) => {
                *connection = None;
                return Err(Failure::retryable(format!("request failed: {e}")));
            }
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = read_limited(response.into_body()).await;
        let body = match body {
            Ok(b) => b,
            // The data was taken (2xx): an answer too large or cut off only
            // loses its partial-success count — never send the data again.
            Err(e) if status.is_success() => {
                *connection = None;
                tracing::debug!("an accepted export's answer could not be read: {e}");
                return Ok(Bytes::new());
            }
            Err(e) => {
                *connection = None;
                return Err(Failure::retryable(format!("reading the answer failed: {e}")));
            }
        };
        if status.is_success() {
            return Ok(body);
        }
        let text = format!("HTTP {}: {}", status.as_u16(), excerpt(&body));
        Err(match status {
            StatusCode::TOO_MANY_REQUESTS
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT => Failure::Retryable { message: text, after: retry_after },
            _ => Failure::Permanent(text),
        })
    }

    /// The kept connection when it is still good, else a new one.
    async fn sender<'c>(
        &self,
        connection: &'c mut Option<Connection>,
        url: &Uri,
        authority: &str,
    ) -> Result<&'c mut SendRequest<Full<Bytes>>, Failure> {
        let reusable = match connection {
            Some(c) => c.authority == authority && c.sender.ready().await.is_ok(),
            None => false,
        };
        if !reusable {
            *connection = Some(self.open(url, authority).await?);
        }
        match connection {
            Some(c) => Ok(&mut c.sender),
            None => Err(Failure::retryable("no connection")),
        }
    }

    async fn open(&self, url: &Uri, authority: &str) -> Result<Connection, Failure> {
        let tls = if url.scheme_str() == Some("https") { self.tls.as_ref() } else { None };
        let stream = tls::connect(url, tls)
            .await
            .map_err(|e| Failure::retryable(format!("cannot connect to {authority}: {e}")))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Failure::retryable(format!("HTTP handshake with {authority} failed: {e}")))?;
        // Drives the connection; ends when it closes or the sender is dropped.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Connection { authority: authority.to_owned(), sender })
    }
}

/// The buffers a metrics collection encodes its requests into, kept from
/// request to request and export to export: a request's bytes are cut off
/// `out` and handed to the sender; once the sender has dropped them the
/// allocation is taken back by the next `reserve` (until then the next
/// request gets a new one), so encoding costs a few requests' bytes,
/// never the fleet's.
#[derive(Debug, Default)]
pub struct EncodeBuffers {
    /// Uncompressed message (OTLP/HTTP, before gzip).
    pub(super) raw: Vec<u8>,
    pub(super) out: BytesMut,
}

/// `partialSuccess` of an OTLP/JSON answer: the rejected count (a string,
/// as OTLP/JSON writes 64-bit integers, or a number) and `errorMessage`.
fn json_partial_success(body: &[u8], count_field: &str) -> (i64, String) {
    let Ok(answer) = serde_json::from_slice::<serde_json::Value>(body) else { return (0, String::new()) };
    let Some(partial) = answer.get("partialSuccess") else { return (0, String::new()) };
    let rejected = match partial.get(count_field) {
        Some(serde_json::Value::String(s)) => s.parse().unwrap_or(0),
        Some(v) => v.as_i64().unwrap_or(0),
        None => 0,
    };
    let message = partial.get("errorMessage").and_then(|m| m.as_str()).unwrap_or_default().to_owned();
    (rejected, message)
}

/// `message` in the OTLP/JSON mapping. The proto crate's serde output
/// writes an absent optional field (a histogram's `min`/`max`/`sum`, an
/// unset message) as `null`, which the OTLP/JSON mapping does not allow and
/// the Collector refuses (`ReadUint64: unsupported value type`); absent
/// fields are left out instead. Once an export interval, so the detour
/// through a JSON tree costs nothing that matters.
fn write_json<M: serde::Serialize>(raw: &mut Vec<u8>, message: &M) -> Result<(), Failure> {
    let encoding = |e: serde_json::Error| Failure::Permanent(format!("cannot encode OTLP/JSON: {e}"));
    let mut tree = serde_json::to_value(message).map_err(encoding)?;
    drop_nulls(&mut tree);
    serde_json::to_writer(raw, &tree).map_err(encoding)
}

fn drop_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(fields) => {
            fields.retain(|_, v| !v.is_null());
            fields.values_mut().for_each(drop_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// `Retry-After`: delay-seconds, or an HTTP-date (RFC 9110 §10.2.3; a date
/// already past means "now"). Any value is answered: whether it fits the
/// retry budget is [`super::retry::Backoff::allows`]'s question.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = v.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO))
}

async fn read_limited(body: hyper::body::Incoming) -> Result<Bytes, String> {
    let limited = http_body_util::Limited::new(body, MAX_RESPONSE);
    limited.collect().await.map(|c| c.to_bytes()).map_err(|e| e.to_string())
}

/// The start of a server's answer, printable.
fn excerpt(body: &[u8]) -> String {
    let cut = &body[..body.len().min(MAX_ERROR_EXCERPT)];
    String::from_utf8_lossy(cut).escape_debug().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("18446744073709551615"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(u64::MAX)));
        // A date in the past: retry now.
        h.insert(RETRY_AFTER, HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"));
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&later).expect("header"));
        let wait = retry_after(&h).expect("a date");
        assert!(wait > Duration::from_secs(100) && wait <= Duration::from_secs(120), "{wait:?}");
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn json_partial_success_reads_counts_written_as_strings() {
        let body = br#"{"partialSuccess":{"rejectedSpans":"5","errorMessage":"2 spans too old"}}"#;
        assert_eq!(json_partial_success(body, "rejectedSpans"), (5, "2 spans too old".into()));
        let body = br#"{"partialSuccess":{"rejectedDataPoints":7}}"#;
        assert_eq!(json_partial_success(body, "rejectedDataPoints"), (7, String::new()));
        assert_eq!(json_partial_success(b"{}", "rejectedSpans"), (0, String::new()));
        assert_eq!(json_partial_success(b"not json", "rejectedSpans"), (0, String::new()));
    }

    #[test]
    fn error_excerpts_are_short_and_escaped() {
        let long = vec![b'x'; 1000];
        assert_eq!(excerpt(&long).len(), MAX_ERROR_EXCERPT);
        assert_eq!(excerpt(b"bad\nline\x1b[31m"), "bad\\nline\\u{1b}[31m");
    }

    /// The Collector answered 400 to every metrics request carrying the
    /// fleet histogram: `"min":null,"max":null`.
    #[test]
    fn json_leaves_absent_fields_out_instead_of_writing_null() {
        use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
        use opentelemetry_proto::tonic::metrics::v1::{
            Histogram, HistogramDataPoint, Metric, ResourceMetrics, ScopeMetrics, metric,
        };
        let point = HistogramDataPoint {
            count: 2,
            sum: Some(1.5),
            bucket_counts: vec![1, 1],
            explicit_bounds: vec![1.0],
            ..Default::default()
        };
        let req = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: "varta.stall.duration".into(),
                        data: Some(metric::Data::Histogram(Histogram {
                            data_points: vec![point],
                            aggregation_temporality: 2,
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let mut raw = Vec::new();
        write_json(&mut raw, &req).unwrap();
        let text = String::from_utf8(raw).unwrap();
        assert!(!text.contains("null"), "{text}");
        assert!(text.contains(r#""sum":1.5"#), "{text}");
        assert!(!text.contains(r#""min""#) && !text.contains(r#""max""#), "{text}");
        // And the crate reads back what we wrote.
        let back: ExportMetricsServiceRequest = serde_json::from_str(&text).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn urls_follow_the_collector() {
        let c = OtlpExporterConfig {
            protocol: super::super::config::Protocol::Http,
            endpoint: "https://otlp.example.com/otlp/".into(),
            ..Default::default()
        };
        assert_eq!(c.traces_url(), "https://otlp.example.com/otlp/v1/traces");
        assert_eq!(c.metrics_url(), "https://otlp.example.com/otlp/v1/metrics");
        let c = OtlpExporterConfig { traces_endpoint: Some("http://a:1/t".into()), ..c };
        assert_eq!(c.traces_url(), "http://a:1/t");
    }
}
