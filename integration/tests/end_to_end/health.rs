//! Liveness is progress: the `health_check` extension and the systemd
//! watchdog both notice a wedged pipeline from outside.

use varta_integration::http::{self, get};
use varta_integration::{Collector, free_tcp_port, heavy, varta, wait_for};

fn config(port: u16) -> String {
    format!(
        r#"receivers:
  vlp/uds: {{ transport: uds, path: "@DIR@/varta.sock" }}
processors:
  tracker: {{ threshold: 2s }}
exporters:
  debug: {{}}
extensions:
  health_check: {{ endpoint: "127.0.0.1:{port}", path: /health }}
service:
  extensions: [health_check]
  progress_timeout: 500ms
  pipelines:
    liveness: {{ receivers: [vlp/uds], processors: [tracker], exporters: [debug] }}
  telemetry: {{ logs: {{ format: json }} }}
"#
    )
}

#[test]
fn the_health_endpoint_answers_like_the_collectors() {
    let port = free_tcp_port();
    let c = Collector::start(&config(port));
    let url = format!("http://127.0.0.1:{port}/health");
    let ok = wait_for("a healthy answer", || {
        let r = http::request("GET", &url, &[]).ok()?;
        (r.status == 200).then_some(r)
    });
    assert_eq!(ok.header("content-type"), Some("application/json"));
    assert!(ok.text().contains("\"status\":\"ok\""), "{}", ok.text());
    assert_eq!(get(&format!("http://127.0.0.1:{port}/other"), &[]).status, 404);
    assert_eq!(http::request("POST", &url, &[]).expect("POST").status, 405);
    let (status, _) = c.stop();
    assert!(status.success());
}

/// An exporter task that panics is restarted, and the health endpoint
/// shows it as that component's error while the answer stays 200: the
/// collector recovered, so a probe must not restart it.
#[test]
fn a_panicked_exporter_task_is_shown_on_health_and_stays_healthy() {
    let port = free_tcp_port();
    let closed = free_tcp_port();
    let text = config(port)
        .replace(
            "exporters:\n  debug: {}\n",
            &format!("exporters:\n  debug: {{}}\n  otlp: {{ endpoint: \"http://127.0.0.1:{closed}\" }}\n"),
        )
        .replace("exporters: [debug]", "exporters: [debug, otlp]");
    let c = Collector::start_with(&text, &[("VARTA_TEST_PANIC_EXPORTER_TASKS", "2")]);
    let url = format!("http://127.0.0.1:{port}/health");
    // Two supervised tasks (spans and metrics), each panicking twice.
    let shown = wait_for("the restarts shown on health", || {
        let r = http::request("GET", &url, &[]).ok()?;
        (r.status == 200 && r.text().contains("4 task panic")).then(|| r.text())
    });
    let json: serde_json::Value = serde_json::from_str(&shown).expect("json");
    assert_eq!(json["status"], "ok", "{shown}");
    assert!(
        json["recovered"]["exporters::otlp"].as_str().is_some_and(|w| w.contains("restarted")),
        "{shown}"
    );
    assert_eq!(c.counter("exporters::otlp", "task_panics", ""), 4);
    let log = c.stop_cleanly();
    assert!(log.contains("the span sender panicked and is restarted"), "{log}");
}

#[test]
fn a_wedged_processor_fails_the_health_check_and_starves_the_watchdog() {
    let port = free_tcp_port();
    let c = Collector::start_with(
        &config(port),
        &[("WATCHDOG_USEC", "200000"), ("VARTA_TEST_WEDGE_PROCESSOR_AFTER", "40")],
    );
    let url = format!("http://127.0.0.1:{port}/health");
    c.wait_notification("WATCHDOG=1 while healthy", |m| m.contains("WATCHDOG=1"));
    let sock = c.path("varta.sock").display().to_string();
    let mut agent = varta(&["beat", "--socket", &sock, "--every", "10ms"]).spawn().expect("agent");
    // After 40 beats the processor stops draining its queue while beats keep coming.
    let unhealthy = wait_for("503 naming the stuck pipeline", || {
        let r = http::request("GET", &url, &[]).ok()?;
        (r.status == 503).then(|| r.text())
    });
    assert!(unhealthy.contains("pipelines::liveness") && unhealthy.contains("no progress"), "{unhealthy}");
    // The watchdog is no longer fed: drain what was sent before, then none comes.
    for _ in 0..100 {
        if c.next_notification().is_none() {
            break;
        }
    }
    let fed = (0..10).filter_map(|_| c.next_notification()).any(|m| m.contains("WATCHDOG=1"));
    assert!(!fed, "WATCHDOG=1 sent while the pipeline is wedged");
    let _ = agent.kill();
    let _ = agent.wait();
}

