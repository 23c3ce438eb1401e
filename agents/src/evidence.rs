//! Where a stalled agent is stuck: after a stall's diagnosis, thread
//! evidence from `/proc` (and, opt-in, user-space stacks) captured by
//! [`varta_evidence`] on a worker thread of its own, with a rate budget of
//! its own — so the resolver and the diagnosis rate never wait for it.
//!
//! Promises:
//! * **After the diagnosis.** The resolver asks for evidence only once a
//!   stall's diagnosis (its second look) is handed over, and only for a
//!   local agent whose identity is known and whose cause says it is alive
//!   and stuck (`waiting`, `blocked_io`, `spinning`): the cause is
//!   published first and recovery never waits for evidence.
//! * **One at a time.** One capture runs at a time (so one per agent);
//!   requests beyond a small backlog or the rate budget are skipped and
//!   counted by reason.
//! * **Published by incident.** A capture lands on the pipeline's
//!   [`EvidenceBoard`] (the last [`EvidenceBoard::KEEP`]) and the
//!   processor is told, so the event stream says when; exporters read the
//!   details from the board.
//! * **Rights checked once.** `stacks: true` without the right to attach
//!   (not root or CAP_SYS_PTRACE under Yama's `ptrace_scope`) is reported
//!   once at start and falls back to thread evidence.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use varta_pipeline::{Metric, Sample};
use varta_processor::{AgentId, AgentRef, Cause, Evidenced};

pub use varta_evidence::{Evidence, Skip, WaitGroup, WaitKind, sanitize};

/// One capture as exporters read it.
#[derive(Debug)]
pub struct Captured {
    pub agent: AgentRef,
    pub incident: u64,
    pub evidence: Evidence,
}

/// The last captures of one pipeline, by agent and incident.
#[derive(Debug, Default)]
pub struct EvidenceBoard {
    recent: Mutex<VecDeque<Arc<Captured>>>,
}

impl EvidenceBoard {
    /// Captures kept (exporters read one right after its event).
    pub const KEEP: usize = 256;

    fn put(&self, captured: Captured) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == Self::KEEP {
            recent.pop_front();
        }
        recent.push_back(Arc::new(captured));
    }

    /// The capture of `agent`'s `incident`, while it is kept.
    pub fn get(&self, agent: &AgentId, incident: u64) -> Option<Arc<Captured>> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().rev().find(|c| c.incident == incident && c.agent.id == *agent).cloned()
    }
}

/// Why a stall got no evidence (labels of `evidence_skipped`).
pub const SKIP_REASONS: [&str; 9] =
    ["budget", "busy", "gone", "denied", "identity", "exec", "traced", "userns", "error"];

/// Evidence counters (under the resolver's component).
#[derive(Debug, Default)]
pub struct EvidenceStats {
    captured: AtomicU64,
    skipped: [AtomicU64; SKIP_REASONS.len()],
    threads_omitted: AtomicU64,
    stacks: AtomicU64,
    pause_ns: AtomicU64,
}

impl EvidenceStats {
    fn skip(&self, reason: &str) {
        let at = SKIP_REASONS.iter().position(|r| *r == reason).unwrap_or(SKIP_REASONS.len() - 1);
        self.skipped[at].fetch_add(1, Relaxed);
    }

    pub(crate) fn samples(&self, out: &mut dyn FnMut(Sample)) {
        out(Sample::new(&metric::CAPTURED, self.captured.load(Relaxed)));
        for (reason, n) in SKIP_REASONS.iter().zip(&self.skipped) {
            out(Sample::labelled(&metric::SKIPPED, reason, n.load(Relaxed)));
        }
        out(Sample::new(&metric::THREADS_OMITTED, self.threads_omitted.load(Relaxed)));
        out(Sample::new(&metric::STACKS, self.stacks.load(Relaxed)));
        out(Sample::new(&metric::PAUSE, self.pause_ns.load(Relaxed) / 1000));
    }
}

pub mod metric {
    use super::Metric;

    pub static CAPTURED: Metric =
        Metric::counter("evidence_captured", "Stalls whose thread evidence was captured.").unit("{capture}");
    pub static SKIPPED: Metric = Metric::labelled(
        "evidence_skipped",
        "reason",
        "Stalls of local agents given no evidence, by reason: budget, busy, gone, denied, identity, exec, traced, userns, error.",
    )
    .unit("{capture}");
    pub static THREADS_OMITTED: Metric = Metric::counter(
        "evidence_threads_omitted",
        "Threads not read because a capture reached max_threads or its budget.",
    )
    .unit("{thread}");
    pub static STACKS: Metric =
        Metric::counter("evidence_stacks", "User-space stacks taken (stacks: true).").unit("{stack}");
    pub static PAUSE: Metric = Metric::counter(
        "evidence_pause",
        "Time agents' threads were stopped to take their stacks, in total (one thread at a time).",
    )
    .unit("us");
}

