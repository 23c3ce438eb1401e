//! The real OpenTelemetry engines end to end, all on loopback:
//! * a minimal OpenTelemetry Collector built from the Collector's own Go
//!   modules (`integration/peers/otelcol`) loads the shipped gateway config
//!   `otel-config/otelcol-gateway.yaml`;
//! * `docs/deployment.md`'s *Wiring* chain: `varta-collector` → that gateway → Jaeger v2
//!   (`integration/peers/jaeger`, in-memory storage, its query API) for the
//!   stall traces and Prometheus (remote write receiver) for the metrics;
//! * our `otlphttp` exporter straight into the Collector's OTLP/HTTP
//!   receiver, proto and JSON bodies, read back from the Collector's
//!   contrib `file` exporter (it writes exactly what it received).
//!
//! The peers are built by `scripts/install-peers.sh` (the README test
//! command runs it); a missing peer fails the test, never skips it. No
//! timing thresholds: everything is polled with bounded timeouts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use varta_integration::{Collector, free_tcp_port, http, peers, reap, signal, span_blocks, wait_for};

/// A third-party program running with its output in a log file, killed on drop.
struct Peer {
    name: &'static str,
    child: Child,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Peer {
    fn start(name: &'static str, program: PathBuf, args: &[String], dir: tempfile::TempDir) -> Peer {
        let log = dir.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("peer log");
        let child = Command::new(&program)
            .args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({}): {e}", program.display()));
        Peer { name, child, log, dir }
    }

    /// A file in the peer's working directory.
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for `line` in the log; on a peer that exited, shows its log.
    fn wait_log(&mut self, what: &str, line: &str) {
        wait_for(what, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}) while waiting for {what}:\n{}", self.name, self.log());
            }
            self.log().contains(line).then_some(())
        });
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// The OpenTelemetry Collector.

fn shipped_gateway() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../otel-config/otelcol-gateway.yaml");
    std::fs::read_to_string(path).expect("read otel-config/otelcol-gateway.yaml")
}

/// The shipped gateway config with its endpoints replaced by loopback ones
/// (each replacement must match, so a changed config fails here, loudly).
fn gateway_config(grpc: u16, traces_to: u16, remote_write_to: u16) -> String {
    let mut text = shipped_gateway();
    for (from, to) in [
        ("endpoint: 0.0.0.0:4317", format!("endpoint: 127.0.0.1:{grpc}")),
        ("endpoint: tempo-distributor.observability.svc:4317", format!("endpoint: 127.0.0.1:{traces_to}")),
        (
            "endpoint: http://mimir-distributor.observability.svc:8080/api/v1/push",
            format!("endpoint: http://127.0.0.1:{remote_write_to}/api/v1/write"),
        ),
    ] {
        assert!(text.contains(from), "otelcol-gateway.yaml no longer contains `{from}`");
        text = text.replace(from, &to);
    }
    text
}

/// Merged after the gateway config: the Collector's own telemetry off (its
/// default metrics listener would take a fixed port).
const QUIET_TELEMETRY: &str = "service:\n  telemetry:\n    metrics:\n      level: none\n";

fn otelcol(config: &str) -> Peer {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("config.yaml"), config).expect("write otelcol config");
    std::fs::write(dir.path().join("telemetry.yaml"), QUIET_TELEMETRY).expect("write overlay");
    let args = ["--config", "config.yaml", "--config", "telemetry.yaml"].map(String::from);
    let mut p = Peer::start("otelcol", peers::otelcol(), &args, dir);
    p.wait_log("the Collector to be ready", "Everything is ready");
    p
}

fn validate(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("config.yaml"), config).expect("write otelcol config");
    let out = Command::new(peers::otelcol())
        .args(["validate", "--config", "config.yaml"])
        .current_dir(dir.path())
        .output()
        .expect("run otelcol validate");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn the_collector_validates_the_shipped_gateway_config() {
    let config = gateway_config(free_tcp_port(), free_tcp_port(), free_tcp_port());
    let (ok, out) = validate(&config);
    assert!(ok, "otelcol validate refused otel-config/otelcol-gateway.yaml:\n{out}");
    // The same check refuses a renamed option and a removed component, so
    // the acceptance above means something.
    let (ok, out) = validate(&config.replace("send_batch_size:", "send_batch_sizes:"));
    assert!(!ok && out.contains("send_batch_sizes"), "{out}");
    let (ok, out) = validate(&config.replace("prometheus_remote_write:", "prometheus_remote_writ:"));
    assert!(!ok && out.contains("prometheus_remote_writ"), "{out}");
}

