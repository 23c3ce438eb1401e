//! Pipeline assembly, live reconfiguration and ordered shutdown.
//!
//! Per pipeline: exporters (each on its own thread behind a bounded queue)
//! ← one processor thread (owns all agent state) ← a bounded batch queue ←
//! one thread per receiver (a receiver feeding several pipelines queues a
//! copy of each batch into each).
//!
//! Starting and reloading are one operation, [`Running::apply`]: it moves
//! the running components to a configuration, keeping every component
//! whose key ([`keys`]) did not change exactly as it is:
//!
//! 1. Every processor is parked ([`Processor::run_until`]): it keeps its
//!    agents, its queue keeps filling from the receivers.
//! 2. Receivers whose socket or wiring changes are parked too (socket still
//!    bound, datagrams wait in the kernel); the others never stop.
//! 3. What was removed or changed is stopped (a changed receiver's socket
//!    is closed before its new one binds: it may reuse the address); what
//!    is new or changed is built — processors, exporters, endpoints,
//!    receivers last.
//! 4. Everything parked resumes, rewired; the metrics views and health
//!    stages are rebuilt from what runs.
//!
//! A step that fails (a port taken, a file that cannot be opened) stops
//! the apply; step 4 still runs, so what runs is always consistent, and
//! the caller re-applies the previous configuration (see [`crate::reload`]).
//!
//! Shutdown follows the data: receivers stop; each processor drains its
//! queue and returns when the queue disconnects; that drops the exporter
//! queues, so exporters write what is left, flush and end. Each step is
//! bounded by the shutdown deadline.

mod keys;
mod slots;

mod wedge;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use varta_exporters::otlp::{ShutdownDeadline, ViewCell};
use varta_exporters::{CollectorView, LiveView, PipelineView};
use varta_pipeline::Role;
use varta_receiver::KeyHandle;

use crate::config::Config;
use crate::config::ConfigError;
use crate::health::{self, Phase, SharedReport, Stage};
use crate::registry::exporters::AsyncWiring;
use crate::reload_outcome::ReloadStats;
use crate::runtime::AsyncRuntime;
use slots::{EndpointSlot, ExporterSlot, HealthSlot, Keyed, keep_wanted, retire_unwanted};
use varta_embed::compose::{Pipeline, PipelinePlan, Receiver, Watch};

/// A running collector.
#[derive(Debug)]
pub struct Running {
    receivers: Vec<Receiver>,
    pipelines: Vec<Pipeline>,
    exporters: Vec<ExporterSlot>,
    endpoints: Vec<EndpointSlot>,
    health: Option<HealthSlot>,
    /// The shared Tokio runtime, started when a component first needs one
    /// (metrics endpoints, OTLP, extensions).
    runtime: Option<AsyncRuntime>,
    /// Set when shutdown begins; async exporters bound their final flush by it.
    deadline: ShutdownDeadline,
    /// What OTLP exporters read (replaced on every apply).
    otlp_view: ViewCell,
    /// Every component's metrics and each pipeline's snapshot.
    pub view: CollectorView,
    /// Progress probes of every stage.
    stages: Vec<Stage>,
    /// What the health endpoint serves (written by the main loop).
    pub report: SharedReport,
    /// A component left broken by a failed reload, until an apply succeeds.
    broken: Option<(String, String)>,
    /// Reload counters.
    pub reloads: Arc<ReloadStats>,
    /// Bounds joins during an apply (the configuration's `shutdown_timeout`).
    join_timeout: Duration,
    /// Replaced exporters whose final flush goes over the network: closed
    /// once the pipelines run again (see [`Running::apply`]).
    retiring: Vec<ExporterSlot>,
}

/// Builds and starts every pipeline of `config`. Nothing receives until
/// every other component was built (receivers bind last), and a startup
/// error leaves nothing running.
pub fn start(config: &Config) -> Result<Running, ConfigError> {
    let mut running = Running {
        receivers: Vec::new(),
        pipelines: Vec::new(),
        exporters: Vec::new(),
        endpoints: Vec::new(),
        health: None,
        runtime: None,
        deadline: Arc::new(OnceLock::new()),
        otlp_view: LiveView::default(),
        view: CollectorView::default(),
        stages: Vec::new(),
        report: health::shared_report(),
        broken: None,
        reloads: Arc::new(ReloadStats::default()),
        join_timeout: config.service.shutdown_timeout,
        retiring: Vec::new(),
    };
    match running.apply(config) {
        Ok(()) => Ok(running),
        Err(e) => {
            running.shutdown(config.service.shutdown_timeout);
            Err(e)
        }
    }
}

