//! Each distinct attribute string once, while an agent refers to it:
//! reference-counted (a string no agent uses is freed at once, O(1)),
//! values cut to the value limit at a character boundary (counted), and
//! bounded in count and bytes (beyond, new values are left out, counted).

use std::hash::BuildHasher;
use std::num::NonZeroU32;

use hashbrown::{DefaultHashBuilder, HashTable};

/// Distinct strings kept at most.
pub const MAX_STRINGS: usize = 1 << 20;
/// Bytes of distinct strings kept at most.
pub const MAX_STRING_BYTES: usize = 64 << 20;
/// Bytes an attribute value is cut to unless configured otherwise.
pub const DEFAULT_VALUE_LIMIT: usize = 256;

/// An interned string (an index into the store's strings).
pub type Sym = Option<NonZeroU32>;

/// Each distinct string once, while referred to.
#[derive(Debug)]
pub(crate) struct Interner {
    /// `None`: a freed slot (listed in `free`).
    strings: Vec<Option<Box<str>>>,
    refs: Vec<u32>,
    free: Vec<u32>,
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    bytes: usize,
    pub(crate) refused: u64,
    pub(crate) truncated: u64,
    pub(crate) value_limit: usize,
}

impl Default for Interner {
    fn default() -> Self {
        Interner {
            strings: Vec::new(),
            refs: Vec::new(),
            free: Vec::new(),
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            bytes: 0,
            refused: 0,
            truncated: 0,
            value_limit: DEFAULT_VALUE_LIMIT,
        }
    }
}

/// `s` cut to at most `limit` bytes at a character boundary.
pub(crate) fn cut(s: &str, limit: usize) -> &str {
    if s.len() <= limit {
        return s;
    }
    let mut end = limit;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Interner {
    /// Takes a reference to `s` (cut to the value limit), storing it if new.
    pub(crate) fn intern(&mut self, s: &str) -> Sym {
        if s.is_empty() {
            return None;
        }
        let short = cut(s, self.value_limit);
        if short.len() < s.len() {
            self.truncated += 1;
        }
        let s = short;
        let hash = self.hasher.hash_one(s);
        let strings = &self.strings;
        if let Some(&i) = self.index.find(hash, |&i| strings[i as usize].as_deref() == Some(s)) {
            self.refs[i as usize] += 1;
            return NonZeroU32::new(i + 1);
        }
        if self.live() >= MAX_STRINGS || self.bytes + s.len() > MAX_STRING_BYTES {
            self.refused += 1;
            return None;
        }
        let i = match self.free.pop() {
            Some(i) => {
                self.strings[i as usize] = Some(s.into());
                self.refs[i as usize] = 1;
                i
            }
            None => {
                let i = u32::try_from(self.strings.len()).ok()?;
                self.strings.push(Some(s.into()));
                self.refs.push(1);
                i
            }
        };
        self.bytes += s.len();
        let (strings, hasher) = (&self.strings, &self.hasher);
        self.index.insert_unique(hash, i, |&j| hasher.hash_one(strings[j as usize].as_deref().unwrap_or("")));
        NonZeroU32::new(i + 1)
    }

    /// Gives back a reference; the string is freed when none is left.
    pub(crate) fn release(&mut self, sym: Sym) {
        let Some(i) = sym.map(|s| s.get() as usize - 1) else { return };
        let Some(refs) = self.refs.get_mut(i) else { return };
        *refs = refs.saturating_sub(1);
        if *refs > 0 {
            return;
        }
        let Some(s) = self.strings[i].take() else { return };
        let hash = self.hasher.hash_one(&*s);
        if let Ok(entry) = self.index.find_entry(hash, |&j| j as usize == i) {
            entry.remove();
        }
        self.bytes -= s.len();
        self.free.push(i as u32);
    }

    pub(crate) fn live(&self) -> usize {
        self.strings.len() - self.free.len()
    }

    pub(crate) fn get(&self, sym: Sym) -> Option<&str> {
        sym.and_then(|s| self.strings.get(s.get() as usize - 1)).and_then(|s| s.as_deref())
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        self.bytes
            + self.strings.capacity() * std::mem::size_of::<Option<Box<str>>>()
            + self.refs.capacity() * 4
            + self.free.capacity() * 4
            + self.index.allocation_size()
    }
}
