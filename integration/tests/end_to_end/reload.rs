//! Live reload (SIGHUP / `varta-collector reload`): key rotation without a
//! restart, broken configs refused, unchanged reloads touching nothing.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Child;

use varta_integration::{
    Collector, collector_cmd, free_udp_port, keygen, read_events, reap, send_signal, varta, wait_for,
};

fn config(dir: &Path, port: u16, keys: &[&str], threshold: &str) -> String {
    let d = dir.display();
    let key_files: Vec<String> = keys.iter().map(|k| format!("\"{d}/{k}\"")).collect();
    format!(
        r#"receivers:
  vlp/uds: {{ transport: uds, path: "{d}/varta.sock" }}
  vlp/secure: {{ transport: secure_udp, endpoint: "127.0.0.1:{port}", key_files: [{}] }}
processors:
  tracker: {{ threshold: {threshold} }}
exporters:
  file: {{ path: "{d}/events.tsv", beats: true }}
service:
  pid_file: "{d}/collector.pid"
  pipelines:
    liveness: {{ receivers: [vlp/uds, vlp/secure], processors: [tracker], exporters: [file] }}
  telemetry: {{ logs: {{ format: json }} }}
"#,
        key_files.join(", ")
    )
}

fn secure_agent(port: u16, key: &Path) -> Child {
    varta(&[
        "beat",
        "--secure-udp",
        &format!("127.0.0.1:{port}"),
        "--key-file",
        key.to_str().expect("utf8"),
        "--every",
        "50ms",
    ])
    .spawn()
    .expect("agent")
}

fn reload(c: &Collector, config_text: &str) {
    std::fs::write(c.path("collector.yaml"), config_text).expect("rewrite config");
    let out = collector_cmd(&["reload", "--pid-file", c.path("collector.pid").to_str().expect("utf8")]);
    assert!(out.status.success(), "{out:?}");
}

/// `varta beat` on the collector's UDS socket, with `args`.
fn uds_agent(c: &Collector, args: &[&str]) -> Child {
    let sock = c.path("varta.sock");
    let mut all = vec!["beat", "--socket", sock.to_str().expect("utf8")];
    all.extend_from_slice(args);
    varta(&all).spawn().expect("agent")
}

fn beats_of(c: &Collector, pid: u32) -> usize {
    read_events(&c.path("events.tsv")).iter().filter(|e| e.kind == "beat" && e.pid == pid.to_string()).count()
}

#[test]
fn a_key_rotates_while_agents_beat() {
    let port = free_udp_port();
    // The collector's own temp dir holds keys and config (the harness made it).
    let c = Collector::start_prepared(&config(Path::new("@DIR@"), port, &["old.key"], "500ms"), &[], |dir| {
        keygen(dir, "old.key");
        keygen(dir, "new.key");
    });
    let dir = c.dir.path().to_path_buf();
    let old_agent = secure_agent(port, &dir.join("old.key"));
    wait_for("old-key beats", || (beats_of(&c, old_agent.id()) >= 3).then_some(()));

    // Both keys: agents move to the new one at their own pace.
    reload(&c, &config(&dir, port, &["old.key", "new.key"], "500ms"));
    c.wait_notification("RELOADING=1", |m| m.contains("RELOADING=1"));
    c.wait_notification("READY=1 after the reload", |m| m.contains("READY=1"));
    assert_eq!(c.counter("service::service", "reloads", "ok"), 1);
    let new_agent = secure_agent(port, &dir.join("new.key"));
    wait_for("new-key beats", || (beats_of(&c, new_agent.id()) >= 3).then_some(()));
    let before = beats_of(&c, old_agent.id());
    wait_for("old-key beats go on", || (beats_of(&c, old_agent.id()) > before).then_some(()));
    assert_eq!(
        c.counter("receivers::vlp/secure", "refused", "decrypt_failed"),
        0,
        "no beat with a configured key refused"
    );
    reap(old_agent);

    // The old key is removed: frames sealed with it are refused from now on.
    reload(&c, &config(&dir, port, &["new.key"], "500ms"));
    wait_for("the second reload", || (c.counter("service::service", "reloads", "ok") == 2).then_some(()));
    let late = secure_agent(port, &dir.join("old.key"));
    wait_for("old-key frames refused", || {
        (c.counter("receivers::vlp/secure", "refused", "decrypt_failed") >= 2).then_some(())
    });
    assert_eq!(beats_of(&c, late.id()), 0);
    assert!(never_stalled(&c, new_agent.id()), "the agent on the new key never stalled");
    reap(late);
    reap(new_agent);

    // Rotation by rewriting the same file (the config does not change): the
    // reload re-reads it, and the key it now holds is in effect.
    std::fs::copy(dir.join("old.key"), dir.join("new.key")).expect("rewrite the key file");
    reload(&c, &config(&dir, port, &["new.key"], "500ms"));
    wait_for("the third reload", || (c.counter("service::service", "reloads", "ok") == 3).then_some(()));
    let rewritten = secure_agent(port, &dir.join("old.key"));
    wait_for("beats sealed with the rewritten file's key", || {
        (beats_of(&c, rewritten.id()) >= 2).then_some(())
    });
    reap(rewritten);
}

