//! The recovery runner thread and the processor's handle to it: the loop
//! and its bookkeeping. What a command may act on is decided by
//! [`super::gate`]; a command's process group is run by [`super::children`].
//!
//! Promises: every stall handed over gets exactly one decision, and every
//! decision and outcome an audit record (refusals the processor side made
//! because the queue was full are audited as a summary record with their
//! count). Each command counts as outstanding until its last group member
//! is gone.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};
use varta_pipeline::procfs::{ProcError, verified_gone};
use varta_pipeline::{Instrumented, Metric, Sample};
use varta_proto::Transport;

use super::audit::{AuditLog, Record};
use super::children::{self, Launch, Running, escaped};
use super::gate::{Gate, Stall, TargetFacts};
use super::{Recovered, RecoveryConfig, RecoveryOutcome, RecoveryRefusal, RecoveryReport};
use crate::agent::AgentRef;
use crate::inspect::{Cause, Wchan};

/// What the host says about a process right before a spawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessFacts {
    pub start_time: u64,
    /// Stopped (SIGSTOP) or traced.
    pub stopped: bool,
}

/// Reads [`ProcessFacts`] of a host pid, or why it cannot (gone, denied,
/// other: the one `/proc` access layer). Injected by the collector (it
/// reads `/proc`; this crate does not).
pub type ProcessProbe = Box<dyn Fn(u32) -> Result<ProcessFacts, ProcError> + Send>;

/// What is known of a stalled agent's target (see [`TargetFacts`]), read
/// right before the decision. Injected by the collector.
pub type AgentLabels = Box<dyn Fn(&AgentRef) -> TargetFacts + Send>;

/// How much longer than the diagnosis window a stall waits for its
/// diagnosis (the resolver may be busy), before it is decided without one.
const DIAGNOSIS_MARGIN: Duration = Duration::from_secs(1);
/// How long shutdown waits beyond `kill_grace` for killed groups to go.
pub const SHUTDOWN_MARGIN: Duration = Duration::from_millis(500);
/// How often the runner looks at its children while any is outstanding.
const TICK: Duration = Duration::from_millis(10);

enum Notice {
    Stalled { agent: AgentRef, incident: u64, diagnosis_pending: bool, restored: bool },
    Diagnosed { incident: u64, cause: Cause },
    Resumed { incident: u64 },
}

/// Counters of the recovery runner (its own component in metrics).
#[derive(Debug, Default)]
pub struct RecoveryStats {
    audit_records: AtomicU64,
    audit_dropped: AtomicU64,
    reports_dropped: AtomicU64,
    notices_dropped: AtomicU64,
    outstanding: AtomicU64,
    captured_bytes: AtomicU64,
    /// `queue_full` refusals the processor side made, not yet audited.
    unaudited_queue_full: AtomicU64,
}

/// The runner's metrics.
pub mod metric {
    use varta_pipeline::Metric;

    pub static AUDIT_RECORDS: Metric =
        Metric::counter("audit_records", "Records written to the audit log.").unit("{record}");
    pub static AUDIT_DROPPED: Metric = Metric::counter(
        "audit_dropped",
        "Audit records that could not be written (logged; the next record that can says how many).",
    )
    .unit("{record}");
    pub static REPORTS_DROPPED: Metric = Metric::counter(
        "reports_dropped",
        "Recovery reports (audited) the processor did not read in time, so no event or counter shows them.",
    )
    .unit("{report}");
    pub static NOTICES_DROPPED: Metric = Metric::counter(
        "notices_dropped",
        "Diagnoses and resumes the runner's full queue could not take (the stall is then decided without them).",
    ).unit("{notice}");
    pub static OUTSTANDING: Metric =
        Metric::gauge("outstanding", "Recovery commands running now.").unit("{recovery}");
    pub static CAPTURED: Metric = Metric::counter(
        "captured_output_bytes",
        "Bytes of recovery command output captured (stdout + stderr).",
    )
    .unit("By");
}

