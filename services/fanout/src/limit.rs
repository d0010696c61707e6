//! Rate limiting of one destination lane: a `governor` GCRA limiter whose quota guarantees the
//! configured cap over every one-second window, adapted to `429` and `Retry-After`.
//!
//! Why not `Quota::per_second(n)`: its burst of `n` lets up to `2n - 1` requests through in one
//! second (a full bucket plus a second's refill). Here the burst is small (1% of the cap) and
//! the refill is `n - burst + 1` per second, so any half-open second holds at most `n`; a 2%
//! margin absorbs the jitter between the limiter's clock and the receiver's.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::Quota;

/// Share of the rate given up so the receiver never sees more than the cap even with jitter.
pub const JITTER_MARGIN: f64 = 0.02;

/// (replenish period, burst) for a cap of `limit` requests per second.
pub fn quota_params(limit: u32) -> (Duration, u32) {
    let limit = limit.max(1);
    let burst = (limit / 100).max(1);
    let per_second = f64::from(limit - burst + 1) / (1.0 + JITTER_MARGIN);
    let period = Duration::from_secs_f64(1.0 / per_second);
    (period, burst)
}

/// The governor quota for a cap of `limit` requests per second.
pub fn quota(limit: u32) -> Quota {
    let (period, burst) = quota_params(limit);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    // with_period only fails for a zero period, which quota_params never returns.
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

/// AIMD on top of the configured cap: a `429` halves the effective rate; each second without
/// one gives back a tenth of the cap, up to the cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdaptiveRate {
    pub configured: u32,
    pub current: u32,
    last_change_ms: i64,
}

impl AdaptiveRate {
    pub fn new(configured: u32) -> Self {
        Self {
            configured: configured.max(1),
            current: configured.max(1),
            last_change_ms: i64::MIN / 2,
        }
    }

    /// A 429: returns true when the rate changed (the limiter must be rebuilt).
    pub fn on_throttled(&mut self, now_ms: i64) -> bool {
        // One halving per second: a burst of 429s from requests already in flight is one signal.
        if now_ms - self.last_change_ms < 1000 && self.current < self.configured {
            return false;
        }
        let next = (self.current / 2).max(1);
        self.last_change_ms = now_ms;
        let changed = next != self.current;
        self.current = next;
        changed
    }

    /// A success: returns true when the rate changed.
    pub fn on_success(&mut self, now_ms: i64) -> bool {
        if self.current >= self.configured || now_ms - self.last_change_ms < 1000 {
            return false;
        }
        self.current = (self.current + (self.configured / 10).max(1)).min(self.configured);
        self.last_change_ms = now_ms;
        true
    }
}

/// `Retry-After`: delay-seconds or an HTTP-date.
pub fn parse_retry_after(value: &str, now_ms: i64) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let ms = at.timestamp_millis() - now_ms;
    Some(Duration::from_millis(ms.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use governor::RateLimiter;

    /// Greedy sender against a fake clock: every permit is taken the moment it is allowed.
    fn permits(limit: u32, seconds: u64, step_us: u64) -> Vec<u64> {
        let clock = FakeRelativeClock::default();
        let lim = RateLimiter::direct_with_clock(quota(limit), clock.clone());
        let mut times = Vec::new();
        let mut t = 0;
        while t < seconds * 1_000_000 {
            while lim.check().is_ok() {
                times.push(t);
            }
            clock.advance(Duration::from_micros(step_us));
            t += step_us;
        }
        times
    }

    fn max_in_any_second(times: &[u64]) -> usize {
        let mut best = 0;
        let mut start = 0;
        for end in 0..times.len() {
            while times[end] - times[start] >= 1_000_000 {
                start += 1;
            }
            best = best.max(end - start + 1);
        }
        best
    }

    #[test]
    fn no_one_second_window_exceeds_the_cap() {
        for limit in [1, 5, 100, 500, 2000] {
            let times = permits(limit, 5, 100);
            assert!(max_in_any_second(&times) <= limit as usize, "limit {limit}");
            // And the limiter does not starve: at least 95% of the cap on average.
            let rate = times.len() as f64 / 5.0;
            assert!(
                rate >= f64::from(limit) * 0.95 - 1.0,
                "limit {limit}: {rate}/s"
            );
        }
    }

    #[test]
    fn plain_per_second_quota_would_overshoot() {
        // The reason for quota(): governor's per_second(n) lets a burst plus a second's refill through.
        let clock = FakeRelativeClock::default();
        let lim = RateLimiter::direct_with_clock(
            Quota::per_second(NonZeroU32::new(100).unwrap()),
            clock.clone(),
        );
        let mut times = Vec::new();
        for step in 0..20_000u64 {
            while lim.check().is_ok() {
                times.push(step * 100);
            }
            clock.advance(Duration::from_micros(100));
        }
        assert!(max_in_any_second(&times) > 100);
    }

    #[test]
    fn adaptive_rate_halves_on_429_and_recovers() {
        let mut r = AdaptiveRate::new(100);
        assert!(r.on_throttled(0));
        assert_eq!(r.current, 50);
        assert!(!r.on_throttled(10), "one halving per second");
        assert!(!r.on_success(500));
        assert!(r.on_success(1000));
        assert_eq!(r.current, 60);
        for s in 2..10 {
            r.on_success(s * 1000);
        }
        assert_eq!(r.current, 100);
        assert!(!r.on_success(20_000));
        let mut one = AdaptiveRate::new(1);
        assert!(!one.on_throttled(0), "never below 1/s");
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("3", 0), Some(Duration::from_secs(3)));
        let now = chrono::DateTime::parse_from_rfc2822("Wed, 21 Oct 2015 07:28:00 GMT")
            .unwrap()
            .timestamp_millis();
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:05 GMT", now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(parse_retry_after("soon", 0), None);
    }
}
