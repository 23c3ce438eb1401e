//! An OTLP/gRPC server inside the tests, built from the official protos
//! (`opentelemetry-proto`): it records every span and metric it receives
//! (with the resource each arrived under) so tests can assert exact
//! structure, and it can be killed and restarted at will.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::Metric;
use opentelemetry_proto::tonic::trace::v1::Span;
use tonic::codec::CompressionEncoding;

use crate::wait_for;

/// What the server received.
#[derive(Debug, Default)]
pub struct Received {
    pub spans: Vec<Span>,
    /// The resource attributes each span of `spans` arrived under.
    pub span_resources: Vec<Vec<KeyValue>>,
    /// The instrumentation scope of each span.
    pub span_scopes: Vec<String>,
    pub metrics: Vec<Metric>,
    /// The resource attributes each metric of `metrics` arrived under.
    pub metric_resources: Vec<Vec<KeyValue>>,
    /// Values of the `x-varta-tenant` header, per request.
    pub tenants: Vec<String>,
    /// Whether any request carried an `authorization` header (it must reach
    /// the backend; the test never prints it).
    pub authorized: bool,
}

/// Where the server records; cloned into each service.
#[derive(Debug, Clone, Default)]
pub struct Sink(Arc<Mutex<Received>>);

impl Sink {
    /// Reads what was received so far.
    pub fn with<T>(&self, f: impl FnOnce(&Received) -> T) -> T {
        f(&self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn note_headers(&self, md: &tonic::metadata::MetadataMap) {
        let mut r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = md.get("x-varta-tenant").and_then(|v| v.to_str().ok()) {
            r.tenants.push(t.to_owned());
        }
        r.authorized |= md.get("authorization").is_some();
    }
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.note_headers(request.metadata());
        let mut r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for rs in request.into_inner().resource_spans {
            let resource = rs.resource.unwrap_or_default();
            assert!(
                resource.attributes.iter().any(|kv| kv.key == "service.name"),
                "every resource names its service"
            );
            for ss in rs.scope_spans {
                let scope = ss.scope.map(|s| s.name).unwrap_or_default();
                for span in ss.spans {
                    r.spans.push(span);
                    r.span_resources.push(resource.attributes.clone());
                    r.span_scopes.push(scope.clone());
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.note_headers(request.metadata());
        let mut r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for rm in request.into_inner().resource_metrics {
            let resource = rm.resource.unwrap_or_default();
            for m in rm.scope_metrics.into_iter().flat_map(|sm| sm.metrics) {
                r.metrics.push(m);
                r.metric_resources.push(resource.attributes.clone());
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// A running in-test OTLP server on a fixed loopback port.
#[derive(Debug)]
pub struct OtlpServer {
    runtime: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl OtlpServer {
    /// Listening on loopback `port` (waiting for it to be free), recording into `sink`.
    pub fn start(port: u16, sink: &Sink) -> OtlpServer {
        Self::start_with_tls(port, sink, None)
    }

    /// Like [`OtlpServer::start`], serving TLS when `tls` is given.
    pub fn start_with_tls(
        port: u16,
        sink: &Sink,
        tls: Option<tonic::transport::ServerTlsConfig>,
    ) -> OtlpServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("test runtime");
        let listener = wait_for("the OTLP port to be free", || {
            runtime.block_on(tokio::net::TcpListener::bind(("127.0.0.1", port))).ok()
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let traces = TraceServiceServer::new(sink.clone())
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(64 << 20);
        let metrics = MetricsServiceServer::new(sink.clone())
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(64 << 20);
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).expect("server TLS config");
        }
        let task = runtime.spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = builder
                .add_service(traces)
                .add_service(metrics)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        OtlpServer { runtime, stop: Some(stop), task: Some(task) }
    }

    /// Kills the server: stops listening and drops every connection.
    pub fn kill(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.runtime.shutdown_timeout(Duration::from_secs(1));
    }
}