impl Instrumented for RecoveryStats {
    fn samples(&self, out: &mut dyn FnMut(Sample)) {
        use metric::*;
        let all: [(&'static Metric, &AtomicU64); 6] = [
            (&AUDIT_RECORDS, &self.audit_records),
            (&AUDIT_DROPPED, &self.audit_dropped),
            (&REPORTS_DROPPED, &self.reports_dropped),
            (&NOTICES_DROPPED, &self.notices_dropped),
            (&OUTSTANDING, &self.outstanding),
            (&CAPTURED, &self.captured_bytes),
        ];
        for (m, v) in all {
            out(Sample::new(m, v.load(Relaxed)));
        }
    }
}

/// A started runner: its thread and counters; the processor gets the handle.
#[derive(Debug)]
pub struct Recovery {
    pub thread: JoinHandle<()>,
    pub stats: Arc<RecoveryStats>,
}

/// The processor's side: never blocks.
#[derive(Debug)]
pub struct RecoveryHandle {
    tx: Sender<Notice>,
    results: Receiver<Recovered>,
    /// Reports made on this side (queue full), handed out at the next poll.
    local: VecDeque<Recovered>,
    program: Wchan,
    outstanding: u64,
    last_poll_ns: u64,
    stats: Arc<RecoveryStats>,
}

impl std::fmt::Debug for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::Stalled { incident, .. } => write!(f, "Stalled({incident})"),
            Notice::Diagnosed { incident, cause } => write!(f, "Diagnosed({incident}, {})", cause.label()),
            Notice::Resumed { incident } => write!(f, "Resumed({incident})"),
        }
    }
}

impl Recovery {
    /// Opens the audit log (a `boot` record) and starts the runner thread.
    /// `diagnosis_window`: the resolver's, when stalls get a diagnosis
    /// (a stall waits that long plus a margin for it). `debounce_file`:
    /// where the last runs are kept across restarts and reloads (see
    /// [`super::debounce`]), if the pipeline keeps state.
    pub fn start(
        name: &str,
        config: RecoveryConfig,
        probe: ProcessProbe,
        labels: AgentLabels,
        diagnosis_window: Option<Duration>,
        debounce_file: Option<std::path::PathBuf>,
    ) -> std::io::Result<(Recovery, RecoveryHandle)> {
        let (runner, notices, handle) =
            Runner::prepare(config, probe, labels, diagnosis_window, debounce_file)?;
        let stats = Arc::clone(&runner.stats);
        let thread =
            std::thread::Builder::new().name(format!("recover-{name}")).spawn(move || runner.run(notices))?;
        Ok((Recovery { thread, stats }, handle))
    }
}

fn program_name(config: &RecoveryConfig) -> Wchan {
    let p = config.exec.first().map(String::as_str).unwrap_or("");
    Wchan::new(p.rsplit('/').next().unwrap_or(p))
}

