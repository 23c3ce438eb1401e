//! Wire compatibility: the published `varta-client 0.2.0` (an independent
//! VLP implementation from crates.io) beats into our collector over every
//! transport, unchanged.

use std::net::SocketAddr;

use reference_client::{BeatOutcome, Varta};
use reference_vlp::Status;
use reference_vlp::crypto::Key;
use varta_integration::{
    Collector, free_udp_port as free_port, pipeline_config, read_events, wait_for, write_secret,
};

fn config(receiver: &str) -> String {
    pipeline_config("in", receiver, "5s")
}

/// Beats three times with the given status sequence and waits until the
/// collector recorded them for this process, with nonces 1, 2, 3.
fn beat_three<T: reference_client::BeatTransport>(c: &Collector, client: &mut Varta<T>) {
    for (i, status) in [Status::Ok, Status::Degraded, Status::Ok].into_iter().enumerate() {
        let outcome = client.beat(status, 40 + i as u32);
        assert!(matches!(outcome, BeatOutcome::Sent), "beat {i}: {outcome:?}");
    }
    let me = std::process::id().to_string();
    let beats = wait_for("three reference-client beats", || {
        let ev: Vec<_> = read_events(&c.path("events.tsv"))
            .into_iter()
            .filter(|e| e.kind == "beat" && e.pid == me)
            .collect();
        (ev.len() >= 3).then_some(ev)
    });
    let seen: Vec<(&str, &str, &str)> =
        beats.iter().map(|e| (e.nonce.as_str(), e.status.as_str(), e.payload.as_str())).collect();
    assert_eq!(seen, [("1", "ok", "40"), ("2", "degraded", "41"), ("3", "ok", "42")]);
}

#[test]
fn reference_client_over_uds() {
    let c = Collector::start(&config("    transport: uds\n    path: \"@DIR@/varta.sock\""));
    let mut client = Varta::connect(c.path("varta.sock")).expect("connect");
    beat_three(&c, &mut client);
    assert!(c.stop().0.success());
}

#[test]
fn reference_client_over_plain_udp() {
    let port = free_port();
    let c = Collector::start(&config(&format!(
        "    transport: udp\n    endpoint: \"127.0.0.1:{port}\"\n    accept_unauthenticated: true"
    )));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut client = Varta::connect_udp(addr).expect("connect");
    beat_three(&c, &mut client);
    assert!(c.stop().0.success());
}

/// A collector with a secure receiver whose key (file in `keys`, mode 0600)
/// is `key`; `kind` is `key_files` or `master_key_file`.
fn secure(kind: &str, key: [u8; 32]) -> (Collector, SocketAddr, tempfile::TempDir) {
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let key_path = dir.path().join("k");
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    write_secret(&key_path, &hex);
    let c = Collector::start(&config(&format!(
        "    transport: secure_udp\n    endpoint: \"127.0.0.1:{port}\"\n    {kind}: {}",
        if kind == "key_files" {
            format!("[\"{}\"]", key_path.display())
        } else {
            format!("\"{}\"", key_path.display())
        }
    )));
    (c, format!("127.0.0.1:{port}").parse().expect("addr"), dir)
}

#[test]
fn reference_client_over_secure_udp_shared_key() {
    let (c, addr, _keys) = secure("key_files", [0x42; 32]);
    let mut client = Varta::connect_secure_udp(addr, Key::from_bytes([0x42; 32])).expect("connect");
    beat_three(&c, &mut client);
    assert!(c.stop().0.success());
}

#[test]
fn reference_client_over_secure_udp_master_key() {
    let (c, addr, _keys) = secure("master_key_file", [0x17; 32]);
    let mut client =
        Varta::connect_secure_udp_with_master(addr, Key::from_bytes([0x17; 32])).expect("connect");
    beat_three(&c, &mut client);
    assert!(c.stop().0.success());
}
