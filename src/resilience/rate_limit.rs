//! Per-key rate limits with `pingora-limits`: requests per minute,
//! requests in flight at once, and tokens per minute. The key is the
//! client's API key (hashed, never stored) or, without one, its address.
//!
//! Tokens are counted in two steps: a request's input estimate when it is
//! admitted (so requests arriving together cannot all pass on the same
//! headroom), and the rest of what the provider reports (output, and input
//! beyond the estimate) when it ends.

use crate::config::RateLimitConfig;
use pingora_limits::inflight::{Guard, Inflight};
use pingora_limits::rate::Rate;
use std::time::Duration;

pub struct RateLimiter {
    per_minute: u64,
    max_in_flight: u64,
    tokens_per_minute: u64,
    rate: Rate,
    inflight: Inflight,
    tokens: Rate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    PerMinute(u64),
    InFlight(u64),
    /// The key's tokens this minute, with this request's estimate, would
    /// pass its limit.
    TokensPerMinute(u64),
    /// This request's estimate alone is over the key's tokens per minute:
    /// waiting will not help.
    TooLarge {
        limit: u64,
        estimate: u64,
    },
}

impl RateLimiter {
    pub fn new(c: &RateLimitConfig) -> Self {
        RateLimiter {
            per_minute: c.requests_per_minute,
            max_in_flight: c.max_in_flight_per_key,
            tokens_per_minute: c.tokens_per_minute,
            rate: Rate::new(Duration::from_secs(60)),
            inflight: Inflight::new(),
            tokens: Rate::new(Duration::from_secs(60)),
        }
    }

    pub fn enabled(&self) -> bool {
        self.per_minute > 0 || self.max_in_flight > 0
    }

    /// The tokens-per-minute limit for a key whose own is `own` (0: none).
    pub fn tokens_limit(&self, own: Option<u64>) -> u64 {
        own.unwrap_or(self.tokens_per_minute)
    }

    /// Count `estimate` tokens for `key` this minute, unless that would
    /// take it past `limit` (then nothing is counted).
    pub fn take_tokens(&self, key: &str, limit: u64, estimate: u64) -> Result<(), Limited> {
        if limit == 0 {
            return Ok(());
        }
        if estimate > limit {
            return Err(Limited::TooLarge { limit, estimate });
        }
        let n = estimate as isize;
        if self.tokens.observe(&key, n) as u64 > limit {
            // Taken back: the same slots, so the count is as it was.
            self.tokens.observe(&key, -n);
            return Err(Limited::TokensPerMinute(limit));
        }
        Ok(())
    }

    /// Count tokens a finished request used beyond what was taken for it.
    pub fn add_tokens(&self, key: &str, tokens: u64) {
        if tokens > 0 {
            self.tokens.observe(&key, tokens as isize);
        }
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
            tokens_per_minute: 0,
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
    fn tokens_per_minute_take_the_estimate_then_the_rest() {
        let r = RateLimiter::new(&RateLimitConfig {
            tokens_per_minute: 1000,
            ..Default::default()
        });
        let limit = r.tokens_limit(None);
        assert_eq!(limit, 1000);
        assert_eq!(r.tokens_limit(Some(0)), 0, "a key's 0 lifts it");
        r.take_tokens("a", limit, 400).unwrap();
        r.add_tokens("a", 300); // the answer's output
        assert_eq!(
            r.take_tokens("a", limit, 400).unwrap_err(),
            Limited::TokensPerMinute(1000)
        );
        // A refused request counted nothing: 300 still fit.
        r.take_tokens("a", limit, 300).unwrap();
        assert_eq!(
            r.take_tokens("a", limit, 1).unwrap_err(),
            Limited::TokensPerMinute(1000)
        );
        r.take_tokens("b", limit, 1000)
            .expect("keys are counted apart");
        assert_eq!(
            r.take_tokens("c", limit, 1001).unwrap_err(),
            Limited::TooLarge {
                limit: 1000,
                estimate: 1001
            }
        );
        assert!(r.take_tokens("d", 0, u64::MAX / 4).is_ok(), "0: no limit");
    }

    #[test]
    fn per_minute_and_in_flight_per_key() {
        let r = RateLimiter::new(&RateLimitConfig {
            requests_per_minute: 3,
            max_in_flight_per_key: 0,
            tokens_per_minute: 0,
        });
        for _ in 0..3 {
            assert!(r.check("alice", NONE).is_ok());
        }
        assert_eq!(r.check("alice", NONE).unwrap_err(), Limited::PerMinute(3));
        assert!(r.check("bob", NONE).is_ok(), "keys are counted apart");

        let r = RateLimiter::new(&RateLimitConfig {
            requests_per_minute: 0,
            max_in_flight_per_key: 2,
            tokens_per_minute: 0,
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
