//! Budgets per key, user or team: a limit on USD, tokens or requests over
//! a UTC day, week, month, or in total.
//!
//! Enforced by reservation, in memory, so no request waits on disk:
//! before a request is forwarded it reserves its worst case (the input
//! estimate plus `max_tokens` of output, priced), and a budget admits it
//! only if `spent + reserved + worst case <= hard limit`. When the request
//! ends the reservation is replaced by what the provider reported. So
//! however many requests run at once, their spend cannot pass the limit.
//!
//! What was spent is the usage ledger itself: each budget counts the sum
//! of the ledger's rows of its period, as of the last reload, plus what
//! requests settled here whose rows the store thread has not written yet
//! (moved over as each batch commits). A reload (a change committed by
//! another connection: the CLI, or another process on the same file, as
//! during a `-u` upgrade) sums the ledger again, so rows another process
//! wrote are counted too. What other processes hold for their requests in
//! flight comes from the `holds` table, which each process keeps current.

use super::usage::UsageRow;
use crate::util::date;
use rusqlite::{params, Connection, Row};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Key,
    User,
    Team,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Usd,
    Tokens,
    Requests,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Week,
    Month,
    Total,
}

macro_rules! names {
    ($t:ty, $what:literal, $($v:ident = $s:literal),+) => {
        impl $t {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),+ }
            }
            pub fn parse(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok(Self::$v),)+
                    _ => Err(format!(concat!("{:?}: expected ", $what, " (", $(stringify!($s), " ",)+ ")"), s)),
                }
            }
        }
    };
}
names!(
    Scope,
    "a budget scope",
    Key = "key",
    User = "user",
    Team = "team"
);
names!(
    Metric,
    "a budget metric",
    Usd = "usd",
    Tokens = "tokens",
    Requests = "requests"
);
names!(
    Period,
    "a budget period",
    Day = "day",
    Week = "week",
    Month = "month",
    Total = "total"
);

impl Period {
    /// Unix seconds when the period holding `now` began (0 for `total`).
    pub fn start(self, now: i64) -> i64 {
        match self {
            Period::Day => date::start_of_day(now),
            Period::Week => date::start_of_week(now),
            Period::Month => date::start_of_month(now),
            Period::Total => 0,
        }
    }

    /// When the period that began at `start` ends; never for `total`.
    pub fn reset_at(self, start: i64) -> Option<i64> {
        match self {
            Period::Day => Some(start + 86_400),
            Period::Week => Some(start + 7 * 86_400),
            Period::Month => Some(date::next_month(start)),
            Period::Total => None,
        }
    }
}

/// One budget as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub id: i64,
    pub scope: Scope,
    /// The key's name, the user, or the team.
    pub subject: String,
    pub metric: Metric,
    pub period: Period,
    pub hard: f64,
    /// Crossing it is logged once a period and counted; nothing is refused.
    pub soft: Option<f64>,
}

/// What tells budgets apart: one budget per scope, subject, metric and period.
type Identity<'a> = (Scope, &'a str, Metric, Period);

impl Budget {
    pub fn identity(&self) -> Identity<'_> {
        (self.scope, &self.subject, self.metric, self.period)
    }

    /// The budget as `budgets list --json` and the admin API show it, with
    /// `spent`, what the ledger holds for the period holding `now`.
    pub fn to_json(&self, spent: f64, now: i64) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "scope": self.scope.as_str(),
            "subject": self.subject,
            "metric": self.metric.as_str(),
            "period": self.period.as_str(),
            "limit": self.hard,
            "soft_limit": self.soft,
            "spent": spent,
            "resets_at": self.period.reset_at(self.period.start(now)).map(date::format_utc),
        })
    }

    /// `key "ci" usd/month`: how errors and logs name it.
    pub fn label(&self) -> String {
        format!(
            "{} {:?} {}/{}",
            self.scope.as_str(),
            self.subject,
            self.metric.as_str(),
            self.period.as_str()
        )
    }
}

