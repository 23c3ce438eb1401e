//! Agent state across restarts (a `file_storage` extension): the real
//! collector stopped (SIGTERM) or killed (SIGKILL) and started again on
//! the same state directory, with real agent processes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use varta_integration::{Collector, collector_cmd, read_events, signal, varta, wait_for};

/// A pipeline on a UDS socket at `socket` keeping its agents in `state`,
/// threshold 1 s, checkpoints every `every`.
fn config(socket: &Path, state: &Path, every: &str) -> String {
    format!(
        r#"receivers:
  vlp/uds: {{ transport: uds, path: "{}" }}
processors:
  tracker: {{ threshold: 1s, storage: file_storage/state, checkpoint_interval: {every} }}
exporters:
  file: {{ path: "@DIR@/events.tsv" }}
extensions:
  file_storage/state: {{ directory: "{}" }}
service:
  extensions: [file_storage/state]
  pipelines:
    liveness: {{ receivers: [vlp/uds], processors: [tracker], exporters: [file] }}
  telemetry: {{ logs: {{ format: json }} }}
"#,
        socket.display(),
        state.display()
    )
}

/// [`config`] with a resolver (diagnosis window 100ms) after the tracker,
/// and `more` (processor YAML, two-space indented) before it, listed as
/// `chain` in the pipeline.
fn with_resolver(text: &str, more: &str, chain: &str) -> String {
    text.replace(
        "  tracker: { threshold: 1s,",
        &format!("  resolver: {{ diagnosis: {{ window: 100ms }} }}\n{more}  tracker: {{ threshold: 1s,"),
    )
    .replace("processors: [tracker]", &format!("processors: [{chain}]"))
}

/// A directory shared by the collectors of one test (it outlives each),
/// with the UDS path and the state directory inside it.
fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let shared = tempfile::tempdir().expect("tempdir");
    let (socket, state) = (shared.path().join("varta.sock"), shared.path().join("state"));
    (shared, socket, state)
}

/// [`dirs`] for a collector that a stand-in for systemd starts: the
/// config written to `collector.yaml`, naming the event file by its path
/// (`@DIR@` is only filled in by [`Collector::start`]).
fn systemd_dirs() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let (shared, socket, state) = dirs();
    let events = shared.path().join("events.tsv");
    let text = config(&socket, &state, "5s").replace("@DIR@/events.tsv", &events.display().to_string());
    let cfg = shared.path().join("collector.yaml");
    std::fs::write(&cfg, text).expect("config");
    (shared, socket, events, cfg)
}

fn stalls_of(c: &Collector, pid: u32) -> usize {
    let pid = pid.to_string();
    read_events(&c.path("events.tsv")).iter().filter(|e| e.kind == "stall" && e.pid == pid).count()
}

fn tracked(c: &Collector) -> u64 {
    c.counter("pipelines::liveness", "agents_tracked", "")
}

/// An agent frozen just before the collector stops is reported by the
/// next one (it never beats again, so without the checkpoint it would
/// never be seen); one that keeps beating across the restart is not.
#[test]
fn an_agent_frozen_across_a_sigterm_restart_is_reported_and_a_live_one_is_not() {
    let (_shared, socket, state) = dirs();
    let text = config(&socket, &state, "5s");
    let first = Collector::start(&text);
    let sock = socket.display().to_string();
    let mut frozen = varta(&["beat", "--socket", &sock, "--every", "50ms"]).spawn().expect("agent");
    let mut live = varta(&["beat", "--socket", &sock, "--every", "50ms"]).spawn().expect("agent");
    wait_for("both tracked", || (tracked(&first) == 2).then_some(()));
    signal(&frozen, libc::SIGSTOP);
    assert_eq!(stalls_of(&first, frozen.id()), 0, "stopped before the threshold passed");
    first.stop_cleanly();
    assert!(state.join("liveness.state").exists(), "the last checkpoint is written at the stop");

    let second = Collector::start(&text);
    assert_eq!(second.counter("processors::tracker", "agents_restored", ""), 2);
    let window = wait_for("the restart's blind window", || {
        read_events(&second.path("events.tsv")).into_iter().find(|e| e.kind == "blind_window")
    });
    assert!(window.payload.starts_with("cause=restart"), "{window:?}");
    wait_for("the frozen agent reported by the new process", || {
        (stalls_of(&second, frozen.id()) == 1).then_some(())
    });
    // The live one beat to the same socket all along: never stalled,
    // though the new process only heard of it from the checkpoint first.
    let beats = second.counter("pipelines::liveness", "beats_accepted", "");
    wait_for("the live agent heard again", || {
        (second.counter("pipelines::liveness", "beats_accepted", "") > beats + 10).then_some(())
    });
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(stalls_of(&second, live.id()), 0, "a live agent across a restart is not reported");
    for a in [&mut frozen, &mut live] {
        signal(a, libc::SIGCONT);
        let _ = a.kill();
        let _ = a.wait();
    }
    second.stop_cleanly();
}

