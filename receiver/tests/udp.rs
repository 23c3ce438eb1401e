//! Plain UDP transport over loopback.

mod common;

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::sync::atomic::Ordering::Relaxed;

use common::{Running, yaml};
use varta_proto::frame::DecodeErrorKind;
use varta_proto::{Frame, Refusal, Source, Status, Transport};
use varta_receiver::VlpReceiver;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[test]
fn refuses_without_explicit_opt_in() {
    for extra in ["", "accept_unauthenticated: false\n"] {
        let cfg = yaml(&format!("transport: udp\nendpoint: 127.0.0.1:0\n{extra}"));
        let e = cfg.validate().expect_err("needs opt-in").to_string();
        assert!(e.contains("accept_unauthenticated"), "{e}");
        let e = VlpReceiver::bind("vlp/udp", &cfg).expect_err("bind refuses too").to_string();
        assert!(e.contains("accept_unauthenticated") && e.contains("vlp/udp"), "{e}");
    }
}

fn bind() -> VlpReceiver {
    let cfg = yaml("transport: udp\nendpoint: 127.0.0.1:0\naccept_unauthenticated: true\n");
    VlpReceiver::bind("vlp/udp", &cfg).expect("bind udp")
}

#[test]
fn beat_carries_source_ip_and_frame_pid() {
    let r = bind();
    let addr = r.local_addr().expect("udp address");
    assert!(r.describe().starts_with("udp 127.0.0.1:"), "{}", r.describe());
    let mut run = Running::start(r);
    let tx = UdpSocket::bind("127.0.0.1:0").expect("client");
    tx.send_to(&Frame::new(Status::Degraded, 4242, 5, 1, 0).encode(), addr).expect("send");
    let b = run.next_beat();
    assert_eq!((b.source, b.transport, b.host_pid), (Source::Ip(LOOPBACK), Transport::Udp, 4242));
    assert_eq!(b.frame.status, Status::Degraded);
    tx.send_to(&[0u8; 33], addr).expect("send");
    let r = run.expect_refusal(Refusal::Decode(DecodeErrorKind::BadLength));
    assert_eq!(r.source, Source::Ip(LOOPBACK));
    tx.send_to(&[0u8; 1000], addr).expect("send");
    run.expect_refusal(Refusal::Truncated);
}

#[test]
fn queued_datagrams_arrive_in_few_batches() {
    let r = bind();
    let addr = r.local_addr().expect("udp address");
    let tx = UdpSocket::bind("127.0.0.1:0").expect("client");
    const N: u64 = 200;
    for n in 1..=N {
        tx.send_to(&Frame::new(Status::Ok, 77, n, n, 0).encode(), addr).expect("send");
    }
    let mut run = Running::start(r);
    for n in 1..=N {
        assert_eq!(run.next_beat().frame.nonce, n);
    }
    assert!(run.batches_seen <= 4, "{} batches for {N} datagrams", run.batches_seen);
    assert_eq!(run.stats.datagrams.load(Relaxed), N);
}

/// A pause hands the receiver back with its socket still bound: an idle
/// receiver is woken for it (the wake datagram is not counted), datagrams
/// sent meanwhile wait in the kernel and are received once it runs again
/// (how a reload rewires a receiver).
#[test]
fn a_paused_receiver_keeps_its_socket_and_what_arrived_meanwhile() {
    let mut r = bind();
    let addr = r.local_addr().expect("udp address");
    let (stop, stats) = (r.stop_handle(), r.stats());
    let (tx, rx) = varta_pipeline::queue::batch_queue(16);
    let first_tx = tx.clone();
    let worker = std::thread::spawn(move || {
        let result = r.run_fanout(tx, Vec::new());
        (r, result)
    });
    // Let it block in the kernel, idle; the pause must wake it.
    std::thread::sleep(std::time::Duration::from_millis(50));
    stop.pause();
    let deadline = std::time::Instant::now() + common::WAIT;
    while !worker.is_finished() {
        assert!(std::time::Instant::now() < deadline, "the idle receiver was not woken for the pause");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let (mut r, result) = worker.join().expect("receiver thread");
    assert!(result.is_ok(), "{result:?}");
    let client = UdpSocket::bind("127.0.0.1:0").expect("client");
    client.send_to(&Frame::new(Status::Ok, 77, 1, 1, 0).encode(), addr).expect("send while paused");
    stop.unpause();
    let worker = std::thread::spawn(move || r.run_fanout(first_tx, Vec::new()));
    let batch = rx.recv_timeout(common::WAIT).expect("the datagram sent while paused");
    assert!(matches!(batch.as_slice(), [varta_proto::Arrival::Beat(b)] if b.host_pid == 77), "{batch:?}");
    stop.stop();
    assert!(worker.join().expect("receiver thread").is_ok());
    assert_eq!(stats.datagrams.load(Relaxed), 1, "the wake datagram was counted");
    assert_eq!(stats.refused_total(), 0);
}
