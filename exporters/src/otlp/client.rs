//! The connection to the OTLP backend, whichever transport, and the retry
//! policy: the one sending core behind both `otlp` (gRPC, [`super::grpc`])
//! and `otlphttp` (HTTP, [`super::http`]).
//!
//! Promises: connections are lazy and reconnect by themselves, so a
//! backend that is absent at start or restarts mid-run needs nothing from
//! us but the next export; every call carries the configured headers
//! (marked sensitive, never logged), compression and deadline; a retryable
//! failure (gRPC `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`,
//! `ABORTED`, `CANCELLED`, `OUT_OF_RANGE`, `DATA_LOSS`; HTTP 429, 502, 503,
//! 504 or no connection, as the OTLP specification lists) is retried with
//! exponential backoff — waiting at least what the server's `Retry-After`
//! asks — until `retry_on_failure.max_elapsed_time`, or until the exporter
//! is closing (see [`super::retry`], the leaf both transports use).

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use super::OtlpError;
use super::config::{OtlpExporterConfig, Protocol};
use super::grpc::GrpcClient;
pub use super::http::EncodeBuffers;
use super::http::HttpClient;
use super::retry::Failure;

/// One backend connection (cloned by the span and metric senders).
#[derive(Debug, Clone)]
// Two per exporter, moved rarely: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Client {
    Grpc(GrpcClient),
    Http(HttpClient),
}

impl Client {
    /// Builds the (lazy) connection. Must run inside the Tokio runtime.
    pub fn connect(config: &OtlpExporterConfig) -> Result<Client, OtlpError> {
        match config.protocol {
            Protocol::Grpc => GrpcClient::connect(config).map(Client::Grpc),
            Protocol::Http => HttpClient::new(config).map(Client::Http),
        }
    }

    /// A client for a second sender: same settings; over HTTP its own
    /// connection (gRPC channels multiplex, so they are shared).
    pub fn fork(&self) -> Client {
        match self {
            Client::Grpc(c) => Client::Grpc(c.clone()),
            Client::Http(c) => Client::Http(c.fork()),
        }
    }

    /// One attempt. `Ok(rejected)`: the backend took the request and
    /// rejected that many spans (partial success).
    pub async fn export_traces(&mut self, req: ExportTraceServiceRequest) -> Result<u64, Failure> {
        match self {
            Client::Grpc(c) => c.export_traces(req).await,
            Client::Http(c) => c.export_traces(req).await,
        }
    }

    /// One attempt with a body from [`Self::encode_metrics`] (cloning it for
    /// a retry shares the bytes); `Ok(rejected data points)`.
    pub async fn export_metrics(&mut self, body: Bytes) -> Result<u64, Failure> {
        match self {
            Client::Grpc(c) => c.export_metrics(body).await,
            Client::Http(c) => c.export_metrics(body).await,
        }
    }

    /// `req` encoded once as this transport sends it (gRPC: protobuf, which
    /// tonic frames and compresses; HTTP: protobuf or JSON, then gzip),
    /// built in `buffers`.
    pub fn encode_metrics(
        &self,
        req: &ExportMetricsServiceRequest,
        buffers: &mut EncodeBuffers,
    ) -> Result<Bytes, Failure> {
        match self {
            Client::Grpc(_) => {
                buffers.out.reserve(req.encoded_len());
                req.encode(&mut buffers.out)
                    .map_err(|e| Failure::Permanent(format!("cannot encode OTLP: {e}")))?;
                Ok(buffers.out.split().freeze())
            }
            Client::Http(c) => c.encode_into(req, buffers),
        }
    }
}
