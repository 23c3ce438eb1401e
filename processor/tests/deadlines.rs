//! The per-agent scheduler against a simple model: random agents under
//! random rule thresholds (by source address), with learning on or off,
//! beating at random intervals with random pauses. The processor is driven
//! exactly as its run loop drives it — woken at the deadline it asks for —
//! and must emit exactly the stalls the model predicts: none missed, none
//! early, none late, none twice.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{MS, Recorder, T0, batch, ip, net};
use proptest::prelude::*;
use varta_processor::threshold::{Cidr, Learned, Match, ThresholdRule, Thresholds};
use varta_processor::{AdaptiveConfig, EventKind, Processor, TrackerConfig};
use varta_proto::Transport;

/// Agents live at 10.0.0.1 … 10.0.0.6; rules give .1, .2 and .3 their own thresholds.
const AGENTS: u8 = 6;

fn config(default_ms: u64, rule_ms: [u64; 3], adaptive: bool) -> TrackerConfig {
    let thresholds = rule_ms
        .iter()
        .enumerate()
        .map(|(i, &ms)| ThresholdRule {
            matches: Match { source: Cidr::parse(&format!("10.0.0.{}", i + 1)).ok(), ..Match::default() },
            threshold: Duration::from_millis(ms),
        })
        .collect();
    TrackerConfig {
        threshold: Duration::from_millis(default_ms),
        thresholds,
        adaptive: AdaptiveConfig {
            enabled: adaptive,
            min: Duration::from_millis(10),
            warmup_beats: 3,
            ..AdaptiveConfig::default()
        },
        ..TrackerConfig::default()
    }
}

/// What the model knows of one agent.
#[derive(Default, Clone)]
struct Model {
    last_beat: u64,
    learned: Learned,
    class: u8,
    stalled: bool,
}

fn rule_of(agent: u8) -> u8 {
    if (1..=3).contains(&agent) { agent } else { 0 }
}

/// The stalls (pid, time) the model predicts for `beats` (time, agent)
/// after `agents`' history, up to `horizon`; a stall due before
/// `not_before` (a reload) happens then. Leaves `agents` as they end.
fn predict(
    t: &Thresholds,
    agents: &mut BTreeMap<u8, Model>,
    beats: &[(u64, u8)],
    horizon: u64,
    not_before: u64,
) -> Vec<(u32, u64)> {
    let mut stalls = Vec::new();
    for &(at, agent) in beats {
        let known = agents.contains_key(&agent);
        let m = agents.entry(agent).or_default();
        if known {
            let deadline = m.last_beat + t.ns(m.class);
            if !m.stalled && at >= deadline {
                stalls.push((u32::from(agent), deadline.max(not_before)));
                m.stalled = true;
            }
            if let Some(w) = t.warmup() {
                if m.stalled {
                    m.learned.forget();
                } else {
                    m.learned.observe(at - m.last_beat, w);
                }
            }
        }
        m.class = t.effective(rule_of(agent), &m.learned);
        m.last_beat = at;
        m.stalled = false;
    }
    for (&agent, m) in agents.iter_mut() {
        let deadline = m.last_beat + t.ns(m.class);
        if !m.stalled && deadline <= horizon {
            stalls.push((u32::from(agent), deadline.max(not_before)));
            m.stalled = true;
        }
    }
    stalls.sort_unstable();
    stalls
}

