//! The resolver thread: attributes for new agents, diagnoses for stalls.
//!
//! Promises: the processor-facing side ([`ResolverHandle`], an
//! [`Inspector`]) never blocks and never does I/O — it hands notices to the
//! thread through a bounded queue (`queue_size`; when full the notice is
//! dropped and counted) and collects finished diagnoses. Diagnoses are
//! bounded by `diagnosis.max_per_second` (token bucket; stalls beyond it
//! are counted as undiagnosed, never queued). Only local (UDS,
//! kernel-attested) agents are looked at: for network agents the pid names
//! a process on another host. The thread ends when the processor drops its
//! handle.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};
use serde::Deserialize;
use varta_pipeline::{Instrumented, Metric, Sample};
use varta_processor::{AgentAttributes, AgentId, AgentRef, Diagnosed, Inspector};
use varta_proto::Transport;

use crate::attributes::{self, AttributeStore, Host};
use crate::diagnose;
use crate::proc::ProcError;

fn default_true() -> bool {
    true
}
fn default_max_per_second() -> u32 {
    1000
}
fn default_window() -> Duration {
    Duration::from_millis(200)
}
fn default_queue_size() -> usize {
    65_536
}
fn default_value_limit() -> usize {
    attributes::DEFAULT_VALUE_LIMIT
}

/// `diagnosis:` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiagnosisConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Stalls diagnosed per second at most; the rest are counted as undiagnosed.
    #[serde(default = "default_max_per_second")]
    pub max_per_second: u32,
    /// Time between the two looks at a stalled process.
    #[serde(default = "default_window", deserialize_with = "varta_pipeline::config::duration")]
    pub window: Duration,
    /// Thread evidence after the diagnosis (see [`crate::evidence`]).
    #[serde(default = "default_true")]
    pub evidence: bool,
    /// Captures per second at most (a budget of their own).
    #[serde(default = "default_evidence_per_second")]
    pub evidence_per_second: u32,
    /// Threads read per capture; the rest are counted.
    #[serde(default = "default_max_threads")]
    pub max_threads: usize,
    /// Time per capture for reading threads.
    #[serde(default = "default_evidence_budget", deserialize_with = "varta_pipeline::config::duration")]
    pub evidence_budget: Duration,
    /// User-space stacks (stops one thread at a time, briefly).
    #[serde(default)]
    pub stacks: bool,
    /// Threads whose stacks are taken per capture.
    #[serde(default = "default_stack_threads")]
    pub stack_threads: usize,
    /// Time per capture for taking stacks.
    #[serde(default = "default_stack_budget", deserialize_with = "varta_pipeline::config::duration")]
    pub stack_budget: Duration,
    /// Binaries larger than this are not parsed for symbols.
    #[serde(default = "default_max_binary_bytes")]
    pub max_binary_bytes: u64,
    /// Time per capture for parsing binaries not yet cached (their
    /// frames show `module+offset` beyond it).
    #[serde(default = "default_symbol_budget", deserialize_with = "varta_pipeline::config::duration")]
    pub symbol_budget: Duration,
    /// Capture agents in another user namespace.
    #[serde(default)]
    pub allow_cross_userns: bool,
}

fn default_evidence_per_second() -> u32 {
    4
}
fn default_max_threads() -> usize {
    256
}
fn default_evidence_budget() -> Duration {
    Duration::from_millis(100)
}
fn default_stack_threads() -> usize {
    64
}
fn default_stack_budget() -> Duration {
    Duration::from_millis(50)
}
fn default_max_binary_bytes() -> u64 {
    256 << 20
}
fn default_symbol_budget() -> Duration {
    Duration::from_millis(500)
}

