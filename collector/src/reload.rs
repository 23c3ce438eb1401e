//! Live reload on SIGHUP (and `varta-collector reload`).
//!
//! Promises: the new configuration is read and fully checked (the same
//! checks as at start, key and token files included) before anything
//! changes; on any error the running configuration stays, the error is
//! logged and counted (`reloads{outcome="invalid"}`). What a valid new
//! configuration may change while running:
//!
//! * nothing (the same configuration): nothing happens, sockets and
//!   tracker state untouched (`ok`);
//! * the key files of `secure_udp` receivers: the new keys take effect for
//!   the next frame, the socket and the replay state of every sender stay
//!   (`ok`) — key rotation without a restart;
//! * anything else: not applied (`needs_restart`), logged with what
//!   differs; the running configuration stays. Restart the collector for
//!   those (systemd: `systemctl restart`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use varta_pipeline::{Instrumented, Metric, Sample};
use varta_receiver::KeyHandle;

use crate::config::{Config, ReceiverConfig};

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Invalid,
    NeedsRestart,
}

impl Outcome {
    const ALL: [Outcome; 3] = [Outcome::Ok, Outcome::Invalid, Outcome::NeedsRestart];

    pub const fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Invalid => "invalid",
            Outcome::NeedsRestart => "needs_restart",
        }
    }
}

/// Reload counters (the `service` component).
#[derive(Debug, Default)]
pub struct ReloadStats {
    outcomes: [AtomicU64; 3],
}

static RELOADS: Metric =
    Metric::labelled("reloads", "outcome", "Configuration reloads (SIGHUP), by outcome.");

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

/// A receiver's settings without its key files, for comparison.
fn without_keys(c: &ReceiverConfig) -> String {
    let ReceiverConfig::Vlp(cfg) = c;
    let mut cfg = cfg.clone();
    cfg.key_files = None;
    cfg.master_key_file = None;
    format!("{cfg:?}")
}

/// Everything but secure receivers' key files, as comparable text (component
/// configurations and pipeline wiring; file positions excluded).
fn shape(c: &Config) -> Vec<String> {
    let mut out = Vec::new();
    out.extend(c.receivers.0.iter().map(|r| format!("receivers::{} {}", r.id, without_keys(&r.config))));
    out.extend(c.processors.0.iter().map(|p| format!("processors::{} {:?}", p.id, p.config)));
    out.extend(c.exporters.0.iter().map(|e| format!("exporters::{} {:?}", e.id, e.config)));
    out.extend(c.extensions.0.iter().map(|e| format!("extensions::{} {:?}", e.id, e.config)));
    out.extend(
        c.service.pipelines.iter().map(|(name, p)| format!("service::pipelines::{name} {:?}", p.value)),
    );
    out.push(format!(
        "service {:?} {:?} {:?} {:?} {:?}",
        c.service.telemetry,
        c.service.shutdown_timeout,
        c.service.extensions,
        c.service.progress_timeout,
        c.service.pid_file
    ));
    out
}

/// Applies `new` over `current` where it can (see the module docs).
/// `keys` are the running secure receivers' key handles by id.
pub fn apply(current: &Config, new: &Config, keys: &[(String, KeyHandle)]) -> Outcome {
    let (old_shape, new_shape) = (shape(current), shape(new));
    if old_shape != new_shape {
        let changed: Vec<&String> = new_shape.iter().filter(|s| !old_shape.contains(s)).collect();
        let removed: Vec<&String> = old_shape.iter().filter(|s| !new_shape.contains(s)).collect();
        tracing::error!(
            ?changed,
            ?removed,
            "reload: only key files of secure_udp receivers can change while running; restart to apply the rest (the running configuration stays)"
        );
        return Outcome::NeedsRestart;
    }
    for r in &new.receivers.0 {
        let ReceiverConfig::Vlp(cfg) = &r.config;
        let id = r.id.to_string();
        let Some((_, handle)) = keys.iter().find(|(k, _)| *k == id) else { continue };
        // Always re-read: a key is usually rotated by rewriting the same
        // file, and a reload may return to keys replaced by an earlier one.
        match varta_receiver::load_key_ring(&id, cfg) {
            Ok(ring) => {
                handle.replace(ring);
                tracing::info!(receiver = %id, "reload: key files re-read and in effect");
            }
            Err(e) => {
                // Checked moments ago; a file changed in between.
                tracing::error!(receiver = %id, "reload: cannot read the new keys: {e}");
                return Outcome::Invalid;
            }
        }
    }
    Outcome::Ok
}
