//! Circuit breakers, one per provider: closed, open after N consecutive
//! failures or a failure rate over a window, half-open after a timeout with
//! a limited number of probes, closed again after M probe successes.

use crate::config::BreakerConfig;
use serde::Serialize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

/// Whether a request may go to the provider now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    Allowed,
    /// Allowed as a half-open probe: its outcome decides the state.
    Probe,
    /// Open: try again after this long.
    Refused(Duration),
}

#[derive(Debug)]
struct Inner {
    state: State,
    opened_at: Option<Instant>,
    consecutive_failures: u32,
    probes_in_flight: u32,
    probe_successes: u32,
    window_start: Instant,
    window_requests: u32,
    window_failures: u32,
    times_opened: u64,
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

/// A breaker's state for `/metrics/circuit-breakers`.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub state: State,
    pub consecutive_failures: u32,
    pub window_requests: u32,
    pub window_failures: u32,
    pub times_opened: u64,
    /// Seconds until an open breaker lets a probe through.
    pub retry_after_secs: Option<u64>,
}

impl Breaker {
    pub fn new(config: &BreakerConfig) -> Self {
        Breaker {
            config: config.clone(),
            inner: Mutex::new(Inner {
                state: State::Closed,
                opened_at: None,
                consecutive_failures: 0,
                probes_in_flight: 0,
                probe_successes: 0,
                window_start: Instant::now(),
                window_requests: 0,
                window_failures: 0,
                times_opened: 0,
            }),
        }
    }

    fn open_for(&self) -> Duration {
        Duration::from_millis(self.config.open_ms)
    }

    pub fn permit(&self) -> Permit {
        if !self.config.enabled {
            return Permit::Allowed;
        }
        let mut s = self.inner.lock().unwrap();
        match s.state {
            State::Closed => Permit::Allowed,
            State::Open => {
                let elapsed = s.opened_at.map_or(Duration::MAX, |t| t.elapsed());
                if elapsed < self.open_for() {
                    return Permit::Refused(self.open_for() - elapsed);
                }
                s.state = State::HalfOpen;
                s.probe_successes = 0;
                s.probes_in_flight = 1;
                Permit::Probe
            }
            State::HalfOpen if s.probes_in_flight < self.config.half_open_probes => {
                s.probes_in_flight += 1;
                Permit::Probe
            }
            State::HalfOpen => Permit::Refused(Duration::from_secs(1)),
        }
    }

    /// Record an outcome. Failures are what a provider is to blame for:
    /// connect errors, timeouts, 429 and 5xx.
    pub fn record(&self, permit: Permit, ok: bool) {
        if !self.config.enabled {
            return;
        }
        let mut s = self.inner.lock().unwrap();
        if s.window_start.elapsed() > Duration::from_secs(self.config.window_secs) {
            s.window_start = Instant::now();
            s.window_requests = 0;
            s.window_failures = 0;
        }
        s.window_requests += 1;
        if permit == Permit::Probe {
            s.probes_in_flight = s.probes_in_flight.saturating_sub(1);
        }
        if ok {
            s.consecutive_failures = 0;
            if s.state == State::HalfOpen {
                s.probe_successes += 1;
                if s.probe_successes >= self.config.success_threshold {
                    s.state = State::Closed;
                    s.window_requests = 0;
                    s.window_failures = 0;
                    tracing::info!("circuit breaker closed");
                }
            }
            return;
        }
        s.window_failures += 1;
        s.consecutive_failures += 1;
        let rate_tripped = self.config.failure_rate > 0.0
            && s.window_requests >= self.config.min_requests
            && s.window_failures as f64 >= self.config.failure_rate * s.window_requests as f64;
        let trip = s.state == State::HalfOpen
            || s.consecutive_failures >= self.config.failure_threshold
            || rate_tripped;
        if trip && s.state != State::Open {
            s.state = State::Open;
            s.opened_at = Some(Instant::now());
            s.times_opened += 1;
            s.probes_in_flight = 0;
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let s = self.inner.lock().unwrap();
        let retry_after_secs = (s.state == State::Open).then(|| {
            let left = self
                .open_for()
                .saturating_sub(s.opened_at.map_or(Duration::ZERO, |t| t.elapsed()));
            left.as_secs_f64().ceil() as u64
        });
        Snapshot {
            state: s.state,
            consecutive_failures: s.consecutive_failures,
            window_requests: s.window_requests,
            window_failures: s.window_failures,
            times_opened: s.times_opened,
            retry_after_secs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            enabled: true,
            failure_threshold: 3,
            failure_rate: 0.5,
            window_secs: 60,
            min_requests: 10,
            open_ms: 50,
            half_open_probes: 1,
            success_threshold: 2,
        }
    }

    #[test]
    fn opens_after_consecutive_failures_then_probes_and_closes() {
        let b = Breaker::new(&config());
        for _ in 0..2 {
            b.record(b.permit(), false);
        }
        assert_eq!(b.snapshot().state, State::Closed);
        b.record(b.permit(), true); // a success resets the run
        for _ in 0..3 {
            b.record(b.permit(), false);
        }
        assert_eq!(b.snapshot().state, State::Open);
        assert!(matches!(b.permit(), Permit::Refused(_)));
        std::thread::sleep(Duration::from_millis(60));
        let probe = b.permit();
        assert_eq!(probe, Permit::Probe);
        // One probe at a time.
        assert!(matches!(b.permit(), Permit::Refused(_)));
        b.record(probe, true);
        assert_eq!(b.snapshot().state, State::HalfOpen);
        let probe = b.permit();
        b.record(probe, true);
        assert_eq!(b.snapshot().state, State::Closed);
    }

    #[test]
    fn a_failed_probe_opens_it_again() {
        let b = Breaker::new(&config());
        for _ in 0..3 {
            b.record(b.permit(), false);
        }
        std::thread::sleep(Duration::from_millis(60));
        let probe = b.permit();
        b.record(probe, false);
        assert_eq!(b.snapshot().state, State::Open);
        assert_eq!(b.snapshot().times_opened, 2);
    }

    #[test]
    fn failure_rate_over_the_window() {
        let b = Breaker::new(&config());
        // Alternating: never 3 in a row, but half of 10 requests failed.
        for i in 0..10 {
            b.record(b.permit(), i % 2 == 0);
        }
        assert_eq!(b.snapshot().state, State::Open);
    }

    #[test]
    fn disabled_never_opens() {
        let b = Breaker::new(&BreakerConfig {
            enabled: false,
            ..config()
        });
        for _ in 0..10 {
            b.record(b.permit(), false);
        }
        assert_eq!(b.permit(), Permit::Allowed);
    }
}
