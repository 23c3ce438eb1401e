//! End-to-end: the real `varta-collector` with real agents (`varta beat`
//! processes and raw sockets in this test), one scenario per test.

use std::net::UdpSocket;
use std::os::unix::net::UnixDatagram;
use std::process::Child;

use varta_integration::{
    Collector, EventLine, collector_cmd, final_counter, free_tcp_port, free_udp_port, keygen,
    pipeline_config, read_events, signal, varta, wait_for,
};
use varta_proto::{Frame, FrameCipher, Iv, Status};

const THRESHOLD_MS: u64 = 300;

fn uds_config(extra_receiver: &str) -> String {
    format!(
        r#"receivers:
  vlp/uds:
    transport: uds
    path: "@DIR@/varta.sock"
{extra_receiver}
processors:
  tracker:
    threshold: {THRESHOLD_MS}ms
exporters:
  file:
    path: "@DIR@/events.tsv"
service:
  pipelines:
    liveness:
      receivers: [vlp/uds]
      processors: [tracker]
      exporters: [file]
  telemetry:
    logs:
      level: info
      encoding: json # the OpenTelemetry spelling of `format: json`
"#
    )
}

fn events_of(c: &Collector, kind: &str, pid: u32) -> Vec<EventLine> {
    read_events(&c.path("events.tsv"))
        .into_iter()
        .filter(|e| e.kind == kind && e.pid == pid.to_string())
        .collect()
}

fn wait_events(c: &Collector, kind: &str, pid: u32, n: usize) -> Vec<EventLine> {
    wait_for(&format!("{n} {kind} event(s) for pid {pid}"), || {
        let ev = events_of(c, kind, pid);
        (ev.len() >= n).then_some(ev)
    })
}

fn beating_agent(socket: &std::path::Path, every: &str) -> Child {
    varta(&["beat", "--socket", &socket.display().to_string(), "--every", every])
        .spawn()
        .expect("spawn agent")
}

#[test]
fn uds_agent_beats_stalls_when_frozen_and_resumes() {
    let c = Collector::start(&uds_config(""));
    let mut agent = beating_agent(&c.path("varta.sock"), "20ms");
    let pid = agent.id();
    wait_events(&c, "beat", pid, 3);

    signal(&agent, libc::SIGSTOP); // a wedged process: alive, silent
    let stall = wait_events(&c, "stall", pid, 1).remove(0);
    let last_beat = events_of(&c, "beat", pid).into_iter().map(|e| e.ns).max().expect("beats");
    assert!(
        stall.ns >= last_beat + THRESHOLD_MS * 1_000_000,
        "stall surfaced before the threshold: last beat {last_beat}, stall {}",
        stall.ns
    );
    assert_eq!(stall.status, "stall");

    signal(&agent, libc::SIGCONT);
    let resume = wait_events(&c, "resume", pid, 1).remove(0);
    let silence: u64 = resume.payload.parse().expect("silence ns");
    assert!(silence >= THRESHOLD_MS * 1_000_000, "silence {silence}");
    assert_eq!(events_of(&c, "stall", pid).len(), 1, "one stall per silence period");

    let _ = agent.kill();
    let _ = agent.wait();
    let log = c.stop_cleanly();
    let beats = final_counter(&log, "pipelines::liveness", "beats_accepted", "").expect("counter");
    assert!(beats >= 4, "beats_accepted {beats}");
}

#[test]
fn uds_frame_claiming_another_pid_is_refused() {
    let c = Collector::start(&uds_config(""));
    let sock = UnixDatagram::unbound().expect("socket");
    let forged = Frame::new(Status::Ok, std::process::id() + 1, 1, 1, 0).encode();
    sock.send_to(&forged, c.path("varta.sock")).expect("send");
    let refused = wait_for("auth refusal", || {
        read_events(&c.path("events.tsv")).into_iter().find(|e| e.kind == "mismatch")
    });
    assert_eq!(refused.payload, "auth_failure");
    assert_eq!(refused.pid, (std::process::id() + 1).to_string());
    assert_eq!(c.counter("receivers::vlp/uds", "refused", "auth_failed"), 1);
    assert_eq!(c.counter("pipelines::liveness", "beats_accepted", ""), 0);
    let (status, _) = c.stop();
    assert!(status.success());
}

/// Re-seals the CRC so checks after it are reached.
fn with_crc(mut b: [u8; 32]) -> [u8; 32] {
    let crc = varta_proto::crc::crc32c(&b[..28]);
    b[28..].copy_from_slice(&crc.to_le_bytes());
    b
}

