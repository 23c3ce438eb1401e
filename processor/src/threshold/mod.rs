//! Every agent its own deadline: which threshold an agent runs under.
//!
//! An agent's threshold comes from, in order: the first matching rule of
//! `tracker.thresholds` ([`rules`]), else the default `tracker.threshold`;
//! then, with `tracker.adaptive` on and once the agent has warmed up,
//! `multiplier ×` its own learned beat interval ([`learned`]), clamped to
//! `[min, ceiling]` — the ceiling is the matching rule's threshold if one
//! matches, else `adaptive.max`.
//!
//! Thresholds are few by construction, which is what keeps the scheduler
//! O(1): [`Thresholds`] numbers them as *classes* (`u8`), and the tracker
//! keeps one recency list per class (see [`crate::tracker`]). Class 0 is
//! the default, 1..=R the rules, then `adaptive.max`, then a geometric
//! ladder of learned thresholds from `adaptive.min` up to the largest
//! ceiling, at most 1/8 octave (≈ 9 %) apart (fewer, wider steps only when
//! the range is huge, so that at most 256 classes exist). A learned
//! threshold is rounded *up* to the next step (never stalling an agent
//! earlier than `multiplier ×` its interval) but never past its ceiling.
//! Deadlines are exact for the threshold an agent runs under.

pub mod learned;
pub mod rules;

use std::time::Duration;

use serde::Deserialize;

pub use learned::Learned;
pub use rules::{AgentAttributes, AttributeKey, Cidr, Glob, Match, ThresholdRule, TransportSet, Unresolved};

/// A threshold class: an index into [`Thresholds::class_ns`].
pub type Class = u8;

/// The default threshold's class.
pub const DEFAULT_CLASS: Class = 0;
/// Most rules in `tracker.thresholds`.
pub const MAX_RULES: usize = 64;
/// Classes at most (they are `u8`).
const MAX_CLASSES: usize = 256;
/// Ladder steps per octave when the range allows.
const STEPS_PER_OCTAVE: f64 = 8.0;

fn default_multiplier() -> f64 {
    4.0
}
fn default_min() -> Duration {
    Duration::from_millis(100)
}
fn default_warmup() -> u8 {
    8
}

/// `tracker.adaptive:` — thresholds learned from each agent's own beat.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveConfig {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    #[serde(default = "default_min", deserialize_with = "varta_pipeline::config::duration")]
    pub min: Duration,
    /// Default: 10 × the default threshold.
    #[serde(default, deserialize_with = "varta_pipeline::config::opt_duration")]
    pub max: Option<Duration>,
    #[serde(default = "default_warmup")]
    pub warmup_beats: u8,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig {
            enabled: false,
            multiplier: default_multiplier(),
            min: default_min(),
            max: None,
            warmup_beats: default_warmup(),
        }
    }
}

impl AdaptiveConfig {
    /// `max`, or its default for this default threshold.
    pub fn max_or(&self, default_threshold: Duration) -> Duration {
        self.max.unwrap_or(default_threshold.saturating_mul(10))
    }
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The learned-threshold part of [`Thresholds`].
#[derive(Debug, Clone)]
struct Ladder {
    multiplier: f64,
    warmup: u8,
    min_ns: u64,
    /// The class of `adaptive.max` (the ceiling of agents no rule matches).
    max_class: Class,
    /// The first ladder class and the number of steps.
    first: usize,
    steps: usize,
    /// ln of the ratio between steps.
    ln_ratio: f64,
}

/// The threshold classes of one tracker configuration (see the module docs).
#[derive(Debug, Clone)]
pub struct Thresholds {
    class_ns: Vec<u64>,
    rules: Vec<ThresholdRule>,
    needs_attributes: bool,
    ladder: Option<Ladder>,
}

impl Thresholds {
    /// Classes for a validated configuration.
    pub fn new(default: Duration, rules: &[ThresholdRule], adaptive: &AdaptiveConfig) -> Thresholds {
        let rules = rules[..rules.len().min(MAX_RULES)].to_vec();
        let mut class_ns: Vec<u64> =
            std::iter::once(ns(default)).chain(rules.iter().map(|r| ns(r.threshold))).collect();
        let ladder = adaptive.enabled.then(|| {
            let max_ns = ns(adaptive.max_or(default));
            let min_ns = ns(adaptive.min).min(max_ns);
            let max_class = class_ns.len() as Class;
            class_ns.push(max_ns);
            let top = rules.iter().map(|r| ns(r.threshold)).fold(max_ns, u64::max).max(min_ns);
            let octaves = (top as f64 / min_ns as f64).log2();
            let room = MAX_CLASSES - class_ns.len();
            let steps = ((octaves * STEPS_PER_OCTAVE).ceil() as usize + 1).clamp(1, room);
            let ln_ratio =
                if steps > 1 { (top as f64 / min_ns as f64).ln() / (steps - 1) as f64 } else { 0.0 };
            let first = class_ns.len();
            for k in 0..steps {
                let step =
                    if k + 1 == steps { top } else { (min_ns as f64 * (ln_ratio * k as f64).exp()) as u64 };
                class_ns.push(step.clamp(min_ns, top));
            }
            Ladder {
                multiplier: adaptive.multiplier,
                warmup: adaptive.warmup_beats,
                min_ns,
                max_class,
                first,
                steps,
                ln_ratio,
            }
        });
        let needs_attributes = rules.iter().any(|r| r.matches.needs_attributes());
        Thresholds { class_ns, rules, needs_attributes, ladder }
    }

    /// Threshold of every class, in nanoseconds.
    pub fn class_ns(&self) -> &[u64] {
        &self.class_ns
    }

    pub fn rules(&self) -> &[ThresholdRule] {
        &self.rules
    }

