//! The `recovery` processor: runs an operator command when an agent stalls
//! — safely — and keeps a tamper-evident audit log of what it did.
//!
//! Promises:
//! * The processor thread never blocks on recovery: it hands stalls,
//!   diagnoses and resumes to a runner thread through a bounded queue
//!   ([`RecoveryHandle`]; when full the stall is refused and counted as
//!   `queue_full`) and polls finished reports, which it emits as
//!   [`crate::EventKind::Recovery`] events and counts.
//! * Commands are exec'd from an argv list (never a shell), placeholders
//!   substituted per argument, each value checked by [`argv::check_value`]
//!   first (a value that breaks the rule refuses the run: `unsafe_value`);
//!   `exec[0]` holds no placeholder. The environment is cleared to
//!   `PATH=/usr/bin:/bin` plus `env` (unless `inherit_env`).
//! * A command's target is chosen by the operator, never by the agent
//!   ([`gate`]): trusted selectors from the kernel (`{unit}`, `{container}`,
//!   `{pod}` from cgroup paths), what the agent declares (`{service}`,
//!   `{exe}`) only through `allowed_values`, and no identity placeholder at
//!   all for a network agent, whose pid is a claim (`unverified_identity`).
//! * A stall is acted on only when the agent's origin authenticates it
//!   against outsiders (kernel-attested UDS, master-key secure UDP; others
//!   only with `allow_unauthenticated`), never for a cross-namespace agent without
//!   `allow_cross_namespace`, never for a local agent whose start time is
//!   unknown (`identity_unknown`), never when the pid was recycled since
//!   the stall or the process is stopped/traced (both re-read from `/proc`
//!   right before spawning, whatever the diagnosis said), never for a
//!   cause outside `on_causes` or an unknown one unless `on_unknown_cause`
//!   says `run`, at most once per `debounce` per agent, within
//!   `max_outstanding` children and `max_spawns_per_second`; every refusal
//!   is reported with its reason. A stall whose agent resumed before the
//!   spawn is skipped. A stall waits for its diagnosis up to the
//!   resolver's window plus a margin.
//! * Every child runs in its own process group; one that outlives
//!   `timeout` gets SIGTERM to the group, then SIGKILL after `kill_grace`;
//!   at shutdown every group gets SIGTERM, `kill_grace` later SIGKILL, and
//!   a `complete` record. A child counts as outstanding until its group is
//!   gone; its output is read to the end then (up to
//!   `capture_output_bytes` kept per stream, logged escaped).
//! * Every spawn, completion and refusal is an audit record (see [`audit`]).

pub mod argv;
pub mod audit;
mod children;
mod debounce;
pub mod gate;
mod runner;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::inspect::{Cause, Wchan};

pub use debounce::file_in as debounce_file_in;
pub use gate::{Placeholder, TargetFacts};
pub use runner::{
    AgentLabels, ProcessFacts, ProcessProbe, Recovery, RecoveryHandle, RecoveryStats, SHUTDOWN_MARGIN,
};

fn default_debounce() -> Duration {
    Duration::from_secs(1)
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_kill_grace() -> Duration {
    Duration::from_secs(5)
}
fn default_max_outstanding() -> usize {
    16
}
fn default_max_spawns() -> u32 {
    10
}
fn default_capture() -> usize {
    4096
}
fn default_causes() -> Vec<String> {
    Cause::ALL
        .iter()
        .filter(|c| !matches!(c, Cause::Stopped | Cause::Unknown))
        .map(|c| c.label().to_owned())
        .collect()
}
fn default_trusted_slices() -> Vec<String> {
    vec!["system.slice".to_owned()]
}
fn default_keep() -> u32 {
    5
}
fn default_rotate_bytes() -> u64 {
    64 << 20
}

/// How often audit records are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuditSync {
    /// `fdatasync` after every record (default): a record that was
    /// written survives a crash.
    #[default]
    EveryRecord,
    /// `fdatasync` at most once a second: cheaper under bursts, and a crash
    /// may lose the last second of records (the chain still verifies up to
    /// the last complete one).
    Interval,
}

/// What to do with a stall whose cause is not known (no diagnosis in
/// time, a network agent, or a diagnosis that says `unknown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnknownCause {
    Run,
    Refuse,
}

/// What a stall of an agent found silent at a restore (restored from a
/// checkpoint and never heard since: it stopped while the collector was
/// down) does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRestore {
    /// Acts as on any stall.
    Run,
    /// Refused and audited (`restored`): a maintenance stop is not an outage.
    #[default]
    Refuse,
}

