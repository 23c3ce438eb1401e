//! The Prometheus side of the deploy kit, checked by the real tools and
//! against a real scrape: `promtool check config`, `check rules` and
//! `test rules` (every alert, firing and not), and every metric and label
//! value the alert rules and the Grafana dashboard select on exists in what
//! a running collector serves.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use varta_integration::http::get;
use varta_integration::{
    Collector, binary, free_tcp_port, peers, read_events, varta, wait_for, write_secret,
};

fn kit(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../otel-config").join(file)
}

fn promtool(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new(peers::promtool()).args(args).current_dir(dir).output().expect("run promtool");
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn promtool_accepts_the_config_the_rules_and_their_unit_tests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("varta.token");
    write_secret(&token, &"ab".repeat(32));
    for f in ["alerts.yml", "alerts_test.yml"] {
        std::fs::copy(kit(&format!("prometheus/{f}")), dir.path().join(f)).expect("copy");
    }
    let config = std::fs::read_to_string(kit("prometheus/prometheus.yml")).expect("config");
    std::fs::write(
        dir.path().join("prometheus.yml"),
        config.replace("/etc/prometheus/varta.token", &token.display().to_string()),
    )
    .expect("write");
    for args in [
        &["check", "config", "prometheus.yml"][..],
        &["check", "rules", "alerts.yml"],
        &["test", "rules", "alerts_test.yml"],
    ] {
        let (ok, said) = promtool(args, dir.path());
        assert!(ok, "promtool {args:?}: {said}");
    }
    // The unit tests can fail: a wrong expectation is caught.
    let test = std::fs::read_to_string(dir.path().join("alerts_test.yml")).expect("tests");
    std::fs::write(dir.path().join("broken_test.yml"), test.replace("stalled 4 times", "stalled 5 times"))
        .expect("write");
    assert!(!promtool(&["test", "rules", "broken_test.yml"], dir.path()).0);
}

/// One label matcher: `(label, operator, value)`.
type Matcher = (String, String, String);

/// Metric selectors in a PromQL expression: `(name, [(label, op, value)])`
/// for every identifier that is a varta metric or `up`. A tiny tokenizer:
/// identifiers are `[a-zA-Z_:][a-zA-Z0-9_:]*`; a `{…}` right after one is
/// its selector (`label="v"`, `label=~"re"`, …); strings are skipped.
fn selectors(expr: &str) -> Vec<(String, Vec<Matcher>)> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i] as char;
        if c == '"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += 1;
            }
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < b.len() && ((b[i] as char).is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let name = &expr[start..i];
            if !(name.starts_with("varta_") || name == "up") {
                continue;
            }
            let mut labels = Vec::new();
            if i < b.len() && b[i] == b'{' {
                let end = expr[i..].find('}').map_or(b.len(), |e| i + e);
                for m in expr[i + 1..end].split(',').filter(|m| !m.trim().is_empty()) {
                    let op_at = m.find(['=', '!']).unwrap_or(m.len());
                    let key = m[..op_at].trim().to_owned();
                    let rest = &m[op_at..];
                    let op: String = rest.chars().take_while(|c| "=!~".contains(*c)).collect();
                    let value = rest[op.len()..].trim().trim_matches('"').to_owned();
                    labels.push((key, op, value));
                }
                i = end + 1;
            }
            out.push((name.to_owned(), labels));
            continue;
        }
        i += 1;
    }
    out
}

fn rule_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(kit("prometheus/alerts.yml")).expect("rules");
    let mut exprs = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else { continue };
        let rest = rest.trim();
        if rest == ">" || rest == "|" {
            let mut e = String::new();
            while let Some(next) = lines.peek() {
                if next.trim_start().starts_with("labels:") || next.trim_start().starts_with("for:") {
                    break;
                }
                e.push_str(next.trim());
                e.push(' ');
                lines.next();
            }
            exprs.push(e);
        } else {
            exprs.push(rest.to_owned());
        }
    }
    exprs
}

fn dashboard_exprs() -> Vec<String> {
    let d: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(kit("grafana/varta-dashboard.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut exprs = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            exprs.push(t["expr"].as_str().expect("expr").to_owned());
        }
    }
    exprs
}

/// `family → series label sets` of a scrape.
fn scrape_series(body: &str) -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    let mut out: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for line in body.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (head, _) = line.rsplit_once(' ').unwrap_or((line, ""));
        let (name, labels) = match head.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (head, ""),
        };
        let set: BTreeMap<String, String> = labels
            .split("\",")
            .filter_map(|kv| {
                kv.split_once('=').map(|(k, v)| (k.trim().to_owned(), v.trim_matches('"').to_owned()))
            })
            .collect();
        out.entry(name.to_owned()).or_default().push(set);
    }
    out
}

