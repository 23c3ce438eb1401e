//! What metrics views (the Prometheus endpoint, OTLP metrics, the stats
//! dump) read: every component's metrics through the shared model, and
//! each pipeline's published snapshot for per-agent state.
//!
//! Promises: building a view never touches the hot path — receiver and
//! exporter counters are atomics, pipeline counters and agents come from
//! the processor's published [`Snapshot`], queue depths are read from the
//! queues. Reading is lock-free and never blocks a pipeline thread.

use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use varta_agents::AttributeStore;
use varta_pipeline::queue::QueueDepth;
use varta_pipeline::{Component, Instrumented, Metric, Role, Sample};
use varta_processor::{Snapshot, SnapshotReader};

/// The pipeline's metrics besides the processor's own.
pub mod metric {
    use varta_pipeline::Metric;

    pub static QUEUE_DEPTH: Metric =
        Metric::gauge("queue_depth", "Batches waiting in the receiver → processor queue.").unit("{batch}");
    pub static QUEUE_CAPACITY: Metric =
        Metric::gauge("queue_capacity", "Batches the receiver → processor queue can hold.").unit("{batch}");
    pub static SNAPSHOT_SEQ: Metric = Metric::gauge(
        "snapshot_seq",
        "Sequence number of the published snapshot these values come from (goes up while the processor publishes).",
    ).unit("{snapshot}");
}

/// One pipeline as views see it: its published snapshot and its queue.
#[derive(Debug, Clone)]
pub struct PipelineView {
    pub name: String,
    pub snapshots: SnapshotReader,
    pub queue: QueueDepth,
    /// Attributes of local agents, when the pipeline has a `resolver`.
    pub attributes: Option<Arc<AttributeStore>>,
}

impl PipelineView {
    pub fn latest(&self) -> Arc<Snapshot> {
        self.snapshots.latest()
    }
}

impl Instrumented for PipelineView {
    fn samples(&self, out: &mut dyn FnMut(Sample)) {
        let snapshot = self.snapshots.latest();
        snapshot.stats.samples(out);
        out(Sample::new(&metric::QUEUE_DEPTH, self.queue.len() as u64));
        out(Sample::new(&metric::QUEUE_CAPACITY, self.queue.capacity() as u64));
        out(Sample::new(&metric::SNAPSHOT_SEQ, snapshot.seq));
    }
}

/// Everything a metrics view reads, for the whole collector.
#[derive(Debug, Clone)]
pub struct CollectorView {
    /// Every receiver, pipeline and exporter, in configuration order.
    pub components: Vec<Component>,
    /// Pipelines, for per-agent state.
    pub pipelines: Vec<PipelineView>,
    /// When the collector started (wall clock).
    pub started: SystemTime,
}

impl Default for CollectorView {
    fn default() -> Self {
        CollectorView { components: Vec::new(), pipelines: Vec::new(), started: SystemTime::now() }
    }
}

impl CollectorView {
    pub fn add_pipeline(&mut self, pipeline: PipelineView) {
        let identity = pipeline.snapshots.identity();
        self.components.push(Component::with_identity(
            Role::Pipeline,
            pipeline.name.clone(),
            Arc::new(pipeline.clone()),
            identity,
        ));
        self.pipelines.push(pipeline);
    }

    pub fn add(&mut self, role: Role, id: impl Into<String>, metrics: Arc<dyn Instrumented>) {
        self.components.push(Component::new(role, id, metrics));
    }

    /// Start times of components that an earlier view already showed stay
    /// as they were (see [`Component::carry_start`]).
    pub fn carry_starts(&mut self, earlier: &CollectorView) {
        for c in &mut self.components {
            c.carry_start(&earlier.components);
        }
    }

    /// Every sample of every component: `(component, sample)`.
    pub fn for_each_sample(&self, mut f: impl FnMut(&Component, Sample)) {
        for c in &self.components {
            c.metrics.samples(&mut |s| f(c, s));
        }
    }

    /// Sum of one metric (optionally one label value) over every component
    /// of a role — e.g. refusals of one reason over all receivers.
    pub fn total(&self, role: Role, metric: &'static Metric, label: Option<&str>) -> u64 {
        let mut sum = 0u64;
        for c in self.components.iter().filter(|c| c.role == role) {
            c.metrics.samples(&mut |s| {
                if std::ptr::eq(s.metric, metric) && label.is_none_or(|l| l == s.label) {
                    sum = sum.wrapping_add(s.value);
                }
            });
        }
        sum
    }

    /// Makes every pipeline's latest snapshot current, waiting for
    /// processors with pending changes to publish them (see
    /// [`SnapshotReader::fresh`]; at most one snapshot interval each).
    pub fn refresh_snapshots(&self) {
        for p in &self.pipelines {
            p.snapshots.request();
        }
        for p in &self.pipelines {
            p.snapshots.fresh(std::time::Duration::from_millis(100));
        }
    }
}

/// The view a long-lived reader (a metrics endpoint, the OTLP exporter)
/// serves: replaced whole when a reload changes the components, read at
/// the start of each scrape or export. Empty until the collector has
/// started every component.
#[derive(Debug, Clone, Default)]
pub struct LiveView(Arc<RwLock<Option<Arc<CollectorView>>>>);

impl LiveView {
    pub fn new(view: CollectorView) -> LiveView {
        let me = LiveView::default();
        me.set(view);
        me
    }

    /// The current view, if there is one yet.
    pub fn get(&self) -> Option<Arc<CollectorView>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The current view, or an empty one before the first is set.
    pub fn load(&self) -> Arc<CollectorView> {
        self.get().unwrap_or_default()
    }

    pub fn set(&self, view: CollectorView) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(view));
    }
}
