//! Bounded disk under attack: a 10-second flood of garbage datagrams and
//! rate-limited beats leaves the event file under its documented bound,
//! every stall of real agents during the flood in it, and every refusal
//! accounted for (written, summarised, or counted as dropped on the way).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use varta_integration::{Collector, binary, free_udp_port, heavy, read_events, wait_for};

const FLOOD: Duration = Duration::from_secs(10);
const BULK_PER_SECOND: usize = 100;

#[test]
fn a_flood_is_summarised_and_no_stall_is_lost() {
    let _turn = heavy(); // 10 s of datagrams as fast as one thread sends them
    let udp_port = free_udp_port();
    // The event file outlives the collector (its last summaries are written at stop).
    let keep = tempfile::tempdir().expect("tempdir");
    let events_path = keep.path().join("events.tsv");
    let c = Collector::start(&format!(
        r#"receivers:
  vlp/uds: {{ transport: uds, path: "@DIR@/varta.sock" }}
  vlp/udp: {{ transport: udp, endpoint: "127.0.0.1:{udp_port}", accept_unauthenticated: true }}
processors:
  ratelimit: {{ per_agent_min_interval: 50ms }}
  tracker: {{ threshold: 300ms }}
exporters:
  file: {{ path: "{events}", beats: false, bulk_lines_per_second: {BULK_PER_SECOND} }}
service:
  pipelines:
    liveness: {{ receivers: [vlp/uds, vlp/udp], processors: [ratelimit, tracker], exporters: [file] }}
  telemetry: {{ logs: {{ format: json }} }}
"#,
        events = events_path.display()
    ));
    let sock = c.path("varta.sock").display().to_string();
    let flood = std::thread::spawn(move || {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let garbage = [0x42u8; 32];
        let until = Instant::now() + FLOOD;
        let mut nonce = 1u64;
        let mut sent = 0u64;
        while Instant::now() < until {
            for _ in 0..50 {
                if s.send_to(&garbage, ("127.0.0.1", udp_port)).is_ok() {
                    sent += 1;
                }
            }
            // One agent beating far faster than its 50 ms minimum interval.
            let beat = varta_proto::Frame::new(varta_proto::Status::Ok, 777, nonce, nonce, 0).encode();
            let _ = s.send_to(&beat, ("127.0.0.1", udp_port));
            nonce += 1;
            std::thread::sleep(Duration::from_micros(200));
        }
        sent
    });
    // Real agents stall during the flood, one after another.
    let mut agents = Vec::new();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_secs(2));
        agents.push(
            Command::new(binary("stall-agent"))
                .args([sock.as_str(), "sleep", "3"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("stall-agent"),
        );
    }
    let sent = flood.join().expect("flood");
    let pids: Vec<String> = agents.iter().map(|a| a.id().to_string()).collect();
    wait_for("every agent's stall", || {
        let ev = read_events(&events_path);
        pids.iter().all(|p| ev.iter().any(|e| e.kind == "stall" && &e.pid == p)).then_some(())
    });
    let refused = c.counter("receivers::vlp/udp", "refused", "bad_magic");
    let queue_dropped = c.counter("receivers::vlp/udp", "queue_full_refusals", "");
    let exporter_dropped = c.counter("exporters::file", "dropped", "queue_full");
    for mut a in agents {
        let _ = a.kill();
        let _ = a.wait();
    }
    let (status, _) = c.stop(); // writes the last window's summaries
    assert!(status.success());

    let text = std::fs::read_to_string(&events_path).expect("event file");
    let lines: Vec<&str> = text.lines().collect();
    let events = read_events(&events_path);
    // The bound: per second at most BULK_PER_SECOND bulk lines plus one
    // summary per (kind, source) — a handful here — plus the real events.
    let seconds = FLOOD.as_secs() as usize + 4;
    let bound = seconds * (BULK_PER_SECOND + varta_exporters::aggregate::MAX_KEYS) + 100;
    assert!(lines.len() <= bound, "{} lines for {sent} garbage datagrams (bound {bound})", lines.len());
    assert!(sent > 10 * lines.len() as u64, "the flood was a flood: {sent} sent, {} lines", lines.len());
    for p in &pids {
        assert!(events.iter().any(|e| e.kind == "stall" && &e.pid == p), "stall of {p} missing");
    }
    // Nothing vanished: written one by one + summarised + dropped on the way = refused.
    let written = events.iter().filter(|e| e.kind == "decode" && e.payload == "BadMagic").count() as u64;
    let summarised: u64 = events
        .iter()
        .filter(|e| e.kind == "aggregated" && e.status == "bad_magic")
        .map(|e| e.nonce.parse::<u64>().unwrap_or(0))
        .sum();
    assert!(summarised > 0, "the flood was summarised");
    let accounted = written + summarised;
    assert!(accounted <= refused, "{accounted} > {refused}");
    assert!(
        refused - accounted <= queue_dropped + exporter_dropped,
        "refused {refused}, written {written}, summarised {summarised}, dropped {queue_dropped} + {exporter_dropped}"
    );
}
