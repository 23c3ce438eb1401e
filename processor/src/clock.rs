//! The processor's clock and its sanity guard.
//!
//! Promises: [`Clock::now_ns`] reads `CLOCK_MONOTONIC` or `CLOCK_BOOTTIME`
//! (`clock_gettime`) and never fails. [`ClockGuard`] turns raw readings into
//! the processor's time, which never goes backwards: a reading below the
//! previous one is clamped to it and reported as
//! [`ClockAnomalyKind::Backwards`]; a reading that lands more than
//! [`FORWARD_JUMP_NS`] past both the previous reading and the deadline the
//! processor was waiting for is reported as [`ClockAnomalyKind::ForwardJump`]
//! (the host was suspended, or the loop was wedged). Because the processor
//! sleeps until its next deadline rather than polling, a long gap between
//! readings is only suspicious when a deadline was due during it.

use serde::Deserialize;

/// Which kernel clock the processor reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Clock {
    /// `CLOCK_MONOTONIC`: stops while the host is suspended.
    #[default]
    Monotonic,
    /// `CLOCK_BOOTTIME`: keeps counting through suspend (Linux).
    Boottime,
}

impl Clock {
    /// Current reading in nanoseconds.
    pub fn now_ns(self) -> u64 {
        let id = match self {
            Clock::Monotonic => libc::CLOCK_MONOTONIC,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Clock::Boottime => libc::CLOCK_BOOTTIME,
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            Clock::Boottime => libc::CLOCK_MONOTONIC,
        };
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid, writable timespec and `id` a clock id the
        // platform defines; clock_gettime writes only into `ts`.
        let rc = unsafe { libc::clock_gettime(id, &mut ts) };
        if rc != 0 {
            // Cannot happen for these clock ids; a zero reading is clamped by ClockGuard.
            return 0;
        }
        let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
        let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
        secs.saturating_mul(1_000_000_000).saturating_add(nanos)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Clock::Monotonic => "monotonic",
            Clock::Boottime => "boottime",
        }
    }
}

/// A forward step larger than this past an expected wake-up is an anomaly.
pub const FORWARD_JUMP_NS: u64 = 5_000_000_000;

/// What was wrong with a clock reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClockAnomalyKind {
    /// The reading was lower than the previous one; it was clamped.
    Backwards,
    /// The reading jumped more than 5 s past a due deadline.
    ForwardJump,
}

impl ClockAnomalyKind {
    pub const fn label(self) -> &'static str {
        match self {
            ClockAnomalyKind::Backwards => "backwards",
            ClockAnomalyKind::ForwardJump => "forward_jump",
        }
    }
}

/// Keeps the processor's time monotonic and notices anomalies.
#[derive(Debug, Clone, Default)]
pub struct ClockGuard {
    last_ns: Option<u64>,
}

impl ClockGuard {
    pub const fn new() -> ClockGuard {
        ClockGuard { last_ns: None }
    }

    /// Accepts a raw reading. `expected_wake_ns` is the earliest deadline the
    /// processor had pending (if any). Returns the time to use (never below
    /// the previous one) and the anomaly, if there was one.
    pub fn observe(&mut self, raw_ns: u64, expected_wake_ns: Option<u64>) -> (u64, Option<ClockAnomalyKind>) {
        let Some(last) = self.last_ns else {
            self.last_ns = Some(raw_ns);
            return (raw_ns, None);
        };
        if raw_ns < last {
            return (last, Some(ClockAnomalyKind::Backwards));
        }
        self.last_ns = Some(raw_ns);
        let past_last = raw_ns - last > FORWARD_JUMP_NS;
        let past_wake = expected_wake_ns.is_some_and(|wake| raw_ns.saturating_sub(wake) > FORWARD_JUMP_NS);
        let anomaly = (past_last && past_wake).then_some(ClockAnomalyKind::ForwardJump);
        (raw_ns, anomaly)
    }

    /// The last accepted time, if any reading was seen.
    pub fn last_ns(&self) -> Option<u64> {
        self.last_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_advance() {
        for clock in [Clock::Monotonic, Clock::Boottime] {
            let a = clock.now_ns();
            let b = clock.now_ns();
            assert!(a > 0 && b >= a, "{clock:?}: {a} then {b}");
        }
    }

    #[test]
    fn backwards_is_clamped() {
        let mut g = ClockGuard::new();
        assert_eq!(g.observe(100, None), (100, None));
        assert_eq!(g.observe(50, None), (100, Some(ClockAnomalyKind::Backwards)));
        assert_eq!(g.observe(120, None), (120, None));
    }

    #[test]
    fn forward_jump_only_past_a_due_deadline() {
        let mut g = ClockGuard::new();
        g.observe(0, None);
        // Idle for a minute with nothing due: expected.
        assert_eq!(g.observe(60_000_000_000, None), (60_000_000_000, None));
        // Woke 6 s after a deadline at 61 s.
        let (t, a) = g.observe(67_000_000_001, Some(61_000_000_000));
        assert_eq!((t, a), (67_000_000_001, Some(ClockAnomalyKind::ForwardJump)));
        // Slept until a deadline 30 s away and woke on time.
        assert_eq!(g.observe(97_000_000_001, Some(97_000_000_000)).1, None);
    }
}
