//! End-to-end tests of the `otlp` exporter: the real `varta-collector`
//! binary, real agents (`varta beat` processes, and raw UDP frames for
//! fleets of simulated pids), against
//! * a real third-party OTLP/gRPC receiver, `rotel` (installed by
//!   `scripts/install-peers.sh`; the test fails, never skips, without it),
//!   kept for quick protocol checks: it starts in milliseconds, speaks
//!   gRPC and HTTP (proto and JSON) and prints what it decoded. The
//!   deployment chain through a real OpenTelemetry Collector gateway to
//!   Jaeger and Prometheus is `otelcol.rs` (it replaced the rotel-as-gateway
//!   test that was here);
//! * an OTLP/gRPC server inside the test process, built from the official
//!   protos (`opentelemetry-proto`, `varta_integration::otlp_server`), to
//!   assert exact structure and to kill and restart the backend at will.
//!
//! No timing thresholds: everything is polled with bounded timeouts.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Metric, NumberDataPoint, metric::Data,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use varta_integration::otlp_server::{OtlpServer, Sink};
use varta_integration::{
    Collector, final_counter, free_tcp_port, free_udp_port, heavy, read_events, signal, varta, wait_for,
};
use varta_proto::{Frame, Status};

// ---------------------------------------------------------------------------
// Reading spans and metrics.

fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn int_attr(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attributes, key) {
        Some(Value::IntValue(v)) => Some(*v),
        _ => None,
    }
}

/// Spans named `name` about agent `pid` (its resource's `process.pid`).
fn spans_of(sink: &Sink, name: &str, pid: u32) -> Vec<Span> {
    agent_spans(sink, name, pid).into_iter().map(|(_, s)| s).collect()
}

/// Spans named `name` about agent `pid`, each with its resource attributes.
fn agent_spans(sink: &Sink, name: &str, pid: u32) -> Vec<(Vec<KeyValue>, Span)> {
    sink.with(|r| {
        r.spans
            .iter()
            .zip(&r.span_resources)
            .filter(|(s, res)| s.name == name && int_attr(res, "process.pid") == Some(i64::from(pid)))
            .map(|(s, res)| (res.clone(), s.clone()))
            .collect()
    })
}

/// The newest collector-level metric named `name` (under the collector's
/// own resource).
fn metric(sink: &Sink, name: &str) -> Option<Metric> {
    sink.with(|r| {
        r.metrics
            .iter()
            .zip(&r.metric_resources)
            .rev()
            .find(|(m, res)| m.name == name && str_attr(res, "service.name") == Some("varta-collector"))
            .map(|(m, _)| m.clone())
    })
}

/// Every point of the per-agent metric `name` about agent `pid`, with the
/// resource it arrived under, in arrival order.
fn agent_points(sink: &Sink, name: &str, pid: u32) -> Vec<(Vec<KeyValue>, NumberDataPoint)> {
    sink.with(|r| {
        let mut out = Vec::new();
        for (m, res) in r.metrics.iter().zip(&r.metric_resources) {
            if m.name != name || int_attr(res, "process.pid") != Some(i64::from(pid)) {
                continue;
            }
            let points = match &m.data {
                Some(Data::Gauge(g)) => &g.data_points,
                Some(Data::Sum(s)) => &s.data_points,
                _ => continue,
            };
            out.extend(points.iter().map(|p| (res.clone(), p.clone())));
        }
        out
    })
}

/// The newest point of the per-agent metric `name` about agent `pid`, with
/// the resource it arrived under.
fn agent_point(sink: &Sink, name: &str, pid: u32) -> Option<(Vec<KeyValue>, NumberDataPoint)> {
    agent_points(sink, name, pid).pop()
}

fn unix_ns() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128)
}

// ---------------------------------------------------------------------------
// Configs and agents.

/// A collector on `text` with the resolver added after the tracker, and an
/// agent named `checkout` beating every 50 ms on its UDS socket.
fn start_with_checkout_agent(text: &str) -> (Collector, std::process::Child) {
    let text = text
        .replace("  tracker:\n    threshold: 300ms\n", "  tracker:\n    threshold: 300ms\n  resolver: {}\n")
        .replace("processors: [tracker]", "processors: [tracker, resolver]");
    let c = Collector::start(&text);
    let agent = varta_integration::service_agent(&c, "checkout");
    (c, agent)
}

/// UDS + plain UDP receivers, a tracker, a file exporter and an otlp
/// exporter with `otlp_extra` lines (indented by four spaces).
fn config(endpoint: &str, udp_port: u16, threshold: &str, otlp_extra: &str) -> String {
    format!(
        r#"receivers:
  vlp/uds:
    transport: uds
    path: "@DIR@/varta.sock"
  vlp/udp:
    transport: udp
    endpoint: 127.0.0.1:{udp_port}
    accept_unauthenticated: true
    recv_buffer_bytes: 67108864
processors:
  tracker:
    threshold: {threshold}
exporters:
  file:
    path: "@DIR@/events.tsv"
    beats: false
  otlp:
    endpoint: {endpoint}
{otlp_extra}
service:
  pipelines:
    liveness:
      receivers: [vlp/uds, vlp/udp]
      processors: [tracker]
      exporters: [file, otlp]
  telemetry:
    logs:
      format: json
"#
    )
}

/// An in-test OTLP server (recording into a sink) on a free port and the
/// `config` for a collector exporting to it, with a free plain-UDP port.
struct Rig {
    sink: Sink,
    server: OtlpServer,
    udp: u16,
    config: String,
}

fn rig(threshold: &str, otlp_extra: &str) -> Rig {
    let (port, udp) = (free_tcp_port(), free_udp_port());
    let sink = Sink::default();
    let server = OtlpServer::start(port, &sink);
    let config = config(&format!("http://127.0.0.1:{port}"), udp, threshold, otlp_extra);
    Rig { sink, server, udp, config }
}

/// A `varta beat` agent process beating every 50 ms over the collector's socket.
fn uds_agent(c: &Collector) -> Child {
    let sock = c.path("varta.sock");
    varta(&["beat", "--socket", sock.to_str().expect("utf8"), "--every", "50ms"])
        .spawn()
        .expect("spawn varta beat")
}