fn never_stalled(c: &Collector, pid: u32) -> bool {
    !read_events(&c.path("events.tsv")).iter().any(|e| e.kind == "stall" && e.pid == pid.to_string())
}

/// The systemd notify protocol over a whole life, as the shipped unit
/// (`Type=notify`, `WatchdogSec`, `ExecReload`) relies on it.
#[test]
fn systemd_sees_ready_watchdog_reloading_and_stopping() {
    let port = free_udp_port();
    let c = Collector::start_prepared(
        &config(Path::new("@DIR@"), port, &["old.key"], "2s"),
        &[("WATCHDOG_USEC", "200000")],
        |dir| {
            keygen(dir, "old.key");
        },
    ); // returns once READY=1 arrived
    for _ in 0..2 {
        c.wait_notification("periodic WATCHDOG=1", |m| m.contains("WATCHDOG=1"));
    }
    let dir = c.dir.path().to_path_buf();
    reload(&c, &config(&dir, port, &["old.key"], "2s"));
    c.wait_notification("RELOADING=1", |m| m.contains("RELOADING=1"));
    c.wait_notification("READY=1 after the reload", |m| m.contains("READY=1"));
    c.signal(libc::SIGTERM);
    c.wait_notification("STOPPING=1", |m| m.contains("STOPPING=1"));
}

/// `good` plus a plain UDP receiver on `udp` and a second file exporter
/// (`more.tsv`), both wired into the pipeline.
fn grown(good: &str, dir: &Path, udp: u16) -> String {
    let d = dir.display();
    good.replace(
        "processors:\n",
        &format!(
            "  vlp/udp: {{ transport: udp, endpoint: \"127.0.0.1:{udp}\", accept_unauthenticated: true }}\nprocessors:\n"
        ),
    )
    .replace("service:\n", &format!("  file/more: {{ path: \"{d}/more.tsv\" }}\nservice:\n"))
    .replace("receivers: [vlp/uds, vlp/secure]", "receivers: [vlp/uds, vlp/secure, vlp/udp]")
    .replace("exporters: [file]", "exporters: [file, file/more]")
    .replace("format: json", "format: json, level: debug")
}

fn kinds_of(c: &Collector, file: &str, pid: u32) -> Vec<String> {
    read_events(&c.path(file)).into_iter().filter(|e| e.pid == pid.to_string()).map(|e| e.kind).collect()
}

