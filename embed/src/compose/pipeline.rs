//! One pipeline's engine: its batch queue, its processor (running or
//! parked) and the processor's helpers — the resolver (attributes,
//! diagnoses) and the recovery runner — built, attached, replaced and
//! ended in one place.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use varta_agents::{AttributeStore, Resolver, ResolverConfig, ResolverStats};
use varta_exporters::{ExporterQueue, Fanout};
use varta_pipeline::Instrumented;
use varta_pipeline::queue::{BatchReceiver, BatchSender, QueueDepth};
use varta_pipeline::threads::spawn;
use varta_processor::recovery::{Recovery, SHUTDOWN_MARGIN};
use varta_processor::{
    Processor, ProcessorStats, RateLimitConfig, RecoveryConfig, SnapshotReader, TrackerConfig,
};

use super::storage::{self, StateFile, StorageStats, Writer};
use super::wedge::Wedge;
use super::{Stopped, Watch, take_parked};

/// One pipeline's settings: what it is built from and brought to.
#[derive(Debug, Clone)]
pub struct PipelinePlan {
    pub name: String,
    pub ratelimit: Option<RateLimitConfig>,
    pub tracker: Option<TrackerConfig>,
    /// The resolver, by processor id.
    pub resolver: Option<(String, ResolverConfig)>,
    /// The recovery runner, by processor id.
    pub recovery: Option<(String, RecoveryConfig)>,
    /// Its exporters' ids, in the host's order.
    pub exporters: Vec<String>,
    /// Bound of the receiver → processor queue, in batches.
    pub queue_batches: usize,
    /// Where its agents' state survives the process, if anywhere.
    pub storage: Option<StorageSpec>,
}

/// A pipeline's state storage: the directory (see [`storage::open_dir`]),
/// how often to checkpoint, and the component its counters report under
/// (its tracker's id).
#[derive(Debug, Clone, PartialEq)]
pub struct StorageSpec {
    pub directory: std::path::PathBuf,
    pub interval: Duration,
    pub component: String,
}

impl PipelinePlan {
    /// What owns the agents: a change starts the pipeline's state afresh.
    /// Threshold settings are not part of it ([`PipelinePlan::thresholds_key`]).
    pub fn processor_key(&self) -> String {
        let structure = self.tracker.as_ref().map(|t| (t.capacity, t.clock, t.snapshot_interval));
        format!("{:?} {structure:?}", self.ratelimit)
    }

    /// Which threshold each agent runs under: a change is applied to the
    /// running processor, keeping its agents.
    pub fn thresholds_key(&self) -> String {
        let t = self.tracker.as_ref();
        format!(
            "{:?}",
            t.map(|t| (
                t.threshold,
                &t.thresholds,
                t.adaptive,
                t.eviction_after,
                t.unauthenticated_share,
                t.shared_with_attested
            ))
        )
    }

    /// The resolver and the recovery runner (which reads the resolver's
    /// attributes, so it is rebuilt with it).
    pub fn resolver_key(&self) -> String {
        format!("{:?}", self.resolver)
    }

    pub fn recovery_key(&self) -> String {
        format!("{:?} {}", self.recovery, self.resolver_key())
    }
}

/// Why a pipeline could not be built or brought to its plan.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("no tracker processor")]
    NoTracker,
    #[error("no processor (see the reload error)")]
    NoProcessor,
    #[error(transparent)]
    Processor(#[from] varta_processor::ConfigError),
    #[error("cannot start the resolver: {0}")]
    Resolver(String),
    #[error("cannot start the recovery runner: {0}")]
    Recovery(String),
    #[error("{0}")]
    Thread(String),
    #[error("state storage: {0}")]
    Storage(String),
}

/// A resolver or recovery runner thread, with its metrics.
#[derive(Debug)]
struct Helper {
    id: String,
    stats: Arc<dyn Instrumented>,
    thread: JoinHandle<()>,
    /// Its progress, for the health check (the resolver's).
    progress: Option<varta_agents::Progress>,
    /// How long its own shutdown may take (a recovery runner gives its
    /// children `kill_grace`, then kills and records them): a join waits
    /// at least this long, whatever the caller's deadline.
    ends_within: Duration,
}

