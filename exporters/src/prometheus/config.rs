//! `exporters: prometheus:` configuration, its defaults and validation.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::httpd::Limits;
use serde::Deserialize;

/// How scrapers authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    /// `Authorization: Bearer <64 hex chars>` from `bearer_token_file` (default).
    #[default]
    Bearer,
    /// No authentication; refused unless the endpoint is a loopback address.
    None,
}

/// Per-client-IP token bucket for requests.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimit {
    /// Requests per second per client IP (refill rate).
    pub rate: f64,
    /// Bucket size (requests allowed in a burst).
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit { rate: 5.0, burst: 10 }
    }
}

fn default_endpoint() -> String {
    "127.0.0.1:9464".into()
}
fn default_path() -> String {
    "/metrics".into()
}
fn default_max_agent_series() -> usize {
    10_000
}
fn default_true() -> bool {
    true
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_connections_per_source() -> usize {
    8
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Configuration of the `prometheus` exporter (see the table in `exporters/README.md`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusConfig {
    /// `host:port` to listen on (default `127.0.0.1:9464`).
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// Path served (default `/metrics`); everything else is 404.
    #[serde(default = "default_path")]
    pub path: String,
    /// `bearer` (default) or `none`.
    #[serde(default)]
    pub auth: Auth,
    /// File holding the bearer token: 64 hex characters, regular file,
    /// owner-only, ours (the key-file rules). Required with `auth: bearer`.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    #[serde(default)]
    pub rate_limit: RateLimit,
    /// Agents exposed in per-agent families at most (stalled agents first);
    /// the rest are counted in `varta_prometheus_agents_omitted`.
    #[serde(default = "default_max_agent_series")]
    pub max_agent_series: usize,
    /// `false`: only fleet totals, no per-agent families.
    #[serde(default = "default_true")]
    pub per_agent_series: bool,
    /// Open connections at most; more are closed at once and counted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open connections at most from one source address.
    #[serde(default = "default_max_connections_per_source")]
    pub max_connections_per_source: usize,
    /// Open connections at most from one range of addresses (loopback as
    /// one, IPv4 /24, IPv6 /64); default a quarter of `max_connections`.
    #[serde(default)]
    pub max_connections_per_range: Option<usize>,
    /// Time a client has to send its request headers (slowloris bound).
    /// `read_header_timeout` (the Collector's `confighttp` name) is accepted.
    #[serde(
        default = "default_header_timeout",
        alias = "read_header_timeout",
        deserialize_with = "varta_pipeline::config::duration"
    )]
    pub header_timeout: Duration,
    /// An answer whose writing makes no progress this long (a client that
    /// does not read) ends its connection (default `10s`).
    #[serde(default, deserialize_with = "varta_pipeline::config::opt_duration")]
    pub write_timeout: Option<Duration>,
    /// A kept-alive connection with no request in progress that sends
    /// nothing this long is closed (default `60s`).
    #[serde(default, deserialize_with = "varta_pipeline::config::opt_duration")]
    pub idle_timeout: Option<Duration>,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig {
            endpoint: default_endpoint(),
            path: default_path(),
            auth: Auth::Bearer,
            bearer_token_file: None,
            rate_limit: RateLimit::default(),
            max_agent_series: default_max_agent_series(),
            per_agent_series: true,
            max_connections: default_max_connections(),
            max_connections_per_source: default_max_connections_per_source(),
            max_connections_per_range: None,
            header_timeout: default_header_timeout(),
            write_timeout: None,
            idle_timeout: None,
        }
    }
}

impl PrometheusConfig {
    /// The listen address (validated by [`PrometheusConfig::validate`]).
    pub fn socket_addr(&self) -> Result<SocketAddr, String> {
        self.endpoint.parse().map_err(|_| {
            format!("`endpoint` {:?} is not an IP:port address (e.g. 127.0.0.1:9464)", self.endpoint)
        })
    }

    /// Its connection bounds.
    pub fn limits(&self) -> Limits {
        Limits::from_settings(
            self.max_connections,
            self.max_connections_per_source,
            self.max_connections_per_range,
            self.header_timeout,
            self.write_timeout,
            self.idle_timeout,
        )
    }

    /// Checks settings without touching files or sockets.
    pub fn validate(&self) -> Result<(), String> {
        let addr = self.socket_addr()?;
        if !self.path.starts_with('/') || self.path.contains(char::is_whitespace) {
            return Err(format!("`path` {:?} must start with `/` and contain no spaces", self.path));
        }
        match (self.auth, &self.bearer_token_file) {
            (Auth::Bearer, None) => {
                return Err(
                    "`bearer_token_file` is required (or set `auth: none`, loopback endpoints only); \
                            make one with `varta keygen --out FILE`"
                        .into(),
                );
            }
            (Auth::None, Some(_)) => {
                return Err(
                    "`bearer_token_file` is set but `auth: none` disables it; remove one of them".into()
                );
            }
            (Auth::None, None) if !addr.ip().is_loopback() => {
                return Err(format!(
                    "`auth: none` is refused on the non-loopback endpoint {addr}: anyone who can reach it \
                     could read every agent; use a bearer token"
                ));
            }
            _ => {}
        }
        if !(self.rate_limit.rate.is_finite() && self.rate_limit.rate > 0.0) {
            return Err("`rate_limit.rate` must be a positive number of requests per second".into());
        }
        if self.rate_limit.burst == 0 {
            return Err("`rate_limit.burst` must be at least 1".into());
        }
        self.limits().validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<(), String> {
        let cfg: PrometheusConfig = serde_json::from_str(json).map_err(|e| e.to_string())?;
        cfg.validate()
    }

    #[test]
    fn token_required_unless_auth_none_on_loopback() {
        assert!(parse(r#"{}"#).is_err_and(|e| e.contains("bearer_token_file")));
        assert!(parse(r#"{"bearer_token_file":"/t"}"#).is_ok());
        assert!(parse(r#"{"auth":"none"}"#).is_ok());
        assert!(parse(r#"{"auth":"none","endpoint":"[::1]:9464"}"#).is_ok());
        let open = parse(r#"{"auth":"none","endpoint":"0.0.0.0:9464"}"#);
        assert!(open.is_err_and(|e| e.contains("non-loopback")));
        assert!(parse(r#"{"auth":"none","bearer_token_file":"/t"}"#).is_err());
    }

    #[test]
    fn bad_values_are_named() {
        assert!(
            parse(r#"{"auth":"none","endpoint":"localhost:9464"}"#).is_err_and(|e| e.contains("endpoint"))
        );
        assert!(parse(r#"{"auth":"none","path":"metrics"}"#).is_err_and(|e| e.contains("path")));
        assert!(parse(r#"{"auth":"none","rate_limit":{"rate":0}}"#).is_err_and(|e| e.contains("rate")));
        assert!(parse(r#"{"auth":"none","rate_limit":{"burst":0}}"#).is_err_and(|e| e.contains("burst")));
        assert!(parse(r#"{"auth":"none","max_connections":0}"#).is_err());
        assert!(parse(r#"{"auth":"none","bogus":1}"#).is_err_and(|e| e.contains("bogus")));
    }
}