impl RecoveryHandle {
    fn send(&mut self, notice: Notice) -> bool {
        match self.tx.try_send(notice) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    /// A stall: to be acted on once its diagnosis is in (when one is
    /// pending), else now. `restored`: the agent has been silent since the
    /// collector restored it from a checkpoint (see `on_restore`).
    pub fn stalled(&mut self, agent: &AgentRef, incident: u64, diagnosis_pending: bool, restored: bool) {
        if self.send(Notice::Stalled { agent: *agent, incident, diagnosis_pending, restored }) {
            self.outstanding += 1;
        } else {
            let report =
                RecoveryReport::new(RecoveryOutcome::Refused(RecoveryRefusal::QueueFull), self.program);
            self.local.push_back(Recovered { agent: *agent, incident, report });
            // The runner audits these (a summary record with the count).
            self.stats.unaudited_queue_full.fetch_add(1, Relaxed);
        }
    }

    pub fn diagnosed(&mut self, incident: u64, cause: Cause) {
        if !self.send(Notice::Diagnosed { incident, cause }) {
            self.stats.notices_dropped.fetch_add(1, Relaxed);
        }
    }

    pub fn resumed(&mut self, incident: u64) {
        if !self.send(Notice::Resumed { incident }) {
            self.stats.notices_dropped.fetch_add(1, Relaxed);
        }
    }

    /// Every report since the last poll.
    pub fn poll(&mut self, now_ns: u64, out: &mut dyn FnMut(Recovered)) {
        self.last_poll_ns = now_ns;
        while let Some(r) = self.local.pop_front() {
            out(r);
        }
        while let Ok(r) = self.results.try_recv() {
            if r.report.outcome != RecoveryOutcome::Started {
                self.outstanding = self.outstanding.saturating_sub(1);
            }
            out(r);
        }
    }

    /// While stalls or children are outstanding, the processor polls every 20 ms.
    pub fn next_poll(&self) -> Option<u64> {
        (self.outstanding > 0).then(|| self.last_poll_ns.saturating_add(20_000_000))
    }
}

struct Pending {
    agent: AgentRef,
    incident: u64,
    since: Instant,
    cause: Option<Cause>,
    ready: bool,
    restored: bool,
}

/// A command the runner started, and for which stall.
struct Child {
    running: Running,
    agent: AgentRef,
    incident: u64,
}

struct Runner {
    config: RecoveryConfig,
    probe: ProcessProbe,
    labels: AgentLabels,
    gate: Gate,
    audit: AuditLog,
    stats: Arc<RecoveryStats>,
    results: Sender<Recovered>,
    pending: Vec<Pending>,
    children: Vec<Child>,
    debounce: super::debounce::Debounce,
    rate_tokens: f64,
    rate_last: Instant,
    program: Wchan,
    diagnosis_wait: Duration,
    /// Audit records that could not be written since the last one that could.
    unaudited_lost: u64,
}

fn origin(agent: &AgentRef) -> String {
    format!("{} {}", agent.transport.as_str(), agent.id.source)
}

impl Runner {
    /// The runner, its notice queue and the processor's handle to it.
    fn prepare(
        config: RecoveryConfig,
        probe: ProcessProbe,
        labels: AgentLabels,
        diagnosis_window: Option<Duration>,
        debounce_file: Option<std::path::PathBuf>,
    ) -> std::io::Result<(Runner, Receiver<Notice>, RecoveryHandle)> {
        let config_debounce = config.debounce;
        let key = match &config.audit_key_file {
            Some(path) => Some(varta_secrets::load_key_file(path).map_err(std::io::Error::other)?),
            None => None,
        };
        let audit = AuditLog::open(
            &config.audit_file,
            config.audit_sync,
            config.audit_rotate_bytes,
            config.audit_rotate_keep,
            key,
        )?;
        let stats = Arc::new(RecoveryStats::default());
        stats.audit_records.store(audit.records_written(), Relaxed);
        let (tx, notices) = bounded(4096);
        let (results_tx, results) = bounded(65_536);
        let program = program_name(&config);
        if let Some(problem) = config.selection_problem() {
            tracing::error!("recovery: {problem}");
        }
        let runner = Runner {
            gate: Gate::new(&config),
            diagnosis_wait: diagnosis_window.unwrap_or_default() + DIAGNOSIS_MARGIN,
            unaudited_lost: 0,
            rate_tokens: f64::from(config.max_spawns_per_second),
            rate_last: Instant::now(),
            config,
            probe,
            labels,
            audit,
            stats: Arc::clone(&stats),
            results: results_tx,
            pending: Vec::new(),
            children: Vec::new(),
            debounce: super::debounce::Debounce::load(debounce_file, config_debounce),
            program,
        };
        let handle = RecoveryHandle {
            tx,
            results,
            local: VecDeque::new(),
            program,
            outstanding: 0,
            last_poll_ns: 0,
            stats,
        };
        Ok((runner, notices, handle))
    }