/// Runs the processor over `beats` the way its loop does, from `start`
/// up to `horizon`.
fn run(p: &mut Processor, beats: &[(u64, u8)], start: u64, horizon: u64) -> Vec<(u32, u64)> {
    let mut out = Recorder::default();
    let mut stalls = Vec::new();
    let collect = |out: &mut Recorder, stalls: &mut Vec<(u32, u64)>| {
        for e in out.take() {
            if let EventKind::Stall { .. } = e.kind {
                stalls.push((e.agent.map_or(0, |a| a.id.pid), e.at_ns));
            }
        }
    };
    let mut wake = p.fire_due(start, &mut out);
    collect(&mut out, &mut stalls);
    for &(at, agent) in beats {
        while let Some(w) = wake.filter(|&w| w <= at) {
            wake = p.fire_due(w, &mut out);
            assert!(wake.is_none_or(|next| next > w), "woken at {w} for {wake:?}");
            collect(&mut out, &mut stalls);
        }
        // The timestamp doubles as the nonce: both advance with time.
        let n = (at - T0) / 1000 + 1;
        let beat = net(ip(agent), Transport::Udp, u32::from(agent), n, n);
        p.handle_batch(&batch(&[beat]), at, &mut out);
        collect(&mut out, &mut stalls);
        wake = p.fire_due(at, &mut out);
        collect(&mut out, &mut stalls);
    }
    while let Some(w) = wake.filter(|&w| w <= horizon) {
        wake = p.fire_due(w, &mut out);
        collect(&mut out, &mut stalls);
    }
    stalls.sort_unstable();
    stalls
}

/// Beat times: per agent, gaps mostly near its own rhythm, sometimes a pause.
fn beats_strategy() -> impl Strategy<Value = Vec<(u64, u8)>> {
    let agent = (1..=AGENTS, 5u64..400, prop::collection::vec((0u64..100, 0u64..8), 1..40));
    prop::collection::vec(agent, 1..8).prop_map(|agents| {
        let mut all = Vec::new();
        for (agent, rhythm_ms, gaps) in agents {
            let mut t = T0 + u64::from(agent) * 7 * MS;
            for (jitter, pause) in gaps {
                all.push((t, agent));
                // One gap in eight is a pause of up to 20 rhythms.
                let gap = if pause == 0 { rhythm_ms * (1 + jitter / 5) } else { rhythm_ms + jitter };
                t += gap * MS + jitter * 1000;
            }
        }
        all.sort_unstable();
        all.dedup_by_key(|b| (b.0, b.1));
        all
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn stalls_are_exactly_those_the_model_predicts(
        default_ms in 20u64..2000,
        rule_ms in [20u64..2000, 20u64..2000, 20u64..2000],
        adaptive in any::<bool>(),
        beats in beats_strategy(),
    ) {
        let cfg = config(default_ms, rule_ms, adaptive);
        let thresholds = cfg.thresholds();
        let horizon = beats.last().map_or(T0, |b| b.0) + 30_000 * MS;
        let mut p = common::processor(None, cfg);
        let got = run(&mut p, &beats, T0, horizon);
        prop_assert_eq!(got, predict(&thresholds, &mut BTreeMap::new(), &beats, horizon, 0));
    }

    /// A reload of the thresholds mid-run: every tracked agent is judged by
    /// the new settings from its last beat on; one already past its new
    /// deadline stalls at once.
    #[test]
    fn a_threshold_reload_applies_to_every_tracked_agent(
        before_ms in [20u64..2000, 20u64..2000, 20u64..2000],
        after_ms in [20u64..2000, 20u64..2000, 20u64..2000],
        adaptive in any::<bool>(),
        beats in beats_strategy(),
    ) {
        let (before, after) = (config(1000, before_ms, adaptive), config(700, after_ms, adaptive));
        let cut = beats.len().div_ceil(2);
        let at = beats[cut - 1].0;
        let horizon = beats.last().map_or(T0, |b| b.0) + 30_000 * MS;
        let mut p = common::processor(None, before.clone());
        let mut got = run(&mut p, &beats[..cut], T0, at);
        p.set_thresholds(&after).map_err(|e| TestCaseError::fail(e.to_string()))?;
        got.extend(run(&mut p, &beats[cut..], at, horizon));
        got.sort_unstable();

        let mut agents = BTreeMap::new();
        let mut want = predict(&before.thresholds(), &mut agents, &beats[..cut], at, 0);
        let t_after = after.thresholds();
        for (&agent, m) in agents.iter_mut() {
            m.class = t_after.effective(rule_of(agent), &m.learned);
        }
        want.extend(predict(&t_after, &mut agents, &beats[cut..], horizon, at));
        want.sort_unstable();
        prop_assert_eq!(got, want);
    }
}
