//! Reading key files the careful way.
//!
//! Promises: a key is only read from a regular file (never through a
//! symlink, checked on the path and again on the opened descriptor) whose
//! mode grants nothing to group or others; the file holds 64 hex characters
//! with optional surrounding whitespace. The bytes read are zeroized.

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use varta_proto::Key;
use varta_proto::hex::HexError;
use zeroize::Zeroizing;

/// Largest key file accepted (64 hex chars plus generous whitespace).
const MAX_KEY_FILE: usize = 256;

/// Why a key file was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read key file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("key file {0} is a symlink; point at the file itself")]
    Symlink(PathBuf),
    #[error("key file {0} is not a regular file")]
    NotRegular(PathBuf),
    #[error("key file {path} has mode {mode:04o}; it must be 0600 or stricter (chmod 600 {path})")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("key file {0} is too large to be a key (expected 64 hex characters)")]
    TooLarge(PathBuf),
    #[error("key file {0} is not text (expected 64 hex characters)")]
    NotText(PathBuf),
    #[error("key file {path} does not hold a key: {source}")]
    NotAKey { path: PathBuf, source: HexError },
}

fn check(path: &Path, meta: &std::fs::Metadata) -> Result<(), KeyFileError> {
    if meta.file_type().is_symlink() {
        return Err(KeyFileError::Symlink(path.to_path_buf()));
    }
    if !meta.file_type().is_file() {
        return Err(KeyFileError::NotRegular(path.to_path_buf()));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::TooOpen { path: path.to_path_buf(), mode });
    }
    Ok(())
}

/// Reads a 32-byte key from `path` (see the module docs for the rules).
pub fn read_key_file(path: &Path) -> Result<Key, KeyFileError> {
    let io = |source| KeyFileError::Io { path: path.to_path_buf(), source };
    check(path, &std::fs::symlink_metadata(path).map_err(io)?)?;
    let mut file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path).map_err(io)?;
    check(path, &file.metadata().map_err(io)?)?;

    let mut buf = Zeroizing::new([0u8; MAX_KEY_FILE + 1]);
    let mut len = 0;
    loop {
        let n = file.read(&mut buf[len..]).map_err(io)?;
        if n == 0 {
            break;
        }
        len += n;
        if len > MAX_KEY_FILE {
            return Err(KeyFileError::TooLarge(path.to_path_buf()));
        }
    }
    let text = std::str::from_utf8(&buf[..len]).map_err(|_| KeyFileError::NotText(path.to_path_buf()))?;
    Key::from_hex(text).map_err(|source| KeyFileError::NotAKey { path: path.to_path_buf(), source })
}
