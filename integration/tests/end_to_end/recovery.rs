//! The `recovery` processor with real agents and real child processes: it
//! acts once per stall with the pid substituted, refuses what it must
//! (unauthenticated origins, stopped processes, caps), kills commands that
//! hang, and leaves an audit log `varta-collector audit verify` can prove
//! — through a kill -9, a torn record and an edited byte.

use std::process::{Child, Command, Stdio};

use varta_integration::{
    Collector, binary, collector_cmd, free_udp_port, keygen, read_events, reap, send_signal, wait_for,
};
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

/// A `sleep` stall-agent whose `OTEL_SERVICE_NAME` is `service`.
fn named_agent(c: &Collector, service: &str) -> Child {
    Command::new(binary("stall-agent"))
        .args([c.path("varta.sock").to_str().expect("utf8"), "sleep", "3"])
        .env("OTEL_SERVICE_NAME", service)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("stall-agent")
}

/// Whether a live (not zombie) process has this pid.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// The records of the audit text, split into columns.
fn records(text: &str) -> Vec<Vec<String>> {
    text.lines().filter(|l| !l.starts_with('#')).map(|l| l.split('\t').map(str::to_owned).collect()).collect()
}

#[test]
fn hostile_service_names_are_refused_and_a_well_named_agent_is_recovered_once() {
    let exec = r#"["/bin/sh", "-c", "echo \"$1\" >> @DIR@/runs", "recover", "{service}"]"#;
    let c = Collector::start(&config(
        exec,
        "    debounce: 1m\n    allowed_values: { service: [checkout] }",
        free_udp_port(),
    ));
    let long = "a".repeat(300);
    let hostile = ["*", "--force", "../../x", long.as_str(), ""];
    let mut agents: Vec<Child> = hostile.iter().map(|name| named_agent(&c, name)).collect();
    let good = named_agent(&c, "checkout");
    let good_pid = good.id();
    agents.push(good);
    wait_for("every stall decided", || {
        let refused = c.counter("pipelines::liveness", "recovery_refused", "unsafe_value");
        let done = c.counter("pipelines::liveness", "recovery_outcomes", "succeeded");
        (refused >= 5 && done >= 1).then_some(())
    });
    assert_eq!(c.counter("pipelines::liveness", "recovery_refused", "unsafe_value"), 5);
    assert_eq!(c.counter("pipelines::liveness", "recoveries_started", ""), 1);
    let runs = std::fs::read_to_string(c.path("runs")).expect("the good agent's command ran");
    assert_eq!(runs, "checkout\n", "only the well-named agent, exactly once");
    for agent in &agents[..5] {
        let lines = recovery_lines(&c, agent.id());
        assert!(
            lines.iter().any(|(o, p)| o == "refused" && p.contains("reason=unsafe_value")),
            "agent {}: {lines:?}",
            agent.id()
        );
    }
    let text = audit(&c);
    assert_eq!(text.matches("unsafe_value: {service}").count(), 5, "{text}");
    for raw in ["--force", "../../x", &long] {
        assert!(!text.contains(raw), "the raw value {raw:?} is never written: {text}");
        assert!(!c.log().contains(raw), "the raw value {raw:?} is never logged");
    }
    // The program column is the program that ran, as a path.
    let spawn = records(&text).into_iter().find(|r| r[2] == "spawn").expect("a spawn record");
    assert_eq!((spawn[4].as_str(), spawn[8].as_str()), (good_pid.to_string().as_str(), "/bin/sh"));
    for agent in agents {
        reap(agent);
    }
}

