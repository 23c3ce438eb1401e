//! Configuration of the `vlp` receiver (one component type, three transports).
//!
//! ```yaml
//! receivers:
//!   vlp/local:
//!     transport: uds                 # uds | udp | secure_udp (required)
//!     path: /run/varta/varta.sock    # uds (required)
//!     socket_mode: "0600"            # uds; octal string or integer; default 0600
//!     allowed_uids: [1000]           # uds; default: only the collector's euid
//!     allow_cross_namespace: false   # uds; default false
//!     recv_buffer_bytes: 1048576     # all; SO_RCVBUF request, default 1 MiB
//!   vlp/net:
//!     transport: secure_udp
//!     endpoint: 127.0.0.1:9445       # udp (required) / secure_udp (default 127.0.0.1:9445)
//!     key_files: [/etc/varta/k1]     # secure_udp; 1–8 shared keys
//!     master_key_file: /etc/varta/m  # secure_udp; at least one of key_files / master_key_file
//!     max_senders: 65536             # secure_udp; replay-table bound
//!     sender_idle_timeout: 10m       # secure_udp; senders idle this long may be evicted when full
//!     storage: file_storage          # secure_udp; keep replay sessions across restarts
//!     checkpoint_interval: 5s        # secure_udp with storage; how often they are written
//! ```
//! Plain `udp` additionally requires `accept_unauthenticated: true`.
//! Fields that do not apply to the chosen transport are refused by
//! [`VlpReceiverConfig::validate`], naming the field.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::error::ConfigError;

/// Default SO_RCVBUF request (1 MiB).
pub const DEFAULT_RECV_BUFFER_BYTES: usize = 1 << 20;
/// Default UDS socket mode (owner only).
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;
/// Default secure-UDP endpoint (loopback only).
pub const DEFAULT_SECURE_ENDPOINT: &str = "127.0.0.1:9445";
/// Default bound of the secure-UDP sender (replay) table.
pub const DEFAULT_MAX_SENDERS: usize = 65_536;
/// Default idle time after which a secure-UDP sender may be evicted when the table is full.
pub const DEFAULT_SENDER_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Most shared keys accepted at once (primary plus rotation keys).
pub const MAX_SHARED_KEYS: usize = 8;

/// Which socket the receiver listens on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportKind {
    /// Unix datagram socket with kernel credentials per datagram.
    #[default]
    Uds,
    /// Plain, unauthenticated UDP.
    Udp,
    /// ChaCha20-Poly1305 sealed frames over UDP, replay-protected.
    SecureUdp,
}

impl TransportKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            TransportKind::Uds => "uds",
            TransportKind::Udp => "udp",
            TransportKind::SecureUdp => "secure_udp",
        }
    }
}

/// Configuration of one `vlp` receiver.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VlpReceiverConfig {
    pub transport: TransportKind,
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub socket_mode: Option<SocketMode>,
    #[serde(default)]
    pub recv_buffer_bytes: Option<usize>,
    #[serde(default)]
    pub allowed_uids: Option<Vec<u32>>,
    #[serde(default)]
    pub allow_cross_namespace: Option<bool>,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub accept_unauthenticated: Option<bool>,
    #[serde(default)]
    pub key_files: Option<Vec<PathBuf>>,
    #[serde(default)]
    pub master_key_file: Option<PathBuf>,
    #[serde(default)]
    pub max_senders: Option<usize>,
    /// Senders one source address may hold at most (default `max_senders`).
    #[serde(default)]
    pub max_senders_per_source: Option<usize>,
    #[serde(default, deserialize_with = "varta_pipeline::config::opt_duration")]
    pub sender_idle_timeout: Option<Duration>,
    /// The `file_storage` extension its replay sessions are kept in.
    #[serde(default)]
    pub storage: Option<String>,
    /// How often admitted sessions are written (with `storage`).
    #[serde(default, deserialize_with = "varta_pipeline::config::opt_duration")]
    pub checkpoint_interval: Option<Duration>,
}

/// A Unix permission mode, written in octal: `"0600"`, `"660"`, or an
/// integer whose decimal digits are read as octal digits (`600` → `0o600`),
/// because YAML loaders disagree on whether `0600` is octal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketMode(pub u32);

impl SocketMode {
    /// Parses octal digits (optional `0o` prefix); only permission bits (≤ 0o777).
    pub fn parse(s: &str) -> Result<SocketMode, String> {
        let t = s.trim();
        let digits = t.strip_prefix("0o").unwrap_or(t);
        if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Err(format!("{s:?} is not an octal mode like \"0600\""));
        }
        match u32::from_str_radix(digits, 8) {
            Ok(m) if m <= 0o777 => Ok(SocketMode(m)),
            _ => Err(format!("{s:?} is not a permission mode between 0000 and 0777")),
        }
    }
}

