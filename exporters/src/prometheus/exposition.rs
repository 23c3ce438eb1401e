//! The Prometheus text exposition format (0.0.4) for counters and gauges,
//! written straight into a reused byte buffer.
//!
//! Promises: what the `prometheus` crate's `TextEncoder` writes for the same
//! family, byte for byte — `# HELP` (help escaping `\` and newline),
//! `# TYPE`, then `name{k="v",…} value` with label values escaping `\`,
//! `"` and newline and the value as Rust prints an `f64` — so per-agent
//! series can be rendered from the snapshot without an owned
//! `MetricFamily`, `Metric` and `LabelPair` strings per agent. Writing
//! allocates nothing beyond the buffer's own growth. Label values are data
//! (an agent's executable or service name may hold anything): escaping is
//! the only thing that happens to them here.

use std::io::Write;

/// The two sample types served per agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    const fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// `# HELP` and `# TYPE` of one family.
pub fn header(out: &mut Vec<u8>, name: &str, help: &str, kind: Kind) {
    if !help.is_empty() {
        out.extend_from_slice(b"# HELP ");
        out.extend_from_slice(name.as_bytes());
        out.push(b' ');
        escape(out, help, false);
        out.push(b'\n');
    }
    out.extend_from_slice(b"# TYPE ");
    out.extend_from_slice(name.as_bytes());
    out.push(b' ');
    out.extend_from_slice(kind.as_str().as_bytes());
    out.push(b'\n');
}

/// One sample line.
pub fn sample(out: &mut Vec<u8>, name: &str, labels: &[(&str, &str)], value: f64) {
    out.extend_from_slice(name.as_bytes());
    let mut separator = b'{';
    for (k, v) in labels {
        out.push(separator);
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b"=\"");
        escape(out, v, true);
        out.push(b'"');
        separator = b',';
    }
    if !labels.is_empty() {
        out.push(b'}');
    }
    out.push(b' ');
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{value}");
    out.push(b'\n');
}

/// `\` → `\\`, newline → `\n`, and (in label values) `"` → `\"`.
fn escape(out: &mut Vec<u8>, s: &str, quote: bool) {
    for &b in s.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'"' if quote => out.extend_from_slice(b"\\\""),
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::proto::MetricType;
    use prometheus::{Encoder, TextEncoder};

    fn crate_text(name: &str, help: &str, ty: MetricType, labels: &[(&str, &str)], value: f64) -> String {
        let mut f = crate::prometheus::families::Family::new(name, help, ty);
        f.push(labels, value);
        let f = f.0;
        let mut out = Vec::new();
        TextEncoder::new().encode(&[f], &mut out).expect("encode");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn hostile_label_values_are_escaped_exactly_as_the_prometheus_crate_does() {
        let hostile = [
            "plain",
            "quote\" } evil=\"1",
            "back\\slash",
            "new\nline # TYPE x counter",
            "ünïcode",
            "",
            "\\\"\n",
        ];
        for v in hostile {
            for (ty, kind, value) in
                [(MetricType::COUNTER, Kind::Counter, 12345.0), (MetricType::GAUGE, Kind::Gauge, 0.5)]
            {
                let labels = [("pid", "42"), ("exe", v), ("service", v)];
                let help = "Help with a \\ and a\nnewline \"kept\".";
                let mut ours = Vec::new();
                header(&mut ours, "varta_x", help, kind);
                sample(&mut ours, "varta_x", &labels, value);
                assert_eq!(
                    String::from_utf8(ours).expect("utf-8"),
                    crate_text("varta_x", help, ty, &labels, value),
                    "{v:?}"
                );
            }
        }
        let mut bare = Vec::new();
        sample(&mut bare, "varta_y", &[], 3.0);
        assert_eq!(bare, b"varta_y 3\n");
    }
}
