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

pub(crate) use learned::Code;
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

/// Largest accepted stall threshold (keeps deadline arithmetic trivially in range).
pub const MAX_THRESHOLD: Duration = Duration::from_secs(7 * 24 * 3600);

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
    /// Default: 10 × the default threshold, at most 7 days.
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
    /// `max`, or its default for this default threshold (10 ×, clamped
    /// to the largest threshold, so a long default threshold is valid).
    pub fn max_or(&self, default_threshold: Duration) -> Duration {
        self.max.unwrap_or(default_threshold.saturating_mul(10).min(MAX_THRESHOLD))
    }
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The learned-threshold part of [`Thresholds`].
///
/// Everything a beat needs is precomputed in learned-interval [`Code`]s,
/// so picking a class is two or three table compares — no duration
/// arithmetic on the hot path.
#[derive(Debug, Clone)]
struct Ladder {
    warmup: u8,
    /// The class of `adaptive.max` (the ceiling of agents no rule matches).
    max_class: Class,
    /// The first ladder class.
    first: usize,
    /// Per step k: the largest interval code whose wanted threshold
    /// (`multiplier ×` interval, at least `min`) is ≤ step k's.
    step_top: Vec<u16>,
    /// Per ceiling class (default, rules, `adaptive.max`): from which
    /// interval code on the wanted threshold reaches the ceiling, and how
    /// many steps lie at or below it.
    ceilings: Vec<Ceiling>,
}

#[derive(Debug, Clone, Copy)]
struct Ceiling {
    /// Codes ≥ this run under the ceiling class (`u32`: may be past every code).
    from_code: u32,
    /// Steps `0..steps` are ≤ the ceiling.
    steps: usize,
}

