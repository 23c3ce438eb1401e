//! Liveness semantics in virtual time: stalls, resumes, nonces, panics,
//! recycled pids, origin pinning, capacity, rate limits, clock guard.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use varta_processor::{
    BlindCause, ClockAnomalyKind, EventKind, EvictionReason, Processor, RateLimitConfig, RateLimitReason,
    TrackerConfig,
};
use varta_proto::{
    Arrival, Batch, DecodeErrorKind, Frame, NONCE_TERMINAL, Refusal, RefusedFrame, Source, Status, Transport,
};

#[test]
fn stall_fires_exactly_at_threshold_once_per_silence() {
    let mut p = processor(no_limits(), tracker(2000));
    let mut out = Recorder::default();
    p.handle_batch(&batch(&[uds(7, 1)]), T0, &mut out);
    assert!(out.take().is_empty());

    assert_eq!(p.fire_due(T0 + 2 * S - 1, &mut out), Some(T0 + 2 * S));
    assert!(out.events.is_empty(), "stalled early: {:?}", out.events);

    assert_eq!(p.fire_due(T0 + 2 * S, &mut out), None);
    let events = out.take();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].at_ns, T0 + 2 * S);
    assert_eq!(pid_of(&events[0]), Some(7));
    assert_eq!(
        events[0].kind,
        EventKind::Stall {
            incident: 1,
            last_beat_ns: T0,
            last_nonce: 1,
            silence_ns: 2 * S,
            last_status: Status::Ok,
            last_payload: 0,
            threshold_ns: 2 * S,
            learned_interval_ns: 0,
            blind: false,
        }
    );

    // Still silent: no second stall.
    assert_eq!(p.fire_due(T0 + 3 * S, &mut out), None);
    assert_eq!(p.fire_due(T0 + 4 * S, &mut out), None);
    assert!(out.events.is_empty());
    assert_eq!(p.stats().snapshot().stalls, 1);
    assert_eq!(p.agent_states()[0].status, Status::Stall);
}

/// A slot keeps the low half of its incident number; the resume still
/// names the whole one, across the 2³² boundary and with other incidents
/// opened while the agent was stalled.
#[test]
fn resume_names_its_incident_past_two_to_the_32() {
    let mut p = processor(no_limits(), tracker(2000));
    p.continue_incidents_from(u64::from(u32::MAX));
    let mut out = Recorder::default();
    p.handle_batch(&batch(&[uds(7, 1), uds(8, 1)]), T0, &mut out);
    p.handle_batch(&batch(&[uds(8, 2)]), T0 + S, &mut out);
    p.fire_due(T0 + 2 * S, &mut out); // 7 stalls: incident 2³² − 1
    p.fire_due(T0 + 3 * S, &mut out); // 8 stalls: incident 2³²
    p.handle_batch(&batch(&[uds(7, 2), uds(8, 3)]), T0 + 4 * S, &mut out);
    let resumes: Vec<(Option<u32>, u64)> = out
        .take()
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Resume { incident, .. } => Some((pid_of(e), incident)),
            _ => None,
        })
        .collect();
    assert_eq!(resumes, [(Some(7), u64::from(u32::MAX)), (Some(8), 1 << 32)]);
}

#[test]
fn resume_carries_silence_and_incident() {
    let mut p = processor(no_limits(), tracker(2000));
    let mut out = Recorder::default();
    p.handle_batch(&batch(&[uds(7, 1)]), T0, &mut out);
    p.fire_due(T0 + 2 * S, &mut out);
    p.handle_batch(&batch(&[uds(7, 2)]), T0 + 4 * S + 500, &mut out);
    let events = out.take();
    assert_eq!(
        kinds(&events)[0],
        EventKind::Stall {
            incident: 1,
            last_beat_ns: T0,
            last_nonce: 1,
            silence_ns: 2 * S,
            last_status: Status::Ok,
            last_payload: 0,
            threshold_ns: 2 * S,
            learned_interval_ns: 0,
            blind: false,
        }
    );
    assert_eq!(
        kinds(&events)[1],
        EventKind::Resume { incident: 1, silence_ns: 4 * S + 500, frame: uds(7, 2).frame }
    );
    assert_eq!(events.len(), 2);

    // A second silence period is a new incident, resumed under its own id.
    let t1 = T0 + 4 * S + 500;
    assert_eq!(p.fire_due(t1 + 2 * S, &mut out), None);
    p.handle_batch(&batch(&[uds(7, 3)]), t1 + 3 * S, &mut out);
    let k = kinds(&out.take());
    assert!(matches!(k[0], EventKind::Stall { incident: 2, .. }), "{k:?}");
    assert!(
        matches!(k[1], EventKind::Resume { incident: 2, silence_ns, .. } if silence_ns == 3 * S),
        "{k:?}"
    );
    let snap = p.stats().snapshot();
    assert_eq!((snap.stalls, snap.resumes, snap.beats_accepted), (2, 2, 3));
    assert_eq!(p.agent_states()[0].stalls, 2);
}

