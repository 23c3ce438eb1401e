//! Whether we may capture a process at all, decided before and re-checked
//! after every capture: it must be the process the caller means (pid plus
//! start time, and the same program image: an `exec` keeps pid and start
//! time but changes the executable link and the randomized stack and code
//! addresses), not traced by anyone, and in our user namespace unless
//! allowed. Unknown answers fail closed.

use varta_pipeline::procfs::{self, ProcError};

use crate::Skip;
use crate::threads::parse_tracer_pid;

/// What identifies one program image of one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    start_time: u64,
    /// `readlink /proc/<pid>/exe` (`None` when it has none, e.g. a zombie).
    exe: Option<String>,
    /// `startcode` and `startstack` (fields 26 and 28 of `stat`): set anew
    /// by every exec.
    start_code: u64,
    start_stack: u64,
}

fn skip_of(e: ProcError) -> Skip {
    match e {
        ProcError::Gone => Skip::Gone,
        ProcError::Denied => Skip::Denied,
        ProcError::Other(errno) => Skip::Error(errno),
    }
}

/// Reads the identity of `pid`.
pub(crate) fn read(pid: u32) -> Result<Identity, Skip> {
    let stat = procfs::read(&format!("/proc/{pid}/stat")).map_err(skip_of)?;
    let field = |n: usize| -> Option<u64> { procfs::stat_fields(&stat)?.nth(n - 3)?.parse().ok() };
    let (Some(start_time), Some(start_code), Some(start_stack)) = (field(22), field(26), field(28)) else {
        return Err(Skip::Error(0));
    };
    let exe = match procfs::read_link(&format!("/proc/{pid}/exe")) {
        Ok(link) => Some(link),
        Err(ProcError::Gone) => None,
        Err(e) => return Err(skip_of(e)),
    };
    Ok(Identity { start_time, exe, start_code, start_stack })
}

/// Checks everything that must hold before a capture of `pid`, and returns
/// the identity to compare with afterwards.
pub(crate) fn admit(
    pid: u32,
    expected_start_time: u64,
    own_userns: Option<&str>,
    allow_cross_userns: bool,
) -> Result<Identity, Skip> {
    let identity = read(pid)?;
    if identity.start_time != expected_start_time {
        return Err(Skip::IdentityMismatch);
    }
    let status = procfs::read(&format!("/proc/{pid}/status")).map_err(skip_of)?;
    match parse_tracer_pid(&status) {
        Some(0) => {}
        Some(tracer) => return Err(Skip::Traced { tracer }),
        None => return Err(Skip::Error(0)),
    }
    if !allow_cross_userns {
        let theirs = procfs::read_link(&format!("/proc/{pid}/ns/user")).map_err(skip_of)?;
        if own_userns != Some(theirs.as_str()) {
            return Err(Skip::OtherUserNamespace);
        }
    }
    Ok(identity)
}

/// Our own user namespace (`user:[4026531837]`).
pub(crate) fn own_userns() -> Option<String> {
    procfs::read_link("/proc/self/ns/user").ok()
}

/// After a capture: the same image of the same process, else what changed.
pub(crate) fn confirm(pid: u32, before: &Identity) -> Result<(), Skip> {
    match read(pid) {
        Ok(now) if now == *before => Ok(()),
        // Exited (a zombie has no executable and no memory map left).
        Ok(now) if now.exe.is_none() && before.exe.is_some() => Err(Skip::Gone),
        Ok(now) if now.start_time != before.start_time => Err(Skip::IdentityMismatch),
        Ok(_) => Err(Skip::Changed),
        Err(skip) => Err(skip),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_identity_is_stable_and_admitted() {
        let me = std::process::id();
        let id = read(me).expect("own identity");
        assert!(id.exe.is_some());
        assert_ne!(id.start_stack, 0);
        let own = own_userns();
        let admitted = admit(me, id.start_time, own.as_deref(), false).expect("admitted");
        assert_eq!(confirm(me, &admitted), Ok(()));
        assert_eq!(admit(me, id.start_time + 1, own.as_deref(), false), Err(Skip::IdentityMismatch));
        assert_eq!(admit(me, id.start_time, Some("user:[1]"), false), Err(Skip::OtherUserNamespace));
        assert!(admit(me, id.start_time, Some("user:[1]"), true).is_ok());
        let exec_like = Identity { start_stack: id.start_stack ^ 0x1000, ..id.clone() };
        assert_eq!(confirm(me, &exec_like), Err(Skip::Changed));
        assert_eq!(read(u32::MAX), Err(Skip::Gone));
    }
}