/// Sends one beat for each pid in `pids` over plain UDP (simulated agents).
fn udp_beats(port: u16, pids: impl IntoIterator<Item = u32>, nonce: u64) {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    for (i, pid) in pids.into_iter().enumerate() {
        let frame = Frame::new(Status::Ok, pid, nonce, nonce, 0).encode();
        // A full socket buffer is retried: these agents must arrive.
        while sock.send_to(&frame, to).is_err() {
            std::thread::yield_now();
        }
        if i % 256 == 255 {
            // Let the receiver keep up (pacing, not a timing assumption).
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

fn counter(c: &Collector, name: &str, label: &str) -> u64 {
    count(c, "exporters::otlp", name, label)
}

/// A counter through a SIGUSR1 dump; on failure, shows the collector's log tail.
fn count(c: &Collector, component: &str, name: &str, label: &str) -> u64 {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.counter(component, name, label))) {
        Ok(v) => v,
        Err(e) => {
            let log = c.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("collector log tail (newest first):\n{}", tail.join("\n"));
            std::panic::resume_unwind(e)
        }
    }
}

// ---------------------------------------------------------------------------
// rotel: a real third-party OTLP receiver.

use varta_integration::rotel::{Rotel, trace_id_of};

/// Kept: gzip-compressed gRPC, metrics and spans of one incident at an
/// independent receiver, the quickest wire check there is.
#[test]
fn rotel_receives_stall_span_metrics_and_resolution() {
    let port = free_tcp_port();
    let rotel = Rotel::start(port);
    let c = Collector::start(&config(
        &format!("http://127.0.0.1:{port}"),
        free_udp_port(),
        "300ms",
        "    compression: gzip\n    metrics: { interval: 200ms }",
    ));
    let mut agent = uds_agent(&c);
    let pid = agent.id();
    let pid_line = format!("-> process.pid: Int({pid})");
    // The agent's per-agent metric points carry its pid: it is tracked.
    wait_for("rotel to print the agent's metric points", || rotel.output().contains(&pid_line).then_some(()));
    signal(&agent, libc::SIGSTOP);
    let stall = wait_for("rotel to print the varta.stall span", || {
        rotel.span_blocks("varta.stall").into_iter().find(|b| b.contains(&pid_line))
    });
    assert!(stall.contains("varta.stall.detected"), "{stall}");
    assert!(stall.contains("STATUS_CODE_ERROR"), "{stall}");
    assert!(stall.contains("-> varta.agent.transport: Str(uds)"), "{stall}");
    assert!(stall.contains("-> varta.incident.id: Int("), "{stall}");
    wait_for("varta.stalls counted in rotel's metrics", || {
        let out = rotel.output();
        (out.contains("Name: varta.stalls") && out.contains("Name: varta.beats")).then_some(())
    });
    signal(&agent, libc::SIGCONT);
    let resolved = wait_for("rotel to print the resolution", || {
        rotel.span_blocks("varta.stall.resolved").into_iter().find(|b| b.contains(&pid_line))
    });
    assert!(resolved.contains("STATUS_CODE_OK"), "{resolved}");
    assert!(resolved.contains("-> varta.stall.silence_ns: Int("), "{resolved}");
    assert_eq!(trace_id_of(&resolved), trace_id_of(&stall), "one trace per incident");
    let _ = agent.kill();
    let _ = agent.wait();
    let log = c.stop_cleanly();
    assert_eq!(
        final_counter(&log, "exporters::otlp", "spans_failed", "").unwrap_or(0),
        0,
        "no failures: {log}"
    );
}

/// What a Tempo/Jaeger user needs, checked at a real third-party backend
/// over all three wires at once: `otlp` in the OpenTelemetry Collector's
/// `host:port` + `tls.insecure` form, and `otlphttp` with proto and with
/// JSON bodies. checkout's stall, diagnosis and resolution arrive under
/// checkout's own resource (with its pid), an agent without a service name
/// as `unknown_service:varta`, the collector's own metrics under
/// `varta-collector`. Kept: the only test of all three wires side by side
/// (with an anonymous agent), in about a second.
#[test]
fn rotel_sees_stalls_under_the_agents_resource_over_grpc_and_http_proto_and_json() {
    let (grpc, proto, json) =
        (Rotel::start(free_tcp_port()), Rotel::start(free_tcp_port()), Rotel::start(free_tcp_port()));
    let text = config(
        &format!("127.0.0.1:{}", grpc.grpc),
        free_udp_port(),
        "300ms",
        &format!(
            "    tls: {{ insecure: true }}\n    metrics: {{ interval: 300ms }}\n  otlphttp/proto:\n    endpoint: http://127.0.0.1:{}\n    metrics: {{ interval: 300ms }}\n  otlphttp/json:\n    endpoint: http://127.0.0.1:{}/\n    encoding: json\n    compression: none\n    metrics: {{ interval: 300ms }}",
            proto.http, json.http
        ),
    )
    .replace("exporters: [file, otlp]", "exporters: [file, otlp, otlphttp/proto, otlphttp/json]");
    let (c, mut checkout) = start_with_checkout_agent(&text);
    let sock = c.path("varta.sock");
    let mut anonymous = varta(&["beat", "--socket", sock.to_str().expect("utf8"), "--every", "50ms"])
        .env_remove("OTEL_SERVICE_NAME")
        .spawn()
        .expect("spawn varta beat");
    let (pid, anon) = (checkout.id(), anonymous.id());
    let pid_line = format!("-> process.pid: Int({pid})");
    let anon_line = format!("-> process.pid: Int({anon})");
    for r in [&grpc, &proto, &json] {
        wait_for("checkout's metric points under its own resource", || {
            r.metric_blocks()
                .into_iter()
                .find(|b| b.contains(&pid_line) && b.contains("-> service.name: Str(checkout)"))
        });
    }
    signal(&checkout, libc::SIGSTOP);
    signal(&anonymous, libc::SIGSTOP);
    for (wire, r) in [("grpc", &grpc), ("http/protobuf", &proto), ("http/json", &json)] {
        let stall = wait_for("checkout's stall span", || {
            r.span_blocks("varta.stall").into_iter().find(|b| b.contains(&pid_line))
        });
        assert!(stall.contains("-> service.name: Str(checkout)"), "{wire}: {stall}");
        assert!(stall.contains("-> process.executable.name: Str(varta)"), "{wire}: {stall}");
        assert!(stall.contains("InstrumentationScope varta-collector"), "{wire}: {stall}");
        assert!(stall.contains("-> varta.collector.instance.id: Str("), "{wire}: {stall}");
        assert!(
            stall.contains("STATUS_CODE_ERROR") && stall.contains("varta.stall.detected"),
            "{wire}: {stall}"
        );
        let diagnosis = wait_for("checkout's diagnosis span", || {
            r.span_blocks("varta.stall.diagnosis").into_iter().find(|b| b.contains(&pid_line))
        });
        assert!(diagnosis.contains("-> service.name: Str(checkout)"), "{wire}: {diagnosis}");
        assert_eq!(trace_id_of(&diagnosis), trace_id_of(&stall), "{wire}");
        let other = wait_for("the anonymous agent's stall span", || {
            r.span_blocks("varta.stall").into_iter().find(|b| b.contains(&anon_line))
        });
        assert!(other.contains("-> service.name: Str(unknown_service:varta)"), "{wire}: {other}");
        let own = r.metric_blocks().into_iter().find(|b| b.contains("Name: varta.stalls"));
        let own = own.unwrap_or_else(|| panic!("{wire}: no collector metrics"));
        assert!(own.contains("-> service.name: Str(varta-collector)"), "{wire}: {own}");
    }
    signal(&checkout, libc::SIGCONT);
    for (wire, r) in [("grpc", &grpc), ("http/protobuf", &proto), ("http/json", &json)] {
        let resolved = wait_for("checkout's resolved span", || {
            r.span_blocks("varta.stall.resolved").into_iter().find(|b| b.contains(&pid_line))
        });
        assert!(resolved.contains("-> service.name: Str(checkout)"), "{wire}: {resolved}");
        assert!(resolved.contains("STATUS_CODE_OK"), "{wire}: {resolved}");
    }
    signal(&anonymous, libc::SIGCONT);
    for child in [&mut checkout, &mut anonymous] {
        let _ = child.kill();
        let _ = child.wait();
    }
    let log = c.stop_cleanly();
    for exporter in ["exporters::otlp", "exporters::otlphttp/proto", "exporters::otlphttp/json"] {
        assert_eq!(final_counter(&log, exporter, "spans_failed", "").unwrap_or(0), 0, "{exporter}: {log}");
        assert!(final_counter(&log, exporter, "spans_exported", "").unwrap_or(0) >= 5, "{exporter}: {log}");
    }
}

/// The newcomer's line: no configuration, `OTEL_EXPORTER_OTLP_ENDPOINT`
/// set — the embedded default also exports, and the stall span arrives.
/// `OTEL_SERVICE_NAME` in the collector's environment names the
/// collector's own resource.
#[test]
fn no_config_and_otel_exporter_otlp_endpoint_deliver_the_stall_span() {
    let port = free_tcp_port();
    let sink = Sink::default();
    let server = OtlpServer::start(port, &sink);
    let runtime = tempfile::tempdir().expect("runtime dir");
    let rt = runtime.path().to_str().expect("utf8");
    let endpoint = format!("http://127.0.0.1:{port}");
    let c = Collector::start_default_with_args(
        &[
            ("XDG_RUNTIME_DIR", rt),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            // This backend speaks gRPC; the specification's default is http/protobuf.
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_SERVICE_NAME", "edge-liveness"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test"),
        ],
        // JSON logs, so that the test can read counters.
        &["--set", "service.telemetry.logs.format=json"],
    );
    let socket = runtime.path().join("varta.sock");
    let mut agent = varta(&["beat", "--socket", socket.to_str().expect("utf8"), "--every", "100ms"])
        .env("OTEL_SERVICE_NAME", "checkout")
        .spawn()
        .expect("agent");
    let pid = agent.id();
    wait_for("the agent tracked", || {
        (c.counter("pipelines::liveness", "beats_accepted", "") > 0).then_some(())
    });
    signal(&agent, libc::SIGSTOP);
    // The embedded default's threshold is 2 s.
    let (resource, stall) = wait_for("the stall span", || agent_spans(&sink, "varta.stall", pid).pop());
    assert_eq!(str_attr(&resource, "service.name"), Some("checkout"));
    assert_eq!(int_attr(&stall.attributes, "varta.stall.threshold_ns"), Some(2_000_000_000));
    let own = wait_for("the collector's own metrics", || {
        sink.with(|r| {
            r.metrics
                .iter()
                .zip(&r.metric_resources)
                .find(|(m, _)| m.name == "varta.beats")
                .map(|(_, res)| res.clone())
        })
    });
    assert_eq!(str_attr(&own, "service.name"), Some("edge-liveness"));
    assert_eq!(str_attr(&own, "deployment.environment.name"), Some("test"));
    signal(&agent, libc::SIGCONT);
    let _ = agent.kill();
    let _ = agent.wait();
    let log = c.stop_cleanly();
    assert!(final_counter(&log, "exporters::otlp/env", "spans_exported", "").unwrap_or(0) >= 1, "{log}");
    server.kill();
}