/// A capture asked for.
#[derive(Debug, Clone, Copy)]
struct Request {
    agent: AgentRef,
    incident: u64,
}

/// The resolver's side: asks for captures within the budget.
#[derive(Debug)]
pub(crate) struct EvidenceRequests {
    tx: Sender<Request>,
    per_second: f64,
    tokens: f64,
    last: Instant,
    stats: Arc<EvidenceStats>,
    pending: Arc<AtomicUsize>,
}

/// The processor's side: finished captures.
#[derive(Debug)]
pub(crate) struct EvidenceResults {
    rx: Receiver<Option<Evidenced>>,
    pending: Arc<AtomicUsize>,
}

impl EvidenceResults {
    /// Whether captures are under way (the processor polls meanwhile).
    pub(crate) fn outstanding(&self) -> bool {
        self.pending.load(Relaxed) > 0
    }

    pub(crate) fn poll(&mut self, out: &mut dyn FnMut(Evidenced)) {
        for done in self.rx.try_iter() {
            self.pending.fetch_sub(1, Relaxed);
            if let Some(e) = done {
                out(e);
            }
        }
    }
}

/// Captures waiting at most (beyond the one running).
const BACKLOG: usize = 4;

/// Starts the evidence worker for pipeline `name`: captures with
/// `capture`, at most `per_second` a second.
pub(crate) fn start(
    name: &str,
    mut capture: varta_evidence::Config,
    per_second: u32,
    board: Arc<EvidenceBoard>,
    stats: Arc<EvidenceStats>,
) -> std::io::Result<(EvidenceRequests, EvidenceResults)> {
    if capture.stacks {
        match attach_rights(yama_scope(), effective_caps()) {
            AttachRights::Any => {}
            AttachRights::OwnUser => tracing::warn!(
                pipeline = name,
                "diagnosis.stacks: true without CAP_SYS_PTRACE: stacks are taken of agents running as the collector's user only (others count as stack skips `denied`)"
            ),
            AttachRights::None(why) => {
                tracing::warn!(
                    pipeline = name,
                    "diagnosis.stacks: true, but {why}: stacks are not taken; thread evidence only"
                );
                capture.stacks = false;
            }
        }
    }
    let (tx, rx) = bounded::<Request>(BACKLOG);
    let (done_tx, done_rx) = bounded::<Option<Evidenced>>(BACKLOG + 1);
    let pending = Arc::new(AtomicUsize::new(0));
    let worker_stats = Arc::clone(&stats);
    std::thread::Builder::new()
        .name(format!("evidence-{name}"))
        .spawn(move || run(capture, &rx, &done_tx, &board, &worker_stats))?;
    let per_second = f64::from(per_second);
    let requests = EvidenceRequests {
        tx,
        per_second,
        tokens: per_second,
        last: Instant::now(),
        stats,
        pending: Arc::clone(&pending),
    };
    Ok((requests, EvidenceResults { rx: done_rx, pending }))
}

impl EvidenceRequests {
    /// Asks for evidence of `agent`'s `incident`, diagnosed as `cause`.
    pub(crate) fn ask(&mut self, agent: AgentRef, incident: u64, cause: Cause) {
        if !matches!(cause, Cause::Waiting | Cause::BlockedIo | Cause::Spinning) {
            return;
        }
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.per_second.max(1.0));
        self.last = now;
        if self.tokens < 1.0 {
            return self.stats.skip("budget");
        }
        self.tokens -= 1.0;
        self.pending.fetch_add(1, Relaxed);
        match self.tx.try_send(Request { agent, incident }) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                // Not taken: its token goes back.
                self.pending.fetch_sub(1, Relaxed);
                self.tokens += 1.0;
                self.stats.skip("busy");
            }
        }
    }
}

