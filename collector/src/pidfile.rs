//! `service.pid_file`: which process a `varta-collector reload --pid-file`
//! may signal.
//!
//! Promises: the file holds `PID START_TIME` (the process start time from
//! `/proc/<pid>/stat`, which a recycled pid does not share). It is written
//! to a new file beside it and renamed into place, so a symlink planted at
//! the path is replaced, never followed. A reader signals only a pid whose
//! start time still matches (a file without one, from an older version,
//! only when that pid runs a `varta-collector` binary): a stale file never
//! gets another process signalled.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Why a pid file names no live collector.
#[derive(Debug)]
pub enum Stale {
    /// Missing, unreadable, not a regular file, or no pid in it.
    Unreadable(String),
    /// The pid belongs to another process now.
    NotTheCollector(i32),
}

/// Writes this process's pid and start time to `path` (see the module docs).
pub fn write(path: &Path) -> std::io::Result<()> {
    let pid = std::process::id();
    let start = varta_pipeline::procfs::start_time(pid).unwrap_or(0);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.{pid}.tmp"));
    let _ = std::fs::remove_file(&temp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&temp)?;
    let written = file.write_all(format!("{pid} {start}\n").as_bytes()).and_then(|()| file.sync_all());
    if let Err(e) = written.and_then(|()| std::fs::rename(&temp, path)) {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    Ok(())
}

/// The pid `path` names, if that process is still the one that wrote it.
pub fn read_live(path: &Path) -> Result<i32, Stale> {
    let unreadable = |why: String| Stale::Unreadable(why);
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| unreadable(e.to_string()))?;
    if !file.metadata().map_err(|e| unreadable(e.to_string()))?.file_type().is_file() {
        return Err(unreadable("not a regular file".into()));
    }
    let mut text = String::new();
    Read::by_ref(&mut file).take(256).read_to_string(&mut text).map_err(|e| unreadable(e.to_string()))?;
    let mut fields = text.split_ascii_whitespace();
    let pid: i32 = fields.next().and_then(|p| p.parse().ok()).ok_or_else(|| unreadable("no pid".into()))?;
    let recorded: Option<u64> = fields.next().and_then(|s| s.parse().ok());
    let live = u32::try_from(pid).ok().and_then(varta_pipeline::procfs::start_time);
    let same = match (recorded, live) {
        (Some(r), Some(l)) => r == l,
        // Written by an older version: only a running varta-collector.
        (None, Some(_)) => std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| {
            exe.file_name().is_some_and(|n| n.to_string_lossy().starts_with("varta-collector"))
        }),
        (_, None) => false,
    };
    if same { Ok(pid) } else { Err(Stale::NotTheCollector(pid)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_through_a_rename_and_read_back_for_ourselves_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep me").expect("victim");
        let path = dir.path().join("collector.pid");
        std::os::unix::fs::symlink(&victim, &path).expect("a planted symlink");
        write(&path).expect("write");
        assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "keep me", "never followed");
        assert!(std::fs::symlink_metadata(&path).expect("meta").file_type().is_file());
        assert_eq!(read_live(&path).expect("ours"), std::process::id() as i32);
        // A stale file: our pid with another start time.
        std::fs::write(&path, format!("{} 1\n", std::process::id())).expect("stale");
        assert!(matches!(read_live(&path), Err(Stale::NotTheCollector(_))));
        // An old-format file naming a process that is not a collector.
        std::fs::write(&path, format!("{}\n", std::process::id())).expect("old format");
        assert!(matches!(read_live(&path), Err(Stale::NotTheCollector(_))));
        std::fs::write(&path, "garbage").expect("garbage");
        assert!(matches!(read_live(&path), Err(Stale::Unreadable(_))));
    }
}
