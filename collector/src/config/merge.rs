//! Several `--config` files and `--set` overrides, merged into one document
//! as the OpenTelemetry Collector does: later files merge over earlier ones
//! mapping by mapping, any other value (a scalar, a list) is replaced whole,
//! and `--set a::b::c=value` (or `a.b.c=value`) sets one value last.
//!
//! Merging works on the files' YAML *before* `${env:…}` references are
//! resolved; the merged document is then parsed like a single file. So
//! substitution keeps its guarantee (a value never adds structure), and the
//! merged text — which `print-config` shows and error positions point into —
//! holds references, never their (possibly secret) values.
//!
//! Alongside, [`Provenance`] records which file (and where in it) or which
//! `--set` supplied each key path, so errors found in the merged document
//! can name the place the user wrote.

use std::path::PathBuf;

use serde_json::{Map, Value};

use super::provenance::{Provenance, Tree};
use super::{ConfigError, EMBEDDED_DEFAULT, Position};

/// A merged configuration: its text and where each of its values came
/// from (`None` if a source could not be read with positions; errors then
/// point into the merged text).
#[derive(Debug)]
pub struct Merged {
    pub text: String,
    pub provenance: Option<Provenance>,
}

/// Where a configuration comes from: the files (none: the embedded
/// default) and the `--set` overrides, in command-line order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub files: Vec<PathBuf>,
    pub sets: Vec<String>,
}

impl Origin {
    /// One file or the default, with no overrides: parsed as written, so
    /// errors point into that file.
    pub fn is_single(&self) -> bool {
        self.files.len() <= 1 && self.sets.is_empty()
    }

    /// Names the origin in messages.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.files.iter().map(|f| f.display().to_string()).collect();
        if parts.is_empty() {
            parts.push("<embedded default config>".into());
        }
        if !self.sets.is_empty() {
            parts.push(format!("{} --set", self.sets.len()));
        }
        if self.is_single() {
            parts.remove(0)
        } else {
            format!("merged configuration ({})", parts.join(" + "))
        }
    }

    /// The merged document, as YAML text.
    pub fn merged_text(&self) -> Result<String, ConfigError> {
        self.merged().map(|m| m.text)
    }

    /// The merged document and the provenance of its values.
    pub fn merged(&self) -> Result<Merged, ConfigError> {
        let mut merged = Value::Object(Map::new());
        let mut provenance = Some(Provenance::default());
        let mut add_file = |merged: &mut Value, text: &str, source: String| {
            merge(merged, document(text, &source)?);
            match (Tree::read(text), provenance.as_mut()) {
                (Some(tree), Some(p)) => p.add(source, &tree),
                _ => provenance = None,
            }
            Ok::<(), ConfigError>(())
        };
        if self.files.is_empty() {
            add_file(&mut merged, EMBEDDED_DEFAULT, "<embedded default config>".into())?;
        }
        for file in &self.files {
            let source = file.display().to_string();
            let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
                source: source.clone(),
                at: None,
                component: None,
                message: format!("cannot read config file: {e}"),
            })?;
            add_file(&mut merged, &text, source)?;
        }
        for set in &self.sets {
            let source = format!("--set {set}");
            let (keys, value) = apply_set(&mut merged, set).map_err(|message| ConfigError {
                source: source.clone(),
                at: None,
                component: None,
                message,
            })?;
            if let Some(p) = provenance.as_mut() {
                p.add_set(source, &keys, &value);
            }
        }
        let text = serde_saphyr::to_string(&merged).map_err(|e| ConfigError {
            source: self.describe(),
            at: None,
            component: None,
            message: format!("cannot write the merged configuration: {e}"),
        })?;
        let provenance = match (provenance, Tree::read(&text)) {
            (Some(mut p), Some(tree)) => {
                p.set_merged(&tree);
                Some(p)
            }
            _ => None,
        };
        Ok(Merged { text, provenance })
    }
}

