//! Admission control in front of the tracker.
//!
//! Promises: O(1), allocation-free decisions in virtual time.
//! * Per agent: a beat is admitted only if at least `per_agent_min_interval`
//!   has passed since that agent's previous *admitted* beat (the timestamp
//!   lives in the agent's tracker slot; a beat from an unknown agent always
//!   passes). Counting admitted rather than accepted beats bounds all work an
//!   agent can cause, including start-time probes on nonce regressions.
//! * Global: a token bucket of `global_burst` tokens refilled at
//!   `global_rate` tokens/s (exact integer arithmetic in nano-tokens), full
//!   at start. Each admitted beat takes one token.
//!
//! Zero disables either limit.

use crate::config::RateLimitConfig;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The two limits of the `ratelimit` processor.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    min_interval_ns: u64,
    bucket: Option<TokenBucket>,
}

impl RateLimiter {
    /// A limiter for a validated config; `None` admits everything.
    pub fn new(config: Option<&RateLimitConfig>) -> RateLimiter {
        let Some(config) = config else {
            return RateLimiter { min_interval_ns: 0, bucket: None };
        };
        let min_interval_ns = u64::try_from(config.per_agent_min_interval.as_nanos()).unwrap_or(u64::MAX);
        let bucket =
            (config.global_rate > 0).then(|| TokenBucket::new(config.global_rate, config.global_burst));
        RateLimiter { min_interval_ns, bucket }
    }

    /// Whether an agent whose previous admitted beat was at `last_admitted_ns`
    /// (`None`: never) may beat at `now_ns`.
    #[inline]
    pub fn admits_agent(&self, last_admitted_ns: Option<u64>, now_ns: u64) -> bool {
        match last_admitted_ns {
            Some(last) if self.min_interval_ns > 0 => now_ns.saturating_sub(last) >= self.min_interval_ns,
            _ => true,
        }
    }

    /// Takes one global token at `now_ns`, if there is one.
    #[inline]
    pub fn take_global(&mut self, now_ns: u64) -> bool {
        match &mut self.bucket {
            Some(bucket) => bucket.take(now_ns),
            None => true,
        }
    }
}

/// A token bucket counted in nano-tokens (1 token = 10⁹) so that refills of
/// a fraction of a token per nanosecond are exact.
#[derive(Debug, Clone)]
struct TokenBucket {
    rate_per_sec: u64,
    capacity_nano: u64,
    tokens_nano: u64,
    last_ns: Option<u64>,
}

impl TokenBucket {
    fn new(rate_per_sec: u64, burst: u64) -> TokenBucket {
        let capacity_nano = burst.max(1).saturating_mul(NANOS_PER_SEC);
        TokenBucket { rate_per_sec, capacity_nano, tokens_nano: capacity_nano, last_ns: None }
    }

    fn take(&mut self, now_ns: u64) -> bool {
        if let Some(last) = self.last_ns {
            let elapsed = now_ns.saturating_sub(last);
            let refill = elapsed.saturating_mul(self.rate_per_sec);
            self.tokens_nano = self.tokens_nano.saturating_add(refill).min(self.capacity_nano);
        }
        self.last_ns = Some(self.last_ns.map_or(now_ns, |last| last.max(now_ns)));
        if self.tokens_nano >= NANOS_PER_SEC {
            self.tokens_nano -= NANOS_PER_SEC;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limiter(interval_ms: u64, rate: u64, burst: u64) -> RateLimiter {
        RateLimiter::new(Some(&RateLimitConfig {
            per_agent_min_interval: Duration::from_millis(interval_ms),
            global_rate: rate,
            global_burst: burst,
        }))
    }

    #[test]
    fn per_agent_interval() {
        let rl = limiter(10, 0, 0);
        assert!(rl.admits_agent(None, 0));
        assert!(!rl.admits_agent(Some(100), 100 + 9_999_999));
        assert!(rl.admits_agent(Some(100), 100 + 10_000_000));
        let off = limiter(0, 0, 0);
        assert!(off.admits_agent(Some(100), 100));
    }

    #[test]
    fn global_bucket_bursts_then_refills_at_rate() {
        let mut rl = limiter(0, 1000, 5); // 1 token per ms, burst 5
        let t0 = 1_000_000_000;
        assert_eq!((0..10).filter(|_| rl.take_global(t0)).count(), 5);
        assert!(!rl.take_global(t0 + 999_999));
        assert!(rl.take_global(t0 + 1_000_000));
        assert!(!rl.take_global(t0 + 1_000_000));
        // A long pause refills only up to the burst.
        assert_eq!((0..10).filter(|_| rl.take_global(t0 + 60 * NANOS_PER_SEC)).count(), 5);
    }

    #[test]
    fn zero_rate_disables_global() {
        let mut rl = limiter(0, 0, 0);
        assert!((0..10_000).all(|_| rl.take_global(5)));
        let mut none = RateLimiter::new(None);
        assert!((0..10_000).all(|_| none.take_global(5)));
    }
}
