//! Giving memory back after a burst.
//!
//! The allocator keeps pages it freed for reuse. jemalloc returns them
//! after `dirty_decay_ms` (10 s), but only as a side effect of later
//! allocations: after 1,000 concurrent streams an idle gateway stayed at
//! 74-90 MB (`scripts/stream-rss.sh`). So while nothing is in flight, this
//! service asks jemalloc to purge every arena, once RSS has grown since
//! the last time.

use super::Drain;
use crate::resilience::shedder::read_rss;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

/// How often the idle check runs.
const INTERVAL: Duration = Duration::from_secs(5);
/// RSS growth since the last trim worth trimming for.
const GROWTH: u64 = 16 * 1024 * 1024;

pub struct IdleTrim(pub Arc<Drain>);

#[async_trait]
impl BackgroundService for IdleTrim {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut after_last = read_rss();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(INTERVAL) => {}
                _ = shutdown.changed() => return,
            }
            let rss = read_rss();
            if self.0.in_flight() > 0 || rss < after_last + GROWTH {
                continue;
            }
            if !purge() {
                return;
            }
            after_last = read_rss();
            tracing::debug!(
                before_mb = rss >> 20,
                after_mb = after_last >> 20,
                "idle: memory returned to the system"
            );
        }
    }
}

/// Purges the unused dirty pages of all of jemalloc's arenas
/// (`arena.<MALLCTL_ARENAS_ALL>.purge`). Returns whether jemalloc took the
/// command.
fn purge() -> bool {
    const ALL_ARENAS_PURGE: &std::ffi::CStr = c"arena.4096.purge";
    // SAFETY: a void mallctl: no old or new value is read or written.
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            ALL_ARENAS_PURGE.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 {
        tracing::warn!(rc, "jemalloc refused the purge of its arenas");
    }
    rc == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Freed pages stay resident until purged: 64 MB freed through jemalloc
    /// (the test binary's allocator is the system's, so it is called
    /// directly) must leave RSS on `purge`.
    #[test]
    fn purge_gives_freed_pages_back() {
        const BLOCK: usize = 256 * 1024;
        const BLOCKS: usize = 256;
        let blocks: Vec<*mut u8> = (0..BLOCKS)
            .map(|_| {
                // SAFETY: plain malloc of a non-zero size, checked for null;
                // every byte is written before the block is freed.
                unsafe {
                    let p = tikv_jemalloc_sys::malloc(BLOCK).cast::<u8>();
                    assert!(!p.is_null());
                    std::ptr::write_bytes(p, 0xA5, BLOCK);
                    p
                }
            })
            .collect();
        for p in blocks {
            // SAFETY: each pointer came from jemalloc's malloc above, freed once.
            unsafe { tikv_jemalloc_sys::free(p.cast()) };
        }
        let before = read_rss();
        assert!(purge(), "jemalloc refused arena.4096.purge");
        let after = read_rss();
        let released = before.saturating_sub(after);
        assert!(
            released >= 32 << 20,
            "purge released {} MB of 64 MB freed (RSS {} -> {} MB)",
            released >> 20,
            before >> 20,
            after >> 20
        );
    }
}
