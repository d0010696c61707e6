//! Retry policy: which responses are retried, and when the next attempt is due.
//!
//! Retried: network errors and timeouts, `408`, `429` and every `5xx`, with exponential backoff
//! and jitter (the larger of the backoff and `Retry-After`), until the destination's horizon
//! (default 4 h, Segment's). Anything else that is not `2xx` is permanent and goes to the
//! dead-letter topic at once.

use std::time::Duration;

/// How a response (or its absence) is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Delivered,
    Retryable,
    Permanent,
}

/// `None`: no response (connection refused, reset, timeout).
pub fn classify(status: Option<u16>) -> Class {
    match status {
        None => Class::Retryable,
        Some(s) if (200..300).contains(&s) => Class::Delivered,
        Some(408) | Some(429) => Class::Retryable,
        Some(s) if s >= 500 => Class::Retryable,
        Some(_) => Class::Permanent,
    }
}

/// Backoff parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            max_delay: Duration::from_secs(600),
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Try again at this wall-clock time (ms).
    RetryAt(i64),
    /// The next attempt would fall past the horizon: dead-letter it.
    GiveUp,
}

impl RetryPolicy {
    /// Delay before attempt `attempts + 1`, after `attempts` failures; `jitter` in [0, 1)
    /// picks a point in the upper half of the exponential step ("equal jitter": never less than
    /// half the step, so retries of a down destination cannot stampede).
    pub fn delay(&self, attempts: u32, jitter: f64) -> Duration {
        let exp = attempts.saturating_sub(1).min(30);
        let step = self.base.saturating_mul(1u32 << exp).min(self.max_delay);
        step.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// After the `attempts`-th failure at `now_ms` of a delivery first tried at `first_ms`.
    pub fn decide(
        &self,
        now_ms: i64,
        first_ms: i64,
        attempts: u32,
        retry_after: Option<Duration>,
        horizon: Duration,
        jitter: f64,
    ) -> Decision {
        let mut delay = self.delay(attempts, jitter);
        if let Some(ra) = retry_after {
            delay = delay.max(ra);
        }
        let at = now_ms + delay.as_millis() as i64;
        if at > first_ms + horizon.as_millis() as i64 {
            Decision::GiveUp
        } else {
            Decision::RetryAt(at)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(classify(Some(200)), Class::Delivered);
        assert_eq!(classify(Some(204)), Class::Delivered);
        assert_eq!(classify(Some(429)), Class::Retryable);
        assert_eq!(classify(Some(408)), Class::Retryable);
        assert_eq!(classify(Some(503)), Class::Retryable);
        assert_eq!(classify(None), Class::Retryable);
        assert_eq!(classify(Some(400)), Class::Permanent);
        assert_eq!(classify(Some(401)), Class::Permanent);
        assert_eq!(classify(Some(302)), Class::Permanent);
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1, 0.0), Duration::from_millis(250));
        assert_eq!(p.delay(1, 1.0), Duration::from_millis(500));
        assert_eq!(p.delay(3, 1.0), Duration::from_millis(2000));
        assert_eq!(p.delay(40, 1.0), Duration::from_secs(600));
        for a in 1..20 {
            assert!(p.delay(a + 1, 0.0) >= p.delay(a, 0.0));
        }
    }

    #[test]
    fn retry_after_wins_when_longer_and_horizon_ends_retries() {
        let p = RetryPolicy::default();
        let h = Duration::from_secs(3600);
        assert_eq!(
            p.decide(1000, 0, 1, Some(Duration::from_secs(30)), h, 0.0),
            Decision::RetryAt(31_000)
        );
        assert_eq!(p.decide(1000, 0, 1, None, h, 1.0), Decision::RetryAt(1500));
        assert_eq!(p.decide(3_599_900, 0, 5, None, h, 0.0), Decision::GiveUp);
        assert_eq!(
            p.decide(0, 0, 1, Some(Duration::from_secs(7200)), h, 0.0),
            Decision::GiveUp
        );
    }
}
