//! Live reload on SIGHUP (and `varta-collector reload`).
//!
//! Promises: the new configuration is read and fully checked (the same
//! checks as at start, key and token files included) before anything
//! changes; a configuration that fails them changes nothing, and is logged
//! and counted (`reloads{outcome="invalid"}`). A valid one is applied
//! component by component ([`crate::pipeline`]):
//!
//! * unchanged components keep running untouched: receivers keep their
//!   sockets (no window where beats bounce), pipelines keep their agents,
//!   incidents and pending stalls, exporters their queues;
//! * secure receivers re-read their key files on every reload: new keys
//!   take effect for the next frame, and the replay state of every sender
//!   stays — key rotation without a restart, by a new file list or by
//!   rewriting a file in place;
//! * a receiver whose settings changed is closed and bound again; a
//!   pipeline whose `tracker` or `ratelimit` settings changed starts with
//!   no agents; a changed `resolver`/`recovery` is replaced in the running
//!   pipeline (agents kept); changed exporters, endpoints and extensions
//!   are stopped (flushing what they hold) and started again; added and
//!   removed ones are started and stopped;
//! * `service.telemetry.logs.level` changes at once; `logs.format` needs a
//!   restart (the rest is applied, the outcome is `needs_restart`).
//!
//! If applying fails part way (a port taken, a file that cannot be
//! created), the collector goes back to the previous configuration
//! (`failed`). Should even that fail, health checks fail naming the broken
//! component until a later reload succeeds.

use crate::config::Config;
use crate::logging::{self, LogControl};
use crate::pipeline::Running;

pub use crate::reload_outcome::Outcome;

/// Applies `new` (already checked) over `current` (see the module docs).
pub fn apply(running: &mut Running, current: &Config, new: &Config, logs: &LogControl) -> Outcome {
    let (old_logs, new_logs) = (&current.service.telemetry.logs, &new.service.telemetry.logs);
    if let Err(e) = logging::check_level(&new_logs.level) {
        tracing::error!("reload: service::telemetry::logs: {e}; the running configuration stays");
        return Outcome::Invalid;
    }
    // The level first, so the reload's own logs follow it.
    let set_level = |level: &str| {
        if let Err(e) = logs.set_level(level) {
            tracing::error!("reload: cannot change the log level: {e}");
        }
    };
    if new_logs.level != old_logs.level {
        set_level(&new_logs.level);
        tracing::info!(level = %new_logs.level, "reload: log level changed");
    }
    if let Err(e) = running.apply(new) {
        tracing::error!("reload: {e}; going back to the running configuration");
        if new_logs.level != old_logs.level {
            set_level(&old_logs.level);
        }
        if let Err(again) = running.apply(current) {
            let component = again.component.clone().unwrap_or_else(|| "service".into());
            tracing::error!("reload: cannot go back to the running configuration either: {again}");
            running.mark_broken(component, again.message);
        }
        rotate_keys(running, current);
        return Outcome::Failed;
    }
    rotate_keys(running, new);
    if new_logs.format != old_logs.format {
        tracing::warn!(
            running = ?old_logs.format,
            configured = ?new_logs.format,
            "reload: a new log format needs a restart; everything else is applied"
        );
        return Outcome::NeedsRestart;
    }
    Outcome::Ok
}

/// Re-reads every running secure receiver's key files: a key is usually
/// rotated by rewriting the same file, and a reload may return to keys an
/// earlier one replaced.
fn rotate_keys(running: &Running, config: &Config) {
    for (id, handle) in running.keys() {
        let Some(c) = config.receivers.get(id) else { continue };
        match c.config.key_ring(id) {
            Ok(ring) => {
                handle.replace(ring);
                tracing::info!(receiver = %id, "reload: key files re-read and in effect");
            }
            // Checked moments ago; a file changed in between. The keys in
            // effect stay (logged: an operator must look).
            Err(e) => {
                tracing::error!(receiver = %id, "reload: cannot read the new keys, the old stay in effect: {e}")
            }
        }
    }
}
