//! Keeping the request path up: retry backoff, circuit breakers, load
//! shedding and rate limits. Each is configured under `resilience:` and
//! wired into the gateway's phases (see `gateway/`).

pub mod backoff;
pub mod breaker;
pub mod buffered;
pub mod rate_limit;
pub mod shedder;
