//! Serde adapters and the one error type shared by every component
//! configuration.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// `#[serde(deserialize_with = "varta_pipeline::config::duration")]`: a
/// duration written like `"150ms"`, `"2s"`, `"10m"` (grammar:
/// [`varta_proto::duration::parse_duration`]).
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    varta_proto::duration::parse_duration(&text).map_err(serde::de::Error::custom)
}

/// Like [`duration`], for an optional field (use with `#[serde(default)]`).
pub fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct T {
        #[serde(deserialize_with = "duration")]
        a: Duration,
        #[serde(default, deserialize_with = "opt_duration")]
        b: Option<Duration>,
    }

    #[test]
    fn parses_and_reports_bad_input() {
        let t: T = serde_json::from_str(r#"{"a":"150ms","b":"2s"}"#).expect("valid");
        assert_eq!((t.a, t.b), (Duration::from_millis(150), Some(Duration::from_secs(2))));
        let t: T = serde_json::from_str(r#"{"a":"1m"}"#).expect("valid");
        assert_eq!(t.b, None);
        let err = serde_json::from_str::<T>(r#"{"a":"soon"}"#).expect_err("invalid");
        assert!(err.to_string().contains("invalid duration"), "{err}");
    }
}

/// A component setting that cannot work, from any component's `validate`:
/// `field` is the offending key's path below the component, dot-separated
/// (`retry_on_failure.max_interval`), or empty when no single key is at
/// fault. The collector turns it into a position in the configuration
/// file (and, for merged configurations, the source that wrote the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError { field: field.into(), message: message.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FieldError {}

/// A message that names no single key.
impl From<String> for FieldError {
    fn from(message: String) -> FieldError {
        FieldError { field: String::new(), message }
    }
}