/// A budget to create or replace (same scope, subject, metric, period).
#[derive(Debug, Clone)]
pub struct BudgetSpec {
    pub scope: Scope,
    pub subject: String,
    pub metric: Metric,
    pub period: Period,
    pub hard: f64,
    pub soft: Option<f64>,
}

impl BudgetSpec {
    pub fn identity(&self) -> Identity<'_> {
        (self.scope, &self.subject, self.metric, self.period)
    }
}

pub fn check_limits(hard: f64, soft: Option<f64>) -> Result<(), String> {
    if !hard.is_finite() || hard < 0.0 {
        return Err(format!(
            "budget limit {hard}: must be a number of at least 0"
        ));
    }
    if let Some(s) = soft {
        if !s.is_finite() || s < 0.0 || s > hard {
            return Err(format!(
                "soft limit {s}: must be between 0 and the hard limit {hard}"
            ));
        }
    }
    Ok(())
}

/// Create the budget, or change the limits of the one with the same scope,
/// subject, metric and period.
pub fn set(conn: &Connection, spec: &BudgetSpec) -> Result<Budget, String> {
    check_limits(spec.hard, spec.soft)?;
    if spec.subject.is_empty() {
        return Err("a budget needs a subject (the key's name, the user or the team)".into());
    }
    conn.execute(
        "INSERT INTO budgets (scope, subject, metric, period, hard, soft, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (scope, subject, metric, period) DO UPDATE SET hard = ?5, soft = ?6",
        params![
            spec.scope.as_str(),
            spec.subject,
            spec.metric.as_str(),
            spec.period.as_str(),
            spec.hard,
            spec.soft,
            super::keys::now_secs()
        ],
    )
    .map_err(|e| e.to_string())?;
    list(conn)?
        .into_iter()
        .find(|b| b.identity() == spec.identity())
        .ok_or_else(|| "the budget was not saved".into())
}