impl DiagnosisConfig {
    /// The evidence capture's settings and rate, when evidence is on.
    fn capture_config(&self) -> Option<(varta_evidence::Config, u32)> {
        (self.enabled && self.evidence).then(|| {
            let capture = varta_evidence::Config {
                max_threads: self.max_threads,
                budget: self.evidence_budget,
                stacks: self.stacks,
                stack_threads: self.stack_threads,
                stack_budget: self.stack_budget,
                max_binary_bytes: self.max_binary_bytes,
                parse_budget: self.symbol_budget,
                allow_cross_userns: self.allow_cross_userns,
                ..varta_evidence::Config::default()
            };
            (capture, self.evidence_per_second)
        })
    }
}

impl Default for DiagnosisConfig {
    fn default() -> Self {
        DiagnosisConfig {
            enabled: true,
            max_per_second: default_max_per_second(),
            window: default_window(),
            evidence: true,
            evidence_per_second: default_evidence_per_second(),
            max_threads: default_max_threads(),
            evidence_budget: default_evidence_budget(),
            stacks: false,
            stack_threads: default_stack_threads(),
            stack_budget: default_stack_budget(),
            max_binary_bytes: default_max_binary_bytes(),
            symbol_budget: default_symbol_budget(),
            allow_cross_userns: false,
        }
    }
}

/// `processors: resolver:` — see `agents/README.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverConfig {
    /// Keep `process.command_args` (off: arguments can hold secrets).
    #[serde(default)]
    pub include_command_args: bool,
    #[serde(default)]
    pub diagnosis: DiagnosisConfig,
    /// Notices (new agents, stalls) waiting for the resolver at most.
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// Bytes an attribute value is cut to (an agent controls its
    /// environment and command line).
    #[serde(default = "default_value_limit")]
    pub attribute_value_limit: usize,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            include_command_args: false,
            diagnosis: DiagnosisConfig::default(),
            queue_size: default_queue_size(),
            attribute_value_limit: default_value_limit(),
        }
    }
}

impl ResolverConfig {
    pub fn validate(&self) -> Result<(), String> {
        let w = self.diagnosis.window;
        if w < Duration::from_millis(10) || w > Duration::from_secs(10) {
            return Err(format!("`diagnosis.window` must be between 10ms and 10s (got {w:?})"));
        }
        if self.diagnosis.max_per_second == 0 {
            return Err(
                "`diagnosis.max_per_second` must be at least 1 (or set `diagnosis.enabled: false`)".into()
            );
        }
        let d = &self.diagnosis;
        if d.evidence && d.evidence_per_second == 0 {
            return Err(
                "`diagnosis.evidence_per_second` must be at least 1 (or set `diagnosis.evidence: false`)"
                    .into(),
            );
        }
        if d.max_threads == 0 || d.max_threads > 65_536 {
            return Err("`diagnosis.max_threads` must be between 1 and 65536".into());
        }
        if d.stack_threads > d.max_threads {
            return Err("`diagnosis.stack_threads` must not exceed `diagnosis.max_threads`".into());
        }
        for (key, t) in [
            ("evidence_budget", d.evidence_budget),
            ("stack_budget", d.stack_budget),
            ("symbol_budget", d.symbol_budget),
        ] {
            if t < Duration::from_millis(1) || t > Duration::from_secs(10) {
                return Err(format!("`diagnosis.{key}` must be between 1ms and 10s (got {t:?})"));
            }
        }
        if self.queue_size == 0 || self.queue_size > 1 << 24 {
            return Err("`queue_size` must be between 1 and 16777216".into());
        }
        if self.attribute_value_limit == 0 || self.attribute_value_limit > 65_536 {
            return Err("`attribute_value_limit` must be between 1 and 65536".into());
        }
        Ok(())
    }
}