#[test]
fn beat_after_long_silence_without_fire_due_yields_stall_then_resume() {
    let mut p = processor(no_limits(), tracker(100));
    let mut out = Recorder::default();
    p.handle_batch(&batch(&[uds(1, 1)]), T0, &mut out);
    p.handle_batch(&batch(&[uds(1, 2)]), T0 + 300 * MS, &mut out);
    let k = kinds(&out.take());
    assert!(matches!(k[0], EventKind::Stall { incident: 1, silence_ns, .. } if silence_ns == 300 * MS));
    assert!(matches!(k[1], EventKind::Resume { incident: 1, .. }));
}

#[test]
fn many_agents_stall_in_order_of_last_beat() {
    let threshold = 1000 * MS;
    let mut p = processor(no_limits(), tracker(1000));
    let mut out = Recorder::default();
    for pid in 1..=40u32 {
        p.handle_batch(&batch(&[uds(pid, 1)]), T0 + u64::from(pid) * MS, &mut out);
    }
    // Even pids beat again later, so they go to the back in that order.
    for pid in (2..=40u32).step_by(2) {
        p.handle_batch(&batch(&[uds(pid, 2)]), T0 + 100 * MS + u64::from(pid) * MS, &mut out);
    }
    let mut expected: Vec<(u32, u64)> = (1..=40u32)
        .map(|pid| {
            let last = if pid % 2 == 0 { T0 + 100 * MS } else { T0 } + u64::from(pid) * MS;
            (pid, last)
        })
        .collect();
    expected.sort_by_key(|&(_, last)| last);
    out.take();

    // Walk the deadlines the processor announces: each is exactly the next agent's.
    let mut now = T0 + 140 * MS; // the last beat
    let mut fired = vec![];
    while let Some(next) = p.fire_due(now, &mut out) {
        assert_eq!(next, expected[fired.len()].1 + threshold, "wrong next deadline");
        // One nanosecond early: nothing.
        assert_eq!(p.fire_due(next - 1, &mut out), Some(next));
        assert!(out.events.is_empty());
        now = next;
        p.fire_due(now, &mut out);
        for e in out.take() {
            let EventKind::Stall { last_beat_ns, silence_ns, .. } = e.kind else { panic!("{e:?}") };
            assert_eq!(silence_ns, threshold);
            fired.push((pid_of(&e).unwrap_or(0), last_beat_ns));
        }
    }
    assert_eq!(fired, expected);
}

#[test]
fn nonces_must_advance_and_may_wrap() {
    let mut p = processor(no_limits(), tracker(2000));
    let mut out = Recorder::default();
    let src = ip(1);
    let b = |nonce, ts| net(src, Transport::SecureMaster, 9, nonce, ts);
    let mut t = T0;
    let mut step = |p: &mut Processor, beat, out: &mut Recorder| {
        t += MS;
        p.handle_batch(&batch(&[beat]), t, out);
        kinds(&out.take())
    };
    assert!(step(&mut p, b(5, 100), &mut out).is_empty());
    assert!(step(&mut p, b(6, 200), &mut out).is_empty());
    // Same and lower nonces with timestamps moving forward: stale (replays).
    assert_eq!(step(&mut p, b(6, 300), &mut out), [EventKind::StaleNonce { frame: b(6, 300).frame }]);
    assert_eq!(step(&mut p, b(2, 300), &mut out), [EventKind::StaleNonce { frame: b(2, 300).frame }]);
    // Near the end of the range, then a wrap to a small value: accepted.
    assert!(step(&mut p, b(u64::MAX - 3, 400), &mut out).is_empty());
    assert!(step(&mut p, b(u64::MAX - 1, 500), &mut out).is_empty());
    assert!(step(&mut p, b(0, 600), &mut out).is_empty());
    assert!(step(&mut p, b(1, 700), &mut out).is_empty());
    // A big jump forward is fine; a regression to near zero far from the end is not a wrap.
    assert!(step(&mut p, b(1 << 40, 800), &mut out).is_empty());
    assert!(matches!(step(&mut p, b(3, 900), &mut out)[..], [EventKind::StaleNonce { .. }]));
    let snap = p.stats().snapshot();
    assert_eq!((snap.beats_accepted, snap.stale_nonces, snap.incarnations_restarted), (7, 3, 0));
    assert_eq!(p.agent_states()[0].last_nonce, 1 << 40);
}

