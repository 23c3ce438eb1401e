//! The `service:` section: pipelines (which components, in which
//! order, how deep the queue), telemetry (logs), shutdown and progress
//! bounds, the pid file and the extensions to start.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

fn default_queue_batches() -> usize {
    1024
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    pub receivers: Vec<String>,
    #[serde(default)]
    pub processors: Vec<String>,
    pub exporters: Vec<String>,
    /// Bound of the receiver → processor queue, in batches of up to 64
    /// arrivals. When full, receivers drop (and count) what they cannot queue.
    #[serde(default = "default_queue_batches")]
    pub queue_batches: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines; the OpenTelemetry Collector calls it `console`.
    #[default]
    #[serde(alias = "console")]
    Text,
    Json,
}

fn default_level() -> String {
    "info".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logs {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter directive.
    #[serde(default = "default_level")]
    pub level: String,
    /// `text|json`; `encoding: console|json` is the OpenTelemetry
    /// Collector's spelling of the same setting (giving both is an error).
    #[serde(default, alias = "encoding")]
    pub format: LogFormat,
}

impl Default for Logs {
    fn default() -> Self {
        Logs { level: default_level(), format: LogFormat::Text }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    #[serde(default)]
    pub logs: Logs,
}

fn default_shutdown_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(5)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub pipelines: BTreeMap<String, Spanned<Pipeline>>,
    #[serde(default)]
    pub telemetry: Telemetry,
    /// Longest time an ordered shutdown may take before the collector gives up waiting.
    #[serde(default = "default_shutdown_timeout", deserialize_with = "varta_pipeline::config::duration")]
    pub shutdown_timeout: std::time::Duration,
    /// Written with the collector's pid at start, removed at exit
    /// (`varta-collector reload --pid-file`).
    #[serde(default)]
    pub pid_file: Option<std::path::PathBuf>,
    /// Extensions to start (ids from the top-level `extensions:` section).
    #[serde(default)]
    pub extensions: Vec<String>,
    /// A pipeline stage with work waiting that makes no progress for this
    /// long is unhealthy (health endpoint 503, no systemd WATCHDOG=1).
    #[serde(default = "default_progress_timeout", deserialize_with = "varta_pipeline::config::duration")]
    pub progress_timeout: std::time::Duration,
}

fn default_progress_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}
