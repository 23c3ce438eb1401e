//! Errors of the VLP receiver. Every startup problem (configuration, key
//! files, sockets) surfaces from [`crate::VlpReceiver::bind`]; `run` only
//! fails when the processor side of the queue disappears.

use std::path::PathBuf;

/// A configuration the receiver refuses. Messages name the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("`{field}` is required for transport {transport}")]
    Missing { field: &'static str, transport: &'static str },
    #[error("`{field}` does not apply to transport {transport}; remove it")]
    NotApplicable { field: &'static str, transport: &'static str },
    #[error("`{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(
        "transport udp needs `accept_unauthenticated: true`: plain UDP lets any host that can reach \
         the endpoint claim any pid (and so fake or hide any agent's liveness). Prefer transport \
         secure_udp (key_files / master_key_file) or uds; if you accept the risk, set \
         `accept_unauthenticated: true` on this receiver"
    )]
    UnauthenticatedUdp,
}

impl From<ConfigError> for varta_pipeline::config::FieldError {
    fn from(e: ConfigError) -> Self {
        // A missing key has no position of its own: point at the receiver.
        let field: &'static str = match &e {
            ConfigError::Invalid { field, .. } | ConfigError::NotApplicable { field, .. } => field,
            ConfigError::Missing { .. } | ConfigError::UnauthenticatedUdp => "",
        };
        varta_pipeline::config::FieldError::new(field, e.to_string())
    }
}

/// A receiver that could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    #[error("receiver {id}: {source}")]
    Config { id: String, source: ConfigError },
    #[error("receiver {id}: {source}")]
    Key { id: String, source: varta_secrets::SecretFileError },
    #[error("receiver {id}: directory {dir} of socket path does not exist (create it first)")]
    MissingDirectory { id: String, dir: PathBuf },
    #[error("receiver {id}: {path} exists and is not a socket; refusing to remove it")]
    NotASocket { id: String, path: PathBuf },
    #[error("receiver {id}: another process is receiving on {path} (is a collector already running?)")]
    SocketInUse { id: String, path: PathBuf },
    #[error("receiver {id}: {what}: {source}")]
    Io { id: String, what: String, source: std::io::Error },
    #[error("receiver {id}: the processor queue was closed while the receiver was running")]
    QueueClosed { id: String },
}
