//! Agent-chosen attribute values cannot wear the collector out: hundreds of
//! short-lived agents with huge `OTEL_SERVICE_NAME`s come and go, and an
//! ordinary agent afterwards still gets its attributes (its service name in
//! its stall), with the string table small and nothing refused.

use varta_integration::{Collector, heavy, send_signal, varta, wait_for};

const CONFIG: &str = r#"receivers:
  vlp/uds: { transport: uds, path: "@DIR@/varta.sock" }
processors:
  tracker: { threshold: 100ms, capacity: 64, eviction_after: 1, snapshot_interval: 50ms }
  resolver: {}
exporters:
  debug: {}
service:
  pipelines:
    liveness: { receivers: [vlp/uds], processors: [tracker, resolver], exporters: [debug] }
  telemetry: { logs: { format: json } }
"#;

#[test]
fn huge_agent_values_are_cut_and_churn_does_not_fill_the_string_table() {
    let _turn = heavy(); // 700 agent processes, 50 at a time
    let c = Collector::start(CONFIG);
    let sock = c.path("varta.sock");
    let sock = sock.to_str().expect("utf8");
    let count = |name: &str| c.counter("processors::resolver", name, "");
    // 700 × 100 KiB would be 70 MiB of distinct strings: more than the
    // table's 64 MiB bound if values were kept whole and never freed.
    for batch in 0..14u32 {
        // Each batch lives until the resolver has read it (a process that
        // exits first leaves no environment to read: nothing to cut), then
        // goes.
        let before = count("agents_resolved");
        let mut children = Vec::new();
        for i in 0..50u32 {
            let name = format!("job-{}-{}", batch * 50 + i, "x".repeat(100 << 10));
            let child = varta(&["beat", "--socket", sock, "--every", "20ms"])
                .env("OTEL_SERVICE_NAME", name)
                .spawn()
                .expect("spawn varta beat");
            children.push(child);
        }
        wait_for("the batch resolved", || (count("agents_resolved") >= before + 50).then_some(()));
        for mut child in children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Let these stall and become evictable (tracker capacity 64).
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let resolved = count("agents_resolved");
    assert!(resolved >= 700, "every churn agent was resolved: {resolved}");
    assert!(
        count("attribute_values_truncated") >= resolved,
        "every 100 KiB name was cut: {} of {resolved}",
        count("attribute_values_truncated")
    );
    assert_eq!(count("attribute_strings_refused"), 0);
    let bytes = count("attribute_bytes");
    assert!(bytes < 4 << 20, "the store holds what ≤ 64 tracked agents need, not 70 MiB: {bytes}");

    // An ordinary agent afterwards: its stall names its service.
    let mut agent = varta(&["beat", "--socket", sock, "--every", "20ms"])
        .env("OTEL_SERVICE_NAME", "checkout")
        .spawn()
        .expect("spawn agent");
    let pid = agent.id();
    wait_for("the agent resolved", || (count("agents_resolved") > resolved).then_some(()));
    send_signal(pid, libc::SIGSTOP);
    let line = wait_for("the stall line with its service", || {
        c.log()
            .lines()
            .find(|l| l.contains("\"kind\":\"stall\"") && l.contains(&format!("\"pid\":{pid},")))
            .map(str::to_owned)
    });
    assert!(line.contains("\"service\":\"checkout\""), "{line}");
    send_signal(pid, libc::SIGCONT);
    let _ = agent.kill();
    let _ = agent.wait();
    c.stop_cleanly();
}
