//! The collector's own logs: `tracing` to stderr, text or JSON, level from
//! `service.telemetry.logs.level` (overridden by `RUST_LOG` when set). A
//! reload may change the level while running; the format needs a restart.
//! Text is coloured only when stderr is a terminal and `NO_COLOR` is unset
//! or empty (<https://no-color.org>): a file or the journal gets plain lines.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, Logs};

type SetFilter = Box<dyn Fn(EnvFilter) -> Result<(), String>>;

/// Changes the level of the installed logger.
pub struct LogControl {
    set: SetFilter,
    /// `RUST_LOG` was set: it wins over the configuration, at start and on reload.
    from_env: bool,
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogControl").field("from_env", &self.from_env).finish_non_exhaustive()
    }
}

/// Checks a `logs.level` without applying it.
pub fn check_level(level: &str) -> Result<(), String> {
    filter(level).map(drop)
}

fn filter(level: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(level).map_err(|e| format!("invalid log level {level:?}: {e}"))
}

pub fn init(logs: &Logs) -> Result<LogControl, String> {
    let env = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let initial = filter(env.as_deref().unwrap_or(&logs.level))?;
    let ansi = colours(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
    let builder =
        tracing_subscriber::fmt().with_env_filter(initial).with_writer(std::io::stderr).with_ansi(ansi);
    let set: SetFilter = match logs.format {
        LogFormat::Text => {
            let builder = builder.with_filter_reloading();
            let handle = builder.reload_handle();
            builder.try_init().map_err(|e| format!("cannot install logger: {e}"))?;
            Box::new(move |f| handle.reload(f).map_err(|e| e.to_string()))
        }
        LogFormat::Json => {
            let builder = builder.json().flatten_event(true).with_filter_reloading();
            let handle = builder.reload_handle();
            builder.try_init().map_err(|e| format!("cannot install logger: {e}"))?;
            Box::new(move |f| handle.reload(f).map_err(|e| e.to_string()))
        }
    };
    Ok(LogControl { set, from_env: env.is_some() })
}

/// Whether text logs carry ANSI colour codes.
fn colours(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

impl LogControl {
    /// Applies a new `logs.level` (a validated configuration's).
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        if self.from_env {
            tracing::info!("reload: RUST_LOG is set and keeps deciding the log level");
            return Ok(());
        }
        (self.set)(filter(level)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colours(true, None));
        assert!(colours(true, Some(OsStr::new(""))));
        assert!(!colours(true, Some(OsStr::new("1"))));
        assert!(!colours(false, None));
    }
}