/// SIGKILL: what the last periodic checkpoint held survives.
#[test]
fn an_agent_in_the_last_checkpoint_survives_a_sigkill() {
    let (_shared, socket, state) = dirs();
    let text = config(&socket, &state, "200ms");
    let first = Collector::start(&text);
    let sock = socket.display().to_string();
    let mut frozen = varta(&["beat", "--socket", &sock, "--every", "50ms"]).spawn().expect("agent");
    wait_for("tracked", || (tracked(&first) == 1).then_some(()));
    let written = first.counter("processors::tracker", "checkpoints_written", "");
    wait_for("a checkpoint with the agent", || {
        (first.counter("processors::tracker", "checkpoints_written", "") > written).then_some(())
    });
    signal(&frozen, libc::SIGSTOP);
    first.kill();
    let second = Collector::start(&text);
    wait_for("the frozen agent reported after the crash", || {
        (stalls_of(&second, frozen.id()) == 1).then_some(())
    });
    signal(&frozen, libc::SIGCONT);
    let _ = frozen.kill();
    let _ = frozen.wait();
}

/// Whatever lies in the state directory, the collector starts (empty),
/// says why, counts it, and stops cleanly.
#[test]
fn garbage_truncated_and_other_boot_state_files_are_set_aside() {
    let (_shared, socket, state) = dirs();
    let text = config(&socket, &state, "5s");
    // A real checkpoint first, to cut short and to move to another boot.
    let first = Collector::start(&text);
    let sock = socket.display().to_string();
    let mut agent =
        varta(&["beat", "--socket", &sock, "--count", "3", "--every", "20ms"]).spawn().expect("agent");
    let _ = agent.wait();
    wait_for("tracked", || (tracked(&first) == 1).then_some(()));
    let (status, _) = first.stop();
    assert!(status.success());
    let file = state.join("liveness.state");
    let good = std::fs::read(&file).expect("checkpoint");
    let mut other_boot = good.clone();
    other_boot[12] ^= 0xff; // the boot id
    let crc = crc32c::crc32c(&other_boot[..other_boot.len() - 4]).to_le_bytes();
    let n = other_boot.len();
    other_boot[n - 4..].copy_from_slice(&crc);
    for (contents, reason) in [
        (b"not a checkpoint at all".to_vec(), "format"),
        (good[..good.len() / 2].to_vec(), "corrupt"),
        (other_boot, "other_boot"),
    ] {
        std::fs::write(&file, &contents).expect("write");
        let c = Collector::start(&text);
        assert_eq!(c.counter("processors::tracker", "checkpoints_set_aside", reason), 1, "{reason}");
        assert_eq!(c.counter("processors::tracker", "agents_restored", ""), 0, "{reason}");
        assert!(state.join("liveness.state.set-aside").exists(), "{reason}: kept aside for a look");
        let (status, log) = c.stop();
        assert!(status.success(), "{reason}: {log}");
    }
}