impl Helper {
    fn join(self, deadline: Instant, stopped: &mut Stopped) {
        let deadline = deadline.max(Instant::now() + self.ends_within);
        stopped.join(format!("processors::{}", self.id), self.thread, deadline);
    }
}

/// At most this many times per pipeline is a resolver that makes no
/// progress replaced: each leaves a thread blocked where it stopped.
pub const MAX_RESOLVER_REPLACEMENTS: u64 = 3;

/// Distinguishes the pipeline states an exporter may read.
static GENERATIONS: LazyLock<AtomicU64> = LazyLock::new(|| AtomicU64::new(1));

type ProcessorRun = (Processor, BatchReceiver);

/// One pipeline: its queue, its processor (running or parked) and the
/// processor's helpers.
#[derive(Debug)]
pub struct Pipeline {
    pub name: String,
    processor_key: String,
    thresholds_key: String,
    resolver_key: String,
    recovery_key: String,
    queue_batches: usize,
    /// Its exporters' ids, in the host's order.
    pub exporters: Vec<String>,
    /// Changes whenever the state exporters read (snapshots, attributes) is replaced.
    pub generation: u64,
    tx: BatchSender,
    /// The queue's share an unattested receiver may fill (plain UDP beside
    /// attested receivers), in batches.
    unattested_budget: Option<usize>,
    pub depth: QueueDepth,
    /// A replaced queue still holding batches, drained on resume.
    stale: Option<BatchReceiver>,
    pause: Arc<AtomicBool>,
    stats: Arc<ProcessorStats>,
    pub snapshots: SnapshotReader,
    pub attributes: Option<Arc<AttributeStore>>,
    resolver: Option<Helper>,
    /// The running resolver's settings and counters (to replace it).
    resolver_state: Option<(ResolverConfig, Arc<ResolverStats>)>,
    recovery: Option<Helper>,
    thread: Option<JoinHandle<ProcessorRun>>,
    processor: Option<Processor>,
    rx: Option<BatchReceiver>,
    wedge_after: Option<u64>,
    /// Its checkpoint writer and the component its counters report under.
    storage: Option<(Writer, String, Arc<StorageStats>)>,
    /// A checkpoint to take back when the processor first runs (at start:
    /// a restart), or carried across a reload that rebuilt the processor.
    restore: Option<(varta_processor::checkpoint::Checkpoint, varta_processor::BlindCause)>,
}

fn unattested_budget(plan: &PipelinePlan) -> Option<usize> {
    let share = plan.tracker.as_ref()?.unauthenticated_share_if_shared()?;
    Some(((plan.queue_batches as f64 * share) as usize).max(1))
}

fn new_clock(plan: &PipelinePlan) -> varta_processor::clock::Clock {
    plan.tracker.as_ref().map(|t| t.clock).unwrap_or_default()
}

fn new_processor(plan: &PipelinePlan) -> Result<Processor, BuildError> {
    let tracker = plan.tracker.clone().ok_or(BuildError::NoTracker)?;
    Ok(Processor::new(plan.ratelimit, tracker, Box::new(varta_pipeline::procfs::start_time))?)
}

impl Pipeline {
    /// A new pipeline, parked, its helpers running.
    pub fn build(plan: &PipelinePlan) -> Result<Pipeline, BuildError> {
        let processor = new_processor(plan)?;
        let (tx, rx) = varta_pipeline::queue::batch_queue(plan.queue_batches);
        let mut pipeline = Pipeline {
            name: plan.name.clone(),
            processor_key: plan.processor_key(),
            thresholds_key: plan.thresholds_key(),
            resolver_key: String::new(),
            recovery_key: String::new(),
            queue_batches: plan.queue_batches,
            exporters: plan.exporters.clone(),
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
            depth: rx.depth(),
            tx,
            unattested_budget: unattested_budget(plan),
            stale: None,
            pause: Arc::new(AtomicBool::new(false)),
            stats: processor.stats(),
            snapshots: processor.snapshots(),
            attributes: None,
            resolver: None,
            resolver_state: None,
            recovery: None,
            thread: None,
            processor: Some(processor),
            rx: Some(rx),
            wedge_after: None,
            storage: None,
            restore: None,
        };
        if let Err(e) = pipeline.set_storage(plan) {
            pipeline.close(Instant::now() + Duration::from_secs(5));
            return Err(e);
        }
        if let Err(e) = pipeline.set_helpers(plan, Instant::now()) {
            pipeline.close(Instant::now() + Duration::from_secs(5));
            return Err(e);
        }
        Ok(pipeline)
    }

