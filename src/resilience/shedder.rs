//! Load shedding before the body is read: too many requests in flight, or
//! too much resident memory, and a new request gets 529 `overloaded_error`.

use crate::config::SheddingConfig;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Resident memory is read from /proc at most this often.
const RSS_SAMPLE_MS: u64 = 250;

#[derive(Debug)]
pub struct Shedder {
    max_in_flight: usize,
    background_limit: usize,
    max_rss: u64,
    pub retry_after_secs: u64,
    in_flight: Arc<AtomicUsize>,
    rss: AtomicU64,
    rss_sampled_ms: AtomicU64,
    started: Instant,
}

/// Why a request was shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    InFlight,
    Memory,
    Background,
}

/// Counts a request as in flight until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shedder {
    pub fn new(c: &SheddingConfig) -> Self {
        let max_rss = if c.max_memory <= 0.0 {
            0
        } else if c.max_memory <= 1.0 {
            (c.max_memory * total_memory() as f64) as u64
        } else {
            c.max_memory as u64
        };
        Shedder {
            max_in_flight: c.max_in_flight,
            background_limit: (c.max_in_flight as f64 * c.background_share) as usize,
            max_rss,
            retry_after_secs: c.retry_after_secs,
            in_flight: Arc::new(AtomicUsize::new(0)),
            rss: AtomicU64::new(0),
            rss_sampled_ms: AtomicU64::new(u64::MAX),
            started: Instant::now(),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Admit a request (counting it in flight) or shed it.
    pub fn admit(&self) -> Result<InFlight, Shed> {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        let guard = InFlight(self.in_flight.clone());
        if self.max_in_flight > 0 && now > self.max_in_flight {
            return Err(Shed::InFlight);
        }
        if self.max_rss > 0 && self.rss() > self.max_rss {
            return Err(Shed::Memory);
        }
        Ok(guard)
    }

    /// Background requests are shed earlier, once in-flight requests pass
    /// `background_share` of the limit, to keep room for the main loop.
    pub fn admit_background(&self) -> Result<(), Shed> {
        if self.max_in_flight > 0 && self.in_flight() > self.background_limit {
            return Err(Shed::Background);
        }
        Ok(())
    }

    /// Resident set size in bytes, sampled at most every `RSS_SAMPLE_MS`.
    pub fn rss(&self) -> u64 {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.rss_sampled_ms.load(Ordering::Relaxed);
        if last == u64::MAX || now.saturating_sub(last) >= RSS_SAMPLE_MS {
            self.rss_sampled_ms.store(now, Ordering::Relaxed);
            self.rss.store(read_rss(), Ordering::Relaxed);
        }
        self.rss.load(Ordering::Relaxed)
    }

    pub fn max_rss(&self) -> u64 {
        self.max_rss
    }
}

/// Resident memory of this process, from /proc/self/statm.
pub fn read_rss() -> u64 {
    let page = 4096;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * page)
}

fn total_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                })
        })
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheds_over_the_in_flight_limit_and_counts_down() {
        let s = Shedder::new(&SheddingConfig {
            max_in_flight: 2,
            background_share: 0.5,
            ..Default::default()
        });
        let a = s.admit().unwrap();
        // one in flight: background still admitted (limit 1 is not passed)
        assert!(s.admit_background().is_ok());
        let b = s.admit().unwrap();
        assert_eq!(s.admit_background(), Err(Shed::Background));
        assert_eq!(s.admit().unwrap_err(), Shed::InFlight);
        assert_eq!(s.in_flight(), 2, "a refused request is not counted");
        drop((a, b));
        assert_eq!(s.in_flight(), 0);
        assert!(s.admit().is_ok());
    }

    #[test]
    fn sheds_over_the_memory_limit() {
        let s = Shedder::new(&SheddingConfig {
            max_memory: 1024.0 * 1024.0,
            ..Default::default()
        });
        assert!(read_rss() > 1024 * 1024);
        assert_eq!(s.admit().unwrap_err(), Shed::Memory);
        let share = Shedder::new(&SheddingConfig {
            max_memory: 0.99,
            ..Default::default()
        });
        assert!(share.max_rss() > 0);
        assert!(share.admit().is_ok());
    }
}