    /// Whether any rule names a resolver attribute.
    pub fn needs_attributes(&self) -> bool {
        self.needs_attributes
    }

    /// The class of rule `rule` (by index), or the default's.
    pub fn rule_class(&self, rule: Option<usize>) -> Class {
        rule.map_or(DEFAULT_CLASS, |i| (i + 1).min(self.rules.len()) as Class)
    }

    /// Warm-up gaps before a learned threshold applies (0 when learning is off).
    pub fn warmup(&self) -> Option<u8> {
        self.ladder.as_ref().map(|l| l.warmup)
    }

    /// The class an agent runs under: `rule_class` while it has no learned
    /// interval (or learning is off), else its learned threshold's.
    pub fn effective(&self, rule_class: Class, learned: &Learned) -> Class {
        let Some(l) = &self.ladder else { return rule_class };
        let Some(interval) = learned.interval_ns(l.warmup) else { return rule_class };
        let (ceiling_class, ceiling) = if rule_class == DEFAULT_CLASS {
            (l.max_class, self.class_ns[usize::from(l.max_class)])
        } else {
            (rule_class, self.class_ns[usize::from(rule_class)])
        };
        let wanted = (interval as f64 * l.multiplier).min(u64::MAX as f64) as u64;
        if ceiling <= l.min_ns || wanted >= ceiling {
            return ceiling_class;
        }
        let wanted = wanted.max(l.min_ns);
        // The smallest step ≥ wanted: the estimate from logarithms, then
        // corrected against the table (floating rounding).
        let mut k = if l.ln_ratio > 0.0 {
            ((wanted as f64 / l.min_ns as f64).ln() / l.ln_ratio).ceil().max(0.0) as usize
        } else {
            0
        };
        k = k.min(l.steps - 1);
        let step = |k: usize| self.class_ns[l.first + k];
        while k > 0 && step(k - 1) >= wanted {
            k -= 1;
        }
        while k + 1 < l.steps && step(k) < wanted {
            k += 1;
        }
        if step(k) > ceiling || step(k) < wanted { ceiling_class } else { (l.first + k) as Class }
    }

    /// The threshold of `class`, in nanoseconds.
    pub fn ns(&self, class: Class) -> u64 {
        self.class_ns.get(usize::from(class)).copied().unwrap_or(self.class_ns[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn learned(interval_ms: u64) -> Learned {
        let mut l = Learned::default();
        for _ in 0..8 {
            l.observe(interval_ms * 1_000_000, 8);
        }
        l
    }

    fn rules(json: &str) -> Vec<ThresholdRule> {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn without_learning_classes_are_default_then_rules() {
        let t = Thresholds::new(
            Duration::from_secs(5),
            &rules(r#"[{"match": {"transport": "udp"}, "threshold": "400ms"}]"#),
            &AdaptiveConfig::default(),
        );
        assert_eq!(t.class_ns(), [5_000_000_000, 400_000_000]);
        assert_eq!(t.rule_class(None), 0);
        assert_eq!(t.rule_class(Some(0)), 1);
        assert_eq!(t.effective(1, &learned(10)), 1);
    }

    #[test]
    fn learned_thresholds_round_up_within_nine_percent_and_respect_ceilings() {
        let adaptive = AdaptiveConfig { enabled: true, ..AdaptiveConfig::default() };
        let t = Thresholds::new(
            Duration::from_secs(10),
            &rules(r#"[{"match": {"transport": "udp"}, "threshold": "1s"}]"#),
            &adaptive,
        );
        for interval in [1, 20, 100, 250, 400, 1000, 5000, 24_000, 60_000] {
            let l = learned(interval);
            let got = t.ns(t.effective(DEFAULT_CLASS, &l));
            let wanted = (l.interval_ns(8).unwrap_or(0) * 4).clamp(100_000_000, 100_000_000_000);
            assert!(got >= wanted.min(100_000_000_000), "{interval} ms: {got} < {wanted}");
            assert!(got <= wanted + wanted / 10 || got == 100_000_000_000, "{interval} ms: {got} ≫ {wanted}");
        }
        // The rule is the ceiling: a slow agent under it gets the rule's 1 s.
        assert_eq!(t.effective(1, &learned(5000)), 1);
        assert_eq!(t.ns(t.effective(1, &learned(100))), t.ns(t.effective(DEFAULT_CLASS, &learned(100))));
        // Not warmed up: the rule's (or default's) class.
        assert_eq!(t.effective(1, &Learned::default()), 1);
        assert!(t.class_ns().len() <= 256);
    }

    #[test]
    fn huge_ranges_still_fit_in_a_byte() {
        let adaptive = AdaptiveConfig {
            enabled: true,
            min: Duration::from_millis(10),
            max: Some(Duration::from_secs(7 * 24 * 3600)),
            ..AdaptiveConfig::default()
        };
        let many: Vec<ThresholdRule> = (0..MAX_RULES)
            .map(|i| ThresholdRule {
                matches: Match { source: Cidr::parse("10.0.0.0/8").ok(), ..Match::default() },
                threshold: Duration::from_millis(10 + i as u64),
            })
            .collect();
        let t = Thresholds::new(Duration::from_secs(2), &many, &adaptive);
        assert_eq!(t.class_ns().len(), 256);
        for interval in [3, 77, 9_999, 123_456_789] {
            let l = learned(interval);
            let got = t.ns(t.effective(DEFAULT_CLASS, &l));
            let wanted = (l.interval_ns(8).unwrap_or(0) * 4).clamp(10_000_000, 7 * 24 * 3600 * 1_000_000_000);
            assert!(got >= wanted, "{interval} ms: {got} < {wanted}");
        }
    }
}