/// A resolver stuck in the kernel (a test hook blocks it on its first
/// notice) once went unseen: attributes and diagnoses silently stopped. Now
/// notices waiting that it does not take fail the health check naming it,
/// while the pipeline itself stays healthy (it never waits on the resolver).
#[test]
fn a_wedged_resolver_fails_the_health_check_and_is_replaced() {
    let port = free_tcp_port();
    let text = config(port)
        .replace(
            "processors:\n  tracker: { threshold: 2s }\n",
            "processors:\n  tracker: { threshold: 2s }\n  resolver: {}\n",
        )
        .replace("processors: [tracker]", "processors: [tracker, resolver]");
    let c = Collector::start_with(&text, &[("VARTA_TEST_WEDGE_RESOLVER", "1")]);
    let url = format!("http://127.0.0.1:{port}/health");
    wait_for("a healthy answer", || (http::request("GET", &url, &[]).ok()?.status == 200).then_some(()));
    let sock = c.path("varta.sock").display().to_string();
    // The first agent's notice wedges the resolver; the second's waits.
    let mut agents: Vec<_> = (0..2)
        .map(|_| varta(&["beat", "--socket", &sock, "--every", "20ms"]).spawn().expect("agent"))
        .collect();
    let unhealthy = wait_for("503 naming the stuck resolver", || {
        let r = http::request("GET", &url, &[]).ok()?;
        (r.status == 503).then(|| r.text())
    });
    let json: serde_json::Value = serde_json::from_str(&unhealthy).expect("json");
    assert!(
        json["unhealthy"]["processors::resolver"].as_str().is_some_and(|w| w.contains("no progress")),
        "{unhealthy}"
    );
    assert!(json["unhealthy"].get("pipelines::liveness").is_none(), "the pipeline goes on: {unhealthy}");
    // Then it is replaced: healthy again, the replacement shown and
    // counted, and the new resolver takes the notices (attributes resume).
    let healed = wait_for("200 naming the replaced resolver", || {
        let r = http::request("GET", &url, &[]).ok()?;
        (r.status == 200).then(|| r.text())
    });
    let json: serde_json::Value = serde_json::from_str(&healed).expect("json");
    assert!(
        json["recovered"]["processors::resolver"].as_str().is_some_and(|w| w.contains("replaced 1 time")),
        "{healed}"
    );
    wait_for("the replacement counted", || {
        (c.counter("processors::resolver", "replacements", "") == 1).then_some(())
    });
    let late = varta(&["beat", "--socket", &sock, "--every", "20ms"]).spawn().expect("agent");
    agents.push(late);
    wait_for("agents resolved by the new resolver", || {
        (c.counter("processors::resolver", "agents_resolved", "") >= 1).then_some(())
    });
    for a in &mut agents {
        let _ = a.kill();
        let _ = a.wait();
    }
}

#[test]
fn a_wedged_receiver_fails_the_health_check() {
    let port = free_tcp_port();
    let c = Collector::start_with(&config(port), &[("VARTA_TEST_WEDGE_RECEIVER_AFTER", "3")]);
    let url = format!("http://127.0.0.1:{port}/health");
    // Idle, the receiver still turns (it wakes to show it is alive).
    wait_for("a healthy answer", || (http::request("GET", &url, &[]).ok()?.status == 200).then_some(()));
    std::thread::sleep(std::time::Duration::from_millis(800));
    assert_eq!(http::request("GET", &url, &[]).expect("GET").status, 200, "an idle receiver is healthy");
    let sock = c.path("varta.sock").display().to_string();
    let mut agent = varta(&["beat", "--socket", &sock, "--every", "10ms"]).spawn().expect("agent");
    let unhealthy = wait_for("503 naming the stuck receiver", || {
        let r = http::request("GET", &url, &[]).ok()?;
        (r.status == 503).then(|| r.text())
    });
    assert!(unhealthy.contains("receivers::vlp/uds"), "{unhealthy}");
    let _ = agent.kill();
    let _ = agent.wait();
}