/// `processors: recovery:` — see the recovery how-to in `processor/README.md`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryConfig {
    /// The command, as an argv list (placeholders in [`PLACEHOLDERS`]).
    pub exec: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub inherit_env: bool,
    #[serde(default = "default_debounce", deserialize_with = "varta_pipeline::config::duration")]
    pub debounce: Duration,
    #[serde(default = "default_timeout", deserialize_with = "varta_pipeline::config::duration")]
    pub timeout: Duration,
    #[serde(default = "default_kill_grace", deserialize_with = "varta_pipeline::config::duration")]
    pub kill_grace: Duration,
    #[serde(default = "default_max_outstanding")]
    pub max_outstanding: usize,
    #[serde(default = "default_max_spawns")]
    pub max_spawns_per_second: u32,
    #[serde(default = "default_capture")]
    pub capture_output_bytes: usize,
    /// Diagnosis causes that trigger a run (default: all but `stopped`).
    #[serde(default)]
    pub on_causes: Option<Vec<String>>,
    /// A stall with no known cause (default: `refuse` when `on_causes` is
    /// given, `run` otherwise).
    #[serde(default)]
    pub on_unknown_cause: Option<OnUnknownCause>,
    /// A stall of an agent found silent at a restore (default `refuse`).
    #[serde(default)]
    pub on_restore: OnRestore,
    #[serde(default)]
    pub allow_unauthenticated: bool,
    #[serde(default)]
    pub allow_cross_namespace: bool,
    /// Slices under which a service's cgroup yields `{unit}` (default
    /// `[system.slice]`; `user.slice` is never trusted).
    #[serde(default = "default_trusted_slices")]
    pub trusted_slices: Vec<String>,
    /// Per placeholder name (`service`, `exe`, `unit`, `container`, `pod`),
    /// the values (globs as in threshold rules) a run may use. Required
    /// for what the agent declares (`service`, `exe`); narrows the others.
    #[serde(default)]
    pub allowed_values: BTreeMap<String, Vec<String>>,
    pub audit_file: PathBuf,
    #[serde(default)]
    pub audit_sync: AuditSync,
    /// Key of the audit chain (HMAC-SHA256): a hex key file, read like
    /// every secret (regular, owner-only, ours).
    #[serde(default)]
    pub audit_key_file: Option<PathBuf>,
    /// Rotate the audit file at this size (0: never; default 64 MiB).
    #[serde(default = "default_rotate_bytes")]
    pub audit_rotate_bytes: u64,
    #[serde(default = "default_keep")]
    pub audit_rotate_keep: u32,
}

/// Placeholders substituted in each `exec` argument (see [`gate`]).
pub const PLACEHOLDERS: [&str; 12] = {
    let mut out = [""; 12];
    let mut i = 0;
    while i < Placeholder::ALL.len() {
        out[i] = Placeholder::ALL[i].token();
        i += 1;
    }
    out
};

impl RecoveryConfig {
    pub fn validate(&self) -> Result<(), String> {
        let Some(program) = self.exec.first() else {
            return Err(
                "`exec` must name a program: an argv list like [\"/usr/local/bin/restart-svc\", \"{pid}\"]"
                    .into(),
            );
        };
        if !program.starts_with('/') {
            return Err(format!(
                "`exec[0]` must be an absolute path (no PATH lookup, no shell): {program:?}"
            ));
        }
        if program.contains('{') {
            return Err(format!(
                "`exec[0]` may not contain a placeholder: the program must be the one written here, \
                 not one an agent's values choose: {program:?}"
            ));
        }
        for arg in &self.exec {
            for token in argv::placeholders(arg) {
                if !PLACEHOLDERS.contains(&token) {
                    return Err(format!(
                        "`exec`: unknown placeholder {token:?} (known: {})",
                        PLACEHOLDERS.join(", ")
                    ));
                }
            }
        }
        for slice in &self.trusted_slices {
            if !slice.ends_with(".slice") || slice.contains('/') || slice == "user.slice" {
                return Err(format!(
                    "`trusted_slices`: {slice:?} is not a top-level system slice (like \"system.slice\"); \
                     user.slice is never trusted"
                ));
            }
        }
        for (name, patterns) in &self.allowed_values {
            let Some(p) = Placeholder::parse_name(name) else {
                return Err(format!(
                    "`allowed_values`: {name:?} is not a placeholder that selects a target \
                     (service, exe, unit, container, pod)"
                ));
            };
            if !p.declared_by_agent() && !p.trusted_selector() {
                return Err(format!(
                    "`allowed_values`: {name:?} is not a placeholder that selects a target \
                     (service, exe, unit, container, pod)"
                ));
            }
            if patterns.is_empty() {
                return Err(format!("`allowed_values.{name}`: an empty list allows nothing; remove the key"));
            }
            for pattern in patterns {
                crate::threshold::Glob::new(pattern).map_err(|e| format!("`allowed_values.{name}`: {e}"))?;
            }
        }
        for cause in self.on_causes.iter().flatten() {
            if Cause::parse(cause).is_none() {
                let known: Vec<&str> = Cause::ALL.iter().map(|c| c.label()).collect();
                return Err(format!("`on_causes`: unknown cause {cause:?} (known: {})", known.join(", ")));
            }
        }
        if self.max_outstanding == 0 || self.max_spawns_per_second == 0 {
            return Err("`max_outstanding` and `max_spawns_per_second` must be at least 1".into());
        }
        if self.timeout.is_zero() || self.kill_grace.is_zero() {
            return Err("`timeout` and `kill_grace` must be greater than zero".into());
        }
        if self.capture_output_bytes > 1 << 20 {
            return Err("`capture_output_bytes` must be at most 1 MiB".into());
        }
        Ok(())
    }

