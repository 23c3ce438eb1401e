//! Per-client-IP token buckets for the metrics endpoint.
//!
//! Promises: O(1) per request; the table holds at most `MAX_CLIENTS`
//! addresses — when full, buckets that have refilled completely (clients
//! that have been quiet) are dropped first, and if none has, the request
//! is refused (fail closed: a spray of source addresses cannot grow
//! memory or reset its own limit).

use std::collections::HashMap;
use std::net::IpAddr;

use super::config::RateLimit;

/// Client addresses remembered at most.
pub const MAX_CLIENTS: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last_ns: u64,
}

/// The buckets of every client.
#[derive(Debug)]
pub struct ClientLimiter {
    rate_per_ns: f64,
    burst: f64,
    clients: HashMap<IpAddr, Bucket>,
    max_clients: usize,
}

impl ClientLimiter {
    pub fn new(limit: RateLimit) -> ClientLimiter {
        ClientLimiter::with_capacity(limit, MAX_CLIENTS)
    }

    fn with_capacity(limit: RateLimit, max_clients: usize) -> ClientLimiter {
        ClientLimiter {
            rate_per_ns: limit.rate / 1e9,
            burst: f64::from(limit.burst),
            clients: HashMap::new(),
            max_clients,
        }
    }

    fn refill(&self, b: &mut Bucket, now_ns: u64) {
        let elapsed = now_ns.saturating_sub(b.last_ns) as f64;
        b.tokens = (b.tokens + elapsed * self.rate_per_ns).min(self.burst);
        b.last_ns = now_ns;
    }

    /// Whether a request from `ip` at `now_ns` is within its budget.
    pub fn admit(&mut self, ip: IpAddr, now_ns: u64) -> bool {
        if !self.clients.contains_key(&ip) && self.clients.len() >= self.max_clients {
            let (rate, burst) = (self.rate_per_ns, self.burst);
            self.clients.retain(|_, b| b.tokens + now_ns.saturating_sub(b.last_ns) as f64 * rate < burst);
            if self.clients.len() >= self.max_clients {
                return false;
            }
        }
        let mut bucket = *self.clients.entry(ip).or_insert(Bucket { tokens: self.burst, last_ns: now_ns });
        self.refill(&mut bucket, now_ns);
        let admitted = bucket.tokens >= 1.0;
        if admitted {
            bucket.tokens -= 1.0;
        }
        self.clients.insert(ip, bucket);
        admitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const S: u64 = 1_000_000_000;

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
    }

    #[test]
    fn burst_then_rate_per_client() {
        let mut l = ClientLimiter::new(RateLimit { rate: 5.0, burst: 10 });
        let t = 100 * S;
        assert_eq!((0..15).filter(|_| l.admit(ip(1), t)).count(), 10, "burst of 10");
        assert!(!l.admit(ip(1), t + S / 10), "half a token after 100 ms");
        assert!(l.admit(ip(1), t + S / 5), "one token after 200 ms at 5/s");
        assert!(l.admit(ip(2), t), "another client has its own bucket");
        // After a long pause the bucket is full again, but never above burst.
        assert_eq!((0..15).filter(|_| l.admit(ip(1), t + 100 * S)).count(), 10);
    }

    #[test]
    fn full_table_evicts_quiet_clients_else_fails_closed() {
        let mut l = ClientLimiter::with_capacity(RateLimit { rate: 1.0, burst: 2 }, 2);
        let t = 100 * S;
        assert!(l.admit(ip(1), t));
        assert!(l.admit(ip(2), t));
        assert!(!l.admit(ip(3), t), "table full of active clients: refused");
        // Once client 1 and 2 have refilled, they make room.
        assert!(l.admit(ip(3), t + 10 * S));
        assert!(l.clients.len() <= 2);
    }
}