/// One file's YAML, which must be a mapping (an empty file is an empty one).
fn document(text: &str, source: &str) -> Result<Value, ConfigError> {
    let value: Value = serde_saphyr::from_str(text).map_err(|e| ConfigError {
        source: source.to_owned(),
        at: e.location().map(|l| Position { line: l.line(), column: l.column() }),
        component: None,
        message: super::first_line(&e.to_string()),
    })?;
    match value {
        Value::Null => Ok(Value::Object(Map::new())),
        Value::Object(_) => Ok(value),
        _ => Err(ConfigError {
            source: source.to_owned(),
            at: None,
            component: None,
            message: "a configuration file must be a mapping (receivers:, processors:, …)".into(),
        }),
    }
}

/// Merges `over` into `base`: mappings key by key, anything else replaced.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (key, value) in over {
                match base.get_mut(&key) {
                    Some(slot) => merge(slot, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

/// `key::path=value` (or `key.path=value`): the value is read as YAML, so
/// `[a, b]` is a list and `2s` a string; `${env:…}` in it is resolved later,
/// like anywhere else. Returns the key path and the value it set.
fn apply_set<'s>(root: &mut Value, set: &'s str) -> Result<(Vec<&'s str>, Value), String> {
    let (path, raw) =
        set.split_once('=').ok_or("expected KEY.PATH=VALUE (e.g. processors::tracker::threshold=3s)")?;
    let keys: Vec<&str> =
        if path.contains("::") { path.split("::").collect() } else { path.split('.').collect() };
    if keys.iter().any(|k| k.trim().is_empty()) {
        return Err(format!("empty key in `{path}`"));
    }
    let value = if raw.trim().is_empty() {
        Value::Null
    } else {
        serde_saphyr::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
    };
    let (last, parents) = keys.split_last().expect("split yields at least one key");
    let mut node = root;
    for (depth, key) in parents.iter().enumerate() {
        let Value::Object(map) = node else {
            return Err(format!("`{}` is not a mapping", keys[..depth].join("::")));
        };
        let slot = map.entry((*key).to_owned()).or_insert(Value::Null);
        if slot.is_null() {
            *slot = Value::Object(Map::new());
        }
        node = slot;
    }
    let Value::Object(map) = node else {
        return Err(format!("`{}` is not a mapping", parents.join("::")));
    };
    map.insert((*last).to_owned(), value.clone());
    Ok((keys, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        serde_saphyr::from_str(text).expect("yaml")
    }

    #[test]
    fn later_documents_merge_over_earlier_ones() {
        let mut base = yaml("a: { x: 1, y: [1, 2] }\nb: keep\n");
        merge(&mut base, yaml("a: { y: [3], z: 2 }\nc: new\n"));
        assert_eq!(base, yaml("a: { x: 1, y: [3], z: 2 }\nb: keep\nc: new\n"));
    }

    #[test]
    fn set_reaches_one_value_with_either_separator() {
        let mut root = yaml("processors: { tracker: { threshold: 2s } }\n");
        apply_set(&mut root, "processors::tracker::threshold=3s").expect("set");
        apply_set(&mut root, "service.pipelines.p.exporters=[debug, file]").expect("set");
        apply_set(&mut root, "exporters::debug=").expect("set");
        assert_eq!(
            root,
            yaml(
                "processors: { tracker: { threshold: 3s } }\n\
                 service: { pipelines: { p: { exporters: [debug, file] } } }\nexporters: { debug: null }\n"
            )
        );
    }

    #[test]
    fn bad_sets_say_why() {
        let mut root = yaml("a: 1\n");
        assert!(apply_set(&mut root, "novalue").unwrap_err().contains("KEY.PATH=VALUE"));
        assert!(apply_set(&mut root, "a..b=1").unwrap_err().contains("empty key"));
        assert!(apply_set(&mut root, "a::b=1").unwrap_err().contains("`a` is not a mapping"));
    }

    #[test]
    fn references_stay_unresolved_in_the_merged_text() {
        let dir = tempfile::tempdir().expect("tempdir");
        let one = dir.path().join("one.yaml");
        std::fs::write(&one, "exporters:\n  otlp: { headers: { authorization: \"${env:TOKEN}\" } }\n")
            .unwrap();
        let origin = Origin { files: vec![one], sets: vec!["exporters::otlp::endpoint=http://x:1".into()] };
        let text = origin.merged_text().expect("merged");
        assert!(text.contains("${env:TOKEN}") && text.contains("http://x:1"), "{text}");
        assert!(
            origin.describe().starts_with("merged configuration (") && origin.describe().contains("1 --set")
        );
    }
}