// ---------------------------------------------------------------------------
// Jaeger and Prometheus.

struct Jaeger {
    _peer: Peer,
    otlp: u16,
    query: u16,
}

impl Jaeger {
    /// Jaeger v2 with in-memory storage, receiving OTLP/gRPC and serving
    /// its query API, every listener on loopback (its default config binds
    /// 0.0.0.0 and fixed ports, so it gets this one).
    fn start() -> Jaeger {
        let (otlp, query, query_grpc) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
        let config = format!(
            r#"service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: []
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 10000
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{otlp}
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"#
        );
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("jaeger.yaml"), config).expect("write jaeger config");
        let args = ["--config", "jaeger.yaml"].map(String::from);
        let mut peer = Peer::start("jaeger", peers::jaeger(), &args, dir);
        peer.wait_log("Jaeger to be ready", "Everything is ready");
        let url = format!("http://127.0.0.1:{query}/api/services");
        wait_for("Jaeger's query API", || http::request("GET", &url, &[]).ok().filter(|r| r.status == 200));
        Jaeger { _peer: peer, otlp, query }
    }

    /// The traces Jaeger's query API returns for `service`.
    fn traces(&self, service: &str) -> Vec<Value> {
        let url =
            format!("http://127.0.0.1:{}/api/traces?service={service}&limit=100&lookback=1h", self.query);
        let Ok(reply) = http::request("GET", &url, &[]) else { return Vec::new() };
        let body: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        body["data"].as_array().cloned().unwrap_or_default()
    }
}

fn spans_named<'a>(trace: &'a Value, name: &str) -> Vec<&'a Value> {
    trace["spans"].as_array().into_iter().flatten().filter(|s| s["operationName"] == name).collect()
}

fn tag<'a>(tags: &'a Value, key: &str) -> Option<&'a Value> {
    tags.as_array()?.iter().find(|t| t["key"] == key).map(|t| &t["value"])
}

/// The process (resource) a span of `trace` was reported under.
fn process_of<'a>(trace: &'a Value, span: &Value) -> &'a Value {
    &trace["processes"][span["processID"].as_str().unwrap_or_default()]
}

fn parent_of(span: &Value) -> Option<&str> {
    span["references"].as_array()?.iter().find(|r| r["refType"] == "CHILD_OF")?["spanID"].as_str()
}

/// Checkout's traces holding a stall of agent `pid`, with its diagnosis
/// and resolution.
fn complete_incidents(jaeger: &Jaeger, pid: u32) -> Vec<Value> {
    jaeger
        .traces("checkout")
        .into_iter()
        .filter(|t| {
            spans_named(t, "varta.stall")
                .first()
                .is_some_and(|s| tag(&process_of(t, s)["tags"], "process.pid") == Some(&Value::from(pid)))
                && !spans_named(t, "varta.stall.diagnosis").is_empty()
                && !spans_named(t, "varta.stall.resolved").is_empty()
        })
        .collect()
}

struct Prometheus {
    _peer: Peer,
    port: u16,
}

impl Prometheus {
    /// Prometheus receiving remote write, scraping nothing.
    fn start() -> Prometheus {
        let port = free_tcp_port();
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("prometheus.yml"), "global:\n  scrape_interval: 1m\n")
            .expect("config");
        let args = [
            "--config.file=prometheus.yml".to_owned(),
            "--storage.tsdb.path=data".to_owned(),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--web.enable-remote-write-receiver".to_owned(),
        ];
        let mut peer = Peer::start("prometheus", peers::prometheus(), &args, dir);
        peer.wait_log("Prometheus to be ready", "Server is ready to receive web requests.");
        Prometheus { _peer: peer, port }
    }

    /// The first value of an instant query, once it exists.
    fn query(&self, q: &str) -> Option<f64> {
        http::promql(self.port, q)
    }
}

// ---------------------------------------------------------------------------
// varta-collector and its agent.

/// A collector (UDS receiver, tracker, resolver) with `exporter` (its
/// YAML block, indented by two spaces) and a `checkout` agent beating
/// every 50 ms.
fn collector_with_checkout(exporter_name: &str, exporter: &str) -> (Collector, Child) {
    let text = format!(
        r#"receivers:
  vlp/uds:
    transport: uds
    path: "@DIR@/varta.sock"
processors:
  tracker:
    threshold: 300ms
  resolver: {{ include_command_args: true }}
exporters:
{exporter}
service:
  pipelines:
    liveness:
      receivers: [vlp/uds]
      processors: [tracker, resolver]
      exporters: [{exporter_name}]
  telemetry:
    logs:
      format: json
"#
    );
    let c = Collector::start(&text);
    let agent = varta_integration::service_agent(&c, "checkout");
    (c, agent)
}

