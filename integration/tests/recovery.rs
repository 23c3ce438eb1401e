//! The `recovery` processor with real agents and real child processes: it
//! acts once per stall with the pid substituted, refuses what it must
//! (unauthenticated origins, stopped processes, caps), kills commands that
//! hang, and leaves an audit log `varta-collector audit verify` can prove
//! — through a kill -9, a torn record and an edited byte.

use std::process::{Child, Command, Stdio};

use varta_integration::{Collector, binary, collector_cmd, free_udp_port, read_events, wait_for};
use varta_proto::Status;

fn config(exec: &str, extra: &str, udp_port: u16) -> String {
    format!(
        r#"receivers:
  vlp/uds: {{ transport: uds, path: "@DIR@/varta.sock" }}
  vlp/udp: {{ transport: udp, endpoint: "127.0.0.1:{udp_port}", accept_unauthenticated: true }}
processors:
  tracker: {{ threshold: 300ms }}
  resolver: {{ diagnosis: {{ window: 100ms }} }}
  recovery:
    exec: {exec}
    audit_file: "@DIR@/audit.tsv"
{extra}
exporters:
  file: {{ path: "@DIR@/events.tsv", beats: false }}
service:
  pipelines:
    liveness: {{ receivers: [vlp/uds, vlp/udp], processors: [tracker, resolver, recovery], exporters: [file] }}
  telemetry: {{ logs: {{ format: json }} }}
"#
    )
}

/// Appends "PID CAUSE" to @DIR@/runs.
const RECORD_RUN: &str =
    r#"["/bin/sh", "-c", "echo \"$1 $2\" >> @DIR@/runs", "recover", "{pid}", "{cause}"]"#;