/// Counters of one resolver.
#[derive(Debug, Default)]
pub struct ResolverStats {
    /// Notices taken off the queue (progress, for the health check).
    handled: AtomicU64,
    resolved: AtomicU64,
    resolve_failed: AtomicU64,
    notices_dropped: AtomicU64,
    diagnoses: AtomicU64,
    undiagnosed_budget: AtomicU64,
    undiagnosed_backlog: AtomicU64,
    store: Arc<AttributeStore>,
    memory: Arc<crate::memory_reads::MemoryReadStats>,
    /// Times a resolver that made no progress was replaced by a new one
    /// (kept by the one after it: the counters carry over).
    replacements: AtomicU64,
    /// Stall evidence (see [`crate::evidence`]).
    evidence: Arc<crate::evidence::EvidenceStats>,
    /// Restored agents found gone (or their pid recycled) at the restore.
    restored_exited: AtomicU64,
}

/// The resolver's metrics.
pub mod metric {
    use varta_pipeline::Metric;

    pub static RESOLVED: Metric =
        Metric::counter("agents_resolved", "Local agents whose attributes were read from /proc.")
            .unit("{agent}");
    pub static RESOLVE_FAILED: Metric = Metric::counter(
        "resolve_failed",
        "Local agents gone (or their pid recycled) before their attributes were read.",
    )
    .unit("{agent}");
    pub static NOTICES_DROPPED: Metric = Metric::counter(
        "notices_dropped",
        "New-agent and stall notices dropped (the resolver's backlog was full), and resolved-agent notices the processor did not take.",
    ).unit("{notice}");
    pub static DIAGNOSES: Metric = Metric::counter("diagnoses", "Stalls diagnosed.").unit("{diagnosis}");
    pub static RESTORED_EXITED: Metric = Metric::counter(
        "restored_exited",
        "Agents restored after a restart whose process was gone (or its pid another process's): reported stalled at once.",
    )
    .unit("{agent}");
    pub static UNDIAGNOSED: Metric = Metric::labelled(
        "undiagnosed",
        "reason",
        "Stalls of local agents not diagnosed: budget (max_per_second spent) or backlog (queue full).",
    )
    .unit("{stall}");
    pub static AGENTS: Metric = Metric::gauge(
        "attribute_agents",
        "Agents with stored attributes (a departed agent's stay 5 s, for exporters' staleness points).",
    )
    .unit("{agent}");
    pub static STRINGS: Metric =
        Metric::gauge("attribute_strings", "Distinct attribute strings held.").unit("{string}");
    pub static STRINGS_REFUSED: Metric =
        Metric::counter("attribute_strings_refused", "Attribute values left out: the string table was full.")
            .unit("{string}");
    pub static BYTES: Metric =
        Metric::gauge("attribute_bytes", "Bytes held by the attribute store.").unit("By");
    pub static MEMORY_READS_ABANDONED: Metric = Metric::counter(
        "memory_reads_abandoned",
        "Readers of a process's command line and environment abandoned because a read blocked (the target's memory lock).",
    ).unit("{read}");
    pub static MEMORY_READS_SKIPPED: Metric = Metric::counter(
        "memory_reads_skipped",
        "Command lines and environments not read because too many readers were abandoned.",
    )
    .unit("{read}");
    pub static REPLACEMENTS: Metric = Metric::counter(
        "replacements",
        "Resolvers replaced after making no progress for progress_timeout (their thread left blocked, their store and counters kept).",
    )
    .unit("{replacement}");
    pub static TRUNCATED: Metric =
        Metric::counter("attribute_values_truncated", "Attribute values cut to attribute_value_limit bytes.")
            .unit("{value}");
}

