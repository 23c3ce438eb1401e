//! Signal handling without async-signal-safety hazards: SIGINT, SIGTERM,
//! SIGHUP and SIGUSR1 are blocked in every thread (the mask is set before
//! any thread starts and inherited) and collected synchronously by the main
//! thread with `sigtimedwait`.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Terminate(i32),
    Hangup,
    DumpStats,
}

fn set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local sigset_t.
    unsafe {
        let mut s: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut s);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1] {
            libc::sigaddset(&mut s, sig);
        }
        s
    }
}

/// Blocks the handled signals in the calling thread (call before spawning).
pub fn block() -> std::io::Result<()> {
    let s = set();
    // SAFETY: `s` is a valid, initialised signal set; old set not requested.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &s, std::ptr::null_mut()) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::from_raw_os_error(rc)) }
}

/// Waits up to `timeout` for one of the handled signals.
pub fn wait(timeout: Duration) -> Option<Signal> {
    let s = set();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: valid set and timespec; siginfo not requested (null is allowed).
    let sig = unsafe { libc::sigtimedwait(&s, std::ptr::null_mut(), &ts) };
    match sig {
        libc::SIGINT | libc::SIGTERM => Some(Signal::Terminate(sig)),
        libc::SIGHUP => Some(Signal::Hangup),
        libc::SIGUSR1 => Some(Signal::DumpStats),
        _ => None, // timeout (EAGAIN) or EINTR
    }
}