/// OTLP/HTTP with the backend gone: spans wait and are retried, and once
/// a backend listens again on the same port every stall span arrives —
/// none failed, none dropped, none lost uncounted. Kept: rotel is a
/// backend that can be killed and restarted on the same ports in
/// milliseconds, and the counters are checked exactly.
#[test]
fn otlphttp_backend_killed_and_restarted_loses_nothing() {
    let (grpc, http) = (free_tcp_port(), free_tcp_port());
    let first = Rotel::start_on(grpc, http);
    let udp = free_udp_port();
    let text = config(&format!("http://127.0.0.1:{grpc}"), udp, "200ms", "    metrics: { enabled: false }")
        .replace("  otlp:\n", "  otlphttp:\n")
        .replace(&format!("    endpoint: http://127.0.0.1:{grpc}\n"), &format!("    endpoint: http://127.0.0.1:{http}\n    retry_on_failure: {{ initial_interval: 100ms, max_interval: 300ms }}\n"))
        .replace("exporters: [file, otlp]", "exporters: [file, otlphttp]");
    let c = Collector::start(&text);
    let http_count = |name: &str| count(&c, "exporters::otlphttp", name, "");
    let stalls = stall_once(&c, udp, 9101, 0);
    wait_for("the first stall span at the backend", || {
        first.span_blocks("varta.stall").into_iter().find(|b| b.contains("-> process.pid: Int(9101)"))
    });
    drop(first);
    let stalls = stall_once(&c, udp, 9102, stalls);
    wait_for("retries while the backend is down", || (http_count("span_exports_retried") > 0).then_some(()));
    let second = Rotel::start_on(grpc, http);
    wait_for("the second stall span once a backend is back", || {
        second.span_blocks("varta.stall").into_iter().find(|b| b.contains("-> process.pid: Int(9102)"))
    });
    let log = c.stop_cleanly();
    let get = |name: &str, label: &str| final_counter(&log, "exporters::otlphttp", name, label).unwrap_or(0);
    assert_eq!(get("spans_exported", ""), stalls, "{log}");
    assert_eq!(get("spans_failed", ""), 0, "{log}");
    assert_eq!(get("spans_dropped", "queue_full") + get("spans_dropped", "shutdown"), 0, "{log}");
}

// ---------------------------------------------------------------------------
// Exact structure, against the in-test server.

#[test]
fn spans_and_metrics_have_the_promised_structure() {
    let port = free_tcp_port();
    let sink = Sink::default();
    let server = OtlpServer::start(port, &sink);
    let c = Collector::start_with(
        &config(
            &format!("http://127.0.0.1:{port}"),
            free_udp_port(),
            "400ms",
            "    headers:\n      x-varta-tenant: team-a\n      authorization: ${env:OTLP_TOKEN}\n    metrics: { interval: 200ms, temporality: cumulative }",
        ),
        &[("OTLP_TOKEN", "Bearer never-logged-token")],
    );
    let started_ns = unix_ns();
    let mut agent = uds_agent(&c);
    let pid = agent.id();
    let (agent_resource, point) =
        wait_for("the agent to be tracked", || agent_point(&sink, "varta.agent.status", pid));
    // Per-agent points are about the agent: its resource, the pipeline as
    // the only point attribute.
    assert_eq!(str_attr(&agent_resource, "service.name"), Some("unknown_service"));
    assert!(int_attr(&point.attributes, "process.pid").is_none(), "{point:?}");
    assert_eq!(str_attr(&point.attributes, "varta.pipeline"), Some("liveness"));
    signal(&agent, libc::SIGSTOP);
    let stopped_ns = unix_ns();
    let (resource, stall) = wait_for("the stall span", || agent_spans(&sink, "varta.stall", pid).pop());
    signal(&agent, libc::SIGCONT);
    let resumed_ns = unix_ns();
    let resolved = wait_for("the resolved span", || spans_of(&sink, "varta.stall.resolved", pid).pop());

    // One trace per incident, parent → child.
    assert_eq!(stall.trace_id.len(), 16);
    assert_eq!(stall.span_id.len(), 8);
    assert!(stall.parent_span_id.is_empty(), "the stall span is the root");
    assert_eq!(resolved.trace_id, stall.trace_id);
    assert_eq!(resolved.parent_span_id, stall.span_id);
    assert_ne!(resolved.span_id, stall.span_id);
    assert_eq!(spans_of(&sink, "varta.stall", pid).len(), 1, "exactly one stall span for one incident");

    // The agent is the resource; the collector is the scope.
    assert_eq!(int_attr(&resource, "process.pid"), Some(i64::from(pid)));
    assert_eq!(str_attr(&resource, "varta.agent.source"), Some("local"));
    assert_eq!(str_attr(&resource, "varta.agent.transport"), Some("uds"));
    // No resolver in this pipeline: the executable is unknown too.
    assert_eq!(str_attr(&resource, "service.name"), Some("unknown_service"));
    assert!(str_attr(&resource, "host.name").is_some(), "a local agent runs on this node");
    assert!(sink.with(|r| r.span_scopes.iter().all(|s| s == "varta-collector")));
    // Attribute names and types.
    let a = &stall.attributes;
    assert!(int_attr(a, "process.pid").is_none(), "identity lives on the resource");
    assert_eq!(int_attr(a, "varta.stall.threshold_ns"), Some(400_000_000));
    assert!(matches!(attr(a, "varta.last_status"), Some(Value::StringValue(s)) if s == "ok"));
    assert!(int_attr(a, "varta.last_nonce").is_some_and(|n| n > 0));
    assert!(int_attr(a, "varta.last_payload").is_some());
    let incident = int_attr(a, "varta.incident.id").expect("incident id");
    assert_eq!(int_attr(&resolved.attributes, "varta.incident.id"), Some(incident));
    assert_eq!(stall.status.as_ref().map(|s| s.code), Some(StatusCode::Error as i32));
    assert_eq!(resolved.status.as_ref().map(|s| s.code), Some(StatusCode::Ok as i32));
    assert_eq!(stall.events.len(), 1);
    assert_eq!(stall.events[0].name, "varta.stall.detected");
    assert_eq!(stall.events[0].time_unix_nano, stall.end_time_unix_nano);

    // Timestamps within a second of wall-clock truth: the last beat came
    // just before SIGSTOP, detection one threshold after it, the end of the
    // resolution just after SIGCONT.
    let second = 1_000_000_000i128;
    let start = i128::from(stall.start_time_unix_nano);
    let end = i128::from(stall.end_time_unix_nano);
    assert!((start - stopped_ns).abs() < second, "stall start {start} vs SIGSTOP at {stopped_ns}");
    assert!((end - (stopped_ns + 400_000_000)).abs() < second, "detection {end}");
    assert!(end - start >= 400_000_000, "a stall lasts at least the threshold");
    let r_end = i128::from(resolved.end_time_unix_nano);
    assert!((r_end - resumed_ns).abs() < second, "resume {r_end} vs SIGCONT at {resumed_ns}");
    assert_eq!(resolved.start_time_unix_nano, stall.start_time_unix_nano);
    let silence = int_attr(&resolved.attributes, "varta.stall.silence_ns").expect("silence");
    assert_eq!(i128::from(silence), r_end - start);

    // Metrics: names, shapes, temporality, start times.
    let stalls = wait_for("varta.stalls = 1", || {
        let m = metric(&sink, "varta.stalls")?;
        let Some(Data::Sum(s)) = &m.data else { return None };
        matches!(
            s.data_points.first()?.value,
            Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(1))
        )
        .then_some(s.clone())
    });
    assert!(stalls.is_monotonic);
    assert_eq!(stalls.aggregation_temporality, AggregationTemporality::Cumulative as i32);
    let p = &stalls.data_points[0];
    assert!(i128::from(p.start_time_unix_nano) <= started_ns, "cumulative series start at collector start");
    assert!((i128::from(p.time_unix_nano) - unix_ns()).abs() < 5 * second);
    assert!(matches!(attr(&p.attributes, "varta.pipeline"), Some(Value::StringValue(s)) if s == "liveness"));
    let hist = wait_for("the stall duration histogram to count the resumed stall", || {
        let m = metric(&sink, "varta.stall.duration")?;
        let Some(Data::Histogram(h)) = m.data else { return None };
        (h.data_points.first()?.count == 1).then_some((m.unit, h))
    });
    assert_eq!(hist.0, "s");
    let hp = &hist.1.data_points[0];
    assert_eq!(hp.bucket_counts.len(), hp.explicit_bounds.len() + 1);
    assert!(hp.sum.is_some_and(|s| s >= 0.4), "{hp:?}");
    // Exemplars: the stall counter and the stall-duration histogram link
    // to the incident's trace (a Grafana panel jumps from the spike to it).
    let exemplars = |name: &str| -> Vec<(Vec<u8>, Vec<u8>)> {
        sink.with(|r| {
            r.metrics
                .iter()
                .filter(|m| m.name == name)
                .flat_map(|m| match &m.data {
                    Some(Data::Sum(s)) => {
                        s.data_points.iter().flat_map(|p| p.exemplars.clone()).collect::<Vec<_>>()
                    }
                    Some(Data::Histogram(h)) => {
                        h.data_points.iter().flat_map(|p| p.exemplars.clone()).collect()
                    }
                    _ => Vec::new(),
                })
                .map(|e| (e.trace_id, e.span_id))
                .collect()
        })
    };
    // (The exporter notes an incident when its span is made; the next
    // collection carries it.)
    let stall_ex = wait_for("a stall exemplar", || Some(exemplars("varta.stalls")).filter(|e| !e.is_empty()));
    assert_eq!(stall_ex, [(stall.trace_id.clone(), stall.span_id.clone())], "once, the stall's span");
    let duration_ex =
        wait_for("a duration exemplar", || Some(exemplars("varta.stall.duration")).filter(|e| !e.is_empty()));
    assert_eq!(duration_ex, [(resolved.trace_id.clone(), resolved.span_id.clone())]);
    for name in ["varta.beats", "varta.resumes", "varta.decode_errors", "varta.refusals", "varta.evictions"] {
        let m = metric(&sink, name).unwrap_or_else(|| panic!("{name} missing"));
        assert!(matches!(m.data, Some(Data::Sum(_))), "{name} is a sum");
    }
    let m = metric(&sink, "varta.agents.tracked").expect("varta.agents.tracked");
    assert!(matches!(m.data, Some(Data::Gauge(_))), "varta.agents.tracked is a gauge");
    assert!(
        sink.with(|r| r
            .metrics
            .iter()
            .any(|m| m.name == "varta.agent.status" && matches!(m.data, Some(Data::Gauge(_))))),
        "varta.agent.status is a gauge"
    );
    let decode = metric(&sink, "varta.decode_errors").expect("decode errors");
    let Some(Data::Sum(d)) = decode.data else { panic!("sum") };
    assert!(
        d.data_points
            .iter()
            .any(|p| matches!(attr(&p.attributes, "kind"), Some(Value::StringValue(k)) if k == "bad_crc"))
    );
    let own = wait_for("the exporter's own counters as self-health", || {
        let m = metric(&sink, "varta.collector.exporter.spans_exported")?;
        let Some(Data::Sum(s)) = m.data else { return None };
        s.data_points
            .into_iter()
            .find(|p| matches!(attr(&p.attributes, "component"), Some(Value::StringValue(c)) if c == "otlp"))
    });
    assert!(own.value.is_some());
    assert!(metric(&sink, "varta.collector.receiver.datagrams").is_some());
    assert!(metric(&sink, "varta.collector.pipeline.queue_depth").is_some());

    // Headers reach the backend and the secret never reaches the log.
    assert!(sink.with(|r| r.authorized && r.tenants.iter().all(|t| t == "team-a") && !r.tenants.is_empty()));
    let _ = agent.kill();
    let _ = agent.wait();
    let log = c.stop_cleanly();
    assert!(!log.contains("never-logged-token"), "a header value was logged");
    server.kill();
}