/// The largest code in `0..=hi` for which `fits` holds, `fits` being true
/// at 0 and monotone (true, then false).
fn last_fitting(hi: u16, fits: impl Fn(Code) -> bool) -> u16 {
    let (mut lo, mut hi) = (0u16, hi);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(Code::from_raw(mid)) { lo = mid } else { hi = mid - 1 }
    }
    lo
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
            let multiplier_fx = (adaptive.multiplier * 65536.0).round() as u64;
            let wanted = |c: Code| {
                u64::try_from((u128::from(c.ns()) * u128::from(multiplier_fx)) >> 16).unwrap_or(u64::MAX)
            };
            let last_code = Code::of_ns(u64::MAX).raw();
            let step_top = class_ns[first..]
                .iter()
                .map(|&step| last_fitting(last_code, |c| wanted(c).max(min_ns) <= step))
                .collect();
            let ceilings = class_ns[..first]
                .iter()
                .map(|&ceiling| Ceiling {
                    from_code: if ceiling <= min_ns {
                        0
                    } else if wanted(Code::from_raw(last_code)) < ceiling {
                        u32::from(last_code) + 1
                    } else {
                        u32::from(last_fitting(last_code, |c| wanted(c) < ceiling)) + 1
                    },
                    steps: class_ns[first..].iter().take_while(|&&step| step <= ceiling).count(),
                })
                .collect();
            Ladder { warmup: adaptive.warmup_beats, max_class, first, step_top, ceilings }
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

    /// While an agent's attributes are not known yet: the class with the
    /// longest threshold among the rules it may end up under — each rule
    /// naming an attribute whose other keys match it, up to the first rule
    /// that matches it without attributes (or the default) — when at least
    /// one attribute rule is among them. So an agent is never judged by a
    /// shorter threshold than its rule's before the resolver has answered.
    pub fn provisional_rule(&self, agent: &crate::agent::AgentRef) -> Option<Class> {
        if !self.needs_attributes {
            return None;
        }
        let mut longest = (0, DEFAULT_CLASS);
        let mut consider = |class: Class| {
            if self.ns(class) > longest.0 {
                longest = (self.ns(class), class);
            }
        };
        let mut any_attribute_rule = false;
        let mut settled = false;
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.matches.matches(agent, &Unresolved) {
                consider(self.rule_class(Some(i)));
                settled = true;
                break;
            }
            if rule.matches.needs_attributes() && rule.matches.matches_known(agent) {
                any_attribute_rule = true;
                consider(self.rule_class(Some(i)));
            }
        }
        if !settled {
            consider(DEFAULT_CLASS);
        }
        any_attribute_rule.then_some(longest.1)
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
        self.effective_near(rule_class, learned, None)
    }

    /// [`Thresholds::effective`], searching the ladder from `near` (the
    /// class the agent ran under so far): a learned interval moves at most
    /// one step per beat, so the search is a compare or two of the
    /// precomputed step tops instead of a binary search on every beat.
    /// The answer does not depend on `near`.
    pub fn effective_near(&self, rule_class: Class, learned: &Learned, near: Option<Class>) -> Class {
        let Some(l) = &self.ladder else { return rule_class };
        let Some(code) = learned.interval_code(l.warmup) else { return rule_class };
        let ceiling_class = if rule_class == DEFAULT_CLASS { l.max_class } else { rule_class };
        let Some(ceiling) = l.ceilings.get(usize::from(ceiling_class)) else { return rule_class };
        let code = code.raw();
        if u32::from(code) >= ceiling.from_code {
            return ceiling_class;
        }
        // The smallest step whose top code is ≥ the agent's: from `near`
        // when it is a step, else by binary search.
        let tops = &l.step_top;
        let mut k = match usize::from(near.unwrap_or(DEFAULT_CLASS)).checked_sub(l.first) {
            Some(k) if k < tops.len() => k,
            _ => tops.partition_point(|&top| top < code),
        };
        while k > 0 && tops[k - 1] >= code {
            k -= 1;
        }
        while k < tops.len() && tops[k] < code {
            k += 1;
        }
        if k >= ceiling.steps { ceiling_class } else { (l.first + k) as Class }
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
    fn a_provisional_rule_is_the_longest_an_unresolved_agent_may_get() {
        use crate::agent::{AgentId, AgentRef};
        use varta_proto::{Source, Transport};
        let agent = |transport| AgentRef {
            id: AgentId { source: Source::Local, pid: 1, start_time: 1 },
            frame_pid: 1,
            host_pid: 1,
            transport,
        };
        let off = AdaptiveConfig::default();
        // batch-* (10 s) may apply; the default (1 s) holds otherwise.
        let t = Thresholds::new(
            Duration::from_secs(1),
            &rules(r#"[{"match": {"service.name": "batch-*"}, "threshold": "10s"}]"#),
            &off,
        );
        assert_eq!(t.provisional_rule(&agent(Transport::Uds)).map(|c| t.ns(c)), Some(10_000_000_000));
        // A rule that matches without attributes settles it: later rules never apply.
        let t = Thresholds::new(
            Duration::from_secs(1),
            &rules(
                r#"[{"match": {"service.name": "fast-*"}, "threshold": "200ms"},
                    {"match": {"transport": "uds"}, "threshold": "3s"},
                    {"match": {"service.name": "batch-*"}, "threshold": "10m"}]"#,
            ),
            &off,
        );
        assert_eq!(t.provisional_rule(&agent(Transport::Uds)).map(|c| t.ns(c)), Some(3_000_000_000));
        // An attribute rule whose other keys exclude the agent does not count.
        let t = Thresholds::new(
            Duration::from_secs(1),
            &rules(r#"[{"match": {"service.name": "batch-*", "transport": "udp"}, "threshold": "10s"}]"#),
            &off,
        );
        assert_eq!(t.provisional_rule(&agent(Transport::Uds)), None);
        // No attribute rules at all: nothing provisional.
        let t = Thresholds::new(Duration::from_secs(1), &[], &off);
        assert_eq!(t.provisional_rule(&agent(Transport::Uds)), None);
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
    fn the_search_hint_never_changes_the_answer() {
        let adaptive = AdaptiveConfig { enabled: true, ..AdaptiveConfig::default() };
        let t = Thresholds::new(Duration::from_secs(10), &[], &adaptive);
        for interval in [1, 30, 99, 100, 101, 333, 1000, 4999, 24_999, 99_999] {
            let l = learned(interval);
            let want = t.effective(DEFAULT_CLASS, &l);
            for near in 0..t.class_ns().len() {
                assert_eq!(
                    t.effective_near(DEFAULT_CLASS, &l, Some(near as Class)),
                    want,
                    "{interval} from {near}"
                );
            }
        }
    }

    /// The class tables pick exactly what the duration arithmetic says:
    /// the smallest step ≥ max(multiplier × interval, min), the ceiling
    /// class when that is past the ceiling — for every code, under every
    /// ceiling, from every search hint.
    #[test]
    fn class_tables_agree_with_the_arithmetic() {
        let rules = rules(
            r#"[{"match": {"transport": "udp"}, "threshold": "1s"},
                {"match": {"transport": "uds"}, "threshold": "50ms"},
                {"match": {"transport": "secure_udp"}, "threshold": "3m"}]"#,
        );
        for (multiplier, min_ms, max) in [(4.0, 100, None), (1.5, 10, Some(3600)), (10.0, 250, Some(1))] {
            let adaptive = AdaptiveConfig {
                enabled: true,
                multiplier,
                min: Duration::from_millis(min_ms),
                max: max.map(Duration::from_secs),
                ..AdaptiveConfig::default()
            };
            let t = Thresholds::new(Duration::from_secs(10), &rules, &adaptive);
            let Some(l) = &t.ladder else { panic!("learning is on") };
            let min_ns = min_ms * 1_000_000;
            let fx = (multiplier * 65536.0).round() as u128;
            let reference = |rule_class: Class, interval: u64| -> Class {
                let cc = if rule_class == DEFAULT_CLASS { l.max_class } else { rule_class };
                let ceiling = t.class_ns[usize::from(cc)];
                let wanted = u64::try_from((u128::from(interval) * fx) >> 16).unwrap_or(u64::MAX);
                if ceiling <= min_ns || wanted >= ceiling {
                    return cc;
                }
                match t.class_ns[l.first..].iter().position(|&step| step >= wanted.max(min_ns)) {
                    Some(k) if t.class_ns[l.first + k] <= ceiling => (l.first + k) as Class,
                    _ => cc,
                }
            };
            let last = Code::of_ns(u64::MAX).raw();
            let hints = [None, Some(0), Some(l.first as Class), Some((t.class_ns.len() - 1) as Class)];
            for raw in (0..=last).step_by(3).chain([last]) {
                let learned = Learned::from_parts(Code::from_raw(raw), 8);
                for rule_class in 0..=rules.len() as Class {
                    let want = reference(rule_class, Code::from_raw(raw).ns());
                    for near in hints.into_iter().chain([Some(want)]) {
                        assert_eq!(
                            t.effective_near(rule_class, &learned, near),
                            want,
                            "×{multiplier}, code {raw}, rule class {rule_class}, from {near:?}"
                        );
                    }
                }
            }
        }
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