#[test]
fn components_change_live_and_what_did_not_change_keeps_running() {
    let port = free_udp_port();
    let c = Collector::start_prepared(&config(Path::new("@DIR@"), port, &["old.key"], "300ms"), &[], |dir| {
        keygen(dir, "old.key");
    });
    let dir = c.dir.path().to_path_buf();
    let inode = || std::fs::metadata(c.path("varta.sock")).expect("socket").ino();
    let first_inode = inode();
    let good = config(&dir, port, &["old.key"], "300ms");
    // An agent beats, then stalls: the tracker holds an open incident.
    let mut agent = uds_agent(&c, &["--every", "50ms"]);
    let pid = agent.id();
    wait_for("beats", || (beats_of(&c, pid) >= 2).then_some(()));
    send_signal(pid, libc::SIGSTOP);
    wait_for("its stall", || (c.counter("pipelines::liveness", "stalls", "") == 1).then_some(()));

    // A broken configuration changes nothing.
    reload(&c, "receivers: [this is not a config\n");
    wait_for("the broken reload counted", || {
        (c.counter("service::service", "reloads", "invalid") == 1).then_some(())
    });

    // Grow the pipeline: a new receiver, a new exporter, another log level.
    let udp = free_udp_port();
    reload(&c, &grown(&good, &dir, udp));
    wait_for("the growing reload", || (c.counter("service::service", "reloads", "ok") == 1).then_some(()));
    assert_eq!(inode(), first_inode, "the unchanged UDS receiver kept its socket");
    let mut udp_agent =
        varta(&["beat", "--udp", &format!("127.0.0.1:{udp}"), "--count", "1"]).spawn().expect("udp agent");
    assert!(udp_agent.wait().expect("exit").success());
    wait_for("the new receiver's beat in the new exporter", || {
        kinds_of(&c, "more.tsv", udp_agent.id()).contains(&"beat".to_owned()).then_some(())
    });
    // The tracker kept the open incident: the agent resumes from the same
    // stall (no second one), and the new exporter sees the resume.
    send_signal(pid, libc::SIGCONT);
    wait_for("the resume of the same incident", || {
        (c.counter("pipelines::liveness", "resumes", "") == 1).then_some(())
    });
    assert_eq!(c.counter("pipelines::liveness", "stalls", ""), 1);
    wait_for("the resume in the new exporter", || {
        kinds_of(&c, "more.tsv", pid).contains(&"resume".to_owned()).then_some(())
    });
    assert!(c.log().contains("\"level\":\"DEBUG\""), "the new log level is in effect");

    // Shrink back: the UDP receiver's socket is closed (its port is free)
    // and the removed exporter stops receiving.
    reload(&c, &good);
    wait_for("the shrinking reload", || (c.counter("service::service", "reloads", "ok") == 2).then_some(()));
    std::net::UdpSocket::bind(("127.0.0.1", udp)).expect("the removed receiver's port is free");
    let more_lines = read_events(&c.path("more.tsv")).len();
    wait_for("beats go on into the kept exporter", || {
        let before = beats_of(&c, pid);
        std::thread::sleep(std::time::Duration::from_millis(150));
        (beats_of(&c, pid) > before).then_some(())
    });
    assert_eq!(read_events(&c.path("more.tsv")).len(), more_lines, "the removed exporter got events");

    // A new queue for the pipeline: its receivers pause (sockets bound) and
    // are rewired to it; beats go on, nothing is refused or lost on the way.
    let requeued = good.replace("exporters: [file] }", "exporters: [file], queue_batches: 512 }");
    reload(&c, &requeued);
    wait_for("the requeueing reload", || (c.counter("service::service", "reloads", "ok") == 3).then_some(()));
    assert_eq!(inode(), first_inode, "the rewired UDS receiver kept its socket");
    assert_eq!(c.counter("pipelines::liveness", "queue_capacity", ""), 512, "the new queue is in use");
    let before = beats_of(&c, pid);
    wait_for("beats go on through the new queue", || (beats_of(&c, pid) > before + 2).then_some(()));
    assert_eq!(c.counter("receivers::vlp/uds", "queue_full_beats", ""), 0);

    // A configuration that cannot be applied (its new receiver's port is
    // taken): the collector goes back to what ran, and says so.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port_taken = taken.local_addr().expect("addr").port();
    reload(&c, &grown(&good, &dir, port_taken));
    wait_for("the failed reload counted", || {
        (c.counter("service::service", "reloads", "failed") == 1).then_some(())
    });
    assert_eq!(inode(), first_inode, "the UDS receiver kept its socket through the failed reload");
    let before = beats_of(&c, pid);
    wait_for("beats go on after the failed reload", || (beats_of(&c, pid) > before + 2).then_some(()));
    assert!(c.log().contains("going back to the running configuration"), "{}", c.log());
    let _ = agent.kill();
    let _ = agent.wait();
    c.stop_cleanly();
}

