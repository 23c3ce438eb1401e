//! What an agent-controlled value may become in a recovery command: one
//! argument's worth of plain text, never syntax.
//!
//! Promises: [`build`] substitutes every placeholder of the `exec`
//! template, and refuses the whole argv — naming the placeholder, never
//! echoing the value — as soon as one substituted value breaks the rule of
//! [`check_value`]:
//!
//! * not empty (an unknown `{service}` would turn `{service}.service` into
//!   `.service`), at most [`MAX_VALUE_BYTES`] bytes;
//! * only ASCII letters, digits and `.` `_` `-` `:` `@` `+` — so no `/`,
//!   no glob or shell metacharacters (`* ? [ ] { } $ ; | & < >`, backquote),
//!   no space, quote, backslash, newline or NUL;
//! * not starting with `-` (it would be read as an option);
//! * not `.` and no `..` anywhere (no path tricks when a value is glued
//!   into a path by the template).
//!
//! No placeholder is a path the collector produced, so `/` is never allowed.
//! `exec[0]` holds no placeholder at all (refused by config validation),
//! so the program that runs is always the one the operator wrote.

/// Longest value a placeholder may substitute.
pub const MAX_VALUE_BYTES: usize = 255;

/// Why a value may not be substituted (no part of the value itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsafeValue {
    Empty,
    TooLong,
    /// A byte outside letters, digits and `._-:@+`.
    Character,
    /// Starts with `-`.
    Option,
    /// `.` or contains `..`.
    DotPath,
}

impl UnsafeValue {
    pub const fn label(self) -> &'static str {
        match self {
            UnsafeValue::Empty => "empty (unknown)",
            UnsafeValue::TooLong => "longer than 255 bytes",
            UnsafeValue::Character => "contains a character outside letters, digits and ._-:@+",
            UnsafeValue::Option => "starts with '-'",
            UnsafeValue::DotPath => "is '.' or contains '..'",
        }
    }
}

/// The value rule (see the module docs).
pub fn check_value(v: &str) -> Result<(), UnsafeValue> {
    if v.is_empty() {
        return Err(UnsafeValue::Empty);
    }
    if v.len() > MAX_VALUE_BYTES {
        return Err(UnsafeValue::TooLong);
    }
    if !v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-:@+".contains(&b)) {
        return Err(UnsafeValue::Character);
    }
    if v.starts_with('-') {
        return Err(UnsafeValue::Option);
    }
    if v == "." || v.contains("..") {
        return Err(UnsafeValue::DotPath);
    }
    Ok(())
}

/// One piece of a template argument.
enum Piece<'a> {
    Literal(&'a str),
    /// `{…}` (up to the closing brace, or the end of the argument).
    Token(&'a str),
}

fn pieces(arg: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = arg;
    while let Some(at) = rest.find('{') {
        out.push(Piece::Literal(&rest[..at]));
        let end = rest[at..].find('}').map_or(rest.len(), |e| at + e + 1);
        out.push(Piece::Token(&rest[at..end]));
        rest = &rest[end..];
    }
    out.push(Piece::Literal(rest));
    out
}

/// The placeholders `arg` uses (config validation checks them).
pub fn placeholders(arg: &str) -> Vec<&str> {
    pieces(arg)
        .into_iter()
        .filter_map(|p| match p {
            Piece::Token(t) => Some(t),
            Piece::Literal(_) => None,
        })
        .collect()
}

/// Substitutes `value(token)` for each placeholder of each argument of
/// `exec`; the first value that breaks the rule refuses the argv, naming
/// its placeholder.
pub fn build(exec: &[String], value: impl Fn(&str) -> String) -> Result<Vec<String>, (&str, UnsafeValue)> {
    let mut argv = Vec::with_capacity(exec.len());
    for arg in exec {
        let mut out = String::with_capacity(arg.len());
        for piece in pieces(arg) {
            match piece {
                Piece::Literal(l) => out.push_str(l),
                Piece::Token(t) => {
                    let v = value(t);
                    check_value(&v).map_err(|why| (t, why))?;
                    out.push_str(&v);
                }
            }
        }
        argv.push(out);
    }
    Ok(argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_values_are_refused() {
        let long = "a".repeat(256);
        let cases: &[(&str, UnsafeValue)] = &[
            ("", UnsafeValue::Empty),
            ("*", UnsafeValue::Character),
            ("--force", UnsafeValue::Option),
            ("-", UnsafeValue::Option),
            ("../../x", UnsafeValue::Character),
            ("..", UnsafeValue::DotPath),
            ("a..b", UnsafeValue::DotPath),
            (".", UnsafeValue::DotPath),
            (&long, UnsafeValue::TooLong),
            ("a b", UnsafeValue::Character),
            ("a\nb", UnsafeValue::Character),
            ("a\0b", UnsafeValue::Character),
            ("$(id)", UnsafeValue::Character),
            ("`id`", UnsafeValue::Character),
            ("a;b", UnsafeValue::Character),
            ("a|b", UnsafeValue::Character),
            ("a&b", UnsafeValue::Character),
            ("<a>", UnsafeValue::Character),
            ("a?", UnsafeValue::Character),
            ("[ab]", UnsafeValue::Character),
            ("{a}", UnsafeValue::Character),
            ("'a'", UnsafeValue::Character),
            ("\"a\"", UnsafeValue::Character),
            ("a\\b", UnsafeValue::Character),
            ("/etc/passwd", UnsafeValue::Character),
            ("caf\u{e9}", UnsafeValue::Character),
        ];
        for (v, why) in cases {
            assert_eq!(check_value(v), Err(*why), "{v:?}");
        }
        for ok in ["checkout", "checkout-api_v2.1", "user@host", "a+b:c", "12345", "::1", &"a".repeat(255)] {
            assert_eq!(check_value(ok), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn one_bad_value_refuses_the_whole_argv_by_placeholder() {
        let exec: Vec<String> =
            ["/usr/bin/systemctl", "restart", "--", "{service}.service"].map(String::from).to_vec();
        let good = build(&exec, |_| "checkout".into()).expect("safe");
        assert_eq!(good, ["/usr/bin/systemctl", "restart", "--", "checkout.service"]);
        assert_eq!(build(&exec, |_| "*".into()), Err(("{service}", UnsafeValue::Character)));
        assert_eq!(build(&exec, |_| String::new()), Err(("{service}", UnsafeValue::Empty)));
        assert_eq!(placeholders("{pid}-{cause}x"), ["{pid}", "{cause}"]);
    }

    proptest::proptest! {
        #[test]
        fn whatever_passes_is_one_plain_word(v in "\\PC{0,300}|[a-z.:@+_-]{0,12}") {
            if check_value(&v).is_ok() {
                proptest::prop_assert!(!v.is_empty() && v.len() <= MAX_VALUE_BYTES);
                proptest::prop_assert!(v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-:@+".contains(&b)));
                proptest::prop_assert!(!v.starts_with('-') && !v.contains("..") && v != ".");
                let exec = vec!["/bin/x".to_owned(), "{service}".to_owned()];
                proptest::prop_assert_eq!(build(&exec, |_| v.clone()).ok(), Some(vec!["/bin/x".to_owned(), v.clone()]));
            }
        }
    }
}
