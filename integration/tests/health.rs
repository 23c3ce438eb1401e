//! Liveness is progress: the `health_check` extension and the systemd
//! watchdog both notice a wedged pipeline from outside.

use varta_integration::http::{self, get};
use varta_integration::{Collector, free_tcp_port, varta, wait_for};

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

/// A neighbour cannot starve the probes: 200 idle connections from
/// 127.0.0.2 to the health endpoint and to the Prometheus endpoint, held
/// open while 127.0.0.1 probes and scrapes — every probe and scrape is
/// answered, and what the neighbour opened beyond its per-source cap is
/// refused at once and counted (`connections_refused{reason="per_source"}`).
#[test]
fn idle_connections_from_one_neighbour_do_not_starve_probes_and_scrapes() {
    let (health, metrics) = (free_tcp_port(), free_tcp_port());
    let text = config(health)
        .replace(
            "exporters:\n  debug: {}\n",
            &format!(
                "exporters:\n  debug: {{}}\n  prometheus: {{ endpoint: \"127.0.0.1:{metrics}\", auth: none, header_timeout: 1m, rate_limit: {{ rate: 1000, burst: 1000 }} }}\n"
            ),
        )
        .replace("exporters: [debug]", "exporters: [debug, prometheus]")
        // Idle connections would otherwise be closed after 2 s; keep them
        // for the whole test so the flood lasts while we probe.
        .replace("path: /health }", "path: /health, header_timeout: 1m }");
    let c = Collector::start(&text);
    let health_url = format!("http://127.0.0.1:{health}/health");
    let metrics_url = format!("http://127.0.0.1:{metrics}/metrics");
    wait_for("the endpoints", || http::request("GET", &health_url, &[]).ok().filter(|r| r.status == 200));
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
    let (status, log) = c.stop();
    assert!(status.success(), "{log}");
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
    let (status, log) = c.stop();
    assert!(status.success(), "{log}");
}
