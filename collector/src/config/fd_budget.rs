//! Connection caps against the open-file limit. Every open scrape or probe
//! connection is a file descriptor; caps that add up past the limit would
//! make `accept` fail with EMFILE for everyone, the kubelet's probe
//! included, instead of the cap refusing the excess. So at start and on
//! reload the caps are lowered, with a warning, to fit what is left after
//! the sockets and files the collector itself needs.

use super::Config;

/// Descriptors kept for the collector's own sockets, files and children.
pub const RESERVED_FDS: u64 = 256;
/// No endpoint is lowered below this many connections.
const FLOOR: usize = 8;

impl Config {
    /// Lowers the connection caps of the Prometheus endpoints and the health
    /// check, in proportion, when their sum does not fit `open_files` minus
    /// [`RESERVED_FDS`]. Returns one warning per lowered cap.
    pub fn fit_connection_caps(&mut self, open_files: u64) -> Vec<String> {
        let mut caps: Vec<(String, &mut usize)> = Vec::new();
        for c in &mut self.exporters.0 {
            if let Some(cap) = c.config.connection_cap() {
                caps.push((format!("exporters::{}", c.id), cap));
            }
        }
        for c in &mut self.extensions.0 {
            if let Some(cap) = c.config.connection_cap() {
                caps.push((format!("extensions::{}", c.id), cap));
            }
        }
        let sum: u64 = caps.iter().map(|(_, cap)| **cap as u64).sum();
        let budget = open_files.saturating_sub(RESERVED_FDS);
        if sum <= budget {
            return Vec::new();
        }
        let mut warnings = Vec::new();
        for (name, cap) in caps {
            let fitted = ((*cap as u64 * budget / sum) as usize).max(FLOOR).min(*cap);
            if fitted < *cap {
                warnings.push(format!(
                    "{name}: max_connections {} lowered to {fitted}: the caps add up to {sum} connections \
                     but the open-file limit is {open_files} ({RESERVED_FDS} kept for the collector); \
                     raise LimitNOFILE to keep them",
                    *cap
                ));
                *cap = fitted;
            }
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{ExporterConfig, ExtensionConfig};

    fn config(prometheus: usize, health: usize) -> Config {
        Config::parse(
            &format!(
                r#"receivers:
  vlp: {{ transport: uds, path: /tmp/v.sock }}
processors:
  tracker: {{ threshold: 1s }}
exporters:
  prometheus: {{ endpoint: "127.0.0.1:0", auth: none, max_connections: {prometheus} }}
extensions:
  health_check: {{ endpoint: "127.0.0.1:0", max_connections: {health} }}
service:
  extensions: [health_check]
  pipelines:
    liveness: {{ receivers: [vlp], processors: [tracker], exporters: [prometheus] }}
"#
            ),
            "t.yaml",
            |_| None,
        )
        .expect("config")
    }

    fn caps(c: &Config) -> (usize, usize) {
        let ExporterConfig::Prometheus(p) = &c.exporters.0[0].config else { panic!("prometheus") };
        let ExtensionConfig::HealthCheck(h) = &c.extensions.0[0].config else { panic!("health_check") };
        (p.max_connections, h.max_connections)
    }

    #[test]
    fn caps_that_fit_are_left_alone() {
        let mut c = config(64, 256);
        assert!(c.fit_connection_caps(1024).is_empty());
        assert_eq!(caps(&c), (64, 256));
    }

    #[test]
    fn caps_past_the_limit_are_lowered_in_proportion_with_a_warning() {
        let mut c = config(3000, 1000);
        let warnings = c.fit_connection_caps(1024);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].contains("exporters::prometheus: max_connections 3000 lowered to 576"),
            "{warnings:?}"
        );
        assert_eq!(caps(&c), (576, 192));
        let (p, h) = caps(&c);
        assert!((p + h) as u64 <= 1024 - RESERVED_FDS);
    }

    #[test]
    fn no_cap_goes_below_the_floor() {
        let mut c = config(100, 100);
        c.fit_connection_caps(200);
        assert_eq!(caps(&c), (FLOOR, FLOOR));
    }
}
