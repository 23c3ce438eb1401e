//! Semantic checks of a parsed configuration: each component's own
//! checks (through the registry), the pipelines' wiring, the files it
//! names, recovery targets an agent would choose, unused components.

use std::collections::BTreeMap;

use super::components::{ComponentFamily, ComponentId, Components, Position};
use super::{Config, ConfigError, Pipeline};

impl Config {
    /// Each component's own checks. Where one names the offending field,
    /// the error points at that key (in a merged configuration, at the
    /// source that wrote it); otherwise at the component.
    fn check_components<T: ComponentFamily>(&self, section: &Components<T>) -> Result<(), ConfigError> {
        for c in &section.0 {
            c.config.check().map_err(|e| {
                let id = c.id.to_string();
                let path: Vec<&str> = [T::SECTION, id.as_str()]
                    .into_iter()
                    .chain(e.field.split('.').filter(|f| !f.is_empty()))
                    .collect();
                let path = if e.field.is_empty() { &[][..] } else { &path[..] };
                self.error_on(path, Some(c.at), Some(format!("{}::{id}", T::SECTION)), e.message)
            })?;
        }
        Ok(())
    }

    /// Semantic checks: component settings and pipeline wiring.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        for (i, id) in self.service.extensions.iter().enumerate() {
            if self.extensions.get(id).is_none() {
                return Err(self.error_on(
                    &["service", "extensions", &i.to_string()],
                    None,
                    Some("service::extensions".into()),
                    format!("extension `{id}` is not defined in the top-level `extensions:` section"),
                ));
            }
        }
        if self.service.progress_timeout < std::time::Duration::from_millis(100) {
            return Err(self.error_on(
                &["service", "progress_timeout"],
                None,
                Some("service".into()),
                "`progress_timeout` must be at least 100ms".into(),
            ));
        }
        let processors = self
            .processors
            .0
            .iter()
            .map(|c| ("processors", c.id.to_string(), c.at, c.config.storage().map(|s| s.0)));
        let receivers =
            self.receivers.0.iter().map(|c| ("receivers", c.id.to_string(), c.at, c.config.storage()));
        for (section, id, at, storage) in processors.chain(receivers) {
            let Some(storage) = storage else { continue };
            let known = self.extensions.get(storage).is_some_and(|e| e.config.state_directory().is_some());
            if !known {
                return Err(self.error_on(
                    &[section, &id, "storage"],
                    Some(at),
                    Some(format!("{section}::{id}")),
                    format!("`storage: {storage}` names no `file_storage` extension in the top-level `extensions:` section"),
                ));
            }
        }
        self.check_components(&self.extensions)?;
        self.check_components(&self.receivers)?;
        self.check_components(&self.processors)?;
        self.check_components(&self.exporters)?;
        if self.service.pipelines.is_empty() {
            return Err(self.error(
                None,
                None,
                "service.pipelines: at least one pipeline is required".into(),
            ));
        }
        let mut owner: BTreeMap<String, &str> = BTreeMap::new();
        for (name, p) in &self.service.pipelines {
            let at = Some(Position { line: p.referenced.line(), column: p.referenced.column() });
            // `key` names the pipeline's setting at fault (for a merged
            // configuration, the source that wrote it is named).
            let perr = |key: &[&str], m: String| {
                let path = [&["service", "pipelines", name.as_str()][..], key].concat();
                self.error_on(&path, at, Some(format!("service::pipelines::{name}")), m)
            };
            let p = &p.value;
            if p.receivers.is_empty() || p.exporters.is_empty() {
                let empty = if p.receivers.is_empty() { "receivers" } else { "exporters" };
                return Err(perr(&[empty], "a pipeline needs at least one receiver and one exporter".into()));
            }
            if p.queue_batches == 0 {
                return Err(perr(&["queue_batches"], "queue_batches must be at least 1".into()));
            }
            for (section, ids, known) in [
                (
                    "receivers",
                    &p.receivers,
                    self.receivers.0.iter().map(|c| c.id.to_string()).collect::<Vec<_>>(),
                ),
                ("processors", &p.processors, self.processors.0.iter().map(|c| c.id.to_string()).collect()),
                ("exporters", &p.exporters, self.exporters.0.iter().map(|c| c.id.to_string()).collect()),
            ] {
                for (i, id) in ids.iter().enumerate() {
                    let index = i.to_string();
                    let item = [section, index.as_str()];
                    if !known.contains(id) {
                        return Err(perr(
                            &item,
                            format!("{section} `{id}` is not defined in the top-level `{section}:` section"),
                        ));
                    }
                    // Receivers fan out to every pipeline they feed; an
                    // exporter serves every pipeline that lists it. A
                    // processor holds one pipeline's state.
                    let shareable = section != "processors";
                    let key = format!("{section}::{id}");
                    if !shareable && let Some(other) = owner.insert(key, name) {
                        return Err(perr(
                            &item,
                            format!(
                                "{section} `{id}` is already used by pipeline `{other}`; a processor holds one pipeline's state (define another id, e.g. `{}/2`)",
                                id.split('/').next().unwrap_or(id)
                            ),
                        ));
                    }
                }
            }
            let kinds: Vec<&str> = p.processors.iter().map(|id| id.split('/').next().unwrap_or(id)).collect();
            if !crate::registry::processors::order_ok(&kinds) {
                return Err(perr(
                    &["processors"],
                    format!("{}, found {:?}", crate::registry::processors::ORDER_RULE, p.processors),
                ));
            }
        }
        Ok(())
    }

    /// Checks the files a config refers to (key files: present, regular,
    /// owner-only, well-formed; socket directories: present) without binding
    /// anything. Run by `validate` and before startup.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        let at = |section: &str, c_at: Position, id: &ComponentId, m: String| {
            self.error(Some(c_at), Some(format!("{section}::{id}")), m)
        };
        for c in &self.receivers.0 {
            c.config.check_files().map_err(|m| at("receivers", c.at, &c.id, m))?;
        }
        for c in &self.processors.0 {
            c.config.check_files().map_err(|m| at("processors", c.at, &c.id, m))?;
        }
        for c in &self.exporters.0 {
            c.config.check_files().map_err(|m| at("exporters", c.at, &c.id, m))?;
        }
        for c in &self.extensions.0 {
            c.config.check_files().map_err(|m| at("extensions", c.at, &c.id, m))?;
        }
        Ok(())
    }

    /// `validate` only: a recovery command whose target the agent would
    /// choose (see [`RecoveryConfig::selection_problem`]). A running
    /// collector does not refuse such a config: it keeps monitoring and
    /// refuses those runs.
    pub fn check_recovery_targets(&self) -> Result<(), ConfigError> {
        for c in &self.processors.0 {
            if let Some(problem) = c.config.selection_problem() {
                return Err(self.error(Some(c.at), Some(format!("processors::{}", c.id)), problem));
            }
        }
        Ok(())
    }

    /// Components defined but not used by any pipeline (they are not started).
    pub fn unused_components(&self) -> Vec<String> {
        let pipelines: Vec<&Pipeline> = self.service.pipelines.values().map(|p| &p.value).collect();
        let mut out = Vec::new();
        let mut check = |section: &str, ids: Vec<String>, used: &dyn Fn(&Pipeline) -> &Vec<String>| {
            for id in ids {
                if !pipelines.iter().any(|p| used(p).contains(&id)) {
                    out.push(format!("{section}::{id}"));
                }
            }
        };
        check("receivers", self.receivers.0.iter().map(|c| c.id.to_string()).collect(), &|p| &p.receivers);
        check("processors", self.processors.0.iter().map(|c| c.id.to_string()).collect(), &|p| &p.processors);
        check("exporters", self.exporters.0.iter().map(|c| c.id.to_string()).collect(), &|p| &p.exporters);
        out
    }
}