/// A state directory someone else could write, or that someone else
/// owns, is a configuration error.
#[test]
fn a_state_directory_with_the_wrong_mode_or_owner_is_refused() {
    let (shared, socket, state) = dirs();
    std::fs::create_dir(&state).expect("mkdir");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let path = shared.path().join("collector.yaml");
    std::fs::write(
        &path,
        config(&socket, &state, "5s").replace("@DIR@", &shared.path().display().to_string()),
    )
    .expect("config");
    let out = collector_cmd(&["validate", "--config", &path.display().to_string()]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("extensions::file_storage/state") && said.contains("0700"), "{said}");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let out = collector_cmd(&["validate", "--config", &path.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Mode 0700, but another user's (nobody): they could plant our state.
    std::os::unix::fs::chown(&state, Some(65_534), None).expect("chown (tests run as root)");
    let out = collector_cmd(&["validate", "--config", &path.display().to_string()]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("belongs to uid 65534"), "{said}");
}

/// A full disk under the state directory: every checkpoint fails and is
/// counted, beats keep being accepted, and the stop is clean.
#[test]
fn a_full_disk_fails_checkpoints_without_blocking_ingestion() {
    let shared = tempfile::tempdir().expect("tempdir");
    let disk = varta_pipeline::testing::SmallDisk::mount(shared.path(), "64k");
    let (socket, state) = (shared.path().join("varta.sock"), disk.path().join("state"));
    let c = Collector::start(&config(&socket, &state, "100ms"));
    // Fill what is left of the disk.
    let mut filler = std::fs::File::create(disk.path().join("filler")).expect("filler");
    let block = [0u8; 4096];
    while std::io::Write::write_all(&mut filler, &block).is_ok() {}
    let _ = filler.sync_all();
    let sock = socket.display().to_string();
    let mut agent = varta_integration::Reaped(
        varta(&["beat", "--socket", &sock, "--every", "20ms"]).spawn().expect("agent"),
    );
    let beats = |c: &Collector| c.counter("pipelines::liveness", "beats_accepted", "");
    wait_for("checkpoints failing", || {
        (c.counter("processors::tracker", "checkpoints_failed", "") >= 2).then_some(())
    });
    let before = beats(&c);
    wait_for("beats accepted meanwhile", || (beats(&c) > before + 5).then_some(()));
    assert_eq!(tracked(&c), 1);
    let _ = agent.kill();
    let log = c.stop_cleanly();
    assert!(log.contains("cannot write the checkpoint"), "said why: {log}");
}

/// An incident open across a restart is one trace: its stall span before
/// the stop and its resolved span after it share the trace id (the
/// checkpoint keeps the incident number and the trace-id salt).
#[test]
fn an_incident_open_across_a_restart_ends_in_the_same_trace() {
    use varta_integration::free_tcp_port;
    use varta_integration::otlp_server::{OtlpServer, Sink};
    let (_shared, socket, state) = dirs();
    let port = free_tcp_port();
    let sink = Sink::default();
    let _server = OtlpServer::start(port, &sink);
    let text = config(&socket, &state, "5s")
        .replace(
            "exporters:\n  file: { path: \"@DIR@/events.tsv\" }\n",
            &format!(
                "exporters:\n  file: {{ path: \"@DIR@/events.tsv\" }}\n  otlp: {{ endpoint: \"http://127.0.0.1:{port}\", metrics: {{ enabled: false }} }}\n"
            ),
        )
        .replace("exporters: [file]", "exporters: [file, otlp]");
    let first = Collector::start(&text);
    let sock = socket.display().to_string();
    let mut agent = varta(&["beat", "--socket", &sock, "--every", "50ms"]).spawn().expect("agent");
    let pid = i64::from(agent.id());
    wait_for("tracked", || (tracked(&first) == 1).then_some(()));
    signal(&agent, libc::SIGSTOP);
    let span = |name: &'static str| {
        let sink = sink.clone();
        move || {
            sink.with(|r| {
                r.spans.iter().zip(&r.span_resources).find_map(|(s, res)| {
                    let ours = res.iter().any(|kv| {
                        kv.key == "process.pid"
                            && matches!(
                                kv.value.as_ref().and_then(|v| v.value.as_ref()),
                                Some(opentelemetry_proto::tonic::common::v1::any_value::Value::IntValue(p)) if *p == pid
                            )
                    });
                    (s.name == name && ours).then(|| s.trace_id.clone())
                })
            })
        }
    };
    let stalled = wait_for("the stall span", span("varta.stall"));
    first.stop_cleanly();
    let second = Collector::start(&text);
    signal(&agent, libc::SIGCONT);
    let resolved = wait_for("the resolved span from the new process", span("varta.stall.resolved"));
    assert_eq!(resolved, stalled, "one incident, one trace, across the restart");
    let _ = agent.kill();
    let _ = agent.wait();
    second.stop_cleanly();
}

/// Socket activation with the real `systemd-socket-activate --datagram`:
/// the collector takes the socket bound for it (agents' beats queued
/// before it started are read), never binds or unlinks the path, and the
/// path is still there, still a socket, after it stopped.
#[test]
fn socket_activation_hands_the_agents_socket_to_the_collector() {
    use std::os::unix::fs::FileTypeExt;
    use std::process::{Command, Stdio};
    let (shared, socket, events, cfg) = systemd_dirs();
    let log = shared.path().join("collector.log");
    let mut activator = Command::new("systemd-socket-activate")
        .args(["--datagram", "-l"])
        .arg(&socket)
        .args(["-E", "XDG_STATE_HOME"])
        .arg(varta_integration::binary("varta-collector"))
        .arg("--config")
        .arg(&cfg)
        .env("XDG_STATE_HOME", shared.path().join("xdg"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("systemd-socket-activate (Debian's systemd package)");
    wait_for("the socket bound by the activator", || socket.exists().then_some(()));
    // The first datagram starts the collector; these beats wait in the
    // socket meanwhile, then it reads them.
    let mut agent =
        varta(&["beat", "--socket", &socket.display().to_string(), "--count", "3", "--every", "50ms"])
            .spawn()
            .expect("agent");
    let pid = agent.id().to_string();
    let _ = agent.wait();
    wait_for("the agent's stall from the activated collector", || {
        read_events(&events).iter().any(|e| e.kind == "stall" && e.pid == pid).then_some(())
    });
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(said.contains("using the socket systemd passed"), "{said}");
    signal(&activator, libc::SIGTERM);
    let status = wait_for("the collector's exit", || activator.try_wait().ok().flatten());
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{said}");
    let meta = std::fs::symlink_metadata(&socket).expect("the path outlives the collector");
    assert!(meta.file_type().is_socket(), "still systemd's socket");
}

/// An agent killed while the collector is down: the new process reports
/// it at once, found gone by the identity check right after the restore
/// (its diagnosis says `exited`), and recovery does not run by default
/// (refused and audited as `restored`); with `on_restore: run`, it does.
#[test]
fn an_agent_killed_while_the_collector_is_down_is_reported_exited_and_not_recovered_by_default() {
    for (on_restore, runs) in [("", false), ("    on_restore: run\n", true)] {
        let (shared, socket, state) = dirs();
        let runs_file = shared.path().join("runs");
        let recovery = format!(
            "  recovery:\n    exec: [\"/bin/sh\", \"-c\", \"echo $1 >> {}\", \"recover\", \"{{pid}}\"]\n    audit_file: \"@DIR@/audit.tsv\"\n{on_restore}",
            runs_file.display()
        );
        let text = with_resolver(&config(&socket, &state, "5s"), &recovery, "tracker, resolver, recovery")
            // A threshold the test never waits out: the stall comes from
            // the identity check right after the restore.
            .replace("threshold: 1s", "threshold: 10m");
        let first = Collector::start(&text);
        let sock = socket.display().to_string();
        let mut agent = varta(&["beat", "--socket", &sock, "--every", "50ms"]).spawn().expect("agent");
        let pid = agent.id();
        wait_for("tracked", || (tracked(&first) == 1).then_some(()));
        first.stop_cleanly();
        // Gone while nobody watched.
        let _ = agent.kill();
        let _ = agent.wait();
        let second = Collector::start(&text);
        let events = second.path("events.tsv");
        let pid_s = pid.to_string();
        wait_for("the gone agent reported", || {
            read_events(&events).iter().any(|e| e.kind == "stall" && e.pid == pid_s).then_some(())
        });
        let diagnosis = wait_for("its diagnosis", || {
            read_events(&events).into_iter().find(|e| e.kind == "diagnosis" && e.pid == pid_s)
        });
        assert_eq!(diagnosis.status, "exited", "{diagnosis:?}");
        assert_eq!(second.counter("processors::resolver", "restored_exited", ""), 1);
        let decision = wait_for("the recovery decision", || {
            read_events(&events).into_iter().find(|e| {
                e.kind == "recovery" && e.pid == pid_s && (e.status == "refused" || e.status == "started")
            })
        });
        if runs {
            assert_eq!(decision.status, "started", "on_restore: run: {decision:?}");
            wait_for("the command's run", || runs_file.exists().then_some(()));
        } else {
            assert_eq!(decision.status, "refused", "{decision:?}");
            assert!(decision.payload.contains("reason=restored"), "{decision:?}");
            let audit = std::fs::read_to_string(second.path("audit.tsv")).unwrap_or_default();
            assert!(audit.contains("refused:restored"), "audited: {audit}");
            assert!(!runs_file.exists(), "no recovery ran");
        }
        second.stop_cleanly();
    }
}

/// A reload that rebuilds the tracker (a new `capacity`) carries its
/// agents across: an agent frozen just before it is still reported, and a
/// live one is not (it once started with no agents: the frozen one was
/// never reported).
#[test]
fn a_reload_changing_capacity_keeps_a_frozen_agent_reported() {
    let (_shared, socket, state) = dirs();
    let text = config(&socket, &state, "5s")
        .replace("service:\n", "service:\n  pid_file: \"@DIR@/collector.pid\"\n");
    let c = Collector::start(&text);
    let sock = socket.display().to_string();
    let mut frozen = varta(&["beat", "--socket", &sock, "--every", "50ms"]).spawn().expect("agent");
    let mut live = varta(&["beat", "--socket", &sock, "--every", "50ms"]).spawn().expect("agent");
    wait_for("both tracked", || (tracked(&c) == 2).then_some(()));
    signal(&frozen, libc::SIGSTOP);
    let dir = c.dir.path().display().to_string();
    let bigger = text.replace("threshold: 1s,", "threshold: 1s, capacity: 1000,").replace("@DIR@", &dir);
    std::fs::write(c.path("collector.yaml"), bigger).expect("rewrite config");
    let out = collector_cmd(&["reload", "--pid-file", c.path("collector.pid").to_str().expect("utf8")]);
    assert!(out.status.success(), "{out:?}");
    let log = wait_for("the reload finished", || {
        let log = c.log();
        log.contains("reload finished").then_some(log)
    });
    assert!(log.contains("agents are carried into the new tracker"), "{log}");
    wait_for("both agents carried into the new tracker", || (tracked(&c) == 2).then_some(()));
    wait_for("the frozen agent reported after the reload", || {
        (stalls_of(&c, frozen.id()) == 1).then_some(())
    });
    assert_eq!(stalls_of(&c, live.id()), 0, "the live one is not");
    for a in [&mut frozen, &mut live] {
        signal(a, libc::SIGCONT);
        let _ = a.kill();
        let _ = a.wait();
    }
}

/// A secure frame recorded before a restart is refused after it: the
/// receiver's replay sessions are kept in the state directory. On SIGTERM
/// they are written at the stop; on SIGKILL what the last write held
/// survives. The live session goes on after the restart.
#[test]
fn a_secure_frame_recorded_before_a_restart_is_refused_after_it() {
    use std::net::UdpSocket;
    use varta_proto::{Frame, FrameCipher, Iv, Status};

    for crash in [false, true] {
        let shared = tempfile::tempdir().expect("tempdir");
        let state = shared.path().join("state");
        let (key_path, key) = varta_integration::keygen(shared.path(), "shared.key");
        let port = varta_integration::free_udp_port();
        let text = format!(
            r#"receivers:
  vlp/secure:
    transport: secure_udp
    endpoint: "127.0.0.1:{port}"
    key_files: ["{}"]
    storage: file_storage/state
    checkpoint_interval: 100ms
processors:
  tracker: {{ threshold: 1s }}
exporters:
  file: {{ path: "@DIR@/events.tsv" }}
extensions:
  file_storage/state: {{ directory: "{}" }}
service:
  extensions: [file_storage/state]
  pipelines:
    liveness: {{ receivers: [vlp/secure], processors: [tracker], exporters: [file] }}
  telemetry: {{ logs: {{ format: json }} }}
"#,
            key_path.display(),
            state.display()
        );
        let (addr, me) = (format!("127.0.0.1:{port}"), std::process::id());
        let (cipher, sock) = (FrameCipher::new(&key), UdpSocket::bind("127.0.0.1:0").expect("bind"));
        let sealed = |counter: u32, nonce: u64| {
            cipher.seal_shared(
                Iv { random: [7; 8], counter },
                &Frame::new(Status::Ok, me, nonce, nonce, 0).encode(),
            )
        };
        let beats = |c: &Collector| {
            let me = me.to_string();
            read_events(&c.path("events.tsv")).iter().filter(|e| e.kind == "beat" && e.pid == me).count()
        };
        let first = Collector::start(&text);
        let recorded = sealed(0, 1);
        sock.send_to(&recorded, &addr).expect("send");
        wait_for("the recorded frame accepted", || (beats(&first) == 1).then_some(()));
        if crash {
            wait_for("the sessions written", || {
                (first.counter("receivers::vlp/secure", "session_saves", "") >= 1).then_some(())
            });
            first.kill();
        } else {
            first.stop_cleanly();
        }
        assert!(state.join("vlp_secure.sessions").exists(), "crash={crash}");

        let second = Collector::start(&text);
        assert_eq!(second.counter("receivers::vlp/secure", "senders_restored", ""), 1, "crash={crash}");
        sock.send_to(&recorded, &addr).expect("replay");
        wait_for("the replay refused", || {
            (second.counter("receivers::vlp/secure", "refused", "replay") == 1).then_some(())
        });
        sock.send_to(&sealed(1, 2), &addr).expect("live");
        wait_for("the live session goes on", || (beats(&second) == 1).then_some(()));
        let (status, log) = second.stop();
        assert!(status.success(), "crash={crash}: {log}");
    }
}

/// Receives one datagram on `notify` and the descriptors attached to it
/// (SCM_RIGHTS), as systemd's notify socket does; `None` on the timeout.
fn recv_with_fds(notify: &std::os::unix::net::UnixDatagram) -> Option<(String, Vec<std::os::fd::OwnedFd>)> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut buf = [0u8; 512];
    let mut control = [0u64; 16];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: a zeroed msghdr is valid; its pointers outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: recvmsg(2) writes within the buffers described by msg.
    let n = unsafe { libc::recvmsg(notify.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return None;
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                let count =
                    ((*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<libc::c_int>();
                for k in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(k))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Some((String::from_utf8_lossy(&buf[..n as usize]).into_owned(), fds))
}

/// The file-descriptor store, with this test as systemd: the first
/// collector (`FDSTORE=1` in its environment) binds the agents' socket and
/// stores it (`FDSTORE=1` with the descriptor over `NOTIFY_SOCKET`); it
/// stops without unlinking the path; the next one is handed the stored
/// socket as `LISTEN_FDS` and takes it (storing nothing again). An agent
/// beating all along never finds the path gone or refused.
#[test]
fn the_fd_store_keeps_the_socket_across_a_restart() {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::net::UnixDatagram;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Duration;

    let (shared, socket, events, cfg) = systemd_dirs();
    let notify_path = shared.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    notify.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
    let start = |passed: Option<&OwnedFd>, log: &str| {
        let mut cmd = Command::new("/bin/sh");
        // `$$` is the shell's pid, which `exec` makes the collector's.
        cmd.args(["-c", r#"if [ -n "$PASS" ]; then export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=varta-uds; fi; exec "$0" --config "$1""#])
            .arg(varta_integration::binary("varta-collector"))
            .arg(&cfg)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("FDSTORE", "4")
            .env("XDG_STATE_HOME", shared.path().join("xdg"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(shared.path().join(log)).expect("log"));
        if let Some(fd) = passed {
            let raw = fd.as_raw_fd();
            cmd.env("PASS", "1");
            // SAFETY: dup2(2) is async-signal-safe; the stored socket
            // becomes descriptor 3 (SD_LISTEN_FDS_START), without CLOEXEC.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::dup2(raw, 3) < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
                });
            }
        }
        let child = varta_integration::Reaped(cmd.spawn().expect("varta-collector"));
        // Every notification up to READY=1, with the descriptors stored.
        let mut stored = Vec::new();
        wait_for("READY=1", || {
            let (message, fds) = recv_with_fds(&notify)?;
            if message.lines().any(|l| l == "FDSTORE=1") {
                assert!(message.lines().any(|l| l == "FDNAME=varta-uds"), "{message}");
                stored.extend(fds);
            }
            message.lines().any(|l| l == "READY=1").then_some(())
        });
        (child, stored)
    };

    let (mut first, mut stored) = start(None, "first.log");
    assert_eq!(stored.len(), 1, "the socket it bound is stored");
    let store = stored.pop().expect("stored socket");

    // The agent: one beat every 20 ms, every send's outcome counted.
    let (stop, refused, sent) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let beater = {
        let (stop, refused, sent, socket) = (stop.clone(), refused.clone(), sent.clone(), socket.clone());
        std::thread::spawn(move || {
            let me = std::process::id();
            let tx = UnixDatagram::unbound().expect("agent socket");
            let mut nonce = 1;
            while !stop.load(Ordering::Relaxed) {
                let frame = varta_proto::Frame::new(varta_proto::Status::Ok, me, nonce, nonce, 0).encode();
                match tx.send_to(&frame, &socket) {
                    Ok(_) => {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    // Nobody reads while the collector restarts: the queue
                    // fills (EAGAIN); the path is never gone or refused.
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        eprintln!("agent send: {e}");
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
                nonce += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let me = std::process::id().to_string();
    let beats = || read_events(&events).iter().filter(|e| e.kind == "beat" && e.pid == me).count();
    wait_for("beats read by the first collector", || (beats() >= 3).then_some(()));

    signal(&first, libc::SIGTERM);
    let status = first.wait().expect("first collector");
    let log = std::fs::read_to_string(shared.path().join("first.log")).unwrap_or_default();
    assert!(status.success(), "{log}");
    assert!(log.contains("file-descriptor store"), "{log}");
    let meta = std::fs::symlink_metadata(&socket).expect("the path outlives the collector");
    assert!(meta.file_type().is_socket());
    std::thread::sleep(Duration::from_millis(200)); // the agent beats into the held socket

    let before = beats();
    let (mut second, stored_again) = start(Some(&store), "second.log");
    assert!(stored_again.is_empty(), "a passed socket is not stored again");
    let log = || std::fs::read_to_string(shared.path().join("second.log")).unwrap_or_default();
    let read = std::panic::catch_unwind(|| {
        wait_for("beats read by the next collector", || (beats() >= before + 3).then_some(()))
    });
    assert!(read.is_ok(), "{} beats before; log:\n{}", before, log());
    let log = log();
    assert!(log.contains("using the socket systemd passed"), "{log}");

    stop.store(true, Ordering::Relaxed);
    beater.join().expect("agent");
    signal(&second, libc::SIGTERM);
    assert!(second.wait().expect("second collector").success());
    assert!(sent.load(Ordering::Relaxed) > 10);
    assert_eq!(refused.load(Ordering::Relaxed), 0, "the agent never saw the path gone or refused");
}

/// `debounce` outlives a restart: a recovery that ran just before the
/// collector restarted is not run again for the same agent's next stall
/// within `debounce` (this test process is the agent).
#[test]
fn a_recovery_just_before_a_restart_keeps_its_debounce() {
    use varta_client::{BeatOutcome, Client};
    use varta_proto::Status;
    let shared = tempfile::tempdir().expect("tempdir");
    let state = shared.path().join("state");
    let text = format!(
        r#"receivers:
  vlp/uds: {{ transport: uds, path: "@DIR@/varta.sock" }}
processors:
  tracker: {{ threshold: 300ms, storage: file_storage/state }}
  resolver: {{ diagnosis: {{ window: 100ms }} }}
  recovery:
    exec: ["/bin/sh", "-c", "echo $1 >> @DIR@/runs", "recover", "{{pid}}"]
    audit_file: "@DIR@/audit.tsv"
    debounce: 1h
exporters:
  file: {{ path: "@DIR@/events.tsv", beats: false }}
extensions:
  file_storage/state: {{ directory: "{}" }}
service:
  extensions: [file_storage/state]
  pipelines:
    liveness: {{ receivers: [vlp/uds], processors: [tracker, resolver, recovery], exporters: [file] }}
  telemetry: {{ logs: {{ format: json }} }}
"#,
        state.display()
    );
    let me = std::process::id().to_string();
    let decisions = |c: &Collector| -> Vec<(String, String)> {
        read_events(&c.path("events.tsv"))
            .into_iter()
            .filter(|e| {
                e.kind == "recovery" && e.pid == me && (e.status == "started" || e.status == "refused")
            })
            .map(|e| (e.status, e.payload))
            .collect()
    };
    let first = Collector::start(&text);
    let client = Client::connect_uds(first.path("varta.sock")).expect("uds client");
    assert!(matches!(client.beat(Status::Ok, 0), BeatOutcome::Sent));
    wait_for("the first recovery", || decisions(&first).into_iter().find(|(s, _)| s == "started"));
    wait_for("its run", || first.path("runs").exists().then_some(()));
    first.stop_cleanly();
    assert!(state.join("liveness.recovery").exists(), "the run is kept");

    let second = Collector::start(&text);
    // Beats once more (its sequence goes on), then stalls again: a new
    // stall of the same agent.
    let next = varta_proto::Frame::new(Status::Ok, std::process::id(), 2, client.next_nonce(), 0);
    std::os::unix::net::UnixDatagram::unbound()
        .and_then(|s| s.send_to(&next.encode(), second.path("varta.sock")))
        .expect("beat");
    let decided = std::panic::catch_unwind(|| {
        wait_for("the next stall's decision", || decisions(&second).into_iter().next())
    });
    let decided = decided.unwrap_or_else(|_| {
        panic!(
            "no decision; events:\n{}\nlog:\n{}",
            std::fs::read_to_string(second.path("events.tsv")).unwrap_or_default(),
            std::fs::read_to_string(second.path("collector.log")).unwrap_or_default()
        )
    });
    assert_eq!(decided.0, "refused", "{decided:?}");
    assert!(decided.1.contains("reason=debounce"), "{decided:?}");
    assert!(!second.path("runs").exists(), "not run again");
    second.stop_cleanly();
}

/// An agent already stalled when the collector stops, and killed while it
/// is down: after the restart its open incident continues — diagnosed
/// again, now `exited`, under the same incident number — and no second
/// stall is reported.
#[test]
fn an_open_incident_whose_agent_died_while_down_is_diagnosed_exited() {
    let (_shared, socket, state) = dirs();
    let text = with_resolver(&config(&socket, &state, "5s"), "", "tracker, resolver");
    let first = Collector::start(&text);
    let sock = socket.display().to_string();
    let mut agent = varta_integration::Reaped(
        varta(&["beat", "--socket", &sock, "--every", "50ms"]).spawn().expect("agent"),
    );
    let pid = agent.id().to_string();
    wait_for("tracked", || (tracked(&first) == 1).then_some(()));
    signal(&agent, libc::SIGSTOP);
    let before = wait_for("its stall diagnosed", || {
        read_events(&first.path("events.tsv")).into_iter().find(|e| e.kind == "diagnosis" && e.pid == pid)
    });
    assert_eq!(before.status, "stopped", "{before:?}");
    first.stop_cleanly();
    let _ = agent.kill();
    let _ = agent.wait();

    // A threshold the test never waits out: only the identity check can speak.
    let second = Collector::start(&text.replace("threshold: 1s", "threshold: 10m"));
    let after = wait_for("the open incident diagnosed again", || {
        read_events(&second.path("events.tsv")).into_iter().find(|e| e.kind == "diagnosis" && e.pid == pid)
    });
    assert_eq!(after.status, "exited", "{after:?}");
    assert_eq!(after.nonce, before.nonce, "the same incident: {before:?} {after:?}");
    assert_eq!(stalls_of(&second, agent.id()), 0, "no second stall");
    second.stop_cleanly();
}
