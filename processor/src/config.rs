//! Configuration of the two collector processors this crate provides:
//! `ratelimit` ([`RateLimitConfig`]) and `tracker` ([`TrackerConfig`]).
//!
//! Promises: both deserialize with unknown keys refused
//! (`deny_unknown_fields`) and every field optional (documented defaults);
//! durations are strings such as `"2s"` or `"150ms"` (units `ns`, `us`,
//! `ms`, `s`, `m`, `h`; a bare `"0"` is zero). [`RateLimitConfig::validate`]
//! and [`TrackerConfig::validate`] report the first invalid field by its
//! YAML path (`tracker.threshold`, …).

use std::time::Duration;

use serde::Deserialize;

use crate::clock::Clock;
pub use crate::threshold::{AdaptiveConfig, ThresholdRule};
use crate::threshold::{MAX_RULES, Thresholds};
use crate::tracker::MAX_WARMUP;

/// A configuration value outside its allowed range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// A field of one entry of `tracker.thresholds`.
    #[error("tracker.thresholds[{index}].{field}: {reason}")]
    InvalidRule { index: usize, field: &'static str, reason: String },
}

impl ConfigError {
    fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { field, reason: reason.into() }
    }

    /// The YAML path of the offending field, e.g. `tracker.threshold`.
    pub fn field(&self) -> &'static str {
        match self {
            ConfigError::Invalid { field, .. } => field,
            ConfigError::InvalidRule { .. } => "tracker.thresholds",
        }
    }
}

/// `tracker.threshold` → key path `threshold` below the component;
/// `tracker.thresholds[2].threshold` → `thresholds.2.threshold`.
impl From<ConfigError> for varta_pipeline::config::FieldError {
    fn from(e: ConfigError) -> Self {
        let path = match &e {
            ConfigError::InvalidRule { index, field, .. } => format!("thresholds.{index}.{field}"),
            ConfigError::Invalid { field, .. } => field.split_once('.').map_or("", |(_, f)| f).to_owned(),
        };
        varta_pipeline::config::FieldError::new(path, e.to_string())
    }
}

/// Default minimum interval between admitted beats of one agent (100 beats/s).
pub const DEFAULT_PER_AGENT_MIN_INTERVAL: Duration = Duration::from_millis(10);
/// Default global admission rate, beats per second.
pub const DEFAULT_GLOBAL_RATE: u64 = 1_000_000;

/// `processors: ratelimit:` — admission control in front of the tracker.
///
/// * `per_agent_min_interval` (default `"10ms"`, i.e. 100 beats/s; `"0"`
///   disables): beats of one agent closer together than this are refused
///   (`rate_limited{reason="per_agent"}`).
/// * `global_rate` (beats/s, default 1,000,000; 0 disables) and
///   `global_burst` (default 2 × `global_rate`): a token bucket over all
///   agents (`rate_limited{reason="global"}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(from = "RawRateLimitConfig")]
pub struct RateLimitConfig {
    pub per_agent_min_interval: Duration,
    pub global_rate: u64,
    pub global_burst: u64,
}

/// The YAML shape of [`RateLimitConfig`]; `global_burst` defaults to twice
/// the (possibly configured) rate, which a plain serde default cannot express.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimitConfig {
    #[serde(
        default = "default_per_agent_min_interval",
        deserialize_with = "varta_pipeline::config::duration"
    )]
    per_agent_min_interval: Duration,
    #[serde(default = "default_global_rate")]
    global_rate: u64,
    #[serde(default)]
    global_burst: Option<u64>,
}

fn default_per_agent_min_interval() -> Duration {
    DEFAULT_PER_AGENT_MIN_INTERVAL
}

fn default_global_rate() -> u64 {
    DEFAULT_GLOBAL_RATE
}

impl From<RawRateLimitConfig> for RateLimitConfig {
    fn from(raw: RawRateLimitConfig) -> Self {
        RateLimitConfig {
            per_agent_min_interval: raw.per_agent_min_interval,
            global_rate: raw.global_rate,
            global_burst: raw.global_burst.unwrap_or(raw.global_rate.saturating_mul(2)),
        }
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            per_agent_min_interval: DEFAULT_PER_AGENT_MIN_INTERVAL,
            global_rate: DEFAULT_GLOBAL_RATE,
            global_burst: DEFAULT_GLOBAL_RATE * 2,
        }
    }
}