fn str_attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attributes, key) {
        Some(Value::StringValue(v)) => Some(v.as_str()),
        _ => None,
    }
}

/// An evicted agent's series end at once: the next collection sends a
/// staleness point (no value, flag NoRecordedValue) on each of them under
/// the agent's own resource, its service included (the resolver keeps a
/// departed agent's attributes long enough), instead of its last status
/// (3, stalled) lingering until the backend's staleness timeout.
#[test]
fn an_evicted_agent_s_series_end_with_a_staleness_point() {
    let Rig { sink, server: _server, config: text, .. } = rig("300ms", "    metrics: { interval: 200ms }");
    let text = text
        .replace(
            "  tracker:\n    threshold: 300ms\n",
            "  tracker:\n    threshold: 300ms\n    capacity: 1\n    eviction_after: 1\n  resolver: {}\n",
        )
        .replace("processors: [tracker]", "processors: [tracker, resolver]");
    let c = Collector::start(&text);
    let mut agent = varta_integration::service_agent(&c, "checkout");
    let pid = agent.id();
    wait_for("the agent's metric point under its service", || {
        agent_point(&sink, "varta.agent.status", pid)
            .filter(|(res, _)| str_attr(res, "service.name") == Some("checkout"))
    });
    signal(&agent, libc::SIGSTOP);
    wait_for("the stall span", || agent_spans(&sink, "varta.stall", pid).pop());
    // A newcomer when the tracker is full: the stalled agent is evicted.
    let mut newcomer = varta_integration::service_agent(&c, "newcomer");
    let stale = |name: &'static str| {
        wait_for("a staleness point", || {
            agent_points(&sink, name, pid).into_iter().find(|(_, p)| p.flags & 1 == 1)
        })
    };
    for name in ["varta.agent.status", "varta.agent.beats", "varta.agent.stalls"] {
        let (resource, point) = stale(name);
        assert!(point.value.is_none(), "{name}: no value");
        assert_eq!(str_attr(&resource, "service.name"), Some("checkout"), "{name}: the series it had");
    }
    assert_eq!(c.counter("exporters::otlp", "stale_markers", ""), 1);
    for a in [&mut agent, &mut newcomer] {
        let _ = a.kill();
        let _ = a.wait();
    }
}

/// With the resolver in the pipeline, a local agent's spans and metric
/// points carry its program and service, and its stall's diagnosis arrives
/// as a child span of the same trace.
#[test]
fn local_agents_carry_attributes_and_their_stalls_a_diagnosis_span() {
    let port = free_tcp_port();
    let sink = Sink::default();
    let _server = OtlpServer::start(port, &sink);
    let text = config(
        &format!("http://127.0.0.1:{port}"),
        free_udp_port(),
        "300ms",
        "    metrics: { interval: 200ms }",
    );
    let (_collector, mut agent) = start_with_checkout_agent(&text);
    let pid = agent.id();
    let (resource, _) = wait_for("the agent's metric point under its service", || {
        agent_point(&sink, "varta.agent.status", pid)
            .filter(|(res, _)| str_attr(res, "service.name") == Some("checkout"))
    });
    assert_eq!(str_attr(&resource, "process.executable.name"), Some("varta"));
    signal(&agent, libc::SIGSTOP);
    // The stall arrives under checkout's own resource, as a trace store
    // lists it ("service: checkout"); the collector's own metrics stay
    // under varta-collector.
    let (resource, stall) = wait_for("the stall span", || agent_spans(&sink, "varta.stall", pid).pop());
    assert_eq!(str_attr(&resource, "service.name"), Some("checkout"));
    assert_eq!(int_attr(&resource, "process.pid"), Some(i64::from(pid)));
    assert_eq!(str_attr(&resource, "process.executable.name"), Some("varta"));
    assert!(str_attr(&resource, "process.creation.time").is_some_and(|t| t.ends_with('Z')));
    assert!(str_attr(&stall.attributes, "service.name").is_none(), "service.name is a resource attribute");
    assert!(metric(&sink, "varta.stalls").is_some(), "fleet metrics under the collector's resource");
    let diagnosis = wait_for("the diagnosis span", || spans_of(&sink, "varta.stall.diagnosis", pid).pop());
    assert_eq!(str_attr(&diagnosis.attributes, "varta.stall.cause"), Some("stopped"));
    assert_eq!(diagnosis.trace_id, stall.trace_id, "same incident, same trace");
    assert_eq!(diagnosis.parent_span_id, stall.span_id);
    signal(&agent, libc::SIGCONT);
    let (resource, resolved) =
        wait_for("the resolved span", || agent_spans(&sink, "varta.stall.resolved", pid).pop());
    assert_eq!(str_attr(&resource, "service.name"), Some("checkout"));
    assert_eq!(resolved.parent_span_id, stall.span_id);
    let _ = agent.kill();
    let _ = agent.wait();
}