#[test]
fn every_malformed_frame_kind_lands_in_its_counter() {
    let c = Collector::start(&uds_config(""));
    let me = std::process::id();
    let good = Frame::new(Status::Ok, me, 1, 1, 0).encode();
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut b = good;
    b[0] = b'X';
    cases.push(("bad_magic", b.to_vec()));
    let mut b = good;
    b[2] = 1;
    cases.push(("bad_version", b.to_vec()));
    let mut b = good;
    b[24] ^= 1;
    cases.push(("bad_crc", b.to_vec()));
    let mut b = good;
    b[3] = 9;
    cases.push(("bad_status", with_crc(b).to_vec()));
    let mut b = good;
    b[3] = 3;
    cases.push(("stall_on_wire", with_crc(b).to_vec()));
    cases.push(("bad_pid", Frame::new(Status::Ok, 0, 1, 1, 0).encode().to_vec()));
    cases.push(("bad_timestamp", Frame::new(Status::Ok, me, u64::MAX, 1, 0).encode().to_vec()));
    cases.push(("bad_nonce", Frame::new(Status::Ok, me, 1, u64::MAX, 0).encode().to_vec()));
    cases.push(("bad_length", good[..31].to_vec()));
    cases.push(("truncated", vec![0x56; 200]));

    let sock = UnixDatagram::unbound().expect("socket");
    for (_, bytes) in &cases {
        sock.send_to(bytes, c.path("varta.sock")).expect("send");
    }
    wait_for("all refusals in the event file", || {
        (read_events(&c.path("events.tsv")).len() >= cases.len()).then_some(())
    });
    for (label, _) in &cases {
        assert_eq!(c.counter("receivers::vlp/uds", "refused", label), 1, "{label}");
    }
    // A valid frame after all that is still accepted.
    sock.send_to(&good, c.path("varta.sock")).expect("send");
    wait_events(&c, "beat", me, 1);
    let (status, _) = c.stop();
    assert!(status.success());
}

fn udp_config(port: u16, opt_in: &str) -> String {
    pipeline_config("udp", &format!("    transport: udp\n    endpoint: \"127.0.0.1:{port}\"\n{opt_in}"), "1s")
}

#[test]
fn plain_udp_without_opt_in_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, udp_config(free_udp_port(), "")).expect("write");
    for args in [
        vec!["--config", path.to_str().expect("utf8")],
        vec!["validate", "--config", path.to_str().expect("utf8")],
    ] {
        let out = collector_cmd(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("accept_unauthenticated"), "{stderr}");
        assert!(stderr.contains("vlp/udp"), "{stderr}");
    }
}

#[test]
fn plain_udp_beats_are_tracked_by_source_and_pid() {
    let port = free_udp_port();
    let c = Collector::start(&udp_config(port, "    accept_unauthenticated: true"));
    let mut agent =
        varta(&["beat", "--udp", &format!("127.0.0.1:{port}"), "--every", "10ms", "--count", "3"])
            .spawn()
            .expect("agent");
    let pid = agent.id();
    assert!(agent.wait().expect("agent exit").success());
    let beats = wait_events(&c, "beat", pid, 3);
    let nonces: Vec<&str> = beats.iter().map(|e| e.nonce.as_str()).collect();
    assert_eq!(nonces, ["1", "2", "3"]);
    let (status, _) = c.stop();
    assert!(status.success());
}

fn secure_config(port: u16, keys: &str) -> String {
    pipeline_config(
        "secure",
        &format!("    transport: secure_udp\n    endpoint: \"127.0.0.1:{port}\"\n{keys}"),
        "1s",
    )
}

/// `varta beat --secure-udp ADDR KEY_FLAG KEY --count 2 --every 10ms` as an agent process.
fn secure_agent(addr: &str, key_flag: &str, key: &std::path::Path) -> Child {
    let key = key.to_str().expect("utf8");
    varta(&["beat", "--secure-udp", addr, key_flag, key, "--count", "2", "--every", "10ms"])
        .spawn()
        .expect("agent")
}