    /// Placeholders of `exec` that the agent chooses and that have no
    /// `allowed_values` list: every run using them is refused
    /// (`not_allowed`). `varta-collector validate` refuses such a config
    /// (exit 2); a running collector keeps monitoring, logs it once and
    /// refuses those runs — monitoring never stops over a recovery setting.
    pub fn unguarded_placeholders(&self) -> Vec<Placeholder> {
        let mut out: Vec<Placeholder> = self
            .exec
            .iter()
            .flat_map(|arg| argv::placeholders(arg))
            .filter_map(Placeholder::parse_token)
            .filter(|p| p.declared_by_agent() && !self.allowed_values.contains_key(p.name()))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// [`Self::unguarded_placeholders`] as one error message, if any.
    pub fn selection_problem(&self) -> Option<String> {
        let unguarded = self.unguarded_placeholders();
        let first = unguarded.first()?;
        let names: Vec<&str> = unguarded.iter().map(|p| p.token()).collect();
        Some(format!(
            "`exec` uses {} — chosen by the agent itself (an agent named `systemd-reboot` would pick the target) \
             — with no `allowed_values.{}` list: select the target with `{{unit}}` (from the kernel), or list \
             the values allowed, e.g. `allowed_values: {{{}: [\"checkout\", \"payments-*\"]}}`; until then every \
             such recovery is refused (not_allowed)",
            names.join(", "),
            first.name(),
            first.name()
        ))
    }

    /// Whether a stall of this (known) cause triggers a run.
    pub fn triggers_on(&self, cause: Cause) -> bool {
        match &self.on_causes {
            Some(causes) => causes.iter().any(|c| c == cause.label()),
            None => default_causes().iter().any(|c| c == cause.label()),
        }
    }

    /// Whether a stall of an agent silent since a restore runs.
    pub fn runs_on_restore(&self) -> bool {
        self.on_restore == OnRestore::Run
    }

    /// Whether a stall whose cause is unknown runs.
    pub fn runs_on_unknown_cause(&self) -> bool {
        let default = if self.on_causes.is_some() { OnUnknownCause::Refuse } else { OnUnknownCause::Run };
        self.on_unknown_cause.unwrap_or(default) == OnUnknownCause::Run
    }
}

/// Why a stall was not acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecoveryRefusal {
    /// The agent's origin does not authenticate its pid (plain UDP, shared-key secure UDP).
    Unauthenticated,
    /// The agent lives in another pid namespace.
    CrossNamespace,
    /// Its diagnosis' cause is not in `on_causes`.
    Cause,
    /// Its cause is unknown and `on_unknown_cause` is `refuse`.
    CauseUnknown,
    /// A local agent whose start time could not be read: its pid cannot
    /// be tied to the process that stalled.
    IdentityUnknown,
    /// A placeholder's value breaks the value rule (see [`argv`]).
    UnsafeValue,
    /// A value the agent chose (or one outside `allowed_values`) would
    /// select the target (see [`gate`]).
    NotAllowed,
    /// An identity placeholder for a network agent, whose pid is a claim.
    UnverifiedIdentity,
    /// A trusted selector has no value for this agent (e.g. `{unit}` for a
    /// process outside a service under `trusted_slices`).
    NoTarget,
    /// The process is stopped or traced (not in `on_causes`).
    Stopped,
    /// Its pid now belongs to another process (or it is gone).
    PidRecycled,
    Debounce,
    Outstanding,
    Rate,
    /// The runner's queue was full.
    QueueFull,
    /// Silent since a restore, and `on_restore` is `refuse`.
    Restored,
}