#[test]
fn delta_temporality_sends_differences() {
    let Rig { sink, server, udp, config } =
        rig("10s", "    traces: { enabled: false }\n    metrics: { interval: 200ms, temporality: delta }");
    let c = Collector::start(&config);
    udp_beats(udp, [4001, 4002, 4003], 1);
    // Deltas add up to the total, and each is marked delta.
    let total = wait_for("three beats summed over delta exports", || {
        let sum: i64 = sink.with(|r| {
            r.metrics
                .iter()
                .filter(|m| m.name == "varta.beats")
                .filter_map(|m| match &m.data {
                    Some(Data::Sum(s)) => {
                        assert_eq!(s.aggregation_temporality, AggregationTemporality::Delta as i32);
                        s.data_points.first().and_then(|p| match p.value {
                            Some(
                                opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(v),
                            ) => Some(v),
                            _ => None,
                        })
                    }
                    _ => None,
                })
                .sum()
        });
        (sum >= 3).then_some(sum)
    });
    assert_eq!(total, 3, "a delta series never counts a beat twice");
    c.stop_cleanly();
    server.kill();
}

// ---------------------------------------------------------------------------
// Faults.

/// Stalls `pid` (one beat, then silence) and returns once the collector
/// counted the stall.
fn stall_once(c: &Collector, udp: u16, pid: u32, stalls_before: u64) -> u64 {
    udp_beats(udp, [pid], 1);
    wait_for("the stall", || {
        let n = count(c, "pipelines::liveness", "stalls", "");
        (n > stalls_before).then_some(n)
    })
}

#[test]
fn backend_absent_then_killed_and_restarted_export_resumes() {
    let port = free_tcp_port();
    let udp = free_udp_port();
    // Backend absent at start.
    let c = Collector::start(&config(
        &format!("http://127.0.0.1:{port}"),
        udp,
        "200ms",
        "    compression: gzip\n    timeout: 1s\n    retry_on_failure: { initial_interval: 50ms, max_interval: 100ms, max_elapsed_time: 300ms }\n    metrics: { interval: 200ms }",
    ));
    let mut stalls = stall_once(&c, udp, 5001, 0);
    wait_for("the failed export to be counted", || (counter(&c, "spans_failed", "") >= 1).then_some(()));
    wait_for("metric exports to fail", || (counter(&c, "metric_exports_failed", "") >= 1).then_some(()));

    // The backend comes up: export resumes by itself.
    let sink = Sink::default();
    let server = OtlpServer::start(port, &sink);
    stalls = stall_once(&c, udp, 5002, stalls);
    wait_for("the span after the backend came up", || {
        (!spans_of(&sink, "varta.stall", 5002).is_empty()).then_some(())
    });
    wait_for("metrics after the backend came up", || metric(&sink, "varta.beats"));

    // Killed mid-run: failures counted, nothing stops.
    server.kill();
    let failed_before = counter(&c, "spans_failed", "");
    stalls = stall_once(&c, udp, 5003, stalls);
    wait_for("the failure while the backend is down", || {
        (counter(&c, "spans_failed", "") > failed_before).then_some(())
    });

    // Restarted on the same port: export resumes.
    let sink2 = Sink::default();
    let server = OtlpServer::start(port, &sink2);
    stall_once(&c, udp, 5004, stalls);
    wait_for("the span after the restart", || {
        (!spans_of(&sink2, "varta.stall", 5004).is_empty()).then_some(())
    });
    let exported = counter(&c, "spans_exported", "");
    let failed = counter(&c, "spans_failed", "");
    assert!(exported >= 2 && failed >= 2, "exported {exported}, failed {failed}");
    let log = c.stop_cleanly();
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("OTLP span export failed"), "failures are logged: {log}");
    server.kill();
}

#[test]
fn ten_thousand_agents_stalling_at_once_are_all_exported_or_counted() {
    let _turn = heavy();
    const AGENTS: u32 = 10_000;
    let Rig { sink, server, udp, config } = rig("1s", "    metrics: { interval: 1s, per_agent: true }");
    let c = Collector::start(&config);
    udp_beats(udp, 100_000..100_000 + AGENTS, 1);
    // Every agent that was tracked stalls (one beat, then silence).
    wait_for("every tracked agent to stall", || {
        let stalled = count(&c, "pipelines::liveness", "agents_stalled", "");
        let tracked = count(&c, "pipelines::liveness", "agents_tracked", "");
        (stalled >= u64::from(AGENTS) * 9 / 10 && stalled == tracked).then_some(tracked)
    });
    // Per-agent points are sent in chunks (AGENTS_PER_CHUNK agents a request): every
    // tracked agent's status point arrives, each under its own resource.
    let tracked = count(&c, "pipelines::liveness", "agents_tracked", "");
    let reported = wait_for("every tracked agent's status point", || {
        let pids: std::collections::HashSet<i64> = sink.with(|r| {
            r.metrics
                .iter()
                .zip(&r.metric_resources)
                .filter(|(m, _)| m.name == "varta.agent.status")
                .filter_map(|(_, res)| int_attr(res, "process.pid"))
                .collect()
        });
        (pids.len() as u64 >= tracked).then_some(pids.len() as u64)
    });
    assert_eq!(reported, tracked);
    let log = c.stop_cleanly();
    let stalls = final_counter(&log, "pipelines::liveness", "stalls", "").unwrap_or(0);
    let count = |name: &str, label: &str| final_counter(&log, "exporters::otlp", name, label).unwrap_or(0);
    let received = sink.with(|r| r.spans.iter().filter(|s| s.name == "varta.stall").count()) as u64;
    let accounted = received
        + count("spans_failed", "")
        + count("spans_dropped", "queue_full")
        + count("spans_dropped", "shutdown")
        + count("incidents_dropped", "");
    eprintln!(
        "10k: stalls {stalls}, received {received}, incidents_dropped {}, spans_dropped {}",
        count("incidents_dropped", ""),
        count("spans_dropped", "queue_full")
    );
    assert_eq!(accounted, stalls, "every incident exported or counted ({received} received); log:\n{log}");
    assert_eq!(count("spans_exported", ""), received, "the exporter's count agrees with the backend");
    // Distinct incidents, distinct traces.
    let traces: std::collections::HashSet<Vec<u8>> = sink
        .with(|r| r.spans.iter().filter(|s| s.name == "varta.stall").map(|s| s.trace_id.clone()).collect());
    assert_eq!(traces.len() as u64, received);
    assert!(stalls >= u64::from(AGENTS) * 9 / 10, "the load reached the collector: {stalls} stalls");
    server.kill();
}

#[test]
fn beat_flood_alongside_stalls_loses_no_stall_event() {
    let _turn = heavy();
    let Rig { sink, server, udp, config } = rig("300ms", "    metrics: { interval: 1s }");
    // Beats into the file exporter too, through a small queue, so the
    // flood overflows it.
    let cfg = config.replace("    beats: false", "    beats: true\n    queue_size: 256");
    let c = Collector::start(&cfg);
    // 200 agents that will stall, then a flood from 1,000 others.
    let stalling: Vec<u32> = (300_000..300_200).collect();
    udp_beats(udp, stalling.iter().copied(), 1);
    let flood = std::thread::spawn(move || {
        for nonce in 1..=200u64 {
            udp_beats(udp, 200_000..201_000, nonce);
        }
    });
    let _ = flood.join();
    // Wait until every agent (the flood's too, once it ends) has stalled.
    let stalls = wait_for("every agent to stall", || {
        let tracked = count(&c, "pipelines::liveness", "agents_tracked", "");
        let stalls = count(&c, "pipelines::liveness", "stalls", "");
        (tracked >= 1_000 && stalls == tracked).then_some(stalls)
    });
    let stall_lines = || {
        read_events(&c.path("events.tsv")).into_iter().filter(|e| e.kind == "stall").fold(
            BTreeMap::<String, usize>::new(),
            |mut m, e| {
                *m.entry(e.pid).or_default() += 1;
                m
            },
        )
    };
    let stalled = wait_for("every stall in the file", || {
        Some(stall_lines()).filter(|m| m.values().sum::<usize>() as u64 >= stalls)
    });
    assert_eq!(stalled.values().sum::<usize>() as u64, stalls, "every stall event is in the file, once");
    let log = c.stop_cleanly();
    for pid in &stalling {
        assert!(stalled.contains_key(&pid.to_string()), "no stall line for {pid}");
    }
    assert_eq!(final_counter(&log, "exporters::file", "incidents_dropped", "").unwrap_or(0), 0, "{log}");
    let dropped = final_counter(&log, "exporters::file", "dropped", "queue_full").unwrap_or(0);
    assert!(dropped > 0, "the flood did overflow the beat lane, or this test proves nothing");
    let spans: HashMap<i64, usize> = sink.with(|r| {
        r.spans.iter().zip(&r.span_resources).filter(|(s, _)| s.name == "varta.stall").fold(
            HashMap::new(),
            |mut m, (_, res)| {
                *m.entry(int_attr(res, "process.pid").unwrap_or(0)).or_default() += 1;
                m
            },
        )
    });
    for pid in &stalling {
        assert_eq!(spans.get(&i64::from(*pid)), Some(&1), "stall span of {pid}");
    }
    server.kill();
}

