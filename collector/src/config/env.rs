//! `${env:VAR}` substitution, applied to the raw config text before YAML
//! parsing (as the OpenTelemetry Collector does).
//!
//! * `${env:VAR}` — the variable's value; unset is an error (never an empty
//!   string by accident).
//! * `${env:VAR:-default}` — the value, or `default` when unset or empty.
//! * `$${` — a literal `${`.
//!
//! Errors carry the line and column of the reference.

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

/// Substitutes every reference in `text`, looking variables up with `lookup`.
pub fn substitute(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, EnvError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
            continue;
        }
        let Some(body_start) = tail.strip_prefix("${") else {
            out.push('$');
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
        match (lookup(name).filter(|v| !v.is_empty() || default.is_none()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(err(format!(
                    "environment variable {name} is not set (use `${{env:{name}:-default}}` for a fallback)"
                )));
            }
        }
        rest = &body_start[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
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

    #[test]
    fn substitutes_defaults_and_escapes() {
        assert_eq!(substitute("p: ${env:HOME}/x", env).as_deref(), Ok("p: /home/a/x"));
        assert_eq!(substitute("${env:NOPE:-/run}/s", env).as_deref(), Ok("/run/s"));
        assert_eq!(substitute("${env:EMPTY:-d}", env).as_deref(), Ok("d"));
        assert_eq!(substitute("${env:EMPTY}", env).as_deref(), Ok(""));
        assert_eq!(substitute("cost: $5 $${env:HOME}", env).as_deref(), Ok("cost: $5 ${env:HOME}"));
    }

    #[test]
    fn errors_point_at_the_reference() {
        let e = substitute("a: 1\nb: x ${env:NOPE}\n", env).unwrap_err();
        assert_eq!((e.line, e.column), (2, 6));
        assert!(e.message.contains("NOPE is not set"), "{e}");
        assert!(substitute("${HOME}", env).unwrap_err().message.contains("unsupported"));
        assert!(substitute("${env:HOME", env).unwrap_err().message.contains("unterminated"));
        assert!(substitute("${env:1X}", env).unwrap_err().message.contains("invalid"));
    }
}