impl Instrumented for ResolverStats {
    fn samples(&self, out: &mut dyn FnMut(Sample)) {
        use metric::*;
        let plain: [(&'static Metric, &AtomicU64); 6] = [
            (&RESTORED_EXITED, &self.restored_exited),
            (&REPLACEMENTS, &self.replacements),
            (&RESOLVED, &self.resolved),
            (&RESOLVE_FAILED, &self.resolve_failed),
            (&NOTICES_DROPPED, &self.notices_dropped),
            (&DIAGNOSES, &self.diagnoses),
        ];
        for (m, v) in plain {
            out(Sample::new(m, v.load(Relaxed)));
        }
        out(Sample::labelled(&UNDIAGNOSED, "budget", self.undiagnosed_budget.load(Relaxed)));
        out(Sample::labelled(&UNDIAGNOSED, "backlog", self.undiagnosed_backlog.load(Relaxed)));
        let attributes::StoreUsage { agents, strings, refused, bytes } = self.store.usage();
        out(Sample::new(&AGENTS, agents as u64));
        out(Sample::new(&STRINGS, strings as u64));
        out(Sample::new(&STRINGS_REFUSED, refused));
        out(Sample::new(&BYTES, bytes as u64));
        out(Sample::new(&TRUNCATED, self.store.truncated()));
        out(Sample::new(&MEMORY_READS_ABANDONED, self.memory.abandoned.load(Relaxed)));
        out(Sample::new(&MEMORY_READS_SKIPPED, self.memory.skipped.load(Relaxed)));
        self.evidence.samples(out);
    }
}

enum Notice {
    Started(AgentRef),
    /// Taken back from a checkpoint after a restart: resolved, and its
    /// identity checked at once.
    Restored(AgentRef),
    Stalled {
        agent: AgentRef,
        incident: u64,
    },
    Gone(AgentId),
}

/// A started resolver: its thread, its store and its counters. The
/// processor gets the [`ResolverHandle`].
#[derive(Debug)]
pub struct Resolver {
    pub thread: JoinHandle<()>,
    pub store: Arc<AttributeStore>,
    pub stats: Arc<ResolverStats>,
    /// Liveness for the health check: `(notices taken, notices waiting)`.
    /// A wedged resolver stops taking notices while they queue up.
    pub progress: Progress,
}

/// Reads a resolver's progress: `(notices taken, notices waiting)`.
#[derive(Clone)]
pub struct Progress(Arc<dyn Fn() -> (u64, bool) + Send + Sync>);

impl Progress {
    pub fn read(&self) -> (u64, bool) {
        (self.0)()
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Progress").field(&self.read()).finish()
    }
}

impl Resolver {
    /// Starts the thread (named `resolve-<name>`).
    pub fn start(name: &str, config: ResolverConfig) -> std::io::Result<(Resolver, ResolverHandle)> {
        Self::start_with(name, config, None)
    }

    /// Starts a resolver in the place of the one whose counters are
    /// `wedged` (it made no progress; its thread is left where it is
    /// blocked): the new one keeps its attribute store — exporters and the
    /// recovery runner read the same one — and its counters, and counts
    /// the replacement.
    pub fn replace(
        name: &str,
        config: ResolverConfig,
        wedged: &Arc<ResolverStats>,
    ) -> std::io::Result<(Resolver, ResolverHandle)> {
        wedged.replacements.fetch_add(1, Relaxed);
        Self::start_with(name, config, Some(Arc::clone(wedged)))
    }

    /// Replacements so far (see [`Resolver::replace`]).
    pub fn replacements(stats: &ResolverStats) -> u64 {
        stats.replacements.load(Relaxed)
    }