/// 300 agents flip their status and panic every beat while another agent
/// stalls: agent-chosen events have their own lane and are dropped first
/// from the span queue, so the real stall's span is never pushed out (they
/// once shared the incident lane, drop-oldest).
#[test]
fn three_hundred_agents_flipping_status_never_push_out_a_real_stall() {
    let _turn = heavy();
    let Rig { sink, server, udp, config } = rig("300ms", "    sending_queue: { queue_size: 64 }");
    let c = Collector::start(&config);
    let stalling = 777_000u32;
    udp_beats(udp, [stalling], 1);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let to: SocketAddr = ([127, 0, 0, 1], udp).into();
    let started = std::time::Instant::now();
    let mut round = 1u64;
    // Flip for well past the stall (300 ms), so it lands in the crowd.
    while started.elapsed() < Duration::from_millis(1500) {
        for pid in 700_000..700_300u32 {
            let status = if round.is_multiple_of(2) { Status::Ok } else { Status::Degraded };
            for frame in [
                Frame::new(status, pid, round, round, 0).encode(),
                Frame::new(Status::Critical, pid, round, varta_proto::NONCE_TERMINAL, 0).encode(),
            ] {
                while sock.send_to(&frame, to).is_err() {
                    std::thread::yield_now();
                }
            }
        }
        round += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    wait_for("the real stall's span", || {
        (!spans_of(&sink, "varta.stall", stalling).is_empty()).then_some(())
    });
    let log = c.stop_cleanly();
    let get = |name: &str, label: &str| final_counter(&log, "exporters::otlp", name, label).unwrap_or(0);
    assert_eq!(get("incidents_dropped", ""), 0, "{log}");
    let panics = final_counter(&log, "pipelines::liveness", "panics", "").unwrap_or(0);
    assert!(panics > 1000, "the crowd reached the collector: {panics} panics");
    assert!(
        get("spans_dropped", "queue_full") > 0,
        "the crowd overflowed the span queue, or this test proves nothing"
    );
    server.kill();
}

/// The shipped `otel-config/examples/otlp.yaml` stays valid (its paths
/// moved into a temp dir), and a broken endpoint is refused with exit 2.
#[test]
fn the_otlp_example_validates() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../otel-config/examples");
    let text = std::fs::read_to_string(root.join("otlp.yaml")).expect("example");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf8");
    let text = text.replace("/var/log/varta", d).replace("/run/varta", d);
    let path = dir.path().join("otlp.yaml");
    std::fs::write(&path, &text).expect("write");
    let out = varta_integration::collector_cmd(&["validate", "--config", path.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(
        &path,
        text.replace("${env:VARTA_OTLP_ENDPOINT:-http://127.0.0.1:4317}", "grpc://127.0.0.1:4317"),
    )
    .expect("write");
    let out = varta_integration::collector_cmd(&["validate", "--config", path.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exporters::otlp") && err.contains("`endpoint`"), "{err}");
}

// ---------------------------------------------------------------------------
// TLS and mutual TLS (rotel's receiver has no TLS; the in-test server does).

/// A throw-away CA, a server certificate for localhost/127.0.0.1 and a
/// client certificate, made with the `openssl` command.
fn make_certs(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").expect("write");
    std::fs::write(dir.join("cli.ext"), "extendedKeyUsage=clientAuth\n").expect("write");
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test-ca"],
    ]
    .concat());
    for (name, ext) in [("server", "san.ext"), ("client", "cli.ext")] {
        let (key, csr, pem) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"));
        run(&[&["req"][..], &ec, &["-keyout", &key, "-out", &csr, "-subj", &format!("/CN={name}")]].concat());
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            ext,
        ]);
    }
}

#[test]
fn mutual_tls_exports_and_a_missing_client_certificate_is_counted_as_failure() {
    let certs = tempfile::tempdir().expect("tempdir");
    make_certs(certs.path());
    let read = |f: &str| std::fs::read(certs.path().join(f)).expect("cert file");
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(read("server.pem"), read("server.key")))
        .client_ca_root(tonic::transport::Certificate::from_pem(read("ca.pem")));
    let port = free_tcp_port();
    let sink = Sink::default();
    let server = OtlpServer::start_with_tls(port, &sink, Some(tls));
    let d = certs.path().display();
    let udp = free_udp_port();
    let c = Collector::start(&config(
        &format!("https://localhost:{port}"),
        udp,
        "200ms",
        &format!(
            "    tls: {{ ca_file: {d}/ca.pem, cert_file: {d}/client.pem, key_file: {d}/client.key }}\n    metrics: {{ interval: 200ms }}"
        ),
    ));
    udp_beats(udp, [6001], 1);
    wait_for("the stall span over mutual TLS", || {
        (!spans_of(&sink, "varta.stall", 6001).is_empty()).then_some(())
    });
    wait_for("metrics over mutual TLS", || metric(&sink, "varta.beats"));
    c.stop_cleanly();

    // Same server, no client certificate: refused by the server, counted.
    let c = Collector::start(&config(
        &format!("https://localhost:{port}"),
        udp,
        "200ms",
        &format!(
            "    tls: {{ ca_file: {d}/ca.pem }}\n    retry_on_failure: {{ enabled: false }}\n    metrics: {{ interval: 200ms }}"
        ),
    ));
    udp_beats(udp, [6002], 1);
    wait_for("the refused export to be counted", || (counter(&c, "spans_failed", "") >= 1).then_some(()));
    assert!(spans_of(&sink, "varta.stall", 6002).is_empty());
    c.stop_cleanly();
    server.kill();
}

