//! OTLP/gRPC (`otlp`): the official OTLP service stubs over a tonic
//! channel for spans; metrics go through the same channel as protobuf
//! bodies encoded once per request ([`PreEncoded`]), so a retry or a large
//! fleet never re-builds or re-encodes the message. TLS, when the endpoint
//! wants it, is done by [`super::tls`] — the same setup as OTLP/HTTP — and
//! tonic sees a plaintext channel.

use std::time::Duration;

use bytes::{BufMut, Bytes};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{Ascii, MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use super::OtlpError;
use super::config::{Compression, OtlpExporterConfig, Scheme};
use super::retry::Failure;
use super::tls;

/// What a failed call means (the OTLP specification's gRPC rules).
/// `RESOURCE_EXHAUSTED` is retried only when the server says when, with a
/// `google.rpc.RetryInfo` in the status details (its delay honoured);
/// without it the server is out of something a retry will not bring back.
fn classify(status: &tonic::Status) -> Failure {
    use tonic::Code::*;
    // The message may echo request metadata from some servers; keep the
    // code and the server's message only (never our headers).
    let text = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        Unavailable | DeadlineExceeded | Aborted | Cancelled | OutOfRange | DataLoss => {
            Failure::Retryable { message: text, after: retry_delay(status.details()) }
        }
        ResourceExhausted => match retry_delay(status.details()) {
            Some(after) => Failure::Retryable { message: text, after: Some(after) },
            None => Failure::Permanent(text),
        },
        _ => Failure::Permanent(text),
    }
}

/// `google.rpc.Status` (`grpc-status-details-bin`), only the details.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(message, repeated, tag = "3")]
    details: Vec<RpcAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

const RETRY_INFO: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// The delay a server's `RetryInfo` asks for, if it sent one (a negative
/// or undecodable one counts as none).
fn retry_delay(details: &[u8]) -> Option<Duration> {
    let status = RpcStatus::decode(details).ok()?;
    let info = status.details.iter().find(|d| d.type_url == RETRY_INFO)?;
    let delay = RetryInfo::decode(info.value.as_slice()).ok()?.retry_delay?;
    let seconds = u64::try_from(delay.seconds).ok()?;
    let nanos = u32::try_from(delay.nanos).ok().filter(|n| *n < 1_000_000_000)?;
    Some(Duration::new(seconds, nanos))
}

/// One gRPC channel (shared by the span and metric senders; tonic
/// channels multiplex).
#[derive(Debug, Clone)]
pub struct GrpcClient {
    traces: TraceServiceClient<Channel>,
    metrics: tonic::client::Grpc<Channel>,
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
        let mut metrics = tonic::client::Grpc::new(channel);
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

    /// One attempt with a protobuf-encoded `ExportMetricsServiceRequest`;
    /// `Ok(rejected data points)`.
    pub async fn export_metrics(&mut self, body: Bytes) -> Result<u64, Failure> {
        self.metrics
            .ready()
            .await
            .map_err(|e| classify(&tonic::Status::unknown(format!("Service was not ready: {e}"))))?;
        let path = PathAndQuery::from_static(METRICS_EXPORT);
        match self.metrics.unary(self.request(body), path, PreEncoded).await {
            Ok(resp) => {
                let resp: ExportMetricsServiceResponse = resp.into_inner();
                Ok(resp.partial_success.map_or(0, |p| u64::try_from(p.rejected_data_points).unwrap_or(0)))
            }
            Err(status) => Err(classify(&status)),
        }
    }
}

/// The OTLP metrics service method.
const METRICS_EXPORT: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// A codec sending bytes that already are a protobuf message, and decoding
/// the service's answer.
#[derive(Debug, Clone, Copy, Default)]
pub struct PreEncoded;

/// Decodes `ExportMetricsServiceResponse`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResponseDecoder;

impl Codec for PreEncoded {
    type Encode = Bytes;
    type Decode = ExportMetricsServiceResponse;
    type Encoder = PreEncoded;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> PreEncoded {
        PreEncoded
    }

    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

impl Encoder for PreEncoded {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for ResponseDecoder {
    type Item = ExportMetricsServiceResponse;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, tonic::Status> {
        // The data was accepted; an answer we cannot read only loses the
        // partial-success count.
        Ok(Some(ExportMetricsServiceResponse::decode(src).unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_classified_as_the_spec_says() {
        assert!(matches!(classify(&tonic::Status::unavailable("down")), Failure::Retryable { .. }));
        // Without RetryInfo the server is out of something a retry will not bring back.
        assert!(matches!(classify(&tonic::Status::resource_exhausted("slow")), Failure::Permanent(_)));
        assert!(matches!(classify(&tonic::Status::unauthenticated("key")), Failure::Permanent(_)));
        assert!(matches!(classify(&tonic::Status::invalid_argument("bad")), Failure::Permanent(_)));
    }

    fn with_retry_info(code: tonic::Code, delay: Option<(i64, i32)>) -> tonic::Status {
        let details = RpcStatus {
            details: delay
                .map(|(seconds, nanos)| RpcAny {
                    type_url: RETRY_INFO.into(),
                    value: RetryInfo { retry_delay: Some(ProtoDuration { seconds, nanos }) }.encode_to_vec(),
                })
                .into_iter()
                .collect(),
        };
        tonic::Status::with_details(code, "slow down", details.encode_to_vec().into())
    }

    #[test]
    fn resource_exhausted_is_retried_only_with_retry_info_and_its_delay() {
        use tonic::Code::*;
        assert!(matches!(classify(&with_retry_info(ResourceExhausted, None)), Failure::Permanent(_)));
        assert_eq!(
            classify(&with_retry_info(ResourceExhausted, Some((2, 500_000_000)))),
            Failure::Retryable {
                message: "ResourceExhausted: slow down".into(),
                after: Some(Duration::from_millis(2500))
            }
        );
        assert!(matches!(
            classify(&with_retry_info(Unavailable, None)),
            Failure::Retryable { after: None, .. }
        ));
        assert!(matches!(
            classify(&with_retry_info(ResourceExhausted, Some((-1, 0)))),
            Failure::Permanent(_)
        ));
        assert!(matches!(classify(&with_retry_info(InvalidArgument, Some((1, 0)))), Failure::Permanent(_)));
        let garbage = tonic::Status::with_details(ResourceExhausted, "x", vec![0xff, 0x01].into());
        assert!(matches!(classify(&garbage), Failure::Permanent(_)));
    }
}