pub fn delete(conn: &Connection, id: i64) -> Result<(), String> {
    match conn.execute("DELETE FROM budgets WHERE id = ?1", [id]) {
        Ok(0) => Err(format!("no budget with id {id}")),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

pub fn list(conn: &Connection) -> Result<Vec<Budget>, String> {
    let mut stmt = conn
        .prepare("SELECT id, scope, subject, metric, period, hard, soft FROM budgets ORDER BY id")
        .map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map([], from_row)
        .map_err(|e| e.to_string())?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(|e| e.to_string())?;
    rows.into_iter().collect()
}

fn from_row(r: &Row) -> rusqlite::Result<Result<Budget, String>> {
    let (scope, metric, period): (String, String, String) = (r.get(1)?, r.get(3)?, r.get(4)?);
    let id: i64 = r.get(0)?;
    let subject: String = r.get(2)?;
    let (hard, soft): (f64, Option<f64>) = (r.get(5)?, r.get(6)?);
    Ok((|| {
        Ok(Budget {
            id,
            scope: Scope::parse(&scope)?,
            subject,
            metric: Metric::parse(&metric)?,
            period: Period::parse(&period)?,
            hard,
            soft,
        })
    })())
}

/// What the ledger holds against `b` since `since` (unix seconds).
pub fn spent_since(conn: &Connection, b: &Budget, since: i64) -> rusqlite::Result<f64> {
    let what = match b.metric {
        Metric::Usd => "COALESCE(SUM(cost), 0.0)",
        Metric::Tokens => "CAST(COALESCE(SUM(input_tokens + output_tokens), 0) AS REAL)",
        Metric::Requests => "CAST(COALESCE(SUM(status BETWEEN 200 AND 299), 0) AS REAL)",
    };
    let whose = match b.scope {
        Scope::Key => "key_id = (SELECT id FROM keys WHERE name = ?1)",
        Scope::User => "key_id IS NOT NULL AND user = ?1",
        Scope::Team => "key_id IS NOT NULL AND team = ?1",
    };
    conn.query_row(
        &format!("SELECT {what} FROM usage WHERE {whose} AND at_ms >= ?2"),
        params![b.subject, since * 1000],
        |r| r.get(0),
    )
}

// ---- the in-memory book ----------------------------------------------------

/// What a request costs against each metric.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Charges {
    pub usd: f64,
    pub tokens: f64,
    pub requests: f64,
}

impl Charges {
    fn of(&self, m: Metric) -> f64 {
        match m {
            Metric::Usd => self.usd,
            Metric::Tokens => self.tokens,
            Metric::Requests => self.requests,
        }
    }

    /// What a finished request spent, as its ledger row says.
    pub fn spent_by(row: &UsageRow) -> Charges {
        Charges {
            usd: row.cost,
            tokens: (row.input_tokens + row.output_tokens) as f64,
            requests: f64::from(u8::from((200..300).contains(&row.status))),
        }
    }
}

#[derive(Debug)]
struct Counters {
    period_start: i64,
    /// The ledger's sum for the period at the last reload, plus the rows
    /// this process has written since.
    ledger: f64,
    /// Settled here; their ledger rows are not written yet.
    unwritten: f64,
    /// Held by this process's requests in flight.
    reserved: f64,
    /// Held by other processes on the same file (their `holds` rows).
    others: f64,
    soft_noted: bool,
}

impl Counters {
    fn spent(&self) -> f64 {
        self.ledger + self.unwritten
    }
}

/// A budget and its running totals. The totals are shared with the
/// budget's next definition (a changed limit), so reservations made before
/// the change settle where they were counted.
#[derive(Debug)]
pub struct BudgetState {
    pub budget: Budget,
    counters: Arc<Mutex<Counters>>,
}

impl BudgetState {
    /// `(spent, reserved)` in the current period; reserved by requests in
    /// flight here and in other processes.
    pub fn totals(&self, now: i64) -> (f64, f64) {
        let c = self.lock(now);
        (c.spent(), c.reserved + c.others)
    }

    /// What requests in flight in this process hold.
    pub fn reserved_here(&self) -> f64 {
        self.counters.lock().expect("budget counters").reserved
    }

    /// The counters, rolled over to the period holding `now`: what was
    /// spent before it no longer counts; reservations still in flight do.
    /// Only forward: a clock stepped back does not reopen a period.
    fn lock(&self, now: i64) -> std::sync::MutexGuard<'_, Counters> {
        let mut c = self.counters.lock().expect("budget counters");
        let start = self.budget.period.start(now);
        if start > c.period_start && self.budget.period != Period::Total {
            c.period_start = start;
            c.ledger = 0.0;
            c.soft_noted = false;
        }
        c
    }
}

/// Every budget, by what it applies to: what the hot path reads.
#[derive(Debug, Default)]
pub struct BudgetBook {
    /// Per scope (key, user, team), by subject: looked up without allocating.
    by_subject: [HashMap<String, Vec<Arc<BudgetState>>>; 3],
    by_id: HashMap<i64, Arc<BudgetState>>,
    /// Reservations not yet settled, over every budget (a metric).
    in_flight: Arc<AtomicI64>,
}

/// A budget that refused a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Exhausted {
    pub budget: Budget,
    pub spent: f64,
    pub reserved: f64,
    pub wanted: f64,
    /// Unix seconds; `None` for a `total` budget.
    pub resets_at: Option<i64>,
}