/// Client keys of every common type and size are valid: the PEM was once
/// read under the 256-byte hex-key cap, so RSA 2048 and P-384 were refused.
#[test]
fn rsa_2048_and_p384_client_keys_pass_validate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    for (name, newkey) in [
        ("rsa", &["-newkey", "rsa:2048"][..]),
        ("p384", &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"][..]),
    ] {
        let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
        let args = [
            &["req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=client"][..],
            newkey,
            &["-keyout", &key, "-out", &pem],
        ]
        .concat();
        let out = Command::new("openssl").args(&args).current_dir(d).output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.join(&key), std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(std::fs::metadata(d.join(&key)).expect("key").len() > 256, "{name}: a key past the old cap");
        let config = d.join(format!("{name}.yaml"));
        std::fs::write(
            &config,
            format!(
                "receivers:\n  vlp: {{ transport: uds, path: {dir}/varta.sock }}\nprocessors:\n  tracker: {{ threshold: 1s }}\nexporters:\n  otlp:\n    endpoint: https://127.0.0.1:4317\n    tls: {{ ca_file: {dir}/{pem}, cert_file: {dir}/{pem}, key_file: {dir}/{key} }}\nservice:\n  pipelines:\n    liveness: {{ receivers: [vlp], processors: [tracker], exporters: [otlp] }}\n",
                dir = d.display()
            ),
        )
        .expect("write");
        let out = varta_integration::collector_cmd(&["validate", "--config", config.to_str().expect("utf8")]);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// The Collector's `host:port` form is TLS: against a server whose
/// certificate is signed by a CA we were not given, export fails (counted);
/// with `tls.insecure_skip_verify` the same server is accepted.
#[test]
fn host_port_endpoints_verify_the_server_unless_told_not_to() {
    let certs = tempfile::tempdir().expect("tempdir");
    make_certs(certs.path());
    let read = |f: &str| std::fs::read(certs.path().join(f)).expect("cert file");
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(read("server.pem"), read("server.key")));
    let port = free_tcp_port();
    let sink = Sink::default();
    let server = OtlpServer::start_with_tls(port, &sink, Some(tls));
    let udp = free_udp_port();
    let endpoint = format!("localhost:{port}");
    let c = Collector::start(&config(
        &endpoint,
        udp,
        "200ms",
        "    retry_on_failure: { enabled: false }\n    metrics: { enabled: false }",
    ));
    udp_beats(udp, [6101], 1);
    wait_for("the unverifiable export to be counted", || {
        (counter(&c, "spans_failed", "") >= 1).then_some(())
    });
    assert!(spans_of(&sink, "varta.stall", 6101).is_empty());
    c.stop_cleanly();
    let c = Collector::start(&config(
        &endpoint,
        udp,
        "200ms",
        "    tls: { insecure_skip_verify: true }\n    metrics: { enabled: false }",
    ));
    udp_beats(udp, [6102], 1);
    wait_for("the stall span over unverified TLS", || {
        (!spans_of(&sink, "varta.stall", 6102).is_empty()).then_some(())
    });
    c.stop_cleanly();
    server.kill();
}

/// A backend that accepts connections and never answers: shutdown still
/// ends within `service.shutdown_timeout`, cleanly, and the span that was
/// in flight is counted as dropped at shutdown — not lost.
#[test]
fn a_hung_backend_cannot_hold_up_shutdown_and_its_span_is_counted() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            keep.lock().unwrap_or_else(|p| p.into_inner()).push(stream);
        }
    });
    let udp = free_udp_port();
    let cfg = config(
        &format!("http://127.0.0.1:{port}"),
        udp,
        "200ms",
        "    timeout: 10m\n    retry_on_failure: { enabled: false }\n    metrics: { enabled: false }",
    )
    .replace("  telemetry:", "  shutdown_timeout: 1s\n  telemetry:");
    let c = Collector::start(&cfg);
    udp_beats(udp, [7001], 1);
    wait_for("the span to leave the sending queue", || {
        let sent = count(&c, "exporters::otlp", "exported", "") >= 1;
        (sent && counter(&c, "spans_queued", "") == 0).then_some(())
    });
    wait_for("the exporter to connect", || {
        (!held.lock().unwrap_or_else(|p| p.into_inner()).is_empty()).then_some(())
    });
    let log = c.stop_cleanly();
    assert_eq!(final_counter(&log, "exporters::otlp", "spans_dropped", "shutdown"), Some(1), "{log}");
    assert_eq!(final_counter(&log, "exporters::otlp", "spans_exported", "").unwrap_or(0), 0);
}

/// One `otlp` exporter (and one `debug` exporter) listed in two pipelines:
/// it runs once (one set of counters), and each stall span says which
/// pipeline it came from, with that pipeline's threshold.
#[test]
fn one_otlp_exporter_serves_two_pipelines() {
    let Rig { sink, server: _server, udp, config } = rig("300ms", "");
    let text = config
        .replace("  tracker:\n", "  tracker/net:\n    threshold: 500ms\n  tracker:\n")
        .replace("  otlp:\n", "  debug: {}\n  otlp:\n")
        .replace(
            "      receivers: [vlp/uds, vlp/udp]\n      processors: [tracker]\n      exporters: [file, otlp]\n",
            "      receivers: [vlp/uds]\n      processors: [tracker]\n      exporters: [file, otlp, debug]\n    network:\n      receivers: [vlp/udp]\n      processors: [tracker/net]\n      exporters: [otlp, debug]\n",
        );
    let c = Collector::start(&text);
    let mut agent = uds_agent(&c);
    let local = agent.id();
    wait_for("the local agent tracked", || {
        (count(&c, "pipelines::liveness", "beats_accepted", "") > 0).then_some(())
    });
    signal(&agent, libc::SIGSTOP);
    let remote = 4_000_001;
    udp_beats(udp, [remote], 1);
    let local_stall = wait_for("the local stall span", || spans_of(&sink, "varta.stall", local).pop());
    let remote_stall = wait_for("the network stall span", || spans_of(&sink, "varta.stall", remote).pop());
    let pipeline = |s: &Span| str_attr(&s.attributes, "varta.pipeline").map(str::to_owned);
    assert_eq!(pipeline(&local_stall).as_deref(), Some("liveness"));
    assert_eq!(pipeline(&remote_stall).as_deref(), Some("network"));
    assert_ne!(local_stall.trace_id, remote_stall.trace_id);
    // One exporter: its counters hold both pipelines' spans.
    wait_for("both spans counted once", || (counter(&c, "spans_exported", "") >= 2).then_some(()));
    // The debug exporter names each event's pipeline.
    let log = c.log();
    let stall_line = |p: &str, pid: u32| {
        log.lines().any(|l| {
            l.contains("\"kind\":\"stall\"")
                && l.contains(&format!("\"pipeline\":\"{p}\""))
                && l.contains(&format!("\"pid\":{pid}"))
        })
    };
    assert!(stall_line("liveness", local) && stall_line("network", remote), "{log}");
    signal(&agent, libc::SIGCONT);
    let _ = agent.kill();
    let _ = agent.wait();
    c.stop_cleanly();
}

/// The Collector names its exporters `otlp_grpc` and `otlp_http` now (our
/// own gateway config uses `otlp_grpc`); a block copied from a Collector
/// config validates under either name.
#[test]
fn validate_accepts_the_collectors_otlp_grpc_and_otlp_http_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("names.yaml");
    std::fs::write(
        &path,
        format!(
            "receivers:\n  vlp: {{ transport: uds, path: {d}/varta.sock }}\nprocessors:\n  tracker: {{}}\nexporters:\n  otlp_grpc:\n    endpoint: 127.0.0.1:4317\n    tls: {{ insecure: true }}\n  otlp_http/backend:\n    endpoint: http://127.0.0.1:4318\nservice:\n  pipelines:\n    liveness: {{ receivers: [vlp], processors: [tracker], exporters: [otlp_grpc, otlp_http/backend] }}\n",
            d = dir.path().display()
        ),
    )
    .expect("write");
    let out = varta_integration::collector_cmd(&["validate", "--config", path.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listing = varta_integration::collector_cmd(&["components"]);
    let text = String::from_utf8_lossy(&listing.stdout);
    assert!(text.contains("otlp_grpc") && text.contains("otlp_http"), "{text}");
}

/// A minimal OTLP/HTTP backend: answers the first request with `first`
/// (status line and headers) after `first_after`, every later one `200`
/// with an empty body;
/// records each request as its path followed by its header lines.
fn scripted_backend(first: &'static str, first_after: Duration) -> (u16, Arc<Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().expect("clone");
                let mut reader = BufReader::new(stream);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                    let mut length = 0usize;
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 {
                            return;
                        }
                        if header == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = header.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                length = v.trim().parse().unwrap_or(0);
                            }
                            path.push_str(&format!(" {}={}", k.to_ascii_lowercase(), v.trim()));
                        }
                    }
                    let mut body = vec![0u8; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let n = {
                        let mut seen = log.lock().expect("lock");
                        seen.push(path);
                        seen.len()
                    };
                    if n == 1 {
                        std::thread::sleep(first_after);
                    }
                    let answer = if n == 1 { first } else { "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" };
                    if writer.write_all(format!("{answer}\r\n").as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, seen)
}

/// A backend answering `429` with `Retry-After: 18446744073709551615` once
/// panicked the span sender (a `Duration` overflow): one request, then no
/// trace was ever exported again. Now the batch is given up (it does not
/// fit the retry budget), counted, and every later stall is exported.
#[test]
fn a_retry_after_of_two_to_the_64_never_stops_the_exporter() {
    // After 1.5 s: the elapsed time plus 2^64-1 s then overflowed a `Duration`.
    let (port, seen) = scripted_backend(
        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 18446744073709551615\r\nContent-Length: 0\r\n",
        Duration::from_millis(1500),
    );
    let udp = free_udp_port();
    let text = config(&format!("http://127.0.0.1:{port}"), udp, "200ms", "    metrics: { enabled: false }")
        .replace("  otlp:\n", "  otlphttp:\n")
        .replace("exporters: [file, otlp]", "exporters: [file, otlphttp]");
    let c = Collector::start(&text);
    let traces = |seen: &Arc<Mutex<Vec<String>>>| {
        seen.lock().expect("lock").iter().filter(|p| p.starts_with("/v1/traces ")).count()
    };
    udp_beats(udp, [91_001], 1);
    wait_for("the first (refused) traces request", || (traces(&seen) >= 1).then_some(()));
    for (k, pid) in [91_002u32, 91_003, 91_004].into_iter().enumerate() {
        udp_beats(udp, [pid], 1);
        wait_for("a later stall exported", || (traces(&seen) >= 2 + k).then_some(()));
    }
    let log = c.stop_cleanly();
    assert!(!log.contains("panicked"), "{log}");
    assert!(final_counter(&log, "exporters::otlphttp", "spans_failed", "").unwrap_or(0) >= 1, "{log}");
}

