//! The store: API keys and the usage ledger in one SQLite file.
//!
//! No request waits on disk. The connection belongs to one thread
//! (`lynkr-store`); requests leave their usage rows in a shared buffer
//! (no wake-up, no system call per request) and the thread writes them in
//! batches, one transaction every `store.flush_ms`. Keys
//! are read from an in-memory table that the thread reloads when the file
//! changes (`PRAGMA data_version`: another process, such as `lynkr keys`,
//! committed) and after its own changes.
//!
//! Nothing is dropped silently: a batch that cannot be written stays
//! buffered and is retried, the store reports itself unhealthy, and the
//! gateway refuses requests until it recovers (unless `store.fail_open`).

pub mod budgets;
pub mod holds;
pub mod keys;
pub mod schema;
pub mod usage;

use crate::config::StoreConfig;
use budgets::{BudgetBook, Charged};
use keys::KeyTable;
use rusqlite::{Connection, OpenFlags};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use usage::UsageRow;

/// Retention runs at start and then this often.
const EXPIRE_EVERY: Duration = Duration::from_secs(3600);
/// Rows buffered past this while the file cannot be written are dropped
/// (only with `fail_open`; otherwise requests are refused long before).
const MAX_BUFFERED_ROWS: usize = 1_000_000;
/// A process rewrites its `holds` rows at least this often while it holds
/// anything...
const HOLDS_HEARTBEAT: Duration = Duration::from_secs(5);
/// ...and rows older than this are a process that is gone: ignored.
const HOLDS_STALE_MS: i64 = 15_000;

/// Open (or create) the database at `path`, bring its schema up to date,
/// and set the pragmas every connection uses.
pub fn open(path: &str) -> Result<Connection, String> {
    let fail = |e: &dyn std::fmt::Display| format!("store.path {path:?}: {e}");
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags).map_err(|e| fail(&e))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| fail(&e))?;
    // WAL: readers (the CLI, a second process during an upgrade) never block
    // the writer. NORMAL: a commit is durable once the WAL is checkpointed;
    // a power cut loses at most the last batches, never corrupts.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| fail(&e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(fail(&format!("cannot use WAL journaling (got {mode})")));
    }
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL;
         PRAGMA cache_size = -64000;
         PRAGMA temp_store = MEMORY;
         PRAGMA foreign_keys = ON;",
    )
    .map_err(|e| fail(&e))?;
    schema::migrate(&mut conn).map_err(|e| fail(&e))?;
    Ok(conn)
}

enum Command {
    /// Work on the connection (admin changes, health pings). It returns
    /// how to deliver its answer, which happens after the key table is
    /// reloaded (if it changed any row): a caller told "revoked" can rely on it.
    Call(Box<dyn FnOnce(&mut Connection) -> Deliver + Send>),
}

type Deliver = Box<dyn FnOnce() + Send>;

/// What the gateway and the store thread share.
struct Shared {
    keys: RwLock<Arc<KeyTable>>,
    budgets: RwLock<Arc<BudgetBook>>,
    /// The last write of usage rows succeeded (or none has failed yet).
    writable: AtomicBool,
    /// Rows handed over and not yet committed.
    buffered: AtomicU64,
    /// Finished requests' rows, with what each charged its budgets, not
    /// yet taken by the store thread.
    incoming: Mutex<Vec<(UsageRow, Charged)>>,
    /// The store thread runs (false once it has ended, even by a panic).
    alive: AtomicBool,
    last_error: Mutex<Option<String>>,
}

/// The gateway's handle on the store thread.
pub struct Store {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    pub fail_open: bool,
}