/// A reload that needs a new tracker (a new capacity) carries its agents
/// into it (issue 31: they were once dropped, and a frozen agent was then
/// never reported): the stalled agent is still tracked, still stalled;
/// the pipeline's counters start from zero (a counter reset to
/// Prometheus), and the log says why.
#[test]
fn a_changed_tracker_carries_its_agents_into_the_new_one() {
    let port = free_udp_port();
    let c = Collector::start_prepared(&config(Path::new("@DIR@"), port, &["old.key"], "300ms"), &[], |dir| {
        keygen(dir, "old.key");
    });
    let dir = c.dir.path().to_path_buf();
    let mut agent = uds_agent(&c, &["--count", "1"]);
    assert!(agent.wait().expect("exit").success());
    wait_for("its stall", || (c.counter("pipelines::liveness", "stalls", "") == 1).then_some(()));
    // Thresholds are applied in place (tests/thresholds.rs); a new capacity is a new tracker.
    reload(&c, &config(&dir, port, &["old.key"], "300ms, capacity: 99"));
    wait_for("the reload", || (c.counter("service::service", "reloads", "ok") == 1).then_some(()));
    wait_for("the new tracker's counters", || {
        (c.counter("pipelines::liveness", "stalls", "") == 0).then_some(())
    });
    wait_for("the agent carried across", || {
        (c.counter("pipelines::liveness", "agents_tracked", "") == 1).then_some(())
    });
    assert_eq!(c.counter("pipelines::liveness", "agents_stalled", ""), 1, "still stalled");
    assert!(c.log().contains("the agents are carried into the new tracker"), "{}", c.log());
}

/// A reload that fails part way, and whose way back fails too (the old
/// event file's directory was removed meanwhile): health checks fail naming
/// the broken component until a later reload succeeds.
#[test]
fn a_reload_that_cannot_go_back_fails_health_until_fixed() {
    let health = varta_integration::free_tcp_port();
    let base = |events: &str, extra_exporter: &str, exporters: &str| {
        format!(
            r#"receivers:
  vlp/uds: {{ transport: uds, path: "@DIR@/varta.sock" }}
processors:
  tracker: {{ threshold: 2s }}
exporters:
  file: {{ path: "@DIR@/{events}" }}
{extra_exporter}
extensions:
  health_check: {{ endpoint: "127.0.0.1:{health}" }}
service:
  extensions: [health_check]
  pid_file: "@DIR@/collector.pid"
  pipelines:
    liveness: {{ receivers: [vlp/uds], processors: [tracker], exporters: [{exporters}] }}
  telemetry: {{ logs: {{ format: json }} }}
"#
        )
    };
    let c = Collector::start_prepared(&base("sub/events.tsv", "", "file"), &[], |dir| {
        std::fs::create_dir(dir.join("sub")).expect("mkdir");
    });
    let dir = c.dir.path().display().to_string();
    let url = format!("http://127.0.0.1:{health}/");
    let status = || varta_integration::http::request("GET", &url, &[]).map(|r| (r.status, r.text())).ok();
    wait_for("healthy", || (status()?.0 == 200).then_some(()));

    std::fs::remove_dir_all(c.path("sub")).expect("remove the event file's directory");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let metrics = format!("  prometheus: {{ endpoint: \"127.0.0.1:{port}\", auth: none }}");
    reload(&c, &base("other.tsv", &metrics, "file, prometheus").replace("@DIR@", &dir));
    wait_for("the failed reload", || (c.counter("service::service", "reloads", "failed") == 1).then_some(()));
    let (code, body) = wait_for("503 naming the broken exporter", || status().filter(|(s, _)| *s == 503));
    assert_eq!(code, 503);
    assert!(body.contains("exporters::file"), "{body}");

    reload(&c, &base("other.tsv", "", "file").replace("@DIR@", &dir));
    wait_for("the fixing reload", || (c.counter("service::service", "reloads", "ok") == 1).then_some(()));
    wait_for("healthy again", || (status()?.0 == 200).then_some(()));
    let mut agent = uds_agent(&c, &["--count", "1"]);
    assert!(agent.wait().expect("exit").success());
    wait_for("events in the new file", || {
        read_events(&c.path("other.tsv")).iter().any(|e| e.pid == agent.id().to_string()).then_some(())
    });
}