/// A collector with a health check and a Prometheus endpoint whose idle
/// connections are kept a minute (instead of 2 s and 5 s), so a flood
/// lasts while the test probes: the collector, its ports, and both URLs.
fn endpoints_keeping_idle_connections() -> (Collector, u16, u16, String, String) {
    let (health, metrics) = (free_tcp_port(), free_tcp_port());
    let text = config(health)
        .replace(
            "exporters:\n  debug: {}\n",
            &format!(
                "exporters:\n  debug: {{}}\n  prometheus: {{ endpoint: \"127.0.0.1:{metrics}\", auth: none, header_timeout: 1m, rate_limit: {{ rate: 1000, burst: 1000 }} }}\n"
            ),
        )
        .replace("exporters: [debug]", "exporters: [debug, prometheus]")
        .replace("path: /health }", "path: /health, header_timeout: 1m }");
    let c = Collector::start(&text);
    let health_url = format!("http://127.0.0.1:{health}/health");
    let metrics_url = format!("http://127.0.0.1:{metrics}/metrics");
    wait_for("the endpoints", || http::request("GET", &health_url, &[]).ok().filter(|r| r.status == 200));
    (c, health, metrics, health_url, metrics_url)
}

/// A neighbour cannot starve the probes: 200 idle connections from
/// 127.0.0.2 to the health endpoint and to the Prometheus endpoint, held
/// open while 127.0.0.1 probes and scrapes — every probe and scrape is
/// answered, and what the neighbour opened beyond its per-source cap is
/// refused at once and counted (`connections_refused{reason="per_source"}`).
#[test]
fn idle_connections_from_one_neighbour_do_not_starve_probes_and_scrapes() {
    let _turn = heavy(); // 400 sockets of this process held open
    let (c, health, metrics, health_url, metrics_url) = endpoints_keeping_idle_connections();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let flood = |port: u16| -> Vec<tokio::net::TcpStream> {
        rt.block_on(async {
            let mut held = Vec::new();
            for _ in 0..200 {
                let socket = tokio::net::TcpSocket::new_v4().expect("socket");
                socket.bind("127.0.0.2:0".parse().expect("addr")).expect("bind 127.0.0.2");
                held.push(socket.connect(([127, 0, 0, 1], port).into()).await.expect("connect"));
            }
            held
        })
    };
    let held_health = flood(health);
    let held_metrics = flood(metrics);
    // During the flood (all 400 sockets still open on our side).
    for i in 0..20 {
        let r = http::request("GET", &health_url, &[]).unwrap_or_else(|e| panic!("probe {i} failed: {e}"));
        assert_eq!(r.status, 200, "probe {i}");
        let r = http::request("GET", &metrics_url, &[]).unwrap_or_else(|e| panic!("scrape {i} failed: {e}"));
        assert_eq!(r.status, 200, "scrape {i}");
    }
    let refused = |component: &str| c.counter(component, "connections_refused", "per_source");
    let h = wait_for("health refusals counted", || {
        Some(refused("extensions::health_check")).filter(|&n| n >= 196)
    });
    let m =
        wait_for("metrics refusals counted", || Some(refused("exporters::prometheus")).filter(|&n| n >= 192));
    assert_eq!(
        (h, m),
        (196, 192),
        "the cap is 4 per source (health) and 8 (metrics): the rest refused, exactly"
    );
    drop((held_health, held_metrics));
    c.stop_cleanly();
}

/// Idle connections spread over many loopback addresses (a local user can
/// bind any of 127.0.0.0/8) once filled the endpoint past its per-address
/// caps and made probes from 127.0.0.1 fail — a failed liveness probe
/// restarts the collector in Kubernetes. Now a full endpoint (or range)
/// closes its oldest idle connection for the newcomer: from 64 addresses
/// of one /24 and from 64 different /24s, every probe and scrape from
/// 127.0.0.1 is answered.
#[test]
fn idle_connections_from_many_addresses_never_starve_probes_and_scrapes() {
    let _turn = heavy(); // 768 sockets of this process held open
    let (c, health, metrics, health_url, metrics_url) = endpoints_keeping_idle_connections();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let flood = |port: u16, address: &dyn Fn(u8) -> std::net::Ipv4Addr| -> Vec<tokio::net::TcpStream> {
        rt.block_on(async {
            let mut held = Vec::new();
            for a in 1..=64u8 {
                for _ in 0..6 {
                    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
                    socket.bind((address(a), 0).into()).expect("bind a loopback address");
                    held.push(socket.connect(([127, 0, 0, 1], port).into()).await.expect("connect"));
                }
            }
            held
        })
    };
    for (layout, address) in [
        ("64 addresses of 127.0.1.0/24", &|a: u8| std::net::Ipv4Addr::new(127, 0, 1, a) as _),
        ("64 different /24s of 127/8", &|a: u8| std::net::Ipv4Addr::new(127, 1, a, 1) as _),
    ] as [(&str, &dyn Fn(u8) -> std::net::Ipv4Addr); 2]
    {
        let held = [flood(health, address), flood(metrics, address)];
        for i in 0..10 {
            let r =
                http::request("GET", &health_url, &[]).unwrap_or_else(|e| panic!("{layout}: probe {i}: {e}"));
            assert_eq!(r.status, 200, "{layout}: probe {i}");
            let r = http::request("GET", &metrics_url, &[])
                .unwrap_or_else(|e| panic!("{layout}: scrape {i}: {e}"));
            assert_eq!(r.status, 200, "{layout}: scrape {i}");
        }
        drop(held);
    }
    assert!(c.counter("extensions::health_check", "connections_evicted", "") > 0);
    assert!(c.counter("exporters::prometheus", "connections_evicted", "") > 0);
    c.stop_cleanly();
}

