//! The `debug` exporter: every event as a structured log line (tracing, at
//! INFO), for trying things out and for tests that read the collector's logs.

use serde::Deserialize;
use varta_processor::{Event, EventKind};

use crate::Exporter;
use crate::file::write_line;

/// Configuration of the `debug` exporter.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebugExporterConfig {
    /// Also log every accepted beat (default false: only stalls, resumes,
    /// status changes, refusals and other notable events).
    #[serde(default)]
    pub beats: bool,
}

/// Logs events; see the module docs.
#[derive(Debug)]
pub struct DebugExporter {
    config: DebugExporterConfig,
    line: Vec<u8>,
}

impl DebugExporter {
    pub fn new(config: DebugExporterConfig) -> DebugExporter {
        DebugExporter { config, line: Vec::with_capacity(128) }
    }
}

fn kind_name(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::Beat { .. } => "beat",
        EventKind::Stall { .. } => "stall",
        EventKind::Resume { .. } => "resume",
        EventKind::StatusChange { .. } => "status",
        EventKind::Panic { .. } => "panic",
        EventKind::StaleNonce { .. } => "stale_nonce",
        EventKind::Evicted { .. } => "eviction",
        EventKind::CapacityExceeded { .. } => "capacity",
        EventKind::RateLimited { .. } => "ratelimit",
        EventKind::OriginConflict { .. } => "origin_conflict",
        EventKind::ClockAnomaly { .. } => "clock",
        EventKind::Refused(_) => "refused",
    }
}

impl Exporter for DebugExporter {
    fn wants_beats(&self) -> bool {
        self.config.beats
    }

    fn export(&mut self, ev: &Event) -> std::io::Result<()> {
        if !self.config.beats && matches!(ev.kind, EventKind::Beat { .. }) {
            return Ok(());
        }
        self.line.clear();
        write_line(&mut self.line, ev)?;
        let text = String::from_utf8_lossy(&self.line);
        let (source, transport) = match &ev.agent {
            Some(a) => (a.id.source.to_string(), a.transport.as_str()),
            None => (String::from("-"), "-"),
        };
        tracing::info!(
            target: "varta::event",
            kind = kind_name(&ev.kind),
            source = %source,
            transport,
            "{}",
            text.trim_end()
        );
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
