//! The metric model every component reports through.
//!
//! Promises: a component describes each of its metrics once, statically
//! ([`Metric`]: name, help, counter or gauge, optional label key), and lists
//! its current values through [`Instrumented::samples`] — every series,
//! zeros included, every label value of a labelled family, in a stable
//! order. Readers (the SIGUSR1 dump, the Prometheus endpoint, OTLP) add
//! their own prefix and naming convention; components never format names
//! for a particular backend. Listing samples never blocks the component
//! that owns the counters (they are atomics or a published snapshot).

use std::fmt;
use std::sync::Arc;

/// How a value behaves over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up (until the collector restarts).
    Counter,
    /// Goes up and down (a level: queue depth, agents tracked).
    Gauge,
}

/// The static description of one metric family of a component.
#[derive(Debug, PartialEq, Eq)]
pub struct Metric {
    /// `snake_case`, no prefix, no unit or `_total` suffix (readers add them).
    pub name: &'static str,
    /// One sentence for HELP / descriptions.
    pub help: &'static str,
    pub kind: MetricKind,
    /// The label key when the family is split by a label (e.g. `reason`).
    pub label: Option<&'static str>,
    /// The UCUM unit OTLP carries: `By`, `s`, or a count of things as an
    /// annotation (`{beat}`, `{agent}`); never the bare `1` of a ratio.
    pub unit: &'static str,
}

impl Metric {
    pub const fn counter(name: &'static str, help: &'static str) -> Metric {
        Metric { name, help, kind: MetricKind::Counter, label: None, unit: "1" }
    }
    pub const fn gauge(name: &'static str, help: &'static str) -> Metric {
        Metric { name, help, kind: MetricKind::Gauge, label: None, unit: "1" }
    }
    pub const fn labelled(name: &'static str, label: &'static str, help: &'static str) -> Metric {
        Metric { name, help, kind: MetricKind::Counter, label: Some(label), unit: "1" }
    }
    /// Its unit (see [`Metric::unit`]; every metric names one).
    pub const fn unit(self, unit: &'static str) -> Metric {
        Metric { unit, ..self }
    }
}

/// One value of one series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub metric: &'static Metric,
    /// The label value (`""` for a family without a label).
    pub label: &'static str,
    pub value: u64,
}

impl Sample {
    pub const fn new(metric: &'static Metric, value: u64) -> Sample {
        Sample { metric, label: "", value }
    }
    pub const fn labelled(metric: &'static Metric, label: &'static str, value: u64) -> Sample {
        Sample { metric, label, value }
    }
}

/// A component that reports metrics.
pub trait Instrumented: Send + Sync + fmt::Debug {
    /// Every sample, zeros included, in a stable order.
    fn samples(&self, out: &mut dyn FnMut(Sample));
}

/// Which section of the configuration a component comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Receiver,
    /// A processor with metrics of its own (beyond its pipeline's).
    Processor,
    Pipeline,
    Exporter,
    /// The collector itself (`service`: reloads).
    Service,
    /// An extension (`health_check`: its connections).
    Extension,
}

impl Role {
    /// Singular, for metric names (`receiver`, `pipeline`, `exporter`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Receiver => "receiver",
            Role::Processor => "processor",
            Role::Pipeline => "pipeline",
            Role::Exporter => "exporter",
            Role::Service => "service",
            Role::Extension => "extension",
        }
    }

    /// The configuration section (`receivers`, `pipelines`, `exporters`).
    pub const fn section(self) -> &'static str {
        match self {
            Role::Receiver => "receivers",
            Role::Processor => "processors",
            Role::Pipeline => "pipelines",
            Role::Exporter => "exporters",
            Role::Service => "service",
            Role::Extension => "extensions",
        }
    }
}

/// One running component and its metrics.
#[derive(Debug, Clone)]
pub struct Component {
    pub role: Role,
    /// The component id from the configuration (`vlp/uds`, a pipeline name).
    pub id: String,
    pub metrics: Arc<dyn Instrumented>,
    /// When its counters started (Unix ns): the start time of its
    /// cumulative series, which moves only when the counters are new.
    pub started_unix_nano: u64,
    /// What its counters live in (by address), to tell a component kept
    /// across a rebuild of the views from a new one of the same name.
    identity: usize,
}

impl Component {
    pub fn new(role: Role, id: impl Into<String>, metrics: Arc<dyn Instrumented>) -> Component {
        let identity = Arc::as_ptr(&metrics) as *const () as usize;
        Component::with_identity(role, id, metrics, identity)
    }

    /// A component whose counters live somewhere other than `metrics`
    /// itself (a view made afresh over long-lived state): `identity` names
    /// that state.
    pub fn with_identity(
        role: Role,
        id: impl Into<String>,
        metrics: Arc<dyn Instrumented>,
        identity: usize,
    ) -> Component {
        let started_unix_nano = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Component { role, id: id.into(), metrics, started_unix_nano, identity }
    }

    /// Keeps `earlier`'s start time when it is this very component (same
    /// role, id and counters) seen by an earlier rebuild of the views.
    /// Comparing addresses is sound because `earlier` still holds its
    /// counters: a new allocation cannot take their address meanwhile.
    pub fn carry_start(&mut self, earlier: &[Component]) {
        if let Some(e) =
            earlier.iter().find(|e| e.role == self.role && e.id == self.id && e.identity == self.identity)
        {
            self.started_unix_nano = e.started_unix_nano;
        }
    }

    /// Every sample of this component, collected (for tests and dumps).
    pub fn collect(&self) -> Vec<Sample> {
        let mut v = Vec::new();
        self.metrics.samples(&mut |s| v.push(s));
        v
    }
}
