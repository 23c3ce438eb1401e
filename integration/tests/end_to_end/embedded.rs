//! The embedding example (`embed/examples/embedded.rs`) as a user runs
//! it: OTLP/gRPC to a real third-party receiver (rotel), configured only
//! through `OTEL_*` variables; a real agent process (`varta beat`) stalls
//! (SIGSTOP) and resumes (SIGCONT); SIGTERM stops the example cleanly.
//! Fails, never skips, when rotel is missing (see `varta_integration::rotel`).

use std::process::{Command, Stdio};

use varta_integration::rotel::{Rotel, trace_id_of};
use varta_integration::{example, free_tcp_port, send_signal, varta, wait_for};

const SERVICE: &str = "embedded-host";

/// The value of field `name` (`ID`, `Parent ID`) of a printed span block.
fn field(block: &str, name: &str) -> Option<String> {
    block.lines().find_map(|l| {
        let (k, v) = l.trim().split_once(':')?;
        (k.trim() == name).then(|| v.trim().to_owned())
    })
}

#[test]
fn embedded_example_reports_stall_diagnosis_resolution_and_metrics_to_rotel_under_its_service_name() {
    let port = free_tcp_port();
    let rotel = Rotel::start(port);
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("varta.sock");
    let mut cmd = Command::new(example("embedded"));
    cmd.args(["--socket", socket.to_str().expect("utf8"), "--threshold", "300ms"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env("OTEL_SERVICE_NAME", SERVICE)
        .env("OTEL_METRIC_EXPORT_INTERVAL", "200")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for inherited in [
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_SDK_DISABLED",
    ] {
        cmd.env_remove(inherited);
    }
    let host = cmd.spawn().expect("start the example");
    wait_for("the example's socket", || socket.exists().then_some(()));

    let mut agent = varta(&["beat", "--socket", socket.to_str().expect("utf8"), "--every", "50ms"])
        .spawn()
        .expect("spawn varta beat");
    let pid = agent.id();
    let pid_line = format!("-> process.pid: Int({pid})");
    let service_line = format!("-> service.name: Str({SERVICE})");
    wait_for("rotel to print the agent's metric points", || rotel.output().contains(&pid_line).then_some(()));

    send_signal(pid, libc::SIGSTOP);
    let stall = wait_for("rotel to print the varta.stall span", || {
        rotel.span_blocks("varta.stall").into_iter().find(|b| b.contains(&pid_line))
    });
    assert!(stall.contains(&service_line), "under the example's resource: {stall}");
    assert!(stall.contains("STATUS_CODE_ERROR"), "{stall}");
    assert!(stall.contains("varta.stall.detected"), "{stall}");
    assert!(stall.contains("-> varta.agent.transport: Str(uds)"), "{stall}");
    assert!(stall.contains("-> varta.stall.threshold_ns: Int(300000000)"), "{stall}");
    let incident = stall
        .lines()
        .find(|l| l.contains("-> varta.incident.id: Int("))
        .map(str::trim)
        .expect("incident id")
        .to_owned();
    let stall_id = field(&stall, "ID").expect("span id");
    assert_eq!(field(&stall, "Parent ID").as_deref(), Some(""), "a root span: {stall}");

    let diagnosis = wait_for("rotel to print the diagnosis", || {
        rotel.span_blocks("varta.stall.diagnosis").into_iter().find(|b| b.contains(&pid_line))
    });
    assert!(diagnosis.contains("-> varta.stall.cause: Str(stopped)"), "{diagnosis}");
    assert_eq!(field(&diagnosis, "Parent ID"), Some(stall_id.clone()), "{diagnosis}");

    send_signal(pid, libc::SIGCONT);
    let resolved = wait_for("rotel to print the resolution", || {
        rotel.span_blocks("varta.stall.resolved").into_iter().find(|b| b.contains(&pid_line))
    });
    assert!(resolved.contains(&service_line), "{resolved}");
    assert!(resolved.contains("STATUS_CODE_OK"), "{resolved}");
    assert!(resolved.contains(&incident), "the incident id on every span: {resolved}");
    assert_eq!(field(&resolved, "Parent ID"), Some(stall_id), "child of the stall: {resolved}");
    assert_eq!(trace_id_of(&resolved), trace_id_of(&stall), "one trace per incident");

    wait_for("the liveness metrics under the example's service.name", || {
        rotel.metric_blocks().into_iter().find(|b| {
            b.contains(&service_line)
                && [
                    "varta.beats",
                    "varta.stalls",
                    "varta.resumes",
                    "varta.agents.tracked",
                    "varta.stall.duration",
                ]
                .iter()
                .all(|m| b.contains(&format!("Name: {m}\n")))
        })
    });

    let _ = agent.kill();
    let _ = agent.wait();
    send_signal(host.id(), libc::SIGTERM);
    let out = host.wait_with_output().expect("example exits");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "exit 0 on SIGTERM: {:?}\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains(&format!("embedded: pid {pid} stalled")), "the callback saw it: {stdout}");
    assert!(stdout.contains("embedded: stopped"), "{stdout}");
    assert!(!socket.exists(), "the socket file is removed");
}
