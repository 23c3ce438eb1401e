//! Live reload (SIGHUP / `varta-collector reload`): key rotation without a
//! restart, broken configs refused, unchanged reloads touching nothing.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Child;

use varta_integration::{Collector, collector_cmd, free_udp_port, read_events, varta, wait_for};

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

fn keygen(dir: &Path, name: &str) {
    let out = varta(&["keygen", "--out", dir.join(name).to_str().expect("utf8")]).output().expect("keygen");
    assert!(out.status.success(), "{out:?}");
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

fn beats_of(c: &Collector, pid: u32) -> usize {
    read_events(&c.path("events.tsv")).iter().filter(|e| e.kind == "beat" && e.pid == pid.to_string()).count()
}

fn kill(mut a: Child) {
    let _ = a.kill();
    let _ = a.wait();
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
    kill(old_agent);

    // The old key is removed: frames sealed with it are refused from now on.
    reload(&c, &config(&dir, port, &["new.key"], "500ms"));
    wait_for("the second reload", || (c.counter("service::service", "reloads", "ok") == 2).then_some(()));
    let late = secure_agent(port, &dir.join("old.key"));
    wait_for("old-key frames refused", || {
        (c.counter("receivers::vlp/secure", "refused", "decrypt_failed") >= 2).then_some(())
    });
    assert_eq!(beats_of(&c, late.id()), 0);
    assert!(never_stalled(&c, new_agent.id()), "the agent on the new key never stalled");
    kill(late);
    kill(new_agent);

    // Rotation by rewriting the same file (the config does not change): the
    // reload re-reads it, and the key it now holds is in effect.
    std::fs::copy(dir.join("old.key"), dir.join("new.key")).expect("rewrite the key file");
    reload(&c, &config(&dir, port, &["new.key"], "500ms"));
    wait_for("the third reload", || (c.counter("service::service", "reloads", "ok") == 3).then_some(()));
    let rewritten = secure_agent(port, &dir.join("old.key"));
    wait_for("beats sealed with the rewritten file's key", || {
        (beats_of(&c, rewritten.id()) >= 2).then_some(())
    });
    kill(rewritten);
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

#[test]
fn a_broken_or_unapplicable_config_changes_nothing_and_an_unchanged_one_keeps_state() {
    let port = free_udp_port();
    let c = Collector::start_prepared(&config(Path::new("@DIR@"), port, &["old.key"], "300ms"), &[], |dir| {
        keygen(dir, "old.key");
    });
    let dir = c.dir.path().to_path_buf();
    let inode = std::fs::metadata(c.path("varta.sock")).expect("socket").ino();
    let good = config(&dir, port, &["old.key"], "300ms");
    // An agent beats, then stalls once: the tracker holds its state.
    let mut agent =
        varta(&["beat", "--socket", c.path("varta.sock").to_str().expect("utf8"), "--every", "50ms"])
            .spawn()
            .expect("agent");
    let pid = agent.id();
    wait_for("beats", || (beats_of(&c, pid) >= 2).then_some(()));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
    wait_for("its stall", || (c.counter("pipelines::liveness", "stalls", "") == 1).then_some(()));

    reload(&c, "receivers: [this is not a config\n");
    wait_for("the broken reload counted", || {
        (c.counter("service::service", "reloads", "invalid") == 1).then_some(())
    });
    reload(&c, &good.replace("threshold: 300ms", "threshold: 5s"));
    wait_for("the unapplicable reload counted", || {
        (c.counter("service::service", "reloads", "needs_restart") == 1).then_some(())
    });
    reload(&c, &good);
    wait_for("the unchanged reload", || (c.counter("service::service", "reloads", "ok") == 1).then_some(()));
    // Same socket, same tracker state: the agent resumes from its stall.
    assert_eq!(std::fs::metadata(c.path("varta.sock")).expect("socket").ino(), inode);
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
    wait_for("the resume of the same incident", || {
        (c.counter("pipelines::liveness", "resumes", "") == 1).then_some(())
    });
    assert_eq!(c.counter("pipelines::liveness", "stalls", ""), 1);
    let _ = agent.kill();
    let _ = agent.wait();
}