/// A scraper that asks for `/metrics` and never reads once pinned the
/// snapshot it was being sent, with no end. Now an answer whose writing
/// makes no progress for `write_timeout` ends its connection (counted),
/// and scrapes go on.
#[test]
fn a_scraper_that_never_reads_is_cut_off_after_write_timeout() {
    use std::io::Write;
    // 20,000 agents: an answer of megabytes, far more than socket buffers hold.
    let (c, metrics) = udp_fleet_behind_prometheus(20_000, "write_timeout: 500ms");
    let url = format!("http://127.0.0.1:{metrics}/metrics");
    // The one that never reads (a small receive buffer, so the server blocks soon).
    let socket = socket2_like_small_rcvbuf();
    let mut stalled = socket.connect(([127, 0, 0, 1], metrics).into()).expect("connect");
    stalled.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
    wait_for("the write timeout", || {
        (c.counter("exporters::prometheus", "write_timeouts", "") >= 1).then_some(())
    });
    // Scrapes from others are answered all along.
    assert_eq!(http::request("GET", &url, &[]).expect("scrape").status, 200);
    drop(stalled);
    c.stop_cleanly();
}

/// A collector whose one pipeline tracks `agents` plain-UDP agents (one
/// beat each, a snapshot every 50 ms) behind a Prometheus endpoint with
/// `endpoint_extra` settings; the collector and the endpoint's port.
fn udp_fleet_behind_prometheus(agents: u32, endpoint_extra: &str) -> (Collector, u16) {
    let (metrics, udp) = (free_tcp_port(), varta_integration::free_udp_port());
    let c = Collector::start(&format!(
        r#"receivers:
  vlp/udp: {{ transport: udp, endpoint: "127.0.0.1:{udp}", accept_unauthenticated: true, recv_buffer_bytes: 67108864 }}
processors:
  tracker: {{ threshold: 1h, snapshot_interval: 50ms }}
exporters:
  prometheus: {{ endpoint: "127.0.0.1:{metrics}", auth: none, max_agent_series: 100000, {endpoint_extra} }}
service:
  pipelines:
    liveness: {{ receivers: [vlp/udp], processors: [tracker], exporters: [prometheus] }}
  telemetry: {{ logs: {{ format: json }} }}
"#
    ));
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    for pid in 100_000..100_000 + agents {
        let frame = varta_proto::Frame::new(varta_proto::Status::Ok, pid, 1, 1, 0).encode();
        while sock.send_to(&frame, ("127.0.0.1", udp)).is_err() {
            std::thread::yield_now();
        }
    }
    let most = u64::from(agents) * 19 / 20;
    wait_for("the fleet tracked", || {
        (c.counter("pipelines::liveness", "agents_tracked", "") >= most).then_some(())
    });
    (c, metrics)
}

/// The collector's resident set, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("a number")
}

