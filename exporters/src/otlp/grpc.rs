//! OTLP/gRPC (`otlp`): the official OTLP service stubs over a tonic
//! channel. TLS, when the endpoint wants it, is done by [`super::tls`] —
//! the same setup as OTLP/HTTP — and tonic sees a plaintext channel.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{Ascii, MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use super::OtlpError;
use super::client::Failure;
use super::config::{Compression, OtlpExporterConfig, Scheme};
use super::tls;

fn classify(status: &tonic::Status) -> Failure {
    use tonic::Code::*;
    // The message may echo request metadata from some servers; keep the
    // code and the server's message only (never our headers).
    let text = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        Unavailable | DeadlineExceeded | ResourceExhausted | Aborted | Cancelled | OutOfRange | DataLoss => {
            Failure::retryable(text)
        }
        _ => Failure::Permanent(text),
    }
}

/// One gRPC channel (shared by the span and metric senders; tonic
/// channels multiplex).
#[derive(Debug, Clone)]
pub struct GrpcClient {
    traces: TraceServiceClient<Channel>,
    metrics: MetricsServiceClient<Channel>,
    headers: MetadataMap,
    timeout: Duration,
}

impl GrpcClient {
    /// Builds the (lazy) channel. Must run inside the Tokio runtime.
    pub fn connect(config: &OtlpExporterConfig) -> Result<GrpcClient, OtlpError> {
        let uri = config.grpc_uri();
        let target: hyper::Uri = uri.parse().map_err(|e| OtlpError::Endpoint(format!("{e}")))?;
        // tonic gets the plaintext form of the same authority; the
        // connector adds TLS when the endpoint asks for it.
        let plain = format!("http://{}", target.authority().map_or("", |a| a.as_str()));
        let endpoint = Endpoint::from_shared(plain)
            .map_err(|e| OtlpError::Endpoint(e.to_string()))?
            .timeout(config.timeout)
            .connect_timeout(config.timeout);
        let tls = match config.scheme() {
            Scheme::Tls => Some(tls::client_config(&config.tls, &[b"h2"])?),
            Scheme::Plaintext => None,
        };
        let channel = endpoint.connect_with_connector_lazy(tls::Connector { tls, target });
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
        Ok(GrpcClient { traces, metrics, headers, timeout: config.timeout })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_classified_as_the_spec_says() {
        assert!(matches!(classify(&tonic::Status::unavailable("down")), Failure::Retryable { .. }));
        assert!(matches!(classify(&tonic::Status::resource_exhausted("slow")), Failure::Retryable { .. }));
        assert!(matches!(classify(&tonic::Status::unauthenticated("key")), Failure::Permanent(_)));
        assert!(matches!(classify(&tonic::Status::invalid_argument("bad")), Failure::Permanent(_)));
    }
}
