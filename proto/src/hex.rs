//! Hex helpers for keys and frames (no external dependency, no allocation
//! for fixed-size outputs).

/// Why a hex string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HexError {
    #[error("expected {expected} hex characters, found {found}")]
    WrongLength { expected: usize, found: usize },
    #[error("invalid hex character {ch:?} at position {pos}")]
    InvalidChar { ch: char, pos: usize },
    #[error("odd number of hex characters ({0})")]
    OddLength(usize),
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes hex into bytes, ignoring ASCII whitespace anywhere (frames are
/// often pasted as space-separated bytes).
pub fn decode_hex(s: &str) -> Result<Vec<u8>, HexError> {
    let mut out = Vec::with_capacity(s.len() / 2);
    let mut high: Option<u8> = None;
    let mut digits = 0usize;
    for (pos, ch) in s.char_indices() {
        if ch.is_ascii_whitespace() {
            continue;
        }
        let n = u8::try_from(ch).ok().and_then(nibble).ok_or(HexError::InvalidChar { ch, pos })?;
        digits += 1;
        match high.take() {
            None => high = Some(n),
            Some(h) => out.push(h << 4 | n),
        }
    }
    if high.is_some() {
        return Err(HexError::OddLength(digits));
    }
    Ok(out)
}

/// Decodes exactly `2 * N` hex characters, allowing surrounding (but not
/// interior) whitespace. Used for 32-byte keys.
pub fn decode_hex_array<const N: usize>(s: &str) -> Result<[u8; N], HexError> {
    let t = s.trim();
    if t.len() != 2 * N {
        return Err(HexError::WrongLength { expected: 2 * N, found: t.chars().count() });
    }
    let bytes = t.as_bytes();
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        let at = |k: usize| {
            nibble(bytes[k]).ok_or_else(|| {
                let ch = t.get(k..).and_then(|r| r.chars().next()).unwrap_or(char::REPLACEMENT_CHARACTER);
                HexError::InvalidChar { ch, pos: k }
            })
        };
        *o = at(2 * i)? << 4 | at(2 * i + 1)?;
    }
    Ok(out)
}

/// Lower-case hex of `bytes`.
pub fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_whitespace() {
        assert_eq!(decode_hex("de ad\nBE ef").as_deref(), Ok(&[0xde, 0xad, 0xbe, 0xef][..]));
        assert_eq!(encode_hex(&[0xde, 0xad, 0x01]), "dead01");
        assert_eq!(decode_hex("abc"), Err(HexError::OddLength(3)));
        assert!(matches!(decode_hex("zz"), Err(HexError::InvalidChar { ch: 'z', pos: 0 })));
        assert!(matches!(decode_hex("é0"), Err(HexError::InvalidChar { ch: 'é', .. })));
    }

    #[test]
    fn fixed_arrays() {
        assert_eq!(decode_hex_array::<2>("  0aFf \n"), Ok([0x0a, 0xff]));
        assert_eq!(decode_hex_array::<2>("0aF"), Err(HexError::WrongLength { expected: 4, found: 3 }));
        assert!(matches!(decode_hex_array::<2>("0a f"), Err(HexError::InvalidChar { pos: 2, .. })));
        // A multi-byte character must not split a UTF-8 boundary.
        assert!(decode_hex_array::<2>("0aé").is_err());
    }
}
