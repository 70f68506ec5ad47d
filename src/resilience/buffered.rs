//! A bound on request body bytes held at once over all requests
//! (`limits.max_buffered_bytes`). Without it, a burst of large bodies
//! (1024 in flight × 32 MiB) could take gigabytes before anything else
//! trips. A request reserves its body's bytes as they arrive and gives
//! them back when it ends; past the bound it gets 529.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Debug)]
pub struct BodyBudget {
    limit: usize,
    used: Arc<AtomicUsize>,
}

/// Bytes reserved by one request, returned on drop.
#[derive(Debug)]
pub struct Reservation {
    used: Arc<AtomicUsize>,
    limit: usize,
    bytes: usize,
}

/// The budget has no room for the bytes asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget;

impl BodyBudget {
    pub fn new(limit: usize) -> Self {
        BodyBudget {
            limit,
            used: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// An empty reservation to grow as the body arrives.
    pub fn reservation(&self) -> Reservation {
        Reservation {
            used: self.used.clone(),
            limit: self.limit,
            bytes: 0,
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

impl Reservation {
    /// Reserve `n` more bytes, or refuse without reserving any.
    pub fn grow(&mut self, n: usize) -> Result<(), OverBudget> {
        let mut cur = self.used.load(Ordering::Acquire);
        loop {
            let next = cur
                .checked_add(n)
                .filter(|v| *v <= self.limit)
                .ok_or(OverBudget)?;
            match self
                .used
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    self.bytes += n;
                    return Ok(());
                }
                Err(actual) => cur = actual,
            }
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_bounded_and_given_back() {
        let b = BodyBudget::new(100);
        let mut r1 = b.reservation();
        r1.grow(60).unwrap();
        let mut r2 = b.reservation();
        assert_eq!(r2.grow(41), Err(OverBudget));
        assert_eq!(r2.bytes(), 0, "a refused grow reserves nothing");
        r2.grow(40).unwrap();
        assert_eq!(b.used(), 100);
        drop(r1);
        assert_eq!(b.used(), 40);
        drop(r2);
        assert_eq!(b.used(), 0);
        assert_eq!(b.reservation().grow(usize::MAX), Err(OverBudget));
    }

    #[test]
    fn concurrent_reservations_never_pass_the_limit() {
        let b = Arc::new(BodyBudget::new(1000));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut held = Vec::new();
                    for _ in 0..200 {
                        let mut r = b.reservation();
                        if r.grow(7).is_ok() {
                            assert!(b.used() <= 1000);
                            held.push(r);
                        }
                        if held.len() > 10 {
                            held.clear();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(b.used(), 0);
    }
}