/// Upper bound of `ratelimit.global_rate` (beats/s); keeps the token
/// arithmetic (nano-tokens in a `u64`) far from overflow.
pub const MAX_GLOBAL_RATE: u64 = 1_000_000_000;

impl RateLimitConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.per_agent_min_interval > Duration::from_secs(3600) {
            return Err(ConfigError::invalid(
                "ratelimit.per_agent_min_interval",
                format!("must be at most 1h (got {:?})", self.per_agent_min_interval),
            ));
        }
        if self.global_rate > MAX_GLOBAL_RATE {
            return Err(ConfigError::invalid(
                "ratelimit.global_rate",
                format!("must be at most {MAX_GLOBAL_RATE} beats/s (got {})", self.global_rate),
            ));
        }
        if self.global_rate > 0 && self.global_burst == 0 {
            return Err(ConfigError::invalid(
                "ratelimit.global_burst",
                "must be at least 1 while global_rate is enabled (a bucket of 0 admits nothing)",
            ));
        }
        if self.global_burst > MAX_GLOBAL_RATE.saturating_mul(2) {
            return Err(ConfigError::invalid(
                "ratelimit.global_burst",
                format!("must be at most {} (got {})", MAX_GLOBAL_RATE * 2, self.global_burst),
            ));
        }
        Ok(())
    }
}

/// Smallest accepted stall threshold.
pub const MIN_THRESHOLD: Duration = Duration::from_millis(10);
pub use crate::threshold::MAX_THRESHOLD;
/// Default stall threshold.
pub const DEFAULT_THRESHOLD: Duration = Duration::from_secs(2);
/// Default tracker capacity (agents).
pub const DEFAULT_CAPACITY: usize = 65_536;
/// Largest accepted tracker capacity: slot indices are `u32` and memory is
/// bounded at ≤ 256 bytes per agent (≤ 4 GiB at this bound).
pub const MAX_CAPACITY: usize = 1 << 24;
/// Default eviction factor (× threshold).
pub const DEFAULT_EVICTION_AFTER: u32 = 10;

/// Default refresh interval of the published snapshot.
pub const DEFAULT_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);

/// `processors: tracker:` — per-agent liveness state and stall detection.
///
/// * `threshold` (default `"2s"`, at least `"10ms"`): an agent with no
///   accepted beat for this long is stalled.
/// * `capacity` (default 65,536, at most 16,777,216): agents tracked at once.
/// * `clock` (`monotonic` (default) or `boottime`): the clock the processor
///   reads; `boottime` keeps counting while the host is suspended.
/// * `eviction_after` (default 10): when the tracker is full, a new agent may
///   replace the oldest stalled agent that has been silent for more than
///   `eviction_after × threshold`.
/// * `snapshot_interval` (default `"1s"`, between `"10ms"` and `"1m"`): the
///   published view of counters and agents (read by the metrics endpoints
///   and the stats dump) is refreshed at most this often while anything
///   changes.
/// * `thresholds` (default none, at most 64): rules giving matching agents
///   their own threshold, first match wins (see [`crate::threshold`]).
/// * `adaptive` (default off): thresholds learned from each agent's own
///   beat ([`AdaptiveConfig`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackerConfig {
    #[serde(deserialize_with = "varta_pipeline::config::duration")]
    pub threshold: Duration,
    pub capacity: usize,
    pub clock: Clock,
    pub eviction_after: u32,
    #[serde(deserialize_with = "varta_pipeline::config::duration")]
    pub snapshot_interval: Duration,
    pub thresholds: Vec<ThresholdRule>,
    pub adaptive: AdaptiveConfig,
    /// The share of `capacity` plain-UDP agents (whose pids nobody proves)
    /// may take when the pipeline also has attested receivers (default
    /// 0.5), so a flood of fake pids can never keep a kernel-attested agent
    /// out. See [`TrackerConfig::shared_with_attested`].
    pub unauthenticated_share: f64,
    /// Set by whoever assembles the pipeline (not configuration): the
    /// pipeline has plain-UDP and other receivers, so the share applies.
    #[serde(skip)]
    pub shared_with_attested: bool,
    /// A `file_storage` extension keeping the agents' state across
    /// restarts (its component id); none by default.
    pub storage: Option<String>,
    /// How often the agents' state is checkpointed into `storage` (and at
    /// every shutdown): what a crash can lose at most.
    #[serde(deserialize_with = "varta_pipeline::config::duration")]
    pub checkpoint_interval: Duration,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            threshold: DEFAULT_THRESHOLD,
            capacity: DEFAULT_CAPACITY,
            clock: Clock::Monotonic,
            eviction_after: DEFAULT_EVICTION_AFTER,
            snapshot_interval: DEFAULT_SNAPSHOT_INTERVAL,
            thresholds: Vec::new(),
            adaptive: AdaptiveConfig::default(),
            unauthenticated_share: 0.5,
            shared_with_attested: false,
            storage: None,
            checkpoint_interval: Duration::from_secs(5),
        }
    }
}

