//! Each agent's typical beat interval, learned from its own beats in three
//! bytes of its slot (a million agents: 3 MB).
//!
//! The estimate is a decaying high quantile of the gaps between accepted
//! beats: while warming up it is the largest gap seen (conservative); then
//! each gap above it raises it by at most 1/8 of an octave and each gap at
//! or below it lowers it by 1/64 of an octave — settling near the 90th
//! percentile of recent gaps, so one late beat moves it a little and a
//! beat that really slowed down is followed within a few beats. Gaps are
//! stored as [`Code`]s: a 16-bit float with 10 bits of mantissa (0.1 %
//! resolution) covering every `u64` of nanoseconds.
//!
//! Stalls do not teach it: the processor calls [`Learned::forget`] when
//! an agent resumes, and a new incarnation starts from nothing.

/// A duration in nanoseconds as a monotone 16-bit code (exact below 1,024 ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Code(u16);

const MANTISSA_BITS: u32 = 10;
const MANTISSA: u64 = 1 << MANTISSA_BITS;

impl Code {
    pub fn of_ns(ns: u64) -> Code {
        if ns < MANTISSA {
            return Code(ns as u16);
        }
        // ns in [2^(e+9), 2^(e+10)) with e ≥ 1; keep its top 10 bits below the leading one.
        let e = u64::from(63 - ns.leading_zeros()) - u64::from(MANTISSA_BITS) + 1;
        let m = (ns >> (e - 1)) - MANTISSA;
        Code((e * MANTISSA + m) as u16)
    }

    pub fn ns(self) -> u64 {
        let (e, m) = (u64::from(self.0) >> MANTISSA_BITS, u64::from(self.0) & (MANTISSA - 1));
        if e == 0 { m } else { (MANTISSA + m) << (e - 1) }
    }

    pub(crate) fn raw(self) -> u16 {
        self.0
    }

    pub(crate) fn from_raw(raw: u16) -> Code {
        Code(raw)
    }
}

/// Largest rise per late gap: 1/8 octave (≈ 9 %).
const RISE: u16 = (MANTISSA / 8) as u16;
/// Fall per gap at or below the estimate: 1/64 octave (≈ 1 %).
const FALL: u16 = (MANTISSA / 64) as u16;

/// One agent's learning state (3 bytes; lives in its tracker slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Learned {
    interval: Code,
    /// Gaps seen since the agent started (or last resumed), saturating.
    gaps: u8,
}

impl Learned {
    /// Feeds the gap between two accepted beats.
    pub fn observe(&mut self, gap_ns: u64, warmup: u8) {
        let gap = Code::of_ns(gap_ns);
        if self.gaps < warmup {
            self.interval = self.interval.max(gap);
        } else if gap > self.interval {
            self.interval = Code(self.interval.raw() + RISE.min(gap.raw() - self.interval.raw()));
        } else {
            self.interval = Code(self.interval.raw().saturating_sub(FALL).max(1));
        }
        self.gaps = self.gaps.saturating_add(1);
    }

    /// The typical interval once `warmup` gaps have been seen.
    pub fn interval_ns(&self, warmup: u8) -> Option<u64> {
        (self.gaps >= warmup).then(|| self.interval.ns())
    }

    /// [`Learned::interval_ns`] as a code (what class tables are indexed by).
    pub fn interval_code(&self, warmup: u8) -> Option<Code> {
        (self.gaps >= warmup).then_some(self.interval)
    }

    /// Starts over (the agent resumed after a stall).
    pub fn forget(&mut self) {
        *self = Learned::default();
    }

    /// As stored in a tracker slot (the gap count shares a byte there).
    pub(crate) fn from_parts(interval: Code, gaps: u8) -> Learned {
        Learned { interval, gaps }
    }

    pub(crate) fn parts(self) -> (Code, u8) {
        (self.interval, self.gaps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn codes_are_monotone_and_within_a_thousandth(a in any::<u64>(), b in any::<u64>()) {
            let (lo, hi) = (a.min(b), a.max(b));
            prop_assert!(Code::of_ns(lo) <= Code::of_ns(hi));
            let back = Code::of_ns(a).ns();
            prop_assert!(back <= a && a - back <= a / 1024, "{a} -> {back}");
        }
    }

    #[test]
    fn small_values_are_exact() {
        for ns in [0, 1, 999, 1023, 1024, 2047] {
            assert_eq!(Code::of_ns(ns).ns(), ns);
        }
    }

    #[test]
    fn warms_up_then_one_late_beat_moves_it_little() {
        let mut l = Learned::default();
        for _ in 0..7 {
            l.observe(100_000_000, 8);
        }
        assert_eq!(l.interval_ns(8), None);
        l.observe(101_000_000, 8);
        let warm = l.interval_ns(8).unwrap_or(0);
        assert!((100_900_000..=101_000_000).contains(&warm), "{warm}");
        l.observe(1_000_000_000, 8);
        let late = l.interval_ns(8).unwrap_or(0);
        assert!(late < warm * 11 / 10, "one late beat: {warm} -> {late}");
        for _ in 0..50 {
            l.observe(100_000_000, 8);
        }
        let settled = l.interval_ns(8).unwrap_or(0);
        // It hovers at the gap and one fall step (≈ 1 %) below it.
        assert!((98_000_000..=101_000_000).contains(&settled), "{settled}");
    }

    #[test]
    fn follows_a_real_slowdown_within_a_few_beats() {
        let mut l = Learned::default();
        for _ in 0..20 {
            l.observe(100_000_000, 8);
        }
        let mut beats = 0;
        while l.interval_ns(8).unwrap_or(0) < 290_000_000 {
            l.observe(300_000_000, 8);
            beats += 1;
            assert!(beats < 30, "still {:?}", l.interval_ns(8));
        }
    }

    #[test]
    fn forget_rewarms() {
        let mut l = Learned::default();
        for _ in 0..10 {
            l.observe(50_000_000, 8);
        }
        assert!(l.interval_ns(8).is_some());
        l.forget();
        assert_eq!(l.interval_ns(8), None);
    }
}
