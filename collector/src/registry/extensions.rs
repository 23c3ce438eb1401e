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
    /// 0700. Default: see [`default_state_directory`].
    pub directory: Option<std::path::PathBuf>,
}

/// Where state goes when `directory` is not given: systemd's
/// `$STATE_DIRECTORY` (a unit with `StateDirectory=`), else
/// `$XDG_STATE_HOME/varta-collector`, else `~/.local/state/varta-collector`
/// — so the default configuration works for an ordinary user as for a
/// service. Only absolute paths count.
pub fn default_state_directory(env: impl Fn(&str) -> Option<String>) -> Option<std::path::PathBuf> {
    let absolute = |v: String| Some(std::path::PathBuf::from(v)).filter(|p| p.is_absolute());
    // `$STATE_DIRECTORY` may list several, separated by colons: the first.
    if let Some(dir) =
        env("STATE_DIRECTORY").and_then(|v| v.split(':').next().map(str::to_owned)).and_then(absolute)
    {
        return Some(dir);
    }
    if let Some(base) = env("XDG_STATE_HOME").and_then(absolute) {
        return Some(base.join("varta-collector"));
    }
    env("HOME").and_then(absolute).map(|home| home.join(".local/state/varta-collector"))
}

impl FileStorageConfig {
    /// Its directory, the default filled in from the environment.
    pub fn directory(&self) -> Option<std::path::PathBuf> {
        self.directory.clone().or_else(|| default_state_directory(|k| std::env::var(k).ok()))
    }
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
            ExtensionConfig::FileStorage(cfg) => match (&cfg.directory, cfg.directory()) {
                (Some(dir), _) if !dir.is_absolute() => Err(FieldError::new(
                    "directory",
                    format!("`directory` must be an absolute path (got {})", dir.display()),
                )),
                (_, Some(_)) => Ok(()),
                (_, None) => Err(FieldError::new(
                    "directory",
                    "`directory` is required: none of STATE_DIRECTORY, XDG_STATE_HOME or HOME names an absolute path",
                )),
            },
        }
    }

    /// What it reads from disk: a state directory that exists must be ours
    /// and 0700 (one that does not is created at start).
    pub fn check_files(&self) -> Result<(), String> {
        let Some(dir) = self.state_directory() else { return Ok(()) };
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) => varta_embed::compose::storage::check_own_dir(&dir, &meta),
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

    /// A state directory, if it is a `file_storage` (the default filled in).
    pub fn state_directory(&self) -> Option<std::path::PathBuf> {
        match self {
            ExtensionConfig::FileStorage(cfg) => cfg.directory(),
            ExtensionConfig::HealthCheck(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_state_directory_follows_systemd_then_xdg_then_home() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(key, _)| *key == k).map(|(_, v)| (*v).to_owned())
        };
        let all = env(&[
            ("STATE_DIRECTORY", "/var/lib/varta-collector:/x"),
            ("XDG_STATE_HOME", "/s"),
            ("HOME", "/h"),
        ]);
        assert_eq!(default_state_directory(all), Some("/var/lib/varta-collector".into()));
        let xdg = env(&[("XDG_STATE_HOME", "/s"), ("HOME", "/h")]);
        assert_eq!(default_state_directory(xdg), Some("/s/varta-collector".into()));
        let home = env(&[("XDG_STATE_HOME", "relative"), ("HOME", "/h")]);
        assert_eq!(default_state_directory(home), Some("/h/.local/state/varta-collector".into()));
        assert_eq!(default_state_directory(env(&[("HOME", "relative")])), None, "only absolute paths");
    }
}