    /// Starts (or stops) checkpointing as `plan` says; at start, reads the
    /// checkpoint to restore when the processor first runs.
    fn set_storage(&mut self, plan: &PipelinePlan) -> Result<(), BuildError> {
        let same = match (&self.storage, &plan.storage) {
            (Some((w, component, _)), Some(spec)) => {
                w.file().path().parent() == Some(spec.directory.as_path()) && *component == spec.component
            }
            (None, None) => true,
            _ => false,
        };
        let processor = self.processor.as_mut().ok_or(BuildError::NoProcessor)?;
        if same {
            if let (Some((w, _, _)), Some(spec)) = (&self.storage, &plan.storage) {
                processor.set_checkpoints(Some(w.sink()), spec.interval);
            }
            return Ok(());
        }
        processor.set_checkpoints(None, Duration::ZERO);
        if let Some((writer, _, _)) = self.storage.take() {
            // The agents as they are: those carried into a rebuilt
            // processor are still waiting to be restored into it.
            let last = match &self.restore {
                Some((carried, _)) => carried.clone(),
                None => processor.checkpoint(),
            };
            writer.finish(Some(last));
        }
        let Some(spec) = &plan.storage else { return Ok(()) };
        let dir = storage::open_dir(&spec.directory).map_err(BuildError::Storage)?;
        let file = StateFile::new(&dir, &self.name);
        if self.restore.is_none() && processor.agents() == 0 {
            self.restore = file.load(processor.clock()).map(|c| (c, varta_processor::BlindCause::Restart));
            // Before any exporter draws its own: an incident open across
            // the restart stays one trace.
            if let Some((checkpoint, _)) = &self.restore
                && !varta_telemetry::ids::adopt_process_salt(checkpoint.trace_salt)
            {
                tracing::warn!(pipeline = %self.name, "trace ids were already salted; incidents carried across the restart start new traces");
            }
        }
        let stats = file.stats();
        let writer = Writer::start(file, &self.name).map_err(|e| BuildError::Storage(e.to_string()))?;
        processor.set_checkpoints(Some(writer.sink()), spec.interval);
        self.storage = Some((writer, spec.component.clone(), stats));
        Ok(())
    }

    /// Test hook (debug builds of the collector only): the processor
    /// thread wedges after emitting `events` events, once resumed.
    #[doc(hidden)]
    pub fn wedge_after(&mut self, events: Option<u64>) {
        self.wedge_after = events;
    }

    /// The processor's counters, live.
    pub fn stats(&self) -> Arc<ProcessorStats> {
        Arc::clone(&self.stats)
    }

    /// Whether `plan` needs a new queue (so receivers feeding it rewire).
    pub fn needs_queue(&self, plan: &PipelinePlan) -> bool {
        self.queue_batches != plan.queue_batches
    }

    /// Brings a parked pipeline to `plan`, keeping its agents unless its
    /// tracker or rate limit settings changed.
    pub fn update(&mut self, plan: &PipelinePlan, deadline: Instant) -> Result<(), BuildError> {
        self.exporters = plan.exporters.clone();
        self.unattested_budget = unattested_budget(plan);
        if self.needs_queue(plan) {
            let (tx, rx) = varta_pipeline::queue::batch_queue(plan.queue_batches);
            self.tx = tx;
            self.depth = rx.depth();
            self.stale = self.rx.replace(rx);
            self.queue_batches = plan.queue_batches;
        }
        if self.processor.is_none() || self.processor_key != plan.processor_key() {
            // Helpers first: a recovery runner must have closed its audit
            // file before the new one opens it.
            let numbered = self.processor.as_ref().map_or(1, Processor::next_incident);
            // Its agents go across, by value, into the new processor.
            let carried = self.processor.as_ref().map(|p| p.checkpoint().rebased(p.clock(), new_clock(plan)));
            self.drop_helpers(deadline);
            let mut processor = new_processor(plan)?;
            processor.continue_incidents_from(numbered);
            if let Some(carried) = carried {
                self.restore = Some((carried, varta_processor::BlindCause::Reload));
            }
            self.stats = processor.stats();
            self.snapshots = processor.snapshots();
            self.processor = Some(processor);
            self.processor_key = plan.processor_key();
            self.thresholds_key = plan.thresholds_key();
            self.generation = GENERATIONS.fetch_add(1, Ordering::Relaxed);
            tracing::info!(pipeline = %self.name, "reload: tracker capacity, clock, snapshot interval or rate limit changed; the agents are carried into the new tracker");
        }
        self.set_helpers(plan, deadline)?;
        self.set_storage(plan)?;
        if self.thresholds_key != plan.thresholds_key() {
            // After the helpers: rules on attributes read the (new) resolver.
            let tracker = plan.tracker.as_ref().ok_or(BuildError::NoTracker)?;
            let processor = self.processor.as_mut().ok_or(BuildError::NoProcessor)?;
            processor.set_thresholds(tracker)?;
            self.thresholds_key = plan.thresholds_key();
            tracing::info!(pipeline = %self.name, agents = processor.agents(), "reload: threshold settings applied to the tracked agents");
        }
        Ok(())
    }

