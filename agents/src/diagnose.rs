//! Stall diagnosis: two looks at a stalled process — when the stall is
//! detected and a window later — turned into a [`Diagnosis`].
//!
//! Causes, first match wins: `unknown` (the agent's start time was never
//! read, so neither look can be tied to it, or a look failed for a reason
//! other than the process being gone: denied, EMFILE…), `exited` (gone at
//! either look, or its pid now has another start time), `zombie` (main thread Z), `stopped` (a thread
//! in T/t: SIGSTOP or a tracer — `tracer_pid` says who), `spinning` (CPU
//! used over the window ≥ a fifth of a core: some thread is burning it),
//! `blocked_io` (a thread in D), else `waiting` (every thread asleep; the
//! dominant `wchan` tells on what, e.g. `futex_wait_queue` for a lock,
//! `do_epoll_wait` for an idle event loop).

use varta_processor::{Cause, Diagnosis, Wchan};

use crate::proc::{self, ProcError};

/// CPU over the window (per mille of one core) from which a stalled
/// process counts as spinning. A stalled process that waits uses ~0; one
/// spinning gets a whole core on an idle host and at least a fraction of
/// one on a loaded one — a fifth keeps the verdict stable under load.
pub const SPINNING_PERMILLE: u32 = 200;

/// One look at a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub pid: u32,
    pub start_time: u64,
    pub state: char,
    pub cpu_ticks: u64,
    pub rss_kib: u64,
    pub tracer_pid: u32,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    pub threads: Vec<proc::Thread>,
}

/// One look at host pid `pid`, or why there is none.
pub fn sample(pid: u32) -> Result<Sample, ProcError> {
    let stat = proc::stat_checked(pid)?;
    let status = proc::status_checked(pid)?;
    let threads = proc::threads(pid)?;
    // Our own evidence capture holding the main thread for a moment is no
    // debugger: the process is not `stopped` for it.
    let ours = status.tracer_pid != 0 && proc::traced_by_us(status.tracer_pid);
    Ok(Sample {
        pid,
        start_time: stat.start_time,
        state: if ours && stat.state == 't' { 'S' } else { stat.state },
        cpu_ticks: stat.cpu_ticks,
        rss_kib: status.rss_kib,
        tracer_pid: if ours { 0 } else { status.tracer_pid },
        voluntary_switches: status.voluntary_switches,
        involuntary_switches: status.involuntary_switches,
        threads,
    })
}

fn count(threads: &[proc::Thread], states: &[char]) -> u16 {
    u16::try_from(threads.iter().filter(|t| states.contains(&t.state)).count()).unwrap_or(u16::MAX)
}

/// The wait channel most sleeping threads are in; on a tie, the main
/// thread's (`tid == pid`), which is where most programs wait for work.
fn dominant_wchan(pid: u32, threads: &[proc::Thread]) -> Wchan {
    let mut counts: Vec<(&str, usize, bool)> = Vec::new();
    for t in threads.iter().filter(|t| t.state == 'S') {
        let Some(w) = t.wchan.as_deref() else { continue };
        let main = t.tid == pid;
        match counts.iter_mut().find(|(name, ..)| *name == w) {
            Some((_, n, m)) => {
                *n += 1;
                *m |= main;
            }
            None => counts.push((w, 1, main)),
        }
    }
    counts.iter().max_by_key(|(_, n, main)| (*n, *main)).map_or_else(Wchan::default, |(w, ..)| Wchan::new(w))
}

