//! The OpenTelemetry adapter: the engine reports through the host
//! program's `Tracer` and `Meter`, so whatever SDK and exporter the host
//! set up (OTLP, stdout, in-memory, a vendor's) carries the result, under
//! the host's resource.
//!
//! * [`spans`]: incidents as spans, in the collector's shape.
//! * [`metrics`]: the liveness metrics as observable instruments.
//! * [`convert`]: OTLP protobuf values → API values.
//!
//! Why the API and not the SDK: a library that pulls in an SDK decides
//! batching, export and resources for its host; through the API it only
//! describes what happened. Nothing here touches global providers.

pub mod convert;
pub mod metrics;
pub mod spans;

use opentelemetry::global::BoxedTracer;
use opentelemetry::metrics::Meter;
use opentelemetry::trace::{Span, Tracer};

/// Where the engine's telemetry goes: a tracer for incident spans, a meter
/// for the liveness metrics, either or both.
#[derive(Default)]
pub struct OpenTelemetry {
    pub(crate) tracer: Option<BoxedTracer>,
    pub(crate) meter: Option<Meter>,
    pub(crate) per_agent: bool,
}

impl std::fmt::Debug for OpenTelemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenTelemetry")
            .field("tracer", &self.tracer.is_some())
            .field("meter", &self.meter.is_some())
            .field("per_agent", &self.per_agent)
            .finish()
    }
}

impl OpenTelemetry {
    /// Nothing yet; per-agent metrics on (as the collector's `otlp` exporter).
    pub fn new() -> OpenTelemetry {
        OpenTelemetry { tracer: None, meter: None, per_agent: true }
    }

    /// Incidents become spans of `tracer` (e.g. `provider.tracer("varta")`).
    pub fn tracer<T, S>(mut self, tracer: T) -> OpenTelemetry
    where
        T: Tracer<Span = S> + Send + Sync + 'static,
        S: Span + Send + Sync + 'static,
    {
        self.tracer = Some(BoxedTracer::new(Box::new(tracer)));
        self
    }

    /// The liveness metrics are registered on `meter`.
    pub fn meter(mut self, meter: Meter) -> OpenTelemetry {
        self.meter = Some(meter);
        self
    }

    /// Whether to report `varta.agent.*` per agent (one series per tracked
    /// agent: turn off for very large fleets).
    pub fn per_agent_metrics(mut self, on: bool) -> OpenTelemetry {
        self.per_agent = on;
        self
    }
}
