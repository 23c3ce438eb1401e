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