impl<'de> Deserialize<'de> for SocketMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Str(s) => SocketMode::parse(&s),
            Raw::Int(n) => SocketMode::parse(&n.to_string())
                .map_err(|_| format!("{n} is not an octal mode; write it as a quoted string like \"0600\"")),
        }
        .map_err(serde::de::Error::custom)
    }
}

impl VlpReceiverConfig {
    /// Checks the configuration for its transport: required fields present,
    /// inapplicable fields absent, values in range. Does not touch the
    /// file system or the network (that is [`crate::VlpReceiver::bind`]'s job).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let t = self.transport.as_str();
        let not_for = |field: &'static str, set: bool| {
            if set { Err(ConfigError::NotApplicable { field, transport: t }) } else { Ok(()) }
        };
        let invalid =
            |field: &'static str, reason: &str| ConfigError::Invalid { field, reason: reason.into() };

        if self.recv_buffer_bytes.is_some_and(|n| n == 0 || n > i32::MAX as usize) {
            return Err(invalid("recv_buffer_bytes", "must be between 1 and 2147483647"));
        }
        let uds_only = [
            ("path", self.path.is_some()),
            ("socket_mode", self.socket_mode.is_some()),
            ("allowed_uids", self.allowed_uids.is_some()),
            ("allow_cross_namespace", self.allow_cross_namespace.is_some()),
        ];
        let secure_only = [
            ("key_files", self.key_files.is_some()),
            ("master_key_file", self.master_key_file.is_some()),
            ("max_senders", self.max_senders.is_some()),
            ("max_senders_per_source", self.max_senders_per_source.is_some()),
            ("sender_idle_timeout", self.sender_idle_timeout.is_some()),
            ("storage", self.storage.is_some()),
            ("checkpoint_interval", self.checkpoint_interval.is_some()),
        ];
        match self.transport {
            TransportKind::Uds => {
                for (f, set) in secure_only {
                    not_for(f, set)?;
                }
                not_for("endpoint", self.endpoint.is_some())?;
                not_for("accept_unauthenticated", self.accept_unauthenticated.is_some())?;
                match &self.path {
                    None => return Err(ConfigError::Missing { field: "path", transport: t }),
                    Some(p) if p.file_name().is_none() => {
                        return Err(invalid("path", "must name a socket file"));
                    }
                    Some(_) => {}
                }
                if self.allowed_uids.as_ref().is_some_and(|u| u.is_empty()) {
                    return Err(invalid("allowed_uids", "must list at least one uid (omit it for our own)"));
                }
            }
            TransportKind::Udp => {
                for (f, set) in uds_only.into_iter().chain(secure_only) {
                    not_for(f, set)?;
                }
                if self.endpoint.is_none() {
                    return Err(ConfigError::Missing { field: "endpoint", transport: t });
                }
                if self.accept_unauthenticated != Some(true) {
                    return Err(ConfigError::UnauthenticatedUdp);
                }
            }
            TransportKind::SecureUdp => {
                for (f, set) in uds_only {
                    not_for(f, set)?;
                }
                not_for("accept_unauthenticated", self.accept_unauthenticated.is_some())?;
                let shared = self.key_files.as_ref().map_or(0, Vec::len);
                if self.key_files.is_some() && !(1..=MAX_SHARED_KEYS).contains(&shared) {
                    return Err(invalid("key_files", "must list between 1 and 8 key files"));
                }
                if shared == 0 && self.master_key_file.is_none() {
                    return Err(ConfigError::Missing { field: "key_files or master_key_file", transport: t });
                }
                if self.max_senders == Some(0) {
                    return Err(invalid("max_senders", "must be at least 1"));
                }
                if self.max_senders_per_source == Some(0) {
                    return Err(invalid("max_senders_per_source", "must be at least 1"));
                }
                if self.sender_idle_timeout.is_some_and(|d| d.is_zero()) {
                    return Err(invalid("sender_idle_timeout", "must be greater than zero"));
                }
                if self.checkpoint_interval.is_some() && self.storage.is_none() {
                    return Err(invalid("checkpoint_interval", "applies only with `storage`"));
                }
                if self.checkpoint_interval.is_some_and(|d| d < Duration::from_millis(100)) {
                    return Err(invalid("checkpoint_interval", "must be at least 100ms"));
                }
            }
        }
        if self.endpoint.as_ref().is_some_and(|e| !e.contains(':')) {
            return Err(invalid("endpoint", "must be \"host:port\""));
        }
        Ok(())
    }

    pub(crate) fn recv_buffer(&self) -> usize {
        self.recv_buffer_bytes.unwrap_or(DEFAULT_RECV_BUFFER_BYTES)
    }

    pub(crate) fn mode(&self) -> u32 {
        self.socket_mode.map_or(DEFAULT_SOCKET_MODE, |m| m.0)
    }

    pub(crate) fn secure_endpoint(&self) -> &str {
        self.endpoint.as_deref().unwrap_or(DEFAULT_SECURE_ENDPOINT)
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        self.sender_idle_timeout.unwrap_or(DEFAULT_SENDER_IDLE_TIMEOUT)
    }

    /// How often its replay sessions are written (with `storage`).
    pub fn sessions_interval(&self) -> Duration {
        self.checkpoint_interval.unwrap_or(crate::sessions::DEFAULT_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> Result<VlpReceiverConfig, String> {
        serde_saphyr::from_str::<VlpReceiverConfig>(s).map_err(|e| e.to_string())
    }

    fn invalid(s: &str) -> String {
        let cfg = yaml(s).expect("parses");
        cfg.validate().expect_err("invalid").to_string()
    }

    #[test]
    fn full_configs_parse_and_validate() {
        let c = yaml("transport: uds\npath: /tmp/x.sock\nsocket_mode: \"0660\"\nallowed_uids: [0, 1000]\n")
            .expect("uds");
        assert_eq!(c.socket_mode, Some(SocketMode(0o660)));
        c.validate().expect("valid uds");
        let c = yaml(
            "transport: secure_udp\nkey_files: [/a, /b]\nmaster_key_file: /m\nmax_senders: 10\n\
             sender_idle_timeout: 150ms\n",
        )
        .expect("secure");
        assert_eq!(c.idle_timeout(), Duration::from_millis(150));
        assert_eq!(c.secure_endpoint(), DEFAULT_SECURE_ENDPOINT);
        c.validate().expect("valid secure");
        let c = yaml("transport: udp\nendpoint: 127.0.0.1:0\naccept_unauthenticated: true\n").expect("udp");
        c.validate().expect("valid udp");
    }

    #[test]
    fn socket_mode_integer_is_octal_digits() {
        let c = yaml("transport: uds\npath: /x\nsocket_mode: 600\n").expect("int mode");
        assert_eq!(c.mode(), 0o600);
        assert!(yaml("transport: uds\npath: /x\nsocket_mode: 389\n").is_err());
        assert!(yaml("transport: uds\npath: /x\nsocket_mode: \"1777\"\n").is_err());
        assert_eq!(VlpReceiverConfig::default().mode(), 0o600);
    }

    #[test]
    fn unknown_and_missing_fields() {
        assert!(yaml("transport: uds\npath: /x\nbogus: 1\n").expect_err("unknown").contains("bogus"));
        assert!(yaml("path: /x\n").expect_err("transport required").contains("transport"));
        assert!(yaml("transport: tcp\n").is_err());
        assert!(invalid("transport: uds\n").contains("`path`"));
        assert!(invalid("transport: secure_udp\n").contains("key_files"));
        assert!(invalid("transport: udp\naccept_unauthenticated: true\n").contains("`endpoint`"));
    }

    #[test]
    fn fields_of_other_transports_are_named() {
        let e = invalid("transport: uds\npath: /x\nendpoint: 1.2.3.4:5\n");
        assert!(e.contains("`endpoint`") && e.contains("uds"), "{e}");
        let e = invalid("transport: udp\nendpoint: 1.2.3.4:5\naccept_unauthenticated: true\npath: /x\n");
        assert!(e.contains("`path`"), "{e}");
        let e = invalid("transport: secure_udp\nkey_files: [/k]\naccept_unauthenticated: true\n");
        assert!(e.contains("`accept_unauthenticated`"), "{e}");
        let e = invalid("transport: uds\npath: /x\nmax_senders: 3\n");
        assert!(e.contains("`max_senders`"), "{e}");
    }

    #[test]
    fn udp_requires_explicit_opt_in() {
        for extra in ["", "accept_unauthenticated: false\n"] {
            let e = invalid(&format!("transport: udp\nendpoint: 127.0.0.1:1\n{extra}"));
            assert!(e.contains("accept_unauthenticated: true") && e.contains("any pid"), "{e}");
        }
    }

    #[test]
    fn ranges() {
        let keys: Vec<String> = (0..9).map(|i| format!("/k{i}")).collect();
        let e = invalid(&format!("transport: secure_udp\nkey_files: [{}]\n", keys.join(", ")));
        assert!(e.contains("`key_files`"), "{e}");
        assert!(invalid("transport: secure_udp\nkey_files: []\n").contains("`key_files`"));
        assert!(invalid("transport: secure_udp\nkey_files: [/k]\nmax_senders: 0\n").contains("max_senders"));
        assert!(invalid("transport: uds\npath: /x\nrecv_buffer_bytes: 0\n").contains("recv_buffer_bytes"));
        assert!(yaml("transport: secure_udp\nkey_files: [/k]\nsender_idle_timeout: 5\n").is_err());
    }
}
