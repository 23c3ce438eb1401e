//! One recovery command's life as a process group: spawned from an argv
//! (never a shell) into a group of its own with a clean environment and
//! signal mask, its output read without blocking (every byte counted, the
//! first `cap` kept), SIGTERM to the whole group at its timeout, SIGKILL
//! after the grace, and done only when its leader exited *and* its group is
//! gone — so what a command starts in the background cannot outlive it.
//!
//! No decisions here (see [`super::gate`]) and no bookkeeping (see
//! [`super::runner`]): just the child.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How a command is started (from the recovery settings).
#[derive(Debug, Clone, Copy)]
pub(super) struct Launch<'a> {
    pub env: &'a BTreeMap<String, String>,
    pub inherit_env: bool,
}

/// A running command and what it has said so far.
#[derive(Debug)]
pub(super) struct Running {
    child: Child,
    pub started: Instant,
    /// The leader's exit status, once it exited (its group may live on).
    pub exited: Option<ExitStatus>,
    /// When the group got SIGTERM (timeout or shutdown).
    pub terminated_at: Option<Instant>,
    pub killed: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_total: u64,
    pub stderr_total: u64,
}

/// Its leader's pid, which is also its group's id.
impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Starts `argv` in a process group of its own.
pub(super) fn spawn(argv: &[String], launch: Launch<'_>) -> std::io::Result<Running> {
    let Some((program, args)) = argv.split_first() else {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty argv"));
    };
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // Its own process group: timeouts and shutdown signal the group, so
    // what the command starts cannot outlive it.
    cmd.process_group(0);
    if !launch.inherit_env {
        cmd.env_clear().env("PATH", "/usr/bin:/bin");
    }
    cmd.envs(launch.env);
    // The collector blocks its termination signals (it waits for them
    // with sigwait) and a signal mask survives exec: give the command
    // the default mask, or it could not be stopped with SIGTERM.
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    for fd in [child.stdout.as_ref().map(|s| s.as_raw_fd()), child.stderr.as_ref().map(|s| s.as_raw_fd())]
        .into_iter()
        .flatten()
    {
        // SAFETY: fcntl on pipe descriptors we own; only flags change.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
    Ok(Running {
        child,
        started: Instant::now(),
        exited: None,
        terminated_at: None,
        killed: false,
        stdout: Vec::new(),
        stderr: Vec::new(),
        stdout_total: 0,
        stderr_total: 0,
    })
}

impl Running {
    /// Reads what its pipes hold now (keeping the first `cap` bytes of each).
    pub fn drain(&mut self, cap: usize) {
        if let Some(p) = self.child.stdout.as_mut() {
            drain_pipe(p, &mut self.stdout, &mut self.stdout_total, cap);
        }
        if let Some(p) = self.child.stderr.as_mut() {
            drain_pipe(p, &mut self.stderr, &mut self.stderr_total, cap);
        }
    }

    /// One look: reads output, reaps the leader, enforces the timeout
    /// (SIGTERM to the group, SIGKILL `kill_grace` later; with `kill_all`
    /// the SIGTERM is now). `true` once the command is done (leader exited,
    /// group gone, output read to the end).
    pub fn tend(&mut self, cap: usize, timeout: Duration, kill_grace: Duration, kill_all: bool) -> bool {
        self.drain(cap);
        if self.exited.is_none() {
            match self.child.try_wait() {
                Ok(Some(status)) => self.exited = Some(status),
                Ok(None) => {}
                Err(e) => tracing::warn!("cannot wait for a recovery command: {e}"),
            }
        }
        let pgid = self.pid() as libc::pid_t;
        if self.exited.is_some() && !group_alive(pgid) {
            // Whatever it wrote right before exiting is still in the pipes.
            self.drain(cap);
            return true;
        }
        match self.terminated_at {
            None if kill_all || self.started.elapsed() >= timeout => {
                signal_group(pgid, libc::SIGTERM);
                self.terminated_at = Some(Instant::now());
            }
            Some(t) if !self.killed && t.elapsed() >= kill_grace => {
                signal_group(pgid, libc::SIGKILL);
                self.killed = true;
            }
            _ => {}
        }
        false
    }

    /// SIGKILL to the group, then reaps the leader and reads the output
    /// (shutdown, past its deadline).
    pub fn kill(&mut self, cap: usize) {
        signal_group(self.pid() as libc::pid_t, libc::SIGKILL);
        self.killed = true;
        if self.exited.is_none() {
            self.exited = self.child.wait().ok();
        }
        self.drain(cap);
    }
}

/// Reads what a non-blocking pipe holds: counts every byte, keeps the
/// first `cap`, until end of file or until it would block.
fn drain_pipe(pipe: &mut impl Read, kept: &mut Vec<u8>, total: &mut u64, cap: usize) {
    let mut chunk = [0u8; 4096];
    loop {
        match pipe.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => {
                *total += n as u64;
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..n.min(room)]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Captured output as one log-safe line: control characters (newlines
/// included) and invalid UTF-8 are escaped.
pub(super) fn escaped(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).escape_debug().to_string()
}

/// Whether any process of group `pgid` is left.
fn group_alive(pgid: libc::pid_t) -> bool {
    // SAFETY: kill(2) with signal 0 only checks for existence.
    let r = unsafe { libc::kill(-pgid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn signal_group(pgid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill(2) on the process group we created for our child
    // (its leader's pid; the group cannot be reused while it has members).
    unsafe { libc::kill(-pgid, sig) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command that starts a background sleep and ignores SIGTERM is gone,
    /// group and all, after its timeout and grace; its output is kept.
    #[test]
    fn a_stubborn_group_is_killed_and_its_output_kept() {
        let env = BTreeMap::new();
        let argv: Vec<String> =
            ["/bin/sh", "-c", "trap '' TERM; echo hello; sleep 60 & wait"].map(String::from).to_vec();
        let mut c = spawn(&argv, Launch { env: &env, inherit_env: false }).expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(20);
        // Running (its trap set, its sleep started) before the timeout applies.
        while c.stdout.is_empty() {
            assert!(!c.tend(4096, Duration::from_secs(3600), Duration::from_secs(3600), false));
            assert!(Instant::now() < deadline, "no output");
            std::thread::sleep(Duration::from_millis(5));
        }
        while !c.tend(4096, Duration::ZERO, Duration::from_millis(50), false) {
            assert!(Instant::now() < deadline, "the group never ended");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(c.killed && c.terminated_at.is_some());
        assert_eq!(c.stdout, b"hello\n");
        assert!(!group_alive(c.pid() as libc::pid_t));
    }
}