impl TrackerConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !in_threshold_range(self.threshold) {
            return Err(ConfigError::invalid(
                "tracker.threshold",
                format!("must be between 10ms and 7 days (got {:?})", self.threshold),
            ));
        }
        if self.capacity == 0 || self.capacity > MAX_CAPACITY {
            return Err(ConfigError::invalid(
                "tracker.capacity",
                format!("must be between 1 and {MAX_CAPACITY} (got {})", self.capacity),
            ));
        }
        if self.eviction_after == 0 || self.eviction_after > 1_000 {
            return Err(ConfigError::invalid(
                "tracker.eviction_after",
                format!("must be between 1 and 1000 (× threshold; got {})", self.eviction_after),
            ));
        }
        if self.snapshot_interval < Duration::from_millis(10)
            || self.snapshot_interval > Duration::from_secs(60)
        {
            return Err(ConfigError::invalid(
                "tracker.snapshot_interval",
                format!("must be between 10ms and 1m (got {:?})", self.snapshot_interval),
            ));
        }
        if self.checkpoint_interval < Duration::from_millis(100)
            || self.checkpoint_interval > Duration::from_secs(3600)
        {
            return Err(ConfigError::invalid(
                "tracker.checkpoint_interval",
                format!("must be between 100ms and 1h (got {:?})", self.checkpoint_interval),
            ));
        }
        if !(self.unauthenticated_share > 0.0 && self.unauthenticated_share <= 1.0) {
            return Err(ConfigError::invalid(
                "tracker.unauthenticated_share",
                format!("must be greater than 0 and at most 1 (got {})", self.unauthenticated_share),
            ));
        }
        self.validate_rules()?;
        // Settings of a feature that is off are not checked (they may be
        // kept in a config for later): `threshold: 24h` with adaptive off
        // was once refused for adaptive's default `max`.
        if self.adaptive.enabled { self.validate_adaptive() } else { Ok(()) }
    }

    fn validate_rules(&self) -> Result<(), ConfigError> {
        if self.thresholds.len() > MAX_RULES {
            return Err(ConfigError::invalid(
                "tracker.thresholds",
                format!("at most {MAX_RULES} rules (got {})", self.thresholds.len()),
            ));
        }
        for (index, rule) in self.thresholds.iter().enumerate() {
            let invalid = |field, reason: String| ConfigError::InvalidRule { index, field, reason };
            if rule.matches.is_empty() {
                return Err(invalid(
                    "match",
                    "must name at least one key (the default threshold is `threshold`)".into(),
                ));
            }
            if !in_threshold_range(rule.threshold) {
                return Err(invalid(
                    "threshold",
                    format!("must be between 10ms and 7 days (got {:?})", rule.threshold),
                ));
            }
        }
        Ok(())
    }

    fn validate_adaptive(&self) -> Result<(), ConfigError> {
        let a = &self.adaptive;
        if !(1.0..=1000.0).contains(&a.multiplier) {
            return Err(ConfigError::invalid(
                "tracker.adaptive.multiplier",
                format!("must be between 1 and 1000 (got {})", a.multiplier),
            ));
        }
        if !in_threshold_range(a.min) {
            return Err(ConfigError::invalid(
                "tracker.adaptive.min",
                format!("must be between 10ms and 7 days (got {:?})", a.min),
            ));
        }
        let max = a.max_or(self.threshold);
        if max < a.min || max > MAX_THRESHOLD {
            return Err(ConfigError::invalid(
                "tracker.adaptive.max",
                format!("must be between `min` ({:?}) and 7 days (got {max:?})", a.min),
            ));
        }
        if a.warmup_beats == 0 || a.warmup_beats > MAX_WARMUP {
            return Err(ConfigError::invalid(
                "tracker.adaptive.warmup_beats",
                format!("must be between 1 and {MAX_WARMUP} (got {})", a.warmup_beats),
            ));
        }
        Ok(())
    }

    /// The threshold classes of this configuration.
    pub fn thresholds(&self) -> Thresholds {
        Thresholds::new(self.threshold, &self.thresholds, &self.adaptive)
    }

    pub fn snapshot_interval_ns(&self) -> u64 {
        u64::try_from(self.snapshot_interval.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Plain UDP's share of the pipeline's budgets (tracker capacity, rate,
    /// queue) when it shares the pipeline with attested receivers.
    pub fn unauthenticated_share_if_shared(&self) -> Option<f64> {
        self.shared_with_attested.then_some(self.unauthenticated_share)
    }

    /// How many plain-UDP agents may be tracked at once.
    pub fn unauthenticated_limit(&self) -> usize {
        if self.shared_with_attested {
            ((self.capacity as f64 * self.unauthenticated_share) as usize).max(1)
        } else {
            self.capacity
        }
    }

    /// The threshold in nanoseconds (validated configs fit easily in `u64`).
    pub fn threshold_ns(&self) -> u64 {
        u64::try_from(self.threshold.as_nanos()).unwrap_or(u64::MAX)
    }
}

fn in_threshold_range(d: Duration) -> bool {
    (MIN_THRESHOLD..=MAX_THRESHOLD).contains(&d)
}

pub use varta_proto::duration::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_from_empty_maps() -> Result<(), serde_json::Error> {
        let rl: RateLimitConfig = serde_json::from_str("{}")?;
        assert_eq!(rl, RateLimitConfig::default());
        assert_eq!(rl.global_burst, 2_000_000);
        let tr: TrackerConfig = serde_json::from_str("{}")?;
        assert_eq!(tr, TrackerConfig::default());
        assert!(rl.validate().is_ok() && tr.validate().is_ok());
        Ok(())
    }

    #[test]
    fn fields_parse_and_burst_follows_rate() -> Result<(), serde_json::Error> {
        let rl: RateLimitConfig =
            serde_json::from_str(r#"{"per_agent_min_interval":"0","global_rate":500}"#)?;
        assert_eq!(rl.per_agent_min_interval, Duration::ZERO);
        assert_eq!(rl.global_burst, 1000);
        let rl: RateLimitConfig = serde_json::from_str(r#"{"global_rate":500,"global_burst":7}"#)?;
        assert_eq!(rl.global_burst, 7);
        let tr: TrackerConfig = serde_json::from_str(
            r#"{"threshold":"150ms","capacity":1000000,"clock":"boottime","eviction_after":3}"#,
        )?;
        assert_eq!(tr.threshold, Duration::from_millis(150));
        assert_eq!(tr.capacity, 1_000_000);
        assert_eq!(tr.clock, Clock::Boottime);
        assert_eq!(tr.eviction_after, 3);
        Ok(())
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        assert!(serde_json::from_str::<TrackerConfig>(r#"{"treshold":"2s"}"#).is_err());
        assert!(serde_json::from_str::<RateLimitConfig>(r#"{"rate":1}"#).is_err());
        assert!(serde_json::from_str::<TrackerConfig>(r#"{"clock":"realtime"}"#).is_err());
        let err = serde_json::from_str::<TrackerConfig>(r#"{"threshold":"2 parsecs"}"#)
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert!(matches!(&err, Err(msg) if msg.contains("invalid duration")), "{err:?}");
    }

    #[test]
    fn threshold_rules_and_learning_are_validated() -> Result<(), serde_json::Error> {
        let tr: TrackerConfig = serde_json::from_str(
            r#"{"thresholds": [{"match": {"service.name": "batch-*"}, "threshold": "10m"}],
                "adaptive": {"enabled": true, "multiplier": 3, "min": "50ms", "warmup_beats": 4}}"#,
        )?;
        assert!(tr.validate().is_ok());
        assert_eq!(tr.adaptive.max_or(tr.threshold), Duration::from_secs(20));
        let bad = |f: &dyn Fn(&mut TrackerConfig)| {
            let mut t = tr.clone();
            f(&mut t);
            t.validate().map_err(|e| e.to_string())
        };
        let e = bad(&|t| t.thresholds[0].threshold = Duration::from_millis(1));
        assert!(matches!(&e, Err(m) if m.starts_with("tracker.thresholds[0].threshold:")), "{e:?}");
        // A long threshold is valid, adaptive on (its default max is
        // clamped to 7 days) or off (its settings are not checked).
        for enabled in [false, true] {
            let day = TrackerConfig {
                threshold: Duration::from_secs(24 * 3600),
                adaptive: AdaptiveConfig { enabled, ..AdaptiveConfig::default() },
                ..TrackerConfig::default()
            };
            assert!(day.validate().is_ok(), "adaptive enabled {enabled}: {:?}", day.validate());
        }
        let off = TrackerConfig {
            adaptive: AdaptiveConfig { multiplier: 0.5, ..AdaptiveConfig::default() },
            ..TrackerConfig::default()
        };
        assert!(off.validate().is_ok(), "{:?}", off.validate());
        let e = bad(&|t| t.adaptive.multiplier = 0.5);
        assert!(matches!(&e, Err(m) if m.starts_with("tracker.adaptive.multiplier:")), "{e:?}");
        let e = bad(&|t| t.adaptive.max = Some(Duration::from_millis(20)));
        assert!(matches!(&e, Err(m) if m.starts_with("tracker.adaptive.max:")), "{e:?}");
        let e = bad(&|t| t.adaptive.warmup_beats = 64);
        assert!(matches!(&e, Err(m) if m.starts_with("tracker.adaptive.warmup_beats:")), "{e:?}");
        let e = bad(&|t| t.thresholds = vec![t.thresholds[0].clone(); 65]);
        assert!(matches!(&e, Err(m) if m.starts_with("tracker.thresholds:")), "{e:?}");
        assert!(serde_json::from_str::<TrackerConfig>(r#"{"adaptive": {"enabld": true}}"#).is_err());
        Ok(())
    }

    #[test]
    fn validation_names_the_field() {
        let tr = TrackerConfig { threshold: Duration::from_millis(5), ..TrackerConfig::default() };
        assert_eq!(tr.validate().map_err(|e| e.field()), Err("tracker.threshold"));
        let tr = TrackerConfig { capacity: 0, ..TrackerConfig::default() };
        assert_eq!(tr.validate().map_err(|e| e.field()), Err("tracker.capacity"));
        let tr = TrackerConfig { eviction_after: 0, ..TrackerConfig::default() };
        let msg = tr.validate().map_err(|e| e.to_string());
        assert!(matches!(&msg, Err(m) if m.starts_with("tracker.eviction_after:")), "{msg:?}");
        let rl = RateLimitConfig { global_burst: 0, ..RateLimitConfig::default() };
        assert_eq!(rl.validate().map_err(|e| e.field()), Err("ratelimit.global_burst"));
        let rl = RateLimitConfig { global_rate: 0, global_burst: 0, ..RateLimitConfig::default() };
        assert!(rl.validate().is_ok());
    }
}
