//! `/proc/<pid>/maps`: which file is mapped where, so that stack copies
//! stay inside the stack's mapping and addresses map to modules.

use varta_pipeline::procfs::{self, ProcError};

/// Mappings kept per process (the rest are ignored).
const MAX_MAPPINGS: usize = 65_536;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mapping {
    pub start: u64,
    pub end: u64,
    pub executable: bool,
    pub offset: u64,
    pub dev: String,
    pub inode: u64,
    /// The path as the target sees it (in its own mount namespace).
    pub path: String,
}

impl Mapping {
    pub(crate) fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    /// `/proc/<pid>/map_files/<start>-<end>`: the exact file the target
    /// mapped, whatever its mount namespace or whether it was deleted.
    pub(crate) fn map_file(&self, pid: u32) -> String {
        format!("/proc/{pid}/map_files/{:x}-{:x}", self.start, self.end)
    }
}

pub(crate) fn read(pid: u32) -> Result<Vec<Mapping>, ProcError> {
    Ok(parse(&procfs::read(&format!("/proc/{pid}/maps"))?))
}

pub(crate) fn parse(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).take(MAX_MAPPINGS).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut it = line.splitn(6, ' ');
    let (range, perms, offset, dev, inode) = (it.next()?, it.next()?, it.next()?, it.next()?, it.next()?);
    let path = it.next().unwrap_or("").trim_start().to_owned();
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    (start < end).then_some(())?;
    Some(Mapping {
        start,
        end,
        executable: perms.as_bytes().get(2) == Some(&b'x'),
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev: dev.to_owned(),
        inode: inode.parse().ok()?,
        path,
    })
}

pub(crate) fn find(maps: &[Mapping], addr: u64) -> Option<&Mapping> {
    maps.iter().find(|m| m.contains(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse() {
        let text = "55d0c0a00000-55d0c0a01000 r-xp 00001000 08:01 1234   /usr/bin/with space\n\
                    7ffd1000-7ffd2000 rw-p 00000000 00:00 0                          [stack]\n\
                    garbage\n\
                    2000-1000 r-xp 00000000 00:00 0 backwards\n";
        let maps = parse(text);
        assert_eq!(maps.len(), 2);
        assert_eq!(maps[0].path, "/usr/bin/with space");
        assert!(maps[0].executable);
        assert_eq!((maps[0].offset, maps[0].inode), (0x1000, 1234));
        assert_eq!(maps[1].path, "[stack]");
        assert_eq!(find(&maps, 0x7ffd1800).map(|m| m.path.as_str()), Some("[stack]"));
        assert_eq!(maps[0].map_file(7), "/proc/7/map_files/55d0c0a00000-55d0c0a01000");
        assert!(read(std::process::id()).is_ok_and(|m| m.iter().any(|m| m.executable)));
    }
}
