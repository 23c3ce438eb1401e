//! Beats over real sockets: UDS with kernel attestation, UDP, secure UDP.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use varta_client::{BeatOutcome, Client, DropReason, SecureKey};
use varta_proto::{Frame, FrameCipher, MasterKey, Status};

#[test]
fn uds_frames_carry_our_attested_pid_and_nonces_1_2_3() {
    let c = UdsCollector::bind();
    let client = Client::connect_uds(&c.path).unwrap();
    let me = std::process::id();
    let mut last_ts = 0;
    for (n, status) in [(1u64, Status::Ok), (2, Status::Degraded), (3, Status::Critical)] {
        assert_eq!(client.beat(status, 40 + n as u32), BeatOutcome::Sent);
        let (wire, sender) = c.recv();
        let f = Frame::decode(&wire).unwrap();
        assert_eq!((f.pid, sender, me), (me, me, me), "frame pid, SCM_CREDENTIALS pid, our pid");
        assert_eq!((f.nonce, f.status, f.payload), (n, status, 40 + n as u32));
        assert!(f.timestamp >= last_ts, "monotonic timestamps");
        last_ts = f.timestamp;
    }
    assert_eq!(client.next_nonce(), 4);
}

#[test]
fn no_collector_drops_without_advancing_the_nonce_then_connects_lazily() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("later.sock");
    let client = Client::connect_uds(&path).unwrap();
    for _ in 0..3 {
        assert_eq!(client.beat(Status::Ok, 0), BeatOutcome::Dropped(DropReason::NoCollector));
    }
    assert_eq!(client.next_nonce(), 1);

    let socket = bind_passcred(&path);
    assert_eq!(client.beat(Status::Ok, 0), BeatOutcome::Sent);
    assert_eq!(Frame::decode(&recv_with_pid(&socket).unwrap().0).unwrap().nonce, 1);

    // The collector restarts: the path is re-bound by a new socket. The
    // client reconnects within the same beat, so no beat is lost.
    drop(socket);
    std::fs::remove_file(&path).unwrap();
    let socket = bind_passcred(&path);
    assert_eq!(client.beat(Status::Ok, 0), BeatOutcome::Sent);
    assert_eq!(Frame::decode(&recv_with_pid(&socket).unwrap().0).unwrap().nonce, 2);

    // Collector gone for good.
    drop(socket);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(client.beat(Status::Ok, 0), BeatOutcome::Dropped(DropReason::NoCollector));
    assert_eq!(client.next_nonce(), 3);
}