/// A reload that rebuilds the OTLP exporter (its `timeout` changed) while
/// its backend accepts connections and never answers: the old exporter's
/// last export waits out its timeout. Pipelines were parked all that time
/// and all 20 live agents were reported stalled; now the old exporter is
/// closed after the pipelines resume, and any park is a blind window.
#[test]
fn a_reload_waiting_on_a_silent_backend_reports_no_live_agent_stalled() {
    let backend = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = backend.local_addr().expect("addr").port();
    // Accepts every connection and never answers (held until the test ends).
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in backend.incoming().flatten() {
            held.push(stream);
        }
    });
    let config = |timeout: &str| {
        format!(
            r#"receivers:
  vlp/uds: {{ transport: uds, path: "@DIR@/varta.sock" }}
processors:
  tracker: {{ threshold: 1s }}
exporters:
  file: {{ path: "@DIR@/events.tsv" }}
  otlphttp:
    endpoint: http://127.0.0.1:{port}
    timeout: {timeout}
    metrics: {{ interval: 200ms }}
service:
  pid_file: "@DIR@/collector.pid"
  pipelines:
    liveness: {{ receivers: [vlp/uds], processors: [tracker], exporters: [file, otlphttp] }}
  telemetry: {{ logs: {{ format: json }} }}
"#
        )
    };
    let c = Collector::start(&config("5s"));
    let agents: Vec<Child> = (0..20).map(|_| uds_agent(&c, &["--every", "200ms"])).collect();
    for a in &agents {
        wait_for("first beats", || (beats_of(&c, a.id()) >= 2).then_some(()));
    }
    // Let a metrics export hang on the silent backend.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let dir = c.dir.path().display().to_string();
    reload(&c, &config("6s").replace("@DIR@", &dir));
    wait_for("the reload", || (c.counter("service::service", "reloads", "ok") == 1).then_some(()));
    for a in &agents {
        let before = beats_of(&c, a.id());
        wait_for("beats after the reload", || (beats_of(&c, a.id()) >= before + 2).then_some(()));
    }
    for a in &agents {
        assert!(never_stalled(&c, a.id()), "live agent {} reported stalled", a.id());
    }
    for a in agents {
        reap(a);
    }
}

/// `reload --pid-file` once signalled whatever pid a stale file named (a
/// SIGHUP kills most programs). The file now records the collector's start
/// time too, and a pid that is not the collector that wrote it is left
/// alone.
#[test]
fn a_stale_pid_file_never_gets_another_process_signalled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bystander = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
    let file = dir.path().join("collector.pid");
    for stale in [format!("{}\n", bystander.id()), format!("{} 1\n", bystander.id())] {
        std::fs::write(&file, stale).expect("write");
        let out = collector_cmd(&["reload", "--pid-file", file.to_str().expect("utf8")]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("stale"), "{out:?}");
        assert!(bystander.try_wait().expect("wait").is_none(), "the bystander was signalled");
    }
    let _ = bystander.kill();
    let _ = bystander.wait();
}
