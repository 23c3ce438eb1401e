//! The counter dump: every counter of every component as one log line
//! (target `varta::stats`), on SIGUSR1 and once after shutdown. On SIGUSR1
//! zeros are included so that readers can rely on every series being
//! present; the shutdown summary lists only counters that moved. (The
//! Prometheus and OTLP exporters will serve the same counters as metrics.)

use std::sync::atomic::Ordering::Relaxed;

use crate::pipeline::Telemetry;

/// Which counters a dump includes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dump {
    /// Every counter, zeros included (SIGUSR1).
    All,
    /// Only counters that moved (the summary after shutdown).
    NonZero,
}

pub fn dump(t: &Telemetry, which: Dump) {
    let line = |component: &str, name: &str, label: &str, value: u64| {
        if value != 0 || which == Dump::All {
            tracing::info!(target: "varta::stats", component, name, label, value, "counter");
        }
    };
    for (id, s) in &t.receivers {
        let c = format!("receivers::{id}");
        for (name, v) in [
            ("datagrams", &s.datagrams),
            ("beats", &s.beats),
            ("queue_full_beats", &s.queue_full_beats),
            ("queue_full_refusals", &s.queue_full_refusals),
            ("sessions_restarted", &s.sessions_restarted),
            ("senders_evicted", &s.senders_evicted),
            ("io_errors", &s.io_errors),
            ("batches", &s.batches),
            ("recv_buffer_granted", &s.recv_buffer_granted),
        ] {
            line(&c, name, "", v.load(Relaxed));
        }
        for (label, v) in s.refusals() {
            line(&c, "refused", label, v);
        }
    }
    for (id, s) in &t.processors {
        let c = format!("pipelines::{id}");
        for sample in s.snapshot().samples() {
            line(&c, sample.name, sample.label.map_or("", |l| l.1), sample.value);
        }
    }
    for (id, s) in &t.exporters {
        let c = format!("exporters::{id}");
        for (name, v) in
            [("queued", &s.queued), ("dropped", &s.dropped), ("exported", &s.exported), ("failed", &s.failed)]
        {
            line(&c, name, "", v.load(Relaxed));
        }
    }
}
