//! The one function that decides what a string the target controls may
//! become in our output: thread names, fd targets, symbol names and file
//! paths are data, never syntax. Control characters, backslashes and the
//! Unicode format characters that reorder or hide text are escaped, and the
//! result is capped in characters (cut values end in `…`). Exporters reuse
//! [`sanitize`] for anything they add from the same sources.

/// The default cap, in characters, for names, fd targets and symbols.
pub const MAX_CHARS: usize = 256;

/// `raw` with control and format characters escaped (`\n`, `\t`, `\\`,
/// `\x1b`, `\u{202e}`), cut to at most `max_chars` characters (an escape is
/// never split; a cut value ends in `…`, which counts toward the cap).
pub fn sanitize(raw: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(raw.len().min(max_chars.saturating_mul(4)));
    let mut used = 0usize;
    let mut piece = String::new();
    for (i, c) in raw.char_indices() {
        piece.clear();
        escape_into(c, &mut piece);
        let n = piece.chars().count();
        // Keep one character free for the ellipsis unless this is the end.
        let is_last = i + c.len_utf8() == raw.len();
        let room = if is_last { max_chars } else { max_chars.saturating_sub(1) };
        if used + n > room {
            if max_chars > 0 {
                out.push('…');
            }
            return out;
        }
        out.push_str(&piece);
        used += n;
    }
    out
}

/// [`sanitize`] over bytes that need not be UTF-8 (invalid sequences
/// become U+FFFD).
pub fn sanitize_bytes(raw: &[u8], max_chars: usize) -> String {
    sanitize(&String::from_utf8_lossy(raw), max_chars)
}

fn escape_into(c: char, out: &mut String) {
    match c {
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\t' => out.push_str("\\t"),
        '\r' => out.push_str("\\r"),
        c if (c as u32) < 0x80 && c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
        c if c.is_control() || is_hiding_format_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        c => out.push(c),
    }
}

/// Bidirectional overrides and isolates, zero-width characters and the
/// byte-order mark: they make a label read differently from what it is.
fn is_hiding_format_char(c: char) -> bool {
    matches!(c as u32, 0x200b..=0x200f | 0x202a..=0x202e | 0x2060..=0x2069 | 0xfeff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_kept() {
        assert_eq!(sanitize("waiter-0", MAX_CHARS), "waiter-0");
        assert_eq!(sanitize("pipe:[34573]", MAX_CHARS), "pipe:[34573]");
        assert_eq!(sanitize("<std::sync::Mutex<T>>::lock", MAX_CHARS), "<std::sync::Mutex<T>>::lock");
        assert_eq!(sanitize("", MAX_CHARS), "");
        assert_eq!(sanitize("héllo", MAX_CHARS), "héllo");
    }

    #[test]
    fn hostile_values_are_escaped() {
        assert_eq!(sanitize("a\nb", MAX_CHARS), "a\\nb");
        assert_eq!(sanitize("evil\x1b[31mred", MAX_CHARS), "evil\\x1b[31mred");
        assert_eq!(sanitize("tab\there", MAX_CHARS), "tab\\there");
        assert_eq!(sanitize("back\\slash", MAX_CHARS), "back\\\\slash");
        assert_eq!(sanitize("nul\0", MAX_CHARS), "nul\\x00");
        assert_eq!(sanitize("abc\u{202e}cba", MAX_CHARS), "abc\\u{202e}cba");
        assert_eq!(sanitize("c1\u{85}", MAX_CHARS), "c1\\u{85}");
        assert_eq!(sanitize_bytes(b"bad\xff\xfe", MAX_CHARS), "bad\u{fffd}\u{fffd}");
    }

    #[test]
    fn long_values_are_cut_with_an_ellipsis_within_the_cap() {
        let long = "x".repeat(1000);
        let s = sanitize(&long, 16);
        assert_eq!(s.chars().count(), 16);
        assert!(s.ends_with('…'));
        assert_eq!(sanitize("exactly8", 8), "exactly8");
        assert_eq!(sanitize("ninechars", 8), "ninecha…");
        // An escape is never split: "\x1b" needs 4 characters.
        assert_eq!(sanitize("ab\x1bcdef", 5), "ab…");
        assert_eq!(sanitize("anything", 0), "");
        let hostile = "\n".repeat(10_000);
        assert!(sanitize(&hostile, MAX_CHARS).chars().count() <= MAX_CHARS);
    }
}
