//! The `prometheus` exporter as a user meets it: the real collector on
//! real TCP, answered by status code, checked by the real `promtool`, and
//! scraped by a real Prometheus server.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use varta_integration::http::{self, get, sample};
use varta_integration::{
    Collector, PATIENCE, free_tcp_port, free_udp_port, heavy, peers, read_events, reap, signal, varta,
    wait_for, write_secret,
};
use varta_pipeline::clock::monotonic_ns;
use varta_proto::Status;

const TOKEN: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// A UDS pipeline (plus optional plain UDP) exporting to `prometheus` with
/// the given exporter body; token at `@DIR@/token`.
fn config(port: u16, prometheus_body: &str, udp_port: Option<u16>) -> String {
    let (udp_receiver, udp_id) = match udp_port {
        Some(p) => (
            format!(
                "  vlp/udp: {{ transport: udp, endpoint: \"127.0.0.1:{p}\", accept_unauthenticated: true }}\n"
            ),
            ", vlp/udp",
        ),
        None => (String::new(), ""),
    };
    format!(
        r#"receivers:
  vlp/uds: {{ transport: uds, path: "@DIR@/varta.sock" }}
{udp_receiver}processors:
  tracker: {{ threshold: 1s, snapshot_interval: 50ms }}
exporters:
  file: {{ path: "@DIR@/events.tsv" }}
  prometheus:
    endpoint: "127.0.0.1:{port}"
{prometheus_body}
service:
  pipelines:
    liveness: {{ receivers: [vlp/uds{udp_id}], processors: [tracker], exporters: [file, prometheus] }}
  telemetry: {{ logs: {{ format: json }} }}
"#
    )
}

fn with_token(dir: &Path) {
    write_secret(&dir.join("token"), TOKEN);
}

/// Tests poll the endpoint, so unless a test is about the rate limit it
/// gets a generous one.
fn start(port: u16, body: &str, udp: Option<u16>) -> Collector {
    let body = if body.contains("rate_limit") {
        body.to_owned()
    } else {
        format!("{body}\n    rate_limit: {{ rate: 1000, burst: 1000 }}")
    };
    Collector::start_prepared(&config(port, &body, udp), &[], with_token)
}

fn url(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}

fn auth() -> (&'static str, String) {
    ("Authorization", format!("Bearer {TOKEN}"))
}