#[test]
fn every_metric_the_rules_and_dashboard_use_is_served() {
    let port = free_tcp_port();
    let c = Collector::start_prepared(
        &format!(
            r#"receivers:
  vlp/uds: {{ transport: uds, path: "@DIR@/varta.sock" }}
processors:
  tracker: {{ threshold: 300ms, snapshot_interval: 50ms }}
  resolver: {{ diagnosis: {{ window: 100ms }} }}
  recovery: {{ exec: ["/bin/true"], audit_file: "@DIR@/audit.tsv" }}
exporters:
  file: {{ path: "@DIR@/events.tsv", beats: false }}
  otlp: {{ endpoint: "http://127.0.0.1:{closed}", retry_on_failure: {{ enabled: false }} }}
  prometheus: {{ endpoint: "127.0.0.1:{port}", bearer_token_file: "@DIR@/token", rate_limit: {{ rate: 1000, burst: 1000 }} }}
service:
  pipelines:
    liveness: {{ receivers: [vlp/uds], processors: [tracker, resolver, recovery], exporters: [file, otlp, prometheus] }}
  telemetry: {{ logs: {{ format: json }} }}
"#,
            closed = free_tcp_port()
        ),
        &[],
        |dir| write_secret(&dir.join("token"), &"ab".repeat(32)),
    );
    // A named service that keeps beating, and an agent that stalls (and is recovered).
    let sock = c.path("varta.sock").display().to_string();
    let mut named = varta(&["beat", "--socket", &sock, "--every", "50ms"])
        .env("OTEL_SERVICE_NAME", "checkout")
        .spawn()
        .expect("agent");
    let mut stalling = Command::new(binary("stall-agent"))
        .args([sock.as_str(), "sleep", "3"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("stall-agent");
    let stalled = stalling.id().to_string();
    wait_for("the stall diagnosed and recovered", || {
        read_events(&c.path("events.tsv"))
            .iter()
            .any(|e| e.kind == "recovery" && e.pid == stalled && e.status != "started")
            .then_some(())
    });
    let auth = format!("Bearer {}", "ab".repeat(32));
    let body = wait_for("a scrape with both agents labelled", || {
        let r = get(&format!("http://127.0.0.1:{port}/metrics"), &[("Authorization", &auth)]);
        (r.status == 200 && r.text().contains("service=\"checkout\"")).then(|| r.text())
    });
    let served = scrape_series(&body);

    // Labels Prometheus itself adds, or that PromQL computes.
    let added: BTreeSet<&str> = ["instance", "job", "le"].into_iter().collect();
    let mut missing = Vec::new();
    let mut checked = BTreeSet::new();
    for expr in rule_exprs().into_iter().chain(dashboard_exprs()) {
        for (name, labels) in selectors(&expr) {
            checked.insert(name.clone());
            if name == "up" {
                continue; // Prometheus' own series
            }
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|base| served.contains_key(&format!("{base}_count")))
                        .map(|_| name.clone())
                })
                .unwrap_or_else(|| name.clone());
            let Some(series) = served.get(&family) else {
                missing.push(format!("{name} (in `{expr}`)"));
                continue;
            };
            for (key, op, value) in labels.iter().filter(|(k, ..)| !added.contains(k.as_str())) {
                let present = series.iter().any(|s| match (s.get(key), op.as_str()) {
                    (Some(v), "=") => v == value,
                    (Some(_), _) => true,
                    (None, _) => false,
                });
                if !present {
                    missing.push(format!("{name}{{{key}{op}\"{value}\"}} (in `{expr}`)"));
                }
            }
        }
    }
    assert!(missing.is_empty(), "referenced but not served:\n{}", missing.join("\n"));
    // The extraction found what the files use (it is not vacuous).
    for name in [
        "varta_status",
        "varta_stalls_total",
        "varta_stall_causes_total",
        "varta_stall_duration_seconds_bucket",
        "varta_recovery_outcomes_total",
        "varta_collector_exporter_spans_failed_total",
    ] {
        assert!(checked.contains(name), "{name} not found among {checked:?}");
    }
    // The checker can fail.
    assert!(!served.contains_key("varta_no_such_metric_total"));
    let _ = named.kill();
    let _ = named.wait();
    let _ = stalling.kill();
    let _ = stalling.wait();
}