impl Exhausted {
    pub fn message(&self) -> String {
        let amount = |v: f64| match self.budget.metric {
            Metric::Usd => format!("{v:.4} USD"),
            Metric::Tokens => format!("{v:.0} tokens"),
            Metric::Requests => format!("{v:.0} requests"),
        };
        let resets = match self.resets_at {
            Some(at) => format!("it resets at {}", date::format_utc(at)),
            None => "it does not reset (period total)".to_string(),
        };
        format!(
            "budget exhausted: {} allows {}, {} spent and {} reserved by requests in flight; \
             this request could need {}; {resets}",
            self.budget.label(),
            amount(self.budget.hard),
            amount(self.spent),
            amount(self.reserved),
            amount(self.wanted),
        )
    }
}

impl BudgetBook {
    /// A book of `budgets`, each counting `ledger`, what the ledger holds
    /// for it from a period start, and `others`, what other processes hold
    /// for it by budget id. Budgets this book's `previous` already tracks
    /// (same id, scope, subject, metric and period) keep their counters:
    /// reservations in flight and settled rows not yet written.
    pub fn build(
        budgets: Vec<Budget>,
        previous: Option<&BudgetBook>,
        mut ledger: impl FnMut(&Budget, i64) -> f64,
        others: &HashMap<i64, f64>,
        now: i64,
    ) -> BudgetBook {
        let in_flight = previous.map_or_else(Default::default, |p| p.in_flight.clone());
        let mut book = BudgetBook {
            in_flight,
            ..Default::default()
        };
        for b in budgets {
            let held_elsewhere = others.get(&b.id).copied().unwrap_or(0.0);
            let kept = previous
                .and_then(|p| p.by_id.get(&b.id))
                .filter(|old| old.budget.identity() == b.identity());
            let counters = match kept {
                Some(old) => {
                    let start = old.lock(now).period_start;
                    let sum = ledger(&b, start);
                    let mut c = old.counters.lock().expect("budget counters");
                    c.ledger = sum;
                    c.others = held_elsewhere;
                    drop(c);
                    old.counters.clone()
                }
                None => {
                    let start = b.period.start(now);
                    Arc::new(Mutex::new(Counters {
                        period_start: start,
                        ledger: ledger(&b, start),
                        unwritten: 0.0,
                        reserved: 0.0,
                        others: held_elsewhere,
                        soft_noted: false,
                    }))
                }
            };
            let state = Arc::new(BudgetState {
                budget: b.clone(),
                counters,
            });
            book.by_id.insert(b.id, state.clone());
            book.by_subject[b.scope as usize]
                .entry(b.subject.clone())
                .or_default()
                .push(state);
        }
        book
    }