/// 50 scrapers that ask and never read, at 50,000 agents, while the
/// processor publishes a new snapshot every 50 ms: what they pin is
/// bounded (each is cut off after `write_timeout`, releasing its answer),
/// and the collector's memory stays within a bound (measured: see
/// BENCHMARKS.md). The collector's RSS is its own process's, whatever else
/// this test binary runs meanwhile.
#[test]
fn fifty_scrapers_that_never_read_at_50000_agents_stay_bounded() {
    use std::io::Write;
    let (c, metrics) = udp_fleet_behind_prometheus(
        50_000,
        "write_timeout: 3s, max_connections: 256, max_connections_per_source: 100, max_connections_per_range: 100, rate_limit: { rate: 1000, burst: 1000 }",
    );
    let url = format!("http://127.0.0.1:{metrics}/metrics");
    // One whole scrape first: the answer's buffers exist before the baseline.
    let answer = http::request("GET", &url, &[]).expect("scrape");
    assert_eq!(answer.status, 200);
    let body = answer.text().len();
    let baseline = rss_kib(c.pid());
    let stalled: Vec<_> = (0..50)
        .map(|_| {
            let socket = socket2_like_small_rcvbuf();
            let mut s = socket.connect(([127, 0, 0, 1], metrics).into()).expect("connect");
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
            s
        })
        .collect();
    // While they hang (3 s each), the highest resident set seen.
    let mut peak = baseline;
    let cut = wait_for("all 50 cut off", || {
        peak = peak.max(rss_kib(c.pid()));
        let n = c.counter("exporters::prometheus", "write_timeouts", "");
        (n >= 50).then_some(n)
    });
    assert_eq!(cut, 50, "each non-reading scraper cut off once");
    let grown = peak.saturating_sub(baseline);
    println!(
        "50 stuck scrapers, 50,000 agents, answer {body} B: RSS {baseline} KiB → peak {peak} KiB (+{grown} KiB)"
    );
    // Were each to keep its own copy of the answer (or its own snapshot),
    // 50 of them would hold 50 × the answer; they hold a fraction of one.
    assert!(
        grown * 1024 < 4 * body as u64,
        "50 stuck scrapers grew the collector by {grown} KiB (an answer is {body} B)"
    );
    assert_eq!(http::request("GET", &url, &[]).expect("scrape").status, 200, "scrapes go on");
    drop(stalled);
    c.stop_cleanly();
}

/// A blocking TCP socket with a 4 KiB receive buffer (set before connect).
fn socket2_like_small_rcvbuf() -> SmallSocket {
    use std::os::fd::FromRawFd;
    // SAFETY: socket(2) and setsockopt(2) on a descriptor we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket");
        let size: libc::c_int = 4096;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        SmallSocket(std::os::fd::OwnedFd::from_raw_fd(fd))
    }
}

struct SmallSocket(std::os::fd::OwnedFd);

impl SmallSocket {
    fn connect(self, to: std::net::SocketAddr) -> std::io::Result<std::net::TcpStream> {
        use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
        let std::net::SocketAddr::V4(v4) = to else { panic!("IPv4 only") };
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(*v4.ip()).to_be() },
            sin_zero: [0; 8],
        };
        // SAFETY: connect(2) with a valid sockaddr_in on our descriptor.
        let rc = unsafe {
            libc::connect(
                self.0.as_raw_fd(),
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the descriptor is a connected TCP socket we own.
        Ok(unsafe { std::net::TcpStream::from_raw_fd(self.0.into_raw_fd()) })
    }
}

/// Reading a process's command line or environment takes its memory lock,
/// and a read stuck there cannot be interrupted: it once wedged the
/// resolver, and diagnoses silently stopped. The reads now run on a reader
/// of their own that is abandoned when it does not answer (test hook:
/// every reader blocks forever); the resolver goes on and a stall is still
/// diagnosed.
#[test]
fn a_blocked_memory_read_never_stops_diagnoses() {
    let text = config(free_tcp_port())
        .replace(
            "processors:\n  tracker: { threshold: 2s }\n",
            "processors:\n  tracker: { threshold: 300ms }\n  resolver: { diagnosis: { window: 100ms } }\n",
        )
        .replace("processors: [tracker]", "processors: [tracker, resolver]")
        .replace(
            "exporters:\n  debug: {}\n",
            "exporters:\n  debug: {}\n  file: { path: \"@DIR@/events.tsv\", beats: false }\n",
        )
        .replace("exporters: [debug]", "exporters: [debug, file]");
    let c = Collector::start_with(&text, &[("VARTA_TEST_WEDGE_MEMORY_READS", "1")]);
    let mut agent = std::process::Command::new(varta_integration::binary("stall-agent"))
        .args([c.path("varta.sock").to_str().expect("utf8"), "sleep", "3"])
        .spawn()
        .expect("stall-agent");
    let pid = agent.id().to_string();
    let diagnosis = wait_for("the stall's diagnosis", || {
        varta_integration::read_events(&c.path("events.tsv"))
            .into_iter()
            .find(|e| e.kind == "diagnosis" && e.pid == pid)
    });
    assert_eq!(diagnosis.status, "waiting", "{diagnosis:?}");
    assert!(c.counter("processors::resolver", "memory_reads_abandoned", "") >= 1);
    let _ = agent.kill();
    let _ = agent.wait();
    c.stop_cleanly();
}