impl Running {
    /// Moves the running components to `config` (see the module docs).
    pub fn apply(&mut self, config: &Config) -> Result<(), ConfigError> {
        self.join_timeout = config.service.shutdown_timeout;
        let plans: Vec<PipelinePlan> =
            config.service.pipelines.iter().map(|(name, p)| keys::plan(config, name, &p.value)).collect();
        let deadline = Instant::now() + self.join_timeout;
        for p in &self.pipelines {
            p.request_park();
        }
        let requeued: Vec<&str> = plans
            .iter()
            .filter(|plan| {
                self.pipelines.iter().find(|p| p.name == plan.name).is_none_or(|p| p.needs_queue(plan))
            })
            .map(|plan| plan.name.as_str())
            .collect();
        let removed: Vec<&str> = self
            .pipelines
            .iter()
            .filter(|p| !plans.iter().any(|plan| plan.name == p.name))
            .map(|p| p.name.as_str())
            .collect();
        // Receivers that stay but feed other queues pause; those that go
        // keep running until they are closed (they drain their socket).
        for r in &mut self.receivers {
            let Some(c) = config.receivers.get(&r.id) else { continue };
            let feeds = keys::feeds(config, &r.id);
            let stays =
                c.config.in_place(&r.key, keys::state_dir(config, &c.config).as_deref()) && !feeds.is_empty();
            let rewire = feeds != r.feeds
                || feeds.iter().any(|f| requeued.contains(&f.as_str()))
                || r.feeds.iter().any(|f| removed.contains(&f.as_str()));
            if stays && rewire {
                r.request_park();
            }
        }
        for r in &mut self.receivers {
            r.park(deadline);
        }
        for p in &mut self.pipelines {
            p.park(deadline);
        }
        let result = self.rebuild(config, &plans);
        self.resume();
        // Only now: an old OTLP exporter's last export may wait out its
        // `timeout` against a backend that never answers, and pipelines must
        // not be parked (blind) meanwhile. Nothing produces into it any more.
        for slot in std::mem::take(&mut self.retiring) {
            slot.close(Instant::now() + self.join_timeout);
        }
        self.publish(config);
        if result.is_ok() {
            self.broken = None;
        }
        result
    }