    fn start_with(
        name: &str,
        config: ResolverConfig,
        previous: Option<Arc<ResolverStats>>,
    ) -> std::io::Result<(Resolver, ResolverHandle)> {
        let stats = previous.unwrap_or_else(|| {
            let store = Arc::new(AttributeStore::default().with_value_limit(config.attribute_value_limit));
            Arc::new(ResolverStats { store, ..ResolverStats::default() })
        });
        let store = Arc::clone(&stats.store);
        let (tx, notices) = bounded(config.queue_size);
        let (results_tx, results) = bounded(config.queue_size);
        let (resolved_tx, resolved) = bounded(config.queue_size);
        let (checked_tx, checked) = bounded(config.queue_size);
        let evidence = match config.diagnosis.capture_config() {
            Some((capture, per_second)) => Some(crate::evidence::start(
                name,
                capture,
                per_second,
                store.evidence(),
                Arc::clone(&stats.evidence),
            )?),
            None => None,
        };
        let (evidence_requests, evidence_results) =
            evidence.map_or((None, None), |(q, r)| (Some(q), Some(r)));
        let memory =
            crate::memory_reads::MemoryReads::new(crate::memory_reads::READ_TIMEOUT, stats.memory.clone());
        let worker = Worker {
            config,
            memory,
            host: Host::read(),
            store: Arc::clone(&store),
            stats: Arc::clone(&stats),
            results: results_tx,
            resolved: resolved_tx,
            checked: checked_tx,
            evidence: evidence_requests,
            pending: VecDeque::new(),
            lingering: Lingering::default(),
        };
        let progress: Progress = {
            // A receiver does not keep the channel open: the worker still
            // sees the processor's handle go.
            let (stats, waiting) = (Arc::clone(&stats), notices.clone());
            Progress(Arc::new(move || (stats.handled.load(Relaxed), !waiting.is_empty())))
        };
        let thread =
            std::thread::Builder::new().name(format!("resolve-{name}")).spawn(move || worker.run(notices))?;
        let window_ns = u64::try_from(config.diagnosis.window.as_nanos()).unwrap_or(u64::MAX);
        let handle = ResolverHandle {
            tx,
            results,
            resolved,
            checked,
            checks: 0,
            evidence: evidence_results,
            stats: Arc::clone(&stats),
            diagnose: config.diagnosis.enabled,
            window_ns,
            rate_per_ns: f64::from(config.diagnosis.max_per_second) / 1e9,
            burst: f64::from(config.diagnosis.max_per_second),
            tokens: f64::from(config.diagnosis.max_per_second),
            last_refill_ns: None,
            due: VecDeque::new(),
            last_poll_ns: 0,
        };
        Ok((Resolver { thread, store, stats, progress }, handle))
    }
}

/// Slack after a diagnosis' window before the processor polls for it.
const POLL_SLACK_NS: u64 = 20_000_000;
/// How often the processor re-polls for a diagnosis that is late.
const REPOLL_NS: u64 = 10_000_000;

/// The processor's side (see the module docs).
#[derive(Debug)]
pub struct ResolverHandle {
    tx: Sender<Notice>,
    results: Receiver<Diagnosed>,
    /// Agents whose attributes were stored (for threshold rules on them).
    resolved: Receiver<AgentId>,
    /// Identity checks of restored agents: whether each is gone.
    checked: Receiver<(AgentId, bool)>,
    /// Identity checks asked for and not answered yet.
    checks: usize,
    /// Finished evidence captures.
    evidence: Option<crate::evidence::EvidenceResults>,
    stats: Arc<ResolverStats>,
    diagnose: bool,
    window_ns: u64,
    rate_per_ns: f64,
    burst: f64,
    tokens: f64,
    last_refill_ns: Option<u64>,
    /// When each outstanding diagnosis should be ready (processor time).
    due: VecDeque<u64>,
    last_poll_ns: u64,
}

impl std::fmt::Debug for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::Started(a) => write!(f, "Started({})", a.id.pid),
            Notice::Restored(a) => write!(f, "Restored({})", a.id.pid),
            Notice::Stalled { agent, incident } => write!(f, "Stalled({}, {incident})", agent.id.pid),
            Notice::Gone(id) => write!(f, "Gone({})", id.pid),
        }
    }
}