/// One forged frame (nonce far ahead, timestamp 0) for a live network
/// agent once locked it out for good: every later genuine beat was stale, a
/// stall was reported and never resolved. A forger can add beats, never
/// silence the real sender.
#[test]
fn a_forged_frame_never_locks_a_live_network_agent_out() {
    for transport in [Transport::Udp, Transport::SecureShared, Transport::SecureMaster] {
        let mut p = processor(no_limits(), tracker(2000));
        let mut out = Recorder::default();
        let b = |nonce, ts| net(ip(3), transport, 42, nonce, ts);
        let mut t = T0;
        for n in 1..=3 {
            t += 500 * MS;
            p.handle_batch(&batch(&[b(n, n * 1000)]), t, &mut out);
        }
        // The forgery: accepted (it advances), but moves nothing backwards.
        p.handle_batch(&batch(&[b(1 << 40, 0)]), t + MS, &mut out);
        // The real sender goes on beating every 500 ms for 10 s.
        for n in 4..24 {
            t += 500 * MS;
            p.fire_due(t, &mut out);
            p.handle_batch(&batch(&[b(n, n * 1000)]), t, &mut out);
        }
        let events = out.take();
        assert!(
            !events.iter().any(|e| matches!(e.kind, EventKind::Stall { .. })),
            "{transport:?}: a live agent was reported stalled: {events:?}"
        );
        assert_eq!(p.stats().snapshot().stalls, 0, "{transport:?}");
        // Frozen for real: reported as ever.
        p.fire_due(t + 2 * S, &mut out);
        assert!(out.take().iter().any(|e| matches!(e.kind, EventKind::Stall { .. })), "{transport:?}");
        // Nothing moved backwards.
        assert_eq!(p.agent_states()[0].last_nonce, 1 << 40);
    }
}

fn panic_frame(pid: u32, timestamp: u64) -> Frame {
    Frame::new(Status::Critical, pid, timestamp, NONCE_TERMINAL, 0xdead)
}

#[test]
fn panic_frames_are_ordered_by_timestamp() {
    let mut p = processor(no_limits(), tracker(2000));
    let mut out = Recorder::default();
    let mut beat = uds(3, 5); // timestamp 5000
    p.handle_batch(&batch(&[beat]), T0, &mut out);

    beat.frame = panic_frame(3, 4999);
    p.handle_batch(&batch(&[beat]), T0 + 20 * MS, &mut out);
    assert_eq!(kinds(&out.take()), [EventKind::StaleNonce { frame: panic_frame(3, 4999) }]);

    beat.frame = panic_frame(3, 5000);
    p.handle_batch(&batch(&[beat]), T0 + 40 * MS, &mut out);
    let f = panic_frame(3, 5000);
    assert_eq!(
        kinds(&out.take()),
        [
            EventKind::StatusChange { from: Status::Ok, to: Status::Critical, frame: f },
            EventKind::Panic { frame: f }
        ]
    );
    assert_eq!(p.stats().snapshot().panics, 1);
    // Still tracked; it will stall like any silent agent.
    assert_eq!(p.agents(), 1);
    assert_eq!(p.agent_states()[0].status, Status::Critical);
    assert_eq!(p.fire_due(T0 + 40 * MS + 2 * S, &mut out), None);
    assert!(matches!(kinds(&out.take())[..], [EventKind::Stall { .. }]));
    // The regular sequence continues from the last regular nonce.
    p.handle_batch(&batch(&[uds(3, 6)]), T0 + 3 * S, &mut out);
    assert_eq!(p.agent_states()[0].last_nonce, 6);
}

