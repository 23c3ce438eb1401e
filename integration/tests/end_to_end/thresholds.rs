//! Every agent its own deadline, end to end: threshold rules on resolved
//! attributes and on source addresses, thresholds learned from an agent's
//! own beat, and rule changes applied by reload to the tracked agents.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use varta_integration::http::get;
use varta_integration::{
    Collector, collector_cmd, free_tcp_port, free_udp_port, read_events, reap, service_agent, signal,
    wait_for, write_secret,
};
use varta_proto::{Frame, Status};

const TOKEN: &str = "8899aabbccddeeff00112233445566778899aabbccddeeff0011223344556677";

fn lines_of<'a>(c: &Collector, kind: &'a str, pid: &'a str) -> Vec<varta_integration::EventLine> {
    read_events(&c.path("events.tsv")).into_iter().filter(|e| e.kind == kind && e.pid == pid).collect()
}

/// The per-agent threshold gauge of `pid`, as the Prometheus endpoint serves it.
fn threshold_gauge(port: u16, pid: u32) -> Option<f64> {
    let auth = format!("Bearer {TOKEN}");
    let body = get(&format!("http://127.0.0.1:{port}/metrics"), &[("Authorization", &auth)]).text();
    body.lines()
        .find(|l| l.starts_with("varta_agent_threshold_seconds{") && l.contains(&format!("pid=\"{pid}\"")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn rules_on_service_name_give_each_agent_its_own_threshold() {
    let prom = free_tcp_port();
    let config = format!(
        r#"receivers:
  vlp/uds: {{ transport: uds, path: "@DIR@/varta.sock" }}
processors:
  tracker:
    threshold: 5s
    snapshot_interval: 50ms
    thresholds:
      - {{ match: {{ service.name: "fast-*" }}, threshold: 400ms }}
      - {{ match: {{ service.name: "batch-*" }}, threshold: 10m }}
  resolver: {{}}
exporters:
  file: {{ path: "@DIR@/events.tsv" }}
  prometheus: {{ endpoint: "127.0.0.1:{prom}", bearer_token_file: "@DIR@/token" }}
service:
  pipelines:
    liveness: {{ receivers: [vlp/uds], processors: [tracker, resolver], exporters: [file, prometheus] }}
  telemetry: {{ logs: {{ format: json }} }}
"#
    );
    let c = Collector::start_prepared(&config, &[], |dir| write_secret(&dir.join("token"), TOKEN));
    let (fast, slow) = (service_agent(&c, "fast-loop"), service_agent(&c, "slow"));
    // The rule applies once the resolver has read the agent's environment:
    // the gauge shows it.
    wait_for("fast-loop under its rule", || (threshold_gauge(prom, fast.id()) == Some(0.4)).then_some(()));
    wait_for("slow under the default", || (threshold_gauge(prom, slow.id()) == Some(5.0)).then_some(()));
    for agent in [&fast, &slow] {
        signal(agent, libc::SIGSTOP);
    }
    std::thread::sleep(Duration::from_secs(1));
    for agent in [&fast, &slow] {
        signal(agent, libc::SIGCONT);
    }
    let (fast_pid, slow_pid) = (fast.id().to_string(), slow.id().to_string());
    wait_for("fast-loop resumes", || (!lines_of(&c, "resume", &fast_pid).is_empty()).then_some(()));
    let stalls = lines_of(&c, "stall", &fast_pid);
    assert_eq!(stalls.len(), 1, "{stalls:?}");
    assert_eq!(stalls[0].payload, "threshold_ns=400000000");
    // Both were silent for the same second; the slow one's 5 s never passed.
    assert!(lines_of(&c, "stall", &slow_pid).is_empty());
    assert_eq!(c.counter("pipelines::liveness", "stalls", ""), 1);
    reap(fast);
    reap(slow);
}

/// Beats from `from` (a loopback address) as frame pid `pid`: `count`
/// beats `every` apart, starting at nonce `nonce`; returns the next nonce.
fn udp_beats(socket: &UdpSocket, to: u16, pid: u32, nonce: u64, count: u64, every: Duration) -> u64 {
    let start = Instant::now();
    for i in 0..count {
        let ts = start.elapsed().as_millis() as u64;
        let frame = Frame::new(Status::Ok, pid, ts + 1, nonce + i, 0).encode();
        socket.send_to(&frame, ("127.0.0.1", to)).expect("send");
        std::thread::sleep(every);
    }
    nonce + count
}

fn udp_config(port: u16, tracker: &str) -> String {
    format!(
        r#"receivers:
  vlp/udp: {{ transport: udp, endpoint: "127.0.0.1:{port}", accept_unauthenticated: true }}
processors:
  tracker:
{tracker}
exporters:
  file: {{ path: "@DIR@/events.tsv", beats: true }}
service:
  pipelines:
    liveness: {{ receivers: [vlp/udp], processors: [tracker], exporters: [file] }}
  telemetry: {{ logs: {{ format: json }} }}
"#
    )
}

#[test]
fn a_source_rule_applies_to_udp_agents_from_their_first_beat() {
    let port = free_udp_port();
    let tracker = "    threshold: 5s\n    thresholds:\n      \
                   - { match: { source: 127.0.0.2/32, transport: udp }, threshold: 300ms }";
    let c = Collector::start(&udp_config(port, tracker));
    let near = UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    let far = UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let run = |socket: UdpSocket, pid: u32| {
        std::thread::spawn(move || {
            let next = udp_beats(&socket, port, pid, 1, 10, Duration::from_millis(50));
            std::thread::sleep(Duration::from_secs(1));
            udp_beats(&socket, port, pid, next, 3, Duration::from_millis(50));
        })
    };
    let threads = [run(near, 4242), run(far, 4243)];
    for t in threads {
        t.join().expect("sender");
    }
    wait_for("the last beats", || (lines_of(&c, "beat", "4243").len() == 13).then_some(()));
    wait_for("the near agent resumes", || (!lines_of(&c, "resume", "4242").is_empty()).then_some(()));
    let stalls = lines_of(&c, "stall", "4242");
    assert_eq!(stalls.len(), 1, "{stalls:?}");
    assert_eq!(stalls[0].payload, "threshold_ns=300000000");
    assert!(lines_of(&c, "stall", "4243").is_empty(), "127.0.0.1 is not in the rule's network");
}

#[test]
fn learned_thresholds_follow_each_agents_own_beat() {
    let port = free_udp_port();
    let c = Collector::start(&udp_config(port, "    threshold: 10s\n    adaptive: { enabled: true }"));
    let run = |pid: u32, every_ms: u64, beats: u64| {
        std::thread::spawn(move || {
            let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
            let next = udp_beats(&socket, port, pid, 1, beats, Duration::from_millis(every_ms));
            // The last sleep of udp_beats was one interval: pause the rest of 1.5 s.
            std::thread::sleep(Duration::from_millis(1500 - every_ms));
            udp_beats(&socket, port, pid, next, 2, Duration::from_millis(every_ms));
        })
    };
    // 100 ms for 2 s (learned ≈ 4 × 100 ms), and 400 ms for 4 s (≈ 1.6 s).
    let threads = [run(5001, 100, 20), run(5002, 400, 10)];
    for t in threads {
        t.join().expect("sender");
    }
    wait_for("the slow agent's last beats", || (lines_of(&c, "beat", "5002").len() == 12).then_some(()));
    wait_for("the fast agent resumes", || (!lines_of(&c, "resume", "5001").is_empty()).then_some(()));
    let stalls = lines_of(&c, "stall", "5001");
    assert_eq!(stalls.len(), 1, "{stalls:?}");
    let field = |payload: &str, key: &str| -> u64 {
        payload
            .split(';')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
            .unwrap_or_else(|| panic!("{key} in {payload:?}"))
    };
    let (threshold, interval) =
        (field(&stalls[0].payload, "threshold_ns"), field(&stalls[0].payload, "learned_interval_ns"));
    assert!((90_000_000..=130_000_000).contains(&interval), "learned {interval} ns from a 100 ms beat");
    assert!(threshold >= 4 * interval && threshold <= 4 * interval * 11 / 10, "{threshold} for {interval}");
    assert!(lines_of(&c, "stall", "5002").is_empty(), "a 1.5 s pause is within 4 × 400 ms");
}

#[test]
fn a_reload_applies_a_changed_rule_to_the_tracked_agents() {
    let config = |threshold: &str| {
        format!(
            r#"receivers:
  vlp/uds: {{ transport: uds, path: "@DIR@/varta.sock" }}
processors:
  tracker:
    threshold: 5s
    thresholds: [{{ match: {{ service.name: checkout }}, threshold: {threshold} }}]
  resolver: {{}}
exporters:
  file: {{ path: "@DIR@/events.tsv" }}
service:
  pid_file: "@DIR@/collector.pid"
  pipelines:
    liveness: {{ receivers: [vlp/uds], processors: [tracker, resolver], exporters: [file] }}
  telemetry: {{ logs: {{ format: json }} }}
"#
        )
    };
    let c = Collector::start(&config("3s"));
    let agent = service_agent(&c, "checkout");
    wait_for("the agent resolved", || {
        (c.counter("processors::resolver", "agents_resolved", "") == 1).then_some(())
    });
    let dir = c.dir.path().to_path_buf();
    std::fs::write(c.path("collector.yaml"), config("300ms").replace("@DIR@", &dir.display().to_string()))
        .expect("rewrite config");
    let out = collector_cmd(&["reload", "--pid-file", c.path("collector.pid").to_str().expect("utf8")]);
    assert!(out.status.success(), "{out:?}");
    wait_for("the reload", || (c.counter("service::service", "reloads", "ok") == 1).then_some(()));
    assert!(c.log().contains("threshold settings applied"), "{}", c.log());
    assert_eq!(c.counter("pipelines::liveness", "agents_tracked", ""), 1, "the agent is still tracked");
    signal(&agent, libc::SIGSTOP);
    let pid = agent.id().to_string();
    wait_for("the stall under the new rule", || (!lines_of(&c, "stall", &pid).is_empty()).then_some(()));
    signal(&agent, libc::SIGCONT);
    assert_eq!(lines_of(&c, "stall", &pid)[0].payload, "threshold_ns=300000000");
    assert!(!c.log().contains("starts with no agents"), "{}", c.log());
    reap(agent);
}

/// A batch job under a 10 s rule that beats every 3 s was reported stalled
/// 1 s after its first beat, every time it started: the rule on its
/// service name only took effect at its second beat. Now its first
/// deadline is the longest rule it may get until the resolver answers,
/// and an ordinary agent is re-classed to the default the moment its
/// attributes resolve.
#[test]
fn a_slow_batch_agent_is_never_stalled_on_a_shorter_threshold_at_its_first_beat() {
    let config = r#"receivers:
  vlp/uds: { transport: uds, path: "@DIR@/varta.sock" }
processors:
  tracker:
    threshold: 1s
    thresholds:
      - { match: { service.name: "batch-*" }, threshold: 10s }
  resolver: {}
exporters:
  file: { path: "@DIR@/events.tsv" }
service:
  pipelines:
    liveness: { receivers: [vlp/uds], processors: [tracker, resolver], exporters: [file] }
  telemetry: { logs: { format: json } }
"#;
    let c = Collector::start(config);
    let sock = c.path("varta.sock");
    let sock = sock.to_str().expect("utf8");
    let batch = varta_integration::varta(&["beat", "--socket", sock, "--every", "3s"])
        .env("OTEL_SERVICE_NAME", "batch-nightly")
        .spawn()
        .expect("batch agent");
    // An ordinary agent that freezes right after its first beat.
    let web = std::process::Command::new(varta_integration::binary("stall-agent"))
        .args([sock, "sleep", "1"])
        .env("OTEL_SERVICE_NAME", "web")
        .spawn()
        .expect("web agent");
    let web_pid = web.id().to_string();
    let stall = wait_for("the frozen ordinary agent's stall", || lines_of(&c, "stall", &web_pid).pop());
    assert_eq!(stall.payload, "threshold_ns=1000000000", "judged by the default once resolved");
    // Past the batch agent's second beat (3 s), well past the default 1 s.
    let batch_pid = batch.id().to_string();
    wait_for("the batch agent's second beat", || (lines_of(&c, "beat", &batch_pid).len() >= 2).then_some(()));
    assert!(lines_of(&c, "stall", &batch_pid).is_empty(), "the batch agent was never stalled");
    assert!(c.counter("pipelines::liveness", "provisional_rules", "") >= 2);
    assert_eq!(c.counter("pipelines::liveness", "provisional_fallbacks", ""), 0);
    reap(batch);
    reap(web);
}