fn liveness(c: &Collector, name: &str) -> u64 {
    c.counter("pipelines::liveness", name, "")
}

/// Stops the agent until the collector has counted and diagnosed stall
/// number `n` (so the diagnosis sees it stopped), then lets it resume and
/// waits for the resumption.
fn stall(c: &Collector, agent: &Child, n: u64) {
    signal(agent, libc::SIGSTOP);
    wait_for("the stall", || (liveness(c, "stalls") >= n).then_some(()));
    wait_for("its diagnosis", || (c.counter("processors::resolver", "diagnoses", "") >= n).then_some(()));
    signal(agent, libc::SIGCONT);
    wait_for("the agent to resume", || (liveness(c, "resumes") >= n).then_some(()));
}

#[test]
fn checkout_stalls_reach_jaeger_and_prometheus_through_the_real_gateway_across_its_restart() {
    let prometheus = Prometheus::start();
    let jaeger = Jaeger::start();
    let gw = free_tcp_port();
    let gateway_text = gateway_config(gw, jaeger.otlp, prometheus.port);
    let gateway = otelcol(&gateway_text);
    let exporter = format!(
        "  otlp:\n    endpoint: 127.0.0.1:{gw}\n    tls: {{ insecure: true }}\n    metrics: {{ interval: 200ms }}\n    \
         retry_on_failure: {{ initial_interval: 100ms, max_interval: 500ms }}"
    );
    let (c, agent) = collector_with_checkout("otlp", &exporter);
    let pid = agent.id();
    wait_for("the agent beating", || (liveness(&c, "beats_accepted") > 0).then_some(()));
    // Nothing in the shipped config is deprecated (a renamed component or
    // option still loads, with a warning at start-up).
    let deprecated: Vec<String> =
        gateway.log().lines().filter(|l| l.contains("deprecated")).map(str::to_owned).collect();
    assert!(deprecated.is_empty(), "otelcol-gateway.yaml uses deprecated names:\n{}", deprecated.join("\n"));

    // One incident: stall, diagnosis, resolution — one trace in Jaeger,
    // found as a Jaeger user finds it, by service.
    stall(&c, &agent, 1);
    let trace = wait_for("checkout's incident in Jaeger", || complete_incidents(&jaeger, pid).pop());
    let stall_span = spans_named(&trace, "varta.stall")[0];
    let process = process_of(&trace, stall_span);
    assert_eq!(process["serviceName"], "checkout", "{trace}");
    assert_eq!(tag(&process["tags"], "process.executable.name"), Some(&Value::from("varta")), "{process}");
    assert_eq!(tag(&process["tags"], "varta.agent.transport"), Some(&Value::from("uds")), "{process}");
    assert_eq!(tag(&stall_span["tags"], "error"), Some(&Value::from(true)), "{stall_span}");
    let stall_id = stall_span["spanID"].as_str();
    let diagnosis = spans_named(&trace, "varta.stall.diagnosis")[0];
    assert_eq!(tag(&diagnosis["tags"], "varta.stall.cause"), Some(&Value::from("stopped")), "{diagnosis}");
    assert_eq!(parent_of(diagnosis), stall_id, "{trace}");
    let resolved = spans_named(&trace, "varta.stall.resolved")[0];
    assert_eq!(parent_of(resolved), stall_id, "{trace}");
    assert!(tag(&resolved["tags"], "varta.stall.silence_ns").is_some(), "{resolved}");
    assert_eq!(process_of(&trace, resolved)["serviceName"], "checkout");

    // And Prometheus answers PromQL for checkout's stall count (remote
    // write, resource attributes as labels).
    let stalls_query = format!("varta_agent_stalls_total{{service_name=\"checkout\",process_pid=\"{pid}\"}}");
    wait_for("checkout's stall count in Prometheus", || {
        prometheus.query(&stalls_query).filter(|&v| v >= 1.0)
    });

    // The gateway goes away; two incidents happen meanwhile; it comes back
    // on the same port and nothing is lost.
    drop(gateway);
    stall(&c, &agent, 2);
    stall(&c, &agent, 3);
    let _gateway = otelcol(&gateway_text);
    let all = wait_for("all three incidents in Jaeger", || {
        let t = complete_incidents(&jaeger, pid);
        (t.len() >= 3).then_some(t)
    });
    let mut ids: Vec<&str> = all.iter().filter_map(|t| t["traceID"].as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "three incidents, three traces");
    let three =
        wait_for("the stall count 3 in Prometheus", || prometheus.query(&stalls_query).filter(|&v| v >= 3.0));
    assert_eq!(three, 3.0);
    assert_eq!(c.counter("exporters::otlp", "spans_dropped", "queue_full"), 0);
    reap(agent);
    c.stop_cleanly();
}