impl RecoveryRefusal {
    pub const ALL: [RecoveryRefusal; 16] = [
        RecoveryRefusal::Unauthenticated,
        RecoveryRefusal::CrossNamespace,
        RecoveryRefusal::IdentityUnknown,
        RecoveryRefusal::Cause,
        RecoveryRefusal::CauseUnknown,
        RecoveryRefusal::UnsafeValue,
        RecoveryRefusal::NotAllowed,
        RecoveryRefusal::UnverifiedIdentity,
        RecoveryRefusal::NoTarget,
        RecoveryRefusal::Stopped,
        RecoveryRefusal::PidRecycled,
        RecoveryRefusal::Debounce,
        RecoveryRefusal::Outstanding,
        RecoveryRefusal::Rate,
        RecoveryRefusal::QueueFull,
        RecoveryRefusal::Restored,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            RecoveryRefusal::Unauthenticated => "unauthenticated",
            RecoveryRefusal::CrossNamespace => "cross_namespace",
            RecoveryRefusal::Cause => "cause",
            RecoveryRefusal::CauseUnknown => "cause_unknown",
            RecoveryRefusal::IdentityUnknown => "identity_unknown",
            RecoveryRefusal::UnsafeValue => "unsafe_value",
            RecoveryRefusal::NotAllowed => "not_allowed",
            RecoveryRefusal::UnverifiedIdentity => "unverified_identity",
            RecoveryRefusal::NoTarget => "no_target",
            RecoveryRefusal::Stopped => "stopped",
            RecoveryRefusal::PidRecycled => "pid_recycled",
            RecoveryRefusal::Debounce => "debounce",
            RecoveryRefusal::Outstanding => "outstanding",
            RecoveryRefusal::Rate => "rate",
            RecoveryRefusal::QueueFull => "queue_full",
            RecoveryRefusal::Restored => "restored",
        }
    }
}

/// What became of a stall, as far as recovery goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryOutcome {
    /// The command was spawned (a `Finished` report follows).
    Started,
    /// Exit status 0.
    Succeeded,
    /// Non-zero exit status, or killed by a signal it did not get from us.
    Failed,
    /// Outlived `timeout` and was killed.
    TimedOut,
    /// The command could not be started.
    SpawnFailed,
    /// Not run, see the reason.
    Refused(RecoveryRefusal),
    /// The agent beat again before the command was run.
    Skipped,
}

impl RecoveryOutcome {
    /// Final outcomes, for counters (`varta_recovery_outcomes_total{outcome}`).
    pub const FINAL: [RecoveryOutcome; 5] = [
        RecoveryOutcome::Succeeded,
        RecoveryOutcome::Failed,
        RecoveryOutcome::TimedOut,
        RecoveryOutcome::SpawnFailed,
        RecoveryOutcome::Skipped,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            RecoveryOutcome::Started => "started",
            RecoveryOutcome::Succeeded => "succeeded",
            RecoveryOutcome::Failed => "failed",
            RecoveryOutcome::TimedOut => "timed_out",
            RecoveryOutcome::SpawnFailed => "spawn_failed",
            RecoveryOutcome::Refused(_) => "refused",
            RecoveryOutcome::Skipped => "skipped",
        }
    }
}

/// One recovery report (heap-free, `Copy`), emitted as an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryReport {
    pub outcome: RecoveryOutcome,
    /// The child's pid (0 when none was spawned).
    pub child_pid: u32,
    /// Exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// Spawn to completion.
    pub duration_ns: u64,
    pub stdout_bytes: u32,
    pub stderr_bytes: u32,
    /// The program's file name (`exec[0]`'s last component; the audit log records the whole path).
    pub program: Wchan,
}

impl RecoveryReport {
    pub fn new(outcome: RecoveryOutcome, program: Wchan) -> RecoveryReport {
        RecoveryReport {
            outcome,
            child_pid: 0,
            exit_code: None,
            signal: None,
            duration_ns: 0,
            stdout_bytes: 0,
            stderr_bytes: 0,
            program,
        }
    }
}

impl RecoveryReport {
    /// `key=value` pairs separated by `;` (one TSV column): the refusal
    /// reason, or the program, child pid, exit, duration and output sizes.
    pub fn details(&self) -> String {
        match self.outcome {
            RecoveryOutcome::Refused(why) => {
                format!("reason={};program={}", why.label(), self.program.as_str())
            }
            RecoveryOutcome::Skipped => format!("reason=resumed;program={}", self.program.as_str()),
            _ => {
                let exit = match (self.exit_code, self.signal) {
                    (Some(c), _) => format!("code={c}"),
                    (None, Some(s)) => format!("signal={s}"),
                    _ => "-".into(),
                };
                format!(
                    "program={};child_pid={};exit={exit};duration_ms={};stdout_bytes={};stderr_bytes={}",
                    self.program.as_str(),
                    self.child_pid,
                    self.duration_ns / 1_000_000,
                    self.stdout_bytes,
                    self.stderr_bytes
                )
            }
        }
    }
}

/// A finished recovery step, handed back to the processor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    pub agent: crate::agent::AgentRef,
    pub incident: u64,
    pub report: RecoveryReport,
}
