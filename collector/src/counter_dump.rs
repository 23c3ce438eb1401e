//! The counter dump: every metric of every component as one log line
//! (target `varta::stats`), on SIGUSR1 and once after shutdown — read from
//! the same [`CollectorView`] the Prometheus and OTLP exporters read. On
//! SIGUSR1 zeros are included so that readers can rely on every series
//! being present, and processors with unpublished changes are first asked
//! for a fresh snapshot (waiting at most one snapshot interval); the
//! shutdown summary lists only values that
//! moved, from the snapshot each processor published as it ended.

use varta_exporters::CollectorView;

/// Which counters a dump includes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dump {
    /// Every counter, zeros included (SIGUSR1).
    All,
    /// Only counters that moved (the summary after shutdown).
    NonZero,
}

pub fn dump(view: &CollectorView, which: Dump) {
    view.for_each_sample(|c, s| {
        if s.value != 0 || which == Dump::All {
            let component = format!("{}::{}", c.role.section(), c.id);
            tracing::info!(
                target: "varta::stats",
                component,
                name = s.metric.name,
                label = s.label,
                value = s.value,
                "counter"
            );
        }
    });
}
