//! Graceful shutdown and upgrade, as clients see them.
//!
//! Pingora broadcasts shutdown at SIGTERM, and at SIGQUIT once the new
//! process holds the listening sockets. From that moment:
//! - a request on an old connection is served and answered with
//!   `Connection: close`, so the client's next request opens a connection
//!   to the new process;
//! - an idle kept-alive connection stays open for `server.drain_ms`, so a
//!   request its client is sending right now is not lost; then it closes;
//! - in-flight requests and streams run on for the grace period; a stream
//!   still running near its end is closed with an `overloaded_error` event,
//!   which clients retry, never silently cut;
//! - the process exits as soon as the drain window is over and no request
//!   is in flight, instead of sleeping out the whole grace period.

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long before the grace period ends a stream is told to stop, so its
/// `event: error` reaches the client before Pingora drops the task: a
/// second, or a fifth of a shorter grace period.
const CUT_MARGIN: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Drain {
    started: OnceLock<Instant>,
    flag: AtomicBool,
    tx: watch::Sender<bool>,
    /// How long idle connections may still send a request after shutdown.
    pub window: Duration,
    /// Pingora's grace period: in-flight work is dropped after it.
    pub grace: Duration,
    active: Arc<AtomicUsize>,
}

/// Counts a request as in flight until dropped.
pub struct Active(Arc<AtomicUsize>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The margin before the grace period's end for a grace period this long.
fn cut_margin(grace: Duration) -> Duration {
    CUT_MARGIN.min(grace / 5)
}

impl Drain {
    /// The drain `window` ends by the time streams are cut, so the last
    /// usage rows are written before Pingora ends the process at `grace`.
    pub fn new(window: Duration, grace: Duration) -> Drain {
        Drain {
            started: OnceLock::new(),
            flag: AtomicBool::new(false),
            tx: watch::channel(false).0,
            window: window.min(grace.saturating_sub(cut_margin(grace))),
            grace,
            active: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Shutdown has begun (idempotent; the first caller's time counts).
    pub fn begin(&self) {
        self.started.get_or_init(Instant::now);
        if !self.flag.swap(true, Ordering::AcqRel) {
            self.tx.send_replace(true);
        }
    }

    pub fn shutting_down(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Until when an idle connection may still start a request.
    pub fn window_end(&self) -> Option<Instant> {
        self.started.get().map(|t| *t + self.window)
    }

    /// When a stream still running must be told to stop.
    fn cut_at(&self) -> Option<Instant> {
        self.started
            .get()
            .map(|t| *t + self.grace.saturating_sub(cut_margin(self.grace)))
    }

    /// The last moment to stop waiting for requests in flight and write
    /// the store's last rows: half the margin after the cut.
    fn last_call(&self) -> Option<Instant> {
        self.started
            .get()
            .map(|t| *t + self.grace.saturating_sub(cut_margin(self.grace) / 2))
    }

    /// Resolves when shutdown has begun (at once if it has).
    pub async fn started(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|s| *s).await.is_ok();
    }

    /// Resolves when in-flight work must end: near the end of the grace
    /// period after shutdown began. Never, while the server runs.
    pub async fn cut(&self) {
        self.started().await;
        if let Some(at) = self.cut_at() {
            tokio::time::sleep_until(at.into()).await;
        }
    }

    /// Count a request in flight until the guard drops.
    pub fn enter(&self) -> Active {
        self.active.fetch_add(1, Ordering::AcqRel);
        Active(self.active.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }
}

/// Follows Pingora's shutdown broadcast: starts the drain, and ends the
/// process once the drain window is over and nothing is in flight, after
/// the store has written every buffered usage row.
pub struct DrainService {
    pub drain: Arc<Drain>,
    pub store: Option<Arc<crate::store::Store>>,
}

/// How long the last usage rows may take to be written at exit.
const STORE_FLUSH: Duration = Duration::from_secs(10);

/// How often the drain checks for the last request to finish.
const EXIT_POLL: Duration = Duration::from_millis(50);

#[async_trait]
impl BackgroundService for DrainService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.wait_for(|s| *s).await.is_err() {
            return;
        }
        let drain = &self.drain;
        drain.begin();
        // Rows and holds written now: a process taking over (`-u`) counts
        // them in its budgets from its next refresh.
        if let Some(store) = &self.store {
            if let Err(e) = store.flush(STORE_FLUSH).await {
                tracing::warn!(error = %e, "store: rows not yet written at the start of shutdown");
            }
        }
        tracing::info!(
            drain_ms = drain.window.as_millis() as u64,
            grace_secs = drain.grace.as_secs(),
            "graceful shutdown started: readiness now fails, in-flight requests continue"
        );
        if let Some(end) = drain.window_end() {
            tokio::time::sleep_until(end.into()).await;
        }
        // Past the last call, what is still in flight is dropped by Pingora
        // anyway: its rows are written first.
        let last_call = drain.last_call().expect("the drain has begun");
        while drain.in_flight() > 0 && Instant::now() < last_call {
            tokio::time::sleep(EXIT_POLL).await;
        }
        if let Some(store) = &self.store {
            match store.flush(STORE_FLUSH).await {
                Ok(()) => tracing::info!("store: every usage row written"),
                Err(e) => tracing::error!(error = %e, "store: usage rows lost at exit"),
            }
        }
        tracing::info!("graceful shutdown complete: nothing in flight, exiting");
        std::process::exit(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cut_comes_near_the_end_of_the_grace_period() {
        let d = Drain::new(Duration::from_millis(100), Duration::from_millis(1500));
        assert!(!d.shutting_down() && d.window_end().is_none());
        // Never while the server runs.
        assert!(tokio::time::timeout(Duration::from_millis(200), d.cut())
            .await
            .is_err());
        d.begin();
        d.begin();
        assert!(d.shutting_down());
        // Not before grace minus the margin (1500 - 300 ms)...
        assert!(tokio::time::timeout(Duration::from_millis(1000), d.cut())
            .await
            .is_err());
        // ...but well before the grace period's end.
        tokio::time::timeout(Duration::from_secs(5), d.cut())
            .await
            .expect("the cut comes");
    }

    #[test]
    fn the_drain_window_ends_by_the_cut_so_the_last_rows_are_written_in_time() {
        // The default: drain_ms 5000 with a 5 s grace period. A window as
        // long as the grace let Pingora exit before the store's last write.
        let d = Drain::new(Duration::from_secs(5), Duration::from_secs(5));
        assert_eq!(d.window, Duration::from_secs(4));
        d.begin();
        let (window_end, cut, last) = (
            d.window_end().unwrap(),
            d.cut_at().unwrap(),
            d.last_call().unwrap(),
        );
        assert!(window_end <= cut && cut < last);
        assert!(last < d.started.get().copied().unwrap() + d.grace);
        let short = Drain::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(short.window, Duration::from_millis(800));
    }

    #[test]
    fn active_requests_are_counted_until_dropped() {
        let d = Drain::new(Duration::ZERO, Duration::ZERO);
        let (a, b) = (d.enter(), d.enter());
        assert_eq!(d.in_flight(), 2);
        drop(a);
        assert_eq!(d.in_flight(), 1);
        drop(b);
        assert_eq!(d.in_flight(), 0);
    }
}