    /// Replaces the resolver and recovery runner where `plan` differs.
    fn set_helpers(&mut self, plan: &PipelinePlan, deadline: Instant) -> Result<(), BuildError> {
        let processor = self.processor.as_mut().ok_or(BuildError::NoProcessor)?;
        let resolver_changed = self.resolver_key != plan.resolver_key();
        let mut ended = Stopped::default();
        if self.recovery_key != plan.recovery_key() || resolver_changed {
            processor.set_recovery(None);
            if let Some(h) = self.recovery.take() {
                h.join(deadline, &mut ended);
            }
            self.recovery_key.clear();
        }
        if resolver_changed {
            processor.set_inspector(None);
            if let Some(h) = self.resolver.take() {
                h.join(deadline, &mut ended);
            }
            self.resolver_state = None;
            self.attributes = None;
            // Cleared until the new one runs: a failed start is retried by
            // the next apply.
            self.resolver_key.clear();
            self.generation = GENERATIONS.fetch_add(1, Ordering::Relaxed);
            if let Some((id, cfg)) = &plan.resolver {
                cfg.validate().map_err(BuildError::Resolver)?;
                let (started, handle) =
                    Resolver::start(&self.name, *cfg).map_err(|e| BuildError::Resolver(e.to_string()))?;
                processor.set_inspector(Some(Box::new(handle)));
                self.attributes = Some(started.store);
                self.resolver_state = Some((*cfg, Arc::clone(&started.stats)));
                self.resolver = Some(Helper {
                    id: id.clone(),
                    stats: started.stats,
                    thread: started.thread,
                    progress: Some(started.progress),
                    ends_within: Duration::ZERO,
                });
            }
            self.resolver_key = plan.resolver_key();
        }
        if self.recovery_key.is_empty()
            && let Some((id, cfg)) = &plan.recovery
        {
            cfg.validate().map_err(BuildError::Recovery)?;
            let labels = varta_agents::recovery_targets(self.attributes.clone(), cfg.trusted_slices.clone());
            let window = plan.resolver.as_ref().map(|(_, r)| r.diagnosis.window);
            let probe = Box::new(varta_agents::proc::process_facts);
            let debounce_file = plan
                .storage
                .as_ref()
                .map(|s| varta_processor::recovery::debounce_file_in(&s.directory, &self.name));
            let (started, handle) =
                Recovery::start(&self.name, cfg.clone(), probe, labels, window, debounce_file)
                    .map_err(|e| BuildError::Recovery(e.to_string()))?;
            processor.set_recovery(Some(handle));
            self.recovery = Some(Helper {
                id: id.clone(),
                stats: started.stats,
                thread: started.thread,
                progress: None,
                ends_within: cfg.kill_grace + SHUTDOWN_MARGIN + Duration::from_millis(500),
            });
        }
        self.recovery_key = plan.recovery_key();
        Ok(())
    }

    /// Its resolver's processor id, if it has one.
    pub fn resolver_id(&self) -> Option<&str> {
        self.resolver.as_ref().map(|h| h.id.as_str())
    }

