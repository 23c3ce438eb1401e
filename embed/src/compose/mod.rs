//! The engine's parts, for a host that composes several pipelines: a
//! [`Pipeline`] (queue → processor → resolver → recovery runner) that can
//! park, be brought to new settings and resume, and a [`Receiver`] (one
//! bound socket) that can feed several pipelines. [`crate::Engine`] is
//! one pipeline built from them; the `varta-collector` binary composes
//! many, shares receivers and exporters between them and reloads them.
//!
//! Promises:
//! * **One wiring.** Processor, resolver and recovery runner are
//!   assembled, attached, restarted and ended here and nowhere else: what
//!   the next capability adds to a pipeline is added once.
//! * **Park keeps state.** A parked pipeline keeps its agents and its
//!   queue keeps filling; a parked receiver keeps its socket bound, so
//!   datagrams wait in the kernel.
//! * **Bounded ends.** Every join waits until a deadline at most; what did
//!   not end by then is named in [`Stopped`] and left detached.

mod pipeline;
mod receiver;
pub mod storage;
mod wedge;

use std::thread::JoinHandle;
use std::time::Instant;

use varta_pipeline::threads::join_by;

pub use pipeline::{BuildError, Finishing, Pipeline, PipelinePlan, StorageSpec};
pub use receiver::Receiver;

/// A progress probe: (work done so far, whether work is waiting). A stage
/// whose count stays put while work waits is stuck (the host's health check).
pub type Probe = Box<dyn Fn() -> (u64, bool) + Send>;

/// A stage a host watches for progress, named as in the health report
/// (`receivers::<id>`, `pipelines::<name>`, `processors::<id>`).
pub struct Watch {
    pub component: String,
    pub probe: Probe,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("component", &self.component).finish_non_exhaustive()
    }
}

/// What a shutdown found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    /// Every thread ended, without a panic, before the deadline.
    pub clean: bool,
    /// Threads still running at the deadline (left detached), by role.
    pub late: Vec<String>,
    /// Threads that panicked, or receivers that had stopped with an error.
    pub failed: Vec<String>,
}

impl Default for Stopped {
    fn default() -> Self {
        Stopped { clean: true, late: Vec::new(), failed: Vec::new() }
    }
}

impl Stopped {
    /// Adds what `other` found.
    pub fn merge(&mut self, other: Stopped) {
        self.clean &= other.clean;
        self.late.extend(other.late);
        self.failed.extend(other.failed);
    }

    fn late(&mut self, what: String) {
        tracing::error!(component = %what, "did not stop before the deadline");
        self.clean = false;
        self.late.push(what);
    }

    fn failed(&mut self, what: String, why: &str) {
        tracing::error!(component = %what, "{why}");
        self.clean = false;
        self.failed.push(format!("{what}: {why}"));
    }

    /// Joins a thread that should be ending, by `deadline`.
    pub(crate) fn join<T>(&mut self, what: String, thread: JoinHandle<T>, deadline: Instant) -> Option<T> {
        match join_by(thread, deadline) {
            Ok(Ok(back)) => Some(back),
            Ok(Err(_)) => {
                self.failed(what, "thread panicked");
                None
            }
            Err(_) => {
                self.late(what);
                None
            }
        }
    }
}

/// Takes back what a thread asked to park returns, waiting until
/// `deadline`; a thread still running is left in place (logged).
fn take_parked<T>(thread: &mut Option<JoinHandle<T>>, component: &str, deadline: Instant) -> Option<T> {
    match join_by(thread.take()?, deadline) {
        Ok(Ok(back)) => Some(back),
        Ok(Err(_)) => {
            tracing::error!(component, "thread panicked");
            None
        }
        Err(running) => {
            tracing::error!(component, "did not pause in time; it keeps its old wiring");
            *thread = Some(running);
            None
        }
    }
}
