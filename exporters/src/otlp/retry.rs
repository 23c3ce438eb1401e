//! What a failed export means and how long to wait before the next try:
//! the one retry policy of both OTLP transports, a leaf that imports no
//! transport (they import it).

use std::future::Future;
use std::time::{Duration, Instant};

use super::config::RetryConfig;

/// What a failed call means for the data it carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Worth trying again later (backend down, overloaded, slow); `after`
    /// is the server's `Retry-After`, when it gave one.
    Retryable { message: String, after: Option<Duration> },
    /// The backend will never take it (bad request, unauthenticated …).
    Permanent(String),
}

impl Failure {
    pub fn retryable(message: impl Into<String>) -> Failure {
        Failure::Retryable { message: message.into(), after: None }
    }

    pub fn message(&self) -> &str {
        match self {
            Failure::Retryable { message, .. } | Failure::Permanent(message) => message,
        }
    }
}

/// Exponential backoff of one batch, with jitter (the Collector's
/// `configretry`, which the OTLP specification asks for).
#[derive(Debug)]
pub struct Backoff {
    policy: RetryConfig,
    next: Duration,
    started: Instant,
    /// xorshift state, seeded per batch from the process's random hasher keys.
    random: u64,
}

impl Backoff {
    pub fn new(policy: RetryConfig) -> Backoff {
        use std::hash::{BuildHasher, Hasher};
        let mut seed = std::collections::hash_map::RandomState::new().build_hasher();
        seed.write_u64(0x5eed);
        Backoff { policy, next: policy.initial_interval, started: Instant::now(), random: seed.finish() | 1 }
    }

    /// A number in `[0, 1)`.
    fn uniform(&mut self) -> f64 {
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        (self.random >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Whether waiting `wait` more stays within `max_elapsed_time`. `wait`
    /// may come from a backend (`Retry-After`), so any value is answered,
    /// never overflowed: a wait past `Duration::MAX` does not fit.
    pub fn allows(&self, wait: Duration) -> bool {
        self.started.elapsed().checked_add(wait).is_some_and(|end| end <= self.policy.max_elapsed_time)
    }

    /// The wait before the next attempt, or `None` when it is time to give up.
    pub fn next_wait(&mut self) -> Option<Duration> {
        if !self.policy.enabled {
            return None;
        }
        let elapsed = self.started.elapsed();
        if elapsed >= self.policy.max_elapsed_time {
            return None;
        }
        let interval = self.next;
        let grown = interval.as_secs_f64() * self.policy.multiplier;
        self.next = Duration::try_from_secs_f64(grown).unwrap_or(Duration::MAX).min(self.policy.max_interval);
        let f = self.policy.randomization_factor;
        let jittered = interval.as_secs_f64() * (1.0 - f + 2.0 * f * self.uniform());
        let wait = Duration::try_from_secs_f64(jittered).unwrap_or(interval);
        Some(wait.min(self.policy.max_elapsed_time - elapsed))
    }
}

/// Runs `attempt` until it succeeds, fails permanently, the backoff gives
/// up, or `stop` resolves (the exporter is closing: one last attempt was
/// made). Calls `on_retry` before each wait.
pub async fn with_retry<T, F, Fut, S, SF>(
    policy: RetryConfig,
    mut attempt: F,
    mut stop: S,
    mut on_retry: impl FnMut(&Failure),
) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
    S: FnMut() -> SF,
    SF: Future<Output = ()>,
{
    let mut backoff = Backoff::new(policy);
    loop {
        let failure = match attempt().await {
            Ok(v) => return Ok(v),
            Err(f @ Failure::Permanent(_)) => return Err(f),
            Err(f) => f,
        };
        let Some(wait) = backoff.next_wait() else { return Err(failure) };
        // The server asked for a longer pause: honour it, unless it would
        // outlast the retry budget (then give up now, counted).
        let wait = match &failure {
            Failure::Retryable { after: Some(after), .. } if *after > wait => {
                if !backoff.allows(*after) {
                    return Err(failure);
                }
                *after
            }
            _ => wait,
        };
        on_retry(&failure);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop() => return Err(failure),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_gives_up() {
        let mut b = Backoff::new(RetryConfig {
            enabled: true,
            initial_interval: Duration::from_millis(100),
            multiplier: 2.0,
            randomization_factor: 0.0,
            max_interval: Duration::from_millis(300),
            max_elapsed_time: Duration::from_secs(3600),
        });
        let waits: Vec<_> = (0..4).filter_map(|_| b.next_wait()).collect();
        assert_eq!(waits, [100, 200, 300, 300].map(Duration::from_millis));
        let mut off = Backoff::new(RetryConfig { enabled: false, ..RetryConfig::default() });
        assert_eq!(off.next_wait(), None);
        let mut expired =
            Backoff::new(RetryConfig { max_elapsed_time: Duration::ZERO, ..RetryConfig::default() });
        assert_eq!(expired.next_wait(), None);
    }

    /// Waits grow by `multiplier` and are spread by `randomization_factor`
    /// around it (the specification's jitter): never outside the band,
    /// and not all the same.
    #[test]
    fn waits_are_jittered_within_the_band() {
        let policy = RetryConfig {
            initial_interval: Duration::from_secs(1),
            multiplier: 1.5,
            randomization_factor: 0.5,
            max_interval: Duration::from_secs(1000),
            max_elapsed_time: Duration::from_secs(100_000),
            ..RetryConfig::default()
        };
        let mut b = Backoff::new(policy);
        let mut interval = 1.0f64;
        for _ in 0..8 {
            let wait = b.next_wait().expect("a wait").as_secs_f64();
            assert!(wait >= interval * 0.5 - 1e-9 && wait <= interval * 1.5 + 1e-9, "{wait} for {interval}");
            interval *= 1.5;
        }
        let firsts: std::collections::HashSet<u128> =
            (0..16).filter_map(|_| Backoff::new(policy).next_wait()).map(|d| d.as_micros()).collect();
        assert!(firsts.len() > 1, "every batch waited the same: no jitter");
    }

    /// A backend's `Retry-After: 18446744073709551615` once overflowed the
    /// elapsed-time sum and panicked the sender for good.
    #[test]
    fn a_retry_after_of_any_size_is_answered_not_overflowed() {
        let b = Backoff::new(RetryConfig::default());
        assert!(!b.allows(Duration::from_secs(u64::MAX)));
        assert!(!b.allows(Duration::MAX));
        assert!(b.allows(Duration::from_millis(1)));
    }

    #[tokio::test]
    async fn a_huge_retry_after_gives_the_batch_up_instead_of_panicking() {
        let mut calls = 0;
        let out: Result<(), Failure> = with_retry(
            RetryConfig::default(),
            || {
                calls += 1;
                async {
                    Err(Failure::Retryable {
                        message: "429".into(),
                        after: Some(Duration::from_secs(u64::MAX)),
                    })
                }
            },
            std::future::pending,
            |_| {},
        )
        .await;
        assert_eq!(
            out,
            Err(Failure::Retryable { message: "429".into(), after: Some(Duration::from_secs(u64::MAX)) })
        );
        assert_eq!(calls, 1);
    }
}