#[test]
fn secure_udp_accepts_sealed_beats_and_refuses_replay_and_tampering() {
    let keydir = tempfile::tempdir().expect("tempdir");
    let (key_path, key) = keygen(keydir.path(), "shared.key");
    let port = free_udp_port();
    let c = Collector::start(&secure_config(port, &format!("    key_files: [\"{}\"]", key_path.display())));
    let addr = format!("127.0.0.1:{port}");

    // A real agent process with the CLI.
    let mut agent = secure_agent(&addr, "--key-file", &key_path);
    let pid = agent.id();
    assert!(agent.wait().expect("exit").success());
    wait_events(&c, "beat", pid, 2);

    // This test as a second agent, sealing by hand so it can replay and tamper.
    let me = std::process::id();
    let cipher = FrameCipher::new(&key);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let iv = Iv { random: [7; 8], counter: 0 };
    let wire = cipher.seal_shared(iv, &Frame::new(Status::Ok, me, 10, 1, 0).encode());
    sock.send_to(&wire, &addr).expect("send");
    wait_events(&c, "beat", me, 1);
    sock.send_to(&wire, &addr).expect("replay");
    let mut tampered =
        cipher.seal_shared(Iv { counter: 1, ..iv }, &Frame::new(Status::Ok, me, 11, 2, 0).encode());
    tampered[20] ^= 0x01;
    sock.send_to(&tampered, &addr).expect("tampered");

    wait_for("replay and tamper refusals", || {
        let ev = read_events(&c.path("events.tsv"));
        let has = |p: &str| ev.iter().any(|e| e.kind == "refused" && e.payload == p);
        (has("replay") && has("decrypt_failed")).then_some(())
    });
    assert_eq!(c.counter("receivers::vlp/secure", "refused", "replay"), 1);
    assert_eq!(c.counter("receivers::vlp/secure", "refused", "decrypt_failed"), 1);
    assert_eq!(events_of(&c, "beat", me).len(), 1, "replayed frame must not count as a beat");
    let (status, _) = c.stop();
    assert!(status.success());
}

#[test]
fn secure_udp_master_key_agents() {
    let keydir = tempfile::tempdir().expect("tempdir");
    let (key_path, _) = keygen(keydir.path(), "master.key");
    let port = free_udp_port();
    let c =
        Collector::start(&secure_config(port, &format!("    master_key_file: \"{}\"", key_path.display())));
    let addr = format!("127.0.0.1:{port}");
    let mut agents: Vec<Child> =
        (0..2).map(|_| secure_agent(&addr, "--master-key-file", &key_path)).collect();
    for a in &mut agents {
        assert!(a.wait().expect("exit").success());
        wait_events(&c, "beat", a.id(), 2);
    }
    let (status, _) = c.stop();
    assert!(status.success());
}

