//! Processor time → wall-clock time for span timestamps.
//!
//! The processor stamps events with a monotonic (or boottime) clock, which
//! never steps; OTLP wants Unix-epoch nanoseconds. We keep an offset
//! (wall clock − processor clock), taken when the exporter starts. Every
//! conversion takes a fresh offset and compares: if the wall clock has
//! stepped (NTP correction, manual `date`, VM resume) by more than
//! [`STEP_NS`], the fresh offset replaces the stored one and the step is
//! counted. Smaller differences are reading jitter or slewing and are
//! ignored, so timestamps of one incident stay consistent with each other.
//! An event that happened before a step is converted with the offset in
//! force when it is exported (at most a few milliseconds later).

use std::time::{SystemTime, UNIX_EPOCH};

use varta_processor::clock::Clock;

/// A wall-clock step larger than this re-takes the offset.
pub const STEP_NS: i128 = 1_000_000_000;

/// Converts processor-clock readings to Unix nanoseconds. A clone keeps
/// the offset measured so far (views of one pipeline agree on times).
#[derive(Debug, Clone)]
pub struct WallClock {
    clock: Clock,
    offset_ns: i128,
    steps: u64,
}

/// Wall clock now, in Unix nanoseconds (0 before 1970).
pub fn unix_now_ns() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128)
}

impl WallClock {
    pub fn new(clock: Clock) -> WallClock {
        WallClock { clock, offset_ns: Self::measure(clock), steps: 0 }
    }

    fn measure(clock: Clock) -> i128 {
        unix_now_ns() - i128::from(clock.now_ns())
    }

    /// Re-measures the offset, adopting it if the wall clock stepped.
    /// Returns whether it did.
    pub fn check_step(&mut self) -> bool {
        self.observe(Self::measure(self.clock))
    }

    /// Adopts `fresh` if it differs from the stored offset by more than [`STEP_NS`].
    pub fn observe(&mut self, fresh: i128) -> bool {
        if (fresh - self.offset_ns).abs() > STEP_NS {
            self.offset_ns = fresh;
            self.steps += 1;
            true
        } else {
            false
        }
    }

    /// Unix nanoseconds of processor-clock reading `at_ns` (clamped to u64).
    pub fn to_unix_ns(&self, at_ns: u64) -> u64 {
        (i128::from(at_ns) + self.offset_ns).clamp(0, i128::from(u64::MAX)) as u64
    }

    /// Wall-clock steps seen so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_maps_to_now() {
        let w = WallClock::new(Clock::Monotonic);
        let converted = i128::from(w.to_unix_ns(Clock::Monotonic.now_ns()));
        assert!((converted - unix_now_ns()).abs() < 1_000_000_000);
        let w = WallClock::new(Clock::Boottime);
        let converted = i128::from(w.to_unix_ns(Clock::Boottime.now_ns()));
        assert!((converted - unix_now_ns()).abs() < 1_000_000_000);
    }

    #[test]
    fn jitter_is_ignored_steps_are_adopted() {
        let mut w = WallClock { clock: Clock::Monotonic, offset_ns: 1_000_000_000_000, steps: 0 };
        assert!(!w.observe(1_000_000_000_000 + 999_999_999));
        assert_eq!(w.to_unix_ns(5), 1_000_000_000_005);
        assert!(w.observe(1_000_000_000_000 - 2_000_000_000), "a step back by 2 s");
        assert_eq!(w.to_unix_ns(5), 998_000_000_005);
        assert_eq!(w.steps(), 1);
        assert!(!w.check_step() || w.steps() == 2);
    }

    #[test]
    fn conversion_never_wraps() {
        let w = WallClock { clock: Clock::Monotonic, offset_ns: -10, steps: 0 };
        assert_eq!(w.to_unix_ns(3), 0);
    }
}