    /// Steps 3 of [`Running::apply`]: stops what was removed or changed,
    /// builds what is new or changed. Stops at the first error.
    fn rebuild(&mut self, config: &Config, plans: &[PipelinePlan]) -> Result<(), ConfigError> {
        let deadline = || Instant::now() + self.join_timeout;
        // Receivers whose settings changed or that are gone: close their
        // sockets first (the new one may bind the same address).
        let before = std::mem::take(&mut self.receivers);
        for r in before {
            let keep =
                config.receivers.get(&r.id).is_some_and(|c| {
                    c.config.in_place(&r.key, keys::state_dir(config, &c.config).as_deref())
                }) && !keys::feeds(config, &r.id).is_empty();
            if keep {
                self.receivers.push(r);
            } else {
                r.close(deadline());
            }
        }
        // Pipelines: drop the removed, rebuild or adjust the rest.
        let before = std::mem::take(&mut self.pipelines);
        for p in before {
            if plans.iter().any(|plan| plan.name == p.name) {
                self.pipelines.push(p);
            } else {
                p.close(deadline());
            }
        }
        let runtime_needed = plans.iter().any(|plan| {
            plan.exporters.iter().any(|id| config.exporters.get(id).is_some_and(|c| c.config.needs_runtime()))
        }) || !config.service.extensions.is_empty();
        if runtime_needed && self.runtime.is_none() {
            self.runtime = Some(
                AsyncRuntime::start()
                    .map_err(|e| config.error(None, None, format!("cannot start the async runtime: {e}")))?,
            );
        }
        for plan in plans {
            let err = |m: String| config.error(None, Some(format!("service::pipelines::{}", plan.name)), m);
            match self.pipelines.iter_mut().find(|p| p.name == plan.name) {
                Some(p) => p.update(plan, deadline()).map_err(|e| err(e.to_string()))?,
                None => {
                    let mut p = Pipeline::build(plan).map_err(|e| err(e.to_string()))?;
                    p.wedge_after(wedge::from_env());
                    self.pipelines.push(p);
                }
            }
        }
        self.pipelines.sort_by_key(|p| plans.iter().position(|plan| plan.name == p.name));

        // Event exporters: stop the removed and changed (their producers,
        // the parked processors' fan-outs, are gone already), start the new.
        let wanted: Vec<(String, keys::ExporterKey)> = config
            .exporters
            .0
            .iter()
            .filter(|c| !c.config.is_endpoint())
            .filter_map(|c| {
                let id = c.id.to_string();
                let serves: Vec<(&str, u64)> = self
                    .pipelines
                    .iter()
                    .filter(|p| p.exporters.contains(&id))
                    .map(|p| (p.name.as_str(), p.generation))
                    .collect();
                (!serves.is_empty()).then(|| (id, c.config.reload_key(&serves)))
            })
            .collect();
        let (retired, new) = retire_unwanted(&mut self.exporters, wanted);
        for slot in retired {
            if slot.closes_late {
                self.retiring.push(slot);
            } else {
                slot.close(deadline());
            }
        }
        for (id, key) in new {
            let c = config.exporters.get(&id).expect("listed from the config");
            let serves: Vec<&Pipeline> =
                self.pipelines.iter().filter(|p| p.exporters.contains(&id)).collect();
            let slot = ExporterSlot::start(&id, key, &c.config, &serves, self.wiring(config))
                .map_err(|m| config.error(Some(c.at), Some(format!("exporters::{id}")), m))?;
            self.exporters.push(slot);
        }
        self.exporters.sort_by_key(|e| config.exporters.0.iter().position(|c| c.id.to_string() == e.id));

        // Metrics endpoints.
        let wanted: Vec<(String, keys::ExporterKey)> = config
            .exporters
            .0
            .iter()
            .filter(|c| c.config.is_endpoint())
            .map(|c| (c.id.to_string(), c.config.reload_key(&[])))
            .filter(|(id, _)| plans.iter().any(|p| p.exporters.contains(id)))
            .collect();
        for (id, key) in keep_wanted(&mut self.endpoints, wanted, deadline()) {
            let c = config.exporters.get(&id).expect("listed from the config");
            let rt = self.runtime.as_ref().expect("started above").handle();
            let slot = EndpointSlot::start(&id, key, &c.config, &rt)
                .map_err(|m| config.error(Some(c.at), Some(format!("exporters::{id}")), m))?;
            self.endpoints.push(slot);
        }
        self.endpoints.sort_by_key(|e| config.exporters.0.iter().position(|c| c.id.to_string() == e.id));

        // The health extension.
        let wanted = config.service.extensions.iter().find_map(|id| {
            let c = config.extensions.get(id)?;
            c.config.health_check()?;
            Some((id.clone(), c.at, &c.config))
        });
        let keep = match (&self.health, &wanted) {
            (Some(h), Some((id, _, cfg))) => h.id == *id && h.key == **cfg,
            _ => false,
        };
        if !keep {
            if let Some(h) = self.health.take() {
                h.close(deadline());
            }
            if let Some((id, at, cfg)) = wanted {
                let rt = self.runtime.as_ref().expect("started above").handle();
                self.health = Some(
                    HealthSlot::start(&id, cfg, Arc::clone(&self.report), &rt)
                        .map_err(|m| config.error(Some(at), Some(format!("extensions::{id}")), m))?,
                );
            }
        }

        // Receivers last: nothing receives before what it feeds exists.
        for c in &config.receivers.0 {
            let id = c.id.to_string();
            let feeds = keys::feeds(config, &id);
            if feeds.is_empty() || self.receivers.iter().any(|r| r.id == id) {
                continue;
            }
            // ReceiverError messages already name the receiver.
            let state_dir = keys::state_dir(config, &c.config)
                .map(|dir| varta_embed::compose::storage::open_dir(&dir))
                .transpose()
                .map_err(|m| config.error(Some(c.at), Some(format!("receivers::{id}")), m))?;
            let slot = c
                .config
                .bind(&id, feeds, state_dir.as_deref())
                .map_err(|m| config.error(Some(c.at), None, m))?;
            self.receivers.push(slot);
        }
        for r in &mut self.receivers {
            r.feeds = keys::feeds(config, &r.id);
        }
        self.receivers.sort_by_key(|r| config.receivers.0.iter().position(|c| c.id.to_string() == r.id));
        Ok(())
    }

    fn wiring(&self, config: &Config) -> AsyncWiring {
        AsyncWiring {
            runtime: self.runtime.as_ref().map(AsyncRuntime::handle),
            view: self.otlp_view.clone(),
            shutdown_timeout: config.service.shutdown_timeout,
            shutdown_deadline: self.deadline.clone(),
        }
    }

