//! The façade through a host's OpenTelemetry SDK (in-memory exporters):
//! an agent on secure UDP stalls and resumes, a frame sealed with a key
//! the engine does not hold and a malformed datagram on UDS are refused.
//! Checked: the exact span tree, the metric values, the incidents handed
//! to the callback.

mod common;

use std::os::unix::net::UnixDatagram;
use std::sync::mpsc;
use std::time::Duration;

use common::{Host, TempDir, attr, histogram, key_file, uds, value, wait_for};
use opentelemetry::trace::{SpanId, Status};
use opentelemetry::{KeyValue, Value};
use varta_client::{Client, SecureKey};
use varta_embed::{Engine, EventKind, Incident, TrackerConfig, TransportKind, VlpReceiverConfig};
use varta_proto::{Key, Status as BeatStatus};

const ENGINE_KEY: [u8; 32] = [0x11; 32];
const FORGER_KEY: [u8; 32] = [0x22; 32];
const THRESHOLD: Duration = Duration::from_millis(100);

#[test]
fn stall_resume_and_refused_frames_reach_the_hosts_sdk_in_the_collectors_shape() {
    let dir = TempDir::new();
    let socket = dir.join("varta.sock");
    let host = Host::new();
    let (tx, incidents) = mpsc::channel::<Incident>();
    let engine = Engine::builder()
        .receiver(
            "vlp/secure",
            VlpReceiverConfig {
                transport: TransportKind::SecureUdp,
                endpoint: Some("127.0.0.1:0".into()),
                key_files: Some(vec![key_file(&dir, "k1", &ENGINE_KEY)]),
                ..Default::default()
            },
        )
        .receiver("vlp/uds", uds(&socket))
        .ratelimit(None)
        .resolver(None)
        .tracker(TrackerConfig { threshold: THRESHOLD, ..Default::default() })
        .on_incident(move |i| {
            let _ = tx.send(i.clone());
        })
        .opentelemetry(host.telemetry())
        .start()
        .expect("engine starts");
    let addr = engine.local_addr("vlp/secure").expect("secure UDP address");

    let agent =
        Client::connect_secure_udp(addr, SecureKey::Shared(Key::from_bytes(ENGINE_KEY))).expect("agent");
    for _ in 0..3 {
        assert!(agent.beat(BeatStatus::Ok, 7).is_sent());
    }
    let next = |what: &str| incidents.recv_timeout(common::PATIENCE).unwrap_or_else(|_| panic!("no {what}"));
    let stall = next("stall");
    let EventKind::Stall { incident, silence_ns: stall_silence, last_nonce, .. } = stall.event.kind else {
        panic!("first incident is a stall: {stall:?}")
    };
    assert_eq!(last_nonce, 3);
    assert_eq!(stall.attribute("process.pid"), Some(&Value::I64(i64::from(std::process::id()))));
    assert_eq!(stall.attribute("varta.agent.transport"), Some(&Value::from("secure_udp_shared_key")));
    assert!(agent.beat(BeatStatus::Ok, 8).is_sent());
    let resume = next("resume");
    let EventKind::Resume { incident: resumed, silence_ns, .. } = resume.event.kind else {
        panic!("then a resume: {resume:?}")
    };
    assert_eq!(resumed, incident);

    // Forged: sealed with a key the engine does not hold; malformed: not a frame.
    let forger =
        Client::connect_secure_udp(addr, SecureKey::Shared(Key::from_bytes(FORGER_KEY))).expect("forger");
    assert!(forger.beat(BeatStatus::Ok, 0).is_sent());
    UnixDatagram::unbound().expect("uds").send_to(b"not a frame", &socket).expect("send");
    // The agent is silent again: a second incident, the last event there is.
    let again = next("second stall");
    let EventKind::Stall { incident: second, .. } = again.event.kind else { panic!("a stall: {again:?}") };
    assert_ne!(second, incident);

    let pipeline = KeyValue::new("varta.pipeline", "liveness");
    let rm = wait_for("the refusals and the resume in the host's metrics", || {
        let rm = host.collect();
        let refused = value(
            &rm,
            "varta.refusals",
            &[KeyValue::new("varta.receiver", "vlp/secure"), KeyValue::new("reason", "decrypt_failed")],
        );
        let malformed = value(
            &rm,
            "varta.decode_errors",
            &[KeyValue::new("varta.receiver", "vlp/uds"), KeyValue::new("kind", "bad_length")],
        );
        let stalls = value(&rm, "varta.stalls", std::slice::from_ref(&pipeline));
        (refused == Some(1) && malformed == Some(1) && stalls == Some(2)).then_some(rm)
    });
    let pid = KeyValue::new("process.pid", i64::from(std::process::id()));
    assert_eq!(value(&rm, "varta.beats", std::slice::from_ref(&pipeline)), Some(4));
    assert_eq!(value(&rm, "varta.resumes", std::slice::from_ref(&pipeline)), Some(1));
    assert_eq!(value(&rm, "varta.agents.tracked", std::slice::from_ref(&pipeline)), Some(1));
    assert_eq!(value(&rm, "varta.agents.stalled", std::slice::from_ref(&pipeline)), Some(1));
    assert_eq!(
        value(
            &rm,
            "varta.refusals",
            &[KeyValue::new("varta.receiver", "vlp/secure"), KeyValue::new("reason", "replay")]
        ),
        Some(0),
        "every series is there, zeros included"
    );
    assert_eq!(value(&rm, "varta.agent.beats", std::slice::from_ref(&pid)), Some(4));
    assert_eq!(value(&rm, "varta.agent.stalls", std::slice::from_ref(&pid)), Some(2));
    assert_eq!(value(&rm, "varta.agent.status", std::slice::from_ref(&pid)), Some(3), "3: stalled");
    let (count, sum, bounds) =
        histogram(&rm, "varta.stall.duration", std::slice::from_ref(&pipeline)).expect("histogram");
    assert_eq!((count, sum), (1, silence_ns as f64 / 1e9));
    let collectors: Vec<f64> =
        varta_processor::STALL_DURATION_BOUNDS_NS.iter().map(|&ns| ns as f64 / 1e9).collect();
    assert_eq!(bounds, collectors, "the collector's buckets");
    assert_eq!(
        value(&rm, "varta.collector.exporter.dropped", &[KeyValue::new("component", "incidents")]),
        Some(0),
        "the engine's own health is reported too"
    );

    // The span trees: a root varta.stall and its varta.stall.resolved,
    // the second incident's varta.stall in a trace of its own; nothing else.
    let spans = wait_for("three spans", || {
        let s = host.finished_spans();
        (s.len() >= 3).then_some(s)
    });
    let stopped = engine.shutdown(Duration::from_secs(10));
    assert!(stopped.clean, "{stopped:?}");
    assert!(!socket.exists(), "the UDS socket file is removed");
    let spans_after = host.finished_spans();
    assert_eq!(spans_after.len(), 3, "refused frames make no span: {spans_after:#?}");
    let stall_of = |id: u64| {
        spans
            .iter()
            .find(|s| s.name == "varta.stall" && attr(s, "varta.incident.id") == Some(&Value::I64(id as i64)))
            .expect("varta.stall of the incident")
    };
    let (root, later) = (stall_of(incident), stall_of(second));
    assert_eq!(later.parent_span_id, SpanId::INVALID);
    assert_ne!(later.span_context.trace_id(), root.span_context.trace_id(), "one trace per incident");
    let child = spans.iter().find(|s| s.name == "varta.stall.resolved").expect("varta.stall.resolved");
    assert_eq!(root.parent_span_id, SpanId::INVALID);
    assert_eq!(child.parent_span_id, root.span_context.span_id());
    assert_eq!(child.span_context.trace_id(), root.span_context.trace_id());
    for s in [root, child] {
        assert_eq!(attr(s, "varta.incident.id"), Some(&Value::I64(incident as i64)), "{s:#?}");
        assert_eq!(attr(s, "varta.pipeline"), Some(&Value::from("liveness")));
        assert_eq!(attr(s, "process.pid"), Some(&Value::I64(i64::from(std::process::id()))));
    }
    assert!(matches!(&root.status, Status::Error { .. }), "{:?}", root.status);
    assert_eq!(child.status, Status::Ok);
    assert_eq!(attr(root, "varta.stall.threshold_ns"), Some(&Value::I64(THRESHOLD.as_nanos() as i64)));
    assert_eq!(attr(root, "varta.stall.silence_ns"), Some(&Value::I64(stall_silence as i64)));
    assert_eq!(attr(root, "varta.last_nonce"), Some(&Value::I64(3)));
    assert_eq!(attr(root, "varta.last_payload"), Some(&Value::I64(7)));
    assert_eq!(attr(child, "varta.stall.silence_ns"), Some(&Value::I64(silence_ns as i64)));
    assert_eq!(attr(child, "varta.nonce"), Some(&Value::I64(4)));
    let detected: Vec<&str> = root.events.events.iter().map(|e| e.name.as_ref()).collect();
    assert_eq!(detected, ["varta.stall.detected"]);
    let len =
        |s: &opentelemetry_sdk::trace::SpanData| s.end_time.duration_since(s.start_time).expect("ordered");
    assert_eq!(len(root), Duration::from_nanos(stall_silence));
    assert_eq!(len(child), Duration::from_nanos(silence_ns));
    assert_eq!(root.start_time, child.start_time, "both start at the last beat before the silence");
    assert_eq!(resume.time, child.end_time, "the callback and the span agree on when");
}