fn run(
    config: varta_evidence::Config,
    requests: &Receiver<Request>,
    done: &Sender<Option<Evidenced>>,
    board: &EvidenceBoard,
    stats: &EvidenceStats,
) {
    let mut capturer = varta_evidence::Capturer::new(config);
    for r in requests {
        let result = capturer.capture(r.agent.host_pid, r.agent.id.start_time);
        let answer = match result {
            Ok(evidence) => {
                stats.captured.fetch_add(1, Relaxed);
                let c = &evidence.counts;
                stats
                    .threads_omitted
                    .fetch_add(u64::from(c.threads_omitted + c.threads_over_budget), Relaxed);
                stats.stacks.fetch_add(u64::from(c.stacks_taken), Relaxed);
                if let Some(p) = &evidence.pauses {
                    stats.pause_ns.fetch_add(u64::try_from(p.total.as_nanos()).unwrap_or(u64::MAX), Relaxed);
                }
                let duration_ns = u64::try_from(evidence.duration.as_nanos()).unwrap_or(u64::MAX);
                tracing::info!(
                    pid = r.agent.host_pid,
                    incident = r.incident,
                    summary = %evidence.summary(),
                    threads = c.threads_seen,
                    stacks = c.stacks_taken,
                    stacks_skipped = ?c.stacks_skipped,
                    binaries_skipped = ?c.binaries_skipped,
                    "stall evidence"
                );
                board.put(Captured { agent: r.agent, incident: r.incident, evidence });
                Some(Evidenced { agent: r.agent, incident: r.incident, duration_ns })
            }
            Err(skip) => {
                stats.skip(skip.label());
                tracing::debug!(pid = r.agent.host_pid, incident = r.incident, "no stall evidence: {skip}");
                None
            }
        };
        if done.send(answer).is_err() {
            break;
        }
    }
}

/// Which agents this process may ptrace-attach to (agents are not its
/// children, so Yama's scope 1 rules them out).
#[derive(Debug, PartialEq, Eq)]
enum AttachRights {
    /// CAP_SYS_PTRACE (scope ≤ 2).
    Any,
    /// Only processes of our own user (no capability; no Yama, or scope 0).
    OwnUser,
    /// None, and why.
    None(String),
}

const CAP_SYS_PTRACE: u64 = 1 << 19;

/// `scope`: `kernel.yama.ptrace_scope` (`None` without Yama);
/// `effective`: our effective capability set.
fn attach_rights(scope: Option<u8>, effective: u64) -> AttachRights {
    let privileged = effective & CAP_SYS_PTRACE != 0;
    match scope.unwrap_or(0) {
        s if s >= 3 => AttachRights::None("ptrace is disabled on this host (kernel.yama.ptrace_scope = 3)".into()),
        2 if !privileged => {
            AttachRights::None("the collector lacks CAP_SYS_PTRACE (kernel.yama.ptrace_scope = 2)".into())
        }
        1 if !privileged => AttachRights::None(
            "the collector lacks CAP_SYS_PTRACE and kernel.yama.ptrace_scope = 1 allows only its own children".into(),
        ),
        _ if privileged => AttachRights::Any,
        _ => AttachRights::OwnUser,
    }
}

fn yama_scope() -> Option<u8> {
    std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").ok()?.trim().parse().ok()
}

fn effective_caps() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_rights_follow_yama_and_the_capability() {
        assert_eq!(attach_rights(None, CAP_SYS_PTRACE), AttachRights::Any);
        assert_eq!(attach_rights(Some(2), CAP_SYS_PTRACE), AttachRights::Any);
        assert_eq!(attach_rights(None, 0), AttachRights::OwnUser);
        assert_eq!(attach_rights(Some(0), !CAP_SYS_PTRACE), AttachRights::OwnUser);
        assert!(matches!(attach_rights(Some(1), 0), AttachRights::None(w) if w.contains("children")));
        assert!(matches!(attach_rights(Some(2), 0), AttachRights::None(w) if w.contains("CAP_SYS_PTRACE")));
        assert!(matches!(attach_rights(Some(3), CAP_SYS_PTRACE), AttachRights::None(w) if w.contains("= 3")));
    }

    #[test]
    fn the_board_keeps_the_last_captures_by_agent_and_incident() {
        let board = EvidenceBoard::default();
        let agent = |pid| AgentRef {
            id: AgentId { source: varta_proto::Source::Local, pid, start_time: 1 },
            transport: varta_proto::Transport::Uds,
            host_pid: pid,
            frame_pid: pid,
        };
        let evidence = || Evidence {
            pid: 1,
            threads: vec![],
            groups: vec![],
            counts: varta_evidence::Counts::default(),
            pauses: None,
            duration: std::time::Duration::ZERO,
        };
        for n in 0..(EvidenceBoard::KEEP as u64 + 1) {
            board.put(Captured { agent: agent(7), incident: n, evidence: evidence() });
        }
        assert!(board.get(&agent(7).id, 0).is_none(), "the oldest is gone");
        assert!(board.get(&agent(7).id, 1).is_some());
        assert!(board.get(&agent(8).id, 1).is_none(), "another agent's incident");
    }
}
