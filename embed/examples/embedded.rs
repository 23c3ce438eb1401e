//! Embedding the liveness engine in a program that already reports
//! through OpenTelemetry.
//!
//! ```text
//! OTEL_SERVICE_NAME=my-runner OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 \
//!   cargo run --release --example embedded -- --socket /tmp/varta.sock [--threshold 300ms]
//! ```
//!
//! Agents beat on the socket (`varta beat --socket /tmp/varta.sock`, or the
//! `varta-client` crate); a stall, its diagnosis and its resolution become
//! spans of this program's tracer and the liveness metrics instruments of
//! its meter, exported over OTLP/gRPC under this program's `service.name`.
//! The OTLP exporters read only the standard `OTEL_EXPORTER_OTLP_*`
//! variables, the resource `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`,
//! the metric reader `OTEL_METRIC_EXPORT_INTERVAL`. Ctrl-C or SIGTERM stops
//! it: the engine shuts down (the socket file is removed), both providers
//! flush, and it exits 0.

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tokio::signal::unix::{SignalKind, signal};
use varta_embed::{Engine, EventKind, OpenTelemetry, TrackerConfig, TransportKind, VlpReceiverConfig};

/// How long the engine may take to stop.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

struct Args {
    socket: PathBuf,
    threshold: Duration,
}

fn args() -> Result<Args, String> {
    let mut socket = None;
    let mut threshold = Duration::from_secs(2);
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--socket" => socket = Some(PathBuf::from(value()?)),
            "--threshold" => {
                threshold = varta_embed::parse_duration(&value()?).map_err(|e| format!("--threshold: {e}"))?
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let socket = socket.ok_or("usage: embedded --socket PATH [--threshold 300ms]")?;
    Ok(Args { socket, threshold })
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("embedded: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let args = args()?;
    // The OTLP/gRPC exporters run on Tokio: their builders must be called
    // inside a runtime (they panic outside one), and the runtime must live
    // until the providers have shut down.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let (tracer_provider, meter_provider) = {
        let _inside = runtime.enter();
        let spans = opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?;
        let metrics = opentelemetry_otlp::MetricExporter::builder().with_tonic().build()?;
        (
            SdkTracerProvider::builder().with_batch_exporter(spans).build(),
            SdkMeterProvider::builder().with_periodic_exporter(metrics).build(),
        )
    };

    let engine = Engine::builder()
        .receiver(
            "vlp/uds",
            VlpReceiverConfig {
                transport: TransportKind::Uds,
                path: Some(args.socket.clone()),
                ..Default::default()
            },
        )
        .tracker(TrackerConfig { threshold: args.threshold, ..Default::default() })
        .on_incident(|incident| {
            let pid = incident.event.agent.map(|a| a.id.pid).unwrap_or_default();
            match incident.event.kind {
                EventKind::Stall { silence_ns, .. } => {
                    println!("embedded: pid {pid} stalled (silent {} ms)", silence_ns / 1_000_000)
                }
                EventKind::Resume { silence_ns, .. } => {
                    println!("embedded: pid {pid} resumed after {} ms", silence_ns / 1_000_000)
                }
                EventKind::Diagnosis { diagnosis, .. } => {
                    println!("embedded: pid {pid} diagnosed: {}", diagnosis.cause.label())
                }
                _ => {}
            }
        })
        .opentelemetry(
            OpenTelemetry::new()
                .tracer(tracer_provider.tracer("varta-embed"))
                .meter(meter_provider.meter("varta-embed")),
        )
        .start()?;
    println!("embedded: watching {} (threshold {:?})", args.socket.display(), args.threshold);

    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    })?;

    let stopped = engine.shutdown(SHUTDOWN_TIMEOUT);
    // Both block until exported: here, on the main thread, never on a
    // runtime worker; the runtime still runs the gRPC channel meanwhile.
    let traces = tracer_provider.shutdown();
    let metrics = meter_provider.shutdown();
    drop(runtime);
    traces?;
    metrics?;
    if !stopped.clean {
        return Err(format!("engine did not stop cleanly: {stopped:?}").into());
    }
    println!("embedded: stopped");
    Ok(())
}