    /// Step 4 of [`Running::apply`]: every parked processor and receiver
    /// runs again, wired to what runs now.
    fn resume(&mut self) {
        for p in &mut self.pipelines {
            let queues = p.exporters.iter().filter_map(|id| self.exporters.iter().find(|e| e.id == *id));
            if let Err(e) = p.resume(queues.filter_map(|e| e.producer(&p.name)).collect()) {
                self.broken = Some((format!("pipelines::{}", p.name), e.to_string()));
            }
        }
        for r in &mut self.receivers {
            let attested = r.attested();
            let queues: Vec<_> = r
                .feeds
                .iter()
                .filter_map(|f| self.pipelines.iter().find(|p| p.name == *f))
                .map(|p| p.sender(attested))
                .collect();
            if let Err(e) = r.resume(queues) {
                self.broken = Some((format!("receivers::{}", r.id), e));
            }
        }
    }

    /// Rebuilds the metrics views and the health stages from what runs.
    fn publish(&mut self, config: &Config) {
        let started = self.view.started;
        let mut view = CollectorView { started, ..CollectorView::default() };
        // Listed in configuration order: receivers, pipelines, exporters.
        for r in &self.receivers {
            view.add(Role::Receiver, r.id.clone(), r.stats.clone());
        }
        for p in &self.pipelines {
            for (id, metrics) in p.helper_metrics() {
                view.add(Role::Processor, id, metrics);
            }
        }
        for p in &self.pipelines {
            view.add_pipeline(PipelineView {
                name: p.name.clone(),
                snapshots: p.snapshots.clone(),
                queue: p.depth.clone(),
                attributes: p.attributes.clone(),
            });
        }
        for e in &self.exporters {
            view.add(Role::Exporter, e.id.clone(), e.telemetry.clone());
        }
        for e in &self.endpoints {
            view.add(Role::Exporter, e.id.clone(), e.telemetry.clone());
        }
        if let Some(h) = &self.health {
            view.add(Role::Extension, h.id.clone(), h.connections());
        }
        view.add(Role::Service, "service", self.reloads.clone());
        view.carry_starts(&self.view);
        self.otlp_view.set(view.clone());
        for e in &self.endpoints {
            let mut own = view.clone();
            own.pipelines.retain(|p| {
                config.service.pipelines.get(&p.name).is_some_and(|c| c.value.exporters.contains(&e.id))
            });
            e.view.set(own);
        }
        self.view = view;
        self.restage();
    }

    /// The health stages, from what runs.
    fn restage(&mut self) {
        self.stages = self
            .receivers
            .iter()
            .map(Receiver::watch)
            .chain(self.pipelines.iter().flat_map(Pipeline::watches))
            .map(|Watch { component, probe }| Stage::new(component, probe))
            .chain(self.exporters.iter().map(ExporterSlot::stage))
            .collect();
    }

    /// Replaces each resolver that was reported stuck by the previous
    /// check and still is (so the health endpoint shows it for a check
    /// interval at least): its pipeline parks for the swap — the processor
    /// keeps its agents, the queue fills meanwhile — and resumes. Bounded
    /// per pipeline (`MAX_RESOLVER_REPLACEMENTS`): each leaves a thread
    /// blocked; past it the resolver stays reported.
    fn replace_wedged_resolvers(&mut self, unhealthy: &[(String, String)]) {
        let reported: Vec<String> = {
            let report = self.report.lock().unwrap_or_else(|p| p.into_inner());
            report.unhealthy.iter().map(|(c, _)| c.clone()).collect()
        };
        let stuck = |p: &Pipeline| {
            p.resolver_id().is_some_and(|id| {
                let component = format!("processors::{id}");
                reported.contains(&component) && unhealthy.iter().any(|(c, _)| *c == component)
            }) && p.can_replace_resolver()
        };
        let wedged: Vec<usize> = (0..self.pipelines.len()).filter(|&i| stuck(&self.pipelines[i])).collect();
        if wedged.is_empty() {
            return;
        }
        let deadline = Instant::now() + self.join_timeout;
        for &i in &wedged {
            self.pipelines[i].request_park();
        }
        for &i in &wedged {
            let p = &mut self.pipelines[i];
            p.park(deadline);
            if let Err(e) = p.replace_resolver() {
                tracing::error!(pipeline = %p.name, "cannot replace the stuck resolver: {e}");
            }
        }
        self.resume();
        self.restage();
    }

    /// Secure receivers' key handles, for key rotation.
    pub fn keys(&self) -> impl Iterator<Item = (&str, &KeyHandle)> {
        self.receivers.iter().filter_map(|r| Some((r.id.as_str(), r.keys.as_ref()?)))
    }