#[test]
fn full_kernel_queue_drops_and_sent_nonces_stay_contiguous() {
    let c = UdsCollector::bind(); // never read until the end
    let client = Client::connect_uds(&c.path).unwrap();
    let (mut sent, mut full) = (0u64, 0u64);
    for _ in 0..5000 {
        match client.beat(Status::Ok, 0) {
            BeatOutcome::Sent => sent += 1,
            BeatOutcome::Dropped(DropReason::QueueFull) => full += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(full > 0, "a receiver that never reads must fill the queue ({sent} sent)");
    assert_eq!(client.next_nonce(), sent + 1);
    let nonces: Vec<u64> =
        std::iter::from_fn(|| c.try_recv()).map(|(w, _)| Frame::decode(&w).unwrap().nonce).collect();
    assert_eq!(nonces, (1..=sent).collect::<Vec<_>>());
}

#[test]
fn udp_plain_frames_decode() {
    let rx = udp_collector();
    let client = Client::connect_udp(rx.local_addr().unwrap()).unwrap();
    for n in 1..=3u64 {
        assert_eq!(client.beat(Status::Degraded, 9), BeatOutcome::Sent);
        let f = Frame::decode(&udp_recv(&rx)).unwrap();
        assert_eq!((f.pid, f.nonce, f.status, f.payload), (std::process::id(), n, Status::Degraded, 9));
    }
}

#[test]
fn secure_shared_round_trip_with_fresh_never_repeating_ivs() {
    let rx = udp_collector();
    let client =
        Client::connect_secure_udp(rx.local_addr().unwrap(), SecureKey::Shared(counting_key())).unwrap();
    let cipher = FrameCipher::new(&counting_key());
    let mut seen = HashSet::new();
    let mut random = None;
    for n in 1..=20u64 {
        assert_eq!(client.beat(Status::Ok, n as u32), BeatOutcome::Sent);
        let wire = udp_recv(&rx);
        assert_eq!(wire.len(), 60);
        let (iv, f) = cipher.open_shared(&wire).unwrap();
        assert_eq!((f.nonce, f.payload, f.pid), (n, n as u32, std::process::id()));
        assert_eq!(iv.counter as u64, n - 1, "counter starts at 0 and advances by one per frame");
        assert_eq!(*random.get_or_insert(iv.random), iv.random);
        assert!(seen.insert(iv), "IV reused: {iv:?}");
    }
    // A second session draws a different iv_random from OS entropy.
    let again =
        Client::connect_secure_udp(rx.local_addr().unwrap(), SecureKey::Shared(counting_key())).unwrap();
    assert!(again.beat(Status::Ok, 0).is_sent());
    let (iv, _) = cipher.open_shared(&udp_recv(&rx)).unwrap();
    assert_eq!(iv.counter, 0);
    assert_ne!(Some(iv.random), random);
}

#[test]
fn secure_master_round_trip_binds_our_pid() {
    let rx = udp_collector();
    let master = MasterKey::new(counting_key());
    let client = Client::connect_secure_udp(
        rx.local_addr().unwrap(),
        SecureKey::Master(MasterKey::new(counting_key())),
    )
    .unwrap();
    let me = std::process::id();
    let agent = FrameCipher::new(&master.agent_key(me));
    for n in 1..=3u64 {
        assert!(client.beat(Status::Critical, 5).is_sent());
        let wire = udp_recv(&rx);
        assert_eq!(wire.len(), 64);
        assert_eq!(varta_proto::master_frame_pid(&wire), Ok(me));
        let (iv, f) = agent.open_master(&wire).unwrap();
        assert_eq!((f.pid, f.nonce, f.status, iv.counter as u64), (me, n, Status::Critical, n - 1));
    }
    // Another pid's key must not open it.
    let other = FrameCipher::new(&master.agent_key(me + 1));
    assert!(client.beat(Status::Ok, 0).is_sent());
    assert!(other.open_master(&udp_recv(&rx)).is_err());
}

#[test]
fn panic_frame_is_critical_terminal_and_leaves_the_nonce_alone() {
    let c = UdsCollector::bind();
    let client = Client::connect_uds(&c.path).unwrap();
    assert!(client.beat(Status::Ok, 0).is_sent());
    assert!(client.send_panic_frame().is_sent());
    c.recv();
    let f = Frame::decode(&c.recv().0).unwrap();
    assert!(f.is_panic());
    assert_eq!(client.next_nonce(), 2);
}

#[test]
fn spawn_beating_beats_until_dropped() {
    let c = UdsCollector::bind();
    let client = Arc::new(Client::connect_uds(&c.path).unwrap());
    let handle = client.spawn_beating(Duration::from_millis(5)).unwrap();
    for n in 1..=3u64 {
        let f = Frame::decode(&c.recv().0).unwrap();
        assert_eq!((f.nonce, f.status), (n, Status::Ok));
    }
    handle.set_status(Status::Degraded);
    handle.set_payload(77);
    let degraded = (0..1000)
        .map(|_| Frame::decode(&c.recv().0).unwrap())
        .find(|f| f.status == Status::Degraded)
        .unwrap();
    assert_eq!(degraded.payload, 77);
    // The beating thread counts a beat after the kernel took it, so the
    // count may trail what the collector already received by one.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while handle.sent() < 4 {
        assert!(std::time::Instant::now() < deadline, "sent() stuck at {}", handle.sent());
        std::thread::yield_now();
    }
    drop(handle);
    assert_eq!(Arc::strong_count(&client), 1, "the beating thread is gone");
    let after = client.next_nonce();
    std::thread::sleep(Duration::from_millis(30)); // would see ~6 beats if still running
    assert_eq!(client.next_nonce(), after);
}