#[test]
fn recycled_pid_is_a_new_agent_and_probe_runs_only_when_needed() {
    let start_time = Arc::new(AtomicU64::new(111));
    let calls = Arc::new(AtomicUsize::new(0));
    let (st, c) = (Arc::clone(&start_time), Arc::clone(&calls));
    let probe = Box::new(move |host_pid: u32| {
        assert_eq!(host_pid, 50);
        c.fetch_add(1, Ordering::Relaxed);
        Some(st.load(Ordering::Relaxed))
    });
    let mut p = match Processor::new(None, tracker(2000), probe) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    let mut out = Recorder::default();
    for n in 1..=100u64 {
        p.handle_batch(&batch(&[uds(50, n)]), T0 + n * MS, &mut out);
    }
    assert_eq!(calls.load(Ordering::Relaxed), 1, "probe must run on first sight only");
    assert_eq!(p.agent_states()[0].id.start_time, 111);

    // Same process replaying an old nonce: probe says same start time → stale.
    p.handle_batch(&batch(&[uds(50, 10)]), T0 + 200 * MS, &mut out);
    assert!(matches!(kinds(&out.take())[..], [EventKind::StaleNonce { .. }]));
    assert_eq!(calls.load(Ordering::Relaxed), 2);

    // New process on the same pid starts over at nonce 1.
    start_time.store(222, Ordering::Relaxed);
    p.handle_batch(&batch(&[uds(50, 1)]), T0 + 300 * MS, &mut out);
    let events = out.take();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, EventKind::Evicted { reason: EvictionReason::PidRecycled });
    assert_eq!(events[0].agent.map(|a| a.id.start_time), Some(111));
    let view = p.agent_states()[0];
    assert_eq!((view.id.start_time, view.beats, view.last_nonce), (222, 1, 1));
    assert_eq!(p.agents(), 1);
    assert_eq!(p.stats().snapshot().evicted_pid_recycled, 1);
    assert_eq!(calls.load(Ordering::Relaxed), 3);

    // The new agent's beats advance normally without probing.
    p.handle_batch(&batch(&[uds(50, 2)]), T0 + 400 * MS, &mut out);
    assert!(out.take().is_empty());
    assert_eq!(calls.load(Ordering::Relaxed), 3);
}

