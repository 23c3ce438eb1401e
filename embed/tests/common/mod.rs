//! What the façade tests share: the host's SDK set up with in-memory
//! exporters, and bounded polling.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Key, KeyValue, Value};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use varta_embed::OpenTelemetry;

/// A UDS receiver on `path`, the engine's defaults otherwise.
pub fn uds(path: &Path) -> varta_embed::VlpReceiverConfig {
    varta_embed::VlpReceiverConfig {
        transport: varta_embed::TransportKind::Uds,
        path: Some(path.to_owned()),
        ..Default::default()
    }
}

/// Upper bound for anything a test waits for (generous for slow machines).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `f` until it returns Some, or panics after [`PATIENCE`].
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A host program's SDK: spans and metrics kept in memory.
pub struct Host {
    pub tracer_provider: SdkTracerProvider,
    pub spans: InMemorySpanExporter,
    pub meter_provider: SdkMeterProvider,
    pub metrics: InMemoryMetricExporter,
}

impl Host {
    pub fn new() -> Host {
        let spans = InMemorySpanExporter::default();
        let metrics = InMemoryMetricExporter::default();
        Host {
            tracer_provider: SdkTracerProvider::builder().with_simple_exporter(spans.clone()).build(),
            spans,
            meter_provider: SdkMeterProvider::builder()
                .with_reader(PeriodicReader::builder(metrics.clone()).build())
                .build(),
            metrics,
        }
    }

    /// The adapter on this host's tracer and meter.
    pub fn telemetry(&self) -> OpenTelemetry {
        OpenTelemetry::new()
            .tracer(self.tracer_provider.tracer("varta-embed-test"))
            .meter(self.meter_provider.meter("varta-embed-test"))
    }

    pub fn finished_spans(&self) -> Vec<SpanData> {
        self.spans.get_finished_spans().expect("in-memory spans")
    }

    /// Collects now and returns that collection.
    pub fn collect(&self) -> ResourceMetrics {
        self.metrics.reset();
        self.meter_provider.force_flush().expect("collect");
        let mut all = self.metrics.get_finished_metrics().expect("in-memory metrics");
        all.pop().expect("one collection")
    }
}

/// The `u64` value of the point of metric `name` whose attributes include
/// every one of `with`.
pub fn value(rm: &ResourceMetrics, name: &str, with: &[KeyValue]) -> Option<u64> {
    let m = rm.scope_metrics().flat_map(|s| s.metrics()).find(|m| m.name() == name)?;
    let has = |attrs: &mut dyn Iterator<Item = &KeyValue>| {
        let attrs: Vec<&KeyValue> = attrs.collect();
        with.iter().all(|w| attrs.contains(&w))
    };
    match m.data() {
        AggregatedMetrics::U64(MetricData::Sum(s)) => {
            s.data_points().find(|p| has(&mut p.attributes())).map(|p| p.value())
        }
        AggregatedMetrics::U64(MetricData::Gauge(g)) => {
            g.data_points().find(|p| has(&mut p.attributes())).map(|p| p.value())
        }
        _ => None,
    }
}

/// Count, sum and bucket bounds of the histogram `name`'s point with `with`.
pub fn histogram(rm: &ResourceMetrics, name: &str, with: &[KeyValue]) -> Option<(u64, f64, Vec<f64>)> {
    let m = rm.scope_metrics().flat_map(|s| s.metrics()).find(|m| m.name() == name)?;
    let AggregatedMetrics::F64(MetricData::Histogram(h)) = m.data() else { return None };
    let p = h.data_points().find(|p| with.iter().all(|w| p.attributes().any(|a| a == w)))?;
    Some((p.count(), p.sum(), p.bounds().collect()))
}

/// The value of attribute `key` of `span`.
pub fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes.iter().find(|kv| kv.key == Key::from(key.to_owned())).map(|kv| &kv.value)
}

/// A temporary directory, removed on drop.
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    pub fn new() -> TempDir {
        TempDir(tempfile::tempdir().expect("tempdir"))
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

/// Writes an owner-only key file holding `bytes` in hex.
pub fn key_file(dir: &TempDir, name: &str, bytes: &[u8; 32]) -> PathBuf {
    let p = dir.join(name);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&p, format!("{hex}\n")).expect("write key");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    p
}