impl ResolverHandle {
    fn send(&self, notice: Notice) -> bool {
        match self.tx.try_send(notice) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.notices_dropped.fetch_add(1, Relaxed);
                false
            }
        }
    }

    fn take_token(&mut self, now_ns: u64) -> bool {
        let last = self.last_refill_ns.unwrap_or(now_ns);
        self.tokens = (self.tokens + now_ns.saturating_sub(last) as f64 * self.rate_per_ns).min(self.burst);
        self.last_refill_ns = Some(now_ns);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Inspector for ResolverHandle {
    fn agent_started(&mut self, agent: &AgentRef, _now_ns: u64) {
        if agent.transport == Transport::Uds {
            self.send(Notice::Started(*agent));
        }
    }

    fn agent_stalled(&mut self, agent: &AgentRef, incident: u64, now_ns: u64) -> bool {
        if !self.diagnose || agent.transport != Transport::Uds {
            return false;
        }
        if !self.take_token(now_ns) {
            self.stats.undiagnosed_budget.fetch_add(1, Relaxed);
            return false;
        }
        if !self.send(Notice::Stalled { agent: *agent, incident }) {
            self.stats.undiagnosed_backlog.fetch_add(1, Relaxed);
            return false;
        }
        self.due.push_back(now_ns.saturating_add(self.window_ns).saturating_add(POLL_SLACK_NS));
        true
    }

    fn agent_restored(&mut self, agent: &AgentRef, now_ns: u64, restart: bool) {
        if !restart {
            return self.agent_started(agent, now_ns);
        }
        if agent.transport == Transport::Uds && self.send(Notice::Restored(*agent)) {
            self.checks += 1;
        }
    }

    fn agent_gone(&mut self, agent: &AgentId) {
        if agent.source == varta_proto::Source::Local {
            self.send(Notice::Gone(*agent));
        }
    }

    fn poll(&mut self, now_ns: u64, out: &mut dyn FnMut(Diagnosed)) {
        self.last_poll_ns = now_ns;
        while let Ok(d) = self.results.try_recv() {
            self.due.pop_front();
            out(d);
        }
    }

    fn next_poll(&self) -> Option<u64> {
        let repoll = self.last_poll_ns.saturating_add(REPOLL_NS);
        let diagnosis = self.due.front().map(|&due| due.max(repoll));
        let checks = (self.checks > 0).then_some(repoll);
        let evidence = self.evidence.as_ref().is_some_and(|e| e.outstanding()).then_some(repoll);
        [diagnosis, checks, evidence].into_iter().flatten().min()
    }

    fn take_resolved(&mut self, out: &mut Vec<AgentId>) {
        out.extend(self.resolved.try_iter());
    }

    fn poll_evidence(&mut self, out: &mut dyn FnMut(varta_processor::Evidenced)) {
        if let Some(e) = self.evidence.as_mut() {
            e.poll(out);
        }
    }

    fn take_exited(&mut self, out: &mut Vec<AgentId>) {
        for (id, exited) in self.checked.try_iter() {
            self.checks = self.checks.saturating_sub(1);
            if exited {
                out.push(id);
            }
        }
    }

    fn with_attributes(&self, agent: &AgentId, f: &mut dyn FnMut(&dyn AgentAttributes)) {
        let view = self.stats.store.read();
        match view.get(agent) {
            Some(attrs) => f(&attrs),
            None => f(&varta_processor::threshold::Unresolved),
        }
    }
}

/// Whether a restored agent's process is verifiably gone, or its pid now
/// another process's (another start time). An agent whose start time was
/// never read, or whose `/proc` cannot be read for another reason, is not
/// judged (it is reported, if at all, when its deadline passes).
fn exited_while_away(agent: &AgentRef) -> bool {
    if agent.id.start_time == 0 {
        return false;
    }
    match crate::proc::stat_checked(agent.host_pid) {
        Ok(stat) => stat.start_time != agent.id.start_time,
        Err(ProcError::Gone) => varta_pipeline::procfs::verified_gone(agent.host_pid),
        Err(_) => false,
    }
}

/// A diagnosis waiting for its second look.
struct Pending {
    at: Instant,
    /// When the first look was taken.
    first: Instant,
    agent: AgentRef,
    incident: u64,
    before: Result<diagnose::Sample, crate::proc::ProcError>,
}

struct Worker {
    config: ResolverConfig,
    memory: crate::memory_reads::MemoryReads,
    host: Host,
    store: Arc<AttributeStore>,
    stats: Arc<ResolverStats>,
    results: Sender<Diagnosed>,
    resolved: Sender<AgentId>,
    checked: Sender<(AgentId, bool)>,
    /// Asks for evidence after a diagnosis (`diagnosis.evidence`).
    evidence: Option<crate::evidence::EvidenceRequests>,
    pending: VecDeque<Pending>,
    lingering: Lingering,
}

/// How long a departed agent's attributes stay readable: exporters see
/// its eviction after the resolver does (through their own queues) and
/// name the series they mark stale from them.
pub const LINGER: Duration = Duration::from_secs(5);
/// At most this many departed agents linger; the oldest go first.
pub const MAX_LINGERING: usize = 4096;

/// Departed agents whose attributes are kept for [`LINGER`].
#[derive(Default)]
struct Lingering {
    order: VecDeque<(AgentId, Instant)>,
    /// When each still-lingering agent left; an agent that is back
    /// (started again under the same identity) is taken out, so its
    /// attributes stay.
    since: HashMap<AgentId, Instant>,
}

impl Lingering {
    fn depart(&mut self, id: AgentId, now: Instant) {
        self.order.push_back((id, now));
        self.since.insert(id, now);
    }

    fn returned(&mut self, id: &AgentId) {
        self.since.remove(id);
    }

    /// When the oldest departure is due.
    fn next_due(&self) -> Option<Instant> {
        self.order.front().map(|(_, at)| *at + LINGER)
    }

    /// Removes from `store` what lingered long enough (or beyond the cap).
    fn sweep(&mut self, store: &AttributeStore, now: Instant) {
        while let Some(&(id, at)) = self.order.front() {
            if at + LINGER > now && self.order.len() <= MAX_LINGERING {
                break;
            }
            self.order.pop_front();
            if self.since.get(&id) == Some(&at) {
                self.since.remove(&id);
                store.remove(&id);
            }
        }
    }
}

/// Test hook (debug builds only): with `VARTA_TEST_WEDGE_RESOLVER` set, the
/// first resolver of the process blocks forever on its first notice, as one
/// stuck in the kernel (the one that replaces it does not).
fn wedge_for_tests() {
    #[cfg(debug_assertions)]
    if std::env::var_os("VARTA_TEST_WEDGE_RESOLVER").is_some() {
        static WEDGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if WEDGED.swap(true, Relaxed) {
            return;
        }
        tracing::warn!("VARTA_TEST_WEDGE_RESOLVER: wedging the resolver thread (test hook)");
        loop {
            std::thread::park();
        }
    }
}

impl Worker {
    fn run(mut self, notices: Receiver<Notice>) {
        loop {
            self.finish_due();
            self.lingering.sweep(&self.store, Instant::now());
            let due =
                [self.pending.front().map(|p| p.at), self.lingering.next_due()].into_iter().flatten().min();
            let notice = match due {
                Some(at) => notices.recv_timeout(at.saturating_duration_since(Instant::now())),
                None => notices.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match notice {
                Ok(n) => {
                    wedge_for_tests();
                    self.stats.handled.fetch_add(1, Relaxed);
                    self.handle(n)
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // The processor is gone: nobody will read late diagnoses.
        tracing::debug!("resolver stopped");
    }

    fn handle(&mut self, notice: Notice) {
        match notice {
            Notice::Started(agent) => {
                self.lingering.returned(&agent.id);
                self.resolve(&agent)
            }
            Notice::Restored(agent) => {
                self.resolve(&agent);
                let exited = exited_while_away(&agent);
                if exited {
                    self.stats.restored_exited.fetch_add(1, Relaxed);
                    tracing::info!(
                        pid = agent.host_pid,
                        "a restored agent's process is gone (or its pid is another process's): reported stalled now"
                    );
                }
                if self.checked.try_send((agent.id, exited)).is_err() {
                    self.stats.notices_dropped.fetch_add(1, Relaxed);
                }
            }
            Notice::Stalled { agent, incident } => {
                let before = diagnose::sample(agent.host_pid);
                self.pending.push_back(Pending {
                    at: Instant::now() + self.config.diagnosis.window,
                    first: Instant::now(),
                    agent,
                    incident,
                    before,
                });
            }
            Notice::Gone(id) => self.lingering.depart(id, Instant::now()),
        }
    }

    fn resolve(&mut self, agent: &AgentRef) {
        let memory = &mut self.memory;
        let resolved =
            attributes::resolve_with(agent.host_pid, self.host, self.config.include_command_args, |pid| {
                memory.read(pid)
            })
            // Unknown identity (start time never read) gets no attributes:
            // the pid may already be another process's.
            .filter(|r| agent.id.start_time != 0 && r.start_time == agent.id.start_time);
        match resolved {
            Some(r) => {
                self.store.insert(agent.id, &r);
                self.stats.resolved.fetch_add(1, Relaxed);
                if self.resolved.try_send(agent.id).is_err() {
                    // The processor is not reading (or gone): its rules on
                    // attributes miss this agent, which keeps the default.
                    self.stats.notices_dropped.fetch_add(1, Relaxed);
                }
            }
            None => {
                self.stats.resolve_failed.fetch_add(1, Relaxed);
                // An answer all the same: a rule on attributes cannot apply,
                // so an agent waiting under a provisional rule falls back now.
                if self.resolved.try_send(agent.id).is_err() {
                    self.stats.notices_dropped.fetch_add(1, Relaxed);
                }
            }
        }
    }

    fn finish_due(&mut self) {
        let now = Instant::now();
        while self.pending.front().is_some_and(|p| p.at <= now) {
            let Some(p) = self.pending.pop_front() else { break };
            let after = diagnose::sample(p.agent.host_pid);
            // The time the two looks really lay apart (the CPU share and
            // the diagnosis span's length).
            let window_ns = u64::try_from(p.first.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1);
            let diagnosis = diagnose::diagnose(
                p.agent.id.start_time,
                p.before.as_ref().map_err(|e| *e),
                after.as_ref().map_err(|e| *e),
                window_ns,
                self.host.clock_ticks,
            );
            self.stats.diagnoses.fetch_add(1, Relaxed);
            if self.results.try_send(Diagnosed { agent: p.agent, incident: p.incident, diagnosis }).is_err() {
                // Only when the processor stopped reading: count it as a backlog loss.
                self.stats.undiagnosed_backlog.fetch_add(1, Relaxed);
            } else if let Some(evidence) = self.evidence.as_mut() {
                // After the cause is out: evidence never delays it.
                evidence.ask(p.agent, p.incident, diagnosis.cause);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<ResolverConfig, String> {
        let cfg: ResolverConfig = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
        cfg.validate().map(|()| cfg)
    }

    #[test]
    fn evidence_settings_parse_with_defaults_and_bounds() {
        let cfg = parse("diagnosis: { stacks: true, stack_budget: 20ms }\n").expect("valid");
        let (capture, per_second) = cfg.diagnosis.capture_config().expect("evidence on by default");
        assert!(capture.stacks);
        assert_eq!(capture.stack_budget, Duration::from_millis(20));
        assert_eq!((capture.max_threads, capture.stack_threads, per_second), (256, 64, 4));
        assert!(
            parse("diagnosis: { evidence: false }\n").expect("valid").diagnosis.capture_config().is_none()
        );
        assert!(
            parse("diagnosis: { enabled: false }\n").expect("valid").diagnosis.capture_config().is_none()
        );
        for bad in [
            "diagnosis: { evidence_per_second: 0 }\n",
            "diagnosis: { max_threads: 0 }\n",
            "diagnosis: { max_threads: 8, stack_threads: 9 }\n",
            "diagnosis: { stack_budget: 0s }\n",
            "diagnosis: { symbol_budget: 11s }\n",
            "diagnosis: { stack: true }\n",
        ] {
            assert!(parse(bad).is_err(), "accepted: {bad}");
        }
    }
}
