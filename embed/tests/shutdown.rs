//! Shutdown is ordered and bounded: while agents keep beating every
//! thread ends and the socket file goes; an output that never returns
//! is reported late at the deadline instead of holding the host.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use common::{Host, TempDir, uds, wait_for};
use varta_client::{BeatOutcome, Client};
use varta_embed::{EmbedError, Engine, EventKind, TrackerConfig, TransportKind, VlpReceiverConfig};
use varta_proto::Status;

#[test]
fn shutdown_joins_every_thread_while_agents_still_beat() {
    let dir = TempDir::new();
    let socket = dir.join("varta.sock");
    let host = Host::new();
    let engine = Engine::builder()
        .receiver("vlp/uds", uds(&socket))
        .ratelimit(None)
        .on_incident(|_| {})
        .opentelemetry(host.telemetry())
        .start()
        .expect("engine starts");
    let stats = engine.stats();
    let stop = Arc::new(AtomicBool::new(false));
    let agents: Vec<_> = (0..4)
        .map(|_| {
            let (stop, socket) = (stop.clone(), socket.clone());
            std::thread::spawn(move || {
                let client = Client::connect_uds(&socket).expect("connect");
                let mut sent = 0u64;
                // Bounded: a million beats at most, far more than the test needs.
                for _ in 0..1_000_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if matches!(client.beat(Status::Ok, 0), BeatOutcome::Sent) {
                        sent += 1;
                    }
                }
                sent
            })
        })
        .collect();
    wait_for("beats from the agents", || (stats.beats_accepted() > 100).then_some(()));
    let stopped = engine.shutdown(Duration::from_secs(10));
    assert!(stopped.clean, "{stopped:?}");
    assert!(stopped.late.is_empty() && stopped.failed.is_empty(), "{stopped:?}");
    assert!(!socket.exists(), "the socket file is removed");
    stop.store(true, Ordering::Relaxed);
    let sent: u64 = agents.into_iter().map(|a| a.join().expect("agent")).sum();
    assert!(sent >= stats.beats_accepted(), "every accepted beat was sent");
}

#[test]
fn an_output_that_never_returns_is_named_late_at_the_deadline() {
    let dir = TempDir::new();
    let socket = dir.join("varta.sock");
    let (entered_tx, entered) = mpsc::channel::<()>();
    let (release, released) = mpsc::channel::<()>();
    let engine = Engine::builder()
        .receiver("vlp/uds", uds(&socket))
        .resolver(None)
        .tracker(TrackerConfig { threshold: Duration::from_millis(50), ..Default::default() })
        .on_incident(move |i| {
            if let EventKind::Stall { .. } = i.event.kind {
                let _ = entered_tx.send(());
                // A host callback that hangs until the test lets it go.
                let _ = released.recv();
            }
        })
        .start()
        .expect("engine starts");
    let agent = Client::connect_uds(&socket).expect("connect");
    assert!(agent.beat(Status::Ok, 0).is_sent());
    entered.recv_timeout(common::PATIENCE).expect("the callback sees the stall");
    let stopped = engine.shutdown(Duration::from_secs(2));
    assert!(!stopped.clean);
    assert_eq!(stopped.late, ["exporters::incidents"], "{stopped:?}");
    assert!(!socket.exists(), "receivers and the processor stopped before the deadline");
    let _ = release.send(());
}

#[test]
fn a_start_error_names_the_receiver_and_leaves_nothing_behind() {
    let dir = TempDir::new();
    let socket = dir.join("varta.sock");
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let endpoint = taken.local_addr().expect("addr").to_string();
    let err = Engine::builder()
        .receiver("vlp/uds", uds(&socket))
        .receiver(
            "vlp/udp",
            VlpReceiverConfig {
                transport: TransportKind::Udp,
                endpoint: Some(endpoint),
                accept_unauthenticated: Some(true),
                ..Default::default()
            },
        )
        .start()
        .expect_err("the UDP port is taken");
    assert!(matches!(err, EmbedError::Receiver(_)), "{err:?}");
    assert!(err.to_string().contains("vlp/udp"), "{err}");
    assert!(!socket.exists(), "the UDS receiver bound first was closed and its file removed");
    assert!(matches!(Engine::builder().start(), Err(EmbedError::NoReceiver)));
}