#[test]
fn otlphttp_delivers_to_the_collectors_otlp_http_receiver_in_proto_and_json() {
    let http_port = free_tcp_port();
    let gateway = otelcol(&format!(
        r#"receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{http_port}
exporters:
  debug:
    verbosity: detailed
  file:
    path: ./metrics.jsonl
service:
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [debug]
    metrics:
      receivers: [otlp]
      exporters: [debug, file]
"#
    ));
    for encoding in ["proto", "json"] {
        let exporter = format!(
            "  otlphttp:\n    endpoint: http://127.0.0.1:{http_port}\n    encoding: {encoding}\n    \
             metrics: {{ interval: 200ms }}"
        );
        let (c, agent) = collector_with_checkout("otlphttp", &exporter);
        let pid_line = format!("-> process.pid: Int({})", agent.id());
        wait_for("the agent beating", || (liveness(&c, "beats_accepted") > 0).then_some(()));
        stall(&c, &agent, 1);
        let block = wait_for("checkout's resolution at the Collector", || {
            span_blocks(&gateway.log(), "varta.stall.resolved").into_iter().find(|b| b.contains(&pid_line))
        });
        assert!(block.contains("-> service.name: Str(checkout)"), "{encoding}: {block}");
        let stalled = span_blocks(&gateway.log(), "varta.stall").into_iter().find(|b| b.contains(&pid_line));
        let stalled =
            stalled.unwrap_or_else(|| panic!("{encoding}: no varta.stall span:\n{}", gateway.log()));
        assert!(stalled.contains("varta.stall.detected"), "{encoding}: {stalled}");
        wait_for("checkout's metric points at the Collector", || {
            let log = gateway.log();
            log.split("ResourceMetrics #")
                .skip(1)
                .any(|b| b.contains(&pid_line) && b.contains("varta.agent.stalls"))
                .then_some(())
        });
        reap(agent);
        let log = c.stop_cleanly();
        assert_eq!(
            varta_integration::final_counter(&log, "exporters::otlphttp", "spans_failed", "").unwrap_or(0),
            0,
            "{encoding}: {log}"
        );
        // Every metrics request taken too: JSON once carried `"min":null`
        // in the fleet histogram, which the Collector refuses with 400.
        let exports = varta_integration::final_counter(&log, "exporters::otlphttp", "metric_exports", "");
        assert!(exports.unwrap_or(0) >= 2, "{encoding}: {log}");
        assert_eq!(
            varta_integration::final_counter(&log, "exporters::otlphttp", "metric_exports_failed", "")
                .unwrap_or(0),
            0,
            "{encoding}: the Collector refused metrics:\n{}",
            gateway.log()
        );
        assert!(!gateway.log().contains("ReadUint64"), "{encoding}: {}", gateway.log());
        as_the_collector_read_it(&gateway.path("metrics.jsonl"), &pid_line, encoding);
    }
}