#[test]
fn a_placeholder_in_the_program_is_refused_by_validate() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The file exists under that very name, so only the rule refuses it.
    let program = dir.path().join("{service}");
    std::fs::copy("/bin/true", &program).expect("a program named {service}");
    let path = dir.path().join("recovery.yaml");
    let exec = format!(r#"["{}", "{{pid}}"]"#, program.display());
    let text = config(&exec, "", free_udp_port()).replace("@DIR@", &dir.path().display().to_string());
    std::fs::write(&path, text).expect("write");
    let out = collector_cmd(&["validate", "--config", path.to_str().expect("utf8")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("exec[0]") && stderr.contains("placeholder"), "{stderr}");
}

/// A command that starts a background `sleep`, records its pid, and, like
/// the sleep, ignores SIGTERM (an ignored signal stays ignored across exec).
const STUBBORN: &str = r#"["/bin/sh", "-c", "trap '' TERM; sleep 60 & echo $! > @DIR@/bg; wait; wait"]"#;

fn background_pid(c: &Collector) -> u32 {
    wait_for("the background sleep", || std::fs::read_to_string(c.path("bg")).ok()?.trim().parse().ok())
}

#[test]
fn a_command_group_that_ignores_sigterm_is_gone_after_timeout_and_kill_grace() {
    let c = Collector::start(&config(STUBBORN, "    timeout: 300ms\n    kill_grace: 300ms", free_udp_port()));
    let agent = stall_agent(&c, "sleep");
    let pid = agent.id();
    let bg = background_pid(&c);
    let done =
        wait_for("the timeout", || recovery_lines(&c, pid).into_iter().find(|(o, _)| o == "timed_out"));
    assert!(done.1.contains("exit=signal=9"), "SIGTERM was ignored, SIGKILL ended it: {done:?}");
    assert!(!alive(bg), "the background sleep {bg} outlived its command's timeout");
    reap(agent);
}

#[test]
fn shutdown_with_default_settings_kills_the_command_group_and_records_it() {
    let keep = tempfile::tempdir().expect("tempdir");
    let audit_path = keep.path().join("audit.tsv");
    let text =
        config(STUBBORN, "", free_udp_port()).replace("@DIR@/audit.tsv", &audit_path.display().to_string());
    let c = Collector::start(&text);
    let agent = stall_agent(&c, "sleep");
    let pid = agent.id();
    let bg = background_pid(&c);
    // Default timeout (30 s), kill_grace (5 s) and shutdown_timeout (5 s).
    let (status, log) = c.stop();
    assert!(status.success(), "shutdown was clean: {log}");
    assert!(!alive(bg), "the background sleep {bg} outlived the collector");
    let text = std::fs::read_to_string(&audit_path).expect("audit");
    let complete = records(&text).into_iter().find(|r| r[2] == "complete").expect("a complete record");
    assert_eq!(complete[4], pid.to_string(), "{text}");
    assert_eq!(complete[9], "timed_out", "{text}");
    assert_eq!(verify(&[&audit_path]).status.code(), Some(0));
    reap(agent);
}

#[test]
fn a_second_stall_within_debounce_is_refused() {
    // This test process is the agent: it beats, stalls, beats again
    // (a resume) and stalls again within the debounce.
    let c = Collector::start(&config(RECORD_RUN, "    debounce: 1m", free_udp_port()));
    let me = std::process::id();
    let client = varta_client::Client::connect_uds(c.path("varta.sock")).expect("uds client");
    let beat = || assert!(matches!(client.beat(Status::Ok, 0), varta_client::BeatOutcome::Sent));
    beat();
    wait_for("the first recovery", || recovery_lines(&c, me).into_iter().find(|(o, _)| o == "succeeded"));
    beat();
    wait_for("the resume", || {
        read_events(&c.path("events.tsv")).into_iter().find(|e| e.kind == "resume" && e.pid == me.to_string())
    });
    let refused = wait_for("the second stall's decision", || {
        let decided: Vec<(String, String)> =
            recovery_lines(&c, me).into_iter().filter(|(o, _)| o == "started" || o == "refused").collect();
        decided.into_iter().nth(1)
    });
    assert!(refused.1.contains("reason=debounce"), "{refused:?}");
    let runs = std::fs::read_to_string(c.path("runs")).expect("runs");
    assert_eq!(runs.lines().count(), 1, "{runs}");
    assert_eq!(c.counter("pipelines::liveness", "recovery_refused", "debounce"), 1);
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
    reap(agent);
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
    send_signal(pid, libc::SIGSTOP);
    let refused = wait_for("the stopped agent's refusal", || {
        recovery_lines(&c, pid).into_iter().find(|(o, _)| o == "refused")
    });
    assert!(refused.1.contains("reason=stopped"), "{refused:?}");
    assert!(!c.path("runs").exists(), "nothing was run");
    assert_eq!(c.counter("pipelines::liveness", "recovery_refused", "unauthenticated"), 1);
    assert_eq!(c.counter("pipelines::liveness", "recovery_refused", "stopped"), 1);
    let text = audit(&c);
    assert!(text.contains("refused:unauthenticated") && text.contains("refused:stopped"), "{text}");
    send_signal(pid, libc::SIGCONT);
    reap(agent);
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
    reap(agent);
}

#[test]
fn a_burst_of_stalls_respects_the_caps() {
    let udp_port = free_udp_port();
    let c = Collector::start(&config(
        r#"["/bin/true"]"#,
        // `interval`: a thousand fdatasyncs would make this a test of the disk.
        "    allow_unauthenticated: true\n    max_outstanding: 4\n    max_spawns_per_second: 10\n    audit_sync: interval",
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
    // The cap is 10 a second with a burst of 10: over the span the
    // decisions took (however fast the disk), at most 10 + 10 × span.
    let times: Vec<f64> = records(&audit(&c))
        .into_iter()
        .filter(|r| {
            r[2] == "spawn" || r[9].starts_with("refused:rate") || r[9].starts_with("refused:outstanding")
        })
        .filter_map(|r| r[1].parse().ok())
        .collect();
    assert_eq!(times.len() as u64, started + capped, "every decision is audited");
    let span =
        times.iter().cloned().fold(f64::MIN, f64::max) - times.iter().cloned().fold(f64::MAX, f64::min);
    let allowed = 10 + (10.0 * span).ceil() as u64;
    assert!(started <= allowed, "the rate cap held: {started} started in {span:.3} s (at most {allowed})");
    assert!(started >= 10, "the burst ran: {started}");
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
    reap(agent);
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

#[test]
fn an_excluded_cause_is_refused_even_when_its_diagnosis_takes_longer_than_two_seconds() {
    // The wait for the diagnosis follows its window (3 s here), so the
    // spinning cause the operator left out of `on_causes` is known in time.
    let text = config(RECORD_RUN, "    on_causes: [waiting]", free_udp_port())
        .replace("window: 100ms", "window: 3s");
    let c = Collector::start(&text);
    let agent = stall_agent(&c, "spin");
    let pid = agent.id();
    let refused = wait_for("the decision", || {
        recovery_lines(&c, pid).into_iter().find(|(o, _)| o == "refused" || o == "started")
    });
    assert!(refused.0 == "refused" && refused.1.contains("reason=cause"), "{refused:?}");
    assert!(!c.path("runs").exists(), "nothing was run");
    reap(agent);
}

#[test]
fn a_stall_without_a_cause_is_refused_when_on_causes_is_given() {
    let text = config(RECORD_RUN, "    on_causes: [waiting]", free_udp_port())
        .replace("diagnosis: { window: 100ms }", "diagnosis: { enabled: false }");
    let c = Collector::start(&text);
    let agent = stall_agent(&c, "sleep");
    let pid = agent.id();
    let refused = wait_for("the decision", || {
        recovery_lines(&c, pid).into_iter().find(|(o, _)| o == "refused" || o == "started")
    });
    assert!(refused.0 == "refused" && refused.1.contains("reason=cause_unknown"), "{refused:?}");
    assert!(!c.path("runs").exists(), "nothing was run");
    reap(agent);
}

#[test]
fn a_stopped_agent_whose_diagnosis_never_comes_is_still_not_recovered() {
    // No diagnosis, and `on_causes` is not given, so an unknown cause
    // runs: only the look at /proc right before spawning sees the SIGSTOP.
    let text = config(RECORD_RUN, "", free_udp_port())
        .replace("diagnosis: { window: 100ms }", "diagnosis: { enabled: false }");
    let c = Collector::start(&text);
    let agent = stall_agent(&c, "sleep");
    let pid = agent.id();
    wait_for("the agent's first beat", || {
        (c.counter("pipelines::liveness", "agents_tracked", "") >= 1).then_some(())
    });
    send_signal(pid, libc::SIGSTOP);
    let refused = wait_for("the decision", || {
        recovery_lines(&c, pid).into_iter().find(|(o, _)| o == "refused" || o == "started")
    });
    assert!(refused.0 == "refused" && refused.1.contains("reason=stopped"), "{refused:?}");
    assert!(!c.path("runs").exists(), "nothing was run");
    send_signal(pid, libc::SIGCONT);
    reap(agent);
}

#[test]
fn a_reload_during_a_running_recovery_leaves_one_verifiable_chain() {
    // The command ignores SIGTERM, so the old runner needs all of
    // kill_grace (5 s) and more — longer than shutdown_timeout (5 s).
    let text = config(STUBBORN, "", free_udp_port());
    let c = Collector::start(&text);
    let agent = stall_agent(&c, "sleep");
    let pid = agent.id();
    background_pid(&c);
    // A changed recovery setting replaces the runner.
    let dir = c.dir.path().display().to_string();
    let changed = text.replace("@DIR@", &dir).replace("    audit_file:", "    debounce: 2s\n    audit_file:");
    std::fs::write(c.path("collector.yaml"), changed).expect("rewrite config");
    c.signal(libc::SIGHUP);
    c.wait_notification("READY=1 after the reload", |m| m.contains("READY=1"));
    let text = wait_for("the new runner's boot record", || {
        let t = audit(&c);
        (records(&t).iter().filter(|r| r[2] == "boot").count() == 2).then_some(t)
    });
    let complete = records(&text).into_iter().find(|r| r[2] == "complete").expect("the old child's record");
    assert_eq!(complete[4], pid.to_string(), "{text}");
    let out = verify(&[&c.path("audit.tsv")]);
    assert_eq!(out.status.code(), Some(0), "one writer, one chain: {out:?}\n{text}");
    reap(agent);
}

#[test]
fn audit_verify_refuses_a_fifo_and_catches_bad_bytes_a_cut_newest_file_and_a_forged_keyed_log() {
    let keep = tempfile::tempdir().expect("tempdir");
    let key = keep.path().join("audit.key");
    varta_integration::write_secret(&key, &"ab".repeat(32));
    let audit_path = keep.path().join("audit.tsv");
    let extra = format!("    audit_key_file: \"{}\"\n    audit_rotate_bytes: 300", key.display());
    let text = config(RECORD_RUN, &extra, free_udp_port())
        .replace("@DIR@/audit.tsv", &audit_path.display().to_string());
    let c = Collector::start(&text);
    let agent = stall_agent(&c, "sleep");
    wait_for("a finished recovery", || {
        recovery_lines(&c, agent.id()).into_iter().find(|(o, _)| o == "succeeded")
    });
    reap(agent);
    let (status, _) = c.stop();
    assert!(status.success());
    let older = keep.path().join("audit.tsv.1");
    assert!(older.exists(), "rotated: {}", std::fs::read_to_string(&audit_path).unwrap_or_default());
    let key_arg = key.to_str().expect("utf8");
    let verify_keyed = |files: &[&std::path::Path]| {
        let mut args = vec!["audit", "verify", "--key-file", key_arg];
        args.extend(files.iter().map(|f| f.to_str().expect("utf8")));
        collector_cmd(&args)
    };
    let files = [older.as_path(), audit_path.as_path()];
    assert_eq!(verify_keyed(&files).status.code(), Some(0), "{:?}", verify_keyed(&files));
    assert_eq!(verify(&files).status.code(), Some(2), "a keyed log needs its key");

    // A forger without the key writes a whole valid log of its own (a
    // plain chain, as the collector would without a key): never verifies
    // with the key.
    let forged = keep.path().join("forged.tsv");
    let plain =
        config(RECORD_RUN, "", free_udp_port()).replace("@DIR@/audit.tsv", forged.to_str().expect("utf8"));
    let (status, _) = Collector::start(&plain).stop();
    assert!(status.success());
    assert_eq!(verify(&[&forged]).status.code(), Some(0), "a valid plain log");
    let said = verify_keyed(&[&forged]);
    assert_eq!(said.status.code(), Some(1), "{said:?}");
    let newest = std::fs::read(&audit_path).expect("read");
    let header = newest.split(|&b| b == b'\n').next().expect("header").to_vec();

    // A non-UTF-8 byte in a record is a broken log, not an unreadable one.
    let mut bad = newest.clone();
    let at = bad.len() - 2;
    bad[at] = 0xff;
    std::fs::write(&audit_path, &bad).expect("write");
    let said = verify_keyed(&files);
    assert_eq!(said.status.code(), Some(1), "{said:?}");
    assert!(String::from_utf8_lossy(&said.stdout).contains("UTF-8"), "{said:?}");

    // The newest file cut back to its header, after an older one with records.
    std::fs::write(&audit_path, [&header[..], b"\n"].concat()).expect("write");
    let said = verify_keyed(&files);
    assert_eq!(said.status.code(), Some(1), "{said:?}");

    // A FIFO at the path: a clear error (exit 2), not a hang.
    let fifo = keep.path().join("fifo.tsv");
    let c_path = std::ffi::CString::new(fifo.to_str().expect("utf8")).expect("path");
    // SAFETY: mkfifo(3) with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let said = verify(&[&fifo]);
    assert_eq!(said.status.code(), Some(2), "{said:?}");
    assert!(String::from_utf8_lossy(&said.stderr).contains("not a regular file"), "{said:?}");
}

#[test]
fn a_fifo_at_the_audit_path_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("audit.tsv");
    let c_path = std::ffi::CString::new(fifo.to_str().expect("utf8")).expect("path");
    // SAFETY: mkfifo(3) with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let path = dir.path().join("recovery.yaml");
    let text = config(RECORD_RUN, "", free_udp_port())
        .replace("@DIR@/audit.tsv", fifo.to_str().expect("utf8"))
        .replace("@DIR@", &dir.path().display().to_string());
    std::fs::write(&path, text).expect("write");
    let out = varta_integration::collector_cmd(&["--config", path.to_str().expect("utf8")]);
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a regular file"), "{out:?}");
}

#[test]
fn output_written_right_before_exit_is_captured_and_logged_escaped() {
    let exec = r#"["/bin/sh", "-c", "printf 'line one\\nline two'; printf 'oops' >&2"]"#;
    let c = Collector::start(&config(exec, "", free_udp_port()));
    let agent = stall_agent(&c, "sleep");
    let done = wait_for("the recovery", || {
        recovery_lines(&c, agent.id()).into_iter().find(|(o, _)| o == "succeeded")
    });
    assert!(done.1.contains("stdout_bytes=17;stderr_bytes=4"), "every byte read: {done:?}");
    let line = wait_for("the output log line", || {
        c.log().lines().find(|l| l.contains("recovery command output")).map(str::to_owned)
    });
    // One log line; the newline inside the output is escaped (JSON then escapes the backslash).
    assert!(line.contains(r"line one\\nline two"), "{line}");
    reap(agent);
}

#[test]
fn an_agent_whose_start_time_was_never_read_is_not_acted_on() {
    // The collector is stopped while the agent beats once and exits, so
    // its start time cannot be read at its first beat: its pid may
    // already be another process's by the time it stalls.
    let c = Collector::start(&config(RECORD_RUN, "", free_udp_port()));
    c.signal(libc::SIGSTOP);
    let sock = c.path("varta.sock");
    let mut agent = varta_integration::varta(&["beat", "--socket", sock.to_str().expect("utf8")])
        .stdout(Stdio::null())
        .spawn()
        .expect("varta beat");
    let pid = agent.id();
    let status = agent.wait().expect("wait");
    c.signal(libc::SIGCONT);
    assert!(status.success(), "the beat was sent");
    let decided = wait_for("the decision", || {
        recovery_lines(&c, pid).into_iter().find(|(o, _)| o == "refused" || o == "started")
    });
    assert!(decided.0 == "refused" && decided.1.contains("reason=identity_unknown"), "{decided:?}");
    assert!(!c.path("runs").exists(), "nothing was run");
    let diagnosis = read_events(&c.path("events.tsv"))
        .into_iter()
        .find(|e| e.kind == "diagnosis" && e.pid == pid.to_string())
        .expect("a diagnosis line");
    assert_eq!(diagnosis.status, "unknown", "{diagnosis:?}");
    assert_eq!(c.counter("pipelines::liveness", "recovery_refused", "identity_unknown"), 1);
}

// ---------------------------------------------------------------------------
// Targets the operator chose (trusted selectors, allow-lists, claimed pids).

/// Appends the command's one argument to @DIR@/runs.
fn record_arg(placeholder: &str) -> String {
    format!(r#"["/bin/sh", "-c", "echo \"$1\" >> @DIR@/runs", "recover", "{placeholder}"]"#)
}

fn runs(c: &Collector) -> String {
    std::fs::read_to_string(c.path("runs")).unwrap_or_default()
}

fn refused_for(c: &Collector, pid: u32, reason: &str) -> (String, String) {
    wait_for(&format!("the {reason} refusal of {pid}"), || {
        recovery_lines(c, pid)
            .into_iter()
            .find(|(o, p)| o == "refused" && p.contains(&format!("reason={reason}")))
    })
}

#[test]
fn an_agent_chosen_target_without_an_allow_list_fails_validate_and_never_runs() {
    // validate: exit 2, naming the trusted selector and the allow-list.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("recovery.yaml");
    let text = config(&record_arg("{service}"), "", free_udp_port())
        .replace("@DIR@", &dir.path().display().to_string());
    std::fs::write(&path, text).expect("write");
    let out = collector_cmd(&["validate", "--config", path.to_str().expect("utf8")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("{unit}") && stderr.contains("allowed_values") && stderr.contains("{service}"),
        "{stderr}"
    );

    // A running collector keeps monitoring and refuses every such run.
    let c = Collector::start(&config(&record_arg("{service}"), "", free_udp_port()));
    let agents = [named_agent(&c, "checkout"), named_agent(&c, "systemd-reboot")];
    for a in &agents {
        refused_for(&c, a.id(), "not_allowed");
    }
    assert_eq!(c.counter("pipelines::liveness", "recovery_refused", "not_allowed"), 2);
    assert_eq!(c.counter("pipelines::liveness", "recoveries_started", ""), 0);
    assert_eq!(runs(&c), "", "no command ran");
    // Stalls are still reported: monitoring never stops over a recovery setting.
    for a in &agents {
        assert!(
            !read_events(&c.path("events.tsv"))
                .iter()
                .all(|e| e.pid != a.id().to_string() || e.kind != "stall")
        );
    }
    let log = c.log();
    assert_eq!(log.matches("with no `allowed_values.service` list").count(), 1, "logged once:\n{log}");
    for a in agents {
        reap(a);
    }
}

#[test]
fn an_allow_list_recovers_good_svc_and_refuses_systemd_reboot_audited() {
    let c = Collector::start(&config(
        &record_arg("{service}.service"),
        "    allowed_values: { service: [\"good-*\"] }",
        free_udp_port(),
    ));
    let good = named_agent(&c, "good-svc");
    let evil = named_agent(&c, "systemd-reboot");
    wait_for("the good agent's recovery", || {
        recovery_lines(&c, good.id()).into_iter().find(|(o, _)| o == "succeeded")
    });
    refused_for(&c, evil.id(), "not_allowed");
    assert_eq!(runs(&c), "good-svc.service\n", "recovered once, by its allowed name");
    let text = audit(&c);
    assert!(text.contains("not_allowed: {service}=systemd-reboot"), "audited with the value: {text}");
    assert_eq!(c.counter("pipelines::liveness", "recovery_refused", "not_allowed"), 1);
    // The chain verifies with the refusal and its value in it.
    let out = verify(&[&c.path("audit.tsv")]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    reap(good);
    reap(evil);
    let (status, _) = c.stop();
    assert!(status.success());
}

/// A cgroup created in every hierarchy systemd tracks here (v1
/// `name=systemd` and the unified one, or the single cgroup2 tree), removed
/// again on drop (its processes must be gone by then).
struct Cgroup {
    created: Vec<std::path::PathBuf>,
    leaves: Vec<std::path::PathBuf>,
}

impl Cgroup {
    fn create(relative: &str) -> Cgroup {
        let roots: Vec<&str> = ["/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"]
            .into_iter()
            .filter(|r| std::path::Path::new(r).join("cgroup.procs").exists())
            .collect();
        let roots = if roots.is_empty() { vec!["/sys/fs/cgroup"] } else { roots };
        let mut cg = Cgroup { created: Vec::new(), leaves: Vec::new() };
        for root in roots {
            let mut at = std::path::PathBuf::from(root);
            for part in relative.split('/').filter(|p| !p.is_empty()) {
                at.push(part);
                if !at.exists() {
                    std::fs::create_dir(&at)
                        .unwrap_or_else(|e| panic!("mkdir {} (tests run as root): {e}", at.display()));
                    cg.created.push(at.clone());
                }
            }
            cg.leaves.push(at);
        }
        cg
    }

    fn enter(&self, pid: u32) {
        for leaf in &self.leaves {
            std::fs::write(leaf.join("cgroup.procs"), pid.to_string())
                .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", leaf.display()));
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for dir in self.created.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[test]
fn an_agent_in_a_system_service_is_recovered_as_its_unit_whatever_it_calls_itself() {
    let unit = format!("varta-test-{}-checkout.service", std::process::id());
    let cgroup = Cgroup::create(&format!("system.slice/{unit}"));
    let c = Collector::start(&config(&record_arg("{unit}"), "", free_udp_port()));
    let mut agent = named_agent(&c, "systemd-reboot");
    cgroup.enter(agent.id());
    let pid = agent.id();
    wait_for("the unit's recovery", || recovery_lines(&c, pid).into_iter().find(|(o, _)| o == "succeeded"));
    assert_eq!(runs(&c), format!("{unit}\n"));
    // An agent outside any service has no unit: nothing is guessed.
    let stray = named_agent(&c, "checkout");
    refused_for(&c, stray.id(), "no_target");
    let _ = agent.kill();
    let _ = agent.wait();
    reap(stray);
}

#[test]
fn a_user_owned_scope_named_like_dockers_never_yields_a_container() {
    let id = format!("{:0>64x}", u64::from(std::process::id()) * 0x9e37_79b9);
    let user = Cgroup::create(&format!("user.slice/user-4242.slice/docker-{id}.scope"));
    let runtime_id = format!("{:0>64x}", u64::from(std::process::id()) * 0x85eb_ca6b);
    let runtime = Cgroup::create(&format!("system.slice/docker-{runtime_id}.scope"));
    let c = Collector::start(&config(&record_arg("{container}"), "", free_udp_port()));
    let mut impostor = named_agent(&c, "impostor");
    user.enter(impostor.id());
    let mut contained = named_agent(&c, "contained");
    runtime.enter(contained.id());
    refused_for(&c, impostor.id(), "no_target");
    wait_for("the runtime container's recovery", || {
        recovery_lines(&c, contained.id()).into_iter().find(|(o, _)| o == "succeeded")
    });
    assert_eq!(runs(&c), format!("{runtime_id}\n"), "only the runtime-owned id, never {id}");
    for a in [&mut impostor, &mut contained] {
        let _ = a.kill();
        let _ = a.wait();
    }
}

#[test]
fn a_master_key_agents_pid_is_a_claim_and_is_never_acted_on() {
    let keydir = tempfile::tempdir().expect("tempdir");
    let (key_path, key) = keygen(keydir.path(), "master.key");
    let port = free_udp_port();
    let text = config(r#"["/bin/kill", "-0", "{pid}"]"#, "", free_udp_port()).replace(
        "  vlp/udp:",
        &format!("  vlp/secure: {{ transport: secure_udp, endpoint: \"127.0.0.1:{port}\", master_key_file: \"{}\" }}\n  vlp/udp:", key_path.display()),
    ).replace("receivers: [vlp/uds, vlp/udp]", "receivers: [vlp/uds, vlp/udp, vlp/secure]");
    let c = Collector::start(&text);
    let client = varta_client::Client::connect_secure_udp(
        ("127.0.0.1", port),
        varta_client::SecureKey::Master(varta_proto::MasterKey::new(key)),
    )
    .expect("secure client");
    assert!(matches!(client.beat(Status::Ok, 0), varta_client::BeatOutcome::Sent));
    let me = std::process::id();
    let refused = refused_for(&c, me, "unverified_identity");
    assert!(refused.1.contains("reason=unverified_identity"), "{refused:?}");
    assert!(
        audit(&c).contains("unverified_identity: {pid} of a secure_udp_master_key agent"),
        "{}",
        audit(&c)
    );
    assert_eq!(c.counter("pipelines::liveness", "recoveries_started", ""), 0);
}