    fn run(mut self, notices: Receiver<Notice>) {
        loop {
            let busy = !self.pending.is_empty() || !self.children.is_empty();
            let got = if busy {
                notices.recv_timeout(TICK)
            } else {
                notices.recv().map_err(|_| RecvTimeoutError::Disconnected)
            };
            match got {
                Ok(n) => self.handle(n),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            // Everything already queued is read before deciding: a stall
            // whose resume waits behind it must never spawn (the queue is
            // bounded, so this ends).
            while let Ok(n) = notices.try_recv() {
                self.handle(n);
            }
            self.decide_ready();
            self.tend_children(false);
            self.audit_queue_full();
        }
        self.shutdown();
    }

    fn handle(&mut self, notice: Notice) {
        match notice {
            Notice::Stalled { agent, incident, diagnosis_pending, restored } => self.pending.push(Pending {
                agent,
                incident,
                since: Instant::now(),
                cause: None,
                ready: !diagnosis_pending,
                restored,
            }),
            Notice::Diagnosed { incident, cause } => {
                if let Some(p) = self.pending.iter_mut().find(|p| p.incident == incident) {
                    p.cause = Some(cause);
                    p.ready = true;
                }
            }
            Notice::Resumed { incident } => {
                if let Some(at) = self.pending.iter().position(|p| p.incident == incident) {
                    let p = self.pending.swap_remove(at);
                    self.report(
                        &p.agent,
                        p.incident,
                        RecoveryReport::new(RecoveryOutcome::Skipped, self.program),
                        "agent resumed before the command ran",
                    );
                }
            }
        }
    }

    fn decide_ready(&mut self) {
        let mut i = 0;
        while i < self.pending.len() {
            let p = &self.pending[i];
            if p.ready || p.since.elapsed() >= self.diagnosis_wait {
                let p = self.pending.remove(i);
                self.decide(p);
                // Children that ended free their `max_outstanding` place
                // before the next decision, as when stalls arrive one by one.
                self.tend_children(false);
            } else {
                i += 1;
            }
        }
    }

    fn refuse(&mut self, p: &Pending, why: RecoveryRefusal) {
        self.refuse_because(p, why, why.label());
    }

    fn refuse_because(&mut self, p: &Pending, why: RecoveryRefusal, detail: &str) {
        let report = RecoveryReport::new(RecoveryOutcome::Refused(why), self.program);
        self.report(&p.agent, p.incident, report, detail);
    }

    /// One record for the stalls the processor side refused (queue full).
    fn audit_queue_full(&mut self) {
        let n = self.stats.unaudited_queue_full.swap(0, Relaxed);
        if n > 0 {
            let record = Record {
                kind: "refused",
                outcome: "refused:queue_full".into(),
                program: self.program_path(),
                detail: format!("{n} stalls refused without a decision: the runner's queue was full"),
                ..Record::default()
            };
            self.append(&record);
        }
    }

    fn take_rate_token(&mut self) -> bool {
        let rate = f64::from(self.config.max_spawns_per_second);
        self.rate_tokens = (self.rate_tokens + self.rate_last.elapsed().as_secs_f64() * rate).min(rate);
        self.rate_last = Instant::now();
        if self.rate_tokens >= 1.0 {
            self.rate_tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn decide(&mut self, p: Pending) {
        if p.restored && !self.config.runs_on_restore() {
            // A maintenance stop is not an outage: the operator decides.
            return self.refuse_because(
                &p,
                RecoveryRefusal::Restored,
                "silent since the collector restored it: it stopped while the collector was down (on_restore: refuse)",
            );
        }
        let a = p.agent;
        let local = a.transport == Transport::Uds;
        let authenticated = matches!(a.transport, Transport::Uds | Transport::SecureMaster);
        if !authenticated && !self.config.allow_unauthenticated {
            return self.refuse(&p, RecoveryRefusal::Unauthenticated);
        }
        if local && a.frame_pid != a.id.pid && !self.config.allow_cross_namespace {
            return self.refuse(&p, RecoveryRefusal::CrossNamespace);
        }
        if local && a.id.start_time == 0 {
            // Without a start time the pid cannot be tied to the process
            // that stalled (it may already belong to another one).
            return self.refuse(&p, RecoveryRefusal::IdentityUnknown);
        }
        match p.cause.filter(|c| *c != Cause::Unknown) {
            Some(cause) if !self.config.triggers_on(cause) => {
                let why =
                    if cause == Cause::Stopped { RecoveryRefusal::Stopped } else { RecoveryRefusal::Cause };
                return self.refuse(&p, why);
            }
            None if !self.config.runs_on_unknown_cause() => {
                return self.refuse(&p, RecoveryRefusal::CauseUnknown);
            }
            _ => {}
        }
        let facts = (self.labels)(&a);
        let stall = Stall { agent: &a, incident: p.incident, cause: p.cause, facts: &facts };
        let argv = match self.gate.argv(&self.config.exec, &stall) {
            Ok(argv) => argv,
            Err(refused) => {
                tracing::warn!(incident = p.incident, "recovery refused: {}", refused.detail);
                return self.refuse_because(&p, refused.why, &refused.detail);
            }
        };
        let now = Instant::now();
        if self.debounce.recent(&a.id, now, self.config.debounce) {
            return self.refuse(&p, RecoveryRefusal::Debounce);
        }
        if self.children.len() >= self.config.max_outstanding {
            return self.refuse(&p, RecoveryRefusal::Outstanding);
        }
        if !self.take_rate_token() {
            return self.refuse(&p, RecoveryRefusal::Rate);
        }
        if local {
            // Right before spawning: the pid must still be the agent's, and
            // not stopped or traced — whatever the diagnosis said, or if
            // it never came.
            match (self.probe)(a.host_pid) {
                Ok(f) if f.start_time != a.id.start_time => {
                    return self.refuse(&p, RecoveryRefusal::PidRecycled);
                }
                Ok(f) if f.stopped && !self.config.triggers_on(Cause::Stopped) => {
                    return self.refuse(&p, RecoveryRefusal::Stopped);
                }
                Ok(_) => {}
                // Gone counts only when the kernel confirms it (ESRCH); a
                // read that failed otherwise (EMFILE, denied) is no answer.
                Err(ProcError::Gone) if verified_gone(a.host_pid) => {
                    if p.cause != Some(Cause::Exited) || !self.config.triggers_on(Cause::Exited) {
                        return self.refuse(&p, RecoveryRefusal::PidRecycled);
                    }
                }
                Err(_) => return self.refuse(&p, RecoveryRefusal::IdentityUnknown),
            }
        }
        self.debounce.ran(a.id, now);
        self.spawn(p, argv);
    }

    /// The program as exec'd (`exec[0]`: absolute, placeholder-free).
    fn program_path(&self) -> String {
        self.config.exec.first().cloned().unwrap_or_default()
    }

    fn spawn(&mut self, p: Pending, argv: Vec<String>) {
        let launch = Launch { env: &self.config.env, inherit_env: self.config.inherit_env };
        match children::spawn(&argv, launch) {
            Ok(child) => {
                let mut report = RecoveryReport::new(RecoveryOutcome::Started, self.program);
                report.child_pid = child.pid();
                self.report(
                    &p.agent,
                    p.incident,
                    report,
                    &format!("cause {}", p.cause.unwrap_or(Cause::Unknown).label()),
                );
                self.stats.outstanding.fetch_add(1, Relaxed);
                self.children.push(Child { running: child, agent: p.agent, incident: p.incident });
            }
            Err(e) => {
                let report = RecoveryReport::new(RecoveryOutcome::SpawnFailed, self.program);
                let program = argv.first().map(String::as_str).unwrap_or("");
                tracing::error!(program = %program, "cannot start the recovery command: {e}");
                self.report(&p.agent, p.incident, report, &e.to_string());
            }
        }
    }

    /// Tends every child (see [`Running::tend`]); a finished one is reported.
    fn tend_children(&mut self, kill_all: bool) {
        let (cap, timeout, grace) =
            (self.config.capture_output_bytes, self.config.timeout, self.config.kill_grace);
        let mut i = 0;
        while i < self.children.len() {
            if self.children[i].running.tend(cap, timeout, grace, kill_all) {
                let c = self.children.swap_remove(i);
                self.finished(c);
            } else {
                i += 1;
            }
        }
    }

    fn finished(&mut self, child: Child) {
        use std::os::unix::process::ExitStatusExt;
        let Child { running: c, agent, incident } = child;
        self.stats.outstanding.fetch_sub(1, Relaxed);
        self.stats.captured_bytes.fetch_add(c.stdout.len() as u64 + c.stderr.len() as u64, Relaxed);
        let (code, signal) = c.exited.map_or((None, None), |s| (s.code(), s.signal()));
        let outcome = match (code, c.terminated_at) {
            (_, Some(_)) => RecoveryOutcome::TimedOut,
            (Some(0), None) => RecoveryOutcome::Succeeded,
            _ => RecoveryOutcome::Failed,
        };
        let mut report = RecoveryReport::new(outcome, self.program);
        report.child_pid = c.pid();
        report.exit_code = code;
        report.signal = signal;
        report.duration_ns = u64::try_from(c.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        report.stdout_bytes = u32::try_from(c.stdout_total).unwrap_or(u32::MAX);
        report.stderr_bytes = u32::try_from(c.stderr_total).unwrap_or(u32::MAX);
        if !c.stdout.is_empty() || !c.stderr.is_empty() {
            tracing::info!(
                target: "varta::recovery",
                incident,
                child_pid = report.child_pid,
                stdout = %escaped(&c.stdout),
                stderr = %escaped(&c.stderr),
                "recovery command output (first {} bytes of each stream, escaped)",
                self.config.capture_output_bytes
            );
        }
        let detail = if c.killed { "its process group was killed (SIGKILL)" } else { "" };
        self.report(&agent, incident, report, detail);
    }

    /// Audits and hands a report to the processor.
    fn report(&mut self, agent: &AgentRef, incident: u64, report: RecoveryReport, detail: &str) {
        let kind = match report.outcome {
            RecoveryOutcome::Started => "spawn",
            RecoveryOutcome::Refused(_) | RecoveryOutcome::Skipped => "refused",
            _ => "complete",
        };
        let outcome = match report.outcome {
            RecoveryOutcome::Refused(r) => format!("refused:{}", r.label()),
            o => o.label().to_owned(),
        };
        let exit = match (report.exit_code, report.signal) {
            (Some(c), _) => format!("code={c}"),
            (None, Some(s)) => format!("signal={s}"),
            _ => "-".into(),
        };
        let record = Record {
            kind,
            incident,
            pid: agent.host_pid,
            start_time: agent.id.start_time,
            origin: origin(agent),
            child_pid: report.child_pid,
            program: self.program_path(),
            outcome,
            exit,
            duration_ms: report.duration_ns / 1_000_000,
            stdout_bytes: u64::from(report.stdout_bytes),
            stderr_bytes: u64::from(report.stderr_bytes),
            detail: detail.to_owned(),
        };
        self.append(&record);
        if self.results.try_send(Recovered { agent: *agent, incident, report }).is_err() {
            self.stats.reports_dropped.fetch_add(1, Relaxed);
        }
    }

    /// Writes one audit record; when earlier ones were lost, first a
    /// record saying how many.
    fn append(&mut self, record: &Record) {
        if self.unaudited_lost > 0 {
            let lost = Record {
                kind: "lost",
                detail: format!("{} audit records could not be written", self.unaudited_lost),
                ..Record::default()
            };
            if self.audit.append(&lost).is_ok() {
                self.stats.audit_records.fetch_add(1, Relaxed);
                self.unaudited_lost = 0;
            }
        }
        match self.audit.append(record) {
            Ok(()) => {
                self.stats.audit_records.fetch_add(1, Relaxed);
            }
            Err(e) => {
                self.unaudited_lost += 1;
                self.stats.audit_dropped.fetch_add(1, Relaxed);
                tracing::error!("cannot write the recovery audit log: {e}");
            }
        }
    }

    /// The processor is gone: outstanding children get the grace, then die.
    fn shutdown(&mut self) {
        for p in std::mem::take(&mut self.pending) {
            self.refuse_because(&p, RecoveryRefusal::QueueFull, "queue_full: the collector is shutting down");
        }
        self.audit_queue_full();
        let deadline = Instant::now() + self.config.kill_grace + SHUTDOWN_MARGIN;
        while !self.children.is_empty() && Instant::now() < deadline {
            self.tend_children(true);
            std::thread::sleep(TICK);
        }
        // Past the deadline: kill what is left, and still record each one.
        for mut c in std::mem::take(&mut self.children) {
            c.running.kill(self.config.capture_output_bytes);
            self.finished(c);
        }
        if let Err(e) = self.audit.sync() {
            tracing::error!("cannot sync the recovery audit log: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use varta_proto::Source;

    /// A stall and its resume queued together (the runner slow to wake, or
    /// busy with another child) never spawn the command: the runner reads
    /// what is queued before it decides.
    #[test]
    fn a_stall_whose_resume_is_already_queued_never_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("ran");
        let config: RecoveryConfig = serde_json::from_value(serde_json::json!({
            "exec": ["/usr/bin/touch", marker],
            "audit_file": dir.path().join("audit.tsv"),
        }))
        .expect("config");
        config.validate().expect("valid");
        let probe: ProcessProbe = Box::new(|_| Ok(ProcessFacts { start_time: 7, stopped: false }));
        let (runner, notices, mut handle) =
            Runner::prepare(config, probe, Box::new(|_| TargetFacts::default()), None, None).expect("runner");
        let agent = AgentRef {
            id: crate::agent::AgentId { source: Source::Local, pid: 4242, start_time: 7 },
            frame_pid: 4242,
            host_pid: 4242,
            transport: Transport::Uds,
        };
        handle.stalled(&agent, 1, false, false);
        handle.resumed(1);
        let thread = std::thread::spawn(move || runner.run(notices));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut reports = Vec::new();
        while reports.is_empty() && Instant::now() < deadline {
            handle.poll(0, &mut |r| reports.push(r.report.outcome));
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(handle);
        thread.join().expect("runner ends with its handle");
        assert_eq!(reports, [RecoveryOutcome::Skipped]);
        assert!(!marker.exists(), "the command ran for a stall whose resume was queued");
    }
}