fn scrape(port: u16) -> String {
    let (k, v) = auth();
    let r = get(&url(port, "/metrics"), &[(k, &v)]);
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

#[test]
fn answers_like_a_secured_metrics_endpoint() {
    let port = free_tcp_port();
    let c = start(port, "    bearer_token_file: \"@DIR@/token\"", None);
    let metrics = url(port, "/metrics");

    let missing = get(&metrics, &[]);
    assert_eq!(missing.status, 401);
    assert_eq!(missing.header("www-authenticate"), Some("Bearer realm=\"varta\""));
    let wrong = get(&metrics, &[("Authorization", &format!("Bearer {}", "ab".repeat(32)))]);
    assert_eq!(wrong.status, 401);
    let short = get(&metrics, &[("Authorization", "Bearer 0011")]);
    assert_eq!(short.status, 401);
    let basic = get(&metrics, &[("Authorization", &format!("Basic {TOKEN}"))]);
    assert_eq!(basic.status, 401, "only the Bearer scheme");

    // Scheme and hex digits are case-insensitive.
    let ok = get(&metrics, &[("Authorization", &format!("bEARER {}", TOKEN.to_uppercase()))]);
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("content-type"), Some("text/plain; version=0.0.4"));
    let body = ok.text();
    // Every fixed-label series exists from the first scrape, at zero.
    for kind in [
        "bad_magic",
        "bad_version",
        "bad_status",
        "bad_pid",
        "bad_timestamp",
        "bad_nonce",
        "stall_on_wire",
        "bad_crc",
    ] {
        assert_eq!(
            sample(&body, &format!("varta_decode_errors_total{{kind=\"{kind}\"}}")),
            Some(0.0),
            "{kind}"
        );
    }
    for series in [
        "varta_frame_auth_failures_total",
        "varta_frame_decrypt_failures_total",
        "varta_truncated_datagrams_total",
        "varta_tracker_capacity_exceeded_total",
        "varta_tracker_evicted_total",
        "varta_watch_pids_tracked",
        "varta_replay_refusals_total",
        "varta_rate_limited_total{reason=\"per_pid\"}",
        "varta_rate_limited_total{reason=\"global\"}",
        "varta_stall_duration_seconds_count",
        "varta_collector_receiver_refused_total{component=\"vlp/uds\",reason=\"replay\"}",
        "varta_collector_pipeline_stalls_total{component=\"liveness\"}",
        "varta_collector_exporter_dropped_total{component=\"file\",reason=\"queue_full\"}",
        "varta_recovery_refused_total{reason=\"not_allowed\"}",
        "varta_recovery_refused_total{reason=\"unverified_identity\"}",
        "varta_recovery_refused_total{reason=\"no_target\"}",
    ] {
        assert_eq!(sample(&body, series), Some(0.0), "{series} missing or non-zero:\n{body}");
    }
    assert_eq!(sample(&body, "varta_prom_auth_failures_total"), Some(4.0), "four refused requests before");
    assert_eq!(
        sample(&body, &format!("varta_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))),
        Some(1.0)
    );
    assert!(sample(&body, "varta_watch_uptime_seconds").is_some());

    let (k, v) = auth();
    let post = http::request("POST", &metrics, &[(k, &v)]).expect("POST");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET"));
    assert_eq!(get(&url(port, "/"), &[(k, &v)]).status, 404);
    assert_eq!(get(&url(port, "/metrics/x"), &[(k, &v)]).status, 404);

    // gzip when the scraper accepts it; the same exposition inside.
    let gz = get(&metrics, &[(k, &v), ("Accept-Encoding", "gzip")]);
    assert_eq!(gz.status, 200);
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz.body.as_slice()).read_to_string(&mut text).expect("valid gzip");
    assert!(text.contains("# TYPE varta_decode_errors_total counter"), "{text}");
    let refused = get(&metrics, &[(k, &v), ("Accept-Encoding", "gzip;q=0")]);
    assert_eq!(refused.header("content-encoding"), None, "q=0 refuses gzip");
    assert_eq!(c.counter("exporters::prometheus", "requests", "unauthorized"), 4);
    assert_eq!(c.counter("exporters::prometheus", "requests", "method_not_allowed"), 1);
    assert_eq!(c.counter("exporters::prometheus", "requests", "not_found"), 2);
    let (status, _) = c.stop();
    assert!(status.success());
}

#[test]
fn per_client_rate_limit_answers_429_and_counts() {
    let port = free_tcp_port();
    let c =
        start(port, "    bearer_token_file: \"@DIR@/token\"\n    rate_limit: { rate: 0.01, burst: 3 }", None);
    let (k, v) = auth();
    let statuses: Vec<u16> = (0..6).map(|_| get(&url(port, "/metrics"), &[(k, &v)]).status).collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
    let limited = get(&url(port, "/metrics"), &[]);
    assert_eq!(limited.status, 429, "checked before auth, so token guessing is limited too");
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert_eq!(c.counter("exporters::prometheus", "requests", "rate_limited"), 4);
    assert_eq!(c.counter("exporters::prometheus", "requests", "ok"), 3);
}

#[test]
fn auth_none_is_refused_off_loopback_and_a_bad_token_file_stops_startup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = dir.path().join("open.yaml");
    let cfg = config(9464, "    auth: none", None)
        .replace("127.0.0.1:9464", "0.0.0.0:9464")
        .replace("@DIR@", "/tmp");
    std::fs::write(&open, cfg).expect("write");
    let out = varta_integration::collector_cmd(&["validate", "--config", &open.display().to_string()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("non-loopback"), "{out:?}");

    let loose = dir.path().join("token");
    std::fs::write(&loose, TOKEN).expect("write");
    std::fs::set_permissions(&loose, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
    let cfg_path = dir.path().join("loose.yaml");
    let cfg = config(9464, &format!("    bearer_token_file: \"{}\"", loose.display()), None)
        .replace("@DIR@", &dir.path().display().to_string());
    std::fs::write(&cfg_path, cfg).expect("write");
    let out = varta_integration::collector_cmd(&["validate", "--config", &cfg_path.display().to_string()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exporters::prometheus") && err.contains("0644"), "{err}");
}

/// A UDS agent that beats until frozen, and a UDP agent from "another host"
/// (plain UDP, simulated pid), so both per-agent label shapes are present.
fn agents(c: &Collector, udp_port: u16) -> (Child, u32) {
    let sock = c.path("varta.sock").display().to_string();
    let agent = varta(&["beat", "--socket", &sock, "--every", "50ms"]).spawn().expect("varta beat");
    let udp = varta_client::Client::connect_udp(("127.0.0.1", udp_port)).expect("udp client");
    // The UDP client beats with our pid; it comes from 127.0.0.1, so it is its own agent.
    assert!(matches!(udp.beat(Status::Ok, 0), varta_client::BeatOutcome::Sent));
    let pid = agent.id();
    (agent, pid)
}

fn freeze_until_stalled(c: &Collector, agent: &Child) {
    let pid = agent.id().to_string();
    wait_for("first beat", || read_events(&c.path("events.tsv")).iter().any(|e| e.pid == pid).then_some(()));
    signal(agent, libc::SIGSTOP);
    wait_for("stall", || {
        read_events(&c.path("events.tsv")).iter().any(|e| e.kind == "stall" && e.pid == pid).then_some(())
    });
}

#[test]
fn scrape_passes_promtool_check_metrics() {
    let port = free_tcp_port();
    let udp_port = free_udp_port();
    let c = start(port, "    bearer_token_file: \"@DIR@/token\"", Some(udp_port));
    let (agent, pid) = agents(&c, udp_port);
    freeze_until_stalled(&c, &agent);
    let body = wait_for("stall in the scrape", || {
        let body = scrape(port);
        (sample(&body, &format!("varta_status{{pid=\"{pid}\"}}")) == Some(3.0)).then_some(body)
    });
    assert_eq!(sample(&body, &format!("varta_stalls_total{{pid=\"{pid}\"}}")), Some(1.0));
    let me = std::process::id();
    assert_eq!(
        sample(&body, &format!("varta_beats_total{{pid=\"{me}\",source=\"127.0.0.1\"}}")),
        Some(1.0),
        "network agents carry source:\n{body}"
    );
    let mut promtool = Command::new(peers::promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    {
        use std::io::Write;
        let mut stdin = promtool.stdin.take().expect("stdin");
        stdin.write_all(body.as_bytes()).expect("feed promtool");
    }
    let out = promtool.wait_with_output().expect("promtool");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}");
    reap(agent);
}

#[test]
fn per_agent_series_are_bounded_and_can_be_switched_off() {
    let port = free_tcp_port();
    let udp_port = free_udp_port();
    let c = start(port, "    bearer_token_file: \"@DIR@/token\"\n    max_agent_series: 1", Some(udp_port));
    // The UDP agent beats once and stalls; the UDS agent keeps beating.
    let (agent, _) = agents(&c, udp_port);
    // (On a loaded machine the UDS agent may stall now and then too; wait
    // for the moment only the UDP agent is stalled.)
    let me = std::process::id();
    let udp_status = format!("varta_status{{pid=\"{me}\",source=\"127.0.0.1\"}}");
    let body = wait_for("both agents tracked, only the UDP one stalled", || {
        let body = scrape(port);
        let stalled = sample(&body, "varta_collector_pipeline_agents_stalled{component=\"liveness\"}");
        let tracked = sample(&body, "varta_watch_pids_tracked");
        (tracked == Some(2.0) && stalled == Some(1.0) && sample(&body, &udp_status) == Some(3.0))
            .then_some(body)
    });
    // The stalled agent is kept; the live one is counted as omitted.
    assert_eq!(body.lines().filter(|l| l.starts_with("varta_status{")).count(), 1);
    assert_eq!(sample(&body, "varta_prometheus_agents_omitted"), Some(1.0));
    reap(agent);
    drop(c);

    let port = free_tcp_port();
    let c =
        start(port, "    bearer_token_file: \"@DIR@/token\"\n    per_agent_series: false", Some(udp_port));
    let (agent, _) = agents(&c, udp_port);
    let body = wait_for("agents tracked", || {
        let body = scrape(port);
        (sample(&body, "varta_watch_pids_tracked") == Some(2.0)).then_some(body)
    });
    assert!(!body.contains("varta_beats_total{"), "{body}");
    assert_eq!(sample(&body, "varta_prometheus_agents_omitted"), Some(2.0));
    reap(agent);
}

/// A real Prometheus server (loopback only, storage in a temp dir).
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target_port: u16, token_file: &Path) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_tcp_port();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: varta\n    \
             authorization:\n      type: Bearer\n      credentials_file: {}\n    static_configs:\n      \
             - targets: ['127.0.0.1:{target_port}']\n",
            token_file.display()
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus config");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = Command::new(peers::prometheus())
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus { child, port, _dir: dir }
    }

    /// The first value of an instant query, once it exists.
    fn query(&self, q: &str) -> Option<f64> {
        http::promql(self.port, q)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_real_prometheus_scrapes_with_its_token_and_sees_the_stall() {
    let port = free_tcp_port();
    let udp_port = free_udp_port();
    let c = start(port, "    bearer_token_file: \"@DIR@/token\"", Some(udp_port));
    let prom = Prometheus::start(port, &c.path("token"));
    let (agent, pid) = agents(&c, udp_port);
    let up = wait_for("target up in Prometheus", || prom.query("up{job=\"varta\"}").filter(|&v| v == 1.0));
    assert_eq!(up, 1.0);
    let before = prom.query(&format!("varta_stalls_total{{pid=\"{pid}\"}}")).unwrap_or(0.0);
    assert_eq!(before, 0.0);
    freeze_until_stalled(&c, &agent);
    let after = wait_for("the stall reached Prometheus", || {
        prom.query(&format!("varta_stalls_total{{pid=\"{pid}\"}}")).filter(|&v| v >= 1.0)
    });
    assert_eq!(after, 1.0);
    assert_eq!(prom.query(&format!("varta_status{{pid=\"{pid}\"}}")), Some(3.0));
    assert_eq!(
        c.counter("exporters::prometheus", "requests", "unauthorized"),
        0,
        "Prometheus sent the token"
    );
    reap(agent);
}

#[test]
fn a_flood_of_connections_never_costs_a_beat() {
    let _turn = heavy(); // thousands of connections, 2,000 of them held open
    let port = free_tcp_port();
    let c = start(
        port,
        "    bearer_token_file: \"@DIR@/token\"\n    max_connections: 32\n    header_timeout: 2s",
        None,
    );
    let sock = c.path("varta.sock");
    let client = varta_client::Client::connect_uds(&sock).expect("client");

    // Thousands of junk connections: most hold a socket open sending
    // nothing (slowloris), some send garbage, some ask without a token.
    let flood = std::thread::spawn(move || {
        let mut held = Vec::new();
        for i in 0..3000 {
            use std::io::Write;
            let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { continue };
            match i % 3 {
                0 => held.push(s),
                1 => {
                    let _ = s.write_all(b"\x16\x03\x01garbage\r\n\r\n");
                }
                _ => {
                    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
                    held.push(s);
                }
            }
        }
        held
    });
    // Meanwhile one agent beats every 5 ms, well inside the 1 s threshold.
    let mut sent = 0u64;
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < until {
        if matches!(client.beat(Status::Ok, 0), varta_client::BeatOutcome::Sent) {
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Stalls stamped after this are the agent going quiet now, not false ones.
    let beating_until_ns = monotonic_ns();
    let held = flood.join().expect("flood thread");
    let accepted = wait_for("every beat accepted", || {
        let n = c.counter("pipelines::liveness", "beats_accepted", "");
        (n == sent).then_some(n)
    });
    assert_eq!(accepted, sent, "no beat lost");
    let events = read_events(&c.path("events.tsv"));
    assert!(!events.iter().any(|e| e.kind == "stall" && e.ns < beating_until_ns), "no false stall");
    assert!(
        c.counter("exporters::prometheus", "connections_refused", "per_source") > 0,
        "the connection cap held"
    );
    drop(held);
    // The endpoint still serves once the flood is gone.
    let body = wait_for("endpoint serves again", || {
        let (k, v) = auth();
        let r = http::request("GET", &url(port, "/metrics"), &[(k, &v)]).ok()?;
        (r.status == 200).then(|| r.text())
    });
    assert_eq!(sample(&body, "varta_watch_pids_tracked"), Some(1.0));
    let _ = PATIENCE;
}