/// A reload that changes only an `otlphttp` header (a rotated API key)
/// reported `ok` while every later request carried the old key: settings
/// were compared by their `Debug` text, where header values are hidden.
#[test]
fn a_header_only_reload_sends_the_new_value() {
    let (port, seen) = scripted_backend("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n", Duration::ZERO);
    let udp = free_udp_port();
    let text = |key: &str| {
        config(
            &format!("http://127.0.0.1:{port}"),
            udp,
            "200ms",
            &format!("    metrics: {{ enabled: false }}\n    headers: {{ x-api-key: {key} }}"),
        )
        .replace("  otlp:\n", "  otlphttp:\n")
        .replace("exporters: [file, otlp]", "exporters: [file, otlphttp]")
        .replace("service:\n", "service:\n  pid_file: \"@DIR@/collector.pid\"\n")
    };
    let c = Collector::start(&text("old-key"));
    let keyed = |seen: &Arc<Mutex<Vec<String>>>, key: &str| {
        let wanted = format!("x-api-key={key}");
        seen.lock()
            .expect("lock")
            .iter()
            .filter(|p| p.starts_with("/v1/traces ") && p.contains(&wanted))
            .count()
    };
    udp_beats(udp, [92_001], 1);
    wait_for("a request with the old key", || (keyed(&seen, "old-key") >= 1).then_some(()));
    let dir = c.dir.path().display().to_string();
    std::fs::write(c.path("collector.yaml"), text("new-key").replace("@DIR@", &dir)).expect("rewrite");
    let pid_file = c.path("collector.pid");
    let out = varta_integration::collector_cmd(&["reload", "--pid-file", pid_file.to_str().expect("utf8")]);
    assert!(out.status.success(), "{out:?}");
    wait_for("the reload", || (c.counter("service::service", "reloads", "ok") == 1).then_some(()));
    udp_beats(udp, [92_002], 1);
    wait_for("a request with the new key", || (keyed(&seen, "new-key") >= 1).then_some(()));
    let before = keyed(&seen, "old-key");
    udp_beats(udp, [92_003], 1);
    wait_for("another request with the new key", || (keyed(&seen, "new-key") >= 2).then_some(()));
    assert_eq!(keyed(&seen, "old-key"), before, "the old key is never sent again");
    c.stop_cleanly();
}

/// No configuration, two backends named by the per-signal `OTEL_*`
/// variables, each with its own key: each backend sees only its own key
/// (they were merged, and the traces backend got the metrics key), and
/// metrics arrive at `OTEL_METRIC_EXPORT_INTERVAL` (once ignored).
#[test]
fn per_signal_otel_variables_reach_their_own_backend_with_their_own_key() {
    let ok = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n";
    let (traces_port, traces_seen) = scripted_backend(ok, Duration::ZERO);
    let (metrics_port, metrics_seen) = scripted_backend(ok, Duration::ZERO);
    let runtime = tempfile::tempdir().expect("runtime dir");
    let rt = runtime.path().to_str().expect("utf8");
    let traces_url = format!("http://127.0.0.1:{traces_port}/v1/traces");
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/v1/metrics");
    let c = Collector::start_default_with_args(
        &[
            ("XDG_RUNTIME_DIR", rt),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces_url.as_str()),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-key=traces-key"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", metrics_url.as_str()),
            ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "x-key=metrics-key"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
        ],
        &["--set", "service.telemetry.logs.format=json"],
    );
    let socket = runtime.path().join("varta.sock");
    let mut agent = varta(&["beat", "--socket", socket.to_str().expect("utf8"), "--every", "100ms"])
        .spawn()
        .expect("agent");
    wait_for("the agent tracked", || {
        (c.counter("pipelines::liveness", "beats_accepted", "") > 0).then_some(())
    });
    signal(&agent, libc::SIGSTOP);
    let requests = |seen: &Arc<Mutex<Vec<String>>>, path: &str| -> Vec<String> {
        seen.lock().expect("lock").iter().filter(|r| r.starts_with(&format!("{path} "))).cloned().collect()
    };
    wait_for("the stall at the traces backend", || {
        (!requests(&traces_seen, "/v1/traces").is_empty()).then_some(())
    });
    // At 200 ms, well within the wait (the default interval is 10 s).
    wait_for("five metrics exports", || (requests(&metrics_seen, "/v1/metrics").len() >= 5).then_some(()));
    signal(&agent, libc::SIGCONT);
    let _ = agent.kill();
    let _ = agent.wait();
    c.stop_cleanly();
    let traces = requests(&traces_seen, "/v1/traces");
    let metrics = requests(&metrics_seen, "/v1/metrics");
    assert!(
        traces.iter().all(|r| r.contains("x-key=traces-key") && !r.contains("metrics-key")),
        "{traces:?}"
    );
    assert!(
        metrics.iter().all(|r| r.contains("x-key=metrics-key") && !r.contains("traces-key")),
        "{metrics:?}"
    );
    assert!(requests(&traces_seen, "/v1/metrics").is_empty(), "no metrics at the traces backend");
    assert!(requests(&metrics_seen, "/v1/traces").is_empty(), "no traces at the metrics backend");
}

/// An incident open across a reload that rebuilds the OTLP exporter (its
/// `timeout` changed) arrives as one trace: the trace-id salt is drawn
/// once per process (it was redrawn by every exporter start, splitting the
/// incident in two).
#[test]
fn an_incident_open_across_an_exporter_rebuild_is_one_trace() {
    let Rig { sink, server, config, .. } = rig("300ms", "    timeout: 5s");
    let config = config.replace("service:\n", "service:\n  pid_file: \"@DIR@/collector.pid\"\n");
    let c = Collector::start(&config);
    let agent = uds_agent(&c);
    let pid = agent.id();
    wait_for("the agent tracked", || {
        (c.counter("pipelines::liveness", "beats_accepted", "") > 0).then_some(())
    });
    signal(&agent, libc::SIGSTOP);
    let stall = wait_for("the stall span", || spans_of(&sink, "varta.stall", pid).pop());
    let dir = c.dir.path().display().to_string();
    std::fs::write(
        c.path("collector.yaml"),
        config.replace("timeout: 5s", "timeout: 6s").replace("@DIR@", &dir),
    )
    .expect("rewrite");
    let pid_file = c.path("collector.pid");
    let out = varta_integration::collector_cmd(&["reload", "--pid-file", pid_file.to_str().expect("utf8")]);
    assert!(out.status.success(), "{out:?}");
    wait_for("the reload", || (c.counter("service::service", "reloads", "ok") == 1).then_some(()));
    signal(&agent, libc::SIGCONT);
    let resolved = wait_for("the resolution span", || spans_of(&sink, "varta.stall.resolved", pid).pop());
    assert_eq!(resolved.trace_id, stall.trace_id, "one incident, one trace across the exporter rebuild");
    let mut agent = agent;
    let _ = agent.kill();
    let _ = agent.wait();
    c.stop_cleanly();
    server.kill();
}

/// In the shipped DaemonSet nothing said which node an agent runs on: the
/// kit passes `NODE_NAME` (from `spec.nodeName`), and local agents' spans
/// now carry it as `k8s.node.name`.
#[test]
fn local_agents_carry_the_node_name_the_kit_passes() {
    let Rig { sink, server, config, .. } = rig("300ms", "");
    let c = Collector::start_with(&config, &[("NODE_NAME", "node-7")]);
    let mut agent = uds_agent(&c);
    let pid = agent.id();
    wait_for("the agent tracked", || {
        (c.counter("pipelines::liveness", "beats_accepted", "") > 0).then_some(())
    });
    signal(&agent, libc::SIGSTOP);
    let (resource, _) = wait_for("the stall span", || agent_spans(&sink, "varta.stall", pid).pop());
    assert_eq!(str_attr(&resource, "k8s.node.name"), Some("node-7"));
    signal(&agent, libc::SIGCONT);
    let _ = agent.kill();
    let _ = agent.wait();
    c.stop_cleanly();
    server.kill();
}
