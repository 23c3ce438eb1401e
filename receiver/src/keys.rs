//! Key files for secure UDP. A key file is trusted only when it is a regular
//! file (not a symlink), owner-only (no group/other mode bits), owned by the
//! collector's effective uid, and holds exactly 64 hex characters
//! (surrounding whitespace allowed). The bytes pass through a zeroizing
//! buffer; key material is never logged.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use varta_proto::Key;
use zeroize::Zeroizing;

use crate::error::KeyFileError;

/// Larger than any acceptable key file (64 hex chars + whitespace).
const MAX_KEY_FILE: usize = 256;

/// Loads a 32-byte key from a hex key file, enforcing the rules above.
pub fn load_key_file(path: &Path) -> Result<Key, KeyFileError> {
    let io = |source| KeyFileError::Io { path: path.to_path_buf(), source };
    let meta = std::fs::symlink_metadata(path).map_err(io)?;
    if meta.file_type().is_symlink() {
        return Err(KeyFileError::Symlink { path: path.to_path_buf() });
    }
    if !meta.file_type().is_file() {
        return Err(KeyFileError::NotRegular { path: path.to_path_buf() });
    }
    // O_NOFOLLOW + fstat: the file we read is the one we checked, even if
    // the path is swapped between the checks.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(io)?;
    check_opened(path, &file)?;

    let mut buf = Zeroizing::new([0u8; MAX_KEY_FILE]);
    let mut len = 0;
    let mut reader = file.take(MAX_KEY_FILE as u64);
    loop {
        match reader.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
        if len == MAX_KEY_FILE {
            return Err(format_error(path, format!("file is larger than {} bytes", MAX_KEY_FILE - 1)));
        }
    }
    let text = std::str::from_utf8(&buf[..len]).map_err(|_| format_error(path, "not UTF-8 text".into()))?;
    Key::from_hex(text).map_err(|e| format_error(path, e.to_string()))
}

fn check_opened(path: &Path, file: &File) -> Result<(), KeyFileError> {
    let meta = file.metadata().map_err(|source| KeyFileError::Io { path: path.to_path_buf(), source })?;
    if !meta.file_type().is_file() {
        return Err(KeyFileError::NotRegular { path: path.to_path_buf() });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions { path: path.to_path_buf(), mode });
    }
    let euid = crate::mmsg::effective_uid();
    if meta.uid() != euid {
        return Err(KeyFileError::Owner { path: path.to_path_buf(), owner: meta.uid(), euid });
    }
    Ok(())
}

fn format_error(path: &Path, reason: String) -> KeyFileError {
    KeyFileError::Format { path: path.to_path_buf(), reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::TempDir;
    use std::os::unix::fs::PermissionsExt;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn write(dir: &TempDir, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
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
        let d = TempDir::new("keys-good");
        let p = write(&d, "k", &format!("{HEX}\n"), 0o600);
        let k = load_key_file(&p).expect("good key");
        assert_eq!(k.expose_bytes()[31], 0x1f);
        let p = write(&d, "k2", HEX, 0o400);
        assert!(load_key_file(&p).is_ok());
    }

    #[test]
    fn symlink_is_refused() {
        let d = TempDir::new("keys-link");
        let target = write(&d, "k", HEX, 0o600);
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let e = err(&link);
        assert!(e.contains("symlink") && e.contains("link"), "{e}");
    }

    #[test]
    fn group_or_other_bits_are_refused() {
        let d = TempDir::new("keys-mode");
        for mode in [0o644, 0o640, 0o604] {
            let p = write(&d, "k", HEX, mode);
            let e = err(&p);
            assert!(e.contains("owner-only") && e.contains(&format!("{mode:04o}")), "{e}");
        }
    }

    #[test]
    fn file_of_another_user_is_refused() {
        let d = TempDir::new("keys-owner");
        let p = write(&d, "k", HEX, 0o600);
        if crate::mmsg::effective_uid() != 0 {
            return; // only root can give a file away
        }
        std::os::unix::fs::chown(&p, Some(65534), None).expect("chown");
        let e = err(&p);
        assert!(e.contains("owned by uid 65534") && e.contains("must be ours"), "{e}");
    }

    #[test]
    fn directory_is_refused() {
        let d = TempDir::new("keys-dir");
        let e = err(d.path());
        assert!(e.contains("not a regular file"), "{e}");
        let e = err(&d.path().join("missing"));
        assert!(e.contains("cannot read") && e.contains("missing"), "{e}");
    }

    #[test]
    fn bad_contents_are_refused() {
        let d = TempDir::new("keys-fmt");
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
        }
        let p = write(&d, "huge", &"a".repeat(4096), 0o600);
        assert!(err(&p).contains("larger than"));
    }
}