#[test]
fn recycled_pid_detected_on_resume_even_if_nonce_advances() {
    let start_time = Arc::new(AtomicU64::new(111));
    let st = Arc::clone(&start_time);
    let mut p = match Processor::new(None, tracker(100), Box::new(move |_| Some(st.load(Ordering::Relaxed))))
    {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    let mut out = Recorder::default();
    p.handle_batch(&batch(&[uds(8, 5)]), T0, &mut out);
    p.fire_due(T0 + 100 * MS, &mut out);
    start_time.store(333, Ordering::Relaxed);
    p.handle_batch(&batch(&[uds(8, 9)]), T0 + 500 * MS, &mut out);
    let k = kinds(&out.take());
    assert!(matches!(
        k[..],
        [EventKind::Stall { .. }, EventKind::Evicted { reason: EvictionReason::PidRecycled }]
    ));
    assert_eq!(p.agent_states()[0].id.start_time, 333);
}

#[test]
fn network_agent_restart_starts_a_new_incarnation() {
    let mut p = processor(no_limits(), tracker(2000));
    let mut out = Recorder::default();
    let b = |nonce, ts| net(ip(2), Transport::SecureShared, 77, nonce, ts);
    p.handle_batch(&batch(&[b(10, 5000)]), T0, &mut out);
    // Nonce and timestamp both back: restarted process with the same pid.
    p.handle_batch(&batch(&[b(1, 10)]), T0 + 20 * MS, &mut out);
    assert_eq!(kinds(&out.take()), [EventKind::Evicted { reason: EvictionReason::Restarted }]);
    assert_eq!(p.stats().snapshot().incarnations_restarted, 1);
    assert_eq!(p.stats().snapshot().evicted_pid_recycled + p.stats().snapshot().evicted_stale, 0);
    p.handle_batch(&batch(&[b(2, 20)]), T0 + 40 * MS, &mut out);
    assert!(out.take().is_empty());
    // Nonce back but timestamp forward: a replay, not a restart.
    p.handle_batch(&batch(&[b(1, 30)]), T0 + 60 * MS, &mut out);
    assert!(matches!(kinds(&out.take())[..], [EventKind::StaleNonce { .. }]));
    let view = p.agent_states()[0];
    assert_eq!((view.beats, view.last_nonce), (2, 2));
}

#[test]
fn origin_is_pinned_and_upgraded() {
    let mut p = processor(no_limits(), tracker(2000));
    let mut out = Recorder::default();
    // First seen over a master-key transport: weaker ones are refused.
    p.handle_batch(&batch(&[net(ip(3), Transport::SecureMaster, 5, 1, 1)]), T0, &mut out);
    p.handle_batch(&batch(&[net(ip(3), Transport::SecureShared, 5, 2, 2)]), T0 + 20 * MS, &mut out);
    p.handle_batch(&batch(&[net(ip(3), Transport::Udp, 5, 3, 3)]), T0 + 40 * MS, &mut out);
    assert_eq!(
        kinds(&out.take()),
        [
            EventKind::OriginConflict { from: Transport::SecureMaster, to: Transport::SecureShared },
            EventKind::OriginConflict { from: Transport::SecureMaster, to: Transport::Udp },
        ]
    );
    assert_eq!(p.stats().snapshot().origin_conflicts, 2);
    assert_eq!(p.agent_states()[0].beats, 1);

    // First seen over plain UDP: a stronger transport upgrades the pin, after which UDP is refused.
    p.handle_batch(&batch(&[net(ip(4), Transport::Udp, 6, 1, 1)]), T0 + 60 * MS, &mut out);
    p.handle_batch(&batch(&[net(ip(4), Transport::SecureShared, 6, 2, 2)]), T0 + 80 * MS, &mut out);
    assert!(out.take().is_empty());
    p.handle_batch(&batch(&[net(ip(4), Transport::Udp, 6, 3, 3)]), T0 + 100 * MS, &mut out);
    let events = out.take();
    assert_eq!(
        kinds(&events),
        [EventKind::OriginConflict { from: Transport::SecureShared, to: Transport::Udp }]
    );
    assert_eq!(events[0].agent.map(|a| a.transport), Some(Transport::SecureShared));
    let view = p.agent_states().into_iter().find(|v| v.id.pid == 6);
    assert_eq!(view.map(|v| (v.transport, v.beats)), Some((Transport::SecureShared, 2)));
}

#[test]
fn same_pid_on_two_hosts_is_two_agents() {
    let mut p = processor(no_limits(), tracker(2000));
    let mut out = Recorder::default();
    let beats = [net(ip(5), Transport::Udp, 1, 1, 1), net(ip(6), Transport::Udp, 1, 1, 1), uds(1, 1)];
    p.handle_batch(&batch(&beats), T0, &mut out);
    assert_eq!(p.agents(), 3);
    assert!(out.events.is_empty());
}

#[test]
fn full_tracker_evicts_only_long_stalled_agents() {
    let cfg = TrackerConfig {
        threshold: Duration::from_millis(10),
        capacity: 2,
        eviction_after: 10,
        ..TrackerConfig::default()
    };
    let mut p = processor(no_limits(), cfg);
    let mut out = Recorder::default();
    p.handle_batch(&batch(&[uds(1, 1), uds(2, 1)]), T0, &mut out);
    // Full of live agents: refused.
    p.handle_batch(&batch(&[uds(3, 1)]), T0 + MS, &mut out);
    assert_eq!(kinds(&out.take()), [EventKind::CapacityExceeded { pid: 3 }]);
    // Agent 1 stalls at +10 ms; agent 2 keeps beating.
    let mut n = 2;
    let mut beat_agent_2 = |p: &mut Processor, out: &mut Recorder, from: u64, to: u64| {
        for t in (from..=to).step_by(5) {
            p.handle_batch(&batch(&[uds(2, n)]), T0 + t * MS, out);
            n += 1;
        }
    };
    beat_agent_2(&mut p, &mut out, 5, 60);
    assert!(matches!(kinds(&out.take())[..], [EventKind::Stall { .. }]));
    // Silent 60 ms ≤ 10 × 10 ms: not yet evictable.
    p.handle_batch(&batch(&[uds(3, 1)]), T0 + 60 * MS, &mut out);
    assert_eq!(kinds(&out.take()), [EventKind::CapacityExceeded { pid: 3 }]);
    beat_agent_2(&mut p, &mut out, 65, 150);
    assert!(out.take().is_empty());
    // Silent 151 ms > 100 ms: evicted, and the new agent takes its place.
    p.handle_batch(&batch(&[uds(3, 1)]), T0 + 151 * MS, &mut out);
    let events = out.take();
    assert_eq!(kinds(&events), [EventKind::Evicted { reason: EvictionReason::Stale }]);
    assert_eq!(pid_of(&events[0]), Some(1));
    let mut pids: Vec<u32> = p.agent_states().iter().map(|v| v.id.pid).collect();
    pids.sort_unstable();
    assert_eq!(pids, [2, 3]);
    let snap = p.stats().snapshot();
    assert_eq!((snap.capacity_exceeded, snap.evicted_stale, snap.agents_tracked), (2, 1, 2));
}

fn limits(interval_ms: u64, rate: u64, burst: u64) -> Option<RateLimitConfig> {
    Some(RateLimitConfig {
        per_agent_min_interval: Duration::from_millis(interval_ms),
        global_rate: rate,
        global_burst: burst,
    })
}

#[test]
fn per_agent_rate_limit() {
    let mut p = processor(limits(10, 0, 0), tracker(2000));
    let mut out = Recorder::default();
    p.handle_batch(&batch(&[uds(1, 1)]), T0, &mut out);
    p.handle_batch(&batch(&[uds(1, 2), uds(2, 1)]), T0 + 9 * MS, &mut out);
    let events = out.take();
    assert_eq!(kinds(&events), [EventKind::RateLimited { reason: RateLimitReason::PerAgent }]);
    assert_eq!(pid_of(&events[0]), Some(1));
    p.handle_batch(&batch(&[uds(1, 3)]), T0 + 10 * MS, &mut out);
    assert!(out.take().is_empty());
    let snap = p.stats().snapshot();
    assert_eq!((snap.rate_limited_per_agent, snap.rate_limited_global, snap.beats_accepted), (1, 0, 3));
}

#[test]
fn global_rate_limit() {
    let mut p = processor(limits(0, 1000, 3), tracker(2000));
    let mut out = Recorder::default();
    let beats: Vec<_> = (1..=5).map(|pid| uds(pid, 1)).collect();
    p.handle_batch(&batch(&beats), T0, &mut out);
    assert_eq!(kinds(&out.take()), [EventKind::RateLimited { reason: RateLimitReason::Global }; 2]);
    assert_eq!(p.agents(), 3);
    // One token per millisecond.
    p.handle_batch(&batch(&[uds(4, 1), uds(5, 1)]), T0 + MS, &mut out);
    assert_eq!(kinds(&out.take()), [EventKind::RateLimited { reason: RateLimitReason::Global }]);
    let snap = p.stats().snapshot();
    assert_eq!((snap.rate_limited_global, snap.beats_accepted), (3, 4));
}

/// Beside attested receivers, plain UDP takes its tokens from its share
/// of the global bucket too: a flood of it spends at most that share, and
/// UDS agents still get the rest.
#[test]
fn plain_udp_spends_at_most_its_share_of_the_global_rate() {
    let shared = TrackerConfig { shared_with_attested: true, unauthenticated_share: 0.5, ..tracker(2000) };
    let mut p = processor(limits(0, 1000, 10), shared);
    let mut out = Recorder::default();
    let flood: Vec<_> = (1..=20).map(|pid| net(ip(9), Transport::Udp, pid, 1, 1)).collect();
    p.handle_batch(&batch(&flood), T0, &mut out);
    let refused = kinds(&out.take());
    assert_eq!(refused.len(), 15, "5 of the burst of 10 admitted: {refused:?}");
    assert!(
        refused
            .iter()
            .all(|k| *k == EventKind::RateLimited { reason: RateLimitReason::UnauthenticatedShare })
    );
    let attested: Vec<_> = (100..105).map(|pid| uds(pid, 1)).collect();
    p.handle_batch(&batch(&attested), T0, &mut out);
    assert!(out.take().is_empty(), "the other half is the attested agents'");
    assert_eq!(p.agents(), 10);
    let snap = p.stats().snapshot();
    assert_eq!((snap.rate_limited_unauthenticated_share, snap.rate_limited_global), (15, 0));

    // Alone in its pipeline, plain UDP may take the whole bucket.
    let mut p = processor(limits(0, 1000, 10), tracker(2000));
    p.handle_batch(&batch(&flood), T0, &mut out);
    assert_eq!(out.take().len(), 10);
    assert_eq!(p.agents(), 10);
}

#[test]
fn zero_disables_rate_limits() {
    let mut p = processor(limits(0, 0, 0), tracker(2000));
    let mut out = Recorder::default();
    for n in 1..=1000u64 {
        p.handle_batch(&batch(&[uds(1, n), uds(2, n)]), T0, &mut out);
    }
    assert!(out.events.is_empty());
    assert_eq!(p.stats().snapshot().beats_accepted, 2000);
}

#[test]
fn clock_going_backwards_is_clamped_and_counted() {
    let mut p = processor(no_limits(), tracker(1000));
    let mut out = Recorder::default();
    p.handle_batch(&batch(&[uds(1, 1)]), T0 + S, &mut out);
    assert_eq!(p.fire_due(T0, &mut out), Some(T0 + 2 * S));
    let events = out.take();
    assert_eq!(kinds(&events), [EventKind::ClockAnomaly { kind: ClockAnomalyKind::Backwards }]);
    assert_eq!(events[0].at_ns, T0 + S, "clamped to the previous reading");
    // A beat stamped with the backwards reading is handled at the clamped time.
    p.handle_batch(&batch(&[uds(1, 2)]), T0 + 500 * MS, &mut out);
    assert_eq!(p.agent_states()[0].last_beat_ns, T0 + S);
    assert_eq!(p.stats().snapshot().clock_backwards, 2);
    // The stall deadline is unaffected.
    out.take();
    assert_eq!(p.fire_due(T0 + 2 * S, &mut out), None);
    assert!(matches!(kinds(&out.take())[..], [EventKind::Stall { .. }]));
}

#[test]
fn oversleeping_a_deadline_by_more_than_5s_is_a_forward_jump() {
    let mut p = processor(no_limits(), tracker(1000));
    let mut out = Recorder::default();
    // Idle (nothing due) for a long time: no anomaly.
    p.fire_due(T0, &mut out);
    p.handle_batch(&batch(&[uds(1, 1)]), T0 + 60 * S, &mut out);
    assert!(out.take().is_empty());
    // Deadline at +61 s, next reading at +67 s.
    p.fire_due(T0 + 67 * S, &mut out);
    let k = kinds(&out.take());
    assert_eq!(k[0], EventKind::ClockAnomaly { kind: ClockAnomalyKind::ForwardJump });
    assert!(matches!(k[1], EventKind::Stall { .. }));
    assert_eq!(p.stats().snapshot().clock_jumps, 1);
}

#[test]
fn status_changes_and_beat_events() {
    let mut p = processor(no_limits(), tracker(2000));
    let mut out = Recorder { beats: true, ..Recorder::default() };
    let mut b = uds(4, 1);
    p.handle_batch(&batch(&[b]), T0, &mut out);
    b.frame = Frame::new(Status::Degraded, 4, 2, 2, 9);
    p.handle_batch(&batch(&[b]), T0 + 20 * MS, &mut out);
    let f = b.frame;
    assert_eq!(
        kinds(&out.take()),
        [
            EventKind::Beat { frame: uds(4, 1).frame },
            EventKind::Beat { frame: f },
            EventKind::StatusChange { from: Status::Ok, to: Status::Degraded, frame: f },
        ]
    );
    assert_eq!(p.agent_states()[0].last_payload, 9);
    // A sink that does not want beats gets none.
    let mut quiet = Recorder::default();
    p.handle_batch(&batch(&[uds(4, 3)]), T0 + 40 * MS, &mut quiet);
    assert!(matches!(
        kinds(&quiet.events)[..],
        [EventKind::StatusChange { from: Status::Degraded, to: Status::Ok, .. }]
    ));
    assert_eq!(p.stats().snapshot().status_changes, 2);
}

#[test]
fn refusals_are_forwarded_not_counted_twice() {
    let mut p = processor(no_limits(), tracker(2000));
    let mut out = Recorder::default();
    let refused = RefusedFrame {
        refusal: Refusal::Decode(DecodeErrorKind::BadCrc),
        transport: Transport::Udp,
        source: Source::Local,
        claimed_pid: 3,
        received_ns: 1,
    };
    let mut b = Batch::new();
    assert!(b.push(Arrival::Refused(refused)).is_ok());
    assert!(b.push(Arrival::Beat(uds(1, 1))).is_ok());
    p.handle_batch(&b, T0, &mut out);
    assert_eq!(kinds(&out.take()), [EventKind::Refused(refused)]);
    let stats = p.stats();
    // The receiver that refused it owns the count; the processor has no refusal counter.
    let mut names = Vec::new();
    stats.snapshot().samples(&mut |s| names.push(s.metric.name));
    assert!(!names.contains(&"refused"), "{names:?}");
    assert_eq!(stats.snapshot().batches, 1);
    assert_eq!(stats.agents_tracked(), 1);
}

#[test]
fn invalid_configs_are_refused_by_new() {
    let cfg = TrackerConfig { threshold: Duration::from_millis(1), ..TrackerConfig::default() };
    let err = Processor::new(None, cfg, Box::new(|_| None)).map(|_| ()).map_err(|e| e.field());
    assert_eq!(err, Err("tracker.threshold"));
    let err = Processor::new(limits(10, 5, 0), tracker(2000), Box::new(|_| None))
        .map(|_| ())
        .map_err(|e| e.field());
    assert_eq!(err, Err("ratelimit.global_burst"));
}

/// The collector could not listen from 2 s to 5 s (stopped, throttled,
/// parked): agents whose deadlines fell inside get a full threshold from
/// the first read after it; one stalled before it stays reported; a stall
/// whose silence spans the window is marked.
#[test]
fn a_blind_window_gives_every_agent_a_full_threshold_after_it() {
    let mut p = processor(no_limits(), tracker(1000));
    let mut out = Recorder::default();
    p.handle_batch(&batch(&[uds(1, 1)]), T0, &mut out);
    p.fire_due(T0 + S, &mut out);
    assert!(
        matches!(kinds(&out.take())[..], [EventKind::Stall { blind: false, .. }]),
        "silent before the window"
    );
    p.handle_batch(&batch(&[uds(2, 1), uds(3, 1)]), T0 + 1500 * MS, &mut out);
    p.handle_batch(&batch(&[uds(4, 1)]), T0 + 1900 * MS, &mut out);
    p.blind_window(BlindCause::Stopped, T0 + 2 * S, T0 + 5 * S, &mut out);
    assert_eq!(
        kinds(&out.take()),
        [EventKind::BlindWindow { cause: BlindCause::Stopped, start_ns: T0 + 2 * S, duration_ns: 3 * S }]
    );
    // Deadlines of 2, 3 (2.5 s) and 4 (2.9 s) fell inside: nothing fires at the first read.
    assert_eq!(p.fire_due(T0 + 5 * S, &mut out), Some(T0 + 6 * S));
    assert!(out.take().is_empty());
    p.handle_batch(&batch(&[uds(2, 2), uds(3, 2)]), T0 + 5500 * MS, &mut out);
    assert_eq!(p.fire_due(T0 + 6 * S - 1, &mut out), Some(T0 + 6 * S));
    assert!(out.take().is_empty());
    // 4 really froze: reported a full threshold after the window, marked.
    p.fire_due(T0 + 6 * S, &mut out);
    let events = out.take();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(pid_of(&events[0]), Some(4));
    assert!(
        matches!(events[0].kind, EventKind::Stall { blind: true, silence_ns, .. } if silence_ns == 6 * S - 1900 * MS),
        "{events:?}"
    );
    let snap = p.stats().snapshot();
    assert_eq!((snap.blind_windows[0], snap.blind_ns, snap.stalls), (1, 3 * S, 2));
}

/// A checkpoint taken into a new processor: agents re-armed by time, a
/// stalled one still stalled under its incident (its resume closes it),
/// a live one whose deadline fell while nothing listened gets a full
/// threshold from the first read — the restart is a blind window.
#[test]
fn a_checkpoint_restores_agents_deadlines_and_open_incidents() {
    let mut old = processor(no_limits(), tracker(2000));
    let mut out = Recorder::default();
    old.handle_batch(&batch(&[uds(7, 1), uds(8, 1)]), T0, &mut out);
    old.handle_batch(&batch(&[uds(8, 2)]), T0 + S, &mut out);
    old.fire_due(T0 + 2 * S, &mut out); // 7 stalls: incident 1
    assert!(matches!(kinds(&out.take())[..], [EventKind::Stall { incident: 1, .. }]));
    let checkpoint = old.checkpoint_of({
        let mut agents = Vec::new();
        assert_eq!(old.export_agents(0, 1, &mut agents), Some(1), "a bounded range at a time");
        assert_eq!(old.export_agents(1, 1, &mut agents), None, "then the end");
        agents
    });
    assert_eq!(checkpoint.agents.len(), 2);
    let checkpoint = varta_processor::checkpoint::Checkpoint { taken_ns: T0 + 2 * S + 1, ..checkpoint };
    drop(old);

    // Restored 2.5 s later: 8's deadline (T0 + 3 s) fell in the window.
    let mut new = processor(no_limits(), tracker(2000));
    let now = T0 + 4 * S + S / 2;
    let restored = new.restore(&checkpoint, now, BlindCause::Restart, &mut out);
    assert_eq!((restored.agents, restored.stalled, restored.dropped), (2, 1, 0));
    let snap = new.stats().snapshot();
    assert_eq!((snap.agents_tracked, snap.agents_stalled), (2, 1), "the gauges follow");
    let k = kinds(&out.take());
    assert!(matches!(k[..], [EventKind::BlindWindow { cause: BlindCause::Restart, .. }]), "{k:?}");
    assert_eq!(new.fire_due(now + 2 * S - 1, &mut out), Some(now + 2 * S), "a full threshold from now");
    assert!(out.take().is_empty());
    new.fire_due(now + 2 * S, &mut out);
    let k = kinds(&out.take());
    assert!(matches!(k[..], [EventKind::Stall { incident: 2, blind: true, .. }]), "8 stalls, marked: {k:?}");
    // 7 was stalled before the restart: its resume closes incident 1.
    new.handle_batch(&batch(&[uds(7, 2)]), now + 3 * S, &mut out);
    let k = kinds(&out.take());
    assert!(matches!(k[..], [EventKind::Resume { incident: 1, .. }]), "{k:?}");

    // A smaller capacity keeps the most recently heard.
    let mut small = processor(no_limits(), TrackerConfig { capacity: 1, ..tracker(2000) });
    let restored = small.restore(&checkpoint, now, BlindCause::Restart, &mut out);
    assert_eq!((restored.agents, restored.dropped), (1, 1));
    assert_eq!(small.agent_states()[0].id.pid, 8, "8 beat last");
}
