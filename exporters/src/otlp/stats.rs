//! The `otlp` exporter's own counters, reported through the shared metric
//! model next to its event queue's (so they appear as
//! `varta_collector_exporter_*` / `varta.collector.exporter.*`).
//!
//! Promises: every span built is, eventually, exactly one of
//! `spans_exported`, `spans_failed` (the backend refused it or retries ran
//! out), `spans_dropped{queue_full}` (the sending queue overflowed; oldest
//! first) or `spans_dropped{shutdown}` (queued or in flight when the shutdown
//! deadline passed) — or still waiting (`spans_queued`). Nothing is lost
//! without a counter moving.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use varta_pipeline::{Instrumented, Metric, Sample};

#[derive(Debug, Default)]
pub struct OtlpStats {
    pub spans_exported: AtomicU64,
    pub spans_failed: AtomicU64,
    pub spans_dropped_full: AtomicU64,
    pub spans_dropped_shutdown: AtomicU64,
    pub spans_queued: AtomicU64,
    pub span_exports_retried: AtomicU64,
    /// Retries (spans or metrics) after the backend said when (`Retry-After`,
    /// gRPC `RetryInfo`).
    pub exports_throttled: AtomicU64,
    /// Sender tasks that panicked and were restarted.
    pub task_panics: AtomicU64,
    pub metric_exports: AtomicU64,
    pub metric_exports_failed: AtomicU64,
    pub clock_steps: AtomicU64,
    pub stale_markers: AtomicU64,
    pub stale_markers_dropped: AtomicU64,
}

pub mod metric {
    use varta_pipeline::Metric;

    pub static SPANS_EXPORTED: Metric =
        Metric::counter("spans_exported", "Spans the OTLP backend accepted.").unit("{span}");
    pub static SPANS_FAILED: Metric = Metric::counter(
        "spans_failed",
        "Spans given up on: refused by the backend, or retries ran out (retry_on_failure.max_elapsed_time).",
    )
    .unit("{span}");
    pub static SPANS_DROPPED: Metric = Metric::labelled(
        "spans_dropped",
        "reason",
        "Spans not delivered: queue_full (sending_queue.queue_size reached, oldest dropped) or shutdown (queued or in flight when the shutdown deadline passed).",
    ).unit("{span}");
    pub static SPANS_QUEUED: Metric =
        Metric::gauge("spans_queued", "Spans waiting in the sending queue.").unit("{span}");
    pub static SPAN_EXPORTS_RETRIED: Metric =
        Metric::counter("span_exports_retried", "Span export calls retried after a retryable failure.")
            .unit("{request}");
    pub static EXPORTS_THROTTLED: Metric = Metric::counter(
        "exports_throttled",
        "Export calls retried when the backend said when (Retry-After, gRPC RetryInfo).",
    )
    .unit("{request}");
    pub static TASK_PANICS: Metric = Metric::counter(
        "task_panics",
        "Sender tasks that panicked and were restarted with their queue (a bug: please report it).",
    )
    .unit("{panic}");
    pub static METRIC_EXPORTS: Metric =
        Metric::counter("metric_exports", "Metric export calls the backend accepted.").unit("{request}");
    pub static METRIC_EXPORTS_FAILED: Metric =
        Metric::counter("metric_exports_failed", "Metric export calls that failed (after retries).")
            .unit("{request}");
    pub static CLOCK_STEPS: Metric = Metric::counter(
        "clock_steps",
        "Wall-clock steps (> 1 s) seen when converting processor time to span timestamps.",
    )
    .unit("{step}");
    pub static STALE_MARKERS: Metric = Metric::counter(
        "stale_markers",
        "Evicted agents whose series were sent a staleness point (no recorded value).",
    )
    .unit("{agent}");
    pub static STALE_MARKERS_DROPPED: Metric = Metric::counter(
        "stale_markers_dropped",
        "Evicted agents whose staleness point was not sent: more than 65,536 waited for one collection.",
    )
    .unit("{agent}");
}

impl Instrumented for OtlpStats {
    fn samples(&self, out: &mut dyn FnMut(Sample)) {
        use metric::*;
        let plain: [(&'static Metric, u64); 11] = [
            (&SPANS_EXPORTED, self.spans_exported.load(Relaxed)),
            (&SPANS_FAILED, self.spans_failed.load(Relaxed)),
            (&SPANS_QUEUED, self.spans_queued.load(Relaxed)),
            (&SPAN_EXPORTS_RETRIED, self.span_exports_retried.load(Relaxed)),
            (&EXPORTS_THROTTLED, self.exports_throttled.load(Relaxed)),
            (&TASK_PANICS, self.task_panics.load(Relaxed)),
            (&METRIC_EXPORTS, self.metric_exports.load(Relaxed)),
            (&METRIC_EXPORTS_FAILED, self.metric_exports_failed.load(Relaxed)),
            (&CLOCK_STEPS, self.clock_steps.load(Relaxed)),
            (&STALE_MARKERS, self.stale_markers.load(Relaxed)),
            (&STALE_MARKERS_DROPPED, self.stale_markers_dropped.load(Relaxed)),
        ];
        for (m, v) in plain {
            out(Sample::new(m, v));
        }
        out(Sample::labelled(&SPANS_DROPPED, "queue_full", self.spans_dropped_full.load(Relaxed)));
        out(Sample::labelled(&SPANS_DROPPED, "shutdown", self.spans_dropped_shutdown.load(Relaxed)));
    }
}

/// The exporter's component metrics: its event queue's plus its own.
#[derive(Debug)]
pub struct OtlpTelemetry {
    pub queue: Arc<dyn Instrumented>,
    pub otlp: Arc<OtlpStats>,
}

impl Instrumented for OtlpTelemetry {
    fn samples(&self, out: &mut dyn FnMut(Sample)) {
        self.queue.samples(out);
        self.otlp.samples(out);
    }
}
