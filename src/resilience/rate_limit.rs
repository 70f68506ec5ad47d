//! Per-key rate limits with `pingora-limits`: requests per minute, and
//! requests in flight at once. The key is the client's API key (hashed,
//! never stored) or, without one, its address.

use crate::config::RateLimitConfig;
use pingora_limits::inflight::{Guard, Inflight};
use pingora_limits::rate::Rate;
use std::time::Duration;

pub struct RateLimiter {
    per_minute: u64,
    max_in_flight: u64,
    rate: Rate,
    inflight: Inflight,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    PerMinute(u64),
    InFlight(u64),
}

impl RateLimiter {
    pub fn new(c: &RateLimitConfig) -> Self {
        RateLimiter {
            per_minute: c.requests_per_minute,
            max_in_flight: c.max_in_flight_per_key,
            rate: Rate::new(Duration::from_secs(60)),
            inflight: Inflight::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.per_minute > 0 || self.max_in_flight > 0
    }

    /// Count a request for `key`; the guard holds its in-flight slot.
    /// `own`: the key's own limits (requests per minute, in flight), each
    /// in place of the configured one when set (0: no limit).
    pub fn check(
        &self,
        key: &str,
        own: (Option<u64>, Option<u64>),
    ) -> Result<Option<Guard>, Limited> {
        let per_minute = own.0.unwrap_or(self.per_minute);
        let max_in_flight = own.1.unwrap_or(self.max_in_flight);
        if per_minute > 0 && self.rate.observe(&key, 1) as u64 > per_minute {
            return Err(Limited::PerMinute(per_minute));
        }
        if max_in_flight > 0 {
            let (guard, n) = self.inflight.incr(key, 1);
            if n as u64 > max_in_flight {
                return Err(Limited::InFlight(max_in_flight));
            }
            return Ok(Some(guard));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: (Option<u64>, Option<u64>) = (None, None);

    #[test]
    fn a_keys_own_limits_replace_the_configured_ones() {
        let r = RateLimiter::new(&RateLimitConfig {
            requests_per_minute: 100,
            max_in_flight_per_key: 0,
        });
        assert!(r.check("a", (Some(1), None)).is_ok());
        assert_eq!(
            r.check("a", (Some(1), None)).unwrap_err(),
            Limited::PerMinute(1)
        );
        let _held = r.check("b", (None, Some(1))).unwrap();
        assert_eq!(
            r.check("b", (None, Some(1))).unwrap_err(),
            Limited::InFlight(1)
        );
        // 0 lifts the configured limit for this key.
        for _ in 0..150 {
            assert!(r.check("c", (Some(0), None)).is_ok());
        }
    }

    #[test]
    fn per_minute_and_in_flight_per_key() {
        let r = RateLimiter::new(&RateLimitConfig {
            requests_per_minute: 3,
            max_in_flight_per_key: 0,
        });
        for _ in 0..3 {
            assert!(r.check("alice", NONE).is_ok());
        }
        assert_eq!(r.check("alice", NONE).unwrap_err(), Limited::PerMinute(3));
        assert!(r.check("bob", NONE).is_ok(), "keys are counted apart");

        let r = RateLimiter::new(&RateLimitConfig {
            requests_per_minute: 0,
            max_in_flight_per_key: 2,
        });
        let a = r.check("k", NONE).unwrap();
        let b = r.check("k", NONE).unwrap();
        assert_eq!(r.check("k", NONE).unwrap_err(), Limited::InFlight(2));
        drop(a);
        assert!(r.check("k", NONE).is_ok());
        drop(b);
        assert!(!RateLimiter::new(&RateLimitConfig::default()).enabled());
    }
}
