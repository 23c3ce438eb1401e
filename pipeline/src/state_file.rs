//! State files that outlive the process: written whole or not at all,
//! read back bounded, set aside (not deleted) when they cannot be used.
//! The formats inside are their owners' (the processor's checkpoint, a
//! secure receiver's replay sessions); this is only the file discipline
//! they share.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` whole or not at all: a temporary file beside
/// it (mode 0600), synced, renamed over `path`, the directory synced. A
/// crash or a full disk leaves the previous file as it was.
pub fn write_whole(path: &Path, bytes: &[u8]) -> io::Result<u64> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = (|| {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(bytes.len() as u64)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// What [`read_bounded`] found.
#[derive(Debug)]
pub enum Found {
    /// No such file: nothing was kept.
    Missing,
    /// Longer than the bound (not read past it).
    TooLarge,
    Bytes(Vec<u8>),
}

/// Reads at most `max` bytes of `path`.
pub fn read_bounded(path: &Path, max: u64) -> io::Result<Found> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::Missing),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    Ok(if bytes.len() as u64 > max { Found::TooLarge } else { Found::Bytes(bytes) })
}

/// Moves a file that cannot be used out of the way (`<path>.set-aside`,
/// replacing an earlier one), so the next start does not trip on it and
/// an operator can still look at it. Where it went.
pub fn set_aside(path: &Path) -> PathBuf {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".set-aside");
    let aside = PathBuf::from(aside);
    let _ = std::fs::rename(path, &aside);
    aside
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_whole_read_bounded_and_set_aside() {
        let dir = std::env::temp_dir().join(format!("varta-state-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("x.state");
        assert!(matches!(read_bounded(&path, 8), Ok(Found::Missing)));
        assert_eq!(write_whole(&path, b"12345678").expect("write"), 8);
        assert!(matches!(read_bounded(&path, 8), Ok(Found::Bytes(b)) if b == b"12345678"));
        assert!(matches!(read_bounded(&path, 7), Ok(Found::TooLarge)));
        assert!(!dir.join("x.state.tmp").exists(), "no temporary file left");
        let aside = set_aside(&path);
        assert_eq!(aside, dir.join("x.state.set-aside"));
        assert!(aside.exists() && !path.exists());
        // A write into a missing directory fails and leaves nothing.
        assert!(write_whole(&dir.join("no/such.state"), b"x").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
