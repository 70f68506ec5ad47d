//! Circuit breakers, one per provider: closed, open after N consecutive
//! failures or a failure rate over a window, half-open after a timeout with
//! a limited number of probes, closed again after M probe successes.
//!
//! A request takes a [`Permit`] and the permit settles exactly once: in
//! success, in failure, or, when it is dropped unsettled (the client went
//! away, the request was never sent), as abandoned. An abandoned probe gives
//! its slot back, so a half-open breaker can never be left waiting for an
//! outcome that will not come.

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

/// Leave to send one request to the provider. Settle it with
/// [`Permit::success`] or [`Permit::failure`]; dropping it unsettled
/// records the request as abandoned.
#[derive(Debug)]
#[must_use = "a permit is settled by success(), failure(), or dropping it (abandoned)"]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    /// A half-open probe: its outcome decides the state.
    probe: bool,
    settled: bool,
}

impl Permit<'_> {
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The provider answered as it should.
    pub fn success(mut self) {
        self.settled = true;
        self.breaker.settle(self.probe, Some(true));
    }

    /// The provider is to blame: connect errors, timeouts, 429 and 5xx.
    pub fn failure(mut self) {
        self.settled = true;
        self.breaker.settle(self.probe, Some(false));
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.settle(self.probe, None);
        }
    }
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

    /// A permit to send a request now, or how long until one may be given.
    pub fn permit(&self) -> Result<Permit<'_>, Duration> {
        let permit = |probe| Permit {
            breaker: self,
            probe,
            settled: false,
        };
        if !self.config.enabled {
            return Ok(permit(false));
        }
        let mut s = self.inner.lock().unwrap();
        match s.state {
            State::Closed => Ok(permit(false)),
            State::Open => {
                let elapsed = s.opened_at.map_or(Duration::MAX, |t| t.elapsed());
                if elapsed < self.open_for() {
                    return Err(self.open_for() - elapsed);
                }
                s.state = State::HalfOpen;
                s.probe_successes = 0;
                s.probes_in_flight = 1;
                Ok(permit(true))
            }
            State::HalfOpen if s.probes_in_flight < self.config.half_open_probes => {
                s.probes_in_flight += 1;
                Ok(permit(true))
            }
            State::HalfOpen => Err(Duration::from_secs(1)),
        }
    }

    /// Probe slots in use (half-open), for tests and the state endpoint.
    pub fn probes_in_flight(&self) -> u32 {
        self.inner.lock().unwrap().probes_in_flight
    }

    /// A permit's outcome: success, failure, or `None` for abandoned (not
    /// counted either way; a probe's slot is given back).
    fn settle(&self, probe: bool, outcome: Option<bool>) {
        if !self.config.enabled {
            return;
        }
        let mut s = self.inner.lock().unwrap();
        if probe {
            s.probes_in_flight = s.probes_in_flight.saturating_sub(1);
        }
        let Some(ok) = outcome else {
            return;
        };
        if s.window_start.elapsed() > Duration::from_secs(self.config.window_secs) {
            s.window_start = Instant::now();
            s.window_requests = 0;
            s.window_failures = 0;
        }
        s.window_requests += 1;
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

    fn fail(b: &Breaker) {
        b.permit().unwrap().failure();
    }

    fn succeed(b: &Breaker) {
        b.permit().unwrap().success();
    }

    /// Opens `b` and waits out its open period.
    fn open_then_wait(b: &Breaker) {
        for _ in 0..3 {
            fail(b);
        }
        assert_eq!(b.snapshot().state, State::Open);
        std::thread::sleep(Duration::from_millis(60));
    }

    #[test]
    fn opens_after_consecutive_failures_then_probes_and_closes() {
        let b = Breaker::new(&config());
        for _ in 0..2 {
            fail(&b);
        }
        assert_eq!(b.snapshot().state, State::Closed);
        succeed(&b); // a success resets the run
        for _ in 0..3 {
            fail(&b);
        }
        assert_eq!(b.snapshot().state, State::Open);
        assert!(b.permit().is_err());
        std::thread::sleep(Duration::from_millis(60));
        let probe = b.permit().unwrap();
        assert!(probe.is_probe());
        // One probe at a time.
        assert!(b.permit().is_err());
        probe.success();
        assert_eq!(b.snapshot().state, State::HalfOpen);
        b.permit().unwrap().success();
        assert_eq!(b.snapshot().state, State::Closed);
    }

    #[test]
    fn a_failed_probe_opens_it_again() {
        let b = Breaker::new(&config());
        open_then_wait(&b);
        b.permit().unwrap().failure();
        assert_eq!(b.snapshot().state, State::Open);
        assert_eq!(b.snapshot().times_opened, 2);
    }

    /// Regression: a probe whose client went away (the permit dropped on an
    /// early return or a cancelled future) used to hold the only probe slot
    /// forever, so the breaker stayed half-open and refused everything.
    #[test]
    fn an_abandoned_probe_gives_its_slot_back() {
        let b = Breaker::new(&config());
        open_then_wait(&b);
        {
            let probe = b.permit().unwrap();
            assert!(probe.is_probe());
            assert_eq!(b.probes_in_flight(), 1);
        } // dropped unsettled: abandoned
        assert_eq!(b.probes_in_flight(), 0);
        assert_eq!(b.snapshot().state, State::HalfOpen);
        // The next request probes, and successes close the breaker.
        succeed(&b);
        succeed(&b);
        assert_eq!(b.snapshot().state, State::Closed);
    }

    #[test]
    fn an_abandoned_request_is_neither_success_nor_failure() {
        let b = Breaker::new(&config());
        fail(&b);
        fail(&b);
        drop(b.permit().unwrap());
        let s = b.snapshot();
        assert_eq!((s.consecutive_failures, s.window_requests), (2, 2));
        fail(&b);
        assert_eq!(b.snapshot().state, State::Open);
    }

    #[test]
    fn a_permit_settles_once_on_every_path() {
        // Whatever a request does with its permit, exactly one outcome is
        // recorded: count window requests over many mixed endings.
        let b = Breaker::new(&BreakerConfig {
            failure_threshold: u32::MAX,
            failure_rate: 0.0,
            ..config()
        });
        for i in 0..300 {
            let p = b.permit().unwrap();
            match i % 3 {
                0 => p.success(),
                1 => p.failure(),
                _ => drop(p),
            }
        }
        assert_eq!(b.snapshot().window_requests, 200);
        assert_eq!(b.snapshot().window_failures, 100);
    }

    #[test]
    fn failure_rate_over_the_window() {
        let b = Breaker::new(&config());
        // Alternating: never 3 in a row, but half of 10 requests failed.
        for i in 0..10 {
            if i % 2 == 0 {
                succeed(&b)
            } else {
                fail(&b)
            }
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
            fail(&b);
        }
        assert!(!b.permit().unwrap().is_probe());
    }
}