#[test]
fn bad_config_reports_line_and_column_and_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yaml");
    let text = uds_config("")
        .replace("    threshold:", "    thresold:")
        .replace("@DIR@", &dir.path().display().to_string());
    std::fs::write(&path, &text).expect("write");
    let line = text.lines().position(|l| l.contains("thresold")).expect("typo line") + 1;
    let out = collector_cmd(&["validate", "--config", path.to_str().expect("utf8")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("bad.yaml:{line}:")), "expected line {line}: {stderr}");
    assert!(stderr.contains("thresold"), "{stderr}");

    // A missing key file names the component and where it is configured.
    let text = secure_config(free_udp_port(), "    key_files: [\"/nonexistent/k\"]")
        .replace("@DIR@", &dir.path().display().to_string());
    std::fs::write(&path, text).expect("write");
    let out = collector_cmd(&["--config", path.to_str().expect("utf8")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("receivers::vlp/secure") && stderr.contains("bad.yaml:3:"), "{stderr}");

    let out = collector_cmd(&["--config", dir.path().join("missing.yaml").to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.yaml"));
}

#[test]
fn validate_accepts_the_shipped_configs_and_lists_components() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../otel-config");
    let out = collector_cmd(&["validate", "--config", root.join("varta.yaml").to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = collector_cmd(&["components"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for t in ["vlp", "ratelimit", "tracker", "file", "debug"] {
        assert!(text.contains(t), "{text}");
    }
}

/// Every shipped example stays valid: its paths are moved into a temp dir
/// (with real 0600 key and token files) and `validate` must accept it.
#[test]
fn every_shipped_example_validates() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../otel-config/examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&root).expect("examples dir") {
        let example = entry.expect("entry").path();
        if example.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&example).expect("example");
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().to_str().expect("utf8");
        for secret in ["shared.key", "master.key", "metrics.token"] {
            keygen(dir.path(), secret);
        }
        std::fs::create_dir_all(dir.path().join("token")).expect("token dir");
        keygen(dir.path(), "token/token");
        // `validate` checks that TLS files are readable; it does not dial.
        std::fs::write(
            dir.path().join("gateway-ca.pem"),
            "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
        )
        .expect("ca file");
        let text = text
            .replace("/etc/varta", d)
            .replace("/var/log/varta", d)
            .replace("/run/varta", d)
            // Recovery programs must exist; the examples name real tools a host may lack.
            .replace("/usr/bin/systemctl", "/bin/true");
        let path = dir.path().join("example.yaml");
        std::fs::write(&path, text).expect("write");
        let out = collector_cmd(&["validate", "--config", path.to_str().expect("utf8")]);
        assert!(out.status.success(), "{}: {}", example.display(), String::from_utf8_lossy(&out.stderr));
        checked += 1;
    }
    assert!(checked >= 2, "examples found: {checked}");
}

#[test]
fn sigterm_exits_zero_and_removes_the_socket() {
    let c = Collector::start(&uds_config(""));
    let sock = c.path("varta.sock");
    assert!(sock.exists());
    let dir = c.dir.path().to_path_buf();
    c.stop_cleanly();
    assert!(!dir.join("varta.sock").exists(), "socket file left behind");
}

#[test]
fn systemd_watchdog_is_fed_and_stopping_is_announced() {
    let c = Collector::start_with(&uds_config(""), &[("WATCHDOG_USEC", "200000")]);
    for _ in 0..2 {
        c.wait_notification("WATCHDOG=1", |m| m == "WATCHDOG=1");
    }
    c.signal(libc::SIGINT);
    c.wait_notification("STOPPING=1", |m| m == "STOPPING=1");
    let (status, log) = c.stop();
    assert!(status.success(), "SIGINT is a clean shutdown too: {log}");
}

#[test]
fn agents_killed_with_frames_in_flight_do_not_disturb_the_collector() {
    let c = Collector::start(&uds_config(""));
    let socket = c.path("varta.sock");
    let mut agents: Vec<Child> = (0..16).map(|_| beating_agent(&socket, "1ms")).collect();
    for a in &agents {
        wait_events(&c, "beat", a.id(), 1);
    }
    for a in &agents {
        signal(a, libc::SIGKILL);
    }
    for a in &mut agents {
        let _ = a.wait();
    }
    // Still serving: a fresh agent is tracked, and its peers stall normally.
    let mut fresh =
        varta(&["beat", "--socket", socket.to_str().expect("utf8"), "--count", "1"]).spawn().expect("agent");
    assert!(fresh.wait().expect("exit").success());
    wait_events(&c, "beat", fresh.id(), 1);
    wait_events(&c, "stall", agents[0].id(), 1);
    let log = c.stop_cleanly();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn default_config_listens_on_the_user_runtime_dir() {
    let runtime = tempfile::tempdir().expect("tempdir");
    let rt = runtime.path().to_str().expect("utf8");
    let c = Collector::start_default(&[("XDG_RUNTIME_DIR", rt)]);
    let socket = runtime.path().join("varta.sock");
    assert!(socket.exists());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    let mut agent = varta(&["beat", "--socket", socket.to_str().expect("utf8")]).spawn().expect("agent");
    assert!(agent.wait().expect("exit").success());
    let log = c.stop_cleanly();
    assert!(!socket.exists());
    // The default config logs text, plain since stderr is a file here (it
    // once carried colour codes into files and the journal); the shutdown
    // summary must show the beat arrived.
    assert!(!log.contains('\u{1b}'), "escape codes in a log piped to a file:\n{log}");
    let summary = log
        .lines()
        .find(|l| {
            l.contains("varta::stats")
                && l.contains("\"pipelines::liveness\"")
                && l.contains("\"beats_accepted\"")
        })
        .unwrap_or_else(|| panic!("no beats_accepted in the shutdown summary:\n{log}"));
    assert!(summary.trim_end().ends_with("value=1"), "{summary}");
}

#[test]
fn several_config_files_and_set_overrides_merge_and_reload_together() {
    // The overlay moves the event file; --set moves the socket (the value is
    // YAML, here a path). Both must win over the base file.
    let overlay = |events: &str| {
        format!(
            "exporters:\n  file:\n    path: \"@DIR@/{events}\"\nprocessors:\n  tracker:\n    threshold: {THRESHOLD_MS}ms\n"
        )
    };
    let c = Collector::start_with_args(
        &uds_config(""),
        &[],
        |dir| {
            let text = overlay("overlay.tsv").replace("@DIR@", &dir.display().to_string());
            std::fs::write(dir.join("overlay.yaml"), text).expect("overlay");
        },
        &["--config", "@DIR@/overlay.yaml", "--set", "receivers::vlp/uds::path=@DIR@/set.sock"],
    );
    assert!(c.path("set.sock").exists() && !c.path("varta.sock").exists(), "--set did not move the socket");
    let beat_into = |file: &str| {
        let mut agent =
            varta(&["beat", "--socket", &c.path("set.sock").display().to_string(), "--count", "1"])
                .spawn()
                .expect("agent");
        assert!(agent.wait().expect("exit").success());
        let pid = agent.id().to_string();
        wait_for("the beat in the overlay's event file", || {
            read_events(&c.path(file)).iter().any(|e| e.kind == "beat" && e.pid == pid).then_some(())
        });
    };
    beat_into("overlay.tsv");
    assert!(!c.path("events.tsv").exists(), "the base file's exporter path was used");

    // print-config shows the merged document the collector runs.
    let dir = c.dir.path().display().to_string();
    let printed = collector_cmd(&[
        "print-config",
        "--config",
        &format!("{dir}/collector.yaml"),
        "--config",
        &format!("{dir}/overlay.yaml"),
        "--set",
        &format!("receivers::vlp/uds::path={dir}/set.sock"),
    ]);
    let text = String::from_utf8_lossy(&printed.stdout);
    assert!(printed.status.success() && text.contains("overlay.tsv") && text.contains("set.sock"), "{text}");

    // A reload reads the same files and overrides: unchanged, it is `ok`;
    // a change in the overlay (the event file moves) is applied, while the
    // --set socket stays where it was.
    c.signal(libc::SIGHUP);
    wait_for("the unchanged reload", || (c.counter("service::service", "reloads", "ok") == 1).then_some(()));
    std::fs::write(c.path("overlay.yaml"), overlay("moved.tsv").replace("@DIR@", &dir)).expect("overlay");
    c.signal(libc::SIGHUP);
    wait_for("the changed reload", || (c.counter("service::service", "reloads", "ok") == 2).then_some(()));
    beat_into("moved.tsv");
    c.stop_cleanly();
}

#[test]
fn merged_config_errors_name_their_origin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.yaml");
    std::fs::write(&base, uds_config("").replace("@DIR@", &dir.path().display().to_string())).expect("base");
    let base = base.display().to_string();
    let out = collector_cmd(&["validate", "--config", &base, "--set", "processors::tracker::threshold=1ms"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    // The error names the `--set` that supplied the offending value.
    assert!(
        err.contains("--set processors::tracker::threshold=1ms: processors::tracker: tracker.threshold"),
        "{err}"
    );
    let out = collector_cmd(&["validate", "--config", &base, "--set", "no-equals-sign"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KEY.PATH=VALUE"));
    let out = collector_cmd(&["validate", "--config", &base, "--config", "/nonexistent/overlay.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/overlay.yaml: cannot read"));
    let out = collector_cmd(&["validate", "--config", &base, "--set", "processors::tracker::threshold=3s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn merged_config_errors_point_at_the_file_and_line_that_wrote_the_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.yaml");
    std::fs::write(&base, uds_config("").replace("@DIR@", &dir.path().display().to_string())).expect("base");
    let base = base.display().to_string();
    let overlay = dir.path().join("overlay.yaml");
    // The misspelt key is on line 4, column 5 of the overlay (in the merged
    // document it is elsewhere: keys are sorted, the base comes first).
    std::fs::write(&overlay, "# overlay: a longer threshold\nprocessors:\n  tracker:\n    treshold: 2s\n")
        .expect("overlay");
    let overlay = overlay.display().to_string();
    let out = collector_cmd(&["validate", "--config", &base, "--config", &overlay]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("configuration error: {overlay}:4:5: ")) && err.contains("treshold"),
        "{err}"
    );
    assert!(!err.contains("merged document"), "{err}");

    // A bad value from `--set`: the message names that argument.
    std::fs::write(&overlay, "processors:\n  tracker:\n    threshold: 2s\n").expect("overlay");
    let set = "processors::tracker::threshold=soon";
    let out = collector_cmd(&["validate", "--config", &base, "--config", &overlay, "--set", set]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("configuration error: --set {set}: ")) && err.contains("soon"), "{err}");
}

#[test]
fn one_file_exporter_serves_two_pipelines_and_one_receiver_feeds_both() {
    let config = format!(
        r#"receivers:
  vlp/a: {{ transport: uds, path: "@DIR@/a.sock" }}
  vlp/b: {{ transport: uds, path: "@DIR@/b.sock" }}
  vlp/shared: {{ transport: uds, path: "@DIR@/shared.sock" }}
processors:
  tracker/a: {{ threshold: {THRESHOLD_MS}ms }}
  tracker/b: {{ threshold: {THRESHOLD_MS}ms }}
exporters:
  file: {{ path: "@DIR@/events.tsv" }}
service:
  pipelines:
    a: {{ receivers: [vlp/a, vlp/shared], processors: [tracker/a], exporters: [file] }}
    b: {{ receivers: [vlp/b, vlp/shared], processors: [tracker/b], exporters: [file] }}
  telemetry: {{ logs: {{ format: json }} }}
"#
    );
    let c = Collector::start(&config);
    // One beat on each pipeline, then silence: each agent stalls in its own
    // pipeline, and both pipelines' events land in the one file.
    let mut pids = Vec::new();
    for socket in ["a.sock", "b.sock"] {
        let mut agent = varta(&["beat", "--socket", &c.path(socket).display().to_string(), "--count", "1"])
            .spawn()
            .expect("agent");
        assert!(agent.wait().expect("exit").success());
        pids.push(agent.id());
    }
    for &pid in &pids {
        wait_events(&c, "beat", pid, 1);
        wait_events(&c, "stall", pid, 1);
    }
    assert_eq!(c.counter("pipelines::a", "stalls", ""), 1);
    assert_eq!(c.counter("pipelines::b", "stalls", ""), 1);
    // The shared receiver reads a beat once and both pipelines track it:
    // one stall of the agent in each.
    let mut agent =
        varta(&["beat", "--socket", &c.path("shared.sock").display().to_string(), "--count", "1"])
            .spawn()
            .expect("agent");
    assert!(agent.wait().expect("exit").success());
    let stalls = wait_events(&c, "stall", agent.id(), 2);
    assert_eq!(stalls.len(), 2, "one stall per pipeline");
    assert_eq!(c.counter("receivers::vlp/shared", "datagrams", ""), 1, "counted once, by its one owner");
    assert_eq!(c.counter("pipelines::a", "stalls", ""), 2);
    assert_eq!(c.counter("pipelines::b", "stalls", ""), 2);
    // The exporter runs once (one set of counters) and its thread ends at
    // shutdown once both pipelines have stopped.
    let log = c.stop_cleanly();
    let exported = final_counter(&log, "exporters::file", "exported", "").expect("exporter counters");
    assert!(exported >= 8, "exported {exported}");
}

/// A live network agent beating every 100 ms, a forger sending one frame
/// under its identity (nonce far ahead, timestamp 0), then hammering its
/// per-agent rate limit for a second: the live agent is never reported
/// stalled — a forger can add beats, never silence the real sender. Plain
/// UDP (anyone can forge) and master-key secure UDP (every agent holds the
/// master key).
#[test]
fn forged_frames_never_silence_a_live_network_agent() {
    let keydir = tempfile::tempdir().expect("tempdir");
    let (key_path, key) = keygen(keydir.path(), "master.key");
    let (udp_port, secure_port) = (free_udp_port(), free_udp_port());
    let config = format!(
        r#"receivers:
  vlp/udp: {{ transport: udp, endpoint: "127.0.0.1:{udp_port}", accept_unauthenticated: true }}
  vlp/secure: {{ transport: secure_udp, endpoint: "127.0.0.1:{secure_port}", master_key_file: "{}" }}
processors:
  ratelimit: {{}}
  tracker: {{ threshold: 500ms }}
exporters:
  file: {{ path: "@DIR@/events.tsv" }}
service:
  pipelines:
    liveness: {{ receivers: [vlp/udp, vlp/secure], processors: [ratelimit, tracker], exporters: [file] }}
  telemetry: {{ logs: {{ format: json }} }}
"#,
        key_path.display()
    );
    let c = Collector::start(&config);
    let plain = varta(&["beat", "--udp", &format!("127.0.0.1:{udp_port}"), "--every", "100ms"])
        .spawn()
        .expect("plain agent");
    let master = secure_agent_every(&format!("127.0.0.1:{secure_port}"), &key_path, "100ms");
    let forger = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let master_key = varta_proto::MasterKey::new(key);
    let forge = |pid: u32, nonce: u64, timestamp: u64, secure: bool, counter: u32| {
        let frame = Frame::new(Status::Ok, pid, timestamp, nonce, 0).encode();
        if secure {
            let cipher = FrameCipher::new(&master_key.agent_key(pid));
            let wire = cipher.seal_master(pid, Iv { random: [0x5a; 8], counter }, &frame);
            forger.send_to(&wire, ("127.0.0.1", secure_port)).expect("send");
        } else {
            forger.send_to(&frame, ("127.0.0.1", udp_port)).expect("send");
        }
    };
    for (agent, secure) in [(&plain, false), (&master, true)] {
        wait_events(&c, "beat", agent.id(), 2);
        forge(agent.id(), 1 << 40, 0, secure, 0);
    }
    // Hammer both rate limits: a frame every 2 ms for a second.
    for i in 0..500u32 {
        for (agent, secure) in [(&plain, false), (&master, true)] {
            forge(agent.id(), (1 << 40) + u64::from(i) + 1, 1, secure, i + 1);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    // Then the real senders alone, past the threshold twice over.
    let resumed_at = std::time::Instant::now();
    while resumed_at.elapsed() < std::time::Duration::from_millis(1200) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for agent in [&plain, &master] {
        let stalls = events_of(&c, "stall", agent.id());
        assert!(stalls.is_empty(), "agent {} was reported stalled: {stalls:?}", agent.id());
    }
    assert!(c.counter("pipelines::liveness", "rate_limited", "per_agent") > 0, "the forger hit the limit");
    let mut agents = [plain, master];
    for a in &mut agents {
        let _ = a.kill();
        let _ = a.wait();
    }
    // Frozen for real (killed): both reported.
    for a in &agents {
        wait_events(&c, "stall", a.id(), 1);
    }
}

/// `varta beat --secure-udp ADDR --master-key-file KEY --every EVERY`.
fn secure_agent_every(addr: &str, key: &std::path::Path, every: &str) -> Child {
    let key = key.to_str().expect("utf8");
    varta(&["beat", "--secure-udp", addr, "--master-key-file", key, "--every", every]).spawn().expect("spawn")
}

/// A recorded secure session pushed out of the sender's remembered set by
/// four newer sessions was once accepted in full when replayed; it is
/// refused now (the reference: "keep enough history that an old
/// `iv_random` cannot be replayed after a rotation").
#[test]
fn a_session_pushed_out_by_newer_ones_cannot_be_replayed() {
    let keydir = tempfile::tempdir().expect("tempdir");
    let (key_path, key) = keygen(keydir.path(), "shared.key");
    let port = free_udp_port();
    let c = Collector::start(&secure_config(port, &format!("    key_files: [\"{}\"]", key_path.display())));
    let addr = format!("127.0.0.1:{port}");
    let cipher = FrameCipher::new(&key);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let me = std::process::id();
    let seal = |random: u8, counter: u32, nonce: u64| {
        let frame = Frame::new(Status::Ok, me, nonce * 10, nonce, 0).encode();
        cipher.seal_shared(Iv { random: [random; 8], counter }, &frame)
    };
    // The recorded session: three beats.
    let recorded: Vec<_> = (1..=3u32).map(|k| seal(1, k, u64::from(k))).collect();
    for wire in &recorded {
        sock.send_to(wire, &addr).expect("send");
    }
    wait_events(&c, "beat", me, 3);
    // Five newer sessions (rotations) of the same sender.
    for (n, random) in (2..=6u8).enumerate() {
        sock.send_to(&seal(random, 1, 10 + n as u64), &addr).expect("send");
    }
    wait_events(&c, "beat", me, 8);
    // The replay of the whole recorded session.
    for wire in &recorded {
        sock.send_to(wire, &addr).expect("replay");
    }
    wait_for("three replay refusals", || {
        (c.counter("receivers::vlp/secure", "refused", "replay") == 3).then_some(())
    });
    assert_eq!(events_of(&c, "beat", me).len(), 8, "no replayed frame counted as a beat");
    let (status, _) = c.stop();
    assert!(status.success());
}

/// The collector itself stopped for 3 s (SIGSTOP; CPU throttling or a VM
/// freeze do the same) while 20 agents beat every 200 ms: their beats
/// were dropped by the full socket, and all 20 were once reported stalled
/// on resume. Now the pause is a blind window: live agents get a full
/// threshold from the first read after it, and an agent that froze before
/// it is still reported, marked.
#[test]
fn twenty_live_agents_survive_a_pause_of_the_collector_and_a_frozen_one_is_reported() {
    let config = pipeline_config("uds", "    transport: uds\n    path: \"@DIR@/varta.sock\"", "1s");
    let c = Collector::start(&config);
    let socket = c.path("varta.sock");
    let mut live: Vec<Child> = (0..20).map(|_| beating_agent(&socket, "200ms")).collect();
    let mut frozen = beating_agent(&socket, "200ms");
    for a in live.iter().chain([&frozen]) {
        wait_events(&c, "beat", a.id(), 2);
    }
    signal(&frozen, libc::SIGSTOP);
    std::thread::sleep(std::time::Duration::from_millis(300));
    c.signal(libc::SIGSTOP);
    std::thread::sleep(std::time::Duration::from_secs(3));
    c.signal(libc::SIGCONT);
    // The frozen agent is reported a threshold after the window…
    let stall = wait_events(&c, "stall", frozen.id(), 1).remove(0);
    // …by then every live agent has beaten again; none was reported.
    for a in &live {
        assert!(events_of(&c, "stall", a.id()).is_empty(), "live agent {} reported stalled", a.id());
    }
    // Its stall is marked as spanning the window.
    assert!(stall.payload.contains("blind_window=1"), "{stall:?}");
    assert!(c.counter("pipelines::liveness", "blind_windows", "stopped") >= 1);
    let window = read_events(&c.path("events.tsv")).into_iter().find(|e| e.kind == "blind_window");
    assert!(window.is_some_and(|w| w.payload.starts_with("cause=stopped")), "a blind_window line");
    signal(&frozen, libc::SIGCONT);
    for a in live.iter_mut().chain([&mut frozen]) {
        let _ = a.kill();
        let _ = a.wait();
    }
}

/// The collector raises its soft open-file limit to the hard one at start
/// (connection caps, sockets and files add up past a default 1,024), and
/// lowers, with a warning, connection caps that still do not fit it.
#[test]
fn the_open_file_limit_is_raised_and_connection_caps_fit_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("c.yaml");
    let health = free_tcp_port();
    let text = pipeline_config("uds", "    transport: uds\n    path: \"@DIR@/varta.sock\"", "1s")
        .replace("@DIR@", &dir.path().display().to_string())
        .replace("service:\n", "extensions:\n  health_check: { endpoint: \"127.0.0.1:@H@\", max_connections: 8000 }\nservice:\n  extensions: [health_check]\n")
        .replace("@H@", &health.to_string());
    std::fs::write(&config, text).expect("write");
    let child = std::process::Command::new("prlimit")
        .args(["--nofile=256:4096", "--"])
        .arg(varta_integration::binary("varta-collector"))
        .args(["--config", config.to_str().expect("utf8")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("prlimit (util-linux)");
    let socket = dir.path().join("varta.sock");
    wait_for("the collector's socket", || socket.exists().then_some(()));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).expect("limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("open files line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&fields[3..5], ["4096", "4096"], "{line}");
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().expect("exit");
    assert!(out.status.success());
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(
        logs.contains("extensions::health_check: max_connections 8000 lowered to 3840"),
        "a warning names the lowered cap: {logs}"
    );
}

/// A flood of 500 fake plain-UDP pids into a pipeline of capacity 200 that
/// also has the UDS receiver (the shipped `all-transports.yaml` shape): a
/// kernel-attested agent that then starts and freezes was never admitted,
/// so never reported. Plain UDP now takes at most its share (half).
#[test]
fn a_flood_of_fake_udp_pids_never_keeps_an_attested_agent_out() {
    let udp = free_udp_port();
    let config = format!(
        r#"receivers:
  vlp/uds: {{ transport: uds, path: "@DIR@/varta.sock" }}
  vlp/udp: {{ transport: udp, endpoint: "127.0.0.1:{udp}", accept_unauthenticated: true, recv_buffer_bytes: 8388608 }}
processors:
  tracker: {{ threshold: 500ms, capacity: 200 }}
exporters:
  file: {{ path: "@DIR@/events.tsv", beats: false }}
service:
  pipelines:
    liveness: {{ receivers: [vlp/uds, vlp/udp], processors: [tracker], exporters: [file] }}
  telemetry: {{ logs: {{ format: json }} }}
"#
    );
    let c = Collector::start(&config);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    for pid in 500_000..500_500u32 {
        let frame = Frame::new(Status::Ok, pid, 1, 1, 0).encode();
        while sock.send_to(&frame, ("127.0.0.1", udp)).is_err() {
            std::thread::yield_now();
        }
    }
    wait_for("the flood refused past its share", || {
        (c.counter("pipelines::liveness", "unauthenticated_share_exceeded", "") >= 400).then_some(())
    });
    assert_eq!(c.counter("pipelines::liveness", "agents_tracked", ""), 100, "plain UDP took half");
    let mut agent = std::process::Command::new(varta_integration::binary("stall-agent"))
        .args([c.path("varta.sock").to_str().expect("utf8"), "sleep", "2"])
        .spawn()
        .expect("stall-agent");
    wait_events(&c, "stall", agent.id(), 1);
    let _ = agent.kill();
    let _ = agent.wait();
}
