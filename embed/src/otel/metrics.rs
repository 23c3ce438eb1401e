//! The liveness metrics as observable instruments on the host's
//! `opentelemetry::metrics::Meter`.
//!
//! Promises:
//! * **Same names, units, descriptions and attributes as the collector's
//!   OTLP metrics**, because they are read from the collector's own
//!   builder (`varta_telemetry::metrics::MetricsBuilder`, cumulative,
//!   agents as point attributes): `varta.beats`, `varta.stalls`,
//!   `varta.resumes`, `varta.agents.tracked`, `varta.agents.stalled`,
//!   `varta.rate_limited{reason}`, `varta.capacity_exceeded`,
//!   `varta.evictions{reason}`, `varta.decode_errors{kind}`,
//!   `varta.refusals{reason}`, per agent `varta.agent.status`,
//!   `varta.agent.beats`, `varta.agent.stalls` (when enabled), and the
//!   engine's own health as `varta.collector.<role>.<name>`. Sums become
//!   observable counters, gauges observable gauges (all `u64`); the SDK
//!   applies whatever temporality the host configured.
//! * **Views, not per-beat calls.** Values come from the processor's
//!   published snapshot and the components' atomic counters when the
//!   host's reader collects; nothing runs per beat.
//! * **One read per collection.** The SDK calls each instrument's callback
//!   once per collection; the first callback of a collection reads every
//!   value at once and the others use that reading, so the values of one
//!   export are of one moment (a callback that already read the current
//!   reading starts the next one — no clock involved).
//! * The exception: `varta.stall.duration` (seconds, the collector's
//!   bucket bounds) is a synchronous histogram recorded once per resume
//!   by the span adapter, since the API has no observable histogram.
//!   (The processor's own histogram still backs the collector's exports.)

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{AsyncInstrument, Histogram, Meter, ObservableCounter, ObservableGauge};
use opentelemetry_proto::tonic::metrics::v1::{
    Metric as ProtoMetric, NumberDataPoint, metric::Data, number_data_point,
};
use varta_exporters::CollectorView;
use varta_processor::STALL_DURATION_BOUNDS_NS;
use varta_telemetry::metrics::Temporality;
use varta_telemetry::metrics::{self as otlp_metrics, MetricsBuilder, name};
use varta_telemetry::wallclock::unix_now_ns;

use super::convert;

/// One reading of every metric, and which reading it is.
#[derive(Debug)]
struct Reading {
    builder: MetricsBuilder,
    generation: u64,
    metrics: Vec<ProtoMetric>,
}

/// What every instrument's callback reads.
#[derive(Debug)]
struct Source {
    view: CollectorView,
    reading: Mutex<Reading>,
}

impl Source {
    /// The points of metric `name`, as `(value, attributes)`; `seen` is the
    /// reading the calling instrument read last.
    fn points(&self, name: &str, seen: &AtomicU64) -> Vec<(u64, Vec<KeyValue>)> {
        let mut r = self.reading.lock().unwrap_or_else(|p| p.into_inner());
        if seen.load(Relaxed) == r.generation {
            let now = u64::try_from(unix_now_ns()).unwrap_or(0);
            r.metrics = r.builder.collect(&self.view, now).metrics;
            r.generation += 1;
        }
        seen.store(r.generation, Relaxed);
        r.metrics.iter().filter(|m| m.name == name).flat_map(number_points).map(point).collect()
    }
}

fn number_points(m: &ProtoMetric) -> &[NumberDataPoint] {
    match &m.data {
        Some(Data::Sum(s)) => &s.data_points,
        Some(Data::Gauge(g)) => &g.data_points,
        _ => &[],
    }
}

fn point(p: &NumberDataPoint) -> (u64, Vec<KeyValue>) {
    let value = match p.value {
        Some(number_data_point::Value::AsInt(i)) => u64::try_from(i).unwrap_or(0),
        Some(number_data_point::Value::AsDouble(d)) if d > 0.0 => d as u64,
        _ => 0,
    };
    (value, convert::attributes(&p.attributes))
}

/// The registered instruments. The API's handles are markers: the SDK
/// keeps calling the callbacks for as long as the host's meter provider
/// lives, so after [`crate::Engine::shutdown`] they report the engine's
/// final values (the host's last export, at provider shutdown, has them).
/// Two engines on one meter need different pipeline names (attribute
/// `varta.pipeline`) and receiver ids, or their series coincide.
#[derive(Debug, Default)]
pub struct Instruments {
    counters: Vec<ObservableCounter<u64>>,
    gauges: Vec<ObservableGauge<u64>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Counter,
    Gauge,
}

/// Registers every metric of `view` on `meter` (see the module docs).
pub fn register(meter: &Meter, view: CollectorView, per_agent: bool) -> Instruments {
    let mut builder = MetricsBuilder::new(Temporality::Cumulative, per_agent, 0);
    // Every series is present from the first reading, zeros included: it
    // names every instrument. Per-agent families appear with agents.
    let now = u64::try_from(unix_now_ns()).unwrap_or(0);
    let mut families: Vec<(String, String, String, Shape)> = Vec::new();
    for m in builder.collect(&view, now).metrics {
        let shape = match &m.data {
            Some(Data::Sum(_)) => Shape::Counter,
            Some(Data::Gauge(_)) => Shape::Gauge,
            _ => continue,
        };
        if !families.iter().any(|f| f.0 == m.name) {
            families.push((m.name, m.description, m.unit, shape));
        }
    }
    if per_agent {
        for (n, help, unit, shape) in [
            (name::AGENT_STATUS, otlp_metrics::AGENT_STATUS_HELP, "1", Shape::Gauge),
            (name::AGENT_BEATS, otlp_metrics::AGENT_BEATS_HELP, "{beat}", Shape::Counter),
            (name::AGENT_STALLS, otlp_metrics::AGENT_STALLS_HELP, "{stall}", Shape::Counter),
        ] {
            if !families.iter().any(|f| f.0 == n) {
                families.push((n.to_owned(), help.to_owned(), unit.to_owned(), shape));
            }
        }
    }
    let source = Arc::new(Source {
        view,
        reading: Mutex::new(Reading {
            builder: MetricsBuilder::new(Temporality::Cumulative, per_agent, 0),
            generation: 0,
            metrics: Vec::new(),
        }),
    });
    let mut out = Instruments::default();
    for (n, description, unit, shape) in families {
        let (source, seen, key) = (source.clone(), AtomicU64::new(0), n.clone());
        let observe = move |o: &dyn AsyncInstrument<u64>| {
            for (value, attributes) in source.points(&key, &seen) {
                o.observe(value, &attributes);
            }
        };
        match shape {
            Shape::Counter => out.counters.push(
                meter
                    .u64_observable_counter(n)
                    .with_description(description)
                    .with_unit(unit)
                    .with_callback(observe)
                    .build(),
            ),
            Shape::Gauge => out.gauges.push(
                meter
                    .u64_observable_gauge(n)
                    .with_description(description)
                    .with_unit(unit)
                    .with_callback(observe)
                    .build(),
            ),
        }
    }
    out
}

/// `varta.stall.duration`: seconds, the collector's bucket bounds.
pub fn stall_durations(meter: &Meter) -> Histogram<f64> {
    meter
        .f64_histogram(name::STALL_DURATION)
        .with_description("Length of stalls that ended (the agent beat again).")
        .with_unit("s")
        .with_boundaries(STALL_DURATION_BOUNDS_NS.iter().map(|&ns| ns as f64 / 1e9).collect())
        .build()
}
