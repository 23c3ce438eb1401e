//! `extensions:` — `health_check`.

use serde::de::MapAccess;
use serde_saphyr::Spanned;
use varta_pipeline::config::FieldError;

use super::Factory;
use crate::config::components::{ComponentFamily, spanned_body};
use crate::health::HealthCheckConfig;

#[derive(Debug, Clone, PartialEq)]
pub enum ExtensionConfig {
    HealthCheck(HealthCheckConfig),
}

pub const FACTORIES: &[Factory] = &[Factory { kind: "health_check", aliases: &[] }];

impl ComponentFamily for ExtensionConfig {
    const SECTION: &'static str = "extensions";
    fn types() -> Vec<&'static str> {
        super::names(FACTORIES)
    }
    fn check(&self) -> Result<(), FieldError> {
        self.validate()
    }
    fn body<'de, A: MapAccess<'de>>(_kind: &str, map: &mut A) -> Result<Spanned<Self>, A::Error> {
        spanned_body(map, ExtensionConfig::HealthCheck)
    }
}

impl ExtensionConfig {
    /// Its own checks.
    pub fn validate(&self) -> Result<(), FieldError> {
        let ExtensionConfig::HealthCheck(cfg) = self;
        Ok(cfg.validate()?)
    }

    /// Its cap on open connections.
    pub fn connection_cap(&mut self) -> Option<&mut usize> {
        let ExtensionConfig::HealthCheck(cfg) = self;
        Some(&mut cfg.max_connections)
    }

    /// The health check's settings (the one extension kind there is).
    pub fn health_check(&self) -> &HealthCheckConfig {
        let ExtensionConfig::HealthCheck(cfg) = self;
        cfg
    }
}