impl Store {
    /// Open the file and start the store thread. An unreadable, unwritable
    /// or foreign file is an error here, before the server starts.
    pub fn start(config: &StoreConfig, refresh: Duration) -> Result<Store, String> {
        let conn = open(&config.path)?;
        // A write now, so a read-only file fails at start, not at the first batch.
        conn.pragma_update(None, "user_version", schema::CURRENT)
            .map_err(|e| format!("store.path {:?}: cannot write: {e}", config.path))?;
        // Read the version before the keys: a change committed in between
        // is then seen as a change by the first refresh, not missed.
        let data_version = data_version(&conn);
        let table = keys::load_table(&conn)
            .map_err(|e| format!("store.path {:?}: reading keys: {e}", config.path))?;
        // Holds left by an earlier process with this pid are not anyone's.
        holds::clear(&conn).map_err(|e| format!("store.path {:?}: {e}", config.path))?;
        let book = load_book(&conn, None)
            .map_err(|e| format!("store.path {:?}: reading budgets: {e}", config.path))?;
        let shared = Arc::new(Shared {
            keys: RwLock::new(Arc::new(table)),
            budgets: RwLock::new(Arc::new(book)),
            writable: AtomicBool::new(true),
            buffered: AtomicU64::new(0),
            incoming: Mutex::new(Vec::new()),
            alive: AtomicBool::new(true),
            last_error: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            conn,
            rx,
            shared: shared.clone(),
            pending: Vec::new(),
            pending_charges: Vec::new(),
            holds_written: (Vec::new(), Instant::now()),
            flush: Duration::from_millis(config.flush_ms),
            refresh,
            retention_days: config.retention_days,
        };
        std::thread::Builder::new()
            .name("lynkr-store".into())
            .spawn(move || writer.run(data_version))
            .map_err(|e| format!("cannot start the store thread: {e}"))?;
        Ok(Store {
            tx,
            shared,
            fail_open: config.fail_open,
        })
    }

    /// The key table as of the last reload.
    pub fn keys(&self) -> Arc<KeyTable> {
        self.shared.keys.read().expect("key table lock").clone()
    }

    /// The budgets as of the last reload, with their running totals.
    pub fn budgets(&self) -> Arc<BudgetBook> {
        self.shared
            .budgets
            .read()
            .expect("budget book lock")
            .clone()
    }

    /// Hand a finished request's row to the store thread, with what it
    /// charged its budgets (counted as unwritten until the row is written).
    pub fn record(&self, row: UsageRow, charged: Charged) {
        self.shared.buffered.fetch_add(1, Ordering::AcqRel);
        self.shared
            .incoming
            .lock()
            .expect("usage buffer lock")
            .push((row, charged));
        if !self.shared.alive.load(Ordering::Acquire) {
            self.shared.writable.store(false, Ordering::Release);
            set_error(&self.shared, "the store thread has stopped".into());
        }
    }

    /// Whether usage can be recorded now; the reason when not.
    pub fn writable(&self) -> Result<(), String> {
        if self.shared.writable.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(self
                .shared
                .last_error
                .lock()
                .expect("store error lock")
                .clone()
                .unwrap_or_else(|| "the usage store cannot be written".into()))
        }
    }

    /// Rows handed over and not yet committed.
    pub fn buffered(&self) -> u64 {
        self.shared.buffered.load(Ordering::Acquire)
    }

