//! What a reload did, and the counters of it (the `service` component):
//! the data the reload procedure ([`crate::reload`]) and the running
//! components ([`crate::pipeline`]) share, kept below both so that neither
//! imports the other for it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use varta_pipeline::{Instrumented, Metric, Sample};

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied in full.
    Ok,
    /// Refused by the checks; nothing changed.
    Invalid,
    /// Applying failed; the previous configuration runs again.
    Failed,
    /// Applied except what needs a restart (the log format).
    NeedsRestart,
}

impl Outcome {
    const ALL: [Outcome; 4] = [Outcome::Ok, Outcome::Invalid, Outcome::Failed, Outcome::NeedsRestart];

    pub const fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Invalid => "invalid",
            Outcome::Failed => "failed",
            Outcome::NeedsRestart => "needs_restart",
        }
    }

    /// Whether the new configuration is now the running one.
    pub fn applied(self) -> bool {
        matches!(self, Outcome::Ok | Outcome::NeedsRestart)
    }
}

/// Reload counters (the `service` component).
#[derive(Debug, Default)]
pub struct ReloadStats {
    outcomes: [AtomicU64; 4],
}

static RELOADS: Metric =
    Metric::labelled("reloads", "outcome", "Configuration reloads (SIGHUP), by outcome.").unit("{reload}");

impl ReloadStats {
    pub fn count(&self, o: Outcome) {
        self.outcomes[o as usize].fetch_add(1, Relaxed);
    }
}

impl Instrumented for ReloadStats {
    fn samples(&self, out: &mut dyn FnMut(Sample)) {
        for o in Outcome::ALL {
            out(Sample::labelled(&RELOADS, o.label(), self.outcomes[o as usize].load(Relaxed)));
        }
    }
}
