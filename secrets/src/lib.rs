//! Secret files, read the careful way — one implementation for the agent
//! CLI, the secure-UDP receiver and (next) the metrics endpoint's token.
//!
//! A secret file is trusted only when it is a regular file (not a symlink:
//! checked on the path, then `O_NOFOLLOW` and `fstat` on the opened file so
//! a swapped path cannot slip through), grants nothing to group or others
//! (mode 0600 or stricter), and is owned by the reading process's
//! effective uid. Contents pass through zeroizing buffers, and errors never
//! echo any of them.
//!
//! (Its own crate because `varta-proto` promises no I/O, and the client and
//! the receiver must not depend on each other.)

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use varta_proto::Key;
use varta_proto::hex::HexError;
use zeroize::Zeroizing;

/// Larger than any acceptable key file (64 hex chars + whitespace).
const MAX_SECRET_FILE: usize = 256;

/// Larger than any PEM private key in use (an RSA 8192 key is ~6.5 KiB;
/// RSA 2048 ~1.7 KiB, P-384 ~0.3 KiB) — a bound, not a format rule.
const MAX_PEM_FILE: usize = 64 << 10;

/// Why a secret file was refused. Messages name the file and the rule.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("key file {path}: cannot read: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("key file {path}: is a symlink; key files must be regular files, not symlinks")]
    Symlink { path: PathBuf },
    #[error("key file {path}: is not a regular file")]
    NotRegular { path: PathBuf },
    #[error(
        "key file {path}: mode {mode:04o} gives access to group or others; key files must be owner-only, \
         mode 0600 or stricter (chmod 600 {path})"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "key file {path}: owned by uid {owner}, but this process runs as uid {euid}; key files must be ours"
    )]
    Owner { path: PathBuf, owner: u32, euid: u32 },
    #[error("key file {path}: must contain exactly 64 hex characters (a 32-byte key): {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("key file {path}: is larger than {max} bytes")]
    TooLarge { path: PathBuf, max: usize },
    #[error("key file {path}: is not UTF-8 text")]
    NotText { path: PathBuf },
}

/// The uid this process runs as (the owner key files must have).
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn check_opened(path: &Path, file: &File) -> Result<(), SecretFileError> {
    let meta = file.metadata().map_err(|source| SecretFileError::Io { path: path.to_path_buf(), source })?;
    if !meta.file_type().is_file() {
        return Err(SecretFileError::NotRegular { path: path.to_path_buf() });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretFileError::Permissions { path: path.to_path_buf(), mode });
    }
    let euid = effective_uid();
    if meta.uid() != euid {
        return Err(SecretFileError::Owner { path: path.to_path_buf(), owner: meta.uid(), euid });
    }
    Ok(())
}

fn format_error(path: &Path, reason: String) -> SecretFileError {
    SecretFileError::Format { path: path.to_path_buf(), reason }
}

/// Reads a key file's text (see the module docs for the rules), at most
/// a hex key's size.
pub fn read_secret_file(path: &Path) -> Result<Zeroizing<String>, SecretFileError> {
    read_capped(path, MAX_SECRET_FILE)
}

/// Reads a PEM private key (mutual TLS) under the same rules, with a cap
/// that fits keys of every common type and size (RSA up to 8192 bits,
/// ECDSA, Ed25519).
pub fn read_secret_pem(path: &Path) -> Result<Zeroizing<String>, SecretFileError> {
    read_capped(path, MAX_PEM_FILE)
}

fn read_capped(path: &Path, cap: usize) -> Result<Zeroizing<String>, SecretFileError> {
    let io = |source| SecretFileError::Io { path: path.to_path_buf(), source };
    let meta = std::fs::symlink_metadata(path).map_err(io)?;
    if meta.file_type().is_symlink() {
        return Err(SecretFileError::Symlink { path: path.to_path_buf() });
    }
    if !meta.file_type().is_file() {
        return Err(SecretFileError::NotRegular { path: path.to_path_buf() });
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(io)?;
    check_opened(path, &file)?;

    let mut buf = Zeroizing::new(vec![0u8; cap]);
    let mut len = 0;
    let mut reader = file.take(cap as u64);
    loop {
        match reader.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
        if len == cap {
            return Err(SecretFileError::TooLarge { path: path.to_path_buf(), max: cap - 1 });
        }
    }
    let text = std::str::from_utf8(&buf[..len])
        .map_err(|_| SecretFileError::NotText { path: path.to_path_buf() })?;
    Ok(Zeroizing::new(text.to_owned()))
}

/// Loads a 32-byte key from a hex key file.
pub fn load_key_file(path: &Path) -> Result<Key, SecretFileError> {
    let text = read_secret_file(path)?;
    Key::from_hex(&text).map_err(|e| {
        // Never echo key material, not even the one offending character.
        let reason = match e {
            HexError::InvalidChar { pos, .. } => format!("character {} is not a hex digit", pos + 1),
            other => other.to_string(),
        };
        format_error(path, reason)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn write(dir: &tempfile::TempDir, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write key");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        p
    }

    fn err(p: &Path) -> String {
        load_key_file(p).map(|_| ()).expect_err("must be refused").to_string()
    }

    #[test]
    fn good_key_file_loads() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = write(&d, "k", &format!("{HEX}\n"), 0o600);
        let k = load_key_file(&p).expect("good key");
        assert_eq!(k.expose_bytes()[31], 0x1f);
        let p = write(&d, "k2", HEX, 0o400);
        assert!(load_key_file(&p).is_ok());
    }

    #[test]
    fn symlink_is_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        let target = write(&d, "k", HEX, 0o600);
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let e = err(&link);
        assert!(e.contains("symlink") && e.contains("link"), "{e}");
    }

    #[test]
    fn group_or_other_bits_are_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        for mode in [0o644, 0o640, 0o604] {
            let p = write(&d, "k", HEX, mode);
            let e = err(&p);
            assert!(e.contains("owner-only") && e.contains(&format!("{mode:04o}")), "{e}");
        }
    }

    #[test]
    fn file_of_another_user_is_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = write(&d, "k", HEX, 0o600);
        if effective_uid() != 0 {
            return; // only root can give a file away
        }
        std::os::unix::fs::chown(&p, Some(65534), None).expect("chown");
        let e = err(&p);
        assert!(e.contains("owned by uid 65534") && e.contains("must be ours"), "{e}");
    }

    #[test]
    fn directory_and_missing_file_are_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        let e = err(d.path());
        assert!(e.contains("not a regular file"), "{e}");
        let e = err(&d.path().join("missing"));
        assert!(e.contains("cannot read") && e.contains("missing"), "{e}");
    }

    #[test]
    fn bad_contents_are_refused_without_echoing_them() {
        let d = tempfile::tempdir().expect("tempdir");
        for (name, text) in [
            ("short", "0001"),
            ("long", &format!("{HEX}00")[..]),
            ("nonhex", &HEX.replace('0', "g")[..]),
            ("empty", ""),
            ("binary", "\u{ff}\u{fe}"),
        ] {
            let p = write(&d, name, text, 0o600);
            let e = err(&p);
            assert!(e.contains("64 hex characters") && e.contains(name), "{name}: {e}");
            assert!(!e.contains("'g'") && !e.contains("\"g\""), "{name}: echoes content: {e}");
        }
        let p = write(&d, "huge", &"a".repeat(4096), 0o600);
        assert!(err(&p).contains("larger than"));
    }
}