    /// Replaces a resolver that makes no progress (see
    /// [`Resolver::replace`]: its store and counters carry over, its thread
    /// is left where it is blocked). Only on a parked pipeline, whose
    /// processor then talks to the new one. `Ok(false)`: nothing was
    /// replaced (no resolver, or [`MAX_RESOLVER_REPLACEMENTS`] reached).
    /// Whether [`Pipeline::replace_resolver`] would replace its resolver.
    pub fn can_replace_resolver(&self) -> bool {
        self.resolver_state
            .as_ref()
            .is_some_and(|(_, stats)| Resolver::replacements(stats) < MAX_RESOLVER_REPLACEMENTS)
    }

    pub fn replace_resolver(&mut self) -> Result<bool, BuildError> {
        let Some((cfg, stats)) = self.resolver_state.clone() else { return Ok(false) };
        if Resolver::replacements(&stats) >= MAX_RESOLVER_REPLACEMENTS {
            return Ok(false);
        }
        let processor = self.processor.as_mut().ok_or(BuildError::NoProcessor)?;
        let (started, handle) =
            Resolver::replace(&self.name, cfg, &stats).map_err(|e| BuildError::Resolver(e.to_string()))?;
        // Dropping the old handle tells a resolver that ever wakes up to end.
        processor.set_inspector(Some(Box::new(handle)));
        if let Some(old) = self.resolver.as_mut() {
            let blocked = std::mem::replace(&mut old.thread, started.thread);
            drop(blocked);
            old.progress = Some(started.progress);
            old.stats = started.stats;
        }
        tracing::warn!(pipeline = %self.name, "the resolver made no progress; a new one replaced it (the old thread is left blocked)");
        Ok(true)
    }

    fn drop_helpers(&mut self, deadline: Instant) {
        if let Some(p) = self.processor.as_mut() {
            p.set_recovery(None);
            p.set_inspector(None);
        }
        self.processor = None;
        let mut ended = Stopped::default();
        for h in [self.recovery.take(), self.resolver.take()].into_iter().flatten() {
            h.join(deadline, &mut ended);
        }
        self.resolver_state = None;
        self.attributes = None;
        self.resolver_key.clear();
        self.recovery_key.clear();
    }

    /// How long its helpers may take to end (a recovery runner's
    /// `kill_grace` and margin): shutdown gives at least this.
    pub fn ends_within(&self) -> Duration {
        [&self.resolver, &self.recovery]
            .into_iter()
            .flatten()
            .map(|h| h.ends_within)
            .max()
            .unwrap_or_default()
    }

    /// The resolver's and recovery runner's metrics, by processor id, and
    /// the checkpoints' under the tracker's.
    pub fn helper_metrics(&self) -> Vec<(String, Arc<dyn Instrumented>)> {
        let storage =
            self.storage.iter().map(|(_, id, stats)| (id.clone(), stats.clone() as Arc<dyn Instrumented>));
        [&self.resolver, &self.recovery]
            .into_iter()
            .flatten()
            .map(|h| (h.id.clone(), h.stats.clone()))
            .chain(storage)
            .collect()
    }

    /// A sender for a receiver feeding this pipeline: an unattested one
    /// (plain UDP) beside attested receivers fills at most its share of
    /// the queue (the tracker's `unauthenticated_share`).
    pub fn sender(&self, attested: bool) -> BatchSender {
        match self.unattested_budget {
            Some(batches) if !attested => self.tx.with_budget(batches),
            _ => self.tx.clone(),
        }
    }

    /// Asks the processor thread to park, waking it if it sleeps.
    pub fn request_park(&self) {
        if self.thread.is_some() {
            self.pause.store(true, Ordering::Release);
            // An empty batch is a no-op for the processor; it only wakes it.
            let _ = self.tx.try_send(self.tx.empty_batch());
        }
    }

    /// Takes the processor back from a thread asked to park.
    pub fn park(&mut self, deadline: Instant) {
        let component = format!("pipelines::{}", self.name);
        if let Some((processor, rx)) = take_parked(&mut self.thread, &component, deadline) {
            self.processor = Some(processor);
            self.rx = Some(rx);
        }
    }

