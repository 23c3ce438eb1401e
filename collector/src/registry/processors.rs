//! `processors:` — `ratelimit`, `tracker`, `resolver`, `recovery`: the
//! parts of one pipeline's engine, in that order.

use std::path::Path;

use serde::de::MapAccess;
use serde_saphyr::Spanned;
use varta_agents::ResolverConfig;
use varta_embed::compose::PipelinePlan;
use varta_pipeline::config::FieldError;
use varta_processor::{RateLimitConfig, RecoveryConfig, TrackerConfig};

use super::Factory;
use crate::config::components::{ComponentFamily, spanned_body, spanned_required};

#[derive(Debug)]
pub enum ProcessorConfig {
    RateLimit(RateLimitConfig),
    Tracker(TrackerConfig),
    Resolver(ResolverConfig),
    Recovery(Box<RecoveryConfig>),
}

/// In the one order that works in a pipeline (see [`order_ok`]).
pub const FACTORIES: &[Factory] = &[
    Factory { kind: "ratelimit", aliases: &[] },
    Factory { kind: "tracker", aliases: &[] },
    Factory { kind: "resolver", aliases: &[] },
    Factory { kind: "recovery", aliases: &[] },
];

impl ComponentFamily for ProcessorConfig {
    const SECTION: &'static str = "processors";
    fn types() -> Vec<&'static str> {
        super::names(FACTORIES)
    }
    fn check(&self) -> Result<(), FieldError> {
        self.validate()
    }
    fn body<'de, A: MapAccess<'de>>(kind: &str, map: &mut A) -> Result<Spanned<Self>, A::Error> {
        match kind {
            "ratelimit" => spanned_body(map, ProcessorConfig::RateLimit),
            "resolver" => spanned_body(map, ProcessorConfig::Resolver),
            "recovery" => spanned_required(map, |c| ProcessorConfig::Recovery(Box::new(c))),
            _ => spanned_body(map, ProcessorConfig::Tracker),
        }
    }
}

impl ProcessorConfig {
    /// Its own checks.
    pub fn validate(&self) -> Result<(), FieldError> {
        match self {
            ProcessorConfig::RateLimit(cfg) => Ok(cfg.validate()?),
            ProcessorConfig::Tracker(cfg) => Ok(cfg.validate()?),
            ProcessorConfig::Resolver(cfg) => Ok(cfg.validate()?),
            ProcessorConfig::Recovery(cfg) => Ok(cfg.validate()?),
        }
    }

    /// What it reads from disk: a recovery runner's audit directory,
    /// program and audit key.
    pub fn check_files(&self) -> Result<(), String> {
        let ProcessorConfig::Recovery(cfg) = self else { return Ok(()) };
        if let Some(dir) = cfg.audit_file.parent()
            && !dir.as_os_str().is_empty()
            && !dir.is_dir()
        {
            return Err(format!("audit_file directory {} does not exist", dir.display()));
        }
        let program = Path::new(&cfg.exec[0]);
        if !program.is_file() {
            return Err(format!("exec program {} does not exist", program.display()));
        }
        if let Some(path) = &cfg.audit_key_file {
            varta_secrets::load_key_file(path).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// A recovery command whose target an agent would choose (see
    /// [`RecoveryConfig::selection_problem`]).
    pub fn selection_problem(&self) -> Option<String> {
        match self {
            ProcessorConfig::Recovery(cfg) => cfg.selection_problem(),
            _ => None,
        }
    }

    /// The `file_storage` extension it keeps state in, and how often.
    pub fn storage(&self) -> Option<(&str, std::time::Duration)> {
        match self {
            ProcessorConfig::Tracker(cfg) => cfg.storage.as_deref().map(|s| (s, cfg.checkpoint_interval)),
            _ => None,
        }
    }

    /// Puts it into the plan of the pipeline it belongs to, as `id`.
    /// `shared_with_attested`: the pipeline has plain UDP receivers beside
    /// attested ones (see `TrackerConfig::unauthenticated_share`).
    pub fn plan_into(&self, id: &str, plan: &mut PipelinePlan, shared_with_attested: bool) {
        match self {
            ProcessorConfig::RateLimit(cfg) => plan.ratelimit = Some(*cfg),
            ProcessorConfig::Tracker(cfg) => {
                plan.tracker = Some(TrackerConfig { shared_with_attested, ..cfg.clone() })
            }
            ProcessorConfig::Resolver(cfg) => plan.resolver = Some((id.to_owned(), *cfg)),
            ProcessorConfig::Recovery(cfg) => plan.recovery = Some((id.to_owned(), (**cfg).clone())),
        }
    }
}

/// Whether processor types come in the one order that works: `ratelimit`
/// (optional) before `tracker` (required) before `resolver` (optional)
/// before `recovery` (optional), each at most once.
pub fn order_ok(kinds: &[&str]) -> bool {
    let position = |k: &&str| FACTORIES.iter().position(|f| f.kind == *k);
    let positions: Option<Vec<usize>> = kinds.iter().map(position).collect();
    let tracker = FACTORIES.iter().position(|f| f.kind == "tracker");
    positions.is_some_and(|p| p.windows(2).all(|w| w[0] < w[1]) && tracker.is_some_and(|t| p.contains(&t)))
}

/// The rule [`order_ok`] checks, for messages.
pub const ORDER_RULE: &str = "processors must be `[ratelimit, tracker, resolver, recovery]` or a part of it keeping that order, with `tracker` required (rate limiting happens before tracking; resolving, then recovery, after)";
