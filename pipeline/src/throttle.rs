//! Log throttling: a problem that repeats (refused datagrams, socket errors,
//! export failures) is logged at most once per interval, and that line
//! carries how many occurrences it stands for — so a flood cannot flood the
//! log, and nothing is hidden.

/// The interval every component uses unless it has a reason not to.
pub const LOG_INTERVAL_NS: u64 = 10_000_000_000;

/// One throttled problem. Owned by the thread that sees the problem.
#[derive(Debug, Clone, Copy)]
pub struct LogThrottle {
    interval_ns: u64,
    last_ns: Option<u64>,
    pending: u64,
}

impl Default for LogThrottle {
    fn default() -> Self {
        LogThrottle::new(LOG_INTERVAL_NS)
    }
}

impl LogThrottle {
    pub const fn new(interval_ns: u64) -> LogThrottle {
        LogThrottle { interval_ns, last_ns: None, pending: 0 }
    }

    /// Records one occurrence at `now_ns` (any monotonic clock). Returns
    /// `Some(count)` when a line is due now — `count` occurrences since the
    /// last line, this one included — and `None` while throttled.
    pub fn note(&mut self, now_ns: u64) -> Option<u64> {
        self.pending += 1;
        let due = self.last_ns.is_none_or(|t| now_ns.saturating_sub(t) >= self.interval_ns);
        if !due {
            return None;
        }
        self.last_ns = Some(now_ns);
        Some(std::mem::take(&mut self.pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_logs_then_counts_until_the_interval_passes() {
        let mut t = LogThrottle::new(10);
        assert_eq!(t.note(100), Some(1));
        assert_eq!(t.note(101), None);
        assert_eq!(t.note(109), None);
        assert_eq!(t.note(110), Some(3), "two throttled + this one");
        assert_eq!(t.note(111), None);
    }
}
