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
    pub fn check(&self, key: &str) -> Result<Option<Guard>, Limited> {
        if self.per_minute > 0 && self.rate.observe(&key, 1) as u64 > self.per_minute {
            return Err(Limited::PerMinute(self.per_minute));
        }
        if self.max_in_flight > 0 {
            let (guard, n) = self.inflight.incr(key, 1);
            if n as u64 > self.max_in_flight {
                return Err(Limited::InFlight(self.max_in_flight));
            }
            return Ok(Some(guard));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_minute_and_in_flight_per_key() {
        let r = RateLimiter::new(&RateLimitConfig {
            requests_per_minute: 3,
            max_in_flight_per_key: 0,
        });
        for _ in 0..3 {
            assert!(r.check("alice").is_ok());
        }
        assert_eq!(r.check("alice").unwrap_err(), Limited::PerMinute(3));
        assert!(r.check("bob").is_ok(), "keys are counted apart");

        let r = RateLimiter::new(&RateLimitConfig {
            requests_per_minute: 0,
            max_in_flight_per_key: 2,
        });
        let a = r.check("k").unwrap();
        let b = r.check("k").unwrap();
        assert_eq!(r.check("k").unwrap_err(), Limited::InFlight(2));
        drop(a);
        assert!(r.check("k").is_ok());
        drop(b);
        assert!(!RateLimiter::new(&RateLimitConfig::default()).enabled());
    }
}