/// What the Collector's `file` exporter wrote, which is exactly what it
/// read from us: the agent's series under its own resource with count
/// units, `process.command_args` an array, and every cumulative point
/// with a start time no later than its time.
fn as_the_collector_read_it(file: &Path, pid_line: &str, encoding: &str) {
    let pid: i64 =
        pid_line.trim_start_matches("-> process.pid: Int(").trim_end_matches(')').parse().expect("pid");
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let requests: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    let resources: Vec<&Value> =
        requests.iter().flat_map(|r| r["resourceMetrics"].as_array().into_iter().flatten()).collect();
    let attribute = |r: &Value, key: &str| -> Option<Value> {
        r["resource"]["attributes"].as_array()?.iter().find(|a| a["key"] == key).map(|a| a["value"].clone())
    };
    let agent = resources
        .iter()
        .rev()
        .find(|r| {
            attribute(r, "process.pid").and_then(|v| v["intValue"].as_str()?.parse::<i64>().ok()) == Some(pid)
        })
        .unwrap_or_else(|| panic!("{encoding}: no resource for pid {pid} in {text}"));
    let args = attribute(agent, "process.command_args")
        .unwrap_or_else(|| panic!("process.command_args: {}", agent["resource"]));
    assert!(args["arrayValue"]["values"].as_array().is_some_and(|v| !v.is_empty()), "{encoding}: {args}");
    let metrics: Vec<&Value> = agent["scopeMetrics"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["metrics"].as_array().into_iter().flatten())
        .collect();
    let unit = |name: &str| metrics.iter().find(|m| m["name"] == name).map(|m| m["unit"].clone());
    assert_eq!(unit("varta.agent.stalls"), Some(Value::from("{stall}")), "{encoding}");
    assert_eq!(unit("varta.agent.beats"), Some(Value::from("{beat}")), "{encoding}");
    let nanos = |v: &Value| v.as_str().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    let mut checked = 0;
    for r in &resources {
        for s in r["scopeMetrics"].as_array().into_iter().flatten() {
            for m in s["metrics"].as_array().into_iter().flatten() {
                for p in m["sum"]["dataPoints"].as_array().into_iter().flatten() {
                    let (start, time) = (nanos(&p["startTimeUnixNano"]), nanos(&p["timeUnixNano"]));
                    assert!(
                        start > 0 && start <= time,
                        "{encoding}: {} start {start} time {time}",
                        m["name"]
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 10, "{encoding}: cumulative points read: {checked}");
}

// ---------------------------------------------------------------------------
// Stall evidence.

/// `evidence/tests/progs/deadlock.c` built as the issue asks (`-O2 -g`,
/// frame pointers not forced): four waiters on one mutex whose holder
/// sleeps in `holdout_hold_lock`; with `VARTA_SOCKET` it first sends the
/// frames it reads from stdin.
fn deadlock_program(dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../evidence/tests/progs/deadlock.c");
    let bin = dir.join("deadlock");
    let out =
        Command::new("cc").args(["-O2", "-g", "-pthread", "-o"]).arg(&bin).arg(&source).output().expect("cc");
    assert!(out.status.success(), "cc: {}", String::from_utf8_lossy(&out.stderr));
    bin
}

/// The deadlocked C program as an agent: it beats three times, then its
/// four waiters and the lock's holder are stuck. The stall's evidence
/// span, as the real Collector received it (its `file` exporter), groups
/// the four waiters on one lock and names the waiting and the holding
/// functions; the diagnosis span lasts its window; the event file has the
/// compact line; and no thread of the agent is left traced.
#[test]
fn stall_evidence_names_the_lock_and_functions_at_the_real_collector() {
    use std::io::{BufRead, Write};
    let grpc = free_tcp_port();
    let gateway = otelcol(&format!(
        r#"receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{grpc}
exporters:
  file:
    path: ./traces.jsonl
service:
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [file]
"#
    ));
    let c = Collector::start(&format!(
        r#"receivers:
  vlp/uds: {{ transport: uds, path: "@DIR@/varta.sock" }}
processors:
  tracker: {{ threshold: 300ms }}
  # A symbol budget no loaded test machine outruns: this test is about
  # what is named, not how fast.
  resolver: {{ diagnosis: {{ window: 100ms, stacks: true, symbol_budget: 10s }} }}
exporters:
  otlp: {{ endpoint: "http://127.0.0.1:{grpc}", metrics: {{ enabled: false }} }}
  file: {{ path: "@DIR@/events.tsv", beats: false }}
  debug: {{}}
service:
  pipelines:
    liveness: {{ receivers: [vlp/uds], processors: [tracker, resolver], exporters: [otlp, file, debug] }}
  telemetry: {{ logs: {{ format: json }} }}
"#
    ));
    let bin = deadlock_program(c.dir.path());
    let mut agent = varta_integration::Reaped(
        Command::new(&bin)
            .args(["4", "-"])
            .env("VARTA_SOCKET", c.path("varta.sock"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("deadlock program"),
    );
    let mut ready = String::new();
    std::io::BufReader::new(agent.stdout.take().expect("stdout")).read_line(&mut ready).expect("READY");
    let pid = agent.id();
    assert_eq!(ready.trim(), format!("READY {pid}"));
    let mut beats = agent.stdin.take().expect("stdin");
    for nonce in 1..=3 {
        let frame = varta_proto::Frame::new(varta_proto::Status::Ok, pid, nonce, nonce, 0);
        beats.write_all(&frame.encode()).expect("frame");
    }
    drop(beats);

    let spans = || -> Vec<Value> {
        let text = std::fs::read_to_string(gateway.path("traces.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .flat_map(|r| r["resourceSpans"].as_array().cloned().unwrap_or_default())
            .filter(|rs| {
                rs["resource"]["attributes"].as_array().into_iter().flatten().any(|a| {
                    a["key"] == "process.pid" && a["value"]["intValue"].as_str() == Some(&pid.to_string())
                })
            })
            .flat_map(|rs| rs["scopeSpans"].as_array().cloned().unwrap_or_default())
            .flat_map(|ss| ss["spans"].as_array().cloned().unwrap_or_default())
            .collect()
    };
    let evidence = wait_for("the evidence span at the Collector", || {
        spans().into_iter().find(|s| s["name"] == "varta.stall.evidence")
    });
    let attr = |v: &Value, key: &str| -> Value {
        v["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["key"] == key)
            .map_or(Value::Null, |a| a["value"].clone())
    };
    let summary =
        attr(&evidence, "varta.evidence.summary")["stringValue"].as_str().unwrap_or_default().to_owned();
    assert!(summary.contains("4 threads wait on one lock"), "{summary}");
    assert!(summary.contains("holdout_hold_lock"), "the holder's function: {summary}\n{}", c.log());
    let groups: Vec<&Value> = evidence["events"].as_array().into_iter().flatten().collect();
    let lock = groups
        .iter()
        .find(|g| {
            attr(g, "varta.wait.kind")["stringValue"] == "futex"
                && attr(g, "varta.threads")["intValue"] == "4"
        })
        .unwrap_or_else(|| panic!("no group of four on one lock: {evidence:#}"));
    assert!(
        attr(lock, "varta.lock.address")["stringValue"].as_str().is_some_and(|a| a.starts_with("0x")),
        "{lock:#}"
    );
    assert!(attr(lock, "varta.lock.holder")["intValue"].as_str().is_some(), "the holder named: {lock:#}");
    assert!(
        attr(lock, "thread.name")["stringValue"].as_str().is_some_and(|n| n.starts_with("waiter-")),
        "{lock:#}"
    );
    let trace = attr(lock, "code.stacktrace")["stringValue"].as_str().unwrap_or_default().to_owned();
    assert!(trace.contains("waiter_take_lock"), "the waiting function: {trace}");
    // One incident, one trace: the evidence hangs under its diagnosis,
    // which lasts from its first look to its second.
    let diagnosis =
        spans().into_iter().find(|s| s["name"] == "varta.stall.diagnosis").expect("diagnosis span");
    assert_eq!(evidence["traceId"], diagnosis["traceId"]);
    assert_eq!(evidence["parentSpanId"], diagnosis["spanId"]);
    let nanos = |v: &Value| v.as_str().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    assert!(nanos(&diagnosis["endTimeUnixNano"]) > nanos(&diagnosis["startTimeUnixNano"]), "{diagnosis:#}");
    assert!(nanos(&evidence["endTimeUnixNano"]) > nanos(&evidence["startTimeUnixNano"]), "{evidence:#}");

    let line = wait_for("the event file's evidence line", || {
        let text = std::fs::read_to_string(c.path("events.tsv")).unwrap_or_default();
        text.lines().find(|l| l.contains("\tevidence\t")).map(str::to_owned)
    });
    assert!(line.contains(&format!("\tevidence\t{pid}\t")), "{line}");
    assert!(line.contains("groups=futex:") && line.contains("=4,holder="), "{line}");
    eprintln!("evidence line: {line}\nsummary: {summary}");
    // The debug exporter: the summary and the groups' top frames, one line.
    let logged = c.log().lines().find(|l| l.contains("stall evidence (incident")).map(str::to_owned);
    let logged = logged.unwrap_or_else(|| panic!("no debug line:\n{}", c.log()));
    assert!(logged.contains("4 thread(s) [futex]") && logged.contains("waiter_take_lock"), "{logged}");
    assert!(c.counter("processors::resolver", "evidence_captured", "") >= 1);
    assert!(c.counter("processors::resolver", "evidence_stacks", "") >= 5, "every thread's stack");
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let status = std::fs::read_to_string(task.expect("task").path().join("status")).unwrap_or_default();
        assert!(status.lines().any(|l| l == "TracerPid:\t0"), "left traced: {status}");
    }
    drop(agent);
    c.stop_cleanly();
}
