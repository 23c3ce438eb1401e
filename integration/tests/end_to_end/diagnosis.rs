//! Who stalled and why, with real processes: each way of stalling is
//! diagnosed for what it is, agents carry their program, service and
//! container, all through the real collector's file, debug and Prometheus
//! outputs.

use std::process::{Child, Command, Stdio};

use varta_integration::http::{get, sample};
use varta_integration::{Collector, binary, free_tcp_port, read_events, reap, send_signal, varta, wait_for};

fn config(port: u16) -> String {
    format!(
        r#"receivers:
  vlp/uds: {{ transport: uds, path: "@DIR@/varta.sock" }}
processors:
  tracker: {{ threshold: 300ms, snapshot_interval: 50ms }}
  resolver: {{ diagnosis: {{ window: 200ms }} }}
exporters:
  file: {{ path: "@DIR@/events.tsv" }}
  debug: {{}}
  prometheus: {{ endpoint: "127.0.0.1:{port}", auth: none, rate_limit: {{ rate: 1000, burst: 1000 }} }}
service:
  pipelines:
    liveness: {{ receivers: [vlp/uds], processors: [tracker, resolver], exporters: [file, debug, prometheus] }}
  telemetry: {{ logs: {{ format: json }} }}
"#
    )
}

fn stall_agent(c: &Collector, mode: &str) -> Child {
    Command::new(binary("stall-agent"))
        .args([c.path("varta.sock").to_str().expect("utf8"), mode, "5"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("stall-agent")
}

/// The `diagnosis` line for `pid`: (cause, details).
fn diagnosis(c: &Collector, pid: u32) -> (String, String) {
    let pid = pid.to_string();
    wait_for(&format!("diagnosis of {pid}"), || {
        read_events(&c.path("events.tsv"))
            .into_iter()
            .find(|e| e.kind == "diagnosis" && e.pid == pid)
            .map(|e| (e.status, e.payload))
    })
}

fn beat_seen(c: &Collector, pid: u32) {
    let pid = pid.to_string();
    wait_for("first beat", || read_events(&c.path("events.tsv")).iter().any(|e| e.pid == pid).then_some(()));
}

#[test]
fn every_way_of_stalling_is_diagnosed_for_what_it_is() {
    let c = Collector::start(&config(free_tcp_port()));
    let spin = stall_agent(&c, "spin");
    let lock = stall_agent(&c, "lock");
    let io = stall_agent(&c, "io");
    let stopped = stall_agent(&c, "sleep");
    let mut killed = stall_agent(&c, "sleep");
    for a in [&spin, &lock, &io, &stopped, &killed] {
        beat_seen(&c, a.id());
    }
    send_signal(stopped.id(), libc::SIGSTOP);
    let killed_pid = killed.id();
    let _ = killed.kill();
    let _ = killed.wait(); // reaped: gone, not a zombie

    let (cause, details) = diagnosis(&c, spin.id());
    assert_eq!(cause, "spinning", "{details}");
    let (cause, details) = diagnosis(&c, lock.id());
    assert_eq!(cause, "waiting", "{details}");
    assert!(details.contains("wchan=futex"), "a lock wait shows its futex: {details}");
    let (cause, details) = diagnosis(&c, io.id());
    assert_eq!(cause, "blocked_io", "{details}");
    assert!(details.contains("disk=1"), "{details}");
    let (cause, details) = diagnosis(&c, stopped.id());
    assert_eq!(cause, "stopped", "{details}");
    let (cause, _) = diagnosis(&c, killed_pid);
    assert_eq!(cause, "exited");

    // The diagnosis follows its stall and names the same incident.
    let events = read_events(&c.path("events.tsv"));
    let pid = spin.id().to_string();
    let stall = events.iter().position(|e| e.kind == "stall" && e.pid == pid).expect("stall line");
    let diag = events.iter().position(|e| e.kind == "diagnosis" && e.pid == pid).expect("diagnosis line");
    assert!(diag > stall);
    assert_eq!(c.counter("pipelines::liveness", "stall_causes", "spinning"), 1);
    assert_eq!(c.counter("pipelines::liveness", "stall_causes", "exited"), 1);
    assert_eq!(c.counter("processors::resolver", "undiagnosed", "budget"), 0);
    send_signal(stopped.id(), libc::SIGCONT);
    for a in [spin, lock, io, stopped] {
        reap(a);
    }
}

#[test]
fn agents_carry_program_service_and_container() {
    let port = free_tcp_port();
    let c = Collector::start(&config(port));
    let sock = c.path("varta.sock").display().to_string();
    let agent = varta(&["beat", "--socket", &sock, "--every", "50ms"])
        .env("OTEL_SERVICE_NAME", "checkout")
        .env("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test")
        .spawn()
        .expect("agent");
    let series = format!("varta_beats_total{{pid=\"{}\",exe=\"varta\",service=\"checkout\"}}", agent.id());
    wait_for("the agent's exe and service labels", || {
        let body = get(&format!("http://127.0.0.1:{port}/metrics"), &[]).text();
        sample(&body, &series).filter(|&v| v >= 1.0)
    });
    // The debug exporter logs the same, on the agent's events.
    let pid = agent.id();
    beat_seen(&c, pid);
    send_signal(pid, libc::SIGSTOP);
    let line = wait_for("the stall logged with attributes", || {
        c.log()
            .lines()
            .find(|l| l.contains("\"kind\":\"stall\"") && l.contains(&format!("\"pid\":{pid}")))
            .map(str::to_owned)
    });
    assert!(line.contains("\"program\":\"varta\"") && line.contains("\"service\":\"checkout\""), "{line}");
    send_signal(pid, libc::SIGCONT);
    reap(agent);
}

/// A cgroup named like a container runtime's, made for the test (cgroup v1
/// `pids` hierarchy, else the v2 root); removed afterwards.
struct FakeContainer {
    dir: std::path::PathBuf,
}

const CONTAINER_ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

impl FakeContainer {
    fn create() -> Result<FakeContainer, String> {
        for base in ["/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
            let dir = std::path::Path::new(base).join(format!("docker-{CONTAINER_ID}.scope"));
            if std::path::Path::new(base).join("cgroup.procs").exists()
                && std::fs::create_dir_all(&dir).is_ok()
            {
                return Ok(FakeContainer { dir });
            }
        }
        Err("cannot create a cgroup here (needs root and a writable cgroup hierarchy)".into())
    }
}

impl Drop for FakeContainer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn a_containerised_agent_gets_its_container_id() {
    let container = match FakeContainer::create() {
        Ok(c) => c,
        Err(why) => panic!("{why}: this test needs what the README test command runs with (root)"),
    };
    let c = Collector::start(&config(free_tcp_port()));
    let procs = container.dir.join("cgroup.procs");
    // Join the cgroup first, then become the agent: attributes are read at the first beat.
    let script = format!(
        "echo $$ > {} && exec {} beat --socket {} --every 50ms",
        procs.display(),
        binary("varta").display(),
        c.path("varta.sock").display()
    );
    let agent = Command::new("sh").args(["-c", &script]).stdin(Stdio::null()).spawn().expect("agent");
    let pid = agent.id();
    beat_seen(&c, pid);
    send_signal(pid, libc::SIGSTOP);
    let line = wait_for("the stall logged with its container", || {
        c.log()
            .lines()
            .find(|l| l.contains("\"kind\":\"stall\"") && l.contains(&format!("\"pid\":{pid}")))
            .map(str::to_owned)
    });
    assert!(line.contains(&format!("\"container\":\"{CONTAINER_ID}\"")), "{line}");
    send_signal(pid, libc::SIGCONT);
    reap(agent);
    drop(container);
}