    /// Run `f` on the store thread and wait (at most `deadline`) for its
    /// answer. Pending usage rows are written first.
    pub async fn call<T: Send + 'static>(
        &self,
        deadline: Duration,
        f: impl FnOnce(&mut Connection) -> T + Send + 'static,
    ) -> Result<T, String> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Box::new(move |conn: &mut Connection| -> Deliver {
            let answer = f(conn);
            Box::new(move || {
                let _ = reply.send(answer);
            })
        });
        self.tx
            .send(Command::Call(job))
            .map_err(|_| "the store thread has stopped".to_string())?;
        match tokio::time::timeout(deadline, answer).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err("the store thread has stopped".into()),
            Err(_) => Err(format!(
                "the store did not answer within {} ms",
                deadline.as_millis()
            )),
        }
    }

    /// `/health/ready`: the thread answers and the file can be read and
    /// written within `deadline`.
    pub async fn check(&self, deadline: Duration) -> Result<(), String> {
        self.writable()?;
        self.call(deadline, |conn| {
            conn.query_row("SELECT count(*) FROM keys", [], |r| r.get::<_, i64>(0))
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await?
    }

    /// Write every buffered row (and this process's holds) now: at the
    /// start of a shutdown, so a process taking over sees them, and at its
    /// end. Waits at most `deadline`.
    pub async fn flush(&self, deadline: Duration) -> Result<(), String> {
        self.call(deadline, |_| ()).await?;
        match self.buffered() {
            0 => Ok(()),
            n => Err(format!("{n} usage rows could not be written")),
        }
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The budgets in the file, each with what the ledger holds for its
/// period and what other processes hold for it; those `previous` tracks
/// keep their own reservations and unwritten charges.
fn load_book(conn: &Connection, previous: Option<&BudgetBook>) -> Result<BudgetBook, String> {
    let list = budgets::list(conn)?;
    let others = match list.is_empty() {
        true => Default::default(),
        false => holds::of_others(conn, now_ms() - HOLDS_STALE_MS)
            .map_err(|e| format!("reading other processes' holds: {e}"))?,
    };
    let mut failed = None;
    let book = BudgetBook::build(
        list,
        previous,
        |b, since| {
            budgets::spent_since(conn, b, since).unwrap_or_else(|e| {
                failed = Some(format!("{}: {e}", b.label()));
                0.0
            })
        },
        &others,
        keys::now_secs(),
    );
    match failed {
        // A budget must not start from zero because its sum failed.
        Some(e) => Err(e),
        None => Ok(book),
    }
}

/// Changes when another connection commits (the CLI, another instance).
fn data_version(conn: &Connection) -> i64 {
    conn.query_row("PRAGMA data_version", [], |r| r.get(0))
        .unwrap_or(-1)
}

fn set_error(shared: &Shared, e: String) {
    *shared.last_error.lock().expect("store error lock") = Some(e);
}

/// The store thread's state.
struct Writer {
    conn: Connection,
    rx: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    pending: Vec<UsageRow>,
    /// Each pending row's finish time (unix seconds) and budget charges.
    pending_charges: Vec<(i64, Charged)>,
    /// The holds last written, and when.
    holds_written: (Vec<(i64, f64)>, Instant),
    flush: Duration,
    refresh: Duration,
    retention_days: u64,
}

/// Marks the store thread ended when it ends, however it ends.
struct Alive(Arc<Shared>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Release);
    }
}

impl Writer {
    fn run(mut self, mut seen_version: i64) {
        let _alive = Alive(self.shared.clone());
        let now = Instant::now();
        let (mut next_flush, mut next_refresh, mut next_expire) =
            (now + self.flush, now + self.refresh, now);
        loop {
            let wake = next_flush.min(next_refresh).min(next_expire);
            match self
                .rx
                .recv_timeout(wake.saturating_duration_since(Instant::now()))
            {
                Ok(Command::Call(job)) => {
                    self.write_pending();
                    self.write_holds();
                    let before = self.conn.total_changes();
                    let deliver = job(&mut self.conn);
                    // Only a call that changed rows (an admin change, not a
                    // readiness ping) can have changed keys.
                    if self.conn.total_changes() != before {
                        seen_version = data_version(&self.conn);
                        self.reload_keys();
                    }
                    deliver();
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.write_pending();
                    if let Err(e) = holds::clear(&self.conn) {
                        tracing::warn!(error = %e, "store: cannot clear this process's holds");
                    }
                    return;
                }
            }
            let now = Instant::now();
            if now >= next_flush {
                self.write_pending();
                self.write_holds();
                next_flush = now + self.flush;
            }
            if now >= next_refresh {
                let v = data_version(&self.conn);
                if v != seen_version {
                    seen_version = v;
                    // Rows settled here count in the sums of new budgets.
                    self.write_pending();
                    self.reload_keys();
                }
                next_refresh = now + self.refresh;
            }
            if now >= next_expire {
                self.expire();
                next_expire = now + EXPIRE_EVERY;
            }
        }
    }

    /// Reload keys and budgets; what cannot be read stays as it was, and
    /// the next change tries again.
    fn reload_keys(&self) {
        match keys::load_table(&self.conn) {
            Ok(table) => {
                *self.shared.keys.write().expect("key table lock") = Arc::new(table);
            }
            Err(e) => tracing::error!(error = %e, "store: cannot reload keys"),
        }
        let previous = self
            .shared
            .budgets
            .read()
            .expect("budget book lock")
            .clone();
        match load_book(&self.conn, Some(&previous)) {
            Ok(book) => *self.shared.budgets.write().expect("budget book lock") = Arc::new(book),
            Err(e) => tracing::error!(error = %e, "store: cannot reload budgets"),
        }
    }

    /// Move the rows requests left since the last batch into `pending`.
    fn take_incoming(&mut self) {
        let incoming =
            std::mem::take(&mut *self.shared.incoming.lock().expect("usage buffer lock"));
        for (row, charged) in incoming {
            self.pending_charges
                .push((row.at_ms.div_euclid(1000), charged));
            self.pending.push(row);
        }
    }

    fn write_pending(&mut self) {
        self.take_incoming();
        if self.pending.is_empty() {
            return;
        }
        let n = self.pending.len();
        match usage::insert(&mut self.conn, &self.pending) {
            Ok(()) => {
                self.pending.clear();
                for (at, charged) in self.pending_charges.drain(..) {
                    charged.written(at);
                }
                self.shared.buffered.fetch_sub(n as u64, Ordering::AcqRel);
                if !self.shared.writable.swap(true, Ordering::AcqRel) {
                    tracing::info!(rows = n, "store: usage rows are written again");
                }
            }
            Err(e) => {
                let message = format!("cannot write usage rows: {e}");
                if self.shared.writable.swap(false, Ordering::AcqRel) {
                    tracing::error!(error = %e, buffered = n, "store: cannot write usage rows; kept, retrying");
                }
                set_error(&self.shared, message);
                if n > MAX_BUFFERED_ROWS {
                    let dropped = n - MAX_BUFFERED_ROWS;
                    self.pending.drain(..dropped);
                    // Their charges stay counted: never less than was spent.
                    self.pending_charges.drain(..dropped);
                    self.shared
                        .buffered
                        .fetch_sub(dropped as u64, Ordering::AcqRel);
                    tracing::error!(dropped, "store: usage rows dropped, the buffer is full");
                }
            }
        }
    }

    /// Keep this process's `holds` rows current: rewritten when what its
    /// requests hold changed, and every `HOLDS_HEARTBEAT` while it holds
    /// anything (so they are never taken for a gone process's).
    fn write_holds(&mut self) {
        let held = self
            .shared
            .budgets
            .read()
            .expect("budget book lock")
            .holds();
        let (last, at) = &self.holds_written;
        if held == *last && (held.is_empty() || at.elapsed() < HOLDS_HEARTBEAT) {
            return;
        }
        match holds::write(&mut self.conn, &held, now_ms()) {
            Ok(()) => self.holds_written = (held, Instant::now()),
            Err(e) => tracing::warn!(error = %e, "store: cannot write this process's holds"),
        }
    }

    fn expire(&self) {
        if self.retention_days == 0 {
            return;
        }
        let now_ms = now_ms();
        match usage::expire(&self.conn, self.retention_days, now_ms) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                rows = n,
                days = self.retention_days,
                "store: old usage rows deleted"
            ),
            Err(e) => tracing::warn!(error = %e, "store: retention pass failed"),
        }
    }
}

#[cfg(test)]
mod tests;
