//! Resilience settings: retries, circuit breakers, load shedding, rate limits.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ResilienceConfig {
    pub retry: RetryConfig,
    pub circuit_breaker: BreakerConfig,
    pub load_shedding: SheddingConfig,
    pub rate_limit: RateLimitConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts per request in all (never fewer than the route's targets).
    pub max_attempts: u32,
    /// Full-jitter exponential backoff: a random wait in [0, min(cap, base * 2^n)].
    pub base_ms: u64,
    pub cap_ms: u64,
    /// Upstream statuses retried (connect errors and timeouts always are).
    pub statuses: Vec<u16>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            base_ms: 250,
            cap_ms: 8_000,
            statuses: vec![429, 500, 502, 503, 504, 529],
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    pub enabled: bool,
    /// Open after this many consecutive failures (CIRCUIT_BREAKER_FAILURE_THRESHOLD).
    pub failure_threshold: u32,
    /// ...or when this share of the window's requests failed (0 turns it off).
    pub failure_rate: f64,
    /// The failure-rate window, and the requests it needs before it counts.
    pub window_secs: u64,
    pub min_requests: u32,
    /// How long it stays open before probing (CIRCUIT_BREAKER_TIMEOUT, ms).
    pub open_ms: u64,
    /// Probe requests let through at once while half-open.
    pub half_open_probes: u32,
    /// Probe successes that close it again (CIRCUIT_BREAKER_SUCCESS_THRESHOLD).
    pub success_threshold: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            failure_threshold: 5,
            failure_rate: 0.5,
            window_secs: 60,
            min_requests: 20,
            open_ms: 30_000,
            half_open_probes: 1,
            success_threshold: 2,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SheddingConfig {
    /// In-flight API requests above which new ones get 529 (0: off)
    /// (LOAD_SHEDDING_ACTIVE_REQUESTS_THRESHOLD).
    pub max_in_flight: usize,
    /// Resident memory above which new requests get 529: bytes, or a share
    /// of the memory available to the process when at most 1.0 (the cgroup
    /// limit in a container, else the machine's memory); 0: off
    /// (LOAD_SHEDDING_MEMORY_THRESHOLD).
    pub max_memory: f64,
    /// Background (haiku-class) requests are shed once in-flight requests
    /// pass this share of `max_in_flight`.
    pub background_share: f64,
    /// `Retry-After` seconds on a shed request.
    pub retry_after_secs: u64,
}

impl Default for SheddingConfig {
    fn default() -> Self {
        SheddingConfig {
            max_in_flight: 1024,
            max_memory: 0.8,
            background_share: 0.8,
            retry_after_secs: 2,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests per minute per API key (or client address without one); 0: off.
    pub requests_per_minute: u64,
    /// Requests in flight per API key at once; 0: off.
    pub max_in_flight_per_key: u64,
    /// Tokens per minute per API key (input estimate when admitted, the
    /// rest of what the provider reports when it ends); 0: off.
    pub tokens_per_minute: u64,
}
