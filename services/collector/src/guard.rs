//! The ingest edge's protections against slow and greedy clients: a connection that does not send
//! its headers, or a request whose body does not arrive, within a bound is dropped (408), and each
//! write key has its own request rate (429 with `Retry-After`), so one misbehaving source cannot
//! hold the collector's connections or crowd out the others.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

/// Read bounds and the per-key rate limit.
pub struct Guards {
    /// How long a request's headers may take to arrive (slow-header clients).
    pub header_timeout: Duration,
    /// How long a request's body may take to arrive once its headers did.
    pub body_timeout: Duration,
    /// Requests per second per write key; `None`: no limit.
    pub per_key: Option<KeyRateLimiter>,
}

impl Default for Guards {
    fn default() -> Self {
        Guards {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            per_key: None,
        }
    }
}

/// A GCRA limiter per write key id (in memory, per collector instance).
pub struct KeyRateLimiter {
    limiter: RateLimiter<String, HashMapStateStore<String>, DefaultClock>,
    clock: DefaultClock,
}

impl KeyRateLimiter {
    /// `per_second` requests per second per key, with bursts of the same size.
    pub fn new(per_second: NonZeroU32) -> Self {
        let clock = DefaultClock::default();
        KeyRateLimiter {
            limiter: RateLimiter::hashmap_with_clock(Quota::per_second(per_second), clock.clone()),
            clock,
        }
    }

    /// `Ok` when `key_id` may send now; else how long until it may.
    pub fn check(&self, key_id: &str) -> Result<(), Duration> {
        self.limiter
            .check_key(&key_id.to_string())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_has_its_own_budget() {
        let l = KeyRateLimiter::new(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
        assert!(l.check("a").is_ok());
        assert!(l.check("a").is_ok());
        let wait = l
            .check("a")
            .expect_err("a third request within the second is over");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(
            l.check("b").is_ok(),
            "another key is not limited by a's requests"
        );
    }
}