/// Judges a stall from the first look (`before`, at detection), the second
/// (`after`, `window_ns` later) and the agent's pinned start time (0 when
/// unknown). `clock_ticks` is `sysconf(_SC_CLK_TCK)`.
pub fn diagnose(
    pinned_start: u64,
    before: Result<&Sample, ProcError>,
    after: Result<&Sample, ProcError>,
    window_ns: u64,
    clock_ticks: u64,
) -> Diagnosis {
    let exited = Diagnosis {
        cause: Cause::Exited,
        threads: 0,
        running: 0,
        sleeping: 0,
        disk: 0,
        stopped: 0,
        cpu_permille: 0,
        rss_kib: 0,
        voluntary_switches: 0,
        involuntary_switches: 0,
        tracer_pid: 0,
        wchan: Wchan::default(),
        took_ms: u16::try_from(window_ns / 1_000_000).unwrap_or(u16::MAX),
    };
    if pinned_start == 0 {
        // Unknown identity: whatever the pid shows may be another process.
        return Diagnosis { cause: Cause::Unknown, ..exited };
    }
    let (b, a) = match (before, after) {
        (Ok(b), Ok(a)) => (b, a),
        // Only verified absence is `exited`: a look that was denied or
        // failed (EMFILE …) says nothing about the process.
        (Err(e), _) | (_, Err(e)) if e != ProcError::Gone => {
            return Diagnosis { cause: Cause::Unknown, ..exited };
        }
        _ => return exited,
    };
    let recycled = |s: &Sample| s.start_time != pinned_start;
    if recycled(b) || recycled(a) || a.start_time != b.start_time {
        return exited;
    }
    let ticks = a.cpu_ticks.saturating_sub(b.cpu_ticks);
    let cpu_ns = u128::from(ticks) * 1_000_000_000 / u128::from(clock_ticks.max(1));
    let cpu_permille = u32::try_from(cpu_ns * 1000 / u128::from(window_ns.max(1))).unwrap_or(u32::MAX);
    let t = &a.threads;
    let mut d = Diagnosis {
        cause: Cause::Waiting,
        threads: u16::try_from(t.len()).unwrap_or(u16::MAX),
        running: count(t, &['R']),
        sleeping: count(t, &['S', 'I']),
        disk: count(t, &['D']),
        stopped: count(t, &['T', 't']),
        cpu_permille,
        rss_kib: u32::try_from(a.rss_kib).unwrap_or(u32::MAX),
        voluntary_switches: u32::try_from(a.voluntary_switches.saturating_sub(b.voluntary_switches))
            .unwrap_or(u32::MAX),
        involuntary_switches: u32::try_from(a.involuntary_switches.saturating_sub(b.involuntary_switches))
            .unwrap_or(u32::MAX),
        tracer_pid: a.tracer_pid,
        wchan: dominant_wchan(a.pid, t),
        took_ms: exited.took_ms,
    };
    d.cause = if a.state == 'Z' || a.state == 'X' {
        Cause::Zombie
    } else if d.stopped > 0 || matches!(a.state, 'T' | 't') {
        Cause::Stopped
    } else if cpu_permille >= SPINNING_PERMILLE {
        Cause::Spinning
    } else if d.disk > 0 {
        Cause::BlockedIo
    } else {
        Cause::Waiting
    };
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread(state: char, wchan: Option<&str>) -> proc::Thread {
        proc::Thread { tid: 0, state, cpu_ticks: 0, wchan: wchan.map(str::to_owned) }
    }

    fn look(state: char, cpu: u64, threads: Vec<proc::Thread>) -> Sample {
        Sample {
            pid: 1,
            start_time: 500,
            state,
            cpu_ticks: cpu,
            rss_kib: 1000,
            tracer_pid: 0,
            voluntary_switches: 10,
            involuntary_switches: 1,
            threads,
        }
    }

    const W: u64 = 200_000_000;

    #[test]
    fn each_cause() {
        let sleeping = || {
            vec![
                thread('S', Some("futex_wait_queue")),
                thread('S', Some("futex_wait_queue")),
                thread('S', Some("do_epoll_wait")),
            ]
        };
        let d = diagnose(500, Ok(&look('S', 0, sleeping())), Ok(&look('S', 0, sleeping())), W, 100);
        assert_eq!(d.cause, Cause::Waiting);
        assert_eq!(d.wchan.as_str(), "futex_wait_queue");
        assert_eq!((d.threads, d.sleeping), (3, 3));

        let d = diagnose(
            500,
            Ok(&look('R', 0, vec![thread('R', None)])),
            Ok(&look('R', 20, vec![thread('R', None)])),
            W,
            100,
        );
        assert_eq!((d.cause, d.cpu_permille), (Cause::Spinning, 1000));

        let d = diagnose(
            500,
            Ok(&look('T', 0, vec![thread('T', None)])),
            Ok(&look('T', 0, vec![thread('T', None)])),
            W,
            100,
        );
        assert_eq!(d.cause, Cause::Stopped);

        let d = diagnose(
            500,
            Ok(&look('D', 0, vec![thread('D', None)])),
            Ok(&look('D', 1, vec![thread('D', None)])),
            W,
            100,
        );
        assert_eq!(d.cause, Cause::BlockedIo);

        let d = diagnose(500, Ok(&look('Z', 0, vec![])), Ok(&look('Z', 0, vec![])), W, 100);
        assert_eq!(d.cause, Cause::Zombie);

        let d = diagnose(500, Ok(&look('S', 0, sleeping())), Err(ProcError::Gone), W, 100);
        assert_eq!(d.cause, Cause::Exited);
        // A look that failed for another reason (an injected EMFILE, a
        // denied read) is not proof of exit: it once said `exited`, which
        // recovery's last check took for "gone".
        for failed in [ProcError::Other(libc::EMFILE), ProcError::Denied] {
            let d = diagnose(500, Ok(&look('S', 0, sleeping())), Err(failed), W, 100);
            assert_eq!(d.cause, Cause::Unknown, "{failed:?}");
            let d = diagnose(500, Err(failed), Err(ProcError::Gone), W, 100);
            assert_eq!(d.cause, Cause::Unknown, "{failed:?}");
        }
        let mut other = look('S', 0, sleeping());
        other.start_time = 999;
        let d = diagnose(500, Ok(&look('S', 0, sleeping())), Ok(&other), W, 100);
        assert_eq!(d.cause, Cause::Exited, "pid recycled: the agent is gone");
        // Unknown identity: even a clearly spinning pid is not judged.
        let d = diagnose(0, Ok(&look('R', 0, vec![])), Ok(&look('R', 100, vec![])), W, 100);
        assert_eq!(d.cause, Cause::Unknown, "start time never read");
    }

    #[test]
    fn a_live_look_at_ourselves() {
        let me = std::process::id();
        let a = sample(me).expect("we exist");
        assert!(!a.threads.is_empty());
        let b = sample(me).expect("we exist");
        let d = diagnose(a.start_time, Ok(&a), Ok(&b), W, proc::clock_ticks());
        assert_ne!(d.cause, Cause::Exited);
        assert!(d.threads >= 1);
    }
}
