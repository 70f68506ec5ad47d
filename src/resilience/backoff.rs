//! Retry timing: exponential backoff with full jitter, `Retry-After` honoured.

use crate::config::RetryConfig;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    base: Duration,
    cap: Duration,
    statuses: Vec<u16>,
}

impl RetryPolicy {
    pub fn new(c: &RetryConfig) -> Self {
        RetryPolicy {
            max_attempts: c.max_attempts,
            base: Duration::from_millis(c.base_ms),
            cap: Duration::from_millis(c.cap_ms),
            statuses: c.statuses.clone(),
        }
    }

    /// Whether an answer with this status may be tried again (elsewhere).
    pub fn retries_status(&self, status: u16) -> bool {
        self.statuses.contains(&status)
    }

    /// The wait before retry number `retry` (1 for the first retry): the
    /// upstream's `Retry-After` when it gave one, else a random duration in
    /// [0, min(cap, base * 2^(retry-1))]. Never more than `cap`.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(after) = retry_after {
            return after.min(self.cap);
        }
        let exp = self
            .base
            .saturating_mul(
                1u32.checked_shl(retry.saturating_sub(1))
                    .unwrap_or(u32::MAX),
            )
            .min(self.cap);
        let nanos = exp.as_nanos() as u64;
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(crate::util::unique_id() % (nanos + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::new(&RetryConfig {
            max_attempts: 5,
            base_ms: 100,
            cap_ms: 1000,
            statuses: vec![429, 503],
        })
    }

    #[test]
    fn full_jitter_within_the_exponential_bound() {
        let p = policy();
        for (retry, bound) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            let samples: Vec<Duration> = (0..200).map(|_| p.delay(retry, None)).collect();
            assert!(
                samples.iter().all(|d| *d <= Duration::from_millis(bound)),
                "retry {retry}"
            );
            // Jitter: the waits are spread, not one fixed value.
            let distinct: std::collections::HashSet<_> = samples.iter().collect();
            assert!(
                distinct.len() > 100,
                "retry {retry}: {} distinct",
                distinct.len()
            );
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap() {
        let p = policy();
        assert_eq!(
            p.delay(1, Some(Duration::from_millis(700))),
            Duration::from_millis(700)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(60))),
            Duration::from_millis(1000)
        );
        assert!(p.retries_status(429) && p.retries_status(503));
        assert!(!p.retries_status(400) && !p.retries_status(500));
    }
}
