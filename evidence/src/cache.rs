//! The per-binary cache a long-lived [`Capturer`](crate::Capturer) keeps:
//! keyed by the opened file's identity (device, inode, size, mtime), so one
//! libc shared by many processes is parsed once and a replaced file is
//! parsed again. Refusals (too large, unparsable) are cached too, so a
//! hostile file costs one read. Bounded in entries; the least recently used
//! entry is evicted.

use std::collections::HashMap;
use std::sync::Arc;

use crate::binary::{Binary, FileKey, LoadError};

pub(crate) type Loaded = Result<Arc<Binary>, LoadError>;

#[derive(Debug)]
pub(crate) struct BinaryCache {
    entries: HashMap<FileKey, (Loaded, u64)>,
    max_entries: usize,
    clock: u64,
}

impl BinaryCache {
    pub(crate) fn new(max_entries: usize) -> BinaryCache {
        BinaryCache { entries: HashMap::new(), max_entries, clock: 0 }
    }

    pub(crate) fn get(&mut self, key: &FileKey) -> Option<Loaded> {
        self.clock += 1;
        let (loaded, used) = self.entries.get_mut(key)?;
        *used = self.clock;
        Some(loaded.clone())
    }

    pub(crate) fn insert(&mut self, key: FileKey, loaded: Loaded) {
        if self.max_entries == 0 {
            return;
        }
        while self.entries.len() >= self.max_entries {
            let Some(oldest) = self.entries.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| *k) else {
                break;
            };
            self.entries.remove(&oldest);
        }
        self.clock += 1;
        self.entries.insert(key, (loaded, self.clock));
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}
