//! The collector's own logs: `tracing` to stderr, text or JSON, level from
//! `service.telemetry.logs.level` (overridden by `RUST_LOG` when set).

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, Logs};

pub fn init(logs: &Logs) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v),
        _ => EnvFilter::try_new(&logs.level),
    }
    .map_err(|e| format!("invalid log level {:?}: {e}", logs.level))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match logs.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| format!("cannot install logger: {e}"))
}
