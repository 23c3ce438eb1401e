//! `extensions:` — `health_check`, and `file_storage` (where components
//! keep state across restarts, as the Collector's extension of that name).

use serde::de::MapAccess;
use serde_saphyr::Spanned;
use varta_pipeline::config::FieldError;

use super::Factory;
use crate::config::components::{ComponentFamily, spanned_body};
use crate::health::HealthCheckConfig;

#[derive(Debug, Clone, PartialEq)]
pub enum ExtensionConfig {
    HealthCheck(HealthCheckConfig),
    FileStorage(FileStorageConfig),
}

/// `extensions: file_storage/<name>:` — a directory of our own where
/// components that keep state (the tracker) write it.
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStorageConfig {
    /// Created (mode 0700) when missing; an existing one must be ours and
    /// 0700.
    pub directory: Option<std::path::PathBuf>,
}

pub const FACTORIES: &[Factory] =
    &[Factory { kind: "health_check", aliases: &[] }, Factory { kind: "file_storage", aliases: &[] }];

impl ComponentFamily for ExtensionConfig {
    const SECTION: &'static str = "extensions";
    fn types() -> Vec<&'static str> {
        super::names(FACTORIES)
    }
    fn check(&self) -> Result<(), FieldError> {
        self.validate()
    }
    fn body<'de, A: MapAccess<'de>>(kind: &str, map: &mut A) -> Result<Spanned<Self>, A::Error> {
        match kind {
            "file_storage" => spanned_body(map, ExtensionConfig::FileStorage),
            _ => spanned_body(map, ExtensionConfig::HealthCheck),
        }
    }
}

impl ExtensionConfig {
    /// Its own checks.
    pub fn validate(&self) -> Result<(), FieldError> {
        match self {
            ExtensionConfig::HealthCheck(cfg) => Ok(cfg.validate()?),
            ExtensionConfig::FileStorage(cfg) => match &cfg.directory {
                Some(dir) if dir.is_absolute() => Ok(()),
                Some(dir) => Err(FieldError::new(
                    "directory",
                    format!("`directory` must be an absolute path (got {})", dir.display()),
                )),
                None => Err(FieldError::new("directory", "`directory` is required")),
            },
        }
    }

    /// What it reads from disk: a state directory that exists must be ours
    /// and 0700 (one that does not is created at start).
    pub fn check_files(&self) -> Result<(), String> {
        let ExtensionConfig::FileStorage(FileStorageConfig { directory: Some(dir) }) = self else { return Ok(()) };
        match std::fs::symlink_metadata(dir) {
            Ok(meta) => varta_embed::compose::storage::check_own_dir(dir, &meta),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("cannot read the state directory {}: {e}", dir.display())),
        }
    }

    /// Its cap on open connections, if it accepts connections.
    pub fn connection_cap(&mut self) -> Option<&mut usize> {
        match self {
            ExtensionConfig::HealthCheck(cfg) => Some(&mut cfg.max_connections),
            ExtensionConfig::FileStorage(_) => None,
        }
    }

    /// A health check's settings, if it is one.
    pub fn health_check(&self) -> Option<&HealthCheckConfig> {
        match self {
            ExtensionConfig::HealthCheck(cfg) => Some(cfg),
            ExtensionConfig::FileStorage(_) => None,
        }
    }

    /// A state directory, if it is a `file_storage`.
    pub fn state_directory(&self) -> Option<&std::path::Path> {
        match self {
            ExtensionConfig::FileStorage(cfg) => cfg.directory.as_deref(),
            ExtensionConfig::HealthCheck(_) => None,
        }
    }
}
