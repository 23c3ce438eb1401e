//! `${env:VAR}` references, substituted *inside YAML scalars after
//! parsing* (serde-saphyr's property interpolation), never into the raw
//! text: a value holding a newline or `key: value` stays one string and
//! cannot change the configuration's structure.
//!
//! * `${env:VAR}` — the variable's value; unset is an error (never an empty
//!   string by accident).
//! * `${env:VAR:-default}` — the value, or `default` when unset or empty.
//! * `$$` — a literal `$` (as in the OpenTelemetry Collector), so `$${` is
//!   a literal `${`.
//!
//! [`prepare`] checks every reference (errors carry its line and column)
//! and yields the text with placeholders plus their values. It also yields
//! the plainly substituted text, used only to word error messages: the
//! parser hides interpolated values in its own errors (they may be
//! secrets), which would also hide the names of misspelt keys.

use std::fmt;

/// A reference that could not be substituted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

fn position(text: &str, byte: usize) -> (usize, usize) {
    let before = &text[..byte];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// A config text ready for parsing (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// References replaced by placeholders the parser expands in scalars.
    pub text: String,
    /// The placeholders' values.
    pub properties: std::collections::HashMap<String, String>,
    /// References replaced by their values, as plain text (error messages only).
    pub plain: String,
}

impl Prepared {
    /// Parser options that expand the placeholders inside scalars (the
    /// Docker Compose syntax: `${NAME}`, and `$$` for a literal `$`).
    pub fn options(&self) -> serde_saphyr::Options {
        let mut options = serde_saphyr::Options::default();
        options.property_syntax = serde_saphyr::PropertySyntax::DockerCompose;
        options.with_properties(self.properties.clone())
    }
}

/// Checks and resolves every reference in `text`.
pub fn prepare(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<Prepared, EnvError> {
    let mut out = String::with_capacity(text.len());
    let mut plain = String::with_capacity(text.len());
    let mut properties = std::collections::HashMap::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        plain.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push_str("$$"); // the parser makes it one literal `$`
            plain.push('$');
            rest = after;
            continue;
        }
        let Some(body_start) = tail.strip_prefix("${") else {
            out.push_str("$$"); // a lone `$` stays literal
            plain.push('$');
            rest = &tail[1..];
            continue;
        };
        let offset = text.len() - tail.len();
        let err = |message: String| {
            let (line, column) = position(text, offset);
            EnvError { line, column, message }
        };
        let close = body_start.find('}').ok_or_else(|| err("unterminated `${` reference".into()))?;
        let body = &body_start[..close];
        let Some(spec) = body.strip_prefix("env:") else {
            return Err(err(format!(
                "unsupported reference `${{{body}}}` (only `${{env:VAR}}` and `${{env:VAR:-default}}`; write `$${{` for a literal)"
            )));
        };
        let (name, default) = match spec.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (spec, None),
        };
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(err(format!("invalid environment variable name {name:?}")));
        }
        let value = match (lookup(name).filter(|v| !v.is_empty() || default.is_none()), default) {
            (Some(v), _) => v,
            (None, Some(d)) => d.to_owned(),
            (None, None) => {
                return Err(err(format!(
                    "environment variable {name} is not set (use `${{env:{name}:-default}}` for a fallback)"
                )));
            }
        };
        let placeholder = format!("VARTA_PROPERTY_{}", properties.len());
        out.push_str(&format!("${{{placeholder}}}"));
        plain.push_str(&value);
        properties.insert(placeholder, value);
        rest = &body_start[close + 1..];
    }
    out.push_str(rest);
    plain.push_str(rest);
    Ok(Prepared { text: out, properties, plain })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME" => Some("/home/a".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    /// What a config value becomes after parsing.
    fn value(yaml_value: &str) -> Result<String, String> {
        #[derive(serde::Deserialize)]
        struct V {
            v: String,
        }
        let p = prepare(&format!("v: {yaml_value}\n"), env).map_err(|e| e.to_string())?;
        serde_saphyr::from_str_with_options::<V>(&p.text, p.options()).map(|v| v.v).map_err(|e| e.to_string())
    }

    #[test]
    fn substitutes_defaults_and_escapes() {
        assert_eq!(value("${env:HOME}/x").as_deref(), Ok("/home/a/x"));
        assert_eq!(value("${env:NOPE:-/run}/s").as_deref(), Ok("/run/s"));
        assert_eq!(value("${env:EMPTY:-d}").as_deref(), Ok("d"));
        assert_eq!(value("\"${env:EMPTY}\"").as_deref(), Ok(""));
        assert_eq!(value("cost $5 $$ and $${env:HOME}").as_deref(), Ok("cost $5 $ and ${env:HOME}"));
        let p = prepare("a: $${env:X} $5", env).expect("prepared");
        assert_eq!(p.plain, "a: ${env:X} $5");
    }

    #[test]
    fn a_value_cannot_inject_configuration() {
        let evil = |name: &str| (name == "EVIL").then(|| "x\ninjected: true\nother: 1".to_owned());
        let p = prepare("v: ${env:EVIL}\n", evil).expect("prepared");
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        struct V {
            v: String,
        }
        let v: V = serde_saphyr::from_str_with_options(&p.text, p.options()).expect("still one scalar");
        assert_eq!(v.v, "x\ninjected: true\nother: 1");
    }

    #[test]
    fn errors_point_at_the_reference() {
        let e = prepare("a: 1\nb: x ${env:NOPE}\n", env).unwrap_err();
        assert_eq!((e.line, e.column), (2, 6));
        assert!(e.message.contains("NOPE is not set"), "{e}");
        assert!(prepare("${HOME}", env).unwrap_err().message.contains("unsupported"));
        assert!(prepare("${env:HOME", env).unwrap_err().message.contains("unterminated"));
        assert!(prepare("${env:1X}", env).unwrap_err().message.contains("invalid"));
    }
}
