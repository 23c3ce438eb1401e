//! Helpers for the tests of the crates above (not used by the product).

use std::path::{Path, PathBuf};

/// A tmpfs of `size` (e.g. `64k`) mounted in a new directory below `parent`
/// — a disk that fills up, for the disk-full tests — unmounted on drop.
/// Needs root (the test command runs as root; a test that cannot mount
/// fails rather than skips).
#[derive(Debug)]
pub struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    pub fn mount(parent: &Path, size: &str) -> SmallDisk {
        let path = parent.join("small-disk");
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap_or_else(|e| panic!("run mount: {e}"));
        assert!(status.success(), "mount a {size} tmpfs at {} (tests run as root)", path.display());
        SmallDisk { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.path).status();
    }
}
