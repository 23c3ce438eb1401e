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
//! * Shared with attested receivers: plain-UDP beats (whose pids nobody
//!   proves) take their token from a second bucket too, of
//!   `unauthenticated_share` of the global rate and burst, so a flood of
//!   them can spend at most that share of the global budget: attested
//!   agents keep the rest (`rate_limited{reason="unauthenticated_share"}`).
//!
//! Zero disables either limit.

use crate::config::RateLimitConfig;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The two limits of the `ratelimit` processor.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    min_interval_ns: u64,
    bucket: Option<TokenBucket>,
    /// Plain UDP's share of `bucket`, when it shares the pipeline with
    /// attested receivers.
    unauthenticated: Option<TokenBucket>,
    global: Option<(u64, u64)>,
}

impl RateLimiter {
    /// A limiter for a validated config; `None` admits everything.
    pub fn new(config: Option<&RateLimitConfig>) -> RateLimiter {
        let Some(config) = config else {
            return RateLimiter { min_interval_ns: 0, bucket: None, unauthenticated: None, global: None };
        };
        let min_interval_ns = u64::try_from(config.per_agent_min_interval.as_nanos()).unwrap_or(u64::MAX);
        let global = (config.global_rate > 0).then_some((config.global_rate, config.global_burst));
        let bucket = global.map(|(rate, burst)| TokenBucket::new(rate, burst));
        RateLimiter { min_interval_ns, bucket, unauthenticated: None, global }
    }

    /// Gives plain-UDP beats `share` of the global bucket (`None`: they
    /// share it freely, as when the pipeline has no attested receiver).
    pub fn set_unauthenticated_share(&mut self, share: Option<f64>) {
        self.unauthenticated = match (share, self.global) {
            (Some(share), Some((rate, burst))) if share < 1.0 => {
                let part = |n: u64| ((n as f64 * share) as u64).max(1);
                Some(TokenBucket::new(part(rate), part(burst)))
            }
            _ => None,
        };
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

    /// Takes a token for a beat at `now_ns`: from plain UDP's share first
    /// when `unauthenticated`, then from the global bucket. The reason
    /// when refused.
    #[inline]
    pub fn take(&mut self, now_ns: u64, unauthenticated: bool) -> Result<(), crate::RateLimitReason> {
        if unauthenticated && let Some(share) = &mut self.unauthenticated {
            if !share.peek(now_ns) {
                return Err(crate::RateLimitReason::UnauthenticatedShare);
            }
            let global = match &mut self.bucket {
                Some(bucket) => bucket.take(now_ns),
                None => true,
            };
            if !global {
                return Err(crate::RateLimitReason::Global);
            }
            share.take(now_ns);
            return Ok(());
        }
        if self.take_global(now_ns) { Ok(()) } else { Err(crate::RateLimitReason::Global) }
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

    /// Refills up to `now_ns`; whether a whole token is there.
    fn peek(&mut self, now_ns: u64) -> bool {
        if let Some(last) = self.last_ns {
            let elapsed = now_ns.saturating_sub(last);
            let refill = elapsed.saturating_mul(self.rate_per_sec);
            self.tokens_nano = self.tokens_nano.saturating_add(refill).min(self.capacity_nano);
        }
        self.last_ns = Some(self.last_ns.map_or(now_ns, |last| last.max(now_ns)));
        self.tokens_nano >= NANOS_PER_SEC
    }

    fn take(&mut self, now_ns: u64) -> bool {
        if self.peek(now_ns) {
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