    /// What this process's requests in flight hold, by budget id (the
    /// `holds` rows it keeps for other processes), in id order.
    pub fn holds(&self) -> Vec<(i64, f64)> {
        let mut held: Vec<_> = self
            .by_id
            .iter()
            .map(|(id, s)| (*id, s.reserved_here()))
            .filter(|(_, r)| *r > 0.0)
            .collect();
        held.sort_by_key(|(id, _)| *id);
        held
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn budgets(&self) -> impl Iterator<Item = &Arc<BudgetState>> {
        self.by_id.values()
    }

    pub fn reservations_in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Reserve `worst` against every budget of the key, its user and its
    /// team, all or none: the first budget that cannot take it refuses the
    /// request, and what was reserved on the others is given back.
    pub fn reserve(
        &self,
        key: &super::keys::ApiKey,
        worst: Charges,
        now: i64,
    ) -> Result<Reservation, Exhausted> {
        let subjects = [
            Some((Scope::Key, key.name.as_str())),
            (!key.user.is_empty()).then_some((Scope::User, key.user.as_str())),
            key.team.as_deref().map(|t| (Scope::Team, t)),
        ];
        let mut held = Reservation {
            held: Vec::new(),
            in_flight: self.in_flight.clone(),
            settled: false,
        };
        for (scope, subject) in subjects.into_iter().flatten() {
            let Some(states) = self.by_subject[scope as usize].get(subject) else {
                continue;
            };
            for state in states {
                let wanted = worst.of(state.budget.metric);
                let mut c = state.lock(now);
                if c.spent() + c.reserved + c.others + wanted > state.budget.hard {
                    let refused = Exhausted {
                        budget: state.budget.clone(),
                        spent: c.spent(),
                        reserved: c.reserved + c.others,
                        wanted,
                        resets_at: state.budget.period.reset_at(c.period_start),
                    };
                    drop(c);
                    held.release();
                    return Err(refused);
                }
                c.reserved += wanted;
                drop(c);
                held.held.push((state.clone(), wanted));
            }
        }
        if !held.held.is_empty() {
            self.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        Ok(held)
    }
}

/// A request's hold on its budgets, until it is settled. Dropped without
/// being settled (a request that ended in a panic), it is charged in full.
#[derive(Debug)]
pub struct Reservation {
    held: Vec<(Arc<BudgetState>, f64)>,
    in_flight: Arc<AtomicI64>,
    settled: bool,
}

/// What settling a reservation did.
#[derive(Debug, Default)]
pub struct Settled {
    /// Budgets whose soft limit it crossed.
    pub crossed: Vec<SoftCrossed>,
    /// What it charged each budget: goes with the request's ledger row.
    pub charged: Charged,
}

/// A settled request's charges on each budget, counted as unwritten until
/// its ledger row is written. Dropped without `written` (a row that could
/// not be recorded), they stay counted: never less than was spent.
#[derive(Debug, Default)]
pub struct Charged(Vec<(Arc<BudgetState>, f64)>);

impl Charged {
    /// The request's row (finished at `at`, unix seconds) is in the ledger
    /// now: its charges move from unwritten to the ledger's sum, unless the
    /// row belongs to a period already over.
    pub fn written(self, at: i64) {
        for (state, amount) in self.0 {
            let mut c = state.counters.lock().expect("budget counters");
            if at >= c.period_start {
                c.ledger += amount;
            }
            c.unwritten = (c.unwritten - amount).max(0.0);
        }
    }
}

/// A budget whose soft limit a settlement crossed.
#[derive(Debug, Clone, PartialEq)]
pub struct SoftCrossed {
    pub budget: Budget,
    pub spent: f64,
}

impl Reservation {
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Replace the reservation by what the request spent: the budgets
    /// whose soft limit it crossed (each once a period), and the charges,
    /// which count as unwritten until the store writes the request's row.
    pub fn settle(mut self, spent: Charges, now: i64) -> Settled {
        self.settle_with(|_| spent, now)
    }

    fn settle_with(&mut self, spent: impl Fn(f64) -> Charges, now: i64) -> Settled {
        let mut settled = Settled::default();
        if self.settled || self.held.is_empty() {
            self.settled = true;
            return settled;
        }
        self.settled = true;
        for (state, reserved) in self.held.drain(..) {
            let actual = spent(reserved).of(state.budget.metric);
            let mut c = state.lock(now);
            c.reserved = (c.reserved - reserved).max(0.0);
            c.unwritten += actual;
            if let Some(soft) = state.budget.soft {
                if c.spent() > soft && !c.soft_noted {
                    c.soft_noted = true;
                    settled.crossed.push(SoftCrossed {
                        budget: state.budget.clone(),
                        spent: c.spent(),
                    });
                }
            }
            drop(c);
            settled.charged.0.push((state, actual));
        }
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        settled
    }

    /// Give everything back (the request was refused before it could spend).
    fn release(&mut self) {
        self.settled = true;
        for (state, reserved) in self.held.drain(..) {
            let mut c = state.counters.lock().expect("budget counters");
            c.reserved = (c.reserved - reserved).max(0.0);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled && !self.held.is_empty() {
            // Charged in full: never less than it may have cost.
            let by_metric = |reserved: f64| Charges {
                usd: reserved,
                tokens: reserved,
                requests: reserved,
            };
            self.settle_with(by_metric, super::keys::now_secs());
        }
    }
}
