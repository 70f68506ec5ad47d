//! The usage ledger: one row per request, written in batches by the store
//! thread, and the grouped sums `lynkr usage` and the admin API report.

use rusqlite::{params, Connection};

/// One finished request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageRow {
    /// Unix milliseconds when the request finished.
    pub at_ms: i64,
    pub request_id: String,
    pub key_id: Option<i64>,
    pub user: String,
    /// The key's team; empty without one.
    pub team: String,
    /// `X-Claude-Code-Session-Id`.
    pub session: String,
    pub route: String,
    pub provider: String,
    /// The client's model name.
    pub model: String,
    pub upstream_model: String,
    /// Prompt tokens in all, cache reads included.
    pub input_tokens: u64,
    /// Of `input_tokens`, those read from the provider's prompt cache.
    pub cache_read_tokens: u64,
    pub output_tokens: u64,
    pub cost: f64,
    pub status: u16,
    pub latency_ms: u64,
    pub ttft_ms: Option<u64>,
    pub attempts: u32,
    pub stream: bool,
}

/// Write `rows` in one transaction: all of them or none.
pub fn insert(conn: &mut Connection, rows: &[UsageRow]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO usage (at_ms, request_id, key_id, user, session, route, provider, model,
                                upstream_model, input_tokens, cache_read_tokens, output_tokens,
                                cost, status, latency_ms, ttft_ms, attempts, stream, team)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
        )?;
        for r in rows {
            stmt.execute(params![
                r.at_ms,
                r.request_id,
                r.key_id,
                r.user,
                r.session,
                r.route,
                r.provider,
                r.model,
                r.upstream_model,
                r.input_tokens as i64,
                r.cache_read_tokens as i64,
                r.output_tokens as i64,
                r.cost,
                r.status,
                r.latency_ms as i64,
                r.ttft_ms.map(|v| v as i64),
                r.attempts,
                r.stream,
                r.team,
            ])?;
        }
    }
    tx.commit()
}

/// Delete rows older than `days` days; returns how many.
pub fn expire(conn: &Connection, days: u64, now_ms: i64) -> rusqlite::Result<usize> {
    let cutoff = now_ms - (days as i64) * 86_400_000;
    conn.execute("DELETE FROM usage WHERE at_ms < ?1", [cutoff])
}

/// How `lynkr usage` groups rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Day,
    Model,
    Session,
    Key,
    User,
}

impl GroupBy {
    pub fn parse(s: &str) -> Result<GroupBy, String> {
        Ok(match s {
            "day" => GroupBy::Day,
            "model" => GroupBy::Model,
            "session" => GroupBy::Session,
            "key" => GroupBy::Key,
            "user" => GroupBy::User,
            _ => return Err(format!("--by {s:?}: use day, model, session, key or user")),
        })
    }

    fn column(self) -> &'static str {
        match self {
            GroupBy::Day => "strftime('%Y-%m-%d', u.at_ms / 1000, 'unixepoch')",
            GroupBy::Model => "u.model",
            GroupBy::Session => "u.session",
            GroupBy::Key => "COALESCE(k.name, '')",
            GroupBy::User => "u.user",
        }
    }
}

/// Which rows a usage query sums.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this key's rows (by name).
    pub key: Option<String>,
    /// Only rows at or after this unix millisecond.
    pub since_ms: Option<i64>,
}

/// One group's sums.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UsageSum {
    pub group: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost: f64,
    pub errors: u64,
}

pub fn summarize(conn: &Connection, by: GroupBy, f: &Filter) -> rusqlite::Result<Vec<UsageSum>> {
    let sql = format!(
        "SELECT {g} AS grp, COUNT(*), COALESCE(SUM(u.input_tokens), 0),
                COALESCE(SUM(u.output_tokens), 0), COALESCE(SUM(u.cost), 0.0),
                COALESCE(SUM(u.status >= 400), 0)
         FROM usage u LEFT JOIN keys k ON k.id = u.key_id
         WHERE (?1 IS NULL OR k.name = ?1) AND (?2 IS NULL OR u.at_ms >= ?2)
         GROUP BY grp ORDER BY grp",
        g = by.column()
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(params![f.key, f.since_ms], |r| {
        Ok(UsageSum {
            group: r.get(0)?,
            requests: r.get::<_, i64>(1)? as u64,
            input_tokens: r.get::<_, i64>(2)? as u64,
            output_tokens: r.get::<_, i64>(3)? as u64,
            cost: r.get(4)?,
            errors: r.get::<_, i64>(5)? as u64,
        })
    })?;
    rows.collect()
}

/// One ledger row as the admin API shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LedgerEntry {
    /// UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    pub at: String,
    pub at_ms: i64,
    pub request_id: String,
    /// The key's name; empty for a request made without a key.
    pub key: String,
    pub user: String,
    pub team: String,
    pub session: String,
    pub route: String,
    pub provider: String,
    pub model: String,
    pub upstream_model: String,
    pub input_tokens: u64,
    pub cache_read_tokens: u64,
    pub output_tokens: u64,
    pub cost: f64,
    pub status: u16,
    pub latency_ms: u64,
    pub ttft_ms: Option<u64>,
    pub attempts: u32,
    pub stream: bool,
}

/// The rows of one session (`X-Claude-Code-Session-Id`), oldest first, at
/// most `limit` of them.
pub fn session_rows(
    conn: &Connection,
    session: &str,
    limit: usize,
) -> rusqlite::Result<Vec<LedgerEntry>> {
    let mut stmt = conn.prepare(
        "SELECT u.at_ms, u.request_id, COALESCE(k.name, ''), u.user, u.team, u.session, u.route,
                u.provider, u.model, u.upstream_model, u.input_tokens, u.cache_read_tokens,
                u.output_tokens, u.cost, u.status, u.latency_ms, u.ttft_ms, u.attempts, u.stream
         FROM usage u LEFT JOIN keys k ON k.id = u.key_id
         WHERE u.session = ?1 ORDER BY u.at_ms, u.id LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![session, limit as i64], |r| {
        let at_ms: i64 = r.get(0)?;
        Ok(LedgerEntry {
            at: crate::util::date::format_utc(at_ms.div_euclid(1000)),
            at_ms,
            request_id: r.get(1)?,
            key: r.get(2)?,
            user: r.get(3)?,
            team: r.get(4)?,
            session: r.get(5)?,
            route: r.get(6)?,
            provider: r.get(7)?,
            model: r.get(8)?,
            upstream_model: r.get(9)?,
            input_tokens: r.get::<_, i64>(10)? as u64,
            cache_read_tokens: r.get::<_, i64>(11)? as u64,
            output_tokens: r.get::<_, i64>(12)? as u64,
            cost: r.get(13)?,
            status: r.get(14)?,
            latency_ms: r.get::<_, i64>(15)? as u64,
            ttft_ms: r.get::<_, Option<i64>>(16)?.map(|v| v as u64),
            attempts: r.get(17)?,
            stream: r.get(18)?,
        })
    })?;
    rows.collect()
}
