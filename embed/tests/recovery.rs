//! A recovery command's outcome reaches the host twice: as incidents in
//! the callback (started, then succeeded) and as a `varta.recovery` span,
//! child of the incident's `varta.stall` span.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::{Host, TempDir, attr, uds, wait_for};
use opentelemetry::Value;
use opentelemetry::trace::Status;
use varta_client::Client;
use varta_embed::{Engine, EventKind, Incident, RecoveryConfig, RecoveryOutcome, TrackerConfig};
use varta_proto::Status as BeatStatus;

#[test]
fn a_recovery_outcome_is_an_incident_and_a_child_span_of_the_stall() {
    let dir = TempDir::new();
    let socket = dir.join("varta.sock");
    let recovery: RecoveryConfig = serde_json::from_value(serde_json::json!({
        "exec": ["/bin/true", "{pid}"],
        "audit_file": dir.join("audit.log"),
        "on_unknown_cause": "run",
    }))
    .expect("recovery config");
    let host = Host::new();
    let (tx, incidents) = mpsc::channel::<Incident>();
    let engine = Engine::builder()
        .receiver("vlp/uds", uds(&socket))
        .resolver(None)
        .recovery(Some(recovery))
        .tracker(TrackerConfig { threshold: Duration::from_millis(100), ..Default::default() })
        .on_incident(move |i| {
            let _ = tx.send(i.clone());
        })
        .opentelemetry(host.telemetry())
        .start()
        .expect("engine starts");
    let agent = Client::connect_uds(&socket).expect("agent");
    assert!(agent.beat(BeatStatus::Ok, 0).is_sent());

    let mut seen = Vec::new();
    let done = loop {
        let i =
            incidents.recv_timeout(common::PATIENCE).unwrap_or_else(|_| panic!("no outcome; saw {seen:#?}"));
        if let EventKind::Recovery { report, .. } = i.event.kind
            && report.outcome != RecoveryOutcome::Started
        {
            break i;
        }
        seen.push(i);
    };
    let EventKind::Recovery { incident, report } = done.event.kind else { unreachable!("matched above") };
    assert_eq!(report.outcome, RecoveryOutcome::Succeeded, "{done:?}");
    assert_eq!(report.exit_code, Some(0));
    let kinds: Vec<_> = seen.iter().map(|i| i.event.kind).collect();
    assert!(matches!(kinds[0], EventKind::Stall { incident: i, .. } if i == incident), "{kinds:?}");
    assert!(
        matches!(kinds[1], EventKind::Recovery { report, .. } if report.outcome == RecoveryOutcome::Started),
        "{kinds:?}"
    );
    assert_eq!(done.attribute("process.pid"), Some(&Value::I64(i64::from(std::process::id()))));

    let spans = wait_for("the stall and recovery spans", || {
        let s = host.finished_spans();
        (s.len() >= 2).then_some(s)
    });
    let stopped = engine.shutdown(Duration::from_secs(10));
    assert!(stopped.clean, "{stopped:?}");
    let stall = spans.iter().find(|s| s.name == "varta.stall").expect("varta.stall");
    let run = spans.iter().find(|s| s.name == "varta.recovery").expect("varta.recovery");
    assert_eq!(run.parent_span_id, stall.span_context.span_id());
    assert_eq!(run.span_context.trace_id(), stall.span_context.trace_id());
    assert_eq!(attr(run, "varta.incident.id"), Some(&Value::I64(incident as i64)));
    assert_eq!(attr(run, "varta.recovery.outcome"), Some(&Value::from("succeeded")));
    assert_eq!(attr(run, "varta.recovery.program"), Some(&Value::from("true")));
    assert_eq!(attr(run, "varta.recovery.exit_code"), Some(&Value::I64(0)));
    assert_eq!(run.status, Status::Ok);
    assert_eq!(
        run.end_time.duration_since(run.start_time).expect("ordered"),
        Duration::from_nanos(report.duration_ns)
    );
}
