//! The tracker against a naive model: random beats and time steps over a
//! few agents must produce the same stalls and resumes.

mod common;

use std::collections::HashMap;

use common::*;
use proptest::prelude::*;
use varta_processor::{Event, EventKind};
use varta_proto::Transport;

const THRESHOLD: u64 = 100 * MS;

#[derive(Debug, Clone)]
enum Op {
    Wait(u64),
    Beat { dt: u64, agent: u32, nonce: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        // Coarse steps (10 ms / 5 ms) so that times land exactly on deadlines often.
        (0..30u64).prop_map(|k| Op::Wait(k * 10 * MS)),
        (0..16u64, 1..5u32, 0..40u64).prop_map(|(k, agent, nonce)| Op::Beat { dt: k * 5 * MS, agent, nonce }),
    ]
}

#[derive(Debug, Default, Clone, Copy)]
struct ModelAgent {
    last_nonce: Option<u64>,
    last_beat: u64,
    stalled: bool,
}

/// What both sides must agree on: (kind, pid, last beat or silence).
type Observed = (u8, u32, u64);

fn observe(events: &[Event], incidents: &mut HashMap<u32, u64>) -> Vec<Observed> {
    let mut out = vec![];
    for e in events {
        let pid = pid_of(e).unwrap_or(0);
        match e.kind {
            EventKind::Stall { incident, last_beat_ns, silence_ns, .. } => {
                assert_eq!(e.at_ns - last_beat_ns, silence_ns);
                incidents.insert(pid, incident);
                out.push((0, pid, last_beat_ns));
            }
            EventKind::Resume { incident, silence_ns, .. } => {
                assert_eq!(incidents.remove(&pid), Some(incident), "resume must close the stall's incident");
                out.push((1, pid, silence_ns));
            }
            EventKind::StaleNonce { .. } => out.push((2, pid, 0)),
            _ => {}
        }
    }
    out.sort_unstable();
    out
}

fn model_fire(model: &mut HashMap<u32, ModelAgent>, now: u64, out: &mut Vec<Observed>) {
    for (&pid, a) in model.iter_mut() {
        if !a.stalled && now - a.last_beat >= THRESHOLD {
            a.stalled = true;
            out.push((0, pid, a.last_beat));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn tracker_matches_naive_model(ops in proptest::collection::vec(op(), 1..120)) {
        let mut p = processor(None, tracker(100));
        let mut model: HashMap<u32, ModelAgent> = HashMap::new();
        let mut incidents = HashMap::new();
        let mut out = Recorder::default();
        let mut now = T0;
        for op in ops {
            let mut expected = vec![];
            match op {
                Op::Wait(dt) => {
                    now += dt;
                    let next = p.fire_due(now, &mut out);
                    model_fire(&mut model, now, &mut expected);
                    let model_next = model
                        .values()
                        .filter(|a| !a.stalled)
                        .map(|a| a.last_beat + THRESHOLD)
                        .min();
                    prop_assert_eq!(next, model_next);
                }
                Op::Beat { dt, agent, nonce } => {
                    now += dt;
                    let beat = net(ip(1), Transport::Udp, agent, nonce, now);
                    p.handle_batch(&batch(&[beat]), now, &mut out);
                    model_fire(&mut model, now, &mut expected);
                    let a = model.entry(agent).or_insert(ModelAgent { last_beat: now, ..ModelAgent::default() });
                    if a.last_nonce.is_none_or(|last| nonce > last) {
                        if a.stalled {
                            expected.push((1, agent, now - a.last_beat));
                        }
                        *a = ModelAgent { last_nonce: Some(nonce), last_beat: now, stalled: false };
                    } else {
                        // Stale on a network transport: refused, yet proof
                        // of liveness (a forged frame may have jumped the
                        // sequence ahead of the real sender).
                        expected.push((2, agent, 0));
                        if a.stalled {
                            expected.push((1, agent, now - a.last_beat));
                        }
                        a.last_beat = now;
                        a.stalled = false;
                    }
                }
            }
            expected.sort_unstable();
            let got = observe(&out.take(), &mut incidents);
            prop_assert_eq!(got, expected);
        }
        let stalled = p.agent_states().iter().filter(|v| v.status == varta_proto::Status::Stall).count();
        prop_assert_eq!(stalled, model.values().filter(|a| a.stalled).count());
    }
}