    /// Marks the collector broken after a failed reload whose rollback
    /// failed too: health checks fail, naming it, until an apply succeeds.
    pub fn mark_broken(&mut self, component: String, why: String) {
        self.broken = Some((component, why));
    }

    /// Whether any thread ended (they only end at shutdown): then the
    /// collector shuts down.
    pub fn thread_died(&self) -> Option<String> {
        let receivers = self.receivers.iter().filter(|r| r.died()).map(|r| format!("receivers::{}", r.id));
        let pipelines = self.pipelines.iter().filter_map(Pipeline::died);
        let exporters = self.exporters.iter().filter(|e| e.died()).map(|e| format!("exporters::{}", e.id));
        let endpoints = self.endpoints.iter().filter(|e| e.died()).map(|e| format!("exporters::{}", e.id));
        receivers.chain(pipelines).chain(exporters).chain(endpoints).next()
    }

    /// Re-checks every stage's progress (see [`crate::health`]), updates the
    /// shared report and says whether all is healthy (gates the systemd
    /// watchdog and the health endpoint).
    pub fn check_health(&mut self, timeout: Duration) -> bool {
        let now = Instant::now();
        let mut unhealthy: Vec<(String, String)> = self
            .stages
            .iter_mut()
            .filter_map(|s| s.check(now, timeout).map(|why| (s.component.clone(), why)))
            .collect();
        unhealthy.extend(self.broken.clone());
        self.replace_wedged_resolvers(&unhealthy);
        let mut report = self.report.lock().unwrap_or_else(|p| p.into_inner());
        report.phase = Phase::Running;
        if !unhealthy.is_empty() && report.unhealthy != unhealthy {
            tracing::error!(
                ?unhealthy,
                "a pipeline stage is broken or makes no progress; health checks fail"
            );
        }
        report.unhealthy = unhealthy;
        report.recovered = self.recovered();
        report.healthy()
    }

    /// What failed and was put right: exporter tasks that panicked and were
    /// restarted (`task_panics`), resolvers replaced (`replacements`).
    fn recovered(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for c in self.view.components.iter().filter(|c| c.role == Role::Exporter) {
            c.metrics.samples(&mut |s| {
                if s.metric.name == "task_panics" && s.value > 0 {
                    out.push((
                        format!("{}::{}", c.role.section(), c.id),
                        format!("{} task panic(s); restarted with its queue kept (see the log)", s.value),
                    ));
                }
            });
        }
        for c in self.view.components.iter().filter(|c| c.role == Role::Processor) {
            c.metrics.samples(&mut |s| {
                if s.metric.name == "replacements" && s.value > 0 {
                    out.push((
                        format!("{}::{}", c.role.section(), c.id),
                        format!(
                            "replaced {} time(s) after making no progress for progress_timeout; its store and counters kept (see the log)",
                            s.value
                        ),
                    ));
                }
            });
        }
        out
    }

    /// Ordered shutdown; says whether every stage stopped cleanly in time,
    /// and hands back the view (processors published their final snapshot
    /// when they ended).
    pub fn shutdown(self, timeout: Duration) -> (bool, CollectorView) {
        // A recovery runner's children get their `kill_grace` (then are
        // killed and recorded) whatever `shutdown_timeout` says.
        let helpers = self.pipelines.iter().map(Pipeline::ends_within).max().unwrap_or_default();
        let deadline = Instant::now() + timeout.max(helpers + Duration::from_millis(500));
        self.report.lock().unwrap_or_else(|p| p.into_inner()).phase = Phase::Stopping;
        let _ = self.deadline.set(deadline);
        for r in &self.receivers {
            r.stop();
        }
        let mut clean = true;
        for r in self.receivers {
            clean &= r.join(deadline).clean;
        }
        // With every receiver gone, dropping the pipelines' own senders
        // closes their queues: processors drain and end.
        let mut finishing = Vec::new();
        for p in self.pipelines {
            finishing.push(p.finish());
        }
        for f in finishing {
            clean &= f.join(deadline).clean;
        }
        for e in self.exporters {
            clean &= e.join(deadline);
        }
        // Metrics endpoints last: they serve the final snapshots until here.
        for e in &self.endpoints {
            e.stop();
        }
        if let Some(h) = &self.health {
            h.stop();
        }
        if let Some(rt) = self.runtime {
            // Exporters have flushed (or given up at the deadline); what is
            // left of it bounds the runtime's own shutdown.
            rt.shutdown(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100)));
        }
        (clean, self.view)
    }
}