    /// Runs a parked processor, emitting into `producers`.
    pub fn resume(&mut self, producers: Vec<ExporterQueue>) -> Result<(), BuildError> {
        if self.thread.is_some() {
            return Ok(());
        }
        let (Some(mut processor), Some(rx)) = (self.processor.take(), self.rx.take()) else {
            return Err(BuildError::NoProcessor);
        };
        let mut fanout = Fanout::new(producers);
        if let Some((checkpoint, cause)) = self.restore.take() {
            let now = processor.clock().now_ns();
            let restored = processor.restore(&checkpoint, now, cause, &mut fanout);
            tracing::info!(
                pipeline = %self.name,
                agents = restored.agents,
                stalled = restored.stalled,
                dropped = restored.dropped,
                "agents restored and re-armed; the time since the checkpoint is a blind window"
            );
        }
        if let Some(stale) = self.stale.take() {
            while let Some(batch) = stale.try_recv() {
                processor.handle_batch(&batch, processor.clock().now_ns(), &mut fanout);
            }
        }
        self.pause.store(false, Ordering::Release);
        let pause = Arc::clone(&self.pause);
        let wedge = self.wedge_after.filter(|_| cfg!(debug_assertions));
        let thread = spawn(format!("proc-{}", self.name), move || {
            match wedge {
                Some(after) => processor.run_until(&rx, &mut Wedge::new(fanout, after), &pause),
                None => processor.run_until(&rx, &mut fanout, &pause),
            };
            (processor, rx)
        })
        .map_err(BuildError::Thread)?;
        self.thread = Some(thread);
        Ok(())
    }

    /// Its stages under watch: the processor, and a resolver (notices
    /// waiting that it does not take).
    pub fn watches(&self) -> Vec<Watch> {
        let (stats, depth) = (Arc::clone(&self.stats), self.depth.clone());
        let mut watches = vec![Watch {
            component: format!("pipelines::{}", self.name),
            probe: Box::new(move || (stats.snapshot().batches, !depth.is_empty())),
        }];
        for helper in [&self.resolver, &self.recovery].into_iter().flatten() {
            if let Some(progress) = &helper.progress {
                let progress = progress.clone();
                watches.push(Watch {
                    component: format!("processors::{}", helper.id),
                    probe: Box::new(move || progress.read()),
                });
            }
        }
        watches
    }

    /// The component whose thread ended, if one did.
    pub fn died(&self) -> Option<String> {
        if self.thread.as_ref().is_some_and(JoinHandle::is_finished) {
            return Some(format!("pipelines::{}", self.name));
        }
        [&self.resolver, &self.recovery]
            .into_iter()
            .flatten()
            .find(|h| h.thread.is_finished())
            .map(|h| format!("processors::{} ({})", h.id, self.name))
    }

    /// Ends a parked pipeline that was removed (or whose start failed).
    pub fn close(mut self, deadline: Instant) {
        self.drop_helpers(deadline);
        tracing::info!(pipeline = %self.name, "pipeline removed");
    }

    /// Shutdown: drops the pipeline's own sender, so its queue closes once
    /// the receivers have stopped.
    pub fn finish(self) -> Finishing {
        let Pipeline { name, thread, processor, resolver, recovery, storage, .. } = self;
        // A parked processor (never resumed) ends here: that ends its
        // helpers; its agents are written first.
        let writer = storage.map(|(writer, _, _)| writer);
        let writer = match (processor, writer) {
            (Some(p), Some(w)) => {
                w.finish(Some(p.checkpoint()));
                None
            }
            (_, w) => w,
        };
        Finishing { name, thread, helpers: [resolver, recovery].into_iter().flatten().collect(), writer }
    }
}

/// A pipeline on its way out (see [`Pipeline::finish`]).
#[derive(Debug)]
pub struct Finishing {
    name: String,
    thread: Option<JoinHandle<ProcessorRun>>,
    helpers: Vec<Helper>,
    /// Writes the processor's last checkpoint once it has drained its queue.
    writer: Option<Writer>,
}

impl Finishing {
    /// Waits for the processor, then its helpers, by `deadline` (extended
    /// to a recovery runner's own shutdown).
    pub fn join(self, deadline: Instant) -> Stopped {
        // The processor ends first; dropping it ends its helpers.
        let mut stopped = Stopped::default();
        let mut last = None;
        if let Some(t) = self.thread
            && let Some((processor, _)) = stopped.join(format!("pipelines::{}", self.name), t, deadline)
        {
            last = Some(processor.checkpoint());
        }
        if let Some(writer) = self.writer {
            // Every agent, as the processor left them: nothing lost at a stop.
            writer.finish(last);
        }
        for h in self.helpers {
            h.join(deadline, &mut stopped);
        }
        stopped
    }
}