fn stall_agent(c: &Collector, mode: &str) -> Child {
    Command::new(binary("stall-agent"))
        .args([c.path("varta.sock").to_str().expect("utf8"), mode, "3"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("stall-agent")
}

fn recovery_lines(c: &Collector, pid: u32) -> Vec<(String, String)> {
    let pid = pid.to_string();
    read_events(&c.path("events.tsv"))
        .into_iter()
        .filter(|e| e.kind == "recovery" && e.pid == pid)
        .map(|e| (e.status, e.payload))
        .collect()
}

fn audit(c: &Collector) -> String {
    std::fs::read_to_string(c.path("audit.tsv")).unwrap_or_default()
}

fn verify(files: &[&std::path::Path]) -> std::process::Output {
    let mut args = vec!["audit".to_owned(), "verify".to_owned()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    collector_cmd(&refs)
}

fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_stalled_local_agent_is_recovered_once_with_its_pid() {
    let c = Collector::start(&config(RECORD_RUN, "    debounce: 10s", free_udp_port()));
    let agent = stall_agent(&c, "sleep");
    let pid = agent.id();
    let finished = wait_for("the recovery to finish", || {
        recovery_lines(&c, pid).into_iter().find(|(outcome, _)| outcome == "succeeded")
    });
    assert!(finished.1.contains("program=sh") && finished.1.contains("exit=code=0"), "{finished:?}");
    let runs = std::fs::read_to_string(c.path("runs")).expect("the command ran");
    assert_eq!(runs.trim(), format!("{pid} waiting"), "pid and cause substituted");
    let lines = recovery_lines(&c, pid);
    assert_eq!(lines.iter().filter(|(o, _)| o == "started").count(), 1, "{lines:?}");
    assert_eq!(c.counter("pipelines::liveness", "recovery_outcomes", "succeeded"), 1);
    let text = audit(&c);
    assert!(text.contains("\tspawn\t") && text.contains("\tcomplete\t"), "{text}");
    kill(agent);
    let (status, _) = c.stop();
    assert!(status.success());
}

#[test]
fn unauthenticated_and_stopped_agents_are_refused_and_audited() {
    let udp_port = free_udp_port();
    let c = Collector::start(&config(RECORD_RUN, "", udp_port));
    // A plain-UDP agent: any host can claim any pid.
    let udp = varta_client::Client::connect_udp(("127.0.0.1", udp_port)).expect("udp client");
    assert!(matches!(udp.beat(Status::Ok, 0), varta_client::BeatOutcome::Sent));
    let me = std::process::id().to_string();
    wait_for("the UDP agent's refusal", || {
        read_events(&c.path("events.tsv"))
            .into_iter()
            .find(|e| e.kind == "recovery" && e.pid == me && e.payload.contains("reason=unauthenticated"))
    });
    // A SIGSTOPped agent (someone is debugging it) is left alone.
    let agent = stall_agent(&c, "sleep");
    let pid = agent.id();
    wait_for("the agent's first beat", || {
        read_events(&c.path("events.tsv"))
            .iter()
            .any(|e| e.pid == pid.to_string())
            .then_some(())
            .or_else(|| (c.counter("pipelines::liveness", "agents_tracked", "") >= 2).then_some(()))
    });
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
    let refused = wait_for("the stopped agent's refusal", || {
        recovery_lines(&c, pid).into_iter().find(|(o, _)| o == "refused")
    });
    assert!(refused.1.contains("reason=stopped"), "{refused:?}");
    assert!(!c.path("runs").exists(), "nothing was run");
    assert_eq!(c.counter("pipelines::liveness", "recovery_refused", "unauthenticated"), 1);
    assert_eq!(c.counter("pipelines::liveness", "recovery_refused", "stopped"), 1);
    let text = audit(&c);
    assert!(text.contains("refused:unauthenticated") && text.contains("refused:stopped"), "{text}");
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
    kill(agent);
}

#[test]
fn a_hanging_command_is_killed_at_its_timeout() {
    let c = Collector::start(&config(
        r#"["/bin/sleep", "60"]"#,
        "    timeout: 300ms\n    kill_grace: 200ms",
        free_udp_port(),
    ));
    let agent = stall_agent(&c, "sleep");
    let pid = agent.id();
    let done =
        wait_for("the timeout", || recovery_lines(&c, pid).into_iter().find(|(o, _)| o == "timed_out"));
    assert!(done.1.contains("exit=signal=15"), "SIGTERM first: {done:?}");
    assert_eq!(c.counter("pipelines::liveness", "recovery_outcomes", "timed_out"), 1);
    kill(agent);
}

#[test]
fn a_burst_of_stalls_respects_the_caps() {
    let udp_port = free_udp_port();
    let c = Collector::start(&config(
        r#"["/bin/true"]"#,
        "    allow_unauthenticated: true\n    max_outstanding: 4\n    max_spawns_per_second: 10",
        udp_port,
    ));
    // 1,000 simulated UDP agents beat once and stall together.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    for pid in 10_000..11_000u32 {
        let frame = varta_proto::Frame::new(Status::Ok, pid, 1, 1, 0).encode();
        sock.send_to(&frame, ("127.0.0.1", udp_port)).expect("send");
    }
    let total = |c: &Collector| {
        let started = c.counter("pipelines::liveness", "recoveries_started", "");
        let rate = c.counter("pipelines::liveness", "recovery_refused", "rate");
        let outstanding = c.counter("pipelines::liveness", "recovery_refused", "outstanding");
        (started, rate + outstanding)
    };
    let (started, capped) = wait_for("every stall decided", || {
        let (s, r) = total(&c);
        (s + r == 1_000).then_some((s, r))
    });
    assert!(started <= 20, "the rate cap (10/s, burst 10) held: {started} started");
    assert!(capped >= 980, "{capped}");
}

#[test]
fn the_audit_log_survives_kill_9_and_detects_edits() {
    // The audit file outlives both collectors (each has a temp dir of its own).
    let keep = tempfile::tempdir().expect("tempdir");
    let audit_path = keep.path().join("audit.tsv");
    let text =
        config(RECORD_RUN, "", free_udp_port()).replace("@DIR@/audit.tsv", &audit_path.display().to_string());
    let c = Collector::start(&text);
    let agent = stall_agent(&c, "sleep");
    let pid = agent.id();
    wait_for("a finished recovery", || recovery_lines(&c, pid).into_iter().find(|(o, _)| o == "succeeded"));
    kill(agent);
    // kill -9 the collector, then tear the last record as a crash mid-write would.
    c.signal(libc::SIGKILL);
    drop(c); // reaps it
    let before = std::fs::read_to_string(&audit_path).expect("audit");
    let records_before = before.lines().filter(|l| !l.starts_with('#')).count();
    std::fs::write(&audit_path, format!("{before}99\t1.0\tspawn\t7")).expect("tear");
    let out = verify(&[&audit_path]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("torn"), "{out:?}");

    // A restarted collector cuts the torn record off and continues the sequence.
    let c2 = Collector::start(&text);
    let after = wait_for("the torn and boot records", || {
        let t = std::fs::read_to_string(&audit_path).ok()?;
        (t.lines().filter(|l| !l.starts_with('#')).count() >= records_before + 2).then_some(t)
    });
    assert!(after.contains("\ttorn\t") && after.ends_with('\n'), "{after}");
    let seqs: Vec<u64> = after
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split('\t').next()?.parse().ok())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "one sequence across the restart: {seqs:?}");
    let out = verify(&[&audit_path]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let (status, _) = c2.stop();
    assert!(status.success());

    // Any edited byte of one record is found, at that record.
    let text = std::fs::read_to_string(&audit_path).expect("audit");
    let edited = text.replacen("\tspawn\t", "\tspawN\t", 1);
    std::fs::write(&audit_path, edited).expect("edit");
    let out = verify(&[&audit_path]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("broken") && said.contains("edited"), "{said}");
    let missing = verify(&[&keep.path().join("no-such-file")]);
    assert_eq!(missing.status.code(), Some(2));
}
