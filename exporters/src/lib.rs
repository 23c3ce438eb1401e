//! Exporters: views of the processor's event stream.
//!
//! Every exporter runs on its own thread behind a bounded queue
//! ([`queue::ExporterQueue`]); the processor hands events to a [`Fanout`]
//! that never blocks: when an exporter's queue is full the *oldest* queued
//! event is dropped and counted, so a slow disk or backend can never slow
//! ingestion, and what is kept is the most recent. Incident events (stall,
//! resume, panic, status, eviction) wait in a lane of their own, so a flood
//! of beats or refusals cannot push them out.
//!
//! * [`file`]: varta-watch-compatible TSV event file with rotation.
//! * [`aggregate`]: the per-second budget that keeps floods of refusals
//!   from filling a disk or a log (file and debug exporters).
//! * [`debug`]: events as log lines.
//! * `prometheus` (feature `prometheus`): the pull endpoint (a view over
//!   snapshots, not an event consumer).
//! * `otlp` (feature `otlp`): metrics and stall-incident traces over
//!   OTLP/gRPC and OTLP/HTTP.
//! * `httpd` (feature `httpd`, implied by `prometheus`): the small bounded
//!   HTTP server every endpoint uses.
//! * `trim`: returning memory freed by exports to the kernel.
//! * [`view`]: what metrics views read (from `varta-telemetry`, which also
//!   holds the transport-free shape of spans and metric points).
//!
//! Layers: the core here (the [`Exporter`] trait, [`queue`], [`Fanout`],
//! file and debug exporters) imports no transport; the transports sit
//! behind cargo features, so a program that only embeds the engine
//! compiles none of tonic, hyper, rustls or prometheus.

pub mod aggregate;
pub mod debug;
pub mod fanout;
pub mod file;
#[cfg(feature = "httpd")]
pub mod httpd;
#[cfg(feature = "otlp")]
pub mod otlp;
#[cfg(feature = "prometheus")]
pub mod prometheus;
pub mod queue;
#[cfg(any(feature = "otlp", feature = "prometheus"))]
mod trim;

pub use debug::{DebugExporter, DebugExporterConfig};
pub use fanout::Fanout;
pub use file::{FileExporter, FileExporterConfig};
#[cfg(feature = "otlp")]
pub use otlp::{OtlpExporter, OtlpExporterConfig};
pub use queue::{ExporterQueue, ExporterStats, ExporterTelemetry};
pub use varta_telemetry::view;
pub use view::{CollectorView, LiveView, PipelineView};

use varta_processor::Event;

/// One destination for events. Implementations run on the exporter's own
/// thread and may block (on a disk, a socket); the queue in front absorbs it.
pub trait Exporter: Send + 'static {
    /// Whether per-beat events should be delivered (they dominate volume).
    fn wants_beats(&self) -> bool;
    /// Writes or buffers one event.
    fn export(&mut self, event: &Event) -> std::io::Result<()>;

    /// Writes or buffers one event offered by the `source`-th pipeline this
    /// exporter serves (see [`ExporterQueue::share_as`]). Exporters that
    /// read per-pipeline state (attributes, snapshots) use `source`.
    fn export_from(&mut self, source: usize, event: &Event) -> std::io::Result<()> {
        let _ = source;
        self.export(event)
    }
    /// Makes everything exported so far durable/visible. Called whenever the
    /// queue runs empty.
    fn flush(&mut self) -> std::io::Result<()>;

    /// Writes whatever is still held back (e.g. pending summaries) and
    /// flushes; called once, when the exporter stops.
    fn finish(&mut self) -> std::io::Result<()> {
        self.flush()
    }
}
