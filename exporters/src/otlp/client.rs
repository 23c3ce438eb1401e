//! The gRPC connection to the OTLP backend and the retry policy.
//!
//! Promises: the channel is lazy and reconnects by itself, so a backend
//! that is absent at start or restarts mid-run needs nothing from us but
//! the next export; every call carries the configured headers (marked
//! sensitive, never logged), compression and deadline; a retryable failure
//! (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `ABORTED`,
//! `CANCELLED`, `OUT_OF_RANGE`, `DATA_LOSS`, as the OTLP specification
//! lists) is retried with exponential backoff until
//! `retry_on_failure.max_elapsed_time`, or until the exporter is closing.

use std::future::Future;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{Ascii, MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::OtlpError;
use super::config::{Compression, OtlpExporterConfig, RetryConfig, Scheme};

/// What a failed call means for the data it carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Worth trying again later (backend down, overloaded, slow).
    Retryable(String),
    /// The backend will never take it (bad request, unauthenticated …).
    Permanent(String),
}

impl Failure {
    pub fn message(&self) -> &str {
        match self {
            Failure::Retryable(m) | Failure::Permanent(m) => m,
        }
    }
}

fn classify(status: &tonic::Status) -> Failure {
    use tonic::Code::*;
    // The message may echo request metadata from some servers; keep the
    // code and the server's message only (never our headers).
    let text = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        Unavailable | DeadlineExceeded | ResourceExhausted | Aborted | Cancelled | OutOfRange | DataLoss => {
            Failure::Retryable(text)
        }
        _ => Failure::Permanent(text),
    }
}

/// One backend connection (shared by the span and metric senders; tonic
/// channels multiplex).
#[derive(Debug, Clone)]
pub struct Client {
    traces: TraceServiceClient<Channel>,
    metrics: MetricsServiceClient<Channel>,
    headers: MetadataMap,
    timeout: Duration,
}

impl Client {
    /// Builds the (lazy) channel. Must run inside the Tokio runtime.
    pub fn connect(config: &OtlpExporterConfig) -> Result<Client, OtlpError> {
        let mut endpoint = Endpoint::from_shared(config.endpoint.clone())
            .map_err(|e| OtlpError::Endpoint(e.to_string()))?
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .tcp_nodelay(true);
        if config.scheme() == Scheme::Tls {
            let mut tls = ClientTlsConfig::new();
            tls = match &config.tls.ca_file {
                Some(ca) => tls.ca_certificate(Certificate::from_pem(read(ca)?)),
                None => tls.with_native_roots(),
            };
            if let (Some(cert), Some(key)) = (&config.tls.cert_file, &config.tls.key_file) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| OtlpError::Tls(e.to_string()))?;
        }
        let channel = endpoint.connect_lazy();
        let mut traces = TraceServiceClient::new(channel.clone());
        let mut metrics = MetricsServiceClient::new(channel);
        if config.compression == Compression::Gzip {
            traces = traces
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip);
            metrics = metrics
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip);
        }
        let mut headers = MetadataMap::new();
        for (name, value) in &config.headers.0 {
            let key = MetadataKey::<Ascii>::from_bytes(name.as_bytes())
                .map_err(|_| OtlpError::Endpoint(format!("header name {name:?} is invalid")))?;
            let mut value = MetadataValue::<Ascii>::try_from(value.as_str())
                .map_err(|_| OtlpError::Endpoint(format!("the value of header {name:?} is invalid")))?;
            value.set_sensitive(true);
            headers.insert(key, value);
        }
        Ok(Client { traces, metrics, headers, timeout: config.timeout })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        *r.metadata_mut() = self.headers.clone();
        r.set_timeout(self.timeout);
        r
    }

    /// One attempt. `Ok(rejected)`: the backend took the request and
    /// rejected that many spans (partial success).
    pub async fn export_traces(&mut self, req: ExportTraceServiceRequest) -> Result<u64, Failure> {
        let r = self.request(req);
        match self.traces.export(r).await {
            Ok(resp) => Ok(resp
                .into_inner()
                .partial_success
                .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0))),
            Err(status) => Err(classify(&status)),
        }
    }

    /// One attempt; `Ok(rejected data points)`.
    pub async fn export_metrics(&mut self, req: ExportMetricsServiceRequest) -> Result<u64, Failure> {
        let r = self.request(req);
        match self.metrics.export(r).await {
            Ok(resp) => Ok(resp
                .into_inner()
                .partial_success
                .map_or(0, |p| u64::try_from(p.rejected_data_points).unwrap_or(0))),
            Err(status) => Err(classify(&status)),
        }
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, OtlpError> {
    std::fs::read(path).map_err(|e| OtlpError::Tls(format!("cannot read {}: {e}", path.display())))
}

/// Exponential backoff of one batch.
#[derive(Debug)]
pub struct Backoff {
    policy: RetryConfig,
    next: Duration,
    started: Instant,
}

impl Backoff {
    pub fn new(policy: RetryConfig) -> Backoff {
        Backoff { policy, next: policy.initial_interval, started: Instant::now() }
    }

    /// The wait before the next attempt, or `None` when it is time to give up.
    pub fn next_wait(&mut self) -> Option<Duration> {
        if !self.policy.enabled {
            return None;
        }
        let elapsed = self.started.elapsed();
        if elapsed >= self.policy.max_elapsed_time {
            return None;
        }
        let wait = self.next.min(self.policy.max_elapsed_time - elapsed);
        self.next = (self.next * 2).min(self.policy.max_interval);
        Some(wait)
    }
}

/// Runs `attempt` until it succeeds, fails permanently, the backoff gives
/// up, or `stop` resolves (the exporter is closing: one last attempt was
/// made). Calls `on_retry` before each wait.
pub async fn with_retry<T, F, Fut, S, SF>(
    policy: RetryConfig,
    mut attempt: F,
    mut stop: S,
    mut on_retry: impl FnMut(&Failure),
) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
    S: FnMut() -> SF,
    SF: Future<Output = ()>,
{
    let mut backoff = Backoff::new(policy);
    loop {
        let failure = match attempt().await {
            Ok(v) => return Ok(v),
            Err(f @ Failure::Permanent(_)) => return Err(f),
            Err(f) => f,
        };
        let Some(wait) = backoff.next_wait() else { return Err(failure) };
        on_retry(&failure);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop() => return Err(failure),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_gives_up() {
        let mut b = Backoff::new(RetryConfig {
            enabled: true,
            initial_interval: Duration::from_millis(100),
            max_interval: Duration::from_millis(300),
            max_elapsed_time: Duration::from_secs(3600),
        });
        let waits: Vec<_> = (0..4).filter_map(|_| b.next_wait()).collect();
        assert_eq!(waits, [100, 200, 300, 300].map(Duration::from_millis));
        let mut off = Backoff::new(RetryConfig { enabled: false, ..RetryConfig::default() });
        assert_eq!(off.next_wait(), None);
        let mut expired =
            Backoff::new(RetryConfig { max_elapsed_time: Duration::ZERO, ..RetryConfig::default() });
        assert_eq!(expired.next_wait(), None);
    }

    #[test]
    fn codes_are_classified_as_the_spec_says() {
        assert!(matches!(classify(&tonic::Status::unavailable("down")), Failure::Retryable(_)));
        assert!(matches!(classify(&tonic::Status::resource_exhausted("slow")), Failure::Retryable(_)));
        assert!(matches!(classify(&tonic::Status::unauthenticated("key")), Failure::Permanent(_)));
        assert!(matches!(classify(&tonic::Status::invalid_argument("bad")), Failure::Permanent(_)));
    }
}
